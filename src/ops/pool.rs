//! `maxpool2d` and `avgpool2d`: windows over `[C, H, W]` records, with PyTorch's padding
//! (−∞ for max, zeros counted in the divisor for average: `count_include_pad=True`) and floor
//! mode.

use std::sync::Arc;

use super::{
    batched, contiguous, tensor, AttrDefault, AttrKind, AttrSpec, AttrValue, Attrs, Chunk,
    KernelKind, Layer, Op, OpFamily, Scratch, ScratchNeed, ShapeError, Tensor,
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
    fn is_max_pool_2x2(&self) -> bool {
        self.max && self.kernel == [2, 2] && self.stride == [2, 2] && self.padding == [0, 0]
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

/// `dst` ← the elementwise fold of `slices`, each at least as long as `dst`: three at a time in
/// the first pass, then two more per pass, so that each pass reads and writes `dst` once. No
/// pass is a bare copy unless there is one slice: `copy_from_slice` calls `memcpy`, which costs
/// more than the fold on rows this short.
#[inline(always)]
fn fold_slices<'a>(
    dst: &mut [f32],
    mut slices: impl Iterator<Item = &'a [f32]>,
    fold: impl Fn(f32, f32) -> f32 + Copy,
) {
    match (slices.next(), slices.next(), slices.next()) {
        (Some(a), Some(b), Some(c)) => {
            for (d, ((a, b), c)) in dst.iter_mut().zip(a.iter().zip(b).zip(c)) {
                *d = fold(fold(*a, *b), *c);
            }
        }
        (Some(a), Some(b), None) => {
            for (d, (a, b)) in dst.iter_mut().zip(a.iter().zip(b)) {
                *d = fold(*a, *b);
            }
        }
        (Some(a), None, _) => dst.copy_from_slice(&a[..dst.len()]),
        // Padding is at most half the kernel, so every window holds an input value.
        (None, ..) => unreachable!("a pooling window with no input value"),
    }
    while let Some(a) = slices.next() {
        match slices.next() {
            Some(b) => {
                for (d, (a, b)) in dst.iter_mut().zip(a.iter().zip(b)) {
                    *d = fold(*d, fold(*a, *b));
                }
            }
            None => dst.iter_mut().zip(a).for_each(|(d, a)| *d = fold(*d, *a)),
        }
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
    /// Each output row in two steps whose loops vectorise: the window's input rows folded
    /// elementwise into one padded row, then the windows along that row, a pass over all the
    /// row's outputs per tap (or per three). Reading taps with a stride (`step_by`) does not
    /// vectorise: ResNet's 3×3 stride-2 max pool ran about 3× slower that way.
    fn fast(&self, x: &[f32], out: &mut [f32], padded: &mut [f32]) {
        if self.op.max {
            self.fast_fold(x, out, padded, f32::NEG_INFINITY, max, |_| {});
        } else {
            // The divisor counts padded taps (`count_include_pad`).
            let inv = 1.0 / (self.op.kernel[0] * self.op.kernel[1]) as f32;
            let scale = |row: &mut [f32]| row.iter_mut().for_each(|v| *v *= inv);
            self.fast_fold(x, out, padded, 0.0, |a, b| a + b, scale);
        }
    }

    /// `fast` for one fold: `identity` is what padding contributes (−∞ to a max, zero to a sum),
    /// `fold` combines two values and `finish` runs on each output row while it is in cache.
    /// Generic so that each fold compiles to its own loops.
    #[inline(always)]
    fn fast_fold(
        &self,
        x: &[f32],
        out: &mut [f32],
        padded: &mut [f32],
        identity: f32,
        fold: impl Fn(f32, f32) -> f32 + Copy,
        finish: impl Fn(&mut [f32]),
    ) {
        let [_, h, w] = self.input;
        let [_, oh, ow] = self.output;
        let ([kh, kw], [sh, sw], [ph, pw]) = (self.op.kernel, self.op.stride, self.op.padding);
        // Only the input columns are written below: the padding around them stays as is.
        padded.fill(identity);
        for (plane, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
            for (oy, row_out) in dst.chunks_exact_mut(ow).enumerate() {
                // The window's rows inside the input; padded rows contribute nothing.
                let top = (oy * sh).saturating_sub(ph);
                let bottom = (oy * sh + kh).saturating_sub(ph).min(h);
                let window = (top..bottom).map(|y| &plane[y * w..][..w]);
                fold_slices(&mut padded[pw..pw + w], window, fold);
                // Output `ox` folds padded columns `ox·sw + kj` for `kj` in `0..kw`.
                let padded = &*padded;
                match sw {
                    1 => fold_slices(row_out, (0..kw).map(|kj| &padded[kj..][..ow]), fold),
                    2 => {
                        // Tap `kj` of output `ox` is half `kj % 2` of column pair `ox`, pairs
                        // counted from column `kj - kj % 2`. LLVM splits pairs with loads and
                        // shuffles, where it leaves a strided read scalar. The first three
                        // taps (ResNet's 3×3) share one pass.
                        let pairs = |kj: usize| padded[kj - kj % 2..][..2 * ow].chunks_exact(2);
                        let outs = row_out.iter_mut();
                        match kw {
                            1 => outs.zip(pairs(0)).for_each(|(o, p)| *o = p[0]),
                            2 => outs.zip(pairs(0)).for_each(|(o, p)| *o = fold(p[0], p[1])),
                            _ => outs
                                .zip(pairs(0).zip(pairs(2)))
                                .for_each(|(o, (p, q))| *o = fold(fold(p[0], p[1]), q[0])),
                        }
                        for kj in 3..kw {
                            let outs = row_out.iter_mut().zip(pairs(kj));
                            outs.for_each(|(o, p)| *o = fold(*o, p[kj % 2]));
                        }
                    }
                    // Wider strides: plain strided taps, which no model here uses.
                    _ => {
                        let taps = |kj: usize| padded[kj..].iter().step_by(sw);
                        row_out.iter_mut().zip(taps(0)).for_each(|(o, v)| *o = *v);
                        for kj in 1..kw {
                            let outs = row_out.iter_mut().zip(taps(kj));
                            outs.for_each(|(o, v)| *o = fold(*o, *v));
                        }
                    }
                }
                finish(row_out);
            }
        }
    }

    /// Floats of the padded row `fast` folds input rows into: the row, its padding on both
    /// sides, and one more so that stride-2 windows read whole column pairs.
    fn padded_len(&self) -> usize {
        self.input[2] + 2 * self.op.padding[1] + 1
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
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, scratch: &mut Scratch) -> Tensor {
        let x = contiguous(inputs[0]);
        let n = inputs[0].shape()[0];
        // Both kernels write every output, so the storage need not start as zeros.
        let mut out = scratch.output(n * self.output.iter().product::<usize>());
        match self.kind {
            KernelKind::Fast => {
                let (padded, _) = scratch.slots(self.scratch(n));
                self.fast(&x, &mut out, padded);
            }
            KernelKind::Reference => self.reference(&x, &mut out),
        }
        tensor(batched(n, &self.output), out)
    }

    fn scratch(&self, _rows: usize) -> ScratchNeed {
        match self.kind {
            KernelKind::Fast => [self.padded_len(), 0],
            KernelKind::Reference => [0, 0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::seeded_stream;

    /// The fast kernel against the reference on kernels up to 3 (square and rectangular) and a
    /// few wider ones (whose fourth and fifth taps take passes of their own), strides 1 to 3 on
    /// each axis (1 and 2 take their own paths, 3 the general one), every padding PyTorch
    /// allows, and sizes that are no multiple of a vector (1 leaves windows mostly padding):
    /// two records of three channels each. Max pooling only selects, so it must match to the
    /// bit. Average pooling sums `K = kh·kw` values in [−1, 1) in f32, off by at most
    /// `(K − 1)·u·K` (u = 2⁻²⁴), `(K − 1)·u` once divided by K; the divisor and both roundings to
    /// f32 add under 3u: `(K + 2)·u`, under 1e-6 up to 3×3.
    #[test]
    fn fast_matches_reference_on_odd_shapes() {
        let mut next = seeded_stream(7, "pool-odd-shapes");
        // One scratch for all cases: the kernel must not rely on what earlier ones left there.
        let mut scratch = Scratch::default();
        let sizes = [1, 5, 17, 33];
        let kernels = [
            [1, 1],
            [2, 2],
            [3, 3],
            [2, 3],
            [3, 2],
            [4, 4],
            [2, 5],
            [5, 3],
        ];
        let mut cases = 0;
        for kernel in kernels {
            for stride in grid(1..=3, 1..=3) {
                for padding in grid(0..=kernel[0] / 2, 0..=kernel[1] / 2) {
                    for [h, w] in grid(sizes, sizes) {
                        for max in [true, false] {
                            let op = PoolOp {
                                kernel,
                                stride,
                                padding,
                                max,
                            };
                            // Shapes whose kernel is larger than the padded input are skipped.
                            if op.output_shape(&[&[3, h, w]]).is_ok() {
                                compare(op, [3, h, w], &mut next, &mut scratch);
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
        // Guards against a loop that silently skips everything.
        assert!(cases > 1000, "only {cases} cases ran");
    }

    /// Every `[a, b]` with `a` from `first` and `b` from `second`.
    fn grid<A, B>(first: A, second: B) -> impl Iterator<Item = [usize; 2]>
    where
        A: IntoIterator<Item = usize>,
        B: IntoIterator<Item = usize> + Clone,
    {
        first
            .into_iter()
            .flat_map(move |a| second.clone().into_iter().map(move |b| [a, b]))
    }

    /// Both kernels of `op` on two records of `input`; see the test above for the tolerance.
    fn compare(
        op: PoolOp,
        input: [usize; 3],
        next: &mut impl FnMut() -> f32,
        scratch: &mut Scratch,
    ) {
        let output = op.output_shape(&[&input]).unwrap();
        let shape = [2, input[0], input[1], input[2]];
        let x: Vec<f32> = (0..shape.iter().product()).map(|_| next()).collect();
        let x = Tensor::from_shape_vec(shape.to_vec(), x).unwrap();
        let mut run = |kind| {
            let layer = op.build(kind, &[&input], &output, Vec::new());
            layer.forward(&[&x], &Chunk::records(2), scratch)
        };
        let (fast, reference) = (run(KernelKind::Fast), run(KernelKind::Reference));
        let what = format!("{op:?} on {input:?}");
        assert_eq!(fast.shape(), reference.shape(), "{what}");
        let taps = (op.kernel[0] * op.kernel[1]) as f32;
        let tolerance = (taps + 2.0) * f32::EPSILON / 2.0;
        for (i, (a, b)) in fast.iter().zip(reference.iter()).enumerate() {
            if op.max {
                assert_eq!(a.to_bits(), b.to_bits(), "{what}: output {i}");
            } else {
                let error = (a - b).abs();
                assert!(
                    error <= tolerance,
                    "{what}: output {i}: fast {a}, reference {b}"
                );
            }
        }
    }
}
