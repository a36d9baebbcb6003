use std::fmt;
use std::sync::Arc;

use tower::Layer;

use super::RateLimit;
use super::config::Config;
use super::headers::{HeaderStyle, Policy};
use super::{Quota, RateLimiter, UsageTracker};
use crate::credential::RequestHead;
use crate::error::Rendering;
use crate::outage::OutageLog;

/// The key anonymous requests (optional mode) share when no [`RateLimitLayer::key_by`] is set.
pub const ANONYMOUS_KEY: &str = "anonymous";

/// Limits each caller's request rate. Builds [`RateLimit`] services.
///
/// Every response it lets through carries rate-limit headers (by default the IETF draft's
/// `RateLimit-Policy` and `RateLimit`); a limited request gets 429 with `Retry-After` (whole
/// seconds, at least 1), `Cache-Control: no-store` and a problem+json body of type
/// `https://iana.org/assignments/http-problem-types#quota-exceeded` (gRPC: status 8
/// `RESOURCE_EXHAUSTED`, with the same headers as metadata). A limiter that cannot decide makes
/// the request fail with 503.
///
/// ```
/// use keygate::ratelimit::{HeaderStyle, MemoryLimiter, RateLimitLayer, UsageTracker};
/// use keygate::Quota;
///
/// let usage = UsageTracker::new(100_000);
/// let layer = RateLimitLayer::new(MemoryLimiter::new(), "100/min".parse().unwrap())
///     .tier("gold", Quota::per_minute(10_000))
///     .cost(|head| if head.method == "POST" { 5 } else { 1 })
///     .headers(HeaderStyle::Both)
///     .track_usage(usage.clone());
/// # let _ = layer;
/// ```
#[derive(Clone)]
#[must_use]
pub struct RateLimitLayer {
    config: Arc<Config>,
}

impl RateLimitLayer {
    /// Limits every caller to `default` (unless its key or tier says otherwise) with `limiter`.
    pub fn new(limiter: impl RateLimiter, default: Quota) -> Self {
        Self {
            config: Arc::new(Config {
                limiter: Arc::new(limiter),
                default: Policy::new("default", default),
                tiers: Vec::new(),
                cost: None,
                key_by: None,
                style: HeaderStyle::default(),
                usage: None,
                rendering: Rendering::default(),
                outage: OutageLog::new(),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Callers whose principal names tier `name` (a JWT tier claim) get `quota`.
    ///
    /// # Panics
    ///
    /// With [`key_by`](Self::key_by): a layer that limits by another key than the principal
    /// never looks at the principal's tier, so the tier would silently do nothing.
    pub fn tier(mut self, name: &str, quota: Quota) -> Self {
        assert!(
            self.config.key_by.is_none(),
            "RateLimitLayer::tier with key_by: tiers are the principal's, and key_by limits by \
             another key"
        );
        let policy = Policy::new(name, quota);
        let config = self.config();
        config.tiers.retain(|p| p.name != policy.name);
        config.tiers.push(policy);
        self
    }

    /// What a request costs, in units of the quota (default 1). A cost of 0 is taken as 1.
    pub fn cost(mut self, cost: impl Fn(&RequestHead<'_>) -> u32 + Send + Sync + 'static) -> Self {
        self.config().cost = Some(Arc::new(move |head| cost(head).max(1)));
        self
    }

    /// Limits by another key than the principal's id (a client IP, a tenant header). A
    /// request for which it returns `None` is not limited. With it, the layer needs no
    /// `AuthLayer` in front, and every key gets the default quota: a principal's own quota
    /// and tier are not looked at.
    ///
    /// # Panics
    ///
    /// With [`tier`](Self::tier), for the reason given there.
    pub fn key_by(
        mut self,
        key: impl Fn(&RequestHead<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        assert!(
            self.config.tiers.is_empty(),
            "RateLimitLayer::key_by with tiers: tiers are the principal's, and key_by limits by \
             another key"
        );
        self.config().key_by = Some(Arc::new(key));
        self
    }

    /// Which headers responses carry (default [`HeaderStyle::Draft`]).
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.config().style = style;
        self
    }

    /// Counts allowed and limited requests per caller in `usage`.
    pub fn track_usage(mut self, usage: UsageTracker) -> Self {
        self.config().usage = Some(usage);
        self
    }

    fn rendering_mut(&mut self) -> &mut Rendering {
        &mut self.config().rendering
    }

    define_rendering_setters!(
        "By default, those of the [`AuthLayer`](crate::auth::AuthLayer) in front (or `\"api\"` \
         and the standard responder)."
    );
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("default", &self.config.default.quota)
            .field("tiers", &self.config.tiers.len())
            .field("style", &self.config.style)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::MemoryLimiter;

    fn layer() -> RateLimitLayer {
        RateLimitLayer::new(MemoryLimiter::new(), Quota::per_second(1))
    }

    #[test]
    #[should_panic(expected = "tiers are the principal's")]
    fn a_tier_on_a_layer_keyed_by_something_else_is_a_configuration_error() {
        let _ = layer()
            .key_by(|_| Some("ip".to_owned()))
            .tier("gold", Quota::per_second(10));
    }

    #[test]
    #[should_panic(expected = "tiers are the principal's")]
    fn keying_a_layer_with_tiers_by_something_else_is_a_configuration_error() {
        let _ = layer()
            .tier("gold", Quota::per_second(10))
            .key_by(|_| Some("ip".to_owned()));
    }
}
