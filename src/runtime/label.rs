//! `run --label FIELD`: which passthrough field holds each record's class, the tally of the
//! output's argmax against it, and the line that reports it.

use std::sync::atomic::Ordering::Relaxed;

use super::stats::{Accuracy, RecordCounters};
use crate::graph::Plan;
use crate::io::{argmax, RecordMeta};

/// A passthrough field that holds each record's class.
#[derive(Debug, Clone)]
pub struct Label {
    pub field: String,
    /// The field's position in each record's passthrough values.
    index: usize,
}

/// The pipeline cannot score the field: it does not pass it through, or computes no argmax.
#[derive(Debug, thiserror::Error)]
#[error(
    "--label {field} needs `output: {{argmax: true, passthrough: [{field}]}}` in the pipeline file"
)]
pub struct LabelError {
    pub field: String,
}

impl Label {
    /// The label `field` of `plan`'s records, checked before any record is read.
    pub fn resolve(plan: &Plan, field: &str) -> Result<Label, LabelError> {
        match plan.output.passthrough.iter().position(|p| p == field) {
            Some(index) if plan.output.argmax => Ok(Label {
                field: field.to_string(),
                index,
            }),
            _ => Err(LabelError {
                field: field.to_string(),
            }),
        }
    }

    /// Count `record` if it has a class (a non-negative integer in the field), and whether the
    /// argmax of `output` (the record's first output) is that class.
    pub(crate) fn tally(&self, record: &RecordMeta, output: &[f32], counters: &RecordCounters) {
        let class = record
            .passthrough
            .get(self.index)
            .and_then(Option::as_ref)
            .and_then(|v| v.get().trim().parse::<usize>().ok());
        if let Some(class) = class {
            counters.labelled.fetch_add(1, Relaxed);
            counters
                .correct
                .fetch_add(u64::from(argmax(output) == class), Relaxed);
        }
    }

    /// The line `run` prints at exit.
    pub fn describe(&self, accuracy: &Accuracy) -> String {
        format!(
            "accuracy: {} of {} records ({:.2}%): argmax against `{}`\n",
            accuracy.correct,
            accuracy.labelled,
            accuracy.percent(),
            self.field
        )
    }
}
