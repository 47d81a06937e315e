//! Output lines: `{"id": …, "y": […], "argmax": k, <passthrough>}` per record, and
//! `{"line": N, "error": "…"}` per rejected line.

use serde_json::value::RawValue;

use super::record::{RecordMeta, Rejection};
use crate::graph::Graph;

/// How an output line names its record.
#[derive(Debug, Clone)]
pub enum RecordKey {
    /// The input object's `id`, echoed as it was written.
    Id(Box<RawValue>),
    /// The 1-based input line, for records without an `id`.
    Line(u64),
}

/// Formats output lines for one pipeline's output settings.
#[derive(Debug, Clone)]
pub struct OutputFormatter {
    /// `"y":` with the field name escaped once, up front.
    field: String,
    argmax: bool,
    /// `"label":` for each passthrough field.
    passthrough: Vec<String>,
    /// Output names, when there are several (then `y` is an object keyed by them).
    names: Option<Vec<String>>,
}

fn json_key(name: &str) -> String {
    format!(
        "{}:",
        serde_json::to_string(name).expect("strings serialise")
    )
}

impl OutputFormatter {
    pub fn new(field: &str, argmax: bool, passthrough: &[String], output_names: &[String]) -> Self {
        OutputFormatter {
            field: json_key(field),
            argmax,
            passthrough: passthrough.iter().map(|p| json_key(p)).collect(),
            names: (output_names.len() > 1)
                .then(|| output_names.iter().map(|n| json_key(n)).collect()),
        }
    }

    /// Write one value for the single output, or an object of them keyed by output name.
    fn per_output(
        &self,
        out: &mut Vec<u8>,
        outputs: &[&[f32]],
        write: impl Fn(&mut Vec<u8>, &[f32]),
    ) {
        match &self.names {
            None => write(out, outputs[0]),
            Some(names) => {
                out.push(b'{');
                for (i, (name, values)) in names.iter().zip(outputs).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(name.as_bytes());
                    write(out, values);
                }
                out.push(b'}');
            }
        }
    }

    /// Append one record's line; `outputs[i]` is the record's slice of output `i`.
    pub fn write_record(&self, out: &mut Vec<u8>, meta: &RecordMeta, outputs: &[&[f32]]) {
        match &meta.key {
            RecordKey::Id(id) => {
                out.extend_from_slice(b"{\"id\":");
                out.extend_from_slice(id.get().as_bytes());
            }
            RecordKey::Line(n) => {
                out.extend_from_slice(b"{\"line\":");
                out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
            }
        }
        out.push(b',');
        out.extend_from_slice(self.field.as_bytes());
        self.per_output(out, outputs, write_floats);
        if self.argmax {
            out.extend_from_slice(b",\"argmax\":");
            self.per_output(out, outputs, |out, values| {
                out.extend_from_slice(itoa::Buffer::new().format(argmax(values)).as_bytes())
            });
        }
        for (key, value) in self.passthrough.iter().zip(&meta.passthrough) {
            out.push(b',');
            out.extend_from_slice(key.as_bytes());
            match value {
                Some(v) => out.extend_from_slice(v.get().as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

/// The name of each of `graph`'s outputs, in order: what keys `y` when there are several. `run`
/// writes output lines with these names and `verify` reads them back by the same names.
pub fn output_names(graph: &Graph) -> Vec<String> {
    graph
        .outputs
        .iter()
        .map(|v| graph.value_name(*v).to_string())
        .collect()
}

/// Append a rejected line's report.
pub fn write_rejection(out: &mut Vec<u8>, r: &Rejection) {
    out.extend_from_slice(b"{\"line\":");
    out.extend_from_slice(itoa::Buffer::new().format(r.line).as_bytes());
    out.extend_from_slice(b",\"error\":");
    out.extend_from_slice(
        serde_json::to_string(&r.error)
            .expect("strings serialise")
            .as_bytes(),
    );
    out.extend_from_slice(b"}\n");
}

/// The index of the largest value (the first, on ties; NaN never wins).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Shortest decimal that parses back to the same f32 (ryu); JSON has no NaN or infinity: `null`.
fn write_floats(out: &mut Vec<u8>, values: &[f32]) {
    let mut buf = ryu::Buffer::new();
    out.push(b'[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if v.is_finite() {
            out.extend_from_slice(buf.format_finite(*v).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_exactly() {
        let values = [0.1f32, 1.0 / 3.0, -2.5e-38, 3.4028235e38, 1e-45, 0.0];
        let mut out = Vec::new();
        write_floats(&mut out, &values);
        let back: Vec<f32> = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, values);
    }

    #[test]
    fn several_outputs_are_objects_keyed_by_layer_name() {
        let f = OutputFormatter::new("y", true, &[], &["a".into(), "b".into()]);
        let meta = RecordMeta {
            line: 3,
            key: RecordKey::Line(3),
            passthrough: vec![],
        };
        let mut out = Vec::new();
        f.write_record(&mut out, &meta, &[&[1.0], &[2.0, 3.0]]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"line\":3,\"y\":{\"a\":[1.0],\"b\":[2.0,3.0]},\"argmax\":{\"a\":0,\"b\":1}}\n"
        );
    }

    #[test]
    fn record_line_has_id_output_argmax_and_passthrough() {
        let f = OutputFormatter::new("y", true, &["label".into()], &["logits".into()]);
        let meta = RecordMeta {
            line: 1,
            key: RecordKey::Id(RawValue::from_string("\"a\"".into()).unwrap()),
            passthrough: vec![Some(RawValue::from_string("3".into()).unwrap())],
        };
        let mut out = Vec::new();
        f.write_record(&mut out, &meta, &[&[0.5, 2.0, -1.0]]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":\"a\",\"y\":[0.5,2.0,-1.0],\"argmax\":1,\"label\":3}\n"
        );
    }
}
