//! How a gateway node's Pub/Sub connection talks to a real redis-server: subscriptions that
//! arrive while a command is in flight, or soon after one left, share the next command, and
//! interleaved subscribes and unsubscribes settle on exactly what is wanted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::{Broker, RedisBroker, RedisConfig, conformance};
use herald_protocol::ChannelName;
use herald_testkit::RedisServer;

const CHANNELS: usize = 2000;

async fn live_node(redis: &RedisServer) -> (Arc<dyn Broker>, Arc<dyn herald_broker::Subscriber>) {
    live_node_with(RedisConfig { url: redis.url(), ..Default::default() }).await
}

async fn live_node_with(config: RedisConfig) -> (Arc<dyn Broker>, Arc<dyn herald_broker::Subscriber>) {
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(config).unwrap());
    let (node, _) = conformance::node(&broker);
    let mut status = node.status();
    tokio::time::timeout(Duration::from_secs(5), status.wait_for(|live| *live)).await.unwrap().unwrap();
    (broker, node)
}

/// `calls=<n>` of `cmdstat_<command>` in `INFO commandstats`, 0 when never called.
async fn calls(redis: &RedisServer, command: &str) -> usize {
    let info = redis.info("commandstats").await;
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

fn channel(i: usize) -> ChannelName {
    ChannelName::parse(&format!("node:c.{i}")).unwrap()
}

/// Subscribes arriving one by one, 0.1 ms apart, as connections do, while Redis is busy
/// (here: asleep for two seconds): one command is in flight, everything that arrives meanwhile
/// leaves in the next one, instead of a command per subscribe piling up in front of a slow
/// Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_arriving_during_a_command_share_the_next() {
    let redis = Arc::new(RedisServer::start_with(&["--enable-debug-command", "yes"]).await);
    let (_broker, node) = live_node(&redis).await;
    let sleeper = {
        let redis = redis.clone();
        tokio::spawn(async move { redis.command(&["DEBUG", "SLEEP", "2"]).await })
    };
    // Wait until the DEBUG command reached Redis, which then answers nobody: a PING goes
    // unanswered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::timeout(Duration::from_millis(100), redis.command(&["PING"])).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "Redis never went to sleep");
        assert!(!sleeper.is_finished(), "Redis slept before a PING could notice");
    }
    let mut pending = Vec::with_capacity(CHANNELS);
    for i in 0..CHANNELS {
        pending.push(node.subscribe(&channel(i)));
        let next = Instant::now() + Duration::from_micros(100);
        while Instant::now() < next {
            std::hint::spin_loop();
        }
        tokio::task::yield_now().await;
    }
    assert!(!sleeper.is_finished(), "the subscribes took longer than Redis slept");
    for confirmed in futures_util::future::join_all(pending).await {
        confirmed.unwrap();
    }
    assert_eq!(sleeper.await.unwrap(), "+OK");
    assert_eq!(node.active_channels(), CHANNELS);
    let commands = calls(&redis, "subscribe").await;
    // The first channel's command, then the rest in commands of at most 512 channels.
    assert!(commands <= 1 + CHANNELS.div_ceil(512), "{commands} SUBSCRIBE commands for {CHANNELS} channels");
    node.close();
}

/// A subscribe after a quiet spell leaves at once; the ones that follow it within
/// `subscribe_batch_interval`, each arriving after the last was confirmed, are held and leave
/// together when the interval is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_soon_after_a_command_wait_for_the_interval_and_share_one() {
    let redis = RedisServer::start().await;
    let interval = Duration::from_secs(2);
    let config = RedisConfig { url: redis.url(), subscribe_batch_interval: interval, ..Default::default() };
    let (_broker, node) = live_node_with(config).await;
    let started = Instant::now();
    node.subscribe(&channel(0)).await.unwrap();
    let first = started.elapsed();
    assert!(first < interval / 2, "the first subscribe was held for {first:?}");

    let later: Vec<_> = (1..=20).map(channel).collect();
    let mut pending = Vec::new();
    for channel in &later {
        pending.push(node.subscribe(channel));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(node.active_channels(), 1, "a held subscribe left before the interval was over");
    for confirmed in futures_util::future::join_all(pending).await {
        confirmed.unwrap();
    }
    assert!(started.elapsed() >= interval, "held for {:?}", started.elapsed());
    assert_eq!(node.active_channels(), 1 + later.len());
    assert_eq!(calls(&redis, "subscribe").await, 2);
    node.close();
}

#[test]
fn the_batch_interval_is_shorter_than_the_subscribe_timeout() {
    let config = RedisConfig { subscribe_batch_interval: Duration::from_secs(5), ..Default::default() };
    let error = config.validate().unwrap_err();
    assert_eq!(error.key, "redis.subscribe_batch_interval", "{error}");
    RedisConfig::default().validate().unwrap();
}

/// Interest that comes and goes while commands are in flight ends with Redis subscribed to
/// exactly the channels still wanted, and the node counting them live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_subscribes_and_unsubscribes_settle_on_what_is_wanted() {
    let redis = RedisServer::start().await;
    let (_broker, node) = live_node(&redis).await;
    for i in 0..CHANNELS {
        // Not awaited: a confirmation may come after the interest is gone again.
        drop(node.subscribe(&channel(i)));
        tokio::task::yield_now().await;
        if i % 2 == 1 {
            node.unsubscribe(&channel(i - 1));
        }
        if i % 7 == 0 {
            // Gone and back before Redis can have confirmed either.
            node.unsubscribe(&channel(i));
            drop(node.subscribe(&channel(i)));
        }
    }
    let wanted = CHANNELS / 2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let subscribed = redis.command(&["PUBSUB", "CHANNELS", "*node:c.*"]).await;
        if subscribed == format!("*{wanted}") && node.active_channels() == wanted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis has {subscribed} channels, the node {} live, {wanted} wanted",
            node.active_channels()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in (1..CHANNELS).step_by(2) {
        node.subscribe(&channel(i)).await.unwrap();
    }
    node.close();
}

/// After Redis restarts, the node subscribes its patterns again (`PSUBSCRIBE`), beside its
/// channels, before it reports itself live, and their messages flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_are_resubscribed_after_a_reconnect() {
    let mut redis = RedisServer::start().await;
    let config =
        RedisConfig { url: redis.url(), reconnect_max: Duration::from_millis(200), ..Default::default() };
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(config).unwrap());
    let (node, got) = conformance::node(&broker);
    let pattern = herald_protocol::ChannelPattern::parse("node:p-*").unwrap();
    node.subscribe_pattern(&pattern).await.unwrap();
    let status = node.status();
    redis.restart().await;
    // Reconnected and live again: everything resubscribed (the status waits for that).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.reconnects() == 0 || !*status.borrow() {
        assert!(tokio::time::Instant::now() < deadline, "the node never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.active_patterns(), 1);
    assert_eq!(redis.command(&["PUBSUB", "NUMPAT"]).await, ":1");
    broker
        .publish(&ChannelName::parse("node:p-1").unwrap(), bytes::Bytes::from_static(b"back"))
        .await
        .unwrap();
    let received = got.wait_for(1).await;
    assert_eq!(received[0].0, conformance::via("node:p-1", "node:p-*"));
    node.close();
}
