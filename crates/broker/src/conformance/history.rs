//! What every engine promises about channel history: offsets without gaps, reads in both
//! directions, recovery only of a complete window, epochs that change when the history is
//! lost, and publishes that an idempotency key makes happen once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{WAIT, beside, ch, node, until_marker};
use crate::history::frame_at;
use crate::{
    Broker, BrokerError, HistoryFilter, HistoryOptions, HistoryResult, InboxStatus, PublishResult,
    RecoveryFailure, StreamPosition,
};

/// Runs every history check against `broker`; channel names are made unique with `tag`.
pub async fn run_history(broker: Arc<dyn Broker>, tag: &str) {
    offsets_are_consecutive_under_concurrent_publishes(&broker, tag).await;
    history_reads_both_directions_with_a_limit(&broker, tag).await;
    recovery_needs_the_whole_window(&broker, tag).await;
    idempotent_publish_publishes_once(&broker, tag).await;
    a_read_before_the_first_publish_fixes_the_epoch(&broker, tag).await;
    expiry_starts_a_new_epoch(&broker, tag).await;
    requests_the_engines_cannot_serve_are_refused(&broker, tag).await;
    an_inbox_counts_what_is_not_acknowledged(&broker, tag).await;
    acknowledgements_are_refused_beyond_the_top_or_epoch(&broker, tag).await;
    an_inbox_read_before_the_first_publish_fixes_the_epoch(&broker, tag).await;
    an_expired_inbox_forgets_its_acknowledgement(&broker, tag).await;
}

/// History options keeping `size` messages for a minute.
pub fn options(size: usize) -> HistoryOptions {
    HistoryOptions {
        size,
        ttl: Duration::from_secs(60),
        idempotency_key: None,
        idempotency_ttl: Duration::from_secs(60),
    }
}

/// A read filter with a minute of TTL.
pub fn filter(since: Option<StreamPosition>, limit: Option<usize>, reverse: bool) -> HistoryFilter {
    HistoryFilter { since, limit, reverse, ttl: Duration::from_secs(60) }
}

/// The `i`th test message, as a publisher encodes it (without offset).
pub fn payload(i: usize) -> Bytes {
    Bytes::from(format!(r#"{{"type":"message","n":{i}}}"#))
}

fn offsets(result: &HistoryResult) -> Vec<u64> {
    result.publications.iter().map(|p| p.offset).collect()
}

async fn publish_n(
    broker: &Arc<dyn Broker>,
    channel: &str,
    n: usize,
    options: &HistoryOptions,
) -> PublishResult {
    let channel = ch(channel);
    let mut last = None;
    for i in 1..=n {
        last =
            Some(broker.publish_with_history(&channel, &format!("m{i}"), payload(i), options).await.unwrap());
    }
    last.expect("n > 0")
}

/// Concurrent publishes get offsets 1..=n without a gap or a repeat, every node receives them
/// in offset order with their position, and the history holds exactly the frames delivered.
pub async fn offsets_are_consecutive_under_concurrent_publishes(broker: &Arc<dyn Broker>, tag: &str) {
    let room = ch(&format!("hist{tag}:concurrent"));
    let barrier = beside(&room, &format!("hist{tag}:concurrent-barrier"));
    let (node, got) = node(broker);
    node.subscribe(&room).await.unwrap();
    node.subscribe(&barrier).await.unwrap();
    let publishers = (0..4).map(|p| {
        let (broker, room) = (broker.clone(), room.clone());
        async move {
            let mut results = Vec::new();
            for i in 0..50 {
                let id = format!("p{p}-{i}");
                results
                    .push(broker.publish_with_history(&room, &id, payload(i), &options(1000)).await.unwrap());
            }
            results
        }
    });
    let results: Vec<PublishResult> =
        futures_util::future::join_all(publishers).await.into_iter().flatten().collect();
    let epoch = results[0].epoch.clone();
    assert!(results.iter().all(|r| r.epoch == epoch && !r.deduplicated), "{results:?}");
    let mut assigned: Vec<u64> = results.iter().map(|r| r.offset).collect();
    assigned.sort_unstable();
    assert_eq!(assigned, (1..=200).collect::<Vec<u64>>(), "offsets with a gap or a repeat");

    let received = until_marker(broker, &got, &barrier).await;
    assert_eq!(received.len(), 201, "a message missing or twice: {received:?}");
    let positions = got.positions();
    let expected: Vec<(String, u64, String)> =
        (1..=200).map(|o| (room.to_string(), o, epoch.clone())).collect();
    assert_eq!(positions, expected, "delivered out of offset order or without position");
    for ((_, frame), offset) in received[..200].iter().zip(1u64..) {
        assert!(frame.starts_with(format!("{{\"offset\":{offset},").as_bytes()), "frame {offset}: {frame:?}");
    }

    let history = broker.history(&room, &filter(None, None, false)).await.unwrap();
    assert_eq!(history.position, StreamPosition { offset: 200, epoch });
    let stored: Vec<&Bytes> = history.publications.iter().map(|p| &p.payload).collect();
    let delivered: Vec<&Bytes> = received[..200].iter().map(|(_, p)| p).collect();
    assert_eq!(stored, delivered, "the history differs from what was delivered");
    node.close();
}

/// A history reads oldest or newest first, from its start or after a position, up to a limit,
/// and always tells the current top.
pub async fn history_reads_both_directions_with_a_limit(broker: &Arc<dyn Broker>, tag: &str) {
    let name = format!("hist{tag}:read");
    let room = ch(&name);
    let last = publish_n(broker, &name, 10, &options(100)).await;
    let at = |offset| Some(StreamPosition { offset, epoch: last.epoch.clone() });
    let cases = [
        (filter(None, Some(3), false), vec![1, 2, 3]),
        (filter(None, Some(3), true), vec![10, 9, 8]),
        (filter(at(5), Some(2), false), vec![6, 7]),
        (filter(at(5), Some(2), true), vec![10, 9]),
        (filter(at(5), None, false), vec![6, 7, 8, 9, 10]),
        (filter(None, Some(0), false), vec![]),
        (filter(at(10), None, false), vec![]),
        (filter(at(0), None, true), (1..=10).rev().collect()),
    ];
    for (filter, expected) in cases {
        let result = broker.history(&room, &filter).await.unwrap();
        assert_eq!(offsets(&result), expected, "{filter:?}");
        assert_eq!(result.position, StreamPosition { offset: 10, epoch: last.epoch.clone() }, "{filter:?}");
    }
    let third = broker.history(&room, &filter(at(2), Some(1), false)).await.unwrap();
    assert_eq!(third.publications[0].payload, frame_at(3, &payload(3)));
}

/// A history keeps exactly `size` messages; a position is recoverable only while everything
/// after it is kept, in the same epoch, and not beyond the top, and a refusal says why.
pub async fn recovery_needs_the_whole_window(broker: &Arc<dyn Broker>, tag: &str) {
    let name = format!("hist{tag}:window");
    let room = ch(&name);
    let last = publish_n(broker, &name, 10, &options(5)).await;
    let current = StreamPosition { offset: 10, epoch: last.epoch.clone() };
    let at = |offset| Some(StreamPosition { offset, epoch: last.epoch.clone() });
    let all = broker.history(&room, &filter(None, None, false)).await.unwrap();
    assert_eq!(offsets(&all), vec![6, 7, 8, 9, 10], "trimmed to another size than 5");
    let recovered = broker.history(&room, &filter(at(5), None, false)).await.unwrap();
    assert_eq!(offsets(&recovered), vec![6, 7, 8, 9, 10]);
    let other_epoch = Some(StreamPosition { offset: 10, epoch: format!("{}x", last.epoch) });
    for (since, reason) in [
        (at(4), RecoveryFailure::PositionTooOld),
        (at(0), RecoveryFailure::PositionTooOld),
        (at(11), RecoveryFailure::PositionAhead),
        (other_epoch, RecoveryFailure::EpochChanged),
    ] {
        match broker.history(&room, &filter(since.clone(), None, false)).await {
            Err(BrokerError::Unrecoverable { reason: got, current: now }) => {
                assert_eq!((got, &now), (reason, &current), "since {since:?}");
            }
            other => panic!("since {since:?}: expected {reason}, got {other:?}"),
        }
    }
}

/// A publish repeated with the same idempotency key publishes nothing and returns the first
/// result; a subscriber sees the message once and the history holds it once.
pub async fn idempotent_publish_publishes_once(broker: &Arc<dyn Broker>, tag: &str) {
    let room = ch(&format!("hist{tag}:idempotent"));
    let barrier = beside(&room, &format!("hist{tag}:idempotent-barrier"));
    let (node, got) = node(broker);
    node.subscribe(&room).await.unwrap();
    node.subscribe(&barrier).await.unwrap();
    let keyed = |key: &str| HistoryOptions { idempotency_key: Some(key.into()), ..options(100) };
    let first = broker.publish_with_history(&room, "m1", payload(1), &keyed("k1")).await.unwrap();
    assert!(!first.deduplicated);
    let retry = broker.publish_with_history(&room, "m2", payload(2), &keyed("k1")).await.unwrap();
    assert_eq!(retry, PublishResult { deduplicated: true, ..first.clone() }, "not the first result");
    let other = broker.publish_with_history(&room, "m3", payload(3), &keyed("k2")).await.unwrap();
    assert_eq!((other.offset, other.deduplicated, other.message_id.as_str()), (2, false, "m3"));

    let received = until_marker(broker, &got, &barrier).await;
    let on_room: Vec<&Bytes> = received.iter().filter(|(c, _)| *c == room.as_str()).map(|(_, p)| p).collect();
    assert_eq!(on_room, [&frame_at(1, &payload(1)), &frame_at(2, &payload(3))], "the retry was delivered");
    let history = broker.history(&room, &filter(None, None, false)).await.unwrap();
    assert_eq!(offsets(&history), vec![1, 2], "the retry was stored");
    node.close();
}

/// Reading a channel that has no history yet fixes its epoch: the first publish continues it,
/// so a client that subscribed before recovers the first message.
pub async fn a_read_before_the_first_publish_fixes_the_epoch(broker: &Arc<dyn Broker>, tag: &str) {
    let name = format!("hist{tag}:fresh");
    let room = ch(&name);
    let before = broker.history(&room, &filter(None, None, false)).await.unwrap();
    assert_eq!((before.position.offset, before.publications.len()), (0, 0));
    let first = publish_n(broker, &name, 1, &options(10)).await;
    assert_eq!(
        (first.offset, &first.epoch),
        (1, &before.position.epoch),
        "the first publish began another epoch"
    );
    let recovered = broker.history(&room, &filter(Some(before.position), None, false)).await.unwrap();
    assert_eq!(offsets(&recovered), vec![1]);
}

/// When a history outlives its TTL it is gone: the epoch changes, the old position cannot be
/// recovered, and offsets start again at 1.
pub async fn expiry_starts_a_new_epoch(broker: &Arc<dyn Broker>, tag: &str) {
    let name = format!("hist{tag}:expiry");
    let room = ch(&name);
    let ttl = Duration::from_secs(1);
    let short = HistoryOptions { ttl, ..options(10) };
    let last = publish_n(broker, &name, 3, &short).await;
    let old = StreamPosition { offset: 3, epoch: last.epoch.clone() };
    let read = HistoryFilter { ttl, ..filter(None, None, false) };
    let deadline = Instant::now() + WAIT + ttl;
    let renewed = loop {
        let now = broker.history(&room, &read).await.unwrap();
        if now.position.epoch != old.epoch {
            break now;
        }
        assert_eq!(now.position, old, "the history changed without a new epoch");
        assert!(Instant::now() < deadline, "the history outlived its TTL of {ttl:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (renewed.position.offset, renewed.publications.len()),
        (0, 0),
        "kept messages of an expired history"
    );
    let since_old = HistoryFilter { since: Some(old), ..read.clone() };
    match broker.history(&room, &since_old).await {
        Err(BrokerError::Unrecoverable { reason: RecoveryFailure::EpochChanged, .. }) => {}
        other => panic!("recovered across an expiry: {other:?}"),
    }
    let next = publish_n(broker, &name, 1, &short).await;
    assert_eq!((next.offset, next.epoch), (1, renewed.position.epoch));
}

/// What cannot be stored the same way on every engine is refused with a clear error, and
/// nothing is published.
pub async fn requests_the_engines_cannot_serve_are_refused(broker: &Arc<dyn Broker>, tag: &str) {
    let room = ch(&format!("hist{tag}:invalid"));
    let refused =
        |r: Result<PublishResult, BrokerError>| matches!(r, Err(BrokerError::InvalidHistoryRequest(_)));
    assert!(refused(broker.publish_with_history(&room, "m", Bytes::from_static(b"[1]"), &options(10)).await));
    assert!(refused(broker.publish_with_history(&room, "m", payload(1), &options(0)).await));
    let long_key = HistoryOptions { idempotency_key: Some("k".repeat(500)), ..options(10) };
    assert!(refused(broker.publish_with_history(&room, "m", payload(1), &long_key).await));
    let history = broker.history(&room, &filter(None, None, false)).await.unwrap();
    assert_eq!(history.position.offset, 0, "a refused publish was stored");
}

/// The TTL the inbox checks give a channel they create.
const INBOX_TTL: Duration = Duration::from_secs(60);

/// An inbox counts the kept messages after the acknowledged position, which all devices
/// share and which never moves backwards; a read since it returns exactly those messages,
/// and what the size bound trimmed is not counted.
pub async fn an_inbox_counts_what_is_not_acknowledged(broker: &Arc<dyn Broker>, tag: &str) {
    let name = format!("user:inbox-{tag}");
    let inbox = ch(&name);
    let last = publish_n(broker, &name, 50, &options(1000)).await;
    let at = |offset| StreamPosition { offset, epoch: last.epoch.clone() };
    let status = broker.inbox(&inbox, INBOX_TTL).await.unwrap();
    assert_eq!(status, InboxStatus { position: at(50), acked: 0, unread: 50 });

    assert_eq!(broker.ack(&inbox, &at(30), INBOX_TTL).await.unwrap(), at(30));
    let status = broker.inbox(&inbox, INBOX_TTL).await.unwrap();
    assert_eq!(status, InboxStatus { position: at(50), acked: 30, unread: 20 });
    let unread = broker.history(&inbox, &filter(Some(at(status.acked)), None, false)).await.unwrap();
    assert_eq!(offsets(&unread), (31..=50).collect::<Vec<u64>>(), "not exactly the unread messages");

    assert_eq!(broker.ack(&inbox, &at(10), INBOX_TTL).await.unwrap(), at(30), "the ack moved backwards");
    let no_epoch = StreamPosition { offset: 35, epoch: String::new() };
    assert_eq!(broker.ack(&inbox, &no_epoch, INBOX_TTL).await.unwrap(), at(35), "no epoch: the current one");

    // 50 published with a size of 40: 11..=50 are kept; acknowledged up to 35, 15 are left.
    let trimmed_name = format!("user:inbox-trimmed-{tag}");
    let trimmed = ch(&trimmed_name);
    let last = publish_n(broker, &trimmed_name, 50, &options(40)).await;
    let at = |offset| StreamPosition { offset, epoch: last.epoch.clone() };
    assert_eq!(broker.inbox(&trimmed, INBOX_TTL).await.unwrap().unread, 40, "trimmed messages counted");
    broker.ack(&trimmed, &at(5), INBOX_TTL).await.unwrap();
    assert_eq!(broker.inbox(&trimmed, INBOX_TTL).await.unwrap().unread, 40);
    broker.ack(&trimmed, &at(35), INBOX_TTL).await.unwrap();
    assert_eq!(broker.inbox(&trimmed, INBOX_TTL).await.unwrap().unread, 15);
}

/// An acknowledgement of another epoch or beyond the top is refused with the reason and the
/// current top, and leaves the acknowledged position as it was.
pub async fn acknowledgements_are_refused_beyond_the_top_or_epoch(broker: &Arc<dyn Broker>, tag: &str) {
    let name = format!("user:ack-refused-{tag}");
    let inbox = ch(&name);
    let last = publish_n(broker, &name, 5, &options(100)).await;
    let current = StreamPosition { offset: 5, epoch: last.epoch.clone() };
    broker.ack(&inbox, &StreamPosition { offset: 2, epoch: last.epoch.clone() }, INBOX_TTL).await.unwrap();
    for (position, reason) in [
        (StreamPosition { offset: 6, epoch: last.epoch.clone() }, RecoveryFailure::PositionAhead),
        (StreamPosition { offset: 6, epoch: String::new() }, RecoveryFailure::PositionAhead),
        (StreamPosition { offset: 3, epoch: format!("{}x", last.epoch) }, RecoveryFailure::EpochChanged),
    ] {
        match broker.ack(&inbox, &position, INBOX_TTL).await {
            Err(BrokerError::Unrecoverable { reason: got, current: now }) => {
                assert_eq!((got, &now), (reason, &current), "ack of {position:?}");
            }
            other => panic!("ack of {position:?}: expected {reason}, got {other:?}"),
        }
    }
    assert_eq!(broker.inbox(&inbox, INBOX_TTL).await.unwrap().acked, 2, "a refused ack moved it");
}

/// Reading the inbox of a user who never got anything fixes its epoch, so a device that took
/// its position then recovers the first notification; acknowledging offset 0 there is fine.
pub async fn an_inbox_read_before_the_first_publish_fixes_the_epoch(broker: &Arc<dyn Broker>, tag: &str) {
    let name = format!("user:inbox-fresh-{tag}");
    let inbox = ch(&name);
    let before = broker.inbox(&inbox, INBOX_TTL).await.unwrap();
    assert_eq!((before.position.offset, before.acked, before.unread), (0, 0, 0));
    assert_eq!(broker.ack(&inbox, &before.position, INBOX_TTL).await.unwrap(), before.position);
    let first = publish_n(broker, &name, 1, &options(10)).await;
    assert_eq!(first.epoch, before.position.epoch, "the first publish began another epoch");
    assert_eq!(broker.inbox(&inbox, INBOX_TTL).await.unwrap().unread, 1);
    let acked_fresh = format!("user:ack-fresh-{tag}");
    let nothing = StreamPosition { offset: 0, epoch: String::new() };
    let fresh = broker.ack(&ch(&acked_fresh), &nothing, INBOX_TTL).await.unwrap();
    let first = publish_n(broker, &acked_fresh, 1, &options(10)).await;
    assert_eq!((fresh.offset, &fresh.epoch), (0, &first.epoch), "an ack did not fix the epoch");
}

/// An inbox whose history expired starts a new epoch with nothing acknowledged: the old
/// acknowledgement went with the history it was about.
pub async fn an_expired_inbox_forgets_its_acknowledgement(broker: &Arc<dyn Broker>, tag: &str) {
    let name = format!("user:inbox-expiry-{tag}");
    let inbox = ch(&name);
    let ttl = Duration::from_secs(1);
    let short = HistoryOptions { ttl, ..options(10) };
    let last = publish_n(broker, &name, 3, &short).await;
    let acked = broker.ack(&inbox, &StreamPosition { offset: 2, epoch: last.epoch.clone() }, ttl).await;
    assert_eq!(acked.unwrap().offset, 2);
    let deadline = Instant::now() + WAIT + ttl;
    let renewed = loop {
        let now = broker.inbox(&inbox, ttl).await.unwrap();
        if now.position.epoch != last.epoch {
            break now;
        }
        assert_eq!((now.acked, now.unread), (2, 1), "the inbox changed without a new epoch");
        assert!(Instant::now() < deadline, "the inbox outlived its TTL of {ttl:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((renewed.position.offset, renewed.acked, renewed.unread), (0, 0, 0));
    let next = publish_n(broker, &name, 1, &short).await;
    let status = broker.inbox(&inbox, ttl).await.unwrap();
    assert_eq!(
        status,
        InboxStatus { position: StreamPosition { offset: 1, epoch: next.epoch }, acked: 0, unread: 1 }
    );
}
