//! Prometheus metrics of the publisher API, served at `GET /metrics` on the HTTP listener, and
//! the request ids that tie a request's log lines together.

use std::time::Instant;

use herald_api_common::metrics::{Format, KeyRequests, MetricsRegistry};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `http` or `grpc`.
    pub transport: &'static str,
    /// The route (`/v1/publish`) or gRPC method (`Publish`).
    pub endpoint: String,
    /// `ok`, or the error code (`unavailable`, `unauthorized`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `http` or `grpc`.
    pub transport: &'static str,
    /// Which limit refused the request: `requests_in_flight`, `bytes_in_flight`, `rate`,
    /// `body_size`.
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: &'static str,
}

/// Every metric the publisher API exports.
pub struct PublisherMetrics {
    registry: MetricsRegistry,
    /// Requests by transport, endpoint and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Request handling time by transport.
    pub duration: Family<TransportLabels, Histogram>,
    /// Messages handed to the broker successfully.
    pub messages: Counter,
    /// Requests refused by a limit, by transport and limit.
    pub limited: Family<LimitLabels, Counter>,
    /// Requests by API key name and outcome.
    pub keys: KeyRequests,
}

impl PublisherMetrics {
    /// Registers every metric; `messages` is the service's counter of published messages.
    pub fn new(messages: Counter) -> Self {
        let duration = Family::<TransportLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
        });
        let mut metrics = Self {
            registry: MetricsRegistry::new("publisher", "herald_publisher"),
            requests: Family::default(),
            duration,
            messages,
            limited: Family::default(),
            keys: KeyRequests::default(),
        };
        let registry = metrics.registry.registry_mut();
        registry.register(
            "requests",
            "Publish requests by transport, endpoint and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to handle a publish request",
            metrics.duration.clone(),
        );
        registry.register("messages", "Messages accepted by the broker", metrics.messages.clone());
        registry.register(
            "limited",
            "Requests refused by a limit (publisher.max_requests_in_flight, max_bytes_in_flight, \
             rate_limit, or a body size limit)",
            metrics.limited.clone(),
        );
        metrics.keys.register(&mut metrics.registry);
        metrics
    }

    /// Records one finished request, made with the key named `key` (`None`: no valid key, or
    /// refused before the key was looked at).
    pub fn record(
        &self,
        transport: &'static str,
        endpoint: &str,
        key: Option<&str>,
        outcome: &'static str,
        started: Instant,
    ) {
        self.keys.record(key, outcome);
        let labels = RequestLabels { transport, endpoint: endpoint.to_string(), outcome };
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&TransportLabels { transport }).observe(started.elapsed().as_secs_f64());
    }

    /// Records one request refused by `limit`.
    pub fn limited(&self, transport: &'static str, limit: &'static str) {
        self.limited.get_or_create(&LimitLabels { transport, limit }).inc();
    }

    /// Every metric, `process_*` and `herald_build_info` included, in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        self.registry.encode(format)
    }

    /// Every metric in OpenMetrics text.
    pub fn encode(&self) -> String {
        self.encode_as(Format::OpenMetrics)
    }
}

/// The caller's request id when it is a sensible token (at most 64 visible ASCII characters),
/// or a fresh UUIDv7.
pub fn request_id(given: Option<&[u8]>) -> String {
    match given {
        Some(id) if !id.is_empty() && id.len() <= 64 && id.iter().all(|b| b.is_ascii_graphic()) => {
            String::from_utf8_lossy(id).into_owned()
        }
        _ => uuid::Uuid::now_v7().to_string(),
    }
}
