//! A real `redis-server` child process for one test.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A `redis-server` on a free port, killed when dropped. The binary is `redis-server` on
/// `PATH`, or `$REDIS_SERVER_BIN`.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Extra `redis-server` arguments, such as `--requirepass`.
    args: Vec<String>,
    /// The data directory of a persistent server, removed when dropped.
    dir: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra arguments (`["--requirepass", "secret"]`).
    pub async fn start_with(args: &[&str]) -> Self {
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut server = Self { port: crate::free_port(), child: None, args, dir: None };
        server.restart().await;
        server
    }

    /// Starts a server that writes every command to its append-only file before answering
    /// (`appendonly yes`, `appendfsync always`), in a directory of its own, so a
    /// [`RedisServer::kill`] and [`RedisServer::restart`] lose nothing it acknowledged.
    pub async fn start_persistent() -> Self {
        let port = crate::free_port();
        let dir = std::env::temp_dir().join(format!("herald-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the redis data directory");
        let args = ["--appendonly", "yes", "--appendfsync", "always", "--dir"]
            .into_iter()
            .map(String::from)
            .chain([dir.display().to_string()])
            .collect();
        let mut server = Self { port, child: None, args, dir: Some(dir) };
        server.restart().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL): connections drop, nothing is flushed.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (install redis-server): {e}"));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {} did not answer PING within 10 s", self.port);
    }

    /// Sends one command and returns the first line of the reply (`+OK`, `:1`, `-ERR ...`,
    /// or an array's `*<count>`).
    pub async fn command(&self, args: &[&str]) -> String {
        let mut stream = self.send(args).await;
        read_line(&mut stream).await
    }

    /// The text of `INFO <section>`, such as `commandstats`.
    pub async fn info(&self, section: &str) -> String {
        let mut stream = self.send(&["INFO", section]).await;
        let head = read_line(&mut stream).await;
        let len: usize = head
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("INFO replied {head}"));
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.unwrap();
        String::from_utf8_lossy(&body).into_owned()
    }

    async fn send(&self, args: &[&str]) -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.expect("redis is not running");
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(out.as_bytes()).await.unwrap();
        stream
    }

    /// Freezes the server with SIGSTOP, as a hung host looks: connections stay open and
    /// nothing answers. It runs again when the returned guard is dropped, so a failing test
    /// leaves no frozen server behind.
    pub async fn freeze(&self) -> Frozen {
        let info = self.info("server").await;
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .expect("INFO server has process_id")
            .trim()
            .to_string();
        signal("-STOP", &pid);
        Frozen { pid }
    }

    /// Whether the server answers `PING` right now.
    pub async fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)).await else { return false };
        if stream.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        // `+PONG`, or `-NOAUTH ...` from a server that requires a password: either way it is up.
        // Not `-LOADING ...`: a server still reading its append-only file refuses commands.
        let mut head = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(1), async {
            let mut filled = 0;
            while filled < head.len() && !head[..filled].ends_with(b"\r\n") {
                match stream.read(&mut head[filled..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => filled += n,
                }
            }
            filled
        });
        match read.await {
            Ok(n) if n > 0 => (head[0] == b'+' || head[0] == b'-') && !head.starts_with(b"-LOADING"),
            _ => false,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            // The child is killed on drop as well; its files may outlive it by a moment.
            if let Some(child) = &mut self.child {
                let _ = child.start_kill();
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A `redis-server --sentinel` monitoring one master, with short timeouts so failovers take a
/// second or two. Killed when dropped.
pub struct RedisSentinel {
    port: u16,
    config: std::path::PathBuf,
    _child: Child,
}

impl RedisSentinel {
    /// Starts a sentinel (quorum 1) watching the master on `master_port` under `name`.
    pub async fn start(master_port: u16, name: &str) -> Self {
        Self::start_with(master_port, name, "").await
    }

    /// [`RedisSentinel::start`] with more configuration lines, such as `requirepass` and
    /// `sentinel auth-pass <name> <password>`.
    pub async fn start_with(master_port: u16, name: &str, extra: &str) -> Self {
        let port = crate::free_port();
        let config = std::env::temp_dir().join(format!("herald-sentinel-{}-{port}.conf", std::process::id()));
        let text = format!(
            "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds {name} 500\nsentinel failover-timeout {name} 2000\n\
             sentinel parallel-syncs {name} 1\n{extra}\n"
        );
        std::fs::write(&config, text).unwrap();
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .arg(&config)
            .args(["--sentinel", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} --sentinel: {e}"));
        let sentinel = Self { port, config, _child: child };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "sentinel on port {port} did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sentinel
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// One reply line, without its `\r\n`.
async fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line[..line.len() - 2]).into_owned()
}

/// A `redis-server` stopped by [`RedisServer::freeze`]; sent SIGCONT when dropped.
pub struct Frozen {
    pid: String,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.pid);
    }
}

fn signal(signal: &str, pid: &str) {
    let status = std::process::Command::new("kill").args([signal, pid]).status().expect("kill runs");
    assert!(status.success(), "kill {signal} {pid} failed");
}
