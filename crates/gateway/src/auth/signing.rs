//! Minting tokens with a private key (RS256, PS256, ES256, ES384, EdDSA), for the bench,
//! `herald token` and tests: production backends mint with their own JWT library.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};

use super::claims::{Claims, now_secs};
use super::keys::{Algorithm, KeyError, pem_decode};

/// A private key and the algorithm it signs with.
pub struct SigningKey {
    alg: Algorithm,
    pair: Pair,
    rng: SystemRandom,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key (`BEGIN PRIVATE KEY`, as `openssl genpkey` writes) that
    /// signs with `alg`. HS256 is not a private key: use [`super::mint`].
    pub fn from_pem(pem: &str, alg: Algorithm) -> Result<Self, KeyError> {
        let (label, der) = pem_decode(pem)?;
        if label != "PRIVATE KEY" {
            return Err(KeyError(format!(
                "expected a PKCS#8 `BEGIN PRIVATE KEY` block, found `BEGIN {label}`"
            )));
        }
        let rng = SystemRandom::new();
        let unfit = |e: ring::error::KeyRejected| KeyError(format!("the key cannot sign {alg}: {e}"));
        let pair = match alg {
            Algorithm::HS256 => return Err(KeyError("HS256 signs with a secret, not a private key".into())),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
                Pair::Rsa(RsaKeyPair::from_pkcs8(&der).map_err(unfit)?)
            }
            Algorithm::ES256 => Pair::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
                    .map_err(unfit)?,
            ),
            Algorithm::ES384 => Pair::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &der, &rng)
                    .map_err(unfit)?,
            ),
            Algorithm::EdDSA => {
                Pair::Ed25519(Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(unfit)?)
            }
        };
        Ok(Self { alg, pair, rng })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Signs `claims` (any JSON object) into a token whose header names `kid`.
    pub fn sign(&self, kid: Option<&str>, claims: &impl serde::Serialize) -> String {
        let mut header = serde_json::json!({"alg": self.alg.name(), "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(claims).expect("claims serialize"), &mut token);
        let message = token.as_bytes();
        let sig = match &self.pair {
            Pair::Rsa(pair) => {
                let padding: &dyn signature::RsaEncoding = match self.alg {
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &self.rng, message, &mut sig).expect("RSA signing");
                sig
            }
            Pair::Ecdsa(pair) => pair.sign(&self.rng, message).expect("ECDSA signing").as_ref().to_vec(),
            Pair::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, &mut token);
        token
    }
}

/// Mints a connection token for `user`, valid for `ttl`, signed with `key` and naming `kid`.
pub fn mint_signed(key: &SigningKey, kid: Option<&str>, user: &str, ttl: Duration) -> String {
    key.sign(kid, &Claims { sub: user.to_string(), exp: Some(now_secs() + ttl.as_secs()), info: None })
}
