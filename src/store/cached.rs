//! [`CachedStore`]: a bounded cache in front of any [`KeyStore`].

use std::error::Error;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use quick_cache::sync::{Cache, DefaultLifecycle, EntryAction, EntryResult, PlaceholderGuard};
use quick_cache::{OptionsBuilder, UnitWeighter};

use super::{
    CreditCheck, CreditStore, Invalidate, IssuedKey, KeyManager, KeyPage, KeyStore, KeyUpdate,
    Lookup, LookupResult, ManageError, ManageFuture, Page, StoreError,
};
use crate::MaybeReady;
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::key::{Credits, KeyDigest, KeyFormat, KeyRecord};
use crate::metrics::{CacheCounters, CacheResult};
use crate::outage::{OutageLog, info_recovered, warn_outage};

/// How long a record is answered from the cache without asking the backend, by default.
const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// How long past its TTL a record is still answered while the backend fails, by default.
const DEFAULT_STALE: Duration = Duration::from_secs(300);
/// How long an unknown digest is remembered as unknown, by default.
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// How many digests the cache holds at most, by default.
const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// How long a lookup waits for the backend, by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

type Map = Cache<MapKey, Entry, UnitWeighter, SeededDigestHash, Lifecycle>;
type Lifecycle = DefaultLifecycle<MapKey, Entry>;
type Guard<'a> = PlaceholderGuard<'a, MapKey, Entry, UnitWeighter, SeededDigestHash, Lifecycle>;

/// A digest as the map keys it: compared as plain bytes. [`KeyDigest`] compares in constant
/// time, which costs a third of a hit here and protects nothing in a map of digests: a
/// comparison that stops at the first differing byte tells how many leading bytes of the
/// SHA-256 of a guess match those of a key's, and a key cannot be found from that (the probe
/// of any hash map is no more constant-time anyway).
#[derive(Clone, Copy, PartialEq, Eq)]
struct MapKey([u8; 32]);

impl MapKey {
    #[inline]
    fn of(digest: &KeyDigest) -> Self {
        Self(*digest.as_bytes())
    }
}

impl std::hash::Hash for MapKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

/// How the map hashes digests. They are SHA-256 outputs, but clients choose them (any key made
/// up is cached as unknown), and could search for keys whose digests share the bits that a hash
/// taking their first bytes as they are would use. So 16 of their bytes go through one folded
/// multiply with two seeds random to each cache, as `foldhash` mixes its input: one
/// multiplication, where hashing all 32 bytes costs several.
#[derive(Clone)]
struct SeededDigestHash([u64; 2]);

impl SeededDigestHash {
    fn new() -> Self {
        let random = std::collections::hash_map::RandomState::new();
        Self([random.hash_one(1u64), random.hash_one(2u64)])
    }
}

impl BuildHasher for SeededDigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher {
            seeds: self.0,
            hash: 0,
        }
    }
}

struct DigestHasher {
    seeds: [u64; 2],
    hash: u64,
}

impl Hasher for DigestHasher {
    /// `MapKey` writes its 32 bytes at once.
    fn write(&mut self, bytes: &[u8]) {
        let word = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let product = u128::from(word(0) ^ self.seeds[0]) * u128::from(word(8) ^ self.seeds[1]);
        self.hash ^= (product as u64) ^ ((product >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A cache in front of a [`KeyStore`] (PostgreSQL, Redis, your own), itself a `KeyStore`.
///
/// - **Hits** younger than the [TTL](CachedStoreBuilder::ttl) (30 s by default) are answered at
///   once ([`Lookup::ready`](crate::MaybeReady::ready)): one read lock of one shard of the map
///   and an `Arc` clone, no allocation, no global lock.
/// - **Stale-if-error.** Past its TTL a record is looked up again. If the backend fails or does
///   not answer within the [timeout](CachedStoreBuilder::timeout) (1 s by default), the last
///   record it gave is served until it is TTL + [stale](CachedStoreBuilder::stale) old (300 s
///   past the TTL by default); after that the lookup fails with the backend's [`StoreError`]
///   (503). While one lookup refreshes a record, the other lookups of the same key get the
///   record being refreshed at once rather than wait, for at most the timeout; this also spaces
///   out the retries of a failing backend to one per key per timeout.
/// - **Negative caching.** An unknown digest is remembered as unknown for the
///   [negative TTL](CachedStoreBuilder::negative_ttl) (5 s by default), so that a flood of made-up
///   keys does not reach the backend more than once per key. Unknown digests are not served
///   stale: past their negative TTL, a failing backend fails their lookups. Errors are never
///   cached.
/// - **Single-flight.** Concurrent lookups of a digest that is not cached make one backend call;
///   the others wait for its answer (its error too). If the lookup that makes the call is
///   dropped (its client hung up), one of the waiting lookups makes it instead.
/// - **Bounded.** At most [`max_entries`](CachedStoreBuilder::max_entries) digests (100,000 by
///   default); which ones go is up to the map's S3-FIFO eviction, which keeps the keys that are
///   used again over the ones seen once (such as made-up keys).
///
/// Every lookup that reaches the backend answers within the timeout; these need a tokio runtime
/// with its timer, unless the backend answers at once.
///
/// Clones share the cache. [`invalidator`](Self::invalidator) gives the handle a store's `watch`
/// method calls when another instance changes a key; changes made through this `CachedStore`'s
/// own [`KeyManager`] methods are forgotten here at once. Without notifications, a change made
/// elsewhere is seen within the TTL (the negative TTL for a new key).
///
/// `Debug` shows the settings and how many entries the cache holds.
///
/// ```
/// use std::time::Duration;
/// use keygate::auth::AuthLayer;
/// use keygate::key::KeyRecord;
/// use keygate::store::{CachedStore, MemoryStore};
///
/// let backend = MemoryStore::new(); // in production: a database-backed store
/// backend.issue(KeyRecord::new("key_1", "acme"))?;
/// let store = CachedStore::builder(backend)
///     .ttl(Duration::from_secs(30))
///     .stale(Duration::from_secs(300))
///     .negative_ttl(Duration::from_secs(5))
///     .max_entries(100_000)
///     .timeout(Duration::from_secs(1))
///     .build();
/// let layer = AuthLayer::new(store.clone());
/// store.invalidate_id("key_1"); // e.g. after a change made elsewhere
/// # drop(layer);
/// # Ok::<(), keygate::store::ManageError>(())
/// ```
pub struct CachedStore<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    map: Map,
    settings: Settings,
    /// `None`: the system's monotonic clock, read without a virtual call.
    clock: Option<SharedClock>,
    /// Bumped by every invalidation, so that a backend answer that was asked for before an
    /// invalidation and arrives after it is not kept.
    epoch: AtomicU64,
    /// Numbers each backend answer, so that exactly that entry can be removed again.
    stamps: AtomicU64,
    /// Backend failures hidden by serving stale records (the others reach the layer, which logs
    /// them).
    outage: OutageLog,
    /// Counts the lookups by result (with the `metrics` feature).
    counters: CacheCounters,
    store: S,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    ttl: Duration,
    stale: Duration,
    negative_ttl: Duration,
    timeout: Duration,
    max_entries: usize,
    ttl_nanos: u64,
    usable_nanos: u64,
    negative_nanos: u64,
    timeout_nanos: u64,
}

/// What the cache holds for a digest. Times are nanoseconds on the cache's monotonic clock.
#[derive(Clone)]
struct Entry {
    /// The record, or `None` for a digest the backend does not know.
    record: Option<Arc<KeyRecord>>,
    /// Answered without asking the backend until then. 0 for a failure.
    fresh_until: u64,
    /// Answered when the backend fails until then (`fresh_until` for unknown digests).
    usable_until: u64,
    /// No new refresh before then: one is running, or was started less than a timeout ago.
    retry_at: u64,
    /// Which backend answer this is.
    stamp: u64,
    /// A failed backend call, handed to the lookups that waited for it and removed at once.
    failure: Option<Arc<Failure>>,
}

/// A backend error, shared by the lookups that waited for the call that failed.
enum Failure {
    Timeout,
    Unavailable(Arc<dyn Error + Send + Sync + 'static>),
}

/// The cause of a shared [`StoreError::Unavailable`]: the backend's error, as it said it.
struct SharedCause(Arc<dyn Error + Send + Sync + 'static>);

impl fmt::Display for SharedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for SharedCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause's own `Debug` may show more than its message does.
        f.debug_tuple("SharedCause")
            .field(&crate::outage::Chain(&*self.0).to_string())
            .finish()
    }
}

impl Error for SharedCause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

impl Failure {
    /// Splits a backend error into what the waiting lookups get and what the caller gets.
    fn share(error: StoreError) -> (Arc<Self>, StoreError) {
        match error {
            StoreError::Timeout => (Arc::new(Self::Timeout), StoreError::Timeout),
            StoreError::Unavailable(cause) => {
                let cause: Arc<dyn Error + Send + Sync> = Arc::from(cause);
                let error = StoreError::Unavailable(Box::new(SharedCause(cause.clone())));
                (Arc::new(Self::Unavailable(cause)), error)
            }
        }
    }

    fn to_error(&self) -> StoreError {
        match self {
            Self::Timeout => StoreError::Timeout,
            Self::Unavailable(cause) => {
                StoreError::Unavailable(Box::new(SharedCause(cause.clone())))
            }
        }
    }
}

/// What a lookup that missed the fast path does, decided under the shard's lock.
enum Step {
    /// Answer this.
    Serve(Option<Arc<KeyRecord>>),
    /// Refresh the entry, serving this record if the backend fails before `usable_until`.
    Refresh {
        stale: Option<Arc<KeyRecord>>,
        usable_until: u64,
    },
}

impl<S: KeyStore> CachedStore<S> {
    /// A cache in front of `store` with the default settings: TTL 30 s, stale 300 s, negative
    /// TTL 5 s, 100,000 entries, timeout 1 s.
    pub fn new(store: S) -> Self {
        Self::builder(store).build()
    }

    /// A builder for a cache in front of `store`, starting from the default settings.
    pub fn builder(store: S) -> CachedStoreBuilder<S> {
        CachedStoreBuilder {
            store,
            ttl: DEFAULT_TTL,
            stale: DEFAULT_STALE,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_entries: DEFAULT_MAX_ENTRIES,
            timeout: DEFAULT_TIMEOUT,
            clock: None,
        }
    }
}

impl<S> CachedStore<S> {
    /// The backend, e.g. to call its `watch` method with [`invalidator`](Self::invalidator).
    pub fn get_ref(&self) -> &S {
        &self.inner.store
    }

    /// How many digests the cache holds (known and unknown ones).
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.inner.map.is_empty()
    }

    /// Forgets every cached key of the record with this id: its next lookups ask the backend.
    ///
    /// A scan of the cache (invalidations are rare, lookups are not, so the cache keeps no
    /// index that every answer would have to update).
    pub fn invalidate_id(&self, id: &str) {
        self.inner.forget_id(id);
    }

    /// Forgets what the cache holds for this digest, a known or an unknown key.
    pub fn invalidate_digest(&self, digest: &KeyDigest) {
        self.inner.forget_digest(digest);
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        self.inner.forget_all();
    }
}

impl<S: KeyStore> CachedStore<S> {
    /// A handle that forgets entries of this cache, for a store's `watch` method (it calls the
    /// handle's [`Invalidate`] methods for each change notification). It does not keep the
    /// cache alive: once every clone of this `CachedStore` (and every lookup still running) is
    /// gone, it does nothing and [`Invalidate::is_closed`] is true.
    ///
    /// ```
    /// use keygate::store::{CachedStore, Invalidate, MemoryStore};
    ///
    /// let store = CachedStore::new(MemoryStore::new());
    /// let invalidator = store.invalidator();
    /// invalidator.invalidate_id("key_1");
    /// assert!(!invalidator.is_closed());
    /// drop(store);
    /// assert!(invalidator.is_closed());
    /// ```
    pub fn invalidator(&self) -> Invalidator {
        let target: Weak<dyn Forget> = Arc::downgrade(&self.inner) as Weak<dyn Forget>;
        Invalidator { target }
    }
}

impl<S> Clone for CachedStore<S> {
    /// Another handle on the same cache and backend.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("CachedStore")
            .field("ttl", &s.ttl)
            .field("stale", &s.stale)
            .field("negative_ttl", &s.negative_ttl)
            .field("timeout", &s.timeout)
            .field("max_entries", &s.max_entries)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl<S: KeyStore> KeyStore for CachedStore<S> {
    #[inline]
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        let inner = &*self.inner;
        // Read first: the clock's latency overlaps the map's.
        let now = inner.now();
        if let Some(entry) = inner.map.get(&MapKey::of(digest)) {
            // Fresh, or stale while a refresh runs (a failure is neither).
            let result = if now < entry.fresh_until {
                match entry.record {
                    Some(_) => Some(CacheResult::Hit),
                    None => Some(CacheResult::NegativeHit),
                }
            } else if now < entry.usable_until && now < entry.retry_at {
                Some(CacheResult::Stale)
            } else {
                None
            };
            if let Some(result) = result {
                inner.counters.count(result);
                return Lookup::ready(Ok(entry.record));
            }
        }
        inner.counters.count(CacheResult::Miss);
        let inner = self.inner.clone();
        let digest = *digest;
        Lookup::pending(async move { inner.resolve(digest).await })
    }
}

impl<S: KeyStore> Inner<S> {
    /// A lookup that the fast path could not answer: refresh, fill, or wait for a fill.
    async fn resolve(&self, digest: KeyDigest) -> LookupResult {
        let deadline = tokio::time::Instant::now().checked_add(self.settings.timeout);
        // Read before the backend is asked: an invalidation after this makes the answer suspect.
        let epoch = self.epoch.load(Ordering::SeqCst);
        let stamp = self.stamps.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now();
        let retry_at = now.saturating_add(self.settings.timeout_nanos);
        // A zero timeout: never block the thread on another lookup's fill.
        let step = self
            .map
            .entry(&MapKey::of(&digest), Some(Duration::ZERO), |_, e| {
                if e.failure.is_none() {
                    if now < e.fresh_until || (now < e.usable_until && now < e.retry_at) {
                        return EntryAction::Retain(Step::Serve(e.record.clone()));
                    }
                    if now < e.usable_until {
                        e.retry_at = retry_at;
                        return EntryAction::Retain(Step::Refresh {
                            stale: e.record.clone(),
                            usable_until: e.usable_until,
                        });
                    }
                }
                EntryAction::ReplaceWithGuard
            });
        match step {
            EntryResult::Retained(Step::Serve(record)) => Ok(record),
            EntryResult::Retained(Step::Refresh {
                stale,
                usable_until,
            }) => {
                self.refresh(digest, stale, usable_until, epoch, stamp, deadline)
                    .await
            }
            EntryResult::Replaced(guard, _) | EntryResult::Vacant(guard) => {
                self.fill(guard, digest, epoch, stamp, deadline).await
            }
            // Another lookup is filling the entry (`Removed` is never asked for).
            EntryResult::Timeout | EntryResult::Removed(..) => {
                self.wait(digest, epoch, stamp, deadline).await
            }
        }
    }

    /// Waits for the lookup that fills the entry, or takes over if it was dropped.
    async fn wait(
        &self,
        digest: KeyDigest,
        epoch: u64,
        stamp: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> LookupResult {
        let key = MapKey::of(&digest);
        let joined = self.map.get_value_or_guard_async(&key);
        let joined = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, joined).await {
                Ok(joined) => joined,
                Err(_) => return Err(StoreError::Timeout),
            },
            None => joined.await,
        };
        match joined {
            // The answer of the fill we waited for (or, if it just ended, the entry it left).
            Ok(entry) => match entry.failure {
                Some(failure) => Err(failure.to_error()),
                None => Ok(entry.record),
            },
            Err(guard) => self.fill(guard, digest, epoch, stamp, deadline).await,
        }
    }

    /// Asks the backend for an entry nobody may be served from, with lookups possibly waiting.
    async fn fill(
        &self,
        guard: Guard<'_>,
        digest: KeyDigest,
        epoch: u64,
        stamp: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> LookupResult {
        match self.ask(&digest, deadline).await {
            Ok(answer) => {
                info_recovered!(self.outage, "key store behind the cache");
                let entry = self.answer(answer.clone(), stamp);
                // `Err`: the entry was invalidated meanwhile; the waiting lookups get it anyway.
                let _ = guard.insert(entry);
                self.settle(&digest, epoch, stamp);
                Ok(answer)
            }
            Err(error) => {
                // The waiting lookups get the error through the entry, which goes at once: the
                // next lookup asks again.
                let (failure, error) = Failure::share(error);
                let _ = guard.insert(Entry {
                    record: None,
                    fresh_until: 0,
                    usable_until: 0,
                    retry_at: 0,
                    stamp,
                    failure: Some(failure),
                });
                self.map
                    .remove_if(&MapKey::of(&digest), |e| e.stamp == stamp);
                Err(error)
            }
        }
    }

    /// Refreshes an entry past its TTL; the other lookups are served `stale` meanwhile.
    async fn refresh(
        &self,
        digest: KeyDigest,
        stale: Option<Arc<KeyRecord>>,
        usable_until: u64,
        epoch: u64,
        stamp: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> LookupResult {
        match self.ask(&digest, deadline).await {
            Ok(answer) => {
                info_recovered!(self.outage, "key store behind the cache");
                if self.epoch.load(Ordering::SeqCst) == epoch {
                    self.map
                        .insert(MapKey::of(&digest), self.answer(answer.clone(), stamp));
                    self.settle(&digest, epoch, stamp);
                }
                Ok(answer)
            }
            // Nothing was invalidated since the refresh started: the stale record is the last
            // word of the backend.
            Err(error)
                if self.now() < usable_until && self.epoch.load(Ordering::SeqCst) == epoch =>
            {
                warn_outage!(self.outage, error, "key store behind the cache");
                Ok(stale)
            }
            Err(error) => Err(error),
        }
    }

    /// The backend's answer, within the deadline.
    async fn ask(
        &self,
        digest: &KeyDigest,
        deadline: Option<tokio::time::Instant>,
    ) -> LookupResult {
        let mut lookup = self.store.lookup(digest);
        if let Some(answer) = lookup.take_ready() {
            return answer;
        }
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, lookup)
                .await
                .unwrap_or(Err(StoreError::Timeout)),
            None => lookup.await,
        }
    }
}

impl<S> Inner<S> {
    #[inline]
    fn now(&self) -> u64 {
        match &self.clock {
            None => SystemClock.monotonic_nanos(),
            Some(clock) => clock.monotonic_nanos(),
        }
    }

    /// The entry for a backend answer received now.
    fn answer(&self, record: Option<Arc<KeyRecord>>, stamp: u64) -> Entry {
        let now = self.now();
        let s = &self.settings;
        let (fresh_until, usable_until) = match record {
            Some(_) => (
                now.saturating_add(s.ttl_nanos),
                now.saturating_add(s.usable_nanos),
            ),
            None => {
                let until = now.saturating_add(s.negative_nanos);
                (until, until)
            }
        };
        Entry {
            record,
            fresh_until,
            usable_until,
            retry_at: 0,
            stamp,
            failure: None,
        }
    }

    /// Removes the entry `stamp` just put in if something was invalidated since the backend was
    /// asked: its answer may predate the change. (An invalidation bumps the epoch before it
    /// removes entries, so an answer put in before the bump is removed by the invalidation and
    /// one put in after it is removed here.)
    fn settle(&self, digest: &KeyDigest, epoch: u64, stamp: u64) {
        if self.epoch.load(Ordering::SeqCst) != epoch {
            self.map
                .remove_if(&MapKey::of(digest), |e| e.stamp == stamp);
        }
    }
}

/// What an [`Invalidator`] calls: the cache, whatever its backend.
trait Forget: Send + Sync {
    fn forget_id(&self, id: &str);
    fn forget_digest(&self, digest: &KeyDigest);
    fn forget_all(&self);
}

impl<S: Send + Sync> Forget for Inner<S> {
    fn forget_id(&self, id: &str) {
        Inner::forget_id(self, id);
    }

    fn forget_digest(&self, digest: &KeyDigest) {
        Inner::forget_digest(self, digest);
    }

    fn forget_all(&self) {
        Inner::forget_all(self);
    }
}

impl<S> Inner<S> {
    fn forget_id(&self, id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.map
            .retain(|_, e| e.record.as_ref().is_none_or(|r| r.id != id));
    }

    fn forget_digest(&self, digest: &KeyDigest) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.map.remove(&MapKey::of(digest));
    }

    fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.map.clear();
    }
}

/// A handle that forgets entries of a [`CachedStore`], from
/// [`CachedStore::invalidator`]: what a store's `watch` method is given. Clones forget in the
/// same cache. It holds the cache weakly: once the cache is gone it does nothing, and
/// [`is_closed`](Invalidate::is_closed) says so.
#[derive(Clone)]
pub struct Invalidator {
    target: Weak<dyn Forget>,
}

impl Invalidate for Invalidator {
    fn invalidate_id(&self, id: &str) {
        if let Some(cache) = self.target.upgrade() {
            cache.forget_id(id);
        }
    }

    fn invalidate_digest(&self, digest: &KeyDigest) {
        if let Some(cache) = self.target.upgrade() {
            cache.forget_digest(digest);
        }
    }

    fn invalidate_all(&self) {
        if let Some(cache) = self.target.upgrade() {
            cache.forget_all();
        }
    }

    fn is_closed(&self) -> bool {
        self.target.strong_count() == 0
    }
}

impl fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invalidator")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Settings of a [`CachedStore`], from [`CachedStore::builder`].
///
/// ```
/// use std::time::Duration;
/// use keygate::clock::ManualClock;
/// use keygate::store::{CachedStore, MemoryStore};
///
/// let clock = ManualClock::new(); // tests move time by hand
/// let store = CachedStore::builder(MemoryStore::new())
///     .ttl(Duration::from_secs(10))
///     .clock(clock.clone())
///     .build();
/// # drop(store);
/// ```
pub struct CachedStoreBuilder<S> {
    store: S,
    ttl: Duration,
    stale: Duration,
    negative_ttl: Duration,
    max_entries: usize,
    timeout: Duration,
    clock: Option<SharedClock>,
}

impl<S: KeyStore> CachedStoreBuilder<S> {
    /// How long a record is answered from the cache without asking the backend (30 s by
    /// default). A change made elsewhere is seen within it when no notification tells this
    /// cache. Zero makes every lookup ask the backend, save those that arrive while another
    /// lookup of the same key does (stale records are still served when it fails).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long past its TTL a record is still answered when the backend fails or times out
    /// (300 s by default: long enough to ride out a database failover or restart). Zero turns
    /// stale-if-error off. The price: a key revoked elsewhere while this instance cannot reach
    /// the backend works here until the window ends.
    #[must_use]
    pub fn stale(mut self, stale: Duration) -> Self {
        self.stale = stale;
        self
    }

    /// How long a digest the backend does not know is remembered as unknown (5 s by default). A
    /// key created elsewhere works here after at most this long, when no notification tells
    /// this cache; keys created through this `CachedStore` work at once.
    #[must_use]
    pub fn negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.negative_ttl = negative_ttl;
        self
    }

    /// How many digests (known and unknown keys) the cache holds at most (100,000 by default;
    /// at least 1). About 100 bytes each (the digest, the entry and the map's bookkeeping),
    /// plus the records.
    #[must_use]
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// How long a lookup waits for the backend (1 s by default); longer, it fails with
    /// [`StoreError::Timeout`], or is answered with the stale record if there is one.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock the TTLs are measured on ([`Clock::monotonic_nanos`]); by default the
    /// system's monotonic clock. Tests move a [`ManualClock`](crate::clock::ManualClock) by
    /// hand. The backend timeout is measured on tokio's clock.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The cache.
    pub fn build(self) -> CachedStore<S> {
        let max_entries = self.max_entries.max(1);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let settings = Settings {
            ttl: self.ttl,
            stale: self.stale,
            negative_ttl: self.negative_ttl,
            timeout: self.timeout,
            max_entries,
            ttl_nanos: nanos(self.ttl),
            usable_nanos: nanos(self.ttl.saturating_add(self.stale)),
            negative_nanos: nanos(self.negative_ttl),
            timeout_nanos: nanos(self.timeout),
        };
        CachedStore {
            inner: Arc::new(Inner {
                map: new_map(max_entries),
                settings,
                clock: self.clock,
                epoch: AtomicU64::new(0),
                stamps: AtomicU64::new(0),
                outage: OutageLog::new(),
                counters: CacheCounters::new(),
                store: self.store,
            }),
        }
    }
}

impl<S> fmt::Debug for CachedStoreBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStoreBuilder")
            .field("ttl", &self.ttl)
            .field("stale", &self.stale)
            .field("negative_ttl", &self.negative_ttl)
            .field("timeout", &self.timeout)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// A map of at most `max_entries` entries. The map splits its capacity evenly between its
/// shards; giving each exactly `max_entries / shards` keeps the total within `max_entries`.
fn new_map(max_entries: usize) -> Map {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut shards = cores.saturating_mul(4).clamp(1, 256).next_power_of_two();
    // Shards of fewer than 32 entries would evict too early.
    while shards > 1 && max_entries / shards < 32 {
        shards /= 2;
    }
    let capacity = (max_entries / shards * shards) as u64;
    let options = OptionsBuilder::new()
        .shards(shards)
        .estimated_items_capacity(max_entries)
        .weight_capacity(capacity)
        .build()
        .expect("both capacities are set");
    Map::with_options(
        options,
        UnitWeighter,
        SeededDigestHash::new(),
        Lifecycle::default(),
    )
}

/// Every call goes to the backend. After a change, or a failure that may hide one, this cache
/// forgets what the change made stale: the record's keys (by id) for `update`, `revoke`,
/// `rotate` and `delete`, the new key's digest (possibly cached as unknown) for `issue`,
/// `insert` and `rotate`. So this instance never serves a stale record of its own change; other
/// instances learn of it through their store's notifications. `purge` forgets nothing: what it
/// deletes (revoked and expired records, retired keys) is refused already.
impl<S: KeyStore + KeyManager> KeyManager for CachedStore<S> {
    fn format(&self) -> &KeyFormat {
        self.inner.store.format()
    }

    fn issue(&self, record: KeyRecord) -> ManageFuture<'_, IssuedKey> {
        let call = self.inner.store.issue(record);
        Box::pin(async move {
            let issued = call.await?;
            self.invalidate_digest(&issued.key.digest());
            Ok(issued)
        })
    }

    fn insert(&self, digest: KeyDigest, record: KeyRecord) -> ManageFuture<'_, KeyRecord> {
        let call = self.inner.store.insert(digest, record);
        Box::pin(async move {
            let result = call.await;
            // A duplicate key proves the digest is registered: a cached "unknown" is wrong too.
            if may_have_changed(&result) || matches!(result, Err(ManageError::DuplicateKey)) {
                self.invalidate_digest(&digest);
            }
            result
        })
    }

    fn get(&self, id: &str) -> ManageFuture<'_, Option<KeyRecord>> {
        self.inner.store.get(id)
    }

    fn list(&self, owner: &str, page: Page) -> ManageFuture<'_, KeyPage> {
        self.inner.store.list(owner, page)
    }

    fn update(&self, id: &str, update: KeyUpdate) -> ManageFuture<'_, KeyRecord> {
        let call = self.inner.store.update(id, update);
        self.forget_after(id, call)
    }

    fn revoke(&self, id: &str) -> ManageFuture<'_, KeyRecord> {
        let call = self.inner.store.revoke(id);
        self.forget_after(id, call)
    }

    fn rotate(&self, id: &str, grace: Duration) -> ManageFuture<'_, IssuedKey> {
        let call = self.inner.store.rotate(id, grace);
        let id = id.to_owned();
        Box::pin(async move {
            let result = call.await;
            if may_have_changed(&result) {
                self.invalidate_id(&id);
            }
            if let Ok(issued) = &result {
                self.invalidate_digest(&issued.key.digest());
            }
            result
        })
    }

    fn delete(&self, id: &str) -> ManageFuture<'_, ()> {
        let call = self.inner.store.delete(id);
        self.forget_after(id, call)
    }

    fn purge(&self, before: SystemTime) -> ManageFuture<'_, u64> {
        self.inner.store.purge(before)
    }
}

/// Credits are never cached: every spend and every read of the count goes to the backend, so
/// that every instance counts one budget. (A record this cache answers a lookup with shows the
/// credits as of when it was read.)
impl<S: CreditStore> CreditStore for CachedStore<S> {
    fn spend(&self, id: &str, cost: u32) -> CreditCheck {
        self.inner.store.spend(id, cost)
    }

    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>> {
        self.inner.store.credits(id)
    }
}

impl<S: KeyStore> CachedStore<S> {
    /// `call`, then forgets the record `id` if it may have changed.
    fn forget_after<'a, T: Send + 'a>(
        &'a self,
        id: &str,
        call: ManageFuture<'a, T>,
    ) -> ManageFuture<'a, T> {
        let id = id.to_owned();
        Box::pin(async move {
            let result = call.await;
            if may_have_changed(&result) {
                self.invalidate_id(&id);
            }
            result
        })
    }
}

/// Whether a management call may have changed the store: it succeeded, or it failed in a way
/// that does not say whether the change was made (a lost connection after a commit).
fn may_have_changed<T>(result: &Result<T, ManageError>) -> bool {
    matches!(result, Ok(_) | Err(ManageError::Unavailable(_)))
}
