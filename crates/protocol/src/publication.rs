//! A message on its way from a publisher through the broker to subscribers.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::user::UserId;

/// Longest `event` name accepted, in bytes.
pub const MAX_EVENT_LEN: usize = 64;

/// Why a publication could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PublicationError {
    #[error("event is longer than {MAX_EVENT_LEN} bytes")]
    EventTooLong,
    #[error("event must not be empty")]
    EmptyEvent,
}

/// One published message. Publishers build it and call [`Publication::encode`] once; the
/// resulting bytes travel through the broker unchanged and are written to every subscriber's
/// socket as they are: `{"type":"message","channel":..,"id":..,"ts":..,"data":..}`.
#[derive(Debug, Serialize)]
pub struct Publication<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    pub channel: &'a ChannelName,
    /// Unique, time-ordered message id (UUIDv7), chosen by the publisher.
    pub id: String,
    /// Milliseconds since the Unix epoch when the message was published.
    pub ts: u64,
    /// Position of the message in its channel's history. Reserved: history and recovery
    /// fill it in; today it is always absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// An optional application-defined event name (`"order.updated"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    /// Set when a client published the message: the sender's user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a UserId>,
    /// The application payload, any JSON value, passed through untouched.
    pub data: &'a RawValue,
}

impl<'a> Publication<'a> {
    /// A new message for `channel`, with a fresh id and the current time.
    pub fn new(
        channel: &'a ChannelName,
        data: &'a RawValue,
        event: Option<&'a str>,
    ) -> Result<Self, PublicationError> {
        if let Some(e) = event {
            if e.is_empty() {
                return Err(PublicationError::EmptyEvent);
            }
            if e.len() > MAX_EVENT_LEN {
                return Err(PublicationError::EventTooLong);
            }
        }
        Ok(Self {
            kind: "message",
            channel,
            id: uuid::Uuid::now_v7().to_string(),
            ts: now_millis(),
            offset: None,
            event,
            from: None,
            data,
        })
    }

    /// Marks the message as sent by a client.
    pub fn from_user(mut self, user: &'a UserId) -> Self {
        self.from = Some(user);
        self
    }

    /// The exact bytes every subscriber receives.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("publications always serialize"))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_message_frame_once() {
        let ch = ChannelName::parse("chat:a").unwrap();
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
        let user = UserId::parse("bob").unwrap();
        let p = Publication::new(&ch, &data, Some("say")).unwrap().from_user(&user);
        let v: serde_json::Value = serde_json::from_slice(&p.encode()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["channel"], "chat:a");
        assert_eq!(v["event"], "say");
        assert_eq!(v["from"], "bob");
        assert_eq!(v["data"]["text"], "hi");
        assert_eq!(v["id"].as_str().unwrap().len(), 36);
        assert!(v.get("offset").is_none());
    }

    #[test]
    fn bad_event_names_are_refused() {
        let ch = ChannelName::parse("a").unwrap();
        let data = RawValue::from_string("1".into()).unwrap();
        assert!(Publication::new(&ch, &data, Some("")).is_err());
        assert!(Publication::new(&ch, &data, Some(&"e".repeat(65))).is_err());
    }
}
