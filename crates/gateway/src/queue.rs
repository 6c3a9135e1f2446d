//! A connection's outbound side: the socket's write half, and a queue for what the socket
//! could not take yet, bounded in frames and in bytes. It is also how the rest of the gateway
//! asks the connection task to close.
//!
//! Whoever has frames for the connection may write them straight to the socket: the hub's
//! fan-out of a small channel, the sweeper's pings, the connection task's replies. What the
//! kernel's send buffer does not take is queued, as are the frames the hub hands over to the
//! connection task ([`OutQueue::push_queued`], large channels); the connection task writes the
//! queue, several frames per system call, whenever the socket is writable. Frames are never
//! interleaved: every write happens under the queue's lock, and nothing is written directly
//! while older bytes are still queued.
//!
//! Until the connection is open (`connected` written) the socket is not attached and frames
//! only queue; [`OutQueue::attach`] hands them to the connection task. The delivery canary's
//! queue is never attached and is read with [`OutQueue::pop`].
//!
//! The queue allocates only while frames wait and gives the memory back once it drained. A
//! general-purpose channel would allocate its first block of slots up front (about 1.3 KiB per
//! connection here), which idle connections never use.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Most frames written with one system call.
pub const MAX_BATCH: usize = 64;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Too many frames or bytes waiting: the client is too slow. The connection was asked to
    /// close as a slow consumer.
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
    /// The socket once the connection is open. Read by the connection task, written by
    /// whoever holds the lock.
    socket: OnceLock<TcpStream>,
    /// Wakes the connection task when frames wait for a writable socket.
    ready: Notify,
    /// Wakes the connection task when it must close, even while its socket is full.
    closing: Notify,
    /// When the client last sent anything, on the sweeper's clock (milliseconds).
    last_seen: AtomicU64,
    max_len: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    /// Encoded WebSocket frames the socket did not take yet. The first may be the unwritten
    /// rest of a frame (`started`).
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Whether part of the first frame was written already, so it must be finished before
    /// anything else (a close frame) goes out.
    started: bool,
    /// Whether the socket is attached and writes may go to it.
    attached: bool,
    /// Set when a write failed: the client is gone.
    failed: bool,
    /// Set when the gateway asked the connection to close.
    close: Option<CloseReason>,
    /// Set once the connection task ended.
    closed: bool,
}

/// Capacity kept after the queue drained; more than this is given back.
const KEEP: usize = 16;

/// How frames are sent. Messages are refused once the connection is closing; the
/// connection's own frames (a ping, a reply, the close frame) are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A message, written at once if nothing is queued.
    Message,
    /// A message, queued for the connection task.
    Queued,
    /// A frame of the connection's own, written at once if nothing is queued.
    Control,
}

impl OutQueue {
    pub fn new(max_len: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::default(),
            socket: OnceLock::new(),
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

    /// The attached socket. Panics before [`OutQueue::attach`].
    pub fn socket(&self) -> &TcpStream {
        self.socket.get().expect("the socket is attached before it is used")
    }

    /// Attaches the open connection's socket; from now on frames are written to it. Frames
    /// that came before are left to the connection task.
    pub fn attach(&self, socket: TcpStream) {
        if self.socket.set(socket).is_err() {
            return;
        }
        let mut state = self.lock();
        state.attached = true;
        if !state.frames.is_empty() {
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Sends message frames (encoded WebSocket frames, shared by every subscriber), in one
    /// system call when the socket takes them, else queued. When the queue would overflow,
    /// nothing is queued and the connection is asked to close as a slow consumer.
    pub fn push(&self, frames: &[Bytes]) -> Result<(), Overflow> {
        self.send(frames, Mode::Message)
    }

    /// Queues message frames for the connection task to write, so that the fan-out of a large
    /// channel runs on every runtime thread (see [`crate::hub`]). Bounded like
    /// [`OutQueue::push`]; wakes the task.
    pub fn push_queued(&self, frames: &[Bytes]) -> Result<(), Overflow> {
        self.send(frames, Mode::Queued)
    }

    /// Sends one frame of the connection's own (a reply, a ping, the close frame). Refused
    /// only once the connection ended, or when the queue is full.
    pub fn push_control(&self, frame: Bytes) -> Result<(), Overflow> {
        self.send(std::slice::from_ref(&frame), Mode::Control)
    }

    fn send(&self, frames: &[Bytes], mode: Mode) -> Result<(), Overflow> {
        let mut state = self.lock();
        if state.closed || state.failed || (mode != Mode::Control && state.close.is_some()) {
            return Err(Overflow::Closed);
        }
        let mut rest = frames;
        let mut skip = 0;
        if mode != Mode::Queued && state.attached && state.frames.is_empty() {
            match write_frames(self.socket(), rest) {
                Ok(written) => {
                    let done = advance(rest, written);
                    rest = &rest[done.0..];
                    skip = done.1;
                    if rest.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    state.failed = true;
                    drop(state);
                    self.ready.notify_one();
                    return Err(Overflow::Closed);
                }
            }
        }
        let len: usize = rest.iter().map(Bytes::len).sum::<usize>() - skip;
        if state.frames.len() + rest.len() > self.max_len || state.bytes + len > self.max_bytes {
            if skip > 0 {
                // Part of a frame is out already: it must be finished, whatever follows.
                state.frames.push_back(rest[0].slice(skip..));
                state.bytes += rest[0].len() - skip;
                state.started = true;
            }
            drop(state);
            self.request_close(CloseReason::SlowConsumer);
            return Err(Overflow::Full);
        }
        // The first frame waiting wakes whoever empties the queue (the connection task, or
        // the canary reading an unattached queue); later ones find it awake.
        let wake = state.frames.is_empty();
        for (i, frame) in rest.iter().enumerate() {
            state.frames.push_back(if i == 0 && skip > 0 { frame.slice(skip..) } else { frame.clone() });
        }
        state.started |= skip > 0;
        state.bytes += len;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Writes queued frames, up to `max` per system call, until the queue is empty, then
    /// waits for more. Returns only when the socket failed. Cancel-safe: what was not
    /// written stays queued.
    pub async fn drain(&self, max: usize) -> io::Result<()> {
        loop {
            // Scoped, so that the two waits share their room in this future, which is part of
            // every connection's task: waiting for the socket, the notification is not needed.
            let full = {
                let notified = self.ready.notified();
                match self.write_queued(max) {
                    Ok(true) => {
                        notified.await;
                        false
                    }
                    Ok(false) => true,
                    Err(e) => return Err(e),
                }
            };
            if full {
                self.socket().writable().await?;
            }
        }
    }

    /// Writes queued frames until the queue is empty (`true`) or the socket is full (`false`).
    fn write_queued(&self, max: usize) -> io::Result<bool> {
        let mut state = self.lock();
        if state.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if !state.attached {
            return Ok(true);
        }
        let state = &mut *state;
        while !state.frames.is_empty() {
            let (front, back) = state.frames.as_slices();
            let chunk = if front.is_empty() { back } else { front };
            let chunk = &chunk[..chunk.len().min(max.clamp(1, MAX_BATCH))];
            let written = match write_frames(self.socket(), chunk) {
                Ok(0) => {
                    state.failed = true;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    state.failed = true;
                    return Err(e);
                }
            };
            let (done, skip) = advance(chunk, written);
            state.bytes -= written;
            state.frames.drain(..done);
            state.started = skip > 0;
            if skip > 0 {
                let rest = state.frames[0].slice(skip..);
                state.frames[0] = rest;
            }
        }
        if state.frames.capacity() > KEEP {
            state.frames = VecDeque::new();
        }
        Ok(true)
    }

    /// Whether every queued frame was written (or the queue is closed).
    #[cfg(test)]
    pub(crate) fn is_drained(&self) -> bool {
        let state = self.lock();
        state.frames.is_empty() || state.failed || state.closed
    }

    /// The next queued frame, for a queue whose socket is never attached (the canary).
    pub fn pop(&self) -> Option<Bytes> {
        let mut state = self.lock();
        let frame = state.frames.pop_front()?;
        state.bytes -= frame.len();
        if state.frames.is_empty() && state.frames.capacity() > KEEP {
            state.frames = VecDeque::new();
        }
        Some(frame)
    }

    /// Resolves when frames may be waiting (see [`OutQueue::pop`]).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Sends a ping, unless the connection is closing.
    pub fn ping(&self) {
        if self.lock().close.is_none() {
            let _ = self.push_control(crate::wire::PING);
        }
    }

    /// Asks the connection to close, dropping the frames still waiting (all but the rest of a
    /// frame already begun). A reason given earlier stays.
    pub fn request_close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.close.is_some() {
            return;
        }
        state.close = Some(reason);
        let keep = usize::from(state.started);
        state.frames.truncate(keep);
        state.bytes = state.frames.iter().map(Bytes::len).sum();
        if state.frames.is_empty() {
            state.frames = VecDeque::new();
        }
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

/// The connection task's side of an attached socket, for the WebSocket library: reads come
/// from the socket, writes (replies, pongs, the close frame) go through the queue, after
/// what is queued already. A write never waits: what the socket does not take is queued, and
/// written by [`OutQueue::drain`]; a full queue fails the write.
pub struct Socket(pub Arc<OutQueue>);

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let socket = self.0.socket();
        loop {
            ready!(socket.poll_read_ready(cx))?;
            match socket.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(match self.0.push_control(Bytes::copy_from_slice(buf)) {
            Ok(()) => Ok(buf.len()),
            Err(Overflow::Full) => Err(io::Error::other("outbound queue full")),
            Err(Overflow::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One non-blocking write of `frames`, vectored when there are several.
fn write_frames(socket: &TcpStream, frames: &[Bytes]) -> io::Result<usize> {
    if let [frame] = frames {
        return socket.try_write(frame);
    }
    let mut slices = [IoSlice::new(&[]); MAX_BATCH];
    let n = frames.len().min(MAX_BATCH);
    for (slice, frame) in slices.iter_mut().zip(&frames[..n]) {
        *slice = IoSlice::new(frame);
    }
    socket.try_write_vectored(&slices[..n])
}

/// After `written` bytes of `frames` went out: how many frames are complete, and how many
/// bytes of the next one were written.
fn advance(frames: &[Bytes], mut written: usize) -> (usize, usize) {
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
        let q = OutQueue::new(2, 1000);
        assert_eq!(q.push(&[frame("a")]), Ok(()));
        assert_eq!(q.push(&[frame("b")]), Ok(()));
        assert_eq!(q.push(&[frame("c")]), Err(Overflow::Full));
        assert_eq!(q.push(&[frame("d")]), Err(Overflow::Closed), "a slow queue takes nothing more");
        assert!(q.pop().is_none(), "an overflowed queue is dropped");

        let q = OutQueue::new(100, 10);
        assert_eq!(q.push(&[frame("12345")]), Ok(()));
        assert_eq!(q.push(&[frame("123456")]), Err(Overflow::Full));
    }

    #[test]
    fn frames_come_out_in_order_and_memory_is_given_back() {
        let q = OutQueue::new(1000, 1 << 20);
        for i in 0..100 {
            q.push(&[frame(&i.to_string())]).unwrap();
        }
        for i in 0..100 {
            assert_eq!(q.pop().unwrap(), i.to_string().as_bytes());
        }
        assert!(q.pop().is_none());
        assert_eq!(q.lock().frames.capacity(), 0);
        q.close();
        assert_eq!(q.push(&[frame("late")]), Err(Overflow::Closed));
    }

    #[tokio::test]
    async fn the_first_close_reason_wins_and_drops_waiting_frames() {
        let q = OutQueue::new(10, 1000);
        q.push(&[frame("a")]).unwrap();
        q.request_close(CloseReason::TokenExpired);
        q.request_close(CloseReason::ShuttingDown);
        assert_eq!(q.closing().await, CloseReason::TokenExpired);
        assert!(q.pop().is_none());
        assert_eq!(q.push(&[frame("b")]), Err(Overflow::Closed));
        assert_eq!(q.push_control(frame("close")), Ok(()), "the close frame still goes out");

        let q = OutQueue::new(1, 1000);
        q.push(&[frame("a")]).unwrap();
        assert_eq!(q.push(&[frame("b")]), Err(Overflow::Full));
        assert_eq!(q.closing().await, CloseReason::SlowConsumer);
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

    /// A connected pair of sockets: the queue's end, and the client's.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (listener.accept().await.unwrap().0, client)
    }

    async fn read_exactly(client: &mut TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; n];
        client.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn frames_before_attach_go_out_first_then_writes_are_direct() {
        let (server, mut client) = pair().await;
        let q = std::sync::Arc::new(OutQueue::new(100, 1 << 20));
        q.push(&[frame("one,"), frame("two,")]).unwrap();
        q.attach(server);
        let drain = tokio::spawn({
            let q = q.clone();
            async move { q.drain(MAX_BATCH).await }
        });
        assert_eq!(read_exactly(&mut client, 8).await, b"one,two,");
        // Wait until the queued frames are out, so the next push finds an empty queue.
        while !q.is_drained() {
            tokio::task::yield_now().await;
        }
        q.push(&[frame("three")]).unwrap();
        assert!(q.is_drained(), "a socket with room takes a frame at once");
        assert_eq!(read_exactly(&mut client, 5).await, b"three");
        drain.abort();
    }

    #[tokio::test]
    async fn a_full_socket_queues_in_order_and_drains_when_read() {
        let (server, mut client) = pair().await;
        let q = std::sync::Arc::new(OutQueue::new(100_000, 64 << 20));
        q.attach(server);
        // Far more than the socket buffers hold, so most of it is queued, some of it as the
        // unwritten rest of a frame.
        let chunk = Bytes::from(vec![b'x'; 10_000]);
        let mut sent = Vec::new();
        for i in 0..1000u32 {
            let mut f = i.to_be_bytes().to_vec();
            f.extend_from_slice(&chunk);
            sent.extend_from_slice(&f);
            q.push(&[Bytes::from(f)]).unwrap();
        }
        assert!(!q.is_drained());
        let drain = tokio::spawn({
            let q = q.clone();
            async move { q.drain(MAX_BATCH).await }
        });
        assert_eq!(read_exactly(&mut client, sent.len()).await, sent);
        drain.abort();
    }

    #[tokio::test]
    async fn a_close_keeps_the_rest_of_a_begun_frame() {
        let (server, _client) = pair().await;
        let q = OutQueue::new(100_000, 64 << 20);
        q.attach(server);
        let big = Bytes::from(vec![b'x'; 64 << 20]);
        assert_eq!(q.push(std::slice::from_ref(&big)), Ok(()));
        assert_eq!(q.push(&[frame("next")]), Ok(()));
        let started = q.lock().started;
        assert!(started, "64 MiB do not fit in a socket buffer");
        q.request_close(CloseReason::ShuttingDown);
        let state = q.lock();
        assert_eq!(state.frames.len(), 1, "only the rest of the begun frame stays");
        assert!(state.frames[0].len() < big.len());
        assert_eq!(state.bytes, state.frames[0].len());
    }
}
