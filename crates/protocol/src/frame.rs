//! WebSocket frames: JSON text frames with a `type` field and an optional client-chosen `id`
//! that the server echoes in its reply.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::{ChannelName, InvalidName};
use crate::error::ErrorCode;
use crate::history::{MAX_EPOCH_LEN, Position, Since};
use crate::user::UserId;

/// A client-chosen request id, echoed in the reply: a string (at most 64 bytes) or an integer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    Num(u64),
    Str(String),
}

/// Longest string request id accepted.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// A frame sent by a client.
#[derive(Debug)]
pub enum ClientFrame {
    Subscribe {
        id: Option<RequestId>,
        channel: ChannelName,
        /// Resume after this position: the reply is followed by every message missed since,
        /// or says `recovered: false` with the reason. Only for channels with history.
        since: Option<Since>,
    },
    Unsubscribe {
        id: Option<RequestId>,
        channel: ChannelName,
    },
    Ping {
        id: Option<RequestId>,
    },
    /// Publish into a channel whose namespace allows client publishing (chat rooms).
    Publish {
        id: Option<RequestId>,
        channel: ChannelName,
        data: Box<RawValue>,
        event: Option<String>,
        /// A retry with the same key (within `history.idempotency_ttl`) publishes nothing and
        /// returns the first publish's result. Only for channels with history.
        idempotency_key: Option<String>,
    },
    /// Ask for the members of a channel the client is subscribed to.
    Presence {
        id: Option<RequestId>,
        channel: ChannelName,
    },
    /// Page through a channel's history (namespaces with `client_history`).
    History {
        id: Option<RequestId>,
        channel: ChannelName,
        /// Only messages after this position (which must still be fully kept).
        since: Option<Position>,
        /// At most this many messages; the server's `history.read_limit` when absent.
        limit: Option<usize>,
        /// Newest first.
        reverse: bool,
    },
    /// Everything up to `offset` of the personal channel is processed: stored per user,
    /// shared by all of the user's devices, never moved backwards.
    Ack {
        id: Option<RequestId>,
        channel: ChannelName,
        offset: u64,
        /// The epoch the offset belongs to; an ack of another epoch than the inbox's is
        /// refused.
        epoch: Option<String>,
    },
}

/// Why a client frame was refused. It carries the request id when one could be read, so the
/// error reply can still be matched to its request.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    pub id: Option<RequestId>,
    pub code: ErrorCode,
    pub message: String,
}

/// The loose shape every frame is read into first, so that each problem gets its own error:
/// not JSON at all, an unknown `type`, a missing field or a bad channel name.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    id: Option<RequestId>,
    #[serde(default, borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
    /// `null` is a value like any other here: only a missing `data` is refused.
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    since: Option<serde_json::Value>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    reverse: Option<bool>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
}

/// Reads a field that is present, `null` included (serde's `Option` would read `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl ClientFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        // serde reads a struct from a JSON array as well (`["ping"]`); a frame is an object.
        if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
            return Err(FrameError {
                id: None,
                code: ErrorCode::MalformedFrame,
                message: "frame is not a valid JSON object".into(),
            });
        }
        let raw: RawFrame = serde_json::from_str(text).map_err(|e| FrameError {
            id: None,
            code: ErrorCode::MalformedFrame,
            message: format!("frame is not a valid JSON object: {e}"),
        })?;
        let id = raw.id;
        if let Some(RequestId::Str(s)) = &id
            && s.len() > MAX_REQUEST_ID_LEN
        {
            return Err(FrameError {
                id: None,
                code: ErrorCode::MalformedFrame,
                message: format!("id is longer than {MAX_REQUEST_ID_LEN} bytes"),
            });
        }
        let err = |code, message: String| FrameError { id: id.clone(), code, message };
        let channel = || -> Result<ChannelName, FrameError> {
            let name = raw
                .channel
                .as_deref()
                .ok_or_else(|| err(ErrorCode::MalformedFrame, "missing field `channel`".into()))?;
            ChannelName::parse(name).map_err(|e: InvalidName| {
                err(ErrorCode::InvalidChannel, format!("invalid channel name {name:?}: {e}"))
            })
        };
        let Some(kind) = raw.kind.as_deref() else {
            return Err(err(ErrorCode::MalformedFrame, "missing field `type`".into()));
        };
        match kind {
            "subscribe" => {
                let since = raw
                    .since
                    .as_ref()
                    .filter(|v| !v.is_null())
                    .map(Since::from_json)
                    .transpose()
                    .map_err(|e| err(ErrorCode::MalformedFrame, format!("invalid `since`: {e}")))?;
                Ok(Self::Subscribe { channel: channel()?, id, since })
            }
            "history" => {
                let since = match raw.since.as_ref().filter(|v| !v.is_null()).map(Since::from_json) {
                    None => None,
                    Some(Ok(Since::Position(p))) => Some(p),
                    Some(Ok(Since::Acked)) | Some(Err(_)) => {
                        return Err(err(
                            ErrorCode::MalformedFrame,
                            "invalid `since`: expected {\"offset\": <integer>, \"epoch\": <string>}".into(),
                        ));
                    }
                };
                let reverse = raw.reverse.unwrap_or(false);
                Ok(Self::History { channel: channel()?, id, since, limit: raw.limit, reverse })
            }
            "ack" => {
                let channel = channel()?;
                let offset = raw
                    .offset
                    .ok_or_else(|| err(ErrorCode::MalformedFrame, "missing field `offset`".into()))?;
                if let Some(epoch) = &raw.epoch
                    && (epoch.is_empty() || epoch.len() > MAX_EPOCH_LEN)
                {
                    return Err(err(ErrorCode::MalformedFrame, "invalid `epoch`".into()));
                }
                Ok(Self::Ack { id, channel, offset, epoch: raw.epoch })
            }
            "unsubscribe" => Ok(Self::Unsubscribe { channel: channel()?, id }),
            "ping" => Ok(Self::Ping { id }),
            "presence" => Ok(Self::Presence { channel: channel()?, id }),
            "publish" => {
                let channel = channel()?;
                let data =
                    raw.data.ok_or_else(|| err(ErrorCode::MalformedFrame, "missing field `data`".into()))?;
                Ok(Self::Publish {
                    id,
                    channel,
                    data,
                    event: raw.event,
                    idempotency_key: raw.idempotency_key,
                })
            }
            other => Err(err(
                ErrorCode::UnknownType,
                format!(
                    "unknown frame type {other:?}; expected subscribe, unsubscribe, publish, presence, \
                     history, ack or ping"
                ),
            )),
        }
    }
}

/// A frame sent by the server, other than `message` (whose bytes are made once per message by
/// [`crate::Publication::encode`] and shared by every subscriber).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Connected {
        client_id: &'a str,
        user: &'a UserId,
        /// The channels asked for in the connect URL (`?subscribe=`), all live by now.
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        channels: &'a [ChannelName],
        /// Where each subscribed channel with history stands (those of the connect URL and
        /// the personal channel), and whether its `since` was recovered. Missed messages
        /// follow this frame.
        #[serde(skip_serializing_if = "<[_]>::is_empty", serialize_with = "as_map")]
        positions: &'a [(ChannelName, StreamState<'a>)],
        /// The personal channel's inbox, when the inbox is on.
        #[serde(skip_serializing_if = "Option::is_none")]
        inbox: Option<&'a InboxState<'a>>,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        channel: &'a ChannelName,
        /// For a channel with history: where it stands, and whether `since` was recovered.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        state: Option<&'a StreamState<'a>>,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        channel: &'a ChannelName,
    },
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        channel: &'a ChannelName,
        message_id: &'a str,
        /// For a channel with history: the message's offset and the channel's epoch.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        /// The idempotency key was seen before: nothing was published now, and this is the
        /// first publish's result.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        deduplicated: bool,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        channel: &'a ChannelName,
        members: &'a RawValue,
    },
    /// A page of history: `publications` holds message frames as subscribers received them.
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        channel: &'a ChannelName,
        /// The channel's top: the offset of its last message, and its epoch.
        offset: u64,
        epoch: &'a str,
        publications: &'a RawValue,
    },
    /// The acknowledged position of the personal channel now (never lower than before).
    Acked {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        channel: &'a ChannelName,
        offset: u64,
        epoch: &'a str,
    },
    /// Messages of a subscribed channel with history were lost and cannot be recovered (the
    /// history expired, was trimmed, or a Redis without persistence restarted): the client
    /// should reload its state. The stream goes on after `offset` of `epoch`.
    Reset { channel: &'a ChannelName, reason: &'a str, offset: u64, epoch: &'a str },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        code: ErrorCode,
        message: &'a str,
    },
}

/// Where a channel with history stands for one subscriber: `offset` and `epoch` of the last
/// message before its live stream, and, when it asked to resume, whether that worked.
#[derive(Debug, Clone, Serialize)]
pub struct StreamState<'a> {
    pub offset: u64,
    pub epoch: &'a str,
    /// Present when the subscription gave `since`: `true` when every missed message follows,
    /// `false` (with `reason`) when they cannot be recovered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Why recovery failed: `epoch_changed`, `position_too_old` or `position_ahead`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// The offline inbox of a connecting user.
#[derive(Debug, Clone, Serialize)]
pub struct InboxState<'a> {
    /// The offset of the newest notification, and the inbox's epoch.
    pub offset: u64,
    pub epoch: &'a str,
    /// Everything up to here is acknowledged (0: nothing of this epoch).
    pub acked: u64,
    /// Notifications after `acked` still kept.
    pub unread: u64,
}

fn as_map<S: serde::Serializer>(
    entries: &&[(ChannelName, StreamState<'_>)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(entries.iter().map(|(channel, state)| (channel.as_str(), state)))
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// How deeply arrays and objects nest in `json`, which must be valid JSON: `0` for a scalar,
/// `1` for `[1]` or `{"a":1}`, `2` for `[[1]]`. Brackets inside strings do not count. For
/// limiting the depth of client `data`, which is passed on untouched and parsed again by
/// every subscriber.
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#""[[[""#), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(r#"["\"[", [2]]"#), 2);
        assert_eq!(json_depth(&format!("{}{}", "[".repeat(100), "]".repeat(100))), 100);
    }

    fn code(text: &str) -> ErrorCode {
        ClientFrame::parse(text).unwrap_err().code
    }

    #[test]
    fn known_frames_parse() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"subscribe","id":1,"channel":"chat:a"}"#).unwrap(),
            ClientFrame::Subscribe { id: Some(RequestId::Num(1)), .. }
        ));
        assert!(matches!(ClientFrame::parse(r#"{"type":"ping"}"#).unwrap(), ClientFrame::Ping { id: None }));
        let ClientFrame::Publish { data, .. } =
            ClientFrame::parse(r#"{"type":"publish","id":"x","channel":"chat:a","data":{"t":"hi"}}"#)
                .unwrap()
        else {
            panic!("not a publish")
        };
        assert_eq!(data.get(), r#"{"t":"hi"}"#);
        let ClientFrame::Publish { data, .. } =
            ClientFrame::parse(r#"{"type":"publish","channel":"chat:a","data":null}"#).unwrap()
        else {
            panic!("not a publish")
        };
        assert_eq!(data.get(), "null");
    }

    #[test]
    fn recovery_frames_parse() {
        let ClientFrame::Subscribe { since, .. } = ClientFrame::parse(
            r#"{"type":"subscribe","channel":"chat:a","since":{"offset":4,"epoch":"e1"}}"#,
        )
        .unwrap() else {
            panic!("not a subscribe")
        };
        assert_eq!(since, Some(Since::Position(Position { offset: 4, epoch: "e1".into() })));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"subscribe","channel":"user:bob","since":"acked"}"#).unwrap(),
            ClientFrame::Subscribe { since: Some(Since::Acked), .. }
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"history","channel":"chat:a","limit":10,"reverse":true}"#).unwrap(),
            ClientFrame::History { limit: Some(10), reverse: true, since: None, .. }
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ack","channel":"user:bob","offset":30}"#).unwrap(),
            ClientFrame::Ack { offset: 30, epoch: None, .. }
        ));
        assert_eq!(code(r#"{"type":"ack","channel":"user:bob"}"#), ErrorCode::MalformedFrame);
        assert_eq!(
            code(r#"{"type":"subscribe","channel":"a","since":{"offset":-1,"epoch":"e"}}"#),
            ErrorCode::MalformedFrame
        );
        assert_eq!(code(r#"{"type":"history","channel":"a","since":"acked"}"#), ErrorCode::MalformedFrame);
    }

    #[test]
    fn each_problem_has_its_own_code_and_keeps_the_id() {
        assert_eq!(code("not json"), ErrorCode::MalformedFrame);
        assert_eq!(code("[1,2]"), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"["ping"]"#), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"["subscribe",null,"chat:a"]"#), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"{"id":3}"#), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"{"type":"publish","channel":"a"}"#), ErrorCode::MalformedFrame);
        let e = ClientFrame::parse(r#"{"type":"subscribe","id":"r1","channel":"bad name"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidChannel);
        assert_eq!(e.id, Some(RequestId::Str("r1".into())));
    }

    #[test]
    fn server_frames_have_the_documented_shape() {
        let ch = ChannelName::parse("chat:a").unwrap();
        let id = RequestId::Num(7);
        assert_eq!(
            ServerFrame::Subscribed { id: Some(&id), channel: &ch, state: None }.to_json(),
            r#"{"type":"subscribed","id":7,"channel":"chat:a"}"#
        );
        let state =
            StreamState { offset: 3, epoch: "e", recovered: Some(false), reason: Some("epoch_changed") };
        assert_eq!(
            ServerFrame::Subscribed { id: None, channel: &ch, state: Some(&state) }.to_json(),
            r#"{"type":"subscribed","channel":"chat:a","offset":3,"epoch":"e","recovered":false,"reason":"epoch_changed"}"#
        );
        let user = UserId::parse("bob").unwrap();
        let positions =
            [(ch.clone(), StreamState { offset: 3, epoch: "e", recovered: Some(true), reason: None })];
        let inbox = InboxState { offset: 50, epoch: "i", acked: 30, unread: 20 };
        assert_eq!(
            ServerFrame::Connected {
                client_id: "c",
                user: &user,
                channels: &[],
                positions: &positions,
                inbox: Some(&inbox)
            }
            .to_json(),
            r#"{"type":"connected","client_id":"c","user":"bob","positions":{"chat:a":{"offset":3,"epoch":"e","recovered":true}},"inbox":{"offset":50,"epoch":"i","acked":30,"unread":20}}"#
        );
        assert_eq!(
            ServerFrame::Error { id: None, code: ErrorCode::Forbidden, message: "no" }.to_json(),
            r#"{"type":"error","code":"forbidden","message":"no"}"#
        );
    }
}
