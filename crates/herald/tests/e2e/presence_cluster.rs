//! Presence end to end: a real redis-server, presence replicas on their own listeners, two
//! in-process gateways reporting to them over gRPC, real WebSocket clients.

use std::sync::Arc;
use std::time::Duration;

use crate::presence_support::*;
use herald_broker::{Broker, RedisBroker};
use herald_testkit::RedisServer;
use serde_json::json;

struct Setup {
    redis: RedisServer,
    broker: Arc<dyn Broker>,
    replicas: Vec<Replica>,
    gateways: Vec<TestGateway>,
    api: Api,
}

/// `replicas` presence replicas and two gateways; gateway `i` reports to replica `i % replicas`.
async fn setup(replicas: usize) -> Setup {
    let redis = RedisServer::start().await;
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(redis_config(&redis.url())).unwrap());
    let mut started = Vec::new();
    for _ in 0..replicas {
        started.push(Replica::start(&redis.url()).await);
    }
    let mut gateways = Vec::new();
    for i in 0..2 {
        gateways.push(TestGateway::start(broker.clone(), &started[i % replicas].endpoint()).await);
    }
    let api = Api::new(started[0].http);
    Setup { redis, broker, replicas: started, gateways, api }
}

/// A user on both gateways is one online user with two connections; closing one keeps them
/// online and in the channel; closing both sends exactly one leave and one offline event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_two_gateways_is_counted_once_and_leaves_once() {
    let s = setup(1).await;
    let (events, _sub) = Collector::subscribe(&s.broker, EVENTS).await;
    let mut watcher = s.gateways[1].connect("watcher").await;
    watcher.subscribe("room:lobby").await.unwrap();
    let info = json!({"name": "Alice"});
    let mut a0 = s.gateways[0].connect_with_info("alice", info.clone()).await;
    let mut a1 = s.gateways[1].connect_with_info("alice", info.clone()).await;
    a0.subscribe("room:lobby").await.unwrap();
    a1.subscribe("room:lobby").await.unwrap();

    let join = loop {
        let frame = next_of(&mut watcher, "join").await;
        if frame["user"] == "alice" {
            break frame;
        }
    };
    assert_eq!(join, json!({"type": "join", "channel": "room:lobby", "user": "alice", "info": info}));
    let alice = s.api.wait_user("alice", bound(), |u| u["connections"] == 2).await;
    assert_eq!(alice["online"], true);
    assert_eq!(alice["gateways"].as_array().unwrap().len(), 2);
    let (_, stats) = s.api.get("/v1/presence/stats").await;
    assert_eq!(stats, json!({"online_users": 2, "connections": 3}));
    let alice_in = |c: &serde_json::Value| {
        c["members"].as_array().unwrap().iter().find(|m| m["user"] == "alice").cloned().unwrap_or_default()
    };
    let lobby = s.api.wait_channel("room:lobby", bound(), |c| alice_in(c)["connections"] == 2).await;
    assert_eq!(lobby["count"], 2);
    let member = alice_in(&lobby);
    assert_eq!(member, json!({"user": "alice", "connections": 2, "info": {"name": "Alice"}}));

    a0.close().await;
    s.api.wait_user("alice", bound(), |u| u["connections"] == 1).await;
    a1.close().await;
    s.api.wait_user("alice", bound(), |u| u["online"] == false).await;
    events.wait_for("offline", "alice", bound()).await;
    let frames = drain(&mut watcher, config().grace + Duration::from_millis(500)).await;
    let mut leaves: Vec<_> = frames.iter().filter(|f| f["type"] == "leave").collect();
    leaves.retain(|f| f["user"] == "alice");
    assert_eq!(leaves.len(), 1, "exactly one leave: {frames:?}");
    assert_eq!(*leaves[0], json!({"type": "leave", "channel": "room:lobby", "user": "alice"}));
    let joins = frames.iter().filter(|f| f["type"] == "join" && f["user"] == "alice").count();
    assert_eq!(joins, 0, "no join while alice was still there: {frames:?}");
    assert_eq!(events.count("online", "alice"), 1, "{:?}", events.all());
    assert_eq!(events.count("offline", "alice"), 1, "{:?}", events.all());
    assert_eq!(
        events.all().iter().find(|e| e["type"] == "online" && e["user"] == "alice").unwrap()["info"],
        info
    );

    let metrics = format!("http://{}/metrics", s.replicas[0].http);
    let metrics = reqwest::get(metrics).await.unwrap().text().await.unwrap();
    for expected in [
        r#"herald_presence_reports_total{outcome="ok"}"#,
        r#"herald_presence_events_total{kind="offline"} 1"#,
        "herald_presence_online_users 1",
        "herald_presence_connections 1",
    ] {
        assert!(metrics.contains(expected), "{expected} missing from\n{metrics}");
    }
}

/// A reconnect within the grace period (even to the other gateway) that subscribes again emits
/// no offline/online pair, and the channel's subscribers see neither a leave nor a join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_within_grace_does_not_flap() {
    let s = setup(1).await;
    let (events, _sub) = Collector::subscribe(&s.broker, EVENTS).await;
    let mut watcher = s.gateways[1].connect("watcher").await;
    watcher.subscribe("room:lobby").await.unwrap();
    let mut first = s.gateways[0].connect("bob").await;
    first.subscribe("room:lobby").await.unwrap();
    events.wait_for("online", "bob", bound()).await;
    while next_of(&mut watcher, "join").await["user"] != "bob" {}
    first.close().await;
    let mut second = s.gateways[1].connect("bob").await;
    second.subscribe("room:lobby").await.unwrap();
    // Long enough for the sweeper (which holds off for one ttl after start) to have emitted a
    // leave, had there been one.
    let c = config();
    let frames = drain(&mut watcher, c.ttl + c.grace * 2 + c.sweep_interval * 2).await;
    let flaps: Vec<_> = frames.iter().filter(|f| f["user"] == "bob").collect();
    assert!(flaps.is_empty(), "no leave and no second join for bob: {flaps:?}");
    s.api.wait_user("bob", bound(), |u| u["connections"] == 1).await;
    assert_eq!(events.count("online", "bob"), 1, "{:?}", events.all());
    assert_eq!(events.count("offline", "bob"), 0, "{:?}", events.all());
}

/// A client in a namespace with `client_presence` gets the channel's members, with their
/// token info; channels of namespaces with `join_leave = false` get no join/leave frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_members_and_join_leave_follows_the_namespace() {
    let s = setup(1).await;
    let mut carol = s.gateways[0].connect_with_info("carol", json!({"name": "Carol"})).await;
    carol.subscribe("room:x").await.unwrap();
    carol.subscribe("chat:x").await.unwrap();
    let mut dan = s.gateways[1].connect("dan").await;
    dan.subscribe("room:x").await.unwrap();
    dan.subscribe("chat:x").await.unwrap();
    let deadline = tokio::time::Instant::now() + bound();
    let members = loop {
        let reply = carol.request(json!({"type": "presence", "id": 1, "channel": "room:x"})).await.unwrap();
        if reply["type"] == "presence" && reply["members"].as_array().map(Vec::len) == Some(2) {
            break reply["members"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "members never complete: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        members,
        json!([{"user": "carol", "connections": 1, "info": {"name": "Carol"}}, {"user": "dan", "connections": 1}])
    );
    // Both of chat:x's members are tracked by default; gateway 0 may report carol's chat:x
    // subscription in a later batch than dan's arrival in room:x.
    s.api.wait_channel("chat:x", bound(), |c| c["count"] == 2).await;
    dan.close().await;
    s.api.wait_user("dan", bound(), |u| u["online"] == false).await;
    // The leave follows the grace period, in room:x only.
    let leave = next_of(&mut carol, "leave").await;
    assert_eq!(leave, json!({"type": "leave", "channel": "room:x", "user": "dan"}));
    let c = config();
    let frames = drain(&mut carol, c.grace + c.sweep_interval * 3).await;
    assert!(frames.iter().all(|f| f["type"] != "leave"), "one leave, in room:x only: {frames:?}");
}

/// With two presence replicas (each gateway reporting to its own) every transition is emitted
/// once; a replica stopped and restarted meanwhile leaves the state converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_emit_each_event_once_and_converge_after_a_restart() {
    let mut s = setup(2).await;
    let (events, _sub) = Collector::subscribe(&s.broker, EVENTS).await;
    let mut watcher = s.gateways[0].connect("watcher").await;
    watcher.subscribe("room:r").await.unwrap();
    let mut clients = Vec::new();
    for (i, user) in ["u1", "u2", "u3", "u4"].iter().enumerate() {
        let mut client = s.gateways[i % 2].connect(user).await;
        client.subscribe("room:r").await.unwrap();
        clients.push(client);
    }
    for user in ["u1", "u2", "u3", "u4"] {
        events.wait_for("online", user, bound()).await;
    }
    for client in clients.drain(..2) {
        client.close().await;
    }
    for user in ["u1", "u2"] {
        events.wait_for("offline", user, bound()).await;
    }

    s.replicas[1].stop().await;
    let late = s.gateways[1].connect("u5").await;
    clients.pop().unwrap().close().await; // u4, on gateway 1
    s.replicas[1].resume().await;
    events.wait_for("offline", "u4", bound() * 2).await;
    events.wait_for("online", "u5", bound() * 2).await;
    s.api.wait_user("u5", bound(), |u| u["online"] == true).await;
    s.api.wait_user("u4", bound(), |u| u["online"] == false).await;
    s.api.wait_user("u3", bound(), |u| u["connections"] == 1).await;
    let (_, stats) = s.api.get("/v1/presence/stats").await;
    assert_eq!(stats, json!({"online_users": 3, "connections": 3}), "watcher, u3, u5");
    // Every leave arrives, then a while longer in which a second one would show.
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + bound();
    for user in ["u1", "u2", "u4"] {
        while !frames.iter().any(|f: &serde_json::Value| f["type"] == "leave" && f["user"] == user) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = watcher.recv_within(left).await.unwrap_or_else(|e| panic!("no leave of {user}: {e}"));
            frames.push(frame);
        }
    }
    frames.extend(drain(&mut watcher, config().grace + config().sweep_interval * 3).await);
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        assert_eq!(events.count("online", user), 1, "{user}: {:?}", events.all());
        assert_eq!(events.count("offline", user), usize::from(["u1", "u2", "u4"].contains(&user)), "{user}");
    }
    for user in ["u1", "u2", "u4"] {
        let leaves = frames.iter().filter(|f| f["type"] == "leave" && f["user"] == user).count();
        assert_eq!(leaves, 1, "{user}: {frames:?}");
    }
    drop(late);
}

/// With the presence service stopped, clients still connect and get messages; changes made
/// meanwhile are reported when it is back, and the state is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_goes_on_while_presence_is_down_and_state_is_right_after() {
    let mut s = setup(1).await;
    let leaving = s.gateways[0].connect("erin").await;
    s.api.wait_user("erin", bound(), |u| u["online"] == true).await;

    s.replicas[0].stop().await;
    let mut fay = s.gateways[1].connect("fay").await;
    fay.subscribe("room:down").await.unwrap();
    leaving.close().await;
    let payload = br#"{"type":"message","channel":"room:down","data":1}"#;
    s.broker.publish(&"room:down".parse().unwrap(), bytes::Bytes::from_static(payload)).await.unwrap();
    let frame = next_of(&mut fay, "message").await;
    assert_eq!(frame["data"], 1, "delivery does not wait for presence");
    let failures = || s.gateways[1].reporter.stats().failures.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + bound();
    while failures() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the gateway never noticed presence was down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    s.replicas[0].resume().await;
    s.api.wait_user("fay", bound(), |u| u["online"] == true).await;
    s.api.wait_user("erin", bound(), |u| u["online"] == false).await;
    let down = s.api.wait_channel("room:down", bound(), |c| c["count"] == 1).await;
    assert_eq!(down["members"][0]["user"], "fay");
}

/// With presence's Redis down, gateways keep serving; when Redis is back the gateways'
/// state is reported again and the API is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_survived_and_state_resynchronised() {
    let mut s = setup(1).await;
    let _gus = s.gateways[0].connect("gus").await;
    s.api.wait_user("gus", bound(), |u| u["online"] == true).await;
    s.redis.kill().await;
    let (status, body) = s.api.get("/v1/presence/users/gus").await;
    assert_eq!((status, body["error"]["code"].clone()), (503, json!("unavailable")));
    // The outage lasts until the gateway's reports have failed twice: its state must be
    // reported again once Redis is back.
    let failures = || s.gateways[0].reporter.stats().failures.load(std::sync::atomic::Ordering::Relaxed);
    let (before, deadline) = (failures(), tokio::time::Instant::now() + bound());
    while failures() < before + 2 {
        assert!(tokio::time::Instant::now() < deadline, "the gateway's reports never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.redis.restart().await;
    s.api.wait_user("gus", bound() * 2, |u| u["online"] == true).await;
}
