//! The pipeline file's types (version 1): what a parsed, value-checked pipeline holds.
//!
//! Produced by the loader ([`super::load`]); everything that relates layers to each other
//! (names, inputs, shapes, stages, weights) is checked later, in [`crate::graph`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::yaml::{ConfigError, Spans};
use crate::ops::Op;

/// Every error found in a pipeline file.
#[derive(Debug, thiserror::Error)]
#[error("{}", format_errors(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn format_errors(errors: &[ConfigError]) -> String {
    let mut out = format!("{} error(s) in the pipeline file:", errors.len());
    for e in errors {
        out.push_str("\n  - ");
        out.push_str(&e.to_string());
    }
    out
}

/// A parsed pipeline file, with defaults filled in.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub name: Option<String>,
    pub input: InputConfig,
    pub weights: WeightsSource,
    pub layers: Vec<LayerConfig>,
    /// Names of the layers whose values are written out; `None` means the last layer.
    pub outputs: Option<Vec<Located<String>>>,
    /// `None` means one stage holding every layer (or, with `auto_stages`, the planner's).
    pub stages: Option<Vec<StageConfig>>,
    /// `stages: auto`: the planner chooses the stages when the pipeline starts.
    pub auto_stages: bool,
    /// What `subpass plan` predicted for the stages it wrote (`planned:`).
    pub planned: Option<PlannedFigures>,
    pub batch: BatchConfig,
    pub output: OutputConfig,
    /// Where each key path is in the file, so later checks can locate their errors too.
    pub spans: std::sync::Arc<Spans>,
    /// Layers that did not parse (already reported): later checks ignore references to them.
    pub broken_layers: Vec<String>,
    /// The stages section did not parse (already reported): stage checks are skipped.
    pub stages_broken: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            size: 32,
            max_tokens: None,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// A value with the key path it came from, so later checks can still say where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub path: String,
}

#[derive(Debug, Clone)]
pub struct InputConfig {
    /// Per-record shape, without the batch axis; for text, `[1]` per token (its id).
    pub shape: Vec<usize>,
    /// Text records, tokenized by the parsers; `None` for records of numbers.
    pub text: Option<TextInput>,
    /// Image records, decoded and preprocessed by the parsers; `None` for records of numbers.
    pub image: Option<ImageInput>,
    /// JSON object field that holds the record.
    pub field: String,
    /// Parser actors; parsing text dominates a stdin pipeline, so it can be replicated.
    pub parsers: usize,
}

/// Records that are image files (JPEG, PNG), preprocessed as torchvision's
/// `Resize(resize)`, `CenterCrop(crop)`, `ToTensor()`, `Normalize(mean, std)` on an RGB image:
/// the model sees `[3, crop, crop]` per record.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInput {
    /// The shorter side is resized to this many pixels (bilinear, antialiased, as PIL does).
    pub resize: usize,
    /// Side of the square cut from the centre of the resized image; at most `resize`.
    pub crop: usize,
    /// Per-channel (R, G, B) mean and standard deviation subtracted and divided, on [0, 1] values.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Largest width and height decoded; larger images are refused from their header. With
    /// `max_bytes`, what the memory bound counts for an image being decoded.
    pub max_side: usize,
    /// Largest image file (or base64-decoded record), in bytes.
    pub max_bytes: u64,
}

/// Records that are text: each becomes a sequence of token ids, one row per token.
#[derive(Debug, Clone, PartialEq)]
pub struct TextInput {
    /// A Hugging Face `tokenizer.json` (path resolved against the pipeline file's folder).
    pub tokenizer: PathBuf,
    /// Tokens per record at most, special tokens included; longer texts are truncated.
    pub max_tokens: usize,
    /// Key path of the tokenizer, for errors found when it is loaded.
    pub key_path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WeightsSource {
    /// A safetensors file (path resolved against the pipeline file's folder).
    File { path: PathBuf, key_path: String },
    /// Deterministic pseudo-random weights from a seed.
    Init { seed: u64 },
    /// Neither given: valid only for a model without parameters.
    None,
    /// The section was wrong (already reported): weights are not checked.
    Invalid,
}

#[derive(Debug, Clone)]
pub struct LayerConfig {
    pub name: String,
    /// Names of the values this layer reads (`input` or earlier layers).
    pub inputs: Vec<Located<String>>,
    /// Prefix of this layer's tensors in the weights file.
    pub params: String,
    /// The op with its attributes, from the registry in [`crate::ops`].
    pub op: Arc<dyn Op>,
    /// Key path of this layer, `layers[i]`.
    pub path: String,
    /// Set on the layers `shards: k` makes of one layer.
    pub shard: Option<ShardOf>,
}

/// A layer that is one shard of a layer the file splits with `shards: k`: it reads the same
/// inputs and the same tensors (`params`), cut to its part.
#[derive(Debug, Clone)]
pub struct ShardOf {
    /// The layer that combines the shards; it keeps the name the file gave, so whatever reads
    /// the layer reads the whole again.
    pub combined: String,
    /// The unsplit op, whose tensors the file (or `init`) holds.
    pub whole: Arc<dyn Op>,
    /// How each of the shard op's tensors is cut from the whole op's.
    pub slices: Vec<crate::ops::TensorSlice>,
}

#[derive(Debug, Clone)]
pub struct StageConfig {
    pub name: String,
    pub layers: Vec<Located<String>>,
    /// Capacity of the stage's input channel, in chunks.
    pub queue: usize,
    /// Workers of this stage that take chunks off the same queue.
    pub replicas: usize,
    /// Threads each worker spreads one chunk's layers over (`threads: N`): a convolution's
    /// filters are split among them. 1: the worker's own thread.
    pub threads: usize,
    /// Restarts of this stage's replicas allowed within any minute before the run gives up;
    /// `None` takes the run's default (`run --max-restarts`).
    pub max_restarts: Option<u32>,
    /// The core this stage's threads run on (`core: N`, Linux), as `plan --objective latency`
    /// writes; `None`: wherever the OS puts them.
    pub core: Option<usize>,
    /// Its workers parse the records themselves (`parse: true`), in place of a parser thread:
    /// a stage fed by the input alone, whose replicas take every core, then runs as many busy
    /// threads as there are cores instead of one more.
    pub parse: bool,
    pub path: String,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Records per chunk.
    pub size: usize,
    /// Tokens per chunk at most, for text records: chunks stay even in cost, and the memory
    /// bound is in tokens. `None` for records of numbers.
    pub max_tokens: Option<usize>,
    /// How long the first record of a chunk may wait for the chunk to fill.
    pub max_delay: Duration,
}

/// `planned: {cores, batch, records_per_s}`: the planner's prediction for the stages it wrote,
/// which `bench` shows beside what it measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedFigures {
    pub cores: usize,
    pub batch: usize,
    pub records_per_s: f64,
}

#[derive(Debug, Clone)]
pub struct OutputConfig {
    /// Field of the output object that holds the prediction.
    pub field: String,
    pub argmax: bool,
    /// Input object fields copied to the output line.
    pub passthrough: Vec<String>,
    /// Emit in input order (through the bounded reorder step) or as chunks finish.
    pub ordered: bool,
    /// Write the `k` largest outputs (class, score, and label when `labels` is given) instead of
    /// the whole output vector.
    pub top_k: Option<Located<usize>>,
    /// Class names, one per output, line `i` naming class `i`.
    pub labels: Option<Labels>,
}

/// A labels file, read when the pipeline is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    pub names: Arc<Vec<String>>,
    pub file: PathBuf,
    /// Key path of `output.labels`, for the check against the output width.
    pub key_path: String,
}

pub const DEFAULT_QUEUE: usize = 2;
/// Most chunks a stage queue may hold.
pub const MAX_QUEUE: u64 = 1024;
/// Most threads one stage (or the parser) may run.
pub const MAX_WORKERS: u64 = 256;
/// Most restarts per minute a stage may be allowed: more is a crash loop, not supervision.
pub const MAX_RESTARTS: u64 = 1_000_000;
/// Most records per chunk.
pub const MAX_BATCH: u64 = 1 << 20;
