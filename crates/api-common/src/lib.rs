//! What the publisher API and the presence service share: both serve an HTTP and a gRPC API
//! side by side until shutdown, and both answer HTTP errors with the same JSON body.

use std::future::Future;
use std::io;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use herald_protocol::ErrorCode;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The JSON body of every HTTP error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'static str,
    message: &'a str,
}

/// An HTTP error response: the code's status, the JSON body, and `WWW-Authenticate: Bearer`
/// when the caller must authenticate.
pub fn error_response(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = Body { error: Detail { code: code.as_str(), message } };
    let mut response = (status, axum::Json(body)).into_response();
    if code == ErrorCode::Unauthorized {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_have_their_status_json_body_and_auth_challenge() {
        let response = error_response(ErrorCode::Unauthorized, "who are you");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let bytes = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body, serde_json::json!({"error": {"code": "unauthorized", "message": "who are you"}}));

        let response = error_response(ErrorCode::UnknownChannel, "no such namespace");
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
