//! The flood (`--flood N`): abusive connections beside the measured clients, to show whether
//! one client's frames can slow the others down. Each flood connection sends frames as fast
//! as the socket takes them (or at `--flood-rate`), reads and counts what the gateway answers,
//! and reconnects when it is closed, until the run ends.
//!
//! The flood runs on a thread of its own with its own single-threaded runtime, so its busy
//! loops take turns with the measured clients' tasks through the kernel's scheduler, as a
//! client process of its own would, rather than by sharing the clients' runtime threads.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::args::{BenchArgs, FloodKind};
use crate::plan::Plan;

/// Frames handed to the socket between two flushes when sending as fast as it takes them.
const BATCH: u64 = 64;
/// Pause before reconnecting, so that a refused connection is no busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// How long a connection may take to connect and be upgraded.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the server's close frame after a write failed.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Channels a `subscribe` flood connection subscribes and unsubscribes in turn: fewer than
/// `gateway.max_subscriptions` (128), so handled frames do real work rather than hit the cap.
const SUBSCRIBE_CHANNELS: u64 = 64;
/// Distinct reply and close texts kept; further kinds are counted under "other".
const MAX_KINDS: usize = 30;

/// What the flood did and how it was answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FloodReport {
    /// Flood connections kept open at once.
    pub connections: u64,
    /// What they sent, connection i the i-th kind, round robin.
    pub kinds: Vec<FloodKind>,
    /// Frames per second each connection offered; 0: as fast as the socket took them.
    pub rate_per_connection: f64,
    /// From the first flood connection's start to the flood's end.
    pub seconds: f64,
    /// Connections opened, reconnections included.
    pub connects: u64,
    pub connect_failures: u64,
    /// Frames the socket took (written and flushed).
    pub frames_sent: u64,
    pub frames_per_second: f64,
    /// Frames received, by `type` (errors by `error <code>`; WebSocket pongs as
    /// `websocket pong`).
    pub replies: BTreeMap<String, u64>,
    /// How connections ended before the flood did: `close <code>`, `connection ended`, ...
    pub closes: BTreeMap<String, u64>,
    /// Why connections could not be opened.
    pub errors: BTreeMap<String, u64>,
}

/// A running flood, on its own thread.
pub(crate) struct Flood {
    stop: CancellationToken,
    thread: std::thread::JoinHandle<FloodReport>,
}

impl Flood {
    /// Starts `--flood` connections; `None` when none were asked for. They stop by
    /// [`Flood::stop`], or after `plan.max_runtime` whatever happens.
    pub(crate) fn start(args: &BenchArgs, plan: &Plan) -> anyhow::Result<Option<Flood>> {
        if args.flood == 0 {
            return Ok(None);
        }
        let settings = Settings {
            connections: args.flood,
            kinds: args.flood_kind.clone(),
            rate: args.flood_rate.max(0.0),
            namespace: args.namespace.clone(),
            prefix: args.prefix.clone(),
        };
        let urls: Vec<String> = (0..args.flood).map(|i| url(plan, i)).collect();
        let stop = CancellationToken::new();
        let deadline = plan.max_runtime;
        let thread = std::thread::Builder::new()
            .name("bench-flood".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime for the flood");
                    runtime.block_on(run(settings, urls, stop, deadline))
                }
            })
            .context("cannot start the flood's thread")?;
        Ok(Some(Flood { stop, thread }))
    }

    /// Ends the flood and returns what it did.
    pub(crate) async fn stop(self) -> FloodReport {
        self.stop.cancel();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap_or_default()).await.unwrap_or_default()
    }
}

/// The flood's URL for connection `i`: user `flood<i>`, its own token, no channel.
fn url(plan: &Plan, i: u64) -> String {
    let base = plan.urls[(i % plan.urls.len() as u64) as usize].trim_end_matches('/');
    let token = crate::token::token(
        plan.token_key.as_ref(),
        &plan.jwt_secret,
        &format!("flood{i}"),
        plan.max_runtime * 2,
    );
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}token={token}")
}

struct Settings {
    connections: u64,
    kinds: Vec<FloodKind>,
    rate: f64,
    namespace: String,
    prefix: String,
}

/// Counters shared by the flood's connections.
#[derive(Default)]
struct Tally {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    frames_sent: AtomicU64,
    replies: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    let mut map = map.lock().expect("flood tally lock");
    let key = if map.len() < MAX_KINDS || map.contains_key(&key) { key } else { "other".into() };
    *map.entry(key).or_default() += 1;
}

async fn run(
    settings: Settings,
    urls: Vec<String>,
    stop: CancellationToken,
    deadline: Duration,
) -> FloodReport {
    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let settings = Arc::new(settings);
    let mut tasks = JoinSet::new();
    for (i, url) in urls.into_iter().enumerate() {
        let kind = settings.kinds[i % settings.kinds.len().max(1)];
        tasks.spawn(abuser(settings.clone(), tally.clone(), stop.clone(), i as u64, url, kind));
    }
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(deadline) => stop.cancel(),
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ =
        tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} })
            .await;
    let take = |m: &Mutex<BTreeMap<String, u64>>| std::mem::take(&mut *m.lock().expect("flood tally lock"));
    let frames_sent = tally.frames_sent.load(Ordering::Relaxed);
    FloodReport {
        connections: settings.connections,
        kinds: settings.kinds.clone(),
        rate_per_connection: settings.rate,
        seconds,
        connects: tally.connects.load(Ordering::Relaxed),
        connect_failures: tally.connect_failures.load(Ordering::Relaxed),
        frames_sent,
        frames_per_second: frames_sent as f64 / seconds.max(1e-9),
        replies: take(&tally.replies),
        closes: take(&tally.closes),
        errors: take(&tally.errors),
    }
}

/// One flood connection: connects, floods until closed, reconnects, until the flood stops.
async fn abuser(
    settings: Arc<Settings>,
    tally: Arc<Tally>,
    stop: CancellationToken,
    i: u64,
    url: String,
    kind: FloodKind,
) {
    let mut frames = Frames {
        kind,
        seq: 0,
        channel_base: format!("{}:{}-flood-{i}", settings.namespace, settings.prefix),
    };
    while !stop.is_cancelled() {
        let connect = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(url.as_str(), None, true),
        );
        let connected = tokio::select! {
            r = connect => r,
            _ = stop.cancelled() => break,
        };
        match connected {
            Ok(Ok((ws, _))) => {
                tally.connects.fetch_add(1, Ordering::Relaxed);
                if let Some(end) = flood(&settings, &tally, &stop, ws, &mut frames).await {
                    count(&tally.closes, end);
                }
            }
            Ok(Err(e)) => {
                tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                count(&tally.errors, format!("connect: {e}"));
            }
            Err(_) => {
                tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                count(&tally.errors, "connect timed out".into());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
            _ = stop.cancelled() => break,
        }
    }
}

/// Sends frames on one connection while reading its replies. Returns how the connection
/// ended, or `None` when the flood stopped first.
async fn flood(
    settings: &Settings,
    tally: &Tally,
    stop: &CancellationToken,
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    frames: &mut Frames,
) -> Option<String> {
    let (mut sink, mut stream) = ws.split();
    let read = async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => count(&tally.replies, reply_kind(&text)),
                Some(Ok(Message::Pong(_))) => count(&tally.replies, "websocket pong".into()),
                Some(Ok(Message::Close(frame))) => {
                    return frame
                        .map_or("close without code".into(), |f| format!("close {}", u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return format!("read error: {e}"),
                None => return "connection ended".into(),
            }
        }
    };
    let write = send(settings, tally, &mut sink, frames);
    tokio::pin!(read);
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        end = &mut read => Some(end),
        Err(e) = write => {
            // The server closed or stopped reading: its close frame may still be on the way.
            match tokio::time::timeout(CLOSE_WAIT, &mut read).await {
                Ok(end) => Some(end),
                Err(_) => Some(format!("write error: {e}")),
            }
        }
    }
}

/// Sends frames until the socket fails: as fast as it takes them, or at `settings.rate`.
async fn send(
    settings: &Settings,
    tally: &Tally,
    sink: &mut (impl futures_util::Sink<Message, Error = WsError> + Unpin),
    frames: &mut Frames,
) -> Result<Infallible, WsError> {
    if settings.rate > 0.0 {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        loop {
            tick.tick().await;
            sink.send(frames.next()).await?;
            tally.frames_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    loop {
        for _ in 0..BATCH {
            sink.feed(frames.next()).await?;
        }
        sink.flush().await?;
        tally.frames_sent.fetch_add(BATCH, Ordering::Relaxed);
    }
}

/// A frame's `type`, and for errors its `code`.
fn reply_kind(text: &str) -> String {
    #[derive(Deserialize)]
    struct Reply {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        code: Option<String>,
    }
    match serde_json::from_str::<Reply>(text) {
        Ok(Reply { kind, code: Some(code) }) => format!("{kind} {code}"),
        Ok(Reply { kind, code: None }) => kind,
        Err(_) => "not JSON".into(),
    }
}

/// The frames one flood connection sends, in turn.
struct Frames {
    kind: FloodKind,
    seq: u64,
    /// `<namespace>:<prefix>-flood-<i>`, for the channels of the `subscribe` kind.
    channel_base: String,
}

impl Frames {
    fn next(&mut self) -> Message {
        let seq = self.seq;
        self.seq += 1;
        match self.kind {
            FloodKind::Ping => Message::text(r#"{"type":"ping"}"#),
            FloodKind::WsPing => Message::Ping(Default::default()),
            FloodKind::Malformed => Message::text(r#"{"type":"ping""#),
            FloodKind::Subscribe => {
                let verb = if seq.is_multiple_of(2) { "subscribe" } else { "unsubscribe" };
                let channel = (seq / 2) % SUBSCRIBE_CHANNELS;
                Message::text(format!(r#"{{"type":"{verb}","channel":"{}-{channel}"}}"#, self.channel_base))
            }
        }
    }
}

impl FloodReport {
    /// The flood's lines of the human summary: what was sent, how, and how it was answered.
    pub(crate) fn human(&self, s: &mut String) {
        use std::fmt::Write;
        let kinds: Vec<String> = self.kinds.iter().map(|k| format!("{k:?}")).collect();
        let pace = if self.rate_per_connection > 0.0 {
            format!("{:.0} frames/s each", self.rate_per_connection)
        } else {
            "as fast as the socket took them".to_string()
        };
        let _ = writeln!(
            s,
            "  flood: {} connections ({}; {pace}; on a thread of their own, from the end of the connect phase to the end of the run; not in the figures above)",
            self.connections,
            kinds.join(", ")
        );
        let _ = writeln!(
            s,
            "    sent {} frames in {:.1} s ({:.0}/s); {} connects ({} refused or failed)",
            self.frames_sent, self.seconds, self.frames_per_second, self.connects, self.connect_failures
        );
        let list = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", ")
            }
        };
        let _ = writeln!(s, "    answered: {}", list(&self.replies));
        let _ = writeln!(s, "    closed by the server: {}", list(&self.closes));
        if !self.errors.is_empty() {
            let _ = writeln!(s, "    could not connect: {}", list(&self.errors));
        }
    }
}
