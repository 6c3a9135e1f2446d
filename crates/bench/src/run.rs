//! The coordinator: plans the run, starts the workers, walks through the phases (connect,
//! hold or publish, drain), samples the servers at each phase, and builds the [`Report`].

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::args::{BenchArgs, Scenario};
use crate::plan::{Plan, WorkerSpec};
use crate::procstat::{self, Sample};
use crate::publish::{self, Publisher};
use crate::report::{Connections, Deliveries, Messages, Report, ServerReport, ServerTotal};
use crate::stats::{self, Percentiles};
use crate::worker::{self, Command, Counts, Event, WorkerReport};

/// How often servers are sampled for their peak memory.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How long workers get to send their reports after `Stop`.
const REPORT_TIMEOUT: Duration = Duration::from_secs(45);
/// Pause between the last connection and the first publish, so the servers settle.
const SETTLE: Duration = Duration::from_secs(1);

/// A worker, in this process or in a child process.
struct WorkerLink {
    commands: mpsc::Sender<Command>,
    child: Option<tokio::process::Child>,
}

/// Runs one benchmark and returns what it measured. This is `herald bench` minus printing.
pub async fn execute(args: BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.scenario != Scenario::Worker, "`worker` is internal");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(!args.urls.is_empty(), "at least one --url is needed");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let messages = if args.scenario.publishes() {
        args.messages.unwrap_or((args.rate * args.duration.as_secs_f64()).round() as u64)
    } else {
        0
    };
    let busy = if args.scenario.publishes() {
        Duration::from_secs_f64(messages as f64 / args.rate) + args.drain_timeout
    } else {
        args.duration
    };
    let max_runtime = args.connect_timeout + busy + Duration::from_secs(60);
    let plan = Plan::new(&args, max_runtime);
    let started_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());

    let pids = args.pids.clone();
    let peak = Arc::new(Mutex::new(vec![0u64; pids.len()]));
    let sampler = tokio::spawn(sample_peaks(pids.clone(), peak.clone()));
    let before = procstat::sample(&pids);

    let client_at_start = client_cpu_s();
    let bar = progress_bar(&args);
    bar.set_message("connecting");
    let (events_tx, mut events) = mpsc::channel::<(usize, Event)>(256);
    // Taken before the workers start, so no connection starts before it. The connect phase
    // is timed from the first set-up the workers began, after they minted their tokens.
    let t0 = Instant::now();
    let t0_us = crate::payload::now_micros();
    let mut links = start_workers(&args, &plan, events_tx).await?;
    let n = links.len();
    let mut counts = vec![Counts::default(); n];
    let mut ready = vec![false; n];
    let mut reports: Vec<Option<WorkerReport>> = (0..n).map(|_| None).collect();
    let mut notes = BTreeMap::new();

    // Connect.
    let connect_deadline = t0 + args.connect_timeout;
    while !ready.iter().all(|r| *r) {
        let Ok(Some((i, event))) = tokio::time::timeout_at(connect_deadline, events.recv()).await else {
            notes.insert(format!("connect phase not finished within {:?}", args.connect_timeout), 1);
            break;
        };
        apply(i, event, &mut counts, &mut ready, &mut reports);
        let total = sum(&counts);
        bar.set_position(total.connected + total.failed);
        bar.set_message(format!("connecting ({} failed)", total.failed));
    }
    // From the first set-up's start to the last one's end, as the workers timed them; the
    // progress events that end the loop above come only every few hundred milliseconds.
    let elapsed = t0.elapsed().as_secs_f64();
    let Counts { setup_start_us, setup_done_us, .. } = sum(&counts);
    let start_us = setup_start_us.max(t0_us);
    let connect_seconds = if setup_done_us > start_us {
        (setup_done_us.saturating_sub(start_us) as f64 / 1e6).min(elapsed)
    } else {
        elapsed
    };
    if !ready.iter().all(|r| *r) {
        // Give up on connections still being set up, and wait until every worker says so.
        for link in &links {
            let _ = link.commands.send(Command::EndConnect).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.iter().all(|r| *r) {
            let Ok(Some((i, event))) = tokio::time::timeout_at(deadline, events.recv()).await else { break };
            apply(i, event, &mut counts, &mut ready, &mut reports);
        }
    }
    let connected_sample = procstat::sample(&pids);
    let client_cpu_connect = client_cpu_s() - client_at_start;
    let connected_counts = sum(&counts);

    // Hold, or publish and drain.
    let mut outcome = publish::Outcome::default();
    let (mut pub_before, mut client_cpu) = (connected_sample.clone(), 0.0);
    let mut last_delivery = Instant::now();
    let mut publish_start = Instant::now();
    if args.scenario.publishes() {
        wait_events(&mut events, Instant::now() + SETTLE, &mut counts, &mut ready, &mut reports).await;
        let publisher =
            Publisher::new(args.target, args.publish, &args.publish_url, &args.api_key, args.in_flight)
                .await
                .context("cannot reach the publisher")?;
        pub_before = procstat::sample(&pids);
        let client_before = client_cpu_s();
        let expected_max: u64 =
            plan.listeners_per_stream().iter().sum::<u64>() * messages / plan.streams().max(1);
        bar.set_length(expected_max.max(1));
        bar.set_position(0);
        bar.set_message("publishing");
        let progress = Arc::new(publish::Progress::default());
        let plan2 = plan.clone();
        let (rate, payload, in_flight) = (args.rate, args.payload, args.in_flight);
        publish_start = Instant::now();
        let mut job = tokio::spawn({
            let progress = progress.clone();
            async move { publish::run(publisher, &plan2, messages, rate, payload, in_flight, progress).await }
        });
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut last_unique = 0;
        outcome = loop {
            tokio::select! {
                done = &mut job => break done.context("publisher task failed")?,
                Some((i, event)) = events.recv() => apply(i, event, &mut counts, &mut ready, &mut reports),
                _ = tick.tick() => {}
            }
            let unique = sum(&counts).unique;
            if unique > last_unique {
                (last_unique, last_delivery) = (unique, Instant::now());
            }
            bar.set_position(unique);
        };
        let listeners = plan.listeners_per_stream();
        let expected: u64 = outcome.published.iter().zip(&listeners).map(|(p, l)| p * l).sum();
        bar.set_length(expected.max(1));
        bar.set_message("draining");
        let drain_deadline = Instant::now() + args.drain_timeout;
        while sum(&counts).unique < expected && Instant::now() < drain_deadline {
            let until = (Instant::now() + Duration::from_millis(200)).min(drain_deadline);
            wait_events(&mut events, until, &mut counts, &mut ready, &mut reports).await;
            let unique = sum(&counts).unique;
            if unique > last_unique {
                (last_unique, last_delivery) = (unique, Instant::now());
            }
            bar.set_position(unique);
        }
        client_cpu = client_cpu_s() - client_before;
    } else {
        bar.set_message("holding");
        bar.set_length(args.duration.as_millis() as u64);
        let hold_start = Instant::now();
        let hold_end = hold_start + args.duration;
        while Instant::now() < hold_end {
            let until = (Instant::now() + Duration::from_millis(200)).min(hold_end);
            wait_events(&mut events, until, &mut counts, &mut ready, &mut reports).await;
            bar.set_position(hold_start.elapsed().as_millis() as u64);
        }
    }
    let end_sample = procstat::sample(&pids);

    // Stop and collect.
    bar.set_message("collecting reports");
    for link in &links {
        let _ = link.commands.send(Command::Stop { published: outcome.published.clone() }).await;
    }
    let report_deadline = Instant::now() + REPORT_TIMEOUT;
    while reports.iter().any(Option::is_none) {
        match tokio::time::timeout_at(report_deadline, events.recv()).await {
            Ok(Some((i, event))) => apply(i, event, &mut counts, &mut ready, &mut reports),
            _ => {
                notes.insert("a worker sent no report".to_string(), 1);
                break;
            }
        }
    }
    for link in &mut links {
        if let Some(child) = &mut link.child
            && tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err()
        {
            let _ = child.kill().await;
        }
    }
    sampler.abort();
    bar.finish_and_clear();

    let peaks = peak.lock().expect("peak lock").clone();
    let servers: Vec<ServerReport> = pids
        .iter()
        .enumerate()
        .map(|(k, &pid)| ServerReport {
            pid,
            name: procstat::name(pid),
            before: before[k],
            connected: connected_sample[k],
            end: end_sample[k],
            peak_rss_kib: peaks[k].max(end_sample[k].rss_kib),
        })
        .collect();

    let mut latency = stats::histogram();
    let mut setup_latency = stats::histogram();
    let mut total = WorkerReport::default();
    for r in reports.iter().flatten() {
        stats::add_buckets(&mut latency, &r.latency);
        stats::add_buckets(&mut setup_latency, &r.connect_latency);
        merge(&mut total, r);
    }
    for (k, v) in std::mem::take(&mut total.errors)
        .into_iter()
        .chain(notes)
        .chain(outcome.errors.iter().map(|(k, v)| (format!("publish: {k}"), *v)))
    {
        *total.errors.entry(k).or_default() += v;
    }
    let delivered = total.counts.unique;
    let published: u64 = outcome.published.iter().sum();
    let deliver_seconds = last_delivery.saturating_duration_since(publish_start).as_secs_f64();
    let measured_conns = connected_counts.connected.max(1) as f64;
    let rss = |s: &[Sample]| s.iter().map(|x| x.rss_kib as i64).sum::<i64>();
    let cpu = |s: &[Sample]| s.iter().map(|x| x.cpu_s).sum::<f64>();
    let rss_at = if args.scenario.publishes() { &connected_sample } else { &end_sample };
    let rss_growth_kib = rss(rss_at) - rss(&before);
    let cpu_s_publish = if args.scenario.publishes() { cpu(&end_sample) - cpu(&pub_before) } else { 0.0 };
    Ok(Report {
        scenario: args.scenario,
        target: args.target,
        publish_via: args.publish,
        subscribe_with: args.subscribe_with,
        subscribe_personal: args.subscribe_personal,
        started_at,
        payload_bytes: args.payload,
        workers: links.iter().filter(|l| l.child.is_some()).count(),
        connections: Connections {
            requested: args.connections,
            connected: connected_counts.connected,
            failed: total.counts.failed.max(connected_counts.failed),
            closed_early: total.counts.closed,
            connect_seconds,
            connect_rate: connected_counts.connected as f64 / connect_seconds.max(1e-9),
            setup_latency: Percentiles::of(&setup_latency),
        },
        messages: Messages {
            requested: messages,
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
            cpu_s_connect: cpu(&connected_sample) - cpu(&before),
            cpu_s_publish,
            cpu_s_per_million_deliveries: if delivered > 0 {
                cpu_s_publish / (delivered as f64 / 1e6)
            } else {
                0.0
            },
        },
        servers,
        client_cpu_s_connect: client_cpu_connect,
        client_cpu_s_publish: client_cpu,
        errors: total.errors,
    })
}

fn apply(
    i: usize,
    event: Event,
    counts: &mut [Counts],
    ready: &mut [bool],
    reports: &mut [Option<WorkerReport>],
) {
    match event {
        Event::Progress(c) => counts[i] = c,
        Event::Ready(c) => (counts[i], ready[i]) = (c, true),
        Event::Report(r) => {
            (counts[i], ready[i]) = (r.counts, true);
            reports[i] = Some(r);
        }
    }
}

/// Applies events until `until`.
async fn wait_events(
    events: &mut mpsc::Receiver<(usize, Event)>,
    until: Instant,
    counts: &mut [Counts],
    ready: &mut [bool],
    reports: &mut [Option<WorkerReport>],
) {
    while let Ok(Some((i, event))) = tokio::time::timeout_at(until, events.recv()).await {
        apply(i, event, counts, ready, reports);
    }
}

fn sum(counts: &[Counts]) -> Counts {
    let mut total = Counts::default();
    for c in counts {
        total += *c;
    }
    total
}

fn merge(total: &mut WorkerReport, r: &WorkerReport) {
    total.counts += r.counts;
    total.duplicates += r.duplicates;
    total.reordered += r.reordered;
    total.lost += r.lost;
    total.conns_with_loss += r.conns_with_loss;
    total.other_frames += r.other_frames;
    for (k, v) in &r.errors {
        *total.errors.entry(k.clone()).or_default() += v;
    }
}

/// CPU seconds of this process and its worker processes.
fn client_cpu_s() -> f64 {
    procstat::sample(&[std::process::id()])[0].cpu_s
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

/// Splits the connections over workers: in this process when they fit in one, otherwise over
/// worker processes running this same binary (`<exe> bench worker`).
async fn start_workers(
    args: &BenchArgs,
    plan: &Plan,
    events: mpsc::Sender<(usize, Event)>,
) -> anyhow::Result<Vec<WorkerLink>> {
    let per_worker = args.per_worker.max(1);
    let processes = args.workers.unwrap_or(if args.connections <= per_worker {
        0
    } else {
        args.connections.div_ceil(per_worker) as usize
    });
    let shares = processes.max(1) as u64;
    let mut links = Vec::new();
    for i in 0..shares {
        let first = args.connections * i / shares;
        let count = args.connections * (i + 1) / shares - first;
        let spec = WorkerSpec { plan: plan.clone(), first, count };
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let events = events.clone();
        let index = i as usize;
        if processes == 0 {
            let (ev_tx, mut ev_rx) = mpsc::channel(64);
            tokio::spawn(worker::run(spec, cmd_rx, ev_tx));
            tokio::spawn(async move {
                while let Some(event) = ev_rx.recv().await {
                    if events.send((index, event)).await.is_err() {
                        break;
                    }
                }
            });
            links.push(WorkerLink { commands: cmd_tx, child: None });
        } else {
            links.push(spawn_process(spec, index, cmd_rx, cmd_tx, events).await?);
        }
    }
    Ok(links)
}

async fn spawn_process(
    spec: WorkerSpec,
    index: usize,
    mut cmd_rx: mpsc::Receiver<Command>,
    cmd_tx: mpsc::Sender<Command>,
    events: mpsc::Sender<(usize, Event)>,
) -> anyhow::Result<WorkerLink> {
    let exe = std::env::current_exe().context("cannot find this executable to start workers")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["bench", "worker"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a worker process")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = serde_json::to_vec(&spec)?;
    line.push(b'\n');
    stdin.write_all(&line).await?;
    tokio::spawn(async move {
        while let Some(cmd) = cmd_rx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&cmd) else { break };
            line.push(b'\n');
            if stdin.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => {
                    if events.send((index, event)).await.is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("herald bench: worker {index} sent a bad line: {e}"),
            }
        }
    });
    Ok(WorkerLink { commands: cmd_tx, child: Some(child) })
}
