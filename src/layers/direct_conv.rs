//! Direct convolution for stride 1 (AVX2+FMA): no im2col matrix at all.
//!
//! For each output row, a few filters' accumulators for 16 or 32 consecutive output pixels stay
//! in registers while every tap `(channel, ki, kj)` adds `weight × input row shifted by the tap`,
//! read straight from a zero-padded copy of the image. The im2col path moves each input value up
//! to kh·kw times through memory and back; here each tap costs one unaligned load per 8 pixels,
//! shared by the filters in flight.

/// Floats of right margin on every padded row, so a 32-wide load never leaves the row buffer.
const MARGIN: usize = 32;

/// A zero-padded copy of one image's channels: rows of `width + MARGIN`.
pub struct Padded {
    pub rows: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

/// Copy `image` (`[c, h, w]`) into `buf` with `ph`/`pw` zeros around each plane.
pub fn pad(
    image: &[f32],
    [c, h, w]: [usize; 3],
    [ph, pw]: [usize; 2],
    buf: &mut Vec<f32>,
) -> Padded {
    let (rows, width) = (h + 2 * ph, w + 2 * pw + MARGIN);
    buf.clear();
    buf.resize(c * rows * width, 0.0);
    for (plane, dst) in image
        .chunks_exact(h * w)
        .zip(buf.chunks_exact_mut(rows * width))
    {
        for (y, src) in plane.chunks_exact(w).enumerate() {
            dst[(y + ph) * width + pw..][..w].copy_from_slice(src);
        }
    }
    Padded {
        rows,
        width,
        data: std::mem::take(buf),
    }
}

/// Geometry of one convolution, as the kernel needs it.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Input channels per group.
    pub cg: usize,
    pub kernel: [usize; 2],
    pub dilation: [usize; 2],
    /// Output height and width.
    pub out: [usize; 2],
}

/// `out[f][oy][ox] = bias[f] + Σ weight[f][c][ki][kj] · x[c][oy + ki·dh][ox + kj·dw]` for the
/// `fg` filters of one group, `x` being the group's channels of the padded image and `weight`
/// their `[fg, cg, kh, kw]` slice; with `relu`, negative sums are written as zero (fused here, so
/// the output is written once and never read back). Needs AVX2 and FMA
/// (see [`super::packed::simd_available`]).
pub fn conv_group(
    g: Geometry,
    x: &Padded,
    channel0: usize,
    weight: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    assert!(
        super::packed::simd_available(),
        "direct convolution needs AVX2 and FMA"
    );
    let taps = g.cg * g.kernel[0] * g.kernel[1];
    let fg = weight.len() / taps;
    let [oh, ow] = g.out;
    assert!(
        out.len() >= fg * oh * ow
            && x.data.len() >= (channel0 + g.cg) * x.rows * x.width
            && bias.len() >= fg
    );
    assert!(oh + (g.kernel[0] - 1) * g.dilation[0] <= x.rows);
    assert!(x.width >= ow + (g.kernel[1] - 1) * g.dilation[1] + MARGIN);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (asserted). Every input read is at a row below `x.rows`
    // and a column below `(ow rounded up to the block) + (kw-1)·dw`, inside the row's `MARGIN`;
    // every write is inside `out` (asserted) and goes through a bounds-checked tail copy.
    unsafe {
        let mut f = 0;
        if ow > 16 {
            while f + 2 <= fg {
                rows_kernel::<4, 2>(g, x, channel0, weight, bias, relu, f, out);
                f += 2;
            }
        } else {
            // Six filters share each pair of input loads: 12 accumulators, 2 inputs, 1 weight.
            while f + 6 <= fg {
                rows_kernel::<2, 6>(g, x, channel0, weight, bias, relu, f, out);
                f += 6;
            }
            while f + 2 <= fg {
                rows_kernel::<2, 2>(g, x, channel0, weight, bias, relu, f, out);
                f += 2;
            }
        }
        while f < fg {
            rows_kernel::<2, 1>(g, x, channel0, weight, bias, relu, f, out);
            f += 1;
        }
    }
}

/// `NF` filters from `f0`, all output rows, in blocks of `NV` vectors (8 pixels each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_kernel<const NV: usize, const NF: usize>(
    g: Geometry,
    x: &Padded,
    channel0: usize,
    weight: &[f32],
    bias: &[f32],
    relu: bool,
    f0: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let [kh, kw] = g.kernel;
    let [dh, dw] = g.dilation;
    let [oh, ow] = g.out;
    let taps = g.cg * kh * kw;
    let plane = x.rows * x.width;
    let xp = x.data.as_ptr().add(channel0 * plane);
    let wp = weight.as_ptr().add(f0 * taps);
    let block = NV * 8;
    for oy in 0..oh {
        let mut x0 = 0;
        while x0 < ow {
            let mut acc = [[_mm256_setzero_ps(); NV]; NF];
            for (fi, accf) in acc.iter_mut().enumerate() {
                *accf = [_mm256_set1_ps(bias[f0 + fi]); NV];
            }
            for c in 0..g.cg {
                for ki in 0..kh {
                    let row = xp.add(c * plane + (oy + ki * dh) * x.width + x0);
                    for kj in 0..kw {
                        let src = row.add(kj * dw);
                        let mut v = [_mm256_setzero_ps(); NV];
                        for (i, vi) in v.iter_mut().enumerate() {
                            *vi = _mm256_loadu_ps(src.add(i * 8));
                        }
                        let t = (c * kh + ki) * kw + kj;
                        for (fi, accf) in acc.iter_mut().enumerate() {
                            let wv = _mm256_broadcast_ss(&*wp.add(fi * taps + t));
                            for i in 0..NV {
                                accf[i] = _mm256_fmadd_ps(wv, v[i], accf[i]);
                            }
                        }
                    }
                }
            }
            let n = block.min(ow - x0);
            for (fi, accf) in acc.iter().enumerate() {
                let dst = &mut out[((f0 + fi) * oh + oy) * ow + x0..][..n];
                let mut tmp = [0.0f32; 32];
                for (i, a) in accf.iter().enumerate() {
                    let a = if relu {
                        _mm256_max_ps(*a, _mm256_setzero_ps())
                    } else {
                        *a
                    };
                    if (i + 1) * 8 <= n {
                        _mm256_storeu_ps(dst.as_mut_ptr().add(i * 8), a);
                    } else {
                        _mm256_storeu_ps(tmp.as_mut_ptr().add(i * 8), a);
                    }
                }
                // The ragged end of the row goes through `tmp`, so no store leaves the row.
                let full = n / 8 * 8;
                dst[full..].copy_from_slice(&tmp[full..n]);
            }
            x0 += block;
        }
    }
}
