//! Channel names: validated once at the edge, cheap to clone everywhere after.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::name::InvalidName;
use crate::name::check_chars;
use crate::user::UserId;

/// Longest channel name accepted, in bytes. Redis accepts far longer ones; this bound keeps
/// per-channel bookkeeping small and predictable.
pub const MAX_CHANNEL_LEN: usize = 255;

/// The namespace of personal channels: `user:<user id>` reaches every connection of one user.
pub const PERSONAL_NAMESPACE: &str = "user";

/// The channel every connection is subscribed to by the server.
pub const BROADCAST_CHANNEL: &str = "broadcast";

/// What a channel is for, which decides who may subscribe to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind<'a> {
    /// `user:<id>`: one user's notifications, subscribed by the server on their behalf.
    Personal(&'a str),
    /// The server-wide broadcast channel, subscribed by the server for every connection.
    Broadcast,
    /// Any other channel, governed by its namespace's configuration.
    Regular,
}

/// A valid channel name. The namespace is the part before the first `:`; a name without `:`
/// belongs to the default namespace.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `s` as a channel name.
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        check_chars(s, MAX_CHANNEL_LEN)?;
        if s.starts_with(':') {
            return Err(InvalidName::EmptyNamespace);
        }
        Ok(Self(Arc::from(s)))
    }

    /// The personal channel of `user`.
    pub fn personal(user: &UserId) -> Self {
        Self(Arc::from(format!("{PERSONAL_NAMESPACE}:{}", user.as_str())))
    }

    /// The broadcast channel.
    pub fn broadcast() -> Self {
        Self(Arc::from(BROADCAST_CHANNEL))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace, or `None` for the default namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.0.split_once(':').map(|(ns, _)| ns)
    }

    pub fn kind(&self) -> ChannelKind<'_> {
        match self.0.split_once(':') {
            Some((PERSONAL_NAMESPACE, user)) => ChannelKind::Personal(user),
            None if &*self.0 == BROADCAST_CHANNEL => ChannelKind::Broadcast,
            _ => ChannelKind::Regular,
        }
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for ChannelName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Lets maps keyed by channel be searched with a plain `&str` (the hub does, once per message).
/// Sound because `Hash` and `Eq` of `ChannelName` are those of its `str`.
impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for ChannelName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(|e| serde::de::Error::custom(format!("invalid channel name: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_and_kinds_are_read_from_the_name() {
        let c = ChannelName::parse("chat:lobby").unwrap();
        assert_eq!(c.namespace(), Some("chat"));
        assert_eq!(c.kind(), ChannelKind::Regular);
        assert_eq!(ChannelName::parse("news").unwrap().namespace(), None);
        assert_eq!(ChannelName::parse("user:42").unwrap().kind(), ChannelKind::Personal("42"));
        assert_eq!(ChannelName::broadcast().kind(), ChannelKind::Broadcast);
        let u = UserId::parse("alice").unwrap();
        assert_eq!(ChannelName::personal(&u).as_str(), "user:alice");
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        assert_eq!(ChannelName::parse(""), Err(InvalidName::Empty));
        assert_eq!(ChannelName::parse("a b"), Err(InvalidName::BadChar(' ')));
        assert_eq!(ChannelName::parse("news:*"), Err(InvalidName::BadChar('*')));
        assert_eq!(ChannelName::parse(":x"), Err(InvalidName::EmptyNamespace));
        let long = "x".repeat(MAX_CHANNEL_LEN + 1);
        assert!(matches!(ChannelName::parse(&long), Err(InvalidName::TooLong { .. })));
    }
}
