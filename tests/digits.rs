//! The shipped models on the real test split: accuracy, and agreement with the training
//! script's independent numpy forward pass (tests/fixtures/digits, from tools/train_digits.py).

mod common;

use common::*;

fn check(model: &str, min_accuracy: f64) {
    let dir = tempdir();
    let stats = dir.path().join("stats.json");
    let out = subpass()
        .args([
            "run",
            &format!("configs/digits-{model}.yaml"),
            "--input",
            "examples/digits-test.jsonl",
            "--label",
            "label",
            "--stats",
        ])
        .arg(&stats)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected_text = std::fs::read_to_string(
        root().join(format!("tests/fixtures/digits/{model}-test-expected.jsonl")),
    )
    .unwrap();
    let expected: Vec<serde_json::Value> = expected_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), expected.len());
    let mut correct = 0;
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g["id"], e["id"], "records in input order");
        assert_eq!(g["label"], e["label"], "label passed through");
        let y: Vec<f64> = g["y"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let w: Vec<f64> = e["y"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = y
            .iter()
            .zip(&w)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-5 * scale.max(1.0),
            "id {}: logits differ by {err} (scale {scale})",
            e["id"]
        );
        assert_eq!(g["argmax"], e["argmax"], "id {}", e["id"]);
        correct += usize::from(g["argmax"] == g["label"]);
    }
    let accuracy = correct as f64 / got.len() as f64;
    assert!(accuracy >= min_accuracy, "{model}: accuracy {accuracy}");
    // The run's own tally (`--label`) agrees with the count made here, in --stats and on stderr.
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains(&format!(
            "accuracy: {correct} of {} records ({:.2}%): argmax against `label`",
            got.len(),
            100.0 * accuracy
        )),
        "{summary}"
    );
    let s = read_json(&stats);
    assert_eq!(s["accuracy"]["correct"].as_u64().unwrap() as usize, correct);
    assert_eq!(
        s["accuracy"]["labelled"].as_u64().unwrap() as usize,
        got.len()
    );
}

#[test]
fn shipped_cnn_classifies_the_test_split_and_matches_numpy() {
    check("cnn", 0.95);
}

#[test]
fn shipped_mlp_classifies_the_test_split_and_matches_numpy() {
    check("mlp", 0.95);
}

#[test]
fn shipped_models_verify() {
    for model in ["cnn", "mlp"] {
        assert_verifies(&[
            &format!("configs/digits-{model}.yaml"),
            "--input",
            "examples/digits-test.jsonl",
        ]);
    }
}

/// Training left subnormal weights (|w| < 1.2e-38) on inputs that never fire; the fast kernels
/// read them as zero, since every product with one takes a microcode assist on Intel cores (the
/// MLP ran 4× slower), and `validate` says which layers and how many. The counts are numpy's:
/// `((w != 0) & (abs(w) < np.finfo(np.float32).tiny)).sum()` on each tensor of the file. That
/// the outputs still match numpy's forward pass on the file's values is the tests above.
#[test]
fn validate_names_the_subnormal_weights_the_fast_kernels_read_as_zero() {
    for (model, counts) in [
        ("mlp", &["  fc1: 7"][..]),
        ("cnn", &["  hidden: 90", "  logits: 8"][..]),
    ] {
        let out = subpass()
            .args(["validate", &format!("configs/digits-{model}.yaml")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        let listed = text
            .split_once("subnormal parameters")
            .unwrap_or_else(|| panic!("{model}: no subnormal list in\n{text}"))
            .1;
        let lines: Vec<&str> = listed
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect();
        assert_eq!(lines, counts, "{model}");
    }
}

#[test]
fn a_label_the_pipeline_does_not_pass_through_is_refused_before_reading() {
    // stdin stays open: a run that started reading would wait on it.
    let mut child = spawn_piped(&["run", "configs/digits-mlp.yaml", "--label", "id"]);
    let status = wait_with_timeout(&mut child, std::time::Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("--label id needs `output: {argmax: true, passthrough: [id]}`"),
        "{stderr}"
    );
}

/// digits-cnn with each tower's convolution in a stage before its pool's: the convolution still
/// folds into the pool (validate lists it), its input crosses stages under its name, and the
/// pipeline computes what the monolithic reference pass does.
#[test]
fn a_convolution_folds_into_its_pool_across_stages() {
    let pipeline = "tests/pipelines/digits-cnn-cut-at-pools.yaml";
    let out = subpass().args(["validate", pipeline]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("conv_a folded into pool_a"), "{text}");
    assert!(text.contains("conv_b folded into pool_b"), "{text}");
    assert_verifies(&[pipeline, "--input", "examples/digits-test.jsonl"]);
}

/// digits-cnn with the concat and the flatten in a stage before the dense layer's: both fold
/// into the dense layer (validate lists them, and the dense layer reads the second tower's
/// output itself), the first tower's output crosses stages under the flatten's name, and the
/// pipeline computes what the monolithic reference pass does.
#[test]
fn a_concat_and_flatten_fold_into_the_dense_layer_across_stages() {
    let pipeline = "tests/pipelines/digits-cnn-cut-at-dense.yaml";
    let out = subpass().args(["validate", pipeline]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("merge folded into hidden"), "{text}");
    assert!(text.contains("flat folded into hidden"), "{text}");
    assert!(
        text.contains("a flatten and the concat on channels before it into the dense layer"),
        "{text}"
    );
    assert!(text.contains("<- flat, pool_b"), "{text}");
    assert!(text.contains("fed by tower_b + join (joins)"), "{text}");
    assert_verifies(&[pipeline, "--input", "examples/digits-test.jsonl"]);
}
