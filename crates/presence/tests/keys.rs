//! Scoped API keys on the presence role, served for real on port 0 over a real Redis: what a
//! key may not do is refused with `forbidden` (HTTP 403, gRPC PERMISSION_DENIED) alike on
//! both transports, a gateway reports with a key given by its hash, and `/metrics` counts
//! requests per key name.

use std::sync::Arc;

use herald_broker::{Broker, MemoryBroker};
use herald_presence::config::KeyConfig;
use herald_presence::model::{ConnState, Report, ReportBody};
use herald_presence::pb::presence_client::PresenceClient;
use herald_presence::{GrpcTransport, PresenceApi, PresenceConfig, PresenceStore, RedisStore, Transport, pb};
use herald_protocol::{ChannelName, NamespaceConfig, Namespaces, UserId};
use herald_testkit::RedisServer;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

/// May only publish: nothing on presence.
const BILLING: &str = "billing-key-0123456789";
/// May read presence in `chat` only.
const READER: &str = "reader-key-0123456789";
/// The gateways' key, configured by its SHA-256 alone.
const GATEWAY: &str = "gateway-key-0123456789";
const GATEWAY_SHA256: &str = "34630ee5f8fdc957f2e8d506959a4069aa95192ac7bba129d03a7f689c7c417c";

fn key(name: &str, key: &str, operations: &[&str], namespaces: &[&str]) -> KeyConfig {
    KeyConfig {
        name: name.into(),
        key: Some(key.into()),
        key_sha256: None,
        operations: operations.iter().map(|s| s.to_string()).collect(),
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
    }
}

struct App {
    http: String,
    grpc: String,
    client: reqwest::Client,
    _redis: RedisServer,
}

async fn spawn() -> App {
    let redis = RedisServer::start().await;
    let gateway = KeyConfig {
        key: None,
        key_sha256: Some(GATEWAY_SHA256.into()),
        ..key("gateways", "", &["presence_report", "presence_read"], &["*"])
    };
    let keys = vec![
        key("billing", BILLING, &["publish"], &["*"]),
        key("reader", READER, &["presence_read"], &["chat"]),
        gateway,
    ];
    let config = PresenceConfig { keys, ..PresenceConfig::default() };
    let mut namespaces = Namespaces::default();
    for ns in ["chat", "news"] {
        namespaces.0.insert(ns.into(), NamespaceConfig { presence: true, ..Default::default() });
    }
    let redis_config = herald_broker::RedisConfig { url: redis.url(), ..Default::default() };
    let store: Arc<dyn PresenceStore> = Arc::new(RedisStore::new(redis_config, config.timings()).unwrap());
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let api = PresenceApi::new(config, &[], namespaces, store, broker).unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    tokio::spawn(herald_presence::serve(api, http, grpc, std::future::pending()));
    App {
        http: format!("http://{http_addr}"),
        grpc: format!("http://{grpc_addr}"),
        client: reqwest::Client::new(),
        _redis: redis,
    }
}

impl App {
    async fn get(&self, path: &str, key: &str) -> (u16, serde_json::Value) {
        let response = self.client.get(format!("{}{path}", self.http)).bearer_auth(key).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or_default())
    }

    async fn grpc_client(&self) -> PresenceClient<Channel> {
        PresenceClient::connect(self.grpc.clone()).await.unwrap()
    }
}

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// A publish-only key cannot read presence or report as a gateway, over HTTP and gRPC alike.
#[tokio::test]
async fn a_publish_only_key_cannot_read_presence() {
    let app = spawn().await;
    for path in ["/v1/presence/users/alice", "/v1/presence/stats", "/v1/presence/channels/chat:a"] {
        let (status, body) = app.get(path, BILLING).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }
    let mut client = app.grpc_client().await;
    let user = pb::GetUserRequest { user: "alice".into() };
    let status = client.get_user(with_key(user, BILLING)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("may not use presence_read"), "{}", status.message());
    let stats = client.get_stats(with_key(pb::GetStatsRequest {}, BILLING)).await.unwrap_err();
    assert_eq!(stats.code(), Code::PermissionDenied);
    let report = pb::ReportRequest { gateway: "gw".into(), seq: 1, full: true, ..Default::default() };
    assert_eq!(client.report(with_key(report, BILLING)).await.unwrap_err().code(), Code::PermissionDenied);
}

/// A key limited to `chat` reads `chat`'s member lists and the totals, not `news`'s, over
/// HTTP and gRPC alike.
#[tokio::test]
async fn a_key_limited_to_chat_cannot_read_other_namespaces() {
    let app = spawn().await;
    assert_eq!(app.get("/v1/presence/channels/chat:a", READER).await.0, 200);
    assert_eq!(app.get("/v1/presence/stats", READER).await.0, 200);
    let (status, body) = app.get("/v1/presence/channels/news:a", READER).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("namespace \"news\""), "{body}");
    let mut client = app.grpc_client().await;
    let chat = pb::GetChannelRequest { channel: "chat:a".into(), limit: None };
    client.get_channel(with_key(chat, READER)).await.unwrap();
    let news = pb::GetChannelRequest { channel: "news:a".into(), limit: None };
    let status = client.get_channel(with_key(news, READER)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("namespace \"news\""), "{}", status.message());
}

/// A gateway reports and lists members with a key configured by its SHA-256 alone, and the
/// reader then sees what it reported.
#[tokio::test]
async fn a_gateway_reports_with_a_hashed_key() {
    let app = spawn().await;
    let transport = GrpcTransport::new(&app.grpc, GATEWAY, &Default::default()).unwrap();
    let chat = ChannelName::parse("chat:a").unwrap();
    let conn = ConnState {
        conn: 1,
        user: UserId::parse("alice").unwrap(),
        info: None,
        channels: vec![chat.clone()],
    };
    let report = Report { gateway: "gw-1".into(), seq: 1, body: ReportBody::Full(vec![conn]) };
    transport.report(report).await.unwrap();
    assert_eq!(transport.members(&chat).await.unwrap().count, 1);
    let (status, body) = app.get("/v1/presence/channels/chat:a", READER).await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(1)), "{body}");
}

/// `/metrics` counts requests per key name and outcome across both transports, refusals
/// without a valid key under an empty name.
#[tokio::test]
async fn metrics_count_requests_per_key_name() {
    let app = spawn().await;
    assert_eq!(app.get("/v1/presence/stats", READER).await.0, 200);
    assert_eq!(app.get("/v1/presence/stats", BILLING).await.0, 403);
    assert_eq!(app.get("/v1/presence/stats", "wrong-key-0123456789").await.0, 401);
    let mut client = app.grpc_client().await;
    client.get_stats(with_key(pb::GetStatsRequest {}, READER)).await.unwrap();
    client.get_stats(with_key(pb::GetStatsRequest {}, BILLING)).await.unwrap_err();
    client.get_stats(with_key(pb::GetStatsRequest {}, "wrong-key-0123456789")).await.unwrap_err();
    let text = app.client.get(format!("{}/metrics", app.http)).send().await.unwrap().text().await.unwrap();
    for line in [
        "herald_presence_key_requests_total{key=\"reader\",outcome=\"ok\"} 2",
        "herald_presence_key_requests_total{key=\"billing\",outcome=\"forbidden\"} 2",
        "herald_presence_key_requests_total{key=\"\",outcome=\"unauthorized\"} 2",
    ] {
        assert!(text.contains(&format!("\n{line}\n")), "{line} missing:\n{text}");
    }
}
