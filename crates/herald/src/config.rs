//! The one configuration of every role, layered by figment: built-in defaults, then the TOML
//! file given with `--config`, then `HERALD_<SECTION>__<KEY>` environment variables.
//! `docs/configuration.md` documents every key.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use herald_broker::RedisConfig;
use herald_gateway::{AuthConfig, GatewayConfig};
use herald_presence::PresenceConfig;
use herald_protocol::{ConfigError, EventsConfig, HistoryConfig, InboxConfig, Namespaces};
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
    pub inbox: InboxConfig,
    pub history: HistoryConfig,
    /// The backends' event stream (`[events]`, `docs/events.md`).
    pub events: EventsConfig,
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

impl LogConfig {
    /// Reads only `[log]` from the same layers as [`Config::load`], skipping a file that does
    /// not exist. It is read first, so that every later problem, a missing file or a bad value
    /// anywhere else in the configuration included, is logged in the configured format. Fails
    /// only when `[log]` itself is bad or the file is not TOML.
    pub fn load(file: Option<&Path>) -> Result<Self, LoadError> {
        /// The configuration with every section but `[log]` ignored.
        #[derive(Deserialize)]
        struct LogOnly {
            #[serde(default)]
            log: LogConfig,
        }
        let mut figment = Figment::new();
        if let Some(path) = file.filter(|path| path.exists()) {
            figment = figment.merge(Toml::file_exact(path));
        }
        let only: LogOnly = figment.merge(env()).extract().map_err(|e| LoadError(describe(e)))?;
        Ok(only.log)
    }
}

impl Config {
    /// Loads the layered configuration. Errors name the offending key (`gateway.listen`) and
    /// where its value came from.
    pub fn load(file: Option<&Path>) -> Result<Self, LoadError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                let problem = format!("config file {} does not exist", path.display());
                return Err(LoadError(vec![ConfigError::new("--config", problem)]));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(env()).extract().map_err(|e| LoadError(describe(e)))
    }

    /// The standalone mode keeps presence in process memory: there is no Redis to hold a
    /// stream, and a stream in the same process would die with what it reports on.
    pub fn validate_standalone(&self) -> Result<(), ConfigError> {
        if self.events.enabled {
            return Err(ConfigError::new(
                "events.enabled",
                "the event stream lives in Redis; the standalone mode has none (run the gateway, \
                 publisher-api and presence roles on Redis, or use the Pub/Sub events)",
            ));
        }
        Ok(())
    }

    /// Checks the sections the gateway role needs.
    pub fn validate_gateway(&self) -> Result<(), ConfigError> {
        self.gateway.validate()?;
        self.auth.validate()?;
        self.validate_channels()
    }

    /// Checks what every role that publishes or subscribes must agree on: the namespaces,
    /// the inbox and the history limits.
    pub fn validate_channels(&self) -> Result<(), ConfigError> {
        self.namespaces.validate()?;
        // Sharded Pub/Sub, the cluster engine's, has no pattern subscriptions; plain
        // `PSUBSCRIBE` would see only what was published with `PUBLISH`, which a cluster
        // copies to every node, the cost sharding exists to avoid.
        if let Some(ns) = self.namespaces.with_patterns()
            && self.redis.is_cluster()
        {
            return Err(ConfigError::new(
                format!("namespaces.{ns}.patterns"),
                "cannot be used with redis.cluster_nodes: sharded Pub/Sub on a Redis Cluster has no \
                 pattern subscriptions",
            ));
        }
        self.inbox.validate()?;
        self.history.validate()
    }

    /// Checks the presence section, and that an API key exists for it (its own, or the
    /// publisher's).
    pub fn validate_presence(&self) -> Result<(), ConfigError> {
        self.presence.validate(&self.namespaces)?;
        self.events.validate()?;
        if self.presence_keys().is_empty() && self.presence.keys.is_empty() {
            return Err(ConfigError::new(
                "presence.api_keys",
                "at least one key is required (or set publisher.api_keys)",
            ));
        }
        Ok(())
    }

    /// The keys of the presence API: `presence.api_keys`, or else the publisher's.
    pub fn presence_keys(&self) -> Vec<String> {
        self.presence.keys_or(&self.publisher.api_keys)
    }

    /// Checks the sections the publisher role needs.
    pub fn validate_publisher(&self) -> Result<(), ConfigError> {
        self.publisher.validate()?;
        self.validate_channels()
    }
}

/// The `HERALD_<SECTION>__<KEY>` variables. Others that share the prefix
/// (`HERALD_CONFIG_FILE`) are not configuration.
fn env() -> Env {
    Env::prefixed("HERALD_").filter(|key| key.as_str().contains("__")).split("__")
}

/// Why the configuration could not be loaded: every problem found, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(pub Vec<ConfigError>);

/// One problem per `; `-separated part: `key: what is wrong (where the value came from)`.
impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// Each figment error as the key it is about, in lower case, and what is wrong with its value
/// and where that came from. An error about no key (a file that is not TOML) is keyed by the
/// file.
fn describe(errors: figment::Error) -> Vec<ConfigError> {
    errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".").to_lowercase();
            let source = e.metadata.as_ref().map(|m| m.name.to_string());
            let problem = match &source {
                Some(source) if !key.is_empty() => format!("{} (from {source})", e.kind),
                _ => e.kind.to_string(),
            };
            let file = e.metadata.as_ref().and_then(|m| m.source.as_ref()).map(|s| s.to_string());
            let key = match file.or(source) {
                _ if !key.is_empty() => key,
                Some(source) => source,
                None => "configuration".into(),
            };
            ConfigError::new(key, problem)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_named() {
        let config = Config::default();
        assert_eq!(config.validate_publisher().unwrap_err().key, "publisher.api_keys");
        assert_eq!(config.validate_presence().unwrap_err().key, "presence.api_keys");
        assert_eq!(config.validate_gateway().unwrap_err().key, "auth.jwt_secret");
    }

    #[test]
    fn the_standalone_mode_refuses_an_event_stream_it_cannot_keep() {
        let mut config = Config::default();
        assert_eq!(config.validate_standalone(), Ok(()));
        config.events.enabled = true;
        assert_eq!(config.validate_standalone().unwrap_err().key, "events.enabled");
    }

    /// Pattern subscriptions are refused at start-up on a Redis Cluster, naming the namespace.
    #[test]
    fn patterns_are_refused_on_a_cluster() {
        let mut config = Config::default();
        let events = herald_protocol::NamespaceConfig { patterns: true, ..Default::default() };
        config.namespaces.0.insert("events".into(), events);
        config.validate_channels().unwrap();
        config.redis.cluster_nodes = vec!["127.0.0.1:7000".into()];
        assert_eq!(config.validate_channels().unwrap_err().key, "namespaces.events.patterns");
    }
}
