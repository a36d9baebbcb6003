use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{KeyStore, Lookup};
use crate::clock::{self, Clock, SharedClock};
use crate::key::{ApiKey, DigestHasher, KeyDigest, KeyFormat, KeyRecord, KeyStatus};

/// The in-memory key store: a concurrent map from key digest to record.
///
/// Lookups take one shard's read lock (never a global one) and allocate nothing. Clones share the
/// same keys, so one clone can sit in the layer while another issues and revokes keys.
///
/// ```
/// use std::time::Duration;
/// use keygate::key::KeyRecord;
/// use keygate::store::MemoryStore;
///
/// let store = MemoryStore::new();
/// let key = store.issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]))?;
/// println!("your key (shown once): {}", key.expose_secret());
///
/// // A new key for the same record; the old one keeps working for a day.
/// let new_key = store.rotate("key_1", Duration::from_secs(86_400))?;
/// assert_ne!(key, new_key);
///
/// store.revoke("key_1")?; // both stop working
/// # Ok::<(), keygate::store::MemoryStoreError>(())
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
    /// Per handle, so that [`with_clock`](Self::with_clock) never has to copy a shared store.
    clock: SharedClock,
}

struct Inner {
    by_digest: DashMap<KeyDigest, Slot, BuildHasherDefault<DigestHasher>>,
    /// Record id → the digests of its keys (more than one while a rotation's grace lasts).
    by_id: DashMap<String, Vec<KeyDigest>>,
    format: KeyFormat,
}

struct Slot {
    record: Arc<KeyRecord>,
    /// When this key stops working because it was rotated out.
    retire_at: Option<SystemTime>,
}

/// Why an operation on a [`MemoryStore`] did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryStoreError {
    /// A record with this id exists already.
    #[error("a key record with this id exists already")]
    DuplicateId,
    /// The key is registered already (for another record or this one).
    #[error("this key is registered already")]
    DuplicateKey,
    /// No record has this id.
    #[error("no key record has this id")]
    UnknownId,
}

impl MemoryStore {
    /// An empty store issuing keys of the format `kg_…`.
    pub fn new() -> Self {
        Self::with_format(KeyFormat::new("kg_").expect("a valid constant prefix"))
    }

    /// An empty store issuing keys of `format`.
    pub fn with_format(format: KeyFormat) -> Self {
        Self {
            inner: Arc::new(Inner {
                by_digest: DashMap::default(),
                by_id: DashMap::new(),
                format,
            }),
            clock: clock::system(),
        }
    }

    /// Uses `clock` for rotation deadlines (tests move a
    /// [`ManualClock`](crate::clock::ManualClock) by hand), in this handle and the clones made
    /// from it. The keys stay shared with every clone, made before or after. Key expiry is checked
    /// by [`AuthLayer::clock`](crate::auth::AuthLayer::clock).
    #[must_use]
    pub fn with_clock(self, clock: impl Clock) -> Self {
        Self {
            clock: Arc::new(clock),
            ..self
        }
    }

    /// The format of the keys this store issues.
    pub fn format(&self) -> &KeyFormat {
        &self.inner.format
    }

    /// Issues a new key for `record` and returns its plaintext: the only time it is seen.
    pub fn issue(&self, record: KeyRecord) -> Result<ApiKey, MemoryStoreError> {
        let key = self.inner.format.generate();
        self.insert(&key, record)?;
        Ok(key)
    }

    /// Registers a key that exists already (for example one brought from an older system, in
    /// any format) for `record`.
    pub fn insert(&self, key: &ApiKey, record: KeyRecord) -> Result<(), MemoryStoreError> {
        self.insert_digest(key.digest(), record)
    }

    /// Registers a key by its digest, for keys whose plaintext was never kept.
    pub fn insert_digest(
        &self,
        digest: KeyDigest,
        record: KeyRecord,
    ) -> Result<(), MemoryStoreError> {
        let Entry::Vacant(ids) = self.inner.by_id.entry(record.id.clone()) else {
            return Err(MemoryStoreError::DuplicateId);
        };
        match self.inner.by_digest.entry(digest) {
            Entry::Occupied(_) => return Err(MemoryStoreError::DuplicateKey),
            Entry::Vacant(slot) => {
                slot.insert(Slot {
                    record: Arc::new(record),
                    retire_at: None,
                });
            }
        }
        ids.insert(vec![digest]);
        Ok(())
    }

    /// The record with this id.
    pub fn get(&self, id: &str) -> Option<Arc<KeyRecord>> {
        let digests = self.inner.by_id.get(id)?;
        let slot = self.inner.by_digest.get(digests.first()?)?;
        Some(slot.record.clone())
    }

    /// Revokes the record: every key of it stops working at once.
    pub fn revoke(&self, id: &str) -> Result<(), MemoryStoreError> {
        self.update(id, |r| r.status = KeyStatus::Revoked)
    }

    /// Changes the record behind all of its keys (status, scopes, quota, expiry, metadata). The
    /// id cannot change.
    pub fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut KeyRecord),
    ) -> Result<(), MemoryStoreError> {
        let digests = self
            .inner
            .by_id
            .get_mut(id)
            .ok_or(MemoryStoreError::UnknownId)?;
        let first = digests.first().ok_or(MemoryStoreError::UnknownId)?;
        let mut record = match self.inner.by_digest.get(first) {
            Some(slot) => KeyRecord::clone(&slot.record),
            None => return Err(MemoryStoreError::UnknownId),
        };
        change(&mut record);
        record.id = id.to_owned();
        let record = Arc::new(record);
        for d in digests.iter() {
            if let Some(mut slot) = self.inner.by_digest.get_mut(d) {
                slot.record = record.clone();
            }
        }
        Ok(())
    }

    /// Issues a new key for the record `id`. Its current keys keep working for `grace`, then
    /// fail as if unknown. A zero `grace` retires them at once.
    pub fn rotate(&self, id: &str, grace: Duration) -> Result<ApiKey, MemoryStoreError> {
        let now = self.clock.now();
        // A grace too long to be a time keeps the old keys for as long as time can say (a
        // thousand years), never retires them at once.
        let retire_at = now
            .checked_add(grace)
            .or_else(|| now.checked_add(Duration::from_secs(1000 * 365 * 86_400)))
            .unwrap_or(now);
        let mut digests = self
            .inner
            .by_id
            .get_mut(id)
            .ok_or(MemoryStoreError::UnknownId)?;
        let record = {
            let first = digests.first().ok_or(MemoryStoreError::UnknownId)?;
            self.inner
                .by_digest
                .get(first)
                .map(|s| s.record.clone())
                .ok_or(MemoryStoreError::UnknownId)?
        };
        // Forget keys whose grace is over. A running grace may end sooner (a second rotation with
        // less grace, after a leak), never later.
        digests.retain(|d| {
            let mut keep = true;
            if let Some(mut slot) = self.inner.by_digest.get_mut(d) {
                match slot.retire_at {
                    Some(at) if at <= now => keep = false,
                    Some(at) if at <= retire_at => {}
                    _ => slot.retire_at = Some(retire_at),
                }
            }
            if !keep {
                self.inner.by_digest.remove(d);
            }
            keep
        });
        let key = loop {
            let key = self.inner.format.generate();
            if let Entry::Vacant(slot) = self.inner.by_digest.entry(key.digest()) {
                slot.insert(Slot {
                    record,
                    retire_at: None,
                });
                break key;
            }
        };
        digests.insert(0, key.digest());
        Ok(key)
    }

    /// Removes the record and all its keys.
    pub fn remove(&self, id: &str) -> Result<(), MemoryStoreError> {
        let (_, digests) = self
            .inner
            .by_id
            .remove(id)
            .ok_or(MemoryStoreError::UnknownId)?;
        for d in digests {
            self.inner.by_digest.remove(&d);
        }
        Ok(())
    }

    /// How many records the store holds.
    pub fn len(&self) -> usize {
        self.inner.by_id.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.inner.by_id.is_empty()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.len())
            .field("format", &self.inner.format)
            .finish_non_exhaustive()
    }
}

impl KeyStore for MemoryStore {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        let found = self
            .inner
            .by_digest
            .get(digest)
            .and_then(|slot| match slot.retire_at {
                Some(at) if at <= self.clock.now() => None,
                _ => Some(slot.record.clone()),
            });
        Lookup::ready(Ok(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn lookup(store: &MemoryStore, key: &ApiKey) -> Option<Arc<KeyRecord>> {
        let mut l = store.lookup(&key.digest());
        l.take_ready().expect("memory lookups are ready").unwrap()
    }

    #[test]
    fn issue_lookup_revoke() {
        let store = MemoryStore::new();
        let key = store.issue(KeyRecord::new("k1", "alice")).unwrap();
        assert!(store.format().check(key.expose_secret()).is_ok());
        assert_eq!(lookup(&store, &key).unwrap().owner, "alice");
        assert_eq!(
            store.issue(KeyRecord::new("k1", "bob")),
            Err(MemoryStoreError::DuplicateId)
        );
        store.revoke("k1").unwrap();
        assert_eq!(lookup(&store, &key).unwrap().status, KeyStatus::Revoked);
        assert_eq!(store.revoke("nope"), Err(MemoryStoreError::UnknownId));
    }

    #[test]
    fn legacy_keys_and_duplicates() {
        let store = MemoryStore::new();
        let key = ApiKey::new("legacy-key-from-2019");
        store.insert(&key, KeyRecord::new("old", "carol")).unwrap();
        assert_eq!(lookup(&store, &key).unwrap().id, "old");
        assert_eq!(
            store.insert(&key, KeyRecord::new("other", "dan")),
            Err(MemoryStoreError::DuplicateKey)
        );
        // The failed insert left no half-registered id behind.
        assert!(store.get("other").is_none());
        assert!(lookup(&store, &ApiKey::new("legacy-key-from-2020")).is_none());
    }

    #[test]
    fn rotation_grace() {
        let clock = ManualClock::new();
        let store = MemoryStore::new().with_clock(clock.clone());
        let old = store.issue(KeyRecord::new("k", "o")).unwrap();
        let new = store.rotate("k", Duration::from_secs(60)).unwrap();
        assert!(lookup(&store, &old).is_some());
        assert!(lookup(&store, &new).is_some());
        clock.advance(Duration::from_secs(60));
        assert!(lookup(&store, &old).is_none());
        assert!(lookup(&store, &new).is_some());
        // A second rotation forgets the retired key and starts a new grace for the current one.
        let newer = store.rotate("k", Duration::ZERO).unwrap();
        assert!(lookup(&store, &new).is_none());
        assert!(lookup(&store, &newer).is_some());
        assert_eq!(store.inner.by_id.get("k").unwrap().len(), 2);
        store.remove("k").unwrap();
        assert!(store.inner.by_digest.is_empty());
    }

    #[test]
    fn update_applies_to_every_key_of_a_record() {
        let store = MemoryStore::new();
        let a = store.issue(KeyRecord::new("k", "o")).unwrap();
        let b = store.rotate("k", Duration::from_secs(60)).unwrap();
        store
            .update("k", |r| r.scopes = ["x"].into_iter().collect())
            .unwrap();
        assert!(lookup(&store, &a).unwrap().scopes.contains("x"));
        assert!(lookup(&store, &b).unwrap().scopes.contains("x"));
    }
}
