//! API key checks for both transports; the comparison itself is [`herald_protocol::ApiKeys`].

pub use herald_protocol::ApiKeys;

use crate::error::ApiError;

/// Passes when `authorization` is `Bearer <key>` with one of `keys`, else `unauthorized`.
pub fn check(keys: &ApiKeys, authorization: Option<&[u8]>) -> Result<(), ApiError> {
    if keys.accepts(authorization) { Ok(()) } else { Err(ApiError::unauthorized()) }
}
