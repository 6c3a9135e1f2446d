//! Channels with history in the hub: where the node stands in each, how it fills a gap,
//! and what each subscriber that joined with recovery still has to be given.
//!
//! A message of a channel with history carries its `offset` and the channel's `epoch`
//! ([`herald_broker::Delivery::deliver_at`]). The node keeps the last position it delivered
//! ([`Stream::position`]) and passes each message through [`Stream::accept`]: the next offset
//! goes out, an offset already delivered is a duplicate (after a repair, or a message in
//! flight while a subscriber read the history), a higher one is a gap: the messages after it
//! are held in a bounded pending buffer while a task reads the missing ones from the history
//! ([`Stream::finish`] merges both). A new epoch, or a gap the history cannot fill, becomes a
//! [`Event::Reset`] for every subscriber. Nothing here blocks or waits: the hub runs it under
//! its shard lock and spawns the reads.
//!
//! A subscriber that joins with recovery is first [`Joined::Recovering`]: the hub keeps what
//! it would have sent it, while the connection reads the history. Then the connection writes
//! the history, the kept events after it ([`Tail::step`] drops what the history held), and the
//! subscriber goes live. If the node is still behind the history read at that moment, the
//! subscriber is [`Joined::CatchingUp`] until the node reaches it, skipping what it has.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{HistoryResult, RecoveryFailure, StreamPosition};
use herald_protocol::{ChannelName, ServerFrame};

use crate::registry::ConnMap;
use crate::wire;

/// Messages held while a gap is being repaired. When more arrive before the history was read
/// (the broker is slow or unreachable), the gap is given up: subscribers get a `reset`
/// (reason [`UNREPAIRED`]) and the held messages.
pub(crate) const MAX_PENDING: usize = 4096;

/// The reset reason when the gateway could not fill a gap from the history (the broker did
/// not answer in time, or [`MAX_PENDING`] messages arrived meanwhile).
pub(crate) const UNREPAIRED: &str = "unrepaired";

/// A place in a channel's history, as the hub keeps it: the epoch is shared by every event
/// of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pos {
    pub offset: u64,
    pub epoch: Arc<str>,
}

impl Pos {
    pub(crate) fn new(offset: u64, epoch: &str) -> Self {
        Self { offset, epoch: epoch.into() }
    }

    pub(crate) fn to_stream(&self) -> StreamPosition {
        StreamPosition { offset: self.offset, epoch: self.epoch.to_string() }
    }
}

/// What the node passes on for a channel with history, in order.
#[derive(Clone)]
pub(crate) enum Event {
    /// The next message of the node's stream.
    Msg { at: Pos, frame: Bytes },
    /// A message the node delivered already: only a subscriber still recovering may lack it.
    Old { at: Pos, frame: Bytes },
    /// A message without a position (its publisher kept no history): passed on as it is.
    Plain { frame: Bytes },
    /// Messages before `at` were lost; `frame` is the encoded `reset` frame.
    Reset { at: Pos, frame: Bytes },
}

/// The encoded `reset` frame of `channel`, going on after `at`.
pub(crate) fn reset_frame(channel: &ChannelName, reason: &str, at: &Pos) -> Bytes {
    let json = ServerFrame::Reset { channel, reason, offset: at.offset, epoch: &at.epoch }.to_json();
    wire::text(json.as_bytes())
}

/// Where one subscriber stands that is not in step with the node.
pub(crate) enum Joined {
    /// Reading the history; the events it would have been sent wait here, at most `max`.
    Recovering { events: Vec<Event>, max: usize },
    /// Its buffer overflowed; its connection was asked to close as a slow consumer.
    Overflowed,
    /// Live, but ahead of the node: events up to its tail are skipped.
    CatchingUp(Tail),
}

/// The last position one subscriber was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail(pub Pos);

impl Tail {
    /// Appends to `out` the frames this subscriber gets for `event`. Never a silent gap: a
    /// message that does not follow its tail comes after a `reset`.
    pub(crate) fn step(&mut self, channel: &ChannelName, event: &Event, out: &mut Vec<Bytes>) -> usize {
        let mut resets = 0;
        match event {
            Event::Msg { at, frame } | Event::Old { at, frame } => {
                if at.epoch == self.0.epoch {
                    if at.offset <= self.0.offset {
                        return 0;
                    }
                    if at.offset > self.0.offset + 1 {
                        out.push(reset_frame(
                            channel,
                            UNREPAIRED,
                            &Pos { offset: at.offset - 1, ..at.clone() },
                        ));
                        resets += 1;
                    }
                } else {
                    let reason = RecoveryFailure::EpochChanged.code();
                    out.push(reset_frame(channel, reason, &Pos { offset: at.offset - 1, ..at.clone() }));
                    resets += 1;
                }
                out.push(frame.clone());
                self.0 = at.clone();
            }
            Event::Plain { frame } => out.push(frame.clone()),
            Event::Reset { at, frame } => {
                if at.epoch == self.0.epoch && at.offset <= self.0.offset {
                    return 0;
                }
                out.push(frame.clone());
                resets += 1;
                self.0 = at.clone();
            }
        }
        resets
    }
}

/// A gap being repaired.
struct Repair {
    /// Tells this repair's read from a later one's.
    generation: u64,
    /// Messages received after the gap, in order.
    pending: Vec<(Pos, Bytes)>,
}

/// A history read the hub must start: everything of `channel` after `since`.
pub(crate) struct RepairStart {
    pub channel: ChannelName,
    pub generation: u64,
    pub since: Pos,
    pub ttl: Duration,
}

/// How a repair's read ended.
pub(crate) enum Outcome {
    Read(HistoryResult),
    /// The history cannot fill the gap; `current` is where the channel stands now.
    Lost {
        reason: RecoveryFailure,
        current: StreamPosition,
    },
    /// The broker did not answer in time.
    GaveUp,
}

/// The node's state of one channel with history.
pub(crate) struct Stream {
    pub channel: ChannelName,
    /// The channel's history TTL, for reads (a read may create the epoch).
    pub ttl: Duration,
    /// The last position delivered to the subscribers in step with the node; `None` until
    /// the first message or the first finished recovery.
    pub position: Option<Pos>,
    repair: Option<Repair>,
    /// Subscribers not in step with the node (usually none).
    pub joined: ConnMap<Joined>,
}

impl Stream {
    pub(crate) fn new(channel: ChannelName, ttl: Duration) -> Self {
        Self { channel, ttl, position: None, repair: None, joined: ConnMap::default() }
    }

    /// Takes in the message at `at`, appending what it means for the subscribers to
    /// `events`; returns the repair to start when it opened a gap.
    pub(crate) fn accept(
        &mut self,
        at: Pos,
        frame: Bytes,
        events: &mut Vec<Event>,
        next_generation: impl FnOnce() -> u64,
    ) -> Option<RepairStart> {
        if let Some(repair) = &mut self.repair {
            repair.pending.push((at, frame));
            if repair.pending.len() >= MAX_PENDING {
                self.give_up(events);
            }
            return None;
        }
        let Some(position) = &mut self.position else {
            self.position = Some(at.clone());
            events.push(Event::Msg { at, frame });
            return None;
        };
        if position.epoch != at.epoch {
            let reset = Pos { offset: at.offset - 1, epoch: at.epoch.clone() };
            let reason = RecoveryFailure::EpochChanged.code();
            events.push(Event::Reset { frame: reset_frame(&self.channel, reason, &reset), at: reset });
            *position = at.clone();
            events.push(Event::Msg { at, frame });
        } else if at.offset <= position.offset {
            events.push(Event::Old { at, frame });
        } else if at.offset == position.offset + 1 {
            position.offset = at.offset;
            events.push(Event::Msg { at, frame });
        } else {
            let since = position.clone();
            let generation = next_generation();
            self.repair = Some(Repair { generation, pending: vec![(at, frame)] });
            return Some(self.start(generation, since));
        }
        None
    }

    /// Starts repairing from the node's position with nothing pending (after the node's
    /// broker subscription came back), unless a repair runs already or nothing was delivered.
    pub(crate) fn repair_from_position(&mut self, generation: u64) -> Option<RepairStart> {
        if self.repair.is_some() {
            return None;
        }
        let since = self.position.clone()?;
        self.repair = Some(Repair { generation, pending: Vec::new() });
        Some(self.start(generation, since))
    }

    fn start(&self, generation: u64, since: Pos) -> RepairStart {
        RepairStart { channel: self.channel.clone(), generation, since, ttl: self.ttl }
    }

    /// Ends the repair `generation` with what its read found: the missing messages, then the
    /// pending ones, each once. Returns a further repair when the pending messages have a gap
    /// of their own.
    pub(crate) fn finish(
        &mut self,
        generation: u64,
        outcome: Outcome,
        events: &mut Vec<Event>,
        mut next_generation: impl FnMut() -> u64,
    ) -> Option<RepairStart> {
        let repair = self.repair.take_if(|r| r.generation == generation)?;
        match outcome {
            Outcome::Read(read) => {
                let epoch: Arc<str> = read.position.epoch.as_str().into();
                for p in read.publications {
                    let at = Pos { offset: p.offset, epoch: epoch.clone() };
                    // The read continues the node's position: no gap can open here.
                    let _ = self.accept(at, wire::text(&p.payload), events, &mut next_generation);
                }
            }
            Outcome::Lost { reason, current } => {
                // Messages held since the gap that the channel's current history continues
                // are still delivered: the stream goes on from just before the first of them.
                let offset = match repair.pending.first() {
                    Some((first, _))
                        if *first.epoch == *current.epoch && first.offset <= current.offset + 1 =>
                    {
                        first.offset - 1
                    }
                    _ => current.offset,
                };
                let at = Pos::new(offset, &current.epoch);
                events.push(Event::Reset {
                    frame: reset_frame(&self.channel, reason.code(), &at),
                    at: at.clone(),
                });
                self.position = Some(at);
            }
            Outcome::GaveUp => {
                if let Some((first, _)) = repair.pending.first() {
                    self.reset_before(first.clone(), events);
                }
            }
        }
        let mut next = None;
        for (at, frame) in repair.pending {
            if let Some(start) = self.accept(at, frame, events, &mut next_generation) {
                next = Some(start);
            }
        }
        next
    }

    /// Gives the repair up with too many messages pending: subscribers are told of the loss
    /// and get the pending messages.
    fn give_up(&mut self, events: &mut Vec<Event>) {
        let Some(repair) = self.repair.take() else { return };
        let Some((first, _)) = repair.pending.first() else { return };
        self.reset_before(first.clone(), events);
        for (at, frame) in repair.pending {
            // A gap among the pending messages themselves is not repaired again: the reset
            // before them told the subscribers already, and `Tail::step` tells them again.
            if let Some(position) = &mut self.position
                && position.epoch == at.epoch
                && at.offset <= position.offset
            {
                continue;
            }
            self.position = Some(at.clone());
            events.push(Event::Msg { at, frame });
        }
    }

    /// A reset to just before `first`, which follows.
    fn reset_before(&mut self, first: Pos, events: &mut Vec<Event>) {
        let at = Pos { offset: first.offset - 1, epoch: first.epoch };
        events.push(Event::Reset { frame: reset_frame(&self.channel, UNREPAIRED, &at), at: at.clone() });
        self.position = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_broker::HistoryPublication;

    fn ch() -> ChannelName {
        ChannelName::parse("chat:a").unwrap()
    }

    fn msg(offset: u64, epoch: &str) -> (Pos, Bytes) {
        (Pos::new(offset, epoch), Bytes::from(format!("m{offset}{epoch}")))
    }

    /// What a subscriber in step with the node receives, as short labels.
    fn labels(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Msg { at, .. } => Some(format!("{}{}", at.offset, at.epoch)),
                Event::Reset { at, .. } => Some(format!("reset{}{}", at.offset, at.epoch)),
                Event::Plain { .. } => Some("plain".into()),
                Event::Old { .. } => None,
            })
            .collect()
    }

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn duplicates_are_dropped_and_a_gap_is_filled_from_the_history() {
        let mut s = Stream::new(ch(), Duration::from_secs(60));
        let mut next = counter();
        let mut events = Vec::new();
        for o in [1, 2, 2, 1] {
            let (at, f) = msg(o, "e");
            assert!(s.accept(at, f, &mut events, &mut next).is_none());
        }
        let (at, f) = msg(5, "e");
        let start = s.accept(at, f, &mut events, &mut next).expect("a gap starts a repair");
        assert_eq!(start.since, Pos::new(2, "e"));
        let (at, f) = msg(6, "e");
        assert!(s.accept(at, f, &mut events, &mut next).is_none(), "held while repairing");
        let read = HistoryResult {
            publications: (3..=5)
                .map(|offset| HistoryPublication { offset, payload: Bytes::from_static(b"{}") })
                .collect(),
            position: StreamPosition { offset: 5, epoch: "e".into() },
        };
        assert!(s.finish(start.generation, Outcome::Read(read), &mut events, &mut next).is_none());
        assert_eq!(labels(&events), ["1e", "2e", "3e", "4e", "5e", "6e"]);
    }

    #[test]
    fn a_new_epoch_or_a_lost_gap_is_a_reset() {
        let mut s = Stream::new(ch(), Duration::from_secs(60));
        let mut next = counter();
        let mut events = Vec::new();
        let (at, f) = msg(7, "e");
        s.accept(at, f, &mut events, &mut next);
        let (at, f) = msg(1, "x");
        s.accept(at, f, &mut events, &mut next);
        let (at, f) = msg(4, "x");
        let start = s.accept(at, f, &mut events, &mut next).unwrap();
        let lost = Outcome::Lost {
            reason: RecoveryFailure::PositionTooOld,
            current: StreamPosition { offset: 3, epoch: "x".into() },
        };
        s.finish(start.generation, lost, &mut events, &mut next);
        assert_eq!(labels(&events), ["7e", "reset0x", "1x", "reset3x", "4x"]);
        // Lost again, with the held message already in the history read's top: it is still
        // delivered, after a reset to just before it.
        let (at, f) = msg(6, "x");
        let start = s.accept(at, f, &mut events, &mut next).unwrap();
        let lost = Outcome::Lost {
            reason: RecoveryFailure::EpochChanged,
            current: StreamPosition { offset: 6, epoch: "x".into() },
        };
        s.finish(start.generation, lost, &mut events, &mut next);
        assert_eq!(labels(&events)[5..], ["reset5x", "6x"]);
    }

    #[test]
    fn a_subscriber_skips_what_its_history_read_gave_it() {
        let mut events = Vec::new();
        let mut tail = Tail(Pos::new(5, "e"));
        let (at, frame) = msg(4, "e");
        events.push(Event::Old { at, frame });
        for o in [5, 6, 7] {
            let (at, frame) = msg(o, "e");
            events.push(Event::Msg { at, frame });
        }
        let (at, frame) = msg(9, "e");
        events.push(Event::Msg { at, frame });
        let mut out = Vec::new();
        let resets: usize = events.iter().map(|e| tail.step(&ch(), e, &mut out)).sum();
        assert_eq!(resets, 1, "the gap before 9 is told");
        assert_eq!(out[0], "m6e");
        assert_eq!(out[1], "m7e");
        assert!(std::str::from_utf8(&out[2][2..]).unwrap().contains(r#""type":"reset""#));
        assert_eq!(out[3], "m9e");
    }
}
