//! The pipeline file (version 1): its types and how YAML text becomes them.
//!
//! This module owns the *syntax* of a pipeline: which keys exist, their types, defaults and
//! ranges. It checks each value on its own; everything that relates layers to each other (names,
//! inputs, shapes, stages, weights) is checked in [`crate::graph`]. Both steps accumulate every
//! error they find, located by key path and line.

mod yaml;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_yaml::Value;

pub use yaml::{suggest, ConfigError, Document, Spans};
use yaml::{Map, Reader};

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
    /// `None` means one stage holding every layer.
    pub stages: Option<Vec<StageConfig>>,
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
    /// Per-record shape, without the batch axis.
    pub shape: Vec<usize>,
    /// JSON object field that holds the record.
    pub field: String,
    /// Parser actors; parsing text dominates a stdin pipeline, so it can be replicated.
    pub parsers: usize,
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
    pub op: OpConfig,
    /// Key path of this layer, `layers[i]`.
    pub path: String,
}

/// What a layer computes, with its attributes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpConfig {
    Dense {
        units: usize,
        bias: bool,
        activation: Activation,
    },
    Conv2d(Conv2dConfig),
    MaxPool2d(PoolConfig),
    AvgPool2d(PoolConfig),
    GlobalAvgPool2d,
    Flatten,
    BatchNorm {
        eps: f32,
    },
    LayerNorm {
        eps: f32,
    },
    Activation(Activation),
    /// `identity` and `dropout` (identity at inference).
    Identity,
    Add,
    Concat {
        axis: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Conv2dConfig {
    pub filters: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub bias: bool,
    pub activation: Activation,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PoolConfig {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
}

/// Elementwise (or, for softmax, last-axis) activations, usable as ops or as `activation:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Identity,
    Relu,
    LeakyRelu,
    Sigmoid,
    Tanh,
    Gelu,
    Softmax,
}

impl Activation {
    pub const NAMES: [&'static str; 7] = [
        "identity",
        "relu",
        "leaky_relu",
        "sigmoid",
        "tanh",
        "gelu",
        "softmax",
    ];

    pub fn from_name(name: &str) -> Option<Activation> {
        Some(match name {
            "identity" | "none" => Activation::Identity,
            "relu" => Activation::Relu,
            "leaky_relu" => Activation::LeakyRelu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "gelu" => Activation::Gelu,
            "softmax" => Activation::Softmax,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::LeakyRelu => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Gelu => "gelu",
            Activation::Softmax => "softmax",
        }
    }
}

impl OpConfig {
    /// The op names a pipeline file may use.
    pub const NAMES: [&'static str; 20] = [
        "dense",
        "conv2d",
        "maxpool2d",
        "avgpool2d",
        "global_avgpool2d",
        "flatten",
        "batchnorm",
        "layernorm",
        "relu",
        "leaky_relu",
        "sigmoid",
        "tanh",
        "gelu",
        "softmax",
        "identity",
        "dropout",
        "add",
        "concat",
        "none",
        "linear",
    ];

    /// Attributes an op accepts beyond `name`, `op`, `inputs` and `params`.
    fn attributes(op: &str) -> &'static [&'static str] {
        match op {
            "dense" | "linear" => &["units", "bias", "activation"],
            "conv2d" => &[
                "filters",
                "kernel",
                "stride",
                "padding",
                "dilation",
                "groups",
                "bias",
                "activation",
            ],
            "maxpool2d" | "avgpool2d" => &["kernel", "stride"],
            "batchnorm" | "layernorm" => &["eps"],
            "concat" => &["axis"],
            _ => &[],
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            OpConfig::Dense { .. } => "dense",
            OpConfig::Conv2d(_) => "conv2d",
            OpConfig::MaxPool2d(_) => "maxpool2d",
            OpConfig::AvgPool2d(_) => "avgpool2d",
            OpConfig::GlobalAvgPool2d => "global_avgpool2d",
            OpConfig::Flatten => "flatten",
            OpConfig::BatchNorm { .. } => "batchnorm",
            OpConfig::LayerNorm { .. } => "layernorm",
            OpConfig::Activation(a) => a.name(),
            OpConfig::Identity => "identity",
            OpConfig::Add => "add",
            OpConfig::Concat { .. } => "concat",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StageConfig {
    pub name: String,
    pub layers: Vec<Located<String>>,
    /// Capacity of the stage's input channel, in chunks.
    pub queue: usize,
    /// Workers of this stage that take chunks off the same queue.
    pub replicas: usize,
    pub path: String,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Records per chunk.
    pub size: usize,
    /// How long the first record of a chunk may wait for the chunk to fill.
    pub max_delay: Duration,
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
}

pub const DEFAULT_QUEUE: usize = 2;
/// Most chunks a stage queue may hold.
pub const MAX_QUEUE: u64 = 1024;
/// Most threads one stage (or the parser) may run.
pub const MAX_WORKERS: u64 = 256;
/// Most records per chunk.
pub const MAX_BATCH: u64 = 1 << 20;

impl PipelineConfig {
    /// Fill in the line and column of errors found after parsing (graph and stage checks).
    pub fn locate(&self, mut errors: ConfigErrors) -> ConfigErrors {
        for e in &mut errors.0 {
            if e.location.is_none() {
                e.location = self.spans.locate(&e.path);
            }
        }
        errors
    }

    /// Read and parse a pipeline file; weight paths resolve against its folder.
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigErrors> {
        match Self::load_partial(path)? {
            (config, errors) if errors.is_empty() => Ok(config),
            (_, errors) => Err(ConfigErrors(errors)),
        }
    }

    /// Parse pipeline text; `base` is the folder relative weight paths resolve against.
    pub fn parse(text: &str, base: &Path) -> Result<PipelineConfig, ConfigErrors> {
        match Self::parse_partial(text, base)? {
            (config, errors) if errors.is_empty() => Ok(config),
            (_, errors) => Err(ConfigErrors(errors)),
        }
    }

    /// Parse as much as can be parsed: the config with its broken parts left out or defaulted,
    /// and the errors found. `Err` only when there is nothing to check further (a syntax error,
    /// or no usable `input` or `layers`).
    pub fn parse_partial(
        text: &str,
        base: &Path,
    ) -> Result<(PipelineConfig, Vec<ConfigError>), ConfigErrors> {
        let doc = Document::parse(text).map_err(|e| ConfigErrors(vec![e]))?;
        let spans = std::sync::Arc::new(doc.spans);
        let mut r = Reader::new(&spans);
        r.errors.extend(doc.duplicates);
        match parse_document(&mut r, &doc.value, base, &spans) {
            Some(c) => Ok((c, r.errors)),
            None => {
                if r.errors.is_empty() {
                    r.error("", "the pipeline file is incomplete");
                }
                Err(ConfigErrors(r.errors))
            }
        }
    }

    /// Read a file and parse as much as can be parsed (see [`Self::parse_partial`]).
    pub fn load_partial(path: &Path) -> Result<(PipelineConfig, Vec<ConfigError>), ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                location: None,
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Self::parse_partial(&text, path.parent().unwrap_or(Path::new(".")))
    }
}

const TOP_KEYS: [&str; 9] = [
    "name", "input", "weights", "init", "layers", "outputs", "stages", "batch", "output",
];

fn parse_document(
    r: &mut Reader,
    doc: &Value,
    base: &Path,
    spans: &std::sync::Arc<Spans>,
) -> Option<PipelineConfig> {
    if doc.is_null() {
        r.error(
            "",
            "the pipeline file is empty; expected at least `input` and `layers`",
        );
        return None;
    }
    let top = r.map(doc, "", &TOP_KEYS)?;
    let name = top.get("name").and_then(|v| r.string(v, "name"));
    let input = top
        .require(r, "input", "the per-record input, e.g. {shape: [784]}")
        .and_then(|v| parse_input(r, v));
    let weights = parse_weights(r, &top, base);
    let layers = top
        .require(r, "layers", "the list of layers")
        .and_then(|v| parse_layers(r, v));
    let outputs = top.get("outputs").map(|v| located_strings(r, v, "outputs"));
    let stages = top.get("stages").map(|v| parse_stages(r, v));
    let batch = top.get("batch").map(|v| parse_batch(r, v));
    let output = top.get("output").map(|v| parse_output(r, v));
    // Without an input shape or layers there is no graph to check; any other broken section
    // falls back to its default so the layers and stages are still checked in this same pass.
    let (layers, broken_layers) = layers?;
    let stages_broken = matches!(stages, Some(None));
    Some(PipelineConfig {
        name,
        input: input?,
        weights: weights.unwrap_or(WeightsSource::Invalid),
        layers,
        outputs: outputs.flatten(),
        stages: if stages_broken {
            None
        } else {
            stages.flatten()
        },
        batch: batch.flatten().unwrap_or(BatchConfig::default()),
        output: output.flatten().unwrap_or_default(),
        broken_layers,
        stages_broken,
        spans: spans.clone(),
    })
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            field: "y".into(),
            argmax: false,
            passthrough: Vec::new(),
            ordered: true,
        }
    }
}

fn parse_input(r: &mut Reader, v: &Value) -> Option<InputConfig> {
    let m = r.map(v, "input", &["shape", "field", "parsers"])?;
    let shape_path = m.key_path("shape");
    let shape = m
        .require(r, "shape", "the per-record shape, e.g. [1, 28, 28]")
        .and_then(|v| {
            let items = r.list(v, &shape_path)?;
            if items.is_empty() {
                r.error(&shape_path, "a record needs at least one axis");
                return None;
            }
            let dims: Vec<Option<u64>> = items
                .iter()
                .enumerate()
                .map(|(i, d)| r.integer(d, &format!("{shape_path}[{i}]"), 1))
                .collect();
            dims.into_iter()
                .map(|d| d.map(|d| d as usize))
                .collect::<Option<Vec<_>>>()
        });
    let field = match m.get("field") {
        Some(v) => r.string(v, &m.key_path("field")),
        None => Some("x".to_string()),
    };
    let parsers = match m.get("parsers") {
        Some(v) => r
            .integer_in(v, &m.key_path("parsers"), 1, MAX_WORKERS)
            .map(|n| n as usize),
        None => Some(1),
    };
    Some(InputConfig {
        shape: shape?,
        field: field?,
        parsers: parsers?,
    })
}

fn parse_weights(r: &mut Reader, top: &Map, base: &Path) -> Option<WeightsSource> {
    match (top.get("weights"), top.get("init")) {
        (Some(_), Some(_)) => {
            r.error(
                "init",
                "give either `weights` (a safetensors file) or `init` (a seed), not both",
            );
            None
        }
        (Some(w), None) => {
            let rel = r.string(w, "weights")?;
            Some(WeightsSource::File {
                path: base.join(rel),
                key_path: "weights".into(),
            })
        }
        (None, Some(i)) => {
            let m = r.map(i, "init", &["seed"])?;
            let seed = match m.get("seed") {
                Some(v) => r.integer(v, "init.seed", 0)?,
                None => 0,
            };
            Some(WeightsSource::Init { seed })
        }
        (None, None) => Some(WeightsSource::None),
    }
}

fn located_strings(r: &mut Reader, v: &Value, path: &str) -> Option<Vec<Located<String>>> {
    let names = r.strings(v, path)?;
    Some(
        names
            .into_iter()
            .enumerate()
            .map(|(i, value)| Located {
                value,
                path: format!("{path}[{i}]"),
            })
            .collect(),
    )
}

/// The layers that parsed, and the names of those that did not (so later checks stay quiet
/// about references to them instead of piling up follow-on errors).
fn parse_layers(r: &mut Reader, v: &Value) -> Option<(Vec<LayerConfig>, Vec<String>)> {
    let items = r.list(v, "layers")?;
    if items.is_empty() {
        r.error("layers", "a pipeline needs at least one layer");
        return None;
    }
    let mut layers = Vec::with_capacity(items.len());
    let mut broken = Vec::new();
    let mut previous = "input".to_string();
    for (i, item) in items.iter().enumerate() {
        let path = format!("layers[{i}]");
        match parse_layer(r, item, &path, &previous) {
            Some(layer) => {
                previous = layer.name.clone();
                layers.push(layer);
            }
            None => {
                // Keep the default-input chain pointing at the broken layer's name if it has one,
                // so its successor does not report a misleading input error.
                if let Some(name) = item.get("name").and_then(Value::as_str) {
                    previous = name.to_string();
                    broken.push(previous.clone());
                }
            }
        }
    }
    Some((layers, broken))
}

const LAYER_KEYS: [&str; 4] = ["name", "op", "inputs", "params"];

fn parse_layer(r: &mut Reader, v: &Value, path: &str, previous: &str) -> Option<LayerConfig> {
    // The allowed keys depend on the op, so read the op first.
    let op_name = v.get("op").and_then(Value::as_str).map(str::to_string);
    let known_op = op_name.as_deref().filter(|o| OpConfig::NAMES.contains(o));
    let mut allowed: Vec<&str> = LAYER_KEYS.to_vec();
    match known_op {
        Some(op) => allowed.extend_from_slice(OpConfig::attributes(op)),
        // Unknown op: its attributes cannot be judged, so accept any key rather than pile
        // misleading "unknown key" errors on top of the real one.
        None => {
            if let Value::Mapping(m) = v {
                allowed.extend(m.keys().filter_map(Value::as_str));
            }
        }
    }
    let m = r.map(v, path, &allowed)?;
    let name = m
        .require(r, "name", "a unique layer name")
        .and_then(|n| r.string(n, &m.key_path("name")));
    let op_value = m.require(r, "op", "the operation, e.g. dense or conv2d");
    let inputs = match m.get("inputs") {
        Some(v) => located_strings(r, v, &m.key_path("inputs")),
        None => Some(vec![Located {
            value: previous.to_string(),
            path: m.key_path("inputs"),
        }]),
    };
    let params = match m.get("params") {
        Some(p) => r.string(p, &m.key_path("params")),
        None => name.clone(),
    };
    let op = match (op_value, known_op) {
        (None, _) => None,
        (Some(Value::String(_)), Some(op)) => parse_op(r, &m, op),
        (Some(Value::String(op)), None) => {
            let hint = suggest(op, &OpConfig::NAMES)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            r.error(
                &m.key_path("op"),
                format!(
                    "unknown op `{op}`{hint}; expected one of: {}",
                    OpConfig::NAMES[..18].join(", ")
                ),
            );
            None
        }
        (Some(other), _) => r.string(other, &m.key_path("op")).and(None),
    };
    let inputs = inputs?;
    if let Some(op) = &op {
        let arity_ok = match op {
            OpConfig::Add | OpConfig::Concat { .. } => inputs.len() >= 2,
            _ => inputs.len() == 1,
        };
        if !arity_ok {
            let want = if matches!(op, OpConfig::Add | OpConfig::Concat { .. }) {
                "2 or more"
            } else {
                "exactly 1"
            };
            r.error(
                &m.key_path("inputs"),
                format!("{} takes {want} inputs, found {}", op.name(), inputs.len()),
            );
            return None;
        }
    }
    Some(LayerConfig {
        name: name?,
        inputs,
        params: params?,
        op: op?,
        path: path.to_string(),
    })
}

fn parse_activation(r: &mut Reader, m: &Map) -> Option<Activation> {
    let Some(v) = m.get("activation") else {
        return Some(Activation::Identity);
    };
    let path = m.key_path("activation");
    let name = r.string(v, &path)?;
    let act = Activation::from_name(&name);
    if act.is_none() {
        let hint = suggest(&name, &Activation::NAMES)
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        r.error(
            &path,
            format!(
                "unknown activation `{name}`{hint}; expected one of: {}",
                Activation::NAMES.join(", ")
            ),
        );
    }
    act
}

fn required_int(r: &mut Reader, m: &Map, key: &str, min: u64, what: &str) -> Option<usize> {
    let v = m.require(r, key, what)?;
    r.integer(v, &m.key_path(key), min).map(|n| n as usize)
}

fn optional_int(r: &mut Reader, m: &Map, key: &str, min: u64, default: usize) -> Option<usize> {
    match m.get(key) {
        Some(v) => r.integer(v, &m.key_path(key), min).map(|n| n as usize),
        None => Some(default),
    }
}

/// An optional integer in `1..=max`: the upper bounds keep a typo (`queue: 20000000`) from
/// becoming an allocation or a thread count that takes the machine down.
fn bounded_int(r: &mut Reader, m: &Map, key: &str, max: u64, default: usize) -> Option<usize> {
    match m.get(key) {
        Some(v) => r
            .integer_in(v, &m.key_path(key), 1, max)
            .map(|n| n as usize),
        None => Some(default),
    }
}

fn optional_pair(
    r: &mut Reader,
    m: &Map,
    key: &str,
    min: u64,
    default: [usize; 2],
) -> Option<[usize; 2]> {
    match m.get(key) {
        Some(v) => r.pair(v, &m.key_path(key), min),
        None => Some(default),
    }
}

fn optional_bool(r: &mut Reader, m: &Map, key: &str, default: bool) -> Option<bool> {
    match m.get(key) {
        Some(v) => r.boolean(v, &m.key_path(key)),
        None => Some(default),
    }
}

fn optional_eps(r: &mut Reader, m: &Map) -> Option<f32> {
    match m.get("eps") {
        Some(v) => r.positive_float(v, &m.key_path("eps")).map(|x| x as f32),
        None => Some(1e-5),
    }
}

fn parse_op(r: &mut Reader, m: &Map, op: &str) -> Option<OpConfig> {
    Some(match op {
        "dense" | "linear" => {
            let units = required_int(r, m, "units", 1, "the number of output units");
            let bias = optional_bool(r, m, "bias", true);
            let activation = parse_activation(r, m);
            OpConfig::Dense {
                units: units?,
                bias: bias?,
                activation: activation?,
            }
        }
        "conv2d" => {
            let filters = required_int(r, m, "filters", 1, "the number of output channels");
            let kernel = m
                .require(r, "kernel", "the kernel size, an integer or [h, w]")
                .and_then(|v| r.pair(v, &m.key_path("kernel"), 1));
            let stride = optional_pair(r, m, "stride", 1, [1, 1]);
            let padding = optional_pair(r, m, "padding", 0, [0, 0]);
            let dilation = optional_pair(r, m, "dilation", 1, [1, 1]);
            let groups = optional_int(r, m, "groups", 1, 1);
            let bias = optional_bool(r, m, "bias", true);
            let activation = parse_activation(r, m);
            let (filters, groups) = (filters?, groups?);
            if filters % groups != 0 {
                r.error(
                    &m.key_path("groups"),
                    format!("filters ({filters}) must be divisible by groups ({groups})"),
                );
                return None;
            }
            OpConfig::Conv2d(Conv2dConfig {
                filters,
                kernel: kernel?,
                stride: stride?,
                padding: padding?,
                dilation: dilation?,
                groups,
                bias: bias?,
                activation: activation?,
            })
        }
        "maxpool2d" | "avgpool2d" => {
            let kernel = m
                .require(r, "kernel", "the window size, an integer or [h, w]")
                .and_then(|v| r.pair(v, &m.key_path("kernel"), 1));
            let kernel = kernel?;
            let stride = optional_pair(r, m, "stride", 1, kernel)?;
            let pool = PoolConfig { kernel, stride };
            if op == "maxpool2d" {
                OpConfig::MaxPool2d(pool)
            } else {
                OpConfig::AvgPool2d(pool)
            }
        }
        "global_avgpool2d" => OpConfig::GlobalAvgPool2d,
        "flatten" => OpConfig::Flatten,
        "batchnorm" => OpConfig::BatchNorm {
            eps: optional_eps(r, m)?,
        },
        "layernorm" => OpConfig::LayerNorm {
            eps: optional_eps(r, m)?,
        },
        "identity" | "dropout" | "none" => OpConfig::Identity,
        "add" => OpConfig::Add,
        "concat" => OpConfig::Concat {
            axis: optional_int(r, m, "axis", 0, 0)?,
        },
        other => OpConfig::Activation(Activation::from_name(other)?),
    })
}

fn parse_stages(r: &mut Reader, v: &Value) -> Option<Vec<StageConfig>> {
    let items = r.list(v, "stages")?;
    if items.is_empty() {
        r.error(
            "stages",
            "give at least one stage, or leave `stages` out for a single stage",
        );
        return None;
    }
    let mut stages = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("stages[{i}]");
        let Some(m) = r.map(item, &path, &["name", "layers", "queue", "replicas"]) else {
            ok = false;
            continue;
        };
        let name = m
            .require(r, "name", "a unique stage name")
            .and_then(|n| r.string(n, &m.key_path("name")));
        let layers = m
            .require(r, "layers", "the layers this stage runs")
            .and_then(|l| located_strings(r, l, &m.key_path("layers")));
        if let Some(l) = &layers {
            if l.is_empty() {
                r.error(&m.key_path("layers"), "a stage needs at least one layer");
            }
        }
        let queue = bounded_int(r, &m, "queue", MAX_QUEUE, DEFAULT_QUEUE);
        let replicas = bounded_int(r, &m, "replicas", MAX_WORKERS, 1);
        // A bad queue or replica count is reported; the stage is still checked with the default.
        match (name, layers) {
            (Some(name), Some(layers)) => stages.push(StageConfig {
                name,
                layers,
                queue: queue.unwrap_or(DEFAULT_QUEUE),
                replicas: replicas.unwrap_or(1),
                path,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(stages)
}

fn parse_batch(r: &mut Reader, v: &Value) -> Option<BatchConfig> {
    let m = r.map(v, "batch", &["size", "max_delay_ms"])?;
    let size = bounded_int(r, &m, "size", MAX_BATCH, 32);
    let delay = match m.get("max_delay_ms") {
        Some(v) => r
            .integer_in(v, &m.key_path("max_delay_ms"), 0, 3_600_000)
            .map(|n| n as usize),
        None => Some(5),
    };
    Some(BatchConfig {
        size: size?,
        max_delay: Duration::from_millis(delay? as u64),
    })
}

fn parse_output(r: &mut Reader, v: &Value) -> Option<OutputConfig> {
    let m = r.map(v, "output", &["field", "argmax", "passthrough", "ordered"])?;
    let d = OutputConfig::default();
    let field = match m.get("field") {
        Some(v) => r.string(v, &m.key_path("field")),
        None => Some(d.field),
    };
    let argmax = optional_bool(r, &m, "argmax", false);
    let passthrough = match m.get("passthrough") {
        Some(v) => r.strings(v, &m.key_path("passthrough")),
        None => Some(Vec::new()),
    };
    let ordered = optional_bool(r, &m, "ordered", true);
    Some(OutputConfig {
        field: field?,
        argmax: argmax?,
        passthrough: passthrough?,
        ordered: ordered?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineConfig, ConfigErrors> {
        PipelineConfig::parse(text, Path::new("."))
    }

    #[test]
    fn defaults_are_filled_in() {
        let c =
            parse("input: {shape: [4]}\nlayers:\n  - {name: fc, op: dense, units: 2}\n").unwrap();
        assert_eq!(c.input.field, "x");
        assert_eq!(c.batch.size, 32);
        assert_eq!(c.layers[0].inputs[0].value, "input");
        assert_eq!(c.layers[0].params, "fc");
        assert!(c.output.ordered);
        assert_eq!(
            c.layers[0].op,
            OpConfig::Dense {
                units: 2,
                bias: true,
                activation: Activation::Identity
            }
        );
    }

    /// Random edits of a real pipeline file never panic the loader: every outcome is a config or
    /// a list of located errors.
    #[test]
    fn mutated_files_never_panic() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/configs/digits-cnn.yaml"
        ))
        .unwrap();
        let mut next = crate::weights::seeded_stream(5, "yaml-mutations");
        let mut rand = |n: usize| ((next() + 1.0) * 0.5 * n as f32) as usize % n.max(1);
        let alphabet = b"[]{},:-&*!|>'\"# \n0123456789abcxyz";
        let mut errors = 0;
        for _ in 0..3000 {
            let mut bytes = text.as_bytes().to_vec();
            for _ in 0..1 + rand(4) {
                let at = rand(bytes.len());
                match rand(3) {
                    0 => bytes[at] = alphabet[rand(alphabet.len())],
                    1 => bytes.insert(at, alphabet[rand(alphabet.len())]),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            let mutated = String::from_utf8_lossy(&bytes);
            if let Err(e) = PipelineConfig::parse(&mutated, Path::new("configs")) {
                errors += 1;
                assert!(!e.0.is_empty());
            }
        }
        assert!(
            errors > 500,
            "the mutations should break many files: {errors}"
        );
    }

    #[test]
    fn all_errors_are_reported_with_paths_and_lines() {
        let text = "input: {shape: [4]}\nlayers:\n  - {name: fc, op: dense, unitz: 2}\n  - {name: p, op: maxpool2d, kernel: 0}\nbatch: {size: 0}\n";
        let errs = parse(text).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"layers[0].unitz"), "{errs:?}");
        assert!(paths.contains(&"layers[0]"), "missing units: {errs:?}");
        assert!(paths.contains(&"layers[1].kernel"), "{errs:?}");
        assert!(paths.contains(&"batch.size"), "{errs:?}");
        let unitz = errs.iter().find(|e| e.path == "layers[0].unitz").unwrap();
        assert_eq!(unitz.location.map(|l| l.0), Some(3));
        assert!(unitz.message.contains("did you mean `units`"));
    }
}
