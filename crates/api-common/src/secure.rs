//! The APIs' listeners over TLS, mutual when a client CA is configured ([`crate::tls`]): TCP
//! connections are accepted as before, their handshakes run side by side, and only
//! connections whose handshake succeeded (with a client certificate that chains to the CA, in
//! mutual TLS) reach axum or tonic. A client without a certificate never gets to send a
//! request, let alone an API key.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::lifecycle::{Counted, CountingListener};

/// A handshake not done in this long is dropped, so a client that connects and says nothing
/// holds no slot of [`MAX_HANDSHAKES`] for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once per listener. When all are taken, accepted connections wait
/// in the kernel's backlog until one finishes (or times out): the work a burst of connections
/// (or a flood of slow clients) makes is bounded.
const MAX_HANDSHAKES: usize = 64;

/// A connection after its TLS handshake.
pub struct TlsConn(TlsStream<Counted>);

/// Runs the TLS handshake of each accepted `(connection, address)`, at most
/// [`MAX_HANDSHAKES`] at once; yields those that succeeded. Failures are logged at `debug`
/// (a client without a certificate, a port scan) and dropped.
pub(crate) fn handshakes<A: Send + 'static>(
    accepted: impl Stream<Item = (Counted, A)> + Send + 'static,
    acceptor: TlsAcceptor,
) -> BoxStream<'static, (TlsConn, A)> {
    accepted
        .map(move |(stream, addr)| {
            let acceptor = acceptor.clone();
            async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => Some((TlsConn(tls), addr)),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "tls handshake failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!("tls handshake timed out");
                        None
                    }
                }
            }
        })
        .buffer_unordered(MAX_HANDSHAKES)
        .filter_map(std::future::ready)
        .boxed()
}

/// The HTTP listener over TLS: [`CountingListener`]'s connections after their handshake.
pub(crate) struct TlsListener {
    conns: BoxStream<'static, (TlsConn, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub(crate) fn new(listener: CountingListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local = axum::serve::Listener::local_addr(&listener)?;
        let accepted = futures_util::stream::unfold(listener, |mut listener| async move {
            let accepted = axum::serve::Listener::accept(&mut listener).await;
            Some((accepted, listener))
        });
        Ok(Self { conns: handshakes(accepted, acceptor), local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.conns.next().await {
            Some(conn) => conn,
            // The accepting stream never ends.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
