//! Channel history in Redis: a stream per channel, appended and published by one script.
//!
//! Keys of channel `c` (with the configured prefix `p`), all with the hash tag `{c}` so they
//! live in one Redis Cluster slot and the scripts run there unchanged:
//! - `p{c}.stream`: the frames, as a stream whose entry ids are `<offset>-0`, so a range of
//!   offsets is a direct `XRANGE`. Trimmed exactly (`MAXLEN n`, not `~`) so `history_size`
//!   is what a client can recover, not an approximation of it.
//! - `p{c}.meta`: a hash with `e`, the epoch (random, chosen when the hash is created), and
//!   `o`, the offset counter. Created by the first publish, or by a read of a channel that
//!   has none yet so the reader's position stays valid across the first publish. A missing
//!   meta means a lost history: creating it deletes whatever stream is left.
//!   A third field, `a`, is the acknowledged offset of an inbox (see below).
//! - `p{c}.idem:<key>`: the first result of an idempotency key, with its own TTL.
//!
//! The acknowledgement of an inbox (`Broker::ack`) is the field `a` of the meta hash rather
//! than a key of its own: an acknowledged offset means something only within its epoch, and
//! in the meta it lives and dies with the epoch it belongs to. It needs no epoch of its own,
//! no TTL of its own (an ack does not renew the history, so it cannot outlive it either way,
//! and a publish that renews the history renews it too), and a lost meta (a new epoch) takes
//! it along. `lua/ack.lua` checks the epoch and the top and moves `a` only forwards;
//! `lua/inbox.lua` reads epoch, top, `a` and the oldest kept offset in one step. Both create
//! the epoch of a channel that has none yet, as a history read does.
//!
//! The publish script (`lua/publish.lua`): (1) if the idempotency key is known, return its
//! result and do nothing else; (2) read or create the epoch; (3) `HINCRBY` the offset;
//! (4) build the frame once, `{"offset":N,` and the publisher's bytes after their `{`;
//! (5) `XADD` it with the offset as id and `MAXLEN size`; (6) `PEXPIRE` stream and meta by
//! the TTL; (7) remember the idempotency key; (8) `PUBLISH` to `p` + `c` (on a cluster
//! `SPUBLISH` to `p{c}`, the slot of the keys) the frame behind a
//! header, `~1 <offset> <epoch>\n`, which the node strips: subscribers get the frame, the
//! gateway learns the position without reading JSON. Channels without history keep the plain
//! frame on Pub/Sub, which never starts with `~`.
//!
//! Atomic here means what Redis gives a script: no other command runs between its steps, so
//! every reader sees the history and the Pub/Sub stream agree (a subscriber never gets
//! offset N before `XRANGE` can return it, offsets reach every node in order, and a retry
//! with the same key either sees the first publish completely or not at all). The scripts
//! declare `#!lua` so Redis refuses them up front when it is out of memory, instead of
//! failing half way and leaving an offset without its entry. It is not durability: Redis
//! acknowledges after its in-memory write. With `appendonly yes` and `appendfsync always`
//! the script's writes are on disk before the reply, so a publish answered 200 survives a
//! crash with its epoch; with `everysec` (Redis's default) up to a second of acknowledged
//! publishes can be lost, and the epoch then survives with a counter that went back: a
//! client ahead of it is told `position_ahead`. Without persistence a restart loses every
//! history and every channel gets a new epoch.
//!
//! Scripts are sent with `EVALSHA`; on `NOSCRIPT` (a restarted or failed-over Redis) the
//! `redis` crate loads the script and retries, which is safe because a `NOSCRIPT` reply
//! means nothing ran.

use bytes::Bytes;
use herald_protocol::ChannelName;
use redis::{FromRedisValue, RedisError, Script, ScriptInvocation, Value};

use super::{KeyRouter, RedisConfig};
use crate::BrokerError;
use crate::history::{
    HistoryFilter, HistoryOptions, HistoryPublication, HistoryResult, InboxStatus, PublishResult,
    StreamPosition, check_ack, check_since, inbox_status, new_epoch,
};

/// Prefix of the Pub/Sub header of a message with history.
const HEADER: &[u8] = b"~1 ";

/// The history side of the Redis engine: one multiplexed connection, made on demand and
/// dropped when it breaks.
pub(super) struct HistoryStore {
    /// Its own connection, so a history publish never waits behind the publishing
    /// connection's queue, and a script's reply (the offset) comes back to its caller. On a
    /// cluster, one per primary.
    router: KeyRouter,
    config: RedisConfig,
    publish: Script,
    read: Script,
    ack: Script,
    inbox: Script,
}

impl HistoryStore {
    pub(super) fn new(router: KeyRouter, config: RedisConfig) -> Self {
        Self {
            router,
            config,
            publish: Script::new(include_str!("lua/publish.lua")),
            read: Script::new(include_str!("lua/history.lua")),
            ack: Script::new(include_str!("lua/ack.lua")),
            inbox: Script::new(include_str!("lua/inbox.lua")),
        }
    }

    fn key(&self, channel: &ChannelName, suffix: &str) -> String {
        format!("{}{{{}}}.{suffix}", self.config.prefix, channel.as_str())
    }

    /// Runs `invocation` on the primary of `channel`'s keys. The outer error: no connection,
    /// nothing ran. A broken connection is dropped on the way, so the next call reconnects.
    /// On a cluster, a script refused because its slot moved (`MOVED`) or is being failed over
    /// (`CLUSTERDOWN`, `TRYAGAIN`) did not run: [`KeyRouter`] reads the slot map again and
    /// sends it again, to where the map names now, until `redis.response_timeout` from the
    /// first try. Map reads are rate-limited, which paces the retries. One refused with `ASK`
    /// (its keys already on the primary importing the slot) is sent there at once, after
    /// `ASKING`.
    async fn run<T: FromRedisValue>(
        &self,
        channel: &ChannelName,
        invocation: &ScriptInvocation<'_>,
        operation: &'static str,
    ) -> Result<Result<T, RedisError>, BrokerError> {
        let key = self.key(channel, "meta");
        self.router.run(&key, operation, |mut c| async move { invocation.invoke_async(&mut c).await }).await
    }

    pub(super) async fn publish(
        &self,
        channel: &ChannelName,
        message_id: &str,
        payload: &Bytes,
        options: &HistoryOptions,
    ) -> Result<PublishResult, BrokerError> {
        let mut invocation = self.publish.prepare_invoke();
        invocation.key(self.key(channel, "stream")).key(self.key(channel, "meta"));
        if let Some(key) = &options.idempotency_key {
            invocation.key(self.key(channel, &format!("idem:{key}")));
        }
        invocation
            .arg(self.config.pubsub_channel(channel.as_str()))
            .arg(&payload[1..])
            .arg(message_id)
            .arg(options.size)
            .arg(millis(options.ttl))
            .arg(millis(options.idempotency_ttl))
            .arg(new_epoch())
            .arg(if self.config.is_cluster() { "SPUBLISH" } else { "PUBLISH" });
        match self.run::<(u64, String, String, u8)>(channel, &invocation, "history publish").await? {
            Ok((offset, epoch, message_id, deduplicated)) => {
                Ok(PublishResult { offset, epoch, message_id, deduplicated: deduplicated == 1 })
            }
            Err(e) if broken(&e) => {
                Err(BrokerError::OutcomeUnknown { confirmed: 0, reason: format!("history publish: {e}") })
            }
            Err(e) => Err(BrokerError::unavailable("history publish", e)),
        }
    }

    pub(super) async fn read(
        &self,
        channel: &ChannelName,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, BrokerError> {
        let from = filter.since.as_ref().map(|s| (s.offset + 1).to_string()).unwrap_or_default();
        let limit = filter.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let expected = filter.since.as_ref().map(|s| s.epoch.as_str()).unwrap_or_default();
        let mut invocation = self.read.prepare_invoke();
        invocation
            .key(self.key(channel, "stream"))
            .key(self.key(channel, "meta"))
            .arg(from)
            .arg(limit)
            .arg(if filter.reverse { "1" } else { "0" })
            .arg(new_epoch())
            .arg(millis(filter.ttl))
            .arg(expected);
        let reply = match self.run::<Value>(channel, &invocation, "history read").await? {
            Ok(reply) => reply,
            Err(e) => return Err(BrokerError::unavailable("history read", e)),
        };
        let (position, oldest, publications) =
            parse_read(reply).ok_or_else(|| BrokerError::unavailable("history read", "unexpected reply"))?;
        if let Some(since) = &filter.since {
            check_since(since, &position, oldest)
                .map_err(|reason| BrokerError::Unrecoverable { reason, current: position.clone() })?;
        }
        Ok(HistoryResult { publications, position })
    }

    pub(super) async fn ack(
        &self,
        channel: &ChannelName,
        position: &StreamPosition,
        ttl: std::time::Duration,
    ) -> Result<StreamPosition, BrokerError> {
        let mut invocation = self.ack.prepare_invoke();
        invocation
            .key(self.key(channel, "stream"))
            .key(self.key(channel, "meta"))
            .arg(position.offset)
            .arg(&position.epoch)
            .arg(new_epoch())
            .arg(millis(ttl));
        let (epoch, top, acked) = match self.run::<(String, u64, u64)>(channel, &invocation, "ack").await? {
            Ok(reply) => reply,
            Err(e) => return Err(BrokerError::unavailable("ack", e)),
        };
        let current = StreamPosition { offset: top, epoch };
        check_ack(position, &current)?;
        Ok(StreamPosition { offset: acked, epoch: current.epoch })
    }

    pub(super) async fn inbox(
        &self,
        channel: &ChannelName,
        ttl: std::time::Duration,
    ) -> Result<InboxStatus, BrokerError> {
        let mut invocation = self.inbox.prepare_invoke();
        invocation
            .key(self.key(channel, "stream"))
            .key(self.key(channel, "meta"))
            .arg(new_epoch())
            .arg(millis(ttl));
        let (epoch, top, acked, oldest) =
            match self.run::<(String, u64, u64, u64)>(channel, &invocation, "inbox").await? {
                Ok(reply) => reply,
                Err(e) => return Err(BrokerError::unavailable("inbox", e)),
            };
        let position = StreamPosition { offset: top, epoch };
        Ok(inbox_status(position, acked, Some(oldest).filter(|o| *o > 0)))
    }
}

/// Whether `e` means the command may have run: it went out and no answer came.
fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Milliseconds of `d` for Redis, at least 1 so that a tiny TTL still expires.
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `{epoch, top, oldest, entries}` from the read script.
fn parse_read(reply: Value) -> Option<(StreamPosition, Option<u64>, Vec<HistoryPublication>)> {
    let Value::Array(items) = reply else { return None };
    let [epoch, top, oldest, entries] = <[Value; 4]>::try_from(items).ok()?;
    let position = StreamPosition { offset: int(&top)?, epoch: string(epoch)? };
    let oldest = Some(int(&oldest)?).filter(|o| *o > 0);
    let Value::Array(entries) = entries else { return None };
    let publications = entries.into_iter().map(entry).collect::<Option<Vec<_>>>()?;
    Some((position, oldest, publications))
}

/// One stream entry: `[id, [field, value]]`, the id `<offset>-0`, the field `d`.
fn entry(value: Value) -> Option<HistoryPublication> {
    let Value::Array(parts) = value else { return None };
    let [id, fields] = <[Value; 2]>::try_from(parts).ok()?;
    let offset = string(id)?.strip_suffix("-0")?.parse().ok()?;
    let Value::Array(fields) = fields else { return None };
    let [_, frame] = <[Value; 2]>::try_from(fields).ok()?;
    let Value::BulkString(frame) = frame else { return None };
    Some(HistoryPublication { offset, payload: Bytes::from(frame) })
}

fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn string(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// What a Pub/Sub payload is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Payload<'a> {
    /// A frame of a channel without history.
    Plain(&'a [u8]),
    /// A frame with its position, behind the header the publish script wrote.
    Positioned { offset: u64, epoch: &'a str, frame: &'a [u8] },
    /// A header that cannot be read; the message cannot be passed on.
    Malformed,
}

/// Reads the `~1 <offset> <epoch>\n` header of a message with history.
pub(super) fn split_payload(payload: &[u8]) -> Payload<'_> {
    let Some(rest) = payload.strip_prefix(HEADER) else {
        return if payload.first() == Some(&b'~') { Payload::Malformed } else { Payload::Plain(payload) };
    };
    let Some(end) = rest.iter().position(|b| *b == b'\n') else { return Payload::Malformed };
    let (head, frame) = (&rest[..end], &rest[end + 1..]);
    let parsed = std::str::from_utf8(head).ok().and_then(|head| {
        let (offset, epoch) = head.split_once(' ')?;
        Some((offset.parse().ok()?, epoch))
    });
    match parsed {
        Some((offset, epoch)) => Payload::Positioned { offset, epoch, frame },
        None => Payload::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_payloads_tell_their_position() {
        assert_eq!(split_payload(b"{\"a\":1}"), Payload::Plain(b"{\"a\":1}"));
        assert_eq!(
            split_payload(b"~1 42 abc\n{\"offset\":42}"),
            Payload::Positioned { offset: 42, epoch: "abc", frame: b"{\"offset\":42}" }
        );
        assert_eq!(split_payload(b"~1 x abc\n{}"), Payload::Malformed);
        assert_eq!(split_payload(b"~2 1 a\n{}"), Payload::Malformed);
    }
}
