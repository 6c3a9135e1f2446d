//! In-band token refresh: a client sends a `refresh` frame with a fresh connection token
//! before its current one expires, and the connection goes on under the new one.
//!
//! The sweeper warns the client with `refresh_due` at [`warn_at`] and closes the connection
//! with 4001 at `exp` as before; a refresh moves both. The new token must name the same user
//! (else `user_mismatch`, and the connection stays on its old token); its `info` and
//! `channels` replace the old ones.

use std::time::Duration;

use bytes::Bytes;
use herald_protocol::{ErrorCode, RequestId, ServerFrame};

use crate::requests::{Session, error_frame};
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

impl Session {
    /// Answers a `refresh` frame: verifies `token`, checks it names the connection's user,
    /// and puts the connection on it (expiry, `info`, `channels`). Private subscriptions the
    /// new `channels` claim no longer covers are ended (see [`Session::revoke_lost_grants`]).
    pub(crate) fn refresh(&mut self, id: Option<&RequestId>, token: &str) -> String {
        let identity = match self.shared.verifier.verify(token) {
            Ok(identity) => identity,
            Err(e) => return error_frame(id, e.code, &format!("refresh refused: {}", e.message)),
        };
        if identity.user != self.identity.user {
            let message = format!(
                "refresh refused: the token is for user {:?}, the connection for {:?}",
                identity.user.as_str(),
                self.identity.user.as_str()
            );
            return error_frame(id, ErrorCode::UserMismatch, &message);
        }
        let now = herald_protocol::publication::now_millis() / 1000;
        let expires_at = identity.expires_at;
        let warn = warn_at(now, expires_at, self.shared.config.refresh_warning);
        self.shared.registry.set_expiry(self.handle.id, expires_at, warn);
        self.info.info = identity.info.clone();
        self.identity = identity;
        self.revoke_lost_grants();
        ServerFrame::Refreshed { id, expires_at }.to_json()
    }
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
