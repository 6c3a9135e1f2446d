//! Publishing on a cluster: `SPUBLISH` to the primary serving the channel's slot, over one
//! pipelined [`Publisher`] per primary (the same connection, failure reporting and deadlines
//! as on a single Redis).
//!
//! A batch is split by primary and the parts go out concurrently, each in the order the batch
//! gave, so messages of one channel keep their order. A part refused with `MOVED` or `ASK`
//! (nothing of it ran), or that could not be sent, is routed again once, after the slot map
//! was read again: a slot that moved costs one more round trip, not an error. A primary that
//! is down fails only the part it owns; the other parts are published and counted as
//! confirmed in the error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, FutureExt, join_all};
use herald_protocol::ChannelName;
use tokio_util::sync::CancellationToken;

use super::slot::key_slot;
use super::topology::{SlotMap, Topology};
use crate::BrokerError;
use crate::redis::connect::Endpoint;
use crate::redis::publish::{Publisher, Trip, encode};
use crate::redis::sentinel::split_addr;
use crate::redis::{Refused, trip_error};

/// The publishing side of the cluster engine.
pub(crate) struct ClusterPublisher {
    topology: Arc<Topology>,
    endpoint: Endpoint,
    stop: CancellationToken,
    /// One publishing connection per primary, made on first use. Those of nodes that are no
    /// longer primaries are closed once a newer map is used, so there are never more than
    /// the map has primaries (plus those of one older map).
    shards: Mutex<Shards>,
}

#[derive(Default)]
struct Shards {
    /// The map generation `by_addr` was last pruned for.
    generation: u64,
    by_addr: HashMap<Arc<str>, (Arc<Publisher>, CancellationToken)>,
}

/// What one part of a batch came to: how many of its messages are known to be published, and
/// why the rest are not.
struct Part {
    confirmed: usize,
    error: Option<BrokerError>,
}

impl ClusterPublisher {
    pub(crate) fn new(topology: Arc<Topology>, endpoint: Endpoint, stop: CancellationToken) -> Self {
        Self { topology, endpoint, stop, shards: Mutex::default() }
    }

    /// The publishing connection of the primary `addr` of `map`.
    fn publisher(&self, map: &SlotMap, addr: &Arc<str>) -> Result<Arc<Publisher>, BrokerError> {
        let mut shards = self.shards.lock().expect("cluster publishers poisoned");
        if map.generation > shards.generation {
            shards.generation = map.generation;
            shards.by_addr.retain(|addr, (_, stop)| {
                let keep = map.primaries().contains(addr);
                if !keep {
                    stop.cancel();
                }
                keep
            });
        }
        if let Some((publisher, _)) = shards.by_addr.get(addr) {
            return Ok(publisher.clone());
        }
        let (host, port) = split_addr(addr).map_err(|e| BrokerError::unavailable("publish", e))?;
        let stop = self.stop.child_token();
        let publisher = Arc::new(Publisher::new(self.endpoint.at(&host, port), stop.clone()));
        shards.by_addr.insert(addr.clone(), (publisher.clone(), stop));
        Ok(publisher)
    }

    /// Publishes `batch`, each message to its channel's primary.
    pub(crate) async fn publish(
        &self,
        batch: &[(ChannelName, Bytes)],
        operation: &'static str,
    ) -> Result<(), BrokerError> {
        let config = self.endpoint.config();
        let keys: Vec<String> = batch.iter().map(|(c, _)| config.pubsub_channel(c.as_str())).collect();
        let map = self
            .topology
            .known_within(config.response_timeout)
            .await
            .map_err(|e| BrokerError::unavailable(operation, e))?;
        let all: Vec<usize> = (0..batch.len()).collect();
        let parts = self.route(batch, &keys, all, map, true, operation).await;
        let confirmed = parts.iter().map(|p| p.confirmed).sum();
        let mut errors: Vec<BrokerError> = parts.into_iter().filter_map(|p| p.error).collect();
        match errors.len() {
            0 => Ok(()),
            1 if confirmed == 0 => Err(errors.remove(0)),
            _ if confirmed == 0 && errors.iter().all(|e| matches!(e, BrokerError::Unavailable { .. })) => {
                Err(errors.remove(0))
            }
            _ => {
                let reason = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                Err(BrokerError::OutcomeUnknown { confirmed, reason })
            }
        }
    }

    /// Sends the messages `indices` of `batch`, grouped by the primary `map` names for them,
    /// the groups concurrently. `retry`: a group refused as misrouted, or not sent, is routed
    /// again once by a newer map.
    fn route<'a>(
        &'a self,
        batch: &'a [(ChannelName, Bytes)],
        keys: &'a [String],
        indices: Vec<usize>,
        map: Arc<SlotMap>,
        retry: bool,
        operation: &'static str,
    ) -> BoxFuture<'a, Vec<Part>> {
        async move {
            let mut groups: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
            let mut unserved = 0;
            for i in indices {
                let Some(addr) = map.primary(key_slot(keys[i].as_bytes())) else {
                    unserved += 1;
                    continue;
                };
                match groups.iter_mut().find(|(a, _)| a == addr) {
                    Some((_, group)) => group.push(i),
                    None => groups.push((addr.clone(), vec![i])),
                }
            }
            let sends = groups.into_iter().map(|(addr, group)| {
                let map = map.clone();
                async move { self.send(batch, keys, &addr, group, map, retry, operation).await }
            });
            let mut parts: Vec<Part> = join_all(sends).await.into_iter().flatten().collect();
            if unserved > 0 {
                let error =
                    BrokerError::unavailable(operation, "a channel's cluster slot is served by no primary");
                parts.push(Part { confirmed: 0, error: Some(error) });
            }
            parts
        }
        .boxed()
    }

    /// Sends one primary's messages in pipelines of at most `redis.publish_pipeline_bytes`.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        batch: &[(ChannelName, Bytes)],
        keys: &[String],
        addr: &Arc<str>,
        group: Vec<usize>,
        map: Arc<SlotMap>,
        retry: bool,
        operation: &'static str,
    ) -> Vec<Part> {
        let publisher = match self.publisher(&map, addr) {
            Ok(publisher) => publisher,
            Err(error) => return vec![Part { confirmed: 0, error: Some(error) }],
        };
        let limit = self.endpoint.config().publish_pipeline_bytes;
        let mut confirmed = 0;
        let mut rest = &group[..];
        while !rest.is_empty() {
            let mut bytes = BytesMut::new();
            let mut count = 0;
            for &i in rest {
                let payload = &batch[i].1;
                if count > 0 && bytes.len() + payload.len() > limit {
                    break;
                }
                encode(&mut bytes, &[b"SPUBLISH", keys[i].as_bytes(), payload]);
                count += 1;
            }
            let trip = publisher.round_trip(bytes.freeze(), count).await;
            let (stale, rerouted) = match &trip {
                Trip::Done => {
                    confirmed += count;
                    rest = &rest[count..];
                    continue;
                }
                // Nothing of this pipeline ran: it may go to wherever the slots are now.
                Trip::Rejected { ok: 0, message } if is_redirect(message) => (true, true),
                Trip::NotSent(_) => (true, true),
                Trip::Rejected { message, .. } => (is_redirect(message) || is_down(message), false),
                Trip::Unknown(_) => (true, false),
            };
            if stale {
                let limit = self.endpoint.config().response_timeout;
                match self.topology.refresh_within(map.generation, limit).await {
                    Ok(newer) if retry && rerouted => {
                        let mut parts = self.route(batch, keys, rest.to_vec(), newer, false, operation).await;
                        parts.push(Part { confirmed, error: None });
                        return parts;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reading the redis cluster slot map failed"),
                }
            }
            let error = match trip {
                Trip::Rejected { ok: 0, message } if confirmed == 0 => {
                    BrokerError::unavailable(operation, Refused { message })
                }
                trip => trip_error(operation, trip, confirmed),
            };
            let confirmed = match &error {
                BrokerError::OutcomeUnknown { confirmed, .. } => *confirmed,
                _ => confirmed,
            };
            return vec![Part { confirmed, error: Some(error) }];
        }
        vec![Part { confirmed, error: None }]
    }

    /// `PING`s every primary, for readiness: publishing works only if each one answers.
    pub(crate) async fn ping(&self) -> Result<(), BrokerError> {
        let limit = self.endpoint.config().response_timeout;
        let map = self.topology.known_within(limit).await.map_err(|e| BrokerError::unavailable("ping", e))?;
        let pings = map.primaries().iter().map(|addr| {
            let map = map.clone();
            async move {
                let publisher = self.publisher(&map, addr)?;
                let mut bytes = BytesMut::new();
                encode(&mut bytes, &[b"PING"]);
                match publisher.round_trip(bytes.freeze(), 1).await {
                    Trip::Done => Ok(()),
                    Trip::NotSent(reason) => Err(BrokerError::unavailable("ping", reason)),
                    Trip::Unknown(reason) => Err(BrokerError::unavailable("ping", reason)),
                    Trip::Rejected { message, .. } => {
                        Err(BrokerError::unavailable("ping", Refused { message }))
                    }
                }
            }
        });
        join_all(pings).await.into_iter().collect()
    }
}

/// Whether Redis's error sends the command to another node: the slot moved (`MOVED`) or is
/// moving (`ASK`).
pub(crate) fn is_redirect(message: &str) -> bool {
    message.starts_with("MOVED ") || message.starts_with("ASK ")
}

/// Whether Redis's error says the cluster cannot serve the slot now (a failover under way).
fn is_down(message: &str) -> bool {
    message.starts_with("CLUSTERDOWN") || message.starts_with("TRYAGAIN")
}
