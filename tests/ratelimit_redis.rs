//! The Redis rate limiter against a real Redis.
//!
//! The tests that need a server are ignored unless asked for: run them with
//! `KEYGATE_TEST_REDIS_URL` set (e.g. `redis://127.0.0.1:6379/`) and `-- --include-ignored`.
//! Asked for without the variable, they fail, so that a run without Redis never passes for one
//! that tested it. Each test uses its own random key prefix, so tests (and parallel runs) never
//! share a key. The failure tests point at a closed port and need no server, and are not
//! ignored; the recovery test starts (and kills) a private `redis-server` of its own, so it is
//! ignored unless asked for too, and fails when asked for without the binary.
#![cfg(feature = "redis")]

mod services;

use services::redis_url;
use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use keygate::clock::ManualClock;
use keygate::key::KeyRecord;
use keygate::ratelimit::{
    Decision, FailurePolicy, MemoryLimiter, RateLimitError, RateLimitLayer, RateLimiter,
    RedisLimiter, Subject, Verdict,
};
use keygate::store::MemoryStore;
use keygate::{Limit, Limits, Quota, auth::AuthLayer};
use redis::AsyncCommands;
use tower::{ServiceBuilder, ServiceExt};

/// No test runs longer than this.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// The timeout of limiters that must answer even under load (exactness tests).
const PATIENT: Duration = Duration::from_secs(5);
/// The timeout of limiters whose failure answers are timed.
const SHORT: Duration = Duration::from_millis(100);
/// What a loaded 2-core machine may add to a timed answer.
const SLACK: Duration = Duration::from_millis(400);
/// A port nothing listens on.
const CLOSED_PORT_URL: &str = "redis://127.0.0.1:1/";

/// A prefix no other test or run uses.
fn unique_prefix(test: &str) -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    format!("keygate-test:{test}:{:016x}:", u64::from_le_bytes(r))
}

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("the test took too long")
}

async fn limiter(url: &str, test: &str) -> RedisLimiter {
    RedisLimiter::connect(url)
        .await
        .expect("connect to KEYGATE_TEST_REDIS_URL")
        .prefix(unique_prefix(test))
        .timeout(PATIENT)
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Redis's clock, in nanoseconds since the epoch.
async fn redis_now(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    (secs * 1_000_000 + micros) * 1_000
}

async fn check(l: &impl RateLimiter, key: &str, q: &Quota) -> Decision {
    l.check(key, q, 1).await.expect("a decision")
}

/// Runs `total` checks of `key` from `tasks` tasks at once (each on one of `limiters`), and
/// returns how many were admitted.
async fn admitted_concurrently(
    limiters: &[Arc<dyn RateLimiter>],
    key: &str,
    quota: Quota,
    tasks: usize,
    total: usize,
) -> usize {
    let start = Arc::new(tokio::sync::Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let limiter = limiters[i % limiters.len()].clone();
            let start = start.clone();
            let key = key.to_owned();
            let n = total / tasks + usize::from(i < total % tasks);
            tokio::spawn(async move {
                start.wait().await;
                let checks = (0..n).map(|_| limiter.check(&key, &quota, 1));
                let decisions = futures_join_all(checks).await;
                decisions
                    .into_iter()
                    .map(|d| usize::from(d.expect("Redis answers").allowed))
                    .sum::<usize>()
            })
        })
        .collect();
    let mut admitted = 0;
    for h in handles {
        admitted += h.await.unwrap();
    }
    admitted
}

/// Awaits every future at once (each check is its own in-flight Redis call).
async fn futures_join_all<F: Future + Send + 'static>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for f in fs {
        set.spawn(f);
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Exactness
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn concurrent_checks_for_one_key_admit_exactly_the_burst() {
    let url = redis_url();
    bounded(async {
        let l = limiter(&url, "concurrent").await;
        // 50 per hour: nothing refills while the test runs.
        let admitted =
            admitted_concurrently(&[Arc::new(l)], "key_1", Quota::per_hour(50), 8, 200).await;
        assert_eq!(admitted, 50);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn two_limiters_on_one_redis_share_one_limit() {
    let url = redis_url();
    bounded(async {
        let prefix = unique_prefix("shared");
        // One on a connection manager, one on a plain multiplexed connection.
        let a = limiter(&url, "unused").await.prefix(prefix.clone());
        let b = RedisLimiter::with_connection(raw(&url).await)
            .prefix(prefix.clone())
            .timeout(PATIENT);
        let q = Quota::per_hour(50);
        let both: [Arc<dyn RateLimiter>; 2] = [Arc::new(a.clone()), Arc::new(b.clone())];
        let admitted = admitted_concurrently(&both, "key_1", q, 8, 200).await;
        assert_eq!(admitted, 50);
        // Both see the spent limit; another key is untouched.
        assert!(!check(&a, "key_1", &q).await.allowed);
        assert!(!check(&b, "key_1", &q).await.allowed);
        assert!(check(&b, "key_2", &q).await.allowed);
    })
    .await;
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn decisions_match_the_in_memory_gcra() {
    let url = redis_url();
    bounded(async {
        let redis = limiter(&url, "fields").await;
        // The reference: the same GCRA in memory, its clock standing still.
        let memory = MemoryLimiter::builder().clock(ManualClock::new()).build();
        let q = Quota::per_hour(5).with_burst(4); // T = 720 s
        let started = Instant::now();
        let mut denied = 0;
        for cost in [1, 1, 2, 1, 1, 3, 1] {
            let r = redis.check("key_1", &q, cost).await.unwrap();
            let m = memory.check("key_1", &q, cost).await.unwrap();
            let elapsed = started.elapsed() + Duration::from_millis(1);
            assert_eq!(
                (r.allowed, r.remaining),
                (m.allowed, m.remaining),
                "cost {cost}"
            );
            // Redis's clock moved on a little; the in-memory one did not.
            assert!(r.reset_after <= m.reset_after, "{r:?} {m:?}");
            assert!(r.reset_after + elapsed >= m.reset_after, "{r:?} {m:?}");
            assert!(r.retry_after <= m.retry_after, "{r:?} {m:?}");
            assert!(r.retry_after + elapsed >= m.retry_after, "{r:?} {m:?}");
            if !r.allowed {
                denied += 1;
                assert!(r.retry_after > Duration::ZERO);
            } else {
                assert_eq!(r.retry_after, Duration::ZERO);
            }
        }
        assert_eq!(denied, 4);

        // The sequence counts down: 3, 2, 1, 0, then denied with nothing left.
        let q = Quota::per_hour(4);
        let rem: Vec<_> = futures_seq(&redis, "key_2", &q, 5).await;
        assert_eq!(
            rem,
            [(true, 3), (true, 2), (true, 1), (true, 0), (false, 0)]
        );
    })
    .await;
}

async fn futures_seq(l: &RedisLimiter, key: &str, q: &Quota, n: usize) -> Vec<(bool, u32)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = check(l, key, q).await;
        out.push((d.allowed, d.remaining));
    }
    out
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn the_stored_timestamp_is_exact_to_the_nanosecond() {
    let url = redis_url();
    bounded(async {
        let l = limiter(&url, "exact").await;
        let mut conn = raw(&url).await;
        // T = 3,333,333,333 ns: not a whole number of microseconds.
        let q = Quota::new(3, Duration::from_secs(10)).unwrap();
        let t = 3_333_333_333;
        let before = redis_now(&mut conn).await;
        let d = check(&l, "key_1", &q).await;
        let after = redis_now(&mut conn).await;
        let tat: u64 = conn.get(l.redis_key("key_1")).await.unwrap();
        assert_eq!(d.reset_after, Duration::from_nanos(t));
        let now = tat - t;
        assert!(
            (before..=after).contains(&now),
            "{before} <= {now} <= {after}"
        );
        assert_eq!(now % 1000, 0, "Redis's TIME is in microseconds");
        // The next request moves the stored time on by exactly T.
        let d2 = check(&l, "key_1", &q).await;
        let tat2: u64 = conn.get(l.redis_key("key_1")).await.unwrap();
        assert_eq!(tat2 - tat, t);
        assert_eq!(d2.remaining, 1);
        // A cost that does not fit: nothing is stored, the answer says how long to wait.
        let d3 = l.check("key_1", &q, 3).await.unwrap();
        assert!(!d3.allowed);
        let tat3: u64 = conn.get(l.redis_key("key_1")).await.unwrap();
        assert_eq!(tat3, tat2);
        assert!(
            d3.retry_after > Duration::from_nanos(t)
                && d3.retry_after <= Duration::from_nanos(2 * t)
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_denied_caller_is_admitted_after_retry_after() {
    let url = redis_url();
    bounded(async {
        let l = limiter(&url, "refill").await;
        let q = Quota::per_second(100).with_burst(1); // T = 10 ms
        let mut admitted_after_wait = 0;
        // Redis's clock is real: wait what it says, a few times.
        for _ in 0..3 {
            let first = check(&l, "key_1", &q).await;
            let denied = if first.allowed {
                check(&l, "key_1", &q).await
            } else {
                first
            };
            if denied.allowed {
                continue; // 10 ms passed between the two checks on a busy machine
            }
            assert!(denied.retry_after > Duration::ZERO);
            assert!(denied.retry_after <= Duration::from_millis(10));
            tokio::time::sleep(denied.retry_after + Duration::from_millis(1)).await;
            admitted_after_wait += usize::from(check(&l, "key_1", &q).await.allowed);
        }
        assert!(admitted_after_wait >= 1);
    })
    .await;
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn quotas_longer_than_104_days_count_in_microseconds() {
    let url = redis_url();
    bounded(async {
        let l = limiter(&url, "long").await;
        let mut conn = raw(&url).await;
        let year = Quota::new(2, Duration::from_secs(365 * 86_400)).unwrap();
        let d = check(&l, "key_1", &year).await;
        assert_eq!((d.allowed, d.remaining), (true, 1));
        let tat: String = conn.get(l.redis_key("key_1")).await.unwrap();
        assert!(tat.ends_with("000"), "{tat}");
        let d = check(&l, "key_1", &year).await;
        assert_eq!((d.allowed, d.remaining), (true, 0));
        let d = check(&l, "key_1", &year).await;
        assert!(!d.allowed);
        assert!(d.retry_after > Duration::from_secs(182 * 86_400));
        let pttl: i64 = conn.pttl(l.redis_key("key_1")).await.unwrap();
        assert!(pttl > 0 && pttl <= 365 * 86_400_000, "{pttl}");

        // A key written by a nanosecond quota, read by a microsecond one: nothing is lost.
        let short = Quota::new(3, Duration::from_secs(10)).unwrap();
        check(&l, "key_2", &short).await;
        let d = check(&l, "key_2", &year.with_burst(3)).await;
        assert_eq!((d.allowed, d.remaining), (true, 1));
        assert!(d.reset_after > Duration::from_secs(365 * 86_400 / 2));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Lists of limits
// ---------------------------------------------------------------------------------------------

fn limits(text: &str) -> Limits {
    text.parse().unwrap()
}

/// A fixed-window cap of `n` per 365 days: its window (aligned to the Unix epoch) does not end
/// while a test runs, unlike a day's or an hour's.
fn yearly_cap(n: u32) -> Limit {
    Limit::new(
        Quota::new(n, Duration::from_secs(365 * 86_400))
            .unwrap()
            .fixed(),
    )
}

async fn decide(l: &impl RateLimiter, subject: Subject<'_>, limits: &Limits) -> Verdict {
    l.check_all(subject, limits, 1).await.expect("a verdict")
}

async fn peek(l: &impl RateLimiter, subject: Subject<'_>, limits: &Limits) -> Verdict {
    l.peek(subject, limits).await.expect("a peek")
}

/// The `remaining` of each limit of a verdict.
fn remaining(v: &Verdict) -> Vec<u32> {
    v.decisions().iter().map(|d| d.remaining).collect()
}

/// Runs `total` decisions of `limits` from `tasks` tasks at once, task `i` on limiter
/// `i % limiters.len()` for subject `i % subjects.len()` (a key and its owner), and returns how
/// many each subject was admitted.
async fn lists_admitted_concurrently(
    limiters: &[Arc<dyn RateLimiter>],
    subjects: &[(&str, Option<&str>)],
    limits: &Limits,
    tasks: usize,
    total: usize,
) -> Vec<usize> {
    let start = Arc::new(tokio::sync::Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let limiter = limiters[i % limiters.len()].clone();
            let start = start.clone();
            let (key, owner) = subjects[i % subjects.len()];
            let (key, owner) = (key.to_owned(), owner.map(str::to_owned));
            let limits = limits.clone();
            let n = total / tasks + usize::from(i < total % tasks);
            let which = i % subjects.len();
            tokio::spawn(async move {
                start.wait().await;
                let subject = Subject::with_owner(&key, owner.as_deref());
                let checks = (0..n).map(|_| limiter.check_all(subject, &limits, 1));
                let verdicts = futures_join_all(checks).await;
                let admitted = verdicts
                    .into_iter()
                    .map(|v| usize::from(v.expect("Redis answers").allowed()))
                    .sum::<usize>();
                (which, admitted)
            })
        })
        .collect();
    let mut admitted = vec![0; subjects.len()];
    for h in handles {
        let (subject, n) = h.await.unwrap();
        admitted[subject] += n;
    }
    admitted
}

/// Redis's clock, in microseconds since the epoch.
async fn redis_micros(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis_now(conn).await / 1_000
}

/// The number of the fixed window of `secs` seconds Redis's clock is in.
async fn window_id(conn: &mut redis::aio::MultiplexedConnection, secs: u64) -> u64 {
    redis_micros(conn).await / (secs * 1_000_000)
}

/// Sleeps until 50 ms into the next fixed window of `secs` seconds on Redis's clock, and
/// returns its number.
async fn next_window(conn: &mut redis::aio::MultiplexedConnection, secs: u64) -> u64 {
    let span = secs * 1_000_000;
    let now = redis_micros(conn).await;
    let id = now / span + 1;
    let wait = id * span - now + 50_000;
    tokio::time::sleep(Duration::from_micros(wait)).await;
    assert_eq!(
        window_id(conn, secs).await,
        id,
        "slept into the next window"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_list_admits_exactly_what_its_tightest_limit_allows_and_denials_spend_nothing() {
    let url = redis_url();
    bounded(async {
        let l = limiter(&url, "list-exact").await;
        // The rate of 40 an hour is the tightest; nothing refills while the test runs (the
        // third limit's emission interval is 36 s).
        let list = Limits::new([
            "40/h".parse().unwrap(),
            yearly_cap(1000),
            "100/h;burst=60".parse().unwrap(),
        ])
        .unwrap();
        let admitted =
            lists_admitted_concurrently(&[Arc::new(l.clone())], &[("key_1", None)], &list, 8, 200)
                .await;
        assert_eq!(admitted, [40]);
        // The 160 denied requests spent nothing from the other two limits.
        let now = peek(&l, Subject::new("key_1"), &list).await;
        assert!(!now.allowed());
        assert_eq!(now.denied_by(), Some(0));
        assert_eq!(remaining(&now), [0, 1000 - 40 - 1, 60 - 40 - 1]);
        // One state per limit, none the single rate's key.
        let mut conn = raw(&url).await;
        let keys = l.redis_keys(Subject::new("key_1"), &list);
        assert_eq!(keys.len(), 3);
        for key in &keys {
            let exists: bool = conn.exists(key).await.unwrap();
            assert!(exists, "{key}");
        }
        let single: bool = conn.exists(l.redis_key("key_1")).await.unwrap();
        assert!(!single);

        // A cost that one limit cannot take is denied by that one and spends nothing.
        let list = limits("5/h, 1000/h");
        let v = l.check_all(Subject::new("key_2"), &list, 6).await.unwrap();
        assert_eq!(v.denied_by(), Some(0));
        assert!(v.decisions()[1].allowed, "the wide limit would admit");
        assert_eq!(
            remaining(&peek(&l, Subject::new("key_2"), &list).await),
            [4, 999]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_fixed_cap_admits_exactly_n_per_window_across_two_instances() {
    let url = redis_url();
    bounded(async {
        let prefix = unique_prefix("fixed-shared");
        // Two instances on two connections: a connection manager and a multiplexed connection.
        let a = limiter(&url, "unused").await.prefix(prefix.clone());
        let b = RedisLimiter::with_connection(raw(&url).await)
            .prefix(prefix.clone())
            .timeout(PATIENT);
        let cap = Limit::new(Quota::new(10, Duration::from_secs(2)).unwrap().fixed());
        // A rate that nothing refills during the test: what the cap denied must not spend it.
        let list = Limits::new(["1000/d".parse().unwrap(), cap]).unwrap();
        let subject = Subject::new("key_1");
        let cap_key = a.redis_keys(subject, &list)[1].clone();
        assert_eq!(cap_key, b.redis_keys(subject, &list)[1]);
        let both: [Arc<dyn RateLimiter>; 2] = [Arc::new(a.clone()), Arc::new(b)];
        let mut conn = raw(&url).await;
        for round in 1..=2u32 {
            let window = next_window(&mut conn, 2).await;
            let admitted =
                lists_admitted_concurrently(&both, &[("key_1", None)], &list, 16, 60).await;
            assert_eq!(
                window_id(&mut conn, 2).await,
                window,
                "round {round} ran within one window"
            );
            assert_eq!(admitted, [10], "round {round}");
            // Both instances see the spent cap, which resets at the window's end.
            for l in &both {
                let v = decide(l, subject, &list).await;
                assert_eq!(v.denied_by(), Some(1));
                let wait = v.retry_after();
                assert!(
                    wait > Duration::ZERO && wait <= Duration::from_secs(2),
                    "{wait:?}"
                );
                assert!(v.decisions()[1].reset_after == wait);
            }
            let stored: String = conn.get(&cap_key).await.unwrap();
            assert_eq!(stored, format!("{window}:10"));
            // The time first, then the time to live: read in that order, the bound holds
            // however long the two reads take.
            let now_ms = i64::try_from(redis_micros(&mut conn).await / 1000).unwrap();
            let pttl: i64 = conn.pttl(&cap_key).await.unwrap();
            let end_ms = i64::try_from((window + 1) * 2_000).unwrap();
            assert!(pttl > 0 && pttl <= end_ms - now_ms + 1, "{pttl} ms");
            // The rate was spent by the admitted requests only.
            let rate = peek(&a, subject, &list).await.decisions()[0];
            assert_eq!(rate.remaining, 1000 - 10 * round - 1, "round {round}");
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_count_left_from_an_earlier_window_counts_nothing() {
    let url = redis_url();
    bounded(async {
        let l = limiter(&url, "fixed-stale").await;
        let mut conn = raw(&url).await;
        let list = Limits::new([Limit::new(Quota::per_hour(10).fixed())]).unwrap();
        let subject = Subject::new("key_1");
        let key = l.redis_keys(subject, &list).remove(0);
        assert!(key.ends_with(":10/h;fixed"), "{key}");
        loop {
            let id = window_id(&mut conn, 3600).await;
            // Full in the window before, and the key not expired (as at a boundary): a fresh
            // window.
            let _: () = conn.set(&key, format!("{}:10", id - 1)).await.unwrap();
            let fresh = decide(&l, subject, &list).await;
            // Full in this window: denied until its end.
            let _: () = conn.set(&key, format!("{id}:10")).await.unwrap();
            let full = decide(&l, subject, &list).await;
            if window_id(&mut conn, 3600).await != id {
                continue; // the hour turned meanwhile
            }
            assert!(fresh.allowed());
            assert_eq!(fresh.decisions()[0].remaining, 9);
            assert!(!full.allowed());
            let wait = full.retry_after();
            assert!(wait > Duration::ZERO && wait <= Duration::from_secs(3600));
            // Something that is not a count: counts nothing, and is replaced.
            let _: () = conn.set(&key, "garbage").await.unwrap();
            assert_eq!(decide(&l, subject, &list).await.decisions()[0].remaining, 9);
            let stored: String = conn.get(&key).await.unwrap();
            assert_eq!(stored, format!("{id}:1"));
            break;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn owner_wide_limits_are_shared_by_the_owners_keys_and_by_no_one_else() {
    let url = redis_url();
    bounded(async {
        let l = limiter(&url, "owner").await;
        // Each key's own rate, and 20 an hour for all of acme's keys together.
        let list = limits("1000/h, 20/h;owner");
        let subjects = [("key_a", Some("acme")), ("key_b", Some("acme"))];
        let admitted =
            lists_admitted_concurrently(&[Arc::new(l.clone())], &subjects, &list, 8, 100).await;
        assert_eq!(admitted.iter().sum::<usize>(), 20, "{admitted:?}");
        // Each key's own rate was spent by its admitted requests only.
        for (i, (key, owner)) in subjects.into_iter().enumerate() {
            let v = peek(&l, Subject::with_owner(key, owner), &list).await;
            assert_eq!(v.denied_by(), Some(1));
            let own = u32::try_from(admitted[i]).unwrap();
            assert_eq!(remaining(&v), [1000 - own - 1, 0], "{key}");
        }

        // A caller named like the owner, with or without an owner of its own, shares nothing
        // with it; neither does a caller named like the owner's key.
        let owner_only = limits("20/h;owner");
        let tricky = l.redis_keys(Subject::with_owner("k", Some("acme")), &owner_only)[0]
            .strip_prefix(&*l.redis_key(""))
            .unwrap()
            .to_owned();
        for subject in [
            Subject::new("acme"),
            Subject::with_owner("acme", Some("other")),
            Subject::with_owner("acme", Some("acme-2")),
            Subject::new(&tricky),
        ] {
            let v = decide(&l, subject, &owner_only).await;
            assert!(v.allowed(), "{subject:?}");
            assert_eq!(remaining(&v), [19], "{subject:?}");
        }
        // And a third key of acme finds the owner's limit spent.
        let v = decide(&l, Subject::with_owner("key_c", Some("acme")), &owner_only).await;
        assert!(!v.allowed());
        assert!(v.retry_after() > Duration::ZERO);
    })
    .await;
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn shadow_limits_decide_but_never_deny_and_spend_only_what_they_admit() {
    let url = redis_url();
    bounded(async {
        let l = limiter(&url, "shadow").await;
        let subject = Subject::new("key_1");
        // 2 an hour in shadow (T = 30 min), 5 an hour enforced.
        let list = limits("2/h;shadow, 5/h");
        for i in 0..5 {
            let v = decide(&l, subject, &list).await;
            assert!(v.allowed(), "request {i}");
            let shadowed: Vec<_> = v.shadow_denials().collect();
            assert_eq!(
                shadowed,
                if i < 2 { vec![] } else { vec![0] },
                "request {i}"
            );
        }
        let v = decide(&l, subject, &list).await;
        assert_eq!(v.denied_by(), Some(1));
        assert_eq!(v.shadow_denials().collect::<Vec<_>>(), [0]);
        // The shadow limit holds its two admitted requests (an hour of TAT), not seven.
        let shadow = peek(&l, subject, &list).await.decisions()[0];
        assert!(!shadow.allowed);
        assert!(
            shadow.reset_after <= Duration::from_secs(3600)
                && shadow.reset_after > Duration::from_secs(3500),
            "{shadow:?}"
        );

        // An enforced denial spends nothing from a shadow limit either.
        let subject = Subject::new("key_2");
        let list = limits("5/h;shadow, 1/h");
        assert!(decide(&l, subject, &list).await.allowed());
        assert_eq!(decide(&l, subject, &list).await.denied_by(), Some(1));
        assert_eq!(remaining(&peek(&l, subject, &list).await), [3, 0]);

        // A list of one shadow rate: never denied, decided on the single key.
        let subject = Subject::new("key_3");
        let one = limits("1/h;shadow");
        for _ in 0..3 {
            assert!(decide(&l, subject, &one).await.allowed());
        }
        assert_eq!(peek(&l, subject, &one).await.shadow_denials().count(), 1);
        let mut conn = raw(&url).await;
        let exists: bool = conn.exists(l.redis_key("key_3")).await.unwrap();
        assert!(exists);
    })
    .await;
}

/// A call of a list scenario: its cost, and the expected outcome (`None` admitted, `Some(i)`
/// denied by limit `i`).
type Call = (u32, Option<usize>);

/// Asserts that two decisions of one limit agree: `allowed` and `remaining` exactly, the times
/// within `slack` (the Redis clock runs on while the in-memory one stands still).
fn assert_same_decision(r: &Decision, m: &Decision, slack: Duration, context: &str) {
    assert_eq!(
        (r.allowed, r.remaining),
        (m.allowed, m.remaining),
        "{context}: Redis {r:?}, memory {m:?}"
    );
    for (a, b) in [
        (r.reset_after, m.reset_after),
        (r.retry_after, m.retry_after),
    ] {
        assert!(
            a.abs_diff(b) <= slack,
            "{context}: Redis {r:?}, memory {m:?}"
        );
    }
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn list_verdicts_match_the_memory_limiter_admitted_or_denied() {
    let url = redis_url();
    bounded(async {
        let redis = limiter(&url, "list-twin").await;
        // The reference, its clock standing still at the test's start; every quota is long
        // enough (hours, a 365-day cap) that the test's run changes no whole figure.
        let memory = MemoryLimiter::builder().clock(ManualClock::new()).build();
        let started = Instant::now();
        let list = |items: Vec<Limit>| Limits::new(items).unwrap();
        let rate = |text: &str| text.parse::<Limit>().unwrap();
        // Each scenario: a subject, a list, and its calls.
        let scenarios: Vec<(Subject<'_>, Limits, Vec<Call>)> = vec![
            // Admitted, then denied by the cap: the rate reports what it has left (1 of 2, half
            // an hour to reset), not what a spend would have left it.
            (
                Subject::new("cap"),
                list(vec![rate("2/h"), yearly_cap(1)]),
                vec![(1, None), (1, Some(1)), (1, Some(1))],
            ),
            // Denied by the rate: the cap and the wider rate report their state unspent.
            (
                Subject::new("rate"),
                list(vec![rate("1/h"), yearly_cap(5), rate("10/h")]),
                vec![(1, None), (1, Some(0)), (1, Some(0))],
            ),
            // A cost the tight rate cannot take, on fresh states.
            (
                Subject::new("cost"),
                list(vec![rate("5/h"), yearly_cap(100), rate("1000/h")]),
                vec![(6, Some(0)), (2, None), (4, Some(0))],
            ),
            // A shadow limit that denies, and one that would admit, while an enforced limit
            // denies: the one that denies reports its denial, the other its state unspent.
            (
                Subject::new("shadow"),
                list(vec![
                    rate("1/h;shadow"),
                    rate("2/h"),
                    rate("5/h;shadow"),
                    yearly_cap(10),
                ]),
                vec![(1, None), (1, None), (1, Some(1)), (1, Some(1))],
            ),
            // Limits per owner and per caller together.
            (
                Subject::with_owner("owned", Some("acme")),
                list(vec![rate("3/h;owner"), rate("1/h"), yearly_cap(4)]),
                vec![(1, None), (1, Some(1)), (1, Some(1))],
            ),
        ];
        for (subject, limits, calls) in &scenarios {
            for (n, &(cost, denied_by)) in calls.iter().enumerate() {
                let r = redis.check_all(*subject, limits, cost).await.unwrap();
                let m = memory.check_all(*subject, limits, cost).await.unwrap();
                let slack = started.elapsed() + Duration::from_millis(5);
                let context = format!("{subject:?} {limits} call {n} (cost {cost})");
                assert_eq!(r.denied_by(), denied_by, "{context}: {r:?}");
                assert_eq!(r.allowed(), m.allowed(), "{context}");
                assert_eq!(
                    r.shadow_denials().collect::<Vec<_>>(),
                    m.shadow_denials().collect::<Vec<_>>(),
                    "{context}"
                );
                assert_eq!(r.decisions().len(), limits.len(), "{context}");
                for (i, (rd, md)) in r.decisions().iter().zip(m.decisions()).enumerate() {
                    assert_same_decision(rd, md, slack, &format!("{context}, limit {i}"));
                }
            }
            // And both read the same state afterwards.
            let r = peek(&redis, *subject, limits).await;
            let m = peek(&memory, *subject, limits).await;
            let slack = started.elapsed() + Duration::from_millis(5);
            for (i, (rd, md)) in r.decisions().iter().zip(m.decisions()).enumerate() {
                assert_same_decision(rd, md, slack, &format!("{subject:?} {limits} peek {i}"));
            }
        }
        // The case the two once disagreed on, spelled out: denied by the cap, the rate of 2 an
        // hour has one left and half an hour to reset.
        let (subject, limits, _) = &scenarios[0];
        let v = redis.check_all(*subject, limits, 1).await.unwrap();
        let d = v.decisions()[0];
        assert!(d.allowed && d.remaining == 1, "{d:?}");
        assert!(
            d.reset_after <= Duration::from_secs(1800)
                && d.reset_after > Duration::from_secs(1800) - started.elapsed() - SLACK,
            "{d:?}"
        );
    })
    .await;
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn peek_spends_nothing() {
    let url = redis_url();
    bounded(async {
        let l = limiter(&url, "peek").await;
        let mut conn = raw(&url).await;
        let subject = Subject::with_owner("key_1", Some("acme"));
        let list = Limits::new([
            "5/h".parse().unwrap(),
            yearly_cap(10),
            "7/h;owner".parse().unwrap(),
        ])
        .unwrap();
        // What a first request would get, however often asked; nothing is written.
        for _ in 0..5 {
            let v = peek(&l, subject, &list).await;
            assert!(v.allowed());
            assert_eq!(remaining(&v), [4, 9, 6]);
        }
        for key in l.redis_keys(subject, &list) {
            let exists: bool = conn.exists(&key).await.unwrap();
            assert!(!exists, "{key}");
        }
        let v = decide(&l, subject, &list).await;
        assert_eq!(remaining(&v), [4, 9, 6]);
        for _ in 0..3 {
            assert_eq!(remaining(&peek(&l, subject, &list).await), [3, 8, 5]);
        }
        // The cap's time to reset is the time to its window's end.
        let cap = peek(&l, subject, &list).await.decisions()[1];
        assert!(
            cap.reset_after > Duration::ZERO
                && cap.reset_after <= Duration::from_secs(365 * 86_400)
        );

        // A list of one rate reads the state of `check`.
        let q = Quota::per_hour(5);
        check(&l, "key_2", &q).await;
        check(&l, "key_2", &q).await;
        let one = Limits::from(q);
        for _ in 0..3 {
            let v = peek(&l, Subject::new("key_2"), &one).await;
            assert_eq!(v.decisions()[0].remaining, 2);
        }
        assert_eq!(check(&l, "key_2", &q).await.remaining, 2);
        assert_eq!(
            decide(&l, Subject::new("key_2"), &one).await.decisions()[0].remaining,
            1
        );
        // Peeking at a spent limit: denied, with the wait.
        for _ in 0..2 {
            check(&l, "key_2", &q).await;
        }
        let v = peek(&l, Subject::new("key_2"), &one).await;
        assert!(!v.allowed());
        assert!(v.retry_after() > Duration::from_secs(600));

        // A fixed-window cap given to `check` is a cap, on the key of a list of that one cap.
        let cap = Quota::new(2, Duration::from_secs(365 * 86_400))
            .unwrap()
            .fixed();
        let answers: Vec<_> = [
            check(&l, "key_3", &cap).await,
            check(&l, "key_3", &cap).await,
            check(&l, "key_3", &cap).await,
        ]
        .iter()
        .map(|d| (d.allowed, d.remaining))
        .collect();
        assert_eq!(answers, [(true, 1), (true, 0), (false, 0)]);
        let key = l
            .redis_keys(Subject::new("key_3"), &Limits::from(cap))
            .remove(0);
        let stored: String = conn.get(&key).await.unwrap();
        assert!(stored.ends_with(":2"), "{key} = {stored}");
    })
    .await;
}

/// The address Redis knows the connection by (`CLIENT INFO`'s `addr`).
async fn client_addr(conn: &mut redis::aio::MultiplexedConnection) -> String {
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(conn)
        .await
        .unwrap();
    info.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .expect("CLIENT INFO names the address")
        .to_owned()
}

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn a_list_decision_is_one_round_trip() {
    let url = redis_url();
    bounded(async {
        let mut conn = raw(&url).await;
        for script in [RedisLimiter::SCRIPT, RedisLimiter::LIST_SCRIPT] {
            redis::Script::new(script)
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .unwrap();
        }
        let addr = client_addr(&mut conn).await;
        // The limiter on this very connection: every command it sends comes from `addr`.
        let l = RedisLimiter::with_connection(conn.clone())
            .prefix(unique_prefix("round-trips"))
            .timeout(PATIENT);
        let mut monitor = redis::Client::open(url.as_str())
            .unwrap()
            .get_async_monitor()
            .await
            .unwrap()
            .into_on_message::<String>();

        let subject = Subject::with_owner("key_1", Some("acme"));
        let list = limits("100/s;burst=50, 1000/d;fixed, 50/min;owner, 5/min;shadow");
        let mut decisions = 0;
        for cost in [1, 1, 2, 1, 2000] {
            let v = l.check_all(subject, &list, cost).await.unwrap();
            assert_eq!(v.allowed(), cost < 10);
            decisions += 1;
        }
        for _ in 0..3 {
            peek(&l, subject, &list).await;
            decisions += 1;
        }
        // A list of one rate: its one script call too.
        decide(&l, Subject::new("key_2"), &limits("10/s")).await;
        decisions += 1;
        let marker = unique_prefix("end");
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut conn)
            .await
            .unwrap();

        let mut commands = Vec::new();
        let tag = format!(" {addr}]");
        loop {
            let line = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut monitor), cx)
            })
            .await
            .expect("the monitor stays open");
            if line.contains(&tag) {
                if line.contains(&marker) {
                    break;
                }
                commands.push(line);
            }
        }
        assert_eq!(commands.len(), decisions, "{commands:#?}");
        for command in &commands {
            assert!(command.contains(&format!("{tag} \"EVALSHA\"")), "{command}");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Idle keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn idle_keys_expire_once_the_burst_has_refilled() {
    let url = redis_url();
    bounded(async {
        let l = limiter(&url, "expiry").await;
        let mut conn = raw(&url).await;
        let q = Quota::per_hour(50);
        for _ in 0..50 {
            check(&l, "key_1", &q).await;
        }
        let pttl: i64 = conn.pttl(l.redis_key("key_1")).await.unwrap();
        assert!(pttl > 0, "the key expires");
        assert!(pttl <= 3_600_000, "within the window: {pttl} ms");
        assert!(pttl > 3_500_000, "not before the burst refilled: {pttl} ms");

        // A key refilled after 50 ms disappears by itself.
        let q = Quota::per_second(20);
        check(&l, "key_2", &q).await;
        let pttl: i64 = conn.pttl(l.redis_key("key_2")).await.unwrap();
        assert!((1..=50).contains(&pttl), "{pttl} ms");
        tokio::time::sleep(Duration::from_millis(120)).await;
        let exists: bool = conn.exists(l.redis_key("key_2")).await.unwrap();
        assert!(!exists);
        assert_eq!(check(&l, "key_2", &q).await.remaining, 19);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Through the layer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn the_layer_answers_429_with_retry_after_once_the_limit_is_spent() {
    let url = redis_url();
    bounded(async {
        let store = MemoryStore::new();
        let key = store.issue(KeyRecord::new("key_1", "acme")).unwrap();
        let l = limiter(&url, "layer").await;
        let app: Router = Router::new()
            .route("/v1/current.json", get(|| async { "sunny" }))
            .layer(
                ServiceBuilder::new()
                    .layer(AuthLayer::new(store))
                    .layer(RateLimitLayer::new(l.clone(), Quota::per_hour(3))),
            );
        let request = || {
            Request::get("/v1/current.json")
                .header("authorization", format!("Bearer {}", key.expose_secret()))
                .body(Body::empty())
                .unwrap()
        };
        for left in [2, 1, 0] {
            let res = app.clone().oneshot(request()).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let header = res.headers()["ratelimit"].to_str().unwrap();
            assert!(
                header.starts_with(&format!("\"default\";r={left};t=")),
                "{header}"
            );
        }
        let res = app.clone().oneshot(request()).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=1200).contains(&retry), "Retry-After: {retry}");
        assert_eq!(res.headers()["cache-control"], "no-store");
        // The principal's id is the key, never the secret.
        let mut conn = raw(&url).await;
        let exists: bool = conn.exists(l.redis_key("key_1")).await.unwrap();
        assert!(exists);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Failure: a closed port (no server needed)
// ---------------------------------------------------------------------------------------------

fn unreachable(policy: FailurePolicy) -> RedisLimiter {
    RedisLimiter::connect_lazy(CLOSED_PORT_URL)
        .unwrap()
        .timeout(SHORT)
        .on_failure(policy)
}

/// One check, which must answer within the timeout (plus scheduling slack).
async fn timed_check(l: &RedisLimiter, key: &str, q: &Quota) -> Result<Decision, RateLimitError> {
    let start = Instant::now();
    let result = tokio::time::timeout(SHORT + SLACK, l.check(key, q, 1))
        .await
        .expect("the failure policy answers within the timeout");
    assert!(start.elapsed() <= SHORT + SLACK, "{:?}", start.elapsed());
    result
}

#[tokio::test]
async fn closed_port_fails_closed_by_default_within_the_timeout() {
    bounded(async {
        let l = unreachable(FailurePolicy::default());
        let q = Quota::per_hour(5);
        for _ in 0..5 {
            let e = timed_check(&l, "key_1", &q).await.unwrap_err();
            assert!(
                matches!(e, RateLimitError::Timeout | RateLimitError::Backend(_)),
                "{e:?}"
            );
        }
        assert!(!l.is_healthy());
        // A construction that must connect fails rather than hang.
        let start = Instant::now();
        assert!(RedisLimiter::connect(CLOSED_PORT_URL).await.is_err());
        assert!(start.elapsed() < Duration::from_secs(6));
    })
    .await;
}

#[tokio::test]
async fn closed_port_fails_open_when_told_to() {
    bounded(async {
        let l = unreachable(FailurePolicy::Open);
        let q = Quota::per_hour(5).with_burst(7);
        for _ in 0..10 {
            let d = timed_check(&l, "key_1", &q).await.unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, 7);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_port_falls_back_to_an_exact_memory_limit() {
    bounded(async {
        let l = unreachable(FailurePolicy::Fallback(MemoryLimiter::new()));
        let q = Quota::per_hour(5);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let l = l.clone();
            set.spawn(async move { timed_check(&l, "key_1", &q).await.unwrap().allowed });
        }
        let mut admitted = 0;
        while let Some(allowed) = set.join_next().await {
            admitted += usize::from(allowed.unwrap());
        }
        assert_eq!(admitted, 5);
        let d = timed_check(&l, "key_2", &q).await.unwrap();
        assert_eq!((d.allowed, d.remaining), (true, 4));
    })
    .await;
}

/// One decision of a list, which must answer within the timeout (plus scheduling slack).
async fn timed_list(
    l: &RedisLimiter,
    subject: Subject<'_>,
    limits: &Limits,
    peek: bool,
) -> Result<Verdict, RateLimitError> {
    let start = Instant::now();
    let answer = if peek {
        l.peek(subject, limits)
    } else {
        l.check_all(subject, limits, 1)
    };
    let result = tokio::time::timeout(SHORT + SLACK, answer)
        .await
        .expect("the failure policy answers within the timeout");
    assert!(start.elapsed() <= SHORT + SLACK, "{:?}", start.elapsed());
    result
}

#[tokio::test]
async fn closed_port_lists_and_peeks_follow_the_failure_policy() {
    bounded(async {
        let list = limits("2/h;burst=4, 3/d;fixed");
        let subject = Subject::new("key_1");
        let closed = unreachable(FailurePolicy::Closed);
        for peek in [false, true] {
            let e = timed_list(&closed, subject, &list, peek).await.unwrap_err();
            assert!(
                matches!(e, RateLimitError::Timeout | RateLimitError::Backend(_)),
                "{e:?}"
            );
            // A list of one rate, too.
            let e = timed_list(&closed, subject, &limits("2/h"), peek).await;
            assert!(e.is_err());
        }
        assert!(!closed.is_healthy());

        let open = unreachable(FailurePolicy::Open);
        for peek in [false, false, false, true] {
            let v = timed_list(&open, subject, &list, peek).await.unwrap();
            assert!(v.allowed());
            assert_eq!(remaining(&v), [4, 3]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_port_lists_fall_back_to_the_memory_limiter() {
    bounded(async {
        let memory = MemoryLimiter::new();
        let l = unreachable(FailurePolicy::Fallback(memory.clone()));
        // A list of one rate: exact under concurrency.
        let one = limits("5/h");
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let l = l.clone();
            let one = one.clone();
            set.spawn(async move {
                let v = timed_list(&l, Subject::new("key_1"), &one, false)
                    .await
                    .unwrap();
                v.allowed()
            });
        }
        let mut admitted = 0;
        while let Some(allowed) = set.join_next().await {
            admitted += usize::from(allowed.unwrap());
        }
        assert_eq!(admitted, 5);
        // The memory limiter decided, and answers the peek.
        let v = timed_list(&l, Subject::new("key_1"), &one, true)
            .await
            .unwrap();
        let direct = memory.peek("key_1", &Quota::per_hour(5), 1);
        let d = v.decisions()[0];
        assert_eq!((d.allowed, d.remaining), (direct.allowed, direct.remaining));
        assert!(!d.allowed);

        // A list of several, with a cap and an owner-wide limit: decided by the memory
        // limiter, exactly, a denial spending nothing.
        let list = Limits::new([
            "3/h".parse().unwrap(),
            yearly_cap(10),
            "4/h;owner".parse().unwrap(),
        ])
        .unwrap();
        let mut allowed = Vec::new();
        for key in ["key_2", "key_2", "key_3", "key_2", "key_3", "key_3"] {
            let subject = Subject::with_owner(key, Some("acme"));
            allowed.push(
                timed_list(&l, subject, &list, false)
                    .await
                    .unwrap()
                    .allowed(),
            );
        }
        assert_eq!(allowed, [true, true, true, true, false, false]);
        let subject = Subject::with_owner("key_3", Some("acme"));
        let via_redis = timed_list(&l, subject, &list, true).await.unwrap();
        let direct = RateLimiter::peek(&memory, subject, &list).await.unwrap();
        assert_eq!(remaining(&via_redis), remaining(&direct));
        assert_eq!(remaining(&via_redis), [1, 8, 0]);
        assert_eq!(via_redis.denied_by(), Some(2));
        // A fixed cap through `check`, too.
        let cap = Quota::per_hour(2).fixed();
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(l.check("key_4", &cap, 1).await.unwrap().allowed);
        }
        assert_eq!(answers, [true, true, false]);
    })
    .await;
}

#[tokio::test]
async fn debug_never_shows_the_password() {
    bounded(async {
        let l = RedisLimiter::connect_lazy("redis://user:hunter2@127.0.0.1:1/3").unwrap();
        let debug = format!("{l:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("127.0.0.1:1/3"), "{debug}");
        assert!(debug.contains("keygate:rl:"), "{debug}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Recovery: a private redis-server, killed and started again
// ---------------------------------------------------------------------------------------------

/// A private `redis-server` on `port`, killed when dropped.
struct Server(Child);

impl Server {
    fn start(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Self(child))
    }

    async fn ready(port: u16) {
        let url = format!("redis://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(url.as_str())
                && let Ok(mut c) = client.get_multiplexed_async_connection().await
            {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts (and kills) a `redis-server` of its own, so it needs the binary: ignored unless asked
/// for, and failing, not passing, when asked for without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server on PATH"]
async fn the_limiter_recovers_when_redis_returns() {
    let port = free_port();
    let server = Server::start(port).expect("redis-server is installed (this test starts its own)");
    bounded(async move {
        Server::ready(port).await;
        let url = format!("redis://127.0.0.1:{port}/");
        let l = RedisLimiter::connect(&url)
            .await
            .unwrap()
            .timeout(SHORT)
            .prefix(unique_prefix("recovery"));
        let q = Quota::per_hour(3);
        assert!(timed_check(&l, "key_1", &q).await.unwrap().allowed);

        // A frozen Redis (the connection stays open, nothing answers): the timeout answers.
        server.signal("STOP");
        for _ in 0..3 {
            let e = timed_check(&l, "key_1", &q).await.unwrap_err();
            assert!(matches!(e, RateLimitError::Timeout), "{e:?}");
        }
        server.signal("CONT");
        let d = timed_check(&l.clone().timeout(PATIENT), "thawed", &q).await;
        assert!(d.unwrap().allowed, "answers again once thawed");
        // The requests that timed out reached Redis after all, and counted (as documented).
        let d = timed_check(&l.clone().timeout(PATIENT), "key_1", &q).await;
        assert!(!d.unwrap().allowed);

        server.kill();
        let mut answers = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let e = timed_check(&l, "key_1", &q).await.unwrap_err();
            answers.push((e.to_string(), start.elapsed()));
        }
        println!("answers while Redis is down: {answers:?}");
        assert!(!l.is_healthy());

        // Same port, fresh server: no data, no script loaded (the limiter reloads it).
        let _server = Server::start(port).expect("redis-server starts again");
        Server::ready(port).await;
        let start = Instant::now();
        let first = loop {
            if let Ok(d) = timed_check(&l, "key_2", &q).await {
                break d;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no recovery after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!("recovered {:?} after the restart", start.elapsed());
        assert!(l.is_healthy());
        assert_eq!((first.allowed, first.remaining), (true, 2));
        let rest: Vec<_> = futures_seq(&l.clone().timeout(PATIENT), "key_2", &q, 3).await;
        assert_eq!(rest, [(true, 1), (true, 0), (false, 0)]);
    })
    .await;
}
