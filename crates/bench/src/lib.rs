//! `herald bench`: a load generator that drives real WebSocket clients against a running
//! Herald (or nginx + nchan, for comparison) and prints what it measured.
//!
//! Layout, from the command line inwards:
//! - [`args`]: the command line ([`BenchArgs`]): scenario, target, rates, sizes, PIDs.
//! - [`run`]: the coordinator. It plans the run ([`plan`]), starts the workers (`launch`),
//!   walks the phases (connect; hold, or publish and drain; stop and collect), follows the
//!   workers' events (`tally`), samples the servers ([`procstat`]) and has `assemble` build
//!   the [`report::Report`] from what it measured.
//! - [`worker`]: opens a share of the connections, in this process or in a worker process
//!   (the same binary, `herald bench worker`, talking JSON lines over stdin and stdout),
//!   because one process may only open so many sockets.
//! - `worker::client`: one connection, from its source address: handshake with its own token,
//!   greeting, subscription, then reading and recording. [`token`] mints the tokens, HS256 or
//!   with a private key.
//! - [`publish`]: offers messages at a fixed rate over HTTP or gRPC with bounded in-flight
//!   requests, counting per stream what was published.
//! - [`flood`]: with `--flood N`, abusive connections on a thread of their own that send
//!   frames as fast as the socket takes them, reconnect when closed, and count the answers.
//! - [`payload`]: each message's sequence number and send time; [`stats`]: latency
//!   histograms and per-connection loss, duplicate and reorder accounting.
//!
//! Data flow: publisher → server → client task → worker counters and histogram → report
//! event → coordinator → summary and JSON.

pub mod args;
mod assemble;
pub mod flood;
mod launch;
pub mod payload;
pub mod plan;
pub mod procstat;
pub mod publish;
pub mod report;
pub mod run;
pub mod stats;
mod tally;
pub mod token;
pub mod worker;

pub use args::{BenchArgs, FloodKind, Scenario, Target, Via};
pub use report::Report;
pub use run::execute;

/// `herald bench`: runs the benchmark, then prints the human summary and the JSON result
/// (the last line of standard output; also written to `--json FILE`).
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.scenario == Scenario::Worker {
        return worker::run_process();
    }
    let json_path = args.json.clone();
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(execute(args))?;
    print!("{}", report.human());
    let json = serde_json::to_string(&report)?;
    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}
