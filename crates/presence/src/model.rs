//! The domain types of presence: what gateways report and what queries answer. The store, the
//! service and both transports speak these; `pb` types are converted at the edge.

use std::sync::Arc;

use herald_protocol::{ChannelName, UserId};
use serde::Serialize;

/// Identifies a connection within its gateway.
pub type ConnId = u64;

/// A connection's token `info` claim, as JSON text, passed on untouched.
pub type Info = Option<Arc<str>>;

/// One change on a gateway, in the order it happened. Each names the connection's user: a
/// store split in parts by user (the Redis engine on a cluster) applies it in that user's
/// part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Connect { conn: ConnId, user: UserId, info: Info },
    Disconnect { conn: ConnId, user: UserId },
    Subscribe { conn: ConnId, user: UserId, channel: ChannelName },
    Unsubscribe { conn: ConnId, user: UserId, channel: ChannelName },
}

impl Change {
    /// The user whose connection changed.
    pub fn user(&self) -> &UserId {
        match self {
            Change::Connect { user, .. }
            | Change::Disconnect { user, .. }
            | Change::Subscribe { user, .. }
            | Change::Unsubscribe { user, .. } => user,
        }
    }
}

/// One connection of a gateway's full state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnState {
    pub conn: ConnId,
    pub user: UserId,
    pub info: Info,
    pub channels: Vec<ChannelName>,
}

/// What a gateway sends once per interval: its changes since the last report, or its whole
/// state. Either way it renews the gateway's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub gateway: Arc<str>,
    /// Batch number. Changes are applied only when it is one more than the last applied
    /// batch; the same number again is a retry (skipped, lease renewed).
    pub seq: u64,
    pub body: ReportBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportBody {
    Changes(Vec<Change>),
    /// Replaces everything presence knows of the gateway. Only the differences cause events,
    /// so a resync never makes users flap.
    Full(Vec<ConnState>),
}

/// The answer to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    Applied,
    /// Presence does not know the gateway's state: its lease expired (it was removed as a
    /// whole) or a batch is missing. The gateway must send its full state.
    Resync,
}

/// A presence transition, emitted exactly once by whoever made it happen in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A user's first connection joined a channel.
    Join { channel: ChannelName, user: UserId, info: Info },
    /// A user's last connection left a channel.
    Leave { channel: ChannelName, user: UserId },
    /// A user came online (not after a reconnect within the grace period).
    Online { user: UserId, info: Info },
    /// A user has had no connection for the whole grace period.
    Offline { user: UserId },
}

/// Where a user is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserPresence {
    pub user: UserId,
    pub online: bool,
    pub connections: u64,
    /// Gateway ids, sorted.
    pub gateways: Vec<String>,
}

/// One member of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: UserId,
    /// The user's connections subscribed to the channel.
    pub connections: u64,
    pub info: Info,
}

/// Who is in a channel. `count` is exact; `members` holds at most the configured maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPresence {
    pub channel: ChannelName,
    pub count: u64,
    /// Sorted by user id.
    pub members: Vec<Member>,
}

/// Cluster-wide counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub online_users: u64,
    pub connections: u64,
}
