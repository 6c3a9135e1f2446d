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
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

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
        let _permit = gate.acquire().await.map_err(|_| "closed".to_string())?;
        let started = Instant::now();
        shared.setup_started();
        let ws = tokio::time::timeout(SETUP_TIMEOUT, setup(&shared, conn, &url))
            .await
            .map_err(|_| "setup timed out".to_string())??;
        Ok::<_, String>((ws, started.elapsed()))
    };
    let ws = tokio::select! {
        r = setup => r,
        _ = shared.end_connect.cancelled() => Err("not connected when the connect phase ended".to_string()),
        _ = shared.stop.cancelled() => Err("stopped while connecting".to_string()),
    };
    let mut ws = match ws {
        Ok((ws, took)) => {
            shared.record_connect(took);
            ws
        }
        Err(e) => {
            shared.error(e);
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
async fn setup(shared: &Shared, conn: u64, url: &str) -> Result<Ws, String> {
    let plan = &shared.plan;
    let request = url.into_client_request().map_err(|e| format!("bad url: {e}"))?;
    let host = request.uri().host().unwrap_or("127.0.0.1").to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{host} has no IPv4 address"))?;
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(source) = plan.source_addr(conn) {
        // A port left in TIME_WAIT by an earlier run may be bound again.
        let _ = socket.set_reuseaddr(true);
        if socket.bind(source.into()).is_err() {
            // Taken by someone else: let the kernel find one (slowly).
            socket
                .bind(SocketAddr::new((*source.ip()).into(), 0))
                .map_err(|e| format!("bind {source}: {e}"))?;
        }
    }
    let stream = socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    // Small buffers: a hundred thousand clients must fit next to the servers.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if plan.target == Target::Nchan {
        return Ok(ws);
    }
    expect(&mut ws, "connected").await?;
    if let Some(channel) = plan.subscribe_frame(conn) {
        let frame = serde_json::json!({"type": "subscribe", "channel": channel}).to_string();
        ws.send(Message::text(frame)).await.map_err(|e| format!("send subscribe: {e}"))?;
        expect(&mut ws, "subscribed").await?;
    }
    Ok(ws)
}

/// Reads the next text frame and checks its `type`.
async fn expect(ws: &mut Ws, kind: &str) -> Result<(), String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| format!("bad frame while waiting for {kind}: {e}"))?;
                if frame["type"] == kind {
                    return Ok(());
                }
                return Err(format!("expected {kind}, got {}", frame["type"]));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed while waiting for {kind}: {:?}", frame.map(|f| f.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("error while waiting for {kind}: {e}")),
            None => return Err(format!("connection ended while waiting for {kind}")),
        }
    }
}
