use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use hashbrown::HashTable;

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
/// Each record is held once, however many indexes lead to it: the map of digests, the index by
/// id (keyed by the record's own id) and its owner's index (for [`list`](KeyManager::list)) all
/// share it, and state few records have (a rotated-out key in its grace, a revocation time,
/// credits) is kept apart, so that the others do not pay for it.
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
    /// Key digest → the record the key opens. Locked after `by_id`, before `by_owner`.
    by_digest: DashMap<KeyDigest, Slot, BuildHasherDefault<DigestHasher>>,
    /// Record id → the record, its keys, revocation time and credits. Locked first.
    by_id: ById,
    /// Owner → its records, in the order of their ids, for paging.
    by_owner: DashMap<String, BTreeSet<Owned>>,
    format: KeyFormat,
}

/// What a key's digest leads to.
enum Slot {
    /// The record's newest key: the record as it is, shared with its entry in `by_id`.
    Newest(Arc<KeyRecord>),
    /// A key rotated out, which works until its grace ends. Boxed: few keys are in a grace at
    /// once, and every other slot stays two words.
    Retiring(Box<Retiring>),
}

struct Retiring {
    /// The record, with an expiry no later than `until`, so that a cache in front stops serving
    /// it on time.
    record: Arc<KeyRecord>,
    /// When the key stops working.
    until: SystemTime,
}

impl Slot {
    /// The slot of a key rotated out that works until `until`, for `record`.
    fn retiring(record: &Arc<KeyRecord>, until: SystemTime) -> Self {
        Self::Retiring(Box::new(Retiring {
            record: expiring_by(record, until),
            until,
        }))
    }

    /// When this key stops working because it was rotated out.
    fn retire_at(&self) -> Option<SystemTime> {
        match self {
            Self::Newest(_) => None,
            Self::Retiring(r) => Some(r.until),
        }
    }

    /// Points the slot at `record` (for a key rotated out, with its expiry cut to the end of the
    /// grace).
    fn set(&mut self, record: &Arc<KeyRecord>) {
        match self {
            Self::Newest(r) => r.clone_from(record),
            Self::Retiring(r) => r.record = expiring_by(record, r.until),
        }
    }
}

/// `record`, expiring no later than `at`: shared if it does already, else a copy.
fn expiring_by(record: &Arc<KeyRecord>, at: SystemTime) -> Arc<KeyRecord> {
    if record.expires_at.is_some_and(|exp| exp <= at) {
        return record.clone();
    }
    let mut retiring = KeyRecord::clone(record);
    retiring.expires_at = Some(at);
    Arc::new(retiring)
}

/// A record and its keys, in `by_id`.
struct Entry {
    /// The record as it is: its id is the entry's key.
    record: Arc<KeyRecord>,
    /// The digest of the record's newest key.
    newest: KeyDigest,
    /// What few records have; `None` for the others, so that their entry stays small.
    rare: Option<Box<Rare>>,
}

#[derive(Default)]
struct Rare {
    /// The digests of the record's keys rotated out and still in their grace, newest first.
    retiring: Vec<KeyDigest>,
    /// When the record was revoked.
    revoked_at: Option<SystemTime>,
    /// The record's credits, counted here rather than in the shared record, so that a spend
    /// changes one number under this entry's lock.
    ledger: Option<Ledger>,
}

impl Entry {
    /// The digests of the record's keys, newest first.
    fn digests(&self) -> impl Iterator<Item = &KeyDigest> {
        let retiring = self.rare.as_deref().map_or(&[][..], |r| &r.retiring[..]);
        std::iter::once(&self.newest).chain(retiring)
    }

    fn revoked_at(&self) -> Option<SystemTime> {
        self.rare.as_ref().and_then(|r| r.revoked_at)
    }

    /// The live credits at `now`.
    fn credits_at(&self, now: i64) -> Option<Credits> {
        let ledger = self.rare.as_ref()?.ledger?;
        Some(ledger.at(now).credits())
    }

    /// The rare state, to change.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// Drops the rare state once it holds nothing.
    fn tidy(&mut self) {
        if self.rare.as_deref().is_some_and(Rare::is_empty) {
            self.rare = None;
        }
    }
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.retiring.is_empty() && self.revoked_at.is_none() && self.ledger.is_none()
    }
}

/// Records by id: a hash table sharded as a `DashMap` is, whose entries are keyed by their
/// record's own id, so that no id is held a second time.
struct ById {
    shards: Box<[RwLock<HashTable<Entry>>]>,
    shift: u32,
    hasher: foldhash::fast::RandomState,
}

impl ById {
    fn new() -> Self {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = (parallelism * 4).next_power_of_two().max(2);
        Self {
            shards: (0..shards).map(|_| RwLock::new(HashTable::new())).collect(),
            shift: 64 - shards.trailing_zeros(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The shard of `hash`: chosen by the bits under the top seven, which the table keeps in its
    /// control bytes, so that entries of one shard still differ there.
    fn shard(&self, hash: u64) -> &RwLock<HashTable<Entry>> {
        &self.shards[((hash << 7) >> self.shift) as usize]
    }

    /// `f` of the entry `id`, under its shard's read lock.
    fn get<R>(&self, id: &str, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let hash = self.hash(id);
        let table = read(self.shard(hash));
        table.find(hash, |e| e.record.id == id).map(f)
    }

    /// `f` of the entry `id`, under its shard's write lock.
    fn get_mut<R>(&self, id: &str, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let hash = self.hash(id);
        let mut table = write(self.shard(hash));
        table.find_mut(hash, |e| e.record.id == id).map(f)
    }

    /// The hash of `id` and its shard, write-locked: to add or remove an entry under one lock.
    fn lock(&self, id: &str) -> (u64, RwLockWriteGuard<'_, HashTable<Entry>>) {
        let hash = self.hash(id);
        (hash, write(self.shard(hash)))
    }

    /// Adds `entry`, whose id `table` (its shard, from [`lock`](Self::lock)) does not hold.
    fn insert(&self, table: &mut HashTable<Entry>, hash: u64, entry: Entry) {
        table.insert_unique(hash, entry, |e| self.hash(&e.record.id));
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| read(s).is_empty())
    }
}

// A panic under a lock (in a closure given to `update`) happens before the entry is changed, so
// what the lock guards is whole.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// A record in its owner's index: ordered, and found, by its id, of which the index holds no
/// copy. Replaced by each new version of the record, so that no old one is kept alive.
struct Owned(Arc<KeyRecord>);

impl Borrow<str> for Owned {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

impl PartialEq for Owned {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Owned {}

impl PartialOrd for Owned {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Owned {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.id.cmp(&other.0.id)
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
                by_id: ById::new(),
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
        self.inner.by_id.get(id, |entry| self.live(entry))
    }

    /// The record of `entry` with its live credits.
    fn live(&self, entry: &Entry) -> Arc<KeyRecord> {
        let credits = entry.credits_at(self.now_micros());
        if credits == entry.record.credits {
            return entry.record.clone();
        }
        let mut live = KeyRecord::clone(&entry.record);
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
        if self.remove_if(id, |_| true) {
            Ok(())
        } else {
            Err(ManageError::NotFound)
        }
    }

    /// Removes the record `id` if `dead` says so of it, holding its entry throughout, so that a
    /// record made anew under the same id meanwhile is never touched. Whether it was removed.
    fn remove_if(&self, id: &str, dead: impl FnOnce(&Entry) -> bool) -> bool {
        let (hash, mut table) = self.inner.by_id.lock(id);
        let Ok(found) = table.find_entry(hash, |e| e.record.id == id) else {
            return false;
        };
        if !dead(found.get()) {
            return false;
        }
        let (entry, _) = found.remove();
        for d in entry.digests() {
            self.inner.by_digest.remove(d);
        }
        self.forget_owned(&entry.record.owner, id);
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
        let (hash, mut ids) = self.inner.by_id.lock(&record.id);
        if ids.find(hash, |e| e.record.id == record.id).is_some() {
            return Err(ManageError::DuplicateId);
        }
        let now = self.clock.now();
        record.created_at.get_or_insert(now);
        let record = Arc::new(record);
        match self.inner.by_digest.entry(digest) {
            MapEntry::Occupied(_) => return Err(ManageError::DuplicateKey),
            MapEntry::Vacant(slot) => {
                slot.insert(Slot::Newest(record.clone()));
            }
        }
        // Listed before the id's shard is released, so that a concurrent removal finds it.
        self.inner
            .by_owner
            .entry(record.owner.clone())
            .or_default()
            .insert(Owned(record.clone()));
        let rare = Rare {
            retiring: Vec::new(),
            revoked_at: (record.status == KeyStatus::Revoked).then_some(now),
            ledger: record
                .credits
                .map(|c| Ledger::new(c, micros_since_epoch(now))),
        };
        let entry = Entry {
            record: record.clone(),
            newest: digest,
            rare: (!rare.is_empty()).then(|| Box::new(rare)),
        };
        self.inner.by_id.insert(&mut ids, hash, entry);
        Ok(KeyRecord::clone(&record))
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
        self.inner
            .by_id
            .get_mut(id, |entry| {
                let now = self.clock.now();
                let live = entry.credits_at(micros_since_epoch(now));
                let old = &entry.record;
                let mut record = KeyRecord::clone(old);
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
                    entry.rare().ledger = record
                        .credits
                        .map(|c| Ledger::new(c, micros_since_epoch(now)));
                }
                if record.status == KeyStatus::Revoked && entry.revoked_at().is_none() {
                    entry.rare().revoked_at = Some(now);
                }
                entry.tidy();
                let shared = Arc::new(record);
                for d in entry.digests() {
                    if let Some(mut slot) = self.inner.by_digest.get_mut(d) {
                        slot.set(&shared);
                    }
                }
                if let Some(mut owned) = self.inner.by_owner.get_mut(&shared.owner) {
                    owned.replace(Owned(shared.clone()));
                }
                entry.record = shared;
                Ok(KeyRecord::clone(&entry.record))
            })
            .ok_or(ManageError::NotFound)?
    }

    fn rotate_record(&self, id: &str, grace: Duration) -> Result<IssuedKey, ManageError> {
        let now = self.clock.now();
        let retire_at = manager::retire_at(now, grace);
        self.inner
            .by_id
            .get_mut(id, |entry| {
                // The newest key is never retiring: its record is the record as it is.
                let record = entry.record.clone();
                if record.status == KeyStatus::Revoked {
                    return Err(ManageError::invalid("a revoked key cannot be rotated"));
                }
                if let Some(rare) = &mut entry.rare {
                    rare.retiring
                        .retain(|d| self.retire(d, &record, now, retire_at));
                }
                let key = loop {
                    let key = self.inner.format.generate();
                    if let MapEntry::Vacant(slot) = self.inner.by_digest.entry(key.digest()) {
                        slot.insert(Slot::Newest(record.clone()));
                        break key;
                    }
                };
                let was_newest = std::mem::replace(&mut entry.newest, key.digest());
                if self.retire(&was_newest, &record, now, retire_at) {
                    entry.rare().retiring.insert(0, was_newest);
                }
                entry.tidy();
                Ok(IssuedKey::new(key, KeyRecord::clone(&self.live(entry))))
            })
            .ok_or(ManageError::NotFound)?
    }

    /// Retires the key `digest` of `record` at `retire_at`, at the latest: a running grace may
    /// end sooner (a second rotation with less grace, after a leak), never later. A key whose
    /// grace is over at `now` is forgotten. Whether the key is kept.
    fn retire(
        &self,
        digest: &KeyDigest,
        record: &Arc<KeyRecord>,
        now: SystemTime,
        retire_at: SystemTime,
    ) -> bool {
        let keep = match self.inner.by_digest.get_mut(digest) {
            Some(mut slot) => {
                let until = slot.retire_at().map_or(retire_at, |at| at.min(retire_at));
                if now < until && slot.retire_at() != Some(until) {
                    *slot = Slot::retiring(record, until);
                }
                now < until
            }
            None => false,
        };
        if !keep {
            self.inner.by_digest.remove(digest);
        }
        keep
    }

    fn list_records(&self, owner: &str, page: &Page) -> Result<KeyPage, ManageError> {
        page.check()?;
        let ids: Vec<String> = match self.inner.by_owner.get(owner) {
            Some(owned) => {
                let range = match &page.after {
                    Some(after) => {
                        owned.range::<str, _>((Bound::Excluded(after.as_str()), Bound::Unbounded))
                    }
                    None => owned.range::<str, _>(..),
                };
                range.take(page.limit).map(|o| o.0.id.clone()).collect()
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
        for shard in &self.inner.by_id.shards {
            for entry in write(shard).iter_mut() {
                let revoked = entry.revoked_at().is_some_and(|at| at < before);
                let expired = entry.record.expires_at.is_some_and(|at| at < before);
                if revoked || expired {
                    dead.push(entry.record.id.clone());
                    continue;
                }
                if let Some(rare) = &mut entry.rare {
                    rare.retiring.retain(|d| {
                        let retired = self.inner.by_digest.get(d).is_some_and(|s| {
                            s.retire_at().is_some_and(|at| at < before && at <= now)
                        });
                        if retired {
                            self.inner.by_digest.remove(d);
                        }
                        !retired
                    });
                }
                entry.tidy();
            }
        }
        let mut purged = 0;
        for id in dead {
            let still_dead = |entry: &Entry| {
                entry.revoked_at().is_some_and(|at| at < before)
                    || entry.record.expires_at.is_some_and(|at| at < before)
            };
            if self.remove_if(&id, still_dead) {
                purged += 1;
            }
        }
        purged
    }

    fn forget_owned(&self, owner: &str, id: &str) {
        if let MapEntry::Occupied(mut owned) = self.inner.by_owner.entry(owner.to_owned()) {
            owned.get_mut().remove(id);
            if owned.get().is_empty() {
                owned.remove();
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
        let outcome = self
            .inner
            .by_id
            .get_mut(id, |entry| {
                let now = self.now_micros();
                match entry.rare.as_mut().and_then(|r| r.ledger.as_mut()) {
                    Some(ledger) => ledger.spend(cost, now),
                    None => CreditOutcome::NoBudget,
                }
            })
            .unwrap_or(CreditOutcome::NoBudget);
        MaybeReady::ready(Ok(outcome))
    }

    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>> {
        let credits = self
            .inner
            .by_id
            .get(id, |entry| entry.credits_at(self.now_micros()))
            .flatten();
        MaybeReady::ready(Ok(credits))
    }
}

impl KeyStore for MemoryStore {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        let found = self
            .inner
            .by_digest
            .get(digest)
            .and_then(|slot| match &*slot {
                Slot::Newest(record) => Some(record.clone()),
                Slot::Retiring(r) if self.clock.now() < r.until => Some(r.record.clone()),
                Slot::Retiring(_) => None,
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
        // A second rotation forgets the retired key; without a grace, the current one too.
        let newer = store.rotate("k", Duration::ZERO).unwrap();
        assert!(lookup(&store, &new).is_none());
        assert!(lookup(&store, &newer).is_some());
        assert_eq!(keys_of(&store, "k"), 1);
        assert_eq!(store.inner.by_digest.len(), 1);
        store.remove("k").unwrap();
        assert!(store.inner.by_digest.is_empty());
        assert!(store.inner.by_owner.is_empty());
    }

    /// How many keys the record `id` has (working or not).
    fn keys_of(store: &MemoryStore, id: &str) -> usize {
        store
            .inner
            .by_id
            .get(id, |e| e.digests().count())
            .unwrap_or(0)
    }

    #[test]
    fn graces_end_sooner_never_later_and_retired_keys_are_purged() {
        let clock = ManualClock::new();
        let store = MemoryStore::new().with_clock(clock.clone());
        let a = store.issue(KeyRecord::new("k", "o")).unwrap();
        let b = store.rotate("k", Duration::from_secs(60)).unwrap();
        // A longer grace leaves `a`'s as it is.
        let c = store.rotate("k", Duration::from_secs(3600)).unwrap();
        assert_eq!(keys_of(&store, "k"), 3);
        let at = |key: &ApiKey| lookup(&store, key).and_then(|r| r.expires_at);
        assert_eq!(at(&a), Some(clock.now() + Duration::from_secs(60)));
        assert_eq!(at(&b), Some(clock.now() + Duration::from_secs(3600)));
        assert_eq!(at(&c), None);

        clock.advance(Duration::from_secs(60));
        assert!(lookup(&store, &a).is_none());
        // A shorter one cuts `b`'s; `a`, retired, is forgotten.
        let d = store.rotate("k", Duration::from_secs(10)).unwrap();
        assert_eq!(keys_of(&store, "k"), 3);
        assert_eq!(at(&b), Some(clock.now() + Duration::from_secs(10)));
        assert_eq!(at(&c), Some(clock.now() + Duration::from_secs(10)));
        assert_eq!(at(&d), None);

        clock.advance(Duration::from_secs(10));
        assert!(lookup(&store, &b).is_none());
        assert!(lookup(&store, &c).is_none());
        assert_eq!(store.purge_records(clock.now() + Duration::from_secs(1)), 0);
        assert_eq!(keys_of(&store, "k"), 1);
        assert_eq!(store.inner.by_digest.len(), 1);
        // Nothing rare is left to keep.
        assert_eq!(store.inner.by_id.get("k", |e| e.rare.is_none()), Some(true));
        assert!(lookup(&store, &d).is_some());
    }

    #[test]
    fn no_index_keeps_an_old_version_of_a_record() {
        let store = MemoryStore::new();
        let a = store
            .issue(KeyRecord::new("k", "o").with_credits(Credits::new(5)))
            .unwrap();
        let b = store.rotate("k", Duration::from_secs(60)).unwrap();
        let old = store.get("k").unwrap();
        store
            .update("k", |r| r.tier = Some("gold".to_owned()))
            .unwrap();
        assert_eq!(Arc::strong_count(&old), 1, "only this handle holds it");
        for key in [&a, &b] {
            assert_eq!(lookup(&store, key).unwrap().tier.as_deref(), Some("gold"));
        }
        let page = store.list_records("o", &Page::first(10)).unwrap();
        assert_eq!(page.records[0].tier.as_deref(), Some("gold"));
    }

    #[test]
    fn owners_page_in_id_order() {
        let store = MemoryStore::new();
        for id in ["m", "c", "x", "a", "q"] {
            store.issue(KeyRecord::new(id, "o")).unwrap();
        }
        store.issue(KeyRecord::new("b", "other")).unwrap();
        store.remove("q").unwrap();
        let ids = |page: &KeyPage| {
            page.records
                .iter()
                .map(|r| r.id.clone())
                .collect::<Vec<_>>()
        };
        let first = store.list_records("o", &Page::first(2)).unwrap();
        assert_eq!(ids(&first), ["a", "c"]);
        let next = first.next.clone().expect("more to come");
        let second = store.list_records("o", &next).unwrap();
        assert_eq!(ids(&second), ["m", "x"]);
        let last = store.list_records("o", &second.next.unwrap()).unwrap();
        assert!(last.records.is_empty() && last.next.is_none());
        // An owner's index goes with its last record.
        store.remove("b").unwrap();
        assert!(store.inner.by_owner.get("other").is_none());
        assert!(
            store
                .list_records("other", &Page::first(2))
                .unwrap()
                .records
                .is_empty()
        );
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
