//! The in-process engine: publishing calls each subscribed node's [`Delivery`] directly.
//!
//! It backs the standalone mode, where gateway and publisher-api share one process. Several
//! nodes may attach to one [`MemoryBroker`] (its clones share the same bus), which is how the
//! conformance suite checks cross-node delivery without Redis.
//!
//! Pattern subscriptions are matched here, on every publish, against each pattern some node
//! holds: a publish costs one match per (pattern, node), which the gateway bounds
//! (`gateway.max_node_patterns`).
//!
//! Channel histories live in [`history`], behind one lock that a publish with history holds
//! until it has delivered, so every node sees a channel's offsets in order.

mod history;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::{self, FutureExt};
use herald_protocol::support::shrink;
use herald_protocol::{ChannelName, ChannelPattern};
use tokio::sync::watch;

use self::history::{Histories, Published};
use crate::history::{
    HistoryFilter, HistoryOptions, HistoryResult, InboxStatus, PublishResult, StreamPosition, check_filter,
    check_publish, check_ttl,
};
use crate::{Broker, BrokerError, Confirmation, Delivery, Subscriber};

/// The in-memory engine. Cheap to clone; clones share one bus.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    bus: Arc<Bus>,
}

struct Bus {
    /// For each channel, the nodes subscribed to it. Entries are removed when their last node
    /// leaves, so the map shrinks with the channels actually in use. The lists are replaced,
    /// never mutated, so a publish clones one `Arc` and delivers without holding the lock (a
    /// delivery takes the hub's locks, and the hub subscribes while holding them).
    channels: RwLock<HashMap<ChannelName, Arc<[Arc<Node>]>>>,
    /// Every (pattern, node) subscription. Replaced, never mutated, like the lists of
    /// `channels`, so a publish matches and delivers without holding the lock.
    patterns: RwLock<PatternList>,
    next_node: Mutex<u64>,
    /// Channel histories. Taken before `channels` when both are needed, never the reverse.
    histories: Mutex<Histories>,
}

/// Every (pattern, node) subscription of a bus.
type PatternList = Arc<[(ChannelPattern, Arc<Node>)]>;

struct Node {
    id: u64,
    delivery: Arc<dyn Delivery>,
    /// Subscription counts of this node (see [`Subscriber`]).
    counts: Mutex<HashMap<ChannelName, u32>>,
    /// Pattern subscription counts of this node.
    pattern_counts: Mutex<HashMap<ChannelPattern, u32>>,
    status: watch::Sender<bool>,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self {
            channels: RwLock::default(),
            patterns: RwLock::new(Arc::new([])),
            next_node: Mutex::default(),
            histories: Mutex::default(),
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, channel: &ChannelName, payload: Bytes) -> Result<(), BrokerError> {
        let nodes = self.bus.channels.read().expect("bus lock poisoned").get(channel).cloned();
        for node in nodes.iter().flat_map(|n| n.iter()) {
            node.delivery.deliver(channel.as_str(), payload.clone());
            node.delivery.flush();
        }
        self.bus.deliver_patterns(channel, &payload);
        Ok(())
    }

    async fn publish_batch(&self, batch: &[(ChannelName, Bytes)]) -> Result<(), BrokerError> {
        for (channel, payload) in batch {
            self.publish(channel, payload.clone()).await?;
        }
        Ok(())
    }

    async fn publish_with_history(
        &self,
        channel: &ChannelName,
        message_id: &str,
        payload: Bytes,
        options: &HistoryOptions,
    ) -> Result<PublishResult, BrokerError> {
        check_publish(&payload, options)?;
        let mut histories = self.bus.histories.lock().expect("history lock poisoned");
        let (result, frame) = match histories.publish(channel, message_id, &payload, options) {
            Published::Duplicate(result) => return Ok(result),
            Published::New { result, frame } => (result, frame),
        };
        let nodes = self.bus.channels.read().expect("bus lock poisoned").get(channel).cloned();
        for node in nodes.iter().flat_map(|n| n.iter()) {
            node.delivery.deliver_at(channel.as_str(), frame.clone(), result.offset, &result.epoch);
            node.delivery.flush();
        }
        self.bus.deliver_patterns(channel, &frame);
        drop(histories);
        Ok(result)
    }

    async fn history(
        &self,
        channel: &ChannelName,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, BrokerError> {
        check_filter(filter)?;
        self.bus.histories.lock().expect("history lock poisoned").read(channel, filter)
    }

    async fn ack(
        &self,
        channel: &ChannelName,
        position: &StreamPosition,
        ttl: Duration,
    ) -> Result<StreamPosition, BrokerError> {
        check_ttl(ttl)?;
        self.bus.histories.lock().expect("history lock poisoned").ack(channel, position, ttl)
    }

    async fn inbox(&self, channel: &ChannelName, ttl: Duration) -> Result<InboxStatus, BrokerError> {
        check_ttl(ttl)?;
        Ok(self.bus.histories.lock().expect("history lock poisoned").inbox(channel, ttl))
    }

    fn subscriber(&self, delivery: Arc<dyn Delivery>) -> Arc<dyn Subscriber> {
        let id = {
            let mut next = self.bus.next_node.lock().expect("bus lock poisoned");
            *next += 1;
            *next
        };
        Arc::new(MemorySubscriber {
            bus: self.bus.clone(),
            node: Arc::new(Node {
                id,
                delivery,
                counts: Mutex::default(),
                pattern_counts: Mutex::default(),
                status: watch::Sender::new(true),
            }),
        })
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

impl Bus {
    /// Hands `payload` of `channel` to every node holding a pattern it matches.
    fn deliver_patterns(&self, channel: &ChannelName, payload: &Bytes) {
        let patterns = self.patterns.read().expect("bus lock poisoned").clone();
        for (pattern, node) in patterns.iter().filter(|(p, _)| p.matches(channel.as_str())) {
            node.delivery.deliver_pattern(pattern.as_str(), channel.as_str(), payload.clone());
            node.delivery.flush();
        }
    }

    /// Adds or (`add` false) removes node `node`'s subscription to `pattern`.
    fn set_pattern(&self, pattern: &ChannelPattern, node: &Arc<Node>, add: bool) {
        let mut patterns = self.patterns.write().expect("bus lock poisoned");
        let rest = patterns.iter().filter(|(p, n)| !(n.id == node.id && p == pattern)).cloned();
        *patterns =
            if add { rest.chain([(pattern.clone(), node.clone())]).collect() } else { rest.collect() };
    }

    /// Removes node `id` from `channel`'s list, and the channel once nobody is left.
    fn detach(&self, channel: &ChannelName, id: u64) {
        let mut channels = self.channels.write().expect("bus lock poisoned");
        let Some(nodes) = channels.get_mut(channel) else { return };
        let rest: Arc<[Arc<Node>]> = nodes.iter().filter(|n| n.id != id).cloned().collect();
        if rest.is_empty() {
            channels.remove(channel);
            shrink(&mut channels);
        } else {
            *nodes = rest;
        }
    }
}

struct MemorySubscriber {
    bus: Arc<Bus>,
    node: Arc<Node>,
}

impl Subscriber for MemorySubscriber {
    fn subscribe(&self, channel: &ChannelName) -> Confirmation {
        let mut counts = self.node.counts.lock().expect("node lock poisoned");
        let count = counts.entry(channel.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            let mut channels = self.bus.channels.write().expect("bus lock poisoned");
            let nodes = channels.entry(channel.clone()).or_insert_with(|| Arc::new([]));
            *nodes = nodes.iter().cloned().chain([self.node.clone()]).collect();
        }
        Confirmation::confirmed()
    }

    fn confirmation(&self, channel: &ChannelName) -> Confirmation {
        if self.node.counts.lock().expect("node lock poisoned").contains_key(channel) {
            Confirmation::confirmed()
        } else {
            Confirmation::pending(future::ready(Err(BrokerError::SubscribeTimeout(channel.clone()))).boxed())
        }
    }

    fn unsubscribe(&self, channel: &ChannelName) {
        let mut counts = self.node.counts.lock().expect("node lock poisoned");
        let Some(count) = counts.get_mut(channel) else { return };
        *count -= 1;
        if *count > 0 {
            return;
        }
        counts.remove(channel);
        shrink(&mut counts);
        self.bus.detach(channel, self.node.id);
    }

    fn subscribe_pattern(&self, pattern: &ChannelPattern) -> Confirmation {
        let mut counts = self.node.pattern_counts.lock().expect("node lock poisoned");
        let count = counts.entry(pattern.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.bus.set_pattern(pattern, &self.node, true);
        }
        Confirmation::confirmed()
    }

    fn pattern_confirmation(&self, pattern: &ChannelPattern) -> Confirmation {
        if self.node.pattern_counts.lock().expect("node lock poisoned").contains_key(pattern) {
            Confirmation::confirmed()
        } else {
            let error = BrokerError::PatternSubscribeTimeout(pattern.clone());
            Confirmation::pending(future::ready(Err(error)).boxed())
        }
    }

    fn unsubscribe_pattern(&self, pattern: &ChannelPattern) {
        let mut counts = self.node.pattern_counts.lock().expect("node lock poisoned");
        let Some(count) = counts.get_mut(pattern) else { return };
        *count -= 1;
        if *count > 0 {
            return;
        }
        counts.remove(pattern);
        shrink(&mut counts);
        self.bus.set_pattern(pattern, &self.node, false);
    }

    fn active_patterns(&self) -> usize {
        self.node.pattern_counts.lock().expect("node lock poisoned").len()
    }

    fn status(&self) -> watch::Receiver<bool> {
        self.node.status.subscribe()
    }

    fn active_channels(&self) -> usize {
        self.node.counts.lock().expect("node lock poisoned").len()
    }

    fn close(&self) {
        let channels: Vec<ChannelName> =
            self.node.counts.lock().expect("node lock poisoned").keys().cloned().collect();
        for channel in &channels {
            self.bus.detach(channel, self.node.id);
        }
        self.node.counts.lock().expect("node lock poisoned").clear();
        let patterns: Vec<ChannelPattern> =
            self.node.pattern_counts.lock().expect("node lock poisoned").drain().map(|(p, _)| p).collect();
        for pattern in &patterns {
            self.bus.set_pattern(pattern, &self.node, false);
        }
        self.node.status.send_replace(false);
    }
}
