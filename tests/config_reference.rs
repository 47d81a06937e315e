//! The example pipelines configs/{mlp,cnn,residual}.yaml, end to end through the real binary,
//! against the independent numpy reference in tests/fixtures/configs (made by
//! tools/gen_config_fixtures.py, which reimplements `init: {seed: S}` from its contract and
//! computes the forward pass in float64). Also: `export` reproduces that init bit for bit, and
//! `verify` passes on every pipeline in configs/.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;
use serde_json::Value;

/// Normwise relative tolerance per record: max|got - expected| <= TOL * max|expected|.
const TOL: f64 = 1e-4;
/// The argmax is only checked when the expected top-two gap exceeds this.
const ARGMAX_GAP: f64 = 1e-3;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn subpass(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_subpass"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot start subpass {args:?}: {e}"))
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

fn floats(v: &Value, what: &str) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: not an array: {v}"))
        .iter()
        .map(|x| {
            x.as_f64()
                .unwrap_or_else(|| panic!("{what}: not a number: {x}"))
        })
        .collect()
}

fn check_config(name: &str, check_argmax: bool) {
    let input = format!("tests/fixtures/configs/{name}-input.jsonl");
    let out = subpass(&["run", &format!("configs/{name}.yaml"), "--input", &input]);
    assert!(
        out.status.success(),
        "{name}: subpass run failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let got: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{name}: stdout line {}: {e}: {l}", i + 1))
        })
        .collect();
    let inputs = read_jsonl(&root().join(&input));
    let expected =
        read_jsonl(&root().join(format!("tests/fixtures/configs/{name}-expected.jsonl")));
    assert_eq!(
        inputs.len(),
        expected.len(),
        "{name}: fixture files disagree"
    );
    assert_eq!(
        got.len(),
        expected.len(),
        "{name}: {} output lines for {} input records; stderr:\n{}",
        got.len(),
        expected.len(),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut failures = Vec::new();
    let mut worst: f64 = 0.0;
    let mut argmax_checked = 0;
    for (i, ((g, e), x)) in got.iter().zip(&expected).zip(&inputs).enumerate() {
        assert_eq!(
            e["id"],
            x["id"],
            "{name}: fixture ids disagree at line {}",
            i + 1
        );
        assert_eq!(
            g["id"],
            e["id"],
            "{name}: output line {} has id {} but input order says {}",
            i + 1,
            g["id"],
            e["id"]
        );
        let a = floats(&g["y"], &format!("{name} record {} y", e["id"]));
        let b = floats(&e["y"], &format!("{name} expected {} y", e["id"]));
        assert_eq!(a.len(), b.len(), "{name} record {}: output length", e["id"]);
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        let rel = if scale > 0.0 { diff / scale } else { diff };
        worst = worst.max(rel);
        if diff.is_nan() || diff > TOL * scale {
            failures.push(format!(
                "record {}: max|diff| {diff:.3e} vs max|expected| {scale:.3e} (rel {rel:.3e})",
                e["id"]
            ));
        }

        if check_argmax {
            let mut order: Vec<usize> = (0..b.len()).collect();
            order.sort_by(|&p, &q| b[q].partial_cmp(&b[p]).unwrap());
            if b.len() >= 2 && b[order[0]] - b[order[1]] > ARGMAX_GAP {
                argmax_checked += 1;
                let am = g["argmax"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{name} record {}: no integer argmax", e["id"]));
                if am as usize != order[0] {
                    failures.push(format!(
                        "record {}: argmax {am}, expected {} (gap {:.3e})",
                        e["id"],
                        order[0],
                        b[order[0]] - b[order[1]]
                    ));
                }
            }
        }
    }
    eprintln!(
        "{name}: {} records, worst normwise relative error {worst:.3e}{}",
        got.len(),
        if check_argmax {
            format!(", argmax checked on {argmax_checked}")
        } else {
            String::new()
        }
    );
    if check_argmax {
        assert!(
            argmax_checked > got.len() / 2,
            "{name}: only {argmax_checked} records had a clear argmax; the check is vacuous"
        );
    }
    assert!(
        failures.is_empty(),
        "{name}: {} disagreements with the numpy reference (tolerance {TOL:e} normwise):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn mlp_matches_the_numpy_reference() {
    check_config("mlp", true);
}

#[test]
fn cnn_matches_the_numpy_reference() {
    check_config("cnn", true);
}

#[test]
fn residual_matches_the_numpy_reference() {
    check_config("residual", false);
}

#[test]
fn export_reproduces_the_init_contract_bit_for_bit() {
    let check: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/configs/init-check.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.safetensors");
    let out = subpass(&["export", "configs/mlp.yaml", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "subpass export failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();

    let tensors = check["tensors"].as_object().unwrap();
    for name in ["fc1.weight", "fc1.bias", "logits.bias"] {
        let spec = &tensors[name];
        let want_bits: Vec<u32> = spec["first_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // The decimal values in the file must say the same as the bit patterns.
        let want_vals: Vec<f32> = floats(&spec["first"], name)
            .iter()
            .map(|v| *v as f32)
            .collect();
        assert_eq!(want_vals.len(), want_bits.len());
        for (v, b) in want_vals.iter().zip(&want_bits) {
            assert_eq!(
                v.to_bits(),
                *b,
                "init-check.json `{name}`: value and bits disagree"
            );
        }
        let want_shape: Vec<usize> = spec["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();

        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("exported file lacks `{name}`"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "`{name}` dtype");
        assert_eq!(t.shape(), want_shape.as_slice(), "`{name}` shape");
        let got: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .take(want_bits.len())
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let got_bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            got_bits, want_bits,
            "`{name}`: exported {got:?}, the init contract says {want_vals:?}"
        );
    }
}

#[test]
fn verify_passes_on_every_config() {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(root().join("configs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    configs.sort();
    assert!(
        configs.len() >= 3,
        "expected at least the three example configs, found {configs:?}"
    );
    let mut failures = Vec::new();
    for cfg in &configs {
        let rel = cfg.strip_prefix(root()).unwrap();
        // Text pipelines need their model and verify slowly on the f64 reference kernels:
        // tests/minilm.rs verifies them on a few records.
        let config = subpass::config::PipelineConfig::load(cfg).unwrap();
        if config.input.text.is_some() {
            continue;
        }
        // Image models likewise (a ResNet-18 image takes seconds on the reference kernels):
        // tests/resnet.rs verifies configs/resnet18.yaml on one record.
        if config.input.shape.iter().product::<usize>() > 100_000 {
            continue;
        }
        let out = subpass(&["verify", rel.to_str().unwrap()]);
        if !out.status.success() {
            failures.push(format!(
                "{}: {}\n{}{}",
                rel.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "subpass verify failed:\n{}",
        failures.join("\n")
    );
}
