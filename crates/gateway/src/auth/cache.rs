//! The verification cache: tokens already verified with an asymmetric key, by the SHA-256 of
//! the token, so that a reconnect storm with the same tokens does not redo RSA or ECDSA
//! verification (tens of microseconds each) for every connection.
//!
//! Safe because an entry is the result of a check that does not depend on time: the same
//! token bytes with the same key set verify the same way. So entries carry the key set's
//! generation and are ignored once the key set changed, and `exp`/`nbf` are checked again on
//! every hit. Keyed by a SHA-256, so no token can be made to collide with another.
//!
//! Bounded at [`CAPACITY`] entries. When full, expired entries and entries of an older key set
//! go first; if that frees nothing, an arbitrary eighth of the entries is dropped (their tokens
//! are verified again on their next use), so eviction costs a scan per `CAPACITY / 8` inserts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::claims::Verified;

/// Entries kept at most: 16,384 tokens, about 2 MB with their claims.
pub(super) const CAPACITY: usize = 16_384;

pub(super) type CacheKey = [u8; 32];

pub(super) fn key(token: &str) -> CacheKey {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    /// The key set generation the token was verified with.
    generation: u64,
    claims: Arc<Verified>,
}

pub(super) struct VerifyCache {
    capacity: usize,
    entries: Mutex<HashMap<CacheKey, Entry>>,
}

impl VerifyCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: Mutex::new(HashMap::new()) }
    }

    /// The claims of a token verified with key set `generation`.
    pub fn get(&self, key: &CacheKey, generation: u64) -> Option<Arc<Verified>> {
        let mut entries = self.entries.lock().expect("cache lock");
        match entries.get(key) {
            Some(entry) if entry.generation == generation => Some(entry.claims.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, key: &CacheKey) {
        self.entries.lock().expect("cache lock").remove(key);
    }

    /// Remembers a verified token; `now` and `leeway` (seconds) tell which entries are expired
    /// when the cache is full.
    pub fn insert(&self, key: CacheKey, generation: u64, claims: Arc<Verified>, now: u64, leeway: u64) {
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| e.generation == generation && !e.claims.is_expired(now, leeway));
            if entries.len() >= self.capacity {
                let doomed: Vec<CacheKey> = entries.keys().take(self.capacity.div_ceil(8)).copied().collect();
                for key in doomed {
                    entries.remove(&key);
                }
            }
        }
        entries.insert(key, Entry { generation, claims });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }
}
