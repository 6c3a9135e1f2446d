//! A client that stops reading is cut off; nobody else notices, and the gateway's memory stays
//! bounded. The gateway is the real `herald gateway` process, so its memory can be measured.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{GatewayProcess, recv_messages};
use bytes::Bytes;
use herald_broker::{Broker, RedisBroker, RedisConfig};
use herald_protocol::{ChannelName, Publication};
use herald_testkit::{RedisServer, WsClient};
use serde_json::value::RawValue;

/// With 64 MiB published into one channel, a client that stopped reading is closed with 4008
/// once its bounded queue overflows, a reading client in the same channel gets every message
/// in order, and the gateway process grows by far less than what was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_are_cut_off_without_slowing_others() {
    let redis = RedisServer::start().await;
    let gateway = GatewayProcess::start(
        &redis.url(),
        &[
            ("HERALD_GATEWAY__OUTBOUND_QUEUE", "256"),
            ("HERALD_GATEWAY__OUTBOUND_QUEUE_BYTES", "8388608"),
            ("HERALD_GATEWAY__CLOSE_TIMEOUT", "30s"),
        ],
    )
    .await;
    let (mut slow, _) = WsClient::connect(&gateway.url("slow")).await.unwrap();
    slow.subscribe("room:flood").await.unwrap();
    let (mut fast, _) = WsClient::connect(&gateway.url("fast")).await.unwrap();
    fast.subscribe("room:flood").await.unwrap();

    const MESSAGES: usize = 4096;
    let reader = tokio::spawn(async move {
        let got = recv_messages(&mut fast, MESSAGES).await;
        got.iter().enumerate().all(|(i, m)| m["data"]["seq"] == i)
    });

    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::new(RedisConfig { url: redis.url(), ..Default::default() }).unwrap());
    // The stalled client resumes reading once the gateway counted it slow, to collect the
    // close frame (a client that never reads again never sees one).
    let metrics = format!("http://{}/metrics", gateway.addr);
    let slow_closed = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
            if text.lines().any(|l| l == "herald_gateway_slow_consumers_total 1") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the stalled client was never cut off");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slow.closed().await.unwrap()
    });

    let before = gateway.rss();
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
        broker.publish_batch(&batch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(reader.await.unwrap(), "the reading client lost or reordered messages");
    let growth = gateway.rss().saturating_sub(before);
    assert!(growth < 16 << 20, "gateway memory grew by {} MiB for 64 MiB published", growth >> 20);

    let closed = slow_closed.await.unwrap();
    assert_eq!(closed.code, 4008, "{closed:?}");
}

/// The byte bound works on its own: with room for 1000 messages but only 64 KiB, a client that
/// stops reading is cut off once 64 KiB of large messages wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_in_bytes_too() {
    let cluster = crate::common::Cluster::start_with(crate::common::Engine::Memory, 1, |c| {
        c.outbound_queue = 1000;
        c.outbound_queue_bytes = 64 * 1024;
        c.close_timeout = Duration::from_secs(5);
    })
    .await;
    let mut slow = cluster.connect(0, "slow").await;
    slow.subscribe("room:big").await.unwrap();
    let channel = ChannelName::parse("room:big").unwrap();
    let data = RawValue::from_string(format!("\"{}\"", "y".repeat(60 * 1024))).unwrap();
    for _ in 0..200 {
        let frame = Publication::new(&channel, &data, None).unwrap().encode();
        cluster.broker.publish(&channel, frame).await.unwrap();
        if cluster.gateways[0].gateway.metrics().slow_consumers.get() > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(cluster.gateways[0].gateway.metrics().slow_consumers.get(), 1);
    assert_eq!(slow.closed().await.unwrap().code, 4008);
}
