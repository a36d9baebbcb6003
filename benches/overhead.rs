//! What `AuthLayer` adds to a request, in-process, against the floor of an API-key check.
//!
//! `cargo bench --bench overhead`
//!
//! Every request goes through an axum `Router` (one route, `GET /v1/current.json`, answering a
//! small static string) with `tower::ServiceExt::oneshot` on a clone of it, inside a tokio
//! current-thread runtime. Requests are built before the clock starts and responses dropped after
//! it stops (`iter_batched`), so the figures are the service call alone.
//!
//! Groups:
//! - `baseline/bare_router`: the router without any layer, request
//!   `GET /v1/current.json?key=KEY&q=London`.
//! - `auth/*`: the same router with `.layer(AuthLayer::new(store))`, the store a `MemoryStore`
//!   holding 10 000 issued keys:
//!   - `valid_key`: a valid key in the `key` query parameter;
//!   - `valid_key_header`: the same key in `x-api-key`;
//!   - `valid_key_with_format`: `valid_key` with `.key_format(format)` on the layer (the key's
//!     checksum is checked before the store is asked, as the README recommends);
//!   - `unknown_key`: a well-formed key (good checksum) that the store does not hold: 401;
//!   - `malformed_key`: the store's prefix with a broken checksum, `.key_format(format)` on the
//!     layer: 401 without asking the store.
//! - `floor/sha256_plus_dashmap`: the floor of an API-key check (DESIGN.md, "Performance
//!   model"): one SHA-256 of the key (`KeyDigest::of`) and one lookup in a
//!   `DashMap<KeyDigest, Arc<KeyRecord>>` of 10 000 entries (std's default hasher), taking the
//!   record out of the map (an `Arc` clone) as a store must. `floor/sha256_plus_dashmap_foldhash`
//!   is the same with a fast hasher, closer to `MemoryStore`'s own map.
//!
//! The goal (issue 2, item 9): `auth/valid_key − baseline/bare_router` ≤ 1.5 × the floor.
//!
//! Before measuring, every case is checked once to take the path it is named after (status, and
//! whether the store was asked).
//!
//! Later benches of other layers (rate limiter, JWT) add their groups to `bench` below, built
//! with the helpers in `support`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use dashmap::DashMap;
use http::StatusCode;
use keygate::AuthLayer;
use keygate::key::{ApiKey, FormatError, KeyDigest, KeyFormat, KeyRecord};
use keygate::store::MemoryStore;
use support::{
    Counting, KEYS, bench_service, finish, group, header_request, query_request, runtime,
};
use tower::Layer as _;
use tower::layer::util::Identity;
/// Routers, requests, stores and groups shared by every benchmark in this file.
mod support {
    use std::fmt::Debug;
    use std::future::Future;
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
            b.to_async(rt)
                .iter_batched(&make, |req| send(app, req), BatchSize::SmallInput)
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
fn check_paths(
    rt: &tokio::runtime::Runtime,
    store: &MemoryStore,
    format: &KeyFormat,
    cases: &Cases,
) {
    let counting = Counting::new(store.clone());
    let plain = finish(support::router().layer(AuthLayer::new(counting.clone())));
    let formatted = finish(
        support::router().layer(AuthLayer::new(counting.clone()).key_format(format.clone())),
    );
    let expect = |app, req, status, lookups| {
        let before = counting.count();
        assert_eq!(support::status(rt, app, req), status);
        assert_eq!(counting.count() - before, lookups, "store lookups");
    };
    expect(&plain, query_request(&cases.valid), StatusCode::OK, 1);
    expect(&plain, header_request(&cases.valid), StatusCode::OK, 1);
    expect(&formatted, query_request(&cases.valid), StatusCode::OK, 1);
    expect(
        &plain,
        query_request(&cases.unknown),
        StatusCode::UNAUTHORIZED,
        1,
    );
    expect(
        &formatted,
        query_request(&cases.malformed),
        StatusCode::UNAUTHORIZED,
        0,
    );
    let outside = AuthLayer::new(counting.clone()).layer(finish(support::router()));
    let before = counting.count();
    let req = query_request(&cases.valid);
    assert_eq!(support::status(rt, &outside, req), StatusCode::OK);
    assert_eq!(counting.count() - before, 1, "store lookups");
    let bare = finish(support::router());
    let noop = finish(support::router().layer(Identity::new()));
    for app in [bare, noop] {
        let req = query_request(&cases.valid);
        assert_eq!(support::status(rt, &app, req), StatusCode::OK);
    }
}

/// The keys presented.
struct Cases {
    valid: String,
    unknown: String,
    malformed: String,
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let format = KeyFormat::new("wk_live_").expect("a valid prefix");
    let (store, keys) = support::store(&format);
    // A key from the middle of the issue order; any of them would do.
    let valid = &keys[KEYS / 2];
    let cases = Cases {
        valid: valid.expose_secret().to_owned(),
        unknown: format.generate().expose_secret().to_owned(),
        malformed: break_checksum(&format, valid),
    };
    check_paths(&rt, &store, &format, &cases);

    let mut g = group(c, "baseline");
    let bare = finish(support::router());
    bench_service(&mut g, &rt, "bare_router", &bare, || {
        query_request(&cases.valid)
    });
    // What axum charges for any `Router::layer`, before the layer does anything.
    let noop = finish(support::router().layer(Identity::new()));
    bench_service(&mut g, &rt, "noop_layer", &noop, || {
        query_request(&cases.valid)
    });
    g.finish();

    let mut g = group(c, "auth");
    let plain = finish(support::router().layer(AuthLayer::new(store.clone())));
    let formatted =
        finish(support::router().layer(AuthLayer::new(store.clone()).key_format(format.clone())));
    bench_service(&mut g, &rt, "valid_key", &plain, || {
        query_request(&cases.valid)
    });
    bench_service(&mut g, &rt, "valid_key_header", &plain, || {
        header_request(&cases.valid)
    });
    bench_service(&mut g, &rt, "valid_key_with_format", &formatted, || {
        query_request(&cases.valid)
    });
    // The layer around the whole router (`ServiceBuilder` style) instead of `Router::layer`.
    let outside = AuthLayer::new(store.clone()).layer(finish(support::router()));
    bench_service(&mut g, &rt, "valid_key_outside_router", &outside, || {
        query_request(&cases.valid)
    });
    bench_service(&mut g, &rt, "unknown_key", &plain, || {
        query_request(&cases.unknown)
    });
    bench_service(&mut g, &rt, "malformed_key", &formatted, || {
        query_request(&cases.malformed)
    });
    g.finish();

    let mut g = group(c, "floor");
    let records: Vec<(KeyDigest, Arc<KeyRecord>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                k.digest(),
                Arc::new(KeyRecord::new(format!("key_{i:05}"), "acme")),
            )
        })
        .collect();
    let std_map: DashMap<KeyDigest, Arc<KeyRecord>> = records.iter().cloned().collect();
    let fold_map: DashMap<KeyDigest, Arc<KeyRecord>, foldhash::fast::RandomState> =
        records.iter().cloned().collect();
    assert_eq!((std_map.len(), fold_map.len()), (KEYS, KEYS));
    let key = cases.valid.as_str();
    g.bench_function("sha256_plus_dashmap", |b| {
        b.iter(|| {
            let digest = KeyDigest::of(black_box(key));
            black_box(std_map.get(&digest).map(|r| Arc::clone(r.value())))
        })
    });
    g.bench_function("sha256_plus_dashmap_foldhash", |b| {
        b.iter(|| {
            let digest = KeyDigest::of(black_box(key));
            black_box(fold_map.get(&digest).map(|r| Arc::clone(r.value())))
        })
    });
    g.finish();

    // Parts of the floor, to read the figures above.
    let mut g = group(c, "parts");
    g.bench_function("sha256", |b| b.iter(|| KeyDigest::of(black_box(key))));
    let digest = KeyDigest::of(key);
    g.bench_function("dashmap_get", |b| {
        b.iter(|| {
            black_box(
                std_map
                    .get(black_box(&digest))
                    .map(|r| Arc::clone(r.value())),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
