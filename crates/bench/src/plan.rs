//! Who connects where: the mapping from a connection's index to its URL, source address,
//! user, channel and *stream*.
//!
//! A stream is what one connection is measured on: the channel (or user, or room) whose
//! messages it must receive. Sequence numbers are counted per stream, so every receiver sees
//! a dense run 0, 1, 2, ... and can tell loss, duplicates and reordering apart.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use herald_protocol::PERSONAL_NAMESPACE;
use serde::{Deserialize, Serialize};

use crate::args::{BenchArgs, Scenario, SubscribeWith, Target};

/// First source port when clients bind their own; ports run up to this plus
/// [`MAX_PER_SOURCE_ADDR`].
const FIRST_SOURCE_PORT: u16 = 20000;
/// Most connections per source address, so that source ports stay below 65536.
pub const MAX_PER_SOURCE_ADDR: u64 = 45000;

/// Everything a worker needs to open and judge its connections. Sent to worker processes as
/// one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub scenario: Scenario,
    pub target: Target,
    pub urls: Vec<String>,
    pub jwt_secret: String,
    /// Tokens are signed with this private key rather than `jwt_secret`.
    #[serde(default)]
    pub token_key: Option<crate::token::TokenKey>,
    pub subscribe_with: SubscribeWith,
    /// Herald connections subscribe to their personal channel themselves.
    #[serde(default)]
    pub subscribe_personal: bool,
    /// Herald connections subscribe with a pattern that matches their channel (`--pattern`).
    #[serde(default)]
    pub pattern: bool,
    pub namespace: String,
    pub prefix: String,
    pub connections: u64,
    pub channels: u64,
    pub room_size: u64,
    /// 0: let the kernel choose the source address (127.0.0.1).
    pub per_source_addr: u64,
    pub connect_concurrency: usize,
    /// Longest time a worker lives, whatever happens: the last bound on every loop.
    pub max_runtime: Duration,
    /// Connections reconnect with `since` when closed (`--resume`).
    #[serde(default)]
    pub resume: bool,
    /// Where reconnects go; empty: `urls`.
    #[serde(default)]
    pub reconnect_urls: Vec<String>,
    /// Rounds of connecting with the same URLs (`--reconnect-rounds`), at least 1.
    #[serde(default = "one_round")]
    pub rounds: u32,
}

fn one_round() -> u32 {
    1
}

/// One worker's share: connections `first .. first + count`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub plan: Plan,
    pub first: u64,
    pub count: u64,
}

/// Where a message for one stream is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A regular channel (Herald `POST /v1/publish`; nchan `/pub/<channel>`).
    Channel(String),
    /// A user's personal channel (Herald `POST /v1/users/{user}/notify`).
    User(String),
    /// Everyone (Herald `POST /v1/broadcast`).
    Broadcast,
}

impl Plan {
    pub fn new(args: &BenchArgs, max_runtime: Duration, token_key: Option<crate::token::TokenKey>) -> Self {
        let per_source_addr = args.per_source_addr.clamp(1, MAX_PER_SOURCE_ADDR);
        let per_source_addr = if args.connections > per_source_addr { per_source_addr } else { 0 };
        Self {
            scenario: args.scenario,
            target: args.target,
            urls: args.urls.clone(),
            jwt_secret: args.jwt_secret.clone(),
            token_key,
            // A pattern subscription goes in a frame: the connect URL takes channels only.
            subscribe_with: if args.pattern { SubscribeWith::Frame } else { args.subscribe_with },
            subscribe_personal: args.subscribe_personal,
            pattern: args.pattern,
            namespace: args.namespace.clone(),
            prefix: args.prefix.clone(),
            connections: args.connections,
            channels: args.channels.max(1),
            room_size: args.room_size.max(1),
            per_source_addr,
            connect_concurrency: args.connect_concurrency.max(1),
            max_runtime,
            resume: args.resume,
            reconnect_urls: args.reconnect_urls.clone(),
            rounds: args.reconnect_rounds.max(1),
        }
    }

    /// Number of streams; stream ids run from 0 to this, exclusive.
    pub fn streams(&self) -> u64 {
        match self.scenario {
            Scenario::Idle => self.channels.min(self.connections).max(1),
            Scenario::Fanout | Scenario::Broadcast | Scenario::Worker => 1,
            Scenario::Personal => self.connections.max(1),
            Scenario::Rooms => self.connections.div_ceil(self.room_size).max(1),
        }
    }

    /// The stream connection `conn` is measured on.
    pub fn stream_of(&self, conn: u64) -> u64 {
        match self.scenario {
            Scenario::Idle => conn % self.streams(),
            Scenario::Fanout | Scenario::Broadcast | Scenario::Worker => 0,
            Scenario::Personal => conn,
            Scenario::Rooms => conn / self.room_size,
        }
    }

    /// How many connections listen to each stream.
    pub fn listeners_per_stream(&self) -> Vec<u64> {
        let mut counts = vec![0; self.streams() as usize];
        for conn in 0..self.connections {
            counts[self.stream_of(conn) as usize] += 1;
        }
        counts
    }

    /// The user id of connection `conn` (its token's `sub`).
    pub fn user_of(&self, conn: u64) -> String {
        format!("u{conn}")
    }

    /// Where messages of `stream` go.
    pub fn destination(&self, stream: u64) -> Destination {
        match (self.target, self.scenario) {
            (Target::Herald, Scenario::Personal) => Destination::User(self.user_of(stream)),
            (Target::Herald, Scenario::Broadcast) => Destination::Broadcast,
            (Target::Nchan, Scenario::Personal) => {
                Destination::Channel(format!("{}-user-{}", self.prefix, stream))
            }
            (Target::Nchan, Scenario::Broadcast) => {
                Destination::Channel(format!("{}-broadcast", self.prefix))
            }
            (Target::Herald, _) => {
                Destination::Channel(format!("{}:{}-{}", self.namespace, self.prefix, stream))
            }
            (Target::Nchan, _) => Destination::Channel(format!("{}-{}", self.prefix, stream)),
        }
    }

    /// The channel a Herald connection subscribes to with a frame after `connected`; `None`
    /// when it is in the connect URL or the server subscribes it by itself (broadcast, and
    /// personal channels unless `--subscribe-personal`).
    pub fn subscribe_frame(&self, conn: u64) -> Option<String> {
        match self.subscribe_with {
            SubscribeWith::Frame => self.subscription(conn),
            SubscribeWith::Url => None,
        }
    }

    /// The channel a Herald connection subscribes to itself; the server subscribes it to
    /// broadcast, and to its personal channel unless `--subscribe-personal`.
    pub fn subscription(&self, conn: u64) -> Option<String> {
        match self.destination(self.stream_of(conn)) {
            Destination::Channel(channel) => Some(channel),
            Destination::User(user) if self.subscribe_personal => {
                Some(format!("{PERSONAL_NAMESPACE}:{user}"))
            }
            Destination::User(_) | Destination::Broadcast => None,
        }
    }

    /// The `subscribe` frame connection `conn` sends after `connected`, if any: for its
    /// channel, or with `--pattern` a pattern that matches exactly that channel (its last
    /// character as a one-character class).
    pub fn subscribe_request(&self, conn: u64) -> Option<String> {
        let channel = self.subscribe_frame(conn)?;
        if !self.pattern || !matches!(self.destination(self.stream_of(conn)), Destination::Channel(_)) {
            return Some(serde_json::json!({"type": "subscribe", "channel": channel}).to_string());
        }
        let last = channel.chars().last()?;
        let head = &channel[..channel.len() - last.len_utf8()];
        Some(serde_json::json!({"type": "subscribe", "pattern": format!("{head}[{last}]")}).to_string())
    }

    /// The channel with history whose position a Herald connection keeps to resume: the one
    /// it subscribes to, or its personal channel (the inbox). `None` for broadcast.
    pub fn resume_channel(&self, conn: u64) -> Option<String> {
        match self.destination(self.stream_of(conn)) {
            Destination::Channel(channel) => Some(channel),
            Destination::User(user) => Some(format!("{PERSONAL_NAMESPACE}:{user}")),
            Destination::Broadcast => None,
        }
    }

    /// The URL connection `conn` opens, token included.
    pub fn url(&self, conn: u64) -> String {
        self.url_at(conn, 0)
    }

    /// The URL of connection `conn`'s `attempt`-th reconnect: the next gateway of `--url`
    /// each time, with a fresh token.
    pub fn url_at(&self, conn: u64, attempt: u64) -> String {
        let urls =
            if attempt > 0 && !self.reconnect_urls.is_empty() { &self.reconnect_urls } else { &self.urls };
        let base = urls[((conn + attempt) % urls.len() as u64) as usize].trim_end_matches('/');
        match self.target {
            Target::Herald => {
                let token = crate::token::token(
                    self.token_key.as_ref(),
                    &self.jwt_secret,
                    &self.user_of(conn),
                    self.max_runtime * 2,
                );
                let sep = if base.contains('?') { '&' } else { '?' };
                match (self.subscribe_with, self.subscription(conn)) {
                    (SubscribeWith::Url, Some(channel)) => {
                        format!("{base}{sep}token={token}&subscribe={channel}")
                    }
                    _ => format!("{base}{sep}token={token}"),
                }
            }
            Target::Nchan => match self.destination(self.stream_of(conn)) {
                Destination::Channel(channel) => format!("{base}/{channel}"),
                Destination::User(_) | Destination::Broadcast => unreachable!("nchan streams are channels"),
            },
        }
    }

    /// The address and port connection `conn` binds to before connecting, when the run needs
    /// more source addresses than 127.0.0.1.
    ///
    /// The port is chosen here rather than by the kernel: `bind(addr, 0)` searches for a free
    /// port, and with tens of thousands in use that search cost the bench milliseconds of CPU
    /// per connection, which made it, not the server, the bottleneck of the connect phase.
    pub fn source_addr(&self, conn: u64) -> Option<SocketAddrV4> {
        if self.per_source_addr == 0 {
            return None;
        }
        let n = 2 + conn / self.per_source_addr;
        let port = FIRST_SOURCE_PORT + (conn % self.per_source_addr) as u16;
        Some(SocketAddrV4::new(Ipv4Addr::new(127, 0, (n >> 8) as u8, n as u8), port))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan(argv: &[&str]) -> Plan {
        let cli = Cli::parse_from(std::iter::once("bench").chain(argv.iter().copied()));
        Plan::new(&cli.args, Duration::from_secs(60), None)
    }

    #[test]
    fn rooms_group_consecutive_connections() {
        let p = plan(&["rooms", "-n", "25", "--room-size", "10"]);
        assert_eq!(p.streams(), 3);
        assert_eq!(p.listeners_per_stream(), vec![10, 10, 5]);
        assert_eq!(p.subscription(12).as_deref(), Some("news:bench-1"));
        assert!(p.url(12).ends_with("&subscribe=news:bench-1"), "{}", p.url(12));
        assert_eq!(p.subscribe_frame(12), None);
        let p = plan(&["fanout", "-n", "5", "--pattern"]);
        assert!(!p.url(3).contains("subscribe="), "a pattern goes in a frame");
        assert_eq!(
            p.subscribe_request(3).as_deref(),
            Some(r#"{"pattern":"news:bench-[0]","type":"subscribe"}"#)
        );
        let f = plan(&["rooms", "-n", "25", "--room-size", "10", "--subscribe-with", "frame"]);
        assert_eq!(f.subscribe_frame(12).as_deref(), Some("news:bench-1"));
        assert!(!f.url(12).contains("subscribe="));
    }

    #[test]
    fn personal_and_broadcast_need_no_subscribe_on_herald_but_a_channel_on_nchan() {
        let p = plan(&["personal", "-n", "3"]);
        assert_eq!(p.subscription(1), None);
        assert_eq!(p.destination(1), Destination::User("u1".into()));
        let n = plan(&["personal", "-n", "3", "--target", "nchan", "--url", "ws://h/sub/"]);
        assert_eq!(n.url(2), "ws://h/sub/bench-user-2");
        assert!(plan(&["broadcast"]).url(0).contains("/ws?token="));
    }

    #[test]
    fn subscribe_personal_subscribes_each_user_to_its_own_channel() {
        let p = plan(&["personal", "-n", "3", "--subscribe-personal"]);
        assert_eq!(p.destination(2), Destination::User("u2".into()));
        assert!(p.url(2).ends_with("&subscribe=user:u2"), "{}", p.url(2));
        let f = plan(&["personal", "-n", "3", "--subscribe-personal", "--subscribe-with", "frame"]);
        assert_eq!(f.subscribe_frame(2).as_deref(), Some("user:u2"));
        assert_eq!(plan(&["broadcast", "--subscribe-personal"]).subscription(0), None);
    }

    #[test]
    fn source_addresses_start_at_127_0_0_2_only_when_needed() {
        assert_eq!(plan(&["idle", "-n", "100"]).source_addr(5), None);
        let p = plan(&["idle", "-n", "50000", "--per-source-addr", "20000"]);
        assert_eq!(p.source_addr(0), Some(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 20000)));
        assert_eq!(p.source_addr(45001), Some(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 4), 25001)));
    }
}
