//! Who may subscribe and publish where, against a real `herald standalone` process: private
//! namespaces (the `channels` claim, subscription tokens and their expiry) and the per-user
//! connection cap.

use std::time::Duration;

use serde_json::json;

use crate::refresh::{connect, jwt, refusal, standalone};

/// The private namespace `vip` (client publishing and member lists on), next to the shipped
/// configuration's public ones.
const PRIVATE: [(&str, &str); 4] = [
    ("HERALD_NAMESPACES__VIP__PRIVATE", "true"),
    ("HERALD_NAMESPACES__VIP__PUBLISH", "true"),
    ("HERALD_NAMESPACES__VIP__CLIENT_PRESENCE", "true"),
    ("HERALD_GATEWAY__REFRESH_WARNING", "1s"),
];

/// The `channels` claim grants exact names and patterns, for `subscribe` frames and the
/// connect URL alike; what it does not grant is refused, publishing and member lists
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channels_claim_grants_private_channels() {
    let server = standalone(&PRIVATE);
    let claim = json!({"channels": ["vip:gold", "vip:team-*"]});
    let (mut alice, hello) =
        connect(&server, &jwt("alice", 60, claim.clone()), "&subscribe=vip:gold").await.unwrap();
    assert_eq!(hello["channels"], json!(["vip:gold"]));
    alice.subscribe("vip:team-red").await.unwrap();
    alice.subscribe("news:today").await.unwrap();
    let refused =
        alice.request(json!({"type": "subscribe", "id": 1, "channel": "vip:silver"})).await.unwrap();
    assert_eq!(refused["code"], "invalid_subscription_token", "{refused}");
    let nested =
        alice.request(json!({"type": "subscribe", "id": 2, "channel": "vip:team-red:x"})).await.unwrap();
    assert_eq!(nested["code"], "invalid_subscription_token", "`*` does not cross a `:`: {nested}");
    let published =
        alice.request(json!({"type": "publish", "channel": "vip:team-red", "data": {"t": 1}})).await.unwrap();
    assert_eq!(published["type"], "published", "{published}");
    let members = alice.request(json!({"type": "presence", "channel": "vip:gold"})).await.unwrap();
    assert_eq!(members["type"], "presence", "{members}");

    let (mut bob, _) = connect(&server, &jwt("bob", 60, json!({})), "").await.unwrap();
    let publish = bob.request(json!({"type": "publish", "channel": "vip:gold", "data": 1})).await.unwrap();
    assert_eq!(publish["code"], "forbidden", "publishing needs the grant too: {publish}");
    let url = connect(&server, &jwt("bob", 60, json!({})), "&subscribe=vip:gold").await;
    assert_eq!(
        refusal(&url.err().expect("connected")),
        (403, "forbidden".into()),
        "connect-time channels need the claim"
    );
}

/// A subscription token grants its one channel to its one user; a wrong or expired one is
/// refused with its own code, and the grant also lets the holder publish and read members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_tokens_grant_one_channel_to_one_user() {
    let server = standalone(&PRIVATE);
    let (mut bob, _) = connect(&server, &jwt("bob", 60, json!({})), "").await.unwrap();
    let subscribe = |id: u32, channel: &str, token: String| json!({"type": "subscribe", "id": id, "channel": channel, "token": token});
    let cases = [
        (
            subscribe(1, "vip:gold", jwt("bob", 60, json!({"channel": "vip:silver"}))),
            "invalid_subscription_token",
        ),
        (
            subscribe(2, "vip:gold", jwt("carol", 60, json!({"channel": "vip:gold"}))),
            "invalid_subscription_token",
        ),
        (subscribe(3, "vip:gold", jwt("bob", 60, json!({}))), "invalid_subscription_token"),
        (subscribe(4, "vip:gold", "garbage".into()), "invalid_subscription_token"),
        (subscribe(5, "vip:gold", jwt("bob", -60, json!({"channel": "vip:gold"}))), "subscription_expired"),
    ];
    for (frame, code) in cases {
        let reply = bob.request(frame.clone()).await.unwrap();
        assert_eq!(reply["code"], code, "{frame}: {reply}");
    }
    let members = bob.request(json!({"type": "presence", "channel": "vip:gold"})).await.unwrap();
    assert_eq!(members["code"], "forbidden", "{members}");
    let ok =
        bob.request(subscribe(6, "vip:gold", jwt("bob", 60, json!({"channel": "vip:gold"})))).await.unwrap();
    assert_eq!(ok["type"], "subscribed", "{ok}");
    assert!(ok["expires_at"].as_u64().is_some(), "{ok}");
    let published = bob.request(json!({"type": "publish", "channel": "vip:gold", "data": 1})).await.unwrap();
    assert_eq!(published["type"], "published", "{published}");
    let members = bob.request(json!({"type": "presence", "channel": "vip:gold"})).await.unwrap();
    assert_eq!(members["type"], "presence", "{members}");
}

/// A subscription token left to expire ends that subscription (not the connection), after a
/// warning; one refreshed in time keeps its subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_subscription_token_unsubscribes_and_a_refreshed_one_does_not() {
    let server = standalone(&PRIVATE);
    let (mut bob, _) = connect(&server, &jwt("bob", 60, json!({})), "").await.unwrap();
    for channel in ["vip:a", "vip:b"] {
        let token = jwt("bob", 3, json!({"channel": channel}));
        let reply =
            bob.request(json!({"type": "subscribe", "channel": channel, "token": token})).await.unwrap();
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }
    let token = jwt("bob", 60, json!({"channel": "vip:b"}));
    let reply =
        bob.request(json!({"type": "subscribe_refresh", "id": 1, "channel": "vip:b", "token": token})).await;
    let reply = reply.unwrap();
    assert_eq!(reply["type"], "subscribe_refreshed", "{reply}");
    let wrong = jwt("bob", 60, json!({"channel": "vip:b"}));
    let refused = bob.request(json!({"type": "subscribe_refresh", "channel": "vip:a", "token": wrong})).await;
    assert_eq!(refused.unwrap()["code"], "invalid_subscription_token");
    let due = bob.recv().await.unwrap();
    assert_eq!(
        due,
        json!({"type": "subscribe_refresh_due", "channel": "vip:a", "expires_at": due["expires_at"]})
    );
    let ended = bob.recv().await.unwrap();
    assert_eq!(ended, json!({"type": "unsubscribed", "channel": "vip:a", "reason": "subscription_expired"}));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pong = bob.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(pong["type"], "pong", "the connection goes on: {pong}");
    let still = bob.request(json!({"type": "unsubscribe", "channel": "vip:b"})).await.unwrap();
    assert_eq!(still["type"], "unsubscribed", "the refreshed subscription outlived its first token: {still}");
    let gone = bob.request(json!({"type": "unsubscribe", "channel": "vip:a"})).await.unwrap();
    assert_eq!(gone["code"], "not_subscribed", "{gone}");
}

/// A refresh whose `channels` claim no longer grants a private channel ends that subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_without_the_claim_revokes_its_subscriptions() {
    let server = standalone(&PRIVATE);
    let (mut alice, _) =
        connect(&server, &jwt("alice", 60, json!({"channels": ["vip:a", "vip:b"]})), "&subscribe=vip:a")
            .await
            .unwrap();
    alice.subscribe("vip:b").await.unwrap();
    let token = jwt("alice", 60, json!({"channels": ["vip:b"]}));
    alice.send_json(json!({"type": "refresh", "id": 1, "token": token})).await.unwrap();
    let revoked = alice.recv().await.unwrap();
    assert_eq!(revoked, json!({"type": "unsubscribed", "channel": "vip:a", "reason": "grant_revoked"}));
    assert_eq!(alice.recv().await.unwrap()["type"], "refreshed");
    let kept = alice.request(json!({"type": "unsubscribe", "channel": "vip:b"})).await.unwrap();
    assert_eq!(kept["type"], "unsubscribed", "{kept}");
}

/// Over `gateway.max_connections_per_user`, a user's next connection is refused with 429
/// `too_many_connections`; other users are not affected, and a closed connection frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_are_capped() {
    let server = standalone(&[("HERALD_GATEWAY__MAX_CONNECTIONS_PER_USER", "2")]);
    let token = jwt("alice", 60, json!({}));
    let (first, _) = connect(&server, &token, "").await.unwrap();
    let (_second, _) = connect(&server, &token, "").await.unwrap();
    let third = connect(&server, &token, "").await.err().expect("a third connection");
    assert_eq!(refusal(&third), (429, "too_many_connections".into()));
    connect(&server, &jwt("bob", 60, json!({})), "").await.expect("another user connects");
    first.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match connect(&server, &token, "").await {
            Ok(_) => break,
            Err(e) => {
                // A slow machine may time a connect out; only a refusal must be the cap's.
                if e.downcast_ref::<tokio_tungstenite::tungstenite::Error>()
                    .is_some_and(|e| matches!(e, tokio_tungstenite::tungstenite::Error::Http(_)))
                {
                    assert_eq!(refusal(&e).1, "too_many_connections");
                }
                assert!(tokio::time::Instant::now() < deadline, "the closed connection's slot never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
