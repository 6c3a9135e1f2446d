//! Running both listeners together until shutdown.

use std::future::Future;
use std::io;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::PublisherApi;

/// Serves the HTTP API on `http` and the gRPC API on `grpc` (with, beside it and without an
/// API key, `grpc.health.v1.Health` following the broker as `/readyz` does, and reflection) until `shutdown` resolves.
///
/// Shutdown is graceful on both: the listeners stop accepting, requests in flight run to
/// completion (their messages are published and answered), then this returns. If one server
/// fails, the other is shut down too and the error is returned, so a caller never keeps
/// running with half of the API gone.
pub async fn serve(
    api: PublisherApi,
    http: TcpListener,
    grpc: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
    tracing::debug!(http = %http_addr, grpc = %grpc_addr, engine = api.broker_name(), "publisher api listening");
    herald_api_common::serve_api(
        "publisher-api",
        (http, api.http_router()),
        (grpc, api.grpc_service(), crate::pb::FILE_DESCRIPTOR_SET),
        api.tls(),
        api.readiness(),
        CancellationToken::new(),
        shutdown,
    )
    .await
}
