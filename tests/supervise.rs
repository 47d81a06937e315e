//! Supervision over the real binary: a stage replica that panics is restarted, the records it
//! fails on become error lines naming the stage, every other record is written exactly as a run
//! without the failure writes it (byte for byte, in order), and the run exits 0 at EOF; a stage
//! that keeps failing uses up its restart budget and the run exits 1 naming it.
//!
//! Panics come from the `stage` fail point (src/runtime/fault.rs), aimed at records by input line
//! (`STAGE#LINE`), so these tests need `--features fail-points`; one test uses a real kernel
//! panic instead (a token id outside bert-tiny's vocabulary).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{read_json, root, subpass, tempdir, wait_with_timeout};
use serde_json::Value;

/// What one run wrote.
struct Run {
    status: ExitStatus,
    /// Output lines, as written.
    out: Vec<String>,
    /// Error lines (`--errors`): line number and message.
    errors: Vec<(u64, String)>,
    stderr: String,
    /// `--stats`, when the run got that far.
    stats: Option<Value>,
}

/// `subpass run PIPELINE --input INPUT ARGS…` with `FAILPOINTS` set (or unset), within a minute.
fn run(pipeline: &str, input: &Path, args: &[&str], failpoints: Option<&str>) -> Run {
    let dir = tempdir();
    let (out, errors, stats) = (
        dir.path().join("out.jsonl"),
        dir.path().join("errors.jsonl"),
        dir.path().join("stats.json"),
    );
    let mut cmd = subpass();
    cmd.args(["run", pipeline, "--input"])
        .arg(input)
        .arg("--output")
        .arg(&out)
        .arg("--errors")
        .arg(&errors)
        .arg("--stats")
        .arg(&stats)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match failpoints {
        Some(f) => cmd.env("FAILPOINTS", f),
        None => cmd.env_remove("FAILPOINTS"),
    };
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    let stderr = reader.join().unwrap();
    // Whatever the exit, every line is whole: a run that stops on an error must not exit in the
    // middle of a write (it once did, now and then, cutting its last error line in two).
    let read = |p: &Path| {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends in a cut line: {:?}",
            p.display(),
            &text[text.rfind('\n').map_or(0, |i| i + 1)..]
        );
        text
    };
    let errors = read(&errors)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (
                v["line"].as_u64().unwrap(),
                v["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    Run {
        status,
        out: read(&out).lines().map(String::from).collect(),
        errors,
        stderr,
        stats: stats.exists().then(|| read_json(&stats)),
    }
}

fn digits() -> PathBuf {
    root().join("examples/digits-test.jsonl")
}

fn restarts(stats: &Value) -> BTreeMap<String, u64> {
    stats["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["restarts"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Run `pipeline` over `input` (one record per line, no bad lines) cleanly and with a panic
/// aimed at each `(line, stage)` of `faults`. The faulty run must exit 0, write an error line
/// for each faulted line naming its stage(s), in line order, and write every other record's
/// output line byte for byte as the clean run does, in the same order. Returns the faulty run.
fn assert_isolated(pipeline: &str, input: &Path, args: &[&str], faults: &[(u64, &str)]) -> Run {
    let clean = run(pipeline, input, args, None);
    assert!(clean.status.success(), "clean run: {}", clean.stderr);
    assert!(clean.errors.is_empty());
    let targets: Vec<String> = faults.iter().map(|(l, s)| format!("{s}#{l}")).collect();
    let failpoints = format!("stage=return({})", targets.join(","));
    let faulty = run(pipeline, input, args, Some(&failpoints));
    assert!(faulty.status.success(), "{failpoints}: {}", faulty.stderr);

    // One error line per faulted record, in line order, naming every stage that failed on it.
    let mut expected: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (line, stage) in faults {
        expected.entry(*line).or_default().push(stage);
    }
    let lines: Vec<u64> = faulty.errors.iter().map(|e| e.0).collect();
    assert_eq!(
        lines,
        expected.keys().copied().collect::<Vec<_>>(),
        "{failpoints}"
    );
    for ((line, error), stages) in faulty.errors.iter().zip(expected.values()) {
        assert!(error.starts_with("stage "), "line {line}: {error}");
        for stage in stages {
            assert!(
                error.contains(&format!("stage {stage}: injected fault in chunk ")),
                "line {line} must name stage {stage}: {error}"
            );
        }
    }
    // Every other record: exactly the clean run's line, in order.
    let kept: Vec<&String> = clean
        .out
        .iter()
        .enumerate()
        .filter(|(i, _)| !expected.contains_key(&(*i as u64 + 1)))
        .map(|(_, l)| l)
        .collect();
    assert_eq!(faulty.out.len(), kept.len(), "{failpoints}");
    for (i, (got, want)) in faulty.out.iter().zip(&kept).enumerate() {
        assert_eq!(got, *want, "output line {} differs ({failpoints})", i + 1);
    }
    let stats = faulty.stats.as_ref().expect("--stats is written at exit 0");
    assert_eq!(stats["records_rejected"], expected.len() as u64);
    assert_eq!(stats["records_out"], kept.len() as u64);
    assert_eq!(stats["records_in"], clean.out.len() as u64);
    faulty
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_plain_stage_poisons_only_the_records_it_panics_on() {
    // The first and the last record, and two in between, in both stages of a two-stage chain.
    let faulty = assert_isolated(
        "configs/digits-mlp.yaml",
        &digits(),
        &[],
        &[(1, "body"), (77, "head"), (200, "body"), (450, "head")],
    );
    // Each fault is in a chunk of its own (chunks hold at most 32 records): one restart each.
    let r = restarts(faulty.stats.as_ref().unwrap());
    assert_eq!((r["body"], r["head"], r["source.parse"]), (2, 2, 0));
    assert!(
        faulty.stderr.contains("stage replica panicked") && faulty.stderr.contains("stage=body"),
        "the restart is logged with its stage: {}",
        faulty.stderr
    );
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_branch_poisons_its_records_and_the_other_branch_stays_aligned() {
    // digits-cnn: tower_a and tower_b are branches of the input, joined by head. Line 300 fails
    // in both branches: one error line names both.
    assert_isolated(
        "configs/digits-cnn.yaml",
        &digits(),
        &[],
        &[
            (3, "tower_a"),
            (137, "tower_b"),
            (300, "tower_a"),
            (300, "tower_b"),
        ],
    );
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_convolution_folded_into_the_pool_of_a_later_stage_isolates_its_records() {
    // conv_a folds into pool_a, a stage later: conv_a's stage sends its input on under the
    // convolution's name, and the isolation path rebuilds that value at the shape it carries.
    let pipeline = "tests/pipelines/digits-cnn-cut-at-pools.yaml";
    assert_isolated(
        pipeline,
        &digits(),
        &[],
        &[
            (3, "conv_a"),
            (64, "conv_a"),
            (137, "pool_a"),
            (300, "tower_b"),
        ],
    );
    // A failure of every evaluation over more than 16 records: the whole chunk fails again, so
    // the stage's output is assembled from the halves' results, at the shape it carries.
    let clean = run(pipeline, &digits(), &[], None);
    let faulty = run(
        pipeline,
        &digits(),
        &["--max-restarts", "1000"],
        Some("stage=return(conv_a>16)"),
    );
    assert!(faulty.status.success(), "{}", faulty.stderr);
    assert!(faulty.errors.is_empty());
    assert_eq!(faulty.out, clean.out);
    assert!(restarts(faulty.stats.as_ref().unwrap())["conv_a"] >= 1);
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_concat_folded_into_the_dense_layer_of_a_later_stage_isolates_its_records() {
    // merge and flat fold into `hidden`, a stage later: `join` sends the first tower's output
    // on under the flatten's name, and the isolation path rebuilds that value at the shape it
    // carries ([8, 4, 4], not the flatten's [256]).
    let pipeline = "tests/pipelines/digits-cnn-cut-at-dense.yaml";
    assert_isolated(
        pipeline,
        &digits(),
        &[],
        &[(3, "join"), (64, "join"), (137, "head"), (300, "tower_b")],
    );
    let clean = run(pipeline, &digits(), &[], None);
    let faulty = run(
        pipeline,
        &digits(),
        &["--max-restarts", "1000"],
        Some("stage=return(join>16)"),
    );
    assert!(faulty.status.success(), "{}", faulty.stderr);
    assert!(faulty.errors.is_empty());
    assert_eq!(faulty.out, clean.out);
    assert!(restarts(faulty.stats.as_ref().unwrap())["join"] >= 1);
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_joins_consumer_with_replicas_poisons_only_its_records() {
    // digits-cnn's head joins the two towers and runs two replicas.
    let faulty = assert_isolated(
        "configs/digits-cnn.yaml",
        &digits(),
        &[],
        &[(5, "head"), (100, "head"), (449, "head"), (200, "tower_b")],
    );
    assert_eq!(restarts(faulty.stats.as_ref().unwrap())["head"], 3);
    // residual: head joins the model input (a skip connection from the source) and mixer.
    assert_isolated(
        "configs/residual.yaml",
        &root().join("tests/fixtures/configs/residual-input.jsonl"),
        &[],
        &[(1, "head"), (35, "head"), (36, "mixer"), (70, "block")],
    );
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn replicas_of_a_stage_restart_while_their_siblings_go_on() {
    // Nine faults 50 lines apart: nine chunks, spread over body's three replicas. And the packed
    // dense kernel of mlp.yaml, whose rounding depends on a record's place in its chunk.
    let lines: Vec<u64> = (0..9).map(|i| 10 + 50 * i).collect();
    let faults: Vec<(u64, &str)> = lines.iter().map(|&l| (l, "body")).collect();
    let faulty = assert_isolated(
        "tests/pipelines/digits-mlp-replicas.yaml",
        &digits(),
        &[],
        &faults,
    );
    assert_eq!(restarts(faulty.stats.as_ref().unwrap())["body"], 9);
    assert_isolated(
        "configs/mlp.yaml",
        &root().join("tests/fixtures/configs/mlp-input.jsonl"),
        &[],
        &[
            (1, "front"),
            (2, "back"),
            (64, "front"),
            (65, "back"),
            (70, "back"),
        ],
    );
}

fn tokenizer_present() -> bool {
    let present = root()
        .join("models/all-minilm-l6-v2/tokenizer.json")
        .exists();
    if !present {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED: models/all-minilm-l6-v2 is missing; run `bash tools/fetch_models.sh`"
        );
    }
    present
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_text_pipeline_poisons_records_in_token_row_and_record_row_stages() {
    if !tokenizer_present() {
        return;
    }
    // Records of 0 to 60 words (the longest truncated at 32 tokens), so chunks of 8 records cut
    // token rows unevenly; `embed` and `encoder` compute token rows, `pool` record rows.
    let dir = tempdir();
    let input = dir.path().join("text.txt");
    let words = [
        "supervised",
        "streams",
        "keep",
        "going",
        "after",
        "a",
        "panic",
    ];
    let text: String = (0..60)
        .map(|i| {
            let n = (i * 7) % 61;
            let line: Vec<&str> = (0..n).map(|w| words[(w + i) % words.len()]).collect();
            line.join(" ") + "\n"
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let faulty = assert_isolated(
        "tests/pipelines/text-tiny.yaml",
        &input,
        &["--format", "text"],
        &[
            (1, "embed"),
            (9, "encoder"),
            (10, "encoder"),
            (17, "pool"),
            (31, "encoder"),
            (60, "embed"),
        ],
    );
    let r = restarts(faulty.stats.as_ref().unwrap());
    assert!(
        r["encoder"] >= 2 && r["embed"] == 2 && r["pool"] == 1,
        "{r:?}"
    );
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_stage_failing_on_every_record_exits_one_naming_it_quickly() {
    let start = Instant::now();
    let r = run(
        "configs/digits-mlp.yaml",
        &digits(),
        &[],
        Some("stage=return(head)"),
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "error: stage `head` failed: more than 10 restarts within a minute (max_restarts; 11 now); the last panic: injected fault"
        ),
        "{}",
        r.stderr
    );
    // Ten chunks were isolated (every record poisoned) before the eleventh used up the budget.
    assert!(
        !r.errors.is_empty() && r.errors.len() <= 10 * 32,
        "{}",
        r.errors.len()
    );
    assert!(r.errors.iter().all(|e| e.1.starts_with("stage head: ")));
    assert!(start.elapsed() < Duration::from_secs(20));

    // --max-restarts 0: the first panic ends the run, as without supervision.
    let r = run(
        "configs/digits-mlp.yaml",
        &digits(),
        &["--max-restarts", "0"],
        Some("stage=return(body#40)"),
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r
        .stderr
        .contains("stage `body` failed: more than 0 restarts within a minute"));
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_stages_max_restarts_in_the_file_overrides_the_flag() {
    // head: max_restarts 0 in the file, whatever the flag allows.
    let r = run(
        "tests/pipelines/restart-budgets.yaml",
        &digits(),
        &["--max-restarts", "100"],
        Some("stage=return(head#5)"),
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r
        .stderr
        .contains("stage `head` failed: more than 0 restarts"));
    // body: 20 in the file; 14 chunks failing is within it, though the flag says 0.
    let faults: Vec<String> = (0..14).map(|i| format!("body#{}", 1 + 32 * i)).collect();
    let r = run(
        "tests/pipelines/restart-budgets.yaml",
        &digits(),
        &["--max-restarts", "0"],
        Some(&format!("stage=return({})", faults.join(","))),
    );
    assert!(r.status.success(), "{}", r.stderr);
    assert_eq!(r.errors.len(), 14);
    assert_eq!(r.out.len(), 450 - 14);
}

#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn strict_stops_at_a_poisoned_record() {
    let r = run(
        "configs/digits-mlp.yaml",
        &digits(),
        &["--strict"],
        Some("stage=return(head#40)"),
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("line 40: stage head: injected fault"),
        "{}",
        r.stderr
    );
    assert_eq!(r.out.len(), 39, "the records before it are written");
    assert_eq!(r.errors.len(), 1);
}

/// No fail point: bert-tiny's embedding has 100 words, and every text the MiniLM tokenizer makes
/// starts with token 101 ([CLS]), so the kernel's own bounds check panics on every record.
#[test]
fn a_real_kernel_panic_on_every_record_exits_one_naming_the_stage() {
    if !tokenizer_present() {
        return;
    }
    let dir = tempdir();
    let input = dir.path().join("text.txt");
    std::fs::write(&input, "a short line of text\n".repeat(1000)).unwrap();
    let start = Instant::now();
    let r = run(
        "tests/fixtures/bert-tiny/pipeline.yaml",
        &input,
        &["--format", "text"],
        None,
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("stage `embed` failed: more than 10 restarts")
            && r.stderr.contains("token id 101 at position 0"),
        "{}",
        r.stderr
    );
    assert!(r.out.is_empty());
    assert!(r
        .errors
        .iter()
        .all(|e| e.1.starts_with("stage embed: token id 101")));
    assert!(start.elapsed() < Duration::from_secs(20));
}

/// A panic that depends on the chunk's size, not on any record (`head>16`: evaluations of more
/// than 16 records): bisection finds no record to blame, the whole chunk fails again, and the
/// halves' results are written: every record, as a clean run writes it.
#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn a_panic_no_record_causes_poisons_nothing() {
    let clean = run("configs/digits-mlp.yaml", &digits(), &[], None);
    let faulty = run(
        "configs/digits-mlp.yaml",
        &digits(),
        &["--max-restarts", "1000"],
        Some("stage=return(head>16)"),
    );
    assert!(faulty.status.success(), "{}", faulty.stderr);
    assert!(faulty.errors.is_empty());
    assert_eq!(faulty.out, clean.out);
    let r = restarts(faulty.stats.as_ref().unwrap());
    assert!(r["head"] >= 1, "{r:?}");
    assert!(faulty.stderr.contains("no record fails on its own"));
}

/// The target: a panic on 1 record in 10^4, at random stages, over 10^5 records: every
/// other record comes out, in order, as a clean run writes it, and the run exits 0.
#[test]
#[cfg_attr(not(feature = "fail-points"), ignore = "needs --features fail-points")]
fn one_record_in_ten_thousand_panicking_at_random_stages_loses_no_other() {
    let dir = tempdir();
    let input = dir.path().join("records.jsonl");
    let digits = std::fs::read_to_string(digits()).unwrap();
    let records: Vec<&str> = digits.lines().collect();
    let n = 100_000;
    let text: String = (0..n)
        .map(|i| format!("{}\n", records[i % records.len()]))
        .collect();
    std::fs::write(&input, text).unwrap();
    // Ten distinct lines and a stage for each, from a fixed-seed generator.
    let mut state: u64 = 0x5eed_2024;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut faults: BTreeMap<u64, &str> = BTreeMap::new();
    while faults.len() < n / 10_000 {
        let line = 1 + next() % n as u64;
        faults.insert(line, ["body", "head"][(next() % 2) as usize]);
    }
    let faults: Vec<(u64, &str)> = faults.into_iter().collect();
    assert_isolated("configs/digits-mlp.yaml", &input, &[], &faults);
}
