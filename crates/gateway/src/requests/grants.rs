//! The frames of subscriptions to private channels: what a subscription needs (the
//! `channels` claim or a subscription token), `subscribe_refresh`, and the subscriptions the
//! server ends on its own (an expired subscription token, a claim a `refresh` took away).
//! What a connection holds of them is [`crate::grants`].

use herald_protocol::{ChannelName, ErrorCode, RequestId, ServerFrame};

use super::{Session, error_frame};
use crate::auth::AuthError;
use crate::grants::{Grant, unix_now};
use crate::policy::{self, Access};
use crate::wire;

/// A refused subscription token, under the codes of subscription tokens: an expired one is
/// `subscription_expired`, any other refusal `invalid_subscription_token`.
fn refused(e: AuthError) -> policy::Denied {
    let code = match e.code {
        ErrorCode::TokenExpired => ErrorCode::SubscriptionExpired,
        _ => ErrorCode::InvalidSubscriptionToken,
    };
    (code, format!("subscription token refused: {}", e.message))
}

impl Session {
    /// What a subscription to `channel` needs, checked: `Ok(None)` for a channel of a
    /// namespace that is not private (any `token` is then ignored), `Ok(Some(grant))` for a
    /// private one granted by the claim or by `token`.
    pub(crate) fn grant_for(
        &self,
        channel: &ChannelName,
        token: Option<&str>,
    ) -> Result<Option<Grant>, policy::Denied> {
        let config = &self.shared.config;
        match policy::subscribe_access(
            &self.identity,
            channel,
            &self.shared.namespaces,
            config.personal_channel,
        )? {
            Access::Open => Ok(None),
            Access::Claim => Ok(Some(Grant::claim())),
            Access::NeedsToken => {
                let Some(token) = token else {
                    let message = format!(
                        "{channel} is private: subscribe with a subscription token (`token`), or connect \
                         with a token whose `channels` claim grants it"
                    );
                    return Err((ErrorCode::InvalidSubscriptionToken, message));
                };
                let grant = self.verify_subscription(channel, token)?;
                Ok(Some(grant))
            }
        }
    }

    fn verify_subscription(&self, channel: &ChannelName, token: &str) -> Result<Grant, policy::Denied> {
        let grant = self
            .shared
            .verifier
            .verify_subscription(token, &self.identity.user, channel.as_str())
            .map_err(refused)?;
        Ok(Grant::token(grant.expires_at, self.shared.config.refresh_warning))
    }

    /// Answers a `subscribe_refresh` frame: a fresh subscription token for a channel held
    /// through one.
    pub(crate) fn subscribe_refresh(
        &mut self,
        id: Option<&RequestId>,
        channel: &ChannelName,
        token: &str,
    ) -> String {
        if !self.grants.holds_token(channel) {
            let message = format!("not subscribed to {channel} with a subscription token");
            return error_frame(id, ErrorCode::NotSubscribed, &message);
        }
        match self.verify_subscription(channel, token) {
            Ok(grant) => {
                let expires_at = grant.expires_at();
                self.grants.insert(channel.clone(), grant);
                ServerFrame::SubscribeRefreshed { id, channel, expires_at }.to_json()
            }
            Err((code, message)) => error_frame(id, code, &message),
        }
    }

    /// Sends the warnings that are due and ends the subscriptions whose token expired.
    pub(crate) fn expire_grants(&mut self) {
        let due = self.grants.take_due(unix_now());
        for (channel, expires_at) in &due.warnings {
            let frame = ServerFrame::SubscribeRefreshDue { channel, expires_at: *expires_at }.to_json();
            notify(&self.handle.writer, &frame);
        }
        for channel in due.expired {
            self.end_subscription(&channel, "subscription_expired");
        }
    }

    /// After a `refresh`: ends the subscriptions granted by the old `channels` claim that the
    /// new one does not grant.
    pub(crate) fn revoke_lost_grants(&mut self) {
        let lost: Vec<ChannelName> = (self.grants.by_claim())
            .filter(|channel| !policy::claim_grants(&self.identity, channel))
            .cloned()
            .collect();
        for channel in lost {
            self.end_subscription(&channel, "grant_revoked");
        }
    }

    /// Ends a subscription on the server's own accord and tells the client why.
    fn end_subscription(&mut self, channel: &ChannelName, reason: &str) {
        self.grants.remove(channel);
        if self.subscriptions.remove(channel) {
            self.shared.metrics.subscriptions.dec();
            self.shared.hub.leave(channel, self.handle.id);
            self.shared.observer.unsubscribed(&self.info, channel);
        }
        let frame = ServerFrame::Unsubscribed { id: None, channel, reason: Some(reason) }.to_json();
        notify(&self.handle.writer, &frame);
    }
}

/// Sends a frame of the server's own accord. Refused only when the connection is closing or
/// its queue is full (which closes it as a slow consumer): nobody is left to tell then.
pub(super) fn notify(writer: &crate::writer::Writer, frame: &str) {
    let _ = writer.push_control(wire::text(frame.as_bytes()));
}
