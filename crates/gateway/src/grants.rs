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
use herald_protocol::ChannelName;
use tokio::time::{Instant, Sleep};

use crate::refresh::warn_at;

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
    pub(crate) fn token(expires_at: Option<u64>, warning: Duration) -> Self {
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

    /// The channels granted through the connection token's `channels` claim.
    pub(crate) fn by_claim(&self) -> impl Iterator<Item = &ChannelName> {
        self.0.iter().filter(|(_, grant)| grant.by_claim).map(|(channel, _)| channel)
    }

    /// What has come due at `now` (seconds since the Unix epoch): the channels whose
    /// subscription token expired, and those whose holder is to be warned now, each with its
    /// token's expiry (warned once: a warning taken here is not given again).
    pub(crate) fn take_due(&mut self, now: u64) -> Due {
        let mut due = Due::default();
        for (channel, grant) in &mut self.0 {
            if grant.expires_at.is_some_and(|exp| exp <= now) {
                due.expired.push(channel.clone());
            } else if let (Some(warn), Some(expires_at)) = (grant.warn_at, grant.expires_at)
                && warn <= now
            {
                grant.warn_at = None;
                due.warnings.push((channel.clone(), expires_at));
            }
        }
        due
    }

    /// The earliest time something is due (a warning or an expiry), seconds since the Unix
    /// epoch.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.0.values().filter_map(|grant| grant.warn_at.or(grant.expires_at)).min()
    }
}

/// What [`Grants::take_due`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Due {
    /// Channels whose subscription token expired.
    pub expired: Vec<ChannelName>,
    /// Channels whose subscription token is to be refreshed, with its expiry.
    pub warnings: Vec<(ChannelName, u64)>,
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

pub(crate) fn unix_now() -> u64 {
    herald_protocol::publication::now_millis() / 1000
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
        assert_eq!(grants.by_claim().collect::<Vec<_>>(), [&ch("vip:a")]);
    }

    /// A warning is taken once; an expired token is reported until its grant is removed.
    #[test]
    fn due_warnings_are_taken_once() {
        let mut grants = Grants::default();
        grants.insert(ch("vip:b"), Grant { by_claim: false, expires_at: Some(500), warn_at: Some(450) });
        grants.insert(ch("vip:c"), Grant { by_claim: false, expires_at: Some(400), warn_at: None });
        assert_eq!(grants.take_due(300), Due::default());
        let due = grants.take_due(460);
        assert_eq!(due, Due { expired: vec![ch("vip:c")], warnings: vec![(ch("vip:b"), 500)] });
        grants.remove(&ch("vip:c"));
        assert_eq!(grants.take_due(470), Due::default());
        assert_eq!(grants.next_due(), Some(500));
    }
}
