//! The hub: which local connections listen to which channel, and the broker's messages on
//! their way to them.
//!
//! The node, not each socket, subscribes to the broker: the first local subscriber of a
//! channel subscribes the node, the last one leaving unsubscribes it. A message from the
//! broker is checked as UTF-8 and encoded as a WebSocket frame once; every local subscriber
//! gets the same bytes. The broker hands over the messages of one read together and then
//! flushes, and each channel's share of such a batch goes to its subscribers at once, by
//! `crate::fanout`: written by this thread for a small channel, queued for the connection
//! tasks for a large one.
//!
//! Queues are bounded in frames and bytes; a subscriber whose queue is full is marked slow
//! and its connection closes itself, so one slow client never holds up the others.
//!
//! Pattern subscriptions (`patterns`) keep their own map, pattern -> connections, and their
//! messages, marked with the pattern, go out through the same batches and fan-out.
//!
//! Channels with history go through [`crate::stream`] first: messages carry an offset, the
//! hub drops duplicates, repairs gaps from the history in a task of its own (`crate::repair`:
//! the broker's reader never waits), and tells subscribers with a `reset` frame what it
//! cannot repair. Subscribers join them with recovery ([`Hub::join_recovering`],
//! [`Hub::finish_recovery`]). When the node's broker subscription comes back after a loss,
//! [`Hub::watch_reconnects`] repairs every such channel from the node's position.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_broker::{Broker, Confirmation, Delivery, Subscriber};
use herald_protocol::support::shrink;
use herald_protocol::{ChannelHistory, ChannelName};
use tokio_util::sync::CancellationToken;

use self::patterns::Patterns;
pub use self::patterns::TooManyPatterns;
use crate::fanout;
use crate::metrics::GatewayMetrics;
use crate::registry::{ConnHandle, ConnId, ConnMap};
use crate::repair::Repairs;
use crate::stream::{Event, Joined, Outcome, Pos, RepairStart, Stream};
use crate::wire;
use crate::writer::MAX_BATCH;

/// Number of independently locked parts of the channel map, so that joins and deliveries on
/// different channels do not contend.
const SHARDS: usize = 64;

/// A message received from the broker, waiting for the batch's flush.
struct Received {
    channel: Box<str>,
    /// The pattern it came through, for a pattern subscription's copy (see `patterns`).
    pattern: Option<Box<str>>,
    /// The encoded WebSocket frame, shared by every subscriber.
    frame: Bytes,
    /// The message's publish time (ms since the Unix epoch), for the latency metric; 0 if
    /// unknown.
    ts: u64,
    /// Offset and epoch, for a message of a channel with history.
    at: Option<(u64, Box<str>)>,
}

struct ChannelEntry {
    conns: ConnMap<ConnHandle>,
    /// The broker confirmed the node's subscription. Until then each joiner waits for the
    /// confirmation before it tells its client `subscribed`; the first joiner that finds it
    /// confirmed records it here, so later ones do not ask the broker.
    confirmed: bool,
    /// For a channel with history: the node's position, repairs, recovering subscribers.
    stream: Option<Box<Stream>>,
}

/// The channel map of one gateway node. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    shards: Box<[RwLock<HashMap<ChannelName, ChannelEntry>>]>,
    /// Pattern subscriptions: pattern -> local connections.
    patterns: RwLock<Patterns>,
    /// Most distinct patterns at once (`gateway.max_node_patterns`).
    max_patterns: usize,
    hasher: RandomState,
    broker: Arc<dyn Broker>,
    /// The node's broker subscription; set once, right after the hub is built, because the
    /// subscriber needs the hub (as its [`Delivery`]) to exist first.
    subscriber: OnceLock<Arc<dyn Subscriber>>,
    /// The subscription's background task (the Redis node's connection), until
    /// [`crate::serve`] takes it to run on its task tracker.
    task: Mutex<Option<BoxFuture<'static, ()>>>,
    /// Messages delivered by the broker and not yet flushed; at most [`MAX_BATCH`].
    batch: Mutex<Vec<Received>>,
    metrics: Arc<GatewayMetrics>,
    /// The tasks that fill gaps of channels with history from the history.
    repairs: Repairs,
}

/// Hands broker messages to the hub without keeping it alive.
struct HubDelivery(Weak<HubInner>);

impl Delivery for HubDelivery {
    fn deliver(&self, channel: &str, payload: Bytes) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver(channel, payload);
        }
    }

    fn deliver_at(&self, channel: &str, payload: Bytes, offset: u64, epoch: &str) {
        if let Some(hub) = self.0.upgrade() {
            hub.receive(channel, payload, Some((offset, epoch.into())));
        }
    }

    fn deliver_pattern(&self, pattern: &str, channel: &str, payload: Bytes) {
        if let Some(hub) = self.0.upgrade()
            && let Some(received) = hub.receive_pattern(pattern, channel, payload)
        {
            hub.push(received);
        }
    }

    fn flush(&self) {
        if let Some(hub) = self.0.upgrade() {
            hub.flush();
        }
    }
}

impl Hub {
    /// Builds the hub and the node's broker subscription. Spawns nothing: the subscription's
    /// background task is run by whoever takes it with [`Hub::take_task`] ([`crate::serve`]).
    pub fn new(broker: Arc<dyn Broker>, metrics: Arc<GatewayMetrics>) -> Self {
        Self::with_pattern_limit(broker, metrics, crate::GatewayConfig::default().max_node_patterns)
    }

    /// As [`Hub::new`], holding at most `max_patterns` distinct patterns at once.
    pub fn with_pattern_limit(
        broker: Arc<dyn Broker>,
        metrics: Arc<GatewayMetrics>,
        max_patterns: usize,
    ) -> Self {
        let inner = Arc::new(HubInner {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            patterns: RwLock::default(),
            max_patterns,
            hasher: RandomState::new(),
            broker,
            subscriber: OnceLock::new(),
            task: Mutex::default(),
            batch: Mutex::default(),
            metrics,
            repairs: Repairs::new(),
        });
        let (subscriber, task) = inner.broker.subscriber_task(Arc::new(HubDelivery(Arc::downgrade(&inner))));
        let _ = inner.subscriber.set(subscriber);
        *inner.task.lock().expect("hub task lock poisoned") = Some(task);
        Self { inner }
    }

    /// The node subscription's background task, once: it must run for subscriptions to be
    /// confirmed and messages to arrive, and ends after [`Subscriber::close`].
    pub fn take_task(&self) -> Option<BoxFuture<'static, ()>> {
        self.inner.task.lock().expect("hub task lock poisoned").take()
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    pub fn subscriber(&self) -> &Arc<dyn Subscriber> {
        self.inner.subscriber.get().expect("subscriber is set in Hub::new")
    }

    /// Adds `conn` to `channel`'s subscribers. The confirmation resolves once messages of the
    /// channel are guaranteed to reach this node; on error the caller must [`Hub::leave`]
    /// again.
    pub fn join(&self, channel: &ChannelName, conn: ConnHandle) -> Confirmation {
        self.join_as(channel, conn, None)
    }

    /// Adds `conn` to `channel`, a channel with history, as a subscriber that recovers: until
    /// [`Hub::finish_recovery`], what the channel delivers is kept for it (at most `max`
    /// events; beyond that its connection is closed as a slow consumer), while the connection
    /// reads the history after the confirmation. On error the caller must [`Hub::leave`].
    pub fn join_recovering(
        &self,
        channel: &ChannelName,
        conn: ConnHandle,
        history: ChannelHistory,
        max: usize,
    ) -> Confirmation {
        self.join_as(channel, conn, Some((history, max)))
    }

    /// Joins `conn`, recovering when `recovering` is given, in one step under the shard's
    /// lock: no delivery may reach a recovering connection directly before it is marked so.
    fn join_as(
        &self,
        channel: &ChannelName,
        conn: ConnHandle,
        recovering: Option<(ChannelHistory, usize)>,
    ) -> Confirmation {
        let mut shard = self.inner.shard(channel.as_str()).write().expect("hub lock poisoned");
        let entry = shard.entry(channel.clone());
        let confirmation = match &entry {
            // The first local subscriber subscribes the node.
            Entry::Vacant(_) => self.subscriber().subscribe(channel),
            Entry::Occupied(known) if known.get().confirmed => Confirmation::confirmed(),
            Entry::Occupied(_) => self.subscriber().confirmation(channel),
        };
        let entry = entry.or_insert_with(|| ChannelEntry {
            conns: ConnMap::default(),
            confirmed: false,
            stream: None,
        });
        if let Some((history, max)) = recovering {
            let stream =
                entry.stream.get_or_insert_with(|| Box::new(Stream::new(channel.clone(), history.ttl)));
            stream.joined.insert(conn.id, Joined::Recovering { events: Vec::new(), max });
        }
        entry.conns.insert(conn.id, conn);
        entry.confirmed = confirmation.is_confirmed();
        confirmation
    }

    /// Ends connection `id`'s recovery of `channel`, atomically with respect to the channel's
    /// deliveries: writes `reply` (the `subscribed` frame, if any), the `missed` messages its
    /// history read returned up to `top`, then what was kept for it after `top`, and makes it
    /// live. `false` when the connection is gone or was closed as a slow consumer.
    pub fn finish_recovery(
        &self,
        channel: &ChannelName,
        id: ConnId,
        reply: Option<Bytes>,
        missed: Vec<Bytes>,
        top: (u64, &str),
    ) -> bool {
        let mut shard = self.inner.shard(channel.as_str()).write().expect("hub lock poisoned");
        let Some(entry) = shard.get_mut(channel) else { return false };
        let (Some(conn), Some(stream)) = (entry.conns.get(&id), entry.stream.as_deref_mut()) else {
            return false;
        };
        fanout::end_recovery(conn, stream, reply, missed, top, &self.inner.metrics)
    }

    /// Removes connection `id` from `channel`; the last one out unsubscribes the node.
    pub fn leave(&self, channel: &ChannelName, id: ConnId) {
        let mut shard = self.inner.shard(channel.as_str()).write().expect("hub lock poisoned");
        let Some(entry) = shard.get_mut(channel) else { return };
        if entry.conns.remove(&id).is_none() {
            return;
        }
        if let Some(stream) = entry.stream.as_deref_mut() {
            stream.joined.remove(&id);
            shrink(&mut stream.joined);
        }
        if !entry.conns.is_empty() {
            shrink(&mut entry.conns);
            return;
        }
        shard.remove(channel);
        shrink(&mut shard);
        self.subscriber().unsubscribe(channel);
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.inner.shards.iter().map(|s| s.read().expect("hub lock poisoned").len()).sum()
    }

    /// Local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &ChannelName) -> usize {
        let shard = self.inner.shard(channel.as_str()).read().expect("hub lock poisoned");
        shard.get(channel).map_or(0, |e| e.conns.len())
    }

    /// Repairs every channel with history that has local subscribers each time the node's
    /// broker subscription becomes live again after a loss (a Redis reconnect or failover):
    /// what was published meanwhile never reached the node, and no later message may come to
    /// show the gap. Runs until `stop` is cancelled; [`crate::serve`] runs it.
    pub async fn watch_reconnects(self, stop: CancellationToken) {
        let mut status = self.subscriber().status();
        let mut live = *status.borrow_and_update();
        loop {
            tokio::select! {
                changed = status.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
            let now = *status.borrow_and_update();
            if now && !live {
                self.inner.repair_all();
            }
            live = now;
        }
    }

    /// Stops the repairs in flight and waits for them to end; after every connection ended.
    pub async fn shutdown(&self) {
        self.inner.repairs.shutdown().await;
    }
}

impl HubInner {
    fn shard(&self, channel: &str) -> &RwLock<HashMap<ChannelName, ChannelEntry>> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    fn deliver(self: &Arc<Self>, channel: &str, payload: Bytes) {
        self.receive(channel, payload, None);
    }

    fn receive(self: &Arc<Self>, channel: &str, payload: Bytes, at: Option<(u64, Box<str>)>) {
        self.metrics.messages_in.inc();
        if std::str::from_utf8(&payload).is_err() {
            tracing::warn!(channel, "dropped a broker message that is not UTF-8");
            return;
        }
        let received = Received {
            channel: channel.into(),
            pattern: None,
            ts: publish_time(&payload),
            frame: wire::text(&payload),
            at,
        };
        self.push(received);
    }

    /// Adds a message to the batch; a full batch is written at once.
    fn push(self: &Arc<Self>, received: Received) {
        let mut batch = self.batch.lock().expect("hub batch lock poisoned");
        batch.push(received);
        if batch.len() >= MAX_BATCH {
            drop(batch);
            self.flush();
        }
    }

    /// Writes the batch: per channel, its frames in order, to each subscriber at once. Frames
    /// of different channels may leave in another order than they came; the protocol orders
    /// messages per channel only.
    fn flush(self: &Arc<Self>) {
        let batch = std::mem::take(&mut *self.batch.lock().expect("hub batch lock poisoned"));
        let mut frames = Vec::new();
        for (i, first) in batch.iter().enumerate() {
            let same = |m: &&Received| m.channel == first.channel && m.pattern == first.pattern;
            if batch[..i].iter().any(|m| same(&m)) {
                continue; // sent with the first message of its channel (and pattern)
            }
            if let Some(pattern) = &first.pattern {
                frames.clear();
                frames.extend(batch[i..].iter().filter(same).map(|m| m.frame.clone()));
                self.fan_out_pattern(pattern, &frames, first.ts);
                continue;
            }
            if first.at.is_some() {
                let messages: Vec<&Received> = batch[i..].iter().filter(same).collect();
                self.fan_out_positioned(&first.channel, &messages, first.ts);
                continue;
            }
            frames.clear();
            frames.extend(batch[i..].iter().filter(same).map(|m| m.frame.clone()));
            self.fan_out(&first.channel, &frames, first.ts);
        }
    }

    fn fan_out(&self, channel: &str, frames: &[Bytes], oldest: u64) {
        let shard = self.shard(channel).read().expect("hub lock poisoned");
        let Some(entry) = shard.get(channel) else { return };
        let delivered = fanout::frames(&entry.conns, frames, &self.metrics);
        drop(shard);
        self.metrics.frames_delivered.inc_by(delivered as u64);
        if oldest > 0 {
            let now = herald_protocol::publication::now_millis();
            self.metrics.delivery_latency.observe(now.saturating_sub(oldest) as f64 / 1000.0);
        }
    }
}

impl HubInner {
    fn next_generation(&self) -> u64 {
        self.repairs.next_generation()
    }

    /// The fan-out of a channel whose messages carry positions: through its [`Stream`] first.
    fn fan_out_positioned(self: &Arc<Self>, channel: &str, messages: &[&Received], oldest: u64) {
        let mut shard = self.shard(channel).write().expect("hub lock poisoned");
        let Some(entry) = shard.get_mut(channel) else { return };
        let Some(stream) = entry.stream.as_deref_mut() else {
            // Not a channel with history here (the publisher's configuration differs):
            // delivered as it comes.
            drop(shard);
            let frames: Vec<Bytes> = messages.iter().map(|m| m.frame.clone()).collect();
            return self.fan_out(channel, &frames, oldest);
        };
        let mut events = Vec::with_capacity(messages.len());
        let mut repair = None;
        for m in messages {
            let frame = m.frame.clone();
            let Some((offset, epoch)) = &m.at else {
                events.push(Event::Plain { frame });
                continue;
            };
            let epoch = match &stream.position {
                Some(p) if *p.epoch == **epoch => p.epoch.clone(),
                _ => Arc::from(&**epoch),
            };
            let at = Pos { offset: *offset, epoch };
            if let Some(start) = stream.accept(at, frame, &mut events, || self.next_generation()) {
                repair = Some(start);
            }
        }
        self.deliver_events(entry, &events);
        drop(shard);
        if let Some(start) = repair {
            self.spawn_repair(start);
        }
        if oldest > 0 {
            let now = herald_protocol::publication::now_millis();
            self.metrics.delivery_latency.observe(now.saturating_sub(oldest) as f64 / 1000.0);
        }
    }

    /// Hands `events` to every subscriber of `entry` ([`fanout::events`]).
    fn deliver_events(&self, entry: &mut ChannelEntry, events: &[Event]) {
        if let Some(stream) = entry.stream.as_deref_mut() {
            fanout::events(&entry.conns, stream, events, &self.metrics);
        }
    }

    /// Starts the history read of a repair, as a task: the broker's reader must not wait.
    fn spawn_repair(self: &Arc<Self>, start: RepairStart) {
        self.metrics.history_repairs.inc();
        tracing::debug!(channel = %start.channel, since = start.since.offset, "repairing a gap from the history");
        let hub = Arc::downgrade(self);
        self.repairs.spawn(self.broker.clone(), start, move |start, outcome| {
            if let Some(hub) = hub.upgrade() {
                hub.finish_repair(start, outcome);
            }
        });
    }

    fn finish_repair(self: &Arc<Self>, start: RepairStart, outcome: Outcome) {
        if matches!(outcome, Outcome::Lost { .. } | Outcome::GaveUp) {
            tracing::warn!(channel = %start.channel, "a gap could not be repaired from the history; subscribers get a reset");
        }
        let mut shard = self.shard(start.channel.as_str()).write().expect("hub lock poisoned");
        let Some(entry) = shard.get_mut(&start.channel) else { return };
        let Some(stream) = entry.stream.as_deref_mut() else { return };
        let mut events = Vec::new();
        let next = stream.finish(start.generation, outcome, &mut events, || self.next_generation());
        self.deliver_events(entry, &events);
        drop(shard);
        if let Some(next) = next {
            self.spawn_repair(next);
        }
    }

    /// Repairs every channel with history and local subscribers from the node's position.
    fn repair_all(self: &Arc<Self>) {
        let mut starts = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.write().expect("hub lock poisoned");
            for entry in shard.values_mut() {
                if let Some(stream) = entry.stream.as_deref_mut()
                    && !entry.conns.is_empty()
                    && let Some(start) = stream.repair_from_position(self.next_generation())
                {
                    starts.push(start);
                }
            }
        }
        for start in starts {
            self.spawn_repair(start);
        }
    }
}

/// The `ts` field of an encoded message frame, found without parsing the JSON: publishers
/// encode `type`, `channel`, `id` and `ts` first, and none of them can contain `"ts":`.
fn publish_time(frame: &[u8]) -> u64 {
    const KEY: &[u8] = b"\"ts\":";
    let head = &frame[..frame.len().min(512)];
    let Some(at) = head.windows(KEY.len()).position(|w| w == KEY) else { return 0 };
    head[at + KEY.len()..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')))
}

mod patterns;
#[cfg(test)]
mod tests;
