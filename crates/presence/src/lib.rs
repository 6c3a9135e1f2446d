//! Presence: who is online, on how many connections and gateways, and who is in which
//! channel, across every gateway replica, with a guaranteed staleness bound.
//!
//! Layout, from the wire inwards:
//! - [`reporter`]: the gateway side. A [`herald_protocol::ConnectionObserver`] that records
//!   changes without blocking, and one task per gateway that reports them in batches (one
//!   round trip per interval) through a [`reporter::Transport`]: [`grpc::GrpcTransport`] to a
//!   remote presence role, or [`reporter::LocalTransport`] in the standalone mode.
//! - [`http`] and [`grpc`] (generated from `proto/herald/v1/presence.proto` into [`pb`]): the
//!   API backends query and gateways report to, both behind the API key
//!   ([`herald_api_common::auth`]); beside them on the gRPC listener, health (following
//!   readiness) and reflection.
//! - [`service`]: the core both transports share. It applies reports to the store, emits the
//!   transitions the store returns through the [`herald_broker::Broker`] ([`events`] encodes
//!   them once), sweeps expired gateway leases, and validates queries.
//! - [`store`]: the [`store::PresenceStore`] trait with its in-memory and Redis engines, and
//!   `conformance` (feature `testing`, for tests only), the suite both pass.
//! - [`model`]: the domain types everyone speaks; [`config`]: `[presence]`; [`metrics`]: what
//!   `GET /metrics` exports.
//!
//! Data flow: socket change -> `Reporter` (local mirror + bounded backlog) -> one `Report` per
//! interval -> `PresenceService::report` -> store (one atomic step) -> events -> broker ->
//! gateways' subscribers (join/leave) and backends (online/offline).

use std::sync::Arc;

use herald_broker::Broker;
use herald_protocol::{ConfigError, Namespaces};

pub mod config;
#[cfg(feature = "testing")]
pub mod conformance;
pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod model;
pub mod reporter;
pub mod server;
pub mod service;
pub mod store;

/// Code generated from `proto/herald/v1/presence.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("herald.v1");

    /// The encoded `FileDescriptorSet` of `presence.proto`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/presence_descriptor.bin"));
}

pub use config::PresenceConfig;
pub use error::ApiError;
pub use grpc::GrpcTransport;
pub use reporter::{LocalTransport, Reporter, Transport};
pub use server::serve;
pub use service::PresenceService;
pub use store::{MemoryStore, PresenceStore, RedisStore, StoreError};

/// What both transports share.
pub(crate) struct Shared {
    service: PresenceService,
    keys: herald_api_common::auth::ApiKeys,
    /// Logs readiness changes seen by `/readyz` and gRPC health.
    readiness: herald_api_common::ReadinessLog,
}

impl Shared {
    /// Passes when `caller` may use `operation` (on `channel`, if the request names one),
    /// else `forbidden`; both transports ask here. A channel name that does not parse is
    /// left to the service, which refuses it as `invalid_channel`.
    fn authorize(
        &self,
        caller: &herald_api_common::auth::Caller,
        operation: herald_api_common::auth::Operation,
        channel: Option<&str>,
    ) -> Result<(), ApiError> {
        let channel = channel.and_then(|c| herald_protocol::ChannelName::parse(c).ok());
        Ok(herald_api_common::auth::authorize(caller, operation, channel.as_ref())?)
    }

    /// Pings the store, as `/readyz` and gRPC health do, and logs a change of readiness.
    /// The store is pinged directly, not through the service, whose errors are each logged.
    async fn probe(&self) -> Result<(), ApiError> {
        let outcome = self.service.store().ping().await;
        self.readiness.observe(&outcome);
        outcome.map_err(ApiError::Unavailable)
    }
}

/// The presence API, ready to be served. Cheap to clone.
#[derive(Clone)]
pub struct PresenceApi {
    shared: Arc<Shared>,
}

impl PresenceApi {
    /// Builds the service and its API. `api_keys` are the flat list of keys accepted (the
    /// caller resolves the fallback to the publisher's keys, [`PresenceConfig::keys_or`]),
    /// beside `config.keys`. Fails, naming the key, when the configuration is invalid.
    pub fn new(
        config: PresenceConfig,
        api_keys: &[String],
        namespaces: Namespaces,
        store: Arc<dyn PresenceStore>,
        broker: Arc<dyn Broker>,
    ) -> Result<Self, ConfigError> {
        let keys = herald_api_common::auth::ApiKeys::from_config("presence", api_keys, &config.keys)?;
        let service = PresenceService::new(config, namespaces, store, broker)?;
        Ok(Self {
            shared: Arc::new(Shared {
                service,
                keys,
                readiness: herald_api_common::ReadinessLog::new("presence"),
            }),
        })
    }

    pub fn service(&self) -> &PresenceService {
        &self.shared.service
    }

    pub fn http_router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    pub fn grpc_service(&self) -> grpc::GrpcService {
        grpc::service(self.shared.clone())
    }

    /// Whether the store answers a ping, as `GET /readyz` asks; what gRPC health reports.
    /// Changes are logged.
    pub fn readiness(&self) -> herald_api_common::grpc::Probe {
        herald_api_common::grpc::probe(self.shared.clone(), |shared| async move { shared.probe().await })
    }
}
