//! Heavy batches next to a witness (issue 23, findings 2 and 3), against a publisher in a
//! process of its own with the default limits, so its memory can be measured honestly.
//!
//! The publisher process is this test binary again, running only [`publisher_process`]; the
//! test starts it, measures its peak RSS (`VmHWM` in `/proc/<pid>/status`) and kills it.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::conformance::node;
use herald_broker::{Broker, RedisBroker, RedisConfig};
use herald_protocol::{ChannelName, NamespaceConfig, Namespaces};
use herald_publisher_api::pb::publisher_client::PublisherClient;
use herald_publisher_api::{PublisherApi, PublisherConfig, pb};
use herald_testkit::{KillOnDrop, RedisServer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::helpers::with_key;

/// Tells the test binary to run as the publisher process, with this Redis URL.
const CHILD_ENV: &str = "HERALD_TEST_PUBLISHER_PROCESS_REDIS";
const HEAVY_KEY: &str = "heavy-backend-key-0123";
const WITNESS_KEY: &str = "witness-backend-key-0123";
/// The bound on the publisher's peak RSS that `docs/configuration.md` promises for the
/// default limits.
const RSS_BOUND_KIB: u64 = 256 * 1024;
/// The `data` of every heavy message: a JSON string just under the default 64 KiB limit.
const HEAVY_DATA: usize = 65_000;

/// The publisher process: defaults everywhere but the keys and the listeners. Does nothing
/// when run without [`CHILD_ENV`], as in an ordinary `cargo test -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the publisher process of `huge_batches_are_bounded_and_a_witness_is_not_starved`"]
async fn publisher_process() {
    let Ok(url) = std::env::var(CHILD_ENV) else { return };
    let config = PublisherConfig {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: vec![HEAVY_KEY.into(), WITNESS_KEY.into()],
        ..PublisherConfig::default()
    };
    config.validate().unwrap();
    let mut namespaces = Namespaces::default();
    namespaces.0.insert("load".into(), NamespaceConfig::default());
    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::new(RedisConfig { url, ..RedisConfig::default() }).unwrap());
    let http = TcpListener::bind(config.http_listen).await.unwrap();
    let grpc = TcpListener::bind(config.grpc_listen).await.unwrap();
    println!("LISTENING {} {}", http.local_addr().unwrap(), grpc.local_addr().unwrap());
    let api = PublisherApi::new(config, namespaces, Default::default(), Default::default(), broker);
    herald_publisher_api::serve(api, http, grpc, std::future::pending()).await.unwrap();
}

/// A batch of `n` heavy messages as an HTTP body.
fn heavy_body(n: usize) -> Bytes {
    let data = "x".repeat(HEAVY_DATA);
    let messages: Vec<_> = (0..n).map(|_| json!({"channel": "load:heavy", "data": data})).collect();
    Bytes::from(json!({ "messages": messages }).to_string())
}

/// What became of the heavy requests.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    too_large: usize,
    overloaded: usize,
    /// The connection was closed while the body was still being sent: the server answered
    /// and stopped reading, which is a refusal too.
    cut_off: usize,
    other: Vec<String>,
}

/// Eight concurrent batch requests of 65 MB are refused (over `max_batch_body_size`), and
/// batches just under that limit, eight HTTP clients and two gRPC clients at once, are taken
/// a few at a time within `max_bytes_in_flight` and refused at once beyond. Meanwhile the
/// publisher's peak RSS stays under the documented 256 MiB, and every small publish of a
/// witness backend with another key succeeds and is delivered: batches go to Redis in
/// bounded pipelines, so the witness's messages interleave instead of timing out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_batches_are_bounded_and_a_witness_is_not_starved() {
    let redis = RedisServer::start().await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["load::publisher_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, redis.url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let _child = KillOnDrop(child);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        // The test harness prints `test <name> ... ` before it on the same line.
        let line = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once("LISTENING ").map(|(_, addrs)| addrs.to_string()));
        let _ = tx.send(line);
    });
    let line =
        tokio::time::timeout(Duration::from_secs(30), rx).await.unwrap().unwrap().expect("publisher started");
    let mut addrs = line.split_whitespace();
    let (http, grpc) =
        (format!("http://{}", addrs.next().unwrap()), format!("http://{}", addrs.next().unwrap()));
    let baseline = peak_rss_kib(pid);

    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::new(RedisConfig { url: redis.url(), ..RedisConfig::default() }).unwrap());
    let (witness_node, got) = node(&broker);
    witness_node.subscribe(&ChannelName::parse("load:witness").unwrap()).await.unwrap();

    let huge = heavy_body(1000);
    assert!(huge.len() > 65_000_000, "{}", huge.len());
    let big = heavy_body(250);
    assert!(big.len() < 16 * 1024 * 1024, "{}", big.len());
    let heavy = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (body, rounds) = if i < 8 { (huge.clone(), 1) } else { (big.clone(), 3) };
        let (heavy, url) = (heavy.clone(), format!("{http}/v1/publish/batch"));
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..rounds {
                let sent = heavy.post(&url).bearer_auth(HEAVY_KEY).body(body.clone()).send().await;
                outcomes.push(match sent {
                    Ok(response) => response.status().as_u16().to_string(),
                    Err(_) => "cut off".to_string(),
                });
            }
            outcomes
        }));
    }
    let grpc_batch = pb::PublishBatchRequest {
        messages: (0..250)
            .map(|_| pb::PublishRequest {
                channel: "load:heavy".into(),
                data: format!("\"{}\"", "x".repeat(HEAVY_DATA - 2)).into_bytes(),
                event: None,
                idempotency_key: None,
            })
            .collect(),
    };
    for _ in 0..2 {
        let (grpc, batch) = (grpc.clone(), grpc_batch.clone());
        tasks.push(tokio::spawn(async move {
            let mut client =
                PublisherClient::connect(grpc).await.unwrap().max_encoding_message_size(usize::MAX);
            let mut outcomes = Vec::new();
            for _ in 0..3 {
                outcomes.push(match client.publish_batch(with_key(batch.clone(), HEAVY_KEY)).await {
                    Ok(_) => "200".to_string(),
                    Err(status) if status.code() == tonic::Code::Unavailable => "503".to_string(),
                    Err(status) => format!("grpc {status:?}"),
                });
            }
            outcomes
        }));
    }

    // The witness publishes small messages, one after the other, until every heavy request
    // was answered and at least 100 were sent.
    let witness = reqwest::Client::new();
    let started = Instant::now();
    let (mut sent, mut slowest) = (0usize, Duration::ZERO);
    while sent < 100 || tasks.iter().any(|t| !t.is_finished()) {
        assert!(started.elapsed() < Duration::from_secs(300), "heavy requests did not finish");
        let at = Instant::now();
        let response = witness
            .post(format!("{http}/v1/publish"))
            .bearer_auth(WITNESS_KEY)
            .body(json!({"channel": "load:witness", "data": {"n": sent}}).to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(status, 200, "witness publish {sent} failed: {}", response.text().await.unwrap());
        slowest = slowest.max(at.elapsed());
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tally = Tally::default();
    for (i, task) in tasks.into_iter().enumerate() {
        let outcomes = task.await.unwrap();
        if i < 8 {
            assert!(
                outcomes.iter().all(|o| o == "413" || o == "cut off"),
                "a 65 MB batch was taken: {outcomes:?}"
            );
        }
        for outcome in outcomes {
            match outcome.as_str() {
                "200" => tally.ok += 1,
                "413" => tally.too_large += 1,
                "503" => tally.overloaded += 1,
                "cut off" => tally.cut_off += 1,
                _ => tally.other.push(outcome),
            }
        }
    }
    let peak = peak_rss_kib(pid);
    eprintln!(
        "publisher peak RSS {} MiB (at start {} MiB); heavy: {tally:?}; witness: {sent} publishes, slowest {slowest:?}",
        peak / 1024,
        baseline / 1024
    );
    assert!(tally.other.is_empty(), "{tally:?}");
    assert!(tally.ok >= 1, "no batch under the limits was taken: {tally:?}");
    assert_eq!(tally.ok + tally.too_large + tally.overloaded + tally.cut_off, 8 + 8 * 3 + 2 * 3);
    assert!(tally.ok <= 8 * 3 + 2 * 3, "{tally:?}");
    assert!(peak < RSS_BOUND_KIB, "publisher peak RSS {} MiB is over the bound", peak / 1024);
    let delivered = tokio::time::timeout(Duration::from_secs(30), got.wait_for(sent))
        .await
        .expect("witness messages delivered");
    assert_eq!(delivered.len(), sent);
}

/// The peak resident set size of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
