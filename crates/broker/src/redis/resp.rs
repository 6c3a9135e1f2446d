//! A minimal Redis Pub/Sub connection: RESP2 over one TCP stream, read only when the node is
//! ready for more.
//!
//! A general client reads its socket eagerly into an unbounded in-process queue, so a node that
//! falls behind would grow without limit. Here nothing is read ahead: a lagging node leaves the
//! backlog in Redis, whose `client-output-buffer-limit pubsub` disconnects it, and the node
//! reconnects and resubscribes. Memory per node is one read buffer.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest frame accepted from Redis. Larger ones are a protocol error and end the connection.
pub const MAX_FRAME: usize = 64 << 20;

/// What Redis sent on a Pub/Sub connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Message {
        channel: &'a [u8],
        payload: &'a [u8],
    },
    /// A message of `channel` for the node's subscription to `pattern` (`PSUBSCRIBE`).
    PMessage {
        pattern: &'a [u8],
        channel: &'a [u8],
        payload: &'a [u8],
    },
    Subscribed(&'a [u8]),
    Unsubscribed(&'a [u8]),
    /// Redis confirmed a `PSUBSCRIBE` of the pattern.
    PSubscribed(&'a [u8]),
    /// Redis confirmed a `PUNSUBSCRIBE` of the pattern.
    PUnsubscribed(&'a [u8]),
    Pong,
    /// `+OK` and other replies that need no action.
    Ok,
}

#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("redis connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis closed the connection")]
    Closed,
    #[error("redis replied with an error: {0}")]
    Server(String),
    #[error("redis protocol error: {0}")]
    Protocol(&'static str),
}

/// One Pub/Sub connection.
pub struct PubSubConn {
    stream: TcpStream,
    buf: BytesMut,
    /// Bytes of `buf` consumed by the event returned last; dropped before the next read.
    consumed: usize,
}

impl PubSubConn {
    /// Connects and authenticates.
    pub async fn connect(
        host: &str,
        port: u16,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Self, RespError> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        let mut conn = Self { stream, buf: BytesMut::with_capacity(16 * 1024), consumed: 0 };
        if let Some(password) = password {
            match username {
                Some(user) => conn.send(&[b"AUTH", user.as_bytes(), password.as_bytes()]).await?,
                None => conn.send(&[b"AUTH", password.as_bytes()]).await?,
            }
            conn.next_event().await?;
        }
        Ok(conn)
    }

    /// Writes one command.
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<(), RespError> {
        let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads one reply that is an array of bulk strings (`nil` elements and a `nil` reply
    /// become `None`), for plain commands such as Sentinel queries.
    pub async fn reply_strings(&mut self) -> Result<Option<Vec<Vec<u8>>>, RespError> {
        self.buf.advance(self.consumed);
        self.consumed = 0;
        loop {
            if let Some(used) = frame_len(&self.buf)? {
                self.consumed = used;
                let frame = &self.buf[..used];
                return match frame[0] {
                    b'-' => Err(RespError::Server(String::from_utf8_lossy(&frame[1..used - 2]).into_owned())),
                    b'*' if frame.starts_with(b"*-1") => Ok(None),
                    b'*' => {
                        let mut items = Items { buf: frame, pos: find_crlf(frame).unwrap_or(0) + 2 };
                        let mut out = Vec::new();
                        while items.pos < used {
                            out.push(items.next_bulk()?.unwrap_or_default().to_vec());
                        }
                        Ok(Some(out))
                    }
                    b'$' if frame.starts_with(b"$-1") => Ok(None),
                    _ => Err(RespError::Protocol("expected an array reply")),
                };
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(RespError::Closed);
            }
        }
    }

    /// The stream, for a connection that is done with its handshake. Nothing may be left
    /// unread: Redis sends nothing on a plain connection that was not asked for.
    pub fn into_stream(self) -> TcpStream {
        debug_assert_eq!(self.buf.len(), self.consumed, "unread bytes after the handshake");
        self.stream
    }

    /// Whether the next event is already buffered, so [`PubSubConn::next_event`] returns it
    /// without reading (a malformed frame counts: reading it returns the error).
    pub fn has_event(&self) -> bool {
        !matches!(frame_len(&self.buf[self.consumed..]), Ok(None))
    }

    /// The next event. Cancel-safe: a partly read frame stays in the buffer.
    pub async fn next_event(&mut self) -> Result<Event<'_>, RespError> {
        self.buf.advance(self.consumed);
        self.consumed = 0;
        loop {
            if let Some(used) = frame_len(&self.buf)? {
                self.consumed = used;
                return parse_event(&self.buf[..used]);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(RespError::Closed);
            }
        }
    }
}

/// The length of the complete frame at the start of `buf`, or `None` if more bytes are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, RespError> {
    let mut pos = 0;
    // Elements still to read, starting with the frame itself.
    let mut pending: usize = 1;
    while pending > 0 {
        let Some(line_end) = find_crlf(&buf[pos..]) else { return Ok(None) };
        let line = &buf[pos..pos + line_end];
        let next = pos + line_end + 2;
        pending -= 1;
        match line.first() {
            Some(b'+' | b'-' | b':') => pos = next,
            Some(b'$') => {
                let len = parse_int(&line[1..])?;
                if len < 0 {
                    pos = next;
                } else {
                    let len = len as usize;
                    if len > MAX_FRAME {
                        return Err(RespError::Protocol("bulk string larger than the frame limit"));
                    }
                    if buf.len() < next + len + 2 {
                        return Ok(None);
                    }
                    pos = next + len + 2;
                }
            }
            Some(b'*') => {
                let n = parse_int(&line[1..])?;
                // Every element takes at least 3 bytes; a larger count cannot fit, and the
                // count of pending elements must not overflow.
                if n > MAX_FRAME as i64 {
                    return Err(RespError::Protocol("array longer than the frame limit"));
                }
                if n > 0 {
                    pending += n as usize;
                }
                pos = next;
            }
            _ => return Err(RespError::Protocol("unexpected frame type")),
        }
        if pos > MAX_FRAME {
            return Err(RespError::Protocol("frame larger than the frame limit"));
        }
    }
    Ok(Some(pos))
}

/// Interprets one complete frame.
pub fn parse_event(frame: &[u8]) -> Result<Event<'_>, RespError> {
    match frame[0] {
        b'+' => {
            let text = &frame[1..frame.len() - 2];
            Ok(if text.eq_ignore_ascii_case(b"PONG") { Event::Pong } else { Event::Ok })
        }
        b'-' => Err(RespError::Server(String::from_utf8_lossy(&frame[1..frame.len() - 2]).into_owned())),
        b'*' => {
            let mut items = Items { buf: frame, pos: find_crlf(frame).unwrap_or(0) + 2 };
            let kind = items.next_bulk()?.unwrap_or_default();
            match kind.to_ascii_lowercase().as_slice() {
                // Sharded Pub/Sub (a cluster) has its own names for the same events.
                b"message" | b"smessage" => {
                    let channel = items.next_bulk()?.ok_or(RespError::Protocol("message without channel"))?;
                    let payload = items.next_bulk()?.ok_or(RespError::Protocol("message without payload"))?;
                    Ok(Event::Message { channel, payload })
                }
                b"pmessage" => {
                    let pattern =
                        items.next_bulk()?.ok_or(RespError::Protocol("pmessage without pattern"))?;
                    let channel =
                        items.next_bulk()?.ok_or(RespError::Protocol("pmessage without channel"))?;
                    let payload =
                        items.next_bulk()?.ok_or(RespError::Protocol("pmessage without payload"))?;
                    Ok(Event::PMessage { pattern, channel, payload })
                }
                b"psubscribe" => Ok(Event::PSubscribed(items.next_bulk()?.unwrap_or_default())),
                b"punsubscribe" => Ok(Event::PUnsubscribed(items.next_bulk()?.unwrap_or_default())),
                b"subscribe" | b"ssubscribe" => Ok(Event::Subscribed(items.next_bulk()?.unwrap_or_default())),
                b"unsubscribe" | b"sunsubscribe" => {
                    Ok(Event::Unsubscribed(items.next_bulk()?.unwrap_or_default()))
                }
                b"pong" => Ok(Event::Pong),
                _ => Ok(Event::Ok),
            }
        }
        _ => Ok(Event::Ok),
    }
}

/// Reads bulk strings out of an array frame known to be complete.
struct Items<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Items<'a> {
    fn next_bulk(&mut self) -> Result<Option<&'a [u8]>, RespError> {
        let rest = &self.buf[self.pos..];
        let end = find_crlf(rest).ok_or(RespError::Protocol("truncated array"))?;
        let line = &rest[..end];
        self.pos += end + 2;
        match line.first() {
            Some(b'$') => {
                let len = parse_int(&line[1..])?;
                if len < 0 {
                    return Ok(None);
                }
                let start = self.pos;
                self.pos += len as usize + 2;
                Ok(Some(&self.buf[start..start + len as usize]))
            }
            // Integers (subscription counts) and the like carry nothing we need.
            _ => Ok(None),
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_int(digits: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(digits).ok().and_then(|s| s.parse().ok()).ok_or(RespError::Protocol("invalid length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_measured_only_when_complete() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$5\r\nhello\r\n";
        for cut in 0..msg.len() {
            assert_eq!(frame_len(&msg[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(frame_len(msg).unwrap(), Some(msg.len()));
        let mut two = msg.to_vec();
        two.extend_from_slice(b"+PONG\r\n");
        assert_eq!(frame_len(&two).unwrap(), Some(msg.len()));
    }

    #[test]
    fn pubsub_frames_become_events() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$5\r\nhe\r\no\r\n";
        assert_eq!(parse_event(msg).unwrap(), Event::Message { channel: b"room", payload: b"he\r\no" });
        assert_eq!(
            parse_event(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n").unwrap(),
            Event::Subscribed(b"a")
        );
        assert_eq!(
            parse_event(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n").unwrap(),
            Event::Unsubscribed(b"a")
        );
        assert_eq!(
            parse_event(b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n").unwrap(),
            Event::Unsubscribed(b"a")
        );
        assert_eq!(
            parse_event(b"*3\r\n$8\r\nsmessage\r\n$1\r\na\r\n$1\r\nx\r\n").unwrap(),
            Event::Message { channel: b"a", payload: b"x" }
        );
        assert_eq!(parse_event(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n").unwrap(), Event::Pong);
        assert_eq!(
            parse_event(b"*4\r\n$8\r\npmessage\r\n$3\r\ne:*\r\n$3\r\ne:a\r\n$1\r\nx\r\n").unwrap(),
            Event::PMessage { pattern: b"e:*", channel: b"e:a", payload: b"x" }
        );
        assert_eq!(
            parse_event(b"*3\r\n$10\r\npsubscribe\r\n$3\r\ne:*\r\n:1\r\n").unwrap(),
            Event::PSubscribed(b"e:*")
        );
        assert_eq!(
            parse_event(b"*3\r\n$12\r\npunsubscribe\r\n$3\r\ne:*\r\n:0\r\n").unwrap(),
            Event::PUnsubscribed(b"e:*")
        );
        assert_eq!(parse_event(b"+PONG\r\n").unwrap(), Event::Pong);
        assert!(matches!(parse_event(b"-NOAUTH Authentication required.\r\n"), Err(RespError::Server(_))));
    }

    #[test]
    fn absurd_lengths_are_refused() {
        assert!(frame_len(b"$999999999999\r\n").is_err());
        assert!(frame_len(b"$abc\r\n").is_err());
        assert!(frame_len(b"?\r\n").is_err());
        assert!(frame_len(b"*9223372036854775807\r\n").is_err());
        assert!(frame_len(&b"*67108864\r\n".repeat(3)).unwrap().is_none());
    }
}
