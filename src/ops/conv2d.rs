//! `conv2d`: 2-D convolution with PyTorch's semantics (zero padding, stride, dilation, groups).
//!
//! Three algorithms, all on the register-blocked kernel of [`crate::kernels::conv_block`] with
//! filters packed at load for the instruction set this CPU runs (AVX-512, AVX2+FMA or portable):
//! `direct` reads a padded, stride-phase-split copy of the image in place; `gemm` builds an im2col
//! matrix over several images (no padding columns); `winograd` runs 3×3 stride-1 convolutions as
//! F(2×2, 3×3) tiles, 2.25× fewer multiplications, and `winograd_f4` as F(4×4, 3×3), 4× fewer
//! with more rounding error. `algorithm: auto` picks per layer from the shape (see [`choose`]);
//! `validate` prints the choice. Bias and ReLU are applied as the output is written.
//!
//! The graph may fold a 2×2 stride-2 max pool that alone reads a direct convolution's output into
//! it ([`Op::with_max_pool`]): the kernel then writes only each 2×2 block's maximum.

use std::sync::Arc;

use super::activation::reference_activation;
use super::{
    apply_activation, batched, contiguous, tensor, Activation, AttrDefault, AttrKind, AttrSpec,
    AttrValue, Attrs, ChannelAffine, Chunk, KernelKind, Layer, Op, OpFamily, Scratch, ScratchNeed,
    ShapeError, Tensor, TensorSpec,
};
use crate::kernels::conv_block::PackedFilters;
use crate::kernels::conv_direct::{ConvShape, DirectConv};
use crate::kernels::conv_lanes::{self, LaneFilters};
use crate::kernels::im2col::Im2col;
use crate::kernels::winograd::{TileSize, Winograd};
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
            AttrSpec::new(
                "algorithm",
                AttrKind::Choice(AlgorithmChoice::NAMES),
                AttrDefault::Value(AttrValue::Choice("auto")),
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
            algorithm: AlgorithmChoice::from_name(a.choice("algorithm")),
            residual: None,
            max_pool: false,
            batch: 1,
            threads: 1,
        };
        let winograd = matches!(
            c.algorithm,
            AlgorithmChoice::Winograd | AlgorithmChoice::WinogradF4
        );
        if winograd && !c.winograd_fits() {
            return Err(ShapeError::at(
                "algorithm",
                format!(
                    "winograd needs a 3x3 kernel with stride 1 and dilation 1, found kernel {:?}, stride {:?}, dilation {:?} (use auto, direct or gemm)",
                    c.kernel, c.stride, c.dilation
                ),
            ));
        }
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
    algorithm: AlgorithmChoice,
    /// Set only by the graph's residual fold ([`Op::with_residual`]), never by a file: the
    /// layer then reads two values, and adds the one at this index to its sum before the
    /// activation; the other is the convolution's input.
    residual: Option<usize>,
    /// Set only by the graph's pool fold ([`Op::with_max_pool`]), never by a file: the output
    /// is the 2×2 stride-2 max pool of the convolution's (floor mode), and only the maxima are
    /// written.
    max_pool: bool,
    /// Records a chunk holds, as the pipeline's batch size says ([`Op::for_stage`]): the
    /// Winograd tile size depends on how many tiles a pass gets. 1 until the graph sets it.
    batch: usize,
    /// Threads of the stage that runs it ([`Op::for_stage`]): the fast kernel splits its
    /// filters into that many parts. 1 until the graph sets it.
    threads: usize,
}

/// The `algorithm` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlgorithmChoice {
    Auto,
    Direct,
    Gemm,
    /// F(2×2, 3×3).
    Winograd,
    /// F(4×4, 3×3): faster on most 3×3 layers, 8× the rounding error.
    WinogradF4,
}

impl AlgorithmChoice {
    const NAMES: &'static [&'static str] = &["auto", "direct", "gemm", "winograd", "winograd_f4"];

    fn from_name(name: &str) -> AlgorithmChoice {
        match name {
            "direct" => AlgorithmChoice::Direct,
            "gemm" => AlgorithmChoice::Gemm,
            "winograd" => AlgorithmChoice::Winograd,
            "winograd_f4" => AlgorithmChoice::WinogradF4,
            _ => AlgorithmChoice::Auto,
        }
    }
}

impl Conv2dOp {
    /// Which of the layer's inputs is the image: the one that is not the residual.
    fn input_index(&self) -> usize {
        match self.residual {
            Some(0) => 1,
            _ => 0,
        }
    }

    /// Whether Winograd F(2×2, 3×3) computes this convolution.
    fn winograd_fits(&self) -> bool {
        self.kernel == [3, 3] && self.stride == [1, 1] && self.dilation == [1, 1]
    }

    /// The kernels' description of this convolution over records of `input`.
    fn shape(&self, input: [usize; 3]) -> ConvShape {
        ConvShape {
            input,
            groups: self.groups,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        }
    }

    /// `[filters, out_h, out_w]` of the convolution itself over one `input` record, before any
    /// folded pool.
    fn conv_output(&self, input: &[usize]) -> Result<[usize; 3], ShapeError> {
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
            (Some(oh), Some(ow)) => Ok([self.filters, oh, ow]),
            _ => Err(ShapeError::at(
                "kernel",
                format!(
                    "kernel {:?} (dilation {:?}) is larger than the padded input: input {input:?}, padding {:?}",
                    self.kernel, self.dilation, self.padding
                ),
            )),
        }
    }
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
        let [f, oh, ow] = self.conv_output(inputs[self.input_index()])?;
        Ok(match self.max_pool {
            true => vec![f, oh / 2, ow / 2],
            false => vec![f, oh, ow],
        })
    }
    fn tensors(&self, inputs: &[&[usize]]) -> Vec<TensorSpec> {
        let cg = inputs[self.input_index()][0] / self.groups;
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
    /// The convolution's multiply-adds, and with a folded pool its four taps a maximum, as the
    /// pool counts them.
    fn flops(&self, inputs: &[&[usize]], output: &[usize], _seq: usize) -> u64 {
        let input = inputs[self.input_index()];
        let per_out = (input[0] / self.groups * self.kernel[0] * self.kernel[1]) as u64;
        let outputs = |shape: &[usize]| shape.iter().product::<usize>() as u64;
        match (self.max_pool, self.conv_output(input)) {
            (true, Ok(conv)) => 2 * per_out * outputs(&conv) + 4 * outputs(output),
            _ => 2 * per_out * outputs(output),
        }
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
        let input = inputs[self.input_index()];
        let [_, oh, ow] = self
            .conv_output(input)
            .expect("conv2d shapes checked when the plan was built");
        let geometry = ConvGeometry {
            op: *self,
            input: [input[0], input[1], input[2]],
            conv_out: [oh, ow],
            output: [output[0], output[1], output[2]],
        };
        match kind {
            KernelKind::Fast => Box::new(Conv2d::new(geometry, weight, bias, isa())),
            KernelKind::Reference => Box::new(Conv2dReference {
                g: geometry,
                weight,
                bias,
            }),
        }
    }
    fn for_stage(&self, batch: usize, threads: usize) -> Option<Arc<dyn Op>> {
        Some(Arc::new(Conv2dOp {
            batch: batch.max(1),
            threads: threads.max(1),
            ..*self
        }))
    }
    /// The residual is added to the sum before the activation, so the convolution must have
    /// none yet.
    fn with_residual(&self, at: usize) -> Option<Arc<dyn Op>> {
        let plain = self.residual.is_none() && !self.max_pool;
        (self.activation == Activation::Identity && plain && at < 2).then(|| {
            Arc::new(Conv2dOp {
                residual: Some(at),
                ..*self
            }) as Arc<dyn Op>
        })
    }
    fn with_activation(&self, activation: Activation) -> Option<Arc<dyn Op>> {
        (self.activation == Activation::Identity && !self.max_pool).then(|| {
            Arc::new(Conv2dOp {
                activation,
                ..*self
            }) as Arc<dyn Op>
        })
    }
    /// Each output channel is one filter's sum plus its bias; an activation would come between
    /// the sum and the map.
    fn folds_channel_affine(&self) -> bool {
        self.activation == Activation::Identity && self.residual.is_none() && !self.max_pool
    }
    /// Only where the kernel is the direct one (the others have no pooled epilogue) and the
    /// activation commutes with the maximum (none, or ReLU: monotone), after any residual.
    fn with_max_pool(&self, inputs: &[&[usize]]) -> Option<Arc<dyn Op>> {
        let monotone = matches!(self.activation, Activation::Identity | Activation::Relu);
        if self.max_pool || self.residual.is_some() || !monotone {
            return None;
        }
        let input = inputs.first()?;
        let [_, oh, ow] = self.conv_output(input).ok()?;
        let shape = self.shape([input[0], input[1], input[2]]);
        let direct = choose(self, &shape, [oh, ow]) == Algorithm::Direct;
        (direct && oh >= 2 && ow >= 2).then(|| {
            Arc::new(Conv2dOp {
                max_pool: true,
                ..*self
            }) as Arc<dyn Op>
        })
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
    /// `[out_h, out_w]` of the convolution itself, before a folded pool.
    conv_out: [usize; 2],
    /// `[filters, out_h, out_w]` of one record, as the layer writes it (pooled, with a folded
    /// pool).
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

/// The algorithm `auto` takes for a convolution of this shape, a fixed rule from the
/// measurements of `benches/conv.rs` (README, Performance):
/// - Winograd for 3×3 stride-1 layers with at least 32 input and 32 output channels per group
///   (1.1–1.8× direct on ResNet-18's; with 16 channels the transforms cost more than the products
///   they save, 0.6–0.7× on the small CNN's 16→32 layer). F(4×4, 3×3) where a chunk of the
///   pipeline's batch size has at least 16 of its tiles (maps of 13×13 and up at any batch:
///   0–25% faster than F(2×2) on ResNet's 56², 28² and 14² layers; a 7×7 map has 4, so from
///   batch 4), F(2×2, 3×3) below (a 7×7 map at batch 1 runs at 0.4× F(2×2)'s speed in F(4×4),
///   at batch 8 at BATCH8_F4). F(4×4)'s rounding error is 8× F(2×2)'s per layer, but through a
///   chain of twelve layers it stays within 3× direct convolution's (tests/conv_kernels.rs).
/// - im2col for 1×1 kernels, where the patch matrix is the image (or its stride-2 subsample) and
///   several images side by side fill the vectors (up to 1.2× direct).
/// - direct otherwise (2× im2col on ResNet's 7×7 stride-2 stem).
fn choose(op: &Conv2dOp, shape: &ConvShape, out: [usize; 2]) -> Algorithm {
    let fg = op.filters / op.groups;
    let cg = shape.cg();
    match op.algorithm {
        AlgorithmChoice::Direct => Algorithm::Direct,
        AlgorithmChoice::Gemm => Algorithm::Gemm,
        AlgorithmChoice::Winograd => Algorithm::Winograd(TileSize::F2),
        AlgorithmChoice::WinogradF4 => Algorithm::Winograd(TileSize::F4),
        AlgorithmChoice::Auto => {
            if op.winograd_fits() && cg >= 32 && fg >= 32 {
                let f4_tiles = out[0].div_ceil(4) * out[1].div_ceil(4) * op.batch;
                Algorithm::Winograd(if f4_tiles >= 16 {
                    TileSize::F4
                } else {
                    TileSize::F2
                })
            } else if op.kernel == [1, 1] {
                Algorithm::Gemm
            } else {
                Algorithm::Direct
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Direct,
    Gemm,
    Winograd(TileSize),
}

/// The fast kernel: the chosen algorithm with its packed filters, in one part per thread of the
/// stage's team.
#[derive(Debug)]
struct Conv2d {
    g: ConvGeometry,
    /// One part per thread of the stage that runs the layer (one part in a stage of one
    /// thread): a team runs the parts of each image at once, each writing its filters'
    /// channels. What every part reads is made once, by the whole team: the direct kernels'
    /// padded image, Winograd's padded image and input transform. (Winograd layers on maps of
    /// 16 rows and more used to split by output rows instead, each band transforming its own
    /// rows; with the transform shared, filters measured faster: one ResNet-18 image on two
    /// threads 16.0–19.1 ms against 19.1–27.0, five alternated rounds.)
    parts: Vec<ConvPart>,
    /// One per filter; zeros for `bias: false`, so every path starts its sums the same way.
    bias: Vec<f32>,
    /// ReLU happens as the kernel writes; other activations after.
    relu_fused: bool,
}

#[derive(Debug)]
struct ConvPart {
    /// Its filters, of the layer's.
    filters: std::ops::Range<usize>,
    kernel: ConvKernel,
}

#[derive(Debug)]
enum ConvKernel {
    /// One image at a time from its padded, phase-split copy; filters packed per group.
    Direct(DirectConv, Vec<PackedFilters>),
    /// A pooled direct convolution of one group on the filter-lane kernel (AVX-512, deep
    /// patches: [`conv_lanes::worth_it`]).
    PooledLanes(DirectConv, LaneFilters),
    /// Several images' patch matrix at a time; filters packed per group.
    Gemm(Im2col, Vec<PackedFilters>),
    /// F(2×2, 3×3) tiles; the transformed filters live inside.
    Winograd(Winograd),
}

/// Filters per part a convolution's split keeps whole: the kernels' 8-filter block, so that no
/// part runs a ragged block the whole layer would not.
const PART_FILTERS: usize = 8;

/// The filter ranges of a convolution of `filters` split over `threads` threads: as even as
/// whole [`PART_FILTERS`] allow, one range when there are too few filters (or groups, whose
/// parts would read parts of the input).
fn filter_parts(filters: usize, groups: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let blocks = filters / PART_FILTERS;
    let parts = threads.min(blocks).max(1);
    if parts == 1 || groups != 1 {
        return std::iter::once(0..filters).collect();
    }
    let mut ranges = Vec::with_capacity(parts);
    let mut start = 0;
    for p in 0..parts {
        // The first parts take the extra blocks; the last one the ragged tail.
        let take = blocks / parts + usize::from(p < blocks % parts);
        let end = if p + 1 == parts {
            filters
        } else {
            start + take * PART_FILTERS
        };
        ranges.push(start..end);
        start = end;
    }
    ranges
}

impl Conv2d {
    fn new(g: ConvGeometry, weight: Vec<f32>, bias: Vec<f32>, isa: Isa) -> Self {
        let c = &g.op;
        let shape = c.shape(g.input);
        let (_, k, _) = g.dims();
        let checked = "conv2d geometry checked when the plan was built";
        let ranges = filter_parts(c.filters, c.groups, c.threads);
        // Split parts run image by image (their outputs are the image's channels), so their
        // algorithm is the one for chunks of one image.
        let op = match ranges.len() {
            1 => *c,
            _ => Conv2dOp { batch: 1, ..*c },
        };
        // Only the direct kernel pools as it writes (`with_max_pool` folds a pool only where
        // `choose` picks it anyway).
        let algorithm = match c.max_pool {
            true => Algorithm::Direct,
            false => choose(&op, &shape, g.conv_out),
        };
        let parts = ranges
            .into_iter()
            .map(|filters| {
                let weight = &weight[filters.start * k..filters.end * k];
                let fp = filters.len();
                let fg = fp / c.groups;
                let pack = || -> Vec<PackedFilters> {
                    weight
                        .chunks_exact(fg * k)
                        .map(|wg| PackedFilters::new(wg, fg, k, isa))
                        .collect()
                };
                let kernel = match algorithm {
                    Algorithm::Direct
                        if c.max_pool && conv_lanes::worth_it(isa, c.groups, fp, k) =>
                    {
                        ConvKernel::PooledLanes(
                            DirectConv::max_pooled(shape).expect(checked),
                            LaneFilters::new(weight, fp, k),
                        )
                    }
                    Algorithm::Direct if c.max_pool => {
                        ConvKernel::Direct(DirectConv::max_pooled(shape).expect(checked), pack())
                    }
                    Algorithm::Direct => {
                        ConvKernel::Direct(DirectConv::new(shape).expect(checked), pack())
                    }
                    Algorithm::Gemm => ConvKernel::Gemm(Im2col::new(shape).expect(checked), pack()),
                    Algorithm::Winograd(tile) => ConvKernel::Winograd(
                        Winograd::new(shape, fp, weight, tile, isa).expect(checked),
                    ),
                };
                ConvPart { filters, kernel }
            })
            .collect();
        Conv2d {
            g,
            parts,
            bias,
            relu_fused: c.activation == Activation::Relu,
        }
    }

    /// Output values of one record per filter.
    fn map_len(&self) -> usize {
        self.g.output[1] * self.g.output[2]
    }
}

impl ConvKernel {
    /// The direct convolution's geometry, for the two kernels that read its padded image.
    fn winograd(&self) -> Option<&Winograd> {
        match self {
            ConvKernel::Winograd(wino) => Some(wino),
            _ => None,
        }
    }

    fn direct(&self) -> Option<&DirectConv> {
        match self {
            ConvKernel::Direct(direct, _) | ConvKernel::PooledLanes(direct, _) => Some(direct),
            ConvKernel::Gemm(..) | ConvKernel::Winograd(_) => None,
        }
    }
}

impl ConvPart {
    /// `out = conv(x)` over this part's filters, with `bias` and `residual` (the residual only
    /// on Winograd; see [`Conv2d::forward`]) and a fused ReLU: `x` holds whole images, `out`
    /// (and `residual`) this part's channels of the same images.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        g: &ConvGeometry,
        x: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        (slot_a, slot_b): (&mut [f32], &mut [f32]),
        out: &mut [f32],
    ) {
        let image = g.input.iter().product::<usize>();
        let record = self.filters.len() * g.output[1] * g.output[2];
        match &self.kernel {
            ConvKernel::Direct(direct, filters) => {
                for (image, record) in x.chunks_exact(image).zip(out.chunks_exact_mut(record)) {
                    direct.run(image, filters, bias, relu, slot_a, record);
                }
            }
            ConvKernel::PooledLanes(direct, filters) => {
                for (image, record) in x.chunks_exact(image).zip(out.chunks_exact_mut(record)) {
                    direct.run_lanes(image, filters, bias, relu, slot_a, record);
                }
            }
            ConvKernel::Gemm(im2col, filters) => {
                im2col.run(x, filters, bias, relu, slot_a, out);
            }
            ConvKernel::Winograd(wino) => {
                wino.run(x, bias, residual, relu, slot_a, slot_b, out);
            }
        }
    }

    fn scratch(&self, rows: usize) -> ScratchNeed {
        let checked = "conv2d scratch sizes checked when the kernel was built";
        match &self.kernel {
            ConvKernel::Direct(direct, _) | ConvKernel::PooledLanes(direct, _) => {
                [direct.buffer_len(), 0]
            }
            ConvKernel::Gemm(im2col, _) => [
                im2col
                    .buffer_len(im2col.images().min(rows.max(1)))
                    .expect(checked),
                0,
            ],
            ConvKernel::Winograd(wino) => wino.scratch(rows.max(1)).expect(checked),
        }
    }
}

impl Layer for Conv2d {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, scratch: &mut Scratch) -> Tensor {
        let x = contiguous(inputs[self.g.op.input_index()]);
        let residual = self.g.op.residual.map(|i| contiguous(inputs[i]));
        let image = self.g.input.iter().product::<usize>().max(1);
        let n = x.len() / image;
        let [f, _, _] = self.g.output;
        let map = self.map_len();
        let team = scratch.team();
        let need = self.scratch(n);
        // Every output value is written by the kernel exactly once (bias, sum and a fused ReLU),
        // so the storage need not start as zeros.
        let mut out = scratch.output(n * f * map);
        let (slot_a, slot_b) = scratch.slots(need);
        // The Winograd output transform adds a residual as it writes; the other kernels leave
        // it, and so the ReLU that must follow it, to one pass after them.
        let in_kernel =
            residual.is_none() || matches!(self.parts[0].kernel, ConvKernel::Winograd(_));
        let relu = self.relu_fused && in_kernel;
        let parts = &self.parts;
        if let [part] = &parts[..] {
            part.run(
                &self.g,
                &x,
                &self.bias,
                residual.as_deref(),
                relu,
                (slot_a, slot_b),
                &mut out,
            );
            return self.finish(n, out, residual.as_deref(), in_kernel, relu);
        }
        // Image by image, the parts at once: each writes its part of the image's output.
        let shared = self.shared_winograd();
        let per = self.part_scratch();
        let mut slots: Vec<(&mut [f32], &mut [f32])> = Vec::with_capacity(per.len());
        let (mut a, mut b) = (slot_a, slot_b);
        for [na, nb] in per {
            let (sa, ra) = a.split_at_mut(na);
            let (sb, rb) = b.split_at_mut(nb);
            slots.push((sa, sb));
            (a, b) = (ra, rb);
        }
        for (i, record) in out.chunks_exact_mut(f * map).enumerate() {
            let x = &x[i * image..(i + 1) * image];
            let residual = residual
                .as_deref()
                .map(|r| &r[i * f * map..(i + 1) * f * map]);
            let slots = slots.iter_mut().map(|(a, b)| (&mut **a, &mut **b));
            if let Some(winos) = &shared {
                // Winograd parts transform the image once, together.
                let mut outs = Vec::with_capacity(parts.len());
                let mut rest = &mut record[..];
                for part in parts {
                    let (mine, more) = rest.split_at_mut(part.filters.len() * map);
                    outs.push(mine);
                    rest = more;
                }
                let channels = |p: &ConvPart| p.filters.start * map..p.filters.end * map;
                let biases: Vec<&[f32]> = parts
                    .iter()
                    .map(|p| &self.bias[p.filters.clone()])
                    .collect();
                let residuals: Vec<Option<&[f32]>> = parts
                    .iter()
                    .map(|p| residual.map(|r| &r[channels(p)]))
                    .collect();
                let slots = slots.collect();
                Winograd::run_shared(&team, winos, x, &biases, &residuals, relu, slots, outs);
                continue;
            }
            let mut slots: Vec<_> = slots.collect();
            // Direct parts read one padded image, which the team's threads fill
            // together, where each part would fill a whole copy of its own.
            let mut shared = None;
            if let Some(direct) = parts[0].kernel.direct() {
                let (buf, _) = slots.swap_remove(0);
                let pieces = direct.fill_parts(buf, team.threads());
                team.run(pieces, |piece| direct.fill_part(x, piece));
                shared = Some(&*buf);
            }
            // Each part writes its channels.
            let mut work = Vec::with_capacity(parts.len());
            let mut rest = &mut record[..];
            let mut slots = slots.into_iter();
            for part in parts {
                let (mine, more) = rest.split_at_mut(part.filters.len() * map);
                rest = more;
                let channels = part.filters.start * map..part.filters.end * map;
                // With a shared image the parts need no slot (empty ones).
                let slot = slots.next().unwrap_or_default();
                work.push((part, mine, residual.map(|r| &r[channels]), slot));
            }
            team.run(work, |(part, out, residual, slot)| {
                let bias = &self.bias[part.filters.clone()];
                match (&part.kernel, shared) {
                    (ConvKernel::Direct(direct, filters), Some(buf)) => {
                        direct.run_filled(buf, filters, bias, relu, out)
                    }
                    (ConvKernel::PooledLanes(direct, filters), Some(buf)) => {
                        direct.run_lanes_filled(buf, filters, bias, relu, out)
                    }
                    _ => part.run(&self.g, x, bias, residual, relu, slot, out),
                }
            });
        }
        self.finish(n, out, residual.as_deref(), in_kernel, relu)
    }

    fn parts(&self) -> usize {
        self.parts.len()
    }

    /// One part's need for the chunk, or every part's for one image, one after another.
    fn scratch(&self, rows: usize) -> ScratchNeed {
        match &self.parts[..] {
            [part] => part.scratch(rows),
            _ => self
                .part_scratch()
                .into_iter()
                .fold([0, 0], |[a, b], [pa, pb]| [a + pa, b + pb]),
        }
    }

    fn param_bytes(&self) -> u64 {
        let packed = |fs: &[PackedFilters]| fs.iter().map(PackedFilters::bytes).sum::<u64>();
        let weights: u64 = self
            .parts
            .iter()
            .map(|p| match &p.kernel {
                ConvKernel::Direct(_, fs) | ConvKernel::Gemm(_, fs) => packed(fs),
                ConvKernel::PooledLanes(_, fs) => fs.bytes(),
                ConvKernel::Winograd(wino) => wino.bytes(),
            })
            .sum();
        weights + self.bias.len() as u64 * 4
    }

    fn describe(&self) -> Option<String> {
        let (isa, algorithm) = match &self.parts[0].kernel {
            ConvKernel::PooledLanes(..) => (
                Isa::Avx512,
                "direct with filters along the lanes, 2x2 max pool as it writes".to_string(),
            ),
            ConvKernel::Direct(_, fs) if self.g.op.max_pool => {
                (fs[0].isa(), "direct, 2x2 max pool as it writes".to_string())
            }
            ConvKernel::Direct(_, fs) => (fs[0].isa(), "direct".to_string()),
            ConvKernel::Gemm(im2col, fs) => (
                fs[0].isa(),
                match im2col.images() {
                    1 => "gemm (im2col, 1 image a pass)".to_string(),
                    n => format!("gemm (im2col, {n} images a pass)"),
                },
            ),
            ConvKernel::Winograd(wino) => (wino.isa(), format!("winograd {}", wino.tile().name())),
        };
        let split = match self.parts.len() {
            1 => String::new(),
            n => format!(", filters split {n} ways over the stage's threads"),
        };
        Some(format!("{algorithm}, {}{split}", isa.name()))
    }
}

impl Conv2d {
    /// The parts' Winograd kernels when the layer is split by filters over Winograd parts that
    /// read the same transformed input ([`Winograd::run_shared`]).
    fn shared_winograd(&self) -> Option<Vec<&Winograd>> {
        let winos: Vec<&Winograd> = self
            .parts
            .iter()
            .map(|p| p.kernel.winograd())
            .collect::<Option<_>>()?;
        let shares = winos.len() > 1 && winos.iter().all(|w| winos[0].shares_input_with(w));
        shares.then_some(winos)
    }

    /// Each part's scratch for one image, in part order.
    fn part_scratch(&self) -> Vec<ScratchNeed> {
        self.parts.iter().map(|p| p.scratch(1)).collect()
    }

    /// The residual (where the kernel did not add it) and the activation (where it did not
    /// apply it), then the tensor.
    fn finish(
        &self,
        n: usize,
        mut out: Vec<f32>,
        residual: Option<&[f32]>,
        in_kernel: bool,
        relu: bool,
    ) -> Tensor {
        if let (Some(r), false) = (residual, in_kernel) {
            out.iter_mut().zip(r.iter()).for_each(|(o, r)| *o += r);
        }
        if !relu {
            // Activations here are elementwise; softmax would act over the last (width) axis.
            apply_activation(self.g.op.activation, &mut out, self.g.output[2]);
        }
        tensor(batched(n, &self.g.output), out)
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
        let c = &self.g.op;
        let x = contiguous(inputs[c.input_index()]);
        let residual = c.residual.map(|i| contiguous(inputs[i]));
        let [ch, h, w] = self.g.input;
        let [f, _, _] = self.g.output;
        let [oh, ow] = self.g.conv_out;
        let n = x.len() / (ch * h * w).max(1);
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
            if let Some(r) = &residual {
                let at = out.len();
                for (s, r) in record.iter_mut().zip(&r[at..]) {
                    *s += *r as f64;
                }
            }
            reference_activation(c.activation, &mut record, ow);
            if c.max_pool {
                record = max_pool_2x2(&record, [oh, ow]);
            }
            out.extend(record.into_iter().map(|v| v as f32));
        }
        tensor(batched(n, &self.g.output), out)
    }

    fn param_bytes(&self) -> u64 {
        (self.weight.len() + self.bias.len()) as u64 * 4
    }
}

/// `maps` (`[k, oh, ow]`) max-pooled over 2×2 blocks with stride 2, an odd last row and column
/// dropped: what the unfolded pool layer computes, for the reference kernel of a convolution
/// the pool was folded into.
fn max_pool_2x2(maps: &[f64], [oh, ow]: [usize; 2]) -> Vec<f64> {
    let mut pooled = Vec::with_capacity(maps.len() / 4);
    for map in maps.chunks_exact(oh * ow) {
        for py in 0..oh / 2 {
            for px in 0..ow / 2 {
                let at = |y: usize, x: usize| map[(2 * py + y) * ow + 2 * px + x];
                pooled.push(at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1)));
            }
        }
    }
    pooled
}

#[cfg(test)]
mod tests {
    use super::filter_parts;

    #[test]
    fn filters_split_into_whole_blocks_as_evenly_as_they_go() {
        // ResNet's layers: halves.
        assert_eq!(filter_parts(64, 1, 2), vec![0..32, 32..64]);
        // Five blocks over two threads: the first part takes the odd block.
        assert_eq!(filter_parts(40, 1, 2), vec![0..24, 24..40]);
        // A ragged tail stays with the last part.
        assert_eq!(filter_parts(20, 1, 2), vec![0..8, 8..20]);
        assert_eq!(filter_parts(64, 1, 3), vec![0..24, 24..48, 48..64]);
        // Fewer blocks than threads: one part a block.
        assert_eq!(filter_parts(16, 1, 4), vec![0..8, 8..16]);
        // Too few filters, one thread, or groups: unsplit.
        assert_eq!(filter_parts(12, 1, 2), vec![0..12]);
        assert_eq!(filter_parts(64, 1, 1), vec![0..64]);
        assert_eq!(filter_parts(64, 2, 2), vec![0..64]);
    }
}
