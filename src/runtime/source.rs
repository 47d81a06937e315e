//! The source side: the chunker that forms chunks against a deadline and admits them into the
//! budget, and the parsers that turn a chunk's lines into the model input.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, Receiver, Sender};
use ndarray::{ArrayD, IxDyn};

use super::budget::InFlight;
use super::stats::Counters;
use super::trace::Tracer;
use super::{ChunkId, Emitter};
use crate::graph::{Env, Plan, ValueId};
use crate::io::{token_estimate, InputFormat, LineText, RawLine, RecordParser};

/// A chunk's raw lines, admitted into the pipeline.
pub(super) struct RawChunk {
    pub id: ChunkId,
    pub lines: Vec<RawLine>,
    pub admitted_at: Instant,
}

/// A text pipeline's cap on tokens: per chunk, and per record (its truncation).
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenBudget {
    pub chunk: usize,
    pub record: usize,
}

/// Groups lines into chunks of `size` lines (and, for text, at most `tokens.chunk` tokens, as
/// judged from each line's length before it is tokenized), sending a partial chunk once its
/// first line has waited `max_delay` (so a trickle is answered promptly), and stops early when
/// `shutdown` fires.
pub(super) fn run_chunker(
    lines: Receiver<Vec<RawLine>>,
    shutdown: Receiver<()>,
    budget: InFlight,
    out: Sender<RawChunk>,
    size: usize,
    tokens: Option<TokenBudget>,
    max_delay: Duration,
) {
    let estimate = |line: &RawLine| match (&line.text, tokens) {
        (LineText::Bytes(b), Some(t)) => token_estimate(b.len(), t.record),
        _ => 0,
    };
    let token_cap = tokens.map_or(usize::MAX, |t| t.chunk);
    let mut pending_tokens = 0;
    let mut pending: Vec<RawLine> = Vec::with_capacity(size);
    let mut deadline: Option<Instant> = None;
    let mut next_id: ChunkId = 0;
    let mut flush = |pending: &mut Vec<RawLine>, deadline: &mut Option<Instant>| -> bool {
        *deadline = None;
        if pending.is_empty() {
            return true;
        }
        budget.admit();
        let chunk = RawChunk {
            id: next_id,
            lines: std::mem::replace(pending, Vec::with_capacity(size)),
            admitted_at: Instant::now(),
        };
        next_id += 1;
        out.send(chunk).is_ok()
    };
    loop {
        let timer = match deadline {
            Some(d) => after(d.saturating_duration_since(Instant::now())),
            None => never(),
        };
        select! {
            recv(lines) -> msg => match msg {
                Ok(batch) => {
                    for line in batch {
                        let cost = estimate(&line);
                        if pending_tokens + cost > token_cap {
                            pending_tokens = 0;
                            if !flush(&mut pending, &mut deadline) {
                                return;
                            }
                        }
                        if pending.is_empty() {
                            deadline = Some(Instant::now() + max_delay);
                        }
                        pending.push(line);
                        pending_tokens += cost;
                        if pending.len() == size {
                            pending_tokens = 0;
                            if !flush(&mut pending, &mut deadline) {
                                return;
                            }
                        }
                    }
                    // `max_delay_ms: 0`: no waiting for more records once the input pauses, so a
                    // lone record is answered at once (a busy stream still fills its chunks,
                    // since its reader stays ahead of the chunker).
                    if max_delay.is_zero() && lines.is_empty() {
                        pending_tokens = 0;
                        if !flush(&mut pending, &mut deadline) {
                            return;
                        }
                    }
                }
                Err(_) => {
                    flush(&mut pending, &mut deadline);
                    return;
                }
            },
            recv(shutdown) -> _ => {
                flush(&mut pending, &mut deadline);
                return;
            }
            recv(timer) -> _ => {
                pending_tokens = 0;
                if !flush(&mut pending, &mut deadline) {
                    return;
                }
            }
        }
    }
}

/// The parser for `plan`'s records in `format`: with its tokenizer (text) or its image
/// preprocessing (images), copying the `passthrough` fields.
pub(crate) fn record_parser(
    plan: &Plan,
    passthrough: &[String],
    format: InputFormat,
) -> RecordParser {
    let mut parser = RecordParser::new(
        &plan.graph.input_shape,
        &plan.input_field,
        passthrough,
        format,
    );
    if let Some(t) = &plan.tokenizer {
        parser = parser.with_tokenizer(t.clone());
    }
    if let Some(image) = &plan.image {
        parser = parser.with_image(image.clone());
    }
    parser
}

/// Parses admitted chunks and emits the model input; several may run side by side. Image
/// records cost milliseconds each to decode and resize, so image pipelines run one parser per
/// core by default (`input.parsers`).
pub(super) struct ParserWorker {
    pub plan: Arc<Plan>,
    pub parser: RecordParser,
    pub rx: Receiver<RawChunk>,
    pub emitter: Emitter,
    pub counters: Arc<Counters>,
    pub tracer: Option<Tracer>,
    pub replica: usize,
}

impl ParserWorker {
    pub fn run(self) {
        let counters = &self.counters.stages[0].2;
        loop {
            let t0 = Instant::now();
            let Ok(chunk) = super::recv_patiently(&self.rx) else {
                return;
            };
            let t1 = Instant::now();
            let parsed = self
                .parser
                .parse_chunk(&chunk.lines, chunk.admitted_at, chunk.id == 0);
            let rows = parsed.meta.records.len();
            let env = input_env(&self.plan, rows, parsed.values, parsed.seqs);
            let t2 = Instant::now();
            if self
                .emitter
                .emit(chunk.id, rows, &env, Some(Box::new(parsed.meta)))
                .is_err()
            {
                return;
            }
            counters.record(t1 - t0, t2 - t1, t2.elapsed());
            if let Some(t) = &self.tracer {
                t.span("parse", self.replica, chunk.id, t1, t2);
            }
        }
    }
}

/// An environment holding only the model input, `[rows, ...shape]` (for text, one row per
/// token, `seqs` saying where each record's tokens start).
pub(super) fn input_env(
    plan: &Plan,
    records: usize,
    values: Vec<f32>,
    seqs: Option<Vec<usize>>,
) -> Env {
    let rows = seqs.as_ref().map_or(records, |s| s[records]);
    let mut shape = vec![rows];
    shape.extend_from_slice(&plan.graph.input_shape);
    let input = ArrayD::from_shape_vec(IxDyn(&shape), values)
        .expect("parser fills rows × input_len values");
    let mut env = Env::new(plan.graph.nodes.len(), records, seqs.map(Into::into));
    env.set(ValueId::INPUT, Arc::new(input));
    env
}
