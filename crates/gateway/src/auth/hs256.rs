//! HS256: the fast path. The HMAC is keyed with the secret once, at start-up, and each token
//! only clones that state; the signature is checked in constant time before the claims are
//! parsed. No cache: checking the HMAC costs about what hashing the token for a cache lookup
//! would.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::claims::{Claims, now_secs};

/// The header of the tokens Herald mints, `{"alg":"HS256","typ":"JWT"}`, encoded.
const MINTED_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// [`mint`] was given an empty secret.
#[derive(Debug, thiserror::Error)]
#[error("cannot mint a token with an empty secret")]
pub struct EmptySecret;

pub(super) fn keyed(secret: &str) -> Hmac<Sha256> {
    Hmac::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

/// Whether `signature` (base64url) is the HMAC of `signed` under `mac`'s key.
pub(super) fn verify(mac: &Hmac<Sha256>, signed: &str, signature: &str) -> bool {
    let mut tag = [0; 32];
    let mut mac = mac.clone();
    mac.update(signed.as_bytes());
    URL_SAFE_NO_PAD.decode_slice(signature, &mut tag) == Ok(tag.len()) && mac.verify_slice(&tag).is_ok()
}

/// Mints an HS256 connection token for `user`, valid for `ttl`. For tests, the quickstart, the
/// bench and `herald token`; production backends mint tokens with their own JWT library.
/// Fails only for an empty secret.
pub fn mint(secret: &str, user: &str, ttl: Duration) -> Result<String, EmptySecret> {
    if secret.is_empty() {
        return Err(EmptySecret);
    }
    Ok(sign(keyed(secret), user, ttl))
}

/// A token for `user`, valid for `ttl`, signed with `mac` (keyed, nothing hashed yet).
pub(super) fn sign(mut mac: Hmac<Sha256>, user: &str, ttl: Duration) -> String {
    let claims = Claims { sub: user.to_string(), exp: Some(now_secs() + ttl.as_secs()), info: None };
    let payload = serde_json::to_vec(&claims).expect("claims serialize");
    let mut token = format!("{MINTED_HEADER}.{}", URL_SAFE_NO_PAD.encode(payload));
    mac.update(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
    token
}
