//! `global_avgpool2d`: the mean of each channel's plane, `[C, H, W]` → `[C]`.

use std::sync::Arc;

use super::{
    contiguous, tensor, Attrs, Chunk, KernelKind, Layer, Op, OpFamily, Scratch, ShapeError, Tensor,
};

#[derive(Debug)]
pub(super) struct GlobalAvgPool2dFamily;

impl OpFamily for GlobalAvgPool2dFamily {
    fn names(&self) -> &'static [&'static str] {
        &["global_avgpool2d"]
    }
    fn doc(&self) -> &'static str {
        "none; [C, H, W] → [C]"
    }
    fn configure(&self, _name: &str, _attrs: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(GlobalAvgPool2d))
    }
}

#[derive(Debug)]
struct GlobalAvgPool2d;

impl Op for GlobalAvgPool2d {
    fn name(&self) -> &'static str {
        "global_avgpool2d"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        match inputs[0] {
            [c, _, _] => Ok(vec![*c]),
            other => Err(ShapeError::at(
                "inputs",
                format!(
                    "global_avgpool2d needs [channels, height, width] records, found {other:?}"
                ),
            )),
        }
    }
    fn flops(&self, inputs: &[&[usize]], _output: &[usize], _seq: usize) -> u64 {
        inputs[0].iter().product::<usize>() as u64
    }
    fn build(
        &self,
        kind: KernelKind,
        _inputs: &[&[usize]],
        _output: &[usize],
        _tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        Box::new(GlobalAvgPoolLayer { kind })
    }
}

#[derive(Debug)]
struct GlobalAvgPoolLayer {
    kind: KernelKind,
}

impl Layer for GlobalAvgPoolLayer {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let x = contiguous(inputs[0]);
        let shape = inputs[0].shape();
        let (n, c, plane) = (shape[0], shape[1], shape[2] * shape[3]);
        let out = x
            .chunks_exact(plane.max(1))
            .take(n * c)
            .map(|p| match self.kind {
                // f32 sums in order are exact enough for a plane; the reference sums in f64.
                KernelKind::Fast => p.iter().sum::<f32>() / plane as f32,
                KernelKind::Reference => {
                    (p.iter().map(|v| *v as f64).sum::<f64>() / plane as f64) as f32
                }
            })
            .collect();
        tensor(vec![n, c], out)
    }
}
