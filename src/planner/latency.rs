//! `subpass plan --objective latency`: one chunk through the pipeline as fast as it can go.
//!
//! Stages and replicas raise throughput by keeping several chunks in flight; they do nothing for
//! one chunk alone, which still runs its layers one after another on one core at a time. What
//! shortens that path is running the parts of one layer at once: layer shards (`shards: k`),
//! each a concurrent stage over its own filters, units or heads, joined by the layer's own
//! name. The planner shards every layer where that pays on this machine, measured:
//!
//! 1. every layer that can be split (dense, conv2d, attention) and whose time per chunk, spread
//!    over the cores, saves more than the two hand-offs it adds is split into one shard a core;
//! 2. the split pipeline is profiled, and a split is kept where its slowest shard plus the join
//!    plus the hand-offs beats the whole layer;
//! 3. the stages follow the graph: the layers from one split layer's join to the next split
//!    layer's first shard are a stage, and every other shard a stage of its own. A stage sends
//!    each value as soon as it has it, so the shards' input leaves before the first shard
//!    starts: the other shards start on the other cores at once, and one wake-up, not two,
//!    stands between the layers before and the shards.
//!
//! Each stage is pinned to a core (`core:`): the layers between and the first shards to core
//! 0, shard `i` to core `i`. Left to the OS, a woken shard stage is often queued on the core of
//! the stage that woke it rather than on the idle one (measured on this project's virtual
//! machine: half the shard pairs ran one after the other), and the whole point is lost.
//!
//! The prediction is the chunk's path through those stages: the layers between split layers,
//! the slowest shard of each, and a hand-off to every join.

use std::collections::HashMap;

use super::profile::{self, Profile};
use super::PlannedStage;
use crate::config::{shard_layer, LayerConfig, PipelineConfig, DEFAULT_QUEUE};
use crate::graph::Plan;
use crate::io::InputFormat;

/// What a chunk's hand-off to a waiting stage costs on the critical path, in seconds: a
/// channel send and the wake-up of a parked thread (`cargo bench --bench pipeline`: 0.3–1.4 µs
/// for a hop between running threads, tens of µs to wake a parked one on a virtual machine;
/// this is a round figure between).
const WAKE_SECONDS: f64 = 20e-6;

/// The split layers and the stages the latency objective chose, with its prediction.
#[derive(Debug, Clone)]
pub struct LatencyPlan {
    /// Layers split into shards, with their shard counts, in node order.
    pub shards: Vec<(String, usize)>,
    pub stages: Vec<PlannedStage>,
    /// Seconds one chunk takes through the stages, alone, as predicted.
    pub seconds_per_chunk: f64,
    /// The same chunk through the unsplit layers on one core, as measured.
    pub unsplit_seconds_per_chunk: f64,
    /// The split pipeline's profile (its nodes: the shards and their joins).
    pub profile: Profile,
    pub layer_names: Vec<String>,
}

/// Plan `plan` for latency on `cores` cores from its `whole` profile (the unsplit layers).
pub fn plan(
    plan: &Plan,
    whole: &Profile,
    cores: usize,
    sample: Option<(&[u8], InputFormat)>,
) -> Result<LatencyPlan, String> {
    let batch = plan.batch.size as f64;
    let per_chunk = |seconds_per_record: f64| seconds_per_record * batch;
    let nodes = &plan.graph.nodes;
    let whole_cost: HashMap<&str, f64> = nodes
        .iter()
        .zip(&whole.layers)
        .map(|(n, &t)| (n.name.as_str(), per_chunk(t)))
        .collect();
    let unsplit = whole.layers.iter().map(|&t| per_chunk(t)).sum::<f64>();
    // 1. The candidates: layers that split, where the cores could save more than two hand-offs.
    let candidates: Vec<String> = plan
        .config
        .layers
        .iter()
        .filter(|l| l.shard.is_none() && !is_join(&plan.config.layers, l))
        .filter(|l| cores > 1 && l.op.shard(0, cores).is_ok())
        .filter(|l| {
            let t = whole_cost.get(l.name.as_str()).copied().unwrap_or(0.0);
            t * (1.0 - 1.0 / cores as f64) > 2.0 * WAKE_SECONDS
        })
        .map(|l| l.name.clone())
        .collect();
    let split = |names: &[String]| -> Result<PipelineConfig, String> {
        let shards: Vec<(String, usize)> = names.iter().map(|n| (n.clone(), cores)).collect();
        split_config(plan, &shards)
    };
    let config = split(&candidates)?;
    let sharded = Plan::build(&config).map_err(|e| format!("the split layers do not fit: {e}"))?;
    // 2. Profile the split pipeline; keep the splits that pay.
    let (bytes, format) = sample.unzip();
    let profile = profile::profile(
        &sharded,
        bytes,
        format.unwrap_or(InputFormat::JsonLines),
        cores,
    )?;
    let cost: HashMap<&str, f64> = sharded
        .graph
        .nodes
        .iter()
        .zip(&profile.layers)
        .map(|(n, &t)| (n.name.as_str(), per_chunk(t)))
        .collect();
    let kept: Vec<String> = candidates
        .iter()
        .filter(|name| {
            let slowest = (0..cores)
                .map(|i| format!("{name}.shard{i}"))
                .map(|s| cost.get(s.as_str()).copied().unwrap_or(f64::INFINITY))
                .fold(0.0, f64::max);
            let join = cost.get(name.as_str()).copied().unwrap_or(0.0);
            slowest + join + 2.0 * WAKE_SECONDS < whole_cost[name.as_str()]
        })
        .cloned()
        .collect();
    // 3. Stages along the final graph: each shard alone, the runs between together.
    let final_config = split(&kept)?;
    let mut stages: Vec<PlannedStage> = Vec::new();
    let mut run: Vec<String> = Vec::new();
    let mut seconds = 0.0;
    let mut run_cost = 0.0;
    let close = |run: &mut Vec<String>, run_cost: &mut f64, stages: &mut Vec<PlannedStage>| {
        if !run.is_empty() {
            stages.push(stage(
                stages.len(),
                std::mem::take(run),
                *run_cost / batch,
                0,
            ));
            *run_cost = 0.0;
        }
    };
    let mut i = 0;
    let layers = &final_config.layers;
    while i < layers.len() {
        let l = &layers[i];
        if l.shard.is_some() {
            // The shards of one layer, consecutive: the first ends the run before it (which
            // sends the shards' input as soon as it has it, then computes its own shard), the
            // others are a stage each, at work meanwhile.
            let first = cost.get(l.name.as_str()).copied().unwrap_or(0.0);
            run.push(l.name.clone());
            run_cost += first;
            i += 1;
            close(&mut run, &mut run_cost, &mut stages);
            let mut slowest: f64 = first;
            let mut core = 1;
            while i < layers.len() && layers[i].shard.is_some() {
                let t = cost.get(layers[i].name.as_str()).copied().unwrap_or(0.0);
                slowest = slowest.max(t);
                let name = vec![layers[i].name.clone()];
                stages.push(stage(stages.len(), name, t / batch, core % cores));
                core += 1;
                i += 1;
            }
            // The slowest shard, and one hand-off to the join.
            seconds += slowest + WAKE_SECONDS;
            continue;
        }
        let t = cost
            .get(l.name.as_str())
            .or_else(|| whole_cost.get(l.name.as_str()))
            .copied()
            .unwrap_or(0.0);
        run.push(l.name.clone());
        run_cost += t;
        seconds += t;
        i += 1;
    }
    close(&mut run, &mut run_cost, &mut stages);
    let shards = kept.into_iter().map(|n| (n, cores)).collect();
    Ok(LatencyPlan {
        shards,
        stages,
        seconds_per_chunk: seconds,
        unsplit_seconds_per_chunk: unsplit,
        layer_names: sharded.graph.nodes.iter().map(|n| n.name.clone()).collect(),
        profile,
    })
}

/// One stage of every layer on a team of threads, which splits the convolutions by filters
/// ([`crate::ops::Team`]), and what one chunk takes through it, predicted.
#[derive(Debug, Clone)]
pub struct TeamPlan {
    pub stage: PlannedStage,
    pub seconds_per_chunk: f64,
}

/// The team candidate on `cores` threads. A layer that splits into parts is predicted at its
/// slowest shard as `split` profiled it (the same filters, without the join a shard needs) plus
/// a wake-up, or at its `whole` time over the parts where it was not profiled in shards; the
/// other layers at their own time. `None` on one core or where no layer splits.
pub fn team(plan: &Plan, whole: &Profile, split: &LatencyPlan, cores: usize) -> Option<TeamPlan> {
    if cores < 2 {
        return None;
    }
    let mut stage = one_stage(plan);
    stage.threads = cores;
    let mut config = plan.config.clone();
    config.stages = Some(super::stage_configs(std::slice::from_ref(&stage)));
    config.auto_stages = false;
    let built = Plan::build(&config).ok()?;
    let parts: Vec<usize> = built.graph.layers.iter().map(|l| l.parts()).collect();
    if parts.iter().all(|&p| p < 2) {
        return None;
    }
    let batch = plan.batch.size as f64;
    let shard_cost: HashMap<&str, f64> = split
        .layer_names
        .iter()
        .zip(&split.profile.layers)
        .map(|(n, &t)| (n.as_str(), t * batch))
        .collect();
    let seconds_per_chunk: f64 = (plan.graph.nodes.iter().zip(&whole.layers))
        .zip(&parts)
        .map(|((node, &t), &p)| {
            if p < 2 {
                return t * batch;
            }
            let shards: Option<Vec<f64>> = (0..p)
                .map(|i| {
                    shard_cost
                        .get(format!("{}.shard{i}", node.name).as_str())
                        .copied()
                })
                .collect();
            let slowest = match shards {
                Some(s) => s.into_iter().fold(0.0, f64::max),
                None => t * batch / p as f64,
            };
            slowest + WAKE_SECONDS
        })
        .sum();
    stage.seconds_per_record = seconds_per_chunk / batch;
    Some(TeamPlan {
        stage,
        seconds_per_chunk,
    })
}

/// `chosen` replaced by `team`'s one stage, with the unsplit layers' profile `whole`.
pub fn with_team(plan: &Plan, chosen: LatencyPlan, team: TeamPlan, whole: &Profile) -> LatencyPlan {
    let mut profile = whole.clone();
    profile.elapsed = chosen.profile.elapsed;
    LatencyPlan {
        shards: Vec::new(),
        stages: vec![team.stage],
        seconds_per_chunk: team.seconds_per_chunk,
        profile,
        layer_names: plan.graph.nodes.iter().map(|n| n.name.clone()).collect(),
        ..chosen
    }
}

/// `plan`'s pipeline with each layer of `shards` split into its count of shards, and no stages.
pub fn split_config(plan: &Plan, shards: &[(String, usize)]) -> Result<PipelineConfig, String> {
    let mut config = plan.config.clone();
    for (name, count) in shards {
        config.layers = split_layers(&config.layers, std::slice::from_ref(name), *count)?;
    }
    config.stages = None;
    config.auto_stages = false;
    Ok(config)
}

/// Every layer of `plan` in one stage on no core in particular: the chunk's path when nothing
/// is split.
pub fn one_stage(plan: &Plan) -> PlannedStage {
    PlannedStage {
        name: "all".to_string(),
        layers: plan.graph.nodes.iter().map(|n| n.name.clone()).collect(),
        replicas: 1,
        threads: 1,
        seconds_per_record: 0.0,
        core: None,
        parse: false,
        queue: DEFAULT_QUEUE,
    }
}

/// `chosen` without its splits: one stage of the unsplit layers, predicted at the unsplit time.
pub fn unsplit(plan: &Plan, chosen: LatencyPlan) -> LatencyPlan {
    let batch = plan.batch.size as f64;
    let mut stage = one_stage(plan);
    stage.seconds_per_record = chosen.unsplit_seconds_per_chunk / batch;
    LatencyPlan {
        shards: Vec::new(),
        stages: vec![stage],
        seconds_per_chunk: chosen.unsplit_seconds_per_chunk,
        ..chosen
    }
}

fn stage(index: usize, layers: Vec<String>, seconds_per_record: f64, core: usize) -> PlannedStage {
    PlannedStage {
        name: format!("s{index}"),
        layers,
        replicas: 1,
        threads: 1,
        seconds_per_record,
        core: Some(core),
        parse: false,
        queue: DEFAULT_QUEUE,
    }
}

/// Whether `layer` joins shards the file split already (its inputs are `NAME.shardK`).
fn is_join(layers: &[LayerConfig], layer: &LayerConfig) -> bool {
    layers
        .iter()
        .any(|l| l.shard.as_ref().is_some_and(|s| s.combined == layer.name))
}

/// `layers` with each layer of `names` split into `count` shards and their join.
fn split_layers(
    layers: &[LayerConfig],
    names: &[String],
    count: usize,
) -> Result<Vec<LayerConfig>, String> {
    let mut out = Vec::with_capacity(layers.len() + names.len() * (count + 1));
    for l in layers {
        if names.contains(&l.name) {
            out.extend(shard_layer(l, count).map_err(|e| format!("layer `{}`: {e}", l.name))?);
        } else {
            out.push(l.clone());
        }
    }
    Ok(out)
}
