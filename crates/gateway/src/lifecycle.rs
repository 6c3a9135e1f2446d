//! The gateway's lifecycle in the logs, at `info`: when it turns ready, not ready (and why)
//! and ready again, each change once; and its drain: how many connections it started with,
//! how many are left each second, and when it is done. `docs/operations.md` lists the lines.
//!
//! Readiness is watched, not polled: the broker subscriptions' status and the delivery
//! canary's result are both `watch` channels, so a change is logged when it happens and
//! `/readyz` probes log nothing.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::gateway::{Gateway, NotReady};

/// The `service` field of every line, telling the gateway's lines from the other roles' in
/// `herald standalone`.
const SERVICE: &str = "gateway";

/// How often a drain says how many connections it has left.
const DRAIN_PROGRESS: Duration = Duration::from_secs(1);

/// Logs each readiness change of `gateway` until it shuts down. Just after start the gateway
/// is not ready until its broker subscriptions are live and its first canary came back; that
/// is not news, so until it was first ready a `not ready` is logged only once the first
/// canary had time to come back (`gateway.canary_interval` + `gateway.canary_timeout`).
pub(crate) async fn log_readiness(gateway: Gateway) {
    let shared = gateway.shared().clone();
    let mut status = gateway.hub().subscriber().status();
    let mut canary = shared.canary_ok.subscribe();
    let starting = tokio::time::sleep(shared.config.canary_interval + shared.config.canary_timeout);
    tokio::pin!(starting);
    let mut started = false;
    let mut logged: Option<Result<(), NotReady>> = None;
    loop {
        let now = gateway.readiness();
        if now == Err(NotReady::ShuttingDown) {
            // The drain's lines take over.
            return;
        }
        // Ready once, started for good.
        started |= now.is_ok();
        if logged.as_ref() != Some(&now) && started {
            match &now {
                Ok(()) => tracing::info!(service = SERVICE, "ready"),
                Err(reason) => tracing::warn!(service = SERVICE, reason = %reason, "not ready"),
            }
            logged = Some(now);
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            changed = canary.changed() => if changed.is_err() { return },
            () = &mut starting, if !started => started = true,
            () = shared.shutdown.cancelled() => return,
        }
    }
}

/// Logs the drain of `gateway` while `done` (every task of the gateway ending) runs:
/// `drain started` with the open connections, `draining` with those left every second, and
/// `drained`.
pub(crate) async fn log_drain(gateway: &Gateway, done: impl Future<Output = ()>) {
    let started = Instant::now();
    let window = gateway.shared().config.drain_window;
    tracing::info!(
        service = SERVICE,
        connections = gateway.connections(),
        window_ms = window.as_millis() as u64,
        "drain started"
    );
    tokio::pin!(done);
    let mut progress = tokio::time::interval_at(started + DRAIN_PROGRESS, DRAIN_PROGRESS);
    loop {
        tokio::select! {
            () = &mut done => break,
            _ = progress.tick() => tracing::info!(
                service = SERVICE,
                connections = gateway.connections(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "draining"
            ),
        }
    }
    tracing::info!(service = SERVICE, elapsed_ms = started.elapsed().as_millis() as u64, "drained");
}
