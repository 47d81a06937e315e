//! Stage actors: workers that run a stage's layers on each chunk, and joins that assemble a
//! chunk's parts from several producers.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::stats::StageCounters;
use super::trace::Tracer;
use super::{Emitter, Failure, Part};
use crate::graph::{Env, Plan};
use crate::ops::Scratch;

/// One replica of a stage: `while let Ok(part) = rx.recv()`, compute, emit.
pub(super) struct StageWorker {
    pub plan: Arc<Plan>,
    pub stage: usize,
    pub replica: usize,
    pub rx: Receiver<Part>,
    pub emitter: Emitter,
    pub counters: Arc<super::stats::Counters>,
    pub failures: Sender<Failure>,
    pub tracer: Option<Tracer>,
}

impl StageWorker {
    pub fn run(self) {
        let stage = &self.plan.stages[self.stage];
        let counters: &StageCounters = &self.counters.stages[self.stage + 1].2;
        let mut scratch = Scratch::default();
        loop {
            let t0 = Instant::now();
            let Ok(part) = super::recv_patiently(&self.rx) else {
                break;
            };
            let t1 = Instant::now();
            let computed = catch_unwind(AssertUnwindSafe(|| {
                // Tests' fault injection (`fault`): fails here as a panicking kernel would.
                #[cfg(feature = "fail-points")]
                if let Some(fault) = super::fault::injected(&super::fault::FaultSite {
                    stage: &stage.name,
                    chunk: part.chunk,
                    rows: 0..part.rows,
                }) {
                    panic!("{fault}");
                }
                let mut env = Env::new(self.plan.graph.nodes.len(), part.rows, part.seqs);
                for (v, t) in part.values {
                    env.set(v, t);
                }
                self.plan
                    .graph
                    .eval(&stage.layers, &mut env, &stage.frees, &mut scratch);
                env
            }));
            let env = match computed {
                Ok(env) => env,
                Err(payload) => {
                    let message = panic_message(&*payload);
                    let _ = self.failures.send(Failure {
                        stage: stage.name.clone(),
                        message,
                    });
                    return;
                }
            };
            let t2 = Instant::now();
            if self
                .emitter
                .emit(part.chunk, part.rows, &env, None)
                .is_err()
            {
                return; // downstream is gone: the pipeline is stopping
            }
            let t3 = Instant::now();
            counters.record(t1 - t0, t2 - t1, t3 - t2);
            if let Some(tracer) = &self.tracer {
                tracer.span(&stage.name, self.replica, part.chunk, t1, t2);
            }
        }
    }
}

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Gathers each chunk's parts from `producers` senders and hands complete chunks to the workers.
/// It drains its inbox whatever arrives first, so no producer waits on another: joins cannot
/// deadlock, and what they hold is bounded by the in-flight budget.
pub(super) fn run_join(inbox: Receiver<Part>, out: Sender<Part>, producers: usize) {
    let mut pending: HashMap<u64, (usize, Part)> = HashMap::new();
    while let Ok(part) = super::recv_patiently(&inbox) {
        let chunk = part.chunk;
        let complete = match pending.remove(&chunk) {
            None => (1, part),
            Some((n, mut acc)) => {
                acc.values.extend(part.values);
                (n + 1, acc)
            }
        };
        if complete.0 == producers {
            if out.send(complete.1).is_err() {
                return;
            }
        } else {
            pending.insert(chunk, complete);
        }
    }
}
