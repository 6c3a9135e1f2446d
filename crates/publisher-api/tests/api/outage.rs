//! A real Redis going away and coming back.

use std::sync::Arc;
use std::time::Duration;

use herald_broker::{Broker, RedisBroker, RedisConfig};
use herald_publisher_api::pb;
use herald_testkit::RedisServer;
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{assert_error, assert_message, authed, spawn_app_with};

const WAIT: Duration = Duration::from_secs(15);

/// While Redis is down, publishing fails with 503 over HTTP and UNAVAILABLE over gRPC (never a
/// false success) and `/readyz` says 503; after Redis restarts, publishing works again.
#[tokio::test]
async fn publishing_while_redis_is_down_fails_loudly_and_recovers() {
    let mut redis = RedisServer::start().await;
    let config = RedisConfig {
        url: redis.url(),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..RedisConfig::default()
    };
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(config).unwrap());
    let app = spawn_app_with(broker).await;
    let mut client = app.grpc_client().await;
    let mut live = app.node.status();

    let response = app.post("/v1/publish", json!({"channel": "chat:lobby", "data": "before"})).await;
    assert_eq!(response.status(), 200);
    app.received(1).await;

    redis.kill().await;
    tokio::time::timeout(WAIT, live.wait_for(|up| !*up))
        .await
        .expect("node never noticed the outage")
        .unwrap();
    for path in ["/v1/publish", "/v1/publish/batch"] {
        let body = if path.ends_with("batch") {
            json!({"messages": [{"channel": "chat:lobby", "data": "lost"}]})
        } else {
            json!({"channel": "chat:lobby", "data": "lost"})
        };
        let message = assert_error(app.post(path, body).await, 503, "unavailable").await;
        assert!(message.contains("nothing was published"), "{message}");
    }
    assert_error(app.post("/v1/users/alice/notify", json!({"data": 1})).await, 503, "unavailable").await;
    let request = pb::PublishRequest {
        channel: "chat:lobby".into(),
        data: b"\"lost\"".to_vec(),
        event: None,
        idempotency_key: None,
    };
    let status = client.publish(authed(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let request = pb::BroadcastRequest { data: b"1".to_vec(), event: None };
    assert_eq!(client.broadcast(authed(request)).await.unwrap_err().code(), Code::Unavailable);
    assert_error(app.get("/readyz").await, 503, "unavailable").await;
    assert_eq!(app.get("/livez").await.status(), 200, "liveness does not depend on the broker");

    redis.restart().await;
    tokio::time::timeout(WAIT, live.wait_for(|up| *up)).await.expect("node never resubscribed").unwrap();
    assert_eq!(app.get("/readyz").await.status(), 200);
    app.got.clear();
    let response = app.post("/v1/publish", json!({"channel": "chat:lobby", "data": "after"})).await;
    assert_eq!(response.status(), 200);
    let http_id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let request = pb::PublishRequest {
        channel: "chat:lobby".into(),
        data: b"\"after grpc\"".to_vec(),
        event: None,
        idempotency_key: None,
    };
    let grpc_id = client.publish(authed(request)).await.unwrap().into_inner().id;
    let got = app.received(2).await;
    assert_message(&got[0].1, "chat:lobby", &http_id, &json!("after"), None);
    assert_message(&got[1].1, "chat:lobby", &grpc_id, &json!("after grpc"), None);
    assert!(!got.iter().any(|(_, frame)| frame["data"] == "lost"));
}
