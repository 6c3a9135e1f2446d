//! Graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_broker::{Broker, BrokerError, Delivery, MemoryBroker, Subscriber};
use herald_protocol::ChannelName;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use crate::helpers::{spawn_app, spawn_app_with};

/// A memory broker whose publishes (single or batch) wait until the test opens the gate.
pub struct GatedBroker {
    inner: MemoryBroker,
    /// One permit per publish allowed through.
    pub gate: Semaphore,
    /// Signalled when a publish starts waiting at the gate.
    pub waiting: Notify,
    /// Publishes that reached the gate so far.
    arrived: AtomicUsize,
}

impl GatedBroker {
    pub fn new() -> Self {
        Self {
            inner: MemoryBroker::new(),
            gate: Semaphore::new(0),
            waiting: Notify::new(),
            arrived: AtomicUsize::new(0),
        }
    }

    /// Waits until `n` publishes in all reached the gate.
    pub async fn arrivals(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.arrived.load(Ordering::SeqCst) < n {
            assert!(tokio::time::Instant::now() < deadline, "publishes did not reach the gate");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn pass(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        self.waiting.notify_one();
        self.gate.acquire().await.unwrap().forget();
    }
}

#[async_trait]
impl Broker for GatedBroker {
    async fn publish(&self, channel: &ChannelName, payload: Bytes) -> Result<(), BrokerError> {
        self.pass().await;
        self.inner.publish(channel, payload).await
    }

    async fn publish_batch(&self, batch: &[(ChannelName, Bytes)]) -> Result<(), BrokerError> {
        self.pass().await;
        self.inner.publish_batch(batch).await
    }

    fn subscriber(&self, delivery: Arc<dyn Delivery>) -> Arc<dyn Subscriber> {
        self.inner.subscriber(delivery)
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        self.inner.ping().await
    }

    fn name(&self) -> &'static str {
        "gated"
    }
}

/// A request in flight when shutdown begins still completes and is published, and `serve`
/// returns only after it did.
#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let broker = Arc::new(GatedBroker::new());
    let mut app = spawn_app_with(broker.clone()).await;
    let request = app.client.post(format!("{}/v1/publish", app.http)).bearer_auth(crate::helpers::KEY);
    let in_flight =
        tokio::spawn(request.body(json!({"channel": "chat:lobby", "data": 1}).to_string()).send());
    broker.waiting.notified().await;

    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!app.is_finished(), "serve returned while a request was in flight");

    broker.gate.add_permits(1);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    app.join().await.unwrap();
    assert_eq!(app.got.wait_for(1).await.len(), 1);
}

/// Once shutdown resolves, `serve` returns `Ok` and both ports stop accepting connections.
#[tokio::test]
async fn serve_returns_and_closes_both_ports_on_shutdown() {
    let app = spawn_app().await;
    let (http, grpc) = (app.http.clone(), app.grpc.clone());
    let client = app.client.clone();
    app.stop().await.unwrap();
    assert!(client.get(format!("{http}/livez")).send().await.is_err(), "http still accepting");
    let grpc_addr = grpc.trim_start_matches("http://");
    assert!(tokio::net::TcpStream::connect(grpc_addr).await.is_err(), "grpc still accepting");
}
