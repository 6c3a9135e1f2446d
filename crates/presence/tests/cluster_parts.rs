//! What splitting presence in parts costs and gains on a real Redis Cluster (three
//! primaries): the same workload with one part (every key in the `{presence}` slot) and with
//! the default 16, and for each the Lua script time every primary spent (`INFO
//! commandstats`, `cmdstat_evalsha` and `cmdstat_eval`), the busiest primary's share, and how
//! long reports took. Ignored by default; run with
//! `cargo test --release -p herald-presence --test cluster_parts -- --ignored --nocapture`.
//!
//! The workload: 10 gateways report 2000 users each (connect and subscribe to the gateway's
//! room, in batches of 500 changes), renew their leases 100 times each, then report every
//! user gone; after the grace period the sweeps emit the leaves and offlines.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use herald_broker::RedisConfig;
use herald_presence::model::{Change, Report, ReportBody};
use herald_presence::store::Timings;
use herald_presence::{PresenceStore, RedisStore};
use herald_protocol::{ChannelName, EventsConfig, UserId};
use herald_testkit::RedisCluster;

const GATEWAYS: u64 = 10;
const USERS: u64 = 2000;
const BATCH: u64 = 250;

/// Microseconds of Lua scripts the node on `port` has run.
async fn script_usec(cluster: &RedisCluster, port: u16) -> u64 {
    let stats = cluster.info(port, "commandstats").await;
    let usec = |name: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:")))
            .and_then(|rest| rest.split(',').find_map(|f| f.strip_prefix("usec=")))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    usec("evalsha") + usec("eval")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Script time per primary since the last call, in microseconds.
struct Meter<'a> {
    cluster: &'a RedisCluster,
    primaries: &'a [u16],
    last: Vec<u64>,
}

impl Meter<'_> {
    async fn take(&mut self) -> Vec<u64> {
        let mut now = Vec::new();
        for port in self.primaries {
            now.push(script_usec(self.cluster, *port).await);
        }
        let spent = now.iter().zip(&self.last).map(|(n, l)| n - l).collect();
        self.last = now;
        spent
    }
}

/// `spent` per primary, its total, per `per` operations, and the busiest primary's share.
fn line(what: &str, spent: &[u64], per: u64) -> String {
    let total: u64 = spent.iter().sum();
    let busiest = *spent.iter().max().unwrap();
    format!(
        "  {what}: per primary {spent:?} us, total {total} us = {:.1} us each of {per}, busiest primary {busiest} us ({:.2} of the total)",
        total as f64 / per as f64,
        busiest as f64 / total as f64
    )
}

async fn run(cluster: &RedisCluster, primaries: &[u16], parts: usize) {
    let config =
        RedisConfig { cluster_nodes: cluster.seeds(), prefix: format!("p{parts}:"), ..Default::default() };
    let timings = Timings { ttl: Duration::from_secs(600), grace: Duration::from_millis(500) };
    let store = RedisStore::with_parts(config, timings, &EventsConfig::default(), Some(parts)).unwrap();
    store.ping().await.unwrap();
    for port in primaries {
        let _: () = cluster.query(*port, &["CONFIG", "RESETSTAT"]).await.unwrap();
    }
    let mut meter = Meter { cluster, primaries, last: vec![0; primaries.len()] };
    let started = Instant::now();
    let mut seqs = vec![0u64; GATEWAYS as usize];
    let gw = |g: u64| format!("gw-{g}");
    for g in 0..GATEWAYS {
        let report = Report { gateway: gw(g).into(), seq: 0, body: ReportBody::Full(vec![]) };
        store.report(&report).await.unwrap();
    }
    let user = |g: u64, i: u64| UserId::parse(&format!("user-{g}-{i}")).unwrap();
    let mut batches = Vec::new();
    let send = async |g: u64, seq: u64, changes: Vec<Change>| {
        let report = Report { gateway: gw(g).into(), seq, body: ReportBody::Changes(changes) };
        let at = Instant::now();
        store.report(&report).await.unwrap();
        at.elapsed()
    };
    for g in 0..GATEWAYS {
        let room = ChannelName::parse(&format!("room:g{g}")).unwrap();
        for start in (0..USERS).step_by(BATCH as usize) {
            let mut changes = Vec::new();
            for i in start..start + BATCH {
                changes.push(Change::Connect { conn: i, user: user(g, i), info: None });
                changes.push(Change::Subscribe { conn: i, user: user(g, i), channel: room.clone() });
            }
            seqs[g as usize] += 1;
            batches.push(send(g, seqs[g as usize], changes).await);
        }
    }
    let connected = meter.take().await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.online_users, GATEWAYS * USERS);
    meter.take().await;
    let mut beats = Vec::new();
    for _ in 0..100 {
        for g in 0..GATEWAYS {
            seqs[g as usize] += 1;
            beats.push(send(g, seqs[g as usize], vec![]).await);
        }
    }
    let beaten = meter.take().await;
    for g in 0..GATEWAYS {
        for start in (0..USERS).step_by(BATCH as usize) {
            let changes =
                (start..start + BATCH).map(|i| Change::Disconnect { conn: i, user: user(g, i) }).collect();
            seqs[g as usize] += 1;
            batches.push(send(g, seqs[g as usize], changes).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut events = 0;
    for _ in 0..20 {
        events += store.sweep().await.unwrap().len();
    }
    assert_eq!(events as u64, 2 * GATEWAYS * USERS, "a leave and an offline per user");
    let wall = started.elapsed();
    let left = meter.take().await;
    let changes = 2 * GATEWAYS * USERS;
    println!(
        "parts {parts}: median report of {} changes {:?}, median heartbeat {:?}, wall {wall:?}",
        2 * BATCH,
        median(batches),
        median(beats)
    );
    println!("{}", line("connect + subscribe", &connected, changes));
    println!("{}", line("heartbeats", &beaten, 100 * GATEWAYS));
    println!("{}", line("disconnect + sweep", &left, changes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn presence_parts_spread_the_script_time_over_the_primaries() {
    let cluster = RedisCluster::start().await;
    let mut primaries = BTreeSet::new();
    for slot in [0, 6000, 12000] {
        primaries.insert(cluster.primary_of_slot(slot).await);
    }
    let primaries: Vec<u16> = primaries.into_iter().collect();
    assert_eq!(primaries.len(), 3);
    println!(
        "{GATEWAYS} gateways x {USERS} users: connect + subscribe, 100 heartbeats each, disconnect, sweep"
    );
    for parts in [1, 16, 1, 16] {
        run(&cluster, &primaries, parts).await;
    }
}
