//! The streaming executor end to end, through the real binary: graph subdivision, order,
//! backpressure, trickles, shutdown, failures and memory over long streams.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn skip_connections_across_stages_match_the_monolithic_pass() {
    let plan = subpass()
        .args(["validate", "tests/pipelines/skip.yaml"])
        .output()
        .unwrap();
    assert!(plan.status.success());
    let text = String::from_utf8_lossy(&plan.stdout);
    // The late stage joins the source (model input), `early` (two stages back) and `middle`.
    assert!(
        text.contains("fed by source + early + middle (joins)"),
        "{text}"
    );
    assert_verifies(&["tests/pipelines/skip.yaml", "--records", "203"]);
}

#[test]
fn concurrent_branches_join_and_a_replicated_stage_process_every_chunk() {
    let dir = tempdir();
    let stats = dir.path().join("stats.json");
    let out = subpass()
        .args([
            "run",
            "configs/digits-cnn.yaml",
            "--input",
            "examples/digits-test.jsonl",
            "--stats",
        ])
        .arg(&stats)
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 450);
    let input = std::fs::read_to_string(root().join("examples/digits-test.jsonl")).unwrap();
    let ids: Vec<serde_json::Value> = input
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].clone())
        .collect();
    let got: Vec<serde_json::Value> = lines.iter().map(|l| l["id"].clone()).collect();
    assert_eq!(got, ids, "output must keep input order");
    let stats = read_json(&stats);
    let stage = |name: &str| {
        stats["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    let chunks = stage("tower_a")["chunks"].as_u64().unwrap();
    assert!(chunks >= 450 / 32);
    assert_eq!(
        stage("tower_b")["chunks"],
        chunks,
        "both branches see every chunk"
    );
    assert_eq!(
        stage("head")["chunks"],
        chunks,
        "the join hands every chunk to the head once"
    );
    assert_eq!(stage("head")["replicas"], 2);
    assert_verifies(&[
        "configs/digits-cnn.yaml",
        "--input",
        "examples/digits-test.jsonl",
    ]);
}

/// The `id` of every output line, in output order.
fn output_ids(out: &str) -> Vec<u64> {
    out.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("no numeric id: {l}"))
        })
        .collect()
}

#[test]
fn unordered_output_emits_every_record_exactly_once() {
    let mut input = String::new();
    for i in 0..997 {
        input.push_str(&format!(
            "{{\"id\":{i},\"x\":[{}]}}\n",
            (0..8)
                .map(|j| ((i * 7 + j) % 13) as f32 / 13.0)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let mut child = spawn_piped(&["run", "tests/pipelines/unordered.yaml"]);
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let mut ids = output_ids(&String::from_utf8(out.stdout).unwrap());
    ids.sort();
    assert_eq!(ids, (0..997).collect::<Vec<u64>>());
}

#[test]
fn a_single_record_on_an_open_stdin_is_answered_before_eof() {
    let mut child = spawn_piped(&["run", "configs/digits-mlp.yaml"]);
    let mut stdin = child.stdin.take().unwrap();
    let lines = line_channel(child.stdout.take().unwrap());
    writeln!(stdin, "{}", digits_line()).unwrap();
    stdin.flush().unwrap();
    let got = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the record must be answered while stdin is still open");
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["y"].as_array().unwrap().len(), 10);
    // A second trickled record is answered too.
    writeln!(stdin, "{}", digits_line()).unwrap();
    stdin.flush().unwrap();
    lines
        .recv_timeout(Duration::from_secs(10))
        .expect("second record");
    drop(stdin);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(10)).success());
}

/// "records read ahead of output: at most N" from `validate`.
fn read_ahead_bound(pipeline: &str) -> u64 {
    let out = subpass().args(["validate", pipeline]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("records read ahead of output: at most "))
        .expect("validate prints the read-ahead bound");
    line["records read ahead of output: at most ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The digits record as `n` lines with the ids 0..n.
fn numbered_digits_lines(n: u64) -> Vec<String> {
    let mut record: serde_json::Value = serde_json::from_str(&digits_line()).unwrap();
    (0..n)
        .map(|id| {
            record["id"] = id.into();
            format!("{record}\n")
        })
        .collect()
}

/// Writes begun and writes completed on the child's stdin: a write begun and not completed is one
/// the process is not taking.
#[derive(Default)]
struct WriteProgress {
    begun: AtomicU64,
    done: AtomicU64,
}

#[test]
fn a_stalled_reader_of_stdout_stops_the_reading_of_stdin() {
    const RECORDS: u64 = 10_000;
    let pipeline = "configs/digits-mlp.yaml";
    let bound = read_ahead_bound(pipeline);
    // Pipe buffers and our 64 KiB read and write buffers hold lines the bound does not count:
    // the stdin pipe and read buffer (input lines), the stdout pipe and write buffer (output lines,
    // at least 100 bytes each).
    let lines = numbered_digits_lines(RECORDS);
    let shortest = lines.iter().map(String::len).min().unwrap() as u64;
    let pipe = 1u64 << 16;
    let slack = 2 * pipe / shortest + 2 + 2 * pipe / 100;
    assert!(
        RECORDS > 2 * (bound + slack),
        "the stream must be far longer than what subpass may hold"
    );

    let mut child = spawn_piped(&["run", pipeline]);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap(); // not read until the stall is seen
    let progress = Arc::new(WriteProgress::default());
    let p = progress.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for line in &lines {
            p.begun.fetch_add(1, Ordering::SeqCst);
            stdin.write_all(line.as_bytes())?;
            p.done.fetch_add(1, Ordering::SeqCst);
        }
        Ok(()) // stdin drops: EOF
    });

    // With stdout unread, the writer must end up inside a write that does not complete: a
    // stall, held for 1.5 s while subpass is alive and has taken at most its bound.
    let held = Duration::from_millis(1500);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (u64::MAX, Instant::now());
    let taken = loop {
        let done = progress.done.load(Ordering::SeqCst);
        if writer.is_finished() {
            panic!(
                "no stall: the writer finished ({:?}) after {done} of {RECORDS} records with stdout unread",
                writer.join().unwrap()
            );
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "subpass exited with its stdout unread"
        );
        assert!(
            Instant::now() < deadline,
            "stdin never stalled: {done} records taken"
        );
        if done != last {
            (last, since) = (done, Instant::now());
        } else if since.elapsed() >= held && progress.begun.load(Ordering::SeqCst) == done + 1 {
            break done;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("backpressure: {taken} records taken from stdin; bound {bound} + buffers {slack}");
    assert!(
        taken <= bound + slack,
        "{taken} records taken from stdin; bound {bound} + buffers {slack}"
    );

    // Reading again releases the stall: every record comes out, once, in order, and the run ends.
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    writer
        .join()
        .unwrap()
        .expect("every record is taken once stdout is read");
    assert!(status.success(), "exit status {status:?}");
    let ids = output_ids(&reader.join().unwrap().unwrap());
    assert_eq!(ids, (0..RECORDS).collect::<Vec<u64>>());
}

#[test]
fn sigterm_drains_in_flight_records_and_exits_zero() {
    let dir = tempdir();
    let stats = dir.path().join("stats.json");
    let mut child = subpass()
        .args(["run", "configs/digits-cnn.yaml", "--stats"])
        .arg(&stats)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let line = format!("{}\n", digits_line());
    std::thread::spawn(move || while stdin.write_all(line.as_bytes()).is_ok() {});
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (first_line_tx, first_line) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_line(&mut s).unwrap();
        let _ = first_line_tx.send(());
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    // A first output line means records are in flight, and the signal handlers are installed
    // (before the first record is read): the signal lands in a running pipeline.
    first_line
        .recv_timeout(Duration::from_secs(30))
        .expect("no output line within 30 s");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let out = reader.join().unwrap();
    assert!(out.ends_with('\n'), "the last line must be complete");
    let n = out
        .lines()
        .inspect(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("every line is complete JSON");
        })
        .count();
    assert!(n > 0);
    let s = read_json(&stats);
    let (rin, rout, rej) = (
        s["records_in"].as_u64().unwrap(),
        s["records_out"].as_u64().unwrap(),
        s["records_rejected"].as_u64().unwrap(),
    );
    assert_eq!(rin, rout + rej, "records in must equal out + rejected: {s}");
    assert_eq!(rout as usize, n);
}

#[test]
fn head_closing_stdout_ends_quietly() {
    let dir = tempdir();
    let input = dir.path().join("long.jsonl");
    let line = format!("{}\n", digits_line());
    std::fs::write(&input, line.repeat(50_000)).unwrap();
    let out = std::process::Command::new("bash")
        .current_dir(root())
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' run configs/digits-cnn.yaml --input '{}' | head -n 1",
            env!("CARGO_BIN_EXE_subpass"),
            input.display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "status {:?}: {stderr}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

/// `subpass run configs/digits-cnn.yaml` over the 450 digits records (15 chunks), with `FAILPOINTS`.
fn run_with_failpoints(failpoints: &str) -> std::process::Output {
    subpass()
        .env("FAILPOINTS", failpoints)
        .args([
            "run",
            "configs/digits-cnn.yaml",
            "--input",
            "examples/digits-test.jsonl",
        ])
        .output()
        .unwrap()
}

/// With `FAILPOINTS` set, the run must exit 1 and stderr must say `message`.
fn assert_run_fails_with(failpoints: &str, message: &str) {
    let out = run_with_failpoints(failpoints);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(message), "{stderr}");
}

/// A stage that fails on every record uses up its restart budget (tests/supervise.rs has the
/// rest of supervision).
#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_failing_stage_is_named_and_exits_one_promptly() {
    let start = Instant::now();
    assert_run_fails_with(
        "stage=return(head)",
        "stage `head` failed: more than 10 restarts within a minute",
    );
    assert_run_fails_with("stage=return(head)", "injected fault in chunk ");
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_fault_aimed_at_one_chunk_poisons_only_that_chunks_records() {
    let out = run_with_failpoints("stage=return(tower_b@5)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Error lines go to stderr here (no --errors), among the log lines.
    let poisoned: Vec<u64> = stderr
        .lines()
        .filter(|l| l.starts_with("{\"line\":"))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let error = v["error"].as_str().unwrap();
            assert!(
                error.starts_with("stage tower_b: injected fault in chunk 5 rows "),
                "{l}"
            );
            v["line"].as_u64().unwrap()
        })
        .collect();
    // Chunk 5 is one chunk of at most 32 records (fewer if a deadline cut it short), in order.
    assert!((1..=32).contains(&poisoned.len()), "{poisoned:?}");
    assert!(
        poisoned.windows(2).all(|w| w[1] == w[0] + 1),
        "{poisoned:?}"
    );
    let written = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(written + poisoned.len(), 450);
}

/// The shipped build has no fail points: `FAILPOINTS` changes nothing.
#[test]
#[cfg_attr(feature = "fail-points", ignore = "the default build only")]
fn the_default_build_has_no_fail_points() {
    let out = run_with_failpoints("stage=return(head)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 450);
}

/// Peak RSS of a run over `records` records of 784 values, streamed through stdin.
fn peak_rss(records: usize) -> u64 {
    let dir = tempdir();
    let stats = dir.path().join("stats.json");
    let mut child = subpass()
        .args(["run", "configs/mlp.yaml", "--stats"])
        .arg(&stats)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let x: Vec<String> = (0..784)
        .map(|i| format!("{:.4}", ((i * 37) % 101) as f32 / 101.0 - 0.5))
        .collect();
    let x = x.join(",");
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(1 << 20);
        for i in 0..records {
            writeln!(buf, "{{\"id\":{i},\"x\":[{x}]}}").unwrap();
            if buf.len() > 1 << 19 {
                stdin.write_all(&buf).unwrap();
                buf.clear();
            }
        }
        stdin.write_all(&buf).unwrap();
    });
    writer.join().unwrap();
    assert!(wait_with_timeout(&mut child, Duration::from_secs(300)).success());
    let s = read_json(&stats);
    assert_eq!(s["records_out"].as_u64().unwrap() as usize, records);
    s["peak_rss_bytes"].as_u64().unwrap()
}

/// Reads /proc: subpass takes its peak RSS from /proc/self/status. Skipped, loudly, without it.
#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "needs /proc (Linux)")]
fn peak_memory_does_not_grow_with_stream_length() {
    if !proc_available("peak_memory_does_not_grow_with_stream_length") {
        return;
    }
    let small = peak_rss(10_000);
    let large = peak_rss(100_000);
    eprintln!("peak RSS: {small} bytes for 10^4 records, {large} bytes for 10^5");
    assert!(small > 0);
    assert!(
        (large as f64) <= small as f64 * 1.15,
        "peak RSS grew from {small} bytes (10^4 records) to {large} bytes (10^5 records)"
    );
}

#[test]
fn trace_shows_every_stage_replica_and_chunk() {
    let dir = tempdir();
    let trace = dir.path().join("trace.json");
    let out = subpass()
        .args([
            "run",
            "configs/digits-cnn.yaml",
            "--input",
            "examples/digits-test.jsonl",
            "--trace",
        ])
        .arg(&trace)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let t = read_json(&trace);
    let events = t["traceEvents"].as_array().unwrap();
    let rows: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "M")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    for row in ["parse #0", "tower_a #0", "tower_b #0"] {
        assert!(rows.contains(&row), "no trace row {row}: {rows:?}");
    }
    // The head's two replicas share one queue; whichever is free takes the next chunk, so one
    // of them may do every chunk when it keeps up. Rows exist only for replicas that worked.
    assert!(
        rows.iter().any(|r| *r == "head #0" || *r == "head #1"),
        "no head row: {rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| ["parse #0", "tower_a #0", "tower_b #0", "head #0", "head #1"].contains(r)),
        "{rows:?}"
    );
    let spans: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    let chunks = 450usize.div_ceil(32);
    for stage in ["parse", "tower_a", "tower_b", "head"] {
        let n = spans.iter().filter(|e| e["name"] == stage).count();
        assert_eq!(n, chunks, "{stage}: one span per chunk");
    }
    assert!(spans
        .iter()
        .all(|e| e["dur"].as_f64().unwrap() >= 0.0 && e["ts"].as_f64().unwrap() >= 0.0));
}

#[test]
fn stats_interval_logs_while_the_stream_is_open() {
    let mut child = subpass()
        .env("RUST_LOG", "info")
        .args(["run", "configs/digits-mlp.yaml", "--stats-interval", "0.2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", digits_line()).unwrap();
    let lines = line_channel(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while Instant::now() < deadline {
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
            if l.contains("stats") && l.contains("records_in=1") {
                seen = true;
                break;
            }
        }
    }
    drop(stdin);
    assert!(wait_with_timeout(&mut child, Duration::from_secs(10)).success());
    assert!(seen, "no periodic stats line with records_in=1 before EOF");
}

/// `parse: true`: the stage's replicas parse the records in place of a parser thread. The
/// output is the parser thread's, line for line: the records' outputs in input order, an error
/// line for every bad line, the other tower fed the input by the parsing stage.
#[test]
fn a_stage_that_parses_writes_what_a_parser_thread_writes() {
    let dir = tempdir();
    let pipeline = |parse: bool| {
        let path = dir.path().join(format!("towers-{parse}.yaml"));
        let flag = if parse { ", parse: true" } else { "" };
        std::fs::write(
            &path,
            format!(
                "input: {{shape: [16]}}
init: {{seed: 3}}
layers:
  - {{name: a, op: dense, units: 8, activation: relu}}
  - {{name: b, op: dense, units: 8, inputs: [input]}}
  - {{name: join, op: concat, inputs: [a, b]}}
  - {{name: head, op: dense, units: 3}}
stages:
  - {{name: left, layers: [a], replicas: 2{flag}}}
  - {{name: right, layers: [b]}}
  - {{name: tail, layers: [join, head]}}
batch: {{size: 8, max_delay_ms: 60000}}
"
            ),
        )
        .unwrap();
        path
    };
    let mut input = String::new();
    for i in 0..403 {
        match i % 50 {
            7 => input.push_str("[1, 2, 3]\n"),
            19 => input.push_str("not json\n"),
            _ => {
                let values: Vec<String> = (0..16)
                    .map(|j| format!("{:.3}", ((i * 16 + j) % 97) as f32 / 97.0 - 0.5))
                    .collect();
                input.push_str(&format!("[{}]\n", values.join(",")));
            }
        }
    }
    let records = dir.path().join("records.jsonl");
    std::fs::write(&records, &input).unwrap();
    let run = |parse: bool| {
        let stats = dir.path().join(format!("stats-{parse}.json"));
        let errors = dir.path().join(format!("errors-{parse}.jsonl"));
        let out = subpass()
            .arg("run")
            .arg(pipeline(parse))
            .arg("--input")
            .arg(&records)
            .arg("--stats")
            .arg(&stats)
            .arg("--errors")
            .arg(&errors)
            .output()
            .unwrap();
        let errors = std::fs::read_to_string(&errors).unwrap();
        (out, errors, read_json(&stats))
    };
    let validated = subpass()
        .arg("validate")
        .arg(pipeline(true))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&validated.stdout);
    assert!(
        shown.contains("fed by source (its workers parse the records)"),
        "{shown}"
    );
    let (threaded, threaded_errors, _) = run(false);
    let (parsing, errors, stats) = run(true);
    assert!(parsing.status.success() && threaded.status.success());
    let text = String::from_utf8(parsing.stdout).unwrap();
    assert_eq!(text, String::from_utf8(threaded.stdout).unwrap());
    assert_eq!(text.lines().count(), 403 - 16);
    assert_eq!(errors, threaded_errors);
    assert_eq!(errors.lines().count(), 16, "{errors}");
    assert!(
        errors.lines().next().unwrap().starts_with("{\"line\":8,"),
        "{errors}"
    );
    // The parse is counted as the source's work, done by the stage's two replicas.
    let parse = stats["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "source.parse")
        .unwrap()
        .clone();
    assert_eq!(parse["replicas"], 2, "{stats}");
    assert_eq!(parse["chunks"], 51, "{stats}");
}
