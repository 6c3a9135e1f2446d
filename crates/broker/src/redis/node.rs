//! One gateway node's Redis subscriptions: a handle ([`RedisSubscriber`]) and the task that
//! owns the node's single Pub/Sub connection ([`NodeTask`]). The bookkeeping of which
//! channels are wanted and which Redis confirmed is [`super::channels`].
//!
//! The handle counts interest per channel and marks changed channels dirty; the task
//! reconciles dirty channels against what Redis confirmed, sending many channels per
//! `SUBSCRIBE`. Redis's confirmations are the truth: a channel is live when its `subscribe`
//! confirmation arrived, and a confirmation that no longer matches what is wanted marks the
//! channel dirty again. After a reconnect everything wanted is dirty, so it is resubscribed.
//!
//! One batch of commands is in flight at a time, and batches leave at least
//! `redis.subscribe_batch_interval` apart: channels that turn dirty while Redis has not
//! confirmed the last batch, or sooner than that after it left, wait and then go out
//! together. A lone subscribe leaves at once; in a burst of connections (a deploy, a
//! reconnect storm) each command carries everything that arrived meanwhile, instead of one
//! command per connection. Redis spends about as much on a command's reading and answering
//! as on each channel in it, and it is shared by every gateway.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::FutureExt;
use herald_protocol::{ChannelName, ChannelPattern};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::channels::{Commands, SubState};
use super::cluster::key_slot;
use super::connect::{ConnectError, Endpoint};
use super::history::{Payload, split_payload};
use super::resp::{Event, PubSubConn, RespError};
use super::{RedisConfig, backoff, redact};
use crate::{BrokerError, Confirmation, Delivery, Subscriber};

/// Most channels sent in one `SUBSCRIBE`/`UNSUBSCRIBE` command.
const CHANNELS_PER_COMMAND: usize = 512;

/// State shared between a node's [`RedisSubscriber`] handle and its task.
pub(super) struct NodeShared {
    state: Mutex<SubState>,
    /// The node's patterns (`PSUBSCRIBE`), kept apart from its channels: Redis confirms them
    /// with events of their own, and a pattern may read like a channel.
    patterns: Mutex<SubState>,
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
    /// On a cluster, the node's subscriber this shard's connection reports to.
    link: Option<ShardLink>,
}

/// How one shard's connection of a cluster node tells the node's supervisor
/// ([`super::cluster::subscribe`]) what it needs to know: its status changed, or something
/// showed the slot map may be stale (the connection broke, Redis dropped a channel it was not
/// asked to drop).
#[derive(Clone)]
pub(super) struct ShardLink {
    pub(super) wake: Arc<Notify>,
    pub(super) refresh: Arc<AtomicBool>,
}

impl ShardLink {
    fn poke(&self, refresh: bool) {
        if refresh {
            self.refresh.store(true, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }
}

impl NodeShared {
    pub(super) fn new(stop: CancellationToken, subscribe_timeout: Duration) -> Arc<Self> {
        Self::linked(stop, subscribe_timeout, None)
    }

    /// A shard's state on a cluster, reporting to `link`.
    pub(super) fn linked(
        stop: CancellationToken,
        subscribe_timeout: Duration,
        link: Option<ShardLink>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            patterns: Mutex::default(),
            wake: Notify::new(),
            status: watch::Sender::new(false),
            stop,
            subscribe_timeout,
            reconnects: AtomicU64::new(0),
            connected_once: AtomicBool::new(false),
            link,
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, SubState> {
        self.state.lock().expect("subscriber lock poisoned")
    }

    pub(super) fn patterns(&self) -> std::sync::MutexGuard<'_, SubState> {
        self.patterns.lock().expect("subscriber lock poisoned")
    }

    /// Wakes the task: channels turned dirty.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(super) fn status(&self) -> watch::Receiver<bool> {
        self.status.subscribe()
    }

    pub(super) fn is_live(&self) -> bool {
        *self.status.borrow()
    }

    pub(super) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    fn set_status(&self, live: bool) {
        let was = self.status.send_replace(live);
        if was != live
            && let Some(link) = &self.link
        {
            link.poke(!live);
        }
    }
}

pub(super) struct RedisSubscriber {
    pub(super) shared: Arc<NodeShared>,
    pub(super) config: RedisConfig,
}

/// Waits for `confirmed` of `channel`, at most `timeout`.
pub(super) fn wait_confirmed(
    timeout: Duration,
    channel: &ChannelName,
    confirmed: oneshot::Receiver<()>,
) -> Confirmation {
    wait(timeout, confirmed, BrokerError::SubscribeTimeout(channel.clone()))
}

/// Waits for `confirmed`, at most `timeout`; fails with `timed_out` when it did not come in
/// time, or the interest was withdrawn before Redis confirmed.
fn wait(timeout: Duration, confirmed: oneshot::Receiver<()>, timed_out: BrokerError) -> Confirmation {
    Confirmation::pending(
        async move {
            match tokio::time::timeout(timeout, confirmed).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(timed_out),
            }
        }
        .boxed(),
    )
}

impl RedisSubscriber {
    /// `channel`'s name in Redis.
    fn key(&self, channel: &ChannelName) -> String {
        self.config.pubsub_channel(channel.as_str())
    }

    /// Waits for `confirmed`, at most the subscribe timeout.
    fn wait(&self, channel: &ChannelName, confirmed: oneshot::Receiver<()>) -> Confirmation {
        wait_confirmed(self.shared.subscribe_timeout, channel, confirmed)
    }
}

impl Subscriber for RedisSubscriber {
    fn subscribe(&self, channel: &ChannelName) -> Confirmation {
        let key = self.key(channel);
        let (tx, rx) = oneshot::channel();
        if self.shared.lock().want(&key, tx) {
            return Confirmation::confirmed();
        }
        self.shared.wake.notify_one();
        self.wait(channel, rx)
    }

    fn confirmation(&self, channel: &ChannelName) -> Confirmation {
        let key = self.key(channel);
        let (tx, rx) = oneshot::channel();
        if self.shared.lock().wait(&key, tx) {
            return Confirmation::confirmed();
        }
        self.wait(channel, rx)
    }

    fn unsubscribe(&self, channel: &ChannelName) {
        let key = self.key(channel);
        if self.shared.lock().unwant(&key) {
            self.shared.wake.notify_one();
        }
    }

    fn subscribe_pattern(&self, pattern: &ChannelPattern) -> Confirmation {
        let key = self.config.pubsub_pattern(pattern.as_str());
        let (tx, rx) = oneshot::channel();
        if self.shared.patterns().want(&key, tx) {
            return Confirmation::confirmed();
        }
        self.shared.wake.notify_one();
        wait(self.shared.subscribe_timeout, rx, BrokerError::PatternSubscribeTimeout(pattern.clone()))
    }

    fn pattern_confirmation(&self, pattern: &ChannelPattern) -> Confirmation {
        let key = self.config.pubsub_pattern(pattern.as_str());
        let (tx, rx) = oneshot::channel();
        if self.shared.patterns().wait(&key, tx) {
            return Confirmation::confirmed();
        }
        wait(self.shared.subscribe_timeout, rx, BrokerError::PatternSubscribeTimeout(pattern.clone()))
    }

    fn unsubscribe_pattern(&self, pattern: &ChannelPattern) {
        let key = self.config.pubsub_pattern(pattern.as_str());
        if self.shared.patterns().unwant(&key) {
            self.shared.wake.notify_one();
        }
    }

    fn active_patterns(&self) -> usize {
        self.shared.patterns().active
    }

    fn status(&self) -> watch::Receiver<bool> {
        self.shared.status()
    }

    fn active_channels(&self) -> usize {
        self.shared.lock().active
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
    Failed(Lost),
}

/// Why a node's connection failed, for the log.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Resp(#[from] RespError),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("no answer to PING")]
    NoPong,
}

impl From<RespError> for Ended {
    fn from(e: RespError) -> Self {
        Ended::Failed(Lost::Resp(e))
    }
}

/// The task that owns a node's Pub/Sub connection.
pub(super) struct NodeTask {
    pub(super) config: RedisConfig,
    /// The URL's host and port; with Sentinel the master is looked up on every connect.
    /// Where to connect; with Sentinel the master is looked up on every connect.
    pub(super) endpoint: Endpoint,
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
                    self.shared.set_status(false);
                    if let Some(link) = &self.shared.link {
                        link.poke(true);
                    }
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
        self.shared.set_status(false);
    }

    async fn connect(&self) -> Result<(PubSubConn, String), Ended> {
        let connect = self.endpoint.open_resp();
        tokio::select! {
            r = tokio::time::timeout(self.config.connect_timeout, connect) => match r {
                Ok(Ok(connected)) => Ok(connected),
                Ok(Err(e)) => Err(Ended::Failed(e.into())),
                Err(_) => Err(Ended::Failed(Lost::ConnectTimeout)),
            },
            _ = self.shared.stop.cancelled() => Err(Ended::Stopped),
        }
    }

    /// Connects, resubscribes everything wanted, then serves until the connection breaks or
    /// the node is stopped.
    async fn connect_and_serve(&self, attempt: &mut u32) -> Ended {
        let (mut conn, addr) = match self.connect().await {
            Ok(connected) => connected,
            Err(ended) => return ended,
        };
        self.shared.lock().reset();
        self.shared.patterns().reset();
        let pattern_prefix = self.config.pattern_prefix();
        let mut resynced = false;
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_pong: Option<Instant> = None;
        // When the last batch of commands left; until `subscribe_batch_interval` after it,
        // wake-ups for new channels are held, and `hold` fires when the interval is over.
        let mut last_batch: Option<Instant> = None;
        let hold = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(hold);
        let mut holding = false;
        if let Err(e) = self.reconcile(&mut conn, &mut last_batch).await {
            return e.into();
        }
        loop {
            if !resynced && self.shared.lock().in_flight == 0 && self.shared.patterns().in_flight == 0 {
                resynced = true;
                *attempt = 0;
                self.shared.set_status(true);
                if self.shared.connected_once.swap(true, Ordering::Relaxed) {
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(url = %redact(&self.config.url), %addr, "redis pubsub connected");
            }
            // The messages of one read are handed over together, then flushed.
            if !conn.has_event() {
                self.delivery.flush();
            }
            tokio::select! {
                event = conn.next_event() => match event {
                    Ok(Event::Message { channel, payload }) => {
                        if let Some(name) = self.config.channel_name(channel) {
                            match split_payload(payload) {
                                Payload::Plain(frame) => self.delivery.deliver(name, Bytes::copy_from_slice(frame)),
                                Payload::Positioned { offset, epoch, frame } => {
                                    self.delivery.deliver_at(name, Bytes::copy_from_slice(frame), offset, epoch);
                                }
                                Payload::Malformed => tracing::warn!(channel = name, "dropped a message with a malformed position header"),
                            }
                        }
                    }
                    Ok(Event::PMessage { pattern, channel, payload }) => {
                        let pattern = pattern.strip_prefix(pattern_prefix.as_bytes()).and_then(|p| std::str::from_utf8(p).ok());
                        if let (Some(pattern), Some(name)) = (pattern, self.config.channel_name(channel)) {
                            match split_payload(payload) {
                                Payload::Plain(frame) | Payload::Positioned { frame, .. } => {
                                    self.delivery.deliver_pattern(pattern, name, Bytes::copy_from_slice(frame));
                                }
                                Payload::Malformed => tracing::warn!(channel = name, "dropped a message with a malformed position header"),
                            }
                        }
                    }
                    Ok(Event::PSubscribed(pattern)) => self.pattern_confirmed(pattern, true),
                    Ok(Event::PUnsubscribed(pattern)) => self.pattern_confirmed(pattern, false),
                    Ok(Event::Subscribed(channel)) => self.confirmed(channel, true),
                    Ok(Event::Unsubscribed(channel)) => self.confirmed(channel, false),
                    Ok(Event::Pong) => awaiting_pong = None,
                    Ok(Event::Ok) => {}
                    Err(e) => return e.into(),
                },
                _ = self.shared.wake.notified(), if !holding => {
                    let due = last_batch.map(|at| at + self.config.subscribe_batch_interval);
                    if let Some(due) = due.filter(|due| *due > Instant::now()) {
                        hold.as_mut().reset(due);
                        holding = true;
                    } else if let Err(e) = self.reconcile(&mut conn, &mut last_batch).await {
                        return e.into();
                    }
                }
                () = &mut hold, if holding => {
                    holding = false;
                    if let Err(e) = self.reconcile(&mut conn, &mut last_batch).await {
                        return e.into();
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong.is_some_and(|since| since.elapsed() > self.config.response_timeout) {
                        return Ended::Failed(Lost::NoPong);
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

    /// Records Redis's confirmation of a subscribe (`live`) or unsubscribe. On a cluster, an
    /// unsubscribe of a channel still wanted is Redis's `sunsubscribe` notice that the
    /// channel's slot moved away: the slot map is read again, and the supervisor moves the
    /// channel to its new shard.
    fn confirmed(&self, channel: &[u8], live: bool) {
        let Ok(key) = std::str::from_utf8(channel) else { return };
        let mut state = self.shared.lock();
        let dropped = !live && state.is_wanted(key);
        let wake = state.confirm(key, live);
        drop(state);
        if dropped && let Some(link) = &self.shared.link {
            link.poke(true);
        }
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Records Redis's confirmation of a `PSUBSCRIBE` (`live`) or `PUNSUBSCRIBE`.
    fn pattern_confirmed(&self, pattern: &[u8], live: bool) {
        let Ok(key) = std::str::from_utf8(pattern) else { return };
        if self.shared.patterns().confirm(key, live) {
            self.shared.wake.notify_one();
        }
    }

    /// Sends the commands that bring Redis in line with the wanted channels, for every dirty
    /// channel, unless a batch is still in flight: then the dirty channels wait for its last
    /// confirmation, which wakes the task again. `last_batch` becomes now if commands left.
    async fn reconcile(
        &self,
        conn: &mut PubSubConn,
        last_batch: &mut Option<Instant>,
    ) -> Result<(), RespError> {
        let channels = self.shared.lock().take_commands();
        // A cluster node never wants a pattern (its subscriber has none).
        let patterns = self.shared.patterns().take_commands();
        if channels.is_none() && patterns.is_none() {
            return Ok(());
        }
        *last_batch = Some(Instant::now());
        if let Some(Commands { subscribe, unsubscribe }) = patterns {
            for (command, keys) in [(&b"PUNSUBSCRIBE"[..], unsubscribe), (&b"PSUBSCRIBE"[..], subscribe)] {
                send_each(conn, command, keys.chunks(CHANNELS_PER_COMMAND)).await?;
            }
        }
        let Some(Commands { subscribe, unsubscribe }) = channels else { return Ok(()) };
        let sharded = self.config.is_cluster();
        let commands: [(&[u8], Vec<Box<str>>); 2] = if sharded {
            [(b"SUNSUBSCRIBE", unsubscribe), (b"SSUBSCRIBE", subscribe)]
        } else {
            [(b"UNSUBSCRIBE", unsubscribe), (b"SUBSCRIBE", subscribe)]
        };
        for (command, mut keys) in commands {
            // A sharded command names channels of one slot only.
            if sharded {
                keys.sort_by_key(|k| key_slot(k.as_bytes()));
            }
            let groups = keys.chunk_by(|a, b| !sharded || key_slot(a.as_bytes()) == key_slot(b.as_bytes()));
            send_each(conn, command, groups.flat_map(|group| group.chunks(CHANNELS_PER_COMMAND))).await?;
        }
        Ok(())
    }
}

/// Sends `command` once per chunk of keys, each naming that chunk.
async fn send_each<'a>(
    conn: &mut PubSubConn,
    command: &[u8],
    chunks: impl Iterator<Item = &'a [Box<str>]>,
) -> Result<(), RespError> {
    for chunk in chunks {
        let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 1);
        args.push(command);
        args.extend(chunk.iter().map(|k| k.as_bytes()));
        conn.send(&args).await?;
    }
    Ok(())
}
