//! Ops that combine or reshape values: add, concat, flatten.

use ndarray::IxDyn;

use super::{Layer, Scratch, ShapeError, Tensor};

pub fn infer_add(inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let first = inputs[0];
    for (i, s) in inputs.iter().enumerate().skip(1) {
        if *s != first {
            return Err(ShapeError::at(
                "inputs",
                format!("add needs inputs of one shape: input 0 is {first:?}, input {i} is {s:?}"),
            ));
        }
    }
    Ok(first.to_vec())
}

pub fn infer_concat(axis: usize, inputs: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let first = inputs[0];
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

#[derive(Debug)]
pub struct Add;

impl Layer for Add {
    fn forward(&self, inputs: &[&Tensor], _scratch: &mut Scratch) -> Tensor {
        let mut out = inputs[0].as_standard_layout().into_owned();
        for other in &inputs[1..] {
            out += *other;
        }
        out
    }
}

#[derive(Debug)]
pub struct Concat {
    /// Axis of the record shape; the batch axis comes before it.
    pub axis: usize,
}

impl Layer for Concat {
    fn forward(&self, inputs: &[&Tensor], _scratch: &mut Scratch) -> Tensor {
        // In row-major order, concatenating on axis `a` interleaves, for each index of the axes
        // before it (batch included), one contiguous block from each input.
        let axis = self.axis + 1;
        let outer: usize = inputs[0].shape()[..axis].iter().product();
        let blocks: Vec<usize> = inputs
            .iter()
            .map(|t| t.shape()[axis..].iter().product())
            .collect();
        let sources: Vec<_> = inputs.iter().map(|t| t.as_standard_layout()).collect();
        let slices: Vec<&[f32]> = sources
            .iter()
            .map(|t| t.as_slice().expect("standard layout"))
            .collect();
        let mut out = Vec::with_capacity(outer * blocks.iter().sum::<usize>());
        for o in 0..outer {
            for (src, &len) in slices.iter().zip(&blocks) {
                out.extend_from_slice(&src[o * len..(o + 1) * len]);
            }
        }
        let mut shape = inputs[0].shape().to_vec();
        shape[axis] = inputs.iter().map(|t| t.shape()[axis]).sum();
        Tensor::from_shape_vec(IxDyn(&shape), out).expect("concat shapes checked at plan time")
    }
}

#[derive(Debug)]
pub struct Flatten;

impl Layer for Flatten {
    fn forward(&self, inputs: &[&Tensor], _scratch: &mut Scratch) -> Tensor {
        let x = inputs[0];
        let n = x.shape()[0];
        let per: usize = x.shape()[1..].iter().product();
        x.as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&[n, per]))
            .expect("flatten")
    }
}
