//! The plan: the graph cut into stages, who feeds whom, and the memory bound the executor enforces.
//!
//! A stage is a set of layers run together by one actor (or several replicas of it). Its inputs
//! are the values it reads but does not make; each comes from the source (the model input) or from
//! the stage that makes it, and a stage with several producers joins their parts of each chunk.
//! The stage graph must be a DAG: bounded channels in a cycle can deadlock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use super::{Graph, ValueId};
use crate::config::{
    suggest, BatchConfig, ConfigError, ConfigErrors, OutputConfig, PipelineConfig, StageConfig,
    DEFAULT_QUEUE,
};
use crate::ops::Rows;

/// Where a stage's inputs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Producer {
    /// The record parser: the model input.
    Source,
    Stage(usize),
}

/// Where a produced value goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    Stage(usize),
    /// The output writer.
    Sink,
}

/// Values a producer sends to one destination for every chunk.
#[derive(Debug, Clone)]
pub struct Route {
    pub to: Destination,
    pub values: Vec<ValueId>,
}

#[derive(Debug)]
pub struct StagePlan {
    pub name: String,
    /// Node indices, in evaluation order.
    pub layers: Vec<usize>,
    pub queue: usize,
    pub replicas: usize,
    /// Threads each replica spreads a chunk's layers over (`threads: N`, [`crate::ops::Team`]).
    pub threads: usize,
    /// Values read from outside the stage.
    pub inputs: Vec<ValueId>,
    /// Who sends those values; more than one means the stage joins parts of each chunk.
    pub producers: Vec<Producer>,
    pub routes: Vec<Route>,
    pub param_bytes: u64,
    pub flops_per_record: u64,
    /// Values each layer's evaluation can drop once it has run (see [`Graph::eval`]).
    pub frees: Vec<Vec<ValueId>>,
    /// The most bytes of one full chunk's tensors this stage holds at once: its inputs and the
    /// layer outputs still live, as it evaluates its layers and frees the dead ones.
    pub activation_bytes_per_chunk: u64,
    /// Bytes of one full chunk's inputs to this stage.
    pub input_bytes_per_chunk: u64,
    /// Reused buffers each replica holds (padded images, im2col columns), as its kernels report.
    pub scratch_bytes: u64,
    /// What isolating a failed chunk holds beyond the worker's chunk: the stage's outputs being
    /// assembled at full size, and one sub-chunk (at most half the records) being re-run.
    pub isolation_bytes: u64,
    /// Restarts per minute allowed before the run gives up; `None`: the run's default.
    pub max_restarts: Option<u32>,
    /// The core its threads run on, if pinned (`core: N`).
    pub core: Option<usize>,
    /// Its workers parse the records (`parse: true`): in `run` they take the chunker's chunks
    /// of lines, and no parser thread runs. (`bench` feeds them parsed chunks from memory.)
    pub parses: bool,
}

/// The single bound on work in flight: chunks are admitted only while fewer than `chunks` are
/// between the chunker and the output writer; and what those chunks can hold, place by place.
#[derive(Debug, Clone, Copy)]
pub struct InFlightBudget {
    pub chunks: usize,
    pub bytes: ActivationBytes,
}

/// The most bytes of activations each place in the pipeline can hold at once. Each figure is
/// the place's capacity times the most one of its items holds (full batch), so each is a bound
/// on its own and their sum bounds the whole; places that no channel caps (join buffers, the
/// reorder step) are capped by the in-flight chunk count.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivationBytes {
    /// Each parser's chunk of model input while it is built and handed on.
    pub parsers: u64,
    /// Image pipelines: what each parser holds while it decodes one image (the file's bytes, the
    /// decoder's buffers for the largest image allowed, the resizer's rows).
    pub decoding: u64,
    /// Stage input queues (`queue` chunks of the stage's inputs each), and the chunk a join
    /// holds while it hands it on.
    pub queues: u64,
    /// Each worker's chunk: its inputs and every output of its layers, kept until it is sent.
    pub workers: u64,
    /// Joins: parts waiting in the inbox and parts waiting for the other producers' parts.
    pub joins: u64,
    /// The outputs waiting in the sink's inbox and reorder buffer.
    pub sink: u64,
    /// Per-worker scratch buffers (padded images, im2col columns), held for the whole run.
    pub scratch: u64,
    /// The chunk being isolated after a panic (one at a time in the whole pipeline): the
    /// largest stage's [`StagePlan::isolation_bytes`].
    pub isolation: u64,
}

impl ActivationBytes {
    pub fn total(&self) -> u64 {
        self.parsers
            + self.decoding
            + self.queues
            + self.workers
            + self.joins
            + self.sink
            + self.scratch
            + self.isolation
    }
}

impl InFlightBudget {
    pub fn activation_bytes(&self) -> u64 {
        self.bytes.total()
    }
}

/// Capacity, in chunks, of the parser threads' input queue.
pub const PARSE_QUEUE: usize = 2;

/// Everything needed to run a pipeline: immutable, shared by every actor.
#[derive(Debug)]
pub struct Plan {
    pub name: String,
    pub graph: Graph,
    pub stages: Vec<StagePlan>,
    /// Where the model input goes: the stages that read it (and the sink, if it is an output).
    pub source_routes: Vec<Route>,
    /// Producers of the pipeline outputs, which the sink joins per chunk.
    pub sink_producers: Vec<Producer>,
    pub input_field: String,
    /// Parser threads: `input.parsers`, or none when a stage's workers parse ([`Plan::parsing_stage`]).
    pub parsers: usize,
    pub batch: BatchConfig,
    pub output: OutputConfig,
    pub budget: InFlightBudget,
    /// Capacity, in chunks, of the chunker's queue of raw lines: [`PARSE_QUEUE`] for parser
    /// threads, the parsing stage's `queue:` when its workers parse.
    pub parse_queue: usize,
    /// The parsed file the plan was made from (`verify` builds its reference graph from it).
    pub config: PipelineConfig,
    /// For text records: the tokenizer the parsers share.
    pub tokenizer: Option<std::sync::Arc<crate::io::TextTokenizer>>,
    /// For image records: the decoding and preprocessing the parsers share.
    pub image: Option<std::sync::Arc<crate::io::ImagePreprocess>>,
}

const F32: u64 = 4;

impl Plan {
    /// Load, check and plan a pipeline file.
    /// Every error is reported at once: those in the file's syntax and sections, and those the
    /// graph and stage checks find in whatever parsed.
    pub fn load(path: &Path) -> Result<Plan, ConfigErrors> {
        Plan::load_with_batch(path, None)
    }

    /// Like [`Plan::load`], with the batch size overridden (`bench --batch-size`).
    pub fn load_with_batch(path: &Path, batch_size: Option<usize>) -> Result<Plan, ConfigErrors> {
        let (mut config, mut errors) = PipelineConfig::load_partial(path)?;
        if let Some(b) = batch_size {
            config.batch.size = b.clamp(1, crate::config::MAX_BATCH as usize);
        }
        match Plan::build(&config) {
            Ok(plan) if errors.is_empty() => Ok(plan),
            Ok(_) => Err(ConfigErrors(errors)),
            Err(more) => {
                errors.extend(more.0);
                Err(ConfigErrors(errors))
            }
        }
    }

    /// Check a parsed pipeline and plan it, reporting every error found.
    pub fn build(config: &PipelineConfig) -> Result<Plan, ConfigErrors> {
        Plan::build_unlocated(config).map_err(|e| config.locate(e))
    }

    fn build_unlocated(config: &PipelineConfig) -> Result<Plan, ConfigErrors> {
        // Stage structure errors do not depend on the graph, so they are found even when layers
        // have errors too: one pass shows a user everything.
        let stage_members = check_stage_membership(config);
        let tokenizer = load_tokenizer(config);
        let graph = Graph::build(config);
        let top_k = match &graph {
            Ok(g) => check_top_k(config, g),
            Err(_) => Ok(()),
        };
        let (graph, membership, tokenizer) = match (graph, stage_members, tokenizer, top_k) {
            (Ok(g), Ok(m), Ok(t), Ok(())) => (g, m, t),
            (g, m, t, k) => {
                let errors = [g.err(), m.err(), t.err(), k.err()].into_iter().flatten();
                return Err(ConfigErrors(errors.flat_map(|e| e.0).collect()));
            }
        };
        let image = config
            .input
            .image
            .as_ref()
            .map(|i| std::sync::Arc::new(crate::io::ImagePreprocess::new(i)));
        let stage_configs: Vec<StageConfig> = match &config.stages {
            Some(s) => s.clone(),
            None => vec![StageConfig {
                name: "main".into(),
                layers: Vec::new(),
                queue: DEFAULT_QUEUE,
                replicas: 1,
                threads: 1,
                max_restarts: None,
                core: None,
                parse: false,
                path: "stages".into(),
            }],
        };
        let stage_of = |layer: usize| membership.get(&layer).copied().unwrap_or(0);
        let producer_of = |v: ValueId| match v.layer() {
            None => Producer::Source,
            Some(l) => Producer::Stage(stage_of(l)),
        };

        let mut stages: Vec<StagePlan> = Vec::new();
        for (s, sc) in stage_configs.iter().enumerate() {
            let layers: Vec<usize> = (0..graph.nodes.len())
                .filter(|&l| stage_of(l) == s)
                .collect();
            let inside: BTreeSet<ValueId> = layers.iter().map(|&l| ValueId::of_layer(l)).collect();
            let inputs: Vec<ValueId> = layers
                .iter()
                .flat_map(|&l| graph.nodes[l].inputs.iter().copied())
                .filter(|v| !inside.contains(v))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let producers: Vec<Producer> = inputs
                .iter()
                .map(|&v| producer_of(v))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let bytes = |vs: &mut dyn Iterator<Item = ValueId>| -> u64 {
                vs.map(|v| chunk_bytes(&graph, &config.batch, v)).sum()
            };
            // What leaves the stage: values read by other stages, and the pipeline's outputs.
            let keep: BTreeSet<ValueId> = inside
                .iter()
                .copied()
                .filter(|v| {
                    graph.outputs.contains(v)
                        || (0..graph.nodes.len())
                            .any(|l| stage_of(l) != s && graph.nodes[l].inputs.contains(v))
                })
                .collect();
            let frees = liveness(&graph, &layers, &keep);
            let peak = peak_live_bytes(&graph, &config.batch, &layers, &inputs, &frees);
            // Bisection re-runs halves of a failed chunk, then halves of those: half the
            // records, or for text half the tokens plus one record's (any number of records).
            let half = match (&config.input.text, config.batch.max_tokens) {
                (Some(text), Some(tokens)) => BatchConfig {
                    max_tokens: Some(tokens.min(tokens.div_ceil(2) + text.max_tokens)),
                    ..config.batch
                },
                _ => BatchConfig {
                    size: config.batch.size.div_ceil(2),
                    ..config.batch
                },
            };
            let isolation = bytes(&mut keep.iter().copied())
                + peak_live_bytes(&graph, &half, &layers, &inputs, &frees);
            // Scratch is per slot, reused by every layer of the stage: the largest need each.
            let scratch = (0..crate::ops::SCRATCH_SLOTS)
                .map(|slot| {
                    layers
                        .iter()
                        .map(|&l| {
                            let rows = max_rows(&config.batch, graph.nodes[l].rows);
                            graph.layers[l].scratch(rows)[slot] as u64
                        })
                        .max()
                        .unwrap_or(0)
                })
                .sum::<u64>()
                * F32;
            stages.push(StagePlan {
                name: sc.name.clone(),
                queue: sc.queue,
                replicas: sc.replicas,
                threads: sc.threads,
                param_bytes: graph.param_bytes(&layers),
                flops_per_record: layers
                    .iter()
                    .map(|&l| graph.nodes[l].flops_per_record)
                    .sum(),
                activation_bytes_per_chunk: peak,
                frees,
                input_bytes_per_chunk: bytes(&mut inputs.iter().copied()),
                scratch_bytes: scratch,
                isolation_bytes: isolation,
                max_restarts: sc.max_restarts,
                core: sc.core,
                parses: sc.parse,
                layers,
                inputs,
                producers,
                routes: Vec::new(),
            });
        }

        // Routes: every producer sends each consumer exactly the values it reads.
        let mut wanted: BTreeMap<(Producer, Destination), BTreeSet<ValueId>> = BTreeMap::new();
        for (s, stage) in stages.iter().enumerate() {
            for &v in &stage.inputs {
                wanted
                    .entry((producer_of(v), Destination::Stage(s)))
                    .or_default()
                    .insert(v);
            }
        }
        for &v in &graph.outputs {
            wanted
                .entry((producer_of(v), Destination::Sink))
                .or_default()
                .insert(v);
        }
        let mut source_routes = Vec::new();
        let mut sink_producers = BTreeSet::new();
        for ((from, to), values) in wanted {
            let route = Route {
                to,
                values: values.into_iter().collect(),
            };
            if to == Destination::Sink {
                sink_producers.insert(from);
            }
            match from {
                Producer::Source => source_routes.push(route),
                Producer::Stage(s) => stages[s].routes.push(route),
            }
        }
        // The source always sends the sink the chunk's record metadata, outputs or not.
        sink_producers.insert(Producer::Source);
        if !source_routes.iter().any(|r| r.to == Destination::Sink) {
            source_routes.push(Route {
                to: Destination::Sink,
                values: Vec::new(),
            });
        }

        check_stage_cycles(&stages, &stage_configs)?;
        check_parsing_stage(&stages, &stage_configs)?;
        let parsing = stages.iter().find(|s| s.parses);
        let parsers = if parsing.is_some() {
            0
        } else {
            config.input.parsers
        };

        // A parsing stage's workers take lines from the chunker's queue, so its `queue:` sizes
        // that queue (in a run, the stage's own queue stays empty). Its raw lines are what the
        // workers fall back on while the chunker waits for a core behind them.
        let parse_queue = parsing.map_or(PARSE_QUEUE, |s| s.queue);
        // Enough chunks for every queue to be full and every worker busy at once, plus the
        // parser's and the one the sink is writing: the most a fully overlapped pipeline uses.
        let chunks = stages
            .iter()
            .map(|s| if s.parses { 0 } else { s.queue } + s.replicas)
            .sum::<usize>()
            + parse_queue
            + parsers
            + 1;
        let mut bytes = activation_bytes(&graph, &stages, &source_routes, chunks, parsers, config);
        if let Some(image) = &image {
            // Whoever parses decodes: the parser threads, or the parsing stage's workers.
            let decoders = parsing.map_or(parsers, |s| s.replicas);
            bytes.decoding = decoders as u64 * image.working_bytes();
        }
        Ok(Plan {
            name: config.name.clone().unwrap_or_else(|| "pipeline".into()),
            graph,
            stages,
            source_routes,
            sink_producers: sink_producers.into_iter().collect(),
            input_field: config.input.field.clone(),
            parsers,
            batch: config.batch,
            output: config.output.clone(),
            budget: InFlightBudget { chunks, bytes },
            parse_queue,
            config: config.clone(),
            tokenizer,
            image,
        })
    }

    pub fn flops_per_record(&self) -> u64 {
        self.stages.iter().map(|s| s.flops_per_record).sum()
    }

    /// Values per record of the model input.
    pub fn input_len(&self) -> usize {
        self.graph.input_shape.iter().product()
    }

    /// The stage whose workers parse the records (`parse: true`), if one does.
    pub fn parsing_stage(&self) -> Option<usize> {
        self.stages.iter().position(|s| s.parses)
    }

    /// Records the pipeline may have taken from its input before their output is written:
    /// admitted chunks, the chunk being filled and the reader's hand-off (the OS pipe and our
    /// read buffer, [`Self::read_buffer_bytes`], come on top).
    pub fn max_records_read_ahead(&self) -> usize {
        (self.budget.chunks + 1 + crate::io::READER_QUEUE + 1) * self.batch.size
    }

    /// The reader's buffer: room for about a chunk of records written as numbers (8 bytes a
    /// number), from 64 KiB to 1 MiB. Each read hands its lines to the chunker, a thread
    /// wake-up each time: with the MLP's 5 KB lines a 64 KiB buffer made twelve-line hand-offs
    /// and about 20,000 context switches a second, which interrupt the stages computing beside
    /// them; a chunk's worth per read cut them to a third and the run's time by about 5%.
    /// (A read from a pipe returns at most what the pipe holds: `run` asks a pipe on stdin to
    /// hold as much, [`crate::io::open_input`].)
    pub fn read_buffer_bytes(&self) -> usize {
        let numbers = self.config.input.text.is_none() && self.config.input.image.is_none();
        let chunk_text = if numbers {
            self.input_len()
                .saturating_mul(8)
                .saturating_mul(self.batch.size)
        } else {
            0
        };
        chunk_text.clamp(crate::io::MIN_READ_BUFFER, 1 << 20)
    }

    /// The human-readable plan `validate` prints.
    pub fn describe(&self) -> String {
        let g = &self.graph;
        let mut out = String::new();
        match (&self.config.input.text, self.batch.max_tokens) {
            (Some(text), Some(tokens)) => {
                let _ = writeln!(
                    out,
                    "pipeline `{}`: text records of at most {} tokens ({}), chunks of at most {} records and {tokens} tokens, max delay {} ms",
                    self.name,
                    text.max_tokens,
                    text.tokenizer.display(),
                    self.batch.size,
                    self.batch.max_delay.as_millis()
                );
                let _ = writeln!(
                    out,
                    "FLOPs are per row: per token for token rows (attention counted for {}-token records), per record for record rows",
                    text.max_tokens
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "pipeline `{}`: input {:?} per record, batch {} records, max delay {} ms",
                    self.name,
                    g.input_shape,
                    self.batch.size,
                    self.batch.max_delay.as_millis()
                );
            }
        }
        if let Some(image) = &self.config.input.image {
            let _ = writeln!(
                out,
                "image records (JPEG, PNG; at most {side}x{side} pixels and {} bytes): resize the shorter side to {} (bilinear, antialiased), centre crop {}x{}, RGB, (x/255 - mean {:?}) / std {:?}; {} parser(s)",
                image.max_bytes,
                image.resize,
                image.crop,
                image.crop,
                image.mean,
                image.std,
                self.parsers,
                side = image.max_side,
            );
        }
        let per = |rows: Rows| match rows {
            Rows::Records => "record",
            Rows::Tokens => "token",
        };
        let _ = writeln!(out, "\nlayers:");
        let width = g
            .nodes
            .iter()
            .map(|n| n.name.len())
            .max()
            .unwrap_or(4)
            .max(5);
        let _ = writeln!(
            out,
            "  {:width$}  {:16}  {:18}  {:>10}  {:>12}",
            "name", "op", "output", "params", "FLOPs/row"
        );
        for (i, n) in g.nodes.iter().enumerate() {
            let inputs: Vec<&str> = n.inputs.iter().map(|v| g.value_name(*v)).collect();
            let _ = writeln!(
                out,
                "  {:width$}  {:16}  {:18}  {:>10}  {:>12}   <- {}",
                n.name,
                n.op.name(),
                format!("{:?}/{}", n.shape, per(n.rows)),
                g.param_count(i),
                n.flops_per_record,
                inputs.join(", ")
            );
        }
        node_section(
            &mut out,
            g,
            "folded for the fast kernels (`verify` compares with the unfolded graph): batch norms and activations into the convolution before them, a convolution into the residual add or the 2x2 max pool that alone reads it (the add or pool runs it and adds, or pools, as it writes), a flatten and the concat on channels before it into the dense layer that alone reads it (which reads the concat's inputs in place):",
            |n| Some(format!("{} folded into {}", n.name, g.nodes[n.folded_into?].name)),
        );
        node_section(
            &mut out,
            g,
            "subnormal parameters (below 1.2e-38 in magnitude) the fast kernels read as zero: on Intel cores every product with one takes a microcode assist, which made the digits MLP 4x slower:",
            |n| (n.subnormals_zeroed > 0).then(|| format!("{}: {}", n.name, n.subnormals_zeroed)),
        );
        if self.config.auto_stages {
            let _ = writeln!(
                out,
                "\nstages: auto: planned when the pipeline starts, by profiling every layer on this machine (`subpass plan` shows the plan); until then, one stage:"
            );
        } else {
            let _ = writeln!(out, "\nstages:");
        }
        for s in &self.stages {
            let layers: Vec<&str> = s.layers.iter().map(|&l| g.nodes[l].name.as_str()).collect();
            let fed: Vec<String> = s
                .producers
                .iter()
                .map(|p| match p {
                    Producer::Source if s.parses => {
                        "source (its workers parse the records)".to_string()
                    }
                    Producer::Source => "source".to_string(),
                    Producer::Stage(j) => self.stages[*j].name.clone(),
                })
                .collect();
            let join = if s.producers.len() > 1 {
                " (joins)"
            } else {
                ""
            };
            let restarts = match s.max_restarts {
                Some(n) => format!(", max_restarts {n}/min"),
                None => String::new(),
            };
            let threads = match s.threads {
                1 => String::new(),
                t => {
                    let split = s
                        .layers
                        .iter()
                        .filter(|&&l| g.layers[l].parts() > 1)
                        .count();
                    format!(", threads {t} ({split} layer(s) split over them)")
                }
            };
            let _ = writeln!(out, "  {}: layers [{}]", s.name, layers.join(", "));
            let _ = writeln!(
                out,
                "    fed by {}{join}; queue {}, replicas {}{threads}{restarts}; params {}; {} FLOPs/{}; activations {}/chunk",
                fed.join(" + "),
                s.queue,
                s.replicas,
                human_bytes(s.param_bytes),
                s.flops_per_record,
                per(s.layers.first().map_or(Rows::Records, |&l| g.nodes[l].rows)),
                human_bytes(s.activation_bytes_per_chunk)
            );
        }
        if let Some(p) = &self.config.planned {
            let _ = writeln!(
                out,
                "planned by `subpass plan` for {} cores at batch {}: {:.0} records/s predicted",
                p.cores, p.batch, p.records_per_s
            );
        }
        let outputs: Vec<&str> = g.outputs.iter().map(|v| g.value_name(*v)).collect();
        let _ = writeln!(out, "\noutputs: {}", outputs.join(", "));
        let b = &self.budget;
        let m = &b.bytes;
        let _ = writeln!(
            out,
            "\nmemory bound: {} bytes of activations in flight ({}), {} chunks at most:\n  parsers {}{} + stage queues {} + stage workers {} + join buffers {} + sink {} + scratch {} + isolation {}",
            m.total(),
            human_bytes(m.total()),
            b.chunks,
            human_bytes(m.parsers),
            if m.decoding > 0 {
                format!(" + image decoding {}", human_bytes(m.decoding))
            } else {
                String::new()
            },
            human_bytes(m.queues),
            human_bytes(m.workers),
            human_bytes(m.joins),
            human_bytes(m.sink),
            human_bytes(m.scratch),
            human_bytes(m.isolation),
        );
        let params: u64 = self.stages.iter().map(|s| s.param_bytes).sum();
        let _ = writeln!(
            out,
            "parameters: {} bytes ({})",
            params,
            human_bytes(params)
        );
        let _ = writeln!(
            out,
            "records read ahead of output: at most {} (plus the OS pipe and a {} read buffer)",
            self.max_records_read_ahead(),
            human_bytes(self.read_buffer_bytes() as u64)
        );
        out
    }
}

/// The stages that feed `stage`, directly or through others.
fn ancestors(stages: &[StagePlan], stage: usize) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    let mut todo = vec![stage];
    while let Some(s) = todo.pop() {
        for p in &stages[s].producers {
            if let Producer::Stage(p) = p {
                if found.insert(*p) {
                    todo.push(*p);
                }
            }
        }
    }
    found
}

/// For each of `layers` (in order), the values to drop after it runs: those no later layer of
/// the stage reads and that do not leave the stage. A value no layer reads goes right after it
/// is made (unless it leaves).
pub(crate) fn liveness(
    graph: &Graph,
    layers: &[usize],
    keep: &BTreeSet<ValueId>,
) -> Vec<Vec<ValueId>> {
    let mut last_use: BTreeMap<ValueId, usize> = BTreeMap::new();
    for (j, &l) in layers.iter().enumerate() {
        last_use.insert(ValueId::of_layer(l), j);
        for v in &graph.nodes[l].inputs {
            last_use.insert(*v, j);
        }
    }
    let mut frees = vec![Vec::new(); layers.len()];
    for (v, j) in last_use {
        if !keep.contains(&v) {
            frees[j].push(v);
        }
    }
    frees
}

/// The most bytes a stage's values take at once for a full chunk: a layer's output is made
/// while everything live before it still is.
fn peak_live_bytes(
    graph: &Graph,
    batch: &BatchConfig,
    layers: &[usize],
    inputs: &[ValueId],
    frees: &[Vec<ValueId>],
) -> u64 {
    let mut live: u64 = inputs.iter().map(|v| chunk_bytes(graph, batch, *v)).sum();
    let mut peak = live;
    for (j, &l) in layers.iter().enumerate() {
        live += chunk_bytes(graph, batch, ValueId::of_layer(l));
        peak = peak.max(live);
        live -= frees[j]
            .iter()
            .map(|v| chunk_bytes(graph, batch, *v))
            .sum::<u64>();
    }
    peak
}

/// The tokenizer of a text pipeline, loaded and set up (errors located at its key).
fn load_tokenizer(
    config: &PipelineConfig,
) -> Result<Option<std::sync::Arc<crate::io::TextTokenizer>>, ConfigErrors> {
    let Some(text) = &config.input.text else {
        return Ok(None);
    };
    crate::io::TextTokenizer::load(&text.tokenizer, text.max_tokens)
        .map(|t| Some(std::sync::Arc::new(t)))
        .map_err(|message| {
            ConfigErrors(vec![ConfigError {
                path: text.key_path.clone(),
                location: None,
                message,
            }])
        })
}

/// `output.top_k` needs one output at least `k` wide; `output.labels` must name every class.
fn check_top_k(config: &PipelineConfig, graph: &Graph) -> Result<(), ConfigErrors> {
    let out = &config.output;
    let Some(k) = &out.top_k else {
        return Ok(());
    };
    let mut errors = Vec::new();
    let mut err = |path: &str, message: String| {
        errors.push(ConfigError {
            path: path.into(),
            location: None,
            message,
        })
    };
    match graph.outputs[..] {
        [v] => {
            let shape = graph.shape(v);
            let width: usize = shape.iter().product();
            let name = graph.value_name(v);
            if k.value > width {
                err(
                    &k.path,
                    format!("top_k is {}, but output `{name}` has only {width} values (shape {shape:?})", k.value),
                );
            }
            if let Some(labels) = &out.labels {
                if labels.names.len() != width {
                    err(
                        &labels.key_path,
                        format!(
                            "the labels file {} names {} classes, but output `{name}` has {width} values (shape {shape:?}); give one name per output, line i naming class i",
                            labels.file.display(),
                            labels.names.len()
                        ),
                    );
                }
            }
        }
        _ => err(
            &k.path,
            format!(
                "top_k ranks the values of one output; this pipeline has {} outputs",
                graph.outputs.len()
            ),
        ),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The most rows a chunk's value has: one per record, or one per token for text.
fn max_rows(batch: &BatchConfig, rows: Rows) -> usize {
    match rows {
        Rows::Records => batch.size,
        Rows::Tokens => batch
            .max_tokens
            .expect("text pipelines always have a token budget"),
    }
}

/// The most bytes value `v` takes in one chunk, as it is carried (a folded layer's value is the
/// input it passes on).
fn chunk_bytes(graph: &Graph, batch: &BatchConfig, v: ValueId) -> u64 {
    let shape = graph.carried_shape(v);
    shape.iter().product::<usize>() as u64 * F32 * max_rows(batch, graph.rows(v)) as u64
}

/// The bound on activations in flight, place by place (see [`ActivationBytes`]).
fn activation_bytes(
    graph: &Graph,
    stages: &[StagePlan],
    source_routes: &[Route],
    chunks: usize,
    parsers: usize,
    config: &PipelineConfig,
) -> ActivationBytes {
    let values_bytes = |vs: &[ValueId]| {
        vs.iter()
            .map(|v| chunk_bytes(graph, &config.batch, *v))
            .sum::<u64>()
    };
    // What each producer sends each stage, per chunk: a joining stage's parts.
    let mut parts: Vec<Vec<u64>> = vec![Vec::new(); stages.len()];
    let all_routes = source_routes
        .iter()
        .chain(stages.iter().flat_map(|s| s.routes.iter()));
    for route in all_routes {
        if let Destination::Stage(s) = route.to {
            parts[s].push(values_bytes(&route.values));
        }
    }
    let mut b = ActivationBytes {
        parsers: parsers as u64 * values_bytes(&[ValueId::INPUT]),
        sink: chunks as u64 * values_bytes(&graph.outputs),
        ..ActivationBytes::default()
    };
    // Chunks that can be anywhere upstream of each stage (in its ancestors' queues, joins and
    // workers, or a parser's hands): a join waits for a missing part that is there.
    let holds = |s: &StagePlan| (s.queue + s.replicas + usize::from(s.producers.len() > 1)) as u64;
    for (s, stage) in stages.iter().enumerate() {
        let (queue, replicas) = (stage.queue as u64, stage.replicas as u64);
        if !stage.parses {
            b.queues += queue * stage.input_bytes_per_chunk;
        }
        b.workers += replicas * stage.activation_bytes_per_chunk;
        b.scratch += replicas * stage.scratch_bytes;
        b.isolation = b.isolation.max(stage.isolation_bytes);
        if stage.producers.len() > 1 {
            let largest = parts[s].iter().copied().max().unwrap_or(0);
            let smallest = parts[s].iter().copied().min().unwrap_or(0);
            // The inbox holds parts; a waiting chunk holds all its parts but the last; the
            // join's hand holds one assembled chunk while the work queue is full.
            let upstream = ancestors(stages, s)
                .iter()
                .map(|&a| holds(&stages[a]))
                .sum::<u64>()
                + parsers as u64;
            let waiting = upstream.min(chunks as u64);
            b.joins += queue * largest + waiting * (stage.input_bytes_per_chunk - smallest);
            b.queues += stage.input_bytes_per_chunk;
        }
    }
    b
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Which stage each layer belongs to, checking that each is in exactly one and that stage names
/// and layer references are sound.
fn check_stage_membership(config: &PipelineConfig) -> Result<HashMap<usize, usize>, ConfigErrors> {
    let Some(stages) = &config.stages else {
        return Ok((0..config.layers.len()).map(|l| (l, 0)).collect());
    };
    let broken = |name: &str| config.broken_layers.iter().any(|b| b == name);
    let mut errors = Vec::new();
    let mut err = |path: &str, message: String| {
        errors.push(ConfigError {
            path: path.into(),
            location: None,
            message,
        })
    };
    let layer_index: HashMap<&str, usize> = config
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    let names: Vec<&str> = config.layers.iter().map(|l| l.name.as_str()).collect();
    let mut stage_names: HashMap<&str, usize> = HashMap::new();
    let mut membership: HashMap<usize, usize> = HashMap::new();
    for (s, stage) in stages.iter().enumerate() {
        if let Some(first) = stage_names.insert(&stage.name, s) {
            err(
                &format!("{}.name", stage.path),
                format!(
                    "duplicate stage name `{}` (first used by stages[{first}])",
                    stage.name
                ),
            );
        }
        for layer in &stage.layers {
            match layer_index.get(layer.value.as_str()) {
                None if broken(&layer.value) => {}
                None => {
                    let hint = suggest(&layer.value, &names)
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    err(
                        &layer.path,
                        format!(
                            "stage `{}` names unknown layer `{}`{hint}",
                            stage.name, layer.value
                        ),
                    );
                }
                Some(&l) => {
                    if let Some(other) = membership.insert(l, s) {
                        err(
                            &layer.path,
                            format!(
                                "layer `{}` is in two stages: `{}` and `{}`",
                                layer.value, stages[other].name, stage.name
                            ),
                        );
                    }
                }
            }
        }
    }
    // Shards no stage names run where the layer that combines them runs.
    for (l, layer) in config.layers.iter().enumerate() {
        if let Some(shard) = &layer.shard {
            if !membership.contains_key(&l) {
                let stage = layer_index
                    .get(shard.combined.as_str())
                    .and_then(|c| membership.get(c))
                    .copied();
                if let Some(stage) = stage {
                    membership.insert(l, stage);
                }
            }
        }
    }
    for (l, layer) in config.layers.iter().enumerate() {
        if !membership.contains_key(&l) {
            err(
                "stages",
                format!(
                    "layer `{}` ({}) is in no stage; add it to one",
                    layer.name, layer.path
                ),
            );
        }
    }
    if errors.is_empty() {
        Ok(membership)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// `parse: true` on one stage at most, fed by the input alone: a stage that also waited on
/// another stage's values would hold the records unparsed until they came, and every stage
/// that reads the input would wait on it.
fn check_parsing_stage(stages: &[StagePlan], configs: &[StageConfig]) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let mut first: Option<&str> = None;
    for (s, c) in stages.iter().zip(configs).filter(|(s, _)| s.parses) {
        let message = if let Some(f) = first {
            format!("stage `{f}` parses the records already; one stage can")
        } else if s.producers != [Producer::Source] {
            first = Some(&s.name);
            "only a stage fed by the pipeline input alone can parse the records: this one waits on other stages' values, and would hold its records unparsed meanwhile".to_string()
        } else {
            first = Some(&s.name);
            continue;
        };
        errors.push(ConfigError {
            path: format!("{}.parse", c.path),
            location: None,
            message,
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Stages whose dependencies loop would deadlock on their bounded channels: refuse them.
fn check_stage_cycles(stages: &[StagePlan], configs: &[StageConfig]) -> Result<(), ConfigErrors> {
    // Kahn's algorithm: whatever is left once no stage is free to run lies on a cycle.
    let n = stages.len();
    let mut indegree = vec![0usize; n];
    for s in stages {
        for r in &s.routes {
            if let Destination::Stage(t) = r.to {
                indegree[t] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&s| indegree[s] == 0).collect();
    let mut done = 0;
    while let Some(s) = ready.pop() {
        done += 1;
        for r in &stages[s].routes {
            if let Destination::Stage(t) = r.to {
                indegree[t] -= 1;
                if indegree[t] == 0 {
                    ready.push(t);
                }
            }
        }
    }
    if done == n {
        return Ok(());
    }
    let stuck: Vec<&str> = (0..n)
        .filter(|&s| indegree[s] > 0)
        .map(|s| stages[s].name.as_str())
        .collect();
    let first = (0..n).find(|&s| indegree[s] > 0).unwrap();
    Err(ConfigErrors(vec![ConfigError {
        path: format!("{}.layers", configs[first].path),
        location: None,
        message: format!(
            "stages {} depend on each other in a cycle (each needs a value another makes); bounded channels in a cycle deadlock, so regroup the layers",
            stuck.join(", ")
        ),
    }]))
}

/// A blank line, `heading`, and one indented line for each node `line` has one for; nothing at
/// all when it has none.
fn node_section(
    out: &mut String,
    g: &Graph,
    heading: &str,
    line: impl Fn(&super::Node) -> Option<String>,
) {
    let lines: Vec<String> = g.nodes.iter().filter_map(line).collect();
    if !lines.is_empty() {
        let _ = writeln!(out, "\n{heading}");
        for l in lines {
            let _ = writeln!(out, "  {l}");
        }
    }
}
