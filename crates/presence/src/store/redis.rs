//! The Redis engine: presence state in Redis hashes, changed only by Lua scripts (`lua/`).
//!
//! A report or a sweep is one script run: atomic, so every transition it finds (a user's first
//! connection, the last connection of a user leaving a channel, a lease running out) is seen
//! by that run alone, and the replica that ran it emits the event. Two replicas sweeping at
//! once split the expired gateways between them; neither emits an event twice. Time is Redis'
//! own clock (`TIME`), so replicas with skewed clocks still agree on when a lease ends.
//!
//! Events backends asked for (`[events]`) are also written into a Redis Stream by the same
//! script run (`emit` in `lua/common.lua`): atomic with the transition, so exactly once.
//!
//! Key layout: see `lua/common.lua`. Keys are computed inside the scripts, and one script
//! touches the keys of a gateway, of its users and of their channels at once (that is what
//! makes each transition seen by one run alone). On a Redis Cluster every presence key
//! therefore carries the same hash tag (the prefix is `<redis.prefix>{presence}:`), so all
//! of them are in one slot and every script runs unchanged on the primary serving it,
//! followed through failovers and slot moves by [`KeyRouter`]. Presence then lives on one
//! primary of the cluster; `docs/cluster.md` says what spreading it would take.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_broker::RedisConfig;
use herald_broker::redis::KeyRouter;
use herald_protocol::{ChannelName, EventKind, EventsConfig, UserId};
use redis::{Script, Value};
use serde_json::json;

use super::{PresenceStore, StoreError, Timings};
use crate::model::{
    Ack, Change, ChannelPresence, ConnState, Event, Info, Member, Report, ReportBody, Stats, UserPresence,
};

/// The Redis engine. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The shared connection (on a cluster: to the primary of the presence slot), opened on
    /// first use and again after it broke.
    redis: KeyRouter,
    /// Key prefix: the Redis prefix plus `presence:` (on a cluster `{presence}:`).
    prefix: String,
    /// A key of the prefix, declared to every script and routing every command to its slot.
    slot_key: String,
    /// The backends' event stream as every script reads it, its last argument (`lua/common.lua`):
    /// each presence kind written, with its stream key, and the approximate most entries.
    events: String,
    timings: Timings,
    report: Script,
    full: Script,
    full_end: Script,
    sweep: Script,
}

/// Connections per part of a full state, and connections removed per sweep or end-of-resync
/// call: each script run stays in the low milliseconds, so Redis (which also carries
/// messages) is never held for long, even by a gateway with 100000 connections.
const CHUNK: usize = 200;

fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("lua/common.lua")))
}

impl RedisStore {
    async fn report_changes(
        &self,
        report: &Report,
        changes: &[Change],
    ) -> Result<(Ack, Vec<Event>), StoreError> {
        let mut invocation = self.inner.report.prepare_invoke();
        invocation
            .arg(&self.inner.prefix)
            .arg(&*report.gateway)
            .arg(report.seq)
            .arg(millis(self.inner.timings.ttl))
            .arg(millis(self.inner.timings.grace))
            .arg(encode_changes(changes));
        match status_and_events(self.run("report", invocation).await?)? {
            (status, events) if status == "ok" => Ok((Ack::Applied, events)),
            (status, _) if status == "resync" => Ok((Ack::Resync, vec![])),
            (status, _) => Err(bad(&status)),
        }
    }

    async fn full_part(
        &self,
        report: &Report,
        first: bool,
        part: &[ConnState],
    ) -> Result<Vec<Event>, StoreError> {
        let mut invocation = self.inner.full.prepare_invoke();
        invocation
            .arg(&self.inner.prefix)
            .arg(&*report.gateway)
            .arg(if first { "1" } else { "0" })
            .arg(millis(self.inner.timings.ttl))
            .arg(millis(self.inner.timings.grace))
            .arg(encode_conns(part));
        Ok(status_and_events(self.run("full report", invocation).await?)?.1)
    }

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
        events.validate()?;
        let streams: serde_json::Map<String, serde_json::Value> = (EventKind::PRESENCE.into_iter())
            .filter_map(|kind| {
                let key = events.key(kind, &config.prefix, config.is_cluster())?;
                Some((kind.as_str().to_string(), key.into()))
            })
            .collect();
        let events = json!({"s": streams, "m": events.max_len}).to_string();
        let prefix = if config.is_cluster() {
            format!("{}{{presence}}:", config.prefix)
        } else {
            format!("{}presence:", config.prefix)
        };
        let slot_key = format!("{prefix}stats");
        let redis = KeyRouter::new(config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                redis,
                prefix,
                slot_key,
                events,
                timings,
                report: script(include_str!("lua/report.lua")),
                full: script(include_str!("lua/full.lua")),
                full_end: script(include_str!("lua/full_end.lua")),
                sweep: script(include_str!("lua/sweep.lua")),
            }),
        })
    }

    /// Runs a script for `operation`; a connection that broke is dropped so the next call
    /// reconnects.
    async fn run(
        &self,
        operation: &'static str,
        mut invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Value, StoreError> {
        invocation.key(&self.inner.slot_key).arg(&self.inner.events);
        let invocation = &invocation;
        let result = self
            .inner
            .redis
            .run(&self.inner.slot_key, operation, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await
            .map_err(|e| StoreError::unavailable(operation, e))?;
        result.map_err(|e| StoreError::unavailable(operation, e))
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let result = self
            .inner
            .redis
            .run(&self.inner.slot_key, operation, |mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .map_err(|e| StoreError::unavailable(operation, e))?;
        result.map_err(|e| StoreError::unavailable(operation, e))
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

fn info_text(i: &Info) -> Option<String> {
    i.as_deref().map(String::from)
}

/// A batch of changes as `report.lua` reads it.
fn encode_changes(changes: &[Change]) -> String {
    let info = info_text;
    let items: Vec<serde_json::Value> = changes
        .iter()
        .map(|c| match c {
            Change::Connect { conn, user, info: i } => {
                let mut v = json!({"o": "c", "k": conn.to_string(), "u": user});
                if let Some(i) = info(i) {
                    v["i"] = i.into();
                }
                v
            }
            Change::Disconnect { conn } => json!({"o": "d", "k": conn.to_string()}),
            Change::Subscribe { conn, channel } => {
                json!({"o": "s", "k": conn.to_string(), "ch": channel})
            }
            Change::Unsubscribe { conn, channel } => {
                json!({"o": "x", "k": conn.to_string(), "ch": channel})
            }
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

/// Part of a full state as `full.lua` reads it.
fn encode_conns(conns: &[ConnState]) -> String {
    let items: Vec<serde_json::Value> = conns
        .iter()
        .map(|ConnState { conn, user, info: i, channels }| {
            let mut v = json!({"k": conn.to_string(), "u": user, "c": channels});
            if let Some(i) = info_text(i) {
                v["i"] = i.into();
            }
            v
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

/// Splits `{status, events}` replies.
fn status_and_events(reply: Value) -> Result<(String, Vec<Event>), StoreError> {
    let Value::Array(parts) = reply else { return Err(bad("reply is not an array")) };
    let status = parts.first().and_then(text).ok_or_else(|| bad("status"))?;
    Ok((status, decode_events(parts.get(1).unwrap_or(&Value::Nil))?))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::UnexpectedReply(what.to_string())
}

/// Reads the events a script returned: arrays like `["join", channel, user, info]`.
fn decode_events(v: &Value) -> Result<Vec<Event>, StoreError> {
    let Value::Array(items) = v else { return Ok(vec![]) };
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(fields) = item else { return Err(bad("event is not an array")) };
        let field = |i: usize| fields.get(i).and_then(text);
        let user = || field(2).and_then(|u| UserId::parse(&u).ok()).ok_or_else(|| bad("event user"));
        let channel =
            || field(1).and_then(|c| ChannelName::parse(&c).ok()).ok_or_else(|| bad("event channel"));
        let kind = field(0).ok_or_else(|| bad("event kind"))?;
        events.push(match kind.as_str() {
            "join" => Event::Join { channel: channel()?, user: user()?, info: field(3).map(Arc::from) },
            "leave" => Event::Leave { channel: channel()?, user: user()? },
            "online" => {
                let user = field(1).and_then(|u| UserId::parse(&u).ok()).ok_or_else(|| bad("event user"))?;
                Event::Online { user, info: field(2).map(Arc::from) }
            }
            "offline" => {
                let user = field(1).and_then(|u| UserId::parse(&u).ok()).ok_or_else(|| bad("event user"))?;
                Event::Offline { user }
            }
            other => return Err(bad(other)),
        });
    }
    Ok(events)
}

#[async_trait]
impl PresenceStore for RedisStore {
    async fn report(&self, report: &Report) -> Result<(Ack, Vec<Event>), StoreError> {
        let conns = match &report.body {
            ReportBody::Changes(changes) => return self.report_changes(report, changes).await,
            ReportBody::Full(conns) => conns,
        };
        // Parts already applied stay applied; if a later part fails, the events so far are
        // returned for emission and the gateway is asked to send its full state again.
        let mut events = Vec::new();
        let parts: Vec<&[ConnState]> =
            if conns.is_empty() { vec![&[]] } else { conns.chunks(CHUNK).collect() };
        for (i, part) in parts.into_iter().enumerate() {
            match self.full_part(report, i == 0, part).await {
                Ok(more) => events.extend(more),
                Err(e) if i == 0 => return Err(e),
                Err(_) => return Ok((Ack::Resync, events)),
            }
        }
        for _ in 0..conns.len().max(100_000) / CHUNK + 2 {
            let mut invocation = self.inner.full_end.prepare_invoke();
            invocation
                .arg(&self.inner.prefix)
                .arg(&*report.gateway)
                .arg(report.seq)
                .arg(millis(self.inner.timings.ttl))
                .arg(millis(self.inner.timings.grace))
                .arg(CHUNK);
            let Ok(reply) = self.run("full report", invocation).await else {
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

    async fn sweep(&self) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        // Bounded: each call removes up to CHUNK connections; a sweep finishes a dead gateway
        // of up to 400000 connections, the next sweep goes on with anything left.
        for round in 0..2000 {
            let mut invocation = self.inner.sweep.prepare_invoke();
            invocation.arg(&self.inner.prefix).arg(millis(self.inner.timings.grace)).arg(CHUNK);
            let reply = match self.run("sweep", invocation).await {
                Ok(reply) => reply,
                Err(e) if round == 0 => return Err(e),
                Err(_) => return Ok(events),
            };
            let Value::Array(parts) = reply else { return Err(bad("sweep reply")) };
            events.extend(decode_events(parts.get(1).unwrap_or(&Value::Nil))?);
            if !matches!(parts.first(), Some(Value::Int(1))) {
                break;
            }
        }
        Ok(events)
    }

    async fn users(&self, users: &[UserId]) -> Result<Vec<UserPresence>, StoreError> {
        if users.is_empty() {
            return Ok(vec![]);
        }
        let mut pipe = redis::pipe();
        for user in users {
            pipe.hgetall(format!("{}u:{}", self.inner.prefix, user));
        }
        let replies: Vec<BTreeMap<String, i64>> = self.query("users", &pipe).await?;
        Ok(users
            .iter()
            .zip(replies)
            .map(|(user, gateways)| {
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

    /// Plain commands, not a script: each is short (a 10000-member list is an `HLEN`, one
    /// `HGETALL` and one pipeline of `HMGET`s of 1000), so a big list never holds Redis in one
    /// piece. A read is not a snapshot: a member may come or go between the commands.
    async fn channel(&self, channel: &ChannelName, limit: usize) -> Result<ChannelPresence, StoreError> {
        let key = format!("{}c:{}", self.inner.prefix, channel);
        let mut pipe = redis::pipe();
        pipe.hlen(&key);
        let (count,): (u64,) = self.query("channel", &pipe).await?;
        let mut pairs: Vec<(String, u64)> = Vec::new();
        if limit > 0 && count > 0 {
            if count <= limit as u64 {
                let mut pipe = redis::pipe();
                pipe.hgetall(&key);
                (pairs,) = self.query("channel", &pipe).await?;
            } else {
                // More members than listed: scan just enough of them (each step is short).
                let mut cursor = 0u64;
                for _ in 0..count / 100 + 10 {
                    let mut pipe = redis::pipe();
                    pipe.cmd("HSCAN").arg(&key).arg(cursor).arg("COUNT").arg(1000);
                    let ((next, found),): ((u64, Vec<(String, u64)>),) = self.query("channel", &pipe).await?;
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
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if pairs.is_empty() {
            return Ok(ChannelPresence { channel: channel.clone(), count, members: Vec::new() });
        }
        let mut pipe = redis::pipe();
        let info_key = format!("{}info", self.inner.prefix);
        for part in pairs.chunks(1000) {
            pipe.cmd("HMGET").arg(&info_key).arg(part.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>());
        }
        let infos: Vec<Vec<Option<String>>> = self.query("channel", &pipe).await?;
        let members = pairs
            .into_iter()
            .zip(infos.into_iter().flatten())
            .filter_map(|((user, connections), info)| {
                Some(Member { user: UserId::parse(&user).ok()?, connections, info: info.map(Arc::from) })
            })
            .collect();
        Ok(ChannelPresence { channel: channel.clone(), count, members })
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(format!("{}stats", self.inner.prefix)).arg("users").arg("conns");
        let ((users, conns),): ((Option<i64>, Option<i64>),) = self.query("stats", &pipe).await?;
        Ok(Stats {
            online_users: users.unwrap_or(0).max(0) as u64,
            connections: conns.unwrap_or(0).max(0) as u64,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        self.query::<(String,)>("ping", &pipe).await.map(|_| ())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
