//! What a [`RateLimitLayer`](super::RateLimitLayer) is configured with, and how it turns a
//! limiter's answer into a decision on a request.

use std::sync::Arc;

use http::HeaderMap;

use super::headers::{HeaderStyle, Policy};
use super::{Decision, RateLimitError, RateLimiter, UsageTracker};
use crate::credential::RequestHead;
use crate::error::{AuthError, RateLimited, Rendering, Unavailable};
use crate::outage::{OutageLog, info_recovered, warn_outage};
use crate::principal::Principal;

pub(crate) type CostFn = dyn Fn(&RequestHead<'_>) -> u32 + Send + Sync;
pub(crate) type KeyFn = dyn Fn(&RequestHead<'_>) -> Option<String> + Send + Sync;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) limiter: Arc<dyn RateLimiter>,
    pub(crate) default: Policy,
    pub(crate) tiers: Vec<Policy>,
    pub(crate) cost: Option<Arc<CostFn>>,
    pub(crate) key_by: Option<Arc<KeyFn>>,
    pub(crate) style: HeaderStyle,
    pub(crate) usage: Option<UsageTracker>,
    pub(crate) rendering: Rendering,
    pub(crate) outage: OutageLog,
}

/// Which policy applies to a request.
pub(crate) enum Which {
    Default,
    Tier(usize),
    Own(Box<Policy>),
}

impl Config {
    pub(crate) fn policy<'a>(&'a self, which: &'a Which) -> &'a Policy {
        match which {
            Which::Default => &self.default,
            Which::Tier(i) => &self.tiers[*i],
            Which::Own(p) => p,
        }
    }

    pub(crate) fn which(&self, principal: &Principal) -> Which {
        if let Some(quota) = principal.quota() {
            return Which::Own(Box::new(Policy::new("key", *quota[0].quota())));
        }
        if let Some(tier) = principal.tier()
            && let Some(i) = self.tiers.iter().position(|p| &*p.name == tier)
        {
            return Which::Tier(i);
        }
        Which::Default
    }

    /// What the limiter's answer for `key` means for the request: admitted with this decision
    /// (its headers go on the response), or turned away with this error.
    pub(crate) fn outcome(
        &self,
        key: &str,
        which: &Which,
        answer: Result<Decision, RateLimitError>,
    ) -> Result<Decision, AuthError> {
        let decision = match answer {
            Ok(decision) => decision,
            Err(e) => {
                warn_outage!(self.outage, e, "rate limiter");
                return Err(AuthError::Unavailable(Unavailable::RateLimiter(Arc::new(
                    e,
                ))));
            }
        };
        info_recovered!(self.outage, "rate limiter");
        if let Some(usage) = &self.usage {
            usage.record(key, decision.allowed);
        }
        if decision.allowed {
            return Ok(decision);
        }
        tracing::debug!(target: "keygate", principal = key, outcome = "rate_limited");
        let mut headers = HeaderMap::new();
        self.policy(which)
            .write(&mut headers, &decision, self.style);
        Err(AuthError::RateLimited(Box::new(RateLimited::new(
            decision.retry_after,
            headers,
        ))))
    }
}

/// The rate-limit headers an admitted request's response gets.
pub(crate) struct Headers(pub(crate) Option<(Which, Decision, Arc<Config>)>);

impl crate::future::Then for Headers {
    fn apply<T>(self, response: &mut http::Response<T>) {
        if let Some((which, decision, config)) = self.0 {
            config
                .policy(&which)
                .write(response.headers_mut(), &decision, config.style);
        }
    }
}
