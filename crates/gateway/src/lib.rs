//! The WebSocket gateway: holds client sockets and fans broker messages out to them.
//!
//! Layout, from the wire inwards:
//! - [`server`]: the listener: `GET /ws` (token and channel checks, then upgrade), and
//!   `/livez`, `/readyz`, `/metrics` through hyper.
//! - `connection`: one task per socket: client frames in, replies and queued frames out.
//! - `wire`: the WebSocket frames the gateway encodes itself (messages, pings).
//! - [`policy`]: who may subscribe and publish where.
//! - [`auth`]: connection tokens into an [`auth::Identity`].
//! - [`observer`]: the seam through which presence learns of connections and subscriptions.
//! - [`metrics`]: Prometheus metrics at `/metrics`; `canary` keeps `/readyz` honest by sending
//!   a message through the broker to itself.
//! - [`queue`]: each connection's write side: direct writes while the socket takes them, a
//!   bounded queue behind them, and the close requests.
//! - `sweeper`: one task keeping time for every connection: pings, heartbeat timeouts,
//!   token expiry, and the spread-out closes of a drain.
//! - [`hub`]: channel -> local connections; subscribes the node (never a socket) to the
//!   broker and hands each message's bytes, encoded once, to every local subscriber.
//!
//! Data flow: publisher -> broker -> [`hub::Hub`] (one delivery per node) -> the socket,
//! written by the hub for channels of up to 64 local subscribers, else by the connection task
//! from its bounded queue.

pub mod auth;
mod canary;
pub mod config;
mod connection;
pub mod hub;
pub mod metrics;
pub mod observer;
pub mod policy;
pub mod queue;
pub mod server;
mod sweeper;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use herald_broker::Broker;
use herald_protocol::Namespaces;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::{TokenVerifier, mint};
pub use config::{AuthConfig, GatewayConfig};
pub use hub::Hub;
pub use metrics::GatewayMetrics;
pub use observer::{ConnectionInfo, ConnectionObserver, NoObserver};
pub use server::serve;

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
    pub(crate) hub: Hub,
    /// Told of every connection and subscription change (presence).
    pub(crate) observer: Arc<dyn ConnectionObserver>,
    /// Prefix of this node's client ids, random per start, so ids are unique across replicas.
    pub(crate) node_id: String,
    next_conn: AtomicU64,
    pub(crate) metrics: Arc<GatewayMetrics>,
    /// Whether the last delivery canary came back in time.
    canary_ok: Arc<AtomicBool>,
    /// Cancelled when the gateway shuts down; every connection closes with 1012.
    pub(crate) shutdown: CancellationToken,
    /// Handshake and connection tasks, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Every live connection, for the sweeper.
    pub(crate) registry: Arc<sweeper::Registry>,
}

impl Gateway {
    /// Builds the gateway and subscribes its node to the broker. Fails, naming the key, when
    /// the configuration is invalid.
    pub fn new(
        config: GatewayConfig,
        auth: &AuthConfig,
        namespaces: Namespaces,
        broker: Arc<dyn Broker>,
    ) -> Result<Self, String> {
        Self::with_observer(config, auth, namespaces, broker, Arc::new(NoObserver))
    }

    /// As [`Gateway::new`], reporting connections and subscriptions to `observer`.
    pub fn with_observer(
        config: GatewayConfig,
        auth: &AuthConfig,
        namespaces: Namespaces,
        broker: Arc<dyn Broker>,
        observer: Arc<dyn ConnectionObserver>,
    ) -> Result<Self, String> {
        config.validate()?;
        namespaces.validate().map_err(|e| format!("namespaces: {e}"))?;
        let verifier = TokenVerifier::new(auth)?;
        let node_id = format!("{:08x}", rand_u32());
        let metrics = Arc::new(GatewayMetrics::default());
        let hub = Hub::new(broker, metrics.clone());
        let canary_ok = Arc::new(AtomicBool::new(false));
        let shutdown = CancellationToken::new();
        tokio::spawn(canary::run(
            hub.clone(),
            canary::channel(&node_id),
            config.canary_interval,
            config.canary_timeout,
            canary_ok.clone(),
            shutdown.clone(),
        ));
        let config = Arc::new(config);
        let registry = Arc::new(sweeper::Registry::new());
        tokio::spawn(sweeper::run(Arc::downgrade(&registry), config.clone(), shutdown.clone()));
        Ok(Self {
            shared: Arc::new(Inner {
                config,
                verifier,
                namespaces,
                hub,
                observer,
                node_id,
                next_conn: AtomicU64::new(canary::CANARY_CONN + 1),
                metrics,
                canary_ok,
                shutdown,
                tasks: TaskTracker::new(),
                registry,
            }),
        })
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
        !self.shared.shutdown.is_cancelled()
            && *self.shared.hub.subscriber().status().borrow()
            && self.shared.canary_ok.load(Ordering::Relaxed)
    }

    /// Starts draining: `/readyz` turns 503 and the connections close with 1012 one after
    /// another, spread evenly over `gateway.drain_window` in random order. [`serve`] does
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
