//! `subpass verify`: the same records through the decomposed streaming pipeline, on the fast
//! kernels this CPU runs, and through the monolithic pass on the reference kernels (straight
//! loops from each op's definition, f64 sums), compared output by output. A user who runs it on
//! their own model on their own CPU checks the kernels that serve it, not only the plumbing.

use std::io::Write;
use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, IxDyn};

use crate::graph::{Graph, Plan};
use crate::io::InputFormat;
use crate::ops::KernelKind;
use crate::runtime::{run_stream, RunError, RunOptions};
use crate::weights::seeded_stream;

/// Largest differences for one output.
#[derive(Debug, Clone)]
pub struct OutputDiff {
    pub name: String,
    pub max_abs: f64,
    /// Largest normwise relative difference of a record: max |a - b| / max |b| over the record's
    /// values. Relative to each value instead, a logit that cancels to near zero would report
    /// float noise as a large error.
    pub max_rel: f64,
}

#[derive(Debug)]
pub struct VerifyReport {
    pub records: usize,
    pub outputs: Vec<OutputDiff>,
}

impl VerifyReport {
    /// Every output of every record within `tol` (normwise relative).
    pub fn passes(&self, tol: f64) -> bool {
        self.outputs.iter().all(|o| o.max_rel <= tol)
    }
}

/// Seeded synthetic records in the format the pipeline reads: JSON lines of values in [-1, 1),
/// or for text pipelines, lines of 1 to 40 words (short and long sequences, punctuation, digits
/// and accents, so every tokenizer path and sequence length shows up).
pub fn synthetic_records(plan: &Plan, records: usize, seed: u64) -> Vec<u8> {
    let mut next = seeded_stream(seed, "verify-records");
    let mut out = Vec::new();
    if plan.tokenizer.is_some() {
        const WORDS: [&str; 24] = [
            "the",
            "stream",
            "of",
            "records",
            "flows",
            "through",
            "every",
            "stage",
            "and",
            "each",
            "chunk",
            "is",
            "bounded,",
            "café",
            "naïve",
            "2024",
            "tokens",
            "attention",
            "pooling",
            "embeddings!",
            "(fast)",
            "reference",
            "kernels",
            "verify?",
        ];
        let mut pick = |n: usize| ((next() + 1.0) * 0.5 * n as f32) as usize % n;
        for _ in 0..records {
            let words = 1 + pick(40);
            let line: Vec<&str> = (0..words).map(|_| WORDS[pick(WORDS.len())]).collect();
            out.extend_from_slice(line.join(" ").as_bytes());
            out.push(b'\n');
        }
        return out;
    }
    let mut buf = ryu::Buffer::new();
    for _ in 0..records {
        out.push(b'[');
        for i in 0..plan.input_len() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(buf.format_finite(next()).as_bytes());
        }
        out.extend_from_slice(b"]\n");
    }
    out
}

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("line {line}: {error}")]
    BadRecord { line: u64, error: String },
    #[error("the pipeline wrote {got} records for {want} good input records")]
    Count { got: usize, want: usize },
    #[error("cannot read the pipeline's output: {0}")]
    Output(String),
    #[error("cannot build the reference graph: {0}")]
    Reference(crate::config::ConfigErrors),
}

/// The monolithic pass of `graph` over `rows` records: every layer in order on this thread, over
/// batches of `batch` records, outputs concatenated. For text, `seqs` says where each record's
/// tokens start in `values` (`rows + 1` offsets).
pub fn monolithic(
    graph: &Graph,
    batch: usize,
    values: &[f32],
    rows: usize,
    seqs: Option<&[usize]>,
) -> Vec<ArrayD<f32>> {
    let len: usize = graph.input_shape.iter().product();
    let size = batch.max(1);
    let mut parts: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); graph.outputs.len()];
    let mut scratch = crate::ops::Scratch::default();
    for start in (0..rows).step_by(size) {
        let n = size.min(rows - start);
        // The batch's rows of input: its records', or its records' tokens'.
        let (first, last, local) = match seqs {
            Some(s) => {
                let local: Vec<usize> = s[start..=start + n].iter().map(|o| o - s[start]).collect();
                (s[start], s[start + n], Some(local))
            }
            None => (start, start + n, None),
        };
        let mut shape = vec![last - first];
        shape.extend_from_slice(&graph.input_shape);
        let batch = ArrayD::from_shape_vec(IxDyn(&shape), values[first * len..last * len].to_vec())
            .expect("rows × len");
        for (i, out) in graph
            .forward_with(batch, local, &mut scratch)
            .into_iter()
            .enumerate()
        {
            parts[i].push(out);
        }
    }
    parts
        .into_iter()
        .zip(&graph.outputs)
        .map(|(p, v)| {
            if p.is_empty() {
                let mut shape = vec![0];
                shape.extend_from_slice(graph.shape(*v));
                return ArrayD::zeros(IxDyn(&shape));
            }
            let views: Vec<_> = p.iter().map(|a| a.view()).collect();
            ndarray::concatenate(ndarray::Axis(0), &views).expect("same record shape")
        })
        .collect()
}

/// Run `input` (JSON lines, or text lines for a text pipeline) through both paths and compare.
pub fn verify(plan: Arc<Plan>, input: Vec<u8>) -> Result<VerifyReport, VerifyError> {
    // The reference side: parse with the same parser, one batch, one thread.
    let format = match plan.tokenizer {
        Some(_) => InputFormat::Text,
        None => InputFormat::JsonLines,
    };
    let parser = crate::runtime::record_parser(&plan, &[], format);
    let (tx, rx) = crossbeam_channel::unbounded();
    crate::io::read_lines(
        &input[..],
        crate::io::MIN_READ_BUFFER,
        usize::MAX,
        usize::MAX,
        format == InputFormat::Text,
        &tx,
    )
    .expect("reading memory cannot fail");
    drop(tx);
    let lines: Vec<_> = rx.iter().flatten().collect();
    let parsed = parser.parse_chunk(&lines, std::time::Instant::now(), true);
    if let Some(r) = parsed.meta.rejected.first() {
        return Err(VerifyError::BadRecord {
            line: r.line,
            error: r.error.clone(),
        });
    }
    let rows = parsed.meta.records.len();
    let graph =
        Graph::build_with(&plan.config, KernelKind::Reference).map_err(VerifyError::Reference)?;
    let reference = monolithic(
        &graph,
        plan.batch.size,
        &parsed.values,
        rows,
        parsed.seqs.as_deref(),
    );

    // The decomposed side: the real streaming pipeline, in order, over the same bytes.
    let out = SharedBuf::default();
    let errors = SharedBuf::default();
    let (_never_tx, never) = crossbeam_channel::bounded(1);
    run_stream(
        plan.clone(),
        Box::new(std::io::Cursor::new(input)),
        Box::new(out.clone()),
        Box::new(errors),
        &RunOptions {
            format,
            whole_outputs: true,
            ..RunOptions::default()
        },
        never,
    )?;
    let text = out.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let names = crate::io::output_names(&plan.graph);
    let mut diffs: Vec<OutputDiff> = names
        .iter()
        .map(|n| OutputDiff {
            name: n.clone(),
            max_abs: 0.0,
            max_rel: 0.0,
        })
        .collect();
    let mut count = 0;
    for (row, line) in text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        count += 1;
        if row >= rows {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| VerifyError::Output(e.to_string()))?;
        let y = &v[plan.output.field.as_str()];
        for (i, (name, reference)) in names.iter().zip(&reference).enumerate() {
            let got = if names.len() > 1 {
                &y[name.as_str()]
            } else {
                y
            };
            let got: Vec<f32> = serde_json::from_value(got.clone())
                .map_err(|e| VerifyError::Output(format!("output `{name}`: {e}")))?;
            let width = reference.len() / rows.max(1);
            let want = &reference.as_slice().expect("contiguous")[row * width..(row + 1) * width];
            if got.len() != want.len() {
                return Err(VerifyError::Output(format!(
                    "output `{name}` has {} values, the reference {}",
                    got.len(),
                    want.len()
                )));
            }
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
            let abs = got
                .iter()
                .zip(want)
                .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
            diffs[i].max_abs = diffs[i].max_abs.max(abs);
            if abs > 0.0 {
                diffs[i].max_rel = diffs[i].max_rel.max(abs / scale.max(f64::MIN_POSITIVE));
            }
        }
    }
    if count != rows {
        return Err(VerifyError::Count {
            got: count,
            want: rows,
        });
    }
    Ok(VerifyReport {
        records: rows,
        outputs: diffs,
    })
}
