//! Running the presence role: both listeners and the sweeper, until shutdown.

use std::future::Future;
use std::io;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::PresenceApi;

/// Serves the HTTP API on `http` and the gRPC API on `grpc` (with, beside it and without an
/// API key, `grpc.health.v1.Health` following the store as `/readyz` does, and reflection),
/// and sweeps expired gateways, until `shutdown` resolves. If one server fails the other is
/// stopped too.
pub async fn serve(
    api: PresenceApi,
    http: TcpListener,
    grpc: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
    let stop = CancellationToken::new();
    let sweeper = tokio::spawn(api.service().clone().run_sweeper(stop.clone()));
    tracing::debug!(http = %http_addr, grpc = %grpc_addr, store = api.service().store().name(), "presence listening");
    let served = herald_api_common::serve_api(
        "presence",
        (http, api.http_router()),
        (grpc, api.grpc_service(), crate::pb::FILE_DESCRIPTOR_SET),
        api.service().config().tls.as_ref(),
        api.readiness(),
        stop,
        shutdown,
    )
    .await;
    let _ = sweeper.await;
    served
}
