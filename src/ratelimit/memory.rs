use std::collections::VecDeque;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use hashbrown::HashTable;

use super::gcra::{self, Decision};
use super::{Check, Quota, RateLimitError, RateLimiter};
use crate::clock::{self, Clock, SharedClock};

/// The default limit on tracked keys of a [`MemoryLimiter`].
const DEFAULT_MAX_KEYS: usize = 4_000_000;

/// The in-memory GCRA limiter: one atomic timestamp per key.
///
/// Keys live in a sharded hash table. A decision for a known key takes its shard's *read* lock
/// and updates the key's timestamp with a compare-and-swap, so requests for different keys — and
/// for the same key — never wait for one another behind a global lock. Only the first request of
/// a new key takes a shard's write lock.
///
/// **Memory stays bounded, and so does the work of every decision.** An entry whose theoretical
/// arrival time has passed holds no information (it is the same as no entry), so it can be
/// dropped at any time. Each shard keeps its keys in a ring, oldest first; every new key looks
/// at the two oldest entries of its shard and drops those that went idle (a live one goes to
/// the back of the ring). So the table holds about twice the keys active within one burst
/// window, and no decision ever walks the table: the cost of forgetting is a constant per new
/// key, not a pause now and then. The limiter also never holds more than `max_keys` entries
/// (default 4,000,000): a new key that arrives at that limit looks at up to 16 more of its
/// shard's oldest entries and, when none of them is idle, fails with [`RateLimitError::Full`]
/// (503) rather than go unlimited or evict a live limit. A flood of new keys at capacity thus
/// costs each request a few microseconds, never a sweep of millions of entries.
///
/// ```
/// use keygate::ratelimit::{MemoryLimiter, RateLimiter};
/// use keygate::Quota;
///
/// let limiter = MemoryLimiter::new();
/// let quota = Quota::per_second(2);
/// let check = |l: &MemoryLimiter| l.check("key_1", &quota, 1).take_ready().unwrap().unwrap();
/// assert!(check(&limiter).allowed);
/// assert!(check(&limiter).allowed);
/// assert!(!check(&limiter).allowed);
/// ```
#[derive(Clone)]
pub struct MemoryLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[RwLock<Shard>]>,
    shift: u32,
    hasher: foldhash::fast::RandomState,
    clock: SharedClock,
    len: AtomicUsize,
    max_keys: usize,
}

struct Shard {
    table: HashTable<Entry>,
    /// The hashes of the shard's entries, oldest first: the order in which idle entries are
    /// looked for. May hold hashes of entries already gone (dropped when reached).
    ring: VecDeque<u64>,
}

struct Entry {
    key: StoredKey,
    hash: u64,
    tat: AtomicU64,
}

impl Shard {
    /// The ring anew from the table: every entry once, in the table's order.
    fn rebuild_ring(&mut self) {
        self.ring.clear();
        self.ring.extend(self.table.iter().map(|e| e.hash));
    }
}

/// Entries of its shard each new key looks at, so the table stays near its live size.
const STEPS_PER_INSERT: usize = 2;
/// Further entries a new key looks at when the limiter is at `max_keys`.
const STEPS_AT_CAPACITY: usize = 16;

const INLINE_KEY: usize = 22;

/// A key kept in the entry itself when short (most principal ids are), so that a lookup reads
/// one cache line instead of following a pointer, and a new key costs no allocation.
enum StoredKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<str>),
}

impl StoredKey {
    fn new(key: &str) -> Self {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0u8; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key.as_bytes());
            Self::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Self::Heap(key.into())
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(s) => s.as_bytes(),
        }
    }
}

/// Builds a [`MemoryLimiter`] with another clock or key limit. Each setting is fixed for the
/// limiter's life: its entries hold times read from its clock.
///
/// ```
/// use keygate::clock::ManualClock;
/// use keygate::ratelimit::MemoryLimiter;
///
/// let clock = ManualClock::new();
/// let limiter = MemoryLimiter::builder().clock(clock.clone()).max_keys(10_000).build();
/// # let _ = limiter;
/// ```
#[must_use]
pub struct MemoryLimiterBuilder {
    clock: SharedClock,
    max_keys: usize,
}

impl MemoryLimiterBuilder {
    /// Reads time from `clock` (tests move a [`ManualClock`](crate::clock::ManualClock)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Tracks at most `max` keys at once (default 4,000,000; see [`MemoryLimiter`]). At least 1.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max.max(1);
        self
    }

    /// The limiter, empty.
    pub fn build(self) -> MemoryLimiter {
        MemoryLimiter::build(self.clock, self.max_keys)
    }
}

impl fmt::Debug for MemoryLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiterBuilder")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl MemoryLimiter {
    /// A limiter on the system clock, tracking at most 4,000,000 keys.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder, to set another clock or key limit.
    pub fn builder() -> MemoryLimiterBuilder {
        MemoryLimiterBuilder {
            clock: clock::system(),
            max_keys: DEFAULT_MAX_KEYS,
        }
    }

    fn build(clock: SharedClock, max_keys: usize) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (parallelism * 8).next_power_of_two().max(2);
        Self {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| {
                        RwLock::new(Shard {
                            table: HashTable::new(),
                            ring: VecDeque::new(),
                        })
                    })
                    .collect(),
                shift: 64 - shards.trailing_zeros(),
                hasher: foldhash::fast::RandomState::default(),
                clock,
                len: AtomicUsize::new(0),
                max_keys,
            }),
        }
    }

    /// Keys tracked now (live or not yet swept).
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry that holds no information any more; returns how many went.
    pub fn sweep(&self) -> usize {
        let now = self.inner.clock.monotonic_nanos();
        self.inner
            .shards
            .iter()
            .map(|s| {
                let mut shard = s.write().unwrap_or_else(PoisonError::into_inner);
                self.inner.sweep_shard(&mut shard, now)
            })
            .sum()
    }

    /// The decision for `key` without spending anything: what the next request of `cost` would
    /// get. For headers or dashboards.
    pub fn peek(&self, key: &str, quota: &Quota, cost: u32) -> Decision {
        let now = self.inner.clock.monotonic_nanos();
        let hash = self.inner.hasher.hash_one(key);
        let shard = self
            .inner
            .shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let tat = shard
            .table
            .find(hash, |e| {
                e.hash == hash && e.key.as_bytes() == key.as_bytes()
            })
            .map_or(0, |e| e.tat.load(Ordering::Acquire));
        gcra::decide(tat, now, quota, cost).0
    }
}

impl Inner {
    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        &self.shards[(hash >> self.shift) as usize]
    }

    fn sweep_shard(&self, shard: &mut Shard, now: u64) -> usize {
        let before = shard.table.len();
        shard.table.retain(|e| e.tat.load(Ordering::Acquire) > now);
        let removed = before - shard.table.len();
        self.len.fetch_sub(removed, Ordering::Relaxed);
        shard.rebuild_ring();
        removed
    }

    /// Looks at up to `steps` of the shard's oldest entries: drops the idle ones, moves the live
    /// ones to the back. Returns how many were dropped.
    fn sweep_steps(&self, shard: &mut Shard, now: u64, steps: usize) -> usize {
        let mut removed = 0;
        for _ in 0..steps.min(shard.ring.len()) {
            let Some(hash) = shard.ring.pop_front() else {
                break;
            };
            match shard.table.find_entry(hash, |e| e.hash == hash) {
                Ok(entry) if entry.get().tat.load(Ordering::Acquire) <= now => {
                    entry.remove();
                    removed += 1;
                }
                Ok(_) => shard.ring.push_back(hash),
                // Already dropped by a full sweep.
                Err(_) => {}
            }
        }
        // Hashes whose entry is gone are dropped as they are reached, and a full sweep rebuilds
        // the ring; a ring far longer than its table is rebuilt here, so it stays bounded.
        if shard.ring.len() > 2 * shard.table.len() + STEPS_AT_CAPACITY {
            shard.rebuild_ring();
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    #[inline]
    fn decide(&self, key: &str, quota: &Quota, cost: u32) -> Result<Decision, RateLimitError> {
        let hash = self.hasher.hash_one(key);
        let lock = self.shard(hash);
        let now = self.clock.monotonic_nanos();
        {
            let shard = lock.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = shard.table.find(hash, |e| {
                e.hash == hash && e.key.as_bytes() == key.as_bytes()
            }) {
                return Ok(update(&entry.tat, now, quota, cost));
            }
        }
        let mut shard = lock.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = shard.table.find(hash, |e| {
            e.hash == hash && e.key.as_bytes() == key.as_bytes()
        }) {
            return Ok(update(&entry.tat, now, quota, cost));
        }
        let (decision, new_tat) = gcra::decide(0, now, quota, cost);
        let Some(new_tat) = new_tat else {
            return Ok(decision); // nothing to remember
        };
        self.sweep_steps(&mut shard, now, STEPS_PER_INSERT);
        if self.len.load(Ordering::Relaxed) >= self.max_keys {
            self.sweep_steps(&mut shard, now, STEPS_AT_CAPACITY);
            if self.len.load(Ordering::Relaxed) >= self.max_keys {
                return Err(RateLimitError::Full);
            }
        }
        shard.table.insert_unique(
            hash,
            Entry {
                key: StoredKey::new(key),
                hash,
                tat: AtomicU64::new(new_tat),
            },
            |e| e.hash,
        );
        shard.ring.push_back(hash);
        self.len.fetch_add(1, Ordering::Relaxed);
        Ok(decision)
    }
}

/// One compare-and-swap loop on a key's timestamp.
fn update(tat: &AtomicU64, now: u64, quota: &Quota, cost: u32) -> Decision {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let (decision, new_tat) = gcra::decide(current, now, quota, cost);
        let Some(new_tat) = new_tat else {
            return decision;
        };
        match tat.compare_exchange_weak(current, new_tat, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return decision,
            Err(actual) => current = actual,
        }
    }
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLimiter")
            .field("keys", &self.len())
            .field("max_keys", &self.inner.max_keys)
            .finish_non_exhaustive()
    }
}

impl RateLimiter for MemoryLimiter {
    fn check(&self, key: &str, quota: &Quota, cost: u32) -> Check {
        Check::ready(self.inner.decide(key, quota, cost))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    fn allowed(l: &MemoryLimiter, key: &str, q: &Quota) -> bool {
        l.check(key, q, 1).take_ready().unwrap().unwrap().allowed
    }

    #[test]
    fn refill_with_manual_clock() {
        let clock = ManualClock::new();
        let l = MemoryLimiter::builder().clock(clock.clone()).build();
        let q = Quota::per_second(5);
        assert_eq!((0..10).filter(|_| allowed(&l, "a", &q)).count(), 5);
        assert!(allowed(&l, "b", &q), "keys are independent");
        clock.advance(Duration::from_millis(200));
        assert!(allowed(&l, "a", &q));
        assert!(!allowed(&l, "a", &q));
        clock.advance(Duration::from_secs(10));
        assert_eq!((0..10).filter(|_| allowed(&l, "a", &q)).count(), 5);
        assert_eq!(l.peek("a", &q, 1).remaining, 0);
    }

    #[test]
    fn sweep_forgets_idle_keys_only() {
        let clock = ManualClock::new();
        let l = MemoryLimiter::builder().clock(clock.clone()).build();
        let q = Quota::per_second(1);
        for i in 0..1000 {
            assert!(allowed(&l, &format!("k{i}"), &q));
        }
        // None is idle yet, so none was dropped: each is still limited.
        assert_eq!(l.len(), 1000);
        assert!((0..1000).all(|i| !l.peek(&format!("k{i}"), &q, 1).allowed));
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.sweep(), 0, "still inside their window");
        clock.advance(Duration::from_millis(501));
        l.sweep();
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn automatic_sweep_bounds_the_table() {
        let clock = ManualClock::new();
        let l = MemoryLimiter::builder().clock(clock.clone()).build();
        let q = Quota::per_second(100);
        for i in 0..100_000 {
            allowed(&l, &format!("k{i}"), &q);
            clock.advance(Duration::from_micros(100)); // each key idle after 1 s
        }
        // About 10,000 keys are live at any time; the table may hold twice that per shard.
        assert!(l.len() < 30_000, "{} entries", l.len());
    }

    #[test]
    fn full_limiter_fails_closed() {
        let l = MemoryLimiter::builder().max_keys(2).build();
        let q = Quota::per_hour(1);
        assert!(allowed(&l, "a", &q));
        assert!(allowed(&l, "b", &q));
        assert!(matches!(
            l.check("c", &q, 1).take_ready().unwrap(),
            Err(RateLimitError::Full)
        ));
        assert!(!allowed(&l, "a", &q), "known keys keep their limit");
    }

    #[test]
    fn at_capacity_new_keys_reclaim_idle_entries_a_few_at_a_time() {
        let clock = ManualClock::new();
        let l = MemoryLimiter::builder()
            .clock(clock.clone())
            .max_keys(1000)
            .build();
        let q = Quota::per_second(1);
        for i in 0..1000 {
            assert!(allowed(&l, &format!("old{i}"), &q));
        }
        assert!(matches!(
            l.check("new0", &q, 1).take_ready().unwrap(),
            Err(RateLimitError::Full)
        ));
        clock.advance(Duration::from_secs(2)); // every old key is idle now
        // Each new key frees at most a bounded number of idle entries: no decision empties the
        // table at once, yet every new key finds room.
        let before = l.len();
        assert!(allowed(&l, "new1", &q));
        let freed = before + 1 - l.len();
        assert!(
            (1..=STEPS_PER_INSERT + STEPS_AT_CAPACITY).contains(&freed),
            "freed {freed}"
        );
        for i in 2..500 {
            assert!(allowed(&l, &format!("new{i}"), &q), "new{i}");
        }
        assert!(l.len() <= 1000);
        // Live keys are never evicted to make room.
        for i in (2..500).rev().take(100) {
            assert!(
                !allowed(&l, &format!("new{i}"), &q),
                "new{i} kept its limit"
            );
        }
    }

    #[test]
    fn sweep_keeps_the_ring_in_step_with_the_table() {
        let clock = ManualClock::new();
        let l = MemoryLimiter::builder().clock(clock.clone()).build();
        let q = Quota::per_second(1);
        for i in 0..500 {
            assert!(allowed(&l, &format!("k{i}"), &q));
        }
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.sweep(), 500);
        assert!(l.is_empty());
        for shard in l.inner.shards.iter() {
            let shard = shard.read().unwrap();
            assert_eq!(shard.ring.len(), shard.table.len());
        }
        assert!(allowed(&l, "k1", &q));
        assert_eq!(l.len(), 1);
    }
}
