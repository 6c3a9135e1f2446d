//! The gRPC API over the wire, with the generated client.

use herald_publisher_api::pb;
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{MAX_BATCH, MAX_MESSAGE_SIZE, assert_message, authed, spawn_app, with_key};

/// A request with `key` as its bearer key, or without `authorization` metadata.
fn keyed<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    match key {
        Some(key) => with_key(message, key),
        None => tonic::Request::new(message),
    }
}

fn message(channel: &str, data: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        channel: channel.into(),
        data: data.as_bytes().to_vec(),
        event: None,
        idempotency_key: None,
    }
}

/// `Publish` sends one message frame carrying the returned id, the data and the event.
#[tokio::test]
async fn publish_sends_one_encoded_message_frame() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let request =
        pb::PublishRequest { event: Some("say".into()), ..message("chat:lobby", r#"{"text": "hi"}"#) };
    let id = client.publish(authed(request)).await.unwrap().into_inner().id;
    let got = app.received(1).await;
    assert_eq!(got[0].0, "chat:lobby");
    assert_message(&got[0].1, "chat:lobby", &id, &json!({"text": "hi"}), Some("say"));
    let (_, payload) = &app.got.wait_for(1).await[0];
    assert!(
        std::str::from_utf8(payload).unwrap().ends_with(r#""data":{"text": "hi"}}"#),
        "data kept byte for byte"
    );
}

/// `PublishBatch` publishes in order and returns the ids in the same order.
#[tokio::test]
async fn publish_batch_keeps_order_and_ids() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let messages: Vec<pb::PublishRequest> = (0..MAX_BATCH)
        .map(|i| message(if i % 2 == 0 { "chat:lobby" } else { "chat:other" }, &i.to_string()))
        .collect();
    let ids =
        client.publish_batch(authed(pb::PublishBatchRequest { messages: messages.clone() })).await.unwrap();
    let ids = ids.into_inner().ids;
    assert_eq!(ids.len(), MAX_BATCH);
    let got = app.received(MAX_BATCH).await;
    for (i, (channel, frame)) in got.iter().enumerate() {
        assert_eq!(channel, &messages[i].channel);
        assert_message(frame, channel, &ids[i], &json!(i), None);
    }
}

/// `Broadcast` publishes to the `broadcast` channel and `Notify` to the user's channel.
#[tokio::test]
async fn broadcast_and_notify_reach_their_channels() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let request = pb::BroadcastRequest { data: br#""hello all""#.to_vec(), event: Some("notice".into()) };
    let broadcast = client.broadcast(authed(request)).await.unwrap().into_inner().id;
    let request = pb::NotifyRequest {
        user: "alice".into(),
        data: br#"{"unread": 3}"#.to_vec(),
        event: None,
        idempotency_key: None,
    };
    let notify = client.notify(authed(request)).await.unwrap().into_inner().id;
    let got = app.received(2).await;
    assert_message(&got[0].1, "broadcast", &broadcast, &json!("hello all"), Some("notice"));
    assert_message(&got[1].1, "user:alice", &notify, &json!({"unread": 3}), None);
}

/// Every rpc answers UNAUTHENTICATED without a key or with a wrong one, and publishes nothing.
#[tokio::test]
async fn calls_without_a_valid_key_are_unauthenticated() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    for key in [None, Some("wrong-key-0123456789"), Some("")] {
        let status = client.publish(keyed(message("chat:lobby", "1"), key)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let batch = pb::PublishBatchRequest { messages: vec![message("chat:lobby", "1")] };
        assert_eq!(client.publish_batch(keyed(batch, key)).await.unwrap_err().code(), Code::Unauthenticated);
        let broadcast = pb::BroadcastRequest { data: b"1".to_vec(), event: None };
        assert_eq!(client.broadcast(keyed(broadcast, key)).await.unwrap_err().code(), Code::Unauthenticated);
        let notify = pb::NotifyRequest {
            user: "alice".into(),
            data: b"1".to_vec(),
            event: None,
            idempotency_key: None,
        };
        assert_eq!(client.notify(keyed(notify, key)).await.unwrap_err().code(), Code::Unauthenticated);
    }
    assert!(app.settled().await.is_empty(), "an unauthenticated call was published");
}

/// The key is checked before the message is read: a keyless call with a message far over the
/// size limit is UNAUTHENTICATED, not a decoding error.
#[tokio::test]
async fn the_key_is_checked_before_the_message_is_decoded() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let huge = format!("\"{}\"", "x".repeat(1024 * 1024));
    let status = client.publish(tonic::Request::new(message("chat:lobby", &huge))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = client.publish(authed(message("chat:lobby", &huge))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with("message: "), "{}", status.message());
    assert!(app.settled().await.is_empty());
}

/// `data` that is missing or not JSON, bad channel names and bad user ids are INVALID_ARGUMENT;
/// unconfigured namespaces are NOT_FOUND.
#[tokio::test]
async fn invalid_requests_are_refused_with_the_shared_codes() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let cases = [
        (message("chat:lobby", "{not json"), Code::InvalidArgument, "data: is not valid JSON"),
        (message("chat:lobby", ""), Code::InvalidArgument, "data: is required"),
        (message("chat lobby", "1"), Code::InvalidArgument, "channel: invalid channel name"),
        (message("news:today", "1"), Code::NotFound, "channel: namespace \"news\""),
        (
            pb::PublishRequest { event: Some(String::new()), ..message("chat:lobby", "1") },
            Code::InvalidArgument,
            "event: ",
        ),
    ];
    for (request, code, prefix) in cases {
        let status = client.publish(authed(request)).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().starts_with(prefix), "{:?} should start with {prefix:?}", status.message());
    }
    let request =
        pb::NotifyRequest { user: "a b".into(), data: b"1".to_vec(), event: None, idempotency_key: None };
    let status = client.notify(authed(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("user: invalid user id"), "{}", status.message());
    assert!(app.settled().await.is_empty());
}

/// Data over `max_message_size` and batches over `max_batch` or empty are RESOURCE_EXHAUSTED.
#[tokio::test]
async fn oversized_data_and_batches_are_resource_exhausted() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let big = format!("\"{}\"", "x".repeat(MAX_MESSAGE_SIZE));
    let status = client.publish(authed(message("chat:lobby", &big))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().starts_with("data: "), "{}", status.message());
    let messages = vec![message("chat:lobby", "1"); MAX_BATCH + 1];
    let status = client.publish_batch(authed(pb::PublishBatchRequest { messages })).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let status =
        client.publish_batch(authed(pb::PublishBatchRequest { messages: vec![] })).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(app.settled().await.is_empty());
}

/// One invalid entry refuses the whole batch, the status names its index, nothing is published.
#[tokio::test]
async fn a_batch_is_all_or_nothing_and_errors_name_the_entry() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let mut messages = vec![message("chat:lobby", "1"); 4];
    messages[2] = message("chat:lobby", "not json");
    let status = client
        .publish_batch(authed(pb::PublishBatchRequest { messages: messages.clone() }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("messages[2].data: "), "{}", status.message());
    messages[2] = message("news:x", "1");
    let status = client.publish_batch(authed(pb::PublishBatchRequest { messages })).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().starts_with("messages[2].channel: "), "{}", status.message());
    let got: Vec<(String, Value)> = app.settled().await;
    assert!(got.is_empty(), "part of a refused batch was published");
}

/// Sends request bytes as they are and reads nothing back: a malformed message on the wire.
#[derive(Clone, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        bytes::Buf::advance(src, bytes::Buf::remaining(src));
        Ok(Some(()))
    }
}

/// Issue 23, finding 8: a message that is not valid protobuf is INVALID_ARGUMENT (it was
/// INTERNAL, "a server bug"), and one over the message size limit is RESOURCE_EXHAUSTED (it was
/// OUT_OF_RANGE); neither publishes anything.
#[tokio::test]
async fn malformed_and_oversized_messages_get_documented_codes() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/herald.v1.Publisher/Publish");
    // Field 1 (`channel`, a string) with bytes that are not UTF-8; then a length past the end.
    for malformed in [vec![0x0a, 0x02, 0xff, 0xfe], vec![0x0a, 0xff, 0xff, 0xff, 0x0f]] {
        raw.ready().await.unwrap();
        let status = raw.unary(authed(malformed), path.clone(), RawCodec).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("could not be decoded"), "{}", status.message());
    }
    let mut client = app.grpc_client().await;
    let huge = format!("\"{}\"", "x".repeat(crate::helpers::MAX_BATCH_BODY));
    let batch = pb::PublishBatchRequest { messages: vec![message("chat:lobby", &huge)] };
    let status = client.publish_batch(authed(batch)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{}", status.message());
    assert!(app.settled().await.is_empty());
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"outcome="malformed_frame""#), "{metrics}");
    assert!(metrics.contains(r#"limit="body_size""#), "{metrics}");
}

/// Over gRPC as over HTTP: publishes on a channel with history answer offset and epoch, a
/// retried idempotency key is deduplicated (in `Publish`, `PublishBatch` and `Notify`), and
/// `History` and `Inbox` return the stored frames; refusals carry their documented codes.
#[tokio::test]
async fn history_fields_and_reads_over_grpc() {
    let app = spawn_app().await;
    let mut client = app.grpc_client().await;
    let keyed_message = |data: &str, key: &str| pb::PublishRequest {
        idempotency_key: Some(key.into()),
        ..message("log:a", &format!("{{\"v\":{data:?}}}"))
    };
    let first = client.publish(authed(keyed_message("a", "k1"))).await.unwrap().into_inner();
    assert_eq!((first.offset, first.deduplicated), (Some(1), false));
    let epoch = first.epoch.clone().expect("an epoch");
    let again = client.publish(authed(keyed_message("b", "k1"))).await.unwrap().into_inner();
    assert_eq!(again, pb::PublishReply { deduplicated: true, ..first.clone() });
    let plain = client.publish(authed(message("chat:lobby", "1"))).await.unwrap().into_inner();
    assert_eq!((plain.offset, plain.epoch, plain.deduplicated), (None, None, false));

    let batch = vec![keyed_message("c", "k1"), message("chat:lobby", "2"), keyed_message("d", "k2")];
    let reply = client.publish_batch(authed(pb::PublishBatchRequest { messages: batch })).await.unwrap();
    let reply = reply.into_inner();
    assert_eq!(reply.results.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), reply.ids);
    assert_eq!(
        reply.results.iter().map(|r| (r.offset, r.deduplicated)).collect::<Vec<_>>(),
        [(Some(1), true), (None, false), (Some(2), false)]
    );
    let notify = pb::NotifyRequest {
        user: "alice".into(),
        data: b"{\"n\":1}".to_vec(),
        event: None,
        idempotency_key: Some("n1".into()),
    };
    let first_notify = client.notify(authed(notify.clone())).await.unwrap().into_inner();
    let second_notify = client.notify(authed(notify)).await.unwrap().into_inner();
    assert_eq!((second_notify.id, second_notify.deduplicated), (first_notify.id, true));

    let read = pb::HistoryRequest { channel: "log:a".into(), limit: None, reverse: true, since: None };
    let page = client.history(authed(read.clone())).await.unwrap().into_inner();
    assert_eq!((page.offset, page.epoch.as_str()), (2, epoch.as_str()));
    let frames: Vec<Value> = page.publications.iter().map(|p| serde_json::from_slice(p).unwrap()).collect();
    assert_eq!(
        frames.iter().map(|f| (f["offset"].as_u64(), f["data"]["v"].as_str())).collect::<Vec<_>>(),
        [(Some(2), Some("d")), (Some(1), Some("a"))]
    );
    let since = Some(pb::Position { offset: 1, epoch: epoch.clone() });
    let after = client.history(authed(pb::HistoryRequest { since, reverse: false, ..read.clone() })).await;
    assert_eq!(after.unwrap().into_inner().publications.len(), 1);
    let lost = Some(pb::Position { offset: 1, epoch: "Other1".into() });
    let status =
        client.history(authed(pb::HistoryRequest { since: lost, ..read.clone() })).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("epoch_changed"), "{}", status.message());
    let over = client.history(authed(pb::HistoryRequest { limit: Some(1001), ..read.clone() })).await;
    assert_eq!(over.unwrap_err().code(), Code::InvalidArgument);
    let none =
        client.history(authed(pb::HistoryRequest { channel: "chat:lobby".into(), ..read.clone() })).await;
    assert_eq!(none.unwrap_err().code(), Code::FailedPrecondition);
    let keyed_plain = pb::PublishRequest { idempotency_key: Some("k".into()), ..message("chat:lobby", "1") };
    assert_eq!(client.publish(authed(keyed_plain)).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(client.history(tonic::Request::new(read)).await.unwrap_err().code(), Code::Unauthenticated);

    let inbox = client.inbox(authed(pb::InboxRequest { user: "alice".into(), limit: Some(10) })).await;
    let inbox = inbox.unwrap().into_inner();
    assert_eq!((inbox.offset, inbox.acked, inbox.unread, inbox.publications.len()), (1, 0, 1, 1));
    let frame: Value = serde_json::from_slice(&inbox.publications[0]).unwrap();
    assert_eq!((frame["channel"].as_str(), frame["data"]["n"].as_u64()), (Some("user:alice"), Some(1)));
    let bad = client.inbox(authed(pb::InboxRequest { user: "a b".into(), limit: None })).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
}
