//! The one configuration of every role, layered by figment: built-in defaults, then the TOML
//! file given with `--config`, then `HERALD_<SECTION>__<KEY>` environment variables.
//! `docs/configuration.md` documents every key.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use herald_broker::RedisConfig;
use herald_gateway::{AuthConfig, GatewayConfig};
use herald_presence::PresenceConfig;
use herald_protocol::Namespaces;
use herald_publisher_api::PublisherConfig;
use serde::Deserialize;

/// Everything Herald can be configured with. Each role reads the sections it needs.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub redis: RedisConfig,
    pub gateway: GatewayConfig,
    pub publisher: PublisherConfig,
    pub presence: PresenceConfig,
    pub auth: AuthConfig,
    pub namespaces: Namespaces,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
}

/// The process's async runtime.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Runtime worker threads; 0 means one per CPU core. A publisher API replica serving a
    /// few thousand requests per second spends less CPU, and answers sooner, on one thread:
    /// its HTTP and Redis tasks then never wake each other across threads.
    pub worker_threads: usize,
}

/// How logs are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter, such as `info` or `herald_gateway=debug,info`. `RUST_LOG` wins.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, level: "info".into() }
    }
}

impl Config {
    /// Loads the layered configuration. Errors name the offending key (`gateway.listen`) and
    /// where its value came from.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only `HERALD_<SECTION>__<KEY>` variables are configuration; others that share the
        // prefix (`HERALD_CONFIG_FILE`) are not.
        let env = Env::prefixed("HERALD_").filter(|key| key.as_str().contains("__")).split("__");
        figment.merge(env).extract().map_err(describe)
    }

    /// The key a figment error is about, in lower case, for messages.
    /// Checks the sections the gateway role needs.
    pub fn validate_gateway(&self) -> Result<(), String> {
        self.gateway.validate()?;
        self.auth.validate()?;
        self.namespaces.validate().map_err(|e| format!("namespaces: {e}"))
    }

    /// Checks the presence section, and that an API key exists for it (its own, or the
    /// publisher's).
    pub fn validate_presence(&self) -> Result<(), String> {
        self.presence.validate(&self.namespaces)?;
        if self.presence_keys().is_empty() {
            return Err("presence.api_keys: at least one key is required (or set publisher.api_keys)".into());
        }
        Ok(())
    }

    /// The keys of the presence API: `presence.api_keys`, or else the publisher's.
    pub fn presence_keys(&self) -> Vec<String> {
        self.presence.keys_or(&self.publisher.api_keys)
    }

    /// Checks the sections the publisher role needs.
    pub fn validate_publisher(&self) -> Result<(), String> {
        self.publisher.validate()?;
        self.namespaces.validate().map_err(|e| format!("namespaces: {e}"))
    }
}

/// One line per problem: `key: what is wrong (where the value came from)`.
fn describe(errors: figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".").to_lowercase();
            let source = e.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
            let what = e.kind.to_string();
            if key.is_empty() { format!("{what}{source}") } else { format!("{key}: {what}{source}") }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
