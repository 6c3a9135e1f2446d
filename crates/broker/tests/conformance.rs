//! The broker conformance suite, run against both engines.

use std::collections::HashMap;
use std::sync::Arc;

use herald_broker::{Broker, MemoryBroker, RedisBroker, RedisConfig, conformance};
use herald_testkit::RedisServer;

/// The in-memory engine keeps every promise of the suite.
#[tokio::test]
async fn memory_engine_conforms() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    conformance::run_all(broker, "mem").await;
}

/// The in-memory engine keeps every promise about pattern subscriptions, matching itself.
#[tokio::test]
async fn memory_engine_conforms_with_patterns() {
    conformance::patterns::run_patterns(Arc::new(MemoryBroker::new()), "mem").await;
}

/// The Redis engine keeps every promise about pattern subscriptions (`PSUBSCRIBE`), also
/// with a prefix full of glob characters, which must match only themselves.
#[tokio::test]
async fn redis_engine_conforms_with_patterns() {
    let redis = RedisServer::start().await;
    let broker = RedisBroker::new(RedisConfig { url: redis.url(), ..Default::default() }).unwrap();
    conformance::patterns::run_patterns(Arc::new(broker), "redis").await;
    let prefix = "we*rd?[x]^-\\:".to_string();
    let odd = RedisBroker::new(RedisConfig { url: redis.url(), prefix, ..Default::default() }).unwrap();
    conformance::patterns::run_patterns(Arc::new(odd), "odd").await;
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

/// With a wrong password nothing is published, with Redis's refusal in the error, and the node,
/// refused as well, never reports itself live.
#[tokio::test]
async fn redis_engine_refuses_a_wrong_password() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]).await;
    let url = format!("redis://:wrong@127.0.0.1:{}", redis.port());
    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::new(RedisConfig { url, ..Default::default() }).unwrap());
    let err = broker.ping().await.expect_err("published with a wrong password");
    let causes = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    // Redis's `WRONGPASS` (or the redis crate's words for it), not a timeout or a refused
    // connection.
    let causes_lower = causes.to_lowercase();
    assert!(
        causes_lower.contains("wrongpass") || causes_lower.contains("password authentication failed"),
        "not Redis's refusal of the password: {causes}"
    );

    let refused = auth_refusals(&redis).await;
    let (node, _) = conformance::node(&broker);
    // Wait until Redis refused the node's own connection, however long it took to try.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while auth_refusals(&redis).await == refused {
        assert!(tokio::time::Instant::now() < deadline, "the node never tried to authenticate");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!*node.status().borrow(), "a node refused by Redis reports itself live");
    node.close();
}

/// How many times `redis` (password `s3cret`) refused a password, from its `ACL LOG`.
async fn auth_refusals(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}", redis.port())).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let log: Vec<HashMap<String, String>> =
        redis::cmd("ACL").arg("LOG").query_async(&mut conn).await.unwrap();
    log.iter()
        .filter(|entry| entry["reason"] == "auth")
        .map(|entry| entry["count"].parse::<u64>().unwrap())
        .sum()
}

/// Only plain `redis://host:port` URLs are accepted, with a clear error otherwise.
#[test]
fn redis_engine_refuses_unsupported_urls() {
    for url in ["redis+unix:///tmp/redis.sock", "not a url"] {
        let config = RedisConfig { url: url.into(), ..Default::default() };
        assert!(RedisBroker::new(config).is_err(), "{url}");
    }
}
