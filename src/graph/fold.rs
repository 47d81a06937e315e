//! Plan-time rewrites of the fast graph: batch norms, then elementwise activations, folded into
//! the convolution before them.
//!
//! At inference a batch norm is `y = x · scale[c] + shift[c]` per channel. After a convolution
//! whose output nothing else reads, that map folds into the convolution's own tensors: each
//! filter's weights times its channel's scale, its bias times the scale plus the shift. One op
//! instead of two and one pass over the activations fewer, with the same numbers up to float
//! rounding (the product `w · scale` is rounded to f32 once).
//!
//! An activation (`relu`) that alone reads such a convolution, or the batch norm folded into
//! it, becomes the convolution's own `activation`: ReLU is applied as the kernel writes its
//! output, which saves another pass over the activations (ResNet's conv, bn, relu is one op).
//!
//! A convolution whose output (after its folded batch norm) only a residual `add` reads is
//! folded into that add: the add's node runs the convolution, and the kernel adds the other
//! value as it writes, then the activation that alone reads the sum (ResNet's conv, bn, add,
//! relu is one op, and two passes over the activations fewer).
//!
//! A direct convolution whose output (after its folded batch norm or activation) only a 2×2
//! stride-2 max pool reads is folded into that pool: the pool's node runs the convolution, whose
//! kernel writes only each block's maximum (the small CNN's conv, relu, pool is one op: the
//! full-size activation is never stored, and the pool's pass is gone).
//!
//! A `flatten` that only a dense layer reads is folded into it: the dense layer reads the
//! flatten's input as it is, each record's values in row-major order as one row. Where that
//! input is a concat on the records' first axis (channels) that only the flatten reads, the
//! concat folds too: flattened, `[a; b]` is `a`'s values then `b`'s, so the dense layer reads
//! `a` and `b` themselves and sums `W[:, ..ka] · a + W[:, ka..] · b` (the CNN's merge, flat,
//! fc1 is one op, and two copies of the activations fewer).
//!
//! The fast kernels read subnormal parameters (below 1.2e-38 in magnitude, which training with
//! weight decay leaves behind) as zero, after the folds: on Intel cores each product with one
//! takes a microcode assist ([`crate::weights::flush_subnormals`]). `validate` lists how many
//! per layer.
//!
//! The rewrites are made while the kernels are built, and only for the fast kernels: the graph
//! keeps both nodes (stages, routes and `export` still see the file's layers and tensors), the
//! convolution's kernel is built from the folded tensors and the batch norm passes its input
//! through. `verify` runs the reference kernels on the unfolded graph, so it checks every fold;
//! `validate` lists them.

use std::sync::Arc;

use super::{carried_shape, Node, ValueId};
use crate::ops::{ChannelAffine, Chunk, KernelKind, Layer, Op, Rows, Scratch, Tensor};

/// A batch norm folded into the convolution that feeds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    /// Node index of the convolution, or of the layer that joins a sharded convolution's
    /// shards (`shards: k`), whose output the batch norm reads.
    pub conv: usize,
    /// The nodes that absorb the map, each with the channels of it that are its own: the
    /// convolution with all of them, or each shard with its filters' part.
    pub parts: Vec<(usize, std::ops::Range<usize>)>,
    /// Node index of the batch norm, which then passes its input through.
    pub batchnorm: usize,
    /// The batch norm's map, from its tensors.
    pub affine: ChannelAffine,
}

/// Whether a value has one reader and is not a pipeline output: folding its producer into that
/// reader changes nothing anyone else sees.
fn sole_reader(nodes: &[Node], outputs: &[ValueId]) -> impl Fn(ValueId) -> bool {
    let mut readers = vec![0usize; nodes.len() + 1];
    for node in nodes {
        for v in &node.inputs {
            readers[v.0] += 1;
        }
    }
    let outputs = outputs.to_vec();
    move |v: ValueId| readers[v.0] == 1 && !outputs.contains(&v)
}

/// The per-record shape of value `v` as the file defines it ([`carried_shape`] says what a
/// folded layer's value holds instead).
fn shape_of<'a>(nodes: &'a [Node], input_shape: &'a [usize], v: ValueId) -> &'a [usize] {
    match v.layer() {
        None => input_shape,
        Some(j) => &nodes[j].shape,
    }
}

/// The nodes that take what follows node `c` into themselves: `c` itself when `takes(c)`, or,
/// when `c` joins the shards of a split layer (`shards: k`), every shard, if each takes it and
/// nothing but the join reads them. `None` when neither.
fn absorbers(
    nodes: &[Node],
    c: usize,
    takes: impl Fn(usize) -> bool,
    alone: &impl Fn(ValueId) -> bool,
) -> Option<Vec<usize>> {
    if takes(c) {
        return Some(vec![c]);
    }
    let inputs = &nodes[c].inputs;
    let shards = !inputs.is_empty()
        && inputs.iter().all(|v| {
            v.layer()
                .is_some_and(|s| nodes[s].whole.is_some() && takes(s) && alone(*v))
        });
    shards.then(|| inputs.iter().filter_map(|v| v.layer()).collect())
}

/// The folds to make: every per-channel affine node (a batch norm) that reads, alone, the
/// output of an op that can absorb it (a convolution without an activation), where that output
/// is read by no other layer and is not a pipeline output. A convolution split into shards
/// absorbs it too: each shard takes the map of its own filters, as long as nothing but the
/// joining layer reads the shards. `tensors` holds each node's tensors.
pub fn find(nodes: &[Node], outputs: &[ValueId], tensors: &[Vec<Vec<f32>>]) -> Vec<Fold> {
    let alone = sole_reader(nodes, outputs);
    let mut folds = Vec::new();
    for (b, node) in nodes.iter().enumerate() {
        let [input] = node.inputs[..] else {
            continue;
        };
        let Some(c) = input.layer() else {
            continue;
        };
        if !alone(input) || node.rows != Rows::Records {
            continue;
        }
        let Some(affine) = node.op.channel_affine(&tensors[b]) else {
            continue;
        };
        let conv = &nodes[c];
        // The convolution itself, or the shards a sharded one is joined from.
        let takes = |n: usize| nodes[n].op.folds_channel_affine();
        let Some(sources) = absorbers(nodes, c, takes, &alone) else {
            continue;
        };
        let mut parts = Vec::with_capacity(sources.len());
        let mut start = 0;
        for s in sources {
            let channels = nodes[s].shape.first().copied().unwrap_or(0);
            parts.push((s, start..start + channels));
            start += channels;
        }
        if conv.shape.first() == Some(&affine.scale.len()) && start == affine.scale.len() {
            folds.push(Fold {
                conv: c,
                parts,
                batchnorm: b,
                affine,
            });
        }
    }
    folds
}

/// Build every node's kernel of the kind asked from its tensors, for chunks of `batch` records
/// on a team of `threads[node]` threads, folding batch norms first when the kernels are the fast
/// ones (and marking the folded nodes in `nodes`).
pub(super) fn build_layers(
    nodes: &mut [Node],
    outputs: &[ValueId],
    input_shape: &[usize],
    tensors: Vec<Vec<Vec<f32>>>,
    kernels: KernelKind,
    batch: usize,
    threads: &[usize],
) -> Vec<Box<dyn Layer>> {
    let folds = match kernels {
        KernelKind::Fast => find(nodes, outputs, &tensors),
        KernelKind::Reference => Vec::new(),
    };
    let mut ops: Vec<Arc<dyn Op>> = nodes
        .iter()
        .zip(threads)
        .map(|(n, &t)| n.op.for_stage(batch, t).unwrap_or_else(|| n.op.clone()))
        .collect();
    let mut tensors: Vec<Option<Vec<Vec<f32>>>> = tensors.into_iter().map(Some).collect();
    for fold in folds {
        for (part, channels) in fold.parts {
            let affine = ChannelAffine {
                scale: fold.affine.scale[channels.clone()].to_vec(),
                shift: fold.affine.shift[channels].to_vec(),
            };
            let conv_tensors = tensors[part].take().expect("a node folds once");
            let (op, folded) = ops[part].fold_channel_affine(conv_tensors, &affine);
            ops[part] = op;
            tensors[part] = Some(folded);
        }
        let bn = &mut nodes[fold.batchnorm];
        bn.folded_into = Some(fold.conv);
        bn.flops_per_record = 0;
    }
    if kernels == KernelKind::Fast {
        for r in residuals(nodes, outputs, input_shape, &ops) {
            ops[r.add] = ops[r.conv].with_residual(r.at).expect("found to take it");
            tensors[r.add] = tensors[r.conv].replace(Vec::new());
            nodes[r.conv].folded_into = Some(r.add);
            nodes[r.add].flops_per_record += nodes[r.conv].flops_per_record;
            nodes[r.conv].flops_per_record = 0;
        }
        for (act, parts, into) in activations(nodes, outputs, &ops) {
            for p in parts {
                let a = nodes[act]
                    .op
                    .elementwise_activation()
                    .expect("found as one");
                ops[p] = ops[p].with_activation(a).expect("found to take it");
            }
            nodes[act].folded_into = Some(into);
            nodes[act].flops_per_record = 0;
        }
        // After the activations, so that conv, relu, pool folds whole.
        for (conv, pool, op) in max_pools(nodes, outputs, input_shape, &ops) {
            ops[pool] = op;
            tensors[pool] = tensors[conv].replace(Vec::new());
            nodes[conv].folded_into = Some(pool);
            nodes[pool].flops_per_record += nodes[conv].flops_per_record;
            nodes[conv].flops_per_record = 0;
        }
    }
    if kernels == KernelKind::Fast {
        for fold in flat_inputs(nodes, outputs, input_shape, &ops) {
            ops[fold.dense] = ops[fold.dense].with_flat_input().expect("found to take it");
            nodes[fold.flatten].folded_into = Some(fold.dense);
            if let Some(concat) = fold.concat {
                // The flatten passes on the concat's value, which is its first input: the dense
                // layer reads the others itself (routes take them to its stage).
                nodes[concat].folded_into = Some(fold.dense);
                let others = nodes[concat].inputs[1..].to_vec();
                nodes[fold.dense].inputs.extend(others);
            }
        }
    }
    // Each layer's kernel is built (its weights packed, transformed) on whichever core is
    // free: one after another, ResNet-18 took a quarter of a second to start. A small model's
    // layers are built in the time it takes to hand them over.
    let heavy = tensors
        .iter()
        .flatten()
        .flatten()
        .map(Vec::len)
        .sum::<usize>()
        >= crate::par::PIECE;
    let built = crate::par::map_vec(tensors, heavy, |i, values| -> (Box<dyn Layer>, usize) {
        let mut values = values.expect("every node has its tensors");
        let node = &nodes[i];
        if node.folded_into.is_some() {
            return (Box::new(FoldedAway), 0);
        }
        // After the folds, whose products can underflow too. The reference kernels, which
        // `verify` checks these against, keep the file's values.
        let zeroed = match kernels {
            KernelKind::Fast => values
                .iter_mut()
                .map(|t| crate::weights::flush_subnormals(t))
                .sum(),
            KernelKind::Reference => 0,
        };
        // What the inputs carry: a pool that runs the convolution before it reads that
        // convolution's input, passed on under the convolution's name.
        let shapes: Vec<&[usize]> = node
            .inputs
            .iter()
            .map(|v| carried_shape(nodes, input_shape, *v))
            .collect();
        (ops[i].build(kernels, &shapes, &node.shape, values), zeroed)
    });
    built
        .into_iter()
        .zip(nodes.iter_mut())
        .map(|((layer, zeroed), node)| {
            node.subnormals_zeroed = zeroed;
            layer
        })
        .collect()
}

/// A convolution folded into the residual `add` that alone reads it: the add's node runs the
/// convolution and adds the other value as the kernel writes.
#[derive(Debug, PartialEq)]
struct Residual {
    conv: usize,
    add: usize,
    /// Which of the add's two inputs is the residual (the other is the convolution's output).
    at: usize,
}

/// The residual sums to fold: an `add` of two values where one is the output of a convolution
/// (directly or through a batch norm folded into it) that nothing else sees and that can take
/// a residual (no activation of its own). The convolution's input must have its output's shape
/// (ResNet's 3×3 stride-1 convolutions): the folded convolution passes its input on under its
/// own name, to the add that runs it, so stage routes and memory budgets keep their sizes.
/// Runs after the batch norm folds, on their `ops`.
fn residuals(
    nodes: &[Node],
    outputs: &[ValueId],
    input_shape: &[usize],
    ops: &[Arc<dyn Op>],
) -> Vec<Residual> {
    let alone = sole_reader(nodes, outputs);
    let shape_of = |v: ValueId| shape_of(nodes, input_shape, v);
    let mut found: Vec<Residual> = Vec::new();
    for (add, node) in nodes.iter().enumerate() {
        if node.op.name() != "add" || node.inputs.len() != 2 || node.rows != Rows::Records {
            continue;
        }
        // The convolution's side first, then the other: a sum of two convolutions folds one.
        for at in [1, 0] {
            let side = node.inputs[1 - at];
            let Some(mut c) = side.layer() else {
                continue;
            };
            if !alone(side) {
                continue;
            }
            if let Some(conv) = nodes[c].folded_into {
                c = conv;
            }
            let conv = &nodes[c];
            let [input] = conv.inputs[..] else {
                continue;
            };
            if ops[c].with_residual(at).is_none() || shape_of(input) != conv.shape.as_slice() {
                continue;
            }
            found.push(Residual { conv: c, add, at });
            break;
        }
    }
    found
}

/// The activations to fuse into the op before them: an elementwise activation node that alone
/// reads a convolution's output (directly or through a batch norm folded into it), where the
/// convolution has no activation of its own and nothing else sees its output. Returns, per
/// fusion, the activation node, the nodes whose ops take the activation (the convolution, or
/// each shard of a sharded one: an elementwise map commutes with their concatenation) and the
/// node the activation is folded into. Runs after the batch norm folds, on their `ops`.
fn activations(
    nodes: &[Node],
    outputs: &[ValueId],
    ops: &[Arc<dyn Op>],
) -> Vec<(usize, Vec<usize>, usize)> {
    let alone = sole_reader(nodes, outputs);
    let mut found = Vec::new();
    for (a, node) in nodes.iter().enumerate() {
        let (Some(activation), [input]) = (node.op.elementwise_activation(), &node.inputs[..])
        else {
            continue;
        };
        let Some(mut c) = input.layer() else {
            continue;
        };
        if !alone(*input) || node.rows != Rows::Records {
            continue;
        }
        // Through a batch norm folded into the convolution (which only it reads).
        if let Some(conv) = nodes[c].folded_into {
            c = conv;
        }
        let takes = |n: usize| ops[n].with_activation(activation).is_some();
        let Some(parts) = absorbers(nodes, c, takes, &alone) else {
            continue;
        };
        // Nothing else sees the convolution's output: the activation reads it alone, or reads
        // alone the batch norm that alone read it (the fold's own condition).
        found.push((a, parts, c));
    }
    found
}

/// The 2×2 max pools to fold: a pool (`Op::is_max_pool_2x2`) that alone reads the output of a
/// convolution (directly, or through a batch norm or activation folded into it) that nothing
/// else sees, where the convolution takes the pool ([`Op::with_max_pool`]: a direct one with no
/// activation or ReLU). Returns, per fold, the convolution's node, the pool's, and the op the
/// pool's node runs. Runs after the other folds, on their `ops`: the convolution then passes its
/// input on under its own name (its value carries the input's shape, which routes and budgets
/// count, [`carried_shape`]).
fn max_pools(
    nodes: &[Node],
    outputs: &[ValueId],
    input_shape: &[usize],
    ops: &[Arc<dyn Op>],
) -> Vec<(usize, usize, Arc<dyn Op>)> {
    let alone = sole_reader(nodes, outputs);
    let mut found = Vec::new();
    for (pool, node) in nodes.iter().enumerate() {
        let [input] = node.inputs[..] else {
            continue;
        };
        if !node.op.is_max_pool_2x2() || !alone(input) || node.rows != Rows::Records {
            continue;
        }
        let Some(mut c) = input.layer() else {
            continue;
        };
        // Through a batch norm or activation folded into the convolution, which alone read it
        // (their folds' own condition).
        if let Some(conv) = nodes[c].folded_into {
            c = conv;
        }
        let [conv_input] = nodes[c].inputs[..] else {
            continue;
        };
        // A convolution folded into a residual add is read by the add alone, never here.
        if nodes[c].folded_into.is_some() {
            continue;
        }
        let shape = carried_shape(nodes, input_shape, conv_input);
        if let Some(op) = ops[c].with_max_pool(&[shape]) {
            found.push((c, pool, op));
        }
    }
    found
}

/// A flatten folded into the dense layer that alone reads it, with the concat it alone reads.
#[derive(Debug, PartialEq)]
struct FlatInput {
    dense: usize,
    flatten: usize,
    /// The concat on the records' first axis before the flatten, folded too: the dense layer
    /// then reads its inputs (the first through the flatten, which passes it on, the others
    /// added to the dense node's inputs).
    concat: Option<usize>,
}

/// The flattens to fold ([`Op::is_flatten`]): one that only a dense layer that can read flat
/// records ([`Op::with_flat_input`]) reads, and that is not a pipeline output; with the concat
/// before it where that concat is on the records' first axis, only the flatten reads it and it
/// is not an output either. The values read must carry their own shapes (no folded layer passes
/// another value on in their place), so that the dense layer's row is the flatten's. Runs after
/// the other folds, on their `ops`.
fn flat_inputs(
    nodes: &[Node],
    outputs: &[ValueId],
    input_shape: &[usize],
    ops: &[Arc<dyn Op>],
) -> Vec<FlatInput> {
    let alone = sole_reader(nodes, outputs);
    let as_carried =
        |v: ValueId| carried_shape(nodes, input_shape, v) == shape_of(nodes, input_shape, v);
    let on_records = |n: usize| nodes[n].rows == Rows::Records && nodes[n].folded_into.is_none();
    let mut found = Vec::new();
    for (dense, node) in nodes.iter().enumerate() {
        let [input] = node.inputs[..] else {
            continue;
        };
        let Some(flatten) = input.layer() else {
            continue;
        };
        if !nodes[flatten].op.is_flatten()
            || !alone(input)
            || ops[dense].with_flat_input().is_none()
        {
            continue;
        }
        let [flat_input] = nodes[flatten].inputs[..] else {
            continue;
        };
        if !on_records(dense) || !on_records(flatten) || !as_carried(flat_input) {
            continue;
        }
        let concat = flat_input.layer().filter(|&c| {
            let first_axis = nodes[c].op.concat_axis(nodes[c].shape.len()) == Some(0);
            first_axis
                && alone(flat_input)
                && on_records(c)
                && nodes[c].inputs.iter().all(|v| as_carried(*v))
        });
        found.push(FlatInput {
            dense,
            flatten,
            concat,
        });
    }
    found
}

/// The kernel of a folded batch norm. The graph shares the input instead of running it
/// ([`Node::folded_into`]); run anyway, it copies, which is what the node computes once folded.
#[derive(Debug)]
struct FoldedAway;

impl Layer for FoldedAway {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        inputs[0].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;
    use crate::graph::Graph;

    fn graph(layers: &str, kernels: KernelKind) -> Graph {
        let text = format!("input: {{shape: [3, 6, 5]}}\ninit: {{seed: 4}}\nlayers:\n{layers}");
        let config = PipelineConfig::parse(&text, std::path::Path::new(".")).unwrap();
        Graph::build_with(&config, kernels).unwrap()
    }

    fn folded(g: &Graph) -> Vec<(String, String)> {
        g.nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), g.nodes[n.folded_into?].name.clone())))
            .collect()
    }

    /// The fast graph of `layers` (folds made) against the reference graph (none) on the same
    /// seeded input: the largest difference of the output, and the output's largest magnitude.
    fn fast_vs_reference(layers: &str) -> (f32, f32) {
        let fast = graph(layers, KernelKind::Fast);
        let reference = graph(layers, KernelKind::Reference);
        let mut next = crate::weights::seeded_stream(9, "fold-input");
        let values: Vec<f32> = (0..4 * 3 * 6 * 5).map(|_| 2.0 * next()).collect();
        let input = Tensor::from_shape_vec(ndarray::IxDyn(&[4, 3, 6, 5]), values).unwrap();
        let a = &fast.forward(input.clone(), None)[0];
        let b = &reference.forward(input, None)[0];
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        (diff, scale)
    }

    const CONV_BN_RELU: &str = "  - {name: conv, op: conv2d, filters: 4, kernel: 3, padding: 1, bias: false}\n  - {name: bn, op: batchnorm}\n  - {name: act, op: relu}\n";

    #[test]
    fn a_batch_norm_after_a_convolution_folds_in_the_fast_graph_only() {
        let fast = graph(CONV_BN_RELU, KernelKind::Fast);
        assert_eq!(
            folded(&fast),
            [
                ("bn".to_string(), "conv".to_string()),
                ("act".to_string(), "conv".to_string())
            ]
        );
        assert_eq!(fast.nodes[1].flops_per_record, 0);
        assert_eq!(fast.nodes[2].flops_per_record, 0);
        let reference = graph(CONV_BN_RELU, KernelKind::Reference);
        assert!(folded(&reference).is_empty());
    }

    #[test]
    fn folded_equals_unfolded() {
        let (diff, scale) = fast_vs_reference(CONV_BN_RELU);
        assert!(scale > 0.1, "the test needs outputs that are not all zero");
        assert!(
            diff <= 1e-6 * scale,
            "folded vs unfolded: {diff} at scale {scale}"
        );
    }

    #[test]
    fn no_fold_where_the_convolution_output_is_seen_elsewhere() {
        // Read by another layer too.
        let shared = "  - {name: conv, op: conv2d, filters: 3, kernel: 3, padding: 1}\n  - {name: bn, op: batchnorm}\n  - {name: sum, op: add, inputs: [conv, bn]}\n";
        assert!(folded(&graph(shared, KernelKind::Fast)).is_empty());
        // An activation between the convolution and the batch norm.
        let relu_first = "  - {name: conv, op: conv2d, filters: 3, kernel: 3, activation: relu}\n  - {name: bn, op: batchnorm}\n";
        assert!(folded(&graph(relu_first, KernelKind::Fast)).is_empty());
        // The convolution is itself written out.
        let text = format!("{CONV_BN_RELU}outputs: [conv, act]\n");
        let text = format!("input: {{shape: [3, 6, 5]}}\ninit: {{seed: 4}}\nlayers:\n{text}");
        let config = PipelineConfig::parse(&text, std::path::Path::new(".")).unwrap();
        let g = Graph::build_with(&config, KernelKind::Fast).unwrap();
        assert!(folded(&g).is_empty());
        // A batch norm after something that is not a convolution.
        // (The flatten folds into the dense layer.)
        let dense = "  - {name: flat, op: flatten}\n  - {name: fc, op: dense, units: 4}\n  - {name: bn, op: batchnorm}\n";
        assert_eq!(
            folded(&graph(dense, KernelKind::Fast)),
            [("flat".to_string(), "fc".to_string())]
        );
    }

    #[test]
    fn a_sharded_convolution_folds_shard_by_shard() {
        let sharded = "  - {name: conv, op: conv2d, filters: 5, kernel: 3, padding: 1, shards: 2}\n  - {name: bn, op: batchnorm}\n  - {name: act, op: relu}\n";
        let fast = graph(sharded, KernelKind::Fast);
        assert_eq!(
            folded(&fast),
            [
                ("bn".to_string(), "conv".to_string()),
                ("act".to_string(), "conv".to_string())
            ]
        );
        let (diff, scale) = fast_vs_reference(sharded);
        assert!(scale > 0.1, "the test needs outputs that are not all zero");
        assert!(
            diff <= 1e-6 * scale,
            "folded shards vs unfolded: {diff} at {scale}"
        );
    }

    /// ResNet's block tail: conv, bn, add with the block's input, relu.
    const RESIDUAL_BLOCK: &str = "  - {name: conv, op: conv2d, filters: 3, kernel: 3, padding: 1, bias: false}\n  - {name: bn, op: batchnorm}\n  - {name: sum, op: add, inputs: [bn, input]}\n  - {name: act, op: relu}\n";

    #[test]
    fn a_residual_add_runs_the_convolution_and_its_relu() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let fast = graph(RESIDUAL_BLOCK, KernelKind::Fast);
        assert_eq!(
            folded(&fast),
            pairs(&[("conv", "sum"), ("bn", "conv"), ("act", "sum")])
        );
        // The add carries the convolution's work now.
        assert_eq!(fast.nodes[0].flops_per_record, 0);
        assert!(fast.nodes[2].flops_per_record > 2 * 3 * 3 * 9 * 30);
        // The residual on either side, and on every algorithm (Winograd adds it in its output
        // transform, the others in one pass after the kernel).
        let swapped = RESIDUAL_BLOCK.replace("[bn, input]", "[input, bn]");
        assert_eq!(
            folded(&graph(&swapped, KernelKind::Fast)),
            pairs(&[("conv", "sum"), ("bn", "conv"), ("act", "sum")])
        );
        for layers in [
            RESIDUAL_BLOCK.to_string(),
            swapped,
            RESIDUAL_BLOCK.replace("bias: false", "algorithm: winograd"),
            RESIDUAL_BLOCK.replace("bias: false", "algorithm: direct"),
            RESIDUAL_BLOCK.replace("bias: false", "algorithm: gemm"),
        ] {
            let (diff, scale) = fast_vs_reference(&layers);
            assert!(scale > 0.1, "the test needs outputs that are not all zero");
            assert!(
                diff <= 1e-6 * scale,
                "{layers}: folded vs unfolded: {diff} at scale {scale}"
            );
        }
    }

    #[test]
    fn a_residual_fold_needs_a_lone_convolution_that_keeps_its_input_shape() {
        // Two convolutions summed (ResNet's downsampling block): one of them folds.
        let two = "  - {name: a, op: conv2d, filters: 3, kernel: 3, padding: 1}\n  - {name: b, op: conv2d, inputs: [input], filters: 3, kernel: 1}\n  - {name: sum, op: add, inputs: [a, b]}\n";
        assert_eq!(
            folded(&graph(two, KernelKind::Fast)),
            [("a".to_string(), "sum".to_string())]
        );
        // The convolution widens 3 channels to 4: its input could not stand in for its output
        // on the way to the add (the other side has an activation of its own).
        let widening = "  - {name: conv, op: conv2d, filters: 4, kernel: 1}\n  - {name: other, op: conv2d, inputs: [input], filters: 4, kernel: 1, activation: relu}\n  - {name: sum, op: add, inputs: [conv, other]}\n";
        assert!(folded(&graph(widening, KernelKind::Fast)).is_empty());
        // The convolution's output is also read elsewhere, or has its own activation.
        let seen = "  - {name: conv, op: conv2d, filters: 3, kernel: 3, padding: 1}\n  - {name: sum, op: add, inputs: [conv, input]}\n  - {name: both, op: add, inputs: [sum, conv]}\n";
        assert!(folded(&graph(seen, KernelKind::Fast)).is_empty());
        let activated = "  - {name: conv, op: conv2d, filters: 3, kernel: 3, padding: 1, activation: tanh}\n  - {name: sum, op: add, inputs: [conv, input]}\n";
        assert!(folded(&graph(activated, KernelKind::Fast)).is_empty());
        for layers in [two, widening, seen, activated] {
            let (diff, scale) = fast_vs_reference(layers);
            assert!(
                diff <= 1e-6 * scale.max(1.0),
                "{layers}: fast vs reference differ by {diff}"
            );
        }
    }

    #[test]
    fn activations_fuse_only_where_nothing_else_sees_the_convolution() {
        // Straight after a convolution without a batch norm: fused.
        let direct =
            "  - {name: conv, op: conv2d, filters: 3, kernel: 3}\n  - {name: act, op: tanh}\n";
        assert_eq!(
            folded(&graph(direct, KernelKind::Fast)),
            [("act".to_string(), "conv".to_string())]
        );
        // The convolution has an activation of its own: the second one stays.
        let twice = "  - {name: conv, op: conv2d, filters: 3, kernel: 3, activation: relu}\n  - {name: act, op: relu}\n";
        assert!(folded(&graph(twice, KernelKind::Fast)).is_empty());
        // Softmax is not elementwise.
        let softmax =
            "  - {name: conv, op: conv2d, filters: 3, kernel: 3}\n  - {name: act, op: softmax}\n";
        assert!(folded(&graph(softmax, KernelKind::Fast)).is_empty());
        // The convolution's output is also added to the activation's: no fusion (the batch norm
        // is not folded either, as the convolution is read twice).
        let residual = "  - {name: conv, op: conv2d, filters: 3, kernel: 3, padding: 1}\n  - {name: bn, op: batchnorm}\n  - {name: act, op: relu}\n  - {name: sum, op: add, inputs: [act, conv]}\n";
        assert!(folded(&graph(residual, KernelKind::Fast)).is_empty());
        // The batch norm's output is read twice: the batch norm folds, the activation does not.
        let shared = "  - {name: conv, op: conv2d, filters: 3, kernel: 3, padding: 1}\n  - {name: bn, op: batchnorm}\n  - {name: act, op: relu}\n  - {name: sum, op: add, inputs: [act, bn]}\n";
        assert_eq!(
            folded(&graph(shared, KernelKind::Fast)),
            [("bn".to_string(), "conv".to_string())]
        );
        // Whatever fuses, the fast graph computes what the reference graph does.
        for layers in [direct, twice, residual, shared, CONV_BN_RELU] {
            let (diff, _) = fast_vs_reference(layers);
            assert!(
                diff <= 1e-5,
                "{layers}: fused vs reference differ by {diff}"
            );
        }
    }

    /// The small CNN's conv, relu, 2×2 pool, on a 6×5 map (the pool drops the last column).
    const CONV_RELU_POOL: &str = "  - {name: conv, op: conv2d, filters: 5, kernel: 3, padding: 1}\n  - {name: act, op: relu}\n  - {name: pool, op: maxpool2d, kernel: 2}\n";

    #[test]
    fn a_max_pool_runs_the_convolution_and_relu_before_it() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let fast = graph(CONV_RELU_POOL, KernelKind::Fast);
        assert_eq!(folded(&fast), pairs(&[("conv", "pool"), ("act", "conv")]));
        // The pool carries the convolution's work now, and the convolution's value is its
        // input, passed on (what a stage cut after it sends).
        assert_eq!(fast.nodes[0].flops_per_record, 0);
        assert!(fast.nodes[2].flops_per_record > 2 * 3 * 9 * 5 * 30);
        assert_eq!(fast.carried_shape(ValueId::of_layer(0)), [3, 6, 5]);
        assert_eq!(fast.carried_shape(ValueId::of_layer(1)), [3, 6, 5]);
        assert_eq!(fast.carried_shape(ValueId::of_layer(2)), [5, 3, 2]);
        assert!(folded(&graph(CONV_RELU_POOL, KernelKind::Reference)).is_empty());
        // The ReLU in the convolution, a batch norm between, no activation, no padding (a 4×3
        // map: the pool drops a column), stride 2 (3×3: a row and a column dropped), the
        // direct algorithm forced: each folds and computes what the unfolded graph does.
        let with_bn = CONV_RELU_POOL.replace(
            "padding: 1}",
            "padding: 1, bias: false}\n  - {name: bn, op: batchnorm}",
        );
        let inline = "  - {name: conv, op: conv2d, filters: 9, kernel: 3, padding: 1, activation: relu}\n  - {name: pool, op: maxpool2d, kernel: 2}\n";
        let cases = [
            CONV_RELU_POOL.to_string(),
            with_bn.clone(),
            inline.to_string(),
            inline.replace(", activation: relu", ""),
            inline.replace("padding: 1", "padding: 0"),
            inline.replace("padding: 1", "padding: 1, stride: 2"),
            inline.replace("padding: 1", "padding: 1, algorithm: direct"),
        ];
        for layers in &cases {
            let fast = graph(layers, KernelKind::Fast);
            let conv = fast.nodes.iter().position(|n| n.name == "conv").unwrap();
            let pool = fast.nodes.iter().position(|n| n.name == "pool").unwrap();
            assert_eq!(fast.nodes[conv].folded_into, Some(pool), "{layers}");
            let (diff, scale) = fast_vs_reference(layers);
            assert!(scale > 0.1, "the test needs outputs that are not all zero");
            assert!(
                diff <= 1e-6 * scale,
                "{layers}: folded vs unfolded: {diff} at scale {scale}"
            );
        }
        assert_eq!(
            folded(&graph(&with_bn, KernelKind::Fast)),
            pairs(&[("conv", "pool"), ("bn", "conv"), ("act", "conv")])
        );
    }

    #[test]
    fn no_pool_fold_where_the_pool_or_the_convolution_does_not_fit() {
        let inline = "  - {name: conv, op: conv2d, filters: 4, kernel: 3, padding: 1, activation: relu}\n  - {name: pool, op: maxpool2d, kernel: 2}\n";
        let cases = [
            // Pools other than 2×2 stride 2 unpadded max: stride 1, 3×3, padding, average.
            inline.replace("kernel: 2}", "kernel: 2, stride: 1}"),
            inline.replace("kernel: 2}", "kernel: 3, stride: 2}"),
            inline.replace("kernel: 2}", "kernel: 2, padding: 1}"),
            inline.replace("maxpool2d", "avgpool2d"),
            // An activation the kernel does not apply before the maximum.
            inline.replace("relu", "tanh"),
            // Kernels without a pooled epilogue: im2col (forced, or auto on a 1×1) and Winograd.
            inline.replace("padding: 1", "padding: 1, algorithm: gemm"),
            inline.replace("kernel: 3, padding: 1", "kernel: 1"),
            inline.replace("padding: 1", "padding: 1, algorithm: winograd"),
            // The convolution's output is read elsewhere too, or written out.
            format!("{inline}  - {{name: other, op: relu, inputs: [conv]}}\n  - {{name: sum, op: add, inputs: [other, conv]}}\n"),
            format!("{inline}outputs: [pool, conv]\n"),
        ];
        for layers in &cases {
            let fast = graph(layers, KernelKind::Fast);
            assert!(
                folded(&fast).iter().all(|(_, into)| into != "pool"),
                "{layers}: {:?}",
                folded(&fast)
            );
            if !layers.contains("outputs:") {
                let (diff, scale) = fast_vs_reference(layers);
                assert!(
                    diff <= 1e-6 * scale.max(1.0),
                    "{layers}: fast vs reference differ by {diff}"
                );
            }
        }
    }

    /// The graph of `layers` with the fast kernels, whose outputs are `outputs` (the last layer
    /// when empty).
    fn graph_with_outputs(layers: &str, outputs: &[&str]) -> Graph {
        let listed = match outputs {
            [] => String::new(),
            names => format!("outputs: [{}]\n", names.join(", ")),
        };
        let text =
            format!("input: {{shape: [3, 6, 5]}}\ninit: {{seed: 4}}\nlayers:\n{layers}{listed}");
        let config = PipelineConfig::parse(&text, std::path::Path::new(".")).unwrap();
        Graph::build_with(&config, KernelKind::Fast).unwrap()
    }

    /// `g`'s first output over `records` seeded records.
    fn first_output(g: &Graph, records: usize) -> Tensor {
        let mut next = crate::weights::seeded_stream(9, "fold-input");
        let values: Vec<f32> = (0..records * 3 * 6 * 5).map(|_| 2.0 * next()).collect();
        let input = Tensor::from_shape_vec(ndarray::IxDyn(&[records, 3, 6, 5]), values).unwrap();
        g.forward(input, None).swap_remove(0)
    }

    /// The flatten folds into the dense layer `fc` (with the concat `merge` where there is one),
    /// and the folded fast graph computes what the same fast graph with `flat` also written out
    /// (so nothing folds) does, on chunks of several sizes; and what the reference graph does.
    fn assert_flat_fold(layers: &str, folds_concat: bool) {
        let folded_graph = graph(layers, KernelKind::Fast);
        let mut expected = vec![("flat".to_string(), "fc".to_string())];
        if folds_concat {
            expected.insert(0, ("merge".to_string(), "fc".to_string()));
        }
        let made: Vec<_> = folded(&folded_graph)
            .into_iter()
            .filter(|(_, into)| into == "fc")
            .collect();
        assert_eq!(made, expected, "{layers}");
        let unfolded = graph_with_outputs(layers, &["fc", "flat"]);
        assert!(
            folded(&unfolded).iter().all(|(_, into)| into != "fc"),
            "{layers}"
        );
        for records in [1, 4, 7, 13] {
            let a = first_output(&folded_graph, records);
            let b = first_output(&unfolded, records);
            assert_eq!(a.shape(), b.shape(), "{layers}");
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = a
                .iter()
                .zip(&b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(scale > 0.1, "the test needs outputs that are not all zero");
            assert!(
                diff <= 1e-6 * scale,
                "{layers}: {records} records: folded vs unfolded: {diff} at scale {scale}"
            );
        }
        let (diff, scale) = fast_vs_reference(layers);
        assert!(
            diff <= 1e-5 * scale,
            "{layers}: folded vs reference: {diff} at scale {scale}"
        );
    }

    /// Two towers of different widths (60 and 150 values a record: neither a multiple of 16),
    /// joined on channels, flattened, read by a dense layer of 19 units.
    const TWO_TOWERS: &str = "  - {name: a, op: conv2d, inputs: [input], filters: 2, kernel: 3, padding: 1, activation: relu}\n  - {name: b, op: conv2d, inputs: [input], filters: 5, kernel: 3, padding: 1}\n  - {name: merge, op: concat, inputs: [a, b], axis: 0}\n  - {name: flat, op: flatten}\n  - {name: fc, op: dense, units: 19, activation: relu}\n";

    #[test]
    fn a_flatten_folds_into_the_dense_layer_that_reads_it() {
        // The input's 90 values a record, as one row, into 7 and then 37 units.
        let direct = "  - {name: flat, op: flatten}\n  - {name: fc, op: dense, units: 7}\n";
        assert_flat_fold(direct, false);
        assert_flat_fold(&direct.replace("units: 7", "units: 37, bias: false"), false);
        // The flatten passes its input on: a [3, 6, 5] record, which the dense reads as a row.
        let fast = graph(direct, KernelKind::Fast);
        assert_eq!(fast.carried_shape(ValueId::of_layer(0)), [3, 6, 5]);
        assert_eq!(fast.nodes[1].inputs, [ValueId::of_layer(0)]);
        assert!(folded(&graph(direct, KernelKind::Reference)).is_empty());
        // After a pool that runs its convolution.
        let pooled = format!("{CONV_RELU_POOL}  - {{name: flat, op: flatten}}\n  - {{name: fc, op: dense, units: 9, activation: relu}}\n");
        assert_flat_fold(&pooled, false);
    }

    #[test]
    fn a_concat_on_channels_and_its_flatten_fold_into_the_dense_layer() {
        assert_flat_fold(TWO_TOWERS, true);
        let fast = graph(TWO_TOWERS, KernelKind::Fast);
        let node = |name: &str| fast.nodes.iter().position(|n| n.name == name).unwrap();
        // The dense layer reads `a` through the flatten and the concat, and `b` itself.
        assert_eq!(
            fast.nodes[node("fc")].inputs,
            [
                ValueId::of_layer(node("flat")),
                ValueId::of_layer(node("b"))
            ]
        );
        assert_eq!(
            fast.carried_shape(ValueId::of_layer(node("flat"))),
            [2, 6, 5]
        );
        assert_eq!(
            fast.carried_shape(ValueId::of_layer(node("merge"))),
            [2, 6, 5]
        );
        let reference = graph(TWO_TOWERS, KernelKind::Reference);
        assert!(folded(&reference).is_empty());
        assert_eq!(
            reference.nodes[node("fc")].inputs,
            [ValueId::of_layer(node("flat"))]
        );
        // Three inputs, the model input among them (90 values), in either order, and the
        // towers pooled to [2, 3, 2] and [5, 3, 2] (12 and 30 values).
        let three = TWO_TOWERS.replace("inputs: [a, b]", "inputs: [a, input, b]");
        assert_flat_fold(&three, true);
        assert_flat_fold(
            &TWO_TOWERS.replace("inputs: [a, b]", "inputs: [input, b, a]"),
            true,
        );
        let pooled = TWO_TOWERS
            .replace("  - {name: merge", "  - {name: pa, op: maxpool2d, kernel: 2, inputs: [a]}\n  - {name: pb, op: maxpool2d, kernel: 2, inputs: [b]}\n  - {name: merge")
            .replace("inputs: [a, b]", "inputs: [pa, pb]");
        assert_flat_fold(&pooled, true);
        let g = graph(&pooled, KernelKind::Fast);
        assert!(folded(&g).contains(&("a".to_string(), "pa".to_string())));
    }

    #[test]
    fn no_flatten_fold_where_another_layer_or_the_output_sees_it() {
        let fc_folds = |g: &Graph| -> Vec<String> {
            folded(g)
                .into_iter()
                .filter(|(_, into)| into == "fc")
                .map(|(from, _)| from)
                .collect()
        };
        // The flatten is read by another layer too, or written out: nothing folds into fc.
        let shared = format!("{TWO_TOWERS}  - {{name: other, op: relu, inputs: [flat]}}\n");
        assert!(fc_folds(&graph_with_outputs(&shared, &["fc", "other"])).is_empty());
        assert!(fc_folds(&graph_with_outputs(TWO_TOWERS, &["fc", "flat"])).is_empty());
        // The concat is read by another layer too, or written out: only the flatten folds, and
        // the dense layer reads the concat's value.
        let seen = format!("{TWO_TOWERS}  - {{name: other, op: relu, inputs: [merge]}}\n");
        for g in [
            graph_with_outputs(&seen, &["fc", "other"]),
            graph_with_outputs(TWO_TOWERS, &["fc", "merge"]),
        ] {
            assert_eq!(fc_folds(&g), ["flat"]);
            let fc = g.nodes.iter().position(|n| n.name == "fc").unwrap();
            assert_eq!(g.nodes[fc].inputs.len(), 1);
            assert_eq!(g.carried_shape(g.nodes[fc].inputs[0]), [7, 6, 5]);
        }
        // A concat on another axis (rows of the maps): the flatten folds, the concat stays.
        let rows = TWO_TOWERS
            .replace("filters: 2", "filters: 5")
            .replace("axis: 0", "axis: 1");
        assert_eq!(fc_folds(&graph(&rows, KernelKind::Fast)), ["flat"]);
        assert_flat_fold(&rows, false);
        // A dense layer straight after the concat reads the last axis: nothing to fold.
        let unflattened = TWO_TOWERS.replace("  - {name: flat, op: flatten}\n", "");
        assert!(folded(&graph(&unflattened, KernelKind::Fast))
            .iter()
            .all(|(from, _)| from != "merge"));
        // The flatten feeds a layer that is not dense.
        let relu = TWO_TOWERS.replace("op: dense, units: 19, activation: relu", "op: relu");
        assert!(fc_folds(&graph(&relu, KernelKind::Fast)).is_empty());
        // A dense layer split into shards: each shard reads the flatten, so none folds it.
        let sharded = TWO_TOWERS.replace("units: 19,", "units: 19, shards: 2,");
        assert!(folded(&graph(&sharded, KernelKind::Fast))
            .iter()
            .all(|(from, _)| from != "flat"));
        for layers in [
            shared.as_str(),
            seen.as_str(),
            &unflattened,
            &relu,
            &sharded,
        ] {
            let (diff, scale) = fast_vs_reference(layers);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "{layers}: fast vs reference differ by {diff}"
            );
        }
    }
}
