use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::client_addr::Networks;
use crate::limits::Limits;

/// A set of scopes (permissions) such as `weather:read`.
///
/// Kept sorted, so membership is a binary search and two sets built in different orders are
/// equal.
///
/// ```
/// use keygate::key::Scopes;
///
/// let scopes: Scopes = ["weather:write", "weather:read"].into_iter().collect();
/// assert!(scopes.contains("weather:read"));
/// assert!(!scopes.contains("admin"));
/// assert_eq!(Scopes::from_space_separated("b a a").iter().collect::<Vec<_>>(), ["a", "b"]);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Scopes(Vec<Box<str>>);

impl Scopes {
    /// No scopes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a space-separated list (the OAuth `scope` claim's form).
    pub fn from_space_separated(s: &str) -> Self {
        s.split(' ').filter(|s| !s.is_empty()).collect()
    }

    /// Whether `scope` is in the set.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|s| (**s).cmp(scope)).is_ok()
    }

    /// The scopes, in sorted order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }

    /// How many scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<S: Into<Box<str>>> FromIterator<S> for Scopes {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut v: Vec<Box<str>> = iter.into_iter().map(Into::into).collect();
        v.sort_unstable();
        v.dedup();
        Self(v)
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for Scopes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// Whether a key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KeyStatus {
    /// The key works (until its expiry, if it has one).
    #[default]
    Active,
    /// The key was revoked for good.
    Revoked,
    /// The key is switched off for now (an unpaid bill, an investigation) and may be switched
    /// back on.
    Disabled,
}

/// A key's budget of uses: `remaining`, less each admitted request's cost, never below zero;
/// optionally set back to a refill amount on a schedule.
///
/// A store that keeps credits decrements them atomically, so every instance of a service
/// shares one count ([`CreditStore`](crate::store::CreditStore)).
///
/// ```
/// use std::time::Duration;
/// use keygate::key::{Credits, Refill};
///
/// let monthly = Credits::new(1000).with_refill(Refill::new(1000, Duration::from_secs(30 * 86_400)));
/// assert_eq!(monthly.remaining, 1000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Credits {
    /// Uses left.
    pub remaining: u64,
    /// How the count is refilled, if it is.
    pub refill: Option<Refill>,
}

impl Credits {
    /// `remaining` uses, never refilled.
    pub fn new(remaining: u64) -> Self {
        Self {
            remaining,
            refill: None,
        }
    }

    /// Refilled by `refill`.
    #[must_use]
    pub fn with_refill(mut self, refill: Refill) -> Self {
        self.refill = Some(refill);
        self
    }
}

/// A credit refill: every `every` (counted from when the credits were set or last refilled),
/// the remaining count is set back to `amount` (not added to: unused credits do not pile up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Refill {
    /// The count after a refill.
    pub amount: u64,
    /// The time between refills (at least one second).
    pub every: Duration,
}

impl Refill {
    /// Back to `amount` every `every` (at least one second).
    pub fn new(amount: u64, every: Duration) -> Self {
        Self {
            amount,
            every: every.max(Duration::from_secs(1)),
        }
    }
}

/// What a store knows about a key: everything but the key itself.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use keygate::{key::KeyRecord, Quota};
///
/// let record = KeyRecord::new("key_1", "acme")
///     .with_scopes(["weather:read"])
///     .with_quota(Quota::per_minute(100))
///     .with_expiry(SystemTime::now() + Duration::from_secs(86_400))
///     .with_metadata("plan", "pro");
/// assert!(record.is_usable_at(SystemTime::now()));
/// assert!(record.scopes.contains("weather:read"));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// A stable, non-secret id for the key: what logs, metrics and rate limits use.
    pub id: String,
    /// Who the key belongs to (a user, a team, a customer account).
    pub owner: String,
    /// What the key may do.
    pub scopes: Scopes,
    /// The key's own limits, overriding the rate-limit layer's default and tiers.
    pub quota: Option<Limits>,
    /// The key's rate-limit tier, mapped to limits by the rate-limit layer
    /// ([`RateLimitLayer::tier`](crate::ratelimit::RateLimitLayer::tier)); the key's own
    /// `quota` wins over it.
    pub tier: Option<String>,
    /// The key's remaining uses, if it has a budget of them (see [`Credits`]). In a record a
    /// store returns, the count as of the read; the count itself lives in the store.
    pub credits: Option<Credits>,
    /// The networks the key may be used from (see [`Networks`]); `None`: from anywhere. A key
    /// used from any other address, or from one that is not known, is refused with 403 (see
    /// [IP allowlists](crate::store#ip-allowlists)). An empty list allows no address.
    pub allowed_ips: Option<Networks>,
    /// When the key stops working.
    pub expires_at: Option<SystemTime>,
    /// Whether the key may be used at all.
    pub status: KeyStatus,
    /// Free-form data a service keeps with the key (plan, contact, labels).
    pub metadata: BTreeMap<String, String>,
    /// When the record was created: set by the store that keeps it, when not given.
    pub created_at: Option<SystemTime>,
}

impl KeyRecord {
    /// An active key with no scopes, quota, expiry or metadata.
    pub fn new(id: impl Into<String>, owner: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            owner: owner.into(),
            scopes: Scopes::new(),
            quota: None,
            tier: None,
            credits: None,
            allowed_ips: None,
            expires_at: None,
            status: KeyStatus::Active,
            metadata: BTreeMap::new(),
            created_at: None,
        }
    }

    /// Sets the scopes.
    #[must_use]
    pub fn with_scopes<S: Into<Box<str>>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().collect();
        self
    }

    /// Sets the key's own limits: one [`Quota`](crate::Quota), or a list of [`Limits`].
    #[must_use]
    pub fn with_quota(mut self, quota: impl Into<Limits>) -> Self {
        self.quota = Some(quota.into());
        self
    }

    /// Sets the key's rate-limit tier.
    #[must_use]
    pub fn with_tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// Gives the key a budget of uses.
    #[must_use]
    pub fn with_credits(mut self, credits: Credits) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Lets the key be used only from these networks.
    ///
    /// ```
    /// use keygate::key::KeyRecord;
    ///
    /// let record = KeyRecord::new("key_1", "acme")
    ///     .with_allowed_ips("203.0.113.0/24, 2001:db8::/32".parse()?);
    /// assert!(record.allowed_ips.unwrap().contains("203.0.113.9".parse()?));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_allowed_ips(mut self, networks: Networks) -> Self {
        self.allowed_ips = Some(networks);
        self
    }

    /// Sets when the key expires.
    #[must_use]
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets the status.
    #[must_use]
    pub fn with_status(mut self, status: KeyStatus) -> Self {
        self.status = status;
        self
    }

    /// Sets when the record was created (for records brought from another system).
    #[must_use]
    pub fn with_created_at(mut self, at: SystemTime) -> Self {
        self.created_at = Some(at);
        self
    }

    /// Adds one metadata entry.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Whether the key is active and not expired at `now`.
    pub fn is_usable_at(&self, now: SystemTime) -> bool {
        self.status == KeyStatus::Active && self.expires_at.is_none_or(|at| now < at)
    }
}
