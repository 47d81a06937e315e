//! The choice at the heart of `subpass plan`: cut a sequence of layers with known costs into
//! contiguous stages and give the cores to them, so that the slowest part of the pipeline is as
//! fast as it can be. Pure arithmetic on cost tables; [`super`] measures the costs.
//!
//! The model: a stage of cost `t` (seconds per record on one core) with `r` replicas passes a
//! record every `t / r`; all of a pipeline's threads share `cores`, so a record also costs the
//! machine the sum of every stage's and the parser's cost over the cores. The pipeline's time
//! per record is the larger of the two bounds.

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

/// Stages and their replicas, with the time per record the model predicts.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Contiguous ranges of the cost table, one per stage.
    pub segments: Vec<Range<usize>>,
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

/// The model's time per record of a contiguous split.
pub fn predict(
    costs: &[f64],
    segments: &[Range<usize>],
    replicas: &[usize],
    m: &Machine,
) -> Choice {
    let stage: Vec<f64> = segments
        .iter()
        .map(|s| costs[s.clone()].iter().sum::<f64>())
        .collect();
    Choice {
        segments: segments.to_vec(),
        ..predict_stages(&stage, replicas, m)
    }
}

/// The model's time per record of stages of these costs (seconds per record on one core,
/// unshared) and replicas, whatever layers they hold, with a parser thread; `segments` is left
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
        segments: Vec::new(),
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

/// The best split of `costs` on `machine`: for every stage count up to the cores, the least
/// bottleneck split, then each spare core to the stage slowest per replica. Of choices within
/// `tie` (relative) of the fastest end to end, those within `tie` of the fastest fed from memory
/// (no parser) stay: when the parser bounds the stream, the stages' own speed still decides how
/// much headroom the plan leaves and what `bench` measures. Of those, the one with the fewest
/// stages wins: fewer hand-offs, fewer chunks in flight, less memory.
pub fn choose(costs: &[f64], machine: &Machine, tie: f64) -> Choice {
    let most = machine.cores.min(costs.len()).max(1);
    let choices: Vec<Choice> = (1..=most)
        .map(|parts| {
            let segments = min_bottleneck(costs, parts);
            let replicas = spread(costs, &segments, machine);
            predict(costs, &segments, &replicas, machine)
        })
        .collect();
    let fed = machine.fed();
    let fed_time = |c: &Choice| predict(costs, &c.segments, &c.replicas, &fed).seconds_per_record;
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

/// Replicas for `segments`: one each, then every spare core to the stage that is slowest per
/// replica.
fn spread(costs: &[f64], segments: &[Range<usize>], machine: &Machine) -> Vec<usize> {
    let stage: Vec<f64> = segments
        .iter()
        .map(|s| costs[s.clone()].iter().sum())
        .collect();
    let mut replicas = vec![1usize; segments.len()];
    for _ in segments.len()..machine.cores {
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
        }
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
        let c = choose(&costs, &m, 0.0);
        let heavy = c.segments.iter().position(|s| s.contains(&1)).unwrap();
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
        let c = choose(&costs, &m, 0.01);
        assert_eq!(c.segments, vec![0..2]);
        assert_eq!(c.replicas, vec![2]);
        assert!((c.seconds_per_record - 1.0).abs() < 1e-12);
        // With a hand-off cost, a second stage only adds: still one stage.
        m.hop = 0.1;
        assert_eq!(choose(&costs, &m, 0.0).segments.len(), 1);
    }

    #[test]
    fn the_parser_and_the_cores_bound_the_prediction() {
        let costs = [1.0, 1.0];
        let m = machine(2, 4.0);
        // A parser at 4.0 per record on its own thread is the bottleneck, whatever the stages.
        let c = choose(&costs, &m, 0.0);
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
        let c = choose(&costs, &m, 0.02);
        assert_eq!(c.segments, vec![0..2]);
        assert_eq!(c.replicas, vec![2]);
    }
}
