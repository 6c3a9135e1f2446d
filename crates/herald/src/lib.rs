//! The `herald` binary's library: configuration, logging and the roles it can run.
//!
//! - [`config`]: the layered configuration (defaults, TOML file, `HERALD_*` variables).
//! - [`lifecycle`]: a server role from its configuration to its exit, and the lines it logs.
//! - [`roles`]: `standalone`, `gateway`, `publisher-api`, `presence`; each serves until told to stop.
//! - [`telemetry`]: structured logs.

pub mod config;
pub mod lifecycle;
pub mod roles;
pub mod telemetry;

pub use config::Config;
