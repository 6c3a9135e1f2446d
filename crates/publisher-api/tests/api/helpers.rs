//! `spawn_app()`: the publisher API serving on two free ports, plus a broker node that records
//! every message published to the test channels.

use std::sync::Arc;
use std::time::Duration;

use herald_broker::conformance::{Collector, node};
use herald_broker::{Broker, MemoryBroker, Subscriber};
use herald_protocol::{ChannelName, HistoryConfig, InboxConfig, NamespaceConfig, Namespaces};
use herald_publisher_api::pb::publisher_client::PublisherClient;
use herald_publisher_api::{PublisherApi, PublisherConfig};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The API key the test app accepts.
pub const KEY: &str = "test-key-0123456789";
/// Limits small enough to exceed cheaply.
pub const MAX_MESSAGE_SIZE: usize = 1024;
pub const MAX_BATCH: usize = 5;
/// Largest batch body (and gRPC message) of the test app.
pub const MAX_BATCH_BODY: usize = 64 * 1024;
/// Channels the test node subscribes to.
pub const CHANNELS: [&str; 5] = ["chat:lobby", "chat:other", "broadcast", "user:alice", "log:a"];
/// Messages each channel of the `log` namespace keeps.
pub const LOG_HISTORY: usize = 5;

pub struct TestApp {
    /// `http://127.0.0.1:<port>` of the HTTP API.
    pub http: String,
    /// `http://127.0.0.1:<port>` of the gRPC API.
    pub grpc: String,
    /// What the test node received, in order.
    pub got: Arc<Collector>,
    pub client: reqwest::Client,
    /// Kept alive so the node stays subscribed.
    pub node: Arc<dyn Subscriber>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

pub fn config() -> PublisherConfig {
    PublisherConfig {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: vec!["another-key-abcdefgh".into(), KEY.into()],
        max_message_size: MAX_MESSAGE_SIZE,
        max_batch: MAX_BATCH,
        max_batch_body_size: MAX_BATCH_BODY,
        ..PublisherConfig::default()
    }
}

/// The app on an in-memory broker.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Arc::new(MemoryBroker::new())).await
}

/// The app on `broker`; returns once the test node's subscriptions are confirmed.
pub async fn spawn_app_with(broker: Arc<dyn Broker>) -> TestApp {
    spawn_app_with_config(broker, config()).await
}

/// The app on `broker` with `config` (see [`config`] for the test defaults).
pub async fn spawn_app_with_config(broker: Arc<dyn Broker>, config: PublisherConfig) -> TestApp {
    spawn_app_with_inbox(broker, config, InboxConfig::default()).await
}

/// The app with `inbox` as the personal channels' history. Namespaces: `chat` without
/// history, `log` with [`LOG_HISTORY`] messages for a minute.
pub async fn spawn_app_with_inbox(
    broker: Arc<dyn Broker>,
    config: PublisherConfig,
    inbox: InboxConfig,
) -> TestApp {
    config.validate().unwrap();
    let mut namespaces = Namespaces::default();
    namespaces.0.insert("chat".into(), NamespaceConfig::default());
    let log = NamespaceConfig {
        history_size: LOG_HISTORY,
        history_ttl: Duration::from_secs(60),
        ..NamespaceConfig::default()
    };
    namespaces.0.insert("log".into(), log);
    let (node, got) = node(&broker);
    for channel in CHANNELS {
        node.subscribe(&ChannelName::parse(channel).unwrap()).await.unwrap();
    }
    let http = TcpListener::bind(config.http_listen).await.unwrap();
    let grpc = TcpListener::bind(config.grpc_listen).await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let api = PublisherApi::new(config, namespaces, inbox, HistoryConfig::default(), broker);
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(herald_publisher_api::serve(api, http, grpc, async move {
        let _ = rx.await;
    }));
    TestApp {
        http: format!("http://{http_addr}"),
        grpc: format!("http://{grpc_addr}"),
        got,
        client: reqwest::Client::new(),
        node,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// POSTs `body` as JSON to `path` with the API key.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.post_raw(path, body.to_string(), Some(KEY)).await
    }

    /// POSTs raw text with an optional bearer key and no `Content-Type`.
    pub async fn post_raw(&self, path: &str, body: String, key: Option<&str>) -> reqwest::Response {
        let mut request = self.client.post(format!("{}{path}", self.http)).body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.http)).send().await.unwrap()
    }

    /// GETs `path` with the API key and returns the status and the JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(format!("{}{path}", self.http)).bearer_auth(KEY).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// A gRPC client (connected lazily, so it survives server restarts of the broker).
    pub async fn grpc_client(&self) -> PublisherClient<Channel> {
        PublisherClient::connect(self.grpc.clone()).await.unwrap()
    }

    /// Resolves the shutdown future and waits for `serve` to return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.begin_shutdown();
        self.join().await
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `serve` to return.
    pub async fn join(&mut self) -> std::io::Result<()> {
        let server = self.server.take().expect("already joined");
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("serve did not return").unwrap()
    }

    /// Whether `serve` has returned.
    pub fn is_finished(&self) -> bool {
        self.server.as_ref().is_none_or(|s| s.is_finished())
    }

    /// The messages received so far, after in-flight ones landed, as JSON.
    pub async fn settled(&self) -> Vec<(String, Value)> {
        parse(self.got.settled().await)
    }

    /// Waits for `n` messages and returns them as JSON.
    pub async fn received(&self, n: usize) -> Vec<(String, Value)> {
        parse(self.got.wait_for(n).await)
    }
}

fn parse(got: Vec<(String, bytes::Bytes)>) -> Vec<(String, Value)> {
    got.into_iter().map(|(c, b)| (c, serde_json::from_slice(&b).expect("payload is JSON"))).collect()
}

/// Adds the API key to a gRPC request.
pub fn authed<T>(message: T) -> tonic::Request<T> {
    with_key(message, KEY)
}

pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// Asserts an HTTP error reply and returns its message.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(content_type.as_deref(), Some("application/json"), "errors are JSON");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"].as_str().expect("error message").to_string()
}

/// Asserts a `message` frame on `channel` with this id, data and event.
pub fn assert_message(frame: &Value, channel: &str, id: &str, data: &Value, event: Option<&str>) {
    assert_eq!(frame["type"], "message", "{frame}");
    assert_eq!(frame["channel"], channel, "{frame}");
    assert_eq!(frame["id"], id, "{frame}");
    assert!(frame["ts"].as_u64().unwrap() > 0, "{frame}");
    assert_eq!(&frame["data"], data, "{frame}");
    match event {
        Some(e) => assert_eq!(frame["event"], e, "{frame}"),
        None => assert!(frame.get("event").is_none(), "{frame}"),
    }
}
