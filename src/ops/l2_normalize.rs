//! `l2_normalize`: each row divided by its Euclidean norm, as `torch.nn.functional.normalize`
//! (`x / max(‖x‖₂, eps)`, so a zero row stays zero).

use std::sync::Arc;

use super::{
    contiguous, tensor, AttrDefault, AttrKind, AttrSpec, AttrValue, Attrs, Chunk, KernelKind,
    Layer, Op, OpFamily, Rows, Scratch, ShapeError, Tensor,
};

#[derive(Debug)]
pub(super) struct L2NormalizeFamily;

impl OpFamily for L2NormalizeFamily {
    fn names(&self) -> &'static [&'static str] {
        &["l2_normalize"]
    }
    fn attributes(&self) -> &'static [AttrSpec] {
        const ATTRS: &[AttrSpec] = &[AttrSpec::new(
            "eps",
            AttrKind::PositiveFloat,
            AttrDefault::Value(AttrValue::Float(1e-12)),
        )];
        ATTRS
    }
    fn doc(&self) -> &'static str {
        "none; over the last axis, `x / max(‖x‖, eps)` as `F.normalize`"
    }
    fn configure(&self, _name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(L2Normalize {
            eps: a.float("eps"),
        }))
    }
}

#[derive(Debug)]
struct L2Normalize {
    eps: f64,
}

impl Op for L2Normalize {
    fn name(&self) -> &'static str {
        "l2_normalize"
    }
    fn rows(&self, inputs: &[Rows]) -> Result<Rows, ShapeError> {
        super::same_rows(self.name(), inputs)
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        Ok(inputs[0].to_vec())
    }
    fn flops(&self, inputs: &[&[usize]], _output: &[usize], _seq: usize) -> u64 {
        3 * inputs[0].iter().product::<usize>() as u64
    }
    fn build(
        &self,
        kind: KernelKind,
        _inputs: &[&[usize]],
        _output: &[usize],
        _tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        Box::new(L2NormalizeLayer {
            eps: self.eps,
            kind,
        })
    }
}

#[derive(Debug)]
struct L2NormalizeLayer {
    eps: f64,
    kind: KernelKind,
}

impl Layer for L2NormalizeLayer {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let x = contiguous(inputs[0]);
        let width = *inputs[0].shape().last().unwrap_or(&1);
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(width.max(1)) {
            match self.kind {
                KernelKind::Fast => {
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let inv = 1.0 / norm.max(self.eps as f32);
                    out.extend(row.iter().map(|v| v * inv));
                }
                KernelKind::Reference => {
                    let norm = row
                        .iter()
                        .map(|v| *v as f64 * *v as f64)
                        .sum::<f64>()
                        .sqrt();
                    out.extend(row.iter().map(|v| (*v as f64 / norm.max(self.eps)) as f32));
                }
            }
        }
        tensor(inputs[0].shape().to_vec(), out)
    }
}
