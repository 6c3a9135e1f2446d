//! The command line of `herald bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// `herald bench <scenario> [options]`: drives real WebSocket clients against a running system
/// and prints what it measured. It never starts or configures the servers itself.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Which server the clients and the publisher speak to.
    #[arg(long, value_enum, default_value_t = Target::Herald)]
    pub target: Target,
    /// WebSocket endpoint of a gateway: Herald `ws://host:port/ws`, nchan `ws://host:port/sub`
    /// (the channel is appended). Repeat it for several gateways; connections are spread over
    /// them round robin.
    #[arg(long = "url", default_value = "ws://127.0.0.1:8080/ws")]
    pub urls: Vec<String>,
    /// Where messages are published: Herald's HTTP (`http://host:8081`) or gRPC
    /// (`http://host:8082`) listener, or nchan's publisher location (`http://host:port/pub`).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub publish_url: String,
    /// How Herald messages are published (nchan is always published over HTTP).
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub publish: Via,
    /// API key of Herald's publisher API.
    #[arg(long, env = "HERALD_BENCH_API_KEY", default_value = "dev-only-api-key-change-me")]
    pub api_key: String,
    /// HS256 secret the gateways verify tokens with; every connection gets its own token.
    #[arg(
        long,
        env = "HERALD_BENCH_JWT_SECRET",
        default_value = "dev-only-secret-change-me-0123456789abcdef"
    )]
    pub jwt_secret: String,
    /// Sign the tokens with this PKCS#8 PEM private key instead of `--jwt-secret`
    /// (`openssl genpkey -algorithm RSA -out key.pem`), for gateways configured with the
    /// public key (`auth.public_keys`) or a JWKS.
    #[arg(long, requires = "token_alg")]
    pub token_key: Option<std::path::PathBuf>,
    /// The algorithm of `--token-key`: RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA.
    #[arg(long, requires = "token_key")]
    pub token_alg: Option<String>,
    /// The `kid` the tokens' header names.
    #[arg(long, requires = "token_key")]
    pub token_kid: Option<String>,
    /// How a Herald connection subscribes its channel: in the connect URL
    /// (`/ws?token=..&subscribe=<channel>`, as nchan takes it in its URL), or with a
    /// `subscribe` frame after `connected` (one more round trip).
    #[arg(long, value_enum, default_value_t = SubscribeWith::Url)]
    pub subscribe_with: SubscribeWith,
    /// `personal` on Herald: each connection subscribes to its own personal channel
    /// `user:<id>` (in the URL or with a frame, as `--subscribe-with` says), for gateways run
    /// with `gateway.personal_channel = false`, which subscribe none by themselves.
    #[arg(long)]
    pub subscribe_personal: bool,
    /// Herald: each connection subscribes with a pattern subscription (a `subscribe` frame
    /// with `pattern`, so `--subscribe-with frame` is implied) that matches exactly its
    /// stream's channel: the channel with its last character as a class, `news:bench-[0]`.
    /// The namespace needs `patterns = true`. Compare with the same run without it.
    #[arg(long)]
    pub pattern: bool,
    /// Namespace of the bench channels (Herald); it must be configured on the gateways (the
    /// quickstart configuration has `news`).
    #[arg(long, default_value = "news")]
    pub namespace: String,
    /// Prefix of channel names, so runs do not collide with real traffic.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Client connections to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: u64,
    /// Channels the connections are spread over (`idle`).
    #[arg(long, default_value_t = 100)]
    pub channels: u64,
    /// Connections per room (`rooms`).
    #[arg(long, default_value_t = 10)]
    pub room_size: u64,
    /// Messages offered per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Messages to publish; by default `rate` times `duration`.
    #[arg(long, short = 'm')]
    pub messages: Option<u64>,
    /// How long `idle` holds its connections, and how long the others publish when
    /// `--messages` is not given.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Size of each message's `data`, bytes (its send time and sequence number, padded).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Most publish requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Messages per publish request: above 1, Herald's `POST /v1/publish/batch` with this many
    /// messages, each to a random stream (`fanout`, `rooms`; HTTP only). `--rate` still counts
    /// messages: a request goes out every `batch / rate` seconds.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Most connections being set up at once, per worker.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// How long the whole connect phase may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How long to wait for the last deliveries after the last publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Client worker processes. 0 runs every client inside this process; by default one
    /// process per `--per-worker` connections, or none when they fit in one.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Most connections per worker process (a process may open at most `ulimit -n` files).
    #[arg(long, default_value_t = 15000)]
    pub per_worker: u64,
    /// Most connections per source address (at most 45000). When more connections are asked
    /// for, client sockets are bound to 127.0.0.2, 127.0.0.3, ... (ports from 20000 up) before
    /// connecting, because ephemeral ports run out at about 28000 per address pair.
    #[arg(long, default_value_t = 20000)]
    pub per_source_addr: u64,
    /// Abusive connections to open beside the measured ones (Herald only), from the end of the
    /// connect phase to the end of the run. Each sends frames as fast as the socket takes them
    /// (or at `--flood-rate`), reads what it is answered, and reconnects when it is closed. They
    /// are not measured, but counted: frames sent, replies by kind, closes by code.
    #[arg(long, default_value_t = 0)]
    pub flood: u64,
    /// What the flood sends; flood connection i sends the i-th kind of the list, round robin.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ping,ws-ping,malformed,subscribe")]
    pub flood_kind: Vec<FloodKind>,
    /// Frames per second each flood connection sends; 0: as fast as the socket takes them.
    #[arg(long, default_value_t = 0.0)]
    pub flood_rate: f64,
    /// Herald, channels with history: a connection the server closes or that breaks
    /// reconnects at once (to the next `--url`, round robin, retrying every 100 ms to 1 s)
    /// with `since` set to the last message it received, and so recovers what it missed.
    /// For reconnect storms: kill a gateway during the run. The report counts reconnects and
    /// failed recoveries and times how long until every connection was live again; loss and
    /// duplicates are judged over the whole run as always. Needs `--subscribe-with url`.
    #[arg(long)]
    pub resume: bool,
    /// `--resume`: where reconnects go, round robin (repeat it); by default the `--url`s. A
    /// storm sends every client to one gateway, kills it, and reconnects them to others.
    #[arg(long = "reconnect-url")]
    pub reconnect_urls: Vec<String>,
    /// `idle`: rounds of connecting. After the first, every connection is closed and, once all
    /// are, connected again with the URL and token it had: the reconnect after a gateway's
    /// drain or a network blip, where clients come back with the tokens they hold (and a
    /// gateway may find their verification cached). Each round's connect rate is reported.
    #[arg(long, default_value_t = 1)]
    pub reconnect_rounds: u32,
    /// A process to kill with SIGKILL during the publish phase (a gateway, for a reconnect
    /// storm), `--kill-after` into it.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub kill_after: Duration,
    /// A server process whose memory and CPU time to sample (with its children). Repeat it.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Also write the JSON result to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// The load shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// N connections, each subscribed to one of C channels, held for `duration`.
    Idle,
    /// N subscribers of one channel; M messages published into it at rate R.
    Fanout,
    /// N users, one connection each; notifications to random users at rate R.
    Personal,
    /// N clients in rooms of `room_size`; messages to random rooms at rate R.
    Rooms,
    /// N connections; M messages to everyone (Herald's `broadcast` channel) at rate R.
    Broadcast,
    /// Internal: a client worker process, driven over stdin and stdout.
    #[value(hide = true)]
    Worker,
}

impl Scenario {
    /// Whether the scenario publishes messages.
    pub fn publishes(self) -> bool {
        !matches!(self, Scenario::Idle | Scenario::Worker)
    }
}

/// What an abusive connection of `--flood` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloodKind {
    /// Client `ping` frames, each answered `pong` when handled.
    Ping,
    /// WebSocket ping control frames (answered with a WebSocket pong when handled).
    WsPing,
    /// Text frames that are not JSON, each answered `malformed_frame` when handled.
    Malformed,
    /// `subscribe` and `unsubscribe` of a few dozen channels in turn: subscriptions made and
    /// dropped, the most work a frame can ask of a gateway.
    Subscribe,
}

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Herald,
    /// nginx with the nchan module: WebSocket subscribers at `/sub/<channel>`, HTTP publish
    /// to `/pub/<channel>`.
    Nchan,
}

/// How Herald connections subscribe their channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeWith {
    /// `?subscribe=<channel>` in the connect URL.
    Url,
    /// A `subscribe` frame after `connected`.
    Frame,
}

/// Transport of Herald publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Http,
    Grpc,
}
