//! What the presence scripts read and answer: a report's changes and a full state's
//! connections as the JSON arguments `report.lua` and `full.lua` decode, and the scripts'
//! replies (a status and the events of the transitions they made) as [`Event`]s.

use std::sync::Arc;

use herald_protocol::{ChannelName, UserId};
use redis::Value;
use serde_json::json;

use crate::model::{Change, ConnState, Event, Info};
use crate::store::StoreError;

fn info_text(i: &Info) -> Option<String> {
    i.as_deref().map(String::from)
}

/// A batch of changes as `report.lua` reads it.
pub(super) fn encode_changes(changes: &[&Change]) -> String {
    let items: Vec<serde_json::Value> = changes
        .iter()
        .map(|c| match c {
            Change::Connect { conn, user, info } => {
                let mut v = json!({"o": "c", "k": conn.to_string(), "u": user});
                if let Some(i) = info_text(info) {
                    v["i"] = i.into();
                }
                v
            }
            Change::Disconnect { conn, .. } => json!({"o": "d", "k": conn.to_string()}),
            Change::Subscribe { conn, channel, .. } => {
                json!({"o": "s", "k": conn.to_string(), "ch": channel})
            }
            Change::Unsubscribe { conn, channel, .. } => {
                json!({"o": "x", "k": conn.to_string(), "ch": channel})
            }
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

/// Part of a full state as `full.lua` reads it.
pub(super) fn encode_conns(conns: &[&ConnState]) -> String {
    let items: Vec<serde_json::Value> = conns
        .iter()
        .map(|ConnState { conn, user, info: i, channels }| {
            let mut v = json!({"k": conn.to_string(), "u": user, "c": channels});
            if let Some(i) = info_text(i) {
                v["i"] = i.into();
            }
            v
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

/// Splits `{status, events}` replies.
pub(super) fn status_and_events(reply: Value) -> Result<(String, Vec<Event>), StoreError> {
    let Value::Array(parts) = reply else { return Err(bad("reply is not an array")) };
    let status = parts.first().and_then(text).ok_or_else(|| bad("status"))?;
    Ok((status, decode_events(parts.get(1).unwrap_or(&Value::Nil))?))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn bad(what: &str) -> StoreError {
    StoreError::UnexpectedReply(what.to_string())
}

/// Reads the events a script returned: arrays like `["join", channel, user, info]`.
pub(super) fn decode_events(v: &Value) -> Result<Vec<Event>, StoreError> {
    let Value::Array(items) = v else { return Ok(vec![]) };
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(fields) = item else { return Err(bad("event is not an array")) };
        let field = |i: usize| fields.get(i).and_then(text);
        let user = || field(2).and_then(|u| UserId::parse(&u).ok()).ok_or_else(|| bad("event user"));
        let channel =
            || field(1).and_then(|c| ChannelName::parse(&c).ok()).ok_or_else(|| bad("event channel"));
        let kind = field(0).ok_or_else(|| bad("event kind"))?;
        events.push(match kind.as_str() {
            "join" => Event::Join { channel: channel()?, user: user()?, info: field(3).map(Arc::from) },
            "leave" => Event::Leave { channel: channel()?, user: user()? },
            "online" => {
                let user = field(1).and_then(|u| UserId::parse(&u).ok()).ok_or_else(|| bad("event user"))?;
                Event::Online { user, info: field(2).map(Arc::from) }
            }
            "offline" => {
                let user = field(1).and_then(|u| UserId::parse(&u).ok()).ok_or_else(|| bad("event user"))?;
                Event::Offline { user }
            }
            other => return Err(bad(other)),
        });
    }
    Ok(events)
}
