//! `subpass bench --json`: the figures a user (and the peer race) reads, with their keys.

mod common;

use common::*;

/// `subpass bench ARGS --json`, which must succeed: its one JSON object.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = subpass()
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn bench_json_has_every_figure() {
    let r = bench_json(&["configs/digits-cnn.yaml", "--records", "3000", "--io"]);
    for key in [
        "monolithic_records_per_s",
        "pipeline_records_per_s",
        "io_records_per_s",
        "speedup",
        "gflops",
        "peak_gflops",
        "efficiency",
        "latency_p50_ms",
        "latency_p99_ms",
    ] {
        let v = r[key]
            .as_f64()
            .unwrap_or_else(|| panic!("`{key}` missing or not a number: {r}"));
        assert!(v > 0.0 && v.is_finite(), "`{key}` = {v}");
    }
    // Reads /proc: the peak RSS comes from /proc/self/status, and is 0 where there is none.
    if proc_available("bench_json_has_every_figure (peak_rss_bytes)") {
        let rss = r["peak_rss_bytes"].as_u64();
        assert!(rss.is_some_and(|b| b > 0), "`peak_rss_bytes` = {rss:?}");
    }
    assert!(r["latency_p99_ms"].as_f64() >= r["latency_p50_ms"].as_f64());
    let (gflops, peak) = (
        r["gflops"].as_f64().unwrap(),
        r["peak_gflops"].as_f64().unwrap(),
    );
    assert!((r["efficiency"].as_f64().unwrap() - gflops / peak).abs() < 1e-9);
    let speedup = r["pipeline_records_per_s"].as_f64().unwrap()
        / r["monolithic_records_per_s"].as_f64().unwrap();
    assert!((r["speedup"].as_f64().unwrap() - speedup).abs() < 1e-9 * speedup.max(1.0));
    let stages = r["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tower_a", "tower_b", "head"]);
    assert_eq!(stages[2]["replicas"], 2);
    assert!(stages.iter().all(|s| s["busy_pct"]
        .as_f64()
        .is_some_and(|b| (0.0..=100.5).contains(&b))));
    assert!(names.contains(&r["bottleneck"].as_str().unwrap()));
}

/// `--rounds N` alternates (a) and (b) N times: the figures reported are the medians of the
/// rounds it lists, so a user can read both the figure and its spread.
#[test]
fn bench_rounds_report_their_medians() {
    let r = bench_json(&[
        "configs/digits-mlp.yaml",
        "--records",
        "2000",
        "--rounds",
        "3",
    ]);
    let rounds = r["rounds"].as_array().expect("`rounds` is a list");
    assert_eq!(rounds.len(), 3, "{r}");
    for key in ["monolithic_records_per_s", "pipeline_records_per_s"] {
        let mut each: Vec<f64> = rounds.iter().map(|x| x[key].as_f64().unwrap()).collect();
        assert!(
            each.iter().all(|v| *v > 0.0 && v.is_finite()),
            "{key}: {each:?}"
        );
        each.sort_by(f64::total_cmp);
        assert_eq!(
            r[key].as_f64(),
            Some(each[1]),
            "{key} is not the median of {each:?}"
        );
    }

    // Zero rounds would measure nothing: refused, with the flag named.
    let out = subpass()
        .args(["bench", "configs/digits-mlp.yaml", "--rounds", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rounds"));
}
