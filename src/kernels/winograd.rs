//! Winograd convolution for 3×3 stride-1 kernels: F(2×2, 3×3) and F(4×4, 3×3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! An `m × m` output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d Bᵀ)] A` over the `α × α` input tile `d`
//! (`α = m + 2`): `α²` multiplications per tile and channel pair where direct convolution needs
//! `9m²`, 2.25× fewer for m = 2 and 4× fewer for m = 4, at the price of transforms and of
//! rounding error that grows with `m` (measured in `tests/conv_kernels.rs`, quoted in the
//! README). The filter transform `G g Gᵀ` is done once at load, in f64.
//!
//! Tiles run along the vector lanes, as pixels do in [`super::conv_direct`]: the padded image is
//! split into `m × m` phase planes, so element `(k, l)` of consecutive tiles is a contiguous run
//! of floats. For each chunk of tiles: the input transform writes `V[ξ][c][tile]`; one
//! [`super::conv_block`] product per `ξ` (the kernel with one tap per channel) makes
//! `M[ξ][f][tile] = Σ_c U[ξ][f][c] · V[ξ][c][tile]`; the output transform adds the bias, applies
//! ReLU and writes each tile's `m × m` outputs in their NCHW place. Small feature maps put
//! several images side by side so that the vectors fill.

use super::conv_block::{self, Epilogue, Grid, GridShape, PackedFilters, Segment, Taps, MAX_LANES};
use super::conv_direct::{ConvShape, PhaseLayout};
use super::short;
use super::team::Team;
use super::Isa;

/// Lanes of the widest transform vector: chunks and `V` rows are padded to a multiple of it.
const L: usize = MAX_LANES;

/// Bytes of one `ξ`'s `V` (or `M`) a chunk of tiles may use, so that each stays in L2 (1 MiB a
/// core on Zen 4) through its product. Chunks are 64 to 256 tiles: measured on ResNet-18's
/// shapes, 256 beat 128 and 512, and small chunks made deep layers stream their transformed
/// filters (1 MiB per `ξ` at 512 channels) once per handful of tiles.
const CHUNK_BYTES: usize = 512 * 1024;

/// Tile positions a pass should offer the kernel at least: small maps take several images.
const MIN_PASS_TILES: usize = 128;

/// The two tile sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileSize {
    /// F(2×2, 3×3): 16 products per 4 outputs.
    F2,
    /// F(4×4, 3×3): 36 products per 16 outputs; larger rounding error.
    F4,
}

/// The largest `α` of any tile size.
const MAX_ALPHA: usize = 6;

impl TileSize {
    /// `m`: outputs per tile side.
    pub fn m(self) -> usize {
        match self {
            TileSize::F2 => 2,
            TileSize::F4 => 4,
        }
    }

    /// `α = m + 2`: inputs per tile side (at most `MAX_ALPHA`).
    pub fn alpha(self) -> usize {
        self.m() + 2
    }

    pub fn name(self) -> &'static str {
        match self {
            TileSize::F2 => "F(2x2,3x3)",
            TileSize::F4 => "F(4x4,3x3)",
        }
    }

    /// `G`, `α × 3`: the filter transform.
    fn g(self) -> &'static [[f64; 3]] {
        match self {
            TileSize::F2 => &[
                [1.0, 0.0, 0.0],
                [0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5],
                [0.0, 0.0, 1.0],
            ],
            TileSize::F4 => &[
                [1.0 / 4.0, 0.0, 0.0],
                [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
                [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
                [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
                [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
                [0.0, 0.0, 1.0],
            ],
        }
    }
}

/// A Winograd convolution of one geometry, with its transformed filters.
#[derive(Debug)]
pub struct Winograd {
    shape: ConvShape,
    tile: TileSize,
    out: [usize; 2],
    /// Tiles per image: `[rows, cols]`.
    tiles: [usize; 2],
    /// Images per pass.
    images: usize,
    /// Tile positions per chunk (a multiple of the lanes).
    chunk: usize,
    /// `U[group][ξ]`: `[F/groups, cg]` each, packed.
    filters: Vec<Vec<PackedFilters>>,
    filters_per_group: usize,
    zeros: Vec<f32>,
    isa: Isa,
}

impl Winograd {
    /// The transformed filters of `weight` (`[filters, cg, 3, 3]`) for a 3×3 stride-1
    /// convolution. `None` if the geometry is not 3×3 stride 1 dilation 1, is inconsistent, or a
    /// size overflows.
    pub fn new(
        shape: ConvShape,
        filters: usize,
        weight: &[f32],
        tile: TileSize,
        isa: Isa,
    ) -> Option<Winograd> {
        let [c, _, _] = shape.input;
        if shape.kernel != [3, 3] || shape.stride != [1, 1] || shape.dilation != [1, 1] {
            return None;
        }
        if shape.groups == 0
            || !c.is_multiple_of(shape.groups)
            || !filters.is_multiple_of(shape.groups)
        {
            return None;
        }
        let (cg, fg) = (c / shape.groups, filters / shape.groups);
        if cg == 0 || fg == 0 || weight.len() != filters.checked_mul(cg)?.checked_mul(9)? {
            return None;
        }
        let out = shape.out()?;
        let m = tile.m();
        let tiles = [out[0].div_ceil(m), out[1].div_ceil(m)];
        let images = MIN_PASS_TILES.div_ceil(tiles[0].checked_mul(tiles[1])?);
        let a2 = tile.alpha() * tile.alpha();
        // One product reads V[ξ] (cg × chunk) once per block of filters and writes M[ξ]
        // (fg × chunk): both stay in L2 while U[ξ] streams through once per chunk.
        let chunk = (CHUNK_BYTES / cg.max(fg).checked_mul(4)?).clamp(4 * L, 16 * L) / L * L;
        let g = tile.g();
        let alpha = tile.alpha();
        let mut packed = Vec::with_capacity(shape.groups);
        for wg in weight.chunks_exact(fg * cg * 9) {
            // U[ξ = (a, b)][f][c] = Σ_ij G[a][i] w[f][c][i][j] G[b][j], in f64.
            let mut u = vec![vec![0.0f32; fg * cg]; a2];
            for (fc, w) in wg.chunks_exact(9).enumerate() {
                // On the stack: a vector here was a million allocations for ResNet-18 (a
                // tenth of its start-up in malloc and free).
                let mut gw = [[0.0f64; 3]; MAX_ALPHA];
                for (a, ga) in g.iter().enumerate() {
                    for j in 0..3 {
                        gw[a][j] = (0..3).map(|i| ga[i] * w[i * 3 + j] as f64).sum();
                    }
                }
                for a in 0..alpha {
                    for (b, gb) in g.iter().enumerate() {
                        let v: f64 = (0..3).map(|j| gw[a][j] * gb[j]).sum();
                        u[a * alpha + b][fc] = v as f32;
                    }
                }
            }
            packed.push(
                u.iter()
                    .map(|ux| PackedFilters::new(ux, fg, cg, isa))
                    .collect::<Vec<_>>(),
            );
        }
        let w = Winograd {
            shape,
            tile,
            out,
            tiles,
            images,
            chunk,
            filters: packed,
            filters_per_group: fg,
            zeros: vec![0.0; fg],
            isa,
        };
        w.scratch(images)?;
        Some(w)
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn tile(&self) -> TileSize {
        self.tile
    }

    /// Bytes of transformed filters held.
    pub fn bytes(&self) -> u64 {
        self.filters
            .iter()
            .flatten()
            .map(PackedFilters::bytes)
            .sum()
    }

    fn layout(&self, images: usize) -> Option<PhaseLayout> {
        let m = self.tile.m();
        let mut keep = Vec::with_capacity(m * m);
        for py in 0..m {
            for px in 0..m {
                keep.push([py, px]);
            }
        }
        PhaseLayout::new(
            self.shape.input,
            self.shape.padding,
            [m, m],
            &keep,
            [self.tiles[0] + 1, self.tiles[1] + 1],
            images,
        )
    }

    /// Scratch floats per slot for a chunk of `rows` records: the phase planes of a pass (and
    /// a vector of margin), and `V` plus `M` of one chunk of tiles. `None` on overflow.
    pub fn scratch(&self, rows: usize) -> Option<[usize; 2]> {
        let images = self.images.min(rows.max(1));
        let planes = self.layout(images)?.len().checked_add(MAX_LANES)?;
        let a2 = self.tile.alpha() * self.tile.alpha();
        let cg = self.shape.cg();
        let vm = a2
            .checked_mul(cg.checked_add(self.filters_per_group)?)?
            .checked_mul(self.chunk)?;
        Some([planes, vm])
    }

    /// `out = act(bias + conv(images) + residual)`: `images` `[n, c, h, w]`, `bias` one per
    /// filter, `residual` (when given) and `out` `[n, F, oh, ow]`, scratch slots as
    /// [`Winograd::scratch`] asks for `n`. The residual is added, and ReLU applied, as the output
    /// transform writes `out`. Panics if a size disagrees.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        images: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        slot_a: &mut [f32],
        slot_b: &mut [f32],
        out: &mut [f32],
    ) {
        let [c, h, w] = self.shape.input;
        let image_len = c * h * w;
        let f = self.filters_per_group * self.shape.groups;
        let record = f * self.out[0] * self.out[1];
        assert!(
            image_len > 0
                && images.len().is_multiple_of(image_len)
                && out.len() == images.len() / image_len * record
                && bias.len() == f
                && residual.is_none_or(|r| r.len() == out.len()),
            "winograd: {} input floats for {:?}, {} output floats, {} biases, residual {:?}",
            images.len(),
            self.shape.input,
            out.len(),
            bias.len(),
            residual.map(<[f32]>::len)
        );
        let step = self.images * record;
        for (pass, (batch, out)) in images
            .chunks(self.images * image_len)
            .zip(out.chunks_mut(step))
            .enumerate()
        {
            let n = batch.len() / image_len;
            let layout = self.layout(n).expect("checked in new");
            let planes = &mut slot_a[..layout.len() + MAX_LANES];
            layout.fill(batch, planes);
            let residual = residual.map(|r| &r[pass * step..pass * step + out.len()]);
            for g in 0..self.shape.groups {
                let epilogue = OutputEpilogue {
                    bias,
                    residual,
                    relu,
                };
                self.run_group(&layout, planes, n, g, epilogue, slot_b, out);
            }
        }
    }

    /// One group of one pass, on the transforms compiled for the filters' instruction set.
    #[allow(clippy::too_many_arguments)]
    fn run_group(
        &self,
        layout: &PhaseLayout,
        planes: &[f32],
        images: usize,
        group: usize,
        epilogue: OutputEpilogue,
        slot_b: &mut [f32],
        out: &mut [f32],
    ) {
        let pass = Pass {
            w: self,
            layout,
            planes,
            images,
            group,
            epilogue,
        };
        let (cg, fg, chunk) = (self.shape.cg(), self.filters_per_group, self.chunk);
        let a2 = self.tile.alpha() * self.tile.alpha();
        let (vbuf, rest) = slot_b.split_at_mut(a2 * cg * chunk);
        let m = &mut rest[..a2 * fg * chunk];
        // Chunk by chunk of tiles: the input transform into V, one product per ξ into M, the
        // output transform into `out`.
        for tiles in self.chunks(&pass) {
            let v = vbuf.chunks_exact_mut(cg * chunk).collect();
            self.step(
                &pass,
                Step::Input {
                    tiles: &tiles,
                    channels: 0..cg,
                    v,
                },
            );
            let v = &*vbuf;
            self.step(
                &pass,
                Step::Output {
                    tiles: &tiles,
                    v,
                    m: &mut *m,
                    out: &mut *out,
                },
            );
        }
    }

    /// One step of a pass, on the transforms compiled for the filters' instruction set.
    fn step(&self, pass: &Pass, step: Step) {
        assert!(
            self.isa.available(),
            "winograd: filters packed for {} on a CPU without it",
            self.isa.name()
        );
        match (self.tile, self.isa) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (`available`, asserted above).
            (TileSize::F2, Isa::Avx512) => unsafe { step_avx512::<F2, 4, 2>(pass, step) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (TileSize::F4, Isa::Avx512) => unsafe { step_avx512::<F4, 6, 4>(pass, step) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 and FMA (`available`, asserted above).
            (TileSize::F2, Isa::Avx2Fma) => unsafe { step_avx2::<F2, 4, 2>(pass, step) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            (TileSize::F4, Isa::Avx2Fma) => unsafe { step_avx2::<F4, 6, 4>(pass, step) },
            (TileSize::F2, _) => step_portable::<F2, 4, 2>(pass, step),
            (TileSize::F4, _) => step_portable::<F4, 6, 4>(pass, step),
        }
    }

    /// The chunks of `pass`'s tiles that hold a tile, as the steps read them.
    fn chunks(&self, pass: &Pass) -> impl Iterator<Item = ChunkTiles> {
        let compact = compact_grid(pass);
        let (chunk, lanes) = (self.chunk, self.lanes());
        (0..compact.len()).step_by(chunk).filter_map(move |qa| {
            ChunkTiles::new(&compact, qa, compact.len().min(qa + chunk), lanes)
        })
    }

    /// Floats per vector of the transforms on this instruction set.
    fn lanes(&self) -> usize {
        match self.isa {
            Isa::Avx512 => 16,
            Isa::Avx2Fma | Isa::Portable => 8,
        }
    }

    /// Whether `other` (another part of the same layer's filters) reads the same transformed
    /// input, chunk for chunk, so that [`Winograd::run_shared`] may transform it once for both.
    pub fn shares_input_with(&self, other: &Winograd) -> bool {
        self.shape == other.shape
            && self.shape.groups == 1
            && self.tile == other.tile
            && self.isa == other.isa
            && self.images == other.images
            && self.chunk == other.chunk
    }

    /// [`Winograd::run`] for the parts of one layer split by filters, on a team, with the input
    /// transformed once: the team's threads fill the phase planes together (by planes), then
    /// for each chunk of tiles transform the input together (by channels) and run each part's
    /// products and output transform (by part). Each part used to fill and transform the whole
    /// input for itself, which at one image costs about what a part's products do.
    ///
    /// `parts[k]` computes its filters into `outs[k]` (`[n, its filters, oh, ow]`) with
    /// `biases[k]` and `residuals[k]`; `slots[k]` is part k's scratch as
    /// [`Winograd::scratch`] asks: part 0's holds the planes and `V`, every part's its `M`.
    /// Panics if the parts do not all [`Winograd::shares_input_with`] the first, or a size
    /// disagrees.
    #[allow(clippy::too_many_arguments)]
    pub fn run_shared(
        team: &Team,
        parts: &[&Winograd],
        images: &[f32],
        biases: &[&[f32]],
        residuals: &[Option<&[f32]>],
        relu: bool,
        mut slots: Vec<(&mut [f32], &mut [f32])>,
        mut outs: Vec<&mut [f32]>,
    ) {
        let w0 = parts[0];
        let k = parts.len();
        assert!(
            parts.iter().all(|p| w0.shares_input_with(p))
                && biases.len() == k
                && residuals.len() == k
                && slots.len() == k
                && outs.len() == k,
            "winograd: {k} parts that do not share their input, or sizes for others"
        );
        let [c, h, w] = w0.shape.input;
        let image_len = c * h * w;
        let map = w0.out[0] * w0.out[1];
        assert!(image_len > 0 && images.len().is_multiple_of(image_len));
        let n_all = images.len() / image_len;
        for (p, part) in parts.iter().enumerate() {
            let fg = part.filters_per_group;
            assert!(
                outs[p].len() == n_all * fg * map
                    && biases[p].len() == fg
                    && residuals[p].is_none_or(|r| r.len() == outs[p].len()),
                "winograd: part {p}: {} output floats for {n_all} images of {fg} filters",
                outs[p].len()
            );
        }
        let (cg, chunk) = (w0.shape.cg(), w0.chunk);
        let a2 = w0.tile.alpha() * w0.tile.alpha();
        let (slot_a, slot_b0) = slots.remove(0);
        let (vbuf, m0) = slot_b0.split_at_mut(a2 * cg * chunk);
        let mut ms: Vec<&mut [f32]> = std::iter::once(m0)
            .chain(slots.into_iter().map(|(_, b)| &mut b[a2 * cg * chunk..]))
            .collect();
        for (pass_index, batch) in images.chunks(w0.images * image_len).enumerate() {
            let n = batch.len() / image_len;
            let layout = w0.layout(n).expect("checked in new");
            let planes = &mut slot_a[..layout.len() + MAX_LANES];
            // The planes together, by whole planes; the margin past them here.
            let (body, margin) = planes.split_at_mut(layout.len());
            margin.fill(0.0);
            team.run(layout.pieces(body, team.threads()), |(buf, range)| {
                layout.fill_planes(batch, buf, range)
            });
            let planes = &*planes;
            let pass = |p: usize| {
                let first = pass_index * w0.images;
                let fg = parts[p].filters_per_group;
                Pass {
                    w: parts[p],
                    layout: &layout,
                    planes,
                    images: n,
                    group: 0,
                    epilogue: OutputEpilogue {
                        bias: biases[p],
                        residual: residuals[p]
                            .map(|r| &r[first * fg * map..(first + n) * fg * map]),
                        relu,
                    },
                }
            };
            for tiles in w0.chunks(&pass(0)) {
                // The input transform, by channels: piece j's rows of every V[ξ].
                let threads = team.threads().clamp(1, cg);
                let mut pieces: Vec<(std::ops::Range<usize>, Vec<&mut [f32]>)> = (0..threads)
                    .map(|j| {
                        (
                            cg * j / threads..cg * (j + 1) / threads,
                            Vec::with_capacity(a2),
                        )
                    })
                    .collect();
                for v_xi in vbuf.chunks_exact_mut(cg * chunk) {
                    let mut rest = v_xi;
                    for (channels, rows) in pieces.iter_mut() {
                        let (mine, more) =
                            std::mem::take(&mut rest).split_at_mut(channels.len() * chunk);
                        rows.push(mine);
                        rest = more;
                    }
                }
                team.run(pieces, |(channels, v)| {
                    w0.step(
                        &pass(0),
                        Step::Input {
                            tiles: &tiles,
                            channels,
                            v,
                        },
                    )
                });
                let v = &*vbuf;
                let work: Vec<_> = ms
                    .iter_mut()
                    .zip(outs.iter_mut())
                    .enumerate()
                    .map(|(p, (m, out))| {
                        let fg = parts[p].filters_per_group;
                        let first = pass_index * w0.images;
                        (
                            p,
                            &mut **m,
                            &mut out[first * fg * map..(first + n) * fg * map],
                        )
                    })
                    .collect();
                team.run(work, |(p, m, out)| {
                    parts[p].step(
                        &pass(p),
                        Step::Output {
                            tiles: &tiles,
                            v,
                            m,
                            out,
                        },
                    )
                });
            }
        }
    }
}

/// One step of a pass ([`Winograd::step`]).
enum Step<'s> {
    /// The input transform of one chunk's tiles for `channels`, into their rows `v[ξ]` of V.
    Input {
        tiles: &'s ChunkTiles,
        channels: std::ops::Range<usize>,
        v: Vec<&'s mut [f32]>,
    },
    /// One chunk's products (from `v`, every channel's V, into `m`) and output transform.
    Output {
        tiles: &'s ChunkTiles,
        v: &'s [f32],
        m: &'s mut [f32],
        out: &'s mut [f32],
    },
}

/// What the output transform does to each value before writing it: `act(bias + y + residual)`.
#[derive(Clone, Copy)]
struct OutputEpilogue<'a> {
    /// One per filter.
    bias: &'a [f32],
    /// Laid out as the pass's `out`: a residual connection's other value, added as it is
    /// written, so that no separate pass adds it.
    residual: Option<&'a [f32]>,
    relu: bool,
}

/// What one group of one pass works on.
struct Pass<'a> {
    w: &'a Winograd,
    layout: &'a PhaseLayout,
    planes: &'a [f32],
    images: usize,
    group: usize,
    epilogue: OutputEpilogue<'a>,
}

/// A vector of tiles on one instruction set: the few operations the transforms need.
///
/// The AVX-512 and AVX2 types exist only inside [`pass_avx512`] and [`pass_avx2`], which run
/// after the CPU was checked for their instruction sets; their `unsafe` blocks rely on that.
/// Loads and stores take slices and check their length.
trait Lanes: Copy {
    /// Floats per vector.
    const N: usize;
    fn load(s: &[f32]) -> Self;
    fn store(self, d: &mut [f32]);
    /// Lanes `lane..lane + d.len()` into `d` (`d` shorter than a vector).
    fn store_part(self, lane: usize, d: &mut [f32]);
    /// `s` into lanes `lane..lane + s.len()` (`s` shorter than a vector): the inverse of
    /// [`Lanes::store_part`]. The other lanes hold anything; callers use these alone. Here
    /// through a stack copy; the x86 types load only `s` under a mask.
    #[inline(always)]
    fn load_part(lane: usize, s: &[f32]) -> Self {
        let mut v = [0.0f32; MAX_LANES];
        v[lane..lane + s.len()].copy_from_slice(s);
        Self::load(&v)
    }
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    /// `c·x + y`.
    fn axpy(c: f32, x: Self, y: Self) -> Self;
    fn splat(c: f32) -> Self;
    fn max0(self) -> Self;
    /// `[a0 b0 a1 b1 …]` over two vectors.
    fn interleave2(a: Self, b: Self) -> [Self; 2];
    /// The vectors whose concatenation holds `y[j][q]` at `q·M + j`.
    #[inline(always)]
    fn interleave<const M: usize>(y: [Self; M]) -> [Self; M] {
        match M {
            2 => {
                let r = Self::interleave2(y[0], y[1]);
                let mut o = y;
                o[..2].copy_from_slice(&r);
                o
            }
            4 => {
                let [p0, p1] = Self::interleave2(y[0], y[2]);
                let [q0, q1] = Self::interleave2(y[1], y[3]);
                let [z0, z1] = Self::interleave2(p0, q0);
                let [z2, z3] = Self::interleave2(p1, q1);
                let mut o = y;
                o[..4].copy_from_slice(&[z0, z1, z2, z3]);
                o
            }
            _ => unreachable!("tiles of {M}"),
        }
    }
}

/// Eight lanes in plain Rust.
#[derive(Clone, Copy)]
struct Portable([f32; 8]);

impl Lanes for Portable {
    const N: usize = 8;
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        Portable(s[..8].try_into().expect("eight floats"))
    }
    #[inline(always)]
    fn store(self, d: &mut [f32]) {
        d[..8].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn store_part(self, lane: usize, d: &mut [f32]) {
        let n = d.len();
        d.copy_from_slice(&self.0[lane..lane + n]);
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i] + o.0[i]))
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i] - o.0[i]))
    }
    #[inline(always)]
    fn axpy(c: f32, x: Self, y: Self) -> Self {
        Portable(std::array::from_fn(|i| c * x.0[i] + y.0[i]))
    }
    #[inline(always)]
    fn splat(c: f32) -> Self {
        Portable([c; 8])
    }
    #[inline(always)]
    fn max0(self) -> Self {
        Portable(self.0.map(|v| v.max(0.0)))
    }
    #[inline(always)]
    fn interleave2(a: Self, b: Self) -> [Self; 2] {
        let z = |h: usize| {
            Portable(std::array::from_fn(|i| {
                if i % 2 == 0 {
                    a.0[h + i / 2]
                } else {
                    b.0[h + i / 2]
                }
            }))
        };
        [z(0), z(4)]
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    /// Sixteen lanes of AVX-512.
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    // SAFETY (every block below): values of this type are made only inside `pass_avx512`, which
    // runs after the CPU was found to have AVX-512F, AVX2 and FMA; loads and stores check their
    // slice holds the 16 floats they touch.
    impl Lanes for Avx512 {
        const N: usize = 16;
        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 16);
            Avx512(unsafe { _mm512_loadu_ps(s.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, d: &mut [f32]) {
            assert!(d.len() >= 16);
            unsafe { _mm512_storeu_ps(d.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn store_part(self, lane: usize, d: &mut [f32]) {
            let n = d.len();
            assert!(lane + n <= 16);
            unsafe {
                let moved = _mm512_maskz_compress_ps((((1u32 << n) - 1) << lane) as u16, self.0);
                _mm512_mask_storeu_ps(d.as_mut_ptr(), ((1u32 << n) - 1) as u16, moved);
            }
        }
        #[inline(always)]
        fn load_part(lane: usize, s: &[f32]) -> Self {
            let n = s.len();
            assert!(lane + n <= 16);
            // The expand-load reads exactly n floats, into the n lanes from `lane`.
            let keep = (((1u32 << n) - 1) << lane) as u16;
            Avx512(unsafe { _mm512_maskz_expandloadu_ps(keep, s.as_ptr()) })
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_add_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Avx512(unsafe { _mm512_sub_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn axpy(c: f32, x: Self, y: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(_mm512_set1_ps(c), x.0, y.0) })
        }
        #[inline(always)]
        fn splat(c: f32) -> Self {
            Avx512(unsafe { _mm512_set1_ps(c) })
        }
        #[inline(always)]
        fn max0(self) -> Self {
            Avx512(unsafe { _mm512_max_ps(self.0, _mm512_setzero_ps()) })
        }
        #[inline(always)]
        fn interleave2(a: Self, b: Self) -> [Self; 2] {
            unsafe {
                let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
                let hi =
                    _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
                [
                    Avx512(_mm512_permutex2var_ps(a.0, lo, b.0)),
                    Avx512(_mm512_permutex2var_ps(a.0, hi, b.0)),
                ]
            }
        }
    }

    /// Eight lanes of AVX2.
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    // SAFETY (every block below): values of this type are made only inside `pass_avx2`, which
    // runs after the CPU was found to have AVX2 and FMA; loads and stores check their slice holds
    // the 8 floats they touch.
    impl Lanes for Avx2 {
        const N: usize = 8;
        #[inline(always)]
        fn load(s: &[f32]) -> Self {
            assert!(s.len() >= 8);
            Avx2(unsafe { _mm256_loadu_ps(s.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, d: &mut [f32]) {
            assert!(d.len() >= 8);
            unsafe { _mm256_storeu_ps(d.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn store_part(self, lane: usize, d: &mut [f32]) {
            let n = d.len();
            assert!(lane + n <= 8);
            unsafe {
                let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let idx = _mm256_add_epi32(lanes, _mm256_set1_epi32(lane as i32));
                let moved = _mm256_permutevar8x32_ps(self.0, idx);
                let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
                _mm256_maskstore_ps(d.as_mut_ptr(), mask, moved);
            }
        }
        #[inline(always)]
        fn load_part(lane: usize, s: &[f32]) -> Self {
            let n = s.len();
            assert!(lane + n <= 8);
            unsafe {
                // The masked load reads exactly the first n lanes' floats; the permutation
                // moves lane k to lane k + `lane` (indices wrap mod 8: the lanes below `lane`
                // get the wrapped ones, which no caller uses).
                let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
                let low = _mm256_maskload_ps(s.as_ptr(), mask);
                let idx = _mm256_sub_epi32(lanes, _mm256_set1_epi32(lane as i32));
                Avx2(_mm256_permutevar8x32_ps(low, idx))
            }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_add_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_sub_ps(self.0, o.0) })
        }
        #[inline(always)]
        fn axpy(c: f32, x: Self, y: Self) -> Self {
            Avx2(unsafe { _mm256_fmadd_ps(_mm256_set1_ps(c), x.0, y.0) })
        }
        #[inline(always)]
        fn splat(c: f32) -> Self {
            Avx2(unsafe { _mm256_set1_ps(c) })
        }
        #[inline(always)]
        fn max0(self) -> Self {
            Avx2(unsafe { _mm256_max_ps(self.0, _mm256_setzero_ps()) })
        }
        #[inline(always)]
        fn interleave2(a: Self, b: Self) -> [Self; 2] {
            unsafe {
                let lo = _mm256_unpacklo_ps(a.0, b.0);
                let hi = _mm256_unpackhi_ps(a.0, b.0);
                [
                    Avx2(_mm256_permute2f128_ps(lo, hi, 0x20)),
                    Avx2(_mm256_permute2f128_ps(lo, hi, 0x31)),
                ]
            }
        }
    }
}

/// The 1-D transforms of one tile size: `A = α` inputs, `M = m` outputs.
trait Transform<const A: usize, const M: usize> {
    /// `Bᵀ d`.
    fn input<S: Lanes>(d: &[S; A]) -> [S; A];
    /// `Aᵀ x`.
    fn output<S: Lanes>(x: &[S; A]) -> [S; M];
}

struct F2;
struct F4;

impl Transform<4, 2> for F2 {
    #[inline(always)]
    fn input<S: Lanes>(d: &[S; 4]) -> [S; 4] {
        [
            d[0].sub(d[2]),
            d[1].add(d[2]),
            d[2].sub(d[1]),
            d[1].sub(d[3]),
        ]
    }
    #[inline(always)]
    fn output<S: Lanes>(x: &[S; 4]) -> [S; 2] {
        [x[0].add(x[1]).add(x[2]), x[1].sub(x[2]).sub(x[3])]
    }
}

impl Transform<6, 4> for F4 {
    #[inline(always)]
    fn input<S: Lanes>(d: &[S; 6]) -> [S; 6] {
        let d1_d3 = d[1].sub(d[3]);
        let d4_d2 = d[4].sub(d[2]);
        [
            S::axpy(4.0, d[0], S::axpy(-5.0, d[2], d[4])),
            S::axpy(-4.0, d[1].add(d[2]), d[3].add(d[4])),
            S::axpy(4.0, d[1].sub(d[2]), d[4].sub(d[3])),
            S::axpy(-2.0, d1_d3, d4_d2),
            S::axpy(2.0, d1_d3, d4_d2),
            S::axpy(4.0, d[1], S::axpy(-5.0, d[3], d[5])),
        ]
    }
    #[inline(always)]
    fn output<S: Lanes>(x: &[S; 6]) -> [S; 4] {
        let a = x[1].add(x[2]);
        let b = x[1].sub(x[2]);
        let c = x[3].add(x[4]);
        let d = x[3].sub(x[4]);
        [
            x[0].add(a).add(c),
            S::axpy(2.0, d, b),
            S::axpy(4.0, c, a),
            S::axpy(8.0, d, b).add(x[5]),
        ]
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn step_avx512<T: Transform<A, M>, const A: usize, const M: usize>(p: &Pass, step: Step) {
    step_body::<x86::Avx512, T, A, M>(p, step)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn step_avx2<T: Transform<A, M>, const A: usize, const M: usize>(p: &Pass, step: Step) {
    step_body::<x86::Avx2, T, A, M>(p, step)
}

fn step_portable<T: Transform<A, M>, const A: usize, const M: usize>(p: &Pass, step: Step) {
    step_body::<Portable, T, A, M>(p, step)
}

/// A step on the lanes `S`. Safe code throughout (slices checked): only the product is `unsafe`,
/// inside [`conv_block::run`]. Everything the transforms call is inlined into the instruction
/// set's `step_*` function, or the loads run as calls (see `input_transform`).
#[inline(always)]
fn step_body<S: Lanes, T: Transform<A, M>, const A: usize, const M: usize>(p: &Pass, step: Step) {
    match step {
        Step::Input { tiles, channels, v } => input_transform::<S, T, A, M>(p, tiles, channels, v),
        Step::Output { tiles, v, m, out } => products_and_output::<S, T, A, M>(p, tiles, v, m, out),
    }
}

/// The tile grid of a pass: tile (image, ty, tx) is read at grid position
/// (image·rows + ty)·cols + tx of the phase planes, whose rows and columns past the tiles are
/// padding; the grid ends at the last image's last tile. The products and the output transform
/// run on the tiles alone, numbered (image·th + ty)·tw + tx: the grid maps one numbering to the
/// other.
fn compact_grid(p: &Pass) -> Grid {
    let [th, tw] = p.w.tiles;
    let [rows, cols] = p.layout.plane();
    Grid::new(GridShape {
        len: ((p.images - 1) * rows + th - 1) * cols + tw,
        width: cols,
        cols: tw,
        rows,
        valid_rows: th,
        row_stride: tw,
        image_stride: th * tw,
    })
}

/// The tiles of one chunk of grid positions `qa..qb`, read `lanes` positions a vector.
struct ChunkTiles {
    /// Positions per input vector, the transforms' lanes.
    lanes: usize,
    qa: usize,
    qb: usize,
    /// Where each input vector's tiles go among the chunk's tiles `t0..t0 + count`: vector `v`
    /// has the runs `runs[starts[v]..starts[v + 1]]`.
    runs: Vec<Segment>,
    starts: Vec<usize>,
    t0: usize,
    count: usize,
}

impl ChunkTiles {
    /// `None` when no tile falls in the chunk.
    fn new(compact: &Grid, qa: usize, qb: usize, lanes: usize) -> Option<ChunkTiles> {
        let mut runs = Vec::with_capacity((qb - qa).div_ceil(lanes) * 2);
        let mut starts = Vec::with_capacity((qb - qa).div_ceil(lanes) + 1);
        for q0 in (qa..qb).step_by(lanes) {
            starts.push(runs.len());
            compact.append_runs(q0, lanes.min(qb - q0), &mut runs);
        }
        starts.push(runs.len());
        let (first, last) = (runs.first()?, runs.last()?);
        let (t0, count) = (first.dest, last.dest + last.count - first.dest);
        Some(ChunkTiles {
            lanes,
            qa,
            qb,
            runs,
            starts,
            t0,
            count,
        })
    }
}

/// The input transform of one chunk's tiles for the group's channels `channels`: `v[ξ]` holds
/// those channels' rows of `V[ξ]`, `chunk` floats each. Lanes past the chunk's tiles to the
/// next 16 are zeroed: the product reads whole 16-lane vectors.
#[inline(always)]
fn input_transform<S: Lanes, T: Transform<A, M>, const A: usize, const M: usize>(
    p: &Pass,
    tiles: &ChunkTiles,
    channels: std::ops::Range<usize>,
    mut v: Vec<&mut [f32]>,
) {
    let (cg, chunk, n) = (p.w.shape.cg(), p.w.chunk, S::N);
    let (t0, count) = (tiles.t0, tiles.count);
    assert!(
        tiles.lanes == n && v.len() == A * A && v.iter().all(|r| r.len() == channels.len() * chunk),
        "winograd: V rows for {} channels, tiles for {} lanes",
        channels.len(),
        tiles.lanes
    );
    // Element (k, l) of tile (0, 0): padded row k, column l of image 0.
    let mut at = [[0usize; A]; A];
    for (k, row) in at.iter_mut().enumerate() {
        for (l, o) in row.iter_mut().enumerate() {
            *o = p.layout.offset(k, l).expect("every phase is kept");
        }
    }
    // Every element is written before it is read, each vector of tiles: made once here, since
    // made in the loop it was zeroed there, a `memset` call per vector.
    let mut t = [[S::splat(0.0); A]; A];
    for (c, ci) in channels.enumerate() {
        let base = (p.group * cg + ci) * p.layout.channel_stride();
        for (vi, q0) in (tiles.qa..tiles.qb).step_by(n).enumerate() {
            for l in 0..A {
                // Loops, not `array::from_fn`: its closure, once not inlined, cannot inline
                // the instruction set's loads (12% of ResNet-18's samples went to a called
                // `_mm512_loadu_ps`).
                let mut d = [S::splat(0.0); A];
                for (k, dk) in d.iter_mut().enumerate() {
                    *dk = S::load(&p.planes[base + at[k][l] + q0..]);
                }
                for (i, x) in T::input(&d).into_iter().enumerate() {
                    t[i][l] = x;
                }
            }
            let runs = &tiles.runs[tiles.starts[vi]..tiles.starts[vi + 1]];
            for (i, ti) in t.iter().enumerate() {
                for (j, x) in T::input(ti).into_iter().enumerate() {
                    let row = &mut v[i * A + j][c * chunk..][..chunk];
                    for r in runs {
                        let dst = &mut row[r.dest - t0..];
                        if r.count == n {
                            x.store(dst);
                        } else {
                            x.store_part(r.lane, &mut dst[..r.count]);
                        }
                    }
                }
            }
        }
        for row in v.iter_mut() {
            short::fill_zero(&mut row[c * chunk..][count..count.next_multiple_of(L)]);
        }
    }
}

/// One chunk's products `M[ξ] = U[ξ] · V[ξ]` (`vbuf`: every channel's `V`, `mbuf`: `M`) and
/// the output transform, written into `out` with the epilogue.
#[inline(always)]
fn products_and_output<S: Lanes, T: Transform<A, M>, const A: usize, const M: usize>(
    p: &Pass,
    tiles: &ChunkTiles,
    vbuf: &[f32],
    mbuf: &mut [f32],
    out: &mut [f32],
) {
    let w = p.w;
    let [oh, ow] = w.out;
    let [th, tw] = w.tiles;
    let (cg, fg, chunk, n) = (w.shape.cg(), w.filters_per_group, w.chunk, S::N);
    let f = fg * w.shape.groups;
    let record = f * oh * ow;
    let (t0, count) = (tiles.t0, tiles.count);
    assert_eq!(
        tiles.lanes, n,
        "winograd: tiles for another instruction set's lanes"
    );
    let all_tiles = p.images * th * tw;
    let grids: [Grid; M] = std::array::from_fn(|i| {
        Grid::new(GridShape {
            len: all_tiles * M,
            width: tw * M,
            cols: ow,
            rows: th,
            valid_rows: oh.saturating_sub(i).div_ceil(M),
            row_stride: M * ow,
            image_stride: record,
        })
    });
    let taps = Taps::new(cg, chunk, vec![0]);
    let mut segs: [Vec<Segment>; M] = std::array::from_fn(|_| Vec::with_capacity(8 * L));
    let mut starts = [[0usize; conv_block::MAX_NV + 1]; M];
    // The products: M[ξ] = U[ξ] · V[ξ].
    for (xi, u) in w.filters[p.group].iter().enumerate() {
        conv_block::run(
            u,
            &taps,
            &vbuf[xi * cg * chunk..(xi + 1) * cg * chunk],
            &Grid::contiguous(count),
            Epilogue {
                bias: &w.zeros,
                relu: false,
            },
            &mut mbuf[xi * fg * chunk..(xi + 1) * fg * chunk],
            chunk,
        );
    }
    // Output transform, written in place.
    for q0 in (0..count).step_by(n) {
        for (i, grid) in grids.iter().enumerate() {
            // Cut at the chunk's last tile: lanes past it hold no product.
            grid.truncated((t0 + count) * M).segments(
                (t0 + q0) * M,
                M,
                n,
                &mut segs[i],
                &mut starts[i],
            );
        }
        // As `t` in the input transform: every element written before it is read.
        let mut s = [[S::splat(0.0); A]; M];
        for fi in 0..fg {
            let filter = p.group * fg + fi;
            for b in 0..A {
                let mut x = [S::splat(0.0); A];
                for (a, xa) in x.iter_mut().enumerate() {
                    *xa = S::load(&mbuf[((a * A + b) * fg + fi) * chunk + q0..]);
                }
                for (i, v) in T::output(&x).into_iter().enumerate() {
                    s[i][b] = v;
                }
            }
            let e = &p.epilogue;
            let bias = S::splat(e.bias[filter]);
            for (i, si) in s.iter().enumerate() {
                let mut y = T::output(si);
                for v in y.iter_mut() {
                    *v = v.add(bias);
                }
                let z = S::interleave(y);
                let base = filter * oh * ow + i * ow;
                let (segs, starts) = (&segs[i], &starts[i]);
                for (v, &zv) in z.iter().enumerate() {
                    for sg in &segs[starts[v]..starts[v + 1]] {
                        let at = base + sg.dest;
                        let whole = sg.count == n;
                        let mut x = zv;
                        if let Some(r) = e.residual {
                            // ReLU comes after the sum: `relu(conv + residual)`.
                            x = x.add(if whole {
                                S::load(&r[at..])
                            } else {
                                S::load_part(sg.lane, &r[at..at + sg.count])
                            });
                        }
                        if e.relu {
                            x = x.max0();
                        }
                        let dst = &mut out[at..];
                        if whole {
                            x.store(dst);
                        } else {
                            x.store_part(sg.lane, &mut dst[..sg.count]);
                        }
                    }
                }
            }
        }
    }
}
