//! The HTTP API over the wire.

use serde_json::{Value, json};

use crate::helpers::{KEY, MAX_BATCH, MAX_MESSAGE_SIZE, assert_error, assert_message, spawn_app};

/// A publish reaches the broker as one `message` frame whose id is the one returned and whose
/// `data` is the caller's JSON byte for byte.
#[tokio::test]
async fn publish_sends_one_encoded_message_frame() {
    let app = spawn_app().await;
    let data = r#"{"text":  "hi",   "n": [1, 2.50]}"#;
    let body = format!(r#"{{"channel": "chat:lobby", "event": "say", "data": {data}}}"#);
    let response = app.post_raw("/v1/publish", body, Some(KEY)).await;
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();

    let got = app.got.wait_for(1).await;
    assert_eq!(got.len(), 1);
    let (channel, payload) = &got[0];
    assert_eq!(channel, "chat:lobby");
    let frame: Value = serde_json::from_slice(payload).unwrap();
    let ts = frame["ts"].as_u64().unwrap();
    let expected = format!(
        r#"{{"type":"message","channel":"chat:lobby","id":"{id}","ts":{ts},"event":"say","data":{data}}}"#
    );
    assert_eq!(std::str::from_utf8(payload).unwrap(), expected);
}

/// A batch is published in order across channels and its ids come back in the same order.
#[tokio::test]
async fn batch_publishes_in_order_and_returns_ids_in_order() {
    let app = spawn_app().await;
    let messages: Vec<Value> = (0..MAX_BATCH)
        .map(|i| json!({"channel": if i % 2 == 0 { "chat:lobby" } else { "chat:other" }, "data": {"i": i}}))
        .collect();
    let response = app.post("/v1/publish/batch", json!({ "messages": messages })).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let ids: Vec<&str> = body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ids.len(), MAX_BATCH);

    let got = app.received(MAX_BATCH).await;
    for (i, (channel, frame)) in got.iter().enumerate() {
        assert_eq!(channel, messages[i]["channel"].as_str().unwrap());
        assert_message(frame, channel, ids[i], &json!({"i": i}), None);
    }
}

/// `/v1/broadcast` publishes to the `broadcast` channel.
#[tokio::test]
async fn broadcast_publishes_to_the_broadcast_channel() {
    let app = spawn_app().await;
    let response = app.post("/v1/broadcast", json!({"data": "maintenance at noon", "event": "notice"})).await;
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let got = app.received(1).await;
    assert_eq!(got[0].0, "broadcast");
    assert_message(&got[0].1, "broadcast", &id, &json!("maintenance at noon"), Some("notice"));
}

/// `/v1/users/{user}/notify` publishes to the user's personal channel.
#[tokio::test]
async fn notify_publishes_to_the_personal_channel() {
    let app = spawn_app().await;
    let response = app.post("/v1/users/alice/notify", json!({"data": {"unread": 3}})).await;
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let got = app.received(1).await;
    assert_message(&got[0].1, "user:alice", &id, &json!({"unread": 3}), None);
}

/// Personal and broadcast channels may also be named directly in `/v1/publish`.
#[tokio::test]
async fn built_in_channels_can_be_published_to_by_name() {
    let app = spawn_app().await;
    for channel in ["user:alice", "broadcast"] {
        let response = app.post("/v1/publish", json!({"channel": channel, "data": null})).await;
        assert_eq!(response.status(), 200, "{channel}");
    }
    let got = app.received(2).await;
    assert_eq!(got[0].0, "user:alice");
    assert_eq!(got[1].1["data"], Value::Null);
}

/// Every `/v1` endpoint answers 401 without a key or with a wrong one, and publishes nothing.
#[tokio::test]
async fn requests_without_a_valid_key_are_unauthorized() {
    let app = spawn_app().await;
    let endpoints = [
        ("/v1/publish", json!({"channel": "chat:lobby", "data": 1})),
        ("/v1/publish/batch", json!({"messages": [{"channel": "chat:lobby", "data": 1}]})),
        ("/v1/broadcast", json!({"data": 1})),
        ("/v1/users/alice/notify", json!({"data": 1})),
    ];
    for (path, body) in endpoints {
        for key in [None, Some("wrong-key-0123456789"), Some(""), Some(&KEY[..KEY.len() - 1])] {
            let response = app.post_raw(path, body.to_string(), key).await;
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_error(response, 401, "unauthorized").await;
        }
        let response = app
            .client
            .post(format!("{}{path}", app.http))
            .header("authorization", format!("Basic {KEY}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_error(response, 401, "unauthorized").await;
    }
    assert!(app.settled().await.is_empty(), "an unauthorized request was published");
}

/// Bodies that are not JSON, or JSON of the wrong shape, are 400 with serde's explanation;
/// a missing or wrong `Content-Type` does not matter when the body is JSON.
#[tokio::test]
async fn malformed_bodies_are_400_and_content_type_is_not_required() {
    let app = spawn_app().await;
    let message = assert_error(
        app.post_raw("/v1/publish", "{\"channel\": ".into(), Some(KEY)).await,
        400,
        "malformed_frame",
    )
    .await;
    assert!(message.contains("not valid JSON"), "{message}");
    let message =
        assert_error(app.post("/v1/publish", json!({"channel": "chat:lobby"})).await, 400, "malformed_frame")
            .await;
    assert!(message.contains("missing field `data`"), "{message}");
    let message = assert_error(
        app.post("/v1/broadcast", json!({"data": 1, "evnt": "x"})).await,
        400,
        "malformed_frame",
    )
    .await;
    assert!(message.contains("unknown field `evnt`"), "{message}");
    let message = assert_error(app.post("/v1/publish", json!(1)).await, 400, "malformed_frame").await;
    assert!(message.contains("an object with `channel`"), "{message}");
    let positional = json!(["chat:lobby", 1]);
    let message = assert_error(app.post("/v1/publish", positional).await, 400, "malformed_frame").await;
    assert!(message.contains("expected a JSON object"), "{message}");
    let message = assert_error(
        app.post("/v1/publish", json!({"channel": "chat:lobby", "data": 1, "event": ""})).await,
        400,
        "malformed_frame",
    )
    .await;
    assert!(message.starts_with("event: "), "{message}");

    let response = app
        .client
        .post(format!("{}/v1/publish", app.http))
        .bearer_auth(KEY)
        .header("content-type", "text/plain")
        .body(r#"{"channel": "chat:lobby", "data": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.settled().await.len(), 1, "only the valid request was published");
}

/// Data over `max_message_size`, bodies over the body limit, and batches over `max_batch` or
/// empty are 413 with our JSON error, and nothing is published.
#[tokio::test]
async fn oversized_data_bodies_and_batches_are_413() {
    let app = spawn_app().await;
    let too_big = "x".repeat(MAX_MESSAGE_SIZE);
    let message = assert_error(
        app.post("/v1/publish", json!({"channel": "chat:lobby", "data": too_big})).await,
        413,
        "message_too_large",
    )
    .await;
    assert!(message.starts_with("data: "), "{message}");
    let fits = "x".repeat(MAX_MESSAGE_SIZE - 2);
    assert_eq!(app.post("/v1/broadcast", json!({"data": fits})).await.status(), 200);

    let huge = format!(r#"{{"data": "{}"}}"#, "x".repeat(64 * 1024));
    let message =
        assert_error(app.post_raw("/v1/broadcast", huge, Some(KEY)).await, 413, "message_too_large").await;
    assert!(message.starts_with("body: "), "{message}");

    let messages: Vec<Value> = (0..=MAX_BATCH).map(|i| json!({"channel": "chat:lobby", "data": i})).collect();
    let message = assert_error(
        app.post("/v1/publish/batch", json!({"messages": messages})).await,
        413,
        "batch_too_large",
    )
    .await;
    assert!(message.contains(&format!("limit is {MAX_BATCH}")), "{message}");
    assert_error(app.post("/v1/publish/batch", json!({"messages": []})).await, 413, "batch_too_large").await;

    assert_eq!(app.settled().await.len(), 1, "only the message that fits was published");
}

/// Bad channel names, unconfigured namespaces and bad user ids are 422 with a clear message.
#[tokio::test]
async fn invalid_channels_unknown_namespaces_and_bad_users_are_422() {
    let app = spawn_app().await;
    let message = assert_error(
        app.post("/v1/publish", json!({"channel": "chat lobby", "data": 1})).await,
        422,
        "invalid_channel",
    )
    .await;
    assert!(message.starts_with("channel: invalid channel name \"chat lobby\""), "{message}");
    let message = assert_error(
        app.post("/v1/publish", json!({"channel": "news:today", "data": 1})).await,
        422,
        "unknown_channel",
    )
    .await;
    assert!(message.contains("namespace \"news\"") && message.contains("not configured"), "{message}");
    assert_error(
        app.post("/v1/publish", json!({"channel": "plain", "data": 1})).await,
        422,
        "unknown_channel",
    )
    .await;
    let message =
        assert_error(app.post("/v1/users/a%20b/notify", json!({"data": 1})).await, 422, "invalid_channel")
            .await;
    assert!(message.starts_with("user: invalid user id \"a b\""), "{message}");
    assert_error(app.post("/v1/users/a*b/notify", json!({"data": 1})).await, 422, "invalid_channel").await;
    assert!(app.settled().await.is_empty());
}

/// One invalid entry rejects the whole batch, naming its index, and nothing is published.
#[tokio::test]
async fn a_batch_is_all_or_nothing_and_errors_name_the_entry() {
    let app = spawn_app().await;
    let batch = |bad: Value| {
        let mut messages: Vec<Value> = (0..4).map(|i| json!({"channel": "chat:lobby", "data": i})).collect();
        messages[3] = bad;
        json!({ "messages": messages })
    };
    let cases = [
        (json!({"channel": "bad name", "data": 1}), 422, "invalid_channel", "messages[3].channel: "),
        (json!({"channel": "news:x", "data": 1}), 422, "unknown_channel", "messages[3].channel: "),
        (json!({"channel": "chat:lobby"}), 400, "malformed_frame", "messages[3]: missing field `data`"),
        (
            json!({"channel": "chat:lobby", "data": "x".repeat(MAX_MESSAGE_SIZE)}),
            413,
            "message_too_large",
            "messages[3].data: ",
        ),
        (
            json!({"channel": "chat:lobby", "data": 1, "event": ""}),
            400,
            "malformed_frame",
            "messages[3].event: ",
        ),
        (json!(7), 400, "malformed_frame", "messages[3]: "),
        (json!(["chat:lobby", 1]), 400, "malformed_frame", "messages[3]: expected a JSON object"),
    ];
    for (bad, status, code, prefix) in cases {
        let message = assert_error(app.post("/v1/publish/batch", batch(bad)).await, status, code).await;
        assert!(message.starts_with(prefix), "{message:?} should start with {prefix:?}");
    }
    assert!(app.settled().await.is_empty(), "part of a refused batch was published");
}

/// The probes need no key: `/livez` always answers, `/readyz` when the broker answers.
#[tokio::test]
async fn probes_answer_without_a_key() {
    let app = spawn_app().await;
    assert_eq!(app.get("/livez").await.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
}
