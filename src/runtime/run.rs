//! Wiring a plan into running actors: the JSON-lines stream (`run`, `verify`) and the in-memory
//! benchmark feed (`bench`), which share the stage actors and the sink.

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};

use super::budget::InFlight;
use super::label::Label;
use super::metrics::{Exporter, Probe, Publication, QueueProbe};
use super::sink::{run_sink, ChunkOutput, CompletedChunk};
use super::source::{
    record_parser, run_chunker, ChunkTarget, ParserWorker, ParsingInbox, RawChunk, TokenBudget,
};
use super::stage::{run_join, StageWorker};
use super::stats::{Counters, RecordCounters, RunStats};
use super::supervise::{RestartBudget, Supervisor, DEFAULT_MAX_RESTARTS};
use super::trace::Tracer;
use super::{channels, ChunkTags, Emitter, Failure, Inboxes, Part, StageChannels};
use crate::graph::plan::Destination;
use crate::graph::Plan;
use crate::io::{
    self as rio, output_names, write_rejection, InputFormat, OutputFormatter, RecordKey,
    RecordMeta, RecordParser, Rejection,
};

/// How `run` treats its input and reports.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub format: InputFormat,
    pub max_line_bytes: usize,
    /// The first bad record is fatal.
    pub strict: bool,
    /// Log the stats this often.
    pub stats_interval: Option<Duration>,
    pub trace: Option<PathBuf>,
    /// The passthrough field holding each record's class; tallies argmax accuracy.
    pub label: Option<Label>,
    /// Load the pipeline file again on these requests.
    pub reload: Option<Reload>,
    /// `--metrics`: where scrapes read this run's counters, queues and budget.
    pub metrics: Option<Arc<Exporter>>,
    /// The file the plan was loaded from: its hash names the pipeline's version in `/metrics`.
    pub pipeline_file: Option<PathBuf>,
    /// Restarts per minute allowed to each stage that does not set `max_restarts` itself.
    pub max_restarts: u32,
    /// Write every output value even where the pipeline asks for `output.top_k` (`verify`
    /// compares them all).
    pub whole_outputs: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            format: InputFormat::JsonLines,
            max_line_bytes: rio::DEFAULT_MAX_LINE_BYTES,
            strict: false,
            stats_interval: None,
            trace: None,
            label: None,
            reload: None,
            metrics: None,
            pipeline_file: None,
            max_restarts: DEFAULT_MAX_RESTARTS,
            whole_outputs: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("stage `{stage}` failed: {message}")]
    StageFailed { stage: String, message: String },
    #[error("line {line}: {error} (--strict stops at the first bad record)")]
    Strict { line: u64, error: String },
    /// The reader of our output went away (`| head`): stop quietly.
    #[error("output closed by its reader")]
    OutputClosed,
    #[error("writing output: {0}")]
    Output(io::Error),
    #[error("reading input: {0}")]
    Input(io::Error),
    #[error("internal error: {0}")]
    Internal(String),
    /// The input format does not fit the pipeline's records.
    #[error("{0}")]
    Format(String),
}

/// What a finished run reports.
#[derive(Debug)]
pub struct RunReport {
    pub stats: RunStats,
    /// What the accuracy in `stats` was scored against, to name it in the summary.
    pub label: Option<Label>,
}

impl RunReport {
    /// What `run` prints on stderr at exit: the statistics, then the accuracy under `--label`.
    pub fn summary(&self) -> String {
        let mut s = self.stats.summary();
        if let (Some(label), Some(accuracy)) = (&self.label, &self.stats.accuracy) {
            s.push_str(&label.describe(accuracy));
        }
        s
    }
}

/// A started set of stage actors, waiting for a source and a sink.
struct Running {
    counters: Arc<Counters>,
    /// Sends the model input (and each chunk's metadata) to whoever reads it.
    source: Emitter,
    /// Everything the sink joins: pipeline outputs and chunk metadata.
    sink_rx: Receiver<Part>,
    /// Stage workers and joins; joined after a clean finish.
    threads: Vec<JoinHandle<()>>,
    /// Each stage's input queue, for `/metrics` (index in `counters.stages`).
    queues: Vec<(usize, QueueProbe)>,
}

/// The name of every stage replica's thread starts with this.
const STAGE_THREAD: &str = "subpass-stage-";

/// Stage panics are reported once, with the stage's name, by the runtime; this keeps the default
/// hook's message and backtrace for panics anywhere else. For a process that runs pipelines.
pub fn quiet_stage_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_stage = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with(STAGE_THREAD));
        if !in_stage {
            default(info);
        }
    }));
}

/// `core: N` on a stage: pin the calling thread, or say once per thread why not and run
/// unpinned.
fn pin_stage(stage: &str, core: Option<usize>) {
    if let Some(core) = core {
        if let Err(e) = super::pin::current_thread_to(core) {
            tracing::warn!(stage, core, "not pinned: {e}");
        }
    }
}

fn spawn_named(name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawn a pipeline thread")
}

/// Start every stage actor (and join) of `plan`; they count into `records` (the stream's,
/// shared by every version of the pipeline) and report failures to `failures_tx`. A stage
/// without its own `max_restarts` may restart `max_restarts` times a minute.
fn spawn_stages(
    plan: &Arc<Plan>,
    tracer: &Option<Tracer>,
    records: Arc<RecordCounters>,
    failures_tx: &Sender<Failure>,
    max_restarts: u32,
    lines: Option<(&Receiver<RawChunk>, &RecordParser)>,
) -> Running {
    // The threads that parse: the parser threads, or the parsing stage's workers.
    let parsing_stage = plan.parsing_stage();
    let parse_threads = parsing_stage.map_or(plan.parsers, |s| plan.stages[s].replicas);
    let mut stage_names = vec![("source.parse".to_string(), parse_threads)];
    stage_names.extend(plan.stages.iter().map(|s| (s.name.clone(), s.replicas)));
    let counters = Counters::sharing(stage_names, records);
    let (inboxes, stage_channels, sink_rx): (Inboxes, Vec<StageChannels>, _) = channels(plan);
    let supervisor = Arc::new(Supervisor::new(
        plan.stages
            .iter()
            .map(|s| RestartBudget::new(s.max_restarts.unwrap_or(max_restarts)))
            .collect(),
    ));
    let mut threads = Vec::new();
    let queues = (stage_channels.iter().enumerate())
        .map(|(s, ch)| (s + 1, ch.queue_probe()))
        .collect();
    let source = inboxes.emitter(&plan.source_routes);
    for (s, (stage, ch)) in plan.stages.iter().zip(stage_channels).enumerate() {
        let emitter = inboxes.emitter(&stage.routes);
        for replica in 0..stage.replicas {
            // In a run, the parsing stage takes lines; fed from memory, parsed chunks as any.
            let parsing = match lines {
                Some((rx, parser)) if parsing_stage == Some(s) => Some(ParsingInbox {
                    rx: rx.clone(),
                    parser: parser.clone(),
                    others: source.without(Destination::Stage(s)),
                }),
                _ => None,
            };
            let worker = StageWorker {
                plan: plan.clone(),
                stage: s,
                replica,
                rx: ch.work_rx.clone(),
                emitter: emitter.clone(),
                counters: counters.clone(),
                failures: failures_tx.clone(),
                tracer: tracer.clone(),
                supervisor: supervisor.clone(),
                parsing,
            };
            let (core, name) = (stage.core, stage.name.clone());
            threads.push(spawn_named(
                format!("{STAGE_THREAD}{}-{replica}", stage.name),
                move || {
                    pin_stage(&name, core);
                    worker.run()
                },
            ));
        }
        if let Some((join_rx, work_tx)) = ch.join {
            let producers = stage.producers.len();
            let (core, name) = (stage.core, stage.name.clone());
            threads.push(spawn_named(
                format!("subpass-join-{}", stage.name),
                move || {
                    // A pinned stage's join runs on its core and parks at once, as its workers.
                    pin_stage(&name, core);
                    run_join(join_rx, work_tx, producers, super::patience(core))
                },
            ));
        }
    }
    // `inboxes` drops here: only emitters hold senders now, so the cascade can close every channel.
    Running {
        counters,
        source,
        sink_rx,
        threads,
        queues,
    }
}

/// Wait for the sink to finish, or for a stage to fail first.
fn wait(done: Receiver<Result<(), RunError>>, failures: Receiver<Failure>) -> Result<(), RunError> {
    select! {
        recv(done) -> r => {
            // A stage may have failed and the sink then finished short: the failure explains it.
            if let Ok(f) = failures.try_recv() {
                return Err(RunError::StageFailed { stage: f.stage, message: f.message });
            }
            r.unwrap_or_else(|_| Err(RunError::Internal("the output writer stopped".into())))
        }
        recv(failures) -> f => {
            let f = f.expect("the runner holds a sender");
            Err(RunError::StageFailed { stage: f.stage, message: f.message })
        }
    }
}

/// Logs the stats every `every`, of whichever version of the pipeline `shown` holds.
fn spawn_stats_logger(
    shown: Arc<std::sync::Mutex<Arc<Counters>>>,
    every: Duration,
    start: Instant,
    stop: Receiver<()>,
) {
    spawn_named("subpass-stats".into(), move || loop {
        select! {
            recv(stop) -> _ => return,
            default(every) => {
                let counters = shown.lock().map(|c| c.clone()).unwrap_or_else(|e| e.into_inner().clone());
                let s = counters.snapshot(start.elapsed());
                tracing::info!(records_in = s.records_in, records_out = s.records_out, records_rejected = s.records_rejected, records_per_s = s.records_per_s as u64, "stats");
                for st in &s.stages {
                    tracing::info!(stage = %st.name, chunks = st.chunks, busy_pct = format!("{:.1}", st.busy_pct), wait_in_s = format!("{:.3}", st.wait_in_s), wait_out_s = format!("{:.3}", st.wait_out_s), "stage stats");
                }
            }
        }
    });
}

/// Text pipelines read `--format text` or JSON lines; image pipelines `--format paths`, JSON
/// lines or CSV; the others, JSON lines or CSV.
fn check_format(plan: &Plan, format: InputFormat) -> Result<(), RunError> {
    match (plan.tokenizer.is_some(), plan.image.is_some(), format) {
        (true, _, InputFormat::Csv) => Err(RunError::Format(
            "this pipeline's records are text: use --format text or --format jsonl".into(),
        )),
        (false, _, InputFormat::Text) => Err(RunError::Format(
            "--format text needs a pipeline whose input is text (`input: {text: ...}`)".into(),
        )),
        (_, false, InputFormat::Paths) => Err(RunError::Format(
            "--format paths needs a pipeline whose input is images (`input: {image: ...}`)".into(),
        )),
        _ => Ok(()),
    }
}

/// Loading the pipeline file again while running: SIGHUP, or `--watch` seeing it change.
#[derive(Debug, Clone)]
pub struct Reload {
    pub path: PathBuf,
    /// One message per request.
    pub requests: Receiver<()>,
}

/// One version of the pipeline while it runs: its actors, and the end of the chain that hands
/// the output writer from version to version.
struct Version {
    number: u64,
    counters: Arc<Counters>,
    /// Yields the writer once this version's sink has written its last chunk (or the first
    /// error of this or an earlier version).
    tail: Receiver<Result<JsonOutput, RunError>>,
    threads: Vec<JoinHandle<()>>,
    /// This version's place in `/metrics`, given back when the run ends.
    published: Option<Publication>,
}

/// Start `plan`'s parsers, stages and sink. The sink writes nothing before `writer_in` hands it
/// the writer, when the version before it has written its last chunk: output stays in input
/// order across versions, while this one computes its first chunks (bounded by its own
/// in-flight budget). Returns the version and where the chunker sends it chunks.
#[allow(clippy::too_many_arguments)]
fn start_version(
    plan: Arc<Plan>,
    number: u64,
    options: &RunOptions,
    label: Option<Label>,
    tracer: &Option<Tracer>,
    records: &Arc<RecordCounters>,
    failures: &Sender<Failure>,
    writer_in: Receiver<Result<JsonOutput, RunError>>,
    started: Instant,
) -> (Version, ChunkTarget) {
    let (chunks_tx, chunks_rx) = bounded::<RawChunk>(plan.parse_queue);
    let parser = record_parser(&plan, &plan.output.passthrough, options.format);
    let running = spawn_stages(
        &plan,
        tracer,
        records.clone(),
        failures,
        options.max_restarts,
        Some((&chunks_rx, &parser)),
    );
    let budget = InFlight::new(plan.budget.chunks);
    let mut threads = running.threads;
    for replica in 0..plan.parsers {
        let worker = ParserWorker {
            plan: plan.clone(),
            parser: parser.clone(),
            rx: chunks_rx.clone(),
            emitter: running.source.clone(),
            counters: running.counters.clone(),
            tracer: tracer.clone(),
            replica,
        };
        threads.push(spawn_named(format!("subpass-parse-{replica}"), move || {
            worker.run()
        }));
    }
    drop(running.source);
    let published = publish_metrics(
        &plan,
        number,
        options,
        &running.counters,
        (running.queues, &chunks_rx),
        &budget,
        started,
    );

    let (tail_tx, tail) = bounded(1);
    let sink_plan = plan.clone();
    let whole_outputs = options.whole_outputs;
    let sink_rx = running.sink_rx;
    let sink_budget = budget.clone();
    threads.push(spawn_named("subpass-sink".into(), move || {
        let mut writer = match writer_in.recv() {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                let _ = tail_tx.send(Err(e));
                return;
            }
            Err(_) => {
                let _ = tail_tx.send(Err(RunError::Internal(
                    "the output writer was lost between pipeline versions".into(),
                )));
                return;
            }
        };
        writer.formatter = OutputFormatter::new(
            &sink_plan.output.field,
            sink_plan.output.argmax,
            &sink_plan.output.passthrough,
            &output_names(&sink_plan.graph),
        );
        if let (Some(k), false) = (&sink_plan.output.top_k, whole_outputs) {
            let labels = sink_plan.output.labels.as_ref().map(|l| l.names.as_slice());
            writer.formatter = writer.formatter.with_top_k(k.value, labels);
        }
        writer.label = label;
        let r = run_sink(
            sink_rx,
            sink_plan.sink_producers.len(),
            &sink_plan.graph.outputs,
            sink_plan.output.ordered,
            &sink_budget,
            &mut writer,
        );
        let _ = tail_tx.send(r.map(|()| writer));
    }));

    let batch = plan.batch;
    let target = ChunkTarget {
        out: chunks_tx,
        budget,
        size: batch.size,
        tokens: plan
            .tokenizer
            .as_ref()
            .zip(batch.max_tokens)
            .map(|(t, chunk)| TokenBudget {
                chunk,
                record: t.max_tokens(),
            }),
        max_delay: batch.max_delay,
        version: number,
    };
    let version = Version {
        number,
        counters: running.counters,
        tail,
        threads,
        published,
    };
    (version, target)
}

/// Load the pipeline file again for a reload: a plan that runs on this stream, or why not.
fn reload_plan(path: &Path, options: &RunOptions) -> Result<(Arc<Plan>, Option<Label>), String> {
    let plan = Plan::load(path).map_err(|e| e.to_string())?;
    let plan = crate::planner::resolve_auto(plan)?;
    check_format(&plan, options.format).map_err(|e| e.to_string())?;
    let label = options
        .label
        .as_ref()
        .map(|l| Label::resolve(&plan, &l.field))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok((Arc::new(plan), label))
}

/// Run a pipeline over a stream of records until the input ends or `shutdown` fires. With
/// `options.reload`, each request loads the pipeline file again: a file that does not load is
/// logged and the running version goes on; one that does takes every chunk formed from then on,
/// while the chunks in flight finish on the old version, in order, nothing lost or repeated.
pub fn run_stream(
    plan: Arc<Plan>,
    input: Box<dyn Read + Send>,
    output: Box<dyn Write + Send>,
    errors: Box<dyn Write + Send>,
    options: &RunOptions,
    shutdown: Receiver<()>,
) -> Result<RunReport, RunError> {
    let start = Instant::now();
    check_format(&plan, options.format)?;
    let tracer = options.trace.as_ref().map(|_| Tracer::new(start));
    let records: Arc<RecordCounters> = Arc::default();
    let (failures_tx, failures_rx) = unbounded();

    // Reader: lines in batches of the first version's chunk size (any size works for later
    // versions: the chunker regroups them).
    let (lines_tx, lines_rx) = bounded(rio::READER_QUEUE);
    let max_line = options.max_line_bytes;
    let read_batch = plan.batch.size;
    let read_buffer = plan.read_buffer_bytes();
    let reader_failures = failures_tx.clone();
    // In text, an empty line is a record (the empty text); elsewhere blank lines are skipped.
    let keep_blank = options.format == InputFormat::Text;
    // Not joined: after a signal it may sit in a read() on stdin until the process exits.
    spawn_named("subpass-reader".into(), move || {
        if let Err(e) = rio::read_lines(
            input,
            read_buffer,
            max_line,
            read_batch,
            keep_blank,
            &lines_tx,
        ) {
            let _ = reader_failures.send(Failure {
                stage: "reader".into(),
                message: format!("reading input: {e}"),
            });
        }
    });

    // The writer starts with the first version; each version hands it to the next. The run
    // keeps a handle on its streams to close them if it stops on an error.
    let streams = Arc::new(Mutex::new(Streams {
        out: BufWriter::with_capacity(64 << 10, output),
        errors,
        closed: false,
    }));
    let writer = JsonOutput {
        formatter: OutputFormatter::new("", false, &[], &[]),
        streams: streams.clone(),
        strict: options.strict,
        label: None,
        records: records.clone(),
        buf: Vec::new(),
        ebuf: Vec::new(),
    };
    let (first_tx, first_rx) = bounded(1);
    let _ = first_tx.send(Ok(writer));
    let (mut current, target) = start_version(
        plan,
        1,
        options,
        options.label.clone(),
        &tracer,
        &records,
        &failures_tx,
        first_rx,
        start,
    );
    let (swaps_tx, swaps_rx) = bounded::<ChunkTarget>(1);
    let mut threads = vec![spawn_named("subpass-chunker".into(), move || {
        run_chunker(lines_rx, shutdown, swaps_rx, target)
    })];

    let (stop_stats_tx, stop_stats_rx) = bounded::<()>(1);
    let shown = Arc::new(std::sync::Mutex::new(current.counters.clone()));
    if let Some(every) = options.stats_interval {
        spawn_stats_logger(shown.clone(), every, start, stop_stats_rx);
    }
    let requests = options
        .reload
        .as_ref()
        .map_or_else(crossbeam_channel::never, |r| r.requests.clone());
    let mut publications = Vec::new();
    let result = loop {
        select! {
            recv(current.tail) -> r => break match r {
                Ok(Ok(writer)) => {
                    drop(writer);
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(RunError::Internal("the output writer stopped".into())),
            },
            recv(failures_rx) -> f => {
                let f = f.expect("the runner holds a sender");
                break Err(RunError::StageFailed { stage: f.stage, message: f.message });
            }
            recv(requests) -> _ => {
                let path = &options.reload.as_ref().expect("requests come from a reload").path;
                match reload_plan(path, options) {
                    Err(e) => {
                        records.reloads_refused.fetch_add(1, Relaxed);
                        tracing::error!(version = current.number, "reload refused, the running pipeline goes on: {}: {e}", path.display());
                    }
                    Ok((plan, label)) => {
                        let previous = current;
                        let (next, target) = start_version(
                            plan,
                            previous.number + 1,
                            options,
                            label,
                            &tracer,
                            &records,
                            &failures_tx,
                            previous.tail,
                            start,
                        );
                        // After the input has ended the chunker is gone: the new version gets no
                        // chunks and finishes at once, handing the writer on.
                        let _ = swaps_tx.send(target);
                        threads.extend(previous.threads);
                        // Kept to the end: a publication given back clears what `/metrics`
                        // shows, which is the new version's now.
                        publications.extend(previous.published);
                        records.reloads.fetch_add(1, Relaxed);
                        tracing::info!(version = next.number, path = %path.display(), "pipeline reloaded");
                        *shown.lock().unwrap_or_else(|e| e.into_inner()) = next.counters.clone();
                        current = next;
                    }
                }
            }
        }
    };
    // A stage may have failed and the sink then finished short: the failure explains it.
    let result = match (result, failures_rx.try_recv()) {
        (Ok(()), Ok(f)) => Err(RunError::StageFailed {
            stage: f.stage,
            message: f.message,
        }),
        (r, _) => r,
    };
    if result.is_err() {
        close_streams(&streams);
    }
    drop(stop_stats_tx);
    if result.is_ok() {
        for t in threads.into_iter().chain(current.threads) {
            let _ = t.join();
        }
    }
    if let (Some(tracer), Some(path)) = (&tracer, &options.trace) {
        if let Err(e) = tracer.write(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the trace");
        }
    }
    result.map(|()| RunReport {
        stats: current.counters.snapshot(start.elapsed()),
        label: options.label.clone(),
    })
}

/// `--metrics`: export this run until the guard drops (when `run_stream` returns, which gives back
/// the queues' receivers even on a failure).
fn publish_metrics(
    plan: &Plan,
    version: u64,
    options: &RunOptions,
    counters: &Arc<Counters>,
    (mut queues, parse_queue): (Vec<(usize, QueueProbe)>, &Receiver<RawChunk>),
    budget: &InFlight,
    started: Instant,
) -> Option<Publication> {
    if let Some(path) = &options.pipeline_file {
        match std::fs::read(path) {
            Ok(bytes) => counters
                .records
                .pipeline
                .set(version, super::stats::file_hash(&bytes)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot hash the pipeline file")
            }
        }
    }
    let exporter = options.metrics.as_ref()?;
    queues.insert(0, (0, QueueProbe::new(vec![parse_queue.clone()])));
    Some(exporter.publish(Probe {
        counters: counters.clone(),
        pipeline_name: plan.name.clone(),
        started,
        queues,
        budget: budget.clone(),
        budget_limit: plan.budget.chunks,
    }))
}

/// Where output lines and error lines go. The writer holds the lock while it writes a chunk's
/// lines; a run stopping on an error takes it before it returns, so the process never exits in
/// the middle of a write: a killed `write` to a file can stop at any page boundary, and cut a
/// line in two.
struct Streams {
    out: BufWriter<Box<dyn Write + Send>>,
    errors: Box<dyn Write + Send>,
    /// Set by [`close_streams`]: nothing more is written.
    closed: bool,
}

/// Wait for the writer to finish the chunk it is writing, write out what it has buffered, and
/// close the streams to it: a run that stops on an error leaves whole lines, every one it wrote.
fn close_streams(streams: &Mutex<Streams>) {
    // A writer that panicked holding the lock left whole lines too: its writes are `write_all`s
    // of whole lines, and a panic cannot interrupt one halfway.
    let mut s = streams.lock().unwrap_or_else(|e| e.into_inner());
    if !s.closed {
        s.closed = true;
        // The run is failing already; a failure here has nothing to add to its error.
        let _ = s.out.flush();
        let _ = s.errors.flush();
    }
}

/// Writes JSON output lines and error lines.
struct JsonOutput {
    formatter: OutputFormatter,
    streams: Arc<Mutex<Streams>>,
    strict: bool,
    label: Option<Label>,
    records: Arc<RecordCounters>,
    /// Reused line buffers.
    buf: Vec<u8>,
    ebuf: Vec<u8>,
}

fn output_error(e: io::Error) -> RunError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        RunError::OutputClosed
    } else {
        RunError::Output(e)
    }
}

impl ChunkOutput for JsonOutput {
    fn write(&mut self, chunk: CompletedChunk) -> Result<(), RunError> {
        let meta = &chunk.meta;
        let r = &*self.records;
        // Error lines, in line order: lines that did not parse, and records a stage failed on
        // (poisoned), which are written here instead of their output line.
        let mut bad: Vec<Rejection> = meta.rejected.clone();
        if !chunk.poisoned.is_empty() {
            bad.extend(chunk.poisoned.iter().map(|p| Rejection {
                line: meta.records[p.row].line,
                error: p.error.clone(),
            }));
            bad.sort_by_key(|b| b.line);
        }
        // Under --strict, the records before the first bad line are written, then the run stops.
        let first_bad = if self.strict { bad.first() } else { None };
        let bad = match first_bad {
            Some(_) => &bad[..1],
            None => &bad[..],
        };
        let slices: Vec<&[f32]> = chunk
            .outputs
            .iter()
            .map(|t| t.as_slice().expect("outputs are contiguous"))
            .collect();
        let widths: Vec<usize> = slices
            .iter()
            .map(|s| s.len().checked_div(chunk.rows).unwrap_or(0))
            .collect();
        self.buf.clear();
        let mut written = 0u64;
        let mut parts: Vec<&[f32]> = Vec::with_capacity(slices.len());
        let mut poisoned = chunk.poisoned.iter().map(|p| p.row).peekable();
        for (row, rec) in meta.records.iter().enumerate() {
            if first_bad.is_some_and(|b| rec.line >= b.line) {
                break;
            }
            if poisoned.next_if_eq(&row).is_some() {
                continue;
            }
            parts.clear();
            parts.extend(
                slices
                    .iter()
                    .zip(&widths)
                    .map(|(s, w)| &s[row * w..(row + 1) * w]),
            );
            self.formatter.write_record(&mut self.buf, rec, &parts);
            written += 1;
            if let Some(label) = &self.label {
                label.tally(rec, parts[0], r);
            }
        }
        self.ebuf.clear();
        for rej in bad {
            write_rejection(&mut self.ebuf, rej);
        }
        let mut s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if s.closed {
            return Err(RunError::Internal("the output was closed".into()));
        }
        s.out.write_all(&self.buf).map_err(output_error)?;
        if !self.ebuf.is_empty() {
            s.errors.write_all(&self.ebuf).map_err(RunError::Output)?;
            s.errors.flush().map_err(RunError::Output)?;
        }
        if first_bad.is_some() {
            s.out.flush().map_err(output_error)?;
        }
        drop(s);
        self.records.latency.observe(meta.admitted_at.elapsed());
        r.records_in.fetch_add(written + bad.len() as u64, Relaxed);
        r.records_out.fetch_add(written, Relaxed);
        r.records_rejected.fetch_add(bad.len() as u64, Relaxed);
        match first_bad {
            Some(b) => Err(RunError::Strict {
                line: b.line,
                error: b.error.clone(),
            }),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), RunError> {
        let mut s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if s.closed {
            return Ok(());
        }
        s.out.flush().map_err(output_error)
    }
}

/// What `bench` measures of the decomposed pipeline.
#[derive(Debug)]
pub struct BenchRun {
    pub elapsed: Duration,
    pub records: usize,
    pub stats: RunStats,
    /// Admission-to-written time of every chunk.
    pub latencies: Vec<Duration>,
}

/// Run the stage actors over synthetic chunks fed from memory (no text parsing), discarding the
/// outputs: the decomposed pipeline's own throughput. `inputs` are reused round-robin.
/// `in_flight` overrides the plan's budget: 1 sends each chunk alone through an idle pipeline,
/// which measures latency without queueing.
pub fn run_bench_pipeline(
    plan: Arc<Plan>,
    inputs: Vec<Vec<f32>>,
    records: usize,
    tracer: Option<Tracer>,
    in_flight: Option<usize>,
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Result<BenchRun, RunError> {
    let start = Instant::now();
    let (failures_tx, failures_rx) = unbounded();
    let running = spawn_stages(
        &plan,
        &tracer,
        Arc::default(),
        &failures_tx,
        DEFAULT_MAX_RESTARTS,
        None,
    );
    let budget = InFlight::new(in_flight.unwrap_or(plan.budget.chunks).max(1));
    let size = plan.batch.size;
    let feeder_budget = budget.clone();
    let source = running.source;
    let feed_plan = plan.clone();
    let mut threads = running.threads;
    threads.push(spawn_named("subpass-feeder".into(), move || {
        let mut sent = 0;
        let mut id = 0;
        while sent < records {
            let rows = size.min(records - sent);
            let values =
                inputs[id as usize % inputs.len()][..rows * feed_plan.input_len()].to_vec();
            feeder_budget.admit();
            let meta = rio::ChunkMeta {
                records: (0..rows)
                    .map(|r| RecordMeta {
                        line: (sent + r + 1) as u64,
                        key: RecordKey::Line((sent + r + 1) as u64),
                        passthrough: Vec::new(),
                    })
                    .collect(),
                rejected: Vec::new(),
                admitted_at: Instant::now(),
            };
            let env = feed_plan.graph.input_env(rows, values, None);
            let tags = ChunkTags {
                chunk: id,
                rows,
                lines: meta.records.iter().map(|r| r.line).collect(),
                poisoned: Vec::new(),
            };
            if source.emit(&tags, &env, Some(Box::new(meta))).is_err() {
                return;
            }
            sent += rows;
            id += 1;
        }
    }));
    let counters = running.counters.clone();
    let (done_tx, done_rx) = bounded(1);
    let sink_plan = plan.clone();
    let sink_rx = running.sink_rx;
    let (lat_tx, lat_rx) = bounded(1);
    spawn_named("subpass-sink".into(), move || {
        let mut out = CountingOutput {
            latencies: Vec::new(),
            counters,
            progress,
        };
        let r = run_sink(
            sink_rx,
            sink_plan.sink_producers.len(),
            &sink_plan.graph.outputs,
            sink_plan.output.ordered,
            &budget,
            &mut out,
        );
        let _ = lat_tx.send(out.latencies);
        let _ = done_tx.send(r);
    });
    wait(done_rx, failures_rx)?;
    let elapsed = start.elapsed();
    for t in threads {
        let _ = t.join();
    }
    let latencies = lat_rx.recv().unwrap_or_default();
    Ok(BenchRun {
        elapsed,
        records,
        stats: running.counters.snapshot(elapsed),
        latencies,
    })
}

struct CountingOutput {
    latencies: Vec<Duration>,
    counters: Arc<Counters>,
    /// Records written so far, for a progress display.
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl ChunkOutput for CountingOutput {
    fn write(&mut self, chunk: CompletedChunk) -> Result<(), RunError> {
        self.latencies.push(chunk.meta.admitted_at.elapsed());
        let n = chunk.rows as u64;
        let poisoned = chunk.poisoned.len() as u64;
        let records = &self.counters.records;
        records.records_in.fetch_add(n, Relaxed);
        records.records_out.fetch_add(n - poisoned, Relaxed);
        records.records_rejected.fetch_add(poisoned, Relaxed);
        if let Some(p) = &self.progress {
            p.fetch_add(n, Relaxed);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RunError> {
        Ok(())
    }
}
