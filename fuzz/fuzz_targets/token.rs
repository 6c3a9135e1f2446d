//! The connection-token verifier (`TokenVerifier`, HS256 with a fixed secret).
//!
//! Three kinds of input (see the first byte below): any string as a token; a correctly signed
//! token whose claims are fuzzed field by field (wrong types, times around now, audiences and
//! issuers that match or not, arbitrary `info`); a correctly signed token whose header and
//! claims are arbitrary bytes. Properties: nothing panics; an accepted token carries a valid signature under the
//! secret and the user of its `sub`; for fuzzed claims the outcome (accepted, or refused with
//! `unauthorized` or `token_expired`) is the one the rules of `docs/protocol.md` give, and any
//! single changed character makes a token that was accepted refused.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_gateway::{AuthConfig, TokenVerifier};
use herald_protocol::{ErrorCode, UserId};
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use sha2::Sha256;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const LEEWAY: u64 = 30;
const AUDIENCE: &str = "herald";
const ISSUER: &str = "https://auth.example";

/// What a fuzzed claims token is made of (input mode `c`).
#[derive(Arbitrary, Debug)]
struct Structured {
    claims: Claims,
    header: Header,
    tamper: Option<(u16, u8)>,
}

/// Claims field by field; `None` leaves the claim out.
#[derive(Arbitrary, Debug)]
struct Claims {
    sub: Option<Json>,
    exp: Option<Time>,
    nbf: Option<Time>,
    iss: Option<Named>,
    aud: Option<Audience>,
    info: Option<Json>,
    other: Option<(String, Json)>,
}

#[derive(Arbitrary, Debug)]
enum Header {
    Minimal,
    Typed,
    Alg(String),
    Crit,
    Unencoded,
    Encoded,
}

/// A time claim: clearly past or future (beyond the leeway), or any JSON.
#[derive(Arbitrary, Debug)]
enum Time {
    Past(u32),
    Future(u32),
    Exact(u64),
    Other(Json),
}

#[derive(Arbitrary, Debug)]
enum Named {
    Configured,
    Other(String),
    NotAString(Json),
}

#[derive(Arbitrary, Debug)]
enum Audience {
    One(Named),
    Many(Vec<Named>),
}

/// A JSON value, of every kind.
#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => json!(b),
            Json::Int(i) => json!(i),
            Json::UInt(u) => json!(u),
            Json::Float(f) => json!(f),
            Json::Str(s) => json!(s),
            Json::Array(items) => Value::Array(items.iter().map(Json::value).collect()),
            Json::Object(fields) => {
                Value::Object(fields.iter().map(|(k, v)| (k.clone(), v.value())).collect())
            }
        }
    }
}

impl Named {
    fn value(&self, configured: &str) -> Value {
        match self {
            Named::Configured => json!(configured),
            Named::Other(s) => json!(s),
            Named::NotAString(v) => v.value(),
        }
    }
}

fn verifier(strict: bool) -> &'static TokenVerifier {
    static PLAIN: OnceLock<TokenVerifier> = OnceLock::new();
    static STRICT: OnceLock<TokenVerifier> = OnceLock::new();
    let (cell, audience, issuer) = match strict {
        false => (&PLAIN, None, None),
        true => (&STRICT, Some(AUDIENCE.to_string()), Some(ISSUER.to_string())),
    };
    cell.get_or_init(|| {
        let config = AuthConfig {
            jwt_secret: SECRET.into(),
            leeway: Duration::from_secs(LEEWAY),
            audience,
            issuer,
            ..Default::default()
        };
        TokenVerifier::new(&config).expect("a valid auth config")
    })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn mac() -> Hmac<Sha256> {
    Hmac::new_from_slice(SECRET.as_bytes()).unwrap()
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let signed = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let mut mac = mac();
    mac.update(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// Whether `token` is three parts whose last is the HMAC of the first two under the secret.
fn well_signed(token: &str) -> bool {
    let Some((signed, signature)) = token.rsplit_once('.') else { return false };
    let Ok(tag) = URL_SAFE_NO_PAD.decode(signature) else { return false };
    let mut mac = mac();
    mac.update(signed.as_bytes());
    signed.split('.').count() == 2 && mac.verify_slice(&tag).is_ok()
}

// The first byte picks the kind of input, upper case for the verifier that also checks `aud`
// and `iss`: `r` the rest is the token; `b` the rest is the header, a newline and the claims,
// signed; `c` the rest is read as `Structured`.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let strict = mode.is_ascii_uppercase();
    match mode.to_ascii_lowercase() {
        b'r' => {
            let Ok(token) = std::str::from_utf8(rest) else { return };
            if let Ok(identity) = verifier(strict).verify(token) {
                assert!(well_signed(token), "accepted a token without a valid signature: {token:?}");
                assert!(UserId::parse(identity.user.as_str()).is_ok());
            }
        }
        b'b' => {
            let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &[][..]),
            };
            let token = sign(header, claims);
            if let Ok(identity) = verifier(strict).verify(&token) {
                if let Some(header) = accepted_json(header) {
                    assert_eq!(header["alg"], "HS256");
                }
                if let Some(claims) = accepted_json(claims) {
                    assert_eq!(claims["sub"], identity.user.as_str());
                }
            }
        }
        b'c' => {
            if let Ok(s) = Structured::arbitrary_take_rest(Unstructured::new(rest)) {
                check_claims(&s.claims, &s.header, strict, s.tamper);
            }
        }
        _ => {}
    }
});

/// A part of an accepted token, read as JSON. Like `serde_json` itself, the verifier does not
/// look inside what it ignores or passes through (unknown claims, `info`): invalid UTF-8 or
/// `\u` escapes of lone surrogates there, which `serde_json::Value` refuses, do not refuse the
/// token. Such a part must still have the JSON grammar, but is not compared.
fn accepted_json(part: &[u8]) -> Option<Value> {
    let value = serde_json::from_slice(part).ok();
    if value.is_none() {
        assert!(serde_json::from_slice::<IgnoredAny>(part).is_ok(), "accepted a token part that is not JSON");
    }
    value
}

fn check_claims(claims: &Claims, header: &Header, strict: bool, tamper: Option<(u16, u8)>) {
    let now = now();
    let mut object = Map::new();
    let mut header_ok = true;
    let header = match header {
        Header::Minimal => json!({"alg": "HS256"}),
        Header::Typed => json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}),
        Header::Alg(alg) => {
            header_ok = alg == "HS256";
            json!({"alg": alg})
        }
        Header::Crit => {
            header_ok = false;
            json!({"alg": "HS256", "crit": ["exp"]})
        }
        Header::Unencoded => {
            header_ok = false;
            json!({"alg": "HS256", "b64": false})
        }
        Header::Encoded => json!({"alg": "HS256", "b64": true}),
    };
    // What the verifier must conclude, rule by rule, in its documented order.
    let mut malformed = false;
    let mut uncertain = false;
    let mut time = |name: &str, t: &Time, object: &mut Map<String, Value>| -> Option<u64> {
        let value = match t {
            Time::Past(ago) => json!(now.saturating_sub(LEEWAY + 60 + u64::from(*ago))),
            Time::Future(ahead) => json!(now + LEEWAY + 60 + u64::from(*ahead)),
            Time::Exact(at) => json!(at),
            Time::Other(v) => v.value(),
        };
        // Within a minute of the edge, the clock may move on between here and the verifier.
        uncertain |= value.as_u64().is_some_and(|at| at.abs_diff(now) < LEEWAY + 60);
        let read = match &value {
            // `"exp": null` is refused, not taken as "no expiry"; a null `nbf` is no `nbf`.
            Value::Null if name == "exp" => {
                malformed = true;
                None
            }
            Value::Null => None,
            v => match v.as_u64() {
                Some(at) => Some(at),
                None => {
                    malformed = true;
                    None
                }
            },
        };
        object.insert(name.into(), value);
        read
    };
    let exp = claims.exp.as_ref().and_then(|t| time("exp", t, &mut object));
    let nbf = claims.nbf.as_ref().and_then(|t| time("nbf", t, &mut object));
    let mut string = |name: &str, value: Value, object: &mut Map<String, Value>| -> Option<String> {
        let read = match &value {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            _ => {
                malformed = true;
                None
            }
        };
        object.insert(name.into(), value);
        read
    };
    let sub = claims.sub.as_ref().and_then(|s| string("sub", s.value(), &mut object));
    let iss = claims.iss.as_ref().and_then(|n| string("iss", n.value(ISSUER), &mut object));
    // One string or an array of strings, whichever way the fuzzer made it.
    let aud: Option<Vec<String>> = claims.aud.as_ref().and_then(|aud| {
        let value = match aud {
            Audience::One(n) => n.value(AUDIENCE),
            Audience::Many(names) => Value::Array(names.iter().map(|n| n.value(AUDIENCE)).collect()),
        };
        let read = match &value {
            Value::Null => None,
            Value::String(s) => Some(vec![s.clone()]),
            Value::Array(items) => {
                let strings: Option<Vec<String>> =
                    items.iter().map(|v| v.as_str().map(String::from)).collect();
                malformed |= strings.is_none();
                strings
            }
            _ => {
                malformed = true;
                None
            }
        };
        object.insert("aud".into(), value);
        read
    });
    let info = claims.info.as_ref().map(Json::value);
    if let Some(info) = &info {
        object.insert("info".into(), info.clone());
    }
    // `channels` (a list of names) and `channel` (which makes it a subscription token, never
    // a connection token) are read too; any other claim is ignored.
    let mut subscription_token = false;
    if let Some((name, value)) = &claims.other
        && !object.contains_key(name)
        && !matches!(name.as_str(), "sub" | "exp" | "nbf" | "iss" | "aud" | "info")
    {
        let value = value.value();
        match name.as_str() {
            "channels" => {
                malformed |= !(value.is_null()
                    || value.as_array().is_some_and(|items| items.iter().all(Value::is_string)));
            }
            "channel" => match &value {
                Value::Null => {}
                Value::String(_) => subscription_token = true,
                _ => malformed = true,
            },
            _ => {}
        }
        object.insert(name.clone(), value);
    }
    // The claims that do not depend on the time (`iss`, `aud`) are checked before those that
    // do, which are checked again each time a remembered token is used.
    let expected: Result<(), ErrorCode> = if !header_ok
        || malformed
        || (strict && iss.as_deref() != Some(ISSUER))
        || (strict && !aud.as_ref().is_some_and(|a| a.iter().any(|a| a == AUDIENCE)))
    {
        Err(ErrorCode::Unauthorized)
    } else if exp.is_some_and(|exp| exp.saturating_add(LEEWAY) < now) {
        Err(ErrorCode::TokenExpired)
    } else if subscription_token
        || nbf.is_some_and(|nbf| nbf > now + LEEWAY)
        || !sub.as_deref().is_some_and(|s| UserId::parse(s).is_ok())
    {
        Err(ErrorCode::Unauthorized)
    } else {
        Ok(())
    };

    let claims_json = Value::Object(object).to_string();
    let token = sign(header.to_string().as_bytes(), claims_json.as_bytes());
    let result = verifier(strict).verify(&token);
    if !uncertain {
        match (&result, expected) {
            (Ok(identity), Ok(())) => {
                assert_eq!(Some(identity.user.as_str()), sub.as_deref());
                assert_eq!(identity.expires_at, exp);
                // `info` is kept as the text the token holds (floats are not read and rewritten).
                let read = identity.info.as_ref().map(|i| i.get().to_string());
                assert_eq!(read, info.filter(|i| !i.is_null()).map(|i| i.to_string()));
            }
            (Err(e), Err(code)) => assert_eq!(e.code, code, "{e} for claims {claims_json}"),
            (got, want) => panic!(
                "claims {claims_json} with header {header}: got {:?}, expected {want:?}",
                got.as_ref().map(|i| &i.user).map_err(|e| e.to_string())
            ),
        }
    }
    if let (Ok(_), Some((at, with))) = (&result, tamper) {
        let mut bytes = token.into_bytes();
        let at = usize::from(at) % bytes.len();
        let with = b"ABCxyz019-_.="[usize::from(with) % 13];
        if bytes[at] != with {
            bytes[at] = with;
            let changed = String::from_utf8(bytes).unwrap();
            assert!(verifier(strict).verify(&changed).is_err(), "accepted the changed token {changed:?}");
        }
    }
}
