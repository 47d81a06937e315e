//! The dense layer's matrix product on weights packed once at load.
//!
//! `y[m×n] += x[m×k] · Wᵀ` with PyTorch's `W[n×k]`. The gemm crate repacks the weight matrix on
//! every call, which for a layer applied to chunk after chunk is pure waste: here the weights are
//! laid out once into panels of 16 output columns, k-major, so the micro-kernel streams them
//! contiguously. Loops are blocked in depth: on AVX2 a 256-deep slice of a panel (16 KiB) stays in
//! L1 while every row block of the chunk passes over it; on AVX-512 the blocks are deeper where
//! the rows of `x` are contiguous (see `KC_512_ROWS`).
//!
//! The micro-kernel needs AVX2 and FMA, detected at run time; elsewhere (or with
//! `SUBPASS_KERNELS=portable`) the gemm crate does the work on the unpacked weights. Where the
//! CPU has AVX-512, a wider micro-kernel runs on the same panels, two at a time: 8 rows × 32
//! columns in 16 of its 32 registers, each step 2 weight loads and 8 broadcasts for 16 FMAs of
//! 16 lanes, against AVX2's 8 loads for 12 FMAs of 8 lanes. Zen 4 runs a 512-bit FMA on both
//! 256-bit pipes, so the peak is the same; the gain is fewer instructions and loads per FLOP.

use super::gemm::{matmul_acc_strided, Strides};
use super::{cpu_has_avx2_fma, cpu_has_avx512, span, Isa};

/// Output columns per panel: two 8-wide vectors.
const NR: usize = 16;
/// Rows per micro-kernel call: 6 × 2 accumulators + 2 weight vectors + 1 broadcast = 15 of the
/// 16 vector registers.
const MR: usize = 6;
/// Depth of one k block.
const KC: usize = 256;
/// Rows per AVX-512 micro-kernel call: 8 × 2 accumulators + 2 weight vectors + 1 broadcast.
/// Eight divides the batch sizes pipelines use, so a chunk rarely leaves a ragged row group.
const MR_512: usize = 8;
/// Deepest k block of the AVX-512 path. Every block ends with a masked load, add and store of
/// each of the 16 accumulators, so a deeper block spends more of its time in FMAs: 784 as 4 ×
/// 196 ran 3–5% faster than as 7 × 112 (`cargo bench --bench kernels -- packed_subpass`, two
/// alternated rounds), though the two panels' slices then take 25 of L1's 32 KiB and the rows
/// of `x` stream from L2.
const KC_512: usize = 200;
/// Deepest k block of the AVX-512 path when each row of the left operand is contiguous (dense
/// layers): a whole 784- or 1024-deep layer of the MLP in one block. A column's weights then no
/// longer fit L1 (the second row group re-reads them from L2), but each output tile is loaded,
/// added to and stored once instead of four or five times, and the kernel runs four to five
/// times longer between those passes. Measured on the Xeon, `subpass bench` of the planned MLP,
/// four alternated runs: one thread 35.7k → 37.3k records/s at batch 16 and 42.0k → 43.9k at
/// 64; two workers level at 16 and 81.6k → 84.5k at 64. Not for an im2col left operand
/// (`depth` > 1): there each depth step of a row group reads its own cache line of `x`, and a
/// deep block's lines (59 KiB at 922 deep) fall out of L1; with 1024 there too, ResNet-18 ran
/// about 5% slower in a noisy set.
const KC_512_ROWS: usize = 1024;
/// Steps per block of [`blocks_512`].
const UNROLL_512: usize = 4;

/// The depth of the AVX-512 path's k blocks: `k` cut into equal blocks of at most
/// [`KC_512_ROWS`] (contiguous rows of `x`) or [`KC_512`] (1,001 is 6 × 167, not 5 × 200 + 1:
/// a shallow last block pays a whole pass over `y` for a few steps).
fn kc_512(k: usize, xl: XLayout) -> usize {
    let cap = if xl.depth == 1 { KC_512_ROWS } else { KC_512 };
    k.div_ceil(k.div_ceil(cap))
}
/// Rows of one row block: its `MC × KC` slice of the left operand (120 KiB) stays in L2 while
/// every panel passes over it. Without it a chunk of ~1000 tokens re-read its whole left operand
/// (1.5 MiB, more than L2) from L3 once per panel.
const MC: usize = 120;

/// A dense layer's weight matrix, laid out for the kernel this process runs. The layout is
/// private: `matmul_acc_strided`'s `unsafe` path relies on `panels` holding exactly
/// `⌈n/16⌉·k·16` values, which only [`DenseWeights::new`] establishes.
#[derive(Debug)]
pub struct DenseWeights {
    n: usize,
    k: usize,
    layout: Layout,
}

/// One depth step of one panel: 16 weights on one 64-byte cache line. A plain `Vec<f32>` of
/// this size comes from `mmap` 16 bytes past a page boundary, so every 512-bit load of a panel
/// would straddle two lines.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct PanelRow([f32; NR]);

impl PanelRow {
    /// The rows' weights as one slice, in order.
    fn floats(rows: &[PanelRow]) -> &[f32] {
        const { assert!(std::mem::size_of::<PanelRow>() == NR * std::mem::size_of::<f32>()) };
        // SAFETY: `PanelRow` is `repr(C)` over `[f32; NR]` and has no padding (asserted above:
        // 64 bytes, a multiple of its alignment), so `rows.len()` rows are `rows.len()·NR`
        // contiguous, initialised `f32`s, borrowed for as long as `rows`.
        unsafe { std::slice::from_raw_parts(rows.as_ptr().cast::<f32>(), rows.len() * NR) }
    }
}

#[derive(Debug)]
enum Layout {
    /// Panels `[n/16][k][16]`, zero-padded to a multiple of 16 columns, for the AVX2+FMA kernel
    /// or (`wide`) the AVX-512 one.
    Packed { panels: Vec<PanelRow>, wide: bool },
    /// PyTorch's `[n, k]`, for the portable path.
    Plain(Vec<f32>),
}

impl DenseWeights {
    /// `weight` in PyTorch's `[n, k]` layout, packed for the kernel [`super::isa`] chose.
    /// Panics if `weight` does not hold `n·k` values.
    pub fn new(weight: Vec<f32>, n: usize, k: usize) -> DenseWeights {
        DenseWeights::for_isa(weight, n, k, super::isa())
    }

    /// As [`DenseWeights::new`], for the kernel of `isa` (or the best below it this CPU runs):
    /// what tests use to run every path in one process.
    pub fn for_isa(weight: Vec<f32>, n: usize, k: usize, isa: Isa) -> DenseWeights {
        assert_eq!(
            Some(weight.len()),
            n.checked_mul(k),
            "dense weights: {} values for a [{n}, {k}] matrix",
            weight.len()
        );
        if !isa.has_avx2_fma() || !cpu_has_avx2_fma() || k == 0 {
            return DenseWeights {
                n,
                k,
                layout: Layout::Plain(weight),
            };
        }
        let panels_n = n.div_ceil(NR);
        // Written once, in order, each row gathered from its panel's 16 columns (zero past
        // `n`): filling with zeros and then scattering each column down its panel wrote every
        // value twice and touched 16 rows' lines per value. On every core: one after another,
        // packing (and the page faults of writing the panels) took a seventh of the MLP's
        // start-up.
        let panels: Vec<PanelRow> = crate::par::map_indices(panels_n * k, 1 << 11, |at| {
            let (panel, kk) = (at / k, at % k);
            let columns = &weight[panel * NR * k..((panel + 1) * NR * k).min(n * k)];
            let mut row = PanelRow([0.0; NR]);
            for (c, value) in row.0[..columns.len() / k].iter_mut().enumerate() {
                *value = columns[c * k + kk];
            }
            row
        });
        DenseWeights {
            n,
            k,
            layout: Layout::Packed {
                panels,
                wide: isa >= Isa::Avx512 && cpu_has_avx512(),
            },
        }
    }

    /// `y[m×n] += x[m×k] · Wᵀ`, row-major and contiguous.
    pub fn matmul_acc(&self, m: usize, x: &[f32], y: &mut [f32]) {
        let (n, k) = self.shape();
        self.product(m, x, XLayout { row: k, depth: 1 }, y, n, Onto::Y);
    }

    /// `y[m×n] = bias + x[m×k] · Wᵀ`, row-major and contiguous; `y`'s values are not read, so
    /// it may be any buffer of the right length (a recycled output). Panics unless `bias` has
    /// `n` values.
    ///
    /// Why not fill `y` with the bias and add: that wrote every output once more and made the
    /// kernels' first pass read it back, from L3 where `y` is large (MiniLM's 1,536-wide layers
    /// over a chunk's tokens); the kernels now start their sums from the bias row itself.
    pub fn matmul_bias(&self, m: usize, x: &[f32], bias: &[f32], y: &mut [f32]) {
        let (n, k) = self.shape();
        assert_eq!(
            bias.len(),
            n,
            "dense: a bias of {} for {n} columns",
            bias.len()
        );
        self.product(m, x, XLayout { row: k, depth: 1 }, y, n, Onto::Row(bias));
    }

    /// `(n, k)`: output columns and depth.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes the weights hold in their packed layout (padding included).
    pub fn bytes(&self) -> u64 {
        let bytes = match &self.layout {
            Layout::Packed { panels, .. } => std::mem::size_of_val(panels.as_slice()),
            Layout::Plain(v) => std::mem::size_of_val(v.as_slice()),
        };
        bytes as u64
    }

    /// `y += x · Wᵀ` where element `(r, d)` of `x` is at `r·x.row + d·x.depth` (so an im2col
    /// matrix, `[k, m]`, is read in place) and row `r` of `y` starts at `r·y_row`. Panics if a
    /// buffer is too small for the strides.
    pub fn matmul_acc_strided(
        &self,
        m: usize,
        x: &[f32],
        xl: XLayout,
        y: &mut [f32],
        y_row: usize,
    ) {
        self.product(m, x, xl, y, y_row, Onto::Y)
    }

    /// `y = onto + x · Wᵀ` in the layouts of [`DenseWeights::matmul_acc_strided`].
    fn product(&self, m: usize, x: &[f32], xl: XLayout, y: &mut [f32], y_row: usize, onto: Onto) {
        let (n, k) = self.shape();
        if let (Onto::Row(row), true) = (onto, m > 0 && n > 0) {
            assert!(
                row.len() >= n,
                "dense: a row of {} to add to {n} columns",
                row.len()
            );
            if k == 0 || matches!(self.layout, Layout::Plain(_)) {
                // No kernel of ours to start from the row: write it into `y`, then add.
                assert!(span(m - 1, y_row, n - 1).is_some_and(|l| l < y.len()));
                for r in 0..m {
                    y[r * y_row..r * y_row + n].copy_from_slice(&row[..n]);
                }
                return self.product(m, x, xl, y, y_row, Onto::Y);
            }
        }
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        let x_last = span(m - 1, xl.row, 0).and_then(|r| span(k - 1, xl.depth, r));
        let y_last = span(m - 1, y_row, n - 1);
        assert!(
            x_last.is_some_and(|l| l < x.len()) && y_last.is_some_and(|l| l < y.len()),
            "dense: buffers too small for {m} rows of [{n}, {k}]"
        );
        match &self.layout {
            Layout::Plain(weight) => {
                let x_s = Strides {
                    row: xl.row,
                    col: xl.depth,
                };
                matmul_acc_strided(
                    m,
                    n,
                    k,
                    x,
                    x_s,
                    weight,
                    Strides { row: 1, col: k },
                    y,
                    y_row,
                )
            }
            Layout::Packed { panels, wide } => {
                assert!(cpu_has_avx2_fma() && y_row >= n);
                assert!(!wide || cpu_has_avx512());
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX2 and FMA, and AVX-512F where `wide` (asserted).
                // `panels` holds ⌈n/16⌉·k·16 values (established by `for_isa`, fields private).
                // The assert above, in checked arithmetic, keeps the last element of `x` the
                // kernel reads, at (m-1)·row + (k-1)·depth, and the last of `y` it writes, at
                // (m-1)·y_row + n-1, inside the slices; partial panels write only
                // `cols ≤ n - p·16` columns, and `y_row ≥ n` keeps rows from overlapping. An
                // `Onto::Row` has at least `n` values (asserted above), the columns read of it.
                // The flush after needs AVX2, or AVX-512F where `wide`; its row slices are inside
                // `y` by that assert.
                unsafe {
                    let panels = PanelRow::floats(panels);
                    if *wide && m > 1 {
                        packed_acc_512(m, n, k, x, xl, panels, y, y_row, onto)
                    } else {
                        packed_acc(m, n, k, x, xl, panels, y, y_row, onto)
                    }
                    let flush = |v: &mut [f32]| {
                        if *wide {
                            flush_subnormals_512(v)
                        } else {
                            flush_subnormals_avx2(v)
                        }
                    };
                    // Rows back to back as one slice: a call per row of a narrow layer cost more
                    // than the zeroing itself.
                    if y_row == n {
                        flush(&mut y[..m * n]);
                    } else {
                        for r in 0..m {
                            flush(&mut y[r * y_row..r * y_row + n]);
                        }
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("packed weights are x86-64 only: {}", panels.len())
            }
        }
    }
}

/// What a product's sums are added to: `y`'s own values, or one row (a bias) for every row of
/// `y`, whose values are then never read.
#[derive(Debug, Clone, Copy)]
enum Onto<'a> {
    Y,
    Row(&'a [f32]),
}

/// Where a micro-kernel call reads the values its sums are added to: `y`'s tile itself, or, in
/// the first depth block of a product onto a row, that row's columns for every row (`row` 0).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Base {
    at: *const f32,
    row: usize,
}

#[cfg(target_arch = "x86_64")]
impl Base {
    /// The base of the tile of `y` at `y` (rows `y_row` apart), `col` columns in, over
    /// depths from `k0`.
    fn of(onto: Onto, k0: usize, col: usize, y: *const f32, y_row: usize) -> Base {
        match onto {
            Onto::Row(row) if k0 == 0 => Base {
                at: row.as_ptr().wrapping_add(col),
                row: 0,
            },
            _ => Base { at: y, row: y_row },
        }
    }
}

/// Where the elements of the left operand are: `(r, d)` at `r·row + d·depth`.
#[derive(Debug, Clone, Copy)]
pub struct XLayout {
    pub row: usize,
    pub depth: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn packed_acc(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    xl: XLayout,
    panels: &[f32],
    y: &mut [f32],
    y_row: usize,
    onto: Onto,
) {
    let panels_n = n.div_ceil(NR);
    if m == 1 {
        // One row has no rows to reuse a weight vector across, and two accumulators would leave
        // the FMA units waiting on their own latency: run four panels side by side instead.
        let mut p = 0;
        while p + 4 <= panels_n && (p + 4) * NR <= n {
            let yp = y.as_mut_ptr().add(p * NR);
            row_kernel_4(
                k,
                x.as_ptr(),
                xl.depth,
                panels.as_ptr().add(p * k * NR),
                k * NR,
                yp,
                Base::of(onto, 0, p * NR, yp, y_row).at,
            );
            p += 4;
        }
        for p in p..panels_n {
            let yp = y.as_mut_ptr().add(p * NR);
            kernel::<1>(
                k,
                x.as_ptr(),
                xl,
                panels.as_ptr().add(p * k * NR),
                yp,
                y_row,
                Base::of(onto, 0, p * NR, yp, y_row),
                NR.min(n - p * NR),
                Prefetch::NONE,
            );
        }
        return;
    }
    // Depths up to 1.5 KC run as one block: one pass over `y` instead of two, and the panel
    // slice (at most 24 KiB) still fits L1.
    let kc_max = if k <= KC + KC / 2 { k } else { KC };
    for k0 in (0..k).step_by(kc_max) {
        let kc = kc_max.min(k - k0);
        for m0 in (0..m).step_by(MC) {
            let m_end = m.min(m0 + MC);
            let groups = (m_end - m0).div_ceil(MR);
            for p in 0..panels_n {
                let cols = NR.min(n - p * NR);
                let panel = panels.as_ptr().add(p * k * NR + k0 * NR);
                let here = Column {
                    p,
                    width: 1,
                    k0,
                    kc,
                    last_rows: m_end == m,
                };
                let next = here.next(panels, panels_n, k, kc_max, 1);
                let mut r0 = m0;
                while r0 < m_end {
                    let rows = MR.min(m_end - r0);
                    let xp = x.as_ptr().add(r0 * xl.row + k0 * xl.depth);
                    let yp = y.as_mut_ptr().add(r0 * y_row + p * NR);
                    let pf = next.share((r0 - m0) / MR, groups);
                    let b = Base::of(onto, k0, p * NR, yp, y_row);
                    match rows {
                        6 => kernel::<6>(kc, xp, xl, panel, yp, y_row, b, cols, pf),
                        5 => kernel::<5>(kc, xp, xl, panel, yp, y_row, b, cols, pf),
                        4 => kernel::<4>(kc, xp, xl, panel, yp, y_row, b, cols, pf),
                        3 => kernel::<3>(kc, xp, xl, panel, yp, y_row, b, cols, pf),
                        2 => kernel::<2>(kc, xp, xl, panel, yp, y_row, b, cols, pf),
                        _ => kernel::<1>(kc, xp, xl, panel, yp, y_row, b, cols, pf),
                    }
                    r0 += rows;
                }
            }
        }
    }
}

/// Where every accumulator starts, taken off again as the sums are written: 2^-110.
///
/// Why: an FMA whose result is subnormal (nonzero, below 1.2e-38) takes a microcode assist on
/// Intel cores, and so does one that reads a subnormal: 23 and 40 ns instead of 0.15 (one
/// thread, a loop of dependent 512-bit FMAs). Records of tiny values (the MLP fed 1e-37s) made
/// sums that started from zero crawl through the subnormal range, and a chunk took about 55
/// times as long. Started from 2^-110, a sum of tiny products is a normal number close to it; and for any
/// partial sum of 2^-86 (1.3e-26) or more, 2^-110 is under half an ulp, so adding it and taking
/// it off changes no bit. What a tiny sum loses is what the CPU's flush-to-zero mode would: its
/// products below 2^-134, at most k·2^-134 in all (6e-38 at depth 1024). Rust forbids setting
/// that mode (`_mm_setcsr` is undefined behaviour), so the kernels do it in their arithmetic.
const OFFSET: f32 = f32::from_bits((127 - 110) << 23);

/// `base + (acc - OFFSET)`: what a product writes (see [`flush_subnormals`] for the rest).
fn finish(base: f32, acc: f32) -> f32 {
    base + (acc - OFFSET)
}

/// Zero in place of every subnormal of `v`, after a product: the next layer never reads one.
///
/// A pass of its own, not in the kernels' stores: there, the flush's constants moved LLVM's
/// registers around the step loop, which then reloaded more of its row offsets from the stack,
/// and one thread ran the MLP 4–5% slower at batch 16 (`subpass bench`'s (a), six alternated
/// rounds). Over `y` while it is still in L1 or L2, the pass is 0.5% of the MLP's time and 3% of
/// the 64-wide `residual` model's dense layers (`perf record`).
#[inline]
fn flush_subnormals(v: &mut [f32]) {
    for x in v {
        // As `is_subnormal`, in integer operations the compiler vectorises.
        let bits = x.to_bits();
        let exponent_zero = bits & 0x7f80_0000 == 0;
        *x = f32::from_bits(if exponent_zero {
            bits & 0x8000_0000
        } else {
            bits
        });
    }
}

/// [`flush_subnormals`] in 256-bit vectors: compiled for the baseline x86-64, the loop ran four
/// lanes at a time and took 1.4% of the MLP's time at batch 16 (`perf record`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn flush_subnormals_avx2(v: &mut [f32]) {
    flush_subnormals(v)
}

/// [`flush_subnormals`] in 512-bit vectors, where the AVX-512 kernel ran.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn flush_subnormals_512(v: &mut [f32]) {
    flush_subnormals(v)
}

/// [`finish`] on eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn finish_256(
    base: std::arch::x86_64::__m256,
    acc: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_add_ps(base, _mm256_sub_ps(acc, _mm256_set1_ps(OFFSET)))
}

/// [`finish`] on sixteen lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn finish_512(
    base: std::arch::x86_64::__m512,
    acc: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_add_ps(base, _mm512_sub_ps(acc, _mm512_set1_ps(OFFSET)))
}

/// One row × 64 columns (four whole panels, `panel_stride` apart) over `k` steps, added to the
/// 64 values at `base` and written to `y`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_kernel_4(
    k: usize,
    x: *const f32,
    x_depth: usize,
    panel: *const f32,
    panel_stride: usize,
    y: *mut f32,
    base: *const f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(OFFSET); 8];
    for kk in 0..k {
        let xv = _mm256_broadcast_ss(&*x.add(kk * x_depth));
        for q in 0..4 {
            let w = panel.add(q * panel_stride + kk * NR);
            acc[2 * q] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w), acc[2 * q]);
            acc[2 * q + 1] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w.add(8)), acc[2 * q + 1]);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(
            y.add(i * 8),
            finish_256(_mm256_loadu_ps(base.add(i * 8)), *a),
        );
    }
}

/// `R` rows × 16 columns over `kc` steps, added to `base`'s values and written to `y`,
/// fetching `pf`'s share of the next column's weights on the way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    kc: usize,
    x: *const f32,
    xl: XLayout,
    panel: *const f32,
    y: *mut f32,
    y_stride: usize,
    base: Base,
    cols: usize,
    pf: Prefetch,
) {
    use std::arch::x86_64::*;
    let mut lo = [_mm256_set1_ps(OFFSET); R];
    let mut hi = [_mm256_set1_ps(OFFSET); R];
    // Back to back, not spread as in `kernel_512`: spread, one AVX2 thread ran the MLP 8–10%
    // slower (`SUBPASS_KERNELS=avx2 subpass bench`'s (a), four alternated runs).
    for kk in 0..kc {
        if (pf.lo..pf.hi).contains(&kk) {
            pf.fetch(kk);
        }
        let w0 = _mm256_loadu_ps(panel.add(kk * NR));
        let w1 = _mm256_loadu_ps(panel.add(kk * NR + 8));
        for r in 0..R {
            let xv = _mm256_broadcast_ss(&*x.add(r * xl.row + kk * xl.depth));
            lo[r] = _mm256_fmadd_ps(xv, w0, lo[r]);
            hi[r] = _mm256_fmadd_ps(xv, w1, hi[r]);
        }
    }
    for r in 0..R {
        let (yr, br) = (y.add(r * y_stride), base.at.add(r * base.row));
        if cols == NR {
            _mm256_storeu_ps(yr, finish_256(_mm256_loadu_ps(br), lo[r]));
            _mm256_storeu_ps(yr.add(8), finish_256(_mm256_loadu_ps(br.add(8)), hi[r]));
        } else {
            let mut tmp = [0.0f32; NR];
            _mm256_storeu_ps(tmp.as_mut_ptr(), lo[r]);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), hi[r]);
            for (c, t) in tmp.iter().enumerate().take(cols) {
                *yr.add(c) = finish(*br.add(c), *t);
            }
        }
    }
}

/// [`packed_acc`] on AVX-512: `y[m×n] += x · panels`, 8 rows × 2 panels per micro-kernel call,
/// over k blocks of [`kc_512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn packed_acc_512(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    xl: XLayout,
    panels: &[f32],
    y: &mut [f32],
    y_row: usize,
    onto: Onto,
) {
    let panels_n = n.div_ceil(NR);
    let kc_max = kc_512(k, xl);
    for k0 in (0..k).step_by(kc_max) {
        let kc = kc_max.min(k - k0);
        for m0 in (0..m).step_by(MC) {
            let m_end = m.min(m0 + MC);
            let groups = (m_end - m0).div_ceil(MR_512);
            let mut p = 0;
            while p < panels_n {
                let pair = p + 1 < panels_n;
                let cols = (n - p * NR).min(if pair { 2 * NR } else { NR });
                let panel = panels.as_ptr().add(p * k * NR + k0 * NR);
                let here = Column {
                    p,
                    width: if pair { 2 } else { 1 },
                    k0,
                    kc,
                    last_rows: m_end == m,
                };
                let next = here.next(panels, panels_n, k, kc_max, 2);
                let mut r0 = m0;
                while r0 < m_end {
                    let rows = MR_512.min(m_end - r0);
                    let yp = y.as_mut_ptr().add(r0 * y_row + p * NR);
                    let t = Tile512 {
                        kc,
                        x: x.as_ptr().add(r0 * xl.row + k0 * xl.depth),
                        xl,
                        panel,
                        panel_stride: k * NR,
                        y: yp,
                        y_row,
                        base: Base::of(onto, k0, p * NR, yp, y_row),
                        cols,
                        pf: next.share((r0 - m0) / MR_512, groups),
                    };
                    match (rows, pair) {
                        (8, true) => kernel_512::<8, 2>(&t),
                        (7, true) => kernel_512::<7, 2>(&t),
                        (6, true) => kernel_512::<6, 2>(&t),
                        (5, true) => kernel_512::<5, 2>(&t),
                        (4, true) => kernel_512::<4, 2>(&t),
                        (3, true) => kernel_512::<3, 2>(&t),
                        (2, true) => kernel_512::<2, 2>(&t),
                        (_, true) => kernel_512::<1, 2>(&t),
                        (8, false) => kernel_512::<8, 1>(&t),
                        (7, false) => kernel_512::<7, 1>(&t),
                        (6, false) => kernel_512::<6, 1>(&t),
                        (5, false) => kernel_512::<5, 1>(&t),
                        (4, false) => kernel_512::<4, 1>(&t),
                        (3, false) => kernel_512::<3, 1>(&t),
                        (2, false) => kernel_512::<2, 1>(&t),
                        (_, false) => kernel_512::<1, 1>(&t),
                    }
                    r0 += rows;
                }
                p += if pair { 2 } else { 1 };
            }
        }
    }
}

/// One AVX-512 micro-kernel call: `kc` steps of rows from `x` against the panels from `panel`
/// (`panel_stride` apart), added to `base`'s values and written to `y`'s first `cols` columns.
#[cfg(target_arch = "x86_64")]
struct Tile512 {
    kc: usize,
    x: *const f32,
    xl: XLayout,
    panel: *const f32,
    panel_stride: usize,
    y: *mut f32,
    y_row: usize,
    base: Base,
    cols: usize,
    pf: Prefetch,
}

/// One column of micro-kernel calls: `width` panels from panel `p`, over depths `k0..k0 + kc`,
/// for every row group of a row block (`last_rows`: the chunk's last row block).
#[cfg(target_arch = "x86_64")]
struct Column {
    p: usize,
    width: usize,
    k0: usize,
    kc: usize,
    last_rows: bool,
}

#[cfg(target_arch = "x86_64")]
impl Column {
    /// All the steps of the weights the column after this one reads, in the loops' order
    /// (panels, then the next row block, then the next depth block), for a kernel `max_width`
    /// panels wide; [`Prefetch::NONE`] after the last.
    ///
    /// Why: a column's first row group waits on its weights coming from L3 (the MLP's two big
    /// matrices, 7.4 MiB, do not fit a core's 2 MiB of L2), while the other row groups find
    /// them in L1 and leave the memory system idle. Fetching the next column's weights while
    /// this one's row groups compute took the MLP's in-memory pipeline from 76k to 80–83k
    /// records/s at batch 64 on a Xeon, and from 62–64k to 67–71k at batch 16 (three
    /// alternated runs each). Fetching two columns ahead, or into L2 only, gained less; with
    /// the share spread over the call's steps, also fetching the column after next into L2
    /// (`prefetcht1` or `t2`) made one thread 5–10% slower.
    fn next(
        &self,
        panels: &[f32],
        panels_n: usize,
        k: usize,
        kc_max: usize,
        max_width: usize,
    ) -> Prefetch {
        let (p, k0, kc) = if self.p + self.width < panels_n {
            (self.p + self.width, self.k0, self.kc)
        } else if !self.last_rows {
            (0, self.k0, self.kc)
        } else if self.k0 + self.kc < k {
            let k0 = self.k0 + self.kc;
            (0, k0, kc_max.min(k - k0))
        } else {
            return Prefetch::NONE;
        };
        Prefetch {
            // `wrapping_add`, though it stays in bounds: the pointer is only ever a hint.
            panel: panels.as_ptr().wrapping_add(p * k * NR + k0 * NR),
            width: max_width.min(panels_n - p),
            stride: k * NR,
            lo: 0,
            hi: kc,
        }
    }
}

/// The cache lines of steps `lo..hi` of `width` panels from `panel`, fetched into L1: spread
/// over a micro-kernel call's steps on AVX-512 ([`Prefetch::spread`]), one step per step from
/// step `lo` on AVX2.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Prefetch {
    panel: *const f32,
    width: usize,
    stride: usize,
    lo: usize,
    hi: usize,
}

#[cfg(target_arch = "x86_64")]
impl Prefetch {
    const NONE: Prefetch = Prefetch {
        panel: std::ptr::null(),
        width: 0,
        stride: 0,
        lo: 0,
        hi: 0,
    };

    /// Row group `g` of `groups`'s equal share of the steps, so that no one call carries the
    /// whole column's traffic.
    fn share(&self, g: usize, groups: usize) -> Prefetch {
        let steps = self.hi - self.lo;
        Prefetch {
            lo: self.lo + g * steps / groups,
            hi: self.lo + (g + 1) * steps / groups,
            ..*self
        }
    }

    /// How a call of `kc` steps spreads this share over its steps: one of the share's steps
    /// fetched every `every` of its own, `fetches` of them (all, unless the share is longer
    /// than the call).
    ///
    /// Why spread: fetched back to back, from the call's first step, 8 row groups' shares of
    /// the MLP's columns were 48 lines in 24 steps and then none for 172, presumably a burst
    /// that filled L1's miss buffers and stalled the weight loads beside it. Spread, one
    /// thread ran the MLP 11–15% faster at batch 16 and 4% at batch 64 (`subpass bench`'s
    /// (a), two sets of four to eight alternated runs).
    fn spread(&self, kc: usize) -> (usize, usize) {
        let count = self.hi - self.lo;
        let every = kc.checked_div(count).unwrap_or(kc).max(1);
        (every, count.min(kc / every))
    }

    /// Fetches step `kk`'s line of each panel.
    #[inline(always)]
    fn fetch(&self, kk: usize) {
        for q in 0..self.width {
            prefetch_l1(self.panel.wrapping_add(q * self.stride + kk * NR));
        }
    }
}

/// Fetches the cache line at `at` into L1.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_l1(at: *const f32) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch is a hint: it reads nothing into the program, never faults and is
    // defined for any address, so no pointer makes it unsound.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(at.cast::<i8>()) };
}

/// `steps` steps of [`kernel_512`] from `x` and `panel`, which it advances past them. The row
/// offsets come in precomputed and `x` and the panel advance by a pointer step: computing each
/// row's address from `r·row + kk·depth` made a step about 40 instructions for its 16 FMAs; it
/// is now 31 (2 weight loads, 8 broadcasts, 16 FMAs, 5 for the pointers and the loop).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn steps_512<const R: usize, const P: usize>(
    t: &Tile512,
    rows: &[usize; R],
    acc: &mut [[std::arch::x86_64::__m512; P]; R],
    x: &mut *const f32,
    panel: &mut *const f32,
    steps: usize,
) {
    use std::arch::x86_64::*;
    for _ in 0..steps {
        let mut w = [_mm512_setzero_ps(); P];
        for (q, wq) in w.iter_mut().enumerate() {
            *wq = _mm512_loadu_ps(panel.add(q * t.panel_stride));
        }
        *panel = panel.add(NR);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*x.add(rows[r]));
            for q in 0..P {
                acc_r[q] = _mm512_fmadd_ps(xv, w[q], acc_r[q]);
            }
        }
        *x = x.add(t.xl.depth);
    }
}

/// A call's steps in blocks of [`UNROLL_512`], for a left operand whose rows are contiguous
/// (`depth` 1), then the last few one at a time.
///
/// Why: [`steps_512`] called between two prefetch steps is a loop of its own, and at 16 rows a
/// row group's share of the next column is one prefetch step every second step, so a call ran
/// as many short loops as it had steps, each with its entry, exit and prefetch bookkeeping
/// (about 45 instructions a step for 16 FMAs). In blocks, a block's four steps address `x` at
/// constant offsets from one pointer and its prefetch steps sit at its head, each two
/// prefetches from one running pointer, with no bounds or width tests in the loop.
///
/// Measured on a 2-core Xeon (AVX-512, 2 MiB of L2 a core), `subpass bench` of the planned MLP,
/// four alternated rounds, medians. Blocks with [`Prefetch::fetch`] at their head (about 150
/// instructions for 64 FMAs): batch 64 74.8k → 81.5k records/s on two workers (38.6k → 42.7k on
/// one thread), batch 16 63.0k → 66.0k (33.0k → 34.4k). Then the running pointer (about 120
/// instructions): batch 16 68.2k → 76.0k (36.4k → 39.7k), batch 64 87.8k → 90.8k (45.1k →
/// 46.6k), in a quieter hour.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn blocks_512<const R: usize, const P: usize>(
    t: &Tile512,
    rows: &[usize; R],
    acc: &mut [[std::arch::x86_64::__m512; P]; R],
    x: &mut *const f32,
    panel: &mut *const f32,
) {
    use std::arch::x86_64::*;
    let blocks = t.kc / UNROLL_512;
    // The share's steps, the same number in each of the first blocks (rounded up: the share is
    // done before the call's end, never after it).
    let (lo, hi) = (t.pf.lo, t.pf.hi.max(t.pf.lo));
    let per_block = ((hi - lo) * UNROLL_512).div_ceil(t.kc.max(1)).max(1);
    let fetching = (hi - lo).div_ceil(per_block).min(blocks);
    // The step is written out here as in `steps_512`, not shared through a one-step function:
    // with one, LLVM laid this loop out differently and the product ran 3–5% slower at 16 and
    // 64 rows (one thread, four alternated rounds).
    let block = |acc: &mut [[__m512; P]; R], x: &mut *const f32, panel: &mut *const f32| {
        for s in 0..UNROLL_512 {
            let mut w = [_mm512_setzero_ps(); P];
            for (q, wq) in w.iter_mut().enumerate() {
                *wq = _mm512_loadu_ps(panel.add(s * NR + q * t.panel_stride));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(rows[r] + s));
                for q in 0..P {
                    acc_r[q] = _mm512_fmadd_ps(xv, w[q], acc_r[q]);
                }
            }
        }
        *panel = panel.add(UNROLL_512 * NR);
        *x = x.add(UNROLL_512);
    };
    // The share's lines in each of (at most) two panels, walked by one pointer: a one-panel
    // share fetches its line twice, which costs nothing (the line is on its way already). Only
    // ever a hint: `wrapping_add` keeps it defined even where it would point past the panels.
    debug_assert!(t.pf.width <= 2, "columns are at most two panels wide");
    let second = if t.pf.width > 1 { t.pf.stride } else { 0 };
    let mut line = t.pf.panel.wrapping_add(lo * NR);
    let fetch = |line: &mut *const f32| {
        prefetch_l1(*line);
        prefetch_l1(line.wrapping_add(second));
        *line = line.wrapping_add(NR);
    };
    // The last block may fetch up to `per_block - 1` steps past the share, lines another row
    // group fetches or none reads soon: a few wasted hints, for no branch in the loop.
    for _ in 0..fetching {
        for _ in 0..per_block {
            fetch(&mut line);
        }
        block(acc, x, panel);
    }
    for _ in fetching..blocks {
        block(acc, x, panel);
    }
    for _ in (lo + fetching * per_block)..hi {
        fetch(&mut line);
    }
    steps_512::<R, P>(t, rows, acc, x, panel, t.kc - blocks * UNROLL_512);
}

/// `R` rows × `P` panels of 16 columns over `t.kc` steps, added to `t.base`'s values and
/// written to `y`; the columns past
/// `t.cols` (a partial last panel's zero padding) are masked off, never touched.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn kernel_512<const R: usize, const P: usize>(t: &Tile512) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_set1_ps(OFFSET); P]; R];
    // Each row's offset from the step's first element, computed once, so that the loop
    // addresses a row's value as base + offset·4. `black_box` hides that the offsets are
    // multiples of one stride: knowing it, LLVM walks them as a running sum, an add per row.
    let rows: [usize; R] = std::hint::black_box(std::array::from_fn(|r| r * t.xl.row));
    let (mut x, mut panel) = (t.x, t.panel);
    if t.xl.depth == 1 {
        blocks_512::<R, P>(t, &rows, &mut acc, &mut x, &mut panel);
    } else {
        let (every, fetches) = t.pf.spread(t.kc);
        for j in 0..fetches {
            t.pf.fetch(t.pf.lo + j);
            steps_512::<R, P>(t, &rows, &mut acc, &mut x, &mut panel, every);
        }
        steps_512::<R, P>(
            t,
            &rows,
            &mut acc,
            &mut x,
            &mut panel,
            t.kc - fetches * every,
        );
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (q, a) in acc_r.iter().enumerate() {
            let Some(left) = t.cols.checked_sub(q * NR).filter(|&l| l > 0) else {
                break;
            };
            // The padded columns' sums are zero, but storing them would write past row `r`'s
            // `n` columns: into the next row's (harmlessly, the same value) or past `y`.
            let mask: __mmask16 = if left >= NR {
                0xffff
            } else {
                ((1u32 << left) - 1) as __mmask16
            };
            let old = _mm512_maskz_loadu_ps(mask, t.base.at.add(r * t.base.row + q * NR));
            let yp = t.y.add(r * t.y_row + q * NR);
            _mm512_mask_storeu_ps(yp, mask, finish_512(old, *a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_left_operand_reads_im2col_in_place() {
        // x given transposed, [k, m], as im2col writes it; y rows strided wider than n. Depths
        // of one k block and of three (KC_512 is 200 for such an operand).
        for k in [37, 450] {
            strided_product(23, 20, k, 25);
        }
    }

    fn strided_product(m: usize, n: usize, k: usize, y_row: usize) {
        let xt: Vec<f32> = (0..k * m)
            .map(|i| ((i * 3 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect();
        for isa in isas() {
            let mut y = vec![0.0f32; m * y_row];
            DenseWeights::for_isa(w.clone(), n, k, isa).matmul_acc_strided(
                m,
                &xt,
                XLayout { row: 1, depth: m },
                &mut y,
                y_row,
            );
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| xt[p * m + i] as f64 * w[j * k + p] as f64)
                        .sum();
                    let got = y[i * y_row + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{} k {k} [{i},{j}]: {got} vs {want}",
                        isa.name()
                    );
                }
            }
            // The padding between rows of `y` is never written.
            for i in 0..m {
                assert!(y[i * y_row + n..(i + 1) * y_row].iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    fn packed_product_matches_naive_for_ragged_shapes() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 17, 300),
            (1, 64, 9),
            (1, 100, 785),
            (5, 16, 256),
            (7, 33, 513),
            (13, 10, 64),
            (64, 100, 785),
            // Row groups of 8 and ragged ones, pairs of panels and a lone partial one, depths
            // cut into equal blocks (2500 = 3 × 834 - 2, 2049 = 683 × 3) and a depth of one
            // block plus one.
            (16, 48, 2500),
            (16, 48, 2049),
            (19, 40, 1025),
            (16, 48, 600),
            (9, 15, 7),
            (130, 33, 256),
        ] {
            let (x, w) = operands(m, n, k);
            for isa in isas() {
                let dense = DenseWeights::for_isa(w.clone(), n, k, isa);
                let mut y = vec![0.25f32; m * n];
                dense.matmul_acc(m, &x, &mut y);
                assert_naive(&y, &x, &w, [m, n, k], |_| 0.25, isa);
            }
        }
    }

    /// Records of tiny values (the products subnormal, the sums around 1e-37) come out as the
    /// CPU's flush-to-zero mode would make them: no output subnormal, for the next layer to read,
    /// and each within `k·2^-134` (what the kernels' offset rounds away) plus the smallest
    /// normal (what is flushed) of the exact sum. Shapes: the one-row kernels, row groups of 8
    /// with ragged ends, partial panels, one depth block and two.
    #[test]
    fn tiny_values_come_out_normal_or_zero_and_close_to_the_exact_sum() {
        for &(m, n, k) in &[
            (1, 64, 784),
            (1, 20, 300),
            (16, 48, 784),
            (13, 40, 1025),
            (64, 100, 300),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 2e-38)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 100.0)
                .collect();
            for isa in isas() {
                let dense = DenseWeights::for_isa(w.clone(), n, k, isa);
                let mut y = vec![0.0f32; m * n];
                dense.matmul_acc(m, &x, &mut y);
                let slack = k as f64 * 2f64.powi(-134) + f32::MIN_POSITIVE as f64;
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                            .sum();
                        let got = y[i * n + j];
                        // The portable path is the gemm crate's, which we do not reach into.
                        if isa.has_avx2_fma() {
                            assert!(
                                !got.is_subnormal(),
                                "{} {m}x{n}x{k} [{i},{j}]: {got:e}",
                                isa.name()
                            );
                        }
                        assert!(
                            (got as f64 - want).abs() <= slack + 1e-6 * want.abs(),
                            "{} {m}x{n}x{k} [{i},{j}]: {got:e} vs {want:e}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    /// `x` `[m, k]` and `w` `[n, k]` of small exact values.
    fn operands(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let x = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let w = (0..n * k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect();
        (x, w)
    }

    /// `y` is `base(j) + x · wᵀ`, the sums taken in f64 from the definition.
    fn assert_naive(
        y: &[f32],
        x: &[f32],
        w: &[f32],
        [m, n, k]: [usize; 3],
        base: impl Fn(usize) -> f64,
        isa: Isa,
    ) {
        for i in 0..m {
            for j in 0..n {
                let want: f64 = base(j)
                    + (0..k)
                        .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                        .sum::<f64>();
                let got = y[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{} {m}x{n}x{k} [{i},{j}]: {got} vs {want}",
                    isa.name()
                );
            }
        }
    }

    #[test]
    fn a_product_onto_a_bias_never_reads_what_y_held() {
        // `y` starts as NaN, as a recycled buffer might hold: any value read from it would
        // poison its sum. Shapes cover one row (the four-panel row kernel and a lone panel),
        // row groups of 8 and 6 with ragged ends, partial panels, one depth block and several
        // (KC_512_ROWS is 1024, KC 256), and more rows than a row block (MC).
        for &(m, n, k) in &[
            (1, 64, 9),
            (1, 100, 785),
            (3, 20, 1),
            (16, 48, 600),
            (19, 40, 1025),
            (130, 33, 256),
            (64, 1024, 784),
            (16, 40, 2500),
        ] {
            let (x, w) = operands(m, n, k);
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 3.0).collect();
            for isa in isas() {
                let dense = DenseWeights::for_isa(w.clone(), n, k, isa);
                let mut y = vec![f32::NAN; m * n];
                dense.matmul_bias(m, &x, &bias, &mut y);
                assert_naive(&y, &x, &w, [m, n, k], |j| bias[j] as f64, isa);
                // The same sums as filling `y` with the bias and adding, bit for bit.
                let mut filled: Vec<f32> = bias.iter().copied().cycle().take(m * n).collect();
                dense.matmul_acc(m, &x, &mut filled);
                assert_eq!(y, filled, "{} {m}x{n}x{k}", isa.name());
            }
        }
    }

    /// The prefetches of each column of micro-kernel calls, over all its row groups, cover
    /// exactly the cache lines the next column in the AVX-512 loops' order reads: each once,
    /// none outside it, and nothing after the last column.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_column_prefetches_exactly_the_next_columns_lines() {
        use std::collections::BTreeMap;
        // Both left operands' block depths: rows contiguous (`depth` 1) and im2col's.
        for &(m, n, k, depth) in &[
            (64usize, 1024usize, 784usize, 1usize),
            (64, 1024, 784, 64),
            (16, 48, 2600, 1),
            (16, 48, 600, 16),
            (130, 40, 401, 130),
            (130, 40, 1500, 1),
            (9, 15, 7, 1),
            (8, 16, 200, 8),
        ] {
            let panels_n = n.div_ceil(NR);
            let panels = vec![0.0f32; panels_n * k * NR];
            let line = |ptr: *const f32| (ptr as usize - panels.as_ptr() as usize) / 64;
            let row = if depth == 1 { k } else { 1 };
            let kc_max = kc_512(k, XLayout { row, depth });
            // The columns in the loops' order: depth blocks, row blocks, pairs of panels.
            let mut columns = Vec::new();
            for k0 in (0..k).step_by(kc_max) {
                let kc = kc_max.min(k - k0);
                for m0 in (0..m).step_by(MC) {
                    let m_end = m.min(m0 + MC);
                    for p in (0..panels_n).step_by(2) {
                        let width = 2.min(panels_n - p);
                        columns.push((
                            Column {
                                p,
                                width,
                                k0,
                                kc,
                                last_rows: m_end == m,
                            },
                            m_end - m0,
                        ));
                    }
                }
            }
            for (i, (column, rows)) in columns.iter().enumerate() {
                let next = column.next(&panels, panels_n, k, kc_max, 2);
                let groups = rows.div_ceil(MR_512);
                let mut fetched = BTreeMap::new();
                for g in 0..groups {
                    let pf = next.share(g, groups);
                    for kk in pf.lo..pf.hi {
                        for q in 0..pf.width {
                            let at = pf.panel.wrapping_add(q * pf.stride + kk * NR);
                            *fetched.entry(line(at)).or_insert(0) += 1;
                        }
                    }
                }
                let mut wanted = BTreeMap::new();
                if let Some((after, _)) = columns.get(i + 1) {
                    for q in after.p..after.p + after.width {
                        for d in after.k0..after.k0 + after.kc {
                            wanted.insert((q * k + d) * NR * 4 / 64, 1);
                        }
                    }
                }
                let right = wanted.keys().filter(|l| fetched.get(l) == Some(&1)).count();
                assert!(
                    fetched == wanted,
                    "{m}x{n}x{k}, column {i}: fetched {} lines, {right} of them once and wanted, \
                     of the next column's {}",
                    fetched.len(),
                    wanted.len()
                );
            }
        }
    }

    /// Every kernel path this CPU runs; AVX-512 says loudly when it is skipped.
    fn isas() -> Vec<Isa> {
        if !Isa::Avx512.available() {
            eprintln!("AVX-512 not on this CPU: its dense kernel is not tested here");
        }
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    }
}
