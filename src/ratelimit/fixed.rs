//! Fixed-window caps on plain integers, shared by every backend.
//!
//! A cap of `limit` per `window` counts what is spent in each window of the Unix time line:
//! window number `id = floor(unix_time / window)` runs from `id × window` to `(id + 1) × window`,
//! so windows are aligned to UTC (a day runs from midnight to midnight, an hour from the full
//! hour). A key's whole state is the window it last spent in and the units spent there
//! ([`Window`]); a state of an earlier window than the current one is the same as none, which
//! is why a state can be forgotten once its window has ended.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Decision, Quota};

/// What a fixed-window cap has spent: in which window, and how much. The default (window 0,
/// nothing spent) is the same as no state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Window {
    /// The window's number: Unix time divided by the window's length.
    pub(crate) id: u64,
    /// Units spent in that window.
    pub(crate) count: u64,
}

/// Nanoseconds since the Unix epoch of a wall-clock time (0 before 1970, saturating in 2554).
pub(crate) fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The length of the quota's window in nanoseconds (at least 1; a fixed window is a whole
/// number of seconds of at most a year, so it always fits).
#[inline]
pub(crate) fn window_nanos(quota: &Quota) -> u64 {
    let window = quota.window();
    // At most a year: the product cannot overflow.
    window
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(window.subsec_nanos()))
        .max(1)
}

/// The number of the window `now_unix_nanos` falls in, and the nanoseconds left until it ends
/// (from 1 to the window's length).
pub(crate) fn window_at(now_unix_nanos: u64, window_nanos: u64) -> (u64, u64) {
    let window_nanos = window_nanos.max(1);
    let id = now_unix_nanos / window_nanos;
    (id, window_nanos - now_unix_nanos % window_nanos)
}

/// Whether `state` holds nothing at `now_unix_nanos`: nothing was spent, or its window has
/// ended.
pub(crate) fn is_idle(state: Window, now_unix_nanos: u64, window_nanos: u64) -> bool {
    state.count == 0 || state.id < window_at(now_unix_nanos, window_nanos).0
}

/// One decision. `state` is the stored state (`Window::default()` when none), `now_unix_nanos`
/// the wall-clock time in nanoseconds since the Unix epoch. A request is admitted when what its
/// window has spent plus `cost` stays within the limit. Returns the decision and, when admitted,
/// the state to store.
///
/// `remaining` is what the window has left after this request (before it, when denied);
/// `reset_after` and, when denied, `retry_after` are the time to the window's end.
///
/// A state of a *later* window than `now_unix_nanos` is the one counted in: a decision that
/// read the time just before a boundary, and got the state just after another decision spent
/// in the next window, counts in that next window, so no window ever admits more than its
/// limit. (A wall clock set back keeps counting in the window it had reached, until that window
/// ends.)
pub(crate) fn decide(
    state: Window,
    now_unix_nanos: u64,
    quota: &Quota,
    cost: u32,
) -> (Decision, Option<Window>) {
    let window = window_nanos(quota);
    let (now_id, to_end) = window_at(now_unix_nanos, window);
    // An earlier window's count is spent nothing in this one.
    let (id, count, to_end) = if state.id > now_id {
        let end = (u128::from(state.id) + 1) * u128::from(window);
        let to_end = u64::try_from(end - u128::from(now_unix_nanos)).unwrap_or(u64::MAX);
        (state.id, state.count, to_end)
    } else if state.id == now_id {
        (now_id, state.count, to_end)
    } else {
        (now_id, 0, to_end)
    };
    let limit = u64::from(quota.limit());
    let reset = Duration::from_nanos(to_end);
    let after = count.saturating_add(u64::from(cost));
    if after <= limit {
        let decision = Decision {
            allowed: true,
            remaining: u32::try_from(limit - after).unwrap_or(u32::MAX),
            reset_after: reset,
            retry_after: Duration::ZERO,
        };
        (decision, Some(Window { id, count: after }))
    } else {
        let decision = Decision {
            allowed: false,
            remaining: u32::try_from(limit.saturating_sub(count)).unwrap_or(u32::MAX),
            reset_after: reset,
            retry_after: reset,
        };
        (decision, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    /// 2024-03-10T00:00:00Z.
    const MIDNIGHT: u64 = 1_710_028_800 * SEC;

    fn cap(text: &str) -> Quota {
        text.parse().unwrap()
    }

    #[test]
    fn admits_exactly_the_limit_per_window_then_resets_at_the_boundary() {
        let q = cap("3/min;fixed");
        let start = MIDNIGHT + 10 * SEC;
        let mut state = Window::default();
        for remaining in [2, 1, 0] {
            let (d, new) = decide(state, start, &q, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
            assert_eq!(d.reset_after, Duration::from_secs(50));
            assert_eq!(d.retry_after, Duration::ZERO);
            state = new.unwrap();
        }
        assert_eq!(state.count, 3);
        // Denied until the minute is over, whatever the time within it.
        for at in [start, start + 49 * SEC, MIDNIGHT + 60 * SEC - 1] {
            let (d, new) = decide(state, at, &q, 1);
            assert!(!d.allowed);
            assert_eq!(new, None);
            assert_eq!(d.remaining, 0);
            assert_eq!(d.retry_after, d.reset_after);
            assert_eq!(
                d.retry_after,
                Duration::from_nanos(MIDNIGHT + 60 * SEC - at)
            );
        }
        // At the boundary the next window starts empty.
        let (d, new) = decide(state, MIDNIGHT + 60 * SEC, &q, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset_after, Duration::from_secs(60));
        assert_eq!(new.unwrap().id, state.id + 1);
        assert_eq!(new.unwrap().count, 1);
    }

    #[test]
    fn days_run_from_midnight_to_midnight_utc() {
        let q = cap("10000/d;fixed");
        let (d, new) = decide(Window::default(), MIDNIGHT - SEC, &q, 1);
        assert!(d.allowed);
        assert_eq!(d.reset_after, Duration::from_secs(1));
        let before = new.unwrap();
        let (d, after) = decide(before, MIDNIGHT, &q, 1);
        assert_eq!(d.remaining, 9999, "a new day spends nothing of the last");
        assert_eq!(d.reset_after, Duration::from_secs(86_400));
        assert_eq!(after.unwrap().id, before.id + 1);
        assert_eq!(
            window_at(MIDNIGHT, window_nanos(&q)),
            (MIDNIGHT / (86_400 * SEC), 86_400 * SEC)
        );
    }

    #[test]
    fn costs_count_as_several_and_never_exceed_the_limit() {
        let q = cap("10/h;fixed");
        let (d, state) = decide(Window::default(), MIDNIGHT, &q, 7);
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        let state = state.unwrap();
        let (d, new) = decide(state, MIDNIGHT, &q, 4);
        assert!(!d.allowed);
        assert_eq!(new, None);
        assert_eq!(d.remaining, 3, "a denial spends nothing");
        let (d, new) = decide(state, MIDNIGHT, &q, 3);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(new.unwrap().count, 10);
        // A cost above the limit never fits, not even in a fresh window.
        assert!(!decide(Window::default(), MIDNIGHT, &q, 11).0.allowed);
        assert!(!decide(Window::default(), MIDNIGHT, &q, u32::MAX).0.allowed);
        // Cost 0 is admitted and spends nothing.
        let (d, new) = decide(new.unwrap(), MIDNIGHT, &q, 0);
        assert!(d.allowed);
        assert_eq!(new.unwrap().count, 10);
    }

    #[test]
    fn a_state_of_another_window_is_no_state() {
        let q = cap("5/s;fixed");
        let stale = Window {
            id: MIDNIGHT / SEC - 1,
            count: 5,
        };
        assert_eq!(
            decide(stale, MIDNIGHT, &q, 1),
            decide(Window::default(), MIDNIGHT, &q, 1)
        );
        assert!(is_idle(stale, MIDNIGHT, window_nanos(&q)));
        let current = Window {
            id: MIDNIGHT / SEC,
            count: 1,
        };
        // A later window's state (another decision read a later time) is counted in.
        let later = Window {
            id: MIDNIGHT / SEC + 1,
            count: 5,
        };
        let (d, new) = decide(later, MIDNIGHT + SEC - 1, &q, 1);
        assert!(!d.allowed, "that window is spent");
        assert_eq!(d.retry_after, Duration::from_nanos(SEC + 1));
        assert_eq!(new, None);
        let (d, new) = decide(Window { count: 4, ..later }, MIDNIGHT + SEC - 1, &q, 1);
        assert!(d.allowed);
        assert_eq!(new, Some(Window { count: 5, ..later }));
        assert!(!is_idle(later, MIDNIGHT, window_nanos(&q)));
        assert!(!is_idle(current, MIDNIGHT + SEC - 1, window_nanos(&q)));
        assert!(is_idle(current, MIDNIGHT + SEC, window_nanos(&q)));
        assert!(is_idle(
            Window {
                count: 0,
                ..current
            },
            MIDNIGHT,
            window_nanos(&q)
        ));
        // A count beyond the limit (a state written by another party) denies, never wraps.
        let over = Window {
            id: MIDNIGHT / SEC,
            count: u64::MAX,
        };
        let (d, new) = decide(over, MIDNIGHT, &q, 1);
        assert!(!d.allowed);
        assert_eq!((d.remaining, new), (0, None));
    }

    #[test]
    fn wall_clock_times_in_nanoseconds() {
        assert_eq!(
            unix_nanos(UNIX_EPOCH + Duration::from_nanos(MIDNIGHT)),
            MIDNIGHT
        );
        assert_eq!(unix_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
