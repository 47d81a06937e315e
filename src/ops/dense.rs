//! `dense` (alias `linear`): `y = x · Wᵀ + b` on the last axis, weights in PyTorch's `[out, in]`.

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
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct DenseOp {
    pub units: usize,
    pub bias: bool,
    pub activation: Activation,
}

impl Op for DenseOp {
    fn name(&self) -> &'static str {
        "dense"
    }
    fn rows(&self, inputs: &[super::Rows]) -> Result<super::Rows, ShapeError> {
        super::same_rows(self.name(), inputs)
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        let mut out = inputs[0].to_vec();
        *out.last_mut().expect("records have at least one axis") = self.units;
        Ok(out)
    }
    fn tensors(&self, inputs: &[&[usize]]) -> Vec<TensorSpec> {
        let fan_in = *inputs[0].last().expect("records have at least one axis");
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
        2 * inputs[0].iter().product::<usize>() as u64 * self.units as u64
    }
    /// A shard computes a part of the units (rows of `weight` and `bias`, activation
    /// included, as it acts unit by unit); the shards' outputs concatenate on the last axis.
    fn shard(&self, index: usize, count: usize) -> Result<super::Shard, String> {
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
        let k = *inputs[0].last().expect("records have at least one axis");
        let mut tensors = tensors.into_iter();
        let weight = tensors.next().expect("dense reads a weight");
        let bias = tensors.next();
        match kind {
            KernelKind::Fast => Box::new(Dense {
                inputs: k,
                units: self.units,
                weight: DenseWeights::new(weight, self.units, k),
                bias,
                activation: self.activation,
            }),
            KernelKind::Reference => Box::new(DenseReference {
                op: *self,
                inputs: k,
                weight,
                bias,
            }),
        }
    }
}

/// The fast kernel: weights packed once at load for [`DenseWeights`]' micro-kernel.
#[derive(Debug)]
struct Dense {
    inputs: usize,
    units: usize,
    weight: DenseWeights,
    bias: Option<Vec<f32>>,
    activation: Activation,
}

impl Layer for Dense {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let x = inputs[0];
        let rows = x.len() / self.inputs;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("batched tensors have axes") = self.units;
        let mut out = Vec::with_capacity(rows * self.units);
        match &self.bias {
            Some(b) => (0..rows).for_each(|_| out.extend_from_slice(b)),
            None => out.resize(rows * self.units, 0.0),
        }
        self.weight.matmul_acc(rows, &contiguous(x), &mut out);
        apply_activation(self.activation, &mut out, self.units);
        tensor(shape, out)
    }

    fn param_bytes(&self) -> u64 {
        self.weight.bytes() + self.bias.as_ref().map_or(0, |b| b.len() as u64 * 4)
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
        let x = contiguous(inputs[0]);
        let (k, n) = (self.inputs, self.op.units);
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
        let mut shape = inputs[0].shape().to_vec();
        *shape.last_mut().expect("batched tensors have axes") = n;
        tensor(shape, out)
    }

    fn param_bytes(&self) -> u64 {
        (self.weight.len() + self.bias.as_ref().map_or(0, Vec::len)) as u64 * 4
    }
}
