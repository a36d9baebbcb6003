//! What a [`RateLimitLayer`](super::RateLimitLayer) is configured with, and how it turns a
//! limiter's answer into a decision on a request.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::headers::{HeaderStyle, Policies};
use super::{
    ConcurrencyLimiter, LimitKey, Overrides, Permit, RateLimitError, RateLimiter, Subject,
    UsageTracker, Verdict,
};
use crate::clock::{Clock, SystemClock};
use crate::credential::RequestHead;
use crate::error::{AuthError, RateLimited, Rendering, Unavailable, retry_after_secs};
use crate::metrics::{LimitDecision, OtherPolicy, PolicyCounters};

/// The policy name of a key's own quota.
const KEY: &str = "key";
/// The policy name of an override.
const OVERRIDE: &str = "override";
use crate::outage::{OutageLog, info_recovered, warn_outage};
use crate::principal::Principal;
use crate::store::{CreditOutcome, CreditStore, StoreError};
use crate::{LimitBy, Limits};

pub(crate) type CostFn = dyn Fn(&RequestHead<'_>) -> u32 + Send + Sync;
pub(crate) type KeyFn = dyn Fn(&RequestHead<'_>) -> Option<LimitKey> + Send + Sync;

/// Callers whose shadow denials were logged, and until when they stay quiet: a denial that
/// shadow mode lets through is logged once per caller and limit per window.
const SHADOW_LOG_ENTRIES: usize = 10_000;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) limiter: Arc<dyn RateLimiter>,
    /// The default and the tiers as configured; `default` and `tiers` are derived from them
    /// with `by` and `shadow` applied.
    configured: (Limits, Vec<(Arc<str>, Limits)>),
    pub(crate) default: Arc<Policies>,
    pub(crate) tiers: Vec<(Arc<str>, Arc<Policies>)>,
    pub(crate) by: LimitBy,
    pub(crate) shadow: bool,
    pub(crate) overrides: Option<Overrides>,
    pub(crate) credits: Option<Arc<dyn CreditStore>>,
    pub(crate) concurrency: Option<(ConcurrencyLimiter, u32)>,
    pub(crate) cost: Option<Arc<CostFn>>,
    pub(crate) key_by: Option<Arc<KeyFn>>,
    pub(crate) style: HeaderStyle,
    pub(crate) usage: Option<UsageTracker>,
    pub(crate) rendering: Rendering,
    pub(crate) outage: OutageLog,
    shadow_log: Arc<quick_cache::sync::Cache<String, u64>>,
    /// The decision counters of the lists built per request: a key's own quota, an override.
    own_counters: (PolicyCounters, PolicyCounters),
}

/// Which limits apply to a request.
pub(crate) enum Which {
    Default,
    Tier(usize),
    Own(Arc<Policies>),
}

impl Config {
    pub(crate) fn new(limiter: Arc<dyn RateLimiter>, default: Limits) -> Self {
        let mut config = Self {
            limiter,
            default: Arc::new(Policies::new("default", default.clone())),
            configured: (default, Vec::new()),
            tiers: Vec::new(),
            by: LimitBy::Caller,
            shadow: false,
            overrides: None,
            credits: None,
            concurrency: None,
            cost: None,
            key_by: None,
            style: HeaderStyle::default(),
            usage: None,
            rendering: Rendering::default(),
            outage: OutageLog::new(),
            shadow_log: Arc::new(quick_cache::sync::Cache::new(SHADOW_LOG_ENTRIES)),
            own_counters: (PolicyCounters::new(KEY), PolicyCounters::new(OVERRIDE)),
        };
        config.derive();
        config
    }

    /// `limits` as this layer applies them: counted by `by`, in shadow if the layer is.
    fn adjust(&self, limits: &Limits) -> Limits {
        let limits = match self.by {
            LimitBy::Owner => limits.by(LimitBy::Owner),
            _ => limits.clone(),
        };
        if self.shadow { limits.shadow() } else { limits }
    }

    fn derive(&mut self) {
        self.default = Arc::new(Policies::new("default", self.adjust(&self.configured.0)));
        self.tiers = self
            .configured
            .1
            .iter()
            .map(|(name, limits)| {
                let policies = Policies::new(name, self.adjust(limits));
                (name.clone(), Arc::new(policies))
            })
            .collect();
    }

    pub(crate) fn set_tier(&mut self, name: &str, limits: Limits) {
        self.configured.1.retain(|(n, _)| &**n != name);
        self.configured.1.push((name.into(), limits));
        self.derive();
    }

    pub(crate) fn set_by(&mut self, by: LimitBy) {
        self.by = by;
        self.derive();
    }

    pub(crate) fn set_shadow(&mut self, shadow: bool) {
        self.shadow = shadow;
        self.derive();
    }

    pub(crate) fn policies<'a>(&'a self, which: &'a Which) -> &'a Policies {
        match which {
            Which::Default => &self.default,
            Which::Tier(i) => &self.tiers[*i].1,
            Which::Own(p) => p,
        }
    }

    fn own(&self, name: &'static str, limits: &Limits) -> Which {
        let counters = match name {
            OVERRIDE => self.own_counters.1.clone(),
            _ => self.own_counters.0.clone(),
        };
        let policies = Policies::with_counters(name, self.adjust(limits), counters);
        Which::Own(Arc::new(policies))
    }

    /// The limits of a principal: an override, its own quota, its tier, or the default.
    pub(crate) fn which(&self, principal: &Principal) -> Which {
        if let Some(overrides) = &self.overrides
            && let Some(limits) = overrides.get(principal.id())
        {
            return self.own(OVERRIDE, &limits);
        }
        if let Some(quota) = principal.quota() {
            return self.own(KEY, quota);
        }
        if let Some(tier) = principal.tier()
            && let Some(i) = self.tiers.iter().position(|(name, _)| &**name == tier)
        {
            return Which::Tier(i);
        }
        Which::Default
    }

    /// The limits `key_by` picked.
    pub(crate) fn which_for_key(&self, quota: Option<&Limits>) -> Which {
        match quota {
            Some(limits) => self.own(KEY, limits),
            None => Which::Default,
        }
    }

    /// What the limiter's answer for `subject` means for the request: admitted with this
    /// verdict (its headers go on the response), or turned away with this error. With
    /// `credits_next`, an admitted request is counted in the usage once its credits are spent.
    pub(crate) fn outcome(
        &self,
        subject: Subject<'_>,
        which: &Which,
        answer: Result<Verdict, RateLimitError>,
        credits_next: bool,
        shadow_entry: bool,
    ) -> Result<Verdict, AuthError> {
        let verdict = match answer {
            Ok(verdict) => verdict,
            Err(e) => {
                self.policies(which)
                    .counters
                    .count(LimitDecision::Unavailable);
                warn_outage!(self.outage, e, "rate limiter");
                return Err(AuthError::Unavailable(Unavailable::RateLimiter(Arc::new(
                    e,
                ))));
            }
        };
        info_recovered!(self.outage, "rate limiter");
        if let Some(usage) = &self.usage
            && !(credits_next && verdict.allowed())
        {
            usage.record(subject.key, verdict.allowed());
        }
        let policies = self.policies(which);
        self.log_shadow_denials(subject, policies, &verdict);
        let Some(denied) = verdict.longest_denial() else {
            // Admitted: counted now, or once the credits are spent.
            if !credits_next {
                count_admitted(policies, &verdict, shadow_entry);
            }
            return Ok(verdict);
        };
        policies.counters.count(LimitDecision::Limited);
        let name = policies.name(denied);
        tracing::debug!(
            target: "keygate",
            principal = subject.key,
            policy = name,
            outcome = "rate_limited"
        );
        let mut headers = HeaderMap::new();
        policies.write(&mut headers, &verdict, self.style);
        let retry_after = verdict.retry_after().max(Duration::from_nanos(1));
        let detail = format!(
            "Too many requests: the \"{name}\" limit is spent; retry in {} s.",
            retry_after_secs(retry_after)
        );
        Err(AuthError::RateLimited(Box::new(
            RateLimited::new(retry_after, headers).with_detail(detail),
        )))
    }

    /// A place among the caller's requests in flight, when the layer limits them: `Ok(None)`
    /// when it does not, an error when the caller has as many in flight as it may.
    pub(crate) fn enter(&self, subject: Subject<'_>) -> Result<Entry, AuthError> {
        let Some((limiter, max)) = &self.concurrency else {
            return Ok(Entry::default());
        };
        let key = subject.key_for(self.by);
        if let Some(permit) = limiter.acquire(key, *max) {
            return Ok(Entry {
                permit: Some(permit),
                shadow_denied: false,
            });
        }
        if self.shadow {
            if !self.shadow_quiet(key, "concurrency", Duration::from_secs(1)) {
                tracing::info!(
                    target: "keygate",
                    principal = subject.key,
                    policy = "concurrency",
                    limit = *max,
                    "rate limit exceeded (shadow)"
                );
            }
            return Ok(Entry {
                permit: None,
                shadow_denied: true,
            });
        }
        tracing::debug!(target: "keygate", principal = subject.key, outcome = "concurrency_limited");
        crate::metrics::limit_other(OtherPolicy::Concurrency, LimitDecision::Limited);
        if let Some(usage) = &self.usage {
            usage.record(subject.key, false);
        }
        Err(AuthError::RateLimited(Box::new(
            RateLimited::new(Duration::from_secs(1), HeaderMap::new()).with_detail(format!(
                "Too many requests in flight: at most {max} at once."
            )),
        )))
    }

    /// What a spend of the caller's credits means for the request the limits admitted with
    /// `verdict`.
    pub(crate) fn credit_outcome(
        &self,
        key: &str,
        which: &Which,
        verdict: &Verdict,
        answer: Result<CreditOutcome, StoreError>,
        shadow_entry: bool,
    ) -> Result<(), AuthError> {
        let record = |allowed| {
            if let Some(usage) = &self.usage {
                usage.record(key, allowed);
            }
        };
        let refill_in = match answer {
            Ok(CreditOutcome::Exhausted { refill_in }) => refill_in,
            Ok(_) => {
                info_recovered!(self.outage, "credit store");
                record(true);
                count_admitted(self.policies(which), verdict, shadow_entry);
                return Ok(());
            }
            Err(e) => {
                crate::metrics::limit_other(OtherPolicy::Credits, LimitDecision::Unavailable);
                warn_outage!(self.outage, e, "credit store");
                return Err(AuthError::Unavailable(Unavailable::KeyStore(Arc::new(e))));
            }
        };
        info_recovered!(self.outage, "credit store");
        if self.shadow {
            if !self.shadow_quiet(key, "credits", Duration::from_secs(60)) {
                tracing::info!(
                    target: "keygate",
                    principal = key,
                    policy = "credits",
                    "rate limit exceeded (shadow)"
                );
            }
            record(true);
            crate::metrics::limit_other(OtherPolicy::Credits, LimitDecision::ShadowLimited);
            return Ok(());
        }
        record(false);
        crate::metrics::limit_other(OtherPolicy::Credits, LimitDecision::Limited);
        tracing::debug!(target: "keygate", principal = key, outcome = "credits_exhausted");
        let (retry_after, detail) = match refill_in {
            Some(wait) => {
                let wait = wait.max(Duration::from_nanos(1));
                let detail = format!(
                    "The key's credits are used up; they are refilled in {} s.",
                    retry_after_secs(wait)
                );
                (wait, detail)
            }
            None => (Duration::ZERO, "The key's credits are used up.".to_owned()),
        };
        let mut headers = HeaderMap::new();
        self.policies(which)
            .write(&mut headers, verdict, self.style);
        Err(AuthError::RateLimited(Box::new(
            RateLimited::new(retry_after, headers).with_detail(detail),
        )))
    }

    fn log_shadow_denials(&self, subject: Subject<'_>, policies: &Policies, verdict: &Verdict) {
        for i in verdict.shadow_denials() {
            let Some(limit) = policies.limits.get(i) else {
                continue;
            };
            let name = policies.name(i);
            if self.shadow_quiet(subject.key_for(limit.by()), name, limit.quota().window()) {
                continue;
            }
            tracing::info!(
                target: "keygate",
                principal = subject.key,
                policy = name,
                limit = %limit.quota(),
                "rate limit exceeded (shadow)"
            );
        }
    }

    /// Whether a shadow denial of `key` under policy `name` was logged within the last
    /// `window`; if not, remembers that it is now.
    pub(crate) fn shadow_quiet(&self, key: &str, name: &str, window: Duration) -> bool {
        let now = SystemClock.monotonic_nanos();
        let entry = [key, "\u{0}", name].concat();
        if self.shadow_log.get(&entry).is_some_and(|until| until > now) {
            return true;
        }
        let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self.shadow_log.insert(entry, now.saturating_add(window));
        false
    }
}

/// The rate-limit headers an admitted request's response gets, and its place among the
/// caller's requests in flight (held by the response body until it ends).
pub(crate) struct Headers(
    pub(crate) Option<(Which, Verdict, Arc<Config>)>,
    pub(crate) Option<Permit>,
);

impl crate::future::Then for Headers {
    fn guard(&mut self) -> Option<Permit> {
        self.1.take()
    }

    fn apply<T>(self, response: &mut http::Response<T>) {
        if let Some((which, verdict, config)) = self.0 {
            config
                .policies(&which)
                .write(response.headers_mut(), &verdict, config.style);
        }
    }
}

/// Counts a request admitted by `policies` with `verdict`: through, or through although a
/// shadow limit would have refused it (the concurrency limit first, then the list's).
fn count_admitted(policies: &Policies, verdict: &Verdict, shadow_entry: bool) {
    if shadow_entry {
        crate::metrics::limit_other(OtherPolicy::Concurrency, LimitDecision::ShadowLimited);
    } else if verdict.shadow_denials().next().is_some() {
        policies.counters.count(LimitDecision::ShadowLimited);
    } else {
        policies.counters.count(LimitDecision::Allowed);
    }
}

/// How a request entered the concurrency limit: its place (when the layer limits requests in
/// flight), and whether a shadow limit would have refused it one.
#[derive(Default)]
pub(crate) struct Entry {
    pub(crate) permit: Option<Permit>,
    pub(crate) shadow_denied: bool,
}
