//! `subpass top ADDR`: a live view of a running pipeline, read from its `/metrics`.
//!
//! Each refresh scrapes the endpoint and draws a frame from the last two scrapes: per stage its
//! busy % (the busy-seconds counter's increase over the server's uptime increase, per replica),
//! its queue, chunks/s and restarts, with the busiest stage marked as the bottleneck. The frame
//! is a pure function of the two scrapes ([`render`]), so it is tested without a terminal; the
//! loop around it ([`run`]) only fetches, clears the screen and prints.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// A scrape's body is read up to this size; ours are a few KiB.
const MAX_BODY_BYTES: u64 = 4 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// One stage's figures in a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSample {
    pub name: String,
    pub replicas: f64,
    pub busy_s: f64,
    pub chunks: f64,
    pub restarts: f64,
    pub queue: Option<(f64, f64)>,
}

/// What `top` reads of one scrape of `/metrics`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scrape {
    pub pipeline: String,
    pub hash: String,
    pub version: String,
    pub uptime_s: f64,
    pub records_in: f64,
    pub records_out: f64,
    pub records_rejected: f64,
    pub in_flight: f64,
    pub in_flight_limit: f64,
    /// (upper bound in seconds, cumulative count), `+Inf` last.
    pub latency: Vec<(f64, f64)>,
    /// In the order the exposition lists them (the parser first, then the plan's stages).
    pub stages: Vec<StageSample>,
}

/// A sample's labels, (name, value), in the order given.
type Labels = Vec<(String, String)>;

/// One sample line: `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[chars.next().map_or(inner.len(), |(i, _)| i)..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// Read the figures `top` shows from an exposition in the text format. Samples it does not know
/// are ignored; a line it cannot read is an error naming the line.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    let mut stages: Vec<StageSample> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, value) =
            parse_sample(line).ok_or_else(|| format!("line {}: cannot read `{line}`", n + 1))?;
        let get = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        if let Some(stage) = get("stage") {
            let i = *index.entry(stage.clone()).or_insert_with(|| {
                stages.push(StageSample {
                    name: stage,
                    replicas: 1.0,
                    busy_s: 0.0,
                    chunks: 0.0,
                    restarts: 0.0,
                    queue: None,
                });
                stages.len() - 1
            });
            let s = &mut stages[i];
            match name {
                "subpass_stage_replicas" => s.replicas = value,
                "subpass_stage_busy_seconds_total" => s.busy_s = value,
                "subpass_stage_chunks_total" => s.chunks = value,
                "subpass_stage_restarts_total" => s.restarts = value,
                "subpass_stage_queue_depth" => {
                    s.queue = Some((value, s.queue.map_or(0.0, |q| q.1)))
                }
                "subpass_stage_queue_capacity" => {
                    s.queue = Some((s.queue.map_or(0.0, |q| q.0), value))
                }
                _ => {}
            }
            continue;
        }
        match name {
            "subpass_pipeline_info" => {
                scrape.pipeline = get("name").unwrap_or_default();
                scrape.hash = get("hash").unwrap_or_default();
                scrape.version = get("version").unwrap_or_default();
            }
            "subpass_uptime_seconds" => scrape.uptime_s = value,
            "subpass_records_in_total" => scrape.records_in = value,
            "subpass_records_out_total" => scrape.records_out = value,
            "subpass_records_rejected_total" => scrape.records_rejected = value,
            "subpass_in_flight_chunks" => scrape.in_flight = value,
            "subpass_in_flight_chunks_limit" => scrape.in_flight_limit = value,
            "subpass_chunk_latency_seconds_bucket" => {
                let le = match get("le").as_deref() {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => le
                        .parse()
                        .map_err(|_| format!("line {}: bad bucket bound `{le}`", n + 1))?,
                    None => continue,
                };
                scrape.latency.push((le, value));
            }
            _ => {}
        }
    }
    scrape.stages = stages;
    Ok(scrape)
}

/// `a` per second of `dt`, 0 when there is no interval.
fn rate(a: f64, dt: f64) -> f64 {
    if dt > 0.0 {
        a / dt
    } else {
        0.0
    }
}

/// The smallest bucket bound under which the fraction `q` of the chunks observed between two
/// scrapes fall.
fn quantile(prev: Option<&Scrape>, cur: &Scrape, q: f64) -> Option<f64> {
    let before = |le: f64| {
        prev.and_then(|p| p.latency.iter().find(|(l, _)| *l == le).map(|(_, c)| *c))
            .unwrap_or(0.0)
    };
    let deltas: Vec<(f64, f64)> = cur
        .latency
        .iter()
        .map(|(le, c)| (*le, c - before(*le)))
        .collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    deltas
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

fn seconds(s: f64) -> String {
    if s.is_infinite() {
        "> 10 s".into()
    } else if s < 1.0 {
        format!("≤ {} ms", (s * 1e6).round() / 1e3)
    } else {
        format!("≤ {s} s")
    }
}

/// Whole numbers with thousands separators.
fn count(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

const BOLD_REVERSE: &str = "\x1b[1;7m";
const RESET: &str = "\x1b[0m";

/// One frame from two scrapes of the same endpoint: `prev` is the one a refresh earlier, `None`
/// for the first (rates are then since the pipeline started). A `prev` from an earlier process
/// (its uptime is larger) counts as none. With `color`, the bottleneck's row is in reverse video;
/// without, it is marked only by its `◀ bottleneck` tag.
pub fn render(source: &str, prev: Option<&Scrape>, cur: &Scrape, color: bool) -> Vec<String> {
    let prev = prev.filter(|p| p.uptime_s < cur.uptime_s);
    let dt = cur.uptime_s - prev.map_or(0.0, |p| p.uptime_s);
    let since = |f: fn(&Scrape) -> f64| f(cur) - prev.map_or(0.0, f);
    let mut lines = vec![
        format!(
            "subpass top · {source} · pipeline {} v{} ({}) · up {:.1} s",
            cur.pipeline, cur.version, cur.hash, cur.uptime_s
        ),
        format!(
            "records: {} in, {} out, {} rejected · {} records/s",
            count(cur.records_in),
            count(cur.records_out),
            count(cur.records_rejected),
            count(rate(since(|s| s.records_in), dt))
        ),
        format!(
            "in flight: {}/{} chunks · chunk latency p50 {}, p99 {}",
            count(cur.in_flight),
            count(cur.in_flight_limit),
            quantile(prev, cur, 0.5).map_or("–".into(), seconds),
            quantile(prev, cur, 0.99).map_or("–".into(), seconds),
        ),
        String::new(),
        format!(
            "{:<20} {:>8} {:>7} {:>9} {:>10} {:>9}",
            "STAGE", "REPLICAS", "BUSY%", "QUEUE", "CHUNKS/S", "RESTARTS"
        ),
    ];
    let busy: Vec<f64> = cur
        .stages
        .iter()
        .map(|s| {
            let before = prev
                .and_then(|p| p.stages.iter().find(|q| q.name == s.name))
                .map_or(0.0, |q| q.busy_s);
            100.0 * rate(s.busy_s - before, dt) / s.replicas.max(1.0)
        })
        .collect();
    let bottleneck = busy
        .iter()
        .enumerate()
        .filter(|(_, b)| **b > 0.0)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i);
    for (i, s) in cur.stages.iter().enumerate() {
        let before = prev.and_then(|p| p.stages.iter().find(|q| q.name == s.name));
        let chunks = rate(s.chunks - before.map_or(0.0, |q| q.chunks), dt);
        let queue = s
            .queue
            .map_or("–".into(), |(d, c)| format!("{}/{}", count(d), count(c)));
        let row = format!(
            "{:<20} {:>8} {:>6.1}% {:>9} {:>10.1} {:>9}",
            s.name,
            count(s.replicas),
            busy[i],
            queue,
            chunks,
            count(s.restarts)
        );
        lines.push(match (bottleneck == Some(i), color) {
            (true, true) => format!("{BOLD_REVERSE}{row}{RESET}  ◀ bottleneck"),
            (true, false) => format!("{row}  ◀ bottleneck"),
            (false, _) => row,
        });
    }
    lines
}

/// Where to scrape: `HOST:PORT`, `http://HOST:PORT`, or a full `http://HOST:PORT/PATH`.
pub fn endpoint(addr: &str) -> Result<(String, String), String> {
    if addr.starts_with("https://") {
        return Err(format!("{addr}: https is not supported; use http://"));
    }
    let rest = addr.strip_prefix("http://").unwrap_or(addr);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    if host.is_empty() {
        return Err(format!(
            "{addr}: no host; expected HOST:PORT, e.g. 127.0.0.1:9464"
        ));
    }
    Ok((host.to_string(), path.to_string()))
}

/// One `GET` over plain HTTP/1.1; the body of a 200 answer.
pub fn fetch(host: &str, path: &str) -> Result<String, String> {
    let addr = host
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{host} names no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, FETCH_TIMEOUT).map_err(|e| e.to_string())?;
    let io_err = |e: io::Error| e.to_string();
    stream
        .set_read_timeout(Some(FETCH_TIMEOUT))
        .map_err(io_err)?;
    stream
        .set_write_timeout(Some(FETCH_TIMEOUT))
        .map_err(io_err)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .map_err(io_err)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_BODY_BYTES)
        .read_to_end(&mut answer)
        .map_err(io_err)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the answer is not HTTP")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("the server answered `{status}`"));
    }
    Ok(body.to_string())
}

/// Scrape `addr` every `interval` and print a frame each time, `iterations` times (for ever when
/// `None`). While the endpoint is down, the frame says so and `top` keeps trying. Returns whether
/// the last scrape succeeded.
pub fn run(
    addr: &str,
    interval: Duration,
    iterations: Option<u64>,
    out: &mut dyn Write,
    terminal: bool,
) -> Result<bool, String> {
    let (host, path) = endpoint(addr)?;
    let source = format!("http://{host}{path}");
    let mut prev: Option<Scrape> = None;
    let mut done = 0;
    loop {
        let started = Instant::now();
        let (lines, ok) = match fetch(&host, &path).and_then(|body| parse(&body)) {
            Ok(cur) => {
                let lines = render(&source, prev.as_ref(), &cur, terminal);
                prev = Some(cur);
                (lines, true)
            }
            Err(e) => (
                vec![format!(
                    "subpass top · cannot read {source}: {e}; retrying every {:.1} s",
                    interval.as_secs_f64()
                )],
                false,
            ),
        };
        let mut frame = String::new();
        if terminal {
            frame.push_str("\x1b[H\x1b[2J"); // home, clear: redraw in place
        } else if done > 0 {
            frame.push('\n');
        }
        for line in &lines {
            frame.push_str(line);
            frame.push('\n');
        }
        out.write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
        done += 1;
        if iterations.is_some_and(|n| done >= n) {
            return Ok(ok);
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two scrapes one second apart: `back` computed 0.9 s of the second on 1 replica, `front`
    /// 1.2 s on 2 replicas (60%), and 640 records went out.
    const FIRST: &str = r#"# HELP subpass_pipeline_info x
# TYPE subpass_pipeline_info gauge
subpass_pipeline_info{name="mlp",hash="00ff",version="1"} 1
subpass_uptime_seconds 10
subpass_records_in_total 6400
subpass_records_out_total 6390
subpass_records_rejected_total 10
subpass_stage_replicas{stage="source.parse"} 1
subpass_stage_replicas{stage="front"} 2
subpass_stage_replicas{stage="back"} 1
subpass_stage_busy_seconds_total{stage="source.parse"} 1
subpass_stage_busy_seconds_total{stage="front"} 5
subpass_stage_busy_seconds_total{stage="back"} 8
subpass_stage_chunks_total{stage="source.parse"} 100
subpass_stage_chunks_total{stage="front"} 100
subpass_stage_chunks_total{stage="back"} 100
subpass_stage_restarts_total{stage="back"} 0
subpass_stage_queue_depth{stage="front"} 0
subpass_stage_queue_capacity{stage="front"} 2
subpass_in_flight_chunks 3
subpass_in_flight_chunks_limit 14
subpass_chunk_latency_seconds_bucket{le="0.005"} 50
subpass_chunk_latency_seconds_bucket{le="0.01"} 100
subpass_chunk_latency_seconds_bucket{le="+Inf"} 100
"#;

    fn second() -> String {
        FIRST
            .replace("uptime_seconds 10", "uptime_seconds 11")
            .replace("in_total 6400", "in_total 7040")
            .replace("{stage=\"front\"} 5", "{stage=\"front\"} 6.2")
            .replace("{stage=\"back\"} 8", "{stage=\"back\"} 8.9")
            .replace("{stage=\"back\"} 0", "{stage=\"back\"} 1")
            .replace(
                "chunks_total{stage=\"back\"} 100",
                "chunks_total{stage=\"back\"} 110",
            )
            .replace("depth{stage=\"front\"} 0", "depth{stage=\"front\"} 2")
            .replace("le=\"0.01\"} 100", "le=\"0.01\"} 110")
            .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 120")
    }

    fn row<'a>(frame: &'a [String], stage: &str) -> &'a str {
        frame
            .iter()
            .find(|l| l.starts_with(&format!("{stage} ")))
            .unwrap_or_else(|| panic!("no row for {stage} in {frame:#?}"))
    }

    #[test]
    fn parses_labels_escapes_and_special_values() {
        let s = parse(
            "m{stage=\"a \\\"q\\\" \\\\ b\",x=\"1\"} 2.5 1700000000\nsubpass_stage_busy_seconds_total{stage=\"a \\\"q\\\" \\\\ b\"} 3\nsubpass_chunk_latency_seconds_bucket{le=\"+Inf\"} +Inf\n",
        )
        .unwrap();
        assert_eq!(s.stages[0].name, "a \"q\" \\ b");
        assert_eq!(s.stages[0].busy_s, 3.0);
        assert_eq!(s.latency, vec![(f64::INFINITY, f64::INFINITY)]);
        let e = parse("ok 1\nbroken{stage=\"x} 1\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }

    #[test]
    fn rates_come_from_the_difference_of_two_scrapes() {
        let (a, b) = (parse(FIRST).unwrap(), parse(&second()).unwrap());
        let frame = render("http://h/metrics", Some(&a), &b, false);
        assert!(frame[0].contains("pipeline mlp v1 (00ff)"), "{}", frame[0]);
        assert!(frame[1].contains("640 records/s"), "{}", frame[1]);
        assert!(
            frame[1].contains("7,040 in, 6,390 out, 10 rejected"),
            "{}",
            frame[1]
        );
        assert!(frame[2].contains("in flight: 3/14"), "{}", frame[2]);
        // Of the 20 chunks since the first scrape, none was under 5 ms, 10 under 10 ms.
        assert!(frame[2].contains("p50 ≤ 10 ms, p99 > 10 s"), "{}", frame[2]);
        let front = row(&frame, "front");
        assert!(
            front.contains(" 60.0% ") && front.contains(" 2/2 "),
            "{front}"
        );
        let back = row(&frame, "back");
        assert!(
            back.contains(" 90.0% ") && back.contains(" 10.0 "),
            "{back}"
        );
        assert!(back.ends_with("1  ◀ bottleneck"), "{back}");
        assert!(row(&frame, "source.parse").contains("  0.0% "));
        assert!(!front.contains("bottleneck"));
    }

    #[test]
    fn the_first_frame_has_rates_since_the_start_and_color_marks_the_bottleneck() {
        let a = parse(FIRST).unwrap();
        let frame = render("h", None, &a, true);
        assert!(frame[1].contains("640 records/s"), "{}", frame[1]);
        let marked: Vec<&String> = frame.iter().filter(|l| l.contains("bottleneck")).collect();
        assert_eq!(marked.len(), 1);
        // Busy since the start: 8 s of 10 on one replica.
        let back = marked[0];
        assert!(
            back.starts_with(&format!("{BOLD_REVERSE}back ")),
            "{back:?}"
        );
        assert!(back.contains(" 80.0% ") && back.contains(RESET), "{back:?}");
        assert!(row(&frame, "front").contains(" 25.0% "));
        // A scrape from a restarted process (uptime went down) is not a baseline.
        let restarted = render("h", Some(&parse(&second()).unwrap()), &a, false);
        assert!(restarted[1].contains("640 records/s"), "{}", restarted[1]);
    }

    #[test]
    fn an_idle_pipeline_has_no_bottleneck() {
        let a = parse(FIRST).unwrap();
        let mut b = a.clone();
        b.uptime_s += 1.0;
        let frame = render("h", Some(&a), &b, false);
        assert!(
            frame.iter().all(|l| !l.contains("bottleneck")),
            "{frame:#?}"
        );
        assert!(frame[2].contains("p50 –"), "{}", frame[2]);
    }

    #[test]
    fn endpoints_default_to_metrics_over_http() {
        assert_eq!(
            endpoint("127.0.0.1:9464").unwrap(),
            ("127.0.0.1:9464".into(), "/metrics".into())
        );
        assert_eq!(
            endpoint("http://h:1/m").unwrap(),
            ("h:1".into(), "/m".into())
        );
        assert!(endpoint("https://h:1").is_err());
        assert!(endpoint("http:///metrics").is_err());
    }
}
