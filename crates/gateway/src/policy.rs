//! Who may subscribe and publish where. The one place channel permissions are decided, so
//! richer rules (per-channel grants in tokens) change this file only.

use herald_protocol::{ChannelKind, ChannelName, ErrorCode, Namespaces};

use crate::auth::Identity;

/// A refusal, with a message for the client.
pub type Denied = (ErrorCode, String);

/// Whether `who` may subscribe to `channel`. `personal_managed`: whether the server
/// subscribes every connection to its user's personal channel (`gateway.personal_channel`);
/// where it does not, users may subscribe to their own.
pub fn can_subscribe(
    who: &Identity,
    channel: &ChannelName,
    namespaces: &Namespaces,
    personal_managed: bool,
) -> Result<(), Denied> {
    match channel.kind() {
        ChannelKind::Personal(user) if user == who.user.as_str() => {
            if personal_managed {
                Err((ErrorCode::AlreadySubscribed, "your personal channel is subscribed for you".into()))
            } else {
                Ok(())
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
            Ok(Some(ns)) if ns.subscribe => Ok(()),
            Ok(_) => Err((ErrorCode::Forbidden, format!("subscribing to {channel} is not allowed"))),
        },
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

/// Whether `who` may publish into `channel` from a WebSocket.
pub fn can_publish(_who: &Identity, channel: &ChannelName, namespaces: &Namespaces) -> Result<(), Denied> {
    match namespaces.lookup(channel) {
        Err(code) => Err((code, unknown(channel))),
        Ok(Some(ns)) if ns.publish => Ok(()),
        Ok(_) => Err((ErrorCode::Forbidden, format!("clients may not publish into {channel}"))),
    }
}

/// Whether a client may ask for the members of `channel` (it must also be subscribed to it).
pub fn can_query_presence(channel: &ChannelName, namespaces: &Namespaces) -> Result<(), Denied> {
    match namespaces.lookup(channel) {
        Err(code) => Err((code, unknown(channel))),
        Ok(Some(ns)) if ns.presence && ns.client_presence => Ok(()),
        Ok(_) => Err((ErrorCode::Forbidden, format!("the members of {channel} are not shown to clients"))),
    }
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
        assert_eq!(can_publish(&who("a"), &ch("user:b"), &ns).unwrap_err().0, ErrorCode::Forbidden);
        assert_eq!(
            can_publish(&who("a"), &ChannelName::broadcast(), &ns).unwrap_err().0,
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
        assert!(can_publish(&who("a"), &ch("chat:x"), &ns).is_ok());
        assert!(can_subscribe(&who("a"), &ch("news:x"), &ns, true).is_ok());
        assert_eq!(can_publish(&who("a"), &ch("news:x"), &ns).unwrap_err().0, ErrorCode::Forbidden);
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
}
