//! An HTTP server for end-to-end load against keygate's layers and the crates users pick
//! instead, the same route as the `overhead` bench, on one tokio worker.
//!
//! ```sh
//! cargo run --release -p keygate-benches --example serve -- SCENARIO [ADDR]
//! ```
//!
//! It serves `GET /v1/current.json` (a small static JSON) with `axum::serve` on a current-thread
//! runtime, on `ADDR` (a loopback address, `127.0.0.1:0` by default: a free port), prints
//! `listening on ADDR` with the address it bound, then, for the scenarios that take a key,
//! `key: KEY`, and, for every scenario, `header: NAME: VALUE` (the credential a load generator
//! sends, empty for `bare` and `noop`). Ctrl-C (SIGINT) stops it after the open connections
//! are served.
//!
//! Scenarios, through one `Router` like the `overhead` bench's:
//! - `bare`: the router without any layer;
//! - `noop`: `Router::layer(tower::layer::util::Identity::new())`, what axum charges for any
//!   layer;
//! - `api_key`: `AuthLayer` over a `MemoryStore` of 10,000 issued keys (the key in
//!   `x-api-key` or in the `key` query parameter);
//! - `api_key_ratelimit`: a `RateLimitLayer` (`MemoryLimiter`, 10⁹/s, keyed by the principal,
//!   draft `RateLimit-Policy` and `RateLimit` headers) behind that `AuthLayer`;
//!   `api_key_ratelimit_no_headers` the same with `HeaderStyle::None`;
//! - `tower_governor`: `tower_governor`'s `GovernorLayer` keyed by the `x-api-key` header, one
//!   cell per nanosecond and a burst of 10⁹ (never refuses);
//! - `bearer`: tower-http's `ValidateRequestHeaderLayer::bearer("token")`.
//!
//! With wrk, one connection thread and 16 connections for 10 seconds, against the address
//! printed:
//!
//! ```sh
//! wrk -t1 -c16 -d10s 'http://127.0.0.1:PORT/v1/current.json?q=London'                   # bare, noop
//! wrk -t1 -c16 -d10s -H 'x-api-key: KEY' 'http://127.0.0.1:PORT/v1/current.json?q=London'
//! wrk -t1 -c16 -d10s 'http://127.0.0.1:PORT/v1/current.json?key=KEY&q=London'           # api_key*
//! wrk -t1 -c16 -d10s -H 'Authorization: Bearer token' 'http://127.0.0.1:PORT/v1/current.json?q=London'
//! ```
//!
//! Compare requests per second only with `bare` measured in the same round: the machine's
//! noise is larger than most of the differences.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use keygate::Quota;
use keygate::auth::AuthLayer;
use keygate::key::{KeyFormat, KeyRecord};
use keygate::ratelimit::{HeaderStyle, MemoryLimiter, RateLimitLayer};
use keygate::store::MemoryStore;
use tower::layer::util::Identity;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

/// The route every request goes to, as in the `overhead` bench.
const PATH: &str = "/v1/current.json";
/// Keys in the store of the `api_key` scenarios.
const KEYS: usize = 10_000;
/// The token of the `bearer` scenario.
const BEARER: &str = "token";
/// What the command line takes.
const USAGE: &str = "usage: serve SCENARIO [ADDR]\n\
    SCENARIO: bare | noop | api_key | api_key_ratelimit | api_key_ratelimit_no_headers |\n\
    \x20         tower_governor | bearer\n\
    ADDR: a loopback address to listen on, 127.0.0.1:0 by default";

/// The router without any layer: one route answering a small static JSON.
fn router() -> Router {
    Router::new().route(
        PATH,
        get(|| async { r#"{"location":{"name":"London"},"current":{"temp_c":11.0}}"# }),
    )
}

/// A `tower_governor` key extractor reading the `x-api-key` header, owning its value.
#[derive(Clone, Copy)]
struct ApiKeyHeader;

impl KeyExtractor for ApiKeyHeader {
    type Key = String;

    fn extract<T>(&self, req: &http::Request<T>) -> Result<String, tower_governor::GovernorError> {
        req.headers()
            .get("x-api-key")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// A `MemoryStore` of `KEYS` issued keys, and the plaintext of one of them.
fn store() -> (MemoryStore, String) {
    let format = KeyFormat::new("wk_live_").expect("a valid prefix");
    let store = MemoryStore::with_format(format);
    let keys: Vec<_> = (0..KEYS)
        .map(|i| {
            let record =
                KeyRecord::new(format!("key_{i:05}"), "acme").with_scopes(["weather:read"]);
            store.issue(record).expect("a fresh id")
        })
        .collect();
    // A key from the middle of the issue order, as the overhead bench presents.
    let key = keys[KEYS / 2].expose_secret().to_owned();
    assert_eq!(store.len(), KEYS);
    (store, key)
}

/// The router of `scenario`, the key to present (if it takes one), and the header a load
/// generator sends; `None` for an unknown scenario.
fn scenario(name: &str) -> Option<(Router, Option<String>, String)> {
    Some(match name {
        "bare" => (router(), None, String::new()),
        "noop" => (router().layer(Identity::new()), None, String::new()),
        "api_key" => {
            let (store, key) = store();
            let header = format!("x-api-key: {key}");
            (router().layer(AuthLayer::new(store)), Some(key), header)
        }
        "api_key_ratelimit" | "api_key_ratelimit_no_headers" => {
            let (store, key) = store();
            let style = if name == "api_key_ratelimit" {
                HeaderStyle::Draft
            } else {
                HeaderStyle::None
            };
            let limit = RateLimitLayer::new(MemoryLimiter::new(), Quota::per_second(1_000_000_000))
                .headers(style);
            let app = router().layer(limit).layer(AuthLayer::new(store));
            let header = format!("x-api-key: {key}");
            (app, Some(key), header)
        }
        "tower_governor" => {
            let config = GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(1_000_000_000)
                .key_extractor(ApiKeyHeader)
                .finish()
                .expect("a non-zero period and burst");
            let app = router().layer(GovernorLayer::<_, _, axum::body::Body>::new(config));
            // Any value keys the limit: the store's format only makes it look like the others.
            let key = KeyFormat::new("wk_live_")
                .expect("a valid prefix")
                .generate()
                .expose_secret()
                .to_owned();
            let header = format!("x-api-key: {key}");
            (app, Some(key), header)
        }
        "bearer" => {
            // Deprecated by tower-http as "too basic to be useful in real applications": here
            // the floor of any credential check, one header compared with a constant.
            #[allow(deprecated)]
            let layer = tower_http::validate_request::ValidateRequestHeaderLayer::bearer(BEARER);
            let header = format!("Authorization: Bearer {BEARER}");
            (router().layer(layer), None, header)
        }
        _ => return None,
    })
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(name), addr, None) = (args.next(), args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let addr: SocketAddr = match addr.as_deref().unwrap_or("127.0.0.1:0").parse() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("serve: ADDR: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // A load test's target is this machine only.
    if !addr.ip().is_loopback() {
        eprintln!("serve: {addr} is not a loopback address\n{USAGE}");
        return ExitCode::from(2);
    }
    let Some((app, key, header)) = scenario(&name) else {
        eprintln!("serve: unknown scenario {name:?}\n{USAGE}");
        return ExitCode::from(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("serve: bind {addr}: {err}");
                return ExitCode::FAILURE;
            }
        };
        let bound = listener.local_addr().expect("a bound listener's address");
        println!("listening on {bound}");
        if let Some(key) = key {
            println!("key: {key}");
        }
        println!("header: {header}");
        let shutdown = async {
            // Without a signal handler the server runs until it is killed, which is as good.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        match axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("serve: {err}");
                ExitCode::FAILURE
            }
        }
    })
}
