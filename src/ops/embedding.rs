//! `embedding`: BERT's input embeddings. Each token row becomes the sum of its word's row, its
//! position's row (its index within its own sequence) and the row of token type 0, with the
//! tensor names of PyTorch's `BertEmbeddings` (`word_embeddings.weight`, ...).

use std::sync::Arc;

use super::{
    tensor, AttrDefault, AttrKind, AttrSpec, AttrValue, Attrs, Chunk, KernelKind, Layer, Op,
    OpFamily, Rows, Scratch, ShapeError, Tensor, TensorSpec,
};

#[derive(Debug)]
pub(super) struct EmbeddingFamily;

const fn count(name: &'static str, default: AttrDefault) -> AttrSpec {
    AttrSpec::new(
        name,
        AttrKind::Int {
            min: 1,
            max: 1 << 24,
        },
        default,
    )
}

impl OpFamily for EmbeddingFamily {
    fn names(&self) -> &'static [&'static str] {
        &["embedding"]
    }
    fn attributes(&self) -> &'static [AttrSpec] {
        const ATTRS: &[AttrSpec] = &[
            count(
                "vocab",
                AttrDefault::Required("the vocabulary size (rows of word_embeddings)"),
            ),
            count("hidden", AttrDefault::Required("the embedding width")),
            count("positions", AttrDefault::Value(AttrValue::Int(512))),
            count("token_types", AttrDefault::Value(AttrValue::Int(2))),
        ];
        ATTRS
    }
    fn doc(&self) -> &'static str {
        "`word_embeddings.weight` [vocab, hidden], `position_embeddings.weight` [positions, hidden], `token_type_embeddings.weight` [token_types, hidden]; token ids in, one row per token; word + position (within its record) + token type 0"
    }
    fn configure(&self, _name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(EmbeddingOp {
            vocab: a.int("vocab"),
            hidden: a.int("hidden"),
            positions: a.int("positions"),
            token_types: a.int("token_types"),
        }))
    }
}

#[derive(Debug, Clone, Copy)]
struct EmbeddingOp {
    vocab: usize,
    hidden: usize,
    positions: usize,
    token_types: usize,
}

impl Op for EmbeddingOp {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn rows(&self, inputs: &[Rows]) -> Result<Rows, ShapeError> {
        match inputs[0] {
            Rows::Tokens => Ok(Rows::Tokens),
            Rows::Records => Err(ShapeError::at(
                "inputs",
                "embedding reads token ids, one row per token: give the pipeline `input: {text: ...}`",
            )),
        }
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        match inputs[0] {
            [1] => Ok(vec![self.hidden]),
            other => Err(ShapeError::at(
                "inputs",
                format!("embedding reads one token id per row, found rows of {other:?}"),
            )),
        }
    }
    fn tensors(&self, _inputs: &[&[usize]]) -> Vec<TensorSpec> {
        let h = self.hidden;
        vec![
            TensorSpec::uniform("word_embeddings.weight", vec![self.vocab, h], 1),
            TensorSpec::uniform("position_embeddings.weight", vec![self.positions, h], 1),
            TensorSpec::uniform("token_type_embeddings.weight", vec![self.token_types, h], 1),
        ]
    }
    fn flops(&self, _inputs: &[&[usize]], _output: &[usize], _seq: usize) -> u64 {
        2 * self.hidden as u64
    }
    fn build(
        &self,
        kind: KernelKind,
        _inputs: &[&[usize]],
        _output: &[usize],
        tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        let [word, position, token_type]: [Vec<f32>; 3] =
            tensors.try_into().expect("embedding reads three tensors");
        Box::new(Embedding {
            op: *self,
            kind,
            word,
            position,
            token_type,
        })
    }
}

#[derive(Debug)]
struct Embedding {
    op: EmbeddingOp,
    kind: KernelKind,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
}

impl Layer for Embedding {
    fn forward(&self, inputs: &[&Tensor], chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        let ids = inputs[0];
        let h = self.op.hidden;
        let seqs = chunk.seqs();
        let ids = ids.as_slice().expect("token ids are contiguous");
        let mut out = Vec::with_capacity(ids.len() * h);
        let types = &self.token_type[..h];
        for r in 0..chunk.records {
            for (p, id) in ids[seqs[r]..seqs[r + 1]].iter().enumerate() {
                let id = *id as usize;
                assert!(
                    id < self.op.vocab && p < self.op.positions,
                    "token id {id} at position {p}: the embedding has {} words and {} positions",
                    self.op.vocab,
                    self.op.positions
                );
                let word = &self.word[id * h..(id + 1) * h];
                let pos = &self.position[p * h..(p + 1) * h];
                match self.kind {
                    KernelKind::Fast => {
                        out.extend(word.iter().zip(pos).zip(types).map(|((w, p), t)| w + p + t))
                    }
                    KernelKind::Reference => out.extend(
                        word.iter()
                            .zip(pos)
                            .zip(types)
                            .map(|((w, p), t)| (*w as f64 + *p as f64 + *t as f64) as f32),
                    ),
                }
            }
        }
        tensor(vec![ids.len(), h], out)
    }

    fn param_bytes(&self) -> u64 {
        (self.word.len() + self.position.len() + self.token_type.len()) as u64 * 4
    }
}
