//! Per-caller usage counts: [`UsageTracker`] counts in this process; [`UsageStore`]s
//! ([`MemoryUsage`], and `RedisUsage` with the `redis` feature) sum what every instance flushes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use crate::BoxError;
use crate::clock::{self, Clock, SharedClock};
use crate::outage::{OutageLog, info_recovered, warn_outage};

/// Requests a caller made: how many were let through and how many were limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Requests admitted.
    pub allowed: u64,
    /// Requests turned away with 429.
    pub limited: u64,
}

impl Usage {
    fn is_empty(self) -> bool {
        self.allowed == 0 && self.limited == 0
    }
}

/// Nanoseconds since the Unix epoch, or 0 for a time before it (0 means "no time" below).
fn to_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn from_nanos(nanos: u64) -> Option<SystemTime> {
    (nanos != 0).then(|| UNIX_EPOCH + Duration::from_nanos(nanos))
}

#[derive(Default)]
struct Counts {
    allowed: AtomicU64,
    limited: AtomicU64,
    /// Set only when the counts of a failed flush are put back: how many of `allowed` they
    /// brought, and when that flush was taken (nanoseconds since the Unix epoch, 0 for none).
    /// The next flush then reports that time, not its own, unless the caller was let through
    /// again meanwhile. Requests never touch these.
    restored_allowed: AtomicU64,
    restored_at: AtomicU64,
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
        self.take_at(0).0
    }

    /// Reads and resets, and says when the caller was last let through: `now` (nanoseconds), or
    /// the time of the flush whose counts were put back, if no request was let through since.
    fn take_at(&self, now: u64) -> (Usage, Option<SystemTime>) {
        let usage = Usage {
            allowed: self.allowed.swap(0, Ordering::Relaxed),
            limited: self.limited.swap(0, Ordering::Relaxed),
        };
        let restored = self.restored_allowed.swap(0, Ordering::Relaxed);
        let restored_at = self.restored_at.swap(0, Ordering::Relaxed);
        let last = if usage.allowed == 0 {
            0
        } else if restored_at != 0 && usage.allowed <= restored {
            restored_at
        } else {
            now
        };
        (usage, from_nanos(last))
    }

    /// Adds back the counts of a flush that failed, taken at `at`.
    fn restore(&self, usage: Usage, at: Option<SystemTime>) {
        let before = self.allowed.fetch_add(usage.allowed, Ordering::Relaxed);
        self.limited.fetch_add(usage.limited, Ordering::Relaxed);
        // With requests let through since (`before > 0`, or a request that adds to `allowed`
        // after this), the next flush's own time is the right one; else it is `at`.
        if usage.allowed > 0
            && before == 0
            && let Some(at) = at.map(to_nanos).filter(|&n| n != 0)
        {
            self.restored_allowed
                .store(usage.allowed, Ordering::Relaxed);
            self.restored_at.store(at, Ordering::Relaxed);
        }
    }
}

/// Per-caller counters of allowed and limited requests, kept by a
/// [`RateLimitLayer`](super::RateLimitLayer) given one with
/// [`track_usage`](super::RateLimitLayer::track_usage): who uses the API, and how much.
///
/// It counts what this process saw (with the Redis limiter, each instance counts its own
/// traffic). Its memory is bounded: past `max_callers` distinct callers, new ones are counted
/// together under [`overflow`](Self::overflow) until [`take`](Self::take) (or a flush) starts a
/// new period. Counting a request is one atomic add (plus, for the caller's first request of a
/// period, one map insertion): no clock is read and nothing is allocated per request.
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
///
/// # Shared totals
///
/// To sum usage over every instance, each tracker flushes its counts to a [`UsageStore`] —
/// [`MemoryUsage`] for a single instance, `RedisUsage` (feature `redis`) for many — with
/// [`flush_to`](Self::flush_to), or every few seconds with [`flush_every`](Self::flush_every).
/// A flush takes this period's counts and adds them to the store in one call; if the store
/// fails, they are put back and go with the next flush, so a store outage loses nothing.
/// Callers past `max_callers` are flushed together under [`OVERFLOW_CALLER`](Self::OVERFLOW_CALLER).
#[derive(Clone)]
pub struct UsageTracker {
    inner: Arc<Inner>,
    /// Per handle, so that [`with_clock`](Self::with_clock) never has to copy a shared tracker.
    clock: SharedClock,
}

struct Inner {
    callers: DashMap<Box<str>, Counts>,
    max_callers: usize,
    overflow: Counts,
    /// Held by flushes (never by requests) around taking and restoring `overflow`, which no map
    /// shard lock covers.
    overflow_flush: Mutex<()>,
}

impl UsageTracker {
    /// The caller under which a flush reports the requests of callers past `max_callers` (the
    /// [`overflow`](Self::overflow)), so that a store's totals still count every request. A
    /// real caller of that name would be summed with them; [`MemoryUsage`] uses the same name
    /// for its own overflow.
    pub const OVERFLOW_CALLER: &'static str = "(overflow)";

    /// A tracker for up to `max_callers` distinct callers per period.
    pub fn new(max_callers: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                callers: DashMap::new(),
                max_callers,
                overflow: Counts::default(),
                overflow_flush: Mutex::new(()),
            }),
            clock: clock::system(),
        }
    }

    /// Reads the time of each flush (the callers' `last_used_at`) from `clock` instead of the
    /// system's; for tests. Requests never read it.
    ///
    /// ```
    /// use keygate::clock::ManualClock;
    /// use keygate::ratelimit::UsageTracker;
    ///
    /// let usage = UsageTracker::new(1_000).with_clock(ManualClock::new());
    /// # let _ = usage;
    /// ```
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
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
        {
            let _flush = self.lock_overflow();
            self.inner.overflow.take();
        }
        all.sort_by_key(|(_, u)| std::cmp::Reverse(u.allowed + u.limited));
        all
    }

    fn lock_overflow(&self) -> std::sync::MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic elsewhere while holding it left nothing torn.
        self.inner
            .overflow_flush
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes this period's counts (as [`take`](Self::take) does, atomically per caller: a request
    /// counts in this batch or in the next, never in both or neither) and adds them to `store` in
    /// one [`UsageStore::add`] call. Returns how many callers the batch had; an empty period
    /// makes no call.
    ///
    /// Each caller with admitted requests in the batch gets the time of the flush as its
    /// `last_used_at`, so its precision is the flush interval. Callers past `max_callers` go
    /// under [`OVERFLOW_CALLER`](Self::OVERFLOW_CALLER).
    ///
    /// **Nothing is lost on failure.** If `add` fails, the batch is put back into the tracker,
    /// merged with what was counted meanwhile, within `max_callers` (the rest joins the
    /// overflow), and goes with the next flush; its callers keep this flush's time as their
    /// `last_used_at` unless they were let through again since. A store that added part of a
    /// batch says which entries it did not add with [`PartialAdd`]: only those are put back. The
    /// same holds if the returned future is dropped before the store answers. A flush whose
    /// outcome is unknown (the store applied it but its answer was lost, as on a timeout) is
    /// put back too, so it may be counted twice: delivery is at least once.
    ///
    /// ```no_run
    /// use keygate::ratelimit::{MemoryUsage, UsageStore, UsageTracker};
    ///
    /// # async fn run() -> Result<(), keygate::BoxError> {
    /// let usage = UsageTracker::new(100_000);
    /// let totals = MemoryUsage::new();
    /// usage.record("key_1", true);
    /// assert_eq!(usage.flush_to(&totals).await?, 1);
    /// assert_eq!(totals.totals("key_1").await?.allowed, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush_to(&self, store: &dyn UsageStore) -> Result<usize, BoxError> {
        let batch = self.take_batch();
        if batch.is_empty() {
            return Ok(0);
        }
        let callers = batch.len();
        let mut unsent = PutBack {
            tracker: self,
            batch: batch.clone(),
        };
        match store.add(batch).await {
            Ok(()) => {
                unsent.batch.clear();
                Ok(callers)
            }
            Err(e) => match e.downcast::<PartialAdd>() {
                Ok(partial) => {
                    unsent.batch = partial.rejected.clone();
                    Err(partial)
                }
                Err(e) => Err(e),
            },
        }
    }

    /// The batch of a flush: every caller's counts, and the overflow's, taken now.
    fn take_batch(&self) -> Vec<UsageEntry> {
        let now = to_nanos(self.clock.now());
        let mut batch = Vec::with_capacity(self.inner.callers.len() + 1);
        self.inner.callers.retain(|caller, c| {
            let (usage, last_used_at) = c.take_at(now);
            if !usage.is_empty() {
                batch.push(UsageEntry {
                    caller: caller.to_string(),
                    usage,
                    last_used_at,
                });
            }
            false
        });
        let (usage, last_used_at) = {
            let _flush = self.lock_overflow();
            self.inner.overflow.take_at(now)
        };
        if !usage.is_empty() {
            batch.push(UsageEntry {
                caller: Self::OVERFLOW_CALLER.to_owned(),
                usage,
                last_used_at,
            });
        }
        batch
    }

    /// Adds back the entries of a batch that was not delivered, within `max_callers`: the
    /// busiest first, so that when callers counted meanwhile leave too little room, the quieter
    /// ones are the ones that join the overflow.
    fn put_back(&self, mut batch: Vec<UsageEntry>) {
        batch.sort_by_key(|e| std::cmp::Reverse(e.usage.allowed.saturating_add(e.usage.limited)));
        for entry in batch {
            let UsageEntry {
                caller,
                usage,
                last_used_at,
            } = entry;
            if caller != Self::OVERFLOW_CALLER {
                if let Some(c) = self.inner.callers.get(caller.as_str()) {
                    c.restore(usage, last_used_at);
                    continue;
                }
                if self.inner.callers.len() < self.inner.max_callers {
                    self.inner
                        .callers
                        .entry(caller.into_boxed_str())
                        .or_default()
                        .restore(usage, last_used_at);
                    continue;
                }
            }
            let _flush = self.lock_overflow();
            self.inner.overflow.restore(usage, last_used_at);
        }
    }

    /// Flushes to `store` every `every` (at least 1 ms; the first flush one interval from the
    /// first poll), as [`flush_to`](Self::flush_to) does, until told to stop: returns the handle
    /// that stops it, and the loop, a future for the application to spawn (keygate starts no task
    /// of its own, so it works with any Tokio runtime flavour).
    ///
    /// - [`FlushTask::shutdown`] stops the loop and flushes once more, so that nothing counted
    ///   before it is left behind: call it on graceful shutdown.
    /// - Dropping the [`FlushTask`] does **not** stop the loop (as dropping a Tokio
    ///   `JoinHandle` does not): it keeps flushing, without a final flush at the end.
    /// - The loop ends by itself at its first tick after every other handle of the tracker (the
    ///   layer's included) is dropped, after one last flush; if that one fails, its counts go
    ///   with the tracker.
    ///
    /// A failed flush keeps its counts for the next one (see [`flush_to`](Self::flush_to)); the
    /// first failure of a run of them is logged at WARN (then one summary per 10 s), and the
    /// recovery at INFO. Flushes of one loop never overlap: a store slower than `every` delays
    /// the next tick.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use keygate::ratelimit::{MemoryUsage, UsageTracker};
    ///
    /// # async fn run() -> Result<(), keygate::BoxError> {
    /// let usage = UsageTracker::new(100_000);
    /// let totals = MemoryUsage::new();
    /// let (flush, flushing) = usage.flush_every(totals.clone(), Duration::from_secs(1));
    /// tokio::spawn(flushing);
    /// // … serve, with `RateLimitLayer::track_usage(usage.clone())` …
    /// flush.shutdown().await?; // on graceful shutdown: the last counts too
    /// # Ok(())
    /// # }
    /// ```
    pub fn flush_every(&self, store: impl UsageStore, every: Duration) -> (FlushTask, FlushLoop) {
        let store: Arc<dyn UsageStore> = Arc::new(store);
        let control = Arc::new(Control::default());
        let every = every.max(Duration::from_millis(1));
        let guard = LoopGuard(control.clone());
        let tracker = self.clone();
        let looped = store.clone();
        let run = async move {
            let _guard = guard;
            run_loop(tracker, looped, every, &_guard.0).await;
        };
        let task = FlushTask {
            tracker: Arc::downgrade(&self.inner),
            clock: self.clock.clone(),
            store,
            control,
        };
        (task, FlushLoop { run: Box::pin(run) })
    }
}

/// Puts a taken batch back into the tracker when dropped, unless emptied first.
struct PutBack<'a> {
    tracker: &'a UsageTracker,
    batch: Vec<UsageEntry>,
}

impl Drop for PutBack<'_> {
    fn drop(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        if !batch.is_empty() {
            self.tracker.put_back(batch);
        }
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

// ---------------------------------------------------------------------------------------------
// The flush loop

/// What the [`FlushTask`] and its [`FlushLoop`] share.
#[derive(Default)]
struct Control {
    state: Mutex<ControlState>,
}

#[derive(Default)]
struct ControlState {
    /// Set by [`FlushTask::shutdown`]: the loop starts no flush after it.
    stop: bool,
    /// The loop is in the middle of a flush.
    flushing: bool,
    /// The loop, waiting for its next tick.
    waiting: Option<Waker>,
    /// [`FlushTask::shutdown`], waiting for the flush in progress.
    shutdown: Option<Waker>,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        // Every update below is a single assignment: a panic cannot leave the state torn.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a flush unless stopped; `false` if stopped.
    fn begin(&self) -> bool {
        let mut state = self.lock();
        if state.stop {
            return false;
        }
        state.flushing = true;
        true
    }

    fn end(&self) {
        let waker = {
            let mut state = self.lock();
            state.flushing = false;
            state.shutdown.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn stop(&self) {
        let waker = {
            let mut state = self.lock();
            state.stop = true;
            state.waiting.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Ends the loop's flush in progress when the loop ends or is dropped (a runtime shutting down,
/// an aborted task), so that [`FlushTask::shutdown`] never waits for a loop that is gone.
struct LoopGuard(Arc<Control>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

async fn run_loop(
    tracker: UsageTracker,
    store: Arc<dyn UsageStore>,
    every: Duration,
    control: &Control,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outage = OutageLog::new();
    loop {
        let stopped = std::future::poll_fn(|cx| {
            {
                let mut state = control.lock();
                if state.stop {
                    return Poll::Ready(true);
                }
                state.waiting = Some(cx.waker().clone());
            }
            ticks.poll_tick(cx).map(|_| false)
        })
        .await;
        // The loop's own handle is the last one: nobody can count anything any more.
        let last = Arc::strong_count(&tracker.inner) == 1;
        if stopped || !control.begin() {
            return;
        }
        match tracker.flush_to(&*store).await {
            Ok(_) => info_recovered!(outage, "usage store"),
            Err(e) => warn_outage!(outage, *e, "usage store"),
        }
        control.end();
        if last {
            return;
        }
    }
}

/// The handle of a [`UsageTracker::flush_every`] loop: [`shutdown`](Self::shutdown) stops it
/// and flushes one last time. Dropping it leaves the loop running.
pub struct FlushTask {
    tracker: Weak<Inner>,
    clock: SharedClock,
    store: Arc<dyn UsageStore>,
    control: Arc<Control>,
}

impl FlushTask {
    /// Stops the loop, waits for its flush in progress (if any), then flushes what is left and
    /// returns what that last flush returned. It works whether or not the loop was ever
    /// spawned, and does not wait for the loop's next tick. It waits as long as the store
    /// takes: bound it with `tokio::time::timeout` if the store may hang. If the last flush
    /// fails, its counts stay in the tracker (a later [`UsageTracker::flush_to`] can deliver
    /// them).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use keygate::ratelimit::{MemoryUsage, UsageTracker};
    ///
    /// # async fn run() -> Result<(), keygate::BoxError> {
    /// let usage = UsageTracker::new(1_000);
    /// let (flush, flushing) = usage.flush_every(MemoryUsage::new(), Duration::from_secs(1));
    /// tokio::spawn(flushing);
    /// let flushed = tokio::time::timeout(Duration::from_secs(5), flush.shutdown()).await??;
    /// # let _ = flushed;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(self) -> Result<usize, BoxError> {
        self.control.stop();
        std::future::poll_fn(|cx: &mut Context<'_>| {
            let mut state = self.control.lock();
            if state.flushing {
                state.shutdown = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        let Some(inner) = self.tracker.upgrade() else {
            // Every handle is gone, and the loop made its last flush.
            return Ok(0);
        };
        let tracker = UsageTracker {
            inner,
            clock: self.clock.clone(),
        };
        tracker.flush_to(&*self.store).await
    }
}

impl fmt::Debug for FlushTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.control.lock();
        f.debug_struct("FlushTask")
            .field("stopped", &state.stop)
            .field("flushing", &state.flushing)
            .finish_non_exhaustive()
    }
}

/// The loop of [`UsageTracker::flush_every`]: a future to spawn (`tokio::spawn(flushing)`),
/// which flushes at each tick until its [`FlushTask`] stops it or the tracker is dropped.
#[must_use = "the loop flushes nothing unless it is spawned or awaited"]
pub struct FlushLoop {
    run: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Future for FlushLoop {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.run.as_mut().poll(cx)
    }
}

impl fmt::Debug for FlushLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushLoop").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Stores

/// One caller's counts as a [`UsageStore`] keeps them: summed over every instance that flushed
/// to it, and when the caller last made a request that was let through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageTotals {
    /// Requests admitted, over every instance.
    pub allowed: u64,
    /// Requests turned away with 429, over every instance.
    pub limited: u64,
    /// When an admitted request was last counted, to the precision of the flush interval;
    /// `None` if none was.
    pub last_used_at: Option<SystemTime>,
}

impl UsageTotals {
    /// Totals from their parts (for implementers of [`UsageStore`]).
    pub fn new(allowed: u64, limited: u64, last_used_at: Option<SystemTime>) -> Self {
        Self {
            allowed,
            limited,
            last_used_at,
        }
    }

    /// Adds one batch entry: counts saturate, `last_used_at` only moves forward.
    fn add(&mut self, usage: Usage, last_used_at: Option<SystemTime>) {
        self.allowed = self.allowed.saturating_add(usage.allowed);
        self.limited = self.limited.saturating_add(usage.limited);
        self.last_used_at = self.last_used_at.max(last_used_at);
    }
}

/// One caller's counts in a flushed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageEntry {
    /// The caller (the rate-limit key, usually the principal's id).
    pub caller: String,
    /// What the caller did since the last flush.
    pub usage: Usage,
    /// When the batch was taken, if the caller had admitted requests in it.
    pub last_used_at: Option<SystemTime>,
}

impl UsageEntry {
    /// An entry from its parts (for tests, and for feeding a store from elsewhere).
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use keygate::ratelimit::{Usage, UsageEntry};
    ///
    /// let entry = UsageEntry::new("key_1", Usage { allowed: 3, limited: 0 }, Some(SystemTime::now()));
    /// assert_eq!(entry.caller, "key_1");
    /// ```
    pub fn new(caller: impl Into<String>, usage: Usage, last_used_at: Option<SystemTime>) -> Self {
        Self {
            caller: caller.into(),
            usage,
            last_used_at,
        }
    }
}

/// The future of a [`UsageStore`] call.
pub type UsageFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// Where [`UsageTracker`]s flush their counts, so that usage per caller is the sum over every
/// instance: one call per batch, never one per request.
///
/// An `add` that fails must have added nothing, or else say what it did not add with a
/// [`PartialAdd`]: the tracker puts back what was not added and sends it with its next flush.
pub trait UsageStore: Send + Sync + 'static {
    /// Adds a batch of counts (and moves each caller's `last_used_at` forward, never back).
    fn add(&self, batch: Vec<UsageEntry>) -> UsageFuture<'_, ()>;

    /// The totals of `caller`; zero counts and no `last_used_at` for a caller never seen.
    fn totals(&self, caller: &str) -> UsageFuture<'_, UsageTotals>;
}

impl<T: UsageStore + ?Sized> UsageStore for Arc<T> {
    fn add(&self, batch: Vec<UsageEntry>) -> UsageFuture<'_, ()> {
        (**self).add(batch)
    }

    fn totals(&self, caller: &str) -> UsageFuture<'_, UsageTotals> {
        (**self).totals(caller)
    }
}

/// The error of a [`UsageStore::add`] that added part of a batch but not the rest: the entries
/// it did not add. [`UsageTracker::flush_to`] puts back only those (any other error puts back
/// the whole batch), and returns this error.
///
/// ```
/// use keygate::ratelimit::{PartialAdd, Usage, UsageEntry};
///
/// let left = vec![UsageEntry::new("key_1", Usage { allowed: 1, limited: 0 }, None)];
/// let e = PartialAdd::new(left, "the key holds something else");
/// assert_eq!(e.rejected().len(), 1);
/// assert_eq!(e.to_string(), "the usage store did not add 1 caller(s) of the batch");
/// ```
#[derive(Debug)]
pub struct PartialAdd {
    rejected: Vec<UsageEntry>,
    source: BoxError,
}

impl PartialAdd {
    /// `rejected` were not added, because of `source`.
    pub fn new(rejected: Vec<UsageEntry>, source: impl Into<BoxError>) -> Self {
        Self {
            rejected,
            source: source.into(),
        }
    }

    /// The entries that were not added.
    pub fn rejected(&self) -> &[UsageEntry] {
        &self.rejected
    }
}

impl fmt::Display for PartialAdd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the usage store did not add {} caller(s) of the batch",
            self.rejected.len()
        )
    }
}

impl std::error::Error for PartialAdd {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A [`UsageStore`] in this process's memory: the totals of one instance (or of several
/// trackers in one process), for a single-instance service, a dashboard, or tests. To sum over
/// several instances, use `RedisUsage` (feature `redis`).
///
/// Its memory is bounded: past `max_callers` distinct callers (100 000 with
/// [`new`](Self::new)), new ones are summed under [`UsageTracker::OVERFLOW_CALLER`]. Clones
/// share the same totals.
///
/// ```
/// use keygate::ratelimit::{MemoryUsage, Usage, UsageStore, UsageTracker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), keygate::BoxError> {
/// let usage = UsageTracker::new(1_000);
/// let totals = MemoryUsage::new();
/// usage.record("key_1", true);
/// usage.record("key_1", false);
/// usage.flush_to(&totals).await?;
/// usage.record("key_1", true);
/// usage.flush_to(&totals).await?;
/// let t = totals.get("key_1").unwrap();
/// assert_eq!((t.allowed, t.limited), (2, 1));
/// assert!(t.last_used_at.is_some());
/// assert_eq!(totals.totals("key_1").await?, t);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryUsage {
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    callers: DashMap<Box<str>, UsageTotals>,
    max_callers: usize,
}

impl MemoryUsage {
    /// How many distinct callers [`new`](Self::new) keeps totals for.
    pub const DEFAULT_MAX_CALLERS: usize = 100_000;

    /// Totals for up to [`DEFAULT_MAX_CALLERS`](Self::DEFAULT_MAX_CALLERS) distinct callers
    /// (plus the overflow).
    pub fn new() -> Self {
        Self::with_max_callers(Self::DEFAULT_MAX_CALLERS)
    }

    /// Totals for up to `max_callers` distinct callers (plus the overflow).
    ///
    /// ```
    /// let totals = keygate::ratelimit::MemoryUsage::with_max_callers(1_000);
    /// # let _ = totals;
    /// ```
    pub fn with_max_callers(max_callers: usize) -> Self {
        Self {
            inner: Arc::new(MemoryInner {
                callers: DashMap::new(),
                max_callers,
            }),
        }
    }

    /// `caller`'s totals, if it was ever flushed here.
    pub fn get(&self, caller: &str) -> Option<UsageTotals> {
        self.inner.callers.get(caller).map(|t| *t)
    }

    /// Every caller's totals, busiest first.
    pub fn snapshot(&self) -> Vec<(String, UsageTotals)> {
        let mut all: Vec<_> = self
            .inner
            .callers
            .iter()
            .map(|e| (e.key().to_string(), *e.value()))
            .collect();
        all.sort_by_key(|(_, t)| std::cmp::Reverse(t.allowed.saturating_add(t.limited)));
        all
    }

    fn add_now(&self, batch: Vec<UsageEntry>) {
        let callers = &self.inner.callers;
        for entry in batch {
            if let Some(mut t) = callers.get_mut(entry.caller.as_str()) {
                t.add(entry.usage, entry.last_used_at);
                continue;
            }
            let caller = if callers.len() < self.inner.max_callers {
                entry.caller.into_boxed_str()
            } else {
                UsageTracker::OVERFLOW_CALLER.into()
            };
            callers
                .entry(caller)
                .or_default()
                .add(entry.usage, entry.last_used_at);
        }
    }
}

impl Default for MemoryUsage {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageStore for MemoryUsage {
    fn add(&self, batch: Vec<UsageEntry>) -> UsageFuture<'_, ()> {
        self.add_now(batch);
        Box::pin(std::future::ready(Ok(())))
    }

    fn totals(&self, caller: &str) -> UsageFuture<'_, UsageTotals> {
        let totals = self.get(caller).unwrap_or_default();
        Box::pin(std::future::ready(Ok(totals)))
    }
}

impl fmt::Debug for MemoryUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryUsage")
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

    /// A store that fails while told to, and otherwise adds to a `MemoryUsage`; it counts its
    /// calls. With `reject`, it adds everything but that caller and says so.
    #[derive(Default)]
    struct Flaky {
        down: std::sync::atomic::AtomicBool,
        reject: Mutex<Option<String>>,
        /// Requests that come in while a batch is in flight: admitted ones of this caller.
        during: Mutex<Option<(UsageTracker, &'static str, u64)>>,
        calls: AtomicU64,
        totals: std::sync::OnceLock<MemoryUsage>,
    }

    impl Flaky {
        fn memory(&self) -> &MemoryUsage {
            self.totals.get_or_init(MemoryUsage::new)
        }

        fn get(&self, caller: &str) -> UsageTotals {
            self.memory().get(caller).unwrap_or_default()
        }
    }

    impl UsageStore for Flaky {
        fn add(&self, mut batch: Vec<UsageEntry>) -> UsageFuture<'_, ()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some((tracker, caller, n)) = self.during.lock().unwrap().take() {
                for _ in 0..n {
                    tracker.record(caller, true);
                }
            }
            if self.down.load(Ordering::SeqCst) {
                return Box::pin(std::future::ready(Err("store down".into())));
            }
            let reject = self.reject.lock().unwrap().clone();
            let rejected: Vec<_> = batch
                .iter()
                .filter(|e| Some(&e.caller) == reject.as_ref())
                .cloned()
                .collect();
            batch.retain(|e| Some(&e.caller) != reject.as_ref());
            self.memory().add_now(batch);
            let answer = if rejected.is_empty() {
                Ok(())
            } else {
                Err(Box::new(PartialAdd::new(rejected, "not that one")) as BoxError)
            };
            Box::pin(std::future::ready(answer))
        }

        fn totals(&self, caller: &str) -> UsageFuture<'_, UsageTotals> {
            self.memory().totals(caller)
        }
    }

    fn usage(allowed: u64, limited: u64) -> Usage {
        Usage { allowed, limited }
    }

    #[tokio::test]
    async fn a_failed_flush_is_put_back_merged_and_delivered_once() {
        let clock = crate::clock::ManualClock::new();
        let t1 = clock.now();
        let u = UsageTracker::new(2).with_clock(clock.clone());
        let store = Flaky::default();
        u.record("a", true);
        u.record("a", false);
        u.record("b", false);
        store.down.store(true, Ordering::SeqCst);
        assert!(u.flush_to(&store).await.is_err());
        assert_eq!(u.get("a"), Some(usage(1, 1)));
        assert_eq!(u.get("b"), Some(usage(0, 1)));
        // Meanwhile: more of `a`; then, while the next batch is out, a newcomer that takes the
        // slot `b` would need back.
        u.record("a", false);
        clock.advance(Duration::from_secs(5));
        assert!(u.flush_to(&store).await.is_err());
        clock.advance(Duration::from_secs(5));
        *store.during.lock().unwrap() = Some((u.clone(), "c", 2));
        assert!(u.flush_to(&store).await.is_err());
        clock.advance(Duration::from_secs(5));
        let t4 = clock.now();
        // `a` and `c` hold the two slots now; `b` went to the overflow.
        assert_eq!(u.get("a"), Some(usage(1, 2)));
        assert_eq!(u.get("c"), Some(usage(2, 0)));
        assert_eq!(u.get("b"), None);
        assert_eq!(u.overflow(), usage(0, 1));

        store.down.store(false, Ordering::SeqCst);
        assert_eq!(u.flush_to(&store).await.unwrap(), 3);
        let a = store.get("a");
        assert_eq!((a.allowed, a.limited), (1, 2));
        // Let through only before the first failed flush: that flush's time, not the last's.
        assert_eq!(a.last_used_at, Some(t1));
        let c = store.get("c");
        assert_eq!((c.allowed, c.limited, c.last_used_at), (2, 0, Some(t4)));
        let o = store.get(UsageTracker::OVERFLOW_CALLER);
        assert_eq!((o.allowed, o.limited, o.last_used_at), (0, 1, None));
        assert_eq!(store.calls.load(Ordering::SeqCst), 4);
        // Delivered once: nothing left, and no call for an empty period.
        assert_eq!(u.flush_to(&store).await.unwrap(), 0);
        assert_eq!(store.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_caller_let_through_again_after_a_failure_gets_the_later_time() {
        let clock = crate::clock::ManualClock::new();
        let u = UsageTracker::new(10).with_clock(clock.clone());
        let store = Flaky::default();
        u.record("a", true);
        store.down.store(true, Ordering::SeqCst);
        assert!(u.flush_to(&store).await.is_err());
        u.record("a", true);
        store.down.store(false, Ordering::SeqCst);
        clock.advance(Duration::from_secs(7));
        u.flush_to(&store).await.unwrap();
        let a = store.get("a");
        assert_eq!((a.allowed, a.last_used_at), (2, Some(clock.now())));
    }

    #[tokio::test]
    async fn a_partial_add_puts_back_only_what_was_not_added() {
        let u = UsageTracker::new(10);
        let store = Flaky::default();
        *store.reject.lock().unwrap() = Some("bad".to_owned());
        u.record("good", true);
        u.record("bad", true);
        u.record("bad", false);
        let e = u.flush_to(&store).await.unwrap_err();
        assert!(e.downcast_ref::<PartialAdd>().is_some(), "{e}");
        assert_eq!(store.get("good").allowed, 1);
        assert_eq!(u.get("good"), None);
        assert_eq!(u.get("bad"), Some(usage(1, 1)));
        *store.reject.lock().unwrap() = None;
        assert_eq!(u.flush_to(&store).await.unwrap(), 1);
        assert_eq!(store.get("good").allowed, 1);
        let bad = store.get("bad");
        assert_eq!((bad.allowed, bad.limited), (1, 1));
    }

    #[tokio::test]
    async fn a_flush_dropped_before_the_store_answers_loses_nothing() {
        struct Never;
        impl UsageStore for Never {
            fn add(&self, _: Vec<UsageEntry>) -> UsageFuture<'_, ()> {
                Box::pin(std::future::pending())
            }
            fn totals(&self, _: &str) -> UsageFuture<'_, UsageTotals> {
                Box::pin(std::future::pending())
            }
        }
        let u = UsageTracker::new(10);
        u.record("a", true);
        let flush = tokio::time::timeout(Duration::from_millis(10), u.flush_to(&Never)).await;
        assert!(flush.is_err());
        assert_eq!(u.get("a"), Some(usage(1, 0)));
    }

    #[tokio::test]
    async fn memory_usage_is_bounded_with_an_overflow() {
        let totals = MemoryUsage::with_max_callers(1);
        let at = SystemTime::now();
        let earlier = at - Duration::from_secs(60);
        totals.add_now(vec![
            UsageEntry::new("a", usage(1, 0), Some(at)),
            UsageEntry::new("b", usage(2, 1), Some(earlier)),
            UsageEntry::new("c", usage(0, 4), None),
        ]);
        totals.add_now(vec![UsageEntry::new("a", usage(1, 1), Some(earlier))]);
        assert_eq!(totals.get("a"), Some(UsageTotals::new(2, 1, Some(at))));
        assert_eq!(totals.get("b"), None);
        assert_eq!(
            totals.totals(UsageTracker::OVERFLOW_CALLER).await.unwrap(),
            UsageTotals::new(2, 5, Some(earlier))
        );
        assert_eq!(totals.snapshot()[0].0, UsageTracker::OVERFLOW_CALLER);
        assert_eq!(totals.totals("z").await.unwrap(), UsageTotals::default());
    }
}
