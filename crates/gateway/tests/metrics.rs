//! A gateway's `/metrics`, fetched over a real socket: what a scraper and `promtool` get.

use std::sync::Arc;

use herald_api_common::testing::check_metrics_endpoint;
use herald_broker::{Broker, MemoryBroker};
use herald_gateway::{AuthConfig, Gateway, GatewayConfig};
use herald_protocol::Namespaces;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `/metrics` is the Prometheus text format by default, accepted by `promtool`, and
/// OpenMetrics when Prometheus asks for it, with the process and build metrics, and counters
/// named as each format wants them.
#[tokio::test]
async fn metrics_come_in_the_format_asked_for_and_promtool_accepts_them() {
    let auth = AuthConfig { jwt_secret: "0123456789abcdef0123456789abcdef".into(), ..Default::default() };
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let gateway = Gateway::new(GatewayConfig::default(), &auth, Namespaces::default(), broker).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let served = tokio::spawn(herald_gateway::serve(gateway, listener, stop.clone().cancelled_owned()));

    let (text, open) = check_metrics_endpoint("gateway", &url).await;
    assert!(text.contains("# TYPE herald_gateway_connections_opened_total counter\n"), "{text}");
    assert!(open.contains("# TYPE herald_gateway_connections_opened counter\n"), "{open}");
    assert!(text.contains("# TYPE herald_gateway_delivery_latency_seconds histogram\n"), "{text}");
    stop.cancel();
    served.await.unwrap().unwrap();
}
