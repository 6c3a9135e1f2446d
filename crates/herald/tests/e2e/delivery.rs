//! End-to-end delivery: publisher API -> engine -> gateways -> sockets. Every scenario runs
//! twice: on a real redis-server with two gateways on their own listeners (production), and on
//! the in-memory engine (standalone).

use crate::common::{Cluster, Engine, assert_all_silent, assert_silent, grpc_request, recv_messages};
use herald_publisher_api::pb;
use serde_json::json;

/// Generates one test per engine from a scenario `async fn(Engine)`.
macro_rules! on_both_engines {
    ($($scenario:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Engine::Redis).await
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Engine::Memory).await
                }
            )*
        }
    };
}

on_both_engines!(
    room_messages_reach_every_subscriber_once_in_order_over_http_and_grpc,
    notify_reaches_every_connection_of_the_user_and_nobody_else,
    without_managed_personal_channels_users_subscribe_to_their_own,
    broadcast_reaches_everyone,
    clients_publish_only_where_the_namespace_allows,
    unsubscribed_clients_stop_receiving,
    channels_in_the_connect_url_are_live_at_connected,
    clients_joining_a_new_channel_together_are_each_live_when_answered,
);

/// 100 clients over two gateways in one room get every message published over HTTP and gRPC
/// exactly once, in publish order.
async fn room_messages_reach_every_subscriber_once_in_order_over_http_and_grpc(engine: Engine) {
    let cluster = Cluster::start(engine, 2).await;
    let mut clients = Vec::new();
    for i in 0..100 {
        let mut client = cluster.connect(i % 2, &format!("u{i}")).await;
        client.subscribe("room:lobby").await.unwrap();
        clients.push(client);
    }
    for seq in 0..20 {
        cluster.publish_http("room:lobby", json!({"seq": seq})).await;
    }
    let mut grpc = cluster.grpc().await;
    for seq in 20..40 {
        let data = serde_json::to_vec(&json!({"seq": seq})).unwrap();
        let request = pb::PublishRequest {
            channel: "room:lobby".into(),
            data,
            event: Some("tick".into()),
            idempotency_key: None,
        };
        let reply = grpc.publish(grpc_request(request)).await.unwrap().into_inner();
        assert_eq!(reply.id.len(), 36);
    }
    for client in &mut clients {
        let got = recv_messages(client, 40).await;
        let seqs: Vec<i64> = got.iter().map(|m| m["data"]["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, (0..40).collect::<Vec<_>>());
        assert!(got.iter().all(|m| m["channel"] == "room:lobby"));
        assert_eq!(got[25]["event"], "tick");
    }
    assert_all_silent(&cluster, &mut clients).await;
}

/// A notification reaches all of a user's connections on both gateways, and no one else.
async fn notify_reaches_every_connection_of_the_user_and_nobody_else(engine: Engine) {
    let cluster = Cluster::start(engine, 2).await;
    let mut alice = vec![cluster.connect(0, "alice").await, cluster.connect(0, "alice").await];
    alice.push(cluster.connect(1, "alice").await);
    let bob = cluster.connect(1, "bob").await;

    let resp = cluster.post("/v1/users/alice/notify", json!({"data": {"n": 1}, "event": "ping"})).await;
    assert_eq!(resp.status(), 200);
    let mut grpc = cluster.grpc().await;
    let request = pb::NotifyRequest {
        user: "alice".into(),
        data: b"{\"n\":2}".to_vec(),
        event: None,
        idempotency_key: None,
    };
    grpc.notify(grpc_request(request)).await.unwrap();

    for conn in &mut alice {
        let got = recv_messages(conn, 2).await;
        assert_eq!(got[0]["channel"], "user:alice");
        assert_eq!(got[0]["data"]["n"], 1);
        assert_eq!(got[0]["event"], "ping");
        assert_eq!(got[1]["data"]["n"], 2);
    }
    alice.push(bob);
    assert_all_silent(&cluster, &mut alice).await;
}

/// With `gateway.personal_channel = false` no connection is subscribed to its personal
/// channel (in Redis, no `SUBSCRIBE` per connection), so a notification reaches only the
/// connections whose client subscribed to `user:<its id>` itself, in the URL or with a frame;
/// it can unsubscribe again, and another user's stays forbidden.
async fn without_managed_personal_channels_users_subscribe_to_their_own(engine: Engine) {
    let cluster = Cluster::start_with(engine, 1, |c| c.personal_channel = false).await;
    let personal_in_redis = async || match &cluster.redis {
        Some(redis) => Some(redis.command(&["PUBSUB", "CHANNELS", "herald:user:*"]).await),
        None => None,
    };
    let mut plain = cluster.connect(0, "alice").await;
    if let Some(count) = personal_in_redis().await {
        assert_eq!(count, "*0", "a personal channel was subscribed in Redis");
    }
    let notify = async |n: i64| {
        let resp = cluster.post("/v1/users/alice/notify", json!({"data": n})).await;
        assert_eq!(resp.status(), 200);
    };
    notify(1).await;
    assert_silent(&cluster, &mut plain).await;

    let url = format!("{}&subscribe=user:alice", cluster.gateways[0].url(&cluster.token("alice")));
    let (mut listening, hello) = herald_testkit::WsClient::connect(&url).await.unwrap();
    assert_eq!(hello["channels"], json!(["user:alice"]), "{hello}");
    plain.subscribe("user:alice").await.unwrap();
    if let Some(count) = personal_in_redis().await {
        assert_eq!(count, "*1");
    }
    notify(2).await;
    for conn in [&mut plain, &mut listening] {
        let got = recv_messages(conn, 1).await;
        assert_eq!((got[0]["channel"].as_str(), got[0]["data"].as_i64()), (Some("user:alice"), Some(2)));
    }

    let reply = plain.request(json!({"type": "unsubscribe", "channel": "user:alice"})).await.unwrap();
    assert_eq!(reply["type"], "unsubscribed", "{reply}");
    let reply = plain.request(json!({"type": "subscribe", "channel": "user:bob"})).await.unwrap();
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = plain.request(json!({"type": "unsubscribe", "channel": "broadcast"})).await.unwrap();
    assert_eq!(reply["code"], "forbidden", "{reply}");
    notify(3).await;
    assert_eq!(recv_messages(&mut listening, 1).await[0]["data"], 3);
    assert_silent(&cluster, &mut plain).await;
    // The broadcast channel is still subscribed for everyone.
    let resp = cluster.post("/v1/broadcast", json!({"data": "all"})).await;
    assert_eq!(resp.status(), 200);
    for conn in [&mut plain, &mut listening] {
        assert_eq!(recv_messages(conn, 1).await[0]["channel"], "broadcast");
    }
}

/// A broadcast reaches every connection on every gateway, over HTTP and gRPC.
async fn broadcast_reaches_everyone(engine: Engine) {
    let cluster = Cluster::start(engine, 2).await;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(cluster.connect(i % 2, &format!("b{i}")).await);
    }
    let resp = cluster.post("/v1/broadcast", json!({"data": "maintenance at noon"})).await;
    assert_eq!(resp.status(), 200);
    let mut grpc = cluster.grpc().await;
    grpc.broadcast(grpc_request(pb::BroadcastRequest { data: b"\"second\"".to_vec(), event: None }))
        .await
        .unwrap();
    for client in &mut clients {
        let got = recv_messages(client, 2).await;
        assert_eq!(got[0]["channel"], "broadcast");
        assert_eq!(got[0]["data"], "maintenance at noon");
        assert_eq!(got[1]["data"], "second");
    }
}

/// In a namespace that allows it, a client's message reaches the room with `from` set; where
/// it is not allowed the client gets `forbidden` and nothing is sent.
async fn clients_publish_only_where_the_namespace_allows(engine: Engine) {
    let cluster = Cluster::start(engine, 2).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    alice.subscribe("chat:general").await.unwrap();
    bob.subscribe("chat:general").await.unwrap();
    bob.subscribe("room:news").await.unwrap();

    // The publisher's own copy may come before or after its `published` reply.
    alice
        .send_json(json!({"type": "publish", "id": 5, "channel": "chat:general", "data": {"text": "hi"}}))
        .await
        .unwrap();
    let (first, second) = (alice.recv().await.unwrap(), alice.recv().await.unwrap());
    let (reply, own) = if first["type"] == "message" { (second, first) } else { (first, second) };
    assert_eq!(reply["type"], "published", "{reply}");
    assert_eq!(reply["id"], 5);
    let got = recv_messages(&mut bob, 1).await;
    for message in [&own, &got[0]] {
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(message["from"], "alice");
        assert_eq!(message["data"]["text"], "hi");
        assert_eq!(message["id"], reply["message_id"]);
    }

    for channel in ["room:news", "user:bob", "broadcast"] {
        let reply = alice.request(json!({"type": "publish", "channel": channel, "data": 1})).await.unwrap();
        assert_eq!(reply["code"], "forbidden", "{channel}: {reply}");
    }
    assert_silent(&cluster, &mut bob).await;
}

/// After `unsubscribe` a client gets no more messages of that channel; others still do.
async fn unsubscribed_clients_stop_receiving(engine: Engine) {
    let cluster = Cluster::start(engine, 1).await;
    let mut a = cluster.connect(0, "a").await;
    let mut b = cluster.connect(0, "b").await;
    a.subscribe("room:x").await.unwrap();
    b.subscribe("room:x").await.unwrap();
    let reply = a.request(json!({"type": "unsubscribe", "id": "u", "channel": "room:x"})).await.unwrap();
    assert_eq!(reply["type"], "unsubscribed");
    cluster.publish_http("room:x", json!(1)).await;
    assert_eq!(recv_messages(&mut b, 1).await[0]["data"], 1);
    assert_silent(&cluster, &mut a).await;
    let reply = a.request(json!({"type": "unsubscribe", "channel": "room:x"})).await.unwrap();
    assert_eq!(reply["code"], "not_subscribed");
}

/// Channels listed in the connect URL (`?subscribe=`) are live once `connected` arrives, on
/// every gateway, and behave like channels subscribed with a frame afterwards.
async fn channels_in_the_connect_url_are_live_at_connected(engine: Engine) {
    let cluster = Cluster::start(engine, 2).await;
    let mut clients = Vec::new();
    for gw in 0..2 {
        let url =
            format!("{}&subscribe=room:a,room:gw{gw},room:a", cluster.gateways[gw].url(&cluster.token("u")));
        let (client, hello) = herald_testkit::WsClient::connect(&url).await.unwrap();
        assert_eq!(hello["type"], "connected");
        assert_eq!(hello["channels"], json!(["room:a", format!("room:gw{gw}")]), "{hello}");
        clients.push(client);
    }
    // Published the moment the second client was greeted: no subscribe round trip needed.
    cluster.publish_http("room:a", json!("both")).await;
    cluster.publish_http("room:gw1", json!("second")).await;
    assert_eq!(recv_messages(&mut clients[0], 1).await[0]["data"], "both");
    let got = recv_messages(&mut clients[1], 2).await;
    assert_eq!((got[0]["data"].as_str(), got[1]["data"].as_str()), (Some("both"), Some("second")));
    let reply = clients[0].request(json!({"type": "subscribe", "channel": "room:a"})).await.unwrap();
    assert_eq!(reply["code"], "already_subscribed");
    let reply = clients[0].request(json!({"type": "unsubscribe", "channel": "room:a"})).await.unwrap();
    assert_eq!(reply["type"], "unsubscribed");
    cluster.publish_http("room:a", json!("after")).await;
    assert_eq!(recv_messages(&mut clients[1], 1).await[0]["data"], "after");
    assert_silent(&cluster, &mut clients[0]).await;
    // Without the parameter, `connected` has no `channels`.
    let (_, hello) =
        herald_testkit::WsClient::connect(&cluster.gateways[0].url(&cluster.token("v"))).await.unwrap();
    assert!(hello.get("channels").is_none(), "{hello}");
}

/// Forty clients join a channel no one had, all at once, on one gateway: one subscribes the
/// node and the others join while its confirmation is on the way. Each publishes the moment
/// it is answered (`connected` for the URL's channels, `subscribed` for a frame) and must
/// receive its own message. (`redis_outage.rs` holds Redis's answer back to show that the
/// later joiners wait for it; here they race for real.)
async fn clients_joining_a_new_channel_together_are_each_live_when_answered(engine: Engine) {
    let cluster = Cluster::start(engine, 1).await;
    let clients = (0..40).map(|i| {
        let cluster = &cluster;
        async move {
            let token = cluster.token(&format!("u{i}"));
            let mut client = if i % 2 == 0 {
                let url = format!("{}&subscribe=room:together", cluster.gateways[0].url(&token));
                herald_testkit::WsClient::connect(&url).await.unwrap().0
            } else {
                let mut client = cluster.connect(0, &format!("u{i}")).await;
                client.subscribe("room:together").await.unwrap();
                client
            };
            cluster.publish_http("room:together", json!(i)).await;
            loop {
                let got = recv_messages(&mut client, 1).await;
                if got[0]["data"] == i {
                    break;
                }
            }
        }
    });
    futures_util::future::join_all(clients).await;
}
