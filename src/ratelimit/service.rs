use std::fmt;
use std::sync::Arc;

use http::{Request, Response};
use tower::Service;

use super::ANONYMOUS_KEY;
use super::Subject;
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
    ResB: crate::LayerBody,
{
    forward_service_plumbing!();

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let config = &self.config;
        let head = RequestHead::of(&req);
        let custom_key;
        // The principal whose credits a request spends: an API key with a budget of them, or
        // a token minted for one.
        let mut spender = None;
        let (subject, which): (Subject<'_>, Which) = if let Some(key_by) = &config.key_by {
            custom_key = key_by(&head).map(super::LimitKey::into_parts);
            match &custom_key {
                Some((k, quota)) => (Subject::new(k), config.which_for_key(quota.as_ref())),
                None => {
                    let future = self.inner.call(req);
                    return ResponseFuture::new(Deferred::called(future, Headers(None, None)));
                }
            }
        } else {
            match Caller::of(req.extensions()) {
                Caller::Known(p) => {
                    if config.credits.is_some() && p.spends_credits() {
                        spender = Some(p.id());
                    }
                    (Subject::with_owner(p.id(), p.owner()), config.which(p))
                }
                Caller::Anonymous => (Subject::new(ANONYMOUS_KEY), Which::Default),
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
        let (permit, shadow_entry) = match config.enter(subject) {
            Ok(entry) => (entry.permit, entry.shadow_denied),
            Err(error) => {
                let response = config.rendering.render(&error, &req);
                return ResponseFuture::new(Deferred::answered(response));
            }
        };
        let mut check = config
            .limiter
            .check_all(subject, &config.policies(&which).limits, cost);
        let Some(answer) = check.take_ready() else {
            let entry = (permit, shadow_entry);
            let wait = LimitWait::limits(check, subject, spender, cost, which, entry, config);
            return ResponseFuture::new(Deferred::waiting(wait, &mut self.inner, req));
        };
        let credits_next = spender.is_some();
        let verdict = match config.outcome(subject, &which, answer, credits_next, shadow_entry) {
            Ok(verdict) => verdict,
            Err(error) => {
                let response = config.rendering.render(&error, &req);
                return ResponseFuture::new(Deferred::answered(response));
            }
        };
        if let (Some(id), Some(credits)) = (spender, &config.credits) {
            let mut spend = credits.spend(id, cost);
            match spend.take_ready() {
                Some(answer) => {
                    let decided = config.credit_outcome(id, &which, &verdict, answer, shadow_entry);
                    if let Err(error) = decided {
                        let response = config.rendering.render(&error, &req);
                        return ResponseFuture::new(Deferred::answered(response));
                    }
                }
                None => {
                    let entry = (permit, shadow_entry);
                    let wait = LimitWait::credits(spend, id, which, verdict, entry, config);
                    return ResponseFuture::new(Deferred::waiting(wait, &mut self.inner, req));
                }
            }
        }
        let headers = Headers(Some((which, verdict, self.config.clone())), permit);
        ResponseFuture::new(Deferred::called(self.inner.call(req), headers))
    }
}
