//! Publishing into channels with history, idempotency keys, and the history and inbox reads,
//! on both engines: the in-memory one and a real `redis-server`.

use std::sync::Arc;
use std::time::Duration;

use herald_broker::{Broker, MemoryBroker, RedisBroker, RedisConfig, StreamPosition};
use herald_protocol::{ChannelName, InboxConfig};
use herald_testkit::RedisServer;
use serde_json::{Value, json};

use crate::helpers::{
    LOG_HISTORY, TestApp, assert_error, config, spawn_app_with_config, spawn_app_with_inbox,
};

/// `redis.response_timeout` of the Redis app: short, so a frozen Redis is noticed quickly.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);
const WAIT: Duration = Duration::from_secs(15);

fn redis_broker(redis: &RedisServer) -> Arc<dyn Broker> {
    let config = RedisConfig {
        url: redis.url(),
        response_timeout: RESPONSE_TIMEOUT,
        connect_timeout: RESPONSE_TIMEOUT,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..RedisConfig::default()
    };
    Arc::new(RedisBroker::new(config).unwrap())
}

/// Both engines, each with the app on it; the Redis server lives as long as the pair.
async fn engines() -> Vec<(TestApp, Arc<dyn Broker>, Option<RedisServer>)> {
    let memory: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let redis = RedisServer::start().await;
    let on_redis = redis_broker(&redis);
    vec![
        (spawn_app_with_config(memory.clone(), config()).await, memory, None),
        (spawn_app_with_config(on_redis.clone(), config()).await, on_redis, Some(redis)),
    ]
}

async fn publish(app: &TestApp, body: Value) -> Value {
    let response = app.post("/v1/publish", body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The `offset` of each frame, in order.
fn offsets(frames: &Value) -> Vec<u64> {
    frames.as_array().expect("an array of frames").iter().map(|f| f["offset"].as_u64().unwrap()).collect()
}

/// Publishes on a channel with history answer contiguous offsets of one epoch, singly and in
/// a batch mixed with a channel without history; subscribers and the history get the same
/// frames, offset first; a history read returns them as JSON objects.
#[tokio::test]
async fn publishes_with_history_are_numbered_without_gaps() {
    for (app, _broker, _redis) in engines().await {
        let first = publish(&app, json!({"channel": "log:a", "data": {"n": 1}})).await;
        let second = publish(&app, json!({"channel": "log:a", "data": {"n": 2}, "event": "e"})).await;
        assert_eq!(
            (first["offset"].as_u64(), second["offset"].as_u64()),
            (Some(1), Some(2)),
            "{first} {second}"
        );
        let epoch = first["epoch"].as_str().expect("an epoch").to_string();
        assert_eq!(second["epoch"], epoch.as_str());
        assert!(first.get("deduplicated").is_none(), "{first}");
        let plain = publish(&app, json!({"channel": "chat:lobby", "data": 0})).await;
        assert!(plain.get("offset").is_none() && plain.get("epoch").is_none(), "{plain}");

        let batch = json!({"messages": [
            {"channel": "log:a", "data": {"n": 3}},
            {"channel": "chat:lobby", "data": 1},
            {"channel": "chat:other", "data": 2},
            {"channel": "log:a", "data": {"n": 4}},
        ]});
        let response = app.post("/v1/publish/batch", batch).await;
        assert_eq!(response.status(), 200);
        let reply: Value = response.json().await.unwrap();
        let results = reply["results"].as_array().unwrap();
        assert_eq!(reply["ids"].as_array().unwrap().len(), 4);
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result["id"], reply["ids"][i], "{reply}");
        }
        assert_eq!(
            results.iter().map(|r| r["offset"].as_u64()).collect::<Vec<_>>(),
            [Some(3), None, None, Some(4)]
        );
        assert_eq!(results[3]["epoch"], epoch.as_str());

        let got = app.received(7).await;
        let log: Vec<&Value> = got.iter().filter(|(c, _)| c == "log:a").map(|(_, f)| f).collect();
        assert_eq!(log.iter().map(|f| f["offset"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(log[0]["id"], first["id"]);
        assert_eq!(log[1]["event"], "e");

        let (status, page) = app.get_json("/v1/channels/log:a/history").await;
        assert_eq!(status, 200, "{page}");
        assert_eq!((page["offset"].as_u64(), page["epoch"].as_str()), (Some(4), Some(epoch.as_str())));
        assert_eq!(offsets(&page["publications"]), [1, 2, 3, 4]);
        let kept = &page["publications"][0];
        assert_eq!((kept["type"].as_str(), kept["data"]["n"].as_u64()), (Some("message"), Some(1)), "{kept}");
        assert_eq!(page["publications"].as_array().unwrap(), &log.into_iter().cloned().collect::<Vec<_>>());
    }
}

/// History reads page oldest first or newest first, after a position, within the size the
/// namespace keeps; what cannot be answered truthfully is refused with its documented code.
#[tokio::test]
async fn history_reads_page_and_refuse_what_they_cannot_answer() {
    for (app, _broker, _redis) in engines().await {
        let mut epoch = String::new();
        for n in 1..=7 {
            epoch = publish(&app, json!({"channel": "log:a", "data": {"n": n}})).await["epoch"]
                .as_str()
                .unwrap()
                .into();
        }
        let read = |query: String| {
            let app = &app;
            async move { app.get_json(&format!("/v1/channels/log:a/history{query}")).await }
        };
        let (_, all) = read(String::new()).await;
        assert_eq!(offsets(&all["publications"]), [3, 4, 5, 6, 7], "the last {LOG_HISTORY} are kept");
        assert_eq!(offsets(&read("?limit=2".into()).await.1["publications"]), [3, 4]);
        assert_eq!(offsets(&read("?limit=2&reverse=true".into()).await.1["publications"]), [7, 6]);
        let since = read(format!("?since_offset=4&since_epoch={epoch}")).await.1;
        assert_eq!(offsets(&since["publications"]), [5, 6, 7]);
        let newest = read(format!("?since_offset=4&since_epoch={epoch}&limit=2&reverse=true")).await.1;
        assert_eq!(offsets(&newest["publications"]), [7, 6]);
        let (status, top) = read("?limit=0".into()).await;
        assert_eq!((status, top["offset"].as_u64(), offsets(&top["publications"]).len()), (200, Some(7), 0));
        let caught_up = read(format!("?since_offset=7&since_epoch={epoch}")).await.1;
        assert_eq!(offsets(&caught_up["publications"]).len(), 0);

        let get = |path: String| {
            let app = &app;
            async move {
                app.client
                    .get(format!("{}{path}", app.http))
                    .bearer_auth(crate::helpers::KEY)
                    .send()
                    .await
                    .unwrap()
            }
        };
        let too_old = get(format!("/v1/channels/log:a/history?since_offset=1&since_epoch={epoch}")).await;
        let message = assert_error(too_old, 410, "unrecoverable").await;
        assert!(message.contains("position_too_old") && message.contains("offset 7"), "{message}");
        let other = get("/v1/channels/log:a/history?since_offset=5&since_epoch=Other1".into()).await;
        assert!(assert_error(other, 410, "unrecoverable").await.contains("epoch_changed"));
        let ahead = get(format!("/v1/channels/log:a/history?since_offset=9&since_epoch={epoch}")).await;
        assert!(assert_error(ahead, 410, "unrecoverable").await.contains("position_ahead"));
        let message =
            assert_error(get("/v1/channels/log:a/history?limit=1001".into()).await, 400, "malformed_frame")
                .await;
        assert!(message.contains("history.read_limit"), "{message}");
        let half = get("/v1/channels/log:a/history?since_offset=3".into()).await;
        assert_error(half, 400, "malformed_frame").await;
        let bad_epoch = get("/v1/channels/log:a/history?since_offset=3&since_epoch=a%20b".into()).await;
        assert_error(bad_epoch, 400, "malformed_frame").await;
        assert_error(get("/v1/channels/log:a/history?limt=3".into()).await, 400, "malformed_frame").await;
        assert_error(get("/v1/channels/log:a/history?limit=x".into()).await, 400, "malformed_frame").await;
        assert_error(get("/v1/channels/chat:lobby/history".into()).await, 422, "no_history").await;
        assert_error(get("/v1/channels/broadcast/history".into()).await, 422, "no_history").await;
        assert_error(get("/v1/channels/nope:a/history".into()).await, 422, "unknown_channel").await;
        assert_error(get("/v1/channels/a%20b/history".into()).await, 422, "invalid_channel").await;
        assert_error(app.get("/v1/channels/log:a/history").await, 401, "unauthorized").await;
    }
}

/// A publish retried with the same idempotency key is delivered once, and its answer is the
/// first publish's id and offset with `deduplicated`; keys are refused where there is no
/// history to decide it in.
#[tokio::test]
async fn the_same_idempotency_key_publishes_once() {
    for (app, _broker, _redis) in engines().await {
        let first =
            publish(&app, json!({"channel": "log:a", "data": "once", "idempotency_key": "order-1"})).await;
        let again =
            publish(&app, json!({"channel": "log:a", "data": "twice", "idempotency_key": "order-1"})).await;
        assert_eq!(
            (&again["id"], &again["offset"], &again["epoch"]),
            (&first["id"], &first["offset"], &first["epoch"])
        );
        assert_eq!((first.get("deduplicated"), &again["deduplicated"]), (None, &json!(true)));
        let batch = json!({"messages": [
            {"channel": "log:a", "data": "thrice", "idempotency_key": "order-1"},
            {"channel": "log:a", "data": "other", "idempotency_key": "order-2"},
        ]});
        let reply: Value = app.post("/v1/publish/batch", batch).await.json().await.unwrap();
        assert_eq!(
            (&reply["results"][0]["id"], &reply["results"][0]["deduplicated"]),
            (&first["id"], &json!(true))
        );
        assert_eq!(reply["results"][1]["offset"], 2, "{reply}");
        let notify = json!({"data": {"n": 1}, "idempotency_key": "n-1"});
        let first_notify: Value =
            app.post("/v1/users/alice/notify", notify.clone()).await.json().await.unwrap();
        let second_notify: Value = app.post("/v1/users/alice/notify", notify).await.json().await.unwrap();
        assert_eq!(
            (&second_notify["id"], &second_notify["deduplicated"]),
            (&first_notify["id"], &json!(true))
        );
        // A marker after everything: once it is in, so is anything the retries published.
        publish(&app, json!({"channel": "log:a", "data": "marker"})).await;

        let got = app.received(4).await;
        let data: Vec<&Value> = got.iter().map(|(_, f)| &f["data"]).collect();
        assert_eq!(data, [&json!("once"), &json!("other"), &json!({"n": 1}), &json!("marker")]);
        assert_eq!(app.settled().await.len(), 4);

        let keyed = |channel: &str| json!({"channel": channel, "data": 1, "idempotency_key": "k"});
        let message =
            assert_error(app.post("/v1/publish", keyed("chat:lobby")).await, 422, "no_history").await;
        assert!(message.starts_with("idempotency_key: "), "{message}");
        assert_error(
            app.post("/v1/broadcast", json!({"data": 1, "idempotency_key": "k"})).await,
            422,
            "no_history",
        )
        .await;
        let long = json!({"channel": "log:a", "data": 1, "idempotency_key": "k".repeat(129)});
        assert_error(app.post("/v1/publish", long).await, 400, "malformed_frame").await;
        let empty = json!({"channel": "log:a", "data": 1, "idempotency_key": ""});
        assert_error(app.post("/v1/publish", empty).await, 400, "malformed_frame").await;
        let batch = json!({"messages": [{"channel": "log:a", "data": 1}, keyed("chat:lobby")]});
        let message = assert_error(app.post("/v1/publish/batch", batch).await, 422, "no_history").await;
        assert!(message.starts_with("messages[1].idempotency_key"), "{message}");
    }
}

/// A publish whose first attempt got no answer in time (Redis frozen: `outcome_unknown`) and
/// that is retried with the same key once Redis runs again is delivered exactly once, whatever
/// the first attempt did.
#[tokio::test]
async fn a_retry_after_outcome_unknown_with_the_same_key_delivers_once() {
    let redis = RedisServer::start().await;
    let app = spawn_app_with_config(redis_broker(&redis), config()).await;
    publish(&app, json!({"channel": "log:a", "data": "warm"})).await;
    app.received(1).await;

    let body = json!({"channel": "log:a", "data": "precious", "idempotency_key": "pay-42"});
    let frozen = redis.freeze().await;
    let message = assert_error(app.post("/v1/publish", body.clone()).await, 504, "outcome_unknown").await;
    assert!(message.contains("idempotency_key"), "the advice names the key: {message}");
    drop(frozen);

    let deadline = tokio::time::Instant::now() + WAIT;
    let retried = loop {
        let response = app.post("/v1/publish", body.clone()).await;
        if response.status() == 200 {
            break response.json::<Value>().await.unwrap();
        }
        // While the client reconnects the retry may be refused; nothing is published then.
        assert!(tokio::time::Instant::now() < deadline, "the retry never succeeded: {}", response.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(retried["offset"], 2, "{retried}");
    publish(&app, json!({"channel": "log:a", "data": "marker"})).await;
    let got = tokio::time::timeout(WAIT, app.received(3)).await.expect("the marker arrives");
    let data: Vec<&Value> = got.iter().map(|(_, f)| &f["data"]).collect();
    assert_eq!(data, [&json!("warm"), &json!("precious"), &json!("marker")]);
    assert_eq!(got[1].1["id"], retried["id"], "the subscriber saw the message the retry answered for");
    assert_eq!(app.settled().await.len(), 3);
}

/// A user's inbox, as backends read it: where it stands, how much is acknowledged and unread,
/// and the unread notifications oldest first up to the limit; an inbox that is off is
/// `no_history`.
#[tokio::test]
async fn backends_read_a_users_inbox() {
    for (app, broker, _redis) in engines().await {
        let (status, empty) = app.get_json("/v1/users/bob/inbox").await;
        assert_eq!(status, 200, "{empty}");
        assert_eq!(
            (empty["offset"].as_u64(), empty["acked"].as_u64(), empty["unread"].as_u64()),
            (Some(0), Some(0), Some(0))
        );
        for n in 1..=5 {
            let response = app.post("/v1/users/bob/notify", json!({"data": {"n": n}})).await;
            assert_eq!(response.status(), 200);
        }
        let (_, inbox) = app.get_json("/v1/users/bob/inbox?limit=3").await;
        assert_eq!(
            (inbox["offset"].as_u64(), inbox["acked"].as_u64(), inbox["unread"].as_u64()),
            (Some(5), Some(0), Some(5))
        );
        assert_eq!(offsets(&inbox["publications"]), [1, 2, 3]);
        assert_eq!(inbox["publications"][0]["data"]["n"], 1);
        assert_eq!(inbox["epoch"], empty["epoch"], "the read before the first publish created the epoch");

        let position = StreamPosition { offset: 2, epoch: inbox["epoch"].as_str().unwrap().into() };
        let channel = ChannelName::parse("user:bob").unwrap();
        broker.ack(&channel, &position, InboxConfig::default().history_ttl).await.unwrap();
        let (_, inbox) = app.get_json("/v1/users/bob/inbox").await;
        assert_eq!((inbox["acked"].as_u64(), inbox["unread"].as_u64()), (Some(2), Some(3)));
        assert_eq!(offsets(&inbox["publications"]), [3, 4, 5]);
        let (_, inbox) = app.get_json("/v1/users/bob/inbox?limit=0").await;
        assert_eq!((inbox["unread"].as_u64(), offsets(&inbox["publications"]).len()), (Some(3), 0));

        let get = |path: &str| {
            app.client.get(format!("{}{path}", app.http)).bearer_auth(crate::helpers::KEY).send()
        };
        assert_error(get("/v1/users/bob/inbox?limit=1001").await.unwrap(), 400, "malformed_frame").await;
        assert_error(get("/v1/users/a%20b/inbox").await.unwrap(), 422, "invalid_channel").await;
        assert_error(app.get("/v1/users/bob/inbox").await, 401, "unauthorized").await;
    }
    let off = InboxConfig { history_size: 0, history_ttl: Duration::ZERO };
    let app = spawn_app_with_inbox(Arc::new(MemoryBroker::new()), config(), off).await;
    let response =
        app.client.get(format!("{}/v1/users/bob/inbox", app.http)).bearer_auth(crate::helpers::KEY);
    let message = assert_error(response.send().await.unwrap(), 422, "no_history").await;
    assert!(message.contains("inbox is off"), "{message}");
    let keyed = app.post("/v1/users/bob/notify", json!({"data": 1, "idempotency_key": "k"})).await;
    assert_error(keyed, 422, "no_history").await;
    let plain: Value = app.post("/v1/users/alice/notify", json!({"data": 1})).await.json().await.unwrap();
    assert!(plain.get("offset").is_none(), "without the inbox a notification is published plainly: {plain}");
}
