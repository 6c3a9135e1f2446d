//! The WebSocket handshake: the checks of a `GET /ws` and the `101` answer.
//!
//! `/ws` is handled without an HTTP framework: the request head is parsed once
//! ([`crate::head`]), the token and the channels in the URL are checked ([`check`]), and, once
//! the connection subscribed its channels, the `101 Switching Protocols` answer is written in
//! the same write as the `connected` frame ([`switching_protocols`]). A refusal (bad token, bad
//! channel, broker unavailable) is a plain HTTP error with a JSON body, before any WebSocket
//! exists, or for browsers an upgrade closed at once ([`crate::refusal`]).

use herald_protocol::{ChannelKind, ChannelName, ErrorCode, Since};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::Identity;
use crate::gateway::Gateway;
use crate::head::RequestHead;
use crate::policy;

/// The query string of `/ws`.
#[derive(Default)]
struct ConnectParams {
    token: Option<String>,
    /// Channels to subscribe before `connected`, comma-separated.
    subscribe: Option<String>,
    /// Positions to resume from, one per channel: `<channel>~<offset>~<epoch>` or
    /// `<channel>~acked`; the parameter may repeat.
    since: Vec<String>,
}

impl ConnectParams {
    /// Reads the query string; `token` and `subscribe` at most once, other names ignored.
    fn parse(query: &str) -> Result<Self, policy::Denied> {
        let malformed = |message: String| (ErrorCode::MalformedFrame, message);
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| malformed(format!("malformed query string: {e}")))?;
        let mut params = Self::default();
        for (key, value) in pairs {
            let slot = match key.as_str() {
                "token" => &mut params.token,
                "subscribe" => &mut params.subscribe,
                "since" => {
                    params.since.push(value);
                    continue;
                }
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(malformed(format!("malformed query string: duplicate field `{key}`")));
            }
        }
        Ok(params)
    }
}

/// A checked `/ws` request, ready to be answered with `101`.
pub(crate) struct Upgrade {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The channels of `?subscribe=`, checked.
    pub requested: Vec<ChannelName>,
    /// The positions of `?since=`, each for a channel with history the connection subscribes.
    pub since: Vec<(ChannelName, Since)>,
    /// Bytes the client sent after the request head (its first frames, if it did not wait).
    pub leftover: Vec<u8>,
    pub config: WebSocketConfig,
    /// How a refusal after the checks (`Connection::open`'s) is answered: HTTP or a close,
    /// as for the checks' own ([`crate::refusal`]).
    pub answer: crate::refusal::Answer,
}

/// Checks a `/ws` request: a WebSocket upgrade, a valid token, permitted channels, a ready
/// gateway. Any refusal comes with the error code and message for the client. It waits only
/// for a token naming a `kid` the JWKS does not have yet: for the one fetch that every such
/// handshake shares (bounded by `auth.jwks_timeout`), while it holds its handshake slot.
pub(crate) async fn check(
    gateway: &Gateway,
    head: &RequestHead,
    leftover: Vec<u8>,
) -> Result<(Identity, Upgrade), policy::Denied> {
    if !head.is_websocket_upgrade() {
        return Err((
            ErrorCode::MalformedFrame,
            "expected a WebSocket upgrade: GET with Upgrade: websocket, Connection: Upgrade, \
             Sec-WebSocket-Version: 13"
                .into(),
        ));
    }
    let Some(key) = head.key.as_deref() else {
        return Err((ErrorCode::MalformedFrame, "missing Sec-WebSocket-Key".into()));
    };
    if head.authorizations > 1 {
        return Err((ErrorCode::MalformedFrame, "more than one Authorization header".into()));
    }
    let params = ConnectParams::parse(&head.query)?;
    let bearer = head.authorization.as_deref().and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = params.token.as_deref().or(bearer) else {
        return Err((
            ErrorCode::Unauthorized,
            "missing token: pass ?token=<JWT> or Authorization: Bearer".into(),
        ));
    };
    let shared = gateway.shared();
    let identity = shared.verifier.verify_async(token).await.map_err(|e| (e.code, e.message))?;
    let config = &shared.config;
    let requested = match params.subscribe.as_deref() {
        None => Vec::new(),
        Some(list) => policy::connect_subscriptions(
            &identity,
            list,
            &shared.namespaces,
            config.personal_channel,
            config.max_subscriptions,
        )?,
    };
    let since = check_since(gateway, &identity, &requested, &params.since)?;
    if let Err(reason) = gateway.readiness() {
        return Err((ErrorCode::Unavailable, format!("gateway not ready: {reason}, retry later")));
    }
    let ws = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(config.write_buffer_size)
        .max_write_buffer_size(config.max_write_buffer_size)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    let accept = derive_accept_key(key.as_bytes());
    let answer = crate::refusal::Answer::checked(config.refusal, head, &accept);
    Ok((identity, Upgrade { accept, requested, since, leftover, config: ws, answer }))
}

/// Checks the URL's `since` parameters: each parses, names a channel the connection
/// subscribes (those of `subscribe=`, or the personal channel), once, and that channel keeps
/// history; `acked` only for the personal channel.
fn check_since(
    gateway: &Gateway,
    identity: &Identity,
    requested: &[ChannelName],
    params: &[String],
) -> Result<Vec<(ChannelName, Since)>, policy::Denied> {
    let shared = gateway.shared();
    let malformed = |message: String| (ErrorCode::MalformedFrame, message);
    let mut positions: Vec<(ChannelName, Since)> = Vec::with_capacity(params.len());
    for text in params {
        let (channel, since) =
            Since::from_url(text).map_err(|e| malformed(format!("invalid `since` {text}: {e}")))?;
        let personal =
            matches!(channel.kind(), ChannelKind::Personal(user) if user == identity.user.as_str());
        let subscribed = requested.contains(&channel) || (personal && shared.config.personal_channel);
        if !subscribed {
            return Err(malformed(format!("`since` for {channel}, which the connection does not subscribe")));
        }
        if positions.iter().any(|(c, _)| *c == channel) {
            return Err(malformed(format!("more than one `since` for {channel}")));
        }
        if since == Since::Acked && !personal {
            return Err(malformed(format!("`since` {text}: `acked` is for the personal channel only")));
        }
        if shared.namespaces.history(&channel, &shared.inbox).is_none() {
            return Err((ErrorCode::NoHistory, format!("{channel} keeps no history to resume from")));
        }
        positions.push((channel, since));
    }
    Ok(positions)
}

/// The `101` answer to `upgrade` followed by `first`, a text frame, ready for one write.
pub(crate) fn switching_protocols(upgrade: &Upgrade, first: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {}\r\n\r\n",
        upgrade.accept
    )
    .into_bytes();
    crate::wire::put_text(first.as_bytes(), &mut out);
    out
}
