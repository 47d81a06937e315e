//! `subpass validate` against a corpus of invalid pipeline files (tests/invalid/, one mistake per
//! file) and against the shipped configs.
//!
//! For every invalid file the real binary must exit with status 78 (EX_CONFIG) and print, on one
//! line of stderr, the key path of the mistake, its position as `(line L, column C)` (1-based;
//! L is the line the mistake is on, known because the file was written for it) and the facts a
//! reader needs: the bad name, both shapes of a shape mismatch, the tensor name of a weights error.
//! Expectations come from the pipeline-file spec, not from what the binary happens to print.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `subpass validate` exit status for an invalid pipeline file (sysexits EX_CONFIG).
const EXIT_CONFIG: i32 = 78;

/// One error `subpass validate` must report.
///
/// `path`: the key path, alternatives separated by `|` (e.g. the layer or the layer's key);
/// "" for an error about the document as a whole (then no path is checked).
/// `lines`: the 1-based line of the mistake (any of these); empty: any line, but a position is
/// still required. `cols`: the 1-based column, usually the key's or its value's (any of these);
/// empty: not checked. `facts`: substrings the same stderr line must contain (case-insensitive),
/// each with alternatives separated by `|`.
struct Expect {
    path: &'static str,
    lines: &'static [u32],
    cols: &'static [u32],
    facts: &'static [&'static str],
}

/// A file in tests/invalid/ holding exactly one mistake, and the error it must produce.
struct Case {
    file: &'static str,
    path: &'static str,
    lines: &'static [u32],
    cols: &'static [u32],
    facts: &'static [&'static str],
}

impl Case {
    fn expect(&self) -> Expect {
        Expect {
            path: self.path,
            lines: self.lines,
            cols: self.cols,
            facts: self.facts,
        }
    }
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    // YAML syntax: `name: bad: name` -- the second `:` (column 10) on line 3.
    Case { file: "yaml_syntax.yaml", path: "", lines: &[3], cols: &[7, 10], facts: &["syntax|yaml"] },
    // Unknown keys, at the top level and inside input, a layer, a stage and output.
    Case { file: "unknown_top_level_key.yaml", path: "batches", lines: &[6], cols: &[1], facts: &["batches", "unknown|unexpected|not allowed"] },
    Case { file: "unknown_input_key.yaml", path: "input.feild", lines: &[4], cols: &[3], facts: &["feild", "unknown|unexpected|not allowed"] },
    Case { file: "unknown_layer_key.yaml", path: "layers[1].kernal", lines: &[6], cols: &[33], facts: &["kernal", "unknown|unexpected|not allowed"] },
    Case { file: "unknown_stage_key.yaml", path: "stages[1].replica", lines: &[9], cols: &[33], facts: &["replica", "unknown|unexpected|not allowed"] },
    Case { file: "unknown_output_key.yaml", path: "output.arg_max", lines: &[6], cols: &[20], facts: &["arg_max", "unknown|unexpected|not allowed"] },
    // Duplicate keys in a mapping: YAML requires unique keys, and the error belongs to the
    // repeated key (top level: `batch` again on line 7; in a layer: the second `units`, column 37).
    Case { file: "duplicate_top_level_key.yaml", path: "batch", lines: &[7], cols: &[1], facts: &["batch", "duplicate|twice|already"] },
    Case { file: "duplicate_layer_key.yaml", path: "layers[0].units", lines: &[5], cols: &[37], facts: &["units", "duplicate|twice|already"] },
    // Unknown op / activation: the bad name.
    Case { file: "unknown_op.yaml", path: "layers[0].op", lines: &[5], cols: &[18, 22], facts: &["convolution"] },
    Case { file: "unknown_activation.yaml", path: "layers[0].activation", lines: &[5], cols: &[37, 49], facts: &["swishy"] },
    // Missing required attribute: the missing key has no position of its own, so the layer's.
    Case { file: "dense_missing_units.yaml", path: "layers[0]|layers[0].units", lines: &[5], cols: &[], facts: &["units"] },
    // Out-of-range attributes.
    Case { file: "kernel_zero.yaml", path: "layers[0].kernel", lines: &[5], cols: &[42, 50], facts: &[] },
    // An algorithm conv2d does not have (with the one meant), and one that cannot compute the layer.
    Case { file: "conv_algorithm_unknown.yaml", path: "layers[0].algorithm", lines: &[5], cols: &[], facts: &["winogrand", "winograd"] },
    Case { file: "conv_winograd_stride2.yaml", path: "layers[0].algorithm|layers[0]", lines: &[5], cols: &[], facts: &["winograd", "stride"] },
    Case { file: "filters_not_divisible_by_groups.yaml", path: "layers[0].groups|layers[0].filters|layers[0]", lines: &[5], cols: &[], facts: &["filters", "groups"] },
    Case { file: "batch_size_zero.yaml", path: "batch.size", lines: &[6], cols: &[9, 15], facts: &[] },
    Case { file: "queue_zero.yaml", path: "stages[0].queue", lines: &[7], cols: &[32, 39], facts: &[] },
    Case { file: "replicas_zero.yaml", path: "stages[0].replicas", lines: &[7], cols: &[32, 42], facts: &[] },
    Case { file: "threads_zero.yaml", path: "stages[0].threads", lines: &[7], cols: &[32, 41], facts: &[] },
    Case { file: "threads_with_core.yaml", path: "stages[0].core", lines: &[7], cols: &[44, 50], facts: &["threads"] },
    Case { file: "max_restarts_negative.yaml", path: "stages[0].max_restarts", lines: &[7], cols: &[32, 46], facts: &["-1", "at least 0"] },
    Case { file: "input_shape_zero.yaml", path: "input.shape|input.shape[1]", lines: &[2], cols: &[], facts: &[] },
    Case { file: "empty_layers.yaml", path: "layers", lines: &[4], cols: &[1, 9], facts: &["layer"] },
    // Duplicate names: the second use, naming the duplicated name.
    Case { file: "duplicate_layer_name.yaml", path: "layers[1].name|layers[1]", lines: &[6], cols: &[], facts: &["fc", "duplicate|twice|already"] },
    Case { file: "duplicate_stage_name.yaml", path: "stages[1].name|stages[1]", lines: &[9], cols: &[], facts: &["body", "duplicate|twice|already"] },
    // The layer graph.
    Case { file: "unknown_input.yaml", path: "layers[1].inputs[0]|layers[1].inputs", lines: &[6], cols: &[], facts: &["fc0"] },
    Case { file: "unknown_output_layer.yaml", path: "outputs[0]|outputs", lines: &[7], cols: &[], facts: &["logit"] },
    Case { file: "layer_cycle.yaml", path: "layers[0].inputs[0]|layers[0].inputs|layers[1].inputs[0]|layers[1].inputs|layers[0]|layers[1]", lines: &[5, 6], cols: &[], facts: &["ping", "pong", "cycle|circular"] },
    // Shapes: both shapes of a mismatch, and the input a kernel does not fit.
    Case { file: "add_shape_mismatch.yaml", path: "layers[2]|layers[2].inputs", lines: &[7], cols: &[], facts: &["sum", "[4]", "[5]"] },
    Case { file: "concat_shape_mismatch.yaml", path: "layers[2]|layers[2].inputs|layers[2].axis", lines: &[7], cols: &[], facts: &["merge", "[2, 6, 6]", "[2, 8, 8]"] },
    Case { file: "conv_kernel_too_large.yaml", path: "layers[0]|layers[0].kernel", lines: &[5], cols: &[], facts: &["conv", "[5, 5]|kernel 5|5x5", "[1, 4, 4]|[4, 4]|4x4"] },
    Case { file: "pool_kernel_too_large.yaml", path: "layers[1]|layers[1].kernel", lines: &[6], cols: &[], facts: &["pool", "[8, 8]|kernel 8|8x8", "[2, 3, 3]|[3, 3]|3x3"] },
    Case { file: "pool_padding_too_large.yaml", path: "layers[0].padding", lines: &[5], cols: &[], facts: &["padding", "half", "[2, 2]|padding 2", "[3, 3]|kernel 3"] },
    // Weights: the file, the tensor, both shapes.
    Case { file: "weights_file_missing.yaml", path: "weights", lines: &[3], cols: &[1, 10], facts: &["no_such_file.safetensors"] },
    Case { file: "weights_tensor_missing.yaml", path: "layers[1]|layers[1].params", lines: &[6], cols: &[], facts: &["out.weight", "missing|not found|absent"] },
    Case { file: "weights_tensor_misshapen.yaml", path: "layers[0]|layers[0].params|layers[0].units", lines: &[5], cols: &[], facts: &["fc.weight", "[4, 6]", "[4, 7]"] },
    Case { file: "conv_weights_misshapen.yaml", path: "layers[0]|layers[0].params|layers[0].kernel", lines: &[5], cols: &[], facts: &["conv.weight", "[3, 2, 3, 3]", "[3, 2, 5, 5]"] },
    Case { file: "weights_and_init.yaml", path: "init|weights", lines: &[3, 4], cols: &[1], facts: &["weights", "init"] },
    // No `weights` key to point at; any position will do (the layer needing the tensor is on line 4).
    Case { file: "neither_weights_nor_init.yaml", path: "weights|layers[0]|init", lines: &[], cols: &[], facts: &["fc.weight", "weights", "init"] },
    // Stages.
    Case { file: "layer_in_no_stage.yaml", path: "stages|layers[2]", lines: &[7, 8], cols: &[], facts: &["fc3", "stage"] },
    Case { file: "layer_in_two_stages.yaml", path: "stages[1].layers[0]|stages[1].layers", lines: &[9], cols: &[27], facts: &["fc2", "front", "back"] },
    Case { file: "stage_unknown_layer.yaml", path: "stages[1].layers[1]|stages[1].layers", lines: &[9], cols: &[32], facts: &["fc9"] },
    // Image records: located like any other key.
    Case { file: "image_crop_larger_than_resize.yaml", path: "input.image.crop", lines: &[3], cols: &[], facts: &["288", "256"] },
    Case { file: "image_unknown_key.yaml", path: "input.image.stdev", lines: &[6], cols: &[5], facts: &["stdev", "did you mean `std`"] },
    Case { file: "image_shape_disagrees.yaml", path: "input.shape", lines: &[3], cols: &[], facts: &["[3, 28, 28]", "[1, 28, 28]"] },
    Case { file: "image_first_layer_mismatch.yaml", path: "layers[0]|layers[0].params", lines: &[5], cols: &[], facts: &["conv.weight", "[3, 3, 3, 3]", "[3, 2, 3, 3]"] },
    Case { file: "labels_wrong_count.yaml", path: "output.labels", lines: &[7], cols: &[], facts: &["labels_three.txt", "3 classes", "4 values"] },
    Case { file: "top_k_too_large.yaml", path: "output.top_k", lines: &[8], cols: &[], facts: &["5", "4 values"] },
    Case { file: "parse_two_stages.yaml", path: "stages[1].parse", lines: &[10], cols: &[32], facts: &["left", "one stage"] },
    Case { file: "parse_on_a_later_stage.yaml", path: "stages[1].parse", lines: &[9], cols: &[33], facts: &["fed by the pipeline input alone"] },
    Case { file: "stage_cycle.yaml", path: "stages|stages[0]|stages[0].layers|stages[1]|stages[1].layers", lines: &[8, 9, 10], cols: &[], facts: &["outer", "inner", "cycle|circular"] },
];

/// Files holding several independent mistakes, each checked by its own test below.
const MULTI: &[&str] = &[
    "many_mistakes.yaml",
    "many_mistakes_with_duplicate_key.yaml",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// `subpass validate <file>` (relative to the crate root), with a deadline: validation must not hang.
fn validate(file: &Path) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_subpass"))
        .arg("validate")
        .arg(file)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn subpass");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`subpass validate {}` did not exit within 60 s",
                file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn invalid(file: &str) -> PathBuf {
    Path::new("tests/invalid").join(file)
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']')
}

/// `text` contains `path` as a whole key path: `layers[0]` is not found in `layers[0].kernel`.
fn has_path(text: &str, path: &str) -> bool {
    text.match_indices(path).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + path.len()..].chars().next();
        !before.is_some_and(is_path_char) && !after.is_some_and(|c| is_path_char(c) && c != ']')
    })
}

fn has_position(text: &str, lines: &[u32], cols: &[u32]) -> bool {
    if lines.is_empty() {
        return text.contains("(line ") && text.contains(", column ");
    }
    lines.iter().any(|l| {
        if cols.is_empty() {
            text.contains(&format!("(line {l}, column "))
        } else {
            cols.iter()
                .any(|c| text.contains(&format!("(line {l}, column {c})")))
        }
    })
}

fn has_fact(text: &str, fact: &str) -> bool {
    let text = text.to_lowercase();
    fact.split('|')
        .any(|alt| text.contains(&alt.to_lowercase()))
}

fn describe(e: &Expect) -> String {
    let lines = if e.lines.is_empty() {
        "any line".to_string()
    } else {
        format!("line {:?}", e.lines)
    };
    let cols = if e.cols.is_empty() {
        String::new()
    } else {
        format!(", column {:?}", e.cols)
    };
    format!(
        "path `{}` at {lines}{cols} stating {:?}",
        if e.path.is_empty() { "(none)" } else { e.path },
        e.facts
    )
}

/// Check that one line of `stderr` reports `e`; on failure, say what is missing.
fn check(stderr: &str, e: &Expect) -> Result<(), String> {
    let at_place: Vec<&str> = stderr
        .lines()
        .filter(|l| e.path.is_empty() || e.path.split('|').any(|p| has_path(l, p)))
        .collect();
    if at_place.is_empty() {
        return Err(format!(
            "no error line names the key path `{}`; wanted {}",
            e.path,
            describe(e)
        ));
    }
    let positioned: Vec<&str> = at_place
        .iter()
        .copied()
        .filter(|l| has_position(l, e.lines, e.cols))
        .collect();
    if positioned.is_empty() {
        return Err(format!(
            "no error line at `{}` has the position wanted ({}); lines naming the path:\n      {}",
            e.path,
            describe(e),
            at_place.join("\n      ")
        ));
    }
    if positioned
        .iter()
        .any(|l| e.facts.iter().all(|f| has_fact(l, f)))
    {
        return Ok(());
    }
    let l = positioned[0];
    let missing: Vec<&str> = e
        .facts
        .iter()
        .copied()
        .filter(|f| !has_fact(l, f))
        .collect();
    Err(format!(
        "the error at `{}` does not state {missing:?}:\n      {l}",
        e.path
    ))
}

#[test]
fn every_invalid_file_is_rejected_with_its_key_path_line_and_facts() {
    let mut failures = Vec::new();
    for case in CASES {
        let run = validate(&invalid(case.file));
        let mut problems = Vec::new();
        if run.status.code() != Some(EXIT_CONFIG) {
            problems.push(format!(
                "exit status {:?}, expected {EXIT_CONFIG}",
                run.status.code()
            ));
        }
        if let Err(why) = check(&run.stderr, &case.expect()) {
            problems.push(why);
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}:\n  - {}\n  stderr:\n{}",
                case.file,
                problems.join("\n  - "),
                run.stderr
                    .lines()
                    .map(|l| format!("    | {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid files were not reported as the spec requires:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_corpus_and_the_table_agree() {
    let dir = root().join("tests/invalid");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES
        .iter()
        .map(|c| c.file.to_string())
        .chain(MULTI.iter().map(|m| m.to_string()))
        .collect();
    listed.sort();
    let before = listed.len();
    listed.dedup();
    assert_eq!(before, listed.len(), "a file is listed twice");
    assert_eq!(
        on_disk, listed,
        "every tests/invalid/*.yaml must have exactly one row of expectations"
    );
    assert!(
        CASES.len() >= 24,
        "the corpus holds {} single-mistake files; want at least 24",
        CASES.len()
    );
}

/// Check every expectation against one run; panic listing all that are not met.
fn assert_all_reported(file: &str, expects: &[Expect]) {
    let run = validate(&invalid(file));
    let mut problems = Vec::new();
    if run.status.code() != Some(EXIT_CONFIG) {
        problems.push(format!(
            "exit status {:?}, expected {EXIT_CONFIG}",
            run.status.code()
        ));
    }
    for e in expects {
        if let Err(why) = check(&run.stderr, e) {
            problems.push(why);
        }
    }
    assert!(
        problems.is_empty(),
        "{file}: not every mistake was reported in one run:\n  - {}\nstderr:\n{}",
        problems.join("\n  - "),
        run.stderr
    );
}

#[test]
fn every_mistake_in_one_file_is_reported_in_one_run() {
    // tests/invalid/many_mistakes.yaml: six independent mistakes on lines 5, 6, 11 (two), 12 and 13.
    #[rustfmt::skip]
    let expects = [
        Expect { path: "layers[0].activation", lines: &[5], cols: &[53, 65], facts: &["swishy"] },
        Expect { path: "layers[1].kernal", lines: &[6], cols: &[33], facts: &["kernal"] },
        Expect { path: "stages[1].name|stages[1]", lines: &[11], cols: &[], facts: &["body", "duplicate|twice|already"] },
        Expect { path: "stages[1].replicas", lines: &[11], cols: &[42, 52], facts: &[] },
        Expect { path: "batch.size", lines: &[12], cols: &[9, 15], facts: &[] },
        Expect { path: "colour", lines: &[13], cols: &[1], facts: &["colour"] },
    ];
    assert_all_reported("many_mistakes.yaml", &expects);
}

#[test]
fn a_duplicate_key_does_not_hide_the_other_mistakes() {
    // tests/invalid/many_mistakes_with_duplicate_key.yaml: `init` again on line 4, a layer key typo
    // on line 6, an unknown input on line 7, batch size 0 on line 8.
    #[rustfmt::skip]
    let expects = [
        Expect { path: "init", lines: &[4], cols: &[1], facts: &["init", "duplicate|twice|already"] },
        Expect { path: "layers[0].untis", lines: &[6], cols: &[27], facts: &["untis"] },
        Expect { path: "layers[1].inputs[0]|layers[1].inputs", lines: &[7], cols: &[], facts: &["fc0"] },
        Expect { path: "batch.size", lines: &[8], cols: &[9, 15], facts: &[] },
    ];
    assert_all_reported("many_mistakes_with_duplicate_key.yaml", &expects);
}

#[test]
fn every_shipped_config_validates_and_prints_its_plan() {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(root().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    configs.sort();
    assert!(!configs.is_empty(), "no configs/*.yaml");
    for config in &configs {
        let rel = config.strip_prefix(root()).unwrap();
        let run = validate(rel);
        assert!(
            run.status.success(),
            "{} does not validate ({:?}):\n{}",
            rel.display(),
            run.status.code(),
            run.stderr
        );
        assert!(
            run.stdout.contains("memory bound"),
            "{}: the plan has no `memory bound`:\n{}",
            rel.display(),
            run.stdout
        );
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
        let names = |key: &str| -> Vec<String> {
            doc.get(key)
                .and_then(|v| v.as_sequence())
                .map(|s| {
                    s.iter()
                        .filter_map(|x| x.get("name")?.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let stages = names("stages");
        let layers = names("layers");
        assert!(
            !layers.is_empty(),
            "{}: no layers found in the file",
            rel.display()
        );
        for name in stages.iter().chain(&layers) {
            assert!(
                // Layer names may be module paths with dots (`layer2.0.conv1`).
                run.stdout.lines().any(|l| l
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                    .any(|w| w == name)),
                "{}: the plan does not mention `{name}`:\n{}",
                rel.display(),
                run.stdout
            );
        }
    }
}
