//! The backends' event stream (`[events]`, `docs/events.md`) end to end: a real `herald
//! presence` process writing into a real Redis, gateways whose clients make the events, and
//! backends reading the stream with a consumer group (`XREADGROUP`, `XACK`, `XAUTOCLAIM`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::presence_support::*;
use herald_broker::{Broker, RedisBroker};
use herald_testkit::{RedisServer, WsClient};
use redis::aio::MultiplexedConnection;
use tokio::sync::oneshot;

/// The stream's key with the default `redis.prefix` and `events.stream`.
const STREAM: &str = "herald:events";
const GROUP: &str = "backend";

/// An event as a backend sees it: `(type, user, channel)`, the channel empty for online and
/// offline.
type Seen = (String, String, String);

/// `herald presence` with the test timings and namespaces and `[events]` on, configured as a
/// deployment would be (`HERALD_*` variables), ready; with its gRPC endpoint for gateways.
async fn presence_process(redis_url: &str) -> (PresenceProcess, String) {
    let c = config();
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let timings =
        [ms(c.ttl), ms(c.heartbeat_interval), ms(c.flush_interval), ms(c.sweep_interval), ms(c.grace)];
    let env = [
        ("HERALD_REDIS__RESPONSE_TIMEOUT", "500ms"),
        ("HERALD_REDIS__RECONNECT_MAX", "300ms"),
        ("HERALD_PRESENCE__TTL", timings[0].as_str()),
        ("HERALD_PRESENCE__HEARTBEAT_INTERVAL", &timings[1]),
        ("HERALD_PRESENCE__FLUSH_INTERVAL", &timings[2]),
        ("HERALD_PRESENCE__SWEEP_INTERVAL", &timings[3]),
        ("HERALD_PRESENCE__GRACE", &timings[4]),
        ("HERALD_NAMESPACES__ROOM__JOIN_LEAVE", "true"),
        ("HERALD_NAMESPACES__QUIET__PRESENCE", "false"),
        ("HERALD_NAMESPACES__CHAT__SUBSCRIBE", "true"),
        ("HERALD_EVENTS__ENABLED", "true"),
    ];
    let presence = PresenceProcess::start(redis_url, &env).await;
    let endpoint = format!("http://{}", presence.grpc);
    (presence, endpoint)
}

async fn redis_conn(url: &str) -> MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// One stream entry: its id and its fields.
type Entry = (String, Vec<String>);

fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a str> {
    fields.chunks(2).find(|kv| kv[0] == name).map(|kv| kv[1].as_str())
}

fn seen(fields: &[String]) -> Seen {
    let f = |name| field(fields, name).unwrap_or_default().to_string();
    (f("type"), f("user"), f("channel"))
}

/// What each user of the scenario causes: online, join of its room, leave, offline. The
/// subscription in `quiet` (presence off) causes nothing.
fn expected(users: &[(String, String)]) -> Vec<Seen> {
    let mut all: Vec<Seen> = users
        .iter()
        .flat_map(|(user, room)| {
            [
                ("online".to_string(), user.clone(), String::new()),
                ("join".to_string(), user.clone(), room.clone()),
                ("leave".to_string(), user.clone(), room.clone()),
                ("offline".to_string(), user.clone(), String::new()),
            ]
        })
        .collect();
    all.sort();
    all
}

/// Each of `users` connects, joins its room and a `quiet` channel, and leaves once presence
/// shows it in the room.
async fn visit(gateway: &TestGateway, api: &Api, users: &[(String, String)]) {
    let mut clients: Vec<WsClient> = Vec::new();
    for (user, room) in users {
        let mut client = gateway.connect(user).await;
        client.subscribe(room).await.unwrap();
        client.subscribe("quiet:hall").await.unwrap();
        clients.push(client);
    }
    for (user, room) in users {
        api.wait_channel(room, bound(), |c| {
            c["members"].as_array().is_some_and(|m| m.iter().any(|m| m["user"] == user.as_str()))
        })
        .await;
    }
    for client in clients {
        client.close().await;
    }
}

/// What the group processed: how often each entry id, and what each entry was.
#[derive(Default)]
struct Processed {
    times: BTreeMap<String, usize>,
    events: HashMap<String, Seen>,
}

/// Processes `entries` (records each) and acknowledges them, one by one.
async fn process(conn: &mut MultiplexedConnection, entries: &[Entry], done: &Mutex<Processed>) {
    for (id, fields) in entries {
        {
            let mut done = done.lock().unwrap();
            *done.times.entry(id.clone()).or_default() += 1;
            done.events.insert(id.clone(), seen(fields));
        }
        let acked: u64 = redis::cmd("XACK").arg(STREAM).arg(GROUP).arg(id).query_async(conn).await.unwrap();
        assert_eq!(acked, 1, "{id} was pending for this worker");
    }
}

/// New entries for `consumer`, at most `count`, waiting up to 100 ms for some.
async fn read_new(conn: &mut MultiplexedConnection, consumer: &str, count: usize) -> Vec<Entry> {
    let reply: Option<Vec<(String, Vec<Entry>)>> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(100)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
    reply.into_iter().flatten().flat_map(|(_, entries)| entries).collect()
}

/// A worker that processes `before_death` events and then dies holding the next batch it
/// reads: the batch is delivered to it (pending, unacknowledged) and never processed. Sends
/// the ids it held when it died.
async fn doomed_worker(
    url: String,
    before_death: usize,
    done: Arc<Mutex<Processed>>,
    died: oneshot::Sender<Vec<String>>,
) {
    let mut conn = redis_conn(&url).await;
    let mut processed = 0;
    loop {
        let batch = read_new(&mut conn, "doomed", 3).await;
        if batch.is_empty() {
            continue;
        }
        if processed >= before_death {
            // Killed here: the connection goes with the task, nothing is acknowledged.
            let _ = died.send(batch.into_iter().map(|(id, _)| id).collect());
            return;
        }
        process(&mut conn, &batch, &done).await;
        processed += batch.len();
    }
}

/// A worker that takes over what a dead worker left (`XAUTOCLAIM` of entries idle for 2 s,
/// far longer than a live worker takes between reading an entry and acknowledging it)
/// and reads new entries, until it is stopped. Returns the ids it claimed.
async fn survivor_worker(url: String, done: Arc<Mutex<Processed>>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut conn = redis_conn(&url).await;
    let mut claimed_ids = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (_, claimed, _): (String, Vec<Entry>, Vec<String>) = redis::cmd("XAUTOCLAIM")
            .arg(STREAM)
            .arg(GROUP)
            .arg("survivor")
            .arg(2000)
            .arg("0-0")
            .arg("COUNT")
            .arg(100)
            .query_async(&mut conn)
            .await
            .unwrap();
        claimed_ids.extend(claimed.iter().map(|(id, _)| id.clone()));
        process(&mut conn, &claimed, &done).await;
        let batch = read_new(&mut conn, "survivor", 3).await;
        process(&mut conn, &batch, &done).await;
    }
    claimed_ids
}

/// A consumer group of two workers reads the stream while clients come and go; one worker
/// dies mid-way holding unacknowledged events, the other claims them: in the end every event
/// of the scenario (counted from what the clients did) was processed by the group exactly
/// once, and nothing else was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_processes_every_event_once_though_a_worker_dies() {
    let redis = RedisServer::start().await;
    let (presence, endpoint) = presence_process(&redis.url()).await;
    let http = presence.http;
    let api = Api::new(http);
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(redis_config(&redis.url())).unwrap());
    let gateway = TestGateway::start(broker, &endpoint).await;
    let mut admin = redis_conn(&redis.url()).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await
        .unwrap();

    let done = Arc::new(Mutex::new(Processed::default()));
    let (died, death) = oneshot::channel();
    let doomed = tokio::spawn(doomed_worker(redis.url(), 4, done.clone(), died));
    let stop = Arc::new(AtomicBool::new(false));
    let survivor = tokio::spawn(survivor_worker(redis.url(), done.clone(), stop.clone()));

    let users = |range: std::ops::Range<usize>| -> Vec<(String, String)> {
        range.map(|i| (format!("u{i}"), format!("room:r{}", i % 3))).collect()
    };
    let (first, second) = (users(0..8), users(8..16));
    visit(&gateway, &api, &first).await;
    let held = tokio::time::timeout(bound() * 2, death).await.expect("the doomed worker died").unwrap();
    doomed.await.unwrap();
    assert!(!held.is_empty());
    // Its events wait, pending for it, for someone to claim them.
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(100)
        .arg("doomed")
        .query_async(&mut admin)
        .await
        .unwrap();
    let pending: Vec<String> = pending.into_iter().map(|(id, ..)| id).collect();
    assert_eq!(pending, held, "what the dead worker held is pending for it");
    visit(&gateway, &api, &second).await;

    let scenario = expected(&[first, second].concat());
    let deadline = tokio::time::Instant::now() + bound() * 3;
    while done.lock().unwrap().times.len() < scenario.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "processed {} of {} events",
            done.lock().unwrap().times.len(),
            scenario.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Whatever would come late (a second entry for a transition) shows within a grace period.
    tokio::time::sleep(config().grace + config().sweep_interval * 3).await;
    stop.store(true, Ordering::Relaxed);
    let claimed = survivor.await.unwrap();

    let pending: redis::Value =
        redis::cmd("XPENDING").arg(STREAM).arg(GROUP).query_async(&mut admin).await.unwrap();
    let redis::Value::Array(summary) = pending else { panic!("XPENDING replied {pending:?}") };
    assert_eq!(summary.first(), Some(&redis::Value::Int(0)), "nothing is left pending");
    let done = done.lock().unwrap();
    let twice: Vec<_> = done.times.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    let mut processed: Vec<Seen> = done.events.values().cloned().collect();
    processed.sort();
    assert_eq!(processed, scenario, "the group processed exactly the scenario's events");
    for id in &held {
        assert!(claimed.contains(id), "{id}, held by the dead worker, was claimed by the survivor");
    }
}

/// Redis restarted from its append-only file (`appendfsync always`) after a SIGKILL in the
/// middle of a scenario: every event Herald acted on before the kill (published on Pub/Sub,
/// which presence does only after the script that wrote the entry returned) is in the
/// stream afterwards, and every entry read from the stream before the kill is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_missing_after_redis_restarts_from_its_aof() {
    let mut redis = RedisServer::start_persistent().await;
    let (_presence, endpoint) = presence_process(&redis.url()).await;
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(redis_config(&redis.url())).unwrap());
    let (pubsub, _sub) = Collector::subscribe(&broker, EVENTS).await;
    let gateway = Arc::new(TestGateway::start(broker.clone(), &endpoint).await);

    // Users keep coming (online, join) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let arrivals = tokio::spawn({
        let (gateway, stop) = (gateway.clone(), stop.clone());
        async move {
            let mut clients = Vec::new();
            for i in 0..200 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let token = token(&format!("a{i}"), None);
                if let Ok((mut client, _)) =
                    WsClient::connect(&format!("ws://{}/ws?token={token}", gateway.addr)).await
                {
                    let _ = client.subscribe("room:busy").await;
                    clients.push(client);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            clients
        }
    });
    let deadline = tokio::time::Instant::now() + bound();
    while pubsub.all().len() < 10 {
        assert!(tokio::time::Instant::now() < deadline, "no online events: {:?}", pubsub.all());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = redis_conn(&redis.url()).await;
    let before: Vec<Entry> =
        redis::cmd("XRANGE").arg(STREAM).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let acted_on = pubsub.all();
    redis.kill().await;
    redis.restart().await;
    stop.store(true, Ordering::Relaxed);
    let _clients = arrivals.await.unwrap();

    let mut conn = redis_conn(&redis.url()).await;
    let after: Vec<Entry> =
        redis::cmd("XRANGE").arg(STREAM).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    assert!(after.len() >= before.len());
    assert_eq!(
        after[..before.len()],
        before[..],
        "every entry read before the kill is still there, in order"
    );
    let online: Vec<&str> = after
        .iter()
        .filter(|(_, f)| field(f, "type") == Some("online"))
        .filter_map(|(_, f)| field(f, "user"))
        .collect();
    for event in &acted_on {
        assert_eq!(event["type"], "online", "{event}");
        let user = event["user"].as_str().unwrap();
        assert!(online.contains(&user), "online of {user} was acted on but is not in the stream");
    }
    assert!(acted_on.len() >= 10);
}

/// Client publishes into a namespace with `events = true` reach the stream: every publish a
/// client was answered `published` for is there (with its message id, sender and data), also
/// after Redis is killed and restarted from its append-only file; publishes into a namespace
/// without `events` are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_client_publish_is_in_the_stream_after_a_restart() {
    let mut redis = RedisServer::start_persistent().await;
    let env = [
        ("HERALD_EVENTS__ENABLED", "true"),
        ("HERALD_NAMESPACES__CHAT__PUBLISH", "true"),
        ("HERALD_NAMESPACES__CHAT__EVENTS", "true"),
        ("HERALD_NAMESPACES__TALK__PUBLISH", "true"),
    ];
    let gateway = crate::common::GatewayProcess::start(&redis.url(), &env).await;
    let (mut client, _) = WsClient::connect(&gateway.url("poster")).await.unwrap();
    let mut acknowledged = BTreeMap::new();
    for i in 0..20 {
        let channel = if i % 4 == 3 { "talk:a" } else { "chat:a" };
        let reply = client
            .request(serde_json::json!({"type": "publish", "id": i, "channel": channel, "data": {"n": i}}))
            .await
            .unwrap();
        assert_eq!(reply["type"], "published", "{reply}");
        if channel == "chat:a" {
            acknowledged.insert(reply["message_id"].as_str().unwrap().to_string(), i);
        }
    }
    redis.kill().await;
    redis.restart().await;

    let mut conn = redis_conn(&redis.url()).await;
    let entries: Vec<Entry> =
        redis::cmd("XRANGE").arg(STREAM).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let mut streamed = BTreeMap::new();
    for (_, fields) in &entries {
        assert_eq!(field(fields, "type"), Some("publish"));
        assert_eq!(field(fields, "channel"), Some("chat:a"), "talk has no events");
        assert_eq!(field(fields, "user"), Some("poster"));
        let data: serde_json::Value = serde_json::from_str(field(fields, "data").unwrap()).unwrap();
        streamed.insert(field(fields, "message_id").unwrap().to_string(), data["n"].as_i64().unwrap());
    }
    assert_eq!(streamed, acknowledged, "each acknowledged publish once, with its data");
}

/// A client publish whose event cannot be written (the stream's key holds a string, so
/// `XADD` fails) is refused with `unavailable` and delivered to no one; once the key is
/// usable again, publishing works and the subscriber gets only that message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_event_cannot_be_written_is_refused_and_not_delivered() {
    let redis = RedisServer::start().await;
    let env = [
        ("HERALD_EVENTS__ENABLED", "true"),
        ("HERALD_NAMESPACES__CHAT__PUBLISH", "true"),
        ("HERALD_NAMESPACES__CHAT__EVENTS", "true"),
    ];
    let gateway = crate::common::GatewayProcess::start(&redis.url(), &env).await;
    let (mut listener, _) = WsClient::connect(&gateway.url("listener")).await.unwrap();
    listener.subscribe("chat:a").await.unwrap();
    let (mut poster, _) = WsClient::connect(&gateway.url("poster")).await.unwrap();
    let mut conn = redis_conn(&redis.url()).await;
    let _: () = redis::cmd("SET").arg(STREAM).arg("not a stream").query_async(&mut conn).await.unwrap();

    let publish =
        |n: i64| serde_json::json!({"type": "publish", "id": n, "channel": "chat:a", "data": {"n": n}});
    let reply = poster.request(publish(1)).await.unwrap();
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "unavailable", "{reply}");

    let _: () = redis::cmd("DEL").arg(STREAM).query_async(&mut conn).await.unwrap();
    let reply = poster.request(publish(2)).await.unwrap();
    assert_eq!(reply["type"], "published", "{reply}");
    let got = crate::common::recv_messages(&mut listener, 1).await;
    assert_eq!(got[0]["data"]["n"], 2, "the refused publish was not delivered: {got:?}");
    let len: u64 = redis::cmd("XLEN").arg(STREAM).query_async(&mut conn).await.unwrap();
    assert_eq!(len, 1, "only the published message is in the stream");
}
