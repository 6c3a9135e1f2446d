//! The verifier with HS256 tokens: claims, refusals and their messages.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::hs256::keyed;
use super::*;
use hmac::Mac;

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
    let token = library_token(Algorithm::HS256, json!({"sub": "alice", "channels": ["team:a", "team:b*"]}));
    let channels = v.verify(&token).unwrap().channels.unwrap();
    assert_eq!(channels.iter().map(|c| &**c).collect::<Vec<_>>(), ["team:a", "team:b*"]);
    assert!(v.verify(&mint(SECRET, "alice", Duration::from_secs(60)).unwrap()).unwrap().channels.is_none());

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
    assert!(v.verify_subscription(&no_channel, &alice, "team:a").unwrap_err().message.contains("`channel`"));
    let expired =
        library_token(Algorithm::HS256, json!({"sub": "alice", "channel": "team:a", "exp": 1_000_000}));
    assert_eq!(v.verify_subscription(&expired, &alice, "team:a").unwrap_err().code, ErrorCode::TokenExpired);
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
    assert_eq!(refusal(&v, &hs384).1, r#"token algorithm "HS384" is not accepted (accepted: HS256)"#);
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"sub":"alice"}"#)
    );
    assert_eq!(refusal(&v, &none).1, r#"token algorithm "none" is not accepted (accepted: HS256)"#);
    for header in [json!({"alg": "HS256", "crit": ["exp"]}), json!({"alg": "HS256", "b64": false})] {
        let token = signed(&header, &json!({"sub": "alice"}));
        assert!(refusal(&v, &token).1.contains("extensions"), "{header}");
    }
    assert!(
        v.verify(&signed(&json!({"alg": "HS256", "b64": true, "kid": "k"}), &json!({"sub": "a"}))).is_ok()
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
    for claims in [json!({"sub": "a", "aud": "herald"}), json!({"sub": "a", "aud": "herald", "iss": "x"})] {
        assert!(refusal(&v, &token(claims.clone())).1.contains("`iss` must be"), "{claims}");
    }
    // Without the settings, `aud` and `iss` are not checked.
    assert!(verifier().verify(&token(json!({"sub": "a", "aud": "web", "iss": "x"}))).is_ok());
}
