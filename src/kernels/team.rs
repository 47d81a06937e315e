//! A stage's team of threads: how one chunk's layer spreads over several cores.
//!
//! Stages and replicas keep several chunks in flight; one chunk alone still runs its layers one
//! after another on one thread. A stage with `threads: N` runs on a team of N threads instead:
//! its worker runs inside a thread pool of N (rayon's, whose work stealing, sleeping and panic
//! propagation we would otherwise write ourselves), and a layer that can split its work (a
//! convolution, by filters) hands the parts to [`Team::run`], which runs them at once on the
//! team's threads and returns when all are done. Layers that cannot split run on the worker's
//! thread as before.
//!
//! A team is a plain value in the worker's [`crate::ops::Scratch`]: layers see how many threads
//! they may use, never the actors. Outside a team's pool (a worker of a one-thread stage, the
//! planner's profile, a test) [`Team::run`] runs the parts one after another, with the same
//! results.

/// How many threads a layer may spread one chunk over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Team {
    threads: usize,
}

impl Default for Team {
    fn default() -> Team {
        Team::serial()
    }
}

impl Team {
    /// One thread: parts run one after another.
    pub const fn serial() -> Team {
        Team { threads: 1 }
    }

    /// A team of `threads` (at least 1). Parts run at once only on the threads of a pool of
    /// that size that the caller runs in (see [`Team::pool`]).
    pub fn new(threads: usize) -> Team {
        Team {
            threads: threads.max(1),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The thread pool a stage's worker runs in for this team (`install`), named after the
    /// stage. `None` for one thread.
    pub fn pool(&self, name: &str) -> Result<Option<rayon::ThreadPool>, String> {
        if self.threads < 2 {
            return Ok(None);
        }
        let name = name.to_string();
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .thread_name(move |i| format!("{name}.t{i}"))
            .build()
            .map(Some)
            .map_err(|e| format!("cannot start a team of {} threads: {e}", self.threads))
    }

    /// `f(part)` for every part, at once on the team's threads when the caller runs in the
    /// team's pool, else one after another; returns when every part is done. The caller's
    /// thread runs the first part itself. A part's panic reaches the caller, after the others
    /// finished (they borrow from the caller's frame).
    pub fn run<T: Send>(&self, parts: Vec<T>, f: impl Fn(T) + Sync) {
        // The thread index first: outside every pool, `current_num_threads` would start
        // rayon's global pool, which no team uses.
        let in_pool =
            rayon::current_thread_index().is_some() && rayon::current_num_threads() >= self.threads;
        if self.threads < 2 || parts.len() < 2 || !in_pool {
            parts.into_iter().for_each(f);
            return;
        }
        let f = &f;
        let mut parts = parts.into_iter();
        let first = parts.next();
        rayon::scope(|s| {
            for part in parts {
                s.spawn(move |_| f(part));
            }
            if let Some(part) = first {
                f(part);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn parts_run_on_distinct_threads_inside_the_pool_and_in_order_outside() {
        let team = Team::new(2);
        let pool = team.pool("t").unwrap().expect("two threads make a pool");
        // Inside the pool: two parts that each wait for the other can only both finish if they
        // run at once, on two threads.
        let barrier = std::sync::Barrier::new(2);
        let threads = Mutex::new(Vec::new());
        pool.install(|| {
            team.run(vec![0, 1], |_| {
                threads.lock().unwrap().push(std::thread::current().id());
                barrier.wait();
            })
        });
        let threads = threads.into_inner().unwrap();
        assert_eq!(threads.len(), 2);
        assert_ne!(threads[0], threads[1]);
        // Outside it: one after another, in order, on the caller's thread.
        let seen = Mutex::new(Vec::new());
        team.run(vec![0, 1, 2], |i| seen.lock().unwrap().push(i));
        assert_eq!(seen.into_inner().unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn a_panicking_part_reaches_the_caller_after_the_others_finish() {
        let team = Team::new(2);
        let pool = team.pool("t").unwrap().unwrap();
        let finished = std::sync::atomic::AtomicUsize::new(0);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                team.run(vec![0, 1, 2, 3], |i| {
                    if i == 1 {
                        panic!("part 1 fails");
                    }
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
        }));
        assert!(result.is_err());
        assert_eq!(finished.into_inner(), 3);
    }
}
