//! The backends' event stream (`[events]`): which events Herald writes into a Redis Stream
//! that backends read with consumer groups (`XREADGROUP`, `XACK`, `XAUTOCLAIM`), under which
//! key, and how much of it Redis keeps. `docs/events.md` is the guide for backends.
//!
//! This is the reliable sibling of the Pub/Sub events (`presence.events_channel`, join/leave
//! frames), which stay as they are: an event in the stream waits for a consumer, one on
//! Pub/Sub reaches whoever listens at that moment.

use serde::{Deserialize, Serialize};

use crate::config_error::ConfigError;

/// The hash tag every presence key carries on a Redis Cluster. Presence writes its events in
/// the same script as the state change, so on a cluster the stream must live in that slot.
pub const PRESENCE_HASH_TAG: &str = "{presence}";

/// The hash tag of part `part` of presence, when presence is split in parts
/// (`presence.parts`, 16 by default on a cluster): `{presence:<part>}`. Each part has its own
/// slot, and its own event stream.
pub fn presence_part_tag(part: usize) -> String {
    format!("{{presence:{part}}}")
}

/// One kind of event in the stream; the entry's `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A user's first connection anywhere (after the grace period of an `offline`).
    Online,
    /// A user's last connection gone, once the grace period passed.
    Offline,
    /// A user's first connection in a channel that presence tracks.
    Join,
    /// A user's last connection out of such a channel, once the grace period passed.
    Leave,
    /// A client's `publish` into a namespace with `events = true`.
    Publish,
    /// A connection opened, as its gateway reported it to presence; not written unless
    /// listed in `events.kinds`.
    Connect,
    /// A connection closed (or its gateway's lease ran out); not written unless listed in
    /// `events.kinds`.
    Disconnect,
}

impl EventKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [EventKind; 7] = [
        EventKind::Online,
        EventKind::Offline,
        EventKind::Join,
        EventKind::Leave,
        EventKind::Publish,
        EventKind::Connect,
        EventKind::Disconnect,
    ];

    /// The kinds written unless `events.kinds` says otherwise: all but `connect` and
    /// `disconnect`, which come with every reconnect and are asked for only where wanted.
    pub const DEFAULT: [EventKind; 5] =
        [EventKind::Online, EventKind::Offline, EventKind::Join, EventKind::Leave, EventKind::Publish];

    /// The kinds presence writes, in its scripts.
    pub const PRESENCE: [EventKind; 6] = [
        EventKind::Online,
        EventKind::Offline,
        EventKind::Join,
        EventKind::Leave,
        EventKind::Connect,
        EventKind::Disconnect,
    ];

    /// The name as in the configuration and in the entry's `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Online => "online",
            EventKind::Offline => "offline",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Publish => "publish",
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
        }
    }
}

/// Settings of the event stream (`[events]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Write events into the stream. Needs Redis: the standalone mode refuses it.
    pub enabled: bool,
    /// The stream's name; its Redis key is `<redis.prefix><stream>` (`herald:events`), on a
    /// Redis Cluster `<redis.prefix>{presence}.<stream>` so that it shares the slot of the
    /// presence keys. With `per_kind`, one stream per kind: `<key>:<kind>`.
    pub stream: String,
    /// One stream per kind (`herald:events:online`, ...) instead of one for all.
    pub per_kind: bool,
    /// The kinds written; the others are not.
    pub kinds: Vec<EventKind>,
    /// About how many entries each stream keeps (`XADD ... MAXLEN ~ max_len`): older entries
    /// are trimmed, read or not, so consumers that fall further behind lose the oldest.
    pub max_len: u64,
}

/// Longest stream name accepted.
const MAX_STREAM_NAME: usize = 100;

/// Most entries a stream may be configured to keep. A stream entry of presence takes about
/// 100 bytes of Redis memory, so this bound is about 10 GB.
pub const MAX_STREAM_LEN: u64 = 100_000_000;

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            stream: "events".into(),
            per_kind: false,
            kinds: EventKind::DEFAULT.to_vec(),
            max_len: 100_000,
        }
    }
}

impl EventsConfig {
    /// Whether events of `kind` are written.
    pub fn writes(&self, kind: EventKind) -> bool {
        self.enabled && self.kinds.contains(&kind)
    }

    /// The Redis key of `kind`'s stream, or `None` when that kind is not written. `prefix`
    /// is `redis.prefix`; `cluster` whether Redis is a cluster.
    pub fn key(&self, kind: EventKind, prefix: &str, cluster: bool) -> Option<String> {
        if !self.writes(kind) {
            return None;
        }
        let base = if cluster {
            format!("{prefix}{PRESENCE_HASH_TAG}.{}", self.stream)
        } else {
            format!("{prefix}{}", self.stream)
        };
        Some(if self.per_kind { format!("{base}:{}", kind.as_str()) } else { base })
    }

    /// The Redis key of `kind`'s stream in part `part` of presence (`presence.parts` > 1):
    /// `<prefix>{presence:<part>}.<stream>`, with `per_kind` `...:<kind>`; `None` when that
    /// kind is not written. Presence writes a user's events in the user's part.
    pub fn part_key(&self, kind: EventKind, prefix: &str, part: usize) -> Option<String> {
        if !self.writes(kind) {
            return None;
        }
        let base = format!("{prefix}{}.{}", presence_part_tag(part), self.stream);
        Some(if self.per_kind { format!("{base}:{}", kind.as_str()) } else { base })
    }

    /// Refuses a stream name that would clash with Herald's other keys or break the cluster
    /// slot, an empty list of kinds and a length out of range; messages name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.stream;
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.');
        if name.is_empty() || name.len() > MAX_STREAM_NAME || !name.chars().all(allowed) {
            return Err(ConfigError::new(
                "events.stream",
                format!("{name:?} must be 1 to {MAX_STREAM_NAME} of A-Z a-z 0-9 : _ - ."),
            ));
        }
        if name.starts_with("presence:") {
            return Err(ConfigError::new(
                "events.stream",
                format!("{name:?} would share the key space of presence (`presence:`)"),
            ));
        }
        if self.enabled && self.kinds.is_empty() {
            return Err(ConfigError::new("events.kinds", "name at least one kind, or set enabled = false"));
        }
        if self.max_len == 0 || self.max_len > MAX_STREAM_LEN {
            return Err(ConfigError::new("events.max_len", format!("must be 1 to {MAX_STREAM_LEN}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_prefix_the_cluster_tag_and_the_kind() {
        let on = EventsConfig { enabled: true, ..Default::default() };
        assert_eq!(on.key(EventKind::Join, "herald:", false).as_deref(), Some("herald:events"));
        assert_eq!(on.key(EventKind::Join, "herald:", true).as_deref(), Some("herald:{presence}.events"));
        let split = EventsConfig { per_kind: true, kinds: vec![EventKind::Online], ..on };
        assert_eq!(split.key(EventKind::Online, "h:", false).as_deref(), Some("h:events:online"));
        assert_eq!(split.key(EventKind::Offline, "h:", false), None, "not a configured kind");
        assert_eq!(EventsConfig::default().key(EventKind::Online, "h:", false), None, "disabled");
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let bad = |c: EventsConfig| c.validate().unwrap_err().key;
        assert_eq!(bad(EventsConfig { stream: "a{b}".into(), ..Default::default() }), "events.stream");
        assert_eq!(bad(EventsConfig { stream: "presence:x".into(), ..Default::default() }), "events.stream");
        assert_eq!(bad(EventsConfig { stream: String::new(), ..Default::default() }), "events.stream");
        assert_eq!(bad(EventsConfig { enabled: true, kinds: vec![], ..Default::default() }), "events.kinds");
        assert_eq!(bad(EventsConfig { max_len: 0, ..Default::default() }), "events.max_len");
        assert_eq!(EventsConfig::default().validate(), Ok(()));
    }
}
