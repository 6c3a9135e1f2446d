//! Serving an HTTP and a gRPC API side by side until shutdown, and logging the drain.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use futures_util::future::BoxFuture;
use tokio_rustls::TlsAcceptor;

use crate::grpc::Probe;
use crate::lifecycle::{Counted, CountingListener};
use crate::secure::{TlsListener, handshakes};
use crate::tls::{ReloadingCert, TlsConfig};

/// The TLS acceptors of the two listeners, sharing one reloading certificate; they differ
/// in ALPN (gRPC needs HTTP/2, the HTTP API speaks both).
struct Acceptors {
    http: TlsAcceptor,
    grpc: TlsAcceptor,
    cert: Arc<ReloadingCert>,
    reload_interval: Duration,
}

impl Acceptors {
    fn new(config: &TlsConfig) -> Result<Self, crate::tls::TlsError> {
        let (server, cert) = crate::tls::server_config(config)?;
        let mut grpc = server.clone();
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        let mut http = server;
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            http: TlsAcceptor::from(Arc::new(http)),
            grpc: TlsAcceptor::from(Arc::new(grpc)),
            cert,
            reload_interval: config.reload_interval,
        })
    }
}

/// How often a drain says how many connections it has left.
const DRAIN_PROGRESS: Duration = Duration::from_secs(1);

/// Serves a role's API: `http` on its listener, and on the gRPC listener the `grpc` service
/// with health (following `readiness`) and reflection over `descriptor` beside it
/// ([`crate::grpc::routes`]), through [`serve_http_and_grpc`], over `tls` when set.
pub async fn serve_api<S: crate::grpc::GrpcApi>(
    service: &'static str,
    http: (TcpListener, Router),
    (grpc_listener, grpc, descriptor): (TcpListener, S, &'static [u8]),
    tls: Option<&TlsConfig>,
    readiness: Probe,
    stop: CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let routes = crate::grpc::routes(grpc, descriptor, readiness.clone());
    serve_http_and_grpc(service, http, (grpc_listener, routes), tls, readiness, stop, shutdown).await
}

/// Serves `http` on the first listener and `grpc` on the second until `shutdown` resolves or
/// `stop` is cancelled; `service` (`publisher-api`, `presence`) labels the logs.
/// `readiness` is probed once at start, so that `ready`, or `not ready` and why, is logged
/// whether or not anything probes.
///
/// Shutdown is graceful on both: the listeners stop accepting, requests in flight run to
/// completion, then this returns. The drain is logged: `drain started` with the open
/// connections (both listeners'), `draining` with those left every second, `drained`. If one
/// server fails, `stop` is cancelled so the other shuts down too, and the error is returned:
/// a caller never keeps running with half of its API gone.
///
/// With `tls` both listeners speak TLS only, with the same certificate (reloaded while they
/// run), and with a `client_ca` every client must present a certificate that chains to it
/// ([`crate::secure`]).
pub async fn serve_http_and_grpc(
    service: &'static str,
    (http_listener, http): (TcpListener, Router),
    (grpc_listener, grpc): (TcpListener, tonic::service::Routes),
    tls: Option<&TlsConfig>,
    readiness: Probe,
    stop: CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let tls = tls.map(Acceptors::new).transpose().map_err(io::Error::other)?;
    let open = Arc::new(AtomicUsize::new(0));
    // TCP_NODELAY on both, so a response written while the client's ACK of the previous one
    // is delayed leaves at once instead of waiting for it.
    let http_listener = CountingListener { inner: http_listener, open: open.clone() };
    let http_stop = stop.clone().cancelled_owned();
    let http_server: BoxFuture<'static, io::Result<()>> = match &tls {
        None => Box::pin(axum::serve(http_listener, http).with_graceful_shutdown(http_stop).into_future()),
        Some(tls) => {
            let listener = TlsListener::new(http_listener, tls.http.clone())?;
            Box::pin(axum::serve(listener, http).with_graceful_shutdown(http_stop).into_future())
        }
    };
    let grpc_open = open.clone();
    let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener)
        .with_nodelay(Some(true))
        .map(move |accepted| accepted.map(|stream| Counted::new(stream, &grpc_open)));
    let grpc_routes = tonic::transport::Server::builder().add_routes(grpc);
    let grpc_stop = stop.clone().cancelled_owned();
    let grpc_server: BoxFuture<'static, Result<(), tonic::transport::Error>> = match &tls {
        None => Box::pin(grpc_routes.serve_with_incoming_shutdown(incoming, grpc_stop)),
        Some(tls) => {
            // An accept error (out of descriptors) drops that connection, as tonic does.
            let accepted = incoming.filter_map(|accepted| std::future::ready(accepted.ok().map(|s| (s, ()))));
            let conns = handshakes(accepted, tls.grpc.clone()).map(|(conn, ())| Ok::<_, io::Error>(conn));
            Box::pin(grpc_routes.serve_with_incoming_shutdown(conns, grpc_stop))
        }
    };
    let reload = async {
        if let Some(tls) = &tls {
            tls.cert.clone().watch(tls.reload_interval, stop.clone()).await;
        }
    };
    let drain_started = std::sync::OnceLock::new();
    let trigger = async {
        tokio::select! {
            () = shutdown => {}
            () = stop.cancelled() => {}
        }
        drain_started.get_or_init(Instant::now);
        tracing::info!(service, connections = open.load(Ordering::Relaxed), "drain started");
        stop.cancel();
    };
    let http_done = async {
        let result = http_server.await;
        stop.cancel();
        result
    };
    let grpc_done = async {
        let result = grpc_server.await.map_err(io::Error::other);
        stop.cancel();
        result
    };
    let progress = async {
        stop.cancelled().await;
        let started = *drain_started.get_or_init(Instant::now);
        let mut ticks = tokio::time::interval_at(started + DRAIN_PROGRESS, DRAIN_PROGRESS);
        loop {
            ticks.tick().await;
            let connections = open.load(Ordering::Relaxed);
            let elapsed_ms = started.elapsed().as_millis() as u64;
            tracing::info!(service, connections, elapsed_ms, "draining");
        }
    };
    let first_probe = async {
        tokio::select! {
            _ = readiness() => {}
            () = stop.cancelled() => {}
        }
    };
    let served = async { tokio::join!(trigger, http_done, grpc_done, first_probe, reload) };
    let ((), http_result, grpc_result, (), ()) = tokio::select! {
        served = served => served,
        () = progress => unreachable!("the drain's progress is logged until the servers are done"),
    };
    if let Err(e) = &http_result {
        tracing::error!(service, error = %e, "http server failed");
    }
    if let Err(e) = &grpc_result {
        tracing::error!(service, error = %e, "grpc server failed");
    }
    let elapsed_ms = drain_started.get().map_or(0, |started| started.elapsed().as_millis() as u64);
    tracing::info!(service, elapsed_ms, "drained");
    http_result.and(grpc_result)
}
