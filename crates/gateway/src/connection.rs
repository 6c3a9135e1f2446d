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
//!
//! What a client frame asks is answered by the connection's [`Session`] (`crate::requests`);
//! this module holds the connection's life around it: the open, the loop, the close.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use herald_protocol::{ChannelName, CloseCode, ConnectionInfo, ErrorCode, ServerFrame};
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
use crate::grants::{self, Grant};
use crate::handshake::{self, Upgrade};
use crate::hook::{self, Action};
use crate::metrics::GatewayMetrics;
use crate::policy;
use crate::rate::{self, FrameRate, Verdict};
use crate::recovery;
use crate::refusal;
use crate::registry::ConnHandle;
use crate::requests::{Session, error_frame};
use crate::socket::{Socket, WebSocket};
use crate::wire;
use crate::writer::{Overflow, Writer};

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
    /// The client and its channels, which its requests act on.
    session: Session,
    /// Whether the client got `connected` (and observers heard of it).
    greeted: bool,
    /// The client's frame rate limit.
    rate: FrameRate,
    /// Whether the connection counts against `gateway.max_connections_per_user`.
    counted: bool,
    /// Counts the connection in the gauge while it exists.
    _open: ConnectionGuard,
}

impl Drop for Connection {
    /// Leaves every channel and forgets the connection, however its task ended.
    fn drop(&mut self) {
        let Session { shared, handle, subscriptions, patterns, info, identity, .. } = &mut self.session;
        shared.registry.unregister(handle.id);
        if self.counted {
            shared.registry.user_left(&identity.user);
        }
        shared.metrics.subscriptions.dec_by(subscriptions.len() as i64);
        handle.writer.close();
        for channel in subscriptions.drain() {
            shared.hub.leave(&channel, handle.id);
        }
        for pattern in patterns.drain() {
            shared.hub.leave_pattern(&pattern, handle.id);
        }
        if self.greeted {
            shared.observer.disconnected(info);
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
            greeted: false,
            counted: false,
            rate: FrameRate::new(&rate_limit(&shared.config)),
            _open: shared.connection_opened(),
            session: Session {
                info,
                handle: ConnHandle::new(id, Arc::new(writer)),
                subscriptions: HashSet::new(),
                patterns: HashSet::new(),
                grants: Default::default(),
                identity,
                shared,
            },
        }
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.session.info.client_id
    }

    pub(crate) fn user(&self) -> &herald_protocol::UserId {
        &self.session.identity.user
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
            self.session.shared.metrics.closed(match &exit {
                Exit::Close(code, _) => Some(*code),
                Exit::Gone => None,
            });
            if let Exit::Close(code, reason) = exit {
                tracing::debug!(code, %reason, "closing connection");
                let frame = CloseFrame { code: code.into(), reason: reason.into() };
                // A client closed for its frame rate is most likely still flooding: what it
                // sent is not worth decoding, only reading out of the way.
                let decode = code != CloseCode::RATE_LIMITED;
                let closing = close(&mut socket, &self.session.handle.writer, frame, decode);
                // Boxed: needed once, at the end, and inline it would make every task larger.
                let _ =
                    Box::pin(tokio::time::timeout(self.session.shared.config.close_timeout, closing)).await;
            }
        }
    }

    /// Subscribes the server-managed channels and the requested ones, then answers the
    /// upgrade and greets the client in one write. Once the client reads `connected`,
    /// messages on all of them are guaranteed to reach it. The broker confirms the channels
    /// concurrently; if one fails, the client is refused `unavailable` instead (HTTP 503, or
    /// for browsers an upgrade closed with 1013: [`crate::refusal`]), as it is for the other
    /// refusals here (the per-user limit, the backend hook, a `since` not served). Channels
    /// with history (the personal channel's inbox, and those of the URL in namespaces with
    /// history) are read once confirmed, from the URL's `since` if it gave one: `connected`
    /// says where each stands, and the missed messages follow it, before anything live of
    /// theirs. `None` when the client is not connected (what was joined is left when `self`
    /// drops).
    pub(crate) async fn open(&mut self, mut stream: TcpStream, upgrade: Upgrade) -> Option<WebSocket> {
        let max_per_user = self.session.shared.config.max_connections_per_user;
        if max_per_user > 0 {
            let user = &self.session.identity.user;
            if !self.session.shared.registry.user_joined(user, max_per_user) {
                self.session.shared.metrics.limit_hit("max_connections_per_user");
                let message =
                    format!("user {user} has {max_per_user} connections open on this gateway already");
                refusal::refuse(
                    &mut stream,
                    &upgrade.answer,
                    &self.session.shared.metrics,
                    ErrorCode::TooManyConnections,
                    &message,
                )
                .await;
                return None;
            }
            self.counted = true;
        }
        // The URL's channels go to the backend hook like `subscribe` frames, before anything is
        // joined.
        let (hooks, namespaces) = (self.session.shared.hooks.as_ref(), &self.session.shared.namespaces);
        for channel in &upgrade.requested {
            let user = &self.session.identity.user;
            if let Err((code, message)) =
                hook::check(hooks, namespaces, Action::Subscribe, user, channel).await
            {
                refusal::refuse(&mut stream, &upgrade.answer, &self.session.shared.metrics, code, &message)
                    .await;
                return None;
            }
        }
        let session = &mut self.session;
        let (id, writer) = (session.handle.id, session.handle.writer.clone());
        let config = &session.shared.config;
        let expires_at = session.identity.expires_at;
        session.shared.registry.register(id, writer, expires_at, config.ping_interval);
        let now = herald_protocol::publication::now_millis() / 1000;
        let warn = crate::refresh::warn_at(now, expires_at, config.refresh_warning);
        session.shared.registry.set_expiry(id, expires_at, warn);
        // The handshake let the URL's private channels through on the `channels` claim.
        for channel in &upgrade.requested {
            if policy::is_private(channel, &session.shared.namespaces) {
                session.grants.insert(channel.clone(), Grant::claim());
            }
        }
        let personal = config.personal_channel.then(|| ChannelName::personal(&session.identity.user));
        let channels =
            personal.into_iter().chain([ChannelName::broadcast()]).chain(upgrade.requested.iter().cloned());
        let (joins, recovering) = session.enter_at_connect(channels);
        let ticket = session.shared.reads.ticket();
        let session = &self.session;
        let shared = &session.shared;
        for confirmed in joins {
            if let Err(e) = confirmed.await {
                let message = format!("broker unavailable: {e}");
                refusal::refuse(
                    &mut stream,
                    &upgrade.answer,
                    &self.session.shared.metrics,
                    ErrorCode::Unavailable,
                    &message,
                )
                .await;
                return None;
            }
        }
        let (reads, broker) = (&shared.reads, shared.hub.broker());
        let read = recovery::read_at_connect(
            reads,
            broker,
            ticket,
            &session.identity.user,
            recovering,
            &upgrade.since,
        );
        let (recovered, inbox) = match read.await {
            Ok(read) => read,
            Err((code, message)) => {
                refusal::refuse(&mut stream, &upgrade.answer, &self.session.shared.metrics, code, &message)
                    .await;
                return None;
            }
        };
        let positions: Vec<_> =
            recovered.iter().map(|(channel, read)| (channel.clone(), read.state())).collect();
        let inbox_state = inbox.as_ref().map(recovery::inbox_state);
        let hello = ServerFrame::Connected {
            client_id: &session.info.client_id,
            user: &session.identity.user,
            channels: &upgrade.requested,
            positions: &positions,
            inbox: inbox_state.as_ref(),
        };
        let answer = handshake::switching_protocols(&upgrade, &hello.to_json());
        drop(positions);
        // The writer is not attached yet: what it is given now goes out after `connected`.
        for (channel, read) in recovered {
            let top = (read.top.offset, read.top.epoch.as_str());
            shared.hub.finish_recovery(&channel, id, None, read.missed, top);
        }
        if stream.write_all(&answer).await.is_err() {
            return None;
        }
        session.handle.writer.attach(stream);
        self.greeted = true;
        shared.observer.connected(&session.info);
        for channel in &upgrade.requested {
            shared.observer.subscribed(&session.info, channel);
        }
        Some(
            WebSocketStream::from_partially_read(
                Socket(session.handle.writer.clone()),
                upgrade.leftover,
                Role::Server,
                Some(upgrade.config),
            )
            .await,
        )
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> Exit {
        let writer = self.session.handle.writer.clone();
        let batch = self.session.shared.config.write_batch;
        loop {
            tokio::select! {
                biased;
                reason = writer.closing() => return Exit::from(reason),
                Err(_) = writer.drain(batch) => return Exit::Gone,
                () = grants::timer(self.session.grants.next_due()) => self.session.expire_grants(),
                msg = socket.next() => {
                    let Some(Ok(msg)) = msg else { return read_error(msg) };
                    writer.seen(self.session.shared.registry.now());
                    // A close frame is answered whatever the rate.
                    let verdict = match msg {
                        Message::Close(_) => Verdict::Allow,
                        _ => self.rate.take(&rate_limit(&self.session.shared.config)),
                    };
                    match verdict {
                        Verdict::Allow => {}
                        Verdict::Hold { until, first } => {
                            self.session.shared.metrics.limit_hit("frame_rate");
                            if first {
                                let rate = self.session.shared.config.frame_rate;
                                let notice = error_frame(None, ErrorCode::RateLimited, &format!(
                                    "more than {rate} frames per second: the connection is read no faster"
                                ));
                                if let Err(exit) = reply(&writer, &self.session.shared.metrics, &notice) {
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
                            self.session.shared.metrics.limit_hit("frame_rate_close");
                            return Exit::error(ErrorCode::RateLimited, "frame rate limit exceeded for too long");
                        }
                    }
                    let answer = match msg {
                        // Boxed: a request's future is large and rarely alive, and inline it
                        // would make every idle connection's task that much larger.
                        Message::Text(text) => Box::pin(self.session.handle_text(&text)).await,
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
                        && let Err(exit) = reply(&writer, &self.session.shared.metrics, &answer)
                    {
                        return exit;
                    }
                }
            }
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
