//! What every engine promises, as one suite run against each engine (see `tests/` of this
//! crate). A node is a [`Subscriber`] with its own [`Delivery`]; two nodes on one engine stand
//! for two gateway replicas. Channel history has its own part ([`history`]), run with
//! [`history::run_history`], and so have pattern subscriptions ([`patterns`], run with
//! [`patterns::run_patterns`]).

pub mod history;
pub mod patterns;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::ChannelName;
use tokio::sync::Notify;

use crate::redis::cluster::key_slot;
use crate::{Broker, Delivery, Subscriber};

/// How long a suite step waits for messages before it fails.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// Records what a node received.
#[derive(Default)]
pub struct Collector {
    received: Mutex<Vec<(String, Bytes)>>,
    /// `(channel, offset, epoch)` of each message delivered with a position, in arrival order.
    positions: Mutex<Vec<(String, u64, String)>>,
    arrived: Notify,
}

impl Delivery for Collector {
    fn deliver(&self, channel: &str, payload: Bytes) {
        self.received.lock().unwrap().push((channel.to_string(), payload));
        self.arrived.notify_waiters();
    }

    fn deliver_at(&self, channel: &str, payload: Bytes, offset: u64, epoch: &str) {
        self.positions.lock().unwrap().push((channel.to_string(), offset, epoch.to_string()));
        self.deliver(channel, payload);
    }

    /// Recorded as `"<channel> via <pattern>"`, so a test tells it from the channel's own.
    fn deliver_pattern(&self, pattern: &str, channel: &str, payload: Bytes) {
        self.deliver(&via(channel, pattern), payload);
    }
}

/// How the [`Collector`] records a message of `channel` that came through `pattern`.
pub fn via(channel: &str, pattern: &str) -> String {
    format!("{channel} via {pattern}")
}

impl Collector {
    /// Waits until at least `n` messages arrived, then returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<(String, Bytes)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.arrived.notified();
            {
                let got = self.received.lock().unwrap();
                if got.len() >= n {
                    return got.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let got = self.received.lock().unwrap();
                panic!("expected {n} messages, got {}: {:?}", got.len(), *got);
            }
        }
    }

    /// Everything received so far, after letting in-flight messages land. For tests that have
    /// no later message to wait for; the suite itself waits for a marker instead.
    pub async fn settled(&self) -> Vec<(String, Bytes)> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.received.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.received.lock().unwrap().clear();
        self.positions.lock().unwrap().clear();
    }

    /// The positions of the messages delivered with one so far.
    pub fn positions(&self) -> Vec<(String, u64, String)> {
        self.positions.lock().unwrap().clone()
    }
}

/// A node of `broker` with its collector.
pub fn node(broker: &Arc<dyn Broker>) -> (Arc<dyn Subscriber>, Arc<Collector>) {
    let collector = Arc::new(Collector::default());
    (broker.subscriber(collector.clone()), collector)
}

pub(crate) fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

/// A channel named `name.<n>` in the same Redis Cluster slot as `room`, for a barrier: a
/// marker tells that everything before it arrived only if it comes over the same connection
/// as `room`'s messages, and a subscribe confirmed after an unsubscribe proves it processed
/// only on the same connection. On one Redis and in memory any channel would do.
pub(crate) fn beside(room: &ChannelName, name: &str) -> ChannelName {
    let slot = key_slot(room.as_str().as_bytes());
    (0..)
        .map(|n| format!("{name}.{n}"))
        .find(|candidate| key_slot(candidate.as_bytes()) == slot)
        .map(|found| ch(&found))
        .expect("some name falls in every slot")
}

/// Publishes a marker to `barrier`, which `got`'s node is subscribed to, and returns what the
/// node received up to and including it. Messages from one publisher reach a node in publish
/// order across channels, so anything published before the marker that the node was going to
/// receive has arrived by then.
pub(crate) async fn until_marker(
    broker: &Arc<dyn Broker>,
    got: &Collector,
    barrier: &ChannelName,
) -> Vec<(String, Bytes)> {
    let marker = (barrier.to_string(), Bytes::from_static(b"marker"));
    broker.publish(barrier, marker.1.clone()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let notified = got.arrived.notified();
        {
            let so_far = got.received.lock().unwrap();
            if let Some(at) = so_far.iter().position(|m| *m == marker) {
                return so_far[..=at].to_vec();
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            panic!("the marker on {barrier} never arrived; got {:?}", *got.received.lock().unwrap());
        }
    }
}

/// Asserts that `node` no longer receives `room`, after an unsubscribe: a subscribe to
/// `barrier` confirmed after the unsubscribe was issued proves the engine processed it, and a
/// marker published to `barrier` after `room`'s message arrives alone.
async fn assert_stopped(
    broker: &Arc<dyn Broker>,
    node: &Arc<dyn Subscriber>,
    got: &Collector,
    room: &ChannelName,
    barrier: &ChannelName,
) {
    node.subscribe(barrier).await.unwrap();
    got.clear();
    broker.publish(room, Bytes::from_static(b"gone")).await.unwrap();
    let received = until_marker(broker, got, barrier).await;
    assert_eq!(received.len(), 1, "received {room} after its last unsubscribe: {received:?}");
    got.clear();
}

/// Runs every check of the suite against `broker`. Channel names are made unique with
/// `tag`, so suites may share a backend.
pub async fn run_all(broker: Arc<dyn Broker>, tag: &str) {
    delivers_in_order_exactly_once_to_subscribed_nodes(&broker, tag).await;
    subscriptions_are_counted(&broker, tag).await;
    a_confirmation_adds_no_interest(&broker, tag).await;
    batches_keep_their_order_across_channels(&broker, tag).await;
    many_channels_subscribe_concurrently(&broker, tag).await;
    status_reports_live_subscriptions(&broker).await;
}

/// A message reaches every node subscribed to its channel once, in publish order, and no
/// node that is not subscribed.
pub async fn delivers_in_order_exactly_once_to_subscribed_nodes(broker: &Arc<dyn Broker>, tag: &str) {
    let room = ch(&format!("conf{tag}:room"));
    let barrier = beside(&room, &format!("conf{tag}:room-barrier"));
    let (a, got_a) = node(broker);
    let (b, got_b) = node(broker);
    let (c, got_c) = node(broker);
    a.subscribe(&room).await.unwrap();
    b.subscribe(&room).await.unwrap();
    for n in [&a, &b, &c] {
        n.subscribe(&barrier).await.unwrap();
    }
    for i in 0..100 {
        broker.publish(&room, Bytes::from(i.to_string())).await.unwrap();
    }
    let expected: Vec<(String, Bytes)> =
        (0..100).map(|i| (room.to_string(), Bytes::from(i.to_string()))).collect();
    assert_eq!(got_a.wait_for(100).await, expected);
    assert_eq!(got_b.wait_for(100).await, expected);
    // Anything else (a duplicate, a message for c) would arrive before a later marker.
    let marker = (barrier.to_string(), Bytes::from_static(b"marker"));
    let with_marker: Vec<_> = expected.iter().cloned().chain([marker.clone()]).collect();
    assert_eq!(until_marker(broker, &got_a, &barrier).await, with_marker, "duplicates on node a");
    assert_eq!(got_b.wait_for(101).await, with_marker, "duplicates on node b");
    assert_eq!(got_c.wait_for(1).await, [marker], "an unsubscribed node received messages");
    a.close();
    b.close();
    c.close();
}

/// Two subscribes need two unsubscribes before messages stop.
pub async fn subscriptions_are_counted(broker: &Arc<dyn Broker>, tag: &str) {
    let room = ch(&format!("conf{tag}:counted"));
    let (node, got) = node(broker);
    node.subscribe(&room).await.unwrap();
    node.subscribe(&room).await.unwrap();
    node.unsubscribe(&room);
    // A subscribe confirmed after the unsubscribe was issued proves the engine processed it.
    node.subscribe(&beside(&room, &format!("conf{tag}:barrier"))).await.unwrap();
    broker.publish(&room, Bytes::from_static(b"still")).await.unwrap();
    assert_eq!(got.wait_for(1).await[0].1, Bytes::from_static(b"still"));
    node.unsubscribe(&room);
    assert_stopped(broker, &node, &got, &room, &beside(&room, &format!("conf{tag}:barrier2"))).await;
    assert_eq!(node.active_channels(), 2);
    node.close();
}

/// A second wait for a channel's confirmation resolves with the subscribe's, and one
/// unsubscribe still ends the subscription; without a subscribe it fails.
pub async fn a_confirmation_adds_no_interest(broker: &Arc<dyn Broker>, tag: &str) {
    let room = ch(&format!("conf{tag}:confirmation"));
    let (node, got) = node(broker);
    assert!(node.confirmation(&room).await.is_err(), "confirmed a channel nobody subscribed");
    let (first, second) = (node.subscribe(&room), node.confirmation(&room));
    let (first, second) = futures_util::future::join(first, second).await;
    first.unwrap();
    second.unwrap();
    assert!(node.confirmation(&room).is_confirmed(), "asked again once confirmed");
    broker.publish(&room, Bytes::from_static(b"live")).await.unwrap();
    assert_eq!(got.wait_for(1).await[0].1, Bytes::from_static(b"live"));
    node.unsubscribe(&room);
    let barrier = beside(&room, &format!("conf{tag}:confirmation-barrier"));
    assert_stopped(broker, &node, &got, &room, &barrier).await;
    assert_eq!(node.active_channels(), 1);
    node.close();
}

/// A batch arrives in the order it was given, for each channel. (Across channels too on one
/// Redis; on a cluster, channels on different primaries arrive over different connections.)
pub async fn batches_keep_their_order_across_channels(broker: &Arc<dyn Broker>, tag: &str) {
    let (x, y) = (ch(&format!("conf{tag}:x")), ch(&format!("conf{tag}:y")));
    let (node, got) = node(broker);
    node.subscribe(&x).await.unwrap();
    node.subscribe(&y).await.unwrap();
    let batch: Vec<(ChannelName, Bytes)> = (0..50)
        .map(|i| (if i % 2 == 0 { x.clone() } else { y.clone() }, Bytes::from(i.to_string())))
        .collect();
    broker.publish_batch(&batch).await.unwrap();
    let got = got.wait_for(50).await;
    for channel in [&x, &y] {
        let expected: Vec<&Bytes> = batch.iter().filter(|(c, _)| c == channel).map(|(_, p)| p).collect();
        let arrived: Vec<&Bytes> =
            got.iter().filter(|(c, _)| c == channel.as_str()).map(|(_, p)| p).collect();
        assert_eq!(arrived, expected, "order of {channel}");
    }
    assert_eq!(got.len(), 50);
    node.close();
}

/// A thousand channels subscribed at once are all confirmed and all deliver.
pub async fn many_channels_subscribe_concurrently(broker: &Arc<dyn Broker>, tag: &str) {
    let (node, got) = node(broker);
    let channels: Vec<ChannelName> = (0..1000).map(|i| ch(&format!("conf{tag}:many.{i}"))).collect();
    let pending: Vec<_> = channels.iter().map(|c| node.subscribe(c)).collect();
    for r in futures_util::future::join_all(pending).await {
        r.unwrap();
    }
    assert_eq!(node.active_channels(), 1000);
    let batch: Vec<(ChannelName, Bytes)> =
        channels.iter().map(|c| (c.clone(), Bytes::from_static(b"."))).collect();
    broker.publish_batch(&batch).await.unwrap();
    assert_eq!(got.wait_for(1000).await.len(), 1000);
    node.close();
}

/// A node reports its subscriptions live once it is connected, and not after it closed.
pub async fn status_reports_live_subscriptions(broker: &Arc<dyn Broker>) {
    let (node, _got) = node(broker);
    let mut status = node.status();
    tokio::time::timeout(WAIT, status.wait_for(|live| *live)).await.expect("node never became live").unwrap();
    broker.ping().await.unwrap();
    node.close();
    tokio::time::timeout(WAIT, status.wait_for(|live| !*live))
        .await
        .expect("closed node still live")
        .expect("the node dropped its status before reporting itself closed");
}
