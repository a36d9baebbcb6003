//! What `AuthLayer` adds to a request, in-process, against the floor of an API-key check.
//!
//! `cargo bench -p keygate-benches --bench overhead`
//!
//! Every request goes through an axum `Router` (one route, `GET /v1/current.json`, answering a
//! small static string, finished with `with_state(())` as `axum::serve` does) with
//! `tower::ServiceExt::oneshot` on a clone of it, inside a tokio current-thread runtime. Requests
//! are built before the clock starts (`iter_batched`); the figures are the service call and the
//! drop of its response.
//!
//! Groups:
//! - `baseline/bare_router`: the router without any layer, request
//!   `GET /v1/current.json?key=KEY&q=London`. `baseline/noop_layer`: the router with
//!   `.layer(tower::layer::util::Identity::new())`, i.e. what axum charges for any `Router::layer`.
//! - `auth/*`: the router with `.layer(AuthLayer::new(store))`, the store a `MemoryStore` holding
//!   10 000 issued keys:
//!   - `valid_key`: a valid key in the `key` query parameter;
//!   - `valid_key_header`: the same key in `x-api-key`;
//!   - `valid_key_with_format`: `valid_key` with `.key_format(format)` on the layer (the checksum
//!     is checked before the store is asked);
//!   - `unknown_key`: a well-formed key (good checksum) that the store does not hold: 401;
//!   - `malformed_key`: the store's prefix with a broken checksum, `.key_format(format)` on the
//!     layer: 401 without asking the store;
//!   - `missing_credential`: no credential: 401;
//!   - `two_credentials`: the valid key in the query and in `x-api-key`: 400.
//!
//!   A refusal whose body and challenge do not vary sends a body serialised once and a
//!   challenge built once per realm, so the refusals cost no more than `valid_key`.
//! - `floor/sha256_plus_dashmap`: the floor of an API-key check (DESIGN.md, "Performance
//!   model"): one SHA-256 of the key (`KeyDigest::of`) and one lookup in a
//!   `DashMap<KeyDigest, Arc<KeyRecord>>` of 10 000 entries (std's default hasher), taking the
//!   record out of the map (an `Arc` clone) as a store must.
//!
//! - `ratelimit/*`: the router with `.layer(RateLimitLayer::new(MemoryLimiter::new(), 10⁹/s))`
//!   then `.layer(AuthLayer::new(store))` (the authentication outermost), the valid key in the
//!   query: `draft_headers` with the default `RateLimit-Policy` and `RateLimit` headers,
//!   `no_headers` with `HeaderStyle::None`; against `auth/valid_key`.
//! - `metrics/*`: what recording keygate's metrics costs a request when the application
//!   installed no recorder (the package builds keygate with its `metrics` feature, so every
//!   `auth/*` figure includes it too): `record_admitted_request` records what one request
//!   admitted through an `AuthLayer` over a `CachedStore` hit and a `RateLimitLayer` records
//!   (a cache hit, an authenticated API key, an allowed decision), against `empty`, the same
//!   loop recording nothing. The goal: at most 20 ns per request.
//!
//! - `compare/*`: the crates users pick instead, through the same router, every request
//!   `GET /v1/current.json?q=London` with its credential in a header:
//!   - `bare_router_header`: the router without any layer, `x-api-key: KEY`: the baseline of
//!     the cases below (the request's header is dropped inside the measurement too);
//!   - `tower_governor`: `tower_governor`'s `GovernorLayer`, keyed by the `x-api-key` header
//!     (a `KeyExtractor` owning the header's value, as an application writes one), a quota of
//!     one cell per nanosecond and a burst of 10⁹ (never refuses), no headers (its default);
//!     a request without the header gets its 500;
//!   - `tower_governor_headers`: the same with `use_headers()` (`x-ratelimit-limit` and
//!     `x-ratelimit-remaining` on every response);
//!   - `keygate_auth`: `AuthLayer` over the store, `x-api-key: KEY` (as `auth/valid_key_header`,
//!     measured next to the others);
//!   - `keygate_auth_ratelimit`: a `RateLimitLayer` (`MemoryLimiter`, 10⁹/s, keyed by the
//!     principal, draft headers) behind the `AuthLayer`, as `ratelimit/draft_headers` but with
//!     the key in `x-api-key`; `keygate_auth_ratelimit_no_headers` with `HeaderStyle::None`;
//!   - `keygate_auth_ratelimit_stacked`: the `AuthLayer` and the `RateLimitLayer` (draft
//!     headers) in one `tower::ServiceBuilder` given to one `Router::layer`, as the deployment
//!     guide stacks them; `keygate_auth_governor_stacked`: the `AuthLayer` and
//!     `tower_governor` stacked the same way (the differences against `keygate_auth` hold no
//!     `Router::layer`);
//!   - `keygate_jwt_cached` (paired lines only): `AuthLayer::jwt_only` with an HS256 token the
//!     verifier has seen before, in `Authorization: Bearer`, against `keygate_auth`;
//!   - `tower_http_bearer`: tower-http's `ValidateRequestHeaderLayer::bearer("token")`,
//!     `Authorization: Bearer token`: one header compared with a constant, the floor of any
//!     credential check through a `Router::layer`.
//!
//!   Every case is one `Router::layer` more than the bare router but the rate-limited ones,
//!   which are one more than `keygate_auth`. The figures to compare:
//!   - what keygate's rate limit adds, `keygate_auth_ratelimit − keygate_auth`, against all
//!     `tower_governor` adds, `tower_governor − bare_router_header`: each difference holds one
//!     `Router::layer`. The goal: the first at most the second. Like for like:
//!     `keygate_auth_ratelimit_no_headers − keygate_auth` against the same, and
//!     `keygate_auth_ratelimit − keygate_auth` against `tower_governor_headers −
//!     bare_router_header` (headers on both sides);
//!   - an API-key check, `keygate_auth − bare_router_header`, against the bearer compare,
//!     `tower_http_bearer − bare_router_header` (what any layer that looks at a header costs).
//!
//!   Subtract `baseline/noop_layer − baseline/bare_router` from a difference to leave out what
//!   axum charges for the `Router::layer` itself.
//!
//!   Groups measured one after the other see different loads on a shared machine, so before
//!   its group `compare` also prints `paired/compare` lines: the cases above and the two
//!   `baseline/*` timed in turn, in rounds of 200 requests, 300 rounds; the best round of each
//!   (the least disturbed one), the differences above from those, and whether the goal is met.
//!   These lines are the figures to read the comparison from.
//!
//! The goal: `auth/valid_key − baseline/bare_router` ≤ 1.5 × the floor.
//!
//! Before measuring, every case is checked once to take the path it is named after (status, and
//! whether the store was asked; for `compare/*`, 200 with the credential, the layer's refusal
//! without it, and the rate-limit headers where a case writes them).
//!
//! Layout: `support` builds routers, requests and stores; each group is a function taking the
//! shared [`Fixture`], called from `overhead`. Benches of other layers (rate limiter, JWT) add
//! their group functions there.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use dashmap::DashMap;
use http::StatusCode;
use keygate::auth::AuthLayer;
use keygate::key::{ApiKey, FormatError, KeyDigest, KeyFormat, KeyRecord};
use keygate::store::MemoryStore;
use support::{
    Counting, KEYS, bare_request, bench_service, finish, group, header_request, query_request,
    runtime, two_credentials_request,
};
use tokio::runtime::Runtime;
use tower::Layer as _;
use tower::layer::util::Identity;
/// Routers, requests, stores and groups shared by every benchmark in this file.
mod support {
    use std::fmt::Debug;
    use std::future::Future;
    use std::hint::black_box;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use criterion::measurement::WallTime;
    use criterion::{BatchSize, BenchmarkGroup, Criterion};
    use http::{Request, Response, StatusCode};
    use keygate::key::{ApiKey, KeyDigest, KeyFormat, KeyRecord};
    use keygate::store::{KeyStore, Lookup, MemoryStore};
    use tokio::runtime::Runtime;
    use tower::{Service, ServiceExt as _};

    /// Keys in every store: a realistic map size, not a one-entry map that lives in L1.
    pub const KEYS: usize = 10_000;
    /// The route every request goes to.
    pub const PATH: &str = "/v1/current.json";

    /// A current-thread tokio runtime, as the requests are driven on.
    pub fn runtime() -> Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    }

    /// A group with this file's short timings.
    pub fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
        let mut group = c.benchmark_group(name);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        group
    }

    /// Turns every route into its final service once, as `axum::serve` does
    /// (`Router::into_make_service` calls `with_state(())`). A router called without this
    /// rebuilds its handler's service, and re-applies every `Router::layer` to it, on each
    /// request: a cost of calling axum this way, not of any layer.
    pub fn finish(router: Router) -> Router {
        router.with_state(())
    }

    /// The router without any layer (not yet [`finish`]ed): one route answering a small static
    /// string.
    pub fn router() -> Router {
        Router::new().route(
            PATH,
            get(|| async { r#"{"location":{"name":"London"},"current":{"temp_c":11.0}}"# }),
        )
    }

    /// `GET /v1/current.json?key=KEY&q=London`.
    pub fn query_request(key: &str) -> Request<Body> {
        Request::get(format!("{PATH}?key={key}&q=London"))
            .body(Body::empty())
            .expect("a valid request")
    }

    /// `GET /v1/current.json?q=London`, no credential.
    pub fn bare_request() -> Request<Body> {
        Request::get(format!("{PATH}?q=London"))
            .body(Body::empty())
            .expect("a valid request")
    }

    /// `GET /v1/current.json?key=KEY&q=London` with `x-api-key: KEY` too: two credentials.
    pub fn two_credentials_request(key: &str) -> Request<Body> {
        Request::get(format!("{PATH}?key={key}&q=London"))
            .header("x-api-key", key)
            .body(Body::empty())
            .expect("a valid request")
    }

    /// `GET /v1/current.json?q=London` with `x-api-key: KEY`.
    pub fn header_request(key: &str) -> Request<Body> {
        Request::get(format!("{PATH}?q=London"))
            .header("x-api-key", key)
            .body(Body::empty())
            .expect("a valid request")
    }

    /// A store of `format` holding `KEYS` issued keys, and their plaintexts.
    pub fn store(format: &KeyFormat) -> (MemoryStore, Vec<ApiKey>) {
        let store = MemoryStore::with_format(format.clone());
        let keys = (0..KEYS)
            .map(|i| {
                let record =
                    KeyRecord::new(format!("key_{i:05}"), "acme").with_scopes(["weather:read"]);
                store.issue(record).expect("a fresh id")
            })
            .collect();
        assert_eq!(store.len(), KEYS);
        (store, keys)
    }

    /// Sends one request through a clone of `app` (a `Router`, or a layer's service around
    /// one), as a server does per request.
    pub fn send<S, B>(app: &S, req: Request<Body>) -> impl Future<Output = Response<B>> + use<S, B>
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone,
        S::Error: Debug,
    {
        let app = app.clone();
        async move { app.oneshot(req).await.expect("infallible") }
    }

    /// Measures `app` on requests made by `make`, which are built before the clock starts.
    pub fn bench_service<S, B>(
        group: &mut BenchmarkGroup<'_, WallTime>,
        rt: &Runtime,
        name: &str,
        app: &S,
        make: impl Fn() -> Request<Body>,
    ) where
        S: Service<Request<Body>, Response = Response<B>> + Clone,
        S::Error: Debug,
    {
        group.bench_function(name, |b| {
            b.to_async(rt).iter_batched(
                &make,
                |req| {
                    let response = send(app, req);
                    // Dropped inside the measurement, as a server drops it once written: kept
                    // for criterion to drop later, a batch of responses would grow the heap
                    // (page faults) inside the measurement.
                    async move { drop(black_box(response.await)) }
                },
                BatchSize::SmallInput,
            )
        });
    }

    /// Sends one request outside of any measurement and returns its status.
    pub fn status<S, B>(rt: &Runtime, app: &S, req: Request<Body>) -> StatusCode
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone,
        S::Error: Debug,
    {
        rt.block_on(send(app, req)).status()
    }

    /// A store that counts its lookups, to check which requests reach the store.
    #[derive(Clone)]
    pub struct Counting<S> {
        pub inner: S,
        pub lookups: Arc<AtomicUsize>,
    }

    impl<S> Counting<S> {
        pub fn new(inner: S) -> Self {
            Self {
                inner,
                lookups: Arc::default(),
            }
        }

        pub fn count(&self) -> usize {
            self.lookups.load(Ordering::Relaxed)
        }
    }

    impl<S: KeyStore> KeyStore for Counting<S> {
        fn lookup(&self, digest: &KeyDigest) -> Lookup {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            self.inner.lookup(digest)
        }
    }
}

/// A copy of `key` with one character of its random part changed: the checksum no longer
/// matches.
fn break_checksum(format: &KeyFormat, key: &ApiKey) -> String {
    let mut bytes = key.expose_secret().as_bytes().to_vec();
    let i = format.prefix().len();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let broken = String::from_utf8(bytes).expect("base62 is ASCII");
    assert_eq!(format.check(&broken), Err(FormatError::BadChecksum));
    broken
}

/// Checks once, outside any measurement, that each case takes the path it is named after.
fn check_paths(fx: &Fixture) {
    let (rt, format) = (&fx.rt, &fx.format);
    let counting = Counting::new(fx.store.clone());
    let plain = finish(support::router().layer(AuthLayer::new(counting.clone())));
    let formatted = finish(
        support::router().layer(AuthLayer::new(counting.clone()).key_format(format.clone())),
    );
    let expect = |app, req, status, lookups| {
        let before = counting.count();
        assert_eq!(support::status(rt, app, req), status);
        assert_eq!(counting.count() - before, lookups, "store lookups");
    };
    expect(&plain, query_request(&fx.valid), StatusCode::OK, 1);
    expect(&plain, header_request(&fx.valid), StatusCode::OK, 1);
    expect(&formatted, query_request(&fx.valid), StatusCode::OK, 1);
    expect(
        &plain,
        query_request(&fx.unknown),
        StatusCode::UNAUTHORIZED,
        1,
    );
    expect(
        &formatted,
        query_request(&fx.malformed),
        StatusCode::UNAUTHORIZED,
        0,
    );
    expect(&plain, bare_request(), StatusCode::UNAUTHORIZED, 0);
    expect(
        &plain,
        two_credentials_request(&fx.valid),
        StatusCode::BAD_REQUEST,
        0,
    );
    let outside = AuthLayer::new(counting.clone()).layer(finish(support::router()));
    let before = counting.count();
    let req = query_request(&fx.valid);
    assert_eq!(support::status(rt, &outside, req), StatusCode::OK);
    assert_eq!(counting.count() - before, 1, "store lookups");
    let bare = finish(support::router());
    let noop = finish(support::router().layer(Identity::new()));
    for app in [bare, noop] {
        let req = query_request(&fx.valid);
        assert_eq!(support::status(rt, &app, req), StatusCode::OK);
    }
}

/// What every group measures against: one runtime, one store, the keys presented.
struct Fixture {
    rt: Runtime,
    format: KeyFormat,
    store: MemoryStore,
    /// The plaintexts of the store's keys, in issue order.
    keys: Vec<ApiKey>,
    /// A key the store holds.
    valid: String,
    /// A well-formed key (good checksum) the store does not hold.
    unknown: String,
    /// The store's prefix with a broken checksum.
    malformed: String,
}

impl Fixture {
    fn new() -> Self {
        let format = KeyFormat::new("wk_live_").expect("a valid prefix");
        let (store, keys) = support::store(&format);
        // A key from the middle of the issue order; any of them would do.
        let valid = &keys[KEYS / 2];
        let fixture = Self {
            rt: runtime(),
            valid: valid.expose_secret().to_owned(),
            unknown: format.generate().expose_secret().to_owned(),
            malformed: break_checksum(&format, valid),
            format,
            store,
            keys,
        };
        check_paths(&fixture);
        fixture
    }
}

/// The router alone, and with a layer that does nothing.
fn baseline(c: &mut Criterion, fx: &Fixture) {
    let mut g = group(c, "baseline");
    let bare = finish(support::router());
    bench_service(&mut g, &fx.rt, "bare_router", &bare, || {
        query_request(&fx.valid)
    });
    // What axum charges for any `Router::layer`, before the layer does anything.
    let noop = finish(support::router().layer(Identity::new()));
    bench_service(&mut g, &fx.rt, "noop_layer", &noop, || {
        query_request(&fx.valid)
    });
    g.finish();
}

/// The router with `AuthLayer` over a `MemoryStore`.
fn auth(c: &mut Criterion, fx: &Fixture) {
    let mut g = group(c, "auth");
    let plain = finish(support::router().layer(AuthLayer::new(fx.store.clone())));
    let formatted = finish(
        support::router().layer(AuthLayer::new(fx.store.clone()).key_format(fx.format.clone())),
    );
    bench_service(&mut g, &fx.rt, "valid_key", &plain, || {
        query_request(&fx.valid)
    });
    bench_service(&mut g, &fx.rt, "valid_key_header", &plain, || {
        header_request(&fx.valid)
    });
    bench_service(&mut g, &fx.rt, "valid_key_with_format", &formatted, || {
        query_request(&fx.valid)
    });
    bench_service(&mut g, &fx.rt, "unknown_key", &plain, || {
        query_request(&fx.unknown)
    });
    bench_service(&mut g, &fx.rt, "malformed_key", &formatted, || {
        query_request(&fx.malformed)
    });
    bench_service(&mut g, &fx.rt, "missing_credential", &plain, bare_request);
    bench_service(&mut g, &fx.rt, "two_credentials", &plain, || {
        two_credentials_request(&fx.valid)
    });
    g.finish();
}

/// The floor of an API-key check: one SHA-256 and one concurrent-map lookup.
fn floor(c: &mut Criterion, fx: &Fixture) {
    let mut g = group(c, "floor");
    let map: DashMap<KeyDigest, Arc<KeyRecord>> = fx
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let record = KeyRecord::new(format!("key_{i:05}"), "acme");
            (k.digest(), Arc::new(record))
        })
        .collect();
    assert_eq!(map.len(), KEYS);
    let key = fx.valid.as_str();
    assert!(map.contains_key(&KeyDigest::of(key)));
    g.bench_function("sha256_plus_dashmap", |b| {
        b.iter(|| {
            let digest = KeyDigest::of(black_box(key));
            black_box(map.get(&digest).map(|r| Arc::clone(r.value())))
        })
    });
    g.finish();
}

/// JWT bearer tokens through the whole layer, first sight (cache off: every request verifies
/// the signature) and cached, against a raw `jsonwebtoken::decode` of the same token.
///
/// Figures to compare: `jwt/<alg>/first_sight − baseline/bare_router` against
/// `jwt/<alg>/raw_decode` (goal: within 1.1×), and `jwt/<alg>/cached − baseline/bare_router`
/// (goal: under 1 µs).
fn jwt(c: &mut Criterion, fx: &Fixture) {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    use keygate::jwt::{JwtKey, JwtVerifier};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct TokenClaims {
        sub: String,
        exp: u64,
        scope: String,
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/");
    let read = |name: &str| std::fs::read(format!("{FIXTURES}{name}")).expect("a fixture key");
    let secret = b"a benchmark secret of 32 bytes!!";
    let cases: Vec<(&str, Algorithm, EncodingKey, DecodingKey, JwtKey)> = vec![
        (
            "hs256",
            Algorithm::HS256,
            EncodingKey::from_secret(secret),
            DecodingKey::from_secret(secret),
            JwtKey::hmac(secret),
        ),
        (
            "rs256",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&read("test_only_rsa_private.pem")).unwrap(),
            DecodingKey::from_rsa_pem(&read("test_only_rsa_public.pem")).unwrap(),
            JwtKey::rsa_pem(&read("test_only_rsa_public.pem")).unwrap(),
        ),
        (
            "es256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&read("test_only_ec_p256_private.pem")).unwrap(),
            DecodingKey::from_ec_pem(&read("test_only_ec_p256_public.pem")).unwrap(),
            JwtKey::ec_pem(&read("test_only_ec_p256_public.pem")).unwrap(),
        ),
        (
            "eddsa",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&read("test_only_ed25519_private.pem")).unwrap(),
            DecodingKey::from_ed_pem(&read("test_only_ed25519_public.pem")).unwrap(),
            JwtKey::ed_pem(&read("test_only_ed25519_public.pem")).unwrap(),
        ),
    ];
    let claims = TokenClaims {
        sub: "key_00042".into(),
        exp: 4_000_000_000,
        scope: "weather:read weather:write".into(),
    };
    for (name, alg, encoding, decoding, key) in cases {
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).unwrap();
        let bearer = move || {
            http::Request::get(format!("{}?q=London", support::PATH))
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .expect("a valid request")
        };
        let first_sight = finish(support::router().layer(AuthLayer::jwt_only(
            JwtVerifier::with_keys([key.clone()]).cache(0),
        )));
        let cached =
            finish(support::router().layer(AuthLayer::jwt_only(JwtVerifier::with_keys([key]))));
        for app in [&first_sight, &cached] {
            assert_eq!(support::status(&fx.rt, app, bearer()), StatusCode::OK);
        }
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).unwrap();
        let validation = Validation::new(alg);
        assert!(jsonwebtoken::decode::<TokenClaims>(&token, &decoding, &validation).is_ok());

        let mut g = group(c, &format!("jwt/{name}"));
        g.bench_function("raw_decode", |b| {
            b.iter(|| {
                black_box(jsonwebtoken::decode::<TokenClaims>(
                    black_box(&token),
                    &decoding,
                    &validation,
                ))
            })
        });
        bench_service(&mut g, &fx.rt, "first_sight", &first_sight, &bearer);
        bench_service(&mut g, &fx.rt, "cached", &cached, &bearer);
        g.finish();
    }
}

/// Recording a request's metrics with no recorder installed, against recording nothing.
fn metrics(c: &mut Criterion) {
    let mut g = group(c, "metrics");
    g.bench_function("empty", |b| b.iter(|| black_box(())));
    g.bench_function("record_admitted_request", |b| {
        b.iter(keygate::metrics::record_admitted_request)
    });
    g.finish();
}

/// The router with a rate limit behind the authentication, with and without its headers.
fn ratelimit(c: &mut Criterion, fx: &Fixture) {
    use keygate::Quota;
    use keygate::ratelimit::{HeaderStyle, MemoryLimiter, RateLimitLayer};
    let mut g = group(c, "ratelimit");
    let quota = Quota::per_second(1_000_000_000);
    let layered = |style: HeaderStyle| {
        let limit = RateLimitLayer::new(MemoryLimiter::new(), quota).headers(style);
        finish(
            support::router()
                .layer(limit)
                .layer(AuthLayer::new(fx.store.clone())),
        )
    };
    let draft = layered(HeaderStyle::Draft);
    let none = layered(HeaderStyle::None);
    assert_eq!(
        support::status(&fx.rt, &draft, query_request(&fx.valid)),
        StatusCode::OK
    );
    bench_service(&mut g, &fx.rt, "draft_headers", &draft, || {
        query_request(&fx.valid)
    });
    bench_service(&mut g, &fx.rt, "no_headers", &none, || {
        query_request(&fx.valid)
    });
    g.finish();
}

/// A `tower_governor` key extractor reading the `x-api-key` header, as an application keying
/// its limit by API key without authenticating writes one: the header's value, owned.
#[derive(Clone, Copy)]
struct ApiKeyHeader;

impl tower_governor::key_extractor::KeyExtractor for ApiKeyHeader {
    type Key = String;

    fn extract<T>(&self, req: &http::Request<T>) -> Result<String, tower_governor::GovernorError> {
        req.headers()
            .get("x-api-key")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// The layers users pick instead, against keygate's, every request carrying its credential in a
/// header: `tower_governor` keyed by `x-api-key`, tower-http's bearer check, and keygate's
/// `AuthLayer` alone and with a `RateLimitLayer` behind it.
fn compare(c: &mut Criterion, fx: &Fixture) {
    use keygate::Quota;
    use keygate::ratelimit::{HeaderStyle, MemoryLimiter, RateLimitLayer};
    use tower_governor::GovernorLayer;
    use tower_governor::governor::GovernorConfigBuilder;
    use tower_http::validate_request::ValidateRequestHeaderLayer;

    let rt = &fx.rt;
    let bare = finish(support::router());
    // One cell replenished every nanosecond (10⁹/s) and a burst of 10⁹: never refuses, as the
    // keygate limit below.
    // Its builder changes type with the key extractor and with `use_headers`, so each
    // configuration finishes on its own.
    let governor_builder = || {
        GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(1_000_000_000)
            .key_extractor(ApiKeyHeader)
    };
    const CONFIG: &str = "a non-zero period and burst";
    let governor_layer = || {
        let config = governor_builder().finish().expect(CONFIG);
        GovernorLayer::<_, _, axum::body::Body>::new(config)
    };
    let governed = finish(support::router().layer(governor_layer()));
    let governor_headers = governor_builder().use_headers().finish().expect(CONFIG);
    let governed_headers = finish(support::router().layer(
        GovernorLayer::<_, _, axum::body::Body>::new(governor_headers),
    ));
    // Deprecated by tower-http as "too basic to be useful in real applications": here the
    // floor of any credential check, one header compared with a constant.
    #[allow(deprecated)]
    let bearer = finish(support::router().layer(ValidateRequestHeaderLayer::bearer(BEARER)));
    let auth = finish(support::router().layer(AuthLayer::new(fx.store.clone())));
    let limited_with = |style: HeaderStyle| {
        let limit = RateLimitLayer::new(MemoryLimiter::new(), Quota::per_second(1_000_000_000))
            .headers(style);
        finish(
            support::router()
                .layer(limit)
                .layer(AuthLayer::new(fx.store.clone())),
        )
    };
    let limited = limited_with(HeaderStyle::Draft);
    let limited_no_headers = limited_with(HeaderStyle::None);
    // The two layers in one `Router::layer`, as the deployment guide stacks them, and
    // `tower_governor` stacked the same way behind the `AuthLayer`: the differences against
    // `keygate_auth` then hold no `Router::layer` of their own.
    let stacked = finish(
        support::router().layer(
            tower::ServiceBuilder::new()
                .layer(AuthLayer::new(fx.store.clone()))
                .layer(RateLimitLayer::new(
                    MemoryLimiter::new(),
                    Quota::per_second(1_000_000_000),
                )),
        ),
    );
    let governed_stacked = finish(
        support::router().layer(
            tower::ServiceBuilder::new()
                .layer(AuthLayer::new(fx.store.clone()))
                .layer(governor_layer()),
        ),
    );
    let bearer_with = |token: &str| {
        http::Request::get(format!("{}?q=London", support::PATH))
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .expect("a valid request")
    };
    let bearer_request = || bearer_with(BEARER);
    // An HS256 token the verifier has seen before, against the API key in the same rounds.
    let jwt_secret = b"a benchmark secret of 32 bytes!!";
    let jwt_token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "key_00042", "exp": 4_000_000_000u64, "scope": "weather:read"}),
        &jsonwebtoken::EncodingKey::from_secret(jwt_secret),
    )
    .expect("an encodable token");
    let jwt_cached = finish(support::router().layer(AuthLayer::jwt_only(
        keygate::jwt::JwtVerifier::with_keys([keygate::jwt::JwtKey::hmac(jwt_secret)]),
    )));
    let jwt_request = || bearer_with(&jwt_token);

    // Each case answers 200 with its credential, and refuses a request without one.
    let check = |app: &axum::Router, good: http::Request<axum::body::Body>, refused| {
        let response = rt.block_on(support::send(app, good));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(support::status(rt, app, bare_request()), refused);
        response
    };
    check(&bare, header_request(&fx.valid), StatusCode::OK);
    // tower_governor answers a request its extractor finds no key in with 500.
    let response = check(
        &governed,
        header_request(&fx.valid),
        StatusCode::INTERNAL_SERVER_ERROR,
    );
    assert!(!response.headers().contains_key("x-ratelimit-remaining"));
    let response = check(
        &governed_headers,
        header_request(&fx.valid),
        StatusCode::INTERNAL_SERVER_ERROR,
    );
    assert!(response.headers().contains_key("x-ratelimit-remaining"));
    check(&bearer, bearer_request(), StatusCode::UNAUTHORIZED);
    check(&jwt_cached, jwt_request(), StatusCode::UNAUTHORIZED);
    check(&auth, header_request(&fx.valid), StatusCode::UNAUTHORIZED);
    let response = check(
        &limited,
        header_request(&fx.valid),
        StatusCode::UNAUTHORIZED,
    );
    assert!(response.headers().contains_key("ratelimit-policy"));
    assert!(response.headers().contains_key("ratelimit"));
    let response = check(
        &limited_no_headers,
        header_request(&fx.valid),
        StatusCode::UNAUTHORIZED,
    );
    assert!(!response.headers().contains_key("ratelimit-policy"));
    let response = check(
        &stacked,
        header_request(&fx.valid),
        StatusCode::UNAUTHORIZED,
    );
    assert!(response.headers().contains_key("ratelimit"));
    check(
        &governed_stacked,
        header_request(&fx.valid),
        StatusCode::UNAUTHORIZED,
    );

    let header = || header_request(&fx.valid);
    let query = || query_request(&fx.valid);
    let noop = finish(support::router().layer(Identity::new()));
    let cases: &[PairedCase<'_>] = &[
        ("bare_router", &bare, &query),
        ("noop_layer", &noop, &query),
        ("bare_router_header", &bare, &header),
        ("tower_governor", &governed, &header),
        ("tower_governor_headers", &governed_headers, &header),
        ("keygate_auth", &auth, &header),
        ("keygate_auth_ratelimit", &limited, &header),
        (
            "keygate_auth_ratelimit_no_headers",
            &limited_no_headers,
            &header,
        ),
        ("tower_http_bearer", &bearer, &bearer_request),
        ("keygate_auth_ratelimit_stacked", &stacked, &header),
        ("keygate_auth_governor_stacked", &governed_stacked, &header),
        ("keygate_jwt_cached", &jwt_cached, &jwt_request),
    ];
    let best = paired(rt, cases);
    let ns = |name: &str| {
        let i = cases.iter().position(|(case, ..)| *case == name);
        best[i.expect("a paired case")]
    };
    let line: Vec<String> = cases
        .iter()
        .zip(&best)
        .map(|((case, ..), ns)| format!("{case} {ns:.0} ns"))
        .collect();
    println!("paired/compare: {}", line.join(", "));
    let limit_adds = ns("keygate_auth_ratelimit") - ns("keygate_auth");
    let limit_adds_bare = ns("keygate_auth_ratelimit_no_headers") - ns("keygate_auth");
    let governor_adds = ns("tower_governor") - ns("bare_router_header");
    let governor_adds_headers = ns("tower_governor_headers") - ns("bare_router_header");
    println!(
        "paired/compare: RateLimitLayer adds {limit_adds:.0} ns with draft headers \
         (keygate_auth_ratelimit − keygate_auth), {limit_adds_bare:.0} ns without \
         (keygate_auth_ratelimit_no_headers − keygate_auth); tower_governor adds \
         {governor_adds:.0} ns in total (tower_governor − bare_router_header), \
         {governor_adds_headers:.0} ns with its headers (tower_governor_headers − \
         bare_router_header)"
    );
    println!(
        "paired/compare: goal RateLimitLayer (draft headers) ≤ tower_governor: {:.2}× ({}); \
         headers on both sides: {:.2}×, none on either: {:.2}×; each difference holds one \
         Router::layer, {:.0} ns (noop_layer − bare_router)",
        limit_adds / governor_adds,
        if limit_adds <= governor_adds {
            "met"
        } else {
            "not met"
        },
        limit_adds / governor_adds_headers,
        limit_adds_bare / governor_adds,
        ns("noop_layer") - ns("bare_router"),
    );
    let stacked_adds = ns("keygate_auth_ratelimit_stacked") - ns("keygate_auth");
    let governor_stacked_adds = ns("keygate_auth_governor_stacked") - ns("keygate_auth");
    println!(
        "paired/compare: in one Router::layer behind the AuthLayer (ServiceBuilder), \
         RateLimitLayer (draft headers) adds {stacked_adds:.0} ns, tower_governor \
         {governor_stacked_adds:.0} ns: {:.2}×; RateLimitLayer stacked against all \
         tower_governor adds alone: {:.2}×",
        stacked_adds / governor_stacked_adds,
        stacked_adds / governor_adds,
    );
    let jwt_adds = ns("keygate_jwt_cached") - ns("bare_router_header");
    let key_adds = ns("keygate_auth") - ns("bare_router_header");
    println!(
        "paired/compare: a cached HS256 token adds {jwt_adds:.0} ns (keygate_jwt_cached − \
         bare_router_header), {:.2}× what the API key adds; goal at most 1×: {}",
        jwt_adds / key_adds,
        if jwt_adds <= key_adds {
            "met"
        } else {
            "not met"
        },
    );
    println!(
        "paired/compare: AuthLayer adds {:.0} ns (keygate_auth − bare_router_header), the bearer \
         compare {:.0} ns (tower_http_bearer − bare_router_header)",
        ns("keygate_auth") - ns("bare_router_header"),
        ns("tower_http_bearer") - ns("bare_router_header"),
    );

    let mut g = group(c, "compare");
    bench_service(&mut g, rt, "bare_router_header", &bare, header);
    bench_service(&mut g, rt, "tower_governor", &governed, header);
    bench_service(
        &mut g,
        rt,
        "tower_governor_headers",
        &governed_headers,
        header,
    );
    bench_service(&mut g, rt, "keygate_auth", &auth, header);
    bench_service(&mut g, rt, "keygate_auth_ratelimit", &limited, header);
    bench_service(
        &mut g,
        rt,
        "keygate_auth_ratelimit_no_headers",
        &limited_no_headers,
        header,
    );
    bench_service(&mut g, rt, "tower_http_bearer", &bearer, bearer_request);
    g.finish();
}

/// A case of [`paired`]: its name, its router and what makes its requests.
type PairedCase<'a> = (
    &'a str,
    &'a axum::Router,
    &'a dyn Fn() -> http::Request<axum::body::Body>,
);

/// Times `cases` in turn, in rounds of `BATCH` requests each (built before the round's clock
/// starts, sent one after the other as `bench_service` sends them), and returns the best round
/// of each case, in nanoseconds a request: on a shared machine the least disturbed round.
fn paired(rt: &Runtime, cases: &[PairedCase<'_>]) -> Vec<f64> {
    const ROUNDS: usize = 300;
    const BATCH: u32 = 200;
    let mut best = vec![f64::MAX; cases.len()];
    for _ in 0..ROUNDS {
        for (case, (_, app, make)) in cases.iter().enumerate() {
            let requests: Vec<_> = (0..BATCH).map(|_| make()).collect();
            let elapsed = rt.block_on(async {
                let start = std::time::Instant::now();
                for req in requests {
                    drop(black_box(support::send(*app, req).await));
                }
                start.elapsed()
            });
            let ns = elapsed.as_nanos() as f64 / f64::from(BATCH);
            best[case] = best[case].min(ns);
        }
    }
    best
}

/// The token `compare/tower_http_bearer` expects, as `Authorization: Bearer token`.
const BEARER: &str = "token";

fn overhead(c: &mut Criterion) {
    let fx = Fixture::new();
    metrics(c);
    baseline(c, &fx);
    auth(c, &fx);
    floor(c, &fx);
    jwt(c, &fx);
    ratelimit(c, &fx);
    compare(c, &fx);
}

criterion_group!(benches, overhead);
criterion_main!(benches);
