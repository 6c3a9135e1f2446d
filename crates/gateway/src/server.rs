//! The gateway's listener: WebSocket upgrades on `/ws`, and health checks and metrics.
//!
//! `/ws` is handled here, without an HTTP framework: the request head is parsed once, the
//! token and the channels in the URL are checked, the channels are subscribed, and only then
//! is the `101 Switching Protocols` answer written, in the same write as the `connected`
//! frame. A refusal (bad token, bad channel, broker unavailable) is a plain HTTP error with a
//! JSON body, before any WebSocket exists. Connecting is the gateway's most frequent costly
//! operation (every deploy and network blip reconnects everyone), and this keeps it to one
//! task, one read and one write per client. Every other path is served by hyper and the
//! router of [`Gateway::router`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::FutureExt;
use futures_util::future::Either;
use herald_protocol::{ChannelName, ErrorCode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use crate::Gateway;
use crate::auth::Identity;
use crate::connection::{Connection, WebSocket};
use crate::policy;

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most request headers accepted.
const MAX_HEADERS: usize = 48;
/// How long a client may take to send its request head (slow clients hold no slot forever).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct ConnectParams {
    token: Option<String>,
    /// Channels to subscribe before `connected`, comma-separated.
    subscribe: Option<String>,
}

/// A checked `/ws` request, ready to be answered with `101`.
pub(crate) struct Upgrade {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The channels of `?subscribe=`, checked.
    pub requested: Vec<ChannelName>,
    /// Bytes the client sent after the request head (its first frames, if it did not wait).
    pub leftover: Vec<u8>,
    pub config: WebSocketConfig,
}

impl Gateway {
    /// The routes besides `/ws`: `GET /livez`, `GET /readyz`, `GET /metrics`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/livez", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

/// `GET /metrics`, in the format the `Accept` header asks for.
async fn metrics(State(gateway): State<Gateway>, headers: axum::http::HeaderMap) -> axum::response::Response {
    let format = herald_api_common::metrics::Format::from_accept(&headers);
    herald_api_common::metrics::response(format, gateway.render_metrics(format))
}

/// Serves the gateway on `listener` until `shutdown` resolves, then stops accepting, closes
/// every connection with 1012 over the drain window and waits for their tasks to end.
pub async fn serve(
    gateway: Gateway,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let token = gateway.shared.shutdown.clone();
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let stop = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
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
        let tracked = gateway.shared.tasks.token();
        let (gateway, router) = (gateway.clone(), router.clone());
        tokio::spawn(handle(gateway, router, stream, tracked));
    }
    drop(listener);
    gateway.shared.tasks.close();
    gateway.shared.tasks.wait().await;
    gateway.hub().subscriber().close();
    Ok(())
}

/// Sets `TCP_NODELAY` on the listener, where accepted sockets inherit it (Linux does): one
/// system call less per connection. `false` where each accepted socket must get it itself.
fn nodelay_inherited(listener: &tokio::net::TcpListener) -> bool {
    cfg!(target_os = "linux") && socket2::SockRef::from(listener).set_tcp_nodelay(true).is_ok()
}

async fn ready(State(gateway): State<Gateway>) -> Response {
    if gateway.is_ready() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: broker subscriptions are not live").into_response()
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
    Box::pin(handshake(gateway, router, stream, tracked)).then(|opened| match opened {
        Some((conn, socket, span, tracked)) => {
            Either::Left(conn.run(socket).instrument(span).map(move |()| drop(tracked)))
        }
        None => Either::Right(std::future::ready(())),
    })
}

/// Reads the request head and routes it: `/ws` is upgraded here, anything else goes to hyper.
/// Returns an opened connection, to be served, and the token that keeps shutdown waiting
/// for it.
async fn handshake(
    gateway: Gateway,
    router: Router,
    mut stream: TcpStream,
    tracked: TaskTrackerToken,
) -> Option<(Connection, WebSocket, tracing::Span, TaskTrackerToken)> {
    let mut buf = Vec::with_capacity(1024);
    let read = Box::pin(read_head(&mut stream, &mut buf));
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::Closed)) | Err(_) => return None,
        Ok(Err(HeadError::Invalid(message))) => {
            refuse(&mut stream, ErrorCode::MalformedFrame, &message).await;
            return None;
        }
    };
    if head.path != "/ws" {
        // Shutdown does not wait for health checks and scrapes on keep-alive connections.
        drop(tracked);
        // Boxed, so that every handshake does not carry an HTTP/1 connection's state.
        Box::pin(serve_http(router, Prefixed { prefix: buf, at: 0, inner: stream })).await;
        return None;
    }
    let leftover = buf.split_off(head.len);
    let checked = check(&gateway, &head, leftover);
    // Freed before waiting for the broker: a connection keeps only what it needs.
    drop((buf, head));
    match checked {
        Ok((identity, upgrade)) => {
            let mut conn = Connection::new(gateway.shared.clone(), identity);
            let span = tracing::debug_span!("conn", client = %conn.client_id(), user = %conn.user());
            let socket = conn.open(stream, upgrade).instrument(span.clone()).await?;
            Some((conn, socket, span, tracked))
        }
        Err((code, message)) => {
            refuse(&mut stream, code, &message).await;
            None
        }
    }
}

/// Serves plain HTTP requests (health checks, metrics) on a connection whose first request
/// head was already read.
async fn serve_http(router: Router, stream: Prefixed) {
    let service = TowerToHyperService::new(router);
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

/// What the request head says, as far as the gateway cares.
struct Head {
    /// Bytes of the head, up to and including the blank line.
    len: usize,
    method: String,
    path: String,
    query: String,
    /// Lower-cased names of the few headers read.
    upgrade: Option<String>,
    connection: Option<String>,
    version: Option<String>,
    key: Option<String>,
    authorization: Option<String>,
}

enum HeadError {
    /// The client went away or sent nothing.
    Closed,
    Invalid(String),
}

/// Reads until the request head is complete (at most [`MAX_HEAD`] bytes) and parses it.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Head, HeadError> {
    loop {
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::Invalid(format!("request head larger than {MAX_HEAD} bytes")));
        }
        let read = stream.read_buf(buf).await.map_err(|_| HeadError::Closed)?;
        if read == 0 {
            return Err(HeadError::Closed);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let len = match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(HeadError::Invalid(format!("malformed HTTP request: {e}"))),
        };
        let target = request.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut head = Head {
            len,
            method: request.method.unwrap_or("").to_string(),
            path: path.to_string(),
            query: query.to_string(),
            upgrade: None,
            connection: None,
            version: None,
            key: None,
            authorization: None,
        };
        for header in request.headers.iter() {
            let slot = match header.name.to_ascii_lowercase().as_str() {
                "upgrade" => &mut head.upgrade,
                "connection" => &mut head.connection,
                "sec-websocket-version" => &mut head.version,
                "sec-websocket-key" => &mut head.key,
                "authorization" => &mut head.authorization,
                _ => continue,
            };
            *slot = std::str::from_utf8(header.value).ok().map(|v| v.trim().to_string());
        }
        return Ok(head);
    }
}

/// Checks a `/ws` request: a WebSocket upgrade, a valid token, permitted channels, a ready
/// gateway. Any refusal comes with the error code and message for the client.
fn check(gateway: &Gateway, head: &Head, leftover: Vec<u8>) -> Result<(Identity, Upgrade), policy::Denied> {
    let has = |value: &Option<String>, token: &str| {
        value.as_deref().is_some_and(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    if head.method != "GET"
        || !has(&head.upgrade, "websocket")
        || !has(&head.connection, "upgrade")
        || head.version.as_deref() != Some("13")
    {
        return Err((
            ErrorCode::MalformedFrame,
            "expected a WebSocket upgrade: GET with Upgrade: websocket, Connection: Upgrade, \
             Sec-WebSocket-Version: 13"
                .into(),
        ));
    }
    let Some(key) = head.key.as_deref() else {
        return Err((ErrorCode::MalformedFrame, "missing Sec-WebSocket-Key".into()));
    };
    let params: ConnectParams = serde_urlencoded::from_str(&head.query)
        .map_err(|e| (ErrorCode::MalformedFrame, format!("malformed query string: {e}")))?;
    let bearer = head.authorization.as_deref().and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = params.token.as_deref().or(bearer) else {
        return Err((
            ErrorCode::Unauthorized,
            "missing token: pass ?token=<JWT> or Authorization: Bearer".into(),
        ));
    };
    let identity = gateway.shared.verifier.verify(token).map_err(|e| (e.code, e.message))?;
    let config = &gateway.shared.config;
    let requested = match params.subscribe.as_deref() {
        None => Vec::new(),
        Some(list) => policy::connect_subscriptions(
            &identity,
            list,
            &gateway.shared.namespaces,
            config.personal_channel,
            config.max_subscriptions,
        )?,
    };
    if !gateway.is_ready() {
        return Err((ErrorCode::Unavailable, "gateway not ready: broker unavailable, retry later".into()));
    }
    let ws = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(config.write_buffer_size)
        .max_write_buffer_size(config.max_write_buffer_size)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    Ok((identity, Upgrade { accept: derive_accept_key(key.as_bytes()), requested, leftover, config: ws }))
}

/// Answers with an HTTP error and a JSON body `{"error": {"code", "message"}}`, then closes.
pub(crate) async fn refuse(stream: &mut TcpStream, code: ErrorCode, message: &str) {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(HEAD_TIMEOUT, write).await;
}

/// The `101` answer to `upgrade` followed by `first`, a text frame, ready for one write.
pub(crate) fn switching_protocols(upgrade: &Upgrade, first: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {}\r\n\r\n",
        upgrade.accept
    )
    .into_bytes();
    crate::wire::put_text(first.as_bytes(), &mut out);
    out
}

/// A stream whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
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
