use std::collections::BTreeSet;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::manager::{self, check_new_record};
use super::{
    IssuedKey, KeyManager, KeyPage, KeyStore, KeyUpdate, Lookup, ManageError, ManageFuture, Page,
};
use crate::clock::{self, Clock, SharedClock};
use crate::key::{ApiKey, DigestHasher, KeyDigest, KeyFormat, KeyRecord, KeyStatus};

/// The in-memory key store: a concurrent map from key digest to record.
///
/// Lookups take one shard's read lock (never a global one) and allocate nothing. Clones share the
/// same keys, so one clone can sit in the layer while another issues and revokes keys.
///
/// It is a [`KeyManager`]; its own methods below do the same synchronously, for setting a store
/// up in `main` and in tests.
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
/// # Ok::<(), keygate::store::ManageError>(())
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
    /// Per handle, so that [`with_clock`](Self::with_clock) never has to copy a shared store.
    clock: SharedClock,
}

struct Inner {
    by_digest: DashMap<KeyDigest, Slot, BuildHasherDefault<DigestHasher>>,
    /// Record id → its keys and when it was revoked. Locked before `by_digest`, then `by_owner`.
    by_id: DashMap<String, Keys>,
    /// Owner → the ids of its records, in order, for paging.
    by_owner: DashMap<String, BTreeSet<String>>,
    format: KeyFormat,
}

struct Keys {
    /// The digests of the record's keys, newest first (more than one while a rotation's grace
    /// lasts).
    digests: Vec<KeyDigest>,
    revoked_at: Option<SystemTime>,
}

struct Slot {
    /// The record; for a key rotated out, with an expiry no later than `retire_at`, so that a
    /// cache in front stops serving it on time.
    record: Arc<KeyRecord>,
    /// When this key stops working because it was rotated out.
    retire_at: Option<SystemTime>,
}

impl Slot {
    /// Points the slot at `record`, its expiry cut to the slot's retire time.
    fn set(&mut self, record: &Arc<KeyRecord>) {
        self.record = match self.retire_at {
            Some(at) if record.expires_at.is_none_or(|exp| at < exp) => {
                let mut retiring = KeyRecord::clone(record);
                retiring.expires_at = Some(at);
                Arc::new(retiring)
            }
            _ => record.clone(),
        };
    }
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
                by_owner: DashMap::new(),
                format,
            }),
            clock: clock::system(),
        }
    }

    /// Uses `clock` for rotation deadlines, creation and revocation times (tests move a
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
    pub fn issue(&self, record: KeyRecord) -> Result<ApiKey, ManageError> {
        self.issue_record(record).map(|issued| issued.key)
    }

    /// Registers a key that exists already (for example one brought from an older system, in
    /// any format) for `record`.
    pub fn insert(&self, key: &ApiKey, record: KeyRecord) -> Result<(), ManageError> {
        self.insert_digest(key.digest(), record)
    }

    /// Registers a key by its digest, for keys whose plaintext was never kept.
    pub fn insert_digest(&self, digest: KeyDigest, record: KeyRecord) -> Result<(), ManageError> {
        self.insert_record(digest, record).map(drop)
    }

    /// The record with this id.
    pub fn get(&self, id: &str) -> Option<Arc<KeyRecord>> {
        let keys = self.inner.by_id.get(id)?;
        let slot = self.inner.by_digest.get(keys.digests.first()?)?;
        Some(slot.record.clone())
    }

    /// Revokes the record: every key of it stops working at once.
    pub fn revoke(&self, id: &str) -> Result<(), ManageError> {
        self.update_record(id, &KeyUpdate::new().status(KeyStatus::Revoked))
            .map(drop)
    }

    /// Changes the record behind all of its keys (status, scopes, quota, expiry, metadata). The
    /// id, owner and creation time cannot change, and a revoked record stays revoked
    /// ([`ManageError::Invalid`]).
    pub fn update(&self, id: &str, change: impl FnOnce(&mut KeyRecord)) -> Result<(), ManageError> {
        self.change(id, |record| {
            let was = record.status;
            change(record);
            if was == KeyStatus::Revoked && record.status != KeyStatus::Revoked {
                return Err(ManageError::invalid("a revoked key stays revoked"));
            }
            Ok(())
        })
        .map(drop)
    }

    /// Issues a new key for the record `id`. Its current keys keep working for `grace`, then
    /// fail as if unknown. A zero `grace` retires them at once.
    pub fn rotate(&self, id: &str, grace: Duration) -> Result<ApiKey, ManageError> {
        self.rotate_record(id, grace).map(|issued| issued.key)
    }

    /// Removes the record and all its keys.
    pub fn remove(&self, id: &str) -> Result<(), ManageError> {
        if self.remove_if(id, |_, _| true) {
            Ok(())
        } else {
            Err(ManageError::NotFound)
        }
    }

    /// Removes the record `id` if `dead` says so of it, holding its entry throughout, so that a
    /// record made anew under the same id meanwhile is never touched. Whether it was removed.
    fn remove_if(&self, id: &str, dead: impl FnOnce(&Keys, Option<&KeyRecord>) -> bool) -> bool {
        let Entry::Occupied(entry) = self.inner.by_id.entry(id.to_owned()) else {
            return false;
        };
        let record = entry
            .get()
            .digests
            .first()
            .and_then(|d| self.inner.by_digest.get(d).map(|s| s.record.clone()));
        if !dead(entry.get(), record.as_deref()) {
            return false;
        }
        for d in &entry.get().digests {
            self.inner.by_digest.remove(d);
        }
        if let Some(record) = record {
            self.forget_owned(&record.owner, id);
        }
        entry.remove();
        true
    }

    /// How many records the store holds.
    pub fn len(&self) -> usize {
        self.inner.by_id.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.inner.by_id.is_empty()
    }

    fn issue_record(&self, record: KeyRecord) -> Result<IssuedKey, ManageError> {
        check_new_record(&record)?;
        loop {
            let key = self.inner.format.generate();
            match self.insert_record(key.digest(), record.clone()) {
                Ok(record) => return Ok(IssuedKey::new(key, record)),
                // A generated key that collides (never, with 190 random bits) gets another try.
                Err(ManageError::DuplicateKey) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn insert_record(
        &self,
        digest: KeyDigest,
        mut record: KeyRecord,
    ) -> Result<KeyRecord, ManageError> {
        check_new_record(&record)?;
        let Entry::Vacant(ids) = self.inner.by_id.entry(record.id.clone()) else {
            return Err(ManageError::DuplicateId);
        };
        let now = self.clock.now();
        record.created_at.get_or_insert(now);
        match self.inner.by_digest.entry(digest) {
            Entry::Occupied(_) => return Err(ManageError::DuplicateKey),
            Entry::Vacant(slot) => {
                slot.insert(Slot {
                    record: Arc::new(record.clone()),
                    retire_at: None,
                });
            }
        }
        // Listed before the id entry is released, so that a concurrent removal finds it.
        self.inner
            .by_owner
            .entry(record.owner.clone())
            .or_default()
            .insert(record.id.clone());
        ids.insert(Keys {
            digests: vec![digest],
            revoked_at: (record.status == KeyStatus::Revoked).then_some(now),
        });
        Ok(record)
    }

    fn update_record(&self, id: &str, update: &KeyUpdate) -> Result<KeyRecord, ManageError> {
        self.change(id, |record| update.apply(record))
    }

    /// Changes the record `id` with `change`, which may refuse; returns the new record.
    fn change(
        &self,
        id: &str,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), ManageError>,
    ) -> Result<KeyRecord, ManageError> {
        let mut keys = self.inner.by_id.get_mut(id).ok_or(ManageError::NotFound)?;
        let first = keys.digests.first().ok_or(ManageError::NotFound)?;
        let old = match self.inner.by_digest.get(first) {
            Some(slot) => slot.record.clone(),
            None => return Err(ManageError::NotFound),
        };
        let mut record = KeyRecord::clone(&old);
        change(&mut record)?;
        // What identifies a record is not the change's to make.
        record.id.clone_from(&old.id);
        record.owner.clone_from(&old.owner);
        record.created_at = old.created_at;
        if record.status == KeyStatus::Revoked && keys.revoked_at.is_none() {
            keys.revoked_at = Some(self.clock.now());
        }
        let shared = Arc::new(record.clone());
        for d in &keys.digests {
            if let Some(mut slot) = self.inner.by_digest.get_mut(d) {
                slot.set(&shared);
            }
        }
        Ok(record)
    }

    fn rotate_record(&self, id: &str, grace: Duration) -> Result<IssuedKey, ManageError> {
        let now = self.clock.now();
        let retire_at = manager::retire_at(now, grace);
        let mut keys = self.inner.by_id.get_mut(id).ok_or(ManageError::NotFound)?;
        // The newest key is never retiring: its record is the record as it is.
        let record = {
            let first = keys.digests.first().ok_or(ManageError::NotFound)?;
            self.inner
                .by_digest
                .get(first)
                .map(|s| s.record.clone())
                .ok_or(ManageError::NotFound)?
        };
        if record.status == KeyStatus::Revoked {
            return Err(ManageError::invalid("a revoked key cannot be rotated"));
        }
        // Forget keys whose grace is over. A running grace may end sooner (a second rotation with
        // less grace, after a leak), never later.
        keys.digests.retain(|d| {
            let mut keep = true;
            if let Some(mut slot) = self.inner.by_digest.get_mut(d) {
                match slot.retire_at {
                    Some(at) if at <= now => keep = false,
                    Some(at) if at <= retire_at => {}
                    _ => {
                        slot.retire_at = Some(retire_at);
                        slot.set(&record);
                    }
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
                    record: record.clone(),
                    retire_at: None,
                });
                break key;
            }
        };
        keys.digests.insert(0, key.digest());
        Ok(IssuedKey::new(key, KeyRecord::clone(&record)))
    }

    fn list_records(&self, owner: &str, page: &Page) -> Result<KeyPage, ManageError> {
        page.check()?;
        let ids: Vec<String> = match self.inner.by_owner.get(owner) {
            Some(ids) => {
                let range = match &page.after {
                    Some(after) => ids.range::<String, _>((
                        std::ops::Bound::Excluded(after),
                        std::ops::Bound::Unbounded,
                    )),
                    None => ids.range::<String, _>(..),
                };
                range.take(page.limit).cloned().collect()
            }
            None => Vec::new(),
        };
        let records = ids
            .iter()
            .filter_map(|id| self.get(id).map(|r| KeyRecord::clone(&r)))
            .collect();
        // Where the next page starts comes from the ids read: a record removed meanwhile must
        // not end the paging early.
        let mut page_of = KeyPage::new(records, page.limit);
        page_of.next = match ids.last() {
            Some(last) if ids.len() >= page.limit => Some(Page::after(last.clone(), page.limit)),
            _ => None,
        };
        Ok(page_of)
    }

    fn purge_records(&self, before: SystemTime) -> u64 {
        let now = self.clock.now();
        let mut dead = Vec::new();
        for mut entry in self.inner.by_id.iter_mut() {
            let id = entry.key().clone();
            let keys = entry.value_mut();
            let revoked = keys.revoked_at.is_some_and(|at| at < before);
            let expired = keys
                .digests
                .first()
                .and_then(|d| self.inner.by_digest.get(d))
                .is_some_and(|s| s.record.expires_at.is_some_and(|at| at < before));
            if revoked || expired {
                dead.push(id);
                continue;
            }
            keys.digests.retain(|d| {
                let retired = self
                    .inner
                    .by_digest
                    .get(d)
                    .is_some_and(|s| s.retire_at.is_some_and(|at| at < before && at <= now));
                if retired {
                    self.inner.by_digest.remove(d);
                }
                !retired
            });
        }
        let mut purged = 0;
        for id in dead {
            let still_dead = |keys: &Keys, record: Option<&KeyRecord>| {
                keys.revoked_at.is_some_and(|at| at < before)
                    || record.is_some_and(|r| r.expires_at.is_some_and(|at| at < before))
            };
            if self.remove_if(&id, still_dead) {
                purged += 1;
            }
        }
        purged
    }

    fn forget_owned(&self, owner: &str, id: &str) {
        if let Entry::Occupied(mut ids) = self.inner.by_owner.entry(owner.to_owned()) {
            ids.get_mut().remove(id);
            if ids.get().is_empty() {
                ids.remove();
            }
        }
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

/// Every call is answered at once: the futures are ready when made.
impl KeyManager for MemoryStore {
    fn format(&self) -> &KeyFormat {
        &self.inner.format
    }

    fn issue(&self, record: KeyRecord) -> ManageFuture<'_, IssuedKey> {
        ready(self.issue_record(record))
    }

    fn insert(&self, digest: KeyDigest, record: KeyRecord) -> ManageFuture<'_, KeyRecord> {
        ready(self.insert_record(digest, record))
    }

    fn get(&self, id: &str) -> ManageFuture<'_, Option<KeyRecord>> {
        ready(Ok(MemoryStore::get(self, id).map(|r| KeyRecord::clone(&r))))
    }

    fn list(&self, owner: &str, page: Page) -> ManageFuture<'_, KeyPage> {
        ready(self.list_records(owner, &page))
    }

    fn update(&self, id: &str, update: KeyUpdate) -> ManageFuture<'_, KeyRecord> {
        ready(self.update_record(id, &update))
    }

    fn rotate(&self, id: &str, grace: Duration) -> ManageFuture<'_, IssuedKey> {
        ready(self.rotate_record(id, grace))
    }

    fn delete(&self, id: &str) -> ManageFuture<'_, ()> {
        ready(self.remove(id))
    }

    fn purge(&self, before: SystemTime) -> ManageFuture<'_, u64> {
        ready(Ok(self.purge_records(before)))
    }
}

fn ready<'a, T: Send + 'a>(result: Result<T, ManageError>) -> ManageFuture<'a, T> {
    Box::pin(std::future::ready(result))
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
            Err(ManageError::DuplicateId)
        );
        store.revoke("k1").unwrap();
        assert_eq!(lookup(&store, &key).unwrap().status, KeyStatus::Revoked);
        assert_eq!(store.revoke("nope"), Err(ManageError::NotFound));
    }

    #[test]
    fn legacy_keys_and_duplicates() {
        let store = MemoryStore::new();
        let key = ApiKey::new("legacy-key-from-2019");
        store.insert(&key, KeyRecord::new("old", "carol")).unwrap();
        assert_eq!(lookup(&store, &key).unwrap().id, "old");
        assert_eq!(
            store.insert(&key, KeyRecord::new("other", "dan")),
            Err(ManageError::DuplicateKey)
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
        assert_eq!(store.inner.by_id.get("k").unwrap().digests.len(), 2);
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
