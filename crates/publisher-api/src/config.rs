//! Settings of the publisher API (`[publisher]` in the configuration file).

use std::net::{Ipv4Addr, SocketAddr};

use herald_protocol::ConfigError;
use serde::Deserialize;

pub use herald_api_common::tls::TlsConfig;
pub use herald_protocol::api_key::{KeyConfig, MIN_API_KEY_LEN};

/// Settings of the publisher API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// Where the HTTP API listens. Loopback by default: the API is for backends, not browsers.
    pub http_listen: SocketAddr,
    /// Where the gRPC API listens.
    pub grpc_listen: SocketAddr,
    /// Keys backends present as `Authorization: Bearer <key>`. Any of them is accepted, so keys
    /// can be rotated by adding the new one, moving the callers, then removing the old one.
    /// Empty is refused by [`PublisherConfig::validate`]: there is no unauthenticated mode.
    /// A single string is split at commas, so `HERALD_PUBLISHER__API_KEYS=key1,key2` works.
    #[serde(deserialize_with = "herald_protocol::support::list_or_comma_separated")]
    pub api_keys: Vec<String>,
    /// Scoped keys (`[[publisher.keys]]`): each named, limited to some operations and
    /// namespaces, and configurable by its SHA-256. Accepted beside `api_keys`.
    pub keys: Vec<KeyConfig>,
    /// TLS on both listeners (`[publisher.tls]`); with `client_ca`, mutual TLS: only clients
    /// with a certificate from that CA can connect at all.
    pub tls: Option<TlsConfig>,
    /// Largest `data` of one message, in bytes of JSON text. It bounds what every subscriber's
    /// socket and queue must carry per message.
    pub max_message_size: usize,
    /// Most messages in one batch request.
    pub max_batch: usize,
    /// Largest body of a batch request (HTTP) and largest gRPC request message, in bytes. It
    /// is also the most a single request can hold of `max_bytes_in_flight`.
    pub max_batch_body_size: usize,
    /// Most requests (HTTP and gRPC together) one replica works on at once; more are refused
    /// at once with `overloaded`, never queued.
    pub max_requests_in_flight: usize,
    /// Most bytes of request bodies beyond the single-message body limit one replica holds at
    /// once (in practice: batches). A request that would go over is refused with `overloaded`.
    pub max_bytes_in_flight: usize,
    /// Messages per second each API key may publish on this replica (a batch counts each of
    /// its messages); `0` turns rate limiting off.
    pub rate_limit: u32,
    /// Messages a key may publish at once after a quiet spell: the depth of its token bucket.
    /// At least `max_batch`, so a full batch can pass.
    pub rate_burst: u32,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)),
            grpc_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8082)),
            api_keys: Vec::new(),
            keys: Vec::new(),
            tls: None,
            max_message_size: 64 * 1024,
            max_batch: 1000,
            max_batch_body_size: 16 * 1024 * 1024,
            max_requests_in_flight: 512,
            max_bytes_in_flight: 32 * 1024 * 1024,
            rate_limit: 20_000,
            rate_burst: 20_000,
        }
    }
}

impl PublisherConfig {
    /// The accepted keys: `api_keys` (each allowed everything) and `keys`; fails naming the
    /// key that is wrong.
    pub fn api_keys(&self) -> Result<herald_protocol::ApiKeys, ConfigError> {
        herald_protocol::ApiKeys::from_config("publisher", &self.api_keys, &self.keys)
    }

    /// Refuses settings the API cannot run safely with. The message names the offending key,
    /// so a bad configuration stops start-up with a pointer to the line to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api_keys.is_empty() && self.keys.is_empty() {
            return Err(ConfigError::new("publisher.api_keys", "at least one key is required"));
        }
        self.api_keys()?;
        if let Some(tls) = &self.tls {
            herald_api_common::tls::server_config(tls).map_err(|e| e.config_error("publisher.tls", tls))?;
        }
        if self.max_message_size == 0 {
            return Err(ConfigError::new("publisher.max_message_size", "must be greater than 0"));
        }
        if self.max_batch == 0 {
            return Err(ConfigError::new("publisher.max_batch", "must be greater than 0"));
        }
        if self.max_batch_body_size == 0 {
            return Err(ConfigError::new("publisher.max_batch_body_size", "must be greater than 0"));
        }
        if self.max_requests_in_flight == 0 {
            return Err(ConfigError::new("publisher.max_requests_in_flight", "must be greater than 0"));
        }
        if self.max_bytes_in_flight < self.max_batch_body_size {
            return Err(ConfigError::new(
                "publisher.max_bytes_in_flight",
                format!(
                    "must be at least publisher.max_batch_body_size ({}), \
                 or the largest batch could never be taken",
                    self.max_batch_body_size
                ),
            ));
        }
        if u32::try_from(self.max_bytes_in_flight).is_err() {
            return Err(ConfigError::new("publisher.max_bytes_in_flight", "must be below 4 GiB"));
        }
        if self.rate_limit > 0 && (self.rate_burst as usize) < self.max_batch {
            return Err(ConfigError::new(
                "publisher.rate_burst",
                format!(
                    "must be at least publisher.max_batch ({}), or a full batch could never pass",
                    self.max_batch
                ),
            ));
        }
        herald_api_common::config::distinct_listeners("publisher", self.http_listen, self.grpc_listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> PublisherConfig {
        PublisherConfig { api_keys: vec!["0123456789abcdef".into()], ..Default::default() }
    }

    #[test]
    fn defaults_need_only_a_key() {
        assert_eq!(valid().validate(), Ok(()));
        let err = PublisherConfig::default().validate().unwrap_err();
        assert_eq!(err.to_string(), "publisher.api_keys: at least one key is required");
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let short = PublisherConfig { api_keys: vec!["0123456789abcdef".into(), "short".into()], ..valid() };
        assert_eq!(short.validate().unwrap_err().key, "publisher.api_keys[1]");
        let spaced = PublisherConfig { api_keys: vec!["0123456789 abcdef".into()], ..valid() };
        assert_eq!(spaced.validate().unwrap_err().key, "publisher.api_keys[0]");
        let batch = PublisherConfig { max_batch: 0, ..valid() };
        assert_eq!(batch.validate().unwrap_err().key, "publisher.max_batch");
        let size = PublisherConfig { max_message_size: 0, ..valid() };
        assert_eq!(size.validate().unwrap_err().key, "publisher.max_message_size");
        let burst = PublisherConfig { rate_burst: 10, ..valid() };
        assert_eq!(burst.validate().unwrap_err().key, "publisher.rate_burst");
        assert_eq!(PublisherConfig { rate_burst: 10, rate_limit: 0, ..valid() }.validate(), Ok(()));
        let bytes = PublisherConfig { max_bytes_in_flight: 1024, ..valid() };
        assert_eq!(bytes.validate().unwrap_err().key, "publisher.max_bytes_in_flight");
        let requests = PublisherConfig { max_requests_in_flight: 0, ..valid() };
        assert_eq!(requests.validate().unwrap_err().key, "publisher.max_requests_in_flight");
        let same = PublisherConfig { grpc_listen: valid().http_listen, ..valid() };
        assert_eq!(same.validate().unwrap_err().key, "publisher.grpc_listen");
    }

    /// Scoped keys alone are enough, and a wrong one or unreadable TLS files stop start-up
    /// naming the key to fix.
    #[test]
    fn scoped_keys_and_tls_are_checked_naming_the_key() {
        let scoped = KeyConfig {
            name: "billing".into(),
            key: None,
            key_sha256: Some("ab".repeat(32)),
            operations: vec!["publish".into()],
            namespaces: vec!["chat".into()],
        };
        let only_scoped = PublisherConfig { api_keys: vec![], keys: vec![scoped.clone()], ..valid() };
        assert_eq!(only_scoped.validate(), Ok(()));
        let typo = KeyConfig { operations: vec!["pubish".into()], ..scoped };
        let err = PublisherConfig { keys: vec![typo], ..valid() }.validate().unwrap_err();
        assert_eq!(err.key, "publisher.keys[0].operations");
        assert!(err.to_string().contains("key \"billing\""), "{err}");
        let tls = TlsConfig {
            cert: "/nonexistent/herald.pem".into(),
            key: "/nonexistent/herald.key".into(),
            client_ca: None,
            reload_interval: std::time::Duration::from_secs(10),
        };
        let err = PublisherConfig { tls: Some(tls), ..valid() }.validate().unwrap_err();
        assert_eq!(err.key, "publisher.tls.cert");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<PublisherConfig>(r#"{"api_key": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `api_key`"), "{err}");
        let parsed: PublisherConfig =
            serde_json::from_str(r#"{"http_listen": "0.0.0.0:9000", "max_batch": 5}"#).unwrap();
        assert_eq!(parsed.http_listen.port(), 9000);
        assert_eq!(parsed.max_batch, 5);
        assert_eq!(parsed.max_message_size, 65536);
    }
}
