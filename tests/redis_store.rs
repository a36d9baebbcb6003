//! `RedisStore` against a real Redis: the `KeyManager` conformance suite and its credit checks
//! (two instances spending one key's credits; a spend that rewrites nothing else), keys through
//! a real axum `Router`, change notifications between two instances, and outages made by a proxy the
//! test controls.
//!
//! The tests that need a server are ignored unless asked for: run them with
//! `KEYGATE_TEST_REDIS_URL` set (e.g. `redis://127.0.0.1:6379/`) and `-- --include-ignored`.
//! Asked for without the variable, they fail, so that a run without Redis never passes for one
//! that tested it. Each test uses a key prefix of its own, random per run, and deletes every key
//! under it when it ends (also when it fails). The tests that need no server (a closed port, the
//! `Debug` text) are not ignored.
#![cfg(feature = "redis")]

mod common;
mod services;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{conformance, routes, send, with_key};
use http::StatusCode;
use keygate::auth::AuthLayer;
use keygate::key::{ApiKey, Credits, KeyDigest, KeyFormat, KeyRecord, KeyStatus, Refill};
use keygate::store::{
    CachedStore, CreditOutcome, CreditStore, Invalidate, KeyManager, KeyStore, KeyUpdate,
    RedisStore, StoreError,
};
use redis::aio::ConnectionManager;
use services::{Cleanup, keys_under, redis_url, unique_prefix};
use tokio::sync::mpsc;

/// No test runs longer than this.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// How long a notification may take from one instance to another.
const NOTICE: Duration = Duration::from_secs(2);
/// The lookup timeout of the stores whose failures are timed.
const SHORT: Duration = Duration::from_millis(300);
/// What a loaded 2-core machine may add to a timed answer.
const SLACK: Duration = Duration::from_millis(700);
/// A port nothing listens on.
const CLOSED_PORT_URL: &str = "redis://127.0.0.1:1/";

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("the test took too long")
}

/// A store on the test's Redis under `prefix`.
async fn store(prefix: &str) -> RedisStore {
    RedisStore::connect(&redis_url())
        .await
        .expect("connect to KEYGATE_TEST_REDIS_URL")
        .prefix(prefix)
}

/// The test Redis's address, and its connection settings with that address swapped for `via`.
async fn redis_addr() -> (SocketAddr, redis::ConnectionInfo) {
    let client = redis::Client::open(redis_url().as_str()).expect("a valid Redis URL");
    let info = client.get_connection_info().clone();
    let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        panic!("the fault tests need a Redis on TCP, without TLS");
    };
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve the Redis host")
        .next()
        .expect("an address for the Redis host");
    (addr, info)
}

/// A proxy to the test's Redis, and a store under `prefix` that goes through it, built with
/// `RedisStore::new` on a client and connection manager of the test's own.
async fn proxied_store(prefix: &str) -> (Proxy, RedisStore) {
    let (upstream, info) = redis_addr().await;
    let proxy = Proxy::start(upstream).await;
    let via = info.set_addr(redis::ConnectionAddr::Tcp(
        proxy.addr().ip().to_string(),
        proxy.addr().port(),
    ));
    let client = redis::Client::open(via).expect("a client through the proxy");
    let conn = ConnectionManager::new_with_config(client.clone(), RedisStore::manager_config())
        .await
        .expect("connect through the proxy");
    let store = RedisStore::new(client, conn).prefix(prefix).timeout(SHORT);
    (proxy, store)
}

/// What a watcher told its sink.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Id(String),
    Digest(KeyDigest),
    All,
}

/// An `Invalidate` that records what it is told, and can be closed.
struct Recorder {
    events: mpsc::UnboundedSender<Event>,
    closed: Arc<AtomicBool>,
}

impl Recorder {
    fn new() -> (Self, mpsc::UnboundedReceiver<Event>, Arc<AtomicBool>) {
        let (events, received) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        let recorder = Self {
            events,
            closed: closed.clone(),
        };
        (recorder, received, closed)
    }
}

impl Invalidate for Recorder {
    fn invalidate_id(&self, id: &str) {
        let _ = self.events.send(Event::Id(id.to_owned()));
    }

    fn invalidate_digest(&self, digest: &KeyDigest) {
        let _ = self.events.send(Event::Digest(*digest));
    }

    fn invalidate_all(&self) {
        let _ = self.events.send(Event::All);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// The next event, which must come within [`NOTICE`].
async fn next(events: &mut mpsc::UnboundedReceiver<Event>, what: &str) -> Event {
    match tokio::time::timeout(NOTICE, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("{what}: the watcher dropped its sink"),
        Err(_) => panic!("{what}: no notification within {NOTICE:?}"),
    }
}

/// Checks that no event came, waiting a little for late ones.
async fn quiet(events: &mut mpsc::UnboundedReceiver<Event>, what: &str) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Ok(event) = events.try_recv() {
        panic!("{what}: unexpected notification {event:?}");
    }
}

/// How many connections are subscribed to `channel`.
async fn subscribers(channel: &str) -> i64 {
    let client = redis::Client::open(redis_url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut conn)
        .await
        .unwrap();
    n
}

/// Waits up to `within` for `check` to hold, polling.
async fn until<F: Future<Output = bool>>(within: Duration, mut check: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The conformance suite

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn conformance_suite() {
    let prefix = unique_prefix("conformance");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        // A format of its own: the suite checks that issued keys follow the store's format.
        let store = store(&prefix)
            .await
            .key_format(KeyFormat::new("kgc_").unwrap());
        conformance::run(&store).await;
        // The suite deletes what it creates: so does the store, down to the last index entry.
        let left = keys_under(&redis_url(), &prefix).unwrap();
        assert!(
            left.is_empty(),
            "keys left after every record was deleted: {left:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn credit_conformance() {
    let prefix = unique_prefix("credits");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let store = store(&prefix).await;
        conformance::credit_checks(&store).await;
        let left = keys_under(&redis_url(), &prefix).unwrap();
        assert!(
            left.is_empty(),
            "keys left after the credit checks: {left:?}"
        );
    })
    .await;
}

/// Two instances, each on a connection of its own, spend one key's credits from many tasks:
/// exactly the credits are admitted, and the count ends at exactly 0. Through caches, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn credits_reach_exactly_zero_across_two_instances() {
    let prefix = unique_prefix("credits-shared");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let (a, b) = (store(&prefix).await, store(&prefix).await);
        conformance::credits_across_instances(&a, &b).await;
        conformance::credits_across_instances(&CachedStore::new(a), &CachedStore::new(b)).await;
    })
    .await;
}

/// A spend changes the count and nothing else: the record's JSON and version stay as they
/// were, and the watchers hear nothing (a cache keeps its records). Setting the credits is a
/// change of the record, and is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_spend_rewrites_nothing_but_the_count() {
    let prefix = unique_prefix("credits-quiet");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let store = store(&prefix).await;
        let (recorder, mut events, _closed) = Recorder::new();
        store.watch(recorder).await.expect("subscribe");
        let refill = Refill::new(10, Duration::from_secs(3600));
        let issued = store
            .issue(
                KeyRecord::new("key_1", "acme").with_credits(Credits::new(10).with_refill(refill)),
            )
            .await
            .unwrap();
        assert_eq!(
            next(&mut events, "issue").await,
            Event::Digest(issued.key.digest())
        );
        let client = redis::Client::open(redis_url().as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let entry = format!("{prefix}r:key_1");
        let fields = |conn: &mut redis::aio::MultiplexedConnection| {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&entry).arg("record").arg("ver").arg("credits");
            let mut conn = conn.clone();
            async move {
                cmd.query_async::<Vec<Option<String>>>(&mut conn)
                    .await
                    .unwrap()
            }
        };
        let before = fields(&mut conn).await;
        assert_eq!(before[2].as_deref(), Some("10"));
        for left in (7..10).rev() {
            assert_eq!(
                store.spend("key_1", 1).await.unwrap(),
                CreditOutcome::Spent { remaining: left }
            );
        }
        let after = fields(&mut conn).await;
        assert_eq!(after[..2], before[..2], "a spend rewrote the record");
        assert_eq!(after[2].as_deref(), Some("7"));
        quiet(&mut events, "spends").await;
        assert_eq!(
            store
                .lookup(&issued.key.digest())
                .await
                .unwrap()
                .unwrap()
                .credits,
            Some(Credits::new(7).with_refill(refill)),
            "a lookup shows the live count"
        );

        store
            .update("key_1", KeyUpdate::new().credits(Some(Credits::new(1))))
            .await
            .unwrap();
        assert_eq!(
            next(&mut events, "setting the credits").await,
            Event::Id("key_1".into())
        );
        assert_eq!(store.credits("key_1").await.unwrap(), Some(Credits::new(1)));
        store.delete("key_1").await.unwrap();
        assert_eq!(
            store.spend("key_1", 1).await.unwrap(),
            CreditOutcome::NoBudget
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn conformance_purge() {
    let prefix = unique_prefix("purge");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let store = store(&prefix).await;
        conformance::purge_checks(&store).await;
        let left = keys_under(&redis_url(), &prefix).unwrap();
        assert!(
            left.is_empty(),
            "keys left after the purge checks: {left:?}"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn ids_and_owners_with_colons_do_not_reach_into_other_names() {
    let prefix = unique_prefix("names");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let store = store(&prefix).await;
        // As raw key names, `o:x` + `r:y` and the record of id `o:x` would collide.
        let a = store.issue(KeyRecord::new("o:x", "r:y")).await.unwrap();
        let b = store.issue(KeyRecord::new("x", "o")).await.unwrap();
        let c = store.issue(KeyRecord::new("{x}", "o:x")).await.unwrap();
        for (issued, id) in [(&a, "o:x"), (&b, "x"), (&c, "{x}")] {
            let found = store.lookup(&issued.key.digest()).await.unwrap().unwrap();
            assert_eq!(found.id, id);
        }
        let mut names = keys_under(&redis_url(), &prefix).unwrap();
        names.sort();
        let want = [
            "d:".to_owned() + &a.key.digest().to_hex(),
            "d:".to_owned() + &b.key.digest().to_hex(),
            "d:".to_owned() + &c.key.digest().to_hex(),
            "ids".to_owned(),
            "o:o".to_owned(),
            "o:o%3Ax".to_owned(),
            "o:r%3Ay".to_owned(),
            "r:o%3Ax".to_owned(),
            "r:x".to_owned(),
            "r:%7Bx%7D".to_owned(),
        ];
        let mut want: Vec<String> = want.iter().map(|n| format!("{prefix}{n}")).collect();
        want.sort();
        assert_eq!(names, want);
        for id in ["o:x", "x", "{x}"] {
            store.delete(id).await.unwrap();
        }
        assert!(keys_under(&redis_url(), &prefix).unwrap().is_empty());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Through a Router

async fn status(app: &axum::Router, key: &ApiKey) -> StatusCode {
    send(app.clone(), with_key(key.expose_secret()))
        .await
        .status
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn keys_through_a_router_issue_revoke_rotate() {
    let prefix = unique_prefix("router");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let store = store(&prefix).await;
        let app = routes().layer(AuthLayer::new(store.clone()));

        let issued = store
            .issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]))
            .await
            .unwrap();
        assert!(
            issued.key.expose_secret().starts_with("kg_"),
            "the default format"
        );
        let reply = send(app.clone(), with_key(issued.key.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["id"], "key_1");
        assert_eq!(reply.json()["owner"], "acme");
        assert_eq!(reply.json()["scopes"], serde_json::json!(["weather:read"]));
        reply.assert_no_leak(issued.key.expose_secret());
        assert_eq!(
            status(&app, &KeyManager::format(&store).generate()).await,
            StatusCode::UNAUTHORIZED,
            "a key never issued"
        );

        store.revoke("key_1").await.unwrap();
        assert_eq!(status(&app, &issued.key).await, StatusCode::UNAUTHORIZED);

        // Disabled, then back on.
        let other = store.issue(KeyRecord::new("key_2", "acme")).await.unwrap();
        store
            .update("key_2", KeyUpdate::new().status(KeyStatus::Disabled))
            .await
            .unwrap();
        assert_eq!(status(&app, &other.key).await, StatusCode::UNAUTHORIZED);
        store
            .update("key_2", KeyUpdate::new().status(KeyStatus::Active))
            .await
            .unwrap();
        assert_eq!(status(&app, &other.key).await, StatusCode::OK);

        // Rotated out: works for the grace of 1 s, then 401; the new key keeps working.
        let rotated = store.rotate("key_2", Duration::from_secs(1)).await.unwrap();
        assert_eq!(status(&app, &other.key).await, StatusCode::OK);
        assert_eq!(status(&app, &rotated.key).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(status(&app, &other.key).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&app, &rotated.key).await, StatusCode::OK);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Notifications

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_change_through_one_instance_reaches_the_watcher_of_another() {
    let prefix = unique_prefix("watch");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let a = store(&prefix).await;
        let b = store(&prefix).await;
        let (recorder, mut events, closed) = Recorder::new();
        b.watch(recorder).await.expect("subscribe");
        assert_eq!(subscribers(&b.channel()).await, 1);

        let issued = a.issue(KeyRecord::new("key:1", "acme")).await.unwrap();
        assert_eq!(
            next(&mut events, "issue").await,
            Event::Digest(issued.key.digest())
        );
        a.update("key:1", KeyUpdate::new().scopes(["x"]))
            .await
            .unwrap();
        assert_eq!(next(&mut events, "update").await, Event::Id("key:1".into()));
        let rotated = a.rotate("key:1", Duration::from_secs(60)).await.unwrap();
        assert_eq!(next(&mut events, "rotate").await, Event::Id("key:1".into()));
        assert_eq!(
            next(&mut events, "rotate").await,
            Event::Digest(rotated.key.digest())
        );
        let legacy = ApiKey::new("legacy-key-from-2019");
        a.insert(legacy.digest(), KeyRecord::new("key:2", "acme"))
            .await
            .unwrap();
        assert_eq!(
            next(&mut events, "insert").await,
            Event::Digest(legacy.digest())
        );
        a.revoke("key:2").await.unwrap();
        assert_eq!(next(&mut events, "revoke").await, Event::Id("key:2".into()));
        let purged = a
            .purge(std::time::SystemTime::now() + Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(purged, 1);
        assert_eq!(next(&mut events, "purge").await, Event::Id("key:2".into()));
        a.delete("key:1").await.unwrap();
        assert_eq!(next(&mut events, "delete").await, Event::Id("key:1".into()));
        // Refused changes tell nobody.
        assert!(a.delete("key:1").await.is_err());
        assert!(a.issue(KeyRecord::new("", "acme")).await.is_err());
        quiet(&mut events, "after the last change").await;

        // A closed sink ends the watcher, and its subscription with it, also without traffic.
        closed.store(true, Ordering::SeqCst);
        let channel = b.channel();
        assert!(
            until(Duration::from_secs(3), || {
                let channel = channel.clone();
                async move { subscribers(&channel).await == 0 }
            })
            .await,
            "the watcher of a closed sink is still subscribed"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_cache_on_another_instance_forgets_what_changed() {
    let prefix = unique_prefix("cached");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let a = store(&prefix).await;
        // Instance B caches for a minute, unknown keys too: only a notification makes it see a
        // change sooner.
        let cache = CachedStore::builder(store(&prefix).await)
            .ttl(Duration::from_secs(60))
            .negative_ttl(Duration::from_secs(60))
            .build();
        cache.get_ref().watch(cache.invalidator()).await.unwrap();
        let b = routes().layer(AuthLayer::new(cache.clone()));

        let legacy = ApiKey::new("legacy-key-from-2019");
        assert_eq!(status(&b, &legacy).await, StatusCode::UNAUTHORIZED);
        a.insert(legacy.digest(), KeyRecord::new("key_1", "acme"))
            .await
            .unwrap();
        assert!(
            until(NOTICE, || {
                let (b, key) = (b.clone(), legacy.clone());
                async move { status(&b, &key).await == StatusCode::OK }
            })
            .await,
            "a key created on A stays unknown on B"
        );
        a.revoke("key_1").await.unwrap();
        assert!(
            until(NOTICE, || {
                let (b, key) = (b.clone(), legacy.clone());
                async move { status(&b, &key).await == StatusCode::UNAUTHORIZED }
            })
            .await,
            "a key revoked on A still works on B"
        );

        // Once the cache is gone, so is its watcher.
        let channel = a.channel();
        drop(b);
        drop(cache);
        assert!(
            until(Duration::from_secs(3), || {
                let channel = channel.clone();
                async move { subscribers(&channel).await == 0 }
            })
            .await,
            "the watcher of a dropped cache is still subscribed"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn conformance_suite_through_a_cache() {
    let prefix = unique_prefix("conformance-cached");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let backend = store(&prefix).await;
        let cache = CachedStore::new(backend.clone());
        backend.watch(cache.invalidator()).await.unwrap();
        conformance::run(&cache).await;
        conformance::credit_checks(&cache).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_quiet_subscription_stays_up() {
    let prefix = unique_prefix("quiet");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let store = store(&prefix).await;
        let (recorder, mut events, _closed) = Recorder::new();
        store.watch(recorder).await.expect("subscribe");
        // Long enough for the watcher to ping a silent subscription; the answer must keep it
        // up, with nothing forgotten.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let issued = store.issue(KeyRecord::new("k", "o")).await.unwrap();
        assert_eq!(
            next(&mut events, "issue after a quiet while").await,
            Event::Digest(issued.key.digest())
        );
        quiet(&mut events, "after a quiet while").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Outages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn lookups_fail_while_redis_is_cut_off_and_recover_without_a_new_store() {
    let prefix = unique_prefix("cut");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let (proxy, store) = proxied_store(&prefix).await;
        let issued = store.issue(KeyRecord::new("key_1", "acme")).await.unwrap();
        let app = routes().layer(AuthLayer::new(store.clone()));
        assert_eq!(status(&app, &issued.key).await, StatusCode::OK);

        proxy.cut();
        for _ in 0..3 {
            let started = Instant::now();
            let error = store
                .lookup(&issued.key.digest())
                .await
                .expect_err("a lookup while Redis is cut off");
            assert!(
                started.elapsed() <= SHORT + SLACK,
                "the lookup failed after {:?}",
                started.elapsed()
            );
            let shown = format!("{error} {error:?}");
            assert!(
                !shown.contains(&issued.key.digest().to_hex()[..16]),
                "the error shows the digest: {shown}"
            );
            let started = Instant::now();
            let spent = store.spend("key_1", 1).await;
            assert!(
                matches!(spent, Err(StoreError::Unavailable(_) | StoreError::Timeout)),
                "a spend while Redis is cut off: {spent:?}"
            );
            let read = store.credits("key_1").await;
            assert!(
                matches!(read, Err(StoreError::Unavailable(_) | StoreError::Timeout)),
                "a read of credits while Redis is cut off: {read:?}"
            );
            assert!(
                started.elapsed() <= 2 * SHORT + SLACK,
                "{:?}",
                started.elapsed()
            );
        }
        // An outage is 503, never 401.
        assert_eq!(
            status(&app, &issued.key).await,
            StatusCode::SERVICE_UNAVAILABLE
        );

        proxy.restore();
        assert!(
            until(Duration::from_secs(5), || {
                let lookup = store.lookup(&issued.key.digest());
                async move { matches!(lookup.await, Ok(Some(_))) }
            })
            .await,
            "lookups do not work again after Redis is back"
        );
        assert_eq!(status(&app, &issued.key).await, StatusCode::OK);
        store.delete("key_1").await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_redis_that_does_not_answer_is_a_timeout() {
    let prefix = unique_prefix("blackhole");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let (proxy, store) = proxied_store(&prefix).await;
        let issued = store.issue(KeyRecord::new("key_1", "acme")).await.unwrap();
        proxy.blackhole();
        // The first lookup may find the dropped connection; the next ones wait for an answer
        // that never comes.
        let _ = store.lookup(&issued.key.digest()).await;
        let started = Instant::now();
        let error = store
            .lookup(&issued.key.digest())
            .await
            .expect_err("a lookup while Redis does not answer");
        assert!(matches!(error, StoreError::Timeout), "{error:?}");
        assert!(
            started.elapsed() <= SHORT + SLACK,
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let spent = store.spend("key_1", 1).await;
        assert!(matches!(spent, Err(StoreError::Timeout)), "{spent:?}");
        assert!(
            started.elapsed() <= SHORT + SLACK,
            "{:?}",
            started.elapsed()
        );
        proxy.restore();
        assert!(
            until(Duration::from_secs(5), || {
                let lookup = store.lookup(&issued.key.digest());
                async move { matches!(lookup.await, Ok(Some(_))) }
            })
            .await,
            "lookups do not work again after Redis answers again"
        );
        store.delete("key_1").await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_watcher_resubscribes_forgets_everything_and_delivers_again() {
    let prefix = unique_prefix("rewatch");
    let _cleanup = Cleanup::new(&prefix);
    bounded(async {
        let direct = store(&prefix).await;
        let (proxy, through) = proxied_store(&prefix).await;
        let (recorder, mut events, closed) = Recorder::new();
        through
            .watch(recorder)
            .await
            .expect("subscribe through the proxy");
        let first = direct.issue(KeyRecord::new("key_1", "acme")).await.unwrap();
        assert_eq!(
            next(&mut events, "before the cut").await,
            Event::Digest(first.key.digest())
        );

        proxy.cut();
        // Changes made while the watcher is cut off never reach it...
        direct.revoke("key_1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            events.try_recv().is_err(),
            "a notification came through a cut connection"
        );
        // ...so once subscribed again, it forgets everything.
        proxy.restore();
        assert_eq!(next(&mut events, "after the restore").await, Event::All);
        let second = direct.issue(KeyRecord::new("key_2", "acme")).await.unwrap();
        assert_eq!(
            next(&mut events, "a change after the restore").await,
            Event::Digest(second.key.digest())
        );
        quiet(&mut events, "after the restore").await;

        // Closed while cut off, it stops trying.
        proxy.cut();
        closed.store(true, Ordering::SeqCst);
        proxy.restore();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            subscribers(&direct.channel()).await,
            0,
            "a closed watcher subscribed again"
        );
        assert!(
            events.try_recv().is_err(),
            "a closed watcher told its sink something"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Without a server

#[tokio::test]
async fn connect_fails_at_once_when_redis_is_down_or_the_url_is_bad() {
    let started = Instant::now();
    let error = RedisStore::connect(CLOSED_PORT_URL)
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(
        error,
        StoreError::Unavailable(_) | StoreError::Timeout
    ));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(RedisStore::connect("not a url").await.is_err());
    assert!(RedisStore::connect("http://127.0.0.1/").await.is_err());
}

#[tokio::test]
async fn debug_shows_no_password() {
    let client = redis::Client::open("redis://:hunter2-secret@127.0.0.1:1/3").unwrap();
    let conn =
        ConnectionManager::new_lazy_with_config(client.clone(), RedisStore::manager_config())
            .unwrap();
    let store = RedisStore::new(client, conn).prefix("p:");
    let shown = format!("{store:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("127.0.0.1:1/3"), "{shown}");
    assert!(shown.contains("\"p:\""), "{shown}");
    assert_eq!(store.channel(), "p:events");
    // A lookup against a Redis that is down is an error, never an unknown key.
    let error = store
        .lookup(&KeyDigest::of("k"))
        .await
        .expect_err("Redis is down");
    assert!(!format!("{error:?}").contains("hunter2"));
}
