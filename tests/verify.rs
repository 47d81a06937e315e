//! `verify` checks the kernels, not only the plumbing: the decomposed pipeline runs the fast
//! kernels and the monolithic side runs each op's reference kernel, so a fast kernel that is
//! wrong is caught. The old `verify` ran the same layer objects on both sides, so the bug below
//! was on both sides and it passed.

use std::path::Path;
use std::sync::Arc;

use subpass::graph::Plan;
use subpass::ops::{Chunk, Layer, Scratch, Tensor};
use subpass::verify::{synthetic_records, verify};

/// A fast kernel with a bug: one output value in every record is off by a relative 1e-3, about
/// what a wrong tail loop or a dropped term would do.
#[derive(Debug)]
struct Miscomputes(Box<dyn Layer>);

impl Layer for Miscomputes {
    fn forward(&self, inputs: &[&Tensor], chunk: &Chunk, scratch: &mut Scratch) -> Tensor {
        let mut out = self.0.forward(inputs, chunk, scratch);
        let width = out.len() / out.shape()[0];
        for record in out.as_slice_mut().unwrap().chunks_exact_mut(width) {
            record[width / 2] = record[width / 2] * 1.001 + 1e-3;
        }
        out
    }
}

fn plan_with_wrong_first_layer() -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/mlp.yaml");
    let mut plan = Plan::load(&path).unwrap();
    let fast = plan.graph.layers.remove(0);
    plan.graph.layers.insert(0, Box::new(Miscomputes(fast)));
    plan
}

#[test]
fn verify_passes_the_real_kernels_and_catches_a_wrong_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/mlp.yaml");
    let good = Arc::new(Plan::load(&path).unwrap());
    let input = synthetic_records(&good, 200, 3);
    let report = verify(good, input.clone()).unwrap();
    assert!(report.passes(1e-5), "{report:?}");

    let wrong = Arc::new(plan_with_wrong_first_layer());
    let report = verify(wrong, input).unwrap();
    assert!(
        !report.passes(1e-5),
        "a fast kernel off by 1e-3 must fail verify: {report:?}"
    );
    assert!(report.outputs[0].max_rel > 1e-4, "{report:?}");
}
