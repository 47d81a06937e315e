//! Stage actors: workers that run a stage's layers on each chunk (and, when a replica panics,
//! restart it and isolate the records that fail: [`super::supervise`]), and joins that assemble a
//! chunk's parts from several producers.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use ndarray::{ArrayD, Axis, IxDyn, Slice};

use super::source::{parse, Parsed, ParsingInbox};
use super::stats::StageCounters;
use super::supervise::{bisect, even_split, Supervisor};
use super::trace::Tracer;
use super::{merge_poisoned, ChunkTags, Emitter, Failure, Part, PoisonedRecord};
use crate::graph::plan::StagePlan;
use crate::graph::{Env, Plan, ValueId};
use crate::ops::{Rows, Scratch, Team};

/// One replica of a stage: `while let Ok(part) = rx.recv()`, compute, emit.
pub(super) struct StageWorker {
    pub plan: Arc<Plan>,
    pub stage: usize,
    pub replica: usize,
    pub rx: Receiver<Part>,
    pub emitter: Emitter,
    pub counters: Arc<super::stats::Counters>,
    pub failures: Sender<Failure>,
    pub tracer: Option<Tracer>,
    pub supervisor: Arc<Supervisor>,
    /// For the stage that parses (`parse: true`) in a run: where its lines come from. `rx`
    /// then stays empty.
    pub parsing: Option<ParsingInbox>,
}

/// A computation that panicked.
struct Panicked {
    /// The position (in the stage's layers) of the layer that panicked: the environment holds
    /// what was live before it.
    layer: usize,
    message: String,
}

impl StageWorker {
    /// Work until the stage's queue closes: on this thread, or with `threads: N` inside a pool
    /// of N threads that the layers spread each chunk over ([`Team`]).
    pub fn run(self) {
        let stage = &self.plan.stages[self.stage];
        let team = Team::new(stage.threads);
        match team.pool(&stage.name) {
            Ok(None) => self.work(team),
            Ok(Some(pool)) => pool.install(move || self.work(team)),
            Err(message) => {
                let _ = self.failures.send(Failure {
                    stage: stage.name.clone(),
                    message,
                });
            }
        }
    }

    fn work(self, team: Team) {
        let stage = &self.plan.stages[self.stage];
        let counters: &StageCounters = &self.counters.stages[self.stage + 1].2;
        let mut scratch = Scratch::for_team(team);
        // A route leaves as soon as its last value is computed, not when the whole stage is
        // done: a stage that feeds a concurrent stage (a shard) and then works on (another
        // shard) lets it start at once. What a later panic changes reaches the sink through the
        // stage's later routes (poisoned records are merged there).
        let ready = self.emitter.ready_after(&stage.layers);
        // Routes ready only after the last layer leave with the final emit, below.
        let last = ready.iter().copied().max().flatten();
        let patience = super::patience(stage.core);
        let mut sent = vec![false; ready.len()];
        // What the spare outputs may hold as a chunk starts (see `Scratch::output`).
        let spare_floats = stage
            .activation_bytes_per_chunk
            .saturating_sub(stage.input_bytes_per_chunk) as usize
            / 4;
        loop {
            let Some((mut tags, mut env, waited)) = self.next_chunk(patience) else {
                break;
            };
            scratch.keep_at_most(spare_floats);
            let t1 = Instant::now();
            let whole = Attempt {
                from: 0,
                rows: 0..tags.rows,
                zeroed: &[],
            };
            let mut done = 0;
            sent.iter_mut().for_each(|s| *s = false);
            let mut closed = false;
            let computed = catch_unwind(AssertUnwindSafe(|| {
                let mut early = |after: Option<usize>, env: &Env| {
                    let due = |r: usize| ready[r] == after;
                    if after < last && (0..ready.len()).any(due) {
                        closed |= self.emitter.emit_some(&tags, env, None, due).is_err();
                        for (r, s) in sent.iter_mut().enumerate() {
                            *s |= due(r);
                        }
                    }
                };
                early(None, &env);
                self.compute(&mut env, &whole, &tags, &mut scratch, &mut done, &mut early)
            }));
            if closed {
                return; // downstream is gone: the pipeline is stopping
            }
            if let Err(payload) = computed {
                // The restart: the layers are shared and immutable; only the scratch buffers a
                // panicking kernel may have left half written are the replica's own.
                scratch = Scratch::for_team(team);
                let failed = Panicked {
                    layer: done,
                    message: panic_message(&*payload),
                };
                match self.supervise(&mut env, &tags, failed, &mut scratch, counters) {
                    Ok(found) => merge_poisoned(&mut tags.poisoned, found),
                    Err(failure) => {
                        let _ = self.failures.send(failure);
                        return;
                    }
                }
            }
            let t2 = Instant::now();
            if self
                .emitter
                .emit_some(&tags, &env, None, |r| !sent[r])
                .is_err()
            {
                return; // downstream is gone: the pipeline is stopping
            }
            let t3 = Instant::now();
            counters.record(waited, t2 - t1, t3 - t2);
            if let Some(tracer) = &self.tracer {
                tracer.span(&stage.name, self.replica, tags.chunk, t1, t2);
            }
        }
    }

    /// The next chunk to compute and how long the worker waited for it: from the stage's queue,
    /// or (the parsing stage in a run) parsed here from the chunker's lines, its parse counted
    /// as the source's work. `None` once the input has ended or the pipeline is stopping.
    fn next_chunk(&self, patience: usize) -> Option<(ChunkTags, Env, Duration)> {
        let t0 = Instant::now();
        let Some(inbox) = &self.parsing else {
            let part = super::recv_with_patience(&self.rx, patience).ok()?;
            let tags = ChunkTags {
                chunk: part.chunk,
                rows: part.rows,
                lines: part.lines,
                poisoned: part.poisoned,
            };
            let mut env = Env::new(self.plan.graph.nodes.len(), part.rows, part.seqs);
            for (v, t) in part.values {
                env.set(v, t);
            }
            return Some((tags, env, t0.elapsed()));
        };
        let chunk = super::recv_with_patience(&inbox.rx, patience).ok()?;
        let t1 = Instant::now();
        let Parsed { tags, env, meta } = parse(&self.plan, &inbox.parser, &chunk);
        let t2 = Instant::now();
        inbox.others.emit(&tags, &env, Some(meta)).ok()?;
        self.counters.stages[0]
            .2
            .record(Duration::ZERO, t2 - t1, t2.elapsed());
        if let Some(t) = &self.tracer {
            t.span("parse", self.replica, tags.chunk, t1, t2);
        }
        Some((tags, env, t1 - t0))
    }

    /// Evaluate the stage's layers from `run.from` on, counting in `done` the layers that
    /// finished, so that after a panic the caller knows which layer failed.
    fn compute(
        &self,
        env: &mut Env,
        run: &Attempt,
        tags: &ChunkTags,
        scratch: &mut Scratch,
        done: &mut usize,
        after: &mut dyn FnMut(Option<usize>, &Env),
    ) {
        let stage = &self.plan.stages[self.stage];
        *done = run.from;
        // Tests' fault injection (`fault`): fails here as a panicking kernel would.
        #[cfg(feature = "fail-points")]
        if run.from == 0 {
            if let Some(fault) = super::fault::injected(&super::fault::FaultSite {
                stage: &stage.name,
                chunk: tags.chunk,
                rows: run.rows.clone(),
                lines: &tags.lines[run.rows.clone()],
                zeroed: run.zeroed,
            }) {
                panic!("{fault}");
            }
        }
        #[cfg(not(feature = "fail-points"))]
        let _ = (tags, &run.rows, run.zeroed);
        for j in run.from..stage.layers.len() {
            self.plan
                .graph
                .eval_at(&stage.layers, j, env, &stage.frees, scratch);
            *done = j + 1;
            after(Some(j), env);
        }
    }

    /// After a panic on a chunk: count the restart against the stage's budget, then re-run the
    /// chunk from the layer that failed to find the records that fail on their own. Leaves the
    /// stage's outputs for the whole chunk in `env` (zeros in the rows of poisoned records) and
    /// returns those records; a [`Failure`] ends the run.
    fn supervise(
        &self,
        env: &mut Env,
        tags: &ChunkTags,
        failed: Panicked,
        scratch: &mut Scratch,
        counters: &StageCounters,
    ) -> Result<Vec<PoisonedRecord>, Failure> {
        let stage = &self.plan.stages[self.stage];
        let budget = &self.supervisor.budgets[self.stage];
        counters.restarts.fetch_add(1, Relaxed);
        let restarts = budget.restart(Instant::now()).map_err(|e| Failure {
            stage: stage.name.clone(),
            message: format!(
                "more than {} restarts within a minute (max_restarts; {} now); the last panic: {}",
                budget.per_minute, e.restarts, failed.message
            ),
        })?;
        tracing::warn!(
            stage = %stage.name,
            replica = self.replica,
            chunk = tags.chunk,
            restarts_this_minute = restarts,
            max_restarts = budget.per_minute,
            error = %failed.message,
            "stage replica panicked: restarted; re-running its chunk to find the records that fail"
        );
        let isolated = catch_unwind(AssertUnwindSafe(|| {
            let _one_at_a_time = self.supervisor.isolating();
            self.isolate(env, tags, failed, scratch)
        }));
        let isolation = isolated.map_err(|payload| Failure {
            stage: stage.name.clone(),
            message: format!(
                "isolating the failing records of chunk {}: {}",
                tags.chunk,
                panic_message(&*payload)
            ),
        })?;
        let Isolation {
            poisoned,
            runs,
            in_place,
        } = isolation;
        let lines: Vec<u64> = poisoned.iter().map(|p| tags.lines[p.row]).collect();
        if lines.is_empty() {
            tracing::warn!(stage = %stage.name, chunk = tags.chunk, runs, whole_chunk_rerun = in_place, "no record fails on its own: none poisoned");
        } else {
            tracing::warn!(stage = %stage.name, chunk = tags.chunk, runs, whole_chunk_rerun = in_place, lines = ?lines, "records poisoned: each is written as an error line");
        }
        Ok(poisoned)
    }

    /// Find the failing records by bisection from the failed layer on, then compute the
    /// stage's outputs. Returns the poisoned records and the re-runs made.
    ///
    /// Bisection computes the good records in sub-chunks; kernels that tile rows (the packed
    /// dense kernel) may round a record differently at another position in a smaller chunk. So
    /// once the poisoned records are known, the whole chunk is run once more with their rows
    /// zeroed: every good record is then computed where it was, exactly as in a run without the
    /// failure. Only if that run panics too do the sub-chunks' results stand.
    fn isolate(
        &self,
        env: &mut Env,
        tags: &ChunkTags,
        failed: Panicked,
        scratch: &mut Scratch,
    ) -> Isolation {
        let stage = &self.plan.stages[self.stage];
        let graph = &self.plan.graph;
        let from = failed.layer;
        let records = env.records;
        let live = live_before(stage, from);
        let routed: BTreeSet<ValueId> = stage
            .routes
            .iter()
            .flat_map(|r| r.values.iter().copied())
            .collect();
        let made_later: BTreeSet<ValueId> = stage.layers[from..]
            .iter()
            .map(|&l| ValueId::of_layer(l))
            .collect();
        let seqs = env.seqs.clone();
        // Row range of `v` that holds records `records`.
        let rows_of = |v: ValueId, records: &Range<usize>| match (graph.rows(v), &seqs) {
            (Rows::Tokens, Some(s)) => s[records.start]..s[records.end],
            _ => records.clone(),
        };
        // The stage's outputs that the failed layer and those after it make, at full size.
        let mut assembled: Vec<(ValueId, ArrayD<f32>)> = routed
            .intersection(&made_later)
            .map(|&v| {
                let mut shape = vec![rows_of(v, &(0..records)).len()];
                shape.extend_from_slice(graph.carried_shape(v));
                (v, ArrayD::zeros(IxDyn(&shape)))
            })
            .collect();
        let found = {
            let env = &*env;
            let split = |r: &Range<usize>| even_split(r, seqs.as_deref());
            bisect(records, failed.message, split, |part| {
                let attempt = catch_unwind(AssertUnwindSafe(|| {
                    let sub_seqs = seqs.as_ref().map(|s| {
                        s[part.start..=part.end]
                            .iter()
                            .map(|o| o - s[part.start])
                            .collect::<Arc<[usize]>>()
                    });
                    let mut sub = Env::new(graph.nodes.len(), part.len(), sub_seqs);
                    for &v in &live {
                        let r = rows_of(v, &part);
                        let slice = env.get(v).slice_axis(Axis(0), Slice::from(r)).to_owned();
                        sub.set(v, Arc::new(slice));
                    }
                    let run = Attempt {
                        from,
                        rows: part.clone(),
                        zeroed: &[],
                    };
                    let mut done = from;
                    self.compute(&mut sub, &run, tags, scratch, &mut done, &mut |_, _| {});
                    for (v, full) in &mut assembled {
                        let r = rows_of(*v, &part);
                        full.slice_axis_mut(Axis(0), Slice::from(r))
                            .assign(sub.get(*v).as_ref());
                    }
                }));
                attempt.map_err(|payload| {
                    *scratch = Scratch::for_team(scratch.team());
                    panic_message(&*payload)
                })
            })
        };
        let poisoned: Vec<usize> = found.poisoned.iter().map(|p| p.0).collect();
        let mut runs = found.runs;
        let mut in_place = false;
        if poisoned.len() < records {
            // The whole chunk again, in place, with the poisoned records' rows zeroed.
            zero_rows(env, &live, &poisoned, rows_of);
            let run = Attempt {
                from,
                rows: 0..records,
                zeroed: &poisoned,
            };
            let mut done = from;
            runs += 1;
            in_place = catch_unwind(AssertUnwindSafe(|| {
                self.compute(env, &run, tags, scratch, &mut done, &mut |_, _| {})
            }))
            .is_ok();
            if !in_place {
                *scratch = Scratch::for_team(scratch.team());
            }
        }
        if !in_place {
            for (v, full) in assembled {
                env.set(v, Arc::new(full));
            }
        }
        // No output of this stage carries anything of a poisoned record.
        let routed: Vec<ValueId> = routed.into_iter().collect();
        zero_rows(env, &routed, &poisoned, rows_of);
        let name = &stage.name;
        let poisoned = found
            .poisoned
            .into_iter()
            .map(|(row, message)| PoisonedRecord {
                row,
                error: format!("stage {name}: {message}"),
            })
            .collect();
        Isolation {
            poisoned,
            runs,
            in_place,
        }
    }
}

/// What isolating a failed chunk found and did.
struct Isolation {
    poisoned: Vec<PoisonedRecord>,
    /// Re-runs made: of parts of the chunk, and of the whole.
    runs: usize,
    /// The outputs come from a run of the whole chunk (poisoned records zeroed), not from parts.
    in_place: bool,
}

/// One evaluation of a stage's layers: from which layer, over which records of the chunk, and
/// which of those hold zeros in place of a poisoned record.
struct Attempt<'a> {
    from: usize,
    rows: Range<usize>,
    zeroed: &'a [usize],
}

/// Zero the rows of `records` in `values` of `env`.
fn zero_rows(
    env: &mut Env,
    values: &[ValueId],
    records: &[usize],
    rows_of: impl Fn(ValueId, &Range<usize>) -> Range<usize>,
) {
    if records.is_empty() {
        return;
    }
    for &v in values {
        let mut t = env.get(v).clone();
        // Held only here now (unless another consumer shares it), so `make_mut` changes it in
        // place rather than copying it.
        env.set(v, Arc::new(ArrayD::zeros(IxDyn(&[0]))));
        let values = Arc::make_mut(&mut t);
        for &r in records {
            let rows = rows_of(v, &(r..r + 1));
            values.slice_axis_mut(Axis(0), Slice::from(rows)).fill(0.0);
        }
        env.set(v, t);
    }
}

/// The values live in a stage's environment just before its layer at position `at`: its inputs
/// and the outputs of the layers before, less those already dropped.
fn live_before(stage: &StagePlan, at: usize) -> Vec<ValueId> {
    let mut live: BTreeSet<ValueId> = stage.inputs.iter().copied().collect();
    for j in 0..at {
        live.insert(ValueId::of_layer(stage.layers[j]));
        for v in &stage.frees[j] {
            live.remove(v);
        }
    }
    live.into_iter().collect()
}

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Gathers each chunk's parts from `producers` senders and hands complete chunks to the workers.
/// It drains its inbox whatever arrives first, so no producer waits on another: joins cannot
/// deadlock, and what they hold is bounded by the in-flight budget.
pub(super) fn run_join(
    inbox: Receiver<Part>,
    out: Sender<Part>,
    producers: usize,
    patience: usize,
) {
    let mut pending: HashMap<u64, (usize, Part)> = HashMap::new();
    while let Ok(part) = super::recv_with_patience(&inbox, patience) {
        let chunk = part.chunk;
        let complete = match pending.remove(&chunk) {
            None => (1, part),
            Some((n, mut acc)) => {
                acc.values.extend(part.values);
                merge_poisoned(&mut acc.poisoned, part.poisoned);
                (n + 1, acc)
            }
        };
        if complete.0 == producers {
            if out.send(complete.1).is_err() {
                return;
            }
        } else {
            pending.insert(chunk, complete);
        }
    }
}
