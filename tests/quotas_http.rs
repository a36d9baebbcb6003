//! Quotas as lists of limits, through real axum services: `RateLimitLayer` behind `AuthLayer`
//! and a `MemoryStore` (driven with `tower::ServiceExt::oneshot`), and on a real TCP server for
//! the concurrency limit.
//!
//! What is shown: the `RateLimit` and `RateLimit-Policy` headers for several policies (names
//! given or derived from the window; a list of one keeps the default, key or tier name);
//! fixed-window caps aligned to UTC; which limit a 429 names, a `Retry-After` that waits for
//! every limit, and a denial that spends nothing from the other limits; `peek`; stacked layers
//! adding to the headers; a token minted for a key limited by the key's list and sharing its
//! state; tiers from key records, a key's own quota and run-time overrides (for keys and token
//! subjects); `key_by` picking the limits; limits per owner; shadow mode (the layer's, and a
//! single limit's) and its log; credits; the number of requests in flight.
//!
//! Every limiter runs on a `ManualClock`; where a fixed-window cap is involved the clock is set
//! to a known distance from a UTC boundary, so `t=` values and `Retry-After` are exact.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use common::{
    Hits, LogCapture, QUOTA_EXCEEDED, QUOTA_TITLE, Reply, assert_typed_problem, get_with, limiter,
    limiter_at, routes, send, store_with, with_key,
};
use http::StatusCode;
use http_body::Frame;
use keygate::auth::AuthLayer;
use keygate::clock::ManualClock;
use keygate::key::{ApiKey, Credits, KeyRecord, Refill};
use keygate::ratelimit::{
    HeaderStyle, LimitKey, MemoryLimiter, Overrides, RateLimitLayer, Usage, UsageTracker,
};
use keygate::store::{CreditStore, MemoryStore};
use keygate::{LimitBy, Limits, Principal, Quota};
use tower::ServiceBuilder;

// ---------------------------------------------------------------------------------------------
// Helpers

const DAY: u64 = 86_400;

/// A UTC midnight (in 2030): day 22,000 of the Unix epoch.
const MIDNIGHT: u64 = 22_000 * DAY;

/// The time `secs` seconds after the Unix epoch.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn limits(text: &str) -> Limits {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is a list of limits: {e}"))
}

/// `Hits::router` (`GET /me`, the caller's id) behind `AuthLayer(store)` then `limit`.
fn app(store: MemoryStore, limit: RateLimitLayer, hits: &Hits) -> Router {
    hits.router().layer(
        ServiceBuilder::new()
            .layer(AuthLayer::new(store))
            .layer(limit),
    )
}

/// The principal the auth layer makes of key record `id`.
fn principal_of(store: &MemoryStore, id: &str) -> Principal {
    Principal::from_key_record(store.get(id).expect("a key record"))
}

/// Checks an admitted request's reply: 200 with these draft headers, and no `Retry-After`.
#[track_caller]
fn assert_admitted(reply: &Reply, policy: &str, ratelimit: &str) {
    assert_eq!(reply.status, StatusCode::OK, "body: {:?}", reply.body);
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(policy),
        "RateLimit-Policy"
    );
    assert_eq!(reply.header("ratelimit"), Some(ratelimit), "RateLimit");
    assert!(reply.header("retry-after").is_none(), "no Retry-After");
}

/// Checks a 429 of the limits: problem+json of type quota-exceeded whose detail names
/// `policy` and the wait, `Retry-After` of that wait, `Cache-Control: no-store`.
#[track_caller]
fn assert_limited(reply: &Reply, policy: &str, retry_after: u64) {
    assert_quota_problem(
        reply,
        &format!("Too many requests: the \"{policy}\" limit is spent; retry in {retry_after} s."),
        Some(retry_after),
    );
}

/// Checks a 429 with this detail and `Retry-After` (or none).
#[track_caller]
fn assert_quota_problem(reply: &Reply, detail: &str, retry_after: Option<u64>) {
    assert_typed_problem(reply, 429, None, QUOTA_EXCEEDED, QUOTA_TITLE, detail);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let expected = retry_after.map(|s| s.to_string());
    assert_eq!(
        reply.header("retry-after"),
        expected.as_deref(),
        "Retry-After"
    );
}

// ---------------------------------------------------------------------------------------------
// Headers for several policies

#[tokio::test]
async fn several_named_policies_are_each_reported() {
    // 51,234 s before a UTC midnight: the daily cap resets then.
    let (limiter, _clock) = limiter_at(at(MIDNIGHT + DAY - 51_234));
    let layer = RateLimitLayer::new(
        limiter,
        limits("10/s;burst=20;name=burst, 10000/d;fixed;name=daily"),
    )
    .headers(HeaderStyle::Both);
    let (store, keys) = store_with([KeyRecord::new("key_1", "acme")]);
    let hits = Hits::default();
    let app = app(store, layer, &hits);
    let me = || with_key(keys[0].expose_secret());
    const POLICY: &str = "\"burst\";q=20;w=1, \"daily\";q=10000;w=86400";

    let reply = send(app.clone(), me()).await;
    assert_admitted(
        &reply,
        POLICY,
        "\"burst\";r=19;t=1, \"daily\";r=9999;t=51234",
    );
    assert_eq!(reply.text(), "key_1");
    // The legacy headers report the limit with the fewest requests left.
    assert_eq!(reply.header("x-ratelimit-limit"), Some("20"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("19"));
    assert_eq!(reply.header("x-ratelimit-reset"), Some("1"));

    let reply = send(app.clone(), me()).await;
    assert_admitted(
        &reply,
        POLICY,
        "\"burst\";r=18;t=1, \"daily\";r=9998;t=51234",
    );
    for _ in 2..20 {
        assert_eq!(send(app.clone(), me()).await.status, StatusCode::OK);
    }
    // The burst is spent (20 × 100 ms ahead); the daily cap is not, and reports what it has
    // left.
    let reply = send(app.clone(), me()).await;
    assert_limited(&reply, "burst", 1);
    assert_eq!(reply.header("ratelimit-policy"), Some(POLICY));
    assert_eq!(
        reply.header("ratelimit"),
        Some("\"burst\";r=0;t=2, \"daily\";r=9980;t=51234")
    );
    assert_eq!(reply.header("x-ratelimit-limit"), Some("20"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(hits.get(), 20);
}

#[tokio::test]
async fn unnamed_limits_of_a_list_are_named_by_their_window() {
    // Two hours after a UTC midnight.
    let (limiter, _clock) = limiter_at(at(MIDNIGHT + 7200));
    let layer = RateLimitLayer::new(limiter, limits("10/s, 100/h, 1000/d;fixed, 20/s;burst=40"));
    let (store, keys) = store_with([
        KeyRecord::new("plain", "acme"),
        KeyRecord::new("own", "acme").with_quota(limits("3/min, 50/d;fixed")),
    ]);
    let hits = Hits::default();
    let app = app(store, layer, &hits);

    // Two limits of one window: the second name is made unique.
    let reply = send(app.clone(), with_key(keys[0].expose_secret())).await;
    assert_admitted(
        &reply,
        "\"second\";q=10;w=1, \"hour\";q=100;w=3600, \"day\";q=1000;w=86400, \
         \"second-2\";q=40;w=1",
        "\"second\";r=9;t=1, \"hour\";r=99;t=36, \"day\";r=999;t=79200, \"second-2\";r=39;t=1",
    );
    // A key's own list is named alike (not "key", which names a list of one).
    let reply = send(app.clone(), with_key(keys[1].expose_secret())).await;
    assert_admitted(
        &reply,
        "\"minute\";q=3;w=60, \"day\";q=50;w=86400",
        "\"minute\";r=2;t=20, \"day\";r=49;t=79200",
    );
}

#[tokio::test]
async fn a_list_of_one_keeps_the_default_key_and_tier_names() {
    let (limiter, _clock) = limiter_at(at(MIDNIGHT + 7200));
    let layer = RateLimitLayer::new(limiter, Quota::per_minute(5)).tier("gold", limits("6/min"));
    let (store, keys) = store_with([
        KeyRecord::new("plain", "acme"),
        KeyRecord::new("golden", "acme").with_tier("gold"),
        KeyRecord::new("own", "acme").with_quota(limits("2/min")),
        KeyRecord::new("named", "acme").with_quota(limits("4/min;name=per-minute")),
        KeyRecord::new("capped", "acme").with_quota(limits("100/d;fixed")),
    ]);
    let hits = Hits::default();
    let app = app(store, layer, &hits);
    let cases = [
        ("\"default\";q=5;w=60", "\"default\";r=4;t=12"),
        ("\"gold\";q=6;w=60", "\"gold\";r=5;t=10"),
        ("\"key\";q=2;w=60", "\"key\";r=1;t=30"),
        // A name given wins over the default one.
        ("\"per-minute\";q=4;w=60", "\"per-minute\";r=3;t=15"),
        // A fixed cap alone: `t` runs to the UTC boundary, not a window after the request.
        ("\"key\";q=100;w=86400", "\"key\";r=99;t=79200"),
    ];
    for (key, (policy, ratelimit)) in keys.iter().zip(cases) {
        let reply = send(app.clone(), with_key(key.expose_secret())).await;
        assert_admitted(&reply, policy, ratelimit);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed-window caps

#[tokio::test]
async fn a_fixed_cap_resets_at_the_utc_boundary() {
    // 600 s before 06:00 UTC.
    let (limiter, clock) = limiter_at(at(MIDNIGHT + 6 * 3600 - 600));
    let (store, keys) = store_with([KeyRecord::new("key_1", "acme")]);
    let hits = Hits::default();
    let app = app(
        store,
        RateLimitLayer::new(limiter, limits("3/h;fixed")),
        &hits,
    );
    let me = || with_key(keys[0].expose_secret());
    const POLICY: &str = "\"default\";q=3;w=3600";

    // All three at once (no GCRA spacing), each told the window ends in 600 s.
    for r in [2, 1, 0] {
        let reply = send(app.clone(), me()).await;
        assert_admitted(&reply, POLICY, &format!("\"default\";r={r};t=600"));
    }
    let reply = send(app.clone(), me()).await;
    assert_limited(&reply, "default", 600);
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=600"));
    assert_eq!(reply.header("ratelimit-policy"), Some(POLICY));

    clock.advance(Duration::from_secs(599));
    let reply = send(app.clone(), me()).await;
    assert_limited(&reply, "default", 1);
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=1"));

    // At the boundary the cap is full again, for a whole window.
    clock.advance(Duration::from_secs(1));
    for r in [2, 1, 0] {
        let reply = send(app.clone(), me()).await;
        assert_admitted(&reply, POLICY, &format!("\"default\";r={r};t=3600"));
    }
    assert_limited(&send(app.clone(), me()).await, "default", 3600);
    assert_eq!(hits.get(), 6);
}

// ---------------------------------------------------------------------------------------------
// 429s of a list

#[tokio::test]
async fn a_denial_names_its_limit_waits_for_every_limit_and_spends_nothing() {
    // 1000 s before a UTC midnight.
    let (limiter, clock) = limiter_at(at(MIDNIGHT + DAY - 1000));
    let layer = RateLimitLayer::new(limiter, limits("2/min;name=rate, 3/d;fixed;name=daily"));
    let (store, keys) = store_with([KeyRecord::new("key_1", "acme")]);
    let hits = Hits::default();
    let app = app(store, layer, &hits);
    let me = || with_key(keys[0].expose_secret());
    const POLICY: &str = "\"rate\";q=2;w=60, \"daily\";q=3;w=86400";

    let reply = send(app.clone(), me()).await;
    assert_admitted(&reply, POLICY, "\"rate\";r=1;t=30, \"daily\";r=2;t=1000");
    let reply = send(app.clone(), me()).await;
    assert_admitted(&reply, POLICY, "\"rate\";r=0;t=60, \"daily\";r=1;t=1000");

    // The rate denies; the cap would admit, and is not spent.
    for _ in 0..3 {
        let reply = send(app.clone(), me()).await;
        assert_limited(&reply, "rate", 30);
        assert_eq!(reply.header("ratelimit-policy"), Some(POLICY));
        assert_eq!(
            reply.header("ratelimit"),
            Some("\"rate\";r=0;t=60, \"daily\";r=1;t=1000")
        );
    }

    clock.advance(Duration::from_secs(30));
    let reply = send(app.clone(), me()).await;
    assert_admitted(&reply, POLICY, "\"rate\";r=0;t=60, \"daily\";r=0;t=970");

    // Both deny: the rate would admit in 30 s, the cap only at midnight. Retry-After waits
    // for every limit, so it is the cap's.
    let reply = send(app.clone(), me()).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("970"));
    let detail = reply.detail();
    assert!(
        detail == "Too many requests: the \"rate\" limit is spent; retry in 970 s."
            || detail == "Too many requests: the \"daily\" limit is spent; retry in 970 s.",
        "the detail names a limit that denied, and the wait of Retry-After: {detail}"
    );
    assert_eq!(
        reply.header("ratelimit"),
        Some("\"rate\";r=0;t=60, \"daily\";r=0;t=970")
    );

    // 30 s on, only the cap denies: the 429 names it, and the rate keeps what it has left
    // however many requests the cap turns away.
    clock.advance(Duration::from_secs(30));
    for _ in 0..4 {
        let reply = send(app.clone(), me()).await;
        assert_limited(&reply, "daily", 940);
        assert_eq!(
            reply.header("ratelimit"),
            Some("\"rate\";r=1;t=30, \"daily\";r=0;t=940")
        );
    }
    // At midnight the cap is full again; the rate has long refilled.
    clock.advance(Duration::from_secs(940));
    let reply = send(app.clone(), me()).await;
    assert_admitted(&reply, POLICY, "\"rate\";r=1;t=30, \"daily\";r=2;t=86400");
    assert_eq!(hits.get(), 4);
}

/// What `RateLimitLayer::peek` reports for `principal`: name, limit, window, remaining, reset.
async fn peek(
    layer: &RateLimitLayer,
    principal: &Principal,
) -> Vec<(String, u32, Duration, u32, Duration)> {
    let status = layer.peek(principal).await.expect("the limiter answers");
    status
        .into_iter()
        .map(|s| (s.name, s.limit, s.window, s.remaining, s.reset))
        .collect()
}

#[tokio::test]
async fn peek_reports_what_each_limit_has_left_and_spends_nothing() {
    // 1000 s before a UTC midnight.
    let (limiter, clock) = limiter_at(at(MIDNIGHT + DAY - 1000));
    let layer = RateLimitLayer::new(limiter, limits("2/min;name=rate, 3/d;fixed;name=daily"));
    let (store, keys) = store_with([KeyRecord::new("key_1", "acme")]);
    let hits = Hits::default();
    let app = app(store.clone(), layer.clone(), &hits);
    let me = || with_key(keys[0].expose_secret());
    let caller = principal_of(&store, "key_1");
    const POLICY: &str = "\"rate\";q=2;w=60, \"daily\";q=3;w=86400";
    let status = |rate: (u32, u64), daily: (u32, u64)| {
        vec![
            (
                "rate".to_owned(),
                2,
                Duration::from_secs(60),
                rate.0,
                Duration::from_secs(rate.1),
            ),
            (
                "daily".to_owned(),
                3,
                Duration::from_secs(DAY),
                daily.0,
                Duration::from_secs(daily.1),
            ),
        ]
    };

    // Untouched: every limit full (a rate full now, a cap until its window ends).
    for _ in 0..3 {
        assert_eq!(peek(&layer, &caller).await, status((2, 0), (3, 1000)));
    }
    // The peeks spent nothing.
    let reply = send(app.clone(), me()).await;
    assert_admitted(&reply, POLICY, "\"rate\";r=1;t=30, \"daily\";r=2;t=1000");
    // What the headers said is left, peek says too.
    assert_eq!(peek(&layer, &caller).await, status((1, 30), (2, 1000)));
    let reply = send(app.clone(), me()).await;
    assert_admitted(&reply, POLICY, "\"rate\";r=0;t=60, \"daily\";r=1;t=1000");
    assert_eq!(peek(&layer, &caller).await, status((0, 60), (1, 1000)));

    clock.advance(Duration::from_secs(30));
    let reply = send(app.clone(), me()).await;
    assert_admitted(&reply, POLICY, "\"rate\";r=0;t=60, \"daily\";r=0;t=970");
    // 30 s on, the rate has one request left, the cap none: the figures of a 429's headers.
    clock.advance(Duration::from_secs(30));
    let reply = send(app.clone(), me()).await;
    assert_limited(&reply, "daily", 940);
    assert_eq!(
        reply.header("ratelimit"),
        Some("\"rate\";r=1;t=30, \"daily\";r=0;t=940")
    );
    assert_eq!(peek(&layer, &caller).await, status((1, 30), (0, 940)));
    assert_eq!(hits.get(), 3);
}

// ---------------------------------------------------------------------------------------------
// Stacked layers

#[tokio::test]
async fn stacked_layers_add_their_policies_inner_first() {
    let (limiter, _clock) = limiter();
    // Both layers on one limiter, as an application with one Redis would have them.
    let inner = RateLimitLayer::new(limiter.clone(), limits("3/min;name=per-key"));
    let outer = RateLimitLayer::new(limiter, limits("100/h;name=tenant")).key_by(|head| {
        head.headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(|t| format!("tenant:{t}"))
    });
    let (store, keys) = store_with([
        KeyRecord::new("key_1", "acme"),
        KeyRecord::new("key_2", "acme"),
    ]);
    let hits = Hits::default();
    let app = hits.router().layer(
        ServiceBuilder::new()
            .layer(AuthLayer::new(store))
            .layer(outer)
            .layer(inner),
    );
    let as_tenant = |key: &ApiKey| {
        get_with(
            "/me",
            &[("x-api-key", key.expose_secret()), ("x-tenant", "acme")],
        )
    };
    const POLICY: &str = "\"per-key\";q=3;w=60, \"tenant\";q=100;w=3600";

    for (r, t, tr, tt) in [(2, 20, 99, 36), (1, 40, 98, 72), (0, 60, 97, 108)] {
        let reply = send(app.clone(), as_tenant(&keys[0])).await;
        assert_admitted(
            &reply,
            POLICY,
            &format!("\"per-key\";r={r};t={t}, \"tenant\";r={tr};t={tt}"),
        );
    }
    // The inner layer denies; the outer one admitted (and spent) and still reports.
    let reply = send(app.clone(), as_tenant(&keys[0])).await;
    assert_limited(&reply, "per-key", 20);
    assert_eq!(reply.header("ratelimit-policy"), Some(POLICY));
    assert_eq!(
        reply.header("ratelimit"),
        Some("\"per-key\";r=0;t=60, \"tenant\";r=96;t=144")
    );
    // Another key of the tenant: its own per-key limit, the tenant's shared one.
    let reply = send(app.clone(), as_tenant(&keys[1])).await;
    assert_admitted(
        &reply,
        POLICY,
        "\"per-key\";r=2;t=20, \"tenant\";r=95;t=180",
    );
    // Without a tenant the outer layer does not limit, and adds nothing.
    let reply = send(app.clone(), with_key(keys[1].expose_secret())).await;
    assert_admitted(&reply, "\"per-key\";q=3;w=60", "\"per-key\";r=1;t=40");
    assert_eq!(hits.get(), 5);
}

// ---------------------------------------------------------------------------------------------
// Which limits apply: tiers, a key's own quota, overrides, key_by

#[tokio::test]
async fn tiers_come_from_key_records_and_a_keys_own_quota_beats_its_tier() {
    let (limiter, _clock) = limiter();
    let layer = RateLimitLayer::new(limiter, Quota::per_minute(2))
        .tier("gold", Quota::per_minute(3))
        .tier("silver", limits("1/min;name=slow, 5/d;fixed;name=daily"));
    let (store, keys) = store_with([
        KeyRecord::new("gold_1", "acme").with_tier("gold"),
        KeyRecord::new("gold_own", "acme")
            .with_tier("gold")
            .with_quota(Quota::per_minute(1)),
        KeyRecord::new("silver_1", "acme").with_tier("silver"),
        KeyRecord::new("unknown_tier", "acme").with_tier("platinum"),
        KeyRecord::new("plain", "acme"),
    ]);
    let hits = Hits::default();
    let app = app(store, layer.clone(), &hits);
    let key = |i: usize| with_key(keys[i].expose_secret());

    for (r, t) in [(2, 20), (1, 40), (0, 60)] {
        let reply = send(app.clone(), key(0)).await;
        assert_admitted(
            &reply,
            "\"gold\";q=3;w=60",
            &format!("\"gold\";r={r};t={t}"),
        );
    }
    assert_limited(&send(app.clone(), key(0)).await, "gold", 20);

    // The key's own quota wins over its tier.
    let reply = send(app.clone(), key(1)).await;
    assert_admitted(&reply, "\"key\";q=1;w=60", "\"key\";r=0;t=60");
    assert_limited(&send(app.clone(), key(1)).await, "key", 60);

    // A tier of several limits.
    let reply = send(app.clone(), key(2)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"slow\";q=1;w=60, \"daily\";q=5;w=86400")
    );
    assert_limited(&send(app.clone(), key(2)).await, "slow", 60);

    // A tier the layer does not know, and no tier: the default.
    for i in [3, 4] {
        let reply = send(app.clone(), key(i)).await;
        assert_admitted(&reply, "\"default\";q=2;w=60", "\"default\";r=1;t=30");
    }
    assert_eq!(hits.get(), 3 + 1 + 1 + 2);
}

#[tokio::test]
async fn overrides_win_over_quota_and_tier_and_change_at_run_time() {
    let (limiter, clock) = limiter_at(at(MIDNIGHT + 7200));
    let overrides = Overrides::new();
    let layer = RateLimitLayer::new(limiter, Quota::per_minute(2))
        .tier("gold", Quota::per_minute(3))
        .overrides(overrides.clone());
    let (store, keys) = store_with([
        KeyRecord::new("gold_1", "acme").with_tier("gold"),
        KeyRecord::new("gold_own", "acme")
            .with_tier("gold")
            .with_quota(Quota::per_minute(1)),
    ]);
    let hits = Hits::default();
    let app = app(store.clone(), layer.clone(), &hits);
    let key = |i: usize| with_key(keys[i].expose_secret());

    let reply = send(app.clone(), key(0)).await;
    assert_admitted(&reply, "\"gold\";q=3;w=60", "\"gold\";r=2;t=20");
    let reply = send(app.clone(), key(1)).await;
    assert_admitted(&reply, "\"key\";q=1;w=60", "\"key\";r=0;t=60");
    assert_limited(&send(app.clone(), key(1)).await, "key", 60);

    // An override for a key with its own quota: a list, which starts fresh.
    overrides.set("gold_own", limits("5/min;name=vip, 100/d;fixed"));
    let vip = "\"vip\";q=5;w=60, \"day\";q=100;w=86400";
    assert_eq!(
        layer.limits_for(&principal_of(&store, "gold_own")),
        limits("5/min;name=vip, 100/d;fixed")
    );
    let reply = send(app.clone(), key(1)).await;
    assert_admitted(&reply, vip, "\"vip\";r=4;t=12, \"day\";r=99;t=79200");
    // Removed, the key's own quota applies again, still spent.
    assert!(overrides.remove("gold_own"));
    assert_limited(&send(app.clone(), key(1)).await, "key", 60);

    // An override for a key of a tier; past its tier's window, so that its state is empty.
    clock.advance(Duration::from_secs(60));
    overrides.set("gold_1", Quota::per_minute(10));
    let reply = send(app.clone(), key(0)).await;
    assert_admitted(&reply, "\"override\";q=10;w=60", "\"override\";r=9;t=6");
    clock.advance(Duration::from_secs(60));
    overrides.remove("gold_1");
    let reply = send(app.clone(), key(0)).await;
    assert_admitted(&reply, "\"gold\";q=3;w=60", "\"gold\";r=2;t=20");
}

#[tokio::test]
async fn key_by_picks_the_limits_with_its_key() {
    let (limiter, _clock) = limiter_at(at(MIDNIGHT + 7200));
    let layer = RateLimitLayer::new(limiter, Quota::per_minute(1)).key_by(|head| {
        let tenant = head.headers.get("x-tenant")?.to_str().ok()?;
        let key = LimitKey::new(format!("tenant:{tenant}"));
        Some(match tenant {
            "partner" => key.with_quota(limits("3/min;name=partner, 10/d;fixed")),
            "trial" => key.with_quota(Quota::per_minute(2)),
            _ => key,
        })
    });
    let app = routes().layer(layer);
    let tenant = |t: &str| get_with("/open", &[("x-tenant", t)]);

    let reply = send(app.clone(), tenant("partner")).await;
    assert_admitted(
        &reply,
        "\"partner\";q=3;w=60, \"day\";q=10;w=86400",
        "\"partner\";r=2;t=20, \"day\";r=9;t=79200",
    );
    assert_eq!(reply.text(), "open");
    let reply = send(app.clone(), tenant("trial")).await;
    assert_admitted(&reply, "\"key\";q=2;w=60", "\"key\";r=1;t=30");
    let reply = send(app.clone(), tenant("acme")).await;
    assert_admitted(&reply, "\"default\";q=1;w=60", "\"default\";r=0;t=60");
    assert_limited(&send(app.clone(), tenant("acme")).await, "default", 60);
    // Each tenant has its own state.
    let reply = send(app.clone(), tenant("partner")).await;
    assert_admitted(
        &reply,
        "\"partner\";q=3;w=60, \"day\";q=10;w=86400",
        "\"partner\";r=1;t=40, \"day\";r=8;t=79200",
    );
}

// ---------------------------------------------------------------------------------------------
// Limits per owner

#[tokio::test]
async fn limit_by_owner_shares_one_budget_among_an_owners_keys() {
    let (limiter, _clock) = limiter();
    let layer = RateLimitLayer::new(limiter, Quota::per_minute(3)).limit_by(LimitBy::Owner);
    let (store, keys) = store_with([
        KeyRecord::new("acme_1", "acme"),
        KeyRecord::new("acme_2", "acme"),
        KeyRecord::new("globex_1", "globex"),
    ]);
    let hits = Hits::default();
    let app = app(store, layer, &hits);
    let key = |i: usize| with_key(keys[i].expose_secret());
    const POLICY: &str = "\"default\";q=3;w=60";

    for (i, r, t) in [(0, 2, 20), (1, 1, 40), (0, 0, 60)] {
        let reply = send(app.clone(), key(i)).await;
        assert_admitted(&reply, POLICY, &format!("\"default\";r={r};t={t}"));
    }
    assert_limited(&send(app.clone(), key(1)).await, "default", 20);
    assert_limited(&send(app.clone(), key(0)).await, "default", 20);
    // Another owner's key has its own budget.
    let reply = send(app.clone(), key(2)).await;
    assert_admitted(&reply, POLICY, "\"default\";r=2;t=20");
    assert_eq!(hits.get(), 4);
}

#[tokio::test]
async fn an_owner_item_is_counted_per_owner_beside_a_per_key_item() {
    let (limiter, _clock) = limiter();
    // Both items of the same quota: only the namespace keeps a caller's state apart from an
    // owner's.
    let layer = RateLimitLayer::new(
        limiter,
        limits("2/min;name=per-key, 2/min;owner;name=per-owner"),
    );
    let (store, keys) = store_with([
        KeyRecord::new("acme_1", "acme"),
        KeyRecord::new("acme_2", "acme"),
        // A key whose id is another owner's name.
        KeyRecord::new("acme", "zeta"),
    ]);
    let hits = Hits::default();
    let app = app(store, layer, &hits);
    let key = |i: usize| with_key(keys[i].expose_secret());
    const POLICY: &str = "\"per-key\";q=2;w=60, \"per-owner\";q=2;w=60";

    let reply = send(app.clone(), key(0)).await;
    assert_admitted(
        &reply,
        POLICY,
        "\"per-key\";r=1;t=30, \"per-owner\";r=1;t=30",
    );
    let reply = send(app.clone(), key(1)).await;
    assert_admitted(
        &reply,
        POLICY,
        "\"per-key\";r=1;t=30, \"per-owner\";r=0;t=60",
    );
    // Each key has one request left of its own, but the owner's budget is spent.
    for i in [0, 1] {
        let reply = send(app.clone(), key(i)).await;
        assert_limited(&reply, "per-owner", 30);
        assert_eq!(
            reply.header("ratelimit"),
            Some("\"per-key\";r=1;t=30, \"per-owner\";r=0;t=60")
        );
    }
    // Key "acme" of owner "zeta" shares nothing with owner "acme".
    let reply = send(app.clone(), key(2)).await;
    assert_admitted(
        &reply,
        POLICY,
        "\"per-key\";r=1;t=30, \"per-owner\";r=1;t=30",
    );
    assert_eq!(hits.get(), 3);
}

// ---------------------------------------------------------------------------------------------
// Shadow mode

/// Lines of `logs` that report a shadow denial of `principal`.
fn shadow_lines(logs: &LogCapture, principal: &str) -> usize {
    let needle = format!("principal=\"{principal}\"");
    logs.text()
        .lines()
        .filter(|l| {
            l.contains("INFO") && l.contains("rate limit exceeded (shadow)") && l.contains(&needle)
        })
        .count()
}

#[tokio::test]
async fn a_layer_in_shadow_never_denies_and_logs_once_per_caller_and_window() {
    let (logs, _guard) = LogCapture::install(tracing::Level::INFO);
    let (limiter, clock) = limiter();
    // Two per 250 ms, so that a window passes within the test.
    let layer = RateLimitLayer::new(limiter, limits("2/250ms")).shadow(true);
    let (store, keys) = store_with([
        KeyRecord::new("shadow_1", "acme"),
        KeyRecord::new("shadow_2", "acme"),
    ]);
    let hits = Hits::default();
    let app = app(store, layer, &hits);
    let key = |i: usize| with_key(keys[i].expose_secret());
    const POLICY: &str = "\"default\";q=2;w=1";

    let reply = send(app.clone(), key(0)).await;
    assert_admitted(&reply, POLICY, "\"default\";r=1;t=1");
    let reply = send(app.clone(), key(0)).await;
    assert_admitted(&reply, POLICY, "\"default\";r=0;t=1");
    // Over the limit: admitted, with the headers of a denial.
    for _ in 0..5 {
        let reply = send(app.clone(), key(0)).await;
        assert_admitted(&reply, POLICY, "\"default\";r=0;t=1");
    }
    assert_eq!(hits.get(), 7);
    assert_eq!(shadow_lines(&logs, "shadow_1"), 1, "{}", logs.text());

    // Another caller is logged on its own.
    for _ in 0..4 {
        assert_eq!(send(app.clone(), key(1)).await.status, StatusCode::OK);
    }
    assert_eq!(shadow_lines(&logs, "shadow_2"), 1, "{}", logs.text());
    assert_eq!(shadow_lines(&logs, "shadow_1"), 1, "{}", logs.text());

    // A window later (on the limiter's clock and on the wall clock alike), a new denial is
    // logged again.
    clock.advance(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(send(app.clone(), key(0)).await.status, StatusCode::OK);
    }
    assert_eq!(shadow_lines(&logs, "shadow_1"), 2, "{}", logs.text());
    assert_eq!(hits.get(), 7 + 4 + 3);
}

#[tokio::test]
async fn a_shadow_item_reports_but_only_the_enforced_one_denies() {
    let (logs, _guard) = LogCapture::install(tracing::Level::INFO);
    let (limiter, _clock) = limiter();
    let layer = RateLimitLayer::new(
        limiter,
        limits("1/min;shadow;name=trial, 3/min;name=enforced"),
    );
    let (store, keys) = store_with([KeyRecord::new("trialled", "acme")]);
    let hits = Hits::default();
    let app = app(store, layer, &hits);
    let me = || with_key(keys[0].expose_secret());
    const POLICY: &str = "\"trial\";q=1;w=60, \"enforced\";q=3;w=60";

    let reply = send(app.clone(), me()).await;
    assert_admitted(&reply, POLICY, "\"trial\";r=0;t=60, \"enforced\";r=2;t=20");
    // The shadow limit would deny: admitted, and it is not spent (its `t` stays).
    let reply = send(app.clone(), me()).await;
    assert_admitted(&reply, POLICY, "\"trial\";r=0;t=60, \"enforced\";r=1;t=40");
    let reply = send(app.clone(), me()).await;
    assert_admitted(&reply, POLICY, "\"trial\";r=0;t=60, \"enforced\";r=0;t=60");
    // The enforced one denies, and the 429 names it.
    let reply = send(app.clone(), me()).await;
    assert_limited(&reply, "enforced", 20);
    assert_eq!(
        reply.header("ratelimit"),
        Some("\"trial\";r=0;t=60, \"enforced\";r=0;t=60")
    );
    assert_eq!(hits.get(), 3);
    assert_eq!(shadow_lines(&logs, "trialled"), 1, "{}", logs.text());
    assert!(
        logs.text().contains("policy=\"trial\""),
        "the log names the shadow limit: {}",
        logs.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens minted for keys

#[cfg(feature = "jwt")]
mod tokens {
    use super::*;
    use common::with_bearer;
    use keygate::jwt::{JwtKey, JwtVerifier, TokenIssuer};

    const SECRET: &[u8] = b"keygate quota tests: an HMAC secret of 48 bytes.";

    /// An issuer and a verifier that carry a key's quota and tier, on `clock`.
    fn jwt(clock: &ManualClock) -> (TokenIssuer, JwtVerifier) {
        let issuer = TokenIssuer::hmac(SECRET)
            .quota_claim("quota")
            .tier_claim("tier")
            .clock(clock.clone());
        let verifier = JwtVerifier::with_keys([JwtKey::hmac(SECRET)])
            .quota_claim("quota")
            .tier_claim("tier")
            .clock(clock.clone());
        (issuer, verifier)
    }

    fn token_app(
        store: MemoryStore,
        verifier: JwtVerifier,
        limit: RateLimitLayer,
        hits: &Hits,
    ) -> Router {
        hits.router().layer(
            ServiceBuilder::new()
                .layer(AuthLayer::new(store).jwt(verifier))
                .layer(limit),
        )
    }

    #[tokio::test]
    async fn a_token_minted_for_a_key_is_limited_by_its_list_and_shares_its_state() {
        let (limiter, clock) = limiter_at(at(MIDNIGHT + DAY - 51_234));
        let (issuer, verifier) = jwt(&clock);
        let layer =
            RateLimitLayer::new(limiter, Quota::per_minute(100)).tier("gold", Quota::per_minute(3));
        let (store, keys) = store_with([
            KeyRecord::new("metered", "acme")
                .with_quota(limits("2/min;name=burst, 5/d;fixed;name=daily")),
            KeyRecord::new("golden", "acme").with_tier("gold"),
            KeyRecord::new("plain", "acme"),
        ]);
        let hits = Hits::default();
        let app = token_app(store.clone(), verifier, layer, &hits);
        let mint = |id: &str| {
            issuer
                .issue_for(&principal_of(&store, id))
                .expect("a token")
                .access_token
        };
        let token = mint("metered");
        let by_key = || with_key(keys[0].expose_secret());
        let by_token = || with_bearer("/me", &token);
        const POLICY: &str = "\"burst\";q=2;w=60, \"daily\";q=5;w=86400";

        let reply = send(app.clone(), by_key()).await;
        assert_admitted(&reply, POLICY, "\"burst\";r=1;t=30, \"daily\";r=4;t=51234");
        let reply = send(app.clone(), by_token()).await;
        assert_admitted(&reply, POLICY, "\"burst\";r=0;t=60, \"daily\";r=3;t=51234");
        assert_eq!(
            reply.text(),
            "metered",
            "the token's subject is the key's id"
        );
        assert_limited(&send(app.clone(), by_key()).await, "burst", 30);
        assert_limited(&send(app.clone(), by_token()).await, "burst", 30);

        clock.advance(Duration::from_secs(30));
        let reply = send(app.clone(), by_token()).await;
        assert_admitted(&reply, POLICY, "\"burst\";r=0;t=60, \"daily\";r=2;t=51204");
        clock.advance(Duration::from_secs(60));
        for (r, t) in [(1, 51144), (0, 51144)] {
            let reply = send(app.clone(), by_key()).await;
            assert_eq!(reply.status, StatusCode::OK);
            let daily = format!("\"daily\";r={r};t={t}");
            assert!(
                reply
                    .header("ratelimit")
                    .is_some_and(|v| v.ends_with(&daily)),
                "{:?}",
                reply.header("ratelimit")
            );
        }
        // Five in the day, by key and token together: the cap denies both.
        clock.advance(Duration::from_secs(60));
        assert_limited(&send(app.clone(), by_token()).await, "daily", 51084);
        assert_limited(&send(app.clone(), by_key()).await, "daily", 51084);

        // A token of a key of a tier: the tier's limits, and the key's state.
        let gold = mint("golden");
        let reply = send(app.clone(), with_key(keys[1].expose_secret())).await;
        assert_admitted(&reply, "\"gold\";q=3;w=60", "\"gold\";r=2;t=20");
        let reply = send(app.clone(), with_bearer("/me", &gold)).await;
        assert_admitted(&reply, "\"gold\";q=3;w=60", "\"gold\";r=1;t=40");

        // A token of a key with neither: the default, and the key's state.
        let plain = mint("plain");
        let reply = send(app.clone(), with_key(keys[2].expose_secret())).await;
        assert_admitted(&reply, "\"default\";q=100;w=60", "\"default\";r=99;t=1");
        let reply = send(app.clone(), with_bearer("/me", &plain)).await;
        assert_admitted(&reply, "\"default\";q=100;w=60", "\"default\";r=98;t=2");
    }

    #[tokio::test]
    async fn an_override_limits_a_token_subject_and_changes_at_run_time() {
        let (limiter, clock) = limiter();
        let (issuer, verifier) = jwt(&clock);
        let overrides = Overrides::new();
        let layer = RateLimitLayer::new(limiter, Quota::per_minute(2)).overrides(overrides.clone());
        let store = MemoryStore::new();
        let hits = Hits::default();
        let app = token_app(store, verifier, layer, &hits);
        let alice = issuer
            .issue("alice", ["read"])
            .expect("a token")
            .access_token;
        // A token with a quota claim of its own: the override still wins.
        let bob = issuer
            .issue_for(
                &Principal::new("bob", keygate::PrincipalKind::Jwt).with_quota(limits("50/min")),
            )
            .expect("a token")
            .access_token;

        overrides.set("alice", Quota::per_minute(1));
        overrides.set("bob", limits("1/min;name=held"));
        let reply = send(app.clone(), with_bearer("/me", &alice)).await;
        assert_admitted(&reply, "\"override\";q=1;w=60", "\"override\";r=0;t=60");
        assert_eq!(reply.text(), "alice");
        assert_limited(
            &send(app.clone(), with_bearer("/me", &alice)).await,
            "override",
            60,
        );
        let reply = send(app.clone(), with_bearer("/me", &bob)).await;
        assert_admitted(&reply, "\"held\";q=1;w=60", "\"held\";r=0;t=60");

        // Removed (a window later, so that the state is empty): the default applies again,
        // to the same token.
        clock.advance(Duration::from_secs(60));
        overrides.remove("alice");
        let reply = send(app.clone(), with_bearer("/me", &alice)).await;
        assert_admitted(&reply, "\"default\";q=2;w=60", "\"default\";r=1;t=30");
        overrides.remove("bob");
        let reply = send(app.clone(), with_bearer("/me", &bob)).await;
        assert_admitted(&reply, "\"key\";q=50;w=60", "\"key\";r=49;t=2");
    }
}

// ---------------------------------------------------------------------------------------------
// Credits

#[tokio::test]
async fn credits_are_spent_and_a_key_without_any_left_is_denied() {
    let clock = ManualClock::at(at(MIDNIGHT + 7200));
    let store = MemoryStore::new().with_clock(clock.clone());
    let issue = |record: KeyRecord| store.issue(record).expect("a fresh id");
    let once = issue(KeyRecord::new("once", "acme").with_credits(Credits::new(2)));
    let refilled = issue(
        KeyRecord::new("refilled", "acme")
            .with_credits(Credits::new(1).with_refill(Refill::new(3, Duration::from_secs(3600)))),
    );
    let unmetered = issue(KeyRecord::new("unmetered", "acme"));
    let limiter = MemoryLimiter::builder().clock(clock.clone()).build();
    let layer = RateLimitLayer::new(limiter, Quota::per_minute(100)).credits(store.clone());
    let hits = Hits::default();
    let app = app(store.clone(), layer, &hits);
    let credits = |id: &'static str| {
        let store = store.clone();
        async move { store.credits(id).await.expect("the store answers") }
    };

    for left in [1, 0] {
        let reply = send(app.clone(), with_key(once.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(credits("once").await, Some(Credits::new(left)));
    }
    // Used up, no refill: 429 without Retry-After, and the count stays at 0.
    for _ in 0..3 {
        let reply = send(app.clone(), with_key(once.expose_secret())).await;
        assert_quota_problem(&reply, "The key's credits are used up.", None);
    }
    assert_eq!(credits("once").await, Some(Credits::new(0)));

    // With a refill scheduled: Retry-After until it comes.
    let reply = send(app.clone(), with_key(refilled.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = send(app.clone(), with_key(refilled.expose_secret())).await;
    assert_quota_problem(
        &reply,
        "The key's credits are used up; they are refilled in 3600 s.",
        Some(3600),
    );
    clock.advance(Duration::from_secs(1800));
    let reply = send(app.clone(), with_key(refilled.expose_secret())).await;
    assert_quota_problem(
        &reply,
        "The key's credits are used up; they are refilled in 1800 s.",
        Some(1800),
    );
    clock.advance(Duration::from_secs(1800));
    let reply = send(app.clone(), with_key(refilled.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        credits("refilled").await.map(|c| c.remaining),
        Some(2),
        "refilled to 3, less this request"
    );

    // A key without a budget is not limited by credits.
    for _ in 0..5 {
        let reply = send(app.clone(), with_key(unmetered.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(credits("unmetered").await, None);
    assert_eq!(hits.get(), 2 + 1 + 1 + 5);
}

#[tokio::test]
async fn a_request_the_limits_deny_spends_no_credit() {
    let (limiter, _clock) = limiter();
    let store = MemoryStore::new();
    let key = store
        .issue(KeyRecord::new("metered", "acme").with_credits(Credits::new(10)))
        .expect("a fresh id");
    let layer = RateLimitLayer::new(limiter, limits("1/min;name=rate")).credits(store.clone());
    let hits = Hits::default();
    let app = app(store.clone(), layer, &hits);

    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_admitted(&reply, "\"rate\";q=1;w=60", "\"rate\";r=0;t=60");
    for _ in 0..3 {
        assert_limited(
            &send(app.clone(), with_key(key.expose_secret())).await,
            "rate",
            60,
        );
    }
    assert_eq!(
        store.credits("metered").await.expect("the store answers"),
        Some(Credits::new(9))
    );
    assert_eq!(hits.get(), 1);
}

#[tokio::test]
async fn credits_are_spent_by_cost_and_a_credits_denial_is_counted_and_reported() {
    let (limiter, _clock) = limiter();
    let store = MemoryStore::new();
    let key = store
        .issue(KeyRecord::new("metered", "acme").with_credits(Credits::new(5)))
        .expect("a fresh id");
    let usage = UsageTracker::new(100);
    let layer = RateLimitLayer::new(limiter, limits("100/min;name=rate"))
        .credits(store.clone())
        .cost(|_| 2)
        .track_usage(usage.clone());
    let hits = Hits::default();
    let app = app(store.clone(), layer, &hits);

    for left in [3, 1] {
        let reply = send(app.clone(), with_key(key.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            store.credits("metered").await.expect("the store answers"),
            Some(Credits::new(left))
        );
    }
    // One credit left, a cost of two: denied, nothing spent, the limits' headers on the 429.
    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_quota_problem(&reply, "The key's credits are used up.", None);
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"rate\";q=100;w=60")
    );
    assert!(
        reply
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"rate\";r="))
    );
    assert_eq!(
        store.credits("metered").await.expect("the store answers"),
        Some(Credits::new(1))
    );
    // The usage counts the denial as limited, not as allowed.
    assert_eq!(
        usage.get("metered"),
        Some(Usage {
            allowed: 2,
            limited: 1
        })
    );
    assert_eq!(hits.get(), 2);
}

#[tokio::test]
async fn a_shadow_layer_lets_a_key_without_credits_through() {
    let (limiter, _clock) = limiter();
    let store = MemoryStore::new();
    let key = store
        .issue(KeyRecord::new("metered", "acme").with_credits(Credits::new(1)))
        .expect("a fresh id");
    let layer = RateLimitLayer::new(limiter, limits("100/min"))
        .credits(store.clone())
        .shadow(true);
    let hits = Hits::default();
    let app = app(store.clone(), layer, &hits);
    for _ in 0..3 {
        let reply = send(app.clone(), with_key(key.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        store.credits("metered").await.expect("the store answers"),
        Some(Credits::new(0)),
        "spent down to 0, never below"
    );
    assert_eq!(hits.get(), 3);
}

// ---------------------------------------------------------------------------------------------
// Requests in flight, on a real server

/// An axum server on 127.0.0.1 and a free port; stopped when dropped.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(app: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("the server's address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the server runs");
        });
        Self { addr, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts its drops.
#[derive(Clone, Default)]
struct Drops(Arc<AtomicUsize>);

impl Drops {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn guard(&self) -> DropGuard {
        DropGuard(self.0.clone())
    }
}

struct DropGuard(Arc<AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A response body that sends one chunk and then never ends.
struct Endless {
    sent: bool,
    _dropped: DropGuard,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.sent {
            return Poll::Pending;
        }
        this.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
    }
}

/// What the handlers of [`slow_routes`] share with the test.
#[derive(Clone)]
struct Slow {
    /// Requests that reached `/slow`.
    entered: Arc<AtomicUsize>,
    /// Lets one `/slow` request answer per permit.
    release: Arc<tokio::sync::Semaphore>,
    /// `/slow` handlers dropped (finished or abandoned).
    handlers_dropped: Drops,
    /// `/stream` bodies dropped.
    bodies_dropped: Drops,
}

impl Slow {
    fn new() -> Self {
        Self {
            entered: Arc::default(),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
            handlers_dropped: Drops::default(),
            bodies_dropped: Drops::default(),
        }
    }
}

/// `GET /slow` (answers when the test releases it), `GET /stream` (a body that never ends),
/// `GET /fast`.
fn slow_routes(slow: &Slow) -> Router {
    let s = slow.clone();
    let b = slow.clone();
    Router::new()
        .route(
            "/slow",
            get(move || {
                let s = s.clone();
                async move {
                    let _dropped = s.handlers_dropped.guard();
                    s.entered.fetch_add(1, Ordering::SeqCst);
                    s.release
                        .acquire()
                        .await
                        .expect("the semaphore stays open")
                        .forget();
                    "slow"
                }
            }),
        )
        .route(
            "/stream",
            get(move || {
                let body = Endless {
                    sent: false,
                    _dropped: b.bodies_dropped.guard(),
                };
                std::future::ready(Body::new(body))
            }),
        )
        .route("/fast", get(|| async { "fast" }))
}

/// Waits (up to 10 s) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A concurrency limit's 429.
#[track_caller]
fn assert_in_flight_problem(status: StatusCode, retry_after: Option<&str>, body: &str, max: u32) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(retry_after, Some("1"));
    let json: serde_json::Value = serde_json::from_str(body).expect("a problem+json body");
    assert_eq!(json["type"], QUOTA_EXCEEDED);
    assert_eq!(json["status"], 429);
    assert_eq!(
        json["detail"],
        format!("Too many requests in flight: at most {max} at once.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_n_requests_in_flight_and_places_are_freed_on_completion_and_disconnect() {
    let (store, keys) = store_with([
        KeyRecord::new("busy", "acme"),
        KeyRecord::new("other", "acme"),
    ]);
    let slow = Slow::new();
    let layer = RateLimitLayer::new(MemoryLimiter::new(), Quota::per_minute(10_000)).concurrency(2);
    let app = slow_routes(&slow).layer(
        ServiceBuilder::new()
            .layer(AuthLayer::new(store))
            .layer(layer),
    );
    let server = Server::start(app).await;
    let client = reqwest::Client::new();
    let secret = keys[0].expose_secret().to_owned();
    let call = |path: &str, key: &str| client.get(server.url(path)).header("x-api-key", key).send();
    /// Status, Retry-After and body of a finished request.
    async fn finish(res: reqwest::Response) -> (StatusCode, Option<String>, String) {
        let status = StatusCode::from_u16(res.status().as_u16()).expect("a status");
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = res.text().await.expect("a body");
        (status, retry_after, body)
    }

    // Three slow requests at once: two get in, exactly one is turned away.
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..3 {
        let request = call("/slow", &secret);
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let answer = finish(request.await.expect("the server answers")).await;
            let _ = done_tx.send(answer);
        });
    }
    let (status, retry_after, body) = done.recv().await.expect("one answer");
    assert_in_flight_problem(status, retry_after.as_deref(), &body, 2);
    eventually("two requests in the handler", || {
        slow.entered.load(Ordering::SeqCst) == 2
    })
    .await;
    let (status, retry_after, body) = finish(call("/fast", &secret).await.unwrap()).await;
    assert_in_flight_problem(status, retry_after.as_deref(), &body, 2);
    // Another caller is counted apart.
    let other = finish(call("/fast", keys[1].expose_secret()).await.unwrap()).await;
    assert_eq!(other.0, StatusCode::OK);

    // One completes: its place is free again.
    slow.release.add_permits(1);
    let (status, _, body) = done.recv().await.expect("a second answer");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow"));
    let (status, _, body) = finish(call("/fast", &secret).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "fast"));
    slow.release.add_permits(1);
    let (status, _, body) = done.recv().await.expect("a third answer");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow"));
    assert_eq!(
        slow.entered.load(Ordering::SeqCst),
        2,
        "exactly one was turned away"
    );

    // Two responses whose bodies never end hold both places.
    let first = call("/stream", &secret).await.unwrap();
    let second = call("/stream", &secret).await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(second.status().as_u16(), 200);
    let (status, retry_after, body) = finish(call("/fast", &secret).await.unwrap()).await;
    assert_in_flight_problem(status, retry_after.as_deref(), &body, 2);
    // The client drops one response before reading its body: the connection closes, the
    // server drops the body, and the place is free.
    drop(first);
    eventually("the server drops the abandoned body", || {
        slow.bodies_dropped.get() == 1
    })
    .await;
    let (status, _, body) = finish(call("/fast", &secret).await.unwrap()).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "fast"),
        "a dropped body frees its place"
    );

    // A request abandoned before its response: the client gives up while the handler waits.
    let dropped_before = slow.handlers_dropped.get();
    let request = call("/slow", &secret);
    let abandoned = tokio::spawn(request);
    eventually("the third slow request reaches the handler", || {
        slow.entered.load(Ordering::SeqCst) == 3
    })
    .await;
    let (status, retry_after, body) = finish(call("/fast", &secret).await.unwrap()).await;
    assert_in_flight_problem(status, retry_after.as_deref(), &body, 2);
    abandoned.abort();
    eventually("the server drops the abandoned request", || {
        slow.handlers_dropped.get() == dropped_before + 1
    })
    .await;
    let (status, _, body) = finish(call("/fast", &secret).await.unwrap()).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "fast"),
        "an abandoned request frees its place"
    );
    drop(second);
    eventually("the server drops the second body", || {
        slow.bodies_dropped.get() == 2
    })
    .await;
    for _ in 0..2 {
        let (status, _, _) = finish(call("/fast", &secret).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
    }
}
