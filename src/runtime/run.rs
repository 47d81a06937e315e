//! Wiring a plan into running actors: the JSON-lines stream (`run`, `verify`) and the in-memory
//! benchmark feed (`bench`), which share the stage actors and the sink.

use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};

use super::budget::InFlight;
use super::label::Label;
use super::sink::{run_sink, ChunkOutput, CompletedChunk};
use super::source::{input_env, record_parser, run_chunker, ParserWorker, RawChunk, TokenBudget};
use super::stage::{run_join, StageWorker};
use super::stats::{Counters, RunStats};
use super::trace::Tracer;
use super::{channels, Emitter, Failure, Inboxes, Part, StageChannels};
use crate::graph::plan::PARSE_QUEUE;
use crate::graph::Plan;
use crate::io::{
    self as rio, output_names, write_rejection, InputFormat, OutputFormatter, RecordKey, RecordMeta,
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
    /// Kept so the source side (the reader) can report a failure too.
    failures_tx: Sender<Failure>,
    failures_rx: Receiver<Failure>,
    /// Stage workers and joins; joined after a clean finish.
    threads: Vec<JoinHandle<()>>,
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

fn spawn_named(name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawn a pipeline thread")
}

/// Start every stage actor (and join) of `plan`.
fn spawn_stages(plan: &Arc<Plan>, tracer: &Option<Tracer>) -> Running {
    let mut stage_names = vec![("source.parse".to_string(), plan.parsers)];
    stage_names.extend(plan.stages.iter().map(|s| (s.name.clone(), s.replicas)));
    let counters = Counters::new(stage_names);
    let (inboxes, stage_channels, sink_rx): (Inboxes, Vec<StageChannels>, _) = channels(plan);
    let (failures_tx, failures_rx) = unbounded();
    let mut threads = Vec::new();
    for (s, (stage, ch)) in plan.stages.iter().zip(stage_channels).enumerate() {
        let emitter = inboxes.emitter(&stage.routes);
        for replica in 0..stage.replicas {
            let worker = StageWorker {
                plan: plan.clone(),
                stage: s,
                replica,
                rx: ch.work_rx.clone(),
                emitter: emitter.clone(),
                counters: counters.clone(),
                failures: failures_tx.clone(),
                tracer: tracer.clone(),
            };
            threads.push(spawn_named(
                format!("{STAGE_THREAD}{}-{replica}", stage.name),
                move || worker.run(),
            ));
        }
        if let Some((join_rx, work_tx)) = ch.join {
            let producers = stage.producers.len();
            threads.push(spawn_named(
                format!("subpass-join-{}", stage.name),
                move || run_join(join_rx, work_tx, producers),
            ));
        }
    }
    let source = inboxes.emitter(&plan.source_routes);
    // `inboxes` drops here: only emitters hold senders now, so the cascade can close every channel.
    Running {
        counters,
        source,
        sink_rx,
        failures_tx,
        failures_rx,
        threads,
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

fn spawn_stats_logger(
    counters: Arc<Counters>,
    every: Duration,
    start: Instant,
    stop: Receiver<()>,
) {
    spawn_named("subpass-stats".into(), move || loop {
        select! {
            recv(stop) -> _ => return,
            default(every) => {
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

/// Run a pipeline over a stream of records until the input ends or `shutdown` fires.
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
    let running = spawn_stages(&plan, &tracer);
    let budget = InFlight::new(plan.budget.chunks);

    // Source: reader -> chunker -> parsers.
    let (lines_tx, lines_rx) = bounded(rio::READER_QUEUE);
    let (chunks_tx, chunks_rx) = bounded::<RawChunk>(PARSE_QUEUE);
    let batch = plan.batch;
    let max_line = options.max_line_bytes;
    let reader_failures = running.failures_tx.clone();
    // In text, an empty line is a record (the empty text); elsewhere blank lines are skipped.
    let keep_blank = options.format == InputFormat::Text;
    let token_budget = plan
        .tokenizer
        .as_ref()
        .zip(batch.max_tokens)
        .map(|(t, chunk)| TokenBudget {
            chunk,
            record: t.max_tokens(),
        });
    // Not joined: after a signal it may sit in a read() on stdin until the process exits.
    spawn_named("subpass-reader".into(), move || {
        if let Err(e) = rio::read_lines(input, max_line, batch.size, keep_blank, &lines_tx) {
            let _ = reader_failures.send(Failure {
                stage: "reader".into(),
                message: format!("reading input: {e}"),
            });
        }
    });
    let chunker_budget = budget.clone();
    let mut threads = running.threads;
    threads.push(spawn_named("subpass-chunker".into(), move || {
        run_chunker(
            lines_rx,
            shutdown,
            chunker_budget,
            chunks_tx,
            batch.size,
            token_budget,
            batch.max_delay,
        )
    }));
    let parser = record_parser(&plan, &plan.output.passthrough, options.format);
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

    // Sink.
    let mut formatter = OutputFormatter::new(
        &plan.output.field,
        plan.output.argmax,
        &plan.output.passthrough,
        &output_names(&plan.graph),
    );
    if let (Some(k), false) = (&plan.output.top_k, options.whole_outputs) {
        let labels = plan.output.labels.as_ref().map(|l| l.names.as_slice());
        formatter = formatter.with_top_k(k.value, labels);
    }
    let mut writer = JsonOutput {
        formatter,
        out: BufWriter::with_capacity(64 << 10, output),
        errors,
        strict: options.strict,
        label: options.label.clone(),
        counters: running.counters.clone(),
        buf: Vec::new(),
        ebuf: Vec::new(),
    };
    let (done_tx, done_rx) = bounded(1);
    let (stop_stats_tx, stop_stats_rx) = bounded::<()>(1);
    if let Some(every) = options.stats_interval {
        spawn_stats_logger(running.counters.clone(), every, start, stop_stats_rx);
    }
    let sink_plan = plan.clone();
    let sink_rx = running.sink_rx;
    // Joined with the others on success, so a caller that gets the report back holds the only
    // references left to the plan and the output.
    threads.push(spawn_named("subpass-sink".into(), move || {
        let producers = sink_plan.sink_producers.len();
        let r = run_sink(
            sink_rx,
            producers,
            &sink_plan.graph.outputs,
            sink_plan.output.ordered,
            &budget,
            &mut writer,
        );
        drop(writer);
        let _ = done_tx.send(r);
    }));

    let result = wait(done_rx, running.failures_rx);
    drop(stop_stats_tx);
    if result.is_ok() {
        for t in threads {
            let _ = t.join();
        }
    }
    if let (Some(tracer), Some(path)) = (&tracer, &options.trace) {
        if let Err(e) = tracer.write(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the trace");
        }
    }
    result.map(|()| RunReport {
        stats: running.counters.snapshot(start.elapsed()),
        label: options.label.clone(),
    })
}

/// Writes JSON output lines and error lines.
struct JsonOutput {
    formatter: OutputFormatter,
    out: BufWriter<Box<dyn Write + Send>>,
    errors: Box<dyn Write + Send>,
    strict: bool,
    label: Option<Label>,
    counters: Arc<Counters>,
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
        let r = &self.counters.records;
        // Under --strict, the records before the first bad line are written, then the run stops.
        let first_bad = if self.strict {
            meta.rejected.first()
        } else {
            None
        };
        let rejected = if first_bad.is_some() {
            &meta.rejected[..1]
        } else {
            &meta.rejected[..]
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
        for (row, rec) in meta.records.iter().enumerate() {
            if first_bad.is_some_and(|b| rec.line > b.line) {
                break;
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
        self.out.write_all(&self.buf).map_err(output_error)?;
        r.records_in
            .fetch_add(written + rejected.len() as u64, Relaxed);
        r.records_out.fetch_add(written, Relaxed);
        if !rejected.is_empty() {
            self.ebuf.clear();
            for rej in rejected {
                write_rejection(&mut self.ebuf, rej);
            }
            r.records_rejected.fetch_add(rejected.len() as u64, Relaxed);
            self.errors
                .write_all(&self.ebuf)
                .map_err(RunError::Output)?;
            self.errors.flush().map_err(RunError::Output)?;
        }
        if let Some(b) = first_bad {
            self.out.flush().map_err(output_error)?;
            return Err(RunError::Strict {
                line: b.line,
                error: b.error.clone(),
            });
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RunError> {
        self.out.flush().map_err(output_error)
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
    let running = spawn_stages(&plan, &tracer);
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
            let env = input_env(&feed_plan, rows, values, None);
            if source.emit(id, rows, &env, Some(Box::new(meta))).is_err() {
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
    wait(done_rx, running.failures_rx)?;
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
        self.counters.records.records_in.fetch_add(n, Relaxed);
        self.counters.records.records_out.fetch_add(n, Relaxed);
        if let Some(p) = &self.progress {
            p.fetch_add(n, Relaxed);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RunError> {
        Ok(())
    }
}
