//! The pipeline loader: arbitrary text, structure-aware mutations of every file in configs/, and
//! documents built to hurt (alias bombs, deep nesting). It returns a config or errors, never
//! panics, never hangs (the per-case timeout), stays within a memory bound (a counting
//! allocator), and every error says where: a line and column, or a key path.

use std::path::Path;

use proptest::prelude::*;
use serde_yaml::{Mapping, Value};
use subpass::config::{ConfigError, PipelineConfig};

use crate::{alloc, config, root};

/// Parse `text`; check the outcome: errors located, memory bounded.
fn check_parse(text: &str) -> Result<(), TestCaseError> {
    let before = alloc::reset_peak();
    let result = PipelineConfig::parse_partial(text, &root().join("configs"));
    let peak = alloc::peak().saturating_sub(before);
    // What a document may cost: its text many times over (values, key paths, spans), never
    // what its aliases would expand to.
    let bound = (64 << 20) + 200 * text.len();
    prop_assert!(
        peak <= bound,
        "{} bytes at peak for {} bytes of YAML",
        peak,
        text.len()
    );
    let errors: Vec<ConfigError> = match result {
        Ok((_, errors)) => errors,
        Err(e) => {
            prop_assert!(!e.0.is_empty(), "an Err without errors");
            e.0
        }
    };
    // Lines as YAML counts them: `\r\n`, `\r` and `\n` each end one; the parser may point just
    // past the last (at the end of the stream).
    let lines = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .lines()
        .count()
        .max(1);
    for e in &errors {
        prop_assert!(!e.message.is_empty(), "{:?}", e);
        match e.location {
            Some((line, column)) => prop_assert!(
                line >= 1 && line <= lines + 1 && column >= 1,
                "{} is outside the {} lines of the text",
                e,
                lines
            ),
            // Only the document as a whole may go without a line.
            None => prop_assert!(e.path.is_empty(), "no line for {}", e),
        }
    }
    Ok(())
}

/// Every pipeline in configs/, as text.
fn files() -> &'static [(String, String)] {
    static FILES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(root().join("configs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
        out.sort();
        assert!(out.len() >= 5, "configs/ has the example pipelines");
        out
    })
}

/// Scalars as YAML text, put in place of a value: huge, negative, not a number, strings that
/// look like numbers, tags, aliases to nothing.
const RAW_SCALARS: &[&str] = &[
    "1e999",
    "-1e999",
    "-1",
    "-0",
    "0",
    ".nan",
    ".NaN",
    ".inf",
    "-.inf",
    "1e300",
    "1e-320",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775808",
    "-9223372036854775809",
    "4294967296",
    "99999999999",
    "0x10",
    "0o17",
    "1_000",
    "'12'",
    "\"12\"",
    "12abc",
    "~",
    "null",
    "yes",
    "True",
    "1.0",
    "2.5",
    "[]",
    "{}",
    "[1, 2]",
    "[[1, 2], [3]]",
    "!!str 1",
    "!!int x",
    "!custom 1",
    "&a 1",
    "*nowhere",
    "\"\\u0000\"",
    "\"a\\tb\"",
    "\"{i}\"",
    "fc1..logits",
];

/// One step of the path to a node.
#[derive(Debug, Clone)]
enum Step {
    Key(Value),
    Index(usize),
}

/// Paths of every node of `v`.
fn paths(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(prefix.clone());
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                prefix.push(Step::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(Step::Index(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'v>(v: &'v mut Value, path: &[Step]) -> &'v mut Value {
    match path.split_first() {
        None => v,
        Some((Step::Key(k), rest)) => node_mut(v.get_mut(k).unwrap(), rest),
        Some((Step::Index(i), rest)) => node_mut(v.get_mut(*i).unwrap(), rest),
    }
}

/// What to do at a node.
#[derive(Debug, Clone)]
enum Edit {
    /// Remove it from its mapping or list.
    Delete,
    /// Put a YAML scalar written as text in its place (see [`RAW_SCALARS`]).
    Raw(usize),
    /// Put a value of another kind in its place.
    Retype(u8),
    /// Add a key to the mapping (or the nearest one above): an unknown key, a near-typo of a
    /// known one, or a known one at the wrong level.
    AddKey(String, usize),
    /// Wrap it in `depth` lists or mappings.
    Nest(u16, bool),
    /// Copy it next to itself (a list item twice, a mapping's entries under an extra key).
    Copy,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => Just(Edit::Delete),
        5 => (0..RAW_SCALARS.len()).prop_map(Edit::Raw),
        2 => any::<u8>().prop_map(Edit::Retype),
        2 => (
            prop_oneof![
                Just("unitz".to_string()),
                Just("shape".to_string()),
                Just("layers".to_string()),
                Just("repeat".to_string()),
                Just("{i}".to_string()),
                "[a-z_]{1,10}",
                ".{0,8}"
            ],
            0..RAW_SCALARS.len(),
        )
            .prop_map(|(k, v)| Edit::AddKey(k, v)),
        1 => (1u16..300, any::<bool>()).prop_map(|(d, list)| Edit::Nest(d, list)),
        1 => Just(Edit::Copy),
    ]
}

/// The placeholder standing for a raw scalar until the YAML text is written.
fn placeholder(i: usize) -> Value {
    Value::String(format!("RAW_SCALAR_{i}_"))
}

fn apply(doc: &mut Value, path: &[Step], edit: &Edit) {
    match edit {
        Edit::Delete => {
            if let Some((last, parent)) = path.split_last() {
                match (node_mut(doc, parent), last) {
                    (Value::Mapping(m), Step::Key(k)) => {
                        m.remove(k);
                    }
                    (Value::Sequence(s), Step::Index(i)) => {
                        s.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        Edit::Raw(i) => *node_mut(doc, path) = placeholder(*i),
        Edit::Retype(kind) => {
            let node = node_mut(doc, path);
            *node = match kind % 6 {
                0 => Value::String("abc".into()),
                1 => Value::Sequence(vec![node.clone()]),
                2 => {
                    let mut m = Mapping::new();
                    m.insert("value".into(), node.clone());
                    Value::Mapping(m)
                }
                3 => Value::Bool(true),
                4 => Value::Null,
                _ => Value::Number((-7).into()),
            };
        }
        Edit::AddKey(key, raw) => {
            let mut p = path.to_vec();
            loop {
                if let Value::Mapping(m) = node_mut(doc, &p) {
                    m.insert(Value::String(key.clone()), placeholder(*raw));
                    break;
                }
                if p.pop().is_none() {
                    break;
                }
            }
        }
        Edit::Nest(depth, list) => {
            let node = node_mut(doc, path);
            let mut v = node.clone();
            for _ in 0..*depth {
                v = if *list {
                    Value::Sequence(vec![v])
                } else {
                    let mut m = Mapping::new();
                    m.insert("n".into(), v);
                    Value::Mapping(m)
                };
            }
            *node = v;
        }
        Edit::Copy => {
            let node = node_mut(doc, path).clone();
            if let Some((Step::Index(i), parent)) = path.split_last() {
                if let Value::Sequence(s) = node_mut(doc, parent) {
                    s.insert(*i, node);
                }
            } else if let Value::Mapping(m) = node {
                let target = node_mut(doc, path);
                if let Value::Mapping(t) = target {
                    t.insert("copy".into(), Value::Mapping(m));
                }
            }
        }
    }
}

/// Edits of the text itself, after the tree edits.
#[derive(Debug, Clone)]
enum TextEdit {
    /// Cut at a byte (on a character boundary).
    Truncate(usize),
    /// Give a line twice: a duplicate key, or a list item more.
    DuplicateLine(usize),
    DeleteLine(usize),
    /// Indent a line by one space more, or one less.
    Reindent(usize, bool),
    /// Insert bytes of YAML syntax somewhere.
    Insert(usize, &'static str),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    prop_oneof![
        any::<usize>().prop_map(TextEdit::Truncate),
        any::<usize>().prop_map(TextEdit::DuplicateLine),
        any::<usize>().prop_map(TextEdit::DeleteLine),
        (any::<usize>(), any::<bool>()).prop_map(|(l, m)| TextEdit::Reindent(l, m)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "&a ",
                "*a",
                "<<: *a\n",
                ": ",
                "- ",
                "[",
                "]",
                "{",
                "}",
                "\"",
                "'",
                "#",
                "\t",
                "|\n",
                ">-\n",
                "---\n",
                "...\n",
                "%YAML 1.2\n---\n",
                "? ",
                "!!map ",
                "\u{feff}",
                "\r\n",
                "\u{0}",
            ])
        )
            .prop_map(|(at, s)| TextEdit::Insert(at, s)),
    ]
}

fn apply_text(text: &str, edit: &TextEdit) -> String {
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    let n = lines.len().max(1);
    match edit {
        TextEdit::Truncate(at) => {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return text[..at].to_string();
        }
        TextEdit::DuplicateLine(l) if !lines.is_empty() => {
            let line = lines[l % n];
            lines.insert(l % n, line);
        }
        TextEdit::DeleteLine(l) if !lines.is_empty() => {
            lines.remove(l % n);
        }
        TextEdit::Reindent(l, more) if !lines.is_empty() => {
            let line = lines[l % n];
            let changed = if *more {
                format!(" {line}")
            } else {
                line.strip_prefix(' ').unwrap_or(line).to_string()
            };
            let mut out: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            out[l % n] = changed;
            return out.concat();
        }
        TextEdit::Insert(at, s) => {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return format!("{}{s}{}", &text[..at], &text[at..]);
        }
        _ => {}
    }
    lines.concat()
}

/// A file of configs/ with up to four tree edits at random nodes, then up to two text edits.
fn mutated_config() -> impl Strategy<Value = String> {
    (
        0..files().len(),
        prop::collection::vec((any::<usize>(), edit()), 0..4),
        prop::collection::vec(text_edit(), 0..2),
    )
        .prop_map(|(file, edits, text_edits)| {
            let mut doc: Value = serde_yaml::from_str(&files()[file].1).unwrap();
            for (at, e) in &edits {
                let mut all = Vec::new();
                paths(&doc, &mut Vec::new(), &mut all);
                let path = all[at % all.len()].clone();
                apply(&mut doc, &path, e);
            }
            let mut text = serde_yaml::to_string(&doc).unwrap();
            for (i, raw) in RAW_SCALARS.iter().enumerate() {
                text = text.replace(&format!("RAW_SCALAR_{i}_"), raw);
            }
            for e in &text_edits {
                text = apply_text(&text, e);
            }
            text
        })
}

/// Documents built to cost: alias bombs (each level a list of `fanout` aliases to the level
/// below: `fanout^depth` nodes from a few lines), deep nesting in flow and block style, long
/// keys at depth; alone, or inside a valid pipeline.
fn hostile_document() -> impl Strategy<Value = String> {
    let bomb = (2usize..12, 1usize..14, 0u8..3).prop_map(|(fanout, depth, placement)| {
        let mut text = String::from("x0: &a0 [lol, lol]\n");
        for d in 1..=depth {
            let refs = vec![format!("*a{}", d - 1); fanout].join(", ");
            text.push_str(&format!("x{d}: &a{d} [{refs}]\n"));
        }
        let top = match placement {
            // As unknown keys at the top level.
            0 => String::new(),
            // As the layers: the loader reads every one of them.
            1 => format!("layers: *a{depth}\n"),
            // As a shape.
            _ => format!("input: {{shape: *a{depth}}}\n"),
        };
        format!("{text}{top}")
    });
    let alias_keys = (1usize..2000).prop_map(|n| {
        // A big anchor used as a mapping key many times over: hashing and comparing keys.
        let big = (0..200)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!("base: &k [{big}]\nm:\n");
        for i in 0..n {
            text.push_str(&format!("  ? [*k, {i}]\n  : {i}\n"));
        }
        text
    });
    let flow = (1usize..3000, any::<bool>()).prop_map(|(n, maps)| {
        if maps {
            format!("{}1{}", "{a: ".repeat(n), "}".repeat(n))
        } else {
            format!("{}{}", "[".repeat(n), "]".repeat(n))
        }
    });
    let block_seq = (1usize..60_000).prop_map(|n| format!("{}x\n", "- ".repeat(n)));
    let block_map = (1usize..3000).prop_map(|n| {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&" ".repeat(i));
            text.push_str("k:\n");
        }
        text
    });
    let long_keys =
        (1usize..40, 1usize..2000, 1usize..4000).prop_map(|(depth, key_len, leaves)| {
            let mut text = String::new();
            for d in 0..depth {
                text.push_str(&" ".repeat(d));
                text.push_str(&"k".repeat(key_len));
                text.push_str(&format!("{d}:\n"));
            }
            for i in 0..leaves {
                text.push_str(&" ".repeat(depth));
                text.push_str(&format!("- {i}\n"));
            }
            text
        });
    let valid = files().iter().map(|(_, t)| t.clone()).collect::<Vec<_>>();
    (
        prop_oneof![
            4 => bomb,
            1 => alias_keys,
            2 => flow,
            2 => block_seq,
            1 => block_map,
            1 => long_keys,
        ],
        prop::sample::select(valid),
        any::<bool>(),
    )
        .prop_map(|(hostile, valid, inside)| {
            if inside {
                // After a valid pipeline: the bomb's keys are unknown, its `layers`/`input`
                // duplicates.
                format!("{valid}\n{hostile}")
            } else {
                hostile
            }
        })
}

proptest! {
    #![proptest_config(config(8))]

    /// Any text at all.
    #[test]
    fn arbitrary_text_is_a_config_or_located_errors(
        text in prop_oneof![
            ".{0,200}",
            "[-:\\[\\]{},&*!|>'\"#%@` \\n\\ta-z0-9]{0,200}",
            prop::collection::vec(any::<u8>(), 0..200)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ],
    ) {
        check_parse(&text)?;
    }

    /// Every example pipeline, edited: keys deleted, duplicated, retyped, unknown keys added,
    /// numbers made huge, negative, NaN or strings, values nested deep, the text cut anywhere.
    #[test]
    fn mutated_configs_load_or_say_where(text in mutated_config()) {
        check_parse(&text)?;
    }
}

proptest! {
    #![proptest_config(config(5))]

    /// Alias bombs, deep nesting and long keys: refused or read, quickly and in bounded memory.
    #[test]
    fn hostile_documents_are_bounded(text in hostile_document()) {
        check_parse(&text)?;
    }
}

/// The unedited example pipelines load: the mutations start from valid files.
#[test]
fn example_configs_load() {
    for (name, text) in files() {
        PipelineConfig::parse(text, Path::new("configs")).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
