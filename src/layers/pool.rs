//! Pooling: max and average windows (no padding, floor mode) and global average.

use ndarray::{ArrayD, Axis, IxDyn};

use super::{Layer, Scratch, Tensor};
use crate::config::PoolConfig;

pub fn infer_shape(p: &PoolConfig, input: &[usize]) -> Result<Vec<usize>, String> {
    let [c, h, w] = input else {
        return Err(format!(
            "pooling needs [channels, height, width] records, found {input:?}"
        ));
    };
    if p.kernel[0] > *h || p.kernel[1] > *w {
        return Err(format!(
            "kernel {:?} is larger than the input {input:?}",
            p.kernel
        ));
    }
    Ok(vec![
        *c,
        (h - p.kernel[0]) / p.stride[0] + 1,
        (w - p.kernel[1]) / p.stride[1] + 1,
    ])
}

pub fn infer_global_shape(input: &[usize]) -> Result<Vec<usize>, String> {
    match input {
        [c, _, _] => Ok(vec![*c]),
        _ => Err(format!(
            "global_avgpool2d needs [channels, height, width] records, found {input:?}"
        )),
    }
}

#[derive(Debug)]
pub struct Pool2d {
    pub config: PoolConfig,
    pub max: bool,
    pub input: Vec<usize>,
    pub output: Vec<usize>,
}

impl Layer for Pool2d {
    fn forward(&self, inputs: &[&Tensor], _scratch: &mut Scratch) -> Tensor {
        let x = inputs[0].as_standard_layout();
        let x = x.as_slice().unwrap();
        let n = inputs[0].shape()[0];
        let (h, w) = (self.input[1], self.input[2]);
        let (c, oh, ow) = (self.output[0], self.output[1], self.output[2]);
        let ([kh, kw], [sh, sw]) = (self.config.kernel, self.config.stride);
        let inv = 1.0 / (kh * kw) as f32;
        let mut out = Vec::with_capacity(n * c * oh * ow);
        for plane in x.chunks_exact(h * w) {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = if self.max { f32::NEG_INFINITY } else { 0.0 };
                    for ki in 0..kh {
                        let row = &plane[(oy * sh + ki) * w + ox * sw..][..kw];
                        if self.max {
                            acc = row.iter().copied().fold(acc, f32::max);
                        } else {
                            acc += row.iter().sum::<f32>();
                        }
                    }
                    out.push(if self.max { acc } else { acc * inv });
                }
            }
        }
        ArrayD::from_shape_vec(IxDyn(&[n, c, oh, ow]), out).expect("pool output shape")
    }
}

#[derive(Debug)]
pub struct GlobalAvgPool2d;

impl Layer for GlobalAvgPool2d {
    fn forward(&self, inputs: &[&Tensor], _scratch: &mut Scratch) -> Tensor {
        let x = inputs[0];
        let (n, c) = (x.shape()[0], x.shape()[1]);
        let planes = x
            .to_shape(IxDyn(&[n, c, x.shape()[2] * x.shape()[3]]))
            .expect("global pool reshape");
        planes.mean_axis(Axis(2)).expect("planes are never empty")
    }
}
