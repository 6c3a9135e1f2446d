//! The seam through which other services learn what happens to a gateway's connections:
//! presence tracks who is online and in which channel from these calls. It lives here, not in
//! the gateway, so that presence (which implements it) and the gateway (which calls it) share
//! it without one depending on the other.
//!
//! Calls are made from connection tasks and must not block: an observer records the change
//! (for example in a bounded buffer it flushes in the background) and returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::{ChannelName, ErrorCode, UserId};

/// A gateway connection's id, unique within its gateway process.
pub type ConnId = u64;

/// The answer to a member-list request: the members as a JSON array, or the error code the
/// client is told.
pub type MembersFuture = Pin<Box<dyn Future<Output = Result<Box<RawValue>, ErrorCode>> + Send + 'static>>;

/// What an observer knows of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Unique within this gateway process.
    pub conn_id: ConnId,
    /// Unique across gateways (the node id is its prefix); shown to the client in `connected`.
    pub client_id: Arc<str>,
    pub user: UserId,
    /// The token's `info` claim (display name, avatar, ...), passed on untouched.
    pub info: Option<Arc<RawValue>>,
}

/// Learns of connection and subscription changes. Only client-chosen channels are reported;
/// the personal and broadcast channels every connection has are not member lists.
pub trait ConnectionObserver: Send + Sync + 'static {
    /// The connection is authenticated and about to be greeted.
    fn connected(&self, conn: &ConnectionInfo);
    fn subscribed(&self, conn: &ConnectionInfo, channel: &ChannelName);
    fn unsubscribed(&self, conn: &ConnectionInfo, channel: &ChannelName);
    /// The connection is gone, and its subscriptions with it.
    fn disconnected(&self, conn: &ConnectionInfo);

    /// The members of `channel` as a JSON array, for a client's `presence` request. `None`
    /// means this observer cannot answer (the request gets `unavailable`).
    fn members(&self, channel: &ChannelName) -> Option<MembersFuture> {
        let _ = channel;
        None
    }
}

/// The observer of a gateway without presence.
pub struct NoObserver;

impl ConnectionObserver for NoObserver {
    fn connected(&self, _: &ConnectionInfo) {}
    fn subscribed(&self, _: &ConnectionInfo, _: &ChannelName) {}
    fn unsubscribed(&self, _: &ConnectionInfo, _: &ChannelName) {}
    fn disconnected(&self, _: &ConnectionInfo) {}
}
