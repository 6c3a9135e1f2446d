//! Prometheus metrics of the presence service, served at `GET /metrics` on its HTTP listener.

use herald_api_common::metrics::{Format, KeyRequests, MetricsRegistry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::model::Stats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `join`, `leave`, `online` or `offline`.
    pub kind: &'static str,
}

/// Every metric the presence service exports.
pub struct PresenceMetrics {
    registry: MetricsRegistry,
    /// Gateway reports applied (or failed: the store was unavailable).
    pub reports: Family<OutcomeLabels, Counter>,
    /// Events published, by kind.
    pub events: Family<KindLabels, Counter>,
    /// Events lost because the broker refused them.
    pub events_lost: Counter,
    /// Sweeps run (or failed).
    pub sweeps: Family<OutcomeLabels, Counter>,
    /// Online users, refreshed at scrape.
    pub online_users: Gauge,
    /// Connections, refreshed at scrape.
    pub connections: Gauge,
    /// API requests (HTTP and gRPC) by key name and outcome.
    pub keys: KeyRequests,
}

impl Default for PresenceMetrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: MetricsRegistry::new("presence", "herald_presence"),
            reports: Family::default(),
            events: Family::default(),
            events_lost: Counter::default(),
            sweeps: Family::default(),
            online_users: Gauge::default(),
            connections: Gauge::default(),
            keys: KeyRequests::default(),
        };
        let registry = metrics.registry.registry_mut();
        registry.register("reports", "Gateway reports by outcome", metrics.reports.clone());
        registry.register("events", "Presence events published, by kind", metrics.events.clone());
        registry.register(
            "events_lost",
            "Events lost because the broker was unavailable",
            metrics.events_lost.clone(),
        );
        registry.register(
            "sweeps",
            "Sweeps for expired gateways and due offline events",
            metrics.sweeps.clone(),
        );
        registry.register("online_users", "Online users (refreshed at scrape)", metrics.online_users.clone());
        registry.register("connections", "Connections (refreshed at scrape)", metrics.connections.clone());
        metrics.keys.register(&mut metrics.registry);
        metrics
    }
}

impl PresenceMetrics {
    pub(crate) fn outcome<T, E>(result: &Result<T, E>) -> OutcomeLabels {
        OutcomeLabels { outcome: if result.is_ok() { "ok" } else { "error" } }
    }

    /// Sets the gauges that mirror the store's state.
    pub fn set_state(&self, stats: &Stats) {
        self.online_users.set(stats.online_users as i64);
        self.connections.set(stats.connections as i64);
    }

    /// Every metric, `process_*` and `herald_build_info` included, in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        self.registry.encode(format)
    }

    /// Every metric in OpenMetrics text, as [`crate::PresenceService::render_metrics`] has
    /// always returned it; `GET /metrics` uses [`Self::encode_as`] with the format the
    /// scraper asks for.
    pub fn encode(&self) -> String {
        self.encode_as(Format::OpenMetrics)
    }
}
