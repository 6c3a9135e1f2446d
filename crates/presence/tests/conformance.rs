//! The presence store conformance suite, run against both engines.

use std::sync::Arc;

use herald_broker::RedisConfig;
use herald_presence::conformance::{self, TIMINGS};
use herald_presence::{MemoryStore, PresenceStore, RedisStore};
use herald_testkit::{RedisCluster, RedisServer};

/// The in-memory engine keeps every promise of the suite, on tokio's paused clock (it keeps
/// time with tokio's `Instant`), so the grace periods and leases take no real time.
#[tokio::test(start_paused = true)]
async fn memory_store_conforms() {
    conformance::run_all(|_: &str| Arc::new(MemoryStore::new(TIMINGS)) as Arc<dyn PresenceStore>).await;
}

/// The Redis engine keeps every promise of the suite, against a real redis-server.
#[tokio::test]
async fn redis_store_conforms() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    conformance::run_all(move |case: &str| {
        let config = RedisConfig { url: url.clone(), prefix: format!("{case}:"), ..Default::default() };
        Arc::new(RedisStore::new(config, TIMINGS).unwrap()) as Arc<dyn PresenceStore>
    })
    .await;
}

/// The Redis engine keeps every promise of the suite on a real Redis Cluster (three primaries),
/// its keys in one slot and its scripts routed to that slot's primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms() {
    let cluster = RedisCluster::start().await;
    let seeds = cluster.seeds();
    conformance::run_all(move |case: &str| {
        let config =
            RedisConfig { cluster_nodes: seeds.clone(), prefix: format!("{case}:"), ..Default::default() };
        Arc::new(RedisStore::new(config, TIMINGS).unwrap()) as Arc<dyn PresenceStore>
    })
    .await;
}
