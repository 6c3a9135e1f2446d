//! What an operator's tools see of the presence role, served for real on port 0 over a real
//! Redis: `/metrics` that `promtool` accepts, gRPC health following Redis, and reflection.

use std::sync::Arc;
use std::time::Duration;

use herald_api_common::testing::{
    ServingStatus, check_metrics_endpoint, health, reflection_v1, reflection_v1alpha, wait_for_health,
};
use herald_broker::{Broker, MemoryBroker, RedisConfig};
use herald_presence::{PresenceApi, PresenceConfig, PresenceStore, RedisStore};
use herald_protocol::Namespaces;
use herald_testkit::RedisServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(15);

struct App {
    http: String,
    grpc: Channel,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn spawn(redis: &RedisServer) -> App {
    let config = PresenceConfig::default();
    let redis_config = RedisConfig { url: redis.url(), ..RedisConfig::default() };
    let store: Arc<dyn PresenceStore> = Arc::new(RedisStore::new(redis_config, config.timings()).unwrap());
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let api =
        PresenceApi::new(config, &["presence-key-0123456789".into()], Namespaces::default(), store, broker)
            .unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(herald_presence::serve(api, http, grpc, async move {
        let _ = stopped.await;
    }));
    let grpc = Channel::from_shared(format!("http://{grpc_addr}")).unwrap().connect().await.unwrap();
    App { http: format!("http://{http_addr}"), grpc, stop, served }
}

impl App {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.served).await.expect("serve returned").unwrap().unwrap();
    }
}

/// `/metrics` is the Prometheus text format by default, accepted by `promtool`, and
/// OpenMetrics when Prometheus asks for it, with the process and build metrics and the
/// presence gauges read from the store.
#[tokio::test]
async fn metrics_come_in_the_format_asked_for_and_promtool_accepts_them() {
    let redis = RedisServer::start().await;
    let app = spawn(&redis).await;
    let (text, open) = check_metrics_endpoint("presence", &format!("{}/metrics", app.http)).await;
    assert!(text.contains("\nherald_presence_online_users 0\n"), "{text}");
    assert!(open.contains("# TYPE herald_presence_events_lost counter\n"), "{open}");
    assert!(text.contains("# TYPE herald_presence_events_lost_total counter\n"), "{text}");
    app.stop().await;
}

/// Health answers SERVING for the server and the presence service while Redis answers,
/// NOT_FOUND for a service it does not have, NOT_SERVING once Redis is killed and SERVING
/// after it restarts; reflection (v1 and v1alpha) lists the presence, health and reflection
/// services. None of them needs an API key.
#[tokio::test]
async fn grpc_health_follows_redis_and_reflection_lists_the_services() {
    let mut redis = RedisServer::start().await;
    let app = spawn(&redis).await;
    for service in ["", "herald.v1.Presence"] {
        assert_eq!(health(app.grpc.clone(), service).await.unwrap(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health(app.grpc.clone(), "herald.v1.Publisher").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    for services in [reflection_v1(app.grpc.clone()).await, reflection_v1alpha(app.grpc.clone()).await] {
        for expected in [
            "herald.v1.Presence",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(services.iter().any(|s| s == expected), "{expected} not in {services:?}");
        }
    }

    redis.kill().await;
    wait_for_health(&app.grpc, ServingStatus::NotServing).await;
    let readyz = reqwest::get(format!("{}/readyz", app.http)).await.unwrap();
    assert_eq!(readyz.status(), 503, "/readyz agrees");
    redis.restart().await;
    wait_for_health(&app.grpc, ServingStatus::Serving).await;
    assert_eq!(health(app.grpc.clone(), "herald.v1.Presence").await.unwrap(), ServingStatus::Serving);
    app.stop().await;
}
