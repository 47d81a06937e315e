//! Plan-time rewrites of the fast graph: batch norms folded into the convolution before them.
//!
//! At inference a batch norm is `y = x · scale[c] + shift[c]` per channel. After a convolution
//! whose output nothing else reads, that map folds into the convolution's own tensors: each
//! filter's weights times its channel's scale, its bias times the scale plus the shift. One op
//! instead of two and one pass over the activations fewer, with the same numbers up to float
//! rounding (the product `w · scale` is rounded to f32 once).
//!
//! The rewrite is made while the kernels are built, and only for the fast kernels: the graph
//! keeps both nodes (stages, routes and `export` still see the file's layers and tensors), the
//! convolution's kernel is built from the folded tensors and the batch norm passes its input
//! through. `verify` runs the reference kernels on the unfolded graph, so it checks every fold;
//! `validate` lists them.

use std::sync::Arc;

use super::{Node, ValueId};
use crate::ops::{ChannelAffine, Chunk, KernelKind, Layer, Op, Rows, Scratch, Tensor};

/// A batch norm folded into the convolution that feeds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    /// Node index of the convolution, which absorbs the map.
    pub conv: usize,
    /// Node index of the batch norm, which then passes its input through.
    pub batchnorm: usize,
    /// The batch norm's map, from its tensors.
    pub affine: ChannelAffine,
}

/// The folds to make: every per-channel affine node (a batch norm) that reads, alone, the
/// output of an op that can absorb it (a convolution without an activation), where that output
/// is read by no other layer and is not a pipeline output. `tensors` holds each node's tensors.
pub fn find(nodes: &[Node], outputs: &[ValueId], tensors: &[Vec<Vec<f32>>]) -> Vec<Fold> {
    let mut readers = vec![0usize; nodes.len() + 1];
    for node in nodes {
        for v in &node.inputs {
            readers[v.0] += 1;
        }
    }
    let mut folds = Vec::new();
    for (b, node) in nodes.iter().enumerate() {
        let [input] = node.inputs[..] else {
            continue;
        };
        let Some(c) = input.layer() else {
            continue;
        };
        let conv = &nodes[c];
        if readers[input.0] != 1
            || outputs.contains(&input)
            || node.rows != Rows::Records
            || !conv.op.folds_channel_affine()
        {
            continue;
        }
        let Some(affine) = node.op.channel_affine(&tensors[b]) else {
            continue;
        };
        if conv.shape.first() == Some(&affine.scale.len()) {
            folds.push(Fold {
                conv: c,
                batchnorm: b,
                affine,
            });
        }
    }
    folds
}

/// Build every node's kernel of the kind asked from its tensors, folding batch norms first when
/// the kernels are the fast ones (and marking the folded nodes in `nodes`).
pub(super) fn build_layers(
    nodes: &mut [Node],
    outputs: &[ValueId],
    input_shape: &[usize],
    tensors: Vec<Vec<Vec<f32>>>,
    kernels: KernelKind,
) -> Vec<Box<dyn Layer>> {
    let folds = match kernels {
        KernelKind::Fast => find(nodes, outputs, &tensors),
        KernelKind::Reference => Vec::new(),
    };
    let mut ops: Vec<Arc<dyn Op>> = nodes.iter().map(|n| n.op.clone()).collect();
    let mut tensors: Vec<Option<Vec<Vec<f32>>>> = tensors.into_iter().map(Some).collect();
    for fold in folds {
        let conv_tensors = tensors[fold.conv].take().expect("a node folds once");
        let (op, folded) = ops[fold.conv].fold_channel_affine(conv_tensors, &fold.affine);
        ops[fold.conv] = op;
        tensors[fold.conv] = Some(folded);
        let bn = &mut nodes[fold.batchnorm];
        bn.folded_into = Some(fold.conv);
        bn.flops_per_record = 0;
    }
    let mut layers: Vec<Box<dyn Layer>> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let values = tensors[i].take().expect("every node has its tensors");
        if node.folded_into.is_some() {
            layers.push(Box::new(FoldedAway));
            continue;
        }
        let shapes: Vec<&[usize]> = node
            .inputs
            .iter()
            .map(|v| match v.layer() {
                None => input_shape,
                Some(j) => nodes[j].shape.as_slice(),
            })
            .collect();
        layers.push(ops[i].build(kernels, &shapes, &node.shape, values));
    }
    layers
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

    const CONV_BN_RELU: &str = "  - {name: conv, op: conv2d, filters: 4, kernel: 3, padding: 1, bias: false}\n  - {name: bn, op: batchnorm}\n  - {name: act, op: relu}\n";

    #[test]
    fn a_batch_norm_after_a_convolution_folds_in_the_fast_graph_only() {
        let fast = graph(CONV_BN_RELU, KernelKind::Fast);
        assert_eq!(folded(&fast), [("bn".to_string(), "conv".to_string())]);
        assert_eq!(fast.nodes[1].flops_per_record, 0);
        let reference = graph(CONV_BN_RELU, KernelKind::Reference);
        assert!(folded(&reference).is_empty());
    }

    #[test]
    fn folded_equals_unfolded() {
        let fast = graph(CONV_BN_RELU, KernelKind::Fast);
        let reference = graph(CONV_BN_RELU, KernelKind::Reference);
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
        let dense = "  - {name: flat, op: flatten}\n  - {name: fc, op: dense, units: 4}\n  - {name: bn, op: batchnorm}\n";
        assert!(folded(&graph(dense, KernelKind::Fast)).is_empty());
    }
}
