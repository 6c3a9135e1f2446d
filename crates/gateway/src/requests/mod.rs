//! A connection's requests: the client frames after `connected` (`subscribe`, `unsubscribe`,
//! `publish`, `presence`, `history`, `ack`, `ping`, and the token frames `refresh`
//! ([`refresh`]) and `subscribe_refresh` ([`grants`]); `subscribe` and `unsubscribe` of a
//! pattern in [`patterns`]), each checked (by `policy`, the limits, the history settings) and
//! answered with its reply or an `error` frame.
//!
//! [`Session`] is what they act on: who the client is and the channels it is in. The
//! connection (`crate::connection`) owns it, joins the channels of the URL through it at
//! connect, and hands it each text frame the client sends.

mod grants;
mod patterns;
mod refresh;

use std::collections::HashSet;

use herald_broker::{BrokerError, Confirmation};
use herald_protocol::{
    ChannelHistory, ChannelKind, ChannelName, ChannelPattern, ClientFrame, ConnectionInfo, ErrorCode,
    EventKind, Publication, RequestId, ServerFrame, Since,
};
use serde_json::value::RawValue;

use crate::auth::Identity;
use crate::gateway::Shared;
use crate::grants::{Grant, Grants};
use crate::history;
use crate::hook::{self, Action};
use crate::policy;
use crate::recovery::{Recovered, unread};
use crate::registry::ConnHandle;
use crate::wire;

/// What a connection's requests act on: the client's identity and its channels.
pub(crate) struct Session {
    pub(crate) shared: Shared,
    pub(crate) identity: Identity,
    /// What observers (presence) know of this connection.
    pub(crate) info: ConnectionInfo,
    /// What the hub holds of this connection: its id and outbound writer.
    pub(crate) handle: ConnHandle,
    /// Every channel this connection is in, the server-managed ones included.
    pub(crate) subscriptions: HashSet<ChannelName>,
    /// Its pattern subscriptions (`patterns`).
    pub(crate) patterns: HashSet<ChannelPattern>,
    /// How each subscribed channel of a private namespace was granted.
    pub(crate) grants: Grants,
}

/// How a subscription was answered.
enum Subscribed {
    /// With a plain `subscribed` reply, still to be sent; with the subscription token's
    /// expiry, if it has one.
    Reply(Option<u64>),
    /// Written already, with the recovered messages after it.
    Written,
}

/// The error of a subscription the broker did not confirm.
fn unconfirmed(channel: &ChannelName, e: &BrokerError) -> policy::Denied {
    tracing::warn!(%channel, error = %e, "subscription not confirmed by the broker");
    (ErrorCode::Unavailable, format!("subscription could not be confirmed: {e}"))
}

impl Session {
    /// Handles one text frame and returns the reply: `None` when there is none, or it was
    /// written already (a `subscribed` with recovered messages after it).
    pub(crate) async fn handle_text(&mut self, text: &str) -> Option<String> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => return Some(error_frame(e.id.as_ref(), e.code, &e.message)),
        };
        Some(match frame {
            ClientFrame::Ping { id } => ServerFrame::Pong { id: id.as_ref() }.to_json(),
            ClientFrame::Subscribe { id, channel, since, token } => {
                match self.subscribe(id.as_ref(), &channel, since.as_ref(), token.as_deref()).await {
                    Ok(Subscribed::Reply(expires_at)) => ServerFrame::Subscribed {
                        id: id.as_ref(),
                        channel: &channel,
                        state: None,
                        expires_at,
                    }
                    .to_json(),
                    // Written with the recovered messages, before anything live.
                    Ok(Subscribed::Written) => return None,
                    Err((code, message)) => error_frame(id.as_ref(), code, &message),
                }
            }
            ClientFrame::SubscribePattern { id, pattern, since, token } => {
                self.subscribe_pattern(id.as_ref(), &pattern, since, token).await
            }
            ClientFrame::UnsubscribePattern { id, pattern } => {
                self.unsubscribe_pattern(id.as_ref(), &pattern)
            }
            ClientFrame::SubscribeRefresh { id, channel, token } => {
                self.subscribe_refresh(id.as_ref(), &channel, &token)
            }
            ClientFrame::Refresh { id, token } => self.refresh(id.as_ref(), &token),
            ClientFrame::Unsubscribe { id, channel } => match self.unsubscribe(&channel) {
                Ok(()) => {
                    ServerFrame::Unsubscribed { id: id.as_ref(), channel: &channel, reason: None }.to_json()
                }
                Err((code, message)) => error_frame(id.as_ref(), code, &message),
            },
            ClientFrame::Presence { id, channel } => match self.presence(&channel).await {
                Ok(members) => {
                    ServerFrame::Presence { id: id.as_ref(), channel: &channel, members: &members }.to_json()
                }
                Err((code, message)) => error_frame(id.as_ref(), code, &message),
            },
            ClientFrame::Publish { id, channel, data, event, idempotency_key } => {
                match self.publish(&channel, &data, event.as_deref(), idempotency_key.as_deref()).await {
                    Ok(published) => ServerFrame::Published {
                        id: id.as_ref(),
                        channel: &channel,
                        message_id: &published.message_id,
                        offset: published.position.as_ref().map(|(offset, _)| *offset),
                        epoch: published.position.as_ref().map(|(_, epoch)| epoch.as_str()),
                        deduplicated: published.deduplicated,
                    }
                    .to_json(),
                    Err((code, message)) => error_frame(id.as_ref(), code, &message),
                }
            }
            ClientFrame::History { id, channel, since, limit, reverse } => {
                let request = history::Read {
                    id: id.as_ref(),
                    channel: &channel,
                    since: since.as_ref(),
                    limit,
                    reverse,
                };
                let subscribed = self.subscriptions.contains(&channel);
                let broker = self.shared.hub.broker().as_ref();
                history::read(broker, self.history_settings(), &self.identity.user, subscribed, request)
                    .await
                    .unwrap_or_else(|(code, message)| error_frame(id.as_ref(), code, &message))
            }
            ClientFrame::Ack { id, channel, offset, epoch } => {
                let broker = self.shared.hub.broker().as_ref();
                let user = &self.identity.user;
                history::ack(
                    broker,
                    self.history_settings(),
                    user,
                    id.as_ref(),
                    &channel,
                    offset,
                    epoch.as_deref(),
                )
                .await
                .unwrap_or_else(|(code, message)| error_frame(id.as_ref(), code, &message))
            }
        })
    }

    async fn subscribe(
        &mut self,
        id: Option<&RequestId>,
        channel: &ChannelName,
        since: Option<&Since>,
        token: Option<&str>,
    ) -> Result<Subscribed, policy::Denied> {
        let grant = self.grant_for(channel, token)?;
        let expires_at = grant.as_ref().and_then(Grant::expires_at);
        let config = &self.shared.config;
        if self.subscriptions.contains(channel) {
            return Err((ErrorCode::AlreadySubscribed, format!("already subscribed to {channel}")));
        }
        // The server-managed subscriptions do not count: broadcast, and the personal channel
        // where the server subscribes it.
        let managed = 1 + usize::from(config.personal_channel);
        if self.subscriptions.len() >= config.max_subscriptions + managed {
            let max = config.max_subscriptions;
            return Err((ErrorCode::LimitExceeded, format!("at most {max} subscriptions per connection")));
        }
        // Asked last: a call to the application costs more than every other check.
        let (hooks, namespaces) = (self.shared.hooks.as_ref(), &self.shared.namespaces);
        hook::check(hooks, namespaces, Action::Subscribe, &self.identity.user, channel).await?;
        let Some(history) = self.shared.namespaces.history(channel, &self.shared.inbox) else {
            if since.is_some() {
                return Err((ErrorCode::NoHistory, format!("{channel} keeps no history to resume from")));
            }
            self.join(channel.clone()).await.map_err(|e| unconfirmed(channel, &e))?;
            self.shared.observer.subscribed(&self.info, channel);
            if let Some(grant) = grant {
                self.grants.insert(channel.clone(), grant);
            }
            return Ok(Subscribed::Reply(expires_at));
        };
        if matches!(since, Some(Since::Acked)) && !matches!(channel.kind(), ChannelKind::Personal(_)) {
            let message = "`since: \"acked\"` is for the personal channel only";
            return Err((ErrorCode::MalformedFrame, message.into()));
        }
        self.recover(id, channel, since, history, expires_at).await?;
        self.shared.observer.subscribed(&self.info, channel);
        if let Some(grant) = grant {
            self.grants.insert(channel.clone(), grant);
        }
        Ok(Subscribed::Written)
    }

    /// Joins `channel`, a channel with history, recovering: once the broker confirmed, reads
    /// the history (after `since`, or just the position) and writes `subscribed`, the missed
    /// messages and what arrived live meanwhile, each once and in order.
    async fn recover(
        &mut self,
        id: Option<&RequestId>,
        channel: &ChannelName,
        since: Option<&Since>,
        history: ChannelHistory,
        expires_at: Option<u64>,
    ) -> Result<(), policy::Denied> {
        let confirmation = self.enter_recovering(channel.clone(), history);
        let ticket = self.shared.reads.ticket();
        if let Err(e) = confirmation.await {
            self.abandon(channel);
            return Err(unconfirmed(channel, &e));
        }
        let read: Recovered =
            match self.shared.reads.read(self.shared.hub.broker(), ticket, channel, since, history).await {
                Ok(read) => read,
                Err(e) => {
                    self.abandon(channel);
                    tracing::warn!(%channel, error = %e, "history read for a subscription failed");
                    return Err(unread(channel, &e));
                }
            };
        let state = read.state();
        let reply = ServerFrame::Subscribed { id, channel, state: Some(&state), expires_at }.to_json();
        let top = (read.top.offset, read.top.epoch.as_str());
        // `false`: the connection is closing (a slow consumer); its task sees that next.
        let _ = self.shared.hub.finish_recovery(
            channel,
            self.handle.id,
            Some(wire::text(reply.as_bytes())),
            read.missed,
            top,
        );
        Ok(())
    }

    /// Joins `channels` at connect, those with history recovering; returns the broker's
    /// confirmations, and the channels with history, to be read once confirmed.
    pub(crate) fn enter_at_connect(
        &mut self,
        channels: impl Iterator<Item = ChannelName>,
    ) -> (Vec<Confirmation>, Vec<(ChannelName, ChannelHistory)>) {
        let mut recovering = Vec::new();
        let joins = channels
            .map(|channel| match self.shared.namespaces.history(&channel, &self.shared.inbox) {
                Some(history) => {
                    recovering.push((channel.clone(), history));
                    self.enter_recovering(channel, history)
                }
                None => self.enter(channel),
            })
            .collect();
        (joins, recovering)
    }

    /// Joins `channel` (a channel with history) recovering and records it; returns the
    /// broker's confirmation. Live messages wait for [`crate::hub::Hub::finish_recovery`],
    /// at most `gateway.outbound_queue` of them (then the connection closes with 4008).
    fn enter_recovering(&mut self, channel: ChannelName, history: ChannelHistory) -> Confirmation {
        let max = self.shared.config.outbound_queue;
        let confirmed = self.shared.hub.join_recovering(&channel, self.handle.clone(), history, max);
        self.subscriptions.insert(channel);
        self.shared.metrics.subscriptions.inc();
        confirmed
    }

    /// Undoes [`Session::enter`] after a failure.
    fn abandon(&mut self, channel: &ChannelName) {
        if self.subscriptions.remove(channel) {
            self.shared.metrics.subscriptions.dec();
            self.shared.hub.leave(channel, self.handle.id);
        }
    }

    /// Joins `channel` in the hub and records it; returns the broker's confirmation.
    fn enter(&mut self, channel: ChannelName) -> Confirmation {
        let confirmed = self.shared.hub.join(&channel, self.handle.clone());
        self.subscriptions.insert(channel);
        self.shared.metrics.subscriptions.inc();
        confirmed
    }

    /// Joins `channel` in the hub and waits for the broker's confirmation.
    async fn join(&mut self, channel: ChannelName) -> Result<(), BrokerError> {
        let result = self.enter(channel.clone()).await;
        if result.is_err() {
            self.abandon(&channel);
        }
        result
    }

    fn unsubscribe(&mut self, channel: &ChannelName) -> Result<(), policy::Denied> {
        let managed = match channel.kind() {
            ChannelKind::Regular => false,
            ChannelKind::Personal(_) => self.shared.config.personal_channel,
            ChannelKind::Broadcast => true,
        };
        if managed {
            return Err((ErrorCode::Forbidden, format!("{channel} is managed by the server")));
        }
        if !self.subscriptions.remove(channel) {
            return Err((ErrorCode::NotSubscribed, format!("not subscribed to {channel}")));
        }
        self.grants.remove(channel);
        self.shared.metrics.subscriptions.dec();
        self.shared.hub.leave(channel, self.handle.id);
        self.shared.observer.unsubscribed(&self.info, channel);
        Ok(())
    }

    /// The members of a channel the client is in, from presence.
    async fn presence(&self, channel: &ChannelName) -> Result<Box<RawValue>, policy::Denied> {
        policy::can_query_presence(channel, &self.shared.namespaces, self.grants.contains(channel))?;
        if !self.subscriptions.contains(channel) {
            return Err((ErrorCode::NotSubscribed, format!("subscribe to {channel} to see its members")));
        }
        let Some(members) = self.shared.observer.members(channel) else {
            return Err((ErrorCode::Unavailable, "presence is not available on this server".into()));
        };
        members.await.map_err(|code| (code, format!("members of {channel} are unavailable right now")))
    }

    async fn publish(
        &mut self,
        channel: &ChannelName,
        data: &RawValue,
        event: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<history::Published, policy::Denied> {
        let token_grant = self.grants.holds_token(channel);
        policy::can_publish(&self.identity, channel, &self.shared.namespaces, token_grant)?;
        let (hooks, namespaces) = (self.shared.hooks.as_ref(), &self.shared.namespaces);
        hook::check(hooks, namespaces, Action::Publish, &self.identity.user, channel).await?;
        let max_depth = self.shared.config.max_data_depth;
        if herald_protocol::frame::json_depth(data.get()) > max_depth {
            self.shared.metrics.limit_hit("max_data_depth");
            return Err((ErrorCode::MalformedFrame, format!("`data` nests deeper than {max_depth} levels")));
        }
        let publication = Publication::new(channel, data, event)
            .map_err(|e| (ErrorCode::MalformedFrame, e.to_string()))?
            .from_user(&self.identity.user);
        let frame = publication.encode();
        let broker = self.shared.hub.broker().as_ref();
        if matches!(self.shared.namespaces.lookup(channel), Ok(Some(ns)) if ns.events) {
            let id = publication.id.to_string();
            self.append_publish_event(broker, channel, &id, data, event, idempotency_key).await?;
        }
        history::publish(broker, self.history_settings(), channel, publication.id, frame, idempotency_key)
            .await
    }

    /// Writes a client publish into the backends' event stream, before the message goes out:
    /// every message a subscriber may receive then has its entry (at least once). A publish
    /// that fails after this has an entry without a delivery, and a client's retry writes a
    /// second one (same `idempotency_key`, new `message_id`). `docs/events.md` says so.
    async fn append_publish_event(
        &self,
        broker: &dyn herald_broker::Broker,
        channel: &ChannelName,
        message_id: &str,
        data: &RawValue,
        event: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<(), policy::Denied> {
        let user = self.identity.user.as_str();
        let mut fields: Vec<(&str, &[u8])> = vec![
            ("channel", channel.as_str().as_bytes()),
            ("user", user.as_bytes()),
            ("message_id", message_id.as_bytes()),
            ("data", data.get().as_bytes()),
        ];
        if let Some(event) = event {
            fields.push(("event", event.as_bytes()));
        }
        if let Some(key) = idempotency_key {
            fields.push(("idempotency_key", key.as_bytes()));
        }
        broker.append_event(&self.shared.events, EventKind::Publish, &fields).await.map_err(|e| {
            tracing::warn!(%channel, error = %e, "a client publish was refused: its event could not be written");
            (ErrorCode::Unavailable, format!("not published: the event stream is unavailable: {e}"))
        })
    }

    /// How channels keep history on this gateway, for the history frames.
    fn history_settings(&self) -> history::Settings<'_> {
        history::Settings {
            namespaces: &self.shared.namespaces,
            inbox: &self.shared.inbox,
            limits: &self.shared.history,
        }
    }
}

/// An `error` reply, to request `id` if the client numbered it.
pub(crate) fn error_frame(id: Option<&RequestId>, code: ErrorCode, message: &str) -> String {
    ServerFrame::Error { id, code, message }.to_json()
}
