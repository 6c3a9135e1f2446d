//! `herald gateway` processes on a real Redis Cluster (three primaries, three replicas):
//! clients on different gateways exchange messages on channels of every primary, and a
//! primary killed while a channel with history is being published into loses its subscriber
//! nothing: the gateway reads what its sharded subscription missed from the history. A killed
//! primary turns `/readyz` 503 naming it, and ready again once a replica took over; so does a
//! primary that stays connected but answers nothing for a while. The `presence` role runs on
//! the cluster: a user connected to a gateway is online in its API, and offline after leaving.
//! `broadcast`, spread over the primaries, reaches clients of every gateway once.

use std::sync::Arc;
use std::time::Duration;

use herald_broker::{Broker, RedisBroker, RedisConfig};
use herald_protocol::Namespaces;
use herald_publisher_api::{PublisherApi, PublisherConfig};
use herald_testkit::{RedisCluster, WsClient};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{GatewayProcess, recv_messages};
use crate::presence_support::{API_KEY, Api, PresenceProcess};

/// `feed:*`: client publishing with a history of 1000.
const NAMESPACES: &[(&str, &str)] = &[
    ("HERALD_NAMESPACES__FEED__PUBLISH", "true"),
    ("HERALD_NAMESPACES__FEED__HISTORY_SIZE", "1000"),
    ("HERALD_NAMESPACES__FEED__HISTORY_TTL", "1h"),
];

async fn gateway_on(cluster: &RedisCluster) -> GatewayProcess {
    let seeds = cluster.seeds().join(",");
    let mut env: Vec<(&str, &str)> = NAMESPACES.to_vec();
    env.push(("HERALD_REDIS__CLUSTER_NODES", &seeds));
    // `url` only supplies credentials on a cluster: nothing listens here.
    GatewayProcess::start("redis://127.0.0.1:1", &env).await
}

/// Publishes `n` into `channel` with an idempotency key, retrying (with the same key) while
/// the gateway answers `unavailable` or `outcome_unknown`; returns the reply.
async fn publish(client: &mut WsClient, channel: &str, n: u64) -> Value {
    let frame =
        json!({"type": "publish", "channel": channel, "data": {"n": n}, "idempotency_key": format!("k{n}")});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = client.request(frame.clone()).await.unwrap();
        if reply["type"] == "published" {
            return reply;
        }
        let code = reply["code"].as_str().unwrap_or_default();
        assert!(matches!(code, "unavailable" | "outcome_unknown"), "publish {n}: {reply}");
        assert!(tokio::time::Instant::now() < deadline, "publish {n} kept failing: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client's messages on channels of all three primaries reach a client of another gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_a_cluster_deliver_channels_of_every_primary() {
    let cluster = RedisCluster::start().await;
    let (a, b) = (gateway_on(&cluster).await, gateway_on(&cluster).await);
    let mut channels: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let channel = format!("feed:spread.{i}");
        let primary = cluster.primary_of_slot(cluster.keyslot(&format!("herald:{{{channel}}}")).await).await;
        if !channels.iter().any(|(_, p)| *p == primary) {
            channels.push((channel, primary));
        }
        if channels.len() == 3 {
            break;
        }
    }
    let (mut subscriber, _) = WsClient::connect(&b.url("sub")).await.unwrap();
    for (channel, _) in &channels {
        subscriber.subscribe(channel).await.unwrap();
    }
    let (mut publisher, _) = WsClient::connect(&a.url("pub")).await.unwrap();
    for (channel, _) in &channels {
        publish(&mut publisher, channel, 1).await;
    }
    let mut got: Vec<String> = recv_messages(&mut subscriber, 3)
        .await
        .iter()
        .map(|m| m["channel"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut expected: Vec<String> = channels.into_iter().map(|(c, _)| c).collect();
    expected.sort();
    assert_eq!(got, expected);
}

/// `broadcast` published through the publisher API on a cluster goes out over its parts,
/// which every primary shares (`redis.spread_channels`), and reaches the clients of two
/// gateways, each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_is_spread_over_the_primaries_and_reaches_every_gateway() {
    const N: usize = 30;
    let cluster = RedisCluster::start().await;
    let (a, b) = (gateway_on(&cluster).await, gateway_on(&cluster).await);
    let (mut on_a, _) = WsClient::connect(&a.url("alice")).await.unwrap();
    let (mut on_b, _) = WsClient::connect(&b.url("bob")).await.unwrap();
    let config = RedisConfig { cluster_nodes: cluster.seeds(), ..Default::default() };
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(config).unwrap());
    let publisher = PublisherConfig { api_keys: vec![API_KEY.into()], ..Default::default() };
    let api =
        PublisherApi::new(publisher, Namespaces::default(), Default::default(), Default::default(), broker);
    let (http, grpc) =
        (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let http_addr = http.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(herald_publisher_api::serve(api, http, grpc, stop.clone().cancelled_owned()));
    let primaries = [0, 5461, 10923].map(|slot| cluster.primary_of_slot(slot));
    let primaries = futures_util::future::join_all(primaries).await;
    let before = futures_util::future::join_all(primaries.iter().map(|p| cluster.spublish_calls(*p))).await;

    let client = reqwest::Client::new();
    for n in 0..N {
        let resp = client
            .post(format!("http://{http_addr}/v1/broadcast"))
            .bearer_auth(API_KEY)
            .json(&json!({"data": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "broadcast {n}: {:?}", resp.text().await);
    }
    for client in [&mut on_a, &mut on_b] {
        let got = recv_messages(client, N).await;
        assert!(got.iter().all(|m| m["channel"] == "broadcast"), "{got:?}");
        let mut seen: Vec<u64> = got.iter().map(|m| m["data"]["n"].as_u64().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..N as u64).collect::<Vec<_>>(), "every broadcast once");
    }
    for (port, before) in primaries.iter().zip(before) {
        let calls = cluster.spublish_calls(*port).await - before;
        assert!(calls > 0, "the primary on port {port} carried none of broadcast's messages");
    }
    stop.cancel();
}

/// The primary of a history channel's slot is killed (SIGKILL) while a client of another
/// gateway publishes into it: once a replica is promoted, the subscriber has every message
/// exactly once and in order, those its gateway's subscription missed read from the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_loses_a_history_subscriber_nothing() {
    const N: u64 = 60;
    let mut cluster = RedisCluster::start().await;
    let (a, b) = (gateway_on(&cluster).await, gateway_on(&cluster).await);
    let channel = "feed:failover";
    let slot = cluster.keyslot(&format!("herald:{{{channel}}}")).await;
    let primary = cluster.primary_of_slot(slot).await;
    let (mut subscriber, _) = WsClient::connect(&b.url("sub")).await.unwrap();
    subscriber.subscribe(channel).await.unwrap();
    let (mut publisher, _) = WsClient::connect(&a.url("pub")).await.unwrap();
    for n in 1..=N {
        if n == 20 {
            cluster.kill(primary).await;
        }
        let reply = publish(&mut publisher, channel, n).await;
        assert_eq!(reply["offset"].as_u64(), Some(n), "{reply}");
    }
    cluster.wait_for_failover(slot, primary).await;
    let mut offsets = Vec::new();
    while offsets.len() < N as usize {
        let frame = subscriber.recv_within(Duration::from_secs(20)).await.unwrap_or_else(|e| {
            panic!("after offsets {offsets:?}: {e}");
        });
        assert_eq!(frame["type"], "message", "unexpected frame {frame}");
        offsets.push(frame["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets, (1..=N).collect::<Vec<_>>(), "every message once, in order");
}

/// `/readyz` of a gateway: its status and body.
async fn readyz(gateway: &GatewayProcess) -> (u16, String) {
    match reqwest::get(format!("http://{}/readyz", gateway.addr)).await {
        Ok(resp) => (resp.status().as_u16(), resp.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Readiness covers every shard: a gateway with no client channels at all turns not ready
/// within `gateway.canary_timeout` + `gateway.canary_interval` of one primary's SIGKILL, its
/// 503 naming that primary, and ready again once a replica took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_turns_readiness_off_naming_it_until_failover() {
    const INTERVAL: Duration = Duration::from_millis(500);
    const TIMEOUT: Duration = Duration::from_millis(1500);
    let mut cluster = RedisCluster::start().await;
    let gateway = canary_gateway(&cluster).await;
    let slot = 0;
    let primary = cluster.primary_of_slot(slot).await;
    let name = format!("127.0.0.1:{primary}");
    let killed = tokio::time::Instant::now();
    cluster.kill(primary).await;
    loop {
        let (status, body) = readyz(&gateway).await;
        if status == 503 {
            assert!(body.contains(&name), "the 503 names the dead primary {name}: {body}");
            break;
        }
        assert!(killed.elapsed() < TIMEOUT + INTERVAL, "still {status} {body} after {:?}", killed.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.wait_for_failover(slot, primary).await;
    wait_ready(&gateway, "after the failover").await;
}

/// A gateway with canaries every 500 ms, each given 1.5 s.
async fn canary_gateway(cluster: &RedisCluster) -> GatewayProcess {
    let seeds = cluster.seeds().join(",");
    GatewayProcess::start(
        "redis://127.0.0.1:1",
        &[
            ("HERALD_REDIS__CLUSTER_NODES", &seeds),
            ("HERALD_GATEWAY__CANARY_INTERVAL", "500ms"),
            ("HERALD_GATEWAY__CANARY_TIMEOUT", "1500ms"),
        ],
    )
    .await
}

/// Waits up to 20 s for `/readyz` to answer 200.
async fn wait_ready(gateway: &GatewayProcess, when: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readyz(gateway).await;
        if status == 200 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "not ready again {when}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A primary that keeps its connections but answers nothing (`CLIENT PAUSE ALL`, shorter than
/// the cluster's node timeout would allow for the bus, which it does not pause, so no
/// failover) turns `/readyz` 503 with its canary late, naming that primary only, and ready
/// again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_primary_makes_its_canary_late_naming_it() {
    let cluster = RedisCluster::start().await;
    let gateway = canary_gateway(&cluster).await;
    let primary = cluster.primary_of_slot(8000).await;
    let name = format!("127.0.0.1:{primary}");
    let _: String = cluster.query(primary, &["CLIENT", "PAUSE", "5000", "ALL"]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = readyz(&gateway).await;
        if status == 503 {
            assert!(body.contains("delivery canary of cluster shard(s)"), "{body}");
            assert!(body.contains(&name), "the 503 names the silent primary {name}: {body}");
            assert!(!body.contains(','), "only that primary: {body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status} {body} while {name} is paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_ready(&gateway, "after the pause").await;
}

/// `herald presence` and `herald gateway` on the cluster (presence no longer refuses
/// `redis.cluster_nodes`): a user connected to the gateway turns online in the presence API
/// and offline once gone, the store's scripts running on the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presence_role_tracks_users_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let seeds = cluster.seeds().join(",");
    let presence =
        PresenceProcess::start("redis://127.0.0.1:1", &[("HERALD_REDIS__CLUSTER_NODES", &seeds)]).await;
    let (http, grpc) = (presence.http, presence.grpc);
    let endpoint = format!("http://{grpc}");
    let gateway = GatewayProcess::start(
        "redis://127.0.0.1:1",
        &[
            ("HERALD_REDIS__CLUSTER_NODES", &seeds),
            ("HERALD_PRESENCE__ENDPOINT", &endpoint),
            ("HERALD_PRESENCE__API_KEYS", API_KEY),
            ("HERALD_PRESENCE__FLUSH_INTERVAL", "50ms"),
        ],
    )
    .await;
    let api = Api::new(http);
    let (client, _) = WsClient::connect(&gateway.url("alice")).await.unwrap();
    let alice = api.wait_user("alice", Duration::from_secs(15), |u| u["online"] == true).await;
    assert_eq!(alice["connections"], 1, "{alice}");
    drop(client);
    api.wait_user("alice", Duration::from_secs(15), |u| u["online"] == false).await;
}

/// On a cluster, a client publish into a namespace with `events = true` is written into the
/// event stream, which lives in the presence slot (`herald:{presence}.events`) on whichever
/// primary serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publishes_reach_the_event_stream_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let seeds = cluster.seeds().join(",");
    let env = [
        ("HERALD_REDIS__CLUSTER_NODES", seeds.as_str()),
        ("HERALD_EVENTS__ENABLED", "true"),
        ("HERALD_NAMESPACES__CHAT__PUBLISH", "true"),
        ("HERALD_NAMESPACES__CHAT__EVENTS", "true"),
    ];
    let gateway = GatewayProcess::start("redis://127.0.0.1:1", &env).await;
    let (mut client, _) = WsClient::connect(&gateway.url("poster")).await.unwrap();
    for n in 0..3 {
        let reply = client
            .request(
                json!({"type": "publish", "id": n, "channel": format!("chat:room.{n}"), "data": {"n": n}}),
            )
            .await
            .unwrap();
        assert_eq!(reply["type"], "published", "{reply}");
    }
    let key = "herald:{presence}.events";
    let primary = cluster.primary_of_slot(cluster.keyslot(key).await).await;
    let entries: Vec<(String, Vec<String>)> =
        cluster.query(primary, &["XRANGE", key, "-", "+"]).await.unwrap();
    let channels: Vec<String> = entries
        .iter()
        .map(|(_, fields)| fields.chunks(2).find(|kv| kv[0] == "channel").unwrap()[1].clone())
        .collect();
    assert_eq!(channels, ["chat:room.0", "chat:room.1", "chat:room.2"]);
}
