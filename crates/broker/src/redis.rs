//! The Redis Pub/Sub engine.
//!
//! Publishing shares one multiplexed connection per process, reconnected on demand; when Redis
//! is unreachable a publish fails at once (or after `response_timeout`), never silently.
//!
//! Each node ([`RedisBroker::subscriber`]) owns exactly one Pub/Sub connection, driven by one
//! task. Subscribing registers interest synchronously and wakes the task, which reconciles the
//! wanted channels against those Redis has confirmed, in batches (one `SUBSCRIBE` for many
//! channels). After a disconnect the task reconnects with jittered exponential backoff and
//! resubscribes everything still wanted; `status` is `false` meanwhile, so readiness shows it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use herald_protocol::ChannelName;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::memory::shrink;
use crate::{Broker, BrokerError, Delivery, Subscriber};

/// Most channels sent in one `SUBSCRIBE`/`UNSUBSCRIBE` command.
const CHANNELS_PER_COMMAND: usize = 512;

/// Settings of the Redis engine (`[redis]` in the configuration file).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prepended to every channel name in Redis, so several deployments can share a server.
    pub prefix: String,
    /// How long to wait for a TCP connection to Redis.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a publish may wait for Redis to answer before it fails.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How long a client's subscribe waits for Redis to confirm before it gets `unavailable`.
    #[serde(with = "humantime_serde")]
    pub subscribe_timeout: Duration,
    /// First delay before reconnecting the Pub/Sub connection; it doubles up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How often the Pub/Sub connection is pinged, so a silently dead Redis is noticed.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "herald:".into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            subscribe_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
        }
    }
}

/// The Redis engine. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: RedisConfig,
    /// The shared publishing connection, `None` until first used or after it broke.
    publisher: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Stops every node task when the broker is closed.
    shutdown: CancellationToken,
}

impl RedisBroker {
    /// Validates the URL; connections are made lazily, so this works while Redis is down.
    pub fn new(config: RedisConfig) -> Result<Self, BrokerError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| BrokerError::Unavailable(format!("invalid redis url: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config,
                publisher: tokio::sync::Mutex::new(None),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    fn key(&self, channel: &ChannelName) -> String {
        format!("{}{}", self.inner.config.prefix, channel.as_str())
    }

    /// The publishing connection, connecting if there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        let mut slot = self.inner.publisher.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.config.connect_timeout))
            .set_response_timeout(Some(self.inner.config.response_timeout));
        let conn = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `cmd` on the publishing connection; a connection that failed is dropped so the
    /// next call reconnects.
    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, BrokerError> {
        let mut conn = self.connection().await?;
        match pipe.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.inner.publisher.lock().await.take();
                }
                Err(unavailable(e))
            }
        }
    }

    /// Stops every node's Pub/Sub task.
    pub fn close(&self) {
        self.inner.shutdown.cancel();
    }
}

fn unavailable(e: redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, channel: &ChannelName, payload: Bytes) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        pipe.publish(self.key(channel), payload.as_ref()).ignore();
        self.run::<()>(&pipe).await
    }

    async fn publish_batch(&self, batch: &[(ChannelName, Bytes)]) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        for (channel, payload) in batch {
            pipe.publish(self.key(channel), payload.as_ref()).ignore();
        }
        self.run::<()>(&pipe).await
    }

    fn subscriber(&self, delivery: Arc<dyn Delivery>) -> Arc<dyn Subscriber> {
        let shared = Arc::new(NodeShared {
            state: Mutex::default(),
            wake: Notify::new(),
            applied: watch::Sender::new(0),
            status: watch::Sender::new(false),
            stop: self.inner.shutdown.child_token(),
            subscribe_timeout: self.inner.config.subscribe_timeout,
        });
        let task = NodeTask {
            client: self.inner.client.clone(),
            config: self.inner.config.clone(),
            shared: shared.clone(),
            delivery,
        };
        tokio::spawn(task.run());
        Arc::new(RedisSubscriber { shared, prefix: self.inner.config.prefix.clone() })
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        self.run::<(String,)>(&pipe).await.map(|_| ())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// State shared between a node's [`RedisSubscriber`] handle and its task.
struct NodeShared {
    state: Mutex<SubState>,
    /// Wakes the task when `dirty` gained channels.
    wake: Notify,
    /// Bumped after every reconciliation pass; subscribers wait on it for their confirmation.
    applied: watch::Sender<u64>,
    /// `true` while connected and resubscribed.
    status: watch::Sender<bool>,
    stop: CancellationToken,
    subscribe_timeout: Duration,
}

#[derive(Default)]
struct SubState {
    /// Channel (with prefix) -> number of outstanding `subscribe` calls.
    wanted: HashMap<String, u32>,
    /// Channels Redis confirmed on the current connection.
    active: HashSet<String>,
    /// Channels whose wanted and active state may differ.
    dirty: HashSet<String>,
}

struct RedisSubscriber {
    shared: Arc<NodeShared>,
    prefix: String,
}

impl Subscriber for RedisSubscriber {
    fn subscribe(&self, channel: &ChannelName) -> BoxFuture<'static, Result<(), BrokerError>> {
        let key = format!("{}{}", self.prefix, channel.as_str());
        let mut applied = self.shared.applied.subscribe();
        {
            let mut state = self.shared.state.lock().expect("subscriber lock poisoned");
            *state.wanted.entry(key.clone()).or_insert(0) += 1;
            if state.active.contains(&key) {
                return futures_util::future::ready(Ok(())).boxed();
            }
            state.dirty.insert(key.clone());
        }
        self.shared.wake.notify_one();
        let shared = self.shared.clone();
        let channel = channel.clone();
        async move {
            let confirmed = async {
                loop {
                    if shared.state.lock().expect("subscriber lock poisoned").active.contains(&key) {
                        return;
                    }
                    if applied.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::time::timeout(shared.subscribe_timeout, confirmed)
                .await
                .map_err(|_| BrokerError::SubscribeTimeout(channel))
        }
        .boxed()
    }

    fn unsubscribe(&self, channel: &ChannelName) {
        let key = format!("{}{}", self.prefix, channel.as_str());
        {
            let mut state = self.shared.state.lock().expect("subscriber lock poisoned");
            let Some(count) = state.wanted.get_mut(&key) else { return };
            *count -= 1;
            if *count > 0 {
                return;
            }
            state.wanted.remove(&key);
            shrink(&mut state.wanted);
            state.dirty.insert(key);
        }
        self.shared.wake.notify_one();
    }

    fn status(&self) -> watch::Receiver<bool> {
        self.shared.status.subscribe()
    }

    fn active_channels(&self) -> usize {
        self.shared.state.lock().expect("subscriber lock poisoned").active.len()
    }

    fn close(&self) {
        self.shared.stop.cancel();
    }
}

/// The task that owns a node's Pub/Sub connection.
struct NodeTask {
    client: redis::Client,
    config: RedisConfig,
    shared: Arc<NodeShared>,
    delivery: Arc<dyn Delivery>,
}

impl NodeTask {
    async fn run(self) {
        let mut attempt: u32 = 0;
        loop {
            match self.connect_and_serve(&mut attempt).await {
                Ok(()) => break,
                Err(e) => {
                    self.shared.status.send_replace(false);
                    let delay = backoff(attempt, self.config.reconnect_min, self.config.reconnect_max);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(error = %e, retry_in = ?delay, "redis pubsub connection lost");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shared.stop.cancelled() => break,
                    }
                }
            }
        }
        self.shared.status.send_replace(false);
    }

    /// Connects, resubscribes everything wanted, then serves until the connection breaks
    /// (`Err`) or the node is stopped (`Ok`).
    async fn connect_and_serve(&self, attempt: &mut u32) -> Result<(), redis::RedisError> {
        let pubsub = tokio::select! {
            r = tokio::time::timeout(self.config.connect_timeout, self.client.get_async_pubsub()) => match r {
                Ok(r) => r?,
                Err(_) => return Err(timeout_error("connect")),
            },
            _ = self.shared.stop.cancelled() => return Ok(()),
        };
        let (mut sink, mut stream) = pubsub.split();
        {
            let mut state = self.shared.state.lock().expect("subscriber lock poisoned");
            state.active.clear();
            let wanted: Vec<String> = state.wanted.keys().cloned().collect();
            state.dirty.extend(wanted);
        }
        self.reconcile(&mut sink).await?;
        *attempt = 0;
        self.shared.status.send_replace(true);
        tracing::info!(url = %redact(&self.config.url), "redis pubsub connected");
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let prefix_len = self.config.prefix.len();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return Err(closed_error()) };
                    let name = msg.get_channel_name();
                    if let Some(channel) = name.get(prefix_len..) {
                        self.delivery.deliver(channel, Bytes::copy_from_slice(msg.get_payload_bytes()));
                    }
                }
                _ = self.shared.wake.notified() => self.reconcile(&mut sink).await?,
                _ = ping.tick() => {
                    match tokio::time::timeout(self.config.response_timeout, sink.ping::<redis::Value>()).await {
                        Ok(r) => { r?; }
                        Err(_) => return Err(timeout_error("ping")),
                    }
                }
                _ = self.shared.stop.cancelled() => return Ok(()),
            }
        }
    }

    /// Brings Redis in line with the wanted channels, for every channel marked dirty.
    async fn reconcile(&self, sink: &mut redis::aio::PubSubSink) -> Result<(), redis::RedisError> {
        loop {
            let (to_subscribe, to_unsubscribe) = {
                let mut state = self.shared.state.lock().expect("subscriber lock poisoned");
                if state.dirty.is_empty() {
                    break;
                }
                let dirty: Vec<String> = state.dirty.drain().collect();
                shrink_set(&mut state.dirty);
                let mut sub = Vec::new();
                let mut unsub = Vec::new();
                for key in dirty {
                    match (state.wanted.contains_key(&key), state.active.contains(&key)) {
                        (true, false) => sub.push(key),
                        (false, true) => unsub.push(key),
                        _ => {}
                    }
                }
                (sub, unsub)
            };
            for chunk in to_unsubscribe.chunks(CHANNELS_PER_COMMAND) {
                self.command(sink.unsubscribe(chunk)).await?;
                let mut state = self.shared.state.lock().expect("subscriber lock poisoned");
                for key in chunk {
                    state.active.remove(key);
                }
                shrink_set(&mut state.active);
            }
            for chunk in to_subscribe.chunks(CHANNELS_PER_COMMAND) {
                self.command(sink.subscribe(chunk)).await?;
                let mut state = self.shared.state.lock().expect("subscriber lock poisoned");
                for key in chunk {
                    state.active.insert(key.clone());
                }
            }
            self.shared.applied.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    async fn command(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<()>>,
    ) -> redis::RedisResult<()> {
        tokio::time::timeout(self.config.response_timeout, f)
            .await
            .map_err(|_| timeout_error("subscribe"))?
    }
}

fn shrink_set(set: &mut HashSet<String>) {
    if set.capacity() > 64 && set.len() < set.capacity() / 4 {
        set.shrink_to(set.len() * 2);
    }
}

/// Exponential backoff with jitter: a delay drawn from the upper half of `min * 2^attempt`,
/// capped at `max`, so many gateways reconnecting at once spread out.
fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = base / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

fn timeout_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("redis {what} timed out")))
}

fn closed_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "redis pubsub connection closed"))
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
