//! Reading YAML with located errors.
//!
//! `serde_yaml` parses the document into a [`Value`] tree but keeps no positions, so a second,
//! event-level pass with `yaml-rust2` records the line and column of every key path
//! (`layers[3].kernel`). [`Reader`] then walks the value tree, checks every mapping's keys against
//! what is allowed there, and *accumulates* errors instead of stopping at the first, so a user
//! fixes a whole file in one pass.

use std::collections::HashMap;
use std::fmt;

use serde_yaml::{Mapping, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

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
    /// Index a document. A document that does not parse yields an empty index: the syntax error
    /// itself comes from serde_yaml, with its own location.
    pub fn index(text: &str) -> Spans {
        let mut indexer = Indexer::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut indexer, false).is_err() {
            return Spans::default();
        }
        Spans {
            spans: indexer.spans,
        }
    }

    /// The location of `path`, or of its closest located ancestor (`layers[3].kernel` falls back
    /// to `layers[3]` when the key is missing altogether).
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(&loc) = self.spans.get(p) {
                return Some(loc);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Indexer {
    stack: Vec<Frame>,
    spans: HashMap<String, (usize, usize)>,
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Indexer {
    /// The path of a node that starts now in value position, advancing the parent's state.
    fn value_path(&mut self, mark: Marker) -> String {
        let loc = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => join_key(path, &k),
                // A non-scalar mapping key: not something a pipeline file uses.
                None => format!("{path}.?"),
            },
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.spans.entry(p.clone()).or_insert(loc);
                p
            }
        }
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let loc = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    if key.is_none() {
                        let p = join_key(path, &text);
                        self.spans.entry(p).or_insert(loc);
                        *key = Some(text);
                        return;
                    }
                }
                self.value_path(mark);
            }
            Event::MappingStart(..) => {
                let path = self.value_path(mark);
                self.spans.entry(path.clone()).or_insert(loc);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(mark);
                self.spans.entry(path.clone()).or_insert(loc);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.value_path(mark);
            }
            _ => {}
        }
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
    candidates
        .iter()
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
                    self.error(
                        &join_key(path, k),
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
        let spans = Spans::index(text);
        assert_eq!(spans.locate("a"), Some((1, 1)));
        assert_eq!(spans.locate("layers[0].kernel"), Some((3, 15)));
        assert_eq!(spans.locate("layers[1].kernel"), Some((5, 5)));
        // A missing key falls back to its parent.
        assert_eq!(spans.locate("layers[1].stride"), spans.locate("layers[1]"));
    }

    #[test]
    fn suggestion_finds_typos_only() {
        assert_eq!(suggest("kernal", &["kernel", "stride"]), Some("kernel"));
        assert_eq!(suggest("zzzzzz", &["kernel", "stride"]), None);
    }
}
