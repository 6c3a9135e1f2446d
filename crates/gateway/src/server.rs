//! The gateway's listener: the accept loop, the background tasks, and the plain HTTP routes.
//!
//! Each accepted connection gets one task. It reads the request head ([`crate::handshake`]);
//! `/ws` is checked and upgraded there, and the same task then serves the open connection.
//! Connecting is the gateway's most frequent costly operation (every deploy and network blip
//! reconnects everyone), and this keeps it to one task, one read and one write per client.
//! Every other path is answered by the router of [`Gateway::router`], with keep-alive, and a
//! later request on the same connection may still be the upgrade ([`crate::http`]).
//!
//! [`serve`] owns every task of the gateway: connections, the delivery canary, the sweeper,
//! the readiness log, the hub's watch of the broker subscription (and the repairs it starts)
//! and the broker subscription's background task. It starts them, and at shutdown waits for
//! them to end.

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::FutureExt;
use futures_util::future::Either;
use herald_protocol::ErrorCode;
use tokio::net::TcpStream;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use crate::canary;
use crate::connection::Connection;
use crate::demo;
use crate::gateway::{Gateway, HandshakeSlot};
use crate::handshake;
use crate::head::RequestHead;
use crate::socket::WebSocket;
use crate::{http, lifecycle, sweeper};
use crate::{origin, refusal};

impl Gateway {
    /// The routes besides `/ws`: `GET /livez`, `GET /readyz`, `GET /metrics`, and with
    /// `gateway.demo` the demo page under `/demo`.
    pub fn router(&self) -> Router {
        let router = Router::new()
            .route("/livez", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        if self.shared().config.demo {
            router.merge(demo::router(self.shared().verifier.clone()))
        } else {
            router
        }
    }
}

/// `GET /metrics`, in the format the `Accept` header asks for.
async fn metrics(State(gateway): State<Gateway>, headers: axum::http::HeaderMap) -> Response {
    let format = herald_api_common::metrics::Format::from_accept(&headers);
    herald_api_common::metrics::response(format, gateway.render_metrics(format))
}

/// Serves the gateway on `listener` until `shutdown` resolves, then stops accepting, closes
/// every connection with 1012 over the drain window and waits for every task to end.
pub async fn serve(
    gateway: Gateway,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shared = gateway.shared().clone();
    let token = shared.shutdown.clone();
    tracing::debug!(addr = %listener.local_addr()?, "gateway listening");
    if shared.config.demo {
        tracing::warn!("{}", demo::WARNING);
    }
    // The broker subscription's task runs until the subscriber is closed, after every
    // connection ended, so it is awaited apart from the tracker's tasks.
    let node = gateway.hub().take_task().map(tokio::spawn);
    shared.tasks.spawn(canary::run(
        gateway.hub().clone(),
        canary::channel(&shared.node_id),
        shared.config.canary_interval,
        shared.config.canary_timeout,
        shared.canary_ok.clone(),
        token.clone(),
    ));
    shared.tasks.spawn(sweeper::run(
        std::sync::Arc::downgrade(&shared.registry),
        shared.config.clone(),
        token.clone(),
    ));
    shared.tasks.spawn(gateway.hub().clone().watch_reconnects(token.clone()));
    shared.tasks.spawn(lifecycle::log_readiness(gateway.clone()));
    let stop = token.clone();
    let signal = tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    let listener = match &shared.config.tls {
        Some(tls) => crate::tls::front(&gateway, listener, tls).await?,
        None => listener,
    };
    let router = gateway.router();
    let inherited = nodelay_inherited(&listener);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = token.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !inherited {
            let _ = stream.set_nodelay(true);
        }
        // Counted from here, so shutdown waits for a connection accepted just before it.
        let tracked = shared.tasks.token();
        let (gateway, router) = (gateway.clone(), router.clone());
        tokio::spawn(handle(gateway, router, stream, tracked));
    }
    drop(listener);
    signal.abort();
    shared.tasks.close();
    lifecycle::log_drain(&gateway, shared.tasks.wait()).await;
    gateway.hub().shutdown().await;
    gateway.hub().subscriber().close();
    if let Some(node) = node {
        let _ = node.await;
    }
    Ok(())
}

/// Sets `TCP_NODELAY` on the listener, where accepted sockets inherit it (Linux does): one
/// system call less per connection. `false` where each accepted socket must get it itself.
fn nodelay_inherited(listener: &tokio::net::TcpListener) -> bool {
    cfg!(target_os = "linux") && socket2::SockRef::from(listener).set_tcp_nodelay(true).is_ok()
}

async fn ready(State(gateway): State<Gateway>) -> Response {
    match gateway.readiness() {
        Ok(()) => "ready".into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}")).into_response(),
    }
}

/// Serves one accepted connection: the handshake, then, for an opened WebSocket, the
/// connection itself, in the same task.
///
/// This future is every open connection's task, so it is built from combinators rather than
/// an `async` block, which would keep room for the handshake's result, the connection's
/// future and the copies between them side by side (4.5 KiB instead of 1.1). The handshake
/// is boxed and freed once the connection is open.
fn handle(
    gateway: Gateway,
    router: Router,
    stream: TcpStream,
    tracked: TaskTrackerToken,
) -> impl Future<Output = ()> + Send {
    Box::pin(open(gateway, router, stream, tracked)).then(|opened| match opened {
        Some((conn, socket, span, tracked)) => {
            Either::Left(conn.run(socket).instrument(span).map(move |()| drop(tracked)))
        }
        None => Either::Right(std::future::ready(())),
    })
}

/// Reads the request heads and routes them: plain requests are answered by `router`
/// ([`http::serve`]), `/ws` is upgraded here. Returns an opened connection, to be served, and
/// the token that keeps shutdown waiting for it.
async fn open(
    gateway: Gateway,
    router: Router,
    mut stream: TcpStream,
    tracked: TaskTrackerToken,
) -> Option<(Connection, WebSocket, tracing::Span, TaskTrackerToken)> {
    let shared = gateway.shared();
    let Some(slot) = HandshakeSlot::acquire(shared) else {
        shared.metrics.limit_hit("max_handshakes");
        let message = "too many connections being set up at once, retry";
        refusal::http_error_with(&mut stream, ErrorCode::Unavailable, message, Some(1)).await;
        return None;
    };
    let mut buf = Vec::with_capacity(1024);
    // Boxed, so that a connection's task does not carry room for plain requests' answers.
    let (head, slot) = Box::pin(http::serve(&gateway, &router, &mut stream, &mut buf, slot)).await?;
    drop(router);
    if let Err(refused) =
        origin::check(shared.config.allowed_origins.as_ref(), shared.config.allow_missing_origin, &head)
    {
        refuse_origin(&gateway, &mut stream, &head, refused).await;
        return None;
    }
    let leftover = buf.split_off(head.len);
    let checked = handshake::check(&gateway, &head, leftover)
        .await
        .map_err(|denied| (denied, refusal::Answer::new(shared.config.refusal, &head)));
    // Freed before waiting for the broker: a connection keeps only what it needs.
    drop((buf, head));
    match checked {
        Ok((identity, upgrade)) => {
            let mut conn = Connection::new(gateway.shared().clone(), identity);
            let span = tracing::debug_span!("conn", client = %conn.client_id(), user = %conn.user());
            let socket = conn.open(stream, upgrade).instrument(span.clone()).await?;
            drop(slot);
            Some((conn, socket, span, tracked))
        }
        Err(((code, message), answer)) => {
            refusal::refuse(&mut stream, &answer, &shared.metrics, code, &message).await;
            None
        }
    }
}

/// Refuses a handshake from a page whose origin may not connect: HTTP 403, never an upgrade,
/// logged and counted.
async fn refuse_origin(
    gateway: &Gateway,
    stream: &mut TcpStream,
    head: &RequestHead,
    refused: origin::Refused,
) {
    let shared = gateway.shared();
    shared.metrics.origin_refusals.inc();
    tracing::info!(
        origin = head.origin.as_deref().unwrap_or(""),
        host = head.host.as_deref().unwrap_or(""),
        "{refused}"
    );
    refusal::http_error(stream, ErrorCode::Forbidden, &refused.to_string()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener_on_linux() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inherited = nodelay_inherited(&listener);
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        assert_eq!(stream.nodelay().unwrap(), inherited);
    }
}
