//! Convolution as a matrix product on an explicit patch matrix (im2col), several images side by
//! side, run by the [`super::conv_block`] kernel with one tap per matrix row.
//!
//! Copying every input value up to `kh·kw` times costs memory traffic the direct convolution
//! avoids, but the matrix has no padding columns and its width is the pixels of several images:
//! on small feature maps (7×7: 49 pixels, a quarter of the last 16-lane vector wasted and two
//! padding columns in every nine for the direct kernel) that fills the vectors. A 1×1 stride-1
//! convolution's "patch matrix" is the image itself.

use super::conv_block::{self, Epilogue, Grid, GridShape, PackedFilters, Taps, MAX_LANES};
use super::conv_direct::ConvShape;
use super::span;

/// Pixels of patch matrix the kernel should see at once: enough for every vector block to be
/// full (four 16-lane vectors) several times over, small enough that `kh·kw·cg` rows of it stay
/// in L2 (a 576-row matrix of 256 columns is 576 KiB).
const TARGET_COLUMNS: usize = 256;

/// One geometry's patch matrices: `[cg·kh·kw][images·oh·ow]` per group, for up to
/// [`Im2col::images`] images at a time.
#[derive(Debug, Clone)]
pub struct Im2col {
    shape: ConvShape,
    out: [usize; 2],
    /// Images per matrix.
    images: usize,
}

impl Im2col {
    /// `None` if the geometry is inconsistent or a size overflows.
    pub fn new(shape: ConvShape) -> Option<Im2col> {
        let [c, _, _] = shape.input;
        if shape.groups == 0 || !c.is_multiple_of(shape.groups) || shape.cg() == 0 {
            return None;
        }
        let out = shape.out()?;
        let pixels = out[0].checked_mul(out[1]).filter(|p| *p > 0)?;
        let images = TARGET_COLUMNS.div_ceil(pixels);
        let im = Im2col { shape, out, images };
        im.buffer_len(images)?;
        Some(im)
    }

    /// Images one matrix holds at most.
    pub fn images(&self) -> usize {
        self.images
    }

    fn pixels(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// Floats of scratch a matrix of `images` images needs (its rows plus the kernel's margin).
    pub fn buffer_len(&self, images: usize) -> Option<usize> {
        let q = images.checked_mul(self.pixels())?;
        span(self.shape.taps(), q, MAX_LANES)
    }

    /// The patch matrix of group `group` of `images` (`[n, c, h, w]`, n ≤ [`Im2col::images`])
    /// into `cols`, row `t` holding tap `t` for every pixel of every image.
    fn fill(&self, images: &[f32], group: usize, cols: &mut [f32]) {
        let [c, h, w] = self.shape.input;
        let [oh, ow] = self.out;
        let [kh, kw] = self.shape.kernel;
        let [sh, sw] = self.shape.stride;
        let [ph, pw] = self.shape.padding;
        let [dh, dw] = self.shape.dilation;
        let cg = self.shape.cg();
        let n = images.len() / (c * h * w);
        let p = oh * ow;
        let q = n * p;
        cols[self.shape.taps() * q..].fill(0.0);
        for (i, image) in images.chunks_exact(c * h * w).enumerate() {
            let mut row = 0;
            for ci in group * cg..(group + 1) * cg {
                let plane = &image[ci * h * w..(ci + 1) * h * w];
                for ki in 0..kh {
                    for kj in 0..kw {
                        let dst = &mut cols[row * q + i * p..][..p];
                        for oy in 0..oh {
                            let y = (oy * sh + ki * dh) as isize - ph as isize;
                            let line = &mut dst[oy * ow..(oy + 1) * ow];
                            if y < 0 || y >= h as isize {
                                line.fill(0.0);
                                continue;
                            }
                            let src = &plane[y as usize * w..(y as usize + 1) * w];
                            let x0 = (kj * dw) as isize - pw as isize;
                            if sw == 1 {
                                // Output columns whose input column is inside the image: one
                                // copy; the padding either side is zeros.
                                let lo = (-x0).clamp(0, ow as isize) as usize;
                                let hi = (w as isize - x0).clamp(lo as isize, ow as isize) as usize;
                                line[..lo].fill(0.0);
                                line[lo..hi].copy_from_slice(
                                    &src[(lo as isize + x0) as usize..(hi as isize + x0) as usize],
                                );
                                line[hi..].fill(0.0);
                                continue;
                            }
                            for (ox, v) in line.iter_mut().enumerate() {
                                let x = x0 + (ox * sw) as isize;
                                *v = if x >= 0 && x < w as isize {
                                    src[x as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                        row += 1;
                    }
                }
            }
        }
    }

    /// `out = act(bias + conv(images))` for a batch: `images` `[n, c, h, w]` (any n), `filters`
    /// one per group (each `[F/groups, cg·kh·kw]`), `out` `[n, F, oh, ow]`; `buf` scratch of at
    /// least `buffer_len(images())`. Panics if a size disagrees.
    pub fn run(
        &self,
        images: &[f32],
        filters: &[PackedFilters],
        bias: &[f32],
        relu: bool,
        buf: &mut [f32],
        out: &mut [f32],
    ) {
        let [c, h, w] = self.shape.input;
        let f: usize = filters.iter().map(PackedFilters::filters).sum();
        let p = self.pixels();
        assert!(
            filters.len() == self.shape.groups && images.len().is_multiple_of(c * h * w),
            "im2col conv: {} filter groups for {}, input of {} floats for {:?}",
            filters.len(),
            self.shape.groups,
            images.len(),
            self.shape.input
        );
        let image_len = c * h * w;
        let record = f * p;
        for (batch, out) in images
            .chunks(self.images * image_len)
            .zip(out.chunks_mut(self.images * record))
        {
            let n = batch.len() / image_len;
            let q = n * p;
            let len = self.buffer_len(n).expect("checked in new");
            let taps = Taps::new(self.shape.taps(), q, vec![0]);
            let grid = Grid::new(GridShape {
                len: q,
                width: p,
                cols: p,
                rows: 1,
                valid_rows: 1,
                row_stride: 0,
                image_stride: record,
            });
            let mut f0 = 0;
            for (g, fg) in filters.iter().enumerate() {
                let cols = &mut buf[..len];
                self.fill(batch, g, cols);
                let nf = fg.filters();
                conv_block::run(
                    fg,
                    &taps,
                    cols,
                    &grid,
                    Epilogue {
                        bias: &bias[f0..f0 + nf],
                        relu,
                    },
                    &mut out[f0 * p..],
                    p,
                );
                f0 += nf;
            }
        }
    }
}
