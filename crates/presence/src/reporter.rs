//! The gateway side: a [`ConnectionObserver`] that records connection and subscription changes
//! without blocking, and one background task per gateway that reports them to presence.
//!
//! Calls from connection tasks only take a short lock: they update a local mirror of the
//! gateway's state (needed for a full resync) and append the change to a bounded backlog. The
//! task sends one report per `flush_interval` while changes come in, and a heartbeat (lease
//! renewal) every `heartbeat_interval` when nothing changes: one round trip per gateway per
//! interval, however many sockets it holds.
//!
//! When presence (or its Redis) is down the gateway keeps serving. The unacknowledged batch is
//! retried with its number (so presence skips it if it was applied after all) and new changes
//! queue behind it. When the backlog exceeds `max_backlog` changes it is dropped and the
//! gateway sends its full state once presence answers again; so does it when presence says it
//! lost the gateway's state (`resync`).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use herald_protocol::{ChannelName, ErrorCode, Namespaces, UserId};
use herald_protocol::{ConnectionInfo, ConnectionObserver};
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::PresenceConfig;
use crate::model::{Ack, Change, ChannelPresence, ConnId, ConnState, Info, Report, ReportBody};
use crate::store::StoreError;

/// Most changes in one report. A longer backlog (after an outage) goes out in several reports,
/// back to back, so no single store operation grows without bound.
pub const MAX_CHANGES_PER_REPORT: usize = 2000;

/// How a gateway reaches presence: the gRPC client of a remote service, or the service itself
/// in the same process (standalone).
pub trait Transport: Send + Sync + 'static {
    fn report(&self, report: Report) -> BoxFuture<'static, Result<Ack, ReportError>>;
    fn members(&self, channel: &ChannelName) -> BoxFuture<'static, Result<ChannelPresence, ErrorCode>>;
}

/// Why a report was not applied. The reporter keeps the changes and sends them again.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The service in the same process could not reach its store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The remote service refused the report or could not be reached. Shown with the
    /// status's causes: a transport failure's status says only "transport error", its causes
    /// say which (connection refused, a TLS handshake refused for want of a client
    /// certificate).
    #[error("presence answered {}: {}{}", .0.code(), .0.message(), causes(.0))]
    Status(#[source] Box<tonic::Status>),
    /// No answer within the report's timeout (`presence.request_timeout`).
    #[error("timed out")]
    Timeout,
    /// Another transport's failure.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// `": cause: its cause..."` for the errors under `status`, leaving out those already told (a
/// status or a wrapper often repeats its inner error's message).
fn causes(status: &tonic::Status) -> String {
    let mut told = status.message().to_string();
    let start = told.len();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !told.contains(&text) {
            told.push_str(": ");
            told.push_str(&text);
        }
        source = cause.source();
    }
    told.split_off(start)
}

impl From<tonic::Status> for ReportError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(Box::new(status))
    }
}

/// Counters for metrics and tests.
#[derive(Default)]
pub struct ReporterStats {
    /// Reports presence acknowledged.
    pub reports: AtomicU64,
    /// Reports that failed (presence or its store unreachable).
    pub failures: AtomicU64,
    /// Full-state reports sent.
    pub resyncs: AtomicU64,
    /// Backlogs dropped because they were full.
    pub dropped_backlogs: AtomicU64,
}

/// The gateway's presence reporter. Cheap to clone.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: Arc<str>,
    namespaces: Namespaces,
    transport: Arc<dyn Transport>,
    config: PresenceConfig,
    local: Mutex<Local>,
    wake: Notify,
    stats: ReporterStats,
    stop: CancellationToken,
    /// Cancelled when the task has ended.
    done: CancellationToken,
}

#[derive(Default)]
struct Local {
    /// Every open connection, for full resyncs. Entries go when connections close.
    conns: HashMap<ConnId, LocalConn>,
    /// Changes not yet handed to the task, bounded by `max_backlog`.
    pending: Vec<Change>,
    /// The next report must carry the full state; `pending` is not kept meanwhile.
    resync: bool,
}

struct LocalConn {
    user: UserId,
    info: Info,
    channels: BTreeSet<ChannelName>,
}

impl Reporter {
    /// Builds the reporter and starts its task. The gateway id is random per start, so a
    /// restarted gateway never inherits the lease of its previous life.
    pub fn spawn(config: PresenceConfig, namespaces: Namespaces, transport: Arc<dyn Transport>) -> Self {
        let gateway: Arc<str> = format!("gw-{:016x}", rand::random::<u64>()).into();
        let local = Local { resync: true, ..Default::default() };
        let reporter = Self {
            inner: Arc::new(Inner {
                gateway,
                namespaces,
                transport,
                config,
                local: Mutex::new(local),
                wake: Notify::new(),
                stats: ReporterStats::default(),
                stop: CancellationToken::new(),
                done: CancellationToken::new(),
            }),
        };
        tokio::spawn(reporter.clone().run());
        reporter
    }

    pub fn gateway_id(&self) -> &str {
        &self.inner.gateway
    }

    pub fn stats(&self) -> &ReporterStats {
        &self.inner.stats
    }

    /// Stops the task after one last report of what is pending, and waits for it (at most
    /// about `request_timeout`). Call it after the gateway has closed its connections, so
    /// presence learns of their departure at once rather than when the lease runs out.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.done.cancelled().await;
    }

    /// Changes waiting to be reported (for tests and metrics).
    pub fn backlog(&self) -> usize {
        self.inner.local.lock().expect("reporter lock poisoned").pending.len()
    }

    fn tracked(&self, channel: &ChannelName) -> bool {
        matches!(self.inner.namespaces.lookup(channel), Ok(Some(ns)) if ns.presence)
    }

    /// Records a change: never blocks on the network, never grows past `max_backlog`.
    fn record(&self, update: impl FnOnce(&mut Local) -> Option<Change>) {
        let mut local = self.inner.local.lock().expect("reporter lock poisoned");
        if let Some(change) = update(&mut local)
            && !local.resync
        {
            if local.pending.len() >= self.inner.config.max_backlog {
                tracing::warn!(
                    max = self.inner.config.max_backlog,
                    "presence backlog full: dropped, will resync"
                );
                local.pending = Vec::new();
                local.resync = true;
                self.inner.stats.dropped_backlogs.fetch_add(1, Ordering::Relaxed);
            } else {
                local.pending.push(change);
            }
        }
        drop(local);
        self.inner.wake.notify_one();
    }

    /// The next report: the full state, the pending changes, or a heartbeat.
    fn next_report(&self, acked: u64) -> Report {
        let mut local = self.inner.local.lock().expect("reporter lock poisoned");
        let body = if local.resync {
            local.resync = false;
            local.pending = Vec::new();
            let mut conns: Vec<ConnState> = local
                .conns
                .iter()
                .map(|(conn, c)| ConnState {
                    conn: *conn,
                    user: c.user.clone(),
                    info: c.info.clone(),
                    channels: c.channels.iter().cloned().collect(),
                })
                .collect();
            conns.sort_by_key(|c| c.conn);
            if local.conns.capacity() > 64 && local.conns.len() < local.conns.capacity() / 4 {
                let len = local.conns.len();
                local.conns.shrink_to(len * 2);
            }
            ReportBody::Full(conns)
        } else if local.pending.len() > MAX_CHANGES_PER_REPORT {
            let rest = local.pending.split_off(MAX_CHANGES_PER_REPORT);
            ReportBody::Changes(std::mem::replace(&mut local.pending, rest))
        } else {
            ReportBody::Changes(std::mem::take(&mut local.pending))
        };
        let seq = match &body {
            ReportBody::Changes(c) if c.is_empty() => acked,
            _ => acked + 1,
        };
        Report { gateway: self.inner.gateway.clone(), seq, body }
    }

    async fn run(self) {
        let _done = self.inner.done.clone().drop_guard();
        let config = self.inner.config.clone();
        let mut acked = 0;
        let mut inflight: Option<Report> = None;
        let mut failures = 0u32;
        let mut last_sent = Instant::now() - config.heartbeat_interval;
        // More changes are waiting than one report carries: send the next one at once.
        let mut hurry = false;
        loop {
            let stopping = if hurry {
                self.inner.stop.is_cancelled()
            } else if inflight.is_some() {
                let retry =
                    config.flush_interval.saturating_mul(1 << failures.min(8)).min(config.heartbeat_interval);
                sleep_or_stop(last_sent + retry, &self.inner.stop).await
            } else {
                tokio::select! {
                    _ = tokio::time::sleep_until(last_sent + config.heartbeat_interval) => false,
                    _ = self.inner.wake.notified() => {
                        sleep_or_stop(last_sent + config.flush_interval, &self.inner.stop).await
                    }
                    _ = self.inner.stop.cancelled() => true,
                }
            };
            if self.inner.local.lock().expect("reporter lock poisoned").resync {
                inflight = None;
            }
            let report = inflight.take().unwrap_or_else(|| self.next_report(acked));
            last_sent = Instant::now();
            let sent =
                tokio::time::timeout(timeout(&config, &report), self.inner.transport.report(report.clone()));
            match sent.await {
                Ok(Ok(Ack::Applied)) => {
                    acked = report.seq;
                    failures = 0;
                    hurry = self.backlog() > 0
                        && matches!(&report.body, ReportBody::Changes(c) if c.len() == MAX_CHANGES_PER_REPORT);
                    self.inner.stats.reports.fetch_add(1, Ordering::Relaxed);
                    if matches!(report.body, ReportBody::Full(_)) {
                        self.inner.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Ok(Ack::Resync)) => {
                    hurry = false;
                    tracing::info!(gateway = %self.inner.gateway, "presence lost this gateway's state: resync");
                    let mut local = self.inner.local.lock().expect("reporter lock poisoned");
                    local.resync = true;
                    local.pending = Vec::new();
                    drop(local);
                    self.inner.wake.notify_one();
                }
                Ok(Err(e)) => {
                    hurry = false;
                    self.failed(&report, &mut inflight, &mut failures, e)
                }
                Err(_) => {
                    hurry = false;
                    self.failed(&report, &mut inflight, &mut failures, ReportError::Timeout)
                }
            }
            if stopping {
                return;
            }
        }
    }

    fn failed(&self, report: &Report, inflight: &mut Option<Report>, failures: &mut u32, error: ReportError) {
        if *failures == 0 {
            tracing::warn!(%error, "presence report failed; delivery goes on, changes are kept for later");
        }
        *failures += 1;
        self.inner.stats.failures.fetch_add(1, Ordering::Relaxed);
        let heartbeat = matches!(&report.body, ReportBody::Changes(c) if c.is_empty());
        if !heartbeat {
            *inflight = Some(report.clone());
        }
    }
}

/// How long a report may take: `request_timeout`, once more per 2000 connections of a full
/// state (presence applies it in parts, which takes time on a busy gateway).
fn timeout(config: &PresenceConfig, report: &Report) -> std::time::Duration {
    let parts = match &report.body {
        ReportBody::Full(conns) => 1 + conns.len() / 2000,
        ReportBody::Changes(_) => 1,
    };
    config.request_timeout.saturating_mul(u32::try_from(parts).unwrap_or(u32::MAX))
}

/// Sleeps until `at`; `true` when `stop` was cancelled first.
async fn sleep_or_stop(at: Instant, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(at) => false,
        _ = stop.cancelled() => true,
    }
}

impl ConnectionObserver for Reporter {
    fn connected(&self, conn: &ConnectionInfo) {
        let info: Info = conn.info.as_ref().map(|i| Arc::from(i.get()));
        self.record(|local| {
            let record = LocalConn { user: conn.user.clone(), info: info.clone(), channels: BTreeSet::new() };
            local.conns.insert(conn.conn_id, record);
            Some(Change::Connect { conn: conn.conn_id, user: conn.user.clone(), info })
        });
    }

    fn subscribed(&self, conn: &ConnectionInfo, channel: &ChannelName) {
        if !self.tracked(channel) {
            return;
        }
        self.record(|local| {
            let record = local.conns.get_mut(&conn.conn_id)?;
            record.channels.insert(channel.clone()).then(|| Change::Subscribe {
                conn: conn.conn_id,
                user: conn.user.clone(),
                channel: channel.clone(),
            })
        });
    }

    fn unsubscribed(&self, conn: &ConnectionInfo, channel: &ChannelName) {
        if !self.tracked(channel) {
            return;
        }
        self.record(|local| {
            let record = local.conns.get_mut(&conn.conn_id)?;
            record.channels.remove(channel).then(|| Change::Unsubscribe {
                conn: conn.conn_id,
                user: conn.user.clone(),
                channel: channel.clone(),
            })
        });
    }

    fn disconnected(&self, conn: &ConnectionInfo) {
        self.record(|local| {
            local.conns.remove(&conn.conn_id)?;
            Some(Change::Disconnect { conn: conn.conn_id, user: conn.user.clone() })
        });
    }

    fn members(&self, channel: &ChannelName) -> Option<BoxFuture<'static, Result<Box<RawValue>, ErrorCode>>> {
        let timeout = self.inner.config.request_timeout;
        let query = self.inner.transport.members(channel);
        Some(
            async move {
                let presence =
                    tokio::time::timeout(timeout, query).await.map_err(|_| ErrorCode::Unavailable)??;
                Ok(members_json(&presence))
            }
            .boxed(),
        )
    }
}

/// A member list as the JSON array a client's `presence` reply carries:
/// `[{"user":"alice","connections":2,"info":{...}}]`.
pub fn members_json(presence: &ChannelPresence) -> Box<RawValue> {
    #[derive(serde::Serialize)]
    struct Item<'a> {
        user: &'a UserId,
        connections: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<Box<RawValue>>,
    }
    let items: Vec<Item> = presence
        .members
        .iter()
        .map(|m| Item { user: &m.user, connections: m.connections, info: crate::events::raw(&m.info) })
        .collect();
    serde_json::value::to_raw_value(&items).expect("member lists always serialize")
}

/// The standalone transport: the service in the same process.
pub struct LocalTransport(pub crate::PresenceService);

impl Transport for LocalTransport {
    fn report(&self, report: Report) -> BoxFuture<'static, Result<Ack, ReportError>> {
        let service = self.0.clone();
        async move { Ok(service.report(&report).await?) }.boxed()
    }

    fn members(&self, channel: &ChannelName) -> BoxFuture<'static, Result<ChannelPresence, ErrorCode>> {
        let service = self.0.clone();
        let channel = channel.clone();
        async move { service.channel(channel.as_str(), None).await.map_err(|e| e.code()) }.boxed()
    }
}
