//! Bad input at the gateway: each kind gets its documented error or close code, and the
//! gateway goes on serving everyone else.

use std::time::Duration;

use crate::common::{Cluster, Engine, SECRET, recv_messages};
use herald_testkit::WsClient;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

/// Malformed frames, unknown types, bad channel names and forbidden channels each get their
/// own error code with the request id, and the connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_the_connection_survives() {
    let cluster = Cluster::start(Engine::Redis, 1).await;
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(0, "bob").await;
    bob.subscribe("room:x").await.unwrap();

    alice.send_text("{not json".into()).await.unwrap();
    assert_eq!(alice.recv().await.unwrap()["code"], "malformed_frame");
    alice.send_binary(vec![1, 2, 3]).await.unwrap();
    assert_eq!(alice.recv().await.unwrap()["code"], "malformed_frame");

    let cases: Vec<(Value, &str)> = vec![
        (json!({"type": "dance", "id": 1}), "unknown_type"),
        (json!({"id": 2}), "malformed_frame"),
        (json!({"type": "subscribe", "id": 3}), "malformed_frame"),
        (json!({"type": "subscribe", "id": 4, "channel": "bad name"}), "invalid_channel"),
        (json!({"type": "subscribe", "id": 5, "channel": "room:*"}), "invalid_channel"),
        (json!({"type": "subscribe", "id": 6, "channel": "x".repeat(300)}), "invalid_channel"),
        (json!({"type": "subscribe", "id": 7, "channel": ""}), "invalid_channel"),
        (json!({"type": "subscribe", "id": 8, "channel": "user:bob"}), "forbidden"),
        (json!({"type": "subscribe", "id": 9, "channel": "user:alice"}), "already_subscribed"),
        (json!({"type": "subscribe", "id": 10, "channel": "secret:x"}), "unknown_channel"),
        (json!({"type": "subscribe", "id": 11, "channel": "nonamespace"}), "unknown_channel"),
        (json!({"type": "unsubscribe", "id": 12, "channel": "broadcast"}), "forbidden"),
        (json!({"type": "presence", "id": 15, "channel": "room:x"}), "forbidden"),
        (json!({"type": "publish", "id": 13, "channel": "chat:x"}), "malformed_frame"),
        (
            json!({"type": "publish", "id": 14, "channel": "chat:x", "data": 1, "event": ""}),
            "malformed_frame",
        ),
    ];
    for (frame, code) in cases {
        let reply = alice.request(frame.clone()).await.unwrap();
        assert_eq!(reply["type"], "error", "{frame} -> {reply}");
        assert_eq!(reply["code"], code, "{frame} -> {reply}");
        assert_eq!(reply["id"], frame["id"], "{frame} -> {reply}");
        assert!(!reply["message"].as_str().unwrap().is_empty());
    }

    alice.subscribe("room:x").await.unwrap();
    let again = alice.request(json!({"type": "subscribe", "channel": "room:x"})).await.unwrap();
    assert_eq!(again["code"], "already_subscribed");
    let pong = alice.request(json!({"type": "ping", "id": "p"})).await.unwrap();
    assert_eq!(pong, json!({"type": "pong", "id": "p"}));
    cluster.publish_http("room:x", json!("still here")).await;
    assert_eq!(recv_messages(&mut alice, 1).await[0]["data"], "still here");
    assert_eq!(recv_messages(&mut bob, 1).await[0]["data"], "still here");
}

/// A frame over `max_message_size` closes that connection with 1009; others are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009() {
    let cluster = Cluster::start_with(Engine::Redis, 1, |c| c.max_message_size = 1024).await;
    let mut big = cluster.connect(0, "big").await;
    let mut other = cluster.connect(0, "other").await;
    other.subscribe("room:y").await.unwrap();
    let frame = json!({"type": "publish", "channel": "chat:x", "data": "x".repeat(2000)});
    big.send_json(frame).await.unwrap();
    assert_eq!(big.closed().await.unwrap().code, 1009);
    cluster.publish_http("room:y", json!(1)).await;
    assert_eq!(recv_messages(&mut other, 1).await[0]["data"], 1);
}

/// Missing, garbled, wrongly signed and expired tokens are refused with HTTP 401 before the
/// upgrade, with a JSON body naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let cluster = Cluster::start(Engine::Redis, 1).await;
    let addr = cluster.gateways[0].addr;
    let expired = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims = json!({"sub": "alice", "exp": 1_000_000});
        encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
    };
    let forged =
        herald_gateway::mint("another-secret-another-secret-another", "alice", Duration::from_secs(60))
            .unwrap();
    let cases = [
        (format!("ws://{addr}/ws"), "unauthorized"),
        (format!("ws://{addr}/ws?token=garbage"), "unauthorized"),
        (format!("ws://{addr}/ws?token={forged}"), "unauthorized"),
        (format!("ws://{addr}/ws?token={expired}"), "token_expired"),
    ];
    for (url, code) in cases {
        let err = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => e,
        };
        let tungstenite::Error::Http(response) = err else { panic!("{url}: {err}") };
        assert_eq!(response.status(), 401, "{url}");
        let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], code, "{url}");
    }
    // The header form works too.
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/ws")).unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", cluster.token("hdr")).parse().unwrap());
    let mut client = WsClient::connect_request(request).await.unwrap();
    assert_eq!(client.recv().await.unwrap()["type"], "connected");
}

/// Channels in the connect URL are checked like `subscribe` frames, before the upgrade: a bad
/// one refuses the connection with the frame's error code and an HTTP status, and nothing of
/// it stays subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connect_subscriptions_are_refused_before_the_upgrade() {
    let cluster = Cluster::start_with(Engine::Redis, 1, |c| c.max_subscriptions = 2).await;
    let url = cluster.gateways[0].url(&cluster.token("alice"));
    let cases = [
        ("room:a,no%20spaces", 422, "invalid_channel"),
        ("room:a,nowhere:x", 422, "unknown_channel"),
        ("user:bob", 403, "forbidden"),
        ("room:a,room:b,room:c", 429, "limit_exceeded"),
    ];
    for (list, status, code) in cases {
        let url = format!("{url}&subscribe={list}");
        let err = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok(_) => panic!("{list} was accepted"),
            Err(e) => e,
        };
        let tungstenite::Error::Http(response) = err else { panic!("{list}: {err}") };
        assert_eq!(response.status(), status, "{list}");
        let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], code, "{list}");
    }
    assert_eq!(cluster.gateways[0].gateway.hub().subscriber_count(&"room:a".parse().unwrap()), 0);
    let (_, hello) = WsClient::connect(&format!("{url}&subscribe=room:a,room:b")).await.unwrap();
    assert_eq!(hello["channels"], json!(["room:a", "room:b"]));
}

/// A token that expires while connected closes the connection with 4001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_tokens_close_with_4001() {
    let cluster = Cluster::start(Engine::Redis, 1).await;
    let token = herald_gateway::mint(SECRET, "brief", Duration::from_secs(2)).unwrap();
    let (mut client, _) = WsClient::connect(&cluster.gateways[0].url(&token)).await.unwrap();
    let closed = client.closed().await.unwrap();
    assert_eq!(closed.code, 4001);
    assert!(closed.reason.contains("expired"), "{closed:?}");
}

/// One gateway that pings every 100 ms and gives up after 400 ms of silence.
async fn fast_heartbeat_cluster() -> Cluster {
    Cluster::start_with(Engine::Redis, 1, |c| {
        c.ping_interval = Duration::from_millis(100);
        c.pong_timeout = Duration::from_millis(400);
    })
    .await
}

/// A client that stops answering pings is closed with 4009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_with_4009() {
    let cluster = fast_heartbeat_cluster().await;
    let mut client = cluster.connect(0, "quiet").await;
    // Not reading means the client library answers no pings: wait, without reading, until the
    // gateway counts the connection closed for silence, then read what it said.
    let metrics = format!("http://{}/metrics", cluster.gateways[0].addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if text.lines().any(|l| l == r#"herald_gateway_closes_total{code="4009"} 1"#) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the silent client was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.closed().await.unwrap().code, 4009);
}

/// A client that answers the gateway's pings stays connected well past `pong_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_answering_pings_stay_connected() {
    let cluster = fast_heartbeat_cluster().await;
    let mut client = cluster.connect(0, "lively").await;
    // Reading answers the pings; no text frame and no close arrives.
    let read = tokio::time::timeout(Duration::from_millis(1200), client.recv()).await;
    assert!(read.is_err(), "{read:?}");
    let reply = client.request(json!({"type": "ping", "id": 1})).await.unwrap();
    assert_eq!(reply["type"], "pong");
}

/// Subscriptions beyond `max_subscriptions` get `limit_exceeded`. The server-managed ones do
/// not count; a personal channel the client subscribed to itself does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_limited() {
    for personal_channel in [true, false] {
        let cluster = Cluster::start_with(Engine::Redis, 1, |c| {
            c.max_subscriptions = 2;
            c.personal_channel = personal_channel;
        })
        .await;
        let mut client = cluster.connect(0, "greedy").await;
        client.subscribe("room:1").await.unwrap();
        let second = if personal_channel { "room:2" } else { "user:greedy" };
        client.subscribe(second).await.unwrap();
        let reply = client.request(json!({"type": "subscribe", "channel": "room:3"})).await.unwrap();
        assert_eq!(reply["code"], "limit_exceeded", "personal_channel = {personal_channel}");
    }
}

/// Sends raw bytes to a gateway and returns everything it answers until it closes, or what
/// arrived within a second.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer)).await;
    answer
}

fn upgrade_request(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Requests to `/ws` that are not WebSocket upgrades, or whose head is too large, get a 400
/// with a JSON body; the health endpoints on the same listener still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upgrade_requests_get_400() {
    let cluster = Cluster::start(Engine::Redis, 1).await;
    let addr = cluster.gateways[0].addr;
    let token = cluster.token("alice");
    let plain = format!("GET /ws?token={token} HTTP/1.1\r\nHost: gw\r\n\r\n");
    let huge = format!("GET /ws?token={token} HTTP/1.1\r\nHost: gw\r\nX-Pad: {}\r\n\r\n", "x".repeat(9000));
    let garbage = "NOT HTTP AT ALL\r\n\r\n".to_string();
    for request in [plain, huge, garbage] {
        let answer = String::from_utf8_lossy(&raw_exchange(addr, request.as_bytes()).await).to_string();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "malformed_frame", "{answer}");
    }
    let answer = raw_exchange(addr, b"GET /livez HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("ok"), "{answer}");
}

/// A client that sends its first frame right behind the upgrade request, without waiting for
/// `101`, has it answered: the `101`, `connected` and the reply arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_upgrade_request_are_not_lost() {
    let cluster = Cluster::start(Engine::Redis, 1).await;
    let mut bytes = upgrade_request(&format!("/ws?token={}", cluster.token("eager"))).into_bytes();
    // A masked text frame, as clients must send them (RFC 6455, 5.3).
    let payload = br#"{"type":"ping","id":7}"#;
    let mask = [0x12, 0x34, 0x56, 0x78];
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let answer = raw_exchange(cluster.gateways[0].addr, &bytes).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    assert!(answer.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{answer}");
    let connected = answer.find(r#"{"type":"connected""#).expect("connected");
    let pong = answer.find(r#"{"type":"pong","id":7}"#).expect("pong");
    assert!(connected < pong, "{answer}");
}
