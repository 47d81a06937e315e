//! all-MiniLM-L6-v2 end to end, over the real binary: text lines in, embeddings out, equal to
//! sentence-transformers' own (tests/fixtures/minilm, made by tools/gen_minilm_fixtures.py from
//! the sentence-transformers library itself), on lines with accents, CJK, emoji, punctuation
//! only, an empty line, and lines truncated at 256 tokens.
//!
//! The model is not in the repository: `bash tools/fetch_models.sh` puts it in models/, and
//! `.ci/run` does so before the tests, so CI always runs these. Without it they are skipped,
//! loudly.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use common::{root, subpass};
use serde_json::Value;

fn model_present() -> bool {
    let present = root()
        .join("models/all-minilm-l6-v2/model.safetensors")
        .exists();
    if !present {
        // Straight to the terminal: libtest captures test output, not this.
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED: models/all-minilm-l6-v2 is missing; run `bash tools/fetch_models.sh`"
        );
    }
    present
}

fn run_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = subpass()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// (max |a − b|, cosine).
fn compare(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    (diff, dot / (norm(a) * norm(b)))
}

#[test]
fn embeddings_equal_sentence_transformers() {
    if !model_present() {
        return;
    }
    let fixtures = root().join("tests/fixtures/minilm");
    let text = std::fs::read(fixtures.join("sentences.txt")).unwrap();
    let out = run_with_input(&["run", "configs/minilm.yaml", "--format", "text"], &text);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = lines(&out.stdout);
    let want: Vec<Value> = std::fs::read_to_string(fixtures.join("expected.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "one embedding per line, empty lines included"
    );
    let mut failures = Vec::new();
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["line"], w["line"], "in input order");
        let (diff, cos) = compare(&floats(&g["y"]), &floats(&w["embedding"]));
        if diff > 2e-5 || cos < 0.99999 {
            failures.push(format!(
                "line {}: max diff {diff:.2e}, cosine {cos:.8}",
                w["line"]
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn json_records_carry_their_id_and_get_the_same_embedding() {
    if !model_present() {
        return;
    }
    let input = concat!(
        "{\"id\": \"a\", \"text\": \"A man is eating food.\"}\n",
        "{\"text\": \"Caf\\u00e9 au lait\", \"id\": 7}\n",
    );
    let out = run_with_input(&["run", "configs/minilm.yaml"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = lines(&out.stdout);
    let plain = lines(
        &run_with_input(
            &["run", "configs/minilm.yaml", "--format", "text"],
            "A man is eating food.\nCafé au lait\n".as_bytes(),
        )
        .stdout,
    );
    assert_eq!(json[0]["id"], "a");
    assert_eq!(json[1]["id"], 7);
    for (j, p) in json.iter().zip(&plain) {
        let (diff, _) = compare(&floats(&j["y"]), &floats(&p["y"]));
        assert!(
            diff == 0.0,
            "the same text gives the same embedding: {diff}"
        );
    }
}

/// Bad records are reported on their line and the stream goes on; an empty line is a record.
#[test]
fn bad_text_records_are_reported_and_the_rest_served_in_order() {
    if !model_present() {
        return;
    }
    let mut input = b"first line\n\xff\xfe not UTF-8\n\nlast line\n".to_vec();
    input.extend_from_slice(&vec![b'x'; 300]);
    input.extend_from_slice(b"\nafter the long one\n");
    let out = run_with_input(
        &[
            "run",
            "configs/minilm.yaml",
            "--format",
            "text",
            "--max-line-bytes",
            "200",
        ],
        &input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = lines(&out.stdout);
    let numbers: Vec<u64> = got.iter().map(|v| v["line"].as_u64().unwrap()).collect();
    assert_eq!(
        numbers,
        vec![1, 3, 4, 6],
        "good lines (the empty one too), in order"
    );
    // Error lines are JSON on stderr, among the log lines.
    let errors: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bad: Vec<u64> = errors.iter().map(|v| v["line"].as_u64().unwrap()).collect();
    assert_eq!(bad, vec![2, 5], "{errors:?}");
    assert!(errors[0]["error"].as_str().unwrap().contains("UTF-8"));
    assert!(errors[1]["error"]
        .as_str()
        .unwrap()
        .contains("--max-line-bytes"));

    let json = "{\"text\": 42}\n[1, 2]\n{\"text\": \"fine\"}\n";
    let out = run_with_input(&["run", "configs/minilm.yaml"], json.as_bytes());
    assert!(out.status.success());
    let got = lines(&out.stdout);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["line"], 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must hold a string"), "{stderr}");
    assert!(stderr.contains("\"line\":2"), "{stderr}");
}

#[test]
fn formats_that_do_not_fit_the_pipeline_are_refused() {
    if !model_present() {
        return;
    }
    let out = run_with_input(&["run", "configs/minilm.yaml", "--format", "csv"], b"a,b\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--format text"));
    let out = run_with_input(&["run", "configs/mlp.yaml", "--format", "text"], b"hello\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("input is text"));
}

#[test]
fn verify_passes_on_minilm() {
    if !model_present() {
        return;
    }
    common::assert_verifies(&["configs/minilm.yaml", "--records", "24"]);
}
