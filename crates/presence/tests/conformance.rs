//! The presence store conformance suite, run against both engines.

use std::sync::{Arc, Mutex};

use herald_broker::RedisConfig;
use herald_presence::conformance::{self, TIMINGS};
use herald_presence::model::{Ack, ChannelPresence, Event, Report, Stats, UserPresence};
use herald_presence::{MemoryStore, PresenceStore, RedisStore, StoreError};
use herald_protocol::{ChannelName, EventKind, EventsConfig, UserId};
use herald_testkit::{RedisCluster, RedisServer};

/// The in-memory engine keeps every promise of the suite, on tokio's paused clock (it keeps
/// time with tokio's `Instant`), so the grace periods and leases take no real time.
#[tokio::test(start_paused = true)]
async fn memory_store_conforms() {
    conformance::run_all(|_: &str| Arc::new(MemoryStore::new(TIMINGS)) as Arc<dyn PresenceStore>).await;
}

/// The Redis engine keeps every promise of the suite, against a real redis-server.
#[tokio::test]
async fn redis_store_conforms() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    conformance::run_all(move |case: &str| {
        let config = RedisConfig { url: url.clone(), prefix: format!("{case}:"), ..Default::default() };
        Arc::new(RedisStore::new(config, TIMINGS).unwrap()) as Arc<dyn PresenceStore>
    })
    .await;
}

/// Split in parts on one Redis, the Redis engine keeps every promise of the suite: each
/// user's keys in the user's part, a report's changes applied part by part.
#[tokio::test]
async fn redis_store_in_parts_conforms() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    conformance::run_all(move |case: &str| {
        let config = RedisConfig { url: url.clone(), prefix: format!("{case}:"), ..Default::default() };
        let store = RedisStore::with_parts(config, TIMINGS, &EventsConfig::default(), Some(5)).unwrap();
        Arc::new(store) as Arc<dyn PresenceStore>
    })
    .await;
}

/// The Redis engine keeps every promise of the suite on a real Redis Cluster (three
/// primaries), in its default 16 parts, each part's scripts routed to the primary of its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms() {
    let cluster = RedisCluster::start().await;
    let seeds = cluster.seeds();
    conformance::run_all(move |case: &str| {
        let config =
            RedisConfig { cluster_nodes: seeds.clone(), prefix: format!("{case}:"), ..Default::default() };
        let store = RedisStore::new(config, TIMINGS).unwrap();
        assert_eq!(store.parts(), 16);
        Arc::new(store) as Arc<dyn PresenceStore>
    })
    .await;
}

/// The Redis engine writes into the backends' event stream exactly the events it returns,
/// each once and in the order returned, whatever the suite does (every case, both kinds of
/// report, sweeps of dead gateways): the stream is checked after every call.
#[tokio::test]
async fn redis_store_streams_exactly_the_events_it_returns() {
    streams_exactly_the_events_it_returns(None).await;
}

/// Split in parts, the engine writes each user's events into the stream of the user's part:
/// the parts' streams, read in part order, gain exactly what each call returned.
#[tokio::test]
async fn redis_store_in_parts_streams_exactly_the_events_it_returns() {
    streams_exactly_the_events_it_returns(Some(3)).await;
}

async fn streams_exactly_the_events_it_returns(parts: Option<usize>) {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let events = EventsConfig { enabled: true, ..Default::default() };
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let checked = Arc::new(Mutex::new(0usize));
    let total = checked.clone();
    conformance::run_all(move |case: &str| {
        let prefix = format!("{case}:");
        let config = RedisConfig { url: url.clone(), prefix: prefix.clone(), ..Default::default() };
        let store = RedisStore::with_parts(config, TIMINGS, &events, parts).unwrap();
        let keys: Vec<String> = match parts {
            None => vec![events.key(EventKind::Online, &prefix, false).unwrap()],
            Some(n) => {
                (0..n).map(|part| events.part_key(EventKind::Online, &prefix, part).unwrap()).collect()
            }
        };
        let last = Mutex::new(vec!["-".to_string(); keys.len()]);
        let turn = tokio::sync::Mutex::new(());
        Arc::new(Streamed { store, turn, conn: conn.clone(), keys, last, checked: total.clone() })
            as Arc<dyn PresenceStore>
    })
    .await;
    assert!(*checked.lock().unwrap() > 20, "the suite makes transitions");
}

/// On a Redis Cluster each part's stream shares the part's slot, so the scripts may write
/// it: the suite passes with every kind streamed, and each stream is on the primary of its
/// part's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_streams_into_each_parts_slot() {
    let cluster = RedisCluster::start().await;
    let seeds = cluster.seeds();
    let events = EventsConfig { enabled: true, ..Default::default() };
    let streamed = events.clone();
    conformance::run_all(move |case: &str| {
        let config =
            RedisConfig { cluster_nodes: seeds.clone(), prefix: format!("{case}:"), ..Default::default() };
        Arc::new(RedisStore::with_events(config, TIMINGS, &streamed).unwrap()) as Arc<dyn PresenceStore>
    })
    .await;
    let mut total = 0;
    for part in 0..16 {
        let key = events.part_key(EventKind::Online, "members:", part).unwrap();
        let primary = cluster.primary_of_slot(cluster.keyslot(&key).await).await;
        let len: u64 = cluster.query(primary, &["XLEN", &key]).await.unwrap();
        total += len;
    }
    assert!(total >= 4, "the members case streams its joins and leaves: {total}");
}

/// With `connect` and `disconnect` among `events.kinds`, each connection a gateway reports
/// opened or closed is one entry (user, gateway, connection), and so is each connection of a
/// gateway whose lease ran out; the other kinds, not listed, write nothing.
#[tokio::test]
async fn redis_store_streams_connects_and_disconnects_when_asked() {
    use herald_presence::model::{Change, ConnState, ReportBody};
    let redis = RedisServer::start().await;
    let config = RedisConfig { url: redis.url(), ..Default::default() };
    let events = EventsConfig {
        enabled: true,
        kinds: vec![EventKind::Connect, EventKind::Disconnect],
        ..Default::default()
    };
    let store = RedisStore::with_events(config, TIMINGS, &events).unwrap();
    let user = |name: &str| UserId::parse(name).unwrap();
    let report = |seq, body| Report { gateway: "gw-a".into(), seq, body };
    let alice = ConnState { conn: 1, user: user("alice"), info: None, channels: vec![] };
    assert_eq!(store.report(&report(0, ReportBody::Full(vec![alice]))).await.unwrap().0, Ack::Applied);
    let changes = vec![
        Change::Connect { conn: 2, user: user("bob"), info: None },
        Change::Disconnect { conn: 1, user: user("alice") },
    ];
    assert_eq!(store.report(&report(1, ReportBody::Changes(changes))).await.unwrap().0, Ack::Applied);
    // The gateway says nothing more: its lease runs out and the sweep closes bob's connection.
    tokio::time::sleep(TIMINGS.ttl + std::time::Duration::from_millis(100)).await;
    store.sweep().await.unwrap();

    let key = events.key(EventKind::Connect, "herald:", false).unwrap();
    let mut conn =
        redis::Client::open(redis.url().as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let got: Vec<Vec<String>> = entries.into_iter().map(|(_, fields)| fields).collect();
    let entry = |kind: &str, user: &str, conn: &str| -> Vec<String> {
        ["type", kind, "user", user, "gateway", "gw-a", "conn", conn].map(String::from).to_vec()
    };
    assert_eq!(
        got,
        [
            entry("connect", "alice", "1"),
            entry("connect", "bob", "2"),
            entry("disconnect", "alice", "1"),
            entry("disconnect", "bob", "2")
        ]
    );
}

/// A store that checks, after each call, that the streams gained exactly the returned events
/// (read in part order, as the engine returns them). Calls that change state take turns
/// (`turn`), so each one's entries are told apart; the other suites run them concurrently.
struct Streamed {
    store: RedisStore,
    turn: tokio::sync::Mutex<()>,
    conn: redis::aio::MultiplexedConnection,
    /// The stream of each part.
    keys: Vec<String>,
    /// The id of the last entry seen in each stream, `-` before the first.
    last: Mutex<Vec<String>>,
    /// Events checked so far, over every case.
    checked: Arc<Mutex<usize>>,
}

impl Streamed {
    async fn check(&self, returned: &[Event]) {
        let mut streamed: Vec<Event> = Vec::new();
        for (i, key) in self.keys.iter().enumerate() {
            let after = self.last.lock().unwrap()[i].clone();
            let start = if after == "-" { after } else { format!("({after}") };
            let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(key)
                .arg(start)
                .arg("+")
                .query_async(&mut self.conn.clone())
                .await
                .unwrap();
            if let Some((id, _)) = entries.last() {
                self.last.lock().unwrap()[i] = id.clone();
            }
            streamed.extend(entries.iter().map(|(_, fields)| decode(fields)));
        }
        assert_eq!(streamed, returned, "the streams gained exactly what the call returned");
        *self.checked.lock().unwrap() += returned.len();
    }
}

/// An entry's fields (`type`, `channel`, `user`, `info`) as the event they record.
fn decode(fields: &[String]) -> Event {
    let field = |name: &str| fields.chunks(2).find(|kv| kv[0] == name).map(|kv| kv[1].clone());
    let user = UserId::parse(&field("user").unwrap()).unwrap();
    let channel = || ChannelName::parse(&field("channel").unwrap()).unwrap();
    let info = field("info").map(Arc::from);
    match field("type").unwrap().as_str() {
        "online" => Event::Online { user, info },
        "offline" => Event::Offline { user },
        "join" => Event::Join { channel: channel(), user, info },
        "leave" => Event::Leave { channel: channel(), user },
        other => panic!("unexpected type {other}"),
    }
}

#[async_trait::async_trait]
impl PresenceStore for Streamed {
    async fn report(&self, report: &Report) -> Result<(Ack, Vec<Event>), StoreError> {
        let _turn = self.turn.lock().await;
        let result = self.store.report(report).await?;
        self.check(&result.1).await;
        Ok(result)
    }

    async fn sweep(&self) -> Result<Vec<Event>, StoreError> {
        let _turn = self.turn.lock().await;
        let events = self.store.sweep().await?;
        self.check(&events).await;
        Ok(events)
    }

    async fn users(&self, users: &[UserId]) -> Result<Vec<UserPresence>, StoreError> {
        self.store.users(users).await
    }

    async fn channel(&self, channel: &ChannelName, limit: usize) -> Result<ChannelPresence, StoreError> {
        self.store.channel(channel, limit).await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        self.store.stats().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    fn name(&self) -> &'static str {
        "redis (streamed)"
    }
}
