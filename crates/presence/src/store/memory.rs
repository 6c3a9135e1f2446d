//! The in-memory engine: the whole state behind one mutex, for the standalone mode.
//!
//! Every operation is a short critical section without `.await`, so it is as atomic as a
//! Redis script. Maps shrink as they empty: a user, channel or gateway that is gone leaves
//! nothing behind. Time is `tokio::time`, so tests can pause it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_protocol::{ChannelName, UserId};
use tokio::time::Instant;

use super::{PresenceStore, StoreError, Timings};
use crate::model::{
    Ack, Change, ChannelPresence, ConnId, ConnState, Event, Info, Member, Report, ReportBody, Stats,
    UserPresence,
};

/// The in-memory engine. Cheap to clone.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<State>>,
    timings: Timings,
}

#[derive(Default)]
struct State {
    gateways: HashMap<Arc<str>, Gateway>,
    users: HashMap<UserId, User>,
    /// Channel -> user -> the user's connections in it. Sorted, so member lists are stable.
    channels: HashMap<ChannelName, BTreeMap<UserId, u64>>,
    /// Users without connections whose `offline` is due at the instant given.
    pending_offline: HashMap<UserId, Instant>,
    /// Users who left a channel and whose `leave` is due at the instant given.
    pending_leave: HashMap<(ChannelName, UserId), Instant>,
    connections: u64,
}

struct Gateway {
    seq: u64,
    lease: Instant,
    conns: HashMap<ConnId, Conn>,
}

/// The clock reading and grace period of one operation.
#[derive(Clone, Copy)]
struct Ctx {
    now: Instant,
    grace: std::time::Duration,
}

struct Conn {
    user: UserId,
    channels: BTreeSet<ChannelName>,
}

struct User {
    /// Gateway id -> connections there.
    gateways: BTreeMap<Arc<str>, u64>,
    connections: u64,
    info: Info,
}

impl MemoryStore {
    pub fn new(timings: Timings) -> Self {
        Self { inner: Arc::default(), timings }
    }
}

impl State {
    /// A connection id reused for another user (a gateway bug) replaces the old connection.
    fn connect(
        &mut self,
        gw: &Arc<str>,
        conn: ConnId,
        user: &UserId,
        info: &Info,
        ctx: Ctx,
        events: &mut Vec<Event>,
    ) {
        if let Some(existing) = self.gateways.get(gw).and_then(|g| g.conns.get(&conn)) {
            if existing.user == *user {
                return;
            }
            self.disconnect(gw, conn, ctx);
        }
        let Some(gateway) = self.gateways.get_mut(gw) else { return };
        gateway.conns.insert(conn, Conn { user: user.clone(), channels: BTreeSet::new() });
        self.connections += 1;
        let entry = self.users.entry(user.clone()).or_insert_with(|| User {
            gateways: BTreeMap::new(),
            connections: 0,
            info: None,
        });
        entry.info = info.clone();
        *entry.gateways.entry(gw.clone()).or_default() += 1;
        entry.connections += 1;
        if entry.connections == 1 && self.pending_offline.remove(user).is_none() {
            events.push(Event::Online { user: user.clone(), info: info.clone() });
        }
    }

    fn disconnect(&mut self, gw: &Arc<str>, conn: ConnId, ctx: Ctx) {
        let Some(gateway) = self.gateways.get_mut(gw) else { return };
        let Some(record) = gateway.conns.remove(&conn) else { return };
        for channel in &record.channels {
            self.leave_channel(channel, &record.user, ctx.now + ctx.grace);
        }
        self.connections -= 1;
        let Some(user) = self.users.get_mut(&record.user) else { return };
        user.connections -= 1;
        if let Some(n) = user.gateways.get_mut(gw) {
            *n -= 1;
            if *n == 0 {
                user.gateways.remove(gw);
            }
        }
        if user.connections == 0 {
            self.users.remove(&record.user);
            self.pending_offline.insert(record.user, ctx.now + ctx.grace);
        }
    }

    fn subscribe(&mut self, gw: &Arc<str>, conn: ConnId, channel: &ChannelName, events: &mut Vec<Event>) {
        let Some(record) = self.gateways.get_mut(gw).and_then(|g| g.conns.get_mut(&conn)) else { return };
        if !record.channels.insert(channel.clone()) {
            return;
        }
        let user = record.user.clone();
        let count = self.channels.entry(channel.clone()).or_default().entry(user.clone()).or_default();
        *count += 1;
        // Back within the grace period of a leave: neither that leave nor a join.
        if *count == 1 && self.pending_leave.remove(&(channel.clone(), user.clone())).is_none() {
            let info = self.users.get(&user).and_then(|u| u.info.clone());
            events.push(Event::Join { channel: channel.clone(), user, info });
        }
    }

    fn unsubscribe(&mut self, gw: &Arc<str>, conn: ConnId, channel: &ChannelName, ctx: Ctx) {
        let Some(record) = self.gateways.get_mut(gw).and_then(|g| g.conns.get_mut(&conn)) else { return };
        if !record.channels.remove(channel) {
            return;
        }
        let user = record.user.clone();
        self.leave_channel(channel, &user, ctx.now + ctx.grace);
    }

    /// A user's last connection left `channel`: out of the member list at once, `leave` at
    /// `due` (from [`MemoryStore::sweep`]), unless the user is back in the channel by then.
    fn leave_channel(&mut self, channel: &ChannelName, user: &UserId, due: Instant) {
        let Some(members) = self.channels.get_mut(channel) else { return };
        let Some(count) = members.get_mut(user) else { return };
        *count -= 1;
        if *count == 0 {
            members.remove(user);
            if members.is_empty() {
                self.channels.remove(channel);
            }
            self.pending_leave.insert((channel.clone(), user.clone()), due);
        }
    }

    /// Replaces a gateway's connections with `full`, touching only what differs.
    fn replace(
        &mut self,
        gw: &Arc<str>,
        full: &[ConnState],
        now: Instant,
        timings: Timings,
        ev: &mut Vec<Event>,
    ) {
        let wanted: HashMap<ConnId, &ConnState> = full.iter().map(|c| (c.conn, c)).collect();
        for state in full {
            self.connect(gw, state.conn, &state.user, &state.info, Ctx { now, grace: timings.grace }, ev);
            let current: Vec<ChannelName> =
                self.gateways[gw].conns[&state.conn].channels.iter().cloned().collect();
            for channel in &state.channels {
                self.subscribe(gw, state.conn, channel, ev);
            }
            for channel in current.iter().filter(|c| !state.channels.contains(c)) {
                self.unsubscribe(gw, state.conn, channel, Ctx { now, grace: timings.grace });
            }
        }
        let mut gone: Vec<ConnId> =
            self.gateways[gw].conns.keys().filter(|c| !wanted.contains_key(c)).copied().collect();
        gone.sort_unstable();
        for conn in gone {
            self.disconnect(gw, conn, Ctx { now, grace: timings.grace });
        }
    }

    fn shrink(&mut self) {
        use herald_protocol::support::shrink;
        shrink(&mut self.gateways);
        shrink(&mut self.users);
        shrink(&mut self.channels);
        shrink(&mut self.pending_offline);
        shrink(&mut self.pending_leave);
    }
}

#[async_trait]
impl PresenceStore for MemoryStore {
    async fn report(&self, report: &Report) -> Result<(Ack, Vec<Event>), StoreError> {
        let now = Instant::now();
        let mut events = Vec::new();
        let mut state = self.inner.lock().expect("presence lock poisoned");
        let gw = &report.gateway;
        match &report.body {
            ReportBody::Full(conns) => {
                let gateway = state.gateways.entry(gw.clone()).or_insert_with(|| Gateway {
                    seq: 0,
                    lease: now,
                    conns: HashMap::new(),
                });
                gateway.seq = report.seq;
                gateway.lease = now + self.timings.ttl;
                state.replace(gw, conns, now, self.timings, &mut events);
            }
            ReportBody::Changes(changes) => {
                let Some(gateway) = state.gateways.get_mut(gw) else { return Ok((Ack::Resync, events)) };
                if report.seq > gateway.seq + 1 {
                    return Ok((Ack::Resync, events));
                }
                gateway.lease = now + self.timings.ttl;
                if report.seq <= gateway.seq {
                    return Ok((Ack::Applied, events));
                }
                gateway.seq = report.seq;
                for change in changes {
                    match change {
                        Change::Connect { conn, user, info } => {
                            let ctx = Ctx { now, grace: self.timings.grace };
                            state.connect(gw, *conn, user, info, ctx, &mut events)
                        }
                        Change::Disconnect { conn, .. } => {
                            state.disconnect(gw, *conn, Ctx { now, grace: self.timings.grace })
                        }
                        Change::Subscribe { conn, channel, .. } => {
                            state.subscribe(gw, *conn, channel, &mut events)
                        }
                        Change::Unsubscribe { conn, channel, .. } => {
                            state.unsubscribe(gw, *conn, channel, Ctx { now, grace: self.timings.grace })
                        }
                    }
                }
            }
        }
        state.shrink();
        Ok((Ack::Applied, events))
    }

    async fn sweep(&self) -> Result<Vec<Event>, StoreError> {
        let now = Instant::now();
        let mut events = Vec::new();
        let mut state = self.inner.lock().expect("presence lock poisoned");
        let mut expired: Vec<Arc<str>> =
            state.gateways.iter().filter(|(_, g)| g.lease <= now).map(|(id, _)| id.clone()).collect();
        expired.sort_unstable();
        for gw in expired {
            let mut conns: Vec<ConnId> = state.gateways[&gw].conns.keys().copied().collect();
            conns.sort_unstable();
            for conn in conns {
                state.disconnect(&gw, conn, Ctx { now, grace: self.timings.grace });
            }
            state.gateways.remove(&gw);
        }
        // A user's leaves go out before the user's offline.
        let mut leaving: Vec<(ChannelName, UserId)> =
            state.pending_leave.extract_if(|_, at| *at <= now).map(|(key, _)| key).collect();
        leaving.sort_unstable();
        for (channel, user) in leaving {
            if !state.channels.get(&channel).is_some_and(|members| members.contains_key(&user)) {
                events.push(Event::Leave { channel, user });
            }
        }
        let mut due: Vec<UserId> =
            state.pending_offline.extract_if(|_, at| *at <= now).map(|(user, _)| user).collect();
        due.sort_unstable();
        for user in due {
            if !state.users.contains_key(&user) {
                events.push(Event::Offline { user });
            }
        }
        state.shrink();
        Ok(events)
    }

    async fn users(&self, users: &[UserId]) -> Result<Vec<UserPresence>, StoreError> {
        let state = self.inner.lock().expect("presence lock poisoned");
        Ok(users
            .iter()
            .map(|user| match state.users.get(user) {
                Some(u) => UserPresence {
                    user: user.clone(),
                    online: true,
                    connections: u.connections,
                    gateways: u.gateways.keys().map(|g| g.to_string()).collect(),
                },
                None => UserPresence { user: user.clone(), online: false, connections: 0, gateways: vec![] },
            })
            .collect())
    }

    async fn channel(&self, channel: &ChannelName, limit: usize) -> Result<ChannelPresence, StoreError> {
        let state = self.inner.lock().expect("presence lock poisoned");
        let Some(members) = state.channels.get(channel) else {
            return Ok(ChannelPresence { channel: channel.clone(), count: 0, members: vec![] });
        };
        let list = members
            .iter()
            .take(limit)
            .map(|(user, n)| Member {
                user: user.clone(),
                connections: *n,
                info: state.users.get(user).and_then(|u| u.info.clone()),
            })
            .collect();
        Ok(ChannelPresence { channel: channel.clone(), count: members.len() as u64, members: list })
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let state = self.inner.lock().expect("presence lock poisoned");
        Ok(Stats { online_users: state.users.len() as u64, connections: state.connections })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
