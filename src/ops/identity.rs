//! `identity`, `dropout` (identity at inference) and `none`: the input under a new name.

use std::sync::Arc;

use super::{Attrs, Chunk, KernelKind, Layer, Op, OpFamily, Scratch, ShapeError, Tensor};

#[derive(Debug)]
pub(super) struct IdentityFamily;

impl OpFamily for IdentityFamily {
    fn names(&self) -> &'static [&'static str] {
        &["identity", "dropout", "none"]
    }
    fn doc(&self) -> &'static str {
        "none; the input itself (dropout is the identity at inference), shared, not copied"
    }
    fn configure(&self, _name: &str, _attrs: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(Identity))
    }
}

#[derive(Debug)]
struct Identity;

impl Op for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }
    fn rows(&self, inputs: &[super::Rows]) -> Result<super::Rows, ShapeError> {
        super::same_rows(self.name(), inputs)
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        Ok(inputs[0].to_vec())
    }
    fn flops(&self, _inputs: &[&[usize]], _output: &[usize], _seq: usize) -> u64 {
        0
    }
    fn build(
        &self,
        _kind: KernelKind,
        _inputs: &[&[usize]],
        _output: &[usize],
        _tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        Box::new(IdentityLayer)
    }
    fn passes_through(&self) -> bool {
        true
    }
}

/// Only run when a caller bypasses [`Op::passes_through`]: a copy.
#[derive(Debug)]
struct IdentityLayer;

impl Layer for IdentityLayer {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        inputs[0].clone()
    }
}
