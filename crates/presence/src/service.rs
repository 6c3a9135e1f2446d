//! The presence service core, shared by both transports and by in-process gateways: it applies
//! reports to the store, emits the transitions the store returns, sweeps expired gateways, and
//! answers queries with validated input.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use herald_broker::Broker;
use herald_protocol::{ChannelKind, ChannelName, ConfigError, ErrorCode, Namespaces, UserId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::PresenceConfig;
use crate::error::ApiError;
use crate::events;
use crate::metrics::{KindLabels, PresenceMetrics};
use crate::model::{Ack, ChannelPresence, Event, Report, Stats, UserPresence};
use crate::store::{PresenceStore, StoreError};

/// The presence service. Cheap to clone.
#[derive(Clone)]
pub struct PresenceService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn PresenceStore>,
    broker: Arc<dyn Broker>,
    namespaces: Namespaces,
    events_channel: ChannelName,
    config: PresenceConfig,
    /// When this replica started or last saw the store fail. Sweeping waits one `ttl` after
    /// either, so gateways that kept running through an outage renew their leases before
    /// anyone judges them dead.
    calm_since: Mutex<Instant>,
    metrics: PresenceMetrics,
}

impl PresenceService {
    /// `config` should have passed [`PresenceConfig::validate`].
    pub fn new(
        config: PresenceConfig,
        namespaces: Namespaces,
        store: Arc<dyn PresenceStore>,
        broker: Arc<dyn Broker>,
    ) -> Result<Self, ConfigError> {
        config.validate(&namespaces)?;
        let events_channel = config.events_channel()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                broker,
                namespaces,
                events_channel,
                config,
                calm_since: Mutex::new(Instant::now()),
                metrics: PresenceMetrics::default(),
            }),
        })
    }

    pub fn config(&self) -> &PresenceConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<dyn PresenceStore> {
        &self.inner.store
    }

    pub fn metrics(&self) -> &PresenceMetrics {
        &self.inner.metrics
    }

    /// The metrics in Prometheus text format, with the state gauges refreshed from the store.
    pub async fn render_metrics(&self) -> String {
        let metrics = &self.inner.metrics;
        if let Ok(stats) = self.inner.store.stats().await {
            metrics.online_users.set(stats.online_users as i64);
            metrics.connections.set(stats.connections as i64);
        }
        metrics.encode()
    }

    fn store_failed(&self, e: StoreError) -> StoreError {
        *self.inner.calm_since.lock().expect("presence lock poisoned") = Instant::now();
        e
    }

    /// The outcome of a store operation; on a failure the store is noted as failing, and the
    /// transitions of the parts that did apply it are emitted before the error is returned.
    async fn emit_partly<T>(&self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        match outcome {
            Ok(done) => Ok(done),
            Err(StoreError::Partly { events, source }) => {
                self.emit(events).await;
                let e = StoreError::Partly { events: Vec::new(), source };
                Err(self.store_failed(e))
            }
            Err(e) => Err(self.store_failed(e)),
        }
    }

    /// Applies a gateway's report and emits the transitions it caused.
    pub async fn report(&self, report: &Report) -> Result<Ack, StoreError> {
        let applied = self.inner.store.report(report).await;
        self.inner.metrics.reports.get_or_create(&PresenceMetrics::outcome(&applied)).inc();
        let (ack, events) = self.emit_partly(applied).await?;
        self.emit(events).await;
        Ok(ack)
    }

    /// One sweep: expired gateways, and the `offline` and `leave` events that are due. Returns how many events it emitted.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let swept = self.inner.store.sweep().await;
        self.inner.metrics.sweeps.get_or_create(&PresenceMetrics::outcome(&swept)).inc();
        let events = self.emit_partly(swept).await?;
        let n = events.len();
        self.emit(events).await;
        Ok(n)
    }

    /// Sweeps every `sweep_interval` until `shutdown` is cancelled, holding off for one `ttl`
    /// after start-up and after a store failure.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        let config = &self.inner.config;
        let mut tick = tokio::time::interval(config.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let calm_since = *self.inner.calm_since.lock().expect("presence lock poisoned");
            if calm_since.elapsed() < config.ttl {
                continue;
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "presence sweep failed");
            }
        }
    }

    /// Publishes events: join/leave to their channel when its namespace asks for them,
    /// online/offline to the events channel. Publishing is at most once: the transition is
    /// already committed, and a broker failure is logged.
    async fn emit(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut batch: Vec<(ChannelName, Bytes)> = Vec::with_capacity(events.len());
        let mut kinds: Vec<&'static str> = Vec::with_capacity(events.len());
        for event in &events {
            let before = batch.len();
            match event {
                Event::Join { channel, user, info } if self.join_leave(channel) => {
                    batch.push((channel.clone(), events::join(channel, user, info)))
                }
                Event::Leave { channel, user } if self.join_leave(channel) => {
                    batch.push((channel.clone(), events::leave(channel, user)))
                }
                Event::Online { user, info } => {
                    batch.push((self.inner.events_channel.clone(), events::online(user, info)))
                }
                Event::Offline { user } => {
                    batch.push((self.inner.events_channel.clone(), events::offline(user)))
                }
                Event::Join { .. } | Event::Leave { .. } => {}
            }
            if batch.len() > before {
                kinds.push(match event {
                    Event::Join { .. } => "join",
                    Event::Leave { .. } => "leave",
                    Event::Online { .. } => "online",
                    Event::Offline { .. } => "offline",
                });
            }
        }
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.inner.broker.publish_batch(&batch).await {
            self.inner.metrics.events_lost.inc_by(batch.len() as u64);
            tracing::warn!(error = %e, events = batch.len(), "presence events lost: the broker is unavailable");
            return;
        }
        for kind in kinds {
            self.inner.metrics.events.get_or_create(&KindLabels { kind }).inc();
        }
    }

    fn join_leave(&self, channel: &ChannelName) -> bool {
        matches!(self.inner.namespaces.lookup(channel), Ok(Some(ns)) if ns.join_leave)
    }

    /// Where `user` is connected. A user never seen is simply offline.
    pub async fn user(&self, user: &str) -> Result<UserPresence, ApiError> {
        let user = parse_user(user, "user")?;
        let mut found =
            self.inner.store.users(std::slice::from_ref(&user)).await.map_err(|e| self.store_failed(e))?;
        found.pop().ok_or_else(|| ApiError::new(ErrorCode::Internal, "the store returned no answer"))
    }

    /// The same for up to `max_bulk` users, in request order.
    pub async fn users<S: AsRef<str>>(&self, users: &[S]) -> Result<Vec<UserPresence>, ApiError> {
        let max = self.inner.config.max_bulk;
        if users.len() > max {
            return Err(ApiError::new(
                ErrorCode::BatchTooLarge,
                format!("users: {} users asked, at most {max} per request", users.len()),
            ));
        }
        let parsed = users
            .iter()
            .enumerate()
            .map(|(i, u)| parse_user(u.as_ref(), &format!("users[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.inner.store.users(&parsed).await.map_err(|e| self.store_failed(e))?)
    }

    /// The members of a channel whose namespace tracks presence: at most `limit` of them
    /// (capped at `presence.max_members`) listed; `limit = 0` asks for the count alone.
    pub async fn channel(&self, channel: &str, limit: Option<usize>) -> Result<ChannelPresence, ApiError> {
        let channel = ChannelName::parse(channel).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidChannel,
                format!("channel: invalid channel name {channel:?}: {e}"),
            )
        })?;
        self.check_tracked(&channel)?;
        let limit = limit.unwrap_or(usize::MAX).min(self.inner.config.max_members);
        Ok(self.inner.store.channel(&channel, limit).await.map_err(|e| self.store_failed(e))?)
    }

    /// Personal and broadcast channels are not member lists; unknown namespaces and those with
    /// `presence = false` are not tracked.
    pub fn check_tracked(&self, channel: &ChannelName) -> Result<(), ApiError> {
        match self.inner.namespaces.lookup(channel) {
            Ok(Some(ns)) if ns.presence => Ok(()),
            Ok(Some(_)) => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("channel: presence is off for the namespace of {channel}"),
            )),
            Ok(None) => Err(ApiError::new(
                ErrorCode::InvalidChannel,
                match channel.kind() {
                    ChannelKind::Broadcast => {
                        "channel: the broadcast channel is not a member list".to_string()
                    }
                    _ => format!("channel: {channel} is a personal channel, not a member list"),
                },
            )),
            Err(code) => {
                Err(ApiError::new(code, format!("channel: the namespace of {channel} is not configured")))
            }
        }
    }

    pub async fn stats(&self) -> Result<Stats, ApiError> {
        Ok(self.inner.store.stats().await.map_err(|e| self.store_failed(e))?)
    }

    /// Whether the store answers, for readiness.
    pub async fn ping(&self) -> Result<(), ApiError> {
        Ok(self.inner.store.ping().await?)
    }
}

fn parse_user(user: &str, what: &str) -> Result<UserId, ApiError> {
    UserId::parse(user).map_err(|e| {
        ApiError::new(ErrorCode::InvalidChannel, format!("{what}: invalid user id {user:?}: {e}"))
    })
}
