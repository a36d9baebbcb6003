#![doc = include_str!("../../docs/rate-limits.md")]

mod concurrency;
mod config;
mod fixed;
mod future;
mod gcra;
mod headers;
mod layer;
mod memory;
mod overrides;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod usage;
#[cfg(feature = "redis")]
mod usage_redis;
mod verdict;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{FailurePolicy, RedisLimiter};
pub use concurrency::{ConcurrencyLimiter, Permit};
pub use future::ResponseFuture;
pub use gcra::Decision;
pub use headers::HeaderStyle;
pub use layer::{ANONYMOUS_KEY, PolicyStatus, RateLimitLayer};
pub use memory::{MemoryLimiter, MemoryLimiterBuilder};
pub use overrides::{LimitKey, Overrides};
pub use service::RateLimit;
pub use usage::{
    FlushLoop, FlushTask, MemoryUsage, PartialAdd, Usage, UsageEntry, UsageFuture, UsageStore,
    UsageTotals, UsageTracker,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use usage_redis::RedisUsage;
pub use verdict::{Subject, Verdict};

use std::sync::Arc;

use crate::{BoxError, LimitBy, Limits, MaybeReady, Quota};

/// The answer of a [`RateLimiter`] for one limit: ready at once for in-memory limiters, to be
/// waited for with remote ones.
pub type Check = MaybeReady<Result<Decision, RateLimitError>>;

/// The answer of a [`RateLimiter`] for a list of limits.
pub type CheckAll = MaybeReady<Result<Verdict, RateLimitError>>;

/// A rate-limit backend: decides whether a caller may spend `cost` units of its limits now,
/// and spends them if so.
///
/// Implement it to bring your own backend; [`MemoryLimiter`] and the Redis limiter (feature
/// `redis`) are the built-in ones. The returned futures must not borrow from `self`.
///
/// [`RateLimitLayer`] calls [`check_all`](Self::check_all). A backend that implements only
/// [`check`](Self::check) serves lists of one rate counted per caller; lists of several
/// limits, fixed-window caps, owner-wide limits and [`peek`](Self::peek) need the backend's own
/// `check_all` and `peek`, which must decide a list atomically: a request denied by one
/// enforced limit spends nothing from any limit.
pub trait RateLimiter: Send + Sync + 'static {
    /// Decides one rate (a GCRA quota) for `key`, and on admission records the spend.
    fn check(&self, key: &str, quota: &Quota, cost: u32) -> Check;

    /// Decides every limit of `limits` for `subject` at once. The request is admitted when
    /// every limit not in shadow admits it; then each limit that admits is spent `cost`, and
    /// otherwise none is.
    fn check_all(&self, subject: Subject<'_>, limits: &Limits, cost: u32) -> CheckAll {
        let [limit] = limits.as_slice() else {
            return CheckAll::ready(Err(RateLimitError::Unsupported("lists of several limits")));
        };
        if limit.quota().is_fixed() {
            return CheckAll::ready(Err(RateLimitError::Unsupported("fixed-window caps")));
        }
        if limit.by() == LimitBy::Owner && subject.owner.is_some() {
            return CheckAll::ready(Err(RateLimitError::Unsupported("owner-wide limits")));
        }
        let mut check = self.check(subject.key, limit.quota(), cost);
        if let Some(answer) = check.take_ready() {
            return CheckAll::ready(answer.map(|d| Verdict::new(limits, [d])));
        }
        let limits = limits.clone();
        CheckAll::pending(async move { check.await.map(|d| Verdict::new(&limits, [d])) })
    }

    /// What a request of cost 1 would get from each limit of `limits` now, spending nothing.
    fn peek(&self, subject: Subject<'_>, limits: &Limits) -> CheckAll {
        let _ = (subject, limits);
        CheckAll::ready(Err(RateLimitError::Unsupported("peek")))
    }
}

macro_rules! forward_rate_limiter {
    ($($ty:ty),*) => {$(
        impl<T: RateLimiter + ?Sized> RateLimiter for $ty {
            fn check(&self, key: &str, quota: &Quota, cost: u32) -> Check {
                (**self).check(key, quota, cost)
            }

            fn check_all(&self, subject: Subject<'_>, limits: &Limits, cost: u32) -> CheckAll {
                (**self).check_all(subject, limits, cost)
            }

            fn peek(&self, subject: Subject<'_>, limits: &Limits) -> CheckAll {
                (**self).peek(subject, limits)
            }
        }
    )*};
}

forward_rate_limiter!(Arc<T>, Box<T>);

/// A limiter could not decide. Requests fail with 503 (gRPC `UNAVAILABLE`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The in-memory limiter tracks as many keys as it may and none is idle.
    #[error("the rate limiter tracks as many keys as it may")]
    Full,
    /// The backend failed.
    #[error("the rate limiter's backend failed")]
    Backend(#[source] BoxError),
    /// The backend did not answer in time.
    #[error("the rate limiter's backend did not answer in time")]
    Timeout,
    /// The backend cannot decide this kind of limit (a custom backend that implements only
    /// [`RateLimiter::check`]).
    #[error("the rate limiter does not support {0}")]
    Unsupported(&'static str),
}
