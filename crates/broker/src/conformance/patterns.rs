//! What every engine with pattern subscriptions promises: a node subscribed to a pattern
//! receives every message of every channel it matches, once per pattern, naming the real
//! channel; the glob means the same on every engine; subscriptions are counted per pattern;
//! and a message that matches a channel subscription and a pattern subscription of one node
//! reaches it through each (the gateway marks the copy of the pattern).

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::ChannelPattern;

use super::history::{options, payload};
use super::{ch, node, until_marker, via};
use crate::history::frame_at;
use crate::{Broker, BrokerError};

/// Runs every pattern check against `broker`; names are made unique with `tag`.
pub async fn run_patterns(broker: Arc<dyn Broker>, tag: &str) {
    a_pattern_receives_every_matching_channel_and_nothing_else(&broker, tag).await;
    the_glob_means_the_same_on_every_engine(&broker, tag).await;
    a_channel_and_a_pattern_each_deliver(&broker, tag).await;
    pattern_subscriptions_are_counted(&broker, tag).await;
    a_pattern_confirmation_adds_no_interest(&broker, tag).await;
    every_node_holding_a_pattern_receives(&broker, tag).await;
    messages_with_history_reach_patterns(&broker, tag).await;
}

pub(crate) fn pat(text: &str) -> ChannelPattern {
    ChannelPattern::parse(text).unwrap()
}

/// A pattern receives the messages of every channel it matches, in publish order and naming
/// each channel, and none of the channels it does not match.
pub async fn a_pattern_receives_every_matching_channel_and_nothing_else(broker: &Arc<dyn Broker>, tag: &str) {
    let ns = format!("pat{tag}");
    let pattern = pat(&format!("{ns}:ev-*"));
    let barrier = ch(&format!("{ns}:barrier"));
    let (node, got) = node(broker);
    node.subscribe_pattern(&pattern).await.unwrap();
    node.subscribe(&barrier).await.unwrap();
    assert_eq!(node.active_patterns(), 1);
    let published = [
        format!("{ns}:ev-1"),
        format!("{ns}:other"),
        format!("{ns}:ev-2:deep"),
        format!("{ns}x:ev-1"),
        format!("{ns}:ev-"),
        format!("{ns}:EV-3"),
    ];
    for (i, name) in published.iter().enumerate() {
        broker.publish(&ch(name), Bytes::from(i.to_string())).await.unwrap();
    }
    let received = until_marker(broker, &got, &barrier).await;
    let expected = vec![
        (via(&format!("{ns}:ev-1"), pattern.as_str()), Bytes::from("0")),
        (via(&format!("{ns}:ev-2:deep"), pattern.as_str()), Bytes::from("2")),
        (via(&format!("{ns}:ev-"), pattern.as_str()), Bytes::from("4")),
        (barrier.to_string(), Bytes::from_static(b"marker")),
    ];
    assert_eq!(received, expected);
    node.close();
}

/// Each pattern of a table matches exactly the channels it says, whichever engine matches:
/// Herald's own matcher (memory) and Redis's agree on the whole syntax.
pub async fn the_glob_means_the_same_on_every_engine(broker: &Arc<dyn Broker>, tag: &str) {
    let ns = format!("glob{tag}");
    // (pattern, channels it must match); every other channel of `names` must not match.
    let table: [(&str, &[&str]); 6] = [
        ("orders:eu-?", &["orders:eu-1", "orders:eu-x"]),
        ("prices:[ab]*", &["prices:a", "prices:apple", "prices:b:c"]),
        ("prices:[^ab]*", &["prices:c", "prices:zz"]),
        ("t:[a-c0-9]?", &["t:a1", "t:9z", "t:ab"]),
        ("orders:*-[0-9]", &["orders:eu-1", "orders:us-east-2"]),
        ("t:*.*", &["t:a.b", "t:.", "t:x.y.z"]),
    ];
    let names = [
        "orders:eu-1",
        "orders:eu-x",
        "orders:eu-12",
        "orders:eu-",
        "orders:us-east-2",
        "prices:a",
        "prices:apple",
        "prices:b:c",
        "prices:c",
        "prices:zz",
        "prices:",
        "t:a1",
        "t:9z",
        "t:d1",
        "t:a",
        "t:a.b",
        "t:.",
        "t:x.y.z",
        "t:ab",
    ];
    let (node, got) = node(broker);
    let barrier = ch(&format!("{ns}-barrier:x"));
    node.subscribe(&barrier).await.unwrap();
    for (pattern, _) in &table {
        node.subscribe_pattern(&pat(&format!("{ns}-{pattern}"))).await.unwrap();
    }
    for name in names {
        broker.publish(&ch(&format!("{ns}-{name}")), Bytes::from_static(b".")).await.unwrap();
    }
    let mut received: Vec<String> =
        until_marker(broker, &got, &barrier).await.into_iter().map(|(name, _)| name).collect();
    received.pop();
    let mut expected: Vec<String> = Vec::new();
    for name in names {
        for (pattern, matching) in &table {
            if matching.contains(&name) {
                expected.push(via(&format!("{ns}-{name}"), &format!("{ns}-{pattern}")));
            }
        }
    }
    received.sort();
    expected.sort();
    assert_eq!(received, expected);
    // The table agrees with the matcher the memory engine uses.
    for (pattern, matching) in &table {
        for name in names {
            assert_eq!(pat(pattern).matches(name), matching.contains(&name), "{pattern} on {name}");
        }
    }
    node.close();
}

/// A message that matches a channel subscription and two pattern subscriptions of one node
/// reaches it three times: once for the channel, once through each pattern.
pub async fn a_channel_and_a_pattern_each_deliver(broker: &Arc<dyn Broker>, tag: &str) {
    let ns = format!("both{tag}");
    let room = ch(&format!("{ns}:room-1"));
    let (wide, narrow) = (pat(&format!("{ns}:*")), pat(&format!("{ns}:room-?")));
    let barrier = ch(&format!("{ns}-barrier:x"));
    let (node, got) = node(broker);
    node.subscribe(&room).await.unwrap();
    node.subscribe_pattern(&wide).await.unwrap();
    node.subscribe_pattern(&narrow).await.unwrap();
    node.subscribe(&barrier).await.unwrap();
    broker.publish(&room, Bytes::from_static(b"hi")).await.unwrap();
    let mut received: Vec<String> =
        until_marker(broker, &got, &barrier).await.into_iter().map(|(name, _)| name).collect();
    received.sort();
    let mut expected =
        vec![room.to_string(), via(room.as_str(), wide.as_str()), via(room.as_str(), narrow.as_str())];
    expected.push(barrier.to_string());
    expected.sort();
    assert_eq!(received, expected);
    node.close();
}

/// Two subscribes of a pattern need two unsubscribes before its messages stop.
pub async fn pattern_subscriptions_are_counted(broker: &Arc<dyn Broker>, tag: &str) {
    let ns = format!("pcount{tag}");
    let pattern = pat(&format!("{ns}:*"));
    let room = ch(&format!("{ns}:a"));
    let (node, got) = node(broker);
    node.subscribe_pattern(&pattern).await.unwrap();
    node.subscribe_pattern(&pattern).await.unwrap();
    assert_eq!(node.active_patterns(), 1, "one subscription per distinct pattern");
    node.unsubscribe_pattern(&pattern);
    // A subscribe confirmed after the unsubscribe was issued proves the engine processed it.
    let barrier = ch(&format!("{ns}-barrier:x"));
    node.subscribe(&barrier).await.unwrap();
    broker.publish(&room, Bytes::from_static(b"still")).await.unwrap();
    let received = until_marker(broker, &got, &barrier).await;
    assert_eq!(received[0], (via(room.as_str(), pattern.as_str()), Bytes::from_static(b"still")));
    node.unsubscribe_pattern(&pattern);
    let second = ch(&format!("{ns}-barrier2:x"));
    node.subscribe(&second).await.unwrap();
    got.clear();
    broker.publish(&room, Bytes::from_static(b"gone")).await.unwrap();
    let received = until_marker(broker, &got, &second).await;
    assert_eq!(received.len(), 1, "received through a pattern after its last unsubscribe: {received:?}");
    assert_eq!(node.active_patterns(), 0);
    node.close();
}

/// A second wait for a pattern's confirmation resolves with the subscribe's and adds no
/// interest; without a subscribe it fails.
pub async fn a_pattern_confirmation_adds_no_interest(broker: &Arc<dyn Broker>, tag: &str) {
    let pattern = pat(&format!("pconf{tag}:*"));
    let (node, _got) = node(broker);
    assert!(node.pattern_confirmation(&pattern).await.is_err(), "confirmed a pattern nobody subscribed");
    let (first, second) = (node.subscribe_pattern(&pattern), node.pattern_confirmation(&pattern));
    let (first, second) = futures_util::future::join(first, second).await;
    first.unwrap();
    second.unwrap();
    assert!(node.pattern_confirmation(&pattern).is_confirmed());
    node.unsubscribe_pattern(&pattern);
    // A channel subscribe confirmed after it proves the unsubscribe was processed.
    node.subscribe(&ch(&format!("pconf{tag}-barrier:x"))).await.unwrap();
    assert_eq!(node.active_patterns(), 0);
    node.close();
}

/// Every node holding a pattern receives each matching message once.
pub async fn every_node_holding_a_pattern_receives(broker: &Arc<dyn Broker>, tag: &str) {
    let ns = format!("pnodes{tag}");
    let pattern = pat(&format!("{ns}:*"));
    let barrier = ch(&format!("{ns}-barrier:x"));
    let (a, got_a) = node(broker);
    let (b, got_b) = node(broker);
    for n in [&a, &b] {
        n.subscribe_pattern(&pattern).await.unwrap();
        n.subscribe(&barrier).await.unwrap();
    }
    for i in 0..20 {
        broker.publish(&ch(&format!("{ns}:{}", i % 3)), Bytes::from(i.to_string())).await.unwrap();
    }
    let expected: Vec<(String, Bytes)> = (0..20)
        .map(|i| (via(&format!("{ns}:{}", i % 3), pattern.as_str()), Bytes::from(i.to_string())))
        .chain([(barrier.to_string(), Bytes::from_static(b"marker"))])
        .collect();
    assert_eq!(until_marker(broker, &got_a, &barrier).await, expected);
    assert_eq!(got_b.wait_for(21).await, expected);
    a.close();
    b.close();
}

/// A message of a channel with history reaches a pattern as it reaches the channel's own
/// subscribers (its offset written into the frame), with no position beside it: a pattern
/// subscription does not recover.
pub async fn messages_with_history_reach_patterns(broker: &Arc<dyn Broker>, tag: &str) {
    let ns = format!("phist{tag}");
    let pattern = pat(&format!("{ns}:*"));
    let room = ch(&format!("{ns}:room"));
    let (node, got) = node(broker);
    node.subscribe_pattern(&pattern).await.unwrap();
    let published = broker.publish_with_history(&room, "m1", payload(1), &options(10)).await.unwrap();
    let received = got.wait_for(1).await;
    assert_eq!(received[0].0, via(room.as_str(), pattern.as_str()));
    assert_eq!(received[0].1, frame_at(published.offset, &payload(1)));
    assert!(got.positions().is_empty(), "a pattern delivery carries no position");
    node.close();
}

/// An engine without pattern subscriptions (a Redis Cluster) refuses them at once, saying
/// why, and holds no interest afterwards.
pub async fn patterns_are_refused(broker: &Arc<dyn Broker>, tag: &str) {
    let (node, _got) = node(broker);
    let refused = node.subscribe_pattern(&pat(&format!("none{tag}:*"))).await;
    assert!(matches!(refused, Err(BrokerError::PatternsUnsupported(_))), "{refused:?}");
    assert_eq!(node.active_patterns(), 0);
    node.close();
}
