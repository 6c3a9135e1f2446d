//! `herald standalone`: the whole system in one process on the in-memory engine, no Redis.

use serde_json::{Value, json};

use crate::common::StandaloneProcess;

/// The quickstart works: with the shipped standalone configuration, a token from
/// `herald token`, a WebSocket client and an HTTP publish, the message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_works_without_redis() {
    let server = StandaloneProcess::start(&[("HERALD_REDIS__URL", "redis://127.0.0.1:1")]);
    let http = server.http;
    let (mut client, hello) = server.connect("alice").await;
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
