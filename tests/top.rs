//! `subpass top ADDR` against a running pipeline's `/metrics`, and against one that is not (yet)
//! there.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{line_channel, run_with_metrics, stage_names, subpass, wait_with_timeout};

/// The frames of `top`'s output, each from its title line on.
fn frames(out: &str) -> Vec<Vec<&str>> {
    let mut frames: Vec<Vec<&str>> = Vec::new();
    for line in out.lines() {
        if line.starts_with("subpass top · ") {
            frames.push(Vec::new());
        }
        if let Some(frame) = frames.last_mut() {
            frame.push(line);
        }
    }
    frames
}

#[test]
fn top_shows_every_stage_of_a_running_pipeline() {
    let pipeline = "configs/mlp.yaml";
    let (mut run, addr, _stdout) = run_with_metrics(pipeline, "127.0.0.1:0");
    let mut stdin = run.stdin.take().unwrap();
    let record = format!("[{}]\n", vec!["0.25"; 784].join(","));
    stdin.write_all(record.repeat(500).as_bytes()).unwrap();
    stdin.flush().unwrap();

    let out = subpass()
        .args(["top", &addr, "--iterations", "2", "--interval", "0.3"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains('\x1b'),
        "no escape codes when stdout is not a terminal:\n{text}"
    );
    let frames = frames(&text);
    assert_eq!(frames.len(), 2, "{text}");
    for frame in &frames {
        assert!(frame[0].contains("pipeline mlp v1"), "{text}");
        let header = frame
            .iter()
            .position(|l| l.starts_with("STAGE"))
            .expect("a table");
        let rows: Vec<&str> = frame[header + 1..]
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(rows, stage_names(pipeline), "{text}");
    }
    drop(stdin);
    assert!(wait_with_timeout(&mut run, Duration::from_secs(60)).success());
}

#[test]
fn top_says_when_the_endpoint_is_down_and_keeps_trying_until_it_is_up() {
    // A port nobody listens on, for now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut top = subpass()
        .args(["top", &addr, "--iterations", "300", "--interval", "0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = line_channel(top.stdout.take().unwrap());
    let first = lines.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        first.contains(&format!("cannot read http://{addr}/metrics")) && first.contains("retrying"),
        "{first}"
    );
    // Now bring the pipeline up on that port: `top` finds it without being restarted.
    let (mut run, _, _stdout) = run_with_metrics("configs/digits-mlp.yaml", &addr);
    let shown = (|| loop {
        let line = lines.recv_timeout(Duration::from_secs(60)).ok()?;
        if line.starts_with("subpass top · ") && line.contains("pipeline digits-mlp v1") {
            return Some(line);
        }
    })();
    assert!(
        shown.is_some(),
        "top never showed the pipeline once it was up"
    );
    let _ = top.kill();
    let _ = top.wait();
    drop(run.stdin.take());
    assert!(wait_with_timeout(&mut run, Duration::from_secs(60)).success());
}

#[test]
fn top_exits_1_when_its_last_try_failed() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = subpass()
        .args(["top", &addr, "--iterations", "2", "--interval", "0.1"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(text.matches("cannot read").count(), 2, "{text}");
}
