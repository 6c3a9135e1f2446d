//! What tests of every role use to check the operator's view: `promtool check metrics` on a
//! `/metrics` body, a gRPC health check and a reflection listing. Behind the `testing`
//! feature, for dev-dependencies only.

use std::io::Write;
use std::process::{Command, Stdio};

use futures_util::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Asserts that `promtool check metrics` (Debian package `prometheus`) accepts `body`: it
/// parses, and linting finds nothing. Where promtool is not installed the check is skipped
/// with a loud message on stderr, so the rest of the test still runs.
pub fn assert_promtool_accepts(body: &str, what: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "\n!!!!! SKIPPED `promtool check metrics` of {what}: promtool is not on PATH \
                 (install the Debian package `prometheus`) !!!!!\n"
            );
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child.stdin.take().expect("piped").write_all(body.as_bytes()).expect("promtool reads its stdin");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics refused {what} ({}):\n{}{}\n--- body ---\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// What `GET /metrics` of every role must show: `text` (fetched without an `Accept` header)
/// with the text format's content type, accepted by `promtool`; `open` (fetched with
/// Prometheus' `Accept` header) in OpenMetrics with its content type; both with the
/// `process_*` metrics and `herald_build_info` for `role`.
///
/// `promtool check metrics` reads only the text format (it stops at OpenMetrics' `info`
/// type), so the OpenMetrics body is checked for the points where the two formats differ.
pub fn assert_metrics_bodies(role: &str, (text_type, text): (&str, &str), (open_type, open): (&str, &str)) {
    use crate::metrics::Format;
    assert_eq!(text_type, Format::Prometheus.content_type());
    assert_eq!(open_type, Format::OpenMetrics.content_type());
    for body in [text, open] {
        assert!(
            body.contains(&format!(
                "herald_build_info{{version=\"{}\",role=\"{role}\"",
                env!("CARGO_PKG_VERSION")
            )),
            "{body}"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(body.contains(&format!("\n{name} ")), "{name} missing:\n{body}");
        }
    }
    assert!(!text.contains("# EOF"), "{text}");
    assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"), "{text}");
    assert_promtool_accepts(text, &format!("the {role} /metrics (text format)"));
    assert!(open.contains("# TYPE process_cpu_seconds counter\n"), "{open}");
    assert!(open.contains("# TYPE herald_build info\n"), "{open}");
    assert!(open.ends_with("# EOF\n") && open.matches("# EOF").count() == 1, "{open}");
    assert_documented(text);
}

/// Asserts that every metric in `text` (a text-format body) has its row in the metrics table
/// of `docs/operations.md`, with the help text it is exported with.
fn assert_documented(text: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
    let docs = std::fs::read_to_string(path).expect("docs/operations.md is readable");
    for help in text.lines().filter_map(|l| l.strip_prefix("# HELP ")) {
        let (name, help) = help.split_once(' ').unwrap_or((help, ""));
        let help = help.strip_suffix('.').unwrap_or(help);
        let row = docs
            .lines()
            .find(|l| l.strip_prefix(&format!("| `{name}")).is_some_and(|rest| rest.starts_with(['`', '{'])));
        let row = row.unwrap_or_else(|| panic!("{name} has no row in docs/operations.md"));
        assert!(
            row.contains(&format!("| {help} |")),
            "docs/operations.md: {name}'s help is not {help:?}:\n{row}"
        );
    }
}

/// The `Accept` header Prometheus sends when it scrapes.
pub const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";

/// Fetches `url` (a `/metrics`) with `accept` as the `Accept` header, if any; returns its
/// content type and body.
pub async fn scrape(url: &str, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("/metrics answers");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ASCII").to_string();
    (content_type, response.text().await.expect("a UTF-8 body"))
}

/// Scrapes `url` without and with Prometheus' `Accept` header and checks both bodies with
/// [`assert_metrics_bodies`]; returns them (text, OpenMetrics) for the role's own checks.
pub async fn check_metrics_endpoint(role: &str, url: &str) -> (String, String) {
    let (text_type, text) = scrape(url, None).await;
    let (open_type, open) = scrape(url, Some(PROMETHEUS_ACCEPT)).await;
    assert_metrics_bodies(role, (&text_type, &text), (&open_type, &open));
    (text, open)
}

/// Checks health of the whole server until it says `want`, for at most 15 s.
pub async fn wait_for_health(channel: &Channel, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let now = health(channel.clone(), "").await.expect("health answers");
        if now == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "health stayed {now:?}, never {want:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The answer of `grpc.health.v1.Health/Check` for `service` (`""`: the whole server).
pub async fn health(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let reply = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await?;
    Ok(ServingStatus::try_from(reply.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// The services server reflection v1 lists.
pub async fn reflection_v1(channel: Channel) -> Vec<String> {
    list_services!(v1, channel)
}

/// The services server reflection v1alpha lists.
pub async fn reflection_v1alpha(channel: Channel) -> Vec<String> {
    list_services!(v1alpha, channel)
}

/// One `ListServices` call over the reflection protocol version `$v` (the two versions'
/// messages are the same but for their package).
macro_rules! list_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        let request = tonic_reflection::pb::$v::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let what = stringify!($v);
        let replies = ServerReflectionClient::new($channel)
            .server_reflection_info(futures_util::stream::iter([request]))
            .await
            .unwrap_or_else(|e| panic!("reflection {what} refused the call: {e}"));
        let reply = replies.into_inner().next().await.expect("one reply").expect("a listing");
        match reply.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("reflection {what} answered {other:?}"),
        }
    }};
}
use list_services;
