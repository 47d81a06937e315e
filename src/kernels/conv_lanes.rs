//! The direct convolution with a 2×2 max pool folded in, turned around: filters along the
//! vector lanes and pixels broadcast, for AVX-512.
//!
//! [`super::conv_block`] puts pixels along the lanes, so a row of a map fills its vectors only
//! as far as the map is wide: the small CNN's 14-wide 16→32 layer computes its 16-wide rows,
//! padding columns included, and 2 lanes in 16 (12.5% of its FMAs) are thrown away. Here each
//! register holds one pixel's sums for 16 filters: a tap loads one vector of 16 weights and
//! broadcasts each pixel's input value into it, so every lane is a real output whatever the
//! map's width. What it costs instead is the store: a pixel's 16 sums belong to 16 different
//! output maps, so they are written one float at a time. With the pool folded in that is one
//! float per 4 pixels, a few percent of a call over a 16-channel 3×3 patch (144 taps of 28
//! FMAs each), and [`worth_it`] keeps this kernel to patches that deep.
//!
//! A call computes two conv rows (a pooled row) of up to `MAX_COLS` (14) columns for one block of
//! 16 filters: 28 accumulators, the weight vector and a broadcast fill the 32 registers. It
//! reads the same phase-split padded image [`super::conv_direct::DirectConv`] builds, through
//! the same [`Taps`], so the layouts, bounds and grid are that kernel's.

use super::conv_block::{self, PooledGrid, Taps};
use super::Isa;

/// Filters per block: one AVX-512 vector of f32.
pub const LANES: usize = 16;

/// Conv columns per call, at most: two rows of them are 28 accumulators.
const MAX_COLS: usize = 14;

/// Whether this kernel beats [`super::conv_block::run_pooled`] for a pooled direct convolution
/// of `filters` filters (one group) over patches of `taps` values, on `isa`. Measured on the
/// small CNN's layers (`cargo bench --bench kernels -- maxpool`, alternated): the 16→32 3×3
/// layer (144 taps) runs 13–16% faster; the 1-channel 3×3 layer (9 taps) 8–15% slower, its
/// calls too short for the scalar stores, and the 5×5 one (25 taps) the same either way. Filters fill whole blocks of 16, or nearly (a ragged last block wastes lanes
/// as the other kernel's ragged rows do).
pub fn worth_it(isa: Isa, groups: usize, filters: usize, taps: usize) -> bool {
    isa == Isa::Avx512
        && groups == 1
        && taps >= 64
        && filters >= LANES
        && filters.next_multiple_of(LANES) * 8 <= filters * 9
}

/// Filters packed for this kernel: blocks of [`LANES`] laid out `[tap][LANES]`, the last block
/// padded with zero filters. Fields are private: the kernel's `unsafe` reads rely on `data`
/// holding `blocks · taps · LANES` values.
#[derive(Debug, Clone)]
pub struct LaneFilters {
    filters: usize,
    taps: usize,
    data: Vec<f32>,
}

impl LaneFilters {
    /// `weights` as `[filters][taps]` (PyTorch's `[F, C, kh, kw]`). Panics if the sizes
    /// disagree.
    pub fn new(weights: &[f32], filters: usize, taps: usize) -> LaneFilters {
        assert_eq!(
            Some(weights.len()),
            filters.checked_mul(taps),
            "conv filters: {} values for [{filters}, {taps}]",
            weights.len()
        );
        let blocks = filters.div_ceil(LANES);
        let mut data = vec![0.0f32; blocks * taps * LANES];
        for (f, w) in weights.chunks_exact(taps.max(1)).enumerate() {
            let (block, lane) = (f / LANES, f % LANES);
            for (t, &v) in w.iter().enumerate() {
                data[(block * taps + t) * LANES + lane] = v;
            }
        }
        LaneFilters {
            filters,
            taps,
            data,
        }
    }

    pub fn filters(&self) -> usize {
        self.filters
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        (self.data.len() * std::mem::size_of::<f32>()) as u64
    }
}

/// `out[f·f_stride + py·cols + px] = act(max over the 2×2 block (2py.., 2px..) of
/// bias[f] + Σ_t W[f][t] · src[q + offset(t)])`, `q` the block's grid positions, for every
/// filter and every pooled output of `grid`: what [`super::conv_block::run_pooled`] computes,
/// nothing else in `out` touched. Panics if this CPU lacks AVX-512, or if a size does not fit:
/// the taps must match the filters, `src` must hold [`Taps::source_len`] of
/// [`PooledGrid::positions`], `out` the filters' pooled maps, and `bias` one value per filter.
#[allow(clippy::too_many_arguments)]
pub fn run_pooled(
    filters: &LaneFilters,
    taps: &Taps,
    src: &[f32],
    grid: &PooledGrid,
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
    f_stride: usize,
) {
    assert!(
        Isa::Avx512.available(),
        "filter-lane conv kernel: this CPU lacks AVX-512"
    );
    conv_block::check_sizes(
        filters.filters,
        filters.taps,
        bias.len(),
        taps,
        src,
        grid.positions(),
    );
    if filters.filters == 0 || grid.is_empty() {
        return;
    }
    conv_block::check_pooled_out(filters.filters, grid, out, f_stride);
    let [width, rows, cols] = [grid.width(), grid.rows(), grid.cols()];
    // Conv columns 0..2·cols in calls of at most MAX_COLS, even, as equal as they go.
    let pairs = cols;
    let calls = (2 * pairs).div_ceil(MAX_COLS);
    let mut bias_block = [0.0f32; LANES];
    for f0 in (0..filters.filters).step_by(LANES) {
        let nf = LANES.min(filters.filters - f0);
        bias_block[..nf].copy_from_slice(&bias[f0..f0 + nf]);
        bias_block[nf..].fill(0.0);
        for py in 0..rows {
            for call in 0..calls {
                let (p0, p1) = (pairs * call / calls, pairs * (call + 1) / calls);
                let q0 = 2 * py * width + 2 * p0;
                let k = Call {
                    channels: taps.channels(),
                    channel_stride: taps.channel_stride(),
                    offsets: taps.offsets(),
                    src: src[q0..].as_ptr(),
                    width,
                    weights: filters.data[f0 * filters.taps..].as_ptr(),
                    bias: &bias_block,
                    relu,
                    out: out[f0 * f_stride + py * cols + p0..].as_mut_ptr(),
                    f_stride,
                    filters: nf,
                };
                // SAFETY: AVX-512 is available (asserted). Reads: conv rows 2py and 2py + 1,
                // columns 2·p0..2·p1 ≤ 2·cols, are grid positions below (2·rows - 1)·width +
                // 2·cols ≤ `grid.positions()`, plus the taps' reach: within
                // `source_len(positions)` ≤ src.len(), asserted. Weights: block f0/LANES holds
                // taps·LANES values from f0·taps (`LaneFilters::new`, fields private). Writes:
                // for f < nf, pooled outputs py·cols + p0..py·cols + p1 ≤ rows·cols at
                // (f0 + f)·f_stride, inside (filters - 1)·f_stride + rows·cols ≤ out.len(),
                // asserted in checked arithmetic.
                unsafe { dispatch(p1 - p0, &k) };
            }
        }
    }
}

/// One call's operands, pointers already offset to its first pixel, filter block and output.
struct Call<'a> {
    channels: usize,
    channel_stride: usize,
    offsets: &'a [usize],
    src: *const f32,
    /// Grid positions from a conv row to the next.
    width: usize,
    weights: *const f32,
    bias: &'a [f32; LANES],
    relu: bool,
    out: *mut f32,
    f_stride: usize,
    /// Real filters of the block.
    filters: usize,
}

/// The kernel for `pairs` pooled columns (2·pairs conv columns, at most [`MAX_COLS`]).
///
/// # Safety
/// AVX-512 is available and `k`'s pointers cover what the kernel reads and writes (see
/// [`run_pooled`]).
unsafe fn dispatch(pairs: usize, k: &Call) {
    #[cfg(target_arch = "x86_64")]
    match pairs {
        1 => kernel::<2>(k),
        2 => kernel::<4>(k),
        3 => kernel::<6>(k),
        4 => kernel::<8>(k),
        5 => kernel::<10>(k),
        6 => kernel::<12>(k),
        7 => kernel::<14>(k),
        _ => unreachable!("{pairs} pooled columns a call"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no AVX-512 off x86-64 ({pairs}, {})", k.filters)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kernel<const C: usize>(k: &Call) {
    use std::arch::x86_64::*;
    let bias = _mm512_loadu_ps(k.bias.as_ptr());
    // Row 0 and the row below it.
    let mut acc = [[bias; C]; 2];
    let mut w = k.weights;
    for ch in 0..k.channels {
        let base = k.src.add(ch * k.channel_stride);
        for &o in k.offsets {
            let s = base.add(o);
            let wv = _mm512_loadu_ps(w);
            for (r, row) in acc.iter_mut().enumerate() {
                let s = s.add(r * k.width);
                for (c, a) in row.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*s.add(c)), wv, *a);
                }
            }
            w = w.add(LANES);
        }
    }
    store::<C>(acc, k);
}

/// The maxima of the call's 2×2 blocks, ReLU after them, each filter's row of them written at
/// its map. Out of line, the accumulators arriving through memory once, so the FMA loop keeps
/// them in registers only (as `conv_block`'s stores).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
unsafe fn store<const C: usize>(acc: [[std::arch::x86_64::__m512; C]; 2], k: &Call) {
    use std::arch::x86_64::*;
    let mut tile = [[0.0f32; LANES]; MAX_COLS / 2];
    for (p, t) in tile.iter_mut().enumerate().take(C / 2) {
        let m = _mm512_max_ps(
            _mm512_max_ps(acc[0][2 * p], acc[0][2 * p + 1]),
            _mm512_max_ps(acc[1][2 * p], acc[1][2 * p + 1]),
        );
        let m = if k.relu {
            _mm512_max_ps(m, _mm512_setzero_ps())
        } else {
            m
        };
        _mm512_storeu_ps(t.as_mut_ptr(), m);
    }
    for f in 0..k.filters {
        let out = k.out.add(f * k.f_stride);
        for (p, t) in tile.iter().enumerate().take(C / 2) {
            *out.add(p) = t[f];
        }
    }
}
