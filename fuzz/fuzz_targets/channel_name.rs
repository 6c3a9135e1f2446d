//! Channel names, user ids and namespaces, fed arbitrary text.
//!
//! Properties: `ChannelName::parse` agrees with the naming rules of `docs/protocol.md`
//! (written out again below) on every input, refusals included; an accepted name round-trips
//! through `as_str`, `Display`, `FromStr` and JSON; its namespace and kind are read from the
//! name as documented; a personal channel built from a user id parses back to that user; a
//! namespace that validates governs the channels named after it.
#![no_main]

use herald_protocol::channel::MAX_CHANNEL_LEN;
use herald_protocol::user::MAX_USER_LEN;
use herald_protocol::{
    BROADCAST_CHANNEL, ChannelKind, ChannelName, INTERNAL_NAMESPACE, InvalidName, NamespaceConfig,
    Namespaces, PERSONAL_NAMESPACE, UserId,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };

    let parsed = ChannelName::parse(s);
    assert_eq!(parsed, expected_channel(s), "{s:?}");
    assert_eq!(s.parse::<ChannelName>(), parsed);
    let json = serde_json::to_string(s).unwrap();
    assert_eq!(serde_json::from_str::<ChannelName>(&json).ok(), parsed.clone().ok());
    if let Ok(channel) = parsed {
        check_channel(s, &channel);
    }

    let user = UserId::parse(s);
    assert_eq!(user.as_ref().err(), check_chars(s, MAX_USER_LEN).err().as_ref(), "user {s:?}");
    if let Ok(user) = user {
        assert_eq!(user.as_str(), s);
        let personal = ChannelName::personal(&user);
        assert_eq!(ChannelName::parse(personal.as_str()).as_ref(), Ok(&personal));
        assert_eq!(personal.kind(), ChannelKind::Personal(s));
    }

    let namespaces = Namespaces([(s.to_string(), NamespaceConfig::default())].into());
    let valid = namespaces.validate().is_ok();
    let expected = ![PERSONAL_NAMESPACE, BROADCAST_CHANNEL, INTERNAL_NAMESPACE].contains(&s)
        && !s.contains(':')
        && ChannelName::parse(&format!("{s}:x")).is_ok();
    assert_eq!(valid, expected, "namespace {s:?}");
    if valid {
        let channel = ChannelName::parse(&format!("{s}:x")).unwrap();
        assert_eq!(channel.namespace(), Some(s));
        assert_eq!(namespaces.lookup(&channel), Ok(Some(&NamespaceConfig::default())));
    }
});

/// What an accepted name promises about itself.
fn check_channel(s: &str, channel: &ChannelName) {
    assert_eq!(channel.as_str(), s);
    assert_eq!(channel.to_string(), s);
    assert_eq!(ChannelName::parse(channel.as_str()).as_ref(), Ok(channel));
    let json = serde_json::to_string(channel).unwrap();
    assert_eq!(serde_json::from_str::<ChannelName>(&json).unwrap(), *channel);
    let namespace = s.split_once(':').map(|(ns, _)| ns);
    assert_eq!(channel.namespace(), namespace);
    assert_ne!(namespace, Some(""), "an empty namespace was accepted");
    let kind = match namespace {
        Some(PERSONAL_NAMESPACE) => ChannelKind::Personal(&s[PERSONAL_NAMESPACE.len() + 1..]),
        None if s == BROADCAST_CHANNEL => ChannelKind::Broadcast,
        _ => ChannelKind::Regular,
    };
    assert_eq!(channel.kind(), kind);
    if let ChannelKind::Personal(user) = kind
        && let Ok(user) = UserId::parse(user)
    {
        assert_eq!(ChannelName::personal(&user), *channel);
    }
}

/// The naming rules, as documented: 1 to 255 bytes of ASCII letters, digits and `_-.:@=`, and
/// not starting with `:` (an empty namespace).
fn expected_channel(s: &str) -> Result<ChannelName, InvalidName> {
    check_chars(s, MAX_CHANNEL_LEN)?;
    if s.starts_with(':') {
        return Err(InvalidName::EmptyNamespace);
    }
    Ok(ChannelName::parse(s).expect("a name within the rules is accepted"))
}

fn check_chars(s: &str, max: usize) -> Result<(), InvalidName> {
    if s.is_empty() {
        return Err(InvalidName::Empty);
    }
    if s.len() > max {
        return Err(InvalidName::TooLong { len: s.len(), max });
    }
    const ALLOWED: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:@=";
    match s.chars().find(|c| !ALLOWED.contains(*c)) {
        Some(c) => Err(InvalidName::BadChar(c)),
        None => Ok(()),
    }
}
