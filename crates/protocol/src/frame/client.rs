//! Frames a client sends: [`ClientFrame`], read from a JSON text frame through a loose shape
//! so that each problem gets its own error code.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{FrameError, MAX_REQUEST_ID_LEN, RequestId};
use crate::channel::{ChannelName, InvalidName};
use crate::error::ErrorCode;
use crate::history::{MAX_EPOCH_LEN, Position, Since};
use crate::pattern::{ChannelPattern, InvalidPattern};

/// A frame sent by a client.
#[derive(Debug)]
pub enum ClientFrame {
    Subscribe {
        id: Option<RequestId>,
        channel: ChannelName,
        /// Resume after this position: the reply is followed by every message missed since,
        /// or says `recovered: false` with the reason. Only for channels with history.
        since: Option<Since>,
        /// A subscription token (a JWT with a `channel` claim) for a channel of a private
        /// namespace that the connection token's `channels` claim does not cover.
        token: Option<String>,
    },
    /// A pattern subscription (`pattern` instead of `channel`): the messages of every channel
    /// the glob matches, in a namespace with `patterns = true`.
    SubscribePattern {
        id: Option<RequestId>,
        pattern: ChannelPattern,
        /// Whether the frame asked for recovery (`since`) or brought a subscription token:
        /// neither applies to a pattern, and the reply says so.
        since: bool,
        token: bool,
    },
    /// Ends a pattern subscription.
    UnsubscribePattern {
        id: Option<RequestId>,
        pattern: ChannelPattern,
    },
    /// A fresh subscription token for a channel the client holds through an earlier one, before
    /// that one expires; the subscription goes on unbroken.
    SubscribeRefresh {
        id: Option<RequestId>,
        channel: ChannelName,
        token: String,
    },
    /// A fresh connection token for the same user, before the current one expires: the
    /// connection goes on under the new token's expiry, `info` and `channels`.
    Refresh {
        id: Option<RequestId>,
        token: String,
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
    #[serde(default, borrow)]
    pattern: Option<std::borrow::Cow<'a, str>>,
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
    #[serde(default)]
    token: Option<String>,
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
        // `pattern` stands in for `channel` in `subscribe` and `unsubscribe` only.
        if let Some(text) = raw.pattern.as_deref() {
            if !matches!(kind, "subscribe" | "unsubscribe") {
                return Err(err(ErrorCode::MalformedFrame, format!("`pattern` is not a field of {kind}")));
            }
            if raw.channel.is_some() {
                return Err(err(
                    ErrorCode::MalformedFrame,
                    "give either `channel` or `pattern`, not both".into(),
                ));
            }
            let pattern = ChannelPattern::parse(text).map_err(|e: InvalidPattern| {
                err(ErrorCode::InvalidPattern, format!("invalid pattern {text:?}: {e}"))
            })?;
            return Ok(if kind == "subscribe" {
                let since = raw.since.as_ref().is_some_and(|v| !v.is_null());
                Self::SubscribePattern { id, pattern, since, token: raw.token.is_some() }
            } else {
                Self::UnsubscribePattern { id, pattern }
            });
        }
        match kind {
            "subscribe" => {
                let since = raw
                    .since
                    .as_ref()
                    .filter(|v| !v.is_null())
                    .map(Since::from_json)
                    .transpose()
                    .map_err(|e| err(ErrorCode::MalformedFrame, format!("invalid `since`: {e}")))?;
                Ok(Self::Subscribe { channel: channel()?, id, since, token: raw.token })
            }
            "subscribe_refresh" => {
                let channel = channel()?;
                let token = raw
                    .token
                    .ok_or_else(|| err(ErrorCode::MalformedFrame, "missing field `token`".into()))?;
                Ok(Self::SubscribeRefresh { id, channel, token })
            }
            "refresh" => {
                let token = raw
                    .token
                    .ok_or_else(|| err(ErrorCode::MalformedFrame, "missing field `token`".into()))?;
                Ok(Self::Refresh { id, token })
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
                    "unknown frame type {other:?}; expected subscribe, subscribe_refresh, unsubscribe, \
                     publish, presence, history, ack, refresh or ping"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// `pattern` replaces `channel` in `subscribe` and `unsubscribe`, and nowhere else.
    #[test]
    fn pattern_frames_parse() {
        let ClientFrame::SubscribePattern { pattern, since, token, .. } =
            ClientFrame::parse(r#"{"type":"subscribe","id":1,"pattern":"events:*"}"#).unwrap()
        else {
            panic!("not a pattern subscribe")
        };
        assert_eq!((pattern.as_str(), since, token), ("events:*", false, false));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"subscribe","pattern":"e:*","since":{"offset":1,"epoch":"x"}}"#)
                .unwrap(),
            ClientFrame::SubscribePattern { since: true, .. }
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"unsubscribe","pattern":"e:?"}"#).unwrap(),
            ClientFrame::UnsubscribePattern { .. }
        ));
        assert_eq!(code(r#"{"type":"subscribe","pattern":"e:[x"}"#), ErrorCode::InvalidPattern);
        assert_eq!(code(r#"{"type":"subscribe","pattern":"*"}"#), ErrorCode::InvalidPattern);
        assert_eq!(
            code(r#"{"type":"subscribe","pattern":"e:*","channel":"e:a"}"#),
            ErrorCode::MalformedFrame
        );
        assert_eq!(code(r#"{"type":"publish","pattern":"e:*","data":1}"#), ErrorCode::MalformedFrame);
    }

    #[test]
    fn token_frames_parse() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"refresh","id":1,"token":"t"}"#).unwrap(),
            ClientFrame::Refresh { id: Some(RequestId::Num(1)), token } if token == "t"
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"subscribe","channel":"vip:a","token":"s"}"#).unwrap(),
            ClientFrame::Subscribe { token: Some(token), .. } if token == "s"
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"subscribe_refresh","channel":"vip:a","token":"s"}"#).unwrap(),
            ClientFrame::SubscribeRefresh { token, .. } if token == "s"
        ));
        assert_eq!(code(r#"{"type":"refresh"}"#), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"{"type":"subscribe_refresh","channel":"vip:a"}"#), ErrorCode::MalformedFrame);
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
}
