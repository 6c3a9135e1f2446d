//! API keys: how backends authenticate to the publisher and presence APIs, over HTTP in the
//! `Authorization` header and over gRPC in the `authorization` metadata entry, both as
//! `Bearer <key>`, and what each key may do once it is in.
//!
//! A key is configured either in the flat list (`api_keys`: every operation, every namespace,
//! named `api_keys[0]`, `api_keys[1]`, ... by position) or as a scoped key (`[[<api>.keys]]`:
//! a name, the key or its SHA-256, the [`Operation`]s it may use and the namespaces it may
//! touch). Either way only the SHA-256 of a key is kept, and a presented key is hashed and
//! compared with every configured hash in constant time.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::channel::{ChannelKind, ChannelName};
use crate::config_error::ConfigError;
use crate::namespace::DEFAULT_NAMESPACE;

/// Shortest API key accepted. Keys are bearer secrets compared on every request; a short key
/// can be guessed, so a configuration with one does not start.
pub const MIN_API_KEY_LEN: usize = 16;

/// What a key may be allowed to do. Each HTTP route and gRPC method of the two APIs needs
/// exactly one of these (`docs/publisher-api.md` lists which).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Publish to a channel of a namespace (`/v1/publish`, `/v1/publish/batch`).
    Publish,
    /// Publish to the broadcast channel, which every connection receives.
    Broadcast,
    /// Publish to a user's personal channel (`/v1/users/{user}/notify`).
    Notify,
    /// Read a channel's history or a user's inbox.
    HistoryRead,
    /// Read who is online and in which channel, and the totals.
    PresenceRead,
    /// Report a gateway's connections to presence: what gateways do, not backends.
    PresenceReport,
}

impl Operation {
    /// Every operation, as `"*"` in a key's `operations` grants.
    pub const ALL: [Operation; 6] = [
        Self::Publish,
        Self::Broadcast,
        Self::Notify,
        Self::HistoryRead,
        Self::PresenceRead,
        Self::PresenceReport,
    ];

    /// The name used in the configuration and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Broadcast => "broadcast",
            Self::Notify => "notify",
            Self::HistoryRead => "history_read",
            Self::PresenceRead => "presence_read",
            Self::PresenceReport => "presence_report",
        }
    }

    /// What writing to `channel` needs: `broadcast` for the broadcast channel, `notify` for a
    /// personal channel, `publish` for the rest. So `/v1/publish` to `user:alice` needs what
    /// `/v1/users/alice/notify` needs.
    pub fn write_to(channel: &ChannelName) -> Self {
        match channel.kind() {
            ChannelKind::Broadcast => Self::Broadcast,
            ChannelKind::Personal(_) => Self::Notify,
            ChannelKind::Regular => Self::Publish,
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scoped key as configured (`[[publisher.keys]]`, `[[presence.keys]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Names the key in metrics (`key` label), logs and refusals; never secret.
    pub name: String,
    /// The key itself. Prefer `key_sha256`, so the configuration holds no secret.
    #[serde(default)]
    pub key: Option<String>,
    /// The SHA-256 of the key, 64 hex digits (`printf %s "$KEY" | sha256sum`).
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// What the key may do: [`Operation`] names, or `"*"` for all.
    pub operations: Vec<String>,
    /// The namespaces whose channels the key may touch, or `"*"` for all. Channels without a
    /// namespace are in `default`. The broadcast and personal channels belong to no
    /// namespace: the `broadcast` and `notify` operations govern them.
    pub namespaces: Vec<String>,
}

/// What one authenticated key may do. Requests carry it from the key check to the handler.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    /// The key's name (`billing`, or `api_keys[0]` for a key of the flat list).
    pub name: Arc<str>,
    operations: u8,
    /// `None`: every namespace.
    namespaces: Option<Box<[String]>>,
}

/// Why a valid key may not do what it asked; the message is shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAllowed(pub String);

impl Grant {
    /// Everything, for a key of the flat list.
    fn everything(name: String) -> Self {
        Self { name: name.into(), operations: u8::MAX, namespaces: None }
    }

    /// Whether this key may use `operation`; `channel` is the channel it touches, if any,
    /// whose namespace must then be one of the key's (for regular channels).
    pub fn allows(&self, operation: Operation, channel: Option<&ChannelName>) -> Result<(), NotAllowed> {
        if self.operations & operation.bit() == 0 {
            return Err(NotAllowed(format!("the API key {:?} may not use {operation}", &*self.name)));
        }
        let (Some(namespaces), Some(channel)) = (&self.namespaces, channel) else { return Ok(()) };
        if !matches!(channel.kind(), ChannelKind::Regular) {
            return Ok(());
        }
        let namespace = channel.namespace().unwrap_or(DEFAULT_NAMESPACE);
        if namespaces.iter().any(|n| n == namespace) {
            Ok(())
        } else {
            Err(NotAllowed(format!(
                "the API key {:?} may not touch namespace {namespace:?} (channel {channel})",
                &*self.name
            )))
        }
    }
}

/// One accepted key: the SHA-256 of its secret and what it may do.
struct Entry {
    hash: [u8; 32],
    grant: Arc<Grant>,
}

/// The accepted API keys. Cheap to clone (gRPC interceptors are cloned per call).
#[derive(Clone)]
pub struct ApiKeys {
    keys: Arc<[Entry]>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|e| &*e.grant.name)).finish()
    }
}

impl ApiKeys {
    /// The flat list alone, each key allowed everything and named `api_keys[i]`. Keys are
    /// not checked: [`ApiKeys::from_config`] does that.
    pub fn new(keys: &[String]) -> Self {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Entry {
                hash: sha256(k),
                grant: Arc::new(Grant::everything(format!("api_keys[{i}]"))),
            })
            .collect();
        Self { keys }
    }

    /// The keys of the section `section` (`publisher`, `presence`): the flat list `legacy`
    /// and the scoped `keys`. Refuses, naming the key, a short or spaced key, a hash that is
    /// not 64 hex digits, a key with both or neither of `key` and `key_sha256`, an unknown
    /// operation, an empty list, a name used twice, and the same secret configured twice.
    pub fn from_config(section: &str, legacy: &[String], keys: &[KeyConfig]) -> Result<Self, ConfigError> {
        let mut entries = Vec::with_capacity(legacy.len() + keys.len());
        for (i, key) in legacy.iter().enumerate() {
            check_secret(key)
                .map_err(|problem| ConfigError::new(format!("{section}.api_keys[{i}]"), problem))?;
            entries.push(Entry {
                hash: sha256(key),
                grant: Arc::new(Grant::everything(format!("api_keys[{i}]"))),
            });
        }
        for (i, key) in keys.iter().enumerate() {
            let at = |field: &str| format!("{section}.keys[{i}]{field}");
            let named = |problem: String| format!("key {:?}: {problem}", key.name);
            if key.name.is_empty()
                || !key.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(ConfigError::new(
                    at(".name"),
                    format!("{:?}: 1 or more of A-Z, a-z, 0-9, `_`, `-`, `.`", key.name),
                ));
            }
            if entries.iter().any(|e: &Entry| *e.grant.name == *key.name) {
                return Err(ConfigError::new(at(".name"), named("the name is used twice".into())));
            }
            let hash = match (&key.key, &key.key_sha256) {
                (Some(secret), None) => {
                    check_secret(secret).map_err(|problem| ConfigError::new(at(".key"), named(problem)))?;
                    sha256(secret)
                }
                (None, Some(hex)) => parse_hex(hex).ok_or_else(|| {
                    ConfigError::new(at(".key_sha256"), named("must be 64 hex digits (a SHA-256)".into()))
                })?,
                _ => {
                    return Err(ConfigError::new(
                        at(""),
                        named("give exactly one of `key` and `key_sha256`".into()),
                    ));
                }
            };
            let mut operations = 0u8;
            for op in &key.operations {
                operations |= match op.as_str() {
                    "*" => u8::MAX,
                    name => Operation::parse(name).map(Operation::bit).ok_or_else(|| {
                        let known: Vec<_> = Operation::ALL.iter().map(|o| o.as_str()).collect();
                        ConfigError::new(
                            at(".operations"),
                            named(format!(
                                "unknown operation {name:?}; one of {}, or \"*\"",
                                known.join(", ")
                            )),
                        )
                    })?,
                };
            }
            if operations == 0 {
                return Err(ConfigError::new(at(".operations"), named("list at least one operation".into())));
            }
            if key.namespaces.is_empty() {
                return Err(ConfigError::new(
                    at(".namespaces"),
                    named("list at least one namespace, or \"*\" for all".into()),
                ));
            }
            let namespaces =
                (!key.namespaces.iter().any(|n| n == "*")).then(|| key.namespaces.clone().into());
            let grant = Grant { name: key.name.as_str().into(), operations, namespaces };
            entries.push(Entry { hash, grant: Arc::new(grant) });
        }
        // Scoped keys only: a repeated key in the flat list was always accepted, and harmless.
        for (i, entry) in entries.iter().enumerate().skip(legacy.len()) {
            if let Some(other) = entries[..i].iter().find(|e| e.hash == entry.hash) {
                return Err(ConfigError::new(
                    format!("{section}.keys"),
                    format!("keys {:?} and {:?} are the same secret", &*other.grant.name, &*entry.grant.name),
                ));
            }
        }
        Ok(Self { keys: entries.into() })
    }

    /// The names of the keys, in configuration order (flat list first).
    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.keys.iter().map(|e| &e.grant.name)
    }

    /// Whether there is no key at all (every request would be refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// What the key in `Bearer <key>` (scheme case-insensitive, as RFC 9110 asks) may do, when
    /// it is one of the configured keys.
    ///
    /// The presented key is hashed with SHA-256 and every configured hash is compared with
    /// it in constant time; the match is selected without branching, so the response time
    /// tells an attacker neither how much of a guess was right nor which key matched.
    pub fn identify(&self, authorization: Option<&[u8]>) -> Option<Arc<Grant>> {
        let presented = sha256_bytes(authorization.and_then(bearer)?);
        let (mut found, mut index) = (subtle::Choice::from(0), 0u32);
        for (i, entry) in self.keys.iter().enumerate() {
            let hit = entry.hash.ct_eq(&presented);
            index.conditional_assign(&(i as u32), hit);
            found |= hit;
        }
        bool::from(found).then(|| self.keys[index as usize].grant.clone())
    }

    /// Whether `authorization` carries one of the configured keys.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        self.identify(authorization).is_some()
    }
}

/// Refuses a key that is short or cannot travel in an HTTP header.
fn check_secret(key: &str) -> Result<(), String> {
    if key.chars().count() < MIN_API_KEY_LEN {
        return Err(format!("keys must be at least {MIN_API_KEY_LEN} characters long"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "keys must not contain whitespace or control characters (they travel in an HTTP header)".into()
        );
    }
    Ok(())
}

fn sha256(key: &str) -> [u8; 32] {
    sha256_bytes(key.as_bytes())
}

fn sha256_bytes(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// 64 hex digits (either case) as 32 bytes.
fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The credentials of a `Bearer` authorization value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.strip_prefix(b" ")?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(name: &str, operations: &[&str], namespaces: &[&str]) -> KeyConfig {
        KeyConfig {
            name: name.into(),
            key: Some(format!("{name}-secret-0123456789")),
            key_sha256: None,
            operations: operations.iter().map(|s| s.to_string()).collect(),
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn only_configured_bearer_keys_pass() {
        let keys = ApiKeys::new(&["0123456789abcdef".into(), "fedcba9876543210".into()]);
        assert!(keys.accepts(Some(b"Bearer 0123456789abcdef")));
        assert_eq!(&*keys.identify(Some(b"bearer fedcba9876543210")).unwrap().name, "api_keys[1]");
        assert!(!keys.accepts(Some(b"Bearer 0123456789abcdeX")));
        assert!(!keys.accepts(Some(b"Bearer 0123456789abcde")));
        assert!(!keys.accepts(Some(b"Basic 0123456789abcdef")));
        assert!(!keys.accepts(Some(b"Bearer ")));
        assert!(!keys.accepts(Some(b"0123456789abcdef")));
        assert!(!keys.accepts(None));
    }

    #[test]
    fn no_keys_means_nobody_gets_in() {
        let keys = ApiKeys::new(&[]);
        assert!(!keys.accepts(Some(b"Bearer ")));
        assert!(!keys.accepts(Some(b"Bearer anything-at-all-long")));
    }

    #[test]
    fn scoped_keys_get_their_operations_and_namespaces_only() {
        let hashed = KeyConfig {
            key: None,
            // printf %s hashed-secret-0123456789 | sha256sum
            key_sha256: Some(hex(&sha256("hashed-secret-0123456789"))),
            ..scoped("hashed", &["*"], &["*"])
        };
        let keys = ApiKeys::from_config(
            "publisher",
            &["legacy-key-0123456789".into()],
            &[scoped("billing", &["publish"], &["chat"]), hashed],
        )
        .unwrap();
        let legacy = keys.identify(Some(b"Bearer legacy-key-0123456789")).unwrap();
        assert_eq!(&*legacy.name, "api_keys[0]");
        assert_eq!(legacy.allows(Operation::Broadcast, Some(&ch("broadcast"))), Ok(()));
        let billing = keys.identify(Some(b"Bearer billing-secret-0123456789")).unwrap();
        assert_eq!(billing.allows(Operation::Publish, Some(&ch("chat:a"))), Ok(()));
        let e = billing.allows(Operation::Publish, Some(&ch("news:a"))).unwrap_err();
        assert!(e.0.contains("namespace \"news\""), "{e}");
        assert!(billing.allows(Operation::Publish, Some(&ch("plain"))).is_err(), "`default` is not listed");
        assert!(billing.allows(Operation::PresenceRead, None).is_err());
        assert_eq!(Operation::write_to(&ch("user:bob")), Operation::Notify);
        let hashed = keys.identify(Some(b"Bearer hashed-secret-0123456789")).unwrap();
        assert_eq!(&*hashed.name, "hashed");
        assert_eq!(hashed.allows(Operation::PresenceReport, Some(&ch("x:y"))), Ok(()));
    }

    #[test]
    fn bad_keys_are_refused_naming_them() {
        let err = |keys: &[KeyConfig]| ApiKeys::from_config("publisher", &[], keys).unwrap_err();
        let e = err(&[scoped("a", &["pubish"], &["*"])]);
        assert_eq!(e.key, "publisher.keys[0].operations");
        assert!(e.to_string().contains("key \"a\"") && e.to_string().contains("pubish"), "{e}");
        let e = err(&[KeyConfig { key_sha256: Some("abc".into()), ..scoped("b", &["*"], &["*"]) }]);
        assert_eq!(e.key, "publisher.keys[0]");
        let e =
            err(&[KeyConfig { key: None, key_sha256: Some("zz".repeat(32)), ..scoped("b", &["*"], &["*"]) }]);
        assert_eq!(e.key, "publisher.keys[0].key_sha256");
        assert_eq!(err(&[scoped("c", &[], &["*"])]).key, "publisher.keys[0].operations");
        assert_eq!(err(&[scoped("c", &["*"], &[])]).key, "publisher.keys[0].namespaces");
        assert_eq!(err(&[scoped("c d", &["*"], &["*"])]).key, "publisher.keys[0].name");
        assert_eq!(
            err(&[scoped("c", &["*"], &["*"]), scoped("c", &["*"], &["*"])]).key,
            "publisher.keys[1].name"
        );
        let short = KeyConfig { key: Some("short".into()), ..scoped("d", &["*"], &["*"]) };
        assert_eq!(err(&[short]).key, "publisher.keys[0].key");
        let e = ApiKeys::from_config("presence", &["0123456789abcdef".into(), "x".into()], &[]).unwrap_err();
        assert_eq!(e.key, "presence.api_keys[1]");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
