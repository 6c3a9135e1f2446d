//! Namespaces: what clients may do with the channels of each namespace.
//!
//! A channel's namespace is the part of its name before the first `:`; channels without one
//! are governed by the namespace named `default`. A channel of a namespace that is not
//! configured is unknown: nothing may subscribe or publish to it. Personal channels
//! (`user:<id>`) and the broadcast channel are built in and cannot be configured.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::channel::{BROADCAST_CHANNEL, ChannelKind, ChannelName, PERSONAL_NAMESPACE};
use crate::config_error::ConfigError;
use crate::error::ErrorCode;
use crate::history::{ChannelHistory, InboxConfig, check_history};
use crate::pattern::ChannelPattern;

/// Reserved for Herald's own channels (the gateways' delivery canaries).
pub const INTERNAL_NAMESPACE: &str = "herald";

/// The namespace that governs channels without `:` in their name.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Options of one namespace (`[namespaces.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Authenticated clients may subscribe to its channels.
    pub subscribe: bool,
    /// Only clients granted a channel may subscribe to it, publish into it (with `publish`)
    /// or read its members: through the connection token's `channels` claim (names or
    /// patterns), or a subscription token in the `subscribe` frame. See `docs/protocol.md`,
    /// Private namespaces.
    pub private: bool,
    /// Each subscription is also put to the backend hook (`gateway.hooks`).
    pub subscribe_hook: bool,
    /// Each client publish is also put to the backend hook (`gateway.hooks`).
    pub publish_hook: bool,
    /// Clients may publish into its channels over their WebSocket (chat rooms). Messages carry
    /// the sender in `from`. Off unless configured: backends publish through the publisher API.
    pub publish: bool,
    /// Presence tracks who is in its channels (member lists and counts).
    pub presence: bool,
    /// Subscribers receive `join` and `leave` frames when members come and go.
    pub join_leave: bool,
    /// Subscribed clients may ask for the channel's members with a `presence` frame.
    pub client_presence: bool,
    /// Messages kept per channel for recovery and history reads; 0 keeps none (at most once
    /// delivery, the default). With history, messages carry an `offset` and subscribers can
    /// recover what they missed (see `docs/protocol.md`, Recovery).
    pub history_size: usize,
    /// How long a channel's history lives after its last publish. Needed with `history_size`.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Subscribed clients may page through the channel's history with a `history` frame.
    pub client_history: bool,
    /// Each client publish is also written into the backends' event stream (`[events]` with
    /// `publish` among its kinds), before it is delivered. See `docs/events.md`.
    pub events: bool,
    /// Clients may subscribe to a glob over its channel names (`events:*`) and receive the
    /// messages of every matching channel (see `docs/protocol.md`, Pattern subscriptions).
    /// Not with `subscribe_hook`, which is asked about one channel at a time.
    pub patterns: bool,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            subscribe: true,
            private: false,
            subscribe_hook: false,
            publish_hook: false,
            publish: false,
            presence: true,
            join_leave: false,
            client_presence: false,
            history_size: 0,
            history_ttl: Duration::ZERO,
            client_history: false,
            events: false,
            patterns: false,
        }
    }
}

/// Every configured namespace, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Namespaces(pub HashMap<String, NamespaceConfig>);

impl Namespaces {
    /// Refuses names that collide with the built-in channels or could never match a channel.
    /// The error names the key, `namespaces.<name>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for name in self.0.keys() {
            let key = || format!("namespaces.{name}");
            if name == PERSONAL_NAMESPACE || name == BROADCAST_CHANNEL || name == INTERNAL_NAMESPACE {
                return Err(ConfigError::new(
                    key(),
                    format!("namespace {name:?} is built in and cannot be configured"),
                ));
            }
            if ChannelName::parse(&format!("{name}:x")).is_err() || name.contains(':') {
                return Err(ConfigError::new(
                    key(),
                    format!("namespace {name:?} is not a valid channel namespace"),
                ));
            }
            let config = &self.0[name];
            check_history(&key(), config.history_size, config.history_ttl)?;
            if config.patterns && config.subscribe_hook {
                return Err(ConfigError::new(
                    format!("{}.patterns", key()),
                    "cannot be combined with subscribe_hook: the hook decides about one channel, and a \
                     pattern subscription names none",
                ));
            }
            if config.client_history && config.history_size == 0 {
                return Err(ConfigError::new(
                    format!("{}.client_history", key()),
                    "needs history_size: the namespace keeps no history to read",
                ));
            }
        }
        Ok(())
    }

    /// The options governing `channel`, or `unknown_channel` when its namespace is not
    /// configured. Built-in channels have no options and return `Ok(None)`.
    pub fn lookup(&self, channel: &ChannelName) -> Result<Option<&NamespaceConfig>, ErrorCode> {
        if !matches!(channel.kind(), ChannelKind::Regular) {
            return Ok(None);
        }
        let ns = channel.namespace().unwrap_or(DEFAULT_NAMESPACE);
        self.0.get(ns).map(Some).ok_or(ErrorCode::UnknownChannel)
    }

    /// The options governing the channels `pattern` can match, or `unknown_channel` when its
    /// namespace is not configured. The personal namespace has none: `None` (patterns over
    /// other users' channels are never allowed).
    pub fn lookup_pattern(&self, pattern: &ChannelPattern) -> Result<Option<&NamespaceConfig>, ErrorCode> {
        if pattern.namespace() == PERSONAL_NAMESPACE {
            return Ok(None);
        }
        self.0.get(pattern.namespace()).map(Some).ok_or(ErrorCode::UnknownChannel)
    }

    /// The name of a namespace that allows pattern subscriptions, if any does (for the
    /// configuration checks of engines without patterns).
    pub fn with_patterns(&self) -> Option<&str> {
        self.0.iter().find(|(_, ns)| ns.patterns).map(|(name, _)| name.as_str())
    }

    /// How `channel` keeps history: its namespace's, the inbox's for a personal channel, none
    /// for the broadcast channel, Herald's own channels and unknown namespaces.
    pub fn history(&self, channel: &ChannelName, inbox: &InboxConfig) -> Option<ChannelHistory> {
        let (size, ttl) = match channel.kind() {
            ChannelKind::Personal(_) => (inbox.history_size, inbox.history_ttl),
            ChannelKind::Broadcast => return None,
            ChannelKind::Regular => {
                let config = self.lookup(channel).ok()??;
                (config.history_size, config.history_ttl)
            }
        };
        (size > 0 && !ttl.is_zero()).then_some(ChannelHistory { size, ttl })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn channels_resolve_to_their_namespace_or_are_unknown() {
        let mut ns = Namespaces::default();
        ns.0.insert("chat".into(), NamespaceConfig { publish: true, ..Default::default() });
        assert!(ns.lookup(&ch("chat:lobby")).unwrap().unwrap().publish);
        assert_eq!(ns.lookup(&ch("news:today")), Err(ErrorCode::UnknownChannel));
        assert_eq!(ns.lookup(&ch("plain")), Err(ErrorCode::UnknownChannel));
        ns.0.insert(DEFAULT_NAMESPACE.into(), NamespaceConfig::default());
        assert!(!ns.lookup(&ch("plain")).unwrap().unwrap().publish);
        assert_eq!(ns.lookup(&ch("user:bob")), Ok(None));
        assert_eq!(ns.lookup(&ChannelName::broadcast()), Ok(None));
    }

    #[test]
    fn built_in_namespaces_cannot_be_configured() {
        let mut ns = Namespaces::default();
        ns.0.insert("user".into(), NamespaceConfig::default());
        assert_eq!(ns.validate().unwrap_err().key, "namespaces.user");
        let mut ns = Namespaces::default();
        ns.0.insert("bad name".into(), NamespaceConfig::default());
        assert_eq!(ns.validate().unwrap_err().key, "namespaces.bad name");
    }
}
