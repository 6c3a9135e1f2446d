//! One gateway node's Redis subscriptions: a handle ([`RedisSubscriber`]) and the task that
//! owns the node's single Pub/Sub connection ([`NodeTask`]).
//!
//! The handle counts interest per channel and marks changed channels dirty; the task
//! reconciles dirty channels against what Redis confirmed, sending many channels per
//! `SUBSCRIBE`. Redis's confirmations are the truth: a channel is live when its `subscribe`
//! confirmation arrived, and a confirmation that no longer matches what is wanted marks the
//! channel dirty again. After a reconnect everything wanted is dirty, so it is resubscribed.
//!
//! One batch of commands is in flight at a time: channels that turn dirty while Redis has
//! not confirmed the last batch wait for it and then go out together. A lone subscribe
//! leaves at once; in a burst of connections (a deploy, a reconnect storm) each command
//! carries everything that arrived during one round trip, instead of one command per
//! connection.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use herald_protocol::ChannelName;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::resp::{Event, PubSubConn, RespError};
use super::{RedisConfig, backoff, redact};
use crate::{BrokerError, Delivery, Subscriber};
use herald_protocol::support::{shrink, shrink_set};

/// Most channels sent in one `SUBSCRIBE`/`UNSUBSCRIBE` command.
const CHANNELS_PER_COMMAND: usize = 512;

/// State shared between a node's [`RedisSubscriber`] handle and its task.
pub(super) struct NodeShared {
    state: Mutex<SubState>,
    /// Wakes the task when `dirty` gained channels.
    wake: Notify,
    /// `true` while connected and resubscribed.
    status: watch::Sender<bool>,
    stop: CancellationToken,
    subscribe_timeout: Duration,
    /// Successful connections after the first.
    reconnects: AtomicU64,
    /// Whether a connection was ever made.
    connected_once: AtomicBool,
}

#[derive(Default)]
struct SubState {
    /// Channel (with prefix) -> number of outstanding `subscribe` calls.
    wanted: HashMap<String, u32>,
    /// Subscribe calls waiting for a channel's confirmation. Each confirmation wakes only its
    /// own waiters, so a burst of new channels costs one wake-up per waiter, not one per
    /// waiter per confirmation.
    waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
    /// Channels Redis confirmed on the current connection.
    active: HashSet<String>,
    /// Channels with a command in flight; their confirmation settles them.
    in_flight: HashSet<String>,
    /// Channels whose wanted and active state may differ.
    dirty: HashSet<String>,
}

impl NodeShared {
    pub(super) fn new(stop: CancellationToken, subscribe_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            wake: Notify::new(),
            status: watch::Sender::new(false),
            stop,
            subscribe_timeout,
            reconnects: AtomicU64::new(0),
            connected_once: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SubState> {
        self.state.lock().expect("subscriber lock poisoned")
    }
}

pub(super) struct RedisSubscriber {
    pub(super) shared: Arc<NodeShared>,
    pub(super) prefix: String,
}

impl Subscriber for RedisSubscriber {
    fn subscribe(&self, channel: &ChannelName) -> BoxFuture<'static, Result<(), BrokerError>> {
        let key = format!("{}{}", self.prefix, channel.as_str());
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            *state.wanted.entry(key.clone()).or_insert(0) += 1;
            if state.active.contains(&key) {
                return futures_util::future::ready(Ok(())).boxed();
            }
            state.waiters.entry(key.clone()).or_default().push(tx);
            state.dirty.insert(key);
        }
        self.shared.wake.notify_one();
        let timeout = self.shared.subscribe_timeout;
        let channel = channel.clone();
        async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(())) => Ok(()),
                // Timed out, or the interest was withdrawn before Redis confirmed.
                _ => Err(BrokerError::SubscribeTimeout(channel)),
            }
        }
        .boxed()
    }

    fn unsubscribe(&self, channel: &ChannelName) {
        let key = format!("{}{}", self.prefix, channel.as_str());
        {
            let mut state = self.shared.lock();
            let Some(count) = state.wanted.get_mut(&key) else { return };
            *count -= 1;
            if *count > 0 {
                return;
            }
            state.wanted.remove(&key);
            state.waiters.remove(&key);
            shrink(&mut state.wanted);
            shrink(&mut state.waiters);
            state.dirty.insert(key);
        }
        self.shared.wake.notify_one();
    }

    fn status(&self) -> watch::Receiver<bool> {
        self.shared.status.subscribe()
    }

    fn active_channels(&self) -> usize {
        self.shared.lock().active.len()
    }

    fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.shared.stop.cancel();
    }
}

/// Why a connection ended.
enum Ended {
    /// The node was stopped.
    Stopped,
    /// The connection failed; reconnect.
    Failed(String),
}

impl From<RespError> for Ended {
    fn from(e: RespError) -> Self {
        Ended::Failed(e.to_string())
    }
}

/// The task that owns a node's Pub/Sub connection.
pub(super) struct NodeTask {
    pub(super) config: RedisConfig,
    /// The URL's host and port; with Sentinel the master is looked up on every connect.
    pub(super) url_addr: (String, u16),
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) shared: Arc<NodeShared>,
    pub(super) delivery: Arc<dyn Delivery>,
}

impl NodeTask {
    pub(super) async fn run(self) {
        let mut attempt: u32 = 0;
        loop {
            let ended = self.connect_and_serve(&mut attempt).await;
            // Messages read before the connection ended still go out.
            self.delivery.flush();
            match ended {
                Ended::Stopped => break,
                Ended::Failed(error) => {
                    self.shared.status.send_replace(false);
                    let delay = backoff(attempt, self.config.reconnect_min, self.config.reconnect_max);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(%error, retry_in = ?delay, "redis pubsub connection lost");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shared.stop.cancelled() => break,
                    }
                }
            }
        }
        self.shared.status.send_replace(false);
    }

    async fn connect(&self) -> Result<PubSubConn, Ended> {
        let connect = async {
            let (host, port) =
                super::sentinel::current_address(&self.config, (&self.url_addr.0, self.url_addr.1))
                    .await
                    .map_err(|e| RespError::Io(std::io::Error::other(e)))?;
            PubSubConn::connect(&host, port, self.username.as_deref(), self.password.as_deref()).await
        };
        tokio::select! {
            r = tokio::time::timeout(self.config.connect_timeout, connect) => match r {
                Ok(conn) => Ok(conn?),
                Err(_) => Err(Ended::Failed("connect timed out".into())),
            },
            _ = self.shared.stop.cancelled() => Err(Ended::Stopped),
        }
    }

    /// Connects, resubscribes everything wanted, then serves until the connection breaks or
    /// the node is stopped.
    async fn connect_and_serve(&self, attempt: &mut u32) -> Ended {
        let mut conn = match self.connect().await {
            Ok(conn) => conn,
            Err(ended) => return ended,
        };
        {
            let mut state = self.shared.lock();
            state.active.clear();
            state.in_flight.clear();
            let wanted: Vec<String> = state.wanted.keys().cloned().collect();
            state.dirty.extend(wanted);
        }
        let mut resynced = false;
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_pong: Option<Instant> = None;
        let prefix_len = self.config.prefix.len();
        if let Err(e) = self.reconcile(&mut conn).await {
            return e.into();
        }
        loop {
            if !resynced && self.shared.lock().in_flight.is_empty() {
                resynced = true;
                *attempt = 0;
                self.shared.status.send_replace(true);
                if self.shared.connected_once.swap(true, Ordering::Relaxed) {
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(url = %redact(&self.config.url), "redis pubsub connected");
            }
            // The messages of one read are handed over together, then flushed.
            if !conn.has_event() {
                self.delivery.flush();
            }
            tokio::select! {
                event = conn.next_event() => match event {
                    Ok(Event::Message { channel, payload }) => {
                        let name = channel.get(prefix_len..).and_then(|c| std::str::from_utf8(c).ok());
                        if let Some(name) = name {
                            self.delivery.deliver(name, Bytes::copy_from_slice(payload));
                        }
                    }
                    Ok(Event::Subscribed(channel)) => self.confirmed(channel, true),
                    Ok(Event::Unsubscribed(channel)) => self.confirmed(channel, false),
                    Ok(Event::Pong) => awaiting_pong = None,
                    Ok(Event::Ok) => {}
                    Err(e) => return e.into(),
                },
                _ = self.shared.wake.notified() => {
                    if let Err(e) = self.reconcile(&mut conn).await {
                        return e.into();
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong.is_some_and(|since| since.elapsed() > self.config.response_timeout) {
                        return Ended::Failed("no answer to PING".into());
                    }
                    if awaiting_pong.is_none() {
                        if let Err(e) = conn.send(&[b"PING"]).await {
                            return e.into();
                        }
                        awaiting_pong = Some(Instant::now());
                    }
                }
                _ = self.shared.stop.cancelled() => return Ended::Stopped,
            }
        }
    }

    /// Records Redis's confirmation of a subscribe (`live`) or unsubscribe, and marks the
    /// channel dirty again if that no longer matches what is wanted.
    fn confirmed(&self, channel: &[u8], live: bool) {
        let Ok(key) = std::str::from_utf8(channel) else { return };
        let mut state = self.shared.lock();
        state.in_flight.remove(key);
        // The batch in flight is settled: what gathered meanwhile can go.
        let gathered = state.in_flight.is_empty() && !state.dirty.is_empty();
        if live {
            state.active.insert(key.to_string());
            for waiter in state.waiters.remove(key).unwrap_or_default() {
                let _ = waiter.send(());
            }
        } else {
            state.active.remove(key);
            shrink_set(&mut state.active);
        }
        let mismatch = state.wanted.contains_key(key) != live;
        if mismatch {
            state.dirty.insert(key.to_string());
        }
        drop(state);
        if mismatch || gathered {
            self.shared.wake.notify_one();
        }
    }

    /// Sends the commands that bring Redis in line with the wanted channels, for every dirty
    /// channel, unless a batch is still in flight: then the dirty channels wait for its last
    /// confirmation, which wakes the task again.
    async fn reconcile(&self, conn: &mut PubSubConn) -> Result<(), RespError> {
        let (subscribe, unsubscribe) = {
            let mut state = self.shared.lock();
            if !state.in_flight.is_empty() {
                return Ok(());
            }
            let dirty: Vec<String> = state.dirty.drain().collect();
            shrink_set(&mut state.dirty);
            let (mut sub, mut unsub) = (Vec::new(), Vec::new());
            for key in dirty {
                match (state.wanted.contains_key(&key), state.active.contains(&key)) {
                    (true, false) => sub.push(key),
                    (false, true) => unsub.push(key),
                    _ => continue,
                }
            }
            state.in_flight.extend(sub.iter().chain(unsub.iter()).cloned());
            (sub, unsub)
        };
        for (command, keys) in [(&b"UNSUBSCRIBE"[..], unsubscribe), (&b"SUBSCRIBE"[..], subscribe)] {
            for chunk in keys.chunks(CHANNELS_PER_COMMAND) {
                let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 1);
                args.push(command);
                args.extend(chunk.iter().map(|k| k.as_bytes()));
                conn.send(&args).await?;
            }
        }
        Ok(())
    }
}
