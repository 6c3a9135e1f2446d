//! Prometheus metrics of the presence service, served at `GET /metrics` on its HTTP listener.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    registry: Mutex<Registry>,
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
}

impl Default for PresenceMetrics {
    fn default() -> Self {
        let metrics = Self {
            registry: Mutex::new(Registry::default()),
            reports: Family::default(),
            events: Family::default(),
            events_lost: Counter::default(),
            sweeps: Family::default(),
            online_users: Gauge::default(),
            connections: Gauge::default(),
        };
        let mut registry = Registry::with_prefix("herald_presence");
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
        *metrics.registry.lock().expect("registry lock poisoned") = registry;
        metrics
    }
}

impl PresenceMetrics {
    pub(crate) fn outcome<T, E>(result: &Result<T, E>) -> OutcomeLabels {
        OutcomeLabels { outcome: if result.is_ok() { "ok" } else { "error" } }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("registry lock poisoned");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}
