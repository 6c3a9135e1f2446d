//! The hub: which local connections listen to which channel, and the fan-out.
//!
//! The node, not each socket, subscribes to the broker: the first local subscriber of a
//! channel subscribes the node, the last one leaving unsubscribes it. A message from the
//! broker is checked as UTF-8 once and the same bytes are queued to every local subscriber
//! (cloning [`Utf8Bytes`] only bumps a reference count). Queues are bounded; a subscriber whose
//! queue is full is marked slow and its connection closes itself, so one slow client never
//! holds up the others.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use herald_broker::{Broker, Delivery, Subscriber};
use herald_protocol::ChannelName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    pub outbound: mpsc::Sender<Utf8Bytes>,
    /// Cancelled when the connection's queue overflowed.
    pub slow: CancellationToken,
}

type Confirmation = Shared<BoxFuture<'static, Result<(), Arc<str>>>>;

struct ChannelEntry {
    conns: HashMap<ConnId, ConnHandle>,
    /// Resolves once the broker confirmed the node's subscription; joiners wait on it before
    /// they tell their client `subscribed`.
    confirmed: Confirmation,
}

/// Counters the hub keeps for metrics and tests.
#[derive(Default)]
pub struct HubStats {
    /// Messages received from the broker.
    pub messages_in: AtomicU64,
    /// Frames queued to connections.
    pub frames_queued: AtomicU64,
    /// Connections cut off because their queue was full.
    pub slow_consumers: AtomicU64,
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
    stats: HubStats,
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
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        let inner = Arc::new(HubInner {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            broker,
            subscriber: OnceLock::new(),
            stats: HubStats::default(),
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

    pub fn stats(&self) -> &HubStats {
        &self.inner.stats
    }

    /// Adds `conn` to `channel`'s subscribers. Resolves once messages of the channel are
    /// guaranteed to reach this node; on error the caller must [`Hub::leave`] again.
    pub fn join(
        &self,
        channel: &ChannelName,
        conn: ConnHandle,
    ) -> impl Future<Output = Result<(), Arc<str>>> {
        let mut shard = self.inner.shard(channel.as_str()).write().expect("hub lock poisoned");
        let entry = shard.entry(channel.clone()).or_insert_with(|| ChannelEntry {
            conns: HashMap::new(),
            confirmed: self
                .subscriber()
                .subscribe(channel)
                .map(|r| r.map_err(|e| Arc::from(e.to_string())))
                .boxed()
                .shared(),
        });
        entry.conns.insert(conn.id, conn);
        entry.confirmed.clone()
    }

    /// Removes connection `id` from `channel`; the last one out unsubscribes the node.
    pub fn leave(&self, channel: &ChannelName, id: ConnId) {
        let mut shard = self.inner.shard(channel.as_str()).write().expect("hub lock poisoned");
        let Some(entry) = shard.get_mut(channel) else { return };
        if entry.conns.remove(&id).is_none() || !entry.conns.is_empty() {
            return;
        }
        shard.remove(channel);
        if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
            let len = shard.len();
            shard.shrink_to(len * 2);
        }
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
        self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        let Ok(frame) = Utf8Bytes::try_from(payload) else {
            tracing::warn!(channel, "dropped a broker message that is not UTF-8");
            return;
        };
        let shard = self.shard(channel).read().expect("hub lock poisoned");
        let Some(entry) = shard.get(channel) else { return };
        let mut queued = 0;
        for conn in entry.conns.values() {
            match conn.outbound.try_send(frame.clone()) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !conn.slow.is_cancelled() {
                        conn.slow.cancel();
                        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The connection is closing and will leave the channel shortly.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.stats.frames_queued.fetch_add(queued, Ordering::Relaxed);
    }
}
