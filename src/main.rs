//! The `subpass` command line: parse arguments, set up logging, call the library, map the result
//! to an exit status.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use subpass::graph::Plan;
use subpass::io::{self as rio, InputFormat};
use subpass::runtime::{self, Label, RunError, RunOptions};

/// EX_CONFIG from sysexits.h, as `vector validate` uses: the pipeline file is wrong.
const EXIT_CONFIG: u8 = 78;
/// As clap exits on a bad argument: also a `--metrics` address that cannot be listened on.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "subpass",
    version,
    about = "Run a neural network's forward pass decomposed into sub-passes, streaming records from stdin to stdout"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Jsonl,
    Csv,
    /// One line, one text record (pipelines with `input: {text: ...}`).
    Text,
    /// One line, one image file's path (pipelines with `input: {image: ...}`).
    Paths,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline file and print its plan and memory bound.
    Validate { pipeline: PathBuf },
    /// Stream records through the pipeline: JSON lines, CSV, text or image paths in, one JSON
    /// line per record out.
    Run {
        pipeline: PathBuf,
        /// Input file; `-` or absent means stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Output file; `-` or absent means stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Where bad-record reports go; absent means stderr.
        #[arg(long)]
        errors: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// Write the run's statistics as JSON here at exit.
        #[arg(long)]
        stats: Option<PathBuf>,
        /// Log the statistics every this many seconds.
        #[arg(long, value_name = "SECS")]
        stats_interval: Option<f64>,
        /// Longer lines are reported and skipped without being held in memory.
        #[arg(long, default_value_t = subpass::io::DEFAULT_MAX_LINE_BYTES)]
        max_line_bytes: usize,
        /// Stop at the first bad record (exit 1).
        #[arg(long)]
        strict: bool,
        /// Print accuracy at exit: each record's argmax against this passthrough field.
        #[arg(long, value_name = "FIELD")]
        label: Option<String>,
        /// Write per-chunk, per-stage activity as Chrome Trace Event JSON (Perfetto).
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Reload the pipeline file when it changes (SIGHUP always reloads it).
        #[arg(long)]
        watch: bool,
        /// A stage replica that panics is restarted and its failing records written as error
        /// lines; more than N restarts of one stage within a minute end the run (exit 1).
        /// A stage's `max_restarts` in the pipeline file takes precedence.
        #[arg(long, value_name = "N", default_value_t = runtime::DEFAULT_MAX_RESTARTS)]
        max_restarts: u32,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0 picks a
        /// free port, printed on stderr).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
    },
    /// A live view of a running pipeline from its `--metrics` endpoint: busy %, queues, records/s.
    Top {
        /// The endpoint: HOST:PORT (as given to `run --metrics`) or http://HOST:PORT/PATH.
        addr: String,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_parser = positive_seconds)]
        interval: f64,
        /// Stop after this many refreshes (for scripts and tests); exit 1 if the last failed.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        iterations: Option<u64>,
    },
    /// Prove the decomposition changes nothing: the streaming pipeline against the monolithic pass.
    Verify {
        pipeline: PathBuf,
        /// JSON lines to compare on; default: seeded synthetic records.
        #[arg(long, conflicts_with = "records")]
        input: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        records: usize,
        /// Largest relative difference allowed (absolute where the reference is near zero).
        #[arg(long, default_value_t = 1e-5)]
        tolerance: f64,
    },
    /// Measure the pipeline: monolithic vs decomposed vs end to end through JSON.
    Bench {
        pipeline: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        records: usize,
        /// Override the pipeline's batch size.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Also measure JSON formatting and parsing, as from stdin.
        #[arg(long)]
        io: bool,
        /// Print one JSON object with every figure.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Run (a) and (b) this many times, alternated, and report their medians (and each
        /// round's figures): on a shared machine one run can land in a neighbour's busy moment.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
        rounds: u16,
    },
    /// Write the pipeline's weights (from `weights` or `init`) as an F32 safetensors file.
    Export { pipeline: PathBuf, out: PathBuf },
    /// Profile every layer on this machine and choose the stages and replicas.
    Plan {
        pipeline: PathBuf,
        /// Cores to plan for; default: every core of this machine.
        #[arg(long)]
        cores: Option<usize>,
        /// Plan at this batch size (written to the file with --write).
        #[arg(long)]
        batch: Option<usize>,
        /// Profile on these records (one per line, in --format) instead of synthetic ones;
        /// text pipelines should be planned on their own sentences.
        #[arg(long)]
        sample: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// Write the pipeline file with the planned stages here, everything else as written.
        #[arg(long, value_name = "OUT.yaml")]
        write: Option<PathBuf>,
        /// throughput: records per second (stages and replicas); latency: one chunk's time
        /// (layers split into shards that run at once).
        #[arg(long, value_enum, default_value = "throughput")]
        objective: Objective,
        /// Skip the short measured runs that check the plan against the file's stages
        /// (throughput) or against the unsplit pass (latency): the model decides alone.
        #[arg(long)]
        no_check: bool,
    },
}

/// `subpass plan --objective`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Objective {
    Throughput,
    Latency,
}

impl Format {
    fn input(self) -> InputFormat {
        match self {
            Format::Jsonl => InputFormat::JsonLines,
            Format::Csv => InputFormat::Csv,
            Format::Text => InputFormat::Text,
            Format::Paths => InputFormat::Paths,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .init();
    runtime::quiet_stage_panics();
    // Test builds only: the fail points named in FAILPOINTS (src/runtime/fault.rs).
    #[cfg(feature = "fail-points")]
    let _fail_points = fail::FailScenario::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { pipeline } => validate(&pipeline),
        Command::Run {
            pipeline,
            input,
            output,
            errors,
            format,
            stats,
            stats_interval,
            max_line_bytes,
            strict,
            label,
            trace,
            watch,
            max_restarts,
            metrics,
        } => {
            let options = RunOptions {
                format: format.input(),
                max_line_bytes,
                strict,
                stats_interval: stats_interval.map(Duration::from_secs_f64),
                trace,
                label: None,
                reload: Some(runtime::Reload {
                    requests: runtime::reload::requests(&pipeline, watch),
                    path: pipeline.clone(),
                }),
                max_restarts,
                metrics: None,
                pipeline_file: Some(pipeline.clone()),
                whole_outputs: false,
            };
            let streams = StreamPaths {
                input,
                output,
                errors,
            };
            run(
                &pipeline,
                streams,
                stats,
                label,
                metrics.as_deref(),
                options,
            )
        }
        Command::Top {
            addr,
            interval,
            iterations,
        } => {
            let terminal = io::IsTerminal::is_terminal(&io::stdout());
            let mut stdout = io::stdout().lock();
            match subpass::top::run(
                &addr,
                Duration::from_secs_f64(interval),
                iterations,
                &mut stdout,
                terminal,
            ) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => fail(&e),
            }
        }
        Command::Verify {
            pipeline,
            input,
            records,
            tolerance,
        } => verify(&pipeline, input, records, tolerance),
        Command::Bench {
            pipeline,
            records,
            batch_size,
            io,
            json,
            trace,
            rounds,
        } => {
            let Some(plan) = load_plan_with(&pipeline, batch_size).and_then(planned) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let prediction = plan.config.planned;
            match subpass::bench::bench(
                plan,
                &subpass::bench::BenchOptions {
                    records,
                    io,
                    trace,
                    progress: !json,
                    rounds: rounds.into(),
                },
            ) {
                Ok(report) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&report).expect("report serialises")
                        );
                    } else {
                        print!("{}", report.describe());
                    }
                    // Stages from `subpass plan`: how its prediction compares, when it was made
                    // for what this run measured (a plan for batch 64 says nothing of batch 16).
                    if let Some(p) = prediction {
                        let predicted = format!(
                            "planner predicted {:.0} records/s (for {} cores, batch {})",
                            p.records_per_s, p.cores, p.batch
                        );
                        if p.batch == report.batch_size && p.cores == report.cores {
                            eprintln!(
                                "{predicted}; measured {:.0}: {:+.1}%",
                                report.pipeline_records_per_s,
                                100.0 * (report.pipeline_records_per_s / p.records_per_s - 1.0)
                            );
                        } else {
                            eprintln!(
                                "{predicted}; this run is batch {} on {} cores, not comparable",
                                report.batch_size, report.cores
                            );
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Plan {
            pipeline,
            cores,
            batch,
            sample,
            format,
            write,
            objective,
            no_check,
        } => plan_command(
            &pipeline, cores, batch, sample, format, write, objective, !no_check,
        ),
        Command::Export { pipeline, out } => {
            let Some(plan) = load_plan(&pipeline) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let config = match subpass::config::PipelineConfig::load(&pipeline) {
                Ok(c) => c,
                Err(e) => return fail(&e.to_string()),
            };
            match subpass::graph::export_weights(&config, &plan.graph, &out) {
                Ok(n) => {
                    eprintln!("wrote {n} tensors to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
    }
}

/// `subpass plan`: profile, choose, print, and with `--write` write the pipeline file.
// The command's own flags, passed as they come from the parser.
#[allow(clippy::too_many_arguments)]
fn plan_command(
    pipeline: &Path,
    cores: Option<usize>,
    batch: Option<usize>,
    sample: Option<PathBuf>,
    format: Format,
    write: Option<PathBuf>,
    objective: Objective,
    check: bool,
) -> ExitCode {
    let Some(plan) = load_plan_with(pipeline, batch) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let sample = match sample {
        Some(p) => match std::fs::read(&p) {
            Ok(bytes) => Some((bytes, format.input())),
            Err(e) => return fail(&format!("cannot read the sample {}: {e}", p.display())),
        },
        None => None,
    };
    let options = subpass::planner::PlanOptions {
        cores: cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        sample,
        objective: match objective {
            Objective::Throughput => subpass::planner::Objective::Throughput,
            Objective::Latency => subpass::planner::Objective::Latency,
        },
        check,
    };
    let planned = match subpass::planner::plan(&plan, &options) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    print!("{}", planned.describe());
    let Some(out) = write else {
        return ExitCode::SUCCESS;
    };
    if let Err(e) =
        subpass::planner::write_pipeline(pipeline, &out, &planned, batch.map(|_| &plan.batch))
    {
        return fail(&e);
    }
    println!("wrote {}", out.display());
    ExitCode::SUCCESS
}

/// A pipeline with `stages: auto` gets the planner's stages here (logged); others pass as
/// they are.
fn planned(plan: Arc<Plan>) -> Option<Arc<Plan>> {
    if !plan.config.auto_stages {
        return Some(plan);
    }
    let plan = Arc::try_unwrap(plan).expect("the plan is not shared yet");
    match subpass::planner::resolve_auto(plan) {
        Ok(p) => Some(Arc::new(p)),
        Err(e) => {
            eprintln!("error: planning `stages: auto`: {e}");
            None
        }
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 3600.0 => Ok(x),
        _ => Err(format!(
            "`{s}`: expected seconds, more than 0 and at most 3600"
        )),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn load_plan(path: &Path) -> Option<Arc<Plan>> {
    load_plan_with(path, None)
}

fn load_plan_with(path: &Path, batch_size: Option<usize>) -> Option<Arc<Plan>> {
    let result = Plan::load_with_batch(path, batch_size);
    match result {
        Ok(plan) => {
            if !plan.graph.unused_tensors.is_empty() {
                tracing::warn!(tensors = %plan.graph.unused_tensors.join(", "), "tensors in the weights file that no layer uses");
            }
            Some(Arc::new(plan))
        }
        Err(errors) => {
            eprintln!("{}: {errors}", path.display());
            None
        }
    }
}

fn validate(path: &Path) -> ExitCode {
    match load_plan(path) {
        Some(plan) => {
            print!("{}", plan.describe());
            let g = &plan.graph;
            let layers = g.nodes.iter().zip(&g.layers);
            print!(
                "{}",
                subpass::ops::kernel_table(layers.map(|(n, l)| (n.name.as_str(), l.as_ref())))
            );
            ExitCode::SUCCESS
        }
        None => ExitCode::from(EXIT_CONFIG),
    }
}

/// Where `run` reads records and writes predictions and errors; `None` is the standard stream.
struct StreamPaths {
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    errors: Option<PathBuf>,
}

fn run(
    pipeline: &Path,
    paths: StreamPaths,
    stats_path: Option<PathBuf>,
    label: Option<String>,
    metrics: Option<&str>,
    options: RunOptions,
) -> ExitCode {
    let Some(plan) = load_plan(pipeline).and_then(planned) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    // Listening before any record is read: a bad address or a port in use stops here.
    let server = match metrics
        .map(runtime::metrics::MetricsServer::start)
        .transpose()
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let label = match label.map(|field| Label::resolve(&plan, &field)).transpose() {
        Ok(label) => label,
        Err(e) => return fail(&e.to_string()),
    };
    let streams = (|| {
        Ok::<_, io::Error>((
            rio::open_input(paths.input.as_deref(), plan.read_buffer_bytes())?,
            rio::create_output(paths.output.as_deref(), io::stdout)?,
            rio::create_output(paths.errors.as_deref(), io::stderr)?,
        ))
    })();
    let (input, output, errors) = match streams {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let options = RunOptions {
        label,
        metrics: server.as_ref().map(|s| s.exporter()),
        ..options
    };
    let shutdown = runtime::shutdown::signal_listener();
    if let Some(server) = &server {
        // Printed whatever RUST_LOG says, once everything but the pipeline is set up: scripts
        // and tests read the port from this line.
        eprintln!("metrics: listening on http://{}/metrics", server.addr());
    }
    let result = runtime::run_stream(plan, input, output, errors, &options, shutdown);
    match result {
        Ok(report) => {
            eprint!("{}", report.summary());
            if let Some(p) = stats_path {
                let json = serde_json::to_string_pretty(&report.stats).expect("stats serialise");
                if let Err(e) = std::fs::write(&p, json + "\n") {
                    return fail(&format!("cannot write stats to {}: {e}", p.display()));
                }
            }
            ExitCode::SUCCESS
        }
        // The reader of our output went away (`| head -n 1`): nothing left to do, nothing to say.
        Err(RunError::OutputClosed) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn verify(pipeline: &Path, input: Option<PathBuf>, records: usize, tolerance: f64) -> ExitCode {
    let Some(plan) = load_plan(pipeline).and_then(planned) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let data = match input {
        Some(p) => match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) => return fail(&format!("cannot read {}: {e}", p.display())),
        },
        None => subpass::verify::synthetic_records(&plan, records, 1),
    };
    let stages = plan.stages.len();
    match subpass::verify::verify(plan, data) {
        Ok(report) => {
            println!(
                "{} records through the streaming pipeline ({stages} stage(s)) vs the monolithic pass:",
                report.records
            );
            for o in &report.outputs {
                println!(
                    "  {}: max abs diff {:.3e}, max rel diff {:.3e}",
                    o.name, o.max_abs, o.max_rel
                );
            }
            if report.passes(tolerance) {
                println!("OK: within tolerance {tolerance:e}");
                ExitCode::SUCCESS
            } else {
                println!("FAIL: beyond tolerance {tolerance:e}");
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(&e.to_string()),
    }
}
