//! Commands routed by key, for the history scripts and for engines outside the broker that
//! keep state in the same Redis (presence): on a single Redis (or Sentinel) one shared
//! connection; on a Redis Cluster the primary serving the key's slot, read from the slot map
//! and followed through `MOVED`, `CLUSTERDOWN` and `TRYAGAIN` (the map read again) and `ASK`
//! (the importing node asked at once, with `ASKING`).

use std::future::Future;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisError};
use tokio_util::sync::CancellationToken;

use super::RedisConfig;
use super::cluster::{Cluster, is_redirect};
use super::connect::{Endpoint, LazyConnection};
use herald_protocol::ConfigError;

use crate::BrokerError;

/// Runs commands on the primary of a key. Cheap to clone.
#[derive(Clone)]
pub struct KeyRouter {
    inner: Arc<Route>,
}

enum Route {
    /// The one primary (standalone or Sentinel).
    Single(Box<LazyConnection>),
    /// The primary serving each key's slot. A router of its own (presence's) never uses the
    /// cluster's publishing side, and stops it when dropped; the broker's history shares the
    /// broker's cluster.
    Cluster {
        cluster: Arc<Cluster>,
        response_timeout: std::time::Duration,
        _stop: Option<tokio_util::sync::DropGuard>,
    },
}

impl KeyRouter {
    /// Validates the configuration (the error names the key); connections are made lazily.
    pub fn new(config: RedisConfig) -> Result<Self, ConfigError> {
        let response_timeout = config.response_timeout;
        let cluster = config.is_cluster();
        let endpoint = Endpoint::new(config)?;
        let inner = if cluster {
            let stop = CancellationToken::new();
            let cluster = Arc::new(Cluster::new(endpoint, stop.child_token()));
            Route::Cluster { cluster, response_timeout, _stop: Some(stop.drop_guard()) }
        } else {
            Route::Single(Box::new(LazyConnection::new(endpoint)))
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// A router on `endpoint`'s one primary, or on the broker's own `cluster`.
    pub(super) fn shared(endpoint: Endpoint, cluster: Option<Arc<Cluster>>) -> Self {
        let response_timeout = endpoint.config().response_timeout;
        let inner = match cluster {
            Some(cluster) => Route::Cluster { cluster, response_timeout, _stop: None },
            None => Route::Single(Box::new(LazyConnection::new(endpoint))),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Runs `command` on a connection to the primary of `key`. The outer error: no
    /// connection, nothing ran. A broken connection is dropped on the way, so the next call
    /// reconnects. On a cluster, a command refused because its slot moved, is moving or is
    /// being failed over did not run: the slot map is read again and the command sent again,
    /// until `redis.response_timeout` from the first try; then its error is returned. One
    /// refused with `ASK` (its keys already on the node importing the slot) is sent there at
    /// once, after `ASKING`; `TRYAGAIN` (its keys split between the two nodes) waits. A
    /// primary that cannot be reached has the map read again (it may have failed over) and
    /// the command sent to the slot's new primary, if there is one; a connection that broke
    /// under a command has the map read again for the next one.
    pub async fn run<T, F, Fut>(
        &self,
        key: &str,
        operation: &'static str,
        command: F,
    ) -> Result<Result<T, RedisError>, BrokerError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
        T: FromRedisValue,
    {
        let connect_failed = |e| BrokerError::unavailable(operation, e);
        let (cluster, response_timeout) = match &*self.inner {
            Route::Single(conn) => {
                let result = command(conn.get().await.map_err(connect_failed)?).await;
                if let Err(e) = &result {
                    conn.failed(e).await;
                }
                return Ok(result);
            }
            Route::Cluster { cluster, response_timeout, .. } => (cluster, *response_timeout),
        };
        let deadline = tokio::time::Instant::now() + response_timeout;
        let until_deadline = || deadline.saturating_duration_since(tokio::time::Instant::now());
        loop {
            let (conn, generation) = cluster.connection(key, operation).await?;
            let connection = match conn.get().await {
                Ok(connection) => connection,
                // Nothing ran. The primary may be gone and a replica promoted in its place:
                // read the map again, and try the slot's new primary while time remains.
                Err(e) => {
                    let refreshed = cluster.topology.refresh_within(generation, until_deadline()).await;
                    let (next, _) = cluster.connection(key, operation).await?;
                    if refreshed.is_ok() && !Arc::ptr_eq(&next, &conn) && !until_deadline().is_zero() {
                        continue;
                    }
                    return Err(connect_failed(e));
                }
            };
            let mut result = command(connection).await;
            if let Err(e) = &result {
                conn.failed(e).await;
                // The connection broke under the command: whether it ran is unknown, so it
                // is not sent again, but the next command should find the primary of now.
                if e.is_io_error() || e.is_connection_dropped() {
                    let _ = cluster.topology.refresh_within(generation, until_deadline()).await;
                    return Ok(result);
                }
            }
            // The slot is migrating and the key has left for the importing node already: ask
            // there, announced with `ASKING`. Twice, as a script unknown there spends the
            // first `ASKING` on `NOSCRIPT` before loading itself.
            for _ in 0..2 {
                let Some(addr) = asked_to(&result) else { break };
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                result = command(cluster.asking(&addr, operation).await?).await;
            }
            let Err(e) = &result else { return Ok(result) };
            if !misrouted(e) || tokio::time::Instant::now() >= deadline {
                return Ok(result);
            }
            cluster
                .topology
                .refresh_within(generation, until_deadline())
                .await
                .map_err(|e| BrokerError::unavailable(operation, e))?;
        }
    }
}

/// Whether Redis refused the command because of where it was sent: the slot moved (`MOVED`),
/// is moving (`ASK`), or is being failed over (`CLUSTERDOWN`, `TRYAGAIN`, the latter also
/// for keys split by a migration under way). Such a command did not run.
fn misrouted(e: &RedisError) -> bool {
    e.code()
        .is_some_and(|code| is_redirect(&format!("{code} ")) || matches!(code, "CLUSTERDOWN" | "TRYAGAIN"))
}

/// The node an `ASK` reply sends the command to (`host:port`).
fn asked_to<T>(result: &Result<T, RedisError>) -> Option<String> {
    let e = result.as_ref().err()?;
    (e.code() == Some("ASK")).then(|| e.redirect_node().map(|(addr, _)| addr.to_string())).flatten()
}
