//! Running both listeners together until shutdown.

use std::future::Future;
use std::io;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::PublisherApi;

/// Serves the HTTP API on `http` and the gRPC API on `grpc` until `shutdown` resolves.
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
    let stop = CancellationToken::new();

    let http_server =
        axum::serve(http, api.http_router()).with_graceful_shutdown(stop.clone().cancelled_owned());
    let grpc_server =
        tonic::transport::Server::builder().add_service(api.grpc_service()).serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            stop.clone().cancelled_owned(),
        );
    tracing::info!(http = %http_addr, grpc = %grpc_addr, engine = api.broker_name(), "publisher api listening");

    let trigger = async {
        tokio::select! {
            () = shutdown => tracing::info!("publisher api shutting down"),
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
    if let Err(e) = &http_result {
        tracing::error!(error = %e, "http server failed");
    }
    if let Err(e) = &grpc_result {
        tracing::error!(error = %e, "grpc server failed");
    }
    tracing::info!("publisher api stopped");
    http_result.and(grpc_result)
}
