//! The `KeyManager` conformance suite (`tests/common/conformance.rs`) against `MemoryStore`,
//! through `Arc<dyn KeyManager>`, and against stores that break one rule each (the suite must
//! catch them); its credit checks the same way (`Arc<dyn CreditStore>`, and credit stores that
//! break one rule); and keys managed through the trait, checked by a real axum `Router`.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::conformance;
use common::*;
use http::StatusCode;
use keygate::MaybeReady;
use keygate::auth::AuthLayer;
use keygate::key::{ApiKey, Credits, KeyDigest, KeyFormat, KeyRecord, KeyStatus};
use keygate::store::{
    CachedStore, CreditCheck, CreditOutcome, CreditStore, IssuedKey, KeyManager, KeyPage, KeyStore,
    KeyUpdate, Lookup, ManageError, ManageFuture, MemoryStore, Page, StoreError,
};

#[tokio::test]
async fn memory_store_conforms() {
    conformance::run(&MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_store_purges_what_can_no_longer_work() {
    conformance::purge_checks(&MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_store_of_its_own_format_conforms() {
    let format = KeyFormat::new("wk_test_").expect("a valid prefix");
    let store = MemoryStore::with_format(format.clone());
    assert_eq!(KeyManager::format(&store), &format);
    conformance::run(&store).await;
}

/// The suite shares its store: other records in it and another run at the same time change
/// nothing, and it leaves the other records as they were.
#[tokio::test]
async fn memory_store_conforms_among_other_records_and_runs() {
    let store = MemoryStore::new();
    let mut others = Vec::new();
    for (id, owner) in [("key_1", "acme"), ("key_2", "acme"), ("zz", "other")] {
        let issued = KeyManager::issue(&store, KeyRecord::new(id, owner).with_scopes(["x"]))
            .await
            .expect("a fresh id");
        others.push(issued);
    }
    let revoked = KeyManager::issue(&store, KeyRecord::new("old", "acme"))
        .await
        .expect("a fresh id");
    KeyManager::revoke(&store, "old").await.expect("revoked");

    tokio::join!(conformance::run(&store), conformance::run(&store));

    assert_eq!(
        store.len(),
        4,
        "the suite deletes what it created, only that"
    );
    for issued in &others {
        let mut lookup = store.lookup(&issued.key.digest());
        let found = lookup.take_ready().expect("memory lookups are ready");
        assert_eq!(found.ok().flatten().as_deref(), Some(&issued.record));
    }
    let page = KeyManager::list(&store, "acme", Page::first(10))
        .await
        .expect("a valid page");
    let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["key_1", "key_2", "old"]);
    assert_eq!(page.records[2].status, KeyStatus::Revoked);
    assert!(store.get(&revoked.record.id).is_some());
}

/// A cache in front of the store passes every call through and forgets what a change made
/// stale: the suite looks keys up before and after each change.
#[tokio::test]
async fn a_cached_memory_store_conforms() {
    conformance::run(&CachedStore::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn a_cached_memory_store_purges_what_can_no_longer_work() {
    conformance::purge_checks(&CachedStore::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn memory_store_credits_conform() {
    conformance::credit_checks(&MemoryStore::new()).await;
}

/// One store, shared by many tasks on several threads: exactly the credits are admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_credits_reach_exactly_zero_across_tasks() {
    let store = MemoryStore::new();
    conformance::credits_across_instances(&store, &store.clone()).await;
}

/// A cache never caches counts: two caches in front of one store count one budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_memory_stores_count_one_budget() {
    let backend = MemoryStore::new();
    conformance::credit_checks(&CachedStore::new(backend.clone())).await;
    conformance::credits_across_instances(
        &CachedStore::new(backend.clone()),
        &CachedStore::new(backend),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Trait objects

/// A manager and a store held as trait objects, as an application that picks its backend at
/// start holds them.
#[derive(Clone)]
struct Dyn {
    manager: Arc<dyn KeyManager>,
    keys: Arc<dyn KeyStore>,
    credits: Arc<dyn CreditStore>,
}

impl Dyn {
    fn memory() -> Self {
        let store = MemoryStore::new();
        Self {
            manager: Arc::new(store.clone()),
            keys: Arc::new(store.clone()),
            credits: Arc::new(store),
        }
    }
}

impl CreditStore for Dyn {
    fn spend(&self, id: &str, cost: u32) -> CreditCheck {
        self.credits.spend(id, cost)
    }
    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>> {
        self.credits.credits(id)
    }
}

impl KeyStore for Dyn {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        self.keys.lookup(digest)
    }
}

impl KeyManager for Dyn {
    fn format(&self) -> &KeyFormat {
        self.manager.format()
    }
    fn issue(&self, record: KeyRecord) -> ManageFuture<'_, IssuedKey> {
        self.manager.issue(record)
    }
    fn insert(&self, digest: KeyDigest, record: KeyRecord) -> ManageFuture<'_, KeyRecord> {
        self.manager.insert(digest, record)
    }
    fn get(&self, id: &str) -> ManageFuture<'_, Option<KeyRecord>> {
        self.manager.get(id)
    }
    fn list(&self, owner: &str, page: Page) -> ManageFuture<'_, KeyPage> {
        self.manager.list(owner, page)
    }
    fn update(&self, id: &str, update: KeyUpdate) -> ManageFuture<'_, KeyRecord> {
        self.manager.update(id, update)
    }
    fn revoke(&self, id: &str) -> ManageFuture<'_, KeyRecord> {
        self.manager.revoke(id)
    }
    fn rotate(&self, id: &str, grace: Duration) -> ManageFuture<'_, IssuedKey> {
        self.manager.rotate(id, grace)
    }
    fn delete(&self, id: &str) -> ManageFuture<'_, ()> {
        self.manager.delete(id)
    }
    fn purge(&self, before: SystemTime) -> ManageFuture<'_, u64> {
        self.manager.purge(before)
    }
}

#[tokio::test]
async fn the_trait_objects_conform() {
    conformance::run(&Dyn::memory()).await;
    conformance::purge_checks(&Dyn::memory()).await;
    conformance::credit_checks(&Dyn::memory()).await;
    let boxed: Box<dyn CreditStore> = Box::new(MemoryStore::new());
    assert_eq!(
        boxed.spend("none", 1).await.unwrap(),
        CreditOutcome::NoBudget
    );
}

#[tokio::test]
async fn a_boxed_manager_manages_the_same_keys() {
    let store = MemoryStore::new();
    let boxed: Box<dyn KeyManager> = Box::new(store.clone());
    let issued = boxed
        .issue(KeyRecord::new("key_1", "acme"))
        .await
        .expect("a fresh id");
    assert_eq!(store.get("key_1").as_deref(), Some(&issued.record));
    boxed.revoke("key_1").await.expect("revoked");
    assert_eq!(
        store.get("key_1").map(|r| r.status),
        Some(KeyStatus::Revoked)
    );
    assert_eq!(boxed.delete("key_1").await, Ok(()));
    assert!(store.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Through the layer

/// The request is admitted as `key_1` of `acme`.
async fn works(app: &axum::Router, key: &ApiKey) {
    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["id"], "key_1");
    assert_eq!(reply.json()["owner"], "acme");
}

/// The request is turned away exactly as one with a key nobody ever issued.
async fn fails(app: &axum::Router, key: &ApiKey) {
    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    reply.assert_no_leak(key.expose_secret());
    let unknown = send(app.clone(), with_key("kg_never_issued_0123456789")).await;
    assert_eq!(reply.head(), unknown.head());
    assert_eq!(reply.body, unknown.body);
}

#[tokio::test]
async fn keys_managed_through_the_trait_work_until_revoked() {
    let store = MemoryStore::new();
    let keys: Arc<dyn KeyManager> = Arc::new(store.clone());
    let app = routes().layer(AuthLayer::new(store).realm(REALM));

    let issued = keys
        .issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]))
        .await
        .expect("a fresh id");
    works(&app, &issued.key).await;
    let reply = send(app.clone(), with_key(issued.key.expose_secret())).await;
    assert_eq!(reply.json()["scopes"], serde_json::json!(["weather:read"]));

    keys.update(
        "key_1",
        KeyUpdate::new().scopes(["weather:read", "weather:write"]),
    )
    .await
    .expect("updated");
    let reply = send(app.clone(), with_key(issued.key.expose_secret())).await;
    assert_eq!(
        reply.json()["scopes"],
        serde_json::json!(["weather:read", "weather:write"])
    );

    keys.update("key_1", KeyUpdate::new().status(KeyStatus::Disabled))
        .await
        .expect("disabled");
    fails(&app, &issued.key).await;
    keys.update("key_1", KeyUpdate::new().status(KeyStatus::Active))
        .await
        .expect("enabled");
    works(&app, &issued.key).await;

    let rotated = keys.rotate("key_1", Duration::ZERO).await.expect("rotated");
    fails(&app, &issued.key).await;
    works(&app, &rotated.key).await;

    keys.revoke("key_1").await.expect("revoked");
    fails(&app, &rotated.key).await;
    let back = keys
        .update("key_1", KeyUpdate::new().status(KeyStatus::Active))
        .await;
    assert!(matches!(back, Err(ManageError::Invalid(_))), "{back:?}");
    fails(&app, &rotated.key).await;

    keys.delete("key_1").await.expect("deleted");
    fails(&app, &rotated.key).await;
}

#[tokio::test]
async fn an_expiry_set_through_the_trait_turns_the_key_away() {
    let store = MemoryStore::new();
    let keys: Arc<dyn KeyManager> = Arc::new(store.clone());
    let app = routes().layer(AuthLayer::new(store).realm(REALM));
    let issued = keys
        .issue(KeyRecord::new("key_1", "acme"))
        .await
        .expect("a fresh id");
    works(&app, &issued.key).await;
    let past = SystemTime::now() - Duration::from_secs(1);
    keys.update("key_1", KeyUpdate::new().expires_at(Some(past)))
        .await
        .expect("updated");
    fails(&app, &issued.key).await;
    keys.update("key_1", KeyUpdate::new().expires_at(None))
        .await
        .expect("updated");
    works(&app, &issued.key).await;
}

// ---------------------------------------------------------------------------------------------
// The suite catches stores that break a rule

/// The rule a [`Flawed`] store breaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// None: the wrapper alone.
    Faithful,
    /// Lookups of revoked keys answer `None` instead of the revoked record.
    HidesRevokedKeys,
    /// Lists come back in decreasing id order.
    ListsBackwards,
    /// Rotations ignore their grace and retire the old keys at once.
    IgnoresGrace,
    /// An insert refused for its digest leaves a record with its id behind.
    HalfCreates,
    /// A key in its grace looks up to the record as it is, its expiry not cut to the key's
    /// retire time (a cache would serve it past its grace).
    KeepsTheExpiryOfRetiringKeys,
    /// Purges delete nothing.
    PurgesNothing,
    /// An update moves the record to a fresh key: the keys it had stop working.
    UpdatesLoseTheKeys,
    /// A spend reads the count, then writes it back less the cost: concurrent spends admit more
    /// than the credits.
    SpendsRacily,
    /// A spend of more than remains spends what remains, and succeeds.
    SpendsWhatRemains,
    /// A refill restarts the schedule from when it was applied.
    RestartsTheScheduleOnRefill,
}

/// A `MemoryStore` that breaks one rule.
#[derive(Clone)]
struct Flawed {
    inner: MemoryStore,
    flaw: Flaw,
}

impl Flawed {
    fn new(flaw: Flaw) -> Self {
        Self {
            inner: MemoryStore::new(),
            flaw,
        }
    }
}

impl KeyStore for Flawed {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        let mut lookup = self.inner.lookup(digest);
        let found = lookup.take_ready().expect("memory lookups are ready");
        Lookup::ready(match found {
            Ok(Some(record))
                if self.flaw == Flaw::HidesRevokedKeys && record.status == KeyStatus::Revoked =>
            {
                Ok(None)
            }
            Ok(Some(record)) if self.flaw == Flaw::KeepsTheExpiryOfRetiringKeys => {
                Ok(self.inner.get(&record.id).or(Some(record)))
            }
            other => other,
        })
    }
}

impl KeyManager for Flawed {
    fn format(&self) -> &KeyFormat {
        KeyManager::format(&self.inner)
    }
    fn issue(&self, record: KeyRecord) -> ManageFuture<'_, IssuedKey> {
        KeyManager::issue(&self.inner, record)
    }
    fn insert(&self, digest: KeyDigest, record: KeyRecord) -> ManageFuture<'_, KeyRecord> {
        Box::pin(async move {
            let result = KeyManager::insert(&self.inner, digest, record.clone()).await;
            if self.flaw == Flaw::HalfCreates && matches!(result, Err(ManageError::DuplicateKey)) {
                let _ = KeyManager::issue(&self.inner, record).await;
            }
            result
        })
    }
    fn get(&self, id: &str) -> ManageFuture<'_, Option<KeyRecord>> {
        KeyManager::get(&self.inner, id)
    }
    fn list(&self, owner: &str, page: Page) -> ManageFuture<'_, KeyPage> {
        let owner = owner.to_owned();
        Box::pin(async move {
            let mut got = KeyManager::list(&self.inner, &owner, page).await?;
            if self.flaw == Flaw::ListsBackwards {
                got.records.reverse();
            }
            Ok(got)
        })
    }
    fn update(&self, id: &str, update: KeyUpdate) -> ManageFuture<'_, KeyRecord> {
        if self.flaw != Flaw::UpdatesLoseTheKeys {
            return KeyManager::update(&self.inner, id, update);
        }
        let id = id.to_owned();
        Box::pin(async move {
            KeyManager::rotate(&self.inner, &id, Duration::ZERO).await?;
            KeyManager::update(&self.inner, &id, update).await
        })
    }
    fn rotate(&self, id: &str, grace: Duration) -> ManageFuture<'_, IssuedKey> {
        let grace = if self.flaw == Flaw::IgnoresGrace {
            Duration::ZERO
        } else {
            grace
        };
        KeyManager::rotate(&self.inner, id, grace)
    }
    fn delete(&self, id: &str) -> ManageFuture<'_, ()> {
        KeyManager::delete(&self.inner, id)
    }
    fn purge(&self, before: SystemTime) -> ManageFuture<'_, u64> {
        if self.flaw == Flaw::PurgesNothing {
            return Box::pin(std::future::ready(Ok(0)));
        }
        KeyManager::purge(&self.inner, before)
    }
}

/// Spends go to the memory store, but for the credit flaws.
impl CreditStore for Flawed {
    fn spend(&self, id: &str, cost: u32) -> CreditCheck {
        let (inner, id) = (self.inner.clone(), id.to_owned());
        let credits = |inner: &MemoryStore, id: &str| {
            let mut read = CreditStore::credits(inner, id);
            read.take_ready().expect("memory reads are ready").unwrap()
        };
        match self.flaw {
            Flaw::SpendsRacily => MaybeReady::pending(async move {
                let Some(mut c) = credits(&inner, &id) else {
                    return Ok(CreditOutcome::NoBudget);
                };
                tokio::task::yield_now().await;
                let Some(remaining) = c.remaining.checked_sub(u64::from(cost)) else {
                    return Ok(CreditOutcome::Exhausted { refill_in: None });
                };
                c.remaining = remaining;
                inner.update(&id, |r| r.credits = Some(c)).unwrap();
                Ok(CreditOutcome::Spent { remaining })
            }),
            Flaw::SpendsWhatRemains => match credits(&inner, &id) {
                Some(c) if c.remaining < u64::from(cost) => {
                    inner
                        .update(&id, |r| {
                            let mut none_left = c;
                            none_left.remaining = 0;
                            r.credits = Some(none_left);
                        })
                        .unwrap();
                    MaybeReady::ready(Ok(CreditOutcome::Spent { remaining: 0 }))
                }
                _ => CreditStore::spend(&inner, &id, cost),
            },
            Flaw::RestartsTheScheduleOnRefill => MaybeReady::pending(async move {
                let before = credits(&inner, &id);
                let outcome = CreditStore::spend(&inner, &id, cost).await;
                // Just refilled (the count at its refill amount): set the count again, which
                // starts the schedule anew from now.
                if let (Some(c), Ok(CreditOutcome::Spent { remaining })) = (before, &outcome)
                    && c.refill.is_some_and(|r| r.amount == c.remaining)
                {
                    let mut reset = c;
                    reset.remaining = *remaining;
                    KeyManager::update(&inner, &id, KeyUpdate::new().credits(Some(reset)))
                        .await
                        .unwrap();
                }
                outcome
            }),
            _ => CreditStore::spend(&inner, &id, cost),
        }
    }
    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>> {
        CreditStore::credits(&self.inner, id)
    }
}

#[tokio::test]
async fn the_wrapper_without_a_flaw_passes() {
    // Only the flaws below make the suite fail, not the wrapper.
    conformance::run(&Flawed::new(Flaw::Faithful)).await;
    conformance::purge_checks(&Flawed::new(Flaw::Faithful)).await;
    conformance::credit_checks(&Flawed::new(Flaw::Faithful)).await;
}

#[tokio::test]
#[should_panic(expected = "must admit exactly the credits")]
async fn the_suite_catches_racy_spends() {
    let store = Flawed::new(Flaw::SpendsRacily);
    conformance::credits_across_instances(&store, &store.clone()).await;
}

#[tokio::test]
#[should_panic(expected = "a spend of more than remains is refused")]
async fn the_suite_catches_spends_of_more_than_remains() {
    conformance::credit_checks(&Flawed::new(Flaw::SpendsWhatRemains)).await;
}

#[tokio::test]
#[should_panic(expected = "refills keep the schedule's beat")]
async fn the_suite_catches_refills_off_the_schedule() {
    conformance::credits_are_refilled_on_their_schedule(&Flawed::new(
        Flaw::RestartsTheScheduleOnRefill,
    ))
    .await;
}

#[tokio::test]
#[should_panic(expected = "after revoke: the key")]
async fn the_suite_catches_hidden_revoked_keys() {
    conformance::run(&Flawed::new(Flaw::HidesRevokedKeys)).await;
}

#[tokio::test]
#[should_panic(expected = "not in increasing id order")]
async fn the_suite_catches_lists_out_of_order() {
    conformance::run(&Flawed::new(Flaw::ListsBackwards)).await;
}

#[tokio::test]
#[should_panic(expected = "the old key before the update: the key")]
async fn the_suite_catches_rotations_without_grace() {
    conformance::run(&Flawed::new(Flaw::IgnoresGrace)).await;
}

#[tokio::test]
#[should_panic(expected = "get of the id of a refused insert")]
async fn the_suite_catches_half_created_records() {
    conformance::run(&Flawed::new(Flaw::HalfCreates)).await;
}

#[tokio::test]
#[should_panic(expected = "a key in its grace must look up with")]
async fn the_suite_catches_retiring_keys_without_their_retire_time() {
    conformance::run(&Flawed::new(Flaw::KeepsTheExpiryOfRetiringKeys)).await;
}

#[tokio::test]
#[should_panic(expected = "purge must delete and count")]
async fn the_suite_catches_purges_that_delete_nothing() {
    conformance::purge_checks(&Flawed::new(Flaw::PurgesNothing)).await;
}

#[tokio::test]
#[should_panic(expected = "update of every field: the key")]
async fn the_suite_catches_updates_that_lose_the_keys() {
    conformance::run(&Flawed::new(Flaw::UpdatesLoseTheKeys)).await;
}
