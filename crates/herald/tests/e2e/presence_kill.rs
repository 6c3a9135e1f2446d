//! A gateway killed with SIGKILL (a real `herald gateway` child process) is removed as a whole
//! when its lease runs out: its users go offline and their leaves are sent, once, within the
//! staleness bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::GatewayProcess;
use crate::presence_support::*;
use herald_broker::{Broker, RedisBroker};
use herald_testkit::RedisServer;

/// `herald gateway` reporting to `endpoint` with the test timings.
async fn gateway_process(redis: &str, endpoint: &str) -> GatewayProcess {
    let c = config();
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let env = [
        ("HERALD_PRESENCE__ENDPOINT", endpoint.to_string()),
        ("HERALD_PRESENCE__API_KEYS", API_KEY.to_string()),
        ("HERALD_PRESENCE__TTL", ms(c.ttl)),
        ("HERALD_PRESENCE__HEARTBEAT_INTERVAL", ms(c.heartbeat_interval)),
        ("HERALD_PRESENCE__FLUSH_INTERVAL", ms(c.flush_interval)),
        ("HERALD_PRESENCE__REQUEST_TIMEOUT", ms(c.request_timeout)),
        ("HERALD_NAMESPACES__ROOM__JOIN_LEAVE", "true".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    GatewayProcess::start(redis, &env).await
}

/// kill -9 of a gateway: within `ttl + sweep_interval + grace` its users' leaves reach the
/// other gateway's subscribers and they are offline; each event exactly once, and a user also
/// connected elsewhere stays online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_takes_its_users_offline_within_the_bound() {
    let redis = RedisServer::start().await;
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(redis_config(&redis.url())).unwrap());
    let replica = Replica::start(&redis.url()).await;
    let api = Api::new(replica.http);
    let (events, _sub) = Collector::subscribe(&broker, EVENTS).await;
    let survivor = TestGateway::start(broker.clone(), &replica.endpoint()).await;
    let mut watcher = survivor.connect("watcher").await;
    watcher.subscribe("room:k").await.unwrap();
    let mut ivy_elsewhere = survivor.connect("ivy").await;
    ivy_elsewhere.subscribe("room:k").await.unwrap();

    let mut doomed = gateway_process(&redis.url(), &replica.endpoint()).await;
    let mut clients = Vec::new();
    for user in ["hal", "ivy", "jo"] {
        let mut client = connect_to(doomed.addr, user, None).await;
        client.subscribe("room:k").await.unwrap();
        clients.push(client);
    }
    api.wait_channel("room:k", bound(), |c| c["count"] == 4).await;
    api.wait_user("ivy", bound(), |u| u["connections"] == 2).await;
    for user in ["hal", "jo"] {
        events.wait_for("online", user, bound()).await;
    }
    let _ = drain(&mut watcher, Duration::from_millis(200)).await;

    doomed.child.kill().unwrap(); // SIGKILL: no goodbye reaches presence
    let killed = Instant::now();
    let c = config();
    let slack = Duration::from_secs(2);
    let mut leaves = Vec::new();
    while leaves.len() < 2 {
        let left = (c.ttl + c.sweep_interval + c.grace + slack).saturating_sub(killed.elapsed());
        let frame =
            watcher.recv_within(left).await.unwrap_or_else(|e| panic!("leaves so far {leaves:?}: {e}"));
        if frame["type"] == "leave" {
            leaves.push(frame["user"].as_str().unwrap().to_string());
        }
    }
    leaves.sort();
    assert_eq!(leaves, ["hal", "jo"], "ivy is still in room:k from the other gateway");
    for user in ["hal", "jo"] {
        let within = (c.ttl + c.sweep_interval + c.grace + slack).saturating_sub(killed.elapsed());
        events.wait_for("offline", user, within).await;
        assert_eq!(api.user(user).await["online"], false);
    }
    let ivy = api.user("ivy").await;
    assert_eq!((ivy["online"].clone(), ivy["connections"].clone()), (true.into(), 1.into()));

    // A while in which a second leave would show.
    let later = drain(&mut watcher, c.grace + c.sweep_interval * 5 + Duration::from_millis(200)).await;
    assert!(later.iter().all(|f| f["type"] != "leave"), "no second leave: {later:?}");
    for user in ["hal", "jo"] {
        assert_eq!(events.count("offline", user), 1, "{:?}", events.all());
    }
    assert_eq!(events.count("offline", "ivy"), 0);
    let (_, stats) = api.get("/v1/presence/stats").await;
    assert_eq!(stats, serde_json::json!({"online_users": 2, "connections": 2}));
}
