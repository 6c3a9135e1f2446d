//! What channel names and user ids may hold: the characters and the length both accept, and
//! why a name was refused.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} bytes long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("contains {0:?}; allowed are ASCII letters, digits and `_-.:@=`")]
    BadChar(char),
    #[error("has an empty namespace before `:`")]
    EmptyNamespace,
}

/// Characters allowed in channel names and user ids. Deliberately narrow: no spaces, no
/// wildcards (`*`, `?`, `[` would mean something to Redis pattern subscriptions), nothing that
/// needs escaping in a URL path segment.
pub(crate) fn check_chars(s: &str, max: usize) -> Result<(), InvalidName> {
    if s.is_empty() {
        return Err(InvalidName::Empty);
    }
    if s.len() > max {
        return Err(InvalidName::TooLong { len: s.len(), max });
    }
    match s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '='))) {
        Some(c) => Err(InvalidName::BadChar(c)),
        None => Ok(()),
    }
}
