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
//! waits for signals ([`shutdown`]) and serves `/metrics` ([`metrics`]), each on a thread of its own.
//!
//! Shutdown is a cascade: the source stops, every actor drains its queue and drops its senders,
//! and the sink flushes when its last producer is gone.
//!
//! A stage replica that panics is restarted and the chunk re-run to find the records that fail
//! (`supervise.rs`): those travel on as [`PoisonedRecord`]s, zeros in every later value, and the
//! sink writes an error line for each; a stage that keeps failing ends the run.

pub mod budget;
#[cfg(any(test, feature = "fail-points"))]
mod fault;
mod label;
pub mod metrics;
pub mod pin;
pub mod reload;
mod run;
pub mod shutdown;
mod sink;
mod source;
mod stage;
pub mod stats;
mod supervise;
pub mod trace;

use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::graph::plan::{Destination, Route};
use crate::graph::{Env, Plan, ValueId};
use crate::io::ChunkMeta;
use crate::ops::Tensor;

pub use label::{Label, LabelError};
pub use run::{
    quiet_stage_panics, run_bench_pipeline, run_stream, BenchRun, Reload, RunError, RunOptions,
    RunReport,
};
pub(crate) use source::record_parser;
pub use stats::{RunStats, StageStats};
pub use supervise::DEFAULT_MAX_RESTARTS;

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
    /// The input line of each record (row), so a supervisor can name the records it isolates.
    pub lines: Arc<[u64]>,
    /// Records a stage failed on, so far: their rows hold zeros from that stage on, and the sink
    /// writes an error line for each instead of an output line. Empty on the healthy path.
    pub poisoned: Vec<PoisonedRecord>,
    /// The chunk's record metadata; only the source's part for the sink carries it.
    pub meta: Option<Box<ChunkMeta>>,
}

/// A record a stage could not compute (it panicked on it alone): the rows stay in the chunk,
/// so every branch stays aligned, but the record is reported instead of written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoisonedRecord {
    /// The record's row in its chunk.
    pub row: usize,
    /// What the error line says: `stage NAME: MESSAGE`.
    pub error: String,
}

/// Add `more` to a chunk's poisoned records: one entry per row, in row order. A record that
/// failed in two stages (two branches) keeps both messages, in an order that does not depend on
/// which part arrived first.
pub fn merge_poisoned(into: &mut Vec<PoisonedRecord>, more: Vec<PoisonedRecord>) {
    if more.is_empty() {
        return;
    }
    into.extend(more);
    into.sort();
    into.dedup();
    let mut merged: Vec<PoisonedRecord> = Vec::with_capacity(into.len());
    for p in into.drain(..) {
        match merged.last_mut() {
            Some(last) if last.row == p.row => {
                last.error.push_str("; ");
                last.error.push_str(&p.error);
            }
            _ => merged.push(p),
        }
    }
    *into = merged;
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
    recv_with_patience(rx, PATIENCE)
}

/// How many times a stage's threads yield before parking: `PATIENCE` (256), or none for a stage
/// pinned to a core (see [`recv_with_patience`]).
pub fn patience(core: Option<usize>) -> usize {
    if core.is_some() {
        0
    } else {
        PATIENCE
    }
}

/// [`recv_patiently`] with `patience` yields before parking. A thread pinned to a core parks at
/// once (`patience` 0): while it yields, it takes turns on its core with the stage computing
/// there (a latency plan pins dozens of stages to two cores; measured, their yields doubled
/// each shard's time and made 340 000 context switches in 24 images).
pub fn recv_with_patience<T>(
    rx: &Receiver<T>,
    patience: usize,
) -> Result<T, crossbeam_channel::RecvError> {
    for _ in 0..patience {
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

/// What every part of a chunk carries besides its values and metadata.
#[derive(Debug, Clone)]
pub struct ChunkTags {
    pub chunk: ChunkId,
    pub rows: usize,
    pub lines: Arc<[u64]>,
    pub poisoned: Vec<PoisonedRecord>,
}

impl Emitter {
    /// Send each consumer its values of this chunk; `meta` goes to the sink.
    pub fn emit(
        &self,
        tags: &ChunkTags,
        env: &Env,
        meta: Option<Box<ChunkMeta>>,
    ) -> Result<(), Closed> {
        self.emit_some(tags, env, meta, |_| true)
    }

    /// This emitter without its routes to `to`.
    pub fn without(&self, to: Destination) -> Emitter {
        Emitter {
            routes: (self.routes.iter())
                .filter(|(_, _, d)| *d != to)
                .cloned()
                .collect(),
        }
    }

    /// For each route, the position in `layers` (a stage's nodes, in order) of the last layer
    /// whose output it carries: the route can be sent once that layer has run (`None`: it
    /// carries only values the stage received).
    pub fn ready_after(&self, layers: &[usize]) -> Vec<Option<usize>> {
        self.routes
            .iter()
            .map(|(_, values, _)| {
                values
                    .iter()
                    .filter_map(|v| v.layer())
                    .filter_map(|n| layers.iter().position(|&l| l == n))
                    .max()
            })
            .collect()
    }

    /// [`Self::emit`] for the routes `pick` (by index) selects.
    pub fn emit_some(
        &self,
        tags: &ChunkTags,
        env: &Env,
        mut meta: Option<Box<ChunkMeta>>,
        pick: impl Fn(usize) -> bool,
    ) -> Result<(), Closed> {
        for (_, (tx, values, to)) in self.routes.iter().enumerate().filter(|(i, _)| pick(*i)) {
            let values = values.iter().map(|v| (*v, env.get(*v).clone())).collect();
            let meta = if *to == Destination::Sink {
                meta.take()
            } else {
                None
            };
            tx.send(Part {
                chunk: tags.chunk,
                rows: tags.rows,
                values,
                seqs: env.seqs.clone(),
                lines: tags.lines.clone(),
                poisoned: tags.poisoned.clone(),
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

impl StageChannels {
    /// `/metrics`' view of the stage's input: its workers' queue and its join's inbox.
    fn queue_probe(&self) -> metrics::QueueProbe {
        let mut receivers = vec![self.work_rx.clone()];
        receivers.extend(self.join.as_ref().map(|(rx, _)| rx.clone()));
        metrics::QueueProbe::new(receivers)
    }
}
