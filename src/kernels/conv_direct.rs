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
        let [sh, _] = self.stride;
        let ph = self.padding[0];
        let kept = self.phases.len();
        for (p, plane) in range.zip(buf.chunks_exact_mut(self.plane_len)) {
            let (ci, [py, px]) = (p / kept, self.phases[p % kept]);
            for (n, image_rows) in plane.chunks_exact_mut(self.rows * self.cols).enumerate() {
                if n >= given {
                    image_rows.fill(0.0);
                    continue;
                }
                let src = &images[(n * c + ci) * h * w..][..h * w];
                for (pr, dst) in image_rows.chunks_exact_mut(self.cols).enumerate() {
                    match (pr * sh + py).checked_sub(ph).filter(|y| *y < h) {
                        Some(y) => self.fill_row(&src[y * w..][..w], dst, px),
                        None => short::fill_zero(dst),
                    }
                }
            }
        }
    }

    /// One plane row of column phase `px`: `dst[j]` is padded column `j·s + px` of `src`'s row.
    fn fill_row(&self, src: &[f32], dst: &mut [f32], px: usize) {
        let (sw, pw) = (self.stride[1], self.padding[1]);
        if sw == 1 {
            // The one phase of stride 1 (most layers), without the divisions below: a 16→32
            // 3×3 layer on 14×14 fills 256 short rows an image, and they showed in its profile,
            // first as divisions, then as three libc calls a row (`short`).
            let (left, rest) = dst.split_at_mut(pw.min(dst.len()));
            short::fill_zero(left);
            let n = src.len().min(rest.len());
            let (mid, right) = rest.split_at_mut(n);
            short::copy(mid, &src[..n]);
            short::fill_zero(right);
            return;
        }
        // Plane columns lo..hi fall inside the image; those around are padding.
        let lo = pw.saturating_sub(px).div_ceil(sw).min(dst.len());
        let hi = (src.len() + pw)
            .saturating_sub(px)
            .div_ceil(sw)
            .clamp(lo, dst.len());
        short::fill_zero(&mut dst[..lo]);
        short::fill_zero(&mut dst[hi..]);
        if hi > lo {
            let x0 = lo * sw + px - pw;
            let dst = &mut dst[lo..hi];
            match sw {
                1 => dst.copy_from_slice(&src[x0..x0 + dst.len()]),
                2 => strided::<2>(&src[x0..], dst),
                4 => strided::<4>(&src[x0..], dst),
                _ => {
                    for (d, s) in dst.iter_mut().zip(src[x0..].iter().step_by(sw)) {
                        *d = *s;
                    }
                }
            }
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
        let (mut planes, margin) = buf[..self.buffer_len].split_at_mut(self.layout.len());
        margin.fill(0.0);
        let (count, plane_len) = (self.layout.planes(), self.layout.plane_len);
        let parts = parts.clamp(1, count.max(1));
        let mut pieces = Vec::with_capacity(parts);
        let mut start = 0;
        for p in 0..parts {
            let end = count * (p + 1) / parts;
            let (piece, rest) = std::mem::take(&mut planes).split_at_mut((end - start) * plane_len);
            pieces.push((piece, start..end));
            (planes, start) = (rest, end);
        }
        pieces
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
