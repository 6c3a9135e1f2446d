//! An identity provider's JSON Web Key Set (`auth.jwks_url`), kept fresh without a restart.
//!
//! - Fetched once at start-up, which fails if it cannot be: a gateway that cannot verify the
//!   provider's tokens would refuse every user, and the orchestrator's restart retries.
//! - Fetched again when older than `auth.jwks_refresh_interval`, checked as tokens are
//!   verified (an idle gateway fetches nothing), and when a token names a `kid` the set does
//!   not have: that is how a key rotation is picked up.
//! - At most one fetch at a time, and at most one per `auth.jwks_min_refetch_interval`: every
//!   connection presenting the same unknown `kid` waits for the same fetch, and tokens naming
//!   made-up `kid`s cannot make the gateway hammer the provider.
//! - A failed fetch keeps the last good key set; it is logged and counted
//!   (`herald_gateway_jwks_fetches_total{result="error"}`).
//!
//! Fetches are detached tasks bounded by `auth.jwks_timeout`; nothing waits for them at
//! shutdown, as there is nothing to finish.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use tokio::time::Instant;

use super::keys::{Algorithm, NamedKey, PublicKey};
use crate::metrics::JwksFetchLabels;

/// A key set larger than this is refused: real ones are a few kilobytes.
const MAX_BODY: usize = 1 << 20;

/// Why a key set could not be had; the last good one is kept.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot build an HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot start a runtime for the start-up fetch: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the start-up fetch panicked")]
    Panicked,
    #[error("GET {url}: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("GET {url}: key set larger than {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("not a JWKS document: {0}")]
    Document(#[source] serde_json::Error),
    #[error("the key set has no usable signature key")]
    NoUsableKey,
}

/// The keys of the last good fetch.
pub(super) struct KeySet {
    pub keys: Vec<NamedKey>,
    fetched_at: Instant,
}

impl KeySet {
    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// What a fetch is for: a missing `kid` (skipped if another fetch brought it meanwhile) or a
/// stale set (skipped if another fetch refreshed it meanwhile).
pub(super) enum Wanted {
    Kid(String),
    Fresh,
}

pub(super) struct Jwks {
    url: String,
    client: reqwest::Client,
    timeout: Duration,
    refresh_interval: Duration,
    min_refetch: Duration,
    current: RwLock<Arc<KeySet>>,
    /// Bumped whenever a fetch changes the keys; cached verifications of older generations are
    /// not trusted.
    generation: AtomicU64,
    /// Held for a whole fetch: concurrent callers queue here and then find the work done.
    fetch_lock: tokio::sync::Mutex<()>,
    last_attempt: Mutex<Option<Instant>>,
    /// A detached fetch task exists; no second one is spawned.
    in_flight: AtomicBool,
    fetches: Family<JwksFetchLabels, Counter>,
}

impl Jwks {
    /// Fetches the key set once (blocking this thread, at start-up) and returns the handle.
    pub fn start(
        url: &str,
        timeout: Duration,
        refresh_interval: Duration,
        min_refetch: Duration,
        fetches: Family<JwksFetchLabels, Counter>,
    ) -> Result<Self, FetchError> {
        let http = client(timeout)?;
        // The start-up fetch runs on a runtime of its own on another thread, so that it works
        // whether or not the caller is inside a runtime; its own client, so that no pooled
        // connection outlives that runtime.
        let first = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(FetchError::Runtime)?;
                    runtime.block_on(fetch(&client(timeout)?, url))
                })
                .join()
                .unwrap_or(Err(FetchError::Panicked))
        });
        let result = if first.is_ok() { "ok" } else { "error" };
        fetches.get_or_create(&JwksFetchLabels { result }).inc();
        let keys = first?;
        Ok(Self {
            url: url.to_string(),
            client: http,
            timeout,
            refresh_interval,
            min_refetch,
            current: RwLock::new(Arc::new(KeySet { keys, fetched_at: Instant::now() })),
            generation: AtomicU64::new(1),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(Some(Instant::now())),
            in_flight: AtomicBool::new(false),
            fetches,
        })
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.current.read().expect("key set lock").clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn is_stale(&self) -> bool {
        self.keys().fetched_at + self.refresh_interval <= Instant::now()
    }

    fn rate_limited(&self) -> bool {
        let last = *self.last_attempt.lock().expect("fetch time lock");
        last.is_some_and(|last| last + self.min_refetch > Instant::now())
    }

    /// Fetches the key set unless the fetch is no longer needed or the rate limit says no;
    /// callers arriving during a fetch wait for it.
    pub async fn refresh(&self, wanted: Wanted) {
        let _one_at_a_time = self.fetch_lock.lock().await;
        let done = match &wanted {
            Wanted::Kid(kid) => self.keys().has_kid(kid),
            Wanted::Fresh => !self.is_stale(),
        };
        if done || self.rate_limited() {
            return;
        }
        *self.last_attempt.lock().expect("fetch time lock") = Some(Instant::now());
        let fetched = tokio::time::timeout(self.timeout, fetch(&self.client, &self.url))
            .await
            .unwrap_or(Err(FetchError::Timeout(self.timeout)));
        match fetched {
            Ok(keys) => {
                self.fetches.get_or_create(&JwksFetchLabels { result: "ok" }).inc();
                let mut current = self.current.write().expect("key set lock");
                if current.keys != keys {
                    tracing::info!(url = %self.url, keys = keys.len(), "JWKS key set changed");
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                *current = Arc::new(KeySet { keys, fetched_at: Instant::now() });
            }
            Err(e) => {
                self.fetches.get_or_create(&JwksFetchLabels { result: "error" }).inc();
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the last good key set");
            }
        }
    }

    /// Starts a fetch in the background, for callers that cannot wait; does nothing outside a
    /// Tokio runtime, while a fetch is under way, or within the rate limit.
    pub fn request_refresh(self: &Arc<Self>, wanted: Wanted) {
        if self.rate_limited() || self.in_flight.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let jwks = self.clone();
        runtime.spawn(async move {
            jwks.refresh(wanted).await;
            jwks.in_flight.store(false, Ordering::Release);
        });
    }

    /// Starts a background fetch if the set is older than the refresh interval.
    pub fn refresh_if_stale(self: &Arc<Self>) {
        if self.is_stale() {
            self.request_refresh(Wanted::Fresh);
        }
    }
}

fn client(timeout: Duration) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder().timeout(timeout).pool_max_idle_per_host(0).build().map_err(FetchError::Client)
}

/// GETs and parses the key set.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<NamedKey>, FetchError> {
    let request = |source| FetchError::Request { url: url.to_string(), source };
    let mut response = client.get(url).send().await.map_err(request)?;
    if !response.status().is_success() {
        return Err(FetchError::Status { url: url.to_string(), status: response.status() });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(FetchError::TooLarge { url: url.to_string() });
        }
        body.extend_from_slice(&chunk);
    }
    parse(&body)
}

/// One JWK (RFC 7517), the members Herald reads.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// The signature verification keys of a JWKS document. Keys Herald cannot or must not use are
/// skipped, each logged at debug: encryption keys (`use` other than `sig`), symmetric keys
/// (`oct`: a secret is never taken from a URL), unknown types, curves and algorithms. A set
/// with no usable key is an error, so that it does not replace a good one.
pub(super) fn parse(body: &[u8]) -> Result<Vec<NamedKey>, FetchError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(FetchError::Document)?;
    let mut keys = Vec::new();
    for value in set.keys {
        match serde_json::from_value::<Jwk>(value).map_err(|e| e.to_string()).and_then(|jwk| key(&jwk)) {
            Ok(key) => keys.push(key),
            Err(why) => tracing::debug!(%why, "JWKS key skipped"),
        }
    }
    if keys.is_empty() {
        return Err(FetchError::NoUsableKey);
    }
    Ok(keys)
}

fn key(jwk: &Jwk) -> Result<NamedKey, String> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err(format!("key {:?} is not for signatures", jwk.kid));
    }
    if jwk.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|op| op == "verify")) {
        return Err(format!("key {:?} is not for verifying", jwk.kid));
    }
    let alg = match jwk.alg.as_deref() {
        None => None,
        Some(name) => match Algorithm::parse(name) {
            Some(alg) if !alg.is_symmetric() => Some(alg),
            _ => return Err(format!("key {:?} has an unsupported alg {name:?}", jwk.kid)),
        },
    };
    let field = |value: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let value = value.as_deref().ok_or_else(|| format!("key {:?} lacks `{name}`", jwk.kid))?;
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|e| format!("key {:?}: `{name}` is not base64url: {e}", jwk.kid))
    };
    let public = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => PublicKey::rsa(&field(&jwk.n, "n")?, &field(&jwk.e, "e")?).map_err(|e| e.0)?,
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (x, y) = (field(&jwk.x, "x")?, field(&jwk.y, "y")?);
            let size = if crv == "P-256" { 32 } else { 48 };
            if x.len() != size || y.len() != size {
                return Err(format!("key {:?}: wrong coordinate length for {crv}", jwk.kid));
            }
            let point: Box<[u8]> = [&[4u8][..], &x, &y].concat().into();
            if size == 32 { PublicKey::P256(point) } else { PublicKey::P384(point) }
        }
        ("OKP", Some("Ed25519")) => {
            let x = field(&jwk.x, "x")?;
            if x.len() != 32 {
                return Err(format!("key {:?}: an Ed25519 key has 32 bytes", jwk.kid));
            }
            PublicKey::Ed25519(x.into())
        }
        (kty, crv) => return Err(format!("key {:?}: unsupported kty {kty:?} (crv {crv:?})", jwk.kid)),
    };
    let named = NamedKey { kid: jwk.kid.clone(), alg, key: public };
    if let Some(alg) = alg {
        named.check_fits(alg)?;
    }
    Ok(named)
}
