//! The choice at the heart of `subpass plan`: cut a model's layers, with known costs, into
//! stages and give the cores to them, so that the slowest part of the pipeline is as fast as it
//! can be. Pure arithmetic on cost tables and the layers' inputs; [`super`] measures the costs.
//!
//! A stage is any set of layers that the stages before it have fed, so that the stage graph
//! stays acyclic: in a branchy graph (two towers, a skip connection), the branches may share a
//! stage or go to stages of their own, whatever the file's order of layers.
//! [`min_bottleneck_graph`] searches every such split; a chain of layers has only contiguous
//! ones ([`min_bottleneck`]).
//!
//! The model: a stage of cost `t` (seconds per record on one core) with `r` replicas passes a
//! record every `t / r`; all of a pipeline's threads share `cores`, so a record also costs the
//! machine the sum of every stage's and the parser's cost over the cores. The pipeline's time
//! per record is the larger of the two bounds.

use std::collections::HashSet;
use std::ops::Range;

/// Split `costs` into `parts` non-empty contiguous segments whose largest sum is the least it
/// can be (the linear partition problem), by dynamic programming over prefix sums in
/// O(n² · parts). Of equally good splits it returns the one with the earliest cuts.
///
/// # Panics
/// If `parts` is 0 or more than `costs.len()`.
pub fn min_bottleneck(costs: &[f64], parts: usize) -> Vec<Range<usize>> {
    let n = costs.len();
    assert!((1..=n).contains(&parts), "{parts} parts of {n} costs");
    let mut prefix = vec![0.0; n + 1];
    for (i, c) in costs.iter().enumerate() {
        prefix[i + 1] = prefix[i] + c;
    }
    let sum = |a: usize, b: usize| prefix[b] - prefix[a];
    // best[p][j]: the least bottleneck of the first j costs in p segments; cut[p][j]: where the
    // last of those segments starts.
    let mut best = vec![vec![f64::INFINITY; n + 1]; parts + 1];
    let mut cut = vec![vec![0usize; n + 1]; parts + 1];
    best[0][0] = 0.0;
    for p in 1..=parts {
        for j in p..=n {
            for i in (p - 1)..j {
                let b = best[p - 1][i].max(sum(i, j));
                if b < best[p][j] {
                    best[p][j] = b;
                    cut[p][j] = i;
                }
            }
        }
    }
    let mut segments = Vec::with_capacity(parts);
    let mut end = n;
    for p in (1..=parts).rev() {
        let start = cut[p][end];
        segments.push(start..end);
        end = start;
    }
    segments.reverse();
    segments
}

/// The most (down-set, down-set, stage count) steps [`min_bottleneck_graph`] takes: well under
/// a second of planning. A chain of n layers has n + 1 down-sets, ResNet-18 (a skip connection
/// beside each block) 99 for its 68 layers; a graph of many parallel branches can have
/// millions, and is then cut along its evaluation order.
const MAX_STEPS: usize = 1 << 26;

/// For each stage count from 1 to `most`: the layers of a graph (`inputs[l]`: the layers whose
/// values layer `l` reads, all before it) split into that many non-empty stages whose largest
/// sum of `costs` is the least it can be, with every stage reading only its own layers and
/// earlier stages' (so the stages run as an acyclic pipeline). Each stage's layers come in
/// ascending order, and the stages in an order the pipeline can run them.
///
/// How: the layers the first `s` stages hold together are a *down-set* (whatever one of them
/// reads is among them too), and each stage is the difference of two nested down-sets. Dynamic
/// programming over the down-sets, as the linear partition's over prefixes, finds the best
/// chain of them; of equally good splits, the one with the smallest first stages (on a chain:
/// the earliest cuts, as [`min_bottleneck`]). `None` when the graph has too many down-sets to
/// weigh (`MAX_STEPS` steps of the search).
///
/// # Panics
/// If `most` is 0 or more than the layers, or `inputs` names a layer not before the one that
/// reads it.
pub fn min_bottleneck_graph(
    costs: &[f64],
    inputs: &[Vec<usize>],
    most: usize,
) -> Option<Vec<Vec<Vec<usize>>>> {
    let n = costs.len();
    assert!((1..=n).contains(&most), "{most} parts of {n} costs");
    assert_eq!(inputs.len(), n, "inputs for every layer");
    assert!(
        inputs
            .iter()
            .enumerate()
            .all(|(l, i)| i.iter().all(|&j| j < l)),
        "every layer reads only layers before it"
    );
    let sets = down_sets(inputs, MAX_STEPS / most)?;
    let cost: Vec<f64> = sets.iter().map(|s| s.sum(costs)).collect();
    // best[p][i]: the least bottleneck of down-set i in p stages; from[p][i]: the down-set the
    // last of those stages starts from. Down-sets come by size, so every proper subset of set
    // i is at an index below it.
    let m = sets.len();
    let mut best = vec![vec![f64::INFINITY; m]; most + 1];
    let mut from = vec![vec![0usize; m]; most + 1];
    best[0][0] = 0.0;
    for p in 1..=most {
        for i in 1..m {
            for j in 0..i {
                if best[p - 1][j].is_infinite() || !sets[j].proper_subset_of(&sets[i]) {
                    continue;
                }
                let b = best[p - 1][j].max(cost[i] - cost[j]);
                if b < best[p][i] {
                    best[p][i] = b;
                    from[p][i] = j;
                }
            }
        }
    }
    let split = |parts: usize| {
        let mut stages = Vec::with_capacity(parts);
        let mut end = m - 1; // every layer
        for p in (1..=parts).rev() {
            let start = from[p][end];
            stages.push(sets[end].minus(&sets[start]));
            end = start;
        }
        stages.reverse();
        stages
    };
    Some((1..=most).map(split).collect())
}

/// A set of layers, as bits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LayerSet(Vec<u64>);

impl LayerSet {
    fn empty(n: usize) -> LayerSet {
        LayerSet(vec![0; n.div_ceil(64)])
    }

    fn has(&self, l: usize) -> bool {
        self.0[l / 64] >> (l % 64) & 1 == 1
    }

    fn with(&self, l: usize) -> LayerSet {
        let mut s = self.clone();
        s.0[l / 64] |= 1 << (l % 64);
        s
    }

    fn layers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.0.len() * 64).filter(|&l| self.has(l))
    }

    fn sum(&self, costs: &[f64]) -> f64 {
        self.layers().map(|l| costs[l]).sum()
    }

    fn proper_subset_of(&self, other: &LayerSet) -> bool {
        self != other && self.0.iter().zip(&other.0).all(|(a, b)| a & !b == 0)
    }

    /// The layers of `self` not in `other`, ascending.
    fn minus(&self, other: &LayerSet) -> Vec<usize> {
        self.layers().filter(|&l| !other.has(l)).collect()
    }
}

/// Every down-set of the graph (sets of layers that hold whatever their layers read), by size,
/// the empty set first and all the layers last; `None` once their pairs pass `max_pairs`.
fn down_sets(inputs: &[Vec<usize>], max_pairs: usize) -> Option<Vec<LayerSet>> {
    let n = inputs.len();
    let mut sets = vec![LayerSet::empty(n)];
    let mut level = 0..1;
    while !level.is_empty() {
        let mut seen = HashSet::new();
        let mut next = Vec::new();
        for i in level.clone() {
            for (l, reads) in inputs.iter().enumerate() {
                let s = &sets[i];
                if !s.has(l) && reads.iter().all(|&j| s.has(j)) {
                    let grown = s.with(l);
                    if seen.insert(grown.clone()) {
                        next.push(grown);
                    }
                }
            }
        }
        let start = sets.len();
        sets.extend(next);
        if sets.len().saturating_mul(sets.len()) > max_pairs {
            return None;
        }
        level = start..sets.len();
    }
    Some(sets)
}

/// Stages and their replicas, with the time per record the model predicts.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Each stage's layers (indices into the cost table), ascending.
    pub groups: Vec<Vec<usize>>,
    pub replicas: Vec<usize>,
    /// Seconds per record of the whole pipeline: the larger of its slowest stage and the
    /// machine's share of the total.
    pub seconds_per_record: f64,
    /// The stage that sets the pace, or `None` when the cores as a whole do.
    pub bottleneck: Option<usize>,
    /// The stage whose workers parse the records (`parse: true`), or `None` for a parser
    /// thread.
    pub parsing: Option<usize>,
}

/// What the model knows of the machine and of work outside the layers.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    pub cores: usize,
    /// Seconds per record the parsers spend, and how many of them share it.
    pub parse: f64,
    pub parsers: usize,
    /// How much slower a core computes when every core does (shared caches and memory):
    /// 1.0 for none.
    pub contention: f64,
    /// Seconds a chunk's hand-off between two threads costs, per stage, spread over the
    /// chunk's records by the caller.
    pub hop: f64,
    /// Seconds of CPU per record outside every stage: the chunk's feeding, its sink, the
    /// wake-ups between them (per chunk, spread over its records by the caller).
    pub outside: f64,
}

impl Machine {
    /// The same machine fed from memory, as `subpass bench` measures: no parser at work.
    pub fn fed(&self) -> Machine {
        Machine {
            parse: 0.0,
            ..*self
        }
    }
}

/// The model's time per record of a split into `groups` of layers.
pub fn predict(costs: &[f64], groups: &[Vec<usize>], replicas: &[usize], m: &Machine) -> Choice {
    Choice {
        groups: groups.to_vec(),
        ..predict_stages(&group_costs(costs, groups), replicas, m)
    }
}

/// Each group's sum of `costs`.
fn group_costs(costs: &[f64], groups: &[Vec<usize>]) -> Vec<f64> {
    groups
        .iter()
        .map(|g| g.iter().map(|&l| costs[l]).sum())
        .collect()
}

/// The model's time per record of stages of these costs (seconds per record on one core,
/// unshared) and replicas, whatever layers they hold, with a parser thread; `groups` is left
/// empty.
pub fn predict_stages(stage: &[f64], replicas: &[usize], m: &Machine) -> Choice {
    predict_parsed(stage, replicas, None, m)
}

/// [`predict_stages`] with the records parsed by stage `parsing`'s workers (`parse: true`)
/// instead of a parser thread: that stage's cost per record grows by the parse.
pub fn predict_parsed(
    stage: &[f64],
    replicas: &[usize],
    parsing: Option<usize>,
    m: &Machine,
) -> Choice {
    let mut stage: Vec<f64> = stage.iter().map(|t| t * m.contention + m.hop).collect();
    // Seconds a record costs the parser threads: their own bound, and their share of the cores.
    let (parsers, parse_thread) = match parsing {
        Some(s) => {
            stage[s] += m.parse;
            (0.0, 0.0)
        }
        None => (m.parse / m.parsers.max(1) as f64, m.parse),
    };
    let (slowest, per_stage) = stage
        .iter()
        .zip(replicas)
        .map(|(t, r)| t / *r as f64)
        .enumerate()
        .fold(
            (None, 0.0f64),
            |(bi, bt), (i, t)| {
                if t > bt {
                    (Some(i), t)
                } else {
                    (bi, bt)
                }
            },
        );
    let machine = (stage.iter().sum::<f64>() + parse_thread + m.outside) / m.cores as f64;
    let t = per_stage.max(machine).max(parsers);
    Choice {
        groups: Vec::new(),
        replicas: replicas.to_vec(),
        seconds_per_record: t,
        bottleneck: if per_stage >= machine { slowest } else { None },
        parsing,
    }
}

/// The first stage's workers parse the records (`parse: true`) when the stages' workers take
/// every core already and the model rates it within `tie` of a parser thread. A parser thread
/// then has no core of its own: it takes turns with the workers, whose caches it disturbs at
/// every switch, a cost the model does not see (the MLP, one stage of two replicas on two
/// cores, ran 6% faster end to end with its workers parsing: medians of eight alternated runs).
/// Returns the prediction with the first stage parsing, or `None` to keep a parser thread.
pub fn parse_in_first_stage(
    stage: &[f64],
    replicas: &[usize],
    m: &Machine,
    tie: f64,
) -> Option<Choice> {
    let workers: usize = replicas.iter().sum();
    if m.parse <= 0.0 || stage.is_empty() || workers + m.parsers <= m.cores {
        return None;
    }
    let threaded = predict_parsed(stage, replicas, None, m);
    let parsing = predict_parsed(stage, replicas, Some(0), m);
    (parsing.seconds_per_record <= threaded.seconds_per_record * (1.0 + tie)).then_some(parsing)
}

/// The best split of `costs` on `machine`, for a graph whose layer `l` reads layers
/// `inputs[l]`: for every stage count up to the cores, the least bottleneck split
/// ([`min_bottleneck_graph`], or along the layers' order when the graph has too many ways to
/// split), then each spare core to the stage slowest per replica. Of choices within `tie`
/// (relative) of the fastest end to end, those within `tie` of the fastest fed from memory (no
/// parser) stay: when the parser bounds the stream, the stages' own speed still decides how
/// much headroom the plan leaves and what `bench` measures. Of those, the one with the fewest
/// stages wins: fewer hand-offs, fewer chunks in flight, less memory.
pub fn choose(costs: &[f64], inputs: &[Vec<usize>], machine: &Machine, tie: f64) -> Choice {
    let most = machine.cores.min(costs.len()).max(1);
    let splits = min_bottleneck_graph(costs, inputs, most).unwrap_or_else(|| {
        (1..=most)
            .map(|parts| {
                let segments = min_bottleneck(costs, parts).into_iter();
                segments.map(|r| r.collect()).collect()
            })
            .collect()
    });
    let choices: Vec<Choice> = splits
        .into_iter()
        .map(|groups| {
            let replicas = spread(costs, &groups, machine);
            predict(costs, &groups, &replicas, machine)
        })
        .collect();
    let fed = machine.fed();
    let fed_time = |c: &Choice| predict(costs, &c.groups, &c.replicas, &fed).seconds_per_record;
    let fastest = choices
        .iter()
        .map(|c| c.seconds_per_record)
        .fold(f64::INFINITY, f64::min);
    let good: Vec<&Choice> = choices
        .iter()
        .filter(|c| c.seconds_per_record <= fastest * (1.0 + tie))
        .collect();
    let fastest_fed = good
        .iter()
        .map(|c| fed_time(c))
        .fold(f64::INFINITY, f64::min);
    good.into_iter()
        .find(|c| fed_time(c) <= fastest_fed * (1.0 + tie))
        .expect("the fastest is within the tie of itself")
        .clone()
}

/// Replicas for `groups`: one each, then every spare core to the stage that is slowest per
/// replica.
fn spread(costs: &[f64], groups: &[Vec<usize>], machine: &Machine) -> Vec<usize> {
    let stage = group_costs(costs, groups);
    let mut replicas = vec![1usize; groups.len()];
    for _ in groups.len()..machine.cores {
        let slowest = (0..stage.len())
            .max_by(|&a, &b| {
                (stage[a] / replicas[a] as f64).total_cmp(&(stage[b] / replicas[b] as f64))
            })
            .expect("at least one stage");
        replicas[slowest] += 1;
    }
    replicas
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cores` with a parser of `parse` seconds a record, and nothing else in the way.
    fn machine(cores: usize, parse: f64) -> Machine {
        Machine {
            cores,
            parse,
            parsers: 1,
            contention: 1.0,
            hop: 0.0,
            outside: 0.0,
        }
    }

    /// The inputs of a chain of `n` layers: each reads the one before.
    fn chain(n: usize) -> Vec<Vec<usize>> {
        (0..n)
            .map(|l| (l > 0).then(|| l - 1).into_iter().collect())
            .collect()
    }

    /// Every split of `n` costs into `parts` segments, by their cut points.
    fn all_splits(n: usize, parts: usize) -> Vec<Vec<Range<usize>>> {
        fn go(
            start: usize,
            n: usize,
            parts: usize,
            acc: &mut Vec<Range<usize>>,
            out: &mut Vec<Vec<Range<usize>>>,
        ) {
            if parts == 1 {
                acc.push(start..n);
                out.push(acc.clone());
                acc.pop();
                return;
            }
            for end in start + 1..=n - (parts - 1) {
                acc.push(start..end);
                go(end, n, parts - 1, acc, out);
                acc.pop();
            }
        }
        let mut out = Vec::new();
        go(0, n, parts, &mut Vec::new(), &mut out);
        out
    }

    fn bottleneck(costs: &[f64], segments: &[Range<usize>]) -> f64 {
        segments
            .iter()
            .map(|s| costs[s.clone()].iter().sum::<f64>())
            .fold(0.0, f64::max)
    }

    fn brute_force(costs: &[f64], parts: usize) -> f64 {
        all_splits(costs.len(), parts)
            .iter()
            .map(|s| bottleneck(costs, s))
            .fold(f64::INFINITY, f64::min)
    }

    fn check(costs: &[f64]) {
        for parts in 1..=costs.len() {
            let split = min_bottleneck(costs, parts);
            assert_eq!(split.len(), parts, "{costs:?} in {parts}");
            assert_eq!(split[0].start, 0);
            assert_eq!(split[parts - 1].end, costs.len());
            assert!(split
                .windows(2)
                .all(|w| w[0].end == w[1].start && !w[0].is_empty()));
            let want = brute_force(costs, parts);
            let got = bottleneck(costs, &split);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "{costs:?} in {parts}: got {got} ({split:?}), brute force {want}"
            );
            // On a chain the graph's search is the linear one: the same split, ties included.
            let as_graph = min_bottleneck_graph(costs, &chain(costs.len()), parts)
                .unwrap()
                .swap_remove(parts - 1);
            let split: Vec<Vec<usize>> = split.into_iter().map(|r| r.collect()).collect();
            assert_eq!(as_graph, split, "{costs:?} in {parts}");
        }
    }

    /// The least bottleneck of every assignment of the graph's layers to `parts` non-empty
    /// stages whose stage graph is acyclic: `parts`^n assignments, each checked on its own.
    fn brute_force_graph(costs: &[f64], inputs: &[Vec<usize>], parts: usize) -> f64 {
        let n = costs.len();
        let mut best = f64::INFINITY;
        let mut stage_of = vec![0usize; n];
        for code in 0..parts.pow(n as u32) {
            let mut c = code;
            for s in stage_of.iter_mut() {
                *s = c % parts;
                c /= parts;
            }
            if (0..parts).any(|p| !stage_of.contains(&p)) {
                continue;
            }
            // Stage p depends on stage q when one of p's layers reads one of q's.
            let mut needs = vec![vec![false; parts]; parts];
            for (l, reads) in inputs.iter().enumerate() {
                for &j in reads {
                    if stage_of[j] != stage_of[l] {
                        needs[stage_of[l]][stage_of[j]] = true;
                    }
                }
            }
            // Acyclic when stages can be removed, one with no remaining needs at a time.
            let mut left: Vec<usize> = (0..parts).collect();
            while let Some(i) = left
                .iter()
                .position(|&p| left.iter().all(|&q| !needs[p][q]))
            {
                left.remove(i);
            }
            if !left.is_empty() {
                continue;
            }
            let mut sums = vec![0.0; parts];
            for (l, &s) in stage_of.iter().enumerate() {
                sums[s] += costs[l];
            }
            best = best.min(sums.iter().copied().fold(0.0, f64::max));
        }
        best
    }

    /// The graph search against brute force, and that its stages are a valid split: every
    /// layer once, each stage reading only its own and earlier stages' layers.
    fn check_graph(costs: &[f64], inputs: &[Vec<usize>]) {
        let most = costs.len().min(4);
        let splits = min_bottleneck_graph(costs, inputs, most).unwrap();
        for (stages, parts) in splits.into_iter().zip(1..) {
            assert_eq!(stages.len(), parts);
            let mut stage_of = vec![usize::MAX; costs.len()];
            for (s, layers) in stages.iter().enumerate() {
                assert!(!layers.is_empty(), "{stages:?}");
                assert!(layers.windows(2).all(|w| w[0] < w[1]), "{stages:?}");
                for &l in layers {
                    assert_eq!(stage_of[l], usize::MAX, "layer {l} twice in {stages:?}");
                    stage_of[l] = s;
                }
            }
            for (l, reads) in inputs.iter().enumerate() {
                assert!(
                    reads.iter().all(|&j| stage_of[j] <= stage_of[l]),
                    "{stages:?}"
                );
            }
            let sums: Vec<f64> = stages
                .iter()
                .map(|g| g.iter().map(|&l| costs[l]).sum())
                .collect();
            let got = sums.iter().copied().fold(0.0, f64::max);
            let want = brute_force_graph(costs, inputs, parts);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1.0),
                "{costs:?} {inputs:?} in {parts}: got {got} ({stages:?}), brute force {want}"
            );
        }
    }

    #[test]
    fn branchy_graphs_match_brute_force() {
        // Two towers listed one after the other (the small CNN), joined and followed by a head.
        let towers = [vec![], vec![0], vec![], vec![2], vec![1, 3], vec![4]];
        check_graph(&[3.0, 2.0, 4.0, 1.0, 0.5, 1.0], &towers);
        // The same towers listed interleaved, a0 b0 a1 b1: no contiguous cut of that order puts
        // one tower in each stage.
        let interleaved = [vec![], vec![], vec![0], vec![1], vec![2, 3]];
        check_graph(&[4.0, 1.0, 4.0, 1.0, 0.0], &interleaved);
        // A residual block: a skip connection around two layers, then a head.
        let residual = [vec![], vec![0], vec![1], vec![0, 2], vec![3]];
        check_graph(&[1.0, 5.0, 5.0, 0.5, 1.0], &residual);
        // Three branches off one layer (attention's q, k, v), joined; ties everywhere.
        let three = [vec![], vec![0], vec![0], vec![0], vec![1, 2, 3], vec![4]];
        check_graph(&[1.0; 6], &three);
        // One dominant branch layer.
        check_graph(&[1.0, 1.0, 20.0, 1.0, 1.0, 1.0], &three);
        // Independent layers, nothing joined (every split is acyclic).
        check_graph(
            &[2.0, 3.0, 5.0, 7.0, 1.0],
            &[vec![], vec![], vec![], vec![], vec![]],
        );
        // A seeded random DAG of 8 layers, each reading up to two earlier ones.
        let mut x = 99u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let inputs: Vec<Vec<usize>> = (0..8)
            .map(|l| {
                let mut reads: Vec<usize> = match l {
                    0 => Vec::new(),
                    _ => (0..2).map(|_| next() as usize % l).collect(),
                };
                reads.sort_unstable();
                reads.dedup();
                reads
            })
            .collect();
        let costs: Vec<f64> = (0..8).map(|_| (next() % 100) as f64 / 10.0).collect();
        check_graph(&costs, &inputs);
    }

    #[test]
    fn too_many_ways_to_split_falls_back_to_the_layers_order() {
        // 40 independent layers have 2^40 down-sets: the graph search gives up, and `choose`
        // cuts along the order instead (on this table, the same bottleneck).
        let costs = [1.0; 40];
        let inputs = vec![vec![]; 40];
        assert_eq!(min_bottleneck_graph(&costs, &inputs, 2), None);
        let c = choose(&costs, &inputs, &machine(2, 0.0), 0.0);
        assert_eq!(c.groups.iter().map(Vec::len).sum::<usize>(), 40);
        assert!((c.seconds_per_record - 20.0).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn interleaved_towers_get_a_stage_each() {
        // Two towers listed a0 b0 a1 b1, then their join. Along that order the best two stages
        // are {a0, b0, a1} and {b1, join} (6 against 4); by the graph, a tower each (5 and 5).
        let interleaved = [vec![], vec![], vec![0], vec![1], vec![2, 3]];
        let costs = [1.0, 1.0, 4.0, 4.0, 0.0];
        assert_eq!(bottleneck(&costs, &min_bottleneck(&costs, 2)), 6.0);
        let splits = min_bottleneck_graph(&costs, &interleaved, 2).unwrap();
        assert_eq!(splits[1], vec![vec![0, 2], vec![1, 3, 4]]);
    }

    #[test]
    fn matches_brute_force_on_made_up_tables() {
        // Ties everywhere, one dominant layer (first, middle, last), rising and falling costs,
        // zero-cost layers (flatten, concat) among costly ones.
        check(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        check(&[10.0, 1.0, 1.0, 1.0]);
        check(&[1.0, 1.0, 50.0, 1.0, 1.0]);
        check(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        check(&[7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]);
        check(&[0.0, 3.0, 0.0, 0.0, 3.0, 0.0, 3.0, 0.0]);
        check(&[5.0]);
        // A pseudo-random table, seeded.
        let mut x = 12345u64;
        let costs: Vec<f64> = (0..11)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 40) as f64 / 1e5
            })
            .collect();
        check(&costs);
    }

    #[test]
    fn a_dominant_layer_gets_the_spare_cores() {
        // One layer is 80% of the work: on 4 cores it stands alone with the spare replicas.
        let costs = [1.0, 8.0, 1.0];
        let m = machine(4, 0.0);
        let c = choose(&costs, &chain(costs.len()), &m, 0.0);
        let heavy = c.groups.iter().position(|s| s.contains(&1)).unwrap();
        assert!(c.replicas[heavy] >= 2, "{c:?}");
        assert_eq!(c.replicas.iter().sum::<usize>(), 4);
        // Never worse than one stage on every core, which the model rates (10 / 4).
        assert!(c.seconds_per_record <= 10.0 / 4.0 + 1e-12, "{c:?}");
    }

    #[test]
    fn ties_go_to_fewer_stages_and_hops_break_them() {
        let costs = [1.0, 1.0];
        let mut m = machine(2, 0.0);
        // One stage with two replicas and two stages of one each both pass a record per 1.0.
        let c = choose(&costs, &chain(costs.len()), &m, 0.01);
        assert_eq!(c.groups, vec![vec![0, 1]]);
        assert_eq!(c.replicas, vec![2]);
        assert!((c.seconds_per_record - 1.0).abs() < 1e-12);
        // With a hand-off cost, a second stage only adds: still one stage.
        m.hop = 0.1;
        assert_eq!(choose(&costs, &chain(2), &m, 0.0).groups.len(), 1);
    }

    #[test]
    fn the_parser_and_the_cores_bound_the_prediction() {
        let costs = [1.0, 1.0];
        let m = machine(2, 4.0);
        // A parser at 4.0 per record on its own thread is the bottleneck, whatever the stages.
        let c = choose(&costs, &chain(costs.len()), &m, 0.0);
        assert!((c.seconds_per_record - 4.0).abs() < 1e-12, "{c:?}");
        assert_eq!(c.bottleneck, None);
    }

    #[test]
    fn the_first_stage_parses_only_when_its_workers_take_every_core_at_no_cost() {
        // The MLP's plan: one stage, two replicas on two cores. A parser thread would be a third
        // busy thread; parsing in the stage costs nothing in the model (the cores bound it).
        let m = machine(2, 1.0);
        let c = parse_in_first_stage(&[2.0], &[2], &m, 0.02).expect("parses");
        assert_eq!(c.parsing, Some(0));
        assert!((c.seconds_per_record - 1.5).abs() < 1e-12, "{c:?}");
        let threaded = predict_stages(&[2.0], &[2], &m);
        assert!((threaded.seconds_per_record - 1.5).abs() < 1e-12);
        // Two stages of one replica each: the parse would make the first the bottleneck (2.0
        // against the cores' 1.5), so a parser thread stays.
        assert_eq!(parse_in_first_stage(&[1.0, 1.0], &[1, 1], &m, 0.02), None);
        // A core to spare for the parser: a thread of its own.
        assert_eq!(parse_in_first_stage(&[2.0], &[1], &m, 0.02), None);
        // Nothing to parse (fed from memory).
        assert_eq!(parse_in_first_stage(&[2.0], &[2], &m.fed(), 0.02), None);
    }

    #[test]
    fn a_parser_bound_tie_goes_to_the_faster_stages() {
        // The parser bounds the stream at 4.0 whatever the stages, so end to end every split
        // ties; fed from memory, two replicas of one stage (1.0) beat two stages (1.5): the
        // MLP's case, whose JSON parser costs about as much as its layers.
        let costs = [0.5, 1.5];
        let m = machine(2, 4.0);
        let c = choose(&costs, &chain(costs.len()), &m, 0.02);
        assert_eq!(c.groups, vec![vec![0, 1]]);
        assert_eq!(c.replicas, vec![2]);
    }
}
