//! The backend hook: the gateway asks an HTTP endpoint of the application whether a user may
//! subscribe to, or publish into, a channel of a namespace with `subscribe_hook` or
//! `publish_hook`, on top of every other check (namespace settings, private grants).
//!
//! Over HTTP (`gateway.hooks.url = "http://..."`, or `https://`) the call is `POST <url>` with
//! `{"action": "subscribe" | "publish", "user", "channel"}`; the answer must be a 2xx with
//! `{"allow": true}` or `{"allow": false, "reason"?: "..."}`. Over gRPC (`"grpc://host:port"`,
//! or `grpcs://` for TLS) it is the `Subscribe` or `Publish` call of `herald.v1.PermissionHook`
//! (`proto/herald/v1/hook.proto`, generated into [`pb`]). Over TLS the gateway verifies the
//! hook's certificate and presents its own when `gateway.hooks.client_tls` has one; with
//! `gateway.hooks.api_key` every call carries `Authorization: Bearer <key>`, so the endpoint
//! can tell a gateway from anyone else who reaches it. A refusal is `forbidden` with the
//! reason. Anything else (no answer
//! within `gateway.hooks.timeout`, another status, another body, or more than
//! `gateway.hooks.max_in_flight` calls already waiting) is a failure, decided by
//! `gateway.hooks.on_failure`: `deny` (the default: refused with `unavailable`, retry later)
//! or `allow`. Calls over the in-flight bound are not queued: they fail at once, so a slow
//! backend cannot pile up work in the gateway.

use std::sync::Arc;
use std::time::Duration;

use herald_api_common::client_tls::{ClientTlsConfig, grpc_channel, is_tls_url};
use herald_protocol::api_key::MIN_API_KEY_LEN;
use herald_protocol::{ChannelName, ConfigError, ErrorCode, Namespaces, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::policy::Denied;

/// The permission hook's gRPC service, generated from `proto/herald/v1/hook.proto`: the
/// client the gateway calls, and the server side for applications written in Rust.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("herald.v1");
}

/// Settings of the backend hook (`[gateway.hooks]`).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookConfig {
    /// The endpoint asked, `http://...` or `https://...` (JSON over HTTP), or
    /// `grpc://host:port` or `grpcs://host:port` (the gRPC service of
    /// `proto/herald/v1/hook.proto`, plain or over TLS); needed when a namespace sets
    /// `subscribe_hook` or `publish_hook`.
    pub url: Option<String>,
    /// TLS to an `https://` or `grpcs://` `url` (`[gateway.hooks.client_tls]`): the CA that
    /// signed the hook's certificate (the system's roots when unset), and a client certificate
    /// to present.
    pub client_tls: ClientTlsConfig,
    /// Sent as `Authorization: Bearer <key>` (HTTP header or gRPC metadata) with every call,
    /// for a hook endpoint that checks who calls it.
    pub api_key: Option<String>,
    /// How long an answer may take before the call counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// What a failed call means.
    pub on_failure: OnFailure,
    /// Most calls waiting for an answer at once, per gateway; one more fails at once.
    pub max_in_flight: usize,
}

impl std::fmt::Debug for HookConfig {
    /// The key is left out: configurations end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so that a new field cannot be left out (or printed in the clear) unseen.
        let Self { url, client_tls, api_key, timeout, on_failure, max_in_flight } = self;
        f.debug_struct("HookConfig")
            .field("url", url)
            .field("client_tls", client_tls)
            .field("api_key", &api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", timeout)
            .field("on_failure", on_failure)
            .field("max_in_flight", max_in_flight)
            .finish()
    }
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            url: None,
            client_tls: ClientTlsConfig::default(),
            api_key: None,
            timeout: Duration::from_secs(1),
            on_failure: OnFailure::Deny,
            max_in_flight: 256,
        }
    }
}

/// What a hook call that got no usable answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Refuse (`unavailable`): nothing is let through unchecked.
    Deny,
    /// Let it through, as if the hook were not configured.
    Allow,
}

/// What the hook is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Subscribe,
    Publish,
}

/// The hook's client, when one is configured. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Hooks {
    transport: Transport,
    on_failure: OnFailure,
    /// One permit per call waiting for an answer.
    in_flight: Arc<Semaphore>,
}

/// How the hook is reached, and the `authorization` each call carries: `Bearer
/// <gateway.hooks.api_key>`, marked sensitive so it stays out of debug output.
#[derive(Clone)]
enum Transport {
    Http {
        client: reqwest::Client,
        url: Arc<str>,
        authorization: Option<reqwest::header::HeaderValue>,
    },
    Grpc {
        client: pb::permission_hook_client::PermissionHookClient<tonic::transport::Channel>,
        authorization: Option<tonic::metadata::AsciiMetadataValue>,
    },
}

#[derive(Serialize)]
struct Question<'a> {
    action: Action,
    user: &'a str,
    channel: &'a str,
}

#[derive(Deserialize)]
struct Answer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
}

impl HookConfig {
    /// Checks the settings, and that every namespace with a hook has somewhere to ask; the
    /// error names the key.
    pub fn validate(&self, namespaces: &Namespaces) -> Result<(), ConfigError> {
        if let Some(url) = &self.url
            && !["http://", "https://", "grpc://", "grpcs://"].iter().any(|scheme| url.starts_with(scheme))
        {
            return Err(ConfigError::new(
                "gateway.hooks.url",
                "must be an http://, https://, grpc:// or grpcs:// URL",
            ));
        }
        self.client_tls.validate("gateway.hooks.client_tls")?;
        if self.client_tls.is_set() && !self.url.as_deref().is_some_and(is_tls_url) {
            return Err(ConfigError::new(
                "gateway.hooks.client_tls",
                "set, but gateway.hooks.url is not an https:// or grpcs:// URL: calls would travel in plain text",
            ));
        }
        if let Some(key) = &self.api_key {
            if key.chars().count() < MIN_API_KEY_LEN {
                return Err(ConfigError::new(
                    "gateway.hooks.api_key",
                    format!("must be at least {MIN_API_KEY_LEN} characters long"),
                ));
            }
            if reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).is_err() {
                return Err(ConfigError::new("gateway.hooks.api_key", "cannot travel in a header"));
            }
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("gateway.hooks.timeout", "must be greater than 0"));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::new("gateway.hooks.max_in_flight", "must be greater than 0"));
        }
        if self.url.is_none() {
            for (name, ns) in &namespaces.0 {
                if ns.subscribe_hook || ns.publish_hook {
                    let key = format!(
                        "namespaces.{name}.{}",
                        if ns.subscribe_hook { "subscribe_hook" } else { "publish_hook" }
                    );
                    return Err(ConfigError::new(key, "needs gateway.hooks.url"));
                }
            }
        }
        Ok(())
    }
}

impl Hooks {
    /// The hook's client, `None` without `gateway.hooks.url`. Connects on first use, so a
    /// gateway starts while the application is down.
    pub(crate) fn new(config: &HookConfig) -> Result<Option<Self>, ConfigError> {
        let Some(url) = config.url.as_deref() else { return Ok(None) };
        const SECTION: &str = "gateway.hooks.client_tls";
        let authorization = match &config.api_key {
            Some(key) => {
                let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| ConfigError::new("gateway.hooks.api_key", "cannot travel in a header"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let grpc = match url.strip_prefix("grpc://") {
            Some(address) => Some((address, false)),
            None => url.strip_prefix("grpcs://").map(|address| (address, true)),
        };
        let transport = match grpc {
            Some((address, tls)) => {
                let scheme = if tls { "https" } else { "http" };
                let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))
                    .map_err(|e| ConfigError::new("gateway.hooks.url", e))?
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .tcp_nodelay(true);
                let tls = match tls {
                    true => Some(Arc::new(config.client_tls.rustls_config(SECTION, &[b"h2"])?)),
                    false => None,
                };
                let client = pb::permission_hook_client::PermissionHookClient::new(grpc_channel(
                    endpoint, tls, SECTION,
                ));
                // A valid header value is valid ASCII metadata.
                let authorization = authorization
                    .map(|value| {
                        let mut metadata = tonic::metadata::AsciiMetadataValue::try_from(value.as_bytes())?;
                        metadata.set_sensitive(true);
                        Ok::<_, tonic::metadata::errors::InvalidMetadataValueBytes>(metadata)
                    })
                    .transpose()
                    .map_err(|_| {
                        ConfigError::new("gateway.hooks.api_key", "cannot travel in gRPC metadata")
                    })?;
                Transport::Grpc { client, authorization }
            }
            None => {
                let mut client = reqwest::Client::builder().timeout(config.timeout);
                if url.starts_with("https://") {
                    // Only HTTP/1.1 is built into this reqwest; offering h2 would be a lie.
                    let tls = config.client_tls.rustls_config(SECTION, &[b"http/1.1"])?;
                    client = client.use_preconfigured_tls(tls);
                }
                let client = client.build().map_err(|e| ConfigError::new("gateway.hooks.url", e))?;
                Transport::Http { client, url: url.into(), authorization }
            }
        };
        Ok(Some(Self {
            transport,
            on_failure: config.on_failure,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        }))
    }

    /// Asks whether `user` may do `action` on `channel`.
    pub(crate) async fn check(
        &self,
        action: Action,
        user: &UserId,
        channel: &ChannelName,
    ) -> Result<(), Denied> {
        let answer = match self.in_flight.try_acquire() {
            Ok(_permit) => self.ask(action, user, channel).await,
            Err(_) => Err("too many hook calls in flight".to_string()),
        };
        match answer {
            Ok(Answer { allow: true, .. }) => Ok(()),
            Ok(Answer { allow: false, reason }) => {
                let reason = reason.unwrap_or_else(|| "refused by the application".into());
                Err((ErrorCode::Forbidden, format!("{channel}: {reason}")))
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "backend hook failed");
                match self.on_failure {
                    OnFailure::Allow => Ok(()),
                    OnFailure::Deny => Err((
                        ErrorCode::Unavailable,
                        format!("{channel}: the permission check failed, retry later"),
                    )),
                }
            }
        }
    }

    async fn ask(&self, action: Action, user: &UserId, channel: &ChannelName) -> Result<Answer, String> {
        match &self.transport {
            Transport::Http { client, url, authorization } => {
                let question = Question { action, user: user.as_str(), channel: channel.as_str() };
                let mut request = client.post(&**url).json(&question);
                if let Some(authorization) = authorization {
                    request = request.header(reqwest::header::AUTHORIZATION, authorization.clone());
                }
                let response = request.send().await.map_err(|e| error_chain(&e))?;
                if !response.status().is_success() {
                    return Err(format!("status {}", response.status()));
                }
                response.json::<Answer>().await.map_err(|e| format!("unreadable answer: {e}"))
            }
            Transport::Grpc { client, authorization } => {
                let mut client = client.clone();
                let mut request = tonic::Request::new(pb::HookRequest {
                    user: user.as_str().into(),
                    channel: channel.as_str().into(),
                });
                if let Some(authorization) = authorization {
                    request.metadata_mut().insert("authorization", authorization.clone());
                }
                let reply = match action {
                    Action::Subscribe => client.subscribe(request).await,
                    Action::Publish => client.publish(request).await,
                }
                .map_err(|status| format!("gRPC status {:?}: {}", status.code(), status.message()))?
                .into_inner();
                let reason = (!reply.reason.is_empty()).then_some(reply.reason);
                Ok(Answer { allow: reply.allow, reason })
            }
        }
    }
}

/// `error` with its causes: reqwest's own message ("error sending request") leaves out the
/// part an operator needs, such as a refused TLS handshake.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Asks the hook about `channel` when its namespace says so; `Ok` when it does not.
pub(crate) async fn check(
    hooks: Option<&Hooks>,
    namespaces: &Namespaces,
    action: Action,
    user: &UserId,
    channel: &ChannelName,
) -> Result<(), Denied> {
    let hooked = match namespaces.lookup(channel) {
        Ok(Some(ns)) => match action {
            Action::Subscribe => ns.subscribe_hook,
            Action::Publish => ns.publish_hook,
        },
        _ => false,
    };
    match hooks {
        Some(hooks) if hooked => hooks.check(action, user, channel).await,
        // Validation made sure a hooked namespace has a hook.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use herald_protocol::NamespaceConfig;

    use super::*;

    /// A hooked namespace without a hook URL, and bad hook settings, stop start-up naming the key.
    #[test]
    fn errors_name_the_key_to_fix() {
        let mut namespaces = Namespaces::default();
        namespaces.0.insert("room".into(), NamespaceConfig { publish_hook: true, ..Default::default() });
        let key = |config: HookConfig| config.validate(&namespaces).unwrap_err().key;
        assert_eq!(key(HookConfig::default()), "namespaces.room.publish_hook");
        let url = |url: &str| HookConfig { url: Some(url.into()), ..Default::default() };
        assert!(url("http://app:3000/hook").validate(&namespaces).is_ok());
        assert!(url("grpc://app:50051").validate(&namespaces).is_ok());
        assert!(url("https://app/hook").validate(&namespaces).is_ok());
        assert!(url("grpcs://app:50051").validate(&namespaces).is_ok());
        assert_eq!(key(url("ftp://app/hook")), "gateway.hooks.url");
        let ca = ClientTlsConfig { ca: Some("ca.pem".into()), ..Default::default() };
        assert_eq!(
            key(HookConfig { client_tls: ca.clone(), ..url("http://app") }),
            "gateway.hooks.client_tls"
        );
        let half = ClientTlsConfig { key: Some("key.pem".into()), ..ca };
        assert_eq!(
            key(HookConfig { client_tls: half, ..url("https://app") }),
            "gateway.hooks.client_tls.cert"
        );
        let short = HookConfig { api_key: Some("short".into()), ..url("https://app") };
        assert_eq!(key(short), "gateway.hooks.api_key");
        assert_eq!(key(HookConfig { max_in_flight: 0, ..url("http://app") }), "gateway.hooks.max_in_flight");
        assert_eq!(key(HookConfig { timeout: Duration::ZERO, ..url("http://app") }), "gateway.hooks.timeout");
    }
}
