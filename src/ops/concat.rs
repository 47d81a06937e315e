//! `concat`: two or more values joined along one axis of the record.

use std::sync::Arc;

use super::{
    contiguous, tensor, Arity, AttrDefault, AttrKind, AttrSpec, AttrValue, Attrs, Chunk,
    KernelKind, Layer, Op, OpFamily, Scratch, ShapeError, Tensor,
};

#[derive(Debug)]
pub(super) struct ConcatFamily;

impl OpFamily for ConcatFamily {
    fn names(&self) -> &'static [&'static str] {
        &["concat"]
    }
    fn attributes(&self) -> &'static [AttrSpec] {
        const ATTRS: &[AttrSpec] = &[AttrSpec::new(
            "axis",
            AttrKind::Int {
                min: 0,
                max: u64::MAX,
            },
            AttrDefault::Value(AttrValue::Int(0)),
        )];
        ATTRS
    }
    fn arity(&self) -> Arity {
        Arity::Many
    }
    fn doc(&self) -> &'static str {
        "none; `axis` 0 is the record's first axis (the batch axis is not counted)"
    }
    fn configure(&self, _name: &str, a: &Attrs) -> Result<Arc<dyn Op>, ShapeError> {
        Ok(Arc::new(Concat {
            axis: Axis::Index(a.int("axis")),
        }))
    }
}

/// The op that joins a sharded layer's outputs along its last axis (dense, attention: the
/// units) or its first (conv2d: the filters); see [`super::Shard`].
pub(super) fn concat_shards(last_axis: bool) -> Arc<dyn Op> {
    Arc::new(Concat {
        axis: if last_axis {
            Axis::Last
        } else {
            Axis::Index(0)
        },
    })
}

#[derive(Debug, Clone, Copy)]
enum Axis {
    /// Axis of the record shape; the batch axis comes before it.
    Index(usize),
    /// The last axis of the row shape, whatever its rank (the units of a sharded dense layer).
    Last,
}

#[derive(Debug)]
struct Concat {
    axis: Axis,
}

impl Concat {
    fn axis(&self, rank: usize) -> usize {
        match self.axis {
            Axis::Index(a) => a,
            Axis::Last => rank.saturating_sub(1),
        }
    }
}

impl Op for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    /// Concatenation acts within each row, so token rows concatenate as records do.
    fn rows(&self, inputs: &[super::Rows]) -> Result<super::Rows, ShapeError> {
        super::same_rows(self.name(), inputs)
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
        let first = inputs[0];
        let axis = self.axis(first.len());
        if axis >= first.len() {
            return Err(ShapeError::at(
                "axis",
                format!("concat axis {axis} is out of range for records of shape {first:?}"),
            ));
        }
        let mut out = first.to_vec();
        for (i, s) in inputs.iter().enumerate().skip(1) {
            let fits = s.len() == first.len()
                && s.iter()
                    .zip(first)
                    .enumerate()
                    .all(|(a, (x, y))| a == axis || x == y);
            if !fits {
                return Err(ShapeError::at(
                    "inputs",
                    format!("concat on axis {axis} needs inputs equal on every other axis: input 0 is {first:?}, input {i} is {s:?}"),
                ));
            }
            out[axis] += s[axis];
        }
        Ok(out)
    }
    fn concat_axis(&self, rank: usize) -> Option<usize> {
        Some(self.axis(rank))
    }
    fn flops(&self, _inputs: &[&[usize]], _output: &[usize], _seq: usize) -> u64 {
        0
    }
    fn build(
        &self,
        _kind: KernelKind,
        _inputs: &[&[usize]],
        output: &[usize],
        _tensors: Vec<Vec<f32>>,
    ) -> Box<dyn Layer> {
        // Copies without arithmetic: one kernel serves as both fast and reference.
        Box::new(ConcatLayer {
            axis: self.axis(output.len()),
        })
    }
}

#[derive(Debug)]
struct ConcatLayer {
    axis: usize,
}

impl Layer for ConcatLayer {
    fn forward(&self, inputs: &[&Tensor], _chunk: &Chunk, _scratch: &mut Scratch) -> Tensor {
        // In row-major order, concatenating on axis `a` interleaves, for each index of the axes
        // before it (batch included), one contiguous block from each input.
        let axis = self.axis + 1;
        let outer: usize = inputs[0].shape()[..axis].iter().product();
        let blocks: Vec<usize> = inputs
            .iter()
            .map(|t| t.shape()[axis..].iter().product())
            .collect();
        let sources: Vec<_> = inputs.iter().map(|t| contiguous(t)).collect();
        let mut out = Vec::with_capacity(outer * blocks.iter().sum::<usize>());
        for o in 0..outer {
            for (src, &len) in sources.iter().zip(&blocks) {
                out.extend_from_slice(&src[o * len..(o + 1) * len]);
            }
        }
        let mut shape = inputs[0].shape().to_vec();
        shape[axis] = inputs.iter().map(|t| t.shape()[axis]).sum();
        tensor(shape, out)
    }
}
