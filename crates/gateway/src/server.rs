//! The gateway's HTTP listener: the WebSocket endpoint and health checks.

use std::future::Future;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_protocol::ErrorCode;
use serde::Deserialize;
use tracing::Instrument;

use crate::Gateway;
use crate::connection::Connection;
use crate::policy;

#[derive(Deserialize)]
struct ConnectParams {
    token: Option<String>,
    /// Channels to subscribe before `connected`, comma-separated.
    subscribe: Option<String>,
}

impl Gateway {
    /// The gateway's routes: `GET /ws`, `GET /livez`, `GET /readyz`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws", get(connect))
            .route("/livez", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(|State(gateway): State<Gateway>| async move { gateway.render_metrics() }))
            .with_state(self.clone())
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves, then closes every connection
/// with 1012 and waits for their tasks to end.
pub async fn serve(
    gateway: Gateway,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = gateway.shared.shutdown.clone();
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let stop = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    axum::serve(listener, gateway.router()).with_graceful_shutdown(token.cancelled_owned()).await?;
    gateway.shared.tasks.close();
    gateway.shared.tasks.wait().await;
    gateway.hub().subscriber().close();
    Ok(())
}

async fn ready(State(gateway): State<Gateway>) -> Response {
    if gateway.is_ready() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: broker subscriptions are not live").into_response()
    }
}

/// Checks the token and the channels asked for in `subscribe` before upgrading, so a bad one
/// gets a plain HTTP error with its reason.
async fn connect(
    State(gateway): State<Gateway>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = params.token.as_deref().or(bearer) else {
        return http_error(
            ErrorCode::Unauthorized,
            "missing token: pass ?token=<JWT> or Authorization: Bearer",
        );
    };
    let identity = match gateway.shared.verifier.verify(token) {
        Ok(identity) => identity,
        Err(e) => return http_error(e.code, &e.message),
    };
    let config = &gateway.shared.config;
    let requested = match params.subscribe.as_deref() {
        None => Vec::new(),
        Some(list) => {
            match policy::connect_subscriptions(
                &identity,
                list,
                &gateway.shared.namespaces,
                config.max_subscriptions,
            ) {
                Ok(channels) => channels,
                Err((code, message)) => return http_error(code, &message),
            }
        }
    };
    if !gateway.is_ready() {
        return http_error(ErrorCode::Unavailable, "gateway not ready: broker unavailable, retry later");
    }
    let shared = gateway.shared.clone();
    upgrade
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(config.write_buffer_size)
        .max_write_buffer_size(config.max_write_buffer_size)
        .max_message_size(config.max_message_size)
        .max_frame_size(config.max_message_size)
        .on_upgrade(move |socket| {
            let conn = Connection::new(shared.clone(), identity);
            let span = tracing::debug_span!("conn", client = %conn.client_id(), user = %conn.user());
            shared.tasks.track_future(conn.run(socket, requested).instrument(span))
        })
}

fn http_error(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}
