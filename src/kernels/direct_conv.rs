//! Direct convolution for stride 1 (AVX2+FMA): no im2col matrix at all.
//!
//! For each output row, a few filters' accumulators for 16 or 32 consecutive output pixels stay
//! in registers while every tap `(channel, ki, kj)` adds `weight × input row shifted by the tap`,
//! read straight from a zero-padded copy of the image. The im2col path moves each input value up
//! to kh·kw times through memory and back; here each tap costs one unaligned load per 8 pixels,
//! shared by the filters in flight.

use super::span;

/// Floats of right margin on every padded row, so a 32-wide load never leaves the row buffer.
const MARGIN: usize = 32;

/// A zero-padded copy of one image's channels: rows of `width + MARGIN`. Fields are private:
/// [`conv_group`]'s `unsafe` reads rely on `data` holding `channels · rows · width` values.
pub struct Padded<'a> {
    channels: usize,
    rows: usize,
    width: usize,
    data: &'a [f32],
}

/// Floats [`pad`] needs for an image of `[c, h, w]` with `[ph, pw]` padding, or `None` if that
/// overflows `usize`.
pub fn padded_len([c, h, w]: [usize; 3], [ph, pw]: [usize; 2]) -> Option<usize> {
    let rows = span(2, ph, h)?;
    let width = span(2, pw, w)?.checked_add(MARGIN)?;
    c.checked_mul(rows)?.checked_mul(width)
}

/// Copy `image` (`[c, h, w]`) into `buf` with `ph`/`pw` zeros around each plane. Panics if
/// `image` does not hold `c·h·w` values or `buf` is shorter than [`padded_len`].
pub fn pad<'a>(
    image: &[f32],
    [c, h, w]: [usize; 3],
    [ph, pw]: [usize; 2],
    buf: &'a mut [f32],
) -> Padded<'a> {
    let len = padded_len([c, h, w], [ph, pw]).expect("padded image size overflows");
    assert!(
        Some(image.len()) == c.checked_mul(h).and_then(|ch| ch.checked_mul(w)) && buf.len() >= len,
        "pad: image of {} values for [{c}, {h}, {w}], buffer of {} for {len}",
        image.len(),
        buf.len()
    );
    let (rows, width) = (h + 2 * ph, w + 2 * pw + MARGIN);
    let buf = &mut buf[..len];
    buf.fill(0.0);
    if h * w > 0 {
        for (plane, dst) in image
            .chunks_exact(h * w)
            .zip(buf.chunks_exact_mut(rows * width))
        {
            for (y, src) in plane.chunks_exact(w.max(1)).enumerate() {
                dst[(y + ph) * width + pw..][..w].copy_from_slice(src);
            }
        }
    }
    Padded {
        channels: c,
        rows,
        width,
        data: buf,
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
/// the output is written once and never read back). Needs a CPU with AVX2 and FMA; panics
/// without, or if the geometry does not fit the buffers.
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
        super::cpu_has_avx2_fma(),
        "direct convolution needs AVX2 and FMA"
    );
    let [kh, kw] = g.kernel;
    let [dh, dw] = g.dilation;
    let [oh, ow] = g.out;
    let taps =
        g.cg.checked_mul(kh)
            .and_then(|t| t.checked_mul(kw))
            .filter(|t| *t > 0)
            .expect("direct convolution: empty or oversized kernel");
    let fg = weight.len() / taps;
    // Every check in checked arithmetic, so no wrap-around can pass a buffer that is too small.
    let fits = span(fg, oh, 0)
        .and_then(|v| v.checked_mul(ow))
        .is_some_and(|need| out.len() >= need)
        && channel0.checked_add(g.cg).is_some_and(|c| c <= x.channels)
        && bias.len() >= fg
        && span(kh - 1, dh, oh).is_some_and(|rows| rows <= x.rows)
        && span(kw - 1, dw, ow)
            .and_then(|w| w.checked_add(MARGIN))
            .is_some_and(|w| w <= x.width);
    assert!(
        fits,
        "direct convolution: geometry {g:?} does not fit the buffers"
    );
    if oh == 0 || ow == 0 || fg == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (asserted). `x.data` holds channels·rows·width values
    // (`Padded` is only built by `pad`, fields private) and channel0 + cg ≤ channels. Every input
    // read is at a row below oh + (kh-1)·dh ≤ rows and a column below ow rounded up to the block
    // (at most 31 past ow) + (kw-1)·dw ≤ width - MARGIN + 31 < width. Weights are read below
    // fg·taps ≤ weight.len(), biases below fg ≤ bias.len(). Every write is a bounds-checked slice
    // of `out`.
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
