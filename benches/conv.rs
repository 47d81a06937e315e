//! Convolution benchmarks: every distinct ResNet-18 convolution shape at batch 1 and 8, and the
//! small CNN's (`configs/cnn.yaml`) at batch 1 and 64, one thread. Each shape runs the layer as a
//! pipeline builds it (`auto`, the algorithm the op chooses) and each algorithm that fits it,
//! called directly: `direct`, `gemm` (im2col), `winograd_f2` and `winograd_f4`.
//!
//! Throughput is direct-convolution FLOPs (`2·K` per output, whatever the algorithm does), so
//! criterion's "elem/s" reads as effective FLOP/s, comparable with the FMA peak; Winograd can
//! pass it. Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time:
//! on a machine shared with other work, wall time counts the slices other processes run in,
//! while CPU time counts only ours (what it cannot remove is their effect on the caches). The FMA
//! peak measured the same way is 116 GFLOP/s a core, for 256-bit and 512-bit FMAs alike.
//! `python3 tools/conv_bench_table.py` turns criterion's medians into the README table.
//!
//! `cargo bench --bench conv` (add `-- resnet_3x3_64` to run one shape; `SUBPASS_KERNELS=avx2`
//! for the AVX2 kernels).

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

use subpass::config::PipelineConfig;
use subpass::kernels::conv_block::PackedFilters;
use subpass::kernels::conv_direct::{ConvShape, DirectConv};
use subpass::kernels::im2col::Im2col;
use subpass::kernels::isa;
use subpass::kernels::winograd::{TileSize, Winograd};
use subpass::ops::{Chunk, KernelKind, Scratch, Tensor};

/// The calling thread's CPU time, in nanoseconds.
struct ThreadCpuTime;

fn thread_cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = f64;
    type Value = f64;
    fn start(&self) -> f64 {
        thread_cpu_ns()
    }
    fn end(&self, start: f64) -> f64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }
    fn zero(&self) -> f64 {
        0.0
    }
    fn to_f64(&self, v: &f64) -> f64 {
        *v
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// CPU nanoseconds shown as ms, throughput in elements (FLOPs) per CPU second.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        for v in values {
            *v /= 1e6;
        }
        "ms cpu"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per = match t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n,
        } as f64;
        for v in values {
            *v = per / *v;
        }
        "G/s cpu"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0
                - 1.0
        })
        .collect()
}

/// `(name, input [c, h, w], filters, kernel, stride, padding)`.
type Shape = (&'static str, [usize; 3], usize, usize, usize, usize);

const RESNET: &[Shape] = &[
    ("resnet_conv1_7x7s2_3to64_224", [3, 224, 224], 64, 7, 2, 3),
    ("resnet_3x3_64to64_56", [64, 56, 56], 64, 3, 1, 1),
    ("resnet_3x3s2_64to128_56", [64, 56, 56], 128, 3, 2, 1),
    ("resnet_1x1s2_64to128_56", [64, 56, 56], 128, 1, 2, 0),
    ("resnet_3x3_128to128_28", [128, 28, 28], 128, 3, 1, 1),
    ("resnet_3x3s2_128to256_28", [128, 28, 28], 256, 3, 2, 1),
    ("resnet_1x1s2_128to256_28", [128, 28, 28], 256, 1, 2, 0),
    ("resnet_3x3_256to256_14", [256, 14, 14], 256, 3, 1, 1),
    ("resnet_3x3s2_256to512_14", [256, 14, 14], 512, 3, 2, 1),
    ("resnet_1x1s2_256to512_14", [256, 14, 14], 512, 1, 2, 0),
    ("resnet_3x3_512to512_7", [512, 7, 7], 512, 3, 1, 1),
];

const CNN: &[Shape] = &[
    ("cnn_3x3_1to16_28", [1, 28, 28], 16, 3, 1, 1),
    ("cnn_5x5_1to16_28", [1, 28, 28], 16, 5, 1, 2),
    ("cnn_3x3_16to32_14", [16, 14, 14], 32, 3, 1, 1),
];

fn bench_shapes(c: &mut Criterion<ThreadCpuTime>, shapes: &[Shape], batches: &[usize]) {
    let isa = isa();
    for &(name, input, filters, k, s, p) in shapes {
        let shape = ConvShape {
            input,
            groups: 1,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            dilation: [1, 1],
        };
        let [oh, ow] = shape.out().unwrap();
        let taps = shape.taps();
        let flops_per_image = (2 * taps * filters * oh * ow) as u64;
        let weight = values(filters * taps, 1);
        let bias = values(filters, 2);
        let packed = vec![PackedFilters::new(&weight, filters, taps, isa)];
        let direct = DirectConv::new(shape).unwrap();
        let im2col = Im2col::new(shape).unwrap();
        let winograd: Vec<(&str, Winograd)> =
            [("winograd_f2", TileSize::F2), ("winograd_f4", TileSize::F4)]
                .into_iter()
                .filter_map(|(n, t)| Some((n, Winograd::new(shape, filters, &weight, t, isa)?)))
                .collect();
        // The layer as a pipeline builds it, with `algorithm: auto`.
        let text = format!(
            "input: {{shape: {input:?}}}\nlayers:\n  - {{name: l, op: conv2d, filters: {filters}, kernel: {k}, stride: {s}, padding: {p}, activation: relu}}\n"
        );
        let config = PipelineConfig::parse(&text, std::path::Path::new(".")).unwrap();
        let op = config.layers[0].op.clone();
        let out_shape = op.output_shape(&[&input]).unwrap();
        let layer = op.build(
            KernelKind::Fast,
            &[&input],
            &out_shape,
            vec![weight.clone(), bias.clone()],
        );
        let mut group = c.benchmark_group(name);
        group
            .sample_size(10)
            .measurement_time(Duration::from_millis(1500))
            .warm_up_time(Duration::from_millis(300));
        for &n in batches {
            let x = values(n * input.iter().product::<usize>(), 9);
            let mut out = vec![0.0f32; n * filters * oh * ow];
            group.throughput(Throughput::Elements(flops_per_image * n as u64));
            let mut tensor_shape = vec![n];
            tensor_shape.extend_from_slice(&input);
            let xt = Tensor::from_shape_vec(tensor_shape, x.clone()).unwrap();
            let mut scratch = Scratch::default();
            let label = layer.describe().unwrap_or_default();
            eprintln!("{name} batch {n}: auto = {label}");
            group.bench_with_input(BenchmarkId::new("auto", n), &n, |b, &n| {
                b.iter(|| black_box(layer.forward(&[&xt], &Chunk::records(n), &mut scratch)))
            });
            let mut buf = vec![0.0f32; direct.buffer_len()];
            let record = filters * oh * ow;
            let image = input.iter().product::<usize>();
            group.bench_with_input(BenchmarkId::new("direct", n), &n, |b, _| {
                b.iter(|| {
                    for (img, rec) in x.chunks_exact(image).zip(out.chunks_exact_mut(record)) {
                        direct.run(img, &packed, &bias, true, &mut buf, rec);
                    }
                })
            });
            let mut buf = vec![0.0f32; im2col.buffer_len(im2col.images().min(n)).unwrap()];
            group.bench_with_input(BenchmarkId::new("gemm", n), &n, |b, _| {
                b.iter(|| im2col.run(&x, &packed, &bias, true, &mut buf, &mut out))
            });
            for (wname, wino) in &winograd {
                let [sa, sb] = wino.scratch(n).unwrap();
                let (mut sa, mut sb) = (vec![0.0f32; sa], vec![0.0f32; sb]);
                group.bench_with_input(BenchmarkId::new(*wname, n), &n, |b, _| {
                    b.iter(|| wino.run(&x, &bias, None, true, &mut sa, &mut sb, &mut out))
                });
                // With a residual added as the output transform writes (ResNet's block ends).
                let residual = values(out.len(), 10);
                let id = BenchmarkId::new(format!("{wname}_residual"), n);
                group.bench_with_input(id, &n, |b, _| {
                    b.iter(|| {
                        wino.run(&x, &bias, Some(&residual), true, &mut sa, &mut sb, &mut out)
                    })
                });
            }
        }
        group.finish();
    }
}

/// The FMA peak on 256-bit and 512-bit vectors, measured the same way as the convolutions.
fn fma_peak(c: &mut Criterion<ThreadCpuTime>) {
    use subpass::kernels::peak::{burst_flops_per_round, fma_burst};
    use subpass::kernels::Isa;
    let mut group = c.benchmark_group("fma_peak");
    group
        .sample_size(10)
        .measurement_time(Duration::from_millis(1500))
        .warm_up_time(Duration::from_millis(300));
    let rounds = 1 << 16;
    for isa in [Isa::Avx2Fma, Isa::Avx512] {
        if !isa.available() {
            eprintln!("fma_peak: this CPU lacks {}, skipped", isa.name());
            continue;
        }
        group.throughput(Throughput::Elements(burst_flops_per_round(isa) * rounds));
        group.bench_function(isa.name(), |b| b.iter(|| black_box(fma_burst(isa, rounds))));
    }
    group.finish();
}

/// The padded, phase-split copies the direct and Winograd kernels read (`PhaseLayout::fill`), one
/// image, for ResNet-18's layouts: stride-2 phases for its strided direct convolutions, 4×4
/// phases for Winograd F(4×4) and 2×2 for F(2×2). Throughput is floats of input per second.
fn phase_fill(c: &mut Criterion<ThreadCpuTime>) {
    use subpass::kernels::conv_direct::PhaseLayout;
    let all = |s: usize| -> Vec<[usize; 2]> { (0..s * s).map(|i| [i / s, i % s]).collect() };
    /// (name, input, padding, stride = phases a side, minimum plane [rows, cols])
    type Case = (&'static str, [usize; 3], usize, usize, [usize; 2]);
    let cases: &[Case] = &[
        ("s2_3x224_pad3", [3, 224, 224], 3, 2, [0, 0]),
        ("s2_64x56_pad1", [64, 56, 56], 1, 2, [0, 0]),
        ("f4_64x56", [64, 56, 56], 1, 4, [15, 15]),
        ("f4_128x28", [128, 28, 28], 1, 4, [8, 8]),
        ("f4_256x14", [256, 14, 14], 1, 4, [5, 5]),
        ("f2_512x7", [512, 7, 7], 1, 2, [5, 5]),
    ];
    let mut group = c.benchmark_group("phase_fill");
    group
        .sample_size(10)
        .measurement_time(Duration::from_millis(1000))
        .warm_up_time(Duration::from_millis(200));
    for &(name, input, p, s, min) in cases {
        let layout = PhaseLayout::new(input, [p, p], [s, s], &all(s), min, 1).unwrap();
        let x = values(input.iter().product(), 3);
        let mut buf = vec![0.0f32; layout.len()];
        group.throughput(Throughput::Elements(x.len() as u64));
        group.bench_function(name, |b| b.iter(|| layout.fill(black_box(&x), &mut buf)));
    }
    group.finish();
}

fn resnet(c: &mut Criterion<ThreadCpuTime>) {
    bench_shapes(c, RESNET, &[1, 8]);
}

fn cnn(c: &mut Criterion<ThreadCpuTime>) {
    bench_shapes(c, CNN, &[1, 64]);
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = fma_peak, phase_fill, resnet, cnn
}
criterion_main!(benches);
