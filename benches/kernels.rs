//! Kernel benchmarks: the GEMM candidates on the MLP's shapes, each heavy layer at batch 1, 32
//! and 256, and pooling on ResNet-18's stem at batch 8. Throughput is in FLOPs, so criterion's
//! "elem/s" reads as FLOP/s, except for pooling, which is in input bytes.
//!
//! `cargo bench --bench kernels` (add `-- gemm` to run one group, `-- maxpool_resnet` one case).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

use subpass::config::PipelineConfig;
use subpass::kernels::{gemm::matmul_acc, packed::DenseWeights};
use subpass::ops::{Chunk, KernelKind, Layer, Op, Scratch, Tensor};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0
                - 1.0
        })
        .collect()
}

/// The candidates for `y[m×n] = x[m×k] · Wᵀ` with W in PyTorch's `[n, k]` layout: the gemm
/// crate, matrixmultiply (what ndarray's `dot` uses), and our kernel on weights packed at load.
fn gemm_candidates(c: &mut Criterion) {
    let (k, n) = (784, 1024);
    let w = values(n * k, 1);
    let packed = DenseWeights::new(w.clone(), n, k);
    let mut group = c.benchmark_group("gemm_784x1024");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for m in [1usize, 16, 32, 64, 256] {
        let x = values(m * k, 2);
        let mut y = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_with_input(BenchmarkId::new("gemm_crate", m), &m, |b, &m| {
            b.iter(|| matmul_acc(m, n, k, black_box(&x), black_box(&w), true, &mut y))
        });
        group.bench_with_input(BenchmarkId::new("packed_subpass", m), &m, |b, &m| {
            b.iter(|| packed.matmul_acc(m, black_box(&x), &mut y))
        });
        group.bench_with_input(BenchmarkId::new("matrixmultiply", m), &m, |b, &m| {
            b.iter(|| unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    black_box(x.as_ptr()),
                    k as isize,
                    1,
                    black_box(w.as_ptr()),
                    1,
                    k as isize,
                    1.0,
                    y.as_mut_ptr(),
                    n as isize,
                    1,
                )
            })
        });
    }
    group.finish();
}

/// Our packed kernel on the dense shapes of all-MiniLM-L6-v2's encoder layers, whose rows are
/// tokens (a chunk of sentences is a few hundred): the fused QKV projection (384 → 1152), the
/// feed-forward's expansion (384 → 1536) and contraction (1536 → 384).
fn gemm_minilm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm_minilm");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (k, n) in [(384usize, 1152usize), (384, 1536), (1536, 384)] {
        let packed = DenseWeights::new(values(n * k, 1), n, k);
        let m = 256;
        let x = values(m * k, 2);
        let mut y = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_function(format!("{k}x{n}/{m}"), |b| {
            b.iter(|| packed.matmul_acc(m, black_box(&x), &mut y))
        });
    }
    group.finish();
}

/// The op a one-layer pipeline file describes, as users write it.
fn op(layer: &str, input: &[usize]) -> std::sync::Arc<dyn Op> {
    let text = format!("input: {{shape: {input:?}}}\nlayers:\n  - {{name: l, {layer}}}\n");
    let config = PipelineConfig::parse(&text, std::path::Path::new(".")).unwrap();
    config.layers[0].op.clone()
}

fn layer(op: &dyn Op, input: &[usize]) -> (Box<dyn Layer>, Vec<usize>) {
    let out = op.output_shape(&[input]).unwrap();
    let params = op
        .tensors(&[input])
        .iter()
        .enumerate()
        .map(|(i, p)| values(p.shape.iter().product(), i as u32 + 3))
        .collect();
    (op.build(KernelKind::Fast, &[input], &out, params), out)
}

fn layer_benches(c: &mut Criterion) {
    let cases = [
        (
            "dense_784_1024_relu",
            "op: dense, units: 1024, activation: relu",
            vec![784usize],
        ),
        (
            "conv3x3_16to32_14x14_relu",
            "op: conv2d, filters: 32, kernel: 3, padding: 1, activation: relu",
            vec![16, 14, 14],
        ),
        (
            "conv3x3_1to16_28x28_relu",
            "op: conv2d, filters: 16, kernel: 3, padding: 1, activation: relu",
            vec![1, 28, 28],
        ),
        (
            "conv5x5_1to16_28x28_relu",
            "op: conv2d, filters: 16, kernel: 5, padding: 2, activation: relu",
            vec![1, 28, 28],
        ),
    ];
    // The CNN's convolutions also as the graph runs them, with the 2×2 max pool after them
    // folded in (`Op::with_max_pool`): `…_maxpool` against the plain layer is what the fold saves
    // on the convolution alone (the pool's own pass comes on top).
    let pooled = |name: &'static str| format!("{name}_maxpool");
    let cases = cases.into_iter().flat_map(|(name, yaml, input)| {
        let plain = (name.to_string(), op(yaml, &input), input.clone());
        let folded = op(yaml, &input)
            .with_max_pool(&[&input])
            .map(|folded| (pooled(name), folded, input));
        std::iter::once(plain).chain(folded)
    });
    for (name, op, input) in cases {
        let (l, out) = layer(op.as_ref(), &input);
        let flops = op.flops(&[&input], &out, 1);
        let mut group = c.benchmark_group(&name);
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
        for batch in [1usize, 32, 256] {
            let mut shape = vec![batch];
            shape.extend_from_slice(&input);
            let x =
                Tensor::from_shape_vec(shape, values(batch * input.iter().product::<usize>(), 9))
                    .unwrap();
            let mut scratch = Scratch::default();
            group.throughput(Throughput::Elements(flops * batch as u64));
            group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
                b.iter(|| black_box(l.forward(&[&x], &Chunk::records(batch), &mut scratch)))
            });
        }
        group.finish();
    }
}

/// Pooling at batch 8 (the planner's profiling batch) over ResNet-18's stem activations
/// [64, 112, 112]: its max pool (`maxpool_resnet`: 3×3, stride 2, padding 1), then average
/// pooling and the other strides, which take other paths through the fast kernel. Pooling
/// streams its input, so throughput is in input bytes.
fn pool_benches(c: &mut Criterion) {
    let (input, batch) = ([64usize, 112, 112], 8);
    let cases = [
        (
            "maxpool_resnet",
            "op: maxpool2d, kernel: 3, stride: 2, padding: 1",
        ),
        (
            "avgpool_3x3_s2",
            "op: avgpool2d, kernel: 3, stride: 2, padding: 1",
        ),
        ("maxpool_2x2_s2", "op: maxpool2d, kernel: 2"),
        ("avgpool_2x2_s2", "op: avgpool2d, kernel: 2"),
        (
            "maxpool_3x3_s1",
            "op: maxpool2d, kernel: 3, stride: 1, padding: 1",
        ),
        (
            "avgpool_3x3_s1",
            "op: avgpool2d, kernel: 3, stride: 1, padding: 1",
        ),
        ("maxpool_3x3_s3", "op: maxpool2d, kernel: 3"),
    ];
    let len = batch * input.iter().product::<usize>();
    let x = Tensor::from_shape_vec(vec![batch, 64, 112, 112], values(len, 9)).unwrap();
    let mut group = c.benchmark_group("pool_64x112x112");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .throughput(Throughput::Bytes(len as u64 * 4));
    for (name, yaml) in cases {
        let op = op(yaml, &input);
        let (l, _) = layer(op.as_ref(), &input);
        let mut scratch = Scratch::default();
        group.bench_function(name, |b| {
            b.iter(|| black_box(l.forward(&[&x], &Chunk::records(batch), &mut scratch)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    gemm_candidates,
    gemm_minilm,
    layer_benches,
    pool_benches
);
criterion_main!(benches);
