//! The ops: everything subpass knows about each kind of layer, one family per file, and the
//! registry that lists the families.
//!
//! An [`OpFamily`] is what a pipeline file names (`op: dense`): its attributes (names, kinds,
//! defaults, ranges: the loader parses and locates errors from this table alone), how many inputs
//! it takes, and how a configured [`Op`] is made from parsed attributes. An [`Op`] owns its output
//! shape, the tensors it reads (PyTorch names and layouts, and how `init` fills them), its FLOPs,
//! and builds its kernels: a fast [`Layer`] and a plain reference one (straight loops, f64 sums),
//! which `verify` runs as the monolithic side.
//!
//! A [`Layer`] sees batched tensors (`[N, ...record shape]`, row-major) and nothing else: it knows
//! nothing of stages, channels or chunks, so the same objects run inside a stage actor and in the
//! single-threaded monolithic pass.
//!
//! Adding an op: a new file here implementing [`OpFamily`] and [`Op`], and one line in
//! [`FAMILIES`]. The README's op table is generated from the registry ([`markdown_table`]) and a
//! test keeps the two equal.
//!
//! Records of varying length (token sequences) are not padded to a common shape: a value's rows
//! are either records or the tokens of every record packed one after another ([`Rows`]), its
//! shape is per row, and the chunk's offsets ([`Chunk::seqs`]) say where each record's tokens
//! start. Ops say what rows they take and give ([`Op::rows`]), and answer [`Op::flops`] for a
//! given sequence length, which is how attention's quadratic cost shows.

mod activation;
mod add;
mod attention;
mod attrs;
mod batchnorm;
mod concat;
mod conv2d;
mod dense;
mod embedding;
mod flatten;
mod global_avgpool2d;
mod identity;
mod l2_normalize;
mod layernorm;
mod mean_pool;
mod pool;

use std::fmt::Debug;
use std::sync::Arc;

use ndarray::ArrayD;

pub use activation::{apply_activation, Activation};
pub use attrs::{AttrDefault, AttrKind, AttrSpec, AttrValue, Attrs};

pub use crate::kernels::team::Team;
use crate::weights::InitKind;

/// A batched activation: axis 0 is the record within the chunk.
pub type Tensor = ArrayD<f32>;

/// Every op family, in the order the README lists them.
pub static FAMILIES: &[&dyn OpFamily] = &[
    &dense::DenseFamily,
    &conv2d::Conv2dFamily,
    &pool::PoolFamily,
    &global_avgpool2d::GlobalAvgPool2dFamily,
    &flatten::FlattenFamily,
    &batchnorm::BatchNormFamily,
    &layernorm::LayerNormFamily,
    &activation::ActivationFamily,
    &identity::IdentityFamily,
    &add::AddFamily,
    &concat::ConcatFamily,
    &embedding::EmbeddingFamily,
    &attention::AttentionFamily,
    &mean_pool::MeanPoolFamily,
    &l2_normalize::L2NormalizeFamily,
];

/// The family that answers to `name`, if any.
pub fn family(name: &str) -> Option<&'static dyn OpFamily> {
    FAMILIES.iter().copied().find(|f| f.names().contains(&name))
}

/// Every op name a pipeline file may use, aliases included.
pub fn all_names() -> Vec<&'static str> {
    FAMILIES
        .iter()
        .flat_map(|f| f.names().iter().copied())
        .collect()
}

/// How many inputs an op reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    One,
    /// Two or more, of compatible shapes (`add`, `concat`).
    Many,
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::One => n == 1,
            Arity::Many => n >= 2,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Arity::One => "exactly 1",
            Arity::Many => "2 or more",
        }
    }
}

/// What axis 0 of a value's batched tensor counts: records, or the tokens of variable-length
/// records packed one after another (`[Σ tokens, ...]`, no padding), with the chunk's sequence
/// offsets telling where each record's tokens start ([`Chunk::seqs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    Records,
    Tokens,
}

impl Rows {
    pub fn describe(self) -> &'static str {
        match self {
            Rows::Records => "one row per record",
            Rows::Tokens => "one row per token",
        }
    }
}

/// What a kernel needs to know of the chunk beyond its input tensors.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// Records in the chunk.
    pub records: usize,
    /// For token rows: `records + 1` offsets, record `r` owning rows `seqs[r]..seqs[r + 1]`.
    pub seqs: Option<&'a [usize]>,
}

impl Chunk<'_> {
    /// A chunk of `records` records and no token rows.
    pub fn records(records: usize) -> Chunk<'static> {
        Chunk {
            records,
            seqs: None,
        }
    }

    /// The sequence offsets, which an op on token rows can rely on: the plan only builds such
    /// ops on values that have them.
    pub fn seqs(&self) -> &[usize] {
        self.seqs
            .expect("token rows come with sequence offsets (checked when the plan was built)")
    }
}

/// Why an op's attributes or inputs do not fit, and which of the layer's keys it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeError {
    /// The layer key to point at (`kernel`, `inputs`, ...).
    pub key: &'static str,
    pub message: String,
}

impl ShapeError {
    pub fn at(key: &'static str, message: impl Into<String>) -> ShapeError {
        ShapeError {
            key,
            message: message.into(),
        }
    }
}

/// What a pipeline file names with `op:`.
pub trait OpFamily: Sync {
    /// The names it answers to; the first is canonical, the others are aliases.
    fn names(&self) -> &'static [&'static str];
    /// The attributes a layer of this op may give, beyond `name`, `op`, `inputs` and `params`.
    fn attributes(&self) -> &'static [AttrSpec] {
        &[]
    }
    fn arity(&self) -> Arity {
        Arity::One
    }
    /// The README's "tensors and notes" column.
    fn doc(&self) -> &'static str;
    /// Make the op from its attributes (all present: defaults are filled in from
    /// [`Self::attributes`]); `name` is the name the file used. Checks that relate attributes
    /// to each other happen here.
    fn configure(&self, name: &str, attrs: &Attrs) -> Result<Arc<dyn Op>, ShapeError>;
}

/// A parameter tensor an op reads: its name suffix (`weight`), PyTorch shape and how `init`
/// fills it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub suffix: &'static str,
    pub shape: Vec<usize>,
    pub init: InitKind,
}

impl TensorSpec {
    /// A weight or bias PyTorch initialises uniformly in ±1/√fan_in.
    pub fn uniform(suffix: &'static str, shape: Vec<usize>, fan_in: usize) -> TensorSpec {
        TensorSpec {
            suffix,
            shape,
            init: InitKind::Uniform { fan_in },
        }
    }

    pub fn constant(suffix: &'static str, shape: Vec<usize>, value: f32) -> TensorSpec {
        TensorSpec {
            suffix,
            shape,
            init: InitKind::Constant(value),
        }
    }
}

/// Which implementation of an op to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// The fastest this CPU runs (see [`crate::kernels::isa`]).
    Fast,
    /// Straight loops from the op's definition, f64 sums, no SIMD or packing: what `verify`
    /// compares the fast kernels with.
    Reference,
}

/// One configured op: a layer's `op` and attributes.
pub trait Op: Debug + Send + Sync {
    /// The canonical op name, for messages and tables.
    fn name(&self) -> &'static str;
    /// The per-record output shape over inputs of these shapes, or why they do not fit.
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError>;
    /// The tensors the op reads, in PyTorch layout; the inputs already fit.
    fn tensors(&self, _inputs: &[&[usize]]) -> Vec<TensorSpec> {
        Vec::new()
    }
    /// What the output's rows are, given the inputs': by default an op needs one row per
    /// record (convolutions, pools, reshapes); ops that act row by row on the last axis
    /// (dense, layernorm, activations, add) override it with [`same_rows`] and so also act per
    /// token.
    fn rows(&self, inputs: &[Rows]) -> Result<Rows, ShapeError> {
        match inputs.iter().position(|r| *r != Rows::Records) {
            None => Ok(Rows::Records),
            Some(i) => Err(ShapeError::at(
                "inputs",
                format!(
                    "{} needs one row per record, but input {i} has one row per token (pool the tokens first, e.g. with mean_pool)",
                    self.name()
                ),
            )),
        }
    }
    /// Floating-point operations per row of the output (per record, or per token for token
    /// rows; a multiply-add counts 2). Ops whose cost per token grows with the sequence's
    /// length (attention) answer for sequences of `seq` tokens; the others ignore it.
    fn flops(&self, inputs: &[&[usize]], output: &[usize], seq: usize) -> u64;
    /// Build a kernel. `tensors` come in the order [`Self::tensors`] lists them, as f32.
    fn build(
        &self,
        kind: KernelKind,
        inputs: &[&[usize]],
        output: &[usize],
        tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer>;
    /// The output is the input itself (identity, dropout): the graph shares the tensor instead
    /// of running a kernel that would copy it.
    fn passes_through(&self) -> bool {
        false
    }
    /// Shard `index` of `count`: an op over a disjoint part of this one's output units
    /// (filters, heads), whose tensors are slices of this one's, and the op that combines the
    /// `count` shards' outputs into exactly this op's output (`shards: k` on a layer, see
    /// [`Shard`]). `Err` says why this op cannot be split so.
    fn shard(&self, _index: usize, _count: usize) -> Result<Shard, String> {
        Err(format!(
            "`{}` layers cannot be sharded (dense, conv2d and attention can)",
            self.name()
        ))
    }
    /// Name suffixes of the buffers PyTorch's module keeps beside the tensors and inference
    /// never reads (batch norm's `num_batches_tracked`, an int64 scalar): a weights file may
    /// hold them or not, and `export` writes them so that PyTorch's strict `load_state_dict`
    /// accepts its file.
    fn buffers(&self) -> &'static [&'static str] {
        &[]
    }
    /// For an op that is `y = x · scale[c] + shift[c]` over the channels (axis 0 of the record)
    /// and nothing else (batch norm at inference): that map, from its tensors (in the order
    /// [`Self::tensors`] lists them).
    fn channel_affine(&self, _tensors: &[Vec<f32>]) -> Option<ChannelAffine> {
        None
    }
    /// For an activation op applied element by element (`relu`, `tanh`, ...; not `softmax`):
    /// which one, so that the graph can fuse it into the op before it ([`Self::with_activation`]).
    fn elementwise_activation(&self) -> Option<Activation> {
        None
    }
    /// This op as it runs on chunks of `batch` records in a stage of `threads` threads, where
    /// its kernel depends on that (a convolution's Winograd tile size, its split by filters);
    /// `None` where nothing changes (the default). The graph calls it with the pipeline's batch
    /// size and the stage's `threads` before it builds the kernels.
    fn for_stage(&self, _batch: usize, _threads: usize) -> Option<Arc<dyn Op>> {
        None
    }
    /// This op followed by the sum with another value of its output's shape (a residual
    /// connection), as one op whose layer reads two values: the residual at input `at`, this
    /// op's own input at the other. `None` where it cannot (the default); a convolution adds it
    /// as its kernel writes the output, before its activation, so it must have none yet.
    fn with_residual(&self, _at: usize) -> Option<Arc<dyn Op>> {
        None
    }
    /// This op with `activation` applied to its output as part of it, when it has none of its
    /// own (a convolution: ReLU as its kernel writes the output); `None` where it cannot.
    fn with_activation(&self, _activation: Activation) -> Option<Arc<dyn Op>> {
        None
    }
    /// For a max pool of 2×2 windows with stride 2 and no padding: true, so that the graph can
    /// fold the op before it into it ([`Self::with_max_pool`]).
    fn is_max_pool_2x2(&self) -> bool {
        false
    }
    /// This op followed by a 2×2 stride-2 max pool over its output (floor mode), as one op over
    /// inputs of `inputs`' shapes whose output is the pool's; `None` where it cannot (the
    /// default). A convolution writes only the maxima as its kernel runs, so its full-size
    /// output is never stored and the pool needs no pass of its own.
    fn with_max_pool(&self, _inputs: &[&[usize]]) -> Option<Arc<dyn Op>> {
        None
    }
    /// For a reshape of the record into one axis in row-major order (`flatten`): true, so that
    /// the graph can fold it into the dense layer that alone reads it ([`Self::with_flat_input`]).
    fn is_flatten(&self) -> bool {
        false
    }
    /// For a concatenation along one axis of the record: that axis, for records of `rank` axes.
    fn concat_axis(&self, _rank: usize) -> Option<usize> {
        None
    }
    /// This op reading each record of its inputs as one row of values: the record's values in
    /// row-major order, input after input (what a `flatten`, and a concat on the records' first
    /// axis before it, make), with no copy made to join or reshape them; `None` where it cannot
    /// (the default). A dense layer sums one product per input, each with its weight columns.
    fn with_flat_input(&self) -> Option<Arc<dyn Op>> {
        None
    }
    /// Whether a per-channel affine map applied to this op's output can be folded into the op
    /// itself ([`Self::fold_channel_affine`]): true for a convolution with no activation,
    /// whose output channels are its filters.
    fn folds_channel_affine(&self) -> bool {
        false
    }
    /// The op and tensors that compute this op followed by `affine` over its output channels,
    /// as one op; the graph builds its kernels from them in place of `self` and `tensors`.
    /// Called only where [`Self::folds_channel_affine`] is true.
    fn fold_channel_affine(
        &self,
        _tensors: Vec<Vec<f32>>,
        _affine: &ChannelAffine,
    ) -> (Arc<dyn Op>, Vec<Vec<f32>>) {
        unreachable!(
            "{} does not fold a channel affine map (folds_channel_affine is false)",
            self.name()
        )
    }
}

/// One shard of a layer split by `shards: k`.
#[derive(Debug, Clone)]
pub struct Shard {
    /// The op the shard runs.
    pub op: Arc<dyn Op>,
    /// How each of the shard op's tensors (in [`Op::tensors`] order) derives from the unsplit
    /// op's tensor at the same position: the weights a user has stay whole in the file.
    pub slices: Vec<TensorSlice>,
    /// The op that joins the `count` shards' outputs, in shard order, into the unsplit output.
    pub combine: Arc<dyn Op>,
}

/// Part `index` of `count` of `n` items: `[index·n/count, (index+1)·n/count)`, so parts differ
/// by at most one and cover `0..n`.
pub fn part(n: usize, index: usize, count: usize) -> std::ops::Range<usize> {
    index * n / count..(index + 1) * n / count
}

/// Which part of the unsplit layer's tensor a shard's tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorSlice {
    /// Part `index` of `count` along the first axis (output units, filters, heads).
    Rows { index: usize, count: usize },
    /// Part `index` of `count` along the second axis of a matrix (a projection's inputs).
    Cols { index: usize, count: usize },
    /// The whole tensor.
    Whole,
    /// Zeros of the whole tensor's shape (a bias that only one of summed shards adds).
    Zeros,
}

impl TensorSlice {
    /// Cut `full` (of shape `shape`) to this slice; returns the values and their shape. Takes
    /// the tensor by value so that the whole of it, an unsplit layer's case, is not copied
    /// (a copy of the MLP's 7.4 MiB was an eighth of `subpass run`'s start-up).
    pub fn apply(self, full: Vec<f32>, shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
        let rows = shape.first().copied().unwrap_or(1);
        let inner: usize = shape.iter().skip(1).product();
        match self {
            TensorSlice::Whole => (full, shape.to_vec()),
            TensorSlice::Zeros => (vec![0.0; full.len()], shape.to_vec()),
            TensorSlice::Rows { index, count } => {
                let r = part(rows, index, count);
                let mut s = shape.to_vec();
                if let Some(first) = s.first_mut() {
                    *first = r.len();
                }
                (full[r.start * inner..r.end * inner].to_vec(), s)
            }
            TensorSlice::Cols { index, count } => {
                let cols = shape.get(1).copied().unwrap_or(1);
                let c = part(cols, index, count);
                let values = full
                    .chunks(cols.max(1))
                    .flat_map(|row| row[c.clone()].iter().copied())
                    .collect();
                (values, vec![rows, c.len()])
            }
        }
    }
}

/// `y = x · scale[c] + shift[c]` per channel `c`, in f64 so that folding it into a convolution's
/// weights rounds once, at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelAffine {
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
}

/// Reusable buffers a worker keeps from chunk to chunk, so the hot path does not allocate them
/// again. Each layer says how many floats it needs in each slot ([`Layer::scratch`]); a stage's
/// worker holds, per slot, the largest need of its layers, which is what the plan prints.
/// It also carries the worker's [`Team`]: how many threads a layer may spread one chunk over,
/// and the storage of the chunk's activations already dropped, for [`Scratch::output`].
#[derive(Debug, Default)]
pub struct Scratch {
    slots: [Vec<f32>; SCRATCH_SLOTS],
    team: Team,
    /// Outputs of the worker's layers that no layer reads any more, kept from chunk to chunk
    /// to be written over ([`Scratch::output`], [`Scratch::recycle`]). Each holds exactly its
    /// length, so a recycled output is no bigger than the one it stands for.
    spare: Vec<Vec<f32>>,
}

/// Spare outputs a worker keeps, at most: more than ResNet-18's live activations at once.
const SPARE_BUFFERS: usize = 16;

/// How many independent scratch buffers a layer may use at once.
pub const SCRATCH_SLOTS: usize = 2;

/// Floats a layer needs in each scratch slot for one chunk.
pub type ScratchNeed = [usize; SCRATCH_SLOTS];

impl Scratch {
    /// Empty buffers for a worker that runs on `team`.
    pub fn for_team(team: Team) -> Scratch {
        Scratch {
            slots: Default::default(),
            team,
            spare: Vec::new(),
        }
    }

    pub fn team(&self) -> Team {
        self.team
    }

    /// Both slots, each at least as long as asked. They grow to exactly the length asked (never
    /// doubled, as `Vec` growth would), so what a worker holds is what the plan counted. Their
    /// contents are whatever the last layer left: callers write before they read.
    pub fn slots(&mut self, need: ScratchNeed) -> (&mut [f32], &mut [f32]) {
        for (slot, &len) in self.slots.iter_mut().zip(&need) {
            if slot.len() < len {
                slot.reserve_exact(len - slot.len());
                slot.resize(len, 0.0);
            }
        }
        let [a, b] = &mut self.slots;
        (&mut a[..need[0]], &mut b[..need[1]])
    }

    /// `len` floats of unspecified values, for an op that writes every one of them: a dropped
    /// output of exactly that length where there is one, else fresh zeros. Reusing one saves
    /// zeroing the output, a pass over memory the kernel then writes again: for ResNet-18, 9 MB
    /// an image, at batch 1 on the stage's thread while its team waits.
    ///
    /// Why this stays within the memory bound, which counts a stage's peak live set at the
    /// full batch (`P`: its inputs and its layers' outputs still live, at the layer where they
    /// hold the most): call `M` what the spare outputs and the chunk's live outputs hold, and
    /// `I` what its inputs still alive hold. As a chunk starts, the worker keeps at most `P`
    /// less a full chunk's inputs ([`Scratch::keep_at_most`]), so `I + M <= P`. Taking a spare
    /// or recycling a dropped output leaves `M` as it is, and dropping an input or sending an
    /// output on only lowers a side. A fresh allocation first gives back at least as much of
    /// the spare list, or all of it: `M` does not grow, or becomes the live outputs alone, and
    /// `I` plus those is at most `P` by its definition.
    pub fn output(&mut self, len: usize) -> Vec<f32> {
        if let Some(i) = self.spare.iter().position(|v| v.len() == len) {
            return self.spare.swap_remove(i);
        }
        let mut given_back = 0;
        while given_back < len {
            match self.spare.pop() {
                Some(v) => given_back += v.capacity(),
                None => break,
            }
        }
        vec![0.0; len]
    }

    /// Give back spare outputs until they hold at most `floats`. A stage's worker calls it as
    /// each chunk starts, with its peak live set less its inputs ([`Scratch::output`] says
    /// why).
    pub fn keep_at_most(&mut self, floats: usize) {
        let mut held = self.spare_floats();
        while held > floats {
            match self.spare.pop() {
                Some(v) => held -= v.capacity(),
                None => break,
            }
        }
    }

    /// Keep the storage of `value`, an output of one of this worker's layers that no layer
    /// reads any more, for [`Scratch::output`]: if nothing else holds the tensor (one also
    /// sent on to another stage is not kept), it holds exactly its length, and the spare list
    /// is not full.
    pub fn recycle(&mut self, value: std::sync::Arc<Tensor>) {
        if self.spare.len() >= SPARE_BUFFERS {
            return;
        }
        if let Ok(t) = std::sync::Arc::try_unwrap(value) {
            let (v, _) = t.into_raw_vec_and_offset();
            if !v.is_empty() && v.capacity() == v.len() {
                self.spare.push(v);
            }
        }
    }

    /// Floats the spare outputs hold.
    pub fn spare_floats(&self) -> usize {
        self.spare.iter().map(Vec::capacity).sum()
    }

    /// Where each spare output's storage is, in the order kept.
    #[cfg(test)]
    pub(crate) fn spare_ptrs(&self) -> Vec<*const f32> {
        self.spare.iter().map(|v| v.as_ptr()).collect()
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.capacity() * 4).sum()
    }
}

/// One op with its weights, ready to run.
pub trait Layer: Send + Sync + Debug {
    /// Compute the layer over a batch. Input shapes were checked when the plan was built.
    fn forward(&self, inputs: &[&Tensor], chunk: &Chunk, scratch: &mut Scratch) -> Tensor;
    /// Scratch floats per slot for a chunk of `rows` records: everything the kernel needs beyond
    /// its inputs and its output.
    fn scratch(&self, _rows: usize) -> ScratchNeed {
        [0; SCRATCH_SLOTS]
    }
    /// Bytes of parameters the kernel holds, in its own layout (packing and padding included).
    fn param_bytes(&self) -> u64 {
        0
    }
    /// Which algorithm and instruction set the kernel runs, for layers that choose among
    /// several (`validate` prints it); `None` for the others.
    fn describe(&self) -> Option<String> {
        None
    }
    /// How many parts of each chunk this layer runs at once on its stage's [`Team`] (a
    /// convolution split by filters); 1 for a layer that runs on one thread.
    fn parts(&self) -> usize {
        1
    }
}

/// [`Op::rows`] for ops that act row by row: the output has the rows of the inputs, which must
/// agree.
pub fn same_rows(name: &str, inputs: &[Rows]) -> Result<Rows, ShapeError> {
    let first = inputs[0];
    match inputs.iter().position(|r| *r != first) {
        None => Ok(first),
        Some(i) => Err(ShapeError::at(
            "inputs",
            format!(
                "{name} needs inputs with the same rows: input 0 has {}, input {i} {}",
                first.describe(),
                inputs[i].describe()
            ),
        )),
    }
}

/// The README's op table, generated from the registry.
pub fn markdown_table() -> String {
    let mut out = String::from("| op | inputs | attributes (default) | tensors and notes |\n");
    out.push_str("| --- | --- | --- | --- |\n");
    for f in FAMILIES {
        let names: Vec<String> = f.names().iter().map(|n| format!("`{n}`")).collect();
        let attrs: Vec<String> = f.attributes().iter().map(AttrSpec::describe).collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            names.join(", "),
            f.arity().describe(),
            attrs.join(", "),
            f.doc()
        ));
    }
    out
}

/// The kernel each layer runs, for the layers that choose among several (convolutions: the
/// algorithm and instruction set): what `validate` prints after the plan. Empty if no layer
/// chooses.
pub fn kernel_table<'a>(layers: impl IntoIterator<Item = (&'a str, &'a dyn Layer)>) -> String {
    let rows: Vec<(&str, String)> = layers
        .into_iter()
        .filter_map(|(name, layer)| Some((name, layer.describe()?)))
        .collect();
    let Some(width) = rows.iter().map(|(n, _)| n.len()).max() else {
        return String::new();
    };
    let mut out = format!(
        "\nkernels (instruction set {}; `SUBPASS_KERNELS=avx2` or `portable` caps it, `algorithm:` on a layer forces one):\n",
        crate::kernels::isa().name()
    );
    for (name, kernel) in rows {
        out.push_str(&format!("  {name:width$}  {kernel}\n"));
    }
    out
}

/// Shared by the ops' reference kernels: a tensor from its shape and values.
fn tensor(shape: Vec<usize>, values: Vec<f32>) -> Tensor {
    Tensor::from_shape_vec(ndarray::IxDyn(&shape), values).expect("output shape and values agree")
}

/// `[n, ...shape]`: the batch axis in front of a per-record shape.
fn batched(n: usize, shape: &[usize]) -> Vec<usize> {
    std::iter::once(n).chain(shape.iter().copied()).collect()
}

/// An input as one contiguous row-major slice (a copy only if it is not laid out that way).
fn contiguous(t: &Tensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.iter().copied().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_are_unique_across_families() {
        let names = all_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{names:?}");
    }

    #[test]
    fn scratch_grows_to_exactly_what_is_asked() {
        let mut s = Scratch::default();
        s.slots([100, 0]);
        s.slots([150, 7]);
        assert_eq!(s.held_bytes(), (150 + 7) * 4);
    }

    /// A dropped output is reused for the next output of its length, as it is (no zeroing);
    /// and over chunks of outputs whose sizes change (a full chunk, a short one, full again,
    /// in a chain and a residual pattern), the input, the spare and the live outputs together
    /// never hold more than the stage's peak live set at the full batch, which is what the
    /// memory bound counts.
    #[test]
    fn spare_outputs_are_reused_within_the_bound() {
        let mut s = Scratch::default();
        let first = s.output(8);
        let ptr = first.as_ptr();
        s.recycle(std::sync::Arc::new(tensor(vec![8], first)));
        let again = s.output(8);
        assert_eq!(again.as_ptr(), ptr, "the dropped output is taken back");
        let shared = std::sync::Arc::new(tensor(vec![8], again));
        let _other_holder = shared.clone();
        s.recycle(shared);
        assert_eq!(s.spare_floats(), 0, "a tensor held elsewhere is not kept");

        // Per chunk: an input dropped after the first layer, and layers of these output sizes
        // at the full batch, each output dropped after the layer listed with it (a residual's
        // input two layers on; three read by a last join); the last output leaves the stage.
        // Sizes scale with the chunk.
        let input = 250usize;
        let layers: [(usize, &[usize]); 7] = [
            (300, &[]),
            (80, &[]),
            (300, &[0]),
            (80, &[1]),
            (40, &[]),
            (40, &[]),
            (10, &[2, 3, 4, 5]),
        ];
        let mut peak = 0;
        let mut live_sum = input;
        for (at, (n, frees)) in layers.iter().enumerate() {
            live_sum += n;
            peak = peak.max(live_sum);
            live_sum -= frees.iter().map(|&f| layers[f].0).sum::<usize>();
            if at == 0 {
                live_sum -= input;
            }
        }
        // Thirds of the full batch: full, full, a third, full, two thirds, full.
        for scale in [3, 3, 1, 3, 2, 3] {
            s.keep_at_most(peak - input);
            let mut input_held = input * scale / 3;
            let mut live: Vec<Option<Vec<f32>>> = Vec::new();
            for (at, (n, frees)) in layers.iter().enumerate() {
                live.push(Some(s.output(n * scale / 3)));
                let held = input_held + live.iter().flatten().map(Vec::capacity).sum::<usize>();
                assert!(
                    held + s.spare_floats() <= peak,
                    "layer {at}: {held} + spare > {peak}"
                );
                input_held = 0;
                for &f in *frees {
                    let freed = live[f].take().unwrap();
                    s.recycle(std::sync::Arc::new(tensor(vec![freed.len()], freed)));
                }
            }
        }
    }
}
