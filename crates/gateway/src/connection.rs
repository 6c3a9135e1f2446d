//! One client connection: a single task that owns its state and reads its socket.
//!
//! The task waits on three things: a frame from the client, a close request on its writer
//! (slow consumer, heartbeat timeout, token expiry, shutdown, from the hub and the gateway's
//! sweeper), and queued frames ([`crate::writer`]): those of large channels, and whatever a
//! full socket did not take. It writes them several per system call (write coalescing).
//! Messages of small channels and pings are written by the hub and the sweeper themselves.
//! Nothing the task writes waits for the client, so a client that stopped reading is cut off
//! as soon as its queue overflows. The other way round, a client over its frame rate is read
//! no faster than the rate (`rate`): a frame over it is held until its token comes,
//! and the socket is not read meanwhile.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use herald_broker::{BrokerError, Confirmation};
use herald_protocol::{
    ChannelHistory, ChannelKind, ChannelName, ClientFrame, CloseCode, ConnectionInfo, ErrorCode, Publication,
    RequestId, ServerFrame, Since,
};
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::Identity;
use crate::close::CloseReason;
use crate::config::GatewayConfig;
use crate::gateway::{ConnectionGuard, Shared};
use crate::handshake::{self, Upgrade};
use crate::history;
use crate::hub::ConnHandle;
use crate::metrics::GatewayMetrics;
use crate::policy;
use crate::rate::{self, FrameRate, Verdict};
use crate::recovery::{self, Recovered};
use crate::socket::{Socket, WebSocket};
use crate::wire;
use crate::writer::{Overflow, Writer};

/// How a subscription was answered.
enum Subscribed {
    /// With a plain `subscribed` reply, still to be sent.
    Reply,
    /// Written already, with the recovered messages after it.
    Written,
}

/// The error of a subscription the broker did not confirm.
fn unconfirmed(channel: &ChannelName, e: &BrokerError) -> policy::Denied {
    tracing::warn!(%channel, error = %e, "subscription not confirmed by the broker");
    (ErrorCode::Unavailable, format!("subscription could not be confirmed: {e}"))
}

/// The error of a history read that failed: `no_history` where the broker keeps none (an
/// acknowledged position asked of an engine without acknowledgements), else `unavailable`.
fn unread(channel: &ChannelName, e: &BrokerError) -> policy::Denied {
    match e {
        BrokerError::HistoryUnsupported(_) => (ErrorCode::NoHistory, format!("{channel}: {e}")),
        _ => (ErrorCode::Unavailable, format!("history of {channel} could not be read: {e}")),
    }
}

/// Why the loop ended, and what to tell the client.
enum Exit {
    /// The client closed or vanished; nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

impl Exit {
    fn error(code: ErrorCode, reason: impl Into<String>) -> Self {
        Exit::Close(code.close_code().unwrap_or(CloseCode::INTERNAL), reason.into())
    }
}

pub(crate) struct Connection {
    shared: Shared,
    identity: Identity,
    /// What observers (presence) know of this connection.
    info: ConnectionInfo,
    /// What the hub holds of this connection: its id and outbound writer.
    handle: ConnHandle,
    /// Every channel this connection is in, the server-managed ones included.
    subscriptions: HashSet<ChannelName>,
    /// Whether the client got `connected` (and observers heard of it).
    greeted: bool,
    /// The client's frame rate limit.
    rate: FrameRate,
    /// Counts the connection in the gauge while it exists.
    _open: ConnectionGuard,
}

impl Drop for Connection {
    /// Leaves every channel and forgets the connection, however its task ended.
    fn drop(&mut self) {
        self.shared.registry.unregister(self.handle.id);
        self.shared.metrics.subscriptions.dec_by(self.subscriptions.len() as i64);
        self.handle.writer.close();
        for channel in self.subscriptions.drain() {
            self.shared.hub.leave(&channel, self.handle.id);
        }
        if self.greeted {
            self.shared.observer.disconnected(&self.info);
        }
    }
}

impl Connection {
    pub(crate) fn new(shared: Shared, identity: Identity) -> Self {
        let id = shared.next_conn_id();
        let writer = Writer::new(shared.config.outbound_queue, shared.config.outbound_queue_bytes);
        let info = ConnectionInfo {
            conn_id: id,
            client_id: format!("{}-{id}", shared.node_id).into(),
            user: identity.user.clone(),
            info: identity.info.clone(),
        };
        Self {
            info,
            handle: ConnHandle::new(id, Arc::new(writer)),
            subscriptions: HashSet::new(),
            greeted: false,
            rate: FrameRate::new(&rate_limit(&shared.config)),
            _open: shared.connection_opened(),
            identity,
            shared,
        }
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.info.client_id
    }

    pub(crate) fn user(&self) -> &herald_protocol::UserId {
        &self.identity.user
    }

    /// Serves an open connection until it ends. What it joined is left when `self` drops.
    ///
    /// Not an `async fn`: an `async fn` moves its arguments into locals and keeps room for
    /// both in its future, and this future is every open connection's task. The async block
    /// uses `self` and `socket` where they were captured.
    #[expect(clippy::manual_async_fn, reason = "an async fn's future would be 480 bytes larger")]
    pub(crate) fn run(mut self, mut socket: WebSocket) -> impl Future<Output = ()> + Send {
        async move {
            let exit = self.serve(&mut socket).await;
            self.shared.metrics.closed(match &exit {
                Exit::Close(code, _) => Some(*code),
                Exit::Gone => None,
            });
            if let Exit::Close(code, reason) = exit {
                tracing::debug!(code, %reason, "closing connection");
                let frame = CloseFrame { code: code.into(), reason: reason.into() };
                // A client closed for its frame rate is most likely still flooding: what it
                // sent is not worth decoding, only reading out of the way.
                let decode = code != CloseCode::RATE_LIMITED;
                let closing = close(&mut socket, &self.handle.writer, frame, decode);
                // Boxed: needed once, at the end, and inline it would make every task larger.
                let _ = Box::pin(tokio::time::timeout(self.shared.config.close_timeout, closing)).await;
            }
        }
    }

    /// Subscribes the server-managed channels and the requested ones, then answers the
    /// upgrade and greets the client in one write. Once the client reads `connected`,
    /// messages on all of them are guaranteed to reach it. The broker confirms the channels
    /// concurrently; if one fails, the client gets HTTP 503 instead of an upgrade. Channels
    /// with history (the personal channel's inbox, and those of the URL in namespaces with
    /// history) are read once confirmed, from the URL's `since` if it gave one: `connected`
    /// says where each stands, and the missed messages follow it, before anything live of
    /// theirs. `None` when the client is not connected (what was joined is left when `self`
    /// drops).
    pub(crate) async fn open(&mut self, mut stream: TcpStream, upgrade: Upgrade) -> Option<WebSocket> {
        let (id, writer) = (self.handle.id, self.handle.writer.clone());
        self.shared.registry.register(id, writer, self.identity.expires_at, self.shared.config.ping_interval);
        let personal =
            self.shared.config.personal_channel.then(|| ChannelName::personal(&self.identity.user));
        let mut recovering: Vec<(ChannelName, ChannelHistory)> = Vec::new();
        let joins: Vec<_> = personal
            .into_iter()
            .chain([ChannelName::broadcast()])
            .chain(upgrade.requested.iter().cloned())
            .map(|channel| match self.shared.namespaces.history(&channel, &self.shared.inbox) {
                Some(history) => {
                    recovering.push((channel.clone(), history));
                    self.enter_recovering(channel, history)
                }
                None => self.enter(channel),
            })
            .collect();
        for confirmed in joins {
            if let Err(e) = confirmed.await {
                let message = format!("broker unavailable: {e}");
                handshake::refuse(&mut stream, ErrorCode::Unavailable, &message).await;
                return None;
            }
        }
        let broker = self.shared.hub.broker().as_ref();
        let reads = recovering.iter().map(|(channel, history)| {
            let since = upgrade.since.iter().find(|(c, _)| c == channel).map(|(_, since)| since);
            let personal =
                matches!(channel.kind(), ChannelKind::Personal(user) if user == self.identity.user.as_str());
            async move {
                if personal {
                    recovery::read_personal(broker, channel, since, *history).await
                } else {
                    Ok((recovery::read(broker, channel, since, *history).await?, None))
                }
            }
        });
        let mut inbox = None;
        let mut recovered = Vec::with_capacity(recovering.len());
        for (read, (channel, _)) in futures_util::future::join_all(reads).await.into_iter().zip(recovering) {
            match read {
                Ok((read, status)) => {
                    inbox = inbox.or(status);
                    recovered.push((channel, read));
                }
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "history read at connect failed");
                    let (code, message) = unread(&channel, &e);
                    handshake::refuse(&mut stream, code, &message).await;
                    return None;
                }
            }
        }
        let positions: Vec<_> =
            recovered.iter().map(|(channel, read)| (channel.clone(), read.state())).collect();
        let inbox_state = inbox.as_ref().map(recovery::inbox_state);
        let hello = ServerFrame::Connected {
            client_id: &self.info.client_id,
            user: &self.identity.user,
            channels: &upgrade.requested,
            positions: &positions,
            inbox: inbox_state.as_ref(),
        };
        let answer = handshake::switching_protocols(&upgrade, &hello.to_json());
        drop(positions);
        // The writer is not attached yet: what it is given now goes out after `connected`.
        for (channel, read) in recovered {
            let top = (read.top.offset, read.top.epoch.as_str());
            self.shared.hub.finish_recovery(&channel, id, None, read.missed, top);
        }
        if stream.write_all(&answer).await.is_err() {
            return None;
        }
        self.handle.writer.attach(stream);
        self.greeted = true;
        self.shared.observer.connected(&self.info);
        for channel in &upgrade.requested {
            self.shared.observer.subscribed(&self.info, channel);
        }
        Some(
            WebSocketStream::from_partially_read(
                Socket(self.handle.writer.clone()),
                upgrade.leftover,
                Role::Server,
                Some(upgrade.config),
            )
            .await,
        )
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> Exit {
        let writer = self.handle.writer.clone();
        let batch = self.shared.config.write_batch;
        loop {
            tokio::select! {
                biased;
                reason = writer.closing() => return Exit::from(reason),
                Err(_) = writer.drain(batch) => return Exit::Gone,
                msg = socket.next() => {
                    let Some(Ok(msg)) = msg else { return read_error(msg) };
                    writer.seen(self.shared.registry.now());
                    // A close frame is answered whatever the rate.
                    let verdict = match msg {
                        Message::Close(_) => Verdict::Allow,
                        _ => self.rate.take(&rate_limit(&self.shared.config)),
                    };
                    match verdict {
                        Verdict::Allow => {}
                        Verdict::Hold { until, first } => {
                            self.shared.metrics.limit_hit("frame_rate");
                            if first {
                                let rate = self.shared.config.frame_rate;
                                let notice = error_frame(None, ErrorCode::RateLimited, &format!(
                                    "more than {rate} frames per second: the connection is read no faster"
                                ));
                                if let Err(exit) = reply(&writer, &self.shared.metrics, &notice) {
                                    return exit;
                                }
                            }
                            // Boxed: alive only while a client is over its rate, and inline it
                            // would make every idle connection's task larger by a timer.
                            if let Some(exit) = Box::pin(hold(&writer, batch, until)).await {
                                return exit;
                            }
                        }
                        Verdict::Close => {
                            self.shared.metrics.limit_hit("frame_rate_close");
                            return Exit::error(ErrorCode::RateLimited, "frame rate limit exceeded for too long");
                        }
                    }
                    let answer = match msg {
                        // Boxed: a request's future is large and rarely alive, and inline it
                        // would make every idle connection's task that much larger.
                        Message::Text(text) => Box::pin(self.handle_text(&text)).await,
                        Message::Binary(_) => Some(error_frame(None, ErrorCode::MalformedFrame,
                            "binary frames are not supported; send JSON text frames")),
                        Message::Close(_) => {
                            // Sends the library's answer to the client's close frame.
                            let _ = socket.flush().await;
                            return Exit::Gone;
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
                    };
                    if let Some(answer) = answer
                        && let Err(exit) = reply(&writer, &self.shared.metrics, &answer)
                    {
                        return exit;
                    }
                }
            }
        }
    }

    /// Handles one text frame and returns the reply.
    async fn handle_text(&mut self, text: &str) -> Option<String> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => return Some(error_frame(e.id.as_ref(), e.code, &e.message)),
        };
        Some(match frame {
            ClientFrame::Ping { id } => ServerFrame::Pong { id: id.as_ref() }.to_json(),
            ClientFrame::Subscribe { id, channel, since } => {
                match self.subscribe(id.as_ref(), &channel, since.as_ref()).await {
                    Ok(Subscribed::Reply) => {
                        ServerFrame::Subscribed { id: id.as_ref(), channel: &channel, state: None }.to_json()
                    }
                    // Written with the recovered messages, before anything live.
                    Ok(Subscribed::Written) => return None,
                    Err((code, message)) => error_frame(id.as_ref(), code, &message),
                }
            }
            ClientFrame::Unsubscribe { id, channel } => match self.unsubscribe(&channel) {
                Ok(()) => ServerFrame::Unsubscribed { id: id.as_ref(), channel: &channel }.to_json(),
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
    ) -> Result<Subscribed, policy::Denied> {
        let config = &self.shared.config;
        policy::can_subscribe(&self.identity, channel, &self.shared.namespaces, config.personal_channel)?;
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
        let Some(history) = self.shared.namespaces.history(channel, &self.shared.inbox) else {
            if since.is_some() {
                return Err((ErrorCode::NoHistory, format!("{channel} keeps no history to resume from")));
            }
            self.join(channel.clone()).await.map_err(|e| unconfirmed(channel, &e))?;
            self.shared.observer.subscribed(&self.info, channel);
            return Ok(Subscribed::Reply);
        };
        if matches!(since, Some(Since::Acked)) && !matches!(channel.kind(), ChannelKind::Personal(_)) {
            let message = "`since: \"acked\"` is for the personal channel only";
            return Err((ErrorCode::MalformedFrame, message.into()));
        }
        self.recover(id, channel, since, history).await?;
        self.shared.observer.subscribed(&self.info, channel);
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
    ) -> Result<(), policy::Denied> {
        let confirmation = self.enter_recovering(channel.clone(), history);
        if let Err(e) = confirmation.await {
            self.abandon(channel);
            return Err(unconfirmed(channel, &e));
        }
        let read: Recovered =
            match recovery::read(self.shared.hub.broker().as_ref(), channel, since, history).await {
                Ok(read) => read,
                Err(e) => {
                    self.abandon(channel);
                    tracing::warn!(%channel, error = %e, "history read for a subscription failed");
                    return Err(unread(channel, &e));
                }
            };
        let state = read.state();
        let reply = ServerFrame::Subscribed { id, channel, state: Some(&state) }.to_json();
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

    /// Undoes [`Connection::enter`] after a failure.
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
        self.shared.metrics.subscriptions.dec();
        self.shared.hub.leave(channel, self.handle.id);
        self.shared.observer.unsubscribed(&self.info, channel);
        Ok(())
    }

    /// The members of a channel the client is in, from presence.
    async fn presence(&self, channel: &ChannelName) -> Result<Box<RawValue>, policy::Denied> {
        policy::can_query_presence(channel, &self.shared.namespaces)?;
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
        policy::can_publish(&self.identity, channel, &self.shared.namespaces)?;
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
        history::publish(broker, self.history_settings(), channel, publication.id, frame, idempotency_key)
            .await
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

/// Holds a connection's reading back until `until`, while the frame in hand waits for its
/// token. What the client sends meanwhile stays in the kernel's buffers and, once they are
/// full, TCP flow control stops the client's writes: a flood costs the gateway no more than
/// the frames the rate lets through. Queued frames are still written and a close request
/// still ends the connection. `Some` when the connection ends meanwhile.
async fn hold(writer: &Writer, batch: usize, until: Instant) -> Option<Exit> {
    tokio::select! {
        biased;
        reason = writer.closing() => Some(Exit::from(reason)),
        Err(_) = writer.drain(batch) => Some(Exit::Gone),
        () = tokio::time::sleep_until(until) => None,
    }
}

/// The closing handshake: send our close frame (after the rest of a frame already begun),
/// then read until the client's close arrives, writing what is queued meanwhile. Dropping the
/// socket at once would reset the TCP connection while the client still has frames in flight
/// to us, and a reset makes the client's kernel discard what it had not read yet, our close
/// frame included.
///
/// Without `decode`, what the client sends is read and dropped as bytes until it hangs up or
/// the close timeout passes: a flood's backlog in the kernel's buffers (megabytes of frames)
/// would otherwise be decoded at full speed, undoing what holding the flooder back saved. A
/// client that answers our close frame and waits for us to hang up then waits the timeout.
async fn close(socket: &mut WebSocket, writer: &Writer, frame: CloseFrame, decode: bool) {
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let read_until_close = async {
        if !decode {
            return discard(writer).await;
        }
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
                // The stream ended, after a protocol error most likely: what follows means
                // nothing, but it is read until the client closes, because closing with
                // unread bytes would reset the connection and lose our close frame.
                Some(Err(_)) | None => return discard(writer).await,
            }
        }
    };
    tokio::select! {
        _ = read_until_close => {}
        _ = writer.drain(usize::MAX) => {}
    }
}

impl From<CloseReason> for Exit {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::SlowConsumer => {
                Exit::error(ErrorCode::SlowConsumer, "slow consumer: outbound queue overflowed")
            }
            CloseReason::ShuttingDown => {
                Exit::error(ErrorCode::ShuttingDown, "server shutting down, reconnect")
            }
            CloseReason::HeartbeatTimeout => {
                Exit::error(ErrorCode::HeartbeatTimeout, "no pong received in time")
            }
            CloseReason::TokenExpired => Exit::error(ErrorCode::TokenExpired, "token expired"),
        }
    }
}

/// Reads and drops whatever the client still sends, until it closes.
async fn discard(writer: &Writer) {
    let mut scratch = [0u8; 1024];
    loop {
        if writer.socket().readable().await.is_err() {
            return;
        }
        match writer.socket().try_read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Sends a reply of the connection's own, behind what is waiting, never waiting for the
/// client itself. A reply is written by the gateway, not the WebSocket library, so that a long
/// one (a member list) is not held to the library's write buffer. `Err` ends the connection.
fn reply(writer: &Writer, metrics: &GatewayMetrics, text: &str) -> Result<(), Exit> {
    match writer.push_control(wire::text(text.as_bytes())) {
        Ok(()) => Ok(()),
        // A full queue asked for the close already; so may the sweeper or a drain have.
        Err(overflow) => {
            if overflow == Overflow::Full {
                metrics.slow_consumers.inc();
            }
            Err(writer.close_requested().map_or(Exit::Gone, Exit::from))
        }
    }
}

/// The frame rate limit of `config`.
fn rate_limit(config: &GatewayConfig) -> rate::Limit {
    rate::Limit {
        per_second: config.frame_rate,
        burst: config.frame_burst,
        close_after: config.rate_limit_close_after,
    }
}

/// Maps a failed read to how the connection ends, with the close code RFC 6455 asks for: an
/// oversized frame 1009, a text frame that is not UTF-8 1007, a broken frame (unmasked,
/// reserved bits, unknown opcode) 1002. Anything else means the client is gone.
fn read_error(msg: Option<Result<Message, WsError>>) -> Exit {
    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
    match msg {
        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
            Exit::error(ErrorCode::MessageTooLarge, "message too large")
        }
        Some(Err(WsError::Capacity(e))) => Exit::error(ErrorCode::MessageTooLarge, e.to_string()),
        Some(Err(WsError::Utf8(_))) => {
            Exit::Close(CloseCode::INVALID_PAYLOAD, "text frame is not UTF-8".into())
        }
        // The client vanished without a close frame: nobody to tell.
        Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => Exit::Gone,
        Some(Err(WsError::Protocol(e))) => Exit::Close(CloseCode::PROTOCOL_ERROR, e.to_string()),
        _ => Exit::Gone,
    }
}

fn error_frame(id: Option<&RequestId>, code: ErrorCode, message: &str) -> String {
    ServerFrame::Error { id, code, message }.to_json()
}
