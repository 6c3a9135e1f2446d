//! Connection tokens: who a client is, checked once per connection.
//!
//! Today a token is an HS256 JWT whose `sub` is the user id. The [`Identity`] it yields is
//! what the rest of the gateway sees, so other token kinds (RS256, JWKS) and per-channel
//! grants can be added here without touching the connection code.

use std::time::Duration;

use herald_protocol::{ErrorCode, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// An authenticated client.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    /// When the token stops being valid (seconds since the Unix epoch); the connection is
    /// closed with code 4001 then.
    pub expires_at: Option<u64>,
    /// The token's `info` claim: what others see of this user in member lists.
    pub info: Option<std::sync::Arc<serde_json::value::RawValue>>,
}

/// The claims Herald reads from a connection token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Public information about the user (display name, avatar), shown in member lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<serde_json::value::RawValue>>,
}

/// Why a token was refused. The message is safe to show the client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub code: ErrorCode,
    pub message: String,
}

/// Verifies connection tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    /// Fails when the configuration is invalid (see [`AuthConfig::validate`]).
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        config.validate()?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.required_spec_claims = ["sub"].into_iter().map(String::from).collect();
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        let key = DecodingKey::from_secret(config.jwt_secret.as_bytes())
            .map_err(|e| format!("auth.jwt_secret: {e}"))?;
        Ok(Self { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            let (code, message) = match e.kind() {
                ErrorKind::ExpiredSignature => (ErrorCode::TokenExpired, "token has expired".to_string()),
                ErrorKind::InvalidSignature => (ErrorCode::Unauthorized, "token signature is invalid".into()),
                ErrorKind::ImmatureSignature => (ErrorCode::Unauthorized, "token is not valid yet".into()),
                ErrorKind::InvalidAlgorithm => {
                    (ErrorCode::Unauthorized, "token must be signed with HS256".into())
                }
                ErrorKind::MissingRequiredClaim(c) => {
                    (ErrorCode::Unauthorized, format!("token lacks the `{c}` claim"))
                }
                _ => (ErrorCode::Unauthorized, format!("token is invalid: {e}")),
            };
            AuthError { code, message }
        })?;
        let user = UserId::parse(&data.claims.sub).map_err(|e| AuthError {
            code: ErrorCode::Unauthorized,
            message: format!("token `sub` is not a valid user id: {e}"),
        })?;
        Ok(Identity { user, expires_at: data.claims.exp, info: data.claims.info.map(std::sync::Arc::from) })
    }
}

/// Mints an HS256 connection token for `user`, valid for `ttl`. For tests, the quickstart and
/// `herald token`; production backends mint tokens with their own JWT library. Fails only for
/// an empty secret.
pub fn mint(secret: &str, user: &str, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
    let exp = herald_protocol::publication::now_millis() / 1000 + ttl.as_secs();
    let claims = Claims { sub: user.to_string(), exp: Some(exp), info: None };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes())?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(&AuthConfig { jwt_secret: SECRET.into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_to_its_user() {
        let id = verifier().verify(&mint(SECRET, "alice", Duration::from_secs(60)).unwrap()).unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert!(id.expires_at.is_some());
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let v = verifier();
        assert_eq!(v.verify("garbage").unwrap_err().code, ErrorCode::Unauthorized);
        let other = mint("another-secret-another-secret-xx", "alice", Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(&other).unwrap_err().message, "token signature is invalid");
        let expired = {
            let claims = Claims { sub: "alice".into(), exp: Some(1_000_000), info: None };
            jsonwebtoken::encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(v.verify(&expired).unwrap_err().code, ErrorCode::TokenExpired);
        let bad_sub = mint(SECRET, "not a user", Duration::from_secs(60)).unwrap();
        assert!(v.verify(&bad_sub).unwrap_err().message.contains("sub"));
    }
}
