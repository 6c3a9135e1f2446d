//! Pattern subscriptions on a [`Session`]: `subscribe` and `unsubscribe` frames with a
//! `pattern`, checked (by `policy::pattern_access` and the limits) and joined in the hub.
//!
//! A pattern subscription is live only: it has no position, so `since` is refused, and it
//! is granted as a whole (subscription tokens, which name one channel, do not apply). Its
//! connections are not presence members of the channels it matches.

use herald_protocol::{ChannelPattern, ErrorCode, RequestId, ServerFrame};

use super::grants::notify;
use super::{Session, error_frame};
use crate::policy;

impl Session {
    /// Answers a pattern `subscribe`.
    pub(super) async fn subscribe_pattern(
        &mut self,
        id: Option<&RequestId>,
        pattern: &ChannelPattern,
        since: bool,
        token: bool,
    ) -> String {
        match self.join_pattern(pattern, since, token).await {
            Ok(()) => ServerFrame::SubscribedPattern { id, pattern }.to_json(),
            Err((code, message)) => error_frame(id, code, &message),
        }
    }

    async fn join_pattern(
        &mut self,
        pattern: &ChannelPattern,
        since: bool,
        token: bool,
    ) -> Result<(), policy::Denied> {
        policy::pattern_access(&self.identity, pattern, &self.shared.namespaces)?;
        if since {
            let message = "a pattern subscription has no position to resume from: recover channel by channel";
            return Err((ErrorCode::NoHistory, message.into()));
        }
        if token {
            let message = "a subscription token grants one channel, never a pattern: a pattern of a private \
                           namespace needs the connection token's `channels` claim to list it";
            return Err((ErrorCode::InvalidSubscriptionToken, message.into()));
        }
        if self.patterns.contains(pattern) {
            return Err((
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to the pattern {pattern}"),
            ));
        }
        let max = self.shared.config.max_pattern_subscriptions;
        if self.patterns.len() >= max {
            self.shared.metrics.limit_hit("max_pattern_subscriptions");
            return Err((
                ErrorCode::LimitExceeded,
                format!("at most {max} pattern subscriptions per connection"),
            ));
        }
        let confirmation = self.shared.hub.join_pattern(pattern, self.handle.clone()).map_err(|limit| {
            self.shared.metrics.limit_hit("max_node_patterns");
            let message =
                format!("this gateway holds its limit of {} distinct patterns; retry later", limit.0);
            (ErrorCode::LimitExceeded, message)
        })?;
        self.patterns.insert(pattern.clone());
        if let Err(e) = confirmation.await {
            tracing::warn!(%pattern, error = %e, "pattern subscription not confirmed by the broker");
            self.patterns.remove(pattern);
            self.shared.hub.leave_pattern(pattern, self.handle.id);
            let code = match e {
                herald_broker::BrokerError::PatternsUnsupported(_) => ErrorCode::Forbidden,
                _ => ErrorCode::Unavailable,
            };
            return Err((code, format!("pattern subscription could not be confirmed: {e}")));
        }
        Ok(())
    }

    /// Answers a pattern `unsubscribe`.
    pub(super) fn unsubscribe_pattern(&mut self, id: Option<&RequestId>, pattern: &ChannelPattern) -> String {
        if !self.patterns.remove(pattern) {
            return error_frame(
                id,
                ErrorCode::NotSubscribed,
                &format!("not subscribed to the pattern {pattern}"),
            );
        }
        self.shared.hub.leave_pattern(pattern, self.handle.id);
        ServerFrame::UnsubscribedPattern { id, pattern, reason: None }.to_json()
    }

    /// After a `refresh`: ends the pattern subscriptions the connection may no longer hold
    /// (in a private namespace, the new `channels` claim does not list them).
    pub(super) fn revoke_lost_pattern_grants(&mut self) {
        let lost: Vec<ChannelPattern> = (self.patterns.iter())
            .filter(|p| policy::pattern_access(&self.identity, p, &self.shared.namespaces).is_err())
            .cloned()
            .collect();
        for pattern in lost {
            self.patterns.remove(&pattern);
            self.shared.hub.leave_pattern(&pattern, self.handle.id);
            let reason = Some("grant_revoked");
            notify(
                &self.handle.writer,
                &ServerFrame::UnsubscribedPattern { id: None, pattern: &pattern, reason }.to_json(),
            );
        }
    }
}
