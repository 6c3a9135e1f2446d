//! `herald standalone`: the whole system in one process on the in-memory engine, no Redis.

use std::process::{Command, Stdio};
use std::time::Duration;

use herald_testkit::{KillOnDrop, WsClient, free_port};
use serde_json::{Value, json};

/// The quickstart works: with the shipped standalone configuration, a token from
/// `herald token`, a WebSocket client and an HTTP publish, the message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_works_without_redis() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/standalone.toml");
    let (ws, http, grpc) = (free_port(), free_port(), free_port());
    let (presence_http, presence_grpc) = (free_port(), free_port());
    let ports = [
        ("HERALD_GATEWAY__LISTEN", format!("127.0.0.1:{ws}")),
        ("HERALD_PUBLISHER__HTTP_LISTEN", format!("127.0.0.1:{http}")),
        ("HERALD_PUBLISHER__GRPC_LISTEN", format!("127.0.0.1:{grpc}")),
        ("HERALD_PRESENCE__HTTP_LISTEN", format!("127.0.0.1:{presence_http}")),
        ("HERALD_PRESENCE__GRPC_LISTEN", format!("127.0.0.1:{presence_grpc}")),
        ("HERALD_REDIS__URL", "redis://127.0.0.1:1".into()),
    ];
    let herald = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.args(["--config", config]).envs(ports.iter().map(|(k, v)| (k, v)));
        cmd
    };
    let _server = KillOnDrop(herald().arg("standalone").stdout(Stdio::null()).spawn().unwrap());
    let token = herald().args(["token", "--user", "alice"]).output().unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (mut client, hello) = loop {
        match WsClient::connect(&format!("ws://127.0.0.1:{ws}/ws?token={}", token.trim())).await {
            Ok(connected) => break connected,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "standalone never accepted: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(hello["user"], "alice");
    client.subscribe("news:today").await.unwrap();

    let http_client = reqwest::Client::new();
    let publish = |path: &str, body: Value| {
        http_client
            .post(format!("http://127.0.0.1:{http}{path}"))
            .bearer_auth("dev-only-api-key-change-me")
            .json(&body)
            .send()
    };
    let resp =
        publish("/v1/publish", json!({"channel": "news:today", "data": {"title": "hello"}})).await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = publish("/v1/users/alice/notify", json!({"data": {"text": "just for you"}})).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = crate::common::recv_messages(&mut client, 2).await;
    assert_eq!(got[0]["data"]["title"], "hello");
    assert_eq!(got[1]["channel"], "user:alice");
}
