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

/// Sentinels that require a password (as Helm charts set them up by default) in front of a
/// master that requires another: the engine authenticates to both, and without the
/// sentinels' password it fails with an error that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_with_a_password_are_authenticated() {
    let master = RedisServer::start_with(&["--requirepass", "master-pw"]).await;
    let sentinel = RedisSentinel::start_with(
        master.port(),
        "herald-auth",
        "requirepass sentinel-pw\nsentinel auth-pass herald-auth master-pw",
    )
    .await;
    let config = |password: Option<&str>| RedisConfig {
        url: "redis://:master-pw@ignored:1".into(),
        sentinel_master: Some("herald-auth".into()),
        sentinel_addresses: vec![sentinel.addr()],
        sentinel_password: password.map(String::from),
        ..Default::default()
    };
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(config(Some("sentinel-pw"))).unwrap());
    conformance::run_all(broker.clone(), "sentinel-auth").await;

    for (password, expected) in [(None, "NOAUTH"), (Some("wrong"), "WRONGPASS")] {
        let broker = RedisBroker::new(config(password)).unwrap();
        let err = broker.ping().await.unwrap_err().to_string();
        assert!(err.contains(&sentinel.addr()) && err.contains(expected), "{password:?}: {err}");
    }
}

/// Sentinel settings are checked at start-up, naming the key.
#[test]
fn sentinel_settings_are_validated() {
    let half = RedisConfig { sentinel_master: Some("m".into()), ..Default::default() };
    assert_eq!(half.validate().unwrap_err().key, "redis.sentinel_addresses");
    let bad = RedisConfig {
        sentinel_master: Some("m".into()),
        sentinel_addresses: vec!["nohost".into()],
        ..Default::default()
    };
    assert_eq!(bad.validate().unwrap_err().key, "redis.sentinel_addresses");
    let stray = RedisConfig { sentinel_password: Some("pw".into()), ..Default::default() };
    assert_eq!(stray.validate().unwrap_err().key, "redis.sentinel_master");
    let user_only = RedisConfig {
        sentinel_master: Some("m".into()),
        sentinel_addresses: vec!["a:26379".into()],
        sentinel_username: Some("herald".into()),
        ..Default::default()
    };
    assert_eq!(user_only.validate().unwrap_err().key, "redis.sentinel_password");
}

/// Passwords stay out of the configuration's debug output, which ends up in logs.
#[test]
fn passwords_are_not_printed() {
    let config = RedisConfig {
        url: "redis://:url-secret@host:6379".into(),
        sentinel_password: Some("sentinel-secret".into()),
        ..Default::default()
    };
    let printed = format!("{config:?}");
    assert!(!printed.contains("url-secret") && !printed.contains("sentinel-secret"), "{printed}");
}
