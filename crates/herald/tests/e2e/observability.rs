//! Metrics and readiness as an operator sees them: over HTTP, from real nodes.

use std::time::Duration;

use crate::common::{Cluster, Engine, grpc_request, recv_messages};
use herald_publisher_api::pb;
use serde_json::json;

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// `/metrics` on the gateway and the publisher API count connections, subscriptions, messages,
/// deliveries and requests by outcome, and the latency histogram has observations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_flows() {
    let cluster = Cluster::start(Engine::Redis, 1).await;
    let mut a = cluster.connect(0, "a").await;
    let mut b = cluster.connect(0, "b").await;
    a.subscribe("room:m").await.unwrap();
    b.subscribe("room:m").await.unwrap();
    for i in 0..3 {
        cluster.publish_http("room:m", json!(i)).await;
    }
    let mut grpc = cluster.grpc().await;
    let request = pb::PublishRequest {
        channel: "room:m".into(),
        data: b"3".to_vec(),
        event: None,
        idempotency_key: None,
    };
    grpc.publish(grpc_request(request)).await.unwrap();
    let bad = cluster.post("/v1/publish", json!({"channel": "nope:x", "data": 1})).await;
    assert_eq!(bad.status(), 422);
    assert!(bad.headers().contains_key("x-request-id"));
    recv_messages(&mut a, 4).await;
    recv_messages(&mut b, 4).await;

    let gw = reqwest::get(format!("http://{}/metrics", cluster.gateways[0].addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sample(&gw, "herald_gateway_connections"), 2.0);
    // Two server-managed subscriptions per connection, plus room:m.
    assert_eq!(sample(&gw, "herald_gateway_subscriptions"), 6.0);
    assert!(sample(&gw, "herald_gateway_channels") >= 3.0);
    assert!(sample(&gw, "herald_gateway_messages_in_total") >= 4.0);
    assert!(sample(&gw, "herald_gateway_frames_delivered_total") >= 8.0);
    assert!(sample(&gw, "herald_gateway_delivery_latency_seconds_count") >= 1.0);
    assert_eq!(sample(&gw, "herald_gateway_ready"), 1.0);

    let url = format!("http://{}/metrics", cluster.http);
    let publisher = reqwest::get(url).await.unwrap().text().await.unwrap();
    assert!(
        publisher.contains(
            r#"herald_publisher_requests_total{transport="http",endpoint="/v1/publish",outcome="ok"} 3"#
        ),
        "{publisher}"
    );
    assert!(
        publisher.contains(
            r#"herald_publisher_requests_total{transport="grpc",endpoint="Publish",outcome="ok"} 1"#
        ),
        "{publisher}"
    );
    assert!(publisher.contains(r#"outcome="unknown_channel"} 1"#), "{publisher}");
    assert_eq!(sample(&publisher, "herald_publisher_messages_total"), 4.0);
}

/// Readiness follows delivery, not the connection: with Redis paused for writes the gateway's
/// subscription connection stays up, but its canary cannot get through, so `/readyz` turns
/// 503; when Redis resumes, the gateway is ready again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_delivery_canary() {
    let mut cluster = Cluster::start_with(Engine::Redis, 1, |c| {
        c.canary_interval = Duration::from_millis(200);
        c.canary_timeout = Duration::from_millis(500);
    })
    .await;
    let gateway = cluster.gateways[0].gateway.clone();
    let readyz = format!("http://{}/readyz", cluster.gateways[0].addr);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);

    assert_eq!(cluster.redis().command(&["CLIENT", "PAUSE", "3000", "WRITE"]).await, "+OK");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while gateway.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "still ready while nothing can be delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        *gateway.hub().subscriber().status().borrow(),
        "the subscription connection should still look fine"
    );
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 503);

    cluster.redis().command(&["CLIENT", "UNPAUSE"]).await;
    cluster.wait_ready().await;
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
}
