//! Key stores: where keygate looks up the [`KeyRecord`] behind a presented key's digest.
//!
//! A store knows nothing of HTTP. It is asked one question — *which record has this digest?* —
//! and answers with the record, with "not found", or with a [`StoreError`] when it cannot answer
//! (the request then fails with 503, never with 401: an outage must not look like a bad key).
//!
//! [`MemoryStore`] is the embedded default. To plug in your own, implement [`KeyStore`]:
//!
//! ```
//! use std::{collections::HashMap, sync::Arc};
//! use keygate::key::{KeyDigest, KeyRecord};
//! use keygate::store::{KeyStore, Lookup};
//!
//! /// Records loaded once at start, e.g. from a config file.
//! struct FixedStore(HashMap<KeyDigest, Arc<KeyRecord>>);
//!
//! impl KeyStore for FixedStore {
//!     fn lookup(&self, digest: &KeyDigest) -> Lookup {
//!         // Answers at once: no allocation, no task switch.
//!         Lookup::ready(Ok(self.0.get(digest).cloned()))
//!     }
//! }
//!
//! /// A store that has to wait for a database.
//! #[derive(Clone)]
//! struct RemoteStore { /* a connection pool, cheap to clone */ }
//!
//! impl KeyStore for RemoteStore {
//!     fn lookup(&self, digest: &KeyDigest) -> Lookup {
//!         let (this, digest) = (self.clone(), *digest);
//!         Lookup::pending(async move {
//!             let _ = (this, digest); // query by digest here
//!             Ok(None)
//!         })
//!     }
//! }
//! ```

mod memory;

pub use memory::{MemoryStore, MemoryStoreError};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::BoxError;
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
/// expiry, and rejects it exactly like an unknown key.
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

/// The future of a [`KeyStore::lookup`]: either an answer that is already known (no allocation)
/// or a boxed future.
#[must_use = "a lookup does nothing unless awaited"]
pub struct Lookup(Repr);

enum Repr {
    Ready(Option<LookupResult>),
    Pending(Pin<Box<dyn Future<Output = LookupResult> + Send>>),
}

impl Lookup {
    /// An answer known now, as an in-memory store has it.
    pub fn ready(result: LookupResult) -> Self {
        Self(Repr::Ready(Some(result)))
    }

    /// An answer that needs waiting for.
    pub fn pending<F>(future: F) -> Self
    where
        F: Future<Output = LookupResult> + Send + 'static,
    {
        Self(Repr::Pending(Box::pin(future)))
    }

    /// Takes the answer if it is known without waiting.
    pub(crate) fn take_ready(&mut self) -> Option<LookupResult> {
        match &mut self.0 {
            Repr::Ready(r) => r.take(),
            Repr::Pending(_) => None,
        }
    }
}

impl Future for Lookup {
    type Output = LookupResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LookupResult> {
        match &mut self.0 {
            Repr::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(StoreError::Unavailable(
                "lookup polled after it finished".into(),
            )))),
            Repr::Pending(f) => f.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Ready(_) => f.write_str("Lookup::Ready"),
            Repr::Pending(_) => f.write_str("Lookup::Pending"),
        }
    }
}

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
