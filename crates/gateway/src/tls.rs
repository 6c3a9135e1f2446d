//! `wss://` served by the gateway itself (`gateway.tls`), for deployments with no
//! TLS-terminating proxy in front: the WebSocket and every HTTP route (health, metrics, the
//! demo) on the same listener, over TLS.
//!
//! The gateway's connection code writes to its sockets directly (a `TcpStream` each, written
//! from the hub without a task in between, see `writer`), so TLS is terminated in front of
//! it, in process: [`front`] accepts on the public listener, completes the TLS handshake, and
//! relays the plain bytes to the accept loop over a loopback connection to a listener only
//! this process knows. That costs, per connection, a relay task, two more loopback sockets
//! (three descriptors instead of one) and a copy each way; at tens of thousands of
//! connections a TLS-terminating proxy in front (see docs/operations.md) costs less. What the
//! gateway sees of a client is unchanged (it reads no peer address; `Host` and `Origin` are in
//! the relayed request).
//!
//! The certificate is reloaded when its files change (polled every
//! `gateway.tls.reload_interval`) and on `SIGHUP`, through
//! [`herald_api_common::tls::ReloadingCert`]; a new certificate serves new handshakes, open
//! connections keep theirs, and files that fail to load leave the previous one in service.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_api_common::tls::{ReloadingCert, TlsConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;

/// Starts TLS on `public` and returns the loopback listener the accept loop serves instead.
/// Its tasks (the TLS accept loop, the relays, the certificate's reloads) run on the gateway's
/// tracker and end at shutdown.
pub(crate) async fn front(
    gateway: &Gateway,
    public: TcpListener,
    config: &TlsConfig,
) -> io::Result<TcpListener> {
    let shared = gateway.shared();
    let (mut server, cert) = herald_api_common::tls::server_config(config)
        .map_err(|e| io::Error::other(e.config_error("gateway.tls", config)))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let inner = TcpListener::bind(("127.0.0.1", 0)).await?;
    let relay_to = inner.local_addr()?;
    let token = shared.shutdown.clone();
    shared.tasks.spawn(cert.clone().watch(config.reload_interval, token.clone()));
    #[cfg(unix)]
    shared.tasks.spawn(reload_on_sighup(cert, token.clone()));
    // After shutdown, a relay lasts as long as the drain may, then ends whatever its client does.
    let linger = shared.config.drain_window + shared.config.close_timeout + Duration::from_secs(1);
    let front = Front {
        acceptor,
        relay_to,
        handshakes: Arc::new(Semaphore::new(shared.config.max_handshakes)),
        handshake_timeout: shared.config.handshake_timeout,
        linger,
        gateway: gateway.clone(),
    };
    shared.tasks.spawn(front.run(public, token));
    Ok(inner)
}

/// The TLS accept loop's state.
struct Front {
    acceptor: TlsAcceptor,
    /// The loopback listener of the accept loop.
    relay_to: SocketAddr,
    /// TLS handshakes in progress, bounded by `gateway.max_handshakes` like the gateway's own
    /// handshakes: over it a new connection is closed at once.
    handshakes: Arc<Semaphore>,
    handshake_timeout: Duration,
    linger: Duration,
    gateway: Gateway,
}

impl Front {
    async fn run(self, public: TcpListener, token: CancellationToken) {
        let this = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                accepted = public.accept() => accepted,
                () = token.cancelled() => break,
            };
            match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    let shared = this.gateway.shared();
                    shared.tasks.spawn(this.clone().relay(tcp, token.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// One client: the TLS handshake, then its bytes relayed to the accept loop and back.
    async fn relay(self: Arc<Self>, tcp: TcpStream, token: CancellationToken) {
        let metrics = &self.gateway.shared().metrics;
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            metrics.limit_hit("max_handshakes");
            return;
        };
        let mut tls = match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                metrics.tls_handshake_failures.inc();
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics.tls_handshake_failures.inc();
                metrics.limit_hit("handshake_timeout");
                return;
            }
        };
        drop(permit);
        let Ok(mut plain) = TcpStream::connect(self.relay_to).await else {
            return;
        };
        let _ = plain.set_nodelay(true);
        let ended = async {
            token.cancelled().await;
            tokio::time::sleep(self.linger).await;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut tls, &mut plain) => {}
            () = ended => {}
        }
    }
}

/// Reloads the certificate on each `SIGHUP`, whether or not its files' times changed.
#[cfg(unix)]
async fn reload_on_sighup(cert: Arc<ReloadingCert>, token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            received = hangups.recv() => if received.is_none() { return },
            () = token.cancelled() => return,
        }
        match cert.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded (SIGHUP)"),
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in service")
            }
        }
    }
}
