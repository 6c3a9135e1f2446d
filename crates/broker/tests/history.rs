//! Channel history on both engines: the conformance suite, and what only a real Redis can
//! show (restarts with and without persistence, the layout of its keys).

use std::sync::Arc;
use std::time::Duration;

use herald_broker::conformance::history::{filter, options, payload, run_history};
use herald_broker::{Broker, BrokerError, MemoryBroker, RecoveryFailure, RedisBroker, RedisConfig};
use herald_protocol::ChannelName;
use herald_testkit::RedisServer;

/// The in-memory engine keeps every history promise; its TTLs run on a paused clock.
#[tokio::test(start_paused = true)]
async fn memory_engine_keeps_history() {
    run_history(Arc::new(MemoryBroker::new()), "mem").await;
}

/// The Redis engine keeps every history promise, against a real redis-server.
#[tokio::test]
async fn redis_engine_keeps_history() {
    let redis = RedisServer::start().await;
    let broker = RedisBroker::new(RedisConfig { url: redis.url(), ..Default::default() }).unwrap();
    run_history(Arc::new(broker), "redis").await;
}

fn redis_broker(redis: &RedisServer) -> Arc<dyn Broker> {
    Arc::new(RedisBroker::new(RedisConfig { url: redis.url(), ..Default::default() }).unwrap())
}

/// Publishes message `i`, retrying while the engine reconnects after a restart: a retry is
/// safe because the idempotency key makes it happen once.
async fn publish_retrying(
    broker: &Arc<dyn Broker>,
    channel: &ChannelName,
    i: usize,
) -> herald_broker::PublishResult {
    let keyed = herald_broker::HistoryOptions { idempotency_key: Some(format!("k{i}")), ..options(100) };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match broker.publish_with_history(channel, &format!("m{i}"), payload(i), &keyed).await {
            Ok(result) => return result,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(
                    matches!(e, BrokerError::Unavailable { .. } | BrokerError::OutcomeUnknown { .. }),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no publish within 10 s of the restart: {e}"),
        }
    }
}

/// A Redis restarted without persistence lost every history: the channel has a new epoch,
/// offsets start again, and the old position is refused as `epoch_changed`.
#[tokio::test]
async fn a_redis_restarted_without_persistence_gives_a_new_epoch() {
    let mut redis = RedisServer::start().await;
    let broker = redis_broker(&redis);
    let room = ChannelName::parse("hist:volatile").unwrap();
    for i in 1..=5 {
        publish_retrying(&broker, &room, i).await;
    }
    let before = broker.history(&room, &filter(None, None, false)).await.unwrap().position;
    assert_eq!(before.offset, 5);
    redis.restart().await;
    let after = publish_retrying(&broker, &room, 6).await;
    assert_ne!(after.epoch, before.epoch, "the epoch survived a restart that lost the history");
    assert_eq!(after.offset, 1);
    match broker.history(&room, &filter(Some(before), None, false)).await {
        Err(BrokerError::Unrecoverable { reason: RecoveryFailure::EpochChanged, current }) => {
            assert_eq!((current.offset, current.epoch), (1, after.epoch));
        }
        other => panic!("recovered across a lost history: {other:?}"),
    }
}

/// With `appendfsync always` every acknowledged publish survives a crash (`kill -9`): the
/// epoch, the messages and the counter are as they were, and publishing goes on from there.
#[tokio::test]
async fn a_redis_with_aof_always_keeps_epoch_and_messages_across_a_crash() {
    let mut redis = RedisServer::start_persistent().await;
    let broker = redis_broker(&redis);
    let room = ChannelName::parse("hist:durable").unwrap();
    let mut acknowledged = Vec::new();
    for i in 1..=20 {
        acknowledged.push(publish_retrying(&broker, &room, i).await);
    }
    let before = broker.history(&room, &filter(None, None, false)).await.unwrap();
    redis.kill().await;
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        match broker.history(&room, &filter(None, None, false)).await {
            Ok(after) => break after,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no read within 10 s of the restart: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(after, before, "the crash changed the history");
    assert_eq!(after.position.epoch, acknowledged[0].epoch);
    assert_eq!(after.publications.len(), 20);
    let next = publish_retrying(&broker, &room, 21).await;
    assert_eq!((next.offset, next.epoch), (21, acknowledged[0].epoch.clone()));
    // The idempotency keys survived too: a retry of an acknowledged publish stays one.
    let retry = publish_retrying(&broker, &room, 20).await;
    assert!(retry.deduplicated && retry.offset == 20, "{retry:?}");
}

/// A channel's keys share one hash tag (one Redis Cluster slot), and expire with the history.
#[tokio::test]
async fn a_channels_keys_share_one_slot() {
    let redis = RedisServer::start().await;
    let broker = redis_broker(&redis);
    let room = ChannelName::parse("hist:slot").unwrap();
    publish_retrying(&broker, &room, 1).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    keys.sort();
    assert_eq!(keys, ["herald:{hist:slot}.idem:k1", "herald:{hist:slot}.meta", "herald:{hist:slot}.stream"]);
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0, "{key} never expires");
    }
}
