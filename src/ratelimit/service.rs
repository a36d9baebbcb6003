use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use tower::Service;

use super::ANONYMOUS_KEY;
use super::config::{Config, Headers, Which};
use super::future::{LimitWait, ResponseFuture};
use crate::caller::Caller;
use crate::credential::RequestHead;
use crate::error::AuthError;
use crate::future::Deferred;
use crate::outage::error_misconfigured;

/// The service [`RateLimitLayer`](super::RateLimitLayer) builds.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: http_body::Body<Data = Bytes>,
{
    forward_service_plumbing!();

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let config = &self.config;
        let head = RequestHead::of(&req);
        let custom_key;
        let (key, which): (&str, Which) = if let Some(key_by) = &config.key_by {
            custom_key = key_by(&head);
            match &custom_key {
                Some(k) => (k, Which::Default),
                None => {
                    let future = self.inner.call(req);
                    return ResponseFuture::new(Deferred::called(future, Headers(None)));
                }
            }
        } else {
            match Caller::of(req.extensions()) {
                Caller::Known(p) => (p.id(), config.which(p)),
                Caller::Anonymous => (ANONYMOUS_KEY, Which::Default),
                Caller::Unchecked => {
                    error_misconfigured!(
                        "RateLimitLayer without AuthLayer in front of it and no key_by"
                    );
                    let response = config.rendering.render(&AuthError::MissingLayer, &req);
                    return ResponseFuture::new(Deferred::answered(response));
                }
            }
        };
        let cost = config.cost.as_ref().map_or(1, |f| f(&head));
        let mut check = config
            .limiter
            .check(key, &config.policy(&which).quota, cost);
        let deferred = match check.take_ready() {
            Some(answer) => match config.outcome(key, &which, answer) {
                Ok(decision) => {
                    let headers = Headers(Some((which, decision, self.config.clone())));
                    Deferred::called(self.inner.call(req), headers)
                }
                Err(error) => Deferred::answered(config.rendering.render(&error, &req)),
            },
            None => {
                let wait = LimitWait::new(check, key, which, self.config.clone());
                Deferred::waiting(wait, &mut self.inner, req)
            }
        };
        ResponseFuture::new(deferred)
    }
}
