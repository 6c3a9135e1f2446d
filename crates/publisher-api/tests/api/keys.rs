//! Scoped API keys over the wire, on a real Redis: what a key may not do is refused with
//! `forbidden` (HTTP 403, gRPC PERMISSION_DENIED) alike on both transports, hashed keys work,
//! and `/metrics` counts requests per key name.

use std::sync::Arc;

use herald_broker::{Broker, RedisBroker, RedisConfig};
use herald_publisher_api::PublisherConfig;
use herald_publisher_api::config::KeyConfig;
use herald_publisher_api::pb;
use herald_testkit::RedisServer;
use serde_json::json;
use tonic::Code;

use crate::helpers::{TestApp, assert_error, config, spawn_app_with_config, with_key};

/// May only publish, only to `chat`.
const BILLING: &str = "billing-key-0123456789";
/// Configured by its SHA-256 alone: `printf %s hashed-key-0123456789 | sha256sum`.
const HASHED: &str = "hashed-key-0123456789";
const HASHED_SHA256: &str = "62c5559717da6012427d84b732fdf7292e3426e5a620fd08af73ebf6300f6d91";

fn scoped_config() -> PublisherConfig {
    let billing = KeyConfig {
        name: "billing".into(),
        key: Some(BILLING.into()),
        key_sha256: None,
        operations: vec!["publish".into()],
        namespaces: vec!["chat".into()],
    };
    let hashed = KeyConfig {
        name: "ops".into(),
        key: None,
        key_sha256: Some(HASHED_SHA256.into()),
        operations: vec!["*".into()],
        namespaces: vec!["*".into()],
    };
    PublisherConfig { keys: vec![billing, hashed], ..config() }
}

async fn spawn(redis: &RedisServer) -> TestApp {
    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::new(RedisConfig { url: redis.url(), ..RedisConfig::default() }).unwrap());
    spawn_app_with_config(broker, scoped_config()).await
}

fn message(channel: &str) -> pb::PublishRequest {
    pb::PublishRequest { channel: channel.into(), data: b"1".to_vec(), event: None, idempotency_key: None }
}

/// A publish-only key publishes to its namespace but cannot broadcast, notify or read
/// history, over HTTP and gRPC alike, and nothing it was refused is published.
#[tokio::test]
async fn a_publish_only_key_cannot_broadcast_notify_or_read() {
    let redis = RedisServer::start().await;
    let app = spawn(&redis).await;
    let ok =
        app.post_raw("/v1/publish", json!({"channel": "chat:lobby", "data": 1}).to_string(), Some(BILLING));
    assert_eq!(ok.await.status(), 200);
    let refused = app.post_raw("/v1/broadcast", json!({"data": 1}).to_string(), Some(BILLING)).await;
    let message_text = assert_error(refused, 403, "forbidden").await;
    assert!(message_text.contains("\"billing\" may not use broadcast"), "{message_text}");
    let refused = app.post_raw("/v1/users/alice/notify", json!({"data": 1}).to_string(), Some(BILLING)).await;
    assert_error(refused, 403, "forbidden").await;
    let refused =
        app.post_raw("/v1/publish", json!({"channel": "user:alice", "data": 1}).to_string(), Some(BILLING));
    assert_error(refused.await, 403, "forbidden").await;
    let history = app.client.get(format!("{}/v1/channels/chat:lobby/history", app.http)).bearer_auth(BILLING);
    assert_error(history.send().await.unwrap(), 403, "forbidden").await;
    let inbox = app.client.get(format!("{}/v1/users/alice/inbox", app.http)).bearer_auth(BILLING);
    assert_error(inbox.send().await.unwrap(), 403, "forbidden").await;

    let mut client = app.grpc_client().await;
    client.publish(with_key(message("chat:lobby"), BILLING)).await.unwrap();
    let broadcast = pb::BroadcastRequest { data: b"1".to_vec(), event: None };
    let status = client.broadcast(with_key(broadcast, BILLING)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("\"billing\" may not use broadcast"), "{}", status.message());
    let notify =
        pb::NotifyRequest { user: "alice".into(), data: b"1".to_vec(), event: None, idempotency_key: None };
    assert_eq!(client.notify(with_key(notify, BILLING)).await.unwrap_err().code(), Code::PermissionDenied);
    let history = pb::HistoryRequest { channel: "chat:lobby".into(), ..Default::default() };
    assert_eq!(client.history(with_key(history, BILLING)).await.unwrap_err().code(), Code::PermissionDenied);
    let inbox = pb::InboxRequest { user: "alice".into(), limit: None };
    assert_eq!(client.inbox(with_key(inbox, BILLING)).await.unwrap_err().code(), Code::PermissionDenied);

    let got = app.settled().await;
    let channels: Vec<_> = got.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(channels, ["chat:lobby", "chat:lobby"], "only the allowed publishes went out");
    app.stop().await.unwrap();
}

/// A key limited to `chat` cannot publish to `log`, alone or inside a batch (which then
/// publishes nothing), over HTTP and gRPC alike.
#[tokio::test]
async fn a_key_limited_to_chat_cannot_publish_elsewhere() {
    let redis = RedisServer::start().await;
    let app = spawn(&redis).await;
    let refused =
        app.post_raw("/v1/publish", json!({"channel": "log:a", "data": 1}).to_string(), Some(BILLING));
    let text = assert_error(refused.await, 403, "forbidden").await;
    assert!(text.starts_with("channel: ") && text.contains("namespace \"log\""), "{text}");
    let batch = json!({"messages": [{"channel": "chat:lobby", "data": 1}, {"channel": "log:a", "data": 2}]});
    let refused = app.post_raw("/v1/publish/batch", batch.to_string(), Some(BILLING)).await;
    let text = assert_error(refused, 403, "forbidden").await;
    assert!(text.starts_with("messages[1].channel: "), "{text}");

    let mut client = app.grpc_client().await;
    let status = client.publish(with_key(message("log:a"), BILLING)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("namespace \"log\""), "{}", status.message());
    let batch = pb::PublishBatchRequest { messages: vec![message("chat:lobby"), message("log:a")] };
    let status = client.publish_batch(with_key(batch, BILLING)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().starts_with("messages[1].channel: "), "{}", status.message());

    assert!(app.settled().await.is_empty(), "nothing was published");
    app.stop().await.unwrap();
}

/// A key configured only by its SHA-256 is accepted on both transports with everything its
/// grant allows (here: all), and a wrong key is still `unauthorized`.
#[tokio::test]
async fn a_key_given_by_its_hash_works() {
    let redis = RedisServer::start().await;
    let app = spawn(&redis).await;
    let ok = app.post_raw("/v1/broadcast", json!({"data": 1}).to_string(), Some(HASHED)).await;
    assert_eq!(ok.status(), 200);
    let mut client = app.grpc_client().await;
    client.publish(with_key(message("log:a"), HASHED)).await.unwrap();
    let refused = app.post_raw("/v1/broadcast", json!({"data": 1}).to_string(), Some(HASHED_SHA256)).await;
    assert_error(refused, 401, "unauthorized").await;
    assert_eq!(app.received(2).await.len(), 2);
    app.stop().await.unwrap();
}

/// `/metrics` counts requests per key name and outcome, on both transports: the scoped key
/// by its name, the flat list's by position, refusals without a valid key under an empty
/// name.
#[tokio::test]
async fn metrics_count_requests_per_key_name() {
    let redis = RedisServer::start().await;
    let app = spawn(&redis).await;
    let publish = json!({"channel": "chat:lobby", "data": 1}).to_string();
    assert_eq!(app.post_raw("/v1/publish", publish.clone(), Some(BILLING)).await.status(), 200);
    let broadcast = json!({"data": 1}).to_string();
    assert_eq!(app.post_raw("/v1/broadcast", broadcast, Some(BILLING)).await.status(), 403);
    assert_eq!(app.post_raw("/v1/publish", publish.clone(), Some(crate::helpers::KEY)).await.status(), 200);
    assert_eq!(app.post_raw("/v1/publish", publish, Some("wrong-key-0123456789")).await.status(), 401);
    let mut client = app.grpc_client().await;
    client.publish(with_key(message("chat:lobby"), BILLING)).await.unwrap();
    client.publish(with_key(message("log:a"), BILLING)).await.unwrap_err();
    client.publish(with_key(message("chat:lobby"), "wrong-key-0123456789")).await.unwrap_err();

    let text = app.get("/metrics").await.text().await.unwrap();
    for line in [
        "herald_publisher_key_requests_total{key=\"billing\",outcome=\"ok\"} 2",
        "herald_publisher_key_requests_total{key=\"billing\",outcome=\"forbidden\"} 2",
        "herald_publisher_key_requests_total{key=\"api_keys[1]\",outcome=\"ok\"} 1",
        "herald_publisher_key_requests_total{key=\"\",outcome=\"unauthorized\"} 2",
    ] {
        assert!(text.contains(&format!("\n{line}\n")), "{line} missing:\n{text}");
    }
    app.stop().await.unwrap();
}
