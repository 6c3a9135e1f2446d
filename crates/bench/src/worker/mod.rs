//! A worker: opens a share of the connections, reports progress, and at the end judges what
//! each connection received against what was published.
//!
//! A worker runs inside the coordinating process or as a process of its own (the same binary,
//! `herald bench worker`), because one process may open only so many sockets. A worker process
//! reads its [`WorkerSpec`] and then [`Command`]s as JSON lines on stdin and writes [`Event`]s
//! as JSON lines on stdout; when stdin closes it stops.

mod client;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::plan::{Plan, WorkerSpec};
use crate::stats::{self, Seen};

/// How often a worker reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Distinct error texts kept; further kinds are counted under "other errors".
const MAX_ERROR_KINDS: usize = 20;

/// From the coordinator to a worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// The connect phase is over: connections still being set up give up, so none joins
    /// after the first message was published (it would count messages as lost).
    EndConnect,
    /// `--reconnect-rounds`: close every connection of this round.
    CloseAll,
    /// `--reconnect-rounds`: once every connection is closed, the next round: connect them
    /// all again, counting and timing this round's set-ups afresh.
    NextRound,
    /// Stop: `published[s]` messages of stream `s` were published successfully.
    Stop { published: Vec<u64> },
}

/// From a worker to the coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Progress(Counts),
    /// Every connection was attempted (and connected or failed).
    Ready(Counts),
    Report(WorkerReport),
}

/// Running totals of one worker.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counts {
    pub connected: u64,
    pub failed: u64,
    /// Connections the server closed (or that broke) before the end.
    pub closed: u64,
    /// Messages received, duplicates included.
    pub received: u64,
    pub unique: u64,
    /// When the last connection set-up ended (connected or failed), microseconds since the
    /// Unix epoch; 0 before any did. The connect phase is timed by this, not by the progress
    /// events, which come only every [`PROGRESS_EVERY`].
    #[serde(default)]
    pub setup_done_us: u64,
    /// When the first connection set-up began, microseconds since the Unix epoch; 0 before
    /// any did. Tokens are minted and worker processes started before it.
    #[serde(default)]
    pub setup_start_us: u64,
    /// Connections open now (connected and not yet ended); with `--reconnect-rounds` the
    /// coordinator waits for this to fall to 0 before the next round.
    #[serde(default)]
    pub open: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.connected += o.connected;
        self.failed += o.failed;
        self.closed += o.closed;
        self.received += o.received;
        self.unique += o.unique;
        self.open += o.open;
        self.setup_done_us = self.setup_done_us.max(o.setup_done_us);
        self.setup_start_us = match (self.setup_start_us, o.setup_start_us) {
            (0, t) | (t, 0) => t,
            (a, b) => a.min(b),
        };
    }
}

/// What a worker measured, sent once at the end.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub counts: Counts,
    pub duplicates: u64,
    pub reordered: u64,
    /// Messages published successfully that a connected client did not receive.
    pub lost: u64,
    pub conns_with_loss: u64,
    /// Frames that carried no bench payload (greetings, pongs).
    pub other_frames: u64,
    /// Message latency, microseconds, as histogram buckets.
    pub latency: Vec<(u64, u64)>,
    /// Time to connect, be greeted and subscribed, microseconds.
    pub connect_latency: Vec<(u64, u64)>,
    pub errors: BTreeMap<String, u64>,
    /// `--resume`: connections that reconnected after their connection ended.
    #[serde(default)]
    pub reconnects: u64,
    /// `--resume`: reconnects whose `since` the server could not recover.
    #[serde(default)]
    pub recovery_failed: u64,
    /// `--resume`: from a connection's end to its `connected` again, microseconds.
    #[serde(default)]
    pub reconnect_latency: Vec<(u64, u64)>,
    /// `--resume`: when the first connection ended and the last one was back, microseconds
    /// since the Unix epoch (0: none).
    #[serde(default)]
    pub first_down_us: u64,
    #[serde(default)]
    pub last_up_us: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub closed: AtomicU64,
    pub received: AtomicU64,
    pub unique: AtomicU64,
    pub open: AtomicU64,
    pub other_frames: AtomicU64,
    setup_done_us: AtomicU64,
    setup_start_us: AtomicU64,
    duplicates: AtomicU64,
    reordered: AtomicU64,
    lost: AtomicU64,
    conns_with_loss: AtomicU64,
    reconnects: AtomicU64,
    pub recovery_failed: AtomicU64,
    first_down_us: AtomicU64,
    last_up_us: AtomicU64,
}

/// State shared by a worker's connection tasks.
pub(crate) struct Shared {
    pub plan: Plan,
    pub counters: Counters,
    pub stop: CancellationToken,
    /// The signals of each round of connecting (one unless `--reconnect-rounds`).
    pub rounds: Vec<Round>,
    latency: Mutex<Histogram<u64>>,
    connect_latency: Mutex<Histogram<u64>>,
    reconnect_latency: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Set just before `stop` is cancelled.
    published: OnceLock<Vec<u64>>,
}

impl Shared {
    fn new(plan: Plan) -> Self {
        let rounds: Vec<Round> = (0..plan.rounds.max(1)).map(|_| Round::default()).collect();
        rounds[0].open.cancel();
        Self {
            plan,
            counters: Counters::default(),
            stop: CancellationToken::new(),
            rounds,
            latency: Mutex::new(stats::histogram()),
            connect_latency: Mutex::new(stats::histogram()),
            reconnect_latency: Mutex::new(stats::histogram()),
            errors: Mutex::default(),
            published: OnceLock::new(),
        }
    }

    pub fn record_latency(&self, micros: u64) {
        self.latency.lock().expect("histogram lock").saturating_record(micros.max(1));
    }

    /// Records that a connection set-up began.
    pub fn setup_started(&self) {
        let now = crate::payload::now_micros();
        let _ = self
            .counters
            .setup_start_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| (t == 0 || now < t).then_some(now));
    }

    /// Records that a connection set-up ended, connected or not.
    pub fn setup_done(&self) {
        self.counters.setup_done_us.fetch_max(crate::payload::now_micros(), Ordering::Relaxed);
    }

    pub fn record_connect(&self, took: Duration) {
        self.setup_done();
        self.counters.connected.fetch_add(1, Ordering::Relaxed);
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        self.connect_latency
            .lock()
            .expect("histogram lock")
            .saturating_record((took.as_micros() as u64).max(1));
    }

    /// A connection that was counted open has ended.
    pub fn record_end(&self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A new round of connecting: its set-ups are counted and timed from zero. Called while
    /// every connection waits for the round's `open` signal.
    fn start_round(&self) {
        let c = &self.counters;
        for counter in [&c.connected, &c.failed, &c.setup_done_us, &c.setup_start_us] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// `--resume`: a connection ended and starts reconnecting.
    pub fn record_down(&self) {
        let now = crate::payload::now_micros();
        let _ = self
            .counters
            .first_down_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| (t == 0 || now < t).then_some(now));
    }

    /// `--resume`: a connection is back (greeted), `took` after it ended.
    pub fn record_up(&self, took: Duration) {
        self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        self.counters.last_up_us.fetch_max(crate::payload::now_micros(), Ordering::Relaxed);
        self.reconnect_latency
            .lock()
            .expect("histogram lock")
            .saturating_record((took.as_micros() as u64).max(1));
    }

    pub fn error(&self, text: String) {
        let mut errors = self.errors.lock().expect("errors lock");
        let key = if errors.len() < MAX_ERROR_KINDS || errors.contains_key(&text) {
            text
        } else {
            "other errors".into()
        };
        *errors.entry(key).or_default() += 1;
    }

    /// Judges one connection once the run is over.
    pub fn finish(&self, stream: u64, seen: &Seen) {
        let c = &self.counters;
        c.duplicates.fetch_add(seen.duplicates, Ordering::Relaxed);
        c.reordered.fetch_add(seen.reordered, Ordering::Relaxed);
        let expected = self.published.get().and_then(|p| p.get(stream as usize)).copied().unwrap_or(0);
        let lost = expected.saturating_sub(seen.unique);
        if lost > 0 {
            c.lost.fetch_add(lost, Ordering::Relaxed);
            c.conns_with_loss.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counts(&self) -> Counts {
        let c = &self.counters;
        Counts {
            connected: c.connected.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            closed: c.closed.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            unique: c.unique.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            setup_done_us: c.setup_done_us.load(Ordering::Relaxed),
            setup_start_us: c.setup_start_us.load(Ordering::Relaxed),
        }
    }

    fn report(&self) -> WorkerReport {
        let c = &self.counters;
        WorkerReport {
            counts: self.counts(),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            reordered: c.reordered.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            conns_with_loss: c.conns_with_loss.load(Ordering::Relaxed),
            other_frames: c.other_frames.load(Ordering::Relaxed),
            latency: stats::to_buckets(&self.latency.lock().expect("histogram lock")),
            connect_latency: stats::to_buckets(&self.connect_latency.lock().expect("histogram lock")),
            errors: self.errors.lock().expect("errors lock").clone(),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            recovery_failed: c.recovery_failed.load(Ordering::Relaxed),
            reconnect_latency: stats::to_buckets(&self.reconnect_latency.lock().expect("histogram lock")),
            first_down_us: c.first_down_us.load(Ordering::Relaxed),
            last_up_us: c.last_up_us.load(Ordering::Relaxed),
        }
    }
}

/// The signals of one round of connecting.
#[derive(Default)]
pub(crate) struct Round {
    /// The round may connect (cancelled at once for the first).
    pub open: CancellationToken,
    /// The round's connect phase is over: set-ups still under way give up.
    pub end_connect: CancellationToken,
    /// Every connection of the round closes (all but the last round).
    pub close: CancellationToken,
}

/// Runs one worker's connections until [`Command::Stop`] (or until its commands end or its
/// `max_runtime` passes), then sends its [`Event::Report`].
pub async fn run(spec: WorkerSpec, mut commands: mpsc::Receiver<Command>, events: mpsc::Sender<Event>) {
    let deadline = tokio::time::Instant::now() + spec.plan.max_runtime;
    let shared = Arc::new(Shared::new(spec.plan));
    let gate = Arc::new(Semaphore::new(shared.plan.connect_concurrency));
    // Every URL, token included, before the first connection starts: a backend mints a
    // client's token before the client connects, and the connect phase times the server.
    let conns = spec.first..spec.first + spec.count;
    let urls: Vec<String> = conns.clone().map(|conn| shared.plan.url(conn)).collect();
    let mut tasks = JoinSet::new();
    for (conn, url) in conns.zip(urls) {
        tasks.spawn(client::run(shared.clone(), conn, url, gate.clone()));
    }
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let mut ready = false;
    let mut round = 0;
    let published = loop {
        tokio::select! {
            _ = tick.tick() => {
                let counts = shared.counts();
                let done = counts.connected + counts.failed >= spec.count;
                let event = if done && !ready { Event::Ready(counts) } else { Event::Progress(counts) };
                ready |= done;
                if events.send(event).await.is_err() {
                    break Vec::new();
                }
            }
            cmd = commands.recv() => match cmd {
                Some(Command::EndConnect) => shared.rounds[round].end_connect.cancel(),
                Some(Command::CloseAll) => shared.rounds[round].close.cancel(),
                Some(Command::NextRound) => {
                    if round + 1 < shared.rounds.len() {
                        round += 1;
                        shared.start_round();
                        ready = false;
                        shared.rounds[round].open.cancel();
                    }
                }
                Some(Command::Stop { published }) => break published,
                None => break Vec::new(),
            },
            _ = tokio::time::sleep_until(deadline) => break Vec::new(),
        }
    };
    let _ = shared.published.set(published);
    shared.stop.cancel();
    let _ =
        tokio::time::timeout(Duration::from_secs(30), async { while tasks.join_next().await.is_some() {} })
            .await;
    let _ = events.send(Event::Report(shared.report())).await;
}

/// `herald bench worker`: a worker process. Reads its spec and commands from stdin, writes
/// events to stdout.
pub fn run_process() -> anyhow::Result<()> {
    // One thread per worker process: there are several of them, and cross-thread wake-ups cost
    // more than they bring when every core is already busy.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let spec: WorkerSpec = match lines.next_line().await? {
            Some(line) => serde_json::from_str(&line)?,
            None => anyhow::bail!("no worker spec on stdin"),
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let (ev_tx, mut ev_rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Command>(&line) {
                    Ok(cmd) => {
                        if cmd_tx.send(cmd).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("herald bench worker: bad command: {e}"),
                }
            }
        });
        let worker = tokio::spawn(run(spec, cmd_rx, ev_tx));
        let mut stdout = tokio::io::stdout();
        while let Some(event) = ev_rx.recv().await {
            let mut line = serde_json::to_vec(&event)?;
            line.push(b'\n');
            stdout.write_all(&line).await?;
            stdout.flush().await?;
        }
        worker.await?;
        Ok(())
    })
}
