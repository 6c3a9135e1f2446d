//! The broker seam: how a message published anywhere reaches every gateway node that has a
//! subscriber for its channel.
//!
//! Layout:
//! - this file: the two traits. [`Broker`] publishes and hands out one [`Subscriber`] per
//!   gateway node; the node's [`Delivery`] receives every message of the channels it subscribed.
//! - [`memory`]: the in-process engine of the standalone mode. Delivery is a function call.
//! - [`redis`]: the Redis Pub/Sub engine. Publishing goes over one pipelined connection whose
//!   failures tell "not sent" from "sent, no answer"; each node holds exactly one Pub/Sub connection, reconciles the channels it wants against
//!   the ones Redis confirmed, and resubscribes everything after a reconnect. On a Redis
//!   Cluster (`redis.cluster_nodes`) the same parts run once per primary, with sharded Pub/Sub,
//!   each channel on the primary serving its slot (`redis::cluster`).
//!
//! Pattern subscriptions ([`Subscriber::subscribe_pattern`]) are counted per pattern like
//! channels: a node holds one per distinct pattern. The memory engine matches each publish
//! against the patterns itself; a single Redis matches (`PSUBSCRIBE` on the node's one Pub/Sub
//! connection); a Redis Cluster has none (sharded Pub/Sub has no `PSSUBSCRIBE`).
//! - [`history`]: channel history (offsets, epochs, recovery, idempotent publish): the types
//!   and rules both engines share; each engine keeps the state itself.
//! - `conformance` (feature `testing`, for tests only): the behaviour both engines promise, as a
//!   test suite run against each.
//!
//! Payloads are opaque bytes: the publisher encodes a message once and every layer below passes
//! the same bytes on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_protocol::{ChannelName, ChannelPattern, ConfigError, EventKind, EventsConfig};
use tokio::sync::watch;

#[cfg(feature = "testing")]
pub mod conformance;
pub mod history;
pub mod memory;
pub mod redis;

pub use history::{
    HistoryFilter, HistoryOptions, HistoryPublication, HistoryResult, InboxStatus, PublishResult,
    RecoveryFailure, StreamPosition,
};
pub use memory::MemoryBroker;
pub use redis::{RedisBroker, RedisConfig};

/// What an engine's failure carries: its own typed error (for the Redis engine a
/// [`redis::ConnectError`], a [`redis::NotSent`] or a [`redis::Refused`]), kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The engine cannot reach its backend, or the backend refused the command. Nothing was
    /// published: retrying is safe. `operation` names what failed (`publish`, `ping`); the
    /// message includes the source's, since callers log this error on one line.
    #[error("broker unavailable: {operation}: {source}")]
    Unavailable {
        operation: &'static str,
        #[source]
        source: BoxError,
    },
    /// The command went out and no answer came in time (or the connection broke before it
    /// did): the messages may or may not have been published. `confirmed` counts the messages
    /// of a batch known to be published; the rest are unknown. A retry may publish twice.
    #[error("broker outcome unknown, {confirmed} message(s) confirmed: {reason}")]
    OutcomeUnknown { confirmed: usize, reason: String },
    /// The subscription was not confirmed in time (typically: Redis is down).
    #[error("subscription to {0} was not confirmed in time")]
    SubscribeTimeout(ChannelName),
    /// The pattern subscription was not confirmed in time (typically: Redis is down).
    #[error("subscription to the pattern {0} was not confirmed in time")]
    PatternSubscribeTimeout(ChannelPattern),
    /// The engine has no pattern subscriptions (a Redis Cluster: sharded Pub/Sub has none);
    /// the message says why.
    #[error("pattern subscriptions are not available: {0}")]
    PatternsUnsupported(&'static str),
    /// The engine's configuration is invalid; the error names the key. Only constructors
    /// return it.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A history read cannot return every entry after the position it was given; `current`
    /// is where the channel stands now, for a client that reloads its state and goes on
    /// from there. Not an outage: retrying gives the same answer.
    #[error("cannot recover the history after that position: {reason}")]
    Unrecoverable { reason: RecoveryFailure, current: StreamPosition },
    /// A history request the engine cannot serve as asked (see the message); nothing was done.
    #[error("invalid history request: {0}")]
    InvalidHistoryRequest(&'static str),
    /// The engine (a test double) keeps no history.
    #[error("the {0} broker keeps no history")]
    HistoryUnsupported(&'static str),
}

impl BrokerError {
    /// [`BrokerError::Unavailable`] for `operation`, caused by `source`.
    pub fn unavailable(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Unavailable { operation, source: source.into() }
    }
}

/// One shard as readiness sees it: a channel that lives on it, and on a Redis Cluster the
/// address of the primary serving it (`None` for an engine with one shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardChannel {
    pub shard: Option<Arc<str>>,
    pub channel: ChannelName,
}

/// Receives the messages of every channel a node subscribed to.
///
/// Engines call [`Delivery::deliver`] from their reader task, once per message per node, and
/// [`Delivery::flush`] once they handed over every message they had at hand (everything one
/// read from Redis brought, one publish of the in-memory engine). Neither may block. The
/// gateway's hub collects a batch of messages and writes them on `flush`, each subscriber's
/// share in one system call, so under load several messages share a write.
pub trait Delivery: Send + Sync + 'static {
    fn deliver(&self, channel: &str, payload: Bytes);

    /// A message of a channel with history, at `offset` of `epoch`; the payload carries the
    /// offset too. Engines call this instead of [`Delivery::deliver`] so that a gateway can
    /// notice a gap or an epoch change without reading the frame. By default the position
    /// is ignored.
    fn deliver_at(&self, channel: &str, payload: Bytes, offset: u64, epoch: &str) {
        let _ = (offset, epoch);
        self.deliver(channel, payload);
    }

    /// A message of `channel` that reached the node through its subscription to `pattern`
    /// (which `channel` matches), once per matching pattern the node holds, and apart from
    /// the [`Delivery::deliver`] of a subscription to `channel` itself. Positions are not
    /// passed on: pattern subscriptions do not recover. Engines call it only for nodes that
    /// subscribed a pattern; by default the message is dropped.
    fn deliver_pattern(&self, pattern: &str, channel: &str, payload: Bytes) {
        let _ = (pattern, channel, payload);
    }

    /// Every message delivered so far is complete; send them on.
    fn flush(&self) {}
}

/// The publishing side of an engine, and the factory of node subscribers.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes one encoded message. Returns once the backend accepted it. An error says
    /// whether the message may have been published ([`BrokerError::OutcomeUnknown`]) or
    /// certainly was not ([`BrokerError::Unavailable`]).
    async fn publish(&self, channel: &ChannelName, payload: Bytes) -> Result<(), BrokerError>;

    /// Publishes several messages in order (on a Redis Cluster: in order per channel, as the
    /// channels of different primaries are published concurrently), in as few round trips as the engine allows
    /// (the Redis engine splits a large batch into bounded pipelines so other publishes
    /// interleave). Errors as for [`Broker::publish`].
    async fn publish_batch(&self, batch: &[(ChannelName, Bytes)]) -> Result<(), BrokerError>;

    /// The channels a delivery canary named `base` goes through so that it covers every
    /// shard: on a Redis Cluster one per primary, named `base.<n>` with `n` chosen so that the
    /// primary serves its slot, from the slot map known now (ask again when it may have
    /// changed); elsewhere `base` alone. The channels are in the reserved namespace of `base`.
    fn shard_channels(&self, base: &ChannelName) -> Vec<ShardChannel> {
        vec![ShardChannel { shard: None, channel: base.clone() }]
    }

    /// Starts this node's subscription side. A gateway calls it once; every message of a
    /// channel it subscribes to is handed to `delivery`.
    fn subscriber(&self, delivery: Arc<dyn Delivery>) -> Arc<dyn Subscriber>;

    /// As [`Broker::subscriber`], but the subscription's background task (the Redis node's
    /// connection) is returned to the caller to run instead of spawned, so that a server can
    /// run it on its own task tracker and wait for it at shutdown. The task ends after
    /// [`Subscriber::close`]. Engines without a background task return one that is done.
    fn subscriber_task(&self, delivery: Arc<dyn Delivery>) -> (Arc<dyn Subscriber>, BoxFuture<'static, ()>) {
        (self.subscriber(delivery), Box::pin(std::future::ready(())))
    }

    /// Publishes one encoded message (a JSON object) to a channel with history: assigns the
    /// next offset, writes it into the frame, appends the frame to the history and delivers
    /// it, all in one atomic step, so no subscriber sees a message the history lacks nor the
    /// reverse, and offsets reach every node in order. With an idempotency key already seen,
    /// nothing is published and the first publish's result comes back. Errors as for
    /// [`Broker::publish`], plus [`BrokerError::InvalidHistoryRequest`].
    async fn publish_with_history(
        &self,
        channel: &ChannelName,
        message_id: &str,
        payload: Bytes,
        options: &HistoryOptions,
    ) -> Result<PublishResult, BrokerError> {
        let _ = (channel, message_id, payload, options);
        Err(BrokerError::HistoryUnsupported(self.name()))
    }

    /// Reads a channel's history and its current position in one consistent step. With
    /// `since`, fails with [`BrokerError::Unrecoverable`] unless every entry after it is kept.
    async fn history(
        &self,
        channel: &ChannelName,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, BrokerError> {
        let _ = (channel, filter);
        Err(BrokerError::HistoryUnsupported(self.name()))
    }

    /// Records that everything up to `position` of `channel` (a personal channel: the
    /// user's inbox) was processed, and returns the acknowledged position now. It never moves
    /// backwards: an older offset leaves it as it is. An empty `position.epoch` stands for
    /// the channel's current one (a client that sent no epoch). Fails with
    /// [`BrokerError::Unrecoverable`] when `position` is of another epoch than the channel's
    /// (`epoch_changed`) or beyond its top (`position_ahead`). The acknowledgement belongs to
    /// the epoch and lives exactly as long as the channel's history: an ack does not renew
    /// the history, and a history that is lost takes its acknowledgement along. `ttl` is the
    /// history's, for a channel that has none yet (whose epoch the ack creates, as a read
    /// does).
    async fn ack(
        &self,
        channel: &ChannelName,
        position: &StreamPosition,
        ttl: std::time::Duration,
    ) -> Result<StreamPosition, BrokerError> {
        let _ = (channel, position, ttl);
        Err(BrokerError::HistoryUnsupported(self.name()))
    }

    /// Where `channel`'s history and its acknowledgement stand, read in one consistent step.
    /// Like [`Broker::history`] on a channel without history yet, it creates the epoch.
    async fn inbox(
        &self,
        channel: &ChannelName,
        ttl: std::time::Duration,
    ) -> Result<InboxStatus, BrokerError> {
        let _ = (channel, ttl);
        Err(BrokerError::HistoryUnsupported(self.name()))
    }

    /// Appends one entry, `fields` (name, value pairs, after `type`), to the backends' stream
    /// of events of `kind` (`[events]`, `docs/events.md`), trimmed to about
    /// `events.max_len` entries, and returns once the backend has it. Does nothing when
    /// `events` does not write `kind`. Errors as for [`Broker::publish`]; an engine that keeps
    /// no streams (the in-memory one, whose configuration refuses `[events]`) refuses.
    async fn append_event(
        &self,
        events: &EventsConfig,
        kind: EventKind,
        fields: &[(&str, &[u8])],
    ) -> Result<(), BrokerError> {
        let _ = fields;
        if !events.writes(kind) {
            return Ok(());
        }
        Err(BrokerError::unavailable(
            "event stream",
            format!("the {} broker keeps no event stream", self.name()),
        ))
    }

    /// Whether publishing currently works, for readiness.
    async fn ping(&self) -> Result<(), BrokerError>;

    /// The engine's name, for logs and metrics.
    fn name(&self) -> &'static str;
}

/// A subscription's confirmation, as [`Subscriber::subscribe`] and
/// [`Subscriber::confirmation`] return it: resolves once messages of the channel are
/// guaranteed to flow to the node, or fails when that did not happen in time.
/// [`Confirmation::is_confirmed`] tells, without waiting, whether it already happened; such
/// a confirmation allocates nothing, which matters for the personal channel every connection
/// subscribes.
#[must_use = "a confirmation does nothing unless awaited or checked"]
pub struct Confirmation(Option<BoxFuture<'static, Result<(), BrokerError>>>);

impl Confirmation {
    /// Already confirmed.
    pub fn confirmed() -> Self {
        Self(None)
    }

    /// Resolves when `wait` does.
    pub fn pending(wait: BoxFuture<'static, Result<(), BrokerError>>) -> Self {
        Self(Some(wait))
    }

    /// Whether the subscription was confirmed when this was made; awaiting it then returns
    /// `Ok` at once.
    pub fn is_confirmed(&self) -> bool {
        self.0.is_none()
    }
}

impl Future for Confirmation {
    type Output = Result<(), BrokerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            None => Poll::Ready(Ok(())),
            Some(wait) => wait.as_mut().poll(cx),
        }
    }
}

/// One node's subscriptions.
///
/// Calls are counted: a channel stays subscribed while more `subscribe` than `unsubscribe`
/// calls were made for it. The gateway's hub calls `subscribe` when a channel's first local
/// socket joins and `unsubscribe` when its last one leaves; counting makes a leave and a join
/// that race each other end in the right state whatever order they reach the engine in.
pub trait Subscriber: Send + Sync + 'static {
    /// Registers interest in `channel` at once; the returned confirmation resolves when
    /// messages of the channel are guaranteed to flow to this node (Redis confirmed the
    /// subscription), or fails when that did not happen in time. Dropping it keeps the
    /// interest: undo it with [`Subscriber::unsubscribe`].
    fn subscribe(&self, channel: &ChannelName) -> Confirmation;

    /// Waits for the confirmation of a channel an earlier [`Subscriber::subscribe`] holds
    /// interest in, without adding any: for a second local subscriber that joins while the
    /// first one's subscription is on its way. Fails at once if nothing holds interest in
    /// `channel`.
    fn confirmation(&self, channel: &ChannelName) -> Confirmation;

    /// Withdraws one unit of interest in `channel`; takes effect in the background.
    fn unsubscribe(&self, channel: &ChannelName);

    /// Registers interest in every channel `pattern` matches, counted like
    /// [`Subscriber::subscribe`] (per pattern, whatever channels it matches); the node then
    /// gets their messages through [`Delivery::deliver_pattern`]. The confirmation resolves
    /// when they are guaranteed to flow. Engines without patterns fail it at once with
    /// [`BrokerError::PatternsUnsupported`] (and hold no interest: no unsubscribe is due).
    fn subscribe_pattern(&self, pattern: &ChannelPattern) -> Confirmation {
        let _ = pattern;
        Confirmation::pending(Box::pin(std::future::ready(Err(BrokerError::PatternsUnsupported(
            "this engine has none",
        )))))
    }

    /// As [`Subscriber::confirmation`], for a pattern.
    fn pattern_confirmation(&self, pattern: &ChannelPattern) -> Confirmation {
        self.subscribe_pattern(pattern)
    }

    /// Withdraws one unit of interest in `pattern`; takes effect in the background.
    fn unsubscribe_pattern(&self, pattern: &ChannelPattern) {
        let _ = pattern;
    }

    /// Patterns the engine is currently subscribed to for this node, for metrics and tests.
    fn active_patterns(&self) -> usize {
        0
    }

    /// `true` while the node's subscriptions are live (connected and resubscribed).
    fn status(&self) -> watch::Receiver<bool>;

    /// While [`Subscriber::status`] is not live, the shards (on a Redis Cluster: the
    /// addresses of the primaries) whose subscriptions are down, so readiness can name them.
    /// Empty on a single Redis and in memory, whose one status says it all.
    fn down_shards(&self) -> Vec<Arc<str>> {
        Vec::new()
    }

    /// Channels the engine is currently subscribed to for this node, for metrics.
    fn active_channels(&self) -> usize;

    /// How many times the node's subscription connection was re-established, for metrics.
    fn reconnects(&self) -> u64 {
        0
    }

    /// Stops the node's subscription side (closes its connection).
    fn close(&self);
}
