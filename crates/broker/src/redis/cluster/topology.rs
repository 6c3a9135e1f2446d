//! The cluster's slot map: which primary serves each slot, read with `CLUSTER SLOTS` from
//! any node that answers, and read again when something shows it changed (a `MOVED` reply,
//! a `sunsubscribe` the engine did not ask for, a lost connection).
//!
//! Refreshes are shared and rate-limited: callers that saw the map of generation `g` fail ask
//! for a map newer than `g`; if one was read meanwhile they get it at once, otherwise one of
//! them reads it, at most once per [`MIN_REFRESH_INTERVAL`], and the others wait for that
//! read. A failover storm therefore costs each process a few `CLUSTER SLOTS`, not one per
//! failed publish.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::slot::SLOTS;
use crate::redis::connect::{ConnectError, Endpoint};
use crate::redis::sentinel::split_addr;

/// Least time between two reads of the slot map.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(200);

/// Which primary serves each slot, at one moment.
pub(crate) struct SlotMap {
    /// Counts the maps read; 0 is the empty map before the first read.
    pub(crate) generation: u64,
    /// Slot -> index into `primaries`; `u16::MAX` for a slot no primary serves.
    owners: Vec<u16>,
    /// `host:port` of each primary.
    primaries: Vec<Arc<str>>,
    /// Every node named, primaries and replicas, to read the next map from.
    nodes: Vec<Arc<str>>,
}

impl SlotMap {
    fn empty() -> Self {
        Self {
            generation: 0,
            owners: vec![u16::MAX; SLOTS as usize],
            primaries: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// The primary serving `slot`, as `host:port`.
    pub(crate) fn primary(&self, slot: u16) -> Option<&Arc<str>> {
        self.primaries.get(usize::from(*self.owners.get(usize::from(slot))?))
    }

    /// Every primary serving a slot.
    pub(crate) fn primaries(&self) -> &[Arc<str>] {
        &self.primaries
    }

    /// Whether a map was read yet.
    pub(crate) fn is_known(&self) -> bool {
        self.generation > 0
    }

    /// Builds a map from a `CLUSTER SLOTS` reply given by `from` (whose host stands in for
    /// nodes announced without one).
    fn parse(reply: Value, from: &str, generation: u64) -> Option<Self> {
        let from_host = from.rsplit_once(':').map_or(from, |(h, _)| h);
        let node_addr = |node: &Value| -> Option<Arc<str>> {
            let Value::Array(fields) = node else { return None };
            let host = match fields.first()? {
                Value::BulkString(h) if !h.is_empty() && h != b"?" => String::from_utf8(h.clone()).ok()?,
                _ => from_host.to_string(),
            };
            let Value::Int(port) = fields.get(1)? else { return None };
            Some(format!("{host}:{port}").into())
        };
        let Value::Array(ranges) = reply else { return None };
        let mut map = Self { generation, ..Self::empty() };
        for range in ranges {
            let Value::Array(items) = range else { return None };
            let [Value::Int(lo), Value::Int(hi), primary, replicas @ ..] = items.as_slice() else {
                return None;
            };
            let primary = node_addr(primary)?;
            let index = match map.primaries.iter().position(|p| *p == primary) {
                Some(i) => i,
                None => {
                    map.primaries.push(primary.clone());
                    map.primaries.len() - 1
                }
            };
            let (lo, hi) = (usize::try_from(*lo).ok()?, usize::try_from(*hi).ok()?);
            for owner in map.owners.get_mut(lo..=hi)? {
                *owner = u16::try_from(index).ok()?;
            }
            for node in std::iter::once(primary).chain(replicas.iter().filter_map(node_addr)) {
                if !map.nodes.contains(&node) {
                    map.nodes.push(node);
                }
            }
        }
        Some(map)
    }
}

/// Why the slot map could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// No node answered `CLUSTER SLOTS`; this is the last one's failure.
    #[error("no cluster node named the slot map; {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: ConnectError,
    },
    /// No map could be read within the time the caller had.
    #[error("the cluster slot map could not be read in time")]
    TimedOut,
    /// A node answered with something that is not a slot map.
    #[error("cluster node {0} sent an unreadable CLUSTER SLOTS reply")]
    Unreadable(String),
}

/// The slot map of one process, shared by its publishing side and every node's subscriber.
pub(crate) struct Topology {
    endpoint: Endpoint,
    /// The current map; subscribers watch it to move their channels.
    map: watch::Sender<Arc<SlotMap>>,
    /// Held by the one caller reading a map; holds when the last read started.
    reading: tokio::sync::Mutex<Option<Instant>>,
}

impl Topology {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self { endpoint, map: watch::Sender::new(Arc::new(SlotMap::empty())), reading: Default::default() }
    }

    /// The map now, without reading one.
    pub(crate) fn current(&self) -> Arc<SlotMap> {
        self.map.borrow().clone()
    }

    /// Follows the map's changes.
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<SlotMap>> {
        self.map.subscribe()
    }

    /// The current map, read first if none was yet.
    pub(crate) async fn known(&self) -> Result<Arc<SlotMap>, TopologyError> {
        let map = self.current();
        if map.is_known() { Ok(map) } else { self.refresh(map.generation).await }
    }

    /// [`Topology::known`], or [`TopologyError::TimedOut`] after `limit`: a publish waits for
    /// a map no longer than for Redis's answer.
    pub(crate) async fn known_within(&self, limit: Duration) -> Result<Arc<SlotMap>, TopologyError> {
        tokio::time::timeout(limit, self.known()).await.unwrap_or(Err(TopologyError::TimedOut))
    }

    /// [`Topology::refresh`] bounded by `limit`.
    pub(crate) async fn refresh_within(
        &self,
        seen: u64,
        limit: Duration,
    ) -> Result<Arc<SlotMap>, TopologyError> {
        tokio::time::timeout(limit, self.refresh(seen)).await.unwrap_or(Err(TopologyError::TimedOut))
    }

    /// A map newer than generation `seen`: one read meanwhile, or a new read (rate-limited).
    pub(crate) async fn refresh(&self, seen: u64) -> Result<Arc<SlotMap>, TopologyError> {
        let mut last = self.reading.lock().await;
        let map = self.current();
        if map.generation > seen {
            return Ok(map);
        }
        if let Some(at) = *last {
            tokio::time::sleep_until(at + MIN_REFRESH_INTERVAL).await;
        }
        *last = Some(Instant::now());
        let fresh = Arc::new(self.read(&map).await?);
        tracing::debug!(generation = fresh.generation, primaries = ?fresh.primaries, "redis cluster slot map");
        self.map.send_replace(fresh.clone());
        Ok(fresh)
    }

    /// Asks the nodes of the last map, then the configured ones, until one answers.
    async fn read(&self, last: &SlotMap) -> Result<SlotMap, TopologyError> {
        let config = self.endpoint.config();
        let configured = config.cluster_nodes.iter().map(|n| Arc::<str>::from(n.as_str()));
        let mut candidates: Vec<Arc<str>> = last.nodes.to_vec();
        for node in configured {
            if !candidates.contains(&node) {
                candidates.push(node);
            }
        }
        let mut failure = None;
        for addr in candidates {
            let Ok((host, port)) = split_addr(&addr) else { continue };
            let ask = async {
                let mut conn = self.endpoint.at(&host, port).open_multiplexed().await?;
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut conn)
                    .await
                    .map_err(|source| ConnectError::Client { addr: addr.to_string(), source })
            };
            let reply =
                match tokio::time::timeout(config.connect_timeout + config.response_timeout, ask).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(e)) => {
                        failure = Some(TopologyError::Unreachable { addr: addr.to_string(), source: e });
                        continue;
                    }
                    Err(_) => {
                        let source = ConnectError::Timeout;
                        failure = Some(TopologyError::Unreachable { addr: addr.to_string(), source });
                        continue;
                    }
                };
            match SlotMap::parse(reply, &addr, last.generation + 1) {
                // A node that lost touch with the cluster may serve no slot; ask another.
                Some(map) if !map.primaries.is_empty() => return Ok(map),
                _ => failure = Some(TopologyError::Unreadable(addr.to_string())),
            }
        }
        Err(failure.unwrap_or_else(|| TopologyError::Unreadable("(no node configured)".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.into()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn a_slots_reply_becomes_a_map_of_primaries() {
        let range = |lo, hi, p: Value, r: Value| Value::Array(vec![Value::Int(lo), Value::Int(hi), p, r]);
        let reply = Value::Array(vec![
            range(0, 5460, node("10.0.0.1", 7000), node("10.0.0.4", 7003)),
            range(5461, 10922, node("", 7001), node("10.0.0.5", 7004)),
            range(10923, 16000, node("10.0.0.3", 7002), node("10.0.0.6", 7005)),
        ]);
        let map = SlotMap::parse(reply, "10.0.0.9:7009", 3).unwrap();
        assert_eq!(map.primary(0).map(|p| &**p), Some("10.0.0.1:7000"));
        assert_eq!(map.primary(5461).map(|p| &**p), Some("10.0.0.9:7001"), "no host: the one asked");
        assert_eq!(map.primary(16000).map(|p| &**p), Some("10.0.0.3:7002"));
        assert_eq!(map.primary(16001), None, "a slot nobody serves");
        assert_eq!((map.primaries().len(), map.nodes.len(), map.generation), (3, 6, 3));
    }
}
