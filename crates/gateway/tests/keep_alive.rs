//! Plain HTTP on the gateway's port over real sockets: several requests per connection, their
//! bounds, and the WebSocket upgrade as a later request of a kept-alive connection.

use std::sync::Arc;
use std::time::Duration;

use herald_broker::{Broker, MemoryBroker};
use herald_gateway::http::{IDLE_TIMEOUT, MAX_REQUESTS};
use herald_gateway::{AuthConfig, Gateway, GatewayConfig};
use herald_protocol::Namespaces;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A gateway served on a free port until `stop` is cancelled.
struct Served {
    addr: std::net::SocketAddr,
    gateway: Gateway,
    stop: CancellationToken,
    served: JoinHandle<std::io::Result<()>>,
}

async fn serve() -> Served {
    let auth = AuthConfig { jwt_secret: SECRET.into(), ..Default::default() };
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let gateway = Gateway::new(GatewayConfig::default(), &auth, Namespaces::default(), broker).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let served =
        tokio::spawn(herald_gateway::serve(gateway.clone(), listener, stop.clone().cancelled_owned()));
    Served { addr, gateway, stop, served }
}

/// One answer: its head, lower-cased, and its body.
struct Answer {
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn status(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
    }
}

/// Reads one answer from `stream`, whose leftover bytes are in `buf`; its body by its
/// `content-length` (none for HEAD, say `head_only`).
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Answer {
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole answer: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf.drain(..end).collect()).unwrap().to_lowercase();
    let mut answer = Answer { head, body: Vec::new() };
    let len: usize = if head_only { 0 } else { answer.header("content-length").unwrap().parse().unwrap() };
    while buf.len() < len {
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the whole body");
        buf.extend_from_slice(&chunk[..n]);
    }
    answer.body = buf.drain(..len).collect();
    answer
}

/// Whether the gateway closed `stream` (it reads end of file) without sending anything more.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    matches!(read, Ok(Ok(0)))
}

fn upgrade_request(user: &str) -> String {
    let token = herald_gateway::mint(SECRET, user, Duration::from_secs(60)).unwrap();
    format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Two GETs on one connection get two answers, and the same connection then upgrades to a
/// WebSocket: a proxy may reuse a connection of health checks for a client's upgrade.
#[tokio::test]
async fn several_requests_then_an_upgrade_on_one_connection() {
    let served = serve().await;
    while !served.gateway.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let mut buf = Vec::new();
    stream.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let live = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((live.status(), live.body.as_slice()), ("200", b"ok".as_slice()), "{}", live.head);
    assert_eq!(live.header("connection"), None, "kept alive: {}", live.head);
    stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let ready = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((ready.status(), ready.body.as_slice()), ("200", b"ready".as_slice()));

    stream.write_all(upgrade_request("alice").as_bytes()).await.unwrap();
    let switched = read_answer(&mut stream, &mut buf, true).await;
    assert_eq!(switched.status(), "101", "{}", switched.head);
    // The `connected` frame follows in the same write: an unmasked text frame.
    while buf.len() < 2 {
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(buf[0], 0x81, "a final text frame");
    served.stop.cancel();
}

/// Pipelined requests are answered in order; `Connection: close` and HTTP/1.0 without
/// `Connection: keep-alive` close the connection after their answer; HTTP/1.0 with it stays
/// open, and HEAD gets the length without the body.
#[tokio::test]
async fn connection_close_and_http_1_0_are_honoured() {
    let served = serve().await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let mut buf = Vec::new();
    stream
        .write_all(
            b"GET /livez HTTP/1.0\r\nConnection: keep-alive\r\n\r\nHEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /livez HTTP/1.1\r\n\r\n",
        )
        .await
        .unwrap();
    let first = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(first.header("connection"), Some("keep-alive"), "{}", first.head);
    let head = read_answer(&mut stream, &mut buf, true).await;
    assert_eq!((head.status(), head.header("content-length")), ("200", Some("2")), "{}", head.head);
    let last = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((last.status(), last.header("connection")), ("200", Some("close")));
    assert!(buf.is_empty() && closed(&mut stream).await, "the fourth request was not answered");

    let mut old = TcpStream::connect(served.addr).await.unwrap();
    old.write_all(b"GET /livez HTTP/1.0\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut old, &mut Vec::new(), false).await;
    assert_eq!((answer.status(), answer.header("connection")), ("200", Some("close")));
    assert!(closed(&mut old).await);
    served.stop.cancel();
}

/// A connection gets at most `MAX_REQUESTS` answers, the last saying `connection: close`.
#[tokio::test]
async fn a_connection_gets_at_most_max_requests_answers() {
    let served = serve().await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let requests = "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n".repeat(MAX_REQUESTS as usize + 1);
    let (mut reader, mut writer) = stream.split();
    let write = async {
        // The gateway may close before reading the request after the limit.
        let _ = writer.write_all(requests.as_bytes()).await;
    };
    let read = async {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all).await;
        all
    };
    let ((), all) = tokio::join!(write, read);
    let text = String::from_utf8(all).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), MAX_REQUESTS as usize);
    assert_eq!(text.matches("connection: close").count(), 1);
    assert!(text.trim_end().ends_with("connection: close\r\n\r\nok"), "the last answer closes");
    served.stop.cancel();
}

/// A request with a body is refused (no route takes one) and the connection closed.
#[tokio::test]
async fn a_request_with_a_body_is_refused() {
    let served = serve().await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream.write_all(b"POST /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").await.unwrap();
    let answer = read_answer(&mut stream, &mut Vec::new(), false).await;
    assert_eq!(answer.status(), "400", "{}", answer.head);
    assert!(String::from_utf8_lossy(&answer.body).contains("no request body"));
    served.stop.cancel();
}

/// A kept-alive connection idle for `IDLE_TIMEOUT` is closed without an answer.
#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let served = serve().await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    read_answer(&mut stream, &mut Vec::new(), false).await;
    let idle = tokio::time::Instant::now();
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).await.unwrap(), 0);
    assert!(idle.elapsed() >= IDLE_TIMEOUT, "closed after {:?}", idle.elapsed());
    served.stop.cancel();
}

/// At shutdown an idle kept-alive connection is closed at once: the gateway does not wait for
/// its idle timeout to stop.
#[tokio::test]
async fn shutdown_closes_idle_connections() {
    let served = serve().await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    read_answer(&mut stream, &mut Vec::new(), false).await;
    served.stop.cancel();
    assert!(closed(&mut stream).await);
    let stopped = tokio::time::timeout(Duration::from_secs(5), served.served).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "the gateway did not stop");
}
