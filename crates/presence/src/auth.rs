//! API key checks for both transports: `Authorization: Bearer <key>` over HTTP, the
//! `authorization` metadata entry over gRPC. Keys are compared in constant time.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The accepted API keys. Cheap to clone.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Arc<[Box<[u8]>]>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        Self { keys: keys.iter().map(|k| k.as_bytes().into()).collect() }
    }

    /// Accepts `Bearer <key>` when `<key>` is one of the keys. Every key is compared, each in
    /// constant time, so timing reveals neither a matching prefix nor which key matched.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(presented) = authorization.and_then(bearer) else {
            return Err(ApiError::unauthorized());
        };
        let matched =
            self.keys.iter().fold(subtle::Choice::from(0), |acc, key| acc | key.as_ref().ct_eq(presented));
        if bool::from(matched) { Ok(()) } else { Err(ApiError::unauthorized()) }
    }
}

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
        let keys = ApiKeys::new(&["0123456789abcdef".into()]);
        assert!(keys.check(Some(b"Bearer 0123456789abcdef")).is_ok());
        assert!(keys.check(Some(b"Bearer 0123456789abcdeX")).is_err());
        assert!(keys.check(Some(b"Basic 0123456789abcdef")).is_err());
        assert!(keys.check(None).is_err());
        assert!(ApiKeys::new(&[]).check(Some(b"Bearer ")).is_err());
    }
}
