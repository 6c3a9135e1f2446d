//! Turning what the coordinator measured into a [`Report`]: the workers' reports and
//! histograms summed, the servers' samples differenced, and the rates derived from them.

use std::collections::BTreeMap;

use crate::args::BenchArgs;
use crate::flood::FloodReport;
use crate::procstat::{self, Sample};
use crate::publish;
use crate::report::{
    ConnectRound, Connections, Deliveries, Messages, Report, Resumes, ServerReport, ServerTotal,
};
use crate::stats::{self, Percentiles};
use crate::worker::{Counts, WorkerReport};

/// Everything one run measured, phase by phase.
pub(crate) struct Measured {
    /// Seconds since the Unix epoch when the run began.
    pub started_at: u64,
    /// Messages the run set out to publish (0 when the scenario only holds connections).
    pub messages: u64,
    /// Worker processes started (0 when every connection ran in this process).
    pub worker_processes: usize,
    pub connected: Connected,
    /// `None` when the scenario only holds connections.
    pub published: Option<Published>,
    pub servers: ServerSamples,
    /// The final reports of the workers that sent one.
    pub reports: Vec<WorkerReport>,
    /// The coordinator's own notes (a phase that ran out of time), counted with the errors.
    pub notes: BTreeMap<String, u64>,
    /// What the `--flood` connections did, when there were any.
    pub flood: Option<FloodReport>,
}

/// The end of the connect phase.
pub(crate) struct Connected {
    /// The workers' counts, summed, when the connect phase ended.
    pub counts: Counts,
    /// From the first set-up's start to the last one's end.
    pub seconds: f64,
    /// CPU seconds this process and its workers spent connecting (every round).
    pub client_cpu_s: f64,
    /// `--reconnect-rounds` above 1: each round of connecting, the first included.
    pub rounds: Vec<ConnectRound>,
}

/// What the publish and drain phases measured.
pub(crate) struct Published {
    pub outcome: publish::Outcome,
    /// The servers just before the first publish.
    pub servers_before: Vec<Sample>,
    /// CPU seconds this process and its workers spent publishing and draining.
    pub client_cpu_s: f64,
    /// From the first publish to the last new delivery.
    pub deliver_seconds: f64,
}

/// The servers at each point of the run, one entry per PID, in `--pid` order.
pub(crate) struct ServerSamples {
    pub pids: Vec<u32>,
    pub before: Vec<Sample>,
    pub connected: Vec<Sample>,
    pub end: Vec<Sample>,
    /// The highest resident memory the sampler saw, KiB.
    pub peaks: Vec<u64>,
}

impl ServerSamples {
    /// One report per server; `publish_start` holds the samples taken just before the first
    /// publish, when there was a publish phase.
    fn reports(&self, publish_start: Option<&[Sample]>) -> Vec<ServerReport> {
        self.pids
            .iter()
            .enumerate()
            .map(|(k, &pid)| ServerReport {
                pid,
                name: procstat::name(pid),
                before: self.before[k],
                connected: self.connected[k],
                end: self.end[k],
                peak_rss_kib: self.peaks[k].max(self.end[k].rss_kib),
                cpu_s_publish: publish_start.map_or(0.0, |start| self.end[k].cpu_s - start[k].cpu_s),
            })
            .collect()
    }
}

/// Builds the report of one run.
pub(crate) fn report(args: &BenchArgs, m: Measured) -> Report {
    let servers = m.servers.reports(m.published.as_ref().map(|p| p.servers_before.as_slice()));
    let mut latency = stats::histogram();
    let mut setup_latency = stats::histogram();
    let mut reconnect_latency = stats::histogram();
    let mut total = WorkerReport::default();
    for r in &m.reports {
        stats::add_buckets(&mut latency, &r.latency);
        stats::add_buckets(&mut setup_latency, &r.connect_latency);
        stats::add_buckets(&mut reconnect_latency, &r.reconnect_latency);
        merge(&mut total, r);
    }
    let no_publish = publish::Outcome::default();
    let outcome = m.published.as_ref().map_or(&no_publish, |p| &p.outcome);
    for (k, v) in std::mem::take(&mut total.errors)
        .into_iter()
        .chain(m.notes)
        .chain(outcome.errors.iter().map(|(k, v)| (format!("publish: {k}"), *v)))
    {
        *total.errors.entry(k).or_default() += v;
    }
    let delivered = total.counts.unique;
    let published: u64 = outcome.published.iter().sum();
    let deliver_seconds = m.published.as_ref().map_or(0.0, |p| p.deliver_seconds);
    let connected = &m.connected.counts;
    let measured_conns = connected.connected.max(1) as f64;
    let rss = |s: &[Sample]| s.iter().map(|x| x.rss_kib as i64).sum::<i64>();
    let cpu = |s: &[Sample]| s.iter().map(|x| x.cpu_s).sum::<f64>();
    let samples = &m.servers;
    let rss_at = if args.scenario.publishes() { &samples.connected } else { &samples.end };
    let rss_growth_kib = rss(rss_at) - rss(&samples.before);
    let cpu_s_publish = m.published.as_ref().map_or(0.0, |p| cpu(&samples.end) - cpu(&p.servers_before));
    let connect_seconds = m.connected.seconds;
    Report {
        scenario: args.scenario,
        target: args.target,
        publish_via: args.publish,
        subscribe_with: args.subscribe_with,
        subscribe_personal: args.subscribe_personal,
        pattern: args.pattern,
        started_at: m.started_at,
        payload_bytes: args.payload,
        workers: m.worker_processes,
        connections: Connections {
            requested: args.connections,
            connected: connected.connected,
            failed: total.counts.failed.max(connected.failed),
            closed_early: total.counts.closed,
            connect_seconds,
            connect_rate: connected.connected as f64 / connect_seconds.max(1e-9),
            setup_latency: Percentiles::of(&setup_latency),
            rounds: m.connected.rounds,
        },
        messages: Messages {
            requested: m.messages,
            offered_rate: if args.scenario.publishes() { args.rate } else { 0.0 },
            attempted: outcome.attempted,
            published,
            failed: outcome.attempted - published,
            publish_seconds: outcome.elapsed.as_secs_f64(),
            achieved_rate: published as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
        },
        deliveries: Deliveries {
            expected: delivered + total.lost,
            delivered,
            lost: total.lost,
            connections_with_loss: total.conns_with_loss,
            duplicates: total.duplicates,
            reordered: total.reordered,
            rate: if deliver_seconds > 0.0 { delivered as f64 / deliver_seconds } else { 0.0 },
        },
        latency: Percentiles::of(&latency),
        server_total: ServerTotal {
            rss_growth_kib,
            kib_per_connection: rss_growth_kib as f64 / measured_conns,
            peak_rss_kib: servers.iter().map(|s| s.peak_rss_kib).sum(),
            cpu_s_connect: cpu(&samples.connected) - cpu(&samples.before),
            cpu_s_publish,
            cpu_s_per_million_deliveries: if delivered > 0 {
                cpu_s_publish / (delivered as f64 / 1e6)
            } else {
                0.0
            },
        },
        servers,
        client_cpu_s_connect: m.connected.client_cpu_s,
        client_cpu_s_publish: m.published.as_ref().map_or(0.0, |p| p.client_cpu_s),
        resumes: args.resume.then(|| Resumes {
            reconnects: total.reconnects,
            recovery_failed: total.recovery_failed,
            latency: Percentiles::of(&reconnect_latency),
            all_back_seconds: if total.first_down_us > 0 && total.last_up_us > total.first_down_us {
                (total.last_up_us - total.first_down_us) as f64 / 1e6
            } else {
                0.0
            },
        }),
        errors: total.errors,
        flood: m.flood,
    }
}

/// Adds one worker's report to the total.
fn merge(total: &mut WorkerReport, r: &WorkerReport) {
    total.counts += r.counts;
    total.duplicates += r.duplicates;
    total.reordered += r.reordered;
    total.lost += r.lost;
    total.conns_with_loss += r.conns_with_loss;
    total.other_frames += r.other_frames;
    total.reconnects += r.reconnects;
    total.recovery_failed += r.recovery_failed;
    total.first_down_us = match (total.first_down_us, r.first_down_us) {
        (0, t) | (t, 0) => t,
        (a, b) => a.min(b),
    };
    total.last_up_us = total.last_up_us.max(r.last_up_us);
    for (k, v) in &r.errors {
        *total.errors.entry(k.clone()).or_default() += v;
    }
}
