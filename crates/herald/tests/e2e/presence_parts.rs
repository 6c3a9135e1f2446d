//! The presence role on a real Redis Cluster, split in its default 16 parts by user: each
//! user's keys and scripts land on the primary serving the user's part, so every primary
//! carries some of presence. A primary killed under live users loses none of them for good:
//! once its replica took over, reports reach the part again (a part that lost the gateway's
//! last writes asks for its full state), and presence agrees with the sockets.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_testkit::{RedisCluster, WsClient};
use serde_json::json;

use crate::common::GatewayProcess;
use crate::presence_support::{API_KEY, Api, PresenceProcess};

/// Short leases and grace periods, the same for presence and the gateway.
const TIMINGS: &[(&str, &str)] = &[
    ("HERALD_PRESENCE__TTL", "4s"),
    ("HERALD_PRESENCE__HEARTBEAT_INTERVAL", "1s"),
    ("HERALD_PRESENCE__FLUSH_INTERVAL", "50ms"),
    ("HERALD_PRESENCE__GRACE", "500ms"),
    ("HERALD_NAMESPACES__ROOM__SUBSCRIBE", "true"),
];

/// Connects `user` and subscribes `room:lobby`; retried while the gateway is not ready (it
/// refuses sockets with 503 until it sees every primary again after a failover).
async fn join(gateway: &GatewayProcess, user: &str) -> WsClient {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        match WsClient::connect(&gateway.url(user)).await {
            Ok((client, _)) => break client,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{user} cannot connect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reply = client.request(json!({"type": "subscribe", "id": 1, "channel": "room:lobby"})).await.unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    client
}

/// How many users' keys (`u:<user>`) of presence the node on `port` holds.
async fn users_on(cluster: &RedisCluster, port: u16) -> usize {
    let mut cursor = "0".to_string();
    let mut found = 0;
    loop {
        let (next, keys): (String, Vec<String>) = cluster
            .query(port, &["SCAN", &cursor, "MATCH", "herald:{presence:*}:u:*", "COUNT", "1000"])
            .await
            .unwrap();
        found += keys.len();
        if next == "0" {
            return found;
        }
        cursor = next;
    }
}

/// Waits until presence counts `users` online users, each with one connection, and as many
/// members of `room:lobby`.
async fn wait_for_count(api: &Api, users: u64, when: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (_, stats) = api.get("/v1/presence/stats").await;
        let (_, lobby) = api.get("/v1/presence/channels/room:lobby").await;
        if stats["online_users"] == users && stats["connections"] == users && lobby["count"] == users {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{when}: {stats} {lobby}, not {users}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spreads_over_the_primaries_and_outlives_a_killed_one() {
    let mut cluster = RedisCluster::start().await;
    let seeds = cluster.seeds().join(",");
    let mut env: Vec<(&str, &str)> = TIMINGS.to_vec();
    env.push(("HERALD_REDIS__CLUSTER_NODES", &seeds));
    let presence = PresenceProcess::start("redis://127.0.0.1:1", &env).await;
    let endpoint = format!("http://{}", presence.grpc);
    env.extend([("HERALD_PRESENCE__ENDPOINT", endpoint.as_str()), ("HERALD_PRESENCE__API_KEYS", API_KEY)]);
    let gateway = GatewayProcess::start("redis://127.0.0.1:1", &env).await;
    let api = Api::new(presence.http);

    let mut clients = Vec::new();
    for n in 0..48 {
        clients.push(join(&gateway, &format!("u{n}")).await);
    }
    wait_for_count(&api, 48, "all connected").await;
    let lobby = api.wait_channel("room:lobby", Duration::from_secs(5), |c| c["count"] == 48).await;
    let listed: Vec<&str> =
        lobby["members"].as_array().unwrap().iter().map(|m| m["user"].as_str().unwrap()).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert_eq!((listed.len(), &listed), (48, &sorted), "every part's members, merged in order");

    // Each part's keys are on the primary of its slot, and every primary serves some part.
    let mut primaries = BTreeSet::new();
    for part in 0..16 {
        primaries.insert(
            cluster
                .primary_of_slot(cluster.keyslot(&format!("herald:{{presence:{part}}}:stats")).await)
                .await,
        );
    }
    assert_eq!(primaries.len(), 3, "16 parts on three primaries");
    let mut spread = Vec::new();
    for port in &primaries {
        spread.push(users_on(&cluster, *port).await);
    }
    assert_eq!(spread.iter().sum::<usize>(), 48, "{spread:?}");
    assert!(spread.iter().all(|n| *n > 0), "every primary holds some users: {spread:?}");

    // Kill the primary of part 0 while users are online, and let its replica take over.
    let slot = cluster.keyslot("herald:{presence:0}:stats").await;
    let dead = cluster.primary_of_slot(slot).await;
    cluster.kill(dead).await;
    cluster.wait_for_failover(slot, dead).await;

    // Half leave and eight come, in every part: presence ends up agreeing with the sockets.
    clients.drain(..24);
    for n in 48..56 {
        clients.push(join(&gateway, &format!("u{n}")).await);
    }
    wait_for_count(&api, 32, "after the failover").await;
    for n in [0, 23] {
        let user = api.user(&format!("u{n}")).await;
        assert_eq!(user["online"], false, "{user}");
    }
    for n in [24, 47, 48, 55] {
        let user = api.user(&format!("u{n}")).await;
        assert_eq!((&user["online"], &user["connections"]), (&json!(true), &json!(1)), "{user}");
    }
}
