//! The generic cell rate algorithm, on plain integers, shared by every backend.
//!
//! A key's whole state is its *theoretical arrival time* (TAT): when its bucket would be empty
//! again. A request costing `c` moves the TAT forward by `c × T` (T = window / limit) and is
//! admitted if the TAT then lies no further than `burst × T` ahead of now. A TAT in the past is
//! the same as no state at all, which is why idle entries can simply be forgotten.

use std::time::Duration;

use super::Quota;

/// The outcome of one decision, with what the response headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// Requests of cost 1 that could be made right after this one.
    pub remaining: u32,
    /// Time until the bucket is full again (the quota "resets").
    pub reset_after: Duration,
    /// When denied: time until this request would be admitted. Zero when admitted.
    pub retry_after: Duration,
}

/// One decision. `tat` is the stored TAT (0 when none), `now` the time, both in nanoseconds on
/// one clock. Returns the decision and, when admitted, the new TAT to store.
pub(crate) fn decide(tat: u64, now: u64, quota: &Quota, cost: u32) -> (Decision, Option<u64>) {
    let t = quota.emission_interval_nanos();
    let tau = t.saturating_mul(u64::from(quota.burst()));
    let tat = tat.max(now);
    let new_tat = tat.saturating_add(t.saturating_mul(u64::from(cost)));
    let ahead = new_tat - now;
    if ahead <= tau {
        let decision = Decision {
            allowed: true,
            remaining: u32::try_from((tau - ahead) / t).unwrap_or(u32::MAX),
            reset_after: Duration::from_nanos(ahead),
            retry_after: Duration::ZERO,
        };
        (decision, Some(new_tat))
    } else {
        let used = tat - now;
        let decision = Decision {
            allowed: false,
            remaining: u32::try_from(tau.saturating_sub(used) / t).unwrap_or(u32::MAX),
            reset_after: Duration::from_nanos(used),
            retry_after: Duration::from_nanos(ahead - tau),
        };
        (decision, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let q = Quota::per_second(10).with_burst(3);
        let t = 100_000_000; // 100 ms
        let mut tat = 0;
        let now = 5_000_000_000;
        for expect_remaining in [2, 1, 0] {
            let (d, new) = decide(tat, now, &q, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, expect_remaining);
            tat = new.unwrap();
        }
        let (d, new) = decide(tat, now, &q, 1);
        assert!(!d.allowed);
        assert_eq!(new, None);
        assert_eq!(d.retry_after, Duration::from_nanos(t));
        assert_eq!(d.reset_after, Duration::from_nanos(3 * t));
        // One emission interval later, exactly one more fits.
        let (d, new) = decide(tat, now + t, &q, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        tat = new.unwrap();
        assert!(!decide(tat, now + t, &q, 1).0.allowed);
    }

    #[test]
    fn cost_counts_as_several() {
        let q = Quota::per_second(10);
        let (d, tat) = decide(0, 1_000, &q, 7);
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        let (d, _) = decide(tat.unwrap(), 1_000, &q, 4);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 3);
        // A cost above the burst never fits.
        assert!(!decide(0, 1_000, &q, 11).0.allowed);
    }

    #[test]
    fn past_tat_is_no_state() {
        let q = Quota::per_minute(5);
        assert_eq!(decide(10, 1_000_000, &q, 1), decide(0, 1_000_000, &q, 1));
    }
}
