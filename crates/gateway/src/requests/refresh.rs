//! The `refresh` frame: the connection goes on under a fresh token (see [`crate::refresh`]
//! for when one is due).

use herald_protocol::{ErrorCode, RequestId, ServerFrame};

use super::{Session, error_frame};
use crate::refresh::warn_at;

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
        self.revoke_lost_pattern_grants();
        ServerFrame::Refreshed { id, expires_at }.to_json()
    }
}
