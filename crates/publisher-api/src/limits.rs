//! How much work one publisher replica takes on: requests in flight, bytes of request bodies
//! in flight, and messages per second per API key. Every limit refuses at once; nothing waits
//! in a queue for room.
//!
//! - A request holds a slot of `max_requests_in_flight` from admission to its answer.
//! - Bodies up to the single-message body limit ride on their slot. A larger body (a batch)
//!   also holds its size in bytes of `max_bytes_in_flight`: its `Content-Length` up front when
//!   it has one, and otherwise each frame as it arrives ([`Metered`]), so a gRPC message or a
//!   chunked body is refused as soon as it would go over. Memory for request data is then
//!   bounded by `max_requests_in_flight` x single body limit + `max_bytes_in_flight`.
//! - Each API key has a token bucket of messages (`rate_limit` per second, `rate_burst`
//!   deep); a batch takes one token per message.
//!
//! Over a limit the answer is `overloaded` (503, gRPC UNAVAILABLE) for the replica's limits and
//! `rate_limited` (429, gRPC RESOURCE_EXHAUSTED) for a key's rate, both with a `Retry-After`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::ErrorCode;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use herald_api_common::auth::{ApiKeys, Caller};

use crate::PublisherConfig;
use crate::error::ApiError;
use crate::metrics::PublisherMetrics;

/// Room around `data` in a single-message body: channel, event, keys and whitespace.
const ENVELOPE: usize = 16 * 1024;

/// How long a caller refused for the replica's limits is asked to wait.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The limits of one replica, shared by both transports.
pub(crate) struct Limits {
    /// Largest body of a single-message request (also the part of any body that needs no
    /// bytes of `max_bytes_in_flight`).
    pub single_body: usize,
    /// Largest body of a batch request, and largest gRPC message.
    pub batch_body: usize,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    /// One bucket per configured key, by name; `None` when rates are not limited.
    rates: Option<HashMap<Arc<str>, Mutex<Bucket>>>,
}

impl Limits {
    pub fn new(config: &PublisherConfig, keys: &ApiKeys) -> Self {
        let single_body = config.max_message_size.saturating_add(ENVELOPE);
        let rates = (config.rate_limit > 0).then(|| {
            keys.names()
                .map(|name| {
                    let bucket = Bucket::new(config.rate_limit as f64, config.rate_burst as f64);
                    (name.clone(), Mutex::new(bucket))
                })
                .collect()
        });
        Self {
            single_body,
            batch_body: config.max_batch_body_size.max(single_body),
            requests: Arc::new(Semaphore::new(config.max_requests_in_flight)),
            bytes: Arc::new(Semaphore::new(config.max_bytes_in_flight)),
            max_bytes: config.max_bytes_in_flight,
            rates,
        }
    }

    /// Admits a request, or refuses it at once with `overloaded`. `declared` is its body size
    /// when known in advance (`Content-Length`); bytes beyond the single body limit are
    /// reserved now, the rest of an undeclared body is charged as it arrives.
    pub fn admit(
        &self,
        declared: Option<usize>,
        metrics: &PublisherMetrics,
        transport: &'static str,
    ) -> Result<Arc<Ticket>, ApiError> {
        let Ok(slot) = self.requests.clone().try_acquire_owned() else {
            metrics.limited(transport, "requests_in_flight");
            return Err(overloaded("the replica is at publisher.max_requests_in_flight"));
        };
        let ticket = Arc::new(Ticket {
            _slot: slot,
            bytes: self.bytes.clone(),
            max_bytes: self.max_bytes,
            free: self.single_body,
            held: Mutex::new(None),
        });
        if let Some(size) = declared
            && !ticket.charge(size)
        {
            metrics.limited(transport, "bytes_in_flight");
            return Err(overloaded("the replica is at publisher.max_bytes_in_flight"));
        }
        Ok(ticket)
    }

    /// Takes `messages` tokens from `key`'s bucket, or refuses with `rate_limited` and how
    /// long until there are enough.
    pub fn take(
        &self,
        key: &Caller,
        messages: usize,
        metrics: &PublisherMetrics,
        transport: &'static str,
    ) -> Result<(), ApiError> {
        let Some(rates) = &self.rates else { return Ok(()) };
        let Some(bucket) = rates.get(key.name()) else { return Ok(()) };
        let result = bucket.lock().expect("bucket lock poisoned").take(messages as f64, Instant::now());
        result.map_err(|wait| {
            metrics.limited(transport, "rate");
            let retry_after = Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64);
            ApiError::Limited {
                code: ErrorCode::RateLimited,
                message: format!(
                    "this API key is over publisher.rate_limit ({messages} message(s) asked); retry after {}s",
                    retry_after.as_secs()
                ),
                retry_after,
            }
        })
    }
}

fn overloaded(why: &str) -> ApiError {
    ApiError::Limited {
        code: ErrorCode::Overloaded,
        message: format!("{why}; nothing was published, retry later"),
        retry_after: OVERLOADED_RETRY_AFTER,
    }
}

/// An admitted request: its slot, and the bytes of its body charged so far. Both are given
/// back when the last clone (the request's, its body's) is dropped.
pub(crate) struct Ticket {
    _slot: OwnedSemaphorePermit,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    /// Body bytes covered by the slot.
    free: usize,
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.held.lock().expect("ticket lock poisoned").as_ref().map_or(0, |p| p.num_permits());
        f.debug_struct("Ticket").field("held_bytes", &held).finish_non_exhaustive()
    }
}

impl Ticket {
    /// Makes sure bytes for a body of `total` bytes are held; `false` if the replica has not
    /// that many to spare.
    fn charge(&self, total: usize) -> bool {
        let mut held = self.held.lock().expect("ticket lock poisoned");
        let have = held.as_ref().map_or(0, |p| p.num_permits());
        let need = total.saturating_sub(self.free).saturating_sub(have);
        if need == 0 {
            return true;
        }
        if have + need > self.max_bytes {
            return false;
        }
        let Ok(need32) = u32::try_from(need) else { return false };
        match self.bytes.clone().try_acquire_many_owned(need32) {
            Ok(permit) => {
                match held.as_mut() {
                    Some(p) => p.merge(permit),
                    None => *held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// A body that charges its bytes to its request's [`Ticket`] as they arrive, and fails with
/// `over` once the replica's `max_bytes_in_flight` has no room for them.
pub(crate) struct Metered<B> {
    inner: B,
    ticket: Arc<Ticket>,
    seen: usize,
    over: fn() -> Box<dyn std::error::Error + Send + Sync>,
}

impl<B> Metered<B> {
    pub fn new(
        inner: B,
        ticket: Arc<Ticket>,
        over: fn() -> Box<dyn std::error::Error + Send + Sync>,
    ) -> Self {
        Self { inner, ticket, seen: 0, over }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len();
                    if !this.ticket.charge(this.seen) {
                        return Poll::Ready(Some(Err((this.over)())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a [`Metered`] HTTP body fails with, found again in the body rejection.
#[derive(Debug, thiserror::Error)]
#[error("publisher.max_bytes_in_flight reached while the body arrived")]
pub(crate) struct BytesInFlight;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, tokens: burst, at: None }
    }

    /// Takes `n` tokens at `now`, or says how long until `n` are there (nothing is taken
    /// then: a refused request costs nothing).
    pub fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        if let Some(at) = self.at {
            let gained = now.saturating_duration_since(at).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + gained).min(self.burst);
        }
        self.at = Some(now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let mut bucket = Bucket::new(10.0, 20.0);
        assert_eq!(bucket.take(20.0, Instant::now()), Ok(()));
        let wait = bucket.take(5.0, Instant::now()).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(bucket.take(5.0, Instant::now()), Ok(()));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(bucket.take(20.0, Instant::now()), Ok(()), "saved up to the burst");
        assert!(bucket.take(1.0, Instant::now()).is_err(), "and no more");
    }

    #[test]
    fn bytes_beyond_the_free_part_are_held_until_the_ticket_goes() {
        let config = PublisherConfig {
            api_keys: vec!["0123456789abcdef".into()],
            max_message_size: 1024,
            max_requests_in_flight: 2,
            max_bytes_in_flight: 100_000,
            ..PublisherConfig::default()
        };
        let limits = Limits::new(&config, &config.api_keys().unwrap());
        let metrics = PublisherMetrics::new(Default::default());
        let free = limits.single_body;
        let big = limits.admit(Some(free + 80_000), &metrics, "http").unwrap();
        let refused = limits.admit(Some(free + 30_000), &metrics, "http").unwrap_err();
        assert_eq!(refused.code(), ErrorCode::Overloaded);
        let small = limits.admit(Some(free), &metrics, "http").unwrap();
        assert!(small.charge(free + 20_000));
        assert!(!small.charge(free + 20_001), "over max_bytes_in_flight");
        assert_eq!(limits.admit(None, &metrics, "http").unwrap_err().code(), ErrorCode::Overloaded);
        drop((big, small));
        assert!(limits.admit(Some(free + 100_000), &metrics, "http").is_ok());
        assert!(metrics.encode().contains("limit=\"bytes_in_flight\""));
    }
}
