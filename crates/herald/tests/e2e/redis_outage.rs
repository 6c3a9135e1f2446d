//! Redis going away and coming back, with real processes: the harness SIGKILLs redis-server and
//! starts it again on the same port. And Redis answering late: `CLIENT PAUSE` holds its
//! replies.

use std::time::Duration;

use crate::common::{Cluster, Engine, grpc_request, recv_messages};
use herald_publisher_api::pb;
use serde_json::{Value, json};

/// While Redis is down publishing fails loudly (HTTP 503, gRPC UNAVAILABLE), gateways keep
/// their sockets but report not ready and refuse new connections; once Redis is back they
/// resubscribe by themselves and new messages reach the sockets they kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_resubscribe_after_redis_restarts() {
    let mut cluster = Cluster::start(Engine::Redis, 2).await;
    let mut a = cluster.connect(0, "alice").await;
    let mut b = cluster.connect(1, "bob").await;
    a.subscribe("room:r").await.unwrap();
    b.subscribe("room:r").await.unwrap();
    cluster.publish_http("room:r", json!(1)).await;
    for client in [&mut a, &mut b] {
        assert_eq!(recv_messages(client, 1).await[0]["data"], 1);
    }

    cluster.redis().kill().await;

    let resp = cluster.post("/v1/publish", json!({"channel": "room:r", "data": 2})).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "unavailable");
    let mut grpc = cluster.grpc().await;
    let request = pb::PublishRequest {
        channel: "room:r".into(),
        data: b"2".to_vec(),
        event: None,
        idempotency_key: None,
    };
    let status = grpc.publish(grpc_request(request)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while cluster.gateways.iter().any(|g| g.gateway.is_ready()) {
        assert!(tokio::time::Instant::now() < deadline, "gateways still ready without Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let readyz = reqwest::get(format!("http://{}/readyz", cluster.gateways[0].addr)).await.unwrap();
    assert_eq!(readyz.status(), 503);
    let refused = herald_testkit::WsClient::connect(&cluster.gateways[0].url(&cluster.token("carol"))).await;
    let Err(refused) = refused else { panic!("a new connection was accepted while Redis is down") };
    match refused.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
        Some(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503, "{response:?}")
        }
        _ => panic!("refused for another reason than 503: {refused}"),
    }

    cluster.redis().restart().await;
    cluster.wait_ready().await;
    let readyz = reqwest::get(format!("http://{}/readyz", cluster.gateways[1].addr)).await.unwrap();
    assert_eq!(readyz.status(), 200);

    cluster.publish_http("room:r", json!(3)).await;
    let resp = cluster.post("/v1/users/alice/notify", json!({"data": 4})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(messages_after_inbox_reset(&mut b, "user:bob", 1).await[0]["data"], 3);
    let got = messages_after_inbox_reset(&mut a, "user:alice", 2).await;
    assert_eq!((got[0]["data"].clone(), got[1]["data"].clone()), (json!(3), json!(4)));
    cluster.connect(0, "carol").await;
}

/// Reads `n` messages, letting through the `reset` of `personal`: its inbox (the personal
/// channel's history) was lost with a Redis without persistence, and the client is told so,
/// never left with a silent gap.
async fn messages_after_inbox_reset(
    client: &mut herald_testkit::WsClient,
    personal: &str,
    n: usize,
) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = client.recv().await.unwrap();
        if frame["type"] == "reset" {
            assert_eq!(
                (frame["channel"].as_str(), frame["reason"].as_str()),
                (Some(personal), Some("epoch_changed"))
            );
            continue;
        }
        assert_eq!(frame["type"], "message", "{frame}");
        got.push(frame);
    }
    got
}

/// Redis holds every command for 1.2 seconds (`CLIENT PAUSE ... ALL`) while two clients
/// subscribe to a channel no one had: the first one's subscribe sends the node's `SUBSCRIBE`,
/// the second joins while its confirmation is on the way. Neither is answered `subscribed`
/// before Redis confirmed (the gateway waits at most 2 s here), and both get the next
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_joining_a_channel_are_answered_once_redis_confirmed_it() {
    let mut cluster = Cluster::start(Engine::Redis, 1).await;
    let mut a = cluster.connect(0, "alice").await;
    let mut b = cluster.connect(0, "bob").await;
    assert_eq!(cluster.redis().command(&["CLIENT", "PAUSE", "1200", "ALL"]).await, "+OK");
    let gateway = cluster.gateways[0].gateway.clone();
    let channel = "room:late".parse().unwrap();
    let joined = async |n: usize| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while gateway.hub().subscriber_count(&channel) < n {
            assert!(tokio::time::Instant::now() < deadline, "subscriber {n} never joined room:late");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    a.send_json(json!({"type": "subscribe", "channel": "room:late"})).await.unwrap();
    // The first subscriber's join sent the node's SUBSCRIBE; the second joins behind it.
    joined(1).await;
    b.send_json(json!({"type": "subscribe", "channel": "room:late"})).await.unwrap();
    joined(2).await;
    for client in [&mut a, &mut b] {
        let early = client.recv_within(Duration::from_millis(300)).await;
        assert!(early.is_err(), "answered while Redis held the subscription: {early:?}");
    }
    for client in [&mut a, &mut b] {
        let reply = client.recv().await.unwrap();
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }
    cluster.publish_http("room:late", json!("live")).await;
    for client in [&mut a, &mut b] {
        assert_eq!(recv_messages(client, 1).await[0]["data"], "live");
    }
}

/// A client publish whose command reached a Redis that then froze is answered
/// `outcome_unknown` within `redis.response_timeout`, not `unavailable`: Redis runs the command
/// when it wakes (the publisher API's `truth` tests show the message arriving), so "not
/// published" would be untrue and a retry could send it twice. Publishing works again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_publish_redis_never_answered_is_outcome_unknown() {
    let mut cluster = Cluster::start(Engine::Redis, 1).await;
    let mut alice = cluster.connect(0, "alice").await;
    alice.subscribe("chat:x").await.unwrap();
    let publish =
        |id: u32, data: u32| json!({"type": "publish", "id": id, "channel": "chat:x", "data": data});
    // The first publish opens the publishing connection, so the next one's command goes out.
    assert_eq!(alice.request(publish(1, 1)).await.unwrap()["type"], "published");

    let frozen = cluster.redis().freeze().await;
    let started = tokio::time::Instant::now();
    let reply = alice.request(publish(2, 2)).await.unwrap();
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("outcome_unknown")),
        "{reply}"
    );
    // redis.response_timeout is 2 s; the answer comes then, not after Redis wakes.
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());

    drop(frozen);
    cluster.wait_ready().await;
    let reply = alice.request(publish(3, 3)).await.unwrap();
    assert_eq!(reply["type"], "published", "{reply}");
}
