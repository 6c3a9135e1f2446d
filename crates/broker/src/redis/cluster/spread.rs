//! Hot channels spread over the primaries.
//!
//! On a cluster a channel lives on the one primary serving its slot, so a channel every
//! gateway subscribes and many backends publish to (`broadcast`) would load one primary with
//! all of its traffic however many there are. A channel of `redis.spread_channels` is
//! therefore published to one of `redis.spread_width` *parts*, `herald:spread.<channel>.<n>`,
//! in turn, and the parts' names hash to different slots, so they spread over the primaries
//! (with 16 parts and 3 primaries, each primary serves some; which ones follows from the slot
//! map). Every node subscribes all the parts, and the channel itself, and hands the parts'
//! messages on as the channel's.
//!
//! - Publishes with history (`publish_with_history`) keep going to the channel itself: a
//!   history is one stream on one primary, and its subscribers see its positions in order.
//!   That is why nodes subscribe the channel as well as its parts.
//! - Order: messages published to a spread channel through different parts may arrive in
//!   another order than they were published in, as messages of different channels may. Set
//!   `redis.spread_channels = []` for a channel whose order matters more than its load.
//! - The parts are in the reserved `herald` namespace: clients can neither subscribe to
//!   them nor publish into them.
//!
//! On a single Redis, Sentinel or in memory nothing is spread: one server carries every
//! channel anyway.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::future::try_join_all;
use herald_protocol::ChannelName;
use tokio::sync::watch;

use crate::redis::RedisConfig;
use crate::redis::config::{spread_channel_of, spread_part};
use crate::{Confirmation, Delivery, Subscriber};

/// The spread channels of an engine and their parts.
pub(crate) struct Spread {
    parts: HashMap<ChannelName, Parts>,
}

struct Parts {
    names: Arc<[ChannelName]>,
    /// The part the next publish goes to (modulo their number).
    next: AtomicUsize,
}

impl Spread {
    /// The spread channels of `config` (checked by [`RedisConfig::validate`]); `None` when
    /// nothing is spread (not a cluster, no channel listed, or a width of 1).
    pub(crate) fn new(config: &RedisConfig) -> Option<Arc<Self>> {
        let parse = |name: &str| ChannelName::parse(name).expect("checked by RedisConfig::validate");
        let parts: HashMap<ChannelName, Parts> = (config.spread())
            .map(|name| {
                let names = (0..config.spread_width).map(|n| parse(&spread_part(name, n))).collect();
                (parse(name), Parts { names, next: AtomicUsize::new(0) })
            })
            .collect();
        (!parts.is_empty()).then(|| Arc::new(Self { parts }))
    }

    /// Where a message of `channel` is published: the next of its parts in turn, or the
    /// channel itself when it is not spread.
    pub(crate) fn publish_target<'a>(&'a self, channel: &'a ChannelName) -> &'a ChannelName {
        match self.parts.get(channel) {
            Some(parts) => &parts.names[parts.next.fetch_add(1, Ordering::Relaxed) % parts.names.len()],
            None => channel,
        }
    }

    /// `batch` with the messages of spread channels sent to their parts; borrowed as it is
    /// when it has none.
    pub(crate) fn publish_batch<'a>(
        &self,
        batch: &'a [(ChannelName, Bytes)],
    ) -> std::borrow::Cow<'a, [(ChannelName, Bytes)]> {
        if !batch.iter().any(|(channel, _)| self.parts.contains_key(channel)) {
            return batch.into();
        }
        let spread =
            batch.iter().map(|(channel, payload)| (self.publish_target(channel).clone(), payload.clone()));
        spread.collect::<Vec<_>>().into()
    }

    /// `subscriber` subscribing the parts of spread channels with them.
    pub(crate) fn subscriber(self: &Arc<Self>, subscriber: Arc<dyn Subscriber>) -> Arc<dyn Subscriber> {
        Arc::new(SpreadSubscriber { inner: subscriber, spread: self.clone() })
    }

    /// `delivery` receiving the parts' messages as their channels'.
    pub(crate) fn delivery(delivery: Arc<dyn Delivery>) -> Arc<dyn Delivery> {
        Arc::new(SpreadDelivery(delivery))
    }
}

/// Hands the messages of parts on as their channel's.
struct SpreadDelivery(Arc<dyn Delivery>);

impl Delivery for SpreadDelivery {
    fn deliver(&self, channel: &str, payload: Bytes) {
        self.0.deliver(spread_channel_of(channel).unwrap_or(channel), payload);
    }

    fn deliver_at(&self, channel: &str, payload: Bytes, offset: u64, epoch: &str) {
        // Parts carry no history positions; only the channel itself does.
        self.0.deliver_at(channel, payload, offset, epoch);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Subscribes a spread channel's parts along with it; every other channel as it is.
struct SpreadSubscriber {
    inner: Arc<dyn Subscriber>,
    spread: Arc<Spread>,
}

impl SpreadSubscriber {
    /// The confirmations of `channel` and its parts, as one.
    fn all(&self, channel: &ChannelName, each: impl Fn(&ChannelName) -> Confirmation) -> Confirmation {
        let Some(parts) = self.spread.parts.get(channel) else {
            return each(channel);
        };
        let waits: Vec<Confirmation> = std::iter::once(channel).chain(parts.names.iter()).map(each).collect();
        if waits.iter().all(Confirmation::is_confirmed) {
            return Confirmation::confirmed();
        }
        Confirmation::pending(Box::pin(async move { try_join_all(waits).await.map(drop) }))
    }
}

impl Subscriber for SpreadSubscriber {
    fn subscribe(&self, channel: &ChannelName) -> Confirmation {
        self.all(channel, |c| self.inner.subscribe(c))
    }

    fn confirmation(&self, channel: &ChannelName) -> Confirmation {
        self.all(channel, |c| self.inner.confirmation(c))
    }

    fn unsubscribe(&self, channel: &ChannelName) {
        self.inner.unsubscribe(channel);
        if let Some(parts) = self.spread.parts.get(channel) {
            parts.names.iter().for_each(|part| self.inner.unsubscribe(part));
        }
    }

    fn status(&self) -> watch::Receiver<bool> {
        self.inner.status()
    }

    fn down_shards(&self) -> Vec<Arc<str>> {
        self.inner.down_shards()
    }

    fn active_channels(&self) -> usize {
        self.inner.active_channels()
    }

    fn reconnects(&self) -> u64 {
        self.inner.reconnects()
    }

    fn close(&self) {
        self.inner.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(channels: &[&str], width: u32) -> RedisConfig {
        RedisConfig {
            cluster_nodes: vec!["127.0.0.1:7000".into()],
            spread_channels: channels.iter().map(|c| c.to_string()).collect(),
            spread_width: width,
            ..Default::default()
        }
    }

    /// Publishes of a spread channel go to its parts in turn; other channels stay as they
    /// are, and a part's messages are its channel's.
    #[test]
    fn a_spread_channel_is_published_to_its_parts_in_turn() {
        let spread = Spread::new(&cluster(&["broadcast"], 3)).unwrap();
        let broadcast = ChannelName::parse("broadcast").unwrap();
        let targets: Vec<String> =
            (0..4).map(|_| spread.publish_target(&broadcast).as_str().to_string()).collect();
        let part = |n| format!("herald:spread.broadcast.{n}");
        assert_eq!(targets, [part(0), part(1), part(2), part(0)]);
        let chat = ChannelName::parse("chat:a").unwrap();
        assert_eq!(spread.publish_target(&chat), &chat);
        assert_eq!(spread_channel_of("herald:spread.broadcast.7"), Some("broadcast"));
        assert_eq!(spread_channel_of("herald:spread.a.b.12"), Some("a.b"));
        assert_eq!(spread_channel_of("broadcast"), None);
        let batch = [(chat.clone(), Bytes::new())];
        assert!(matches!(spread.publish_batch(&batch), std::borrow::Cow::Borrowed(_)));
    }

    /// Nothing is spread off a cluster, without channels or with one part; names that
    /// cannot be parts' are refused under the key.
    #[test]
    fn spreading_needs_a_cluster_and_valid_names() {
        assert!(Spread::new(&RedisConfig::default()).is_none());
        assert!(Spread::new(&cluster(&[], 16)).is_none());
        assert!(Spread::new(&cluster(&["broadcast"], 1)).is_none());
        let key = |config: RedisConfig| config.validate().unwrap_err().key;
        assert_eq!(key(cluster(&["no spaces"], 16)), "redis.spread_channels");
        assert_eq!(key(cluster(&[&"x".repeat(250)], 16)), "redis.spread_channels");
        assert_eq!(key(cluster(&["broadcast"], 0)), "redis.spread_width");
        assert_eq!(key(cluster(&["broadcast"], 5000)), "redis.spread_width");
        cluster(&["broadcast"], 16).validate().unwrap();
    }
}
