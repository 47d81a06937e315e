//! `conv2d`: 2-D convolution with PyTorch's semantics (zero padding, stride, dilation, groups).
//!
//! Three fast kernels, chosen at load: stride 1 on AVX2 runs the direct convolution (no im2col);
//! deep patches run the packed dense kernel reading an im2col matrix in place; shallow ones the
//! portable GEMM on im2col.

use std::sync::Arc;

use super::activation::reference_activation;
use super::{
    apply_activation, batched, contiguous, tensor, Activation, AttrDefault, AttrKind, AttrSpec,
    AttrValue, Attrs, ChannelAffine, Chunk, KernelKind, Layer, Op, OpFamily, Scratch, ScratchNeed,
    ShapeError, Tensor, TensorSpec,
};
use crate::kernels::direct_conv;
use crate::kernels::gemm::matmul_acc;
use crate::kernels::packed::{DenseWeights, XLayout};
use crate::kernels::{isa, Isa};

#[derive(Debug)]
pub(super) struct Conv2dFamily;

const fn pair(name: &'static str, min: u64, default: AttrDefault) -> AttrSpec {
    AttrSpec::new(name, AttrKind::Pair { min }, default)
}

impl OpFamily for Conv2dFamily {
    fn names(&self) -> &'static [&'static str] {
        &["conv2d"]
    }
    fn attributes(&self) -> &'static [AttrSpec] {
        const ATTRS: &[AttrSpec] = &[
            AttrSpec::new(
                "filters",
                AttrKind::Int {
                    min: 1,
                    max: u64::MAX,
                },
                AttrDefault::Required("the number of output channels"),
            ),
            pair(
                "kernel",
                1,
                AttrDefault::Required("the kernel size, an integer or [h, w]"),
            ),
            pair("stride", 1, AttrDefault::Value(AttrValue::Pair([1, 1]))),
            pair("padding", 0, AttrDefault::Value(AttrValue::Pair([0, 0]))),
            pair("dilation", 1, AttrDefault::Value(AttrValue::Pair([1, 1]))),
            AttrSpec::new(
                "groups",
                AttrKind::Int {
                    min: 1,
                    max: u64::MAX,
                },
                AttrDefault::Value(AttrValue::Int(1)),
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
        "`weight` [filters, in/groups, kh, kw], `bias` [filters]; records [C, H, W]; zero padding; output size as PyTorch"
    }
    fn configure(&self, _name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        let c = Conv2dOp {
            filters: a.int("filters"),
            kernel: a.pair("kernel"),
            stride: a.pair("stride"),
            padding: a.pair("padding"),
            dilation: a.pair("dilation"),
            groups: a.int("groups"),
            bias: a.bool("bias"),
            activation: a.activation("activation"),
        };
        if !c.filters.is_multiple_of(c.groups) {
            return Err(ShapeError::at(
                "groups",
                format!(
                    "filters ({}) must be divisible by groups ({})",
                    c.filters, c.groups
                ),
            ));
        }
        Ok(Arc::new(c))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Conv2dOp {
    filters: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    bias: bool,
    activation: Activation,
}

fn out_size(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation.checked_mul(kernel - 1)? + 1;
    let padded = padding.checked_mul(2)?.checked_add(input)?;
    (padded >= span).then(|| (padded - span) / stride + 1)
}

impl Op for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        let input = inputs[0];
        let [ch, h, w] = input else {
            return Err(ShapeError::at(
                "inputs",
                format!("conv2d needs [channels, height, width] records, found {input:?}"),
            ));
        };
        if !ch.is_multiple_of(self.groups) {
            return Err(ShapeError::at(
                "groups",
                format!(
                    "input channels ({ch}) must be divisible by groups ({})",
                    self.groups
                ),
            ));
        }
        let oh = out_size(
            *h,
            self.kernel[0],
            self.stride[0],
            self.padding[0],
            self.dilation[0],
        );
        let ow = out_size(
            *w,
            self.kernel[1],
            self.stride[1],
            self.padding[1],
            self.dilation[1],
        );
        match (oh, ow) {
            (Some(oh), Some(ow)) => Ok(vec![self.filters, oh, ow]),
            _ => Err(ShapeError::at(
                "kernel",
                format!(
                    "kernel {:?} (dilation {:?}) is larger than the padded input: input {input:?}, padding {:?}",
                    self.kernel, self.dilation, self.padding
                ),
            )),
        }
    }
    fn tensors(&self, inputs: &[&[usize]]) -> Vec<TensorSpec> {
        let cg = inputs[0][0] / self.groups;
        let fan_in = cg * self.kernel[0] * self.kernel[1];
        let mut v = vec![TensorSpec::uniform(
            "weight",
            vec![self.filters, cg, self.kernel[0], self.kernel[1]],
            fan_in,
        )];
        if self.bias {
            v.push(TensorSpec::uniform("bias", vec![self.filters], fan_in));
        }
        v
    }
    fn flops(&self, inputs: &[&[usize]], output: &[usize], _seq: usize) -> u64 {
        let per_out = (inputs[0][0] / self.groups * self.kernel[0] * self.kernel[1]) as u64;
        2 * per_out * output.iter().product::<usize>() as u64
    }
    /// A shard computes a part of the filters (rows of `weight` and `bias`, the activation
    /// fused as before); the shards' outputs concatenate on the channel axis.
    fn shard(&self, index: usize, count: usize) -> Result<super::Shard, String> {
        if self.groups != 1 {
            // A shard of a grouped convolution would read a part of the input channels too.
            return Err("a grouped conv2d (groups > 1) cannot be sharded".into());
        }
        if count > self.filters {
            return Err(format!(
                "cannot split {} filters into {count} shards",
                self.filters
            ));
        }
        let slice = super::TensorSlice::Rows { index, count };
        Ok(super::Shard {
            op: Arc::new(Conv2dOp {
                filters: super::part(self.filters, index, count).len(),
                ..*self
            }),
            slices: vec![slice; 1 + usize::from(self.bias)],
            combine: super::concat::concat_shards(false),
        })
    }
    fn build(
        &self,
        kind: KernelKind,
        inputs: &[&[usize]],
        output: &[usize],
        tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        let mut tensors = tensors.into_iter();
        let weight = tensors.next().expect("conv2d reads a weight");
        let bias = tensors.next().unwrap_or_else(|| vec![0.0; self.filters]);
        let geometry = ConvGeometry {
            op: *self,
            input: [inputs[0][0], inputs[0][1], inputs[0][2]],
            output: [output[0], output[1], output[2]],
        };
        match kind {
            KernelKind::Fast => Box::new(Conv2d::new(geometry, weight, bias)),
            KernelKind::Reference => Box::new(Conv2dReference {
                g: geometry,
                weight,
                bias,
            }),
        }
    }
    /// Each output channel is one filter's sum plus its bias; an activation would come between
    /// the sum and the map.
    fn folds_channel_affine(&self) -> bool {
        self.activation == Activation::Identity
    }
    /// `(x ⊛ w + b) · s + t = x ⊛ (w · s) + (b · s + t)` per filter: the same op with a bias.
    fn fold_channel_affine(
        &self,
        tensors: Vec<Vec<f32>>,
        affine: &ChannelAffine,
    ) -> (Arc<dyn Op>, Vec<Vec<f32>>) {
        let mut tensors = tensors.into_iter();
        let mut weight = tensors.next().expect("conv2d reads a weight");
        let bias = tensors.next().unwrap_or_else(|| vec![0.0; self.filters]);
        let per_filter = weight.len() / self.filters;
        for (filter, s) in weight.chunks_exact_mut(per_filter).zip(&affine.scale) {
            filter.iter_mut().for_each(|w| *w = (*w as f64 * s) as f32);
        }
        let bias = bias
            .iter()
            .zip(affine.scale.iter().zip(&affine.shift))
            .map(|(b, (s, t))| (*b as f64 * s + t) as f32)
            .collect();
        let op = Conv2dOp {
            bias: true,
            ..*self
        };
        (Arc::new(op), vec![weight, bias])
    }
}

/// An op with the record shapes it runs on.
#[derive(Debug, Clone, Copy)]
struct ConvGeometry {
    op: Conv2dOp,
    /// `[channels, height, width]` of one record.
    input: [usize; 3],
    /// `[filters, out_h, out_w]` of one record.
    output: [usize; 3],
}

impl ConvGeometry {
    /// `(filters per group, patch depth, output pixels)`.
    fn dims(&self) -> (usize, usize, usize) {
        let c = &self.op;
        (
            c.filters / c.groups,
            self.input[0] / c.groups * c.kernel[0] * c.kernel[1],
            self.output[1] * self.output[2],
        )
    }
}

/// Patch depth from which the packed kernel beats the gemm crate (measured with
/// `cargo bench --bench kernels -- conv`): shallow patches (a 3×3 kernel on one channel) leave too
/// little work per output to pay for the transpose back to channels-first.
const PACKED_MIN_DEPTH: usize = 64;

#[derive(Debug)]
struct Conv2d {
    g: ConvGeometry,
    weights: ConvWeights,
    /// One per filter; zeros for `bias: false`, so every path starts its sums the same way.
    bias: Vec<f32>,
}

#[derive(Debug)]
enum ConvWeights {
    /// Stride 1 on AVX2: direct convolution from a padded copy of the image, no im2col.
    Direct(Vec<f32>),
    /// Each group's `[F/g, K]` slice, packed for the dense kernel, which reads im2col in place.
    Packed(Vec<DenseWeights>),
    /// `[filters, channels/groups, kh, kw]` as loaded: each group's rows are one `[F/g, K]` matrix.
    Plain(Vec<f32>),
}

impl Conv2d {
    fn new(g: ConvGeometry, weight: Vec<f32>, bias: Vec<f32>) -> Self {
        let (fg, k, _) = g.dims();
        let weights = if g.op.stride == [1, 1] && isa() == Isa::Avx2Fma {
            ConvWeights::Direct(weight)
        } else if k >= PACKED_MIN_DEPTH {
            ConvWeights::Packed(
                weight
                    .chunks_exact(fg * k)
                    .map(|wg| DenseWeights::new(wg.to_vec(), fg, k))
                    .collect(),
            )
        } else {
            ConvWeights::Plain(weight)
        };
        Conv2d { g, weights, bias }
    }

    /// Fill `cols` (`[Cg·kh·kw, oh·ow]`) with the patches of group `group` of one image.
    fn im2col(&self, image: &[f32], group: usize, cols: &mut [f32]) {
        let [ch, h, w] = self.g.input;
        let [_, oh, ow] = self.g.output;
        let c = &self.g.op;
        let cg = ch / c.groups;
        let [kh, kw] = c.kernel;
        let [sh, sw] = c.stride;
        let [ph, pw] = c.padding;
        let [dh, dw] = c.dilation;
        let mut row = 0;
        for ci in group * cg..(group + 1) * cg {
            let plane = &image[ci * h * w..(ci + 1) * h * w];
            for ki in 0..kh {
                for kj in 0..kw {
                    let dst = &mut cols[row * oh * ow..(row + 1) * oh * ow];
                    for oy in 0..oh {
                        let y = (oy * sh + ki * dh) as isize - ph as isize;
                        let line = &mut dst[oy * ow..(oy + 1) * ow];
                        if y < 0 || y >= h as isize {
                            line.fill(0.0);
                            continue;
                        }
                        let src = &plane[y as usize * w..(y as usize + 1) * w];
                        let x0 = (kj * dw) as isize - pw as isize;
                        if sw == 1 {
                            // Output columns whose input column is inside the image: one copy;
                            // the padding either side is zeros.
                            let lo = (-x0).clamp(0, ow as isize) as usize;
                            let hi = (w as isize - x0).clamp(lo as isize, ow as isize) as usize;
                            line[..lo].fill(0.0);
                            line[lo..hi].copy_from_slice(
                                &src[(lo as isize + x0) as usize..(hi as isize + x0) as usize],
                            );
                            line[hi..].fill(0.0);
                            continue;
                        }
                        for (ox, v) in line.iter_mut().enumerate() {
                            let x = x0 + (ox * sw) as isize;
                            *v = if x >= 0 && x < w as isize {
                                src[x as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

impl Layer for Conv2d {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, scratch: &mut Scratch) -> Tensor {
        let x = contiguous(inputs[0]);
        let n = inputs[0].shape()[0];
        let [ch, h, w] = self.g.input;
        let [f, oh, ow] = self.g.output;
        let c = &self.g.op;
        let (fg, k, spatial) = self.g.dims();
        let (slot_a, slot_b) = scratch.slots(self.scratch(n));
        let images = x.chunks_exact(ch * h * w);
        let mut out = match &self.weights {
            ConvWeights::Direct(weight) => {
                // Written once by the kernel: bias, sum and (for relu) the activation fused.
                let mut out = vec![0.0f32; n * f * spatial];
                let relu = c.activation == Activation::Relu;
                let geometry = direct_conv::Geometry {
                    cg: ch / c.groups,
                    kernel: c.kernel,
                    dilation: c.dilation,
                    out: [oh, ow],
                };
                for (image, record) in images.zip(out.chunks_exact_mut(f * spatial)) {
                    let padded = direct_conv::pad(image, self.g.input, c.padding, slot_a);
                    for g in 0..c.groups {
                        direct_conv::conv_group(
                            geometry,
                            &padded,
                            g * geometry.cg,
                            &weight[g * fg * k..(g + 1) * fg * k],
                            &self.bias[g * fg..(g + 1) * fg],
                            relu,
                            &mut record[g * fg * spatial..(g + 1) * fg * spatial],
                        );
                    }
                }
                out
            }
            ConvWeights::Plain(weight) => {
                // Start from the bias (the GEMM accumulates onto it), written once.
                let mut out = Vec::with_capacity(n * f * spatial);
                for _ in 0..n {
                    for b in &self.bias {
                        out.extend(std::iter::repeat_n(*b, spatial));
                    }
                }
                for (image, record) in images.zip(out.chunks_exact_mut(f * spatial)) {
                    for g in 0..c.groups {
                        self.im2col(image, g, slot_a);
                        let wg = &weight[g * fg * k..(g + 1) * fg * k];
                        let og = &mut record[g * fg * spatial..(g + 1) * fg * spatial];
                        matmul_acc(fg, spatial, k, wg, slot_a, false, og);
                    }
                }
                out
            }
            ConvWeights::Packed(weights) => {
                let mut out = vec![0.0f32; n * f * spatial];
                for (image, record) in images.zip(out.chunks_exact_mut(f * spatial)) {
                    for (g, wg) in weights.iter().enumerate() {
                        self.im2col(image, g, slot_a);
                        // product[pixel][filter] = bias + Σ cols[·][pixel] · W[filter][·]: the
                        // dense kernel reads the im2col matrix in place, transposed.
                        let product = &mut *slot_b;
                        for row in product.chunks_exact_mut(fg) {
                            row.copy_from_slice(&self.bias[g * fg..(g + 1) * fg]);
                        }
                        wg.matmul_acc_strided(
                            spatial,
                            slot_a,
                            XLayout {
                                row: 1,
                                depth: spatial,
                            },
                            product,
                            fg,
                        );
                        // Back to channels-first.
                        let og = &mut record[g * fg * spatial..(g + 1) * fg * spatial];
                        for (pixel, row) in product.chunks_exact(fg).enumerate() {
                            for (filter, v) in row.iter().enumerate() {
                                og[filter * spatial + pixel] = *v;
                            }
                        }
                    }
                }
                out
            }
        };
        let fused =
            matches!(self.weights, ConvWeights::Direct(_)) && c.activation == Activation::Relu;
        if !fused {
            // Activations here are elementwise; softmax would act over the last (width) axis.
            apply_activation(c.activation, &mut out, ow);
        }
        tensor(batched(n, &self.g.output), out)
    }

    fn scratch(&self, _rows: usize) -> ScratchNeed {
        let (fg, k, spatial) = self.g.dims();
        match self.weights {
            ConvWeights::Direct(_) => [
                direct_conv::padded_len(self.g.input, self.g.op.padding)
                    .expect("checked when the plan was built"),
                0,
            ],
            ConvWeights::Plain(_) => [k * spatial, 0],
            ConvWeights::Packed(_) => [k * spatial, spatial * fg],
        }
    }

    fn param_bytes(&self) -> u64 {
        let weights = match &self.weights {
            ConvWeights::Direct(w) | ConvWeights::Plain(w) => w.len() as u64 * 4,
            ConvWeights::Packed(ws) => ws.iter().map(DenseWeights::bytes).sum(),
        };
        weights + self.bias.len() as u64 * 4
    }
}

/// The reference: every output from the definition, one f64 sum over its receptive field.
#[derive(Debug)]
struct Conv2dReference {
    g: ConvGeometry,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Layer for Conv2dReference {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let x = contiguous(inputs[0]);
        let n = inputs[0].shape()[0];
        let [ch, h, w] = self.g.input;
        let [f, oh, ow] = self.g.output;
        let c = &self.g.op;
        let (cg, fg) = (ch / c.groups, f / c.groups);
        let [kh, kw] = c.kernel;
        let mut out = Vec::with_capacity(n * f * oh * ow);
        for image in x.chunks_exact(ch * h * w) {
            let mut record = Vec::with_capacity(f * oh * ow);
            for filter in 0..f {
                let group = filter / fg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = self.bias[filter] as f64;
                        for ci in 0..cg {
                            for ki in 0..kh {
                                for kj in 0..kw {
                                    let y = (oy * c.stride[0] + ki * c.dilation[0]) as isize
                                        - c.padding[0] as isize;
                                    let xx = (ox * c.stride[1] + kj * c.dilation[1]) as isize
                                        - c.padding[1] as isize;
                                    if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                        continue;
                                    }
                                    let input = image
                                        [((group * cg + ci) * h + y as usize) * w + xx as usize];
                                    let weight =
                                        self.weight[((filter * cg + ci) * kh + ki) * kw + kj];
                                    sum += input as f64 * weight as f64;
                                }
                            }
                        }
                        record.push(sum);
                    }
                }
            }
            reference_activation(c.activation, &mut record, ow);
            out.extend(record.into_iter().map(|v| v as f32));
        }
        tensor(batched(n, &self.g.output), out)
    }

    fn param_bytes(&self) -> u64 {
        (self.weight.len() + self.bias.len()) as u64 * 4
    }
}
