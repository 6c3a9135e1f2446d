//! The `herald` binary's library: configuration, logging and the roles it can run.
//!
//! - [`config`]: the layered configuration (defaults, TOML file, `HERALD_*` variables).
//! - [`roles`]: `standalone`, `gateway`, `publisher-api`, `presence`; each serves until told to stop.
//! - [`telemetry`]: structured logs.

pub mod config;
pub mod roles;
pub mod telemetry;

pub use config::Config;
