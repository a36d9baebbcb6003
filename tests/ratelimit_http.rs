//! `RateLimitLayer` through a real axum `Router`, behind `AuthLayer` + `MemoryStore` (composed
//! with `tower::ServiceBuilder`, auth outermost), driven with `tower::ServiceExt::oneshot`:
//! headers in every style, the 429 and its gRPC form, which quota applies (key, tier, default),
//! cost, `key_by`, the missing-layer 500, anonymous callers, failing limiters, refill on a manual
//! clock, usage counters, and what the limiter is keyed by.
//!
//! Every limiter here runs on a `ManualClock`, so `t=` values and `Retry-After` are exact.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use common::{
    Hits, Reply, assert_grpc, assert_typed_problem, get_req, get_with, grpc_at, limiter, post_with,
    send, store_with, with_bearer, with_key, with_key_at,
};
use http::{Method, Request, StatusCode};
use keygate::key::{ApiKey, KeyRecord};
use keygate::ratelimit::{
    ANONYMOUS_KEY, Check, HeaderStyle, MemoryLimiter, RateLimitError, RateLimitLayer, RateLimiter,
    Usage, UsageTracker,
};
use keygate::store::MemoryStore;
use keygate::{Principal, PrincipalKind, Quota, auth::AuthLayer};
use tower::ServiceBuilder;
use tower::util::MapRequestLayer;

const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";
const QUOTA_TITLE: &str = "Request cannot be satisfied as assigned quota has been exceeded";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Whether the reply carries any rate-limit header, draft or legacy.
fn has_any_ratelimit_header(reply: &Reply) -> bool {
    [
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ]
    .iter()
    .any(|h| reply.headers.contains_key(*h))
}

/// `GET /me` (the caller's id, or "anonymous"; a 500 without `AuthLayer`), `GET /open` (no
/// extractor), `POST /write`, `GET /fail` (a handler's 500),
/// `POST /pkg.Svc/Call` (a gRPC-looking route). Every handler counts its calls.
fn routes(hits: &Hits) -> Router {
    let me = hits.clone();
    Router::new()
        .route("/open", get(hits.counted("open")))
        .route(
            "/me",
            get(move |p: Option<Principal>| async move {
                me.0.fetch_add(1, Ordering::SeqCst);
                p.map_or_else(|| "anonymous".to_owned(), |p| p.id().to_owned())
            }),
        )
        .route("/write", post(hits.counted("written")))
        .route(
            "/fail",
            get(hits.counted((StatusCode::INTERNAL_SERVER_ERROR, "handler failed"))),
        )
        .route(
            "/pkg.Svc/Call",
            post(hits.counted((
                [("content-type", "application/grpc"), ("grpc-status", "0")],
                "",
            ))),
        )
}

/// `routes` behind `AuthLayer(store)` then `limit`, composed with `ServiceBuilder`.
fn app(store: MemoryStore, limit: RateLimitLayer, hits: &Hits) -> Router {
    routes(hits).layer(
        ServiceBuilder::new()
            .layer(AuthLayer::new(store))
            .layer(limit),
    )
}

/// [`app`] over a store of one key, `key_1` of `acme`: the app, that key, and the hits.
fn app_with_key(limit: RateLimitLayer) -> (Router, ApiKey, Hits) {
    let (store, mut keys) = store_with([KeyRecord::new("key_1", "acme")]);
    let hits = Hits::default();
    (app(store, limit, &hits), keys.remove(0), hits)
}

/// Checks a 429: problem+json of type quota-exceeded whose detail names the policy that
/// denied (the first with nothing remaining in the `RateLimit` header, else "default"),
/// `Retry-After`, `Cache-Control: no-store`.
#[track_caller]
fn assert_429(reply: &Reply, retry_after: u64) {
    let policy = reply
        .header("ratelimit")
        .and_then(|v| {
            v.split(", ")
                .find(|entry| entry.contains(";r=0;"))
                .and_then(|entry| entry.split('"').nth(1))
        })
        .unwrap_or("default")
        .to_owned();
    assert_typed_problem(
        reply,
        429,
        None,
        QUOTA_EXCEEDED,
        QUOTA_TITLE,
        &format!("Too many requests: the \"{policy}\" limit is spent; retry in {retry_after} s."),
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let ra: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(ra >= 1);
    assert_eq!(ra, retry_after, "Retry-After");
}

// ---------------------------------------------------------------------------------------------
// Headers

#[tokio::test]
async fn draft_headers_on_every_admitted_response_count_down() {
    let (limiter, _clock) = limiter();
    let (app, key, hits) = app_with_key(RateLimitLayer::new(limiter, Quota::per_minute(5)));
    // One request every 12 s of the quota; the clock does not move, so r counts down by one and
    // t (time until the bucket is full again) grows by 12 s per request.
    for i in 0..5u32 {
        let reply = send(app.clone(), with_key(key.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(reply.text(), "key_1");
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"default\";q=5;w=60")
        );
        let expected = format!("\"default\";r={};t={}", 4 - i, 12 * (i + 1));
        assert_eq!(reply.header("ratelimit"), Some(expected.as_str()));
        assert!(reply.header("x-ratelimit-limit").is_none(), "draft only");
        assert!(reply.header("retry-after").is_none());
    }
    assert_eq!(hits.get(), 5);

    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_429(&reply, 12);
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"default\";q=5;w=60")
    );
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=60"));
    assert_eq!(hits.get(), 5, "a limited request never reaches the handler");
    reply.assert_no_leak(key.expose_secret());
}

#[tokio::test]
async fn headers_also_on_responses_the_handler_fails() {
    let (limiter, _clock) = limiter();
    let (app, key, _hits) = app_with_key(RateLimitLayer::new(limiter, Quota::per_minute(5)));
    let reply = send(app.clone(), with_key_at("/fail", key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.text(), "handler failed");
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=4;t=12"));
    // A route that does not exist is still limited (the layer covers the fallback).
    let reply = send(app.clone(), with_key_at("/nowhere", key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=3;t=24"));
}

#[tokio::test]
async fn legacy_both_and_no_headers() {
    let cases = [
        (HeaderStyle::Legacy, false, true),
        (HeaderStyle::Both, true, true),
        (HeaderStyle::None, false, false),
        (HeaderStyle::Draft, true, false),
    ];
    for (style, draft, legacy) in cases {
        let (limiter, _clock) = limiter();
        let layer = RateLimitLayer::new(limiter, Quota::per_minute(2)).headers(style);
        let (app, key, hits) = app_with_key(layer);

        for (i, (remaining, reset)) in [(1, 30), (0, 60)].into_iter().enumerate() {
            let reply = send(app.clone(), with_key(key.expose_secret())).await;
            assert_eq!(reply.status, StatusCode::OK, "{style:?} request {i}");
            let r = format!("\"default\";r={remaining};t={reset}");
            assert_eq!(
                reply.header("ratelimit"),
                draft.then_some(r.as_str()),
                "{style:?}"
            );
            assert_eq!(
                reply.header("ratelimit-policy"),
                draft.then_some("\"default\";q=2;w=60"),
                "{style:?}"
            );
            let (rem, res) = (remaining.to_string(), reset.to_string());
            assert_eq!(
                reply.header("x-ratelimit-limit"),
                legacy.then_some("2"),
                "{style:?}"
            );
            assert_eq!(
                reply.header("x-ratelimit-remaining"),
                legacy.then_some(rem.as_str()),
                "{style:?}"
            );
            assert_eq!(
                reply.header("x-ratelimit-reset"),
                legacy.then_some(res.as_str()),
                "{style:?}"
            );
            if !draft && !legacy {
                // Nor any other header of the limiter's, beyond the five names above.
                assert!(
                    reply
                        .headers
                        .keys()
                        .all(|name| !name.as_str().contains("ratelimit")),
                    "{style:?}: {:?}",
                    reply.headers
                );
            }
        }

        let reply = send(app.clone(), with_key(key.expose_secret())).await;
        assert_429(&reply, 30);
        assert_eq!(
            reply.header("ratelimit"),
            draft.then_some("\"default\";r=0;t=60"),
            "{style:?}"
        );
        assert_eq!(
            reply.header("x-ratelimit-remaining"),
            legacy.then_some("0"),
            "{style:?}"
        );
        assert_eq!(
            reply.header("x-ratelimit-reset"),
            legacy.then_some("60"),
            "{style:?}"
        );
        assert_eq!(hits.get(), 2);
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC

#[tokio::test]
async fn grpc_request_limited_gets_resource_exhausted() {
    let (limiter, _clock) = limiter();
    let (app, key, hits) = app_with_key(RateLimitLayer::new(limiter, Quota::per_minute(1)));
    let grpc = || {
        post_with(
            "/pkg.Svc/Call",
            &[
                ("content-type", "application/grpc+proto"),
                ("x-api-key", key.expose_secret()),
            ],
        )
    };
    let reply = send(app.clone(), grpc()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("grpc-status"), Some("0"));
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=60"));

    let reply = send(app.clone(), grpc()).await;
    // 8: RESOURCE_EXHAUSTED.
    assert_grpc(
        &reply,
        "8",
        "Too many requests: the \"default\" limit is spent; retry in 60 s.",
    );
    assert_eq!(reply.header("retry-after"), Some("60"));
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=60"));
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"default\";q=1;w=60")
    );
    assert_eq!(hits.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// Which quota applies

#[tokio::test]
async fn key_record_quota_overrides_the_default() {
    let (store, keys) = store_with([
        KeyRecord::new("small", "acme").with_quota(Quota::per_minute(2)),
        KeyRecord::new("plain", "acme"),
    ]);
    let (limiter, _clock) = limiter();
    let hits = Hits::default();
    let layer =
        RateLimitLayer::new(limiter, Quota::per_minute(100)).tier("gold", Quota::per_minute(1000));
    let app = app(store, layer, &hits);

    let reply = send(app.clone(), with_key(keys[0].expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("ratelimit-policy"), Some("\"key\";q=2;w=60"));
    assert_eq!(reply.header("ratelimit"), Some("\"key\";r=1;t=30"));
    let reply = send(app.clone(), with_key(keys[0].expose_secret())).await;
    assert_eq!(reply.header("ratelimit"), Some("\"key\";r=0;t=60"));
    let reply = send(app.clone(), with_key(keys[0].expose_secret())).await;
    assert_429(&reply, 30);
    assert_eq!(reply.header("ratelimit-policy"), Some("\"key\";q=2;w=60"));

    // The other key, without its own quota, gets the default.
    let reply = send(app.clone(), with_key(keys[1].expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"default\";q=100;w=60")
    );
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=99;t=1"));
}

/// `routes` behind a layer that makes the caller `principal`, then `limit`.
fn app_as(principal: Principal, limit: RateLimitLayer, hits: &Hits) -> Router {
    routes(hits).layer(
        ServiceBuilder::new()
            .layer(MapRequestLayer::new(move |mut req: Request<Body>| {
                req.extensions_mut().insert(principal.clone());
                req
            }))
            .layer(limit),
    )
}

#[tokio::test]
async fn tiers_map_a_principal_to_a_quota() {
    let (limiter, _clock) = limiter();
    let layer = RateLimitLayer::new(limiter, Quota::per_minute(1))
        .tier("gold", Quota::per_minute(3))
        .tier("silver", Quota::per_minute(2));
    let hits = Hits::default();

    // gold: 3 requests under policy "gold".
    let gold = app_as(
        Principal::new("user-gold", PrincipalKind::Jwt).with_tier("gold"),
        layer.clone(),
        &hits,
    );
    for r in [2, 1, 0] {
        let reply = send(gold.clone(), get_req("/me")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "user-gold");
        assert_eq!(reply.header("ratelimit-policy"), Some("\"gold\";q=3;w=60"));
        let expected = format!("\"gold\";r={r};t={}", 20 * (3 - r));
        assert_eq!(reply.header("ratelimit"), Some(expected.as_str()));
    }
    let reply = send(gold.clone(), get_req("/me")).await;
    assert_429(&reply, 20);
    assert_eq!(reply.header("ratelimit-policy"), Some("\"gold\";q=3;w=60"));

    // silver: 2.
    let silver = app_as(
        Principal::new("user-silver", PrincipalKind::Jwt).with_tier("silver"),
        layer.clone(),
        &hits,
    );
    let statuses = [
        send(silver.clone(), get_req("/me")).await.status,
        send(silver.clone(), get_req("/me")).await.status,
        send(silver.clone(), get_req("/me")).await.status,
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );

    // An unknown tier, and no tier, get the default.
    for p in [
        Principal::new("user-platinum", PrincipalKind::Jwt).with_tier("platinum"),
        Principal::new("user-none", PrincipalKind::Jwt),
    ] {
        let app = app_as(p, layer.clone(), &hits);
        let reply = send(app.clone(), get_req("/me")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"default\";q=1;w=60")
        );
        assert_429(&send(app.clone(), get_req("/me")).await, 60);
    }

    // A principal's own quota beats its tier.
    let own = app_as(
        Principal::new("user-own", PrincipalKind::Jwt)
            .with_tier("gold")
            .with_quota(Quota::per_minute(4)),
        layer.clone(),
        &hits,
    );
    let reply = send(own.clone(), get_req("/me")).await;
    assert_eq!(reply.header("ratelimit-policy"), Some("\"key\";q=4;w=60"));
    assert_eq!(reply.header("ratelimit"), Some("\"key\";r=3;t=15"));
}

// ---------------------------------------------------------------------------------------------
// Cost and keys

#[tokio::test]
async fn cost_closure_makes_posts_drain_faster() {
    let (limiter, _clock) = limiter();
    let layer = RateLimitLayer::new(limiter, Quota::per_minute(10))
        .cost(|head| if head.method == Method::POST { 5 } else { 1 });
    let (app, key, hits) = app_with_key(layer);
    let post_key = || post_with("/write", &[("x-api-key", key.expose_secret())]);

    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=9;t=6"));
    let reply = send(app.clone(), post_key()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=4;t=36"));
    // 4 units left: another POST (5) does not fit, and must wait one interval (6 s).
    let reply = send(app.clone(), post_key()).await;
    assert_429(&reply, 6);
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=4;t=36"));
    // ...while GETs still do, four times.
    for r in [3, 2, 1, 0] {
        let reply = send(app.clone(), with_key(key.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK);
        let expected = format!("\"default\";r={r};t={}", 6 * (10 - r));
        assert_eq!(reply.header("ratelimit"), Some(expected.as_str()));
    }
    assert_429(&send(app.clone(), with_key(key.expose_secret())).await, 6);
    assert_eq!(hits.get(), 6);
}

#[tokio::test]
async fn key_by_works_without_auth_layer() {
    let (limiter, _clock) = limiter();
    let hits = Hits::default();
    let layer = RateLimitLayer::new(limiter.clone(), Quota::per_minute(2)).key_by(|head| {
        head.headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(|t| format!("tenant:{t}"))
    });
    let app = routes(&hits).layer(ServiceBuilder::new().layer(layer));
    // `/open`: no Principal extractor, which would answer 500 without an AuthLayer.
    let tenant = |t: &str| get_with("/open", &[("x-tenant", t)]);

    assert_eq!(send(app.clone(), tenant("a")).await.status, StatusCode::OK);
    let reply = send(app.clone(), tenant("a")).await;
    assert_eq!(reply.text(), "open");
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=60"));
    assert_429(&send(app.clone(), tenant("a")).await, 30);
    // Another tenant has its own bucket.
    let reply = send(app.clone(), tenant("b")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=1;t=30"));
    let q = Quota::per_minute(2);
    assert!(!limiter.peek("tenant:a", &q, 1).allowed);
    assert!(limiter.peek("tenant:b", &q, 1).allowed);
    assert_eq!(limiter.peek("tenant:b", &q, 1).remaining, 0);
    // No key: not limited, no headers.
    for _ in 0..5 {
        let reply = send(app.clone(), get_req("/open")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(!has_any_ratelimit_header(&reply));
    }
    assert_eq!(limiter.len(), 2);
    assert_eq!(hits.get(), 3 + 5);
}

#[tokio::test]
async fn key_by_wins_over_the_principal() {
    // Behind AuthLayer, a key_by still decides the bucket: two keys of one tenant share it.
    let (store, keys) = store_with([
        KeyRecord::new("key_1", "acme"),
        KeyRecord::new("key_2", "acme"),
    ]);
    let (limiter, _clock) = limiter();
    let hits = Hits::default();
    let layer = RateLimitLayer::new(limiter.clone(), Quota::per_minute(2))
        .key_by(|_| Some("shared".to_owned()));
    let app = app(store, layer, &hits);
    assert_eq!(
        send(app.clone(), with_key(keys[0].expose_secret()))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(app.clone(), with_key(keys[1].expose_secret()))
            .await
            .status,
        StatusCode::OK
    );
    assert_429(
        &send(app.clone(), with_key(keys[0].expose_secret())).await,
        30,
    );
    assert_eq!(limiter.len(), 1);
}

#[tokio::test]
async fn without_auth_layer_or_key_by_answers_500() {
    let (limiter, _clock) = limiter();
    let hits = Hits::default();
    let app = routes(&hits).layer(
        ServiceBuilder::new().layer(RateLimitLayer::new(limiter.clone(), Quota::per_minute(2))),
    );
    // `/open` has no extractor: the 500 is the rate-limit layer's own.
    for _ in 0..3 {
        let reply = send(app.clone(), get_req("/open")).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        let json = reply.json();
        assert_eq!(json["status"], 500);
        assert!(
            json["detail"].as_str().unwrap().contains("AuthLayer"),
            "{json}"
        );
        assert!(!has_any_ratelimit_header(&reply));
    }
    assert_eq!(hits.get(), 0, "the handler is never reached");
    assert!(limiter.is_empty(), "nothing was limited under any key");
}

#[tokio::test]
async fn anonymous_callers_share_one_bucket() {
    let (store, keys) = store_with([KeyRecord::new("key_1", "acme")]);
    let (limiter, _clock) = limiter();
    let hits = Hits::default();
    let q = Quota::per_minute(2);
    let app = routes(&hits).layer(
        ServiceBuilder::new()
            .layer(AuthLayer::new(store).optional())
            .layer(RateLimitLayer::new(limiter.clone(), q)),
    );
    let anon = || get_req("/me");
    let reply = send(app.clone(), anon()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "anonymous");
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=1;t=30"));
    // A different "client" (another address, say) is still anonymous: same bucket.
    let reply = send(
        app.clone(),
        get_with("/me", &[("x-forwarded-for", "10.0.0.9")]),
    )
    .await;
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=60"));
    assert_429(&send(app.clone(), anon()).await, 30);
    assert_eq!(limiter.peek(ANONYMOUS_KEY, &q, 1).remaining, 0);
    assert!(!limiter.peek(ANONYMOUS_KEY, &q, 1).allowed);
    // An authenticated caller has its own bucket.
    let reply = send(app.clone(), with_key(keys[0].expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "key_1");
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=1;t=30"));
    assert_eq!(limiter.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Failing and waiting limiters

/// A limiter whose backend always fails, at once or after making the layer wait.
struct FailingLimiter {
    pending: bool,
    timeout: bool,
    calls: Arc<AtomicUsize>,
}

impl RateLimiter for FailingLimiter {
    fn check(&self, _: &str, _: &Quota, _: u32) -> Check {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let err = move || {
            if self.timeout {
                RateLimitError::Timeout
            } else {
                RateLimitError::Backend("connection refused".into())
            }
        };
        let e = err();
        if self.pending {
            Check::pending(async move {
                tokio::task::yield_now().await;
                Err(e)
            })
        } else {
            Check::ready(Err(e))
        }
    }
}

#[tokio::test]
async fn failing_limiter_gives_503() {
    for (pending, timeout) in [(false, false), (true, false), (false, true), (true, true)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let limiter = FailingLimiter {
            pending,
            timeout,
            calls: calls.clone(),
        };
        let (app, key, hits) = app_with_key(RateLimitLayer::new(limiter, Quota::per_minute(100)));
        let what = format!("pending={pending} timeout={timeout}");
        let reply = send(app.clone(), with_key(key.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json"),
            "{what}"
        );
        assert_eq!(reply.json()["status"], 503, "{what}");
        assert!(!has_any_ratelimit_header(&reply), "{what}");
        assert!(reply.header("retry-after").is_none(), "{what}");

        let grpc = grpc_at("/pkg.Svc/Call", &[("x-api-key", key.expose_secret())]);
        let reply = send(app.clone(), grpc).await;
        assert_eq!(reply.status, StatusCode::OK, "{what}");
        assert_eq!(
            reply.header("grpc-status"),
            Some("14"),
            "UNAVAILABLE {what}"
        );
        assert_eq!(hits.get(), 0, "{what}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{what}");
    }
}

/// A `MemoryLimiter` that answers only after yielding, as a remote backend would, and records
/// every key it is asked about.
#[derive(Clone)]
struct SlowLimiter {
    inner: MemoryLimiter,
    keys: Arc<Mutex<Vec<String>>>,
}

impl RateLimiter for SlowLimiter {
    fn check(&self, key: &str, quota: &Quota, cost: u32) -> Check {
        self.keys.lock().unwrap().push(key.to_owned());
        let answer = self
            .inner
            .check(key, quota, cost)
            .take_ready()
            .expect("memory is ready");
        Check::pending(async move {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            answer
        })
    }
}

#[tokio::test]
async fn waiting_limiter_gives_the_same_answers() {
    let (inner, _clock) = limiter();
    let limiter = SlowLimiter {
        inner,
        keys: Arc::default(),
    };
    let layer =
        RateLimitLayer::new(limiter.clone(), Quota::per_minute(2)).headers(HeaderStyle::Both);
    let (app, key, hits) = app_with_key(layer);

    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "key_1");
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=1;t=30"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(
        send(app.clone(), with_key(key.expose_secret()))
            .await
            .status,
        StatusCode::OK
    );
    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_429(&reply, 30);
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=60"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(hits.get(), 2);
    assert_eq!(*limiter.keys.lock().unwrap(), ["key_1", "key_1", "key_1"]);
}

// ---------------------------------------------------------------------------------------------
// Time, usage, keys

#[tokio::test]
async fn refill_over_time_on_a_manual_clock() {
    let (limiter, clock) = limiter();
    // 6 per minute: one every 10 s.
    let (app, key, hits) = app_with_key(RateLimitLayer::new(limiter, Quota::per_minute(6)));
    let me = || with_key(key.expose_secret());
    for _ in 0..6 {
        assert_eq!(send(app.clone(), me()).await.status, StatusCode::OK);
    }
    assert_429(&send(app.clone(), me()).await, 10);

    clock.advance(Duration::from_millis(9_999));
    let reply = send(app.clone(), me()).await;
    assert_429(&reply, 1); // 1 ms to go, rounded up to a whole second
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=51"));

    clock.advance(Duration::from_millis(1));
    let reply = send(app.clone(), me()).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "one interval refills one request"
    );
    assert_eq!(reply.header("ratelimit"), Some("\"default\";r=0;t=60"));
    assert_429(&send(app.clone(), me()).await, 10);

    clock.advance(Duration::from_secs(25));
    for r in [1, 0] {
        let reply = send(app.clone(), me()).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply
                .header("ratelimit")
                .unwrap()
                .starts_with(&format!("\"default\";r={r};")),
            "{:?}",
            reply.header("ratelimit")
        );
    }
    assert_eq!(
        send(app.clone(), me()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Idle for much longer than the window: the full burst, not more.
    clock.advance(Duration::from_secs(3600));
    let admitted = {
        let mut n = 0;
        for _ in 0..10 {
            if send(app.clone(), me()).await.status == StatusCode::OK {
                n += 1;
            }
        }
        n
    };
    assert_eq!(admitted, 6);
    assert_eq!(hits.get(), 6 + 1 + 2 + 6);
}

#[tokio::test]
async fn usage_counts_allowed_and_limited_per_principal() {
    let (store, keys) = store_with([
        KeyRecord::new("key_1", "acme").with_quota(Quota::per_minute(3)),
        KeyRecord::new("key_2", "globex"),
    ]);
    let (limiter, _clock) = limiter();
    let usage = UsageTracker::new(100);
    let hits = Hits::default();
    let layer = RateLimitLayer::new(limiter, Quota::per_minute(100)).track_usage(usage.clone());
    let app = app(store, layer, &hits);
    for _ in 0..5 {
        send(app.clone(), with_key(keys[0].expose_secret())).await;
    }
    send(app.clone(), with_key(keys[1].expose_secret())).await;
    // Requests turned away before the limiter (no credential) are not counted.
    assert_eq!(
        send(app.clone(), get_req("/me")).await.status,
        StatusCode::UNAUTHORIZED
    );

    assert_eq!(
        usage.get("key_1"),
        Some(Usage {
            allowed: 3,
            limited: 2
        })
    );
    assert_eq!(
        usage.get("key_2"),
        Some(Usage {
            allowed: 1,
            limited: 0
        })
    );
    for key in &keys {
        assert_eq!(usage.get(key.expose_secret()), None);
    }
    let snapshot = usage.snapshot();
    assert_eq!(
        snapshot,
        [
            (
                "key_1".to_owned(),
                Usage {
                    allowed: 3,
                    limited: 2
                }
            ),
            (
                "key_2".to_owned(),
                Usage {
                    allowed: 1,
                    limited: 0
                }
            ),
        ]
    );
    assert_eq!(usage.overflow(), Usage::default());
}

#[tokio::test]
async fn limiter_key_is_the_principal_id_never_the_secret() {
    let (inner, _clock) = limiter();
    let limiter = SlowLimiter {
        inner: inner.clone(),
        keys: Arc::default(),
    };
    let q = Quota::per_minute(3);
    let (store, keys) = store_with([KeyRecord::new("key_1", "acme")]);
    let key = &keys[0];
    let app = app(
        store.clone(),
        RateLimitLayer::new(limiter.clone(), q),
        &Hits::default(),
    );
    // The same key from three sources: one bucket, under the record's id.
    let secret = key.expose_secret();
    let reqs = [
        with_key(secret),
        with_bearer("/me", secret),
        get_req(&format!("/me?key={secret}")),
    ];
    for r in reqs {
        let reply = send(app.clone(), r).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.assert_no_leak(secret);
    }
    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    reply.assert_no_leak(secret);

    let seen = limiter.keys.lock().unwrap().clone();
    assert_eq!(seen, ["key_1"; 4]);
    // Another secret of the same record (the key rotated) finds the bucket spent: the bucket is
    // the record's, not the secret's.
    let rotated = store.rotate("key_1", Duration::ZERO).unwrap();
    let reply = send(app.clone(), with_key(rotated.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(inner.len(), 1);
    assert!(!inner.peek("key_1", &q, 1).allowed);
    // A key never seen would be admitted with 2 left; so would the secret and its digest.
    let fresh = inner.peek("never-seen", &q, 1);
    assert_eq!((fresh.allowed, fresh.remaining), (true, 2));
    assert_eq!(
        inner.peek(secret, &q, 1),
        fresh,
        "no bucket under the secret"
    );
    assert_eq!(inner.peek(&key.digest().to_hex(), &q, 1), fresh);
}
