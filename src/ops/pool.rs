//! `maxpool2d` and `avgpool2d`: windows over `[C, H, W]` records, with PyTorch's padding
//! (−∞ for max, zeros counted in the divisor for average: `count_include_pad=True`) and floor
//! mode.

use std::sync::Arc;

use super::{
    batched, contiguous, tensor, AttrDefault, AttrKind, AttrSpec, AttrValue, Attrs, Chunk,
    KernelKind, Layer, Op, OpFamily, Scratch, ShapeError, Tensor,
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
            AttrSpec::new(
                "padding",
                AttrKind::Pair { min: 0 },
                AttrDefault::Value(AttrValue::Pair([0, 0])),
            ),
        ];
        ATTRS
    }
    fn doc(&self) -> &'static str {
        "none; records [C, H, W]; floor mode; `padding` (at most half the kernel, as PyTorch) is −∞ for max pooling and zeros counted in the divisor for average pooling (PyTorch's default `count_include_pad=True`)"
    }
    fn configure(&self, name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        let op = PoolOp {
            kernel: a.pair("kernel"),
            stride: a.pair("stride"),
            padding: a.pair("padding"),
            max: name == "maxpool2d",
        };
        // PyTorch's rule: every window then holds at least one input value, so a max never
        // comes out as −∞.
        if (0..2).any(|i| op.padding[i] > op.kernel[i] / 2) {
            return Err(ShapeError::at(
                "padding",
                format!(
                    "padding {:?} is more than half the kernel {:?}",
                    op.padding, op.kernel
                ),
            ));
        }
        Ok(Arc::new(op))
    }
}

#[derive(Debug, Clone, Copy)]
struct PoolOp {
    kernel: [usize; 2],
    stride: [usize; 2],
    /// Rows and columns of padding on each side.
    padding: [usize; 2],
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
        // Saturating: a kernel near usize::MAX (and padding half of it) is an error, not a wrap.
        let padded = [
            h.saturating_add(self.padding[0].saturating_mul(2)),
            w.saturating_add(self.padding[1].saturating_mul(2)),
        ];
        if self.kernel[0] > padded[0] || self.kernel[1] > padded[1] {
            return Err(ShapeError::at(
                "kernel",
                format!(
                    "kernel {:?} is larger than the padded input: input {input:?}, padding {:?}",
                    self.kernel, self.padding
                ),
            ));
        }
        Ok(vec![
            *c,
            (padded[0] - self.kernel[0]) / self.stride[0] + 1,
            (padded[1] - self.kernel[1]) / self.stride[1] + 1,
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
        let ([kh, kw], [sh, sw], [ph, pw]) = (self.op.kernel, self.op.stride, self.op.padding);
        let inv = 1.0 / (kh * kw) as f32;
        let columns = self.columns();
        for (plane, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
            for (oy, row_out) in dst.chunks_exact_mut(ow).enumerate() {
                // Padding contributes nothing to a max and zero to a sum, so the output starts
                // from the identity of its fold and padded taps are skipped.
                row_out.fill(if self.op.max { f32::NEG_INFINITY } else { 0.0 });
                // Window rows one at a time, each swept across the whole output row: the inner
                // loops run over contiguous memory and vectorise, unlike window-by-window folds.
                for ki in 0..kh {
                    let Some(y) = (oy * sh + ki).checked_sub(ph).filter(|y| *y < h) else {
                        continue;
                    };
                    let row = &plane[y * w..][..w];
                    if self.op.max && kw == 2 && sw == 2 && pw == 0 {
                        for (o, pair) in row_out.iter_mut().zip(row.chunks_exact(2)) {
                            *o = max(*o, max(pair[0], pair[1]));
                        }
                        continue;
                    }
                    for (kj, &(lo, hi)) in columns.iter().enumerate() {
                        if lo == hi {
                            continue;
                        }
                        // Output columns lo..hi read input columns from lo·sw + kj − pw on.
                        let taps = row[lo * sw + kj - pw..].iter().step_by(sw);
                        let outs = row_out[lo..hi].iter_mut().zip(taps);
                        if self.op.max {
                            outs.for_each(|(o, v)| *o = max(*o, *v));
                        } else {
                            outs.for_each(|(o, v)| *o += *v);
                        }
                    }
                }
                if !self.op.max {
                    row_out.iter_mut().for_each(|v| *v *= inv);
                }
            }
        }
    }

    /// For each window column `kj`, the output columns `lo..hi` whose tap `ox·sw + kj − pw`
    /// falls inside the input row (the others read padding).
    fn columns(&self) -> Vec<(usize, usize)> {
        let (w, ow) = (self.input[2], self.output[2]);
        let (kw, sw, pw) = (self.op.kernel[1], self.op.stride[1], self.op.padding[1]);
        (0..kw)
            .map(|kj| {
                let lo = (pw.saturating_sub(kj)).div_ceil(sw);
                let hi = ((w + pw).saturating_sub(kj)).div_ceil(sw).min(ow);
                (lo.min(hi), hi)
            })
            .collect()
    }

    /// The reference: each output from its window, padded taps left out of the max and
    /// counted as zeros in the average (`count_include_pad`), the average summed in f64.
    fn reference(&self, x: &[f32], out: &mut [f32]) {
        let [_, h, w] = self.input;
        let [_, oh, ow] = self.output;
        let ([kh, kw], [sh, sw], [ph, pw]) = (self.op.kernel, self.op.stride, self.op.padding);
        for (plane, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
            for oy in 0..oh {
                for ox in 0..ow {
                    let window = (0..kh).flat_map(|ki| {
                        (0..kw).filter_map(move |kj| {
                            let y = (oy * sh + ki).checked_sub(ph).filter(|y| *y < h)?;
                            let x = (ox * sw + kj).checked_sub(pw).filter(|x| *x < w)?;
                            Some(plane[y * w + x] as f64)
                        })
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
