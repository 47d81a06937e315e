//! `layernorm`: normalisation over the last axis, with a learned scale and shift.

use std::sync::Arc;

use super::{
    contiguous, tensor, AttrDefault, AttrKind, AttrSpec, AttrValue, Attrs, Chunk, KernelKind,
    Layer, Op, OpFamily, Scratch, ShapeError, Tensor, TensorSpec,
};

#[derive(Debug)]
pub(super) struct LayerNormFamily;

impl OpFamily for LayerNormFamily {
    fn names(&self) -> &'static [&'static str] {
        &["layernorm"]
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
        "`weight`, `bias` [last axis]; over the last axis"
    }
    fn configure(&self, _name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(LayerNormOp {
            eps: a.float("eps"),
        }))
    }
}

#[derive(Debug)]
struct LayerNormOp {
    eps: f64,
}

impl Op for LayerNormOp {
    fn name(&self) -> &'static str {
        "layernorm"
    }
    fn rows(&self, inputs: &[super::Rows]) -> Result<super::Rows, ShapeError> {
        super::same_rows(self.name(), inputs)
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        Ok(inputs[0].to_vec())
    }
    fn tensors(&self, inputs: &[&[usize]]) -> Vec<TensorSpec> {
        let d = vec![*inputs[0].last().expect("records have at least one axis")];
        vec![
            TensorSpec::constant("weight", d.clone(), 1.0),
            TensorSpec::constant("bias", d, 0.0),
        ]
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
        let [weight, bias]: [Vec<f32>; 2] =
            tensors.try_into().expect("layernorm reads two tensors");
        Box::new(LayerNorm {
            weight,
            bias,
            eps: self.eps,
            kind,
        })
    }
}

/// Each row of `x` (rows as long as `weight`) normalised into the same row of `out`, on the
/// widest vectors the CPU has. Written whole, so `out` may hold anything: copying the input
/// and normalising the copy in place was one more pass over every token.
fn normalize(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::isa().has_avx2_fma() {
        // SAFETY: `isa()` reports AVX2+FMA, or AVX-512 (which needs both), only when the CPU has
        // them.
        unsafe { normalize_avx2(x, out, weight, bias, eps) };
        return;
    }
    normalize_rows(x, out, weight, bias, eps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn normalize_avx2(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    normalize_rows(x, out, weight, bias, eps);
}

/// Two passes in f32, each summed in eight independent lanes (one vector register): the mean,
/// then the variance around it, so a row with a large mean keeps an accurate variance.
#[inline(always)]
fn normalize_rows(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let d = weight.len();
    for (row, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = lane_sum(row, |x| x) / d as f32;
        let var = lane_sum(row, |x| (x - mean) * (x - mean)) / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((y, x), w), b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
            *y = (*x - mean) * inv * w + b;
        }
    }
}

/// Σ f(x) over `row`, in eight lanes added up at the end.
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|x| f(*x)).sum();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += f(c[l]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[derive(Debug)]
struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f64,
    kind: KernelKind,
}

impl Layer for LayerNorm {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, scratch: &mut Scratch) -> Tensor {
        let d = self.weight.len();
        match self.kind {
            KernelKind::Fast => {
                let x = contiguous(inputs[0]);
                let mut out = scratch.output(x.len());
                normalize(&x, &mut out, &self.weight, &self.bias, self.eps as f32);
                tensor(inputs[0].shape().to_vec(), out)
            }
            KernelKind::Reference => {
                let x = contiguous(inputs[0]);
                let mut out = Vec::with_capacity(x.len());
                for row in x.chunks_exact(d) {
                    let row: Vec<f64> = row.iter().map(|v| *v as f64).collect();
                    let mean = row.iter().sum::<f64>() / d as f64;
                    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
                    for (i, v) in row.iter().enumerate() {
                        let y = (v - mean) / (var + self.eps).sqrt() * self.weight[i] as f64
                            + self.bias[i] as f64;
                        out.push(y as f32);
                    }
                }
                tensor(inputs[0].shape().to_vec(), out)
            }
        }
    }

    fn param_bytes(&self) -> u64 {
        (self.weight.len() + self.bias.len()) as u64 * 4
    }
}
