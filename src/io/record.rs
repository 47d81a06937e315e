//! Parsing records: JSON lines (a bare array, or an object holding the array in a field) and CSV
//! rows, into one contiguous `[rows, ...shape]` buffer per chunk.
//!
//! Arrays of numbers are read by a small scanner that hands each number to [`super::number`]
//! instead of building a generic JSON value tree; objects still go through serde_json, but only to
//! find their fields (`RawValue`, no allocation per number).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use serde_json::value::RawValue;

use super::flat_avx512::parse_flat;
use super::format::RecordKey;
use super::number::{parse_csv_number, parse_json_number};
use super::reader::{LineText, RawLine};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    JsonLines,
    Csv,
    /// One line, one text record, taken as it is (an empty line is an empty text).
    Text,
    /// One line, one image file's path (relative paths from the working directory).
    Paths,
}

/// What the output writer needs to know about one good record.
#[derive(Debug, Clone)]
pub struct RecordMeta {
    /// 1-based input line.
    pub line: u64,
    pub key: RecordKey,
    /// Raw JSON of each `output.passthrough` field, `None` where the record lacks it.
    pub passthrough: Vec<Option<Box<RawValue>>>,
}

/// A bad line: reported once, in input order, and the stream goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub line: u64,
    pub error: String,
}

/// Everything about a chunk except its tensors; travels from the parser to the output writer.
#[derive(Debug)]
pub struct ChunkMeta {
    /// One entry per row of the chunk's tensors.
    pub records: Vec<RecordMeta>,
    pub rejected: Vec<Rejection>,
    /// When the chunk was admitted, for latency figures.
    pub admitted_at: Instant,
}

/// A parsed chunk: `rows × input_len` values and the metadata of its records.
#[derive(Debug)]
pub struct ParsedChunk {
    pub values: Vec<f32>,
    /// For text: `records + 1` offsets, record `r` owning token rows `seqs[r]..seqs[r + 1]`.
    pub seqs: Option<Vec<usize>>,
    pub meta: ChunkMeta,
}

/// Turns raw lines into values for one pipeline's input shape.
#[derive(Debug, Clone)]
pub struct RecordParser {
    shape: Vec<usize>,
    len: usize,
    field: String,
    passthrough: Vec<String>,
    format: InputFormat,
    /// Text records: each becomes its token ids, one row per token.
    tokenizer: Option<std::sync::Arc<super::TextTokenizer>>,
    /// Image records: each file (or base64 string) becomes its preprocessed pixels.
    image: Option<std::sync::Arc<super::ImagePreprocess>>,
}

impl RecordParser {
    pub fn new(shape: &[usize], field: &str, passthrough: &[String], format: InputFormat) -> Self {
        RecordParser {
            shape: shape.to_vec(),
            len: shape.iter().product(),
            field: field.to_string(),
            passthrough: passthrough.to_vec(),
            format,
            tokenizer: None,
            image: None,
        }
    }

    /// Records are images, decoded and preprocessed by `image` (from the files named by
    /// `--format paths`, or from the base64 string in a JSON object's field).
    pub fn with_image(mut self, image: std::sync::Arc<super::ImagePreprocess>) -> Self {
        self.image = Some(image);
        self
    }

    /// Whether a line may be a bare array of the record's numbers: JSON lines of a numeric
    /// input (not text, not images).
    fn bare_arrays(&self) -> bool {
        self.format == InputFormat::JsonLines && self.tokenizer.is_none() && self.image.is_none()
    }

    /// Records are text, tokenized by `tokenizer` (in `--format text`, or in the string of a
    /// JSON object's field).
    pub fn with_tokenizer(mut self, tokenizer: std::sync::Arc<super::TextTokenizer>) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Parse a chunk's lines; bad lines become rejections and take no row.
    /// `first_chunk`: the chunk holds the stream's first line, which CSV may use as a header.
    pub fn parse_chunk(
        &self,
        lines: &[RawLine],
        admitted_at: Instant,
        first_chunk: bool,
    ) -> ParsedChunk {
        let mut values = Vec::with_capacity(lines.len() * self.len);
        let mut records = Vec::with_capacity(lines.len());
        let mut rejected = Vec::new();
        let mut seqs = self.tokenizer.as_ref().map(|_| {
            let mut s = Vec::with_capacity(lines.len() + 1);
            s.push(0);
            s
        });
        for (i, line) in lines.iter().enumerate() {
            let may_be_header = first_chunk && i == 0;
            let mark = values.len();
            let result = match &line.text {
                LineText::TooLong(n) => Err(format!(
                    "line is {n} bytes, longer than --max-line-bytes; skipped"
                )),
                LineText::Bytes(bytes) if self.format == InputFormat::Paths => {
                    self.parse_path(bytes, line.number, &mut values)
                }
                // A bare array of numbers read whole is ASCII, so valid UTF-8: checking that
                // first cost 1.3% of `subpass run`'s CPU on the MLP. Any other line (or an error
                // in this one) takes the path below, which words its error.
                LineText::Bytes(bytes)
                    if self.bare_arrays()
                        && parse_array(
                            trim_json_bytes(bytes),
                            &self.shape,
                            self.len,
                            &mut values,
                        )
                        .is_ok() =>
                {
                    Ok(Some(RecordMeta {
                        line: line.number,
                        key: RecordKey::Line(line.number),
                        passthrough: vec![None; self.passthrough.len()],
                    }))
                }
                LineText::Bytes(bytes) => match std::str::from_utf8(bytes) {
                    Err(e) => Err(format!(
                        "line is not valid UTF-8 (invalid byte at offset {})",
                        e.valid_up_to()
                    )),
                    Ok(text) => match (&self.tokenizer, self.format) {
                        (Some(t), InputFormat::Text) => tokenize(t, text, &mut values).map(|()| {
                            Some(RecordMeta {
                                line: line.number,
                                key: RecordKey::Line(line.number),
                                passthrough: vec![None; self.passthrough.len()],
                            })
                        }),
                        (Some(t), _) => self.parse_json_text(t, text, line.number, &mut values),
                        (None, InputFormat::JsonLines) if self.image.is_some() => {
                            self.parse_json_image(text, line.number, &mut values)
                        }
                        (None, InputFormat::JsonLines) => {
                            self.parse_json(text, line.number, &mut values)
                        }
                        (None, InputFormat::Csv) => {
                            self.parse_csv(text, line.number, may_be_header, &mut values)
                        }
                        (None, InputFormat::Text) => {
                            Err("--format text needs a pipeline whose input is text".to_string())
                        }
                        (None, InputFormat::Paths) => unreachable!("paths are handled above"),
                    },
                },
            };
            match result {
                Ok(Some(meta)) => {
                    records.push(meta);
                    if let Some(s) = &mut seqs {
                        s.push(values.len());
                    }
                }
                Ok(None) => values.truncate(mark), // a CSV header
                Err(error) => {
                    values.truncate(mark);
                    rejected.push(Rejection {
                        line: line.number,
                        error,
                    });
                }
            }
        }
        ParsedChunk {
            values,
            seqs,
            meta: ChunkMeta {
                records,
                rejected,
                admitted_at,
            },
        }
    }

    fn parse_json(
        &self,
        text: &str,
        number: u64,
        out: &mut Vec<f32>,
    ) -> Result<Option<RecordMeta>, String> {
        let trimmed = trim_json(text);
        match trimmed.as_bytes().first() {
            Some(b'[') => {
                parse_array(trimmed.as_bytes(), &self.shape, self.len, out)?;
                let passthrough = vec![None; self.passthrough.len()];
                Ok(Some(RecordMeta {
                    line: number,
                    key: RecordKey::Line(number),
                    passthrough,
                }))
            }
            Some(b'{') => {
                let mark = out.len();
                let (x, fields) = object_fields(
                    trimmed,
                    &self.field,
                    Some((&self.shape, self.len, &mut *out)),
                )
                .inspect_err(|_| out.truncate(mark))?;
                let x = x.ok_or_else(|| {
                    format!("object has no field `{}` holding the record", self.field)
                })?;
                if !x.starts_with('[') {
                    // Not an array: let the array parser say what it is instead.
                    parse_array(x.as_bytes(), &self.shape, self.len, out)
                        .map_err(|e| format!("field `{}`: {e}", self.field))?;
                }
                let raw = |name: &str| fields.get(name).map(|v| (*v).to_owned());
                let key = match raw("id") {
                    Some(id) => RecordKey::Id(id),
                    None => RecordKey::Line(number),
                };
                let passthrough = self.passthrough.iter().map(|f| raw(f)).collect();
                Ok(Some(RecordMeta {
                    line: number,
                    key,
                    passthrough,
                }))
            }
            _ => match serde_json::from_str::<serde_json::Value>(trimmed) {
                Err(e) => Err(format!("invalid JSON: {e}")),
                Ok(_) => Err("expected a JSON array of numbers or an object".to_string()),
            },
        }
    }

    /// A line of `--format paths`: the path of an image file, surrounding whitespace ignored.
    fn parse_path(
        &self,
        bytes: &[u8],
        number: u64,
        out: &mut Vec<f32>,
    ) -> Result<Option<RecordMeta>, String> {
        let Some(image) = &self.image else {
            return Err("--format paths needs a pipeline whose input is images".to_string());
        };
        let bytes = bytes.trim_ascii();
        let path = path_from_bytes(bytes)?;
        let shown = String::from_utf8_lossy(bytes);
        image
            .from_file(path, out)
            .map_err(|e| format!("{shown}: {e}"))?;
        let path_json = serde_json::to_string(&shown).expect("strings serialise");
        Ok(Some(RecordMeta {
            line: number,
            key: RecordKey::Path {
                line: number,
                path: RawValue::from_string(path_json).expect("a JSON string"),
            },
            passthrough: vec![None; self.passthrough.len()],
        }))
    }

    /// A JSON line of an image pipeline: an object whose `field` holds the image file's bytes in
    /// base64, or (as for any pipeline) the preprocessed values as an array.
    fn parse_json_image(
        &self,
        text: &str,
        number: u64,
        out: &mut Vec<f32>,
    ) -> Result<Option<RecordMeta>, String> {
        let image = self.image.as_ref().expect("called for image pipelines");
        let trimmed = text.trim_ascii();
        if !trimmed.starts_with('{') {
            return self.parse_json(text, number, out);
        }
        let mark = out.len();
        let (x, fields) = object_fields(
            trimmed,
            &self.field,
            Some((&self.shape, self.len, &mut *out)),
        )
        .inspect_err(|_| out.truncate(mark))?;
        let x = x.ok_or_else(|| {
            format!(
                "object has no field `{}` holding the image (its file's bytes in base64)",
                self.field
            )
        })?;
        if !x.starts_with('[') {
            let field = &self.field;
            if !x.starts_with('"') {
                return Err(format!(
                    "field `{field}` must hold the image file's bytes in base64 (a string), found {}",
                    abbreviate(x)
                ));
            }
            // Base64 has nothing to escape; an escaped `/` (`\/`) costs a copy.
            let decoded: std::borrow::Cow<str> = match serde_json::from_str::<&str>(x) {
                Ok(s) => s.into(),
                Err(_) => serde_json::from_str::<String>(x)
                    .map_err(|e| format!("field `{field}`: invalid JSON string: {e}"))?
                    .into(),
            };
            image
                .from_base64(&decoded, out)
                .map_err(|e| format!("field `{field}`: {e}"))?;
        }
        let raw = |name: &str| fields.get(name).map(|v| (*v).to_owned());
        let key = match raw("id") {
            Some(id) => RecordKey::Id(id),
            None => RecordKey::Line(number),
        };
        Ok(Some(RecordMeta {
            line: number,
            key,
            passthrough: self.passthrough.iter().map(|f| raw(f)).collect(),
        }))
    }

    /// A JSON object whose `field` holds the record's text.
    fn parse_json_text(
        &self,
        tokenizer: &super::TextTokenizer,
        text: &str,
        number: u64,
        out: &mut Vec<f32>,
    ) -> Result<Option<RecordMeta>, String> {
        let trimmed = trim_json(text);
        if !trimmed.starts_with('{') {
            return Err(format!(
                "expected a JSON object whose `{}` field holds the text (or use --format text)",
                self.field
            ));
        }
        let (x, fields) = object_fields(trimmed, &self.field, None)?;
        let x =
            x.ok_or_else(|| format!("object has no field `{}` holding the text", self.field))?;
        let record: String = serde_json::from_str(x).map_err(|e| {
            if x.starts_with('"') {
                format!("field `{}`: {e}", self.field)
            } else {
                let found = excerpt(x);
                format!("field `{}` must hold a string, found `{found}`", self.field)
            }
        })?;
        tokenize(tokenizer, &record, out)?;
        let raw = |name: &str| fields.get(name).map(|v| (*v).to_owned());
        let key = match raw("id") {
            Some(id) => RecordKey::Id(id),
            None => RecordKey::Line(number),
        };
        Ok(Some(RecordMeta {
            line: number,
            key,
            passthrough: self.passthrough.iter().map(|f| raw(f)).collect(),
        }))
    }

    fn parse_csv<'a>(
        &self,
        text: &'a str,
        number: u64,
        may_be_header: bool,
        out: &mut Vec<f32>,
    ) -> Result<Option<RecordMeta>, String> {
        let mark = out.len();
        let mut count = 0;
        let unquote = |field: &'a str| {
            let field = field.trim_ascii();
            field
                .strip_prefix('"')
                .and_then(|f| f.strip_suffix('"'))
                .unwrap_or(field)
        };
        for (i, field) in text.split(',').enumerate() {
            match parse_csv_number(unquote(field).as_bytes()) {
                Ok(v) => out.push(v),
                Err(e) => {
                    // A first row with no number in it is a header; one with some numbers is a
                    // record with a mistake, reported like any other, not dropped in silence.
                    let no_number = || {
                        text.split(',')
                            .all(|f| parse_csv_number(unquote(f).as_bytes()).is_err())
                    };
                    if may_be_header && no_number() {
                        out.truncate(mark);
                        return Ok(None);
                    }
                    return Err(format!("column {}: {e}", i + 1));
                }
            }
            count += 1;
        }
        if count != self.len {
            return Err(format!("expected {} values, found {count}", self.len));
        }
        let passthrough = vec![None; self.passthrough.len()];
        Ok(Some(RecordMeta {
            line: number,
            key: RecordKey::Line(number),
            passthrough,
        }))
    }
}

/// The start of `text` for an error message: a line may be megabytes long, an error line not.
fn excerpt(text: &str) -> Cow<'_, str> {
    const MAX_CHARS: usize = 40;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

/// `text` without the whitespace JSON allows around a value (space, tab, CR, LF): `trim_ascii`
/// would also drop form feeds, and accept lines that are not JSON.
fn trim_json(text: &str) -> &str {
    text.trim_matches([' ', '\t', '\r', '\n'])
}

/// [`trim_json`] on bytes.
fn trim_json_bytes(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// The fields of a JSON object line, as raw text, with the record field's array parsed into
/// `out` where it stands (`Err` if the record field is not a valid record). Returns the record
/// field's raw text, and every other field as serde_json validated it, so what is echoed to the
/// output is valid JSON and is not parsed a second time. Letting serde_json validate the record's
/// hundreds of numbers too cost as much as parsing them.
#[allow(clippy::type_complexity)]
fn object_fields<'a>(
    text: &'a str,
    record_field: &str,
    record: Option<(&[usize], usize, &mut Vec<f32>)>,
) -> Result<(Option<&'a str>, HashMap<Cow<'a, str>, &'a RawValue>), String> {
    let mut record = record;
    let mark = record.as_ref().map_or(0, |r| r.2.len());
    let invalid = |what: &str, at: usize| format!("invalid JSON: {what} at column {}", at + 1);
    let b = text.as_bytes();
    let ws = |i: &mut usize| {
        while matches!(b.get(*i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            *i += 1;
        }
    };
    let mut fields = HashMap::new();
    let mut record_text = None;
    let mut i = 1; // past `{`
    ws(&mut i);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            ws(&mut i);
            if b.get(i) != Some(&b'"') {
                return Err(invalid("expected a key string", i));
            }
            let key_end = string_end(b, i).ok_or_else(|| invalid("unterminated string", i))?;
            let key_raw = &text[i..key_end];
            let key: Cow<str> = if key_raw.bytes().any(|c| c == b'\\' || c < 0x20) {
                Cow::Owned(
                    serde_json::from_str::<String>(key_raw)
                        .map_err(|e| format!("invalid JSON: {e}"))?,
                )
            } else {
                Cow::Borrowed(&key_raw[1..key_raw.len() - 1])
            };
            i = key_end;
            ws(&mut i);
            if b.get(i) != Some(&b':') {
                return Err(invalid("expected `:`", i));
            }
            i += 1;
            ws(&mut i);
            let start = i;
            match record.as_mut() {
                Some((shape, len, out)) if key == record_field && b.get(i) == Some(&b'[') => {
                    // A repeated field: the last one wins, as serde_json would have it.
                    out.truncate(mark);
                    let mut scanner = Scanner { bytes: b, pos: i };
                    scanner
                        .record(shape, *len, out)
                        .map_err(|e| format!("field `{record_field}`: {e}"))?;
                    i = scanner.pos;
                }
                _ => i = value_end(b, i).ok_or_else(|| invalid("unterminated value", start))?,
            }
            let value = &text[start..i];
            if key == record_field {
                record_text = Some(value);
            } else {
                let raw = serde_json::from_str::<&RawValue>(value)
                    .map_err(|e| format!("invalid JSON in field `{}`: {e}", excerpt(&key)))?;
                fields.insert(key, raw);
            }
            ws(&mut i);
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(invalid("expected `,` or `}`", i)),
            }
        }
    }
    ws(&mut i);
    if i != b.len() {
        return Err(invalid("trailing characters", i));
    }
    Ok((record_text, fields))
}

/// A JSON value as an error message shows it: whole if short, else its start.
fn abbreviate(raw: &str) -> String {
    match raw.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &raw[..at]),
        None => raw.to_string(),
    }
}

/// A path from a line's bytes: any bytes on Unix, UTF-8 elsewhere.
fn path_from_bytes(bytes: &[u8]) -> Result<&std::path::Path, String> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::path::Path::new(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes)
            .map(std::path::Path::new)
            .map_err(|_| "the path is not valid UTF-8".to_string())
    }
}

/// Append the token ids of `text`, one value per token.
fn tokenize(
    tokenizer: &super::TextTokenizer,
    text: &str,
    out: &mut Vec<f32>,
) -> Result<(), String> {
    // Ids are far below 2^24, so f32 holds them exactly.
    out.extend(tokenizer.encode(text)?.into_iter().map(|id| id as f32));
    Ok(())
}

/// The index just past the string starting at `b[i] == '"'`.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// The index just past the JSON value starting at `b[i]`: strings and nested brackets are
/// matched (the brackets by kind), scalars run to the next delimiter. Whether the value is
/// well-formed inside is for its parser to say.
fn value_end(b: &[u8], mut i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'[' | b'{' => {
            let mut stack = Vec::new();
            loop {
                match *b.get(i)? {
                    c @ (b'[' | b'{') => stack.push(if c == b'[' { b']' } else { b'}' }),
                    c @ (b']' | b'}') => {
                        if stack.pop()? != c {
                            return None;
                        }
                        if stack.is_empty() {
                            return Some(i + 1);
                        }
                    }
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while !matches!(
                b.get(i),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                i += 1;
            }
            Some(i)
        }
    }
}

/// Parse a JSON array of numbers, flat or nested exactly as `shape`, appending to `out`.
fn parse_array(text: &[u8], shape: &[usize], len: usize, out: &mut Vec<f32>) -> Result<(), String> {
    let mut scanner = Scanner {
        bytes: text,
        pos: 0,
    };
    let mark = out.len();
    scanner
        .record(shape, len, out)
        .and_then(|()| {
            scanner.skip_ws();
            if scanner.pos != scanner.bytes.len() {
                return Err(format!(
                    "unexpected text after the array at byte {}",
                    scanner.pos
                ));
            }
            Ok(())
        })
        .inspect_err(|_| out.truncate(mark))
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    /// The record's array at the cursor, flat or nested exactly as `shape`; the cursor ends just
    /// past it.
    fn record(&mut self, shape: &[usize], len: usize, out: &mut Vec<f32>) -> Result<(), String> {
        self.skip_ws();
        if self.peek_after_bracket() == Some(b'[') {
            return self.nested(shape, 0, out);
        }
        let n = self.flat(out)?;
        if n == len {
            Ok(())
        } else {
            Err(format!(
                "expected {len} values (shape {shape:?}), found {n}"
            ))
        }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len()
            && matches!(self.bytes[self.pos], b' ' | b'\t' | b'\n' | b'\r')
        {
            self.pos += 1;
        }
    }

    fn peek_after_bracket(&self) -> Option<u8> {
        let mut p = self.pos + 1;
        while p < self.bytes.len() && matches!(self.bytes[p], b' ' | b'\t' | b'\n' | b'\r') {
            p += 1;
        }
        self.bytes.get(p).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(match self.bytes.get(self.pos) {
                Some(c) => format!(
                    "expected `{}` at byte {}, found `{}`",
                    b as char, self.pos, *c as char
                ),
                None => format!(
                    "expected `{}` at byte {}, found the end of the line",
                    b as char, self.pos
                ),
            })
        }
    }

    /// `[n, n, ...]`: returns how many numbers it appended.
    fn flat(&mut self, out: &mut Vec<f32>) -> Result<usize, String> {
        if let Some((n, end)) = parse_flat(self.bytes, self.pos, out) {
            self.pos = end;
            return Ok(n);
        }
        self.flat_one_by_one(out)
    }

    /// [`Self::flat`] without the AVX-512 path: one number at a time, and the errors' wording.
    fn flat_one_by_one(&mut self, out: &mut Vec<f32>) -> Result<usize, String> {
        self.expect(b'[')?;
        self.skip_ws();
        if self.bytes.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(0);
        }
        let mut n = 0;
        loop {
            self.skip_ws();
            let (v, end) =
                parse_json_number(self.bytes, self.pos).map_err(|e| format!("value {n}: {e}"))?;
            self.pos = end;
            out.push(v);
            n += 1;
            self.skip_ws();
            match self.bytes.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(n);
                }
                Some(c) => {
                    return Err(format!(
                        "expected `,` or `]` at byte {}, found `{}`",
                        self.pos, *c as char
                    ))
                }
                None => return Err("the array is not closed".into()),
            }
        }
    }

    /// Arrays nested exactly as `shape[depth..]`.
    fn nested(&mut self, shape: &[usize], depth: usize, out: &mut Vec<f32>) -> Result<(), String> {
        if depth == shape.len() - 1 {
            let n = self.flat(out)?;
            if n != shape[depth] {
                return Err(format!(
                    "expected {} values on axis {depth} (shape {shape:?}), found {n}",
                    shape[depth]
                ));
            }
            return Ok(());
        }
        self.expect(b'[')?;
        for i in 0..shape[depth] {
            if i > 0 {
                self.expect(b',').map_err(|_| {
                    format!(
                        "expected {} entries on axis {depth} (shape {shape:?}), found {i}",
                        shape[depth]
                    )
                })?;
            }
            self.skip_ws();
            if self.bytes.get(self.pos) != Some(&b'[') {
                return Err(format!(
                    "expected a nested array on axis {} (shape {shape:?})",
                    depth + 1
                ));
            }
            self.nested(shape, depth + 1, out)?;
        }
        self.expect(b']').map_err(|_| {
            format!(
                "more than {} entries on axis {depth} (shape {shape:?})",
                shape[depth]
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(shape: &[usize], text: &str) -> Result<Vec<f32>, String> {
        let mut out = Vec::new();
        parse_array(text.as_bytes(), shape, shape.iter().product(), &mut out).map(|()| out)
    }

    #[test]
    fn object_lines_find_fields_and_reject_malformed_json() {
        let (x, f) = object_fields(
            r#"{"id": "a\"b", "x": [1, [2]], "n": {"k": [1, "]"]}, "é\u0041": 1}"#,
            "x",
            None,
        )
        .unwrap();
        assert_eq!(f["id"].get(), r#""a\"b""#);
        assert_eq!(x, Some("[1, [2]]"));
        assert_eq!(f["n"].get(), r#"{"k": [1, "]"]}"#);
        assert_eq!(f["éA"].get(), "1");
        for bad in [
            r#"{"x":[1]"#,
            r#"{"x":[1]]}"#,
            r#"{"x":[1],}"#,
            r#"{"x" [1]}"#,
            r#"{"x":[1]} z"#,
            r#"{"id":tru,"x":[1]}"#,
            r#"{"x":[1}"#,
            r#"{x:[1]}"#,
        ] {
            assert!(
                object_fields(bad, "x", None).is_err(),
                "{bad} must be rejected"
            );
        }
    }

    /// Mutated lines never panic the parser, and whatever it accepts is valid JSON that serde_json
    /// reads to the same numbers.
    #[test]
    fn mutated_lines_never_panic_and_acceptance_implies_valid_json() {
        let parser = RecordParser::new(&[2, 3], "x", &["tag".to_string()], InputFormat::JsonLines);
        let seeds = [
            r#"{"id": 7, "x": [[1, 2.5, -3], [4e1, 0.5, 6]], "tag": {"a": ["b\"]", 1]}}"#,
            r#"[1, 2, 3, 4, 5, 6]"#,
            r#"{"x": [1.25, -0, 3, 4, 5, 6], "id": "é\u00e9"}"#,
        ];
        let mut next = crate::weights::seeded_stream(11, "mutations");
        let mut rand = |n: usize| ((next() + 1.0) * 0.5 * n as f32) as usize % n.max(1);
        // Two bytes that are not UTF-8 on their own: bare arrays skip the UTF-8 check.
        let alphabet = b"[]{},:\" -.e0123456789xtnaul\\ \t\xff\xc3";
        let (mut accepted, mut rejected) = (0, 0);
        for round in 0..4000 {
            let mut line = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + rand(3) {
                let at = rand(line.len() + 1);
                match rand(3) {
                    0 if at < line.len() => line[at] = alphabet[rand(alphabet.len())],
                    1 => line.insert(at.min(line.len()), alphabet[rand(alphabet.len())]),
                    _ => line.truncate(at.max(1)),
                }
            }
            let raw = RawLine {
                number: 1,
                text: LineText::Bytes(line.clone()),
            };
            let parsed = parser.parse_chunk(&[raw], Instant::now(), false);
            if parsed.meta.records.len() == 1 {
                let text = std::str::from_utf8(&line).expect("accepted lines are UTF-8");
                let v: serde_json::Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("accepted invalid JSON {text}: {e}"));
                let x = if v.is_array() { &v } else { &v["x"] };
                let flat: Vec<f32> = x
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|e| e.as_array().cloned().unwrap_or_else(|| vec![e.clone()]))
                    .map(|n| n.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(flat, parsed.values, "{text}");
                accepted += 1;
            } else {
                assert_eq!(parsed.meta.rejected.len(), 1);
                assert!(parsed.values.is_empty());
                rejected += 1;
            }
        }
        // Both sides were exercised: mutations that keep the line valid, and ones that break it.
        assert!(
            accepted > 200 && rejected > 200,
            "accepted {accepted}, rejected {rejected}"
        );
    }

    /// A bare array is read before any UTF-8 check; a line that is not UTF-8 is still refused
    /// as such, and the lines beside it are read.
    #[test]
    fn bare_arrays_with_bytes_that_are_not_utf8_are_refused_as_such() {
        let parser = RecordParser::new(&[3], "x", &[], InputFormat::JsonLines);
        let lines: Vec<RawLine> = [
            &b"[1, 2, 3]"[..],
            b"[1, 2, 3]\xff",
            b"[1, \xc3\xa9, 3]",
            b" [4,5,6] ",
        ]
        .iter()
        .enumerate()
        .map(|(i, b)| RawLine {
            number: i as u64 + 1,
            text: LineText::Bytes(b.to_vec()),
        })
        .collect();
        let parsed = parser.parse_chunk(&lines, Instant::now(), false);
        assert_eq!(parsed.values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let lines: Vec<u64> = parsed.meta.records.iter().map(|r| r.line).collect();
        assert_eq!(lines, [1, 4]);
        let rejected = &parsed.meta.rejected;
        assert_eq!((rejected[0].line, rejected[1].line), (2, 3));
        assert!(
            rejected[0].error.contains("not valid UTF-8"),
            "{}",
            rejected[0].error
        );
        // Valid UTF-8 but not a number: the array parser's own error.
        assert!(
            !rejected[1].error.contains("UTF-8"),
            "{}",
            rejected[1].error
        );
    }

    #[test]
    fn flat_and_nested_arrays() {
        assert_eq!(
            parse(&[2, 2], "[1, 2.5, -3e2, 0]").unwrap(),
            vec![1.0, 2.5, -300.0, 0.0]
        );
        assert_eq!(
            parse(&[2, 2], "[[1,2],[3,4]]").unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        assert!(parse(&[2, 2], "[[1,2],[3]]").is_err());
        assert!(parse(&[2, 2], "[[1,2],[3,4],[5,6]]").is_err());
        assert!(parse(&[2, 2], "[1,2,3]").is_err());
        assert!(parse(&[1], "[\"1\"]").is_err());
        assert!(parse(&[1], "[1] x").is_err());
        assert!(parse(&[1], "[1x]").is_err());
    }
}
