//! Activations, as ops of their own and fused into dense and conv2d (`activation:`).

use super::{Layer, Scratch, Tensor};
use crate::config::Activation;

/// Slope of `leaky_relu` for negative inputs (PyTorch's default).
const LEAKY_SLOPE: f32 = 0.01;

/// Apply `act` in place; `last_axis` is the length of the last axis (softmax normalises over it).
pub fn apply_activation(act: Activation, data: &mut [f32], last_axis: usize) {
    match act {
        Activation::Identity => {}
        Activation::Relu => data.iter_mut().for_each(|x| *x = x.max(0.0)),
        Activation::LeakyRelu => data.iter_mut().for_each(|x| {
            if *x < 0.0 {
                *x *= LEAKY_SLOPE
            }
        }),
        Activation::Sigmoid => data.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
        Activation::Tanh => data.iter_mut().for_each(|x| *x = x.tanh()),
        // Exact GELU, as PyTorch's default: x·Φ(x) through erf.
        Activation::Gelu => data
            .iter_mut()
            .for_each(|x| *x = 0.5 * *x * (1.0 + libm::erff(*x * std::f32::consts::FRAC_1_SQRT_2))),
        Activation::Softmax => {
            if last_axis == 0 {
                return;
            }
            for row in data.chunks_exact_mut(last_axis) {
                // Subtract the maximum so exp never overflows.
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
        }
    }
}

#[derive(Debug)]
pub struct ActivationLayer(pub Activation);

impl Layer for ActivationLayer {
    fn forward(&self, inputs: &[&Tensor], _scratch: &mut Scratch) -> Tensor {
        let mut out = inputs[0].as_standard_layout().into_owned();
        let last = *out.shape().last().unwrap_or(&1);
        apply_activation(self.0, out.as_slice_mut().unwrap(), last);
        out
    }
}
