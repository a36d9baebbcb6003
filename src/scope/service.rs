use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{Request, Response};
use tower::Service;

use super::{RequireScopeLayer, ResponseFuture};
use crate::caller::Caller;
use crate::error::AuthError;
use crate::future::Deferred;

/// The service [`RequireScopeLayer`] builds.
#[derive(Clone)]
pub struct RequireScope<S> {
    inner: S,
    layer: RequireScopeLayer,
}

impl<S> RequireScope<S> {
    pub(crate) fn new(inner: S, layer: RequireScopeLayer) -> Self {
        Self { inner, layer }
    }

    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for RequireScope<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScope")
            .field("inner", &self.inner)
            .field("scope", &self.layer.scope)
            .finish()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequireScope<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes>,
{
    forward_service_plumbing!();

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let scope = &self.layer.scope;
        let error = match Caller::of(req.extensions()) {
            Caller::Known(p) if p.has_scope(scope) => {
                return ResponseFuture::new(Deferred::called(self.inner.call(req), ()));
            }
            Caller::Known(p) => {
                tracing::debug!(target: "keygate", principal = p.id(), scope = &**scope, outcome = "insufficient_scope");
                AuthError::InsufficientScope(Cow::Owned(scope.to_string()))
            }
            Caller::Anonymous => AuthError::MissingCredential,
            Caller::Unchecked => {
                crate::outage::error_misconfigured!(
                    "RequireScopeLayer without AuthLayer in front of it"
                );
                AuthError::MissingLayer
            }
        };
        let response = self.layer.rendering.render(&error, &req);
        ResponseFuture::new(Deferred::answered(response))
    }
}
