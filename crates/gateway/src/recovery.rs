//! The history read of a subscription with recovery: what a connection joining a channel
//! with history reads once the node's subscription is confirmed, to write before going live
//! (see [`crate::hub::Hub::finish_recovery`]).
//!
//! One read per channel: with `since`, everything after it (or why that cannot be had); without,
//! just the channel's position (`limit` 0). The personal channel at connect reads its inbox
//! state instead, which carries the position too, so a plain connect costs one round trip.
//! At connect every channel's read goes out at once ([`read_at_connect`]).
//!
//! Reads of one channel from one position are shared ([`Reads`]): when a gateway dies, its
//! thousands of subscribers of a room come back to the others at once, each with the same
//! `since`, and one read must serve them all, or Redis sends the same entries thousands of
//! times while every handshake waits for its own copy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use bytes::Bytes;
use herald_broker::{Broker, BrokerError, HistoryFilter, InboxStatus, StreamPosition};
use herald_protocol::{
    ChannelHistory, ChannelKind, ChannelName, ErrorCode, InboxState, Since, StreamState, UserId,
};

use crate::policy::Denied;
use crate::wire;

/// What a subscription's history read found.
#[derive(Clone)]
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

/// When a subscriber joined its channel, in the order [`Reads`] keeps: a read that began
/// after it may serve it; one that began before may not, since it may end before messages
/// the subscriber did not see live.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

type SharedRead = Shared<BoxFuture<'static, Result<Recovered, Arc<BrokerError>>>>;

/// A channel and the position its subscribers resume after (`None`: just the position).
type ReadKey = (ChannelName, Option<StreamPosition>);

/// The history reads of a node's recovering subscribers, shared between those that ask for
/// the same channel from the same position. A read serves every subscriber that joined the
/// channel before the read began (see [`Ticket`]); it is forgotten once done, so a read
/// never serves a position from the past.
#[derive(Default)]
pub(crate) struct Reads {
    clock: AtomicU64,
    in_flight: Mutex<HashMap<ReadKey, (u64, SharedRead)>>,
}

impl Reads {
    /// Taken by a subscriber right after it joined the hub, before it asks for its read.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.clock.fetch_add(1, Ordering::SeqCst))
    }

    /// Reads in flight now, for tests.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("reads lock poisoned").len()
    }

    /// [`read`], shared with the other subscribers that ask for `channel` after the same
    /// position and joined before the read began. `"acked"` is per user: not shared.
    pub(crate) async fn read(
        &self,
        broker: &Arc<dyn Broker>,
        ticket: Ticket,
        channel: &ChannelName,
        since: Option<&Since>,
        history: ChannelHistory,
    ) -> Result<Recovered, Arc<BrokerError>> {
        let position = match since {
            None => None,
            Some(Since::Position(p)) => Some(StreamPosition { offset: p.offset, epoch: p.epoch.clone() }),
            Some(Since::Acked) => {
                return read(broker.as_ref(), channel, since, history).await.map_err(Arc::new);
            }
        };
        let key = (channel.clone(), position);
        let (began, shared) = {
            let mut in_flight = self.in_flight.lock().expect("reads lock poisoned");
            match in_flight.get(&key) {
                Some((began, shared)) if *began > ticket.0 => (*began, shared.clone()),
                _ => {
                    let began = self.clock.fetch_add(1, Ordering::SeqCst);
                    let (broker, channel, since) = (broker.clone(), key.0.clone(), key.1.clone());
                    let read = async move {
                        read_since(broker.as_ref(), &channel, since, history).await.map_err(Arc::new)
                    };
                    let shared = read.boxed().shared();
                    in_flight.insert(key.clone(), (began, shared.clone()));
                    (began, shared)
                }
            }
        };
        let result = shared.await;
        let mut in_flight = self.in_flight.lock().expect("reads lock poisoned");
        if in_flight.get(&key).is_some_and(|(b, _)| *b == began) {
            in_flight.remove(&key);
        }
        result
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
    reads: &Reads,
    broker: &Arc<dyn Broker>,
    ticket: Ticket,
    user: &UserId,
    channels: Vec<(ChannelName, ChannelHistory)>,
    since: &[(ChannelName, Since)],
) -> Result<(Vec<(ChannelName, Recovered)>, Option<InboxStatus>), Denied> {
    let reads = channels.iter().map(|(channel, history)| {
        let since = since.iter().find(|(c, _)| c == channel).map(|(_, since)| since);
        let personal = matches!(channel.kind(), ChannelKind::Personal(owner) if owner == user.as_str());
        async move {
            if personal {
                read_personal(broker.as_ref(), channel, since, *history).await.map_err(Arc::new)
            } else {
                Ok((reads.read(broker, ticket, channel, since, *history).await?, None))
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use bytes::Bytes;
    use herald_broker::{Delivery, HistoryOptions, HistoryResult, MemoryBroker, PublishResult, Subscriber};
    use herald_protocol::Position;

    use super::*;

    /// The in-memory engine, counting history reads and holding each until released, so that
    /// reads are in flight together.
    struct Counting {
        inner: MemoryBroker,
        reads: AtomicUsize,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl Broker for Counting {
        async fn publish(&self, channel: &ChannelName, payload: Bytes) -> Result<(), BrokerError> {
            self.inner.publish(channel, payload).await
        }
        async fn publish_batch(&self, batch: &[(ChannelName, Bytes)]) -> Result<(), BrokerError> {
            self.inner.publish_batch(batch).await
        }
        fn subscriber(&self, delivery: Arc<dyn Delivery>) -> Arc<dyn Subscriber> {
            self.inner.subscriber(delivery)
        }
        async fn publish_with_history(
            &self,
            channel: &ChannelName,
            message_id: &str,
            payload: Bytes,
            options: &HistoryOptions,
        ) -> Result<PublishResult, BrokerError> {
            self.inner.publish_with_history(channel, message_id, payload, options).await
        }
        async fn history(
            &self,
            channel: &ChannelName,
            filter: &HistoryFilter,
        ) -> Result<HistoryResult, BrokerError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let _permit = self.gate.acquire().await.expect("gate open");
            self.inner.history(channel, filter).await
        }
        async fn ping(&self) -> Result<(), BrokerError> {
            Ok(())
        }
        fn name(&self) -> &'static str {
            "counting"
        }
    }

    #[tokio::test]
    async fn subscribers_asking_alike_share_one_read_begun_after_they_joined() {
        let counting = Arc::new(Counting {
            inner: MemoryBroker::new(),
            reads: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
        });
        let broker: Arc<dyn Broker> = counting.clone();
        let channel = ChannelName::parse("room:storm").unwrap();
        let history = ChannelHistory { size: 100, ttl: Duration::from_secs(60) };
        let options = HistoryOptions {
            size: 100,
            ttl: history.ttl,
            idempotency_key: None,
            idempotency_ttl: Duration::ZERO,
        };
        let mut epoch = String::new();
        for n in 0..5 {
            let payload = Bytes::from(format!("{{\"n\":{n}}}"));
            epoch = broker
                .publish_with_history(&channel, &format!("m{n}"), payload, &options)
                .await
                .unwrap()
                .epoch;
        }
        let since = Since::Position(Position { offset: 2, epoch });
        let reads = Arc::new(Reads::default());

        // A hundred subscribers that joined before any read began: one read serves them all.
        let tickets: Vec<Ticket> = (0..100).map(|_| reads.ticket()).collect();
        let waiting: Vec<_> = tickets
            .into_iter()
            .map(|ticket| {
                let (reads, broker, channel, since) =
                    (reads.clone(), broker.clone(), channel.clone(), since.clone());
                tokio::spawn(
                    async move { reads.read(&broker, ticket, &channel, Some(&since), history).await },
                )
            })
            .collect();
        while counting.reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // One that joins now, while that read is in flight, may have missed what it returns:
        // it gets a read of its own.
        let late = {
            let (ticket, reads, broker, channel, since) =
                (reads.ticket(), reads.clone(), broker.clone(), channel.clone(), since.clone());
            tokio::spawn(async move { reads.read(&broker, ticket, &channel, Some(&since), history).await })
        };
        while counting.reads.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        counting.gate.add_permits(10);
        for read in waiting.into_iter().chain([late]) {
            let read = read.await.unwrap().unwrap();
            assert_eq!((read.missed.len(), read.top.offset, read.recovered), (3, 5, Some(true)));
        }
        assert_eq!(counting.reads.load(Ordering::SeqCst), 2, "101 subscribers, two reads");
        assert_eq!(reads.in_flight(), 0, "done reads are forgotten");
    }
}
