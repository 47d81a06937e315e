//! Fully connected layer: `y = x · Wᵀ + b` on the last axis, weights in PyTorch's `[out, in]`.

use ndarray::{ArrayD, IxDyn};

use super::packed::DenseWeights;
use super::{apply_activation, Layer, Scratch, ShapeError, Tensor};
use crate::config::Activation;

pub fn infer_shape(units: usize, input: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let mut out = input.to_vec();
    *out.last_mut().expect("records have at least one axis") = units;
    Ok(out)
}

#[derive(Debug)]
pub struct Dense {
    pub inputs: usize,
    pub units: usize,
    /// PyTorch's `[units, inputs]`, packed for the kernel at load.
    pub weight: DenseWeights,
    pub bias: Option<Vec<f32>>,
    pub activation: Activation,
}

impl Layer for Dense {
    fn forward(&self, inputs: &[&Tensor], _scratch: &mut Scratch) -> Tensor {
        let x = inputs[0];
        let rows = x.len() / self.inputs;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = self.units;
        let mut out = Vec::with_capacity(rows * self.units);
        match &self.bias {
            Some(b) => (0..rows).for_each(|_| out.extend_from_slice(b)),
            None => out.resize(rows * self.units, 0.0),
        }
        let x = x.as_standard_layout();
        self.weight
            .matmul_acc(rows, x.as_slice().unwrap(), &mut out);
        apply_activation(self.activation, &mut out, self.units);
        ArrayD::from_shape_vec(IxDyn(&shape), out).expect("dense output shape")
    }
}
