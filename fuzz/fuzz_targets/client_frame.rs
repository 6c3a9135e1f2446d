//! The client frame decoder (`ClientFrame::parse`), fed arbitrary text.
//!
//! Properties: it never panics; a frame it accepts came from a JSON object whose `type` and
//! `channel` are the ones decoded; re-encoding an accepted frame in the documented shape and
//! decoding that gives the same frame, `data` byte for byte; a refusal carries one of the
//! frame codes, a message, and never an over-long request id.
#![no_main]

use herald_protocol::frame::MAX_REQUEST_ID_LEN;
use herald_protocol::{ChannelName, ClientFrame, ErrorCode, RequestId};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ClientFrame::parse(text) {
        Ok(frame) => {
            let shape = Shape::of(&frame);
            let start = text.trim_start_matches([' ', '\t', '\n', '\r']);
            assert!(start.starts_with('{'), "accepted a frame that is not a JSON object: {text:?}");
            if shape.kind == "other" {
                return;
            }
            // `serde_json::Value` refuses some texts the JSON grammar allows and `data` passes
            // through untouched (`\u` escapes of lone surrogates, numbers beyond f64); such
            // frames must still have the grammar, but skip this comparison.
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(object)) => {
                    assert_eq!(object.get("type").and_then(Value::as_str), Some(shape.kind));
                    if let Some(channel) = &shape.channel {
                        assert_eq!(object.get("channel").and_then(Value::as_str), Some(channel.as_str()));
                    }
                }
                Ok(other) => panic!("accepted a frame that is not a JSON object: {other}"),
                Err(_) => {
                    assert!(serde_json::from_str::<IgnoredAny>(text).is_ok(), "accepted {text:?}, not JSON");
                }
            }
            if let Some(RequestId::Str(id)) = &shape.id {
                assert!(id.len() <= MAX_REQUEST_ID_LEN, "accepted an id of {} bytes", id.len());
            }
            let encoded = encode(&shape);
            let again = ClientFrame::parse(&encoded)
                .unwrap_or_else(|e| panic!("re-encoded frame {encoded:?} was refused: {e}"));
            assert_eq!(shape, Shape::of(&again), "re-encoded as {encoded:?}");
        }
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::MalformedFrame | ErrorCode::UnknownType | ErrorCode::InvalidChannel
                ),
                "unexpected code {:?}",
                e.code
            );
            assert!(!e.message.is_empty());
            if let Some(RequestId::Str(id)) = &e.id {
                assert!(id.len() <= MAX_REQUEST_ID_LEN, "echoed an id of {} bytes", id.len());
            }
        }
    }
});

/// Everything a decoded frame says, in a comparable form.
#[derive(Debug, PartialEq)]
struct Shape<'a> {
    kind: &'static str,
    id: Option<RequestId>,
    channel: Option<ChannelName>,
    /// The text of `data`, exactly as the client sent it.
    data: Option<&'a str>,
    event: Option<&'a str>,
    /// A subscription or connection token (`subscribe`, `subscribe_refresh`, `refresh`).
    token: Option<&'a str>,
}

impl<'a> Shape<'a> {
    fn of(frame: &'a ClientFrame) -> Self {
        let bare = |kind, id: &Option<RequestId>, channel: Option<&ChannelName>| Shape {
            kind,
            id: id.clone(),
            channel: channel.cloned(),
            data: None,
            event: None,
            token: None,
        };
        match frame {
            ClientFrame::Subscribe { id, channel, since: None, token } => {
                Shape { token: token.as_deref(), ..bare("subscribe", id, Some(channel)) }
            }
            ClientFrame::SubscribeRefresh { id, channel, token } => {
                Shape { token: Some(token), ..bare("subscribe_refresh", id, Some(channel)) }
            }
            ClientFrame::Refresh { id, token } => Shape { token: Some(token), ..bare("refresh", id, None) },
            ClientFrame::Unsubscribe { id, channel } => bare("unsubscribe", id, Some(channel)),
            ClientFrame::Presence { id, channel } => bare("presence", id, Some(channel)),
            ClientFrame::Ping { id } => bare("ping", id, None),
            ClientFrame::Publish { id, channel, data, event, idempotency_key: None } => Shape {
                data: Some(data.get()),
                event: event.as_deref(),
                ..bare("publish", id, Some(channel))
            },
            // Recovery fields are not round-tripped here (the protocol crate's tests cover
            // them): a frame carrying them is checked only for parsing without a panic (and
            // for being a JSON object).
            _ => bare("other", &None, None),
        }
    }
}

/// The frame in the shape `docs/protocol.md` documents for clients.
fn encode(shape: &Shape<'_>) -> String {
    #[derive(Serialize)]
    struct Wire<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a ChannelName>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
    }
    serde_json::to_string(&Wire {
        kind: shape.kind,
        id: shape.id.as_ref(),
        channel: shape.channel.as_ref(),
        data: shape.data.map(|d| serde_json::from_str(d).expect("data was read as JSON")),
        event: shape.event,
        token: shape.token,
    })
    .expect("frames serialize")
}
