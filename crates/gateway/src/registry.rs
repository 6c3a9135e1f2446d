//! Connection ids, the handle the hub keeps of a connection ([`ConnHandle`]: its id and
//! writer), and the registry of every live connection of the gateway.
//!
//! The registry is what the sweeper walks (pings, heartbeat timeouts, token expiry) and what a
//! drain closes; it also holds the gateway's coarse [`Clock`]. The hub keeps its own map per
//! channel, keyed by the same [`ConnId`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_protocol::UserId;
use herald_protocol::support::shrink;
use rand::seq::SliceRandom;

use crate::close::CloseReason;
use crate::heartbeat::Clock;
use crate::writer::Writer;

/// Identifies a connection within this gateway.
pub type ConnId = u64;

/// A map keyed by connection id.
pub type ConnMap<V> = HashMap<ConnId, V, BuildHasherDefault<ConnIdHasher>>;

/// Hashes a [`ConnId`] with one multiplication (Fibonacci hashing) instead of SipHash. The
/// gateway hands ids out in sequence and clients cannot choose them, so no one can aim
/// collisions at a map, which is what SipHash guards against. The multiplier is odd, so the
/// low bits that pick a bucket stay distinct for consecutive ids, and the high bits the map
/// uses as tags are mixed from all of them.
#[derive(Default, Clone, Copy)]
pub struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `u64` keys; correct for anything else, just not fast.
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What the hub keeps of a subscribed connection: where to write its frames, and how to tell
/// it that it fell behind.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    /// Where the hub puts the connection's frames; bounded, and marks the connection slow
    /// when full.
    pub writer: Arc<Writer>,
}

impl ConnHandle {
    pub fn new(id: ConnId, writer: Arc<Writer>) -> Self {
        Self { id, writer }
    }
}

/// Independently locked parts of the registry, so that connects do not contend.
const SHARDS: usize = 16;

/// Every live connection of the gateway, and the gateway's coarse clock.
pub(crate) struct Registry {
    shards: Box<[Mutex<ConnMap<Entry>>]>,
    /// Milliseconds since the gateway started, advanced by the sweeper every tick.
    pub(crate) clock: Clock,
    /// Set once the drain started: connections registering later are closed at once.
    draining: AtomicBool,
    /// Open connections per user, kept only with `gateway.max_connections_per_user`; an entry
    /// goes when its user's last connection does, so it holds users connected now.
    per_user: Mutex<HashMap<UserId, usize>>,
}

/// What the registry keeps of a connection.
pub(crate) struct Entry {
    pub(crate) writer: Arc<Writer>,
    /// The token's `exp`, seconds since the Unix epoch.
    pub(crate) expires_at: Option<u64>,
    /// When the next ping is due, on the registry's clock.
    pub(crate) next_ping: u64,
    /// When the client is told to refresh its token (`refresh_due`), seconds since the Unix
    /// epoch; `None` once told, or for a token without `exp`.
    pub(crate) warn_at: Option<u64>,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            clock: Clock::new(),
            draining: AtomicBool::new(false),
            per_user: Mutex::default(),
        }
    }

    /// The gateway's clock, milliseconds, as of the last tick.
    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }

    fn shard(&self, id: ConnId) -> &Mutex<ConnMap<Entry>> {
        &self.shards[id as usize % SHARDS]
    }

    /// Registers connection `id`; its first ping is due `ping_interval` from now.
    pub(crate) fn register(
        &self,
        id: ConnId,
        writer: Arc<Writer>,
        expires_at: Option<u64>,
        ping_interval: Duration,
    ) {
        let now = self.now();
        writer.seen(now);
        let next_ping = now + ping_interval.as_millis() as u64;
        self.shard(id)
            .lock()
            .expect("registry lock poisoned")
            .insert(id, Entry { writer: writer.clone(), expires_at, next_ping, warn_at: None });
        // Checked after the insert: the drain sets the flag before it collects connections,
        // so a connection is either collected or sees the flag.
        if self.draining.load(Ordering::SeqCst) {
            writer.request_close(CloseReason::ShuttingDown);
        }
    }

    /// Puts connection `id` on a new token's expiry (`None`: it does not expire), to be
    /// warned at `warn_at` (see [`crate::refresh::warn_at`]).
    pub(crate) fn set_expiry(&self, id: ConnId, expires_at: Option<u64>, warn_at: Option<u64>) {
        if let Some(entry) = self.shard(id).lock().expect("registry lock poisoned").get_mut(&id) {
            entry.expires_at = expires_at;
            entry.warn_at = warn_at;
        }
    }

    /// Counts one more connection of `user`, unless it has `max` already: `false` then.
    /// Every `true` is paired with one [`Registry::user_left`].
    pub(crate) fn user_joined(&self, user: &UserId, max: usize) -> bool {
        let mut per_user = self.per_user.lock().expect("registry lock poisoned");
        let open = per_user.entry(user.clone()).or_default();
        if *open >= max {
            return false;
        }
        *open += 1;
        true
    }

    /// One connection of `user` counted by [`Registry::user_joined`] ended.
    pub(crate) fn user_left(&self, user: &UserId) {
        let mut per_user = self.per_user.lock().expect("registry lock poisoned");
        if let Some(open) = per_user.get_mut(user) {
            *open -= 1;
            if *open == 0 {
                per_user.remove(user);
                shrink(&mut per_user);
            }
        }
    }

    pub(crate) fn unregister(&self, id: ConnId) {
        let mut shard = self.shard(id).lock().expect("registry lock poisoned");
        shard.remove(&id);
        shrink(&mut shard);
    }

    /// Connections registered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().expect("registry lock poisoned").len()).sum()
    }

    /// Calls `f` on every registered connection, one shard locked at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&mut Entry)) {
        for shard in &self.shards {
            shard.lock().expect("registry lock poisoned").values_mut().for_each(&mut f);
        }
    }

    /// Every registered connection, in random order, and from now on closes late comers.
    pub(crate) fn start_drain(&self) -> Vec<Arc<Writer>> {
        self.draining.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        self.for_each(|entry| all.push(entry.writer.clone()));
        all.shuffle(&mut rand::rng());
        all
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    /// A user is held to the limit, and its count goes with its last connection.
    #[test]
    fn connections_per_user_are_capped_and_forgotten() {
        let registry = Registry::new();
        let (alice, bob) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
        assert!(registry.user_joined(&alice, 2) && registry.user_joined(&alice, 2));
        assert!(!registry.user_joined(&alice, 2), "a third is refused");
        assert!(registry.user_joined(&bob, 2), "others are not held to alice's count");
        registry.user_left(&alice);
        assert!(registry.user_joined(&alice, 2));
        for user in [&alice, &alice, &bob] {
            registry.user_left(user);
        }
        assert!(registry.per_user.lock().unwrap().is_empty());
    }

    #[test]
    fn consecutive_conn_ids_land_in_distinct_buckets_with_mixed_tags() {
        let hash = |id: ConnId| BuildHasherDefault::<ConnIdHasher>::default().hash_one(id);
        let buckets: std::collections::HashSet<u64> = (1000..2024).map(|id| hash(id) & 1023).collect();
        assert_eq!(buckets.len(), 1024, "the low bits are a bijection of the id's");
        let tags: std::collections::HashSet<u64> = (1000..2024).map(|id| hash(id) >> 57).collect();
        assert_eq!(tags.len(), 128, "every 7-bit tag occurs");
    }
}
