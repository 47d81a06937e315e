//! `run --metrics ADDR`: a real HTTP client scrapes `/metrics` while records stream through the
//! real binary, and an independent parser of the Prometheus text format reads the answer.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{run_with_metrics, stage_names, subpass, validate_budget, wait_with_timeout};
use prometheus_parse::{Scrape, Value};

const PIPELINE: &str = "configs/mlp.yaml";

/// A `subpass run --metrics 127.0.0.1:0` whose stdin the test holds open.
struct Served {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The address from its readiness line.
    addr: String,
    stdout: Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(pipeline: &str) -> Served {
    let (mut child, addr, stdout) = run_with_metrics(pipeline, "127.0.0.1:0");
    Served {
        stdin: child.stdin.take(),
        child,
        addr,
        stdout,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn get(addr: &str, path: &str) -> (u16, String, String) {
    let mut response = agent()
        .get(&format!("http://{addr}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.body_mut().read_to_string().unwrap();
    (status, content_type, body)
}

fn scrape(addr: &str) -> Scrape {
    let (status, content_type, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The sample `metric` whose labels include `labels`.
fn sample<'a>(
    s: &'a Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> &'a prometheus_parse::Sample {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {metric}{labels:?}"))
}

fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match &sample(s, metric, labels).value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{metric} is {other:?}"),
    }
}

fn counter(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match &sample(s, metric, labels).value {
        Value::Counter(v) => *v,
        other => panic!("{metric} must be a counter, is {other:?}"),
    }
}

fn mlp_record(i: usize) -> String {
    let values: Vec<String> = (0..784)
        .map(|j| format!("{}", ((i + j) % 17) as f32 / 17.0))
        .collect();
    format!("{{\"id\":{i},\"x\":[{}]}}\n", values.join(","))
}

#[test]
fn scrapes_during_a_run_agree_with_what_was_fed() {
    let budget = validate_budget(PIPELINE) as f64;
    let stages = stage_names(PIPELINE);
    let hash =
        subpass::runtime::stats::file_hash(&std::fs::read(common::root().join(PIPELINE)).unwrap());
    let mut run = serve(PIPELINE);
    let mut stdin = run.stdin.take().unwrap();
    let (rounds, good_per_round) = (6, 150);
    let bad_lines = ["[1, 2]\n", "not json\n"];
    let mut previous_in = 0.0;
    for round in 0..rounds {
        let mut text = String::new();
        for i in 0..good_per_round {
            text.push_str(&mlp_record(round * good_per_round + i));
        }
        for bad in bad_lines {
            text.push_str(bad);
        }
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
        // Mid-stream: every figure is there and within its bounds.
        let s = scrape(&run.addr);
        let records_in = counter(&s, "subpass_records_in_total", &[]);
        assert!(records_in >= previous_in, "records_in went back");
        previous_in = records_in;
        assert_eq!(value(&s, "subpass_in_flight_chunks_limit", &[]), budget);
        assert!(value(&s, "subpass_in_flight_chunks", &[]) <= budget);
        for stage in &stages {
            let depth = value(&s, "subpass_stage_queue_depth", &[("stage", stage)]);
            let capacity = value(&s, "subpass_stage_queue_capacity", &[("stage", stage)]);
            assert!(
                capacity > 0.0 && depth <= capacity,
                "{stage}: {depth}/{capacity}"
            );
        }
    }
    let fed_good = (rounds * good_per_round) as f64;
    let fed_bad = (rounds * bad_lines.len()) as f64;
    // Stdin is still open: the pipeline answers what it has (`max_delay_ms`) and stays up.
    let deadline = Instant::now() + Duration::from_secs(120);
    let s = loop {
        let s = scrape(&run.addr);
        if counter(&s, "subpass_records_in_total", &[]) >= fed_good + fed_bad {
            break s;
        }
        assert!(Instant::now() < deadline, "records never all counted");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        counter(&s, "subpass_records_in_total", &[]),
        fed_good + fed_bad
    );
    assert_eq!(counter(&s, "subpass_records_out_total", &[]), fed_good);
    assert_eq!(counter(&s, "subpass_records_rejected_total", &[]), fed_bad);
    for stage in &stages {
        let l = [("stage", stage.as_str())];
        assert!(
            counter(&s, "subpass_stage_chunks_total", &l) > 0.0,
            "{stage}"
        );
        assert!(
            counter(&s, "subpass_stage_busy_seconds_total", &l) > 0.0,
            "{stage}"
        );
        assert_eq!(
            counter(&s, "subpass_stage_restarts_total", &l),
            0.0,
            "{stage}"
        );
        assert!(value(&s, "subpass_stage_replicas", &l) >= 1.0, "{stage}");
    }
    // Everything written has left the budget.
    assert_eq!(value(&s, "subpass_in_flight_chunks", &[]), 0.0);
    assert_eq!(value(&s, "subpass_pipeline_version", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            "subpass_pipeline_info",
            &[("name", "mlp"), ("version", "1"), ("hash", &hash)]
        ),
        1.0
    );
    // One latency per chunk written; every chunk went through the parser.
    let chunks = counter(
        &s,
        "subpass_stage_chunks_total",
        &[("stage", "source.parse")],
    );
    let histogram = s
        .samples
        .iter()
        .find(|x| x.metric == "subpass_chunk_latency_seconds")
        .expect("the latency histogram");
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("{:?}", histogram.value)
    };
    assert!(buckets
        .windows(2)
        .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count));
    let last = buckets.last().unwrap();
    assert!(
        last.less_than.is_infinite() && last.count == chunks,
        "{buckets:?}"
    );
    assert_eq!(
        value(&s, "subpass_chunk_latency_seconds_count", &[]),
        chunks
    );
    assert!(value(&s, "subpass_chunk_latency_seconds_sum", &[]) > 0.0);

    drop(stdin);
    let status = wait_with_timeout(&mut run.child, Duration::from_secs(60));
    assert!(status.success());
    let lines: Vec<String> = run.stdout.try_iter().collect();
    assert_eq!(lines.len() as f64, fed_good);
}

/// Sockets the process has open now.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    })
}

#[test]
fn unknown_paths_get_404_and_connections_are_bounded_and_timed_out() {
    let run = serve("configs/digits-mlp.yaml");
    assert_eq!(get(&run.addr, "/").0, 404);
    assert_eq!(get(&run.addr, "/metrics/x").0, 404);
    assert_eq!(get(&run.addr, "/metrics?x=1").0, 200);

    // A request whose head never ends within the limit is refused, not buffered.
    let mut big = TcpStream::connect(&run.addr).unwrap();
    let _ = big
        .write_all(format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(16 << 10)).as_bytes());
    let _ = big.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.80}");

    // Many idle clients: the server holds only a few of them at a time.
    let pid = run.child.id();
    if std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok() {
        let before = open_sockets(pid);
        let idle: Vec<TcpStream> = (0..40)
            .map(|_| TcpStream::connect(&run.addr).unwrap())
            .collect();
        let mut most = 0;
        let watch = Instant::now();
        while watch.elapsed() < Duration::from_secs(1) {
            most = most.max(open_sockets(pid).saturating_sub(before));
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(most >= 1, "the server accepted none of the idle clients");
        assert!(
            most <= subpass::runtime::metrics::MAX_CONNECTIONS,
            "{most} connections held at once"
        );
        drop(idle);
    }

    // A client that never asks is dropped after the connection timeout.
    let mut silent = TcpStream::connect(&run.addr).unwrap();
    silent
        .set_read_timeout(Some(subpass::runtime::metrics::CONNECTION_TIMEOUT * 4))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = silent
        .read(&mut buf)
        .expect("closed by the server, not timed out here");
    assert_eq!(n, 0);
    assert!(started.elapsed() < subpass::runtime::metrics::CONNECTION_TIMEOUT * 3);
    // And the endpoint still answers.
    assert_eq!(get(&run.addr, "/metrics").0, 200);
}

#[test]
fn a_bad_address_or_a_port_in_use_exits_2_before_reading_input() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    for (addr, message) in [
        ("nonsense", "--metrics nonsense: not an address"),
        (
            "127.0.0.1:99999",
            "--metrics 127.0.0.1:99999: not an address",
        ),
        (in_use.as_str(), "cannot listen on"),
    ] {
        // Stdin stays open: the error must come before any read.
        let mut child = subpass()
            .args(["run", PIPELINE, "--metrics", addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_with_timeout(&mut child, Duration::from_secs(60));
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(status.code(), Some(2), "{addr}: {stderr}");
        assert!(stderr.contains(message), "{addr}: {stderr}");
    }
}

/// A reload (SIGHUP) shows as the next version with the new file's hash, and the stream's
/// counters carry on across it instead of starting again.
#[test]
#[cfg(unix)]
fn a_reload_is_the_next_version_and_counters_carry_on() {
    let dir = common::tempdir();
    let config = dir.path().join("live.yaml");
    let text = std::fs::read_to_string(common::root().join(PIPELINE)).unwrap();
    std::fs::write(&config, &text).unwrap();
    let mut run = serve(config.to_str().unwrap());
    let mut stdin = run.stdin.take().unwrap();
    let feed = |stdin: &mut ChildStdin, from: usize| {
        let block: String = (from..from + 64).map(mlp_record).collect();
        stdin.write_all(block.as_bytes()).unwrap();
        stdin.flush().unwrap();
    };
    feed(&mut stdin, 0);
    for _ in 0..64 {
        run.stdout.recv_timeout(Duration::from_secs(60)).unwrap();
    }
    let first = scrape(&run.addr);
    assert_eq!(value(&first, "subpass_pipeline_version", &[]), 1.0);
    let reloaded = text.replace("seed: 7", "seed: 8");
    assert_ne!(reloaded, text);
    std::fs::write(&config, &reloaded).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &run.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The new version is published once it runs: poll /metrics for it, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    while value(&scrape(&run.addr), "subpass_pipeline_version", &[]) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the reload never showed in /metrics"
        );
        std::thread::yield_now();
    }
    let hash = subpass::runtime::stats::file_hash(reloaded.as_bytes());
    let s = scrape(&run.addr);
    assert_eq!(
        sample(&s, "subpass_pipeline_info", &[]).labels.get("hash"),
        Some(hash.as_str())
    );
    feed(&mut stdin, 64);
    for _ in 0..64 {
        run.stdout.recv_timeout(Duration::from_secs(60)).unwrap();
    }
    let last = scrape(&run.addr);
    assert_eq!(counter(&last, "subpass_records_out_total", &[]), 128.0);
}
