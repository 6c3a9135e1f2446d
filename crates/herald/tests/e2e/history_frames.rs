//! Client `history` reads and idempotent client `publish`, against real `herald gateway`
//! processes on a real redis-server, and `herald standalone` on the in-memory engine.

use std::process::{Command, Stdio};
use std::time::Duration;

use herald_testkit::{KillOnDrop, RedisServer, WsClient, free_port};
use serde_json::{Value, json};

use crate::common::{GatewayProcess, recv_messages};

/// `feed:*`: history of 5 that clients read and publish into; `log:*`: history clients may not
/// read; `chat:*`: client publishing without history.
const NAMESPACES: &[(&str, &str)] = &[
    ("HERALD_NAMESPACES__FEED__PUBLISH", "true"),
    ("HERALD_NAMESPACES__FEED__HISTORY_SIZE", "5"),
    ("HERALD_NAMESPACES__FEED__HISTORY_TTL", "1h"),
    ("HERALD_NAMESPACES__FEED__CLIENT_HISTORY", "true"),
    ("HERALD_NAMESPACES__LOG__HISTORY_SIZE", "5"),
    ("HERALD_NAMESPACES__LOG__HISTORY_TTL", "1h"),
    ("HERALD_NAMESPACES__CHAT__PUBLISH", "true"),
    // config/standalone.toml gives chat history; these tests want one without.
    ("HERALD_NAMESPACES__CHAT__HISTORY_SIZE", "0"),
    ("HERALD_NAMESPACES__CHAT__HISTORY_TTL", "0s"),
    ("HERALD_NAMESPACES__CHAT__CLIENT_HISTORY", "false"),
];

fn offsets(reply: &Value) -> Vec<u64> {
    let publications = reply["publications"].as_array().unwrap_or_else(|| panic!("not a history: {reply}"));
    publications.iter().map(|p| p["offset"].as_u64().unwrap()).collect()
}

fn assert_error(reply: &Value, code: &str) {
    assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some(code)), "{reply}");
}

/// Publishes `n` messages from `client` into `channel` and returns the last reply.
async fn publish_n(client: &mut WsClient, channel: &str, n: u64) -> Value {
    let mut last = Value::Null;
    for i in 1..=n {
        last =
            client.request(json!({"type": "publish", "channel": channel, "data": {"n": i}})).await.unwrap();
        assert_eq!((last["type"].as_str(), last["offset"].as_u64()), (Some("published"), Some(i)), "{last}");
    }
    last
}

/// A history read pages oldest or newest first, from the start or after a position, within
/// `history.read_limit`; a position no longer fully kept is `unrecoverable` with its reason;
/// and only subscribed clients read, in namespaces that allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_frames_page_and_refuse() {
    let redis = RedisServer::start().await;
    let gateway = GatewayProcess::start(&redis.url(), NAMESPACES).await;
    let (mut client, _) = WsClient::connect(&gateway.url("erin")).await.unwrap();
    let refused = client.request(json!({"type": "history", "channel": "feed:a"})).await.unwrap();
    assert_error(&refused, "not_subscribed");
    client.subscribe("feed:a").await.unwrap();
    let last = publish_n(&mut client, "feed:a", 8).await;
    let epoch = last["epoch"].as_str().unwrap().to_string();

    let at = |offset: u64| json!({"offset": offset, "epoch": epoch});
    let cases = [
        (json!({}), vec![4, 5, 6, 7, 8]),
        (json!({"limit": 3}), vec![4, 5, 6]),
        (json!({"limit": 3, "reverse": true}), vec![8, 7, 6]),
        (json!({"since": at(5)}), vec![6, 7, 8]),
        (json!({"since": at(5), "limit": 1, "reverse": true}), vec![8]),
        (json!({"since": at(8)}), vec![]),
        (json!({"limit": 0}), vec![]),
    ];
    for (mut request, expected) in cases {
        request["type"] = json!("history");
        request["channel"] = json!("feed:a");
        request["id"] = json!(7);
        let reply = client.request(request.clone()).await.unwrap();
        assert_eq!((reply["type"].as_str(), reply["id"].as_u64()), (Some("history"), Some(7)), "{reply}");
        assert_eq!(offsets(&reply), expected, "{request}");
        assert_eq!((reply["offset"].as_u64(), reply["epoch"].as_str()), (Some(8), Some(epoch.as_str())));
        for publication in reply["publications"].as_array().unwrap() {
            let offset = publication["offset"].as_u64().unwrap();
            assert_eq!(publication["data"]["n"], offset, "{publication}");
            assert_eq!(
                (publication["type"].as_str(), publication["from"].as_str()),
                (Some("message"), Some("erin"))
            );
        }
    }

    for (since, reason) in [
        (at(2), "position_too_old"),
        (at(9), "position_ahead"),
        (json!({"offset": 5, "epoch": "other"}), "epoch_changed"),
    ] {
        let reply =
            client.request(json!({"type": "history", "channel": "feed:a", "since": since})).await.unwrap();
        assert_error(&reply, "unrecoverable");
        assert!(reply["message"].as_str().unwrap().starts_with(reason), "{reply}");
    }
    let too_many =
        client.request(json!({"type": "history", "channel": "feed:a", "limit": 1001})).await.unwrap();
    assert_error(&too_many, "malformed_frame");

    client.subscribe("log:a").await.unwrap();
    client.subscribe("room:a").await.unwrap();
    for (channel, code) in [
        ("log:a", "no_history"),
        ("room:a", "no_history"),
        ("broadcast", "no_history"),
        ("user:frank", "forbidden"),
        ("nowhere:a", "unknown_channel"),
    ] {
        let reply = client.request(json!({"type": "history", "channel": channel})).await.unwrap();
        assert_error(&reply, code);
    }
}

/// A client publish retried with the same idempotency key is delivered and stored once: the
/// retry answers the first publish's id and offset with `deduplicated: true`. A key where
/// there is no history is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_client_publish_is_delivered_once() {
    let redis = RedisServer::start().await;
    let gateway = GatewayProcess::start(&redis.url(), NAMESPACES).await;
    retried_publish_is_delivered_once(&gateway.url("gus"), &gateway.url("hana")).await;
}

/// The same on the in-memory engine of `herald standalone`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_client_publish_is_delivered_once_standalone() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/standalone.toml");
    let ws = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--config", config, "standalone"])
        .env("HERALD_GATEWAY__LISTEN", format!("127.0.0.1:{ws}"))
        .env("HERALD_PUBLISHER__HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HERALD_PUBLISHER__GRPC_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HERALD_PRESENCE__HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HERALD_PRESENCE__GRPC_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HERALD_REDIS__URL", "redis://127.0.0.1:1")
        .env("HERALD_AUTH__JWT_SECRET", crate::common::SECRET)
        .envs(NAMESPACES.iter().copied())
        .stdout(Stdio::null());
    let _server = KillOnDrop(cmd.spawn().unwrap());
    let url = |user: &str| {
        let token = herald_gateway::mint(crate::common::SECRET, user, Duration::from_secs(3600)).unwrap();
        format!("ws://127.0.0.1:{ws}/ws?token={token}")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while WsClient::connect(&url("probe")).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "standalone never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    retried_publish_is_delivered_once(&url("gus"), &url("hana")).await;
}

async fn retried_publish_is_delivered_once(publisher_url: &str, subscriber_url: &str) {
    let (mut subscriber, _) = WsClient::connect(subscriber_url).await.unwrap();
    subscriber.subscribe("feed:b").await.unwrap();
    let (mut publisher, _) = WsClient::connect(publisher_url).await.unwrap();
    let publish = |n: u64, key: &str| json!({"type": "publish", "channel": "feed:b", "data": {"n": n}, "idempotency_key": key});
    let first = publisher.request(publish(1, "order-17")).await.unwrap();
    assert_eq!((first["type"].as_str(), first["offset"].as_u64()), (Some("published"), Some(1)), "{first}");
    assert!(first.get("deduplicated").is_none(), "{first}");
    let retry = publisher.request(publish(1, "order-17")).await.unwrap();
    assert_eq!(retry["deduplicated"], true, "{retry}");
    for field in ["message_id", "offset", "epoch"] {
        assert_eq!(retry[field], first[field], "{field} of the retry");
    }
    let other = publisher.request(publish(2, "order-18")).await.unwrap();
    assert_eq!((other["offset"].as_u64(), other.get("deduplicated")), (Some(2), None), "{other}");

    // One publisher's messages arrive in order: the first one, then the other key's, and
    // nothing of the retry in between.
    let got = recv_messages(&mut subscriber, 2).await;
    assert_eq!(got[0]["id"], first["message_id"]);
    assert_eq!((got[0]["offset"].as_u64(), got[1]["offset"].as_u64()), (Some(1), Some(2)));
    assert_eq!(got[1]["data"]["n"], 2, "the retry was delivered");
    subscriber.subscribe("chat:b").await.unwrap();
    let marker = publisher.request(json!({"type": "publish", "channel": "chat:b", "data": "marker"})).await;
    assert_eq!(marker.unwrap()["type"], "published");
    assert_eq!(recv_messages(&mut subscriber, 1).await[0]["data"], "marker", "a message after the retry");

    let keyed_chat =
        json!({"type": "publish", "channel": "chat:b", "data": 1, "idempotency_key": "k", "id": "x"});
    let refused = publisher.request(keyed_chat).await.unwrap();
    assert_error(&refused, "no_history");
    assert_eq!(refused["id"], "x");
    let long_key = publisher.request(publish(3, &"k".repeat(129))).await.unwrap();
    assert_error(&long_key, "malformed_frame");
}
