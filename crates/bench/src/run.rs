//! The coordinator: plans the run, starts the workers ([`crate::launch`]), walks through the
//! phases (connect; hold, or publish and drain; stop and collect), samples the servers at each
//! phase, and hands what it measured to [`crate::assemble`] for the [`Report`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::args::{BenchArgs, Scenario};
use crate::assemble::{self, Connected, Measured, Published, ServerSamples};
use crate::flood::Flood;
use crate::launch::{self, WorkerLink};
use crate::plan::Plan;
use crate::procstat;
use crate::publish::{self, Publisher};
use crate::report::{ConnectRound, Report};
use crate::tally::Tally;
use crate::worker::{Command, Counts, Event};

/// How often servers are sampled for their peak memory.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How long workers get to send their reports after `Stop`.
const REPORT_TIMEOUT: Duration = Duration::from_secs(45);
/// Pause between the last connection and the first publish, so the servers settle.
const SETTLE: Duration = Duration::from_secs(1);
/// How long closing every connection between rounds of `--reconnect-rounds` may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the progress bar moves while publishing, draining or holding.
const TICK: Duration = Duration::from_millis(200);

/// Runs one benchmark and returns what it measured. This is `herald bench` minus printing.
pub async fn execute(args: BenchArgs) -> anyhow::Result<Report> {
    check(&args)?;
    let messages = messages_to_publish(&args);
    let token_key = match (&args.token_key, &args.token_alg) {
        (Some(path), Some(alg)) => Some(crate::token::TokenKey::load(path, alg, args.token_kid.clone())?),
        _ => None,
    };
    let plan = Plan::new(&args, max_runtime(&args, messages), token_key);
    let started_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());

    let pids = args.pids.clone();
    let peaks = PeakSampler::start(pids.clone());
    let before = procstat::sample(&pids);
    let client_at_start = client_cpu_s();
    let bar = progress_bar(&args);
    bar.set_message("connecting");
    let (events_tx, events) = mpsc::channel::<(usize, Event)>(256);
    // Taken before the workers start, so no connection starts before it. The connect phase
    // is timed from the first set-up the workers began, after they minted their tokens.
    let t0 = Instant::now();
    let t0_us = crate::payload::now_micros();
    let mut links = launch::start_workers(&args, &plan, events_tx).await?;
    let mut tally = Tally::new(events, links.len());
    let mut notes = BTreeMap::new();

    let seconds = connect(&args, &links, &mut tally, &bar, (t0, t0_us), &mut notes).await;
    let counts = tally.total();
    let mut rounds = vec![ConnectRound::of(counts.connected, counts.failed, seconds)];
    for _ in 1..args.reconnect_rounds {
        rounds.push(connect_again(&args, &links, &mut tally, &bar, &mut notes).await);
    }
    let connected_sample = procstat::sample(&pids);
    let connected = Connected {
        counts,
        seconds,
        client_cpu_s: client_cpu_s() - client_at_start,
        rounds: if rounds.len() > 1 { rounds } else { Vec::new() },
    };

    // The flood starts once the measured clients are connected, so it disturbs what is
    // measured after (delivery), not the connect phase, and ends with the drain or the hold.
    let flood = Flood::start(&args, &plan)?;
    let published = if args.scenario.publishes() {
        Some(publish_and_drain(&args, &plan, messages, &mut tally, &bar).await?)
    } else {
        hold(&args, &mut tally, &bar).await;
        None
    };
    let flood = match flood {
        Some(flood) => Some(flood.stop().await),
        None => None,
    };
    let end_sample = procstat::sample(&pids);

    let stream_totals = published.as_ref().map(|p| p.outcome.published.clone()).unwrap_or_default();
    stop_and_collect(&mut links, &mut tally, stream_totals, &bar, &mut notes).await;
    let peaks = peaks.stop();
    bar.finish_and_clear();

    let measured = Measured {
        started_at,
        messages,
        worker_processes: links.iter().filter(|l| l.child.is_some()).count(),
        connected,
        published,
        servers: ServerSamples { pids, before, connected: connected_sample, end: end_sample, peaks },
        reports: tally.into_reports(),
        notes,
        flood,
    };
    Ok(assemble::report(&args, measured))
}

/// Refuses arguments no run can be made of.
fn check(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.scenario != Scenario::Worker, "`worker` is internal");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(!args.urls.is_empty(), "at least one --url is needed");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(
        args.flood == 0 || args.target == crate::args::Target::Herald,
        "--flood speaks Herald's protocol: only with --target herald"
    );
    anyhow::ensure!(args.flood == 0 || !args.flood_kind.is_empty(), "--flood needs a --flood-kind");
    anyhow::ensure!(
        !args.resume
            || (args.target == crate::args::Target::Herald
                && args.subscribe_with == crate::args::SubscribeWith::Url),
        "--resume recovers with `since` in the connect URL: only with --target herald and --subscribe-with url"
    );
    anyhow::ensure!(
        args.batch <= 1
            || (args.target == crate::args::Target::Herald
                && args.publish == crate::args::Via::Http
                && matches!(args.scenario, Scenario::Fanout | Scenario::Rooms)),
        "--batch publishes to channels with POST /v1/publish/batch: only with --target herald, \
         --publish http and `fanout` or `rooms`"
    );
    anyhow::ensure!(args.reconnect_rounds >= 1, "--reconnect-rounds must be at least 1");
    anyhow::ensure!(
        args.reconnect_rounds == 1 || (args.scenario == Scenario::Idle && !args.resume && args.flood == 0),
        "--reconnect-rounds measures connecting: only with `idle`, without --resume and --flood"
    );
    Ok(())
}

/// `--messages`, or as many as `--rate` offers in `--duration`; 0 when nothing is published.
fn messages_to_publish(args: &BenchArgs) -> u64 {
    if args.scenario.publishes() {
        args.messages.unwrap_or((args.rate * args.duration.as_secs_f64()).round() as u64)
    } else {
        0
    }
}

/// The longest the run may take, after which the workers give up on their own.
fn max_runtime(args: &BenchArgs, messages: u64) -> Duration {
    let busy = if args.scenario.publishes() {
        Duration::from_secs_f64(messages as f64 / args.rate) + args.drain_timeout
    } else {
        args.duration
    };
    args.connect_timeout + busy + Duration::from_secs(60)
}

/// The connect phase: waits until every worker has set up its connections, or until
/// `--connect-timeout`, then tells the workers to give up on the rest. Returns the phase's
/// length in seconds, from the first set-up's start to the last one's end.
async fn connect(
    args: &BenchArgs,
    links: &[WorkerLink],
    tally: &mut Tally,
    bar: &ProgressBar,
    (t0, t0_us): (Instant, u64),
    notes: &mut BTreeMap<String, u64>,
) -> f64 {
    let connect_deadline = t0 + args.connect_timeout;
    while !tally.all_ready() {
        if !tally.next_until(connect_deadline).await {
            notes.insert(format!("connect phase not finished within {:?}", args.connect_timeout), 1);
            break;
        }
        let total = tally.total();
        bar.set_position(total.connected + total.failed);
        bar.set_message(format!("connecting ({} failed)", total.failed));
    }
    // From the first set-up's start to the last one's end, as the workers timed them; the
    // progress events that end the loop above come only every few hundred milliseconds.
    let elapsed = t0.elapsed().as_secs_f64();
    let Counts { setup_start_us, setup_done_us, .. } = tally.total();
    let start_us = setup_start_us.max(t0_us);
    let connect_seconds = if setup_done_us > start_us {
        (setup_done_us.saturating_sub(start_us) as f64 / 1e6).min(elapsed)
    } else {
        elapsed
    };
    if !tally.all_ready() {
        // Give up on connections still being set up, and wait until every worker says so.
        for link in links {
            let _ = link.commands.send(Command::EndConnect).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tally.all_ready() {
            if !tally.next_until(deadline).await {
                break;
            }
        }
    }
    connect_seconds
}

/// `--reconnect-rounds`: closes every connection, waits until all are closed, then connects
/// them again (same URLs, same tokens) and times that round like the first.
async fn connect_again(
    args: &BenchArgs,
    links: &[WorkerLink],
    tally: &mut Tally,
    bar: &ProgressBar,
    notes: &mut BTreeMap<String, u64>,
) -> ConnectRound {
    bar.set_message("closing");
    for link in links {
        let _ = link.commands.send(Command::CloseAll).await;
    }
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    while tally.total().open > 0 {
        if !tally.next_until(deadline).await {
            notes.insert(format!("connections not closed within {CLOSE_TIMEOUT:?} between rounds"), 1);
            break;
        }
    }
    tally.restart_connect();
    bar.set_position(0);
    bar.set_message("connecting again");
    let (t0, t0_us) = (Instant::now(), crate::payload::now_micros());
    for link in links {
        let _ = link.commands.send(Command::NextRound).await;
    }
    let seconds = connect(args, links, tally, bar, (t0, t0_us), notes).await;
    let counts = tally.total();
    ConnectRound::of(counts.connected, counts.failed, seconds)
}

/// The publish phase, then the drain: publishes `messages` at `--rate`, then waits up to
/// `--drain-timeout` for every published message to reach every listener.
async fn publish_and_drain(
    args: &BenchArgs,
    plan: &Plan,
    messages: u64,
    tally: &mut Tally,
    bar: &ProgressBar,
) -> anyhow::Result<Published> {
    tally.wait_until(Instant::now() + SETTLE).await;
    let publisher =
        Publisher::new(args.target, args.publish, &args.publish_url, &args.api_key, args.in_flight)
            .await
            .context("cannot reach the publisher")?;
    let servers_before = procstat::sample(&args.pids);
    let client_before = client_cpu_s();
    let expected_max: u64 =
        plan.listeners_per_stream().iter().sum::<u64>() * messages / plan.streams().max(1);
    bar.set_length(expected_max.max(1));
    bar.set_position(0);
    bar.set_message("publishing");
    let progress = Arc::new(publish::Progress::default());
    let plan2 = plan.clone();
    let pace = publish::Pace {
        messages,
        rate: args.rate,
        payload_size: args.payload,
        in_flight: args.in_flight,
        batch: args.batch.max(1),
    };
    let publish_start = Instant::now();
    let mut job = tokio::spawn({
        let progress = progress.clone();
        async move { publish::run(publisher, &plan2, pace, progress).await }
    });
    let kill = args.kill_pid.map(|pid| {
        let after = args.kill_after;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // The fault a storm measures: the process dies without closing its sockets.
            let killed = tokio::process::Command::new("kill").args(["-9", &pid.to_string()]).status().await;
            if !killed.is_ok_and(|s| s.success()) {
                eprintln!("herald bench: could not kill process {pid}");
            }
        })
    });
    let mut tick = tokio::time::interval(TICK);
    let mut deliveries = DeliveryClock::default();
    let outcome = loop {
        tokio::select! {
            done = &mut job => break done.context("publisher task failed")?,
            true = tally.next() => {}
            _ = tick.tick() => {}
        }
        bar.set_position(deliveries.observe(tally));
    };
    if let Some(kill) = kill {
        kill.abort();
    }
    let listeners = plan.listeners_per_stream();
    let expected: u64 = outcome.published.iter().zip(&listeners).map(|(p, l)| p * l).sum();
    bar.set_length(expected.max(1));
    bar.set_message("draining");
    let drain_deadline = Instant::now() + args.drain_timeout;
    while tally.total().unique < expected && Instant::now() < drain_deadline {
        let until = (Instant::now() + TICK).min(drain_deadline);
        tally.wait_until(until).await;
        bar.set_position(deliveries.observe(tally));
    }
    let client_cpu_s = client_cpu_s() - client_before;
    let last_delivery = deliveries.last.unwrap_or(publish_start);
    Ok(Published {
        outcome,
        servers_before,
        client_cpu_s,
        deliver_seconds: last_delivery.saturating_duration_since(publish_start).as_secs_f64(),
    })
}

/// When the count of distinct deliveries last grew: the end of the delivery window.
#[derive(Default)]
struct DeliveryClock {
    unique: u64,
    last: Option<Instant>,
}

impl DeliveryClock {
    /// Notes the current count of distinct deliveries and returns it.
    fn observe(&mut self, tally: &Tally) -> u64 {
        let unique = tally.total().unique;
        if unique > self.unique {
            (self.unique, self.last) = (unique, Some(Instant::now()));
        }
        unique
    }
}

/// The hold phase: keeps the connections open for `--duration`, applying the workers' events.
async fn hold(args: &BenchArgs, tally: &mut Tally, bar: &ProgressBar) {
    bar.set_message("holding");
    bar.set_length(args.duration.as_millis() as u64);
    let hold_start = Instant::now();
    let hold_end = hold_start + args.duration;
    while Instant::now() < hold_end {
        let until = (Instant::now() + TICK).min(hold_end);
        tally.wait_until(until).await;
        bar.set_position(hold_start.elapsed().as_millis() as u64);
    }
}

/// Tells every worker to stop (with what was published per stream, to count losses), waits for
/// their reports, then for the worker processes to exit.
async fn stop_and_collect(
    links: &mut [WorkerLink],
    tally: &mut Tally,
    published: Vec<u64>,
    bar: &ProgressBar,
    notes: &mut BTreeMap<String, u64>,
) {
    bar.set_message("collecting reports");
    for link in links.iter() {
        let _ = link.commands.send(Command::Stop { published: published.clone() }).await;
    }
    let report_deadline = Instant::now() + REPORT_TIMEOUT;
    while !tally.all_reported() {
        if !tally.next_until(report_deadline).await {
            notes.insert("a worker sent no report".to_string(), 1);
            break;
        }
    }
    for link in links.iter_mut() {
        if let Some(child) = &mut link.child
            && tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// CPU seconds of this process and its worker processes.
fn client_cpu_s() -> f64 {
    procstat::sample(&[std::process::id()])[0].cpu_s
}

/// Samples the servers' resident memory every [`SAMPLE_EVERY`] in the background, keeping
/// the highest seen per PID: the phase samples alone would miss a peak between them.
struct PeakSampler {
    peak: Arc<Mutex<Vec<u64>>>,
    task: JoinHandle<()>,
}

impl PeakSampler {
    fn start(pids: Vec<u32>) -> Self {
        let peak = Arc::new(Mutex::new(vec![0u64; pids.len()]));
        let task = tokio::spawn(sample_peaks(pids, peak.clone()));
        PeakSampler { peak, task }
    }

    /// Stops sampling and returns the peaks, KiB, in `--pid` order.
    fn stop(self) -> Vec<u64> {
        self.task.abort();
        self.peak.lock().expect("peak lock").clone()
    }
}

async fn sample_peaks(pids: Vec<u32>, peak: Arc<Mutex<Vec<u64>>>) {
    if pids.is_empty() {
        return;
    }
    // Bounded by the coordinator, which aborts this task at the end of the run.
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let samples = tokio::task::spawn_blocking({
            let pids = pids.clone();
            move || procstat::sample(&pids)
        })
        .await
        .unwrap_or_default();
        let mut peak = peak.lock().expect("peak lock");
        for (p, s) in peak.iter_mut().zip(samples) {
            *p = (*p).max(s.rss_kib);
        }
    }
}

fn progress_bar(args: &BenchArgs) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(args.connections), ProgressDrawTarget::stderr());
    if args.no_progress {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg:24} [{bar:30}] {pos}/{len}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
