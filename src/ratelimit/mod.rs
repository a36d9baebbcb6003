#![doc = include_str!("../../docs/rate-limits.md")]

mod config;
mod future;
mod gcra;
mod headers;
mod layer;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod usage;
#[cfg(feature = "redis")]
mod usage_redis;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{FailurePolicy, RedisLimiter};
pub use future::ResponseFuture;
pub use gcra::Decision;
pub use headers::HeaderStyle;
pub use layer::{ANONYMOUS_KEY, RateLimitLayer};
pub use memory::{MemoryLimiter, MemoryLimiterBuilder};
pub use service::RateLimit;
pub use usage::{
    FlushLoop, FlushTask, MemoryUsage, PartialAdd, Usage, UsageEntry, UsageFuture, UsageStore,
    UsageTotals, UsageTracker,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use usage_redis::RedisUsage;

use std::sync::Arc;

use crate::{BoxError, MaybeReady, Quota};

/// The answer of a [`RateLimiter`]: ready at once for in-memory limiters, to be waited for with
/// remote ones.
pub type Check = MaybeReady<Result<Decision, RateLimitError>>;

/// A rate-limit backend: decides whether `key` may spend `cost` units of `quota` now, and
/// spends them if so.
///
/// Implement it to bring your own backend; [`MemoryLimiter`] and the Redis limiter (feature
/// `redis`) are the built-in ones. The returned [`Check`] must not borrow from `self`.
pub trait RateLimiter: Send + Sync + 'static {
    /// Decides, and on admission records the spend.
    fn check(&self, key: &str, quota: &Quota, cost: u32) -> Check;
}

impl<T: RateLimiter + ?Sized> RateLimiter for Arc<T> {
    fn check(&self, key: &str, quota: &Quota, cost: u32) -> Check {
        (**self).check(key, quota, cost)
    }
}

impl<T: RateLimiter + ?Sized> RateLimiter for Box<T> {
    fn check(&self, key: &str, quota: &Quota, cost: u32) -> Check {
        (**self).check(key, quota, cost)
    }
}

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
}
