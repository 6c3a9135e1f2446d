//! The result of a run: one JSON document, and a human summary of it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::args::{Scenario, SubscribeWith, Target, Via};
use crate::flood::FloodReport;
use crate::procstat::Sample;
use crate::stats::Percentiles;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: Scenario,
    pub target: Target,
    /// `http` or `grpc` for Herald; nchan is always HTTP.
    pub publish_via: Via,
    /// How Herald connections subscribed their channel (in the URL or with a frame).
    pub subscribe_with: SubscribeWith,
    /// Whether Herald connections subscribed to their personal channel themselves.
    #[serde(default)]
    pub subscribe_personal: bool,
    /// Whether Herald connections subscribed with a pattern (`--pattern`).
    #[serde(default)]
    pub pattern: bool,
    /// Seconds since the Unix epoch when the run started.
    pub started_at: u64,
    pub payload_bytes: usize,
    pub workers: usize,
    pub connections: Connections,
    pub messages: Messages,
    pub deliveries: Deliveries,
    /// Message latency, from just before the publish request to the client's read.
    pub latency: Percentiles,
    pub servers: Vec<ServerReport>,
    /// All sampled servers together.
    pub server_total: ServerTotal,
    /// CPU time of the bench itself and its workers while connecting, seconds.
    pub client_cpu_s_connect: f64,
    /// CPU time of the bench itself and its workers while publishing, seconds.
    pub client_cpu_s_publish: f64,
    pub errors: BTreeMap<String, u64>,
    /// The abusive connections of `--flood`, when there were any. Not part of the figures
    /// above, which are the measured clients' alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodReport>,
    /// What `--resume` connections did after theirs ended, when it was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumes: Option<Resumes>,
}

/// Reconnects with `since` (`--resume`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resumes {
    /// Connections that ended and were connected again.
    pub reconnects: u64,
    /// Reconnects the server could not recover (`recovered: false`): their clients would
    /// reload their state. Whatever they missed shows as loss.
    pub recovery_failed: u64,
    /// From a connection's end to its `connected` again; the missed messages follow that
    /// frame at once.
    pub latency: Percentiles,
    /// From the first connection's end to the last one's `connected` again: how long until
    /// every connection was live.
    pub all_back_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Connections {
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    /// Closed by the server or broken before the end of the run.
    pub closed_early: u64,
    /// From the first connection attempt until every one was attempted.
    pub connect_seconds: f64,
    /// Connections set up per second (TCP, WebSocket handshake with token check, greeting and
    /// subscription), with `connect_concurrency` at once per worker.
    pub connect_rate: f64,
    /// Over every round of `--reconnect-rounds`.
    pub setup_latency: Percentiles,
    /// `--reconnect-rounds` above 1: each round, the first included (whose figures are also
    /// the ones above). Every connection of a round was closed before the next began, and
    /// connected again with the URL and token it had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<ConnectRound>,
}

/// One round of connecting (`--reconnect-rounds`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectRound {
    pub connected: u64,
    pub failed: u64,
    /// From the round's first set-up's start to its last one's end.
    pub connect_seconds: f64,
    pub connect_rate: f64,
}

impl ConnectRound {
    pub fn of(connected: u64, failed: u64, connect_seconds: f64) -> Self {
        let connect_rate = connected as f64 / connect_seconds.max(1e-9);
        Self { connected, failed, connect_seconds, connect_rate }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Messages {
    pub requested: u64,
    pub offered_rate: f64,
    pub attempted: u64,
    pub published: u64,
    pub failed: u64,
    pub publish_seconds: f64,
    pub achieved_rate: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Deliveries {
    /// Successful publishes times the connections listening to their streams.
    pub expected: u64,
    /// Distinct messages received.
    pub delivered: u64,
    pub lost: u64,
    pub connections_with_loss: u64,
    pub duplicates: u64,
    /// Messages that arrived after a later one of their stream. Concurrent publish requests
    /// may themselves reach the server out of order, so this is an upper bound.
    pub reordered: u64,
    /// Deliveries per second, from the first publish until the last delivery was awaited.
    pub rate: f64,
}

/// One server process (with its children), sampled at the run's phases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerReport {
    pub pid: u32,
    pub name: String,
    pub before: Sample,
    /// Right after every connection was set up.
    pub connected: Sample,
    /// At the end of the hold (`idle`) or of the drain.
    pub end: Sample,
    pub peak_rss_kib: u64,
    /// CPU seconds from just before the first publish to the end of the drain: this server's
    /// share of `server_total.cpu_s_publish` (each Redis shard's, on a cluster).
    #[serde(default)]
    pub cpu_s_publish: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerTotal {
    /// RSS growth from before connecting to the measuring point (end of hold for `idle`,
    /// all connected otherwise), KiB.
    pub rss_growth_kib: i64,
    pub kib_per_connection: f64,
    pub peak_rss_kib: u64,
    pub cpu_s_connect: f64,
    pub cpu_s_publish: f64,
    pub cpu_s_per_million_deliveries: f64,
}

impl Report {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let c = &self.connections;
        let _ = writeln!(
            s,
            "herald bench {:?} against {:?}: {} of {} connected ({} failed, {} closed early) in {:.1} s, {:.0}/s",
            self.scenario,
            self.target,
            c.connected,
            c.requested,
            c.failed,
            c.closed_early,
            c.connect_seconds,
            c.connect_rate
        );
        for (i, r) in c.rounds.iter().enumerate() {
            let _ = writeln!(
                s,
                "  round {}: {} connected ({} failed) in {:.2} s, {:.0}/s",
                i + 1,
                r.connected,
                r.failed,
                r.connect_seconds,
                r.connect_rate
            );
        }
        let l = &c.setup_latency;
        let _ =
            writeln!(s, "  setup latency ms: p50 {:.1}  p99 {:.1}  max {:.1}", l.p50_ms, l.p99_ms, l.max_ms);
        if self.scenario.publishes() {
            let m = &self.messages;
            let _ = writeln!(
                s,
                "  published {} of {} ({} failed) in {:.1} s: {:.0}/s offered, {:.0}/s achieved",
                m.published, m.requested, m.failed, m.publish_seconds, m.offered_rate, m.achieved_rate
            );
            let d = &self.deliveries;
            let _ = writeln!(
                s,
                "  delivered {} of {} expected: lost {} (on {} connections), {} duplicates, {} reordered; {:.0} deliveries/s",
                d.delivered, d.expected, d.lost, d.connections_with_loss, d.duplicates, d.reordered, d.rate
            );
            let l = &self.latency;
            let _ = writeln!(
                s,
                "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}, n {})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.count
            );
        }
        for srv in &self.servers {
            let _ = writeln!(
                s,
                "  server {} ({}): RSS {} -> {} -> {} KiB (peak {}), CPU {:.2} s ({:.2} s publishing)",
                srv.pid,
                srv.name,
                srv.before.rss_kib,
                srv.connected.rss_kib,
                srv.end.rss_kib,
                srv.peak_rss_kib,
                srv.end.cpu_s - srv.before.cpu_s,
                srv.cpu_s_publish
            );
        }
        if !self.servers.is_empty() {
            let t = &self.server_total;
            let _ = writeln!(
                s,
                "  servers: {:.2} KiB/connection, CPU {:.2} s connecting, {:.2} s publishing = {:.2} s per million deliveries",
                t.kib_per_connection, t.cpu_s_connect, t.cpu_s_publish, t.cpu_s_per_million_deliveries
            );
        }
        let _ = writeln!(
            s,
            "  client CPU: {:.2} s connecting, {:.2} s publishing",
            self.client_cpu_s_connect, self.client_cpu_s_publish
        );
        for (error, n) in &self.errors {
            let _ = writeln!(s, "  error x{n}: {error}");
        }
        if let Some(r) = &self.resumes {
            let _ = writeln!(
                s,
                "resumed: {} reconnects ({} not recovered), every connection back {:.2} s after the first \
                 ended; reconnect p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                r.reconnects,
                r.recovery_failed,
                r.all_back_seconds,
                r.latency.p50_ms,
                r.latency.p99_ms,
                r.latency.max_ms,
            );
        }
        if let Some(flood) = &self.flood {
            flood.human(&mut s);
        }
        s
    }
}
