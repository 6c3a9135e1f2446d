//! The Redis engine's settings (`[redis]`), their checks, and the names channels get in Redis.

use std::time::Duration;

use herald_protocol::{BROADCAST_CHANNEL, ChannelName, ConfigError};
use serde::Deserialize;

use super::{redact, sentinel};

/// Settings of the Redis engine (`[redis]` in the configuration file).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prepended to every channel name in Redis, so several deployments can share a server.
    pub prefix: String,
    /// How long to wait for a TCP connection to Redis.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a publish (and a readiness `PING`) may take, from the request to Redis's
    /// answer, connecting included. A publish still unanswered then fails as "not sent" or,
    /// once its command went out, as "outcome unknown".
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Largest pipeline of `PUBLISH` commands one batch sends to Redis at a time (at least one
    /// message). The next part of the batch goes out once Redis answered this one, so other
    /// requests' publishes wait behind at most this much of a batch.
    pub publish_pipeline_bytes: usize,
    /// How long a client's subscribe waits for Redis to confirm before it gets `unavailable`.
    #[serde(with = "humantime_serde")]
    pub subscribe_timeout: Duration,
    /// Least time between two batches of `SUBSCRIBE`/`UNSUBSCRIBE` commands on a gateway's
    /// Pub/Sub connection. A subscribe leaves at once when no batch left within this time;
    /// in a burst, channels gather for up to this long and Redis gets fewer, larger commands.
    #[serde(with = "humantime_serde")]
    pub subscribe_batch_interval: Duration,
    /// First delay before reconnecting the Pub/Sub connection; it doubles up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How often the Pub/Sub connection is pinged, so a silently dead Redis is noticed.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// With Redis Sentinel: the name of the monitored master. Every connection then asks the
    /// sentinels where the master is; `url` only supplies the password and database.
    pub sentinel_master: Option<String>,
    /// With Redis Sentinel: the sentinels, as `host:port` (a comma-separated string works too).
    #[serde(deserialize_with = "herald_protocol::support::list_or_comma_separated")]
    pub sentinel_addresses: Vec<String>,
    /// With Redis Sentinel: the sentinels' own password (their `requirepass`), when they have
    /// one. The master's password is the one in `url`.
    pub sentinel_password: Option<String>,
    /// With Redis Sentinel: the ACL user for the sentinels, with `sentinel_password`.
    pub sentinel_username: Option<String>,
    /// With Redis Cluster: some of the cluster's nodes, as `host:port` (a comma-separated
    /// string works too), from which the engine reads the slot map. Channels then use
    /// sharded Pub/Sub on the primary owning their slot; `url` only supplies the password.
    #[serde(deserialize_with = "herald_protocol::support::list_or_comma_separated")]
    pub cluster_nodes: Vec<String>,
    /// With Redis Cluster: channels too hot for one primary (every gateway subscribes them,
    /// many publish to them), each published in turn to `spread_width` parts whose slots are
    /// spread over the primaries. Their messages may then arrive in another order than they
    /// were published in. See docs/cluster.md.
    #[serde(deserialize_with = "herald_protocol::support::list_or_comma_separated")]
    pub spread_channels: Vec<String>,
    /// How many parts each of `spread_channels` is published to (1 spreads nothing).
    pub spread_width: u32,
}

impl std::fmt::Debug for RedisConfig {
    /// Passwords are left out: configurations end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so that a new field cannot be left out (or printed in the clear) unseen.
        let Self {
            url,
            prefix,
            connect_timeout,
            response_timeout,
            publish_pipeline_bytes,
            subscribe_timeout,
            subscribe_batch_interval,
            reconnect_min,
            reconnect_max,
            ping_interval,
            sentinel_master,
            sentinel_addresses,
            sentinel_password,
            sentinel_username,
            cluster_nodes,
            spread_channels,
            spread_width,
        } = self;
        f.debug_struct("RedisConfig")
            .field("url", &redact(url))
            .field("prefix", prefix)
            .field("connect_timeout", connect_timeout)
            .field("response_timeout", response_timeout)
            .field("publish_pipeline_bytes", publish_pipeline_bytes)
            .field("subscribe_timeout", subscribe_timeout)
            .field("subscribe_batch_interval", subscribe_batch_interval)
            .field("reconnect_min", reconnect_min)
            .field("reconnect_max", reconnect_max)
            .field("ping_interval", ping_interval)
            .field("sentinel_master", sentinel_master)
            .field("sentinel_addresses", sentinel_addresses)
            .field("sentinel_password", &sentinel_password.as_ref().map(|_| "<redacted>"))
            .field("sentinel_username", sentinel_username)
            .field("cluster_nodes", cluster_nodes)
            .field("spread_channels", spread_channels)
            .field("spread_width", spread_width)
            .finish()
    }
}

impl RedisConfig {
    /// Checks the URL and the Sentinel settings; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| ConfigError::new("redis.url", e))?;
        if !matches!(client.get_connection_info().addr(), redis::ConnectionAddr::Tcp(..)) {
            return Err(ConfigError::new("redis.url", "only redis://host:port URLs are supported"));
        }
        if self.response_timeout.is_zero() {
            return Err(ConfigError::new("redis.response_timeout", "must be greater than 0"));
        }
        if self.publish_pipeline_bytes == 0 {
            return Err(ConfigError::new("redis.publish_pipeline_bytes", "must be greater than 0"));
        }
        if self.subscribe_batch_interval >= self.subscribe_timeout {
            return Err(ConfigError::new(
                "redis.subscribe_batch_interval",
                "must be shorter than redis.subscribe_timeout",
            ));
        }
        match (&self.sentinel_master, self.sentinel_addresses.is_empty()) {
            (Some(_), true) => {
                return Err(ConfigError::new(
                    "redis.sentinel_addresses",
                    "required with redis.sentinel_master",
                ));
            }
            (None, false) => {
                return Err(ConfigError::new(
                    "redis.sentinel_master",
                    "required with redis.sentinel_addresses",
                ));
            }
            _ => {}
        }
        if self.sentinel_master.is_none()
            && (self.sentinel_password.is_some() || self.sentinel_username.is_some())
        {
            return Err(ConfigError::new(
                "redis.sentinel_master",
                "required with redis.sentinel_password or redis.sentinel_username",
            ));
        }
        if self.sentinel_username.is_some() && self.sentinel_password.is_none() {
            return Err(ConfigError::new("redis.sentinel_password", "required with redis.sentinel_username"));
        }
        for addr in &self.sentinel_addresses {
            sentinel::split_addr(addr).map_err(|e| ConfigError::new("redis.sentinel_addresses", e))?;
        }
        if self.is_cluster() {
            if self.sentinel_master.is_some() {
                return Err(ConfigError::new(
                    "redis.cluster_nodes",
                    "cannot be combined with redis.sentinel_master: a cluster fails over by itself",
                ));
            }
            // The hash tag of every key and sharded channel is the channel name in braces;
            // a brace in the prefix would make the prefix the tag and put every channel in
            // one slot.
            if self.prefix.contains(['{', '}']) {
                return Err(ConfigError::new(
                    "redis.prefix",
                    "must not contain { or } with redis.cluster_nodes",
                ));
            }
            for addr in &self.cluster_nodes {
                sentinel::split_addr(addr).map_err(|e| ConfigError::new("redis.cluster_nodes", e))?;
            }
        }
        if !(1..=MAX_SPREAD_WIDTH).contains(&self.spread_width) {
            return Err(ConfigError::new(
                "redis.spread_width",
                format!("must be between 1 and {MAX_SPREAD_WIDTH}"),
            ));
        }
        for name in &self.spread_channels {
            ChannelName::parse(name)
                .map_err(|e| ConfigError::new("redis.spread_channels", format!("{name:?} {e}")))?;
            let last = spread_part(name, self.spread_width - 1);
            ChannelName::parse(&last).map_err(|e| {
                ConfigError::new("redis.spread_channels", format!("{name:?}: its part {last:?} {e}"))
            })?;
        }
        Ok(())
    }

    /// Whether the engine runs on a Redis Cluster (`redis.cluster_nodes` is set).
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// `channel`'s Pub/Sub channel in Redis: the prefix and the name, and on a cluster the
    /// name in braces, so that the channel and its history keys share one hash tag and slot.
    pub(crate) fn pubsub_channel(&self, channel: &str) -> String {
        if self.is_cluster() {
            format!("{}{{{channel}}}", self.prefix)
        } else {
            format!("{}{channel}", self.prefix)
        }
    }

    /// The channels spread over the primaries: `spread_channels` on a cluster with a
    /// `spread_width` above 1, else none.
    pub(crate) fn spread(&self) -> impl Iterator<Item = &str> {
        let spread = self.is_cluster() && self.spread_width > 1;
        self.spread_channels.iter().filter(move |_| spread).map(String::as_str)
    }

    /// `pattern`'s Pub/Sub pattern in Redis: the prefix, its glob characters escaped so they
    /// match themselves, and the pattern. Only on one Redis: a cluster has no patterns.
    pub(crate) fn pubsub_pattern(&self, pattern: &str) -> String {
        let mut key = self.pattern_prefix();
        key.push_str(pattern);
        key
    }

    /// The prefix as it starts every Pub/Sub pattern: each glob character escaped.
    pub(crate) fn pattern_prefix(&self) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 4);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
                key.push('\\');
            }
            key.push(c);
        }
        key
    }

    /// The channel name a Pub/Sub channel from Redis stands for: [`RedisConfig::pubsub_channel`]
    /// undone. `None` for a channel that is not Herald's.
    pub(crate) fn channel_name<'a>(&self, pubsub: &'a [u8]) -> Option<&'a str> {
        let rest = pubsub.strip_prefix(self.prefix.as_bytes())?;
        let rest = if self.is_cluster() { rest.strip_prefix(b"{")?.strip_suffix(b"}")? } else { rest };
        std::str::from_utf8(rest).ok()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "herald:".into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            publish_pipeline_bytes: 1024 * 1024,
            subscribe_timeout: Duration::from_secs(5),
            subscribe_batch_interval: Duration::from_millis(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            sentinel_master: None,
            sentinel_addresses: Vec::new(),
            sentinel_password: None,
            sentinel_username: None,
            cluster_nodes: Vec::new(),
            spread_channels: vec![BROADCAST_CHANNEL.into()],
            spread_width: 16,
        }
    }
}

/// Most parts a spread channel may have.
pub const MAX_SPREAD_WIDTH: u32 = 1024;

/// What the name of a spread channel's part starts with: the reserved namespace, so clients
/// can neither subscribe to a part nor publish into one.
const SPREAD_PREFIX: &str = "herald:spread.";

/// The name of part `n` of the spread channel `channel`.
pub(crate) fn spread_part(channel: &str, n: u32) -> String {
    format!("{SPREAD_PREFIX}{channel}.{n}")
}

/// The spread channel whose part `name` is, if it is one.
pub(crate) fn spread_channel_of(name: &str) -> Option<&str> {
    name.strip_prefix(SPREAD_PREFIX)?.rsplit_once('.').map(|(channel, _)| channel)
}
