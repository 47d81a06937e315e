//! Pooling: max and average windows (no padding, floor mode) and global average.

use ndarray::{ArrayD, Axis, IxDyn};

use super::{Layer, Scratch, ShapeError, Tensor};
use crate::config::PoolConfig;

pub fn infer_shape(p: &PoolConfig, input: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let [c, h, w] = input else {
        return Err(ShapeError::at(
            "inputs",
            format!("pooling needs [channels, height, width] records, found {input:?}"),
        ));
    };
    if p.kernel[0] > *h || p.kernel[1] > *w {
        return Err(ShapeError::at(
            "kernel",
            format!("kernel {:?} is larger than the input {input:?}", p.kernel),
        ));
    }
    Ok(vec![
        *c,
        (h - p.kernel[0]) / p.stride[0] + 1,
        (w - p.kernel[1]) / p.stride[1] + 1,
    ])
}

pub fn infer_global_shape(input: &[usize]) -> Result<Vec<usize>, ShapeError> {
    match input {
        [c, _, _] => Ok(vec![*c]),
        _ => Err(ShapeError::at(
            "inputs",
            format!("global_avgpool2d needs [channels, height, width] records, found {input:?}"),
        )),
    }
}

/// A plain comparison, which compiles to `maxps`; `f32::max`'s NaN rules keep the loops from
/// vectorising. Inputs are finite (records are checked), so the difference never shows.
#[inline(always)]
fn max(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
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
        let mut out = vec![0.0f32; n * c * oh * ow];
        for (plane, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
            for (oy, row_out) in dst.chunks_exact_mut(ow).enumerate() {
                // Window rows one at a time, each swept across the whole output row: the inner
                // loops run over contiguous memory and vectorise, unlike window-by-window folds.
                for ki in 0..kh {
                    let row = &plane[(oy * sh + ki) * w..][..w];
                    if self.max {
                        if ki == 0 {
                            row_out.fill(f32::NEG_INFINITY);
                        }
                        if kw == 2 && sw == 2 {
                            for (o, pair) in row_out.iter_mut().zip(row.chunks_exact(2)) {
                                *o = max(*o, max(pair[0], pair[1]));
                            }
                        } else {
                            for kj in 0..kw {
                                for (ox, o) in row_out.iter_mut().enumerate() {
                                    *o = max(*o, row[ox * sw + kj]);
                                }
                            }
                        }
                    } else {
                        for kj in 0..kw {
                            for (ox, o) in row_out.iter_mut().enumerate() {
                                *o += row[ox * sw + kj];
                            }
                        }
                    }
                }
                if !self.max {
                    row_out.iter_mut().for_each(|v| *v *= inv);
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
