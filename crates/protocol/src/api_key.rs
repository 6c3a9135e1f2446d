//! API keys: how backends authenticate to the publisher and presence APIs, over HTTP in the
//! `Authorization` header and over gRPC in the `authorization` metadata entry, both as
//! `Bearer <key>`.

use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The accepted API keys. Cheap to clone (gRPC interceptors are cloned per call).
#[derive(Clone)]
pub struct ApiKeys {
    keys: Arc<[Box<[u8]>]>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        Self { keys: keys.iter().map(|k| k.as_bytes().into()).collect() }
    }

    /// Accepts `Bearer <key>` (scheme case-insensitive, as RFC 9110 asks) when `<key>` is one of
    /// the configured keys.
    ///
    /// Every key is compared, each in constant time, and the results are combined without
    /// branching, so the response time tells an attacker neither how many leading bytes of a
    /// guess were right nor which key matched. A key's length may still show; keys are at least
    /// 16 characters long, so that does not help guessing.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(bearer) else { return false };
        let matched =
            self.keys.iter().fold(subtle::Choice::from(0), |acc, key| acc | key.as_ref().ct_eq(presented));
        bool::from(matched)
    }
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

    #[test]
    fn only_configured_bearer_keys_pass() {
        let keys = ApiKeys::new(&["0123456789abcdef".into(), "fedcba9876543210".into()]);
        assert!(keys.accepts(Some(b"Bearer 0123456789abcdef")));
        assert!(keys.accepts(Some(b"bearer fedcba9876543210")));
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
}
