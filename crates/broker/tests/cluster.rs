//! The Redis engine on a real Redis Cluster (three primaries, three replicas): the conformance
//! suites, sharded publishing to the owning primary only, and a primary killed while
//! publishing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_broker::conformance::{self, history::run_history};
use herald_broker::{Broker, BrokerError, RedisBroker, RedisConfig};
use herald_protocol::ChannelName;
use herald_testkit::RedisCluster;

fn cluster_broker(cluster: &RedisCluster) -> Arc<dyn Broker> {
    let config = RedisConfig { cluster_nodes: cluster.seeds(), ..Default::default() };
    Arc::new(RedisBroker::new(config).unwrap())
}

/// The cluster engine keeps every promise of the broker suite and of the history suite, and
/// refuses pattern subscriptions at once (sharded Pub/Sub has none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_engine_conforms() {
    let cluster = RedisCluster::start().await;
    let broker = cluster_broker(&cluster);
    conformance::run_all(broker.clone(), "cluster").await;
    conformance::patterns::patterns_are_refused(&broker, "cluster").await;
    run_history(broker, "cluster").await;
}

/// The slot of `channel`'s sharded Pub/Sub channel (`herald:{channel}`), as the cluster
/// computes it.
async fn slot_of(cluster: &RedisCluster, channel: &ChannelName) -> u16 {
    cluster.keyslot(&format!("herald:{{{}}}", channel.as_str())).await
}

/// One channel on each of the three primaries, with the primary's port.
async fn channel_per_primary(cluster: &RedisCluster, tag: &str) -> Vec<(ChannelName, u16)> {
    let mut picked: Vec<(ChannelName, u16)> = Vec::new();
    for i in 0.. {
        let channel = ChannelName::parse(&format!("{tag}.{i}")).unwrap();
        let primary = cluster.primary_of_slot(slot_of(cluster, &channel).await).await;
        if !picked.iter().any(|(_, p)| *p == primary) {
            picked.push((channel, primary));
        }
        if picked.len() == 3 {
            break;
        }
    }
    picked
}

/// Once the slot map is known, the broker names one canary channel per primary, each in a
/// slot that primary serves, so a readiness canary covers every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_channels_cover_every_primary() {
    let cluster = RedisCluster::start().await;
    let broker = cluster_broker(&cluster);
    let base = ChannelName::parse("herald:canary.test").unwrap();
    // Publishing reads the map.
    broker.publish(&base, Bytes::from_static(b"{}")).await.unwrap();
    let shards = broker.shard_channels(&base);
    assert_eq!(shards.len(), 3, "{shards:?}");
    let mut primaries = Vec::new();
    for shard in &shards {
        let primary = cluster.primary_of_slot(slot_of(&cluster, &shard.channel).await).await;
        assert_eq!(shard.shard.as_deref(), Some(format!("127.0.0.1:{primary}").as_str()), "{shard:?}");
        assert!(shard.channel.as_str().starts_with("herald:canary.test."), "{shard:?}");
        primaries.push(primary);
    }
    primaries.sort_unstable();
    primaries.dedup();
    assert_eq!(primaries.len(), 3, "one channel per primary");
}

/// Messages of channels on all three primaries reach a subscribed node, and each `SPUBLISH`
/// (single and batched) runs only on the primary owning its channel's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_published_on_its_channels_primary_only() {
    let cluster = RedisCluster::start().await;
    let broker = cluster_broker(&cluster);
    let channels = channel_per_primary(&cluster, "shard").await;
    let (node, got) = conformance::node(&broker);
    for (channel, _) in &channels {
        node.subscribe(channel).await.unwrap();
    }
    let before =
        futures_util::future::join_all(channels.iter().map(|(_, p)| cluster.spublish_calls(*p))).await;
    // Channel k gets k + 1 single publishes and k + 1 batched ones.
    let mut batch = Vec::new();
    for (k, (channel, _)) in channels.iter().enumerate() {
        for i in 0..=k {
            broker.publish(channel, Bytes::from(format!("single {i}"))).await.unwrap();
            batch.push((channel.clone(), Bytes::from(format!("batched {i}"))));
        }
    }
    broker.publish_batch(&batch).await.unwrap();
    let received = got.wait_for(12).await;
    for (k, (channel, port)) in channels.iter().enumerate() {
        let mine = received.iter().filter(|(c, _)| c == channel.as_str()).count();
        assert_eq!(mine, 2 * (k + 1), "messages of {channel}");
        let calls = cluster.spublish_calls(*port).await - before[k];
        assert_eq!(calls, 2 * (k as u64 + 1), "SPUBLISH calls on the primary of {channel} (port {port})");
    }
    node.close();
}

/// `broadcast` is spread (`redis.spread_channels`, the default): its publishes, single and
/// batched, go to its 16 parts in turn, which every primary shares, and reach a node as
/// `broadcast`; a publish with history goes to `broadcast` itself and reaches the node too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_is_spread_over_every_primary() {
    use herald_broker::HistoryOptions;
    use herald_broker::conformance::history::{options, payload};

    let cluster = RedisCluster::start().await;
    let broker = cluster_broker(&cluster);
    let broadcast = ChannelName::parse("broadcast").unwrap();
    let (node, got) = conformance::node(&broker);
    node.subscribe(&broadcast).await.unwrap();
    assert_eq!(node.active_channels(), 17, "broadcast and its 16 parts");
    let mut ports = Vec::new();
    for slot in [0, 5461, 10923] {
        ports.push(cluster.primary_of_slot(slot).await);
    }
    let before = futures_util::future::join_all(ports.iter().map(|p| cluster.spublish_calls(*p))).await;
    for i in 0..48 {
        broker.publish(&broadcast, Bytes::from(format!("single {i}"))).await.unwrap();
    }
    let batch: Vec<(ChannelName, Bytes)> =
        (0..48).map(|i| (broadcast.clone(), Bytes::from(format!("batched {i}")))).collect();
    broker.publish_batch(&batch).await.unwrap();
    let options = HistoryOptions { idempotency_key: None, ..options(10) };
    broker.publish_with_history(&broadcast, "kept", payload(1), &options).await.unwrap();
    let received = got.wait_for(97).await;
    assert_eq!(received.len(), 97);
    assert!(received.iter().all(|(c, _)| c == "broadcast"), "every message as broadcast's");
    let mut total = 0;
    for (port, before) in ports.iter().zip(before) {
        let calls = cluster.spublish_calls(*port).await - before;
        assert!(calls >= 96 / 16, "the primary on port {port} carried {calls} of broadcast's SPUBLISHes");
        total += calls;
    }
    assert_eq!(total, 97, "each message published once");
    node.unsubscribe(&broadcast);
    node.close();
}

/// A node with a hundred channels on the three primaries holds one sharded Pub/Sub connection
/// per primary, not one per channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holds_one_connection_per_primary() {
    let cluster = RedisCluster::start().await;
    let broker = cluster_broker(&cluster);
    let (node, got) = conformance::node(&broker);
    let channels: Vec<ChannelName> =
        (0..100).map(|i| ChannelName::parse(&format!("many.{i}")).unwrap()).collect();
    for result in futures_util::future::join_all(channels.iter().map(|c| node.subscribe(c))).await {
        result.unwrap();
    }
    assert_eq!(node.active_channels(), 100);
    let batch: Vec<(ChannelName, Bytes)> =
        channels.iter().map(|c| (c.clone(), Bytes::from_static(b"."))).collect();
    broker.publish_batch(&batch).await.unwrap();
    assert_eq!(got.wait_for(100).await.len(), 100);
    let mut primaries = Vec::new();
    for channel in &channels {
        let primary = cluster.primary_of_slot(slot_of(&cluster, channel).await).await;
        if !primaries.contains(&primary) {
            primaries.push(primary);
        }
    }
    assert_eq!(primaries.len(), 3, "the channels span every primary");
    for port in primaries {
        let clients: String = cluster.query(port, &["CLIENT", "LIST", "TYPE", "pubsub"]).await.unwrap();
        assert_eq!(clients.lines().count(), 1, "Pub/Sub connections on port {port}: {clients}");
    }
    node.close();
}

/// A primary killed with SIGKILL while messages are published: its channel's publishes fail
/// with the engine's unavailable or outcome-unknown errors only, the other primaries' channels
/// keep being delivered, a replica takes over, and the node, resubscribed on the promoted
/// replica, receives the channel's messages again, with its status down meanwhile (the
/// gateway's cue to repair history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_failed_over_and_delivery_resumes() {
    let mut cluster = RedisCluster::start().await;
    let broker = cluster_broker(&cluster);
    let channels = channel_per_primary(&cluster, "failover").await;
    let (node, got) = conformance::node(&broker);
    for (channel, _) in &channels {
        node.subscribe(channel).await.unwrap();
    }
    let mut status = node.status();
    tokio::time::timeout(Duration::from_secs(5), status.wait_for(|live| *live))
        .await
        .expect("never live before the kill")
        .unwrap();
    let (victim, dead) = channels[0].clone();
    let slot = slot_of(&cluster, &victim).await;
    cluster.kill(dead).await;
    // Other primaries keep publishing and delivering while the victim's fail.
    for (channel, _) in &channels[1..] {
        broker.publish(channel, Bytes::from_static(b"during")).await.unwrap();
    }
    match broker.publish(&victim, Bytes::from_static(b"lost")).await {
        Err(BrokerError::Unavailable { .. } | BrokerError::OutcomeUnknown { .. }) => {}
        other => panic!("a publish to a dead primary answered {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(5), status.wait_for(|live| !*live))
        .await
        .expect("the node stayed live with a primary gone")
        .unwrap();
    let promoted = cluster.wait_for_failover(slot, dead).await;
    assert_ne!(promoted, dead);
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(|live| *live))
        .await
        .expect("the node never became live again")
        .unwrap();
    // The node was not live for a while: that is how the gateway learns to repair.
    assert!(node.reconnects() > 0, "the move to the promoted replica is counted");
    got.clear();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match broker.publish(&victim, Bytes::from_static(b"after")).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(
                    matches!(e, BrokerError::Unavailable { .. } | BrokerError::OutcomeUnknown { .. }),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no publish on the promoted replica: {e}"),
        }
    }
    let received = got.wait_for(1).await;
    assert_eq!(received[0], (victim.to_string(), Bytes::from_static(b"after")));
    assert!(cluster.spublish_calls(promoted).await >= 1);
    node.close();
}

/// A cluster configuration that cannot work is refused, naming the key.
#[test]
fn cluster_settings_are_checked() {
    let refused = |config: RedisConfig| match RedisBroker::new(config) {
        Err(BrokerError::Config(e)) => e.to_string(),
        Err(e) => panic!("not a config error: {e}"),
        Ok(_) => panic!("accepted"),
    };
    let nodes = vec!["127.0.0.1:7000".to_string()];
    let e = refused(RedisConfig { cluster_nodes: vec!["nohost".into()], ..Default::default() });
    assert!(e.contains("redis.cluster_nodes"), "{e}");
    let e =
        refused(RedisConfig { cluster_nodes: nodes.clone(), prefix: "a{b}:".into(), ..Default::default() });
    assert!(e.contains("redis.prefix"), "{e}");
    let e = refused(RedisConfig {
        cluster_nodes: nodes,
        sentinel_master: Some("m".into()),
        sentinel_addresses: vec!["127.0.0.1:26379".into()],
        ..Default::default()
    });
    assert!(e.contains("redis.cluster_nodes"), "{e}");
}

/// While a history channel's slot is migrating, its keys already on the importing primary,
/// a history read and a publish are answered there at once: the engine follows `ASK` with
/// `ASKING`, rather than waiting for the migration to end (which here it never would within
/// the response timeout). Once the slot is handed over, everything is where it belongs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_slot_is_asked_of_the_importing_primary() {
    use herald_broker::HistoryOptions;
    use herald_broker::conformance::history::{filter, options, payload};

    let cluster = RedisCluster::start().await;
    let broker = cluster_broker(&cluster);
    let channel = ChannelName::parse("asked.room").unwrap();
    let plain = HistoryOptions { idempotency_key: None, ..options(100) };
    for i in 1..=3 {
        broker.publish_with_history(&channel, &format!("m{i}"), payload(i), &plain).await.unwrap();
    }
    let slot = slot_of(&cluster, &channel).await;
    let from = cluster.primary_of_slot(slot).await;
    let to = cluster.primary_of_slot((slot + 5461) % 16384).await;
    let to = if to == from { cluster.primary_of_slot((slot + 10922) % 16384).await } else { to };
    assert_eq!(cluster.begin_migration(slot, to, Duration::ZERO).await, from);

    let history = broker.history(&channel, &filter(None, None, false)).await.unwrap();
    assert_eq!(history.publications.len(), 3, "read from the importing primary");
    let published = broker.publish_with_history(&channel, "m4", payload(4), &plain).await.unwrap();
    assert_eq!(published.offset, 4);

    cluster.end_migration(slot, from, to).await;
    assert_eq!(cluster.primary_of_slot(slot).await, to);
    let history = broker.history(&channel, &filter(None, None, false)).await.unwrap();
    let offsets: Vec<u64> = history.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [1, 2, 3, 4]);
}

/// A history channel's slot moved to another primary (keys migrated while publishing goes
/// on): every publish ends up in the history with consecutive offsets, the node is
/// resubscribed on the new primary and receives the channel there, and any message its
/// Pub/Sub stream missed falls in a time its status was down, which is when the gateway reads
/// the history for what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_while_publishing_loses_nothing_from_the_history() {
    use herald_broker::HistoryOptions;
    use herald_broker::conformance::history::{filter, options, payload};

    let cluster = RedisCluster::start().await;
    let broker = cluster_broker(&cluster);
    let channel = ChannelName::parse("migrating.room").unwrap();
    let slot = slot_of(&cluster, &channel).await;
    let from = cluster.primary_of_slot(slot).await;
    let to = cluster.primary_of_slot((slot + 5461) % 16384).await;
    let to = if to == from { cluster.primary_of_slot((slot + 10922) % 16384).await } else { to };
    let (node, got) = conformance::node(&broker);
    node.subscribe(&channel).await.unwrap();
    let mut status = node.status();
    tokio::time::timeout(Duration::from_secs(5), status.wait_for(|live| *live)).await.unwrap().unwrap();
    let drops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let (mut status, drops) = (node.status(), drops.clone());
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                if !*status.borrow_and_update() {
                    drops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    const N: usize = 200;
    let publisher = {
        let (broker, channel) = (broker.clone(), channel.clone());
        tokio::spawn(async move {
            for i in 1..=N {
                let keyed = HistoryOptions { idempotency_key: Some(format!("k{i}")), ..options(1000) };
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    match broker.publish_with_history(&channel, &format!("m{i}"), payload(i), &keyed).await {
                        Ok(_) => break,
                        Err(e) if tokio::time::Instant::now() < deadline => {
                            assert!(
                                matches!(
                                    e,
                                    BrokerError::Unavailable { .. } | BrokerError::OutcomeUnknown { .. }
                                ),
                                "{e}"
                            );
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("publish {i} failed for 10 s: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cluster.migrate_slot(slot, to, Duration::from_millis(50)).await, from);
    publisher.await.unwrap();
    assert_eq!(cluster.primary_of_slot(slot).await, to);

    let history = broker.history(&channel, &filter(None, None, false)).await.unwrap();
    let offsets: Vec<u64> = history.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (1..=N as u64).collect::<Vec<_>>(), "every publish once, in order");

    // The node follows the slot: it is live again and receives the channel from its new owner.
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|live| *live)).await.unwrap().unwrap();
    let before = cluster.spublish_calls(to).await;
    broker.publish(&channel, Bytes::from_static(b"after the move")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !got.settled().await.iter().any(|(_, p)| p == "after the move") {
        assert!(tokio::time::Instant::now() < deadline, "nothing arrived from the new owner");
    }
    assert!(cluster.spublish_calls(to).await > before, "published on the new owner");
    let delivered: std::collections::BTreeSet<u64> = got.positions().iter().map(|(_, o, _)| *o).collect();
    let missed = (1..=N as u64).filter(|o| !delivered.contains(o)).count();
    if missed > 0 {
        assert!(
            drops.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "{missed} messages missed and the node never told: no repair would run"
        );
    }
    watcher.abort();
    node.close();
}

/// With no cluster node reachable, publishing and history fail as unavailable within the
/// response timeout (nothing was sent), and a node never reports itself live.
#[tokio::test]
async fn an_unreachable_cluster_is_unavailable_in_time() {
    let port = herald_testkit::free_port();
    let config = RedisConfig {
        cluster_nodes: vec![format!("127.0.0.1:{port}")],
        response_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(config).unwrap());
    let room = ChannelName::parse("nowhere").unwrap();
    let started = tokio::time::Instant::now();
    let err = broker.publish(&room, Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable { .. }), "{err}");
    let err = broker.publish_batch(&[(room.clone(), Bytes::from_static(b"y"))]).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable { .. }), "{err}");
    let filter = herald_broker::conformance::history::filter(None, None, false);
    let err = broker.history(&room, &filter).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable { .. }), "{err}");
    assert!(broker.ping().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let (node, _) = conformance::node(&broker);
    assert!(node.subscribe(&room).await.is_err(), "confirmed without a cluster");
    assert!(!*node.status().borrow());
    node.close();
}
