//! API key checks, shared by both transports: HTTP reads the `Authorization` header, gRPC the
//! `authorization` metadata entry; both carry `Bearer <key>`.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The accepted API keys. Cheap to clone (the gRPC interceptor is cloned per call).
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
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(presented) = authorization.and_then(bearer) else {
            return Err(ApiError::unauthorized());
        };
        let matched =
            self.keys.iter().fold(subtle::Choice::from(0), |acc, key| acc | key.as_ref().ct_eq(presented));
        if bool::from(matched) { Ok(()) } else { Err(ApiError::unauthorized()) }
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
        assert!(keys.check(Some(b"Bearer 0123456789abcdef")).is_ok());
        assert!(keys.check(Some(b"bearer fedcba9876543210")).is_ok());
        assert!(keys.check(Some(b"Bearer 0123456789abcdeX")).is_err());
        assert!(keys.check(Some(b"Bearer 0123456789abcde")).is_err());
        assert!(keys.check(Some(b"Basic 0123456789abcdef")).is_err());
        assert!(keys.check(Some(b"Bearer ")).is_err());
        assert!(keys.check(Some(b"0123456789abcdef")).is_err());
        assert!(keys.check(None).is_err());
    }

    #[test]
    fn no_keys_means_nobody_gets_in() {
        let keys = ApiKeys::new(&[]);
        assert!(keys.check(Some(b"Bearer ")).is_err());
        assert!(keys.check(Some(b"Bearer anything-at-all-long")).is_err());
    }
}
