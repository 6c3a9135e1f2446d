//! A real Redis Cluster for one test: six `redis-server` processes (three primaries, three
//! replicas) joined by `redis-cli --cluster create`, torn down when dropped.
//!
//! Every wait is bounded and panics with what it waited for, so a cluster that does not form
//! fails the test with a message rather than hanging it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use redis::Value;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long a node may be unreachable before the others fail it over. Short, so a test's
/// failover takes a few seconds; long enough that a loaded test machine does not fail nodes
/// over by accident.
pub const NODE_TIMEOUT_MS: u64 = 1500;

/// How long forming the cluster, or a failover, may take before the test fails.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// One `redis-server --cluster-enabled yes` process.
struct Node {
    port: u16,
    /// `None` once killed.
    child: Option<Child>,
}

/// A running Redis Cluster on `127.0.0.1`: three primaries with one replica each. Every node
/// listens on a port in 10000..22768, so that it and its cluster bus (the port + 10000) stay
/// below the ephemeral ports other test servers get. The binaries are `redis-server` and `redis-cli` on `PATH`, or `$REDIS_SERVER_BIN` and
/// `$REDIS_CLI_BIN`.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// The nodes' cluster config files; removed when dropped.
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts six nodes, joins them into a cluster and waits until every node reports
    /// `cluster_state:ok` with all 16384 slots served, and every replica has synced (so that
    /// it can take over).
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("herald-cluster-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&dir).expect("cannot create the cluster directory");
        let mut cluster = Self { nodes: Vec::new(), dir };
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        for _ in 0..6 {
            let port = cluster_port(cluster.nodes.iter().map(|n| n.port));
            let child = Command::new(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                // A replica syncs at once rather than after Redis's default delay of 5 s: one
                // that never synced cannot be promoted.
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .arg("--cluster-config-file")
                .arg(cluster.dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&cluster.dir)
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin} (install redis-server): {e}"));
            cluster.nodes.push(Node { port, child: Some(child) });
        }
        for node in &cluster.nodes {
            wait_for(&format!("redis-server on port {} to answer PING", node.port), || async {
                query::<String>(node.port, &["PING"]).await.is_ok()
            })
            .await;
        }
        let cli = std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into());
        let output = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {cli} (install redis-tools): {e}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_ok().await;
        for port in cluster.live_ports() {
            wait_for(
                &format!("the node on port {port} to be a primary or a synced replica"),
                || async move {
                    let info = query::<String>(port, &["INFO", "replication"]).await.unwrap_or_default();
                    info.contains("role:master") || info.contains("master_link_status:up")
                },
            )
            .await;
        }
        cluster
    }

    /// Every node's `host:port`, for `redis.cluster_nodes`.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect()
    }

    /// The ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// Waits until every running node says `cluster_state:ok` and sees every slot served by
    /// a node that is up.
    pub async fn wait_ok(&self) {
        for port in self.live_ports() {
            wait_for(&format!("cluster_state:ok on port {port}"), || async move {
                let info = query::<String>(port, &["CLUSTER", "INFO"]).await.unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            })
            .await;
        }
    }

    /// Kills the node on `port` at once (SIGKILL): its connections drop, nothing is flushed.
    pub async fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("no node on that port");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill().await;
        }
    }

    /// The port of the primary serving `slot`, as a running node sees it now.
    pub async fn primary_of_slot(&self, slot: u16) -> u16 {
        let mut last = String::new();
        for port in self.live_ports() {
            match slot_owners(port).await {
                Ok(owners) => {
                    if let Some((_, _, owner)) = owners.iter().find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
                    {
                        return *owner;
                    }
                    last = format!("node {port} knows no owner of slot {slot}");
                }
                Err(e) => last = e.to_string(),
            }
        }
        panic!("no running node names the primary of slot {slot}: {last}");
    }

    /// Waits until a running node other than `dead` serves `slot` and the cluster is ok
    /// again (a replica was promoted), and returns its port.
    pub async fn wait_for_failover(&self, slot: u16, dead: u16) -> u16 {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let live = self.live_ports();
            let mut promoted = None;
            for port in &live {
                if let Ok(owners) = slot_owners(*port).await {
                    let owner = owners.iter().find(|(lo, hi, _)| (*lo..=*hi).contains(&slot)).map(|o| o.2);
                    if owner.is_some_and(|o| o != dead && live.contains(&o)) {
                        promoted = owner;
                        break;
                    }
                }
            }
            if let Some(port) = promoted {
                self.wait_ok().await;
                return port;
            }
            assert!(Instant::now() < deadline, "no replica took over slot {slot} from port {dead} in time");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Moves `slot` to the primary on `to`, as `redis-cli --cluster reshard` does: `SETSLOT
    /// IMPORTING` on the target, `MIGRATING` on the source, `MIGRATE` of its keys ten at a
    /// time (`pause` between batches, so a test can publish meanwhile), then `SETSLOT NODE`
    /// on both and on the other primaries. Returns the source's port.
    pub async fn migrate_slot(&self, slot: u16, to: u16, pause: Duration) -> u16 {
        let from = self.begin_migration(slot, to, pause).await;
        self.end_migration(slot, from, to).await;
        from
    }

    /// The first part of [`RedisCluster::migrate_slot`]: the slot importing on `to` and
    /// migrating on its primary, and every key of it moved, but the slot not yet handed over,
    /// so commands for it still go to the source first and are sent on with `ASK`. Returns
    /// the source's port, for [`RedisCluster::end_migration`].
    pub async fn begin_migration(&self, slot: u16, to: u16, pause: Duration) -> u16 {
        let from = self.primary_of_slot(slot).await;
        assert_ne!(from, to, "slot {slot} is on port {to} already");
        let (from_id, to_id) = (node_id(from).await, node_id(to).await);
        let slot_arg = slot.to_string();
        must(to, &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id]).await;
        must(from, &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id]).await;
        loop {
            let keys: Vec<String> =
                query(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "10"]).await.expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            must(from, &args).await;
            tokio::time::sleep(pause).await;
        }
        from
    }

    /// Hands `slot` over to `to` after [`RedisCluster::begin_migration`]: `SETSLOT NODE` on
    /// both and on the other primaries.
    pub async fn end_migration(&self, slot: u16, from: u16, to: u16) {
        let to_id = node_id(to).await;
        let slot_arg = slot.to_string();
        must(to, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]).await;
        must(from, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]).await;
        for port in self.live_ports() {
            if port != from && port != to {
                // Replicas refuse; they learn the new owner through the cluster bus.
                let _ = query::<Value>(port, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]).await;
            }
        }
    }

    /// `CLUSTER KEYSLOT key`, as the cluster itself computes it.
    pub async fn keyslot(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        query::<u16>(port, &["CLUSTER", "KEYSLOT", key]).await.expect("CLUSTER KEYSLOT failed")
    }

    /// `INFO <section>` of the node on `port`.
    pub async fn info(&self, port: u16, section: &str) -> String {
        query::<String>(port, &["INFO", section]).await.expect("INFO failed")
    }

    /// How many `SPUBLISH` commands the node on `port` has run (`INFO commandstats`).
    pub async fn spublish_calls(&self, port: u16) -> u64 {
        let stats = self.info(port, "commandstats").await;
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_spublish:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("calls is a number"))
    }

    /// Runs one command on the node on `port` and returns its reply.
    pub async fn query<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> redis::RedisResult<T> {
        query(port, args).await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `CLUSTER MYID` of the node on `port`.
async fn node_id(port: u16) -> String {
    query::<String>(port, &["CLUSTER", "MYID"]).await.expect("CLUSTER MYID")
}

/// One command that must succeed on the node on `port`.
async fn must(port: u16, args: &[&str]) {
    query::<Value>(port, args).await.unwrap_or_else(|e| panic!("{args:?} on port {port}: {e}"));
}

/// Slot ranges and the port of their primary, from `CLUSTER SLOTS` on `port`.
async fn slot_owners(port: u16) -> redis::RedisResult<Vec<(u16, u16, u16)>> {
    let reply: Value = query(port, &["CLUSTER", "SLOTS"]).await?;
    let mut owners = Vec::new();
    if let Value::Array(ranges) = reply {
        for range in ranges {
            let Value::Array(items) = range else { continue };
            if let [Value::Int(lo), Value::Int(hi), Value::Array(primary), ..] = items.as_slice()
                && let Some(Value::Int(owner)) = primary.get(1)
            {
                owners.push((*lo as u16, *hi as u16, *owner as u16));
            }
        }
    }
    Ok(owners)
}

/// One command on a fresh connection to the node on `port`, bounded by two seconds.
async fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await
}

/// Polls `check` every 50 ms until it holds; panics after [`FORM_TIMEOUT`] naming `what`.
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + FORM_TIMEOUT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos()
}

/// A port in 10000..22768 that, with its cluster bus port (+10000), is free now and not in
/// `taken`. Both stay below Linux's ephemeral range (32768 and up), from which [`crate::free_port`]
/// hands ports to the other servers tests start meanwhile: a bus port in that range could be
/// handed out between this check and the node binding it. Ports are tried from a point that
/// differs per process and call, so test binaries running at once rarely try the same ones.
fn cluster_port(taken: impl Iterator<Item = u16> + Clone) -> u16 {
    const LOW: u32 = 10000;
    const SPAN: u32 = 22768 - 10000;
    let start = (std::process::id().wrapping_mul(7919) ^ nanos()) % SPAN;
    for i in 0..SPAN {
        let port = (LOW + (start + i * 7) % SPAN) as u16;
        if taken.clone().any(|t| t == port) {
            continue;
        }
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}
