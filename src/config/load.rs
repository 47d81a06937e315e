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
