//! The metrics plumbing every role shares: one registry per role, the `process_*` metrics
//! and `herald_build_info` beside it, and `GET /metrics` answered in the format the scraper
//! asks for.
//!
//! Prometheus sends `Accept: application/openmetrics-text; version=1.0.0; ...` and gets
//! OpenMetrics (counters as `# TYPE x counter` with `x_total` samples, `# EOF` at the end);
//! everyone else (`curl`, `promtool check metrics`, older scrapers) gets the Prometheus text
//! format 0.0.4, in which a counter's family carries its `_total` name. Both are written by
//! `prometheus-client`'s own encoders, so neither is a conversion of the other.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The two exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text, for scrapers that ask for it.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, the default.
    Prometheus,
}

impl Format {
    /// OpenMetrics when the `Accept` header ranks `application/openmetrics-text` at least as
    /// high as plain text (and above zero); the Prometheus text format otherwise.
    pub fn from_accept(headers: &HeaderMap) -> Self {
        let (mut open, mut text) = (0.0f32, 0.0f32);
        for range in headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()) {
            for item in range.split(',') {
                let mut parts = item.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default().to_ascii_lowercase();
                let q = parts
                    .filter_map(|p| p.strip_prefix("q="))
                    .find_map(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                match media.as_str() {
                    "application/openmetrics-text" => open = open.max(q),
                    "text/plain" | "text/*" | "*/*" => text = text.max(q),
                    _ => {}
                }
            }
        }
        if open > 0.0 && open >= text { Self::OpenMetrics } else { Self::Prometheus }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// A `/metrics` response: `body` (encoded in `format`) with the matching content type.
pub fn response(format: Format, body: String) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()))], body).into_response()
}

/// `GET /metrics`: the format the `Accept` header in `headers` asks for, the body `encode`
/// writes in it.
pub fn respond(headers: &HeaderMap, encode: impl FnOnce(Format) -> String) -> Response {
    let format = Format::from_accept(headers);
    response(format, encode(format))
}

/// The labels of `{prefix}_key_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    /// The API key's name; empty when the request had no valid key.
    key: String,
    /// `ok`, or the error code (`forbidden`, `unauthorized`, ...).
    outcome: &'static str,
}

/// Requests by API key name and outcome, on both APIs: who calls, and who is refused what.
/// The label set is bounded: the configured key names, times the documented codes.
#[derive(Clone, Debug, Default)]
pub struct KeyRequests(Family<KeyLabels, Counter>);

impl KeyRequests {
    /// Registers the family as `key_requests` under the role's prefix.
    pub fn register(&self, registry: &mut MetricsRegistry) {
        registry.registry_mut().register(
            "key_requests",
            "Requests by API key name (empty without a valid key) and outcome",
            self.0.clone(),
        );
    }

    /// Counts one request of the key named `key` (`None`: no valid key) with `outcome`.
    pub fn record(&self, key: Option<&str>, outcome: &'static str) {
        self.0.get_or_create(&KeyLabels { key: key.unwrap_or_default().to_string(), outcome }).inc();
    }
}

/// The labels of `herald_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    /// The crate version every Herald crate shares.
    version: &'static str,
    /// `gateway`, `publisher` or `presence`.
    role: &'static str,
    /// `release` or `debug` (debug assertions on).
    profile: &'static str,
    /// The CPU architecture the binary was built for.
    arch: &'static str,
}

/// A role's metrics registry, with what every role exports beside its own metrics.
#[derive(Debug)]
pub struct MetricsRegistry {
    /// The role's own metrics, under its prefix (`herald_gateway_...`).
    role: Registry,
    /// `process_*` and `herald_build_info`, with no prefix.
    common: Registry,
}

impl MetricsRegistry {
    /// A registry whose metrics are named `{prefix}_...`, for the role named `role` in
    /// `herald_build_info`.
    pub fn new(role: &'static str, prefix: &str) -> Self {
        let mut common = Registry::default();
        let build = BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            role,
            profile: if cfg!(debug_assertions) { "debug" } else { "release" },
            arch: std::env::consts::ARCH,
        };
        common.register(
            "herald_build",
            "Always 1; the labels say which build of Herald runs and in which role",
            Info::new(build),
        );
        #[cfg(target_os = "linux")]
        common.register_collector(Box::new(crate::process::ProcessCollector));
        Self { role: Registry::with_prefix(prefix), common }
    }

    /// Where the role registers its metrics.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.role
    }

    /// Every metric, in `format`.
    pub fn encode(&self, format: Format) -> String {
        use prometheus_client::encoding::{prometheus_text, text};
        let mut out = String::new();
        let written = match format {
            Format::OpenMetrics => text::encode_registry(&mut out, &self.role)
                .and_then(|()| text::encode_registry(&mut out, &self.common))
                .and_then(|()| text::encode_eof(&mut out)),
            Format::Prometheus => prometheus_text::encode(&mut out, &self.role)
                .and_then(|()| prometheus_text::encode(&mut out, &self.common)),
        };
        written.expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn openmetrics_only_when_asked_for_first() {
        assert_eq!(Format::from_accept(&HeaderMap::new()), Format::Prometheus);
        assert_eq!(Format::from_accept(&accept("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(&accept("text/plain; version=0.0.4")), Format::Prometheus);
        // What Prometheus 2.x and 3.x send.
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,\
             application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::from_accept(&accept(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(&accept("application/openmetrics-text")), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(&accept("application/openmetrics-text;q=0.1, text/plain")),
            Format::Prometheus
        );
        assert_eq!(Format::from_accept(&accept("application/openmetrics-text;q=0")), Format::Prometheus);
    }

    #[test]
    fn counters_keep_their_total_name_in_the_text_format() {
        let mut registry = MetricsRegistry::new("gateway", "herald_test");
        let counter = Counter::<u64>::default();
        registry.registry_mut().register("things", "Things seen", counter.clone());
        counter.inc();
        let text = registry.encode(Format::Prometheus);
        assert!(text.contains("# TYPE herald_test_things_total counter\n"), "{text}");
        assert!(text.contains("\nherald_test_things_total 1\n"), "{text}");
        assert!(text.contains("herald_build_info{version=\""), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let open = registry.encode(Format::OpenMetrics);
        assert!(open.contains("# TYPE herald_test_things counter\n"), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert_eq!(open.matches("# EOF").count(), 1, "{open}");
        #[cfg(target_os = "linux")]
        assert!(
            text.contains("\nprocess_cpu_seconds_total ") && text.contains("\nprocess_open_fds "),
            "{text}"
        );
    }
}
