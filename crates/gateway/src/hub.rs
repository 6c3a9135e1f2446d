//! The hub: which local connections listen to which channel, and the fan-out.
//!
//! The node, not each socket, subscribes to the broker: the first local subscriber of a
//! channel subscribes the node, the last one leaving unsubscribes it. A message from the
//! broker is checked as UTF-8 and encoded as a WebSocket frame once; every local subscriber
//! gets the same bytes (cloning [`Bytes`] only bumps a reference count). The broker hands over
//! the messages of one read together and then flushes, and each subscriber gets its share of
//! such a batch at once, in one system call.
//!
//! How a frame reaches the socket depends on the channel's size here. Up to `DIRECT_MAX` (64)
//! subscribers (a user's personal channel, a small room), the thread that read the message
//! writes it to each socket itself: no task wake-up, no hand-over to another thread. A larger
//! channel's frames are queued for the connection tasks, which every runtime thread picks up,
//! so a fan-out to thousands runs on all cores, and a connection with several frames waiting
//! writes them with one system call. Measured with `herald bench` (docs/benchmarks.md):
//! writing a 5000-subscriber fan-out from one thread cost 14 % less CPU but raised its p99
//! latency by 40 %.
//!
//! Queues are bounded in frames and bytes; a subscriber whose queue is full is marked slow
//! and its connection closes itself, so one slow client never holds up the others.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_broker::{Broker, Confirmation, Delivery, Subscriber};
use herald_protocol::ChannelName;
use herald_protocol::support::shrink;

use crate::metrics::GatewayMetrics;
use crate::registry::{ConnId, ConnMap};
use crate::wire;
use crate::writer::{MAX_BATCH, Overflow, Writer};

/// Number of independently locked parts of the channel map, so that joins and deliveries on
/// different channels do not contend.
const SHARDS: usize = 64;

/// Channels with at most this many local subscribers are written to by the thread that
/// received the message; larger ones are handed to their connection tasks, so that every
/// runtime thread writes a share.
const DIRECT_MAX: usize = 64;

/// What the hub keeps of a subscribed connection: where to write its frames, and how to tell
/// it that it fell behind.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    /// Where the hub puts the connection's frames; bounded, and marks the connection slow
    /// when full.
    pub writer: Arc<Writer>,
}

impl ConnHandle {
    pub fn new(id: ConnId, writer: Arc<Writer>) -> Self {
        Self { id, writer }
    }
}

/// A message received from the broker, waiting for the batch's flush.
struct Received {
    channel: Box<str>,
    /// The encoded WebSocket frame, shared by every subscriber.
    frame: Bytes,
    /// The message's publish time (ms since the Unix epoch), for the latency metric; 0 if
    /// unknown.
    ts: u64,
}

struct ChannelEntry {
    conns: ConnMap<ConnHandle>,
    /// The broker confirmed the node's subscription. Until then each joiner waits for the
    /// confirmation before it tells its client `subscribed`; the first joiner that finds it
    /// confirmed records it here, so later ones do not ask the broker.
    confirmed: bool,
}

/// The channel map of one gateway node. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    shards: Box<[RwLock<HashMap<ChannelName, ChannelEntry>>]>,
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
}

/// Hands broker messages to the hub without keeping it alive.
struct HubDelivery(Weak<HubInner>);

impl Delivery for HubDelivery {
    fn deliver(&self, channel: &str, payload: Bytes) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver(channel, payload);
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
        let inner = Arc::new(HubInner {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            broker,
            subscriber: OnceLock::new(),
            task: Mutex::default(),
            batch: Mutex::default(),
            metrics,
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
        let mut shard = self.inner.shard(channel.as_str()).write().expect("hub lock poisoned");
        let entry = shard.entry(channel.clone());
        let confirmation = match &entry {
            // The first local subscriber subscribes the node.
            Entry::Vacant(_) => self.subscriber().subscribe(channel),
            Entry::Occupied(known) if known.get().confirmed => Confirmation::confirmed(),
            Entry::Occupied(_) => self.subscriber().confirmation(channel),
        };
        let entry = entry.or_insert_with(|| ChannelEntry { conns: ConnMap::default(), confirmed: false });
        entry.conns.insert(conn.id, conn);
        entry.confirmed = confirmation.is_confirmed();
        confirmation
    }

    /// Removes connection `id` from `channel`; the last one out unsubscribes the node.
    pub fn leave(&self, channel: &ChannelName, id: ConnId) {
        let mut shard = self.inner.shard(channel.as_str()).write().expect("hub lock poisoned");
        let Some(entry) = shard.get_mut(channel) else { return };
        if entry.conns.remove(&id).is_none() {
            return;
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
}

impl HubInner {
    fn shard(&self, channel: &str) -> &RwLock<HashMap<ChannelName, ChannelEntry>> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    fn deliver(&self, channel: &str, payload: Bytes) {
        self.metrics.messages_in.inc();
        if std::str::from_utf8(&payload).is_err() {
            tracing::warn!(channel, "dropped a broker message that is not UTF-8");
            return;
        }
        let received =
            Received { channel: channel.into(), ts: publish_time(&payload), frame: wire::text(&payload) };
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
    fn flush(&self) {
        let batch = std::mem::take(&mut *self.batch.lock().expect("hub batch lock poisoned"));
        let mut frames = Vec::new();
        for (i, first) in batch.iter().enumerate() {
            if batch[..i].iter().any(|m| m.channel == first.channel) {
                continue; // sent with the first message of its channel
            }
            frames.clear();
            frames.extend(batch[i..].iter().filter(|m| m.channel == first.channel).map(|m| m.frame.clone()));
            self.fan_out(&first.channel, &frames, first.ts);
        }
    }

    fn fan_out(&self, channel: &str, frames: &[Bytes], oldest: u64) {
        let shard = self.shard(channel).read().expect("hub lock poisoned");
        let Some(entry) = shard.get(channel) else { return };
        // A connection with frames queued gets new ones queued behind them, so its frames
        // stay in order whichever way they go.
        let direct = entry.conns.len() <= DIRECT_MAX;
        let mut delivered = 0;
        for conn in entry.conns.values() {
            let pushed = if direct { conn.writer.push(frames) } else { conn.writer.push_queued(frames) };
            match pushed {
                Ok(()) => delivered += frames.len(),
                // `Full` is reported once per connection; later pushes find it closed.
                Err(Overflow::Full) => {
                    self.metrics.slow_consumers.inc();
                }
                Err(Overflow::Closed) => {}
            }
        }
        drop(shard);
        self.metrics.frames_delivered.inc_by(delivered as u64);
        if oldest > 0 {
            let now = herald_protocol::publication::now_millis();
            self.metrics.delivery_latency.observe(now.saturating_sub(oldest) as f64 / 1000.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_time_is_read_from_the_frame_head() {
        let ch = ChannelName::parse("room:a").unwrap();
        let data = serde_json::value::RawValue::from_string(r#"{"ts":1}"#.into()).unwrap();
        let p = herald_protocol::Publication::new(&ch, &data, None).unwrap();
        assert_eq!(publish_time(&p.encode()), p.ts);
        assert_eq!(publish_time(b"not a frame"), 0);
    }

    use crate::close::CloseReason;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// `n` attached queues in `channel`, with the client end of each one's socket. The first
    /// queue holds `first_len` frames, the others 1024.
    async fn subscribers(
        hub: &Hub,
        channel: &ChannelName,
        n: u64,
        first_len: usize,
    ) -> Vec<(Arc<Writer>, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut out = Vec::new();
        for id in 1..=n {
            let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let queue = Arc::new(Writer::new(if id == 1 { first_len } else { 1024 }, 1 << 20));
            queue.attach(listener.accept().await.unwrap().0);
            hub.join(channel, ConnHandle::new(id, queue.clone())).await.unwrap();
            out.push((queue, client));
        }
        out
    }

    /// Publishes messages `0..count` to `channel` and returns their `data` as text.
    async fn publish(hub: &Hub, channel: &ChannelName, count: usize) -> Vec<String> {
        let mut sent = Vec::new();
        for seq in 0..count {
            let data = serde_json::value::RawValue::from_string(seq.to_string()).unwrap();
            let publication = herald_protocol::Publication::new(channel, &data, None).unwrap();
            hub.broker().publish(channel, publication.encode()).await.unwrap();
            sent.push(format!("\"data\":{seq}}}"));
        }
        sent
    }

    /// Reads one text frame (shorter than 126 bytes) per entry of `expected`, and checks that
    /// it ends with that entry.
    async fn expect_frames(client: &mut TcpStream, expected: &[String]) {
        for tail in expected {
            let mut head = [0; 2];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], 0x81, "a final text frame");
            let mut payload = vec![0; usize::from(head[1])];
            client.read_exact(&mut payload).await.unwrap();
            assert!(String::from_utf8(payload).unwrap().ends_with(tail.as_str()), "expected …{tail}");
        }
    }

    #[tokio::test]
    async fn a_small_channel_is_written_without_its_connection_tasks() {
        let hub = Hub::new(Arc::new(herald_broker::MemoryBroker::new()), Arc::default());
        let channel = ChannelName::parse("room:small").unwrap();
        let mut subs = subscribers(&hub, &channel, DIRECT_MAX as u64, 16).await;
        // No connection task runs: the frames can only have been written by the publisher.
        let sent = publish(&hub, &channel, 20).await;
        for (queue, client) in &mut subs {
            expect_frames(client, &sent).await;
            assert!(queue.is_drained());
        }
    }

    #[tokio::test]
    async fn a_large_channel_goes_through_the_tasks_in_order_and_cuts_off_a_stalled_one() {
        let hub = Hub::new(Arc::new(herald_broker::MemoryBroker::new()), Arc::default());
        let channel = ChannelName::parse("room:large").unwrap();
        let mut subs = subscribers(&hub, &channel, DIRECT_MAX as u64 + 6, 16).await;
        // Every connection task drains its queue but the first one's, which is stalled.
        let tasks: Vec<_> = subs[1..]
            .iter()
            .map(|(queue, _)| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.drain(MAX_BATCH).await })
            })
            .collect();
        let sent = publish(&hub, &channel, 20).await;
        for (_, client) in &mut subs[1..] {
            expect_frames(client, &sent).await;
        }
        let stalled = &subs[0].0;
        assert_eq!(stalled.closing().await, CloseReason::SlowConsumer, "20 frames overflow a queue of 16");
        tasks.iter().for_each(|t| t.abort());
    }
}
