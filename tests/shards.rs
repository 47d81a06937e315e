//! `shards: k` splits a layer into k sub-passes over disjoint output units (filters) that read
//! the same tensors, cut: the sharded graph must compute exactly what the unsplit layer does,
//! on the fast kernels and against the reference kernels, and export the unsplit weights.

mod common;

use ndarray::{ArrayD, IxDyn};
use subpass::config::PipelineConfig;
use subpass::graph::Graph;
use subpass::ops::{KernelKind, Tensor};
use subpass::weights::seeded_stream;

fn graph(text: &str, kernels: KernelKind) -> Graph {
    let config = PipelineConfig::parse(text, &common::root()).unwrap_or_else(|e| panic!("{e}"));
    Graph::build_with(&config, kernels).unwrap_or_else(|e| panic!("{e}"))
}

fn input(shape: &[usize], records: usize) -> Tensor {
    let mut next = seeded_stream(3, "shard-input");
    let mut dims = vec![records];
    dims.extend_from_slice(shape);
    let n = dims.iter().product();
    ArrayD::from_shape_vec(IxDyn(&dims), (0..n).map(|_| next()).collect()).unwrap()
}

/// Largest difference relative to the largest magnitude of `want`.
fn normwise(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.shape(), want.shape());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale
}

const MLP: &str = "
input: {shape: [96]}
init: {seed: 5}
layers:
  - {name: fc1, op: dense, units: 100, activation: relu SHARDS1}
  - {name: fc2, op: dense, units: 37 SHARDS2}
";

const CNN: &str = "
input: {shape: [3, 13, 11]}
init: {seed: 5}
layers:
  - {name: c1, op: conv2d, filters: 10, kernel: 3, padding: 1, activation: relu SHARDS1}
  - {name: c2, op: conv2d, filters: 7, kernel: 3, stride: 2 SHARDS2}
  - {name: flat, op: flatten}
";

fn with(template: &str, s1: usize, s2: usize) -> String {
    let shards = |k: usize| {
        if k == 1 {
            String::new()
        } else {
            format!(", shards: {k}")
        }
    };
    template
        .replace(" SHARDS1", &shards(s1))
        .replace(" SHARDS2", &shards(s2))
}

fn check_equal_to_unsplit(template: &str, shape: &[usize]) {
    let records = 5;
    let x = input(shape, records);
    let whole_fast = graph(&with(template, 1, 1), KernelKind::Fast).forward(x.clone(), None);
    let whole_ref = graph(&with(template, 1, 1), KernelKind::Reference).forward(x.clone(), None);
    // Even and uneven splits, one layer or both, up to a shard of one unit.
    for (s1, s2) in [(2, 1), (1, 3), (3, 2), (4, 7)] {
        let text = with(template, s1, s2);
        let sharded = graph(&text, KernelKind::Fast).forward(x.clone(), None);
        let fast = normwise(&sharded[0], &whole_fast[0]);
        let reference = normwise(&sharded[0], &whole_ref[0]);
        // The same products, term by term, in the same order: equal to rounding at most.
        assert!(
            fast <= 1e-6,
            "shards {s1}/{s2}: {fast} from the unsplit fast graph"
        );
        assert!(
            reference <= 1e-5,
            "shards {s1}/{s2}: {reference} from the unsplit reference"
        );
        let sharded_ref = graph(&text, KernelKind::Reference).forward(x.clone(), None);
        assert!(normwise(&sharded_ref[0], &whole_ref[0]) <= 1e-6);
    }
}

#[test]
fn dense_shards_equal_the_unsplit_layer() {
    check_equal_to_unsplit(MLP, &[96]);
}

#[test]
fn conv2d_shards_equal_the_unsplit_layer() {
    check_equal_to_unsplit(CNN, &[3, 13, 11]);
}

#[test]
fn a_sharded_pipeline_exports_the_unsplit_weights() {
    let dir = common::tempdir();
    let mut files = Vec::new();
    for (i, text) in [with(MLP, 1, 1), with(MLP, 3, 2)].iter().enumerate() {
        let yaml = dir.path().join(format!("p{i}.yaml"));
        std::fs::write(&yaml, text).unwrap();
        let out = dir.path().join(format!("w{i}.safetensors"));
        let status = common::subpass()
            .args(["export", yaml.to_str().unwrap(), out.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        files.push(std::fs::read(out).unwrap());
    }
    assert!(files[0] == files[1], "the exported files differ");
}

#[test]
fn shards_in_stages_of_their_own_run_concurrently_and_verify() {
    let dir = common::tempdir();
    let yaml = dir.path().join("sharded.yaml");
    let text = with(MLP, 2, 1)
        + "stages:
  - {name: left, layers: [fc1.shard0]}
  - {name: right, layers: [fc1.shard1]}
  - {name: head, layers: [fc1, fc2]}
batch: {size: 8}
";
    std::fs::write(&yaml, text).unwrap();
    let out = common::subpass()
        .args(["validate", yaml.to_str().unwrap()])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("fed by left + right (joins)"), "{shown}");
    common::assert_verifies(&[yaml.to_str().unwrap(), "--records", "64"]);
}

#[test]
fn layers_that_cannot_be_sharded_are_located_errors() {
    let cases = [
        (
            "  - {name: act, op: relu, shards: 2}\n",
            "layers[1].shards",
            "cannot be sharded",
        ),
        (
            "  - {name: small, op: dense, units: 3, shards: 4}\n",
            "layers[1].shards",
            "cannot split 3 units into 4 shards",
        ),
        (
            "  - {name: c, op: dense, units: 8, shards: 0}\n",
            "layers[1].shards",
            "at least 1",
        ),
    ];
    for (layer, path, message) in cases {
        let text = format!(
            "input: {{shape: [4]}}\ninit: {{seed: 1}}\nlayers:\n  - {{name: fc, op: dense, units: 4}}\n{layer}"
        );
        let err = PipelineConfig::parse(&text, &common::root())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(path) && err.contains(message),
            "{layer}: {err}"
        );
    }
}

/// The top-level `shards:` section (what `plan --objective latency` writes, and the way to split
/// layers a `repeat` block makes) splits a layer exactly as `shards: k` on the layer does.
#[test]
fn the_shards_section_splits_as_the_layer_key_does() {
    let x = input(&[3, 13, 11], 4);
    let on_layer = graph(&with(CNN, 3, 2), KernelKind::Fast);
    let section = format!("{}shards: {{c1: 3, c2: 2}}\n", with(CNN, 1, 1));
    let by_name = graph(&section, KernelKind::Fast);
    let names = |g: &Graph| g.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&by_name), names(&on_layer));
    let (a, b) = (by_name.forward(x.clone(), None), on_layer.forward(x, None));
    assert_eq!(normwise(&a[0], &b[0]), 0.0);
}

#[test]
fn the_shards_section_names_its_errors() {
    let cases = [
        (
            "shards: {c3: 2}",
            "shards.c3",
            "no layer is named `c3` (did you mean `c1`?)",
        ),
        ("shards: {flat: 2}", "shards.flat", "cannot be sharded"),
        ("shards: {c1: 0}", "shards.c1", "at least 1"),
        (
            "shards: [c1]",
            "shards",
            "expected a mapping from layer names to shard counts",
        ),
        (
            "shards: {c1.shard0: 2}",
            "shards.c1.shard0",
            "is a shard or is split already",
        ),
    ];
    for (section, path, message) in cases {
        // The last case needs c1 split on the layer already.
        let shards = if section.contains("shard0") { 2 } else { 1 };
        let text = format!("{}{section}\n", with(CNN, shards, 1));
        let err = PipelineConfig::parse(&text, &common::root())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(path) && err.contains(message),
            "{section}: {err}"
        );
    }
}
