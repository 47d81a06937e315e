//! `attention`: multi-head self-attention within each record's tokens, with the tensor names of
//! PyTorch's `BertSelfAttention` and `BertSelfOutput` (`self.query.weight`, ...,
//! `output.dense.weight`): `softmax(Q Kᵀ / √d) V` per head, heads concatenated, then the output
//! projection. The residual add and layer norm that follow in BERT are ops of their own.
//!
//! Tokens stay packed (`[Σ tokens, hidden]`): the projections run on every token of the chunk at
//! once through the packed dense kernel, and only the scores look at sequence boundaries, one
//! query row at a time, so no padding is ever computed and no per-head buffer is allocated.

use std::sync::Arc;

use super::{
    contiguous, tensor, AttrDefault, AttrKind, AttrSpec, Attrs, Chunk, KernelKind, Layer, Op,
    OpFamily, Rows, Scratch, ScratchNeed, ShapeError, Tensor, TensorSpec,
};
use crate::kernels::math;
use crate::kernels::packed::DenseWeights;

#[derive(Debug)]
pub(super) struct AttentionFamily;

impl OpFamily for AttentionFamily {
    fn names(&self) -> &'static [&'static str] {
        &["attention"]
    }
    fn attributes(&self) -> &'static [AttrSpec] {
        const ATTRS: &[AttrSpec] = &[AttrSpec::new(
            "heads",
            AttrKind::Int {
                min: 1,
                max: 1 << 16,
            },
            AttrDefault::Required("the number of attention heads"),
        )];
        ATTRS
    }
    fn doc(&self) -> &'static str {
        "`self.query`, `self.key`, `self.value`, `output.dense` (each `.weight` [hidden, hidden], `.bias` [hidden]); one row per token; self-attention within each record, no residual"
    }
    fn configure(&self, _name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        let heads = a.int("heads");
        Ok(Arc::new(AttentionOp { heads, of: heads }))
    }
}

/// Attention over `heads` heads of a layer of `of` heads (fewer in a shard, see
/// [`Op::shard`]): the head width is `hidden / of`, and Q, K, V and the context are
/// `heads × width` wide, which is `hidden` unless the layer is sharded.
#[derive(Debug, Clone, Copy)]
struct AttentionOp {
    heads: usize,
    of: usize,
}

impl AttentionOp {
    /// The width of Q, K, V and the context for a hidden width `h`.
    fn inner(&self, h: usize) -> usize {
        h / self.of * self.heads
    }
}

impl Op for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn rows(&self, inputs: &[Rows]) -> Result<Rows, ShapeError> {
        match inputs[0] {
            Rows::Tokens => Ok(Rows::Tokens),
            Rows::Records => Err(ShapeError::at(
                "inputs",
                "attention works within each record's tokens; its input has one row per record",
            )),
        }
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        match inputs[0] {
            [h] if h % self.of == 0 => Ok(vec![*h]),
            [h] => Err(ShapeError::at(
                "heads",
                format!("hidden width {h} is not divisible by {} heads", self.of),
            )),
            other => Err(ShapeError::at(
                "inputs",
                format!("attention needs token rows of [hidden], found {other:?}"),
            )),
        }
    }
    fn tensors(&self, inputs: &[&[usize]]) -> Vec<TensorSpec> {
        let h = inputs[0][0];
        let inner = self.inner(h);
        let mut v = Vec::with_capacity(8);
        for (w, b) in [
            ("self.query.weight", "self.query.bias"),
            ("self.key.weight", "self.key.bias"),
            ("self.value.weight", "self.value.bias"),
        ] {
            v.push(TensorSpec::uniform(w, vec![inner, h], h));
            v.push(TensorSpec::uniform(b, vec![inner], h));
        }
        // PyTorch's fan-in of the output projection is the whole layer's context width.
        v.push(TensorSpec::uniform(
            "output.dense.weight",
            vec![h, inner],
            h,
        ));
        v.push(TensorSpec::uniform("output.dense.bias", vec![h], h));
        v
    }
    fn flops(&self, inputs: &[&[usize]], _output: &[usize], seq: usize) -> u64 {
        let h = inputs[0][0] as u64;
        let inner = self.inner(inputs[0][0]) as u64;
        // Four projections, then scores and the weighted sum against `seq` keys.
        2 * 4 * h * inner + 2 * 2 * inner * seq as u64
    }
    /// A shard computes a part of the heads: its rows of the Q, K and V projections, and its
    /// columns of the output projection, whose partial products the shards' outputs sum to
    /// (the output bias is added by the first shard only).
    fn shard(&self, index: usize, count: usize) -> Result<super::Shard, String> {
        if self.heads != self.of || !self.heads.is_multiple_of(count) {
            return Err(format!(
                "{} heads do not split evenly into {count} shards",
                self.heads
            ));
        }
        use super::TensorSlice::{Cols, Rows, Whole, Zeros};
        let rows = Rows { index, count };
        Ok(super::Shard {
            op: Arc::new(AttentionOp {
                heads: self.heads / count,
                of: self.of,
            }),
            slices: vec![
                rows,
                rows,
                rows,
                rows,
                rows,
                rows,
                Cols { index, count },
                if index == 0 { Whole } else { Zeros },
            ],
            combine: super::add::sum_shards(),
        })
    }
    fn build(
        &self,
        kind: KernelKind,
        inputs: &[&[usize]],
        _output: &[usize],
        tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        let h = inputs[0][0];
        let inner = self.inner(h);
        let shape = Heads {
            heads: self.heads,
            width: h / self.of,
            inner,
            scale: 1.0 / ((h / self.of) as f32).sqrt(),
        };
        let [wq, bq, wk, bk, wv, bv, wo, bo]: [Vec<f32>; 8] =
            tensors.try_into().expect("attention reads eight tensors");
        match kind {
            KernelKind::Fast => {
                // Q, K and V in one product: their weights stacked as one [3·inner, h] matrix.
                let qkv = [wq, wk, wv].concat();
                Box::new(Attention {
                    shape,
                    hidden: h,
                    qkv: DenseWeights::new(qkv, 3 * inner, h),
                    qkv_bias: [bq, bk, bv].concat(),
                    out: DenseWeights::new(wo, h, inner),
                    out_bias: bo,
                })
            }
            KernelKind::Reference => Box::new(AttentionReference {
                shape,
                hidden: h,
                weights: [wq, wk, wv, wo],
                biases: [bq, bk, bv, bo],
            }),
        }
    }
}

/// The heads' geometry.
#[derive(Debug, Clone, Copy)]
struct Heads {
    heads: usize,
    /// Values per head.
    width: usize,
    /// `heads × width`: the width of Q, K, V and the context.
    inner: usize,
    /// 1/√width.
    scale: f32,
}

/// Every record's attention: from `qkv` (`[tokens, 3·inner]`) into `context`
/// (`[tokens, inner]`), in `work` ([`attend_work`] floats; see [`attend_loop`]). On the widest
/// vectors the CPU has.
fn attend(shape: Heads, qkv: &[f32], context: &mut [f32], work: &mut [f32], seqs: &[usize]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::isa().has_avx2_fma() {
        // SAFETY: `isa()` reports AVX2+FMA, or AVX-512 (which needs both), only when the CPU has
        // them.
        unsafe { attend_avx2(shape, qkv, context, work, seqs) };
        return;
    }
    attend_loop::<false>(shape, qkv, context, work, seqs);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(shape: Heads, qkv: &[f32], context: &mut [f32], work: &mut [f32], seqs: &[usize]) {
    attend_loop::<true>(shape, qkv, context, work, seqs);
}

/// `a·b + c`: one fused instruction where the caller enables FMA, else a product and a sum
/// (`mul_add` without the instruction is a call into libm).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// A sequence's scores and keys are laid out this many to a row, zeros past its length, so
/// that the loops over them run in whole vectors.
const SCORE_LANES: usize = 16;

/// Queries whose scores and context are worked out together, sharing each key and value loaded.
const QUERIES: usize = 4;

/// Floats [`attend_loop`] works in for a sequence of at most `tokens`: a row of scores for each
/// of [`QUERIES`] queries and one head's keys transposed, `width` rows of them.
fn attend_work(tokens: usize, width: usize) -> usize {
    tokens.next_multiple_of(SCORE_LANES) * (QUERIES + width)
}

/// Every record's self-attention, head by head: `context` (`[tokens, inner]`) from `qkv`
/// (`[tokens, 3·inner]`), sequences as `seqs` gives them.
///
/// One head's keys are transposed first (`kᵀ`, `width` rows of the sequence's length): a
/// query's scores are then sums of `width` vector multiply-adds along those rows, and its
/// context sums of the values' rows. Both are worked out [`QUERIES`] queries and
/// [`SCORE_LANES`] columns at a time, the sums in registers: eight independent chains of
/// multiply-adds, each key and value loaded once for the four. With a dot product per key (and
/// its horizontal sum), and the context added into memory value by value, attention took a
/// sixth of MiniLM's CPU for a fiftieth of its FLOPs.
#[inline(always)]
fn attend_loop<const FMA: bool>(
    shape: Heads,
    qkv: &[f32],
    context: &mut [f32],
    work: &mut [f32],
    seqs: &[usize],
) {
    let (h, d) = (shape.inner, shape.width);
    for seq in seqs.windows(2) {
        let (start, end) = (seq[0], seq[1]);
        let wide = (end - start).next_multiple_of(SCORE_LANES);
        let (scores, keys) = work[..wide * (QUERIES + d)].split_at_mut(wide * QUERIES);
        for head in 0..shape.heads {
            let k0 = h + head * d;
            for (j, token) in (start..end).enumerate() {
                let k = &qkv[token * 3 * h + k0..][..d];
                for (c, &kc) in k.iter().enumerate() {
                    keys[c * wide + j] = kc;
                }
            }
            for c in 0..d {
                keys[c * wide + end - start..(c + 1) * wide].fill(0.0);
            }
            let at = Sequence {
                shape,
                qkv,
                start,
                end,
                wide,
                head,
            };
            for i0 in (start..end).step_by(QUERIES) {
                match end - i0 {
                    1 => at.queries::<1, FMA>(i0, scores, keys, context),
                    2 => at.queries::<2, FMA>(i0, scores, keys, context),
                    3 => at.queries::<3, FMA>(i0, scores, keys, context),
                    _ => at.queries::<QUERIES, FMA>(i0, scores, keys, context),
                }
            }
        }
    }
}

/// One head of one sequence (tokens `start..end` of `qkv`), scores laid out `wide` apart.
#[derive(Clone, Copy)]
struct Sequence<'a> {
    shape: Heads,
    qkv: &'a [f32],
    start: usize,
    end: usize,
    wide: usize,
    head: usize,
}

impl Sequence<'_> {
    /// The context of queries `i0..i0 + Q`, written to their rows of `context`.
    #[inline(always)]
    fn queries<const Q: usize, const FMA: bool>(
        &self,
        i0: usize,
        scores: &mut [f32],
        keys: &[f32],
        context: &mut [f32],
    ) {
        const L: usize = SCORE_LANES;
        let Sequence {
            shape, qkv, wide, ..
        } = *self;
        let (h, d, n) = (shape.inner, shape.width, self.end - self.start);
        let (q0, v0) = (self.head * d, 2 * h + self.head * d);
        let q: [&[f32]; Q] = std::array::from_fn(|r| &qkv[(i0 + r) * 3 * h + q0..][..d]);
        for b in 0..wide / L {
            let mut acc = [[0.0f32; L]; Q];
            for (c, kc) in keys.chunks_exact(wide).take(d).enumerate() {
                let k = &kc[b * L..][..L];
                for (acc, q) in acc.iter_mut().zip(&q) {
                    let qc = q[c];
                    for l in 0..L {
                        acc[l] = madd::<FMA>(qc, k[l], acc[l]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                scores[r * wide + b * L..][..L].copy_from_slice(acc);
            }
        }
        for row in scores.chunks_exact_mut(wide).take(Q) {
            let row = &mut row[..n];
            row.iter_mut().for_each(|s| *s *= shape.scale);
            math::softmax(row);
        }
        let value =
            |j: usize, from: usize, len: usize| &qkv[(self.start + j) * 3 * h + v0 + from..][..len];
        for b in 0..d / L {
            let mut acc = [[0.0f32; L]; Q];
            for j in 0..n {
                let v = value(j, b * L, L);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let p = scores[r * wide + j];
                    for l in 0..L {
                        acc[l] = madd::<FMA>(p, v[l], acc[l]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                context[(i0 + r) * h + q0 + b * L..][..L].copy_from_slice(acc);
            }
        }
        // A width that is not a multiple of the block (none of BERT's): one value at a time.
        let done = d / L * L;
        for r in 0..Q {
            let ctx = &mut context[(i0 + r) * h + q0 + done..][..d - done];
            ctx.fill(0.0);
            for j in 0..n {
                let p = scores[r * wide + j];
                for (c, &v) in ctx.iter_mut().zip(value(j, done, d - done)) {
                    *c = madd::<FMA>(p, v, *c);
                }
            }
        }
    }
}

#[derive(Debug)]
struct Attention {
    shape: Heads,
    hidden: usize,
    /// `[Wq; Wk; Wv]`, packed.
    qkv: DenseWeights,
    qkv_bias: Vec<f32>,
    out: DenseWeights,
    out_bias: Vec<f32>,
}

impl Layer for Attention {
    fn forward(&self, inputs: &[&Tensor], chunk: &Chunk, scratch: &mut Scratch) -> Tensor {
        let x = contiguous(inputs[0]);
        let (h, inner) = (self.hidden, self.shape.inner);
        let tokens = x.len() / h;
        let seqs = chunk.seqs();
        let mut out = scratch.output(tokens * h);
        let (qkv, rest) = scratch.slots(self.scratch(tokens));
        // Every token's Q, K and V at once: [tokens, 3·inner].
        self.qkv.matmul_bias(tokens, &x, &self.qkv_bias, qkv);
        let (context, work) = rest.split_at_mut(tokens * inner);
        attend(self.shape, qkv, context, work, &seqs[..=chunk.records]);
        self.out
            .matmul_bias(tokens, context, &self.out_bias, &mut out);
        tensor(vec![tokens, h], out)
    }

    fn scratch(&self, rows: usize) -> ScratchNeed {
        // Q, K and V of every token; the heads' context of every token, and the work of one
        // sequence (at most every token of the chunk).
        [
            rows * 3 * self.shape.inner,
            rows * self.shape.inner + attend_work(rows, self.shape.width),
        ]
    }

    fn param_bytes(&self) -> u64 {
        self.qkv.bytes() + self.out.bytes() + (self.qkv_bias.len() + self.out_bias.len()) as u64 * 4
    }
}

/// The reference: for each record and head, the textbook formula in f64 from the unpacked
/// weights, full score matrix and all.
#[derive(Debug)]
struct AttentionReference {
    shape: Heads,
    hidden: usize,
    weights: [Vec<f32>; 4],
    biases: [Vec<f32>; 4],
}

impl AttentionReference {
    /// `x · Wᵀ + b` for rows of `x` (`n_in` wide) into `n_out` values each, in f64.
    fn project(&self, which: usize, x: &[f64], n_in: usize, n_out: usize) -> Vec<f64> {
        let (w, b) = (&self.weights[which], &self.biases[which]);
        x.chunks_exact(n_in)
            .flat_map(|row| {
                (0..n_out).map(move |o| {
                    b[o] as f64
                        + row
                            .iter()
                            .zip(&w[o * n_in..(o + 1) * n_in])
                            .map(|(x, w)| x * *w as f64)
                            .sum::<f64>()
                })
            })
            .collect()
    }
}

impl Layer for AttentionReference {
    fn forward(&self, inputs: &[&Tensor], chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let (hidden, h, d) = (self.hidden, self.shape.inner, self.shape.width);
        let x: Vec<f64> = contiguous(inputs[0]).iter().map(|v| *v as f64).collect();
        let tokens = x.len() / hidden;
        let (q, k, v) = (
            self.project(0, &x, hidden, h),
            self.project(1, &x, hidden, h),
            self.project(2, &x, hidden, h),
        );
        let mut context = vec![0.0f64; tokens * h];
        let seqs = chunk.seqs();
        for r in 0..chunk.records {
            let (start, end) = (seqs[r], seqs[r + 1]);
            for head in 0..self.shape.heads {
                let at = |m: &[f64], t: usize, c: usize| m[t * h + head * d + c];
                for i in start..end {
                    let scores: Vec<f64> = (start..end)
                        .map(|j| {
                            (0..d).map(|c| at(&q, i, c) * at(&k, j, c)).sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    for (j, s) in (start..end).zip(&scores) {
                        let p = (s - max).exp() / total;
                        for c in 0..d {
                            context[i * h + head * d + c] += p * at(&v, j, c);
                        }
                    }
                }
            }
        }
        let out = self.project(3, &context, h, hidden);
        tensor(
            vec![tokens, hidden],
            out.into_iter().map(|v| v as f32).collect(),
        )
    }

    fn param_bytes(&self) -> u64 {
        let w: usize = self.weights.iter().chain(&self.biases).map(Vec::len).sum();
        w as u64 * 4
    }
}
