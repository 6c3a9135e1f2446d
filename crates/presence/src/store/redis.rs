//! The Redis engine: presence state in Redis hashes, changed only by Lua scripts (`lua/`).
//!
//! A report or a sweep is one script run per part (below): atomic, so every transition it
//! finds (a user's first connection, the last connection of a user leaving a channel, a
//! lease running out) is seen by that run alone, and the replica that ran it emits the event.
//! Two replicas sweeping at once split the expired gateways between them; neither emits an
//! event twice. Time is Redis' own clock (`TIME`), so replicas with skewed clocks still agree
//! on when a lease ends.
//!
//! Events backends asked for (`[events]`) are also written into a Redis Stream by the same
//! script run (`emit` in `lua/common.lua`): atomic with the transition, so exactly once.
//!
//! Key layout: see `lua/common.lua`. Keys are computed inside the scripts, and one script
//! touches the keys of a gateway, of its users and of their channels at once. How the
//! scripts' arguments are written and their replies read: `wire.rs`.
//!
//! **Parts.** Every transition concerns one user: `online`/`offline` a user's connections
//! anywhere, `join`/`leave` a user's connections in one channel. So presence splits in
//! `presence.parts` parts by user, each with every key of its users: their connections in a
//! gateway's record, their counts, their memberships (a channel's member list is one hash per
//! part), the grace-period sets, the counts and the event stream. A report goes to every
//! part, each getting the changes of its users (and the lease renewal and batch number
//! check, kept per part); a sweep sweeps every part; a read asks the parts it needs. On a
//! Redis Cluster each part has its own hash tag, `{presence:<n>}` (16 parts by default), so
//! its keys share a slot, its scripts run unchanged on the primary serving it, and the parts
//! spread over the primaries; [`KeyRouter`] follows each through failovers and slot moves.
//! With one part (the default on one Redis) the prefix is `<redis.prefix>presence:` (on a
//! cluster `<redis.prefix>{presence}:`), as before parts existed.
//!
//! Parts fail alone: a report or sweep applied by some parts and not others returns
//! [`StoreError::Partly`] with the events of those that did. The gateway sends the report
//! again with its number; the parts that applied it skip it, the others apply it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use herald_broker::RedisConfig;
use herald_broker::redis::{KeyRouter, key_slot};
use herald_protocol::{ChannelName, EventKind, EventsConfig, UserId, presence_part_tag};
use redis::{Script, Value};
use serde_json::json;

mod wire;

use self::wire::{bad, decode_events, encode_changes, encode_conns, status_and_events};
use super::{PresenceStore, StoreError, Timings};
use crate::model::{
    Ack, Change, ChannelPresence, ConnState, Event, Member, Report, ReportBody, Stats, UserPresence,
};

/// Parts of presence on a Redis Cluster unless `presence.parts` says otherwise: enough that
/// every primary of a cluster of up to about eight serves some, few enough that a report's
/// round to every part stays cheap.
pub const DEFAULT_CLUSTER_PARTS: usize = 16;

/// Most parts `presence.parts` accepts. Every report and every sweep runs a script in each.
pub const MAX_PARTS: usize = 256;

/// The Redis engine. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The shared connection (on a cluster: to the primary of each part's slot), opened on
    /// first use and again after it broke.
    redis: KeyRouter,
    parts: Vec<Part>,
    timings: Timings,
    report: Script,
    full: Script,
    full_end: Script,
    sweep: Script,
}

/// One part of presence: the keys of the users hashed to it.
struct Part {
    /// Key prefix: the Redis prefix, then `presence:` (one part), `{presence}:` (one part on
    /// a cluster) or `{presence:<n>}:` (part n of several).
    prefix: String,
    /// A key of the prefix, declared to every script and routing every command to its slot.
    slot_key: String,
    /// The backends' event stream as every script reads it, its last argument
    /// (`lua/common.lua`): each presence kind written, with its stream key in this part, and
    /// the approximate most entries.
    events: String,
}

/// Connections per part of a full state, and connections removed per sweep or end-of-resync
/// call: each script run stays in the low milliseconds, so Redis (which also carries
/// messages) is never held for long, even by a gateway with 100000 connections.
const CHUNK: usize = 200;

fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("lua/common.lua")))
}

/// What every part answered: their results in part order and all their events, or, when a
/// part failed, the error ([`StoreError::Partly`] when other parts had events to emit).
fn gather<T>(outcomes: Vec<Result<(T, Vec<Event>), StoreError>>) -> Result<(Vec<T>, Vec<Event>), StoreError> {
    let mut results = Vec::with_capacity(outcomes.len());
    let mut events = Vec::new();
    let mut failure = None;
    for outcome in outcomes {
        match outcome {
            Ok((result, more)) => {
                results.push(result);
                events.extend(more);
            }
            Err(StoreError::Partly { events: more, source }) => {
                events.extend(more);
                failure.get_or_insert(*source);
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        None => Ok((results, events)),
        Some(source) if events.is_empty() => Err(source),
        Some(source) => Err(StoreError::Partly { events, source: Box::new(source) }),
    }
}

/// The answer to a report from what its parts answered: `Resync` when any part lost the
/// gateway's state, `Applied` when all applied it.
fn ack_of(acks: &[Ack]) -> Ack {
    if acks.contains(&Ack::Resync) { Ack::Resync } else { Ack::Applied }
}

impl RedisStore {
    /// Validates the configuration (the error names the key); connections are made lazily, so
    /// this works while Redis is down. No events are written into a stream.
    pub fn new(config: RedisConfig, timings: Timings) -> Result<Self, StoreError> {
        Self::with_events(config, timings, &EventsConfig::default())
    }

    /// As [`RedisStore::new`], also writing the presence events `events` asks for into their
    /// stream, each in the script that makes the transition.
    pub fn with_events(
        config: RedisConfig,
        timings: Timings,
        events: &EventsConfig,
    ) -> Result<Self, StoreError> {
        Self::with_parts(config, timings, events, None)
    }

    /// As [`RedisStore::with_events`], split in `parts` parts (`presence.parts`; by default
    /// [`DEFAULT_CLUSTER_PARTS`] on a cluster, one otherwise). Every presence replica must use
    /// the same number.
    pub fn with_parts(
        config: RedisConfig,
        timings: Timings,
        events: &EventsConfig,
        parts: Option<usize>,
    ) -> Result<Self, StoreError> {
        events.validate()?;
        let count = parts.unwrap_or(if config.is_cluster() { DEFAULT_CLUSTER_PARTS } else { 1 });
        if !(1..=MAX_PARTS).contains(&count) {
            let message = format!("{count} must be 1 to {MAX_PARTS}");
            return Err(herald_protocol::ConfigError::new("presence.parts", message).into());
        }
        let cluster = config.is_cluster();
        let part = |n: usize| {
            let (prefix, key) = if count == 1 {
                let tag = if cluster { "{presence}" } else { "presence" };
                (format!("{}{tag}:", config.prefix), None)
            } else {
                (format!("{}{}:", config.prefix, presence_part_tag(n)), Some(n))
            };
            let stream = |kind| match key {
                None => events.key(kind, &config.prefix, cluster),
                Some(n) => events.part_key(kind, &config.prefix, n),
            };
            let streams: serde_json::Map<String, serde_json::Value> = (EventKind::PRESENCE.into_iter())
                .filter_map(|kind| Some((kind.as_str().to_string(), stream(kind)?.into())))
                .collect();
            let events = json!({"s": streams, "m": events.max_len}).to_string();
            Part { slot_key: format!("{prefix}stats"), prefix, events }
        };
        let parts = (0..count).map(part).collect();
        let redis = KeyRouter::new(config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                redis,
                parts,
                timings,
                report: script(include_str!("lua/report.lua")),
                full: script(include_str!("lua/full.lua")),
                full_end: script(include_str!("lua/full_end.lua")),
                sweep: script(include_str!("lua/sweep.lua")),
            }),
        })
    }

    /// How many parts presence is split in.
    pub fn parts(&self) -> usize {
        self.inner.parts.len()
    }

    /// The part holding `user`'s keys.
    fn part_of(&self, user: &str) -> usize {
        match self.inner.parts.len() {
            1 => 0,
            n => usize::from(key_slot(user.as_bytes())) % n,
        }
    }

    /// `items` sorted into their parts (by `user`), each part's in their order.
    fn by_part<'a, T>(
        &self,
        items: impl IntoIterator<Item = &'a T>,
        user: impl Fn(&T) -> &str,
    ) -> Vec<Vec<&'a T>> {
        let mut parts: Vec<Vec<&T>> = (0..self.inner.parts.len()).map(|_| Vec::new()).collect();
        for item in items {
            parts[self.part_of(user(item))].push(item);
        }
        parts
    }

    /// `script` for `report`'s gateway in `part`, with the arguments `report.lua`, `full.lua`
    /// and `full_end.lua` share: prefix, gateway, `third`, ttl, grace, `last`.
    fn gateway_script<'s>(
        &self,
        script: &'s Script,
        part: &Part,
        report: &Report,
        third: impl redis::ToRedisArgs,
        last: impl redis::ToRedisArgs,
    ) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        invocation
            .arg(&part.prefix)
            .arg(&*report.gateway)
            .arg(third)
            .arg(millis(self.inner.timings.ttl))
            .arg(millis(self.inner.timings.grace))
            .arg(last);
        invocation
    }

    async fn report_changes(
        &self,
        report: &Report,
        changes: &[Change],
    ) -> Result<(Ack, Vec<Event>), StoreError> {
        let slices = self.by_part(changes, |c| c.user().as_str());
        let runs = self.inner.parts.iter().zip(slices).map(|(part, slice)| async move {
            let invocation =
                self.gateway_script(&self.inner.report, part, report, report.seq, encode_changes(&slice));
            match status_and_events(self.run(part, "report", invocation).await?)? {
                (status, events) if status == "ok" => Ok((Ack::Applied, events)),
                (status, _) if status == "resync" => Ok((Ack::Resync, vec![])),
                (status, _) => Err(bad(&status)),
            }
        });
        let (acks, events) = gather(join_all(runs).await)?;
        Ok((ack_of(&acks), events))
    }

    /// A full state in one part: `conns` (those of the part's users) in chunks, then the end,
    /// which removes the connections not mentioned. A part that failed after its first chunk
    /// asks for the full state again (`Resync`), keeping the events of what it applied.
    async fn full_in(
        &self,
        part: &Part,
        report: &Report,
        conns: &[&ConnState],
    ) -> Result<(Ack, Vec<Event>), StoreError> {
        let mut events = Vec::new();
        let chunks: Vec<&[&ConnState]> =
            if conns.is_empty() { vec![&[]] } else { conns.chunks(CHUNK).collect() };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let first = if i == 0 { "1" } else { "0" };
            let invocation = self.gateway_script(&self.inner.full, part, report, first, encode_conns(chunk));
            match self.run(part, "full report", invocation).await {
                Ok(reply) => events.extend(status_and_events(reply)?.1),
                Err(e) if i == 0 => return Err(e),
                Err(_) => return Ok((Ack::Resync, events)),
            }
        }
        for _ in 0..conns.len().max(100_000) / CHUNK + 2 {
            let invocation = self.gateway_script(&self.inner.full_end, part, report, report.seq, CHUNK);
            let Ok(reply) = self.run(part, "full report", invocation).await else {
                return Ok((Ack::Resync, events));
            };
            let (status, more) = status_and_events(reply)?;
            events.extend(more);
            if status == "ok" {
                return Ok((Ack::Applied, events));
            }
        }
        Ok((Ack::Resync, events))
    }

    /// Sweeps one part. Bounded: each call removes up to CHUNK connections; a sweep finishes
    /// a dead gateway of up to 400000 connections, the next sweep goes on with anything left.
    async fn sweep_in(&self, part: &Part) -> Result<((), Vec<Event>), StoreError> {
        let mut events = Vec::new();
        for round in 0..2000 {
            let mut invocation = self.inner.sweep.prepare_invoke();
            invocation.arg(&part.prefix).arg(millis(self.inner.timings.grace)).arg(CHUNK);
            let reply = match self.run(part, "sweep", invocation).await {
                Ok(reply) => reply,
                Err(e) if round == 0 => return Err(e),
                Err(e) => return Err(StoreError::Partly { events, source: Box::new(e) }),
            };
            let Value::Array(parts) = reply else { return Err(bad("sweep reply")) };
            events.extend(decode_events(parts.get(1).unwrap_or(&Value::Nil))?);
            if !matches!(parts.first(), Some(Value::Int(1))) {
                break;
            }
        }
        Ok(((), events))
    }

    /// Runs a script in `part` for `operation`; a connection that broke is dropped so the
    /// next call reconnects.
    async fn run(
        &self,
        part: &Part,
        operation: &'static str,
        mut invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Value, StoreError> {
        invocation.key(&part.slot_key).arg(&part.events);
        let invocation = &invocation;
        let result = self
            .inner
            .redis
            .run(
                &part.slot_key,
                operation,
                |mut conn| async move { invocation.invoke_async(&mut conn).await },
            )
            .await
            .map_err(|e| StoreError::unavailable(operation, e))?;
        result.map_err(|e| StoreError::unavailable(operation, e))
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        part: &Part,
        operation: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let result = self
            .inner
            .redis
            .run(&part.slot_key, operation, |mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .map_err(|e| StoreError::unavailable(operation, e))?;
        result.map_err(|e| StoreError::unavailable(operation, e))
    }

    /// The members of `channel` in `part`: their number, and at most `limit` of them with
    /// their connections, sorted. Plain commands, not a script: each is short (a
    /// 10000-member list is an `HLEN` and one `HGETALL`, or a few `HSCAN`s), so a big list
    /// never holds Redis in one piece. A read is not a snapshot: a member may come or go
    /// between the commands.
    async fn members_in(
        &self,
        part: &Part,
        channel: &ChannelName,
        limit: usize,
    ) -> Result<(u64, Vec<(String, u64)>), StoreError> {
        let key = format!("{}c:{}", part.prefix, channel);
        let mut pipe = redis::pipe();
        pipe.hlen(&key);
        let (count,): (u64,) = self.query(part, "channel", &pipe).await?;
        let mut pairs: Vec<(String, u64)> = Vec::new();
        if limit > 0 && count > 0 {
            if count <= limit as u64 {
                let mut pipe = redis::pipe();
                pipe.hgetall(&key);
                (pairs,) = self.query(part, "channel", &pipe).await?;
            } else {
                // More members than listed: scan just enough of them (each step is short).
                let mut cursor = 0u64;
                for _ in 0..count / 100 + 10 {
                    let mut pipe = redis::pipe();
                    pipe.cmd("HSCAN").arg(&key).arg(cursor).arg("COUNT").arg(1000);
                    let ((next, found),): ((u64, Vec<(String, u64)>),) =
                        self.query(part, "channel", &pipe).await?;
                    pairs.extend(found);
                    cursor = next;
                    if cursor == 0 || pairs.len() >= limit {
                        break;
                    }
                }
                pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                pairs.dedup_by(|a, b| a.0 == b.0);
                pairs.truncate(limit);
            }
        }
        Ok((count, pairs))
    }

    /// The `info` of `users`, all of `part`, in their order: one pipeline of `HMGET`s of 1000.
    async fn infos_in(&self, part: &Part, users: &[&str]) -> Result<Vec<Option<String>>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let info_key = format!("{}info", part.prefix);
        for chunk in users.chunks(1000) {
            pipe.cmd("HMGET").arg(&info_key).arg(chunk);
        }
        let infos: Vec<Vec<Option<String>>> = self.query(part, "channel", &pipe).await?;
        Ok(infos.into_iter().flatten().collect())
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

#[async_trait]
impl PresenceStore for RedisStore {
    async fn report(&self, report: &Report) -> Result<(Ack, Vec<Event>), StoreError> {
        let conns = match &report.body {
            ReportBody::Changes(changes) => return self.report_changes(report, changes).await,
            ReportBody::Full(conns) => conns,
        };
        // Every part gets the state of its users, an empty one included: that renews the
        // gateway's lease there and sets its batch number.
        let slices = self.by_part(conns, |c| c.user.as_str());
        let runs =
            (self.inner.parts.iter().zip(&slices)).map(|(part, slice)| self.full_in(part, report, slice));
        let (acks, events) = gather(join_all(runs).await)?;
        Ok((ack_of(&acks), events))
    }

    async fn sweep(&self) -> Result<Vec<Event>, StoreError> {
        let runs = self.inner.parts.iter().map(|part| self.sweep_in(part));
        Ok(gather(join_all(runs).await)?.1)
    }

    async fn users(&self, users: &[UserId]) -> Result<Vec<UserPresence>, StoreError> {
        let slices = self.by_part(users, |u| u.as_str());
        let runs = (self.inner.parts.iter().zip(&slices)).filter(|(_, slice)| !slice.is_empty()).map(
            |(part, slice)| async move {
                let mut pipe = redis::pipe();
                for user in slice {
                    pipe.hgetall(format!("{}u:{}", part.prefix, user));
                }
                let found: Vec<BTreeMap<String, i64>> = self.query(part, "users", &pipe).await?;
                Ok::<_, StoreError>(slice.iter().map(|u| u.as_str()).zip(found).collect::<Vec<_>>())
            },
        );
        let mut found: BTreeMap<&str, BTreeMap<String, i64>> = BTreeMap::new();
        for part in join_all(runs).await {
            found.extend(part?);
        }
        Ok(users
            .iter()
            .map(|user| {
                let gateways = found.get(user.as_str()).cloned().unwrap_or_default();
                let connections = gateways.values().map(|n| (*n).max(0) as u64).sum();
                UserPresence {
                    user: user.clone(),
                    online: connections > 0,
                    connections,
                    gateways: gateways.into_iter().filter(|(_, n)| *n > 0).map(|(g, _)| g).collect(),
                }
            })
            .collect())
    }

    /// A channel's members are spread over the parts with their users: each part's are read
    /// (see `RedisStore::members_in`), the first `limit` by user id kept, and their `info`
    /// read from their parts.
    async fn channel(&self, channel: &ChannelName, limit: usize) -> Result<ChannelPresence, StoreError> {
        let runs = self.inner.parts.iter().map(|part| self.members_in(part, channel, limit));
        let mut count = 0;
        let mut pairs: Vec<(String, u64)> = Vec::new();
        for part in join_all(runs).await {
            let (n, found) = part?;
            count += n;
            pairs.extend(found);
        }
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        pairs.truncate(limit);
        let slices = self.by_part(&pairs, |(user, _)| user.as_str());
        let runs = (self.inner.parts.iter().zip(&slices)).map(|(part, slice)| async move {
            let users: Vec<&str> = slice.iter().map(|(user, _)| user.as_str()).collect();
            let infos = self.infos_in(part, &users).await?;
            Ok::<_, StoreError>(users.into_iter().zip(infos).collect::<Vec<_>>())
        });
        let mut infos: BTreeMap<&str, Option<String>> = BTreeMap::new();
        for part in join_all(runs).await {
            infos.extend(part?);
        }
        let members = pairs
            .iter()
            .filter_map(|(user, connections)| {
                let info = infos.get(user.as_str()).cloned().flatten();
                Some(Member {
                    user: UserId::parse(user).ok()?,
                    connections: *connections,
                    info: info.map(Arc::from),
                })
            })
            .collect();
        Ok(ChannelPresence { channel: channel.clone(), count, members })
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let runs = self.inner.parts.iter().map(|part| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET").arg(format!("{}stats", part.prefix)).arg("users").arg("conns");
            let ((users, conns),): ((Option<i64>, Option<i64>),) = self.query(part, "stats", &pipe).await?;
            Ok::<_, StoreError>((users.unwrap_or(0).max(0) as u64, conns.unwrap_or(0).max(0) as u64))
        });
        let mut stats = Stats { online_users: 0, connections: 0 };
        for part in join_all(runs).await {
            let (users, conns) = part?;
            stats.online_users += users;
            stats.connections += conns;
        }
        Ok(stats)
    }

    /// Every part answers (on a cluster, every primary serving a part).
    async fn ping(&self) -> Result<(), StoreError> {
        let runs = self.inner.parts.iter().map(|part| async move {
            let mut pipe = redis::pipe();
            pipe.cmd("PING");
            self.query::<(String,)>(part, "ping", &pipe).await.map(|_| ())
        });
        join_all(runs).await.into_iter().collect()
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
