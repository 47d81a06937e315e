//! The sink: joins each chunk's outputs and metadata, restores input order through a reorder
//! buffer bounded by the in-flight budget, writes, and gives the chunk's budget slot back.

use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, TryRecvError};

use super::budget::InFlight;
use super::{merge_poisoned, ChunkId, Part, PoisonedRecord};
use crate::graph::ValueId;
use crate::io::ChunkMeta;
use crate::ops::Tensor;

/// A chunk with everything the writer needs.
pub struct CompletedChunk {
    pub rows: usize,
    pub meta: Box<ChunkMeta>,
    /// The pipeline outputs, in the plan's output order.
    pub outputs: Vec<Arc<Tensor>>,
    /// Records a stage failed on: written as error lines, not output lines (in row order).
    pub poisoned: Vec<PoisonedRecord>,
}

/// Where completed chunks go: JSON lines, or a counter in benchmarks.
pub trait ChunkOutput {
    /// Write one chunk. An error stops the pipeline (a closed stdout, `--strict`).
    fn write(&mut self, chunk: CompletedChunk) -> Result<(), super::RunError>;
    /// Called whenever the sink has nothing more to write right now, so output is never held
    /// back while the pipeline waits for input.
    fn flush(&mut self) -> Result<(), super::RunError>;
}

struct Pending {
    parts: usize,
    rows: usize,
    meta: Option<Box<ChunkMeta>>,
    values: Vec<(ValueId, Arc<Tensor>)>,
    poisoned: Vec<PoisonedRecord>,
}

/// Run until every producer has hung up. `producers` parts make a chunk.
pub(super) fn run_sink(
    rx: Receiver<Part>,
    producers: usize,
    outputs: &[ValueId],
    ordered: bool,
    budget: &InFlight,
    out: &mut dyn ChunkOutput,
) -> Result<(), super::RunError> {
    let mut pending: BTreeMap<ChunkId, Pending> = BTreeMap::new();
    let mut next: ChunkId = 0;
    loop {
        let part = match rx.try_recv() {
            Ok(p) => p,
            Err(TryRecvError::Empty) => {
                out.flush()?;
                match super::recv_patiently(&rx) {
                    Ok(p) => p,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let entry = pending.entry(part.chunk).or_insert_with(|| Pending {
            parts: 0,
            rows: part.rows,
            meta: None,
            values: Vec::new(),
            poisoned: Vec::new(),
        });
        entry.parts += 1;
        entry.values.extend(part.values);
        merge_poisoned(&mut entry.poisoned, part.poisoned);
        if part.meta.is_some() {
            entry.meta = part.meta;
        }
        if ordered {
            while pending.get(&next).is_some_and(|p| p.parts == producers) {
                let p = pending.remove(&next).expect("checked");
                complete(next, p, outputs, out)?;
                budget.retire();
                next += 1;
            }
        } else if entry.parts == producers {
            let p = pending.remove(&part.chunk).expect("present");
            complete(part.chunk, p, outputs, out)?;
            budget.retire();
        }
    }
    out.flush()?;
    if let Some((id, _)) = pending.first_key_value() {
        return Err(super::RunError::Internal(format!(
            "chunk {id} never completed: a stage stopped early"
        )));
    }
    Ok(())
}

fn complete(
    id: ChunkId,
    p: Pending,
    outputs: &[ValueId],
    out: &mut dyn ChunkOutput,
) -> Result<(), super::RunError> {
    let meta = p
        .meta
        .ok_or_else(|| super::RunError::Internal(format!("chunk {id} has no metadata")))?;
    let values: Vec<Arc<Tensor>> = outputs
        .iter()
        .map(|v| {
            p.values
                .iter()
                .find(|(id, _)| id == v)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| {
                    super::RunError::Internal(format!("chunk {id} lacks output value {}", v.0))
                })
        })
        .collect::<Result<_, _>>()?;
    out.write(CompletedChunk {
        rows: p.rows,
        meta,
        outputs: values,
        poisoned: p.poisoned,
    })
}
