//! The offline inbox, against real `herald gateway` processes on a real redis-server: what a
//! user missed while offline is kept, each device reads all of it, and acknowledgements are
//! shared by the user's devices and never move backwards.

use std::sync::Arc;

use herald_broker::{Broker, HistoryOptions, RedisBroker, RedisConfig};
use herald_protocol::{ChannelName, HistoryConfig, InboxConfig, Publication};
use herald_testkit::{RedisServer, WsClient};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::common::{GatewayProcess, recv_messages};

/// Publishes notification `n` to `channel` as the publisher API does for a personal channel:
/// encoded once, with the inbox's history options.
async fn notify(broker: &Arc<dyn Broker>, channel: &ChannelName, n: u64) -> herald_broker::PublishResult {
    let inbox = InboxConfig::default();
    let options = HistoryOptions {
        size: inbox.history_size,
        ttl: inbox.history_ttl,
        idempotency_key: None,
        idempotency_ttl: HistoryConfig::default().idempotency_ttl,
    };
    let data = RawValue::from_string(json!({"n": n}).to_string()).unwrap();
    let publication = Publication::new(channel, &data, Some("notification")).unwrap();
    broker.publish_with_history(channel, &publication.id, publication.encode(), &options).await.unwrap()
}

/// A user who was offline while notifications 1 to 50 were sent, and two gateways for their
/// devices to connect to.
struct Offline {
    _redis: RedisServer,
    broker: Arc<dyn Broker>,
    inbox: ChannelName,
    epoch: String,
    gateways: [GatewayProcess; 2],
}

impl Offline {
    async fn with_50_notifications(user: &str) -> Self {
        let redis = RedisServer::start().await;
        let broker: Arc<dyn Broker> =
            Arc::new(RedisBroker::new(RedisConfig { url: redis.url(), ..Default::default() }).unwrap());
        let inbox = ChannelName::parse(&format!("user:{user}")).unwrap();
        let mut last = None;
        for n in 1..=50 {
            last = Some(notify(&broker, &inbox, n).await);
        }
        let epoch = last.unwrap().epoch;
        let gateways =
            [GatewayProcess::start(&redis.url(), &[]).await, GatewayProcess::start(&redis.url(), &[]).await];
        Self { _redis: redis, broker, inbox, epoch, gateways }
    }
}

fn assert_offsets(reply: &Value, expected: impl IntoIterator<Item = u64>) {
    assert_eq!(reply["type"], "history", "{reply}");
    let publications = reply["publications"].as_array().unwrap();
    let got: Vec<(u64, u64)> = publications
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"]["n"].as_u64().unwrap()))
        .collect();
    let expected: Vec<(u64, u64)> = expected.into_iter().map(|o| (o, o)).collect();
    assert_eq!(got, expected);
}

/// A user offline while 50 notifications are sent: two devices on two gateways each read all
/// 50 from the inbox; one acknowledges 30, the other's older ack does not move it back, the
/// inbox counts 20 unread, and a third device that learns the acknowledged position reads
/// exactly the last 20. A notification sent while they are online reaches both, offset 51.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_user_gets_every_notification_and_shares_acks() {
    let Offline { _redis, broker, inbox, epoch, gateways } = Offline::with_50_notifications("ivy").await;

    let mut devices = Vec::new();
    for gateway in &gateways {
        let (mut device, hello) = WsClient::connect(&gateway.url("ivy")).await.unwrap();
        assert_eq!(hello["user"], "ivy");
        let all = device.request(json!({"type": "history", "channel": "user:ivy"})).await.unwrap();
        assert_offsets(&all, 1..=50);
        assert_eq!((all["offset"].as_u64(), all["epoch"].as_str()), (Some(50), Some(epoch.as_str())));
        devices.push(device);
    }

    let ack = |offset: u64| json!({"type": "ack", "id": offset, "channel": "user:ivy", "offset": offset, "epoch": epoch});
    let acked = devices[0].request(ack(30)).await.unwrap();
    assert_eq!(
        acked,
        json!({"type": "acked", "id": 30, "channel": "user:ivy", "offset": 30, "epoch": epoch})
    );
    let older = devices[1].request(ack(10)).await.unwrap();
    assert_eq!(
        (older["type"].as_str(), older["offset"].as_u64()),
        (Some("acked"), Some(30)),
        "moved backwards"
    );
    let status = broker.inbox(&inbox, InboxConfig::default().history_ttl).await.unwrap();
    assert_eq!((status.position.offset, status.acked, status.unread), (50, 30, 20));

    // A new device learns the acknowledged position from an ack of nothing (offset 0, which
    // moves nothing) and reads what is unread.
    let (mut third, _) = WsClient::connect(&gateways[1].url("ivy")).await.unwrap();
    let known = third.request(json!({"type": "ack", "channel": "user:ivy", "offset": 0})).await.unwrap();
    assert_eq!((known["offset"].as_u64(), known["epoch"].as_str()), (Some(30), Some(epoch.as_str())));
    let since = json!({"offset": known["offset"], "epoch": known["epoch"]});
    let unread =
        third.request(json!({"type": "history", "channel": "user:ivy", "since": since})).await.unwrap();
    assert_offsets(&unread, 31..=50);

    notify(&broker, &inbox, 51).await;
    for device in devices.iter_mut().chain([&mut third]) {
        let live = recv_messages(device, 1).await;
        assert_eq!((live[0]["offset"].as_u64(), live[0]["data"]["n"].as_u64()), (Some(51), Some(51)));
        assert_eq!(live[0]["event"], "notification");
    }
}

/// Sends an `ack` with request id `a` and returns the reply.
async fn ack(device: &mut WsClient, channel: &str, offset: u64, epoch: Option<&str>) -> Value {
    let mut frame = json!({"type": "ack", "id": "a", "channel": channel, "offset": offset});
    if let Some(epoch) = epoch {
        frame["epoch"] = json!(epoch);
    }
    device.request(frame).await.unwrap()
}

/// Acks are for the connection's own inbox only, within its epoch and up to its top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_outside_the_own_inbox_are_refused() {
    let redis = RedisServer::start().await;
    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::new(RedisConfig { url: redis.url(), ..Default::default() }).unwrap());
    let inbox = ChannelName::parse("user:jo").unwrap();
    for n in 1..=3 {
        notify(&broker, &inbox, n).await;
    }
    let gateway = GatewayProcess::start(&redis.url(), &[]).await;
    let (mut device, _) = WsClient::connect(&gateway.url("jo")).await.unwrap();
    for (reply, code, reason) in [
        (ack(&mut device, "user:kim", 1, None).await, "forbidden", ""),
        (ack(&mut device, "room:a", 1, None).await, "forbidden", ""),
        (ack(&mut device, "broadcast", 1, None).await, "forbidden", ""),
        (ack(&mut device, "user:jo", 4, None).await, "unrecoverable", "position_ahead"),
        (ack(&mut device, "user:jo", 1, Some("other")).await, "unrecoverable", "epoch_changed"),
    ] {
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str(), reply["id"].as_str()),
            (Some("error"), Some(code), Some("a")),
            "{reply}"
        );
        assert!(reply["message"].as_str().unwrap().starts_with(reason), "{reply}");
    }
    let status = broker.inbox(&inbox, InboxConfig::default().history_ttl).await.unwrap();
    assert_eq!((status.acked, status.unread), (0, 3), "a refused ack moved the inbox");
}

/// The scenario at connect, in one round trip each: a user offline while 50
/// notifications are sent; two new devices connect asking for everything since the
/// acknowledged position (`since=user:<id>~acked`, nothing acknowledged yet) and both get all
/// 50 after `connected`; one acknowledges 30; the other, reconnecting, is told by `connected`
/// that 20 are unread; a third device recovering from the acknowledged position gets exactly
/// the last 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_recover_the_inbox_at_connect_from_the_acknowledged_position() {
    let Offline { _redis, broker, inbox, epoch, gateways } = Offline::with_50_notifications("jo").await;
    let since_acked = |gateway: &GatewayProcess| format!("{}&since=user:jo~acked", gateway.url("jo"));

    let mut devices = Vec::new();
    for gateway in &gateways {
        let (mut device, hello) = WsClient::connect(&since_acked(gateway)).await.unwrap();
        assert_eq!(
            hello["inbox"],
            json!({"offset": 50, "epoch": epoch, "acked": 0, "unread": 50}),
            "{hello}"
        );
        assert_eq!(hello["positions"]["user:jo"]["recovered"], true, "{hello}");
        let missed = recv_messages(&mut device, 50).await;
        let offsets: Vec<u64> = missed.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, (1..=50).collect::<Vec<_>>());
        devices.push(device);
    }

    let acked = devices[0]
        .request(json!({"type": "ack", "channel": "user:jo", "offset": 30, "epoch": epoch}))
        .await
        .unwrap();
    assert_eq!(acked["offset"], 30, "{acked}");

    // The second device comes back without a position of its own: `connected` says what is
    // unread.
    drop(devices.pop());
    let (_again, hello) = WsClient::connect(&gateways[1].url("jo")).await.unwrap();
    assert_eq!(hello["inbox"], json!({"offset": 50, "epoch": epoch, "acked": 30, "unread": 20}), "{hello}");

    let (mut third, hello) = WsClient::connect(&since_acked(&gateways[0])).await.unwrap();
    assert_eq!(hello["positions"]["user:jo"]["recovered"], true, "{hello}");
    let unread = recv_messages(&mut third, 20).await;
    let got: Vec<(u64, u64)> =
        unread.iter().map(|m| (m["offset"].as_u64().unwrap(), m["data"]["n"].as_u64().unwrap())).collect();
    assert_eq!(got, (31..=50).map(|n| (n, n)).collect::<Vec<_>>());
    // Nothing else was on its way: the next frame is the next notification.
    notify(&broker, &inbox, 51).await;
    assert_eq!(recv_messages(&mut third, 1).await[0]["offset"], 51);
}
