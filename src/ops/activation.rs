//! Activations: `relu`, `leaky_relu`, `sigmoid`, `tanh`, `gelu`, `softmax` as ops of their own,
//! and the same functions fused into `dense` and `conv2d` (`activation:`).

use std::sync::Arc;

use serde::Serialize;

use crate::kernels::math;

use super::{
    contiguous, tensor, Attrs, Chunk, KernelKind, Layer, Op, OpFamily, Scratch, ShapeError, Tensor,
};

/// Slope of `leaky_relu` for negative inputs (PyTorch's default).
const LEAKY_SLOPE: f32 = 0.01;

/// Elementwise (or, for softmax, last-axis) activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Identity,
    Relu,
    LeakyRelu,
    Sigmoid,
    Tanh,
    Gelu,
    Softmax,
}

impl Activation {
    /// The names `activation:` accepts (`none` is an alias of `identity`).
    pub const NAMES: [&'static str; 7] = [
        "identity",
        "relu",
        "leaky_relu",
        "sigmoid",
        "tanh",
        "gelu",
        "softmax",
    ];

    pub fn from_name(name: &str) -> Option<Activation> {
        Some(match name {
            "identity" | "none" => Activation::Identity,
            "relu" => Activation::Relu,
            "leaky_relu" => Activation::LeakyRelu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "gelu" => Activation::Gelu,
            "softmax" => Activation::Softmax,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::LeakyRelu => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Gelu => "gelu",
            Activation::Softmax => "softmax",
        }
    }
}

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
        // Branch-free, so that they run in vectors (`kernels::math` says what libm's cost).
        Activation::Sigmoid => math::map(data, math::sigmoid),
        Activation::Tanh => math::map(data, math::tanh),
        // Exact GELU, as PyTorch's default: x·Φ(x) through erf (not the tanh approximation).
        Activation::Gelu => math::map(data, |x| {
            0.5 * x * (1.0 + math::erf(x * std::f32::consts::FRAC_1_SQRT_2))
        }),
        Activation::Softmax => {
            if last_axis > 0 {
                math::vectorised(|| data.chunks_exact_mut(last_axis).for_each(math::softmax));
            }
        }
    }
}

/// The reference: each function from its definition, in f64.
pub(super) fn reference_activation(act: Activation, data: &mut [f64], last_axis: usize) {
    match act {
        Activation::Identity => {}
        Activation::Relu => data.iter_mut().for_each(|x| *x = x.max(0.0)),
        Activation::LeakyRelu => data.iter_mut().for_each(|x| {
            if *x < 0.0 {
                *x *= LEAKY_SLOPE as f64
            }
        }),
        Activation::Sigmoid => data.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
        Activation::Tanh => data.iter_mut().for_each(|x| *x = x.tanh()),
        Activation::Gelu => data
            .iter_mut()
            .for_each(|x| *x = 0.5 * *x * (1.0 + libm::erf(*x / 2f64.sqrt()))),
        Activation::Softmax => {
            for row in data.chunks_exact_mut(last_axis.max(1)) {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|x| (x - max).exp()).sum();
                row.iter_mut().for_each(|x| *x = (*x - max).exp() / sum);
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct ActivationFamily;

impl OpFamily for ActivationFamily {
    fn names(&self) -> &'static [&'static str] {
        &["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax"]
    }
    fn doc(&self) -> &'static str {
        "none; `leaky_relu` has slope 0.01, `gelu` is exact (erf), `softmax` acts on the last axis"
    }
    fn configure(&self, name: &str, _attrs: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        let act = Activation::from_name(name).expect("the family's names are activations");
        Ok(Arc::new(ActivationOp(act)))
    }
}

#[derive(Debug)]
struct ActivationOp(Activation);

impl Op for ActivationOp {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn rows(&self, inputs: &[super::Rows]) -> Result<super::Rows, ShapeError> {
        super::same_rows(self.name(), inputs)
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        Ok(inputs[0].to_vec())
    }
    fn flops(&self, inputs: &[&[usize]], _output: &[usize], _seq: usize) -> u64 {
        inputs[0].iter().product::<usize>() as u64
    }
    fn elementwise_activation(&self) -> Option<Activation> {
        (self.0 != Activation::Softmax).then_some(self.0)
    }
    fn build(
        &self,
        kind: KernelKind,
        _inputs: &[&[usize]],
        _output: &[usize],
        _tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        Box::new(ActivationLayer { act: self.0, kind })
    }
}

#[derive(Debug)]
struct ActivationLayer {
    act: Activation,
    kind: KernelKind,
}

impl Layer for ActivationLayer {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let x = inputs[0];
        let last = *x.shape().last().unwrap_or(&1);
        match self.kind {
            KernelKind::Fast => {
                let mut out = x.as_standard_layout().into_owned();
                apply_activation(self.act, out.as_slice_mut().expect("standard layout"), last);
                out
            }
            KernelKind::Reference => {
                let mut v: Vec<f64> = contiguous(x).iter().map(|v| *v as f64).collect();
                reference_activation(self.act, &mut v, last);
                tensor(
                    x.shape().to_vec(),
                    v.into_iter().map(|v| v as f32).collect(),
                )
            }
        }
    }
}
