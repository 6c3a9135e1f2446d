//! Reaching the Redis master: the one way every Redis connection of Herald is opened.
//!
//! [`Endpoint`] is where and how to connect, read once from [`RedisConfig`]: the URL's server,
//! or with Sentinel the master the sentinels name at the moment of connecting, with the URL's
//! credentials. The engine's two connections open through it: a node's Pub/Sub connection
//! (`node`) and the publishing connection (`publish`), both plain RESP streams
//! ([`Endpoint::open_resp`]). [`LazyConnection`] is the multiplexed redis-rs connection
//! services that run ordinary commands and scripts share (presence): opened on first use,
//! dropped when a command shows it broke, opened again by the next call.

use herald_protocol::ConfigError;
use redis::aio::MultiplexedConnection;

use super::RedisConfig;
use super::resp::{PubSubConn, RespError};
use super::sentinel::{self, SentinelError};

/// Why no connection to the Redis master could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The sentinels did not name a master.
    #[error("finding the master: {0}")]
    Sentinel(#[from] SentinelError),
    /// Connecting or authenticating a RESP connection failed.
    #[error("connecting to redis at {addr}: {source}")]
    Resp {
        addr: String,
        #[source]
        source: RespError,
    },
    /// Connecting, authenticating or the `ROLE` check of a multiplexed connection failed.
    #[error("connecting to redis at {addr}: {source}")]
    Client {
        addr: String,
        #[source]
        source: redis::RedisError,
    },
    /// With Sentinel: the server named is no longer the master.
    #[error("the server the sentinels named ({addr}) is not a master (failover in progress)")]
    NotMaster { addr: String },
    /// The server did not complete the handshake within `redis.connect_timeout`.
    #[error("redis did not answer within redis.connect_timeout")]
    Timeout,
}

/// Where and how to reach the Redis master. Cheap to clone; opens nothing by itself.
#[derive(Clone)]
pub struct Endpoint {
    config: RedisConfig,
    /// The URL's parsed form: database, credentials, protocol for multiplexed connections.
    info: redis::ConnectionInfo,
    /// The URL's host and port; with Sentinel the master is looked up on every connect.
    url_addr: (String, u16),
    username: Option<String>,
    password: Option<String>,
    /// On a cluster: the one node this endpoint reaches ([`Endpoint::at`]), instead of the
    /// URL's server or the sentinels' master.
    pinned: Option<(String, u16)>,
}

impl Endpoint {
    /// Checks `config` ([`RedisConfig::validate`]); the error names the key.
    pub fn new(config: RedisConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| ConfigError::new("redis.url", e))?;
        let info = client.get_connection_info().clone();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Err(ConfigError::new("redis.url", "only redis://host:port URLs are supported"));
        };
        let url_addr = (host.clone(), *port);
        let username = info.redis_settings().username().map(String::from);
        let password = info.redis_settings().password().map(String::from);
        Ok(Self { config, info, url_addr, username, password, pinned: None })
    }

    /// The same settings and credentials, connecting to `host:port` only: a cluster node.
    pub(super) fn at(&self, host: &str, port: u16) -> Self {
        Self { pinned: Some((host.to_string(), port)), ..self.clone() }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Where commands go now: the URL's server, or the master the sentinels name.
    pub async fn address(&self) -> Result<(String, u16), SentinelError> {
        if let Some(pinned) = &self.pinned {
            return Ok(pinned.clone());
        }
        sentinel::current_address(&self.config, (&self.url_addr.0, self.url_addr.1)).await
    }

    /// A RESP connection to the current master, connected and authenticated, and the master's
    /// `host:port` for messages. No overall timeout: callers bound it by
    /// `redis.connect_timeout`, together with whatever handshake they add.
    pub(super) async fn open_resp(&self) -> Result<(PubSubConn, String), ConnectError> {
        let (host, port) = self.address().await?;
        let addr = format!("{host}:{port}");
        match PubSubConn::connect(&host, port, self.username.as_deref(), self.password.as_deref()).await {
            Ok(conn) => Ok((conn, addr)),
            Err(source) => Err(ConnectError::Resp { addr, source }),
        }
    }

    /// A multiplexed connection to the current master (checked, with Sentinel, to really be
    /// the master), connecting within `redis.connect_timeout` and answering each command
    /// within `redis.response_timeout`.
    pub async fn open_multiplexed(&self) -> Result<MultiplexedConnection, ConnectError> {
        let (host, port) = self.address().await?;
        let addr = format!("{host}:{port}");
        let failed = |source| ConnectError::Client { addr: addr.clone(), source };
        // Without TCP_NODELAY (the crate's default is off) a command written while an earlier
        // one's reply is outstanding waits for that reply before it leaves: Nagle's algorithm.
        let info = self
            .info
            .clone()
            .set_addr(redis::ConnectionAddr::Tcp(host, port))
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(failed)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.response_timeout));
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await.map_err(failed)?;
        if self.config.sentinel_master.is_some() {
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.map_err(failed)?;
            let is_master = matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master");
            if !is_master {
                return Err(ConnectError::NotMaster { addr });
            }
        }
        Ok(conn)
    }
}

/// A multiplexed connection to the master, shared by every caller, opened on first use and
/// again after a command showed it broken. Callers that arrive while it is being opened wait
/// for that attempt; while Redis is down each call tries once, bounded by the timeouts of
/// [`Endpoint::open_multiplexed`].
pub struct LazyConnection {
    endpoint: Endpoint,
    /// The open connection, `None` until first used or after it broke.
    slot: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl LazyConnection {
    /// Opens nothing yet, so this works while Redis is down.
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint, slot: tokio::sync::Mutex::new(None) }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The open connection, or a new one.
    pub async fn get(&self) -> Result<MultiplexedConnection, ConnectError> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.endpoint.open_multiplexed().await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Called with the error of a command run on a connection from [`LazyConnection::get`]:
    /// when it says the connection is broken (I/O, timeout, dropped), the connection is
    /// forgotten and the next [`LazyConnection::get`] opens a new one. A command Redis refused
    /// keeps it.
    pub async fn failed(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            self.slot.lock().await.take();
        }
    }

    /// Runs `pipe` and returns its replies; a broken connection is dropped on the way.
    pub async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, QueryError> {
        let mut conn = self.get().await?;
        match pipe.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.failed(&e).await;
                Err(QueryError::Command(e))
            }
        }
    }
}

/// Why a command on a [`LazyConnection`] failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Redis refused the command, or the connection broke while it ran.
    #[error("{0}")]
    Command(#[source] redis::RedisError),
}
