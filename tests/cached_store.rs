//! `CachedStore` in front of fake backends that count their calls and can be made to fail, hang
//! or answer slowly: freshness, stale-if-error, negative caching, single-flight, timeouts,
//! invalidation, the `KeyManager` and `CreditStore` pass-through and the bound on entries. Some go through a real
//! axum `Router` with `AuthLayer::new(cached)`.

mod common;

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use keygate::MaybeReady;
use keygate::auth::AuthLayer;
use keygate::clock::ManualClock;
use keygate::key::{ApiKey, Credits, KeyDigest, KeyFormat, KeyRecord, KeyStatus};
use keygate::store::{
    CachedStore, CreditCheck, CreditOutcome, CreditStore, Invalidate, KeyManager, KeyStore,
    KeyUpdate, Lookup, LookupResult, MemoryStore, StoreError,
};

/// No test waits longer than this for anything.
const LIMIT: Duration = Duration::from_secs(10);
/// What a loaded 2-core machine may add to a timed answer.
const SLACK: Duration = Duration::from_secs(1);

const UP: u8 = 0;
const DOWN: u8 = 1;
const HANG: u8 = 2;

/// A backend over a `MemoryStore` that counts its calls (in total and per digest), and can be
/// switched to failing at once (`DOWN`), to never answering (`HANG`), or to answering after a
/// delay.
#[derive(Clone, Default)]
struct Backend {
    keys: MemoryStore,
    mode: Arc<AtomicU8>,
    delay: Arc<Mutex<Duration>>,
    calls: Arc<AtomicUsize>,
    per_digest: Arc<Mutex<HashMap<KeyDigest, usize>>>,
    credit_calls: Arc<AtomicUsize>,
}

impl Backend {
    fn new() -> Self {
        Self::default()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn slow(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    fn calls_for(&self, digest: &KeyDigest) -> usize {
        self.per_digest
            .lock()
            .unwrap()
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    fn issue(&self, id: &str) -> ApiKey {
        self.keys
            .issue(KeyRecord::new(id, "acme").with_scopes(["weather:read"]))
            .unwrap()
    }
}

impl KeyStore for Backend {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.per_digest.lock().unwrap().entry(*digest).or_default() += 1;
        match self.mode.load(Ordering::SeqCst) {
            DOWN => Lookup::ready(Err(StoreError::unavailable(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused by the test",
            )))),
            HANG => Lookup::pending(std::future::pending()),
            _ => {
                let answer = self.keys.lookup(digest).take_ready().unwrap();
                let delay = *self.delay.lock().unwrap();
                if delay.is_zero() {
                    Lookup::ready(answer)
                } else {
                    Lookup::pending(async move {
                        tokio::time::sleep(delay).await;
                        answer
                    })
                }
            }
        }
    }
}

/// Spends and reads of credits go to the `MemoryStore` (counted in `credit_calls`), or fail
/// while the backend is `DOWN`.
impl CreditStore for Backend {
    fn spend(&self, id: &str, cost: u32) -> CreditCheck {
        self.credit_calls.fetch_add(1, Ordering::SeqCst);
        if self.mode.load(Ordering::SeqCst) == DOWN {
            return MaybeReady::ready(Err(StoreError::unavailable("down for the test")));
        }
        self.keys.spend(id, cost)
    }

    fn credits(&self, id: &str) -> MaybeReady<Result<Option<Credits>, StoreError>> {
        self.credit_calls.fetch_add(1, Ordering::SeqCst);
        if self.mode.load(Ordering::SeqCst) == DOWN {
            return MaybeReady::ready(Err(StoreError::unavailable("down for the test")));
        }
        CreditStore::credits(&self.keys, id)
    }
}

/// A cache on a manual clock, with TTL 10 s, stale 60 s, negative TTL 5 s, timeout 200 ms.
fn cached(backend: &Backend) -> (CachedStore<Backend>, ManualClock) {
    let clock = ManualClock::new();
    let store = CachedStore::builder(backend.clone())
        .ttl(Duration::from_secs(10))
        .stale(Duration::from_secs(60))
        .negative_ttl(Duration::from_secs(5))
        .timeout(Duration::from_millis(200))
        .clock(clock.clone())
        .build();
    (store, clock)
}

async fn lookup(store: &impl KeyStore, key: &ApiKey) -> LookupResult {
    tokio::time::timeout(LIMIT, store.lookup(&key.digest()))
        .await
        .expect("the lookup answers")
}

async fn found_id(store: &impl KeyStore, key: &ApiKey) -> String {
    match lookup(store, key).await {
        Ok(Some(record)) => record.id.clone(),
        other => panic!("expected a record, got {other:?}"),
    }
}

fn random_key(format: &KeyFormat) -> ApiKey {
    format.generate()
}

// ---------------------------------------------------------------------------------------------
// Fresh hits

#[tokio::test]
async fn a_fresh_hit_is_ready_and_does_not_reach_the_backend() {
    let backend = Backend::new();
    let key = backend.issue("key_1");
    backend.slow(Duration::from_millis(20)); // the backend makes lookups wait
    let (store, clock) = cached(&backend);

    let mut first = store.lookup(&key.digest());
    assert!(first.take_ready().is_none(), "a miss waits for the backend");
    assert_eq!(found_id(&store, &key).await, "key_1");
    assert_eq!(backend.calls(), 1);

    for _ in 0..100 {
        let mut hit = store.lookup(&key.digest());
        let record = hit.take_ready().expect("a hit is ready").unwrap().unwrap();
        assert_eq!(record.id, "key_1");
    }
    clock.advance(Duration::from_millis(9_999));
    assert!(store.lookup(&key.digest()).take_ready().is_some());
    assert_eq!(backend.calls(), 1, "hits never reach the backend");

    // Past the TTL the record is looked up again.
    clock.advance(Duration::from_millis(2));
    assert_eq!(found_id(&store, &key).await, "key_1");
    assert_eq!(backend.calls(), 2);
    assert!(store.lookup(&key.digest()).take_ready().is_some());
    assert_eq!(backend.calls(), 2);
}

#[tokio::test]
async fn while_a_record_is_refreshed_the_other_lookups_get_it_at_once() {
    let backend = Backend::new();
    let key = backend.issue("key_1");
    let (store, clock) = cached(&backend);
    assert_eq!(found_id(&store, &key).await, "key_1");

    backend.slow(Duration::from_millis(100));
    clock.advance(Duration::from_secs(11));
    let mut refresh = store.lookup(&key.digest());
    assert!(refresh.take_ready().is_none());
    // Start the refresh: it waits for the backend.
    assert!(
        tokio::time::timeout(Duration::from_millis(10), &mut refresh)
            .await
            .is_err()
    );
    assert_eq!(backend.calls(), 2);
    for _ in 0..10 {
        let mut other = store.lookup(&key.digest());
        let record = other.take_ready().expect("served while refreshed").unwrap();
        assert_eq!(record.unwrap().id, "key_1");
    }
    assert_eq!(refresh.await.unwrap().unwrap().id, "key_1");
    assert_eq!(backend.calls(), 2, "one refresh");
}

// ---------------------------------------------------------------------------------------------
// Negative caching

#[tokio::test]
async fn ten_thousand_unknown_keys_cost_one_backend_lookup_each() {
    let backend = Backend::new();
    let (store, clock) = cached(&backend);
    let format = KeyFormat::new("kg_").unwrap();
    let keys: Vec<ApiKey> = (0..10_000).map(|_| random_key(&format)).collect();

    for key in &keys {
        assert!(matches!(lookup(&store, key).await, Ok(None)));
    }
    assert_eq!(backend.calls(), 10_000);
    assert!(keys.iter().all(|k| backend.calls_for(&k.digest()) == 1));

    // Within the negative TTL: all 10,000 again, without a single backend call.
    clock.advance(Duration::from_millis(4_999));
    for key in &keys {
        let mut again = store.lookup(&key.digest());
        assert!(
            matches!(again.take_ready(), Some(Ok(None))),
            "answered at once"
        );
    }
    assert_eq!(backend.calls(), 10_000);

    // Past it, an unknown key is asked about again (it may have been created since).
    clock.advance(Duration::from_millis(2));
    assert!(matches!(lookup(&store, &keys[0]).await, Ok(None)));
    assert_eq!(backend.calls(), 10_001);
}

#[tokio::test]
async fn a_key_created_after_it_was_cached_as_unknown_works_after_the_negative_ttl() {
    let backend = Backend::new();
    let (store, clock) = cached(&backend);
    let key = ApiKey::new("legacy-key-0001");
    assert!(matches!(lookup(&store, &key).await, Ok(None)));
    backend
        .keys
        .insert(&key, KeyRecord::new("legacy", "acme"))
        .unwrap();
    assert!(
        matches!(lookup(&store, &key).await, Ok(None)),
        "still cached"
    );
    clock.advance(Duration::from_secs(6));
    assert_eq!(found_id(&store, &key).await, "legacy");
}

#[tokio::test]
async fn unknown_keys_are_not_served_stale_and_errors_are_never_cached() {
    let backend = Backend::new();
    let (store, clock) = cached(&backend);
    let unknown = ApiKey::new("never-issued");
    assert!(matches!(lookup(&store, &unknown).await, Ok(None)));

    backend.set(DOWN);
    clock.advance(Duration::from_secs(6));
    assert!(matches!(
        lookup(&store, &unknown).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        lookup(&store, &unknown).await,
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(backend.calls(), 3, "each failed lookup asked the backend");

    backend.set(UP);
    assert!(matches!(lookup(&store, &unknown).await, Ok(None)));
    assert_eq!(backend.calls(), 4);
}

// ---------------------------------------------------------------------------------------------
// Single-flight

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_lookups_of_one_digest_make_one_backend_call() {
    let backend = Backend::new();
    let key = backend.issue("key_1");
    backend.slow(Duration::from_millis(300));
    let store = CachedStore::builder(backend.clone())
        .timeout(Duration::from_secs(5))
        .build();

    let start = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (store, digest, start) = (store.clone(), key.digest(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                store.lookup(&digest).await
            })
        })
        .collect();
    for task in tasks {
        let record = tokio::time::timeout(LIMIT, task)
            .await
            .expect("every lookup answers")
            .unwrap()
            .unwrap()
            .expect("the key is known");
        assert_eq!(record.id, "key_1");
    }
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_lookups_share_the_failure_of_their_one_backend_call() {
    let backend = Backend::new();
    let key = backend.issue("key_1");
    backend.set(HANG);
    let (store, _clock) = cached(&backend);

    let began = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (store, digest) = (store.clone(), key.digest());
            tokio::spawn(async move { store.lookup(&digest).await })
        })
        .collect();
    for task in tasks {
        let result = tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
        assert!(matches!(result, Err(StoreError::Timeout)), "{result:?}");
    }
    assert!(
        began.elapsed() < Duration::from_millis(200) + SLACK,
        "all answered within the timeout, not one after the other: {:?}",
        began.elapsed()
    );
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_does_not_leave_the_waiting_lookups_hanging() {
    let backend = Backend::new();
    let key = backend.issue("key_1");
    backend.slow(Duration::from_millis(300));
    let store = CachedStore::builder(backend.clone())
        .timeout(Duration::from_secs(5))
        .build();

    // The first lookup asks the backend and waits.
    let mut leader = store.lookup(&key.digest());
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut leader)
            .await
            .is_err()
    );
    assert_eq!(backend.calls(), 1);
    let waiters: Vec<_> = (0..5)
        .map(|_| tokio::spawn(store.lookup(&key.digest())))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(backend.calls(), 1, "the others wait for the first one");

    // Its client hangs up.
    drop(leader);
    let began = Instant::now();
    for waiter in waiters {
        let record = tokio::time::timeout(LIMIT, waiter)
            .await
            .expect("no waiter hangs")
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(record.id, "key_1");
    }
    assert!(began.elapsed() < Duration::from_millis(300) + SLACK);
    assert_eq!(backend.calls(), 2, "one waiter took over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_does_not_disturb_the_others() {
    let backend = Backend::new();
    let key = backend.issue("key_1");
    backend.slow(Duration::from_millis(200));
    let store = CachedStore::builder(backend.clone())
        .timeout(Duration::from_secs(5))
        .build();

    let leader = tokio::spawn(store.lookup(&key.digest()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A waiter whose client hangs up early.
    let quitter = store.lookup(&key.digest());
    assert!(
        tokio::time::timeout(Duration::from_millis(20), quitter)
            .await
            .is_err()
    );
    let waiter = tokio::spawn(store.lookup(&key.digest()));
    for task in [leader, waiter] {
        let record = tokio::time::timeout(LIMIT, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(record.id, "key_1");
    }
    assert_eq!(backend.calls(), 1);
}

// ---------------------------------------------------------------------------------------------
// Stale-if-error, timeouts, recovery

#[tokio::test]
async fn during_an_outage_cached_keys_work_until_ttl_plus_stale_then_503() {
    let backend = Backend::new();
    let known = backend.issue("key_1");
    let uncached = backend.issue("key_2");
    let (store, clock) = cached(&backend);
    let app = routes().layer(AuthLayer::new(store.clone()).realm(REALM));
    let status = |key: &ApiKey| {
        let (app, key) = (app.clone(), key.expose_secret().to_owned());
        async move { send(app, with_key(&key)).await.status }
    };

    assert_eq!(status(&known).await, StatusCode::OK);
    backend.set(DOWN);
    assert_eq!(status(&known).await, StatusCode::OK, "fresh");
    assert_eq!(backend.calls(), 1);

    clock.advance(Duration::from_secs(11));
    assert_eq!(
        status(&known).await,
        StatusCode::OK,
        "stale, the backend failed"
    );
    assert_eq!(backend.calls(), 2);
    clock.advance(Duration::from_secs(58)); // 69 s: TTL 10 + stale 60 is not over
    assert_eq!(status(&known).await, StatusCode::OK);
    assert_eq!(backend.calls(), 3);

    // A key the cache never saw fails at once.
    let reply = send(app.clone(), with_key(uncached.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    reply.assert_no_leak(uncached.expose_secret());

    // The stale window is over.
    clock.advance(Duration::from_millis(1_001));
    assert_eq!(status(&known).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status(&known).await, StatusCode::SERVICE_UNAVAILABLE);

    // A backend that hangs: 503 within the timeout.
    backend.set(HANG);
    let began = Instant::now();
    assert_eq!(status(&uncached).await, StatusCode::SERVICE_UNAVAILABLE);
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(200) + SLACK,
        "{took:?}"
    );

    // It comes back: everything works, nothing rebuilt.
    backend.set(UP);
    assert_eq!(status(&known).await, StatusCode::OK);
    assert_eq!(status(&uncached).await, StatusCode::OK);
    let calls = backend.calls();
    assert_eq!(status(&known).await, StatusCode::OK);
    assert_eq!(status(&uncached).await, StatusCode::OK);
    assert_eq!(backend.calls(), calls, "cached again");
}

#[tokio::test]
async fn a_backend_slower_than_the_timeout_gets_the_stale_record_served() {
    let backend = Backend::new();
    let key = backend.issue("key_1");
    let (store, clock) = cached(&backend);
    assert_eq!(found_id(&store, &key).await, "key_1");

    backend.set(HANG);
    clock.advance(Duration::from_secs(11));
    let began = Instant::now();
    assert_eq!(found_id(&store, &key).await, "key_1");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(200) + SLACK,
        "{took:?}"
    );
    // While the retry is not due, the stale record is answered at once.
    let mut again = store.lookup(&key.digest());
    assert!(again.take_ready().is_some());
    assert_eq!(backend.calls(), 2);

    // A slow uncached lookup: the timeout, as an error.
    let other = backend.issue("key_2");
    assert!(matches!(
        lookup(&store, &other).await,
        Err(StoreError::Timeout)
    ));
}

#[tokio::test]
async fn a_failure_carries_its_cause() {
    let backend = Backend::new();
    let key = backend.issue("key_1");
    backend.set(DOWN);
    let (store, _clock) = cached(&backend);
    let Err(error) = lookup(&store, &key).await else {
        panic!("the backend is down")
    };
    assert!(matches!(error, StoreError::Unavailable(_)));
    let cause = error.source().expect("a cause").to_string();
    assert_eq!(cause, "connection refused by the test");
}

// ---------------------------------------------------------------------------------------------
// Invalidation

#[tokio::test]
async fn invalidation_makes_the_next_lookup_ask_the_backend() {
    let backend = Backend::new();
    let one = backend.issue("key_1");
    let two = backend.issue("key_2");
    let (store, _clock) = cached(&backend);
    found_id(&store, &one).await;
    found_id(&store, &two).await;
    found_id(&store, &one).await;
    assert_eq!(backend.calls(), 2);

    store.invalidate_id("key_1");
    found_id(&store, &one).await;
    found_id(&store, &two).await;
    assert_eq!(backend.calls(), 3, "only key_1 was forgotten");

    let invalidator = store.invalidator();
    invalidator.invalidate_id("key_1");
    found_id(&store, &one).await;
    assert_eq!(backend.calls(), 4);

    // A digest cached as unknown, then created elsewhere.
    let legacy = ApiKey::new("legacy-key-0002");
    assert!(matches!(lookup(&store, &legacy).await, Ok(None)));
    backend
        .keys
        .insert(&legacy, KeyRecord::new("legacy", "acme"))
        .unwrap();
    assert!(matches!(lookup(&store, &legacy).await, Ok(None)));
    invalidator.invalidate_digest(&legacy.digest());
    assert_eq!(found_id(&store, &legacy).await, "legacy");
    let calls = backend.calls();

    store.invalidate_digest(&two.digest());
    found_id(&store, &two).await;
    assert_eq!(backend.calls(), calls + 1);

    invalidator.invalidate_all();
    assert!(store.is_empty());
    for key in [&one, &two, &legacy] {
        found_id(&store, key).await;
    }
    assert_eq!(backend.calls(), calls + 4);
    store.invalidate_all();
    assert!(store.is_empty());

    // The handle does not keep the cache alive.
    let clone = store.clone();
    drop(store);
    assert!(!invalidator.is_closed());
    drop(clone);
    assert!(invalidator.is_closed());
    invalidator.invalidate_all(); // does nothing, does not fail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_asked_for_before_an_invalidation_is_not_kept() {
    let backend = Backend::new();
    let key = backend.issue("key_1");
    backend.slow(Duration::from_millis(100));
    let store = CachedStore::builder(backend.clone())
        .ttl(Duration::from_secs(3600))
        .build();

    // A lookup reads the record, then the record is revoked and the cache told, then the
    // lookup's answer arrives.
    let early = tokio::spawn(store.lookup(&key.digest()));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(backend.calls(), 1);
    backend.keys.revoke("key_1").unwrap();
    store.invalidate_id("key_1");
    let _ = early.await.unwrap();

    let record = lookup(&store, &key).await.unwrap().unwrap();
    assert_eq!(
        record.status,
        KeyStatus::Revoked,
        "the old answer was not kept"
    );
    assert_eq!(backend.calls(), 2);
}

#[tokio::test]
async fn changes_through_the_cache_are_seen_at_once() {
    let backend = MemoryStore::new();
    let store = CachedStore::builder(backend.clone())
        .ttl(Duration::from_secs(3600))
        .negative_ttl(Duration::from_secs(3600))
        .build();
    let app = routes().layer(AuthLayer::new(store.clone()).realm(REALM));
    let get = |key: &ApiKey| {
        let (app, key) = (app.clone(), key.expose_secret().to_owned());
        async move { send(app, with_key(&key)).await }
    };
    let keys: &dyn KeyManager = &store;

    let issued = keys
        .issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]))
        .await
        .unwrap();
    assert_eq!(get(&issued.key).await.status, StatusCode::OK);
    assert_eq!(get(&issued.key).await.status, StatusCode::OK);
    assert!(!store.is_empty(), "the record is cached");

    // An update is seen at once.
    keys.update("key_1", KeyUpdate::new().scopes(["weather:write"]))
        .await
        .unwrap();
    let reply = get(&issued.key).await;
    assert_eq!(reply.json()["scopes"], serde_json::json!(["weather:write"]));

    // A rotation without grace: the new key works, the old one no longer.
    let rotated = keys.rotate("key_1", Duration::ZERO).await.unwrap();
    assert_eq!(get(&rotated.key).await.status, StatusCode::OK);
    let reply = get(&issued.key).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("www-authenticate"), Some(INVALID_TOKEN));

    // Revoked: 401 on the next request, no TTL to wait for.
    keys.revoke("key_1").await.unwrap();
    assert_eq!(get(&rotated.key).await.status, StatusCode::UNAUTHORIZED);

    // A key cached as unknown, then inserted through the cache.
    let legacy = ApiKey::new("legacy-key-0003");
    assert_eq!(get(&legacy).await.status, StatusCode::UNAUTHORIZED);
    keys.insert(legacy.digest(), KeyRecord::new("legacy", "acme"))
        .await
        .unwrap();
    assert_eq!(get(&legacy).await.status, StatusCode::OK);

    // Deleted.
    keys.delete("legacy").await.unwrap();
    assert_eq!(get(&legacy).await.status, StatusCode::UNAUTHORIZED);

    // The reads go to the backend.
    assert_eq!(
        keys.get("key_1").await.unwrap().unwrap().status,
        KeyStatus::Revoked
    );
    assert_eq!(keys.format(), backend.format());
    assert_eq!(store.get_ref().len(), 1);
}

#[tokio::test]
async fn without_the_pass_through_a_change_waits_for_the_ttl() {
    // The control of the test above: the same revocation made on the backend directly.
    let backend = MemoryStore::new();
    let key = backend.issue(KeyRecord::new("key_1", "acme")).unwrap();
    let clock = ManualClock::new();
    let store = CachedStore::builder(backend.clone())
        .ttl(Duration::from_secs(30))
        .clock(clock.clone())
        .build();
    let app = routes().layer(AuthLayer::new(store).realm(REALM));
    assert_eq!(
        send(app.clone(), with_key(key.expose_secret()))
            .await
            .status,
        StatusCode::OK
    );
    backend.revoke("key_1").unwrap();
    assert_eq!(
        send(app.clone(), with_key(key.expose_secret()))
            .await
            .status,
        StatusCode::OK
    );
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        send(app, with_key(key.expose_secret())).await.status,
        StatusCode::UNAUTHORIZED
    );
}

// ---------------------------------------------------------------------------------------------
// Bounds, Debug

#[tokio::test]
async fn the_entry_count_stays_within_max_entries() {
    let backend = Backend::new();
    let known: Vec<ApiKey> = (0..500)
        .map(|i| backend.issue(&format!("key_{i}")))
        .collect();
    let store = CachedStore::builder(backend.clone())
        .max_entries(1_000)
        .build();
    let format = KeyFormat::new("kg_").unwrap();
    for round in 0..10 {
        for key in &known[round * 50..(round + 1) * 50] {
            assert!(lookup(&store, key).await.unwrap().is_some());
        }
        for _ in 0..450 {
            assert!(
                lookup(&store, &random_key(&format))
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        assert!(store.len() <= 1_000, "{} entries", store.len());
    }
    assert!(
        store.len() >= 900,
        "the cache is used: {} entries",
        store.len()
    );
    assert_eq!(backend.calls(), 5_000);
}

#[test]
fn debug_shows_the_settings_and_the_entry_count() {
    let store = CachedStore::new(MemoryStore::new());
    assert_eq!(
        format!("{store:?}"),
        "CachedStore { ttl: 30s, stale: 300s, negative_ttl: 5s, timeout: 1s, \
         max_entries: 100000, entries: 0, .. }"
    );
    assert!(format!("{:?}", store.invalidator()).contains("closed: false"));
}

#[tokio::test]
async fn an_outage_hidden_by_stale_records_is_logged_once_and_its_end_too() {
    let (logs, _guard) = LogCapture::install(tracing::Level::INFO);
    let backend = Backend::new();
    let key = backend.issue("key_1");
    let (store, clock) = cached(&backend);
    assert_eq!(found_id(&store, &key).await, "key_1");

    backend.set(DOWN);
    clock.advance(Duration::from_secs(10));
    for _ in 0..50 {
        // Past the TTL and the last retry: each lookup asks the backend, and gets stale.
        clock.advance(Duration::from_secs(1));
        assert_eq!(found_id(&store, &key).await, "key_1");
    }
    assert_eq!(backend.calls(), 51);
    backend.set(UP);
    clock.advance(Duration::from_secs(1));
    assert_eq!(found_id(&store, &key).await, "key_1");

    let text = logs.text();
    assert_eq!(
        logs.count("WARN", "key store behind the cache unavailable"),
        1,
        "one warning, not one per failure: {text}"
    );
    assert!(text.contains("connection refused by the test"), "{text}");
    assert_eq!(
        logs.count("INFO", "key store behind the cache available again"),
        1,
        "{text}"
    );
    assert!(!text.contains(key.expose_secret()), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Credits

/// Every spend and read of credits reaches the backend (a count is never cached, so that every
/// instance counts one budget); a spend does not disturb the cached record; an outage of the
/// backend is an error, never "no budget".
#[tokio::test]
async fn credits_are_never_cached_and_spends_leave_cached_records_alone() {
    let backend = Backend::new();
    let key = backend
        .keys
        .issue(KeyRecord::new("key_1", "acme").with_credits(Credits::new(3)))
        .unwrap();
    let (cache, _clock) = cached(&backend);
    assert_eq!(found_id(&cache, &key).await, "key_1");
    assert_eq!(backend.calls(), 1);

    for left in (0..3).rev() {
        assert_eq!(
            cache.spend("key_1", 1).await.unwrap(),
            CreditOutcome::Spent { remaining: left }
        );
    }
    assert_eq!(
        cache.spend("key_1", 1).await.unwrap(),
        CreditOutcome::Exhausted { refill_in: None }
    );
    assert_eq!(backend.credit_calls.load(Ordering::SeqCst), 4);
    // A change made behind the cache's back is seen at once.
    backend
        .keys
        .update("key_1", |r| r.credits = Some(Credits::new(7)))
        .unwrap();
    assert_eq!(cache.credits("key_1").await.unwrap(), Some(Credits::new(7)));
    assert_eq!(backend.credit_calls.load(Ordering::SeqCst), 5);
    // The cached record was not touched by the spends: still a fresh hit.
    assert_eq!(found_id(&cache, &key).await, "key_1");
    assert_eq!(backend.calls(), 1, "a spend must not invalidate the record");

    backend.set(DOWN);
    assert!(matches!(
        cache.spend("key_1", 1).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        cache.credits("key_1").await,
        Err(StoreError::Unavailable(_))
    ));
    backend.set(UP);
    assert_eq!(
        cache.spend("key_1", 7).await.unwrap(),
        CreditOutcome::Spent { remaining: 0 }
    );
}

/// Setting the credits through the cache's `KeyManager` is a change of the record: the cache
/// forgets it, and the next lookup shows the new budget.
#[tokio::test]
async fn setting_credits_through_the_cache_forgets_the_record() {
    let backend = MemoryStore::new();
    let key = backend.issue(KeyRecord::new("key_1", "acme")).unwrap();
    let cache = CachedStore::new(backend.clone());
    assert_eq!(lookup(&cache, &key).await.unwrap().unwrap().credits, None);
    KeyManager::update(
        &cache,
        "key_1",
        KeyUpdate::new().credits(Some(Credits::new(2))),
    )
    .await
    .unwrap();
    assert_eq!(
        lookup(&cache, &key).await.unwrap().unwrap().credits,
        Some(Credits::new(2))
    );
    assert_eq!(
        cache.spend("key_1", 2).await.unwrap(),
        CreditOutcome::Spent { remaining: 0 }
    );
    assert_eq!(
        backend.spend("key_1", 1).await.unwrap(),
        CreditOutcome::Exhausted { refill_in: None }
    );
}
