//! A connection's grants to channels of private namespaces: which of its subscriptions came
//! through the connection token's `channels` claim and which through a subscription token,
//! and when the latter expire.
//!
//! A subscription token has an expiry of its own. The client is warned with
//! `subscribe_refresh_due` (at the time [`crate::refresh::warn_at`] gives, with
//! `gateway.refresh_warning`) and may send a `subscribe_refresh` with a fresh token; one
//! left to expire ends the subscription with `unsubscribed` (reason `subscription_expired`),
//! and the connection goes on. A grant through the claim lasts as long as the claim: a
//! `refresh` whose new claim no longer covers the channel ends it (`grant_revoked`).
//!
//! Only connections holding a subscription token with an expiry wait on a timer for it (one,
//! for the earliest due time); the others pay nothing. The map holds subscribed private
//! channels only, so `gateway.max_subscriptions` bounds it.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::Either;
use herald_protocol::{ChannelName, ErrorCode, RequestId, ServerFrame};
use tokio::time::{Instant, Sleep};

use crate::auth::AuthError;
use crate::policy::{self, Access};
use crate::refresh::warn_at;
use crate::requests::{Session, error_frame};
use crate::wire;

/// How a private channel was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Through the connection token's `channels` claim; else a subscription token.
    by_claim: bool,
    /// The subscription token's `exp` (seconds since the Unix epoch); `None`: it does not
    /// expire (a claim, or a token without `exp`).
    expires_at: Option<u64>,
    /// When to send `subscribe_refresh_due`; `None` once sent.
    warn_at: Option<u64>,
}

impl Grant {
    /// A grant through the `channels` claim.
    pub(crate) fn claim() -> Self {
        Self { by_claim: true, expires_at: None, warn_at: None }
    }

    /// A grant through a subscription token expiring at `expires_at`, accepted now.
    fn token(expires_at: Option<u64>, warning: Duration) -> Self {
        Self { by_claim: false, expires_at, warn_at: warn_at(unix_now(), expires_at, warning) }
    }

    /// The subscription token's expiry, for the `subscribed` reply.
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }
}

/// The grants of one connection's private subscriptions, by channel.
#[derive(Debug, Default)]
pub(crate) struct Grants(HashMap<ChannelName, Grant>);

impl Grants {
    pub(crate) fn insert(&mut self, channel: ChannelName, grant: Grant) {
        self.0.insert(channel, grant);
    }

    pub(crate) fn remove(&mut self, channel: &ChannelName) {
        self.0.remove(channel);
    }

    /// Whether the connection holds a grant for `channel` (it is subscribed to it).
    pub(crate) fn contains(&self, channel: &ChannelName) -> bool {
        self.0.contains_key(channel)
    }

    /// Whether the connection holds `channel` through a live subscription token.
    pub(crate) fn holds_token(&self, channel: &ChannelName) -> bool {
        self.0.get(channel).is_some_and(|grant| !grant.by_claim)
    }

    /// The earliest time something is due (a warning or an expiry), seconds since the Unix
    /// epoch.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.0.values().filter_map(|grant| grant.warn_at.or(grant.expires_at)).min()
    }
}

/// Resolves at `due` (seconds since the Unix epoch), or never for `None`. Boxed, so that a
/// connection without expiring grants carries no timer in its task.
pub(crate) fn timer(due: Option<u64>) -> Either<Pin<Box<Sleep>>, std::future::Pending<()>> {
    match due {
        None => Either::Right(std::future::pending()),
        Some(due) => {
            let now_ms = herald_protocol::publication::now_millis();
            let wait = Duration::from_millis((due * 1000).saturating_sub(now_ms));
            Either::Left(Box::pin(tokio::time::sleep_until(Instant::now() + wait)))
        }
    }
}

fn unix_now() -> u64 {
    herald_protocol::publication::now_millis() / 1000
}

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
                let expires_at = grant.expires_at;
                self.grants.insert(channel.clone(), grant);
                ServerFrame::SubscribeRefreshed { id, channel, expires_at }.to_json()
            }
            Err((code, message)) => error_frame(id, code, &message),
        }
    }

    /// Sends the warnings that are due and ends the subscriptions whose token expired.
    pub(crate) fn expire_grants(&mut self) {
        let now = unix_now();
        let mut expired = Vec::new();
        for (channel, grant) in &mut self.grants.0 {
            if grant.expires_at.is_some_and(|exp| exp <= now) {
                expired.push(channel.clone());
            } else if let (Some(warn), Some(expires_at)) = (grant.warn_at, grant.expires_at)
                && warn <= now
            {
                grant.warn_at = None;
                let frame = ServerFrame::SubscribeRefreshDue { channel, expires_at }.to_json();
                notify(&self.handle.writer, &frame);
            }
        }
        for channel in expired {
            self.end_subscription(&channel, "subscription_expired");
        }
    }

    /// After a `refresh`: ends the subscriptions granted by the old `channels` claim that the
    /// new one does not grant.
    pub(crate) fn revoke_lost_grants(&mut self) {
        let lost: Vec<ChannelName> = (self.grants.0.iter())
            .filter(|(channel, grant)| grant.by_claim && !policy::claim_grants(&self.identity, channel))
            .map(|(channel, _)| channel.clone())
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
fn notify(writer: &crate::writer::Writer, frame: &str) {
    let _ = writer.push_control(wire::text(frame.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    /// The timer waits for the earliest warning or expiry of a subscription token; claims
    /// never come due.
    #[test]
    fn the_next_due_time_is_the_earliest_of_the_tokens() {
        let mut grants = Grants::default();
        grants.insert(ch("vip:a"), Grant::claim());
        assert_eq!(grants.next_due(), None);
        grants.insert(ch("vip:b"), Grant { by_claim: false, expires_at: Some(500), warn_at: Some(450) });
        grants.insert(ch("vip:c"), Grant { by_claim: false, expires_at: Some(400), warn_at: None });
        assert_eq!(grants.next_due(), Some(400));
        assert!(grants.holds_token(&ch("vip:b")) && !grants.holds_token(&ch("vip:a")));
        grants.remove(&ch("vip:c"));
        assert_eq!(grants.next_due(), Some(450));
    }
}
