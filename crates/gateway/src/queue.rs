//! A connection's outbound queue: bounded in messages and in bytes, and free of allocations
//! while empty. It is also how the rest of the gateway asks the connection task to ping or
//! to close.
//!
//! A general-purpose channel allocates its first block of slots up front (about 1.3 KiB per
//! connection here), which idle connections never use. This queue is a `VecDeque` behind a
//! short lock: it allocates when frames arrive and gives the memory back once it has drained.
//! The hub pushes without waiting (a full queue marks the connection slow); the connection
//! task pops. The gateway's sweeper ([`crate::sweeper`]) asks for pings and closes here, so a
//! connection task waits on this queue and its socket only, and holds no timers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::hub::Outbound;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Too many messages or bytes waiting: the client is too slow.
    Full,
    /// The connection is gone or closing.
    Closed,
}

/// Why the gateway closes a connection. The first reason asked for wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue overflowed.
    SlowConsumer,
    /// The gateway is draining.
    ShuttingDown,
    /// Nothing came from the client within `gateway.pong_timeout`.
    HeartbeatTimeout,
    /// The token's `exp` passed.
    TokenExpired,
}

pub struct OutQueue {
    state: Mutex<State>,
    /// Wakes the connection task when frames arrive or a ping is due.
    ready: Notify,
    /// Wakes the connection task when it must close, even in the middle of a write.
    closing: Notify,
    /// When the client last sent anything, on the sweeper's clock (milliseconds).
    last_seen: AtomicU64,
    max_len: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Outbound>,
    bytes: usize,
    /// Set when the gateway asked the connection to close.
    close: Option<CloseReason>,
    /// Set when a ping is due.
    ping: bool,
    /// Set once the connection task ended.
    closed: bool,
}

/// Capacity kept after the queue drained; more than this is given back.
const KEEP: usize = 16;

impl OutQueue {
    pub fn new(max_len: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            closing: Notify::new(),
            last_seen: AtomicU64::new(0),
            max_len,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("queue lock poisoned")
    }

    /// Queues a frame (a cheap clone of shared bytes). On overflow the connection is asked to
    /// close as a slow consumer; later pushes are refused.
    pub fn push(&self, out: &Outbound) -> Result<(), Overflow> {
        let mut state = self.lock();
        if state.closed || state.close.is_some() {
            return Err(Overflow::Closed);
        }
        let len = out.frame.len();
        if state.frames.len() >= self.max_len || state.bytes + len > self.max_bytes {
            drop(state);
            self.request_close(CloseReason::SlowConsumer);
            return Err(Overflow::Full);
        }
        state.frames.push_back(out.clone());
        state.bytes += len;
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next frame, if any.
    pub fn pop(&self) -> Option<Outbound> {
        let mut state = self.lock();
        let out = state.frames.pop_front()?;
        state.bytes -= out.frame.len();
        if state.frames.is_empty() && state.frames.capacity() > KEEP {
            state.frames = VecDeque::new();
        }
        Some(out)
    }

    /// Whether frames are waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().frames.is_empty()
    }

    /// Resolves when frames may be waiting or a ping may be due.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Wakes the consumer again (it stopped with frames left).
    pub fn rearm(&self) {
        self.ready.notify_one();
    }

    /// Asks the connection to send a ping.
    pub fn request_ping(&self) {
        self.lock().ping = true;
        self.ready.notify_one();
    }

    /// Whether a ping is due; clears the request.
    pub fn take_ping(&self) -> bool {
        std::mem::take(&mut self.lock().ping)
    }

    /// Asks the connection to close, dropping the frames still waiting. A reason given earlier
    /// stays.
    pub fn request_close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.close.is_some() {
            return;
        }
        state.close = Some(reason);
        state.frames = VecDeque::new();
        state.bytes = 0;
        drop(state);
        self.closing.notify_one();
    }

    /// Resolves once the connection was asked to close, with the reason.
    pub async fn closing(&self) -> CloseReason {
        loop {
            let notified = self.closing.notified();
            if let Some(reason) = self.lock().close {
                return reason;
            }
            notified.await;
        }
    }

    /// Records that the client sent something at `now` (the sweeper's clock).
    pub fn seen(&self, now: u64) {
        self.last_seen.store(now, Ordering::Relaxed);
    }

    /// When the client last sent something, on the sweeper's clock.
    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// Refuses further frames and drops those waiting; the connection task ended.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.frames = VecDeque::new();
        state.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Outbound {
        Outbound { frame: text.to_string().into(), ts: 0 }
    }

    #[test]
    fn bounded_by_count_and_by_bytes() {
        let q = OutQueue::new(2, 1000);
        assert_eq!(q.push(&frame("a")), Ok(()));
        assert_eq!(q.push(&frame("b")), Ok(()));
        assert_eq!(q.push(&frame("c")), Err(Overflow::Full));
        assert_eq!(q.push(&frame("d")), Err(Overflow::Closed), "a slow queue takes nothing more");
        assert!(q.pop().is_none(), "an overflowed queue is dropped");

        let q = OutQueue::new(100, 10);
        assert_eq!(q.push(&frame("12345")), Ok(()));
        assert_eq!(q.push(&frame("123456")), Err(Overflow::Full));
    }

    #[test]
    fn frames_come_out_in_order_and_memory_is_given_back() {
        let q = OutQueue::new(1000, 1 << 20);
        for i in 0..100 {
            q.push(&frame(&i.to_string())).unwrap();
        }
        for i in 0..100 {
            assert_eq!(q.pop().unwrap().frame.as_str(), i.to_string());
        }
        assert!(q.pop().is_none());
        assert_eq!(q.lock().frames.capacity(), 0);
        q.close();
        assert_eq!(q.push(&frame("late")), Err(Overflow::Closed));
    }

    #[tokio::test]
    async fn the_first_close_reason_wins_and_drops_waiting_frames() {
        let q = OutQueue::new(10, 1000);
        q.push(&frame("a")).unwrap();
        q.request_close(CloseReason::TokenExpired);
        q.request_close(CloseReason::ShuttingDown);
        assert_eq!(q.closing().await, CloseReason::TokenExpired);
        assert!(q.pop().is_none());
        assert_eq!(q.push(&frame("b")), Err(Overflow::Closed));

        let q = OutQueue::new(1, 1000);
        q.push(&frame("a")).unwrap();
        assert_eq!(q.push(&frame("b")), Err(Overflow::Full));
        assert_eq!(q.closing().await, CloseReason::SlowConsumer);
    }

    #[test]
    fn ping_requests_are_taken_once() {
        let q = OutQueue::new(10, 1000);
        assert!(!q.take_ping());
        q.request_ping();
        assert!(q.take_ping());
        assert!(!q.take_ping());
    }
}
