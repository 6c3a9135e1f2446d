//! What a `herald` process logs about its life, read as the JSON lines a log pipeline gets:
//! started, ready, not ready and back, the drain, the exit; and fatal errors as JSON lines too
//! (plain text only when the log configuration itself is broken). Real processes, real Redis.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use herald_testkit::{RedisServer, WsClient, free_port};
use serde_json::Value;

use crate::common::{API_KEY, SECRET};

/// A `herald` child process with JSON logs, every line of its standard output kept.
struct Logged {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// `herald` with `args` and `env`, and none of the test's own `HERALD_` variables.
fn herald(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HERALD_") || k == "RUST_LOG") {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd
}

impl Logged {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = herald(args, env);
        cmd.env("HERALD_LOG__FORMAT", "json").stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start herald");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                kept.lock().unwrap().push(json);
            }
        });
        Self { child, lines, reader: Some(reader) }
    }

    /// Waits for a line with `message` (and `service`, when given).
    async fn wait_for(&self, message: &str, service: Option<&str>) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(line) = self.find(message, service) {
                return line;
            }
            assert!(tokio::time::Instant::now() < deadline, "no {message:?} line in {:#?}", self.all());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn find(&self, message: &str, service: Option<&str>) -> Option<Value> {
        self.all().into_iter().find(|l| l["message"] == message && service.is_none_or(|s| l["service"] == s))
    }

    fn all(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    fn sigterm(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// Waits for the exit, and for every line written before it.
    async fn exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(tokio::time::Instant::now() < deadline, "herald did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.reader.take().unwrap().join().unwrap();
        status
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The messages of `lines`, in order, that are one of `of` (for `service`, when given).
fn messages(lines: &[Value], of: &[&str], service: Option<&str>) -> Vec<String> {
    lines
        .iter()
        .filter(|l| of.iter().any(|m| l["message"] == *m) && service.is_none_or(|s| l["service"] == s))
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect()
}

/// A gateway with JSON logs says, in order: started (role, version, address, engine), ready,
/// the SIGTERM, drain started with its 100 connections, how many are left each second, drained,
/// and stopped because of SIGTERM; it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_logs_its_life_as_json_lines() {
    let redis = RedisServer::start().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut gateway = Logged::start(
        &["gateway"],
        &[
            ("HERALD_REDIS__URL", &redis.url()),
            ("HERALD_GATEWAY__LISTEN", &addr),
            ("HERALD_GATEWAY__DRAIN_WINDOW", "2500ms"),
            ("HERALD_AUTH__JWT_SECRET", SECRET),
        ],
    );
    let started = gateway.wait_for("herald started", None).await;
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["role"], "gateway");
    assert_eq!(started["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(started["engine"], "redis");
    assert_eq!(started["gateway.listen"], addr.as_str());
    gateway.wait_for("ready", Some("gateway")).await;

    let token =
        |user: usize| herald_gateway::mint(SECRET, &user.to_string(), Duration::from_secs(60)).unwrap();
    let urls: Vec<String> = (0..100).map(|i| format!("ws://{addr}/ws?token={}", token(i))).collect();
    let mut clients = Vec::new();
    for connected in join_all(urls.iter().map(|url| WsClient::connect(url))).await {
        clients.push(connected.unwrap().0);
    }
    gateway.sigterm();
    let closed = join_all(clients.iter_mut().map(|c| c.closed())).await;
    assert!(closed.into_iter().all(|c| c.unwrap().code == 1012));
    let status = gateway.exit().await;
    assert!(status.success(), "exit status {status}");

    let lines = gateway.all();
    let life = [
        "herald started",
        "ready",
        "not ready",
        "shutdown signal received",
        "drain started",
        "draining",
        "drained",
        "herald stopped",
    ];
    let seen = messages(&lines, &life, None);
    let draining = seen.iter().filter(|m| *m == "draining").count();
    assert!(draining >= 1, "no drain progress in {seen:?}");
    let mut expected: Vec<&str> =
        vec!["herald started", "ready", "shutdown signal received", "drain started"];
    expected.extend(std::iter::repeat_n("draining", draining));
    expected.extend(["drained", "herald stopped"]);
    assert_eq!(seen, expected, "{lines:#?}");

    let line = |message: &str| lines.iter().find(|l| l["message"] == message).unwrap().clone();
    assert_eq!(line("shutdown signal received")["signal"], "SIGTERM");
    let drain = line("drain started");
    assert_eq!((drain["service"].as_str(), drain["connections"].as_u64()), (Some("gateway"), Some(100)));
    assert_eq!(drain["window_ms"], 2500);
    let left: Vec<u64> = lines
        .iter()
        .filter(|l| l["message"] == "draining")
        .map(|l| l["connections"].as_u64().unwrap())
        .collect();
    // Closed ones are counted once their close handshake is over, up to a second later.
    let fewer = left.windows(2).all(|w| w[0] >= w[1]) && left.last() < Some(&100);
    assert!(left.len() >= 2 && fewer, "connections left each second: {left:?}");
    assert!(line("drained")["elapsed_ms"].as_u64().unwrap() >= 2000);
    let stopped = line("herald stopped");
    assert_eq!((stopped["level"].as_str(), stopped["reason"].as_str()), (Some("INFO"), Some("SIGTERM")));
}

/// While Redis is down, a gateway and a publisher API probed over and over log `not ready`
/// once, with the reason, and `ready` once when it is back: changes, not probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_changes_are_logged_once_each() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let gateway_addr = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let grpc = format!("127.0.0.1:{}", free_port());
    let gateway = Logged::start(
        &["gateway"],
        &[
            ("HERALD_REDIS__URL", &url),
            ("HERALD_REDIS__RECONNECT_MAX", "200ms"),
            ("HERALD_GATEWAY__LISTEN", &gateway_addr),
            ("HERALD_AUTH__JWT_SECRET", SECRET),
        ],
    );
    let publisher = Logged::start(
        &["publisher-api"],
        &[
            ("HERALD_REDIS__URL", &url),
            ("HERALD_PUBLISHER__HTTP_LISTEN", &http),
            ("HERALD_PUBLISHER__GRPC_LISTEN", &grpc),
            ("HERALD_PUBLISHER__API_KEYS", API_KEY),
        ],
    );
    gateway.wait_for("ready", Some("gateway")).await;
    publisher.wait_for("ready", Some("publisher-api")).await;

    let probe = async |addr: &str| reqwest::get(format!("http://{addr}/readyz")).await.unwrap().status();
    redis.kill().await;
    for addr in [&gateway_addr, &http] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut refused = 0;
        while refused < 5 {
            assert!(tokio::time::Instant::now() < deadline, "{addr} still ready without Redis");
            if probe(addr).await == 503 {
                refused += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    redis.restart().await;
    for addr in [&gateway_addr, &http] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while probe(addr).await != 200 {
            assert!(tokio::time::Instant::now() < deadline, "{addr} not ready again after Redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The gateway's readiness is logged when it changes, not when probed: its `ready` may
    // come a moment after the 200. The publisher API's is logged before its 200 is sent, but
    // the line may still be on its way through the pipe this test reads.
    for (logged, service) in [(&gateway, "gateway"), (&publisher, "publisher-api")] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while messages(&logged.all(), &["ready"], Some(service)).len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "{service}: {:#?}", logged.all());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    for (logged, service) in [(&gateway, "gateway"), (&publisher, "publisher-api")] {
        let lines = logged.all();
        let changes = messages(&lines, &["ready", "not ready"], Some(service));
        assert_eq!(changes.first().map(String::as_str), Some("ready"), "{service}: {changes:?}");
        assert_eq!(changes.last().map(String::as_str), Some("ready"), "{service}: {changes:?}");
        let down = changes.iter().filter(|m| *m == "not ready").count();
        // The gateway may see two reasons in turn (its canary lost, then its subscriptions);
        // the publisher API was probed at least five times while down.
        let most = if service == "gateway" { 2 } else { 1 };
        assert!((1..=most).contains(&down), "{service} logged not ready {down} times: {changes:?}");
        assert_eq!(changes.iter().filter(|m| *m == "ready").count(), 2, "{service}: {changes:?}");
        for line in lines.iter().filter(|l| l["message"] == "not ready") {
            assert_eq!(line["level"], "WARN");
            let reason = line["reason"].as_str().unwrap();
            assert!(reason.contains("broker") || reason.contains("canary"), "{service}: {reason}");
        }
    }
}

/// A bad value with JSON logs is one JSON error line naming the key, and exit status 1; so is
/// a listener that cannot bind.
#[tokio::test]
async fn fatal_errors_are_json_lines_with_a_non_zero_exit() {
    let mut bad = Logged::start(
        &["gateway"],
        &[("HERALD_GATEWAY__LISTEN", "not-an-address"), ("HERALD_AUTH__JWT_SECRET", SECRET)],
    );
    assert_eq!(bad.exit().await.code(), Some(1));
    let lines = bad.all();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(
        (lines[0]["level"].as_str(), lines[0]["message"].as_str()),
        (Some("ERROR"), Some("herald failed"))
    );
    let error = lines[0]["error"].as_str().unwrap();
    assert!(error.contains("invalid configuration") && error.contains("gateway.listen"), "{error}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut busy = Logged::start(
        &["publisher-api"],
        &[
            ("HERALD_REDIS__URL", "redis://127.0.0.1:1"),
            ("HERALD_PUBLISHER__HTTP_LISTEN", &addr),
            ("HERALD_PUBLISHER__API_KEYS", API_KEY),
        ],
    );
    assert_eq!(busy.exit().await.code(), Some(1));
    let failed = busy.find("herald failed", None).expect("a herald failed line");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("publisher.http_listen") && error.contains(&addr), "{error}");
    assert!(busy.find("herald started", None).is_none());
}

/// When the log configuration itself is broken, or the file holding it is not TOML, the error
/// is plain text on standard error, saying so, and the exit status is 1.
#[test]
fn a_broken_log_configuration_falls_back_to_plain_text() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("HERALD_LOG__FORMAT", "xml")], "log.format"),
        (&[("HERALD_LOG__LEVEL", "info,=[")], "log.level"),
    ];
    let secret = ("HERALD_AUTH__JWT_SECRET", SECRET);
    for (env, key) in cases {
        let out = herald(&["gateway"], &[*env, &[secret]].concat()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{env:?}: {}", String::from_utf8_lossy(&out.stdout));
        assert!(stderr.contains("log configuration is invalid") && stderr.contains(key), "{env:?}: {stderr}");
    }
    let file = std::env::temp_dir().join(format!("herald-not-toml-{}.toml", std::process::id()));
    std::fs::write(&file, "[log\nformat = json").unwrap();
    let out = herald(&["--config", file.to_str().unwrap(), "gateway"], &[secret]).output().unwrap();
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("log configuration is invalid"), "{stderr}");
}
