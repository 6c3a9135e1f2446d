//! Hostile and careless clients against a real gateway over real sockets: broken frames, floods,
//! slow handshakes, huge replies, a Redis restart. Where the abuse could disturb others, a
//! witness client receives a steady stream meanwhile and must get every message of it.

use std::sync::Arc;
use std::time::Duration;

use crate::hostile_support::*;
use herald_broker::{Broker, MemoryBroker, RedisBroker, RedisConfig};
use herald_gateway::{ConnectionInfo, ConnectionObserver};
use herald_presence::{LocalTransport, MemoryStore, PresenceApi, PresenceConfig, Reporter};
use herald_protocol::{ChannelName, UserId};
use herald_testkit::{RedisServer, WsClient};
use serde_json::{Value, json};

fn memory() -> Arc<dyn Broker> {
    Arc::new(MemoryBroker::new())
}

/// Frames that break RFC 6455 are answered with the close frame it asks for (1007 for a text
/// frame that is not UTF-8, 1002 for the rest), not a silent TCP close.
#[tokio::test]
async fn protocol_violations_get_the_close_code_of_the_rfc() {
    let node = Node::start(memory(), |_| {}).await;
    let witness = Witness::start(&node).await;
    let ping = br#"{"type":"ping"}"#.to_vec();
    let cases: [(&str, u8, Vec<u8>, bool, u16); 6] = [
        ("a text frame that is not UTF-8", 0x81, vec![b'"', 0xFF, 0xFE, b'"'], true, 1007),
        ("an unmasked frame", 0x81, ping.clone(), false, 1002),
        ("reserved bit 1", 0xC1, ping.clone(), true, 1002),
        ("reserved bit 3", 0x91, ping.clone(), true, 1002),
        ("an unknown data opcode", 0x83, ping.clone(), true, 1002),
        ("an unknown control opcode", 0x8B, Vec::new(), true, 1002),
    ];
    for (what, first, payload, masked, code) in cases {
        let mut raw = Raw::open(node.addr, &token("mallory")).await;
        raw.send_frame(first, &payload, masked).await;
        assert_eq!(raw.ending().await, Ending::Close(code), "{what}");
    }
    witness.finish().await;
}

/// A client that stopped reading is told 4008 once it reads again, every time, rather than
/// finding the connection cut without a close frame; also when what overflowed its queue was
/// the reply to one of its own requests.
#[tokio::test]
async fn a_slow_consumer_reads_4008_not_eof() {
    // A short queue, so that the requests' replies overflow it as often as messages do.
    let node = Node::start(memory(), |c| c.outbound_queue = 8).await;
    let witness = Witness::start(&node).await;
    let big = "x".repeat(60 * 1024);
    for round in 0..5 {
        let mut raw = Raw::open(node.addr, &token(&format!("slow{round}"))).await;
        raw.send_text(&json!({"type": "subscribe", "channel": "room:slow"}).to_string()).await;
        assert_eq!(raw.next_json().await["type"], "subscribed");
        let before = node.metric("herald_gateway_slow_consumers_total");
        // The client reads nothing until its queue overflowed (bounded: 6 GiB would be far
        // beyond every buffer on the way).
        for _ in 0..100_000 {
            if node.metric("herald_gateway_slow_consumers_total") > before {
                break;
            }
            publish(&node.broker, "room:slow", json!(big)).await;
            raw.send_text(r#"{"type":"ping"}"#).await;
        }
        assert!(node.metric("herald_gateway_slow_consumers_total") > before, "never overflowed");
        assert_eq!(raw.ending().await, Ending::Close(4008), "round {round}");
    }
    witness.finish().await;
}

/// A gateway with presence in process (as in standalone mode), where another gateway's
/// `members` members of 300-byte `info` are in `room:big`.
async fn gateway_with_a_big_channel(members: u64) -> Node {
    let broker = memory();
    let config = PresenceConfig::default();
    let store = Arc::new(MemoryStore::new(config.timings()));
    let api = PresenceApi::new(
        config.clone(),
        &["key-0123456789abcdef".into()],
        namespaces(),
        store,
        broker.clone(),
    )
    .unwrap();
    let transport = Arc::new(LocalTransport(api.service().clone()));
    let reporter = Reporter::spawn(config.clone(), namespaces(), transport.clone());
    let node = Node::start_observed(broker, Arc::new(reporter), |_| {}).await;
    let others = Reporter::spawn(config, namespaces(), transport);
    let channel = ChannelName::parse("room:big").unwrap();
    let info =
        serde_json::value::RawValue::from_string(json!({"name": "n".repeat(300)}).to_string()).unwrap();
    for i in 0..members {
        let conn = ConnectionInfo {
            conn_id: i + 1,
            client_id: format!("other-{i}").into(),
            user: UserId::parse(&format!("member{i:05}")).unwrap(),
            info: Some(Arc::from(info.clone())),
        };
        others.connected(&conn);
        others.subscribed(&conn, &channel);
    }
    // Its task keeps reporting them; presence learns of them in the background, and the
    // tests wait until it lists all of them.
    drop(others);
    node
}

/// Asks for the members of `room:big` until all `expected` are listed; returns the reply's
/// length. Every reply must be a `presence` frame.
async fn wait_for_members(client: &mut WsClient, expected: usize) -> usize {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let reply =
            client.request(json!({"type": "presence", "id": 1, "channel": "room:big"})).await.unwrap();
        let text = reply.to_string();
        assert_eq!(reply["type"], "presence", "{:.200}", text);
        if reply["members"].as_array().unwrap().len() == expected {
            return text.len();
        }
        assert!(tokio::time::Instant::now() < deadline, "presence never listed {expected} members");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Presence with 3000 members of 300-byte `info` closed the asker with 1006; with the 10000
/// members the docs promise (`presence.max_members`), the asker gets the whole list, over
/// three times the 1 MiB write buffer.
#[tokio::test]
async fn a_member_list_over_a_mebibyte_is_delivered() {
    let node = gateway_with_a_big_channel(9999).await;
    let witness = Witness::start(&node).await;
    let mut asker = node.connect("asker").await;
    asker.subscribe("room:big").await.unwrap();
    let len = wait_for_members(&mut asker, 10000).await;
    assert!(len > 3 << 20, "the reply ({len} bytes) is over three times the 1 MiB write buffer");
    // The connection is still usable.
    assert_eq!(asker.request(json!({"type": "ping", "id": 2})).await.unwrap()["type"], "pong");
    witness.finish().await;
}

/// A client that asks for a mebibyte of members again and again without reading overflows its
/// queue with the replies, and is told so with 4008 when it reads, not with a bare EOF.
#[tokio::test]
async fn replies_that_overflow_the_queue_close_with_4008() {
    let node = gateway_with_a_big_channel(3000).await;
    let mut asker = node.connect("asker").await;
    asker.subscribe("room:big").await.unwrap();
    wait_for_members(&mut asker, 3001).await;
    let mut greedy = Raw::open(node.addr, &token("greedy")).await;
    greedy.send_text(&json!({"type": "subscribe", "channel": "room:big"}).to_string()).await;
    assert_eq!(greedy.next_json().await["type"], "subscribed");
    // 64 MiB of replies asked for, far beyond every buffer on the way.
    for _ in 0..64 {
        greedy.send_text(&json!({"type": "presence", "channel": "room:big"}).to_string()).await;
    }
    assert_eq!(greedy.ending().await, Ending::Close(4008));
    assert_eq!(node.metric("herald_gateway_slow_consumers_total"), 1.0);
}

/// Once `/readyz` says ready after a Redis restart it stays ready, and connections made right
/// then are all accepted: a canary sent during the outage does not count against it.
#[tokio::test]
async fn readiness_holds_after_redis_comes_back() {
    let mut redis = RedisServer::start().await;
    let config = RedisConfig {
        url: redis.url(),
        reconnect_max: Duration::from_millis(300),
        subscribe_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::new(config).unwrap());
    // The default canary timings: a blip shorter than the canary interval leaves the last
    // canary's verdict standing, and the canary out during the blip is lost.
    let node = Node::start(broker, |c| {
        c.canary_interval = Duration::from_secs(2);
        c.canary_timeout = Duration::from_secs(3);
    })
    .await;
    for outage in 0..2 {
        redis.kill().await;
        let deadline = tokio::time::Instant::now() + BOUND;
        while readyz(node.addr).await {
            assert!(tokio::time::Instant::now() < deadline, "still ready without Redis");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        redis.restart().await;
        while !readyz(node.addr).await {
            assert!(tokio::time::Instant::now() < deadline, "not ready again after Redis came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // From here on, ready; checked throughout, and for a canary interval and timeout after.
        let addr = node.addr;
        let watcher = tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(6);
            let mut flaps = 0;
            while tokio::time::Instant::now() < until {
                flaps += usize::from(!readyz(addr).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            flaps
        });
        let mut clients = Vec::new();
        for i in 0..300 {
            let url = node.url(&token(&format!("back{outage}-{i}")));
            match WsClient::connect(&url).await {
                Ok((client, _)) => clients.push(client),
                Err(e) => panic!("connection {i} after the recovery refused: {e}"),
            }
        }
        assert_eq!(watcher.await.unwrap(), 0, "/readyz said not ready after it said ready (outage {outage})");
        drop(clients);
    }
}

/// Slowloris: sockets that trickle their request head are dropped once
/// `gateway.handshake_timeout` passed, long before the 10 s default, while a witness and new
/// clients are served as usual.
#[tokio::test]
async fn slow_handshakes_are_cut_off_after_the_handshake_timeout() {
    let node = Node::start(memory(), |c| c.handshake_timeout = Duration::from_millis(500)).await;
    let witness = Witness::start(&node).await;
    let started = tokio::time::Instant::now();
    let mut lorises = Vec::new();
    for _ in 0..200 {
        let mut raw = Raw::connect(node.addr).await;
        tokio::io::AsyncWriteExt::write_all(&mut raw.stream, b"GET /ws?token=").await.unwrap();
        lorises.push(raw);
    }
    // One byte per socket every 100 ms, until the server hung up on each of them.
    let trickle = tokio::spawn(async move {
        let mut closed = vec![false; lorises.len()];
        while closed.iter().any(|c| !c) {
            for (raw, closed) in lorises.iter_mut().zip(&mut closed) {
                *closed = *closed || raw.hung_up().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let client = node.connect("newcomer").await;
    tokio::time::timeout(BOUND, trickle).await.expect("slow handshakes were not cut off").unwrap();
    assert!(started.elapsed() < Duration::from_secs(8), "cut off after {:?}", started.elapsed());
    assert!(node.limit_hits("handshake_timeout") >= 200.0);
    drop(client);
    witness.finish().await;
}

/// Two `Authorization` headers are refused with 400: which one counts would be a guess.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let node = Node::start(memory(), |_| {}).await;
    let (alice, bob) = (token("alice"), token("bob"));
    let extra = format!("Authorization: Bearer {alice}\r\nAuthorization: Bearer {bob}\r\n");
    let response = http(node.addr, &upgrade_request(node.addr, "", &extra)).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.contains("malformed_frame") && response.contains("more than one Authorization"),
        "{response}"
    );
    let one = format!("Authorization: Bearer {alice}\r\n");
    let mut raw = Raw::connect(node.addr).await;
    tokio::io::AsyncWriteExt::write_all(&mut raw.stream, upgrade_request(node.addr, "", &one).as_bytes())
        .await
        .unwrap();
    let head = raw.read_head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "one header is fine: {head}");
}

/// A token with `"exp": null` is refused as malformed (401) rather than taken as a token that
/// never expires; a token without `exp` does not expire.
#[tokio::test]
async fn a_token_with_a_null_exp_is_refused() {
    let node = Node::start(memory(), |_| {}).await;
    let null_exp = token_with(&json!({"sub": "alice", "exp": null}));
    let response = http(node.addr, &upgrade_request(node.addr, &format!("token={null_exp}"), "")).await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("unauthorized") && response.contains("`exp` is null"), "{response}");
    let no_exp = token_with(&json!({"sub": "alice"}));
    let (_, hello) = WsClient::connect(&node.url(&no_exp)).await.unwrap();
    assert_eq!(hello["user"], "alice");
}

/// A client over its frame rate is read no faster than the rate: its frames are handled late
/// and in order, none refused, and it is told `rate_limited` once; kept up, it is closed with
/// 4029. At no time has it more answers than the burst and the rate allow by then.
#[tokio::test]
async fn a_frame_flood_is_read_at_the_rate_then_closed() {
    let (rate, burst) = (50.0, 50);
    let node = Node::start(memory(), |c| {
        c.frame_rate = 50;
        c.frame_burst = 50;
        c.rate_limit_close_after = Duration::from_secs(1);
    })
    .await;
    let witness = Witness::start(&node).await;
    // Before the connection, so before its bucket was filled.
    let started = tokio::time::Instant::now();
    let mut flooder = Raw::open(node.addr, &token("flooder")).await;
    let ping = |i: u64| json!({"type": "ping", "id": i}).to_string();
    // The burst: all handled at once, and nothing said about the rate.
    for i in 0..burst {
        flooder.send_text(&ping(i)).await;
    }
    for i in 0..burst {
        assert_eq!(flooder.next_json().await, json!({"type": "pong", "id": i}));
    }
    // Then 2000 more at once (60 KB: the socket buffers take them without waiting).
    let flood: Vec<u8> =
        (burst..burst + 2000).flat_map(|i| encode_frame(0x81, ping(i).as_bytes(), true)).collect();
    tokio::io::AsyncWriteExt::write_all(&mut flooder.stream, &flood).await.unwrap();
    let (mut handled, mut notices) = (burst, 0);
    let ending = loop {
        let frame = flooder.read_frame().await.expect("a close frame before the end");
        if let Some(ending) = frame.ending() {
            break ending;
        }
        if frame.opcode != 0x1 {
            continue;
        }
        let reply: Value = serde_json::from_slice(&frame.payload).unwrap();
        if reply["type"] == "error" {
            assert_eq!((&reply["code"], reply.get("id")), (&json!("rate_limited"), None), "{reply}");
            notices += 1;
            continue;
        }
        assert_eq!(reply, json!({"type": "pong", "id": handled}), "handled in order, none dropped");
        handled += 1;
        let allowed = burst as f64 + rate * started.elapsed().as_secs_f64() + 1.0;
        assert!(handled as f64 <= allowed, "{handled} frames handled after {:?}", started.elapsed());
    };
    assert_eq!(ending, Ending::Close(4029));
    assert!(handled > burst, "a frame over the burst is handled late, not refused");
    assert!(handled < burst + 2000, "closed before the flood was all read");
    assert_eq!(notices, 1, "told once");
    assert!(node.limit_hits("frame_rate") >= 1.0);
    assert_eq!(node.limit_hits("frame_rate_close"), 1.0);
    witness.finish().await;
}

/// Over `gateway.max_handshakes` handshakes in progress, a new connection is answered 503 with
/// `Retry-After` at once (not after the handshake timeout), and accepted again once slots free.
#[tokio::test]
async fn handshakes_over_the_cap_get_503_with_retry_after_at_once() {
    let node = Node::start(memory(), |c| {
        c.max_handshakes = 8;
        c.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let witness = Witness::start(&node).await;
    // Eight sockets that never send their request head hold every slot.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(Raw::connect(node.addr).await);
    }
    let request = upgrade_request(node.addr, &format!("token={}", token("late")), "");
    let mut refused = None;
    for _ in 0..100 {
        let asked = tokio::time::Instant::now();
        let mut raw = Raw::connect(node.addr).await;
        tokio::io::AsyncWriteExt::write_all(&mut raw.stream, request.as_bytes()).await.unwrap();
        let head = raw.read_head().await;
        if head.starts_with("HTTP/1.1 503") {
            refused = Some((head, raw.read_to_end().await, asked.elapsed()));
            break;
        }
        // The idle sockets' tasks may not all hold their slot yet.
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }
    let (head, body, took) = refused.expect("never refused over the cap");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert!(body.contains("unavailable"), "{body}");
    assert!(took < Duration::from_secs(10), "answered after {took:?}, not at once");
    assert!(node.limit_hits("max_handshakes") >= 1.0);
    drop(idle);
    let deadline = tokio::time::Instant::now() + BOUND;
    while WsClient::connect(&node.url(&token("later"))).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    witness.finish().await;
}

/// `data` nested deeper than `gateway.max_data_depth` is refused with `malformed_frame`;
/// data at the limit is published.
#[tokio::test]
async fn data_nested_too_deep_is_refused() {
    let node = Node::start(memory(), |c| c.max_data_depth = 4).await;
    let mut client = node.connect("nester").await;
    client.subscribe("chat:deep").await.unwrap();
    let deep = json!({"a": [[{"b": 1}]]});
    let reply = client
        .request(json!({"type": "publish", "id": 1, "channel": "chat:deep", "data": {"x": deep}}))
        .await
        .unwrap();
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("malformed_frame")),
        "{reply}"
    );
    assert_eq!(reply["id"], 1);
    client
        .send_json(json!({"type": "publish", "id": 2, "channel": "chat:deep", "data": deep}))
        .await
        .unwrap();
    let mut frames = [client.recv().await.unwrap(), client.recv().await.unwrap()];
    frames.sort_by_key(|f| f["type"].as_str().map(String::from));
    assert_eq!((frames[0]["type"].as_str(), &frames[0]["data"]), (Some("message"), &deep));
    assert_eq!(frames[1]["type"], "published", "{}", frames[1]);
    assert_eq!(node.limit_hits("max_data_depth"), 1.0);
}

/// Malformed frames each get their error and leave the connection open.
#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays() {
    let node = Node::start(memory(), |_| {}).await;
    let witness = Witness::start(&node).await;
    let mut client = node.connect("mallory").await;
    let long_id = "i".repeat(1000);
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "malformed_frame"),
        ("[1,2]".into(), "malformed_frame"),
        ("{}".into(), "malformed_frame"),
        (r#"{"type":"dance"}"#.into(), "unknown_type"),
        (r#"{"type":"subscribe"}"#.into(), "malformed_frame"),
        (r#"{"type":"subscribe","channel":"no spaces"}"#.into(), "invalid_channel"),
        (r#"{"type":"subscribe","channel":"nowhere:x"}"#.into(), "unknown_channel"),
        (r#"{"type":"publish","channel":"room:x","data":1}"#.into(), "forbidden"),
        (format!(r#"{{"type":"ping","id":"{long_id}"}}"#), "malformed_frame"),
        (format!(r#"{{"type":"publish","channel":"chat:x","data":{deep}}}"#), "malformed_frame"),
    ];
    for (frame, code) in cases {
        client.send_text(frame.clone()).await.unwrap();
        let reply = client.recv().await.unwrap();
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame:.80}"
        );
    }
    client.send_binary(vec![0, 1, 2]).await.unwrap();
    assert_eq!(client.recv().await.unwrap()["code"], "malformed_frame");
    assert_eq!(client.request(json!({"type": "ping", "id": 7})).await.unwrap()["type"], "pong");
    witness.finish().await;
}

/// A frame over `gateway.max_message_size` closes the connection with 1009, also when its
/// header claims an absurd length and the payload never comes.
#[tokio::test]
async fn huge_frames_are_closed_with_1009() {
    let node = Node::start(memory(), |_| {}).await;
    let witness = Witness::start(&node).await;
    let mut client = node.connect("mallory").await;
    let _ = client.send_text(format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(1 << 20))).await;
    assert_eq!(client.closed().await.unwrap().code, 1009);
    let mut raw = Raw::open(node.addr, &token("mallory")).await;
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &header).await.unwrap();
    assert_eq!(raw.ending().await, Ending::Close(1009));
    witness.finish().await;
}

/// A subscription flood gets `limit_exceeded` past `gateway.max_subscriptions` and leaves the
/// node's channel map no larger than what was allowed.
#[tokio::test]
async fn a_subscription_flood_stops_at_the_limit() {
    let node = Node::start(memory(), |c| {
        c.max_subscriptions = 100;
        c.frame_burst = 2000;
    })
    .await;
    let witness = Witness::start(&node).await;
    let mut flooder = Raw::open(node.addr, &token("flooder")).await;
    let channels_before = node.gateway.hub().channel_count();
    for i in 0..1000 {
        flooder.send_text(&json!({"type": "subscribe", "channel": format!("room:f{i}")}).to_string()).await;
    }
    let (mut subscribed, mut refused) = (0, 0);
    for _ in 0..1000 {
        let reply = flooder.next_json().await;
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("subscribed"), _) => subscribed += 1,
            (Some("error"), Some("limit_exceeded")) => refused += 1,
            _ => panic!("unexpected {reply}"),
        }
    }
    assert_eq!((subscribed, refused), (100, 900));
    assert_eq!(node.gateway.hub().channel_count(), channels_before + 100);
    witness.finish().await;
}

/// A flood of WebSocket pings, written as fast as the socket takes them, is read at the frame
/// rate: the pongs come no faster than the burst and the rate allow, so none pile up in the
/// gateway (and the flooder is no slow consumer), the flood ends in 4029, and a witness gets
/// its stream meanwhile.
#[tokio::test]
async fn a_ping_flood_is_read_at_the_rate_and_disturbs_no_one() {
    // The defaults: 100 frames per second, bursts of 200.
    let (rate, burst) = (100.0, 200.0);
    let node = Node::start(memory(), |c| {
        c.rate_limit_close_after = Duration::from_secs(2);
        // The flooder reads its close frame while it is still writing: time enough for that
        // before the gateway hangs up on it.
        c.close_timeout = Duration::from_secs(5);
    })
    .await;
    let witness = Witness::start(&node).await;
    let started = tokio::time::Instant::now();
    let (mut reader, mut writer) = Raw::open(node.addr, &token("flooder")).await.split();
    let pings = encode_frame(0x89, b"p", true).repeat(10_000);
    let flood = tokio::spawn(async move {
        while tokio::io::AsyncWriteExt::write_all(&mut writer.stream, &pings).await.is_ok() {}
    });
    let (mut pongs, mut notices) = (0, 0);
    let ending = loop {
        let frame = reader.read_frame().await.expect("a close frame before the end");
        match frame.opcode {
            0xA => {
                pongs += 1;
                let allowed = burst + rate * started.elapsed().as_secs_f64() + 1.0;
                assert!(pongs as f64 <= allowed, "{pongs} pongs after {:?}", started.elapsed());
            }
            0x1 => {
                let reply: Value = serde_json::from_slice(&frame.payload).unwrap();
                assert_eq!(reply["code"], "rate_limited", "{reply}");
                notices += 1;
            }
            _ => {}
        }
        if let Some(ending) = frame.ending() {
            break ending;
        }
    };
    flood.abort();
    assert_eq!(ending, Ending::Close(4029));
    assert!(pongs >= burst as u64, "the burst's pings are answered: {pongs}");
    assert_eq!(notices, 1, "told once");
    assert_eq!(node.metric("herald_gateway_slow_consumers_total"), 0.0);
    assert_eq!(node.limit_hits("frame_rate_close"), 1.0);
    witness.finish().await;
}

/// Thousands of sockets for one user are served (each is a connection of its own), and the
/// witness's stream is not disturbed meanwhile; when they go, nothing of them stays.
#[tokio::test]
async fn thousands_of_sockets_for_one_user() {
    let node = Node::start(memory(), |_| {}).await;
    let witness = Witness::start(&node).await;
    let url = node.url(&token("mallory"));
    let mut sockets = Vec::new();
    for _ in 0..20 {
        let batch = (0..100).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { WsClient::connect(&url).await.unwrap().0 })
        });
        for socket in futures_util::future::join_all(batch).await {
            sockets.push(socket.unwrap());
        }
    }
    assert_eq!(node.gateway.connections(), 2001);
    publish(&node.broker, "user:mallory", json!("to every socket")).await;
    for socket in &mut sockets {
        assert_eq!(socket.recv().await.unwrap()["data"], "to every socket");
    }
    drop(sockets);
    let deadline = tokio::time::Instant::now() + BOUND;
    while node.gateway.connections() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "{} connections left", node.gateway.connections());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    witness.finish().await;
}
