//! Counters the actors update and the summary printed at exit (`--stats`, `--stats-interval`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// Time accounting of one stage, shared by its replicas.
#[derive(Debug, Default)]
pub struct StageCounters {
    pub chunks: AtomicU64,
    pub busy_ns: AtomicU64,
    pub wait_in_ns: AtomicU64,
    pub wait_out_ns: AtomicU64,
    /// Replicas restarted after a panic (one per chunk that panicked; see `runtime::supervise`).
    pub restarts: AtomicU64,
}

impl StageCounters {
    pub fn record(&self, wait_in: Duration, busy: Duration, wait_out: Duration) {
        self.chunks.fetch_add(1, Relaxed);
        self.wait_in_ns
            .fetch_add(wait_in.as_nanos() as u64, Relaxed);
        self.busy_ns.fetch_add(busy.as_nanos() as u64, Relaxed);
        self.wait_out_ns
            .fetch_add(wait_out.as_nanos() as u64, Relaxed);
    }
}

/// Record counts, updated by the output writer.
#[derive(Debug, Default)]
pub struct RecordCounters {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub records_rejected: AtomicU64,
    /// Records with a class label (`--label`), and those whose argmax matched it.
    pub labelled: AtomicU64,
    pub correct: AtomicU64,
    /// Pipeline files loaded while running (SIGHUP, `--watch`), and those refused as invalid.
    pub reloads: AtomicU64,
    pub reloads_refused: AtomicU64,
}

/// Every counter of a running pipeline.
#[derive(Debug)]
pub struct Counters {
    /// Shared by every version of the pipeline a run loads: its records are the stream's.
    pub records: Arc<RecordCounters>,
    /// (name, replicas, counters), the parser first, then the plan's stages.
    pub stages: Vec<(String, usize, StageCounters)>,
}

impl Counters {
    pub fn new(stages: Vec<(String, usize)>) -> Arc<Counters> {
        Counters::sharing(stages, Arc::default())
    }

    /// Counters for a new version of the pipeline: its own stages, the stream's records.
    pub fn sharing(stages: Vec<(String, usize)>, records: Arc<RecordCounters>) -> Arc<Counters> {
        Arc::new(Counters {
            records,
            stages: stages
                .into_iter()
                .map(|(n, r)| (n, r, StageCounters::default()))
                .collect(),
        })
    }

    pub fn snapshot(&self, elapsed: Duration) -> RunStats {
        let s = |ns: &AtomicU64| ns.load(Relaxed) as f64 / 1e9;
        let records_out = self.records.records_out.load(Relaxed);
        RunStats {
            records_in: self.records.records_in.load(Relaxed),
            records_out,
            records_rejected: self.records.records_rejected.load(Relaxed),
            reloads: self.records.reloads.load(Relaxed),
            reloads_refused: self.records.reloads_refused.load(Relaxed),
            elapsed_s: elapsed.as_secs_f64(),
            records_per_s: records_out as f64 / elapsed.as_secs_f64().max(1e-9),
            peak_rss_bytes: peak_rss_bytes(),
            accuracy: match self.records.labelled.load(Relaxed) {
                0 => None,
                labelled => Some(Accuracy {
                    labelled,
                    correct: self.records.correct.load(Relaxed),
                }),
            },
            stages: self
                .stages
                .iter()
                .map(|(name, replicas, c)| StageStats {
                    name: name.clone(),
                    replicas: *replicas,
                    chunks: c.chunks.load(Relaxed),
                    busy_s: s(&c.busy_ns),
                    wait_in_s: s(&c.wait_in_ns),
                    wait_out_s: s(&c.wait_out_ns),
                    restarts: c.restarts.load(Relaxed),
                    busy_pct: 100.0 * s(&c.busy_ns)
                        / (elapsed.as_secs_f64() * *replicas as f64).max(1e-9),
                })
                .collect(),
        }
    }
}

/// The figures `--stats` writes as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    pub records_in: u64,
    pub records_out: u64,
    pub records_rejected: u64,
    /// Pipeline files loaded while running, and refused as invalid (the old one kept running).
    pub reloads: u64,
    pub reloads_refused: u64,
    pub elapsed_s: f64,
    pub records_per_s: f64,
    /// Peak resident set size of the process (VmHWM), 0 where the OS does not say.
    pub peak_rss_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Accuracy>,
    pub stages: Vec<StageStats>,
}

/// Argmax agreement with a label field (`run --label`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Accuracy {
    pub labelled: u64,
    pub correct: u64,
}

impl Accuracy {
    pub fn percent(&self) -> f64 {
        100.0 * self.correct as f64 / self.labelled.max(1) as f64
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageStats {
    pub name: String,
    pub replicas: usize,
    pub chunks: u64,
    /// Seconds spent computing, summed over replicas.
    pub busy_s: f64,
    /// Seconds spent waiting for a chunk to arrive.
    pub wait_in_s: f64,
    /// Seconds spent waiting for room downstream (backpressure).
    pub wait_out_s: f64,
    /// Busy time over wall time × replicas.
    pub busy_pct: f64,
    /// Replicas restarted after a panic.
    pub restarts: u64,
}

impl RunStats {
    /// The summary printed on stderr at exit.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "records: {} in, {} out, {} rejected in {:.3} s ({:.0} records/s), peak RSS {}\n",
            self.records_in,
            self.records_out,
            self.records_rejected,
            self.elapsed_s,
            self.records_per_s,
            crate::graph::plan::human_bytes(self.peak_rss_bytes)
        );
        if self.reloads + self.reloads_refused > 0 {
            s.push_str(&format!(
                "reloads: {} loaded, {} refused (the stage figures below are the last version's)\n",
                self.reloads, self.reloads_refused
            ));
        }
        s.push_str(&format!(
            "  {:16} {:>8} {:>8} {:>7} {:>10} {:>10} {:>10} {:>8}\n",
            "stage", "replicas", "chunks", "busy%", "busy s", "wait in s", "wait out s", "restarts"
        ));
        for st in &self.stages {
            s.push_str(&format!(
                "  {:16} {:>8} {:>8} {:>6.1}% {:>10.3} {:>10.3} {:>10.3} {:>8}\n",
                st.name,
                st.replicas,
                st.chunks,
                st.busy_pct,
                st.busy_s,
                st.wait_in_s,
                st.wait_out_s,
                st.restarts
            ));
        }
        s
    }
}

/// Peak resident set size of this process so far (VmHWM), in bytes; 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
