//! The Redis Pub/Sub engine.
//!
//! Publishing shares one pipelined connection per process ([`publish`]), reconnected on
//! demand. Every publish answers within `response_timeout`, and says whether its commands went
//! out: "not sent" ([`BrokerError::Unavailable`]) or "sent, no answer"
//! ([`BrokerError::OutcomeUnknown`]). Large batches go out as bounded pipelines so other
//! publishes interleave.
//!
//! Each node ([`RedisBroker::subscriber`]) owns exactly one Pub/Sub connection, driven by one
//! task ([`node`]). Subscribing registers interest synchronously and wakes the task, which
//! reconciles the wanted channels against those Redis has confirmed, in batches (one
//! `SUBSCRIBE` for many channels). After a disconnect the task reconnects with jittered
//! exponential backoff and resubscribes everything still wanted; `status` is `false`
//! meanwhile, so readiness shows it. The Pub/Sub connection itself ([`resp`]) reads from Redis
//! only as fast as the node delivers, so a lagging node cannot queue messages without bound.
//!
//! Every connection opens through one [`Endpoint`] ([`connect`]): Sentinel-aware, authenticated,
//! bounded by `connect_timeout`. [`LazyConnection`], a shared multiplexed connection made on
//! demand, is built on it too.
//!
//! On a Redis Cluster ([`cluster`]) publishing, each node's subscriptions and the history
//! scripts are split by the primary serving each channel's slot: a publishing connection and,
//! per node, a sharded Pub/Sub connection per primary, each the same as above.
//!
//! [`KeyRouter`] (`route`) runs scripts by key: on one [`LazyConnection`] to the one primary,
//! or on a cluster on the primary of the key's slot, following the slot map. The history
//! scripts and presence's run through one.
//!
//! Channels with history ([`history`]) publish through a script on their own connection
//! (a [`KeyRouter`]), whose reply carries the offset; their Pub/Sub messages carry a position
//! header that the node strips before delivery.

mod channels;
pub(crate) mod cluster;
mod config;
pub mod connect;
mod history;
mod node;
mod publish;
pub mod resp;
mod route;
pub mod sentinel;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use herald_protocol::{ChannelName, EventKind, EventsConfig};
use rand::Rng;
use tokio_util::sync::CancellationToken;

pub use self::cluster::key_slot;
use self::cluster::{Cluster, ClusterSubscriber, Spread};
pub use self::config::RedisConfig;
pub use self::connect::{ConnectError, Endpoint, LazyConnection, QueryError};
use self::history::HistoryStore;
use self::node::{NodeShared, NodeTask, RedisSubscriber};
pub use self::publish::{NotSent, Refused, Unanswered};
use self::publish::{Publisher, Trip};
pub use self::resp::RespError;
pub use self::route::KeyRouter;
use crate::history::{
    HistoryFilter, HistoryOptions, HistoryResult, InboxStatus, PublishResult, StreamPosition, check_filter,
    check_publish, check_ttl,
};
use crate::{Broker, BrokerError, Delivery, ShardChannel, Subscriber};

/// The Redis engine. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    config: RedisConfig,
    /// The publishing connection.
    publisher: Publisher,
    /// Channel histories: their scripts and connection.
    history: HistoryStore,
    /// Stops every node task and the publishing connection when the broker is closed.
    shutdown: CancellationToken,
    /// With `redis.cluster_nodes`: the slot map and a connection per primary; publishing,
    /// subscribing and history then go through it.
    cluster: Option<Arc<Cluster>>,
    /// On a cluster, the channels published over several primaries (`redis.spread_channels`).
    spread: Option<Arc<Spread>>,
    /// The connection appending to the backends' event stream (`[events]`): its own, so an
    /// `XADD` never waits behind a publish or a history script.
    events: KeyRouter,
}

impl RedisBroker {
    /// Validates the configuration (the error names the key); connections are made lazily, so
    /// this works while Redis is down.
    pub fn new(config: RedisConfig) -> Result<Self, BrokerError> {
        let endpoint = Endpoint::new(config.clone())?;
        let shutdown = CancellationToken::new();
        let publisher = Publisher::new(endpoint.clone(), shutdown.child_token());
        let cluster =
            config.is_cluster().then(|| Arc::new(Cluster::new(endpoint.clone(), shutdown.child_token())));
        let router = KeyRouter::shared(endpoint.clone(), cluster.clone());
        let history = HistoryStore::new(router, config.clone());
        let spread = Spread::new(&config);
        let events = KeyRouter::shared(endpoint.clone(), cluster.clone());
        let inner = Inner { endpoint, config, publisher, history, shutdown, cluster, spread, events };
        Ok(Self { inner: Arc::new(inner) })
    }

    fn key(&self, channel: &ChannelName) -> String {
        self.inner.config.pubsub_channel(channel.as_str())
    }

    /// Stops every node's Pub/Sub task and the publishing connection.
    pub fn close(&self) {
        self.inner.shutdown.cancel();
    }
}

/// The broker's error for a round trip of `operation` that did not end in `Done`, after
/// `confirmed` messages of the same request were published in earlier round trips.
fn trip_error(operation: &'static str, trip: Trip, confirmed: usize) -> BrokerError {
    match trip {
        Trip::Done => unreachable!("not an error"),
        Trip::NotSent(reason) if confirmed == 0 => BrokerError::unavailable(operation, reason),
        Trip::Rejected { ok: 0, message } if confirmed == 0 => {
            BrokerError::unavailable(operation, Refused { message })
        }
        Trip::NotSent(reason) => BrokerError::OutcomeUnknown { confirmed, reason: reason.to_string() },
        Trip::Unknown(reason) => BrokerError::OutcomeUnknown { confirmed, reason: reason.to_string() },
        Trip::Rejected { ok, message } => BrokerError::OutcomeUnknown {
            confirmed: confirmed + ok,
            reason: format!("redis refused part of the batch: {message}"),
        },
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, channel: &ChannelName, payload: Bytes) -> Result<(), BrokerError> {
        if let Some(cluster) = &self.inner.cluster {
            let target = self.inner.spread.as_ref().map_or(channel, |spread| spread.publish_target(channel));
            return cluster.publisher.publish(&[(target.clone(), payload)], "publish").await;
        }
        let mut bytes = BytesMut::with_capacity(payload.len() + 64);
        publish::encode(&mut bytes, &[b"PUBLISH", self.key(channel).as_bytes(), &payload]);
        match self.inner.publisher.round_trip(bytes.freeze(), 1).await {
            Trip::Done => Ok(()),
            trip => Err(trip_error("publish", trip, 0)),
        }
    }

    async fn publish_batch(&self, batch: &[(ChannelName, Bytes)]) -> Result<(), BrokerError> {
        if let Some(cluster) = &self.inner.cluster {
            let batch = match &self.inner.spread {
                Some(spread) => spread.publish_batch(batch),
                None => batch.into(),
            };
            return cluster.publisher.publish(&batch, "publish batch").await;
        }
        let limit = self.inner.config.publish_pipeline_bytes;
        let mut confirmed = 0;
        let mut rest = batch;
        while !rest.is_empty() {
            let mut bytes = BytesMut::new();
            let mut count = 0;
            for (channel, payload) in rest {
                if count > 0 && bytes.len() + payload.len() > limit {
                    break;
                }
                publish::encode(&mut bytes, &[b"PUBLISH", self.key(channel).as_bytes(), payload]);
                count += 1;
            }
            match self.inner.publisher.round_trip(bytes.freeze(), count).await {
                Trip::Done => confirmed += count,
                trip => return Err(trip_error("publish batch", trip, confirmed)),
            }
            rest = &rest[count..];
        }
        Ok(())
    }

    async fn publish_with_history(
        &self,
        channel: &ChannelName,
        message_id: &str,
        payload: Bytes,
        options: &HistoryOptions,
    ) -> Result<PublishResult, BrokerError> {
        check_publish(&payload, options)?;
        self.inner.history.publish(channel, message_id, &payload, options).await
    }

    async fn history(
        &self,
        channel: &ChannelName,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, BrokerError> {
        check_filter(filter)?;
        self.inner.history.read(channel, filter).await
    }

    async fn ack(
        &self,
        channel: &ChannelName,
        position: &StreamPosition,
        ttl: Duration,
    ) -> Result<StreamPosition, BrokerError> {
        check_ttl(ttl)?;
        self.inner.history.ack(channel, position, ttl).await
    }

    async fn inbox(&self, channel: &ChannelName, ttl: Duration) -> Result<InboxStatus, BrokerError> {
        check_ttl(ttl)?;
        self.inner.history.inbox(channel, ttl).await
    }

    fn shard_channels(&self, base: &ChannelName) -> Vec<ShardChannel> {
        match &self.inner.cluster {
            Some(cluster) => cluster.shard_channels(&self.inner.config, base),
            None => vec![ShardChannel { shard: None, channel: base.clone() }],
        }
    }

    fn subscriber(&self, delivery: Arc<dyn Delivery>) -> Arc<dyn Subscriber> {
        let (subscriber, task) = self.subscriber_task(delivery);
        tokio::spawn(task);
        subscriber
    }

    fn subscriber_task(&self, delivery: Arc<dyn Delivery>) -> (Arc<dyn Subscriber>, BoxFuture<'static, ()>) {
        if let Some(cluster) = &self.inner.cluster {
            let delivery = match &self.inner.spread {
                Some(_) => Spread::delivery(delivery),
                None => delivery,
            };
            let subscriber = ClusterSubscriber::new(
                self.inner.config.clone(),
                self.inner.endpoint.clone(),
                cluster.topology.clone(),
                delivery,
                self.inner.shutdown.child_token(),
            );
            let task = Box::pin(subscriber.clone().run());
            let subscriber: Arc<dyn Subscriber> = Arc::new(subscriber);
            let subscriber = match &self.inner.spread {
                Some(spread) => spread.subscriber(subscriber),
                None => subscriber,
            };
            return (subscriber, task);
        }
        let shared = NodeShared::new(self.inner.shutdown.child_token(), self.inner.config.subscribe_timeout);
        let task = NodeTask {
            config: self.inner.config.clone(),
            endpoint: self.inner.endpoint.clone(),
            shared: shared.clone(),
            delivery,
        };
        let subscriber = Arc::new(RedisSubscriber { shared, config: self.inner.config.clone() });
        (subscriber, Box::pin(task.run()))
    }

    /// `XADD <key> MAXLEN ~ <max_len> * type <kind> <fields>...`, the key as
    /// [`EventsConfig::key`] has it (on a cluster in the `{presence}` slot, beside the entries
    /// presence writes). An error after the command went out leaves it unknown whether the
    /// entry was written; the caller's retry may write it twice.
    async fn append_event(
        &self,
        events: &EventsConfig,
        kind: EventKind,
        fields: &[(&str, &[u8])],
    ) -> Result<(), BrokerError> {
        let config = &self.inner.config;
        let Some(key) = events.key(kind, &config.prefix, config.is_cluster()) else { return Ok(()) };
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key).arg("MAXLEN").arg("~").arg(events.max_len).arg("*").arg("type").arg(kind.as_str());
        for (name, value) in fields {
            cmd.arg(*name).arg(*value);
        }
        let cmd = &cmd;
        let result =
            self.inner
                .events
                .run(&key, "event stream", |mut conn| async move {
                    cmd.query_async::<redis::Value>(&mut conn).await
                })
                .await?;
        result.map(|_| ()).map_err(|e| match e.code() {
            // Redis answered with an error: nothing was written.
            Some(_) => BrokerError::unavailable("event stream", e),
            None => BrokerError::OutcomeUnknown { confirmed: 0, reason: format!("event stream: {e}") },
        })
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        if let Some(cluster) = &self.inner.cluster {
            return cluster.publisher.ping().await;
        }
        let mut bytes = BytesMut::new();
        publish::encode(&mut bytes, &[b"PING"]);
        match self.inner.publisher.round_trip(bytes.freeze(), 1).await {
            Trip::Done => Ok(()),
            // A PING changes nothing: whatever became of it, the broker is not ready.
            Trip::NotSent(reason) => Err(BrokerError::unavailable("ping", reason)),
            Trip::Unknown(reason) => Err(BrokerError::unavailable("ping", reason)),
            Trip::Rejected { message, .. } => Err(BrokerError::unavailable("ping", Refused { message })),
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Exponential backoff with jitter: a delay drawn from the upper half of `min * 2^attempt`,
/// capped at `max`, so many gateways reconnecting at once spread out.
fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = base / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..40 {
            let d = backoff(attempt, min, max);
            assert!(d <= max, "{d:?}");
            assert!(d >= min / 2, "{d:?}");
        }
        assert!(backoff(10, min, max) >= max / 2);
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact("redis://:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
