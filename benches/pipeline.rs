//! Whole-pipeline and channel benchmarks: one crossbeam hand-off between two threads, and the
//! decomposed pipelines of configs/mlp.yaml and configs/cnn.yaml fed from memory.
//!
//! `cargo bench --bench pipeline`

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use subpass::graph::Plan;
use subpass::runtime::run_bench_pipeline;

/// A round trip of one message to another thread and back over bounded channels: twice the cost
/// of the hand-off between two stage actors.
fn channel_hop(c: &mut Criterion) {
    let (to_tx, to_rx) = crossbeam_channel::bounded::<u64>(2);
    let (back_tx, back_rx) = crossbeam_channel::bounded::<u64>(2);
    let echo = std::thread::spawn(move || {
        for v in to_rx {
            if back_tx.send(v).is_err() {
                return;
            }
        }
    });
    let mut group = c.benchmark_group("channel");
    group.throughput(Throughput::Elements(2));
    group.bench_function("round_trip_between_threads", |b| {
        b.iter(|| {
            to_tx.send(1).unwrap();
            back_rx.recv().unwrap()
        })
    });
    group.finish();
    drop(to_tx);
    echo.join().unwrap();
}

fn pipelines(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, records) in [("mlp", 4096usize), ("cnn", 1024)] {
        let plan = Arc::new(Plan::load(&root.join(format!("configs/{name}.yaml"))).unwrap());
        let len = plan.input_len() * plan.batch.size;
        let inputs: Vec<Vec<f32>> = (0..4)
            .map(|c| {
                (0..len)
                    .map(|i| ((i * 31 + c * 7) % 97) as f32 / 97.0 - 0.5)
                    .collect()
            })
            .collect();
        let mut group = c.benchmark_group("pipeline");
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(8))
            .warm_up_time(Duration::from_secs(1));
        group.throughput(Throughput::Elements(records as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                run_bench_pipeline(plan.clone(), inputs.clone(), records, None, None, None).unwrap()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, channel_hop, pipelines);
criterion_main!(benches);
