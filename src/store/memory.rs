use std::collections::BTreeSet;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::credits::{Ledger, check_credits, micros_since_epoch};
use super::manager::{self, check_new_record};
use super::{
    CreditCheck, CreditOutcome, CreditStore, IssuedKey, KeyManager, KeyPage, KeyStore, KeyUpdate,
    Lookup, ManageError, ManageFuture, Page, StoreError,
};
use crate::MaybeReady;
use crate::clock::{self, Clock, SharedClock};
use crate::key::{ApiKey, Credits, DigestHasher, KeyDigest, KeyFormat, KeyRecord, KeyStatus};

/// The in-memory key store: a concurrent map from key digest to record.
///
/// Lookups take one shard's read lock (never a global one) and allocate nothing. Clones share the
/// same keys, so one clone can sit in the layer while another issues and revokes keys.
///
/// It is a [`KeyManager`]; its own methods below do the same synchronously, for setting a store
/// up in `main` and in tests. It is a [`CreditStore`] too: a key's credits are counted under
/// its record's lock (one shard's write lock), so concurrent spends never take the count below
/// zero. A record from [`lookup`](KeyStore::lookup) shows the credits as of the last change of
/// the record (a lookup allocates nothing); [`get`](Self::get), the [`KeyManager`] methods and
/// [`CreditStore::credits`] show the live count.
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
    /// The record's credits, counted here rather than in the shared record, so that a spend
    /// changes one number under this entry's lock.
    ledger: Option<Ledger>,
}

impl Keys {
    /// The live credits at `now`.
    fn credits_at(&self, now: i64) -> Option<Credits> {
        self.ledger.map(|l| l.at(now).credits())
    }
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

    /// The record with this id, with its live credits.
    pub fn get(&self, id: &str) -> Option<Arc<KeyRecord>> {
        let keys = self.inner.by_id.get(id)?;
        let slot = self.inner.by_digest.get(keys.digests.first()?)?;
        Some(self.live(&keys, &slot.record))
    }

    /// `record` with the live credits of `keys`.
    fn live(&self, keys: &Keys, record: &Arc<KeyRecord>) -> Arc<KeyRecord> {
        let credits = keys.credits_at(self.now_micros());
        if credits == record.credits {
            return record.clone();
        }
        let mut live = KeyRecord::clone(record);
        live.credits = credits;
        Arc::new(live)
    }

    fn now_micros(&self) -> i64 {
        micros_since_epoch(self.clock.now())
    }

    /// Revokes the record: every key of it stops working at once.
    pub fn revoke(&self, id: &str) -> Result<(), ManageError> {
        self.update_record(id, &KeyUpdate::new().status(KeyStatus::Revoked))
            .map(drop)
    }

    /// Changes the record behind all of its keys (status, scopes, quota, tier, credits, allowed
    /// networks, expiry, metadata). The id, owner and creation time cannot change, and a revoked record stays
    /// revoked ([`ManageError::Invalid`]). `change` sees the live credits; credits it changes are
    /// set anew (and their refill schedule starts now).
    pub fn update(&self, id: &str, change: impl FnOnce(&mut KeyRecord)) -> Result<(), ManageError> {
        self.change(id, false, |record| {
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
        if let Some(credits) = &record.credits {
            check_credits(credits)?;
        }
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
            ledger: record
                .credits
                .map(|c| Ledger::new(c, micros_since_epoch(now))),
        });
        Ok(record)
    }

    fn update_record(&self, id: &str, update: &KeyUpdate) -> Result<KeyRecord, ManageError> {
        self.change(id, update.credits.is_some(), |record| update.apply(record))
    }

    /// Changes the record `id` with `change`, which may refuse; returns the new record.
    /// `change` sees the live credits; they are set anew when `sets_credits` or when `change`
    /// changed them.
    fn change(
        &self,
        id: &str,
        sets_credits: bool,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), ManageError>,
    ) -> Result<KeyRecord, ManageError> {
        let mut keys = self.inner.by_id.get_mut(id).ok_or(ManageError::NotFound)?;
        let first = keys.digests.first().ok_or(ManageError::NotFound)?;
        let old = match self.inner.by_digest.get(first) {
            Some(slot) => slot.record.clone(),
            None => return Err(ManageError::NotFound),
        };
        let now = self.clock.now();
        let live = keys.credits_at(micros_since_epoch(now));
        let mut record = KeyRecord::clone(&old);
        record.credits = live;
        change(&mut record)?;
        let sets_credits = sets_credits || record.credits != live;
        if sets_credits && let Some(credits) = &record.credits {
            check_credits(credits)?;
        }
        // What identifies a record is not the change's to make.
        record.id.clone_from(&old.id);
        record.owner.clone_from(&old.owner);
        record.created_at = old.created_at;
        if sets_credits {
            keys.ledger = record
                .credits
                .map(|c| Ledger::new(c, micros_since_epoch(now)));
        }
        if record.status == KeyStatus::Revoked && keys.revoked_at.is_none() {
            keys.revoked_at = Some(now);
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
        let record = self.live(&keys, &record);
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

/// Every answer is ready at once: a spend takes the record's entry lock for one subtraction.
impl CreditStore for MemoryStore {
    fn spend(&self, id: &str, cost: u32) -> CreditCheck {
        let outcome = match self.inner.by_id.get_mut(id) {
            Some(mut keys) => {
                let now = self.now_micros();
                match &mut keys.ledger {
                    Some(ledger) => ledger.spend(cost, now),
                    None => CreditOutcome::NoBudget,
                }
            }
            None => CreditOutcome::NoBudget,
        };
        MaybeReady::ready(Ok(outcome))
    }

    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>> {
        let credits = self
            .inner
            .by_id
            .get(id)
            .and_then(|keys| keys.credits_at(self.now_micros()));
        MaybeReady::ready(Ok(credits))
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

    fn spend(store: &MemoryStore, id: &str, cost: u32) -> CreditOutcome {
        let mut check = CreditStore::spend(store, id, cost);
        check
            .take_ready()
            .expect("memory spends are ready")
            .unwrap()
    }

    #[test]
    fn credits_are_counted_refilled_and_set_by_updates_only() {
        use crate::key::Refill;
        let clock = ManualClock::new();
        let store = MemoryStore::new().with_clock(clock.clone());
        let refill = Refill::new(3, Duration::from_secs(60));
        let key = store
            .issue(KeyRecord::new("k", "o").with_credits(Credits::new(2).with_refill(refill)))
            .unwrap();
        assert_eq!(spend(&store, "k", 2), CreditOutcome::Spent { remaining: 0 });
        assert_eq!(
            spend(&store, "k", 1),
            CreditOutcome::Exhausted {
                refill_in: Some(Duration::from_secs(60))
            }
        );
        assert_eq!(store.get("k").unwrap().credits.unwrap().remaining, 0);
        // A lookup shows the credits as of the last change; it allocates nothing.
        assert_eq!(lookup(&store, &key).unwrap().credits.unwrap().remaining, 2);

        // Other changes keep the count.
        store
            .update("k", |r| r.scopes = ["x"].into_iter().collect())
            .unwrap();
        store
            .update_record("k", &KeyUpdate::new().tier(Some("gold")))
            .unwrap();
        assert_eq!(store.get("k").unwrap().credits.unwrap().remaining, 0);
        assert_eq!(store.get("k").unwrap().tier.as_deref(), Some("gold"));

        clock.advance(Duration::from_secs(59));
        assert_eq!(
            spend(&store, "k", 1),
            CreditOutcome::Exhausted {
                refill_in: Some(Duration::from_secs(1))
            }
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(spend(&store, "k", 1), CreditOutcome::Spent { remaining: 2 });

        // Setting the credits, even to what they are, restarts the schedule.
        clock.advance(Duration::from_secs(30));
        let set = Credits::new(2).with_refill(refill);
        let record = store
            .update_record("k", &KeyUpdate::new().credits(Some(set)))
            .unwrap();
        assert_eq!(record.credits, Some(set));
        clock.advance(Duration::from_secs(59));
        assert_eq!(spend(&store, "k", 1), CreditOutcome::Spent { remaining: 1 });
        clock.advance(Duration::from_secs(1));
        assert_eq!(spend(&store, "k", 1), CreditOutcome::Spent { remaining: 2 });

        // A closure that changes the credits sets them; one that removes them removes them.
        store
            .update("k", |r| r.credits = Some(Credits::new(9)))
            .unwrap();
        assert_eq!(spend(&store, "k", 9), CreditOutcome::Spent { remaining: 0 });
        store.update("k", |r| r.credits = None).unwrap();
        assert_eq!(spend(&store, "k", 1), CreditOutcome::NoBudget);
        assert_eq!(spend(&store, "nope", 1), CreditOutcome::NoBudget);

        // Out-of-range budgets are refused, and change nothing.
        let too_many = Credits::new(crate::store::MAX_CREDITS + 1);
        assert!(matches!(
            store.update_record("k", &KeyUpdate::new().credits(Some(too_many))),
            Err(ManageError::Invalid(_))
        ));
        assert!(matches!(
            store.issue(KeyRecord::new("k2", "o").with_credits(too_many)),
            Err(ManageError::Invalid(_))
        ));
        assert!(store.get("k2").is_none());
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
