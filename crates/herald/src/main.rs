//! `herald`: one binary for every role.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald::{Config, roles, telemetry};

/// jemalloc instead of the system allocator; see the `jemalloc` feature.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(version, about = "Herald: real-time push over WebSocket")]
struct Cli {
    /// TOML configuration file; `HERALD_<SECTION>__<KEY>` variables override it.
    #[arg(long, short, global = true, env = "HERALD_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Gateway, publisher API and presence in one process on the in-memory engines (no Redis).
    Standalone,
    /// The WebSocket gateway, on Redis.
    Gateway,
    /// The publisher API (HTTP and gRPC), on Redis.
    PublisherApi,
    /// The presence service (HTTP and gRPC): who is online, where, in which channel. On Redis.
    Presence,
    /// Prints a connection token for a user, signed with `auth.jwt_secret`.
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        user: String,
        /// How long the token is valid, such as `1h` or `30m`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Drives WebSocket clients against running servers and reports latency, loss, memory, CPU.
    Bench(Box<herald_bench::BenchArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Bench(args) = cli.command {
        return herald_bench::run(*args);
    }
    let config = Config::load(cli.config.as_deref()).context("invalid configuration")?;
    if let Command::Token { user, ttl } = &cli.command {
        config.auth.validate()?;
        println!("{}", herald_gateway::mint(&config.auth.jwt_secret, user, *ttl)?);
        return Ok(());
    }
    telemetry::init(&config.log)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.runtime.worker_threads > 0 {
        runtime.worker_threads(config.runtime.worker_threads);
    }
    let runtime = runtime.enable_all().build()?;
    let role = async move {
        match cli.command {
            Command::Standalone => roles::standalone(config, shutdown_signal()).await,
            Command::Gateway => roles::gateway(config, shutdown_signal()).await,
            Command::PublisherApi => roles::publisher(config, shutdown_signal()).await,
            Command::Presence => roles::presence(config, shutdown_signal()).await,
            Command::Token { .. } | Command::Bench(_) => unreachable!("handled above"),
        }
    };
    // The role runs on a worker thread, not on this one: `block_on` polls its future outside
    // the worker pool, so every accepted connection would wake this thread and then, to be
    // spawned, a worker. On a worker, a connection's task starts on the thread that accepted it.
    let result = runtime.block_on(async move {
        match tokio::spawn(role).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(anyhow::anyhow!("the role's task was cancelled: {e}")),
        }
    });
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "herald stopped");
    }
    result
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
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
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
