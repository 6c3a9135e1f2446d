//! The replica's limits on work in flight and each key's rate (issue 23, finding 2): over a
//! limit the answer comes at once, says nothing happened, and says when to retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_broker::MemoryBroker;
use herald_publisher_api::pb;
use prost::Message;
use serde_json::json;
use tonic::Code;

use crate::grpc::RawCodec;
use crate::helpers::{KEY, assert_error, authed, config, spawn_app_with_config, with_key};
use crate::shutdown::GatedBroker;

/// How fast a refusal must come: at once, not after waiting for room.
const AT_ONCE: Duration = Duration::from_millis(500);

fn publish(data: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        channel: "chat:lobby".into(),
        data: data.as_bytes().to_vec(),
        event: None,
        idempotency_key: None,
    }
}

/// A request over `max_requests_in_flight` is refused at once with 503 `overloaded` and
/// `Retry-After` (gRPC: UNAVAILABLE with `retry-after`); the requests in flight complete, and
/// the refusal is counted in the metrics.
#[tokio::test]
async fn requests_over_the_in_flight_limit_are_refused_at_once() {
    let broker = Arc::new(GatedBroker::new());
    let config = herald_publisher_api::PublisherConfig { max_requests_in_flight: 2, ..config() };
    let app = spawn_app_with_config(broker.clone(), config).await;
    let held: Vec<_> = (0..2)
        .map(|i| {
            let request = app.client.post(format!("{}/v1/publish", app.http)).bearer_auth(KEY);
            tokio::spawn(request.body(json!({"channel": "chat:lobby", "data": i}).to_string()).send())
        })
        .collect();
    broker.arrivals(2).await;

    let started = Instant::now();
    let response = app.post("/v1/publish", json!({"channel": "chat:lobby", "data": "third"})).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let message = assert_error(response, 503, "overloaded").await;
    assert!(
        message.contains("max_requests_in_flight") && message.contains("nothing was published"),
        "{message}"
    );
    let status = app.grpc_client().await.publish(authed(publish("\"third\""))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
    assert!(started.elapsed() < AT_ONCE, "refusals took {:?}", started.elapsed());

    broker.gate.add_permits(3);
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    let response = app.post("/v1/publish", json!({"channel": "chat:lobby", "data": "later"})).await;
    assert_eq!(response.status(), 200, "the slots were given back");
    let data: Vec<_> = app.received(3).await.into_iter().map(|(_, m)| m["data"].clone()).collect();
    assert!(!data.contains(&json!("third")), "a refused request was published");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"herald_publisher_limited_total{transport="http",limit="requests_in_flight"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"herald_publisher_limited_total{transport="grpc",limit="requests_in_flight"} 1"#),
        "{metrics}"
    );
}

/// A batch body that would take more than `max_bytes_in_flight` is refused with `overloaded`:
/// over HTTP from its `Content-Length` before it is read, over gRPC (no length up front) as
/// soon as its bytes go over while they arrive.
#[tokio::test]
async fn batch_bodies_over_the_bytes_in_flight_are_refused() {
    let broker = Arc::new(GatedBroker::new());
    let config = herald_publisher_api::PublisherConfig { max_bytes_in_flight: 64 * 1024, ..config() };
    let app = spawn_app_with_config(broker.clone(), config).await;
    // 60 KB of JSON: five small messages and whitespace. Beyond the single body limit (17 KiB)
    // it holds about 43 KB of the 64 KiB.
    let padded = |tag: &str| {
        let messages: Vec<_> =
            (0..5).map(|i| json!({"channel": "chat:lobby", "data": format!("{tag}{i}")})).collect();
        let body = json!({ "messages": messages }).to_string();
        format!("{body}{}", " ".repeat(60_000 - body.len()))
    };
    let held = tokio::spawn(
        app.client
            .post(format!("{}/v1/publish/batch", app.http))
            .bearer_auth(KEY)
            .body(padded("held"))
            .send(),
    );
    broker.arrivals(1).await;

    let started = Instant::now();
    let response = app.post_raw("/v1/publish/batch", padded("http"), Some(KEY)).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let message = assert_error(response, 503, "overloaded").await;
    assert!(message.contains("max_bytes_in_flight"), "{message}");

    // The same over gRPC: a valid batch padded with an unknown field, which protobuf skips.
    let mut grpc_batch = pb::PublishBatchRequest { messages: vec![publish("1")] }.encode_to_vec();
    prost::encoding::bytes::encode(15, &vec![b' '; 60_000], &mut grpc_batch);
    let channel = tonic::transport::Endpoint::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/herald.v1.Publisher/PublishBatch");
    raw.ready().await.unwrap();
    let status = raw.unary(authed(grpc_batch.clone()), path.clone(), RawCodec).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("max_bytes_in_flight"), "{}", status.message());
    assert!(started.elapsed() < AT_ONCE, "refusals took {:?}", started.elapsed());

    broker.gate.add_permits(2);
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    raw.ready().await.unwrap();
    raw.unary(authed(grpc_batch), path, RawCodec).await.expect("the bytes were given back");
    let got = app.received(6).await;
    assert!(got.iter().all(|(_, m)| !m["data"].as_str().unwrap_or("").starts_with("http")));
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"transport="http",limit="bytes_in_flight""#), "{metrics}");
    assert!(metrics.contains(r#"transport="grpc",limit="bytes_in_flight""#), "{metrics}");
}

/// A batch body over `max_batch_body_size` is 413 from its `Content-Length`, before it is read.
#[tokio::test]
async fn batch_bodies_over_the_size_limit_are_413() {
    let app = spawn_app_with_config(Arc::new(MemoryBroker::new()), config()).await;
    let body = format!(r#"{{"messages": [{{"channel": "chat:lobby", "data": 1}}]}}{}"#, " ".repeat(100_000));
    let message =
        assert_error(app.post_raw("/v1/publish/batch", body, Some(KEY)).await, 413, "message_too_large")
            .await;
    assert!(message.starts_with("body: is 1000") && message.contains("limit of 65536"), "{message}");
    assert!(app.settled().await.is_empty());
}

/// Each API key has its own token bucket of messages: over it, 429 `rate_limited` with
/// `Retry-After` (gRPC: RESOURCE_EXHAUSTED with `retry-after`), while another key still
/// publishes; a batch takes a token per message.
#[tokio::test]
async fn each_key_is_rate_limited_on_its_own() {
    let config = herald_publisher_api::PublisherConfig { rate_limit: 1, rate_burst: 8, ..config() };
    let app = spawn_app_with_config(Arc::new(MemoryBroker::new()), config).await;
    let messages: Vec<_> = (0..5).map(|i| json!({"channel": "chat:lobby", "data": i})).collect();
    assert_eq!(app.post("/v1/publish/batch", json!({"messages": messages})).await.status(), 200);
    for i in 5..8 {
        assert_eq!(app.post("/v1/publish", json!({"channel": "chat:lobby", "data": i})).await.status(), 200);
    }
    let response = app.post("/v1/publish", json!({"channel": "chat:lobby", "data": "over"})).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let message = assert_error(response, 429, "rate_limited").await;
    assert!(message.contains("rate_limit"), "{message}");
    let mut client = app.grpc_client().await;
    let status = client.publish(authed(publish("\"over\""))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.metadata().get("retry-after").is_some());

    let other = app
        .post_raw(
            "/v1/publish",
            json!({"channel": "chat:lobby", "data": "other key"}).to_string(),
            Some("another-key-abcdefgh"),
        )
        .await;
    assert_eq!(other.status(), 200, "keys do not share a bucket");
    client.publish(with_key(publish("\"other grpc\""), "another-key-abcdefgh")).await.unwrap();
    let got = app.received(10).await;
    assert!(got.iter().all(|(_, m)| m["data"] != "over"));
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"limit="rate""#), "{metrics}");
}
