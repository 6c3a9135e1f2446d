//! In-band token refresh against a real `herald standalone` process: `refresh_due` before the
//! token's `exp`, a `refresh` frame that moves it, and the 4001 close without one.

use std::time::Duration;

use herald_testkit::WsClient;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::common::{SECRET, StandaloneProcess};

/// A token signed with the test secret: `claims` plus `sub` and an `exp` `ttl` seconds from now
/// (negative: in the past).
pub fn jwt(user: &str, ttl: i64, mut claims: Value) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    claims["sub"] = json!(user);
    claims["exp"] = json!(now + ttl);
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// A standalone process with the test secret, `env` on top.
pub fn standalone(env: &[(&'static str, &str)]) -> StandaloneProcess {
    let mut all = vec![("HERALD_AUTH__JWT_SECRET", SECRET), ("HERALD_REDIS__URL", "redis://127.0.0.1:1")];
    all.extend_from_slice(env);
    StandaloneProcess::start(&all)
}

/// Connects with `token` (and `query`, e.g. `&subscribe=...`), retrying until the process
/// accepts connections at all.
pub async fn connect(
    server: &StandaloneProcess,
    token: &str,
    query: &str,
) -> anyhow::Result<(WsClient, Value)> {
    let url = format!("ws://127.0.0.1:{}/ws?token={token}{query}", server.ws);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match WsClient::connect(&url).await {
            Ok(connected) => return Ok(connected),
            Err(e) if e.downcast_ref::<tokio_tungstenite::tungstenite::Error>().is_some_and(is_http) => {
                return Err(e);
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn is_http(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    matches!(e, tokio_tungstenite::tungstenite::Error::Http(_))
}

/// The HTTP status and error code of a refused upgrade.
pub fn refusal(e: &anyhow::Error) -> (u16, String) {
    let Some(tokio_tungstenite::tungstenite::Error::Http(response)) = e.downcast_ref() else {
        panic!("not an HTTP refusal: {e}")
    };
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    (response.status().as_u16(), body["error"]["code"].as_str().unwrap().to_string())
}

/// A connection on a 5-second token that answers each `refresh_due` with another 5-second
/// token stays open for 15 seconds: refreshed at least twice, never closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshed_tokens_keep_one_connection_alive() {
    let server = standalone(&[("HERALD_GATEWAY__REFRESH_WARNING", "1s")]);
    let (mut client, _) = connect(&server, &jwt("alice", 5, json!({})), "").await.unwrap();
    let started = Instant::now();
    let mut refreshes = 0;
    while started.elapsed() < Duration::from_secs(15) {
        let frame = match client.recv_within(Duration::from_millis(500)).await {
            Ok(frame) => frame,
            Err(e) if e.to_string().starts_with("no frame within") => continue,
            Err(e) => panic!("the connection ended after {:?}: {e}", started.elapsed()),
        };
        assert_eq!(frame["type"], "refresh_due", "{frame}");
        let reply = client
            .request(json!({"type": "refresh", "id": refreshes, "token": jwt("alice", 5, json!({}))}))
            .await
            .unwrap();
        assert_eq!(reply["type"], "refreshed", "{reply}");
        assert_eq!(reply["id"], refreshes);
        assert!(reply["expires_at"].as_u64().unwrap() > frame["expires_at"].as_u64().unwrap());
        refreshes += 1;
    }
    assert!(refreshes >= 2, "refreshed {refreshes} times in 15 s");
    let pong = client.request(json!({"type": "ping", "id": "alive"})).await.unwrap();
    assert_eq!(pong["type"], "pong", "{pong}");
}

/// Without a refresh, the connection is warned and then closed with 4001 at `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_refresh_the_connection_closes_at_exp() {
    let server = standalone(&[]);
    let (mut client, _) = connect(&server, &jwt("alice", 4, json!({})), "").await.unwrap();
    let due = client.recv().await.unwrap();
    assert_eq!(due["type"], "refresh_due", "{due}");
    assert_eq!(client.closed().await.unwrap().code, 4001);
}

/// A refresh with another user's token is refused with `user_mismatch`, and the connection
/// stays on its old token: it still closes with 4001 at the old `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_with_another_users_token_is_refused() {
    let server = standalone(&[]);
    let (mut client, _) = connect(&server, &jwt("alice", 4, json!({})), "").await.unwrap();
    let reply = client
        .request(json!({"type": "refresh", "id": 1, "token": jwt("bob", 60, json!({}))}))
        .await
        .unwrap();
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "user_mismatch");
    assert_eq!(reply["id"], 1);
    let garbage = client.request(json!({"type": "refresh", "id": 2, "token": "garbage"})).await.unwrap();
    assert_eq!(garbage["code"], "unauthorized", "{garbage}");
    let started = Instant::now();
    assert_eq!(client.closed().await.unwrap().code, 4001);
    assert!(started.elapsed() < Duration::from_secs(6), "closed at the old token's exp");
}
