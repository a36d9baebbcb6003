use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower::Service;

use super::{Admission, AuthConfig, Decision, ResponseFuture};
use crate::body::{ResponseBody, take_ready};
use crate::credential::RequestHead;
use crate::principal::{Anonymous, Principal};

/// The service [`AuthLayer`](super::AuthLayer) builds around an inner service.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    config: Arc<AuthConfig>,
}

impl<S> AuthService<S> {
    pub(crate) fn new(inner: S, config: Arc<AuthConfig>) -> Self {
        Self { inner, config }
    }

    define_inner_service_accessors!();
}

pub(crate) fn admit<B>(req: &mut Request<B>, admission: Admission, config: &AuthConfig) {
    let extensions = req.extensions_mut();
    match admission {
        Admission::Anonymous => {
            tracing::debug!(target: "keygate", outcome = "anonymous");
            extensions.insert(Anonymous {
                rendering: config.rendering.clone(),
            });
        }
        Admission::Key(p) => {
            tracing::debug!(target: "keygate", principal = p.id(), kind = "api_key", outcome = "authenticated");
            extensions.insert(p);
        }
        #[cfg(feature = "jwt")]
        Admission::Token(v) => {
            tracing::debug!(target: "keygate", principal = v.principal.id(), kind = "jwt", outcome = "authenticated");
            extensions.insert(v.principal.clone());
            if let Some(claims) = &v.claims {
                claims.insert_into(extensions);
            }
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AuthService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: http_body::Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // Never trust a Principal that arrived with the request from further out.
        req.extensions_mut().remove::<Principal>();
        match self.config.decide(&RequestHead::of(&req)) {
            Decision::Admit(admission) => {
                admit(&mut req, admission, &self.config);
                ResponseFuture::called(self.inner.call(req))
            }
            Decision::Reject(error) => {
                tracing::debug!(target: "keygate", outcome = error.kind(), "rejected");
                ResponseFuture::failed(self.config.rendering.render(&error, &req))
            }
            Decision::Wait(wait) => {
                let service = take_ready(&mut self.inner);
                ResponseFuture::waiting(wait, service, req, self.config.clone())
            }
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
