//! Channel history: the conformance suite on the in-memory engine.

use std::sync::Arc;

use herald_broker::MemoryBroker;
use herald_broker::conformance::history::run_history;

/// The in-memory engine keeps every history promise; its TTLs run on a paused clock.
#[tokio::test(start_paused = true)]
async fn memory_engine_keeps_history() {
    run_history(Arc::new(MemoryBroker::new()), "mem").await;
}
