//! Who may subscribe and publish where. The one place channel permissions are decided.
//!
//! A channel of a `private` namespace needs a grant on top of the namespace's settings: the
//! connection token's `channels` claim (names or patterns, see `pattern`), or a
//! subscription token, which the connection checks (`crate::grants`) when this module says
//! [`Access::NeedsToken`].

use herald_protocol::{ChannelKind, ChannelName, ChannelPattern, ErrorCode, Namespaces};

use crate::auth::Identity;
use crate::pattern;

/// A refusal, with a message for the client.
pub type Denied = (ErrorCode, String);

/// What a subscription the namespace allows still needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing more: the namespace is not private.
    Open,
    /// A private channel the connection token's `channels` claim grants.
    Claim,
    /// A private channel the claim does not grant: only a subscription token will do.
    NeedsToken,
}

/// Whether `who` may subscribe to `channel`, and what it still needs for a private one.
/// `personal_managed`: as for [`can_subscribe`].
pub fn subscribe_access(
    who: &Identity,
    channel: &ChannelName,
    namespaces: &Namespaces,
    personal_managed: bool,
) -> Result<Access, Denied> {
    match channel.kind() {
        ChannelKind::Personal(user) if user == who.user.as_str() => {
            if personal_managed {
                Err((ErrorCode::AlreadySubscribed, "your personal channel is subscribed for you".into()))
            } else {
                Ok(Access::Open)
            }
        }
        ChannelKind::Personal(_) => {
            Err((ErrorCode::Forbidden, "another user's personal channel cannot be subscribed to".into()))
        }
        ChannelKind::Broadcast => {
            Err((ErrorCode::AlreadySubscribed, "the broadcast channel is subscribed for you".into()))
        }
        ChannelKind::Regular => match namespaces.lookup(channel) {
            Err(code) => Err((code, unknown(channel))),
            Ok(Some(ns)) if ns.subscribe && !ns.private => Ok(Access::Open),
            Ok(Some(ns)) if ns.subscribe => Ok(private_access(who, channel)),
            Ok(_) => Err((ErrorCode::Forbidden, format!("subscribing to {channel} is not allowed"))),
        },
    }
}

/// Whether `who` may subscribe to `pattern`. The pattern is judged as a whole, by its
/// namespace, never by the channels it happens to match: the namespace must allow
/// subscribing and `patterns`; in a private one the connection token's `channels` claim must
/// list the pattern itself, character for character (a claim entry `vip:*` grants the
/// pattern `vip:*`, whose `*` reaches across `:`, only because it is written the same).
/// Personal channels are never reached by a pattern.
pub fn pattern_access(
    who: &Identity,
    pattern: &ChannelPattern,
    namespaces: &Namespaces,
) -> Result<(), Denied> {
    let ns = pattern.namespace();
    match namespaces.lookup_pattern(pattern) {
        Err(code) => Err((code, format!("unknown pattern {pattern}: namespace {ns:?} is not configured"))),
        Ok(None) => Err((ErrorCode::Forbidden, "a pattern cannot reach personal channels".into())),
        Ok(Some(config)) if !config.subscribe => {
            Err((ErrorCode::Forbidden, format!("subscribing to namespace {ns:?} is not allowed")))
        }
        Ok(Some(config)) if !config.patterns => Err((
            ErrorCode::Forbidden,
            format!("namespace {ns:?} does not allow pattern subscriptions (`patterns = true`)"),
        )),
        Ok(Some(config)) if config.private && !claim_lists(who, pattern) => Err((
            ErrorCode::Forbidden,
            format!("{ns:?} is private and the token's `channels` claim does not list the pattern {pattern}"),
        )),
        Ok(Some(_)) => Ok(()),
    }
}

/// Whether the `channels` claim lists `pattern` itself.
pub fn claim_lists(who: &Identity, pattern: &ChannelPattern) -> bool {
    who.channels.as_deref().is_some_and(|claim| claim.iter().any(|entry| **entry == *pattern.as_str()))
}

/// Whether the connection token's `channels` claim grants `channel`.
pub fn claim_grants(who: &Identity, channel: &ChannelName) -> bool {
    who.channels.as_deref().is_some_and(|claim| pattern::any_matches(claim, channel.as_str()))
}

fn private_access(who: &Identity, channel: &ChannelName) -> Access {
    if claim_grants(who, channel) { Access::Claim } else { Access::NeedsToken }
}

/// Whether `channel` belongs to a private namespace.
pub fn is_private(channel: &ChannelName, namespaces: &Namespaces) -> bool {
    matches!(namespaces.lookup(channel), Ok(Some(ns)) if ns.private)
}

/// Whether `who` may subscribe to `channel` without a subscription token (the connect URL's
/// channels, which cannot carry one). `personal_managed`: whether the server subscribes every
/// connection to its user's personal channel (`gateway.personal_channel`); where it does not,
/// users may subscribe to their own.
pub fn can_subscribe(
    who: &Identity,
    channel: &ChannelName,
    namespaces: &Namespaces,
    personal_managed: bool,
) -> Result<(), Denied> {
    match subscribe_access(who, channel, namespaces, personal_managed)? {
        Access::Open | Access::Claim => Ok(()),
        Access::NeedsToken => Err((
            ErrorCode::Forbidden,
            format!("{channel} is private and the token's `channels` claim does not grant it"),
        )),
    }
}

/// The channels listed in a connect URL's `subscribe` parameter (comma-separated), checked as
/// if each came in a `subscribe` frame. Repeated names count once; at most `max` channels.
pub fn connect_subscriptions(
    who: &Identity,
    list: &str,
    namespaces: &Namespaces,
    personal_managed: bool,
    max: usize,
) -> Result<Vec<ChannelName>, Denied> {
    let mut channels: Vec<ChannelName> = Vec::new();
    for name in list.split(',').filter(|name| !name.is_empty()) {
        let channel = ChannelName::parse(name)
            .map_err(|e| (ErrorCode::InvalidChannel, format!("invalid channel name {name:?}: {e}")))?;
        if channels.contains(&channel) {
            continue;
        }
        can_subscribe(who, &channel, namespaces, personal_managed)?;
        if channels.len() == max {
            return Err((ErrorCode::LimitExceeded, format!("at most {max} subscriptions per connection")));
        }
        channels.push(channel);
    }
    Ok(channels)
}

/// Whether `who` may publish into `channel` from a WebSocket. `token_grant`: whether the
/// connection holds a live subscription token for `channel` (a private channel's other grant).
pub fn can_publish(
    who: &Identity,
    channel: &ChannelName,
    namespaces: &Namespaces,
    token_grant: bool,
) -> Result<(), Denied> {
    match namespaces.lookup(channel) {
        Err(code) => Err((code, unknown(channel))),
        Ok(Some(ns)) if ns.publish && ns.private && !token_grant && !claim_grants(who, channel) => {
            Err((ErrorCode::Forbidden, not_granted(channel)))
        }
        Ok(Some(ns)) if ns.publish => Ok(()),
        Ok(_) => Err((ErrorCode::Forbidden, format!("clients may not publish into {channel}"))),
    }
}

/// Whether a client may ask for the members of `channel` (it must also be subscribed to it).
/// `granted`: for a private channel, whether the connection holds a grant for it.
pub fn can_query_presence(
    channel: &ChannelName,
    namespaces: &Namespaces,
    granted: bool,
) -> Result<(), Denied> {
    match namespaces.lookup(channel) {
        Err(code) => Err((code, unknown(channel))),
        Ok(Some(ns)) if ns.private && !granted => Err((ErrorCode::Forbidden, not_granted(channel))),
        Ok(Some(ns)) if ns.presence && ns.client_presence => Ok(()),
        Ok(_) => Err((ErrorCode::Forbidden, format!("the members of {channel} are not shown to clients"))),
    }
}

fn not_granted(channel: &ChannelName) -> String {
    format!(
        "{channel} is private: it needs the token's `channels` claim or a subscription to it with a \
         subscription token"
    )
}

fn unknown(channel: &ChannelName) -> String {
    match channel.namespace() {
        Some(ns) => format!("unknown channel {channel}: namespace {ns:?} is not configured"),
        None => format!("unknown channel {channel}: channels without a namespace are not configured"),
    }
}

#[cfg(test)]
mod tests {
    use herald_protocol::{NamespaceConfig, UserId};

    use super::*;

    fn who(user: &str) -> Identity {
        Identity { user: UserId::parse(user).unwrap(), expires_at: None, info: None, channels: None }
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn personal_channels_belong_to_their_user_only() {
        let ns = Namespaces::default();
        for managed in [true, false] {
            let denied = can_subscribe(&who("a"), &ch("user:b"), &ns, managed).unwrap_err();
            assert_eq!(denied.0, ErrorCode::Forbidden);
        }
        let own = |managed| can_subscribe(&who("a"), &ch("user:a"), &ns, managed);
        assert_eq!(own(true).unwrap_err().0, ErrorCode::AlreadySubscribed);
        assert!(own(false).is_ok(), "without gateway.personal_channel users subscribe to their own");
        assert_eq!(can_publish(&who("a"), &ch("user:b"), &ns, false).unwrap_err().0, ErrorCode::Forbidden);
        assert_eq!(
            can_publish(&who("a"), &ChannelName::broadcast(), &ns, false).unwrap_err().0,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn namespaces_decide_the_rest() {
        let mut ns = Namespaces::default();
        ns.0.insert("chat".into(), NamespaceConfig { publish: true, ..Default::default() });
        ns.0.insert("news".into(), NamespaceConfig::default());
        ns.0.insert("internal".into(), NamespaceConfig { subscribe: false, ..Default::default() });
        assert!(can_subscribe(&who("a"), &ch("chat:x"), &ns, true).is_ok());
        assert!(can_publish(&who("a"), &ch("chat:x"), &ns, false).is_ok());
        assert!(can_subscribe(&who("a"), &ch("news:x"), &ns, true).is_ok());
        assert_eq!(can_publish(&who("a"), &ch("news:x"), &ns, false).unwrap_err().0, ErrorCode::Forbidden);
        let denied = |name| can_subscribe(&who("a"), &ch(name), &ns, true).unwrap_err().0;
        assert_eq!(denied("internal:x"), ErrorCode::Forbidden);
        assert_eq!(denied("other:x"), ErrorCode::UnknownChannel);
    }

    #[test]
    fn connect_subscriptions_are_checked_like_subscribe_frames() {
        let mut ns = Namespaces::default();
        ns.0.insert("chat".into(), NamespaceConfig::default());
        let list = |s: &str, max| connect_subscriptions(&who("a"), s, &ns, true, max);
        assert_eq!(list("chat:x,,chat:y,chat:x", 2).unwrap(), vec![ch("chat:x"), ch("chat:y")]);
        assert!(list("", 2).unwrap().is_empty());
        assert_eq!(list("chat:x,chat:y,chat:z", 2).unwrap_err().0, ErrorCode::LimitExceeded);
        assert_eq!(list("chat:x,bad name", 2).unwrap_err().0, ErrorCode::InvalidChannel);
        assert_eq!(list("other:x", 2).unwrap_err().0, ErrorCode::UnknownChannel);
        assert_eq!(list("user:b", 2).unwrap_err().0, ErrorCode::Forbidden);
        assert_eq!(list("broadcast", 2).unwrap_err().0, ErrorCode::AlreadySubscribed);
        assert_eq!(list("user:a", 2).unwrap_err().0, ErrorCode::AlreadySubscribed);
        let unmanaged = connect_subscriptions(&who("a"), "user:a,chat:x", &ns, false, 2).unwrap();
        assert_eq!(unmanaged, vec![ch("user:a"), ch("chat:x")]);
    }

    fn with_claim(user: &str, claim: &[&str]) -> Identity {
        Identity { channels: Some(claim.iter().map(|c| Box::from(*c)).collect()), ..who(user) }
    }

    /// A private namespace grants through the `channels` claim, else asks for a subscription
    /// token; the connect URL, which cannot carry one, is refused.
    #[test]
    fn private_namespaces_need_a_grant() {
        let mut ns = Namespaces::default();
        let private =
            NamespaceConfig { private: true, publish: true, client_presence: true, ..Default::default() };
        ns.0.insert("vip".into(), private);
        ns.0.insert("chat".into(), NamespaceConfig::default());
        let granted = with_claim("a", &["vip:gold", "vip:team-*"]);
        let access = |who: &Identity, name| subscribe_access(who, &ch(name), &ns, true).unwrap();
        assert_eq!(access(&granted, "vip:gold"), Access::Claim);
        assert_eq!(access(&granted, "vip:team-red"), Access::Claim);
        assert_eq!(access(&granted, "vip:silver"), Access::NeedsToken);
        assert_eq!(access(&who("a"), "vip:gold"), Access::NeedsToken, "no claim, no grant");
        assert_eq!(access(&who("a"), "chat:x"), Access::Open);
        assert!(can_subscribe(&granted, &ch("vip:gold"), &ns, true).is_ok());
        let refused = can_subscribe(&granted, &ch("vip:silver"), &ns, true).unwrap_err();
        assert_eq!(refused.0, ErrorCode::Forbidden);
        let list = connect_subscriptions(&granted, "chat:x,vip:silver", &ns, true, 8);
        assert_eq!(list.unwrap_err().0, ErrorCode::Forbidden, "connect-time channels are checked too");
        assert!(is_private(&ch("vip:x"), &ns) && !is_private(&ch("chat:x"), &ns));
    }

    fn pat(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).unwrap()
    }

    /// A pattern is judged by its namespace as a whole; in a private one the claim must list
    /// the pattern itself.
    #[test]
    fn patterns_need_their_namespace_and_a_grant_as_a_whole() {
        let mut ns = Namespaces::default();
        ns.0.insert("events".into(), NamespaceConfig { patterns: true, ..Default::default() });
        ns.0.insert("chat".into(), NamespaceConfig::default());
        ns.0.insert(
            "closed".into(),
            NamespaceConfig { patterns: true, subscribe: false, ..Default::default() },
        );
        ns.0.insert("vip".into(), NamespaceConfig { patterns: true, private: true, ..Default::default() });
        let denied = |who: &Identity, p| pattern_access(who, &pat(p), &ns).unwrap_err().0;
        assert!(pattern_access(&who("a"), &pat("events:*"), &ns).is_ok());
        assert_eq!(denied(&who("a"), "chat:*"), ErrorCode::Forbidden, "patterns = false");
        assert_eq!(denied(&who("a"), "closed:*"), ErrorCode::Forbidden);
        assert_eq!(denied(&who("a"), "other:*"), ErrorCode::UnknownChannel);
        assert_eq!(denied(&who("a"), "user:*"), ErrorCode::Forbidden);
        assert_eq!(denied(&who("a"), "vip:*"), ErrorCode::Forbidden, "no claim");
        let granted = with_claim("a", &["vip:gold-*", "vip:silver"]);
        assert!(pattern_access(&granted, &pat("vip:gold-*"), &ns).is_ok());
        assert_eq!(denied(&granted, "vip:gold-?"), ErrorCode::Forbidden, "listed exactly, or not at all");
        assert_eq!(denied(&granted, "vip:*"), ErrorCode::Forbidden, "wider than the claim");
    }

    /// Publishing and reading members of a private channel take the same grant.
    #[test]
    fn private_publish_and_presence_need_the_grant() {
        let mut ns = Namespaces::default();
        let private =
            NamespaceConfig { private: true, publish: true, client_presence: true, ..Default::default() };
        ns.0.insert("vip".into(), private);
        let granted = with_claim("a", &["vip:*"]);
        assert!(can_publish(&granted, &ch("vip:gold"), &ns, false).is_ok());
        assert_eq!(can_publish(&who("a"), &ch("vip:gold"), &ns, false).unwrap_err().0, ErrorCode::Forbidden);
        assert!(can_publish(&who("a"), &ch("vip:gold"), &ns, true).is_ok(), "a subscription token grants");
        assert!(can_query_presence(&ch("vip:gold"), &ns, true).is_ok());
        assert_eq!(can_query_presence(&ch("vip:gold"), &ns, false).unwrap_err().0, ErrorCode::Forbidden);
    }
}
