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
}

/// What the registry keeps of a connection.
pub(crate) struct Entry {
    pub(crate) writer: Arc<Writer>,
    /// The token's `exp`, seconds since the Unix epoch.
    pub(crate) expires_at: Option<u64>,
    /// When the next ping is due, on the registry's clock.
    pub(crate) next_ping: u64,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            clock: Clock::new(),
            draining: AtomicBool::new(false),
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
            .insert(id, Entry { writer: writer.clone(), expires_at, next_ping });
        // Checked after the insert: the drain sets the flag before it collects connections,
        // so a connection is either collected or sees the flag.
        if self.draining.load(Ordering::SeqCst) {
            writer.request_close(CloseReason::ShuttingDown);
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

    #[test]
    fn consecutive_conn_ids_land_in_distinct_buckets_with_mixed_tags() {
        let hash = |id: ConnId| BuildHasherDefault::<ConnIdHasher>::default().hash_one(id);
        let buckets: std::collections::HashSet<u64> = (1000..2024).map(|id| hash(id) & 1023).collect();
        assert_eq!(buckets.len(), 1024, "the low bits are a bijection of the id's");
        let tags: std::collections::HashSet<u64> = (1000..2024).map(|id| hash(id) >> 57).collect();
        assert_eq!(tags.len(), 128, "every 7-bit tag occurs");
    }
}
