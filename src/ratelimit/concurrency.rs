//! [`ConcurrencyLimiter`]: how many requests of each caller are in flight, in memory.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// The default limit on keys a [`ConcurrencyLimiter`] tracks at once.
const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Counts the requests of each key (caller) in flight, and admits a new one only while fewer
/// than a maximum are.
///
/// [`acquire`](Self::acquire) hands out a [`Permit`] that counts as one request in flight until
/// it is dropped; for a request, keygate drops it when the response body ends or is dropped (the
/// client went away), or when the request fails or is abandoned before a response.
///
/// A key with nothing in flight holds no entry: the last permit of a key removes it, under the
/// same lock as the count, so a concurrent `acquire` of that key either sees the entry before it
/// goes or makes a fresh one. Memory thus follows the requests in flight, not the keys ever
/// seen. The limiter also tracks at most `max_keys` keys at once (default 1,000,000; see
/// [`with_max_keys`](Self::with_max_keys)): a key that is new while that many keys have requests
/// in flight is refused (`acquire` returns `None`) rather than admitted unlimited.
///
/// The counts are kept in this process: each instance of a service limits its own share.
/// Clones share the counts.
///
/// ```
/// use keygate::ratelimit::ConcurrencyLimiter;
///
/// let limiter = ConcurrencyLimiter::new();
/// let first = limiter.acquire("key_1", 2).expect("nothing in flight yet");
/// let second = limiter.acquire("key_1", 2).expect("one in flight");
/// assert!(limiter.acquire("key_1", 2).is_none(), "two in flight already");
/// assert!(limiter.acquire("key_2", 2).is_some(), "another caller is counted apart");
///
/// drop(first);
/// assert_eq!(limiter.in_flight("key_1"), 1);
/// drop(second);
/// assert_eq!(limiter.in_flight("key_1"), 0);
/// assert!(limiter.is_empty(), "a key with nothing in flight is forgotten");
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Keys with at least one request in flight, and how many.
    counts: DashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    /// The entries of `counts`, kept apart so that the bound is checked without visiting every
    /// shard.
    len: AtomicUsize,
    max_keys: usize,
}

impl ConcurrencyLimiter {
    /// An empty limiter that tracks at most 1,000,000 keys at once.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// An empty limiter that tracks at most `max_keys` keys (at least 1) at once.
    ///
    /// A key with requests in flight counts as one however many it has. While `max_keys` keys
    /// have requests in flight, a request of another key is refused: the limiter fails closed,
    /// so that a flood of distinct keys can neither grow its memory without bound nor get past
    /// the limit.
    ///
    /// ```
    /// use keygate::ratelimit::ConcurrencyLimiter;
    ///
    /// let limiter = ConcurrencyLimiter::with_max_keys(1);
    /// let held = limiter.acquire("key_1", 10).unwrap();
    /// assert!(limiter.acquire("key_1", 10).is_some(), "a tracked key goes on");
    /// assert!(limiter.acquire("key_2", 10).is_none(), "no room for another key");
    /// drop(held);
    /// ```
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                counts: DashMap::with_hasher(foldhash::fast::RandomState::default()),
                len: AtomicUsize::new(0),
                max_keys: max_keys.max(1),
            }),
        }
    }

    /// A permit for one more request of `key`, or `None` when `key` already has `max` requests
    /// in flight (always, for a `max` of 0), or when `key` is new and the limiter already tracks
    /// its maximum of keys.
    ///
    /// The request counts as in flight until the permit is dropped.
    pub fn acquire(&self, key: &str, max: u32) -> Option<Permit> {
        if max == 0 {
            return None;
        }
        let inner = &self.inner;
        // A key with requests in flight: one shard lock, no allocation.
        if let Some(mut count) = inner.counts.get_mut(key) {
            if *count >= max {
                return None;
            }
            *count += 1;
            return Some(Permit::new(inner, count.key().clone()));
        }
        let key = match inner.counts.entry(Arc::from(key)) {
            // Another request of this key came in meanwhile.
            Entry::Occupied(mut entry) => {
                if *entry.get() >= max {
                    return None;
                }
                *entry.get_mut() += 1;
                entry.key().clone()
            }
            Entry::Vacant(entry) => {
                // Take a place only while there is one, so that racing new keys in other shards
                // never push the count past the bound, not even for a moment.
                let max_keys = inner.max_keys;
                let reserved = inner
                    .len
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max_keys).then_some(n + 1)
                    });
                if reserved.is_err() {
                    return None;
                }
                let key = entry.key().clone();
                entry.insert(1);
                key
            }
        };
        Some(Permit::new(inner, key))
    }

    /// How many requests of `key` are in flight now.
    pub fn in_flight(&self, key: &str) -> u32 {
        self.inner.counts.get(key).map_or(0, |count| *count)
    }

    /// How many keys have requests in flight now.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ConcurrencyLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ConcurrencyLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("keys", &self.len())
            .field("max_keys", &self.inner.max_keys)
            .finish_non_exhaustive()
    }
}

/// One request in flight for a key of a [`ConcurrencyLimiter`], until dropped.
///
/// Dropping the permit gives its place back; the key's last permit removes the key from the
/// limiter.
///
/// ```
/// use keygate::ratelimit::ConcurrencyLimiter;
///
/// let limiter = ConcurrencyLimiter::new();
/// let permit = limiter.acquire("key_1", 1).unwrap();
/// assert_eq!(permit.key(), "key_1");
/// assert!(limiter.acquire("key_1", 1).is_none());
/// drop(permit);
/// assert!(limiter.acquire("key_1", 1).is_some());
/// ```
#[must_use = "the request counts as in flight only while the permit is held"]
pub struct Permit {
    inner: Arc<Inner>,
    key: Arc<str>,
}

impl Permit {
    fn new(inner: &Arc<Inner>, key: Arc<str>) -> Self {
        Self {
            inner: inner.clone(),
            key,
        }
    }

    /// The key this permit counts for.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // The decrement and the removal of an emptied entry happen under one shard lock, so an
        // `acquire` of the same key sees either the entry still counting or no entry at all.
        let removed = self.inner.counts.remove_if_mut(&*self.key, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
        if removed.is_some() {
            self.inner.len.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::AtomicU32;

    use super::*;

    #[test]
    fn admits_up_to_max_per_key() {
        let limiter = ConcurrencyLimiter::new();
        let permits: Vec<_> = (0..3).map(|_| limiter.acquire("a", 3).unwrap()).collect();
        assert!(limiter.acquire("a", 3).is_none());
        assert_eq!(limiter.in_flight("a"), 3);
        // The maximum is the caller's of this request: a higher one admits more.
        let fourth = limiter.acquire("a", 4).unwrap();
        assert_eq!(limiter.in_flight("a"), 4);
        assert!(limiter.acquire("b", 1).is_some());
        assert_eq!(limiter.len(), 1, "b's permit is already dropped");
        drop(fourth);
        drop(permits);
        assert_eq!(limiter.in_flight("a"), 0);
        assert!(limiter.is_empty());
    }

    #[test]
    fn zero_admits_nothing_and_tracks_nothing() {
        let limiter = ConcurrencyLimiter::new();
        assert!(limiter.acquire("a", 0).is_none());
        assert!(limiter.is_empty());
    }

    #[test]
    fn clones_share_counts() {
        let limiter = ConcurrencyLimiter::new();
        let clone = limiter.clone();
        let _held = limiter.acquire("a", 1).unwrap();
        assert!(clone.acquire("a", 1).is_none());
        assert_eq!(clone.in_flight("a"), 1);
    }

    #[test]
    fn released_keys_make_room_under_max_keys() {
        let limiter = ConcurrencyLimiter::with_max_keys(2);
        let a = limiter.acquire("a", 1).unwrap();
        let b = limiter.acquire("b", 1).unwrap();
        assert!(limiter.acquire("c", 1).is_none(), "full: fails closed");
        assert_eq!(limiter.len(), 2);
        assert_eq!(limiter.in_flight("c"), 0);
        drop(a);
        let c = limiter.acquire("c", 1).unwrap();
        assert_eq!(limiter.len(), 2);
        drop((b, c));
        assert!(limiter.is_empty());
    }

    #[test]
    fn debug_names_no_more_than_counts() {
        let limiter = ConcurrencyLimiter::with_max_keys(5);
        let permit = limiter.acquire("key_1", 1).unwrap();
        assert_eq!(
            format!("{limiter:?}"),
            "ConcurrencyLimiter { keys: 1, max_keys: 5, .. }"
        );
        assert_eq!(format!("{permit:?}"), r#"Permit { key: "key_1", .. }"#);
    }

    /// Many threads acquiring and releasing the same few keys: no key ever has more than `MAX`
    /// in flight, every thread gets in eventually, and no entry is left behind.
    #[test]
    fn many_threads_never_exceed_max_and_leave_nothing() {
        const THREADS: usize = 16;
        const ROUNDS: usize = 2_000;
        const MAX: u32 = 3;
        const KEYS: [&str; 2] = ["shared_1", "shared_2"];

        let limiter = ConcurrencyLimiter::new();
        // What the threads themselves count in flight per key, next to the limiter's count.
        let observed: Arc<[AtomicU32; 2]> = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let peak = Arc::new(AtomicU32::new(0));
        let admitted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(THREADS));

        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (limiter, observed, peak, admitted, refused, start) = (
                    limiter.clone(),
                    observed.clone(),
                    peak.clone(),
                    admitted.clone(),
                    refused.clone(),
                    start.clone(),
                );
                std::thread::spawn(move || {
                    start.wait();
                    for round in 0..ROUNDS {
                        let k = (t + round) % KEYS.len();
                        match limiter.acquire(KEYS[k], MAX) {
                            Some(permit) => {
                                let now = observed[k].fetch_add(1, Ordering::SeqCst) + 1;
                                peak.fetch_max(now, Ordering::SeqCst);
                                assert!(now <= MAX, "{now} in flight for {}", KEYS[k]);
                                assert!(limiter.in_flight(KEYS[k]) <= MAX);
                                std::thread::yield_now();
                                observed[k].fetch_sub(1, Ordering::SeqCst);
                                drop(permit);
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no thread panics");
        }

        assert_eq!(
            admitted.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed),
            THREADS * ROUNDS
        );
        assert!(admitted.load(Ordering::Relaxed) > 0);
        assert!(peak.load(Ordering::SeqCst) <= MAX);
        assert_eq!(limiter.len(), 0);
        assert!(limiter.inner.counts.is_empty(), "no entry left behind");
        for key in KEYS {
            assert_eq!(limiter.in_flight(key), 0);
        }
    }

    /// Many threads each with keys of their own under a small `max_keys`: the bound holds at
    /// every moment and everything is forgotten at the end.
    #[test]
    fn many_threads_respect_max_keys() {
        const THREADS: usize = 8;
        const MAX_KEYS: usize = 4;

        let limiter = ConcurrencyLimiter::with_max_keys(MAX_KEYS);
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (limiter, start) = (limiter.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for round in 0..1_000 {
                        let key = format!("k{t}_{}", round % 3);
                        let permit = limiter.acquire(&key, 1);
                        assert!(limiter.len() <= MAX_KEYS);
                        drop(permit);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no thread panics");
        }
        assert!(limiter.is_empty());
        assert!(limiter.inner.counts.is_empty());
    }
}
