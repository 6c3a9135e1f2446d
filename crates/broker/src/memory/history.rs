//! The in-memory engine's channel histories: per channel a bounded ring of frames with its
//! epoch and top offset, and the idempotency keys seen, each with a deadline on the tokio
//! clock (so tests can pause and advance it).
//!
//! Nothing runs in the background: every operation first drops what expired, in deadline
//! order from two ordered sets, so both maps shrink with the channels and keys in use and
//! the cost is a logarithmic step per expired item. A history that expired is gone exactly
//! as a Redis key would be: the next publish or read starts a new epoch at offset 0.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::ChannelName;
use herald_protocol::support::shrink;
use tokio::time::Instant;

use crate::BrokerError;
use crate::history::{
    HistoryFilter, HistoryOptions, HistoryPublication, HistoryResult, InboxStatus, PublishResult,
    StreamPosition, check_ack, check_since, frame_at, inbox_status, new_epoch,
};

/// Every channel's history and every idempotency key, behind the engine's history lock.
#[derive(Default)]
pub(super) struct Histories {
    streams: HashMap<ChannelName, Stream>,
    /// `(deadline, channel)` of every stream, to drop them in deadline order.
    stream_deadlines: BTreeSet<(Instant, ChannelName)>,
    /// (channel, key) -> the first publish's result.
    seen: HashMap<(ChannelName, String), Seen>,
    seen_deadlines: BTreeSet<(Instant, ChannelName, String)>,
}

struct Stream {
    epoch: String,
    /// The offset of the last publish.
    top: u64,
    /// `(offset, frame)`, oldest first, at most the publish's `size`.
    entries: VecDeque<(u64, Bytes)>,
    /// The acknowledged offset of an inbox. Part of the stream, as the Redis engine keeps it
    /// in the meta hash: it goes with its epoch.
    acked: u64,
    deadline: Instant,
}

struct Seen {
    offset: u64,
    epoch: String,
    message_id: String,
}

/// What [`Histories::publish`] decided: a frame to deliver, or a retry's earlier result.
pub(super) enum Published {
    New { result: PublishResult, frame: Bytes },
    Duplicate(PublishResult),
}

impl Histories {
    /// Drops the streams and keys whose deadline passed.
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.stream_deadlines.first() {
            if *at > now {
                break;
            }
            let (_, channel) = self.stream_deadlines.pop_first().expect("first exists");
            self.streams.remove(&channel);
            shrink(&mut self.streams);
        }
        while let Some((at, _, _)) = self.seen_deadlines.first() {
            if *at > now {
                break;
            }
            let (_, channel, key) = self.seen_deadlines.pop_first().expect("first exists");
            self.seen.remove(&(channel, key));
            shrink(&mut self.seen);
        }
    }

    /// The stream of `channel`, created with a new epoch if it has none, living until at
    /// least `deadline` (an existing stream keeps a later one unless `renew`).
    fn stream(&mut self, channel: &ChannelName, deadline: Instant, renew: bool) -> &mut Stream {
        let known = self.streams.get(channel).map(|s| s.deadline);
        let new_deadline = match known {
            None => Some(deadline),
            Some(old) if renew && old != deadline => Some(deadline),
            Some(_) => None,
        };
        if let Some(new_deadline) = new_deadline {
            if let Some(old) = known {
                self.stream_deadlines.remove(&(old, channel.clone()));
            }
            self.stream_deadlines.insert((new_deadline, channel.clone()));
        }
        let stream = self.streams.entry(channel.clone()).or_insert_with(|| Stream {
            epoch: new_epoch(),
            top: 0,
            entries: VecDeque::new(),
            acked: 0,
            deadline,
        });
        if let Some(new_deadline) = new_deadline {
            stream.deadline = new_deadline;
        }
        stream
    }

    /// Appends `payload` at the next offset, or returns the earlier result of its
    /// idempotency key. The caller delivers the frame before it lets go of the lock, so
    /// nodes see offsets in order.
    pub(super) fn publish(
        &mut self,
        channel: &ChannelName,
        message_id: &str,
        payload: &[u8],
        options: &HistoryOptions,
    ) -> Published {
        let now = Instant::now();
        self.expire(now);
        let seen =
            options.idempotency_key.as_ref().and_then(|key| self.seen.get(&(channel.clone(), key.clone())));
        if let Some(seen) = seen {
            return Published::Duplicate(PublishResult {
                offset: seen.offset,
                epoch: seen.epoch.clone(),
                message_id: seen.message_id.clone(),
                deduplicated: true,
            });
        }
        let stream = self.stream(channel, now + options.ttl, true);
        stream.top += 1;
        let offset = stream.top;
        let frame = frame_at(offset, payload);
        stream.entries.push_back((offset, frame.clone()));
        while stream.entries.len() > options.size {
            stream.entries.pop_front();
        }
        let epoch = stream.epoch.clone();
        if let Some(key) = &options.idempotency_key {
            let deadline = now + options.idempotency_ttl;
            self.seen.insert(
                (channel.clone(), key.clone()),
                Seen { offset, epoch: epoch.clone(), message_id: message_id.to_string() },
            );
            self.seen_deadlines.insert((deadline, channel.clone(), key.clone()));
        }
        let result = PublishResult { offset, epoch, message_id: message_id.to_string(), deduplicated: false };
        Published::New { result, frame }
    }

    /// Reads `channel`'s history as `filter` asks.
    pub(super) fn read(
        &mut self,
        channel: &ChannelName,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, BrokerError> {
        let now = Instant::now();
        self.expire(now);
        let stream = self.stream(channel, now + filter.ttl, false);
        let position = StreamPosition { offset: stream.top, epoch: stream.epoch.clone() };
        let after = match &filter.since {
            Some(since) => {
                let oldest = stream.entries.front().map(|(offset, _)| *offset);
                check_since(since, &position, oldest)
                    .map_err(|reason| BrokerError::Unrecoverable { reason, current: position.clone() })?;
                since.offset
            }
            None => 0,
        };
        let limit = filter.limit.unwrap_or(usize::MAX);
        let wanted = stream.entries.iter().filter(|(offset, _)| *offset > after);
        let take = |(offset, payload): &(u64, Bytes)| HistoryPublication {
            offset: *offset,
            payload: payload.clone(),
        };
        let publications = if filter.reverse {
            wanted.rev().take(limit).map(take).collect()
        } else {
            wanted.take(limit).map(take).collect()
        };
        Ok(HistoryResult { publications, position })
    }

    /// Moves `channel`'s acknowledgement forwards to `position`, if it is of the current
    /// epoch and not beyond the top; returns the acknowledged position now.
    pub(super) fn ack(
        &mut self,
        channel: &ChannelName,
        position: &StreamPosition,
        ttl: Duration,
    ) -> Result<StreamPosition, BrokerError> {
        let now = Instant::now();
        self.expire(now);
        let stream = self.stream(channel, now + ttl, false);
        let current = StreamPosition { offset: stream.top, epoch: stream.epoch.clone() };
        check_ack(position, &current)?;
        stream.acked = stream.acked.max(position.offset);
        Ok(StreamPosition { offset: stream.acked, epoch: current.epoch })
    }

    /// Where `channel`'s history and its acknowledgement stand.
    pub(super) fn inbox(&mut self, channel: &ChannelName, ttl: Duration) -> InboxStatus {
        let now = Instant::now();
        self.expire(now);
        let stream = self.stream(channel, now + ttl, false);
        let position = StreamPosition { offset: stream.top, epoch: stream.epoch.clone() };
        let oldest = stream.entries.front().map(|(offset, _)| *offset);
        inbox_status(position, stream.acked, oldest)
    }
}
