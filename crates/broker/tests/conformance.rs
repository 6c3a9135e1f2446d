//! The broker conformance suite, run against both engines.

use std::sync::Arc;

use herald_broker::{Broker, MemoryBroker, RedisBroker, RedisConfig, conformance};
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

/// The Redis engine authenticates with the password in its URL, for publishing and for the
/// node's Pub/Sub connection.
#[tokio::test]
async fn redis_engine_authenticates() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]).await;
    let url = format!("redis://:s3cret@127.0.0.1:{}", redis.port());
    let broker = RedisBroker::new(RedisConfig { url, ..Default::default() }).unwrap();
    conformance::run_all(Arc::new(broker), "auth").await;
}

/// With a wrong password nothing is published and the node never reports itself live.
#[tokio::test]
async fn redis_engine_refuses_a_wrong_password() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]).await;
    let url = format!("redis://:wrong@127.0.0.1:{}", redis.port());
    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::new(RedisConfig { url, ..Default::default() }).unwrap());
    assert!(broker.ping().await.is_err());
    let (node, _) = conformance::node(&broker);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!*node.status().borrow());
}

/// Only plain `redis://host:port` URLs are accepted, with a clear error otherwise.
#[test]
fn redis_engine_refuses_unsupported_urls() {
    for url in ["redis+unix:///tmp/redis.sock", "not a url"] {
        let config = RedisConfig { url: url.into(), ..Default::default() };
        assert!(RedisBroker::new(config).is_err(), "{url}");
    }
}
