//! A connection's frame queue: encoded WebSocket frames the socket did not take yet, bounded
//! in frames and in bytes. It does no I/O; [`crate::writer`] writes from it.
//!
//! The queue allocates only while frames wait and gives the memory back once it drained. A
//! general-purpose channel would allocate its first block of slots up front (about 1.3 KiB per
//! connection here), which idle connections never use.

use std::collections::VecDeque;

use bytes::Bytes;

/// Capacity kept after the queue drained; more than this is given back.
const KEEP: usize = 16;

/// Frames waiting for the socket, oldest first.
pub(crate) struct FrameQueue {
    /// The first frame may be the unwritten rest of a frame (`started`).
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Whether part of the first frame was written already, so it must be finished before
    /// anything else (a close frame) goes out.
    started: bool,
    max_len: usize,
    max_bytes: usize,
    /// Room granted on top of the bounds for recovered messages ([`FrameQueue::grant`]),
    /// given back as frames are written.
    extra_len: usize,
    extra_bytes: usize,
}

impl FrameQueue {
    pub(crate) fn new(max_len: usize, max_bytes: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            started: false,
            max_len,
            max_bytes,
            extra_len: 0,
            extra_bytes: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether `frames` more frames of `bytes` in all stay within the bounds. A frame of the
    /// connection's own (`own`: a reply, a ping, the close frame) needs only the bytes already
    /// waiting to be within the bound, so that a reply larger than the bound (a long member
    /// list) is sent rather than taken for a slow client; the queue then holds at most the
    /// bound plus that reply, and nothing more until it drained below the bound again.
    pub(crate) fn fits(&self, frames: usize, bytes: usize, own: bool) -> bool {
        let (max_len, max_bytes) = (self.max_len + self.extra_len, self.max_bytes + self.extra_bytes);
        if self.frames.len() + frames > max_len {
            return false;
        }
        if own { self.bytes <= max_bytes } else { self.bytes + bytes <= max_bytes }
    }

    /// Raises the bounds by `frames` and `bytes` until that much was written: room for the
    /// messages a subscription recovers from history, which the client asked for at once and
    /// which must not count against what live messages may queue behind them (a recovery
    /// larger than the queue would otherwise close the client as slow at every attempt). The
    /// history's size bounds them.
    pub(crate) fn grant(&mut self, frames: usize, bytes: usize) {
        self.extra_len += frames;
        self.extra_bytes += bytes;
    }

    /// Appends `frame` minus its first `skip` bytes, which were written already.
    pub(crate) fn push(&mut self, frame: &Bytes, skip: usize) {
        if skip > 0 {
            self.frames.push_back(frame.slice(skip..));
            self.started = true;
        } else {
            self.frames.push_back(frame.clone());
        }
        self.bytes += frame.len() - skip;
    }

    /// Up to `max` frames from the front, contiguous in memory, for one write.
    pub(crate) fn front(&self, max: usize) -> &[Bytes] {
        let (front, back) = self.frames.as_slices();
        let chunk = if front.is_empty() { back } else { front };
        &chunk[..chunk.len().min(max)]
    }

    /// Takes off the `written` bytes of the front that went out.
    pub(crate) fn consume(&mut self, written: usize) {
        let (done, skip) = advance(self.front(usize::MAX), written);
        self.bytes -= written;
        self.extra_len = self.extra_len.saturating_sub(done);
        self.extra_bytes = self.extra_bytes.saturating_sub(written);
        self.frames.drain(..done);
        self.started = skip > 0;
        if skip > 0 {
            let rest = self.frames[0].slice(skip..);
            self.frames[0] = rest;
        }
        if self.frames.is_empty() {
            self.shrink();
        }
    }

    /// The oldest frame, for a queue whose socket is never attached (the canary).
    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.len();
        self.extra_len = self.extra_len.saturating_sub(1);
        self.extra_bytes = self.extra_bytes.saturating_sub(frame.len());
        if self.frames.is_empty() {
            self.started = false;
            self.shrink();
        }
        Some(frame)
    }

    /// Drops every frame but the rest of one begun already, which must be finished.
    pub(crate) fn keep_begun(&mut self) {
        self.frames.truncate(usize::from(self.started));
        self.bytes = self.frames.iter().map(Bytes::len).sum();
        (self.extra_len, self.extra_bytes) = (0, 0);
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
    }

    /// Drops every frame and gives the memory back.
    pub(crate) fn clear(&mut self) {
        self.frames = VecDeque::new();
        self.bytes = 0;
        self.started = false;
        (self.extra_len, self.extra_bytes) = (0, 0);
    }

    fn shrink(&mut self) {
        if self.frames.capacity() > KEEP {
            self.frames = VecDeque::new();
        }
    }

    #[cfg(test)]
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    #[cfg(test)]
    pub(crate) fn len_and_bytes(&self) -> (usize, usize) {
        (self.frames.len(), self.bytes)
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.frames.capacity()
    }
}

/// After `written` bytes of `frames` went out: how many frames are complete, and how many
/// bytes of the next one were written.
pub(crate) fn advance(frames: &[Bytes], mut written: usize) -> (usize, usize) {
    for (i, frame) in frames.iter().enumerate() {
        if written < frame.len() {
            return (i, written);
        }
        written -= frame.len();
    }
    (frames.len(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn bounded_by_count_and_by_bytes() {
        let mut q = FrameQueue::new(3, 10);
        assert!(!q.fits(1, 11, false));
        q.push(&frame("12345"), 0);
        assert!(q.fits(1, 5, false));
        assert!(!q.fits(1, 6, false));
        q.push(&frame("1"), 0);
        q.push(&frame("1"), 0);
        assert!(!q.fits(1, 1, false), "three frames at most");
        assert!(!q.fits(1, 1, true), "three frames at most, replies included");
    }

    #[test]
    fn a_reply_larger_than_the_byte_bound_fits_while_the_queue_is_within_it() {
        let mut q = FrameQueue::new(100, 10);
        q.push(&frame("12345"), 0);
        assert!(!q.fits(1, 100, false), "a message must fit the bound");
        assert!(q.fits(1, 100, true), "a reply only needs the queue within the bound");
        q.push(&Bytes::from(vec![b'x'; 100]), 0);
        assert!(!q.fits(1, 1, true), "nothing more until the queue drained below the bound");
    }

    #[test]
    fn granted_room_takes_recovered_frames_and_goes_as_they_are_written() {
        let mut q = FrameQueue::new(2, 100);
        q.grant(3, 30);
        for _ in 0..3 {
            q.push(&frame("0123456789"), 0);
        }
        assert!(q.fits(2, 20, false), "live frames still have the whole bound behind them");
        assert!(!q.fits(3, 20, false));
        q.consume(25);
        assert_eq!(q.len_and_bytes(), (1, 5));
        assert!(!q.fits(3, 5, false), "two frames written: their room is given back");
        assert!(q.fits(2, 5, false));
    }

    #[test]
    fn frames_come_out_in_order_and_memory_is_given_back() {
        let mut q = FrameQueue::new(1000, 1 << 20);
        for i in 0..100 {
            q.push(&frame(&i.to_string()), 0);
        }
        for i in 0..100 {
            assert_eq!(q.pop().unwrap(), i.to_string().as_bytes());
        }
        assert!(q.pop().is_none());
        assert_eq!(q.capacity(), 0);
    }

    #[test]
    fn a_partial_write_leaves_the_rest_of_the_frame_first() {
        let mut q = FrameQueue::new(10, 100);
        q.push(&frame("abc"), 0);
        q.push(&frame("de"), 0);
        q.consume(4);
        assert!(q.started());
        assert_eq!(q.front(10), [frame("e")]);
        assert_eq!(q.len_and_bytes(), (1, 1));
        q.push(&frame("f"), 0);
        q.keep_begun();
        assert_eq!(q.len_and_bytes(), (1, 1), "only the rest of the begun frame stays");
    }

    #[test]
    fn advance_counts_whole_frames_and_the_rest() {
        let frames = [frame("abc"), frame("de"), frame("f")];
        assert_eq!(advance(&frames, 0), (0, 0));
        assert_eq!(advance(&frames, 2), (0, 2));
        assert_eq!(advance(&frames, 3), (1, 0));
        assert_eq!(advance(&frames, 4), (1, 1));
        assert_eq!(advance(&frames, 6), (3, 0));
    }
}
