//! The deployment topology, run as processes: `scripts/local-cluster` starts a real
//! redis-server, a presence service, two gateways reporting to it and a publisher API from
//! `deploy/herald.toml`; a message published over HTTP reaches a client on each gateway, and
//! presence lists both clients' users. Stopping the script leaves no process behind. The
//! configuration files shipped for compose and Kubernetes are checked to load.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_testkit::{WsClient, free_port};
use serde_json::{Value, json};

const SECRET: &str = "local-cluster-test-secret-0123456789abcdef";
const API_KEY: &str = "local-cluster-test-api-key";
/// A namespace `deploy/herald.toml` declares.
const CHANNEL: &str = "news:local-cluster";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/local-cluster` running in its own process group. Dropping it kills the whole group,
/// so a failing test leaves nothing running.
struct LocalCluster {
    script: Child,
    run_dir: PathBuf,
    gateway_ports: [u16; 2],
    http_port: u16,
    presence_http_port: u16,
}

impl LocalCluster {
    fn start() -> Self {
        let run_dir = std::env::temp_dir().join(format!("herald-local-cluster-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).unwrap();
        let output = File::create(run_dir.join("script.log")).unwrap();
        let gateway_ports = [free_port(), free_port()];
        let http_port = free_port();
        let presence_http_port = free_port();
        let script = Command::new(repo_root().join("scripts/local-cluster"))
            .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--redis-port", &free_port().to_string()])
            .args(["--gateway-ports", &format!("{},{}", gateway_ports[0], gateway_ports[1])])
            .args(["--http-port", &http_port.to_string()])
            .args(["--grpc-port", &free_port().to_string()])
            .args(["--presence-http-port", &presence_http_port.to_string()])
            .args(["--presence-grpc-port", &free_port().to_string()])
            .args(["--jwt-secret", SECRET, "--api-key", API_KEY])
            // Above the gateways' drain window; the clients are gone by then, so it is quick.
            .args(["--stop-timeout", "15"])
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .process_group(0)
            .spawn()
            .expect("cannot run scripts/local-cluster");
        Self { script, run_dir, gateway_ports, http_port, presence_http_port }
    }

    fn pgid(&self) -> i32 {
        self.script.id() as i32
    }

    /// Fails the test with the script's output if the script has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.script.try_wait().unwrap() {
            panic!("scripts/local-cluster exited early ({status}):\n{}", self.output());
        }
    }

    /// The script's output and the end of every process' log, for failure messages.
    fn output(&self) -> String {
        let mut out = std::fs::read_to_string(self.run_dir.join("script.log")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(self.run_dir.join("logs")) {
            for entry in entries.flatten() {
                let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                out += &format!("\n--- {}\n", entry.path().display());
                out += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            }
        }
        out
    }

    /// The pids the script wrote, by process name.
    fn pids(&self) -> Vec<(String, i32)> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(self.run_dir.join("pids")).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().trim_end_matches(".pid").to_string();
            let pid = std::fs::read_to_string(entry.path()).unwrap().trim().parse().unwrap();
            pids.push((name, pid));
        }
        pids.sort();
        pids
    }

    /// Waits until GET `/readyz` on `port` answers 200.
    async fn wait_ready(&mut self, http: &reqwest::Client, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let response = http.get(format!("http://127.0.0.1:{port}/readyz")).send().await;
            if matches!(&response, Ok(r) if r.status() == 200) {
                return;
            }
            self.assert_running();
            assert!(Instant::now() < deadline, "port {port} not ready within 15 s:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERMs the script and waits (bounded) for it to stop everything and exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        signal("-TERM", self.script.id() as i32);
        // Three steps (gateways and publisher API, then presence, then Redis) of at most
        // --stop-timeout each.
        let deadline = Instant::now() + Duration::from_secs(50);
        loop {
            if let Some(status) = self.script.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "scripts/local-cluster did not exit within 50 s:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        signal("-KILL", -self.pgid());
        let _ = self.script.kill();
        let _ = self.script.wait();
        if std::thread::panicking() {
            eprintln!("scripts/local-cluster output and logs:\n{}", self.output());
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Sends a signal with kill(1); a negative target is a process group.
fn signal(signal: &str, target: i32) {
    let _ = Command::new("kill").args([signal, "--", &target.to_string()]).stderr(Stdio::null()).status();
}

/// Whether a process is running (a zombie counts as gone: it runs nothing).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).first().is_none_or(|state| *state != "Z"),
        Err(_) => false,
    }
}

/// The fields of /proc/PID/stat after the command name, which may itself hold spaces.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default()
}

/// Live processes in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let fields = stat_fields(&stat);
        // state ppid pgrp ...
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}

async fn next_message(client: &mut WsClient) -> Value {
    loop {
        let frame = client.recv().await.unwrap();
        if frame["type"] == "message" {
            return frame;
        }
    }
}

/// GET `path` on the presence HTTP API with the API key; the status and the JSON body.
async fn presence_get(http: &reqwest::Client, port: u16, path: &str) -> (u16, Value) {
    let response =
        http.get(format!("http://127.0.0.1:{port}{path}")).bearer_auth(API_KEY).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A message published over HTTP reaches a client on each of the two gateways the script
/// started, presence (reported to by both gateways) lists both users as members of the channel,
/// and SIGTERM to the script stops every process it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_delivers_through_both_gateways_and_stops_cleanly() {
    let mut cluster = LocalCluster::start();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    for port in cluster.gateway_ports {
        cluster.wait_ready(&http, port).await;
    }
    cluster.wait_ready(&http, cluster.http_port).await;
    cluster.wait_ready(&http, cluster.presence_http_port).await;
    let pids = cluster.pids();
    let names: Vec<&str> = pids.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["gateway-1", "gateway-2", "presence", "publisher-api", "redis"]);

    let mut clients = Vec::new();
    for (i, port) in cluster.gateway_ports.into_iter().enumerate() {
        let token = herald_gateway::mint(SECRET, &format!("user{i}"), Duration::from_secs(60)).unwrap();
        let (mut client, _) =
            WsClient::connect(&format!("ws://127.0.0.1:{port}/ws?token={token}")).await.unwrap();
        client.subscribe(CHANNEL).await.unwrap();
        clients.push(client);
    }
    let response = http
        .post(format!("http://127.0.0.1:{}/v1/publish", cluster.http_port))
        .bearer_auth(API_KEY)
        .json(&json!({"channel": CHANNEL, "data": {"hello": "both gateways"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    for client in &mut clients {
        let message = next_message(client).await;
        assert_eq!(message["channel"], CHANNEL);
        assert_eq!(message["data"], json!({"hello": "both gateways"}));
    }

    // Each gateway reports its changes within presence.flush_interval (200 ms) plus a round
    // trip; a report that found presence not yet listening is retried with backoff up to
    // heartbeat_interval (3 s). 5 s covers both.
    let path = format!("/v1/presence/channels/{CHANNEL}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let members = loop {
        let (status, body) = presence_get(&http, cluster.presence_http_port, &path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        let members: Vec<String> = body["members"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["user"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        if members.len() >= 2 {
            break members;
        }
        cluster.assert_running();
        assert!(
            Instant::now() < deadline,
            "presence did not list both users within 5 s: {body}\n{}",
            cluster.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(members, ["user0", "user1"], "members of {CHANNEL}");
    let (status, stats) = presence_get(&http, cluster.presence_http_port, "/v1/presence/stats").await;
    assert_eq!(status, 200, "GET /v1/presence/stats: {stats}");
    assert!(stats["online_users"].as_u64().is_some_and(|n| n >= 2), "presence stats: {stats}");
    for client in clients {
        client.close().await;
    }

    let status = cluster.stop();
    assert!(status.success(), "scripts/local-cluster exited with {status}:\n{}", cluster.output());
    for (name, pid) in &pids {
        assert!(!running(*pid), "{name} (pid {pid}) still runs after the script stopped");
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !group_members(cluster.pgid()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(group_members(cluster.pgid()), Vec::<i32>::new(), "processes left in the script's group");
}

/// The configuration files shipped for compose, local-cluster and Kubernetes load (no unknown
/// or mistyped key) and pass each role's checks once the secrets are supplied.
#[test]
fn shipped_configuration_files_load() {
    for file in ["deploy/herald.toml", "k8s/base/herald.toml"] {
        let path = repo_root().join(file);
        let mut config = herald::Config::load(Some(&path)).unwrap_or_else(|e| panic!("{file}: {e}"));
        config.auth.jwt_secret = SECRET.into();
        config.publisher.api_keys = vec![API_KEY.into()];
        config.validate_gateway().unwrap_or_else(|e| panic!("{file}: {e}"));
        config.validate_publisher().unwrap_or_else(|e| panic!("{file}: {e}"));
        // Presence falls back to the publisher's keys here; the deployments set its own.
        config.validate_presence().unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(config.presence.endpoint.is_some(), "{file} must point the gateways at presence");
        assert!(config.namespaces.0.contains_key("news"), "{file} must declare the namespace `news`");
    }
}
