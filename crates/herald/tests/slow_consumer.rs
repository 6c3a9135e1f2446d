//! A client that stops reading is cut off; nobody else notices.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, Engine};
use herald_protocol::{ChannelName, Publication};
use serde_json::value::RawValue;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

/// With 64 MiB published to a channel, a client that stopped reading is closed with 4008 once
/// its bounded queue overflows, a reading client in the same channel still gets every message,
/// and the process's memory grows by far less than what was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_are_cut_off_without_slowing_others() {
    let cluster = Cluster::start_with(Engine::Redis, 1, |c| {
        c.outbound_queue = 256;
        c.close_timeout = Duration::from_secs(5);
    })
    .await;
    let mut slow = cluster.connect(0, "slow").await;
    slow.subscribe("room:flood").await.unwrap();
    let mut fast = cluster.connect(0, "fast").await;
    fast.subscribe("room:flood").await.unwrap();

    const MESSAGES: usize = 4096;
    let reader = tokio::spawn(async move {
        let got = common::recv_messages(&mut fast, MESSAGES).await;
        got.iter().enumerate().all(|(i, m)| m["data"]["seq"] == i)
    });

    let before = rss();
    let channel = ChannelName::parse("room:flood").unwrap();
    let filler = "x".repeat(16 * 1024);
    // Paced so that a client that reads keeps up; the one that does not read falls behind.
    for chunk in 0..MESSAGES / 32 {
        let batch: Vec<(ChannelName, Bytes)> = (chunk * 32..(chunk + 1) * 32)
            .map(|seq| {
                let data = RawValue::from_string(format!(r#"{{"seq":{seq},"fill":"{filler}"}}"#)).unwrap();
                (channel.clone(), Publication::new(&channel, &data, None).unwrap().encode())
            })
            .collect();
        cluster.broker.publish_batch(&batch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(reader.await.unwrap(), "the reading client lost or reordered messages");
    let growth = rss().saturating_sub(before);
    assert!(growth < 32 << 20, "memory grew by {} MiB for 64 MiB published", growth >> 20);

    let stats = cluster.gateways[0].gateway.hub().stats();
    assert_eq!(stats.slow_consumers.load(Ordering::Relaxed), 1);
    assert_eq!(slow.closed().await.unwrap().code, 4008);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cluster.gateways[0].gateway.hub().subscriber_count(&channel) != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the slow client was not removed from the channel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
