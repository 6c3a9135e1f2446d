//! Channel patterns of pattern subscriptions: a glob over channel names, parsed once at the
//! edge ([`ChannelPattern`]) and matched by the engines that match locally.
//!
//! The syntax is the subset of Redis's glob (`PSUBSCRIBE`) on which Herald's matcher and
//! Redis's agree byte for byte, so a pattern means the same on every engine:
//! - `*` any run of characters, the empty one and `:` included;
//! - `?` exactly one character;
//! - `[abc]`, `[a-z0-9]`: one character of the set; `[^abc]` one character outside it. Inside
//!   brackets only channel-name characters other than `-`, plus ranges `x-y` with `x <= y`.
//!
//! Everything else matches itself and must be a channel-name character: there is no escape
//! (channel names cannot contain `*?[]^\`). A pattern starts with a literal namespace and its
//! `:` (`events:*`, never `*` or `ev*`), so it never reaches into another namespace and its
//! namespace's settings govern it as a whole. Since `*` crosses `:`, `events:*` also matches
//! `events:a:b`.
//!
//! Matching backtracks only to the last `*` (never exponential): at most the product of the
//! pattern's and the name's lengths, both at most 255 bytes.

use std::fmt;
use std::sync::Arc;

use crate::channel::MAX_CHANNEL_LEN;

/// Most `*` in one pattern. Redis matches every pattern against every published channel,
/// backtracking on each `*`; a few are all a real pattern needs.
pub const MAX_PATTERN_STARS: usize = 4;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPattern {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} bytes long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("must start with a literal namespace and `:` (like `events:*`)")]
    NoNamespace,
    #[error("has no wildcard (`*`, `?` or `[...]`): subscribe to the channel instead")]
    NoWildcard,
    #[error("has more than {MAX_PATTERN_STARS} `*`")]
    TooManyStars,
    #[error("contains {0:?}; allowed are channel-name characters and `*`, `?`, `[...]`")]
    BadChar(char),
    #[error("has a `[` without its `]`")]
    UnclosedClass,
    #[error("has an empty `[]`")]
    EmptyClass,
    #[error("has {0:?} in `[...]`: only channel-name characters and ranges `x-y` are allowed")]
    BadClass(char),
    #[error("has the range {0}-{1}, whose start is after its end")]
    BadRange(char, char),
}

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `?`
    One,
    /// `*`
    Star,
    /// `[...]`: inclusive byte ranges (a single character is a range of one), negated with `^`.
    Class {
        negated: bool,
        ranges: Box<[(u8, u8)]>,
    },
}

impl Token {
    /// Whether this single-character token takes `b` (never called for `Star`).
    fn takes(&self, b: u8) -> bool {
        match self {
            Token::Byte(c) => *c == b,
            Token::One => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&b)) != *negated
            }
            Token::Star => false,
        }
    }
}

/// A valid channel pattern. Cheap to clone; equal patterns are equal strings.
#[derive(Clone)]
pub struct ChannelPattern(Arc<Inner>);

struct Inner {
    text: Box<str>,
    /// The length of the namespace, before its `:`.
    namespace: usize,
    tokens: Box<[Token]>,
}

fn name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'=')
}

impl ChannelPattern {
    /// Validates `s` as a pattern.
    pub fn parse(s: &str) -> Result<Self, InvalidPattern> {
        if s.is_empty() {
            return Err(InvalidPattern::Empty);
        }
        if s.len() > MAX_CHANNEL_LEN {
            return Err(InvalidPattern::TooLong { len: s.len(), max: MAX_CHANNEL_LEN });
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
            return Err(InvalidPattern::BadChar(c));
        }
        let bytes = s.as_bytes();
        let namespace = match bytes.iter().position(|b| !name_char(*b) || *b == b':') {
            Some(at) if at > 0 && bytes[at] == b':' => at,
            _ => return Err(InvalidPattern::NoNamespace),
        };
        let mut tokens = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            tokens.push(match b {
                b'*' => Token::Star,
                b'?' => Token::One,
                b'[' => {
                    let (token, next) = parse_class(bytes, i)?;
                    i = next;
                    token
                }
                b if name_char(b) => Token::Byte(b),
                other => return Err(InvalidPattern::BadChar(other as char)),
            });
        }
        let stars = tokens.iter().filter(|t| **t == Token::Star).count();
        if stars > MAX_PATTERN_STARS {
            return Err(InvalidPattern::TooManyStars);
        }
        if tokens.iter().all(|t| matches!(t, Token::Byte(_))) {
            return Err(InvalidPattern::NoWildcard);
        }
        Ok(Self(Arc::new(Inner { text: s.into(), namespace, tokens: tokens.into() })))
    }

    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The namespace: the literal part before the first `:`.
    pub fn namespace(&self) -> &str {
        &self.0.text[..self.0.namespace]
    }

    /// Whether `name` (a channel name) matches, as Redis's `PSUBSCRIBE` would decide.
    pub fn matches(&self, name: &str) -> bool {
        let (tokens, name) = (&*self.0.tokens, name.as_bytes());
        let (mut t, mut n) = (0, 0);
        // Where the last `*` was, and how much of the name it has taken so far.
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match tokens.get(t) {
                Some(Token::Star) => {
                    star = Some((t, n));
                    t += 1;
                }
                Some(token) if token.takes(name[n]) => {
                    t += 1;
                    n += 1;
                }
                _ => match star {
                    // Let the last `*` take one more byte and try again after it.
                    Some((star_t, star_n)) => {
                        t = star_t + 1;
                        n = star_n + 1;
                        star = Some((star_t, star_n + 1));
                    }
                    None => return false,
                },
            }
        }
        tokens[t..].iter().all(|token| *token == Token::Star)
    }
}

/// Parses a class whose `[` is just before `start`; returns it and the index after its `]`.
fn parse_class(bytes: &[u8], start: usize) -> Result<(Token, usize), InvalidPattern> {
    let mut i = start;
    let negated = bytes.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        let Some(&b) = bytes.get(i) else { return Err(InvalidPattern::UnclosedClass) };
        if b == b']' {
            if ranges.is_empty() {
                return Err(InvalidPattern::EmptyClass);
            }
            return Ok((Token::Class { negated, ranges: ranges.into() }, i + 1));
        }
        if !name_char(b) || b == b'-' {
            return Err(InvalidPattern::BadClass(b as char));
        }
        if bytes.get(i + 1) == Some(&b'-') {
            let Some(&hi) = bytes.get(i + 2) else { return Err(InvalidPattern::UnclosedClass) };
            if !name_char(hi) || hi == b'-' {
                return Err(InvalidPattern::BadClass(hi as char));
            }
            if hi < b {
                return Err(InvalidPattern::BadRange(b as char, hi as char));
            }
            ranges.push((b, hi));
            i += 3;
        } else {
            ranges.push((b, b));
            i += 1;
        }
    }
}

impl PartialEq for ChannelPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.text == other.0.text
    }
}

impl Eq for ChannelPattern {}

impl std::hash::Hash for ChannelPattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.text.hash(state);
    }
}

/// Lets maps keyed by pattern be searched with a plain `&str` (the hub does, once per
/// message). Sound because `Hash` and `Eq` are those of the text.
impl std::borrow::Borrow<str> for ChannelPattern {
    fn borrow(&self) -> &str {
        &self.0.text
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.text)
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0.text, f)
    }
}

impl serde::Serialize for ChannelPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).unwrap()
    }

    /// The examples of the protocol guide match what they say.
    #[test]
    fn globs_match_like_redis() {
        assert!(p("events:*").matches("events:a"));
        assert!(p("events:*").matches("events:"));
        assert!(p("events:*").matches("events:a:b"), "`*` crosses `:` as in Redis");
        assert!(!p("events:*").matches("eventsx:a"));
        assert!(!p("events:*").matches("other:events:a"));
        assert!(p("orders:eu-?").matches("orders:eu-1"));
        assert!(!p("orders:eu-?").matches("orders:eu-"));
        assert!(!p("orders:eu-?").matches("orders:eu-12"));
        assert!(p("prices:[ab]*").matches("prices:apple"));
        assert!(p("prices:[ab]*").matches("prices:b"));
        assert!(!p("prices:[ab]*").matches("prices:cherry"));
        assert!(p("prices:[^ab]*").matches("prices:cherry"));
        assert!(!p("prices:[^ab]*").matches("prices:apple"));
        assert!(p("t:[a-c0-9]").matches("t:b") && p("t:[a-c0-9]").matches("t:7"));
        assert!(!p("t:[a-c0-9]").matches("t:d"));
        assert!(p("room:*a*a*").matches("room:xaya") && !p("room:*a*a*").matches("room:xa"));
        assert!(p("a:*.log").matches("a:x.log") && !p("a:*.log").matches("a:x.logs"));
    }

    /// Each refusal names its reason; the namespace is literal and the text is kept.
    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        let e = |s: &str| ChannelPattern::parse(s).unwrap_err();
        assert_eq!(e(""), InvalidPattern::Empty);
        assert_eq!(e("*"), InvalidPattern::NoNamespace);
        assert_eq!(e("ev*:x"), InvalidPattern::NoNamespace);
        assert_eq!(e(":*"), InvalidPattern::NoNamespace);
        assert_eq!(e("events:a"), InvalidPattern::NoWildcard);
        assert_eq!(e("e:*a*b*c*d*"), InvalidPattern::TooManyStars);
        assert_eq!(e("e:a b*"), InvalidPattern::BadChar(' '));
        assert_eq!(e("e:\\*"), InvalidPattern::BadChar('\\'));
        assert_eq!(e("e:[ab"), InvalidPattern::UnclosedClass);
        assert_eq!(e("e:[]"), InvalidPattern::EmptyClass);
        assert_eq!(e("e:[a-]"), InvalidPattern::BadClass(']'));
        assert_eq!(e("e:[-a]"), InvalidPattern::BadClass('-'));
        assert_eq!(e("e:[*]"), InvalidPattern::BadClass('*'));
        assert_eq!(e("e:[z-a]"), InvalidPattern::BadRange('z', 'a'));
        assert_eq!(e("e:x]"), InvalidPattern::BadChar(']'));
        assert!(matches!(e(&format!("e:*{}", "x".repeat(300))), InvalidPattern::TooLong { .. }));
        let ok = p("orders:eu-?");
        assert_eq!((ok.namespace(), ok.as_str()), ("orders", "orders:eu-?"));
    }

    /// A pattern built to make naive backtracking explode is answered quickly.
    #[test]
    fn hostile_patterns_stay_fast() {
        let name = format!("x:{}", "a".repeat(250));
        let started = std::time::Instant::now();
        assert!(!p("x:*a*a*a*ab").matches(&name));
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }
}
