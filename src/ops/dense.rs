//! `dense` (alias `linear`): `y = x · Wᵀ + b` on the last axis, weights in PyTorch's `[out, in]`.
//!
//! A dense layer that alone reads a `flatten` reads the flatten's input in place, and where that
//! input is a concat on the records' first axis that only the flatten reads, the concat's inputs
//! ([`Op::with_flat_input`]): `W · [a; b] = W[:, ..ka] · a + W[:, ka..] · b`, so the layer holds
//! one packed block of weight columns per input and sums their products into one output. Neither
//! the concat's nor the flatten's copy is made.

use std::sync::Arc;

use super::activation::reference_activation;
use super::{
    apply_activation, contiguous, tensor, Activation, AttrDefault, AttrKind, AttrSpec, AttrValue,
    Attrs, Chunk, KernelKind, Layer, Op, OpFamily, Scratch, ShapeError, Tensor, TensorSpec,
};
use crate::kernels::packed::DenseWeights;

#[derive(Debug)]
pub(super) struct DenseFamily;

impl OpFamily for DenseFamily {
    fn names(&self) -> &'static [&'static str] {
        &["dense", "linear"]
    }
    fn attributes(&self) -> &'static [AttrSpec] {
        const ATTRS: &[AttrSpec] = &[
            AttrSpec::new(
                "units",
                AttrKind::Int {
                    min: 1,
                    max: u64::MAX,
                },
                AttrDefault::Required("the number of output units"),
            ),
            AttrSpec::new(
                "bias",
                AttrKind::Bool,
                AttrDefault::Value(AttrValue::Bool(true)),
            ),
            AttrSpec::new(
                "activation",
                AttrKind::Activation,
                AttrDefault::Value(AttrValue::Activation(Activation::Identity)),
            ),
        ];
        ATTRS
    }
    fn doc(&self) -> &'static str {
        "`weight` [units, in], `bias` [units]; acts on the last axis"
    }
    fn configure(&self, _name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(DenseOp {
            units: a.int("units"),
            bias: a.bool("bias"),
            activation: a.activation("activation"),
            flat_input: false,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct DenseOp {
    pub units: usize,
    pub bias: bool,
    pub activation: Activation,
    /// Set only by the graph's flatten fold ([`Op::with_flat_input`]), never by a file: each
    /// record of the inputs, whatever its shape, is read as its values in row-major order,
    /// input after input, as one row of `Σ inputs` values (what the flatten, and the concat on
    /// the records' first axis before it, would have made). The output is `[units]` a record.
    pub flat_input: bool,
}

impl DenseOp {
    /// The values each input gives one row: the last axis, or with a flat input every axis of
    /// every input's record.
    fn depths(&self, inputs: &[&[usize]]) -> Vec<usize> {
        match self.flat_input {
            true => inputs.iter().map(|s| s.iter().product()).collect(),
            false => vec![*inputs[0].last().expect("records have at least one axis")],
        }
    }
}

impl Op for DenseOp {
    fn name(&self) -> &'static str {
        "dense"
    }
    fn rows(&self, inputs: &[super::Rows]) -> Result<super::Rows, ShapeError> {
        super::same_rows(self.name(), inputs)
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        if self.flat_input {
            return Ok(vec![self.units]);
        }
        let mut out = inputs[0].to_vec();
        *out.last_mut().expect("records have at least one axis") = self.units;
        Ok(out)
    }
    fn tensors(&self, inputs: &[&[usize]]) -> Vec<TensorSpec> {
        let fan_in = self.depths(inputs).iter().sum();
        let mut v = vec![TensorSpec::uniform(
            "weight",
            vec![self.units, fan_in],
            fan_in,
        )];
        if self.bias {
            v.push(TensorSpec::uniform("bias", vec![self.units], fan_in));
        }
        v
    }
    fn flops(&self, inputs: &[&[usize]], _output: &[usize], _seq: usize) -> u64 {
        let values: usize = match self.flat_input {
            true => self.depths(inputs).iter().sum(),
            false => inputs[0].iter().product(),
        };
        2 * values as u64 * self.units as u64
    }
    /// A shard computes a part of the units (rows of `weight` and `bias`, activation
    /// included, as it acts unit by unit); the shards' outputs concatenate on the last axis.
    fn shard(&self, index: usize, count: usize) -> Result<super::Shard, String> {
        if self.flat_input {
            return Err("a dense layer with a folded flatten cannot be sharded".into());
        }
        if count > self.units {
            return Err(format!(
                "cannot split {} units into {count} shards",
                self.units
            ));
        }
        let slice = super::TensorSlice::Rows { index, count };
        Ok(super::Shard {
            op: Arc::new(DenseOp {
                units: super::part(self.units, index, count).len(),
                ..*self
            }),
            slices: vec![slice; 1 + usize::from(self.bias)],
            combine: super::concat::concat_shards(true),
        })
    }
    fn build(
        &self,
        kind: KernelKind,
        inputs: &[&[usize]],
        _output: &[usize],
        tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        let depths = self.depths(inputs);
        let k: usize = depths.iter().sum();
        let mut tensors = tensors.into_iter();
        let weight = tensors.next().expect("dense reads a weight");
        let bias = tensors.next();
        match kind {
            KernelKind::Fast => Box::new(Dense {
                inputs: k,
                units: self.units,
                weights: weight_columns(weight, self.units, &depths),
                has_bias: bias.is_some(),
                bias: bias.unwrap_or_else(|| vec![0.0; self.units]),
                activation: self.activation,
                flat_input: self.flat_input,
            }),
            KernelKind::Reference => Box::new(DenseReference {
                op: *self,
                inputs: k,
                weight,
                bias,
            }),
        }
    }
    fn with_flat_input(&self) -> Option<Arc<dyn Op>> {
        (!self.flat_input).then(|| {
            Arc::new(DenseOp {
                flat_input: true,
                ..*self
            }) as Arc<dyn Op>
        })
    }
}

/// `weight` (`[units, Σ depths]`) cut into its blocks of columns, one per input of `depths`
/// values, each packed on its own: `W · [a; b] = W[:, ..ka] · a + W[:, ka..] · b`. One block,
/// the whole matrix, where there is one input.
fn weight_columns(weight: Vec<f32>, units: usize, depths: &[usize]) -> Vec<DenseWeights> {
    let k: usize = depths.iter().sum();
    if let [_] = depths {
        return vec![DenseWeights::new(weight, units, k)];
    }
    let mut start = 0;
    depths
        .iter()
        .map(|&depth| {
            let block: Vec<f32> = weight
                .chunks_exact(k)
                .flat_map(|row| &row[start..start + depth])
                .copied()
                .collect();
            start += depth;
            DenseWeights::new(block, units, depth)
        })
        .collect()
}

/// The fast kernel: weights packed once at load for [`DenseWeights`]' micro-kernel.
#[derive(Debug)]
struct Dense {
    inputs: usize,
    units: usize,
    /// The weight matrix, or with a flat input one block of its columns per input.
    weights: Vec<DenseWeights>,
    /// What the sums start from: the bias, or zeros for a layer without one.
    bias: Vec<f32>,
    has_bias: bool,
    activation: Activation,
    /// See [`DenseOp::flat_input`]: a row per record, whatever the inputs' shapes.
    flat_input: bool,
}

impl Layer for Dense {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, scratch: &mut Scratch) -> Tensor {
        let (rows, shape) = match self.flat_input {
            true => {
                let records = inputs[0].shape()[0];
                (records, vec![records, self.units])
            }
            false => {
                let mut shape = inputs[0].shape().to_vec();
                *shape.last_mut().expect("batched tensors have axes") = self.units;
                (inputs[0].len() / self.inputs, shape)
            }
        };
        // Written whole by the first product, so a dropped output of the worker's will do.
        let mut out = scratch.output(rows * self.units);
        // The first input's block of columns starts every sum from the bias, then each other
        // input's block adds its part.
        for (i, (x, w)) in inputs.iter().zip(&self.weights).enumerate() {
            match i {
                0 => w.matmul_bias(rows, &contiguous(x), &self.bias, &mut out),
                _ => w.matmul_acc(rows, &contiguous(x), &mut out),
            }
        }
        apply_activation(self.activation, &mut out, self.units);
        tensor(shape, out)
    }

    fn param_bytes(&self) -> u64 {
        self.weights.iter().map(DenseWeights::bytes).sum::<u64>()
            + if self.has_bias {
                self.bias.len() as u64 * 4
            } else {
                0
            }
    }
}

/// The reference: one f64 dot product per output, from the definition.
#[derive(Debug)]
struct DenseReference {
    op: DenseOp,
    inputs: usize,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Layer for DenseReference {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let (k, n) = (self.inputs, self.op.units);
        let x = match self.op.flat_input {
            // Each record's values, input after input: the flattened concatenation.
            true => {
                let parts: Vec<_> = inputs.iter().map(|t| contiguous(t)).collect();
                let records = inputs[0].shape()[0];
                let mut joined = Vec::with_capacity(records * k);
                for r in 0..records {
                    for p in &parts {
                        let per = p.len() / records;
                        joined.extend_from_slice(&p[r * per..(r + 1) * per]);
                    }
                }
                std::borrow::Cow::Owned(joined)
            }
            false => contiguous(inputs[0]),
        };
        let mut out = Vec::with_capacity(x.len() / k * n);
        for row in x.chunks_exact(k) {
            let mut y: Vec<f64> = (0..n)
                .map(|j| {
                    let w = &self.weight[j * k..(j + 1) * k];
                    let b = self.bias.as_ref().map_or(0.0, |b| b[j] as f64);
                    b + row
                        .iter()
                        .zip(w)
                        .map(|(x, w)| *x as f64 * *w as f64)
                        .sum::<f64>()
                })
                .collect();
            reference_activation(self.op.activation, &mut y, n);
            out.extend(y.into_iter().map(|v| v as f32));
        }
        let shape = match self.op.flat_input {
            true => vec![inputs[0].shape()[0], n],
            false => {
                let mut shape = inputs[0].shape().to_vec();
                *shape.last_mut().expect("batched tensors have axes") = n;
                shape
            }
        };
        tensor(shape, out)
    }

    fn param_bytes(&self) -> u64 {
        (self.weight.len() + self.bias.as_ref().map_or(0, Vec::len)) as u64 * 4
    }
}
