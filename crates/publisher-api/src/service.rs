//! The transport-independent core: checks a message, encodes it once and publishes it.
//!
//! Both transports read their wire format into a [`Draft`] (fields present, nothing checked),
//! hand it to [`Service::prepare`], which validates it against the naming rules, the configured
//! namespaces and the size limits and encodes it into the exact bytes subscribers receive, and
//! then publish the [`Prepared`] messages. A batch is prepared completely before anything is
//! published, which is what makes it all or nothing.

use std::sync::Arc;

use bytes::Bytes;
use herald_broker::Broker;
use herald_protocol::{
    ChannelName, ErrorCode, InvalidName, Namespaces, Publication, PublicationError, UserId,
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
}

/// A message that passed every check, encoded once and ready for the broker.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub channel: ChannelName,
    /// The publication's id, returned to the caller.
    pub id: String,
    /// The `message` frame subscribers receive, byte for byte.
    pub payload: Bytes,
}

/// Validation rules plus the broker they guard.
pub struct Service {
    namespaces: Namespaces,
    broker: Arc<dyn Broker>,
    max_message_size: usize,
    max_batch: usize,
    /// Messages the broker accepted (exported as a metric).
    messages: prometheus_client::metrics::counter::Counter,
}

impl Service {
    pub fn new(
        namespaces: Namespaces,
        broker: Arc<dyn Broker>,
        max_message_size: usize,
        max_batch: usize,
    ) -> Self {
        Self { namespaces, broker, max_message_size, max_batch, messages: Default::default() }
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
        let payload = publication.encode();
        let id = publication.id;
        Ok(Prepared { channel, id, payload })
    }

    /// Publishes one prepared message and returns its id.
    pub async fn publish(&self, message: Prepared) -> Result<String, ApiError> {
        let bytes = message.payload.len();
        if let Err(e) = self.broker.publish(&message.channel, message.payload).await {
            tracing::warn!(error = %e, channel = %message.channel, engine = self.broker.name(), "publish failed");
            return Err(ApiError::broker(e, 1));
        }
        self.messages.inc();
        tracing::debug!(channel = %message.channel, id = %message.id, bytes, "published");
        Ok(message.id)
    }

    /// Publishes prepared messages in order and returns their ids. The broker sends a large
    /// batch in bounded pipelines, so other requests' messages interleave with it.
    pub async fn publish_batch(&self, messages: Vec<Prepared>) -> Result<Vec<String>, ApiError> {
        let (ids, batch): (Vec<String>, Vec<(ChannelName, Bytes)>) =
            messages.into_iter().map(|m| (m.id, (m.channel, m.payload))).unzip();
        if let Err(e) = self.broker.publish_batch(&batch).await {
            tracing::warn!(error = %e, messages = batch.len(), engine = self.broker.name(), "batch publish failed");
            if let herald_broker::BrokerError::OutcomeUnknown { confirmed, .. } = &e {
                self.messages.inc_by(*confirmed as u64);
            }
            return Err(ApiError::broker(e, ids.len()));
        }
        self.messages.inc_by(ids.len() as u64);
        tracing::debug!(messages = ids.len(), "published batch");
        Ok(ids)
    }

    /// The channel a target names, if it is valid and configured.
    fn resolve(&self, target: Target<'_>) -> Result<ChannelName, ApiError> {
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
        Service::new(namespaces, Arc::new(MemoryBroker::new()), 16, 3)
    }

    fn draft<'a>(target: Target<'a>, data: &'a RawValue) -> Draft<'a> {
        Draft { target, data, event: None }
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
    fn batch_sizes_are_bounded_on_both_sides() {
        let s = service();
        assert_eq!(s.check_batch_len(0).unwrap_err().code(), ErrorCode::BatchTooLarge);
        assert_eq!(s.check_batch_len(4).unwrap_err().code(), ErrorCode::BatchTooLarge);
        assert!(s.check_batch_len(3).is_ok());
    }
}
