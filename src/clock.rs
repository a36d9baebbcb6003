//! Time, as keygate reads it: a trait so that tests (yours and ours) can move it by hand.
//!
//! ```
//! use std::time::Duration;
//! use keygate::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new();
//! let before = clock.now();
//! clock.advance(Duration::from_secs(90));
//! assert_eq!(clock.now().duration_since(before).unwrap(), Duration::from_secs(90));
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time, for expiry dates that outlive the process.
    fn now(&self) -> SystemTime;

    /// Nanoseconds on a clock that never goes backwards, for rate limits.
    fn monotonic_nanos(&self) -> u64;

    /// Whole seconds since the Unix epoch by the wall clock: what a token's `exp` and `nbf`
    /// are checked against, on every request that carries one. By default [`now`](Self::now)
    /// in seconds.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use keygate::clock::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::at(UNIX_EPOCH + Duration::from_millis(90_500));
    /// assert_eq!(clock.unix_secs(), 90);
    /// ```
    fn unix_secs(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// The time-stamp counter (where the CPU has a reliable one; else the OS's monotonic clock),
/// read through `quanta`: about 10 ns instead of about 25 for `Instant::now`, and it is read on
/// every rate-limit decision.
fn counter() -> &'static (quanta::Clock, u64) {
    static COUNTER: std::sync::OnceLock<(quanta::Clock, u64)> = std::sync::OnceLock::new();
    COUNTER.get_or_init(|| {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        (clock, start)
    })
}

/// How far the wall clock was ahead of [`counter`] when it was last read, in nanoseconds.
static WALL_OFFSET: AtomicU64 = AtomicU64::new(0);
/// The counter's reading, in nanoseconds, from which on the wall clock is read again.
static WALL_REREAD_AT: AtomicU64 = AtomicU64::new(0);
/// How long the wall clock is followed by the counter alone: a step of the system clock (a
/// correction, a change by hand) shows within this time.
const WALL_REREAD_EVERY: u64 = 1_000_000_000;

/// Nanoseconds since the Unix epoch by the wall clock, read from the counter and the system
/// clock's offset from it, which is refreshed once a second: reading the system clock costs
/// 25 to 50 ns (more on some virtual machines), the counter about 10. Between refreshes the
/// counter keeps the time; it drifts from the system clock by parts per million.
fn wall_nanos() -> u64 {
    let counted = SystemClock.monotonic_nanos();
    // Acquire pairs with the Release below: an offset at least as new as the deadline read.
    if counted < WALL_REREAD_AT.load(Ordering::Acquire) {
        return WALL_OFFSET.load(Ordering::Relaxed).wrapping_add(counted);
    }
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    WALL_OFFSET.store(wall.wrapping_sub(counted), Ordering::Relaxed);
    WALL_REREAD_AT.store(counted.saturating_add(WALL_REREAD_EVERY), Ordering::Release);
    wall
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic_nanos(&self) -> u64 {
        let (clock, start) = counter();
        clock.delta_as_nanos(*start, clock.raw())
    }

    /// The system clock in seconds, followed by the time-stamp counter between readings once
    /// a second (see [`Clock::unix_secs`]).
    fn unix_secs(&self) -> u64 {
        wall_nanos() / 1_000_000_000
    }
}

/// A clock that moves only when told to. Clones share one time.
#[derive(Clone)]
pub struct ManualClock {
    /// Nanoseconds since the Unix epoch.
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock set to the current wall-clock time.
    pub fn new() -> Self {
        Self::at(SystemTime::now())
    }

    /// A clock set to `at` (which must not be before 1970).
    pub fn at(at: SystemTime) -> Self {
        let nanos = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            nanos: Arc::new(AtomicU64::new(nanos)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn monotonic_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}

/// A shared clock.
pub(crate) type SharedClock = Arc<dyn Clock>;

pub(crate) fn system() -> SharedClock {
    // The counter calibrates itself once a process (about half a millisecond): when a layer,
    // store or verifier is built rather than on its first request.
    counter();
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn the_system_clock_in_seconds_follows_the_wall_clock() {
        for _ in 0..1_000 {
            let before = system_secs();
            let secs = SystemClock.unix_secs();
            let after = system_secs();
            // Within a second of the wall clock read around it (the counter keeps the time
            // between readings of the wall clock).
            assert!(
                before.saturating_sub(1) <= secs && secs <= after + 1,
                "{before} <= {secs} <= {after}"
            );
        }
    }

    #[test]
    fn the_system_clock_in_seconds_agrees_across_threads() {
        let now = system_secs();
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..10_000).map(|_| SystemClock.unix_secs()).max()))
            .collect();
        for thread in threads {
            let secs = thread.join().expect("no panic").expect("some readings");
            assert!(secs.abs_diff(now) <= 2, "{secs} against {now}");
        }
    }

    #[test]
    fn a_manual_clock_in_seconds_is_its_time() {
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_millis(1_999));
        assert_eq!(clock.unix_secs(), 1);
        clock.advance(Duration::from_millis(1));
        assert_eq!(clock.unix_secs(), 2);
    }
}
