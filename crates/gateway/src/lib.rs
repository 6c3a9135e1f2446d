//! The WebSocket gateway: holds client sockets and fans broker messages out to them.
//!
//! Layout, from the wire inwards:
//! - [`server`]: the accept loop ([`serve`]), which also starts and awaits the background
//!   tasks; [`http`]: `/livez`, `/readyz`, `/metrics` through the router, several requests
//!   per connection (keep-alive, bounded), any of which may be the upgrade to `/ws`;
//!   `lifecycle`: readiness changes and the drain, in the logs. With `gateway.tls`, `tls`
//!   terminates TLS in front of the accept loop and reloads the certificate.
//! - [`head`]: the HTTP request head, read and parsed once ([`head::parse_request_head`]);
//!   [`handshake`]: the checks of `GET /ws` (token, channels, readiness) and the `101`
//!   answer. [`origin`] checks its `Origin` first (foreign pages get 403); [`refusal`]
//!   answers a refused handshake: an HTTP error, or for browsers an upgrade closed at once
//!   with a close code.
//! - `connection`: one task per socket, from its open (joining its channels, `connected`) to
//!   its close: client frames in (held to the frame rate limit of `rate`), replies and queued
//!   frames out, through `socket`, the adapter the WebSocket library reads and writes.
//! - `requests`: what each client frame asks (`subscribe`, `unsubscribe`, `publish`,
//!   `presence`, and the history frames through `history`), checked and answered, on the
//!   connection's `Session`: its client and channels.
//! - `recovery`: the history read of a subscription to a channel with history (`since`),
//!   at connect (every channel's at once) and for `subscribe` frames.
//! - `wire`: the WebSocket frames the gateway encodes itself (messages, pings).
//! - [`writer`]: each connection's outbound writer: direct writes while the socket takes
//!   them, and behind them `queue`, the bounded frame queue. Others reach a connection
//!   through it: frames, `close` requests, and the `heartbeat` record of when its client
//!   was last heard from.
//! - [`registry`]: connection ids, [`registry::ConnHandle`] (how the hub holds a
//!   connection), and every live connection; `sweeper` walks it once a tick
//!   for pings, heartbeat timeouts, token expiry, and the spread-out closes of a drain.
//! - [`hub`]: channel -> local connections; subscribes the node (never a socket) to the
//!   broker and takes in its messages, each encoded once. `fanout` hands a channel's frames
//!   to its subscribers (written directly, or queued for a large channel), and those of a
//!   channel with history to each as it stands (in step, recovering, catching up).
//!   `stream` keeps the hub's state of channels with history: the node's position, gaps,
//!   resets, and the subscribers still recovering; `repair` runs the tasks that read a
//!   gap's messages from the history.
//! - `history`: the `history` and `ack` frames and a client's publish into a channel with
//!   history (idempotency keys): who may, the broker call, the reply.
//! - [`policy`]: who may subscribe and publish where, private namespaces included (`pattern`:
//!   the `channels` claim's patterns); `grants`: a connection's grants to private channels
//!   (the claim's, or subscription tokens with their own expiry). [`auth`]: connection tokens
//!   into an [`auth::Identity`]; `refresh`: the `refresh` frame that replaces a connection's
//!   token in-band, and the `refresh_due` warning before it expires. [`hook`]: the backend
//!   hook asked about subscriptions and publishes where a namespace says so.
//! - [`metrics`]: Prometheus metrics at `/metrics`; `canary` keeps `/readyz` honest by sending
//!   a message through the broker to itself.
//! - [`gateway`]: the [`Gateway`] handle that holds it all; building one starts nothing.
//! - `demo`: the demo page at `/demo` and its token endpoint, served only with `gateway.demo`.
//!
//! Data flow: client frame -> `connection` -> `requests` (checked by `policy`) -> broker;
//! publisher -> broker -> [`hub::Hub`] (one delivery per node) -> `fanout` ->
//! [`writer::Writer`] -> the socket, written by the hub for channels of up to 64 local
//! subscribers, else by the connection task from its bounded queue.

pub mod auth;
mod canary;
mod close;
pub mod config;
mod connection;
mod demo;
mod fanout;
pub mod gateway;
mod grants;
pub mod handshake;
pub mod head;
mod heartbeat;
mod history;
pub mod hook;
pub mod http;
pub mod hub;
mod lifecycle;
pub mod metrics;
pub mod origin;
mod pattern;
pub mod policy;
mod queue;
mod rate;
mod recovery;
mod refresh;
pub mod refusal;
pub mod registry;
mod repair;
mod requests;
pub mod server;
mod socket;
mod stream;
mod sweeper;
mod tls;
mod wire;
pub mod writer;

pub use auth::AuthConfig;
pub use auth::{TokenVerifier, mint};
pub use close::CloseReason;
pub use config::GatewayConfig;
pub use gateway::{ChannelConfig, Gateway, NotReady};
pub use herald_api_common::metrics::Format as MetricsFormat;
/// The seam presence implements, defined in `herald-protocol` so presence need not depend on
/// the gateway; re-exported for the gateway's callers.
pub use herald_protocol::observer::{ConnectionInfo, ConnectionObserver, NoObserver};
pub use hub::Hub;
pub use metrics::GatewayMetrics;
pub use server::serve;
