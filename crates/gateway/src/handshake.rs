//! The WebSocket handshake: the HTTP request head, its checks, and the answers.
//!
//! `/ws` is handled without an HTTP framework: the request head is parsed once
//! ([`parse_request_head`]), the token and the channels in the URL are checked, and, once the
//! connection subscribed its channels, the `101 Switching Protocols` answer is written in the
//! same write as the `connected` frame ([`switching_protocols`]). A refusal (bad token, bad
//! channel, broker unavailable) is a plain HTTP error with a JSON body ([`refuse`]), before
//! any WebSocket exists, or for browsers an upgrade closed at once ([`crate::refusal`]).

use std::time::Duration;

use axum::http::StatusCode;
use herald_protocol::{ChannelKind, ChannelName, ErrorCode, Since};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::Identity;
use crate::gateway::Gateway;
use crate::policy;

/// Longest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most request headers accepted.
pub(crate) const MAX_HEADERS: usize = 48;
/// How long writing a refusal may take.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The query string of `/ws`.
#[derive(Default)]
struct ConnectParams {
    token: Option<String>,
    /// Channels to subscribe before `connected`, comma-separated.
    subscribe: Option<String>,
    /// Positions to resume from, one per channel: `<channel>~<offset>~<epoch>` or
    /// `<channel>~acked`; the parameter may repeat.
    since: Vec<String>,
}

impl ConnectParams {
    /// Reads the query string; `token` and `subscribe` at most once, other names ignored.
    fn parse(query: &str) -> Result<Self, policy::Denied> {
        let malformed = |message: String| (ErrorCode::MalformedFrame, message);
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| malformed(format!("malformed query string: {e}")))?;
        let mut params = Self::default();
        for (key, value) in pairs {
            let slot = match key.as_str() {
                "token" => &mut params.token,
                "subscribe" => &mut params.subscribe,
                "since" => {
                    params.since.push(value);
                    continue;
                }
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(malformed(format!("malformed query string: duplicate field `{key}`")));
            }
        }
        Ok(params)
    }
}

/// What a request head says, as far as the gateway cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    pub method: String,
    pub path: String,
    pub query: String,
    /// The values of the few headers read, trimmed.
    pub upgrade: Option<String>,
    pub connection: Option<String>,
    pub version: Option<String>,
    pub key: Option<String>,
    pub authorization: Option<String>,
    /// How many `Authorization` headers the request has: more than one is refused, since
    /// which of them counts would be a guess.
    pub authorizations: usize,
    /// The HTTP minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the client keeps the connection open after the answer: in HTTP/1.1 unless it
    /// sent `Connection: close`, in HTTP/1.0 only if it sent `Connection: keep-alive`.
    pub keep_alive: bool,
    /// Whether a body follows the head: a `Content-Length` other than 0, or any
    /// `Transfer-Encoding`.
    pub has_body: bool,
    /// `Origin`: the page that opened the socket, sent by browsers ([`crate::origin`]).
    pub origin: Option<String>,
    /// `Host`: where the request was sent, for the same-origin check.
    pub host: Option<String>,
    /// `Sec-Fetch-Mode`: `websocket` from a browser ([`crate::refusal`]).
    pub fetch_mode: Option<String>,
}

/// Why a request head was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// The client went away or sent nothing.
    #[error("the client closed the connection before its request head was complete")]
    Closed,
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed HTTP request: {0}")]
    Malformed(#[from] httparse::Error),
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete. Bytes
/// after the head (the client's first frames) are left alone; [`RequestHead::len`] says where
/// they start. Never panics, whatever `buf` holds.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = RequestHead {
        len,
        method: request.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        upgrade: None,
        connection: None,
        version: None,
        key: None,
        authorization: None,
        authorizations: 0,
        minor_version: request.version.unwrap_or(1),
        keep_alive: false,
        has_body: false,
        origin: None,
        host: None,
        fetch_mode: None,
    };
    for header in request.headers.iter() {
        let slot = match header.name.to_ascii_lowercase().as_str() {
            "content-length" => {
                head.has_body |= header.value.trim_ascii() != b"0";
                continue;
            }
            "transfer-encoding" => {
                head.has_body = true;
                continue;
            }
            "upgrade" => &mut head.upgrade,
            "connection" => &mut head.connection,
            "sec-websocket-version" => &mut head.version,
            "sec-websocket-key" => &mut head.key,
            "origin" => &mut head.origin,
            "host" => &mut head.host,
            "sec-fetch-mode" => &mut head.fetch_mode,
            "authorization" => {
                head.authorizations += 1;
                &mut head.authorization
            }
            _ => continue,
        };
        *slot = std::str::from_utf8(header.value).ok().map(|v| v.trim().to_string());
    }
    head.keep_alive = if head.minor_version == 0 {
        has_token(&head.connection, "keep-alive")
    } else {
        !has_token(&head.connection, "close")
    };
    Ok(Some(head))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &Option<String>, token: &str) -> bool {
    value.as_deref().is_some_and(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
}

/// Reads until the request head at the start of `buf` is complete (at most [`MAX_HEAD`]
/// bytes) and parses it. Bytes already in `buf` (a pipelined request) are parsed before
/// anything is read.
pub(crate) async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<RequestHead, HeadError> {
    loop {
        if let Some(head) = parse_request_head(buf)? {
            return Ok(head);
        }
        let read = stream.read_buf(buf).await.map_err(|_| HeadError::Closed)?;
        if read == 0 {
            return Err(HeadError::Closed);
        }
    }
}

/// A checked `/ws` request, ready to be answered with `101`.
pub(crate) struct Upgrade {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The channels of `?subscribe=`, checked.
    pub requested: Vec<ChannelName>,
    /// The positions of `?since=`, each for a channel with history the connection subscribes.
    pub since: Vec<(ChannelName, Since)>,
    /// Bytes the client sent after the request head (its first frames, if it did not wait).
    pub leftover: Vec<u8>,
    pub config: WebSocketConfig,
    /// How a refusal after the checks (`Connection::open`'s) is answered: HTTP or a close,
    /// as for the checks' own ([`crate::refusal`]).
    pub answer: crate::refusal::Answer,
}

/// Checks a `/ws` request: a WebSocket upgrade, a valid token, permitted channels, a ready
/// gateway. Any refusal comes with the error code and message for the client. It waits only
/// for a token naming a `kid` the JWKS does not have yet: for the one fetch that every such
/// handshake shares (bounded by `auth.jwks_timeout`), while it holds its handshake slot.
pub(crate) async fn check(
    gateway: &Gateway,
    head: &RequestHead,
    leftover: Vec<u8>,
) -> Result<(Identity, Upgrade), policy::Denied> {
    if head.method != "GET"
        || !has_token(&head.upgrade, "websocket")
        || !has_token(&head.connection, "upgrade")
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
    if head.authorizations > 1 {
        return Err((ErrorCode::MalformedFrame, "more than one Authorization header".into()));
    }
    let params = ConnectParams::parse(&head.query)?;
    let bearer = head.authorization.as_deref().and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = params.token.as_deref().or(bearer) else {
        return Err((
            ErrorCode::Unauthorized,
            "missing token: pass ?token=<JWT> or Authorization: Bearer".into(),
        ));
    };
    let shared = gateway.shared();
    let identity = shared.verifier.verify_async(token).await.map_err(|e| (e.code, e.message))?;
    let config = &shared.config;
    let requested = match params.subscribe.as_deref() {
        None => Vec::new(),
        Some(list) => policy::connect_subscriptions(
            &identity,
            list,
            &shared.namespaces,
            config.personal_channel,
            config.max_subscriptions,
        )?,
    };
    let since = check_since(gateway, &identity, &requested, &params.since)?;
    if let Err(reason) = gateway.readiness() {
        return Err((ErrorCode::Unavailable, format!("gateway not ready: {reason}, retry later")));
    }
    let ws = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(config.write_buffer_size)
        .max_write_buffer_size(config.max_write_buffer_size)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    let accept = derive_accept_key(key.as_bytes());
    let answer = crate::refusal::Answer::checked(config.refusal, head, &accept);
    Ok((identity, Upgrade { accept, requested, since, leftover, config: ws, answer }))
}

/// Checks the URL's `since` parameters: each parses, names a channel the connection
/// subscribes (those of `subscribe=`, or the personal channel), once, and that channel keeps
/// history; `acked` only for the personal channel.
fn check_since(
    gateway: &Gateway,
    identity: &Identity,
    requested: &[ChannelName],
    params: &[String],
) -> Result<Vec<(ChannelName, Since)>, policy::Denied> {
    let shared = gateway.shared();
    let malformed = |message: String| (ErrorCode::MalformedFrame, message);
    let mut positions: Vec<(ChannelName, Since)> = Vec::with_capacity(params.len());
    for text in params {
        let (channel, since) =
            Since::from_url(text).map_err(|e| malformed(format!("invalid `since` {text}: {e}")))?;
        let personal =
            matches!(channel.kind(), ChannelKind::Personal(user) if user == identity.user.as_str());
        let subscribed = requested.contains(&channel) || (personal && shared.config.personal_channel);
        if !subscribed {
            return Err(malformed(format!("`since` for {channel}, which the connection does not subscribe")));
        }
        if positions.iter().any(|(c, _)| *c == channel) {
            return Err(malformed(format!("more than one `since` for {channel}")));
        }
        if since == Since::Acked && !personal {
            return Err(malformed(format!("`since` {text}: `acked` is for the personal channel only")));
        }
        if shared.namespaces.history(&channel, &shared.inbox).is_none() {
            return Err((ErrorCode::NoHistory, format!("{channel} keeps no history to resume from")));
        }
        positions.push((channel, since));
    }
    Ok(positions)
}

/// Answers with an HTTP error and a JSON body `{"error": {"code", "message"}}`, then closes.
pub(crate) async fn refuse(stream: &mut TcpStream, code: ErrorCode, message: &str) {
    refuse_with(stream, code, message, None).await
}

/// As [`refuse`], with a `Retry-After` of `retry_after` seconds when given.
pub(crate) async fn refuse_with(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_parsed_once_complete_and_its_leftover_is_not_touched() {
        let request = b"GET /ws?token=t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                        Authorization:  Bearer abc \r\n\r\nframes";
        assert_eq!(parse_request_head(&request[..20]), Ok(None));
        let head = parse_request_head(request).unwrap().unwrap();
        assert_eq!(
            (head.method.as_str(), head.path.as_str(), head.query.as_str()),
            ("GET", "/ws", "token=t")
        );
        assert_eq!(head.upgrade.as_deref(), Some("websocket"));
        assert_eq!(head.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(head.authorizations, 1);
        assert_eq!(&request[head.len..], b"frames");
    }

    #[test]
    fn keep_alive_and_bodies_follow_the_version_and_headers() {
        let head = |raw: &[u8]| parse_request_head(raw).unwrap().unwrap();
        let keep = |raw: &[u8]| head(raw).keep_alive;
        assert!(keep(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!head(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body);
        assert!(head(b"GET / HTTP/1.1\r\nContent-Length: 1\r\n\r\n").has_body);
        assert!(head(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").has_body);
    }

    #[test]
    fn repeated_authorization_headers_are_counted() {
        let request = b"GET /ws HTTP/1.1\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n";
        assert_eq!(parse_request_head(request).unwrap().unwrap().authorizations, 2);
    }

    #[test]
    fn garbage_and_oversized_heads_are_refused() {
        assert!(matches!(parse_request_head(b"\x00\x01 nonsense\r\n\r\n"), Err(HeadError::Malformed(_))));
        let endless = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert_eq!(parse_request_head(&endless), Err(HeadError::TooLarge));
    }
}
