use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// Requests a caller made: how many were let through and how many were limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Requests admitted.
    pub allowed: u64,
    /// Requests turned away with 429.
    pub limited: u64,
}

#[derive(Default)]
struct Counts {
    allowed: AtomicU64,
    limited: AtomicU64,
}

impl Counts {
    fn add(&self, allowed: bool) {
        let c = if allowed {
            &self.allowed
        } else {
            &self.limited
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> Usage {
        Usage {
            allowed: self.allowed.load(Ordering::Relaxed),
            limited: self.limited.load(Ordering::Relaxed),
        }
    }

    fn take(&self) -> Usage {
        Usage {
            allowed: self.allowed.swap(0, Ordering::Relaxed),
            limited: self.limited.swap(0, Ordering::Relaxed),
        }
    }
}

/// Per-caller counters of allowed and limited requests, kept by a
/// [`RateLimitLayer`](super::RateLimitLayer) given one with
/// [`track_usage`](super::RateLimitLayer::track_usage): who uses the API, and how much.
///
/// It counts what this process saw (with the Redis limiter, each instance counts its own
/// traffic). Its memory is bounded: past `max_callers` distinct callers, new ones are counted
/// together under [`overflow`](Self::overflow) until [`take`](Self::take) starts a new period.
///
/// ```
/// use keygate::ratelimit::{Usage, UsageTracker};
///
/// let usage = UsageTracker::new(10_000);
/// usage.record("key_1", true);
/// usage.record("key_1", false);
/// assert_eq!(usage.get("key_1"), Some(Usage { allowed: 1, limited: 1 }));
/// let period = usage.take(); // read and reset, e.g. once a minute for a dashboard
/// assert_eq!(period.len(), 1);
/// assert_eq!(usage.get("key_1"), None);
/// ```
#[derive(Clone)]
pub struct UsageTracker {
    inner: Arc<Inner>,
}

struct Inner {
    callers: DashMap<Box<str>, Counts>,
    max_callers: usize,
    overflow: Counts,
}

impl UsageTracker {
    /// A tracker for up to `max_callers` distinct callers per period.
    pub fn new(max_callers: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                callers: DashMap::new(),
                max_callers,
                overflow: Counts::default(),
            }),
        }
    }

    /// Counts one request of `caller`.
    pub fn record(&self, caller: &str, allowed: bool) {
        if let Some(c) = self.inner.callers.get(caller) {
            c.add(allowed);
            return;
        }
        if self.inner.callers.len() >= self.inner.max_callers {
            self.inner.overflow.add(allowed);
            return;
        }
        self.inner
            .callers
            .entry(caller.into())
            .or_default()
            .add(allowed);
    }

    /// `caller`'s counts in this period.
    pub fn get(&self, caller: &str) -> Option<Usage> {
        self.inner.callers.get(caller).map(|c| c.read())
    }

    /// Requests of callers past the `max_callers` limit, counted together.
    pub fn overflow(&self) -> Usage {
        self.inner.overflow.read()
    }

    /// Every caller's counts in this period, busiest first.
    pub fn snapshot(&self) -> Vec<(String, Usage)> {
        let mut all: Vec<_> = self
            .inner
            .callers
            .iter()
            .map(|e| (e.key().to_string(), e.value().read()))
            .collect();
        all.sort_by_key(|(_, u)| std::cmp::Reverse(u.allowed + u.limited));
        all
    }

    /// Every caller's counts, busiest first, and starts a new period.
    pub fn take(&self) -> Vec<(String, Usage)> {
        let mut all = Vec::with_capacity(self.inner.callers.len());
        self.inner.callers.retain(|k, c| {
            all.push((k.to_string(), c.take()));
            false
        });
        self.inner.overflow.take();
        all.sort_by_key(|(_, u)| std::cmp::Reverse(u.allowed + u.limited));
        all
    }
}

impl fmt::Debug for UsageTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageTracker")
            .field("callers", &self.inner.callers.len())
            .field("max_callers", &self.inner.max_callers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_overflow() {
        let u = UsageTracker::new(2);
        u.record("a", true);
        u.record("b", true);
        u.record("c", false);
        u.record("a", true);
        assert_eq!(
            u.get("a"),
            Some(Usage {
                allowed: 2,
                limited: 0
            })
        );
        assert_eq!(u.get("c"), None);
        assert_eq!(
            u.overflow(),
            Usage {
                allowed: 0,
                limited: 1
            }
        );
        assert_eq!(u.snapshot()[0].0, "a");
        assert_eq!(u.take().len(), 2);
        assert_eq!(u.overflow(), Usage::default());
        u.record("c", true);
        assert_eq!(
            u.get("c"),
            Some(Usage {
                allowed: 1,
                limited: 0
            })
        );
    }
}
