//! Measuring what `subpass plan` decides with: every layer's time on one core at the batch size,
//! the parser's time per record, and how much slower a core computes when every core does.

use std::time::{Duration, Instant};

use crate::graph::{Env, Plan};
use crate::io::{InputFormat, LineText, RawLine, RecordParser};
use crate::ops::Scratch;

/// Costs in seconds per record, on this machine.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Each graph node's time per record on one core, in node order.
    pub layers: Vec<f64>,
    /// The parser's time per record (text to the model input).
    pub parse: f64,
    /// The whole forward pass's time per record when every core runs it at once, over its time
    /// alone: 1.0 when cores do not slow each other.
    pub contention: f64,
    /// Records in each profiled chunk.
    pub records: usize,
    /// Rounds each figure is the median of.
    pub rounds: usize,
    pub elapsed: Duration,
}

/// How long the timing of one figure runs at least, and its fewest and most rounds: enough for
/// a stable median on a shared machine, little enough that planning takes a second or two (a
/// model whose chunk takes seconds gets its fewest rounds).
const MIN_TIME: Duration = Duration::from_millis(400);
const MIN_ROUNDS: usize = 3;
const MAX_ROUNDS: usize = 200;
const WARM_ROUNDS: usize = 1;
/// The contention figure: the median of up to this many alternated pairs of runs (one core,
/// every core), each run timing at least [`CONTENTION_TIME`]: as long in all as one pair of
/// [`MIN_TIME`] runs.
const CONTENTION_PAIRS: usize = 5;
const CONTENTION_TIME: Duration = Duration::from_millis(80);

/// The lines to profile on: `sample` (lines of the pipeline's input, in `format`), cycled to
/// fill a chunk, or seeded synthetic records.
fn chunk_lines(plan: &Plan, sample: Option<&[u8]>) -> Vec<RawLine> {
    let synthetic;
    let text = match sample {
        Some(s) if s.iter().any(|b| !b.is_ascii_whitespace()) => s,
        _ => {
            synthetic = crate::verify::synthetic_records(plan, plan.batch.size, 11);
            &synthetic[..]
        }
    };
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect();
    (0..plan.batch.size)
        .map(|i| RawLine {
            number: i as u64 + 1,
            text: LineText::Bytes(lines[i % lines.len()].to_vec()),
        })
        .collect()
}

/// Times `f` in rounds until [`MIN_TIME`] and [`MIN_ROUNDS`] are both reached (or
/// [`MAX_ROUNDS`]), after warm-up rounds; `f` reports its own figures per round.
fn rounds(f: impl FnMut(bool)) -> usize {
    rounds_for(MIN_TIME, f)
}

/// [`rounds`], timing for at least `min_time`.
fn rounds_for(min_time: Duration, mut f: impl FnMut(bool)) -> usize {
    for _ in 0..WARM_ROUNDS {
        f(false);
    }
    let start = Instant::now();
    let mut n = 0;
    while n < MAX_ROUNDS && (n < MIN_ROUNDS || start.elapsed() < min_time) {
        f(true);
        n += 1;
    }
    n
}

/// The median of `v`: the middle value, or the upper of the middle two.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Profile `plan`'s layers and parser at its batch size on `cores` cores. `sample`: lines of the
/// pipeline's input in `format`; text pipelines should be profiled on their own sentences, as
/// attention's cost grows with their length.
pub fn profile(
    plan: &Plan,
    sample: Option<&[u8]>,
    format: InputFormat,
    cores: usize,
) -> Result<Profile, String> {
    let start = Instant::now();
    let graph = &plan.graph;
    let lines = chunk_lines(plan, sample);
    // Synthetic records of a text pipeline are plain sentences.
    let format = match (sample, plan.tokenizer.is_some()) {
        (None, true) => InputFormat::Text,
        (None, false) => InputFormat::JsonLines,
        (Some(_), _) => format,
    };
    let mut parser = RecordParser::new(
        &graph.input_shape,
        &plan.input_field,
        &plan.output.passthrough,
        format,
    );
    if let Some(t) = &plan.tokenizer {
        parser = parser.with_tokenizer(t.clone());
    }
    let parsed = parser.parse_chunk(&lines, Instant::now(), false);
    if let Some(bad) = parsed.meta.rejected.first() {
        return Err(format!(
            "the sample's line {} is not a record of this pipeline: {}",
            bad.line, bad.error
        ));
    }
    let records = parsed.meta.records.len();
    let mut parse_times = Vec::new();
    rounds(|keep| {
        let t = Instant::now();
        std::hint::black_box(parser.parse_chunk(&lines, Instant::now(), false));
        if keep {
            parse_times.push(t.elapsed().as_secs_f64());
        }
    });

    let input = || graph.input_env(records, parsed.values.clone(), parsed.seqs.clone());
    let nodes = graph.nodes.len();
    // On a thread of its own, as a stage's worker computes: the allocator then serves it as it
    // serves the workers (a thread's own arena), not as the main thread (whose heap glibc trims
    // and faults back in, which made small convolutions profile at a quarter of their speed).
    let (times, n) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut times: Vec<Vec<f64>> = vec![Vec::new(); nodes];
            let mut scratch = Scratch::default();
            let n = rounds(|keep| {
                let mut env: Env = input();
                for (l, t) in times.iter_mut().enumerate() {
                    let t0 = Instant::now();
                    graph.eval(&[l], &mut env, &[], &mut scratch);
                    if keep {
                        t.push(t0.elapsed().as_secs_f64());
                    }
                }
            });
            (times, n)
        })
        .join()
        .map_err(|_| "a layer panicked while it was profiled".to_string())
    })?;
    let layers: Vec<f64> = times
        .into_iter()
        .map(|t| median(t) / records as f64)
        .collect();

    // The whole pass on every core at once against the same pass on one thread alone, timed
    // the same way (a whole pass a round, on threads of their own), in alternated pairs of
    // short runs whose median ratio counts: on a shared machine, a neighbour busy during one
    // long run of either made the ratio, and the MLP's prediction with it, swing from 49,000
    // to 77,000 records/s between plans a few seconds apart.
    // Values dropped as soon as they are dead, as a stage drops them.
    let all: Vec<usize> = (0..nodes).collect();
    let keep = graph.outputs.iter().copied().collect();
    let frees = crate::graph::plan::liveness(graph, &all, &keep);
    let whole_pass = |threads: usize| -> f64 {
        let per_thread: Vec<f64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut scratch = Scratch::default();
                        let mut per = Vec::new();
                        rounds_for(CONTENTION_TIME, |keep| {
                            let mut env = input();
                            let t = Instant::now();
                            graph.eval(&all, &mut env, &frees, &mut scratch);
                            if keep {
                                per.push(t.elapsed().as_secs_f64());
                            }
                        });
                        median(per)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        median(per_thread)
    };
    let contention = if cores > 1 {
        // A model whose pass takes a good part of a run (ResNet-18's chunk of images) stretches
        // every run to its fewest rounds: it stops after the pairs that fit the time of five
        // short pairs, one at least, so that planning it does not take three times as long.
        let started = Instant::now();
        let mut ratios = Vec::new();
        while ratios.len() < CONTENTION_PAIRS
            && (ratios.is_empty()
                || started.elapsed() < CONTENTION_PAIRS as u32 * 2 * CONTENTION_TIME)
        {
            let alone = whole_pass(1);
            ratios.push(whole_pass(cores) / alone.max(1e-12));
        }
        median(ratios).max(1.0)
    } else {
        1.0
    };
    Ok(Profile {
        layers,
        parse: median(parse_times) / records.max(1) as f64,
        contention,
        records,
        rounds: n,
        elapsed: start.elapsed(),
    })
}
