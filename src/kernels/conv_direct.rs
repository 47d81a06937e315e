//! Direct convolution: the image, zero-padded and split by stride phase, read in place by the
//! [`super::conv_block`] kernel. No patch matrix is built.
//!
//! A stride-`s` convolution reads, for output column `ox` and tap column `kj`, padded column
//! `ox·s + kj·d`. Split the padded image into `s × s` phase planes (plane `(py, px)` holding the
//! padded rows `≡ py` and columns `≡ px` mod `s`) and that column is `ox + (kj·d)/s` of plane
//! `(kj·d) mod s`: consecutive outputs read consecutive floats, so stride 2 costs no more per
//! FLOP than stride 1 and reads no column it does not use. Only the phases some tap reads are
//! kept (a 1×1 stride-2 convolution keeps one quarter of the image).
//!
//! The kernel's pixels are the positions of a phase plane's rows, `cols` wide: position
//! `oy·cols + ox` reads every tap at one fixed offset from there. Positions with `ox ≥ out_w`
//! (at most `(kw-1)·d/s` a row) are computed and never written.
//!
//! [`DirectConv::max_pooled`] runs the same convolution followed by a 2×2 stride-2 max pool, on
//! [`conv_block::run_pooled`]: only the pooled maxima are written.

use super::conv_block::{self, Epilogue, Grid, GridShape, PackedFilters, PooledGrid, Taps};
use super::conv_lanes::{self, LaneFilters};
use super::{short, span};

/// Padded images split into stride phases: for each channel, one plane per phase used, each
/// plane holding `images` images' `rows × cols` one below the other, zeros where the padding
/// (or the planes' extra size) is.
#[derive(Debug, Clone)]
pub struct PhaseLayout {
    /// `[channels, height, width]` of one image.
    input: [usize; 3],
    padding: [usize; 2],
    stride: [usize; 2],
    /// Phase `(py, px)` → its plane's index among the kept ones.
    slot_of: Vec<Option<usize>>,
    /// The kept phases, in plane order.
    phases: Vec<[usize; 2]>,
    images: usize,
    rows: usize,
    cols: usize,
    /// Floats per plane: images × rows × cols.
    plane_len: usize,
    /// Floats per channel: kept phases × plane.
    channel_stride: usize,
}

impl PhaseLayout {
    /// The layout of `images` images of `input` (`[c, h, w]`) padded by `padding` and split
    /// by `stride`, keeping the phases in `keep`, with each image's planes at least
    /// `min_rows × min_cols` (never smaller than the padded image needs). `None` if a size
    /// overflows `usize` or a phase is out of range.
    pub fn new(
        input: [usize; 3],
        padding: [usize; 2],
        stride: [usize; 2],
        keep: &[[usize; 2]],
        [min_rows, min_cols]: [usize; 2],
        images: usize,
    ) -> Option<PhaseLayout> {
        let [c, h, w] = input;
        let [sh, sw] = stride;
        if sh == 0 || sw == 0 {
            return None;
        }
        let rows = span(2, padding[0], h)?.div_ceil(sh).max(min_rows);
        let cols = span(2, padding[1], w)?.div_ceil(sw).max(min_cols);
        let mut slot_of = vec![None; sh.checked_mul(sw)?];
        let mut phases = Vec::new();
        for &[py, px] in keep {
            if py >= sh || px >= sw {
                return None;
            }
            if slot_of[py * sw + px].is_none() {
                slot_of[py * sw + px] = Some(phases.len());
                phases.push([py, px]);
            }
        }
        let plane_len = images.checked_mul(rows)?.checked_mul(cols)?;
        let channel_stride = phases.len().checked_mul(plane_len)?;
        c.checked_mul(channel_stride)?;
        Some(PhaseLayout {
            input,
            padding,
            stride,
            slot_of,
            phases,
            images,
            rows,
            cols,
            plane_len,
            channel_stride,
        })
    }

    /// Rows and columns of each image's part of a phase plane.
    pub fn plane(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Floats between one channel's planes and the next's.
    pub fn channel_stride(&self) -> usize {
        self.channel_stride
    }

    /// Where padded row `r`, column `c` of image 0 of a channel lives, if its phase is kept and
    /// it falls inside the plane: `slot·plane + (r/s)·cols + c/s`.
    pub fn offset(&self, r: usize, c: usize) -> Option<usize> {
        let [sh, sw] = self.stride;
        let slot = self.slot_of[(r % sh) * sw + c % sw]?;
        let (pr, pc) = (r / sh, c / sw);
        (pr < self.rows && pc < self.cols).then(|| slot * self.plane_len + pr * self.cols + pc)
    }

    /// Floats of every image's planes (without any margin a kernel needs past them).
    pub fn len(&self) -> usize {
        self.input[0] * self.channel_stride
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write `images` (`[n, c, h, w]`, n ≤ the layout's images) into `buf` in this layout:
    /// every float of `buf` is written once, pixels where their phase plane has them, zeros
    /// everywhere else (padding, planes of absent images, and `buf` past the planes, a
    /// kernel's margin). Panics if `images` is not n whole images or `buf` is shorter than the
    /// planes.
    pub fn fill(&self, images: &[f32], buf: &mut [f32]) {
        assert!(
            buf.len() >= self.len(),
            "phase layout: buffer of {} for {}",
            buf.len(),
            self.len()
        );
        let (planes, margin) = buf.split_at_mut(self.len());
        margin.fill(0.0);
        self.fill_planes(images, planes, 0..self.planes());
    }

    /// Planes in the layout: one per channel and kept phase, each `images × rows × cols`
    /// floats, channel-major, one after another from offset 0.
    pub fn planes(&self) -> usize {
        self.input[0] * self.phases.len()
    }

    /// `planes` (exactly [`PhaseLayout::len`] floats) cut into `parts` pieces that threads can
    /// fill at once with [`PhaseLayout::fill_planes`], each with the planes it holds: as even
    /// as whole planes go, the cuts at whole groups of column phases where they can be (those
    /// fill together).
    pub fn pieces<'a>(
        &self,
        mut planes: &'a mut [f32],
        parts: usize,
    ) -> Vec<(&'a mut [f32], std::ops::Range<usize>)> {
        assert_eq!(planes.len(), self.len(), "phase layout: planes to cut");
        let count = self.planes();
        let parts = parts.clamp(1, count.max(1));
        let group = self.stride[1];
        let mut pieces = Vec::with_capacity(parts);
        let mut start = 0;
        for p in 0..parts {
            let even = count * (p + 1) / parts;
            let end = if p + 1 == parts || even / group * group <= start {
                even
            } else {
                even / group * group
            };
            let (piece, rest) =
                std::mem::take(&mut planes).split_at_mut((end - start) * self.plane_len);
            pieces.push((piece, start..end));
            (planes, start) = (rest, end);
        }
        pieces
    }

    /// [`PhaseLayout::fill`] for the planes `range` alone, into `buf`, which holds exactly
    /// those planes (the layout's floats from `range.start` planes in): so that the threads of
    /// a team can each fill a part of one buffer. The margin past the planes is not written.
    /// Panics if `images` is not whole images, or `range` or `buf`'s length disagrees with the
    /// layout.
    pub fn fill_planes(&self, images: &[f32], buf: &mut [f32], range: std::ops::Range<usize>) {
        let [c, h, w] = self.input;
        let image_len = c * h * w;
        assert!(
            image_len > 0
                && images.len().is_multiple_of(image_len)
                && images.len() / image_len <= self.images
                && range.start <= range.end
                && range.end <= self.planes()
                && buf.len() == range.len() * self.plane_len,
            "phase layout: {} floats for images of {:?} (at most {}), buffer of {} for planes {range:?} of {} floats",
            images.len(),
            self.input,
            self.images,
            buf.len(),
            self.plane_len
        );
        let given = images.len() / image_len;
        let [_, sw] = self.stride;
        let kept = self.phases.len();
        let (mut p, mut rest) = (range.start, buf);
        while p < range.end {
            let (ci, [py, px]) = (p / kept, self.phases[p % kept]);
            let src = |n: usize| &images[(n * c + ci) * h * w..][..h * w];
            // The `sw` planes of one channel and row phase, when they are consecutive here
            // (Winograd keeps every phase, and so do strided convolutions whose taps reach
            // them all): each padded row is split into all of them at once.
            let whole = p % kept + sw <= kept
                && p + sw <= range.end
                && (0..sw).all(|k| self.phases[p % kept + k] == [py, k]);
            let planes = match sw {
                2 | 4 if whole => sw,
                _ => 1,
            };
            let (group, more) = std::mem::take(&mut rest).split_at_mut(planes * self.plane_len);
            match planes {
                2 => self.fill_joint::<2>(group, py, given, src),
                4 => self.fill_joint::<4>(group, py, given, src),
                _ => self.fill_plane(group, [py, px], given, src),
            }
            (p, rest) = (p + planes, more);
        }
    }

    /// The image row that plane row `pr` of row phase `py` holds, if it is not padding.
    fn source_row(&self, pr: usize, py: usize) -> Option<usize> {
        (pr * self.stride[0] + py)
            .checked_sub(self.padding[0])
            .filter(|y| *y < self.input[1])
    }

    /// One plane, phase `[py, px]`, from `src(n)`, image n's channel (zeros for n ≥ `given`).
    fn fill_plane<'a>(
        &self,
        plane: &mut [f32],
        [py, px]: [usize; 2],
        given: usize,
        src: impl Fn(usize) -> &'a [f32],
    ) {
        let w = self.input[2];
        let (sw, pw) = (self.stride[1], self.padding[1]);
        // Plane columns lo..hi fall inside the image, from its column x0; those around are
        // padding. The same for every row, so worked out once (divisions showed per row).
        let lo = pw.saturating_sub(px).div_ceil(sw).min(self.cols);
        let hi = (w + pw)
            .saturating_sub(px)
            .div_ceil(sw)
            .clamp(lo, self.cols);
        let x0 = (lo * sw + px).saturating_sub(pw);
        for (n, image_rows) in plane.chunks_exact_mut(self.rows * self.cols).enumerate() {
            if n >= given {
                image_rows.fill(0.0);
                continue;
            }
            let src = src(n);
            for (pr, dst) in image_rows.chunks_exact_mut(self.cols).enumerate() {
                let Some(y) = self.source_row(pr, py) else {
                    short::fill_zero(dst);
                    continue;
                };
                let (left, rest) = dst.split_at_mut(lo);
                let (mid, right) = rest.split_at_mut(hi - lo);
                short::fill_zero(left);
                short::fill_zero(right);
                if mid.is_empty() {
                    continue;
                }
                let src = &src[y * w + x0..(y + 1) * w];
                match sw {
                    1 => short::copy(mid, &src[..mid.len()]),
                    2 => strided::<2>(src, mid),
                    4 => strided::<4>(src, mid),
                    _ => {
                        for (d, s) in mid.iter_mut().zip(src.iter().step_by(sw)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }

    /// The `S` consecutive planes `[py, 0..S]` in `group`, from `src(n)` as in `fill_plane`,
    /// each image row split into all `S` column phases at once ([`split_row`]).
    fn fill_joint<'a, const S: usize>(
        &self,
        group: &mut [f32],
        py: usize,
        given: usize,
        src: impl Fn(usize) -> &'a [f32],
    ) {
        let (w, pw, cols) = (self.input[2], self.padding[1], self.cols);
        let mut it = group.chunks_exact_mut(self.plane_len);
        let mut planes: [&mut [f32]; S] = std::array::from_fn(|_| it.next().expect("S planes"));
        for n in 0..self.images {
            for pr in 0..self.rows {
                let at = (n * self.rows + pr) * cols;
                let dst = planes.each_mut().map(|plane| &mut plane[at..at + cols]);
                match self.source_row(pr, py).filter(|_| n < given) {
                    Some(y) => split_row(&src(n)[y * w..][..w], pw, dst),
                    None => dst.into_iter().for_each(short::fill_zero),
                }
            }
        }
    }
}

/// One image row `src` padded by `pad` zeros on the left (and zeros past its end), split into
/// its `S` column phases: `dst[p][j]` is padded column `j·S + p`.
///
/// On x86-64 with `S` = 2 or 4, four columns at a time: `S` loads of four padded floats, then a
/// transpose in SSE registers (part of every x86-64; written out because the compiler left the
/// portable loop scalar). A load that reaches into the padding is built from the row's values
/// and zeros instead. Laying the padded row out whole first and splitting that cost a copy a
/// row and a stall on every load from it (the copy's wide stores do not forward to 16-byte
/// loads); splitting the image row in place with the columns outside whole groups written one
/// by one took twice as long on ResNet-18's 14-wide rows (`phase_fill` bench).
#[inline]
fn split_row<const S: usize>(src: &[f32], pad: usize, mut dst: [&mut [f32]; S]) {
    let cols = dst[0].len();
    assert!(
        dst.iter().all(|d| d.len() == cols),
        "split_row: rows of unequal length"
    );
    let padded = |x: usize| x.checked_sub(pad).and_then(|i| src.get(i)).copied();
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if S == 2 || S == 4 {
        use std::arch::x86_64::*;
        // Padded columns x..x + 4.
        let quad = |x: usize| -> __m128 {
            match x.checked_sub(pad) {
                // SAFETY: the four floats src[i..i + 4] are inside `src`.
                Some(i) if i + 4 <= src.len() => unsafe { _mm_loadu_ps(src[i..].as_ptr()) },
                _ => {
                    let q: [f32; 4] = std::array::from_fn(|k| padded(x + k).unwrap_or(0.0));
                    // SAFETY: `q` holds four floats.
                    unsafe { _mm_loadu_ps(q.as_ptr()) }
                }
            }
        };
        done = cols - cols % 4;
        let [d0, d1, d2, d3] = std::array::from_fn(|p| dst[p % S].as_mut_ptr());
        for j in (0..done).step_by(4) {
            let at = |k: usize| quad(S * j + 4 * k);
            // SAFETY: j + 4 ≤ done ≤ cols, so each store writes [j, j + 4) of a row of `cols`
            // floats (asserted equal), and rows p < S are distinct slices; SSE is part of the
            // x86-64 baseline.
            unsafe {
                if S == 2 {
                    // Columns j, j+1 | j+2, j+3, two phases each.
                    let (a, b) = (at(0), at(1));
                    _mm_storeu_ps(d0.add(j), _mm_shuffle_ps::<0x88>(a, b));
                    _mm_storeu_ps(d1.add(j), _mm_shuffle_ps::<0xdd>(a, b));
                } else {
                    // Column j + k's four phases in register k, transposed.
                    let (a, b, c, d) = (at(0), at(1), at(2), at(3));
                    let (ab_lo, cd_lo) = (_mm_unpacklo_ps(a, b), _mm_unpacklo_ps(c, d));
                    let (ab_hi, cd_hi) = (_mm_unpackhi_ps(a, b), _mm_unpackhi_ps(c, d));
                    _mm_storeu_ps(d0.add(j), _mm_movelh_ps(ab_lo, cd_lo));
                    _mm_storeu_ps(d1.add(j), _mm_movehl_ps(cd_lo, ab_lo));
                    _mm_storeu_ps(d2.add(j), _mm_movelh_ps(ab_hi, cd_hi));
                    _mm_storeu_ps(d3.add(j), _mm_movehl_ps(cd_hi, ab_hi));
                }
            }
        }
    }
    for j in done..cols {
        for (p, d) in dst.iter_mut().enumerate() {
            d[j] = padded(j * S + p).unwrap_or(0.0);
        }
    }
}

/// `dst[j] = src[j·S]`, in groups of `S` the compiler can turn into shuffles.
#[inline]
fn strided<const S: usize>(src: &[f32], dst: &mut [f32]) {
    let whole = (src.len() / S).min(dst.len());
    let (head, tail) = dst.split_at_mut(whole);
    for (d, group) in head.iter_mut().zip(src.chunks_exact(S)) {
        *d = group[0];
    }
    for (j, d) in tail.iter_mut().enumerate() {
        *d = src[(whole + j) * S];
    }
}

/// A direct convolution of one geometry: the phase layout, the taps into it and the grid of
/// output pixels. Built once per layer.
#[derive(Debug, Clone)]
pub struct DirectConv {
    layout: PhaseLayout,
    /// Input channels per group.
    cg: usize,
    groups: usize,
    out: [usize; 2],
    taps: Taps,
    grid: Grid,
    /// Set by [`DirectConv::max_pooled`]: the pooled outputs `run` writes instead of `grid`'s.
    pooled: Option<PooledGrid>,
    buffer_len: usize,
}

/// A convolution's geometry, as PyTorch defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// `[channels, height, width]` of one image.
    pub input: [usize; 3],
    pub groups: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl ConvShape {
    /// `[out_h, out_w]`, or `None` if the kernel is larger than the padded input or a size
    /// overflows.
    pub fn out(&self) -> Option<[usize; 2]> {
        let one = |i: usize| -> Option<usize> {
            let reach = self.dilation[i].checked_mul(self.kernel[i].checked_sub(1)?)? + 1;
            let padded = span(2, self.padding[i], self.input[i + 1])?;
            (padded >= reach && self.stride[i] > 0).then(|| (padded - reach) / self.stride[i] + 1)
        };
        Some([one(0)?, one(1)?])
    }

    /// Input channels per group.
    pub fn cg(&self) -> usize {
        self.input[0] / self.groups.max(1)
    }

    /// Taps per filter: `cg · kh · kw`.
    pub fn taps(&self) -> usize {
        self.cg() * self.kernel[0] * self.kernel[1]
    }
}

impl DirectConv {
    /// `None` if the geometry is inconsistent (channels not divisible by groups, an empty
    /// kernel or output) or a size overflows `usize`.
    pub fn new(shape: ConvShape) -> Option<DirectConv> {
        let [c, _, _] = shape.input;
        let [kh, kw] = shape.kernel;
        let [sh, sw] = shape.stride;
        let [dh, dw] = shape.dilation;
        if shape.groups == 0 || !c.is_multiple_of(shape.groups) || kh == 0 || kw == 0 {
            return None;
        }
        let cg = c / shape.groups;
        let [oh, ow] = shape.out()?;
        if cg == 0 || oh == 0 || ow == 0 {
            return None;
        }
        let mut keep = Vec::new();
        for ki in 0..kh {
            for kj in 0..kw {
                keep.push([ki.checked_mul(dh)? % sh, kj.checked_mul(dw)? % sw]);
            }
        }
        let layout = PhaseLayout::new(shape.input, shape.padding, shape.stride, &keep, [0, 0], 1)?;
        let cols = layout.cols;
        let mut offsets = Vec::with_capacity(kh * kw);
        for ki in 0..kh {
            for kj in 0..kw {
                // Tap (ki, kj) of output (0, 0) reads padded (ki·dh, kj·dw); output (oy, ox)
                // reads oy·cols + ox further on in the same plane.
                offsets.push(layout.offset(ki * dh, kj * dw)?);
            }
        }
        let taps = Taps::new(cg, layout.channel_stride, offsets);
        let len = span(oh - 1, cols, ow)?;
        let grid = Grid::new(GridShape {
            len,
            width: cols,
            cols: ow,
            rows: oh,
            valid_rows: oh,
            row_stride: ow,
            image_stride: 0,
        });
        // The last group's source starts (c - cg) channels in and reads its taps' reach past
        // the last grid vector.
        let buffer_len =
            span(c - cg, layout.channel_stride, taps.source_len(len)?)?.max(layout.len());
        Some(DirectConv {
            layout,
            cg,
            groups: shape.groups,
            out: [oh, ow],
            taps,
            grid,
            pooled: None,
            buffer_len,
        })
    }

    /// The convolution of `shape` followed by a 2×2 stride-2 max pool without padding (floor
    /// mode: an odd last row or column of the convolution's output is dropped): `run` writes
    /// `[F, oh/2, ow/2]`, and the full-size output is never stored. `None` as [`DirectConv::new`],
    /// or if the convolution's output is smaller than 2×2.
    pub fn max_pooled(shape: ConvShape) -> Option<DirectConv> {
        let mut conv = DirectConv::new(shape)?;
        let [oh, ow] = conv.out;
        if oh < 2 || ow < 2 {
            return None;
        }
        let pooled = PooledGrid::new(conv.layout.cols, oh / 2, ow / 2)?;
        let reads = conv.taps.source_len(pooled.positions())?;
        let c = shape.input[0];
        conv.buffer_len =
            span(c - conv.cg, conv.layout.channel_stride, reads)?.max(conv.buffer_len);
        conv.pooled = Some(pooled);
        Some(conv)
    }

    /// `[out_h, out_w]` of what `run` writes per filter: the convolution's output, or the
    /// pooled one.
    pub fn out(&self) -> [usize; 2] {
        match self.pooled {
            Some(_) => [self.out[0] / 2, self.out[1] / 2],
            None => self.out,
        }
    }

    /// Floats of scratch one image needs.
    pub fn buffer_len(&self) -> usize {
        self.buffer_len
    }

    /// Taps per filter.
    pub fn taps(&self) -> usize {
        self.taps.count()
    }

    /// Grid positions computed per image per filter (real outputs and the padding columns).
    pub fn positions(&self) -> usize {
        self.grid.len()
    }

    /// `out = act(bias + conv(image))` for one image: `image` is `[c, h, w]`, `filters` one
    /// per group (each `[F/groups, cg·kh·kw]`), `bias` one per filter, `out` `[F, oh, ow]`
    /// (the pooled `[F, oh/2, ow/2]` and its maxima for [`DirectConv::max_pooled`]); `buf` is
    /// scratch of at least [`DirectConv::buffer_len`]. Panics if a size disagrees.
    pub fn run(
        &self,
        image: &[f32],
        filters: &[PackedFilters],
        bias: &[f32],
        relu: bool,
        buf: &mut [f32],
        out: &mut [f32],
    ) {
        self.fill(image, buf);
        self.run_filled(buf, filters, bias, relu, out);
    }

    /// The padded image `run` reads, built in `buf` (at least [`DirectConv::buffer_len`]).
    pub fn fill(&self, image: &[f32], buf: &mut [f32]) {
        assert!(
            buf.len() >= self.buffer_len,
            "direct conv: scratch of {} for {}",
            buf.len(),
            self.buffer_len
        );
        self.layout.fill(image, &mut buf[..self.buffer_len]);
    }

    /// `buf` (at least [`DirectConv::buffer_len`]) cut into `parts` pieces that threads can
    /// fill at once with [`DirectConv::fill_part`], each with the planes it holds, as even as
    /// whole planes go; the margin past the planes is zeroed here.
    pub fn fill_parts<'a>(
        &self,
        buf: &'a mut [f32],
        parts: usize,
    ) -> Vec<(&'a mut [f32], std::ops::Range<usize>)> {
        assert!(
            buf.len() >= self.buffer_len,
            "direct conv: scratch of {} for {}",
            buf.len(),
            self.buffer_len
        );
        let (planes, margin) = buf[..self.buffer_len].split_at_mut(self.layout.len());
        margin.fill(0.0);
        self.layout.pieces(planes, parts)
    }

    /// One piece of [`DirectConv::fill_parts`], from `image`.
    pub fn fill_part(&self, image: &[f32], (buf, planes): (&mut [f32], std::ops::Range<usize>)) {
        self.layout.fill_planes(image, buf, planes);
    }

    /// [`DirectConv::run`] after its fill: `buf` holds the padded image (from
    /// [`DirectConv::fill`] or every piece of [`DirectConv::fill_parts`]). Several parts of a
    /// layer's filters can read one such buffer at once.
    pub fn run_filled(
        &self,
        buf: &[f32],
        filters: &[PackedFilters],
        bias: &[f32],
        relu: bool,
        out: &mut [f32],
    ) {
        assert!(
            filters.len() == self.groups && buf.len() >= self.buffer_len,
            "direct conv: {} filter groups for {}, scratch of {} for {}",
            filters.len(),
            self.groups,
            buf.len(),
            self.buffer_len
        );
        let buf = &buf[..self.buffer_len];
        let [oh, ow] = self.out();
        let plane = oh * ow;
        let mut f0 = 0;
        for (g, fg) in filters.iter().enumerate() {
            let n = fg.filters();
            let src = &buf[g * self.cg * self.layout.channel_stride..];
            let epilogue = Epilogue {
                bias: &bias[f0..f0 + n],
                relu,
            };
            let out = &mut out[f0 * plane..(f0 + n) * plane];
            match &self.pooled {
                None => conv_block::run(fg, &self.taps, src, &self.grid, epilogue, out, plane),
                Some(p) => conv_block::run_pooled(fg, &self.taps, src, p, epilogue, out, plane),
            }
            f0 += n;
        }
    }

    /// [`DirectConv::run`] for a pooled convolution of one group on the filter-lane kernel
    /// ([`conv_lanes`]): the same output. Panics if the convolution is not pooled, has groups,
    /// or a size disagrees.
    pub fn run_lanes(
        &self,
        image: &[f32],
        filters: &LaneFilters,
        bias: &[f32],
        relu: bool,
        buf: &mut [f32],
        out: &mut [f32],
    ) {
        self.fill(image, buf);
        self.run_lanes_filled(buf, filters, bias, relu, out);
    }

    /// [`DirectConv::run_lanes`] after its fill, as [`DirectConv::run_filled`].
    pub fn run_lanes_filled(
        &self,
        buf: &[f32],
        filters: &LaneFilters,
        bias: &[f32],
        relu: bool,
        out: &mut [f32],
    ) {
        let Some(pooled) = &self.pooled else {
            panic!("direct conv: the filter-lane kernel runs pooled convolutions only");
        };
        assert!(
            self.groups == 1 && buf.len() >= self.buffer_len,
            "direct conv: {} groups (the filter-lane kernel takes one), scratch of {} for {}",
            self.groups,
            buf.len(),
            self.buffer_len
        );
        let [oh, ow] = self.out();
        let buf = &buf[..self.buffer_len];
        conv_lanes::run_pooled(filters, &self.taps, buf, pooled, bias, relu, out, oh * ow);
    }
}

#[cfg(test)]
mod tests {
    use super::PhaseLayout;

    /// Every float of a phase layout, filled whole or in two pieces cut at any plane (the cut
    /// may fall inside the planes of one channel and row phase, which are otherwise split
    /// together), is the padded image's pixel its plane position stands for, or zero: padding,
    /// the planes' extra rows and columns, images past those given. Strides 1–4 (the joint
    /// split takes 2 and 4), widths around multiples of four, several paddings, every phase
    /// kept or a few in another order. The buffer starts poisoned, so a float left unwritten
    /// fails.
    #[test]
    fn phase_planes_hold_the_padded_image_whatever_the_pieces() {
        let all = |[sh, sw]: [usize; 2]| -> Vec<[usize; 2]> {
            (0..sh * sw).map(|i| [i / sw, i % sw]).collect()
        };
        let mut layouts = 0;
        for stride in [[1, 1], [2, 2], [4, 4], [3, 3], [2, 4], [1, 2]] {
            for padding in [[0, 0], [1, 1], [3, 2], [2, 3]] {
                for w in [1, 3, 4, 5, 7, 8, 9, 13, 14, 17, 23] {
                    let h = 5;
                    let mut keeps = vec![all(stride)];
                    if stride[0] * stride[1] > 1 {
                        let mut reversed = all(stride);
                        reversed.reverse();
                        keeps.push(reversed);
                        keeps.push(vec![[stride[0] - 1, 0]]);
                    }
                    for keep in &keeps {
                        for min in [[0, 0], [h, w + 3]] {
                            let layout = PhaseLayout::new([2, h, w], padding, stride, keep, min, 2)
                                .expect("small layout");
                            for given in [1, 2] {
                                check(&layout, given);
                            }
                            layouts += 1;
                        }
                    }
                }
            }
        }
        assert!(layouts > 500, "{layouts} layouts");
    }

    fn check(layout: &PhaseLayout, given: usize) {
        let [c, h, w] = layout.input;
        let images: Vec<f32> = (0..given * c * h * w).map(|i| i as f32 + 1.0).collect();
        let planes = layout.planes();
        for cut in 0..=planes {
            let mut buf = vec![f32::NAN; layout.len()];
            let (a, b) = buf.split_at_mut(cut * layout.plane_len);
            layout.fill_planes(&images, a, 0..cut);
            layout.fill_planes(&images, b, cut..planes);
            for (p, plane) in buf.chunks_exact(layout.plane_len).enumerate() {
                let (ci, [py, px]) = (
                    p / layout.phases.len(),
                    layout.phases[p % layout.phases.len()],
                );
                for (i, &got) in plane.iter().enumerate() {
                    let (n, pr, pc) = (
                        i / (layout.rows * layout.cols),
                        i / layout.cols % layout.rows,
                        i % layout.cols,
                    );
                    let y = (pr * layout.stride[0] + py)
                        .checked_sub(layout.padding[0])
                        .filter(|y| *y < h);
                    let x = (pc * layout.stride[1] + px)
                        .checked_sub(layout.padding[1])
                        .filter(|x| *x < w);
                    let want = match (y, x) {
                        (Some(y), Some(x)) if n < given => images[((n * c + ci) * h + y) * w + x],
                        _ => 0.0,
                    };
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{:?} padding {:?} stride {:?} phases {:?}, {given} image(s), cut at plane {cut}: plane {p} image {n} row {pr} col {pc}",
                        layout.input, layout.padding, layout.stride, layout.phases
                    );
                }
            }
        }
    }
}
