//! Connection tokens: who a client is, checked once per connection.
//!
//! Today a token is an HS256 JWT (RFC 7519) whose `sub` is the user id. The [`Identity`] it
//! yields is what the rest of the gateway sees, so other token kinds (RS256, JWKS) and
//! per-channel grants can be added here without touching the connection code.
//!
//! HS256 is verified here rather than by a general JWT library, because every connection pays
//! for it and a reconnect storm pays for it all at once: the HMAC is keyed with the secret
//! once, at start-up, and each token only clones that state; the header and the claims are
//! each parsed once, into just the fields Herald reads. The signature is checked before the
//! claims are parsed, in constant time. The tests check the verifier against tokens made by
//! the `jsonwebtoken` crate.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_protocol::{ConfigError, ErrorCode, UserId};
use hmac::{Hmac, KeyInit, Mac};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::config::AuthConfig;

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

/// The header fields that decide whether Herald can verify a token at all.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    /// Extensions the token says must be understood (RFC 7515, section 4.1.11); Herald
    /// understands none.
    crit: Option<IgnoredAny>,
    /// `false` means an unencoded payload (RFC 7797), which Herald does not support.
    b64: Option<bool>,
}

/// The header of the tokens Herald mints, `{"alg":"HS256","typ":"JWT"}`, encoded.
const MINTED_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Why a token was refused. The message is safe to show the client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub code: ErrorCode,
    pub message: String,
}

/// [`mint`] was given an empty secret.
#[derive(Debug, thiserror::Error)]
#[error("cannot mint a token with an empty secret")]
pub struct EmptySecret;

fn refused(message: impl Into<String>) -> AuthError {
    AuthError { code: ErrorCode::Unauthorized, message: message.into() }
}

fn forbidden(message: impl Into<String>) -> AuthError {
    AuthError { code: ErrorCode::Forbidden, message: message.into() }
}

/// Verifies connection tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    /// HMAC-SHA256 keyed with the secret; each token clones it.
    mac: Hmac<Sha256>,
    leeway: u64,
    audience: Option<String>,
    issuer: Option<String>,
}

impl TokenVerifier {
    /// Fails when the configuration is invalid (see [`AuthConfig::validate`]).
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            mac: keyed(&config.jwt_secret),
            leeway: config.leeway.as_secs(),
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
        })
    }

    /// A token for `user`, valid for `ttl`, signed with the secret this verifier checks: for
    /// the demo's token endpoint (`gateway.demo`), which has no secret of its own.
    pub(crate) fn mint(&self, user: &UserId, ttl: Duration) -> String {
        sign(self.mac.clone(), user.as_str(), ttl)
    }

    /// Verifies a connection token: who the client is.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let (claims, expires_at) = self.claims(token)?;
        if claims.channel.is_some() {
            return Err(refused("a subscription token (with a `channel` claim) is not a connection token"));
        }
        let user = subject(claims.sub)?;
        Ok(Identity {
            user,
            expires_at,
            info: claims.info.map(Arc::from),
            channels: claims.channels.map(Arc::from),
        })
    }

    /// Verifies a subscription token (a JWT whose `sub` is the user and whose `channel` is the
    /// channel), checked against the connection's `user` and the `channel` it is subscribing to.
    pub fn verify_subscription(
        &self,
        token: &str,
        user: &UserId,
        channel: &str,
    ) -> Result<SubscriptionGrant, AuthError> {
        let (claims, expires_at) = self.claims(token)?;
        let Some(granted) = claims.channel else {
            return Err(refused("subscription token lacks the `channel` claim"));
        };
        let subject = subject(claims.sub)?;
        if &subject != user {
            return Err(forbidden("subscription token is for another user"));
        }
        if granted != channel {
            return Err(forbidden(format!("subscription token is for channel {granted:?}, not {channel:?}")));
        }
        Ok(SubscriptionGrant { user: subject, channel: granted, expires_at })
    }

    /// Checks the signature and the registered claims (`exp`, `nbf`, `iss`, `aud`) every kind
    /// of token shares, and returns the claims and the expiry.
    fn claims(&self, token: &str) -> Result<(TokenClaims, Option<u64>), AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused("token is invalid: a JWT has three dot-separated parts"));
        };
        let header: TokenHeader = decode_part(header, "header")?;
        if header.alg != "HS256" {
            return Err(refused("token must be signed with HS256"));
        }
        if header.crit.is_some() || header.b64 == Some(false) {
            return Err(refused("token uses header extensions (`crit`, `b64`) Herald does not support"));
        }
        let mut tag = [0; 32];
        let signed = &token[..token.len() - signature.len() - 1];
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        let valid = URL_SAFE_NO_PAD.decode_slice(signature, &mut tag) == Ok(tag.len())
            && mac.verify_slice(&tag).is_ok();
        if !valid {
            return Err(refused("token signature is invalid"));
        }
        let claims: TokenClaims = decode_part(payload, "claims")?;
        let now = herald_protocol::publication::now_millis() / 1000;
        let exp = match claims.exp {
            None => None,
            Some(None) => {
                return Err(refused("token `exp` is null: leave it out for a token that does not expire"));
            }
            Some(Some(exp)) => Some(exp),
        };
        if exp.is_some_and(|exp| exp.saturating_add(self.leeway) < now) {
            return Err(AuthError { code: ErrorCode::TokenExpired, message: "token has expired".into() });
        }
        if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(refused("token is not valid yet"));
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(refused(format!("token `iss` must be {issuer:?}")));
        }
        if let Some(audience) = &self.audience
            && !claims.aud.as_ref().is_some_and(|aud| aud.contains(audience))
        {
            return Err(refused(format!("token `aud` must include {audience:?}")));
        }
        Ok((claims, exp))
    }
}

/// The user a token's `sub` names.
fn subject(sub: Option<String>) -> Result<UserId, AuthError> {
    let Some(sub) = sub else {
        return Err(refused("token lacks the `sub` claim"));
    };
    UserId::parse(&sub).map_err(|e| refused(format!("token `sub` is not a valid user id: {e}")))
}

fn keyed(secret: &str) -> Hmac<Sha256> {
    Hmac::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

/// Decodes one base64url part of a token and parses its JSON.
fn decode_part<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, AuthError> {
    let json = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| refused(format!("token is invalid: {what} is not base64url: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| refused(format!("token is invalid: malformed {what}: {e}")))
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
fn sign(mut mac: Hmac<Sha256>, user: &str, ttl: Duration) -> String {
    let exp = herald_protocol::publication::now_millis() / 1000 + ttl.as_secs();
    let claims = Claims { sub: user.to_string(), exp: Some(exp), info: None };
    let payload = serde_json::to_vec(&claims).expect("claims serialize");
    let mut token = format!("{MINTED_HEADER}.{}", URL_SAFE_NO_PAD.encode(payload));
    mac.update(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
    token
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier_with(f: impl FnOnce(&mut AuthConfig)) -> TokenVerifier {
        let mut config = AuthConfig { jwt_secret: SECRET.into(), ..Default::default() };
        f(&mut config);
        TokenVerifier::new(&config).unwrap()
    }

    fn verifier() -> TokenVerifier {
        verifier_with(|_| {})
    }

    fn now() -> u64 {
        herald_protocol::publication::now_millis() / 1000
    }

    /// A token made by the `jsonwebtoken` crate.
    fn library_token(alg: Algorithm, claims: Value) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
    }

    fn refusal(v: &TokenVerifier, token: &str) -> (ErrorCode, String) {
        let e = v.verify(token).unwrap_err();
        (e.code, e.message)
    }

    /// A token with the given header, payload and a valid signature.
    fn signed(header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut mac = keyed(SECRET);
        mac.update(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn a_minted_token_verifies_to_its_user() {
        let id = verifier().verify(&mint(SECRET, "alice", Duration::from_secs(60)).unwrap()).unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert!(id.expires_at.is_some());
        assert!(mint("", "alice", Duration::from_secs(60)).is_err());
    }

    #[test]
    fn minted_tokens_are_standard_jwts() {
        let token = mint(SECRET, "alice", Duration::from_secs(60)).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.required_spec_claims = ["sub".to_string()].into();
        let data = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.header.typ.as_deref(), Some("JWT"));
    }

    #[test]
    fn tokens_of_a_jwt_library_verify_with_every_claim_read() {
        let claims = json!({"sub": "bob", "exp": now() + 60, "nbf": now() - 5, "iat": now(),
                            "info": {"name": "Bob"}, "jti": "x"});
        let id = verifier().verify(&library_token(Algorithm::HS256, claims)).unwrap();
        assert_eq!(id.user.as_str(), "bob");
        assert_eq!(id.expires_at, Some(now() + 60));
        assert_eq!(id.info.unwrap().get(), r#"{"name":"Bob"}"#);
        let no_exp = verifier().verify(&library_token(Algorithm::HS256, json!({"sub": "c"}))).unwrap();
        assert_eq!(no_exp.expires_at, None);
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let v = verifier();
        assert_eq!(v.verify("garbage").unwrap_err().code, ErrorCode::Unauthorized);
        assert!(refusal(&v, "a.b.c.d").1.contains("three"));
        assert!(refusal(&v, "!!.e30.e30").1.contains("header is not base64url"));
        let other = mint("another-secret-another-secret-xx", "alice", Duration::from_secs(60)).unwrap();
        assert_eq!(refusal(&v, &other).1, "token signature is invalid");
        let token = mint(SECRET, "alice", Duration::from_secs(60)).unwrap();
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let tampered = format!("{head}.{}.{sig}", URL_SAFE_NO_PAD.encode(r#"{"sub":"mallory"}"#));
        assert_eq!(refusal(&v, &tampered).1, "token signature is invalid");
        let truncated = &token[..token.len() - 2];
        assert_eq!(refusal(&v, truncated).1, "token signature is invalid");
        let expired = library_token(Algorithm::HS256, json!({"sub": "alice", "exp": 1_000_000}));
        assert_eq!(refusal(&v, &expired), (ErrorCode::TokenExpired, "token has expired".into()));
        let bad_sub = mint(SECRET, "not a user", Duration::from_secs(60)).unwrap();
        assert!(refusal(&v, &bad_sub).1.contains("sub"));
        let no_sub = library_token(Algorithm::HS256, json!({"exp": now() + 60}));
        assert_eq!(refusal(&v, &no_sub).1, "token lacks the `sub` claim");
        let string_exp = signed(&json!({"alg": "HS256"}), &json!({"sub": "a", "exp": "soon"}));
        assert!(refusal(&v, &string_exp).1.contains("malformed claims"));
    }

    #[test]
    fn the_channels_claim_is_read_and_subscription_tokens_name_user_and_channel() {
        let v = verifier();
        let token =
            library_token(Algorithm::HS256, json!({"sub": "alice", "channels": ["team:a", "team:b*"]}));
        let channels = v.verify(&token).unwrap().channels.unwrap();
        assert_eq!(channels.iter().map(|c| &**c).collect::<Vec<_>>(), ["team:a", "team:b*"]);
        assert!(
            v.verify(&mint(SECRET, "alice", Duration::from_secs(60)).unwrap()).unwrap().channels.is_none()
        );

        let alice = UserId::parse("alice").unwrap();
        let sub =
            library_token(Algorithm::HS256, json!({"sub": "alice", "channel": "team:a", "exp": now() + 60}));
        let grant = v.verify_subscription(&sub, &alice, "team:a").unwrap();
        assert_eq!((grant.channel.as_str(), grant.expires_at), ("team:a", Some(now() + 60)));
        assert_eq!(v.verify_subscription(&sub, &alice, "team:b").unwrap_err().code, ErrorCode::Forbidden);
        let bob = UserId::parse("bob").unwrap();
        assert_eq!(v.verify_subscription(&sub, &bob, "team:a").unwrap_err().code, ErrorCode::Forbidden);
        assert!(refusal(&v, &sub).1.contains("not a connection token"));
        let no_channel = mint(SECRET, "alice", Duration::from_secs(60)).unwrap();
        assert!(
            v.verify_subscription(&no_channel, &alice, "team:a").unwrap_err().message.contains("`channel`")
        );
        let expired =
            library_token(Algorithm::HS256, json!({"sub": "alice", "channel": "team:a", "exp": 1_000_000}));
        assert_eq!(
            v.verify_subscription(&expired, &alice, "team:a").unwrap_err().code,
            ErrorCode::TokenExpired
        );
    }

    #[test]
    fn a_null_exp_is_refused_rather_than_taken_as_no_expiry() {
        let v = verifier();
        let null_exp = signed(&json!({"alg": "HS256"}), &json!({"sub": "a", "exp": null}));
        let (code, message) = refusal(&v, &null_exp);
        assert_eq!(code, ErrorCode::Unauthorized);
        assert!(message.contains("`exp` is null"), "{message}");
        let no_exp = signed(&json!({"alg": "HS256"}), &json!({"sub": "a"}));
        assert_eq!(v.verify(&no_exp).unwrap().expires_at, None, "a token without `exp` does not expire");
    }

    #[test]
    fn only_hs256_without_extensions_is_accepted() {
        let v = verifier();
        let hs384 = library_token(Algorithm::HS384, json!({"sub": "alice"}));
        assert_eq!(refusal(&v, &hs384).1, "token must be signed with HS256");
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"alice"}"#)
        );
        assert_eq!(refusal(&v, &none).1, "token must be signed with HS256");
        for header in [json!({"alg": "HS256", "crit": ["exp"]}), json!({"alg": "HS256", "b64": false})] {
            let token = signed(&header, &json!({"sub": "alice"}));
            assert!(refusal(&v, &token).1.contains("extensions"), "{header}");
        }
        assert!(
            v.verify(&signed(&json!({"alg": "HS256", "b64": true, "kid": "k"}), &json!({"sub": "a"})))
                .is_ok()
        );
    }

    #[test]
    fn not_before_and_expiry_allow_the_leeway() {
        let strict = verifier();
        let lenient = verifier_with(|c| c.leeway = Duration::from_secs(30));
        let early = library_token(Algorithm::HS256, json!({"sub": "a", "nbf": now() + 10}));
        assert_eq!(refusal(&strict, &early).1, "token is not valid yet");
        assert!(lenient.verify(&early).is_ok());
        let late = library_token(Algorithm::HS256, json!({"sub": "a", "exp": now() - 10}));
        assert_eq!(refusal(&strict, &late).0, ErrorCode::TokenExpired);
        assert!(lenient.verify(&late).is_ok());
    }

    #[test]
    fn a_configured_audience_and_issuer_must_be_in_the_token() {
        let v = verifier_with(|c| {
            c.audience = Some("herald".into());
            c.issuer = Some("https://auth.example".into());
        });
        let token = |claims: Value| library_token(Algorithm::HS256, claims);
        let iss = "https://auth.example";
        assert!(v.verify(&token(json!({"sub": "a", "aud": "herald", "iss": iss}))).is_ok());
        assert!(v.verify(&token(json!({"sub": "a", "aud": ["web", "herald"], "iss": iss}))).is_ok());
        for claims in [
            json!({"sub": "a", "iss": iss}),
            json!({"sub": "a", "aud": "web", "iss": iss}),
            json!({"sub": "a", "aud": ["web"], "iss": iss}),
        ] {
            assert!(refusal(&v, &token(claims.clone())).1.contains("`aud` must include"), "{claims}");
        }
        for claims in [json!({"sub": "a", "aud": "herald"}), json!({"sub": "a", "aud": "herald", "iss": "x"})]
        {
            assert!(refusal(&v, &token(claims.clone())).1.contains("`iss` must be"), "{claims}");
        }
        // Without the settings, `aud` and `iss` are not checked.
        assert!(verifier().verify(&token(json!({"sub": "a", "aud": "web", "iss": "x"}))).is_ok());
    }
}
