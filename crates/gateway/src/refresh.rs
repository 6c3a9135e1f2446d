//! In-band token refresh: a client sends a `refresh` frame with a fresh connection token
//! before its current one expires, and the connection goes on under the new one (the frame
//! is answered by `crate::requests`). This module says when a refresh is due.
//!
//! The sweeper warns the client with `refresh_due` at [`warn_at`] and closes the connection
//! with 4001 at `exp` as before; a refresh moves both. The new token must name the same user
//! (else `user_mismatch`, and the connection stays on its old token); its `info` and
//! `channels` replace the old ones.

use std::time::Duration;

use bytes::Bytes;
use herald_protocol::ServerFrame;

use crate::wire;

/// When to send `refresh_due` for a token expiring at `expires_at`, accepted at `now` (both
/// seconds since the Unix epoch): `warning` before `exp`, but never in the first half of the
/// token's remaining life, so that a short token is not asked to refresh the moment it is
/// used. `None` for a token without `exp`.
pub(crate) fn warn_at(now: u64, expires_at: Option<u64>, warning: Duration) -> Option<u64> {
    let exp = expires_at?;
    let half_life = now + exp.saturating_sub(now) / 2;
    Some(exp.saturating_sub(warning.as_secs()).max(half_life))
}

/// The `refresh_due` frame, encoded.
pub(crate) fn due_frame(expires_at: u64) -> Bytes {
    wire::text(ServerFrame::RefreshDue { expires_at }.to_json().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The warning comes `refresh_warning` before `exp`, but never in the first half of the
    /// token's life, and never for a token without `exp`.
    #[test]
    fn warnings_come_late_but_not_too_early() {
        let warning = Duration::from_secs(30);
        assert_eq!(warn_at(1000, Some(4600), warning), Some(4570));
        assert_eq!(warn_at(1000, Some(1010), warning), Some(1005), "half of a 10 s token");
        assert_eq!(warn_at(1000, Some(1060), warning), Some(1030));
        assert_eq!(warn_at(1000, None, warning), None);
        assert_eq!(warn_at(1000, Some(900), warning), Some(1000), "already expired: at once");
    }
}
