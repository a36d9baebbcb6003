use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::KeySet;
use crate::MaybeReady;

/// Where a verifier's keys come from: a fixed set, a remote JWKS, or your own source.
///
/// `current` is called on every token that is not in the cache, so it must be cheap (hand out
/// an `Arc` of a snapshot). When a token names a `kid` the current set lacks, the verifier calls
/// `unknown_kid`; a source that can fetch new keys returns a future that completes when it has
/// tried, or when the request has waited long enough, with a [`Refetch`] saying which. After
/// [`Refetch::Fetched`] the token is checked again against the then current set (401 if it still
/// lacks the `kid`); after [`Refetch::Unavailable`] the request fails with 503. Any client can
/// send a token naming any `kid` (the signature cannot be checked before the key is known), so a
/// source that fetches must throttle: return `None` while a fetch would come too soon, and bound
/// how long a request waits, so that tokens naming made-up keys cannot park requests.
pub trait KeySource: Send + Sync + 'static {
    /// The keys trusted now.
    fn current(&self) -> Arc<KeySet>;

    /// The generation of the current set (see [`KeySet`]); checked on every cache hit, so
    /// make it cheaper than `current` where you can.
    fn current_generation(&self) -> u64 {
        self.current().generation
    }

    /// A token names `kid`, which the current set lacks.
    fn unknown_kid(&self, kid: &str) -> Option<MaybeReady<Refetch>> {
        let _ = kid;
        None
    }
}

/// How a fetch of keys, asked for by a token naming an unknown `kid`, ended for the request that
/// waited for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refetch {
    /// The source fetched its keys: the token is checked against the new set.
    Fetched,
    /// The keys could not be had within the request's wait (the fetch failed, or is still under
    /// way): the request fails with 503.
    Unavailable,
}

/// A set of keys fixed in configuration; [`replace`](Self::replace) swaps it at run time.
#[derive(Clone)]
pub struct StaticKeys {
    keys: Arc<RwLock<Arc<KeySet>>>,
    generation: Arc<AtomicU64>,
}

impl StaticKeys {
    /// A source of these keys.
    pub fn new(keys: KeySet) -> Self {
        Self {
            generation: Arc::new(AtomicU64::new(keys.generation)),
            keys: Arc::new(RwLock::new(Arc::new(keys))),
        }
    }

    /// Replaces the keys (rotation): tokens of removed keys stop verifying at once, cached or
    /// not.
    pub fn replace(&self, keys: KeySet) {
        let generation = keys.generation;
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        self.generation.store(generation, Ordering::Release);
    }
}

impl KeySource for StaticKeys {
    fn current(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn current_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StaticKeys").field(&self.current()).finish()
    }
}
