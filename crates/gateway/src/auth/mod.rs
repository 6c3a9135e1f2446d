//! Connection tokens: who a client is, checked once per connection.
//!
//! A token is a JWT (RFC 7519) whose `sub` is the user id, signed with HS256 (`auth.jwt_secret`)
//! or with an asymmetric key: RS256/384/512, PS256, ES256/384 or EdDSA, verified with PEM
//! public keys (`auth.public_keys`) or an identity provider's JWKS (`auth.jwks_url`). The
//! [`Identity`] it yields is what the rest of the gateway sees.
//!
//! Layout, in the order a token goes through it:
//! - [`claims`]: the header fields and claims Herald reads, parsed once.
//! - [`keys`]: the algorithms and the public keys; a key verifies only the algorithms of its
//!   type, so no `alg` confusion.
//! - [`hs256`]: the HS256 fast path (and minting HS256 tokens).
//! - [`cache`]: asymmetric verifications remembered per token, so reconnect storms do not redo
//!   them; `exp` and `nbf` are checked again on every use.
//! - [`jwks`]: the key set of `auth.jwks_url`, refreshed on a schedule and on unknown `kid`s.
//! - [`signing`]: minting with a private key, for the bench and `herald token`.
//! - `config`: `[auth]`, and its checks.
//!
//! Every connection pays for verification and a reconnect storm pays for it all at once, so
//! the accepted algorithm is checked against a bit set before anything else is parsed, the
//! signature is checked before the claims are parsed, and the claims are parsed into just the
//! fields Herald reads. The tests check the verifier against tokens made by the `jsonwebtoken`
//! crate.

mod cache;
mod claims;
mod config;
mod hs256;
mod jwks;
mod keys;
mod signing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_keys;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_protocol::{ConfigError, ErrorCode, UserId};
use hmac::Hmac;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::value::RawValue;
use sha2::Sha256;

pub use claims::Claims;
pub use config::{AuthConfig, PublicKeyFile};
pub use hs256::{EmptySecret, mint};
pub use keys::{Algorithm, KeyError, PublicKey};
pub use signing::{SigningKey, mint_signed};

use crate::metrics::JwksFetchLabels;
use cache::VerifyCache;
use claims::{TokenHeader, Verified, decode_part, now_secs, subject};
use jwks::{Jwks, Wanted};
use keys::{AlgorithmSet, NamedKey};

/// An authenticated client.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    /// When the token stops being valid (seconds since the Unix epoch); the connection is
    /// closed with code 4001 then.
    pub expires_at: Option<u64>,
    /// The token's `info` claim: what others see of this user in member lists.
    pub info: Option<Arc<RawValue>>,
    /// The token's `channels` claim: the channels (names or patterns) of private namespaces
    /// this connection may subscribe to. `None` when the claim is absent.
    pub channels: Option<Arc<[Box<str>]>>,
}

/// What a valid subscription token grants: `user` may subscribe to `channel` until
/// `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionGrant {
    pub user: UserId,
    pub channel: String,
    /// Seconds since the Unix epoch; `None` for a token without `exp`.
    pub expires_at: Option<u64>,
}

/// Why a token was refused. The message is safe to show the client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub code: ErrorCode,
    pub message: String,
}

fn refused(message: impl Into<String>) -> AuthError {
    AuthError { code: ErrorCode::Unauthorized, message: message.into() }
}

fn forbidden(message: impl Into<String>) -> AuthError {
    AuthError { code: ErrorCode::Forbidden, message: message.into() }
}

/// Why [`TokenVerifier::verified`] failed: refused for good, or for a `kid` the JWKS may not
/// have fetched yet.
enum Failure {
    Refused(AuthError),
    UnknownKid(String),
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Self {
        Failure::Refused(e)
    }
}

impl Failure {
    fn into_error(self) -> AuthError {
        match self {
            Failure::Refused(e) => e,
            Failure::UnknownKid(kid) => refused(format!(
                "token `kid` {kid:?} names no known key; the key set is being refreshed, retry"
            )),
        }
    }
}

/// Verifies connection and subscription tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// HMAC-SHA256 keyed with `auth.jwt_secret`; each token clones it.
    hs256: Option<Hmac<Sha256>>,
    accepted: AlgorithmSet,
    /// From `auth.public_keys`.
    keys: Vec<NamedKey>,
    jwks: Option<Arc<Jwks>>,
    cache: VerifyCache,
    leeway: u64,
    audience: Option<String>,
    issuer: Option<String>,
}

impl TokenVerifier {
    /// Reads the key files and fetches the JWKS. Fails when the configuration is invalid (see
    /// [`AuthConfig::validate`]), a key file cannot be read, or the JWKS cannot be fetched.
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        Self::with_metrics(config, Family::default())
    }

    /// As [`TokenVerifier::new`], counting JWKS fetches in `jwks_fetches`.
    pub fn with_metrics(
        config: &AuthConfig,
        jwks_fetches: Family<JwksFetchLabels, Counter>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut keys = Vec::new();
        for (i, entry) in config.public_keys.iter().enumerate() {
            let key = format!("auth.public_keys[{i}]");
            let pem = std::fs::read_to_string(&entry.file)
                .map_err(|e| ConfigError::new(&key, format!("cannot read {}: {e}", entry.file.display())))?;
            let public = PublicKey::from_pem(&pem)
                .map_err(|e| ConfigError::new(&key, format!("{}: {e}", entry.file.display())))?;
            keys.push(NamedKey { kid: entry.kid.clone(), alg: None, key: public });
        }
        let jwks = match &config.jwks_url {
            None => None,
            Some(url) => Some(Arc::new(
                Jwks::start(
                    url,
                    config.jwks_timeout,
                    config.jwks_refresh_interval,
                    config.jwks_min_refetch_interval,
                    jwks_fetches,
                )
                .map_err(|e| ConfigError::new("auth.jwks_url", format!("cannot fetch the key set: {e}")))?,
            )),
        };
        let mut accepted = AlgorithmSet::default();
        if config.algorithms.is_empty() {
            for alg in Algorithm::ALL {
                let configured = if alg.is_symmetric() {
                    !config.jwt_secret.is_empty()
                } else {
                    !keys.is_empty() || jwks.is_some()
                };
                if configured {
                    accepted.insert(alg);
                }
            }
        } else {
            config
                .algorithms
                .iter()
                .filter_map(|name| Algorithm::parse(name))
                .for_each(|alg| accepted.insert(alg));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                hs256: (!config.jwt_secret.is_empty()).then(|| hs256::keyed(&config.jwt_secret)),
                accepted,
                keys,
                jwks,
                cache: VerifyCache::new(cache::CAPACITY),
                leeway: config.leeway.as_secs(),
                audience: config.audience.clone(),
                issuer: config.issuer.clone(),
            }),
        })
    }

    /// A token for `user`, valid for `ttl`, signed with the secret this verifier checks: for
    /// the demo's token endpoint (`gateway.demo`), which has no secret of its own. Without
    /// `auth.jwt_secret` the token is refused like any token this verifier cannot check; the
    /// demo needs the secret.
    pub(crate) fn mint(&self, user: &UserId, ttl: Duration) -> String {
        match &self.inner.hs256 {
            Some(mac) => hs256::sign(mac.clone(), user.as_str(), ttl),
            None => String::from("the demo needs auth.jwt_secret"),
        }
    }

    /// Verifies a connection token: who the client is. Never waits: a token naming a `kid`
    /// the JWKS does not have yet starts a fetch in the background and is refused; see
    /// [`TokenVerifier::verify_async`].
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        match self.verified(token) {
            Err(Failure::UnknownKid(kid)) => {
                if let Some(jwks) = &self.inner.jwks {
                    jwks.request_refresh(Wanted::Kid(kid.clone()));
                }
                Err(Failure::UnknownKid(kid).into_error())
            }
            other => identity(other.map_err(Failure::into_error)?),
        }
    }

    /// As [`TokenVerifier::verify`], but a token naming a `kid` the JWKS does not have waits
    /// for the key set to be fetched again (one fetch shared by every waiting connection, at
    /// most one per `auth.jwks_min_refetch_interval`), so the first connection after a key
    /// rotation is accepted.
    pub async fn verify_async(&self, token: &str) -> Result<Identity, AuthError> {
        match self.verified(token) {
            Err(Failure::UnknownKid(kid)) => {
                if let Some(jwks) = &self.inner.jwks {
                    jwks.refresh(Wanted::Kid(kid)).await;
                }
                identity(self.verified(token).map_err(Failure::into_error)?)
            }
            other => identity(other.map_err(Failure::into_error)?),
        }
    }

    /// Verifies a subscription token (a JWT whose `sub` is the user and whose `channel` is the
    /// channel), checked against the connection's `user` and the `channel` it is subscribing to.
    pub fn verify_subscription(
        &self,
        token: &str,
        user: &UserId,
        channel: &str,
    ) -> Result<SubscriptionGrant, AuthError> {
        let claims = match self.verified(token) {
            Err(Failure::UnknownKid(kid)) => {
                if let Some(jwks) = &self.inner.jwks {
                    jwks.request_refresh(Wanted::Kid(kid.clone()));
                }
                return Err(Failure::UnknownKid(kid).into_error());
            }
            other => other.map_err(Failure::into_error)?,
        };
        let Some(granted) = claims.channel.clone() else {
            return Err(refused("subscription token lacks the `channel` claim"));
        };
        let subject = subject(claims.sub.as_deref())?;
        if &subject != user {
            return Err(forbidden("subscription token is for another user"));
        }
        if granted != channel {
            return Err(forbidden(format!("subscription token is for channel {granted:?}, not {channel:?}")));
        }
        Ok(SubscriptionGrant { user: subject, channel: granted, expires_at: claims.exp })
    }

    /// Checks the algorithm, the signature and the registered claims (`exp`, `nbf`, `iss`,
    /// `aud`) every kind of token shares.
    fn verified(&self, token: &str) -> Result<Arc<Verified>, Failure> {
        let inner = &*self.inner;
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused("token is invalid: a JWT has three dot-separated parts").into());
        };
        let header: TokenHeader = decode_part(header, "header")?;
        let Some(alg) = Algorithm::parse(&header.alg).filter(|alg| inner.accepted.contains(*alg)) else {
            return Err(refused(format!(
                "token algorithm {:?} is not accepted (accepted: {})",
                header.alg, inner.accepted
            ))
            .into());
        };
        if header.crit.is_some() || header.b64 == Some(false) {
            return Err(
                refused("token uses header extensions (`crit`, `b64`) Herald does not support").into()
            );
        }
        let signed = &token[..token.len() - signature.len() - 1];
        let now = now_secs();
        if alg.is_symmetric() {
            let mac = inner.hs256.as_ref().expect("HS256 is accepted only with a secret");
            if !hs256::verify(mac, signed, signature) {
                return Err(refused("token signature is invalid").into());
            }
            let claims = Verified::parse(payload, inner.issuer.as_deref(), inner.audience.as_deref())?;
            claims.check_time(now, inner.leeway)?;
            return Ok(Arc::new(claims));
        }

        // Read before the keys, so that a verification racing a key change is cached under
        // the older generation and not trusted.
        let generation = inner.jwks.as_ref().map_or(0, |jwks| jwks.generation());
        let cache_key = cache::key(token);
        if let Some(claims) = inner.cache.get(&cache_key, generation) {
            if let Err(e) = claims.check_time(now, inner.leeway) {
                if claims.is_expired(now, inner.leeway) {
                    inner.cache.remove(&cache_key);
                }
                return Err(e.into());
            }
            return Ok(claims);
        }
        if let Some(jwks) = &inner.jwks {
            jwks.refresh_if_stale();
        }
        let sig = URL_SAFE_NO_PAD.decode(signature).map_err(|_| refused("token signature is invalid"))?;
        self.check_signature(alg, header.kid.as_deref(), signed.as_bytes(), &sig)?;
        let claims = Arc::new(Verified::parse(payload, inner.issuer.as_deref(), inner.audience.as_deref())?);
        if !claims.is_expired(now, inner.leeway) {
            inner.cache.insert(cache_key, generation, claims.clone(), now, inner.leeway);
        }
        claims.check_time(now, inner.leeway)?;
        Ok(claims)
    }

    /// Checks an asymmetric signature with the key the token's `kid` names, or, without a
    /// `kid` (or one that names no key), with the keys that have no `kid` and fit `alg`.
    fn check_signature(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        signed: &[u8],
        sig: &[u8],
    ) -> Result<(), Failure> {
        let inner = &*self.inner;
        let fetched = inner.jwks.as_ref().map(|jwks| jwks.keys());
        let all = || inner.keys.iter().chain(fetched.iter().flat_map(|set| set.keys.iter()));
        let named: Vec<&NamedKey> = match kid {
            Some(kid) => all().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
            None => Vec::new(),
        };
        let candidates: Vec<&NamedKey> = if named.is_empty() {
            all().filter(|k| (kid.is_none() || k.kid.is_none()) && k.check_fits(alg).is_ok()).collect()
        } else {
            let fitting: Vec<&NamedKey> =
                named.iter().copied().filter(|k| k.check_fits(alg).is_ok()).collect();
            if fitting.is_empty() {
                return Err(
                    refused(format!("token refused: {}", named[0].check_fits(alg).unwrap_err())).into()
                );
            }
            fitting
        };
        if candidates.is_empty() {
            return match (kid, &inner.jwks) {
                (Some(kid), Some(_)) => Err(Failure::UnknownKid(kid.to_string())),
                (Some(kid), None) => {
                    Err(refused(format!("token `kid` {kid:?} names no configured key")).into())
                }
                (None, _) => Err(refused(format!("no configured key verifies {alg} tokens")).into()),
            };
        }
        if candidates.iter().any(|k| k.key.verify(alg, signed, sig)) {
            Ok(())
        } else {
            Err(refused("token signature is invalid").into())
        }
    }

    /// Verified tokens held by the cache.
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.inner.cache.len()
    }
}

fn identity(claims: Arc<Verified>) -> Result<Identity, AuthError> {
    if claims.channel.is_some() {
        return Err(refused("a subscription token (with a `channel` claim) is not a connection token"));
    }
    Ok(Identity {
        user: subject(claims.sub.as_deref())?,
        expires_at: claims.exp,
        info: claims.info.clone(),
        channels: claims.channels.clone(),
    })
}
