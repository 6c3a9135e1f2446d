//! What Herald reads from a token: the header fields that decide how to verify it, and the
//! claims, parsed once into [`Verified`], which is also what the verification cache holds.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_protocol::{ErrorCode, UserId};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{AuthError, refused};

/// The claims Herald writes into the tokens it mints.
#[derive(Debug, Serialize)]
pub struct Claims {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Public information about the user (display name, avatar), shown in member lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

/// The claims Herald reads from a token; any others are ignored.
#[derive(Deserialize)]
struct TokenClaims {
    sub: Option<String>,
    /// `None` when absent (no expiry), `Some(None)` for `"exp": null`, which is refused: a
    /// token that means to expire and says so wrongly must not live forever.
    #[serde(default, deserialize_with = "present")]
    exp: Option<Option<u64>>,
    nbf: Option<u64>,
    iss: Option<String>,
    aud: Option<Audience>,
    info: Option<Box<RawValue>>,
    /// Connection tokens: channels of private namespaces the user may subscribe to.
    channels: Option<Vec<Box<str>>>,
    /// Subscription tokens: the one channel the token is for. A connection token never has it.
    channel: Option<String>,
}

/// Tells a claim given as `null` (`Some(None)`) from one left out (`None`, by `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// `aud` is one string or an array of them (RFC 7519, section 4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(aud) => aud == wanted,
            Audience::Many(auds) => auds.iter().any(|aud| aud == wanted),
        }
    }
}

/// The header fields that decide whether and how Herald can verify a token.
#[derive(Deserialize)]
pub(super) struct TokenHeader {
    pub alg: String,
    /// Which key signed the token.
    pub kid: Option<String>,
    /// Extensions the token says must be understood (RFC 7515, section 4.1.11); Herald
    /// understands none.
    pub crit: Option<IgnoredAny>,
    /// `false` means an unencoded payload (RFC 7797), which Herald does not support.
    pub b64: Option<bool>,
}

/// A token whose signature and time-independent claims (`iss`, `aud`, the shape of `exp`)
/// have been checked. The time-dependent ones (`exp`, `nbf`) are checked by [`Verified::check_time`]
/// each time the token is used, cached or not.
#[derive(Debug)]
pub(super) struct Verified {
    pub sub: Option<String>,
    /// Seconds since the Unix epoch; `None` for a token that does not expire.
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub info: Option<Arc<RawValue>>,
    pub channels: Option<Arc<[Box<str>]>>,
    pub channel: Option<String>,
}

impl Verified {
    /// Parses the (base64url) claims of a token whose signature is valid, and checks the
    /// configured issuer and audience.
    pub fn parse(payload: &str, issuer: Option<&str>, audience: Option<&str>) -> Result<Self, AuthError> {
        let claims: TokenClaims = decode_part(payload, "claims")?;
        let exp = match claims.exp {
            None => None,
            Some(None) => {
                return Err(refused("token `exp` is null: leave it out for a token that does not expire"));
            }
            Some(Some(exp)) => Some(exp),
        };
        if let Some(issuer) = issuer
            && claims.iss.as_deref() != Some(issuer)
        {
            return Err(refused(format!("token `iss` must be {issuer:?}")));
        }
        if let Some(audience) = audience
            && !claims.aud.as_ref().is_some_and(|aud| aud.contains(audience))
        {
            return Err(refused(format!("token `aud` must include {audience:?}")));
        }
        Ok(Self {
            sub: claims.sub,
            exp,
            nbf: claims.nbf,
            info: claims.info.map(Arc::from),
            channels: claims.channels.map(Arc::from),
            channel: claims.channel,
        })
    }

    /// Whether the token is valid at `now` (seconds since the Unix epoch), give or take
    /// `leeway` seconds.
    pub fn check_time(&self, now: u64, leeway: u64) -> Result<(), AuthError> {
        if self.is_expired(now, leeway) {
            return Err(AuthError { code: ErrorCode::TokenExpired, message: "token has expired".into() });
        }
        if self.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(refused("token is not valid yet"));
        }
        Ok(())
    }

    pub fn is_expired(&self, now: u64, leeway: u64) -> bool {
        self.exp.is_some_and(|exp| exp.saturating_add(leeway) < now)
    }
}

/// The user a token's `sub` names.
pub(super) fn subject(sub: Option<&str>) -> Result<UserId, AuthError> {
    let Some(sub) = sub else {
        return Err(refused("token lacks the `sub` claim"));
    };
    UserId::parse(sub).map_err(|e| refused(format!("token `sub` is not a valid user id: {e}")))
}

/// Decodes one base64url part of a token and parses its JSON.
pub(super) fn decode_part<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, AuthError> {
    let json = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| refused(format!("token is invalid: {what} is not base64url: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| refused(format!("token is invalid: malformed {what}: {e}")))
}

/// Seconds since the Unix epoch.
pub(super) fn now_secs() -> u64 {
    herald_protocol::publication::now_millis() / 1000
}
