//! Recovery of channels with history, with real redis-servers and real gateways: subscribing
//! with `since` while messages keep coming, a gateway's Redis Pub/Sub connection killed under
//! load, Redis restarted with and without persistence, positions in the connect URL.

use std::sync::Arc;
use std::time::Duration;

use herald_broker::{Broker, MemoryBroker};
use herald_protocol::ChannelName;
use herald_testkit::{RedisServer, WsClient};
use serde_json::{Value, json};

use crate::recovery_support::{InProcess, Publisher, Seen, publish, read_until, redis_broker};

/// Subscribes `client` to `channel` (with `since` when given) and returns the reply.
async fn subscribe(client: &mut WsClient, channel: &str, since: Option<(u64, &str)>) -> Value {
    let mut frame = json!({"type": "subscribe", "channel": channel});
    if let Some((offset, epoch)) = since {
        frame["since"] = json!({"offset": offset, "epoch": epoch});
    }
    client.send_json(frame).await.unwrap();
    loop {
        let reply = client.recv().await.unwrap();
        if reply["type"] != "message" {
            assert_eq!(reply["type"], "subscribed", "{reply}");
            return reply;
        }
    }
}

fn seen_from(reply: &Value) -> Seen {
    Seen {
        epoch: reply["epoch"].as_str().expect("an epoch").to_string(),
        offsets: Vec::new(),
        start: reply["offset"].as_u64().expect("an offset"),
    }
}

/// A client that left and comes back with `since` gets exactly what it missed, in order, and
/// then the live stream with neither gap nor duplicate at the seam, while a publisher never
/// stops publishing.
async fn since_recovers_the_missed_messages_at_a_seam_under_load(broker: Arc<dyn Broker>) {
    let gateway = InProcess::start(broker.clone()).await;
    let publisher = Publisher::start(broker.clone(), "feed:seam", Duration::from_millis(2));
    let (mut first, _) = WsClient::connect(&gateway.url("alice", "")).await.unwrap();
    let reply = subscribe(&mut first, "feed:seam", None).await;
    let mut seen = seen_from(&reply);
    assert!(reply.get("recovered").is_none(), "no since, no recovered: {reply}");
    let until = seen.last() + 50;
    read_until(&mut first, "feed:seam", &mut seen, until, "first").await;
    first.close().await;
    for round in 0..3 {
        // Messages go on while the client is away.
        while (publisher.count() as u64) < seen.last() + 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (mut again, _) = WsClient::connect(&gateway.url("alice", "")).await.unwrap();
        let reply = subscribe(&mut again, "feed:seam", Some((seen.last(), &seen.epoch))).await;
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(reply["epoch"], seen.epoch.as_str());
        assert!(reply["offset"].as_u64().unwrap() >= seen.last() + 100, "{reply}");
        let until = reply["offset"].as_u64().unwrap() + 100;
        read_until(&mut again, "feed:seam", &mut seen, until, &format!("round {round}")).await;
        again.close().await;
    }
    let acked = publisher.finish().await;
    assert!(seen.offsets.iter().all(|o| acked.contains(o)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_recovers_exactly_the_missed_messages_on_redis() {
    let redis = RedisServer::start().await;
    since_recovers_the_missed_messages_at_a_seam_under_load(redis_broker(&redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_recovers_exactly_the_missed_messages_in_memory() {
    since_recovers_the_missed_messages_at_a_seam_under_load(Arc::new(MemoryBroker::new())).await;
}

/// `since` on a channel without history is refused with `no_history`; a position of another
/// epoch answers `recovered: false` with the reason and the current position.
#[tokio::test]
async fn since_is_refused_without_history_and_reports_what_cannot_be_recovered() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let gateway = InProcess::start(broker.clone()).await;
    let (mut client, _) = WsClient::connect(&gateway.url("alice", "")).await.unwrap();
    let reply = client
        .request(json!({"type": "subscribe", "channel": "room:a", "since": {"offset": 1, "epoch": "e"}}))
        .await
        .unwrap();
    assert_eq!(reply["code"], "no_history", "{reply}");
    let reply = client.request(json!({"type": "subscribe", "channel": "room:a"})).await.unwrap();
    assert_eq!(reply, json!({"type": "subscribed", "channel": "room:a"}));
    let feed = ChannelName::parse("feed:a").unwrap();
    for n in 1..=3 {
        publish(&*broker, &feed, n).await;
    }
    let reply = subscribe(&mut client, "feed:a", Some((1, "otherepoch"))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["reason"], "epoch_changed");
    assert_eq!(reply["offset"], 3);
    publish(&*broker, &feed, 4).await;
    let mut seen = seen_from(&reply);
    read_until(&mut client, "feed:a", &mut seen, 4, "client").await;
}

/// The gateway's Redis Pub/Sub connection is killed twice while messages keep coming: the
/// gateway repairs the gaps from the history, and no client sees one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_connection_leaves_no_client_a_gap() {
    let redis = RedisServer::start().await;
    let broker = redis_broker(&redis.url());
    let gateway = InProcess::start(redis_broker(&redis.url())).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let (mut client, _) = WsClient::connect(&gateway.url(&format!("u{i}"), "")).await.unwrap();
        let reply = subscribe(&mut client, "feed:kill", None).await;
        clients.push((client, seen_from(&reply)));
    }
    let publisher = Publisher::start(broker.clone(), "feed:kill", Duration::from_millis(2));
    for _ in 0..2 {
        let at = publisher.count() + 100;
        while publisher.count() < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The test's own broker never subscribes: the gateway's is the only Pub/Sub client.
        let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        assert_eq!(killed, ":1", "one Pub/Sub connection, the gateway's");
    }
    let at = publisher.count() + 100;
    while publisher.count() < at {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked = publisher.finish().await;
    let last = *acked.last().unwrap();
    for (i, (client, seen)) in clients.iter_mut().enumerate() {
        read_until(client, "feed:kill", seen, last, &format!("client {i}")).await;
        assert_eq!(seen.offsets, acked, "client {i} got every acknowledged message once, in order");
    }
    assert!(gateway.gateway.metrics().history_repairs.get() >= 2, "the gaps were repaired, not missed");
    assert_eq!(gateway.gateway.metrics().history_resets.get(), 0);
}

/// With AOF and `appendfsync always`, a Redis restart keeps every acknowledged message and the
/// epoch: a client recovers, and live subscribers see nothing but what comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_redis_restart_keeps_positions() {
    let mut redis = RedisServer::start_persistent().await;
    let broker = redis_broker(&redis.url());
    let gateway = InProcess::start(redis_broker(&redis.url())).await;
    let feed = ChannelName::parse("feed:aof").unwrap();
    let (mut live, _) = WsClient::connect(&gateway.url("alice", "")).await.unwrap();
    let mut seen = seen_from(&subscribe(&mut live, "feed:aof", None).await);
    for n in 1..=20 {
        publish(&*broker, &feed, n).await;
    }
    read_until(&mut live, "feed:aof", &mut seen, 20, "live").await;

    redis.restart().await;
    wait_ready(&gateway).await;
    for n in 21..=30 {
        publish(&*broker, &feed, n).await;
    }
    let (mut back, _) = WsClient::connect(&gateway.url("bob", "")).await.unwrap();
    let reply = subscribe(&mut back, "feed:aof", Some((10, &seen.epoch))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], seen.epoch.as_str(), "the epoch survived the restart");
    let mut recovered = Seen { start: 10, ..seen_from(&reply) };
    read_until(&mut back, "feed:aof", &mut recovered, 30, "back").await;
    read_until(&mut live, "feed:aof", &mut seen, 30, "live").await;
    assert_eq!(gateway.gateway.metrics().history_resets.get(), 0);
}

/// Without persistence a Redis restart loses the history: a recovering client is told
/// `recovered: false` (`epoch_changed`) and a live subscriber gets a `reset`, never a silent
/// gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_without_persistence_is_told_not_hidden() {
    let mut redis = RedisServer::start().await;
    let broker = redis_broker(&redis.url());
    let gateway = InProcess::start(redis_broker(&redis.url())).await;
    let feed = ChannelName::parse("feed:lost").unwrap();
    let (mut live, _) = WsClient::connect(&gateway.url("alice", "")).await.unwrap();
    let mut seen = seen_from(&subscribe(&mut live, "feed:lost", None).await);
    for n in 1..=5 {
        publish(&*broker, &feed, n).await;
    }
    read_until(&mut live, "feed:lost", &mut seen, 5, "live").await;

    redis.restart().await;
    wait_ready(&gateway).await;
    let reset = loop {
        let frame = live.recv().await.unwrap();
        if frame["channel"] == "feed:lost" {
            break frame;
        }
    };
    assert_eq!(reset["type"], "reset", "{reset}");
    assert_eq!(reset["reason"], "epoch_changed");
    assert_ne!(reset["epoch"], seen.epoch.as_str());
    let (mut back, _) = WsClient::connect(&gateway.url("bob", "")).await.unwrap();
    let reply = subscribe(&mut back, "feed:lost", Some((5, &seen.epoch))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["reason"], "epoch_changed");
    assert_eq!(reply["epoch"], reset["epoch"]);
    // Both go on from the new epoch.
    publish(&*broker, &feed, 6).await;
    for (client, who) in [(&mut live, "live"), (&mut back, "back")] {
        let frame = loop {
            let frame = client.recv().await.unwrap();
            if frame["channel"] == "feed:lost" {
                break frame;
            }
        };
        assert_eq!(frame["type"], "message", "{who}: {frame}");
        assert_eq!(frame["offset"], reset["offset"].as_u64().unwrap() + 1, "{who}: {frame}");
    }
}

/// Positions in the connect URL: `connected` reports every channel with history (the personal
/// channel too) and the missed messages follow it; a `since` that does not parse or names a
/// channel the connection does not subscribe refuses the connection with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_url_recovers_in_the_first_round_trip() {
    let redis = RedisServer::start().await;
    let broker = redis_broker(&redis.url());
    let gateway = InProcess::start(redis_broker(&redis.url())).await;
    let feed = ChannelName::parse("feed:url").unwrap();
    let (mut first, hello) =
        WsClient::connect(&gateway.url("alice", "&subscribe=feed:url,room:x")).await.unwrap();
    let position = &hello["positions"]["feed:url"];
    assert_eq!(position["offset"], 0, "{hello}");
    assert!(hello["positions"]["user:alice"]["epoch"].is_string(), "the inbox has a position: {hello}");
    assert!(hello["positions"].get("room:x").is_none(), "room keeps no history: {hello}");
    let epoch = position["epoch"].as_str().unwrap().to_string();
    for n in 1..=10 {
        publish(&*broker, &feed, n).await;
    }
    let mut seen = Seen { epoch: epoch.clone(), offsets: Vec::new(), start: 0 };
    read_until(&mut first, "feed:url", &mut seen, 3, "first").await;
    first.close().await;

    let query = format!("&subscribe=feed:url&since=feed:url~3~{epoch}");
    let (mut back, hello) = WsClient::connect(&gateway.url("alice", &query)).await.unwrap();
    assert_eq!(hello["positions"]["feed:url"], json!({"offset": 10, "epoch": epoch, "recovered": true}));
    for n in 4..=10 {
        let frame = back.recv().await.unwrap();
        assert_eq!((frame["type"].as_str(), frame["offset"].as_u64()), (Some("message"), Some(n)), "{frame}");
    }
    publish(&*broker, &feed, 11).await;
    assert_eq!(back.recv().await.unwrap()["offset"], 11);

    for bad in [
        "&subscribe=feed:url&since=feed:url~x~e",
        "&subscribe=feed:url&since=feed:other~1~e",
        "&subscribe=feed:url&since=feed:url~1~e&since=feed:url~2~e",
        "&subscribe=feed:url&since=feed:url~acked",
    ] {
        let refused = WsClient::connect(&gateway.url("alice", bad)).await;
        let Err(refused) = refused else { panic!("{bad} was accepted") };
        match refused.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "{bad}: {response:?}")
            }
            _ => panic!("{bad} refused for another reason than 400: {refused}"),
        }
    }
}

async fn wait_ready(gateway: &InProcess) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !gateway.gateway.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "gateway did not become ready again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seconds of publishing in [`a_drain_and_a_crash_lose_nothing_for_200_clients`]
/// (`HERALD_E2E_RECOVERY_SECS`, 6 by default; the full run is 20).
fn storm_seconds() -> u64 {
    std::env::var("HERALD_E2E_RECOVERY_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6)
}

/// 200 clients over two `herald gateway` processes, subscribed to a channel with history,
/// while a publisher publishes 500 messages a second: gateway A is drained (SIGTERM) and
/// started again, then gateway B is killed (`kill -9`) and started again. Every client
/// reconnects with `since` and ends with every acknowledged message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_and_a_crash_lose_nothing_for_200_clients() {
    use crate::common::GatewayProcess;
    use crate::recovery_support::process_env;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let redis = RedisServer::start().await;
    let broker = redis_broker(&redis.url());
    let ports = [herald_testkit::free_port(), herald_testkit::free_port()];
    let env = process_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a = GatewayProcess::start_on(&redis.url(), ports[0], &env).await;
    let mut b = GatewayProcess::start_on(&redis.url(), ports[1], &env).await;
    let addrs = [a.addr, b.addr];
    let (target_tx, target) = tokio::sync::watch::channel(None::<u64>);
    let connected = Arc::new(AtomicUsize::new(0));
    let reconnects = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let (target, connected, reconnects) = (target.clone(), connected.clone(), reconnects.clone());
            tokio::spawn(storm_client(i, addrs, target, connected, reconnects))
        })
        .collect();
    while connected.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publisher = Publisher::start(broker.clone(), "feed:storm", Duration::from_millis(2));
    let seconds = storm_seconds();
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    a.terminate();
    a.wait().await;
    let _a = GatewayProcess::start_on(&redis.url(), ports[0], &env).await;
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    b.kill();
    let _b = GatewayProcess::start_on(&redis.url(), ports[1], &env).await;
    tokio::time::sleep(Duration::from_secs(seconds - 2 * (seconds / 3))).await;
    let acked = publisher.finish().await;
    assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>(), "offsets 1, 2, 3, ...");
    target_tx.send_replace(acked.last().copied());
    for (i, client) in clients.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(120), client)
            .await
            .unwrap_or_else(|_| panic!("client {i} did not catch up"))
            .unwrap();
        assert_eq!(seen.start, 0, "client {i} subscribed before the first publish");
        assert_eq!(seen.offsets.len(), acked.len(), "client {i}");
        assert!(seen.offsets == acked, "client {i}: every acknowledged message once, in order");
    }
    assert!(reconnects.load(Ordering::Relaxed) >= 200, "every client reconnected at least once");
}

/// One client of the storm: connects to its gateway, reconnects with `since` (to the other
/// gateway when its own refuses) until it holds `target`, and returns what it received.
async fn storm_client(
    i: usize,
    addrs: [std::net::SocketAddr; 2],
    target: tokio::sync::watch::Receiver<Option<u64>>,
    connected: Arc<std::sync::atomic::AtomicUsize>,
    reconnects: Arc<std::sync::atomic::AtomicUsize>,
) -> Seen {
    use futures_util::StreamExt;
    use std::sync::atomic::Ordering;
    use tokio_tungstenite::tungstenite::Message;

    let user = format!("s{i}");
    let mut gw = i % 2;
    let mut seen: Option<Seen> = None;
    let done =
        |seen: &Option<Seen>| matches!((&*target.borrow(), seen), (Some(t), Some(s)) if s.last() >= *t);
    loop {
        if done(&seen) {
            return seen.unwrap();
        }
        let query = match &seen {
            None => "&subscribe=feed:storm".to_string(),
            Some(s) => format!("&subscribe=feed:storm&since=feed:storm~{}~{}", s.last(), s.epoch),
        };
        let Ok((client, hello)) =
            WsClient::connect(&crate::recovery_support::url(addrs[gw], &user, &query)).await
        else {
            gw = 1 - gw;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let position = &hello["positions"]["feed:storm"];
        match &seen {
            None => {
                seen = Some(seen_from(position));
                connected.fetch_add(1, Ordering::Relaxed);
            }
            Some(s) => {
                assert_eq!(position["recovered"], true, "{user}: {hello}");
                assert_eq!(position["epoch"], s.epoch.as_str(), "{user}");
                reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        let s = seen.as_mut().unwrap();
        let mut ws = client.into_inner();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
            let Ok(next) = next else {
                if matches!(*target.borrow(), Some(t) if s.last() >= t) {
                    break;
                }
                continue;
            };
            let Some(Ok(Message::Text(text))) = next else {
                if matches!(next, Some(Ok(Message::Ping(_) | Message::Pong(_)))) {
                    continue;
                }
                if std::env::var("HERALD_E2E_DEBUG").is_ok() {
                    eprintln!("{user} at {}: {next:?}", s.last());
                }
                break; // closed or gone: reconnect
            };
            // Messages of the channel lead with their offset; anything else is parsed.
            if let Some(rest) = text.strip_prefix("{\"offset\":") {
                let offset: u64 = rest[..rest.find(',').unwrap()].parse().unwrap();
                assert!(text.contains("\"channel\":\"feed:storm\""), "{user}: {text}");
                assert_eq!(offset, s.last() + 1, "{user}: offset {offset} after {}", s.last());
                s.offsets.push(offset);
            } else {
                let frame: Value = serde_json::from_str(&text).unwrap();
                assert_ne!(frame["type"], "reset", "{user}: {frame}");
            }
        }
    }
}
