//! What an operator's tools see: `/metrics` that `promtool` accepts in the format asked for,
//! gRPC health following the broker, and gRPC reflection.

use std::sync::Arc;

use herald_api_common::testing::{
    ServingStatus, check_metrics_endpoint, health, reflection_v1, reflection_v1alpha, wait_for_health,
};
use herald_broker::{Broker, RedisBroker, RedisConfig};
use herald_testkit::RedisServer;
use serde_json::json;
use tonic::transport::Channel;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// `/metrics` is the Prometheus text format by default, accepted by `promtool`, and
/// OpenMetrics when Prometheus asks for it, with the process and build metrics, and counters
/// named as each format wants them.
#[tokio::test]
async fn metrics_come_in_the_format_asked_for_and_promtool_accepts_them() {
    let app = spawn_app().await;
    assert_eq!(app.post("/v1/publish", json!({"channel": "chat:lobby", "data": 1})).await.status(), 200);
    assert_eq!(app.post_raw("/v1/publish", "{}".into(), None).await.status(), 401);

    let (text, open) = check_metrics_endpoint("publisher", &format!("{}/metrics", app.http)).await;
    assert!(text.contains("# TYPE herald_publisher_requests_total counter\n"), "{text}");
    assert!(text.contains("\nherald_publisher_messages_total 1\n"), "{text}");
    assert!(open.contains("# TYPE herald_publisher_requests counter\n"), "{open}");
    assert!(open.contains("\nherald_publisher_messages_total 1\n"), "{open}");
    app.stop().await.unwrap();
}

async fn channel(app: &TestApp) -> Channel {
    Channel::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap()
}

/// Health answers SERVING for the server and its service while Redis answers, NOT_FOUND for a
/// service it does not have, NOT_SERVING while Redis is down and SERVING again after; reflection
/// (v1 and v1alpha) lists the publisher, health and reflection services. None needs an API key.
#[tokio::test]
async fn grpc_health_follows_redis_and_reflection_lists_the_services() {
    let mut redis = RedisServer::start().await;
    let config = RedisConfig { url: redis.url(), ..RedisConfig::default() };
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(config).unwrap());
    let app = spawn_app_with(broker).await;
    let grpc = channel(&app).await;

    for service in ["", "herald.v1.Publisher"] {
        assert_eq!(health(grpc.clone(), service).await.unwrap(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health(grpc.clone(), "herald.v1.Nothing").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    for services in [reflection_v1(grpc.clone()).await, reflection_v1alpha(grpc.clone()).await] {
        for expected in
            ["herald.v1.Publisher", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]
        {
            assert!(services.iter().any(|s| s == expected), "{expected} not in {services:?}");
        }
    }

    redis.kill().await;
    wait_for_health(&grpc, ServingStatus::NotServing).await;
    assert_eq!(app.get("/readyz").await.status(), 503, "/readyz agrees");
    redis.restart().await;
    wait_for_health(&grpc, ServingStatus::Serving).await;
    assert_eq!(health(grpc.clone(), "herald.v1.Publisher").await.unwrap(), ServingStatus::Serving);
    app.stop().await.unwrap();
}
