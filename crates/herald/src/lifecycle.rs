//! A server role's life, from configuration to exit, and what it logs on the way: the
//! configuration's problems, the shutdown signal, and the exit with its reason. Each role logs
//! `herald started` once it listens ([`crate::roles`]); readiness and the drain are logged by
//! the serving crates. `docs/operations.md` lists every line.
//!
//! Every failure is logged through the installed subscriber (a JSON line when `log.format` is
//! `json`) and the process exits 1; the log configuration itself is read before anything else
//! (`main`).

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::Context;

use crate::config::Config;
use crate::roles;

/// The server roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Standalone,
    Gateway,
    PublisherApi,
    Presence,
}

/// Loads the configuration, runs `role` until SIGTERM or SIGINT, and says why it stopped.
pub fn run(role: Role, file: Option<&Path>) -> ExitCode {
    let started = Instant::now();
    let signal = Arc::new(OnceLock::new());
    let result = Config::load(file)
        .context("invalid configuration")
        .and_then(|config| serve(role, config, shutdown_signal(signal.clone())));
    let uptime_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => {
            let reason = signal.get().copied().unwrap_or("the role ended");
            tracing::info!(reason, uptime_ms, "herald stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), uptime_ms, "herald failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs `role` on a runtime of `runtime.worker_threads` threads until `shutdown` resolves.
fn serve(
    role: Role,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.runtime.worker_threads > 0 {
        runtime.worker_threads(config.runtime.worker_threads);
    }
    let runtime = runtime.enable_all().build().context("cannot start the async runtime")?;
    let role = async move {
        match role {
            Role::Standalone => roles::standalone(config, shutdown).await,
            Role::Gateway => roles::gateway(config, shutdown).await,
            Role::PublisherApi => roles::publisher(config, shutdown).await,
            Role::Presence => roles::presence(config, shutdown).await,
        }
    };
    // The role runs on a worker thread, not on this one: `block_on` polls its future outside
    // the worker pool, so every accepted connection would wake this thread and then, to be
    // spawned, a worker. On a worker, a connection's task starts on the thread that accepted it.
    runtime.block_on(async move {
        match tokio::spawn(role).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow::anyhow!("the role's task was cancelled: {e}")),
        }
    })
}

/// Resolves on SIGINT or SIGTERM, noting which in `received`.
async fn shutdown_signal(received: Arc<OnceLock<&'static str>>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let signal = tokio::select! {
        _ = ctrl_c => "SIGINT",
        _ = term => "SIGTERM",
    };
    let _ = received.set(signal);
    tracing::info!(signal, "shutdown signal received");
}
