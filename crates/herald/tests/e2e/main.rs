//! Herald end to end, as one test binary: real gateways, publisher APIs and presence services
//! (in process or as `herald` child processes), real `redis-server`s started by the harness,
//! real sockets. One binary links the workspace once instead of once per file.
//!
//! Layout:
//! - [`common`] starts gateways and a publisher API on one engine ([`common::Cluster`]) or a
//!   `herald gateway` child process; [`presence_support`] adds presence replicas and gateways
//!   that report to them; [`hostile_support`] has gateways of a test's own configuration, a
//!   witness client and a raw TCP client that writes broken WebSocket frames;
//!   [`recovery_support`] has gateways with a history namespace (in process or as child
//!   processes that can be drained and killed) and a publisher that publishes with history.
//! - Each other module is one area: delivery, bad input, Redis outages, slow consumers, drain,
//!   observability, configuration, hostile clients, the standalone mode, presence (split in parts on a
//!   cluster: `presence_parts`), history
//!   reads and idempotent publishes (client and publisher API), the offline inbox, recovery of
//!   channels with history, gateways on a Redis Cluster (`redis_cluster`), the local cluster
//!   script, and what a process logs about its life (`lifecycle_logs`), in-band token refresh
//!   (`refresh`, whose token helpers `permissions` shares), who may subscribe and publish where
//!   (`permissions`), the backend hook (`hooks`), the gateway's outbound TLS with client
//!   certificates to presence and to the hook (`client_tls`), and the backends' event stream
//!   (`events_stream`).
//!
//! Run one area with `cargo test -p herald --test e2e -- delivery::`.

mod common;
mod hostile_support;
mod presence_support;
mod recovery_support;

mod auth_keys;
mod bad_input;
mod client_tls;
mod config;
mod delivery;
mod drain;
mod edge;
mod edge_tls;
mod events_stream;
mod history_frames;
mod hooks;
mod hostile_clients;
mod inbox;
mod lifecycle_logs;
mod local_cluster;
mod observability;
mod patterns;
mod permissions;
mod presence_api;
mod presence_cluster;
mod presence_kill;
mod presence_parts;
mod presence_standalone;
mod publisher_history;
mod recovery;
mod redis_cluster;
mod redis_outage;
mod refresh;
mod slow_consumer;
mod standalone;
