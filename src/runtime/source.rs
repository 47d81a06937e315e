//! The source side: the chunker that forms chunks against a deadline and admits them into the
//! budget, and the parsers that turn a chunk's lines into the model input.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, Receiver, Sender};

use super::budget::InFlight;
use super::stats::Counters;
use super::trace::Tracer;
use super::{ChunkId, ChunkTags, Emitter};
use crate::graph::{Env, Plan};
use crate::io::{token_estimate, ChunkMeta, InputFormat, LineText, RawLine, RecordParser};

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

/// Where the chunker sends chunks, and how it forms them: one version of the pipeline.
pub(super) struct ChunkTarget {
    pub out: Sender<RawChunk>,
    pub budget: InFlight,
    pub size: usize,
    pub tokens: Option<TokenBudget>,
    pub max_delay: Duration,
    /// The pipeline file's version (1, then one more per reload), for the log.
    pub version: u64,
}

/// Groups lines into chunks of `size` lines (and, for text, at most `tokens.chunk` tokens, as
/// judged from each line's length before it is tokenized), sending a partial chunk once its
/// first line has waited `max_delay` (so a trickle is answered promptly), and stops early when
/// `shutdown` fires. A new target from `swaps` (a reloaded pipeline) takes every line after the
/// chunk being formed, which goes to the old one; dropping the old sender lets that version
/// finish what it holds and stop.
pub(super) fn run_chunker(
    lines: Receiver<Vec<RawLine>>,
    shutdown: Receiver<()>,
    swaps: Receiver<ChunkTarget>,
    first: ChunkTarget,
) {
    let mut swaps = swaps;
    let mut t = first;
    let mut pending_tokens = 0;
    let mut pending: Vec<RawLine> = Vec::with_capacity(t.size);
    let mut deadline: Option<Instant> = None;
    let mut next_id: ChunkId = 0;
    let mut last_line = 0;
    let flush = |t: &ChunkTarget,
                 next_id: &mut ChunkId,
                 pending: &mut Vec<RawLine>,
                 deadline: &mut Option<Instant>|
     -> bool {
        *deadline = None;
        if pending.is_empty() {
            return true;
        }
        t.budget.admit();
        let chunk = RawChunk {
            id: *next_id,
            lines: std::mem::replace(pending, Vec::with_capacity(t.size)),
            admitted_at: Instant::now(),
        };
        *next_id += 1;
        t.out.send(chunk).is_ok()
    };
    loop {
        let timer = match deadline {
            Some(d) => after(d.saturating_duration_since(Instant::now())),
            None => never(),
        };
        select! {
            recv(lines) -> msg => match msg {
                Ok(batch) => {
                    let token_cap = t.tokens.map_or(usize::MAX, |b| b.chunk);
                    for line in batch {
                        last_line = line.number;
                        let cost = match (&line.text, t.tokens) {
                            (LineText::Bytes(b), Some(tb)) => token_estimate(b.len(), tb.record),
                            _ => 0,
                        };
                        if pending_tokens + cost > token_cap {
                            pending_tokens = 0;
                            if !flush(&t, &mut next_id, &mut pending, &mut deadline) {
                                return;
                            }
                        }
                        if pending.is_empty() {
                            deadline = Some(Instant::now() + t.max_delay);
                        }
                        pending.push(line);
                        pending_tokens += cost;
                        if pending.len() == t.size {
                            pending_tokens = 0;
                            if !flush(&t, &mut next_id, &mut pending, &mut deadline) {
                                return;
                            }
                        }
                    }
                    // `max_delay_ms: 0`: no waiting for more records once the input pauses, so a
                    // lone record is answered at once (a busy stream still fills its chunks,
                    // since its reader stays ahead of the chunker).
                    if t.max_delay.is_zero() && lines.is_empty() {
                        pending_tokens = 0;
                        if !flush(&t, &mut next_id, &mut pending, &mut deadline) {
                            return;
                        }
                    }
                }
                Err(_) => {
                    flush(&t, &mut next_id, &mut pending, &mut deadline);
                    return;
                }
            },
            recv(shutdown) -> _ => {
                flush(&t, &mut next_id, &mut pending, &mut deadline);
                return;
            }
            recv(swaps) -> new => {
                let Ok(new) = new else {
                    // Nobody can reload any more: stop listening rather than spin.
                    swaps = never();
                    continue;
                };
                // The lines read so far belong to the old version; its chunk ids end here and
                // the new version's start from 0, as its sink expects.
                pending_tokens = 0;
                if !flush(&t, &mut next_id, &mut pending, &mut deadline) {
                    return;
                }
                tracing::info!(
                    old = t.version,
                    new = new.version,
                    first_line = last_line + 1,
                    "pipeline version {} serves lines up to {last_line}; version {} from line {}",
                    t.version,
                    new.version,
                    last_line + 1
                );
                t = new;
                next_id = 0;
            }
            recv(timer) -> _ => {
                pending_tokens = 0;
                if !flush(&t, &mut next_id, &mut pending, &mut deadline) {
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

/// A parsing stage's way in (`parse: true`): the chunker's chunks of lines, which its workers
/// parse themselves, handing the source's other consumers their part (the sink its metadata,
/// any other stage that reads the input) before they compute.
pub(super) struct ParsingInbox {
    pub rx: Receiver<RawChunk>,
    pub parser: RecordParser,
    /// The source's routes but the one to this stage.
    pub others: Emitter,
}

/// A chunk of lines parsed: what every part of it carries, the model input, and the records'
/// metadata for the sink (rejected lines included).
pub(super) struct Parsed {
    pub tags: ChunkTags,
    pub env: Env,
    pub meta: Box<ChunkMeta>,
}

/// Parse `chunk`'s lines into `plan`'s input: on a parser thread, or on a worker of the stage
/// that parses (`parse: true`).
pub(super) fn parse(plan: &Plan, parser: &RecordParser, chunk: &RawChunk) -> Parsed {
    let parsed = parser.parse_chunk(&chunk.lines, chunk.admitted_at, chunk.id == 0);
    let rows = parsed.meta.records.len();
    let env = plan.graph.input_env(rows, parsed.values, parsed.seqs);
    let tags = ChunkTags {
        chunk: chunk.id,
        rows,
        lines: parsed.meta.records.iter().map(|r| r.line).collect(),
        poisoned: Vec::new(),
    };
    Parsed {
        tags,
        env,
        meta: Box::new(parsed.meta),
    }
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
            let Parsed { tags, env, meta } = parse(&self.plan, &self.parser, &chunk);
            let t2 = Instant::now();
            if self.emitter.emit(&tags, &env, Some(meta)).is_err() {
                return;
            }
            counters.record(t1 - t0, t2 - t1, t2.elapsed());
            if let Some(t) = &self.tracer {
                t.span("parse", self.replica, chunk.id, t1, t2);
            }
        }
    }
}
