//! Redis Cluster: the engine on several primaries, each channel on the one serving its slot,
//! with sharded Pub/Sub (`SPUBLISH`, `SSUBSCRIBE`; Redis 7 or later).
//!
//! - [`slot`]: which slot a channel's keys and Pub/Sub channel hash to. On a cluster a
//!   channel `c` is the Pub/Sub channel `p{c}` (prefix `p`), so it shares its hash tag, and
//!   its slot, with its history keys `p{c}.stream` and `p{c}.meta`.
//! - [`topology`]: the slot map, read from the cluster and read again when it proves stale.
//! - [`publish`]: `SPUBLISH` on the owning primary's publishing connection; batches split by
//!   primary and sent concurrently.
//! - [`subscribe`]: a node's sharded Pub/Sub connections, one per primary it has channels on,
//!   following the map as slots move and primaries fail over.
//! - [`spread`]: hot channels (`broadcast`) published over several slots, so over several
//!   primaries, in turn.
//!
//! History scripts run on the owning primary too ([`super::history`] routes them through
//! [`Cluster::connection`]).

mod publish;
mod slot;
mod spread;
mod subscribe;
mod topology;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

pub(crate) use self::publish::{ClusterPublisher, is_redirect};
pub use self::slot::key_slot;
pub(crate) use self::spread::Spread;
pub(crate) use self::subscribe::ClusterSubscriber;
pub(crate) use self::topology::Topology;
use herald_protocol::ChannelName;

use super::RedisConfig;
use super::connect::{Endpoint, LazyConnection};
use super::sentinel::split_addr;
use crate::{BrokerError, ShardChannel};

/// How many suffixes [`Cluster::shard_channels`] tries before giving up on a primary; one
/// serving a single slot of 16384 is found within this many tries almost surely, and one
/// serving a third of them within a few.
const CANARY_NAME_TRIES: u32 = 1 << 18;

/// The cluster side of one engine: the slot map, the publishing connections, and the
/// connections history scripts run on.
pub(crate) struct Cluster {
    pub(crate) topology: Arc<Topology>,
    pub(crate) publisher: ClusterPublisher,
    endpoint: Endpoint,
    /// One multiplexed connection per primary for history scripts, made on first use;
    /// those of nodes no longer primaries are dropped when a newer map is used.
    scripts: Mutex<(u64, ScriptConns)>,
}

/// The history scripts' connection of each primary.
type ScriptConns = HashMap<Arc<str>, Arc<LazyConnection>>;

impl Cluster {
    pub(crate) fn new(endpoint: Endpoint, stop: CancellationToken) -> Self {
        let topology = Arc::new(Topology::new(endpoint.clone()));
        let publisher = ClusterPublisher::new(topology.clone(), endpoint.clone(), stop);
        Self { topology, publisher, endpoint, scripts: Mutex::default() }
    }

    /// The connection for commands on `key`'s slot, and the generation of the map that
    /// named it (for [`Topology::refresh`] after a `MOVED`).
    pub(crate) async fn connection(
        &self,
        key: &str,
        operation: &'static str,
    ) -> Result<(Arc<LazyConnection>, u64), BrokerError> {
        let limit = self.endpoint.config().response_timeout;
        let map =
            self.topology.known_within(limit).await.map_err(|e| BrokerError::unavailable(operation, e))?;
        let addr = map.primary(key_slot(key.as_bytes())).ok_or_else(|| {
            BrokerError::unavailable(operation, "the channel's cluster slot is served by no primary")
        })?;
        let mut scripts = self.scripts.lock().expect("cluster script connections poisoned");
        if map.generation > scripts.0 {
            scripts.0 = map.generation;
            scripts.1.retain(|addr, _| map.primaries().contains(addr));
        }
        if let Some(conn) = scripts.1.get(addr) {
            return Ok((conn.clone(), map.generation));
        }
        let (host, port) = split_addr(addr).map_err(|e| BrokerError::unavailable(operation, e))?;
        let conn = Arc::new(LazyConnection::new(self.endpoint.at(&host, port)));
        scripts.1.insert(addr.clone(), conn.clone());
        Ok((conn, map.generation))
    }

    /// A connection of its own to the node at `addr` (`host:port`, as an `ASK` reply names
    /// it) on which `ASKING` was just sent, so that the next command there is served for a
    /// slot the node is importing. Of its own because `ASKING` holds for the connection's next
    /// command only, which another user of a shared connection could spend. `ASK` is rare
    /// (a slot migrating), so opening one each time costs little.
    pub(crate) async fn asking(
        &self,
        addr: &str,
        operation: &'static str,
    ) -> Result<redis::aio::MultiplexedConnection, BrokerError> {
        let (host, port) = split_addr(addr).map_err(|e| BrokerError::unavailable(operation, e))?;
        let mut conn = (self.endpoint.at(&host, port).open_multiplexed().await)
            .map_err(|e| BrokerError::unavailable(operation, e))?;
        redis::cmd("ASKING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| BrokerError::unavailable(operation, e))?;
        Ok(conn)
    }

    /// For each primary of the known map, a channel named `base.<n>` whose slot it serves
    /// (the smallest such `n`, so the name stays the same while the map does); `base` alone
    /// while no map is known yet (publishing it reads one).
    pub(crate) fn shard_channels(&self, config: &RedisConfig, base: &ChannelName) -> Vec<ShardChannel> {
        let map = self.topology.current();
        let primaries = map.primaries();
        if !map.is_known() || primaries.is_empty() {
            return vec![ShardChannel { shard: None, channel: base.clone() }];
        }
        let mut found: Vec<Option<ChannelName>> = vec![None; primaries.len()];
        let mut missing = primaries.len();
        for n in 0..CANARY_NAME_TRIES {
            if missing == 0 {
                break;
            }
            let Ok(channel) = ChannelName::parse(&format!("{}.{n}", base.as_str())) else { break };
            let slot = key_slot(config.pubsub_channel(channel.as_str()).as_bytes());
            let Some(owner) = map.primary(slot) else { continue };
            let Some(i) = primaries.iter().position(|p| p == owner) else { continue };
            if found[i].is_none() {
                found[i] = Some(channel);
                missing -= 1;
            }
        }
        primaries
            .iter()
            .zip(found)
            .filter_map(|(addr, channel)| Some(ShardChannel { shard: Some(addr.clone()), channel: channel? }))
            .collect()
    }
}
