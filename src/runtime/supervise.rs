//! Supervision: what happens when a stage replica panics.
//!
//! Erlang's lesson, at the scale of a chunk: the failure stays local. The replica is restarted
//! (fresh scratch buffers; its layers are immutable and shared, so nothing else needs rebuilding)
//! and the chunk it was computing is re-run by bisection from the layer that failed ([`bisect`]),
//! so the records that fail on their own are found. Those are *poisoned*: they stay in the chunk
//! (every branch keeps the same rows), their rows in the stage's outputs are zeros, and the sink
//! writes an error line for each instead of an output line. Every other record is computed and
//! written as usual, in order, and the chunk keeps its in-flight slot until the sink writes it,
//! as any chunk does.
//!
//! A [`RestartBudget`] per stage stops a crash loop: one restart is counted per chunk that
//! panicked (the further panics while isolating its records are part of that one restart), and
//! the (N+1)-th within a minute ends the run, naming the stage. A stage that fails on every
//! record therefore gives up after N+1 chunks, each costing at most 2·records − 2 re-runs.
//!
//! One chunk is isolated at a time in the whole pipeline ([`Supervisor::isolating`]): what an
//! isolation holds beyond the worker's own chunk is then counted once in the memory bound
//! (`isolation` in [`crate::graph::plan::ActivationBytes`]).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The window the restart budget counts over.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Restarts allowed per minute per stage when neither the pipeline file nor `--max-restarts`
/// says: enough for a few poisoned records a minute, few enough that a stage failing on every
/// record stops within a second or so.
pub const DEFAULT_MAX_RESTARTS: u32 = 10;

/// Restarts of one stage's replicas (shared by them) within the last minute.
#[derive(Debug)]
pub(super) struct RestartBudget {
    pub per_minute: u32,
    recent: Mutex<VecDeque<Instant>>,
}

/// A restart that went over the budget.
#[derive(Debug, PartialEq)]
pub(super) struct Exhausted {
    /// Restarts within the window, this one included.
    pub restarts: usize,
}

impl RestartBudget {
    pub fn new(per_minute: u32) -> RestartBudget {
        RestartBudget {
            per_minute,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Count a restart at `now`: the restarts within the last minute (this one included), or
    /// [`Exhausted`] when that is more than the budget allows.
    pub fn restart(&self, now: Instant) -> Result<usize, Exhausted> {
        // A replica that panicked while holding this lock cannot have left the queue half
        // updated (push and pop do not panic), so a poisoned lock is still sound.
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        while recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= RESTART_WINDOW)
        {
            recent.pop_front();
        }
        recent.push_back(now);
        // Only the last `per_minute + 1` matter: the queue stays as small as the budget.
        if recent.len() > self.per_minute as usize + 1 {
            recent.pop_front();
        }
        let restarts = recent.len();
        if restarts > self.per_minute as usize {
            Err(Exhausted { restarts })
        } else {
            Ok(restarts)
        }
    }
}

/// What every stage worker of a run shares for supervision.
#[derive(Debug)]
pub(super) struct Supervisor {
    /// One per plan stage.
    pub budgets: Vec<RestartBudget>,
    isolating: Mutex<()>,
}

impl Supervisor {
    pub fn new(budgets: Vec<RestartBudget>) -> Supervisor {
        Supervisor {
            budgets,
            isolating: Mutex::new(()),
        }
    }

    /// Wait for the right to isolate a chunk: one at a time in the whole pipeline. The holder
    /// only computes (it sends nothing while it holds this), so waiting cannot deadlock.
    pub fn isolating(&self) -> MutexGuard<'_, ()> {
        self.isolating.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What bisection found.
#[derive(Debug, PartialEq)]
pub(super) struct Isolated {
    /// Records that failed on their own, with the failure, in row order.
    pub poisoned: Vec<(usize, String)>,
    /// Re-runs made.
    pub runs: usize,
}

/// Find the records of `0..records` that fail on their own, given that the whole range failed
/// with `failure`. `run` computes a sub-range (keeping its results) or says why it failed;
/// `split` says where to cut a failed range of two or more records (strictly inside it).
///
/// A range that fails is cut in two until single records remain, so with even cuts a failing
/// record costs about 2·log2(records) re-runs, and a chunk where every record fails 2·records − 2
/// whatever the cuts. A range that succeeds is never re-run: each record's results come from
/// exactly one successful run. Ranges are run in row order.
pub(super) fn bisect(
    records: usize,
    failure: String,
    split: impl Fn(&Range<usize>) -> usize,
    mut run: impl FnMut(Range<usize>) -> Result<(), String>,
) -> Isolated {
    let mut found = Isolated {
        poisoned: Vec::new(),
        runs: 0,
    };
    // Failed ranges still to split, the leftmost on top.
    let mut failed: Vec<(Range<usize>, String)> = vec![(0..records, failure)];
    while let Some((range, why)) = failed.pop() {
        if range.len() <= 1 {
            if !range.is_empty() {
                found.poisoned.push((range.start, why));
            }
            continue;
        }
        let mid = split(&range).clamp(range.start + 1, range.end - 1);
        let mut halves = Vec::with_capacity(2);
        for half in [range.start..mid, mid..range.end] {
            found.runs += 1;
            if let Err(why) = run(half.clone()) {
                halves.push((half, why));
            }
        }
        // Right half under the left, so records are reported in row order.
        failed.extend(halves.into_iter().rev());
    }
    found
}

/// Where to cut records `range` so each side holds about half of it: half the records, or for
/// text (`seqs`, each record's first token row) half the tokens. A side then holds at most half
/// the range's tokens plus one record's, which is what the memory bound counts.
pub(super) fn even_split(range: &Range<usize>, seqs: Option<&[usize]>) -> usize {
    match seqs {
        None => range.start + range.len() / 2,
        Some(s) => {
            let half = s[range.start] + (s[range.end] - s[range.start]) / 2;
            // The first record that starts at or past the middle token.
            let after = s[range.start + 1..range.end].partition_point(|&t| t < half);
            range.start + 1 + after
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bisect 0..n where `bad` records fail; every range that contains one fails.
    fn isolate(n: usize, bad: &[usize]) -> (Isolated, Vec<usize>) {
        let mut computed = Vec::new();
        let found = bisect(
            n,
            "whole chunk".into(),
            |r| even_split(r, None),
            |r| match bad.iter().find(|b| r.contains(b)) {
                Some(b) => Err(format!("record {b}")),
                None => {
                    computed.extend(r);
                    Ok(())
                }
            },
        );
        (found, computed)
    }

    #[test]
    fn bisection_finds_exactly_the_failing_records_and_computes_every_other_once() {
        for n in [1, 2, 3, 7, 32, 33, 64] {
            for bad in [vec![0], vec![n - 1], vec![n / 2], vec![0, n / 3, n - 1]] {
                let mut bad = bad;
                bad.sort();
                bad.dedup();
                let (found, mut computed) = isolate(n, &bad);
                let rows: Vec<usize> = found.poisoned.iter().map(|p| p.0).collect();
                assert_eq!(rows, bad, "n {n}");
                computed.sort();
                let good: Vec<usize> = (0..n).filter(|r| !bad.contains(r)).collect();
                assert_eq!(computed, good, "n {n}, bad {bad:?}: each good record once");
            }
        }
    }

    #[test]
    fn a_lone_record_is_reported_with_its_own_failure() {
        let (found, _) = isolate(32, &[5]);
        assert_eq!(found.poisoned, vec![(5, "record 5".to_string())]);
        // Two halves per level, five levels: 10 re-runs, not 32.
        assert_eq!(found.runs, 10);
        let (one, _) = isolate(1, &[0]);
        assert_eq!(one.poisoned, vec![(0, "whole chunk".to_string())]);
        assert_eq!(one.runs, 0, "a single record's failure needs no re-run");
    }

    #[test]
    fn a_chunk_failing_on_every_record_costs_at_most_two_runs_a_record() {
        for n in [2, 31, 32, 64, 1000] {
            let all: Vec<usize> = (0..n).collect();
            let (found, computed) = isolate(n, &all);
            assert_eq!(found.poisoned.len(), n);
            assert!(computed.is_empty());
            assert_eq!(found.runs, 2 * n - 2, "n {n}");
        }
    }

    #[test]
    fn a_failure_that_does_not_recur_poisons_nothing() {
        let mut runs = 0;
        let found = bisect(
            32,
            "flaky".into(),
            |r| even_split(r, None),
            |_| {
                runs += 1;
                Ok(())
            },
        );
        assert!(found.poisoned.is_empty());
        assert_eq!((found.runs, runs), (2, 2));
    }

    #[test]
    fn text_is_cut_at_half_its_tokens_never_at_an_end() {
        // Records of 10, 2, 2, 2, 100 and 4 tokens.
        let seqs = [0, 10, 12, 14, 16, 116, 120];
        // 120 tokens: the middle token (60) is in record 4, so the cut is after it.
        assert_eq!(even_split(&(0..6), Some(&seqs)), 5);
        assert_eq!(even_split(&(0..4), Some(&seqs)), 1);
        assert_eq!(even_split(&(1..4), Some(&seqs)), 3);
        assert_eq!(even_split(&(4..6), Some(&seqs)), 5);
        assert_eq!(even_split(&(0..32), None), 16);
        // Whatever the lengths, bisection still finds every failing record.
        let found = bisect(
            6,
            "all".into(),
            |r| even_split(r, Some(&seqs)),
            |r| {
                if r.contains(&4) {
                    Err("record 4".into())
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(found.poisoned, vec![(4, "record 4".to_string())]);
    }

    #[test]
    fn the_budget_allows_n_restarts_a_minute_and_forgets_older_ones() {
        let budget = RestartBudget::new(3);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(budget.restart(at(0)), Ok(1));
        assert_eq!(budget.restart(at(10)), Ok(2));
        assert_eq!(budget.restart(at(20)), Ok(3));
        // The restart at 0 s is a minute old at 60 s: three within the window again.
        assert_eq!(budget.restart(at(60)), Ok(3));
        assert_eq!(budget.restart(at(61)), Err(Exhausted { restarts: 4 }));
        let none = RestartBudget::new(0);
        assert_eq!(none.restart(t0), Err(Exhausted { restarts: 1 }));
    }
}
