//! Frames the server sends: [`ServerFrame`] and the states it carries.

use serde::Serialize;
use serde_json::value::RawValue;

use super::RequestId;
use crate::channel::ChannelName;
use crate::error::ErrorCode;
use crate::pattern::ChannelPattern;
use crate::user::UserId;

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
        /// For a subscription held through a subscription token: when it ends unless a
        /// `subscribe_refresh` brings a fresh token (seconds since the Unix epoch).
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// The answer to a pattern `subscribe`: messages of every matching channel follow, each
    /// with this `pattern` beside its real `channel`.
    #[serde(rename = "subscribed")]
    SubscribedPattern {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        pattern: &'a ChannelPattern,
    },
    /// A pattern subscription ended: on the client's `unsubscribe`, or by the server
    /// (`reason`: `grant_revoked`, when a refreshed token's `channels` claim no longer lists it).
    #[serde(rename = "unsubscribed")]
    UnsubscribedPattern {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        pattern: &'a ChannelPattern,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        channel: &'a ChannelName,
        /// Set when the server ended the subscription on its own accord (no `id` then):
        /// `subscription_expired` or `grant_revoked`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// The connection now runs on the token of a `refresh` frame.
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        /// The new token's `exp`; absent for a token without one.
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// The connection token expires at `expires_at`: send a `refresh` before then, or the
    /// connection is closed with 4001.
    RefreshDue { expires_at: u64 },
    /// A subscription runs on the token of a `subscribe_refresh` frame.
    SubscribeRefreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        channel: &'a ChannelName,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// The subscription token of `channel` expires at `expires_at`: send a
    /// `subscribe_refresh` before then, or the channel is unsubscribed.
    SubscribeRefreshDue { channel: &'a ChannelName, expires_at: u64 },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_have_the_documented_shape() {
        let ch = ChannelName::parse("chat:a").unwrap();
        let id = RequestId::Num(7);
        assert_eq!(
            ServerFrame::Subscribed { id: Some(&id), channel: &ch, state: None, expires_at: None }.to_json(),
            r#"{"type":"subscribed","id":7,"channel":"chat:a"}"#
        );
        let state =
            StreamState { offset: 3, epoch: "e", recovered: Some(false), reason: Some("epoch_changed") };
        assert_eq!(
            ServerFrame::Subscribed { id: None, channel: &ch, state: Some(&state), expires_at: None }
                .to_json(),
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
            ServerFrame::Unsubscribed { id: None, channel: &ch, reason: Some("subscription_expired") }
                .to_json(),
            r#"{"type":"unsubscribed","channel":"chat:a","reason":"subscription_expired"}"#
        );
        let pattern = ChannelPattern::parse("chat:*").unwrap();
        assert_eq!(
            ServerFrame::SubscribedPattern { id: Some(&id), pattern: &pattern }.to_json(),
            r#"{"type":"subscribed","id":7,"pattern":"chat:*"}"#
        );
        assert_eq!(
            ServerFrame::UnsubscribedPattern { id: None, pattern: &pattern, reason: Some("grant_revoked") }
                .to_json(),
            r#"{"type":"unsubscribed","pattern":"chat:*","reason":"grant_revoked"}"#
        );
        assert_eq!(
            ServerFrame::RefreshDue { expires_at: 9 }.to_json(),
            r#"{"type":"refresh_due","expires_at":9}"#
        );
        assert_eq!(
            ServerFrame::Error { id: None, code: ErrorCode::Forbidden, message: "no" }.to_json(),
            r#"{"type":"error","code":"forbidden","message":"no"}"#
        );
    }
}
