//! Settings of presence (`[presence]` in the configuration file), read by the presence role,
//! by gateways (to find the service and pace their reports) and by the standalone mode.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use herald_protocol::{ChannelName, ConfigError, Namespaces};
use serde::Deserialize;

use crate::store::Timings;
use crate::store::redis::MAX_PARTS;

pub use herald_api_common::client_tls::ClientTlsConfig;
pub use herald_api_common::tls::TlsConfig;
pub use herald_protocol::api_key::{KeyConfig, MIN_API_KEY_LEN};

/// Settings of presence.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Where the presence role's HTTP API listens.
    pub http_listen: SocketAddr,
    /// Where the presence role's gRPC API (queries, and gateways' reports) listens.
    pub grpc_listen: SocketAddr,
    /// Keys accepted as `Authorization: Bearer <key>`, each allowed everything. When neither
    /// these nor `keys` are set: the publisher's (`publisher.api_keys`). Gateways present the
    /// first one ([`PresenceConfig::report_key`]). A single string is split at commas, as for
    /// the publisher.
    #[serde(deserialize_with = "herald_protocol::support::list_or_comma_separated")]
    pub api_keys: Vec<String>,
    /// Scoped keys (`[[presence.keys]]`), as for the publisher: named, limited to some
    /// operations (`presence_read`, `presence_report`) and namespaces, and configurable by
    /// their SHA-256.
    pub keys: Vec<KeyConfig>,
    /// TLS on both listeners of the presence role (`[presence.tls]`); with `client_ca`, mutual
    /// TLS, and gateways then present the certificate of `client_tls`.
    pub tls: Option<TlsConfig>,
    /// The presence role's gRPC address as gateways reach it (`http://presence:8084`, or
    /// `https://` for TLS with `client_tls`). Without it a `herald gateway` runs without
    /// presence.
    pub endpoint: Option<String>,
    /// How a gateway speaks TLS to an `https://` `endpoint` (`[presence.client_tls]`): the CA
    /// that signed presence's certificate, and the client certificate to present when
    /// presence asks for one (`tls.client_ca`).
    pub client_tls: ClientTlsConfig,
    /// The staleness bound: a gateway's lease lasts this long after its last report. A gateway
    /// that dies without a word is removed as a whole (its users' `leave` events sent) at most
    /// `ttl + sweep_interval` after its last report.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How often a gateway reports when nothing changed (its lease renewal). Must be well
    /// below `ttl`, so one or two lost reports do not expire a live gateway.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How soon after a change a gateway reports it. Changes of all its sockets in that time
    /// travel in one report, so a gateway makes at most one round trip per `flush_interval`.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How often each presence replica looks for expired leases and due `offline` and `leave`
    /// events.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// A user without connections goes `offline` only after this long, and a user out of a
    /// channel gets its `leave` only after this long, so a reconnect (a page reload, a network
    /// switch) flaps neither `offline`/`online` nor `leave`/`join`.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// The channel `online`/`offline` events are published to, for backends. With the Redis
    /// broker it is the Redis Pub/Sub channel `<redis.prefix><events_channel>`. Its namespace
    /// must not be configured, so clients cannot subscribe to it.
    pub events_channel: String,
    /// Most changes a gateway holds while presence is unreachable. When full, the backlog is
    /// dropped and the gateway sends its full state once presence answers again.
    pub max_backlog: usize,
    /// Most users in one bulk lookup.
    pub max_bulk: usize,
    /// Most members listed for one channel (the count is always exact).
    pub max_members: usize,
    /// How long a gateway waits for a report or a member list before giving up on it. A
    /// full-state report gets it once more per 2000 connections.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How many parts the presence role splits its Redis keys in, by user: each part has its
    /// own hash tag (`{presence:<n>}`), so on a Redis Cluster the parts, and the presence
    /// load, spread over the primaries. Unset: 16 on a cluster, 1 on one Redis. Every
    /// presence replica must use the same number; changing it starts presence afresh (see
    /// docs/cluster.md).
    pub parts: Option<usize>,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8083)),
            grpc_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8084)),
            api_keys: Vec::new(),
            keys: Vec::new(),
            tls: None,
            endpoint: None,
            client_tls: ClientTlsConfig::default(),
            ttl: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            flush_interval: Duration::from_millis(200),
            sweep_interval: Duration::from_secs(1),
            grace: Duration::from_secs(3),
            events_channel: "presence:events".into(),
            max_backlog: 100_000,
            max_bulk: 1000,
            max_members: 10_000,
            request_timeout: Duration::from_secs(2),
            parts: None,
        }
    }
}

impl PresenceConfig {
    /// The timings the store applies.
    pub fn timings(&self) -> Timings {
        Timings { ttl: self.ttl, grace: self.grace }
    }

    /// The flat list of keys, or `fallback` (the publisher's) when neither `api_keys` nor
    /// `keys` is set.
    pub fn keys_or(&self, fallback: &[String]) -> Vec<String> {
        if self.api_keys.is_empty() && self.keys.is_empty() {
            fallback.to_vec()
        } else {
            self.api_keys.clone()
        }
    }

    /// The key a gateway presents to a remote presence role: the first of the flat list (or
    /// `fallback`'s, as [`Self::keys_or`]), else the first scoped key given as `key` (one
    /// given only by its hash cannot be presented). It needs `presence_report` and
    /// `presence_read` (channel member lists) on every namespace.
    pub fn report_key(&self, fallback: &[String]) -> Option<String> {
        self.keys_or(fallback).into_iter().next().or_else(|| self.keys.iter().find_map(|k| k.key.clone()))
    }

    /// The events channel, parsed.
    pub fn events_channel(&self) -> Result<ChannelName, ConfigError> {
        ChannelName::parse(&self.events_channel).map_err(|e| {
            ConfigError::new("presence.events_channel", format!("{:?} {e}", self.events_channel))
        })
    }

    /// Refuses settings presence cannot keep its promises with; messages name the key.
    pub fn validate(&self, namespaces: &Namespaces) -> Result<(), ConfigError> {
        let positive = [
            ("presence.ttl", self.ttl),
            ("presence.heartbeat_interval", self.heartbeat_interval),
            ("presence.flush_interval", self.flush_interval),
            ("presence.sweep_interval", self.sweep_interval),
            ("presence.request_timeout", self.request_timeout),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        if self.heartbeat_interval * 2 > self.ttl {
            return Err(ConfigError::new(
                "presence.heartbeat_interval",
                format!(
                    "{:?} must be at most half of presence.ttl ({:?}), so one lost \
                 report does not expire a live gateway",
                    self.heartbeat_interval, self.ttl
                ),
            ));
        }
        if self.flush_interval > self.heartbeat_interval {
            return Err(ConfigError::new(
                "presence.flush_interval",
                "must not be longer than presence.heartbeat_interval",
            ));
        }
        for (key, value) in [
            ("presence.max_backlog", self.max_backlog),
            ("presence.max_bulk", self.max_bulk),
            ("presence.max_members", self.max_members),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        if let Some(parts) = self.parts
            && !(1..=MAX_PARTS).contains(&parts)
        {
            return Err(ConfigError::new("presence.parts", format!("{parts} must be 1 to {MAX_PARTS}")));
        }
        let channel = self.events_channel()?;
        let Some(ns) = channel.namespace() else {
            return Err(ConfigError::new(
                "presence.events_channel",
                format!(
                    "{:?} needs a namespace (`presence:events`), one that is not configured",
                    self.events_channel
                ),
            ));
        };
        if namespaces.0.contains_key(ns) || !matches!(channel.kind(), herald_protocol::ChannelKind::Regular) {
            return Err(ConfigError::new(
                "presence.events_channel",
                format!(
                    "namespace {ns:?} is a client namespace; clients could read every \
                 online/offline event"
                ),
            ));
        }
        herald_protocol::ApiKeys::from_config("presence", &self.api_keys, &self.keys)?;
        if let Some(tls) = &self.tls {
            herald_api_common::tls::server_config(tls).map_err(|e| e.config_error("presence.tls", tls))?;
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "presence.endpoint",
                format!("{endpoint:?} must be an http:// or https:// URL"),
            ));
        }
        self.client_tls.validate("presence.client_tls")?;
        if self.client_tls.is_set() && !self.endpoint.as_deref().is_some_and(|e| e.starts_with("https://")) {
            return Err(ConfigError::new(
                "presence.client_tls",
                "set, but presence.endpoint is not an https:// URL: reports would travel in plain text",
            ));
        }
        herald_api_common::config::distinct_listeners("presence", self.http_listen, self.grpc_listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_keep_the_staleness_bound() {
        let config = PresenceConfig::default();
        assert_eq!(config.validate(&Namespaces::default()), Ok(()));
        assert!(config.ttl + config.sweep_interval + config.grace <= Duration::from_secs(15));
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let slow = PresenceConfig { heartbeat_interval: Duration::from_secs(6), ..Default::default() };
        assert_eq!(slow.validate(&Namespaces::default()).unwrap_err().key, "presence.heartbeat_interval");
        let mut ns = Namespaces::default();
        ns.0.insert("presence".into(), Default::default());
        assert_eq!(PresenceConfig::default().validate(&ns).unwrap_err().key, "presence.events_channel");
        let keys = PresenceConfig { api_keys: vec!["short".into()], ..Default::default() };
        assert_eq!(keys.validate(&Namespaces::default()).unwrap_err().key, "presence.api_keys[0]");
        let endpoint = PresenceConfig { endpoint: Some("presence:8084".into()), ..Default::default() };
        assert_eq!(endpoint.validate(&Namespaces::default()).unwrap_err().key, "presence.endpoint");
        let ca = ClientTlsConfig { ca: Some("ca.pem".into()), ..Default::default() };
        let plain = PresenceConfig {
            endpoint: Some("http://presence:8084".into()),
            client_tls: ca.clone(),
            ..Default::default()
        };
        assert_eq!(plain.validate(&Namespaces::default()).unwrap_err().key, "presence.client_tls");
        let half = PresenceConfig {
            endpoint: Some("https://presence:8084".into()),
            client_tls: ClientTlsConfig { cert: Some("cert.pem".into()), ..ca },
            ..Default::default()
        };
        assert_eq!(half.validate(&Namespaces::default()).unwrap_err().key, "presence.client_tls.key");
    }
}
