//! Gateway settings (`[gateway]` in the configuration file; `[auth]` is [`crate::auth::AuthConfig`]).

use std::net::SocketAddr;
use std::time::Duration;

use herald_api_common::tls::TlsConfig;
use herald_protocol::ConfigError;
use serde::Deserialize;

use crate::origin::AllowedOrigins;
use crate::refusal::RefusalMode;

/// Settings of the WebSocket gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address of the WebSocket and health listener.
    pub listen: SocketAddr,
    /// Messages a connection may have queued for writing. When a message arrives for a full
    /// queue the client is too slow: it is disconnected with close code 4008, and the others
    /// are not held up. Memory per connection is bounded by this times the message size.
    pub outbound_queue: usize,
    /// Bytes a connection may have queued for writing, whatever the message count: a client
    /// that falls this far behind is disconnected with 4008 too. Bounds memory per connection
    /// when messages are large.
    pub outbound_queue_bytes: usize,
    /// Most queued frames written with one system call (write coalescing); at most 64.
    pub write_batch: usize,
    /// How often the server pings each connection.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long a connection may go without answering a ping (or sending anything) before it
    /// is closed with code 4009.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Most channels one connection may subscribe to, besides the server-managed ones.
    pub max_subscriptions: usize,
    /// Most pattern subscriptions one connection may hold (in namespaces with
    /// `patterns = true`), apart from `max_subscriptions`. 0 turns them off on this gateway.
    pub max_pattern_subscriptions: usize,
    /// Most distinct patterns this gateway holds at once, over all its connections: each is
    /// one `PSUBSCRIBE` of the node, and Redis matches every publish (of every channel)
    /// against every pattern any client holds. A subscription to a pattern the gateway holds
    /// already always fits.
    pub max_node_patterns: usize,
    /// Whether every connection is subscribed to its user's personal channel (`user:<id>`),
    /// so that notifications (`/v1/users/{user}/notify`) reach it without the client asking.
    /// Where nothing notifies users, or only some pages listen, turn it off: a connection
    /// then costs the engine no subscription of its own (in Redis, one `SUBSCRIBE` per
    /// connection at connect time and again after every reconnect to Redis), and a client
    /// that wants its notifications subscribes to `user:<its id>` itself.
    pub personal_channel: bool,
    /// Largest WebSocket message a client may send, in bytes; larger ones close the
    /// connection with code 1009.
    pub max_message_size: usize,
    /// Bytes read from the socket at a time. Each connection holds a buffer of this size, so
    /// it is small by default (the WebSocket library's default of 128 KiB would cost 1.2 GiB
    /// at 10k connections). Client frames are small; a larger one grows the buffer as needed.
    pub read_buffer_size: usize,
    /// Bytes the WebSocket library collects before a write is flushed to the socket. It
    /// writes only pongs and close frames; messages and replies are written by the gateway.
    pub write_buffer_size: usize,
    /// Most bytes that may wait in the WebSocket library's write buffer before its writes fail.
    pub max_write_buffer_size: usize,
    /// How long writing the close frame to a departing client may take.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// On shutdown, connections are closed (1012) in random order, evenly spread over this
    /// window, so their clients do not all reconnect to the other replicas at once.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// How often the delivery canary goes through the broker.
    #[serde(with = "humantime_serde")]
    pub canary_interval: Duration,
    /// How long a canary may take to come back before the gateway reports not ready.
    #[serde(with = "humantime_serde")]
    pub canary_timeout: Duration,
    /// How long a client may take to send its request head; a slower one (slowloris) is
    /// disconnected without an answer and holds no slot longer.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Most handshakes in progress at once (request head read, token checked, channels
    /// subscribed). Over it a new connection is answered 503 with `Retry-After` at once, so
    /// a reconnect storm or a flood of idle sockets cannot hold every slot.
    pub max_handshakes: usize,
    /// Client frames per second a connection is read at, on average (a token bucket refilled
    /// at this rate). A frame over it is held until its token comes and the socket is not
    /// read meanwhile, so a faster client is slowed down by TCP flow control and costs the
    /// gateway no more than this rate. The first frame held in a spell is answered with an
    /// `error` frame `rate_limited`.
    pub frame_rate: u32,
    /// How many frames a connection may send at once beyond `frame_rate` (the bucket's size).
    pub frame_burst: u32,
    /// A connection held to its frame rate this long (its bucket never refilled to half) is
    /// closed with 4029.
    #[serde(with = "humantime_serde")]
    pub rate_limit_close_after: Duration,
    /// Deepest nesting of arrays and objects in the `data` of a client `publish`; deeper data
    /// is refused with `malformed_frame`. Every subscriber parses it again.
    pub max_data_depth: usize,
    /// Serves the demo page at `/demo` and, for it, `GET /demo/token?user=<name>`, which
    /// hands anyone who asks a token for any user. A development aid for `herald standalone`
    /// on one's own machine: never on in production. A warning is logged at start when on.
    pub demo: bool,
    /// How long before a connection token's `exp` the server sends `refresh_due`, so that the
    /// client can send a `refresh` frame with a fresh token; never earlier than half the
    /// token's remaining life at connect (or at the last refresh). Without a refresh the
    /// connection still closes with 4001 at `exp`.
    #[serde(with = "humantime_serde")]
    pub refresh_warning: Duration,
    /// Most connections one user may hold open on this gateway node at once (0: no limit).
    /// Counted per node, not across the cluster. Over it the upgrade is refused with HTTP
    /// 429 `too_many_connections`.
    pub max_connections_per_user: usize,
    /// The backend hook asked about subscriptions and publishes in namespaces with
    /// `subscribe_hook` or `publish_hook` (`[gateway.hooks]`).
    pub hooks: crate::hook::HookConfig,

    // The edge: which pages may connect, how refusals are answered, TLS.
    /// Origins whose pages may open a WebSocket: exact origins (`https://app.example.com`),
    /// all subdomains of one (`https://*.example.com`), or `*` for any. A handshake with
    /// another `Origin` gets HTTP 403 and no socket. Unset: only same-origin pages (the
    /// `Origin`'s host and port equal the request's `Host`), which is secure by default and
    /// lets the gateway's own pages (the demo) in; set it when pages live elsewhere, or
    /// behind a proxy that rewrites `Host`.
    pub allowed_origins: Option<AllowedOrigins>,
    /// Whether a handshake without an `Origin` is accepted. Browsers always send one, so such
    /// a request comes from a server, an app or a command-line client, which no foreign page
    /// controls: true by default. Turn off where only browsers connect.
    pub allow_missing_origin: bool,
    /// How a refused handshake (bad token, forbidden channel, not ready) is answered:
    /// `browser` (an upgrade closed at once with a close code for browsers, whose pages
    /// cannot read an HTTP error; an HTTP error for other clients), `http` or `close` (the
    /// one or the other for every client).
    pub refusal: RefusalMode,
    /// Serve TLS (`wss://`, and HTTPS for health, metrics and the demo) with these files,
    /// reloaded when they change ([`crate::tls`]). Unset: plain, for a TLS-terminating proxy
    /// in front.
    pub tls: Option<TlsConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            outbound_queue: 1024,
            outbound_queue_bytes: 1024 * 1024,
            write_batch: 64,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(60),
            max_subscriptions: 128,
            max_pattern_subscriptions: 8,
            max_node_patterns: 1000,
            personal_channel: true,
            max_message_size: 64 * 1024,
            read_buffer_size: 256,
            write_buffer_size: 4 * 1024,
            max_write_buffer_size: 1024 * 1024,
            close_timeout: Duration::from_secs(1),
            drain_window: Duration::from_secs(10),
            canary_interval: Duration::from_secs(2),
            canary_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 1024,
            frame_rate: 100,
            frame_burst: 200,
            rate_limit_close_after: Duration::from_secs(10),
            max_data_depth: 32,
            demo: false,
            refresh_warning: Duration::from_secs(30),
            max_connections_per_user: 0,
            hooks: Default::default(),
            allowed_origins: None,
            allow_missing_origin: true,
            refusal: RefusalMode::Browser,
            tls: None,
        }
    }
}

impl GatewayConfig {
    /// Checks the values that would make the gateway misbehave; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("gateway.outbound_queue", self.outbound_queue),
            ("gateway.outbound_queue_bytes", self.outbound_queue_bytes),
            ("gateway.write_batch", self.write_batch),
            ("gateway.max_message_size", self.max_message_size),
            ("gateway.read_buffer_size", self.read_buffer_size),
            ("gateway.max_handshakes", self.max_handshakes),
            ("gateway.frame_rate", self.frame_rate as usize),
            ("gateway.frame_burst", self.frame_burst as usize),
            ("gateway.max_data_depth", self.max_data_depth),
            ("gateway.max_node_patterns", self.max_node_patterns),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::new("gateway.handshake_timeout", "must be greater than 0"));
        }
        if self.ping_interval.is_zero() {
            return Err(ConfigError::new("gateway.ping_interval", "must be greater than 0"));
        }
        if self.pong_timeout <= self.ping_interval {
            return Err(ConfigError::new(
                "gateway.pong_timeout",
                "must be longer than gateway.ping_interval",
            ));
        }
        if self.canary_interval.is_zero() {
            return Err(ConfigError::new("gateway.canary_interval", "must be greater than 0"));
        }
        if self.canary_timeout.is_zero() {
            return Err(ConfigError::new("gateway.canary_timeout", "must be greater than 0"));
        }
        if self.max_write_buffer_size <= self.write_buffer_size + self.max_message_size {
            return Err(ConfigError::new(
                "gateway.max_write_buffer_size",
                "must exceed write_buffer_size + max_message_size",
            ));
        }
        if let Some(tls) = &self.tls {
            herald_api_common::tls::server_config(tls).map_err(|e| e.config_error("gateway.tls", tls))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refused value is reported under the one key to fix.
    #[test]
    fn errors_name_the_key_to_fix() {
        GatewayConfig::default().validate().unwrap();
        let key = |config: GatewayConfig| config.validate().unwrap_err().key;
        assert_eq!(key(GatewayConfig { outbound_queue: 0, ..Default::default() }), "gateway.outbound_queue");
        assert_eq!(key(GatewayConfig { frame_rate: 0, ..Default::default() }), "gateway.frame_rate");
        let silent = GatewayConfig { pong_timeout: Duration::from_secs(1), ..Default::default() };
        assert_eq!(key(silent), "gateway.pong_timeout");
        let canary = GatewayConfig { canary_timeout: Duration::ZERO, ..Default::default() };
        assert_eq!(key(canary), "gateway.canary_timeout");
    }
}
