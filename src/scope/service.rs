use std::fmt;

use http::{Request, Response};
use tower::Service;

#[cfg(feature = "jwt")]
use super::RequireClaimsLayer;
use super::{RequirePrincipalLayer, RequireScopeLayer, ResponseFuture};
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
            .field("scope", &self.layer.expr)
            .finish()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequireScope<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: crate::LayerBody,
{
    forward_service_plumbing!();

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let expr = &self.layer.expr;
        let error = match Caller::of(req.extensions()) {
            Caller::Known(p) => match expr.check(|s| p.has_scope(s)) {
                Ok(()) => return ResponseFuture::new(Deferred::called(self.inner.call(req), ())),
                Err(lacks) => {
                    tracing::debug!(target: "keygate", principal = p.id(), scope = %expr, outcome = "insufficient_scope");
                    AuthError::InsufficientScope(lacks)
                }
            },
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

/// The service [`RequirePrincipalLayer`] builds.
#[derive(Clone)]
pub struct RequirePrincipal<S> {
    inner: S,
    layer: RequirePrincipalLayer,
}

impl<S> RequirePrincipal<S> {
    pub(crate) fn new(inner: S, layer: RequirePrincipalLayer) -> Self {
        Self { inner, layer }
    }

    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for RequirePrincipal<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequirePrincipal")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequirePrincipal<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: crate::LayerBody,
{
    forward_service_plumbing!();

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let check = &self.layer.check;
        let error = match Caller::of(req.extensions()) {
            Caller::Known(p) if check.passes(p) => {
                return ResponseFuture::new(Deferred::called(self.inner.call(req), ()));
            }
            Caller::Known(p) => {
                tracing::debug!(target: "keygate", principal = p.id(), outcome = "forbidden");
                check.refusal()
            }
            Caller::Anonymous => AuthError::MissingCredential,
            Caller::Unchecked => {
                crate::outage::error_misconfigured!(
                    "RequirePrincipalLayer without AuthLayer in front of it"
                );
                AuthError::MissingLayer
            }
        };
        let response = check.rendering.render(&error, &req);
        ResponseFuture::new(Deferred::answered(response))
    }
}

/// The service [`RequireClaimsLayer`] builds.
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub struct RequireClaims<S, T> {
    inner: S,
    layer: RequireClaimsLayer<T>,
}

#[cfg(feature = "jwt")]
impl<S, T> RequireClaims<S, T> {
    pub(crate) fn new(inner: S, layer: RequireClaimsLayer<T>) -> Self {
        Self { inner, layer }
    }

    define_inner_service_accessors!();
}

#[cfg(feature = "jwt")]
impl<S: Clone, T> Clone for RequireClaims<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

#[cfg(feature = "jwt")]
impl<S: fmt::Debug, T> fmt::Debug for RequireClaims<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireClaims")
            .field("inner", &self.inner)
            .field("claims", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "jwt")]
impl<S, T, ReqB, ResB> Service<Request<ReqB>> for RequireClaims<S, T>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: crate::LayerBody,
    T: Send + Sync + 'static,
{
    forward_service_plumbing!();

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let check = &self.layer.check;
        let error = match Caller::of(req.extensions()) {
            Caller::Known(p) => match req.extensions().get::<crate::jwt::Claims<T>>() {
                Some(claims) if check.passes(claims) => {
                    return ResponseFuture::new(Deferred::called(self.inner.call(req), ()));
                }
                claims => {
                    // No claims: an API key, or a token whose verifier decodes no `T` (with
                    // several issuers, maybe rightly so): refused, as a failed check is.
                    let outcome = if claims.is_some() {
                        "forbidden"
                    } else {
                        "no_claims"
                    };
                    tracing::debug!(target: "keygate", principal = p.id(), claims = std::any::type_name::<T>(), outcome);
                    check.refusal()
                }
            },
            Caller::Anonymous => AuthError::MissingCredential,
            Caller::Unchecked => {
                crate::outage::error_misconfigured!(
                    "RequireClaimsLayer without AuthLayer in front of it"
                );
                AuthError::MissingLayer
            }
        };
        let response = check.rendering.render(&error, &req);
        ResponseFuture::new(Deferred::answered(response))
    }
}
