//! The layered configuration: defaults, then the TOML file, then `HERALD_*` variables, and
//! start-up errors that name the key. Runs the real binary, since the environment is
//! process-wide.

use std::process::Command;

fn herald(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HERALD_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::new(text)
}

/// Minimal temp-file helper, so the test needs no extra crate.
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn new(text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("herald-config-{}-{}.toml", std::process::id(), rand()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
        pub fn as_str(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    fn rand() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now())
    }
}

/// `herald token` mints a token with the secret from the file, and an environment variable
/// overrides the file.
#[test]
fn environment_overrides_the_file() {
    let file = write_config("[auth]\njwt_secret = \"file-secret-file-secret-file-secret\"\n");
    let (ok, from_file) = herald(&["--config", file.as_str(), "token", "--user", "alice"], &[]);
    assert!(ok, "{from_file}");
    let (ok, from_env) = herald(
        &["--config", file.as_str(), "token", "--user", "alice"],
        &[("HERALD_AUTH__JWT_SECRET", "env-secret-env-secret-env-secret-env")],
    );
    assert!(ok, "{from_env}");
    assert_eq!(from_file.trim().split('.').count(), 3);
    assert_ne!(from_file.trim().split('.').nth(2), from_env.trim().split('.').nth(2));
}

/// Bad values, unknown keys and missing secrets stop start-up with a message naming the key.
#[test]
fn bad_configuration_names_the_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("HERALD_GATEWAY__LISTEN", "not-an-address")], "gateway.listen"),
        (&[("HERALD_GATEWAY__LISTN", "127.0.0.1:1")], "listn"),
        (&[("HERALD_REDIS__CONNECT_TIMEOUT", "soon")], "redis.connect_timeout"),
        (&[], "auth.jwt_secret"),
        (&[("HERALD_AUTH__JWT_SECRET", "short")], "auth.jwt_secret"),
    ];
    for (env, key) in cases {
        let (ok, out) = herald(&["standalone"], env);
        assert!(!ok, "{env:?} started");
        assert!(out.contains(key), "{env:?}: {out}");
    }
    let (ok, out) = herald(&["--config", "/nonexistent/herald.toml", "standalone"], &[]);
    assert!(!ok);
    assert!(out.contains("/nonexistent/herald.toml"), "{out}");
    let secret = ("HERALD_AUTH__JWT_SECRET", "env-secret-env-secret-env-secret-env");
    let (ok, out) = herald(&["standalone"], &[secret, ("HERALD_PUBLISHER__API_KEYS", "short")]);
    assert!(!ok);
    assert!(out.contains("publisher.api_keys"), "{out}");
}

/// `HERALD_CONFIG_FILE` names the file, and other `HERALD_` variables without a section
/// (`HERALD_BIN`) are not mistaken for configuration.
#[test]
fn the_config_file_can_come_from_the_environment() {
    let file = write_config("[auth]\njwt_secret = \"file-secret-file-secret-file-secret\"\n");
    let (ok, out) = herald(
        &["token", "--user", "alice"],
        &[("HERALD_CONFIG_FILE", file.as_str()), ("HERALD_BIN", "/bin/herald")],
    );
    assert!(ok, "{out}");
}

/// A comma-separated `HERALD_PUBLISHER__API_KEYS` is a list of keys.
#[test]
fn api_keys_from_the_environment_are_a_list() {
    let (ok, out) = herald(
        &["standalone"],
        &[
            ("HERALD_AUTH__JWT_SECRET", "env-secret-env-secret-env-secret-env"),
            ("HERALD_PUBLISHER__API_KEYS", "first-key-0123456789,x"),
        ],
    );
    assert!(!ok);
    assert!(out.contains("publisher.api_keys[1]"), "{out}");
}

/// `runtime.worker_threads` sets how many runtime threads the process runs.
#[test]
fn the_runtime_has_the_configured_worker_threads() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/standalone.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["--config", config, "standalone"]);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HERALD_")) {
        cmd.env_remove(k);
    }
    let any_port = "127.0.0.1:0";
    cmd.envs([
        ("HERALD_RUNTIME__WORKER_THREADS", "3"),
        ("HERALD_GATEWAY__LISTEN", any_port),
        ("HERALD_PUBLISHER__HTTP_LISTEN", any_port),
        ("HERALD_PUBLISHER__GRPC_LISTEN", any_port),
        ("HERALD_PRESENCE__HTTP_LISTEN", any_port),
        ("HERALD_PRESENCE__GRPC_LISTEN", any_port),
    ]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let child = herald_testkit::KillOnDrop(cmd.spawn().unwrap());
    let workers = || {
        std::fs::read_dir(format!("/proc/{}/task", child.0.id()))
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .filter(|name| name.trim() == "tokio-rt-worker")
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while workers() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(workers(), 3);
}
