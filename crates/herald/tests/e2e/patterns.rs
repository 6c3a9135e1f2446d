//! Pattern subscriptions end to end: the frames and their rules on one gateway, and on Redis
//! two gateways sharing a pattern among a thousand sockets with one `PSUBSCRIBE` each.

use std::time::Duration;

use futures_util::StreamExt;
use herald_testkit::{RedisServer, WsClient};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Cluster, Engine, assert_all_silent, assert_silent, recv_messages};
use crate::hostile_support::token_with;

/// A token for `user` with the `channels` claim `channels`.
fn token_with_channels(user: &str, channels: &[&str]) -> String {
    let exp = herald_protocol::publication::now_millis() / 1000 + 3600;
    token_with(&json!({"sub": user, "exp": exp, "channels": channels}))
}

async fn subscribe_pattern(client: &mut WsClient, pattern: &str) -> Value {
    client.request(json!({"type": "subscribe", "id": "p", "pattern": pattern})).await.unwrap()
}

/// A pattern receives every matching channel's messages with `pattern` beside the real
/// `channel`; a message matching a channel and a pattern subscription of one client comes
/// once for each, the pattern's copy marked; unsubscribing stops it; and every rule
/// (syntax, namespace, `since`, limits) is refused with its own code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_subscriptions_deliver_and_keep_their_rules() {
    let cluster = Cluster::start_with(Engine::Memory, 1, |c| {
        c.max_pattern_subscriptions = 2;
        c.max_node_patterns = 3;
    })
    .await;
    let mut alice = cluster.connect(0, "alice").await;
    let reply = subscribe_pattern(&mut alice, "events:order-*").await;
    assert_eq!(reply, json!({"type": "subscribed", "id": "p", "pattern": "events:order-*"}));
    alice.subscribe("events:order-1").await.unwrap();

    cluster.publish_http("events:order-1", json!({"n": 1})).await;
    cluster.publish_http("events:order-2:eu", json!({"n": 2})).await;
    cluster.publish_http("events:invoice-1", json!({"n": 3})).await;
    cluster.publish_http("room:order-1", json!({"n": 4})).await;
    let got = recv_messages(&mut alice, 3).await;
    let seen: Vec<(Value, Value, Value)> =
        got.iter().map(|m| (m["channel"].clone(), m["pattern"].clone(), m["data"]["n"].clone())).collect();
    // The channel's own copy and the pattern's may leave the gateway in either order.
    let mut first_two = seen[..2].to_vec();
    first_two.sort_by_key(|(_, pattern, _)| pattern.is_string());
    assert_eq!(
        first_two,
        [
            (json!("events:order-1"), Value::Null, json!(1)),
            (json!("events:order-1"), json!("events:order-*"), json!(1))
        ],
        "once for the channel, once marked for the pattern"
    );
    assert_eq!(got[0]["id"], got[1]["id"], "the same message twice");
    assert_eq!(seen[2], (json!("events:order-2:eu"), json!("events:order-*"), json!(2)), "`*` crosses `:`");
    assert_silent(&cluster, &mut alice).await;

    let code = |reply: Value| reply["code"].as_str().unwrap_or_default().to_string();
    assert_eq!(code(subscribe_pattern(&mut alice, "events:[x").await), "invalid_pattern");
    assert_eq!(code(subscribe_pattern(&mut alice, "*").await), "invalid_pattern");
    assert_eq!(code(subscribe_pattern(&mut alice, "room:*").await), "forbidden", "patterns = false");
    assert_eq!(code(subscribe_pattern(&mut alice, "nowhere:*").await), "unknown_channel");
    assert_eq!(code(subscribe_pattern(&mut alice, "user:*").await), "forbidden");
    assert_eq!(code(subscribe_pattern(&mut alice, "events:order-*").await), "already_subscribed");
    let since = json!({"type": "subscribe", "pattern": "events:?", "since": {"offset": 1, "epoch": "e"}});
    assert_eq!(code(alice.request(since).await.unwrap()), "no_history");
    assert_eq!(subscribe_pattern(&mut alice, "events:[ab]?").await["type"], "subscribed");
    assert_eq!(
        code(subscribe_pattern(&mut alice, "events:x*").await),
        "limit_exceeded",
        "two per connection"
    );

    // The gateway holds three distinct patterns at most; a held one always fits.
    let mut bob = cluster.connect(0, "bob").await;
    assert_eq!(subscribe_pattern(&mut bob, "events:b*").await["type"], "subscribed");
    assert_eq!(code(subscribe_pattern(&mut bob, "events:c*").await), "limit_exceeded", "a fourth pattern");
    assert_eq!(subscribe_pattern(&mut bob, "events:order-*").await["type"], "subscribed");
    assert_eq!(cluster.gateways[0].gateway.hub().pattern_count(), 3);

    let bye =
        alice.request(json!({"type": "unsubscribe", "id": 9, "pattern": "events:order-*"})).await.unwrap();
    assert_eq!(bye, json!({"type": "unsubscribed", "id": 9, "pattern": "events:order-*"}));
    let again = alice.request(json!({"type": "unsubscribe", "pattern": "events:order-*"})).await.unwrap();
    assert_eq!(code(again), "not_subscribed");
    cluster.publish_http("events:order-7", json!({"n": 7})).await;
    let to_bob = recv_messages(&mut bob, 1).await;
    assert_eq!(
        (&to_bob[0]["channel"], &to_bob[0]["pattern"]),
        (&json!("events:order-7"), &json!("events:order-*"))
    );
    assert_silent(&cluster, &mut alice).await;
    assert_eq!(cluster.gateways[0].gateway.hub().pattern_subscriber_count(&pattern("events:order-*")), 1);
}

fn pattern(text: &str) -> herald_protocol::ChannelPattern {
    herald_protocol::ChannelPattern::parse(text).unwrap()
}

/// In a private namespace the `channels` claim must list the pattern itself; a refreshed
/// token that no longer lists it ends the subscription with `grant_revoked`, and a
/// subscription token never grants a pattern.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_patterns_are_granted_as_a_whole() {
    let cluster = Cluster::start(Engine::Memory, 1).await;
    let url = cluster.gateways[0].url(&token_with_channels("carol", &["vault:team-*"]));
    let (mut carol, _) = WsClient::connect(&url).await.unwrap();
    assert_eq!(subscribe_pattern(&mut carol, "vault:team-*").await["type"], "subscribed");
    let wider = subscribe_pattern(&mut carol, "vault:*").await;
    assert_eq!(wider["code"], "forbidden", "a wider pattern than the claim lists: {wider}");
    let with_token = json!({"type": "subscribe", "pattern": "vault:t?", "token": "x"});
    assert_eq!(carol.request(with_token).await.unwrap()["code"], "forbidden", "the claim is checked first");
    let with_token = json!({"type": "subscribe", "pattern": "events:t?", "token": "x"});
    let refused = carol.request(with_token).await.unwrap();
    assert_eq!(refused["code"], "invalid_subscription_token", "tokens grant channels only: {refused}");
    cluster.publish_http("vault:team-red", json!({"n": 1})).await;
    assert_eq!(recv_messages(&mut carol, 1).await[0]["pattern"], "vault:team-*");

    let refreshed = json!({"type": "refresh", "id": 1, "token": token_with_channels("carol", &[])});
    carol.send_json(refreshed).await.unwrap();
    let mut frames = vec![carol.recv().await.unwrap(), carol.recv().await.unwrap()];
    frames.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_string());
    assert_eq!(frames[0]["type"], "refreshed", "{frames:?}");
    assert_eq!(
        frames[1],
        json!({"type": "unsubscribed", "pattern": "vault:team-*", "reason": "grant_revoked"})
    );
    cluster.publish_http("vault:team-red", json!({"n": 2})).await;
    assert_silent(&cluster, &mut carol).await;
}

/// The Redis Pub/Sub clients (`CLIENT LIST TYPE pubsub`) and the patterns each holds (`psub`).
async fn pattern_holders(redis: &RedisServer) -> Vec<u64> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", redis.port())).await.unwrap();
    stream.write_all(b"*4\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n$4\r\nTYPE\r\n$6\r\npubsub\r\n").await.unwrap();
    let mut reply = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "redis closed the connection");
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        let Some((head, body)) = text.split_once("\r\n") else { continue };
        let len: usize = head.trim_start_matches('$').parse().unwrap();
        if body.len() >= len + 2 {
            return body[..len]
                .lines()
                .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("psub=")))
                .map(|n| n.parse().unwrap())
                .filter(|n| *n > 0)
                .collect();
        }
    }
}

/// Two gateways on Redis with a thousand sockets on one pattern hold one Redis pattern
/// subscription each (never one per socket); a message reaches every socket once, through
/// either gateway; and the last socket leaving a gateway ends its subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sockets_share_one_redis_pattern_per_gateway() {
    let cluster = Cluster::start(Engine::Redis, 2).await;
    let tokens: Vec<(usize, String)> = (0..1000).map(|i| (i % 2, cluster.token(&format!("u{i}")))).collect();
    let mut clients: Vec<(usize, WsClient)> = futures_util::stream::iter(tokens)
        .map(|(gw, token)| {
            let url = cluster.gateways[gw].url(&token);
            async move {
                let (mut client, _) = WsClient::connect(&url).await.unwrap();
                let reply = subscribe_pattern(&mut client, "events:*").await;
                assert_eq!(reply["type"], "subscribed", "{reply}");
                (gw, client)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let redis = cluster.redis.as_ref().unwrap();
    assert_eq!(pattern_holders(redis).await, [1, 1], "one pattern subscription per gateway");
    assert_eq!(redis.command(&["PUBSUB", "NUMPAT"]).await, ":1");
    for g in &cluster.gateways {
        assert_eq!(g.gateway.hub().subscriber().active_patterns(), 1);
        assert_eq!(g.gateway.hub().pattern_subscriber_count(&pattern("events:*")), 500);
    }

    cluster.publish_http("events:launch", json!({"go": true})).await;
    cluster.publish_http("room:launch", json!({"go": false})).await;
    for (_, client) in clients.iter_mut() {
        let got = recv_messages(client, 1).await;
        assert_eq!((&got[0]["channel"], &got[0]["pattern"]), (&json!("events:launch"), &json!("events:*")));
    }
    let mut sample: Vec<WsClient> = clients.drain(..10).map(|(_, c)| c).collect();
    assert_all_silent(&cluster, &mut sample).await;

    // Every socket of gateway 0 leaves: its one subscription goes, gateway 1's stays.
    drop(sample);
    clients.retain(|(gw, _)| *gw == 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pattern_holders(redis).await != [1] {
        assert!(tokio::time::Instant::now() < deadline, "gateway 0 kept its pattern subscription");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.gateways[0].gateway.hub().pattern_count(), 0);
    cluster.publish_http("events:again", json!({})).await;
    let client = &mut clients[0].1;
    let mut next = client.recv().await.unwrap();
    while next["channel"] == "broadcast" {
        next = client.recv().await.unwrap(); // the silence marker, which reaches everyone
    }
    assert_eq!((&next["channel"], &next["pattern"]), (&json!("events:again"), &json!("events:*")));
}
