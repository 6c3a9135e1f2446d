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
//! bounded by `connect_timeout`. [`LazyConnection`], the shared multiplexed connection
//! presence runs its scripts on, is built on it too.
//!
//! Channels with history ([`history`]) publish through a script on their own
//! [`LazyConnection`], whose reply carries the offset; their Pub/Sub messages carry a position
//! header that the node strips before delivery.

mod channels;
pub mod connect;
mod history;
mod node;
mod publish;
pub mod resp;
pub mod sentinel;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use herald_protocol::{ChannelName, ConfigError};
use rand::Rng;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use self::connect::{ConnectError, Endpoint, LazyConnection, QueryError};
use self::history::HistoryStore;
use self::node::{NodeShared, NodeTask, RedisSubscriber};
pub use self::publish::{NotSent, Refused, Unanswered};
use self::publish::{Publisher, Trip};
pub use self::resp::RespError;
use crate::history::{
    HistoryFilter, HistoryOptions, HistoryResult, InboxStatus, PublishResult, StreamPosition, check_filter,
    check_publish, check_ttl,
};
use crate::{Broker, BrokerError, Delivery, Subscriber};

/// Settings of the Redis engine (`[redis]` in the configuration file).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prepended to every channel name in Redis, so several deployments can share a server.
    pub prefix: String,
    /// How long to wait for a TCP connection to Redis.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a publish (and a readiness `PING`) may take, from the request to Redis's
    /// answer, connecting included. A publish still unanswered then fails as "not sent" or,
    /// once its command went out, as "outcome unknown".
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Largest pipeline of `PUBLISH` commands one batch sends to Redis at a time (at least one
    /// message). The next part of the batch goes out once Redis answered this one, so other
    /// requests' publishes wait behind at most this much of a batch.
    pub publish_pipeline_bytes: usize,
    /// How long a client's subscribe waits for Redis to confirm before it gets `unavailable`.
    #[serde(with = "humantime_serde")]
    pub subscribe_timeout: Duration,
    /// Least time between two batches of `SUBSCRIBE`/`UNSUBSCRIBE` commands on a gateway's
    /// Pub/Sub connection. A subscribe leaves at once when no batch left within this time;
    /// in a burst, channels gather for up to this long and Redis gets fewer, larger commands.
    #[serde(with = "humantime_serde")]
    pub subscribe_batch_interval: Duration,
    /// First delay before reconnecting the Pub/Sub connection; it doubles up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How often the Pub/Sub connection is pinged, so a silently dead Redis is noticed.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// With Redis Sentinel: the name of the monitored master. Every connection then asks the
    /// sentinels where the master is; `url` only supplies the password and database.
    pub sentinel_master: Option<String>,
    /// With Redis Sentinel: the sentinels, as `host:port` (a comma-separated string works too).
    #[serde(deserialize_with = "herald_protocol::support::list_or_comma_separated")]
    pub sentinel_addresses: Vec<String>,
    /// With Redis Sentinel: the sentinels' own password (their `requirepass`), when they have
    /// one. The master's password is the one in `url`.
    pub sentinel_password: Option<String>,
    /// With Redis Sentinel: the ACL user for the sentinels, with `sentinel_password`.
    pub sentinel_username: Option<String>,
}

impl std::fmt::Debug for RedisConfig {
    /// Passwords are left out: configurations end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so that a new field cannot be left out (or printed in the clear) unseen.
        let Self {
            url,
            prefix,
            connect_timeout,
            response_timeout,
            publish_pipeline_bytes,
            subscribe_timeout,
            subscribe_batch_interval,
            reconnect_min,
            reconnect_max,
            ping_interval,
            sentinel_master,
            sentinel_addresses,
            sentinel_password,
            sentinel_username,
        } = self;
        f.debug_struct("RedisConfig")
            .field("url", &redact(url))
            .field("prefix", prefix)
            .field("connect_timeout", connect_timeout)
            .field("response_timeout", response_timeout)
            .field("publish_pipeline_bytes", publish_pipeline_bytes)
            .field("subscribe_timeout", subscribe_timeout)
            .field("subscribe_batch_interval", subscribe_batch_interval)
            .field("reconnect_min", reconnect_min)
            .field("reconnect_max", reconnect_max)
            .field("ping_interval", ping_interval)
            .field("sentinel_master", sentinel_master)
            .field("sentinel_addresses", sentinel_addresses)
            .field("sentinel_password", &sentinel_password.as_ref().map(|_| "<redacted>"))
            .field("sentinel_username", sentinel_username)
            .finish()
    }
}

impl RedisConfig {
    /// Checks the URL and the Sentinel settings; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| ConfigError::new("redis.url", e))?;
        if !matches!(client.get_connection_info().addr(), redis::ConnectionAddr::Tcp(..)) {
            return Err(ConfigError::new("redis.url", "only redis://host:port URLs are supported"));
        }
        if self.response_timeout.is_zero() {
            return Err(ConfigError::new("redis.response_timeout", "must be greater than 0"));
        }
        if self.publish_pipeline_bytes == 0 {
            return Err(ConfigError::new("redis.publish_pipeline_bytes", "must be greater than 0"));
        }
        if self.subscribe_batch_interval >= self.subscribe_timeout {
            return Err(ConfigError::new(
                "redis.subscribe_batch_interval",
                "must be shorter than redis.subscribe_timeout",
            ));
        }
        match (&self.sentinel_master, self.sentinel_addresses.is_empty()) {
            (Some(_), true) => {
                return Err(ConfigError::new(
                    "redis.sentinel_addresses",
                    "required with redis.sentinel_master",
                ));
            }
            (None, false) => {
                return Err(ConfigError::new(
                    "redis.sentinel_master",
                    "required with redis.sentinel_addresses",
                ));
            }
            _ => {}
        }
        if self.sentinel_master.is_none()
            && (self.sentinel_password.is_some() || self.sentinel_username.is_some())
        {
            return Err(ConfigError::new(
                "redis.sentinel_master",
                "required with redis.sentinel_password or redis.sentinel_username",
            ));
        }
        if self.sentinel_username.is_some() && self.sentinel_password.is_none() {
            return Err(ConfigError::new("redis.sentinel_password", "required with redis.sentinel_username"));
        }
        for addr in &self.sentinel_addresses {
            sentinel::split_addr(addr).map_err(|e| ConfigError::new("redis.sentinel_addresses", e))?;
        }
        Ok(())
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "herald:".into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            publish_pipeline_bytes: 1024 * 1024,
            subscribe_timeout: Duration::from_secs(5),
            subscribe_batch_interval: Duration::from_millis(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            sentinel_master: None,
            sentinel_addresses: Vec::new(),
            sentinel_password: None,
            sentinel_username: None,
        }
    }
}

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
}

impl RedisBroker {
    /// Validates the configuration (the error names the key); connections are made lazily, so
    /// this works while Redis is down.
    pub fn new(config: RedisConfig) -> Result<Self, BrokerError> {
        let endpoint = Endpoint::new(config.clone())?;
        let shutdown = CancellationToken::new();
        let publisher = Publisher::new(endpoint.clone(), shutdown.child_token());
        let history = HistoryStore::new(LazyConnection::new(endpoint.clone()), config.clone());
        Ok(Self { inner: Arc::new(Inner { endpoint, config, publisher, history, shutdown }) })
    }

    fn key(&self, channel: &ChannelName) -> String {
        format!("{}{}", self.inner.config.prefix, channel.as_str())
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
        let mut bytes = BytesMut::with_capacity(payload.len() + 64);
        publish::encode(&mut bytes, &[b"PUBLISH", self.key(channel).as_bytes(), &payload]);
        match self.inner.publisher.round_trip(bytes.freeze(), 1).await {
            Trip::Done => Ok(()),
            trip => Err(trip_error("publish", trip, 0)),
        }
    }

    async fn publish_batch(&self, batch: &[(ChannelName, Bytes)]) -> Result<(), BrokerError> {
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

    fn subscriber(&self, delivery: Arc<dyn Delivery>) -> Arc<dyn Subscriber> {
        let (subscriber, task) = self.subscriber_task(delivery);
        tokio::spawn(task);
        subscriber
    }

    fn subscriber_task(&self, delivery: Arc<dyn Delivery>) -> (Arc<dyn Subscriber>, BoxFuture<'static, ()>) {
        let shared = NodeShared::new(self.inner.shutdown.child_token(), self.inner.config.subscribe_timeout);
        let task = NodeTask {
            config: self.inner.config.clone(),
            endpoint: self.inner.endpoint.clone(),
            shared: shared.clone(),
            delivery,
        };
        let subscriber = Arc::new(RedisSubscriber { shared, prefix: self.inner.config.prefix.clone() });
        (subscriber, Box::pin(task.run()))
    }

    async fn ping(&self) -> Result<(), BrokerError> {
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
