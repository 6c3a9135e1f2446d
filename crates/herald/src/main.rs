//! `herald`: one binary for every role.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald::config::LogConfig;
use herald::lifecycle::{self, Role};
use herald::{Config, telemetry};

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
    /// Prints a connection token for a user, signed with `auth.jwt_secret`, or with a private
    /// key (`--key`, `--alg`).
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        user: String,
        /// How long the token is valid, such as `1h` or `30m`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// A PKCS#8 PEM private key to sign with instead of `auth.jwt_secret`.
        #[arg(long, requires = "alg")]
        key: Option<std::path::PathBuf>,
        /// The algorithm of `--key`: RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA.
        #[arg(long, requires = "key")]
        alg: Option<String>,
        /// The `kid` the token's header names.
        #[arg(long, requires = "key")]
        kid: Option<String>,
    },
    /// Drives WebSocket clients against running servers and reports latency, loss, memory, CPU.
    Bench(Box<herald_bench::BenchArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = cli.config.as_deref();
    let role = match cli.command {
        Command::Standalone => Role::Standalone,
        Command::Gateway => Role::Gateway,
        Command::PublisherApi => Role::PublisherApi,
        Command::Presence => Role::Presence,
        // Tools for people at a terminal: their errors are plain text.
        Command::Bench(args) => return tool(herald_bench::run(*args)),
        Command::Token { user, ttl, key: Some(key), alg, kid } => {
            return tool((|| {
                let key = herald_bench::token::TokenKey::load(&key, alg.as_deref().unwrap_or_default(), kid)?;
                println!("{}", key.mint(&user, ttl));
                Ok(())
            })());
        }
        Command::Token { user, ttl, .. } => {
            return tool((|| {
                let config = Config::load(file).context("invalid configuration")?;
                config.auth.validate()?;
                println!("{}", herald_gateway::mint(&config.auth.jwt_secret, &user, ttl)?);
                Ok(())
            })());
        }
    };
    // The log configuration first, so that whatever goes wrong next is logged as configured.
    // When it is what is wrong, plain text is all there is.
    let logging = LogConfig::load(file).map_err(|e| e.to_string());
    if let Err(e) = logging.and_then(|log| telemetry::init(&log).map_err(|e| e.to_string())) {
        eprintln!("herald: the log configuration is invalid, so this is plain text: {e}");
        return ExitCode::FAILURE;
    }
    lifecycle::run(role, file)
}

/// The exit of a command run at a terminal: its error, if any, on standard error.
fn tool(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}
