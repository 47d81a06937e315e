//! Normalisation at inference: batchnorm (per channel, running statistics) and layernorm.

use super::{Layer, Scratch, Tensor};

#[derive(Debug)]
pub struct BatchNorm {
    /// Folded at load: `y = x · scale[c] + shift[c]`.
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl BatchNorm {
    pub fn new(weight: &[f32], bias: &[f32], mean: &[f32], var: &[f32], eps: f32) -> Self {
        let scale: Vec<f32> = weight
            .iter()
            .zip(var)
            .map(|(w, v)| (*w as f64 / (*v as f64 + eps as f64).sqrt()) as f32)
            .collect();
        let shift = bias
            .iter()
            .zip(mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        BatchNorm { scale, shift }
    }
}

impl Layer for BatchNorm {
    fn forward(&self, inputs: &[&Tensor], _scratch: &mut Scratch) -> Tensor {
        let mut out = inputs[0].as_standard_layout().into_owned();
        let channels = self.scale.len();
        let per_channel: usize = out.shape()[2..].iter().product();
        let data = out.as_slice_mut().unwrap();
        for record in data.chunks_exact_mut(channels * per_channel) {
            for (c, plane) in record.chunks_exact_mut(per_channel).enumerate() {
                let (s, t) = (self.scale[c], self.shift[c]);
                plane.iter_mut().for_each(|x| *x = *x * s + t);
            }
        }
        out
    }
}

#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl Layer for LayerNorm {
    fn forward(&self, inputs: &[&Tensor], _scratch: &mut Scratch) -> Tensor {
        let mut out = inputs[0].as_standard_layout().into_owned();
        let d = self.weight.len();
        for row in out.as_slice_mut().unwrap().chunks_exact_mut(d) {
            // Two passes in f64: the variance of a row with a large mean stays accurate.
            let mean = row.iter().map(|x| *x as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + self.eps as f64).sqrt();
            for ((x, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *x = ((*x as f64 - mean) * inv) as f32 * w + b;
            }
        }
        out
    }
}
