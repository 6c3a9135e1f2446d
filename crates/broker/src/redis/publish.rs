//! The publishing connection: `PUBLISH` and `PING` over one RESP connection whose writes this
//! module makes itself, so that every failure can say whether a command went out.
//!
//! A round trip is a [`Job`]: the encoded commands of one pipeline and a reply slot. The
//! requester queues it on the connection's bounded queue; the connection task writes jobs in
//! order and a reader matches replies to them in the same order. A job moves from `QUEUED` to
//! `WRITTEN` just before its first byte is written; a requester whose deadline passes while
//! its job is still `QUEUED` withdraws it, and then truthfully knows it was never sent.
//!
//! Fair sharing: [`Publisher::publish_batch`] sends a large batch as a series of pipelines of
//! at most `redis.publish_pipeline_bytes`, each queued only after the previous one was
//! answered, so the small publishes of other requests interleave between them instead of
//! waiting behind the whole batch.
//!
//! Deadlines: a round trip (including waiting for a connection) ends by `response_timeout`.
//! The connection task closes the connection when the oldest written command has been
//! waiting longer than that (Redis frozen or gone): commands queued behind it are then known
//! not to have been sent, and the next request connects anew, which includes a `PING` that
//! must be answered within `connect_timeout`, so a frozen Redis is refused quickly rather than
//! written to again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connect::{ConnectError, Endpoint};
use super::resp::{RespError, frame_len};

/// Round trips queued on one connection before a requester has to wait for room (and gives
/// up as "not sent" at its deadline). The publisher API's in-flight limits keep it far below.
const QUEUE: usize = 1024;

/// A job not yet written; its requester may still withdraw it.
const QUEUED: u8 = 0;
/// The connection began writing the job: it may take effect.
const WRITTEN: u8 = 1;
/// The requester withdrew the job before it was written.
const WITHDRAWN: u8 = 2;

/// How one round trip ended.
#[derive(Debug)]
pub(super) enum Trip {
    /// Redis answered every command without an error.
    Done,
    /// Redis answered, and refused `count - ok` of the commands with an error.
    Rejected { ok: usize, message: String },
    /// The commands were never written: nothing happened.
    NotSent(NotSent),
    /// The commands were written and no (complete) answer came: they may have taken effect.
    Unknown(Unanswered),
}

/// Why commands were never written to Redis: nothing happened, a retry is safe.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotSent {
    /// No connection could be opened. Shared by every request that waited for the attempt.
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    #[error("no connection to redis within redis.response_timeout")]
    ConnectTimeout,
    #[error("the connection to redis closed")]
    Closed,
    #[error("redis is not keeping up: the publish queue stayed full")]
    QueueFull,
    #[error("redis did not take the command within redis.response_timeout")]
    NotTaken,
}

/// Why commands that were written got no answer: they may have taken effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    #[error("the connection to redis closed before it answered")]
    Closed,
    #[error("redis did not answer within redis.response_timeout")]
    Timeout,
}

/// Redis answered a command with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis refused the command: {message}")]
pub struct Refused {
    /// Redis's error reply, such as `NOPERM ...`.
    pub message: String,
}

/// The publishing side of the Redis engine: at most one connection, made on demand.
pub(super) struct Publisher {
    endpoint: Endpoint,
    slot: Mutex<Slot>,
    /// Numbers connection attempts, so a finished attempt only replaces itself.
    attempts: AtomicU64,
    /// Closes the connection when the broker is closed.
    stop: CancellationToken,
}

enum Slot {
    Idle,
    Connecting(u64, Shared<BoxFuture<'static, Result<Conn, Arc<ConnectError>>>>),
    Ready(Conn),
}

/// A live connection's handle.
#[derive(Clone)]
struct Conn {
    jobs: mpsc::Sender<Job>,
    /// Cancelled once the connection task ended.
    closed: CancellationToken,
}

struct Job {
    /// The encoded commands.
    bytes: Bytes,
    /// How many replies they get.
    count: usize,
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<Trip>,
}

/// A written job waiting for its replies.
struct Pending {
    count: usize,
    ok: usize,
    seen: usize,
    error: Option<String>,
    written_at: Instant,
    reply: oneshot::Sender<Trip>,
}

impl Publisher {
    pub(super) fn new(endpoint: Endpoint, stop: CancellationToken) -> Self {
        Self { endpoint, slot: Mutex::new(Slot::Idle), attempts: AtomicU64::new(0), stop }
    }

    /// Publishes `commands` (already encoded, `count` of them) in one round trip, answering by
    /// `response_timeout` from now.
    pub(super) async fn round_trip(&self, bytes: Bytes, count: usize) -> Trip {
        let deadline = Instant::now() + self.endpoint.config().response_timeout;
        let conn = match self.connection(deadline).await {
            Ok(conn) => conn,
            Err(reason) => return Trip::NotSent(reason),
        };
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (tx, rx) = oneshot::channel();
        let job = Job { bytes, count, state: state.clone(), reply: tx };
        match tokio::time::timeout_at(deadline, conn.jobs.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Trip::NotSent(NotSent::Closed),
            Err(_) => return Trip::NotSent(NotSent::QueueFull),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(trip)) => trip,
            // The connection ended without answering: what it did depends on whether it
            // wrote the job.
            Ok(Err(_)) => match state.load(Ordering::Acquire) {
                QUEUED => Trip::NotSent(NotSent::Closed),
                _ => Trip::Unknown(Unanswered::Closed),
            },
            Err(_) => match state.compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => Trip::NotSent(NotSent::NotTaken),
                Err(_) => Trip::Unknown(Unanswered::Timeout),
            },
        }
    }

    /// The live connection, or a new one; waits at most until `deadline`.
    async fn connection(&self, deadline: Instant) -> Result<Conn, NotSent> {
        let (id, attempt) = {
            let mut slot = self.slot.lock().expect("publisher slot poisoned");
            match &*slot {
                Slot::Ready(conn) if !conn.closed.is_cancelled() => return Ok(conn.clone()),
                Slot::Connecting(id, attempt) => (*id, attempt.clone()),
                _ => {
                    let id = self.attempts.fetch_add(1, Ordering::Relaxed);
                    let attempt = connect(self.endpoint.clone(), self.stop.child_token()).boxed().shared();
                    *slot = Slot::Connecting(id, attempt.clone());
                    (id, attempt)
                }
            }
        };
        let result = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => return Err(NotSent::ConnectTimeout),
        };
        let mut slot = self.slot.lock().expect("publisher slot poisoned");
        if matches!(&*slot, Slot::Connecting(current, _) if *current == id) {
            *slot = match &result {
                Ok(conn) => Slot::Ready(conn.clone()),
                Err(_) => Slot::Idle,
            };
        }
        result.map_err(NotSent::Connect)
    }
}

/// Connects, authenticates, checks Redis answers (`PING`, and `ROLE` with Sentinel) within
/// `connect_timeout`, and starts the connection task.
async fn connect(endpoint: Endpoint, stop: CancellationToken) -> Result<Conn, Arc<ConnectError>> {
    let config = endpoint.config();
    let handshake = async {
        let (mut conn, addr) = endpoint.open_resp().await?;
        let failed = |source| ConnectError::Resp { addr: addr.clone(), source };
        conn.send(&[b"PING"]).await.map_err(failed)?;
        conn.next_event().await.map_err(failed)?;
        if config.sentinel_master.is_some() {
            conn.send(&[b"ROLE"]).await.map_err(failed)?;
            let role = conn.reply_strings().await.map_err(failed)?;
            if role.as_deref().and_then(<[_]>::first).is_none_or(|r| r != b"master") {
                return Err(ConnectError::NotMaster { addr });
            }
        }
        Ok(conn.into_stream())
    };
    let stream = match tokio::time::timeout(config.connect_timeout, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Arc::new(e)),
        Err(_) => return Err(Arc::new(ConnectError::Timeout)),
    };
    let (jobs, rx) = mpsc::channel(QUEUE);
    let closed = CancellationToken::new();
    let (read, write) = stream.into_split();
    let task = ConnTask {
        pending: Arc::new(Mutex::new(VecDeque::new())),
        response_timeout: config.response_timeout,
    };
    tokio::spawn(task.run(read, write, rx, stop, closed.clone()));
    Ok(Conn { jobs, closed })
}

/// The task that owns one publishing connection.
struct ConnTask {
    /// Written jobs in the order their replies come.
    pending: Arc<Mutex<VecDeque<Pending>>>,
    response_timeout: Duration,
}

impl ConnTask {
    async fn run(
        self,
        read: OwnedReadHalf,
        write: OwnedWriteHalf,
        mut jobs: mpsc::Receiver<Job>,
        stop: CancellationToken,
        closed: CancellationToken,
    ) {
        let ended = tokio::select! {
            e = self.write_loop(write, &mut jobs) => e,
            e = self.read_loop(read) => e,
            e = self.watchdog() => e,
            () = stop.cancelled() => None,
        };
        match ended {
            Some(reason) => tracing::warn!(reason = %reason, "redis publishing connection lost"),
            None => tracing::debug!("redis publishing connection closed"),
        }
        closed.cancel();
        // Written jobs: their requesters see the reply slot dropped after `WRITTEN` and answer
        // "unknown". Queued jobs are dropped unwritten: "not sent".
        self.pending.lock().expect("pending lock poisoned").clear();
        jobs.close();
        while jobs.try_recv().is_ok() {}
    }

    /// Writes jobs in order. Like the other parts of the task, it returns why the connection
    /// failed, or `None` when it ended because the broker went away.
    async fn write_loop(&self, mut write: OwnedWriteHalf, jobs: &mut mpsc::Receiver<Job>) -> Option<Lost> {
        while let Some(job) = jobs.recv().await {
            if job.state.compare_exchange(QUEUED, WRITTEN, Ordering::AcqRel, Ordering::Acquire).is_err() {
                continue;
            }
            self.pending.lock().expect("pending lock poisoned").push_back(Pending {
                count: job.count,
                ok: 0,
                seen: 0,
                error: None,
                written_at: Instant::now(),
                reply: job.reply,
            });
            if let Err(e) = write.write_all(&job.bytes).await {
                return Some(Lost::Write(e));
            }
        }
        None
    }

    async fn read_loop(&self, mut read: OwnedReadHalf) -> Option<Lost> {
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            loop {
                let used = match frame_len(&buf) {
                    Ok(Some(used)) => used,
                    Ok(None) => break,
                    Err(e) => return Some(Lost::Protocol(e)),
                };
                let error = (buf[0] == b'-').then(|| String::from_utf8_lossy(&buf[1..used - 2]).into_owned());
                buf.advance(used);
                if let Err(e) = self.answer(error) {
                    return Some(e);
                }
            }
            match read.read_buf(&mut buf).await {
                Ok(0) => return Some(Lost::Closed),
                Ok(_) => {}
                Err(e) => return Some(Lost::Read(e)),
            }
        }
    }

    /// Counts one reply towards the oldest written job, and answers the job when it is
    /// complete.
    fn answer(&self, error: Option<String>) -> Result<(), Lost> {
        let mut pending = self.pending.lock().expect("pending lock poisoned");
        let job = pending.front_mut().ok_or(Lost::StrayReply)?;
        job.seen += 1;
        match error {
            Some(e) => job.error = job.error.take().or(Some(e)),
            None => job.ok += 1,
        }
        if job.seen == job.count {
            let job = pending.pop_front().expect("front exists");
            let trip = match job.error {
                None => Trip::Done,
                Some(message) => Trip::Rejected { ok: job.ok, message },
            };
            let _ = job.reply.send(trip);
        }
        Ok(())
    }

    /// Ends the connection once its oldest written job has waited `response_timeout` for its
    /// replies. Checked four times per `response_timeout`.
    async fn watchdog(&self) -> Option<Lost> {
        let mut tick = tokio::time::interval(self.response_timeout / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let oldest = self.pending.lock().expect("pending lock poisoned").front().map(|p| p.written_at);
            if oldest.is_some_and(|at| at.elapsed() >= self.response_timeout) {
                return Some(Lost::Unanswered);
            }
        }
    }
}

/// Why a publishing connection ended, for the log.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("write failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("read failed: {0}")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] RespError),
    #[error("redis closed the connection")]
    Closed,
    #[error("a reply to no command")]
    StrayReply,
    #[error("redis did not answer within redis.response_timeout")]
    Unanswered,
}

/// Appends one command in RESP to `out`.
pub(super) fn encode(out: &mut BytesMut, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_encoded_as_resp_arrays() {
        let mut out = BytesMut::new();
        encode(&mut out, &[b"PUBLISH", b"herald:a", b"{\"x\":1}"]);
        assert_eq!(&out[..], b"*3\r\n$7\r\nPUBLISH\r\n$8\r\nherald:a\r\n$7\r\n{\"x\":1}\r\n");
    }

    #[tokio::test]
    async fn replies_complete_jobs_in_order_and_keep_errors() {
        let task = ConnTask { pending: Arc::default(), response_timeout: Duration::from_secs(1) };
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        for (count, reply) in [(2, tx1), (1, tx2)] {
            task.pending.lock().unwrap().push_back(Pending {
                count,
                ok: 0,
                seen: 0,
                error: None,
                written_at: Instant::now(),
                reply,
            });
        }
        task.answer(None).unwrap();
        task.answer(Some("NOPERM".into())).unwrap();
        task.answer(None).unwrap();
        assert!(matches!(rx1.await.unwrap(), Trip::Rejected { ok: 1, message } if message == "NOPERM"));
        assert!(matches!(rx2.await.unwrap(), Trip::Done));
        assert!(task.answer(None).is_err(), "a reply nobody asked for ends the connection");
    }
}
