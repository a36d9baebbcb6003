//! Usage counts summed over instances: `UsageTracker::flush_to` / `flush_every` into
//! `MemoryUsage` and (feature `redis`) `RedisUsage`.
//!
//! The Redis tests are ignored unless asked for: run them with `KEYGATE_TEST_REDIS_URL` set
//! (e.g. `redis://127.0.0.1:6379/`) and `-- --include-ignored`; asked for without the variable,
//! they fail. Each uses its own random key prefix, deletes its keys at the end, and gives them a
//! ten-minute TTL, so that a failed run leaves nothing behind for long. The fault tests put a
//! `common::proxy::Proxy` of their own between the store and Redis and cut that.

mod common;
mod services;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use common::{Hits, limiter, send, store_with, with_key};
use http::StatusCode;
use keygate::clock::{Clock, ManualClock};
use keygate::key::{ApiKey, KeyRecord};
use keygate::ratelimit::{
    MemoryUsage, RateLimitLayer, Usage, UsageEntry, UsageFuture, UsageStore, UsageTotals,
    UsageTracker,
};
use keygate::{BoxError, Quota, auth::AuthLayer};
use tower::ServiceBuilder;

/// No test runs longer than this.
const TEST_LIMIT: Duration = Duration::from_secs(20);
/// What a loaded 2-core machine may add to a timed event.
const SLACK: Duration = Duration::from_millis(500);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("the test took too long")
}

/// `GET /me` (the caller's id) behind `AuthLayer` over keys `key_1` and `key_2`, then a
/// `RateLimitLayer` of 2 per minute (on a clock that does not move) that counts into `usage`.
fn app(usage: &UsageTracker) -> (Router, Vec<ApiKey>) {
    let (store, keys) = store_with([
        KeyRecord::new("key_1", "acme"),
        KeyRecord::new("key_2", "globex"),
    ]);
    let (limiter, _clock) = limiter();
    let layer = RateLimitLayer::new(limiter, Quota::per_minute(2)).track_usage(usage.clone());
    let app = Hits::default().router().layer(
        ServiceBuilder::new()
            .layer(AuthLayer::new(store))
            .layer(layer),
    );
    (app, keys)
}

/// Sends `n` requests with `key`; their statuses.
async fn requests(app: &Router, key: &ApiKey, n: usize) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(
            send(app.clone(), with_key(key.expose_secret()))
                .await
                .status,
        );
    }
    statuses
}

fn counts(t: &UsageTotals) -> (u64, u64) {
    (t.allowed, t.limited)
}

/// `at`, to the millisecond (what Redis keeps).
fn to_ms(at: SystemTime) -> SystemTime {
    let ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis();
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap())
}

/// Through a real router: 3 requests of `key_1` (2 allowed, 1 limited) and 1 of `key_2`, then
/// one flush to `store`, whose totals must match exactly, with `last_used_at` at the flush.
async fn router_counts_reach(store: &dyn UsageStore, same_ms: bool) {
    let clock = ManualClock::new();
    let usage = UsageTracker::new(100).with_clock(clock.clone());
    let (app, keys) = app(&usage);
    use StatusCode as S;
    assert_eq!(
        requests(&app, &keys[0], 3).await,
        [S::OK, S::OK, S::TOO_MANY_REQUESTS]
    );
    assert_eq!(requests(&app, &keys[1], 1).await, [S::OK]);
    let at = clock.now();
    assert_eq!(usage.flush_to(store).await.unwrap(), 2);
    assert_eq!(usage.get("key_1"), None, "a flush starts a new period");

    let key_1 = store.totals("key_1").await.unwrap();
    let key_2 = store.totals("key_2").await.unwrap();
    assert_eq!(counts(&key_1), (2, 1));
    assert_eq!(counts(&key_2), (1, 0));
    let expected = if same_ms { at } else { to_ms(at) };
    assert_eq!(key_1.last_used_at, Some(expected));

    // Only limited requests: counted, and `last_used_at` stays where it was.
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        requests(&app, &keys[0], 2).await,
        [S::TOO_MANY_REQUESTS, S::TOO_MANY_REQUESTS]
    );
    assert_eq!(usage.flush_to(store).await.unwrap(), 1);
    let key_1 = store.totals("key_1").await.unwrap();
    assert_eq!(counts(&key_1), (2, 3));
    assert_eq!(key_1.last_used_at, Some(expected));
    // Nothing new: no call, nothing counted twice.
    assert_eq!(usage.flush_to(store).await.unwrap(), 0);
    assert_eq!(counts(&store.totals("key_1").await.unwrap()), (2, 3));
}

// ---------------------------------------------------------------------------------------------
// In memory

#[tokio::test]
async fn memory_usage_round_trip_sums_two_trackers() {
    bounded(async {
        let totals = MemoryUsage::new();
        let clock = ManualClock::new();
        let a = UsageTracker::new(100).with_clock(clock.clone());
        let b = UsageTracker::new(100).with_clock(clock.clone());
        a.record("key_1", true);
        a.record("key_1", false);
        b.record("key_1", true);
        b.record("key_2", false);
        let first = clock.now();
        assert_eq!(a.flush_to(&totals).await.unwrap(), 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.flush_to(&totals).await.unwrap(), 2);

        let key_1 = totals.totals("key_1").await.unwrap();
        assert_eq!(counts(&key_1), (2, 1));
        assert_eq!(key_1.last_used_at, Some(clock.now()));
        assert!(key_1.last_used_at > Some(first));
        let key_2 = totals.get("key_2").unwrap();
        assert_eq!(
            (key_2.allowed, key_2.limited, key_2.last_used_at),
            (0, 1, None)
        );
        assert_eq!(
            totals.totals("nobody").await.unwrap(),
            UsageTotals::default()
        );
        assert_eq!(totals.snapshot()[0].0, "key_1");
    })
    .await;
}

#[tokio::test]
async fn router_counts_are_flushed_to_memory() {
    bounded(router_counts_reach(&MemoryUsage::new(), true)).await;
}

#[tokio::test]
async fn callers_past_the_limit_are_flushed_as_the_overflow() {
    bounded(async {
        let totals = MemoryUsage::new();
        let usage = UsageTracker::new(1);
        usage.record("key_1", true);
        usage.record("key_2", true);
        usage.record("key_3", false);
        assert_eq!(usage.flush_to(&totals).await.unwrap(), 2);
        assert_eq!(counts(&totals.get("key_1").unwrap()), (1, 0));
        assert_eq!(totals.get("key_2"), None);
        let overflow = totals.get(UsageTracker::OVERFLOW_CALLER).unwrap();
        assert_eq!(counts(&overflow), (1, 1));
        assert!(overflow.last_used_at.is_some());
    })
    .await;
}

/// A store that fails while `down`, and otherwise adds to a `MemoryUsage`; it counts its calls.
#[derive(Clone, Default)]
struct Flaky {
    down: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    totals: Arc<std::sync::OnceLock<MemoryUsage>>,
}

impl Flaky {
    fn memory(&self) -> &MemoryUsage {
        self.totals.get_or_init(MemoryUsage::new)
    }
}

impl UsageStore for Flaky {
    fn add(&self, batch: Vec<UsageEntry>) -> UsageFuture<'_, ()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(BoxError::from("connection refused")) });
        }
        self.memory().add(batch)
    }

    fn totals(&self, caller: &str) -> UsageFuture<'_, UsageTotals> {
        self.memory().totals(caller)
    }
}

#[tokio::test]
async fn a_failing_store_keeps_the_counts_and_gets_them_once_it_recovers() {
    bounded(async {
        let store = Flaky::default();
        let clock = ManualClock::new();
        let usage = UsageTracker::new(100).with_clock(clock.clone());
        let (app, keys) = app(&usage);
        requests(&app, &keys[0], 3).await; // 2 allowed, 1 limited
        let used_at = clock.now();

        store.down.store(true, Ordering::SeqCst);
        let e = usage.flush_to(&store).await.unwrap_err();
        assert_eq!(e.to_string(), "connection refused");
        assert_eq!(
            usage.get("key_1"),
            Some(Usage {
                allowed: 2,
                limited: 1
            })
        );
        // Traffic during the outage joins the kept counts.
        requests(&app, &keys[0], 1).await; // limited
        requests(&app, &keys[1], 1).await; // allowed
        clock.advance(Duration::from_secs(10));
        let second = clock.now();
        assert!(usage.flush_to(&store).await.is_err());
        assert_eq!(store.calls.load(Ordering::SeqCst), 2);
        assert_eq!(store.memory().get("key_1"), None, "nothing got through");

        store.down.store(false, Ordering::SeqCst);
        clock.advance(Duration::from_secs(10));
        assert_eq!(usage.flush_to(&store).await.unwrap(), 2);
        let key_1 = store.memory().get("key_1").unwrap();
        assert_eq!(counts(&key_1), (2, 2));
        // Last let through before the first failed flush: that flush's time.
        assert_eq!(key_1.last_used_at, Some(used_at));
        let key_2 = store.memory().get("key_2").unwrap();
        // Let through between the failed flushes: the second's time, not the one that got
        // through.
        assert_eq!((key_2.allowed, key_2.last_used_at), (1, Some(second)));
        // Exactly once.
        assert_eq!(usage.flush_to(&store).await.unwrap(), 0);
        assert_eq!(counts(&store.memory().get("key_1").unwrap()), (2, 2));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The flush loop

/// Waits until `caller`'s totals in `store` are `want`; how long that took.
async fn until_totals(store: &MemoryUsage, caller: &str, want: (u64, u64)) -> Duration {
    let start = Instant::now();
    loop {
        if store.get(caller).map(|t| counts(&t)) == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{caller} never reached {want:?}: {:?}",
            store.get(caller)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn flush_every_flushes_within_its_interval_and_once_more_on_shutdown() {
    bounded(async {
        let every = Duration::from_millis(300);
        let totals = MemoryUsage::new();
        let usage = UsageTracker::new(100);
        let (flush, flushing) = usage.flush_every(totals.clone(), every);
        let running = tokio::spawn(flushing);

        usage.record("key_1", true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            totals.get("key_1"),
            None,
            "the first flush is one interval away"
        );
        let waited = until_totals(&totals, "key_1", (1, 0)).await;
        assert!(waited < every + SLACK, "flushed after {waited:?}");

        // The next interval's requests go with the next tick.
        usage.record("key_1", false);
        let waited = until_totals(&totals, "key_1", (1, 1)).await;
        assert!(waited < every + SLACK, "flushed after {waited:?}");

        // Shutdown does not wait for the tick: it flushes at once, and the loop ends.
        usage.record("key_1", true);
        let start = Instant::now();
        assert_eq!(flush.shutdown().await.unwrap(), 1);
        assert!(start.elapsed() < every / 2, "{:?}", start.elapsed());
        assert_eq!(counts(&totals.get("key_1").unwrap()), (2, 1));
        tokio::time::timeout(SLACK, running)
            .await
            .expect("the loop ends after shutdown")
            .unwrap();

        // Nothing flushes any more.
        usage.record("key_1", true);
        tokio::time::sleep(every + every / 2).await;
        assert_eq!(counts(&totals.get("key_1").unwrap()), (2, 1));
    })
    .await;
}

#[tokio::test]
async fn the_loop_outlives_its_handle_and_ends_with_the_tracker() {
    bounded(async {
        let every = Duration::from_millis(200);
        let totals = MemoryUsage::new();
        let usage = UsageTracker::new(100);
        let (flush, flushing) = usage.flush_every(totals.clone(), every);
        let running = tokio::spawn(flushing);
        drop(flush);

        usage.record("key_1", true);
        until_totals(&totals, "key_1", (1, 0)).await;

        // The last handle goes: the loop flushes what is left and ends.
        usage.record("key_1", true);
        drop(usage);
        tokio::time::timeout(every + SLACK, running)
            .await
            .expect("the loop ends once the tracker is dropped")
            .unwrap();
        assert_eq!(counts(&totals.get("key_1").unwrap()), (2, 0));
    })
    .await;
}

#[tokio::test]
async fn flush_every_keeps_counts_through_an_outage() {
    bounded(async {
        let every = Duration::from_millis(100);
        let store = Flaky::default();
        store.down.store(true, Ordering::SeqCst);
        let usage = UsageTracker::new(100);
        let (flush, flushing) = usage.flush_every(store.clone(), every);
        tokio::spawn(flushing);
        usage.record("key_1", true);
        // Several ticks fail…
        let start = Instant::now();
        while store.calls.load(Ordering::SeqCst) < 3 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the loop stopped trying"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        usage.record("key_1", false);
        assert_eq!(store.memory().get("key_1"), None);
        // …and the first that succeeds delivers everything, once.
        store.down.store(false, Ordering::SeqCst);
        until_totals(store.memory(), "key_1", (1, 1)).await;
        tokio::time::sleep(every * 3).await;
        assert_eq!(flush.shutdown().await.unwrap(), 0);
        assert_eq!(counts(&store.memory().get("key_1").unwrap()), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn shutdown_flushes_even_a_loop_never_spawned() {
    bounded(async {
        let totals = MemoryUsage::new();
        let usage = UsageTracker::new(100);
        let (flush, flushing) = usage.flush_every(totals.clone(), Duration::from_secs(3600));
        usage.record("key_1", true);
        assert_eq!(flush.shutdown().await.unwrap(), 1);
        assert_eq!(counts(&totals.get("key_1").unwrap()), (1, 0));
        // A loop spawned after its shutdown ends at once, without flushing.
        usage.record("key_1", true);
        tokio::time::timeout(SLACK, flushing)
            .await
            .expect("a stopped loop ends at once");
        assert_eq!(counts(&totals.get("key_1").unwrap()), (1, 0));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Redis

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;

    use std::net::SocketAddr;

    use common::proxy::Proxy;
    use keygate::ratelimit::{PartialAdd, RedisUsage};
    use redis::AsyncCommands;
    use services::redis_url;

    const KEEP: Duration = Duration::from_secs(600);

    /// A prefix no other test or run uses.
    fn unique_prefix(test: &str) -> String {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        format!("keygate-test:usage:{test}:{:016x}:", u64::from_le_bytes(r))
    }

    async fn store(url: &str, prefix: &str) -> RedisUsage {
        RedisUsage::connect(url)
            .await
            .expect("connect to KEYGATE_TEST_REDIS_URL")
            .prefix(prefix)
            .expire_after(KEEP)
    }

    async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Every key under `prefix`.
    async fn keys_under(url: &str, prefix: &str) -> Vec<String> {
        let mut conn = raw(url).await;
        let pattern = format!("{prefix}*");
        let mut keys: Vec<String> = Vec::new();
        let mut iter: redis::AsyncIter<'_, String> = conn.scan_match(&pattern).await.unwrap();
        while let Some(k) = iter.next_item().await {
            keys.push(k.unwrap());
        }
        keys.sort();
        keys
    }

    async fn clean(url: &str, prefix: &str) {
        let keys = keys_under(url, prefix).await;
        if !keys.is_empty() {
            let _: () = raw(url).await.del(keys).await.unwrap();
        }
    }

    /// Runs `body` with the Redis URL and a prefix of its own, then deletes every key under that
    /// prefix, whether `body` passed or panicked.
    async fn isolated<F, Fut>(test: &str, body: F)
    where
        F: FnOnce(String, String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let url = redis_url();
        let prefix = unique_prefix(test);
        let outcome = tokio::spawn(bounded(body(url.clone(), prefix.clone()))).await;
        clean(&url, &prefix).await;
        if let Err(e) = outcome {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("the test did not finish: {e}"),
            }
        }
    }

    fn redis_addr(url: &str) -> SocketAddr {
        let client = redis::Client::open(url).unwrap();
        let addr = client.get_connection_info().addr().to_string();
        use std::net::ToSocketAddrs;
        addr.to_socket_addrs()
            .unwrap()
            .next()
            .expect("the Redis address")
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn two_instances_sum_and_last_used_at_only_moves_forward() {
        isolated("sum", |url, prefix| async move {
            // Two instances: their own tracker, their own connection, one Redis.
            let (store_a, store_b) = (store(&url, &prefix).await, store(&url, &prefix).await);
            let clock_a = ManualClock::new();
            let clock_b = ManualClock::at(clock_a.now() - Duration::from_secs(60));
            let a = UsageTracker::new(100).with_clock(clock_a.clone());
            let b = UsageTracker::new(100).with_clock(clock_b.clone());
            for _ in 0..3 {
                a.record("key_1", true);
            }
            a.record("key_1", false);
            b.record("key_1", true);
            b.record("key_1", false);
            b.record("key_2", true);

            assert_eq!(a.flush_to(&store_a).await.unwrap(), 1);
            let key_1 = store_b.totals("key_1").await.unwrap();
            assert_eq!(counts(&key_1), (3, 1));
            assert_eq!(key_1.last_used_at, Some(to_ms(clock_a.now())));

            // B's clock is a minute behind: its flush adds, and leaves `last_used_at` alone.
            assert_eq!(b.flush_to(&store_b).await.unwrap(), 2);
            let key_1 = store_a.totals("key_1").await.unwrap();
            assert_eq!(counts(&key_1), (4, 2));
            assert_eq!(key_1.last_used_at, Some(to_ms(clock_a.now())));
            let key_2 = store_a.totals("key_2").await.unwrap();
            assert_eq!(counts(&key_2), (1, 0));
            assert_eq!(key_2.last_used_at, Some(to_ms(clock_b.now())));

            // Once B's time is later, it moves forward.
            clock_b.advance(Duration::from_secs(120));
            b.record("key_1", true);
            b.flush_to(&store_b).await.unwrap();
            let key_1 = store_a.totals("key_1").await.unwrap();
            assert_eq!(counts(&key_1), (5, 2));
            assert_eq!(key_1.last_used_at, Some(to_ms(clock_b.now())));
            // A batch from the past, fed directly, does not move it back.
            let old = UsageEntry::new(
                "key_1",
                Usage {
                    allowed: 1,
                    limited: 0,
                },
                Some(clock_a.now() - Duration::from_secs(3600)),
            );
            store_a.add(vec![old]).await.unwrap();
            let key_1 = store_a.totals("key_1").await.unwrap();
            assert_eq!(counts(&key_1), (6, 2));
            assert_eq!(key_1.last_used_at, Some(to_ms(clock_b.now())));

            assert_eq!(
                store_a.totals("nobody").await.unwrap(),
                UsageTotals::default()
            );
            // One hash per caller, with a TTL.
            assert_eq!(
                keys_under(&url, &prefix).await,
                [store_a.redis_key("key_1"), store_a.redis_key("key_2")]
            );
            let ttl: i64 = raw(&url)
                .await
                .pttl(store_a.redis_key("key_1"))
                .await
                .unwrap();
            assert!(ttl > 0 && ttl <= 600_000, "{ttl}");
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn router_counts_are_flushed_to_redis() {
        isolated("router", |url, prefix| async move {
            let totals = store(&url, &prefix).await;
            router_counts_reach(&totals, false).await;
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn caller_names_become_safe_distinct_keys() {
        isolated("names", |url, prefix| async move {
            let totals = store(&url, &prefix).await;
            let long = "z".repeat(10_000);
            let names: Vec<String> = [
                "key_1",
                "a:b",
                "a%3Ab",
                "{tag}",
                "",
                "*",
                "with space\n",
                "ünïcödé",
                "~x",
                &long,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let usage = UsageTracker::new(100);
            for (i, name) in names.iter().enumerate() {
                for _ in 0..=i {
                    usage.record(name, true);
                }
            }
            assert_eq!(usage.flush_to(&totals).await.unwrap(), names.len());
            for (i, name) in names.iter().enumerate() {
                let t = totals.totals(name).await.unwrap();
                assert_eq!(counts(&t), (i as u64 + 1, 0), "{name:?}");
            }
            let mut expected: Vec<String> = names.iter().map(|n| totals.redis_key(n)).collect();
            expected.sort();
            assert_eq!(keys_under(&url, &prefix).await, expected);
            for key in &expected {
                let rest = &key[prefix.len()..];
                assert!(rest.len() <= 128, "{key}");
                assert!(
                    rest.bytes().all(|b| b.is_ascii_graphic()
                        && !matches!(b, b':' | b'{' | b'}' | b'*' | b'?' | b'[' | b']')),
                    "{key}"
                );
            }
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn a_large_batch_is_one_flush() {
        isolated("large", |url, prefix| async move {
            let totals = store(&url, &prefix).await;
            let usage = UsageTracker::new(5_000);
            for i in 0..1_234 {
                usage.record(&format!("key_{i}"), i % 3 != 0);
            }
            assert_eq!(usage.flush_to(&totals).await.unwrap(), 1_234);
            assert_eq!(keys_under(&url, &prefix).await.len(), 1_234);
            for i in [0, 1, 499, 500, 999, 1_000, 1_233] {
                let t = totals.totals(&format!("key_{i}")).await.unwrap();
                let want = if i % 3 != 0 { (1, 0) } else { (0, 1) };
                assert_eq!(counts(&t), want, "key_{i}");
            }
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn a_key_that_is_not_ours_is_left_alone_and_its_counts_kept() {
        isolated("foreign", |url, prefix| async move {
            let totals = store(&url, &prefix).await;
            let mut conn = raw(&url).await;
            let bad = totals.redis_key("bad");
            let _: () = conn.set_ex(&bad, "not a hash", 600).await.unwrap();
            let usage = UsageTracker::new(100);
            usage.record("good", true);
            usage.record("bad", true);
            usage.record("bad", false);

            let e = usage.flush_to(&totals).await.unwrap_err();
            let partial = e.downcast_ref::<PartialAdd>().expect("a partial add");
            assert_eq!(partial.rejected().len(), 1);
            assert_eq!(partial.rejected()[0].caller, "bad");
            assert_eq!(counts(&totals.totals("good").await.unwrap()), (1, 0));
            assert_eq!(
                usage.get("bad"),
                Some(Usage {
                    allowed: 1,
                    limited: 1
                })
            );
            assert_eq!(usage.get("good"), None);
            let kept: String = conn.get(&bad).await.unwrap();
            assert_eq!(kept, "not a hash");

            // Once the key is freed, the kept counts go with the next flush, once.
            let _: () = conn.del(&bad).await.unwrap();
            assert_eq!(usage.flush_to(&totals).await.unwrap(), 1);
            assert_eq!(counts(&totals.totals("bad").await.unwrap()), (1, 1));
            assert_eq!(counts(&totals.totals("good").await.unwrap()), (1, 0));

            // A hash with a field that is not a count is not ours either.
            let _: () = conn.hset(&bad, "allowed", "many").await.unwrap();
            usage.record("bad", true);
            let e = usage.flush_to(&totals).await.unwrap_err();
            assert!(e.to_string().contains("something else"), "{e}");
            assert_eq!(
                usage.get("bad"),
                Some(Usage {
                    allowed: 1,
                    limited: 0
                })
            );
        })
        .await;
    }

    /// Flushes until one succeeds (the connection manager may still be backing off after the
    /// proxy came back), within a few seconds.
    async fn flush_until_ok(usage: &UsageTracker, totals: &RedisUsage) -> usize {
        let start = Instant::now();
        loop {
            match usage.flush_to(totals).await {
                Ok(n) => return n,
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(8),
                    "Redis is still unreachable: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn a_cut_connection_keeps_the_counts_and_delivers_them_once_after() {
        isolated("cut", |url, prefix| async move {
            let proxy = Proxy::start(redis_addr(&url)).await;
            let via_proxy = format!("redis://{}/", proxy.addr());
            let totals = store(&via_proxy, &prefix)
                .await
                .timeout(Duration::from_millis(500));
            let direct = store(&url, &prefix).await;
            let usage = UsageTracker::new(100);
            usage.record("key_1", true);
            assert_eq!(usage.flush_to(&totals).await.unwrap(), 1);

            proxy.cut();
            usage.record("key_1", true);
            usage.record("key_1", false);
            usage.record("key_2", false);
            assert!(usage.flush_to(&totals).await.is_err());
            usage.record("key_1", true);
            assert!(usage.flush_to(&totals).await.is_err());
            assert_eq!(
                usage.get("key_1"),
                Some(Usage {
                    allowed: 2,
                    limited: 1
                })
            );
            assert_eq!(counts(&direct.totals("key_1").await.unwrap()), (1, 0));

            // A Redis that never answers: the call times out, and the counts stay too.
            proxy.blackhole();
            let start = Instant::now();
            assert!(usage.flush_to(&totals).await.is_err());
            assert!(start.elapsed() < Duration::from_millis(500) + SLACK);
            assert_eq!(
                usage.get("key_2"),
                Some(Usage {
                    allowed: 0,
                    limited: 1
                })
            );

            proxy.restore();
            assert_eq!(flush_until_ok(&usage, &totals).await, 2);
            assert_eq!(counts(&direct.totals("key_1").await.unwrap()), (3, 1));
            assert_eq!(counts(&direct.totals("key_2").await.unwrap()), (0, 1));
            assert_eq!(usage.flush_to(&totals).await.unwrap(), 0);
            assert_eq!(counts(&direct.totals("key_1").await.unwrap()), (3, 1));
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn flush_every_reaches_redis_within_its_interval() {
        isolated("every", |url, prefix| async move {
            let every = Duration::from_millis(300);
            let totals = store(&url, &prefix).await;
            let usage = UsageTracker::new(100);
            let (flush, flushing) = usage.flush_every(totals.clone(), every);
            tokio::spawn(flushing);
            usage.record("key_1", true);
            let start = Instant::now();
            loop {
                if counts(&totals.totals("key_1").await.unwrap()) == (1, 0) {
                    break;
                }
                assert!(start.elapsed() < every + SLACK, "not flushed in time");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            usage.record("key_1", false);
            assert_eq!(flush.shutdown().await.unwrap(), 1);
            assert_eq!(counts(&totals.totals("key_1").await.unwrap()), (1, 1));
        })
        .await;
    }

    #[tokio::test]
    async fn a_store_that_cannot_connect_fails_its_flushes_and_keeps_the_counts() {
        bounded(async {
            // Nothing listens on port 1.
            let totals = RedisUsage::connect_lazy("redis://127.0.0.1:1/")
                .unwrap()
                .timeout(Duration::from_secs(2));
            let usage = UsageTracker::new(100);
            usage.record("key_1", true);
            assert!(usage.flush_to(&totals).await.is_err());
            assert!(totals.totals("key_1").await.is_err());
            assert_eq!(
                usage.get("key_1"),
                Some(Usage {
                    allowed: 1,
                    limited: 0
                })
            );
        })
        .await;
    }

    #[test]
    fn debug_never_shows_the_password() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let totals = RedisUsage::connect_lazy("redis://:hunter2secret@127.0.0.1:1/").unwrap();
            let shown = format!("{totals:?}");
            assert!(!shown.contains("hunter2secret"), "{shown}");
            assert!(shown.contains("127.0.0.1:1"), "{shown}");
        });
    }
}
