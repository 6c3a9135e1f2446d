//! A short run of `herald bench` against a real gateway and publisher API on a real
//! redis-server, proving the tool itself works. Never asserts timing: benchmarks are run by
//! hand (see docs/benchmarks.md), not in tests.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use herald_bench::{BenchArgs, Report, Scenario};
use herald_broker::{Broker, RedisBroker, RedisConfig};
use herald_gateway::{AuthConfig, Gateway, GatewayConfig};
use herald_protocol::{NamespaceConfig, Namespaces};
use herald_publisher_api::{PublisherApi, PublisherConfig};
use herald_testkit::RedisServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "smoke-secret-smoke-secret-smoke-secret";
const API_KEY: &str = "smoke-api-key-0123456789";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

/// One gateway and one publisher API on a fresh redis-server, stopped when dropped.
struct System {
    _redis: RedisServer,
    ws: String,
    http: String,
    grpc: String,
    stop: CancellationToken,
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start() -> System {
    start_with(GatewayConfig::default()).await
}

async fn start_with(config: GatewayConfig) -> System {
    let redis = RedisServer::start().await;
    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::new(RedisConfig { url: redis.url(), ..Default::default() }).unwrap());
    let mut namespaces = Namespaces::default();
    namespaces.0.insert("news".into(), NamespaceConfig::default());
    let auth = AuthConfig { jwt_secret: SECRET.into(), ..Default::default() };
    let gateway = Gateway::new(config, &auth, namespaces.clone(), broker.clone()).unwrap();
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(herald_gateway::serve(gateway.clone(), listener, stop.clone().cancelled_owned()));
    let api = PublisherApi::new(
        PublisherConfig { api_keys: vec![API_KEY.into()], ..Default::default() },
        namespaces,
        Default::default(),
        Default::default(),
        broker,
    );
    let (http, grpc) =
        (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let (http_url, grpc_url) =
        (format!("http://{}", http.local_addr().unwrap()), format!("http://{}", grpc.local_addr().unwrap()));
    tokio::spawn(herald_publisher_api::serve(api, http, grpc, stop.clone().cancelled_owned()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !gateway.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "gateway did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    System { _redis: redis, ws, http: http_url, grpc: grpc_url, stop }
}

async fn bench(system: &System, extra: &[&str], publish_url: &str) -> Report {
    let mut argv = vec!["bench", "--url", &system.ws, "--publish-url", publish_url, "--no-progress"];
    argv.extend(["--api-key", API_KEY, "--drain-timeout", "5s"]);
    if !extra.contains(&"--jwt-secret") {
        argv.extend(["--jwt-secret", SECRET]);
    }
    argv.extend(extra);
    let pid = std::process::id().to_string();
    argv.extend(["--pid", &pid]);
    herald_bench::execute(Cli::parse_from(argv).args).await.unwrap()
}

/// Fan-out to 200 connections over HTTP: every published message reaches every connection once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_http_delivers_everything_and_reports_it() {
    let system = start().await;
    let report = bench(&system, &["fanout", "-n", "200", "--rate", "50", "-m", "40"], &system.http).await;
    assert_eq!(report.scenario, Scenario::Fanout);
    assert_eq!(report.connections.connected, 200, "{}", report.human());
    assert_eq!(report.messages.published, 40, "{}", report.human());
    assert_eq!(report.deliveries.expected, 200 * 40);
    assert_eq!(report.deliveries.delivered, 200 * 40, "{}", report.human());
    assert_eq!((report.deliveries.lost, report.deliveries.duplicates), (0, 0));
    assert_eq!(report.latency.count, 200 * 40);
    assert!(report.latency.p50_ms <= report.latency.p99_ms && report.latency.p99_ms <= report.latency.max_ms);
    assert_eq!(report.servers.len(), 1);
    assert!(report.servers[0].connected.rss_kib > 0);
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["deliveries"]["lost"], 0);
}

/// Notifications to random users over gRPC each reach their one user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_over_grpc_reaches_each_user() {
    let system = start().await;
    let report = bench(
        &system,
        &["personal", "-n", "100", "--rate", "100", "-m", "60", "--publish", "grpc"],
        &system.grpc,
    )
    .await;
    assert_eq!(report.connections.connected, 100, "{}", report.human());
    assert_eq!(report.messages.published, 60, "{}", report.human());
    assert_eq!((report.deliveries.delivered, report.deliveries.lost), (60, 0), "{}", report.human());
}

/// On gateways that subscribe no personal channels, `--subscribe-personal` has every client
/// subscribe its own, in the URL or with a frame, and the notifications reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_without_server_personal_channels_subscribes_each_users_own() {
    let system = start_with(GatewayConfig { personal_channel: false, ..Default::default() }).await;
    for with in ["url", "frame"] {
        let args = [
            "personal",
            "-n",
            "50",
            "--rate",
            "100",
            "-m",
            "40",
            "--subscribe-personal",
            "--subscribe-with",
            with,
        ];
        let report = bench(&system, &args, &system.http).await;
        assert!(report.subscribe_personal);
        assert_eq!(report.connections.connected, 50, "{with}: {}", report.human());
        assert_eq!(
            (report.deliveries.delivered, report.deliveries.lost),
            (40, 0),
            "{with}: {}",
            report.human()
        );
    }
}

/// Idle connections are held and counted; nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_connections_over_channels() {
    let system = start().await;
    let report =
        bench(&system, &["idle", "-n", "150", "--channels", "10", "--duration", "1s"], &system.http).await;
    assert_eq!(report.connections.connected, 150, "{}", report.human());
    assert_eq!(report.connections.closed_early, 0);
    assert_eq!(report.messages.attempted, 0);
}

/// With `--reconnect-rounds 3`, every connection is set up, closed and set up again twice,
/// each round counted and timed on its own, and the connections of the last round are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_rounds_connect_everyone_again_and_report_each_round() {
    let system = start().await;
    let args = ["idle", "-n", "120", "--channels", "10", "--duration", "0s", "--reconnect-rounds", "3"];
    let report = bench(&system, &args, &system.http).await;
    let rounds = &report.connections.rounds;
    assert_eq!(rounds.len(), 3, "{}", report.human());
    for round in rounds {
        assert_eq!((round.connected, round.failed), (120, 0), "{}", report.human());
        assert!(round.connect_seconds > 0.0 && round.connect_rate > 0.0, "{round:?}");
    }
    assert_eq!(report.connections.connected, 120);
    assert_eq!(report.connections.closed_early, 0, "closing between rounds is not closing early");
    assert!(report.human().contains("round 3: 120 connected"), "{}", report.human());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["connections"]["rounds"].as_array().map(Vec::len), Some(3));
    let one = bench(&system, &["idle", "-n", "5", "--duration", "0s"], &system.http).await;
    assert!(serde_json::to_value(&one).unwrap()["connections"].get("rounds").is_none());
}

/// A wrong JWT secret makes every connection fail, and the report says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_reported() {
    let system = start().await;
    let report = bench(
        &system,
        &["idle", "-n", "5", "--duration", "0s", "--jwt-secret", "another-secret-another-secret-another"],
        &system.http,
    )
    .await;
    assert_eq!((report.connections.connected, report.connections.failed), (0, 5));
    assert!(report.errors.keys().any(|e| e.contains("401")), "{:?}", report.errors);
}

/// Clients spread over source addresses 127.0.0.2 and up (binding their own ports) connect and
/// receive like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_bound_to_several_source_addresses_receive_everything() {
    let system = start().await;
    let args = ["broadcast", "-n", "120", "--per-source-addr", "50", "--rate", "20", "-m", "5"];
    let report = bench(&system, &args, &system.http).await;
    assert_eq!(report.connections.connected, 120, "{}", report.human());
    assert_eq!((report.deliveries.delivered, report.deliveries.lost), (600, 0), "{}", report.human());
}

/// Messages to random rooms reach every member of their room and nobody else, whether the
/// members subscribed in the connect URL (the default) or with a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_deliver_to_their_members() {
    let system = start().await;
    for with in ["url", "frame"] {
        let args =
            ["rooms", "-n", "60", "--room-size", "20", "--rate", "50", "-m", "30", "--subscribe-with", with];
        let report = bench(&system, &args, &system.http).await;
        assert_eq!(report.connections.connected, 60, "{}", report.human());
        assert_eq!(report.messages.published, 30);
        assert_eq!(report.deliveries.expected, 30 * 20, "{}", report.human());
        assert_eq!((report.deliveries.delivered, report.deliveries.lost), (600, 0), "{}", report.human());
    }
}

/// Batches of `--batch` messages to random rooms reach every member of their room, and each
/// server's CPU while publishing is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_to_rooms_deliver_every_message() {
    let system = start().await;
    let args = ["rooms", "-n", "60", "--room-size", "6", "--rate", "200", "-m", "95", "--batch", "10"];
    let report = bench(&system, &args, &system.http).await;
    assert_eq!(report.messages.published, 95, "{}", report.human());
    assert_eq!(report.deliveries.expected, 95 * 6, "{}", report.human());
    assert_eq!((report.deliveries.delivered, report.deliveries.lost), (95 * 6, 0), "{}", report.human());
    assert_eq!(report.servers.len(), 1);
    assert!(report.servers[0].cpu_s_publish >= 0.0);
    assert!(report.servers[0].cpu_s_publish <= report.server_total.cpu_s_publish + 1e-9);
}

/// `--batch` is refused where there is no batch to publish with.
#[tokio::test]
async fn batches_need_herald_over_http_to_channels() {
    let refused: [&[&str]; 2] =
        [&["personal", "--batch", "5"], &["fanout", "--publish", "grpc", "--batch", "5"]];
    for argv in refused {
        let argv =
            std::iter::once("bench").chain(argv.iter().copied()).chain(["--url", "ws://127.0.0.1:1/ws"]);
        let err = herald_bench::execute(Cli::parse_from(argv).args).await.unwrap_err();
        assert!(err.to_string().contains("--batch"), "{err}");
    }
}

/// A flood of every kind beside a fan-out is read at the frame rate, told `rate_limited` and
/// closed with 4029 after sustained abuse, reconnects, and the measured clients still receive
/// every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_and_the_other_clients_lose_nothing() {
    let config = GatewayConfig {
        frame_rate: 50,
        frame_burst: 200,
        rate_limit_close_after: Duration::from_millis(500),
        ..Default::default()
    };
    let system = start_with(config).await;
    let args = ["fanout", "-n", "50", "--rate", "20", "-m", "60", "--flood", "4"];
    let report = bench(&system, &args, &system.http).await;
    assert_eq!(report.connections.connected, 50, "{}", report.human());
    assert_eq!(report.connections.closed_early, 0, "{}", report.human());
    assert_eq!(report.messages.published, 60, "{}", report.human());
    assert_eq!((report.deliveries.delivered, report.deliveries.lost), (50 * 60, 0), "{}", report.human());
    let flood = report.flood.as_ref().expect("a flood report");
    assert_eq!(flood.connections, 4);
    assert!(flood.frames_sent > 1000, "{}", report.human());
    // Told once per spell of holding, not once per frame: the frames over the rate wait.
    let told = flood.replies.get("error rate_limited").copied().unwrap_or(0);
    assert!((4..=flood.connects).contains(&told), "{}", report.human());
    assert!(flood.replies.contains_key("pong"), "pings within the limit are answered: {}", report.human());
    assert!(flood.closes.get("close 4029").copied().unwrap_or(0) >= 4, "{}", report.human());
    assert!(flood.connects > 4, "closed flood connections reconnect: {}", report.human());
    assert!(report.human().contains("flood: 4 connections"), "{}", report.human());
}
