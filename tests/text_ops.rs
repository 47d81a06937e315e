//! The text ops (embedding, attention, mean_pool, l2_normalize, and dense, layernorm, gelu and
//! add acting per token) on a tiny random BERT: 2 layers, hidden 32, 4 heads, 8 sequences of 1 to
//! 40 tokens packed in one chunk. Every step is checked against the plain numpy reference in
//! tests/fixtures/bert-tiny (made by tools/gen_bert_fixtures.py, itself cross-checked there
//! against Hugging Face's BertModel), on both the fast and the reference kernels.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use safetensors::SafeTensors;
use subpass::config::PipelineConfig;
use subpass::graph::Graph;
use subpass::ops::KernelKind;

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert-tiny")
}

fn f32s(st: &SafeTensors, name: &str) -> ArrayD<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture lacks `{name}`"));
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    ArrayD::from_shape_vec(IxDyn(t.shape()), v).unwrap()
}

fn i64s(st: &SafeTensors, name: &str) -> Vec<i64> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    t.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Worst difference relative to max(|expected|, 1).
fn worst(got: &ArrayD<f32>, want: &ArrayD<f32>) -> f64 {
    assert_eq!(got.shape(), want.shape());
    got.iter()
        .zip(want.iter())
        .map(|(a, b)| (*a as f64 - *b as f64).abs() / (b.abs() as f64).max(1.0))
        .fold(0.0, f64::max)
}

#[test]
fn every_step_of_a_tiny_bert_matches_numpy() {
    let dir = fixture_dir();
    let config = PipelineConfig::load(&dir.join("pipeline.yaml")).unwrap();
    let bytes = std::fs::read(dir.join("io.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<f32> = i64s(&st, "input_ids").iter().map(|i| *i as f32).collect();
    let seqs: Vec<usize> = i64s(&st, "offsets").iter().map(|o| *o as usize).collect();
    let names: Vec<String> = config
        .outputs
        .as_ref()
        .unwrap()
        .iter()
        .map(|o| o.value.clone())
        .collect();
    let mut failures = Vec::new();
    for kernels in [KernelKind::Fast, KernelKind::Reference] {
        let graph = Graph::build_with(&config, kernels).unwrap();
        let input = ArrayD::from_shape_vec(IxDyn(&[ids.len(), 1]), ids.clone()).unwrap();
        let outputs = graph.forward(input, Some(seqs.clone()));
        for (name, got) in names.iter().zip(&outputs) {
            let err = worst(got, &f32s(&st, name));
            if err > 2e-6 {
                failures.push(format!("{name} ({kernels:?}): {err:.2e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attention split by heads (`shards: k`), each shard its heads' rows of Q, K, V and columns of
/// the output projection, summed: every step still matches numpy's unsplit BERT.
#[test]
fn attention_sharded_by_heads_matches_numpy() {
    let dir = fixture_dir();
    let text = std::fs::read_to_string(dir.join("pipeline.yaml")).unwrap();
    let bytes = std::fs::read(dir.join("io.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<f32> = i64s(&st, "input_ids").iter().map(|i| *i as f32).collect();
    let seqs: Vec<usize> = i64s(&st, "offsets").iter().map(|o| *o as usize).collect();
    for shards in [2, 4] {
        let sharded = text.replace("heads: 4}", &format!("heads: 4, shards: {shards}}}"));
        assert_ne!(sharded, text);
        let config = PipelineConfig::parse(&sharded, &dir).unwrap();
        let names: Vec<String> = config
            .outputs
            .as_ref()
            .unwrap()
            .iter()
            .map(|o| o.value.clone())
            .collect();
        for kernels in [KernelKind::Fast, KernelKind::Reference] {
            let graph = Graph::build_with(&config, kernels).unwrap();
            assert!(graph
                .nodes
                .iter()
                .any(|n| n.name == "layer.1.attention.output.shard1"));
            let input = ArrayD::from_shape_vec(IxDyn(&[ids.len(), 1]), ids.clone()).unwrap();
            let outputs = graph.forward(input, Some(seqs.clone()));
            for (name, got) in names.iter().zip(&outputs) {
                let err = worst(got, &f32s(&st, name));
                assert!(
                    err <= 2e-6,
                    "{shards} shards, {name} ({kernels:?}): {err:.2e}"
                );
            }
        }
    }
    let uneven = text.replace("heads: 4}", "heads: 4, shards: 3}");
    let err = PipelineConfig::parse(&uneven, &dir)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shards") && err.contains("4 heads do not split evenly into 3"),
        "{err}"
    );
}

#[test]
fn l2_normalize_leaves_a_zero_row_zero() {
    let dir = fixture_dir();
    let text = "input: {shape: [32]}\nlayers:\n  - {name: n, op: l2_normalize}\n";
    let config = PipelineConfig::parse(text, &dir).unwrap();
    let bytes = std::fs::read(dir.join("io.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let want = f32s(&st, "normalize_output");
    assert!(want.rows_contain_zero(), "the fixture has a zero row");
    for kernels in [KernelKind::Fast, KernelKind::Reference] {
        let graph = Graph::build_with(&config, kernels).unwrap();
        let got = graph.forward(f32s(&st, "normalize_input"), None);
        assert!(worst(&got[0], &want) <= 1e-6, "{kernels:?}");
    }
}

trait ZeroRow {
    fn rows_contain_zero(&self) -> bool;
}

impl ZeroRow for ArrayD<f32> {
    fn rows_contain_zero(&self) -> bool {
        let width = self.shape()[1];
        self.as_slice()
            .unwrap()
            .chunks_exact(width)
            .any(|r| r.iter().all(|v| *v == 0.0))
    }
}

/// A repeated block with `{i}` and `{input}` expands to the layers written out by hand.
#[test]
fn a_repeated_block_expands_in_order_with_its_inputs() {
    let config = PipelineConfig::load(&fixture_dir().join("pipeline.yaml")).unwrap();
    let names: Vec<&str> = config.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names.len(), 2 + 2 * 7 + 2);
    assert_eq!(names[2], "layer.0.attention.output");
    assert_eq!(names[9], "layer.1.attention.output");
    let residual = |i: usize| &config.layers[3 + 7 * i].inputs;
    assert_eq!(
        residual(0)[1].value,
        "embeddings",
        "block 0 reads the layer before it"
    );
    assert_eq!(
        residual(1)[1].value,
        "layer.0",
        "block 1 reads block 0's last layer"
    );
    assert_eq!(config.layers[9].params, "encoder.layer.1.attention");
    let stages = config.stages.as_ref().unwrap();
    assert_eq!(
        stages[1].layers.len(),
        14,
        "a range takes every layer between its ends"
    );
}

/// Mistakes in the text-specific parts of a pipeline file are located errors, all reported in
/// one pass.
#[test]
fn text_pipeline_mistakes_are_located() {
    let dir = fixture_dir();
    let cases: &[(&str, &str, &str)] = &[
        (
            "input: {shape: [4], text: {tokenizer: t.json}}\nlayers:\n  - {name: a, op: identity}\n",
            "input.shape",
            "not both",
        ),
        (
            "input: {shape: [4]}\nlayers:\n  - {name: a, op: identity}\nbatch: {max_tokens: 100}\n",
            "batch.max_tokens",
            "records are numbers",
        ),
        (
            "input: {text: {tokenizer: t.json, max_tokens: 300}}\nlayers:\n  - {name: a, op: identity}\nbatch: {max_tokens: 100}\n",
            "batch.max_tokens",
            "cannot hold a record",
        ),
        (
            "input: {shape: [4]}\nlayers:\n  - repeat: 0\n    layers: [{name: a, op: identity}]\n",
            "layers[0].repeat",
            "",
        ),
        (
            "input: {shape: [4]}\nlayers:\n  - repeat: 2\n    layers: [{name: \"a{i}\", op: dense, unitz: 3}]\n",
            "layers[0].layers[0].unitz",
            "did you mean `units`",
        ),
        (
            "input: {shape: [4]}\nlayers:\n  - {name: a, op: identity}\n  - {name: b, op: identity}\nstages:\n  - {name: s, layers: [b..a]}\n",
            "stages[0].layers[0]",
            "runs backwards",
        ),
        (
            "input: {shape: [4]}\nlayers:\n  - {name: a, op: identity}\nstages:\n  - {name: s, layers: [a..zz]}\n",
            "stages[0].layers[0]",
            "unknown layer `zz`",
        ),
    ];
    for (text, path, words) in cases {
        let errors = PipelineConfig::parse(text, &dir).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.path == *path && e.message.contains(words) && e.location.is_some()),
            "{path} / {words:?}: {errors:#?}"
        );
    }
    // Token rows where an op needs records, and records where attention needs tokens: the
    // graph check names the layer and the key.
    let text = "input: {text: {tokenizer: t.json}}\nlayers:\n  - {name: e, op: embedding, vocab: 10, hidden: 8}\n  - {name: f, op: flatten}\n";
    let config = PipelineConfig::parse(text, &dir).unwrap();
    let errors = Graph::build_with(&config, KernelKind::Fast).unwrap_err().0;
    assert!(
        errors
            .iter()
            .any(|e| e.path == "layers[1].inputs" && e.message.contains("mean_pool")),
        "{errors:#?}"
    );
    let text =
        "input: {shape: [8]}\ninit: {seed: 1}\nlayers:\n  - {name: a, op: attention, heads: 2}\n";
    let config = PipelineConfig::parse(text, &dir).unwrap();
    let errors = Graph::build_with(&config, KernelKind::Fast).unwrap_err().0;
    assert!(
        errors
            .iter()
            .any(|e| e.path == "layers[0].inputs" && e.message.contains("one row per record")),
        "{errors:#?}"
    );
}
