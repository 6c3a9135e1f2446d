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

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::{ChannelName, Publication};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::gateway::CANARY_CONN;
use crate::hub::Hub;
use crate::registry::ConnHandle;
use crate::writer::Writer;

/// The canary channel of node `node_id`. The `herald` namespace is reserved, so clients can
/// neither subscribe to it nor publish into it.
pub(crate) fn channel(node_id: &str) -> ChannelName {
    ChannelName::parse(&format!("herald:canary.{node_id}")).expect("node ids are valid in channel names")
}

/// Sends canaries every `interval` and sets `healthy` to whether the last one came back
/// within `timeout`. Runs until `stop` is cancelled. The readiness it changes is logged by
/// `crate::lifecycle`, with the other reasons a gateway may not be ready.
pub(crate) async fn run(
    hub: Hub,
    channel: ChannelName,
    interval: Duration,
    timeout: Duration,
    healthy: Arc<watch::Sender<bool>>,
    stop: CancellationToken,
) {
    let queue = Arc::new(Writer::new(64, 64 * 1024));
    let handle = ConnHandle::new(CANARY_CONN, queue.clone());
    let mut joined = false;
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
        if !joined {
            joined = hub.join(&channel, handle.clone()).await.is_ok();
            if !joined {
                hub.leave(&channel, CANARY_CONN);
                healthy.send_if_modified(|ok| std::mem::replace(ok, false));
                continue;
            }
        }
        seq += 1;
        let ok = tokio::select! {
            ok = round_trip(&hub, &channel, seq, &queue, timeout) => ok,
            // The subscriptions went down while this canary was out: it does not count.
            Ok(()) = status.changed() => continue,
            _ = stop.cancelled() => break,
        };
        healthy.send_if_modified(|was| std::mem::replace(was, ok) != ok);
    }
    hub.leave(&channel, CANARY_CONN);
}

/// Publishes canary `seq` and waits for it to come back.
async fn round_trip(hub: &Hub, channel: &ChannelName, seq: u64, queue: &Writer, timeout: Duration) -> bool {
    let data = RawValue::from_string(seq.to_string()).expect("a number is JSON");
    let publication = Publication::new(channel, &data, None).expect("no event name");
    let expected = format!("\"data\":{seq}}}");
    let wait = async {
        let payload = publication.encode();
        // A publishing connection that broke in an outage fails once and is replaced on the
        // next call: only a second failure means publishing does not work.
        if hub.broker().publish(channel, payload.clone()).await.is_err()
            && hub.broker().publish(channel, payload).await.is_err()
        {
            return false;
        }
        loop {
            while let Some(frame) = queue.pop() {
                if frame.ends_with(expected.as_bytes()) {
                    return true;
                }
            }
            queue.ready().await;
        }
    };
    tokio::time::timeout(timeout, wait).await.unwrap_or(false)
}
