//! The frames presence events are published as, encoded once each.
//!
//! - To a channel's subscribers (namespaces with `join_leave = true`):
//!   `{"type":"join","channel":"room:a","user":"alice","info":{...}}` and
//!   `{"type":"leave","channel":"room:a","user":"alice"}`.
//! - To backends on `presence.events_channel`:
//!   `{"type":"online","user":"alice","info":{...},"ts":1700000000000}` and
//!   `{"type":"offline","user":"alice","ts":1700000000000}`.
//!
//! `info` is the token's `info` claim, passed on untouched and left out when there was none.

use bytes::Bytes;
use herald_protocol::{ChannelName, UserId};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::model::Info;

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Frame<'a> {
    Join {
        channel: &'a ChannelName,
        user: &'a UserId,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<Box<RawValue>>,
    },
    Leave {
        channel: &'a ChannelName,
        user: &'a UserId,
    },
    Online {
        user: &'a UserId,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<Box<RawValue>>,
        ts: u64,
    },
    Offline {
        user: &'a UserId,
        ts: u64,
    },
}

/// Info that is not JSON text is left out rather than break the frame. Every path into the
/// store checks it, so this only guards against a hand-edited store.
pub(crate) fn raw(info: &Info) -> Option<Box<RawValue>> {
    info.as_deref().and_then(|i| RawValue::from_string(i.to_string()).ok())
}

fn encode(frame: &Frame<'_>) -> Bytes {
    Bytes::from(serde_json::to_vec(frame).expect("presence frames always serialize"))
}

pub(crate) fn join(channel: &ChannelName, user: &UserId, info: &Info) -> Bytes {
    encode(&Frame::Join { channel, user, info: raw(info) })
}

pub(crate) fn leave(channel: &ChannelName, user: &UserId) -> Bytes {
    encode(&Frame::Leave { channel, user })
}

pub(crate) fn online(user: &UserId, info: &Info) -> Bytes {
    encode(&Frame::Online { user, info: raw(info), ts: herald_protocol::publication::now_millis() })
}

pub(crate) fn offline(user: &UserId) -> Bytes {
    encode(&Frame::Offline { user, ts: herald_protocol::publication::now_millis() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_documented_shape() {
        let ch = ChannelName::parse("room:a").unwrap();
        let u = UserId::parse("alice").unwrap();
        let info: Info = Some(r#"{"name":"Alice"}"#.into());
        assert_eq!(
            &join(&ch, &u, &info)[..],
            br#"{"type":"join","channel":"room:a","user":"alice","info":{"name":"Alice"}}"#
        );
        assert_eq!(&join(&ch, &u, &None)[..], br#"{"type":"join","channel":"room:a","user":"alice"}"#);
        assert_eq!(&leave(&ch, &u)[..], br#"{"type":"leave","channel":"room:a","user":"alice"}"#);
        let on: serde_json::Value = serde_json::from_slice(&online(&u, &info)).unwrap();
        assert_eq!(on["type"], "online");
        assert_eq!(on["info"]["name"], "Alice");
        assert!(on["ts"].as_u64().unwrap() > 0);
    }
}
