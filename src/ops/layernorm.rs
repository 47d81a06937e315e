//! `layernorm`: normalisation over the last axis, with a learned scale and shift.

use std::sync::Arc;

use super::{
    contiguous, tensor, AttrDefault, AttrKind, AttrSpec, AttrValue, Attrs, Chunk, KernelKind,
    Layer, Op, OpFamily, Scratch, ShapeError, Tensor, TensorSpec,
};

#[derive(Debug)]
pub(super) struct LayerNormFamily;

impl OpFamily for LayerNormFamily {
    fn names(&self) -> &'static [&'static str] {
        &["layernorm"]
    }
    fn attributes(&self) -> &'static [AttrSpec] {
        const ATTRS: &[AttrSpec] = &[AttrSpec::new(
            "eps",
            AttrKind::PositiveFloat,
            AttrDefault::Value(AttrValue::Float(1e-5)),
        )];
        ATTRS
    }
    fn doc(&self) -> &'static str {
        "`weight`, `bias` [last axis]; over the last axis"
    }
    fn configure(&self, _name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(LayerNormOp {
            eps: a.float("eps"),
        }))
    }
}

#[derive(Debug)]
struct LayerNormOp {
    eps: f64,
}

impl Op for LayerNormOp {
    fn name(&self) -> &'static str {
        "layernorm"
    }
    fn rows(&self, inputs: &[super::Rows]) -> Result<super::Rows, ShapeError> {
        super::same_rows(self.name(), inputs)
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        Ok(inputs[0].to_vec())
    }
    fn tensors(&self, inputs: &[&[usize]]) -> Vec<TensorSpec> {
        let d = vec![*inputs[0].last().expect("records have at least one axis")];
        vec![
            TensorSpec::constant("weight", d.clone(), 1.0),
            TensorSpec::constant("bias", d, 0.0),
        ]
    }
    fn flops(&self, inputs: &[&[usize]], _output: &[usize], _seq: usize) -> u64 {
        inputs[0].iter().product::<usize>() as u64
    }
    fn build(
        &self,
        kind: KernelKind,
        _inputs: &[&[usize]],
        _output: &[usize],
        tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        let [weight, bias]: [Vec<f32>; 2] =
            tensors.try_into().expect("layernorm reads two tensors");
        Box::new(LayerNorm {
            weight,
            bias,
            eps: self.eps,
            kind,
        })
    }
}

#[derive(Debug)]
struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f64,
    kind: KernelKind,
}

impl Layer for LayerNorm {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let d = self.weight.len();
        match self.kind {
            KernelKind::Fast => {
                let mut out = inputs[0].as_standard_layout().into_owned();
                for row in out
                    .as_slice_mut()
                    .expect("standard layout")
                    .chunks_exact_mut(d)
                {
                    // Two passes in f64: the variance of a row with a large mean stays accurate.
                    let mean = row.iter().map(|x| *x as f64).sum::<f64>() / d as f64;
                    let var =
                        row.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                    let inv = 1.0 / (var + self.eps).sqrt();
                    for ((x, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                        *x = ((*x as f64 - mean) * inv) as f32 * w + b;
                    }
                }
                out
            }
            KernelKind::Reference => {
                let x = contiguous(inputs[0]);
                let mut out = Vec::with_capacity(x.len());
                for row in x.chunks_exact(d) {
                    let row: Vec<f64> = row.iter().map(|v| *v as f64).collect();
                    let mean = row.iter().sum::<f64>() / d as f64;
                    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
                    for (i, v) in row.iter().enumerate() {
                        let y = (v - mean) / (var + self.eps).sqrt() * self.weight[i] as f64
                            + self.bias[i] as f64;
                        out.push(y as f32);
                    }
                }
                tensor(inputs[0].shape().to_vec(), out)
            }
        }
    }

    fn param_bytes(&self) -> u64 {
        (self.weight.len() + self.bias.len()) as u64 * 4
    }
}
