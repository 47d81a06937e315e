//! Hot reload: SIGHUP (or `--watch`) loads the pipeline file again while records stream; chunks
//! formed after it go to the new version, the ones in flight finish on the old one, output stays
//! in input order, nothing is lost or repeated; a broken file leaves the old version running.
#![cfg(unix)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::{line_channel, subpass, tempdir};

/// A small model whose outputs depend on its seed, so each line says which version served it.
fn pipeline(seed: u64) -> String {
    format!(
        "name: reloadable\ninput: {{shape: [8]}}\ninit: {{seed: {seed}}}\nlayers:\n  - {{name: fc1, op: dense, units: 16, activation: relu}}\n  - {{name: out, op: dense, units: 3}}\nbatch: {{size: 32, max_delay_ms: 1}}\n"
    )
}

fn record(i: usize) -> String {
    let v: Vec<String> = (0..8)
        .map(|j| format!("{:.3}", ((i * 7 + j * 13) % 97) as f32 / 97.0 - 0.5))
        .collect();
    format!("[{}]\n", v.join(","))
}

/// The output lines `subpass run` writes for `records` through a pipeline of this seed.
fn expected(dir: &Path, seed: u64, records: usize) -> Vec<String> {
    let config = dir.join(format!("seed{seed}.yaml"));
    std::fs::write(&config, pipeline(seed)).unwrap();
    let input: String = (0..records).map(record).collect();
    let input_path = dir.join("all.jsonl");
    std::fs::write(&input_path, input).unwrap();
    let out = subpass()
        .args([
            "run",
            config.to_str().unwrap(),
            "--input",
            input_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn hangup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Wait for a stderr line containing `what`; the log is the readiness signal, never a sleep.
fn wait_for(log: &Receiver<String>, what: &str, seen: &mut Vec<String>) -> String {
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no `{what}` in the log; saw:\n{}", seen.join("\n")));
        seen.push(line.clone());
        if line.contains(what) {
            return line;
        }
    }
}

fn spawn(config: &Path, extra: &[&str]) -> std::process::Child {
    subpass()
        .args(["run", config.to_str().unwrap()])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sighup_switches_versions_between_records_in_order() {
    let dir = tempdir();
    let (n1, n2) = (100, 100);
    let v1 = expected(dir.path(), 1, n1 + n2);
    let v2 = expected(dir.path(), 2, n1 + n2);
    assert_ne!(v1[0], v2[0], "the two versions must be told apart");

    let config = dir.path().join("live.yaml");
    std::fs::write(&config, pipeline(1)).unwrap();
    let mut child = spawn(&config, &[]);
    let out = line_channel(child.stdout.take().unwrap());
    let log = line_channel(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = Vec::new();
    let mut got = Vec::new();

    stdin
        .write_all((0..n1).map(record).collect::<String>().as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    while got.len() < n1 {
        got.push(out.recv_timeout(Duration::from_secs(60)).unwrap());
    }
    // A broken file is refused and version 1 goes on.
    std::fs::write(&config, "layers: [oops").unwrap();
    hangup(child.id());
    wait_for(&log, "reload refused", &mut seen);
    // A good one takes over for the records that follow.
    std::fs::write(&config, pipeline(2)).unwrap();
    hangup(child.id());
    wait_for(&log, "pipeline reloaded", &mut seen);
    stdin
        .write_all((n1..n1 + n2).map(record).collect::<String>().as_bytes())
        .unwrap();
    drop(stdin);
    let status = common::wait_with_timeout(&mut child, Duration::from_secs(60));
    got.extend(out.iter());
    assert!(status.success());
    assert_eq!(got.len(), n1 + n2, "a record was lost or repeated");
    assert_eq!(
        got[..n1],
        v1[..n1],
        "the records before the reload are version 1's"
    );
    assert_eq!(
        got[n1..],
        v2[n1..],
        "the records after the reload are version 2's"
    );
    let rest: Vec<String> = log.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("1 loaded, 1 refused")),
        "the summary counts reloads: {rest:?}"
    );
}

/// Ten reloads while records stream without pause: every record once, in order, each the output
/// of the version the log says served its line.
#[test]
fn ten_reloads_under_load_lose_nothing() {
    let dir = tempdir();
    let config = dir.path().join("live.yaml");
    std::fs::write(&config, pipeline(1)).unwrap();
    let mut child = spawn(&config, &[]);
    let out = line_channel(child.stdout.take().unwrap());
    let log = line_channel(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    // The writer streams until the reloads are done, then ends the input.
    let (stop_tx, stop) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let mut i = 0;
        while stop.try_recv().is_err() {
            let block: String = (i..i + 500).map(record).collect();
            stdin.write_all(block.as_bytes()).unwrap();
            i += 500;
        }
        i
    });
    let mut seen = Vec::new();
    // Version 1 has loaded the file once its first output is out: only then may it change.
    let first = out.recv_timeout(Duration::from_secs(60)).unwrap();
    // Version k (from 1) has seed 1 for odd k, 2 for even k.
    for k in 2..=11u64 {
        std::fs::write(&config, pipeline(if k % 2 == 0 { 2 } else { 1 })).unwrap();
        hangup(child.id());
        wait_for(&log, "pipeline reloaded", &mut seen);
    }
    stop_tx.send(()).unwrap();
    let n = writer.join().unwrap();
    let status = common::wait_with_timeout(&mut child, Duration::from_secs(120));
    assert!(status.success());
    seen.extend(log.iter());
    let got: Vec<String> = std::iter::once(first).chain(out.iter()).collect();
    assert_eq!(got.len(), n, "a record was lost or repeated");
    let versions = [expected(dir.path(), 1, n), expected(dir.path(), 2, n)];
    // Where each version took over, from the log: "... version K from line L".
    let mut starts = vec![(1u64, 1usize)];
    for l in &seen {
        if let Some(i) = l.find("from line ") {
            let digits =
                |t: &str| -> String { t.chars().take_while(char::is_ascii_digit).collect() };
            let line: usize = digits(&l[i + 10..]).parse().unwrap();
            let v: u64 = digits(l[..i].rsplit("version ").next().unwrap())
                .parse()
                .unwrap();
            starts.push((v, line));
        }
    }
    assert_eq!(starts.len(), 11, "{seen:?}");
    for (i, line) in got.iter().enumerate() {
        let number = i + 1;
        let version = starts
            .iter()
            .rev()
            .find(|(_, from)| *from <= number)
            .unwrap()
            .0;
        let seed = if version % 2 == 0 { 2 } else { 1 };
        assert_eq!(
            line,
            &versions[seed - 1][i],
            "line {number} (version {version})"
        );
    }
    eprintln!("{n} records, 10 reloads: every record once, in order");
}

#[test]
fn watch_reloads_when_the_file_changes() {
    let dir = tempdir();
    let config = dir.path().join("live.yaml");
    std::fs::write(&config, pipeline(1)).unwrap();
    let mut child = spawn(&config, &["--watch"]);
    let log = line_channel(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    // Started once the first record is answered.
    let out = line_channel(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(record(0).as_bytes()).unwrap();
    stdin.flush().unwrap();
    out.recv_timeout(Duration::from_secs(60)).unwrap();
    std::fs::write(&config, pipeline(2)).unwrap();
    wait_for(&log, "pipeline reloaded", &mut seen);
    drop(stdin);
    assert!(common::wait_with_timeout(&mut child, Duration::from_secs(60)).success());
}
