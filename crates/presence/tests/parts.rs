//! Presence split in parts on a real Redis Cluster, when one primary dies: the parts it
//! serves fail alone. The others apply a report and hand back their events (as
//! `StoreError::Partly`); the same report sent again after the failover is applied by the
//! parts that missed it and skipped by those that had it, so every transition is returned
//! exactly once.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_broker::RedisConfig;
use herald_broker::redis::key_slot;
use herald_presence::model::{Ack, Change, Event, Report, ReportBody};
use herald_presence::store::Timings;
use herald_presence::{PresenceStore, RedisStore, StoreError};
use herald_protocol::{EventsConfig, UserId};
use herald_testkit::RedisCluster;

const PARTS: usize = 16;

fn report(seq: u64, body: ReportBody) -> Report {
    Report { gateway: "gw-a".into(), seq, body }
}

/// Waits until the replica of the primary on `port` has acknowledged everything it wrote.
async fn wait_replicated(cluster: &RedisCluster, port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = cluster.info(port, "replication").await;
        let field = |line: &str, name: &str| -> Option<u64> {
            line.split([',', ':']).find_map(|kv| kv.strip_prefix(&format!("{name}=")))?.trim().parse().ok()
        };
        let primary: Option<u64> = info
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .and_then(|v| v.trim().parse().ok());
        let replica = info.lines().find(|l| l.starts_with("slave0:")).and_then(|l| field(l, "offset"));
        if primary.is_some() && primary == replica {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the replica of {port} never caught up: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_fails_only_its_parts_and_the_retry_applies_each_change_once() {
    let mut cluster = RedisCluster::start().await;
    let config = RedisConfig {
        cluster_nodes: cluster.seeds(),
        response_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let timings = Timings { ttl: Duration::from_secs(60), grace: Duration::from_millis(200) };
    let store = RedisStore::with_parts(config, timings, &EventsConfig::default(), Some(PARTS)).unwrap();
    assert_eq!(store.report(&report(1, ReportBody::Full(vec![]))).await.unwrap().0, Ack::Applied);

    // Users of every part; the primary serving part 0 is killed.
    let users: Vec<UserId> = (0..64).map(|i| UserId::parse(&format!("user-{i}")).unwrap()).collect();
    let part = |u: &UserId| usize::from(key_slot(u.as_str().as_bytes())) % PARTS;
    let slot = cluster.keyslot("herald:{presence:0}:stats").await;
    let dead = cluster.primary_of_slot(slot).await;
    let mut dead_parts = BTreeSet::new();
    for p in 0..PARTS {
        if cluster.primary_of_slot(cluster.keyslot(&format!("herald:{{presence:{p}}}:stats")).await).await
            == dead
        {
            dead_parts.insert(p);
        }
    }
    assert!(dead_parts.len() < PARTS, "the other primaries serve parts too");
    // The replica must have the full report's writes before the kill (replication is
    // asynchronous: without them the promoted replica would rightly ask for a resync).
    wait_replicated(&cluster, dead).await;
    cluster.kill(dead).await;

    let connects: Vec<Change> = users
        .iter()
        .enumerate()
        .map(|(i, u)| Change::Connect { conn: i as u64, user: u.clone(), info: None })
        .collect();
    let batch = report(2, ReportBody::Changes(connects));
    let mut online: Vec<UserId> = Vec::new();
    let collect = |events: Vec<Event>, online: &mut Vec<UserId>| {
        for event in events {
            let Event::Online { user, .. } = event else { panic!("only online events: {event:?}") };
            online.push(user);
        }
    };
    match store.report(&batch).await {
        Err(StoreError::Partly { events, .. }) => collect(events, &mut online),
        other => panic!("expected a partly applied report, got {other:?}"),
    }
    let live: BTreeSet<&UserId> = users.iter().filter(|u| !dead_parts.contains(&part(u))).collect();
    assert_eq!(online.iter().collect::<BTreeSet<_>>(), live, "the live parts' users, and only theirs");

    // After the failover the same report is sent again (as the gateway does).
    cluster.wait_for_failover(slot, dead).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match store.report(&batch).await {
            Ok((ack, events)) => {
                assert_eq!(ack, Ack::Applied, "the replica had the gateway's full state");
                collect(events, &mut online);
                break;
            }
            Err(StoreError::Partly { events, .. }) => collect(events, &mut online),
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sorted = online.clone();
    sorted.sort();
    let mut expected = users.clone();
    expected.sort();
    assert_eq!(sorted, expected, "every user online exactly once over both tries");
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.online_users, stats.connections), (64, 64));
}
