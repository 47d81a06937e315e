//! `core: N` on a stage: its threads run on that core only.
//!
//! Latency plans need it: a stage woken to compute one shard of a layer while the stage that
//! woke it computes another must run on the other core, and the scheduler of a virtual machine
//! often queues it behind the waker instead (see [`crate::planner::latency`]).

/// Pin the calling thread to `core`. Returns why not, when it cannot: a core this machine does
/// not have (a plan written on a bigger one), or a platform without thread affinity.
pub fn current_thread_to(core: usize) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if core >= cores {
        return Err(format!("core {core} does not exist here ({cores} cores)"));
    }
    pin(core)
}

#[cfg(target_os = "linux")]
fn pin(core: usize) -> Result<(), String> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(format!("core {core} is beyond the CPU set's size"));
    }
    // SAFETY: `cpu_set_t` is plain bits, for which all zeros is the empty set; `CPU_SET` writes
    // bit `core` of the set, which is in range (checked above); `sched_setaffinity` reads
    // `size_of::<cpu_set_t>()` bytes of the set we own, for thread 0 (the calling one).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(not(target_os = "linux"))]
fn pin(_core: usize) -> Result<(), String> {
    Err("thread affinity is only set on Linux".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_that_does_not_exist_is_refused_and_core_0_is_taken() {
        let err = current_thread_to(100_000).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        // In a thread of its own, so that the test runner's thread stays unpinned.
        let pinned = std::thread::spawn(|| current_thread_to(0)).join().unwrap();
        #[cfg(target_os = "linux")]
        assert_eq!(pinned, Ok(()));
        #[cfg(not(target_os = "linux"))]
        assert!(pinned.is_err());
    }
}
