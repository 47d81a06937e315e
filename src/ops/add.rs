//! `add`: the elementwise sum of two or more values of one shape (residual connections).

use std::sync::Arc;

use super::{
    contiguous, tensor, Arity, Attrs, Chunk, KernelKind, Layer, Op, OpFamily, Scratch, ShapeError,
    Tensor,
};

#[derive(Debug)]
pub(super) struct AddFamily;

impl OpFamily for AddFamily {
    fn names(&self) -> &'static [&'static str] {
        &["add"]
    }
    fn arity(&self) -> Arity {
        Arity::Many
    }
    fn doc(&self) -> &'static str {
        "none; inputs of one shape"
    }
    fn configure(&self, _name: &str, _attrs: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(Add))
    }
}

/// The op that sums the outputs of a layer sharded into partial sums (attention by heads).
pub(super) fn sum_shards() -> Arc<dyn Op> {
    Arc::new(Add)
}

#[derive(Debug)]
struct Add;

impl Op for Add {
    fn name(&self) -> &'static str {
        "add"
    }
    fn rows(&self, inputs: &[super::Rows]) -> Result<super::Rows, ShapeError> {
        super::same_rows(self.name(), inputs)
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        let first = inputs[0];
        for (i, s) in inputs.iter().enumerate().skip(1) {
            if *s != first {
                return Err(ShapeError::at(
                    "inputs",
                    format!(
                        "add needs inputs of one shape: input 0 is {first:?}, input {i} is {s:?}"
                    ),
                ));
            }
        }
        Ok(first.to_vec())
    }
    fn flops(&self, inputs: &[&[usize]], output: &[usize], _seq: usize) -> u64 {
        output.iter().product::<usize>() as u64 * (inputs.len() as u64 - 1)
    }
    fn build(
        &self,
        kind: KernelKind,
        _inputs: &[&[usize]],
        _output: &[usize],
        _tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        Box::new(AddLayer { kind })
    }
}

#[derive(Debug)]
struct AddLayer {
    kind: KernelKind,
}

impl Layer for AddLayer {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, scratch: &mut Scratch) -> Tensor {
        match self.kind {
            KernelKind::Fast => {
                // One pass writes the first two inputs' sum into a buffer of the worker's (a
                // copy of the first, then an add, were two); the others, if any, add into it.
                let first = contiguous(inputs[0]);
                let mut out = scratch.output(first.len());
                match &inputs[1..] {
                    [] => out.copy_from_slice(&first),
                    [second, rest @ ..] => {
                        let second = contiguous(second);
                        for ((y, a), b) in out.iter_mut().zip(first.iter()).zip(second.iter()) {
                            *y = a + b;
                        }
                        for other in rest {
                            let other = contiguous(other);
                            out.iter_mut().zip(other.iter()).for_each(|(y, v)| *y += v);
                        }
                    }
                }
                tensor(inputs[0].shape().to_vec(), out)
            }
            KernelKind::Reference => {
                let mut sum: Vec<f64> = contiguous(inputs[0]).iter().map(|v| *v as f64).collect();
                for other in &inputs[1..] {
                    for (s, v) in sum.iter_mut().zip(contiguous(other).iter()) {
                        *s += *v as f64;
                    }
                }
                tensor(
                    inputs[0].shape().to_vec(),
                    sum.into_iter().map(|v| v as f32).collect(),
                )
            }
        }
    }
}
