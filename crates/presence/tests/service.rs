//! The presence service on the in-memory engine (the standalone mode) with paused time: the
//! staleness bound and the grace period, measured on tokio's clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{Broker, Delivery, MemoryBroker};
use herald_presence::model::{ConnState, Report, ReportBody};
use herald_presence::{MemoryStore, PresenceConfig, PresenceService};
use herald_protocol::{ChannelName, NamespaceConfig, Namespaces, UserId};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Collector(Mutex<Vec<String>>);

impl Delivery for Collector {
    fn deliver(&self, channel: &str, payload: Bytes) {
        let frame: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        self.0.lock().unwrap().push(format!("{channel} {} {}", frame["type"], frame["user"]));
    }
}

impl Collector {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn config() -> PresenceConfig {
    PresenceConfig {
        ttl: Duration::from_secs(10),
        heartbeat_interval: Duration::from_secs(3),
        sweep_interval: Duration::from_secs(1),
        grace: Duration::from_secs(3),
        ..Default::default()
    }
}

async fn setup() -> (PresenceService, Arc<Collector>, CancellationToken) {
    let mut ns = Namespaces::default();
    ns.0.insert("room".into(), NamespaceConfig { join_leave: true, ..Default::default() });
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let collector = Arc::new(Collector::default());
    let node = broker.subscriber(collector.clone());
    for channel in ["room:a", "presence:events"] {
        node.subscribe(&ChannelName::parse(channel).unwrap()).await.unwrap();
    }
    let store = Arc::new(MemoryStore::new(config().timings()));
    let service = PresenceService::new(config(), ns, store, broker).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(service.clone().run_sweeper(stop.clone()));
    (service, collector, stop)
}

fn full(gw: &str, seq: u64, users: &[&str]) -> Report {
    let conns = users
        .iter()
        .enumerate()
        .map(|(i, u)| ConnState {
            conn: i as u64,
            user: UserId::parse(u).unwrap(),
            info: None,
            channels: vec![ChannelName::parse("room:a").unwrap()],
        })
        .collect();
    Report { gateway: gw.into(), seq, body: ReportBody::Full(conns) }
}

/// A gateway that stops reporting loses its users `ttl` (plus at most one sweep interval)
/// after its last report: they leave the member lists and are offline in the API at once,
/// and their `leave` and `offline` events follow `grace` later: within the default bound of
/// 15 s.
#[tokio::test(start_paused = true)]
async fn a_silent_gateway_is_removed_within_the_default_bound() {
    let (service, events, _stop) = setup().await;
    service.report(&full("gw", 1, &["alice", "bob"])).await.unwrap();
    let mut seen = events.take();
    seen.sort();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let c = config();
    tokio::time::sleep(c.ttl - Duration::from_millis(10)).await;
    assert_eq!(events.take(), Vec::<String>::new(), "nothing before the lease runs out");
    tokio::time::sleep(c.sweep_interval + Duration::from_millis(20)).await;
    assert!(!service.user("alice").await.unwrap().online);
    assert_eq!(service.channel("room:a", Some(10)).await.unwrap().count, 0);
    assert_eq!(events.take(), Vec::<String>::new(), "events wait for the grace period");
    tokio::time::sleep(c.grace + c.sweep_interval).await;
    let mut gone = events.take();
    gone.sort();
    assert_eq!(
        gone,
        [
            "presence:events \"offline\" \"alice\"",
            "presence:events \"offline\" \"bob\"",
            "room:a \"leave\" \"alice\"",
            "room:a \"leave\" \"bob\"",
        ]
    );
    assert!(c.ttl + c.sweep_interval + c.grace <= Duration::from_secs(15));
    tokio::time::sleep(c.ttl * 3).await;
    assert_eq!(events.take(), Vec::<String>::new(), "each transition once");
}

/// A gateway that keeps reporting keeps its users, however long it runs.
#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_gateway_alive() {
    let (service, events, _stop) = setup().await;
    service.report(&full("gw", 1, &["carol"])).await.unwrap();
    events.take();
    for _ in 0..20 {
        tokio::time::sleep(config().heartbeat_interval).await;
        let beat = Report { gateway: "gw".into(), seq: 1, body: ReportBody::Changes(vec![]) };
        service.report(&beat).await.unwrap();
    }
    assert_eq!(events.take(), Vec::<String>::new());
    assert_eq!(service.user("carol").await.unwrap().connections, 1);
}
