//! Measurements at the scale the issue asks for: 100000 online users over 10 gateways, a
//! 10000-member channel. Ignored by default (it takes a while); run with
//! `cargo test -p herald-presence --test scale -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::RedisConfig;
use herald_presence::model::{Change, ConnState, Report, ReportBody};
use herald_presence::{PresenceStore, RedisStore};
use herald_protocol::{ChannelName, UserId};
use herald_testkit::RedisServer;

const GATEWAYS: u64 = 10;
const PER_GATEWAY: u64 = 10_000;

async fn used_memory(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    format!("p50 {:?}, p99 {:?}, max {:?} (n={})", at(0.5), at(0.99), at(1.0), samples.len())
}

fn user(i: u64) -> UserId {
    UserId::parse(&format!("user-{i:06}")).unwrap()
}

/// Records Redis memory per online user, the cost of a heartbeat and of a batch, and query
/// latencies at 100000 online users with a 10000-member channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn presence_at_scale() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let timings =
        herald_presence::store::Timings { ttl: Duration::from_secs(600), grace: Duration::from_secs(3) };
    let store: Arc<dyn PresenceStore> =
        Arc::new(RedisStore::new(RedisConfig { url: url.clone(), ..Default::default() }, timings).unwrap());
    store.ping().await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(5000)
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg(100_000)
        .query_async(&mut admin)
        .await
        .unwrap();
    let before = used_memory(&url).await;

    let big = ChannelName::parse("room:big").unwrap();
    let mut full_times = Vec::new();
    for gw in 0..GATEWAYS {
        let conns = (0..PER_GATEWAY)
            .map(|c| {
                let i = gw * PER_GATEWAY + c;
                let mut channels = vec![ChannelName::parse(&format!("room:g{}", i / 100)).unwrap()];
                if i.is_multiple_of(10) {
                    channels.push(big.clone());
                }
                ConnState {
                    conn: c,
                    user: user(i),
                    info: Some(format!(r#"{{"name":"User {i}"}}"#).into()),
                    channels,
                }
            })
            .collect();
        let report = Report { gateway: format!("gw-{gw}").into(), seq: 1, body: ReportBody::Full(conns) };
        let started = Instant::now();
        store.report(&report).await.unwrap();
        full_times.push(started.elapsed());
    }
    let after = used_memory(&url).await;
    let stats = store.stats().await.unwrap();
    println!("online users {}, connections {}", stats.online_users, stats.connections);
    println!(
        "redis used_memory: {} bytes before, {} after: {} bytes per online user (1 connection, 1-2 channels, info ~20 B)",
        before,
        after,
        (after - before) / (GATEWAYS * PER_GATEWAY)
    );
    println!("full-state report of a gateway with {PER_GATEWAY} connections: {}", percentiles(full_times));

    let mut beats = Vec::new();
    for round in 0..50 {
        for gw in 0..GATEWAYS {
            let beat =
                Report { gateway: format!("gw-{gw}").into(), seq: 1, body: ReportBody::Changes(vec![]) };
            let started = Instant::now();
            store.report(&beat).await.unwrap();
            beats.push(started.elapsed());
        }
        let _ = round;
    }
    println!(
        "heartbeat (lease renewal, no changes) of a {PER_GATEWAY}-connection gateway: {}",
        percentiles(beats)
    );
    let small: Vec<ConnState> = (0..10)
        .map(|c| ConnState { conn: c, user: user(500_000 + c), info: None, channels: vec![] })
        .collect();
    store
        .report(&Report { gateway: "gw-small".into(), seq: 1, body: ReportBody::Full(small) })
        .await
        .unwrap();
    let mut small_beats = Vec::new();
    for _ in 0..500 {
        let beat = Report { gateway: "gw-small".into(), seq: 1, body: ReportBody::Changes(vec![]) };
        let started = Instant::now();
        store.report(&beat).await.unwrap();
        small_beats.push(started.elapsed());
    }
    println!("heartbeat of a 10-connection gateway, for comparison: {}", percentiles(small_beats));

    let mut batches = Vec::new();
    for seq in 2..52u64 {
        let base = 1_000_000 + seq * 100;
        let mut changes = Vec::new();
        for c in base..base + 50 {
            changes.push(Change::Connect { conn: c, user: user(c), info: None });
            changes.push(Change::Subscribe {
                conn: c,
                user: user(c),
                channel: ChannelName::parse("room:churn").unwrap(),
            });
        }
        let prev = base - 100;
        if seq > 2 {
            for c in prev..prev + 50 {
                changes.push(Change::Disconnect { conn: c, user: user(c) });
            }
        }
        let report = Report { gateway: "gw-0".into(), seq, body: ReportBody::Changes(changes) };
        let started = Instant::now();
        store.report(&report).await.unwrap();
        batches.push(started.elapsed());
    }
    println!("batch of 150 changes (50 connects, 50 subscribes, 50 disconnects): {}", percentiles(batches));

    let mut lookups = Vec::new();
    for i in 0..1000 {
        let started = Instant::now();
        store.users(&[user(i * 97 % (GATEWAYS * PER_GATEWAY))]).await.unwrap();
        lookups.push(started.elapsed());
    }
    println!("user lookup: {}", percentiles(lookups));
    let many: Vec<UserId> = (0..1000).map(|i| user(i * 89)).collect();
    let mut bulk = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let found = store.users(&many).await.unwrap();
        bulk.push(started.elapsed());
        assert!(found.iter().all(|u| u.online));
    }
    println!("bulk lookup of 1000 users: {}", percentiles(bulk));
    let mut members = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let list = store.channel(&big, 10_000).await.unwrap();
        members.push(started.elapsed());
        assert_eq!((list.count, list.members.len()), (10_000, 10_000));
    }
    println!("member list of the 10000-member channel (all listed, with info): {}", percentiles(members));
    let mut counts_only = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        assert_eq!(store.channel(&big, 0).await.unwrap().count, 10_000);
        counts_only.push(started.elapsed());
    }
    println!("count alone of the 10000-member channel (limit 0): {}", percentiles(counts_only));
    let small = ChannelName::parse("room:g5").unwrap();
    let mut small_lists = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        assert_eq!(store.channel(&small, 10_000).await.unwrap().count, 100);
        small_lists.push(started.elapsed());
    }
    println!("member list of a 100-member channel: {}", percentiles(small_lists));
    let mut counts = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        store.stats().await.unwrap();
        counts.push(started.elapsed());
    }
    println!("stats: {}", percentiles(counts));

    // One gateway with 10000 connections dies: how long the sweep that removes it takes.
    let short = RedisStore::new(
        RedisConfig { url: url.clone(), ..Default::default() },
        herald_presence::store::Timings { ttl: Duration::from_millis(1), grace: Duration::from_secs(3) },
    )
    .unwrap();
    let beat = Report { gateway: "gw-9".into(), seq: 1, body: ReportBody::Changes(vec![]) };
    short.report(&beat).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = Instant::now();
    short.sweep().await.unwrap();
    println!("sweep removing a dead gateway with {PER_GATEWAY} connections: {:?}", started.elapsed());
    // Their `leave` and `offline` events are due after the grace period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let events = short.sweep().await.unwrap();
    let leaves = events.iter().filter(|e| matches!(e, herald_presence::model::Event::Leave { .. })).count();
    let offline = events.len() - leaves;
    println!(
        "sweep emitting the events due after the grace period: {:?} ({leaves} leave, {offline} offline)",
        started.elapsed()
    );

    // How long Redis was held by one command: every run slower than 5 ms, from the slow log.
    let slow: Vec<redis::Value> =
        redis::cmd("SLOWLOG").arg("GET").arg(100_000).query_async(&mut admin).await.unwrap();
    let mut durations: Vec<i64> = slow
        .iter()
        .filter_map(|entry| match entry {
            redis::Value::Array(fields) => match fields.get(2) {
                Some(redis::Value::Int(us)) => Some(*us),
                _ => None,
            },
            _ => None,
        })
        .collect();
    durations.sort_unstable();
    println!(
        "redis commands slower than 5 ms during the whole run: {}, longest {} us",
        durations.len(),
        durations.last().copied().unwrap_or(0)
    );
}
