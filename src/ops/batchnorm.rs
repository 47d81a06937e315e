//! `batchnorm`: batch normalisation at inference, per channel (axis 0 of the record), from the
//! running statistics.

use std::sync::Arc;

use super::{
    contiguous, tensor, AttrDefault, AttrKind, AttrSpec, AttrValue, Attrs, ChannelAffine, Chunk,
    KernelKind, Layer, Op, OpFamily, Scratch, ShapeError, Tensor, TensorSpec,
};
use crate::weights::InitKind;

#[derive(Debug)]
pub(super) struct BatchNormFamily;

impl OpFamily for BatchNormFamily {
    fn names(&self) -> &'static [&'static str] {
        &["batchnorm"]
    }
    fn attributes(&self) -> &'static [AttrSpec] {
        const ATTRS: &[AttrSpec] = &[AttrSpec::new(
            "eps",
            AttrKind::PositiveFloat,
            AttrDefault::Value(AttrValue::Float(1e-5)),
        )];
        ATTRS
    }
    fn doc(&self) -> &'static str {
        "`weight`, `bias`, `running_mean`, `running_var` [channels]; `num_batches_tracked` (int64, unused) may be present and `export` writes it; inference mode, over axis 0 (channels); folded into a `conv2d` right before it when only the batch norm reads the convolution (`validate` lists the folds)"
    }
    fn configure(&self, _name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(BatchNormOp {
            eps: a.float("eps"),
        }))
    }
}

#[derive(Debug)]
struct BatchNormOp {
    eps: f64,
}

impl Op for BatchNormOp {
    fn name(&self) -> &'static str {
        "batchnorm"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        Ok(inputs[0].to_vec())
    }
    fn tensors(&self, inputs: &[&[usize]]) -> Vec<TensorSpec> {
        // `init` gives statistics of the kind a trained network has, not the identity map of a
        // fresh PyTorch module: with those, a fold that mixed up the tensors, or a file that
        // named them wrongly, would go unnoticed.
        let c = vec![inputs[0][0]];
        let between = |suffix, low, high| TensorSpec {
            suffix,
            shape: c.clone(),
            init: InitKind::Between { low, high },
        };
        vec![
            between("weight", 0.5, 1.5),
            between("bias", -0.25, 0.25),
            between("running_mean", -0.25, 0.25),
            between("running_var", 0.5, 1.5),
        ]
    }
    fn buffers(&self) -> &'static [&'static str] {
        &["num_batches_tracked"]
    }
    fn channel_affine(&self, tensors: &[Vec<f32>]) -> Option<ChannelAffine> {
        let [weight, bias, mean, var] = tensors else {
            return None;
        };
        let scale: Vec<f64> = weight
            .iter()
            .zip(var)
            .map(|(w, v)| *w as f64 / (*v as f64 + self.eps).sqrt())
            .collect();
        let shift = bias
            .iter()
            .zip(mean)
            .zip(&scale)
            .map(|((b, m), s)| *b as f64 - *m as f64 * s)
            .collect();
        Some(ChannelAffine { scale, shift })
    }
    fn flops(&self, inputs: &[&[usize]], _output: &[usize], _seq: usize) -> u64 {
        inputs[0].iter().product::<usize>() as u64
    }
    fn build(
        &self,
        kind: KernelKind,
        _inputs: &[&[usize]],
        _output: &[usize],
        tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        match kind {
            KernelKind::Fast => {
                // Folded at load: y = x · scale[c] + shift[c].
                let affine = self
                    .channel_affine(&tensors)
                    .expect("batchnorm reads four tensors");
                Box::new(BatchNorm {
                    scale: affine.scale.iter().map(|v| *v as f32).collect(),
                    shift: affine.shift.iter().map(|v| *v as f32).collect(),
                })
            }
            KernelKind::Reference => {
                let [weight, bias, mean, var]: [Vec<f32>; 4] =
                    tensors.try_into().expect("batchnorm reads four tensors");
                Box::new(BatchNormReference {
                    eps: self.eps,
                    weight,
                    bias,
                    mean,
                    var,
                })
            }
        }
    }
}

#[derive(Debug)]
struct BatchNorm {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Layer for BatchNorm {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let mut out = inputs[0].as_standard_layout().into_owned();
        let channels = self.scale.len();
        let per_channel: usize = out.shape()[2..].iter().product();
        let data = out.as_slice_mut().expect("standard layout");
        for record in data.chunks_exact_mut(channels * per_channel) {
            for (c, plane) in record.chunks_exact_mut(per_channel).enumerate() {
                let (s, t) = (self.scale[c], self.shift[c]);
                plane.iter_mut().for_each(|x| *x = *x * s + t);
            }
        }
        out
    }

    fn param_bytes(&self) -> u64 {
        (self.scale.len() + self.shift.len()) as u64 * 4
    }
}

/// The reference: `(x − mean) / √(var + eps) · weight + bias`, as written, in f64.
#[derive(Debug)]
struct BatchNormReference {
    eps: f64,
    weight: Vec<f32>,
    bias: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl Layer for BatchNormReference {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let x = contiguous(inputs[0]);
        let channels = self.weight.len();
        let per_channel: usize = inputs[0].shape()[2..].iter().product();
        let out = x
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let c = i / per_channel % channels;
                let norm =
                    (*v as f64 - self.mean[c] as f64) / (self.var[c] as f64 + self.eps).sqrt();
                (norm * self.weight[c] as f64 + self.bias[c] as f64) as f32
            })
            .collect();
        tensor(inputs[0].shape().to_vec(), out)
    }

    fn param_bytes(&self) -> u64 {
        4 * self.weight.len() as u64 * 4
    }
}
