use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::config::Config;
use super::headers::HeaderStyle;
use super::{
    ConcurrencyLimiter, LimitKey, Overrides, RateLimit, RateLimitError, RateLimiter, Subject,
    UsageTracker,
};
use crate::credential::RequestHead;
use crate::error::Rendering;
use crate::principal::Principal;
use crate::store::CreditStore;
use crate::{LimitBy, Limits};

/// The key anonymous requests (optional mode) share when no [`RateLimitLayer::key_by`] is set.
pub const ANONYMOUS_KEY: &str = "anonymous";

/// Limits each caller's requests by a list of limits ([`Limits`]: rates and fixed-window
/// caps, all of which must admit). Builds [`RateLimit`] services.
///
/// Every response it lets through carries rate-limit headers (by default the IETF draft's
/// `RateLimit-Policy` and `RateLimit`, one entry per limit; layers stacked on one route add to
/// them); a limited request gets 429 with `Retry-After` (whole seconds, at least 1: the time
/// until every limit would admit it), `Cache-Control: no-store` and a problem+json body of type
/// `https://iana.org/assignments/http-problem-types#quota-exceeded` whose `detail` names the
/// limit that denied (gRPC: status 8 `RESOURCE_EXHAUSTED`, with the same headers as metadata).
/// A limiter that cannot decide makes the request fail with 503.
///
/// Which limits apply to a caller, first match wins: an [`Overrides`] entry for its id, its
/// own quota (a key record's, or a token's quota claim), its tier (a key record's or a
/// token's tier claim, mapped by [`tier`](Self::tier)), the default.
///
/// ```
/// use keygate::ratelimit::{HeaderStyle, MemoryLimiter, RateLimitLayer, UsageTracker};
/// use keygate::Quota;
///
/// let usage = UsageTracker::new(100_000);
/// let layer = RateLimitLayer::new(MemoryLimiter::new(), "100/min".parse::<Quota>().unwrap())
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
    /// Limits every caller by `default` (a [`Quota`](crate::Quota) or a list of [`Limits`];
    /// unless its key or tier says otherwise) with `limiter`.
    pub fn new(limiter: impl RateLimiter, default: impl Into<Limits>) -> Self {
        Self {
            config: Arc::new(Config::new(Arc::new(limiter), default.into())),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Callers whose principal names tier `name` (a key record's tier, a JWT tier claim) get
    /// `limits`.
    ///
    /// # Panics
    ///
    /// With [`key_by`](Self::key_by): a layer that limits by another key than the principal
    /// never looks at the principal's tier, so the tier would silently do nothing.
    pub fn tier(mut self, name: &str, limits: impl Into<Limits>) -> Self {
        assert!(
            self.config.key_by.is_none(),
            "RateLimitLayer::tier with key_by: tiers are the principal's, and key_by limits by \
             another key"
        );
        self.config().set_tier(name, limits.into());
        self
    }

    /// Counts every limit by `by`: with [`LimitBy::Owner`], all the keys of one owner (and the
    /// tokens minted for them) share each limit. A single limit can also be counted by owner
    /// alone (`"1000/d;fixed;owner"`, [`Limit::by_owner`](crate::Limit::by_owner)).
    pub fn limit_by(mut self, by: LimitBy) -> Self {
        self.config().set_by(by);
        self
    }

    /// Runs the whole layer in shadow: decisions, headers and usage counts as usual, but no
    /// request is denied; a denial that shadow mode let through is logged (at `INFO`, once per
    /// caller and limit per window). For trying out limits on live traffic. Single limits
    /// can be in shadow on their own (`"100/min;shadow"`).
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.config().set_shadow(shadow);
        self
    }

    /// Spends each admitted request's cost from its API key's credits, when the key has a
    /// budget of them ([`KeyRecord::credits`](crate::key::KeyRecord::credits)), in `store`
    /// (the key's store, shared by every instance). A key whose credits are used up gets 429
    /// with a problem `detail` saying so, and `Retry-After` only when a refill is scheduled.
    /// Credits are spent after the limits admitted the request, so a request the limits deny
    /// costs no credit (one the credits deny still counted against the limits). A store that
    /// cannot answer makes the request fail with 503.
    ///
    /// ```
    /// use keygate::key::{Credits, KeyRecord};
    /// use keygate::ratelimit::{MemoryLimiter, RateLimitLayer};
    /// use keygate::store::MemoryStore;
    /// use keygate::Quota;
    ///
    /// let store = MemoryStore::new();
    /// let key = store.issue(KeyRecord::new("key_1", "acme").with_credits(Credits::new(1000)))?;
    /// let layer = RateLimitLayer::new(MemoryLimiter::new(), Quota::per_second(10))
    ///     .credits(store.clone());
    /// # let _ = (key, layer);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn credits(mut self, store: impl CreditStore) -> Self {
        self.config().credits = Some(Arc::new(store));
        self
    }

    /// Lets each caller (the key the limits count by) have at most `max` requests in flight;
    /// one more gets 429 with a problem `detail` saying so and `Retry-After: 1`. A request
    /// counts until its response body has been sent or dropped (a client that disconnects
    /// frees its place). Counted in memory, per process. A `max` of 0 is taken as 1.
    ///
    /// ```
    /// use keygate::ratelimit::{MemoryLimiter, RateLimitLayer};
    /// use keygate::Quota;
    ///
    /// let layer = RateLimitLayer::new(MemoryLimiter::new(), Quota::per_second(10)).concurrency(4);
    /// # let _ = layer;
    /// ```
    pub fn concurrency(mut self, max: u32) -> Self {
        self.config().concurrency = Some((ConcurrencyLimiter::new(), max.max(1)));
        self
    }

    /// Limits for particular callers, changeable while the service runs (see [`Overrides`]).
    pub fn overrides(mut self, overrides: Overrides) -> Self {
        self.config().overrides = Some(overrides);
        self
    }

    /// What a request costs, in units of the quota (default 1). A cost of 0 is taken as 1.
    pub fn cost(mut self, cost: impl Fn(&RequestHead<'_>) -> u32 + Send + Sync + 'static) -> Self {
        self.config().cost = Some(Arc::new(move |head| cost(head).max(1)));
        self
    }

    /// Limits by another key than the principal's id (a client IP, a tenant header), and
    /// optionally picks the limits for it ([`LimitKey::with_quota`]; a plain `String` gets the
    /// default). A request for which it returns `None` is not limited. With it, the layer
    /// needs no `AuthLayer` in front, and a principal's own quota, tier and overrides are not
    /// looked at.
    ///
    /// # Panics
    ///
    /// With [`tier`](Self::tier), for the reason given there.
    pub fn key_by<K: Into<LimitKey>>(
        mut self,
        key: impl Fn(&RequestHead<'_>) -> Option<K> + Send + Sync + 'static,
    ) -> Self {
        assert!(
            self.config.tiers.is_empty(),
            "RateLimitLayer::key_by with tiers: tiers are the principal's, and key_by limits by \
             another key"
        );
        self.config().key_by = Some(Arc::new(move |head| key(head).map(Into::into)));
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

    /// What each limit that applies to `principal` has left now, spending nothing: for a
    /// "quota" endpoint or a dashboard. One entry per limit, in order, with the policy names of
    /// the headers. It reads the principal's limits (override, own quota, tier, default), as a
    /// layer without [`key_by`](Self::key_by) applies them.
    ///
    /// ```
    /// use keygate::ratelimit::{MemoryLimiter, RateLimitLayer};
    /// use keygate::{Principal, PrincipalKind};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = RateLimitLayer::new(MemoryLimiter::new(), "10/s;name=burst, 1000/d;fixed;name=daily".parse::<keygate::Limits>()?);
    /// let caller = Principal::new("user-1", PrincipalKind::Other);
    /// let status = layer.peek(&caller).await?;
    /// assert_eq!(status[1].name, "daily");
    /// assert_eq!(status[1].remaining, 1000);
    /// # Ok(())
    /// # }
    /// ```
    pub fn peek(
        &self,
        principal: &Principal,
    ) -> impl Future<Output = Result<Vec<PolicyStatus>, RateLimitError>> + Send + 'static {
        let config = self.config.clone();
        let which = config.which(principal);
        let subject = Subject::with_owner(principal.id(), principal.owner());
        let check = config
            .limiter
            .peek(subject, &config.policies(&which).limits);
        async move {
            let verdict = check.await?;
            let policies = config.policies(&which);
            Ok(policies
                .limits
                .iter()
                .zip(verdict.decisions())
                .enumerate()
                .map(|(i, (limit, decision))| {
                    // The limiter answers for a request of cost 1; report the state before it.
                    let quota = limit.quota();
                    let (remaining, reset) = match (decision.allowed, quota.is_fixed()) {
                        (false, _) => (decision.remaining, decision.reset_after),
                        (true, true) => {
                            (decision.remaining.saturating_add(1), decision.reset_after)
                        }
                        (true, false) => (
                            decision.remaining.saturating_add(1),
                            decision
                                .reset_after
                                .saturating_sub(quota.emission_interval()),
                        ),
                    };
                    PolicyStatus {
                        name: policies.name(i).to_owned(),
                        limit: quota.burst(),
                        window: quota.window(),
                        remaining,
                        reset,
                    }
                })
                .collect())
        }
    }

    /// The limits that apply to `principal` (see the type's docs for which win).
    pub fn limits_for(&self, principal: &Principal) -> Limits {
        let which = self.config.which(principal);
        self.config.policies(&which).limits.clone()
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
            .field("default", &self.config.default.limits)
            .field("tiers", &self.config.tiers.len())
            .field("by", &self.config.by)
            .field("shadow", &self.config.shadow)
            .field("style", &self.config.style)
            .finish_non_exhaustive()
    }
}

/// One limit's state, as [`RateLimitLayer::peek`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyStatus {
    /// The policy name, as in the `RateLimit` headers.
    pub name: String,
    /// Requests the limit admits at once (a rate's burst, a cap's limit): `q` in the headers.
    pub limit: u32,
    /// The limit's window.
    pub window: Duration,
    /// Requests of cost 1 that would be admitted now.
    pub remaining: u32,
    /// Time until the limit is full again (a cap: until its window ends).
    pub reset: Duration,
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
    use crate::Quota;
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
