//! The publisher API: how backend services push messages into Herald.
//!
//! It only writes to the broker; gateways subscribed to the broker deliver the messages to
//! their sockets. It never talks to a gateway directly.
//!
//! Layout, from the wire inwards:
//! - [`http`] (axum) and [`grpc`] (tonic, generated from `proto/herald/v1/publisher.proto`
//!   into [`pb`]): the two transports. Each checks the API key
//!   ([`herald_api_common::auth`]), reads its request
//!   into a [`service::Draft`] and hands it to the core.
//! - [`service`]: the transport-independent core. It validates a draft (channel name,
//!   namespace, sizes, event name, idempotency key), encodes it once into the `message` frame
//!   subscribers receive, and publishes the bytes through the [`Broker`]: with history
//!   (numbered, kept, deduplicated by key) when the channel keeps history, plainly otherwise.
//! - [`reads`]: history reads and the offline inbox for backends, over the same core.
//! - [`error`]: [`ApiError`], shown as a JSON body over HTTP and as a status over gRPC, both
//!   coded by the shared [`herald_protocol::ErrorCode`] table.
//! - [`limits`]: what one replica takes on: requests and body bytes in flight, and each API
//!   key's rate. Both transports admit a request there before reading its body.
//! - [`metrics`]: Prometheus metrics (`GET /metrics`) and request ids for the logs.
//! - [`config`]: [`PublisherConfig`]; [`server`]: [`serve`], which runs both listeners until
//!   shutdown, with gRPC health (following readiness) and reflection beside the API.
//!
//! Data flow of one publish: request → auth → admission (limits in flight) → draft →
//! `Service::prepare` (validate + encode) → the key's rate → `Broker::publish` (or
//! `Broker::publish_with_history`) → reply with the message id (and offset, epoch), or an error
//! saying whether the message may have been published. A batch is prepared completely before
//! anything is published, so one bad entry publishes nothing.

use std::sync::Arc;

use herald_broker::Broker;
use herald_protocol::{HistoryConfig, InboxConfig, Namespaces};

pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod reads;
pub mod server;
pub mod service;

/// Code generated from `proto/herald/v1/publisher.proto`: the server trait, the client, and the
/// request and reply messages. Public so other crates and tests can use the client.
pub mod pb {
    // Generated code: its style is tonic's, not ours to lint.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("herald.v1");

    /// The encoded `FileDescriptorSet` of `publisher.proto`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/publisher_descriptor.bin"));
}

pub use config::PublisherConfig;
pub use error::ApiError;
pub use grpc::{GrpcPublisher, GrpcService, RequireApiKey};
pub use server::serve;

/// What both transports share.
pub(crate) struct Shared {
    service: service::Service,
    keys: herald_api_common::auth::ApiKeys,
    limits: limits::Limits,
    metrics: metrics::PublisherMetrics,
    /// Logs readiness changes seen by `/readyz` and gRPC health.
    readiness: herald_api_common::ReadinessLog,
    /// TLS of both listeners, when configured.
    tls: Option<herald_api_common::tls::TlsConfig>,
}

impl Shared {
    /// Pings the broker, as `/readyz` and gRPC health do, and logs a change of readiness.
    async fn probe(&self) -> Result<(), herald_broker::BrokerError> {
        let outcome = self.service.broker().ping().await;
        self.readiness.observe(&outcome);
        outcome
    }
}

/// The publisher API, ready to be served. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct PublisherApi {
    shared: Arc<Shared>,
}

impl PublisherApi {
    /// Builds the API. `config` should have passed [`PublisherConfig::validate`]; with no API
    /// keys every `/v1` request is refused rather than let through. `inbox` says how personal
    /// channels keep history (the namespaces say it for the others); `history` bounds reads
    /// and how long idempotency keys are remembered.
    pub fn new(
        config: PublisherConfig,
        namespaces: Namespaces,
        inbox: InboxConfig,
        history: HistoryConfig,
        broker: Arc<dyn Broker>,
    ) -> Self {
        // A configuration that did not pass `validate` accepts no key rather than some.
        let keys = config.api_keys().unwrap_or_else(|e| {
            tracing::error!(error = %e, "invalid API keys; every request will be refused");
            herald_api_common::auth::ApiKeys::new(&[])
        });
        let limits = limits::Limits::new(&config, &keys);
        let sizes = service::Sizes { max_message_size: config.max_message_size, max_batch: config.max_batch };
        let service = service::Service::new(namespaces, inbox, history, broker, sizes);
        let metrics = metrics::PublisherMetrics::new(service.messages_counter());
        let shared = Shared {
            service,
            keys,
            limits,
            metrics,
            readiness: herald_api_common::ReadinessLog::new("publisher-api"),
            tls: config.tls.clone(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// The HTTP API as an axum router, to serve on its own or merge into another router (the
    /// standalone mode serves it next to the gateway).
    pub fn http_router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// The gRPC API as a tonic service (behind its API key check), accepting messages up to
    /// the batch body limit.
    pub fn grpc_service(&self) -> GrpcService {
        grpc::service(self.shared.clone(), self.shared.limits.batch_body)
    }

    /// The metrics in `format`.
    pub fn render_metrics(&self, format: herald_api_common::metrics::Format) -> String {
        self.shared.metrics.encode_as(format)
    }

    /// Whether the broker answers a ping, as `GET /readyz` asks; what gRPC health reports.
    /// Changes are logged.
    pub fn readiness(&self) -> herald_api_common::grpc::Probe {
        herald_api_common::grpc::probe(self.shared.clone(), |shared| async move { shared.probe().await })
    }

    /// TLS of [`serve`]'s listeners (`publisher.tls`), if any.
    pub fn tls(&self) -> Option<&herald_api_common::tls::TlsConfig> {
        self.shared.tls.as_ref()
    }

    /// The broker engine's name, for logs.
    pub fn broker_name(&self) -> &'static str {
        self.shared.service.broker().name()
    }
}
