//! The broker conformance suite, run against both engines.

use std::sync::Arc;

use herald_broker::{conformance, Broker, MemoryBroker, RedisBroker, RedisConfig};
use herald_testkit::RedisServer;

/// The in-memory engine keeps every promise of the suite.
#[tokio::test]
async fn memory_engine_conforms() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    conformance::run_all(broker, "mem").await;
}

/// The Redis engine keeps every promise of the suite, against a real redis-server.
#[tokio::test]
async fn redis_engine_conforms() {
    let redis = RedisServer::start().await;
    let broker = RedisBroker::new(RedisConfig { url: redis.url(), ..Default::default() }).unwrap();
    conformance::run_all(Arc::new(broker), "redis").await;
}
