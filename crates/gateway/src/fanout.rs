//! Fan-out: how the frames of one channel reach its local subscribers, once the hub found
//! them in its channel map (and holds the shard's lock).
//!
//! Every subscriber gets the same encoded bytes (cloning [`Bytes`] only bumps a reference
//! count), its share of a batch at once, in one system call. How a frame reaches the socket
//! depends on the channel's size here. Up to [`DIRECT_MAX`] (64) subscribers (a user's
//! personal channel, a small room), the thread that read the message writes it to each socket
//! itself: no task wake-up, no hand-over to another thread. A larger channel's frames are
//! queued for the connection tasks, which every runtime thread picks up, so a fan-out to
//! thousands runs on all cores, and a connection with several frames waiting writes them with
//! one system call. Measured with `herald bench` (docs/benchmarks.md): writing a
//! 5000-subscriber fan-out from one thread cost 14 % less CPU but raised its p99 latency by
//! 40 %.
//!
//! A channel with history hands out the events of its [`Stream`] instead ([`events`]): the
//! subscribers in step with the node all get the same frames; one still recovering keeps
//! them until its history read is written ([`end_recovery`]); one ahead of the node skips
//! what it has.

use bytes::Bytes;

use crate::close::CloseReason;
use crate::metrics::GatewayMetrics;
use crate::registry::{ConnHandle, ConnMap};
use crate::stream::{Event, Joined, Pos, Stream, Tail};
use crate::writer::Overflow;

/// Channels with at most this many local subscribers are written to by the thread that
/// received the message; larger ones are handed to their connection tasks, so that every
/// runtime thread writes a share.
pub(crate) const DIRECT_MAX: usize = 64;

/// Hands `frames` to each of `conns`, a channel's subscribers; returns how many frames were
/// delivered. A connection with frames queued gets new ones queued behind them, so its
/// frames stay in order whichever way they go.
pub(crate) fn frames(conns: &ConnMap<ConnHandle>, frames: &[Bytes], metrics: &GatewayMetrics) -> usize {
    let direct = conns.len() <= DIRECT_MAX;
    let mut delivered = 0;
    for conn in conns.values() {
        let pushed = if direct { conn.writer.push(frames) } else { conn.writer.push_queued(frames) };
        match pushed {
            Ok(()) => delivered += frames.len(),
            // `Full` is reported once per connection; later pushes find it closed.
            Err(Overflow::Full) => {
                metrics.slow_consumers.inc();
            }
            Err(Overflow::Closed) => {}
        }
    }
    delivered
}

/// Hands `events` of `stream` to its subscribers `conns`: those in step with the node get
/// every message and reset, the others what their own state needs.
pub(crate) fn events(
    conns: &ConnMap<ConnHandle>,
    stream: &mut Stream,
    events: &[Event],
    metrics: &GatewayMetrics,
) {
    if events.is_empty() {
        return;
    }
    let mut event_resets = 0;
    let frames: Vec<Bytes> = events
        .iter()
        .filter_map(|e| match e {
            Event::Msg { frame, .. } | Event::Plain { frame } => Some(frame.clone()),
            Event::Reset { frame, .. } => {
                event_resets += 1;
                Some(frame.clone())
            }
            Event::Old { .. } => None,
        })
        .collect();
    let mut resets = 0;
    let direct = conns.len() <= DIRECT_MAX;
    let mut delivered = 0;
    let mut push = |conn: &ConnHandle, frames: &[Bytes]| {
        if frames.is_empty() {
            return;
        }
        let pushed = if direct { conn.writer.push(frames) } else { conn.writer.push_queued(frames) };
        match pushed {
            Ok(()) => delivered += frames.len(),
            Err(Overflow::Full) => {
                metrics.slow_consumers.inc();
            }
            Err(Overflow::Closed) => {}
        }
    };
    let mut in_step = 0;
    for conn in conns.values() {
        if stream.joined.is_empty() || !stream.joined.contains_key(&conn.id) {
            push(conn, &frames);
            in_step += 1;
        }
    }
    let mut caught_up = Vec::new();
    for (id, joined) in &mut stream.joined {
        let Some(conn) = conns.get(id) else { continue };
        match joined {
            Joined::Recovering { events: kept, max } => {
                if kept.len() + events.len() > *max {
                    conn.writer.request_close(CloseReason::SlowConsumer);
                    metrics.slow_consumers.inc();
                    *joined = Joined::Overflowed;
                } else {
                    kept.extend(events.iter().cloned());
                }
            }
            Joined::CatchingUp(tail) => {
                let mut out = Vec::new();
                for event in events {
                    resets += tail.step(&stream.channel, event, &mut out);
                }
                push(conn, &out);
                if stream.position.as_ref() == Some(&tail.0) {
                    caught_up.push(*id);
                }
            }
            Joined::Overflowed => {}
        }
    }
    for id in caught_up {
        stream.joined.remove(&id);
    }
    metrics.history_resets.inc_by((event_resets * in_step + resets) as u64);
    metrics.frames_delivered.inc_by(delivered as u64);
}

/// Ends the recovery of `conn` in `stream`: writes `reply` (the `subscribed` frame, if any),
/// the `missed` messages its history read returned up to `top`, then what was kept for it
/// after `top`, and makes it live. `false` when it was not recovering, or its connection is
/// gone or was closed as a slow consumer.
pub(crate) fn end_recovery(
    conn: &ConnHandle,
    stream: &mut Stream,
    reply: Option<Bytes>,
    mut missed: Vec<Bytes>,
    top: (u64, &str),
    metrics: &GatewayMetrics,
) -> bool {
    let id = conn.id;
    let Some(Joined::Recovering { events, .. }) = stream.joined.remove(&id) else { return false };
    if let Some(reply) = reply
        && conn.writer.push_control(reply).is_err()
    {
        return false;
    }
    let mut tail = Tail(Pos::new(top.0, top.1));
    let mut resets = 0;
    for event in &events {
        resets += tail.step(&stream.channel, event, &mut missed);
    }
    metrics.history_resets.inc_by(resets as u64);
    if !missed.is_empty() {
        match conn.writer.push_recovered(&missed) {
            Ok(()) => {
                metrics.frames_delivered.inc_by(missed.len() as u64);
            }
            Err(Overflow::Full) => {
                metrics.slow_consumers.inc();
                return false;
            }
            Err(Overflow::Closed) => return false,
        }
    }
    match &stream.position {
        // The first subscriber to finish: the node starts from its position, so that a gap
        // before the node's first message can be repaired too.
        None => stream.position = Some(tail.0),
        Some(position) if *position == tail.0 => {}
        _ => {
            stream.joined.insert(id, Joined::CatchingUp(tail));
        }
    }
    true
}
