//! The lifecycle of the publisher API and presence in the logs, at `info`: readiness changes
//! ([`ReadinessLog`]) and, for the drain, how many connections are open ([`Counted`]).
//! `docs/operations.md` lists the lines.

use std::fmt::Display;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;

const UNKNOWN: u8 = 0;
const READY: u8 = 1;
const NOT_READY: u8 = 2;

/// Logs a role's readiness when it changes. Readiness is probed by each `/readyz` and gRPC
/// health check (a Redis ping), and by one probe at start; each probe reports here, and only
/// a probe whose outcome differs from the last one is logged: `ready`, or `not ready` with
/// the reason.
#[derive(Debug)]
pub struct ReadinessLog {
    /// The `service` field of the lines: `publisher-api` or `presence`.
    service: &'static str,
    last: AtomicU8,
}

impl ReadinessLog {
    pub fn new(service: &'static str) -> Self {
        Self { service, last: AtomicU8::new(UNKNOWN) }
    }

    /// Records a probe's outcome, logging it if it is a change.
    pub fn observe<T, E: Display>(&self, outcome: &Result<T, E>) {
        let now = if outcome.is_ok() { READY } else { NOT_READY };
        if self.last.swap(now, Ordering::Relaxed) == now {
            return;
        }
        match outcome {
            Ok(_) => tracing::info!(service = self.service, "ready"),
            Err(reason) => tracing::warn!(service = self.service, reason = %reason, "not ready"),
        }
    }
}

/// A connection counted in `open` while it exists: what a drain reports as left.
pub struct Counted {
    inner: TcpStream,
    open: Arc<AtomicUsize>,
}

impl Counted {
    pub fn new(inner: TcpStream, open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self { inner, open: open.clone() }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
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

/// An HTTP listener whose connections are [`Counted`], with `TCP_NODELAY` on each.
pub(crate) struct CountingListener {
    pub(crate) inner: tokio::net::TcpListener,
    pub(crate) open: Arc<AtomicUsize>,
}

impl axum::serve::Listener for CountingListener {
    type Io = Counted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // So a response written while the client's ACK of the previous one is delayed
        // leaves at once instead of waiting for it.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        (Counted::new(stream, &self.open), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
