//! `subpass bench`: the same seeded synthetic records through (a) the monolithic reference on one
//! thread, (b) the decomposed pipeline fed from memory, and optionally (c) the whole stream path
//! with JSON parsing and formatting, side by side in one process.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use serde::Serialize;

use crate::graph::Plan;
use crate::planner::median;
use crate::runtime::trace::Tracer;
use crate::runtime::{run_bench_pipeline, run_stream, RunError, RunOptions};
use crate::weights::seeded_stream;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub records: usize,
    /// Also run (c), the JSON stream path.
    pub io: bool,
    pub trace: Option<PathBuf>,
    /// Show progress on stderr (only when it is a terminal).
    pub progress: bool,
    /// Rounds of (a) then (b), alternated; each figure is their median.
    pub rounds: usize,
}

#[derive(Debug, Serialize)]
pub struct BenchStage {
    pub name: String,
    pub replicas: usize,
    pub busy_pct: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub pipeline: String,
    pub records: usize,
    pub batch_size: usize,
    pub flops_per_record: u64,
    /// Medians over the rounds.
    pub monolithic_records_per_s: f64,
    pub pipeline_records_per_s: f64,
    /// Each round's figures, in the order they ran ((a) then (b) in each round), so the
    /// spread a median hides can be read.
    pub rounds: Vec<BenchRound>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_records_per_s: Option<f64>,
    /// (b) over (a).
    pub speedup: f64,
    /// GFLOP/s of the decomposed pipeline, from the plan's FLOP count.
    pub gflops: f64,
    /// The cores this machine gives the process: what `peak_gflops` was measured on, and what
    /// a plan's prediction must have been made for to compare with this run.
    pub cores: usize,
    /// This machine's FMA peak, every core at once (`kernels::peak`), measured by this run.
    pub peak_gflops: f64,
    /// `gflops` over `peak_gflops`.
    pub efficiency: f64,
    pub monolithic_gflops: f64,
    /// Chunk latency (admitted to written) with the pipeline full, at its throughput.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Chunk latency with one chunk at a time in an idle pipeline: compute plus hand-offs.
    pub idle_latency_p50_ms: f64,
    pub idle_latency_p99_ms: f64,
    pub peak_rss_bytes: u64,
    pub memory_bound_bytes: u64,
    pub bottleneck: String,
    pub stages: Vec<BenchStage>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BenchRound {
    pub monolithic_records_per_s: f64,
    pub pipeline_records_per_s: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Distinct synthetic chunks, reused round-robin so generating data is not what is measured.
fn synthetic_chunks(plan: &Plan, count: usize) -> Vec<Vec<f32>> {
    let len = plan.input_len() * plan.batch.size;
    (0..count)
        .map(|c| {
            let mut next = seeded_stream(c as u64, "bench-records");
            (0..len).map(|_| next()).collect()
        })
        .collect()
}

/// A progress bar on stderr (only when it is a terminal): a phase name and, while a count is
/// known, how far it has got, redrawn ten times a second by a thread of its own.
struct Progress {
    shown: bool,
    done: Arc<AtomicU64>,
    /// (phase, total records); total 0 shows the phase alone.
    phase: Arc<std::sync::Mutex<(String, u64)>>,
    stop: Option<crossbeam_channel::Sender<()>>,
    painter: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn new(shown: bool) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let phase = Arc::new(std::sync::Mutex::new((String::new(), 0)));
        let mut stop = None;
        let mut painter = None;
        if shown {
            let (tx, rx) = crossbeam_channel::bounded::<()>(1);
            stop = Some(tx);
            let (done, phase) = (done.clone(), phase.clone());
            painter = Some(std::thread::spawn(move || {
                while rx.recv_timeout(Duration::from_millis(100))
                    == Err(crossbeam_channel::RecvTimeoutError::Timeout)
                {
                    let (name, total) = phase.lock().map(|p| p.clone()).unwrap_or_default();
                    let line = if total == 0 {
                        name
                    } else {
                        let frac = (done.load(Relaxed) as f64 / total as f64).min(1.0);
                        let filled = (frac * 30.0) as usize;
                        format!(
                            "{name} [{}{}] {:>3.0}%",
                            "#".repeat(filled),
                            ".".repeat(30 - filled),
                            frac * 100.0
                        )
                    };
                    eprint!("\rbench: {line:<78}");
                    let _ = std::io::stderr().flush();
                }
                eprint!("\r{:<86}\r", "");
            }));
        }
        Progress {
            shown,
            done,
            phase,
            stop,
            painter,
        }
    }

    /// Start a phase of `total` records (0: no count).
    fn phase(&self, name: &str, total: u64) {
        self.done.store(0, Relaxed);
        if let Ok(mut p) = self.phase.lock() {
            *p = (name.to_string(), total);
        }
    }

    /// The counter a phase advances, or `None` when nothing is shown.
    fn counter(&self) -> Option<Arc<AtomicU64>> {
        self.shown.then(|| self.done.clone())
    }

    /// Stop drawing and clear the line, before the report is printed.
    fn finish(&mut self) {
        self.stop.take();
        if let Some(p) = self.painter.take() {
            let _ = p.join();
        }
    }
}

/// (a): records/s of the monolithic reference on this thread, chunk by chunk.
fn monolithic_rate(plan: &Plan, chunks: &[Vec<f32>], records: usize, progress: &Progress) -> f64 {
    let size = plan.batch.size;
    let t = Instant::now();
    let mut done = 0;
    let mut c = 0;
    let mut scratch = crate::ops::Scratch::default();
    while done < records {
        let rows = size.min(records - done);
        let mut shape = vec![rows];
        shape.extend_from_slice(&plan.graph.input_shape);
        let input = ArrayD::from_shape_vec(
            IxDyn(&shape),
            chunks[c % chunks.len()][..rows * plan.input_len()].to_vec(),
        )
        .expect("rows × len");
        std::hint::black_box(plan.graph.forward_with(input, None, &mut scratch));
        done += rows;
        progress.done.fetch_add(rows as u64, Relaxed);
        c += 1;
    }
    records as f64 / t.elapsed().as_secs_f64()
}

pub fn bench(plan: Arc<Plan>, options: &BenchOptions) -> Result<BenchReport, RunError> {
    if plan.tokenizer.is_some() {
        // Its synthetic chunks are records of numbers; text needs sentences and their tokens.
        return Err(RunError::Format(
            "bench measures pipelines of numeric records; time a text pipeline end to end with `subpass run PIPELINE --format text < FILE` (benches/peers/text_race.py does, beside its peers)".into(),
        ));
    }
    let mut progress = Progress::new(options.progress && std::io::stderr().is_terminal());
    let records = options.records.max(1);
    let size = plan.batch.size;
    let chunks = synthetic_chunks(&plan, 4);
    let flops = plan.flops_per_record() as f64;

    // On a shared machine one run of each can land in a neighbour's busy moment (seen: a
    // pipeline run 20% slow for its first tenth of a second, the next run not), so the two
    // alternate, round after round, and each figure is a median.
    let rounds = options.rounds.max(1);
    let mut figures = Vec::with_capacity(rounds);
    let mut runs = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let of = |phase: &str| {
            if rounds > 1 {
                format!("{phase}, round {round} of {rounds}")
            } else {
                phase.to_string()
            }
        };
        // (a) The monolithic reference, one thread, chunk by chunk.
        progress.phase(
            &of("[1/3] monolithic reference, one thread"),
            records as u64,
        );
        let mono = monolithic_rate(&plan, &chunks, records, &progress);

        // (b) The decomposed pipeline, fed from memory.
        progress.phase(&of("[2/3] decomposed pipeline"), records as u64);
        let tracer = options.trace.as_ref().map(|_| Tracer::new(Instant::now()));
        let run = run_bench_pipeline(
            plan.clone(),
            chunks.clone(),
            records,
            tracer.clone(),
            None,
            progress.counter(),
        )?;
        figures.push(BenchRound {
            monolithic_records_per_s: mono,
            pipeline_records_per_s: records as f64 / run.elapsed.as_secs_f64(),
        });
        runs.push((run, tracer));
    }
    let mono = median(figures.iter().map(|f| f.monolithic_records_per_s).collect());
    // The pipeline round at the median rate (the upper one of an even count) gives the
    // latencies, the stages' busy shares and the trace, so they describe the rate reported.
    let mut order: Vec<usize> = (0..rounds).collect();
    order.sort_by(|&a, &b| {
        figures[a]
            .pipeline_records_per_s
            .total_cmp(&figures[b].pipeline_records_per_s)
    });
    let (run, tracer) = runs.swap_remove(order[rounds / 2]);
    if let (Some(tracer), Some(path)) = (&tracer, &options.trace) {
        tracer.write(path).map_err(RunError::Output)?;
    }
    let piped = records as f64 / run.elapsed.as_secs_f64();
    let mut lat = run.latencies.clone();
    lat.sort();

    // Latency without queueing: one chunk at a time through the idle pipeline.
    progress.phase("[2/3] decomposed pipeline, one chunk at a time", 0);
    let idle_records = records.min(300 * size);
    progress.phase(
        "[2/3] decomposed pipeline, one chunk at a time",
        idle_records as u64,
    );
    // Traced too, beside the full-load trace: a latency plan is read on the idle run, where
    // a chunk's path through the stages is not hidden by the chunks queued behind it.
    let idle_tracer = options.trace.as_ref().map(|_| Tracer::new(Instant::now()));
    let idle = run_bench_pipeline(
        plan.clone(),
        chunks,
        idle_records,
        idle_tracer.clone(),
        Some(1),
        progress.counter(),
    )?;
    if let (Some(tracer), Some(path)) = (&idle_tracer, &options.trace) {
        tracer
            .write(&idle_trace_path(path))
            .map_err(RunError::Output)?;
    }
    let mut idle_lat = idle.latencies.clone();
    idle_lat.sort();

    // (c) The stream path: JSON text in, JSON text out, all in memory.
    let io_rate = if options.io {
        progress.phase("[3/3] JSON lines in and out", 0);
        let text = crate::verify::synthetic_records(&plan, records, 2);
        let (_keep, never) = crossbeam_channel::bounded(1);
        let t = Instant::now();
        run_stream(
            plan.clone(),
            Box::new(std::io::Cursor::new(text)),
            Box::new(std::io::sink()),
            Box::new(std::io::sink()),
            &RunOptions::default(),
            never,
        )?;
        Some(records as f64 / t.elapsed().as_secs_f64())
    } else {
        None
    };
    progress.finish();
    let stages: Vec<BenchStage> = run
        .stats
        .stages
        .iter()
        .skip(1) // the parser does not run when feeding from memory
        .map(|s| BenchStage {
            name: s.name.clone(),
            replicas: s.replicas,
            busy_pct: s.busy_pct,
        })
        .collect();
    let bottleneck = stages
        .iter()
        .max_by(|a, b| a.busy_pct.total_cmp(&b.busy_pct))
        .map(|s| s.name.clone())
        .unwrap_or_default();
    progress.phase("machine FMA peak, every core", 1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let peak_gflops = crate::kernels::peak::fma_peak_gflops(cores, Duration::from_millis(500));
    let gflops = piped * flops / 1e9;
    Ok(BenchReport {
        pipeline: plan.name.clone(),
        records,
        batch_size: size,
        flops_per_record: plan.flops_per_record(),
        monolithic_records_per_s: mono,
        pipeline_records_per_s: piped,
        rounds: figures,
        io_records_per_s: io_rate,
        speedup: piped / mono,
        gflops,
        cores,
        peak_gflops,
        efficiency: gflops / peak_gflops,
        monolithic_gflops: mono * flops / 1e9,
        latency_p50_ms: percentile(&lat, 0.5),
        latency_p99_ms: percentile(&lat, 0.99),
        idle_latency_p50_ms: percentile(&idle_lat, 0.5),
        idle_latency_p99_ms: percentile(&idle_lat, 0.99),
        peak_rss_bytes: crate::runtime::stats::peak_rss_bytes(),
        memory_bound_bytes: plan.budget.activation_bytes(),
        bottleneck,
        stages,
    })
}

impl BenchReport {
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}: {} records, batch {}, {:.2} MFLOP/record\n",
            self.pipeline,
            self.records,
            self.batch_size,
            self.flops_per_record as f64 / 1e6
        );
        s += &format!(
            "  (a) monolithic, 1 thread : {:>10.0} records/s  {:>6.1} GFLOP/s\n",
            self.monolithic_records_per_s, self.monolithic_gflops
        );
        s += &format!(
            "  (b) decomposed pipeline  : {:>10.0} records/s  {:>6.1} GFLOP/s  ({:.2}x (a)), {:.0}% of this machine's FMA peak ({:.0} GFLOP/s)\n",
            self.pipeline_records_per_s,
            self.gflops,
            self.speedup,
            100.0 * self.efficiency,
            self.peak_gflops
        );
        if self.rounds.len() > 1 {
            let spread = |f: fn(&BenchRound) -> f64| {
                let v: Vec<f64> = self.rounds.iter().map(f).collect();
                let (lo, hi) = v
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                format!("{lo:.0}–{hi:.0}")
            };
            s += &format!(
                "  medians of {} alternated rounds: (a) ranged {}, (b) {} records/s\n",
                self.rounds.len(),
                spread(|r| r.monolithic_records_per_s),
                spread(|r| r.pipeline_records_per_s)
            );
        }
        if let Some(io) = self.io_records_per_s {
            s += &format!(
                "  (c) JSON in and out      : {:>10.0} records/s  ({:.0}% of (b))\n",
                io,
                100.0 * io / self.pipeline_records_per_s
            );
        }
        s += &format!(
            "  chunk latency at full load: p50 {:.3} ms, p99 {:.3} ms; one chunk at a time: p50 {:.3} ms, p99 {:.3} ms\n",
            self.latency_p50_ms, self.latency_p99_ms, self.idle_latency_p50_ms, self.idle_latency_p99_ms
        );
        s += &format!(
            "  peak RSS {} (activation bound {})\n",
            crate::graph::plan::human_bytes(self.peak_rss_bytes),
            crate::graph::plan::human_bytes(self.memory_bound_bytes)
        );
        for st in &self.stages {
            s += &format!(
                "  stage {:16} x{}  busy {:>5.1}%\n",
                st.name, st.replicas, st.busy_pct
            );
        }
        s += &format!("  bottleneck: {}\n", self.bottleneck);
        s
    }
}

/// Where `bench --trace PATH` writes the trace of its one-chunk-at-a-time run: `PATH` with
/// `.idle` before its extension (`trace.json` → `trace.idle.json`).
pub fn idle_trace_path(path: &std::path::Path) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(Default::default, |s| s.to_os_string());
    let mut name = stem;
    name.push(".idle");
    if let Some(ext) = path.extension() {
        name.push(".");
        name.push(ext);
    }
    path.with_file_name(name)
}
