//! `run --metrics ADDR`: the running pipeline's counters as Prometheus text, served over HTTP.
//!
//! Nothing here runs per record or per chunk. The actors keep updating the atomics they always
//! update ([`super::stats::Counters`]); a scrape reads them, the length of every stage's input
//! channel and the in-flight budget, and formats the text. The server is a minimal HTTP/1.1
//! responder (one `GET`, then close) on a current-thread tokio runtime of its own thread, so it
//! never takes a compute thread, and it holds at most [`MAX_CONNECTIONS`] connections, each for
//! at most [`CONNECTION_TIMEOUT`] with a request of at most [`MAX_REQUEST_BYTES`]: its memory does
//! not grow with clients.

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};

use super::budget::InFlight;
use super::stats::{Counters, LATENCY_BUCKETS_S};

/// Connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 8;
/// A connection's whole life: reading the request and writing the answer. A client that is
/// slower than this (or sends nothing) is dropped, so it cannot hold a slot for ever.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// The request line and headers at most; a longer request is answered 431 and closed.
pub const MAX_REQUEST_BYTES: usize = 8 << 10;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics {addr}: not an address to listen on ({reason}); expected HOST:PORT, e.g. 127.0.0.1:9464")]
    Address { addr: String, reason: String },
    #[error("--metrics {addr}: cannot listen on {resolved}: {source}")]
    Bind {
        addr: String,
        resolved: SocketAddr,
        source: io::Error,
    },
    #[error("--metrics {addr}: cannot start the server: {source}")]
    Runtime { addr: String, source: io::Error },
}

/// The length of one stage's input channels, read at scrape time.
pub struct QueueProbe {
    len: Box<dyn Fn() -> usize + Send>,
    /// Chunks the channels hold at most.
    pub capacity: usize,
}

impl QueueProbe {
    /// Probes these receivers (clones of the stage's own). Holding a receiver keeps its channel
    /// open, so a [`Publication`] gives them back when the run ends or fails.
    pub fn new<T: Send + 'static>(receivers: Vec<Receiver<T>>) -> QueueProbe {
        let capacity = receivers.iter().filter_map(|r| r.capacity()).sum();
        QueueProbe {
            len: Box::new(move || receivers.iter().map(Receiver::len).sum()),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        (self.len)()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a scrape reads of a running pipeline.
pub struct Probe {
    pub counters: Arc<Counters>,
    pub pipeline_name: String,
    /// When the run started: `subpass_uptime_seconds` counts from it, so rates can be computed
    /// from two scrapes with the server's own clock.
    pub started: Instant,
    /// (index in `counters.stages`, its input queue), for every stage that has one.
    pub queues: Vec<(usize, QueueProbe)>,
    pub budget: InFlight,
    pub budget_limit: usize,
}

/// The state a server exports: the pipeline running now, if any.
#[derive(Default)]
pub struct Exporter {
    current: Mutex<Option<Probe>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Export this pipeline until the returned guard drops.
    pub fn publish(self: &Arc<Self>, probe: Probe) -> Publication {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(probe);
        Publication {
            exporter: self.clone(),
        }
    }

    /// The exposition text of what is published now.
    pub fn render(&self) -> String {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some(probe) => render(probe),
            None => "# no pipeline is running\n".to_string(),
        }
    }
}

/// While it lives, a run's queues are probed. Dropping it releases the receivers (so a stage
/// whose workers are gone closes its channel as it would without metrics); the counters stay
/// readable until the process exits.
pub struct Publication {
    exporter: Arc<Exporter>,
}

impl Drop for Publication {
    fn drop(&mut self) {
        let mut current = self
            .exporter
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(probe) = current.as_mut() {
            probe.queues.clear();
        }
    }
}

/// Escape a label value as the text format asks: backslash, double quote and newline.
fn label(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text exposition (format 0.0.4) of one pipeline.
pub fn render(probe: &Probe) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &probe.counters;
    let mut out = String::with_capacity(4096);
    let (version, hash) = c.records.pipeline.get();
    header(
        &mut out,
        "subpass_pipeline_info",
        "gauge",
        "The pipeline serving now: its name, the FNV-1a hash of its file, and its version (1 at start, +1 per reload).",
    );
    let _ = writeln!(
        out,
        "subpass_pipeline_info{{name=\"{}\",hash=\"{}\",version=\"{version}\"}} 1",
        label(&probe.pipeline_name),
        label(&hash)
    );
    header(
        &mut out,
        "subpass_pipeline_version",
        "gauge",
        "Version of the pipeline file serving now: 1 at start, +1 per reload.",
    );
    let _ = writeln!(out, "subpass_pipeline_version {version}");
    header(
        &mut out,
        "subpass_uptime_seconds",
        "gauge",
        "Seconds since the pipeline started.",
    );
    let _ = writeln!(
        out,
        "subpass_uptime_seconds {}",
        probe.started.elapsed().as_secs_f64()
    );
    let records = [
        (
            "subpass_records_in_total",
            "Records finished: written or rejected.",
            &c.records.records_in,
        ),
        (
            "subpass_records_out_total",
            "Records written.",
            &c.records.records_out,
        ),
        (
            "subpass_records_rejected_total",
            "Bad records reported on the error stream.",
            &c.records.records_rejected,
        ),
    ];
    for (name, help, value) in records {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", value.load(Relaxed));
    }

    let stages: Vec<String> = c.stages.iter().map(|(n, _, _)| label(n)).collect();
    header(
        &mut out,
        "subpass_stage_replicas",
        "gauge",
        "Workers of each stage (busy seconds over wall time and replicas is its busy fraction).",
    );
    for (name, (_, replicas, _)) in stages.iter().zip(&c.stages) {
        let _ = writeln!(out, "subpass_stage_replicas{{stage=\"{name}\"}} {replicas}");
    }
    type Read = fn(&super::stats::StageCounters) -> f64;
    let per_stage: [(&str, &str, Read); 5] = [
        (
            "subpass_stage_busy_seconds_total",
            "Seconds each stage spent computing, summed over its replicas.",
            |s| s.busy_ns.load(Relaxed) as f64 / 1e9,
        ),
        (
            "subpass_stage_wait_in_seconds_total",
            "Seconds each stage waited for input (starved), summed over its replicas.",
            |s| s.wait_in_ns.load(Relaxed) as f64 / 1e9,
        ),
        (
            "subpass_stage_wait_out_seconds_total",
            "Seconds each stage waited for room downstream (backpressure), summed over its replicas.",
            |s| s.wait_out_ns.load(Relaxed) as f64 / 1e9,
        ),
        (
            "subpass_stage_chunks_total",
            "Chunks each stage computed.",
            |s| s.chunks.load(Relaxed) as f64,
        ),
        (
            "subpass_stage_restarts_total",
            "Replicas of each stage restarted after a failure.",
            |s| s.restarts.load(Relaxed) as f64,
        ),
    ];
    for (metric, help, read) in per_stage {
        header(&mut out, metric, "counter", help);
        for (name, (_, _, counters)) in stages.iter().zip(&c.stages) {
            let _ = writeln!(out, "{metric}{{stage=\"{name}\"}} {}", read(counters));
        }
    }
    header(
        &mut out,
        "subpass_stage_queue_depth",
        "gauge",
        "Chunks waiting in each stage's input channels (a join's inbox and its workers' queue).",
    );
    for (s, q) in &probe.queues {
        let _ = writeln!(
            out,
            "subpass_stage_queue_depth{{stage=\"{}\"}} {}",
            stages[*s],
            q.len()
        );
    }
    header(
        &mut out,
        "subpass_stage_queue_capacity",
        "gauge",
        "Chunks each stage's input channels hold at most.",
    );
    for (s, q) in &probe.queues {
        let _ = writeln!(
            out,
            "subpass_stage_queue_capacity{{stage=\"{}\"}} {}",
            stages[*s], q.capacity
        );
    }
    header(
        &mut out,
        "subpass_in_flight_chunks",
        "gauge",
        "Chunks admitted and not yet written: the in-flight budget in use.",
    );
    let _ = writeln!(out, "subpass_in_flight_chunks {}", probe.budget.in_use());
    header(
        &mut out,
        "subpass_in_flight_chunks_limit",
        "gauge",
        "The in-flight budget: chunks admitted at most (`validate` prints it with the memory bound).",
    );
    let _ = writeln!(out, "subpass_in_flight_chunks_limit {}", probe.budget_limit);

    let name = "subpass_chunk_latency_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Seconds from a chunk's admission to its last line written.",
    );
    let (cumulative, sum) = c.records.latency.snapshot();
    for (le, count) in LATENCY_BUCKETS_S.iter().zip(&cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let count = cumulative.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
    out
}

/// The answer to one request head (request line and headers, without the blank line).
pub fn respond(head: &[u8], exporter: &Exporter) -> Vec<u8> {
    let request_line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or_default();
    let mut words = request_line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return response("400 Bad Request", "text/plain", b"bad request\n", true);
    };
    if !version.starts_with(b"HTTP/1.") {
        return response("400 Bad Request", "text/plain", b"bad request\n", true);
    }
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    if path != b"/metrics" {
        return response(
            "404 Not Found",
            "text/plain",
            b"not found: try /metrics\n",
            true,
        );
    }
    match method {
        b"GET" => response("200 OK", CONTENT_TYPE, exporter.render().as_bytes(), true),
        b"HEAD" => response("200 OK", CONTENT_TYPE, exporter.render().as_bytes(), false),
        _ => {
            let mut r = response("405 Method Not Allowed", "text/plain", b"use GET\n", true);
            // Insert `Allow` after the status line.
            let at = r.windows(2).position(|w| w == b"\r\n").unwrap_or(0) + 2;
            r.splice(at..at, b"Allow: GET, HEAD\r\n".iter().copied());
            r
        }
    }
}

fn response(status: &str, content_type: &str, body: &[u8], with_body: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        r.extend_from_slice(body);
    }
    r
}

/// Where the request head ends (the index of the blank line), if it has arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

async fn serve(mut stream: TcpStream, exporter: &Exporter) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    let end = loop {
        if let Some(end) = head_end(&buf[..len]) {
            break end;
        }
        if len == buf.len() {
            let r = response(
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
                true,
            );
            stream.write_all(&r).await?;
            stream.shutdown().await?;
            // Read what the client is still sending (up to a bound) before closing: closing with
            // unread input resets the connection, and the client could lose the answer.
            let mut drained = 0;
            while drained < 8 * MAX_REQUEST_BYTES {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
            return Ok(());
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(()); // the client went away before asking
        }
        len += n;
    };
    let r = respond(&buf[..end], exporter);
    stream.write_all(&r).await?;
    stream.shutdown().await
}

async fn accept_loop(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    mut stop: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A slot first, then a connection: past the limit, clients wait in the accept queue
        // and cost this process nothing.
        let permit = tokio::select! {
            _ = &mut stop => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a
                    // little rather than spin, and go on serving.
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            if let Ok(Err(e)) =
                tokio::time::timeout(CONNECTION_TIMEOUT, serve(stream, &exporter)).await
            {
                tracing::debug!(error = %e, "metrics: connection failed");
            }
            drop(permit);
        });
    }
}

/// The `/metrics` endpoint, serving from its own thread until dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    exporter: Arc<Exporter>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listen on `addr` (`HOST:PORT`; port 0 picks a free one, see [`MetricsServer::addr`]).
    /// Errors (a malformed address, a port in use) come back here, before any record is read.
    pub fn start(addr: &str) -> Result<MetricsServer, MetricsError> {
        let resolved = addr
            .to_socket_addrs()
            .map_err(|e| MetricsError::Address {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| MetricsError::Address {
                addr: addr.to_string(),
                reason: "it names no address".into(),
            })?;
        let std_listener =
            std::net::TcpListener::bind(resolved).map_err(|source| MetricsError::Bind {
                addr: addr.to_string(),
                resolved,
                source,
            })?;
        let runtime_error = |source| MetricsError::Runtime {
            addr: addr.to_string(),
            source,
        };
        let bound = std_listener.local_addr().map_err(runtime_error)?;
        std_listener.set_nonblocking(true).map_err(runtime_error)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(runtime_error)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener).map_err(runtime_error)?
        };
        let exporter = Arc::new(Exporter::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let served = exporter.clone();
        let thread = std::thread::Builder::new()
            .name("subpass-metrics".into())
            .spawn(move || runtime.block_on(accept_loop(listener, served, stop_rx)))
            .map_err(runtime_error)?;
        Ok(MetricsServer {
            addr: bound,
            exporter,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port chosen when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it serves: a run publishes its pipeline here.
    pub fn exporter(&self) -> Arc<Exporter> {
        self.exporter.clone()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    fn probe() -> (Probe, crossbeam_channel::Sender<u32>) {
        let counters = Counters::new(vec![("source.parse".into(), 1), ("a \"b\"".into(), 2)]);
        let (tx, rx) = bounded::<u32>(3);
        (
            Probe {
                counters,
                pipeline_name: "p".into(),
                started: Instant::now(),
                queues: vec![(1, QueueProbe::new(vec![rx]))],
                budget: InFlight::new(5),
                budget_limit: 5,
            },
            tx,
        )
    }

    fn text(r: &[u8]) -> String {
        String::from_utf8(r.to_vec()).unwrap()
    }

    #[test]
    fn renders_labels_escaped_and_queues_at_scrape_time() {
        let (probe, tx) = probe();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        let out = render(&probe);
        assert!(
            out.contains("subpass_stage_queue_depth{stage=\"a \\\"b\\\"\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("subpass_stage_queue_capacity{stage=\"a \\\"b\\\"\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("subpass_in_flight_chunks_limit 5\n"), "{out}");
        assert!(out.contains("subpass_chunk_latency_seconds_bucket{le=\"+Inf\"} 0\n"));
    }

    #[test]
    fn a_publication_gives_the_receivers_back_when_it_drops() {
        let (probe, tx) = probe();
        let exporter = Arc::new(Exporter::default());
        let published = exporter.publish(probe);
        assert!(tx.send(1).is_ok());
        drop(published);
        // No receiver is left: a producer sees the channel closed, as without metrics.
        assert!(tx.send(2).is_err());
        assert!(!exporter.render().contains("queue_depth{"));
        assert!(exporter.render().contains("subpass_records_in_total 0"));
    }

    #[test]
    fn answers_get_and_head_on_metrics_and_404_elsewhere() {
        let (probe, _tx) = probe();
        let exporter = Arc::new(Exporter::default());
        let _published = exporter.publish(probe);
        let get = text(&respond(b"GET /metrics HTTP/1.1\r\nHost: x", &exporter));
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(get.contains("subpass_records_out_total 0"));
        let length: usize = get
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, get.split_once("\r\n\r\n").unwrap().1.len());
        let head = text(&respond(b"HEAD /metrics?x=1 HTTP/1.0", &exporter));
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let post = text(&respond(b"POST /metrics HTTP/1.1", &exporter));
        assert!(
            post.starts_with("HTTP/1.1 405 ") && post.contains("\r\nAllow: GET, HEAD\r\n"),
            "{post}"
        );
        assert!(text(&respond(b"GET / HTTP/1.1", &exporter)).starts_with("HTTP/1.1 404 "));
        assert!(text(&respond(b"GET /metricsx HTTP/1.1", &exporter)).starts_with("HTTP/1.1 404 "));
        assert!(text(&respond(b"garbage", &exporter)).starts_with("HTTP/1.1 400 "));
    }

    #[test]
    fn bad_addresses_and_ports_in_use_are_errors_at_start() {
        assert!(matches!(
            MetricsServer::start("127.0.0.1"),
            Err(MetricsError::Address { .. })
        ));
        assert!(matches!(
            MetricsServer::start("127.0.0.1:notaport"),
            Err(MetricsError::Address { .. })
        ));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = MetricsServer::start(&addr)
            .err()
            .expect("the port is in use");
        assert!(matches!(e, MetricsError::Bind { .. }), "{e}");
        let server = MetricsServer::start("127.0.0.1:0").unwrap();
        assert_ne!(server.addr().port(), 0);
    }
}
