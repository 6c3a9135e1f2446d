//! Starts presence end to end for tests: a real redis-server, presence replicas on their own
//! listeners, and gateways that report to them over gRPC, with short timings.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{Broker, Delivery, RedisBroker, RedisConfig, Subscriber};
use herald_gateway::{AuthConfig, Gateway, GatewayConfig};
use herald_presence::{GrpcTransport, PresenceApi, PresenceConfig, RedisStore, Reporter};
use herald_protocol::{ChannelName, NamespaceConfig, Namespaces};
use herald_testkit::{WsClient, free_port};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-test-secret-test-secret!";
pub const API_KEY: &str = "test-api-key-0123456789";
pub const EVENTS: &str = "presence:events";

/// Timings short enough for tests: a dead gateway is gone within `ttl + sweep_interval`, its
/// users `offline` `grace` later.
pub fn config() -> PresenceConfig {
    PresenceConfig {
        api_keys: vec![API_KEY.into()],
        ttl: Duration::from_millis(1500),
        heartbeat_interval: Duration::from_millis(300),
        flush_interval: Duration::from_millis(50),
        sweep_interval: Duration::from_millis(100),
        grace: Duration::from_millis(600),
        request_timeout: Duration::from_millis(500),
        max_bulk: 100,
        ..Default::default()
    }
}

/// The longest a transition may take in these tests: the staleness bound plus the grace
/// period plus slack for a loaded machine.
pub fn bound() -> Duration {
    let c = config();
    c.ttl + c.sweep_interval + c.grace + Duration::from_secs(3)
}

/// `room`: presence, join/leave and client presence on; `quiet`: presence off; `chat`: the
/// defaults (members tracked, no join/leave frames).
pub fn namespaces() -> Namespaces {
    let mut ns = Namespaces::default();
    let room = NamespaceConfig { join_leave: true, client_presence: true, ..Default::default() };
    ns.0.insert("room".into(), room);
    ns.0.insert("quiet".into(), NamespaceConfig { presence: false, join_leave: true, ..Default::default() });
    ns.0.insert("chat".into(), NamespaceConfig::default());
    ns
}

pub fn redis_config(url: &str) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        reconnect_max: Duration::from_millis(300),
        subscribe_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

/// One presence replica on fixed ports, so it can be stopped and started again in place.
pub struct Replica {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    redis_url: String,
    running: Option<(CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>)>,
    /// The listeners of the first start, bound on ports the system chose (so no other test
    /// can take them between choosing and binding).
    first: Option<(TcpListener, TcpListener)>,
}

impl Replica {
    pub async fn start(redis_url: &str) -> Self {
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http, grpc) = (http_listener.local_addr().unwrap(), grpc_listener.local_addr().unwrap());
        let first = Some((http_listener, grpc_listener));
        let mut replica = Self { http, grpc, redis_url: redis_url.into(), running: None, first };
        replica.resume().await;
        replica
    }

    /// Starts the replica (again) on its ports.
    pub async fn resume(&mut self) {
        assert!(self.running.is_none(), "already running");
        let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(redis_config(&self.redis_url)).unwrap());
        let store = RedisStore::new(redis_config(&self.redis_url), config().timings()).unwrap();
        let api =
            PresenceApi::new(config(), &[API_KEY.into()], namespaces(), Arc::new(store), broker).unwrap();
        let (http, grpc) = match self.first.take() {
            Some(listeners) => listeners,
            None => (bind(self.http).await, bind(self.grpc).await),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(herald_presence::serve(api, http, grpc, stop.clone().cancelled_owned()));
        self.running = Some((stop, task));
    }

    /// Stops the replica and waits until its listeners are closed.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.running {
            stop.cancel();
        }
    }
}

/// Binds `addr`, retrying briefly while a previous listener on it is still closing.
async fn bind(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr}");
}

/// An in-process gateway reporting to a presence endpoint.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub reporter: Reporter,
    stop: CancellationToken,
}

impl TestGateway {
    pub async fn start(broker: Arc<dyn Broker>, endpoint: &str) -> Self {
        let transport = GrpcTransport::new(endpoint, API_KEY, &Default::default()).unwrap();
        let reporter = Reporter::spawn(config(), namespaces(), Arc::new(transport));
        let auth = AuthConfig { jwt_secret: SECRET.into(), ..Default::default() };
        let gateway = Gateway::with_observer(
            GatewayConfig { canary_interval: Duration::from_millis(200), ..Default::default() },
            &auth,
            namespaces(),
            broker,
            Arc::new(reporter.clone()),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(herald_gateway::serve(gateway.clone(), listener, stop.clone().cancelled_owned()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !gateway.is_ready() {
            assert!(tokio::time::Instant::now() < deadline, "gateway did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { addr, reporter, stop }
    }

    pub async fn connect(&self, user: &str) -> WsClient {
        connect_to(self.addr, user, None).await
    }

    pub async fn connect_with_info(&self, user: &str, info: Value) -> WsClient {
        connect_to(self.addr, user, Some(info)).await
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects `user` (with an `info` claim when given) and returns the client after `connected`.
pub async fn connect_to(addr: SocketAddr, user: &str, info: Option<Value>) -> WsClient {
    let token = token(user, info);
    let (client, hello) = WsClient::connect(&format!("ws://{addr}/ws?token={token}")).await.unwrap();
    assert_eq!(hello["user"], user);
    client
}

pub fn token(user: &str, info: Option<Value>) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut claims = serde_json::json!({"sub": user, "exp": now + 3600});
    if let Some(info) = info {
        claims["info"] = info;
    }
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// Records what arrives on one broker channel (the backends' view of the events channel).
#[derive(Default)]
pub struct Collector {
    received: Mutex<Vec<Value>>,
}

impl Delivery for Collector {
    fn deliver(&self, _channel: &str, payload: Bytes) {
        self.received.lock().unwrap().push(serde_json::from_slice(&payload).unwrap());
    }
}

impl Collector {
    /// Subscribes to `channel` through its own node, as a backend would.
    pub async fn subscribe(broker: &Arc<dyn Broker>, channel: &str) -> (Arc<Self>, Arc<dyn Subscriber>) {
        let collector = Arc::new(Self::default());
        let subscriber = broker.subscriber(collector.clone());
        subscriber.subscribe(&ChannelName::parse(channel).unwrap()).await.unwrap();
        (collector, subscriber)
    }

    pub fn all(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Events of `kind` for `user` so far.
    pub fn count(&self, kind: &str, user: &str) -> usize {
        self.all().iter().filter(|e| e["type"] == kind && e["user"] == user).count()
    }

    /// Waits (bounded) until an event of `kind` for `user` arrived.
    pub async fn wait_for(&self, kind: &str, user: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.count(kind, user) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} event for {user} within {within:?}; got {:?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A presence API client.
pub struct Api {
    pub http: SocketAddr,
    client: reqwest::Client,
}

impl Api {
    pub fn new(http: SocketAddr) -> Self {
        Self { http, client: reqwest::Client::new() }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp =
            self.client.get(format!("http://{}{path}", self.http)).bearer_auth(API_KEY).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: String) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("http://{}{path}", self.http))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn user(&self, user: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/presence/users/{user}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls `check` on the user's presence until it holds (bounded by `within`).
    pub async fn wait_user(&self, user: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self.get(&format!("/v1/presence/users/{user}")).await;
            if status == 200 && check(&body) {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "{user} never matched within {within:?}: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Api {
    /// Polls `check` on the channel's presence until it holds (bounded by `within`).
    pub async fn wait_channel(
        &self,
        channel: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self.get(&format!("/v1/presence/channels/{channel}")).await;
            if status == 200 && check(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{channel} never matched within {within:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads frames until one of `kind` arrives (bounded), skipping others.
pub async fn next_of(client: &mut WsClient, kind: &str) -> Value {
    for _ in 0..100 {
        let frame = client.recv().await.unwrap_or_else(|e| panic!("waiting for {kind}: {e}"));
        if frame["type"] == kind {
            return frame;
        }
    }
    panic!("no {kind} frame among 100");
}

/// Collects every frame that arrives within `wait`.
pub async fn drain(client: &mut WsClient, wait: Duration) -> Vec<Value> {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return frames;
        }
        match client.recv_within(left).await {
            Ok(frame) => frames.push(frame),
            Err(_) => return frames,
        }
    }
}

/// A `herald presence` child process on free ports, configured as a deployment would be
/// (`HERALD_*` variables): Redis at `redis_url`, its two listeners, the test API key, warnings
/// only, and `env` on top. Killed when dropped.
pub struct PresenceProcess {
    _child: herald_testkit::KillOnDrop,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

impl PresenceProcess {
    /// Starts it without waiting: see [`PresenceProcess::wait_ready`].
    pub fn spawn(redis_url: &str, env: &[(&str, &str)]) -> Self {
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("presence")
            .env("HERALD_REDIS__URL", redis_url)
            .env("HERALD_PRESENCE__HTTP_LISTEN", http.to_string())
            .env("HERALD_PRESENCE__GRPC_LISTEN", grpc.to_string())
            .env("HERALD_PRESENCE__API_KEYS", API_KEY)
            .env("HERALD_LOG__LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self { _child: herald_testkit::KillOnDrop(child), http, grpc }
    }

    /// Starts it and waits until its plain-HTTP `/readyz` answers 200.
    pub async fn start(redis_url: &str, env: &[(&str, &str)]) -> Self {
        let presence = Self::spawn(redis_url, env);
        let http = presence.http;
        presence
            .wait_ready(async || {
                reqwest::get(format!("http://{http}/readyz")).await.is_ok_and(|r| r.status() == 200)
            })
            .await;
        presence
    }

    /// Waits until `ready` says so, for at most 15 s.
    pub async fn wait_ready(&self, ready: impl AsyncFn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !ready().await {
            assert!(tokio::time::Instant::now() < deadline, "herald presence did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
