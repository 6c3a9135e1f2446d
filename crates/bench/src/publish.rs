//! The publisher: offers messages at a fixed rate over HTTP or gRPC, one per request or
//! `--batch` per request, never more than `in_flight` requests at once, and counts per stream
//! what was published successfully.
//!
//! Each message's send time is taken right before its request goes out, so latency covers
//! the publish API, the broker and the gateway. When the server falls behind and every
//! in-flight slot is taken, sending waits: the achieved rate is reported next to the offered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_publisher_api::pb::publisher_client::PublisherClient;
use herald_publisher_api::pb::{BroadcastRequest, NotifyRequest, PublishRequest};
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::args::{Target, Via};
use crate::payload;
use crate::plan::{Destination, Plan};

/// How long one publish request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A way to publish one message.
#[derive(Clone)]
pub enum Publisher {
    /// Herald's HTTP API.
    Http { client: reqwest::Client, base: String, auth: String },
    /// Herald's gRPC API (one HTTP/2 connection, requests multiplexed).
    Grpc {
        client: PublisherClient<tonic::transport::Channel>,
        auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    },
    /// nchan's publisher location: `POST <base>/<channel>` with the bare payload.
    Nchan { client: reqwest::Client, base: String },
}

impl Publisher {
    pub async fn new(
        target: Target,
        via: Via,
        url: &str,
        api_key: &str,
        in_flight: usize,
    ) -> anyhow::Result<Self> {
        let http =
            || reqwest::Client::builder().pool_max_idle_per_host(in_flight).timeout(REQUEST_TIMEOUT).build();
        let base = url.trim_end_matches('/').to_string();
        Ok(match (target, via) {
            (Target::Nchan, _) => Publisher::Nchan { client: http()?, base },
            (Target::Herald, Via::Http) => {
                Publisher::Http { client: http()?, base, auth: format!("Bearer {api_key}") }
            }
            (Target::Herald, Via::Grpc) => {
                let channel =
                    tonic::transport::Endpoint::from_shared(base)?.timeout(REQUEST_TIMEOUT).connect().await?;
                Publisher::Grpc {
                    client: PublisherClient::new(channel),
                    auth: format!("Bearer {api_key}").parse()?,
                }
            }
        })
    }

    /// Publishes several messages in one `POST /v1/publish/batch` (Herald over HTTP, to
    /// channels); the answer is all or nothing for the count: a request that failed counts
    /// every message of it as failed, even if the server confirmed some (`outcome_unknown`).
    pub async fn send_batch(&self, messages: &[(&Destination, String)]) -> Result<(), PublishError> {
        let Publisher::Http { client, base, auth } = self else { return Err(PublishError::BatchNeedsHttp) };
        let mut body = String::from(r#"{"messages":["#);
        for (k, (dest, data)) in messages.iter().enumerate() {
            let Destination::Channel(c) = dest else { return Err(PublishError::BatchNeedsHttp) };
            if k > 0 {
                body.push(',');
            }
            body.push_str(&format!(r#"{{"channel":"{c}","data":{data}}}"#));
        }
        body.push_str("]}");
        let request = client
            .post(format!("{base}/v1/publish/batch"))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(body);
        check_http(request.send().await).await
    }

    /// Publishes `data` to `dest`; the report counts failures by the error's text.
    pub async fn send(&self, dest: &Destination, data: String) -> Result<(), PublishError> {
        match self {
            Publisher::Http { client, base, auth } => {
                let (url, body) = match dest {
                    Destination::Channel(c) => {
                        (format!("{base}/v1/publish"), format!(r#"{{"channel":"{c}","data":{data}}}"#))
                    }
                    Destination::User(u) => {
                        (format!("{base}/v1/users/{u}/notify"), format!(r#"{{"data":{data}}}"#))
                    }
                    Destination::Broadcast => {
                        (format!("{base}/v1/broadcast"), format!(r#"{{"data":{data}}}"#))
                    }
                };
                let request = client
                    .post(url)
                    .header("authorization", auth)
                    .header("content-type", "application/json")
                    .body(body);
                check_http(request.send().await).await
            }
            Publisher::Nchan { client, base } => {
                let Destination::Channel(c) = dest else { return Err(PublishError::NchanNeedsChannel) };
                check_http(client.post(format!("{base}/{c}")).body(data).send().await).await
            }
            Publisher::Grpc { client, auth } => {
                let mut client = client.clone();
                let data = data.into_bytes();
                let result = match dest {
                    Destination::Channel(c) => {
                        let msg =
                            PublishRequest { channel: c.clone(), data, event: None, idempotency_key: None };
                        client.publish(with_auth(msg, auth)).await.map(drop)
                    }
                    Destination::User(u) => {
                        let msg = NotifyRequest { user: u.clone(), data, event: None, idempotency_key: None };
                        client.notify(with_auth(msg, auth)).await.map(drop)
                    }
                    Destination::Broadcast => client
                        .broadcast(with_auth(BroadcastRequest { data, event: None }, auth))
                        .await
                        .map(drop),
                };
                result.map_err(|s| PublishError::Grpc(Box::new(s)))
            }
        }
    }
}

fn with_auth<T>(msg: T, auth: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

/// Why one publish failed. Its text is what the report counts, so it stays short.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("nchan publishes to channels")]
    NchanNeedsChannel,
    #[error("batches go to Herald's HTTP API, to channels")]
    BatchNeedsHttp,
    #[error("http timeout")]
    HttpTimeout(#[source] reqwest::Error),
    #[error("http error: {0}")]
    Http(#[source] reqwest::Error),
    /// The server answered with an error; `body` is the start of its answer.
    #[error("http {status}: {body}")]
    Status { status: reqwest::StatusCode, body: String },
    #[error("grpc {:?}: {}", .0.code(), .0.message())]
    Grpc(#[source] Box<tonic::Status>),
}

async fn check_http(response: reqwest::Result<reqwest::Response>) -> Result<(), PublishError> {
    let response = response
        .map_err(|e| if e.is_timeout() { PublishError::HttpTimeout(e) } else { PublishError::Http(e) })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(PublishError::Status { status, body: body.chars().take(120).collect() })
}

/// What the publisher did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages published successfully, per stream.
    pub published: Vec<u64>,
    pub attempted: u64,
    pub errors: BTreeMap<String, u64>,
    /// From the first send to the last reply.
    pub elapsed: Duration,
}

/// Live publish counters, for the progress bar.
#[derive(Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// How [`run`] offers its messages.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Messages to offer in all.
    pub messages: u64,
    /// Messages per second.
    pub rate: f64,
    /// Bytes of each message's `data`.
    pub payload_size: usize,
    /// Most requests outstanding at once.
    pub in_flight: usize,
    /// Messages per request; 1 publishes each on its own.
    pub batch: usize,
}

/// Offers `pace.messages` messages at `pace.rate` per second to random streams of `plan` (or
/// its only stream), `pace.batch` per request. Bounded by the message count, and each request
/// by [`REQUEST_TIMEOUT`].
pub async fn run(publisher: Publisher, plan: &Plan, pace: Pace, progress: Arc<Progress>) -> Outcome {
    let streams = plan.streams() as usize;
    let destinations: Arc<Vec<Destination>> =
        Arc::new((0..streams as u64).map(|s| plan.destination(s)).collect());
    let ok: Arc<Vec<AtomicU64>> = Arc::new((0..streams).map(|_| AtomicU64::new(0)).collect());
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut next_seq = vec![0u64; streams];
    let in_flight = pace.in_flight.max(1);
    let batch = pace.batch.max(1) as u64;
    let payload_size = pace.payload_size;
    let slots = Arc::new(Semaphore::new(in_flight));
    let period = Duration::from_secs_f64(1.0 / pace.rate.max(0.001));
    let start = Instant::now();
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let mut k = 0;
    while k < pace.messages {
        tokio::time::sleep_until(start + period.mul_f64(k as f64)).await;
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let count = batch.min(pace.messages - k);
        k += count;
        // Each message of the request: its stream and its sequence number there.
        let picks: Vec<(usize, u64)> = (0..count)
            .map(|_| {
                let stream = if streams == 1 { 0 } else { rng.random_range(0..streams) };
                next_seq[stream] += 1;
                (stream, next_seq[stream] - 1)
            })
            .collect();
        let (publisher, destinations, ok, errors, progress) =
            (publisher.clone(), destinations.clone(), ok.clone(), errors.clone(), progress.clone());
        progress.sent.fetch_add(count, Ordering::Relaxed);
        tokio::spawn(async move {
            let now = payload::now_micros();
            let result = if let [(stream, seq)] = picks[..] {
                publisher.send(&destinations[stream], payload::encode(seq, now, payload_size)).await
            } else {
                let messages: Vec<(&Destination, String)> = picks
                    .iter()
                    .map(|&(stream, seq)| (&destinations[stream], payload::encode(seq, now, payload_size)))
                    .collect();
                publisher.send_batch(&messages).await
            };
            match result {
                Ok(()) => {
                    for &(stream, _) in &picks {
                        ok[stream].fetch_add(1, Ordering::Relaxed);
                    }
                    progress.ok.fetch_add(count, Ordering::Relaxed);
                }
                Err(e) => {
                    progress.failed.fetch_add(count, Ordering::Relaxed);
                    *errors.lock().expect("errors lock").entry(e.to_string()).or_default() += count;
                }
            }
            drop(slot);
        });
    }
    // Every request ends within its timeout; wait for the last ones.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, slots.acquire_many(in_flight as u32)).await;
    let errors = errors.lock().expect("errors lock").clone();
    Outcome {
        published: ok.iter().map(|n| n.load(Ordering::Relaxed)).collect(),
        attempted: next_seq.iter().sum(),
        errors,
        elapsed: start.elapsed(),
    }
}
