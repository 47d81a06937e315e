//! Helpers for tests that drive the real binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn subpass() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_subpass"));
    c.current_dir(root()).env("RUST_LOG", "warn");
    c
}

/// Wait for a child with a deadline; kills it and panics if it hangs.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("subpass did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of a child's stdout, delivered through a channel so a test can wait with a timeout.
pub fn line_channel(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// One digits test record as a JSON line.
pub fn digits_line() -> String {
    let text = std::fs::read_to_string(root().join("examples/digits-test.jsonl")).unwrap();
    text.lines().next().unwrap().to_string()
}

pub fn spawn_piped(args: &[&str]) -> Child {
    subpass()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `subpass verify ARGS…` must pass: the streaming pipeline matches the monolithic pass.
pub fn assert_verifies(args: &[&str]) {
    let out = subpass().arg("verify").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "verify {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether this machine has what subpass reads its peak RSS from (VmHWM in /proc/self/status).
/// Without it, prints `SKIPPED: <test>: needs /proc` to the real stderr (libtest captures
/// `eprintln!`, not writes to the handle), so a test that returns early is seen to skip.
pub fn proc_available(test: &str) -> bool {
    let present = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.contains("VmHWM:"));
    if !present {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {test}: needs /proc (peak RSS is read from /proc/self/status)"
        );
    }
    present
}

/// `subpass run PIPELINE --metrics ADDR`, its stdin left open for the caller. Waits for the line
/// on stderr that says where the metrics are (never a sleep), then keeps draining stderr. Returns
/// the child, the address it listens on, and its stdout's lines.
pub fn run_with_metrics(pipeline: &str, addr: &str) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = subpass()
        .args(["run", pipeline, "--metrics", addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = line_channel(child.stderr.take().unwrap());
    let stdout = line_channel(child.stdout.take().unwrap());
    let addr = loop {
        let line = stderr
            .recv_timeout(Duration::from_secs(60))
            .expect("the readiness line on stderr");
        if let Some(rest) = line.strip_prefix("metrics: listening on http://") {
            break rest.strip_suffix("/metrics").unwrap().to_string();
        }
    };
    std::thread::spawn(move || while stderr.recv().is_ok() {});
    (child, addr, stdout)
}

/// The names of a pipeline's stages as the statistics and `/metrics` list them: the parser
/// (`source.parse`) first, then the plan's stages.
pub fn stage_names(pipeline: &str) -> Vec<String> {
    let plan = subpass::graph::Plan::load(&root().join(pipeline)).unwrap();
    let mut names = vec!["source.parse".to_string()];
    names.extend(plan.stages.iter().map(|s| s.name.clone()));
    names
}

/// The in-flight budget as `subpass validate` prints it: "…, N chunks at most".
pub fn validate_budget(pipeline: &str) -> usize {
    let out = subpass().args(["validate", pipeline]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let before = text
        .split(" chunks at most")
        .next()
        .filter(|b| b.len() < text.len())
        .unwrap_or_else(|| panic!("no budget in:\n{text}"));
    before.rsplit(' ').next().unwrap().parse().unwrap()
}
