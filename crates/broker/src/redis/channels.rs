//! A node's channels, apart from its connection: which ones the node wants, which ones Redis
//! confirmed, and the commands that bring the two together. [`super::node`] holds one
//! [`SubState`] behind a lock and drives it from the connection; every transition can be
//! followed, and is tested, here on its own.

use std::collections::HashMap;

use tokio::sync::oneshot;

use herald_protocol::support::shrink;

/// Every channel the node wants or Redis has, in one map, so that a new channel costs one
/// key and a few hash lookups (a connection's personal channel is one, at every connect).
#[derive(Default)]
pub(super) struct SubState {
    /// Channel (with prefix) -> its state. An entry goes once it is neither wanted, nor
    /// subscribed in Redis, nor waiting for a command or its confirmation.
    channels: HashMap<Box<str>, Chan>,
    /// Channels whose wanted and active state may differ, each once ([`Chan::dirty`]).
    dirty: Vec<Box<str>>,
    /// Channels with a command in flight: the batch the task waits for.
    pub(super) in_flight: usize,
    /// Channels Redis confirmed on the current connection.
    pub(super) active: usize,
}

#[derive(Default)]
struct Chan {
    /// Outstanding `subscribe` calls.
    wanted: u32,
    /// Subscribe calls waiting for the confirmation. Each confirmation wakes only its own
    /// waiters, so a burst of new channels costs one wake-up per waiter, not one per waiter
    /// per confirmation.
    waiters: Vec<oneshot::Sender<()>>,
    /// Redis confirmed it on the current connection.
    active: bool,
    /// A command for it is in flight; its confirmation settles it.
    in_flight: bool,
    /// Listed in [`SubState::dirty`].
    dirty: bool,
}

/// What [`SubState::take_commands`] sends: channels, with prefix.
#[derive(Default)]
pub(super) struct Commands {
    pub(super) subscribe: Vec<Box<str>>,
    pub(super) unsubscribe: Vec<Box<str>>,
}

/// A channel's interest moving from one shard's state to another's ([`SubState::release`]).
pub(super) struct Handover {
    key: Box<str>,
    /// Outstanding `subscribe` calls.
    wanted: u32,
    /// Those still waiting for Redis's confirmation.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Handover {
    /// The channel, with prefix.
    pub(super) fn key(&self) -> &str {
        &self.key
    }
}

impl Chan {
    fn unused(&self) -> bool {
        self.wanted == 0 && !self.active && !self.in_flight && !self.dirty
    }
}

/// The node's bookkeeping, apart from the connection, so that every transition can be
/// followed (and tested) on its own.
impl SubState {
    /// Lists `key` for the next reconcile, unless it is listed already.
    fn mark_dirty(dirty: &mut Vec<Box<str>>, key: &str, chan: &mut Chan) {
        if !chan.dirty {
            chan.dirty = true;
            dirty.push(key.into());
        }
    }

    /// Drops `key`'s entry, which nothing refers to any more ([`Chan::unused`]).
    fn forget(&mut self, key: &str) {
        self.channels.remove(key);
        shrink(&mut self.channels);
    }

    /// One more `subscribe` call for `key`. `true` if Redis has it already; otherwise
    /// `waiter` hears of the confirmation, and the channel is dirty.
    pub(super) fn want(&mut self, key: &str, waiter: oneshot::Sender<()>) -> bool {
        let chan = match self.channels.get_mut(key) {
            Some(chan) => chan,
            None => self.channels.entry(key.into()).or_default(),
        };
        chan.wanted += 1;
        // Active with a command in flight: an unsubscribe, after which Redis drops the
        // channel until it is subscribed again. Confirming now would let a message published
        // in between be lost with nobody told.
        if chan.active && !chan.in_flight {
            return true;
        }
        chan.waiters.push(waiter);
        Self::mark_dirty(&mut self.dirty, key, chan);
        false
    }

    /// A wait for `key`'s confirmation that adds no interest. `true` if Redis has it;
    /// otherwise `waiter` hears of the confirmation, or is dropped at once when nothing
    /// wants `key`.
    pub(super) fn wait(&mut self, key: &str, waiter: oneshot::Sender<()>) -> bool {
        match self.channels.get_mut(key) {
            Some(chan) if chan.active && !chan.in_flight => true,
            Some(chan) if chan.wanted > 0 => {
                chan.waiters.push(waiter);
                false
            }
            _ => false,
        }
    }

    /// One `subscribe` call for `key` less. `true` if that was the last, so the channel is
    /// dirty; its pending subscribe calls see their interest withdrawn.
    pub(super) fn unwant(&mut self, key: &str) -> bool {
        let Some(chan) = self.channels.get_mut(key).filter(|c| c.wanted > 0) else { return false };
        chan.wanted -= 1;
        if chan.wanted > 0 {
            return false;
        }
        chan.waiters = Vec::new();
        Self::mark_dirty(&mut self.dirty, key, chan);
        true
    }

    /// A new connection has nothing subscribed: every wanted channel is dirty again.
    pub(super) fn reset(&mut self) {
        self.active = 0;
        self.in_flight = 0;
        let dirty = &mut self.dirty;
        self.channels.retain(|key, chan| {
            chan.active = false;
            chan.in_flight = false;
            if chan.wanted > 0 {
                Self::mark_dirty(dirty, key, chan);
            }
            !chan.unused()
        });
        shrink(&mut self.channels);
    }

    /// The channels to subscribe and to unsubscribe, now in flight, for every dirty channel
    /// whose wanted and active state differ; `None` while a batch is still in flight, or
    /// when no channel needs a command.
    pub(super) fn take_commands(&mut self) -> Option<Commands> {
        if self.in_flight > 0 {
            return None;
        }
        let mut commands = Commands::default();
        for key in std::mem::take(&mut self.dirty) {
            let Some(chan) = self.channels.get_mut(&key) else { continue };
            chan.dirty = false;
            let list = match (chan.wanted > 0, chan.active) {
                (true, false) => &mut commands.subscribe,
                (false, true) => &mut commands.unsubscribe,
                _ => {
                    if chan.unused() {
                        self.forget(&key);
                    }
                    continue;
                }
            };
            chan.in_flight = true;
            self.in_flight += 1;
            list.push(key);
        }
        (!commands.subscribe.is_empty() || !commands.unsubscribe.is_empty()).then_some(commands)
    }

    /// Whether Redis has confirmed every command sent and nothing waits to be sent.
    pub(super) fn is_settled(&self) -> bool {
        self.in_flight == 0 && self.dirty.is_empty()
    }

    /// Whether any channel is wanted or known here.
    pub(super) fn has_channels(&self) -> bool {
        !self.channels.is_empty()
    }

    /// Whether some `subscribe` call holds interest in `key`.
    pub(super) fn is_wanted(&self, key: &str) -> bool {
        self.channels.get(key).is_some_and(|c| c.wanted > 0)
    }

    /// On a cluster, hands over the interest in every channel `moves` picks (its slot is now
    /// served by another shard) together with its waiters, for [`SubState::adopt`] on the
    /// new shard's state, and forgets the channel here without a command: the old shard
    /// dropped it already (its `sunsubscribe`, or it is gone), and a redirected channel gets
    /// no more messages from it either way.
    pub(super) fn release(&mut self, mut moves: impl FnMut(&str) -> bool) -> Vec<Handover> {
        let mut moved = Vec::new();
        let (active, in_flight) = (&mut self.active, &mut self.in_flight);
        self.channels.retain(|key, chan| {
            if !moves(key) {
                return true;
            }
            if chan.active {
                *active -= 1;
            }
            if chan.in_flight {
                *in_flight -= 1;
            }
            if chan.wanted > 0 {
                let waiters = std::mem::take(&mut chan.waiters);
                moved.push(Handover { key: key.clone(), wanted: chan.wanted, waiters });
            }
            false
        });
        shrink(&mut self.channels);
        moved
    }

    /// Takes over a channel another shard's state released. `true` if the channel is dirty
    /// (the task has a command to send).
    pub(super) fn adopt(&mut self, handover: Handover) -> bool {
        let Handover { key, wanted, waiters } = handover;
        let chan = self.channels.entry(key.clone()).or_default();
        chan.wanted += wanted;
        if chan.active && !chan.in_flight {
            for waiter in waiters {
                let _ = waiter.send(());
            }
            return false;
        }
        chan.waiters.extend(waiters);
        Self::mark_dirty(&mut self.dirty, &key, chan);
        true
    }

    /// Records Redis's confirmation of a subscribe (`live`) or unsubscribe of `key`, and
    /// marks the channel dirty again if that no longer matches what is wanted. `true` if the
    /// task has commands to send: the channel needs one, or the batch in flight is settled
    /// and channels gathered meanwhile.
    pub(super) fn confirm(&mut self, key: &str, live: bool) -> bool {
        // A confirmation of a channel the node does not know: nothing wants it, and if it is
        // live, reconciling unsubscribes it.
        let chan = match self.channels.get_mut(key) {
            Some(chan) => chan,
            None if live => self.channels.entry(key.into()).or_default(),
            None => return false,
        };
        if chan.in_flight {
            chan.in_flight = false;
            self.in_flight -= 1;
        }
        if chan.active != live {
            chan.active = live;
            if live {
                self.active += 1;
            } else {
                self.active -= 1;
            }
        }
        if live {
            for waiter in std::mem::take(&mut chan.waiters) {
                let _ = waiter.send(());
            }
        }
        let mismatch = (chan.wanted > 0) != live;
        if mismatch {
            Self::mark_dirty(&mut self.dirty, key, chan);
        }
        if chan.unused() {
            self.forget(key);
        }
        mismatch || (self.in_flight == 0 && !self.dirty.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    fn keys(list: &[Box<str>]) -> Vec<&str> {
        list.iter().map(|k| &**k).collect()
    }

    /// `want` with a waiter whose receiver is returned.
    fn want(state: &mut SubState, key: &str) -> (bool, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (state.want(key, tx), rx)
    }

    fn commands(state: &mut SubState) -> (Vec<String>, Vec<String>) {
        let Commands { subscribe: sub, unsubscribe: unsub } =
            state.take_commands().expect("no batch in flight");
        (
            keys(&sub).iter().map(|k| k.to_string()).collect(),
            keys(&unsub).iter().map(|k| k.to_string()).collect(),
        )
    }

    #[test]
    fn a_channel_is_subscribed_once_and_forgotten_once_nobody_wants_it() {
        let mut state = SubState::default();
        let (_, mut first) = want(&mut state, "a");
        let (_, mut second) = want(&mut state, "a");
        let _b = want(&mut state, "b");
        assert_eq!(commands(&mut state), (vec!["a".into(), "b".into()], vec![]));
        assert!(state.take_commands().is_none(), "one batch in flight at a time");
        assert!(!state.confirm("a", true));
        assert_eq!((first.try_recv(), second.try_recv()), (Ok(()), Ok(())));
        assert!(!state.confirm("b", true));
        assert_eq!(state.active, 2);
        // Wanted again: Redis has it already.
        assert!(want(&mut state, "a").0);
        assert!(!state.unwant("a"));
        assert!(!state.unwant("a"));
        assert!(state.unwant("a"), "the last interest in a went");
        assert!(!state.unwant("a"), "nothing left to withdraw");
        assert_eq!(commands(&mut state), (vec![], vec!["a".into()]));
        assert!(!state.confirm("a", false));
        assert_eq!((state.active, state.channels.len()), (1, 1), "a is forgotten, b stays");
    }

    /// Wanted again while its unsubscribe is in flight: Redis drops the channel before it is
    /// subscribed again, so the confirmation waits for the new subscribe.
    #[test]
    fn a_channel_wanted_during_its_unsubscribe_is_confirmed_by_the_resubscribe() {
        let mut state = SubState::default();
        let _first = want(&mut state, "a");
        commands(&mut state);
        state.confirm("a", true);
        assert!(state.unwant("a"));
        assert_eq!(commands(&mut state), (vec![], vec!["a".into()]));
        let (confirmed, mut again) = want(&mut state, "a");
        assert!(!confirmed, "not confirmed while the unsubscribe is in flight");
        assert!(state.confirm("a", false), "the unsubscribe went through: subscribe again");
        assert_eq!(again.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(commands(&mut state), (vec!["a".into()], vec![]));
        state.confirm("a", true);
        assert_eq!(again.try_recv(), Ok(()));
    }

    #[test]
    fn a_wait_for_the_confirmation_adds_no_interest() {
        let mut state = SubState::default();
        let (tx, mut unknown) = oneshot::channel();
        assert!(!state.wait("a", tx));
        assert_eq!(unknown.try_recv(), Err(TryRecvError::Closed), "nothing wants a");
        let (_, mut first) = want(&mut state, "a");
        let (tx, mut second) = oneshot::channel();
        assert!(!state.wait("a", tx));
        assert_eq!(commands(&mut state), (vec!["a".into()], vec![]));
        assert!(!state.confirm("a", true));
        assert_eq!((first.try_recv(), second.try_recv()), (Ok(()), Ok(())));
        assert!(state.wait("a", oneshot::channel().0), "confirmed already");
        assert!(state.unwant("a"), "one unwant ends the one subscribe call");
    }

    #[test]
    fn a_wait_ends_with_the_interest_it_waits_on() {
        let mut state = SubState::default();
        let _first = want(&mut state, "a");
        let (tx, mut second) = oneshot::channel();
        assert!(!state.wait("a", tx));
        assert!(state.unwant("a"));
        assert_eq!(second.try_recv(), Err(TryRecvError::Closed));
    }

    #[test]
    fn interest_withdrawn_before_the_confirmation_is_unsubscribed_after_it() {
        let mut state = SubState::default();
        let (_, mut waiter) = want(&mut state, "a");
        assert_eq!(commands(&mut state), (vec!["a".into()], vec![]));
        assert!(state.unwant("a"));
        assert_eq!(waiter.try_recv(), Err(TryRecvError::Closed), "its subscribe call gives up");
        assert!(state.take_commands().is_none());
        assert!(state.confirm("a", true), "live but unwanted: an unsubscribe is due");
        assert_eq!(commands(&mut state), (vec![], vec!["a".into()]));
        assert!(!state.confirm("a", false));
        assert_eq!((state.active, state.in_flight, state.channels.len()), (0, 0, 0));
    }

    #[test]
    fn channels_gathered_during_a_batch_leave_once_it_is_settled() {
        let mut state = SubState::default();
        let _a = want(&mut state, "a");
        assert_eq!(commands(&mut state), (vec!["a".into()], vec![]));
        let _b = want(&mut state, "b");
        let _c = want(&mut state, "c");
        assert!(state.take_commands().is_none());
        assert!(state.confirm("a", true), "the batch is settled and b and c wait");
        assert_eq!(commands(&mut state), (vec!["b".into(), "c".into()], vec![]));
    }

    #[test]
    fn a_new_connection_resubscribes_what_is_wanted_and_forgets_the_rest() {
        let mut state = SubState::default();
        let _a = want(&mut state, "a");
        let _b = want(&mut state, "b");
        commands(&mut state);
        state.confirm("a", true);
        state.confirm("b", true);
        assert!(state.unwant("b"));
        let _c = want(&mut state, "c");
        assert_eq!(commands(&mut state), (vec!["c".into()], vec!["b".into()]));
        // The connection breaks with that batch unanswered.
        state.reset();
        assert_eq!((state.active, state.in_flight), (0, 0));
        let (mut sub, unsub) = commands(&mut state);
        sub.sort();
        assert_eq!((sub, unsub), (vec!["a".to_string(), "c".into()], vec![]));
        assert_eq!(state.channels.len(), 2, "b is forgotten");
    }

    /// A channel whose slot moved to another shard keeps its interest and its waiters there,
    /// and is subscribed on the new shard only.
    #[test]
    fn a_released_channel_is_subscribed_where_it_is_adopted() {
        let (mut old, mut new) = (SubState::default(), SubState::default());
        let _a = want(&mut old, "a");
        let _a2 = want(&mut old, "a");
        let (_, mut b) = want(&mut old, "b");
        assert_eq!(commands(&mut old).0.len(), 2);
        old.confirm("a", true);
        let moved = old.release(|key| key == "a" || key == "b");
        assert_eq!((old.active, old.in_flight, old.channels.len()), (0, 0, 0), "nothing left behind");
        assert!(old.take_commands().is_none(), "no unsubscribe on the old shard");
        for handover in moved {
            assert!(new.adopt(handover));
        }
        let (mut sub, _) = commands(&mut new);
        sub.sort();
        assert_eq!(sub, vec!["a".to_string(), "b".into()]);
        assert!(!new.confirm("b", true));
        assert_eq!(b.try_recv(), Ok(()), "the waiter moved along");
        new.confirm("a", true);
        assert!(!new.unwant("a"), "both calls' interest moved");
        assert!(new.unwant("a"));
    }

    #[test]
    fn confirmations_of_unknown_channels_leave_nothing_behind() {
        let mut state = SubState::default();
        assert!(!state.confirm("x", false));
        assert!(state.channels.is_empty());
        assert!(state.confirm("x", true), "subscribed in Redis, wanted by nobody");
        assert_eq!(commands(&mut state), (vec![], vec!["x".into()]));
        assert!(!state.confirm("x", false));
        assert!(state.channels.is_empty());
        assert_eq!(state.active, 0);
    }
}
