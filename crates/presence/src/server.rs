//! Running the presence role: both listeners and the sweeper, until shutdown.

use std::future::Future;
use std::io;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::PresenceApi;

/// Serves the HTTP API on `http` and the gRPC API on `grpc`, and sweeps expired gateways,
/// until `shutdown` resolves. If one server fails the other is stopped too.
pub async fn serve(
    api: PresenceApi,
    http: TcpListener,
    grpc: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
    let stop = CancellationToken::new();
    let sweeper = tokio::spawn(api.service().clone().run_sweeper(stop.clone()));
    let http_server =
        axum::serve(http, api.http_router()).with_graceful_shutdown(stop.clone().cancelled_owned());
    let grpc_server =
        tonic::transport::Server::builder().add_service(api.grpc_service()).serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            stop.clone().cancelled_owned(),
        );
    tracing::info!(http = %http_addr, grpc = %grpc_addr, store = api.service().store().name(), "presence listening");
    let trigger = async {
        tokio::select! {
            () = shutdown => tracing::info!("presence shutting down"),
            () = stop.cancelled() => {}
        }
        stop.cancel();
    };
    let http_done = async {
        let result = http_server.await;
        stop.cancel();
        result
    };
    let grpc_done = async {
        let result = grpc_server.await.map_err(io::Error::other);
        stop.cancel();
        result
    };
    let ((), http_result, grpc_result) = tokio::join!(trigger, http_done, grpc_done);
    let _ = sweeper.await;
    if let Err(e) = &http_result {
        tracing::error!(error = %e, "presence http server failed");
    }
    if let Err(e) = &grpc_result {
        tracing::error!(error = %e, "presence grpc server failed");
    }
    http_result.and(grpc_result)
}
