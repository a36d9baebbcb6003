use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::BoxError;
use crate::client_addr::Networks;
use crate::key::Credits;
use crate::key::{ApiKey, KeyDigest, KeyFormat, KeyRecord, KeyStatus, Scopes};
use crate::limits::Limits;

/// The future of a [`KeyManager`] call. Management is not on the request path, so one boxed
/// future per call is its whole cost.
pub type ManageFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ManageError>> + Send + 'a>>;

/// The management side of a key store: issue, insert, read, list, update, revoke, rotate, delete
/// and purge key records.
///
/// [`MemoryStore`](super::MemoryStore), `PostgresStore` (feature `postgres`) and `RedisStore`
/// (feature `redis`) implement it with the same behaviour, checked by one conformance suite;
/// `CachedStore` passes it through and forgets what the change made
/// stale. The admin HTTP API (feature `admin`) is written against it alone.
///
/// The rules every implementation keeps:
///
/// - A record has one **id**, unique in the store, and one or more **keys**, each known by its
///   digest only. The plaintext of a key leaves the store once: in the [`IssuedKey`] of
///   [`issue`](Self::issue) or [`rotate`](Self::rotate).
/// - Records come back with [`created_at`](KeyRecord::created_at) set (by the store when the
///   record did not bring one).
/// - A revoked record stays revoked: an update that would make it active or disabled again is
///   [`ManageError::Invalid`].
/// - [`list`](Self::list) orders an owner's records by id (as bytes, the order of `str`) and
///   pages by id.
///
/// ```
/// # async fn demo() -> Result<(), keygate::store::ManageError> {
/// use std::time::Duration;
/// use keygate::key::KeyRecord;
/// use keygate::store::{KeyManager, KeyUpdate, MemoryStore, Page};
///
/// let store = MemoryStore::new();
/// let keys: &dyn KeyManager = &store;
/// let issued = keys.issue(KeyRecord::new("key_1", "acme").with_scopes(["read"])).await?;
/// println!("shown once: {}", issued.key.expose_secret());
///
/// keys.update("key_1", KeyUpdate::new().scopes(["read", "write"])).await?;
/// let page = keys.list("acme", Page::first(50)).await?;
/// assert_eq!(page.records.len(), 1);
///
/// let rotated = keys.rotate("key_1", Duration::from_secs(3600)).await?;
/// assert_ne!(rotated.key, issued.key);
/// keys.revoke("key_1").await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
pub trait KeyManager: Send + Sync + 'static {
    /// The format of the keys [`issue`](Self::issue) and [`rotate`](Self::rotate) generate.
    fn format(&self) -> &KeyFormat;

    /// Creates `record` with a newly generated key, and returns the key's plaintext: the only
    /// time anyone sees it. [`ManageError::DuplicateId`] if the id is taken.
    fn issue(&self, record: KeyRecord) -> ManageFuture<'_, IssuedKey>;

    /// Creates `record` for a key that exists already (brought from another system, in any
    /// format), known by its digest. [`ManageError::DuplicateId`] if the id is taken,
    /// [`ManageError::DuplicateKey`] if the digest belongs to a record already.
    fn insert(&self, digest: KeyDigest, record: KeyRecord) -> ManageFuture<'_, KeyRecord>;

    /// The record with this id, whatever its status; `None` if there is none.
    fn get(&self, id: &str) -> ManageFuture<'_, Option<KeyRecord>>;

    /// One page of `owner`'s records, ordered by id.
    fn list(&self, owner: &str, page: Page) -> ManageFuture<'_, KeyPage>;

    /// Applies `update` to the record behind every key of it, and returns the new record.
    fn update(&self, id: &str, update: KeyUpdate) -> ManageFuture<'_, KeyRecord>;

    /// Revokes the record: every key of it stops working, for good. Revoking a revoked record
    /// changes nothing and succeeds.
    fn revoke(&self, id: &str) -> ManageFuture<'_, KeyRecord> {
        self.update(id, KeyUpdate::new().status(KeyStatus::Revoked))
    }

    /// Generates a new key for the record. Its current keys keep working for `grace`, then fail
    /// like unknown keys; a zero `grace` retires them at once. A running grace may be cut
    /// short by a later rotation, never lengthened. While its grace runs, a rotated-out key looks
    /// up to the record with its expiry cut to the end of the grace (when that comes first), so
    /// that a cache in front stops serving it on time. A revoked record cannot be rotated
    /// ([`ManageError::Invalid`]).
    fn rotate(&self, id: &str, grace: Duration) -> ManageFuture<'_, IssuedKey>;

    /// Deletes the record and all its keys.
    fn delete(&self, id: &str) -> ManageFuture<'_, ()>;

    /// Deletes what can no longer work: records revoked before `before`, records whose expiry
    /// is before `before`, and rotated-out keys retired before `before`. Returns how many
    /// records it deleted.
    fn purge(&self, before: SystemTime) -> ManageFuture<'_, u64>;
}

macro_rules! forward_key_manager {
    ($($ty:ty),*) => {$(
        impl<T: KeyManager + ?Sized> KeyManager for $ty {
            fn format(&self) -> &KeyFormat {
                (**self).format()
            }
            fn issue(&self, record: KeyRecord) -> ManageFuture<'_, IssuedKey> {
                (**self).issue(record)
            }
            fn insert(&self, digest: KeyDigest, record: KeyRecord) -> ManageFuture<'_, KeyRecord> {
                (**self).insert(digest, record)
            }
            fn get(&self, id: &str) -> ManageFuture<'_, Option<KeyRecord>> {
                (**self).get(id)
            }
            fn list(&self, owner: &str, page: Page) -> ManageFuture<'_, KeyPage> {
                (**self).list(owner, page)
            }
            fn update(&self, id: &str, update: KeyUpdate) -> ManageFuture<'_, KeyRecord> {
                (**self).update(id, update)
            }
            fn revoke(&self, id: &str) -> ManageFuture<'_, KeyRecord> {
                (**self).revoke(id)
            }
            fn rotate(&self, id: &str, grace: Duration) -> ManageFuture<'_, IssuedKey> {
                (**self).rotate(id, grace)
            }
            fn delete(&self, id: &str) -> ManageFuture<'_, ()> {
                (**self).delete(id)
            }
            fn purge(&self, before: SystemTime) -> ManageFuture<'_, u64> {
                (**self).purge(before)
            }
        }
    )*};
}

forward_key_manager!(Arc<T>, Box<T>);

/// A newly generated key and its record.
///
/// `Debug` shows the key's prefix only.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IssuedKey {
    /// The plaintext key: give it to its owner now; the store keeps only its digest.
    pub key: ApiKey,
    /// The record the key belongs to.
    pub record: KeyRecord,
}

impl IssuedKey {
    /// Pairs a key with its record (for implementers of [`KeyManager`]).
    pub fn new(key: ApiKey, record: KeyRecord) -> Self {
        Self { key, record }
    }
}

/// Which page of a [`KeyManager::list`]: up to `limit` records with ids after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page {
    /// Records with ids strictly after this one; `None` for the first page.
    pub after: Option<String>,
    /// At most this many records, 1 to [`Page::MAX_LIMIT`].
    pub limit: usize,
}

impl Page {
    /// The largest page a store returns.
    pub const MAX_LIMIT: usize = 1000;

    /// The first `limit` records.
    pub fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }

    /// The `limit` records after the one with id `after`.
    pub fn after(after: impl Into<String>, limit: usize) -> Self {
        Self {
            after: Some(after.into()),
            limit,
        }
    }

    /// Checks the limit: [`ManageError::Invalid`] for 0 or more than [`Page::MAX_LIMIT`].
    pub fn check(&self) -> Result<(), ManageError> {
        if self.limit == 0 || self.limit > Self::MAX_LIMIT {
            return Err(ManageError::invalid(format!(
                "a page holds 1 to {} records",
                Self::MAX_LIMIT
            )));
        }
        Ok(())
    }
}

/// A page of records, and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct KeyPage {
    /// The records, ordered by id.
    pub records: Vec<KeyRecord>,
    /// The next page, when there may be more records.
    pub next: Option<Page>,
}

impl KeyPage {
    /// A page of `records` ordered by id, read with `limit`: a full page says where the next
    /// one starts (for implementers of [`KeyManager`]).
    pub fn new(records: Vec<KeyRecord>, limit: usize) -> Self {
        let next = match records.last() {
            Some(last) if records.len() >= limit => Some(Page::after(last.id.clone(), limit)),
            _ => None,
        };
        Self { records, next }
    }
}

/// A change to a record: each field set is replaced, the others are kept.
///
/// ```
/// use keygate::Quota;
/// use keygate::key::{KeyRecord, KeyStatus};
/// use keygate::store::KeyUpdate;
///
/// let update = KeyUpdate::new()
///     .scopes(["weather:read"])
///     .quota(Some(Quota::per_minute(60)))
///     .status(KeyStatus::Disabled);
/// let mut record = KeyRecord::new("k", "acme");
/// update.apply(&mut record)?;
/// assert_eq!(record.status, KeyStatus::Disabled);
/// # Ok::<(), keygate::store::ManageError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct KeyUpdate {
    /// New scopes.
    pub scopes: Option<Scopes>,
    /// New limits; `Some(None)` removes the key's own limits.
    pub quota: Option<Option<Limits>>,
    /// A new tier; `Some(None)` removes it.
    pub tier: Option<Option<String>>,
    /// New credits (the remaining count and refill schedule, set as given); `Some(None)`
    /// removes the key's budget.
    pub credits: Option<Option<Credits>>,
    /// New networks the key may be used from; `Some(None)` lets it be used from anywhere.
    pub allowed_ips: Option<Option<Networks>>,
    /// A new status.
    pub status: Option<KeyStatus>,
    /// A new expiry; `Some(None)` makes the key never expire.
    pub expires_at: Option<Option<SystemTime>>,
    /// New metadata, replacing all of it.
    pub metadata: Option<BTreeMap<String, String>>,
}

impl KeyUpdate {
    /// A change that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the scopes.
    #[must_use]
    pub fn scopes<S: Into<Box<str>>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = Some(scopes.into_iter().collect());
        self
    }

    /// Replaces the key's own limits (`None`: the layer's default or the key's tier applies).
    #[must_use]
    pub fn quota<L: Into<Limits>>(mut self, quota: Option<L>) -> Self {
        self.quota = Some(quota.map(Into::into));
        self
    }

    /// Replaces the key's tier.
    #[must_use]
    pub fn tier(mut self, tier: Option<impl Into<String>>) -> Self {
        self.tier = Some(tier.map(Into::into));
        self
    }

    /// Replaces the key's credits (`None`: no budget).
    #[must_use]
    pub fn credits(mut self, credits: Option<Credits>) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Replaces the networks the key may be used from (`None`: from anywhere).
    ///
    /// ```
    /// use keygate::client_addr::Networks;
    /// use keygate::store::KeyUpdate;
    ///
    /// let office: Networks = "203.0.113.0/24".parse()?;
    /// let only_office = KeyUpdate::new().allowed_ips(Some(office));
    /// let anywhere = KeyUpdate::new().allowed_ips(None);
    /// # let _ = (only_office, anywhere);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn allowed_ips(mut self, networks: Option<Networks>) -> Self {
        self.allowed_ips = Some(networks);
        self
    }

    /// Replaces the status.
    #[must_use]
    pub fn status(mut self, status: KeyStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Replaces the expiry (`None`: never expires).
    #[must_use]
    pub fn expires_at(mut self, at: Option<SystemTime>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Replaces the metadata.
    #[must_use]
    pub fn metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Whether it changes the status to revoked.
    pub fn revokes(&self) -> bool {
        self.status == Some(KeyStatus::Revoked)
    }

    /// Applies the change to `record`, keeping its id, owner and creation time.
    /// [`ManageError::Invalid`] if it would bring a revoked record back; `record` is then left
    /// as it was.
    pub fn apply(&self, record: &mut KeyRecord) -> Result<(), ManageError> {
        if record.status == KeyStatus::Revoked
            && let Some(status) = self.status
            && status != KeyStatus::Revoked
        {
            return Err(ManageError::invalid("a revoked key stays revoked"));
        }
        if let Some(scopes) = &self.scopes {
            record.scopes = scopes.clone();
        }
        if let Some(quota) = &self.quota {
            record.quota.clone_from(quota);
        }
        if let Some(tier) = &self.tier {
            record.tier.clone_from(tier);
        }
        if let Some(credits) = self.credits {
            record.credits = credits;
        }
        if let Some(allowed_ips) = &self.allowed_ips {
            record.allowed_ips.clone_from(allowed_ips);
        }
        if let Some(status) = self.status {
            record.status = status;
        }
        if let Some(expires_at) = self.expires_at {
            record.expires_at = expires_at;
        }
        if let Some(metadata) = &self.metadata {
            record.metadata = metadata.clone();
        }
        Ok(())
    }
}

/// Why a [`KeyManager`] call did not happen.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ManageError {
    /// No record has this id.
    #[error("no key record has this id")]
    NotFound,
    /// A record with this id exists already.
    #[error("a key record with this id exists already")]
    DuplicateId,
    /// The key is registered already (for another record or this one).
    #[error("this key is registered already")]
    DuplicateKey,
    /// The request cannot be carried out as asked (an empty id, a page of 0, bringing a
    /// revoked key back).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The store could not be reached or failed.
    #[error("the key store is unavailable")]
    Unavailable(#[source] BoxError),
}

impl ManageError {
    /// [`ManageError::Invalid`] with this explanation.
    pub fn invalid(why: impl Into<String>) -> Self {
        Self::Invalid(why.into())
    }

    /// Wraps any error as [`ManageError::Unavailable`].
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}

impl fmt::Debug for ManageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("NotFound"),
            Self::DuplicateId => f.write_str("DuplicateId"),
            Self::DuplicateKey => f.write_str("DuplicateKey"),
            Self::Invalid(why) => f.debug_tuple("Invalid").field(why).finish(),
            Self::Unavailable(e) => f
                .debug_tuple("Unavailable")
                .field(&crate::outage::Chain(&**e).to_string())
                .finish(),
        }
    }
}

impl PartialEq for ManageError {
    /// Equal when of the same kind (and, for `Invalid`, the same text); two `Unavailable` are
    /// equal whatever their causes.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Invalid(a), Self::Invalid(b)) => a == b,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

/// Checks what every store requires of a new record: an id and an owner, neither blank nor
/// longer than 256 bytes, without control characters.
pub fn check_new_record(record: &KeyRecord) -> Result<(), ManageError> {
    check_name("id", &record.id)?;
    check_name("owner", &record.owner)
}

fn check_name(what: &str, value: &str) -> Result<(), ManageError> {
    if value.trim().is_empty() {
        return Err(ManageError::invalid(format!("the {what} is empty")));
    }
    if value.len() > 256 {
        return Err(ManageError::invalid(format!(
            "the {what} is longer than 256 bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ManageError::invalid(format!(
            "the {what} has control characters"
        )));
    }
    Ok(())
}

/// When a rotation with `grace` at `now` retires the current keys: a grace too long to be a
/// time keeps them for a thousand years, never retires them at once.
pub(crate) fn retire_at(now: SystemTime, grace: Duration) -> SystemTime {
    now.checked_add(grace)
        .or_else(|| now.checked_add(Duration::from_secs(1000 * 365 * 86_400)))
        .unwrap_or(now)
}
