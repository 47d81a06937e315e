//! `subpass verify`: the same records through the decomposed streaming pipeline, on the fast
//! kernels this CPU runs, and through the monolithic pass on the reference kernels (straight
//! loops from each op's definition, f64 sums), compared output by output. A user who runs it on
//! their own model on their own CPU checks the kernels that serve it, not only the plumbing.

use std::io::Write;
use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, IxDyn};

use crate::graph::{Graph, Plan};
use crate::io::{InputFormat, RecordParser};
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

/// Seeded synthetic records as JSON lines (standard normal-ish values in [-1, 1)).
pub fn synthetic_jsonl(plan: &Plan, records: usize, seed: u64) -> Vec<u8> {
    let mut next = seeded_stream(seed, "verify-records");
    let mut out = Vec::new();
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
/// batches of `batch` records, outputs concatenated.
pub fn monolithic(graph: &Graph, batch: usize, values: &[f32], rows: usize) -> Vec<ArrayD<f32>> {
    let len: usize = graph.input_shape.iter().product();
    let size = batch.max(1);
    let mut parts: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); graph.outputs.len()];
    let mut scratch = crate::ops::Scratch::default();
    for start in (0..rows).step_by(size) {
        let n = size.min(rows - start);
        let mut shape = vec![n];
        shape.extend_from_slice(&graph.input_shape);
        let batch = ArrayD::from_shape_vec(
            IxDyn(&shape),
            values[start * len..(start + n) * len].to_vec(),
        )
        .expect("rows × len");
        for (i, out) in graph
            .forward_with(batch, None, &mut scratch)
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

/// Run `input` (JSON lines) through both paths and compare.
pub fn verify(plan: Arc<Plan>, input: Vec<u8>) -> Result<VerifyReport, VerifyError> {
    // The reference side: parse with the same parser, one batch, one thread.
    let parser = RecordParser::new(
        &plan.graph.input_shape,
        &plan.input_field,
        &[],
        InputFormat::JsonLines,
    );
    let (tx, rx) = crossbeam_channel::unbounded();
    crate::io::read_lines(&input[..], usize::MAX, usize::MAX, &tx)
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
    let reference = monolithic(&graph, plan.batch.size, &parsed.values, rows);

    // The decomposed side: the real streaming pipeline, in order, over the same bytes.
    let out = SharedBuf::default();
    let errors = SharedBuf::default();
    let (_never_tx, never) = crossbeam_channel::bounded(1);
    run_stream(
        plan.clone(),
        Box::new(std::io::Cursor::new(input)),
        Box::new(out.clone()),
        Box::new(errors),
        &RunOptions::default(),
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
