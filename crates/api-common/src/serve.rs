//! Serving an HTTP and a gRPC API side by side until shutdown.

use std::future::Future;
use std::io;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `http` on the first listener and `grpc` on the second until `shutdown` resolves or
/// `stop` is cancelled; `name` labels the logs.
///
/// Shutdown is graceful on both: the listeners stop accepting, requests in flight run to
/// completion, then this returns. If one server fails, `stop` is cancelled so the other shuts
/// down too, and the error is returned: a caller never keeps running with half of its API
/// gone.
pub async fn serve_http_and_grpc(
    name: &str,
    (http_listener, http): (TcpListener, Router),
    (grpc_listener, grpc): (TcpListener, tonic::service::Routes),
    stop: CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // TCP_NODELAY on both, so a response written while the client's ACK of the previous one
    // is delayed leaves at once instead of waiting for it.
    let http_listener = http_listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let http_server = axum::serve(http_listener, http).with_graceful_shutdown(stop.clone().cancelled_owned());
    let grpc_server = tonic::transport::Server::builder().add_routes(grpc).serve_with_incoming_shutdown(
        tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
        stop.clone().cancelled_owned(),
    );
    let trigger = async {
        tokio::select! {
            () = shutdown => tracing::info!("{name} shutting down"),
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
        tracing::error!(error = %e, "{name} http server failed");
    }
    if let Err(e) = &grpc_result {
        tracing::error!(error = %e, "{name} grpc server failed");
    }
    tracing::info!("{name} stopped");
    http_result.and(grpc_result)
}
