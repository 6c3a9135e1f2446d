//! The gateway's edge over real sockets: which pages may open a WebSocket (`Origin`), and how
//! refused handshakes reach browsers (an upgrade closed with a close code) and other clients
//! (HTTP errors).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_testkit::{RedisServer, WsClient};
use serde_json::json;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{GatewayProcess, StandaloneProcess};

/// The JWT secret of `config/standalone.toml`.
const STANDALONE_SECRET: &str = "dev-only-secret-change-me-0123456789abcdef";

/// A request for `url` with these extra headers.
fn request(url: &str, headers: &[(&'static str, &str)]) -> tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    request
}

/// The HTTP status and body of a refused handshake; panics if it was upgraded.
async fn refused(request: tungstenite::handshake::client::Request) -> (u16, String) {
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
            (response.status().as_u16(), body.unwrap_or_default())
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    }
}

/// An upgraded connection's `connected` frame; panics on a refusal.
async fn connected(request: tungstenite::handshake::client::Request) -> serde_json::Value {
    let (_, hello) = {
        let mut client = WsClient::connect_request(request).await.unwrap();
        let hello = client.recv().await.unwrap();
        (client, hello)
    };
    assert_eq!(hello["type"], "connected", "{hello}");
    hello
}

/// A token for `user` signed with `secret` that expired an hour ago.
fn expired_token(secret: &str, user: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"sub": user, "exp": now - 3600});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

async fn metric(addr: &str, name: &str) -> String {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(name)).collect::<Vec<_>>().join("\n")
}

/// With `gateway.allowed_origins` set, a page of a listed origin (or a listed pattern) is
/// upgraded, a foreign page gets HTTP 403 with a readable body and is counted, and a client
/// without an `Origin` connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_gets_403_and_a_listed_one_connects() {
    let redis = RedisServer::start().await;
    let allowed = r#"["https://app.example.com", "https://*.example.org"]"#;
    let gateway = GatewayProcess::start(&redis.url(), &[("HERALD_GATEWAY__ALLOWED_ORIGINS", allowed)]).await;
    let url = gateway.url("alice");

    let (status, body) = refused(request(&url, &[("origin", "https://evil.example")])).await;
    assert_eq!(status, 403);
    assert!(body.contains("\"forbidden\"") && body.contains("evil.example"), "{body}");
    let (status, _) = refused(request(&url, &[("origin", "https://app.example.com.evil.example")])).await;
    assert_eq!(status, 403);

    connected(request(&url, &[("origin", "https://app.example.com")])).await;
    connected(request(&url, &[("origin", "https://chat.example.org")])).await;
    connected(request(&url, &[])).await;
    let addr = gateway.addr.to_string();
    assert_eq!(
        metric(&addr, "herald_gateway_origin_refusals_total").await,
        "herald_gateway_origin_refusals_total 2"
    );
}

/// `herald standalone` with the shipped `config/standalone.toml` (no `allowed_origins`): its
/// own demo page's origin connects, any other page gets 403, and without an `Origin` a client
/// still connects; with `allow_missing_origin = false` that client is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_default_admits_only_its_own_pages() {
    let server = StandaloneProcess::start(&[]);
    server.connect("warmup").await;
    let own = format!("http://127.0.0.1:{}", server.ws);
    let url = format!("ws://127.0.0.1:{}/ws?token={}", server.ws, server.token("alice"));
    let demo = reqwest::get(format!("{own}/demo")).await.unwrap();
    assert_eq!(demo.status(), 200, "the demo page is served");

    connected(request(&url, &[("origin", &own)])).await;
    let (status, body) = refused(request(&url, &[("origin", "https://evil.example")])).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = refused(request(&url, &[("origin", "http://127.0.0.1:1")])).await;
    assert_eq!(status, 403, "another port is another origin");
    connected(request(&url, &[])).await;

    drop(server);
    let strict = StandaloneProcess::start(&[("HERALD_GATEWAY__ALLOW_MISSING_ORIGIN", "false")]);
    let own = format!("http://127.0.0.1:{}", strict.ws);
    let url = format!("ws://127.0.0.1:{}/ws?token={}", strict.ws, strict.token("alice"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while reqwest::get(format!("{own}/readyz")).await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(tokio::time::Instant::now() < deadline, "standalone never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = refused(request(&url, &[])).await;
    assert_eq!(status, 403);
    assert!(body.contains("Origin header is required"), "{body}");
    connected(request(&url, &[("origin", &own)])).await;
}

/// A browser's refused handshake (it sends an `Origin`) is upgraded and closed at once with
/// the refusal's close code and a reason starting with its error code: 4001 for an expired
/// token, 4003 for another user's channel asked for in the URL; a client without an `Origin`
/// gets the HTTP errors 401 and 403 instead; `gateway.refusal = "http"` gives browsers HTTP
/// errors too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_read_refusals_as_close_codes_and_other_clients_as_http() {
    let server = StandaloneProcess::start(&[]);
    server.connect("warmup").await;
    let own = format!("http://127.0.0.1:{}", server.ws);
    let base = format!("ws://127.0.0.1:{}/ws", server.ws);
    let expired = format!("{base}?token={}", expired_token(STANDALONE_SECRET, "alice"));
    let forbidden = format!("{base}?token={}&subscribe=user:bob", server.token("alice"));

    let close = |url: String, headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<_> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut client = WsClient::connect_request(request(&url, &headers)).await.unwrap();
        client.closed().await.unwrap()
    };
    let closed = close(expired.clone(), vec![("origin", own.clone())]).await;
    assert_eq!(closed.code, 4001);
    assert!(closed.reason.starts_with("token_expired: "), "{}", closed.reason);
    let closed = close(forbidden.clone(), vec![("origin", own.clone())]).await;
    assert_eq!(closed.code, 4003);
    assert!(closed.reason.starts_with("forbidden: "), "{}", closed.reason);
    let closed = close(expired.clone(), vec![("sec-fetch-mode", "websocket".into())]).await;
    assert_eq!(closed.code, 4001, "Sec-Fetch-Mode: websocket marks a browser too");

    let (status, body) = refused(request(&expired, &[])).await;
    assert_eq!(status, 401);
    assert!(body.contains("token_expired"), "{body}");
    assert_eq!(refused(request(&forbidden, &[])).await.0, 403);
    let metrics =
        metric(&format!("127.0.0.1:{}", server.ws), "herald_gateway_handshake_refusals_total").await;
    assert!(metrics.contains(r#"code="token_expired",via="close"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"code="forbidden",via="http"} 1"#), "{metrics}");

    drop(server);
    let http = StandaloneProcess::start(&[("HERALD_GATEWAY__REFUSAL", "http")]);
    http.connect("warmup").await;
    let own = format!("http://127.0.0.1:{}", http.ws);
    let expired =
        format!("ws://127.0.0.1:{}/ws?token={}", http.ws, expired_token(STANDALONE_SECRET, "alice"));
    assert_eq!(refused(request(&expired, &[("origin", &own)])).await.0, 401);
}

/// The application's hook for [`refusals_at_open_reach_browsers_as_close_codes_too`]:
/// `hooked:no` is refused, `hooked:broken` fails (500), anything else is allowed.
async fn hook(axum::Json(question): axum::Json<serde_json::Value>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match question["channel"].as_str().unwrap_or_default() {
        "hooked:no" => axum::Json(json!({"allow": false, "reason": "not in this room"})).into_response(),
        "hooked:broken" => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => axum::Json(json!({"allow": true})).into_response(),
    }
}

/// The refusals decided once the handshake's checks passed, while the connection is opened,
/// reach a browser as close codes too: 4030 for `gateway.max_connections_per_user`, 4003 for
/// the backend hook's refusal of a channel in the URL, 1013 when the hook could not be asked
/// (`on_failure = "deny"`), each reason starting with its error code; a client without an
/// `Origin` still gets HTTP 429 and 403, and each refusal is counted by how it was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_open_reach_browsers_as_close_codes_too() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/hook", axum::routing::post(hook));
    let _app = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let server = StandaloneProcess::start(&[
        ("HERALD_GATEWAY__MAX_CONNECTIONS_PER_USER", "1"),
        ("HERALD_NAMESPACES__HOOKED__SUBSCRIBE_HOOK", "true"),
        ("HERALD_GATEWAY__HOOKS__URL", &hook_url),
        ("HERALD_GATEWAY__HOOKS__ON_FAILURE", "deny"),
    ]);
    server.connect("warmup").await;
    let own = format!("http://127.0.0.1:{}", server.ws);
    let url = |user: &str, query: &str| {
        format!("ws://127.0.0.1:{}/ws?token={}{query}", server.ws, server.token(user))
    };
    let close = |url: String| {
        let own = own.clone();
        async move {
            let mut client = WsClient::connect_request(request(&url, &[("origin", &own)])).await.unwrap();
            client.closed().await.unwrap()
        }
    };

    let (_alice, _) = server.connect("alice").await;
    let (status, body) = refused(request(&url("alice", ""), &[])).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_connections"), "{body}");
    let closed = close(url("alice", "")).await;
    assert_eq!(closed.code, 4030);
    assert!(closed.reason.starts_with("too_many_connections: "), "{}", closed.reason);

    let closed = close(url("bob", "&subscribe=hooked:no")).await;
    assert_eq!(closed.code, 4003);
    assert!(
        closed.reason.starts_with("forbidden: ") && closed.reason.contains("not in this room"),
        "{}",
        closed.reason
    );
    let closed = close(url("carol", "&subscribe=hooked:broken")).await;
    assert_eq!(closed.code, 1013);
    assert!(closed.reason.starts_with("unavailable: "), "{}", closed.reason);

    assert_eq!(refused(request(&url("bob", "&subscribe=hooked:no"), &[])).await.0, 403);
    let metrics =
        metric(&format!("127.0.0.1:{}", server.ws), "herald_gateway_handshake_refusals_total").await;
    assert!(metrics.contains(r#"code="too_many_connections",via="close"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"code="too_many_connections",via="http"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"code="forbidden",via="close"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"code="forbidden",via="http"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"code="unavailable",via="close"} 1"#), "{metrics}");
}

/// A bad origin, refusal mode or TLS file stops start-up with a message naming the key.
#[test]
fn bad_edge_settings_stop_start_up_naming_the_key() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/standalone.toml");
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("HERALD_GATEWAY__ALLOWED_ORIGINS", r#"["app.example.com"]"#)], "gateway.allowed_origins"),
        (&[("HERALD_GATEWAY__REFUSAL", "sometimes")], "gateway.refusal"),
        (
            &[("HERALD_GATEWAY__TLS__CERT", "/nonexistent/cert.pem"), ("HERALD_GATEWAY__TLS__KEY", "/x")],
            "gateway.tls.cert",
        ),
    ];
    for (env, key) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--config", config, "standalone"])
            .env("HERALD_GATEWAY__LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}: started");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(key), "{key} not named: {text}");
    }
}
