//! Plain HTTP on the gateway's port (`/livez`, `/readyz`, `/metrics`, the demo page), several
//! requests per connection, and the WebSocket upgrade as any of them.
//!
//! The gateway reads every request head itself ([`head::read_head`]), answers plain
//! requests through the router of [`Gateway::router`], and keeps reading: a connection can
//! carry health checks and scrapes and then, as a later request, `GET /ws`, which is handed
//! back to be upgraded. A proxy that reuses its idle connections to a gateway for upgrades
//! (HAProxy does unless told otherwise) gets its upgrade rather than a 404.
//!
//! HTTP/1.1 keep-alive, bounded:
//! - `Connection: close`, and HTTP/1.0 without `Connection: keep-alive`, close the connection
//!   after the answer;
//! - a connection idle for [`IDLE_TIMEOUT`] between requests is closed without an answer, as
//!   is every idle one when the gateway shuts down; answers given while it drains say
//!   `connection: close`;
//! - after [`MAX_REQUESTS`] plain requests the answer says `connection: close` and the
//!   connection is closed;
//! - every request head must be complete within `gateway.handshake_timeout` (the first from
//!   the accept, later ones from their first byte) and holds a handshake slot
//!   (`gateway.max_handshakes`) until it is answered; an idle connection holds none, and a
//!   request that finds none free is answered 503;
//! - requests with a body are refused (400): no route takes one.

use std::io::Write as _;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, Version, header};
use herald_protocol::ErrorCode;
use hyper::service::Service as _;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::{Gateway, HandshakeSlot};
use crate::head::{self, HeadError, RequestHead};
use crate::refusal;

/// How long a kept-alive connection may wait for its next request. Longer than the usual
/// scrape and health-check intervals (15 to 30 s), so a scraper that keeps its connection
/// keeps it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most plain requests answered on one connection.
pub const MAX_REQUESTS: u32 = 1000;

/// How long a connection closed by the gateway, not the client, is read from and its bytes
/// discarded, so that closing it does not reset it ([`linger`]).
const LINGER: Duration = Duration::from_secs(1);

/// How long writing an answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer body collected: the biggest is `/metrics`, a few tens of KiB.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Reads requests on `stream` and answers the plain ones until one is `GET /ws` (or any other
/// request for `/ws`): returns its head, whose bytes start `buf`, and the handshake slot it
/// holds. `None` once the connection is done with. `slot` is the one the first request holds.
pub(crate) async fn serve(
    gateway: &Gateway,
    router: &Router,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    slot: HandshakeSlot,
) -> Option<(RequestHead, HandshakeSlot)> {
    let shared = gateway.shared();
    let mut slot = Some(slot);
    let mut answered = 0;
    loop {
        let held = match slot.take() {
            Some(held) => held,
            None => {
                if buf.is_empty() && !next_request(stream, buf, gateway).await {
                    return None;
                }
                let Some(held) = HandshakeSlot::acquire(shared) else {
                    shared.metrics.limit_hit("max_handshakes");
                    let message = "too many connections being set up at once, retry";
                    refusal::http_error_with(stream, ErrorCode::Unavailable, message, Some(1)).await;
                    return None;
                };
                held
            }
        };
        let read = head::read_head(stream, buf);
        let head = match tokio::time::timeout(shared.config.handshake_timeout, read).await {
            Ok(Ok(head)) => head,
            Ok(Err(HeadError::Closed)) => return None,
            Err(_) => {
                shared.metrics.limit_hit("handshake_timeout");
                return None;
            }
            Ok(Err(e)) => {
                refusal::http_error(stream, ErrorCode::MalformedFrame, &e.to_string()).await;
                return None;
            }
        };
        if head.path == "/ws" {
            return Some((head, held));
        }
        if head.has_body {
            let message = "the gateway's HTTP routes take no request body";
            refusal::http_error(stream, ErrorCode::MalformedFrame, message).await;
            return None;
        }
        answered += 1;
        let keep_alive = head.keep_alive && answered < MAX_REQUESTS && !shared.shutdown.is_cancelled();
        let answer = answer(router, &buf[..head.len], &head, keep_alive).await;
        buf.drain(..head.len);
        let write = async {
            stream.write_all(&answer?).await.ok()?;
            if !keep_alive {
                stream.shutdown().await.ok()?;
            }
            Some(())
        };
        if !matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Some(()))) {
            return None;
        }
        if !keep_alive {
            if head.keep_alive {
                drop(held);
                linger(stream).await;
            }
            return None;
        }
        drop(held);
    }
}

/// Reads and discards what a client sends after the gateway closed a connection it meant to
/// keep (its last request, or shutdown), until the client closes too or [`LINGER`] passes.
/// Closing a socket with unread bytes resets it, and a reset can reach the client before it
/// read its last answer: a client that pipelined requests past the last one would lose it.
async fn linger(stream: &mut TcpStream) {
    let discard = async {
        let mut sink = [0; 1024];
        while let Ok(1..) = stream.read(&mut sink).await {}
    };
    let _ = tokio::time::timeout(LINGER, discard).await;
}

/// Waits for the first bytes of the next request on an idle connection: `false` when the
/// client closed it, or [`IDLE_TIMEOUT`] passed, or the gateway shuts down.
async fn next_request(stream: &mut TcpStream, buf: &mut Vec<u8>, gateway: &Gateway) -> bool {
    let read = tokio::select! {
        read = tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(buf)) => read,
        () = gateway.shared().shutdown.cancelled() => return false,
    };
    matches!(read, Ok(Ok(n)) if n > 0)
}

/// The answer of `router` to the request whose head is `raw`, as bytes to write: `None` if
/// the router's body could not be read.
async fn answer(router: &Router, raw: &[u8], head: &RequestHead, keep_alive: bool) -> Option<Vec<u8>> {
    let response = match request(raw) {
        Some(request) => match TowerToHyperService::new(router.clone()).call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => plain(StatusCode::BAD_REQUEST, "malformed request target or header"),
    };
    let (parts, body) = response.into_parts();
    // axum answers HEAD with the GET route's headers, its length included, and no body.
    let is_head = head.method == Method::HEAD.as_str();
    let body = axum::body::to_bytes(body, MAX_BODY).await.ok()?;
    let status = parts.status;
    let mut out = Vec::with_capacity(256 + body.len());
    let reason = status.canonical_reason().unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", status.as_u16());
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::DATE
            || (name == header::CONTENT_LENGTH && !is_head)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !is_head {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    let _ = write!(out, "date: {}\r\n", httpdate::fmt_http_date(std::time::SystemTime::now()));
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if head.minor_version == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !is_head {
        out.extend_from_slice(&body);
    }
    Some(out)
}

/// The request whose head is `raw` (already parsed once, so known to be complete), with no
/// body. `None` if its target or a header is not valid for `http`.
fn request(raw: &[u8]) -> Option<Request<Body>> {
    let mut headers = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(raw).ok()?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut builder = Request::builder().method(parsed.method?).uri(parsed.path?).version(version);
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    builder.body(Body::empty()).ok()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}
