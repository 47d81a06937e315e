//! The in-flight budget: one counting semaphore for every chunk between the chunker and the
//! output writer.
//!
//! A chunk takes a slot when it is formed and gives it back when its last output line is written,
//! so queues, joins and the reorder buffer together never hold more than the plan's
//! `budget.chunks` chunks. That is what makes the byte bound `validate` prints true.

use crossbeam_channel::{bounded, Receiver, Sender};

#[derive(Debug, Clone)]
pub struct InFlight {
    /// Free slots, as tokens in a channel: taking one blocks while none is free.
    free: Receiver<()>,
    returned: Sender<()>,
}

impl InFlight {
    pub fn new(chunks: usize) -> InFlight {
        let (returned, free) = bounded(chunks);
        for _ in 0..chunks {
            returned.send(()).expect("capacity is `chunks`");
        }
        InFlight { free, returned }
    }

    /// Take a slot for a new chunk, waiting while the pipeline is full.
    pub fn admit(&self) {
        self.free.recv().expect("the budget owns both ends");
    }

    /// Give a written chunk's slot back.
    pub fn retire(&self) {
        self.returned
            .try_send(())
            .expect("never more retired than admitted");
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        self.free.capacity().unwrap_or(0) - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn admit_blocks_when_full_until_a_retire() {
        let b = InFlight::new(2);
        b.admit();
        b.admit();
        assert_eq!(b.in_use(), 2);
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.admit());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished(), "a third chunk must wait for a free slot");
        b.retire();
        t.join().unwrap();
        assert_eq!(b.in_use(), 2);
    }
}
