//! Answers that are true and timely while Redis is frozen (`kill -STOP`), as a hung host or a
//! stalled network looks: connections stay open and nothing answers (issue 23, findings 1
//! and 4).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::{Broker, RedisBroker, RedisConfig};
use herald_publisher_api::pb;
use herald_testkit::RedisServer;
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{TestApp, authed, spawn_app_with};

/// `redis.response_timeout` of these tests.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);
/// What an answer may take beyond `response_timeout`: HTTP and scheduling.
const MARGIN: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(15);

async fn app_on(redis: &RedisServer) -> TestApp {
    let config = RedisConfig {
        url: redis.url(),
        response_timeout: RESPONSE_TIMEOUT,
        connect_timeout: RESPONSE_TIMEOUT,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..RedisConfig::default()
    };
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(config).unwrap());
    spawn_app_with(broker).await
}

/// Status, error code (or `ok`) and how long the answer took.
async fn timed(request: reqwest::RequestBuilder) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("ok").to_string();
    (status, code, started.elapsed())
}

/// Finding 1: a publish whose command reached Redis and got no answer in time is answered
/// 504 `outcome_unknown` (gRPC DEADLINE_EXCEEDED), not 503 `unavailable` ("nothing happened,
/// retry"): once Redis runs again the message is in fact delivered, so a retry would have
/// published it twice.
#[tokio::test]
async fn a_publish_that_went_out_unanswered_is_outcome_unknown() {
    let redis = RedisServer::start().await;
    let app = app_on(&redis).await;
    let mut client = app.grpc_client().await;
    let response = app.post("/v1/publish", json!({"channel": "chat:lobby", "data": "before"})).await;
    assert_eq!(response.status(), 200);
    app.received(1).await;

    let frozen = redis.freeze().await;
    let http = app.client.post(format!("{}/v1/publish", app.http)).bearer_auth(crate::helpers::KEY);
    let http = http.body(json!({"channel": "chat:lobby", "data": "maybe http"}).to_string());
    let grpc = pb::PublishRequest {
        channel: "chat:lobby".into(),
        data: b"\"maybe grpc\"".to_vec(),
        event: None,
        idempotency_key: None,
    };
    let ((status, code, took), grpc) = tokio::join!(timed(http), client.publish(authed(grpc)));
    assert_eq!((status, code.as_str()), (504, "outcome_unknown"));
    assert!(took <= RESPONSE_TIMEOUT + MARGIN, "answered after {took:?}");
    let grpc = grpc.unwrap_err();
    assert_eq!(grpc.code(), Code::DeadlineExceeded, "{grpc:?}");
    assert!(grpc.message().contains("may or may not"), "{}", grpc.message());
    drop(frozen);

    let got = tokio::time::timeout(WAIT, app.got.wait_for(3)).await.expect("the unanswered publishes landed");
    let data: Vec<Value> =
        got.iter().map(|(_, b)| serde_json::from_slice::<Value>(b).unwrap()["data"].clone()).collect();
    assert!(data.contains(&json!("maybe http")) && data.contains(&json!("maybe grpc")), "{data:?}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"outcome="outcome_unknown""#), "{metrics}");
}

/// Finding 4: while Redis is frozen, every publish (HTTP and gRPC, single and batch) and every
/// `/readyz` answers within `redis.response_timeout` plus a small margin, never with success,
/// and with `unavailable` only when its command never went out; after Redis runs again, the API
/// is ready and publishes.
#[tokio::test]
async fn with_redis_frozen_every_answer_comes_within_the_response_timeout() {
    let redis = RedisServer::start().await;
    let app = app_on(&redis).await;
    let mut client = app.grpc_client().await;
    assert_eq!(app.post("/v1/publish", json!({"channel": "chat:lobby", "data": 0})).await.status(), 200);

    let frozen = redis.freeze().await;
    // Three waves: the first finds the connection open, the later ones find it given up and
    // have to connect to a server that accepts and never answers.
    for wave in 0..3 {
        let mut http = Vec::new();
        for i in 0..10 {
            let (path, body) = if i % 3 == 0 {
                (
                    "/v1/publish/batch",
                    json!({"messages": [{"channel": "chat:lobby", "data": i}, {"channel": "chat:other", "data": i}]}),
                )
            } else {
                ("/v1/publish", json!({"channel": "chat:lobby", "data": i}))
            };
            let request = app.client.post(format!("{}{path}", app.http)).bearer_auth(crate::helpers::KEY);
            http.push(tokio::spawn(timed(request.body(body.to_string()))));
        }
        for _ in 0..2 {
            http.push(tokio::spawn(timed(app.client.get(format!("{}/readyz", app.http)))));
        }
        let mut grpc = Vec::new();
        for i in 0..4 {
            let mut client = client.clone();
            grpc.push(tokio::spawn(async move {
                let started = Instant::now();
                let request = pb::PublishRequest {
                    channel: "chat:lobby".into(),
                    data: i.to_string().into_bytes(),
                    event: None,
                    idempotency_key: None,
                };
                let status = client.publish(authed(request)).await.unwrap_err();
                (status.code(), started.elapsed())
            }));
        }
        for task in http {
            let (status, code, took) = task.await.unwrap();
            assert!(took <= RESPONSE_TIMEOUT + MARGIN, "wave {wave}: {status} {code} after {took:?}");
            assert!(
                matches!((status, code.as_str()), (504, "outcome_unknown") | (503, "unavailable")),
                "wave {wave}: {status} {code}"
            );
        }
        for task in grpc {
            let (code, took) = task.await.unwrap();
            assert!(took <= RESPONSE_TIMEOUT + MARGIN, "wave {wave}: grpc {code:?} after {took:?}");
            assert!(matches!(code, Code::DeadlineExceeded | Code::Unavailable), "wave {wave}: {code:?}");
        }
    }
    drop(frozen);

    let deadline = Instant::now() + WAIT;
    while app.get("/readyz").await.status() != 200 {
        assert!(Instant::now() < deadline, "not ready after Redis came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = app.post("/v1/publish", json!({"channel": "chat:lobby", "data": "after"})).await;
    assert_eq!(response.status(), 200);
    client
        .publish(authed(pb::PublishRequest {
            channel: "chat:lobby".into(),
            data: b"1".to_vec(),
            event: None,
            idempotency_key: None,
        }))
        .await
        .unwrap();
}
