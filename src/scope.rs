//! [`RequireScopeLayer`]: lets through only callers with a scope; others get 403
//! `insufficient_scope`, naming it.
//!
//! Place it inside (after) [`AuthLayer`](crate::AuthLayer), typically per route:
//!
//! ```
//! use axum::{Router, routing::{get, post}};
//! use keygate::{AuthLayer, RequireScopeLayer, store::MemoryStore};
//!
//! let app: Router = Router::new()
//!     .route("/v1/current.json", get(|| async { "sunny" }))
//!     .route_layer(RequireScopeLayer::new("weather:read"))
//!     .merge(
//!         Router::new()
//!             .route("/v1/alerts", post(|| async { "saved" }))
//!             .route_layer(RequireScopeLayer::new("weather:write")),
//!     )
//!     .layer(AuthLayer::new(MemoryStore::new()));
//! # let _ = app;
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{ResponseBody, take_error};
use crate::error::{AuthError, ErrorResponder, Rendering};
use crate::principal::{Anonymous, Principal};

/// Requires the caller's [`Principal`] to have a scope.
///
/// A request without a `Principal` is answered 401 when [`AuthLayer`](crate::AuthLayer) let it
/// through anonymously (optional mode), and 500 when no `AuthLayer` ran at all: a forgotten
/// layer must not look like an open door.
#[derive(Clone)]
#[must_use]
pub struct RequireScopeLayer {
    scope: Arc<str>,
    rendering: Rendering,
}

impl RequireScopeLayer {
    /// Requires `scope`.
    ///
    /// # Panics
    ///
    /// If `scope` is empty or has characters RFC 6749 §3.3 does not allow in a scope (space,
    /// `"`, `\`, control characters): a configuration mistake, found at start.
    pub fn new(scope: impl Into<Arc<str>>) -> Self {
        let scope = scope.into();
        assert!(
            !scope.is_empty()
                && scope
                    .bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)),
            "invalid scope {scope:?}: RFC 6749 scopes are printable ASCII without space, '\"' or '\\'"
        );
        Self {
            scope,
            rendering: Rendering::default(),
        }
    }

    /// The realm named in `WWW-Authenticate` (default `"api"`; use the `AuthLayer`'s).
    pub fn realm(mut self, realm: impl Into<Arc<str>>) -> Self {
        self.rendering.realm = realm.into();
        self
    }

    /// Replaces the error responder.
    pub fn responder(mut self, responder: impl ErrorResponder) -> Self {
        self.rendering.responder = Arc::new(responder);
        self
    }
}

impl fmt::Debug for RequireScopeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopeLayer")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequireScopeLayer`] builds.
#[derive(Clone)]
pub struct RequireScope<S> {
    inner: S,
    layer: RequireScopeLayer,
}

impl<S> RequireScope<S> {
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
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let error = match req.extensions().get::<Principal>() {
            Some(p) if p.has_scope(&self.layer.scope) => {
                return ResponseFuture::called(self.inner.call(req));
            }
            Some(p) => {
                tracing::debug!(target: "keygate", principal = p.id(), scope = &*self.layer.scope, outcome = "insufficient_scope");
                AuthError::InsufficientScope(Cow::Owned(self.layer.scope.to_string()))
            }
            None if req.extensions().get::<Anonymous>().is_some() => AuthError::MissingCredential,
            None => {
                crate::outage::error_misconfigured!(
                    "RequireScopeLayer without AuthLayer in front of it"
                );
                AuthError::MissingLayer
            }
        };
        ResponseFuture::failed(self.layer.rendering.render(&error, &req))
    }
}

pin_project! {
    /// The response future of [`RequireScope`] (and of other layers that either call the
    /// inner service or answer by themselves).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Failed { response: Option<Response<Bytes>> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F) -> Self {
        Self {
            kind: Kind::Called { future },
        }
    }

    pub(crate) fn failed(response: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Failed {
                response: Some(response),
            },
        }
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => future.poll(cx).map_ok(|r| r.map(ResponseBody::new)),
            KindProj::Failed { response } => Poll::Ready(Ok(take_error(response))),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
