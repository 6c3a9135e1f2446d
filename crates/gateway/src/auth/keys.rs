//! Signature algorithms and the public keys that verify them.
//!
//! A key has a type (RSA, EC P-256, EC P-384, Ed25519) and verifies only the algorithms of
//! that type: an RSA key never verifies ES256, and no public key is ever used as an HMAC
//! secret (HS256 is verified only with `auth.jwt_secret`). That is what stops `alg` confusion,
//! together with the configured list of accepted algorithms.
//!
//! Verification is `ring`'s: RS256 with a 2048-bit key took 24.5 µs in a release build against
//! 63 µs for the RustCrypto `rsa` crate `jsonwebtoken` uses, 2.6 times faster (on a loaded
//! two-core machine; `verification_speed` in `tests_keys.rs` prints the figures, kept in
//! `bench/results/2026-12-07-token-algorithms/`). ring's P-384 is slow (ES384 about 0.8 ms):
//! the verification cache matters most there.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};

/// The JWS algorithms Herald verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HS256,
    RS256,
    RS384,
    RS512,
    PS256,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    /// Every algorithm, HS256 first.
    pub const ALL: [Algorithm; 8] = [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The algorithm a JOSE header names; `None` for `none` and anything else Herald does not
    /// verify.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// HS256: verified with the shared secret, never with a public key.
    pub fn is_symmetric(self) -> bool {
        self == Algorithm::HS256
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of algorithms, as a bit mask: checking a token's `alg` against it costs nothing.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AlgorithmSet(u8);

impl AlgorithmSet {
    pub(crate) fn insert(&mut self, alg: Algorithm) {
        self.0 |= alg.bit();
    }

    pub(crate) fn contains(self, alg: Algorithm) -> bool {
        self.0 & alg.bit() != 0
    }
}

impl fmt::Display for AlgorithmSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> =
            Algorithm::ALL.into_iter().filter(|a| self.contains(*a)).map(Algorithm::name).collect();
        f.write_str(&names.join(", "))
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct KeyError(pub String);

fn bad(message: impl Into<String>) -> KeyError {
    KeyError(message.into())
}

/// A public key of one of the types Herald verifies with.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus and public exponent, big-endian without leading zeros.
    Rsa {
        n: Box<[u8]>,
        e: Box<[u8]>,
    },
    /// An uncompressed point (`04 || x || y`).
    P256(Box<[u8]>),
    P384(Box<[u8]>),
    /// The 32-byte public key.
    Ed25519(Box<[u8]>),
}

/// DER object identifiers (their encoded bytes) of the SPKI key types Herald reads.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

impl PublicKey {
    /// What kind of key this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            PublicKey::Rsa { .. } => "RSA",
            PublicKey::P256(_) => "EC P-256",
            PublicKey::P384(_) => "EC P-384",
            PublicKey::Ed25519(_) => "Ed25519",
        }
    }

    /// Whether this key may verify `alg`: each algorithm has exactly one key type.
    pub fn fits(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (PublicKey::Rsa { .. }, RS256 | RS384 | RS512 | PS256)
                | (PublicKey::P256(_), ES256)
                | (PublicKey::P384(_), ES384)
                | (PublicKey::Ed25519(_), EdDSA)
        )
    }

    /// Checks `signature` over `message`; false for a key of another type than `alg`'s.
    pub fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        use Algorithm::*;
        let ec = |algorithm: &'static dyn signature::VerificationAlgorithm, point: &[u8]| {
            UnparsedPublicKey::new(algorithm, point).verify(message, sig).is_ok()
        };
        match (self, alg) {
            (PublicKey::Rsa { n, e }, RS256 | RS384 | RS512 | PS256) => {
                let params = match alg {
                    RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    _ => &signature::RSA_PSS_2048_8192_SHA256,
                };
                RsaPublicKeyComponents { n: &n[..], e: &e[..] }.verify(params, message, sig).is_ok()
            }
            (PublicKey::P256(point), ES256) => ec(&signature::ECDSA_P256_SHA256_FIXED, point),
            (PublicKey::P384(point), ES384) => ec(&signature::ECDSA_P384_SHA384_FIXED, point),
            (PublicKey::Ed25519(key), EdDSA) => ec(&signature::ED25519, key),
            _ => false,
        }
    }

    /// Reads a PEM public key: SPKI (`BEGIN PUBLIC KEY`) of an RSA, EC P-256/P-384 or Ed25519
    /// key, or PKCS#1 (`BEGIN RSA PUBLIC KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = pem_decode(pem)?;
        match label.as_str() {
            "PUBLIC KEY" => Self::from_spki_der(&der),
            "RSA PUBLIC KEY" => Self::rsa_from_pkcs1(&der),
            label if label.contains("PRIVATE") => {
                Err(bad("this is a private key: configure its public key (`openssl pkey -pubout`)"))
            }
            label => Err(bad(format!("expected a `BEGIN PUBLIC KEY` PEM block, found `BEGIN {label}`"))),
        }
    }

    /// Reads a DER SubjectPublicKeyInfo (RFC 5280, section 4.1).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let malformed = || bad("malformed SubjectPublicKeyInfo");
        let (0x30, spki, []) = tlv(der).ok_or_else(malformed)? else { return Err(malformed()) };
        let (0x30, algorithm, rest) = tlv(spki).ok_or_else(malformed)? else { return Err(malformed()) };
        let (0x03, bits, []) = tlv(rest).ok_or_else(malformed)? else { return Err(malformed()) };
        let [0, key @ ..] = bits else { return Err(malformed()) };
        let (0x06, oid, params) = tlv(algorithm).ok_or_else(malformed)? else { return Err(malformed()) };
        let curve = || match tlv(params) {
            Some((0x06, curve, [])) => Some(curve),
            _ => None,
        };
        match oid {
            OID_RSA => Self::rsa_from_pkcs1(key),
            OID_EC => match curve() {
                Some(OID_P256) if key.len() == 65 && key[0] == 4 => Ok(PublicKey::P256(key.into())),
                Some(OID_P384) if key.len() == 97 && key[0] == 4 => Ok(PublicKey::P384(key.into())),
                Some(OID_P256 | OID_P384) => Err(bad("EC keys must be uncompressed points")),
                _ => Err(bad("unsupported EC curve: Herald verifies P-256 (ES256) and P-384 (ES384)")),
            },
            OID_ED25519 if key.len() == 32 => Ok(PublicKey::Ed25519(key.into())),
            _ => Err(bad("unsupported key type: Herald verifies RSA, EC P-256/P-384 and Ed25519 keys")),
        }
    }

    /// Reads a DER RSAPublicKey (PKCS#1: the modulus and the exponent).
    fn rsa_from_pkcs1(der: &[u8]) -> Result<Self, KeyError> {
        let malformed = || bad("malformed RSA public key");
        let (0x30, seq, []) = tlv(der).ok_or_else(malformed)? else { return Err(malformed()) };
        let (0x02, n, rest) = tlv(seq).ok_or_else(malformed)? else { return Err(malformed()) };
        let (0x02, e, []) = tlv(rest).ok_or_else(malformed)? else { return Err(malformed()) };
        Self::rsa(n, e)
    }

    /// An RSA key from its modulus and exponent (big-endian), refusing keys under 2048 bits.
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<Self, KeyError> {
        let (n, e) = (unpadded(n), unpadded(e));
        if n.len() < 256 {
            return Err(bad(format!("RSA keys must have at least 2048 bits, this one has {}", n.len() * 8)));
        }
        if n.len() > 1024 || e.is_empty() || e.len() > 4 {
            return Err(bad("RSA key out of range (at most 8192 bits, a small exponent)"));
        }
        Ok(PublicKey::Rsa { n: n.into(), e: e.into() })
    }

    /// The key as a JWK (RFC 7517), without `kid` or `alg`: for serving test key sets and for
    /// people converting a PEM file.
    pub fn to_jwk(&self) -> serde_json::Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self {
            PublicKey::Rsa { n, e } => serde_json::json!({"kty": "RSA", "n": b64(n), "e": b64(e)}),
            PublicKey::P256(point) | PublicKey::P384(point) => {
                let (x, y) = point[1..].split_at((point.len() - 1) / 2);
                let crv = if matches!(self, PublicKey::P256(_)) { "P-256" } else { "P-384" };
                serde_json::json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)})
            }
            PublicKey::Ed25519(key) => serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key)}),
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.kind())
    }
}

/// A key as the verifier holds it: with the `kid` that selects it and, for keys from a JWKS,
/// the one `alg` it is declared for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NamedKey {
    pub kid: Option<String>,
    /// From the JWK's `alg`: the key verifies only this algorithm.
    pub alg: Option<Algorithm>,
    pub key: PublicKey,
}

impl NamedKey {
    /// Whether this key may verify a token signed with `alg`, and if not, why.
    pub fn check_fits(&self, alg: Algorithm) -> Result<(), String> {
        let name = self.kid.as_deref().map_or(String::from("the key"), |kid| format!("key {kid:?}"));
        if !self.key.fits(alg) {
            return Err(format!("{name} is an {} key and cannot verify {alg} tokens", self.key.kind()));
        }
        match self.alg {
            Some(declared) if declared != alg => Err(format!("{name} is declared for {declared}, not {alg}")),
            _ => Ok(()),
        }
    }
}

/// Decodes the first PEM block of `pem` into its label and DER bytes.
pub(crate) fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), KeyError> {
    let Some((_, rest)) = pem.split_once("-----BEGIN ") else {
        return Err(bad("not a PEM file (no `-----BEGIN` line)"));
    };
    let Some((label, rest)) = rest.split_once("-----") else {
        return Err(bad("malformed PEM `BEGIN` line"));
    };
    let end = format!("-----END {label}-----");
    let Some((body, _)) = rest.split_once(&end) else {
        return Err(bad(format!("PEM block has no `{end}` line")));
    };
    let body: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD.decode(body).map_err(|e| bad(format!("PEM body is not base64: {e}")))?;
    Ok((label.to_string(), der))
}

/// One DER tag-length-value: the tag, the contents, and what follows.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes.iter().fold(0, |len, &b| (len << 8) | usize::from(b))
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

fn unpadded(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}
