//! The layer graph: names resolved to values, shapes inferred, parameters loaded.
//!
//! [`Graph::build`] turns a parsed [`PipelineConfig`] into nodes whose inputs are [`ValueId`]s and
//! whose output shapes are known, reporting every dangling name, cycle and shape mismatch with the
//! key path it comes from. Built with the fast kernels, it also folds each batch norm into the
//! convolution before it where it can ([`fold`]). [`plan`] then cuts the graph into stages.
//!
//! The graph knows ops only through the [`Op`] trait: shapes, tensors, FLOPs and kernels all come
//! from the op's own file in [`crate::ops`]. Each value also has its rows: one per record, or one
//! per token for text ([`Rows`]); shapes are per row, and the byte bound counts token rows at the
//! chunk's token budget.

pub mod fold;
pub mod plan;

use std::collections::{HashMap, HashSet};

use crate::config::{suggest, ConfigError, ConfigErrors, PipelineConfig, WeightsSource};
use crate::ops::{self, Chunk, KernelKind, Layer, Op, Rows, TensorSlice, TensorSpec};
use crate::weights::{TensorData, WeightStore};

pub use plan::Plan;

/// The most values one record's output, or one parameter tensor, may hold (4 GiB of f32).
pub const MAX_ELEMENTS: usize = 1 << 30;

/// A value flowing through the graph: the model input, or the output of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

impl ValueId {
    /// The records as they come in.
    pub const INPUT: ValueId = ValueId(0);

    /// The value a layer produces.
    pub fn of_layer(index: usize) -> ValueId {
        ValueId(index + 1)
    }

    /// The layer that produces this value, or `None` for the model input.
    pub fn layer(self) -> Option<usize> {
        self.0.checked_sub(1)
    }
}

/// One layer, resolved.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub op: std::sync::Arc<dyn Op>,
    /// The values the layer reads: the file's, and in the fast graph, for a dense layer that a
    /// concat and a flatten fold into, the concat's inputs after the first too ([`fold`]).
    pub inputs: Vec<ValueId>,
    /// Per-row output shape (per record, or per token for token rows).
    pub shape: Vec<usize>,
    /// What the output's rows are.
    pub rows: Rows,
    /// Parameter tensors, by full name, with their shapes.
    pub params: Vec<(String, Vec<usize>)>,
    pub flops_per_record: u64,
    /// Full names of the PyTorch buffers the layer's module keeps and inference ignores
    /// ([`Op::buffers`]): `export` writes them.
    pub buffers: Vec<String>,
    /// For a layer folded into another (fast kernels only; see [`fold`]): a batch norm or an
    /// activation into the convolution before it, a convolution into the residual add or the
    /// max pool that reads it, a flatten (and the concat before it) into the dense layer that
    /// reads it. The node then passes its first input through, under its own name; a dense layer
    /// folded with a concat reads the concat's other inputs as inputs of its own.
    pub folded_into: Option<usize>,
    /// How many of the layer's parameters were subnormal and are read as zero by the fast
    /// kernels ([`crate::weights::flush_subnormals`]); 0 for the reference kernels.
    pub subnormals_zeroed: usize,
    /// Key path of the layer in the pipeline file.
    pub path: String,
    /// For a shard of a layer split by `shards: k`: the unsplit op, whose tensors it cuts.
    pub whole: Option<std::sync::Arc<dyn Op>>,
}

/// The model as a DAG of layers in evaluation order, with weights loaded.
#[derive(Debug)]
pub struct Graph {
    pub input_shape: Vec<usize>,
    /// Records of numbers come one row per record; text, one row per token.
    pub input_rows: Rows,
    pub nodes: Vec<Node>,
    /// Runnable layers, one per node: the fast kernels, or the reference ones for `verify`.
    pub layers: Vec<Box<dyn Layer>>,
    /// Which kernels `layers` are.
    pub kernels: KernelKind,
    /// The values written out, in output order.
    pub outputs: Vec<ValueId>,
    /// Tensors in the weights file that no layer reads.
    pub unused_tensors: Vec<String>,
}

impl Graph {
    /// A chunk's values with the model input set: `records` records of numbers (`values` is
    /// records × the input's length), or for text, tokens (`seqs` says where each record's
    /// tokens start; `values` is tokens × the input's length).
    pub fn input_env(&self, records: usize, values: Vec<f32>, seqs: Option<Vec<usize>>) -> Env {
        let rows = seqs.as_ref().map_or(records, |s| s[records]);
        let mut shape = vec![rows];
        shape.extend_from_slice(&self.input_shape);
        let input = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), values)
            .expect("the parser fills rows × the input's length");
        let mut env = Env::new(self.nodes.len(), records, seqs.map(Into::into));
        env.set(ValueId::INPUT, std::sync::Arc::new(input));
        env
    }

    pub fn rows(&self, v: ValueId) -> Rows {
        match v.layer() {
            None => self.input_rows,
            Some(i) => self.nodes[i].rows,
        }
    }

    pub fn shape(&self, v: ValueId) -> &[usize] {
        match v.layer() {
            None => &self.input_shape,
            Some(i) => &self.nodes[i].shape,
        }
    }

    /// The shape of the tensor value `v` holds when the layers run (per row): [`Graph::shape`],
    /// except where a folded layer passes its input on in its place (a convolution folded into
    /// the max pool after it carries the convolution's input; a flatten folded into a dense
    /// layer, its unflattened input, or a concat's first input). Routes and budgets count this.
    pub fn carried_shape(&self, v: ValueId) -> &[usize] {
        carried_shape(&self.nodes, &self.input_shape, v)
    }

    pub fn value_name(&self, v: ValueId) -> &str {
        match v.layer() {
            None => "input",
            Some(i) => &self.nodes[i].name,
        }
    }

    pub fn param_count(&self, node: usize) -> usize {
        self.nodes[node]
            .params
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Bytes of parameters the kernels of `nodes` hold, in their own layouts.
    pub fn param_bytes(&self, nodes: &[usize]) -> u64 {
        nodes.iter().map(|&i| self.layers[i].param_bytes()).sum()
    }

    /// Resolve names, infer shapes and load weights into the fast kernels, reporting every error
    /// found.
    pub fn build(config: &PipelineConfig) -> Result<Graph, ConfigErrors> {
        Graph::build_with(config, KernelKind::Fast)
    }

    /// [`Graph::build`] with the kernels of one's choice.
    pub fn build_with(config: &PipelineConfig, kernels: KernelKind) -> Result<Graph, ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |path: &str, message: String| {
            errors.push(ConfigError {
                path: path.to_string(),
                location: None,
                message,
            })
        };

        // Names first, so a forward reference can be told apart from a typo.
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, layer) in config.layers.iter().enumerate() {
            if layer.name == "input" {
                err(
                    &format!("{}.name", layer.path),
                    "`input` names the model input; choose another layer name".into(),
                );
            } else if let Some(first) = index.get(layer.name.as_str()) {
                err(
                    &format!("{}.name", layer.path),
                    format!(
                        "duplicate layer name `{}` (first used by layers[{first}])",
                        layer.name
                    ),
                );
            } else {
                index.insert(&layer.name, i);
            }
        }
        let all_names: Vec<&str> = std::iter::once("input")
            .chain(config.layers.iter().map(|l| l.name.as_str()))
            .collect();

        let store = match &config.weights {
            WeightsSource::File { path, key_path } => match WeightStore::open_file(path) {
                Ok(s) => Some(s),
                Err(e) => {
                    err(key_path, e);
                    None
                }
            },
            WeightsSource::Init { seed } => Some(WeightStore::Init { seed: *seed }),
            WeightsSource::None => Some(WeightStore::None),
            WeightsSource::Invalid => None,
        };
        let broken = |name: &str| config.broken_layers.iter().any(|b| b == name);

        let input_rows = match config.input.text {
            Some(_) => Rows::Tokens,
            None => Rows::Records,
        };
        // FLOPs per token are quoted for the longest record (attention grows with length).
        let seq = config.input.text.as_ref().map_or(1, |t| t.max_tokens);
        let mut nodes: Vec<Node> = Vec::new();
        // Each node's tensors, as the op lists them; `None` where one could not be loaded. The
        // kernels are built once every layer is known, since a fold reads a later layer's.
        let mut loaded: Vec<Option<Vec<Vec<f32>>>> = Vec::new();
        // Index of each layer's node, or None where the layer could not be resolved.
        let mut resolved: Vec<Option<usize>> = Vec::new();
        let mut used_tensors = HashSet::new();
        let mut reported_no_source = false;
        for (i, layer) in config.layers.iter().enumerate() {
            let mut inputs = Vec::new();
            let mut ok = true;
            for input in &layer.inputs {
                let name = input.value.as_str();
                if name == "input" {
                    inputs.push(ValueId::INPUT);
                    continue;
                }
                match index.get(name) {
                    Some(&j) if j < i => match resolved[j] {
                        Some(_) => inputs.push(ValueId::of_layer(j)),
                        None => ok = false, // its own error is already reported
                    },
                    Some(&j) => {
                        ok = false;
                        let msg = match find_cycle(config, &index, i) {
                            Some(cycle) => format!("layers form a cycle: {}", cycle.join(" -> ")),
                            None => format!(
                                "`{name}` is defined later (layers[{j}]); list every layer after the layers it reads"
                            ),
                        };
                        err(&input.path, msg);
                    }
                    None if broken(name) => ok = false,
                    None => {
                        ok = false;
                        let hint = suggest(name, &all_names)
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                        err(&input.path, format!("unknown input `{name}`{hint}; inputs are `input` or names of layers"));
                    }
                }
            }
            if !ok {
                resolved.push(None);
                continue;
            }
            let shapes: Vec<&[usize]> = inputs
                .iter()
                .map(|v| match v.layer() {
                    None => config.input.shape.as_slice(),
                    Some(j) => nodes[resolved[j].unwrap()].shape.as_slice(),
                })
                .collect();
            let input_kinds: Vec<Rows> = inputs
                .iter()
                .map(|v| match v.layer() {
                    None => input_rows,
                    Some(j) => nodes[resolved[j].unwrap()].rows,
                })
                .collect();
            // Rows first: a shape error on token rows would be a misleading second complaint.
            let checked = layer
                .op
                .rows(&input_kinds)
                .and_then(|rows| Ok((rows, layer.op.output_shape(&shapes)?)));
            let (rows, shape) = match checked {
                Ok(r) => r,
                Err(e) => {
                    err(
                        &format!("{}.{}", layer.path, e.key),
                        format!(
                            "layer `{}` ({}): {}",
                            layer.name,
                            layer.op.name(),
                            e.message
                        ),
                    );
                    resolved.push(None);
                    continue;
                }
            };
            // A typo such as `units: 10000000000` must be an error, not an allocation that takes
            // the machine down.
            let too_big = |dims: &[usize]| {
                dims.iter()
                    .try_fold(1usize, |a, d| a.checked_mul(*d))
                    .is_none_or(|n| n > MAX_ELEMENTS)
            };
            if too_big(&shape) {
                err(
                    &layer.path,
                    format!("layer `{}` would output {shape:?} per record: more than {MAX_ELEMENTS} values", layer.name),
                );
                resolved.push(None);
                continue;
            }
            let specs = layer.op.tensors(&shapes);
            if let Some(big) = specs.iter().find(|p| too_big(&p.shape)) {
                err(
                    &layer.path,
                    format!(
                        "layer `{}` would need a `{}` tensor of shape {:?}: more than {MAX_ELEMENTS} values",
                        layer.name, big.suffix, big.shape
                    ),
                );
                resolved.push(None);
                continue;
            }
            let mut params = Vec::new();
            let mut values = Vec::new();
            // A shard reads the whole layer's tensors, as the file or `init` has them, and cuts
            // its part: the weights are the same whether a layer is split or not.
            let sources: Vec<(TensorSpec, TensorSlice)> = match &layer.shard {
                Some(shard) => shard
                    .whole
                    .tensors(&shapes)
                    .into_iter()
                    .zip(shard.slices.iter().copied())
                    .collect(),
                None => specs
                    .iter()
                    .map(|s| (s.clone(), TensorSlice::Whole))
                    .collect(),
            };
            for (
                TensorSpec {
                    suffix,
                    shape: pshape,
                    ..
                },
                (whole, slice),
            ) in specs.iter().zip(&sources)
            {
                let full = format!("{}.{}", layer.params, whole.suffix);
                if let Some(store) = &store {
                    let fetched = store.fetch(&full, &whole.shape, whole.init).and_then(|v| {
                        let (part, shape) = slice.apply(v, &whole.shape);
                        if shape == *pshape {
                            Ok(part)
                        } else {
                            Err(format!(
                                "shard tensor `{suffix}` cut from `{full}` {:?} has shape {shape:?}, the shard needs {pshape:?}",
                                whole.shape
                            ))
                        }
                    });
                    match fetched {
                        Ok(v) => values.push(v),
                        // No weights source at all: say so once, for the first tensor needed.
                        Err(_) if matches!(store, WeightStore::None) => {
                            if !reported_no_source {
                                reported_no_source = true;
                                err(
                                    &layer.path,
                                    format!(
                                        "layer `{}` needs tensor `{full}` {pshape:?}, but the file gives neither `weights: FILE.safetensors` nor `init: {{seed: N}}`",
                                        layer.name
                                    ),
                                );
                            }
                        }
                        Err(e) => err(&layer.path, format!("layer `{}`: {e}", layer.name)),
                    }
                }
                used_tensors.insert(full.clone());
                params.push((full, pshape.clone()));
            }
            let buffers: Vec<String> = layer
                .op
                .buffers()
                .iter()
                .map(|b| format!("{}.{b}", layer.params))
                .collect();
            used_tensors.extend(buffers.iter().cloned());
            let flops = layer.op.flops(&shapes, &shape, seq);
            loaded.push((values.len() == specs.len()).then_some(values));
            resolved.push(Some(nodes.len()));
            // Remap inputs from layer indices to node indices: identical when nothing failed.
            let inputs = inputs.iter().map(|v| match v.layer() {
                None => ValueId::INPUT,
                Some(j) => ValueId::of_layer(resolved[j].unwrap()),
            });
            nodes.push(Node {
                name: layer.name.clone(),
                op: layer.op.clone(),
                inputs: inputs.collect(),
                shape,
                rows,
                params,
                flops_per_record: flops,
                buffers,
                folded_into: None,
                subnormals_zeroed: 0,
                path: layer.path.clone(),
                whole: layer.shard.as_ref().map(|s| s.whole.clone()),
            });
        }

        let outputs = match &config.outputs {
            None => config
                .layers
                .len()
                .checked_sub(1)
                .and_then(|last| resolved[last])
                .map(ValueId::of_layer)
                .into_iter()
                .collect(),
            Some(names) => {
                let mut outs = Vec::new();
                for o in names {
                    match (o.value.as_str(), index.get(o.value.as_str())) {
                        ("input", _) => outs.push(ValueId::INPUT),
                        (_, Some(&j)) => {
                            if let Some(n) = resolved[j] {
                                outs.push(ValueId::of_layer(n));
                            }
                        }
                        (name, None) if broken(name) => {}
                        (name, None) => {
                            let hint = suggest(name, &all_names)
                                .map(|s| format!(" (did you mean `{s}`?)"))
                                .unwrap_or_default();
                            err(&o.path, format!("unknown output `{name}`{hint}"));
                        }
                    }
                }
                if names.is_empty() {
                    err("outputs", "name at least one output".into());
                }
                outs
            }
        };

        let unused_tensors = store
            .as_ref()
            .map(|s| s.names())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !used_tensors.contains(n))
            .collect();
        // Without a usable weights section (its error was reported while parsing) the layers
        // cannot be built; the graph is unusable even if nothing else is wrong with it.
        let tensors: Option<Vec<Vec<Vec<f32>>>> = loaded.into_iter().collect();
        if let (true, Some(tensors)) = (errors.is_empty(), tensors) {
            // Each layer's kernel is built for the team of the stage that runs it.
            let threads: Vec<usize> = nodes
                .iter()
                .map(|n| {
                    let mut stages = config.stages.iter().flatten();
                    stages
                        .find(|s| s.layers.iter().any(|l| l.value == n.name))
                        .map_or(1, |s| s.threads)
                })
                .collect();
            let layers_out = fold::build_layers(
                &mut nodes,
                &outputs,
                &config.input.shape,
                tensors,
                kernels,
                config.batch.size,
                &threads,
            );
            Ok(Graph {
                input_shape: config.input.shape.clone(),
                input_rows,
                nodes,
                layers: layers_out,
                outputs,
                unused_tensors,
                kernels,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The monolithic pass: every layer in order, on one thread, over one batch of records
    /// (for text, `seqs` gives each record's first token; see [`Chunk::seqs`]). Returns the
    /// output values in output order.
    pub fn forward(&self, input: ops::Tensor, seqs: Option<Vec<usize>>) -> Vec<ops::Tensor> {
        self.forward_with(input, seqs, &mut ops::Scratch::default())
    }

    /// [`Graph::forward`] reusing a caller's scratch buffers from batch to batch.
    pub fn forward_with(
        &self,
        input: ops::Tensor,
        seqs: Option<Vec<usize>>,
        scratch: &mut ops::Scratch,
    ) -> Vec<ops::Tensor> {
        let records = match &seqs {
            Some(s) => s.len().saturating_sub(1),
            None => input.shape()[0],
        };
        let mut env = Env::new(self.nodes.len(), records, seqs.map(Into::into));
        env.set(ValueId::INPUT, std::sync::Arc::new(input));
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.eval(&all, &mut env, &[], scratch);
        let outputs: Vec<_> = self.outputs.iter().map(|v| env.get(*v).clone()).collect();
        drop(env);
        // The environment is gone, so each output is held once (unless it is listed twice).
        outputs
            .into_iter()
            .map(|t| std::sync::Arc::try_unwrap(t).unwrap_or_else(|t| t.as_ref().clone()))
            .collect()
    }

    /// Evaluate `layers` (node indices, ascending) reading and writing values in `env`. After
    /// `layers[j]`, the values in `frees[j]` are dropped (no later layer reads them and nothing
    /// downstream wants them), so a stage holds only its live values; an empty `frees` keeps
    /// every value.
    pub fn eval(
        &self,
        layers: &[usize],
        env: &mut Env,
        frees: &[Vec<ValueId>],
        scratch: &mut ops::Scratch,
    ) {
        for j in 0..layers.len() {
            self.eval_at(layers, j, env, frees, scratch);
        }
    }

    /// Evaluate `layers[j]` alone, as [`Graph::eval`] does in its turn: a stage runs its
    /// layers one call at a time to know, after a panic, which one failed.
    ///
    /// Why the whole list and not a one-layer slice: a value dropped after `layers[j]` was
    /// mostly computed by an earlier layer of the list, and only the list says that its
    /// storage is the stage's own to recycle. Called with `[j..=j]`, a stage recycled nothing,
    /// and the MLP allocated and zeroed two 256 KiB outputs a chunk.
    pub fn eval_at(
        &self,
        layers: &[usize],
        j: usize,
        env: &mut Env,
        frees: &[Vec<ValueId>],
        scratch: &mut ops::Scratch,
    ) {
        let i = layers[j];
        let node = &self.nodes[i];
        if node.op.passes_through() || node.folded_into.is_some() {
            // identity, dropout and folded batch norms: the same tensor under a new name,
            // shared, not copied.
            let same = env.get(node.inputs[0]).clone();
            env.set(ValueId::of_layer(i), same);
            self.free(layers, env, frees.get(j), scratch);
            return;
        }
        let inputs: Vec<std::sync::Arc<ops::Tensor>> =
            node.inputs.iter().map(|v| env.get(*v).clone()).collect();
        let refs: Vec<&ops::Tensor> = inputs.iter().map(|t| t.as_ref()).collect();
        let chunk = Chunk {
            records: env.records,
            seqs: env.seqs.as_deref(),
        };
        let out = self.layers[i].forward(&refs, &chunk, scratch);
        drop(inputs);
        env.set(ValueId::of_layer(i), std::sync::Arc::new(out));
        self.free(layers, env, frees.get(j), scratch);
    }

    /// Drop the values no later layer of `layers` reads. The outputs `layers` computed go to
    /// `scratch` to hold later outputs ([`ops::Scratch::output`]); the stage's inputs (and the
    /// nodes that pass one on) do not, as the memory bound counts them apart from its outputs.
    fn free(
        &self,
        layers: &[usize],
        env: &mut Env,
        frees: Option<&Vec<ValueId>>,
        scratch: &mut ops::Scratch,
    ) {
        for v in frees.into_iter().flatten() {
            let value = env.values[v.0].take();
            if let (Some(t), Some(l)) = (value, v.layer()) {
                // A node that passes its input on holds that input's tensor, not one of its own.
                let node = &self.nodes[l];
                let computed = !node.op.passes_through() && node.folded_into.is_none();
                if computed && layers.contains(&l) {
                    scratch.recycle(t);
                }
            }
        }
    }
}

/// [`Graph::carried_shape`] over the nodes, before the graph is assembled: a folded node passes
/// its first input on ([`Graph::eval`]), so its value is that input's, followed as far as it goes.
pub(crate) fn carried_shape<'a>(
    nodes: &'a [Node],
    input_shape: &'a [usize],
    mut v: ValueId,
) -> &'a [usize] {
    while let Some(i) = v.layer() {
        if nodes[i].folded_into.is_none() {
            return &nodes[i].shape;
        }
        v = nodes[i].inputs[0];
    }
    input_shape
}

/// Values of one chunk, by id; shared tensors so a value sent to two consumers is not copied.
#[derive(Debug, Default)]
pub struct Env {
    values: Vec<Option<std::sync::Arc<ops::Tensor>>>,
    /// Records in the chunk.
    pub records: usize,
    /// For text: where each record's tokens start (`records + 1` offsets).
    pub seqs: Option<std::sync::Arc<[usize]>>,
}

impl Env {
    pub fn new(layers: usize, records: usize, seqs: Option<std::sync::Arc<[usize]>>) -> Env {
        Env {
            values: vec![None; layers + 1],
            records,
            seqs,
        }
    }

    pub fn set(&mut self, v: ValueId, t: std::sync::Arc<ops::Tensor>) {
        self.values[v.0] = Some(t);
    }

    pub fn get(&self, v: ValueId) -> &std::sync::Arc<ops::Tensor> {
        self.values[v.0]
            .as_ref()
            .unwrap_or_else(|| panic!("value {} used before it was computed", v.0))
    }
}

/// Write every parameter the pipeline reads (from its file or its `init` seed) as an F32
/// safetensors file, so peers (ONNX Runtime, PyTorch) can load the very same weights; with the
/// layers' PyTorch buffers ([`Node::buffers`]) as int64 scalars, so that PyTorch's strict
/// `load_state_dict` takes the file as it is.
pub fn export_weights(
    config: &PipelineConfig,
    graph: &Graph,
    path: &std::path::Path,
) -> Result<usize, String> {
    let store = match &config.weights {
        WeightsSource::File { path, .. } => WeightStore::open_file(path)?,
        WeightsSource::Init { seed } => WeightStore::Init { seed: *seed },
        WeightsSource::None | WeightsSource::Invalid => WeightStore::None,
    };
    let mut tensors = std::collections::BTreeMap::new();
    for node in &graph.nodes {
        let shapes: Vec<&[usize]> = node.inputs.iter().map(|v| graph.shape(*v)).collect();
        // Shards write the whole tensors they cut (once: they share names), so the file
        // exported from a sharded pipeline is the unsplit model's.
        let op = node.whole.as_ref().unwrap_or(&node.op);
        for (spec, (name, _)) in op.tensors(&shapes).iter().zip(&node.params) {
            let values = store.fetch(name, &spec.shape, spec.init)?;
            tensors.insert(name.clone(), (spec.shape.clone(), TensorData::F32(values)));
        }
        // PyTorch's counters: the file's value where it has one, else 0 (a fresh module's).
        for name in &node.buffers {
            let count = store.i64_scalar(name).unwrap_or(0);
            tensors.insert(name.clone(), (Vec::new(), TensorData::I64(vec![count])));
        }
    }
    crate::weights::write_safetensors(path, &tensors)?;
    Ok(tensors.len())
}

/// A cycle through layer `start`, following inputs by name, if there is one.
fn find_cycle(
    config: &PipelineConfig,
    index: &HashMap<&str, usize>,
    start: usize,
) -> Option<Vec<String>> {
    fn visit(
        config: &PipelineConfig,
        index: &HashMap<&str, usize>,
        at: usize,
        start: usize,
        path: &mut Vec<usize>,
        seen: &mut HashSet<usize>,
    ) -> bool {
        for input in &config.layers[at].inputs {
            let Some(&j) = index.get(input.value.as_str()) else {
                continue;
            };
            if j == start {
                path.push(j);
                return true;
            }
            if seen.insert(j) {
                path.push(j);
                if visit(config, index, j, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start];
    let mut seen = HashSet::new();
    if visit(config, index, start, start, &mut path, &mut seen) {
        // `path` follows inputs backwards; show it in data-flow order.
        Some(
            path.iter()
                .rev()
                .map(|&i| config.layers[i].name.clone())
                .collect(),
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stage evaluates its layers one call at a time (`eval_at`); an output dropped in a later
    /// call than the one that made it must still go to the worker's spare outputs, for the next
    /// chunk to write over instead of allocating and zeroing its own.
    #[test]
    fn layers_evaluated_one_call_at_a_time_recycle_the_outputs_they_drop() {
        let text = "name: t\ninput: {shape: [8]}\ninit: {seed: 1}\nlayers:\n  \
            - {name: a, op: dense, units: 32, activation: relu}\n  \
            - {name: b, op: dense, units: 32}\n  \
            - {name: c, op: dense, units: 4}\n";
        let config = PipelineConfig::parse(text, std::path::Path::new(".")).unwrap();
        let plan = Plan::build(&config).unwrap();
        let stage = &plan.stages[0];
        assert_eq!(stage.layers.len(), 3);
        let records = 5;
        let chunk = |scratch: &mut ops::Scratch| -> *const f32 {
            let input = ops::Tensor::from_shape_vec(vec![records, 8], vec![0.5; records * 8]);
            let mut env = Env::new(plan.graph.nodes.len(), records, None);
            env.set(ValueId::INPUT, std::sync::Arc::new(input.unwrap()));
            let mut a = std::ptr::null();
            for j in 0..stage.layers.len() {
                plan.graph
                    .eval_at(&stage.layers, j, &mut env, &stage.frees, scratch);
                if j == 0 {
                    a = env.get(ValueId::of_layer(stage.layers[0])).as_ptr();
                }
            }
            a
        };
        let mut scratch = ops::Scratch::default();
        chunk(&mut scratch);
        // `b`'s output, dropped after `c` ran (`a`'s, dropped after `b`, went back when `c`
        // allocated its own: the memory bound's rule); `c`'s leaves the stage.
        assert_eq!(scratch.spare_floats(), records * 32);
        let kept = scratch.spare_ptrs()[0];
        // The next chunk's `a` writes over it.
        assert_eq!(chunk(&mut scratch), kept);
    }
}
