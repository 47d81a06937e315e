//! Bad input lines are reported once each, with their line number, and the stream goes on.
//!
//! The corpus in tests/fixtures/bad-records (made by tools/make_bad_records.py) mixes good records
//! with dozens of kinds of bad line: not JSON, truncated, wrong top-level types, missing or
//! mistyped `x`, wrong counts and nesting, non-numbers, NaN/Infinity, f32 overflow, over-long
//! lines, invalid UTF-8, trailing garbage, CR LF endings, blank and whitespace-only lines. Its
//! manifest says what every line is; these tests run the real binary over it and hold the output,
//! the error reports and the statistics to the manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const DIR: &str = "tests/fixtures/bad-records";
const PIPELINE: &str = "tests/fixtures/bad-records/pipeline.yaml";
const TIMEOUT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// The manifest.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Id(String),
    Line(u64),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Id(id) => write!(f, "id {id}"),
            Key::Line(n) => write!(f, "line {n}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Status {
    Good(Key),
    Bad(String),
    Blank,
    Header,
}

#[derive(Debug)]
struct Corpus {
    file: PathBuf,
    bytes: u64,
    /// Every line of the file, by 1-based number.
    lines: BTreeMap<u64, Status>,
}

impl Corpus {
    fn good_keys(&self) -> Vec<Key> {
        self.lines
            .values()
            .filter_map(|s| match s {
                Status::Good(k) => Some(k.clone()),
                _ => None,
            })
            .collect()
    }

    fn bad_lines(&self) -> BTreeSet<u64> {
        self.lines
            .iter()
            .filter(|(_, s)| matches!(s, Status::Bad(_)))
            .map(|(n, _)| *n)
            .collect()
    }

    fn describe(&self, line: u64) -> String {
        match self.lines.get(&line) {
            Some(Status::Good(k)) => format!("line {line} (a good record, {k})"),
            Some(Status::Bad(kind)) => format!("line {line} (bad: {kind})"),
            Some(Status::Blank) => format!("line {line} (blank: not a record)"),
            Some(Status::Header) => format!("line {line} (the CSV header)"),
            None => format!("line {line} (past the end of the file)"),
        }
    }
}

/// The output key as the output line spells it: `id` as compact JSON, or the line number.
fn key_of(v: &Value) -> Option<Key> {
    if let Some(id) = v.get("id") {
        return Some(Key::Id(id.to_string()));
    }
    v.get("line").and_then(Value::as_u64).map(Key::Line)
}

fn load_corpus(format: &str) -> Corpus {
    let path = root().join(DIR).join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run python3 tools/make_bad_records.py)",
            path.display()
        )
    });
    let manifest: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let section = &manifest[format];
    let file = root()
        .join(DIR)
        .join(section["file"].as_str().expect("file"));
    let mut lines = BTreeMap::new();
    for entry in section["lines"].as_array().expect("lines") {
        let n = entry["line"].as_u64().expect("line");
        let status = match entry["status"].as_str().expect("status") {
            "good" => Status::Good(key_of(&entry["output_key"]).expect("output_key")),
            "bad" => Status::Bad(entry["kind"].as_str().expect("kind").to_string()),
            "blank" => Status::Blank,
            "header" => Status::Header,
            other => panic!("manifest: unknown status {other}"),
        };
        assert!(
            lines.insert(n, status).is_none(),
            "manifest lists line {n} twice"
        );
    }
    assert_eq!(
        lines.keys().copied().collect::<Vec<_>>(),
        (1..=lines.len() as u64).collect::<Vec<_>>(),
        "manifest must list every line once, in order"
    );
    Corpus {
        file,
        bytes: section["bytes"].as_u64().expect("bytes"),
        lines,
    }
}

// ---------------------------------------------------------------------------------------------
// Running the binary.

struct Run {
    status: ExitStatus,
    stdout: String,
    errors: String,
    stderr: String,
    stats: Option<Value>,
}

/// `subpass run pipeline.yaml --input <input> --errors <tmp> --stats <tmp> --max-line-bytes 4096
/// <extra>`, from the crate root, with stdout and stderr going to files (no pipe to deadlock on)
/// and a deadline.
fn run(input: &Path, extra: &[&str]) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (tmp.path().join("stdout"), tmp.path().join("stderr"));
    let (errors_path, stats_path) = (
        tmp.path().join("errors.jsonl"),
        tmp.path().join("stats.json"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_subpass"))
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .arg("run")
        .arg(PIPELINE)
        .arg("--input")
        .arg(input)
        .arg("--errors")
        .arg(&errors_path)
        .arg("--stats")
        .arg(&stats_path)
        .args(["--max-line-bytes", "4096"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn subpass");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "subpass run {} {extra:?} did not exit within {TIMEOUT:?}; stderr:\n{}",
                input.display(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &Path| {
        let bytes = std::fs::read(p).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_else(|e| {
            panic!(
                "{} is not UTF-8: {e}",
                p.file_name().unwrap().to_string_lossy()
            )
        })
    };
    Run {
        status,
        stdout: read(&out_path),
        errors: read(&errors_path),
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default()).into_owned(),
        stats: std::fs::read_to_string(&stats_path).ok().map(|t| {
            serde_json::from_str(&t).unwrap_or_else(|e| panic!("stats file is not JSON: {e}\n{t}"))
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Every stdout line is a record's output: JSON, keyed by `id` or `line`, with a 2-value `y`.
fn output_keys(run: &Run) -> Vec<Key> {
    run.stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
            assert!(
                v.get("error").is_none(),
                "an error report on stdout: {line}"
            );
            let y = v["y"]
                .as_array()
                .unwrap_or_else(|| panic!("output line without a `y` array: {line}"));
            assert_eq!(y.len(), 2, "the pipeline has 2 outputs per record: {line}");
            assert!(
                y.iter().all(|x| x.is_number() || x.is_null()),
                "`y` holds a non-number: {line}"
            );
            key_of(&v)
                .unwrap_or_else(|| panic!("output line carries neither `id` nor `line`: {line}"))
        })
        .collect()
}

/// Output keys must equal `expected`, in order; on failure, say which records are missing,
/// which are extra or repeated, and where the order first differs.
fn assert_outputs(corpus: &Corpus, got: &[Key], expected: &[Key], what: &str) {
    if got == expected {
        return;
    }
    let mut counts: BTreeMap<&Key, i64> = BTreeMap::new();
    for k in expected {
        *counts.entry(k).or_default() -= 1;
    }
    for k in got {
        *counts.entry(k).or_default() += 1;
    }
    let missing: Vec<String> = counts
        .iter()
        .filter(|(_, c)| **c < 0)
        .map(|(k, _)| k.to_string())
        .collect();
    let extra: Vec<String> = counts
        .iter()
        .filter(|(_, c)| **c > 0)
        .map(|(k, c)| {
            let origin = match k {
                Key::Line(n) => corpus.describe(*n),
                Key::Id(id) => format!("id {id}"),
            };
            format!("{origin} ×{c} too many")
        })
        .collect();
    let first_diff = got
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .map(|i| format!("position {i}: got {}, expected {}", got[i], expected[i]));
    panic!(
        "{what}: stdout does not hold each good record once, in input order.\n  \
         {} output lines, {} expected\n  missing: {missing:?}\n  extra or repeated: {extra:?}\n  \
         first difference in order: {first_diff:?}",
        got.len(),
        expected.len()
    );
}

/// The error reports: one JSON object per line with a `line` and a non-empty `error`.
fn error_reports(run: &Run) -> Vec<(u64, String)> {
    run.errors
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("error report is not JSON ({e}): {line:?}"));
            let n = v["line"]
                .as_u64()
                .unwrap_or_else(|| panic!("error report without a numeric `line`: {line}"));
            let error = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("error report without an `error` string: {line}"));
            assert!(!error.trim().is_empty(), "empty error message: {line}");
            (n, error.to_string())
        })
        .collect()
}

/// Every bad line reported exactly once, nothing else reported, in input order.
fn assert_reports(
    corpus: &Corpus,
    reports: &[(u64, String)],
    expected: &BTreeSet<u64>,
    what: &str,
) {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for (n, _) in reports {
        *seen.entry(*n).or_default() += 1;
    }
    let twice: Vec<String> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, c)| format!("{} reported {c} times", corpus.describe(*n)))
        .collect();
    let unexpected: Vec<String> = reports
        .iter()
        .filter(|(n, _)| !expected.contains(n))
        .map(|(n, e)| format!("{}: {e}", corpus.describe(*n)))
        .collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|n| !seen.contains_key(n))
        .map(|n| corpus.describe(*n))
        .collect();
    assert!(
        twice.is_empty() && unexpected.is_empty() && missing.is_empty(),
        "{what}: each bad line must be reported exactly once.\n  reported more than once: {twice:#?}\n  \
         reported but not bad: {unexpected:#?}\n  bad but not reported (accepted or lost): {missing:#?}"
    );
    let order: Vec<u64> = reports.iter().map(|(n, _)| *n).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        order, sorted,
        "{what}: bad lines reported out of input order"
    );
}

fn stat(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats lack `{name}`: {stats}"))
}

fn assert_stats(run: &Run, good: usize, bad: usize, what: &str) {
    let stats = run
        .stats
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no stats file written; stderr:\n{}", run.stderr));
    let (rin, rout, rej) = (
        stat(stats, "records_in"),
        stat(stats, "records_out"),
        stat(stats, "records_rejected"),
    );
    assert_eq!(
        rin,
        rout + rej,
        "{what}: records_in != records_out + records_rejected: {stats}"
    );
    assert_eq!(
        rout, good as u64,
        "{what}: records_out is not the number of good lines: {stats}"
    );
    assert_eq!(
        rej, bad as u64,
        "{what}: records_rejected is not the number of bad lines: {stats}"
    );
}

/// The whole contract on one corpus, in the default (lenient) mode.
fn check_lenient(format: &str, extra: &[&str]) {
    let corpus = load_corpus(format);
    assert_fixture_is_intact(&corpus);
    let run = run(&corpus.file, extra);
    let what = format!("{format} corpus");
    assert!(
        run.status.success(),
        "{what}: exit status {:?}, expected 0; stderr:\n{}",
        run.status.code(),
        run.stderr
    );
    let expected = corpus.good_keys();
    assert_outputs(&corpus, &output_keys(&run), &expected, &what);
    let bad = corpus.bad_lines();
    assert_reports(&corpus, &error_reports(&run), &bad, &what);
    assert_stats(&run, expected.len(), bad.len(), &what);
}

/// A checkout that rewrote line endings (core.autocrlf) would silently test something else.
fn assert_fixture_is_intact(corpus: &Corpus) {
    let len = std::fs::metadata(&corpus.file)
        .unwrap_or_else(|e| panic!("{}: {e}", corpus.file.display()))
        .len();
    assert_eq!(
        len,
        corpus.bytes,
        "{} is not the file the manifest describes (line endings rewritten?); \
         regenerate with python3 tools/make_bad_records.py",
        corpus.file.display()
    );
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// The corpus is what the tests claim it is: many kinds of bad line between good records.
#[test]
fn the_corpus_covers_what_it_claims() {
    let corpus = load_corpus("jsonl");
    assert_fixture_is_intact(&corpus);
    let kinds: BTreeSet<&str> = corpus
        .lines
        .values()
        .filter_map(|s| match s {
            Status::Bad(k) => Some(k.as_str()),
            _ => None,
        })
        .collect();
    assert!(kinds.len() >= 18, "only {} kinds of bad line", kinds.len());
    let good = corpus.good_keys();
    assert!(good.len() >= 25, "only {} good records", good.len());
    assert!(
        good.iter().any(|k| matches!(k, Key::Line(_))),
        "no record without an id"
    );
    let unique: BTreeSet<&Key> = good.iter().collect();
    assert_eq!(
        unique.len(),
        good.len(),
        "good records' keys are not unique"
    );
    let statuses: Vec<&Status> = corpus.lines.values().collect();
    assert!(
        matches!(statuses.first(), Some(Status::Good(_))),
        "first line is not good"
    );
    assert!(
        matches!(statuses.last(), Some(Status::Good(_))),
        "last line is not good"
    );
    assert!(
        statuses.iter().any(|s| matches!(s, Status::Blank)),
        "no blank lines"
    );
    let longest_bad_run = statuses
        .iter()
        .fold((0, 0), |(best, run), s| {
            let run = if matches!(s, Status::Bad(_)) {
                run + 1
            } else {
                0
            };
            (best.max(run), run)
        })
        .0;
    assert!(
        longest_bad_run >= 5,
        "longest run of bad lines is {longest_bad_run}"
    );
    let bytes = std::fs::read(&corpus.file).unwrap();
    assert!(bytes.windows(2).any(|w| w == b"\r\n"), "no CR LF endings");
    assert!(std::str::from_utf8(&bytes).is_err(), "no invalid UTF-8");
    assert!(
        bytes.split(|b| *b == b'\n').any(|l| l.len() > 4096),
        "no over-long line"
    );
}

#[test]
fn jsonl_every_good_record_answered_once_and_every_bad_line_reported_once() {
    check_lenient("jsonl", &[]);
}

#[test]
fn csv_every_good_row_answered_once_and_every_bad_row_reported_once() {
    check_lenient("csv", &["--format", "csv"]);
}

/// `--strict`: exit 1 at the first bad line, having written exactly the records before it.
#[test]
fn strict_stops_at_the_first_bad_line() {
    let corpus = load_corpus("jsonl");
    assert_fixture_is_intact(&corpus);
    let first_bad = *corpus
        .bad_lines()
        .first()
        .expect("the corpus has bad lines");
    let run = run(&corpus.file, &["--strict"]);
    assert_eq!(
        run.status.code(),
        Some(1),
        "--strict: exit status {:?}, expected 1; stderr:\n{}",
        run.status.code(),
        run.stderr
    );
    let before: Vec<Key> = corpus
        .lines
        .range(..first_bad)
        .filter_map(|(_, s)| match s {
            Status::Good(k) => Some(k.clone()),
            _ => None,
        })
        .collect();
    assert!(
        !before.is_empty(),
        "the corpus should have good records before its first bad line"
    );
    assert_outputs(&corpus, &output_keys(&run), &before, "--strict");
    let reports = error_reports(&run);
    assert_eq!(
        reports.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![first_bad],
        "--strict: the errors file should report the first bad line ({}) and nothing else",
        corpus.describe(first_bad)
    );
}

// ---------------------------------------------------------------------------------------------
// Edges of the input contract, each on a small inline input.

/// Runs `lines` (joined with `\n`) and returns, per line number, `Ok(())` if it produced a
/// record and `Err(message)` if it was reported.
fn verdicts(lines: &[&[u8]], ending: &[u8]) -> (Run, BTreeMap<u64, Result<(), String>>) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input.jsonl");
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l);
        data.extend_from_slice(ending);
    }
    std::fs::write(&input, data).unwrap();
    let run = run(&input, &[]);
    assert!(
        run.status.success(),
        "exit {:?}; stderr:\n{}",
        run.status.code(),
        run.stderr
    );
    let mut by_line = BTreeMap::new();
    for key in output_keys(&run) {
        match key {
            Key::Line(n) => assert!(
                by_line.insert(n, Ok(())).is_none(),
                "line {n} answered twice"
            ),
            Key::Id(id) => panic!("inline inputs have no ids, got {id}"),
        }
    }
    for (n, e) in error_reports(&run) {
        assert!(
            by_line.insert(n, Err(e)).is_none(),
            "line {n} answered or reported twice"
        );
    }
    (run, by_line)
}

/// Numbers are JSON numbers: JSON has no leading zeros (`01`) and no bare trailing point (`1.`),
/// just as it has no `+1` or `0x10` (which the corpus shows are rejected). The same array must
/// get the same verdict bare and inside an object's `x`.
#[test]
fn number_spellings_outside_json_grammar_are_rejected() {
    let lines: &[&[u8]] = &[
        b"[1, 2, 3, 4, 5, 6]",
        b"[01, 2, 3, 4, 5, 6]",
        b"{\"x\": [01, 2, 3, 4, 5, 6]}",
        b"[-01, 2, 3, 4, 5, 6]",
        b"[00, 2, 3, 4, 5, 6]",
        b"[1., 2, 3, 4, 5, 6]",
        b"{\"x\": [1., 2, 3, 4, 5, 6]}",
        b"[1.e5, 2, 3, 4, 5, 6]",
        b"[[1, 2, 3], [4, 5, 6.]]",
        b"[1, 2, 3, 4, 5, 6]",
    ];
    let last = lines.len() as u64;
    let (_, by_line) = verdicts(lines, b"\n");
    let accepted: Vec<String> = (2..last)
        .filter(|n| matches!(by_line.get(n), Some(Ok(()))))
        .map(|n| {
            format!(
                "line {n}: {}",
                String::from_utf8_lossy(lines[n as usize - 1])
            )
        })
        .collect();
    assert!(
        accepted.is_empty(),
        "accepted non-JSON numbers: {accepted:#?}"
    );
    assert_eq!(by_line.get(&1), Some(&Ok(())));
    assert_eq!(by_line.get(&last), Some(&Ok(())));
}

/// The cap is on the line, not its ending: a record of exactly --max-line-bytes is accepted
/// whether it ends in LF (covered by the corpus) or CR LF, as CR LF endings are accepted anywhere.
#[test]
fn a_crlf_ending_does_not_count_toward_max_line_bytes() {
    let head = b"{\"x\": [1, 2, 3, 4, 5, 6], \"pad\": \"";
    let mut line = head.to_vec();
    line.resize(4096 - 2, b'p');
    line.extend_from_slice(b"\"}");
    assert_eq!(line.len(), 4096);
    let (_, by_line) = verdicts(&[&line, b"[1, 2, 3, 4, 5, 6]"], b"\r\n");
    assert_eq!(
        by_line.get(&1),
        Some(&Ok(())),
        "a 4096-byte record ending in CR LF was not accepted under --max-line-bytes 4096"
    );
    assert_eq!(by_line.get(&2), Some(&Ok(())));
}
