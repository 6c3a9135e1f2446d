//! What the publisher API and the presence service share (and, for metrics and outbound TLS,
//! the gateway too).
//!
//! Layout:
//! - [`auth`]: the API key check, over an HTTP header or gRPC metadata
//!   ([`auth::RequireApiKey`]), comparing in constant time.
//! - [`error`]: [`ApiFailure`], what a failed request shows its caller, and the one mapping
//!   from an [`herald_protocol::ErrorCode`] to an HTTP response (JSON body) and a gRPC status;
//!   [`Refusal`], a request refused for what it is.
//! - [`metrics`]: a role's registry with `process_*` and `herald_build_info` beside it, and
//!   `GET /metrics` in OpenMetrics or the Prometheus text format, as the scraper asks.
//!   `process` reads the `process_*` values from `/proc/self`.
//! - [`grpc`]: health (following readiness) and reflection, added to each gRPC server.
//! - [`probes`]: `/livez` and `/readyz`; [`extract`]: path and query parameters; [`config`]: checks of settings both APIs have.
//! - `testing` (feature `testing`): promtool, health and reflection checks for tests.
//! - [`tls`]: a rustls server config from PEM files, reloaded, optionally mutual; `secure`:
//!   the listeners over it. [`client_tls`]: the other direction, a gateway's TLS to presence
//!   and to the backend hook (a rustls client config, a gRPC channel over it).
//! - [`serve_api`] and [`serve_http_and_grpc`]: both listeners served together until shutdown, the drain
//!   logged; [`lifecycle`]: readiness changes in the logs, and the connection count a drain
//!   reports.
//!
//! Each API keeps its own error enum and metric set; what they have in common goes through
//! here, so an error or a scrape looks the same on every role.

pub mod auth;
pub mod client_tls;
pub mod config;
pub mod error;
pub mod extract;
pub mod grpc;
pub mod lifecycle;
pub mod metrics;
pub mod probes;
#[cfg(target_os = "linux")]
mod process;
mod secure;
mod serve;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

pub use error::{ApiFailure, Refusal};
pub use lifecycle::ReadinessLog;
pub use serve::{serve_api, serve_http_and_grpc};
