//! Record parsers: chunks of lines, good and bad mixed, in every format. Each line is judged
//! alone by a reference built on serde_json (JSON) or Rust's number parser (CSV): the parser must
//! accept exactly the lines the reference accepts, with the reference's numbers, its `id` and
//! passthrough fields, in order; and reject every other line with its line number and a short
//! message. So a bad line never costs a good one.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use proptest::prelude::*;
use serde_json::Value;
use subpass::config::PipelineConfig;
use subpass::io::{
    token_estimate, InputFormat, LineText, ParsedChunk, RawLine, RecordKey, RecordParser,
    TextTokenizer,
};

use crate::{config, flushed, root, same_as_serde};

/// An error line quotes at most a short piece of the input, however long the line.
const MAX_ERROR_CHARS: usize = 400;

/// The record parser of configs/mlp.yaml (784 numbers in field `x`).
fn mlp() -> &'static RecordParser {
    static PARSER: OnceLock<RecordParser> = OnceLock::new();
    PARSER.get_or_init(|| {
        let c = PipelineConfig::load(&root().join("configs/mlp.yaml")).expect("mlp.yaml");
        assert_eq!(
            c.input.shape,
            [MLP_LEN],
            "the generators write mlp.yaml's records"
        );
        RecordParser::new(
            &c.input.shape,
            &c.input.field,
            &c.output.passthrough,
            InputFormat::JsonLines,
        )
    })
}

const MLP_LEN: usize = 784;
/// A shape with nesting, and a passthrough field, for the nesting mutations.
const NESTED: [usize; 3] = [2, 2, 3];
/// A small shape, so that lines made of random JSON tokens are sometimes records.
const TINY: [usize; 2] = [1, 2];

fn parser(shape: &[usize], format: InputFormat) -> RecordParser {
    RecordParser::new(shape, "x", &["tag".to_string()], format)
}

// ---------------------------------------------------------------------------------------------
// The reference.

/// A record as the reference reads it: its numbers as serde_json reads them (f64), its `id`, and
/// its `tag` (the passthrough field).
#[derive(Debug)]
struct Expected {
    numbers: Vec<f64>,
    id: Option<Value>,
    tag: Option<Value>,
}

/// A JSON line as serde_json reads it: a bare array, or an object whose `x` is one; the array
/// flat or nested exactly as `shape`; every number finite in f32.
fn reference_json(line: &[u8], shape: &[usize]) -> Option<Expected> {
    let text = std::str::from_utf8(line).ok()?;
    let (x, id, tag) = match serde_json::from_str::<Value>(text).ok()? {
        v @ Value::Array(_) => (v, None, None),
        Value::Object(mut m) => (m.remove("x")?, m.remove("id"), m.remove("tag")),
        _ => return None,
    };
    let mut numbers = Vec::new();
    let flat = x.as_array()?.iter().all(Value::is_number);
    if flat {
        numbers.extend(x.as_array()?.iter().map(|n| n.as_f64().unwrap()));
        if numbers.len() != shape.iter().product::<usize>() {
            return None;
        }
    } else {
        nested(&x, shape, &mut numbers)?;
    }
    // Past f32's range is refused (rounding the f64 may overflow where the decimal does not
    // only at the exact midpoint above f32::MAX, which these generators do not write).
    numbers
        .iter()
        .all(|n| (*n as f32).is_finite())
        .then_some(Expected { numbers, id, tag })
}

fn nested(v: &Value, shape: &[usize], out: &mut Vec<f64>) -> Option<()> {
    let items = v.as_array()?;
    if items.len() != shape[0] {
        return None;
    }
    for item in items {
        if shape.len() == 1 {
            out.push(item.as_f64()?);
        } else {
            nested(item, &shape[1..], out)?;
        }
    }
    Some(())
}

/// A CSV row as Rust reads it: comma-separated fields, spaces and one pair of quotes around a
/// field ignored, each read by `str::parse::<f32>` and finite.
fn reference_csv(line: &[u8], len: usize) -> Option<Vec<f32>> {
    let text = std::str::from_utf8(line).ok()?;
    let mut out = Vec::new();
    for field in text.split(',') {
        let field = field.trim_ascii();
        let field = field
            .strip_prefix('"')
            .and_then(|f| f.strip_suffix('"'))
            .unwrap_or(field);
        match field.parse::<f32>() {
            Ok(v) if v.is_finite() => out.push(flushed(v)),
            _ => return None,
        }
    }
    (out.len() == len).then_some(out)
}

/// Parse `lines` as one chunk and check it line by line against `reference`.
fn check_json_chunk(
    parser: &RecordParser,
    shape: &[usize],
    lines: &[RawLine],
) -> Result<(), TestCaseError> {
    let parsed = parser.parse_chunk(lines, Instant::now(), false);
    let len: usize = shape.iter().product();
    let mut records = parsed.meta.records.iter();
    let mut rejected = parsed.meta.rejected.iter();
    let mut row = 0;
    for line in lines {
        let expected = match &line.text {
            LineText::Bytes(b) => reference_json(b, shape),
            LineText::TooLong(_) => None,
        };
        let shown = show(line);
        match expected {
            Some(e) => {
                let meta = records
                    .next()
                    .ok_or_else(|| TestCaseError::fail(format!("lost: {shown}")))?;
                prop_assert_eq!(meta.line, line.number, "{}", shown);
                let values = &parsed.values[row * len..(row + 1) * len];
                for (i, (ours, wide)) in values.iter().zip(&e.numbers).enumerate() {
                    prop_assert!(
                        same_as_serde(*ours, *wide),
                        "value {} read as {}, serde_json reads {}: {}",
                        i,
                        ours,
                        wide,
                        shown
                    );
                }
                match (&meta.key, &e.id) {
                    (RecordKey::Id(raw), Some(id)) => {
                        prop_assert_eq!(&serde_json::from_str::<Value>(raw.get()).unwrap(), id)
                    }
                    (RecordKey::Line(n), None) => prop_assert_eq!(*n, line.number),
                    (key, id) => prop_assert!(false, "key {:?}, id {:?}: {}", key, id, shown),
                }
                let tag = meta.passthrough.first().cloned().flatten();
                let tag = tag.map(|raw| serde_json::from_str::<Value>(raw.get()).unwrap());
                if !meta.passthrough.is_empty() {
                    prop_assert_eq!(tag, e.tag, "{}", shown);
                }
                row += 1;
            }
            None => {
                let r = rejected.next().ok_or_else(|| {
                    TestCaseError::fail(format!("accepted, but serde_json says no: {shown}"))
                })?;
                check_rejection(r.line, &r.error, line)?;
            }
        }
    }
    prop_assert!(records.next().is_none() && rejected.next().is_none());
    prop_assert_eq!(parsed.values.len(), row * len);
    prop_assert!(parsed.seqs.is_none());
    Ok(())
}

fn check_rejection(number: u64, error: &str, line: &RawLine) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        number,
        line.number,
        "rejection out of place: {}",
        show(line)
    );
    prop_assert!(!error.is_empty());
    prop_assert!(
        error.chars().count() <= MAX_ERROR_CHARS,
        "an error of {} chars: {}",
        error.chars().count(),
        error
    );
    Ok(())
}

/// A line for messages: its number and start.
fn show(line: &RawLine) -> String {
    match &line.text {
        LineText::Bytes(b) => {
            let text = String::from_utf8_lossy(b);
            let head: String = text.chars().take(300).collect();
            format!("line {} ({} bytes): {head}", line.number, b.len())
        }
        LineText::TooLong(n) => format!("line {}: too long ({n} bytes)", line.number),
    }
}

/// Number the lines as a reader does: increasing, with gaps where blank lines were skipped.
fn numbered(lines: Vec<(LineText, u8)>) -> Vec<RawLine> {
    let mut number = 0;
    lines
        .into_iter()
        .map(|(text, gap)| {
            number += 1 + u64::from(gap % 3);
            RawLine { number, text }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Valid records and their mutations.

/// A number as record files write it.
fn number() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        3 => (-10000i32..=10000).prop_map(|i| i as f32 / 10000.0),
        1 => (0u32..=255).prop_map(|i| i as f32),
        2 => any::<u32>().prop_map(|b| f32::from_bits(b % 0x7f80_0000) * if b % 2 == 0 { 1.0 } else { -1.0 }),
    ];
    (value, 0u8..6).prop_map(|(v, style)| match style {
        0 => ryu::Buffer::new().format_finite(v).to_string(),
        1 => format!("{v:.4}"),
        2 => format!("{v:e}"),
        3 => format!("{}", f64::from(v) * 1.000_000_001),
        4 => format!("{:.1}", v.round()),
        _ => format!("{:.15}", f64::from(v)),
    })
}

/// Any JSON value, for extra fields and ids.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((".{0,6}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// An object's fields, in order.
type Fields = Vec<(String, Value)>;

/// A valid record before rendering: its number tokens (one per value, or nested rows of them),
/// and, for an object line, its other fields.
#[derive(Debug, Clone)]
struct Record {
    numbers: Vec<String>,
    /// `None`: a bare array; otherwise the fields before and after `x`.
    object: Option<(Fields, Fields)>,
    /// Separator between values (`,`, `, `, ` ,\t`).
    comma: &'static str,
    /// Write the key `x` as `"\u0078"`.
    escaped_key: bool,
    /// The rows to nest the values into (`[2, 2, 3]` or none).
    nest: Vec<usize>,
}

/// A number of at most eight bytes after its sign, as pixel data and rounded features are
/// written: what the AVX-512 path for flat arrays values itself (it hands longer ones on). All
/// are JSON numbers, so that a line breaks only where `mutation()` breaks it, one token at a
/// time: a bad token among good ones is what the path must not let through.
fn short_number() -> impl Strategy<Value = String> {
    prop_oneof![
        // Python's json.dumps of values rounded to 3 or 4 decimals (0.5, 0.56, 0.506, -0.5012).
        4 => (-10000i32..=10000).prop_map(|i| format!("{}", f64::from(i) / 10000.0)),
        2 => (0u32..=255).prop_map(|i| i.to_string()),
        // Eight significant digits with the dot anywhere: values the f64 product rounds hardest.
        2 => (0u32..100_000_000, 0usize..9, any::<bool>()).prop_map(|(m, dot, negative)| {
            let digits = format!("{m:08}");
            let digits = digits.trim_start_matches('0');
            let digits = if digits.is_empty() { "0" } else { digits };
            let at = dot.min(digits.len());
            let text = if at == 0 || at == digits.len() {
                digits.to_string()
            } else {
                format!("{}.{}", &digits[..at], &digits[at..])
            };
            if negative { format!("-{text}") } else { text }
        }),
        1 => "-?(0|[1-9][0-9]{0,2})(\\.[0-9]{1,4})?",
    ]
}

/// A valid record of `len` values drawn from `number`.
fn record_of(
    len: usize,
    nest: Vec<usize>,
    number: BoxedStrategy<String>,
) -> impl Strategy<Value = Record> {
    let field = (
        prop_oneof![
            Just("id".to_string()),
            Just("tag".to_string()),
            "[a-z]{1,6}",
            ".{0,6}",
            "[a-z]{500,600}"
        ],
        json_value(),
    );
    (
        prop::collection::vec(number, len),
        prop::option::of((
            prop::collection::vec(field.clone(), 0..3),
            prop::collection::vec(field, 0..3),
        )),
        prop::sample::select(vec![",", ", ", " ,\t"]),
        any::<bool>(),
    )
        .prop_map(move |(numbers, object, comma, escaped_key)| Record {
            // A field named `x` besides the record's would make it a different record.
            object: object.map(|(a, b)| {
                let keep = |f: &(String, Value)| f.0 != "x";
                (
                    a.into_iter().filter(keep).collect(),
                    b.into_iter().filter(keep).collect(),
                )
            }),
            numbers,
            comma,
            escaped_key,
            nest: nest.clone(),
        })
}

impl Record {
    fn array(&self) -> String {
        fn rows(tokens: &[String], shape: &[usize], comma: &str) -> String {
            if shape.len() <= 1 {
                return format!("[{}]", tokens.join(comma));
            }
            let step = tokens.len() / shape[0];
            let inner: Vec<String> = tokens
                .chunks(step.max(1))
                .map(|c| rows(c, &shape[1..], comma))
                .collect();
            format!("[{}]", inner.join(comma))
        }
        rows(&self.numbers, &self.nest, self.comma)
    }

    fn render(&self) -> String {
        let array = self.array();
        match &self.object {
            None => array,
            Some((before, after)) => {
                let key = if self.escaped_key {
                    "\"\\u0078\""
                } else {
                    "\"x\""
                };
                let mut fields: Vec<String> = before
                    .iter()
                    .map(|(k, v)| format!("{}: {v}", Value::from(k.as_str())))
                    .collect();
                fields.push(format!("{key}: {array}"));
                fields.extend(
                    after
                        .iter()
                        .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str()))),
                );
                format!("{{{}}}", fields.join(self.comma))
            }
        }
    }
}

/// How a record is broken (or, for some, kept valid in an unusual way).
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace value `i` by a token: `NaN`, `1e999`, `-0`, `"1"`, ...
    Replace(usize, &'static str),
    /// Wrap value `i` in brackets.
    NestValue(usize),
    /// Wrap the whole array once more.
    NestArray,
    DropValue(usize),
    DuplicateValue(usize),
    /// Rename the record field, so the object lacks it.
    DropField,
    /// Give `x` twice, the second time with this value.
    RepeatField(Value),
    /// Cut the line after `n` bytes.
    Truncate(usize),
    /// Put a byte in at a position (not UTF-8, a quote, a bracket...).
    InsertByte(usize, u8),
    /// Put something before the line: a form feed, a BOM, spaces.
    Prefix(&'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop::sample::select(vec![
        "NaN",
        "1e999",
        "-1e999",
        "Infinity",
        "-0",
        "-0.0",
        "\"1\"",
        "null",
        "true",
        "1e39",
        "3.4028236e38",
        "1e-50",
        "0x1",
        "01",
        "1.",
        ".5",
        "+1",
        "[]",
        "{}",
        "1 2",
        "",
        "1.2.3",
        "--1",
        "-",
        "00",
        "-01",
        "0.",
        "1,",
        ",",
        "1e5",
    ]);
    prop_oneof![
        4 => (any::<usize>(), token).prop_map(|(i, t)| Mutation::Replace(i, t)),
        1 => any::<usize>().prop_map(Mutation::NestValue),
        1 => Just(Mutation::NestArray),
        1 => any::<usize>().prop_map(Mutation::DropValue),
        1 => any::<usize>().prop_map(Mutation::DuplicateValue),
        1 => Just(Mutation::DropField),
        1 => json_value().prop_map(Mutation::RepeatField),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (
            any::<usize>(),
            prop::sample::select(b"\xff\xc3\x80\"[]{},:\\ \x0c\x00x".to_vec())
        )
            .prop_map(|(i, b)| Mutation::InsertByte(i, b)),
        1 => prop::sample::select(vec!["\x0c", "\u{feff}", " \t", "\r"]).prop_map(Mutation::Prefix),
    ]
}

fn apply(record: &Record, mutation: &Mutation) -> Vec<u8> {
    let mut r = record.clone();
    let n = r.numbers.len();
    match mutation {
        Mutation::Replace(i, t) => r.numbers[i % n] = t.to_string(),
        Mutation::NestValue(i) => r.numbers[i % n] = format!("[{}]", r.numbers[i % n]),
        Mutation::DropValue(i) => {
            r.numbers.remove(i % n);
        }
        Mutation::DuplicateValue(i) => r.numbers.insert(i % n, r.numbers[i % n].clone()),
        Mutation::NestArray => {
            let array = r.array();
            return match &r.object {
                None => format!("[{array}]").into_bytes(),
                Some(_) => {
                    let line = r.render();
                    line.replacen(&array, &format!("[{array}]"), 1).into_bytes()
                }
            };
        }
        Mutation::DropField => {
            r.escaped_key = false;
            if r.object.is_some() {
                return r.render().replacen("\"x\":", "\"y\":", 1).into_bytes();
            }
        }
        Mutation::RepeatField(v) => {
            if r.object.is_some() {
                let line = r.render();
                // Appended by hand: a map in `Record` could not hold `x` twice.
                let body = line.strip_suffix('}').unwrap_or(&line);
                return format!("{body}, \"x\": {v}}}").into_bytes();
            }
        }
        Mutation::Truncate(at) => {
            let mut bytes = r.render().into_bytes();
            bytes.truncate(at % bytes.len().max(1));
            return bytes;
        }
        Mutation::InsertByte(at, b) => {
            let mut bytes = r.render().into_bytes();
            bytes.insert(at % (bytes.len() + 1), *b);
            return bytes;
        }
        Mutation::Prefix(p) => return format!("{p}{}", r.render()).into_bytes(),
    }
    r.render().into_bytes()
}

/// A line of a chunk: a record, maybe mutated; or a line too long to keep.
fn json_line(len: usize, nest: Vec<usize>) -> impl Strategy<Value = (LineText, u8)> {
    json_line_of(len, nest, number().boxed())
}

fn json_line_of(
    len: usize,
    nest: Vec<usize>,
    number: BoxedStrategy<String>,
) -> impl Strategy<Value = (LineText, u8)> {
    prop_oneof![
        8 => (record_of(len, nest, number), prop::option::weighted(0.6, mutation()), any::<u8>())
            .prop_map(|(r, m, gap)| {
                let bytes = match &m {
                    Some(m) => apply(&r, m),
                    None => r.render().into_bytes(),
                };
                (LineText::Bytes(bytes), gap)
            }),
        1 => (1usize..1 << 30, any::<u8>()).prop_map(|(n, gap)| (LineText::TooLong(n), gap)),
    ]
}

/// Lines of random JSON tokens, bytes that are not UTF-8 among them.
fn token_line() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "[", "]", "{", "}", ",", ":", " ", "\"x\"", "\"id\"", "\"tag\"", "\"", "\\", "1", "-2.5",
        "1e3", "0", "-0", "1e999", "NaN", "null", "true", "\"s\"", "\u{c}", "\t", "\u{e9}",
        "\u{0}", "\\u0078", "\\ud800", "\u{ff}",
    ]);
    prop_oneof![
        4 => prop::collection::vec(token, 0..16).prop_map(|t| t.concat().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..32),
    ]
}

// ---------------------------------------------------------------------------------------------
// Text.

struct Text {
    /// `--format text` and JSON lines whose `text` field holds the text, for configs/minilm.yaml.
    plain: RecordParser,
    json: RecordParser,
    /// The same with `max_tokens: 8`, so that truncation happens often.
    short: RecordParser,
    max_tokens: usize,
}

/// The parsers of configs/minilm.yaml's text input, if its tokenizer has been fetched.
fn text() -> Option<&'static Text> {
    static TEXT: OnceLock<Option<Text>> = OnceLock::new();
    TEXT.get_or_init(|| {
        let path = root().join("configs/minilm.yaml");
        let c = PipelineConfig::load(&path).expect("minilm.yaml");
        let t = c.input.text.as_ref().expect("minilm.yaml takes text");
        if !t.tokenizer.exists() {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED: {} is missing; run `bash tools/fetch_models.sh`",
                t.tokenizer.display()
            );
            return None;
        }
        let tokenizer = Arc::new(TextTokenizer::load(&t.tokenizer, t.max_tokens).unwrap());
        let short = Arc::new(TextTokenizer::load(&t.tokenizer, 8).unwrap());
        let new = |format, t: &Arc<TextTokenizer>| {
            RecordParser::new(&c.input.shape, &c.input.field, &[], format).with_tokenizer(t.clone())
        };
        Some(Text {
            plain: new(InputFormat::Text, &tokenizer),
            json: new(InputFormat::JsonLines, &tokenizer),
            short: new(InputFormat::Text, &short),
            max_tokens: t.max_tokens,
        })
    })
    .as_ref()
}

/// Text as users write it, and as it should not be.
fn text_line() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("hello world".to_string()),
        Just("naïve café".to_string()),
        Just("東京都 北京".to_string()),
        Just("안녕하세요 각".to_string()),
        Just("👩‍👩‍👧 🇫🇷".to_string()),
        Just("İstanbul ǅ ß ﬃ".to_string()),
        Just("e\u{301}\u{302}\u{303}".to_string()),
        Just("\u{200b}\u{feff}\u{202e}".to_string()),
        Just("a".repeat(150)),
        Just("!?.,;:-".to_string()),
        Just("\t \u{0}\u{1f}".to_string()),
        "[a-z]{1,12}",
        ".{0,20}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|p| p.join(" "))
}

fn check_text_chunk(
    parser: &RecordParser,
    max_tokens: usize,
    lines: &[RawLine],
) -> Result<ParsedChunk, TestCaseError> {
    let parsed = parser.parse_chunk(lines, Instant::now(), false);
    let seqs = parsed.seqs.clone().expect("text chunks have offsets");
    prop_assert_eq!(seqs.len(), parsed.meta.records.len() + 1);
    prop_assert_eq!(seqs[0], 0);
    prop_assert_eq!(*seqs.last().unwrap(), parsed.values.len());
    let mut records = parsed.meta.records.iter().zip(seqs.windows(2));
    let mut rejected = parsed.meta.rejected.iter();
    for line in lines {
        match &line.text {
            LineText::Bytes(b) if std::str::from_utf8(b).is_ok() => {
                let (meta, span) = records
                    .next()
                    .ok_or_else(|| TestCaseError::fail(format!("lost: {}", show(line))))?;
                prop_assert_eq!(meta.line, line.number);
                let n = span[1] - span[0];
                // [CLS] and [SEP] at least; the chunker's estimate must hold, or a chunk
                // would overrun its token budget.
                prop_assert!(n >= 2 && n <= max_tokens, "{} tokens: {}", n, show(line));
                prop_assert!(
                    n <= token_estimate(b.len(), max_tokens),
                    "{} tokens, estimated {}: {}",
                    n,
                    token_estimate(b.len(), max_tokens),
                    show(line)
                );
                for id in &parsed.values[span[0]..span[1]] {
                    prop_assert!(
                        *id >= 0.0 && *id < 30522.0 && id.fract() == 0.0,
                        "id {}",
                        id
                    );
                }
            }
            _ => {
                let r = rejected
                    .next()
                    .ok_or_else(|| TestCaseError::fail(format!("accepted: {}", show(line))))?;
                check_rejection(r.line, &r.error, line)?;
            }
        }
    }
    prop_assert!(records.next().is_none() && rejected.next().is_none());
    Ok(parsed)
}

// ---------------------------------------------------------------------------------------------
// The properties.

proptest! {
    #![proptest_config(config(6))]

    /// configs/mlp.yaml's records, valid and mutated, in chunks: each line accepted with
    /// serde_json's numbers and id, or rejected in place; no line lost or invented.
    #[test]
    fn mlp_json_lines_match_serde_json(
        lines in prop::collection::vec(json_line(MLP_LEN, vec![]), 1..8),
    ) {
        check_json_chunk(mlp(), &[MLP_LEN], &numbered(lines))?;
    }

    /// The same with numbers of at most eight bytes, which the AVX-512 path values eight at a
    /// time where the CPU has it: its values, and the lines it hands back to the scalar scanner
    /// (broken ones, and their error messages), are the same as serde_json's.
    #[test]
    fn mlp_short_decimal_lines_match_serde_json(
        lines in prop::collection::vec(json_line_of(MLP_LEN, vec![], short_number().boxed()), 1..8),
    ) {
        check_json_chunk(mlp(), &[MLP_LEN], &numbered(lines))?;
    }
}

proptest! {
    #![proptest_config(config(8))]

    /// The same on a nested shape with a passthrough field: flat or exactly nested arrays,
    /// nesting mutations, `tag` echoed as serde_json reads it.
    #[test]
    fn nested_json_lines_match_serde_json(
        lines in prop::collection::vec(
            prop_oneof![json_line(12, NESTED.to_vec()), json_line(12, vec![])],
            1..8,
        ),
    ) {
        check_json_chunk(&parser(&NESTED, InputFormat::JsonLines), &NESTED, &numbered(lines))?;
    }

    /// Lines of random JSON tokens and bytes, for a record of two numbers.
    #[test]
    fn random_json_lines_match_serde_json(
        lines in prop::collection::vec((token_line(), any::<u8>()), 1..10),
    ) {
        let lines = lines.into_iter().map(|(b, gap)| (LineText::Bytes(b), gap)).collect();
        check_json_chunk(&parser(&TINY, InputFormat::JsonLines), &TINY, &numbered(lines))?;
    }
}

/// A CSV row of `len` numbers, maybe broken.
fn csv_line(len: usize) -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        6 => number(),
        1 => number().prop_map(|n| format!("\"{n}\"")),
        1 => number().prop_map(|n| format!(" {n}\t")),
        1 => prop::sample::select(vec![
            "", "nan", "inf", "-inf", "+1", "1.", ".5", "1e", "x", "\"", "\"1", "1e999", "1,5",
            "\u{ff}", "0x10", "1 2", "\u{feff}1",
        ])
        .prop_map(String::from),
    ];
    (prop::collection::vec(field, len - 1..=len + 1), any::<u8>()).prop_map(|(fields, extra)| {
        let mut line = fields.join(",").into_bytes();
        if extra % 7 == 0 {
            line.push(b',');
        }
        if extra % 11 == 0 {
            line.insert(usize::from(extra) % (line.len() + 1), 0xff);
        }
        line
    })
}

proptest! {
    #![proptest_config(config(6))]

    /// CSV rows, good and broken, in chunks: each accepted with Rust's numbers or rejected in
    /// place; in the stream's first chunk the first row may be a header, which is skipped only
    /// if none of its fields is a number.
    #[test]
    fn csv_rows_match_rust_parse(
        len in prop::sample::select(vec![1usize, 3, MLP_LEN]),
        header in prop::option::of(prop::sample::select(vec![
            "a,b,c", "x0,x1", "pixel", "label,1,2", "\"x\",\"y\",\"z\"", "1,2,x",
        ])),
        seed_lines in prop::collection::vec((any::<u8>(), any::<u64>()), 1..6),
        rows in prop::collection::vec(csv_line(3), 6),
        long_rows in prop::collection::vec(csv_line(MLP_LEN), 2),
    ) {
        let parser = RecordParser::new(&[len], "x", &[], InputFormat::Csv);
        let mut lines: Vec<(LineText, u8)> = Vec::new();
        if let Some(h) = header {
            lines.push((LineText::Bytes(h.as_bytes().to_vec()), 0));
        }
        for (gap, pick) in seed_lines {
            let bytes = if len == MLP_LEN {
                long_rows[pick as usize % long_rows.len()].clone()
            } else {
                rows[pick as usize % rows.len()].clone()
            };
            lines.push((LineText::Bytes(bytes), gap));
        }
        let lines = numbered(lines);
        let parsed = parser.parse_chunk(&lines, Instant::now(), true);
        let mut records = parsed.meta.records.iter();
        let mut rejected = parsed.meta.rejected.iter();
        let mut row = 0;
        for (i, line) in lines.iter().enumerate() {
            let LineText::Bytes(b) = &line.text else { unreachable!() };
            match reference_csv(b, len) {
                Some(values) => {
                    let meta = records
                        .next()
                        .ok_or_else(|| TestCaseError::fail(format!("lost: {}", show(line))))?;
                    prop_assert_eq!(meta.line, line.number);
                    let got = &parsed.values[row * len..(row + 1) * len];
                    for (g, w) in got.iter().zip(&values) {
                        prop_assert_eq!(g.to_bits(), w.to_bits(), "{}", show(line));
                    }
                    row += 1;
                }
                None => {
                    let header_row = i == 0
                        && std::str::from_utf8(b).is_ok_and(|t| {
                            t.split(',').all(|f| reference_csv(f.as_bytes(), 1).is_none())
                        });
                    if !header_row {
                        let r = rejected.next().ok_or_else(|| {
                            TestCaseError::fail(format!("accepted or dropped: {}", show(line)))
                        })?;
                        check_rejection(r.line, &r.error, line)?;
                    }
                }
            }
        }
        prop_assert!(records.next().is_none() && rejected.next().is_none());
        prop_assert_eq!(parsed.values.len(), row * len);
    }
}

proptest! {
    #![proptest_config(config(8))]

    /// Text lines: every UTF-8 line is a record of 2..=max_tokens token ids, within the
    /// chunker's estimate; every other line is rejected in place. The same text inside a JSON
    /// object gives the same ids.
    #[test]
    fn text_lines_tokenize_within_bounds(
        lines in prop::collection::vec(
            prop_oneof![
                6 => text_line().prop_map(String::into_bytes),
                1 => prop::collection::vec(any::<u8>(), 0..40),
                1 => text_line().prop_map(|t| {
                    let mut b = t.into_bytes();
                    b.push(0xc3);
                    b
                }),
            ].prop_flat_map(|b| (Just(b), any::<u8>())),
            1..8,
        ),
    ) {
        let Some(text) = text() else { return Ok(()) };
        let bytes: Vec<Vec<u8>> = lines.iter().map(|(b, _)| b.clone()).collect();
        let lines = numbered(lines.into_iter().map(|(b, g)| (LineText::Bytes(b), g)).collect());
        let plain = check_text_chunk(&text.plain, text.max_tokens, &lines)?;
        check_text_chunk(&text.short, 8, &lines)?;

        // Each UTF-8 line again as a JSON object's `text` field: the same ids.
        let as_json: Vec<RawLine> = lines
            .iter()
            .zip(&bytes)
            .filter_map(|(l, b)| {
                let t = std::str::from_utf8(b).ok()?;
                let line = serde_json::json!({"id": l.number, "text": t}).to_string();
                Some(RawLine { number: l.number, text: LineText::Bytes(line.into_bytes()) })
            })
            .collect();
        let json = text.json.parse_chunk(&as_json, Instant::now(), false);
        prop_assert!(json.meta.rejected.is_empty(), "{:?}", json.meta.rejected);
        prop_assert_eq!(&json.values, &plain.values);
        prop_assert_eq!(json.seqs, plain.seqs);
    }

    /// JSON lines for a text pipeline: mutated objects around a text field are accepted only
    /// when serde_json reads the field as a string; the rest are rejected in place.
    #[test]
    fn json_text_fields_match_serde_json(
        lines in prop::collection::vec(
            (text_line(), json_value(), any::<usize>(), prop::option::of(mutation()))
                .prop_flat_map(|l| (Just(l), any::<u8>())),
            1..6,
        ),
    ) {
        let Some(text) = text() else { return Ok(()) };
        let lines: Vec<(LineText, u8)> = lines
            .into_iter()
            .map(|((t, other, pick, m), gap)| {
                let field = if pick % 4 == 0 { other } else { Value::String(t) };
                let mut line = serde_json::json!({"id": pick % 100, "text": field})
                    .to_string()
                    .into_bytes();
                match m {
                    Some(Mutation::Truncate(at)) => line.truncate(at % line.len()),
                    Some(Mutation::InsertByte(at, b)) => line.insert(at % (line.len() + 1), b),
                    Some(Mutation::Prefix(p)) => line.splice(0..0, p.bytes()).for_each(drop),
                    _ => {}
                }
                (LineText::Bytes(line), gap)
            })
            .collect();
        let lines = numbered(lines);
        let parsed = text.json.parse_chunk(&lines, Instant::now(), false);
        let mut records = parsed.meta.records.iter();
        let mut rejected = parsed.meta.rejected.iter();
        for line in &lines {
            let LineText::Bytes(b) = &line.text else { unreachable!() };
            let string = std::str::from_utf8(b)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .and_then(|v| v.get("text").and_then(Value::as_str).map(String::from));
            match string {
                Some(_) => {
                    let meta = records
                        .next()
                        .ok_or_else(|| TestCaseError::fail(format!("lost: {}", show(line))))?;
                    prop_assert_eq!(meta.line, line.number);
                }
                None => {
                    let r = rejected
                        .next()
                        .ok_or_else(|| TestCaseError::fail(format!("accepted: {}", show(line))))?;
                    check_rejection(r.line, &r.error, line)?;
                }
            }
        }
        prop_assert!(records.next().is_none() && rejected.next().is_none());
    }
}
