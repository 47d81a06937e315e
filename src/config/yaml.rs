//! Reading YAML with located errors.
//!
//! `yaml-rust2`'s marked events build the document as a serde_yaml [`Value`] tree while recording
//! the line and column of every key path (`layers[3].kernel`); serde_yaml's own parser keeps no
//! positions and stops at the first duplicate key. [`Reader`] then walks the value tree, checks
//! every mapping's keys against what is allowed there, and *accumulates* errors instead of
//! stopping at the first, so a user fixes a whole file in one pass. Limits on nesting and on
//! what aliases copy keep any file's cost in proportion to its size (tests/fuzz tries hard).

use std::collections::HashMap;
use std::fmt;

use serde_yaml::{Mapping, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

/// One problem in a pipeline file, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Key path such as `layers[3].kernel`; empty for the document itself.
    pub path: String,
    /// 1-based line and column, when the parser knows them.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        match self.location {
            Some((line, col)) => write!(f, "{path} (line {line}, column {col}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Line and column of every key path in a document.
#[derive(Debug, Default)]
pub struct Spans {
    spans: HashMap<String, (usize, usize)>,
}

impl Spans {
    /// The location of `path`, or of its closest located ancestor (`layers[3].kernel` falls back
    /// to `layers[3]` when the key is missing altogether).
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(&loc) = self.spans.get(p) {
                return Some(loc);
            }
            match p.rfind(['.', '[']) {
                Some(cut) => p = &p[..cut],
                // A top-level key that is absent: point at the start of the document.
                None if !p.is_empty() => p = "",
                None => return None,
            }
        }
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A parsed document: its value tree, where each key path is, and the keys given twice.
pub struct Document {
    pub value: Value,
    pub spans: Spans,
    pub duplicates: Vec<ConfigError>,
}

impl Document {
    /// Parse YAML text (its first document). A syntax error, or a document past the limits
    /// ([`MAX_DEPTH`], [`MAX_ALIAS_VALUES`]), is returned with its line and column.
    pub fn parse(text: &str) -> Result<Document, ConfigError> {
        let mut loader = Loader::default();
        let mut parser = Parser::new_from_str(text);
        // Events one at a time: yaml-rust2's own `load` recurses once per level of nesting, so a
        // deep enough document would overflow the stack (an abort, not an error).
        loop {
            let (event, mark) = parser.next_token().map_err(|e| {
                let m = e.marker();
                ConfigError {
                    path: String::new(),
                    location: Some((m.line(), m.col() + 1)),
                    message: format!("YAML syntax: {}", e.info()),
                }
            })?;
            if matches!(event, Event::DocumentEnd | Event::StreamEnd) {
                break;
            }
            loader.on_event(event, mark)?;
        }
        let value = loader.root.unwrap_or(Value::Null);
        Ok(Document {
            value,
            spans: Spans {
                spans: loader.spans,
            },
            duplicates: loader.duplicates,
        })
    }
}

/// A collection being built, with the key path it sits at.
enum Frame {
    Map {
        path: String,
        map: Mapping,
        key: Option<(String, Value)>,
        anchor: usize,
        /// [`Loader::values`] before this collection, to count its own values.
        values_before: usize,
    },
    Seq {
        path: String,
        items: Vec<Value>,
        anchor: usize,
        values_before: usize,
    },
}

/// Levels of nesting allowed in a pipeline file (real ones use fewer than ten). Without a limit,
/// every level costs the key paths of all levels below it.
pub const MAX_DEPTH: usize = 64;

/// Values that aliases may copy in one document, all aliases together (a real file has a few
/// dozen). Without a limit, ten lines of nested aliases ("billion laughs") expand to billions.
pub const MAX_ALIAS_VALUES: usize = 100_000;

/// Bytes of a mapping key kept in key paths: real keys are short words, and a long key repeated
/// in the path of everything below it would cost its length for every value there.
const MAX_KEY_IN_PATH: usize = 64;

#[derive(Default)]
struct Loader {
    stack: Vec<Frame>,
    root: Option<Value>,
    spans: HashMap<String, (usize, usize)>,
    /// Each anchor's value and how many values it holds.
    anchors: HashMap<usize, (Value, usize)>,
    duplicates: Vec<ConfigError>,
    /// Values built so far, aliases' copies included.
    values: usize,
    /// Values copied by aliases so far.
    alias_values: usize,
}

/// A plain scalar as YAML 1.2's core schema reads it; quoted scalars are always strings.
fn resolve(text: String, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(text);
    }
    match Yaml::from_str(&text) {
        Yaml::Integer(i) => Value::Number(i.into()),
        Yaml::Real(r) => match r.parse::<f64>() {
            Ok(f) => Value::Number(f.into()),
            Err(_) => match r
                .trim_start_matches(['+', '-'])
                .to_ascii_lowercase()
                .as_str()
            {
                ".inf" => Value::Number(
                    (if r.starts_with('-') {
                        f64::NEG_INFINITY
                    } else {
                        f64::INFINITY
                    })
                    .into(),
                ),
                _ => Value::Number(f64::NAN.into()),
            },
        },
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Null => Value::Null,
        _ => Value::String(text),
    }
}

/// A key as it appears in key paths; cut short past [`MAX_KEY_IN_PATH`] bytes.
fn key_text(key: &Value) -> String {
    let mut text = match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    };
    if text.len() > MAX_KEY_IN_PATH {
        let mut cut = MAX_KEY_IN_PATH;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl Loader {
    /// The path of a node that starts now in value position.
    fn child_path(&mut self, loc: (usize, usize)) -> String {
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key, .. }) => match key {
                Some((k, _)) => join_key(path, k),
                None => format!("{path}.?"),
            },
            Some(Frame::Seq { path, items, .. }) => {
                let p = format!("{path}[{}]", items.len());
                self.spans.entry(p.clone()).or_insert(loc);
                p
            }
        }
    }

    /// Attach a finished node to its parent (or make it the document).
    fn attach(&mut self, value: Value, loc: (usize, usize)) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { path, map, key, .. }) => match key.take() {
                None => {
                    // A key: remember it; its value comes next.
                    let text = key_text(&value);
                    let p = join_key(path, &text);
                    if map.contains_key(&value) {
                        self.duplicates.push(ConfigError {
                            path: p.clone(),
                            location: Some(loc),
                            message: format!(
                                "duplicate key `{text}`: it is already given above (line {})",
                                self.spans.get(&p).map_or(0, |l| l.0)
                            ),
                        });
                    } else {
                        self.spans.insert(p, loc);
                    }
                    *key = Some((text, value));
                }
                Some((_, k)) => {
                    // The first occurrence of a duplicated key wins; the duplicate is reported.
                    if !map.contains_key(&k) {
                        map.insert(k, value);
                    }
                }
            },
        }
    }
}

impl Loader {
    /// Take in one parser event; `Err` when the document goes past a limit.
    fn on_event(&mut self, ev: Event, mark: Marker) -> Result<(), ConfigError> {
        let loc = (mark.line(), mark.col() + 1);
        let limit = |message: String| ConfigError {
            path: String::new(),
            location: Some(loc),
            message,
        };
        match ev {
            Event::Scalar(text, style, anchor, _) => {
                self.values += 1;
                let value = resolve(text, style);
                if matches!(self.stack.last(), Some(Frame::Seq { .. })) {
                    self.child_path(loc);
                }
                if anchor > 0 {
                    self.anchors.insert(anchor, (value.clone(), 1));
                }
                self.attach(value, loc);
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(limit(format!(
                        "values nested more than {MAX_DEPTH} levels deep"
                    )));
                }
                let path = self.child_path(loc);
                self.spans.entry(path.clone()).or_insert(loc);
                let values_before = self.values;
                self.values += 1;
                self.stack.push(match ev {
                    Event::MappingStart(..) => Frame::Map {
                        path,
                        map: Mapping::new(),
                        key: None,
                        anchor,
                        values_before,
                    },
                    _ => Frame::Seq {
                        path,
                        items: Vec::new(),
                        anchor,
                        values_before,
                    },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, anchor, values_before) = match self.stack.pop() {
                    Some(Frame::Map {
                        map,
                        anchor,
                        values_before,
                        ..
                    }) => (Value::Mapping(map), anchor, values_before),
                    Some(Frame::Seq {
                        items,
                        anchor,
                        values_before,
                        ..
                    }) => (Value::Sequence(items), anchor, values_before),
                    None => return Ok(()),
                };
                if anchor > 0 {
                    let size = self.values - values_before;
                    self.anchors.insert(anchor, (value.clone(), size));
                }
                self.attach(value, loc);
            }
            Event::Alias(anchor) => {
                // An anchor still open (an alias inside its own anchor) reads as null.
                let size = self.anchors.get(&anchor).map_or(1, |(_, size)| *size);
                self.alias_values += size;
                self.values += size;
                if self.alias_values > MAX_ALIAS_VALUES {
                    return Err(limit(format!(
                        "aliases (`*name`) copy more than {MAX_ALIAS_VALUES} values in this document"
                    )));
                }
                let value = self
                    .anchors
                    .get(&anchor)
                    .map_or(Value::Null, |(v, _)| v.clone());
                if matches!(self.stack.last(), Some(Frame::Seq { .. })) {
                    self.child_path(loc);
                }
                self.attach(value, loc);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Accumulates errors while the config is read.
pub struct Reader<'s> {
    spans: &'s Spans,
    pub errors: Vec<ConfigError>,
}

/// A mapping being read, with its key path.
pub struct Map<'v> {
    pub path: String,
    map: &'v Mapping,
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// The allowed name closest to a misspelt one, if it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let chars = word.chars().count();
    candidates
        .iter()
        // The distance is at least the difference in length: no need to compute it for a long word.
        .filter(|c| c.chars().count().abs_diff(chars) <= 2)
        .map(|c| (distance(word, c), *c))
        .filter(|(d, c)| *d <= 2 && *d < c.len())
        .min()
        .map(|(_, c)| c)
}

impl<'s> Reader<'s> {
    pub fn new(spans: &'s Spans) -> Self {
        Reader {
            spans,
            errors: Vec::new(),
        }
    }

    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_string(),
            location: self.spans.locate(path),
            message: message.into(),
        });
    }

    /// Read `value` as a mapping whose keys must be among `allowed`; every other key is an error.
    pub fn map<'v>(&mut self, value: &'v Value, path: &str, allowed: &[&str]) -> Option<Map<'v>> {
        let Value::Mapping(map) = value else {
            self.error(
                path,
                format!("expected a mapping, found {}", describe(value)),
            );
            return None;
        };
        for key in map.keys() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => {
                    let hint = match suggest(k, allowed) {
                        Some(s) => format!("did you mean `{s}`? "),
                        None => String::new(),
                    };
                    let k = key_text(key);
                    self.error(
                        &join_key(path, &k),
                        format!(
                            "unknown key `{k}`; {hint}expected one of: {}",
                            allowed.join(", ")
                        ),
                    );
                }
                None => self.error(
                    path,
                    format!("keys must be strings, found {}", describe(key)),
                ),
            }
        }
        Some(Map {
            path: path.to_string(),
            map,
        })
    }

    pub fn list<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v [Value]> {
        match value {
            Value::Sequence(items) => Some(items),
            other => {
                self.error(path, format!("expected a list, found {}", describe(other)));
                None
            }
        }
    }

    pub fn string(&mut self, value: &Value, path: &str) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.error(
                    path,
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    pub fn strings(&mut self, value: &Value, path: &str) -> Option<Vec<String>> {
        let items = self.list(value, path)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(item, &format!("{path}[{i}]")) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// An integer no smaller than `min`.
    pub fn integer(&mut self, value: &Value, path: &str, min: u64) -> Option<u64> {
        match value.as_u64() {
            Some(n) if n >= min => Some(n),
            Some(n) => {
                self.error(path, format!("must be at least {min}, found {n}"));
                None
            }
            None => {
                let found = match value.as_i64() {
                    Some(n) => n.to_string(),
                    None => describe(value).to_string(),
                };
                self.error(
                    path,
                    format!("expected an integer of at least {min}, found {found}"),
                );
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn integer_in(&mut self, value: &Value, path: &str, min: u64, max: u64) -> Option<u64> {
        let n = self.integer(value, path, min)?;
        if n > max {
            self.error(path, format!("must be at most {max}, found {n}"));
            return None;
        }
        Some(n)
    }

    /// An integer, or a `[h, w]` pair of integers, each no smaller than `min`.
    pub fn pair(&mut self, value: &Value, path: &str, min: u64) -> Option<[usize; 2]> {
        if let Value::Sequence(items) = value {
            if items.len() != 2 {
                self.error(
                    path,
                    format!(
                        "expected an integer or a [h, w] pair, found a list of {}",
                        items.len()
                    ),
                );
                return None;
            }
            let h = self.integer(&items[0], &format!("{path}[0]"), min);
            let w = self.integer(&items[1], &format!("{path}[1]"), min);
            return Some([h? as usize, w? as usize]);
        }
        let n = self.integer(value, path, min)? as usize;
        Some([n, n])
    }

    pub fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        match value {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(
                    path,
                    format!("expected true or false, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A finite number.
    pub fn finite_float(&mut self, value: &Value, path: &str) -> Option<f64> {
        match value.as_f64() {
            Some(x) if x.is_finite() => Some(x),
            Some(x) => {
                self.error(path, format!("must be a finite number, found {x}"));
                None
            }
            None => {
                self.error(
                    path,
                    format!("expected a number, found {}", describe(value)),
                );
                None
            }
        }
    }

    /// A finite number strictly greater than zero.
    pub fn positive_float(&mut self, value: &Value, path: &str) -> Option<f64> {
        match value.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Some(x),
            Some(x) => {
                self.error(path, format!("must be a positive number, found {x}"));
                None
            }
            None => {
                self.error(
                    path,
                    format!("expected a number, found {}", describe(value)),
                );
                None
            }
        }
    }
}

impl<'v> Map<'v> {
    pub fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key)
    }

    pub fn key_path(&self, key: &str) -> String {
        join_key(&self.path, key)
    }

    /// A key that must be present; reports it missing otherwise.
    pub fn require(&self, r: &mut Reader, key: &str, what: &str) -> Option<&'v Value> {
        let v = self.map.get(key);
        if v.is_none() {
            r.error(&self.path, format!("missing `{key}` ({what})"));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_locate_nested_keys_and_items() {
        let text = "a: 1\nlayers:\n  - {name: x, kernel: 3}\n  - name: y\n    kernel: 5\n";
        let spans = Document::parse(text).unwrap().spans;
        assert_eq!(spans.locate("a"), Some((1, 1)));
        assert_eq!(spans.locate("layers[0].kernel"), Some((3, 15)));
        assert_eq!(spans.locate("layers[1].kernel"), Some((5, 5)));
        // A missing key falls back to its parent.
        assert_eq!(spans.locate("layers[1].stride"), spans.locate("layers[1]"));
    }

    #[test]
    fn values_resolve_as_yaml_1_2_and_duplicates_are_found() {
        let doc = Document::parse("a: 1\nb: '1'\nc: 1.5\nd: true\ne: ~\nf: [x, &k 2, *k]\na: 2\n")
            .unwrap();
        let v = &doc.value;
        assert_eq!(v["a"], Value::Number(1.into()));
        assert_eq!(v["b"], Value::String("1".into()));
        assert_eq!(v["c"].as_f64(), Some(1.5));
        assert_eq!(v["d"], Value::Bool(true));
        assert!(v["e"].is_null());
        assert_eq!(v["f"][2], Value::Number(2.into()));
        assert_eq!(doc.duplicates.len(), 1);
        assert_eq!(doc.duplicates[0].path, "a");
        assert_eq!(doc.duplicates[0].location, Some((7, 1)));
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = Document::parse("a: [1, 2\nb: 3\n").err().unwrap();
        assert!(e.location.is_some());
        assert!(e.message.contains("YAML syntax"));
    }

    #[test]
    fn suggestion_finds_typos_only() {
        assert_eq!(suggest("kernal", &["kernel", "stride"]), Some("kernel"));
        assert_eq!(suggest("zzzzzz", &["kernel", "stride"]), None);
    }
}
