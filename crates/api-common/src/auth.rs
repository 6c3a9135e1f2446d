//! The API key check both APIs run, over HTTP (`Authorization` header) and gRPC
//! (`authorization` metadata), both `Bearer <key>`. The constant-time comparison itself is
//! [`ApiKeys::accepts`].

use std::sync::Arc;

pub use herald_protocol::ApiKeys;
use tonic::{Request, Status};

use crate::error::Refusal;

/// Passes when `authorization` is `Bearer <key>` with one of `keys`, else `unauthorized`.
pub fn check(keys: &ApiKeys, authorization: Option<&[u8]>) -> Result<(), Refusal> {
    if keys.accepts(authorization) { Ok(()) } else { Err(Refusal::unauthorized()) }
}

/// The `Authorization` header of an HTTP request.
pub fn authorization(headers: &axum::http::HeaderMap) -> Option<&[u8]> {
    headers.get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes())
}

/// A gRPC interceptor that refuses calls without a valid API key with UNAUTHENTICATED. It
/// runs before the request message is read, so a caller without a key cannot make the server
/// buffer and decode a large message.
#[derive(Clone)]
pub struct RequireApiKey {
    keys: ApiKeys,
    /// Called for each refused call (the publisher API counts them).
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
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let value = request.metadata().get("authorization").map(|v| v.as_bytes());
        match check(&self.keys, value) {
            Ok(()) => Ok(request),
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
        assert!(interceptor.call(good).is_ok());
        let status = interceptor.call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
