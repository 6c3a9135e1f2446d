//! What the recovery tests share: gateways with a channel namespace that keeps history (in
//! process, or as `herald gateway` child processes that can be drained and killed), a
//! publisher that publishes with history straight through the broker, as the publisher API
//! does, and a client that checks every offset it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{Broker, HistoryOptions, RedisBroker, RedisConfig};
use herald_gateway::{ChannelConfig, Gateway, GatewayConfig};
use herald_protocol::{ChannelName, NamespaceConfig, Namespaces, Publication};
use herald_testkit::WsClient;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{SECRET, auth};

/// Messages kept per `feed:*` channel: more than any test publishes.
pub const FEED_HISTORY: usize = 20_000;

/// `feed:*` keeps history; `room:*` does not.
pub fn history_namespaces() -> Namespaces {
    let mut ns = Namespaces::default();
    ns.0.insert("room".into(), NamespaceConfig::default());
    let feed = NamespaceConfig {
        history_size: FEED_HISTORY,
        history_ttl: Duration::from_secs(600),
        ..Default::default()
    };
    ns.0.insert("feed".into(), feed);
    ns
}

/// A Redis broker of the test process, for publishing and for the gateways in process.
pub fn redis_broker(url: &str) -> Arc<dyn Broker> {
    let config = RedisConfig {
        url: url.into(),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        subscribe_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    Arc::new(RedisBroker::new(config).unwrap())
}

/// A gateway served in this process until dropped.
pub struct InProcess {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    stop: CancellationToken,
}

impl InProcess {
    pub async fn start(broker: Arc<dyn Broker>) -> Self {
        let channels = ChannelConfig { namespaces: history_namespaces(), ..Default::default() };
        let gateway = Gateway::new(GatewayConfig::default(), &auth(), channels, broker).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(herald_gateway::serve(gateway.clone(), listener, stop.clone().cancelled_owned()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !gateway.is_ready() {
            assert!(tokio::time::Instant::now() < deadline, "gateway did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { addr, gateway, stop }
    }

    pub fn url(&self, user: &str, query: &str) -> String {
        url(self.addr, user, query)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn url(addr: SocketAddr, user: &str, query: &str) -> String {
    let token = herald_gateway::mint(SECRET, user, Duration::from_secs(3600)).unwrap();
    format!("ws://{addr}/ws?token={token}{query}")
}

/// What `herald gateway` processes of the recovery tests add to the common test settings:
/// a quick Redis reconnect, a short drain, and the `feed` namespace with history.
pub fn process_env() -> [(&'static str, String); 4] {
    [
        ("HERALD_REDIS__RECONNECT_MIN", "20ms".into()),
        ("HERALD_GATEWAY__DRAIN_WINDOW", "1s".into()),
        ("HERALD_NAMESPACES__FEED__HISTORY_SIZE", FEED_HISTORY.to_string()),
        ("HERALD_NAMESPACES__FEED__HISTORY_TTL", "10m".into()),
    ]
}

/// Publishes `{"n": <i>}` to `channel` with history every `interval` until stopped; the
/// offsets acknowledged by the broker, in order.
pub struct Publisher {
    pub acked: Arc<Mutex<Vec<u64>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub fn start(broker: Arc<dyn Broker>, channel: &str, interval: Duration) -> Self {
        let channel = ChannelName::parse(channel).unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (acked, stop) = (acked.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    tick.tick().await;
                    n += 1;
                    let offset = publish(&*broker, &channel, n).await;
                    acked.lock().unwrap().push(offset);
                }
            }
        });
        Self { acked, stop, task }
    }

    /// How many were acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops and returns every acknowledged offset.
    pub async fn finish(self) -> Vec<u64> {
        self.stop.cancel();
        self.task.await.unwrap();
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// Publishes `{"n": n}` to `channel` with history, as the publisher API does; its offset. A
/// publish that fails (Redis just restarted) is retried with the same idempotency key, so it
/// is delivered once whatever happened to the first attempt.
pub async fn publish(broker: &dyn Broker, channel: &ChannelName, n: u64) -> u64 {
    let data = serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
    let publication = Publication::new(channel, &data, None).unwrap();
    let options = HistoryOptions {
        size: FEED_HISTORY,
        ttl: Duration::from_secs(600),
        idempotency_key: Some(publication.id.clone()),
        idempotency_ttl: Duration::from_secs(60),
    };
    let payload: Bytes = publication.encode();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match broker.publish_with_history(channel, &publication.id, payload.clone(), &options).await {
            Ok(result) => return result.offset,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "publish {n} kept failing: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A client's view of one channel with history: every offset it was given, checked to go up
/// by exactly one.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub epoch: String,
    pub offsets: Vec<u64>,
    /// Where the client stood when it began receiving (the `subscribed`/`connected` offset).
    pub start: u64,
}

impl Seen {
    /// The last offset processed.
    pub fn last(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(self.start)
    }

    /// Takes a `message` frame of the channel; panics on a gap or a duplicate.
    pub fn take(&mut self, frame: &Value, who: &str) {
        let offset = frame["offset"].as_u64().unwrap_or_else(|| panic!("{who}: no offset in {frame}"));
        assert_eq!(offset, self.last() + 1, "{who}: offset {offset} after {}", self.last());
        self.offsets.push(offset);
    }
}

/// Reads `channel`'s messages on `client` until its offset reaches `until`; any other frame
/// of the channel (a `reset`) fails the test.
pub async fn read_until(client: &mut WsClient, channel: &str, seen: &mut Seen, until: u64, who: &str) {
    while seen.last() < until {
        let frame = client.recv().await.unwrap_or_else(|e| panic!("{who} at {}: {e}", seen.last()));
        if frame["channel"] != channel {
            continue;
        }
        assert_eq!(frame["type"], "message", "{who}: unexpected {frame}");
        seen.take(&frame, who);
    }
}
