//! Whole-pipeline and channel benchmarks: a message's round trip between two threads over
//! crossbeam, between two tokio tasks, and through tokio's `spawn_blocking`; and the decomposed
//! pipelines of configs/mlp.yaml and configs/cnn.yaml fed from memory.
//!
//! `cargo bench --bench pipeline` (add `-- channel` for the round trips alone)

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use crossbeam_channel::{Receiver, RecvError};
use subpass::graph::Plan;
use subpass::runtime::{recv_patiently, run_bench_pipeline};
use tokio::runtime::Runtime;

/// How a thread takes a message off a crossbeam channel.
type Receive = fn(&Receiver<u64>) -> Result<u64, RecvError>;

/// A round trip of one `u64` to another thread and back over bounded crossbeam channels, both ends
/// receiving with `receive`: twice the cost of the hand-off between two stage actors.
fn crossbeam_between_threads(group: &mut BenchmarkGroup<WallTime>, name: &str, receive: Receive) {
    let (to_tx, to_rx) = crossbeam_channel::bounded::<u64>(2);
    let (back_tx, back_rx) = crossbeam_channel::bounded::<u64>(2);
    let echo = std::thread::spawn(move || {
        while let Ok(v) = receive(&to_rx) {
            if back_tx.send(v).is_err() {
                return;
            }
        }
    });
    group.bench_function(name, |b| {
        b.iter(|| {
            to_tx.send(1).unwrap();
            receive(&back_rx).unwrap()
        })
    });
    drop(to_tx);
    echo.join().unwrap();
}

/// The same round trip between two tokio tasks over bounded `tokio::sync::mpsc` channels, on a
/// runtime with a worker per core. Tokio runs a woken task next on the worker that woke it, so
/// both ends mostly share one thread (95% of round trips, checked once by thread id): the cheapest
/// a task hop gets, and no parallelism.
fn tokio_mpsc_between_tasks(group: &mut BenchmarkGroup<WallTime>, rt: &Runtime) {
    group.bench_function("tokio_mpsc_between_tasks", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let (to_tx, mut to_rx) = tokio::sync::mpsc::channel::<u64>(2);
                let (back_tx, mut back_rx) = tokio::sync::mpsc::channel::<u64>(2);
                tokio::spawn(async move {
                    while let Some(v) = to_rx.recv().await {
                        if back_tx.send(v).await.is_err() {
                            return;
                        }
                    }
                });
                // Timed inside a task of its own, so both ends are tasks.
                tokio::spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        to_tx.send(1).await.unwrap();
                        back_rx.recv().await.unwrap();
                    }
                    start.elapsed()
                })
                .await
                .unwrap()
            })
        })
    });
}

/// One `u64` from a task to tokio's blocking pool and back with `spawn_blocking`: the bridge a
/// task would cross, per message, to hand compute to a blocking thread.
fn tokio_spawn_blocking(group: &mut BenchmarkGroup<WallTime>, rt: &Runtime) {
    group.bench_function("tokio_spawn_blocking", |b| {
        b.iter_custom(|iters| {
            rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                for v in 0..iters {
                    black_box(tokio::task::spawn_blocking(move || v).await.unwrap());
                }
                start.elapsed()
            }))
            .unwrap()
        })
    });
}

/// Message hops, each a round trip of one `u64` (two hops, so "elem/s" counts hops).
fn channel_hops(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("channel");
    group.throughput(Throughput::Elements(2));
    crossbeam_between_threads(&mut group, "crossbeam_between_threads", |rx| rx.recv());
    // As stage actors receive: yielding for a while before parking.
    crossbeam_between_threads(
        &mut group,
        "crossbeam_patient_between_threads",
        recv_patiently,
    );
    tokio_mpsc_between_tasks(&mut group, &rt);
    tokio_spawn_blocking(&mut group, &rt);
    group.finish();
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

criterion_group!(benches, channel_hops, pipelines);
criterion_main!(benches);
