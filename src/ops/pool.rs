//! `maxpool2d` and `avgpool2d`: windows over `[C, H, W]` records (no padding, floor mode).

use std::sync::Arc;

use super::{
    batched, contiguous, tensor, AttrDefault, AttrKind, AttrSpec, Attrs, Chunk, KernelKind, Layer,
    Op, OpFamily, Scratch, ShapeError, Tensor,
};

#[derive(Debug)]
pub(super) struct PoolFamily;

impl OpFamily for PoolFamily {
    fn names(&self) -> &'static [&'static str] {
        &["maxpool2d", "avgpool2d"]
    }
    fn attributes(&self) -> &'static [AttrSpec] {
        const ATTRS: &[AttrSpec] = &[
            AttrSpec::new(
                "kernel",
                AttrKind::Pair { min: 1 },
                AttrDefault::Required("the window size, an integer or [h, w]"),
            ),
            AttrSpec::new(
                "stride",
                AttrKind::Pair { min: 1 },
                AttrDefault::SameAs("kernel"),
            ),
        ];
        ATTRS
    }
    fn doc(&self) -> &'static str {
        "none; records [C, H, W]; no padding, floor mode"
    }
    fn configure(&self, name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(PoolOp {
            kernel: a.pair("kernel"),
            stride: a.pair("stride"),
            max: name == "maxpool2d",
        }))
    }
}

#[derive(Debug, Clone, Copy)]
struct PoolOp {
    kernel: [usize; 2],
    stride: [usize; 2],
    /// Max pooling, or average.
    max: bool,
}

impl Op for PoolOp {
    fn name(&self) -> &'static str {
        if self.max {
            "maxpool2d"
        } else {
            "avgpool2d"
        }
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        let input = inputs[0];
        let [c, h, w] = input else {
            return Err(ShapeError::at(
                "inputs",
                format!("pooling needs [channels, height, width] records, found {input:?}"),
            ));
        };
        if self.kernel[0] > *h || self.kernel[1] > *w {
            return Err(ShapeError::at(
                "kernel",
                format!(
                    "kernel {:?} is larger than the input {input:?}",
                    self.kernel
                ),
            ));
        }
        Ok(vec![
            *c,
            (h - self.kernel[0]) / self.stride[0] + 1,
            (w - self.kernel[1]) / self.stride[1] + 1,
        ])
    }
    fn flops(&self, _inputs: &[&[usize]], output: &[usize], _seq: usize) -> u64 {
        output.iter().product::<usize>() as u64 * (self.kernel[0] * self.kernel[1]) as u64
    }
    fn build(
        &self,
        kind: KernelKind,
        inputs: &[&[usize]],
        output: &[usize],
        _tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        Box::new(Pool2d {
            op: *self,
            kind,
            input: [inputs[0][0], inputs[0][1], inputs[0][2]],
            output: [output[0], output[1], output[2]],
        })
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
struct Pool2d {
    op: PoolOp,
    kind: KernelKind,
    input: [usize; 3],
    output: [usize; 3],
}

impl Pool2d {
    fn fast(&self, x: &[f32], out: &mut [f32]) {
        let [_, h, w] = self.input;
        let [_, oh, ow] = self.output;
        let ([kh, kw], [sh, sw]) = (self.op.kernel, self.op.stride);
        let inv = 1.0 / (kh * kw) as f32;
        for (plane, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
            for (oy, row_out) in dst.chunks_exact_mut(ow).enumerate() {
                // Window rows one at a time, each swept across the whole output row: the inner
                // loops run over contiguous memory and vectorise, unlike window-by-window folds.
                for ki in 0..kh {
                    let row = &plane[(oy * sh + ki) * w..][..w];
                    if self.op.max {
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
                if !self.op.max {
                    row_out.iter_mut().for_each(|v| *v *= inv);
                }
            }
        }
    }

    /// The reference: each output from its window, the average summed in f64.
    fn reference(&self, x: &[f32], out: &mut [f32]) {
        let [_, h, w] = self.input;
        let [_, oh, ow] = self.output;
        let ([kh, kw], [sh, sw]) = (self.op.kernel, self.op.stride);
        for (plane, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
            for oy in 0..oh {
                for ox in 0..ow {
                    let window = (0..kh).flat_map(|ki| {
                        (0..kw).map(move |kj| plane[(oy * sh + ki) * w + ox * sw + kj] as f64)
                    });
                    dst[oy * ow + ox] = if self.op.max {
                        window.fold(f64::NEG_INFINITY, f64::max) as f32
                    } else {
                        (window.sum::<f64>() / (kh * kw) as f64) as f32
                    };
                }
            }
        }
    }
}

impl Layer for Pool2d {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let x = contiguous(inputs[0]);
        let n = inputs[0].shape()[0];
        let mut out = vec![0.0f32; n * self.output.iter().product::<usize>()];
        match self.kind {
            KernelKind::Fast => self.fast(&x, &mut out),
            KernelKind::Reference => self.reference(&x, &mut out),
        }
        tensor(batched(n, &self.output), out)
    }
}
