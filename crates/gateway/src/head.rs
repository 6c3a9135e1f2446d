//! The HTTP request head: read and parsed once, by the gateway itself, for every request on
//! its port (`/ws` and the plain routes alike). Only the few headers the gateway acts on are
//! kept ([`RequestHead`]); the bytes after the head (a client's first frames) are left alone.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most request headers accepted.
pub(crate) const MAX_HEADERS: usize = 48;

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

impl RequestHead {
    /// Whether this is a WebSocket upgrade as RFC 6455 asks: `GET` with `Upgrade: websocket`,
    /// `Connection: Upgrade` and `Sec-WebSocket-Version: 13`.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.method == "GET"
            && has_token(&self.upgrade, "websocket")
            && has_token(&self.connection, "upgrade")
            && self.version.as_deref() == Some("13")
    }
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
