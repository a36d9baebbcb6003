//! [`Overrides`]: limits per caller, changed while the service runs; [`LimitKey`]: what a
//! `key_by` function picks.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::Limits;

/// Limits for particular callers (principal ids: a key's id, a token's subject), set and
/// removed while the service runs. An override wins over a key's own quota, its tier and the
/// layer's default. Clones share one map.
///
/// For API keys, a key's own quota ([`KeyManager::update`](crate::store::KeyManager::update))
/// is the lasting way; overrides serve JWT subjects, which have no record to change, and
/// short-lived exceptions.
///
/// ```
/// use keygate::ratelimit::{MemoryLimiter, Overrides, RateLimitLayer};
/// use keygate::Quota;
///
/// let overrides = Overrides::new();
/// let layer = RateLimitLayer::new(MemoryLimiter::new(), Quota::per_minute(60))
///     .overrides(overrides.clone());
/// overrides.set("user-42", "600/min, 100000/d;fixed".parse::<keygate::Limits>()?);
/// assert_eq!(overrides.get("user-42").unwrap().len(), 2);
/// overrides.remove("user-42");
/// assert!(overrides.get("user-42").is_none());
/// # let _ = layer;
/// # Ok::<(), keygate::QuotaError>(())
/// ```
#[derive(Clone, Default)]
pub struct Overrides {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    map: DashMap<Box<str>, Limits>,
    /// Entries in the map, read without locking so that a layer with no overrides set pays
    /// one atomic load.
    len: AtomicUsize,
}

impl Overrides {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits `id` by `limits` from its next request on.
    pub fn set(&self, id: &str, limits: impl Into<Limits>) {
        if self.inner.map.insert(id.into(), limits.into()).is_none() {
            self.inner.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes `id`'s override; returns whether it had one.
    pub fn remove(&self, id: &str) -> bool {
        let removed = self.inner.map.remove(id).is_some();
        if removed {
            self.inner.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// `id`'s override.
    pub fn get(&self, id: &str) -> Option<Limits> {
        if self.inner.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.inner.map.get(id).map(|l| l.clone())
    }

    /// How many callers have an override.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// What a [`RateLimitLayer::key_by`](super::RateLimitLayer::key_by) function picks: the key to
/// limit by and, optionally, the limits for it (else the layer's default applies).
///
/// A `String` or `&str` converts into a key with the default limits.
///
/// ```
/// use keygate::ratelimit::LimitKey;
/// use keygate::Quota;
///
/// let by_ip = LimitKey::from("203.0.113.7");
/// let partner = LimitKey::new("tenant:partner").with_quota(Quota::per_second(100));
/// assert_eq!(partner.key(), "tenant:partner");
/// # let _ = by_ip;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey {
    key: String,
    quota: Option<Limits>,
}

impl LimitKey {
    /// Limit by `key`, with the layer's default limits.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            quota: None,
        }
    }

    /// With these limits instead of the default.
    #[must_use]
    pub fn with_quota(mut self, quota: impl Into<Limits>) -> Self {
        self.quota = Some(quota.into());
        self
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The limits picked, if any.
    pub fn quota(&self) -> Option<&Limits> {
        self.quota.as_ref()
    }

    pub(crate) fn into_parts(self) -> (String, Option<Limits>) {
        (self.key, self.quota)
    }
}

impl From<String> for LimitKey {
    fn from(key: String) -> Self {
        Self::new(key)
    }
}

impl From<&str> for LimitKey {
    fn from(key: &str) -> Self {
        Self::new(key)
    }
}
