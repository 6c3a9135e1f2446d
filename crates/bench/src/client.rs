//! One client connection: connect (from its source address), handshake, wait for the
//! server's greeting and subscription, then read until told to stop, recording every message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::args::Target;
use crate::payload;
use crate::stats::Seen;
use crate::worker::Shared;

/// How long one connection may take to connect, be greeted and subscribe.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

type Ws = WebSocketStream<TcpStream>;

/// Runs connection `conn` until the worker stops.
pub(crate) async fn run(shared: Arc<Shared>, conn: u64, url: String, gate: Arc<Semaphore>) {
    let setup = async {
        let _permit = gate.acquire().await.map_err(|_| SetupError::GateClosed)?;
        let started = Instant::now();
        shared.setup_started();
        let ws = tokio::time::timeout(SETUP_TIMEOUT, setup(&shared, conn, &url))
            .await
            .map_err(|_| SetupError::Timeout)??;
        Ok::<_, SetupError>((ws, started.elapsed()))
    };
    let ws = tokio::select! {
        r = setup => r,
        _ = shared.end_connect.cancelled() => Err(SetupError::PhaseEnded),
        _ = shared.stop.cancelled() => Err(SetupError::Stopped),
    };
    let mut ws = match ws {
        Ok((ws, took)) => {
            shared.record_connect(took);
            ws
        }
        Err(e) => {
            shared.error(e.to_string());
            shared.setup_done();
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut seen = Seen::default();
    let mut closed = None;
    loop {
        let msg = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(text))) => receive(&shared, &mut seen, text.as_bytes()),
            Some(Ok(Message::Binary(data))) => receive(&shared, &mut seen, &data),
            Some(Ok(Message::Close(frame))) => {
                closed =
                    Some(frame.map_or("close without code".to_string(), |f| format!("close {}", f.code)));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                closed = Some(format!("read error: {e}"));
                break;
            }
            None => {
                closed = Some("connection ended".to_string());
                break;
            }
        }
    }
    if let Some(reason) = closed {
        shared.counters.closed.fetch_add(1, Ordering::Relaxed);
        shared.error(reason);
    }
    // Wait for the published counts, then judge this connection's stream.
    shared.stop.cancelled().await;
    shared.finish(shared.plan.stream_of(conn), &seen);
}

fn receive(shared: &Shared, seen: &mut Seen, frame: &[u8]) {
    let Some((seq, sent)) = payload::decode(frame) else {
        shared.counters.other_frames.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let latency = payload::now_micros().saturating_sub(sent);
    let before = seen.unique;
    seen.record(seq);
    shared.counters.received.fetch_add(1, Ordering::Relaxed);
    if seen.unique > before {
        shared.counters.unique.fetch_add(1, Ordering::Relaxed);
    }
    shared.record_latency(latency);
}

/// TCP connect from the planned source address, WebSocket handshake, and for Herald the
/// `connected` greeting and, with `--subscribe-with frame`, the subscription.
async fn setup(shared: &Shared, conn: u64, url: &str) -> Result<Ws, SetupError> {
    let plan = &shared.plan;
    let request = url.into_client_request().map_err(|e| SetupError::Url(Box::new(e)))?;
    let host = request.uri().host().unwrap_or("127.0.0.1").to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let resolved =
        tokio::net::lookup_host((host.as_str(), port)).await.map(|mut a| a.find(SocketAddr::is_ipv4));
    let addr: SocketAddr = match resolved {
        Ok(Some(addr)) => addr,
        Ok(None) => return Err(SetupError::NoIpv4(host)),
        Err(source) => return Err(SetupError::Resolve { host, source }),
    };
    let socket = TcpSocket::new_v4().map_err(SetupError::Socket)?;
    if let Some(source) = plan.source_addr(conn) {
        // A port left in TIME_WAIT by an earlier run may be bound again.
        let _ = socket.set_reuseaddr(true);
        if socket.bind(source.into()).is_err() {
            // Taken by someone else: let the kernel find one (slowly).
            socket
                .bind(SocketAddr::new((*source.ip()).into(), 0))
                .map_err(|e| SetupError::Bind { addr: source.to_string(), source: e })?;
        }
    }
    let stream = socket.connect(addr).await.map_err(SetupError::Connect)?;
    let _ = stream.set_nodelay(true);
    // Small buffers: a hundred thousand clients must fit next to the servers.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| SetupError::Handshake(Box::new(e)))?;
    if plan.target == Target::Nchan {
        return Ok(ws);
    }
    expect(&mut ws, "connected").await?;
    if let Some(channel) = plan.subscribe_frame(conn) {
        let frame = serde_json::json!({"type": "subscribe", "channel": channel}).to_string();
        ws.send(Message::text(frame)).await.map_err(|e| SetupError::Subscribe(Box::new(e)))?;
        expect(&mut ws, "subscribed").await?;
    }
    Ok(ws)
}

/// Reads the next text frame and checks its `type`.
async fn expect(ws: &mut Ws, kind: &'static str) -> Result<(), SetupError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value =
                    serde_json::from_str(&text).map_err(|source| SetupError::BadFrame { kind, source })?;
                if frame["type"] == kind {
                    return Ok(());
                }
                return Err(SetupError::Unexpected { kind, got: frame["type"].to_string() });
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(SetupError::Closed { kind, code: frame.map(|f| f.code) });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(SetupError::Read { kind, source: Box::new(e) }),
            None => return Err(SetupError::Ended { kind }),
        }
    }
}

/// Why a connection did not get set up. Its text is what the report counts.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("closed")]
    GateClosed,
    #[error("setup timed out")]
    Timeout,
    #[error("not connected when the connect phase ended")]
    PhaseEnded,
    #[error("stopped while connecting")]
    Stopped,
    #[error("bad url: {0}")]
    Url(#[source] Box<tungstenite::Error>),
    #[error("resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("{0} has no IPv4 address")]
    NoIpv4(String),
    #[error("socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("bind {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[source] Box<tungstenite::Error>),
    #[error("send subscribe: {0}")]
    Subscribe(#[source] Box<tungstenite::Error>),
    #[error("bad frame while waiting for {kind}: {source}")]
    BadFrame { kind: &'static str, source: serde_json::Error },
    #[error("expected {kind}, got {got}")]
    Unexpected { kind: &'static str, got: String },
    #[error("closed while waiting for {kind}: {code:?}")]
    Closed { kind: &'static str, code: Option<CloseCode> },
    #[error("error while waiting for {kind}: {source}")]
    Read { kind: &'static str, source: Box<tungstenite::Error> },
    #[error("connection ended while waiting for {kind}")]
    Ended { kind: &'static str },
}
