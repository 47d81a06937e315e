//! How YAML text becomes a [`PipelineConfig`]: every section read and checked on its own, every
//! error accumulated with its key path (and line and column), so a user fixes a file in one pass.
//! Layer attributes are read from each op's schema in the registry ([`crate::ops`]).

use std::path::Path;
use std::time::Duration;

use serde_yaml::Value;

use super::schema::*;
use super::yaml::{suggest, ConfigError, Document, Map, Reader, Spans};
use crate::ops::{self, Activation, AttrDefault, AttrKind, AttrSpec, AttrValue, Attrs};

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
        .and_then(|v| parse_input(r, v, base));
    let weights = parse_weights(r, &top, base);
    let layers = top
        .require(r, "layers", "the list of layers")
        .and_then(|v| parse_layers(r, v));
    let outputs = top.get("outputs").map(|v| located_strings(r, v, "outputs"));
    let layer_names: Vec<String> = match &layers {
        Some((l, _)) => l.iter().map(|l| l.name.clone()).collect(),
        None => Vec::new(),
    };
    let stages = top.get("stages").map(|v| parse_stages(r, v, &layer_names));
    let batch = top.get("batch").map(|v| parse_batch(r, v));
    let output = top.get("output").map(|v| parse_output(r, v));
    // Without an input shape or layers there is no graph to check; any other broken section
    // falls back to its default so the layers and stages are still checked in this same pass.
    let (layers, broken_layers) = layers?;
    let mut batch = batch.flatten().unwrap_or(BatchConfig::default());
    if let Some(input) = &input {
        check_token_budget(r, input, &mut batch);
    }
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
        batch,
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

/// Default cap on a text record's tokens (sentence-transformers' `max_seq_length` for BERT-family
/// encoders).
const DEFAULT_MAX_TOKENS: u64 = 256;

fn parse_input(r: &mut Reader, v: &Value, base: &Path) -> Option<InputConfig> {
    let m = r.map(v, "input", &["shape", "text", "field", "parsers"])?;
    let text = m.get("text").map(|t| parse_text_input(r, t, base));
    let shape_path = m.key_path("shape");
    let shape = match (&text, m.get("shape")) {
        (Some(_), Some(_)) => {
            r.error(
                &shape_path,
                "text records have no fixed shape (each is a sequence of tokens); give `shape` or `text`, not both",
            );
            None
        }
        // One id per token.
        (Some(_), None) => Some(vec![1]),
        (None, _) => m
            .require(
                r,
                "shape",
                "the per-record shape, e.g. [1, 28, 28], or `text` for text records",
            )
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
            }),
    };
    let field = match m.get("field") {
        Some(v) => r.string(v, &m.key_path("field")),
        None if text.is_some() => Some("text".to_string()),
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
        text: match text {
            Some(t) => Some(t?),
            None => None,
        },
        field: field?,
        parsers: parsers?,
    })
}

/// Tokens per chunk when a text pipeline does not say: enough for a full batch of typical
/// sentences, few enough that a chunk's activations stay small.
const DEFAULT_CHUNK_TOKENS: usize = 4096;

/// `batch.max_tokens` goes with text records, and must fit the longest record.
fn check_token_budget(r: &mut Reader, input: &InputConfig, batch: &mut BatchConfig) {
    match (&input.text, batch.max_tokens) {
        (None, Some(_)) => r.error(
            "batch.max_tokens",
            "`max_tokens` caps the tokens of text records; this pipeline's records are numbers",
        ),
        (Some(text), Some(n)) if n < text.max_tokens => r.error(
            "batch.max_tokens",
            format!(
                "a chunk of {n} tokens cannot hold a record of input.text.max_tokens = {} tokens",
                text.max_tokens
            ),
        ),
        (Some(text), None) => batch.max_tokens = Some(DEFAULT_CHUNK_TOKENS.max(text.max_tokens)),
        _ => {}
    }
}

fn parse_text_input(r: &mut Reader, v: &Value, base: &Path) -> Option<TextInput> {
    let m = r.map(v, "input.text", &["tokenizer", "max_tokens"])?;
    let tokenizer = m
        .require(r, "tokenizer", "the path of a Hugging Face tokenizer.json")
        .and_then(|t| r.string(t, &m.key_path("tokenizer")));
    let max_tokens = match m.get("max_tokens") {
        Some(v) => r
            .integer_in(v, &m.key_path("max_tokens"), 2, MAX_BATCH)
            .map(|n| n as usize),
        None => Some(DEFAULT_MAX_TOKENS as usize),
    };
    Some(TextInput {
        tokenizer: base.join(tokenizer?),
        max_tokens: max_tokens?,
        key_path: m.key_path("tokenizer"),
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
    let mut layers = LayerList {
        layers: Vec::with_capacity(items.len()),
        broken: Vec::new(),
        previous: "input".to_string(),
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("layers[{i}]");
        if item.get("repeat").is_some() {
            parse_block(r, item, &path, &mut layers);
        } else {
            layers.parse(r, item, &path);
        }
    }
    Some((layers.layers, layers.broken))
}

/// The layers parsed so far, and the name the next layer reads by default.
struct LayerList {
    layers: Vec<LayerConfig>,
    broken: Vec<String>,
    previous: String,
}

impl LayerList {
    fn parse(&mut self, r: &mut Reader, item: &Value, path: &str) -> bool {
        match parse_layer(r, item, path, &self.previous) {
            Some(layer) => {
                self.previous = layer.name.clone();
                self.layers.push(layer);
                true
            }
            None => {
                // Keep the default-input chain pointing at the broken layer's name if it has one,
                // so its successor does not report a misleading input error.
                if let Some(name) = item.get("name").and_then(Value::as_str) {
                    self.previous = name.to_string();
                    self.broken.push(self.previous.clone());
                }
                false
            }
        }
    }
}

/// Most repetitions of one block: a typo must not become a million layers.
const MAX_REPEAT: u64 = 1024;

/// A block of layers repeated `repeat` times (`{repeat: 6, layers: [...]}`): in every string of
/// the block, `{i}` becomes the repetition's index (0, 1, ...) and `{input}` the name of the value
/// the repetition reads (the layer before the block, then the previous repetition's last
/// layer). Errors point at the template's keys; a template that fails once is not expanded
/// again, so its errors are reported once.
fn parse_block(r: &mut Reader, item: &Value, path: &str, layers: &mut LayerList) {
    let Some(m) = r.map(item, path, &["repeat", "layers"]) else {
        return;
    };
    let count = m
        .require(r, "repeat", "how many times to repeat the block")
        .and_then(|v| r.integer_in(v, &m.key_path("repeat"), 1, MAX_REPEAT));
    let templates = m
        .require(r, "layers", "the layers of the block")
        .and_then(|v| r.list(v, &m.key_path("layers")));
    let (Some(count), Some(templates)) = (count, templates) else {
        return;
    };
    if templates.is_empty() {
        r.error(&m.key_path("layers"), "a block needs at least one layer");
        return;
    }
    for i in 0..count {
        let input = layers.previous.clone();
        for (j, template) in templates.iter().enumerate() {
            let layer = substitute(template, &i.to_string(), &input);
            if !layers.parse(r, &layer, &format!("{path}.layers[{j}]")) {
                return;
            }
        }
    }
}

/// `value` with `{i}` and `{input}` replaced in every string it holds.
fn substitute(value: &Value, index: &str, input: &str) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("{i}", index).replace("{input}", input)),
        Value::Sequence(items) => {
            Value::Sequence(items.iter().map(|v| substitute(v, index, input)).collect())
        }
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .map(|(k, v)| (k.clone(), substitute(v, index, input)))
                .collect(),
        ),
        other => other.clone(),
    }
}

const LAYER_KEYS: [&str; 4] = ["name", "op", "inputs", "params"];

fn parse_layer(r: &mut Reader, v: &Value, path: &str, previous: &str) -> Option<LayerConfig> {
    // The allowed keys depend on the op, so read the op first.
    let op_name = v.get("op").and_then(Value::as_str).map(str::to_string);
    let family = op_name.as_deref().and_then(ops::family);
    let mut allowed: Vec<&str> = LAYER_KEYS.to_vec();
    match family {
        Some(f) => allowed.extend(f.attributes().iter().map(|a| a.name)),
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
    let op = match (op_value, family) {
        (None, _) => None,
        (Some(Value::String(op)), Some(family)) => {
            let attrs = parse_attrs(r, &m, family.attributes());
            match family.configure(op, &attrs?) {
                Ok(op) => Some(op),
                Err(e) => {
                    r.error(&m.key_path(e.key), e.message);
                    None
                }
            }
        }
        (Some(Value::String(op)), None) => {
            let names = ops::all_names();
            let hint = suggest(op, &names)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            r.error(
                &m.key_path("op"),
                format!(
                    "unknown op `{op}`{hint}; expected one of: {}",
                    names.join(", ")
                ),
            );
            None
        }
        (Some(other), _) => r.string(other, &m.key_path("op")).and(None),
    };
    let inputs = inputs?;
    if let (Some(f), Some(op)) = (family, &op) {
        if !f.arity().accepts(inputs.len()) {
            r.error(
                &m.key_path("inputs"),
                format!(
                    "{} takes {} inputs, found {}",
                    op.name(),
                    f.arity().describe(),
                    inputs.len()
                ),
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

/// Read an op's attributes from its schema: each given one checked against its kind and range,
/// each missing one defaulted (or reported, when required). Every error is reported.
fn parse_attrs(r: &mut Reader, m: &Map, specs: &[AttrSpec]) -> Option<Attrs> {
    let mut values = Vec::with_capacity(specs.len());
    let mut ok = true;
    for spec in specs
        .iter()
        .filter(|s| !matches!(s.default, AttrDefault::SameAs(_)))
    {
        let path = m.key_path(spec.name);
        let value = match (m.get(spec.name), spec.default) {
            (Some(v), _) => parse_attr(r, v, &path, spec.kind),
            (None, AttrDefault::Value(d)) => Some(d),
            (None, AttrDefault::Required(what)) => m
                .require(r, spec.name, what)
                .and_then(|v| parse_attr(r, v, &path, spec.kind)),
            (None, AttrDefault::SameAs(_)) => unreachable!("filtered above"),
        };
        match value {
            Some(v) => values.push((spec.name, v)),
            None => ok = false,
        }
    }
    // Defaults that copy another attribute come after the attribute they copy.
    for spec in specs {
        let AttrDefault::SameAs(other) = spec.default else {
            continue;
        };
        let value = match m.get(spec.name) {
            Some(v) => parse_attr(r, v, &m.key_path(spec.name), spec.kind),
            None => values.iter().find(|(n, _)| *n == other).map(|(_, v)| *v),
        };
        match value {
            Some(v) => values.push((spec.name, v)),
            None => ok = false,
        }
    }
    ok.then(|| Attrs::new(values))
}

fn parse_attr(r: &mut Reader, v: &Value, path: &str, kind: AttrKind) -> Option<AttrValue> {
    Some(match kind {
        AttrKind::Int { min, max: u64::MAX } => AttrValue::Int(r.integer(v, path, min)? as usize),
        AttrKind::Int { min, max } => AttrValue::Int(r.integer_in(v, path, min, max)? as usize),
        AttrKind::Pair { min } => AttrValue::Pair(r.pair(v, path, min)?),
        AttrKind::Bool => AttrValue::Bool(r.boolean(v, path)?),
        AttrKind::PositiveFloat => AttrValue::Float(r.positive_float(v, path)?),
        AttrKind::Choice(names) => {
            let name = r.string(v, path)?;
            match names.iter().find(|n| **n == name) {
                Some(n) => AttrValue::Choice(n),
                None => {
                    let hint = suggest(&name, names)
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    r.error(
                        path,
                        format!(
                            "unknown value `{name}`{hint}; expected one of: {}",
                            names.join(", ")
                        ),
                    );
                    return None;
                }
            }
        }
        AttrKind::Activation => {
            let name = r.string(v, path)?;
            match Activation::from_name(&name) {
                Some(a) => AttrValue::Activation(a),
                None => {
                    let hint = suggest(&name, &Activation::NAMES)
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    r.error(
                        path,
                        format!(
                            "unknown activation `{name}`{hint}; expected one of: {}",
                            Activation::NAMES.join(", ")
                        ),
                    );
                    return None;
                }
            }
        }
    })
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

fn optional_bool(r: &mut Reader, m: &Map, key: &str, default: bool) -> Option<bool> {
    match m.get(key) {
        Some(v) => r.boolean(v, &m.key_path(key)),
        None => Some(default),
    }
}

fn parse_stages(r: &mut Reader, v: &Value, layer_names: &[String]) -> Option<Vec<StageConfig>> {
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
            .and_then(|l| located_strings(r, l, &m.key_path("layers")))
            .map(|l| expand_ranges(r, l, layer_names));
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

/// Stage layers given as `first..last` stand for every layer from `first` to `last` in file
/// order, both included (a range of repeated blocks reads `l0.attn..l2.out`).
fn expand_ranges(
    r: &mut Reader,
    items: Vec<Located<String>>,
    layer_names: &[String],
) -> Vec<Located<String>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some((first, last)) = item.value.split_once("..") else {
            out.push(item);
            continue;
        };
        let find = |r: &mut Reader, name: &str| {
            let found = layer_names.iter().position(|n| n == name);
            if found.is_none() {
                let names: Vec<&str> = layer_names.iter().map(String::as_str).collect();
                let hint = suggest(name, &names)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                r.error(
                    &item.path,
                    format!(
                        "the range `{}` names an unknown layer `{name}`{hint}",
                        item.value
                    ),
                );
            }
            found
        };
        let (a, b) = (find(r, first.trim()), find(r, last.trim()));
        match (a, b) {
            (Some(a), Some(b)) if a <= b => {
                out.extend(layer_names[a..=b].iter().map(|n| Located {
                    value: n.clone(),
                    path: item.path.clone(),
                }))
            }
            (Some(_), Some(_)) => r.error(
                &item.path,
                format!(
                    "the range `{}` runs backwards: `{}` comes after `{}` in the file",
                    item.value,
                    first.trim(),
                    last.trim()
                ),
            ),
            _ => {}
        }
    }
    out
}

fn parse_batch(r: &mut Reader, v: &Value) -> Option<BatchConfig> {
    let m = r.map(v, "batch", &["size", "max_tokens", "max_delay_ms"])?;
    let size = bounded_int(r, &m, "size", MAX_BATCH, 32);
    let max_tokens = match m.get("max_tokens") {
        Some(v) => r
            .integer_in(v, &m.key_path("max_tokens"), 1, MAX_BATCH)
            .map(|n| Some(n as usize)),
        None => Some(None),
    };
    let delay = match m.get("max_delay_ms") {
        Some(v) => r
            .integer_in(v, &m.key_path("max_delay_ms"), 0, 3_600_000)
            .map(|n| n as usize),
        None => Some(5),
    };
    Some(BatchConfig {
        size: size?,
        max_tokens: max_tokens?,
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
