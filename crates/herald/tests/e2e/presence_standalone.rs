//! Presence in `herald standalone`: the in-memory store, the gateway reporting in process, and
//! the presence API on its own listeners with the publisher's API key.

use std::process::{Command, Stdio};
use std::time::Duration;

use herald_testkit::{KillOnDrop, WsClient, free_port};
use serde_json::{Value, json};

/// With the shipped standalone configuration, a client sees who else is in its channel, gets
/// their join and leave frames, and the presence API (with the publisher's key) agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_tracks_presence_in_memory() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/standalone.toml");
    let (ws, presence_http) = (free_port(), free_port());
    let env = [
        ("HERALD_GATEWAY__LISTEN", format!("127.0.0.1:{ws}")),
        ("HERALD_PUBLISHER__HTTP_LISTEN", format!("127.0.0.1:{}", free_port())),
        ("HERALD_PUBLISHER__GRPC_LISTEN", format!("127.0.0.1:{}", free_port())),
        ("HERALD_PRESENCE__HTTP_LISTEN", format!("127.0.0.1:{presence_http}")),
        ("HERALD_PRESENCE__GRPC_LISTEN", format!("127.0.0.1:{}", free_port())),
        ("HERALD_PRESENCE__FLUSH_INTERVAL", "20ms".into()),
        ("HERALD_PRESENCE__GRACE", "200ms".into()),
        // The sweeper that sends the leave holds off for one ttl after start.
        ("HERALD_PRESENCE__TTL", "1500ms".into()),
        ("HERALD_PRESENCE__HEARTBEAT_INTERVAL", "300ms".into()),
        ("HERALD_PRESENCE__SWEEP_INTERVAL", "100ms".into()),
        ("HERALD_NAMESPACES__CHAT__JOIN_LEAVE", "true".into()),
        ("HERALD_NAMESPACES__CHAT__CLIENT_PRESENCE", "true".into()),
        ("HERALD_AUTH__JWT_SECRET", crate::presence_support::SECRET.into()),
        ("HERALD_LOG__LEVEL", "warn".into()),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--config", config, "standalone"]).envs(env.iter().map(|(k, v)| (k, v))).stdout(Stdio::null());
    let _server = KillOnDrop(cmd.spawn().unwrap());
    let url = |user: &str, info: Value| {
        format!("ws://127.0.0.1:{ws}/ws?token={}", crate::presence_support::token(user, Some(info)))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut alice = loop {
        match WsClient::connect(&url("alice", json!({"name": "Alice"}))).await {
            Ok((client, _)) => break client,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "standalone never accepted: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    alice.subscribe("chat:lobby").await.unwrap();
    let (mut bob, _) = WsClient::connect(&url("bob", json!({"name": "Bob"}))).await.unwrap();
    bob.subscribe("chat:lobby").await.unwrap();
    let join = crate::presence_support::next_of(&mut alice, "join").await;
    let join = if join["user"] == "alice" {
        crate::presence_support::next_of(&mut alice, "join").await
    } else {
        join
    };
    assert_eq!(
        join,
        json!({"type": "join", "channel": "chat:lobby", "user": "bob", "info": {"name": "Bob"}})
    );

    let reply = alice.request(json!({"type": "presence", "id": "p", "channel": "chat:lobby"})).await.unwrap();
    assert_eq!(reply["type"], "presence", "{reply}");
    assert_eq!(reply["members"].as_array().unwrap().len(), 2, "{reply}");
    assert_eq!(reply["members"][1], json!({"user": "bob", "connections": 1, "info": {"name": "Bob"}}));

    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{presence_http}/v1/presence/channels/chat:lobby"))
        .bearer_auth("dev-only-api-key-change-me")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["count"], 2);

    bob.close().await;
    let leave = crate::presence_support::next_of(&mut alice, "leave").await;
    assert_eq!(leave, json!({"type": "leave", "channel": "chat:lobby", "user": "bob"}));
}
