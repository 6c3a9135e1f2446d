//! Starting the workers: in this process when the connections fit in one, otherwise as worker
//! processes running this same binary (`<exe> bench worker`), spoken to in JSON lines over
//! stdin and stdout. Either way the coordinator holds a [`WorkerLink`] to send commands, and
//! every worker's events arrive on one channel, tagged with the worker's index.

use std::process::Stdio;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::args::BenchArgs;
use crate::plan::{Plan, WorkerSpec};
use crate::worker::{self, Command, Event};

/// A worker, in this process or in a child process.
pub(crate) struct WorkerLink {
    pub(crate) commands: mpsc::Sender<Command>,
    /// The worker process; `None` for a worker in this process.
    pub(crate) child: Option<tokio::process::Child>,
}

/// Splits the connections over workers: in this process when they fit in one, otherwise over
/// worker processes running this same binary (`<exe> bench worker`).
pub(crate) async fn start_workers(
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
            links.push(spawn_in_process(spec, index, cmd_rx, cmd_tx, events));
        } else {
            links.push(spawn_process(spec, index, cmd_rx, cmd_tx, events).await?);
        }
    }
    Ok(links)
}

/// A worker task in this process, its events forwarded to the coordinator's channel.
fn spawn_in_process(
    spec: WorkerSpec,
    index: usize,
    cmd_rx: mpsc::Receiver<Command>,
    cmd_tx: mpsc::Sender<Command>,
    events: mpsc::Sender<(usize, Event)>,
) -> WorkerLink {
    let (ev_tx, mut ev_rx) = mpsc::channel(64);
    tokio::spawn(worker::run(spec, cmd_rx, ev_tx));
    tokio::spawn(async move {
        while let Some(event) = ev_rx.recv().await {
            if events.send((index, event)).await.is_err() {
                break;
            }
        }
    });
    WorkerLink { commands: cmd_tx, child: None }
}

/// A worker process: sends it its share of the plan, then forwards commands to its stdin and
/// its stdout's events to the coordinator's channel.
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
