use std::fmt;
use std::sync::Arc;

use http::{Request, Response};
use tower::Service;

use super::config::{AuthConfig, Decision};
use super::future::{AuthWait, ResponseFuture};
use crate::credential::RequestHead;
use crate::future::Deferred;
use crate::principal::Principal;

/// The service [`AuthLayer`](super::AuthLayer) builds around an inner service.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    config: Arc<AuthConfig>,
}

impl<S> Auth<S> {
    pub(crate) fn new(inner: S, config: Arc<AuthConfig>) -> Self {
        Self { inner, config }
    }

    define_inner_service_accessors!();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Auth<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: crate::LayerBody,
{
    forward_service_plumbing!();

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // Never trust a Principal that arrived with the request from further out.
        req.extensions_mut().remove::<Principal>();
        let mut found_in = None;
        let deferred = match self.config.decide(&RequestHead::of(&req), &mut found_in) {
            Decision::Admit(admission) => {
                self.config.admit(&mut req, admission);
                self.config.strip(&mut req, found_in);
                Deferred::called(self.inner.call(req), ())
            }
            Decision::Reject(refusal) => {
                let response = self.config.reject(&refusal.error, refusal.key, &req);
                Deferred::answered(response)
            }
            Decision::Wait(pending) => {
                let wait = AuthWait::new(pending, self.config.clone(), found_in);
                Deferred::waiting(wait, &mut self.inner, req)
            }
        };
        ResponseFuture::new(deferred)
    }
}

impl<S: fmt::Debug> fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
