//! `flatten`: a record's axes into one, row-major, as `torch.flatten(x, 1)`.

use std::sync::Arc;

use ndarray::IxDyn;

use super::{Attrs, Chunk, KernelKind, Layer, Op, OpFamily, Scratch, ShapeError, Tensor};

#[derive(Debug)]
pub(super) struct FlattenFamily;

impl OpFamily for FlattenFamily {
    fn names(&self) -> &'static [&'static str] {
        &["flatten"]
    }
    fn doc(&self) -> &'static str {
        "none; row-major, as `torch.flatten`; folded into a `dense` layer that alone reads it, which then reads the unflattened values, or the inputs of a `concat` on axis 0 that only the flatten reads, in place (`validate` lists the folds)"
    }
    fn configure(&self, _name: &str, _attrs: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(Flatten))
    }
}

#[derive(Debug)]
struct Flatten;

impl Op for Flatten {
    fn name(&self) -> &'static str {
        "flatten"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        Ok(vec![inputs[0].iter().product()])
    }
    fn is_flatten(&self) -> bool {
        true
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
        // A reshape has no arithmetic to get wrong: one kernel serves as both.
        Box::new(FlattenLayer)
    }
}

#[derive(Debug)]
struct FlattenLayer;

impl Layer for FlattenLayer {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let x = inputs[0];
        let n = x.shape()[0];
        let per: usize = x.shape()[1..].iter().product();
        x.as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&[n, per]))
            .expect("flatten keeps the number of values")
    }
}
