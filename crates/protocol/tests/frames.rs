//! Round trips of the WebSocket frames, on generated frames: a client frame encoded as
//! `docs/protocol.md` documents decodes to the same frame; a server frame decodes, with the
//! documented field names, to what it was made of; and no text makes the client frame decoder
//! panic.

use herald_protocol::{ChannelName, ClientFrame, ErrorCode, RequestId, ServerFrame, UserId};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

fn channel() -> impl Strategy<Value = ChannelName> {
    "[A-Za-z0-9_.@=-]{1,12}(:[A-Za-z0-9_.:@=-]{0,40})?".prop_map(|s| ChannelName::parse(&s).unwrap())
}

fn request_id() -> impl Strategy<Value = Option<RequestId>> {
    // At most 16 characters of up to 4 bytes: within the 64-byte limit.
    proptest::option::of(prop_oneof![
        any::<u64>().prop_map(RequestId::Num),
        "\\PC{0,16}".prop_map(RequestId::Str),
    ])
}

/// Any JSON value; numbers are integers so that values compare exactly after a round trip.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,8}", inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A client frame as plain parts: what it is made of, and what decoding must give back.
#[derive(Debug, Clone, PartialEq)]
struct Parts {
    kind: &'static str,
    id: Option<RequestId>,
    channel: Option<ChannelName>,
    /// `data` as the text the client sent.
    data: Option<String>,
    event: Option<String>,
}

fn client_parts() -> impl Strategy<Value = Parts> {
    let bare = |kind: &'static str| {
        (request_id(), channel()).prop_map(move |(id, channel)| Parts {
            kind,
            id,
            channel: Some(channel),
            data: None,
            event: None,
        })
    };
    prop_oneof![
        bare("subscribe"),
        bare("unsubscribe"),
        bare("presence"),
        request_id().prop_map(|id| Parts { kind: "ping", id, channel: None, data: None, event: None }),
        (request_id(), channel(), json_value(), proptest::option::of("[a-z.]{1,20}")).prop_map(
            |(id, channel, data, event)| Parts {
                kind: "publish",
                id,
                channel: Some(channel),
                data: Some(data.to_string()),
                event,
            }
        ),
    ]
}

/// The frame as a client writes it.
fn encode(parts: &Parts) -> String {
    let mut frame = Map::new();
    frame.insert("type".into(), json!(parts.kind));
    if let Some(id) = &parts.id {
        frame.insert("id".into(), json!(id));
    }
    if let Some(channel) = &parts.channel {
        frame.insert("channel".into(), json!(channel));
    }
    if let Some(data) = &parts.data {
        frame.insert("data".into(), serde_json::from_str(data).unwrap());
    }
    if let Some(event) = &parts.event {
        frame.insert("event".into(), json!(event));
    }
    Value::Object(frame).to_string()
}

fn decoded(frame: ClientFrame) -> Parts {
    let bare = |kind, id, channel| Parts { kind, id, channel: Some(channel), data: None, event: None };
    match frame {
        ClientFrame::Subscribe { id, channel, .. } => bare("subscribe", id, channel),
        ClientFrame::Unsubscribe { id, channel } => bare("unsubscribe", id, channel),
        ClientFrame::Presence { id, channel } => bare("presence", id, channel),
        ClientFrame::Ping { id } => Parts { kind: "ping", id, channel: None, data: None, event: None },
        ClientFrame::Publish { id, channel, data, event, .. } => {
            Parts { data: Some(data.get().to_string()), event, ..bare("publish", id, channel) }
        }
        ClientFrame::History { .. }
        | ClientFrame::Ack { .. }
        | ClientFrame::Refresh { .. }
        | ClientFrame::SubscribeRefresh { .. }
        | ClientFrame::SubscribePattern { .. }
        | ClientFrame::UnsubscribePattern { .. } => unreachable!("not generated"),
    }
}

/// A server frame as a client reads it, field names as documented.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Read {
    Connected {
        client_id: String,
        user: String,
        #[serde(default)]
        channels: Vec<String>,
    },
    Subscribed {
        id: Option<RequestId>,
        channel: String,
    },
    Unsubscribed {
        id: Option<RequestId>,
        channel: String,
    },
    Published {
        id: Option<RequestId>,
        channel: String,
        message_id: String,
    },
    Pong {
        id: Option<RequestId>,
    },
    Presence {
        id: Option<RequestId>,
        channel: String,
        members: Value,
    },
    Error {
        id: Option<RequestId>,
        code: String,
        message: String,
    },
}

/// The owned parts of any server frame, from which the borrowed `ServerFrame` is made.
#[derive(Debug, Clone)]
struct ServerParts {
    variant: usize,
    id: Option<RequestId>,
    channel: ChannelName,
    channels: Vec<ChannelName>,
    user: UserId,
    text: String,
    members: Value,
    code: ErrorCode,
}

fn server_parts() -> impl Strategy<Value = ServerParts> {
    (
        0..7usize,
        request_id(),
        channel(),
        prop::collection::vec(channel(), 0..4),
        "[A-Za-z0-9_.:@=-]{1,20}".prop_map(|u| UserId::parse(&u).unwrap()),
        "\\PC{0,40}",
        json_value(),
        prop::sample::select(ErrorCode::ALL.to_vec()),
    )
        .prop_map(|(variant, id, channel, channels, user, text, members, code)| ServerParts {
            variant,
            id,
            channel,
            channels,
            user,
            text,
            members,
            code,
        })
}

/// Encodes the frame `p` describes and says what a client must read from it.
fn server_round_trip(p: &ServerParts) -> (String, Read) {
    let id = p.id.as_ref();
    let members = RawValue::from_string(p.members.to_string()).unwrap();
    let (frame, read) = match p.variant {
        0 => (
            ServerFrame::Connected {
                client_id: &p.text,
                user: &p.user,
                channels: &p.channels,
                positions: &[],
                inbox: None,
            },
            Read::Connected {
                client_id: p.text.clone(),
                user: p.user.to_string(),
                channels: p.channels.iter().map(ToString::to_string).collect(),
            },
        ),
        1 => (
            ServerFrame::Subscribed { id, channel: &p.channel, state: None, expires_at: None },
            Read::Subscribed { id: p.id.clone(), channel: p.channel.to_string() },
        ),
        2 => (
            ServerFrame::Unsubscribed { id, channel: &p.channel, reason: None },
            Read::Unsubscribed { id: p.id.clone(), channel: p.channel.to_string() },
        ),
        3 => (
            ServerFrame::Published {
                id,
                channel: &p.channel,
                message_id: &p.text,
                offset: None,
                epoch: None,
                deduplicated: false,
            },
            Read::Published { id: p.id.clone(), channel: p.channel.to_string(), message_id: p.text.clone() },
        ),
        4 => (ServerFrame::Pong { id }, Read::Pong { id: p.id.clone() }),
        5 => (
            ServerFrame::Presence { id, channel: &p.channel, members: &members },
            Read::Presence { id: p.id.clone(), channel: p.channel.to_string(), members: p.members.clone() },
        ),
        _ => (
            ServerFrame::Error { id, code: p.code, message: &p.text },
            Read::Error { id: p.id.clone(), code: code_name(p.code), message: p.text.clone() },
        ),
    };
    (frame.to_json(), read)
}

/// The documented code string: the variant name in snake_case.
fn code_name(code: ErrorCode) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
        } else {
            name.push(c);
        }
    }
    name
}

proptest! {
    /// A client frame written as documented decodes to the frame it was made from.
    #[test]
    fn client_frames_round_trip(parts in client_parts()) {
        let text = encode(&parts);
        let frame = ClientFrame::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(decoded(frame), parts);
    }

    /// Whitespace between the tokens of a frame changes nothing, and `data` is kept as sent.
    #[test]
    fn client_frames_ignore_whitespace(parts in client_parts(), pad in "[ \t\r\n]{0,3}") {
        let value: Value = serde_json::from_str(&encode(&parts)).unwrap();
        let text = format!("{pad}{}{pad}", serde_json::to_string_pretty(&value).unwrap());
        let frame = ClientFrame::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let mut got = decoded(frame);
        if let Some(data) = got.data.take() {
            prop_assert!(text.contains(&data), "data {data:?} is not the text sent");
            got.data = Some(serde_json::from_str::<Value>(&data).unwrap().to_string());
        }
        prop_assert_eq!(got, parts);
    }

    /// A server frame reads back, with the documented field names, as what it was made of.
    #[test]
    fn server_frames_round_trip(parts in server_parts()) {
        let (json, expected) = server_round_trip(&parts);
        let read: Read = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
        prop_assert_eq!(read, expected);
    }

    /// No text makes the decoder panic; every refusal has a frame error code and a message.
    #[test]
    fn any_text_is_decoded_or_refused(text in prop_oneof![
        "\\PC{0,64}",
        "[{}\\[\\]\":,. a-z0-9\\\\-]{0,64}",
        client_parts().prop_flat_map(|p| {
            let text = encode(&p);
            (0..=text.len()).prop_map(move |cut| String::from_utf8_lossy(&text.as_bytes()[..cut]).into_owned())
        }),
    ]) {
        if let Err(e) = ClientFrame::parse(&text) {
            prop_assert!(matches!(
                e.code,
                ErrorCode::MalformedFrame | ErrorCode::UnknownType | ErrorCode::InvalidChannel
            ));
            prop_assert!(!e.message.is_empty());
        }
    }

    /// Arbitrary bytes, read as text the way a gateway reads a frame, never panic the decoder.
    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = ClientFrame::parse(text);
        }
        let _ = ClientFrame::parse(&String::from_utf8_lossy(&bytes));
    }
}
