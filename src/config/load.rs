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

const TOP_KEYS: [&str; 11] = [
    "name", "input", "weights", "init", "layers", "outputs", "shards", "stages", "batch", "output",
    "planned",
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
    let mut layers = top
        .require(r, "layers", "the list of layers")
        .and_then(|v| parse_layers(r, v));
    if let (Some(v), Some((l, _))) = (top.get("shards"), &mut layers) {
        shard_by_name(r, v, l);
    }
    let outputs = top.get("outputs").map(|v| located_strings(r, v, "outputs"));
    let layer_names: Vec<String> = match &layers {
        Some((l, _)) => l.iter().map(|l| l.name.clone()).collect(),
        None => Vec::new(),
    };
    // `stages: auto` leaves the stages to the planner, which runs when the pipeline starts.
    let auto_stages = top.get("stages").and_then(Value::as_str) == Some("auto");
    let stages = top
        .get("stages")
        .filter(|_| !auto_stages)
        .map(|v| parse_stages(r, v, &layer_names));
    let batch = top.get("batch").map(|v| parse_batch(r, v));
    let output = top.get("output").map(|v| parse_output(r, v, base));
    let planned = top.get("planned").and_then(|v| parse_planned(r, v));
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
        auto_stages,
        planned,
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
            top_k: None,
            labels: None,
        }
    }
}

/// Default cap on a text record's tokens (sentence-transformers' `max_seq_length` for BERT-family
/// encoders).
const DEFAULT_MAX_TOKENS: u64 = 256;

fn parse_input(r: &mut Reader, v: &Value, base: &Path) -> Option<InputConfig> {
    let m = r.map(v, "input", &["shape", "text", "image", "field", "parsers"])?;
    let text = m.get("text").map(|t| parse_text_input(r, t, base));
    let image = m.get("image").map(|i| parse_image_input(r, i));
    if text.is_some() && image.is_some() {
        r.error(
            &m.key_path("image"),
            "a record is text or an image, not both; give `text` or `image`",
        );
    }
    let shape_path = m.key_path("shape");
    let given_shape = m.get("shape").map(|v| {
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
    let shape = match (&text, &image, given_shape) {
        (Some(_), _, Some(_)) => {
            r.error(
                &shape_path,
                "text records have no fixed shape (each is a sequence of tokens); give `shape` or `text`, not both",
            );
            None
        }
        // One id per token.
        (Some(_), _, None) => Some(vec![1]),
        // The model sees the preprocessed image: RGB, channels first, `crop` pixels square.
        (None, Some(image), given) => {
            let image = image.as_ref()?;
            let made = vec![3, image.crop, image.crop];
            match given {
                Some(Some(g)) if g != made => {
                    r.error(
                        &shape_path,
                        format!(
                            "image records become [3, crop, crop] = {made:?} (input.image.crop = {}), not {g:?}; leave `shape` out or make it {made:?}",
                            image.crop
                        ),
                    );
                    None
                }
                Some(None) => None,
                _ => Some(made),
            }
        }
        (None, None, Some(given)) => given,
        (None, None, None) => {
            m.require(
                r,
                "shape",
                "the per-record shape, e.g. [1, 28, 28]; or `text` or `image` records",
            );
            None
        }
    };
    let field = match m.get("field") {
        Some(v) => r.string(v, &m.key_path("field")),
        None if text.is_some() => Some("text".to_string()),
        None if image.is_some() => Some("image".to_string()),
        None => Some("x".to_string()),
    };
    let parsers = match m.get("parsers") {
        Some(v) => r
            .integer_in(v, &m.key_path("parsers"), 1, MAX_WORKERS)
            .map(|n| n as usize),
        // Decoding and resizing an image costs milliseconds of a core, more than most models
        // spend on it per core: one parser per core keeps the stages fed.
        None if image.is_some() => Some(default_image_parsers()),
        None => Some(1),
    };
    Some(InputConfig {
        shape: shape?,
        text: match text {
            Some(t) => Some(t?),
            None => None,
        },
        image: match image {
            Some(i) => Some(i?),
            None => None,
        },
        field: field?,
        parsers: parsers?,
    })
}

/// Parsers of an image pipeline that does not say: one per core, at most [`MAX_IMAGE_PARSERS`].
fn default_image_parsers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_IMAGE_PARSERS)
}

/// Most parsers an image pipeline gets by default: each holds an image being decoded, which the
/// memory bound counts at its largest.
const MAX_IMAGE_PARSERS: usize = 4;

/// torchvision's ImageNet statistics, what every torchvision classifier was trained with.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Largest `resize`, `crop` and `max_side` allowed.
const MAX_IMAGE_SIDE: u64 = 65535;
/// Default cap on an image's width and height (`input.image.max_side`).
const DEFAULT_MAX_IMAGE_SIDE: u64 = 8000;
/// Default cap on an image file's size (`input.image.max_bytes`): 100 MB.
const DEFAULT_MAX_IMAGE_BYTES: u64 = 100_000_000;

fn parse_image_input(r: &mut Reader, v: &Value) -> Option<ImageInput> {
    let m = r.map(
        v,
        "input.image",
        &["resize", "crop", "mean", "std", "max_side", "max_bytes"],
    )?;
    let resize = m
        .require(r, "resize", "the shorter side after resizing, e.g. 256")
        .and_then(|v| r.integer_in(v, &m.key_path("resize"), 1, MAX_IMAGE_SIDE));
    let crop = m
        .require(r, "crop", "the side of the centre crop, e.g. 224")
        .and_then(|v| r.integer_in(v, &m.key_path("crop"), 1, MAX_IMAGE_SIDE))
        .filter(|&crop| match resize {
            Some(resize) if crop > resize => {
                r.error(
                    &m.key_path("crop"),
                    format!("crop {crop} is larger than the resized shorter side ({resize}); subpass does not pad: make crop at most resize"),
                );
                false
            }
            _ => true,
        });
    let triple = |r: &mut Reader, key: &str, default: [f32; 3], positive: bool| {
        let Some(v) = m.get(key) else {
            return Some(default);
        };
        let path = m.key_path(key);
        let items = r.list(v, &path)?;
        if items.len() != 3 {
            r.error(
                &path,
                format!(
                    "expected 3 numbers (red, green, blue), found {}",
                    items.len()
                ),
            );
            return None;
        }
        let mut out = [0f32; 3];
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let x = if positive {
                r.positive_float(item, &item_path)
            } else {
                r.finite_float(item, &item_path)
            };
            match x {
                Some(x) => out[i] = x as f32,
                None => ok = false,
            }
        }
        ok.then_some(out)
    };
    let mean = triple(r, "mean", IMAGENET_MEAN, false);
    let std = triple(r, "std", IMAGENET_STD, true);
    let max_side = match m.get("max_side") {
        Some(v) => r.integer_in(v, &m.key_path("max_side"), 1, MAX_IMAGE_SIDE),
        None => Some(DEFAULT_MAX_IMAGE_SIDE),
    };
    // Up to 4 GB: what the memory bound can count.
    let max_bytes = match m.get("max_bytes") {
        Some(v) => r.integer_in(v, &m.key_path("max_bytes"), 1, 1 << 32),
        None => Some(DEFAULT_MAX_IMAGE_BYTES),
    };
    Some(ImageInput {
        resize: resize? as usize,
        crop: crop? as usize,
        mean: mean?,
        std: std?,
        max_side: max_side? as usize,
        max_bytes: max_bytes?,
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
            Some(layers) => {
                self.previous = layers.last().expect("a layer").name.clone();
                self.layers.extend(layers);
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

const LAYER_KEYS: [&str; 5] = ["name", "op", "inputs", "params", "shards"];

/// Most shards of one layer.
pub const MAX_SHARDS: u64 = 64;

/// A layer of the file: one layer, or with `shards: k` the k shards and the layer that joins
/// them under the layer's own name (see [`shard_layer`]).
fn parse_layer(r: &mut Reader, v: &Value, path: &str, previous: &str) -> Option<Vec<LayerConfig>> {
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
    let shards = match m.get("shards") {
        Some(v) => r.integer_in(v, &m.key_path("shards"), 1, MAX_SHARDS)? as usize,
        None => 1,
    };
    let layer = LayerConfig {
        name: name?,
        inputs,
        params: params?,
        op: op?,
        path: path.to_string(),
        shard: None,
    };
    if shards == 1 {
        return Some(vec![layer]);
    }
    match shard_layer(&layer, shards) {
        Ok(layers) => Some(layers),
        Err(e) => {
            r.error(
                &m.key_path("shards"),
                format!("layer `{}`: {e}", layer.name),
            );
            None
        }
    }
}

/// The top-level `shards: {LAYER: k, ...}` section: each named layer split as if it had
/// `shards: k`. It exists for layers that have no entry of their own to carry the key (those a
/// `repeat` block makes, `layer1.0.conv1`), and it is what `subpass plan --objective latency`
/// writes, leaving the `layers` section as the user wrote it.
fn shard_by_name(r: &mut Reader, v: &Value, layers: &mut Vec<LayerConfig>) {
    let Value::Mapping(m) = v else {
        r.error(
            "shards",
            "expected a mapping from layer names to shard counts, e.g. {fc2: 2}",
        );
        return;
    };
    for (key, count) in m {
        let Some(name) = key.as_str() else {
            r.error("shards", "layer names are strings");
            continue;
        };
        let path = format!("shards.{name}");
        let Some(count) = r.integer_in(count, &path, 1, MAX_SHARDS) else {
            continue;
        };
        let Some(at) = layers.iter().position(|l| l.name == name) else {
            let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
            let hint = suggest(name, &names)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            r.error(&path, format!("no layer is named `{name}`{hint}"));
            continue;
        };
        let shard0 = format!("{name}.shard0");
        if layers[at].shard.is_some() || layers.iter().any(|l| l.name == shard0) {
            r.error(
                &path,
                format!("layer `{name}` is a shard or is split already"),
            );
            continue;
        }
        if count == 1 {
            continue;
        }
        match shard_layer(&layers[at], count as usize) {
            Ok(parts) => {
                layers.splice(at..=at, parts);
            }
            Err(e) => r.error(&path, format!("layer `{name}`: {e}")),
        }
    }
}

/// `layer` split into `count` shards named `NAME.shard0`, `NAME.shard1`, ..., which read its
/// inputs and its tensors (each its part), followed by the layer that combines their outputs
/// and keeps the name `NAME`, so the rest of the file reads the layer as if whole. The shards
/// can be put in stages of their own to run concurrently; shards no stage names run in the
/// stage of the combining layer.
pub fn shard_layer(layer: &LayerConfig, count: usize) -> Result<Vec<LayerConfig>, String> {
    let mut layers = Vec::with_capacity(count + 1);
    let mut combine = None;
    for index in 0..count {
        let shard = layer.op.shard(index, count)?;
        combine = Some(shard.combine);
        layers.push(LayerConfig {
            name: format!("{}.shard{index}", layer.name),
            inputs: layer.inputs.clone(),
            params: layer.params.clone(),
            op: shard.op,
            path: layer.path.clone(),
            shard: Some(ShardOf {
                combined: layer.name.clone(),
                whole: layer.op.clone(),
                slices: shard.slices,
            }),
        });
    }
    let inputs = layers
        .iter()
        .map(|s| Located {
            value: s.name.clone(),
            path: format!("{}.shards", layer.path),
        })
        .collect();
    layers.push(LayerConfig {
        name: layer.name.clone(),
        inputs,
        params: layer.name.clone(),
        op: combine.expect("at least two shards"),
        path: layer.path.clone(),
        shard: None,
    });
    Ok(layers)
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
    if let Some(other) = v.as_str() {
        r.error(
            "stages",
            format!("`stages` is a list of stages, or `auto` for the planner's; found `{other}`"),
        );
        return None;
    }
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
        let Some(m) = r.map(
            item,
            &path,
            &[
                "name",
                "layers",
                "queue",
                "replicas",
                "threads",
                "max_restarts",
                "core",
                "parse",
            ],
        ) else {
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
        let threads = bounded_int(r, &m, "threads", MAX_WORKERS, 1);
        // 0 is allowed: the first panic ends the run, as without supervision.
        let max_restarts = m.get("max_restarts").and_then(|v| {
            r.integer_in(v, &m.key_path("max_restarts"), 0, MAX_RESTARTS)
                .map(|n| n as u32)
        });
        let core = m
            .get("core")
            .and_then(|v| r.integer_in(v, &m.key_path("core"), 0, MAX_WORKERS - 1))
            .map(|n| n as usize);
        let parse = optional_bool(r, &m, "parse", false).unwrap_or(false);
        if let (Some(t), Some(_)) = (threads, core) {
            if t > 1 {
                // The pool's threads go where the OS puts them; pinning only the worker, which
                // waits while they compute, would pin nothing that runs.
                r.error(
                    &m.key_path("core"),
                    "`core` pins a stage of one thread; leave it out with `threads` above 1",
                );
            }
        }
        // A bad queue or replica count is reported; the stage is still checked with the default.
        match (name, layers) {
            (Some(name), Some(layers)) => stages.push(StageConfig {
                name,
                layers,
                queue: queue.unwrap_or(DEFAULT_QUEUE),
                replicas: replicas.unwrap_or(1),
                threads: threads.unwrap_or(1),
                max_restarts,
                core,
                parse,
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

fn parse_planned(r: &mut Reader, v: &Value) -> Option<PlannedFigures> {
    let m = r.map(v, "planned", &["cores", "batch", "records_per_s"])?;
    let cores = m
        .require(r, "cores", "the cores the plan was made for")
        .and_then(|v| r.integer_in(v, &m.key_path("cores"), 1, MAX_WORKERS));
    let batch = m
        .require(r, "batch", "the batch size the plan was made for")
        .and_then(|v| r.integer_in(v, &m.key_path("batch"), 1, MAX_BATCH));
    let rate = m
        .require(r, "records_per_s", "the predicted records per second")
        .and_then(|v| match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Some(x),
            _ => {
                r.error(&m.key_path("records_per_s"), "must be a positive number");
                None
            }
        });
    Some(PlannedFigures {
        cores: cores? as usize,
        batch: batch? as usize,
        records_per_s: rate?,
    })
}

fn parse_output(r: &mut Reader, v: &Value, base: &Path) -> Option<OutputConfig> {
    let m = r.map(
        v,
        "output",
        &[
            "field",
            "argmax",
            "passthrough",
            "ordered",
            "top_k",
            "labels",
        ],
    )?;
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
    let top_k = match m.get("top_k") {
        Some(v) => r
            .integer_in(v, &m.key_path("top_k"), 1, MAX_TOP_K)
            .map(|k| {
                Some(Located {
                    value: k as usize,
                    path: m.key_path("top_k"),
                })
            }),
        None => Some(None),
    };
    let labels = match m.get("labels") {
        Some(v) => {
            let path = m.key_path("labels");
            if m.get("top_k").is_none() {
                r.error(
                    &path,
                    "labels name the classes `top_k` writes; add `top_k: 5` (or another k)",
                );
            }
            r.string(v, &path)
                .and_then(|file| read_labels(r, &base.join(file), &path))
                .map(Some)
        }
        None => Some(None),
    };
    Some(OutputConfig {
        field: field?,
        argmax: argmax?,
        passthrough: passthrough?,
        ordered: ordered?,
        top_k: top_k?,
        labels: labels?,
    })
}

/// Most classes `top_k` may write per record.
const MAX_TOP_K: u64 = 1 << 16;

/// A labels file: one class name per line (line `i` names class `i`), UTF-8, no empty names.
fn read_labels(r: &mut Reader, file: &Path, key_path: &str) -> Option<Labels> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            r.error(
                key_path,
                format!("cannot read the labels file {}: {e}", file.display()),
            );
            return None;
        }
    };
    let mut names: Vec<String> = text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect();
    // Blank lines at the end are the file's ending, not classes.
    while names.last().is_some_and(|n| n.trim().is_empty()) {
        names.pop();
    }
    if names.is_empty() {
        r.error(
            key_path,
            format!("the labels file {} names no class", file.display()),
        );
        return None;
    }
    if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
        r.error(
            key_path,
            format!(
                "the labels file {} has an empty name on line {}; give one class name per line",
                file.display(),
                i + 1
            ),
        );
        return None;
    }
    Some(Labels {
        names: std::sync::Arc::new(names),
        file: file.to_path_buf(),
        key_path: key_path.to_string(),
    })
}
