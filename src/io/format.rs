//! Output lines: `{"id": …, "y": […], "argmax": k, <passthrough>}` per record (with
//! `output.top_k`, `"top_k": [{"class": i, "label": "…", "score": s}, …]` in place of `y`), and
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
    /// An image file named by a line of `--format paths`: the line and the path (a JSON string).
    Path { line: u64, path: Box<RawValue> },
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
    /// Write the k largest outputs instead of all of them.
    top_k: Option<TopK>,
}

/// `output.top_k`: how many classes to write, and their names.
#[derive(Debug, Clone)]
struct TopK {
    k: usize,
    /// Each class's name as a JSON string, written once up front.
    labels: Option<Vec<String>>,
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
            top_k: None,
        }
    }

    /// Write `"top_k": [{"class": i, "label": name, "score": s}, …]`, the `k` largest outputs
    /// from the largest down, instead of the whole output (`labels[i]` names class `i`; without
    /// labels, no `label` key). For a pipeline with one output.
    pub fn with_top_k(mut self, k: usize, labels: Option<&[String]>) -> Self {
        self.top_k = Some(TopK {
            k,
            labels: labels.map(|l| {
                l.iter()
                    .map(|n| serde_json::to_string(n).expect("strings serialise"))
                    .collect()
            }),
        });
        self
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
            RecordKey::Path { line, path } => {
                out.extend_from_slice(b"{\"line\":");
                out.extend_from_slice(itoa::Buffer::new().format(*line).as_bytes());
                out.extend_from_slice(b",\"path\":");
                out.extend_from_slice(path.get().as_bytes());
            }
        }
        out.push(b',');
        match &self.top_k {
            Some(top) => top.write(out, outputs[0]),
            None => {
                out.extend_from_slice(self.field.as_bytes());
                self.per_output(out, outputs, write_floats);
            }
        }
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

impl TopK {
    fn write(&self, out: &mut Vec<u8>, values: &[f32]) {
        out.extend_from_slice(b"\"top_k\":[");
        let mut score = ryu::Buffer::new();
        for (n, class) in top_k(values, self.k).into_iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"class\":");
            out.extend_from_slice(itoa::Buffer::new().format(class).as_bytes());
            if let Some(name) = self.labels.as_ref().and_then(|l| l.get(class)) {
                out.extend_from_slice(b",\"label\":");
                out.extend_from_slice(name.as_bytes());
            }
            out.extend_from_slice(b",\"score\":");
            match values[class] {
                v if v.is_finite() => out.extend_from_slice(score.format_finite(v).as_bytes()),
                _ => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
        }
        out.push(b']');
    }
}

/// The indices of the `k` largest values, largest first; ties go to the lower index, NaN ranks
/// below every number (as in [`argmax`]).
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let rank = |a: usize, b: usize| {
        let (x, y) = (values[a], values[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(&b),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => y.partial_cmp(&x).expect("not NaN").then(a.cmp(&b)),
        }
    };
    let mut best: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    if k < best.len() && k > 0 {
        best.select_nth_unstable_by(k - 1, |&a, &b| rank(a, b));
    }
    best.truncate(k);
    best.sort_unstable_by(|&a, &b| rank(a, b));
    best
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
    fn top_k_ranks_largest_first_ties_by_index_nan_last() {
        let v = [0.1, f32::NAN, 0.7, 0.7, -1.0, 0.2];
        assert_eq!(top_k(&v, 3), vec![2, 3, 5]);
        assert_eq!(top_k(&v, 6), vec![2, 3, 5, 0, 4, 1]);
        assert_eq!(top_k(&v, 10).len(), 6);
        assert_eq!(top_k(&[], 3), Vec::<usize>::new());
        // Against a full sort, on many values.
        let mut next = crate::weights::seeded_stream(3, "top-k");
        let values: Vec<f32> = (0..1000).map(|_| next()).collect();
        let mut sorted: Vec<usize> = (0..1000).collect();
        sorted.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        assert_eq!(top_k(&values, 5), sorted[..5]);
    }

    #[test]
    fn top_k_lines_carry_classes_labels_and_scores() {
        let labels = [
            "cat".to_string(),
            "dog \"x\"".to_string(),
            "eel".to_string(),
        ];
        let f =
            OutputFormatter::new("y", true, &[], &["logits".into()]).with_top_k(2, Some(&labels));
        let meta = RecordMeta {
            line: 2,
            key: RecordKey::Path {
                line: 2,
                path: RawValue::from_string("\"a.jpg\"".into()).unwrap(),
            },
            passthrough: vec![],
        };
        let mut out = Vec::new();
        f.write_record(&mut out, &meta, &[&[0.25, 0.5, 0.125]]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"line\":2,\"path\":\"a.jpg\",\"top_k\":[{\"class\":1,\"label\":\"dog \\\"x\\\"\",\"score\":0.5},{\"class\":0,\"label\":\"cat\",\"score\":0.25}],\"argmax\":1}\n"
        );
    }

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
