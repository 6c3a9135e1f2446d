//! The Redis engine behind Redis Sentinel: a real master, replica and sentinel, and a real
//! failover.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{Broker, RedisBroker, RedisConfig, conformance};
use herald_protocol::ChannelName;
use herald_testkit::{RedisSentinel, RedisServer};

/// Through Sentinel the engine keeps every promise of the conformance suite, and after the
/// master is killed and a replica promoted, publishing and the node's subscriptions move to
/// the new master by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_follows_a_sentinel_failover() {
    let mut master = RedisServer::start().await;
    let replica_of = master.port().to_string();
    let _replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &replica_of]).await;
    let sentinel = RedisSentinel::start(master.port(), "herald-test").await;
    let config = RedisConfig {
        url: "redis://ignored:1".into(),
        sentinel_master: Some("herald-test".into()),
        sentinel_addresses: vec![sentinel.addr()],
        reconnect_max: Duration::from_millis(300),
        ..Default::default()
    };
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(config).unwrap());
    conformance::run_all(broker.clone(), "sentinel").await;

    let (node, got) = conformance::node(&broker);
    let channel = ChannelName::parse("conf:failover").unwrap();
    node.subscribe(&channel).await.unwrap();
    broker.publish(&channel, Bytes::from_static(b"before")).await.unwrap();
    got.wait_for(1).await;

    master.kill().await;
    // Until the sentinel promotes the replica, publishing fails; then it reaches the node again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no delivery after the failover");
        got.clear();
        if broker.publish(&channel, Bytes::from_static(b"after")).await.is_ok()
            && tokio::time::timeout(Duration::from_millis(300), got.wait_for(1)).await.is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sentinel settings are checked at start-up, naming the key.
#[test]
fn sentinel_settings_are_validated() {
    let half = RedisConfig { sentinel_master: Some("m".into()), ..Default::default() };
    assert!(half.validate().unwrap_err().contains("redis.sentinel_addresses"));
    let bad = RedisConfig {
        sentinel_master: Some("m".into()),
        sentinel_addresses: vec!["nohost".into()],
        ..Default::default()
    };
    assert!(bad.validate().unwrap_err().contains("redis.sentinel_addresses"));
}
