//! Client frames about channel history: `history` reads, `ack`s of the offline inbox, and a
//! client's `publish` into a channel with history (with its `idempotency_key`).
//!
//! A connection's requests (`crate::requests`) check what only they know (whether the
//! client is subscribed) and call in here; these functions decide who may do what with a
//! channel's history, ask the broker, and build the reply. A history reply is assembled from
//! the frames the broker keeps, joined as they are: a message is encoded once, by its
//! publisher, and never again.

use std::fmt::Write as _;

use bytes::Bytes;
use herald_broker::history::MAX_IDEMPOTENCY_KEY_LEN;
use herald_broker::{Broker, BrokerError, HistoryFilter, HistoryOptions, StreamPosition};
use herald_protocol::{
    ChannelHistory, ChannelKind, ChannelName, ErrorCode, HistoryConfig, InboxConfig, Namespaces, Position,
    RequestId, ServerFrame, UserId,
};
use serde_json::value::RawValue;

use crate::policy::Denied;

/// What decides whether and how a channel keeps history, as the gateway was configured.
#[derive(Clone, Copy)]
pub(crate) struct Settings<'a> {
    pub(crate) namespaces: &'a Namespaces,
    /// The personal channels' history.
    pub(crate) inbox: &'a InboxConfig,
    /// The read limit and how long idempotency keys are remembered.
    pub(crate) limits: &'a HistoryConfig,
}

/// A client's `history` request.
pub(crate) struct Read<'a> {
    pub(crate) id: Option<&'a RequestId>,
    pub(crate) channel: &'a ChannelName,
    pub(crate) since: Option<&'a Position>,
    pub(crate) limit: Option<usize>,
    pub(crate) reverse: bool,
}

/// How `channel`'s history may be read by `user`: its history, or why not. A client reads
/// the history of namespaces with `client_history` and its own inbox; another user's inbox
/// is `forbidden`, anything else without (readable) history `no_history`.
fn readable(settings: Settings<'_>, user: &UserId, channel: &ChannelName) -> Result<ChannelHistory, Denied> {
    let no_history = || (ErrorCode::NoHistory, format!("{channel} keeps no history clients may read"));
    match channel.kind() {
        ChannelKind::Personal(owner) if owner != user.as_str() => {
            Err((ErrorCode::Forbidden, "another user's inbox cannot be read".into()))
        }
        ChannelKind::Personal(_) | ChannelKind::Broadcast => {
            settings.namespaces.history(channel, settings.inbox).ok_or_else(no_history)
        }
        ChannelKind::Regular => {
            let namespace = settings
                .namespaces
                .lookup(channel)
                .map_err(|code| (code, format!("namespace of {channel} is not configured")))?;
            if !namespace.is_some_and(|ns| ns.client_history) {
                return Err(no_history());
            }
            settings.namespaces.history(channel, settings.inbox).ok_or_else(no_history)
        }
    }
}

/// Answers a `history` frame of a connection of `user`; `subscribed`: whether it is
/// subscribed to the channel (only those may be read).
pub(crate) async fn read(
    broker: &dyn Broker,
    settings: Settings<'_>,
    user: &UserId,
    subscribed: bool,
    request: Read<'_>,
) -> Result<String, Denied> {
    let channel = request.channel;
    let history = readable(settings, user, channel)?;
    if !subscribed {
        return Err((ErrorCode::NotSubscribed, format!("subscribe to {channel} to read its history")));
    }
    let max = settings.limits.read_limit;
    let limit = request.limit.unwrap_or(max);
    if limit > max {
        return Err((ErrorCode::MalformedFrame, format!("`limit` may not exceed {max}")));
    }
    let filter = HistoryFilter {
        since: request.since.map(|p| StreamPosition { offset: p.offset, epoch: p.epoch.clone() }),
        limit: Some(limit),
        reverse: request.reverse,
        ttl: history.ttl,
    };
    let result = broker.history(channel, &filter).await.map_err(|e| refusal(channel, "read", e))?;
    let publications = join(result.publications.iter().map(|p| &p.payload)).map_err(|e| {
        tracing::error!(%channel, error = %e, "the history holds a frame that is not JSON");
        (ErrorCode::Internal, "the history could not be read".to_string())
    })?;
    Ok(ServerFrame::History {
        id: request.id,
        channel,
        offset: result.position.offset,
        epoch: &result.position.epoch,
        publications: &publications,
    }
    .to_json())
}

/// The frames as one JSON array, their bytes as they are. The array is checked once more
/// as it becomes a [`RawValue`] (serde_json has no unchecked way); that reads the bytes but
/// writes nothing.
fn join<'a>(frames: impl Iterator<Item = &'a Bytes>) -> Result<Box<RawValue>, serde_json::Error> {
    let mut array = String::from("[");
    for (i, frame) in frames.enumerate() {
        if i > 0 {
            array.push(',');
        }
        // Frames are JSON text the publisher encoded; anything else fails the check below.
        array.push_str(&String::from_utf8_lossy(frame));
    }
    array.push(']');
    RawValue::from_string(array)
}

/// Answers an `ack` frame of a connection of `user`: only its own inbox, when the inbox is
/// on. `epoch` absent: the inbox's current epoch.
pub(crate) async fn ack(
    broker: &dyn Broker,
    settings: Settings<'_>,
    user: &UserId,
    id: Option<&RequestId>,
    channel: &ChannelName,
    offset: u64,
    epoch: Option<&str>,
) -> Result<String, Denied> {
    if channel.kind() != ChannelKind::Personal(user.as_str()) {
        return Err((ErrorCode::Forbidden, "only your own personal channel can be acknowledged".into()));
    }
    let Some(history) = settings.namespaces.history(channel, settings.inbox) else {
        return Err((ErrorCode::NoHistory, "the inbox is off on this server".into()));
    };
    let position = StreamPosition { offset, epoch: epoch.unwrap_or_default().to_string() };
    let acked = broker.ack(channel, &position, history.ttl).await.map_err(|e| refusal(channel, "ack", e))?;
    Ok(ServerFrame::Acked { id, channel, offset: acked.offset, epoch: &acked.epoch }.to_json())
}

/// What a client's publish did.
pub(crate) struct Published {
    pub(crate) message_id: String,
    /// The message's offset and the channel's epoch, for a channel with history.
    pub(crate) position: Option<(u64, String)>,
    /// An earlier publish with the same idempotency key was found; nothing was published.
    pub(crate) deduplicated: bool,
}

/// Publishes a client's encoded message `frame` (whose id is `message_id`) to `channel`,
/// with the channel's history if it keeps one. An idempotency key needs history: it is
/// remembered next to the history, in the same atomic step as the append.
pub(crate) async fn publish(
    broker: &dyn Broker,
    settings: Settings<'_>,
    channel: &ChannelName,
    message_id: String,
    frame: Bytes,
    idempotency_key: Option<&str>,
) -> Result<Published, Denied> {
    let Some(history) = settings.namespaces.history(channel, settings.inbox) else {
        if idempotency_key.is_some() {
            return Err((ErrorCode::NoHistory, format!("{channel} keeps no history: no idempotency_key")));
        }
        broker.publish(channel, frame).await.map_err(|e| refusal(channel, "publish", e))?;
        return Ok(Published { message_id, position: None, deduplicated: false });
    };
    if let Some(key) = idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        let message = format!("`idempotency_key` must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes");
        return Err((ErrorCode::MalformedFrame, message));
    }
    let options = HistoryOptions {
        size: history.size,
        ttl: history.ttl,
        idempotency_key: idempotency_key.map(str::to_owned),
        idempotency_ttl: settings.limits.idempotency_ttl,
    };
    let result = broker
        .publish_with_history(channel, &message_id, frame, &options)
        .await
        .map_err(|e| refusal(channel, "publish", e))?;
    Ok(Published {
        message_id: result.message_id,
        position: Some((result.offset, result.epoch)),
        deduplicated: result.deduplicated,
    })
}

/// The client's error for a broker's failure to `operation` on `channel`.
fn refusal(channel: &ChannelName, operation: &str, e: BrokerError) -> Denied {
    match e {
        BrokerError::Unrecoverable { reason, current } => {
            let mut message = format!("{reason}: ");
            let _ = match reason {
                herald_broker::RecoveryFailure::EpochChanged => {
                    write!(message, "{channel} has another epoch now")
                }
                herald_broker::RecoveryFailure::PositionTooOld => {
                    write!(message, "messages after that position are no longer kept")
                }
                herald_broker::RecoveryFailure::PositionAhead => {
                    write!(message, "the position is beyond the last message")
                }
            };
            let _ = write!(message, "; {channel} is at offset {} of epoch {}", current.offset, current.epoch);
            (ErrorCode::Unrecoverable, message)
        }
        // The command went out and Redis did not answer in time: saying "not published"
        // would be a guess, and a client that retries without a key would send it twice.
        BrokerError::OutcomeUnknown { .. } => {
            tracing::warn!(%channel, error = %e, "client {operation}: outcome unknown");
            let message = if operation == "publish" {
                "no answer from the broker in time: the message may or may not have been published"
            } else {
                "no answer from the broker in time"
            };
            (ErrorCode::OutcomeUnknown, message.to_string())
        }
        BrokerError::InvalidHistoryRequest(problem) => (ErrorCode::MalformedFrame, problem.to_string()),
        BrokerError::HistoryUnsupported(_) => {
            (ErrorCode::NoHistory, format!("this server's broker keeps no history of {channel}"))
        }
        e => {
            tracing::warn!(%channel, error = %e, "client {operation} failed");
            let message = match operation {
                "publish" => "message not published: broker unavailable".to_string(),
                _ => format!("{operation} failed: broker unavailable"),
            };
            (ErrorCode::Unavailable, message)
        }
    }
}
