//! How the rest of the gateway asks a connection to close: the hub when the client fell
//! behind, the sweeper on a heartbeat timeout, an expired token or a drain. The connection
//! task waits on the signal next to its socket and answers with the close code of the reason.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::Notify;

/// Why the gateway closes a connection. The first reason asked for wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The outbound queue overflowed.
    SlowConsumer = 1,
    /// The gateway is draining.
    ShuttingDown = 2,
    /// Nothing came from the client within `gateway.pong_timeout`.
    HeartbeatTimeout = 3,
    /// The token's `exp` passed.
    TokenExpired = 4,
}

impl CloseReason {
    fn from_u8(n: u8) -> Option<Self> {
        Some(match n {
            1 => Self::SlowConsumer,
            2 => Self::ShuttingDown,
            3 => Self::HeartbeatTimeout,
            4 => Self::TokenExpired,
            _ => return None,
        })
    }
}

/// A close request, set at most once and awaited by the connection task.
#[derive(Default)]
pub(crate) struct CloseSignal {
    /// 0 until a reason is set, then the reason's value.
    reason: AtomicU8,
    notify: Notify,
}

impl CloseSignal {
    /// Sets `reason` unless one was set before; `true` when this call set it. The waiter is
    /// woken by [`CloseSignal::wake`], so that the caller can finish what belongs to the
    /// close first.
    pub(crate) fn set(&self, reason: CloseReason) -> bool {
        self.reason.compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Wakes the task waiting in [`CloseSignal::requested`].
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    /// The reason asked for, if any.
    pub(crate) fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Resolves once a close was asked for, with the reason.
    pub(crate) async fn requested(&self) -> CloseReason {
        loop {
            let notified = self.notify.notified();
            if let Some(reason) = self.reason() {
                return reason;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_reason_wins() {
        let signal = CloseSignal::default();
        assert_eq!(signal.reason(), None);
        assert!(signal.set(CloseReason::TokenExpired));
        assert!(!signal.set(CloseReason::ShuttingDown));
        signal.wake();
        assert_eq!(signal.requested().await, CloseReason::TokenExpired);
    }
}
