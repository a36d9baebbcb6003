//! [`CreditStore`]: a key's budget of uses, spent atomically in the store that keeps the key.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ManageError, StoreError};
use crate::MaybeReady;
use crate::key::{Credits, Refill};

/// The largest count of credits (remaining, or a refill's amount) a store keeps:
/// 2<sup>53</sup> − 1, which every store (and every JSON reader) holds exactly.
pub const MAX_CREDITS: u64 = (1 << 53) - 1;

/// The longest time between two refills a store keeps: 100 years (of 365 days).
pub const MAX_REFILL_EVERY: Duration = Duration::from_secs(100 * 365 * 86_400);

/// What [`CreditStore::spend`] answers.
pub type CreditCheck = MaybeReady<Result<CreditOutcome, StoreError>>;

/// What a spend of credits came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreditOutcome {
    /// The cost was spent; this many credits remain.
    Spent {
        /// Credits left after this spend.
        remaining: u64,
    },
    /// Fewer credits remain than the cost: nothing was spent.
    Exhausted {
        /// How long until the next refill, when one is scheduled whose amount covers the cost;
        /// `None` when waiting does not help.
        refill_in: Option<Duration>,
    },
    /// The key has no budget of credits (or there is no such key): it is not limited by
    /// credits.
    NoBudget,
}

impl CreditOutcome {
    /// Whether the request may go on: the cost was spent, or the key has no budget.
    pub fn admitted(&self) -> bool {
        !matches!(self, Self::Exhausted { .. })
    }
}

/// Where a key's credits are counted: the store that keeps the key, shared by every instance
/// of a service that uses the store.
///
/// [`MemoryStore`](super::MemoryStore), `PostgresStore` (feature `postgres`), `RedisStore`
/// (feature `redis`) and [`CachedStore`](super::CachedStore) over any of them implement it; a
/// cache never caches counts, it asks its backend on every call.
///
/// The rules every implementation keeps:
///
/// - **Atomic, never below zero.** A spend of `cost` succeeds if at least `cost` credits remain
///   and then takes exactly `cost` away; otherwise it spends nothing and answers
///   [`CreditOutcome::Exhausted`]. Concurrent spends on any number of instances admit exactly
///   as many requests as the credits pay for. A cost of 0 spends nothing and succeeds.
/// - **Refills are applied when the count is read or spent.** With a [`Refill`] of `amount`
///   `every`, once `every` has passed since the credits were set or last refilled, the count is
///   set back to `amount` (unused credits do not pile up), and the refill time moves on by whole
///   multiples of `every`, so that the schedule keeps its beat however rarely the key is used.
///   Time is the store's: the database's or Redis's clock, the [`Clock`](crate::clock::Clock)
///   of a `MemoryStore`.
/// - **The budget is the record's.** [`KeyRecord::credits`](crate::key::KeyRecord::credits)
///   set on [`issue`](super::KeyManager::issue) or [`insert`](super::KeyManager::insert), or by
///   [`KeyUpdate::credits`](super::KeyUpdate::credits), sets the count and starts the refill
///   schedule then; other updates leave the count alone. [`get`](super::KeyManager::get) and
///   [`list`](super::KeyManager::list) show the live count; a record from
///   [`KeyStore::lookup`](super::KeyStore::lookup) may show an older one (a cache's, or a
///   `MemoryStore`'s as of the last change of the record), so read the count with
///   [`credits`](Self::credits).
/// - **An outage is an error** ([`StoreError`]), which a rate limiter answers with 503, never
///   with "no budget".
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use keygate::key::{Credits, KeyRecord};
/// use keygate::store::{CreditOutcome, CreditStore, MemoryStore};
///
/// let store = MemoryStore::new();
/// store.issue(KeyRecord::new("key_1", "acme").with_credits(Credits::new(3)))?;
///
/// assert_eq!(store.spend("key_1", 2).await?, CreditOutcome::Spent { remaining: 1 });
/// // Two more than remain: refused, and nothing is spent.
/// assert_eq!(store.spend("key_1", 2).await?, CreditOutcome::Exhausted { refill_in: None });
/// assert_eq!(store.credits("key_1").await?, Some(Credits::new(1)));
/// // A key without a budget is not limited by credits.
/// assert_eq!(store.spend("no_such_key", 1).await?, CreditOutcome::NoBudget);
/// # Ok(()) }
/// ```
pub trait CreditStore: Send + Sync + 'static {
    /// Spends `cost` credits of the key with id `id`, atomically, never below zero.
    fn spend(&self, id: &str, cost: u32) -> CreditCheck;

    /// The key's credits now (a refill that came due applied), or `None` when it has no budget
    /// (or there is no such key).
    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>>;
}

impl<T: CreditStore + ?Sized> CreditStore for Arc<T> {
    fn spend(&self, id: &str, cost: u32) -> CreditCheck {
        (**self).spend(id, cost)
    }

    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>> {
        (**self).credits(id)
    }
}

impl<T: CreditStore + ?Sized> CreditStore for Box<T> {
    fn spend(&self, id: &str, cost: u32) -> CreditCheck {
        (**self).spend(id, cost)
    }

    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>> {
        (**self).credits(id)
    }
}

/// Checks what every store requires of a budget: counts of at most [`MAX_CREDITS`], and a
/// refill interval of 1 s to [`MAX_REFILL_EVERY`], in whole microseconds (what every store
/// keeps exactly). [`ManageError::Invalid`] otherwise.
///
/// ```
/// use std::time::Duration;
/// use keygate::key::{Credits, Refill};
/// use keygate::store::{MAX_CREDITS, check_credits};
///
/// let daily = Credits::new(100).with_refill(Refill::new(100, Duration::from_secs(86_400)));
/// assert!(check_credits(&daily).is_ok());
/// assert!(check_credits(&Credits::new(MAX_CREDITS + 1)).is_err());
/// ```
pub fn check_credits(credits: &Credits) -> Result<(), ManageError> {
    if credits.remaining > MAX_CREDITS {
        return Err(ManageError::invalid(format!(
            "the remaining credits are more than {MAX_CREDITS}"
        )));
    }
    if let Some(refill) = credits.refill {
        if refill.amount > MAX_CREDITS {
            return Err(ManageError::invalid(format!(
                "the refill amount is more than {MAX_CREDITS}"
            )));
        }
        if refill.every < Duration::from_secs(1) || refill.every > MAX_REFILL_EVERY {
            return Err(ManageError::invalid(
                "the refill interval is between 1 second and 100 years",
            ));
        }
        if !refill.every.subsec_nanos().is_multiple_of(1000) {
            return Err(ManageError::invalid(
                "the refill interval is a whole number of microseconds",
            ));
        }
    }
    Ok(())
}

/// A budget as a store keeps it: the count, the schedule, and when the count was last set or
/// refilled. Times are microseconds since the Unix epoch, on the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ledger {
    pub(crate) remaining: u64,
    pub(crate) refill: Option<Refill>,
    pub(crate) refilled_at: i64,
}

impl Ledger {
    /// `credits`, set at `now`.
    pub(crate) fn new(credits: Credits, now: i64) -> Self {
        Self {
            remaining: credits.remaining,
            refill: credits.refill,
            refilled_at: now,
        }
    }

    /// The ledger at `now`: the refill that came due, if any, applied.
    pub(crate) fn at(self, now: i64) -> Self {
        let Some(refill) = self.refill else {
            return self;
        };
        let every = every_micros(refill.every);
        let elapsed = now.saturating_sub(self.refilled_at);
        if elapsed < every {
            return self;
        }
        Self {
            remaining: refill.amount,
            refill: self.refill,
            refilled_at: self.refilled_at.saturating_add(elapsed / every * every),
        }
    }

    /// The credits as a record shows them.
    pub(crate) fn credits(&self) -> Credits {
        Credits {
            remaining: self.remaining,
            refill: self.refill,
        }
    }

    /// Spends `cost` at `now`, or nothing when too few credits remain.
    pub(crate) fn spend(&mut self, cost: u32, now: i64) -> CreditOutcome {
        *self = self.at(now);
        match self.remaining.checked_sub(u64::from(cost)) {
            Some(remaining) => {
                self.remaining = remaining;
                CreditOutcome::Spent { remaining }
            }
            None => CreditOutcome::Exhausted {
                refill_in: self.refill_in(cost, now),
            },
        }
    }

    /// How long from `now` until the next refill, when one is scheduled that covers `cost`
    /// (with the refill that came due by `now` applied).
    fn refill_in(&self, cost: u32, now: i64) -> Option<Duration> {
        let refill = self.refill.filter(|r| r.amount >= u64::from(cost))?;
        let next = self.refilled_at.saturating_add(every_micros(refill.every));
        let wait = u64::try_from(next.saturating_sub(now)).unwrap_or(0).max(1);
        Some(Duration::from_micros(wait))
    }
}

/// A refill interval in microseconds: at least 1, at most what an `i64` holds.
pub(crate) fn every_micros(every: Duration) -> i64 {
    i64::try_from(every.as_micros()).unwrap_or(i64::MAX).max(1)
}

/// `at` in microseconds since the Unix epoch (negative before it), held in an `i64`.
pub(crate) fn micros_since_epoch(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// The refill of a store's columns or fields: an amount and an interval in microseconds, both
/// there or both missing. `Err` for half a schedule or a value out of range.
#[cfg(any(feature = "postgres", feature = "redis", test))]
pub(crate) fn refill_of(amount: Option<i64>, every_us: Option<i64>) -> Result<Option<Refill>, ()> {
    match (amount, every_us) {
        (None, None) => Ok(None),
        (Some(amount), Some(every)) => {
            let amount = u64::try_from(amount).map_err(drop)?;
            let every = u64::try_from(every).ok().filter(|&us| us > 0).ok_or(())?;
            Ok(Some(Refill {
                amount,
                every: Duration::from_micros(every),
            }))
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn ledger(remaining: u64, refill: Option<(u64, u64)>, at: i64) -> Ledger {
        let mut credits = Credits::new(remaining);
        if let Some((amount, secs)) = refill {
            credits = credits.with_refill(Refill::new(amount, Duration::from_secs(secs)));
        }
        Ledger::new(credits, at)
    }

    #[test]
    fn spends_exactly_down_to_zero_and_never_below() {
        let mut l = ledger(3, None, 0);
        assert_eq!(l.spend(2, 0), CreditOutcome::Spent { remaining: 1 });
        assert_eq!(l.spend(2, 0), CreditOutcome::Exhausted { refill_in: None });
        assert_eq!(l.remaining, 1, "a refused spend spends nothing");
        assert_eq!(l.spend(1, 0), CreditOutcome::Spent { remaining: 0 });
        assert_eq!(l.spend(0, 0), CreditOutcome::Spent { remaining: 0 });
        assert_eq!(l.spend(1, 0), CreditOutcome::Exhausted { refill_in: None });
        assert_eq!(
            ledger(5, None, 0).spend(u32::MAX, 0),
            CreditOutcome::Exhausted { refill_in: None }
        );
    }

    #[test]
    fn refills_set_the_count_back_on_the_schedule() {
        let mut l = ledger(2, Some((5, 10)), 100 * S);
        assert_eq!(l.spend(2, 101 * S), CreditOutcome::Spent { remaining: 0 });
        assert_eq!(
            l.spend(1, 104 * S),
            CreditOutcome::Exhausted {
                refill_in: Some(Duration::from_secs(6))
            }
        );
        // Due at 110 s: back to 5 (not 5 more), and the next refill is due at 120 s.
        assert_eq!(l.spend(1, 110 * S), CreditOutcome::Spent { remaining: 4 });
        assert_eq!(l.refilled_at, 110 * S);
        // Long unused: the schedule keeps its beat (whole multiples of the interval).
        assert_eq!(l.at(157 * S).refilled_at, 150 * S);
        assert_eq!(l.at(157 * S).remaining, 5);
        assert_eq!(l.at(119 * S), l, "not due yet");
        // A refill that cannot cover the cost does not tell anyone to wait for it.
        let mut small = ledger(0, Some((1, 10)), 0);
        assert_eq!(
            small.spend(2, S),
            CreditOutcome::Exhausted { refill_in: None }
        );
        assert_eq!(
            small.spend(1, S),
            CreditOutcome::Exhausted {
                refill_in: Some(Duration::from_secs(9))
            }
        );
    }

    #[test]
    fn budgets_are_checked() {
        let every = |d: Duration| Credits::new(1).with_refill(Refill::new(1, d));
        assert!(check_credits(&Credits::new(MAX_CREDITS)).is_ok());
        assert!(check_credits(&Credits::new(MAX_CREDITS + 1)).is_err());
        assert!(check_credits(&every(Duration::from_secs(1))).is_ok());
        assert!(check_credits(&every(MAX_REFILL_EVERY)).is_ok());
        assert!(check_credits(&every(MAX_REFILL_EVERY + Duration::from_secs(1))).is_err());
        assert!(check_credits(&every(Duration::from_micros(1_500_001))).is_ok());
        assert!(check_credits(&every(Duration::from_nanos(1_500_000_001))).is_err());
        let mut zero = Refill::new(1, Duration::from_secs(1));
        zero.every = Duration::ZERO;
        assert!(check_credits(&Credits::new(1).with_refill(zero)).is_err());
        let mut big = Refill::new(1, Duration::from_secs(1));
        big.amount = MAX_CREDITS + 1;
        assert!(check_credits(&Credits::new(1).with_refill(big)).is_err());
    }

    #[test]
    fn refills_from_columns() {
        assert_eq!(refill_of(None, None), Ok(None));
        assert_eq!(
            refill_of(Some(5), Some(2 * S)),
            Ok(Some(Refill::new(5, Duration::from_secs(2))))
        );
        assert!(refill_of(Some(5), None).is_err());
        assert!(refill_of(Some(-1), Some(S)).is_err());
        assert!(refill_of(Some(1), Some(0)).is_err());
    }
}
