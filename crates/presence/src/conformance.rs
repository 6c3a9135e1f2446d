//! What every presence store promises, as one suite run against each engine (see
//! `tests/conformance.rs`). The in-memory engine runs it on tokio's paused clock; for Redis,
//! which keeps its own clock, time is real, with short timings.

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::{ChannelName, UserId};

use crate::model::{Ack, Change, ConnState, Event, Info, Report, ReportBody};
use crate::store::{PresenceStore, Timings};

/// The timings every suite store must be built with.
pub const TIMINGS: Timings = Timings { ttl: Duration::from_millis(400), grace: Duration::from_millis(300) };

/// Builds a fresh, empty store for one case; the name keeps cases apart on a shared backend.
pub trait Factory: Fn(&str) -> Arc<dyn PresenceStore> {}
impl<F: Fn(&str) -> Arc<dyn PresenceStore>> Factory for F {}

/// Runs every case.
pub async fn run_all(make: impl Factory) {
    a_user_on_two_gateways_is_one_online_user(make("two-gateways")).await;
    members_join_and_leave_once_per_user(make("members")).await;
    offline_waits_for_the_grace_period_and_happens_once(make("offline")).await;
    a_reconnect_within_grace_does_not_flap(make("reconnect")).await;
    batches_are_numbered(make("seq")).await;
    a_full_report_changes_only_what_differs(make("full")).await;
    an_expired_gateway_is_removed_as_a_whole(make("lease")).await;
    member_lists_are_bounded_but_counts_exact(make("limit")).await;
    large_gateways_are_handled_whole(make("large")).await;
}

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn ch(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

fn info(s: &str) -> Info {
    Some(Arc::from(s))
}

fn connect(conn: u64, u: &str) -> Change {
    Change::Connect { conn, user: user(u), info: info(&format!(r#"{{"name":"{u}"}}"#)) }
}

fn sub(conn: u64, u: &str, c: &str) -> Change {
    Change::Subscribe { conn, user: user(u), channel: ch(c) }
}

fn unsub(conn: u64, u: &str, c: &str) -> Change {
    Change::Unsubscribe { conn, user: user(u), channel: ch(c) }
}

fn disconnect(conn: u64, u: &str) -> Change {
    Change::Disconnect { conn, user: user(u) }
}

fn full(gw: &str, seq: u64, conns: Vec<ConnState>) -> Report {
    Report { gateway: gw.into(), seq, body: ReportBody::Full(conns) }
}

fn changes(gw: &str, seq: u64, changes: Vec<Change>) -> Report {
    Report { gateway: gw.into(), seq, body: ReportBody::Changes(changes) }
}

async fn apply(store: &Arc<dyn PresenceStore>, report: Report) -> Vec<Event> {
    let (ack, events) = store.report(&report).await.unwrap();
    assert_eq!(ack, Ack::Applied, "{report:?}");
    events
}

fn online(u: &str) -> Event {
    Event::Online { user: user(u), info: info(&format!(r#"{{"name":"{u}"}}"#)) }
}

/// Sweeps until `wait` has passed, collecting the events, while `gateways` (id, last batch)
/// renew their leases.
async fn sweep_alive(store: &Arc<dyn PresenceStore>, gateways: &[(&str, u64)], wait: Duration) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = Vec::new();
    while tokio::time::Instant::now() < deadline {
        for (gw, seq) in gateways {
            assert_eq!(apply(store, changes(gw, *seq, vec![])).await, vec![]);
        }
        events.extend(store.sweep().await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    events
}

/// Sweeps until `wait` has passed, collecting the events.
async fn sweep_for(store: &Arc<dyn PresenceStore>, wait: Duration) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = Vec::new();
    while tokio::time::Instant::now() < deadline {
        events.extend(store.sweep().await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    events
}

async fn a_user_on_two_gateways_is_one_online_user(store: Arc<dyn PresenceStore>) {
    let ev = apply(&store, full("a", 1, vec![])).await;
    assert!(ev.is_empty());
    apply(&store, full("b", 1, vec![])).await;
    assert_eq!(apply(&store, changes("a", 2, vec![connect(1, "alice")])).await, vec![online("alice")]);
    assert_eq!(apply(&store, changes("b", 2, vec![connect(1, "alice")])).await, vec![]);
    let found = store.users(&[user("alice"), user("nobody")]).await.unwrap();
    assert!(found[0].online);
    assert_eq!(found[0].connections, 2);
    assert_eq!(found[0].gateways, vec!["a".to_string(), "b".to_string()]);
    assert!(!found[1].online);
    assert_eq!(found[1].connections, 0);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.online_users, stats.connections), (1, 2));
    assert_eq!(apply(&store, changes("a", 3, vec![disconnect(1, "alice")])).await, vec![]);
    let found = store.users(&[user("alice")]).await.unwrap();
    assert_eq!((found[0].online, found[0].connections), (true, 1));
}

async fn members_join_and_leave_once_per_user(store: Arc<dyn PresenceStore>) {
    apply(&store, full("a", 1, vec![])).await;
    apply(&store, full("b", 1, vec![])).await;
    let ev = apply(&store, changes("a", 2, vec![connect(1, "alice"), sub(1, "alice", "room:x")])).await;
    let join = Event::Join { channel: ch("room:x"), user: user("alice"), info: info(r#"{"name":"alice"}"#) };
    assert_eq!(ev, vec![online("alice"), join]);
    let ev = apply(
        &store,
        changes("b", 2, vec![connect(7, "alice"), sub(7, "alice", "room:x"), sub(7, "alice", "room:x")]),
    )
    .await;
    assert_eq!(ev, vec![], "a second connection of a member joins nothing");
    apply(&store, changes("b", 3, vec![connect(8, "bob"), sub(8, "bob", "room:x")])).await;
    let members = store.channel(&ch("room:x"), 100).await.unwrap();
    assert_eq!(members.count, 2);
    assert_eq!(members.members[0].user, user("alice"));
    assert_eq!(members.members[0].connections, 2);
    assert_eq!(members.members[0].info.as_deref(), Some(r#"{"name":"alice"}"#));
    assert_eq!(members.members[1].user, user("bob"));
    assert_eq!(apply(&store, changes("a", 3, vec![unsub(1, "alice", "room:x")])).await, vec![]);
    let ev = apply(&store, changes("b", 4, vec![disconnect(7, "alice")])).await;
    assert_eq!(ev, vec![], "leave waits for the grace period");
    assert_eq!(store.channel(&ch("room:x"), 100).await.unwrap().count, 1, "the list shows the truth at once");
    assert_eq!(store.channel(&ch("room:empty"), 100).await.unwrap().count, 0);
    // Bob leaves and is back within the grace period: neither a leave nor a second join.
    let bob_out = unsub(8, "bob", "room:x");
    assert_eq!(apply(&store, changes("b", 5, vec![bob_out])).await, vec![]);
    assert_eq!(apply(&store, changes("b", 6, vec![sub(8, "bob", "room:x")])).await, vec![]);
    let events = sweep_alive(&store, &[("a", 3), ("b", 6)], TIMINGS.grace + Duration::from_millis(200)).await;
    assert_eq!(events, vec![Event::Leave { channel: ch("room:x"), user: user("alice") }], "alice's, once");
}

async fn offline_waits_for_the_grace_period_and_happens_once(store: Arc<dyn PresenceStore>) {
    apply(&store, full("a", 1, vec![])).await;
    apply(&store, changes("a", 2, vec![connect(1, "carol")])).await;
    apply(&store, changes("a", 3, vec![disconnect(1, "carol")])).await;
    assert!(!store.users(&[user("carol")]).await.unwrap()[0].online, "the API shows the truth at once");
    assert_eq!(store.sweep().await.unwrap(), vec![], "offline waits for the grace period");
    tokio::time::sleep(TIMINGS.grace + Duration::from_millis(50)).await;
    apply(&store, changes("a", 3, vec![])).await;
    let (one, two) = tokio::join!(store.sweep(), store.sweep());
    let mut all = one.unwrap();
    all.extend(two.unwrap());
    assert_eq!(all, vec![Event::Offline { user: user("carol") }], "exactly one offline, however many sweep");
    assert_eq!(store.stats().await.unwrap().online_users, 0);
}

async fn a_reconnect_within_grace_does_not_flap(store: Arc<dyn PresenceStore>) {
    apply(&store, full("a", 1, vec![])).await;
    apply(&store, full("b", 1, vec![])).await;
    apply(&store, changes("a", 2, vec![connect(1, "dave")])).await;
    apply(&store, changes("a", 3, vec![disconnect(1, "dave")])).await;
    assert_eq!(apply(&store, changes("b", 2, vec![connect(5, "dave")])).await, vec![], "no second online");
    tokio::time::sleep(TIMINGS.grace + Duration::from_millis(50)).await;
    apply(&store, changes("b", 2, vec![])).await;
    assert_eq!(store.sweep().await.unwrap(), vec![], "no offline after a reconnect");
}

async fn batches_are_numbered(store: Arc<dyn PresenceStore>) {
    let (ack, _) = store.report(&changes("new", 1, vec![connect(1, "erin")])).await.unwrap();
    assert_eq!(ack, Ack::Resync, "an unknown gateway must send its full state");
    apply(&store, full("new", 1, vec![])).await;
    assert_eq!(apply(&store, changes("new", 2, vec![connect(1, "erin")])).await, vec![online("erin")]);
    assert_eq!(
        apply(&store, changes("new", 2, vec![connect(1, "erin")])).await,
        vec![],
        "a retry is skipped"
    );
    let (ack, _) = store.report(&changes("new", 4, vec![connect(2, "erin")])).await.unwrap();
    assert_eq!(ack, Ack::Resync, "a missing batch asks for the full state");
    assert_eq!(store.users(&[user("erin")]).await.unwrap()[0].connections, 1);
}

async fn a_full_report_changes_only_what_differs(store: Arc<dyn PresenceStore>) {
    let state = |conn: u64, u: &str, channels: &[&str]| ConnState {
        conn,
        user: user(u),
        info: info(&format!(r#"{{"name":"{u}"}}"#)),
        channels: channels.iter().map(|c| ch(c)).collect(),
    };
    let ev =
        apply(&store, full("a", 1, vec![state(1, "fay", &["room:y"]), state(2, "gus", &["room:y"])])).await;
    assert_eq!(ev.len(), 4, "two online and two joins: {ev:?}");
    let ev =
        apply(&store, full("a", 5, vec![state(1, "fay", &["room:y"]), state(3, "gus", &["room:z"])])).await;
    let join = Event::Join { channel: ch("room:z"), user: user("gus"), info: info(r#"{"name":"gus"}"#) };
    assert_eq!(ev, vec![join], "gus moves from room:y to room:z and stays online");
    assert_eq!(
        apply(&store, changes("a", 6, vec![])).await,
        vec![],
        "numbering continues after a full report"
    );
    assert_eq!(store.stats().await.unwrap().connections, 2);
    let events = sweep_alive(&store, &[("a", 6)], TIMINGS.grace + Duration::from_millis(200)).await;
    assert_eq!(events, vec![Event::Leave { channel: ch("room:y"), user: user("gus") }]);
}

async fn an_expired_gateway_is_removed_as_a_whole(store: Arc<dyn PresenceStore>) {
    apply(&store, full("dead", 1, vec![])).await;
    apply(&store, full("alive", 1, vec![])).await;
    apply(
        &store,
        changes(
            "dead",
            2,
            vec![connect(1, "hal"), sub(1, "hal", "room:w"), connect(2, "ivy"), sub(2, "ivy", "room:w")],
        ),
    )
    .await;
    apply(&store, changes("alive", 2, vec![connect(1, "ivy")])).await;
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMINGS.ttl + TIMINGS.grace + Duration::from_millis(300);
    while tokio::time::Instant::now() < deadline {
        apply(&store, changes("alive", 2, vec![])).await;
        events.extend(store.sweep().await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leaves = events.iter().filter(|e| matches!(e, Event::Leave { .. })).count();
    assert_eq!(leaves, 2, "{events:?}");
    assert_eq!(events.iter().filter(|e| matches!(e, Event::Offline { .. })).count(), 1, "{events:?}");
    assert!(events.contains(&Event::Offline { user: user("hal") }), "ivy is still on another gateway");
    let at = |e: &Event| events.iter().position(|x| x == e).unwrap();
    let hal_left = Event::Leave { channel: ch("room:w"), user: user("hal") };
    assert!(at(&hal_left) < at(&Event::Offline { user: user("hal") }), "leave before offline: {events:?}");
    let found = store.users(&[user("hal"), user("ivy")]).await.unwrap();
    assert!(!found[0].online);
    assert_eq!((found[1].connections, found[1].gateways.clone()), (1, vec!["alive".to_string()]));
    let (ack, _) = store.report(&changes("dead", 2, vec![])).await.unwrap();
    assert_eq!(ack, Ack::Resync, "a gateway back from the dead must resync");
    assert_eq!(sweep_for(&store, Duration::from_millis(100)).await, vec![]);
}

async fn member_lists_are_bounded_but_counts_exact(store: Arc<dyn PresenceStore>) {
    apply(&store, full("a", 1, vec![])).await;
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.push(connect(i, &format!("m{i}")));
        batch.push(sub(i, &format!("m{i}"), "room:big"));
    }
    apply(&store, changes("a", 2, batch)).await;
    let limited = store.channel(&ch("room:big"), 2).await.unwrap();
    assert_eq!((limited.count, limited.members.len()), (5, 2));
    assert_eq!(store.channel(&ch("room:big"), 10).await.unwrap().members.len(), 5);
    let count_only = store.channel(&ch("room:big"), 0).await.unwrap();
    assert_eq!((count_only.count, count_only.members.len()), (5, 0));
}

async fn large_gateways_are_handled_whole(store: Arc<dyn PresenceStore>) {
    let state = |n: u64| -> Vec<ConnState> {
        (0..n)
            .map(|i| ConnState {
                conn: i,
                user: user(&format!("l{i}")),
                info: None,
                channels: vec![ch("room:l")],
            })
            .collect()
    };
    let ev = apply(&store, full("big", 1, state(1200))).await;
    assert_eq!(ev.len(), 2400, "1200 online and 1200 joins");
    let ev = apply(&store, full("big", 2, state(500))).await;
    assert_eq!(ev, vec![], "the 700 removed leave and go offline after the grace period");
    assert_eq!(store.stats().await.unwrap().connections, 500);
    assert_eq!(apply(&store, changes("big", 3, vec![])).await, vec![]);
    let events = sweep_for(&store, TIMINGS.ttl + TIMINGS.grace + Duration::from_millis(400)).await;
    let leaves = events.iter().filter(|e| matches!(e, Event::Leave { .. })).count();
    let offline = events.iter().filter(|e| matches!(e, Event::Offline { .. })).count();
    assert_eq!((leaves, offline), (1200, 1200), "the 700 removed, then the dead gateway's 500, once");
    assert_eq!(store.stats().await.unwrap(), crate::model::Stats { online_users: 0, connections: 0 });
}
