//! A connection's outbound queue: bounded in messages and in bytes, and free of allocations
//! while empty.
//!
//! A general-purpose channel allocates its first block of slots up front (about 1.3 KiB per
//! connection here), which idle connections never use. This queue is a `VecDeque` behind a
//! short lock: it allocates when frames arrive and gives the memory back once it has drained.
//! The hub pushes without waiting (a full queue marks the connection slow); the connection
//! task pops.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::hub::Outbound;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Too many messages or bytes waiting: the client is too slow.
    Full,
    /// The connection is gone.
    Closed,
}

pub struct OutQueue {
    state: Mutex<State>,
    /// Wakes the connection task when frames arrive.
    ready: Notify,
    /// Wakes the connection task when it fell behind, even in the middle of a write.
    overflowed: Notify,
    max_len: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Outbound>,
    bytes: usize,
    slow: bool,
    closed: bool,
}

/// Capacity kept after the queue drained; more than this is given back.
const KEEP: usize = 16;

impl OutQueue {
    pub fn new(max_len: usize, max_bytes: usize) -> Self {
        Self { state: Mutex::default(), ready: Notify::new(), overflowed: Notify::new(), max_len, max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("queue lock poisoned")
    }

    /// Queues a frame (a cheap clone of shared bytes). On overflow the queue is marked slow
    /// and the connection woken to close; later pushes are refused.
    pub fn push(&self, out: &Outbound) -> Result<(), Overflow> {
        let mut state = self.lock();
        if state.closed {
            return Err(Overflow::Closed);
        }
        if state.slow {
            return Err(Overflow::Closed);
        }
        let len = out.frame.len();
        if state.frames.len() >= self.max_len || state.bytes + len > self.max_bytes {
            state.slow = true;
            state.frames = VecDeque::new();
            state.bytes = 0;
            drop(state);
            self.overflowed.notify_one();
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

    /// Resolves when frames may be waiting.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Wakes the consumer again (it stopped with frames left).
    pub fn rearm(&self) {
        self.ready.notify_one();
    }

    /// Resolves once the queue overflowed.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.overflowed.notified();
            if self.lock().slow {
                return;
            }
            notified.await;
        }
    }

    /// Refuses further frames and drops those waiting.
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
}
