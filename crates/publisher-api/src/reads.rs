//! History reads and the offline inbox, for backends: the transport-independent part of
//! `GET /v1/channels/{channel}/history`, `GET /v1/users/{user}/inbox` and their gRPC twins.
//!
//! Both read through the [`Broker`](herald_broker::Broker) in consistent steps and hand back
//! the stored `message` frames as they are (offset included), so the transports pass them on
//! without decoding or re-encoding them ([`publications_json`]).

use bytes::{BufMut, BytesMut};
use herald_broker::{HistoryFilter, HistoryPublication, InboxStatus, StreamPosition};
use herald_protocol::{ChannelHistory, ChannelName, ErrorCode, Since};

use herald_api_common::auth::{self, Caller, Operation};

use crate::error::ApiError;
use crate::service::{Service, Target};

/// A history read as a transport read it: fields present, nothing checked.
#[derive(Debug, Clone, Copy)]
pub struct HistoryQuery<'a> {
    pub channel: &'a str,
    /// At most this many messages; `history.read_limit` when absent.
    pub limit: Option<u64>,
    /// Newest first.
    pub reverse: bool,
    /// Only the messages after this offset of this epoch.
    pub since: Option<(u64, &'a str)>,
}

/// What a history read found.
#[derive(Debug)]
pub struct HistoryPage {
    /// The channel's top, read in the same step as the messages.
    pub position: StreamPosition,
    pub publications: Vec<HistoryPublication>,
}

/// Where an inbox stands and its first unread messages.
#[derive(Debug)]
pub struct InboxPage {
    pub status: InboxStatus,
    /// Oldest first: the messages after the acknowledged position (of those still kept), at
    /// most the limit asked for, none newer than `status.position`.
    pub publications: Vec<HistoryPublication>,
}

/// How often an inbox read starts over when its two steps (the status, then the unread
/// messages) see different histories: a publish trimmed the first unread message, or the
/// epoch changed, in between. Each needs a publish racing the read, so a few tries suffice.
const INBOX_ATTEMPTS: usize = 3;

impl Service {
    /// Reads a channel's history.
    /// `caller` needs `history_read` and the channel's namespace, else `forbidden`.
    pub async fn history(&self, caller: &Caller, query: HistoryQuery<'_>) -> Result<HistoryPage, ApiError> {
        let channel = self.resolve(Target::Channel(query.channel))?;
        auth::authorize(caller, Operation::HistoryRead, Some(&channel))?;
        let history = self.channel_history(&channel)?;
        let limit = self.read_limit(query.limit)?;
        let since = match query.since {
            Some((offset, epoch)) => Some(position(offset, epoch)?),
            None => None,
        };
        let filter = HistoryFilter { since, limit: Some(limit), reverse: query.reverse, ttl: history.ttl };
        let result = self.broker().history(&channel, &filter).await.map_err(|e| read_failed(&channel, e))?;
        Ok(HistoryPage { position: result.position, publications: result.publications })
    }

    /// Reads a user's inbox: where it stands, and up to `limit` of its unread messages.
    /// `caller` needs `history_read`, else `forbidden`.
    pub async fn inbox(
        &self,
        caller: &Caller,
        user: &str,
        limit: Option<u64>,
    ) -> Result<InboxPage, ApiError> {
        let channel = self.resolve(Target::User(user))?;
        auth::authorize(caller, Operation::HistoryRead, Some(&channel))?;
        let history = self.channel_history(&channel)?;
        let limit = self.read_limit(limit)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let status =
                self.broker().inbox(&channel, history.ttl).await.map_err(|e| read_failed(&channel, e))?;
            let want = limit.min(usize::try_from(status.unread).unwrap_or(usize::MAX));
            if want == 0 {
                return Ok(InboxPage { status, publications: Vec::new() });
            }
            // The unread messages still kept are the last `unread` before the top; starting
            // there rather than at `acked` also covers an acknowledged position whose
            // successors were trimmed already.
            let since = StreamPosition {
                offset: status.position.offset.saturating_sub(status.unread),
                epoch: status.position.epoch.clone(),
            };
            let filter =
                HistoryFilter { since: Some(since), limit: Some(want), reverse: false, ttl: history.ttl };
            match self.broker().history(&channel, &filter).await {
                Ok(result) => return Ok(InboxPage { status, publications: result.publications }),
                Err(herald_broker::BrokerError::Unrecoverable { reason, .. }) if attempt < INBOX_ATTEMPTS => {
                    tracing::debug!(%channel, %reason, attempt, "the inbox changed while it was read; reading again");
                }
                Err(e) => return Err(read_failed(&channel, e)),
            }
        }
    }

    /// How `channel` keeps history, or `no_history`.
    fn channel_history(&self, channel: &ChannelName) -> Result<ChannelHistory, ApiError> {
        self.namespaces.history(channel, &self.inbox).ok_or_else(|| {
            let why = match channel.kind() {
                herald_protocol::ChannelKind::Personal(_) => "the inbox is off (inbox.history_size = 0)",
                herald_protocol::ChannelKind::Broadcast => "the broadcast channel never does",
                herald_protocol::ChannelKind::Regular => "its namespace has no history_size",
            };
            ApiError::new(ErrorCode::NoHistory, format!("channel: {channel:?} keeps no history: {why}"))
        })
    }

    /// `limit`, or the configured read limit when absent; more than that is refused.
    fn read_limit(&self, limit: Option<u64>) -> Result<usize, ApiError> {
        let most = self.history.read_limit;
        match limit {
            None => Ok(most),
            Some(n) if n <= most as u64 => Ok(n as usize),
            Some(n) => {
                Err(ApiError::malformed(format!("limit: {n} is more than history.read_limit ({most})")))
            }
        }
    }
}

/// A `since` position from a request, its epoch checked as a client's would be.
fn position(offset: u64, epoch: &str) -> Result<StreamPosition, ApiError> {
    let value = serde_json::json!({"offset": offset, "epoch": epoch});
    match Since::from_json(&value) {
        Ok(Since::Position(p)) => Ok(StreamPosition { offset: p.offset, epoch: p.epoch }),
        Ok(Since::Acked) | Err(_) => Err(ApiError::malformed(format!(
            "since: epoch {epoch:?} is not an epoch (1 to {} ASCII letters and digits)",
            herald_protocol::history::MAX_EPOCH_LEN
        ))),
    }
}

fn read_failed(channel: &ChannelName, e: herald_broker::BrokerError) -> ApiError {
    if !matches!(e, herald_broker::BrokerError::Unrecoverable { .. }) {
        tracing::warn!(error = %e, %channel, "history read failed");
    }
    ApiError::broker_read(e)
}

/// `[frame,frame,...]`: the stored frames as one JSON array, written as they are. They are
/// JSON objects the publishers encoded, so nothing is parsed or escaped here.
pub fn publications_json(out: &mut BytesMut, publications: &[HistoryPublication]) {
    out.reserve(2 + publications.iter().map(|p| p.payload.len() + 1).sum::<usize>());
    out.put_u8(b'[');
    for (i, publication) in publications.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(&publication.payload);
    }
    out.put_u8(b']');
}
