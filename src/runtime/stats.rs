//! Counters the actors update and the summary printed at exit (`--stats`, `--stats-interval`);
//! `/metrics` ([`super::metrics`]) reads the same atomics when it is scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
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
    /// Admission to written, per chunk, updated by the output writer.
    pub latency: LatencyHistogram,
    /// Which version of the pipeline file serves now.
    pub pipeline: PipelineVersion,
}

/// Upper bounds, in seconds, of the chunk latency histogram's buckets (`+Inf` follows): from
/// half a millisecond (a small chunk through an idle pipeline) to ten seconds (a stalled reader).
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Chunk latency, admission to written, as a histogram of fixed buckets: three atomic adds per
/// chunk written, nothing per record.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Chunks per bucket, not cumulative; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS_S
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// Cumulative counts per bucket (the last is `+Inf`, the count) and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Relaxed);
                total
            })
            .collect();
        (cumulative, self.sum_ns.load(Relaxed) as f64 / 1e9)
    }
}

/// Which pipeline file is serving: a hash of its bytes, and a version that starts at 1 and that a
/// reload sets. Read when `/metrics` is scraped.
#[derive(Debug)]
pub struct PipelineVersion {
    version: AtomicU64,
    hash: Mutex<String>,
}

impl Default for PipelineVersion {
    fn default() -> Self {
        PipelineVersion {
            version: AtomicU64::new(1),
            hash: Mutex::new(String::new()),
        }
    }
}

impl PipelineVersion {
    /// The version number and the file's hash (empty when unknown).
    pub fn get(&self) -> (u64, String) {
        let hash = self.hash.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (self.version.load(Relaxed), hash)
    }

    /// The hash of the file the current version was loaded from.
    pub fn set_hash(&self, hash: String) {
        *self.hash.lock().unwrap_or_else(|e| e.into_inner()) = hash;
    }

    /// Version `version` now serves, loaded from a file with this hash.
    pub fn set(&self, version: u64, hash: String) {
        self.set_hash(hash);
        self.version.store(version, Relaxed);
    }
}

/// FNV-1a (64 bits) of a file's bytes, in hex: names a pipeline file's contents in `/metrics`.
/// Not cryptographic; stable across builds and platforms, and needs no dependency.
pub fn file_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hash_is_fnv1a_64() {
        // The published FNV-1a 64-bit test vectors (Fowler, Noll, Vo).
        assert_eq!(file_hash(b""), "cbf29ce484222325");
        assert_eq!(file_hash(b"a"), "af63dc4c8601ec8c");
        assert_eq!(file_hash(b"foobar"), "85944171f73967e8");
    }

    #[test]
    fn latency_buckets_are_cumulative_and_inclusive() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500)); // exactly on the first bound: in it
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60)); // beyond the last bound: only in +Inf
        let (cumulative, sum) = h.snapshot();
        assert_eq!(cumulative.len(), LATENCY_BUCKETS_S.len() + 1);
        assert_eq!(cumulative[0], 1); // le=0.0005
        assert_eq!(cumulative[2], 1); // le=0.0025
        assert_eq!(cumulative[3], 2); // le=0.005
        assert_eq!(cumulative[LATENCY_BUCKETS_S.len() - 1], 2); // le=10
        assert_eq!(cumulative[LATENCY_BUCKETS_S.len()], 3); // +Inf
        assert!((sum - 60.0035).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn pipeline_version_starts_at_1_and_a_reload_sets_it() {
        let v = PipelineVersion::default();
        v.set_hash("abc".into());
        assert_eq!(v.get(), (1, "abc".to_string()));
        v.set(2, "def".into());
        assert_eq!(v.get(), (2, "def".to_string()));
    }
}
