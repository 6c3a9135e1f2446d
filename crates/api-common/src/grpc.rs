//! What every Herald gRPC server offers besides its API: `grpc.health.v1.Health`, following
//! the same readiness as `GET /readyz`, and server reflection (v1 and v1alpha), so
//! `grpc_health_probe`, Kubernetes gRPC probes and `grpcurl` work without a proto file.
//!
//! Health is answered by probing readiness at each `Check` (a Redis ping, like `/readyz`),
//! not from a status some background task last wrote: nothing runs between checks, and an
//! answer is never staler than the probe. `Watch` probes once a second while a client
//! watches and sends each change.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// A readiness probe: `true` while the server can do its work (its Redis answers).
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// A [`Probe`] that runs `probe` on `state` (the role's shared state) and reports whether it
/// succeeded.
pub fn probe<T, F, Fut, E>(state: Arc<T>, probe: F) -> Probe
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
{
    let probe = Arc::new(probe);
    Arc::new(move || {
        let (state, probe) = (state.clone(), probe.clone());
        Box::pin(async move { probe(state).await.is_ok() })
    })
}

/// A probe that has not answered in this long counts as not serving, as a `/readyz` that
/// does not answer within a Kubernetes probe's timeout does.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often `Watch` probes while a client watches.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// `grpc.health.v1.Health` for the empty service name (the whole server) and each of the
/// server's fully qualified service names, all following one readiness probe.
#[derive(Clone)]
pub struct ReadinessHealth {
    services: Arc<[String]>,
    probe: Probe,
}

impl ReadinessHealth {
    pub fn new(services: &[&str], probe: Probe) -> Self {
        Self { services: services.iter().map(|s| s.to_string()).collect(), probe }
    }

    fn knows(&self, service: &str) -> bool {
        service.is_empty() || self.services.iter().any(|s| s == service)
    }

    async fn status(probe: &Probe) -> ServingStatus {
        match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
            Ok(true) => ServingStatus::Serving,
            Ok(false) | Err(_) => ServingStatus::NotServing,
        }
    }
}

fn reply(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status as i32 }
}

#[tonic::async_trait]
impl Health for ReadinessHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        if !self.knows(&service) {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        Ok(Response::new(reply(Self::status(&self.probe).await)))
    }

    type WatchStream = BoxStream<'static, Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        if !self.knows(&service) {
            // As the protocol asks: say so, and keep the call open.
            let unknown =
                stream::once(async { Ok(reply(ServingStatus::ServiceUnknown)) }).chain(stream::pending());
            return Ok(Response::new(unknown.boxed()));
        }
        // Ends when the client goes away and tonic drops the stream: no task to clean up.
        let changes = stream::unfold((self.probe.clone(), None), |(probe, last)| async move {
            loop {
                if last.is_some() {
                    tokio::time::sleep(WATCH_INTERVAL).await;
                }
                let now = Self::status(&probe).await;
                if last != Some(now) {
                    return Some((Ok(reply(now)), (probe, Some(now))));
                }
            }
        });
        Ok(Response::new(changes.boxed()))
    }
}

/// A role's gRPC service as tonic serves it (the generated server, behind its interceptors).
pub trait GrpcApi:
    Service<
        http::Request<tonic::body::Body>,
        Error = Infallible,
        Response: axum::response::IntoResponse,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcApi for S where
    S: Service<
            http::Request<tonic::body::Body>,
            Error = Infallible,
            Response: axum::response::IntoResponse,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The routes of a gRPC server: `service` (the role's API), and beside it health for the
/// empty name and the service's name, following `probe`, and reflection v1 and v1alpha over
/// `descriptor` (the encoded `FileDescriptorSet` of the service's proto; health's and
/// reflection's own are added here).
pub fn routes<S: GrpcApi>(service: S, descriptor: &'static [u8], probe: Probe) -> Routes {
    let health = HealthServer::new(ReadinessHealth::new(&[S::NAME], probe));
    let builder = || {
        // Both reflection versions are served, so each lists both.
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(descriptor)
    };
    // Our descriptor sets are built from our own protos by build.rs; one that does not load
    // is a build bug that every test would catch at start.
    let v1 = builder().build_v1().expect("the descriptor sets load");
    let v1alpha = builder().build_v1alpha().expect("the descriptor sets load");
    Routes::new(service).add_service(health).add_service(v1).add_service(v1alpha)
}
