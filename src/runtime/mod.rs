//! The streaming executor: stage actors over bounded channels.
//!
//! ```text
//!  stdin ─▶ reader ─▶ chunker ─▶ parser(s) ─┬─▶ stage A ──┐
//!                       │  admit            ├─▶ stage B ──┴─▶ join ─▶ stage C ─┐
//!                       │                   └─(meta, skip connections)─────────┴─▶ sink ─▶ stdout
//!                       └──────────────── in-flight budget ◀── retire ─────────────┘
//! ```
//! Every arrow is a bounded channel. Each stage is an actor: a thread per replica that owns a
//! receiver, computes, and sends each downstream consumer exactly the values it reads. A consumer
//! with several producers (a join, or the sink) drains all of its input into a buffer keyed by
//! chunk id, so it never waits on one producer while another is blocked on it; that buffer, and
//! everything else in flight, is bounded by the in-flight budget ([`budget`]).
//!
//! Compute runs on plain threads with crossbeam channels: a hand-off costs 0.3 to 1.4 µs with the
//! receiver yielding before it parks ([`recv_patiently`]), against 8 to 14 µs for the bridge from
//! async to blocking code (`spawn_blocking`) that a stage written as a task would cross with every
//! chunk (`benches/pipeline.rs`; the figures are in the README's Development section). Tokio only
//! waits for signals ([`shutdown`]).
//!
//! Shutdown is a cascade: the source stops, every actor drains its queue and drops its senders,
//! and the sink flushes when its last producer is gone.

pub mod budget;
#[cfg(any(test, feature = "fail-points"))]
mod fault;
mod label;
mod run;
pub mod shutdown;
mod sink;
mod source;
mod stage;
pub mod stats;
pub mod trace;

use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::graph::plan::{Destination, Route};
use crate::graph::{Env, Plan, ValueId};
use crate::io::ChunkMeta;
use crate::ops::Tensor;

pub use label::{Label, LabelError};
pub use run::{
    quiet_stage_panics, run_bench_pipeline, run_stream, BenchRun, RunError, RunOptions, RunReport,
};
pub(crate) use source::record_parser;
pub use stats::{RunStats, StageStats};

/// Sequence number of a chunk, from 0 in input order; the reorder step emits by it.
pub type ChunkId = u64;

/// One producer's share of one chunk, on its way to one consumer.
#[derive(Debug)]
pub struct Part {
    pub chunk: ChunkId,
    pub rows: usize,
    pub values: Vec<(ValueId, Arc<Tensor>)>,
    /// For text: where each record's tokens start in token-row values.
    pub seqs: Option<Arc<[usize]>>,
    /// The chunk's record metadata; only the source's part for the sink carries it.
    pub meta: Option<Box<ChunkMeta>>,
}

/// Rounds of `yield_now` a receiver tries before it parks: a few hundred microseconds, longer
/// than a stage's compute on a small chunk, so a consumer is still awake when its producer
/// finishes. An idle pipeline parks after that; a busy one never gets here.
const PATIENCE: usize = 256;

/// Receive, yielding the core for a while before parking. Waking a parked
/// thread costs tens of microseconds on a virtual machine, three of them per chunk through a
/// two-stage pipeline; yielding keeps an idle pipeline's hand-offs at a microsecond or two, and
/// gives the core to any thread that has work meanwhile.
pub fn recv_patiently<T>(rx: &Receiver<T>) -> Result<T, crossbeam_channel::RecvError> {
    for _ in 0..PATIENCE {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                return Err(crossbeam_channel::RecvError)
            }
            Err(crossbeam_channel::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    rx.recv()
}

/// The downstream side of a channel was closed: the pipeline is failing or shutting down.
#[derive(Debug)]
pub struct Closed;

/// Sends a producer's values to every consumer that reads them.
#[derive(Debug, Clone)]
pub struct Emitter {
    routes: Vec<(Sender<Part>, Vec<ValueId>, Destination)>,
}

impl Emitter {
    /// Send each consumer its values of this chunk; `meta` goes to the sink.
    pub fn emit(
        &self,
        chunk: ChunkId,
        rows: usize,
        env: &Env,
        mut meta: Option<Box<ChunkMeta>>,
    ) -> Result<(), Closed> {
        for (tx, values, to) in &self.routes {
            let values = values.iter().map(|v| (*v, env.get(*v).clone())).collect();
            let meta = if *to == Destination::Sink {
                meta.take()
            } else {
                None
            };
            tx.send(Part {
                chunk,
                rows,
                values,
                seqs: env.seqs.clone(),
                meta,
            })
            .map_err(|_| Closed)?;
        }
        Ok(())
    }
}

/// A stage that failed: the process must stop, naming it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub stage: String,
    pub message: String,
}

/// Where each consumer receives its parts.
struct Inboxes {
    stages: Vec<Sender<Part>>,
    sink: Sender<Part>,
}

impl Inboxes {
    fn emitter(&self, routes: &[Route]) -> Emitter {
        Emitter {
            routes: routes
                .iter()
                .map(|r| {
                    let tx = match r.to {
                        Destination::Stage(s) => self.stages[s].clone(),
                        Destination::Sink => self.sink.clone(),
                    };
                    (tx, r.values.clone(), r.to)
                })
                .collect(),
        }
    }
}

/// Bounded channel capacity in front of the sink. The sink always drains it, so its size only
/// smooths bursts; the in-flight budget bounds what waits there.
fn sink_queue(plan: &Plan) -> usize {
    plan.budget.chunks
}

/// Build the channels of a plan's stages and the sink; returns the inboxes and receivers.
fn channels(plan: &Plan) -> (Inboxes, Vec<StageChannels>, Receiver<Part>) {
    let (sink_tx, sink_rx) = bounded(sink_queue(plan));
    let mut inboxes = Vec::new();
    let mut stage_channels = Vec::new();
    for stage in &plan.stages {
        let (work_tx, work_rx) = bounded(stage.queue);
        if stage.producers.len() > 1 {
            let (join_tx, join_rx) = bounded(stage.queue);
            inboxes.push(join_tx);
            stage_channels.push(StageChannels {
                work_rx,
                join: Some((join_rx, work_tx)),
            });
        } else {
            inboxes.push(work_tx);
            stage_channels.push(StageChannels {
                work_rx,
                join: None,
            });
        }
    }
    (
        Inboxes {
            stages: inboxes,
            sink: sink_tx,
        },
        stage_channels,
        sink_rx,
    )
}

struct StageChannels {
    work_rx: Receiver<Part>,
    /// For a stage fed by several producers: the join's inbox and its hand-off to the workers.
    join: Option<(Receiver<Part>, Sender<Part>)>,
}
