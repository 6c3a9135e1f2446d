//! Prometheus metrics of one gateway, served at `GET /metrics`.
//!
//! Counters are plain atomics (cloning a handle is an `Arc` bump), bumped where things happen;
//! gauges that mirror state (channels, Redis reconnects) are refreshed at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use herald_api_common::metrics::{Format, MetricsRegistry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// The WebSocket close code, or `gone` when the client vanished without one.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// Which limit: `frame_rate` (a client frame held back), `frame_rate_close` (a connection
    /// closed with 4029), `max_handshakes` (a connection refused with 503),
    /// `handshake_timeout` (a request head not complete in time), `max_data_depth` (a
    /// publish refused).
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The error code of the refusal (`unauthorized`, `token_expired`, `forbidden`, ...).
    pub code: &'static str,
    /// How it was answered: `http` (an HTTP error) or `close` (an upgrade closed at once).
    pub via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksFetchLabels {
    /// `ok`, or `error` (the last good key set was kept).
    pub result: &'static str,
}

/// Every metric a gateway exports.
pub struct GatewayMetrics {
    registry: MetricsRegistry,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_opened: Counter,
    /// Channel subscriptions held by connections, server-managed ones included.
    pub subscriptions: Gauge,
    /// Channels with at least one local subscriber (refreshed at scrape).
    pub channels: Gauge,
    /// Messages received from the broker.
    pub messages_in: Counter,
    /// Message frames written to sockets or queued for writing.
    pub frames_delivered: Counter,
    /// Connections closed because their queue overflowed.
    pub slow_consumers: Counter,
    /// Connections closed by the server, by close code.
    pub closes: Family<CloseLabels, Counter>,
    /// Times a limit was hit, by limit.
    pub limit_hits: Family<LimitLabels, Counter>,
    /// Times the node's broker subscription connection was re-established.
    pub broker_reconnects: Counter,
    /// Seconds from a message's publish timestamp to the gateway having written or queued it
    /// for every local subscriber, observed once per channel and broker read, for its oldest
    /// message.
    pub delivery_latency: Histogram,
    /// 1 while the gateway reports ready.
    pub ready: Gauge,
    /// Gaps in a channel with history that the node started to fill from the history (after
    /// a lost message, or its broker subscription coming back).
    pub history_repairs: Counter,
    /// `reset` frames sent to clients: messages of a channel with history were lost and could
    /// not be recovered (epoch changed, gap out of the window or not repaired in time).
    pub history_resets: Counter,
    /// Handshakes refused for their `Origin` (HTTP 403, never upgraded).
    pub origin_refusals: Counter,
    /// `/ws` handshakes refused after the origin check, by error code and answer.
    pub handshake_refusals: Family<RefusalLabels, Counter>,
    /// TLS handshakes that failed or timed out (`gateway.tls`): clients that do not trust the
    /// certificate, or speak plain HTTP to the TLS port.
    pub tls_handshake_failures: Counter,
    /// Fetches of the JWKS key set (`auth.jwks_url`), by result; the verifier counts them.
    pub jwks_fetches: Family<JwksFetchLabels, Counter>,
    /// Reconnects already added to `broker_reconnects`.
    reconnects_seen: AtomicU64,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: MetricsRegistry::new("gateway", "herald_gateway"),
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            subscriptions: Gauge::default(),
            channels: Gauge::default(),
            messages_in: Counter::default(),
            frames_delivered: Counter::default(),
            slow_consumers: Counter::default(),
            closes: Family::default(),
            limit_hits: Family::default(),
            broker_reconnects: Counter::default(),
            delivery_latency: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            ready: Gauge::default(),
            history_repairs: Counter::default(),
            history_resets: Counter::default(),
            origin_refusals: Counter::default(),
            handshake_refusals: Family::default(),
            tls_handshake_failures: Counter::default(),
            jwks_fetches: Family::default(),
            reconnects_seen: AtomicU64::new(0),
        };
        let registry = metrics.registry.registry_mut();
        registry.register("connections", "Open WebSocket connections", metrics.connections.clone());
        registry.register("connections_opened", "Connections accepted", metrics.connections_opened.clone());
        registry.register(
            "subscriptions",
            "Channel subscriptions held by connections",
            metrics.subscriptions.clone(),
        );
        registry.register("channels", "Channels with local subscribers", metrics.channels.clone());
        registry.register("messages_in", "Messages received from the broker", metrics.messages_in.clone());
        registry.register(
            "frames_delivered",
            "Message frames written to sockets or queued for writing",
            metrics.frames_delivered.clone(),
        );
        registry.register(
            "slow_consumers",
            "Connections closed as slow consumers",
            metrics.slow_consumers.clone(),
        );
        registry.register(
            "closes",
            "Connections closed by the server, by close code",
            metrics.closes.clone(),
        );
        registry.register("limit_hits", "Times a limit was hit, by limit", metrics.limit_hits.clone());
        registry.register(
            "broker_reconnects",
            "Re-established broker (Redis Pub/Sub) connections",
            metrics.broker_reconnects.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Publish timestamp to the message written or queued for every local subscriber",
            metrics.delivery_latency.clone(),
        );
        registry.register("ready", "1 while the gateway reports ready", metrics.ready.clone());
        registry.register(
            "history_repairs",
            "Gaps in channels with history the gateway filled (or tried to) from the history",
            metrics.history_repairs.clone(),
        );
        registry.register(
            "history_resets",
            "Reset frames sent: messages of a channel with history lost for good",
            metrics.history_resets.clone(),
        );
        registry.register(
            "origin_refusals",
            "WebSocket handshakes refused (403) for an Origin not allowed",
            metrics.origin_refusals.clone(),
        );
        registry.register(
            "handshake_refusals",
            "WebSocket handshakes refused, by error code and answer (http or close)",
            metrics.handshake_refusals.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            metrics.tls_handshake_failures.clone(),
        );
        registry.register(
            "jwks_fetches",
            "Fetches of the JWKS key set (auth.jwks_url), by result",
            metrics.jwks_fetches.clone(),
        );
        metrics
    }
}

impl GatewayMetrics {
    /// Adds reconnects counted by the broker since the last call.
    pub(crate) fn observe_reconnects(&self, total: u64) {
        let seen = self.reconnects_seen.swap(total, Ordering::Relaxed);
        if total > seen {
            self.broker_reconnects.inc_by(total - seen);
        }
    }

    pub(crate) fn closed(&self, code: Option<u16>) {
        let code = code.map_or_else(|| "gone".to_string(), |c| c.to_string());
        self.closes.get_or_create(&CloseLabels { code }).inc();
    }

    /// Counts a refused handshake (see [`RefusalLabels`]).
    pub(crate) fn refused(&self, code: herald_protocol::ErrorCode, via: &'static str) {
        self.handshake_refusals.get_or_create(&RefusalLabels { code: code.as_str(), via }).inc();
    }

    /// Counts a hit of `limit` (see [`LimitLabels`]).
    pub(crate) fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.get_or_create(&LimitLabels { limit }).inc();
    }

    /// Every metric, `process_*` and `herald_build_info` included, in `format`.
    pub fn encode(&self, format: Format) -> String {
        self.registry.encode(format)
    }
}
