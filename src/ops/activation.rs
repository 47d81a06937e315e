//! Activations: `relu`, `leaky_relu`, `sigmoid`, `tanh`, `gelu`, `softmax` as ops of their own,
//! and the same functions fused into `dense` and `conv2d` (`activation:`).

use std::sync::Arc;

use serde::Serialize;

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
        Activation::Sigmoid => data.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
        Activation::Tanh => data.iter_mut().for_each(|x| *x = x.tanh()),
        // Exact GELU, as PyTorch's default: x·Φ(x) through erf (not the tanh approximation).
        Activation::Gelu => gelu(data),
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

/// GELU in place, on the widest vectors this CPU has.
fn gelu(data: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::isa().has_avx2_fma() {
        // SAFETY: `isa()` reports AVX2+FMA, or AVX-512 (which needs both), only when the CPU has
        // them.
        unsafe { gelu_avx2(data) };
        return;
    }
    gelu_loop(data);
}

/// [`gelu_loop`] compiled for AVX2 and FMA: eight lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu_avx2(data: &mut [f32]) {
    gelu_loop(data);
}

#[inline(always)]
fn gelu_loop(data: &mut [f32]) {
    for x in data.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf in f32 as a rational function of x on [-4, 4] (beyond which erf is ±1 in f32): the
/// approximation Eigen and XLA use, within 3.2e-7 of the exact erf everywhere (measured against
/// f64 quadrature on a 0.001 grid over [-6, 6]; `tests` below checks it against `libm::erf`).
/// Unlike libm's erff it has no branches and no table, so the GELU loop vectorises: it took 12%
/// of all-MiniLM-L6-v2's time through libm.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, as published
fn erf(x: f32) -> f32 {
    // `clamp` is two comparisons, which vectorise (unlike `f32::min`/`max`'s NaN rules).
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08;
    p = x2 * p - 2.10102402082508e-06;
    p = x2 * p - 5.69250639462346e-05;
    p = x2 * p - 7.34990630326855e-04;
    p = x2 * p - 2.95459980854025e-03;
    p = x2 * p - 1.60960333262415e-02;
    let mut q = x2 * -1.45660718464996e-05 - 2.13374055278905e-04;
    q = x2 * q - 1.68282697438203e-03;
    q = x2 * q - 7.37332916720468e-03;
    q = x2 * q - 1.42647390514189e-02;
    x * p / q
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_is_within_4e_7_of_erf() {
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            worst = worst.max((erf(x as f32) as f64 - libm::erf(x)).abs());
        }
        assert!(worst < 4e-7, "{worst:e}");
    }
}
