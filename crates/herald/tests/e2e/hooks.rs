//! The backend hook against a real `herald standalone` process and a real HTTP server (axum)
//! or gRPC server (tonic) standing in for the application: it allows, denies, fails and
//! times out.

use std::time::Duration;

use axum::Json;
use axum::routing::post;
use herald_gateway::hook::pb::permission_hook_server::{PermissionHook, PermissionHookServer};
use herald_gateway::hook::pb::{HookReply, HookRequest};
use serde_json::{Value, json};

use crate::common::StandaloneProcess;
use crate::refresh::{connect, jwt, refusal, standalone};

/// Answers by channel: `hooked:ok` allowed, `hooked:no` refused, `hooked:slow` after 3 s,
/// `hooked:broken` with a 500.
async fn application(Json(question): Json<Value>) -> Result<Json<Value>, axum::http::StatusCode> {
    match question["channel"].as_str().unwrap_or_default() {
        "hooked:no" => Ok(Json(json!({"allow": false, "reason": "not in this room"}))),
        "hooked:slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(Json(json!({"allow": true})))
        }
        "hooked:broken" => Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        _ => Ok(Json(json!({"allow": question["action"] == "subscribe" || question["action"] == "publish"}))),
    }
}

/// Starts the application's hook endpoint and a standalone process asking it, with
/// `on_failure`.
async fn start(on_failure: &str) -> (StandaloneProcess, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/hook", post(application));
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url: &'static str = Box::leak(url.into_boxed_str());
    let on_failure: &'static str = Box::leak(on_failure.to_string().into_boxed_str());
    let process = standalone(&[
        ("HERALD_NAMESPACES__HOOKED__SUBSCRIBE_HOOK", "true"),
        ("HERALD_NAMESPACES__HOOKED__PUBLISH_HOOK", "true"),
        ("HERALD_NAMESPACES__HOOKED__PUBLISH", "true"),
        ("HERALD_GATEWAY__HOOKS__URL", url),
        ("HERALD_GATEWAY__HOOKS__TIMEOUT", "300ms"),
        ("HERALD_GATEWAY__HOOKS__ON_FAILURE", on_failure),
    ]);
    (process, server)
}

/// With `on_failure = "deny"`, the hook's yes and no decide, and a hook that times out or
/// fails refuses with `unavailable`; the connect URL's channels are asked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_allows_denies_and_fails_closed() {
    let (server, _app) = start("deny").await;
    let (mut alice, _) = connect(&server, &jwt("alice", 60, json!({})), "").await.unwrap();
    alice.subscribe("hooked:ok").await.unwrap();
    let no = alice.request(json!({"type": "subscribe", "channel": "hooked:no"})).await.unwrap();
    assert_eq!(no["code"], "forbidden", "{no}");
    assert!(no["message"].as_str().unwrap().contains("not in this room"), "{no}");
    let started = tokio::time::Instant::now();
    let slow = alice.request(json!({"type": "subscribe", "channel": "hooked:slow"})).await.unwrap();
    assert_eq!(slow["code"], "unavailable", "{slow}");
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout cut the call short");
    let broken = alice.request(json!({"type": "subscribe", "channel": "hooked:broken"})).await.unwrap();
    assert_eq!(broken["code"], "unavailable", "{broken}");
    let published =
        alice.request(json!({"type": "publish", "channel": "hooked:ok", "data": 1})).await.unwrap();
    assert_eq!(published["type"], "published", "{published}");
    let refused = alice.request(json!({"type": "publish", "channel": "hooked:no", "data": 1})).await.unwrap();
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let at_connect = connect(&server, &jwt("alice", 60, json!({})), "&subscribe=hooked:no").await;
    assert_eq!(refusal(&at_connect.err().expect("connected")), (403, "forbidden".into()));
}

/// With `on_failure = "allow"`, a hook that times out lets the subscription through, and its
/// refusals still count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_can_be_configured_to_allow() {
    let (server, _app) = start("allow").await;
    let (mut alice, _) = connect(&server, &jwt("alice", 60, json!({})), "").await.unwrap();
    alice.subscribe("hooked:slow").await.unwrap();
    alice.subscribe("hooked:broken").await.unwrap();
    let no = alice.request(json!({"type": "subscribe", "channel": "hooked:no"})).await.unwrap();
    assert_eq!(no["code"], "forbidden", "{no}");
}

/// The application's hook as a gRPC service (`proto/herald/v1/hook.proto`), answering by
/// channel like [`application`].
struct GrpcApplication;

#[tonic::async_trait]
impl PermissionHook for GrpcApplication {
    async fn subscribe(
        &self,
        request: tonic::Request<HookRequest>,
    ) -> Result<tonic::Response<HookReply>, tonic::Status> {
        answer(request.into_inner()).await
    }

    async fn publish(
        &self,
        request: tonic::Request<HookRequest>,
    ) -> Result<tonic::Response<HookReply>, tonic::Status> {
        answer(request.into_inner()).await
    }
}

async fn answer(request: HookRequest) -> Result<tonic::Response<HookReply>, tonic::Status> {
    let allow =
        |allow: bool, reason: &str| Ok(tonic::Response::new(HookReply { allow, reason: reason.into() }));
    match request.channel.as_str() {
        "hooked:no" => allow(false, "not in this room"),
        "hooked:slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            allow(true, "")
        }
        "hooked:broken" => Err(tonic::Status::internal("broken")),
        _ => allow(true, ""),
    }
}

/// Over gRPC the hook allows, denies with its reason, and a call that times out or fails is
/// refused with `unavailable` (`on_failure = "deny"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_hook_allows_denies_and_fails_closed() {
    let port = herald_testkit::free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let _app = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PermissionHookServer::new(GrpcApplication))
            .serve(addr),
    );
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url: &'static str = Box::leak(format!("grpc://{addr}").into_boxed_str());
    let server = standalone(&[
        ("HERALD_NAMESPACES__HOOKED__SUBSCRIBE_HOOK", "true"),
        ("HERALD_NAMESPACES__HOOKED__PUBLISH_HOOK", "true"),
        ("HERALD_NAMESPACES__HOOKED__PUBLISH", "true"),
        ("HERALD_GATEWAY__HOOKS__URL", url),
        ("HERALD_GATEWAY__HOOKS__TIMEOUT", "300ms"),
    ]);
    let (mut alice, _) = connect(&server, &jwt("alice", 60, json!({})), "").await.unwrap();
    alice.subscribe("hooked:ok").await.unwrap();
    let no = alice.request(json!({"type": "subscribe", "channel": "hooked:no"})).await.unwrap();
    assert_eq!(no["code"], "forbidden", "{no}");
    assert!(no["message"].as_str().unwrap().contains("not in this room"), "{no}");
    for channel in ["hooked:slow", "hooked:broken"] {
        let failed = alice.request(json!({"type": "subscribe", "channel": channel})).await.unwrap();
        assert_eq!(failed["code"], "unavailable", "{channel}: {failed}");
    }
    let published =
        alice.request(json!({"type": "publish", "channel": "hooked:ok", "data": 1})).await.unwrap();
    assert_eq!(published["type"], "published", "{published}");
    let refused = alice.request(json!({"type": "publish", "channel": "hooked:no", "data": 1})).await.unwrap();
    assert_eq!(refused["code"], "forbidden", "{refused}");
}
