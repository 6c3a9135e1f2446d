//! Readiness that sees delivery: the gateway regularly publishes a canary message through the
//! broker to a channel only it subscribes to, and is ready only while the canary comes back in
//! time. A gateway whose Redis connection looks healthy but delivers nothing (a failover gone
//! wrong, a paused server) reports not ready instead of silently dropping messages.
//!
//! A canary counts only if the node's subscriptions stayed live from its publish to its
//! return. One that was out when they went down (Redis died) is abandoned, and none is sent
//! until they are back: its loss would say nothing about the connection live after the
//! recovery, and counting it would turn a gateway that just became ready not ready again,
//! exactly when every client of the blip reconnects.
//!
//! On a Redis Cluster one channel lives on one primary, so one canary would vouch for one
//! shard only: each round sends one canary per primary, on a channel the broker names for it
//! ([`herald_broker::Broker::shard_channels`], asked again every round so it follows the slot
//! map), and the result names the primaries whose canary did not come back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use herald_broker::ShardChannel;
use herald_protocol::{ChannelName, Publication};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::registry::{ConnHandle, ConnId};
use crate::writer::Writer;

/// The hub connection id of the delivery canary; real connections are numbered after it.
pub(crate) const CANARY_CONN: ConnId = 0;

/// What the last canary round found: every canary came back in time, or not, with the
/// shards (cluster primaries, by address) whose did not; an empty list on an engine with one
/// shard, and before the first round.
pub(crate) type CanaryState = Result<(), Vec<Arc<str>>>;

/// The canary channel of node `node_id`. The `herald` namespace is reserved, so clients can
/// neither subscribe to it nor publish into it. On a cluster it is the base of one channel
/// per primary.
pub(crate) fn channel(node_id: &str) -> ChannelName {
    ChannelName::parse(&format!("herald:canary.{node_id}")).expect("node ids are valid in channel names")
}

/// Sends canaries every `interval` and sets `healthy` to what the last round found, each
/// canary given `timeout` to come back. Runs until `stop` is cancelled. The readiness it
/// changes is logged by `crate::lifecycle`, with the other reasons a gateway may not be ready.
pub(crate) async fn run(
    hub: Hub,
    channel: ChannelName,
    interval: Duration,
    timeout: Duration,
    healthy: Arc<watch::Sender<CanaryState>>,
    stop: CancellationToken,
) {
    let queue = Arc::new(Writer::new(64, 64 * 1024));
    let handle = ConnHandle::new(CANARY_CONN, queue.clone());
    // The canary channels joined, of every shard.
    let mut joined: Vec<ChannelName> = Vec::new();
    let mut seq: u64 = 0;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status = hub.subscriber().status();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // Back from an outage: the first canary goes out at once.
            Ok(()) = status.changed(), if !*status.borrow() => {}
            _ = stop.cancelled() => break,
        }
        if !*status.borrow_and_update() {
            // Not ready anyway while the subscriptions are down.
            continue;
        }
        let targets = hub.broker().shard_channels(&channel);
        joined.retain(|c| {
            let keep = targets.iter().any(|t| t.channel == *c);
            if !keep {
                hub.leave(c, CANARY_CONN);
            }
            keep
        });
        let joins = targets.iter().filter(|t| !joined.contains(&t.channel)).map(|t| {
            let confirmation = hub.join(&t.channel, handle.clone());
            async move { (t, confirmation.await.is_ok()) }
        });
        let joins = tokio::select! {
            joins = join_all(joins) => joins,
            _ = stop.cancelled() => break,
        };
        let mut late: Vec<Option<Arc<str>>> = Vec::new();
        for (target, ok) in joins {
            if ok {
                joined.push(target.channel.clone());
            } else {
                hub.leave(&target.channel, CANARY_CONN);
                late.push(target.shard.clone());
            }
        }
        let live: Vec<&ShardChannel> = targets.iter().filter(|t| joined.contains(&t.channel)).collect();
        seq += 1;
        tokio::select! {
            back = round(&hub, &live, seq, &queue, timeout) => late.extend(back),
            // The subscriptions went down while this round was out: it does not count.
            Ok(()) = status.changed() => continue,
            _ = stop.cancelled() => break,
        };
        let state: CanaryState =
            if late.is_empty() { Ok(()) } else { Err(late.into_iter().flatten().collect()) };
        healthy.send_if_modified(|was| std::mem::replace(was, state.clone()) != state);
    }
    for c in &joined {
        hub.leave(c, CANARY_CONN);
    }
}

/// Publishes canary `seq` on every target at once and waits for them to come back; returns
/// the shards of those that did not within `timeout`.
async fn round(
    hub: &Hub,
    targets: &[&ShardChannel],
    seq: u64,
    queue: &Writer,
    timeout: Duration,
) -> Vec<Option<Arc<str>>> {
    // The frame of canary `i` ends with its data, `[seq,i]`; `None` once it came back.
    let mut outstanding: Vec<Option<String>> =
        (0..targets.len()).map(|i| Some(format!("\"data\":[{seq},{i}]}}"))).collect();
    let mut unsent: Vec<usize> = Vec::new();
    let wait = async {
        let publishes = targets.iter().enumerate().map(|(i, target)| async move {
            let data = RawValue::from_string(format!("[{seq},{i}]")).expect("an array of numbers is JSON");
            let payload = Publication::new(&target.channel, &data, None).expect("no event name").encode();
            // A publishing connection that broke in an outage fails once and is replaced on
            // the next call: only a second failure means publishing does not work.
            hub.broker().publish(&target.channel, payload.clone()).await.is_ok()
                || hub.broker().publish(&target.channel, payload).await.is_ok()
        });
        for (i, sent) in join_all(publishes).await.into_iter().enumerate() {
            if !sent {
                outstanding[i] = None;
                unsent.push(i);
            }
        }
        while outstanding.iter().any(Option::is_some) {
            take_back(queue, &mut outstanding);
            if outstanding.iter().any(Option::is_some) {
                queue.ready().await;
            }
        }
    };
    if tokio::time::timeout(timeout, wait).await.is_err() {
        // A primary that does not answer holds its publish until `response_timeout`, maybe
        // past `timeout`: the others' canaries came back meanwhile, into the queue.
        take_back(queue, &mut outstanding);
    }
    let late = outstanding.iter().enumerate().filter(|(_, e)| e.is_some()).map(|(i, _)| i);
    late.chain(unsent).map(|i| targets[i].shard.clone()).collect()
}

/// Marks the canaries whose frames are in `queue` as back.
fn take_back(queue: &Writer, outstanding: &mut [Option<String>]) {
    while let Some(frame) = queue.pop() {
        for expected in outstanding.iter_mut() {
            if expected.as_ref().is_some_and(|e| frame.ends_with(e.as_bytes())) {
                *expected = None;
            }
        }
    }
}
