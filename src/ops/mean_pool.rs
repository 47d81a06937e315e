//! `mean_pool`: the mean of each record's token rows (sentence-transformers' mean pooling over the
//! attention mask: every real token counts, padding never exists here).

use std::sync::Arc;

use super::{
    contiguous, tensor, Attrs, Chunk, KernelKind, Layer, Op, OpFamily, Rows, Scratch, ShapeError,
    Tensor,
};

#[derive(Debug)]
pub(super) struct MeanPoolFamily;

impl OpFamily for MeanPoolFamily {
    fn names(&self) -> &'static [&'static str] {
        &["mean_pool"]
    }
    fn doc(&self) -> &'static str {
        "none; one row per token in, one row per record out: the mean of the record's tokens"
    }
    fn configure(&self, _name: &str, _attrs: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(MeanPool))
    }
}

#[derive(Debug)]
struct MeanPool;

impl Op for MeanPool {
    fn name(&self) -> &'static str {
        "mean_pool"
    }
    fn rows(&self, inputs: &[Rows]) -> Result<Rows, ShapeError> {
        match inputs[0] {
            Rows::Tokens => Ok(Rows::Records),
            Rows::Records => Err(ShapeError::at(
                "inputs",
                "mean_pool averages the token rows of each record; its input has one row per record",
            )),
        }
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        Ok(inputs[0].to_vec())
    }
    fn flops(&self, inputs: &[&[usize]], _output: &[usize], seq: usize) -> u64 {
        (inputs[0].iter().product::<usize>() * seq) as u64
    }
    fn build(
        &self,
        kind: KernelKind,
        _inputs: &[&[usize]],
        _output: &[usize],
        _tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        Box::new(MeanPoolLayer { kind })
    }
}

#[derive(Debug)]
struct MeanPoolLayer {
    kind: KernelKind,
}

impl Layer for MeanPoolLayer {
    fn forward(&self, inputs: &[&Tensor], chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let x = contiguous(inputs[0]);
        let width: usize = inputs[0].shape()[1..].iter().product();
        let seqs = chunk.seqs();
        let mut shape = inputs[0].shape().to_vec();
        shape[0] = chunk.records;
        let mut out = Vec::with_capacity(chunk.records * width);
        for r in 0..chunk.records {
            let tokens = &x[seqs[r] * width..seqs[r + 1] * width];
            let n = (seqs[r + 1] - seqs[r]).max(1);
            match self.kind {
                KernelKind::Fast => {
                    let start = out.len();
                    out.resize(start + width, 0.0);
                    let acc = &mut out[start..];
                    for row in tokens.chunks_exact(width) {
                        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                    }
                    let inv = 1.0 / n as f32;
                    acc.iter_mut().for_each(|a| *a *= inv);
                }
                KernelKind::Reference => {
                    for c in 0..width {
                        let sum: f64 = tokens
                            .iter()
                            .skip(c)
                            .step_by(width)
                            .map(|v| *v as f64)
                            .sum();
                        out.push((sum / n as f64) as f32);
                    }
                }
            }
        }
        tensor(shape, out)
    }
}
