//! 2-D convolution (PyTorch semantics: zero padding, stride, dilation, groups) through im2col and
//! the shared GEMM.

use ndarray::{ArrayD, IxDyn};

use super::direct_conv;
use super::gemm::matmul_acc;
use super::packed::{self, DenseWeights, XLayout};
use super::{apply_activation, Layer, Scratch, ShapeError, Tensor};
use crate::config::{Activation, Conv2dConfig};

fn out_size(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = input + 2 * padding;
    (padded >= span).then(|| (padded - span) / stride + 1)
}

pub fn infer_shape(c: &Conv2dConfig, input: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let [ch, h, w] = input else {
        return Err(ShapeError::at(
            "inputs",
            format!("conv2d needs [channels, height, width] records, found {input:?}"),
        ));
    };
    if ch % c.groups != 0 {
        return Err(ShapeError::at(
            "groups",
            format!(
                "input channels ({ch}) must be divisible by groups ({})",
                c.groups
            ),
        ));
    }
    let oh = out_size(*h, c.kernel[0], c.stride[0], c.padding[0], c.dilation[0]);
    let ow = out_size(*w, c.kernel[1], c.stride[1], c.padding[1], c.dilation[1]);
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok(vec![c.filters, oh, ow]),
        _ => Err(ShapeError::at(
            "kernel",
            format!(
                "kernel {:?} (dilation {:?}) is larger than the padded input: input {input:?}, padding {:?}",
                c.kernel, c.dilation, c.padding
            ),
        )),
    }
}

#[derive(Debug)]
pub struct Conv2d {
    c: Conv2dConfig,
    /// `[channels, height, width]` of one record.
    input: [usize; 3],
    /// `[filters, out_h, out_w]` of one record.
    output: [usize; 3],
    weights: ConvWeights,
    /// One per filter; zeros for `bias: false`, so every path starts its sums the same way.
    bias: Vec<f32>,
}

/// Patch depth from which the packed kernel beats the gemm crate (measured with
/// `cargo bench --bench kernels -- conv`): shallow patches (a 3×3 kernel on one channel) leave too
/// little work per output to pay for the transpose back to channels-first.
const PACKED_MIN_DEPTH: usize = 64;

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
    pub fn new(
        c: Conv2dConfig,
        input: &[usize],
        output: &[usize],
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Self {
        let groups = c.groups;
        let (fg, k) = (
            c.filters / groups,
            input[0] / groups * c.kernel[0] * c.kernel[1],
        );
        let weights = if c.stride == [1, 1] && packed::simd_available() {
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
        Conv2d {
            c,
            input: [input[0], input[1], input[2]],
            output: [output[0], output[1], output[2]],
            weights,
            bias: bias.unwrap_or_else(|| vec![0.0; c.filters]),
        }
    }

    /// Fill `cols` (`[Cg·kh·kw, oh·ow]`) with the patches of group `g` of one image.
    fn im2col(&self, image: &[f32], g: usize, cols: &mut [f32]) {
        let [ch, h, w] = self.input;
        let [_, oh, ow] = self.output;
        let cg = ch / self.c.groups;
        let [kh, kw] = self.c.kernel;
        let [sh, sw] = self.c.stride;
        let [ph, pw] = self.c.padding;
        let [dh, dw] = self.c.dilation;
        let mut row = 0;
        for c in g * cg..(g + 1) * cg {
            let plane = &image[c * h * w..(c + 1) * h * w];
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
    fn forward(&self, inputs: &[&Tensor], scratch: &mut Scratch) -> Tensor {
        let x = inputs[0].as_standard_layout();
        let x = x.as_slice().unwrap();
        let n = inputs[0].shape()[0];
        let [ch, h, w] = self.input;
        let [f, oh, ow] = self.output;
        let groups = self.c.groups;
        let (fg, k, spatial) = (
            f / groups,
            ch / groups * self.c.kernel[0] * self.c.kernel[1],
            oh * ow,
        );
        let images = x.chunks_exact(ch * h * w);
        let out = match &self.weights {
            ConvWeights::Direct(weight) => {
                // Written once by the kernel: bias, sum and (for relu) the activation fused.
                let mut out = vec![0.0f32; n * f * spatial];
                let bias = &self.bias;
                let relu = self.c.activation == Activation::Relu;
                let geometry = direct_conv::Geometry {
                    cg: ch / groups,
                    kernel: self.c.kernel,
                    dilation: self.c.dilation,
                    out: [oh, ow],
                };
                for (image, record) in images.zip(out.chunks_exact_mut(f * spatial)) {
                    let padded =
                        direct_conv::pad(image, self.input, self.c.padding, &mut scratch.cols);
                    for g in 0..groups {
                        let wg = &weight[g * fg * k..(g + 1) * fg * k];
                        let og = &mut record[g * fg * spatial..(g + 1) * fg * spatial];
                        let bg = &bias[g * fg..(g + 1) * fg];
                        direct_conv::conv_group(
                            geometry,
                            &padded,
                            g * geometry.cg,
                            wg,
                            bg,
                            relu,
                            og,
                        );
                    }
                    scratch.cols = padded.data; // the buffer goes back for the next image
                }
                out
            }
            ConvWeights::Plain(weight) => {
                // Start from the bias (the GEMM accumulates onto it), written once.
                let mut out = Vec::with_capacity(n * f * spatial);
                for _ in 0..n {
                    for c in 0..f {
                        out.extend(std::iter::repeat_n(self.bias[c], spatial));
                    }
                }
                scratch.cols.resize(k * spatial, 0.0);
                for (image, record) in images.zip(out.chunks_exact_mut(f * spatial)) {
                    for g in 0..groups {
                        self.im2col(image, g, &mut scratch.cols);
                        let wg = &weight[g * fg * k..(g + 1) * fg * k];
                        let og = &mut record[g * fg * spatial..(g + 1) * fg * spatial];
                        matmul_acc(fg, spatial, k, wg, &scratch.cols, false, og);
                    }
                }
                out
            }
            ConvWeights::Packed(weights) => {
                let mut out = vec![0.0f32; n * f * spatial];
                scratch.cols.resize(k * spatial, 0.0);
                scratch.product.resize(spatial * fg, 0.0);
                for (image, record) in images.zip(out.chunks_exact_mut(f * spatial)) {
                    for (g, wg) in weights.iter().enumerate() {
                        self.im2col(image, g, &mut scratch.cols);
                        // product[pixel][filter] = bias + Σ cols[·][pixel] · W[filter][·]: the
                        // dense kernel reads the im2col matrix in place, transposed.
                        let product = &mut scratch.product;
                        for row in product.chunks_exact_mut(fg) {
                            row.copy_from_slice(&self.bias[g * fg..(g + 1) * fg]);
                        }
                        wg.matmul_acc_strided(
                            spatial,
                            &scratch.cols,
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
        let mut out = out;
        let fused =
            matches!(self.weights, ConvWeights::Direct(_)) && self.c.activation == Activation::Relu;
        if !fused {
            // Activations here are elementwise; softmax would act over the last (width) axis.
            apply_activation(self.c.activation, &mut out, ow);
        }
        ArrayD::from_shape_vec(IxDyn(&[n, f, oh, ow]), out).expect("conv output shape")
    }
}
