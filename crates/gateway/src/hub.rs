//! The hub: which local connections listen to which channel, and the fan-out.
//!
//! The node, not each socket, subscribes to the broker: the first local subscriber of a
//! channel subscribes the node, the last one leaving unsubscribes it. A message from the
//! broker is checked as UTF-8 once and the same bytes are queued to every local subscriber
//! (cloning [`Utf8Bytes`] only bumps a reference count). Queues are bounded in messages and bytes; a subscriber whose
//! queue is full is marked slow and its connection closes itself, so one slow client never
//! holds up the others.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock, RwLock, Weak};

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either, FutureExt, Shared};
use herald_broker::{Broker, Delivery, Subscriber};
use herald_protocol::ChannelName;
use herald_protocol::support::shrink;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::GatewayMetrics;
use crate::queue::{OutQueue, Overflow};

/// Number of independently locked parts of the channel map, so that joins and deliveries on
/// different channels do not contend.
const SHARDS: usize = 64;

/// Identifies a connection within this gateway.
pub type ConnId = u64;

/// What the hub keeps of a subscribed connection: where to queue its frames, and how to tell
/// it that it fell behind.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    /// Where the hub puts the connection's frames; bounded, and marks the connection slow
    /// when full.
    pub queue: Arc<OutQueue>,
}

impl ConnHandle {
    pub fn new(id: ConnId, queue: Arc<OutQueue>) -> Self {
        Self { id, queue }
    }
}

/// One frame waiting in a connection's queue.
#[derive(Clone)]
pub struct Outbound {
    /// The encoded frame, shared by every subscriber.
    pub frame: Utf8Bytes,
    /// The message's publish time (ms since the Unix epoch), for the latency metric; 0 if
    /// unknown.
    pub ts: u64,
}

type Pending = Shared<BoxFuture<'static, Result<(), Arc<str>>>>;

/// What [`Hub::join`] returns: the broker's pending confirmation (call [`Hub::settled`] after
/// it succeeded), or an already confirmed subscription.
pub type Join = Either<Pending, std::future::Ready<Result<(), Arc<str>>>>;

/// Whether the broker confirmed the node's subscription to a channel.
enum Confirmation {
    /// Joiners wait on the broker's answer, all on the same future.
    Pending(Pending),
    /// Confirmed; the shared future (a few hundred bytes) is dropped, which matters for the
    /// one-member personal channel every connection has.
    Done,
}

struct ChannelEntry {
    conns: HashMap<ConnId, ConnHandle>,
    /// Resolves once the broker confirmed the node's subscription; joiners wait on it before
    /// they tell their client `subscribed`.
    confirmed: Confirmation,
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
}

impl Hub {
    /// Builds the hub and starts the node's broker subscription.
    pub fn new(broker: Arc<dyn Broker>, metrics: Arc<GatewayMetrics>) -> Self {
        let inner = Arc::new(HubInner {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            broker,
            subscriber: OnceLock::new(),
            metrics,
        });
        let subscriber = inner.broker.subscriber(Arc::new(HubDelivery(Arc::downgrade(&inner))));
        let _ = inner.subscriber.set(subscriber);
        Self { inner }
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    pub fn subscriber(&self) -> &Arc<dyn Subscriber> {
        self.inner.subscriber.get().expect("subscriber is set in Hub::new")
    }

    /// Adds `conn` to `channel`'s subscribers. Resolves once messages of the channel are
    /// guaranteed to reach this node; on error the caller must [`Hub::leave`] again.
    pub fn join(&self, channel: &ChannelName, conn: ConnHandle) -> Join {
        let mut shard = self.inner.shard(channel.as_str()).write().expect("hub lock poisoned");
        let entry = shard.entry(channel.clone()).or_insert_with(|| ChannelEntry {
            conns: HashMap::new(),
            confirmed: Confirmation::Pending(
                self.subscriber()
                    .subscribe(channel)
                    .map(|r| r.map_err(|e| Arc::from(e.to_string())))
                    .boxed()
                    .shared(),
            ),
        });
        entry.conns.insert(conn.id, conn);
        if let Confirmation::Pending(pending) = &entry.confirmed
            && matches!(pending.peek(), Some(Ok(())))
        {
            entry.confirmed = Confirmation::Done;
        }
        match &entry.confirmed {
            Confirmation::Pending(pending) => Either::Left(pending.clone()),
            Confirmation::Done => Either::Right(std::future::ready(Ok(()))),
        }
    }

    /// Drops `channel`'s pending confirmation once it succeeded; called by a joiner that saw
    /// it succeed.
    pub fn settled(&self, channel: &ChannelName) {
        let mut shard = self.inner.shard(channel.as_str()).write().expect("hub lock poisoned");
        if let Some(entry) = shard.get_mut(channel)
            && let Confirmation::Pending(pending) = &entry.confirmed
            && matches!(pending.peek(), Some(Ok(())))
        {
            entry.confirmed = Confirmation::Done;
        }
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
        let ts = publish_time(&payload);
        let Ok(frame) = Utf8Bytes::try_from(payload) else {
            tracing::warn!(channel, "dropped a broker message that is not UTF-8");
            return;
        };
        let shard = self.shard(channel).read().expect("hub lock poisoned");
        let Some(entry) = shard.get(channel) else { return };
        let out = Outbound { frame, ts };
        for conn in entry.conns.values() {
            // `Full` is reported once per connection; later pushes find it closed.
            if let Err(Overflow::Full) = conn.queue.push(&out) {
                self.metrics.slow_consumers.inc();
            }
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
}
