//! The gateway node: its settings, hub, registry and metrics in one cheap-to-clone handle.
//! Building one starts nothing; [`crate::serve`] runs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use herald_broker::Broker;
use herald_protocol::{
    ConfigError, ConnectionObserver, EventsConfig, HistoryConfig, InboxConfig, Namespaces, NoObserver,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::AuthConfig;
use crate::auth::TokenVerifier;
use crate::config::GatewayConfig;
use crate::hub::Hub;
use crate::metrics::GatewayMetrics;
use crate::registry::Registry;

/// What the gateway knows of channels: the namespaces, the offline inbox of personal channels
/// (`[inbox]`), the limits of history reads (`[history]`) and the backends' event stream
/// (`[events]`). Built from [`Namespaces`] alone, the others take their defaults.
#[derive(Debug, Clone, Default)]
pub struct ChannelConfig {
    pub namespaces: Namespaces,
    pub inbox: InboxConfig,
    pub history: HistoryConfig,
    pub events: EventsConfig,
}

impl From<Namespaces> for ChannelConfig {
    fn from(namespaces: Namespaces) -> Self {
        Self { namespaces, ..Self::default() }
    }
}

/// A running gateway node. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Shared,
}

pub(crate) type Shared = Arc<Inner>;

pub(crate) struct Inner {
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) verifier: TokenVerifier,
    pub(crate) namespaces: Namespaces,
    /// The backend hook, when `gateway.hooks.url` is set.
    pub(crate) hooks: Option<crate::hook::Hooks>,
    /// The offline inbox: the history of personal channels.
    pub(crate) inbox: InboxConfig,
    /// Limits of history reads and idempotent publishing.
    pub(crate) history: HistoryConfig,
    /// The backends' event stream, which client publishes of namespaces with `events` enter.
    pub(crate) events: EventsConfig,
    pub(crate) hub: Hub,
    /// The history reads of recovering subscribers, shared by those that ask alike.
    pub(crate) reads: crate::recovery::Reads,
    /// Told of every connection and subscription change (presence).
    pub(crate) observer: Arc<dyn ConnectionObserver>,
    /// Prefix of this node's client ids, random per start, so ids are unique across replicas.
    pub(crate) node_id: String,
    next_conn: AtomicU64,
    /// Handshakes in progress, bounded by `gateway.max_handshakes`.
    handshakes: AtomicUsize,
    pub(crate) metrics: Arc<GatewayMetrics>,
    /// Whether the last delivery canaries came back in time, and if not, of which shards; a
    /// watch, so that readiness changes are logged when they happen.
    pub(crate) canary_ok: Arc<watch::Sender<crate::canary::CanaryState>>,
    /// Cancelled when the gateway shuts down; every connection closes with 1012.
    pub(crate) shutdown: CancellationToken,
    /// Handshake and connection tasks and the background tasks (canary, sweeper), so
    /// shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Every live connection, for the sweeper.
    pub(crate) registry: Arc<Registry>,
}

impl Gateway {
    /// Builds the gateway and its node's broker subscription; nothing runs until [`crate::serve`]
    /// starts it. Fails, naming the key, when the configuration is invalid.
    pub fn new(
        config: GatewayConfig,
        auth: &AuthConfig,
        channels: impl Into<ChannelConfig>,
        broker: Arc<dyn Broker>,
    ) -> Result<Self, ConfigError> {
        Self::with_observer(config, auth, channels, broker, Arc::new(NoObserver))
    }

    /// As [`Gateway::new`], reporting connections and subscriptions to `observer`.
    pub fn with_observer(
        config: GatewayConfig,
        auth: &AuthConfig,
        channels: impl Into<ChannelConfig>,
        broker: Arc<dyn Broker>,
        observer: Arc<dyn ConnectionObserver>,
    ) -> Result<Self, ConfigError> {
        let ChannelConfig { namespaces, inbox, history, events } = channels.into();
        config.validate()?;
        namespaces.validate()?;
        config.hooks.validate(&namespaces)?;
        let hooks = crate::hook::Hooks::new(&config.hooks)?;
        inbox.validate()?;
        history.validate()?;
        events.validate()?;
        let metrics = Arc::new(GatewayMetrics::default());
        let verifier = TokenVerifier::with_metrics(auth, metrics.jwks_fetches.clone())?;
        let node_id = format!("{:08x}", rand_u32());
        let hub = Hub::with_pattern_limit(broker, metrics.clone(), config.max_node_patterns);
        let canary_ok = Arc::new(watch::Sender::new(Err(Vec::new())));
        let shutdown = CancellationToken::new();
        let config = Arc::new(config);
        let registry = Arc::new(Registry::new());
        Ok(Self {
            shared: Arc::new(Inner {
                config,
                verifier,
                hooks,
                namespaces,
                inbox,
                history,
                events,
                hub,
                reads: Default::default(),
                observer,
                node_id,
                next_conn: AtomicU64::new(crate::canary::CANARY_CONN + 1),
                handshakes: AtomicUsize::new(0),
                metrics,
                canary_ok,
                shutdown,
                tasks: TaskTracker::new(),
                registry,
            }),
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.shared.metrics.connections.get() as usize
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.shared.metrics
    }

    /// Whether the node delivers: its broker subscriptions are live, its last delivery canary
    /// came back in time, and it is not shutting down.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// As [`Gateway::is_ready`], saying why not.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.shared.shutdown.is_cancelled() {
            Err(NotReady::ShuttingDown)
        } else if !*self.shared.hub.subscriber().status().borrow() {
            match self.shared.hub.subscriber().down_shards().as_slice() {
                [] => Err(NotReady::BrokerUnavailable),
                down => Err(NotReady::ShardsUnavailable(down.join(", "))),
            }
        } else {
            match self.shared.canary_ok.borrow().as_ref() {
                Ok(()) => Ok(()),
                Err(late) if late.is_empty() => Err(NotReady::CanaryLate),
                Err(late) => Err(NotReady::ShardCanaryLate(late.join(", "))),
            }
        }
    }

    /// Starts draining: `/readyz` turns 503 and the connections close with 1012 one after
    /// another, spread evenly over `gateway.drain_window` in random order. [`crate::serve`] does
    /// this when its shutdown resolves.
    pub fn drain(&self) {
        self.shared.shutdown.cancel();
    }

    /// The metrics in `format`, with state gauges refreshed.
    pub fn render_metrics(&self, format: herald_api_common::metrics::Format) -> String {
        let metrics = &self.shared.metrics;
        metrics.channels.set(self.shared.hub.channel_count() as i64);
        metrics.observe_reconnects(self.shared.hub.subscriber().reconnects());
        metrics.ready.set(i64::from(self.is_ready()));
        metrics.encode(format)
    }
}

/// Why a gateway is not ready: what `/readyz` answers with its 503 and the logs say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// It is draining and takes no new connections.
    #[error("shutting down")]
    ShuttingDown,
    /// Its broker (Redis Pub/Sub) subscriptions are down or being restored: messages would
    /// not reach it.
    #[error("broker unavailable: the node's subscriptions are not live")]
    BrokerUnavailable,
    /// Its delivery canary has not come back within `gateway.canary_timeout` (the first one
    /// just after start, or the last one): the broker accepts but does not deliver.
    #[error("delivery canary did not come back within gateway.canary_timeout")]
    CanaryLate,
    /// On a Redis Cluster: the subscriptions on these primaries (addresses, comma-separated)
    /// are down or being restored, typically a primary that died and whose replica has not
    /// taken over yet.
    #[error("broker unavailable: the node's subscriptions on cluster shard(s) {0} are not live")]
    ShardsUnavailable(String),
    /// On a Redis Cluster: the canaries through these primaries did not come back within
    /// `gateway.canary_timeout`.
    #[error("delivery canary of cluster shard(s) {0} did not come back within gateway.canary_timeout")]
    ShardCanaryLate(String),
}

impl Inner {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts an open connection until the guard drops.
    pub(crate) fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.metrics.connections.inc();
        self.metrics.connections_opened.inc();
        ConnectionGuard(self.clone())
    }
}

/// A handshake in progress, counted against `gateway.max_handshakes` until dropped.
pub(crate) struct HandshakeSlot(Shared);

impl HandshakeSlot {
    /// A slot, unless `gateway.max_handshakes` handshakes are in progress already.
    pub(crate) fn acquire(shared: &Shared) -> Option<Self> {
        let max = shared.config.max_handshakes;
        shared
            .handshakes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Self(shared.clone()))
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) struct ConnectionGuard(Shared);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}
