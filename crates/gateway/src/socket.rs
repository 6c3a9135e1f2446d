//! The connection task's side of an attached socket, for the WebSocket library: reads come
//! from the socket, writes (replies, pongs, the close frame) go through the connection's
//! [`Writer`], after what is queued already. A write never waits: what the socket does not
//! take is queued, and written by [`Writer::drain`]; a full queue fails the write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;

use crate::writer::{Overflow, Writer};

/// An open connection as the WebSocket library sees it.
pub(crate) type WebSocket = WebSocketStream<Socket>;

pub struct Socket(pub Arc<Writer>);

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let socket = self.0.socket();
        loop {
            ready!(socket.poll_read_ready(cx))?;
            match socket.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(match self.0.push_control(Bytes::copy_from_slice(buf)) {
            Ok(()) => Ok(buf.len()),
            Err(Overflow::Full) => Err(io::Error::other("outbound queue full")),
            Err(Overflow::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
