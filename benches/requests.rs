//! Sends one kind of request through an in-process axum `Router` a given number of times, for
//! counting the instructions a request costs with callgrind (which counts instructions, not
//! time, so its figures do not move with the machine's load).
//!
//! ```text
//! cargo build --release -p keygate-benches --example requests
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/requests valid_key 1000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/requests valid_key 11000
//! ```
//!
//! The difference of the two totals over 10,000 is one request's instructions, without the
//! set-up (the store of 10,000 keys, the runtime). `requests list` names the scenarios:
//!
//! - `bare`: the router without any layer; `noop`: with `Router::layer(Identity)`, what any
//!   layer pays for the plumbing;
//! - `valid_key`, `valid_key_header`: a valid key in the `key` query parameter or in
//!   `x-api-key`, the route reading the caller with the `Principal` extractor;
//! - `unknown_key`, `malformed_key` (the layer checks the key format), `missing_credential`,
//!   `two_credentials`: the refusals;
//! - `ratelimit_draft`, `ratelimit_none`: `valid_key` with a `RateLimitLayer` (memory,
//!   10⁹/s) behind the `AuthLayer`, with draft headers and without;
//! - `jwt_hs256_cached`: an HS256 bearer token a `JwtVerifier` has seen before.
//!
//! Every scenario checks its first response's status before counting on.

use std::process::ExitCode;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use keygate::Principal;
use keygate::Quota;
use keygate::auth::AuthLayer;
use keygate::jwt::{JwtKey, JwtVerifier};
use keygate::key::{ApiKey, KeyFormat, KeyRecord};
use keygate::ratelimit::{HeaderStyle, MemoryLimiter, RateLimitLayer};
use keygate::store::MemoryStore;
use tower::ServiceExt as _;
use tower::layer::util::Identity;

const PATH: &str = "/v1/current.json";
const SECRET: &[u8] = b"a benchmark secret of 32 bytes!!";
const SCENARIOS: &[&str] = &[
    "bare",
    "noop",
    "valid_key",
    "valid_key_header",
    "unknown_key",
    "malformed_key",
    "missing_credential",
    "two_credentials",
    "ratelimit_draft",
    "ratelimit_none",
    "jwt_hs256_cached",
];

/// The route without a caller (for the baselines) and with the `Principal` extractor.
fn router(extract: bool) -> Router {
    const BODY: &str = r#"{"location":{"name":"London"},"current":{"temp_c":11.0}}"#;
    if extract {
        Router::new().route(
            PATH,
            get(|p: Principal| async move {
                std::hint::black_box(p.id().len());
                BODY
            }),
        )
    } else {
        Router::new().route(PATH, get(|| async { BODY }))
    }
}

fn request(
    query_key: Option<&str>,
    header_key: Option<&str>,
    bearer: Option<&str>,
) -> Request<Body> {
    let uri = match query_key {
        Some(key) => format!("{PATH}?key={key}&q=London"),
        None => format!("{PATH}?q=London"),
    };
    let mut builder = Request::get(uri);
    if let Some(key) = header_key {
        builder = builder.header("x-api-key", key);
    }
    if let Some(token) = bearer {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Body::empty()).expect("a valid request")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (scenario, count) = match args.as_slice() {
        [s] if s == "list" => {
            SCENARIOS.iter().for_each(|s| println!("{s}"));
            return ExitCode::SUCCESS;
        }
        [s, n] if SCENARIOS.contains(&s.as_str()) => match n.parse::<usize>() {
            Ok(n) => (s.as_str(), n),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };

    let format = KeyFormat::new("wk_live_").expect("a valid prefix");
    let store = MemoryStore::with_format(format.clone());
    let keys: Vec<ApiKey> = (0..10_000)
        .map(|i| {
            let record =
                KeyRecord::new(format!("key_{i:05}"), "acme").with_scopes(["weather:read"]);
            store.issue(record).expect("a fresh id")
        })
        .collect();
    let valid = keys[5_000].expose_secret().to_owned();
    let unknown = format.generate().expose_secret().to_owned();
    let mut malformed = valid.clone().into_bytes();
    let i = format.prefix().len();
    malformed[i] = if malformed[i] == b'A' { b'B' } else { b'A' };
    let malformed = String::from_utf8(malformed).expect("base62 is ASCII");
    let token = {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let claims = serde_json::json!({"sub": "key_00042", "exp": 4_000_000_000u64, "scope": "weather:read"});
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("an encodable token")
    };

    let auth = || AuthLayer::new(store.clone());
    let limit = |style| {
        RateLimitLayer::new(MemoryLimiter::new(), Quota::per_second(1_000_000_000)).headers(style)
    };
    let (app, make, status): (Router, Box<dyn Fn() -> Request<Body>>, StatusCode) = match scenario {
        "bare" => (
            router(false),
            Box::new(|| request(Some(&valid), None, None)),
            StatusCode::OK,
        ),
        "noop" => (
            router(false).layer(Identity::new()),
            Box::new(|| request(Some(&valid), None, None)),
            StatusCode::OK,
        ),
        "valid_key" => (
            router(true).layer(auth()),
            Box::new(|| request(Some(&valid), None, None)),
            StatusCode::OK,
        ),
        "valid_key_header" => (
            router(true).layer(auth()),
            Box::new(|| request(None, Some(&valid), None)),
            StatusCode::OK,
        ),
        "unknown_key" => (
            router(true).layer(auth()),
            Box::new(|| request(Some(&unknown), None, None)),
            StatusCode::UNAUTHORIZED,
        ),
        "malformed_key" => (
            router(true).layer(auth().key_format(format.clone())),
            Box::new(|| request(Some(&malformed), None, None)),
            StatusCode::UNAUTHORIZED,
        ),
        "missing_credential" => (
            router(true).layer(auth()),
            Box::new(|| request(None, None, None)),
            StatusCode::UNAUTHORIZED,
        ),
        "two_credentials" => (
            router(true).layer(auth()),
            Box::new(|| request(Some(&valid), Some(&valid), None)),
            StatusCode::BAD_REQUEST,
        ),
        "ratelimit_draft" => (
            router(true).layer(limit(HeaderStyle::Draft)).layer(auth()),
            Box::new(|| request(Some(&valid), None, None)),
            StatusCode::OK,
        ),
        "ratelimit_none" => (
            router(true).layer(limit(HeaderStyle::None)).layer(auth()),
            Box::new(|| request(Some(&valid), None, None)),
            StatusCode::OK,
        ),
        "jwt_hs256_cached" => (
            router(true).layer(AuthLayer::jwt_only(JwtVerifier::with_keys([JwtKey::hmac(
                SECRET,
            )]))),
            Box::new(|| request(None, None, Some(&token))),
            StatusCode::OK,
        ),
        _ => unreachable!("checked against SCENARIOS"),
    };
    // As `axum::serve` does: every route's service is built once.
    let app = app.with_state(());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let first = app.clone().oneshot(make()).await.expect("infallible");
        assert_eq!(first.status(), status, "{scenario}");
        for _ in 0..count {
            let req = make();
            let response = app.clone().oneshot(req).await.expect("infallible");
            drop(std::hint::black_box(response));
        }
    });
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: requests SCENARIO COUNT | requests list");
    ExitCode::from(2)
}
