//! Channel history: the types both engines share, and the rules they apply the same way.
//!
//! A channel with history is a numbered log. Each publish takes the next `offset` (1, 2, 3,
//! ... per channel, no gaps) and the log has an `epoch`, a random string chosen when the log
//! is created. A client that saw up to offset `n` of epoch `e` has missed exactly the
//! entries after `n`, if the log still has epoch `e` and still keeps entry `n + 1`. The epoch
//! changes whenever the log may have been lost and restarted at 1: its TTL ran out, it was
//! evicted, or a Redis without persistence restarted. So a position names a message only
//! together with its epoch, and a client is never handed a silent gap: either every entry
//! after its position, or an [`Unrecoverable`](crate::BrokerError::Unrecoverable) error with
//! the reason.
//!
//! The message frame carries its offset: a publisher hands over its encoded JSON object and
//! the engine writes `{"offset":N,` in place of its opening `{` at the moment the offset is
//! assigned. The frame is built once; the history keeps it and subscribers get it as it is.
//!
//! The Redis engine's layout (keys, the publish script, what `appendfsync` means for an
//! acknowledged publish) is described in `redis/history.rs`; the in-memory engine keeps the
//! same state in `memory/history.rs`.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rand::Rng;

use crate::BrokerError;

/// Longest idempotency key accepted, in bytes. It becomes part of a Redis key name.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// A place in a channel's history: everything up to `offset` of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The last offset covered; 0 before the first message.
    pub offset: u64,
    /// The history this offset belongs to. Offsets of different epochs are unrelated.
    pub epoch: String,
}

/// How a publish keeps its channel's history. Passed with every publish rather than stored,
/// because the namespace configuration that decides it belongs to the caller and may change
/// between deployments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Messages kept; older ones are trimmed exactly, so a client that recovers gets at most
    /// this many. At least 1.
    pub size: usize,
    /// How long the history lives after its last publish. When it runs out the history is
    /// gone and the next publish starts a new epoch. More than zero.
    pub ttl: Duration,
    /// When set, a publish with the same key on the same channel within `idempotency_ttl`
    /// publishes nothing and returns the first publish's result: a publisher that got no
    /// answer can retry without delivering twice.
    pub idempotency_key: Option<String>,
    /// How long an idempotency key is remembered. More than zero when a key is given.
    pub idempotency_ttl: Duration,
}

/// Which part of a channel's history to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Only the entries after this position, which must still be fully kept: otherwise the
    /// read fails with [`BrokerError::Unrecoverable`] rather than returning fewer entries.
    pub since: Option<StreamPosition>,
    /// At most this many entries (`Some(0)`: none, just the current position); `None` for
    /// everything kept, which `HistoryOptions::size` bounds.
    pub limit: Option<usize>,
    /// Newest first. With `since` and a limit, that returns the newest entries after it.
    pub reverse: bool,
    /// The channel's history TTL. A read of a channel that has no history yet creates its
    /// epoch, living this long, so that a client subscribing before the first publish holds
    /// a position the first publish continues. An existing history's TTL is not touched.
    pub ttl: Duration,
}

/// One kept message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPublication {
    pub offset: u64,
    /// The frame as subscribers received it, offset included.
    pub payload: Bytes,
}

/// What a history read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryResult {
    /// In the order the filter asked for.
    pub publications: Vec<HistoryPublication>,
    /// The channel's current top: the offset of its last publish and its epoch, read in the
    /// same step as the entries, so live messages after it continue without gap or overlap.
    pub position: StreamPosition,
}

/// What a publish with history did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResult {
    /// The message's offset.
    pub offset: u64,
    /// The epoch the offset belongs to.
    pub epoch: String,
    /// The message's id: the one given, or for a deduplicated retry the first publish's.
    pub message_id: String,
    /// `true` when the idempotency key was seen before and nothing was published now.
    pub deduplicated: bool,
}

/// Where an inbox (a channel's history and its acknowledgement) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxStatus {
    /// The top: the offset of the last message, and the epoch.
    pub position: StreamPosition,
    /// Everything up to this offset of `position.epoch` is acknowledged; 0 when nothing is
    /// (or the acknowledgement was of an earlier epoch).
    pub acked: u64,
    /// Messages after `acked` that are still kept: what a device recovering from the
    /// acknowledged position receives.
    pub unread: u64,
}

/// Why a history read could not return every entry after a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryFailure {
    /// The history was lost and restarted since the position was taken.
    EpochChanged,
    /// Entries after the position were trimmed (by size) already.
    PositionTooOld,
    /// The position is beyond the channel's top: the history lost its newest entries (a
    /// Redis restarted from a persistence file that missed the last writes).
    PositionAhead,
}

impl RecoveryFailure {
    /// The reason code clients are told.
    pub fn code(self) -> &'static str {
        match self {
            Self::EpochChanged => "epoch_changed",
            Self::PositionTooOld => "position_too_old",
            Self::PositionAhead => "position_ahead",
        }
    }
}

impl std::fmt::Display for RecoveryFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Whether every entry after `since` is still kept, given the current top and the oldest
/// kept offset (`None`: nothing kept).
pub(crate) fn check_since(
    since: &StreamPosition,
    current: &StreamPosition,
    oldest: Option<u64>,
) -> Result<(), RecoveryFailure> {
    if since.epoch != current.epoch {
        return Err(RecoveryFailure::EpochChanged);
    }
    if since.offset > current.offset {
        return Err(RecoveryFailure::PositionAhead);
    }
    if since.offset == current.offset {
        return Ok(());
    }
    match oldest {
        Some(oldest) if oldest <= since.offset + 1 => Ok(()),
        _ => Err(RecoveryFailure::PositionTooOld),
    }
}

/// Whether an acknowledgement of `position` can be taken, given the current top. An empty
/// epoch stands for the current one.
pub(crate) fn check_ack(position: &StreamPosition, current: &StreamPosition) -> Result<(), BrokerError> {
    let refuse = |reason| Err(BrokerError::Unrecoverable { reason, current: current.clone() });
    if !position.epoch.is_empty() && position.epoch != current.epoch {
        return refuse(RecoveryFailure::EpochChanged);
    }
    if position.offset > current.offset {
        return refuse(RecoveryFailure::PositionAhead);
    }
    Ok(())
}

/// An inbox at `position` with `acked` of its epoch acknowledged and `oldest` the oldest
/// offset still kept (`None`: nothing kept). Unread is what a device recovering from the
/// acknowledged position receives: the kept entries after it.
pub(crate) fn inbox_status(position: StreamPosition, acked: u64, oldest: Option<u64>) -> InboxStatus {
    let acked = acked.min(position.offset);
    let unread = match oldest {
        Some(oldest) => position.offset - acked.max(oldest.saturating_sub(1)).min(position.offset),
        None => 0,
    };
    InboxStatus { position, acked, unread }
}

/// Refuses what neither engine could store the same way.
pub(crate) fn check_publish(payload: &[u8], options: &HistoryOptions) -> Result<(), BrokerError> {
    if payload.len() < 2 || payload[0] != b'{' || payload[1] == b'}' || payload.last() != Some(&b'}') {
        return Err(BrokerError::InvalidHistoryRequest("the payload is not a non-empty JSON object"));
    }
    if payload.starts_with(b"{\"offset\"") {
        return Err(BrokerError::InvalidHistoryRequest("the payload carries an offset already"));
    }
    if options.size == 0 {
        return Err(BrokerError::InvalidHistoryRequest("history size must be at least 1"));
    }
    if options.ttl.is_zero() {
        return Err(BrokerError::InvalidHistoryRequest("history ttl must be more than zero"));
    }
    if let Some(key) = &options.idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(BrokerError::InvalidHistoryRequest("idempotency key must be 1 to 128 bytes"));
        }
        if options.idempotency_ttl.is_zero() {
            return Err(BrokerError::InvalidHistoryRequest("idempotency ttl must be more than zero"));
        }
    }
    Ok(())
}

pub(crate) fn check_filter(filter: &HistoryFilter) -> Result<(), BrokerError> {
    check_ttl(filter.ttl)
}

/// The TTL a read gives a history it creates must let it live.
pub(crate) fn check_ttl(ttl: Duration) -> Result<(), BrokerError> {
    if ttl.is_zero() {
        return Err(BrokerError::InvalidHistoryRequest("history ttl must be more than zero"));
    }
    Ok(())
}

/// The frame of `payload` (a JSON object) at `offset`: `{"offset":N,` then the rest.
pub(crate) fn frame_at(offset: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 32);
    out.put_slice(b"{\"offset\":");
    out.put_slice(offset.to_string().as_bytes());
    out.put_u8(b',');
    out.put_slice(&payload[1..]);
    out.freeze()
}

/// A new epoch: 12 random alphanumerics, so two histories of one channel practically never
/// share one.
pub(crate) fn new_epoch() -> String {
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(12).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition { offset, epoch: epoch.into() }
    }

    #[test]
    fn a_position_is_recoverable_only_while_everything_after_it_is_kept() {
        let top = pos(10, "e");
        assert_eq!(check_since(&pos(10, "e"), &top, None), Ok(()), "nothing missed");
        assert_eq!(check_since(&pos(5, "e"), &top, Some(6)), Ok(()));
        assert_eq!(check_since(&pos(4, "e"), &top, Some(6)), Err(RecoveryFailure::PositionTooOld));
        assert_eq!(check_since(&pos(4, "e"), &top, None), Err(RecoveryFailure::PositionTooOld));
        assert_eq!(check_since(&pos(11, "e"), &top, Some(6)), Err(RecoveryFailure::PositionAhead));
        assert_eq!(check_since(&pos(10, "x"), &top, Some(6)), Err(RecoveryFailure::EpochChanged));
    }

    #[test]
    fn unread_counts_the_kept_entries_after_the_acknowledgement() {
        let unread = |acked, oldest| inbox_status(pos(50, "e"), acked, oldest).unread;
        assert_eq!(unread(0, Some(1)), 50);
        assert_eq!(unread(30, Some(1)), 20);
        assert_eq!(unread(5, Some(11)), 40, "trimmed entries are not unread");
        assert_eq!(unread(50, Some(1)), 0);
        assert_eq!(unread(0, None), 0, "nothing kept, nothing to read");
        assert_eq!(inbox_status(pos(50, "e"), 60, Some(1)).acked, 50, "an ack beyond the top");
    }

    #[test]
    fn an_ack_must_be_of_the_epoch_and_within_the_top() {
        let top = pos(10, "e");
        assert!(check_ack(&pos(10, "e"), &top).is_ok());
        assert!(check_ack(&pos(3, ""), &top).is_ok(), "an empty epoch is the current one");
        let reason = |p| match check_ack(&p, &top) {
            Err(BrokerError::Unrecoverable { reason, current }) if current == top => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(pos(11, "e")), RecoveryFailure::PositionAhead);
        assert_eq!(reason(pos(1, "x")), RecoveryFailure::EpochChanged);
    }

    #[test]
    fn the_offset_leads_the_frame() {
        assert_eq!(&frame_at(7, br#"{"type":"message"}"#)[..], br#"{"offset":7,"type":"message"}"#);
    }

    #[test]
    fn payloads_that_cannot_take_an_offset_are_refused() {
        let options = HistoryOptions {
            size: 1,
            ttl: Duration::from_secs(1),
            idempotency_key: None,
            idempotency_ttl: Duration::ZERO,
        };
        for bad in [&b"{}"[..], b"[1]", b"{", b"", br#"{"offset":1,"a":2}"#] {
            assert!(check_publish(bad, &options).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(check_publish(br#"{"a":1}"#, &options).is_ok());
        let no_ttl = HistoryOptions { idempotency_key: Some("k".into()), ..options };
        assert!(check_publish(br#"{"a":1}"#, &no_ttl).is_err());
    }
}
