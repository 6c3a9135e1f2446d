//! Channel history as every role configures and names it: which channels keep history
//! (`[namespaces.<name>]`, the `[inbox]` of personal channels), the `[history]` limits, and
//! the positions clients recover from.
//!
//! A channel with history numbers its messages: `offset` 1, 2, 3, ... with no gaps, within an
//! `epoch` that changes whenever the history may have been lost. A client that holds the
//! position (offset and epoch) of the last message it processed can ask for everything after
//! it; the broker's `history` module keeps the log itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::channel::ChannelName;
use crate::config_error::ConfigError;

/// Most messages one channel may keep: a bound on the memory one channel takes in Redis and
/// on what one recovery can send.
pub const MAX_HISTORY_SIZE: usize = 100_000;

/// How one channel keeps history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelHistory {
    /// Messages kept; older ones are trimmed.
    pub size: usize,
    /// How long the history lives after the channel's last publish.
    pub ttl: Duration,
}

/// The offline inbox (`[inbox]`): the history of personal channels (`user:<id>`), on by
/// default so that a user who was away gets their notifications on return. Acknowledgements
/// (`ack` frames) record per user what was processed; nothing leaves the inbox because it was
/// sent, only by `history_size` and `history_ttl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxConfig {
    /// Notifications kept per user; 0 turns the inbox off (personal channels are then at
    /// most once, like channels without history).
    pub history_size: usize,
    /// How long a user's inbox lives after their last notification.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self { history_size: 1000, history_ttl: Duration::from_secs(7 * 24 * 3600) }
    }
}

impl InboxConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_history("inbox", self.history_size, self.history_ttl)
    }
}

/// Limits of history reads and idempotent publishing (`[history]`), the same for every role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// How long a publish's `idempotency_key` is remembered: a retry with the same key within
    /// this time publishes nothing and returns the first publish's result.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// Most messages one history read (a client `history` frame, the HTTP and gRPC history
    /// and inbox reads) returns; a larger `limit` is refused.
    pub read_limit: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self { idempotency_ttl: Duration::from_secs(300), read_limit: 1000 }
    }
}

impl HistoryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.idempotency_ttl.is_zero() {
            return Err(ConfigError::new("history.idempotency_ttl", "must be more than zero"));
        }
        if self.read_limit == 0 || self.read_limit > MAX_HISTORY_SIZE {
            return Err(ConfigError::new("history.read_limit", format!("must be 1 to {MAX_HISTORY_SIZE}")));
        }
        Ok(())
    }
}

/// A position in a channel's history, as clients hold and send it: the last message they
/// processed, `{"offset": 12, "epoch": "Ab3xYz9QpL0w"}`. Offset 0 is before the first message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// Longest epoch accepted from a client. Herald's are 12 characters.
pub const MAX_EPOCH_LEN: usize = 64;

/// Where a subscription asks to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// After this position.
    Position(Position),
    /// After the user's acknowledged position: for the personal channel only, from a device
    /// that holds no position of its own.
    Acked,
}

/// Why a client's `since` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSince {
    #[error("expected {{\"offset\": <integer>, \"epoch\": <string>}} or \"acked\"")]
    Shape,
    #[error("epoch must be 1 to {MAX_EPOCH_LEN} ASCII letters and digits")]
    Epoch,
    #[error("expected <channel>~<offset>~<epoch> or <channel>~acked")]
    UrlForm,
}

impl Since {
    /// Reads the JSON form of a frame's `since`: a position object, or the string `"acked"`.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, InvalidSince> {
        if value.as_str() == Some("acked") {
            return Ok(Self::Acked);
        }
        let position: Position = serde_json::from_value(value.clone()).map_err(|_| InvalidSince::Shape)?;
        check_epoch(&position.epoch)?;
        Ok(Self::Position(position))
    }

    /// Reads one `since` of a connect URL: `<channel>~<offset>~<epoch>`, or `<channel>~acked`
    /// (`~` never occurs in channel names and needs no escaping in a URL).
    pub fn from_url(text: &str) -> Result<(ChannelName, Self), InvalidSince> {
        let mut parts = text.split('~');
        let channel = parts.next().and_then(|c| ChannelName::parse(c).ok()).ok_or(InvalidSince::UrlForm)?;
        let since = match (parts.next(), parts.next(), parts.next()) {
            (Some("acked"), None, None) => Self::Acked,
            (Some(offset), Some(epoch), None) => {
                let offset = offset.parse().map_err(|_| InvalidSince::UrlForm)?;
                check_epoch(epoch)?;
                Self::Position(Position { offset, epoch: epoch.to_owned() })
            }
            _ => return Err(InvalidSince::UrlForm),
        };
        Ok((channel, since))
    }
}

fn check_epoch(epoch: &str) -> Result<(), InvalidSince> {
    let ok =
        !epoch.is_empty() && epoch.len() <= MAX_EPOCH_LEN && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(InvalidSince::Epoch) }
}

/// `history_size` and `history_ttl` go together: both set, or neither.
pub(crate) fn check_history(section: &str, size: usize, ttl: Duration) -> Result<(), ConfigError> {
    if size > MAX_HISTORY_SIZE {
        return Err(ConfigError::new(
            format!("{section}.history_size"),
            format!("{size} is more than the {MAX_HISTORY_SIZE} messages a channel may keep"),
        ));
    }
    match (size, ttl.is_zero()) {
        (0, false) => Err(ConfigError::new(format!("{section}.history_size"), "needed with history_ttl")),
        (1.., true) => Err(ConfigError::new(format!("{section}.history_ttl"), "needed with history_size")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::{NamespaceConfig, Namespaces};

    #[test]
    fn since_reads_both_forms() {
        let json = serde_json::json!({"offset": 12, "epoch": "Ab3"});
        assert_eq!(
            Since::from_json(&json).unwrap(),
            Since::Position(Position { offset: 12, epoch: "Ab3".into() })
        );
        assert_eq!(Since::from_json(&serde_json::json!("acked")).unwrap(), Since::Acked);
        assert_eq!(Since::from_json(&serde_json::json!({"offset": 1})), Err(InvalidSince::Shape));
        assert_eq!(
            Since::from_json(&serde_json::json!({"offset": 1, "epoch": "a b"})),
            Err(InvalidSince::Epoch)
        );
        let (channel, since) = Since::from_url("chat:a@b~12~Ab3").unwrap();
        assert_eq!(channel.as_str(), "chat:a@b");
        assert_eq!(since, Since::Position(Position { offset: 12, epoch: "Ab3".into() }));
        assert_eq!(Since::from_url("user:bob~acked").unwrap().1, Since::Acked);
        for bad in ["chat:a", "chat:a~x~e", "chat:a~1~e~2", "~1~e", "chat:a~1~"] {
            assert!(Since::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn history_comes_from_the_namespace_or_the_inbox() {
        let mut ns = Namespaces::default();
        let ttl = Duration::from_secs(60);
        ns.0.insert(
            "chat".into(),
            NamespaceConfig { history_size: 10, history_ttl: ttl, ..Default::default() },
        );
        ns.0.insert("news".into(), NamespaceConfig::default());
        let inbox = InboxConfig::default();
        let ch = |s| ChannelName::parse(s).unwrap();
        assert_eq!(ns.history(&ch("chat:a"), &inbox), Some(ChannelHistory { size: 10, ttl }));
        assert_eq!(ns.history(&ch("news:a"), &inbox), None);
        assert_eq!(ns.history(&ch("nope:a"), &inbox), None);
        assert_eq!(ns.history(&ChannelName::broadcast(), &inbox), None);
        assert_eq!(ns.history(&ch("user:bob"), &inbox).unwrap().size, 1000);
        let off = InboxConfig { history_size: 0, history_ttl: Duration::ZERO };
        assert_eq!(ns.history(&ch("user:bob"), &off), None);
    }

    #[test]
    fn size_and_ttl_go_together() {
        assert!(InboxConfig::default().validate().is_ok());
        let no_ttl = InboxConfig { history_size: 5, history_ttl: Duration::ZERO };
        assert_eq!(no_ttl.validate().unwrap_err().key, "inbox.history_ttl");
        let mut ns = Namespaces::default();
        ns.0.insert("chat".into(), NamespaceConfig { client_history: true, ..Default::default() });
        assert_eq!(ns.validate().unwrap_err().key, "namespaces.chat.client_history");
    }
}
