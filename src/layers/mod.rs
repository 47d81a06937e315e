//! The layers: shape inference, parameter layouts and the forward math, one file per family.
//!
//! A layer sees batched tensors (`[N, ...record shape]`, row-major) and nothing else: it knows
//! nothing of stages, channels or chunks. The same layer objects run inside a stage actor and in
//! the single-threaded monolithic reference, which is why the two agree.

mod activation;
mod conv;
mod dense;
mod direct_conv;
pub mod gemm;
mod merge;
mod norm;
pub mod packed;
mod pool;

use std::fmt::Debug;

use ndarray::ArrayD;

use crate::config::OpConfig;

pub use activation::apply_activation;

/// A batched activation: axis 0 is the record within the chunk.
pub type Tensor = ArrayD<f32>;

/// A parameter tensor a layer needs: its name suffix (`weight`) and PyTorch shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub suffix: &'static str,
    pub shape: Vec<usize>,
}

/// Buffers a worker reuses from chunk to chunk, so the hot path does not allocate them again.
#[derive(Debug, Default)]
pub struct Scratch {
    /// im2col columns for convolution.
    pub cols: Vec<f32>,
    /// A convolution's product, pixels × filters, before it is laid out channels-first.
    pub product: Vec<f32>,
}

/// One layer with its weights, ready to run.
pub trait Layer: Send + Sync + Debug {
    /// Compute the layer over a batch. Input shapes were checked when the plan was built.
    fn forward(&self, inputs: &[&Tensor], scratch: &mut Scratch) -> Tensor;
}

/// Why a layer's inputs do not fit it, and which of its keys the problem is about.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeError {
    /// The layer key to point at (`kernel`, `inputs`, ...).
    pub key: &'static str,
    pub message: String,
}

impl ShapeError {
    pub fn at(key: &'static str, message: String) -> ShapeError {
        ShapeError { key, message }
    }
}

/// The output shape of `op` over records of `inputs` shapes, or why they do not fit.
pub fn infer_shape(op: &OpConfig, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    match op {
        OpConfig::Dense { units, .. } => dense::infer_shape(*units, inputs[0]),
        OpConfig::Conv2d(c) => conv::infer_shape(c, inputs[0]),
        OpConfig::MaxPool2d(p) | OpConfig::AvgPool2d(p) => pool::infer_shape(p, inputs[0]),
        OpConfig::GlobalAvgPool2d => pool::infer_global_shape(inputs[0]),
        OpConfig::Flatten => Ok(vec![inputs[0].iter().product()]),
        OpConfig::BatchNorm { .. } | OpConfig::LayerNorm { .. } => Ok(inputs[0].to_vec()),
        OpConfig::Activation(_) | OpConfig::Identity => Ok(inputs[0].to_vec()),
        OpConfig::Add => merge::infer_add(inputs),
        OpConfig::Concat { axis } => merge::infer_concat(*axis, inputs),
    }
}

/// The parameter tensors `op` reads, in PyTorch layout. Input shapes must already fit.
pub fn param_specs(op: &OpConfig, input: &[usize]) -> Vec<ParamSpec> {
    let spec = |suffix, shape| ParamSpec { suffix, shape };
    match op {
        OpConfig::Dense { units, bias, .. } => {
            let mut v = vec![spec("weight", vec![*units, *input.last().unwrap()])];
            if *bias {
                v.push(spec("bias", vec![*units]));
            }
            v
        }
        OpConfig::Conv2d(c) => {
            let mut v = vec![spec(
                "weight",
                vec![c.filters, input[0] / c.groups, c.kernel[0], c.kernel[1]],
            )];
            if c.bias {
                v.push(spec("bias", vec![c.filters]));
            }
            v
        }
        OpConfig::BatchNorm { .. } => {
            let c = vec![input[0]];
            ["weight", "bias", "running_mean", "running_var"]
                .into_iter()
                .map(|s| spec(s, c.clone()))
                .collect()
        }
        OpConfig::LayerNorm { .. } => {
            let c = vec![*input.last().unwrap()];
            vec![spec("weight", c.clone()), spec("bias", c)]
        }
        _ => Vec::new(),
    }
}

/// Floating-point operations per record (a multiply-add counts 2).
pub fn flops(op: &OpConfig, inputs: &[&[usize]], output: &[usize]) -> u64 {
    let out: u64 = output.iter().product::<usize>() as u64;
    let inp: u64 = inputs[0].iter().product::<usize>() as u64;
    match op {
        OpConfig::Dense { units, .. } => 2 * inp * *units as u64,
        OpConfig::Conv2d(c) => {
            let per_out = (inputs[0][0] / c.groups * c.kernel[0] * c.kernel[1]) as u64;
            2 * per_out * out
        }
        OpConfig::MaxPool2d(p) | OpConfig::AvgPool2d(p) => out * (p.kernel[0] * p.kernel[1]) as u64,
        OpConfig::Add => out * (inputs.len() as u64 - 1),
        OpConfig::Flatten | OpConfig::Identity | OpConfig::Concat { .. } => 0,
        _ => inp,
    }
}

/// Build a runnable layer. `params` are in the order [`param_specs`] lists them, converted to f32.
pub fn build(
    op: &OpConfig,
    inputs: &[&[usize]],
    output: &[usize],
    params: Vec<Vec<f32>>,
) -> Box<dyn Layer> {
    let mut params = params.into_iter();
    match op {
        OpConfig::Dense {
            units,
            bias,
            activation,
        } => Box::new(dense::Dense {
            inputs: *inputs[0].last().unwrap(),
            units: *units,
            weight: packed::DenseWeights::new(
                params.next().unwrap(),
                *units,
                *inputs[0].last().unwrap(),
            ),
            bias: if *bias { params.next() } else { None },
            activation: *activation,
        }),
        OpConfig::Conv2d(c) => Box::new(conv::Conv2d::new(
            *c,
            inputs[0],
            output,
            params.next().unwrap(),
            if c.bias { params.next() } else { None },
        )),
        OpConfig::MaxPool2d(p) => Box::new(pool::Pool2d {
            config: *p,
            max: true,
            input: inputs[0].to_vec(),
            output: output.to_vec(),
        }),
        OpConfig::AvgPool2d(p) => Box::new(pool::Pool2d {
            config: *p,
            max: false,
            input: inputs[0].to_vec(),
            output: output.to_vec(),
        }),
        OpConfig::GlobalAvgPool2d => Box::new(pool::GlobalAvgPool2d),
        OpConfig::Flatten => Box::new(merge::Flatten),
        OpConfig::BatchNorm { eps } => {
            let (w, b, m, v) = (
                params.next().unwrap(),
                params.next().unwrap(),
                params.next().unwrap(),
                params.next().unwrap(),
            );
            Box::new(norm::BatchNorm::new(&w, &b, &m, &v, *eps))
        }
        OpConfig::LayerNorm { eps } => Box::new(norm::LayerNorm {
            weight: params.next().unwrap(),
            bias: params.next().unwrap(),
            eps: *eps,
        }),
        OpConfig::Activation(a) => Box::new(activation::ActivationLayer(*a)),
        OpConfig::Identity => Box::new(activation::ActivationLayer(
            crate::config::Activation::Identity,
        )),
        OpConfig::Add => Box::new(merge::Add),
        OpConfig::Concat { axis } => Box::new(merge::Concat { axis: *axis }),
    }
}
