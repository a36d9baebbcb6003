use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, fence};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use hashbrown::HashTable;
use smallvec::SmallVec;

use super::fixed::{self, Window};
use super::gcra::{self, Decision};
use super::{Check, CheckAll, Quota, RateLimitError, RateLimiter, Subject, Verdict};
use crate::clock::{self, Clock, SharedClock, SystemClock};
use crate::{Limit, Limits, MAX_LIMITS};

/// The default limit on tracked keys of a [`MemoryLimiter`].
const DEFAULT_MAX_KEYS: usize = 4_000_000;
/// The largest limit on tracked keys: a shard keeps its entries' places in 32 bits, and may
/// hold a few more entries than the limit while new keys of other shards are inserted.
const MAX_MAX_KEYS: usize = i32::MAX as usize;

/// The in-memory limiter: GCRA rates with one atomic timestamp per key, and lists of limits
/// (rates and fixed-window caps, per caller or per owner) decided atomically.
///
/// Keys live in a sharded hash table. A decision for a known key takes its shard's *read* lock
/// and updates the key's timestamp with a compare-and-swap, so requests for different keys — and
/// for the same key — never wait for one another behind a global lock. Only the first request of
/// a new key takes a shard's write lock.
///
/// **Lists of limits.** [`RateLimiter::check_all`] with a single rate counted per caller is the
/// atomic path above, at the cost of [`check`](RateLimiter::check). Any other list keeps the
/// states of its items in one entry per caller (a few words per item) and, for the items
/// counted by owner, one entry per owner. All items are decided on one consistent reading of
/// the entries and written together, with one compare-and-swap per entry on the entry's
/// version (a sequence lock: a denial writes nothing and takes nothing), so a request denied by
/// one enforced limit spends nothing from the others, and no request ever sees half of
/// another's writes. Owners' entries are kept apart from callers' (an owner named `x` and a
/// caller `x` share nothing); a caller without an owner counts its owner-wide limits under its
/// own key, like its other limits. Each item's state is kept by its quota (`"10/s"` and
/// `"100/d;fixed"` of one caller are two states; two items of one list with the same quota
/// share one), so a changed list starts its changed items afresh, and a list's state is apart
/// from the state the single-rate path keeps for the same caller. Fixed windows are aligned to
/// UTC and read the clock's wall time ([`Clock::now`]; the system clock's is read once a
/// millisecond and carried forward by its monotonic time in between, so a window's boundary is
/// off by microseconds at most); rates read its monotonic time.
///
/// **Memory stays bounded, and so does the work of every decision.** An entry whose theoretical
/// arrival time has passed holds no information (it is the same as no entry), so it can be
/// dropped at any time; so can a list's entry once every rate in it has passed its time and
/// every fixed window in it has ended. Each shard keeps its entries in an array, with an index
/// from a key's hash to its place, and a cursor that goes round the array: every new key looks
/// at the next two entries at its shard's cursor and drops those that went idle (the newest
/// entry takes a dropped one's place, behind the cursor). So the table holds about twice the
/// keys active within one burst window, and no decision ever walks the table: the cost of
/// forgetting is a constant per new key, not a pause now and then. The limiter also never holds
/// more than `max_keys` entries (default 4,000,000; a list's caller and owner entries count one
/// each): a new key that arrives at that limit looks at up to 16 more entries at its shard's
/// cursor and, when none of them is idle, fails with [`RateLimitError::Full`] (503) rather than
/// go unlimited or evict a live limit. A flood of new keys at capacity thus costs each request
/// a few microseconds, never a sweep of millions of entries.
///
/// **Memory follows the live keys.** A key of the single-rate path up to 22 bytes long is an
/// entry of 32 bytes (a longer one is kept on the heap besides), and 5 bytes per bucket of its
/// index, whose buckets are a power of two, filled up to 7/8; the array grows by half when full.
/// That is about 40 to 60 bytes of heap a key, whatever their number once in the thousands (56
/// at 1,000,000 keys on a machine of 16 shards, where `governor`'s keyed limiter holds 89: see
/// `benches/limiter_memory.rs`). When keys go idle and are dropped, the array and its index
/// shrink once they hold less than a quarter of their room, to 1.5 and twice what is left: a
/// copy of the live entries (the index is rebuilt), made only after at least as many entries
/// were dropped, so still a constant per dropped entry on average. The new key that triggers
/// it waits for that copy, as one that makes a shard's table grow waits for it to grow (a
/// shard holds an eighth of the keys or less, as there are 8 shards per core). Only new keys and
/// [`sweep`](Self::sweep) drop entries: after a spike, a limiter that sees no new keys keeps
/// its room until swept.
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
///
/// A list: a burst limit and a daily cap, the cap shared by every key of an owner.
///
/// ```
/// use keygate::clock::ManualClock;
/// use keygate::ratelimit::{MemoryLimiter, RateLimiter, Subject};
/// use keygate::Limits;
///
/// let limiter = MemoryLimiter::builder().clock(ManualClock::new()).build();
/// let limits: Limits = "5/s, 3/d;fixed;owner".parse()?;
/// let check = |key| {
///     let caller = Subject::with_owner(key, Some("acme"));
///     limiter.check_all(caller, &limits, 1).take_ready().unwrap().unwrap()
/// };
/// assert!(check("key_1").allowed());
/// assert!(check("key_2").allowed());
/// assert!(check("key_1").allowed());
/// let denied = check("key_2"); // the owner's fourth of the day
/// assert_eq!(denied.denied_by(), Some(1));
/// // Nothing was spent: key_2 still has its whole burst but for the one it made.
/// let mut now = RateLimiter::peek(&limiter, Subject::with_owner("key_2", Some("acme")), &limits);
/// assert_eq!(now.take_ready().unwrap().unwrap().decisions()[0].remaining, 3);
/// # Ok::<(), keygate::QuotaError>(())
/// ```
#[derive(Clone)]
pub struct MemoryLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[RwLock<Shard>]>,
    /// The number of shards less one (a power of two less one): see [`Inner::shard_of`].
    shard_mask: usize,
    hasher: Hasher,
    clock: SharedClock,
    /// Whether `clock` is the system's: its wall time is then read once a millisecond and
    /// carried forward by its monotonic time in between (see [`Inner::wall_nanos`]).
    system_clock: bool,
    /// The wall-clock time less the monotonic time, when last read (a system clock only).
    wall_offset: AtomicU64,
    /// The monotonic time `wall_offset` was read at.
    wall_read_at: AtomicU64,
    len: AtomicUsize,
    max_keys: usize,
}

/// How long the system clock's wall time is carried forward by its monotonic time before it is
/// read again. The two drift apart by at most a few microseconds in that time, so a fixed
/// window's boundary is off by no more than that; a wall clock set to another time is seen
/// within this delay.
const WALL_CLOCK_READ_EVERY: u64 = 1_000_000;

/// The hasher of the limiter's keys: one seed per limiter.
type Hasher = foldhash::fast::RandomState;

/// The hash every table of a limiter files `key` under.
#[inline]
fn hash_key(hasher: &Hasher, key: &[u8]) -> u64 {
    hasher.hash_one(key)
}

struct Shard {
    /// Keys of the single-rate path.
    single: Table<Entry>,
    /// Callers' and owners' entries of lists of limits.
    lists: Table<ListEntry>,
}

/// A key of the single-rate path: 32 bytes, its key inline up to 22 bytes. Its hash is not
/// kept (it is computed again from the key on the rare paths that need it: growing or
/// shrinking the index, dropping the entry).
struct Entry {
    key: StoredKey,
    tat: AtomicU64,
}

/// The states of a caller's (or an owner's) items of lists of limits.
///
/// A decision reads the states without a lock and checks `version` before and after (a
/// sequence lock): even while the states are at rest, odd while a decision that admitted a
/// request writes them. That decision takes the entry by moving `version` from the even value
/// it read to the next odd one (one compare-and-swap, which fails if anything was written
/// since), writes, and moves it on to the next even value. So an admitted request costs one
/// compare-and-swap, like the single-rate path, and a denied one none. The slots themselves
/// (which quotas have a state) change only under the shard's write lock.
///
/// Laid out in the order a decision reads it, on one pair of cache lines (128 bytes, aligned,
/// which processors fetch together): what a lookup compares (the hash, the key, the namespace),
/// the version, then the states.
#[repr(C, align(128))]
struct ListEntry {
    hash: u64,
    key: StoredKey,
    /// Whether this is an owner's entry (else a caller's).
    owner: bool,
    version: AtomicU64,
    slots: Slots,
}

/// The states of one entry's items, one per distinct quota. Two inline: a caller's rate and cap.
type Slots = SmallVec<[Slot; 2]>;

/// The most item states one list entry keeps. Idle ones are dropped to make room; a request
/// whose items would need more live states than this fails with `Full`, like a full table.
const MAX_SLOTS: usize = 4 * MAX_LIMITS;

/// Marks a fixed-window cap in [`SlotKey::window`].
const FIXED_BIT: u64 = 1 << 63;

/// A quota, exactly, in 16 bytes: the item a state belongs to. Equal keys are equal quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotKey {
    /// The window in nanoseconds (at most a year, below 2^55), with [`FIXED_BIT`] for a cap.
    window: u64,
    limit: u32,
    burst: u32,
}

impl SlotKey {
    #[inline]
    fn of(quota: &Quota) -> Self {
        // At most a year of nanoseconds: no overflow, and below the fixed bit.
        let window = quota.window();
        let window = window
            .as_secs()
            .wrapping_mul(1_000_000_000)
            .wrapping_add(u64::from(window.subsec_nanos()));
        let fixed = if quota.is_fixed() { FIXED_BIT } else { 0 };
        Self {
            window: window | fixed,
            limit: quota.limit(),
            burst: quota.burst(),
        }
    }

    fn is_fixed(self) -> bool {
        self.window & FIXED_BIT != 0
    }

    fn window_nanos(self) -> u64 {
        self.window & !FIXED_BIT
    }
}

/// One item's state: the quota it is for (fixed while the entry lives) and the state, written
/// under the entry's version (see [`ListEntry`]).
#[derive(Debug)]
struct Slot {
    key: SlotKey,
    /// A rate's theoretical arrival time (monotonic nanoseconds), or a cap's window number.
    state: AtomicU64,
    /// What a cap spent in its window (0 for a rate).
    count: AtomicU32,
}

impl Slot {
    fn new(key: SlotKey, (state, count): (u64, u32)) -> Self {
        Self {
            key,
            state: AtomicU64::new(state),
            count: AtomicU32::new(count),
        }
    }

    #[inline]
    fn get(&self) -> (u64, u32) {
        (
            self.state.load(Ordering::Relaxed),
            self.count.load(Ordering::Relaxed),
        )
    }

    #[inline]
    fn set(&self, (state, count): (u64, u32)) {
        self.state.store(state, Ordering::Relaxed);
        self.count.store(count, Ordering::Relaxed);
    }

    /// Whether the state holds no information at these times (monotonic, wall-clock).
    fn is_idle(&self, mono: u64, wall: u64) -> bool {
        idle(self.key, self.get(), mono, wall)
    }
}

/// Whether a state of `key` holds no information at these times (monotonic, wall-clock).
fn idle(key: SlotKey, (state, count): (u64, u32), mono: u64, wall: u64) -> bool {
    if key.is_fixed() {
        let window = Window {
            id: state,
            count: u64::from(count),
        };
        fixed::is_idle(window, wall, key.window_nanos())
    } else {
        state <= mono
    }
}

impl ListEntry {
    fn is_idle(&self, mono: u64, wall: u64) -> bool {
        self.slots.iter().all(|s| s.is_idle(mono, wall))
    }

    /// Moves the version from `version` (even, as read) to the next odd value: the entry is
    /// this decision's to write, and nothing was written since `version` was read.
    #[inline]
    fn take(&self, version: u64) -> bool {
        self.version
            .compare_exchange(version, version + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    fn matches(&self, target: &Target<'_>) -> bool {
        self.hash == target.hash
            && self.owner == target.owner
            && self.key.as_bytes() == target.key.as_bytes()
    }
}

/// What a [`Table`] needs of its entries: the hash its index files them under.
trait Stored {
    fn hash(&self, hasher: &Hasher) -> u64;
}

impl Stored for Entry {
    #[inline]
    fn hash(&self, hasher: &Hasher) -> u64 {
        hash_key(hasher, self.key.as_bytes())
    }
}

impl Stored for ListEntry {
    #[inline]
    fn hash(&self, _: &Hasher) -> u64 {
        self.hash
    }
}

/// A shard's entries of one kind: a dense array, and an index from a key's hash to its place
/// in the array (4 bytes and a control byte per bucket).
///
/// The array holds nothing but entries, so memory follows the entries: it grows by half when
/// full, and shrinks once a quarter full; the index, whose buckets are a power of two, shrinks
/// once its load falls below a quarter of its capacity. Idle entries are looked for by a
/// cursor that goes round the array, so finding them costs no lookup and needs no list of
/// their own: a new entry goes at the end, and dropping one moves the last (the newest) into
/// its place, behind the cursor, to be looked at in the cursor's next round.
struct Table<T> {
    entries: Vec<T>,
    /// Indices into `entries`, by the hash of their key.
    index: HashTable<u32>,
    /// The next entry the search for idle entries looks at.
    cursor: usize,
}

/// Below this capacity (entries) a table is not shrunk: it is small already.
const SHRINK_ABOVE: usize = 64;

impl<T: Stored> Table<T> {
    fn new() -> Self {
        Self {
            entries: Vec::new(),
            index: HashTable::new(),
            cursor: 0,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry filed under `hash` for which `eq` holds.
    #[inline]
    fn find(&self, hash: u64, mut eq: impl FnMut(&T) -> bool) -> Option<&T> {
        let entries = &self.entries;
        let at = *self
            .index
            .find(hash, |&at| entries.get(at as usize).is_some_and(&mut eq))?;
        entries.get(at as usize)
    }

    /// As [`find`](Self::find), to change the entry.
    fn find_mut(&mut self, hash: u64, mut eq: impl FnMut(&T) -> bool) -> Option<&mut T> {
        let entries = &self.entries;
        let at = *self
            .index
            .find(hash, |&at| entries.get(at as usize).is_some_and(&mut eq))?;
        self.entries.get_mut(at as usize)
    }

    /// Adds `value`, which no entry matches, filed under `hash`. The limiter holds far fewer
    /// than `u32::MAX` entries ([`MAX_MAX_KEYS`]), so a place fits in 32 bits.
    fn insert(&mut self, hash: u64, value: T, hasher: &Hasher) {
        if self.entries.len() == self.entries.capacity() {
            // By half, not by doubling: at most a third of the array is ever room to grow.
            self.entries.reserve_exact((self.entries.len() / 2).max(4));
        }
        let at = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.entries.push(value);
        let entries = &self.entries;
        self.index
            .insert_unique(hash, at, |&i| rehash(entries, i, hasher));
    }

    /// Drops the entry at `at`: the last entry takes its place.
    fn remove_at(&mut self, at: usize, hasher: &Hasher) {
        let Some(entry) = self.entries.get(at) else {
            return;
        };
        let found = self
            .index
            .find_entry(entry.hash(hasher), |&i| i as usize == at);
        debug_assert!(found.is_ok(), "every entry is indexed");
        if let Ok(found) = found {
            found.remove();
        }
        let last = self.entries.len() - 1;
        self.entries.swap_remove(at);
        if let Some(moved) = self.entries.get(at) {
            let hash = moved.hash(hasher);
            if let Some(i) = self.index.find_mut(hash, |&i| i as usize == last) {
                *i = u32::try_from(at).unwrap_or(u32::MAX);
            }
        }
    }

    /// Looks at up to `steps` entries at the cursor: drops the idle ones, passes the live
    /// ones. Returns how many were dropped.
    fn step(
        &mut self,
        steps: usize,
        hasher: &Hasher,
        mut idle: impl FnMut(&mut T) -> bool,
    ) -> usize {
        let mut removed = 0;
        for _ in 0..steps {
            if self.cursor >= self.entries.len() {
                if self.entries.is_empty() {
                    break;
                }
                self.cursor = 0;
            }
            let at = self.cursor;
            if idle(&mut self.entries[at]) {
                self.remove_at(at, hasher);
                removed += 1;
            }
            // Past the live entry, or past the one moved into the dropped one's place (the
            // newest, which the next round looks at).
            self.cursor += 1;
        }
        if removed > 0 {
            self.shrink_if_sparse(hasher);
        }
        removed
    }

    /// Keeps the entries for which `keep` holds, and shrinks what became sparse. Returns how
    /// many were dropped.
    fn retain(&mut self, hasher: &Hasher, mut keep: impl FnMut(&mut T) -> bool) -> usize {
        let before = self.entries.len();
        let (mut at, cursor) = (0, self.cursor);
        let mut kept_before_cursor = 0;
        self.entries.retain_mut(|e| {
            let kept = keep(e);
            if kept && at < cursor {
                kept_before_cursor += 1;
            }
            at += 1;
            kept
        });
        self.cursor = kept_before_cursor;
        let removed = before - self.entries.len();
        if removed > 0 {
            // Every entry after the first dropped one moved: the index is built anew, at the
            // size it needs when it had become sparse.
            if self.sparse_index() {
                self.index = HashTable::with_capacity(2 * self.entries.len());
            } else {
                self.index.clear();
            }
            let Self { entries, index, .. } = self;
            for (at, entry) in entries.iter().enumerate() {
                let at = u32::try_from(at).unwrap_or(u32::MAX);
                index.insert_unique(entry.hash(hasher), at, |&i| rehash(entries, i, hasher));
            }
            self.shrink_if_sparse(hasher);
        }
        removed
    }

    /// Whether the index holds less than a quarter of what its buckets can.
    fn sparse_index(&self) -> bool {
        // hashbrown fills its buckets up to 7/8.
        let capacity = self.index.num_buckets() / 8 * 7;
        capacity > SHRINK_ABOVE && self.entries.len() < capacity / 4
    }

    /// Shrinks the array and the index when they hold less than a quarter of their capacity,
    /// to 1.5 times and twice the entries. Each is a copy (the index's a rehash) of the
    /// entries left, done only after the table lost three quarters of its capacity since it
    /// last grew or shrank: a constant per dropped entry, amortised.
    fn shrink_if_sparse(&mut self, hasher: &Hasher) {
        let len = self.entries.len();
        if self.entries.capacity() > SHRINK_ABOVE && len < self.entries.capacity() / 4 {
            self.entries.shrink_to(len + len / 2);
        }
        if self.sparse_index() {
            let entries = &self.entries;
            self.index
                .shrink_to(2 * len, |&i| rehash(entries, i, hasher));
        }
    }
}

#[cfg(test)]
impl<T: Stored> Table<T> {
    /// Panics unless the index points to every entry, under the entry's hash, and to nothing
    /// else.
    fn assert_consistent(&self, hasher: &Hasher) {
        assert_eq!(self.index.len(), self.entries.len());
        for (at, entry) in self.entries.iter().enumerate() {
            let found = self.index.find(entry.hash(hasher), |&i| i as usize == at);
            assert!(
                found.is_some(),
                "entry {at} of {} not indexed",
                self.entries.len()
            );
        }
    }

    /// The room the table holds: entries, and index buckets (none when it holds no
    /// allocation).
    fn footprint(&self) -> (usize, usize) {
        let buckets = if self.index.allocation_size() == 0 {
            0
        } else {
            self.index.num_buckets()
        };
        (self.entries.capacity(), buckets)
    }
}

/// The hash of the entry an index points to, for the index to move it.
#[inline]
fn rehash<T: Stored>(entries: &[T], at: u32, hasher: &Hasher) -> u64 {
    entries.get(at as usize).map_or(0, |e| e.hash(hasher))
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

/// The times of one decision, each read from the clock when first needed: monotonic
/// nanoseconds for rates, wall-clock nanoseconds since the Unix epoch for fixed windows.
#[derive(Clone, Copy)]
struct Now {
    mono: Option<u64>,
    wall: Option<u64>,
}

impl Now {
    fn both(&mut self, inner: &Inner) -> (u64, u64) {
        let mono = *self
            .mono
            .get_or_insert_with(|| inner.clock.monotonic_nanos());
        let wall = *self
            .wall
            .get_or_insert_with(|| inner.wall_nanos(Some(mono)));
        (mono, wall)
    }
}

/// An entry a list's items are kept in: the caller's, or the owner's.
#[derive(Clone, Copy)]
struct Target<'k> {
    key: &'k str,
    owner: bool,
    hash: u64,
    shard: usize,
}

/// The caller's entry, in [`Plan::targets`].
const CALLER: usize = 0;
/// The owner's entry.
const OWNER: usize = 1;

/// A list of limits to decide for one subject.
struct Plan<'a> {
    items: &'a [Limit],
    /// Bit i: item i is kept in the owner's entry (else in the caller's).
    owner_items: u16,
    /// The caller's entry, then the owner's, where some item is kept in it.
    targets: [Option<Target<'a>>; 2],
    /// Monotonic nanoseconds, when some item is a rate.
    mono: u64,
    /// Wall-clock nanoseconds, when some item is a fixed window.
    wall: u64,
    rates: bool,
    caps: bool,
    cost: u32,
}

impl Plan<'_> {
    fn now(&self) -> Now {
        Now {
            mono: self.rates.then_some(self.mono),
            wall: self.caps.then_some(self.wall),
        }
    }

    fn target_of(&self, item: usize) -> usize {
        if self.owner_items & (1 << item) != 0 {
            OWNER
        } else {
            CALLER
        }
    }

    /// The shards to lock, each once, the lower index first (the one lock order of the
    /// limiter, so that two decisions never wait for each other's second shard).
    fn shards(&self) -> Option<(usize, Option<usize>)> {
        let mut shards = self.targets.iter().flatten().map(|t| t.shard);
        let a = shards.next()?;
        Some(match shards.next() {
            Some(b) if b < a => (b, Some(a)),
            Some(b) if b > a => (a, Some(b)),
            _ => (a, None),
        })
    }
}

/// The outcome of a list on the states of its entries, before anything is written.
struct Outcome {
    /// One per item.
    decisions: SmallVec<[Decision; 2]>,
    /// Per item whose bit is set in `writes`: the state and count to keep, when the request is
    /// admitted.
    states: [(u64, u32); MAX_LIMITS],
    /// Per item: where its state was found in its entry's slots (`NO_SLOT`: nowhere).
    index: [u8; MAX_LIMITS],
    /// Bit i: item i has a state to keep.
    writes: u16,
    allowed: bool,
    /// Per entry: items with a state to keep that the entry has no slot for yet (an upper
    /// bound on the slots it needs: items with equal quotas count once each).
    missing: [u8; 2],
}

const NO_SLOT: u8 = u8::MAX;

/// What a decision that could not be made reports.
const NO_DECISION: Decision = Decision {
    allowed: false,
    remaining: 0,
    reset_after: Duration::ZERO,
    retry_after: Duration::ZERO,
};

impl Outcome {
    /// Room for a list's outcome, kept by the caller of a decision so that it is never moved.
    fn new() -> Self {
        Self {
            decisions: SmallVec::new(),
            states: [(0, 0); MAX_LIMITS],
            index: [NO_SLOT; MAX_LIMITS],
            writes: 0,
            allowed: true,
            missing: [0; 2],
        }
    }

    /// Whether admitting the request changes the entry `target`.
    fn writes_to(&self, plan: &Plan<'_>, target: usize) -> bool {
        let kept = if target == OWNER {
            plan.owner_items
        } else {
            !plan.owner_items
        };
        self.allowed && self.writes & kept != 0
    }

    /// Writes the states of the items kept in `target` into its slots: first those found
    /// where they were when decided, then the new ones (which may drop idle slots to make room,
    /// moving the others).
    fn commit(
        &self,
        plan: &Plan<'_>,
        target: usize,
        slots: &mut Slots,
        now: &mut Now,
        inner: &Inner,
    ) {
        let mut new = 0u16;
        let mut writes = self.writes;
        while writes != 0 {
            let i = writes.trailing_zeros() as usize;
            writes &= writes - 1;
            if plan.target_of(i) != target {
                continue;
            }
            match slots.get(usize::from(self.index[i])) {
                Some(slot) => slot.set(self.states[i]),
                None => new |= 1 << i,
            }
        }
        while new != 0 {
            let i = new.trailing_zeros() as usize;
            new &= new - 1;
            // An equal quota earlier in the list may have made the slot already.
            let key = SlotKey::of(plan.items[i].quota());
            if let Some(slot) = slots.iter().find(|s| s.key == key) {
                slot.set(self.states[i]);
                continue;
            }
            if slots.len() >= MAX_SLOTS {
                let (mono, wall) = now.both(inner);
                slots.retain(|s| !s.is_idle(mono, wall));
            }
            slots.push(Slot::new(key, self.states[i]));
        }
    }

    /// Writes the states of the items kept in `target` to the slots they were found in (every
    /// one was: `missing[target]` is 0).
    #[inline]
    fn write_found(&self, plan: &Plan<'_>, target: usize, slots: &[Slot]) {
        let mut writes = self.writes;
        while writes != 0 {
            let i = writes.trailing_zeros() as usize;
            writes &= writes - 1;
            if plan.target_of(i) == target
                && let Some(slot) = slots.get(usize::from(self.index[i]))
            {
                slot.set(self.states[i]);
            }
        }
    }

    /// Whether `slots` has room for the new states of `target` ([`MAX_SLOTS`], counting
    /// only live states).
    fn fits(&self, target: usize, slots: &[Slot], now: &mut Now, inner: &Inner) -> bool {
        let missing = usize::from(self.missing[target]);
        if slots.len() + missing <= MAX_SLOTS {
            return true;
        }
        let (mono, wall) = now.both(inner);
        slots.iter().filter(|s| !s.is_idle(mono, wall)).count() + missing <= MAX_SLOTS
    }
}

/// Decides every item of `plan` on the states in `slots` (the caller's entry's, the owner's)
/// into `out`, writing nothing. When `spend` and the request is denied, each item that would
/// have admitted it reports what it has now (nothing was spent), not what it would have had
/// after it.
fn decide_items(plan: &Plan<'_>, slots: [&[Slot]; 2], spend: bool, out: &mut Outcome) {
    out.decisions.clear();
    out.allowed = true;
    out.writes = 0;
    out.missing = [0; 2];
    for (i, limit) in plan.items.iter().enumerate() {
        let target = plan.target_of(i);
        let quota = limit.quota();
        let key = SlotKey::of(quota);
        let found = slots[target].iter().position(|s| s.key == key);
        let slot = found.map(|at| &slots[target][at]);
        let (decision, write) = decide_item(slot, key.is_fixed(), quota, plan, plan.cost);
        out.allowed &= decision.allowed || limit.is_shadow();
        out.decisions.push(decision);
        // A new state that holds nothing (a request of cost 0) is not worth a slot.
        let Some(write) = write else {
            continue;
        };
        if let Some(at) = found {
            out.index[i] = u8::try_from(at).unwrap_or(NO_SLOT);
        } else if !idle(key, write, plan.mono, plan.wall) {
            out.index[i] = NO_SLOT;
            out.missing[target] += 1;
        } else {
            continue;
        }
        out.states[i] = write;
        out.writes |= 1 << i;
    }
    if spend && !out.allowed {
        for (i, limit) in plan.items.iter().enumerate() {
            if out.decisions[i].allowed {
                let quota = limit.quota();
                let key = SlotKey::of(quota);
                let found = slots[plan.target_of(i)].iter().find(|s| s.key == key);
                out.decisions[i] = decide_item(found, key.is_fixed(), quota, plan, 0).0;
            }
        }
    }
}

/// One item's decision, and the state and count to keep when admitted.
#[inline]
fn decide_item(
    found: Option<&Slot>,
    fixed: bool,
    quota: &Quota,
    plan: &Plan<'_>,
    cost: u32,
) -> (Decision, Option<(u64, u32)>) {
    if fixed {
        let state = found.map_or(Window::default(), |s| {
            let (id, count) = s.get();
            Window {
                id,
                count: u64::from(count),
            }
        });
        let (decision, new) = fixed::decide(state, plan.wall, quota, cost);
        // A count is at most the limit, a u32.
        let write = new.map(|w| (w.id, u32::try_from(w.count).unwrap_or(u32::MAX)));
        (decision, write)
    } else {
        let tat = found.map_or(0, |s| s.state.load(Ordering::Relaxed));
        let (decision, new) = gcra::decide(tat, plan.mono, quota, cost);
        (decision, new.map(|tat| (tat, 0)))
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
    system_clock: bool,
    max_keys: usize,
}

impl MemoryLimiterBuilder {
    /// Reads time from `clock` (tests move a [`ManualClock`](crate::clock::ManualClock)).
    pub fn clock<C: Clock>(mut self, clock: C) -> Self {
        self.system_clock = std::any::TypeId::of::<C>() == std::any::TypeId::of::<SystemClock>();
        self.clock = Arc::new(clock);
        self
    }

    /// Tracks at most `max` keys at once (default 4,000,000; see [`MemoryLimiter`]). At least 1,
    /// at most 2³¹ − 1 (2,147,483,647, some 64 GiB of entries; a larger `max` is taken as that).
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max.clamp(1, MAX_MAX_KEYS);
        self
    }

    /// The limiter, empty.
    pub fn build(self) -> MemoryLimiter {
        MemoryLimiter::build(self.clock, self.system_clock, self.max_keys)
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
            system_clock: true,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }

    fn build(clock: SharedClock, system_clock: bool, max_keys: usize) -> Self {
        let mono = clock.monotonic_nanos();
        let wall = fixed::unix_nanos(clock.now());
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (parallelism * 8).next_power_of_two().max(2);
        Self {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|_| {
                        RwLock::new(Shard {
                            single: Table::new(),
                            lists: Table::new(),
                        })
                    })
                    .collect(),
                shard_mask: shards - 1,
                hasher: Hasher::default(),
                clock,
                system_clock,
                wall_offset: AtomicU64::new(wall.wrapping_sub(mono)),
                wall_read_at: AtomicU64::new(mono),
                len: AtomicUsize::new(0),
                max_keys,
            }),
        }
    }

    /// Keys tracked now (live or not yet swept); a caller's and an owner's entries of lists of
    /// limits count one each.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry that holds no information any more; returns how many went.
    pub fn sweep(&self) -> usize {
        let (mono, wall) = Now {
            mono: None,
            wall: None,
        }
        .both(&self.inner);
        self.inner
            .shards
            .iter()
            .map(|s| {
                let mut shard = s.write().unwrap_or_else(PoisonError::into_inner);
                self.inner.sweep_shard(&mut shard, mono, wall)
            })
            .sum()
    }

    /// The decision for `key` without spending anything: what the next request of `cost` would
    /// get. For headers or dashboards.
    ///
    /// This reads the state [`check`](RateLimiter::check) keeps for `key` and `quota`. For a
    /// list of limits use [`RateLimiter::peek`], called by its path
    /// (`RateLimiter::peek(&limiter, subject, &limits)`), as this method shares its name.
    pub fn peek(&self, key: &str, quota: &Quota, cost: u32) -> Decision {
        if quota.is_fixed() {
            // Peeking never fails: it needs no room.
            return self
                .inner
                .single_cap(key, quota, cost, false)
                .unwrap_or(NO_DECISION);
        }
        let now = self.inner.clock.monotonic_nanos();
        let hash = hash_key(&self.inner.hasher, key.as_bytes());
        let shard = self
            .inner
            .shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let tat = shard
            .single
            .find(hash, |e| e.key.as_bytes() == key.as_bytes())
            .map_or(0, |e| e.tat.load(Ordering::Acquire));
        gcra::decide(tat, now, quota, cost).0
    }
}

fn read(lock: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(lock: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Waits a moment for a decision that is writing an entry's states (a few stores long): spins,
/// then lets other threads run, in case that decision's thread was preempted.
#[cold]
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Of the one or two shards read-locked or write-locked for a list, the one at `index`.
fn pick_ref<'g>(lo: usize, first: &'g Shard, second: Option<&'g Shard>, index: usize) -> &'g Shard {
    match second {
        Some(second) if index != lo => second,
        _ => first,
    }
}

/// Of the one or two shards locked for a list, the one at `index`.
fn pick<'g>(
    lo: usize,
    first: &'g mut Shard,
    second: &'g mut Option<RwLockWriteGuard<'_, Shard>>,
    index: usize,
) -> &'g mut Shard {
    match second {
        Some(second) if index != lo => second,
        _ => first,
    }
}

impl Inner {
    /// The wall-clock time in nanoseconds since the Unix epoch, for fixed windows; `mono`, the
    /// monotonic time if already read.
    ///
    /// Any clock but the system's is read every time (a `ManualClock` is exact). The system's
    /// wall clock costs a system-call-like read of about twice the monotonic one; it is read
    /// once a millisecond and carried forward by the monotonic clock in between.
    #[inline]
    fn wall_nanos(&self, mono: Option<u64>) -> u64 {
        if !self.system_clock {
            return fixed::unix_nanos(self.clock.now());
        }
        let mono = mono.unwrap_or_else(|| self.clock.monotonic_nanos());
        let read_at = self.wall_read_at.load(Ordering::Acquire);
        // A `read_at` later than `mono` (read by another thread since) wraps: read again.
        if mono.wrapping_sub(read_at) < WALL_CLOCK_READ_EVERY {
            return mono.wrapping_add(self.wall_offset.load(Ordering::Relaxed));
        }
        let wall = fixed::unix_nanos(self.clock.now());
        self.wall_offset
            .store(wall.wrapping_sub(mono), Ordering::Relaxed);
        self.wall_read_at.store(mono, Ordering::Release);
        wall
    }

    /// The shard of a key's hash. Its bits are apart from those hashbrown reads (the top seven,
    /// its tag, and the low ones, the bucket), so that the keys of one shard differ in both.
    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> 32) as usize & self.shard_mask
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        &self.shards[self.shard_of(hash)]
    }

    fn sweep_shard(&self, shard: &mut Shard, mono: u64, wall: u64) -> usize {
        let hasher = &self.hasher;
        let removed = shard.single.retain(hasher, |e| *e.tat.get_mut() > mono)
            + shard.lists.retain(hasher, |e| !e.is_idle(mono, wall));
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Looks at up to `steps` entries at the cursor of each of the shard's tables: drops the
    /// idle ones, passes the live ones. Returns how many were dropped.
    fn sweep_steps(&self, shard: &mut Shard, now: &mut Now, steps: usize) -> usize {
        let mut removed = 0;
        if !shard.single.is_empty() {
            let mono = *now.mono.get_or_insert_with(|| self.clock.monotonic_nanos());
            removed += shard
                .single
                .step(steps, &self.hasher, |e| *e.tat.get_mut() <= mono);
        }
        if !shard.lists.is_empty() {
            let (mono, wall) = now.both(self);
            removed += shard
                .lists
                .step(steps, &self.hasher, |e| e.is_idle(mono, wall));
        }
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    #[inline]
    fn decide(&self, key: &str, quota: &Quota, cost: u32) -> Result<Decision, RateLimitError> {
        let hash = hash_key(&self.hasher, key.as_bytes());
        let lock = self.shard(hash);
        let now = self.clock.monotonic_nanos();
        {
            let shard = lock.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = shard
                .single
                .find(hash, |e| e.key.as_bytes() == key.as_bytes())
            {
                return Ok(update(&entry.tat, now, quota, cost));
            }
        }
        let mut shard = lock.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = shard
            .single
            .find(hash, |e| e.key.as_bytes() == key.as_bytes())
        {
            return Ok(update(&entry.tat, now, quota, cost));
        }
        let (decision, new_tat) = gcra::decide(0, now, quota, cost);
        let Some(new_tat) = new_tat else {
            return Ok(decision); // nothing to remember
        };
        let mut times = Now {
            mono: Some(now),
            wall: None,
        };
        self.sweep_steps(&mut shard, &mut times, STEPS_PER_INSERT);
        if self.len.load(Ordering::Relaxed) >= self.max_keys {
            self.sweep_steps(&mut shard, &mut times, STEPS_AT_CAPACITY);
            if self.len.load(Ordering::Relaxed) >= self.max_keys {
                return Err(RateLimitError::Full);
            }
        }
        let entry = Entry {
            key: StoredKey::new(key),
            tat: AtomicU64::new(new_tat),
        };
        shard.single.insert(hash, entry, &self.hasher);
        self.len.fetch_add(1, Ordering::Relaxed);
        Ok(decision)
    }

    fn target<'k>(&self, key: &'k str, owner: bool) -> Target<'k> {
        // The namespace is told apart by `owner`, not by the hash: a caller and an owner of
        // one name may share a bucket, never an entry.
        let hash = hash_key(&self.hasher, key.as_bytes());
        Target {
            key,
            owner,
            hash,
            shard: self.shard_of(hash),
        }
    }

    /// A fixed-window cap on its own (`check` or the inherent `peek` with a fixed quota): the
    /// caller's list entry, with one item.
    fn single_cap(
        &self,
        key: &str,
        quota: &Quota,
        cost: u32,
        spend: bool,
    ) -> Result<Decision, RateLimitError> {
        let item = [Limit::new(*quota)];
        let mut out = Outcome::new();
        self.decide_list(Subject::new(key), &item, cost, spend, &mut out)?;
        Ok(out.decisions.first().copied().unwrap_or(NO_DECISION))
    }

    /// Decides `items` for `subject` on the list entries, atomically; spends `cost` on every
    /// item that admits when the request is admitted and `spend` is set.
    fn decide_list(
        &self,
        subject: Subject<'_>,
        items: &[Limit],
        cost: u32,
        spend: bool,
        out: &mut Outcome,
    ) -> Result<(), RateLimitError> {
        let items = &items[..items.len().min(MAX_LIMITS)];
        let mut owner_items = 0u16;
        let (mut rates, mut caps) = (false, false);
        for (i, limit) in items.iter().enumerate() {
            if subject.is_owner_wide(limit.by()) {
                owner_items |= 1 << i;
            }
            if limit.quota().is_fixed() {
                caps = true;
            } else {
                rates = true;
            }
        }
        let all = (1u16 << items.len()) - 1;
        let caller = (owner_items != all).then(|| self.target(subject.key, false));
        let owner = subject
            .owner
            .filter(|_| owner_items != 0)
            .map(|owner| self.target(owner, true));
        let mono = rates.then(|| self.clock.monotonic_nanos());
        let plan = Plan {
            items,
            owner_items,
            targets: [caller, owner],
            mono: mono.unwrap_or(0),
            wall: if caps { self.wall_nanos(mono) } else { 0 },
            rates,
            caps,
            cost,
        };
        // The common case first: every item in one entry (the caller's, or the owner's).
        if let [Some(target), None] | [None, Some(target)] = &plan.targets
            && let Some(done) = self.list_in_one(&plan, target, spend, out)
        {
            return done;
        }
        let Some(shards) = plan.shards() else {
            // No item at all.
            decide_items(&plan, [&[], &[]], spend, out);
            return Ok(());
        };
        if let Some(done) = self.list_known(&plan, shards, spend, out) {
            return done;
        }
        self.list_new(&plan, shards, out)
    }

    /// A list kept in one entry that exists, under its shard's read lock; `None` when the entry
    /// does not exist, or admitting the request needs a slot it does not have yet (nothing was
    /// written then). The path of most decisions: read the states, decide, check that nothing
    /// was written meanwhile, then take the entry and write (see [`ListEntry`]).
    #[inline]
    fn list_in_one(
        &self,
        plan: &Plan<'_>,
        target: &Target<'_>,
        spend: bool,
        out: &mut Outcome,
    ) -> Option<Result<(), RateLimitError>> {
        let shard = read(&self.shards[target.shard]);
        let entry = shard.lists.find(target.hash, |e| e.matches(target))?;
        let t = if target.owner { OWNER } else { CALLER };
        let mut views: [&[Slot]; 2] = [&[], &[]];
        views[t] = &entry.slots;
        let mut spins = 0;
        loop {
            let version = entry.version.load(Ordering::Acquire);
            if version & 1 != 0 {
                backoff(&mut spins);
                continue;
            }
            decide_items(plan, views, spend, out);
            fence(Ordering::Acquire);
            if entry.version.load(Ordering::Relaxed) != version {
                continue; // written meanwhile: decide again
            }
            if !spend || !out.allowed || out.writes == 0 {
                return Some(Ok(()));
            }
            if out.missing[t] > 0 {
                return None;
            }
            if !entry.take(version) {
                continue;
            }
            // The odd version is seen before any of the states written next.
            fence(Ordering::Release);
            out.write_found(plan, t, &entry.slots);
            entry.version.store(version + 2, Ordering::Release);
            return Some(Ok(()));
        }
    }

    /// The list on entries that exist (one or two: the caller's and the owner's), under the
    /// shards' read locks, by the same protocol as [`list_in_one`](Self::list_in_one); `None`
    /// when spending needs an entry or a slot that does not exist yet (nothing was written).
    fn list_known(
        &self,
        plan: &Plan<'_>,
        (lo, hi): (usize, Option<usize>),
        spend: bool,
        out: &mut Outcome,
    ) -> Option<Result<(), RateLimitError>> {
        let first = read(&self.shards[lo]);
        let second = hi.map(|s| read(&self.shards[s]));
        let mut entries: [Option<&ListEntry>; 2] = [None, None];
        for (entry, target) in entries.iter_mut().zip(&plan.targets) {
            let Some(target) = target else {
                continue;
            };
            *entry = pick_ref(lo, &first, second.as_deref(), target.shard)
                .lists
                .find(target.hash, |e| e.matches(target));
            if entry.is_none() && spend {
                return None;
            }
        }
        let views = entries.map(|e| e.map_or(&[][..], |e| e.slots.as_slice()));
        let mut spins = 0;
        loop {
            let versions = entries.map(|e| e.map_or(0, |e| e.version.load(Ordering::Acquire)));
            if versions.iter().any(|v| v & 1 != 0) {
                backoff(&mut spins);
                continue;
            }
            decide_items(plan, views, spend, out);
            fence(Ordering::Acquire);
            let changed = entries
                .iter()
                .zip(versions)
                .any(|(e, v)| e.is_some_and(|e| e.version.load(Ordering::Relaxed) != v));
            if changed {
                continue;
            }
            if !spend || !out.allowed || out.writes == 0 {
                return Some(Ok(()));
            }
            if out.missing != [0; 2] {
                return None;
            }
            // Take the entries in one order, the caller's before the owner's; one that cannot
            // be taken gives back the other, so no decision ever waits holding an entry.
            let [caller, owner] = entries;
            if let Some(e) = caller
                && !e.take(versions[CALLER])
            {
                continue;
            }
            if let Some(e) = owner
                && !e.take(versions[OWNER])
            {
                if let Some(e) = caller {
                    e.version.store(versions[CALLER], Ordering::Release);
                }
                continue;
            }
            fence(Ordering::Release);
            for (t, e) in entries.iter().enumerate() {
                if let Some(e) = e {
                    out.write_found(plan, t, &e.slots);
                }
            }
            for (t, e) in entries.iter().enumerate() {
                if let Some(e) = e {
                    e.version.store(versions[t] + 2, Ordering::Release);
                }
            }
            return Some(Ok(()));
        }
    }

    /// The list when an entry or a slot it needs does not exist yet: under the shards' write
    /// locks, taken in the limiter's one order (lower index first), so that no decision reads
    /// the entries meanwhile.
    fn list_new(
        &self,
        plan: &Plan<'_>,
        (lo, hi): (usize, Option<usize>),
        out: &mut Outcome,
    ) -> Result<(), RateLimitError> {
        let mut first = write(&self.shards[lo]);
        let mut second = hi.map(|s| write(&self.shards[s]));
        let writes = {
            let views = plan.targets.map(|target| {
                target
                    .and_then(|target| {
                        pick_ref(lo, &first, second.as_deref(), target.shard)
                            .lists
                            .find(target.hash, |e| e.matches(&target))
                    })
                    .map_or(&[][..], |e| e.slots.as_slice())
            });
            decide_items(plan, views, true, out);
            let writes =
                [CALLER, OWNER].map(|t| plan.targets[t].is_some() && out.writes_to(plan, t));
            let mut now = plan.now();
            for t in [CALLER, OWNER] {
                if writes[t] && !out.fits(t, views[t], &mut now, self) {
                    return Err(RateLimitError::Full);
                }
            }
            writes
        };
        if writes == [false; 2] {
            return Ok(());
        }
        let mut now = plan.now();
        let present = |first: &mut Shard, second: &mut Option<RwLockWriteGuard<'_, Shard>>| {
            [CALLER, OWNER].map(|t| {
                plan.targets[t].is_some_and(|target| {
                    pick(lo, first, second, target.shard)
                        .lists
                        .find(target.hash, |e| e.matches(&target))
                        .is_some()
                })
            })
        };
        // A new key looks for idle entries in its shard, as on the single-rate path. Sweeping
        // drops only entries that hold nothing: one found above and dropped here decided as
        // no entry would have, and is made anew below.
        let mut exists = present(&mut first, &mut second);
        let mut swept = [usize::MAX; 2];
        for t in [CALLER, OWNER] {
            if let Some(target) = plan.targets[t]
                && writes[t]
                && !exists[t]
                && !swept.contains(&target.shard)
            {
                let shard = pick(lo, &mut first, &mut second, target.shard);
                self.sweep_steps(shard, &mut now, STEPS_PER_INSERT);
                swept[t] = target.shard;
            }
        }
        exists = present(&mut first, &mut second);
        let inserts = |exists: [bool; 2]| (0..2).filter(|&t| writes[t] && !exists[t]).count();
        if inserts(exists) > 0 && self.len.load(Ordering::Relaxed) + inserts(exists) > self.max_keys
        {
            for shard in swept.into_iter().filter(|&s| s != usize::MAX) {
                let shard = pick(lo, &mut first, &mut second, shard);
                self.sweep_steps(shard, &mut now, STEPS_AT_CAPACITY);
            }
            exists = present(&mut first, &mut second);
            if self.len.load(Ordering::Relaxed) + inserts(exists) > self.max_keys {
                return Err(RateLimitError::Full);
            }
        }
        for t in [CALLER, OWNER] {
            let Some(target) = plan.targets[t].filter(|_| writes[t]) else {
                continue;
            };
            let shard = pick(lo, &mut first, &mut second, target.shard);
            if let Some(entry) = shard.lists.find_mut(target.hash, |e| e.matches(&target)) {
                out.commit(plan, t, &mut entry.slots, &mut now, self);
                continue;
            }
            // A new entry (any slot a state was found in went with the old one).
            let mut slots = Slots::new();
            out.commit(plan, t, &mut slots, &mut now, self);
            let entry = ListEntry {
                hash: target.hash,
                version: AtomicU64::new(0),
                owner: target.owner,
                slots,
                key: StoredKey::new(target.key),
            };
            shard.lists.insert(target.hash, entry, &self.hasher);
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
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

/// Whether `limits` is a single rate counted under the caller's key: the atomic path.
#[inline]
fn single_rate<'l>(subject: &Subject<'_>, limits: &'l Limits) -> Option<&'l Quota> {
    match limits.as_slice() {
        [limit] if !limit.quota().is_fixed() && !subject.is_owner_wide(limit.by()) => {
            Some(limit.quota())
        }
        _ => None,
    }
}

/// The verdict of `decisions`, from an array when there are one or two (the common lists: a
/// slice's iterator costs the verdict's collection more).
#[inline]
fn verdict(limits: &Limits, decisions: &[Decision]) -> Verdict {
    match *decisions {
        [a] => Verdict::new(limits, [a]),
        [a, b] => Verdict::new(limits, [a, b]),
        _ => Verdict::new(limits, decisions.iter().copied()),
    }
}

impl RateLimiter for MemoryLimiter {
    /// Decides `quota` for `key`. A rate is the atomic single-rate path; a fixed-window cap
    /// is kept as a one-item list of `key`.
    fn check(&self, key: &str, quota: &Quota, cost: u32) -> Check {
        if quota.is_fixed() {
            return Check::ready(self.inner.single_cap(key, quota, cost, true));
        }
        Check::ready(self.inner.decide(key, quota, cost))
    }

    /// Decides `limits` for `subject` at once (see [`MemoryLimiter`]). When the request is
    /// denied, the limits that would have admitted it report what they have left, as nothing
    /// was spent.
    fn check_all(&self, subject: Subject<'_>, limits: &Limits, cost: u32) -> CheckAll {
        if let Some(quota) = single_rate(&subject, limits) {
            let decision = self.inner.decide(subject.key, quota, cost);
            return CheckAll::ready(decision.map(|d| Verdict::new(limits, [d])));
        }
        let mut out = Outcome::new();
        let done = self
            .inner
            .decide_list(subject, limits, cost, true, &mut out);
        CheckAll::ready(done.map(|()| verdict(limits, &out.decisions)))
    }

    /// What a request of cost 1 would get from each limit of `limits` now, spending nothing
    /// and creating no entry.
    fn peek(&self, subject: Subject<'_>, limits: &Limits) -> CheckAll {
        if let Some(quota) = single_rate(&subject, limits) {
            let decision = MemoryLimiter::peek(self, subject.key, quota, 1);
            return CheckAll::ready(Ok(Verdict::new(limits, [decision])));
        }
        let mut out = Outcome::new();
        let done = self.inner.decide_list(subject, limits, 1, false, &mut out);
        CheckAll::ready(done.map(|()| verdict(limits, &out.decisions)))
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
    fn sweep_keeps_the_index_in_step_with_the_entries() {
        let clock = ManualClock::new();
        let l = MemoryLimiter::builder().clock(clock.clone()).build();
        let q = Quota::per_second(1);
        let hour = Quota::per_hour(1);
        // Short keys and keys too long to keep inline; every third one lives an hour.
        let key = |i: usize| {
            if i.is_multiple_of(2) {
                format!("k{i}")
            } else {
                format!("a_key_longer_than_twenty_two_bytes_{i}")
            }
        };
        for i in 0..3000 {
            assert!(allowed(
                &l,
                &key(i),
                if i.is_multiple_of(3) { &hour } else { &q }
            ));
        }
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.sweep(), 2000);
        assert_consistent(&l);
        for i in 0..3000 {
            assert_eq!(
                l.peek(&key(i), &hour, 1).allowed,
                !i.is_multiple_of(3),
                "{}",
                key(i)
            );
        }
        clock.advance(Duration::from_secs(3600));
        assert_eq!(l.sweep(), 1000);
        assert!(l.is_empty());
        assert_consistent(&l);
        assert!(allowed(&l, "k1", &q));
        assert_eq!(l.len(), 1);
    }

    /// Panics unless every shard's indices point to their entries.
    fn assert_consistent(l: &MemoryLimiter) {
        for shard in l.inner.shards.iter() {
            let shard = shard.read().unwrap();
            shard.single.assert_consistent(&l.inner.hasher);
            shard.lists.assert_consistent(&l.inner.hasher);
        }
    }

    /// The room the limiter's tables hold, over all shards: single-rate entries and index
    /// buckets, then list entries and index buckets.
    fn footprint(l: &MemoryLimiter) -> [usize; 4] {
        l.inner.shards.iter().fold([0; 4], |mut sum, shard| {
            let shard = shard.read().unwrap();
            let (a, b) = shard.single.footprint();
            let (c, d) = shard.lists.footprint();
            for (s, n) in sum.iter_mut().zip([a, b, c, d]) {
                *s += n;
            }
            sum
        })
    }

    #[test]
    fn an_entry_is_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert_eq!(std::mem::size_of::<StoredKey>(), 24);
    }

    #[test]
    fn the_cursor_drops_idle_entries_and_passes_live_ones() {
        let clock = ManualClock::new();
        let l = MemoryLimiter::builder().clock(clock.clone()).build();
        let hour = Quota::per_hour(1);
        for i in 0..2000 {
            assert!(allowed(&l, &format!("live{i}"), &hour));
        }
        let second = Quota::per_second(1);
        for i in 0..2000 {
            assert!(allowed(&l, &format!("idle{i}"), &second));
        }
        clock.advance(Duration::from_secs(2));
        // Each new key looks at two entries of its shard: the idle ones go within a round of
        // every cursor, the live ones all stay.
        for i in 0..6000 {
            assert!(allowed(&l, &format!("new{i}"), &second));
            clock.advance(Duration::from_micros(10));
        }
        assert_consistent(&l);
        assert_eq!(
            l.len(),
            2000 + 6000,
            "every idle entry went, and no live one"
        );
        assert!((0..2000).all(|i| !l.peek(&format!("live{i}"), &hour, 1).allowed));
        assert!((0..6000).all(|i| !l.peek(&format!("new{i}"), &second, 1).allowed));
    }

    #[test]
    fn a_spike_gone_idle_shrinks_the_tables_under_new_keys() {
        let clock = ManualClock::new();
        let l = MemoryLimiter::builder().clock(clock.clone()).build();
        let q = Quota::per_second(1);
        for i in 0..100_000 {
            assert!(allowed(&l, &format!("spike{i}"), &q));
        }
        let [entries, buckets, ..] = footprint(&l);
        assert!(entries >= 100_000 && buckets >= 100_000);
        clock.advance(Duration::from_secs(2)); // the spike is idle
        // Traffic of new keys, each live for a second: about 1,000 live at a time.
        for i in 0..100_000 {
            assert!(allowed(&l, &format!("new{i}"), &q));
            clock.advance(Duration::from_millis(1));
        }
        assert!(l.len() < 4_000, "{} entries", l.len());
        let [after_entries, after_buckets, ..] = footprint(&l);
        assert!(
            after_entries * 10 < entries && after_buckets * 10 < buckets,
            "entries {entries} -> {after_entries}, buckets {buckets} -> {after_buckets}"
        );
        assert_consistent(&l);
        // The live keys (the last second's) kept their state through every move and rehash.
        assert!((99_100..100_000).all(|i| !l.peek(&format!("new{i}"), &q, 1).allowed));
        // And the tables grow again for the next spike.
        for i in 0..50_000 {
            assert!(allowed(&l, &format!("again{i}"), &q));
        }
        assert!(footprint(&l)[0] >= 50_000);
        assert_consistent(&l);
    }

    #[test]
    fn sweeping_shrinks_the_tables_of_both_kinds() {
        let clock = clock_at(10);
        let l = on(&clock);
        let q = Quota::per_second(1);
        let limits = list("1/s, 10/min;fixed");
        for i in 0..50_000 {
            assert!(allowed(&l, &format!("single{i}"), &q));
            assert!(all(&l, Subject::new(&format!("list{i}")), &limits).allowed());
        }
        // A few keys that stay live.
        let hour = Quota::per_hour(1);
        for i in 0..100 {
            assert!(allowed(&l, &format!("live{i}"), &hour));
        }
        let before = footprint(&l);
        assert!(before.iter().all(|&n| n >= 50_000), "{before:?}");
        clock.advance(Duration::from_secs(60)); // 00:01:10: every window has ended
        assert_eq!(l.sweep(), 100_000);
        let after = footprint(&l);
        assert!(
            after[0] < 1_000 && after[1] < 1_000 && after[2] == 0 && after[3] == 0,
            "{before:?} -> {after:?}"
        );
        assert_consistent(&l);
        assert!((0..100).all(|i| !l.peek(&format!("live{i}"), &hour, 1).allowed));
        assert_eq!(l.len(), 100);
    }

    // -----------------------------------------------------------------------------------------
    // Lists of limits

    /// 2024-03-10T00:00:00Z, in seconds since the Unix epoch.
    const MIDNIGHT: u64 = 1_710_028_800;

    /// A clock `secs` after the midnight above (negative: before it).
    fn clock_at(secs: i64) -> ManualClock {
        let at = MIDNIGHT.checked_add_signed(secs).unwrap();
        ManualClock::at(std::time::UNIX_EPOCH + Duration::from_secs(at))
    }

    fn on(clock: &ManualClock) -> MemoryLimiter {
        MemoryLimiter::builder().clock(clock.clone()).build()
    }

    fn list(text: &str) -> Limits {
        text.parse().unwrap()
    }

    fn all(l: &MemoryLimiter, subject: Subject<'_>, limits: &Limits) -> Verdict {
        l.check_all(subject, limits, 1)
            .take_ready()
            .unwrap()
            .unwrap()
    }

    fn look(l: &MemoryLimiter, subject: Subject<'_>, limits: &Limits) -> Verdict {
        RateLimiter::peek(l, subject, limits)
            .take_ready()
            .unwrap()
            .unwrap()
    }

    fn remaining(v: &Verdict) -> Vec<u32> {
        v.decisions().iter().map(|d| d.remaining).collect()
    }

    /// List entries held, over all shards.
    fn list_entries(l: &MemoryLimiter) -> usize {
        l.inner
            .shards
            .iter()
            .map(|s| s.read().unwrap().lists.len())
            .sum()
    }

    #[test]
    fn a_list_admits_what_its_tightest_limit_allows_and_a_denial_spends_nothing() {
        let clock = clock_at(10);
        let l = on(&clock);
        let limits = list("5/s, 3/h;fixed");
        let a = Subject::new("a");
        for left in [[4, 2], [3, 1], [2, 0]] {
            let v = all(&l, a, &limits);
            assert!(v.allowed());
            assert_eq!(remaining(&v), left);
        }
        for _ in 0..10 {
            let v = all(&l, a, &limits);
            assert!(!v.allowed());
            assert_eq!(v.denied_by(), Some(1));
            // The rate would have admitted, and reports what it has: nothing was spent.
            assert!(v.decisions()[0].allowed);
            assert_eq!(remaining(&v), [2, 0]);
            assert_eq!(
                v.retry_after(),
                Duration::from_secs(3590),
                "to the full hour"
            );
        }
        // A request of cost 1 would leave the rate 1: the ten denials spent none of it.
        let peeked = look(&l, a, &limits);
        assert_eq!(remaining(&peeked), [1, 0]);
        assert!(!peeked.allowed());
        // The cap's window ends at the full hour; the rate has long refilled.
        clock.advance(Duration::from_secs(3589));
        assert!(!all(&l, a, &limits).allowed());
        clock.advance(Duration::from_secs(1));
        assert_eq!((0..10).filter(|_| all(&l, a, &limits).allowed()).count(), 3);

        // The other way round: the rate denies, and the cap keeps what it had.
        let limits = list("2/h, 5/h;fixed");
        let b = Subject::new("b");
        assert!(all(&l, b, &limits).allowed());
        assert!(all(&l, b, &limits).allowed());
        let v = all(&l, b, &limits);
        assert_eq!(v.denied_by(), Some(0));
        assert_eq!(remaining(&v), [0, 3]);
        assert_eq!(remaining(&look(&l, b, &limits)), [0, 2]);
    }

    #[test]
    fn fixed_windows_reset_at_the_utc_boundary() {
        let clock = clock_at(-2); // 23:59:58 UTC
        let l = on(&clock);
        let limits = list("3/d;fixed");
        let a = Subject::new("a");
        for left in [2, 1, 0] {
            let v = all(&l, a, &limits);
            assert!(v.allowed());
            assert_eq!(remaining(&v), [left]);
            assert_eq!(v.decisions()[0].reset_after, Duration::from_secs(2));
        }
        let v = all(&l, a, &limits);
        assert!(!v.allowed());
        assert_eq!(v.retry_after(), Duration::from_secs(2));
        clock.advance(Duration::from_millis(1999));
        assert!(!all(&l, a, &limits).allowed());
        clock.advance(Duration::from_millis(1)); // midnight
        let v = all(&l, a, &limits);
        assert!(v.allowed());
        assert_eq!(remaining(&v), [2]);
        assert_eq!(v.decisions()[0].reset_after, Duration::from_secs(86_400));
        assert!(all(&l, a, &limits).allowed());
        assert!(all(&l, a, &limits).allowed());
        assert!(!all(&l, a, &limits).allowed());
    }

    #[test]
    fn check_and_peek_of_a_fixed_quota_count_a_cap() {
        let clock = clock_at(30);
        let l = on(&clock);
        let cap = Quota::per_minute(2).fixed();
        let check = |key| l.check(key, &cap, 1).take_ready().unwrap().unwrap();
        assert!(check("a").allowed);
        assert_eq!(l.peek("a", &cap, 1).remaining, 0);
        assert!(check("a").allowed);
        let denied = check("a");
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Duration::from_secs(30));
        assert!(!l.peek("a", &cap, 1).allowed);
        // The same state as a list of that one cap.
        assert!(!all(&l, Subject::new("a"), &Limits::from(cap)).allowed());
        clock.advance(Duration::from_secs(30));
        assert!(l.peek("a", &cap, 2).allowed);
        assert!(check("a").allowed);
    }

    #[test]
    fn owner_wide_items_are_shared_by_the_owners_callers_and_kept_apart_from_callers() {
        let clock = clock_at(10);
        let l = on(&clock);
        let limits = list("10/s, 2/h;fixed;owner");
        let key = |k| Subject::with_owner(k, Some("acme"));
        assert!(all(&l, key("key_1"), &limits).allowed());
        assert!(all(&l, key("key_2"), &limits).allowed());
        let v = all(&l, key("key_1"), &limits);
        assert_eq!(v.denied_by(), Some(1), "the owner's cap is shared");
        assert_eq!(remaining(&v), [9, 0], "key_1 spent one of its own rate");
        assert_eq!(l.len(), 3, "two callers and one owner");
        // Another owner's callers, and callers named like the owner, share nothing with it.
        assert!(all(&l, Subject::with_owner("key_3", Some("other")), &limits).allowed());
        let caps = list("2/h;fixed");
        let named_acme = Subject::with_owner("acme", Some("other"));
        assert!(all(&l, named_acme, &caps).allowed());
        assert!(all(&l, named_acme, &caps).allowed());
        assert!(!all(&l, named_acme, &caps).allowed());
        // A caller without an owner counts its owner-wide items under its own key, as its
        // other items of the same quota.
        let alone = Subject::new("solo");
        let owner_caps = list("2/h;fixed;owner");
        assert!(all(&l, alone, &owner_caps).allowed());
        assert!(all(&l, alone, &owner_caps).allowed());
        assert!(!all(&l, alone, &owner_caps).allowed());
        assert!(!all(&l, alone, &caps).allowed(), "one state for one quota");
        // A single owner-wide rate is kept under the owner, not on the single-rate path.
        let rate = list("1/h;owner");
        assert!(all(&l, key("key_1"), &rate).allowed());
        assert!(!all(&l, key("key_2"), &rate).allowed());
        assert!(
            l.check("key_2", &Quota::per_hour(1), 1)
                .take_ready()
                .unwrap()
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn shadow_items_never_deny_and_spend_only_when_the_request_is_admitted() {
        let clock = clock_at(10);
        let l = on(&clock);
        let a = Subject::new("a");
        let limits = list("1/h;shadow, 3/h;fixed");
        let first = all(&l, a, &limits);
        assert!(first.allowed());
        assert_eq!(first.shadow_denials().count(), 0);
        for _ in 0..2 {
            let v = all(&l, a, &limits);
            assert!(v.allowed());
            assert_eq!(v.shadow_denials().collect::<Vec<_>>(), [0]);
            assert_eq!(v.denied_by(), None);
        }
        let v = all(&l, a, &limits);
        assert_eq!(v.denied_by(), Some(1));
        assert_eq!(v.shadow_denials().collect::<Vec<_>>(), [0]);
        // A list all in shadow never denies.
        let shadow = list("1/h;shadow, 1/h;fixed;shadow");
        assert!((0..5).all(|_| all(&l, Subject::new("b"), &shadow).allowed()));
        // A shadow item that admits is not spent when an enforced one denies.
        let limits = list("5/h;shadow, 1/h");
        let c = Subject::new("c");
        assert!(all(&l, c, &limits).allowed());
        for _ in 0..3 {
            assert_eq!(all(&l, c, &limits).denied_by(), Some(1));
        }
        assert_eq!(
            remaining(&look(&l, c, &limits))[0],
            3,
            "spent once, by the admitted one"
        );
    }

    #[test]
    fn peek_spends_nothing_and_keeps_nothing() {
        let clock = clock_at(10);
        let l = on(&clock);
        let limits = list("2/s, 2/h;fixed, 5/min;owner");
        let a = Subject::with_owner("a", Some("o"));
        for _ in 0..5 {
            let v = look(&l, a, &limits);
            assert!(v.allowed());
            assert_eq!(remaining(&v), [1, 1, 4]);
        }
        assert_eq!(l.len(), 0, "peeking creates no entry");
        assert!(all(&l, a, &limits).allowed());
        assert_eq!(l.len(), 2);
        for _ in 0..5 {
            assert_eq!(remaining(&look(&l, a, &limits)), [0, 0, 3]);
        }
        assert!(all(&l, a, &limits).allowed());
        let v = look(&l, a, &limits);
        assert!(!v.allowed());
        assert_eq!(v.denied_by(), Some(0));
        // A single rate peeks at the single-rate path's state.
        let rate = list("3/h");
        assert!(all(&l, a, &rate).allowed());
        assert_eq!(remaining(&look(&l, a, &rate)), [1]);
        assert_eq!(l.peek("a", &Quota::per_hour(3), 1).remaining, 1);
    }

    #[test]
    fn a_single_callers_rate_takes_the_single_rate_path() {
        let clock = clock_at(10);
        let l = on(&clock);
        let q = Quota::per_hour(3);
        let limits = Limits::from(q);
        // With or without an owner, in shadow or not: one atomic entry, shared with `check`.
        assert!(all(&l, Subject::with_owner("a", Some("o")), &limits).allowed());
        assert!(allowed(&l, "a", &q));
        assert!(all(&l, Subject::new("a"), &list("3/h;shadow")).allowed());
        assert!(!allowed(&l, "a", &q));
        assert_eq!(l.len(), 1);
        assert_eq!(list_entries(&l), 0);
    }

    #[test]
    fn items_keep_apart_states_by_quota_and_equal_quotas_share_one() {
        let clock = clock_at(10);
        let l = on(&clock);
        let a = Subject::new("a");
        // A rate and a cap of the same numbers are two states.
        let limits = list("3/h, 3/h;fixed");
        assert_eq!((0..10).filter(|_| all(&l, a, &limits).allowed()).count(), 3);
        // Equal quotas in one list are one state, spent once per request.
        let b = Subject::new("b");
        let twice = list("3/h;fixed;name=one, 3/h;fixed;name=two");
        assert_eq!((0..10).filter(|_| all(&l, b, &twice).allowed()).count(), 3);
        // A changed item starts afresh; an unchanged one keeps its state.
        let changed = list("4/h, 3/h;fixed");
        let v = all(&l, a, &changed);
        assert_eq!(v.denied_by(), Some(1));
        assert_eq!(remaining(&v), [4, 0]);
        assert_eq!(
            remaining(&look(&l, a, &list("4/h"))),
            [3],
            "apart from the list's 4/h"
        );
    }

    #[test]
    fn sweeping_forgets_idle_list_entries_only() {
        let clock = clock_at(10);
        let l = on(&clock);
        let limits = list("1/s, 5/min;fixed, 100/s;owner");
        for i in 0..100 {
            let key = format!("k{i}");
            let owner = format!("o{}", i % 10);
            assert!(all(&l, Subject::with_owner(&key, Some(&owner)), &limits).allowed());
        }
        assert_eq!(l.len(), 110);
        clock.advance(Duration::from_secs(1));
        // The owners' entries hold only rates, now refilled; the callers' caps run to 00:01.
        assert_eq!(l.sweep(), 10);
        clock.advance(Duration::from_secs(48));
        assert_eq!(l.sweep(), 0);
        clock.advance(Duration::from_secs(1)); // 00:01:00
        assert_eq!(l.sweep(), 100);
        assert!(l.is_empty());
        assert_consistent(&l);
    }

    #[test]
    fn new_keys_of_either_kind_sweep_idle_list_entries() {
        let clock = clock_at(10);
        let l = on(&clock);
        let limits = list("100/s, 1000000/s;fixed");
        for i in 0..100_000 {
            assert!(all(&l, Subject::new(&format!("k{i}")), &limits).allowed());
            clock.advance(Duration::from_micros(100)); // each key idle within about 1 s
        }
        // About 10,000 keys are live at any time; the table may hold twice that per shard.
        assert!(l.len() < 30_000, "{} entries", l.len());
        // Keys of the single-rate path sweep lists too: a limiter whose callers moved from
        // lists to single rates does not keep the lists' entries.
        let before = list_entries(&l);
        clock.advance(Duration::from_secs(2));
        let q = Quota::per_second(1);
        for i in 0..before {
            assert!(allowed(&l, &format!("single{i}"), &q));
        }
        assert!(
            list_entries(&l) < before / 10,
            "{} of {before}",
            list_entries(&l)
        );
    }

    #[test]
    fn a_full_limiter_fails_closed_and_spends_nothing() {
        let clock = clock_at(10);
        let l = MemoryLimiter::builder()
            .clock(clock.clone())
            .max_keys(2)
            .build();
        let limits = list("5/h, 2/h;fixed;owner");
        let a = Subject::with_owner("a", Some("o"));
        assert!(all(&l, a, &limits).allowed());
        assert_eq!(l.len(), 2);
        let b = Subject::with_owner("b", Some("o"));
        assert!(matches!(
            l.check_all(b, &limits, 1).take_ready().unwrap(),
            Err(RateLimitError::Full)
        ));
        // The owner's cap was not spent by the request that found no room.
        let v = look(&l, a, &limits);
        assert!(v.allowed());
        assert_eq!(remaining(&v), [3, 0]);
        // Known callers keep deciding.
        assert!(all(&l, a, &limits).allowed());
        assert_eq!(all(&l, a, &limits).denied_by(), Some(1));
        // Once idle, entries make room.
        clock.advance(Duration::from_secs(3 * 3600));
        assert_eq!(l.sweep(), 2);
        assert!(all(&l, b, &limits).allowed());
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn a_list_entry_is_one_pair_of_cache_lines() {
        // Two states inline (a caller's rate and cap), the key inline up to 22 bytes.
        assert_eq!(std::mem::size_of::<ListEntry>(), 128);
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }

    #[test]
    fn the_system_clocks_wall_time_is_carried_forward_and_stays_close() {
        assert!(MemoryLimiter::new().inner.system_clock);
        assert!(
            MemoryLimiter::builder()
                .clock(SystemClock)
                .build()
                .inner
                .system_clock
        );
        let manual = MemoryLimiter::builder().clock(ManualClock::new()).build();
        assert!(
            !manual.inner.system_clock,
            "any other clock is read every time"
        );
        let l = MemoryLimiter::new();
        for _ in 0..20 {
            let derived = l.inner.wall_nanos(None);
            let read = fixed::unix_nanos(std::time::SystemTime::now());
            // Both read within moments of each other; the drift in a millisecond is tiny.
            assert!(derived.abs_diff(read) < 50_000_000, "{derived} vs {read}");
            std::thread::sleep(Duration::from_micros(700));
        }
    }

    #[test]
    fn an_entry_keeps_a_bounded_number_of_live_states() {
        let clock = clock_at(10);
        let l = on(&clock);
        let a = Subject::new("a");
        let cap = |n: u32| Limits::from(Quota::per_hour(n).fixed());
        for n in 1..=MAX_SLOTS as u32 {
            assert!(all(&l, a, &cap(n)).allowed());
        }
        let one_more = cap(MAX_SLOTS as u32 + 1);
        assert!(matches!(
            l.check_all(a, &one_more, 1).take_ready().unwrap(),
            Err(RateLimitError::Full)
        ));
        // Peeking needs no room.
        assert!(look(&l, a, &one_more).allowed());
        clock.advance(Duration::from_secs(3600));
        assert!(all(&l, a, &one_more).allowed(), "idle states make room");
        assert_eq!(l.len(), 1);
    }
}
