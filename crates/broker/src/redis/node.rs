//! One gateway node's Redis subscriptions: a handle ([`RedisSubscriber`]) and the task that
//! owns the node's single Pub/Sub connection ([`NodeTask`]).
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::FutureExt;
use herald_protocol::ChannelName;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connect::{ConnectError, Endpoint};
use super::history::{Payload, split_payload};
use super::resp::{Event, PubSubConn, RespError};
use super::{RedisConfig, backoff, redact};
use crate::{BrokerError, Confirmation, Delivery, Subscriber};
use herald_protocol::support::shrink;

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

/// Every channel the node wants or Redis has, in one map, so that a new channel costs one
/// key and a few hash lookups (a connection's personal channel is one, at every connect).
#[derive(Default)]
struct SubState {
    /// Channel (with prefix) -> its state. An entry goes once it is neither wanted, nor
    /// subscribed in Redis, nor waiting for a command or its confirmation.
    channels: HashMap<Box<str>, Chan>,
    /// Channels whose wanted and active state may differ, each once ([`Chan::dirty`]).
    dirty: Vec<Box<str>>,
    /// Channels with a command in flight: the batch the task waits for.
    in_flight: usize,
    /// Channels Redis confirmed on the current connection.
    active: usize,
}

#[derive(Default)]
struct Chan {
    /// Outstanding `subscribe` calls.
    wanted: u32,
    /// Subscribe calls waiting for the confirmation. Each confirmation wakes only its own
    /// waiters, so a burst of new channels costs one wake-up per waiter, not one per waiter
    /// per confirmation.
    waiters: Vec<oneshot::Sender<()>>,
    /// Redis confirmed it on the current connection.
    active: bool,
    /// A command for it is in flight; its confirmation settles it.
    in_flight: bool,
    /// Listed in [`SubState::dirty`].
    dirty: bool,
}

/// What [`SubState::take_commands`] sends: channels, with prefix.
#[derive(Default)]
struct Commands {
    subscribe: Vec<Box<str>>,
    unsubscribe: Vec<Box<str>>,
}

impl Chan {
    fn unused(&self) -> bool {
        self.wanted == 0 && !self.active && !self.in_flight && !self.dirty
    }
}

/// The node's bookkeeping, apart from the connection, so that every transition can be
/// followed (and tested) on its own.
impl SubState {
    /// Lists `key` for the next reconcile, unless it is listed already.
    fn mark_dirty(dirty: &mut Vec<Box<str>>, key: &str, chan: &mut Chan) {
        if !chan.dirty {
            chan.dirty = true;
            dirty.push(key.into());
        }
    }

    /// Drops `key`'s entry, which nothing refers to any more ([`Chan::unused`]).
    fn forget(&mut self, key: &str) {
        self.channels.remove(key);
        shrink(&mut self.channels);
    }

    /// One more `subscribe` call for `key`. `true` if Redis has it already; otherwise
    /// `waiter` hears of the confirmation, and the channel is dirty.
    fn want(&mut self, key: &str, waiter: oneshot::Sender<()>) -> bool {
        let chan = match self.channels.get_mut(key) {
            Some(chan) => chan,
            None => self.channels.entry(key.into()).or_default(),
        };
        chan.wanted += 1;
        if chan.active {
            return true;
        }
        chan.waiters.push(waiter);
        Self::mark_dirty(&mut self.dirty, key, chan);
        false
    }

    /// A wait for `key`'s confirmation that adds no interest. `true` if Redis has it;
    /// otherwise `waiter` hears of the confirmation, or is dropped at once when nothing
    /// wants `key`.
    fn wait(&mut self, key: &str, waiter: oneshot::Sender<()>) -> bool {
        match self.channels.get_mut(key) {
            Some(chan) if chan.active => true,
            Some(chan) if chan.wanted > 0 => {
                chan.waiters.push(waiter);
                false
            }
            _ => false,
        }
    }

    /// One `subscribe` call for `key` less. `true` if that was the last, so the channel is
    /// dirty; its pending subscribe calls see their interest withdrawn.
    fn unwant(&mut self, key: &str) -> bool {
        let Some(chan) = self.channels.get_mut(key).filter(|c| c.wanted > 0) else { return false };
        chan.wanted -= 1;
        if chan.wanted > 0 {
            return false;
        }
        chan.waiters = Vec::new();
        Self::mark_dirty(&mut self.dirty, key, chan);
        true
    }

    /// A new connection has nothing subscribed: every wanted channel is dirty again.
    fn reset(&mut self) {
        self.active = 0;
        self.in_flight = 0;
        let dirty = &mut self.dirty;
        self.channels.retain(|key, chan| {
            chan.active = false;
            chan.in_flight = false;
            if chan.wanted > 0 {
                Self::mark_dirty(dirty, key, chan);
            }
            !chan.unused()
        });
        shrink(&mut self.channels);
    }

    /// The channels to subscribe and to unsubscribe, now in flight, for every dirty channel
    /// whose wanted and active state differ; `None` while a batch is still in flight, or
    /// when no channel needs a command.
    fn take_commands(&mut self) -> Option<Commands> {
        if self.in_flight > 0 {
            return None;
        }
        let mut commands = Commands::default();
        for key in std::mem::take(&mut self.dirty) {
            let Some(chan) = self.channels.get_mut(&key) else { continue };
            chan.dirty = false;
            let list = match (chan.wanted > 0, chan.active) {
                (true, false) => &mut commands.subscribe,
                (false, true) => &mut commands.unsubscribe,
                _ => {
                    if chan.unused() {
                        self.forget(&key);
                    }
                    continue;
                }
            };
            chan.in_flight = true;
            self.in_flight += 1;
            list.push(key);
        }
        (!commands.subscribe.is_empty() || !commands.unsubscribe.is_empty()).then_some(commands)
    }

    /// Records Redis's confirmation of a subscribe (`live`) or unsubscribe of `key`, and
    /// marks the channel dirty again if that no longer matches what is wanted. `true` if the
    /// task has commands to send: the channel needs one, or the batch in flight is settled
    /// and channels gathered meanwhile.
    fn confirm(&mut self, key: &str, live: bool) -> bool {
        // A confirmation of a channel the node does not know: nothing wants it, and if it is
        // live, reconciling unsubscribes it.
        let chan = match self.channels.get_mut(key) {
            Some(chan) => chan,
            None if live => self.channels.entry(key.into()).or_default(),
            None => return false,
        };
        if chan.in_flight {
            chan.in_flight = false;
            self.in_flight -= 1;
        }
        if chan.active != live {
            chan.active = live;
            if live {
                self.active += 1;
            } else {
                self.active -= 1;
            }
        }
        if live {
            for waiter in std::mem::take(&mut chan.waiters) {
                let _ = waiter.send(());
            }
        }
        let mismatch = (chan.wanted > 0) != live;
        if mismatch {
            Self::mark_dirty(&mut self.dirty, key, chan);
        }
        if chan.unused() {
            self.forget(key);
        }
        mismatch || (self.in_flight == 0 && !self.dirty.is_empty())
    }
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

impl RedisSubscriber {
    /// `channel`'s name in Redis.
    fn key(&self, channel: &ChannelName) -> String {
        format!("{}{}", self.prefix, channel.as_str())
    }

    /// Waits for `confirmed`, at most the subscribe timeout.
    fn wait(&self, channel: &ChannelName, confirmed: oneshot::Receiver<()>) -> Confirmation {
        let timeout = self.shared.subscribe_timeout;
        let channel = channel.clone();
        Confirmation::pending(
            async move {
                match tokio::time::timeout(timeout, confirmed).await {
                    Ok(Ok(())) => Ok(()),
                    // Timed out, or the interest was withdrawn before Redis confirmed.
                    _ => Err(BrokerError::SubscribeTimeout(channel)),
                }
            }
            .boxed(),
        )
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

    fn status(&self) -> watch::Receiver<bool> {
        self.shared.status.subscribe()
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
        let connect = self.endpoint.open_resp();
        tokio::select! {
            r = tokio::time::timeout(self.config.connect_timeout, connect) => match r {
                Ok(Ok((conn, _))) => Ok(conn),
                Ok(Err(e)) => Err(Ended::Failed(e.into())),
                Err(_) => Err(Ended::Failed(Lost::ConnectTimeout)),
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
        self.shared.lock().reset();
        let mut resynced = false;
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_pong: Option<Instant> = None;
        let prefix_len = self.config.prefix.len();
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
            if !resynced && self.shared.lock().in_flight == 0 {
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
                            match split_payload(payload) {
                                Payload::Plain(frame) => self.delivery.deliver(name, Bytes::copy_from_slice(frame)),
                                Payload::Positioned { offset, epoch, frame } => {
                                    self.delivery.deliver_at(name, Bytes::copy_from_slice(frame), offset, epoch);
                                }
                                Payload::Malformed => tracing::warn!(channel = name, "dropped a message with a malformed position header"),
                            }
                        }
                    }
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

    /// Records Redis's confirmation of a subscribe (`live`) or unsubscribe.
    fn confirmed(&self, channel: &[u8], live: bool) {
        let Ok(key) = std::str::from_utf8(channel) else { return };
        if self.shared.lock().confirm(key, live) {
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
        let Some(Commands { subscribe, unsubscribe }) = self.shared.lock().take_commands() else {
            return Ok(());
        };
        *last_batch = Some(Instant::now());
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

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    fn keys(list: &[Box<str>]) -> Vec<&str> {
        list.iter().map(|k| &**k).collect()
    }

    /// `want` with a waiter whose receiver is returned.
    fn want(state: &mut SubState, key: &str) -> (bool, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (state.want(key, tx), rx)
    }

    fn commands(state: &mut SubState) -> (Vec<String>, Vec<String>) {
        let Commands { subscribe: sub, unsubscribe: unsub } =
            state.take_commands().expect("no batch in flight");
        (
            keys(&sub).iter().map(|k| k.to_string()).collect(),
            keys(&unsub).iter().map(|k| k.to_string()).collect(),
        )
    }

    #[test]
    fn a_channel_is_subscribed_once_and_forgotten_once_nobody_wants_it() {
        let mut state = SubState::default();
        let (_, mut first) = want(&mut state, "a");
        let (_, mut second) = want(&mut state, "a");
        let _b = want(&mut state, "b");
        assert_eq!(commands(&mut state), (vec!["a".into(), "b".into()], vec![]));
        assert!(state.take_commands().is_none(), "one batch in flight at a time");
        assert!(!state.confirm("a", true));
        assert_eq!((first.try_recv(), second.try_recv()), (Ok(()), Ok(())));
        assert!(!state.confirm("b", true));
        assert_eq!(state.active, 2);
        // Wanted again: Redis has it already.
        assert!(want(&mut state, "a").0);
        assert!(!state.unwant("a"));
        assert!(!state.unwant("a"));
        assert!(state.unwant("a"), "the last interest in a went");
        assert!(!state.unwant("a"), "nothing left to withdraw");
        assert_eq!(commands(&mut state), (vec![], vec!["a".into()]));
        assert!(!state.confirm("a", false));
        assert_eq!((state.active, state.channels.len()), (1, 1), "a is forgotten, b stays");
    }

    #[test]
    fn a_wait_for_the_confirmation_adds_no_interest() {
        let mut state = SubState::default();
        let (tx, mut unknown) = oneshot::channel();
        assert!(!state.wait("a", tx));
        assert_eq!(unknown.try_recv(), Err(TryRecvError::Closed), "nothing wants a");
        let (_, mut first) = want(&mut state, "a");
        let (tx, mut second) = oneshot::channel();
        assert!(!state.wait("a", tx));
        assert_eq!(commands(&mut state), (vec!["a".into()], vec![]));
        assert!(!state.confirm("a", true));
        assert_eq!((first.try_recv(), second.try_recv()), (Ok(()), Ok(())));
        assert!(state.wait("a", oneshot::channel().0), "confirmed already");
        assert!(state.unwant("a"), "one unwant ends the one subscribe call");
    }

    #[test]
    fn a_wait_ends_with_the_interest_it_waits_on() {
        let mut state = SubState::default();
        let _first = want(&mut state, "a");
        let (tx, mut second) = oneshot::channel();
        assert!(!state.wait("a", tx));
        assert!(state.unwant("a"));
        assert_eq!(second.try_recv(), Err(TryRecvError::Closed));
    }

    #[test]
    fn interest_withdrawn_before_the_confirmation_is_unsubscribed_after_it() {
        let mut state = SubState::default();
        let (_, mut waiter) = want(&mut state, "a");
        assert_eq!(commands(&mut state), (vec!["a".into()], vec![]));
        assert!(state.unwant("a"));
        assert_eq!(waiter.try_recv(), Err(TryRecvError::Closed), "its subscribe call gives up");
        assert!(state.take_commands().is_none());
        assert!(state.confirm("a", true), "live but unwanted: an unsubscribe is due");
        assert_eq!(commands(&mut state), (vec![], vec!["a".into()]));
        assert!(!state.confirm("a", false));
        assert_eq!((state.active, state.in_flight, state.channels.len()), (0, 0, 0));
    }

    #[test]
    fn channels_gathered_during_a_batch_leave_once_it_is_settled() {
        let mut state = SubState::default();
        let _a = want(&mut state, "a");
        assert_eq!(commands(&mut state), (vec!["a".into()], vec![]));
        let _b = want(&mut state, "b");
        let _c = want(&mut state, "c");
        assert!(state.take_commands().is_none());
        assert!(state.confirm("a", true), "the batch is settled and b and c wait");
        assert_eq!(commands(&mut state), (vec!["b".into(), "c".into()], vec![]));
    }

    #[test]
    fn a_new_connection_resubscribes_what_is_wanted_and_forgets_the_rest() {
        let mut state = SubState::default();
        let _a = want(&mut state, "a");
        let _b = want(&mut state, "b");
        commands(&mut state);
        state.confirm("a", true);
        state.confirm("b", true);
        assert!(state.unwant("b"));
        let _c = want(&mut state, "c");
        assert_eq!(commands(&mut state), (vec!["c".into()], vec!["b".into()]));
        // The connection breaks with that batch unanswered.
        state.reset();
        assert_eq!((state.active, state.in_flight), (0, 0));
        let (mut sub, unsub) = commands(&mut state);
        sub.sort();
        assert_eq!((sub, unsub), (vec!["a".to_string(), "c".into()], vec![]));
        assert_eq!(state.channels.len(), 2, "b is forgotten");
    }

    #[test]
    fn confirmations_of_unknown_channels_leave_nothing_behind() {
        let mut state = SubState::default();
        assert!(!state.confirm("x", false));
        assert!(state.channels.is_empty());
        assert!(state.confirm("x", true), "subscribed in Redis, wanted by nobody");
        assert_eq!(commands(&mut state), (vec![], vec!["x".into()]));
        assert!(!state.confirm("x", false));
        assert!(state.channels.is_empty());
        assert_eq!(state.active, 0);
    }
}
