//! A connection's outbound writer: the socket's write half and the [`FrameQueue`] behind it.
//!
//! Whoever has frames for the connection may write them straight to the socket: the hub's
//! fan-out of a small channel, the sweeper's pings, the connection task's replies. What the
//! kernel's send buffer does not take is queued, as are the frames the hub hands over to the
//! connection task ([`Writer::push_queued`], large channels); the connection task writes the
//! queue, several frames per system call, whenever the socket is writable
//! ([`Writer::drain`]). Frames are never interleaved: every write happens under the writer's
//! lock, and nothing is written directly while older bytes are still queued.
//!
//! Until the connection is open (`connected` written) the socket is not attached and frames
//! only queue; [`Writer::attach`] hands them to the connection task. The delivery canary's
//! writer is never attached and is read with [`Writer::pop`].
//!
//! The writer is what the rest of the gateway holds of a connection, so it also carries the
//! connection's [`CloseSignal`] (an overflow asks for a close) and its [`LastSeen`].

use std::io::{self, IoSlice};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::close::{CloseReason, CloseSignal};
use crate::heartbeat::LastSeen;
use crate::queue::{FrameQueue, advance};

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

pub struct Writer {
    state: Mutex<State>,
    /// The socket once the connection is open. Read by the connection task, written by
    /// whoever holds the lock.
    socket: OnceLock<TcpStream>,
    /// Wakes the connection task when frames wait for a writable socket.
    ready: Notify,
    /// Set when the gateway asks the connection to close; wakes the connection task even
    /// while its socket is full.
    close: CloseSignal,
    last_seen: LastSeen,
}

struct State {
    queue: FrameQueue,
    /// Whether the socket is attached and writes may go to it.
    attached: bool,
    /// Set when a write failed: the client is gone.
    failed: bool,
    /// Set once the connection task ended.
    closed: bool,
}

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
    /// Messages recovered from history, written at once if nothing is queued; what waits
    /// gets room of its own (see [`crate::queue::FrameQueue::grant`]).
    Recovered,
}

impl Writer {
    pub fn new(max_len: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: FrameQueue::new(max_len, max_bytes),
                attached: false,
                failed: false,
                closed: false,
            }),
            socket: OnceLock::new(),
            ready: Notify::new(),
            close: CloseSignal::default(),
            last_seen: LastSeen::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("writer lock poisoned")
    }

    /// The attached socket. Panics before [`Writer::attach`].
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
        if !state.queue.is_empty() {
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
    /// [`Writer::push`]; wakes the task.
    pub fn push_queued(&self, frames: &[Bytes]) -> Result<(), Overflow> {
        self.send(frames, Mode::Queued)
    }

    /// Sends messages a subscription recovered from history, like [`Writer::push`], but with
    /// room of their own in the queue on top of its bounds, so that a client catching up on
    /// more than `gateway.outbound_queue` messages is not taken for a slow one.
    pub fn push_recovered(&self, frames: &[Bytes]) -> Result<(), Overflow> {
        self.send(frames, Mode::Recovered)
    }

    /// Sends one frame of the connection's own (a reply, a ping, the close frame). Refused
    /// only once the connection ended, or when the queue is full; it may be larger than
    /// `gateway.outbound_queue_bytes` while what waits is within it (see
    /// [`crate::queue::FrameQueue::fits`]).
    pub fn push_control(&self, frame: Bytes) -> Result<(), Overflow> {
        self.send(std::slice::from_ref(&frame), Mode::Control)
    }

    fn send(&self, frames: &[Bytes], mode: Mode) -> Result<(), Overflow> {
        let mut state = self.lock();
        if state.closed || state.failed || (mode != Mode::Control && self.close.reason().is_some()) {
            return Err(Overflow::Closed);
        }
        let mut rest = frames;
        let mut skip = 0;
        if mode != Mode::Queued && state.attached && state.queue.is_empty() {
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
        if mode == Mode::Recovered {
            state.queue.grant(rest.len(), len);
        }
        if !state.queue.fits(rest.len(), len, mode == Mode::Control) {
            if skip > 0 {
                // Part of a frame is out already: it must be finished, whatever follows.
                state.queue.push(&rest[0], skip);
            }
            drop(state);
            self.request_close(CloseReason::SlowConsumer);
            return Err(Overflow::Full);
        }
        // The first frame waiting wakes whoever empties the queue (the connection task, or
        // the canary reading an unattached writer); later ones find it awake.
        let wake = state.queue.is_empty();
        for (i, frame) in rest.iter().enumerate() {
            state.queue.push(frame, if i == 0 { skip } else { 0 });
        }
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
        while !state.queue.is_empty() {
            let chunk = state.queue.front(max.clamp(1, MAX_BATCH));
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
            state.queue.consume(written);
        }
        Ok(true)
    }

    /// Whether every queued frame was written (or the writer is closed).
    #[cfg(test)]
    pub(crate) fn is_drained(&self) -> bool {
        let state = self.lock();
        state.queue.is_empty() || state.failed || state.closed
    }

    /// The next queued frame, for a writer whose socket is never attached (the canary).
    pub fn pop(&self) -> Option<Bytes> {
        self.lock().queue.pop()
    }

    /// Resolves when frames may be waiting (see [`Writer::pop`]).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Sends a ping, unless the connection is closing.
    pub fn ping(&self) {
        if self.close.reason().is_none() {
            let _ = self.push_control(crate::wire::PING);
        }
    }

    /// Asks the connection to close, dropping the frames still waiting (all but the rest of a
    /// frame already begun). A reason given earlier stays.
    pub fn request_close(&self, reason: CloseReason) {
        // Set under the lock: the connection task's close frame, pushed under it too, cannot
        // come before the frames are dropped.
        let mut state = self.lock();
        if self.close.set(reason) {
            state.queue.keep_begun();
            drop(state);
            self.close.wake();
        }
    }

    /// The close asked for, if any.
    pub fn close_requested(&self) -> Option<CloseReason> {
        self.close.reason()
    }

    /// Resolves once the connection was asked to close, with the reason.
    pub async fn closing(&self) -> CloseReason {
        self.close.requested().await
    }

    /// Records that the client sent something at `now` (the gateway's clock).
    pub(crate) fn seen(&self, now: u64) {
        self.last_seen.set(now);
    }

    /// When the client last sent something, on the gateway's clock.
    pub(crate) fn last_seen(&self) -> u64 {
        self.last_seen.get()
    }

    /// Refuses further frames and drops those waiting; the connection task ended.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queue.clear();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn an_overflow_asks_for_a_close_and_takes_nothing_more() {
        let q = Writer::new(2, 1000);
        assert_eq!(q.push(&[frame("a")]), Ok(()));
        assert_eq!(q.push(&[frame("b")]), Ok(()));
        assert_eq!(q.push(&[frame("c")]), Err(Overflow::Full));
        assert_eq!(q.push(&[frame("d")]), Err(Overflow::Closed), "a slow writer takes nothing more");
        assert!(q.pop().is_none(), "an overflowed queue is dropped");
        assert_eq!(q.close_requested(), Some(CloseReason::SlowConsumer));
        q.close();
        assert_eq!(q.push_control(frame("late")), Err(Overflow::Closed));
    }

    #[tokio::test]
    async fn the_first_close_reason_wins_and_drops_waiting_frames() {
        let q = Writer::new(10, 1000);
        q.push(&[frame("a")]).unwrap();
        q.request_close(CloseReason::TokenExpired);
        q.request_close(CloseReason::ShuttingDown);
        assert_eq!(q.closing().await, CloseReason::TokenExpired);
        assert!(q.pop().is_none());
        assert_eq!(q.push(&[frame("b")]), Err(Overflow::Closed));
        assert_eq!(q.push_control(frame("close")), Ok(()), "the close frame still goes out");
    }

    /// A connected pair of sockets: the writer's end, and the client's.
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
        let q = std::sync::Arc::new(Writer::new(100, 1 << 20));
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
        let q = std::sync::Arc::new(Writer::new(100_000, 64 << 20));
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
        let q = Writer::new(100_000, 64 << 20);
        q.attach(server);
        let big = Bytes::from(vec![b'x'; 64 << 20]);
        assert_eq!(q.push(std::slice::from_ref(&big)), Ok(()));
        assert_eq!(q.push(&[frame("next")]), Ok(()));
        assert!(q.lock().queue.started(), "64 MiB do not fit in a socket buffer");
        q.request_close(CloseReason::ShuttingDown);
        let (len, bytes) = q.lock().queue.len_and_bytes();
        assert_eq!(len, 1, "only the rest of the begun frame stays");
        assert!(bytes < big.len());
    }
}
