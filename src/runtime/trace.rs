//! `--trace PATH`: per chunk, per stage activity as Chrome Trace Event JSON (Perfetto,
//! chrome://tracing). One row per stage replica; each span is one chunk computed.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Spans kept at most; past this a long run stops recording rather than grow without bound.
pub const MAX_SPANS: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Tracer {
    start: Instant,
    spans: Arc<Mutex<Vec<Span>>>,
}

#[derive(Debug)]
struct Span {
    stage: String,
    replica: usize,
    chunk: u64,
    begin_us: f64,
    end_us: f64,
}

impl Tracer {
    pub fn new(start: Instant) -> Tracer {
        Tracer {
            start,
            spans: Arc::default(),
        }
    }

    pub fn span(&self, stage: &str, replica: usize, chunk: u64, begin: Instant, end: Instant) {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.len() < MAX_SPANS {
            spans.push(Span {
                stage: stage.to_string(),
                replica,
                chunk,
                begin_us: (begin - self.start).as_secs_f64() * 1e6,
                end_us: (end - self.start).as_secs_f64() * 1e6,
            });
        }
    }

    /// Write the trace: complete events (`"ph":"X"`), one thread row per stage replica.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<(String, usize)> =
            spans.iter().map(|s| (s.stage.clone(), s.replica)).collect();
        rows.sort();
        rows.dedup();
        let tid = |s: &Span| {
            rows.iter()
                .position(|r| r.0 == s.stage && r.1 == s.replica)
                .unwrap_or(0)
        };
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        write!(out, "{{\"traceEvents\":[")?;
        for (i, (stage, replica)) in rows.iter().enumerate() {
            let name = serde_json::to_string(&format!("{stage} #{replica}")).unwrap_or_default();
            write!(
                out,
                "{}{{\"ph\":\"M\",\"pid\":1,\"tid\":{i},\"name\":\"thread_name\",\"args\":{{\"name\":{name}}}}}",
                if i == 0 { "" } else { "," }
            )?;
        }
        for s in spans.iter() {
            let name = serde_json::to_string(&s.stage).unwrap_or_default();
            write!(
                out,
                ",{{\"ph\":\"X\",\"pid\":1,\"tid\":{},\"name\":{name},\"ts\":{:.3},\"dur\":{:.3},\"args\":{{\"chunk\":{}}}}}",
                tid(s),
                s.begin_us,
                s.end_us - s.begin_us,
                s.chunk
            )?;
        }
        writeln!(out, "],\"displayTimeUnit\":\"ms\"}}")?;
        out.flush()
    }
}
