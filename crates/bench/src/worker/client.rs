//! One client connection: connect (from its source address), handshake, wait for the
//! server's greeting and subscription, then read until told to stop, recording every message.
//! With `--resume`, a connection that ends reconnects with `since` and goes on reading.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{Round, Shared};
use crate::args::Target;
use crate::payload;
use crate::stats::Seen;

/// How long one connection may take to connect, be greeted and subscribe.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection closed between rounds waits for the server's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<TcpStream>;

/// Runs connection `conn` until the worker stops: one set-up per round of connecting
/// (`--reconnect-rounds`), closing it between rounds when told to.
pub(crate) async fn run(shared: Arc<Shared>, conn: u64, url: String, gate: Arc<Semaphore>) {
    let mut seen = Seen::default();
    let last = shared.rounds.len() - 1;
    for (i, round) in shared.rounds.iter().enumerate() {
        tokio::select! {
            _ = round.open.cancelled() => {}
            _ = shared.stop.cancelled() => break,
        }
        let Some((ws, greeting)) = connect(&shared, conn, &url, &gate, round).await else { continue };
        if i == last {
            read_until_stopped(&shared, conn, ws, greeting, &mut seen).await;
            break;
        }
        if !hold_until_closed(&shared, ws, &mut seen, round).await {
            break;
        }
    }
    // Wait for the published counts, then judge this connection's stream.
    shared.stop.cancelled().await;
    shared.finish(shared.plan.stream_of(conn), &seen);
}

/// One set-up in `round`, counted as connected or failed.
async fn connect(
    shared: &Shared,
    conn: u64,
    url: &str,
    gate: &Semaphore,
    round: &Round,
) -> Option<(Ws, Value)> {
    let setup = async {
        let _permit = gate.acquire().await.map_err(|_| SetupError::GateClosed)?;
        let started = Instant::now();
        shared.setup_started();
        let set_up = tokio::time::timeout(SETUP_TIMEOUT, setup(shared, conn, url))
            .await
            .map_err(|_| SetupError::Timeout)??;
        Ok::<_, SetupError>((set_up, started.elapsed()))
    };
    let set_up = tokio::select! {
        r = setup => r,
        _ = round.end_connect.cancelled() => Err(SetupError::PhaseEnded),
        _ = shared.stop.cancelled() => Err(SetupError::Stopped),
    };
    match set_up {
        Ok((set_up, took)) => {
            shared.record_connect(took);
            Some(set_up)
        }
        Err(e) => {
            shared.error(e.to_string());
            shared.setup_done();
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A round before the last: reads until the round's `close`, then closes the connection and
/// waits for the server's close (a bounded wait). False when the worker stopped instead.
async fn hold_until_closed(shared: &Shared, mut ws: Ws, seen: &mut Seen, round: &Round) -> bool {
    let mut resume = Resume::new(None);
    let ended = tokio::select! {
        biased;
        _ = round.close.cancelled() => None,
        why = read(shared, &mut ws, seen, &mut resume) => Some(why),
    };
    match ended {
        None => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                let _ = ws.close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
            shared.record_end();
            true
        }
        Some(None) => false,
        Some(Some(reason)) => {
            shared.record_end();
            shared.counters.closed.fetch_add(1, Ordering::Relaxed);
            shared.error(reason);
            true
        }
    }
}

/// The last round: reads until the worker stops; with `--resume`, a connection that ends
/// reconnects with `since` and goes on reading.
async fn read_until_stopped(shared: &Shared, conn: u64, mut ws: Ws, greeting: Value, seen: &mut Seen) {
    let mut resume = Resume::new(shared.plan.resume_channel(conn));
    resume.greeted(&greeting);
    let mut attempt = 0;
    loop {
        let Some(reason) = read(shared, &mut ws, seen, &mut resume).await else { break };
        if !shared.plan.resume {
            shared.record_end();
            shared.counters.closed.fetch_add(1, Ordering::Relaxed);
            shared.error(reason);
            break;
        }
        match reconnect(shared, conn, &mut attempt, &resume).await {
            Some((again, greeting)) => {
                ws = again;
                if !resume.greeted(&greeting) {
                    shared.counters.recovery_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => break,
        }
    }
}

/// Reads and records messages until the worker stops (`None`) or the connection ends (why).
async fn read(shared: &Shared, ws: &mut Ws, seen: &mut Seen, resume: &mut Resume) -> Option<String> {
    loop {
        let msg = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return None,
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(text))) => receive(shared, seen, resume, text.as_bytes()),
            Some(Ok(Message::Binary(data))) => receive(shared, seen, resume, &data),
            Some(Ok(Message::Close(frame))) => {
                return Some(frame.map_or("close without code".to_string(), |f| format!("close {}", f.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Some(format!("read error: {e}")),
            None => return Some("connection ended".to_string()),
        }
    }
}

/// Connects `conn` again after its connection ended, with `since` of the last message it
/// received, trying the next gateway each time until one takes it or the worker stops.
async fn reconnect(shared: &Shared, conn: u64, attempt: &mut u64, resume: &Resume) -> Option<(Ws, Value)> {
    let down = Instant::now();
    shared.record_down();
    let mut backoff = Duration::from_millis(100);
    loop {
        *attempt += 1;
        let url = resume.url(shared.plan.url_at(conn, *attempt));
        let tried = tokio::select! {
            r = tokio::time::timeout(SETUP_TIMEOUT, setup(shared, conn, &url)) => r,
            _ = shared.stop.cancelled() => return None,
        };
        match tried {
            Ok(Ok(set_up)) => {
                shared.record_up(down.elapsed());
                return Some(set_up);
            }
            Ok(Err(e)) => shared.error(format!("reconnect: {e}")),
            Err(_) => shared.error("reconnect: setup timed out".into()),
        }
        // Spread the retries of many connections that lost the same gateway.
        let jitter = Duration::from_millis((conn * 37 + *attempt * 11) % 100);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shared.stop.cancelled() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Where a connection stands in its channel with history, to resume from.
struct Resume {
    channel: Option<String>,
    /// The offset of the last message received (or the position the server reported).
    offset: u64,
    epoch: Option<String>,
}

impl Resume {
    fn new(channel: Option<String>) -> Self {
        Self { channel, offset: 0, epoch: None }
    }

    /// Takes the position from a `connected` (or `subscribed`) frame; `false` when the server
    /// said it could not recover.
    fn greeted(&mut self, frame: &Value) -> bool {
        let Some(channel) = &self.channel else { return true };
        let state = match frame["type"].as_str() {
            Some("subscribed") => frame,
            _ => &frame["positions"][channel.as_str()],
        };
        let (Some(offset), Some(epoch)) = (state["offset"].as_u64(), state["epoch"].as_str()) else {
            return true;
        };
        let recovered = state["recovered"].as_bool().unwrap_or(true);
        if !recovered || self.epoch.is_none() {
            self.offset = offset;
        }
        self.epoch = Some(epoch.to_string());
        recovered
    }

    /// A message frame: its `offset` leads it (`{"offset":N,`).
    fn received(&mut self, frame: &[u8]) {
        if let Some(rest) = frame.strip_prefix(b"{\"offset\":") {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit());
            self.offset = digits.fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')));
        }
    }

    /// `url` with `since` of this position, once there is one.
    fn url(&self, url: String) -> String {
        match (&self.channel, &self.epoch) {
            (Some(channel), Some(epoch)) => format!("{url}&since={channel}~{}~{epoch}", self.offset),
            _ => url,
        }
    }
}

fn receive(shared: &Shared, seen: &mut Seen, resume: &mut Resume, frame: &[u8]) {
    resume.received(frame);
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
/// `connected` greeting and, with `--subscribe-with frame`, the subscription. Returns the
/// greeting, or the `subscribed` reply when there was one (`null` for nchan).
async fn setup(shared: &Shared, conn: u64, url: &str) -> Result<(Ws, Value), SetupError> {
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
        return Ok((ws, Value::Null));
    }
    let mut greeting = expect(&mut ws, "connected").await?;
    if let Some(frame) = plan.subscribe_request(conn) {
        ws.send(Message::text(frame)).await.map_err(|e| SetupError::Subscribe(Box::new(e)))?;
        greeting = expect(&mut ws, "subscribed").await?;
    }
    Ok((ws, greeting))
}

/// Reads the next text frame and checks its `type`.
async fn expect(ws: &mut Ws, kind: &'static str) -> Result<Value, SetupError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value =
                    serde_json::from_str(&text).map_err(|source| SetupError::BadFrame { kind, source })?;
                if frame["type"] == kind {
                    return Ok(frame);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resuming_connection_keeps_the_last_offset_and_the_epoch() {
        let mut resume = Resume::new(Some("hist:a".into()));
        assert_eq!(resume.url("ws://g/ws?token=t".into()), "ws://g/ws?token=t", "no position yet");
        let greeting = serde_json::json!({
            "type": "connected", "positions": {"hist:a": {"offset": 4, "epoch": "E1"}}
        });
        assert!(resume.greeted(&greeting));
        resume.received(br#"{"offset":5,"type":"message"}"#);
        resume.received(br#"{"type":"pong"}"#);
        assert_eq!(resume.url("ws://g/ws?token=t".into()), "ws://g/ws?token=t&since=hist:a~5~E1");
        // Recovered: the missed messages follow, the position stays until they come.
        let back = serde_json::json!({
            "type": "connected", "positions": {"hist:a": {"offset": 9, "epoch": "E1", "recovered": true}}
        });
        assert!(resume.greeted(&back));
        assert_eq!(resume.offset, 5);
        // Not recovered: the live stream goes on from the server's position.
        let lost = serde_json::json!({
            "type": "connected",
            "positions": {"hist:a": {"offset": 2, "epoch": "E2", "recovered": false, "reason": "epoch_changed"}}
        });
        assert!(!resume.greeted(&lost));
        assert_eq!((resume.offset, resume.epoch.as_deref()), (2, Some("E2")));
    }
}
