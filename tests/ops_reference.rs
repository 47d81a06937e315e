//! Every op against the independent numpy reference in tests/fixtures/ops (made by
//! tools/gen_op_fixtures.py): each case is a one- or few-layer pipeline file, its weights, an
//! input batch and the expected output, computed in float64 by plainly written numpy. Both
//! kernels of every op are checked: the fast ones (whichever this CPU runs, or the portable ones
//! under `SUBPASS_KERNELS=portable`) and the reference ones `verify` relies on.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use safetensors::SafeTensors;
use subpass::config::PipelineConfig;
use subpass::graph::Graph;
use subpass::ops::KernelKind;

fn tensor(st: &SafeTensors, name: &str) -> ArrayD<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture lacks `{name}`"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let values: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    ArrayD::from_shape_vec(IxDyn(t.shape()), values).unwrap()
}

/// Runs one case on `kernels`; returns the worst error relative to max(|expected|, 1).
fn run_case(dir: &Path, kernels: KernelKind) -> f64 {
    let config = PipelineConfig::load(&dir.join("pipeline.yaml"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let graph =
        Graph::build_with(&config, kernels).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let bytes = std::fs::read(dir.join("io.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (input, expected) = (tensor(&st, "input"), tensor(&st, "expected"));
    let outputs = graph.forward(input, None);
    assert_eq!(outputs.len(), 1, "{}: one output expected", dir.display());
    let got = &outputs[0];
    assert_eq!(
        got.shape(),
        expected.shape(),
        "{}: output shape",
        dir.display()
    );
    got.iter()
        .zip(expected.iter())
        .map(|(a, b)| (*a as f64 - *b as f64).abs() / (b.abs() as f64).max(1.0))
        .fold(0.0, f64::max)
}

#[test]
fn every_op_matches_the_numpy_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ops");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 35,
        "expected the full fixture set, found {} cases",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        for kernels in [KernelKind::Fast, KernelKind::Reference] {
            let err = run_case(case, kernels);
            if err > 1e-5 {
                failures.push(format!(
                    "{} ({kernels:?} kernels): worst error {err:.2e}",
                    case.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "cases beyond 1e-5:\n{}",
        failures.join("\n")
    );
}

#[test]
fn unused_tensors_are_listed_not_fatal() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ops/extra_tensor");
    let plan = subpass::graph::Plan::load(&dir.join("pipeline.yaml")).unwrap();
    assert_eq!(
        plan.graph.unused_tensors,
        vec!["fc.num_batches_tracked".to_string()]
    );
}

/// The README's op table is the registry's: names, inputs, attributes with their defaults, and
/// tensors. Adding an op without documenting it, or changing a default, fails here.
#[test]
fn readme_op_table_is_the_registry() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let table = subpass::ops::markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's op table differs from the registry; replace it with:\n\n{table}"
    );
}
