//! Gap repairs of channels with history: the tasks that read from the history what a gap in
//! the node's stream lacks.
//!
//! [`crate::stream`] decides when a gap opens and merges what a repair read; the hub starts
//! the repair ([`Repairs::spawn`]) and hands its outcome back to the stream. The tasks are
//! tracked, so shutdown waits for them, and stop waiting for the broker when it is cancelled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_broker::{Broker, BrokerError, HistoryFilter};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::stream::{Outcome, RepairStart};

/// How long a repair keeps retrying a history read the broker does not answer before it
/// gives the gap up (subscribers get a `reset`).
const REPAIR_DEADLINE: Duration = Duration::from_secs(10);

/// The repair tasks of one hub.
pub(crate) struct Repairs {
    /// Repair tasks (history reads that fill gaps), so shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancelled at shutdown: repairs stop waiting for the broker.
    stop: CancellationToken,
    /// Numbers repairs, so a read that finishes late is not taken for a later one's.
    generations: AtomicU64,
}

impl Repairs {
    pub(crate) fn new() -> Self {
        Self { tasks: TaskTracker::new(), stop: CancellationToken::new(), generations: AtomicU64::new(0) }
    }

    /// The number of the next repair.
    pub(crate) fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts the history read of `start` as a task: the broker's reader must not wait.
    /// `done` gets what the read found, unless the repairs were stopped meanwhile.
    pub(crate) fn spawn(
        &self,
        broker: Arc<dyn Broker>,
        start: RepairStart,
        done: impl FnOnce(RepairStart, Outcome) + Send + 'static,
    ) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            let Some(outcome) = read(&*broker, &start, &stop).await else { return };
            done(start, outcome);
        });
    }

    /// Stops the repairs in flight and waits for them to end.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Reads what a repair needs, retrying a broker that does not answer until
/// [`REPAIR_DEADLINE`]. `None` when the repairs stop.
async fn read(broker: &dyn Broker, start: &RepairStart, stop: &CancellationToken) -> Option<Outcome> {
    let filter =
        HistoryFilter { since: Some(start.since.to_stream()), limit: None, reverse: false, ttl: start.ttl };
    let deadline = tokio::time::Instant::now() + REPAIR_DEADLINE;
    let mut delay = Duration::from_millis(50);
    loop {
        let read = tokio::select! {
            read = broker.history(&start.channel, &filter) => read,
            _ = stop.cancelled() => return None,
        };
        match read {
            Ok(read) => return Some(Outcome::Read(read)),
            Err(BrokerError::Unrecoverable { reason, current }) => {
                return Some(Outcome::Lost { reason, current });
            }
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::debug!(channel = %start.channel, error = %e, "history read for a repair failed, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return None,
                }
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!(channel = %start.channel, error = %e, "history read for a repair failed");
                return Some(Outcome::GaveUp);
            }
        }
    }
}
