//! Per-caller rate limiting: [`Quota`], the [`RateLimiter`] trait, the in-memory GCRA
//! [`MemoryLimiter`], and [`RateLimitLayer`].
//!
//! The layer sits after [`AuthLayer`](crate::AuthLayer) and limits each caller by its
//! [`Principal`](crate::Principal)'s id — the key record's id, or the token's subject, never a
//! secret. A token minted for an API key carries the key's id as its subject, so it shares the
//! key's limit instead of escaping it.
//!
//! ```
//! use axum::{Router, routing::get};
//! use keygate::{AuthLayer, Quota, ratelimit::{MemoryLimiter, RateLimitLayer}, store::MemoryStore};
//! use tower::ServiceBuilder;
//!
//! let app: Router = Router::new()
//!     .route("/v1/current.json", get(|| async { "sunny" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(AuthLayer::new(MemoryStore::new()))   // outer: who is calling
//!             .layer(RateLimitLayer::new(MemoryLimiter::new(), Quota::per_second(10))),
//!     );
//! # let _ = app;
//! ```
//!
//! Which quota applies, first match wins: the key record's own quota
//! ([`KeyRecord::quota`](crate::key::KeyRecord)), the quota of the principal's tier
//! ([`RateLimitLayer::tier`]), the layer's default.

mod gcra;
mod headers;
mod layer;
mod memory;
mod quota;
#[cfg(feature = "redis")]
mod redis;
mod usage;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{DEFAULT_REDIS_PREFIX, DEFAULT_REDIS_TIMEOUT, FailurePolicy, RedisLimiter};
pub use gcra::Decision;
pub use headers::HeaderStyle;
pub use layer::{ANONYMOUS_KEY, RateLimit, RateLimitLayer, ResponseFuture};
pub use memory::{DEFAULT_MAX_KEYS, MemoryLimiter};
pub use quota::{Quota, QuotaError};
pub use usage::{Usage, UsageTracker};

use std::sync::Arc;

use crate::BoxError;
use crate::maybe::MaybeReady;

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
