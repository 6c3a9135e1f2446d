//! Starts real Herald nodes for end-to-end tests: gateways and a publisher API on their own
//! listeners (port 0), on a real redis-server or on the in-memory engine, and talks to them
//! over real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_broker::{Broker, MemoryBroker, RedisBroker, RedisConfig};
use herald_gateway::{AuthConfig, Gateway, GatewayConfig};
use herald_protocol::{NamespaceConfig, Namespaces};
use herald_publisher_api::pb::publisher_client::PublisherClient;
use herald_publisher_api::{PublisherApi, PublisherConfig};
use herald_testkit::{RedisServer, WsClient};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-test-secret-test-secret!";
pub const API_KEY: &str = "test-api-key-0123456789";

/// Which engine a cluster runs on.
#[derive(Clone, Copy, Debug)]
pub enum Engine {
    Redis,
    Memory,
}

/// One gateway of a [`Cluster`], served until the cluster is dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Gateway,
}

impl TestGateway {
    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }
}

/// Gateways and a publisher API sharing one engine.
pub struct Cluster {
    pub redis: Option<RedisServer>,
    pub broker: Arc<dyn Broker>,
    pub gateways: Vec<TestGateway>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub http_client: reqwest::Client,
    stop: CancellationToken,
}

/// Namespaces every test cluster has: `room` (subscribe only), `chat` (clients publish), and
/// for pattern subscriptions `events` (open) and `vault` (private).
pub fn namespaces() -> Namespaces {
    let mut ns = Namespaces::default();
    ns.0.insert("room".into(), NamespaceConfig::default());
    ns.0.insert("chat".into(), NamespaceConfig { publish: true, ..Default::default() });
    ns.0.insert("events".into(), NamespaceConfig { patterns: true, ..Default::default() });
    let vault = NamespaceConfig { patterns: true, private: true, ..Default::default() };
    ns.0.insert("vault".into(), vault);
    ns
}

pub fn auth() -> AuthConfig {
    AuthConfig { jwt_secret: SECRET.into(), ..Default::default() }
}

impl Cluster {
    pub async fn start(engine: Engine, gateways: usize) -> Self {
        Self::start_with(engine, gateways, |_| {}).await
    }

    /// Starts `gateways` gateways (each with its own listener and its own broker subscriber)
    /// and one publisher API, with `tweak` applied to every gateway's configuration.
    pub async fn start_with(engine: Engine, gateways: usize, tweak: impl Fn(&mut GatewayConfig)) -> Self {
        let (redis, broker): (Option<RedisServer>, Arc<dyn Broker>) = match engine {
            Engine::Redis => {
                let redis = RedisServer::start().await;
                let config = RedisConfig {
                    url: redis.url(),
                    reconnect_max: Duration::from_millis(500),
                    subscribe_timeout: Duration::from_secs(2),
                    ..Default::default()
                };
                (Some(redis), Arc::new(RedisBroker::new(config).unwrap()))
            }
            Engine::Memory => (None, Arc::new(MemoryBroker::new())),
        };
        let stop = CancellationToken::new();
        let mut nodes = Vec::new();
        for _ in 0..gateways {
            let mut config = GatewayConfig::default();
            tweak(&mut config);
            let gateway = Gateway::new(config, &auth(), namespaces(), broker.clone()).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(herald_gateway::serve(gateway.clone(), listener, stop.clone().cancelled_owned()));
            nodes.push(TestGateway { addr, gateway });
        }
        let publisher = PublisherConfig { api_keys: vec![API_KEY.into()], ..Default::default() };
        let api = PublisherApi::new(
            publisher,
            namespaces(),
            Default::default(),
            Default::default(),
            broker.clone(),
        );
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        tokio::spawn(herald_publisher_api::serve(api, http, grpc, stop.clone().cancelled_owned()));
        let cluster = Self {
            redis,
            broker,
            gateways: nodes,
            http: http_addr,
            grpc: grpc_addr,
            http_client: reqwest::Client::new(),
            stop,
        };
        cluster.wait_ready().await;
        cluster
    }

    /// Waits until every gateway reports ready.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !self.gateways.iter().all(|g| g.gateway.is_ready()) {
            assert!(tokio::time::Instant::now() < deadline, "gateways did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn token(&self, user: &str) -> String {
        herald_gateway::mint(SECRET, user, Duration::from_secs(3600)).unwrap()
    }

    /// Connects `user` to gateway `gw` and returns the client after `connected`.
    pub async fn connect(&self, gw: usize, user: &str) -> WsClient {
        let (client, hello) = WsClient::connect(&self.gateways[gw].url(&self.token(user))).await.unwrap();
        assert_eq!(hello["user"], user);
        client
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http_client
            .post(format!("http://{}{path}", self.http))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Publishes over HTTP and returns the message id.
    pub async fn publish_http(&self, channel: &str, data: Value) -> String {
        let resp = self.post("/v1/publish", json!({"channel": channel, "data": data})).await;
        assert_eq!(resp.status(), 200, "publish failed: {:?}", resp.text().await);
        resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
    }

    pub async fn grpc(&self) -> PublisherClient<tonic::transport::Channel> {
        PublisherClient::connect(format!("http://{}", self.grpc)).await.unwrap()
    }

    pub fn redis(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("a Redis cluster")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A gRPC request carrying the API key.
pub fn grpc_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {API_KEY}").parse().unwrap());
    request
}

/// Reads `n` `message` frames, skipping nothing else: any other frame fails the test.
pub async fn recv_messages(client: &mut WsClient, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let frame =
            client.recv().await.unwrap_or_else(|e| panic!("after {} of {n} messages: {e}", out.len()));
        assert_eq!(frame["type"], "message", "unexpected frame {frame}");
        out.push(frame);
    }
    out
}

/// Asserts that nothing published so far reaches `client`: see [`assert_all_silent`].
pub async fn assert_silent(cluster: &Cluster, client: &mut WsClient) {
    assert_all_silent(cluster, std::slice::from_mut(client)).await;
}

/// Asserts that nothing published so far reaches any of `clients`: broadcasts a marker and
/// expects it to be each client's next frame. One publisher's messages reach a socket in
/// publish order, so whatever was on its way arrives before the marker, however slow the
/// machine. Markers of earlier calls (which reach every connection) are skipped.
pub async fn assert_all_silent(cluster: &Cluster, clients: &mut [WsClient]) {
    static MARKERS: AtomicU64 = AtomicU64::new(0);
    let marker = MARKERS.fetch_add(1, Ordering::Relaxed);
    let resp = cluster.post("/v1/broadcast", json!({"data": {"silence_marker": marker}})).await;
    assert_eq!(resp.status(), 200, "marker broadcast failed: {:?}", resp.text().await);
    for client in clients {
        loop {
            let frame = client.recv().await.unwrap_or_else(|e| panic!("waiting for marker {marker}: {e}"));
            let seen = &frame["data"]["silence_marker"];
            if frame["type"] != "message" || frame["channel"] != "broadcast" || !seen.is_u64() {
                panic!("expected no frame before marker {marker}, got {frame}");
            }
            if seen == marker {
                break;
            }
        }
    }
}

/// A `herald gateway` child process (the real binary), killed when dropped.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl GatewayProcess {
    /// Starts `herald gateway` on a free port against `redis_url`, with the test namespaces and
    /// secret plus `env`, and waits until `/readyz` answers 200.
    pub async fn start(redis_url: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on(redis_url, herald_testkit::free_port(), env).await
    }

    /// As [`GatewayProcess::start`], on `port`: a gateway restarted where its clients look
    /// for it.
    pub async fn start_on(redis_url: &str, port: u16, env: &[(&str, &str)]) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("gateway")
            .env("HERALD_REDIS__URL", redis_url)
            .env("HERALD_GATEWAY__LISTEN", addr.to_string())
            .env("HERALD_AUTH__JWT_SECRET", SECRET)
            .env("HERALD_NAMESPACES__ROOM__SUBSCRIBE", "true")
            .env("HERALD_LOG__LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null());
        let child = cmd.spawn().expect("start herald gateway");
        let process = Self { child, addr };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(resp) = reqwest::get(format!("http://{addr}/readyz")).await
                && resp.status() == 200
            {
                return process;
            }
            assert!(tokio::time::Instant::now() < deadline, "herald gateway did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, user: &str) -> String {
        let token = herald_gateway::mint(SECRET, user, Duration::from_secs(3600)).unwrap();
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// SIGTERM: the gateway drains (closes every connection with 1012 over its window).
    pub fn terminate(&self) {
        let status =
            std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(status.unwrap().success());
    }

    /// Waits until the process ended.
    pub async fn wait(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "gateway did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident memory of the process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `herald standalone` process with the shipped `config/standalone.toml`, on free ports,
/// with `env` on top (`HERALD_*` overrides); killed on drop.
pub struct StandaloneProcess {
    /// The gateway's port.
    pub ws: u16,
    /// The publisher API's HTTP port.
    pub http: u16,
    env: Vec<(&'static str, String)>,
    _process: herald_testkit::KillOnDrop,
}

impl StandaloneProcess {
    pub fn start(env: &[(&'static str, &str)]) -> Self {
        use herald_testkit::free_port;
        let (ws, http, grpc) = (free_port(), free_port(), free_port());
        let (presence_http, presence_grpc) = (free_port(), free_port());
        let mut all = vec![
            ("HERALD_GATEWAY__LISTEN", format!("127.0.0.1:{ws}")),
            ("HERALD_PUBLISHER__HTTP_LISTEN", format!("127.0.0.1:{http}")),
            ("HERALD_PUBLISHER__GRPC_LISTEN", format!("127.0.0.1:{grpc}")),
            ("HERALD_PRESENCE__HTTP_LISTEN", format!("127.0.0.1:{presence_http}")),
            ("HERALD_PRESENCE__GRPC_LISTEN", format!("127.0.0.1:{presence_grpc}")),
        ];
        all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        let process =
            Self::command(&all).arg("standalone").stdout(std::process::Stdio::null()).spawn().unwrap();
        Self { ws, http, env: all, _process: herald_testkit::KillOnDrop(process) }
    }

    /// `herald` with the same configuration, for its other subcommands.
    fn command(env: &[(&'static str, String)]) -> std::process::Command {
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/standalone.toml");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.args(["--config", config]).envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// A token for `user`, from `herald token`, as the quickstart mints it.
    pub fn token(&self, user: &str) -> String {
        let token = Self::command(&self.env).args(["token", "--user", user]).output().unwrap();
        assert!(token.status.success());
        String::from_utf8(token.stdout).unwrap().trim().to_string()
    }

    /// Connects `user`, retrying until the process accepts (15 s at most).
    pub async fn connect(&self, user: &str) -> (WsClient, Value) {
        let url = format!("ws://127.0.0.1:{}/ws?token={}", self.ws, self.token(user));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match WsClient::connect(&url).await {
                Ok(connected) => return connected,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "standalone never accepted: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
