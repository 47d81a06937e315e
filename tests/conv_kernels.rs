//! Every convolution kernel (direct, im2col, Winograd F(2×2,3×3) and F(4×4,3×3)) on every
//! instruction set (AVX-512, AVX2+FMA, portable), called directly with an explicit `Isa` so one
//! process tests them all, against conv2d's reference kernel (plain loops, f64 sums; itself
//! checked against numpy in tests/ops_reference.rs) on odd shapes: 1×1, 3×3, 5×5, 7×7 stride 2
//! padding 3, stride 2, dilation, groups, widths that are not a multiple of any vector length,
//! channel and filter counts that are not a multiple of any block, batch 1 and 3.
//!
//! Tolerance, per output: the kernels sum `K = cg·kh·kw` products and a bias in f32, so the
//! standard bound for recursive summation (Higham, *Accuracy and Stability of Numerical
//! Algorithms*, §3.1) gives `|fast - exact| ≤ γ(K+1) · S` with `S = |b| + Σ|w·x|` (which the
//! reference kernel computes exactly when given `|w|`, `|x|` and `|b|`) and `γ(n) ≈ n·u`,
//! `u = 2⁻²⁴`; the reference's own rounding to f32 adds `u·|exact|`. Direct and im2col must meet
//! `(K + 2)·u·S`, a bound, not a measured figure. Winograd's transforms add rounding of their
//! own, amplified by the transform matrices' entries (up to 8 in F(4×4)'s `Aᵀ`, 5 in its `Bᵀ`):
//! F(2×2) is held to the same bound, F(4×4) to 2.5 times it, over twice the worst measured
//! (`winograd_error_against_f64` prints the figures: about 0.1 of the bound for direct, im2col
//! and F(2×2), 1.1 for F(4×4)).

use std::path::Path;

use subpass::config::PipelineConfig;
use subpass::kernels::conv_block::PackedFilters;
use subpass::kernels::conv_direct::{ConvShape, DirectConv};
use subpass::kernels::conv_lanes::LaneFilters;
use subpass::kernels::im2col::Im2col;
use subpass::kernels::winograd::{TileSize, Winograd};
use subpass::kernels::Isa;
use subpass::ops::{Chunk, KernelKind, Scratch, Tensor};

/// `u`, the unit roundoff of f32.
const U: f64 = 1.0 / (1u64 << 24) as f64;

#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    input: [usize; 3],
    filters: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    relu: bool,
}

impl Case {
    fn new(input: [usize; 3], filters: usize, kernel: usize) -> Case {
        Case {
            batch: 1,
            input,
            filters,
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            relu: false,
        }
    }
    fn stride(mut self, s: usize) -> Case {
        self.stride = [s, s];
        self
    }
    fn pad(mut self, p: usize) -> Case {
        self.padding = [p, p];
        self
    }
    fn batch(mut self, n: usize) -> Case {
        self.batch = n;
        self
    }
    fn relu(mut self) -> Case {
        self.relu = true;
        self
    }

    fn shape(&self) -> ConvShape {
        ConvShape {
            input: self.input,
            groups: self.groups,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        }
    }

    fn cg(&self) -> usize {
        self.input[0] / self.groups
    }

    fn taps(&self) -> usize {
        self.cg() * self.kernel[0] * self.kernel[1]
    }

    fn out(&self) -> [usize; 2] {
        self.shape().out().expect("a valid case")
    }

    fn yaml(&self, activation: &str, algorithm: &str) -> String {
        format!(
            "input: {{shape: {:?}}}\nlayers:\n  - {{name: l, op: conv2d, filters: {}, kernel: {:?}, stride: {:?}, padding: {:?}, dilation: {:?}, groups: {}, activation: {activation}, algorithm: {algorithm}}}\n",
            self.input,
            self.filters,
            self.kernel,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
    }

    /// The reference kernel's output over `x` with weights `w` and bias `b`.
    fn reference(&self, x: &[f32], w: &[f32], b: &[f32], relu: bool) -> Vec<f32> {
        let activation = if relu { "relu" } else { "none" };
        self.through_op(KernelKind::Reference, activation, "auto", x, w, b)
    }

    /// The conv2d op, as a pipeline file configures it, built with `kind` and run over `x`.
    fn through_op(
        &self,
        kind: KernelKind,
        activation: &str,
        algorithm: &str,
        x: &[f32],
        w: &[f32],
        b: &[f32],
    ) -> Vec<f32> {
        let yaml = self.yaml(activation, algorithm);
        let config =
            PipelineConfig::parse(&yaml, Path::new(".")).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let op = config.layers[0].op.clone();
        let input = self.input.to_vec();
        let out = op.output_shape(&[&input]).unwrap();
        let layer = op.build(kind, &[&input], &out, vec![w.to_vec(), b.to_vec()]);
        let mut shape = vec![self.batch];
        shape.extend_from_slice(&self.input);
        let x = Tensor::from_shape_vec(shape, x.to_vec()).unwrap();
        let y = layer.forward(&[&x], &Chunk::records(self.batch), &mut Scratch::default());
        y.iter().copied().collect()
    }
}

/// Deterministic values in [-1, 1) with no pattern a kernel could get right by accident.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    /// The exact result, rounded to f32 (with the case's activation).
    want: Vec<f32>,
    /// `S = |b| + Σ|w·x|` per output.
    scale: Vec<f32>,
}

fn data(case: &Case, seed: u64) -> Data {
    let [c, h, w] = case.input;
    let x = values(case.batch * c * h * w, seed);
    let wt = values(case.filters * case.taps(), seed + 1);
    let b = values(case.filters, seed + 2);
    let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
    Data {
        want: case.reference(&x, &wt, &b, case.relu),
        scale: case.reference(&abs(&x), &abs(&wt), &abs(&b), false),
        x,
        w: wt,
        b,
    }
}

/// The worst `|got - want| / ((K + 2)·u·S)` over all outputs: ≤ 1 is within the bound.
fn bound_ratio(case: &Case, d: &Data, got: &[f32]) -> f64 {
    assert_eq!(got.len(), d.want.len(), "{case:?}: output size");
    let k = case.taps() as f64;
    got.iter()
        .zip(&d.want)
        .zip(&d.scale)
        .map(|((g, w), s)| {
            assert!(g.is_finite(), "{case:?}: non-finite output {g}");
            (*g as f64 - *w as f64).abs()
                / ((k + 2.0) * U * (*s as f64).max(f32::MIN_POSITIVE as f64))
        })
        .fold(0.0, f64::max)
}

fn packed(case: &Case, w: &[f32], isa: Isa) -> Vec<PackedFilters> {
    let fg = case.filters / case.groups;
    w.chunks_exact(fg * case.taps())
        .map(|wg| PackedFilters::new(wg, fg, case.taps(), isa))
        .collect()
}

fn run_direct(case: &Case, d: &Data, isa: Isa) -> Vec<f32> {
    let direct = DirectConv::new(case.shape()).expect("direct geometry");
    assert_eq!(direct.out(), case.out());
    run_direct_conv(case, d, isa, &direct)
}

/// `direct` (plain or pooled) over every image of the case, one `run` call per image.
fn run_direct_conv(case: &Case, d: &Data, isa: Isa, direct: &DirectConv) -> Vec<f32> {
    let filters = packed(case, &d.w, isa);
    per_image(case, d, direct, |image, buf, rec| {
        direct.run(image, &filters, &d.b, case.relu, buf, rec)
    })
}

/// `run(image, scratch, output)` for every image of the case, into poisoned output and
/// scratch: the kernel must write every output and read no stale value.
fn per_image(
    case: &Case,
    d: &Data,
    direct: &DirectConv,
    run: impl Fn(&[f32], &mut [f32], &mut [f32]),
) -> Vec<f32> {
    let [oh, ow] = direct.out();
    let [c, h, w] = case.input;
    let record = case.filters * oh * ow;
    let mut out = vec![f32::NAN; case.batch * record];
    let mut buf = vec![f32::NAN; direct.buffer_len()];
    for (image, rec) in
        d.x.chunks_exact(c * h * w)
            .zip(out.chunks_exact_mut(record))
    {
        run(image, &mut buf, rec);
    }
    out
}

fn run_gemm(case: &Case, d: &Data, isa: Isa) -> Vec<f32> {
    let im2col = Im2col::new(case.shape()).expect("im2col geometry");
    let filters = packed(case, &d.w, isa);
    let [oh, ow] = case.out();
    let mut out = vec![f32::NAN; case.batch * case.filters * oh * ow];
    let need = im2col.buffer_len(im2col.images().min(case.batch)).unwrap();
    let mut buf = vec![f32::NAN; need];
    im2col.run(&d.x, &filters, &d.b, case.relu, &mut buf, &mut out);
    out
}

fn run_winograd(case: &Case, d: &Data, tile: TileSize, isa: Isa) -> Vec<f32> {
    let wino = Winograd::new(case.shape(), case.filters, &d.w, tile, isa).expect("3x3 stride 1");
    let [oh, ow] = case.out();
    let mut out = vec![f32::NAN; case.batch * case.filters * oh * ow];
    let [a, b] = wino.scratch(case.batch).unwrap();
    let (mut sa, mut sb) = (vec![f32::NAN; a], vec![f32::NAN; b]);
    wino.run(&d.x, &d.b, None, case.relu, &mut sa, &mut sb, &mut out);
    out
}

/// The instruction sets to test here: every one this CPU runs; a loud line for the others.
fn isas() -> Vec<Isa> {
    Isa::ALL
        .into_iter()
        .filter(|isa| {
            let ok = isa.available();
            if !ok {
                eprintln!(
                    "\n*** SKIPPED: this CPU lacks {}: its convolution kernels are NOT tested here ***\n",
                    isa.name()
                );
            }
            ok
        })
        .collect()
}

/// The odd shapes every algorithm that fits them must get right.
fn general_cases() -> Vec<Case> {
    vec![
        Case::new([5, 7, 13], 17, 1),
        Case::new([5, 7, 13], 17, 1).stride(2).batch(3),
        Case::new([3, 9, 7], 5, 3).pad(1),
        Case::new([3, 9, 7], 5, 3).pad(1).relu().batch(3),
        Case::new([17, 13, 17], 3, 3).pad(1),
        Case::new([3, 23, 17], 17, 7).stride(2).pad(3).relu(),
        Case::new([5, 17, 13], 17, 3).stride(2).pad(1).batch(3),
        Case::new([5, 16, 16], 6, 3).stride(2),
        Case::new([1, 28, 28], 16, 5).pad(2).relu(),
        Case::new([1, 1, 1], 1, 1),
        Case::new([2, 5, 3], 3, 5).pad(2),
        Case {
            dilation: [2, 2],
            ..Case::new([3, 11, 13], 5, 3).pad(1)
        },
        Case {
            groups: 2,
            ..Case::new([6, 9, 11], 10, 3).pad(1).batch(3)
        },
        Case {
            groups: 3,
            ..Case::new([3, 8, 7], 3, 3).pad(1)
        },
        Case {
            kernel: [3, 2],
            padding: [1, 0],
            stride: [2, 1],
            ..Case::new([4, 9, 10], 7, 3)
        },
        Case::new([64, 7, 7], 70, 3).pad(1),
        Case::new([130, 5, 9], 9, 1).relu(),
    ]
}

/// 3×3 stride-1 shapes for Winograd: odd sizes, partial tiles, one-row maps.
fn winograd_cases() -> Vec<Case> {
    vec![
        Case::new([3, 7, 7], 5, 3).pad(1),
        Case::new([5, 13, 17], 17, 3).pad(1).relu().batch(3),
        Case::new([17, 17, 13], 3, 3).pad(1),
        Case::new([4, 5, 9], 6, 3),
        Case::new([2, 3, 3], 2, 3),
        Case::new([3, 1, 9], 4, 3).pad(1).batch(3),
        Case::new([64, 14, 14], 70, 3).pad(1).relu(),
        Case::new([16, 28, 28], 32, 3).pad(1).relu().batch(3),
        Case {
            groups: 2,
            ..Case::new([6, 9, 11], 10, 3).pad(1)
        },
    ]
}

#[test]
fn direct_kernel_is_within_the_summation_bound() {
    for isa in isas() {
        for (i, case) in general_cases().iter().enumerate() {
            let d = data(case, i as u64 + 10);
            let r = bound_ratio(case, &d, &run_direct(case, &d, isa));
            assert!(
                r <= 1.0,
                "direct {} {case:?}: {r:.3} of the bound",
                isa.name()
            );
        }
    }
}

#[test]
fn im2col_kernel_is_within_the_summation_bound() {
    for isa in isas() {
        for (i, case) in general_cases().iter().enumerate() {
            let d = data(case, i as u64 + 10);
            let r = bound_ratio(case, &d, &run_gemm(case, &d, isa));
            assert!(
                r <= 1.0,
                "gemm {} {case:?}: {r:.3} of the bound",
                isa.name()
            );
        }
    }
}

/// The Winograd factor over the summation bound (see the module docs).
fn winograd_allowance(tile: TileSize) -> f64 {
    match tile {
        TileSize::F2 => 1.0,
        TileSize::F4 => 2.5,
    }
}

#[test]
fn winograd_kernels_are_within_their_bound() {
    for isa in isas() {
        for tile in [TileSize::F2, TileSize::F4] {
            for (i, case) in winograd_cases().iter().enumerate() {
                let d = data(case, i as u64 + 30);
                let r = bound_ratio(case, &d, &run_winograd(case, &d, tile, isa));
                assert!(
                    r <= winograd_allowance(tile),
                    "winograd {} {} {case:?}: {r:.3} of the summation bound",
                    tile.name(),
                    isa.name()
                );
            }
        }
    }
}

/// A residual connection's sum taken in the output transform, `act(conv(x) + b + r)`, on every
/// instruction set and tile size, with ReLU after the sum: the reference sum (relu off) plus
/// `r` in f64, held to the Winograd bound with one more term (`|r|` in the scale).
#[test]
fn winograd_adds_a_residual_as_it_writes() {
    for isa in isas() {
        for tile in [TileSize::F2, TileSize::F4] {
            for (i, case) in winograd_cases().iter().enumerate() {
                let mut d = data(
                    &Case {
                        relu: false,
                        ..*case
                    },
                    i as u64 + 70,
                );
                let r = values(d.want.len(), i as u64 + 90);
                let wino = Winograd::new(case.shape(), case.filters, &d.w, tile, isa).unwrap();
                let mut out = vec![f32::NAN; d.want.len()];
                let [a, b] = wino.scratch(case.batch).unwrap();
                let (mut sa, mut sb) = (vec![f32::NAN; a], vec![f32::NAN; b]);
                wino.run(&d.x, &d.b, Some(&r), case.relu, &mut sa, &mut sb, &mut out);
                for ((want, scale), r) in d.want.iter_mut().zip(&mut d.scale).zip(&r) {
                    let sum = *want as f64 + *r as f64;
                    *want = if case.relu { sum.max(0.0) } else { sum } as f32;
                    *scale += r.abs();
                }
                let ratio = bound_ratio(case, &d, &out);
                assert!(
                    ratio <= winograd_allowance(tile),
                    "winograd {} {} with a residual, {case:?}: {ratio:.3} of the bound",
                    tile.name(),
                    isa.name()
                );
            }
        }
    }
}

/// The direct kernel with a 2×2 stride-2 max pool in its epilogue.
fn run_direct_pooled(case: &Case, d: &Data, isa: Isa) -> Vec<f32> {
    let direct = DirectConv::max_pooled(case.shape()).expect("pooled direct geometry");
    let [oh, ow] = case.out();
    assert_eq!(direct.out(), [oh / 2, ow / 2]);
    run_direct_conv(case, d, isa, &direct)
}

/// `values` (`[batch·filters, oh, ow]` maps) max-pooled 2×2 with stride 2, an odd last row and
/// column dropped, as PyTorch's `max_pool2d(x, 2)`.
fn max_pool(case: &Case, values: &[f32]) -> Vec<f32> {
    let [oh, ow] = case.out();
    let mut pooled = Vec::new();
    for map in values.chunks_exact(oh * ow) {
        for py in 0..oh / 2 {
            for px in 0..ow / 2 {
                let at = |y: usize, x: usize| map[(2 * py + y) * ow + 2 * px + x];
                pooled.push(at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1)));
            }
        }
    }
    pooled
}

/// Shapes for the pooled epilogue: the small CNN's three convolutions, odd output sizes whose
/// last row or column the pool drops, maps wider than two vectors (a partial last block of
/// pooled columns on each instruction set), filter counts that are no multiple of a block,
/// stride, dilation, groups, a 2×2 output (one pooled value) and batch 3.
fn pooled_cases() -> Vec<Case> {
    vec![
        Case::new([1, 28, 28], 16, 3).pad(1).relu().batch(3),
        Case::new([1, 28, 28], 16, 5).pad(2).relu(),
        Case::new([16, 14, 14], 32, 3).pad(1).relu(),
        Case::new([3, 9, 7], 5, 3).pad(1),
        Case::new([5, 17, 37], 17, 3).pad(1).relu().batch(3),
        Case::new([1, 11, 35], 9, 5).pad(2),
        Case::new([17, 13, 17], 3, 3).pad(1),
        Case::new([3, 23, 17], 17, 7).stride(2).pad(3).relu(),
        Case::new([2, 2, 2], 3, 1),
        Case::new([2, 5, 3], 3, 5).pad(2),
        Case {
            dilation: [2, 2],
            ..Case::new([3, 11, 13], 5, 3).pad(1)
        },
        Case {
            groups: 2,
            ..Case::new([6, 9, 11], 10, 3).pad(1).batch(3)
        },
        Case::new([64, 7, 7], 70, 3).pad(1),
    ]
}

/// The pooled epilogue writes the maximum of each 2×2 block of the convolution's outputs, ReLU
/// after it. The maximum of values each within its bound of the exact one is within the
/// largest of those bounds of the exact maximum, so each pooled output is held to the bound of
/// its block's largest scale.
#[test]
fn direct_kernel_with_a_max_pool_is_within_the_summation_bound() {
    for isa in isas() {
        for (i, case) in pooled_cases().iter().enumerate() {
            let d = data(case, i as u64 + 110);
            let pooled = Data {
                want: max_pool(case, &d.want),
                scale: max_pool(case, &d.scale),
                x: Vec::new(),
                w: Vec::new(),
                b: Vec::new(),
            };
            let got = run_direct_pooled(case, &d, isa);
            let r = bound_ratio(case, &pooled, &got);
            assert!(
                r <= 1.0,
                "pooled direct {} {case:?}: {r:.3} of the bound",
                isa.name()
            );
        }
    }
}

/// The filter-lane kernel (AVX-512 only: filters along the lanes, pixels broadcast) on the
/// pooled cases of one group, held to the same bound: its sums run over the same taps in the
/// same order, only the lanes differ.
#[test]
fn filter_lane_kernel_with_a_max_pool_is_within_the_summation_bound() {
    if !Isa::Avx512.available() {
        eprintln!(
            "\n*** SKIPPED: this CPU lacks avx512: the filter-lane kernel is NOT tested here ***\n"
        );
        return;
    }
    let mut ran = 0;
    for (i, case) in pooled_cases().iter().enumerate() {
        if case.groups != 1 {
            continue;
        }
        let d = data(case, i as u64 + 210);
        let direct = DirectConv::max_pooled(case.shape()).expect("pooled direct geometry");
        let filters = LaneFilters::new(&d.w, case.filters, case.taps());
        let got = per_image(case, &d, &direct, |image, buf, rec| {
            direct.run_lanes(image, &filters, &d.b, case.relu, buf, rec)
        });
        let pooled = Data {
            want: max_pool(case, &d.want),
            scale: max_pool(case, &d.scale),
            x: Vec::new(),
            w: Vec::new(),
            b: Vec::new(),
        };
        let r = bound_ratio(case, &pooled, &got);
        assert!(
            r <= 1.0,
            "filter-lane pooled direct {case:?}: {r:.3} of the bound"
        );
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} cases of one group");
}

fn winograd_fits(case: &Case) -> bool {
    case.kernel == [3, 3] && case.stride == [1, 1] && case.dilation == [1, 1]
}

/// The op as a pipeline file configures it (`algorithm:` each value, fused ReLU or an activation
/// applied after, several groups) on the kernels this process runs (`SUBPASS_KERNELS` caps
/// them): every algorithm within its bound.
#[test]
fn conv2d_op_is_within_the_bound_with_every_algorithm() {
    let mut cases = general_cases();
    cases.extend(winograd_cases());
    for (i, case) in cases.iter().enumerate() {
        let d = data(case, i as u64 + 50);
        let mut algorithms = vec!["auto", "direct", "gemm"];
        if winograd_fits(case) {
            algorithms.push("winograd");
        }
        for algorithm in algorithms {
            let activation = if case.relu { "relu" } else { "none" };
            let got = case.through_op(KernelKind::Fast, activation, algorithm, &d.x, &d.w, &d.b);
            let r = bound_ratio(case, &d, &got);
            assert!(
                r <= 1.0,
                "conv2d algorithm {algorithm} {case:?}: {r:.3} of the bound"
            );
        }
    }
    // An activation the kernels do not fuse, applied after them.
    let case = Case::new([5, 9, 11], 7, 3).pad(1);
    let d = data(&case, 99);
    let want = case.through_op(KernelKind::Reference, "sigmoid", "auto", &d.x, &d.w, &d.b);
    for algorithm in ["direct", "gemm", "winograd"] {
        let got = case.through_op(KernelKind::Fast, "sigmoid", algorithm, &d.x, &d.w, &d.b);
        // sigmoid is ¼-Lipschitz, so the bound on the sums bounds the outputs.
        let k = case.taps() as f64;
        for ((g, w), s) in got.iter().zip(&want).zip(&d.scale) {
            let tol = (k + 2.0) * U * *s as f64 / 4.0 + U;
            assert!(
                (*g as f64 - *w as f64).abs() <= tol,
                "sigmoid {algorithm}: {g} vs {w}"
            );
        }
    }
}

/// `validate` prints the algorithm and instruction set of every convolution: forced ones as
/// forced, `auto` as chosen (Winograd F(4×4) for a 3×3 64-channel layer on 16×16, on 4×4 F(2×2)
/// at batch 1 and F(4×4) at batch 16, im2col for a 1×1, direct for a 7×7 or 3×3 stride 2, and
/// a convolution with the pool after it folded in on the kernel for the CPU).
#[test]
fn validate_shows_each_convolutions_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let pooled = match subpass::kernels::isa() {
        Isa::Avx512 => "direct with filters along the lanes, 2x2 max pool as it writes, avx512",
        _ => "direct, 2x2 max pool as it writes, ",
    };
    // small_w's 4×4 map is one F(4×4) tile an image: F(2×2) at batch 1, F(4×4) at batch 16,
    // where a chunk has 16 tiles.
    for (batch, small_w) in [(1, "winograd F(2x2,3x3), "), (16, "winograd F(4x4,3x3), ")] {
        let path = dir.path().join(format!("convs-{batch}.yaml"));
        std::fs::write(
            &path,
            format!("input: {{shape: [3, 32, 32]}}\ninit: {{seed: 1}}\nbatch: {{size: {batch}}}\nlayers:\n\
             - {{name: stem, op: conv2d, filters: 64, kernel: 7, stride: 2, padding: 3, activation: relu}}\n\
             - {{name: body, op: conv2d, filters: 64, kernel: 3, padding: 1}}\n\
             - {{name: down, op: conv2d, filters: 128, kernel: 1, stride: 2}}\n\
             - {{name: forced_direct, op: conv2d, filters: 64, kernel: 3, padding: 1, algorithm: direct}}\n\
             - {{name: forced_gemm, op: conv2d, filters: 64, kernel: 3, padding: 1, algorithm: gemm}}\n\
             - {{name: forced_winograd, op: conv2d, filters: 8, kernel: 3, padding: 1, algorithm: winograd}}\n\
             - {{name: forced_f4, op: conv2d, filters: 8, kernel: 3, padding: 1, algorithm: winograd_f4}}\n\
             - {{name: small, op: conv2d, filters: 64, kernel: 3, stride: 2, padding: 1}}\n\
             - {{name: small_w, op: conv2d, filters: 64, kernel: 3, padding: 1}}\n\
             - {{name: deep, op: conv2d, filters: 16, kernel: 3, padding: 1}}\n\
             - {{name: pool, op: maxpool2d, kernel: 2}}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_subpass"))
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kernels = stdout
            .split("\nkernels (")
            .nth(1)
            .unwrap_or_else(|| panic!("no kernels section in:\n{stdout}"));
        for (layer, algorithm) in [
            ("stem", "direct, "),
            ("body", "winograd F(4x4,3x3), "),
            ("small", "direct, "),
            ("small_w", small_w),
            ("down", "gemm (im2col"),
            ("forced_direct", "direct, "),
            ("forced_gemm", "gemm (im2col"),
            ("forced_winograd", "winograd F(2x2,3x3), "),
            ("forced_f4", "winograd F(4x4,3x3), "),
            // `deep` folded into the pool that alone reads it, on the filter-lane kernel where
            // this process's kernels are AVX-512 (a 576-tap patch, 16 filters).
            ("pool", pooled),
        ] {
            let line = kernels
                .lines()
                .find(|l| l.split_whitespace().next() == Some(layer))
                .unwrap_or_else(|| panic!("no line for {layer} in:\n{kernels}"));
            assert!(line.contains(algorithm), "batch {batch}, {layer}: {line}");
        }
    }
}

#[test]
fn winograd_refuses_what_it_cannot_compute() {
    let w = values(5 * 3 * 9, 1);
    for case in [
        Case::new([3, 9, 9], 5, 3).stride(2),
        Case {
            dilation: [2, 2],
            ..Case::new([3, 9, 9], 5, 3)
        },
    ] {
        assert!(
            Winograd::new(case.shape(), 5, &w, TileSize::F2, Isa::Portable).is_none(),
            "{case:?}"
        );
    }
    let w5 = values(5 * 3 * 25, 1);
    let case = Case::new([3, 9, 9], 5, 5);
    assert!(Winograd::new(case.shape(), 5, &w5, TileSize::F2, Isa::Portable).is_none());
}

/// Prints the worst error of each kernel as a fraction of the summation bound (run with
/// `--nocapture`): the figures the Winograd allowance above is set from.
#[test]
fn winograd_error_against_f64() {
    for isa in isas() {
        let mut worst = [0.0f64; 4];
        for (i, case) in winograd_cases().iter().enumerate() {
            let d = data(case, i as u64 + 30);
            worst[0] = worst[0].max(bound_ratio(case, &d, &run_direct(case, &d, isa)));
            worst[1] = worst[1].max(bound_ratio(case, &d, &run_gemm(case, &d, isa)));
            for (j, tile) in [TileSize::F2, TileSize::F4].into_iter().enumerate() {
                let r = bound_ratio(case, &d, &run_winograd(case, &d, tile, isa));
                worst[2 + j] = worst[2 + j].max(r);
            }
        }
        eprintln!(
            "{}: worst error / summation bound: direct {:.3}, gemm {:.3}, F(2x2,3x3) {:.3}, F(4x4,3x3) {:.3}",
            isa.name(),
            worst[0],
            worst[1],
            worst[2],
            worst[3]
        );
    }
}

/// Winograd's error on ResNet-18's 3×3 stride-1 shapes (64 to 512 channels), relative to the
/// largest output, with PyTorch's default conv initialisation (uniform in ±1/√fan_in) and
/// post-ReLU inputs: what picking a tile size trades. Prints the table the README quotes (run
/// with `--nocapture`) and holds each tile to its figure with a margin of 4.
#[test]
fn winograd_error_on_resnet_shapes() {
    let isa = *isas().last().expect("portable always runs");
    eprintln!("shape              direct      gemm        F(2x2,3x3)  F(4x4,3x3)   (max |err| / max |y|, {})", isa.name());
    for (i, &(c, hw)) in [(64, 56), (128, 28), (256, 14), (512, 7)]
        .iter()
        .enumerate()
    {
        let case = Case::new([c, hw, hw], c, 3).pad(1);
        let bound = 1.0 / ((c * 9) as f32).sqrt();
        let mut d = data(&Case { batch: 1, ..case }, 70 + i as u64);
        // Inputs after a ReLU: half of them zero, the rest in [0, 1).
        d.x.iter_mut().for_each(|v| *v = v.max(0.0));
        d.w.iter_mut().for_each(|v| *v *= bound);
        d.b.iter_mut().for_each(|v| *v *= bound);
        d.want = case.reference(&d.x, &d.w, &d.b, false);
        let top = d.want.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
        let err = |got: &[f32]| {
            got.iter()
                .zip(&d.want)
                .map(|(g, w)| (*g as f64 - *w as f64).abs())
                .fold(0.0, f64::max)
                / top
        };
        let e = [
            err(&run_direct(&case, &d, isa)),
            err(&run_gemm(&case, &d, isa)),
            err(&run_winograd(&case, &d, TileSize::F2, isa)),
            err(&run_winograd(&case, &d, TileSize::F4, isa)),
        ];
        eprintln!(
            "{c:>3}ch {hw:>2}x{hw:<2}          {:.2e}    {:.2e}    {:.2e}    {:.2e}",
            e[0], e[1], e[2], e[3]
        );
    }
}

/// What the per-layer figures above mean for a network: twelve 3×3 64-channel layers with ReLU
/// on 28×28 (He-scaled weights, so activations keep their scale), each algorithm's chain against
/// the reference kernel's own chain, then averaged over the map as a classifier head would. The
/// per-layer maxima do not add up: rounding errors are independent and the average washes them
/// out, so F(4×4) ends as close to the exact result as direct convolution does (run with
/// `--nocapture` for the figures; the README quotes them).
#[test]
fn winograd_error_through_a_twelve_layer_chain() {
    let case = Case::new([64, 28, 28], 64, 3).pad(1).relu();
    let layers = 12;
    let he = (2.0f32 / (64.0 * 9.0)).sqrt() * 3f32.sqrt(); // uniform ±he has variance 2/fan_in
    let weights: Vec<(Vec<f32>, Vec<f32>)> = (0..layers)
        .map(|l| {
            let w = values(64 * case.taps(), 200 + l as u64);
            let b = values(64, 300 + l as u64);
            (
                w.iter().map(|v| v * he).collect(),
                b.iter().map(|v| v * 0.01).collect(),
            )
        })
        .collect();
    let input: Vec<f32> = values(64 * 28 * 28, 7).iter().map(|v| v.abs()).collect();
    let head = |x: &[f32]| -> Vec<f64> {
        x.chunks_exact(28 * 28)
            .map(|c| c.iter().map(|v| *v as f64).sum::<f64>() / (28.0 * 28.0))
            .collect()
    };
    let chain = |kind: KernelKind, algorithm: &str| -> Vec<f64> {
        let mut x = input.clone();
        for (w, b) in &weights {
            x = case.through_op(kind, "relu", algorithm, &x, w, b);
        }
        head(&x)
    };
    let exact = chain(KernelKind::Reference, "auto");
    let top = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for algorithm in ["direct", "winograd", "winograd_f4"] {
        let got = chain(KernelKind::Fast, algorithm);
        let err = got
            .iter()
            .zip(&exact)
            .map(|(g, e)| (g - e).abs())
            .fold(0.0, f64::max)
            / top;
        eprintln!("12-layer chain, {algorithm:11}: max |error| / max |output| = {err:.2e}");
        assert!(err <= 1e-5, "{algorithm}: {err:.2e} after {layers} layers");
    }
}
