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
    // At most 2^62 (a `Quota` invariant), so `now + ahead` below cannot overflow in practice.
    let tau = t.saturating_mul(u64::from(quota.burst()));
    let used = tat.max(now) - now;
    // In 128 bits: a cost far above the burst must be denied, never wrapped or saturated into
    // something that fits.
    let ahead = u128::from(used) + u128::from(t) * u128::from(cost);
    match u64::try_from(ahead) {
        Ok(ahead) if ahead <= tau => {
            let decision = Decision {
                allowed: true,
                remaining: u32::try_from((tau - ahead) / t).unwrap_or(u32::MAX),
                reset_after: Duration::from_nanos(ahead),
                retry_after: Duration::ZERO,
            };
            (decision, Some(now.saturating_add(ahead)))
        }
        _ => {
            let decision = Decision {
                allowed: false,
                remaining: u32::try_from(tau.saturating_sub(used) / t).unwrap_or(u32::MAX),
                reset_after: Duration::from_nanos(used),
                retry_after: nanos(ahead - u128::from(tau)),
            };
            (decision, None)
        }
    }
}

/// A duration of `n` nanoseconds, however many.
fn nanos(n: u128) -> Duration {
    const PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(n / PER_SEC).unwrap_or(u64::MAX);
    Duration::new(secs, (n % PER_SEC) as u32)
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
    fn costs_beyond_the_burst_are_denied_exactly_even_for_the_longest_quotas() {
        // The shrunk input of a property test: before the burst cap and the 128-bit sum, the
        // tolerance saturated at 2^64 − 1 and this request (cost above the burst) was admitted.
        let q = Quota::new(3, Duration::from_secs(365 * 86_400))
            .unwrap()
            .with_burst(46_964);
        let t = q.emission_interval_nanos();
        assert!(q.burst() < 46_964, "the burst is capped");
        assert!(u128::from(t) * u128::from(q.burst()) <= 1 << 62);
        let (d, tat) = decide(0, 147_925_622, &q, 46_965);
        assert!(!d.allowed);
        assert_eq!(tat, None);
        let tau = u128::from(t) * u128::from(q.burst());
        let expected = u128::from(t) * 46_965 - tau;
        assert_eq!(d.retry_after.as_nanos(), expected);
        // A cost whose c × T passes 2^64 ns: denied, with the exact wait.
        let q = Quota::new(49, Duration::from_nanos(4_194_239_765_297_647)).unwrap();
        let (d, _) = decide(0, 0, &q, 7_033_400);
        assert!(!d.allowed);
        let t = u128::from(q.emission_interval_nanos());
        assert_eq!(d.retry_after.as_nanos(), t * 7_033_400 - t * 49);
    }

    #[test]
    fn past_tat_is_no_state() {
        let q = Quota::per_minute(5);
        assert_eq!(decide(10, 1_000_000, &q, 1), decide(0, 1_000_000, &q, 1));
    }
}
