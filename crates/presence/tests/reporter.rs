//! The gateway-side reporter, with a fake transport and paused time: batching, retries, the
//! bounded backlog and resynchronisation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use herald_presence::model::{Ack, Change, ChannelPresence, Report, ReportBody};
use herald_presence::reporter::ReportError;
use herald_presence::{PresenceConfig, Reporter, Transport};
use herald_protocol::{ChannelName, ErrorCode, NamespaceConfig, Namespaces, UserId};
use herald_protocol::{ConnectionInfo, ConnectionObserver};

/// Records reports; fails them while `down`; answers `resync` once when asked to.
#[derive(Default)]
struct Fake {
    reports: Mutex<Vec<(Report, bool)>>,
    down: AtomicBool,
    resync_once: AtomicBool,
}

/// The transport the reporter owns, sharing the fake with the test.
struct Handle(Arc<Fake>);

impl Transport for Handle {
    fn report(&self, report: Report) -> BoxFuture<'static, Result<Ack, ReportError>> {
        let up = !self.0.down.load(Ordering::SeqCst);
        self.0.reports.lock().unwrap().push((report, up));
        let resync = up && self.0.resync_once.swap(false, Ordering::SeqCst);
        async move {
            match (up, resync) {
                (false, _) => Err(ReportError::Other("down".into())),
                (true, true) => Ok(Ack::Resync),
                (true, false) => Ok(Ack::Applied),
            }
        }
        .boxed()
    }

    fn members(&self, _: &ChannelName) -> BoxFuture<'static, Result<ChannelPresence, ErrorCode>> {
        async { Err(ErrorCode::Unavailable) }.boxed()
    }
}

impl Fake {
    /// Reports presence received (`up`) since the last call.
    fn take(&self) -> Vec<Report> {
        self.reports.lock().unwrap().drain(..).filter(|(_, up)| *up).map(|(r, _)| r).collect()
    }

    fn attempts(&self) -> usize {
        self.reports.lock().unwrap().len()
    }
}

fn config() -> PresenceConfig {
    PresenceConfig {
        heartbeat_interval: Duration::from_secs(3),
        flush_interval: Duration::from_millis(200),
        max_backlog: 10,
        ..Default::default()
    }
}

fn start(config: PresenceConfig) -> (Reporter, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let mut ns = Namespaces::default();
    ns.0.insert("room".into(), NamespaceConfig::default());
    ns.0.insert("quiet".into(), NamespaceConfig { presence: false, ..Default::default() });
    (Reporter::spawn(config, ns, Arc::new(Handle(fake.clone()))), fake)
}

fn conn(id: u64, user: &str) -> ConnectionInfo {
    ConnectionInfo {
        conn_id: id,
        client_id: format!("n-{id}").into(),
        user: UserId::parse(user).unwrap(),
        info: None,
    }
}

fn changes(report: &Report) -> &[Change] {
    match &report.body {
        ReportBody::Changes(c) => c,
        ReportBody::Full(_) => panic!("expected changes, got a full report"),
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A thousand sockets' changes travel in one report, and an idle gateway sends one heartbeat
/// per interval: the cost per gateway does not grow with its sockets.
#[tokio::test(start_paused = true)]
async fn changes_of_many_sockets_travel_in_one_report_per_interval() {
    let (reporter, fake) = start(PresenceConfig { max_backlog: 10_000, ..config() });
    settle().await;
    let first = fake.take();
    assert_eq!(first.len(), 1);
    assert!(
        matches!(first[0].body, ReportBody::Full(ref c) if c.is_empty()),
        "a new gateway starts with its full state"
    );
    for i in 0..1000 {
        reporter.connected(&conn(i, &format!("u{i}")));
        reporter.subscribed(&conn(i, &format!("u{i}")), &ChannelName::parse("room:a").unwrap());
        reporter.subscribed(&conn(i, &format!("u{i}")), &ChannelName::parse("quiet:a").unwrap());
    }
    tokio::time::sleep(config().flush_interval + Duration::from_millis(10)).await;
    let batch = fake.take();
    assert_eq!(batch.len(), 1, "one report for all changes");
    assert_eq!(changes(&batch[0]).len(), 2000, "connects and room subscriptions; quiet is not tracked");
    assert_eq!(batch[0].seq, first[0].seq + 1);
    tokio::time::sleep(config().heartbeat_interval * 10).await;
    let beats = fake.take();
    assert_eq!(beats.len(), 10, "one heartbeat per interval");
    assert!(
        beats.iter().all(|r| changes(r).is_empty() && r.seq == batch[0].seq),
        "heartbeats reuse the number"
    );
}

/// A batch that failed is sent again with the same number (presence skips it if it was
/// applied after all), and changes made meanwhile follow in the next batch.
#[tokio::test(start_paused = true)]
async fn a_failed_batch_is_retried_with_its_number() {
    let (reporter, fake) = start(config());
    settle().await;
    let acked = fake.take()[0].seq;
    fake.down.store(true, Ordering::SeqCst);
    reporter.connected(&conn(1, "alice"));
    tokio::time::sleep(config().flush_interval * 2).await;
    reporter.connected(&conn(2, "bob"));
    tokio::time::sleep(config().heartbeat_interval * 3).await;
    assert!(fake.attempts() >= 3, "it keeps retrying");
    assert!(fake.attempts() <= 20, "with backoff, not in a loop");
    fake.take();
    fake.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(config().heartbeat_interval * 2).await;
    let sent = fake.take();
    assert_eq!(sent[0].seq, acked + 1);
    assert!(matches!(changes(&sent[0]), [Change::Connect { conn: 1, .. }]));
    assert_eq!(sent[1].seq, acked + 2);
    assert!(matches!(changes(&sent[1]), [Change::Connect { conn: 2, .. }]));
    assert!(reporter.stats().failures.load(Ordering::Relaxed) >= 3);
}

/// While presence is down the backlog never exceeds `max_backlog`; when it would, it is
/// dropped and the gateway's full state is sent once presence is back.
#[tokio::test(start_paused = true)]
async fn a_full_backlog_is_dropped_for_a_full_resync() {
    let (reporter, fake) = start(config());
    settle().await;
    fake.take();
    fake.down.store(true, Ordering::SeqCst);
    for i in 0..50 {
        reporter.connected(&conn(i, "carol"));
        assert!(reporter.backlog() <= config().max_backlog);
    }
    for i in 0..48 {
        reporter.disconnected(&conn(i, "carol"));
    }
    assert!(reporter.stats().dropped_backlogs.load(Ordering::Relaxed) >= 1);
    fake.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(config().heartbeat_interval * 2).await;
    let sent = fake.take();
    let ReportBody::Full(state) = &sent[0].body else { panic!("expected a full report: {sent:?}") };
    let conns: Vec<u64> = state.iter().map(|c| c.conn).collect();
    assert_eq!(conns, [48, 49], "the full state is the current one");
}

/// When presence answers `resync` (it lost the gateway, e.g. its lease ran out), the next
/// report carries the full state.
#[tokio::test(start_paused = true)]
async fn a_resync_answer_brings_the_full_state() {
    let (reporter, fake) = start(config());
    settle().await;
    fake.take();
    reporter.connected(&conn(7, "dan"));
    fake.resync_once.store(true, Ordering::SeqCst);
    tokio::time::sleep(config().flush_interval * 3).await;
    let sent = fake.take();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let ReportBody::Full(state) = &sent[1].body else { panic!("expected a full report: {sent:?}") };
    assert_eq!(state.len(), 1);
    assert_eq!(reporter.stats().resyncs.load(Ordering::Relaxed), 2, "the first report and this one");
}

/// On shutdown the reporter sends what is pending at once instead of waiting for the lease.
#[tokio::test(start_paused = true)]
async fn shutdown_sends_the_last_changes() {
    let (reporter, fake) = start(config());
    settle().await;
    fake.take();
    reporter.connected(&conn(1, "erin"));
    reporter.disconnected(&conn(1, "erin"));
    reporter.shutdown().await;
    let sent = fake.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(changes(&sent[0]).len(), 2);
}

/// A backlog longer than one report carries goes out in several reports back to back, in order.
#[tokio::test(start_paused = true)]
async fn a_long_backlog_is_split_into_bounded_reports() {
    let max = herald_presence::reporter::MAX_CHANGES_PER_REPORT as u64;
    let (reporter, fake) = start(PresenceConfig { max_backlog: 100_000, ..config() });
    settle().await;
    fake.take();
    for i in 0..max * 2 + 5 {
        reporter.connected(&conn(i, "fay"));
    }
    tokio::time::sleep(config().flush_interval + Duration::from_millis(10)).await;
    let sent = fake.take();
    let sizes: Vec<usize> = sent.iter().map(|r| changes(r).len()).collect();
    assert_eq!(sizes, [max as usize, max as usize, 5]);
    assert!(sent.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}
