//! `[auth]`: how clients authenticate, and the checks that say which key to fix.

use std::time::Duration;

use herald_protocol::ConfigError;
use serde::Deserialize;

use super::Algorithm;

/// How clients authenticate.
///
/// Tokens are JWTs signed with HS256 (`jwt_secret`) or with an asymmetric key: PEM public
/// keys (`public_keys`) or an identity provider's JWKS (`jwks_url`). At least one of the three
/// is required: there is no anonymous access.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Secret for HS256 connection tokens.
    pub jwt_secret: String,
    /// Clock skew tolerated when checking `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// The `alg`s accepted. Empty means derived from the keys: `HS256` when `jwt_secret` is
    /// set, and RS256, RS384, RS512, PS256, ES256, ES384 and EdDSA when `public_keys` or
    /// `jwks_url` is. A token's header alone never decides: its `alg` must be listed here and
    /// fit the type of the key that verifies it.
    pub algorithms: Vec<String>,
    /// PEM public keys (SPKI, `BEGIN PUBLIC KEY`: RSA, EC P-256/P-384 or Ed25519), each
    /// optionally named by the `kid` tokens carry.
    pub public_keys: Vec<PublicKeyFile>,
    /// An identity provider's JSON Web Key Set, fetched at start-up (start-up fails when it
    /// cannot be), then again when it is older than `jwks_refresh_interval` or a token names an
    /// unknown `kid`.
    pub jwks_url: Option<String>,
    /// How old the key set may get before it is fetched again (checked as tokens are verified).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// At most one fetch per this interval, whatever the tokens' `kid`s: tokens naming keys
    /// that do not exist must not turn into a flood of requests to the identity provider.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refetch_interval: Duration,
    /// How long one fetch of the key set may take.
    #[serde(with = "humantime_serde")]
    pub jwks_timeout: Duration,
}

/// One PEM public key file and the `kid` that selects it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyFile {
    pub file: std::path::PathBuf,
    /// Tokens naming this `kid` are verified with this key only; a key without one is tried
    /// for tokens whose `kid` no key has, and for tokens without a `kid`.
    pub kid: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            leeway: Duration::ZERO,
            audience: None,
            issuer: None,
            algorithms: Vec::new(),
            public_keys: Vec::new(),
            jwks_url: None,
            jwks_refresh_interval: Duration::from_secs(300),
            jwks_min_refetch_interval: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &"<redacted>")
            .field("leeway", &self.leeway)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("algorithms", &self.algorithms)
            .field("public_keys", &self.public_keys)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_refresh_interval", &self.jwks_refresh_interval)
            .field("jwks_min_refetch_interval", &self.jwks_min_refetch_interval)
            .field("jwks_timeout", &self.jwks_timeout)
            .finish()
    }
}

impl AuthConfig {
    /// Checks that clients can be authenticated at all; the error names the key. The key files
    /// and the key set are read by [`crate::TokenVerifier::new`], which names the key too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let asymmetric = !self.public_keys.is_empty() || self.jwks_url.is_some();
        if self.jwt_secret.is_empty() && !asymmetric {
            return Err(ConfigError::new(
                "auth.jwt_secret",
                "required (HERALD_AUTH__JWT_SECRET) unless auth.public_keys or auth.jwks_url is set; \
                 clients cannot connect without one",
            ));
        }
        if !self.jwt_secret.is_empty() && self.jwt_secret.len() < 32 {
            return Err(ConfigError::new("auth.jwt_secret", "must be at least 32 bytes long for HS256"));
        }
        for name in &self.algorithms {
            let Some(alg) = Algorithm::parse(name) else {
                return Err(ConfigError::new(
                    "auth.algorithms",
                    format!("{name:?} is not one of HS256, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA"),
                ));
            };
            if alg.is_symmetric() && self.jwt_secret.is_empty() {
                return Err(ConfigError::new("auth.algorithms", "HS256 needs auth.jwt_secret"));
            }
            if !alg.is_symmetric() && !asymmetric {
                return Err(ConfigError::new(
                    "auth.algorithms",
                    format!("{name} needs auth.public_keys or auth.jwks_url"),
                ));
            }
        }
        if let Some(url) = &self.jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::new("auth.jwks_url", "must be an http:// or https:// URL"));
        }
        let positive = [
            ("auth.jwks_refresh_interval", self.jwks_refresh_interval),
            ("auth.jwks_timeout", self.jwks_timeout),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refused value is reported under the one key to fix.
    #[test]
    fn errors_name_the_key_to_fix() {
        let auth = AuthConfig { jwt_secret: "short".into(), ..Default::default() };
        assert_eq!(auth.validate().unwrap_err().key, "auth.jwt_secret");
        assert_eq!(AuthConfig::default().validate().unwrap_err().key, "auth.jwt_secret");
        let with_key = |f: fn(&mut AuthConfig)| {
            let mut auth = AuthConfig {
                public_keys: vec![PublicKeyFile { file: "k.pem".into(), kid: None }],
                ..Default::default()
            };
            f(&mut auth);
            auth.validate().err().map(|e| e.key)
        };
        assert_eq!(with_key(|_| {}), None, "a public key alone is enough");
        assert_eq!(with_key(|a| a.algorithms = vec!["none".into()]), Some("auth.algorithms".into()));
        assert_eq!(with_key(|a| a.algorithms = vec!["HS256".into()]), Some("auth.algorithms".into()));
        assert_eq!(with_key(|a| a.jwks_url = Some("ftp://x".into())), Some("auth.jwks_url".into()));
        assert_eq!(with_key(|a| a.jwks_timeout = Duration::ZERO), Some("auth.jwks_timeout".into()));
    }
}
