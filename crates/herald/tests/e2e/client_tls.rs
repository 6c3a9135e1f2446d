//! The gateway's outbound TLS with client certificates, against real processes: a
//! `herald presence` that demands one (`[presence.tls]` with `client_ca`) hears from a
//! `herald gateway` that presents one (`[presence.client_tls]`) and refuses one that does not;
//! a backend hook over `https://` or `grpcs://` that demands one, and an API key, lets a
//! gateway with both ask (`[gateway.hooks.client_tls]`, `gateway.hooks.api_key`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use herald_testkit::{KillOnDrop, RedisServer, free_port};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use herald_gateway::hook::pb::permission_hook_server::{PermissionHook, PermissionHookServer};
use herald_gateway::hook::pb::{HookReply, HookRequest};
use herald_presence::config::ClientTlsConfig;
use herald_presence::{GrpcTransport, Transport};
use herald_protocol::ChannelName;

use crate::presence_support::{API_KEY, PresenceProcess, SECRET, connect_to};
use crate::refresh::{connect, jwt, standalone};

/// The key the hook endpoint expects from gateways.
const HOOK_KEY: &str = "hook-key-0123456789abcdef";

/// A test CA in its own directory, issuing certificates for `localhost` and `127.0.0.1`.
struct Pki {
    dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, as files.
#[derive(Clone)]
struct Identity {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("herald-e2e-client-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("herald test CA {name}"));
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A new leaf (server or client: neither restricts its key usage), written as
    /// `<name>.pem` and `<name>-key.pem`.
    fn issue(&self, name: &str) -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let cert = rcgen::CertificateParams::new(sans).unwrap().signed_by(&key, &self.ca).unwrap();
        let identity = Identity {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&identity.cert, cert.pem()).unwrap();
        std::fs::write(&identity.key, key.serialize_pem()).unwrap();
        identity
    }

    /// A TLS client that trusts this CA, presenting `identity` when given (a backend's view).
    fn client(&self, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match identity {
            Some(id) => builder.with_client_auth_cert(certs(&id.cert), key(&id.key)).unwrap(),
            None => builder.with_no_client_auth(),
        })
    }

    /// A TLS server with `identity`, offering `alpn`, that demands a client certificate this
    /// CA signed.
    fn server(&self, identity: &Identity, alpn: &[u8]) -> Arc<rustls::ServerConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&identity.cert), key(&identity.key))
            .unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// ring, the workspace's one provider (deprecated in rustls for lacking post-quantum key
/// exchange, which Herald does not offer either).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).unwrap().map(Result::unwrap).collect()
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `GET path` over TLS with the presence API key: the status and the JSON body, or the error
/// that ended the exchange.
async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> std::io::Result<(u16, Value)> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {API_KEY}\r\nconnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// `herald presence` serving TLS on both listeners and demanding client certificates from
/// `pki`'s CA; waits until `/readyz` answers over mutual TLS.
async fn presence_process(
    redis: &RedisServer,
    pki: &Pki,
    backend: Arc<rustls::ClientConfig>,
) -> PresenceProcess {
    let server = pki.issue("presence");
    let ca = pki.ca_file();
    let env = [
        ("HERALD_NAMESPACES__ROOM__SUBSCRIBE", "true"),
        ("HERALD_PRESENCE__TLS__CERT", path(&server.cert)),
        ("HERALD_PRESENCE__TLS__KEY", path(&server.key)),
        ("HERALD_PRESENCE__TLS__CLIENT_CA", path(&ca)),
    ];
    let presence = PresenceProcess::spawn(&redis.url(), &env);
    let http = presence.http;
    presence
        .wait_ready(async || matches!(https_get(http, backend.clone(), "/readyz").await, Ok((200, _))))
        .await;
    presence
}

/// A `herald gateway` child process with JSON logs, every line of its standard output kept.
struct LoggedGateway {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<Value>>>,
    _process: KillOnDrop,
}

impl LoggedGateway {
    /// Starts `herald gateway` reporting to `endpoint` with `env` on top, and waits for
    /// `/readyz`.
    async fn start(redis: &RedisServer, endpoint: &str, env: &[(&str, &str)]) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("gateway")
            .env("HERALD_REDIS__URL", redis.url())
            .env("HERALD_GATEWAY__LISTEN", addr.to_string())
            .env("HERALD_AUTH__JWT_SECRET", SECRET)
            .env("HERALD_NAMESPACES__ROOM__SUBSCRIBE", "true")
            .env("HERALD_PRESENCE__ENDPOINT", endpoint)
            .env("HERALD_PRESENCE__API_KEYS", API_KEY)
            .env("HERALD_PRESENCE__FLUSH_INTERVAL", "50ms")
            .env("HERALD_PRESENCE__HEARTBEAT_INTERVAL", "300ms")
            .env("HERALD_PRESENCE__REQUEST_TIMEOUT", "2s")
            .env("HERALD_LOG__LEVEL", "warn")
            .env("HERALD_LOG__FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start herald gateway");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str(&line) {
                    kept.lock().unwrap().push(json);
                }
            }
        });
        let gateway = Self { addr, lines, _process: KillOnDrop(child) };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(resp) = reqwest::get(format!("http://{addr}/readyz")).await
                && resp.status() == 200
            {
                return gateway;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald gateway did not become ready: {:#?}",
                gateway.lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (bounded) for a log line whose message is `message`.
    async fn wait_for(&self, message: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l["message"] == message) {
                return line;
            }
            assert!(tokio::time::Instant::now() < deadline, "no {message:?} line in {:#?}", self.lines());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `GET path` of the presence role's HTTP API (over mutual TLS) until the answer
/// matches.
async fn wait_get(
    http: SocketAddr,
    backend: &Arc<rustls::ClientConfig>,
    path: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = https_get(http, backend.clone(), path).await;
        if let Ok((200, body)) = &answer
            && check(body)
        {
            return body.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never matched: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A presence role that demands client certificates sees the users of a gateway that presents
/// one (over its HTTP and its gRPC API), while a gateway with only the CA fails its reports at
/// the TLS handshake and says so in its log, and its users stay unknown to presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_with_mutual_tls_hears_only_gateways_with_a_certificate() {
    let redis = RedisServer::start().await;
    let pki = Pki::new("presence");
    let backend = pki.client(Some(&pki.issue("backend")));
    let presence = presence_process(&redis, &pki, backend.clone()).await;
    let (http, grpc) = (presence.http, presence.grpc);
    let endpoint = format!("https://127.0.0.1:{}", grpc.port());

    let gateway_id = pki.issue("gateway");
    let trusted = LoggedGateway::start(
        &redis,
        &endpoint,
        &[
            ("HERALD_PRESENCE__CLIENT_TLS__CA", path(&pki.ca_file())),
            ("HERALD_PRESENCE__CLIENT_TLS__CERT", path(&gateway_id.cert)),
            ("HERALD_PRESENCE__CLIENT_TLS__KEY", path(&gateway_id.key)),
        ],
    )
    .await;
    let mut alice = connect_to(trusted.addr, "alice", None).await;
    alice.subscribe("room:tls").await.unwrap();
    let online = wait_get(http, &backend, "/v1/presence/users/alice", |u| u["online"] == true).await;
    assert_eq!(online["connections"], 1, "{online}");
    wait_get(http, &backend, "/v1/presence/channels/room:tls", |c| c["count"] == 1).await;

    // The gRPC API shows her too, asked over mutual TLS through the gateway's own transport
    // (its member lists); without the certificate the same question fails.
    let tls = ClientTlsConfig {
        ca: Some(pki.ca_file()),
        cert: Some(gateway_id.cert.clone()),
        key: Some(gateway_id.key.clone()),
    };
    let room = ChannelName::parse("room:tls").unwrap();
    let members = GrpcTransport::new(&endpoint, API_KEY, &tls).unwrap().members(&room).await.unwrap();
    assert_eq!(members.count, 1, "{members:?}");
    let ca_only = ClientTlsConfig { ca: Some(pki.ca_file()), ..Default::default() };
    let refused = GrpcTransport::new(&endpoint, API_KEY, &ca_only).unwrap().members(&room).await;
    assert!(refused.is_err(), "a member list without a client certificate: {refused:?}");

    let untrusted =
        LoggedGateway::start(&redis, &endpoint, &[("HERALD_PRESENCE__CLIENT_TLS__CA", path(&pki.ca_file()))])
            .await;
    let _bob = connect_to(untrusted.addr, "bob", None).await;
    let failed =
        untrusted.wait_for("presence report failed; delivery goes on, changes are kept for later").await;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("asked for a client certificate") && error.contains("presence.client_tls.cert"),
        "the log does not say why: {failed}"
    );
    let bob = wait_get(http, &backend, "/v1/presence/users/bob", |_| true).await;
    assert_eq!(bob["online"], false, "a gateway without a certificate got its report through: {bob}");
    assert!(trusted.lines().iter().all(|l| l["message"] != failed["message"]), "{:#?}", trusted.lines());
}

/// What the hook endpoint saw: handshakes it refused, and calls without the key.
#[derive(Default)]
struct HookSeen {
    refused_handshakes: AtomicUsize,
    unauthorized: AtomicUsize,
}

/// The application's hook over `https://`: it demands a client certificate from `pki`'s CA and
/// `Authorization: Bearer HOOK_KEY`; then `hooked:no` is refused and the rest allowed.
async fn https_hook(pki: &Pki) -> (String, Arc<HookSeen>) {
    let seen = Arc::new(HookSeen::default());
    let listener = TlsListener {
        tcp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        acceptor: tokio_rustls::TlsAcceptor::from(pki.server(&pki.issue("hook"), b"http/1.1")),
        seen: seen.clone(),
    };
    let url = format!("https://localhost:{}/hook", listener.tcp.local_addr().unwrap().port());
    let counted = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, axum::Json(question): axum::Json<Value>| async move {
            if headers.get("authorization").and_then(|v| v.to_str().ok())
                != Some(&format!("Bearer {HOOK_KEY}"))
            {
                counted.unauthorized.fetch_add(1, Ordering::Relaxed);
                return Err(StatusCode::UNAUTHORIZED);
            }
            Ok(axum::Json(json!({"allow": question["channel"] != "hooked:no", "reason": "not in this room"})))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// A TCP listener whose connections reach axum only after a TLS handshake.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    seen: Arc<HookSeen>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(_) => {
                    self.seen.refused_handshakes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Over `https://` with a client certificate and the API key, the hook is asked and its
/// answers decide; a gateway with the CA and the key but no certificate is refused at the
/// handshake, so its subscriptions fail closed (`unavailable`), and a gateway with the
/// certificate but no key is refused by the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_hook_with_a_client_certificate_and_a_key_allows_a_subscribe() {
    let pki = Pki::new("hook");
    let (url, seen) = https_hook(&pki).await;
    let gateway_id = pki.issue("gateway");
    let (ca, cert, key) = (path(&pki.ca_file()).to_string(), path(&gateway_id.cert), path(&gateway_id.key));
    let hooked = |extra: &[(&'static str, &str)]| {
        let mut env = vec![
            ("HERALD_NAMESPACES__HOOKED__SUBSCRIBE_HOOK", "true"),
            ("HERALD_GATEWAY__HOOKS__URL", url.as_str()),
            ("HERALD_GATEWAY__HOOKS__CLIENT_TLS__CA", ca.as_str()),
        ];
        env.extend_from_slice(extra);
        standalone(&env)
    };

    let server = hooked(&[
        ("HERALD_GATEWAY__HOOKS__CLIENT_TLS__CERT", cert),
        ("HERALD_GATEWAY__HOOKS__CLIENT_TLS__KEY", key),
        ("HERALD_GATEWAY__HOOKS__API_KEY", HOOK_KEY),
    ]);
    let (mut alice, _) = connect(&server, &jwt("alice", 60, json!({})), "").await.unwrap();
    alice.subscribe("hooked:ok").await.unwrap();
    let no = alice.request(json!({"type": "subscribe", "channel": "hooked:no"})).await.unwrap();
    assert_eq!(no["code"], "forbidden", "{no}");
    assert_eq!(seen.refused_handshakes.load(Ordering::Relaxed), 0);
    assert_eq!(seen.unauthorized.load(Ordering::Relaxed), 0);

    let anonymous = hooked(&[("HERALD_GATEWAY__HOOKS__API_KEY", HOOK_KEY)]);
    let (mut bob, _) = connect(&anonymous, &jwt("bob", 60, json!({})), "").await.unwrap();
    let failed = bob.request(json!({"type": "subscribe", "channel": "hooked:ok"})).await.unwrap();
    assert_eq!(failed["code"], "unavailable", "{failed}");
    assert!(seen.refused_handshakes.load(Ordering::Relaxed) >= 1, "the hook never refused a handshake");

    let keyless = hooked(&[
        ("HERALD_GATEWAY__HOOKS__CLIENT_TLS__CERT", cert),
        ("HERALD_GATEWAY__HOOKS__CLIENT_TLS__KEY", key),
    ]);
    let (mut carol, _) = connect(&keyless, &jwt("carol", 60, json!({})), "").await.unwrap();
    let failed = carol.request(json!({"type": "subscribe", "channel": "hooked:ok"})).await.unwrap();
    assert_eq!(failed["code"], "unavailable", "{failed}");
    assert_eq!(seen.unauthorized.load(Ordering::Relaxed), 1);
}

/// The hook as a gRPC service that checks the key, answering like the HTTP one.
struct GrpcHook;

impl GrpcHook {
    fn answer(request: &tonic::Request<HookRequest>) -> Result<tonic::Response<HookReply>, tonic::Status> {
        let bearer = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if bearer != Some(&format!("Bearer {HOOK_KEY}")) {
            return Err(tonic::Status::unauthenticated("no key"));
        }
        let allow = request.get_ref().channel != "hooked:no";
        Ok(tonic::Response::new(HookReply { allow, reason: "not in this room".into() }))
    }
}

#[tonic::async_trait]
impl PermissionHook for GrpcHook {
    async fn subscribe(
        &self,
        request: tonic::Request<HookRequest>,
    ) -> Result<tonic::Response<HookReply>, tonic::Status> {
        Self::answer(&request)
    }

    async fn publish(
        &self,
        request: tonic::Request<HookRequest>,
    ) -> Result<tonic::Response<HookReply>, tonic::Status> {
        Self::answer(&request)
    }
}

/// A server-side TLS connection as tonic serves it.
struct GrpcConn(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for GrpcConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GrpcConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Over `grpcs://` with a client certificate and the key, the gRPC hook is asked and its
/// answers decide; without the certificate the hook refuses the handshake and the
/// subscription fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcs_hook_with_a_client_certificate_and_a_key_allows_a_subscribe() {
    let pki = Pki::new("grpcs");
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server(&pki.issue("hook"), b"h2"));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("grpcs://localhost:{}", tcp.local_addr().unwrap().port());
    let refused = Arc::new(AtomicUsize::new(0));
    let counted = refused.clone();
    let incoming = futures_util::stream::unfold((tcp, acceptor), move |(tcp, acceptor)| {
        let counted = counted.clone();
        async move {
            loop {
                let Ok((conn, _)) = tcp.accept().await else { continue };
                match acceptor.accept(conn).await {
                    Ok(tls) => return Some((Ok::<_, std::io::Error>(GrpcConn(tls)), (tcp, acceptor))),
                    Err(_) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PermissionHookServer::new(GrpcHook))
            .serve_with_incoming(incoming),
    );

    let gateway_id = pki.issue("gateway");
    let ca = path(&pki.ca_file()).to_string();
    let hooked = |extra: &[(&'static str, &str)]| {
        let mut env = vec![
            ("HERALD_NAMESPACES__HOOKED__SUBSCRIBE_HOOK", "true"),
            ("HERALD_GATEWAY__HOOKS__URL", url.as_str()),
            ("HERALD_GATEWAY__HOOKS__CLIENT_TLS__CA", ca.as_str()),
            ("HERALD_GATEWAY__HOOKS__API_KEY", HOOK_KEY),
        ];
        env.extend_from_slice(extra);
        standalone(&env)
    };
    let server = hooked(&[
        ("HERALD_GATEWAY__HOOKS__CLIENT_TLS__CERT", path(&gateway_id.cert)),
        ("HERALD_GATEWAY__HOOKS__CLIENT_TLS__KEY", path(&gateway_id.key)),
    ]);
    let (mut alice, _) = connect(&server, &jwt("alice", 60, json!({})), "").await.unwrap();
    alice.subscribe("hooked:ok").await.unwrap();
    let no = alice.request(json!({"type": "subscribe", "channel": "hooked:no"})).await.unwrap();
    assert_eq!(no["code"], "forbidden", "{no}");
    assert_eq!(refused.load(Ordering::Relaxed), 0);

    let anonymous = hooked(&[]);
    let (mut bob, _) = connect(&anonymous, &jwt("bob", 60, json!({})), "").await.unwrap();
    let failed = bob.request(json!({"type": "subscribe", "channel": "hooked:ok"})).await.unwrap();
    assert_eq!(failed["code"], "unavailable", "{failed}");
    assert!(refused.load(Ordering::Relaxed) >= 1, "the hook never refused a handshake");
}
