//! The API key check both APIs run, over HTTP (`Authorization` header) and gRPC
//! (`authorization` metadata), both `Bearer <key>`, and what a key may do once it is in.
//!
//! Authentication happens before a request is read ([`check`], [`RequireApiKey`]) and leaves
//! the key's [`Grant`] in the request's extensions as a [`Caller`]; each handler then asks
//! [`authorize`] for the operation and channel it is about to touch, so HTTP and gRPC refuse
//! the same things with the same `forbidden` (403, PERMISSION_DENIED). The constant-time
//! comparison itself is [`ApiKeys::identify`].

use std::sync::Arc;

pub use herald_protocol::ApiKeys;
pub use herald_protocol::api_key::{Grant, KeyConfig, Operation};
use herald_protocol::{ChannelName, ErrorCode};
use tonic::{Request, Status};

use crate::error::Refusal;

/// The authenticated key of a request: in the request's extensions for handlers, and (over
/// HTTP) in the response's for the metrics middleware.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Grant>);

impl Caller {
    /// The key's name, as the `key` label of the metrics.
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

/// The key's grant when `authorization` is `Bearer <key>` with one of `keys`, else
/// `unauthorized`.
pub fn check(keys: &ApiKeys, authorization: Option<&[u8]>) -> Result<Caller, Refusal> {
    keys.identify(authorization).map(Caller).ok_or_else(Refusal::unauthorized)
}

/// Passes when `caller` may use `operation` on `channel` (if it touches one), else
/// `forbidden` saying what the key lacks. A message about a channel starts with `channel:`,
/// so a batch entry's refusal reads `messages[3].channel: ...`.
pub fn authorize(
    caller: &Caller,
    operation: Operation,
    channel: Option<&ChannelName>,
) -> Result<(), Refusal> {
    caller.0.allows(operation, channel).map_err(|e| {
        let message = if channel.is_some() { format!("channel: {e}") } else { e.0 };
        Refusal::new(ErrorCode::Forbidden, message)
    })
}

/// The [`Caller`] that [`RequireApiKey`] left on a gRPC request; `unauthorized` if there is
/// none (a service served without the interceptor).
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Refusal> {
    request.extensions().get::<Caller>().cloned().ok_or_else(Refusal::unauthorized)
}

/// The `Authorization` header of an HTTP request.
pub fn authorization(headers: &axum::http::HeaderMap) -> Option<&[u8]> {
    headers.get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes())
}

/// A gRPC interceptor that refuses calls without a valid API key with UNAUTHENTICATED and
/// leaves the key's [`Caller`] in the extensions of the others. It runs before the request
/// message is read, so a caller without a key cannot make the server buffer and decode a
/// large message.
#[derive(Clone)]
pub struct RequireApiKey {
    keys: ApiKeys,
    /// Called for each refused call (both APIs count them).
    on_refused: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl RequireApiKey {
    pub fn new(keys: ApiKeys) -> Self {
        Self { keys, on_refused: None }
    }

    /// Calls `hook` for every refused call, before it is answered.
    pub fn on_refused(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_refused = Some(Arc::new(hook));
        self
    }
}

impl tonic::service::Interceptor for RequireApiKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = request.metadata().get("authorization").map(|v| v.as_bytes());
        match check(&self.keys, value) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(refusal) => {
                tracing::debug!("grpc call without a valid api key");
                if let Some(hook) = &self.on_refused {
                    hook();
                }
                Err(refusal.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;

    use super::*;

    #[test]
    fn the_interceptor_passes_good_keys_and_counts_refusals() {
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = refused.clone();
        let mut interceptor =
            RequireApiKey::new(ApiKeys::new(&["0123456789abcdef".into()])).on_refused(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
        let mut good = Request::new(());
        good.metadata_mut().insert("authorization", "Bearer 0123456789abcdef".parse().unwrap());
        let passed = interceptor.call(good).unwrap();
        assert_eq!(caller(&passed).unwrap().name(), "api_keys[0]");
        let status = interceptor.call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_key_without_the_operation_or_namespace_is_forbidden() {
        let scoped = KeyConfig {
            name: "billing".into(),
            key: Some("billing-key-0123456789".into()),
            key_sha256: None,
            operations: vec!["publish".into()],
            namespaces: vec!["chat".into()],
        };
        let keys = ApiKeys::from_config("publisher", &[], &[scoped]).unwrap();
        let caller = check(&keys, Some(b"Bearer billing-key-0123456789")).unwrap();
        let chat = ChannelName::parse("chat:a").unwrap();
        assert_eq!(authorize(&caller, Operation::Publish, Some(&chat)), Ok(()));
        let news = ChannelName::parse("news:a").unwrap();
        let refused = authorize(&caller, Operation::Publish, Some(&news)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
        assert!(refused.message.starts_with("channel: "), "{}", refused.message);
        let refused = authorize(&caller, Operation::PresenceRead, None).unwrap_err();
        assert_eq!(tonic::Status::from(refused).code(), tonic::Code::PermissionDenied);
    }
}
