//! `subpass plan` and `stages: auto`: the tool decides the decomposition.
//!
//! The planner profiles every layer of a pipeline on this machine at its batch size
//! ([`profile`]), then chooses stages (sets of layers fed only by themselves and earlier
//! stages, so the stage graph stays acyclic and independent branches in different stages run
//! concurrently) and replicas that minimise the model's time per record ([`partition`]). The
//! pipeline's own stages, if it has any, are rated by the same model, and the plan keeps them
//! when the model finds nothing faster.

pub mod latency;
pub mod partition;
pub mod profile;

use std::fmt::Write as _;
use std::path::Path;

use crate::config::{Located, PipelineConfig, StageConfig, DEFAULT_QUEUE};
use crate::graph::Plan;
use crate::io::InputFormat;
use partition::{choose, parse_in_first_stage, predict_parsed, predict_stages, Choice, Machine};
pub use profile::{median, Profile};

/// What `subpass plan` is asked.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub cores: usize,
    /// Lines of the pipeline's input to profile on (text should be): its bytes and format.
    pub sample: Option<(Vec<u8>, InputFormat)>,
    pub objective: Objective,
    /// Measure the plan against the alternative before keeping it: the file's stages
    /// (throughput), the unsplit pass on one core (latency). On by default; `plan --no-check`
    /// leaves the model alone to decide.
    pub check: bool,
}

/// What the plan makes as fast as it can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Objective {
    /// Records per second: stages and replicas keep every core busy on chunks in flight.
    #[default]
    Throughput,
    /// One chunk's time through the pipeline: layers split into shards use every core on it
    /// (see [`latency`]).
    Latency,
}

/// A chunk's hand-off between two threads, in seconds: what a stage costs beyond its layers
/// (`benches/pipeline.rs` measures 0.3–1.4 µs through a channel, more when the receiver has
/// parked; this is a round upper figure).
const HOP_SECONDS: f64 = 5e-6;

/// CPU a chunk costs outside the stages: fed in (from memory or the chunker), reordered and
/// written by the sink, and the wake-ups of the threads in between. Fit to the configs whose
/// layers cost least (`python3 tools/plan_accuracy.py`: `configs/residual.yaml` and
/// `digits-mlp.yaml` at batch 32 on 2 cores). With a queue of 2 chunks on the fed stage they
/// left 6 to 19 µs of CPU a chunk unexplained by their layers, from one run to the next, and
/// this was 10 µs; since the plan queues about 6 ms of work there (the hand-offs no longer
/// stall), two runs of `plan_accuracy.py` measured `digits-mlp` at 2.57M records/s both times,
/// 11 µs a chunk above its layers, one [`HOP_SECONDS`] and this. It is noise for any model whose
/// layers take a millisecond a chunk.
const OUTSIDE_SECONDS: f64 = 6e-6;

/// Work, in seconds, the queue of the stage the source feeds holds when the plan sizes it. On a
/// machine whose cores all run workers, the threads that feed them (reader, chunker, parsers)
/// wait for a core behind them when woken: `perf sched latency` on the planned MLP with
/// `subpass run` measured the chunker's waits at 1.3 ms on average and up to 4 ms. With a queue
/// of 2 chunks (1.9 ms of work) its workers waited for input 16% of the run; 4 chunks (3.8 ms)
/// left 6-8%, 6 chunks (5.7 ms) 3-4%.
const FEED_SECONDS: f64 = 6e-3;

/// The deepest queue the plan gives the fed stage: tiny chunks need no more to cover
/// [`FEED_SECONDS`] in practice, and each queued chunk is records read ahead of the output.
const MAX_FEED_QUEUE: usize = 16;

/// Choices within this fraction of the fastest count as ties, won by fewer stages.
const TIE: f64 = 0.02;

/// One stage of a plan.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub name: String,
    /// Layer names, in evaluation order.
    pub layers: Vec<String>,
    pub replicas: usize,
    /// Threads each worker spreads a chunk over (`threads:`).
    pub threads: usize,
    /// Its layers' time per record on one core, measured.
    pub seconds_per_record: f64,
    /// The core it is pinned to (latency plans), or `None`.
    pub core: Option<usize>,
    /// Its workers parse the records (`parse: true`), in place of a parser thread.
    pub parse: bool,
    /// Capacity of its input queue, in chunks (`queue:`).
    pub queue: usize,
}

/// The decomposition the planner chose, and what it predicts.
#[derive(Debug, Clone)]
pub struct Planned {
    pub stages: Vec<PlannedStage>,
    pub cores: usize,
    pub batch: usize,
    /// Records per second the stages pass fed from memory, as `subpass bench` measures them.
    pub predicted_records_per_s: f64,
    /// Records per second end to end, the parsers' work included, as `subpass run` reads them.
    pub predicted_stream_records_per_s: f64,
    /// The stage that sets the pace, or `None` when the cores as a whole do.
    pub bottleneck: Option<String>,
    /// The pipeline's own stages, rated by the same model, when it has any.
    pub as_written_records_per_s: Option<f64>,
    /// The plan is the pipeline's own stages: the model found nothing faster, or the check
    /// run below measured the file's stages faster.
    pub kept_as_written: bool,
    /// Records per second measured in the check run, fed from memory: (the model's stages, the
    /// file's own), when the two differed.
    pub confirmed: Option<(f64, f64)>,
    pub profile: Profile,
    /// Layer names in node order, for the profile table.
    layer_names: Vec<String>,
    /// The layers in the order the written file's ranges (`first..last`) run over: its
    /// `layers` as loaded. Empty for a plan that writes shards, whose stages each make one
    /// range over the shards' layout.
    file_layers: Vec<String>,
    /// Layers split into shards by the plan (`--objective latency`), with their shard counts.
    pub shards: Vec<(String, usize)>,
    /// With `--objective latency`: (one chunk's predicted seconds through the stages, the same
    /// chunk's measured seconds through the unsplit layers on one core).
    pub latency: Option<(f64, f64)>,
    /// With `--objective latency` and a split to check: one chunk's measured seconds, alone in
    /// the pipeline (medians of alternated runs), through each way of splitting it and through
    /// one unsplit stage. A split is kept only where it is faster by more than a tie.
    pub latency_check: Option<LatencyCheck>,
}

/// [`Planned::latency_check`]: one chunk's measured seconds alone through each candidate.
#[derive(Debug, Clone, Copy)]
pub struct LatencyCheck {
    /// The layers split into shards, a stage each (`None`: no layer shards).
    pub shards: Option<f64>,
    /// One stage on a team of threads that splits the convolutions (`None`: nothing splits).
    pub team: Option<f64>,
    /// One unsplit stage on one thread.
    pub unsplit: f64,
}

/// Plan `plan`'s stages on `options.cores` cores at its batch size.
pub fn plan(plan: &Plan, options: &PlanOptions) -> Result<Planned, String> {
    let cores = options.cores.max(1);
    let sample = options.sample.as_ref();
    let profile = profile::profile(
        plan,
        sample.map(|(b, _)| &b[..]),
        sample.map_or(InputFormat::JsonLines, |(_, f)| *f),
        cores,
    )?;
    let machine = Machine {
        cores,
        parse: profile.parse,
        parsers: plan.parsers,
        contention: profile.contention,
        hop: HOP_SECONDS / plan.batch.size as f64,
        outside: OUTSIDE_SECONDS / plan.batch.size as f64,
    };
    if options.objective == Objective::Latency {
        return plan_latency(plan, options, profile, machine);
    }
    let names: Vec<String> = plan.graph.nodes.iter().map(|n| n.name.clone()).collect();
    let chosen = choose(&profile.layers, &layer_inputs(plan), &machine, TIE);
    let stage_cost = |layers: &[usize]| layers.iter().map(|&l| profile.layers[l]).sum::<f64>();
    let mut stages: Vec<PlannedStage> = chosen
        .groups
        .iter()
        .zip(&chosen.replicas)
        .enumerate()
        .map(|(i, (group, &replicas))| PlannedStage {
            name: if chosen.groups.len() == 1 {
                "all".to_string()
            } else {
                format!("stage{i}")
            },
            layers: group.iter().map(|&l| names[l].clone()).collect(),
            replicas,
            threads: 1,
            seconds_per_record: stage_cost(group),
            core: None,
            parse: false,
            queue: DEFAULT_QUEUE,
        })
        .collect();
    let mut best: Choice = chosen;
    let fed = machine.fed();
    let costs_of = |stages: &[PlannedStage]| -> Vec<f64> {
        stages.iter().map(|s| s.seconds_per_record).collect()
    };
    if let Some(parsing) = parse_in_first_stage(&costs_of(&stages), &best.replicas, &machine, TIE) {
        best = Choice {
            groups: best.groups,
            ..parsing
        };
        stages[0].parse = true;
    }
    // The stages as written (their costs and replicas), rated by the same model: kept unless
    // the plan beats them.
    let written_stages = (plan.config.stages.is_some() && !plan.config.auto_stages).then(|| {
        let costs: Vec<f64> = plan.stages.iter().map(|s| stage_cost(&s.layers)).collect();
        let replicas: Vec<usize> = plan.stages.iter().map(|s| s.replicas).collect();
        (costs, replicas)
    });
    let written = written_stages
        .as_ref()
        .map(|(costs, replicas)| predict_parsed(costs, replicas, plan.parsing_stage(), &machine));
    let as_written = || -> Vec<PlannedStage> {
        plan.stages
            .iter()
            .map(|s| PlannedStage {
                name: s.name.clone(),
                layers: s.layers.iter().map(|&l| names[l].clone()).collect(),
                replicas: s.replicas,
                threads: s.threads,
                seconds_per_record: stage_cost(&s.layers),
                core: s.core,
                parse: s.parses,
                queue: s.queue,
            })
            .collect()
    };
    let mut kept = false;
    if let (Some(w), Some((costs, replicas))) = (&written, &written_stages) {
        // Kept when as good end to end and fed from memory (the tie-break `choose` applies).
        let written_fed = predict_stages(costs, replicas, &fed).seconds_per_record;
        let chosen_fed =
            predict_stages(&costs_of(&stages), &best.replicas, &fed).seconds_per_record;
        if w.seconds_per_record <= best.seconds_per_record * (1.0 + TIE)
            && written_fed <= chosen_fed * (1.0 + TIE)
            && replicas.iter().sum::<usize>() <= cores
        {
            kept = true;
            best = w.clone();
            stages = as_written();
        }
    }
    // The first stage is the one the source feeds: its queue covers its feeders' waits for a
    // core. Set before the check run, which then measures what `--write` writes.
    if !kept {
        if let Some(first) = stages.first_mut() {
            first.queue = feed_queue(first, &machine, plan.batch.size);
        }
    }
    // When the model prefers its own stages to the file's, a short run of each, fed from memory,
    // has the last word: the model knows no cache effects, and a plan must never be slower than
    // what the user wrote. (Text pipelines are not fed from memory: the model decides alone.)
    let mut confirmed = None;
    if let (Some(w), false, None, true) = (&written, kept, &plan.tokenizer, options.check) {
        let predicted = 1.0 / best.seconds_per_record.max(1e-12);
        let ours = stage_configs(&stages);
        let theirs = plan.config.stages.clone().unwrap_or_default();
        // Alternated rounds, medians: one short run each is at the mercy of whatever else the
        // machine does in that moment.
        let mut runs = (Vec::new(), Vec::new());
        for _ in 0..CHECK_ROUNDS {
            runs.0.extend(measure(plan, ours.clone(), predicted));
            runs.1.extend(measure(plan, theirs.clone(), predicted));
        }
        if runs.0.len() == CHECK_ROUNDS && runs.1.len() == CHECK_ROUNDS {
            let (ours, theirs) = (profile::median(runs.0), profile::median(runs.1));
            confirmed = Some((ours, theirs));
            // The model's stages stay unless the file's are faster by more than a tie: within
            // it, the two measure the same (this machine's run-to-run noise is larger).
            if theirs > ours * (1.0 + TIE) {
                kept = true;
                best = w.clone();
                stages = as_written();
            }
        }
    }
    // The same stages fed from memory: no parser at work.
    let in_memory = predict_stages(&costs_of(&stages), &best.replicas, &fed);
    Ok(Planned {
        bottleneck: best.bottleneck.map(|b| stages[b].name.clone()),
        stages,
        cores,
        batch: plan.batch.size,
        predicted_records_per_s: 1.0 / in_memory.seconds_per_record.max(1e-12),
        predicted_stream_records_per_s: 1.0 / best.seconds_per_record.max(1e-12),
        as_written_records_per_s: written.map(|w| 1.0 / w.seconds_per_record.max(1e-12)),
        kept_as_written: kept,
        confirmed,
        profile,
        file_layers: names.clone(),
        layer_names: names,
        shards: Vec::new(),
        latency: None,
        latency_check: None,
    })
}

/// For each layer, the layers whose values it reads (the records themselves left out): what
/// the partition keeps stages acyclic by.
fn layer_inputs(plan: &Plan) -> Vec<Vec<usize>> {
    plan.graph
        .nodes
        .iter()
        .map(|n| {
            let mut reads: Vec<usize> = n.inputs.iter().filter_map(|v| v.layer()).collect();
            reads.sort_unstable();
            reads.dedup();
            reads
        })
        .collect()
}

/// A stage's `layers` as runs of layers consecutive in `order` (the file's), each
/// `first{to}last` or one name: a stage holds any set of layers the stages before it feed (a
/// tower and the head after the other tower), not always one range. Layers not in `order` (a
/// latency plan's shards, laid out by its `shards:` section) make one run.
fn layer_runs(layers: &[String], order: &[String], to: &str) -> Vec<String> {
    let run = |names: &[String]| match names {
        [one] => one.clone(),
        [first, .., last] => format!("{first}{to}{last}"),
        [] => String::new(),
    };
    let at = |name: &String| order.iter().position(|n| n == name);
    let Some(index) = layers.iter().map(at).collect::<Option<Vec<usize>>>() else {
        return vec![run(layers)];
    };
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=layers.len() {
        if i == layers.len() || index[i] != index[i - 1] + 1 {
            out.push(run(&layers[start..i]));
            start = i;
        }
    }
    out
}

/// The queue of `stage`, the one the source feeds: enough chunks to hold [`FEED_SECONDS`] of its
/// workers' time (its layers, and the parse when they parse), at least [`DEFAULT_QUEUE`] and at
/// most [`MAX_FEED_QUEUE`].
fn feed_queue(stage: &PlannedStage, machine: &Machine, batch: usize) -> usize {
    let per_record = stage.seconds_per_record + if stage.parse { machine.parse } else { 0.0 };
    let interval = per_record * batch as f64 / stage.replicas.max(1) as f64;
    let chunks = (FEED_SECONDS / interval.max(1e-9)).ceil();
    (chunks.min(MAX_FEED_QUEUE as f64) as usize).max(DEFAULT_QUEUE)
}

/// [`plan`] for [`Objective::Latency`]: shards where they pay, or one stage on a team of
/// threads, their stages, the prediction.
fn plan_latency(
    plan: &Plan,
    options: &PlanOptions,
    whole: Profile,
    machine: Machine,
) -> Result<Planned, String> {
    let sample = options.sample.as_ref().map(|(b, f)| (&b[..], *f));
    let mut chosen = latency::plan(plan, &whole, machine.cores, sample)?;
    chosen.profile.elapsed += whole.elapsed;
    let team = latency::team(plan, &whole, &chosen, machine.cores);
    // The model knows no cache effects and no wake-ups but its round figure: a short run of one
    // chunk at a time through each candidate and through one unsplit stage has the last word,
    // so that a latency plan is never slower than not splitting. (Text pipelines are not fed
    // from memory: the model decides alone.)
    let split = !chosen.shards.is_empty();
    let mut latency_check = None;
    let measured = (options.check && (split || team.is_some()) && plan.tokenizer.is_none())
        .then(|| check_latency(plan, &chosen, team.as_ref()))
        .flatten();
    let (shards_s, team_s) = match measured {
        Some(c) => {
            latency_check = Some(c);
            (c.shards, c.team)
        }
        None => (
            split.then_some(chosen.seconds_per_chunk),
            team.as_ref().map(|t| t.seconds_per_chunk),
        ),
    };
    let unsplit_s = measured.map_or(chosen.unsplit_seconds_per_chunk, |c| c.unsplit);
    let inf = f64::INFINITY;
    let best_split = shards_s.unwrap_or(inf).min(team_s.unwrap_or(inf));
    if best_split * (1.0 + TIE) >= unsplit_s {
        chosen = latency::unsplit(plan, chosen);
    } else if team_s.unwrap_or(inf) <= shards_s.unwrap_or(inf) {
        let team = team.expect("measured or predicted only when it exists");
        chosen = latency::with_team(plan, chosen, team, &whole);
    }
    let costs: Vec<f64> = chosen.stages.iter().map(|s| s.seconds_per_record).collect();
    let replicas = vec![1; costs.len()];
    let rate = |m: &Machine| {
        1.0 / predict_stages(&costs, &replicas, m)
            .seconds_per_record
            .max(1e-12)
    };
    let fed = machine.fed();
    Ok(Planned {
        cores: machine.cores,
        batch: plan.batch.size,
        predicted_records_per_s: rate(&fed),
        predicted_stream_records_per_s: rate(&machine),
        bottleneck: None,
        as_written_records_per_s: None,
        kept_as_written: false,
        confirmed: None,
        stages: chosen.stages,
        profile: chosen.profile,
        layer_names: chosen.layer_names,
        file_layers: match chosen.shards.is_empty() {
            true => plan.graph.nodes.iter().map(|n| n.name.clone()).collect(),
            false => Vec::new(),
        },
        shards: chosen.shards,
        latency: Some((chosen.seconds_per_chunk, chosen.unsplit_seconds_per_chunk)),
        latency_check,
    })
}

/// One chunk's seconds alone through `chosen`'s split stages (when it splits layers), through
/// `team`'s stage (when there is one) and through one unsplit stage, medians of
/// [`CHECK_ROUNDS`] alternated runs of about [`CHECK_SECONDS`] each; `None` if one does not
/// build or run.
fn check_latency(
    plan: &Plan,
    chosen: &latency::LatencyPlan,
    team: Option<&latency::TeamPlan>,
) -> Option<LatencyCheck> {
    let build = |c: &PipelineConfig| Plan::build(c).ok().map(std::sync::Arc::new);
    let split = match chosen.shards.is_empty() {
        true => None,
        false => {
            let mut config = latency::split_config(plan, &chosen.shards).ok()?;
            config.stages = Some(stage_configs(&chosen.stages));
            Some(build(&config)?)
        }
    };
    let one_stage = |stage: PlannedStage| {
        let mut config = plan.config.clone();
        config.stages = Some(stage_configs(&[stage]));
        config.auto_stages = false;
        build(&config)
    };
    let team = match team {
        Some(t) => Some(one_stage(t.stage.clone())?),
        None => None,
    };
    let whole = one_stage(latency::one_stage(plan))?;
    // Sized from the unsplit time: at least 3 chunks a run, at most 200.
    let chunk = chosen.unsplit_seconds_per_chunk.max(1e-6);
    let chunks = ((CHECK_SECONDS / chunk) as usize).clamp(3, 200);
    let mut runs = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..CHECK_ROUNDS {
        // The first round warms them all (caches, allocator, parked threads): not counted.
        let a = split.as_ref().map(|p| idle_latency(p, chunks));
        let b = team.as_ref().map(|p| idle_latency(p, chunks));
        let c = idle_latency(&whole, chunks)?;
        if round > 0 {
            runs.0.extend(a.map(|a| a.unwrap_or(f64::INFINITY)));
            runs.1.extend(b.map(|b| b.unwrap_or(f64::INFINITY)));
            runs.2.push(c);
        }
    }
    let median = |v: Vec<f64>| (!v.is_empty()).then(|| profile::median(v));
    Some(LatencyCheck {
        shards: median(runs.0),
        team: median(runs.1),
        unsplit: profile::median(runs.2),
    })
}

/// The median seconds of one chunk alone through `plan`'s stages, over `chunks` chunks sent
/// one at a time.
fn idle_latency(plan: &std::sync::Arc<Plan>, chunks: usize) -> Option<f64> {
    let records = chunks * plan.batch.size;
    let inputs = check_input(plan);
    let run =
        crate::runtime::run_bench_pipeline(plan.clone(), inputs, records, None, Some(1), None)
            .ok()?;
    let mut latencies: Vec<f64> = run.latencies.iter().map(|d| d.as_secs_f64()).collect();
    (!latencies.is_empty()).then(|| {
        latencies.sort_by(f64::total_cmp);
        latencies[latencies.len() / 2]
    })
}

/// Records per second of `plan` with `stages` instead of its own, fed from memory for about
/// [`CHECK_SECONDS`] (`predicted` sizes the run); `None` if those stages do not build.
fn measure(plan: &Plan, stages: Vec<StageConfig>, predicted: f64) -> Option<f64> {
    let mut config = plan.config.clone();
    config.stages = Some(stages);
    config.auto_stages = false;
    let candidate = std::sync::Arc::new(Plan::build(&config).ok()?);
    let inputs = check_input(&candidate);
    // Sized from the prediction, but at least 4 chunks and at most 256, so that a prediction far
    // off (tiny models, whose hand-offs the model underrates) cannot make the check run long.
    let batch = candidate.batch.size;
    let records = ((predicted * CHECK_SECONDS) as usize).clamp(4 * batch, 256 * batch);
    // Warm: a tenth of the run, not counted.
    crate::runtime::run_bench_pipeline(
        candidate.clone(),
        inputs.clone(),
        records / 10 + 1,
        None,
        None,
        None,
    )
    .ok()?;
    let run =
        crate::runtime::run_bench_pipeline(candidate, inputs, records, None, None, None).ok()?;
    Some(run.records as f64 / run.elapsed.as_secs_f64())
}

/// One seeded chunk of `plan`'s input, which the check runs feed again and again.
fn check_input(plan: &Plan) -> Vec<Vec<f32>> {
    let len = plan.input_len() * plan.batch.size;
    let mut next = crate::weights::seeded_stream(5, "plan-check");
    vec![(0..len).map(|_| next()).collect()]
}

/// How long each check run of [`measure`] lasts, about, and how many alternated rounds of the
/// two contenders the check takes the medians of.
const CHECK_SECONDS: f64 = 0.2;
const CHECK_ROUNDS: usize = 5;

/// `stages` as a pipeline file's `stages` section holds them.
fn stage_configs(stages: &[PlannedStage]) -> Vec<StageConfig> {
    stages
        .iter()
        .enumerate()
        .map(|(i, s)| StageConfig {
            name: s.name.clone(),
            layers: s
                .layers
                .iter()
                .map(|l| Located {
                    value: l.clone(),
                    path: format!("stages[{i}].layers"),
                })
                .collect(),
            queue: s.queue,
            replicas: s.replicas,
            threads: s.threads,
            // Chosen stages take the run's restart budget (`--max-restarts`).
            max_restarts: None,
            core: s.core,
            parse: s.parse,
            path: format!("stages[{i}]"),
        })
        .collect()
}

impl Planned {
    /// When a chunk's hand-offs cost it more CPU than its layers (tiny models at small
    /// batches): a line saying so, and the batch at which they would be a quarter of the layers'
    /// time. Nothing for a latency plan, which is about one chunk's time, not the CPU per record.
    fn hand_off_note(&self) -> Option<String> {
        let layers = self.profile.layers.iter().sum::<f64>() * self.batch as f64;
        let outside = HOP_SECONDS * self.stages.len() as f64 + OUTSIDE_SECONDS;
        if self.latency.is_some() || outside <= layers || layers <= 0.0 {
            return None;
        }
        let batch = self.batch * ((4.0 * outside / layers).ceil() as usize).next_power_of_two();
        Some(format!(
            "hand-offs: a chunk costs about {:.0} µs of CPU outside its layers, more than its layers' {:.1} µs at batch {}; bigger chunks spread that over more records (not the parse, {:.2} µs a record), for more latency and memory a chunk: plan again with `--batch {batch}` to profile a batch where it would be under a quarter",
            outside * 1e6,
            layers * 1e6,
            self.batch,
            self.profile.parse * 1e6,
        ))
    }

    /// The threads of a latency plan's one stage on a team; 1 otherwise.
    fn team_threads(&self) -> usize {
        match &self.stages[..] {
            [one] => one.threads,
            _ => 1,
        }
    }

    /// The stages as a pipeline file's `stages` section holds them.
    pub fn stage_configs(&self) -> Vec<StageConfig> {
        stage_configs(&self.stages)
    }

    /// The `stages:` section (and `planned:`, the prediction `bench` compares with) as YAML.
    pub fn yaml(&self) -> String {
        let mut y = String::from("stages:\n");
        if !self.shards.is_empty() {
            y = String::from("shards:\n");
            for (name, k) in &self.shards {
                let _ = writeln!(y, "  \"{name}\": {k}");
            }
            y.push_str("stages:\n");
        }
        for s in &self.stages {
            let layers = layer_runs(&s.layers, &self.file_layers, "..").join("\", \"");
            let core = s.core.map(|c| format!(", core: {c}")).unwrap_or_default();
            let threads = match s.threads {
                1 => String::new(),
                t => format!(", threads: {t}"),
            };
            let parse = if s.parse { ", parse: true" } else { "" };
            let queue = match s.queue {
                DEFAULT_QUEUE => String::new(),
                q => format!(", queue: {q}"),
            };
            let _ = writeln!(
                y,
                "  - {{name: {}, layers: [\"{layers}\"], replicas: {}{threads}{core}{parse}{queue}}}",
                s.name, s.replicas
            );
        }
        let _ = writeln!(
            y,
            "planned: {{cores: {}, batch: {}, records_per_s: {:.0}}}",
            self.cores, self.batch, self.predicted_records_per_s
        );
        y
    }

    /// The plan as `subpass plan` prints it: the profile, the stages, the prediction.
    pub fn describe(&self) -> String {
        let p = &self.profile;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "profiled {} layers at batch {} in {:.1} s ({} rounds each, medians); parser {:.2} µs/record; contention with {} cores busy: {:.2}x",
            self.layer_names.len(),
            self.batch,
            p.elapsed.as_secs_f64(),
            p.rounds,
            p.parse * 1e6,
            self.cores,
            p.contention
        );
        let total: f64 = p.layers.iter().sum();
        let width = self
            .layer_names
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "\n  {:width$}  {:>12}  {:>6}",
            "layer", "µs/record", "share"
        );
        for (name, t) in self.layer_names.iter().zip(&p.layers) {
            let _ = writeln!(
                out,
                "  {name:width$}  {:>12.3}  {:>5.1}%",
                t * 1e6,
                100.0 * t / total.max(1e-12)
            );
        }
        let _ = writeln!(out, "\nstages on {} cores:", self.cores);
        for (i, s) in self.stages.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {}: {} layer(s) [{}], replicas {}, {:.3} µs/record on one core{}{}{}",
                s.name,
                s.layers.len(),
                layer_runs(&s.layers, &self.file_layers, " .. ").join(", "),
                s.replicas,
                s.seconds_per_record * 1e6,
                if s.parse {
                    ", and its workers parse the records"
                } else {
                    ""
                },
                // The plan sizes only the first stage's queue; a file kept as written says why
                // its own queues are what they are, not the plan.
                match (s.queue, i == 0 && !self.kept_as_written) {
                    (DEFAULT_QUEUE, _) => String::new(),
                    (q, true) => format!("; queue {q}, so that it has work while the threads that feed it wait for a core"),
                    (q, false) => format!("; queue {q}"),
                },
                if self.bottleneck.as_deref() == Some(s.name.as_str()) {
                    "  <- bottleneck"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(
            out,
            "\npredicted: {:.0} records/s fed from memory (`subpass bench`), {:.0} records/s end to end with the parser; bottleneck: {}",
            self.predicted_records_per_s,
            self.predicted_stream_records_per_s,
            self.bottleneck
                .clone()
                .unwrap_or_else(|| format!("the {} cores as a whole", self.cores))
        );
        if let Some(note) = self.hand_off_note() {
            let _ = writeln!(out, "{note}");
        }
        if let Some((ours, theirs)) = self.confirmed {
            let _ = writeln!(
                out,
                "check run, fed from memory: the model's stages {ours:.0} records/s, the file's {theirs:.0} records/s: {} kept",
                if self.kept_as_written { "the file's stages" } else { "the model's stages" }
            );
        }
        if let Some(w) = self.as_written_records_per_s {
            let _ = writeln!(
                out,
                "the file's own stages: predicted {w:.0} records/s end to end{}",
                if self.kept_as_written { " (kept)" } else { "" }
            );
        }
        if let Some(c) = self.latency_check {
            let mut seen = Vec::new();
            if let Some(s) = c.shards {
                seen.push(format!("{:.3} ms through the split stages", s * 1e3));
            }
            if let Some(t) = c.team {
                seen.push(format!(
                    "{:.3} ms on one stage of {} threads",
                    t * 1e3,
                    self.cores
                ));
            }
            seen.push(format!(
                "{:.3} ms through one unsplit stage",
                c.unsplit * 1e3
            ));
            let kept = if !self.shards.is_empty() {
                "the split stages kept"
            } else if self.team_threads() > 1 {
                "the team kept"
            } else {
                "not split (no split is faster)"
            };
            let _ = writeln!(
                out,
                "check run, one chunk at a time: {}: {kept}",
                seen.join(", ")
            );
        }
        if let Some((split, whole)) = self.latency {
            let names: Vec<&str> = self.shards.iter().map(|(n, _)| n.as_str()).collect();
            let threads = self.team_threads();
            if threads > 1 {
                let _ = writeln!(
                    out,
                    "latency: one stage on {threads} threads, the convolutions split over them; one chunk of {} predicted {:.3} ms, {:.3} ms unsplit on one core ({:.2}x)",
                    self.batch,
                    split * 1e3,
                    whole * 1e3,
                    whole / split.max(1e-12)
                );
            } else if names.is_empty() {
                let _ = writeln!(
                    out,
                    "latency: no layer split; one chunk of {} predicted {:.3} ms on one core",
                    self.batch,
                    whole * 1e3
                );
            } else {
                let _ = writeln!(
                    out,
                    "latency: {} layer(s) split into {} shards [{}]; one chunk of {} predicted {:.3} ms through the stages, {:.3} ms unsplit on one core ({:.2}x)",
                    names.len(),
                    self.cores,
                    names.join(", "),
                    self.batch,
                    split * 1e3,
                    whole * 1e3,
                    whole / split.max(1e-12)
                );
            }
        }
        out
    }
}

/// `text` (a pipeline file) with its `stages` section (and `planned`, and `batch` when given)
/// replaced by the plan's, everything else as written.
pub fn rewrite(
    text: &str,
    planned: &Planned,
    batch: Option<&crate::config::BatchConfig>,
) -> String {
    let mut text = replace_section(text, "planned", "");
    if !planned.shards.is_empty() {
        // The plan's `shards` section comes with its stages (in `yaml`).
        text = replace_section(&text, "shards", "");
    }
    let stages = planned.yaml();
    text = replace_section(&text, "stages", &stages);
    if let Some(b) = batch {
        let mut y = format!(
            "batch: {{size: {}, max_delay_ms: {}",
            b.size,
            b.max_delay.as_millis()
        );
        if let Some(t) = b.max_tokens {
            let _ = write!(y, ", max_tokens: {t}");
        }
        y.push_str("}\n");
        text = replace_section(&text, "batch", &y);
    }
    text
}

/// `text` with the relative paths of its `weights:` and `tokenizer:` values made absolute (read
/// from `dir`, the pipeline file's folder), so the file still loads when written elsewhere.
pub fn absolute_paths(text: &str, dir: &Path) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        out.push_str(&absolute_in_line(line, dir));
    }
    out
}

fn absolute_in_line(line: &str, dir: &Path) -> String {
    for key in ["weights:", "tokenizer:"] {
        let Some(at) = line.find(key) else { continue };
        // The key must start the line or follow `{`, `,` or spaces (not end another word).
        if at > 0 && !line[..at].ends_with([' ', '{', ',']) {
            continue;
        }
        let start = at + key.len();
        let rest = &line[start..];
        let value_start = start + (rest.len() - rest.trim_start().len());
        let end = line[value_start..]
            .find([',', '}', '#', '\n', '\r'])
            .map_or(line.len(), |e| value_start + e);
        let raw = line[value_start..end].trim_end();
        let unquoted = raw.trim_matches(|c| c == '"' || c == '\'');
        if unquoted.is_empty() || unquoted.starts_with('{') || Path::new(unquoted).is_absolute() {
            continue;
        }
        let absolute = dir.join(unquoted);
        return format!(
            "{}{:?}{}",
            &line[..value_start],
            absolute.display().to_string(),
            &line[value_start + raw.len()..]
        );
    }
    line.to_string()
}

/// Replace the top-level section `key` (its line and the indented or listed lines under it) with
/// `with`, or append `with` when the file has no such section.
fn replace_section(text: &str, key: &str, with: &str) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let starts = |l: &str| {
        l.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    };
    let Some(first) = lines.iter().position(|l| starts(l)) else {
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(with);
        return out;
    };
    // The section runs to the next line that starts a top-level key (a comment or a blank line
    // before it stays with what follows).
    let mut end = first + 1;
    while end < lines.len() {
        let l = lines[end];
        let top_level = l.starts_with(|c: char| c.is_alphanumeric() || c == '_' || c == '"');
        if top_level {
            break;
        }
        end += 1;
    }
    while end > first + 1 && {
        let t = lines[end - 1].trim();
        t.is_empty() || (lines[end - 1].starts_with('#'))
    } {
        end -= 1;
    }
    let mut out: String = lines[..first].concat();
    out.push_str(with);
    out.push_str(&lines[end..].concat());
    out
}

/// For a pipeline with `stages: auto`: profile and plan it on this machine's cores and return
/// the plan with the planner's stages (logged), or the plan itself for any other pipeline.
pub fn resolve_auto(plan: Plan) -> Result<Plan, String> {
    if !plan.config.auto_stages {
        return Ok(plan);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let planned = self::plan(
        &plan,
        &PlanOptions {
            cores,
            sample: None,
            objective: Objective::Throughput,
            check: true,
        },
    )?;
    for s in &planned.stages {
        tracing::info!(stage = %s.name, layers = ?s.layers, replicas = s.replicas, "planned stage");
    }
    tracing::info!(
        seconds = format!("{:.2}", planned.profile.elapsed.as_secs_f64()),
        predicted_records_per_s = planned.predicted_records_per_s as u64,
        "stages: auto planned"
    );
    let mut config: PipelineConfig = plan.config.clone();
    config.stages = Some(planned.stage_configs());
    let plan = Plan::build(&config).map_err(|e| format!("the planned stages do not fit: {e}"))?;
    tracing::info!(
        activation_bytes = plan.budget.activation_bytes(),
        chunks = plan.budget.chunks,
        "memory bound of the planned stages"
    );
    Ok(plan)
}

/// `subpass plan --write OUT`: the pipeline file at `pipeline` with the planned stages (and
/// `batch` when given), its relative paths made absolute when `out` is in another folder, checked
/// to load as it stands.
pub fn write_pipeline(
    pipeline: &Path,
    out: &Path,
    planned: &Planned,
    batch: Option<&crate::config::BatchConfig>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(pipeline)
        .map_err(|e| format!("cannot read {}: {e}", pipeline.display()))?;
    let mut written = rewrite(&text, planned, batch);
    let folder = |p: &Path| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        std::fs::canonicalize(dir.unwrap_or(Path::new("."))).ok()
    };
    let from = folder(pipeline);
    if from != folder(out) {
        if let Some(dir) = &from {
            written = absolute_paths(&written, dir);
        }
    }
    std::fs::write(out, written).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Plan::load(out)
        .map(|_| ())
        .map_err(|e| format!("the written file does not load: {}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(seconds_per_record: f64, replicas: usize, parse: bool) -> PlannedStage {
        PlannedStage {
            name: "all".into(),
            layers: vec!["fc".into()],
            replicas,
            threads: 1,
            seconds_per_record,
            core: None,
            parse,
            queue: DEFAULT_QUEUE,
        }
    }

    fn machine(parse: f64) -> Machine {
        Machine {
            cores: 2,
            parse,
            parsers: 1,
            contention: 1.0,
            hop: 0.0,
            outside: 0.0,
        }
    }

    #[test]
    fn a_stage_of_separate_runs_of_layers_is_written_as_those_runs() {
        let order: Vec<String> = ["a1", "a2", "b1", "b2", "join", "head"]
            .map(String::from)
            .to_vec();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A tower, then the head after the other tower: never `a1..head`, which holds `b1`.
        assert_eq!(
            layer_runs(&names(&["a1", "a2", "join", "head"]), &order, ".."),
            ["a1..a2", "join..head"]
        );
        assert_eq!(layer_runs(&names(&["b1"]), &order, ".."), ["b1"]);
        assert_eq!(
            layer_runs(&names(&["a1", "b1", "head"]), &order, ".."),
            ["a1", "b1", "head"]
        );
        assert_eq!(layer_runs(&order, &order, " .. "), ["a1 .. head"]);
        // Shards the file does not list: one run, as before.
        assert_eq!(
            layer_runs(&names(&["fc.shard0", "fc.shard1"]), &order, ".."),
            ["fc.shard0..fc.shard1"]
        );
    }

    #[test]
    fn the_fed_stage_queues_about_six_milliseconds_of_its_work() {
        // The planned MLP: 25 µs a record plus 4.5 µs to parse it, 64 records a chunk, two
        // replicas: a chunk every 0.94 ms, so 7 chunks hold 6 ms.
        let mlp = stage(25e-6, 2, true);
        assert_eq!(feed_queue(&mlp, &machine(4.5e-6), 64), 7);
        // Not parsing, the parse is not its work: a chunk every 0.8 ms.
        let fed = stage(25e-6, 2, false);
        assert_eq!(feed_queue(&fed, &machine(4.5e-6), 64), 8);
        // One replica takes a chunk half as often.
        assert_eq!(feed_queue(&stage(25e-6, 1, false), &machine(0.0), 64), 4);
        // Tiny chunks: capped; long ones: never below the default.
        let tiny = stage(0.4e-6, 2, true);
        assert_eq!(feed_queue(&tiny, &machine(0.6e-6), 32), MAX_FEED_QUEUE);
        let images = stage(20e-3, 2, false);
        assert_eq!(feed_queue(&images, &machine(1e-3), 1), DEFAULT_QUEUE);
        // A stage the profile measured at nothing gets the cap, not a division by zero.
        assert_eq!(
            feed_queue(&stage(0.0, 1, false), &machine(0.0), 1),
            MAX_FEED_QUEUE
        );
    }
}
