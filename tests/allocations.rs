//! Heap allocations per request through an axum `Router` with an `AuthLayer`, counted by a
//! global allocator that counts the allocations of the test's own thread: a valid API key, a
//! cached JWT, a valid key behind a `RateLimitLayer`, and the refusals (unknown key, bad
//! checksum, no credential, two credentials), each against the router with as many layers that
//! do nothing (what axum's `Router::layer` costs any layer) in the same run.
//!
//! The request is built before counting starts; what is counted is the service call and the
//! drop of its response, as `benches/overhead.rs` measures time.

#![cfg(all(feature = "axum", feature = "jwt"))]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use keygate::Quota;
use keygate::auth::AuthLayer;
use keygate::jwt::{JwtKey, JwtVerifier};
use keygate::key::{KeyFormat, KeyRecord};
use keygate::ratelimit::{HeaderStyle, MemoryLimiter, RateLimitLayer};
use keygate::store::MemoryStore;
use tower::ServiceExt;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// thread-local `Cell` of a `const` initialiser, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// The route every case calls, turned into its final service as `axum::serve` does.
fn router() -> Router {
    Router::new().route("/v1/current.json", get(|| async { "{}" }))
}

fn finish(router: Router) -> Router {
    router.with_state(())
}

/// The allocations of one call of `app` with `req` and the drop of its response (the fewest of
/// a few calls, after one to warm caches up), and its status.
fn count(
    rt: &tokio::runtime::Runtime,
    app: &Router,
    make: impl Fn() -> Request<Body>,
) -> (u64, StatusCode) {
    let mut fewest = u64::MAX;
    let mut status = StatusCode::OK;
    for _ in 0..5 {
        let req = make();
        let app = app.clone();
        let before = allocations();
        let res = rt.block_on(app.oneshot(req)).expect("infallible");
        status = res.status();
        drop(res);
        fewest = fewest.min(allocations() - before);
    }
    (fewest, status)
}

fn get_with(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::get(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Body::empty()).expect("a valid request")
}

#[test]
fn allocations_per_request() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let format = KeyFormat::new("wk_live_").expect("a valid prefix");
    let store = MemoryStore::with_format(format.clone());
    let key = format.generate();
    store
        .insert(&key, KeyRecord::new("key_1", "acme"))
        .expect("a new key");
    let key = key.expose_secret().to_owned();
    let unknown = format.generate().expose_secret().to_owned();
    let mut malformed = key.clone();
    let last = malformed.pop().expect("a key");
    malformed.push(if last == 'A' { 'B' } else { 'A' });
    let verifier = JwtVerifier::with_keys([JwtKey::hmac(common::HS256_SECRET).kid("hs-1")]);
    let token = common::hs256_token("alice");
    let bearer = format!("Bearer {token}");

    let bare = finish(router());
    let noop = finish(router().layer(tower::layer::util::Identity::new()));
    let keys = finish(router().layer(AuthLayer::new(store.clone()).key_format(format.clone())));
    let realm = finish(
        router().layer(
            AuthLayer::new(store.clone())
                .key_format(format.clone())
                .realm("api"),
        ),
    );
    let jwt = finish(router().layer(AuthLayer::jwt_only(verifier)));
    let limited = |style| {
        finish(
            router()
                .layer(
                    RateLimitLayer::new(MemoryLimiter::new(), Quota::per_second(1_000_000_000))
                        .headers(style),
                )
                .layer(AuthLayer::new(store.clone()).key_format(format.clone())),
        )
    };
    let limited_draft = limited(HeaderStyle::Draft);
    let limited_quiet = limited(HeaderStyle::None);

    let query = |k: &str| format!("/v1/current.json?key={k}&q=London");
    let (bare_count, status) = count(&rt, &bare, || get_with(&query(&key), &[]));
    assert_eq!(status, StatusCode::OK);
    let (baseline, status) = count(&rt, &noop, || get_with(&query(&key), &[]));
    assert_eq!(status, StatusCode::OK);
    // The rate-limited cases go through two layers: their baseline is two that do nothing.
    let noop2 = finish(
        router()
            .layer(tower::layer::util::Identity::new())
            .layer(tower::layer::util::Identity::new()),
    );
    let (baseline2, status) = count(&rt, &noop2, || get_with(&query(&key), &[]));
    assert_eq!(status, StatusCode::OK);
    let cases = [
        ("valid key", &keys, query(&key), vec![], StatusCode::OK),
        (
            "valid key, realm set",
            &realm,
            query(&key),
            vec![],
            StatusCode::OK,
        ),
        (
            "cached JWT",
            &jwt,
            "/v1/current.json?q=London".to_owned(),
            vec![("authorization", bearer.as_str())],
            StatusCode::OK,
        ),
        (
            "valid key, rate limited, no headers",
            &limited_quiet,
            query(&key),
            vec![],
            StatusCode::OK,
        ),
        (
            "valid key, rate limited, draft headers",
            &limited_draft,
            query(&key),
            vec![],
            StatusCode::OK,
        ),
        (
            "unknown key",
            &keys,
            query(&unknown),
            vec![],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "bad checksum",
            &keys,
            query(&malformed),
            vec![],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "no credential",
            &keys,
            "/v1/current.json?q=London".to_owned(),
            vec![],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "two credentials",
            &keys,
            query(&key),
            vec![("x-api-key", key.as_str())],
            StatusCode::BAD_REQUEST,
        ),
    ];
    let mut report = format!(
        "bare router: {bare_count} allocations\nnoop layer: {baseline} allocations\n\
         two noop layers: {baseline2} allocations\n"
    );
    let mut added = Vec::new();
    for (what, app, uri, headers, expected) in &cases {
        let (n, status) = count(&rt, app, || get_with(uri, headers));
        assert_eq!(status, *expected, "{what}");
        let base = if what.contains("rate limited") {
            baseline2
        } else {
            baseline
        };
        report.push_str(&format!("{what}: {n} (+{})\n", n.saturating_sub(base)));
        added.push((*what, n.saturating_sub(base)));
    }
    println!("{report}");
    let added_by = |what: &str| added.iter().find(|(w, _)| *w == what).map(|(_, n)| *n);
    // What keygate adds to the router with a layer, as measured when this test was written:
    // bounds that fail on a regression. An admitted request with the default rendering: two,
    // what putting the `Principal` into the extensions costs: the value's box, and the map's
    // larger table (axum's router put three extensions in before, filling the first table);
    // the key record's `Arc` is shared, nothing copied. The layers answer in the inner
    // service's own body type, so axum boxes no response body of theirs. With a realm (or a
    // responder, or metadata) set, one more: the settings the layers behind read. A
    // `RateLimitLayer` behind adds nothing with no headers, and with draft headers the
    // `RateLimit` value (the `RateLimit-Policy` one is built once and shared). A refusal
    // allocates nothing beyond its response: its body is serialised once and its challenge
    // built once per realm, so it allocates no more than the router's own 200.
    for (what, at_most) in [
        ("valid key", 2),
        ("valid key, realm set", 3),
        ("cached JWT", 2),
        ("valid key, rate limited, no headers", 2),
        ("valid key, rate limited, draft headers", 3),
        ("unknown key", 0),
        ("bad checksum", 0),
        ("no credential", 0),
        ("two credentials", 0),
    ] {
        let n = added_by(what).expect("a measured case");
        assert!(
            n <= at_most,
            "{what}: +{n} allocations, at most {at_most}\n{report}"
        );
    }
}
