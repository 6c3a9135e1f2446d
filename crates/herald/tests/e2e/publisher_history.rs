//! The publisher API's history features in `herald standalone` (the in-memory engine), seen
//! by a real WebSocket client: idempotent publishes, history reads and the inbox.

use serde_json::{Value, json};

use crate::common::StandaloneProcess;

const API_KEY: &str = "dev-only-api-key-change-me";

/// A channel with history (`news`, given history by environment variables) and the inbox:
/// a retried idempotency key reaches the client once, the answers carry the offsets the
/// client sees, and backends read the history and the user's inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_publishes_once_per_key_and_serves_history_reads() {
    let server = StandaloneProcess::start(&[
        ("HERALD_NAMESPACES__NEWS__HISTORY_SIZE", "100"),
        ("HERALD_NAMESPACES__NEWS__HISTORY_TTL", "10m"),
    ]);
    let http = server.http;
    let (mut client, _) = server.connect("alice").await;
    client.subscribe("news:today").await.unwrap();

    let http_client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http}");
    let post = |path: &str, body: Value| {
        let request = http_client.post(format!("{base}{path}")).bearer_auth(API_KEY).json(&body).send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let get = |path: &str| {
        let request = http_client.get(format!("{base}{path}")).bearer_auth(API_KEY).send();
        async move { request.await.unwrap().json::<Value>().await.unwrap() }
    };
    let body = json!({"channel": "news:today", "data": {"title": "once"}, "idempotency_key": "story-1"});
    let first = post("/v1/publish", body.clone()).await;
    let retry = post("/v1/publish", body).await;
    assert_eq!(
        (&retry["id"], &retry["offset"], &retry["deduplicated"]),
        (&first["id"], &json!(1), &json!(true))
    );
    let notify = json!({"data": {"text": "for alice"}, "idempotency_key": "note-1"});
    let noted = post("/v1/users/alice/notify", notify.clone()).await;
    assert_eq!(post("/v1/users/alice/notify", notify).await["deduplicated"], true);
    let marker = post("/v1/publish", json!({"channel": "news:today", "data": {"title": "marker"}})).await;
    assert_eq!(marker["offset"], 2);

    let got = crate::common::recv_messages(&mut client, 3).await;
    let seen: Vec<(&Value, &Value)> = got.iter().map(|f| (&f["id"], &f["offset"])).collect();
    assert_eq!(seen, [(&first["id"], &json!(1)), (&noted["id"], &json!(1)), (&marker["id"], &json!(2))]);

    let page = get("/v1/channels/news:today/history").await;
    assert_eq!(page["offset"], 2, "{page}");
    assert_eq!(page["publications"].as_array().unwrap(), &[got[0].clone(), got[2].clone()]);
    let inbox = get("/v1/users/alice/inbox").await;
    assert_eq!(
        (&inbox["offset"], &inbox["acked"], &inbox["unread"]),
        (&json!(1), &json!(0), &json!(1)),
        "{inbox}"
    );
    assert_eq!(inbox["publications"][0], got[1]);
}
