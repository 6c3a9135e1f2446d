//! The transport-independent core: checks a message, encodes it once and publishes it.
//!
//! Both transports read their wire format into a [`Draft`] (fields present, nothing checked),
//! hand it to [`Service::prepare`], which validates it against the naming rules, the configured
//! namespaces and the size limits and encodes it into the exact bytes subscribers receive, and
//! then publish the [`Prepared`] messages. A batch is prepared completely before anything is
//! published, which is what makes it all or nothing as far as validation goes.
//!
//! A message for a channel with history (its namespace's `history_size`, or the inbox for a
//! personal channel) goes through [`Broker::publish_with_history`], which numbers it, keeps it
//! and delivers it in one atomic step, and honours its idempotency key. Other messages are
//! published as before, a batch's in bounded pipelines. History reads and the inbox are in
//! [`crate::reads`].

use std::sync::Arc;

use bytes::Bytes;
use herald_api_common::auth::{self, Caller, Operation};
use herald_broker::history::MAX_IDEMPOTENCY_KEY_LEN;
use herald_broker::{Broker, HistoryOptions};
use herald_protocol::{
    ChannelName, ErrorCode, HistoryConfig, InboxConfig, InvalidName, Namespaces, Publication,
    PublicationError, UserId,
};
use serde_json::value::RawValue;

use crate::error::ApiError;

/// Where a message goes, as the caller named it.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A channel by name (`POST /v1/publish`, `Publish`).
    Channel(&'a str),
    /// A user's personal channel (`POST /v1/users/{user}/notify`, `Notify`).
    User(&'a str),
    /// The broadcast channel (`POST /v1/broadcast`, `Broadcast`).
    Broadcast,
}

/// One message as a transport read it: every field present, none checked yet. It borrows
/// from the request, so the payload is never copied or re-serialized before encoding.
#[derive(Debug, Clone, Copy)]
pub struct Draft<'a> {
    pub target: Target<'a>,
    /// The application payload, already known to be one JSON value.
    pub data: &'a RawValue,
    pub event: Option<&'a str>,
    /// Makes a retry safe on a channel with history: see [`HistoryOptions::idempotency_key`].
    pub idempotency_key: Option<&'a str>,
}

/// A message that passed every check, encoded once and ready for the broker.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub channel: ChannelName,
    /// The publication's id, returned to the caller.
    pub id: String,
    /// The `message` frame subscribers receive, byte for byte (without its offset, which the
    /// broker writes in when it assigns one).
    pub payload: Bytes,
    /// How the channel keeps history, with the message's idempotency key; `None` for a
    /// channel without history.
    pub history: Option<HistoryOptions>,
}

/// What publishing one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id; for a deduplicated retry, the first publish's.
    pub id: String,
    /// The message's offset and its channel's epoch, on a channel with history.
    pub offset: Option<u64>,
    pub epoch: Option<String>,
    /// The idempotency key was seen before and nothing was published now.
    pub deduplicated: bool,
}

/// Validation rules plus the broker they guard.
pub struct Service {
    pub(crate) namespaces: Namespaces,
    /// The personal channels' history.
    pub(crate) inbox: InboxConfig,
    /// The idempotency key TTL and the read limit.
    pub(crate) history: HistoryConfig,
    broker: Arc<dyn Broker>,
    max_message_size: usize,
    max_batch: usize,
    /// Messages the broker accepted (exported as a metric); deduplicated retries are not
    /// counted, as they published nothing.
    messages: prometheus_client::metrics::counter::Counter,
}

/// The sizes [`Service::prepare`] and [`Service::check_batch_len`] enforce.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub max_message_size: usize,
    pub max_batch: usize,
}

impl Service {
    pub fn new(
        namespaces: Namespaces,
        inbox: InboxConfig,
        history: HistoryConfig,
        broker: Arc<dyn Broker>,
        sizes: Sizes,
    ) -> Self {
        Self {
            namespaces,
            inbox,
            history,
            broker,
            max_message_size: sizes.max_message_size,
            max_batch: sizes.max_batch,
            messages: Default::default(),
        }
    }

    /// The counter of messages the broker accepted.
    pub fn messages_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.messages.clone()
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Refuses empty batches and batches over `max_batch`, before any entry is looked at.
    ///
    /// An empty batch is `batch_too_large` (413) rather than a 422: the protocol's error table
    /// defines that code as "more messages than the limit, or none", so a client handles one
    /// code for a batch of the wrong size.
    pub fn check_batch_len(&self, len: usize) -> Result<(), ApiError> {
        if len == 0 {
            return Err(ApiError::new(
                ErrorCode::BatchTooLarge,
                "messages: a batch needs at least one message",
            ));
        }
        if len > self.max_batch {
            return Err(ApiError::new(
                ErrorCode::BatchTooLarge,
                format!("messages: {len} messages, the limit is {}", self.max_batch),
            ));
        }
        Ok(())
    }

    /// Checks `draft` and encodes it. Error messages start with the name of the field at
    /// fault (`channel: ...`), so a batch can prefix them with the entry's index.
    pub fn prepare(&self, draft: Draft<'_>) -> Result<Prepared, ApiError> {
        let channel = self.resolve(draft.target)?;
        self.prepare_to(channel, draft)
    }

    /// [`Self::prepare`] for `caller`, who must be allowed to write to the draft's channel
    /// (`publish` and its namespace, `broadcast` or `notify`), else `forbidden`. Both
    /// transports publish through here, so they refuse the same things alike.
    pub fn prepare_for(&self, caller: &Caller, draft: Draft<'_>) -> Result<Prepared, ApiError> {
        let channel = self.resolve(draft.target)?;
        auth::authorize(caller, Operation::write_to(&channel), Some(&channel))?;
        self.prepare_to(channel, draft)
    }

    fn prepare_to(&self, channel: ChannelName, draft: Draft<'_>) -> Result<Prepared, ApiError> {
        let size = draft.data.get().len();
        if size > self.max_message_size {
            return Err(ApiError::new(
                ErrorCode::MessageTooLarge,
                format!("data: is {size} bytes of JSON, the limit is {}", self.max_message_size),
            ));
        }
        let publication = Publication::new(&channel, draft.data, draft.event).map_err(|e| {
            // The event name is a field of the request body, not a channel: a malformed
            // request (400 / INVALID_ARGUMENT) is the closest code.
            let reason = match e {
                PublicationError::EmptyEvent => "must not be empty; leave it out instead".to_string(),
                PublicationError::EventTooLong => {
                    format!("is longer than {} bytes", herald_protocol::publication::MAX_EVENT_LEN)
                }
            };
            ApiError::malformed(format!("event: {reason}"))
        })?;
        let history = self.history_options(&channel, draft.idempotency_key)?;
        let payload = publication.encode();
        let id = publication.id;
        Ok(Prepared { channel, id, payload, history })
    }

    /// How a publish to `channel` keeps history, or why its idempotency key is refused.
    fn history_options(
        &self,
        channel: &ChannelName,
        key: Option<&str>,
    ) -> Result<Option<HistoryOptions>, ApiError> {
        if let Some(key) = key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
        {
            return Err(ApiError::malformed(format!(
                "idempotency_key: must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, not {}",
                key.len()
            )));
        }
        let Some(history) = self.namespaces.history(channel, &self.inbox) else {
            if key.is_none() {
                return Ok(None);
            }
            return Err(ApiError::new(
                ErrorCode::NoHistory,
                format!(
                    "idempotency_key: {channel:?} keeps no history, and keys are for channels with history \
                     (a namespace with history_size, or a personal channel while the inbox is on)"
                ),
            ));
        };
        Ok(Some(HistoryOptions {
            size: history.size,
            ttl: history.ttl,
            idempotency_key: key.map(str::to_owned),
            idempotency_ttl: self.history.idempotency_ttl,
        }))
    }

    /// Publishes one prepared message.
    pub async fn publish(&self, message: Prepared) -> Result<Published, ApiError> {
        self.publish_one(message).await.map_err(|e| ApiError::broker(e, 1))
    }

    async fn publish_one(&self, message: Prepared) -> Result<Published, herald_broker::BrokerError> {
        let bytes = message.payload.len();
        let Some(options) = &message.history else {
            if let Err(e) = self.broker.publish(&message.channel, message.payload).await {
                tracing::warn!(error = %e, channel = %message.channel, engine = self.broker.name(), "publish failed");
                return Err(e);
            }
            self.messages.inc();
            tracing::debug!(channel = %message.channel, id = %message.id, bytes, "published");
            return Ok(Published { id: message.id, offset: None, epoch: None, deduplicated: false });
        };
        let result = self
            .broker
            .publish_with_history(&message.channel, &message.id, message.payload, options)
            .await
            .inspect_err(|e| {
                tracing::warn!(error = %e, channel = %message.channel, engine = self.broker.name(), "publish with history failed");
            })?;
        if !result.deduplicated {
            self.messages.inc();
        }
        tracing::debug!(
            channel = %message.channel, id = %result.message_id, offset = result.offset,
            deduplicated = result.deduplicated, bytes, "published with history"
        );
        Ok(Published {
            id: result.message_id,
            offset: Some(result.offset),
            epoch: Some(result.epoch),
            deduplicated: result.deduplicated,
        })
    }

    /// Publishes prepared messages in order and returns what became of each.
    ///
    /// Runs of messages for channels without history go to the broker together, which sends
    /// a large run in bounded pipelines so other requests' messages interleave with it. A
    /// message for a channel with history is its own atomic step (numbered, kept, delivered,
    /// its idempotency key checked), so those go one by one, in order with the rest; each
    /// round trip leaves room for other requests as well.
    pub async fn publish_batch(&self, messages: Vec<Prepared>) -> Result<Vec<Published>, ApiError> {
        let total = messages.len();
        let mut results = Vec::with_capacity(total);
        let mut rest = messages.into_iter().peekable();
        while let Some(first) = rest.next() {
            if first.history.is_some() {
                let published = self
                    .publish_one(first)
                    .await
                    .map_err(|e| ApiError::broker_after(e, results.len(), total))?;
                results.push(published);
                continue;
            }
            let mut run = vec![first];
            while let Some(next) = rest.next_if(|m| m.history.is_none()) {
                run.push(next);
            }
            let (ids, batch): (Vec<String>, Vec<(ChannelName, Bytes)>) =
                run.into_iter().map(|m| (m.id, (m.channel, m.payload))).unzip();
            if let Err(e) = self.broker.publish_batch(&batch).await {
                tracing::warn!(error = %e, messages = batch.len(), engine = self.broker.name(), "batch publish failed");
                if let herald_broker::BrokerError::OutcomeUnknown { confirmed, .. } = &e {
                    self.messages.inc_by(*confirmed as u64);
                }
                return Err(ApiError::broker_after(e, results.len(), total));
            }
            self.messages.inc_by(ids.len() as u64);
            results.extend(ids.into_iter().map(|id| Published {
                id,
                offset: None,
                epoch: None,
                deduplicated: false,
            }));
        }
        tracing::debug!(messages = total, "published batch");
        Ok(results)
    }

    /// The channel a target names, if it is valid and configured.
    pub(crate) fn resolve(&self, target: Target<'_>) -> Result<ChannelName, ApiError> {
        let channel = match target {
            Target::Broadcast => return Ok(ChannelName::broadcast()),
            Target::User(user) => {
                let user = UserId::parse(user).map_err(|e| invalid("user", "user id", user, e))?;
                return Ok(ChannelName::personal(&user));
            }
            Target::Channel(name) => {
                ChannelName::parse(name).map_err(|e| invalid("channel", "channel name", name, e))?
            }
        };
        match self.namespaces.lookup(&channel) {
            Ok(_) => Ok(channel),
            Err(code) => {
                let message = match channel.namespace() {
                    Some(ns) => format!("channel: namespace {ns:?} of {channel:?} is not configured"),
                    None => format!(
                        "channel: {channel:?} has no namespace and the {:?} namespace is not configured",
                        herald_protocol::DEFAULT_NAMESPACE
                    ),
                };
                Err(ApiError::new(code, message))
            }
        }
    }
}

/// `channel: invalid channel name "a b": contains ' '; ...`. Overlong values are not echoed.
fn invalid(field: &str, what: &str, value: &str, e: InvalidName) -> ApiError {
    let message = match e {
        InvalidName::Empty | InvalidName::TooLong { .. } => format!("{field}: invalid {what}: {e}"),
        _ => format!("{field}: invalid {what} {value:?}: {e}"),
    };
    ApiError::new(ErrorCode::InvalidChannel, message)
}

/// Reads `bytes` as the JSON text of one value; for transports that carry `data` as bytes.
pub fn json_data(bytes: &[u8]) -> Result<&RawValue, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::malformed("data: is required (the UTF-8 JSON text of any JSON value)"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::malformed(format!("data: is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use herald_broker::MemoryBroker;
    use herald_protocol::NamespaceConfig;

    use super::*;

    fn service() -> Service {
        let mut namespaces = Namespaces::default();
        namespaces.0.insert("chat".into(), NamespaceConfig::default());
        let sizes = Sizes { max_message_size: 16, max_batch: 3 };
        let broker = Arc::new(MemoryBroker::new());
        Service::new(namespaces, InboxConfig::default(), HistoryConfig::default(), broker, sizes)
    }

    fn draft<'a>(target: Target<'a>, data: &'a RawValue) -> Draft<'a> {
        Draft { target, data, event: None, idempotency_key: None }
    }

    #[test]
    fn each_check_names_its_field() {
        let s = service();
        let data = json_data(b"1").unwrap();
        let err = |t| s.prepare(draft(t, data)).unwrap_err();
        let e = err(Target::Channel("a b"));
        assert_eq!(e.code(), ErrorCode::InvalidChannel);
        assert!(e.to_string().starts_with("channel: invalid channel name \"a b\""), "{e}");
        let e = err(Target::Channel("news:today"));
        assert_eq!(e.code(), ErrorCode::UnknownChannel);
        assert!(e.to_string().contains("namespace \"news\""), "{e}");
        assert_eq!(err(Target::Channel("plain")).code(), ErrorCode::UnknownChannel);
        assert!(err(Target::User("")).to_string().starts_with("user: "));
        let big = json_data(br#""0123456789abcdef""#).unwrap();
        assert_eq!(s.prepare(draft(Target::Broadcast, big)).unwrap_err().code(), ErrorCode::MessageTooLarge);
        let e = s.prepare(Draft { event: Some(""), ..draft(Target::Broadcast, data) }).unwrap_err();
        assert!(e.to_string().starts_with("event: "), "{e}");
        assert!(json_data(b"{nope").unwrap_err().to_string().starts_with("data: "));
        assert!(json_data(b"").unwrap_err().to_string().starts_with("data: "));
    }

    #[test]
    fn built_in_channels_need_no_namespace() {
        let s = service();
        let data = json_data(br#"{"a":1}"#).unwrap();
        let p = s.prepare(draft(Target::User("alice"), data)).unwrap();
        assert_eq!(p.channel.as_str(), "user:alice");
        assert!(s.prepare(draft(Target::Channel("user:bob"), data)).is_ok());
        assert!(s.prepare(draft(Target::Channel("broadcast"), data)).is_ok());
        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(v["id"], p.id.as_str());
        assert_eq!(v["data"]["a"], 1);
    }

    #[test]
    fn idempotency_keys_need_a_channel_with_history() {
        let s = service();
        let data = json_data(b"1").unwrap();
        let keyed = |target, key| s.prepare(Draft { idempotency_key: Some(key), ..draft(target, data) });
        let e = keyed(Target::Channel("chat:a"), "k1").unwrap_err();
        assert_eq!(e.code(), ErrorCode::NoHistory);
        assert!(e.to_string().starts_with("idempotency_key: "), "{e}");
        assert_eq!(keyed(Target::Broadcast, "k1").unwrap_err().code(), ErrorCode::NoHistory);
        let p = keyed(Target::User("alice"), "k1").unwrap();
        let options = p.history.expect("the inbox keeps history");
        assert_eq!(options.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(options.size, InboxConfig::default().history_size);
        assert_eq!(keyed(Target::User("alice"), "").unwrap_err().code(), ErrorCode::MalformedFrame);
        let long = "k".repeat(129);
        assert_eq!(keyed(Target::User("alice"), &long).unwrap_err().code(), ErrorCode::MalformedFrame);
        assert!(s.prepare(draft(Target::Channel("chat:a"), data)).unwrap().history.is_none());
    }

    #[test]
    fn batch_sizes_are_bounded_on_both_sides() {
        let s = service();
        assert_eq!(s.check_batch_len(0).unwrap_err().code(), ErrorCode::BatchTooLarge);
        assert_eq!(s.check_batch_len(4).unwrap_err().code(), ErrorCode::BatchTooLarge);
        assert!(s.check_batch_len(3).is_ok());
    }
}
