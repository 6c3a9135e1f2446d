//! The gateway's coarse clock, and when each client was last heard from.
//!
//! Connections hold no timers of their own (see [`crate::sweeper`]): the sweeper advances one
//! clock every tick, a connection records the clock's reading whenever its client sends
//! something, and the sweeper compares the two.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Milliseconds since the gateway started, as of the sweeper's last tick.
pub(crate) struct Clock {
    now: AtomicU64,
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self { now: AtomicU64::new(0), epoch: Instant::now() }
    }

    /// The reading as of the last [`Clock::advance`].
    pub(crate) fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// Reads the time and returns the new reading.
    pub(crate) fn advance(&self) -> u64 {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.now.store(now, Ordering::Relaxed);
        now
    }
}

/// When a client last sent anything, on the [`Clock`].
#[derive(Default)]
pub(crate) struct LastSeen(AtomicU64);

impl LastSeen {
    pub(crate) fn set(&self, now: u64) {
        self.0.store(now, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
