//! What the hostile-client tests need: gateways on port 0 with a configuration of the test's
//! choosing, a witness client that must receive every message of a steady stream while the
//! abuse goes on, and a raw TCP client that writes WebSocket frames byte by byte, broken ones
//! included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_broker::Broker;
use herald_gateway::{AuthConfig, ConnectionObserver, Gateway, GatewayConfig, NoObserver};
use herald_protocol::{ChannelName, NamespaceConfig, Namespaces, Publication};
use herald_testkit::WsClient;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-test-secret-test-secret!";

/// The longest any single expected event may take, however loaded the machine.
pub const BOUND: Duration = Duration::from_secs(20);

/// `room`: subscribe only, members visible to clients; `chat`: clients publish.
pub fn namespaces() -> Namespaces {
    let mut ns = Namespaces::default();
    let room = NamespaceConfig { client_presence: true, ..Default::default() };
    ns.0.insert("room".into(), room);
    ns.0.insert("chat".into(), NamespaceConfig { publish: true, ..Default::default() });
    ns
}

pub fn auth() -> AuthConfig {
    AuthConfig { jwt_secret: SECRET.into(), ..Default::default() }
}

/// A valid token for `user`, an hour long.
pub fn token(user: &str) -> String {
    herald_gateway::mint(SECRET, user, Duration::from_secs(3600)).unwrap()
}

/// A token with exactly `claims`, signed with the test secret.
pub fn token_with(claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

/// One gateway, served on its own listener.
pub struct Node {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    pub broker: Arc<dyn Broker>,
    /// Cancelled when the node is dropped: the gateway drains and stops.
    stop: CancellationToken,
}

impl Node {
    /// Starts a gateway on `broker` with `tweak` applied to its configuration, and waits
    /// until it is ready.
    pub async fn start(broker: Arc<dyn Broker>, tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_observed(broker, Arc::new(NoObserver), tweak).await
    }

    /// As [`Node::start`], reporting to `observer` (presence).
    pub async fn start_observed(
        broker: Arc<dyn Broker>,
        observer: Arc<dyn ConnectionObserver>,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let mut config = GatewayConfig { canary_interval: Duration::from_millis(200), ..Default::default() };
        tweak(&mut config);
        let gateway =
            Gateway::with_observer(config, &auth(), namespaces(), broker.clone(), observer).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(herald_gateway::serve(gateway.clone(), listener, stop.clone().cancelled_owned()));
        let node = Self { addr, gateway, broker, stop };
        node.wait_ready().await;
        node
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + BOUND;
        while !self.gateway.is_ready() {
            assert!(tokio::time::Instant::now() < deadline, "the gateway did not become ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// Connects `user` and returns the client after `connected`.
    pub async fn connect(&self, user: &str) -> WsClient {
        let (client, hello) = WsClient::connect(&self.url(&token(user))).await.unwrap();
        assert_eq!(hello["user"], user);
        client
    }

    /// The value of the metric line starting with `series` (name and labels), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.gateway
            .render_metrics(herald_gateway::MetricsFormat::Prometheus)
            .lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// How often `limit` was hit.
    pub fn limit_hits(&self, limit: &str) -> f64 {
        self.metric(&format!("herald_gateway_limit_hits_total{{limit=\"{limit}\"}}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The witness channel's name.
pub const WITNESS_CHANNEL: &str = "room:witness";

/// A client receiving a steady stream (one message every 5 ms, published through the broker)
/// while a test abuses the gateway. [`Witness::finish`] asserts it got every message, in
/// order.
pub struct Witness {
    stop: CancellationToken,
    publisher: tokio::task::JoinHandle<u64>,
    reader: tokio::task::JoinHandle<Vec<i64>>,
}

impl Witness {
    pub async fn start(node: &Node) -> Self {
        let mut client = node.connect("witness").await;
        client.subscribe(WITNESS_CHANNEL).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let frame = client.recv_within(BOUND).await.unwrap_or_else(|e| {
                    panic!("the witness lost its stream after {} messages: {e}", seen.len())
                });
                assert_eq!(frame["type"], "message", "the witness got {frame}");
                let seq = frame["data"].as_i64().unwrap();
                if seq < 0 {
                    return seen;
                }
                seen.push(seq);
            }
        });
        let stop = CancellationToken::new();
        let broker = node.broker.clone();
        let publisher = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut ticks = tokio::time::interval(Duration::from_millis(5));
                let mut seq = 0u64;
                loop {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        _ = stop.cancelled() => break,
                    }
                    publish(&broker, WITNESS_CHANNEL, json!(seq)).await;
                    seq += 1;
                }
                publish(&broker, WITNESS_CHANNEL, json!(-1)).await;
                seq
            }
        });
        // The stream is flowing before the abuse starts.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Self { stop, publisher, reader }
    }

    /// Stops the stream and asserts the witness received all of it, in order.
    pub async fn finish(self) {
        self.stop.cancel();
        let sent = self.publisher.await.unwrap();
        let seen = tokio::time::timeout(BOUND, self.reader).await.expect("the witness stalled").unwrap();
        let expected: Vec<i64> = (0..sent as i64).collect();
        assert!(sent > 0);
        assert!(seen == expected, "the witness got {} of {sent} messages, or out of order", seen.len());
    }
}

/// Publishes `data` to `channel` through the broker, as the publisher API would.
pub async fn publish(broker: &Arc<dyn Broker>, channel: &str, data: Value) {
    let channel = ChannelName::parse(channel).unwrap();
    let data = serde_json::value::RawValue::from_string(data.to_string()).unwrap();
    let publication = Publication::new(&channel, &data, None).unwrap();
    broker.publish(&channel, publication.encode()).await.unwrap();
}

/// A client on a bare TCP socket: it writes frames exactly as told, masked or not, with any
/// header bits, and reads what the server sends back. [`Raw::split`] makes two of it, one
/// that reads and one that writes, for a test that does both at once.
pub struct Raw<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

/// One frame from the server.
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// What a raw client saw at the end of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code.
    Close(u16),
    /// The TCP connection ended without a close frame.
    Eof,
}

impl Raw {
    /// Opens a WebSocket connection for `token` and reads through the `connected` frame.
    pub async fn open(addr: SocketAddr, token: &str) -> Self {
        let mut raw = Self::connect(addr).await;
        let request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        raw.stream.write_all(request.as_bytes()).await.unwrap();
        let head = raw.read_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        let hello = raw.read_frame().await.expect("a connected frame");
        let hello: Value = serde_json::from_slice(&hello.payload).unwrap();
        assert_eq!(hello["type"], "connected");
        raw
    }

    /// A bare TCP connection, nothing sent.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
    }

    /// The reading half (with whatever was read already) and the writing half.
    pub fn split(self) -> (Raw<OwnedReadHalf>, Raw<OwnedWriteHalf>) {
        let (read, write) = self.stream.into_split();
        (Raw { stream: read, buf: self.buf }, Raw { stream: write, buf: Vec::new() })
    }

    /// Without waiting: how the connection ended, if it did. Frames before the end are
    /// dropped.
    pub fn ended(&mut self) -> Option<Ending> {
        let mut chunk = [0u8; 8192];
        let eof = loop {
            match self.stream.try_read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        while let Some((frame, used)) = parse_frame(&self.buf) {
            self.buf.drain(..used);
            if let Some(ending) = frame.ending() {
                return Some(ending);
            }
        }
        eof.then_some(Ending::Eof)
    }

    /// Writes one more byte of a request head and tells whether the server hung up.
    pub async fn hung_up(&mut self) -> bool {
        if self.stream.write_all(b"a").await.is_err() {
            return true;
        }
        self.ended().is_some()
    }
}

impl<S: AsyncRead + Unpin> Raw<S> {
    /// Reads an HTTP response head (through the blank line) and returns it.
    pub async fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head).unwrap();
            }
            assert!(self.fill().await, "the connection ended inside a response head");
        }
    }

    /// Reads whatever comes until the server closes the TCP connection.
    pub async fn read_to_end(&mut self) -> String {
        while self.fill().await {}
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(BOUND, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("nothing from the server within {BOUND:?}"),
        }
    }

    /// The next frame, `None` once the connection ended.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads frames until the connection ends: the close frame's code, or EOF without one.
    pub async fn ending(&mut self) -> Ending {
        while let Some(frame) = self.read_frame().await {
            if let Some(ending) = frame.ending() {
                return ending;
            }
        }
        Ending::Eof
    }

    /// The next text frame as JSON, skipping pings and pongs.
    pub async fn next_json(&mut self) -> Value {
        loop {
            let frame = self.read_frame().await.expect("a frame, not the end of the connection");
            if frame.opcode == 0x1 {
                return serde_json::from_slice(&frame.payload).unwrap();
            }
            assert!(
                matches!(frame.opcode, 0x9 | 0xA),
                "only pings and pongs may come between text frames: {frame:?}"
            );
        }
    }
}

impl<S: AsyncWrite + Unpin> Raw<S> {
    /// Sends one frame: `first` is the first header byte (FIN, RSV bits, opcode).
    pub async fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        // The server may have closed already; what it answered is what the test checks.
        let _ = self.stream.write_all(&encode_frame(first, payload, masked)).await;
    }

    /// A masked final text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x81, text.as_bytes(), true).await;
    }
}

/// A client frame: `first` is the first header byte (FIN, RSV bits, opcode).
pub fn encode_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut frame = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => frame.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

impl RawFrame {
    /// How the connection ended, if this is a close frame.
    pub fn ending(&self) -> Option<Ending> {
        (self.opcode == 0x8)
            .then(|| Ending::Close(self.payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]))))
    }
}

/// An unmasked server frame at the start of `buf` and the bytes it took.
fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, at) = match b1 & 0x7F {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    Some((RawFrame { opcode: b0 & 0x0F, payload }, at + len))
}

/// Sends a raw HTTP request and returns the whole response.
pub async fn http(addr: SocketAddr, request: &str) -> String {
    let mut raw = Raw::connect(addr).await;
    raw.stream.write_all(request.as_bytes()).await.unwrap();
    raw.read_to_end().await
}

/// The request head of a WebSocket upgrade to `/ws` with `query` and `extra` header lines.
pub fn upgrade_request(addr: SocketAddr, query: &str, extra: &str) -> String {
    format!(
        "GET /ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// `GET /readyz` answered 200.
pub async fn readyz(addr: SocketAddr) -> bool {
    let response = http(addr, "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    response.starts_with("HTTP/1.1 200")
}
