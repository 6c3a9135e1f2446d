//! The history read of a subscription with recovery: what a connection joining a channel
//! with history reads once the node's subscription is confirmed, to write before going live
//! (see [`crate::hub::Hub::finish_recovery`]).
//!
//! One read per channel: with `since`, everything after it (or why that cannot be had); without,
//! just the channel's position (`limit` 0). The personal channel at connect reads its inbox
//! state instead, which carries the position too, so a plain connect costs one round trip.
//! At connect every channel's read goes out at once ([`read_at_connect`]).

use std::time::Duration;

use bytes::Bytes;
use herald_broker::{Broker, BrokerError, HistoryFilter, InboxStatus, StreamPosition};
use herald_protocol::{
    ChannelHistory, ChannelKind, ChannelName, ErrorCode, InboxState, Since, StreamState, UserId,
};

use crate::policy::Denied;
use crate::wire;

/// What a subscription's history read found.
pub(crate) struct Recovered {
    /// The messages after `since`, encoded as frames; empty without `since`.
    pub missed: Vec<Bytes>,
    /// Where the channel stood at the read: the live stream goes on after it.
    pub top: StreamPosition,
    /// `Some` when `since` was given: whether every missed message is in `missed`.
    pub recovered: Option<bool>,
    /// Why not, when `recovered` is `Some(false)`.
    pub reason: Option<&'static str>,
}

impl Recovered {
    pub(crate) fn state(&self) -> StreamState<'_> {
        StreamState {
            offset: self.top.offset,
            epoch: &self.top.epoch,
            recovered: self.recovered,
            reason: self.reason,
        }
    }
}

/// Reads `channel`'s history for a subscription resuming after `since` (none: just its
/// position). A `since` that can no longer be served is not an error: the answer says
/// `recovered: false` and the reason, at the channel's current position. `"acked"` resumes
/// after the user's acknowledged position (personal channels).
pub(crate) async fn read(
    broker: &dyn Broker,
    channel: &ChannelName,
    since: Option<&Since>,
    history: ChannelHistory,
) -> Result<Recovered, BrokerError> {
    let position = match since {
        None => None,
        Some(Since::Position(p)) => Some(StreamPosition { offset: p.offset, epoch: p.epoch.clone() }),
        Some(Since::Acked) => {
            let inbox = retried(|| broker.inbox(channel, history.ttl)).await?;
            Some(StreamPosition { offset: inbox.acked, epoch: inbox.position.epoch })
        }
    };
    read_since(broker, channel, position, history).await
}

/// At connect, the personal channel: its history read, and the inbox state for `connected`
/// (`None` when the broker keeps no acknowledgements). Without `since` the inbox state alone
/// gives the position: one round trip; with a position both reads go out together.
pub(crate) async fn read_personal(
    broker: &dyn Broker,
    channel: &ChannelName,
    since: Option<&Since>,
    history: ChannelHistory,
) -> Result<(Recovered, Option<InboxStatus>), BrokerError> {
    let inbox = |status: Result<InboxStatus, BrokerError>| match status {
        Ok(status) => Ok(Some(status)),
        Err(BrokerError::HistoryUnsupported(_)) => Ok(None),
        Err(e) => Err(e),
    };
    match since {
        None => match inbox(retried(|| broker.inbox(channel, history.ttl)).await)? {
            Some(status) => {
                let top = status.position.clone();
                Ok((Recovered { missed: Vec::new(), top, recovered: None, reason: None }, Some(status)))
            }
            None => Ok((read_since(broker, channel, None, history).await?, None)),
        },
        Some(Since::Acked) => {
            let status = retried(|| broker.inbox(channel, history.ttl)).await?;
            let after = StreamPosition { offset: status.acked, epoch: status.position.epoch.clone() };
            Ok((read_since(broker, channel, Some(after), history).await?, Some(status)))
        }
        Some(Since::Position(_)) => {
            let (recovered, status) = tokio::join!(
                read(broker, channel, since, history),
                retried(|| broker.inbox(channel, history.ttl))
            );
            Ok((recovered?, inbox(status)?))
        }
    }
}

/// At connect, the reads of every channel joined with recovery, all at once: each from the
/// URL's `since` for it, if any, and `user`'s personal channel with its inbox state (for
/// `connected`). The first read that failed is the answer, as the error to refuse the
/// connection with.
pub(crate) async fn read_at_connect(
    broker: &dyn Broker,
    user: &UserId,
    channels: Vec<(ChannelName, ChannelHistory)>,
    since: &[(ChannelName, Since)],
) -> Result<(Vec<(ChannelName, Recovered)>, Option<InboxStatus>), Denied> {
    let reads = channels.iter().map(|(channel, history)| {
        let since = since.iter().find(|(c, _)| c == channel).map(|(_, since)| since);
        let personal = matches!(channel.kind(), ChannelKind::Personal(owner) if owner == user.as_str());
        async move {
            if personal {
                read_personal(broker, channel, since, *history).await
            } else {
                Ok((read(broker, channel, since, *history).await?, None))
            }
        }
    });
    let mut inbox = None;
    let mut recovered = Vec::with_capacity(channels.len());
    for (read, (channel, _)) in futures_util::future::join_all(reads).await.into_iter().zip(channels) {
        match read {
            Ok((read, status)) => {
                inbox = inbox.or(status);
                recovered.push((channel, read));
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "history read at connect failed");
                return Err(unread(&channel, &e));
            }
        }
    }
    Ok((recovered, inbox))
}

/// The error of a history read that failed: `no_history` where the broker keeps none (an
/// acknowledged position asked of an engine without acknowledgements), else `unavailable`.
pub(crate) fn unread(channel: &ChannelName, e: &BrokerError) -> Denied {
    match e {
        BrokerError::HistoryUnsupported(_) => (ErrorCode::NoHistory, format!("{channel}: {e}")),
        _ => (ErrorCode::Unavailable, format!("history of {channel} could not be read: {e}")),
    }
}

/// The `inbox` of `connected`.
pub(crate) fn inbox_state(status: &InboxStatus) -> InboxState<'_> {
    InboxState {
        offset: status.position.offset,
        epoch: &status.position.epoch,
        acked: status.acked,
        unread: status.unread,
    }
}

async fn read_since(
    broker: &dyn Broker,
    channel: &ChannelName,
    since: Option<StreamPosition>,
    history: ChannelHistory,
) -> Result<Recovered, BrokerError> {
    let resumes = since.is_some();
    let filter = HistoryFilter {
        limit: if resumes { None } else { Some(0) },
        since,
        reverse: false,
        ttl: history.ttl,
    };
    match retried(|| broker.history(channel, &filter)).await {
        Ok(read) => Ok(Recovered {
            missed: read.publications.iter().map(|p| wire::text(&p.payload)).collect(),
            top: read.position,
            recovered: resumes.then_some(true),
            reason: None,
        }),
        Err(BrokerError::Unrecoverable { reason, current }) => Ok(Recovered {
            missed: Vec::new(),
            top: current,
            recovered: Some(false),
            reason: Some(reason.code()),
        }),
        Err(e) => Err(e),
    }
}

/// Attempts of a history read before its error is the answer.
const READ_ATTEMPTS: usize = 3;

/// Runs `read` again when the broker was unreachable or did not answer: a read changes
/// nothing (but creating a channel's epoch, once), and right after Redis came back the first
/// command on the broker's old connection fails while the next one reconnects. Without this, a
/// gateway that says ready again would refuse the first connections after a Redis restart.
async fn retried<T, F, Fut>(mut read: F) -> Result<T, BrokerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BrokerError>>,
{
    let mut delay = Duration::from_millis(20);
    for _ in 1..READ_ATTEMPTS {
        match read().await {
            Err(BrokerError::Unavailable { .. } | BrokerError::OutcomeUnknown { .. }) => {
                tokio::time::sleep(delay).await;
                delay *= 5;
            }
            answer => return answer,
        }
    }
    read().await
}
