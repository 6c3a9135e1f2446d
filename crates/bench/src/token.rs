//! The tokens the bench's connections carry: HS256 with `--jwt-secret`, or signed with a
//! private key (`--token-key`, `--token-alg`, `--token-kid`) for gateways configured with
//! public keys or a JWKS. Every connection gets its own token either way.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use herald_gateway::auth::{Algorithm, SigningKey, mint_signed};
use serde::{Deserialize, Serialize};

/// A private key the tokens are signed with, as the plan carries it to worker processes.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenKey {
    /// PKCS#8 PEM (`openssl genpkey` writes it).
    pub pem: String,
    pub alg: String,
    pub kid: Option<String>,
    /// Parsed once per process, on first use.
    #[serde(skip)]
    parsed: Arc<OnceLock<Result<SigningKey, String>>>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey").field("alg", &self.alg).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenKey {
    /// Reads the key file and checks that it signs `alg`.
    pub fn load(path: &std::path::Path, alg: &str, kid: Option<String>) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let key = Self { pem, alg: alg.to_string(), kid, parsed: Default::default() };
        key.signer().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(key)
    }

    fn signer(&self) -> Result<&SigningKey, &str> {
        self.parsed
            .get_or_init(|| {
                let alg = Algorithm::parse(&self.alg).filter(|alg| !alg.is_symmetric()).ok_or_else(|| {
                    format!(
                        "--token-alg {:?}: one of RS256, RS384, RS512, PS256, ES256, ES384, EdDSA",
                        self.alg
                    )
                })?;
                SigningKey::from_pem(&self.pem, alg).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// A token for `user`, valid for `ttl`.
    pub fn mint(&self, user: &str, ttl: Duration) -> String {
        match self.signer() {
            Ok(key) => mint_signed(key, self.kid.as_deref(), user, ttl),
            // Checked by `load`; a worker given a bad key mints tokens the server refuses.
            Err(_) => String::new(),
        }
    }
}

/// The token of `user`: signed with `key` if there is one, else HS256 with `secret`.
pub fn token(key: Option<&TokenKey>, secret: &str, user: &str, ttl: Duration) -> String {
    match key {
        Some(key) => key.mint(user, ttl),
        None => herald_gateway::mint(secret, user, ttl).unwrap_or_default(),
    }
}
