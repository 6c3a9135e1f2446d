//! How a refused `/ws` handshake is answered: an HTTP error, or, for browsers, an upgrade
//! closed at once with a close code.
//!
//! A browser's `WebSocket` shows a page nothing of an HTTP error: no status, no body, only an
//! `error` event and a close with code 1006, the same as for a network that is down. A page
//! then cannot tell an expired token (fetch a new one) from an outage (retry later). So, by
//! default (`gateway.refusal = "browser"`), a refused handshake from a browser (one with an
//! `Origin` or `Sec-Fetch-Mode: websocket`) is upgraded and closed straight away with the
//! close code of the refusal ([`close_code`]) and a reason that starts with its error code
//! (`token_expired: ...`), which `CloseEvent.code` and `.reason` show the page. Other clients
//! read HTTP errors fine and keep getting them.
//!
//! Never upgraded: a request that is not a well-formed WebSocket upgrade, and a foreign
//! `Origin` ([`crate::origin`]): a page on another site gets no socket at all.

use std::time::Duration;

use axum::http::StatusCode;
use herald_protocol::{CloseCode, ErrorCode};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::head::RequestHead;
use crate::metrics::GatewayMetrics;

/// `gateway.refusal`: how refused handshakes are answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusalMode {
    /// Browsers get an upgrade closed with the refusal's close code, other clients an HTTP
    /// error.
    #[default]
    Browser,
    /// Every client gets an HTTP error (401, 403, 503, ...) with a JSON body.
    Http,
    /// Every client gets an upgrade closed with the refusal's close code.
    Close,
}

/// Longest close reason a close frame carries (RFC 6455: 125 bytes of payload, 2 of them the
/// code).
const MAX_REASON: usize = 123;

/// How long a refused client's bytes are read after the close frame, so that closing the
/// socket does not reset it before the client read the close.
const LINGER: Duration = Duration::from_secs(1);

/// How long writing a refusal may take.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a refusal needs from the request head, kept after the head is freed: the
/// `Sec-WebSocket-Accept` value when the refusal is to be an upgrade and a close.
#[derive(Debug)]
pub(crate) struct Answer {
    accept: Option<String>,
}

impl Answer {
    /// How a refusal of `head` is answered under `mode`.
    pub(crate) fn new(mode: RefusalMode, head: &RequestHead) -> Self {
        let accept = closes(mode, head)
            .then(|| upgrade_key(head))
            .flatten()
            .map(|key| derive_accept_key(key.as_bytes()));
        Self { accept }
    }

    /// As [`Answer::new`], for a request the handshake checked, whose `Sec-WebSocket-Accept`
    /// is `accept`: kept in its [`crate::handshake::Upgrade`] for what `Connection::open`
    /// refuses later (the per-user limit, the backend hook, the broker, a `since`).
    pub(crate) fn checked(mode: RefusalMode, head: &RequestHead, accept: &str) -> Self {
        Self { accept: closes(mode, head).then(|| accept.to_string()) }
    }
}

/// Whether a refusal of `head` is a close under `mode` (if the request can be upgraded).
fn closes(mode: RefusalMode, head: &RequestHead) -> bool {
    match mode {
        RefusalMode::Http => false,
        RefusalMode::Close => true,
        RefusalMode::Browser => is_browser(head),
    }
}

/// Whether the request comes from a browser: browsers send `Origin` on every WebSocket
/// handshake, and newer ones `Sec-Fetch-Mode: websocket` too.
pub(crate) fn is_browser(head: &RequestHead) -> bool {
    head.origin.is_some() || head.fetch_mode.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("websocket"))
}

/// The `Sec-WebSocket-Key` of a well-formed upgrade; `None` for anything else, which cannot
/// be upgraded.
fn upgrade_key(head: &RequestHead) -> Option<&str> {
    head.is_websocket_upgrade().then_some(head.key.as_deref()).flatten()
}

/// Answers with an HTTP error and a JSON body `{"error": {"code", "message"}}`, then closes.
pub(crate) async fn http_error(stream: &mut TcpStream, code: ErrorCode, message: &str) {
    http_error_with(stream, code, message, None).await
}

/// As [`http_error`], with a `Retry-After` of `retry_after` seconds when given.
pub(crate) async fn http_error_with(
    stream: &mut TcpStream,
    code: ErrorCode,
    message: &str,
    retry_after: Option<u32>,
) {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let retry = retry_after.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, write).await;
}

/// The close code a handshake refused with `code` closes with.
pub fn close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::Forbidden => CloseCode::FORBIDDEN,
        code => code.close_code().unwrap_or(CloseCode::REFUSED),
    }
}

/// Answers a refused handshake as `answer` says, counts it, and closes the connection.
pub(crate) async fn refuse(
    stream: &mut TcpStream,
    answer: &Answer,
    metrics: &GatewayMetrics,
    code: ErrorCode,
    message: &str,
) {
    let Some(accept) = answer.accept.as_deref() else {
        metrics.refused(code, "http");
        return http_error(stream, code, message).await;
    };
    metrics.refused(code, "close");
    let mut reason = format!("{code}: {message}");
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(&close_frame(close_code(code), &reason));
    let write = async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(LINGER, write).await.is_ok() {
        // The client answers the close with its own; read until then, or for LINGER.
        let discard = async {
            let mut sink = [0; 512];
            while let Ok(1..) = stream.read(&mut sink).await {}
        };
        let _ = tokio::time::timeout(LINGER, discard).await;
    }
}

/// A server close frame (unmasked) with `code` and `reason` (at most [`MAX_REASON`] bytes).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x88);
    frame.push((2 + reason.len()) as u8);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        crate::head::parse_request_head(raw.as_bytes()).unwrap().unwrap()
    }

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                           Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    /// Browsers get a close, other clients HTTP, and a malformed upgrade never a close.
    #[test]
    fn browsers_get_a_close_and_others_http() {
        let browser = head(&format!("{UPGRADE}Origin: http://gw\r\n\r\n"));
        let fetch = head(&format!("{UPGRADE}Sec-Fetch-Mode: websocket\r\n\r\n"));
        let other = head(&format!("{UPGRADE}\r\n"));
        let broken = head("GET /ws HTTP/1.1\r\nOrigin: http://gw\r\n\r\n");
        let closes = |mode, head: &RequestHead| Answer::new(mode, head).accept.is_some();
        assert!(closes(RefusalMode::Browser, &browser));
        assert!(closes(RefusalMode::Browser, &fetch));
        assert!(!closes(RefusalMode::Browser, &other));
        assert!(!closes(RefusalMode::Browser, &broken));
        assert!(closes(RefusalMode::Close, &other));
        assert!(!closes(RefusalMode::Close, &broken));
        assert!(!closes(RefusalMode::Http, &browser));
    }

    /// Each refusal has its close code; the 4xx-like ones without one of their own get 4000.
    #[test]
    fn refusals_map_to_close_codes() {
        assert_eq!(close_code(ErrorCode::TokenExpired), 4001);
        assert_eq!(close_code(ErrorCode::Unauthorized), 4001);
        assert_eq!(close_code(ErrorCode::Forbidden), 4003);
        assert_eq!(close_code(ErrorCode::Unavailable), 1013);
        assert_eq!(close_code(ErrorCode::InvalidChannel), 4000);
        assert_eq!(close_code(ErrorCode::Unrecoverable), 4000);
        assert_eq!(close_code(ErrorCode::TooManyConnections), 4030);
        assert_eq!(close_frame(4001, "x"), [0x88, 3, 0x0f, 0xa1, b'x']);
    }
}
