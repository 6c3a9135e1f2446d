//! The presence API of a real `herald presence` process: answers, and clear errors for bad
//! input over HTTP and gRPC.

use crate::presence_support::{API_KEY, Api, PresenceProcess};
use herald_presence::pb;
use herald_presence::pb::presence_client::PresenceClient;
use herald_testkit::RedisServer;
use serde_json::json;

/// `herald presence` with the namespaces and bulk limit these tests ask of, ready.
async fn start_presence(redis: &RedisServer) -> PresenceProcess {
    let env = [
        ("HERALD_PRESENCE__MAX_BULK", "100"),
        ("HERALD_NAMESPACES__ROOM__SUBSCRIBE", "true"),
        ("HERALD_NAMESPACES__QUIET__PRESENCE", "false"),
    ];
    PresenceProcess::start(&redis.url(), &env).await
}

/// Unknown users are offline, not errors; malformed ids, channels that are not member lists,
/// missing keys and oversized bulk lookups each get their own clear error over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_and_refuses_bad_input_clearly() {
    let redis = RedisServer::start().await;
    let presence = start_presence(&redis).await;
    let http = presence.http;
    let api = Api::new(http);

    let nobody = api.user("nobody").await;
    assert_eq!(nobody, json!({"user": "nobody", "online": false, "connections": 0, "gateways": []}));
    let (status, stats) = api.get("/v1/presence/stats").await;
    assert_eq!((status, stats), (200, json!({"online_users": 0, "connections": 0})));
    let (status, empty) = api.get("/v1/presence/channels/room:none").await;
    assert_eq!((status, empty), (200, json!({"channel": "room:none", "count": 0, "members": []})));
    let (status, counted) = api.get("/v1/presence/channels/room:none?limit=0").await;
    assert_eq!((status, counted["count"].clone()), (200, json!(0)));
    let (status, body) = api.get("/v1/presence/channels/room:none?limit=many").await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!("malformed_frame")), "{body}");
    let (status, bulk) = api.post("/v1/presence/users", json!({"users": ["a", "b"]}).to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(bulk["users"].as_array().unwrap().len(), 2);

    let cases = [
        ("/v1/presence/users/bad%20id", 422, "invalid_channel", "invalid user id"),
        ("/v1/presence/channels/bad*name", 422, "invalid_channel", "invalid channel name"),
        ("/v1/presence/channels/user:alice", 422, "invalid_channel", "personal channel"),
        ("/v1/presence/channels/broadcast", 422, "invalid_channel", "broadcast"),
        ("/v1/presence/channels/nowhere:x", 422, "unknown_channel", "not configured"),
        ("/v1/presence/channels/quiet:x", 403, "forbidden", "presence is off"),
    ];
    for (path, status, code, message) in cases {
        let (got, body) = api.get(path).await;
        assert_eq!((got, body["error"]["code"].as_str().unwrap()), (status, code), "{path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(message), "{path}: {body}");
    }

    let too_many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let (status, body) = api.post("/v1/presence/users", json!({"users": too_many}).to_string()).await;
    assert_eq!((status, body["error"]["code"].clone()), (413, json!("batch_too_large")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("at most 100"), "{body}");
    // Over the body limit (max_bulk ids of 160 bytes), small enough to be sent whole.
    let huge = json!({"users": vec!["x".repeat(120); 200]}).to_string();
    let (status, body) = api.post("/v1/presence/users", huge).await;
    assert_eq!((status, body["error"]["code"].clone()), (413, json!("batch_too_large")), "{body}");
    let (status, body) = api.post("/v1/presence/users", json!({"users": ["ok", "not ok"]}).to_string()).await;
    assert_eq!((status, body["error"]["code"].clone()), (422, json!("invalid_channel")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("users[1]:"), "{body}");
    for bad in ["not json", "[1]", r#"{"user": ["a"]}"#, r#"{"users": "a"}"#] {
        let (status, body) = api.post("/v1/presence/users", bad.into()).await;
        assert_eq!((status, body["error"]["code"].clone()), (400, json!("malformed_frame")), "{bad}: {body}");
    }

    let resp = reqwest::get(format!("http://{http}/v1/presence/stats")).await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = reqwest::Client::new()
        .get(format!("http://{http}/v1/presence/stats"))
        .bearer_auth("wrong-key-wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {API_KEY}").parse().unwrap());
    request
}

/// The gRPC API answers like HTTP and maps the same errors to gRPC status codes; reports with
/// malformed content are refused before they reach the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_and_refuses_bad_input_clearly() {
    let redis = RedisServer::start().await;
    let presence = start_presence(&redis).await;
    let grpc = presence.grpc;
    let mut client = PresenceClient::connect(format!("http://{grpc}")).await.unwrap();

    let user = client.get_user(request(pb::GetUserRequest { user: "nobody".into() })).await.unwrap();
    assert!(!user.get_ref().online);
    let stats = client.get_stats(request(pb::GetStatsRequest {})).await.unwrap();
    assert_eq!(stats.get_ref().online_users, 0);

    let err =
        client.get_user(tonic::Request::new(pb::GetUserRequest { user: "a".into() })).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = client.get_user(request(pb::GetUserRequest { user: "bad id".into() })).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("invalid user id"), "{err:?}");
    let users = (0..101).map(|i| format!("u{i}")).collect();
    let err = client.get_users(request(pb::GetUsersRequest { users })).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let err = client
        .get_channel(request(pb::GetChannelRequest { channel: "user:bob".into(), limit: None }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .get_channel(request(pb::GetChannelRequest { channel: "nowhere:x".into(), limit: None }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let bad_report = pb::ReportRequest {
        gateway: "gw-test".into(),
        seq: 1,
        full: true,
        connections: vec![pb::Connection {
            conn: 1,
            user: "eve".into(),
            info: Some("{not json".into()),
            channels: vec![],
        }],
        ..Default::default()
    };
    let err = client.report(request(bad_report)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("connections[0].info"), "{err:?}");
    let report = pb::ReportRequest {
        gateway: "gw-test".into(),
        seq: 1,
        full: true,
        connections: vec![pb::Connection {
            conn: 1,
            user: "eve".into(),
            info: Some(r#"{"name":"Eve"}"#.into()),
            channels: vec!["room:g".into()],
        }],
        ..Default::default()
    };
    assert!(!client.report(request(report)).await.unwrap().get_ref().resync);
    let room = client
        .get_channel(request(pb::GetChannelRequest { channel: "room:g".into(), limit: None }))
        .await
        .unwrap();
    assert_eq!(room.get_ref().count, 1);
    assert_eq!(room.get_ref().members[0].info.as_deref(), Some(r#"{"name":"Eve"}"#));
    let counted = pb::GetChannelRequest { channel: "room:g".into(), limit: Some(0) };
    let counted = client.get_channel(request(counted)).await.unwrap();
    assert_eq!((counted.get_ref().count, counted.get_ref().members.len()), (1, 0));
    let gap = pb::ReportRequest { gateway: "gw-test".into(), seq: 5, ..Default::default() };
    assert!(client.report(request(gap)).await.unwrap().get_ref().resync, "a missing batch asks for a resync");
}
