//! A gateway node's subscriptions on a cluster: one sharded Pub/Sub connection per primary
//! the node has channels on, each the same [`NodeTask`] (and the same reconciliation of
//! [`super::super::channels`]) as on a single Redis, sending `SSUBSCRIBE`s instead.
//!
//! The handle ([`ClusterSubscriber`]) places each channel's interest in the state of the
//! shard the current slot map names for it. The supervisor ([`ClusterSubscriber::run`])
//! follows the map: when it changes, it moves the interest (and waiting subscribe calls) of
//! every channel whose slot has another primary now to that primary's shard, which
//! subscribes it; it starts a shard's task when the shard gets its first channel, and stops
//! the shards of nodes that are no longer primaries. The map is read again when a shard's
//! connection breaks, when Redis drops a channel it was not asked to (the `sunsubscribe`
//! Redis sends when a slot leaves a node), and every [`RETRY`] while the node is not live.
//!
//! The node's status is live when a map is known and every shard's connection is live. A
//! channel that moved is unsubscribed until its new shard confirms it, so status drops while
//! that happens, and the gateway repairs the history of its channels when it comes back, as
//! after a reconnect on a single Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_protocol::{ChannelName, ChannelPattern};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::slot::key_slot;
use super::topology::{SlotMap, Topology};
use crate::redis::RedisConfig;
use crate::redis::connect::Endpoint;
use crate::redis::node::{NodeShared, NodeTask, ShardLink, wait_confirmed};
use crate::redis::sentinel::split_addr;
use crate::{BrokerError, Confirmation, Delivery, Subscriber};

/// How often the map is read again while the node is not live (a primary down, a failover
/// under way). Reads are rate-limited by the topology as well.
const RETRY: Duration = Duration::from_millis(500);

/// How often the supervisor looks whether the shards settled after channels moved.
const SETTLE_CHECK: Duration = Duration::from_millis(10);

/// One node's subscriptions on a cluster. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ClusterSubscriber {
    node: Arc<ClusterNode>,
}

struct ClusterNode {
    config: RedisConfig,
    endpoint: Endpoint,
    topology: Arc<Topology>,
    delivery: Arc<dyn Delivery>,
    routes: Mutex<Routes>,
    /// Shared by every shard: wakes the supervisor, asks it to read the map again.
    link: ShardLink,
    status: watch::Sender<bool>,
    stop: CancellationToken,
    /// Times channels moved to another shard, counted as reconnects for metrics.
    moves: AtomicU64,
    /// Set when channels moved to another shard, until every shard settled: the node is not
    /// live meanwhile, so the gateway repairs what the moved channels missed.
    resyncing: AtomicBool,
}

/// Where each channel's interest lives.
struct Routes {
    /// The map the channels are placed by.
    map: Arc<SlotMap>,
    /// The shard of each primary with channels (or that had some under this map).
    shards: HashMap<Arc<str>, Shard>,
    /// Channels wanted while no map was known, or whose slot no primary serves: they have no
    /// connection, and their subscribe calls wait.
    unplaced: Arc<NodeShared>,
}

struct Shard {
    shared: Arc<NodeShared>,
    /// Whether its task runs yet; the supervisor starts it.
    started: bool,
}

impl ClusterSubscriber {
    pub(crate) fn new(
        config: RedisConfig,
        endpoint: Endpoint,
        topology: Arc<Topology>,
        delivery: Arc<dyn Delivery>,
        stop: CancellationToken,
    ) -> Self {
        let link = ShardLink { wake: Arc::new(Notify::new()), refresh: Arc::new(AtomicBool::new(false)) };
        let unplaced = NodeShared::new(stop.child_token(), config.subscribe_timeout);
        let routes = Routes { map: topology.current(), shards: HashMap::new(), unplaced };
        let node = ClusterNode {
            config,
            endpoint,
            topology,
            delivery,
            routes: Mutex::new(routes),
            link,
            status: watch::Sender::new(false),
            stop,
            moves: AtomicU64::new(0),
            resyncing: AtomicBool::new(false),
        };
        Self { node: Arc::new(node) }
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.node.routes.lock().expect("cluster routes poisoned")
    }

    /// The state `channel`'s interest lives in, made if it is a new shard.
    fn shard_of(&self, routes: &mut Routes, key: &str) -> Arc<NodeShared> {
        let Some(addr) = routes.map.primary(key_slot(key.as_bytes())).cloned() else {
            return routes.unplaced.clone();
        };
        let node = &self.node;
        let shard = routes.shards.entry(addr).or_insert_with(|| {
            let shared = NodeShared::linked(
                node.stop.child_token(),
                node.config.subscribe_timeout,
                Some(node.link.clone()),
            );
            // The supervisor starts its task.
            node.link.wake.notify_one();
            Shard { shared, started: false }
        });
        shard.shared.clone()
    }

    /// Runs the supervisor and every shard's task until the node is closed.
    pub(crate) async fn run(self) {
        let node = self.node.clone();
        let tasks = TaskTracker::new();
        let mut maps = node.topology.watch();
        loop {
            let seen = self.routes().map.generation;
            if (node.link.refresh.swap(false, Ordering::Relaxed) || seen == 0)
                && let Err(e) = node.topology.refresh(seen).await
            {
                tracing::warn!(error = %e, "reading the redis cluster slot map failed");
            }
            self.place(&tasks);
            let live = self.update_status();
            let resyncing = node.resyncing.load(Ordering::Relaxed);
            tokio::select! {
                _ = node.stop.cancelled() => break,
                _ = node.link.wake.notified() => {}
                _ = maps.changed() => {}
                // Shards do not report their confirmations; look again soon.
                _ = tokio::time::sleep(SETTLE_CHECK), if resyncing => {}
                _ = tokio::time::sleep(RETRY), if !live && !resyncing => {
                    node.link.refresh.store(true, Ordering::Relaxed);
                }
            }
        }
        tasks.close();
        tasks.wait().await;
        node.status.send_replace(false);
    }

    /// Moves every channel to the shard the current map names for it, starts the tasks of
    /// new shards and stops those of nodes that are no longer primaries.
    fn place(&self, tasks: &TaskTracker) {
        let node = &self.node;
        let map = node.topology.current();
        let mut routes = self.routes();
        if map.generation != routes.map.generation {
            routes.map = map.clone();
            let mut moved = Vec::new();
            for (addr, shard) in &routes.shards {
                let owner = |key: &str| map.primary(key_slot(key.as_bytes()));
                moved.extend(shard.shared.lock().release(|key| owner(key) != Some(addr)));
            }
            moved.extend(
                routes.unplaced.lock().release(|key| map.primary(key_slot(key.as_bytes())).is_some()),
            );
            if !moved.is_empty() {
                tracing::info!(
                    channels = moved.len(),
                    "redis cluster slots moved: resubscribing their channels"
                );
                node.moves.fetch_add(1, Ordering::Relaxed);
                node.resyncing.store(true, Ordering::Relaxed);
                node.status.send_replace(false);
            }
            for handover in moved {
                let shard = self.shard_of(&mut routes, handover.key());
                if shard.lock().adopt(handover) {
                    shard.wake();
                }
            }
            routes.shards.retain(|addr, shard| {
                let keep = map.primaries().contains(addr);
                if !keep {
                    shard.shared.stop();
                }
                keep
            });
        }
        for (addr, shard) in routes.shards.iter_mut().filter(|(_, s)| !s.started) {
            let Ok((host, port)) = split_addr(addr) else { continue };
            shard.started = true;
            let task = NodeTask {
                config: node.config.clone(),
                endpoint: node.endpoint.at(&host, port),
                shared: shard.shared.clone(),
                delivery: node.delivery.clone(),
            };
            tasks.spawn(task.run());
        }
    }

    /// Live when a map is known, no channel waits for a shard, every shard is live, and
    /// after channels moved, every shard has settled its commands.
    fn update_status(&self) -> bool {
        let routes = self.routes();
        let mut live = routes.map.is_known()
            && !routes.unplaced.lock().has_channels()
            && routes.shards.values().all(|s| s.shared.is_live());
        if live && self.node.resyncing.load(Ordering::Relaxed) {
            live = routes.shards.values().all(|s| s.shared.lock().is_settled());
            self.node.resyncing.store(!live, Ordering::Relaxed);
        }
        drop(routes);
        self.node.status.send_if_modified(|now| std::mem::replace(now, live) != live);
        live
    }
}

impl Subscriber for ClusterSubscriber {
    fn subscribe(&self, channel: &ChannelName) -> Confirmation {
        let key = self.node.config.pubsub_channel(channel.as_str());
        let (tx, rx) = oneshot::channel();
        let mut routes = self.routes();
        let shard = self.shard_of(&mut routes, &key);
        let confirmed = shard.lock().want(&key, tx);
        drop(routes);
        if confirmed {
            return Confirmation::confirmed();
        }
        shard.wake();
        wait_confirmed(self.node.config.subscribe_timeout, channel, rx)
    }

    fn confirmation(&self, channel: &ChannelName) -> Confirmation {
        let key = self.node.config.pubsub_channel(channel.as_str());
        let (tx, rx) = oneshot::channel();
        let mut routes = self.routes();
        let shard = self.shard_of(&mut routes, &key);
        let confirmed = shard.lock().wait(&key, tx);
        drop(routes);
        if confirmed {
            return Confirmation::confirmed();
        }
        wait_confirmed(self.node.config.subscribe_timeout, channel, rx)
    }

    fn unsubscribe(&self, channel: &ChannelName) {
        let key = self.node.config.pubsub_channel(channel.as_str());
        let mut routes = self.routes();
        let shard = self.shard_of(&mut routes, &key);
        let dirty = shard.lock().unwant(&key);
        drop(routes);
        if dirty {
            shard.wake();
        }
    }

    /// Refused at once: sharded Pub/Sub has no pattern subscriptions (no `PSSUBSCRIBE`),
    /// and a shard's connection only sees the channels of its own slots. The gateway refuses
    /// `patterns = true` on a cluster at start-up, so this is reached only without it.
    fn subscribe_pattern(&self, pattern: &ChannelPattern) -> Confirmation {
        let _ = pattern;
        let reason = "sharded Pub/Sub on a Redis Cluster has no pattern subscriptions";
        Confirmation::pending(Box::pin(std::future::ready(Err(BrokerError::PatternsUnsupported(reason)))))
    }

    fn status(&self) -> watch::Receiver<bool> {
        self.node.status.subscribe()
    }

    fn down_shards(&self) -> Vec<Arc<str>> {
        let routes = self.routes();
        let mut down: Vec<Arc<str>> =
            routes.shards.iter().filter(|(_, s)| !s.shared.is_live()).map(|(addr, _)| addr.clone()).collect();
        down.sort();
        down
    }

    fn active_channels(&self) -> usize {
        self.routes().shards.values().map(|s| s.shared.lock().active).sum()
    }

    fn reconnects(&self) -> u64 {
        let shards: u64 = self.routes().shards.values().map(|s| s.shared.reconnects()).sum();
        shards + self.node.moves.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.node.stop.cancel();
    }
}
