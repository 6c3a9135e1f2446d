//! The presence store seam: where the cluster-wide presence state lives and where each
//! transition is decided, exactly once.
//!
//! Two engines keep the same promises (checked by [`crate::conformance`]):
//! - [`memory`]: one process (the standalone mode). A mutex around plain maps.
//! - [`redis`]: shared by every presence replica. Each report and each sweep is one Lua script
//!   per part (everything about a user is in the user's part), so a transition (a user's
//!   first connection, a channel's last member of a user, a lease running out) happens inside
//!   exactly one atomic step, on exactly one replica, which then emits its event. Two replicas
//!   never both see the same transition.

use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{ChannelName, ConfigError, UserId};

use crate::model::{Ack, ChannelPresence, Event, Report, Stats, UserPresence};

pub mod memory;
pub mod redis;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend (Redis) cannot be reached or answered with an error. Nothing was applied
    /// (scripts are atomic), so the caller may retry. `operation` names what failed
    /// (`report`, `sweep`, `users`); the message includes the source's, since callers log
    /// this error on one line.
    #[error("presence store unavailable: {operation}: {source}")]
    Unavailable {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A store split in parts (the Redis engine on a cluster, `presence.parts`) applied the
    /// operation in some parts and failed in others. `events` are the transitions of the parts
    /// that applied it: the caller must emit them (no other caller sees them). The rest is as
    /// for `Unavailable`: a report is sent again with its number, which the parts that
    /// applied it skip; the next sweep goes on where this one failed.
    #[error("presence store partly unavailable: {source}")]
    Partly {
        events: Vec<Event>,
        #[source]
        source: Box<StoreError>,
    },
    /// A script answered in a shape it never does (a script of another version running
    /// against the same keys, say). Like `Unavailable`, nothing is known to be applied.
    #[error("presence store unavailable: unexpected reply from the presence script: {0}")]
    UnexpectedReply(String),
    /// The store's configuration is invalid; the error names the key. Only constructors
    /// return it.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl StoreError {
    /// [`StoreError::Unavailable`] for `operation`, caused by `source`.
    pub fn unavailable(
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Unavailable { operation, source: source.into() }
    }
}

/// The timings both engines apply.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// How long a gateway's lease lasts after its last report. A gateway silent for longer is
    /// removed as a whole.
    pub ttl: Duration,
    /// How long a user must stay without connections before `offline` is emitted, and out of
    /// a channel before its `leave` is; a return within it emits neither `offline` nor
    /// `online`, neither `leave` nor `join`.
    pub grace: Duration,
}

/// The presence state of the cluster.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Applies a gateway's report and renews its lease. Returns the transitions it caused,
    /// which the caller must emit (no other caller sees them).
    async fn report(&self, report: &Report) -> Result<(Ack, Vec<Event>), StoreError>;

    /// Removes every gateway whose lease ran out, with all its connections, and emits the
    /// `offline` and `leave` events whose grace period is over. Safe to call from every replica
    /// at once: each transition is returned to exactly one caller.
    async fn sweep(&self) -> Result<Vec<Event>, StoreError>;

    /// Where `users` are connected, in the order asked.
    async fn users(&self, users: &[UserId]) -> Result<Vec<UserPresence>, StoreError>;

    /// The members of `channel`, at most `limit` of them listed.
    async fn channel(&self, channel: &ChannelName, limit: usize) -> Result<ChannelPresence, StoreError>;

    /// Online users and connections.
    async fn stats(&self) -> Result<Stats, StoreError>;

    /// Whether the backend answers, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The engine's name, for logs.
    fn name(&self) -> &'static str;
}
