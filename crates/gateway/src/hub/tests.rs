//! The hub's fan-out through real sockets, and the publish time read from a frame.

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::close::CloseReason;
use crate::fanout::DIRECT_MAX;
use crate::writer::{MAX_BATCH, Writer};

#[test]
fn publish_time_is_read_from_the_frame_head() {
    let ch = ChannelName::parse("room:a").unwrap();
    let data = serde_json::value::RawValue::from_string(r#"{"ts":1}"#.into()).unwrap();
    let p = herald_protocol::Publication::new(&ch, &data, None).unwrap();
    assert_eq!(publish_time(&p.encode()), p.ts);
    assert_eq!(publish_time(b"not a frame"), 0);
}

/// `n` attached queues in `channel`, with the client end of each one's socket. The first
/// queue holds `first_len` frames, the others 1024.
async fn subscribers(
    hub: &Hub,
    channel: &ChannelName,
    n: u64,
    first_len: usize,
) -> Vec<(Arc<Writer>, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut out = Vec::new();
    for id in 1..=n {
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let queue = Arc::new(Writer::new(if id == 1 { first_len } else { 1024 }, 1 << 20));
        queue.attach(listener.accept().await.unwrap().0);
        hub.join(channel, ConnHandle::new(id, queue.clone())).await.unwrap();
        out.push((queue, client));
    }
    out
}

/// Publishes messages `0..count` to `channel` and returns their `data` as text.
async fn publish(hub: &Hub, channel: &ChannelName, count: usize) -> Vec<String> {
    let mut sent = Vec::new();
    for seq in 0..count {
        let data = serde_json::value::RawValue::from_string(seq.to_string()).unwrap();
        let publication = herald_protocol::Publication::new(channel, &data, None).unwrap();
        hub.broker().publish(channel, publication.encode()).await.unwrap();
        sent.push(format!("\"data\":{seq}}}"));
    }
    sent
}

/// Reads one text frame (shorter than 126 bytes) per entry of `expected`, and checks that
/// it ends with that entry.
async fn expect_frames(client: &mut TcpStream, expected: &[String]) {
    for tail in expected {
        let mut head = [0; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x81, "a final text frame");
        let mut payload = vec![0; usize::from(head[1])];
        client.read_exact(&mut payload).await.unwrap();
        assert!(String::from_utf8(payload).unwrap().ends_with(tail.as_str()), "expected …{tail}");
    }
}

#[tokio::test]
async fn a_small_channel_is_written_without_its_connection_tasks() {
    let hub = Hub::new(Arc::new(herald_broker::MemoryBroker::new()), Arc::default());
    let channel = ChannelName::parse("room:small").unwrap();
    let mut subs = subscribers(&hub, &channel, DIRECT_MAX as u64, 16).await;
    // No connection task runs: the frames can only have been written by the publisher.
    let sent = publish(&hub, &channel, 20).await;
    for (queue, client) in &mut subs {
        expect_frames(client, &sent).await;
        assert!(queue.is_drained());
    }
}

#[tokio::test]
async fn a_large_channel_goes_through_the_tasks_in_order_and_cuts_off_a_stalled_one() {
    let hub = Hub::new(Arc::new(herald_broker::MemoryBroker::new()), Arc::default());
    let channel = ChannelName::parse("room:large").unwrap();
    let mut subs = subscribers(&hub, &channel, DIRECT_MAX as u64 + 6, 16).await;
    // Every connection task drains its queue but the first one's, which is stalled.
    let tasks: Vec<_> = subs[1..]
        .iter()
        .map(|(queue, _)| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.drain(MAX_BATCH).await })
        })
        .collect();
    let sent = publish(&hub, &channel, 20).await;
    for (_, client) in &mut subs[1..] {
        expect_frames(client, &sent).await;
    }
    let stalled = &subs[0].0;
    assert_eq!(stalled.closing().await, CloseReason::SlowConsumer, "20 frames overflow a queue of 16");
    tasks.iter().for_each(|t| t.abort());
}
