//! The register-blocked kernel every convolution algorithm runs on: a matrix product whose
//! right-hand operand is read through a table of tap offsets instead of being laid out.
//!
//! `out[f][dest(q)] = bias[f] + Σ_t W[f][t] · src[q + offset(t)]` for every grid position `q`:
//! - direct convolution: `src` is a zero-padded image split by stride phase
//!   ([`super::conv_direct`]), each tap `(channel, ki, kj)` a fixed offset into it, so the patch
//!   matrix is never built;
//! - im2col ([`super::im2col`]) and Winograd ([`super::winograd`]): `src` is a matrix, tap `t` is
//!   row `t`.
//!
//! Pixels run along the vector lanes and filters are broadcast: an output row is written straight
//! into its NCHW place with no transpose, and the filters are packed once at load into blocks of
//! `NF` laid out tap by tap, so the kernel streams them. One call keeps `NV` vectors of pixels ×
//! `NF` filters of accumulators in registers: AVX-512 3 × 8 (24 of its 32 registers), AVX2 2 × 6
//! (12 of 16), each tap costing `NV` loads and `NF` broadcasts for `NV·NF` FMAs. Zen 4 runs a
//! 512-bit FMA on both 256-bit pipes, so AVX-512 adds no FLOPs (116 GFLOP/s a core either way,
//! `cargo bench --bench conv -- fma_peak`); it adds registers for the larger block, and masked
//! stores for ragged rows: 0–20% on ResNet-18's direct and im2col layers, 1.4–1.7× on 1-channel
//! layers whose time is mostly stores (README, Performance).
//!
//! The grid may hold positions that map to no output (the padding columns of a direct
//! convolution, a partial Winograd tile): [`Grid`] says which positions are written where, and
//! each output vector is stored as the runs of lanes that are real (masked stores on AVX-512 and
//! AVX2), so nothing outside the output is touched and nothing is written twice.
//!
//! A convolution whose output only a 2×2 stride-2 max pool reads runs as [`run_pooled`]: each
//! call computes one vector of an even row and the vector below it, and writes only the maxima
//! of their 2×2 blocks (bias and ReLU commute with the maximum), so the full-size output is
//! never stored and the pool needs no pass of its own.

use super::{span, Isa};

/// The widest vector any path uses, in f32 lanes: sources are padded to a multiple of it.
pub const MAX_LANES: usize = 16;

/// Vectors of pixels per call, at most, on any path.
pub(crate) const MAX_NV: usize = 4;

/// Where grid position `q` goes: with `row = q / width`, `col = q % width`, `image = row / rows`
/// and `r = row % rows`, position `q` is written at `image·image_stride + r·row_stride + col` if
/// `col < cols` and `r < valid_rows`, and nowhere otherwise. Fields are private: the kernels'
/// `unsafe` stores rely on [`Grid::new`]'s checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    len: usize,
    width: usize,
    cols: usize,
    rows: usize,
    valid_rows: usize,
    row_stride: usize,
    image_stride: usize,
}

/// How a [`Grid`] is shaped: `len` positions in rows of `width`, the first `cols` of each row
/// real; rows grouped `rows` to an image, the first `valid_rows` real; output strides.
#[derive(Debug, Clone, Copy)]
pub struct GridShape {
    pub len: usize,
    pub width: usize,
    pub cols: usize,
    pub rows: usize,
    pub valid_rows: usize,
    pub row_stride: usize,
    pub image_stride: usize,
}

impl Grid {
    /// Panics if `width` or `rows` is zero, or `cols > width`, or `valid_rows > rows`.
    pub fn new(s: GridShape) -> Grid {
        assert!(
            s.width > 0 && s.rows > 0 && s.cols <= s.width && s.valid_rows <= s.rows,
            "conv grid: inconsistent shape {s:?}"
        );
        Grid {
            len: s.len,
            width: s.width,
            cols: s.cols,
            rows: s.rows,
            valid_rows: s.valid_rows,
            row_stride: s.row_stride,
            image_stride: s.image_stride,
        }
    }

    /// `len` positions written to `0..len` in order: a plain matrix row.
    pub fn contiguous(len: usize) -> Grid {
        Grid::new(GridShape {
            len,
            width: len.max(1),
            cols: len.max(1),
            rows: 1,
            valid_rows: 1,
            row_stride: 0,
            image_stride: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The same grid cut to its first `len` positions (at most its own).
    pub(crate) fn truncated(&self, len: usize) -> Grid {
        Grid {
            len: len.min(self.len),
            ..*self
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the largest output index a real position maps to (0 if none), or `None` if
    /// that overflows `usize`. Exact: every grid row is looked at.
    pub fn extent(&self) -> Option<usize> {
        let mut end = 0usize;
        let mut start = 0usize;
        let mut row = 0usize;
        while start < self.len {
            let (image, r) = (row / self.rows, row % self.rows);
            let cols = self.cols.min(self.len - start);
            if r < self.valid_rows && cols > 0 {
                let last = image
                    .checked_mul(self.image_stride)?
                    .checked_add(r.checked_mul(self.row_stride)?)?
                    .checked_add(cols)?;
                end = end.max(last);
            }
            start = start.checked_add(self.width)?;
            row += 1;
        }
        Some(end)
    }

    /// The runs of real lanes of the `nv` vectors of `lanes` positions from `q0`, into `segs`
    /// (cleared first); `starts[v]..starts[v + 1]` are vector `v`'s. Every run stays inside
    /// [`Grid::extent`], which the caller checked.
    pub(crate) fn segments(
        &self,
        q0: usize,
        nv: usize,
        lanes: usize,
        segs: &mut Vec<Segment>,
        starts: &mut [usize; MAX_NV + 1],
    ) {
        segs.clear();
        for (v, start) in starts.iter_mut().enumerate().take(nv) {
            *start = segs.len();
            self.append_runs(q0 + v * lanes, lanes, segs);
        }
        starts[nv] = segs.len();
    }

    /// Append the runs of real lanes of one vector of `lanes` positions from `q0` to `segs`.
    pub(crate) fn append_runs(&self, q0: usize, lanes: usize, segs: &mut Vec<Segment>) {
        let end = (q0 + lanes).min(self.len);
        let mut q = q0;
        while q < end {
            let row = q / self.width;
            let col = q - row * self.width;
            let (image, r) = (row / self.rows, row % self.rows);
            let row_start = row * self.width;
            if r < self.valid_rows && col < self.cols {
                let run_end = end.min(row_start + self.cols);
                segs.push(Segment {
                    lane: q - q0,
                    count: run_end - q,
                    dest: image * self.image_stride + r * self.row_stride + col,
                });
            }
            q = row_start + self.width;
        }
    }
}

/// `count` consecutive lanes from `lane` of one vector, written at `dest..dest + count`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    pub(crate) lane: usize,
    pub(crate) count: usize,
    pub(crate) dest: usize,
}

/// Where a convolution's outputs go when a 2×2 stride-2 max pool (floor mode, no padding)
/// follows it: conv output `(oy, ox)` is grid position `oy·width + ox`, and the maximum of block
/// `(2py..2py+2, 2px..2px+2)` is written at `py·cols + px`, for `py < rows`, `px < cols`. The
/// conv outputs of an odd last row or column belong to no block and are not computed. Fields
/// are private: the kernels' `unsafe` reads and writes rely on [`PooledGrid::new`]'s checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PooledGrid {
    width: usize,
    rows: usize,
    cols: usize,
    /// Positions from 0 the kernel may read a vector at (see [`PooledGrid::positions`]).
    positions: usize,
}

impl PooledGrid {
    /// The pooled grid over conv outputs in rows of `width` positions: `rows × cols` maxima.
    /// `None` if a block would reach past a row (`2·cols > width`) or a size overflows.
    pub fn new(width: usize, rows: usize, cols: usize) -> Option<PooledGrid> {
        if cols.checked_mul(2)? > width {
            return None;
        }
        // The last call's lower vector starts at (2·rows - 1)·width + x0 with x0 < 2·cols, a
        // multiple of the vector length, and reads one vector: below 2·cols rounded up to the
        // widest vector.
        let positions = match rows {
            0 => 0,
            _ => span(
                rows.checked_mul(2)? - 1,
                width,
                cols.checked_mul(2)?.checked_next_multiple_of(MAX_LANES)?,
            )?,
        };
        Some(PooledGrid {
            width,
            rows,
            cols,
            positions,
        })
    }

    /// Pooled outputs per filter: `rows × cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Grid positions the kernel reads vectors from, at most: what [`Taps::source_len`] takes.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Grid positions from a conv row to the next.
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// Pooled rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Pooled columns.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }
}

/// Where the taps of one filter read: for channel `c` and tap offset `o` (of `offsets`), at
/// `q + c·channel_stride + o`. Taps run channel-major, as PyTorch's `[F, C, kh, kw]` weights do.
#[derive(Debug, Clone)]
pub struct Taps {
    channels: usize,
    channel_stride: usize,
    offsets: Vec<usize>,
    /// `(channels - 1)·channel_stride + max(offsets)`, checked at construction.
    reach: usize,
}

impl Taps {
    /// Panics if there are no taps or the reach overflows `usize`.
    pub fn new(channels: usize, channel_stride: usize, offsets: Vec<usize>) -> Taps {
        assert!(
            channels > 0 && !offsets.is_empty(),
            "conv taps: no channels or no offsets"
        );
        let reach = span(
            channels - 1,
            channel_stride,
            *offsets.iter().max().expect("not empty"),
        )
        .expect("conv taps: offsets overflow usize");
        Taps {
            channels,
            channel_stride,
            offsets,
            reach,
        }
    }

    pub(crate) fn channels(&self) -> usize {
        self.channels
    }

    pub(crate) fn channel_stride(&self) -> usize {
        self.channel_stride
    }

    pub(crate) fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Taps per filter: `channels × offsets`.
    pub fn count(&self) -> usize {
        self.channels * self.offsets.len()
    }

    /// Floats a source must hold for a grid of `len` positions (the last vector read whole),
    /// or `None` on overflow.
    pub fn source_len(&self, len: usize) -> Option<usize> {
        self.reach
            .checked_add(len.checked_next_multiple_of(MAX_LANES)?)
    }
}

/// Filters packed for one instruction set's kernel: blocks of `NF` filters, each laid out
/// `[tap][NF]` (the last block `[tap][rest]`). Fields are private: the kernels' `unsafe` reads
/// rely on `data` holding `filters · taps` values in that layout.
#[derive(Debug, Clone)]
pub struct PackedFilters {
    isa: Isa,
    filters: usize,
    taps: usize,
    block: usize,
    data: Vec<f32>,
}

impl PackedFilters {
    /// `weights` as `[filters][taps]` (PyTorch's `[F, C, kh, kw]` is that with taps
    /// `(c, ki, kj)`), packed for `isa`'s kernel. Panics if the sizes disagree.
    pub fn new(weights: &[f32], filters: usize, taps: usize, isa: Isa) -> PackedFilters {
        assert_eq!(
            Some(weights.len()),
            filters.checked_mul(taps),
            "conv filters: {} values for [{filters}, {taps}]",
            weights.len()
        );
        let block = block_shape(isa).1;
        let mut data = Vec::with_capacity(weights.len());
        for f0 in (0..filters).step_by(block) {
            let nf = block.min(filters - f0);
            for t in 0..taps {
                data.extend((f0..f0 + nf).map(|f| weights[f * taps + t]));
            }
        }
        PackedFilters {
            isa,
            filters,
            taps,
            block,
            data,
        }
    }

    pub fn filters(&self) -> usize {
        self.filters
    }

    pub fn taps(&self) -> usize {
        self.taps
    }

    /// The instruction set these filters are packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        (self.data.len() * std::mem::size_of::<f32>()) as u64
    }
}

/// `(vectors of pixels, filters)` per kernel call, and the lanes of a vector, for `isa`.
fn block_shape(isa: Isa) -> (usize, usize, usize) {
    match isa {
        // 24 accumulators + 3 inputs + 1 broadcast of 32 registers. Eight filters a block divide
        // every filter count of ResNet-18 and the small CNN (4 × 6 measured the same overall).
        Isa::Avx512 => (3, 8, 16),
        // 12 accumulators + 2 inputs + 1 broadcast of 16 registers.
        Isa::Avx2Fma => (2, 6, 8),
        Isa::Portable => (2, 4, 8),
    }
}

/// What happens to a sum before it is written: the bias it starts from, and ReLU.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    /// One per filter.
    pub bias: &'a [f32],
    pub relu: bool,
}

/// `out[f·f_stride + dest(q)] = act(bias[f] + Σ_t W[f][t] · src[q + offset(t)])` for every
/// filter `f` and every real position `q` of `grid`; nothing else in `out` is touched. Panics if
/// the filters' instruction set is not available on this CPU, or if a size does not fit: the
/// taps must match the filters, `src` must hold [`Taps::source_len`], `out` the filters'
/// extent, and `bias` one value per filter.
pub fn run(
    filters: &PackedFilters,
    taps: &Taps,
    src: &[f32],
    grid: &Grid,
    epilogue: Epilogue,
    out: &mut [f32],
    f_stride: usize,
) {
    check(filters, taps, src, grid.len, &epilogue);
    if filters.filters == 0 || grid.is_empty() {
        return;
    }
    let need_out = grid
        .extent()
        .and_then(|e| span(filters.filters - 1, f_stride, e));
    assert!(
        need_out.is_some_and(|n| n <= out.len()),
        "conv kernel: output of {} floats, {need_out:?} needed (filter stride {f_stride})",
        out.len()
    );
    let (nv_max, _, lanes) = block_shape(filters.isa);
    let mut segs = Vec::with_capacity(4 * nv_max * MAX_LANES);
    let mut starts = [0usize; MAX_NV + 1];
    // The grid's vectors in calls of at most nv_max, spread evenly: 4 vectors with blocks of 3
    // go as 2 + 2, not 3 + 1, whose single vector would reuse each filter load only once.
    let vectors = grid.len.div_ceil(lanes);
    let calls = vectors.div_ceil(nv_max);
    for call in 0..calls {
        let (v0, v1) = (vectors * call / calls, vectors * (call + 1) / calls);
        let (q0, nv) = (v0 * lanes, v1 - v0);
        grid.segments(q0, nv, lanes, &mut segs, &mut starts);
        if segs.is_empty() {
            continue;
        }
        let store = Store::Runs {
            segs: &segs,
            starts: &starts,
        };
        // SAFETY: the kernel reads the nv vectors of `lanes` from q0, i.e. below q0 + nv·lanes
        // ≤ grid.len rounded up to `lanes` (≤ MAX_LANES), plus the taps' reach: within
        // `source_len(grid.len)`, which `check` asserted ≤ src.len(). It writes, for filter f,
        // the segment runs at f·f_stride + dest..+count, each run inside the grid's extent
        // (`segments` maps only real positions, as `extent` counts them), and
        // (filters - 1)·f_stride + extent ≤ out.len() was asserted in checked arithmetic.
        unsafe {
            run_blocks(
                filters, taps, src, &epilogue, out, f_stride, q0, nv, lanes, store,
            )
        };
    }
}

/// `out[f·f_stride + py·cols + px] = act(max over the 2×2 block (2py.., 2px..) of
/// bias[f] + Σ_t W[f][t] · src[q + offset(t)])`, `q` the block's grid positions, for every
/// filter `f` and every pooled output of `grid`; nothing else in `out` is touched. What
/// `run` then a 2×2 stride-2 max pool compute, without the full-size output: ReLU is monotone,
/// so it commutes with the maximum and is applied once per pooled value. Panics as [`run`]
/// does; `src` must hold [`Taps::source_len`] of [`PooledGrid::positions`].
pub fn run_pooled(
    filters: &PackedFilters,
    taps: &Taps,
    src: &[f32],
    grid: &PooledGrid,
    epilogue: Epilogue,
    out: &mut [f32],
    f_stride: usize,
) {
    check(filters, taps, src, grid.positions, &epilogue);
    if filters.filters == 0 || grid.is_empty() {
        return;
    }
    check_pooled_out(filters.filters, grid, out, f_stride);
    let (_, _, lanes) = block_shape(filters.isa);
    for py in 0..grid.rows {
        // A vector of an even row and the one below it; its column pairs are `lanes / 2`
        // pooled outputs from x0 / 2.
        for x0 in (0..2 * grid.cols).step_by(lanes) {
            let store = Store::Pooled {
                dest: py * grid.cols + x0 / 2,
                count: (lanes / 2).min(grid.cols - x0 / 2),
            };
            let q0 = 2 * py * grid.width + x0;
            // SAFETY: the kernel reads a vector of `lanes` at q0 and at q0 + width, below
            // (2·rows - 1)·width + x0 + lanes ≤ `grid.positions` (x0 < 2·cols is a multiple of
            // `lanes`, which divides MAX_LANES), plus the taps' reach: within
            // `source_len(positions)`, which `check` asserted ≤ src.len(). It writes, for
            // filter f, `count` floats at f·f_stride + dest, and dest + count ≤ py·cols + cols
            // ≤ rows·cols: inside (filters - 1)·f_stride + rows·cols ≤ out.len(), asserted in
            // checked arithmetic.
            unsafe {
                run_blocks(
                    filters, taps, src, &epilogue, out, f_stride, q0, 2, grid.width, store,
                )
            };
        }
    }
}

/// The checks both entry points make before any `unsafe` call: the instruction set is
/// available, the taps and bias match the filters, and `src` holds what a grid reading vectors
/// from positions below `positions` needs.
fn check(filters: &PackedFilters, taps: &Taps, src: &[f32], positions: usize, e: &Epilogue) {
    assert!(
        filters.isa.available(),
        "conv kernel: filters packed for {} on a CPU without it",
        filters.isa.name()
    );
    check_sizes(
        filters.filters,
        filters.taps,
        e.bias.len(),
        taps,
        src,
        positions,
    );
}

/// The size checks every kernel over [`Taps`] makes before its `unsafe` calls: `filters`
/// filters of `filter_taps` taps each match the taps, one bias each, and `src` holds what a
/// grid reading vectors from positions below `positions` needs.
pub(crate) fn check_sizes(
    filters: usize,
    filter_taps: usize,
    bias: usize,
    taps: &Taps,
    src: &[f32],
    positions: usize,
) {
    assert_eq!(filter_taps, taps.count(), "conv kernel: taps disagree");
    assert_eq!(bias, filters, "conv kernel: one bias per filter");
    let need_src = taps.source_len(positions);
    assert!(
        need_src.is_some_and(|n| n <= src.len()),
        "conv kernel: source of {} floats, {need_src:?} needed",
        src.len()
    );
}

/// That `out` holds `filters` (at least one) pooled maps of `grid`, `f_stride` apart.
pub(crate) fn check_pooled_out(filters: usize, grid: &PooledGrid, out: &[f32], f_stride: usize) {
    let need_out = span(filters - 1, f_stride, grid.len());
    assert!(
        need_out.is_some_and(|n| n <= out.len()),
        "pooled conv kernel: output of {} floats, {need_out:?} needed (filter stride {f_stride})",
        out.len()
    );
}

/// The kernel over every filter block for the `nv` vectors from grid position `q0`, vector `v`
/// at `q0 + v·vector_stride`.
///
/// # Safety
/// [`check`] passed for these arguments, and every read (the vectors plus the taps' reach) and
/// every write `store` makes for each filter (at `f·f_stride` on) is inside `src` and `out`.
#[allow(clippy::too_many_arguments)]
unsafe fn run_blocks(
    filters: &PackedFilters,
    taps: &Taps,
    src: &[f32],
    epilogue: &Epilogue,
    out: &mut [f32],
    f_stride: usize,
    q0: usize,
    nv: usize,
    vector_stride: usize,
    store: Store,
) {
    for f0 in (0..filters.filters).step_by(filters.block) {
        let nf = filters.block.min(filters.filters - f0);
        let call = Call {
            channels: taps.channels,
            channel_stride: taps.channel_stride,
            offsets: &taps.offsets,
            // In or one past their slices: q0 is below the positions `check` covered, f0 below
            // the filters.
            src: src[q0..].as_ptr(),
            vector_stride,
            weights: filters.data[f0 * filters.taps..].as_ptr(),
            bias: &epilogue.bias[f0..f0 + nf],
            relu: epilogue.relu,
            out: out[f0 * f_stride..].as_mut_ptr(),
            f_stride,
            store,
        };
        // SAFETY: the instruction set is available (`check`). Weights: block f0 holds nf·taps
        // values from f0·taps (`new` packs exactly filters·taps values, fields private). Reads
        // and writes: the caller's contract, for filters f0..f0 + nf.
        unsafe { dispatch(filters.isa, nv, nf, &call) };
    }
}

/// How a call's sums are written.
#[derive(Clone, Copy)]
enum Store<'a> {
    /// Vector `v`'s real lanes as the runs `segs[starts[v]..starts[v + 1]]`.
    Runs {
        segs: &'a [Segment],
        starts: &'a [usize; MAX_NV + 1],
    },
    /// The call's two vectors are a row and the row below it: the maxima of their 2×2 blocks,
    /// `count` of them, at `dest`.
    Pooled { dest: usize, count: usize },
}

/// One kernel call's operands, pointers already offset to its pixel and filter block.
struct Call<'a> {
    channels: usize,
    channel_stride: usize,
    offsets: &'a [usize],
    src: *const f32,
    /// Positions from one of the call's vectors to the next.
    vector_stride: usize,
    weights: *const f32,
    bias: &'a [f32],
    relu: bool,
    out: *mut f32,
    f_stride: usize,
    store: Store<'a>,
}

/// The kernel for `nv` vectors and `nf` filters (each at most the ISA's block).
///
/// # Safety
/// `isa` is available on this CPU and `c`'s pointers cover what the kernel reads and writes
/// (see [`run`] and [`run_pooled`]); a pooled store comes with `nv == 2`.
unsafe fn dispatch(isa: Isa, nv: usize, nf: usize, c: &Call) {
    macro_rules! by_nf {
        ($kernel:ident, $nv:literal, [$($nf:literal),*]) => {
            match nf {
                $($nf => $kernel::<$nv, $nf>(c),)*
                _ => unreachable!("filter block {nf}"),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match nv {
            1 => by_nf!(kernel_avx512, 1, [1, 2, 3, 4, 5, 6, 7, 8]),
            2 => by_nf!(kernel_avx512, 2, [1, 2, 3, 4, 5, 6, 7, 8]),
            _ => by_nf!(kernel_avx512, 3, [1, 2, 3, 4, 5, 6, 7, 8]),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => match nv {
            1 => by_nf!(kernel_avx2, 1, [1, 2, 3, 4, 5, 6]),
            _ => by_nf!(kernel_avx2, 2, [1, 2, 3, 4, 5, 6]),
        },
        _ => match nv {
            1 => by_nf!(kernel_portable, 1, [1, 2, 3, 4]),
            _ => by_nf!(kernel_portable, 2, [1, 2, 3, 4]),
        },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kernel_avx512<const NV: usize, const NF: usize>(c: &Call) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; NF];
    for (f, accf) in acc.iter_mut().enumerate() {
        *accf = [_mm512_set1_ps(c.bias[f]); NV];
    }
    let mut w = c.weights;
    for ch in 0..c.channels {
        let base = c.src.add(ch * c.channel_stride);
        for &o in c.offsets {
            let s = base.add(o);
            let mut x = [_mm512_setzero_ps(); NV];
            for (v, xv) in x.iter_mut().enumerate() {
                *xv = _mm512_loadu_ps(s.add(v * c.vector_stride));
            }
            for (f, accf) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*w.add(f));
                for v in 0..NV {
                    accf[v] = _mm512_fmadd_ps(wv, x[v], accf[v]);
                }
            }
            w = w.add(NF);
        }
    }
    match c.store {
        Store::Pooled { dest, count } => pooled_avx512(&acc, c, dest, count),
        Store::Runs { segs, starts } => finish_avx512(acc, c, segs, starts),
    }
}

/// The block's stores, out of line: the accumulators arrive through memory once, so the FMA
/// loop above can keep them in registers only (inlined, the stores' loops over segments made
/// the compiler keep a memory copy of every accumulator updated on every tap).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
unsafe fn finish_avx512<const NV: usize, const NF: usize>(
    acc: [[std::arch::x86_64::__m512; NV]; NF],
    c: &Call,
    segs: &[Segment],
    starts: &[usize; MAX_NV + 1],
) {
    use std::arch::x86_64::*;
    for (f, accf) in acc.iter().enumerate() {
        let out = c.out.add(f * c.f_stride);
        for (v, a) in accf.iter().enumerate() {
            let a = if c.relu {
                _mm512_max_ps(*a, _mm512_setzero_ps())
            } else {
                *a
            };
            store_avx512(a, out, &segs[starts[v]..starts[v + 1]]);
        }
    }
}

/// A pooled call's stores: the maximum of each 2×2 block of its two vectors (a row and the row
/// below), ReLU after it, `count` of them at `dest`. Inline: without loops it leaves the
/// accumulators in registers, and the calls of a 1-channel layer (9 taps) are short enough for
/// the round trip through memory to show.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn pooled_avx512<const NV: usize, const NF: usize>(
    acc: &[[std::arch::x86_64::__m512; NV]; NF],
    c: &Call,
    dest: usize,
    count: usize,
) {
    use std::arch::x86_64::*;
    debug_assert_eq!(NV, 2, "a pooled call is a row and the row below it");
    // The even lanes, then the odd ones: lane i of the two is column pair i.
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0);
    let mask = ((1u32 << count) - 1) as u16;
    for (f, accf) in acc.iter().enumerate() {
        let rows = _mm512_max_ps(accf[0], accf[NV - 1]);
        let pooled = _mm512_max_ps(
            _mm512_permutexvar_ps(even, rows),
            _mm512_permutexvar_ps(odd, rows),
        );
        let pooled = if c.relu {
            _mm512_max_ps(pooled, _mm512_setzero_ps())
        } else {
            pooled
        };
        _mm512_mask_storeu_ps(c.out.add(f * c.f_stride + dest), mask, pooled);
    }
}

/// Each run of `segs` of `a`'s lanes to `out + dest`: whole vectors stored plainly, partial
/// ones moved down to lane 0 and stored under a mask, so no address outside a run is formed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
pub(crate) unsafe fn store_avx512(a: std::arch::x86_64::__m512, out: *mut f32, segs: &[Segment]) {
    use std::arch::x86_64::*;
    for s in segs {
        if s.count == 16 {
            _mm512_storeu_ps(out.add(s.dest), a);
        } else {
            let keep = (((1u32 << s.count) - 1) << s.lane) as u16;
            let moved = _mm512_maskz_compress_ps(keep, a);
            _mm512_mask_storeu_ps(out.add(s.dest), ((1u32 << s.count) - 1) as u16, moved);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const NV: usize, const NF: usize>(c: &Call) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); NV]; NF];
    for (f, accf) in acc.iter_mut().enumerate() {
        *accf = [_mm256_set1_ps(c.bias[f]); NV];
    }
    let mut w = c.weights;
    for ch in 0..c.channels {
        let base = c.src.add(ch * c.channel_stride);
        for &o in c.offsets {
            let s = base.add(o);
            let mut x = [_mm256_setzero_ps(); NV];
            for (v, xv) in x.iter_mut().enumerate() {
                *xv = _mm256_loadu_ps(s.add(v * c.vector_stride));
            }
            for (f, accf) in acc.iter_mut().enumerate() {
                let wv = _mm256_broadcast_ss(&*w.add(f));
                for v in 0..NV {
                    accf[v] = _mm256_fmadd_ps(wv, x[v], accf[v]);
                }
            }
            w = w.add(NF);
        }
    }
    match c.store {
        Store::Pooled { dest, count } => pooled_avx2(&acc, c, dest, count),
        Store::Runs { segs, starts } => finish_avx2(acc, c, segs, starts),
    }
}

/// As [`finish_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn finish_avx2<const NV: usize, const NF: usize>(
    acc: [[std::arch::x86_64::__m256; NV]; NF],
    c: &Call,
    segs: &[Segment],
    starts: &[usize; MAX_NV + 1],
) {
    use std::arch::x86_64::*;
    for (f, accf) in acc.iter().enumerate() {
        let out = c.out.add(f * c.f_stride);
        for (v, a) in accf.iter().enumerate() {
            let a = if c.relu {
                _mm256_max_ps(*a, _mm256_setzero_ps())
            } else {
                *a
            };
            store_avx2(a, out, &segs[starts[v]..starts[v + 1]]);
        }
    }
}

/// As [`pooled_avx512`], for eight lanes: four maxima a call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn pooled_avx2<const NV: usize, const NF: usize>(
    acc: &[[std::arch::x86_64::__m256; NV]; NF],
    c: &Call,
    dest: usize,
    count: usize,
) {
    use std::arch::x86_64::*;
    debug_assert_eq!(NV, 2, "a pooled call is a row and the row below it");
    // Even lanes to the low half, odd ones to the high half: lane i of the two halves is column
    // pair i.
    let split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let mask = _mm_cmpgt_epi32(_mm_set1_epi32(count as i32), _mm_setr_epi32(0, 1, 2, 3));
    for (f, accf) in acc.iter().enumerate() {
        let rows = _mm256_permutevar8x32_ps(_mm256_max_ps(accf[0], accf[NV - 1]), split);
        let pooled = _mm_max_ps(
            _mm256_castps256_ps128(rows),
            _mm256_extractf128_ps::<1>(rows),
        );
        let pooled = if c.relu {
            _mm_max_ps(pooled, _mm_setzero_ps())
        } else {
            pooled
        };
        _mm_maskstore_ps(c.out.add(f * c.f_stride + dest), mask, pooled);
    }
}

/// [`store_avx512`] for eight lanes: partial runs are rotated down to lane 0 and stored with
/// `vmaskmovps`, which touches only the lanes its mask selects.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn store_avx2(a: std::arch::x86_64::__m256, out: *mut f32, segs: &[Segment]) {
    use std::arch::x86_64::*;
    for s in segs {
        if s.count == 8 {
            _mm256_storeu_ps(out.add(s.dest), a);
        } else {
            let l = s.lane as i32;
            let idx = _mm256_add_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(l),
            );
            let moved = _mm256_permutevar8x32_ps(a, idx);
            let mask = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(s.count as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            _mm256_maskstore_ps(out.add(s.dest), mask, moved);
        }
    }
}

/// Plain Rust over eight-lane arrays, which compilers vectorise for whatever the target has.
unsafe fn kernel_portable<const NV: usize, const NF: usize>(c: &Call) {
    let mut acc = [[[0.0f32; 8]; NV]; NF];
    for (f, accf) in acc.iter_mut().enumerate() {
        *accf = [[c.bias[f]; 8]; NV];
    }
    let mut w = c.weights;
    for ch in 0..c.channels {
        let base = c.src.add(ch * c.channel_stride);
        for &o in c.offsets {
            let s = base.add(o);
            let mut x = [[0.0f32; 8]; NV];
            for (v, xv) in x.iter_mut().enumerate() {
                *xv = std::ptr::read_unaligned(s.add(v * c.vector_stride) as *const [f32; 8]);
            }
            for (f, accf) in acc.iter_mut().enumerate() {
                let wv = *w.add(f);
                for v in 0..NV {
                    for l in 0..8 {
                        // Not `mul_add`: without hardware FMA that is a libm call per lane.
                        accf[v][l] += wv * x[v][l];
                    }
                }
            }
            w = w.add(NF);
        }
    }
    let relu = |x: f32| if c.relu { x.max(0.0) } else { x };
    for (f, accf) in acc.iter().enumerate() {
        let out = c.out.add(f * c.f_stride);
        match c.store {
            Store::Runs { segs, starts } => {
                for (v, a) in accf.iter().enumerate() {
                    for s in &segs[starts[v]..starts[v + 1]] {
                        for k in 0..s.count {
                            *out.add(s.dest + k) = relu(a[s.lane + k]);
                        }
                    }
                }
            }
            Store::Pooled { dest, count } => {
                let (top, below) = (&accf[0], &accf[NV - 1]);
                for k in 0..count {
                    let pair = |r: &[f32; 8]| r[2 * k].max(r[2 * k + 1]);
                    *out.add(dest + k) = relu(pair(top).max(pair(below)));
                }
            }
        }
    }
}
