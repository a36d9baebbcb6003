#![doc = include_str!("../../docs/keys-and-stores.md")]

mod cached;
mod credits;
mod invalidate;
mod manager;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;
pub use cached::{CachedStore, CachedStoreBuilder, Invalidator};
pub use credits::{
    CreditCheck, CreditOutcome, CreditStore, MAX_CREDITS, MAX_REFILL_EVERY, check_credits,
};
pub use invalidate::Invalidate;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{POSTGRES_MIGRATION, PostgresStore};

pub use manager::{
    IssuedKey, KeyManager, KeyPage, KeyUpdate, ManageError, ManageFuture, Page, check_new_record,
};
pub use memory::MemoryStore;

use std::sync::Arc;

use crate::BoxError;
use crate::MaybeReady;
use crate::key::{KeyDigest, KeyRecord};

/// What a store answers: the record, `None` for an unknown digest, or an error.
pub type LookupResult = Result<Option<Arc<KeyRecord>>, StoreError>;

/// An async lookup of key records by digest.
///
/// Implement it for your own storage. It is usable as a generic parameter and as
/// `Arc<dyn KeyStore>`. The returned [`Lookup`] must not borrow from `self`: clone what the
/// lookup needs (a pool handle, an `Arc`) into it, as a tower `Service` does.
///
/// Return the record even when it is revoked, disabled or expired: keygate checks its status and
/// expiry, and rejects it exactly like an unknown key. For a key rotated out and still in its
/// grace period, return the record with an `expires_at` no later than the end of the grace, so
/// that a [`CachedStore`] in front stops serving the key on time; after the grace, `None`.
pub trait KeyStore: Send + Sync + 'static {
    /// Looks up the record whose key has this digest.
    fn lookup(&self, digest: &KeyDigest) -> Lookup;
}

impl<T: KeyStore + ?Sized> KeyStore for Arc<T> {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        (**self).lookup(digest)
    }
}

impl<T: KeyStore + ?Sized> KeyStore for Box<T> {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        (**self).lookup(digest)
    }
}

/// The future of a [`KeyStore::lookup`]: [`Lookup::ready`] for an answer known now (no
/// allocation), [`Lookup::pending`] for one to wait for.
pub type Lookup = MaybeReady<LookupResult>;

/// A store could not answer. Requests fail with 503 (gRPC `UNAVAILABLE`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store failed (connection refused, query error, ...).
    #[error("the key store is unavailable")]
    Unavailable(#[source] BoxError),
    /// The store did not answer within its deadline.
    #[error("the key store did not answer in time")]
    Timeout,
}

impl StoreError {
    /// Wraps any error as [`StoreError::Unavailable`].
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}
