//! `RemoteJwks` against a real HTTP server on 127.0.0.1, started by each test: an axum app
//! serving a JWK set that the test changes at run time, with failures and headers it controls,
//! counting the requests it gets.

#![cfg(feature = "jwks")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate::jwt::{
    Algorithm, JwksError, JwtVerifier, KeySource, RemoteJwks, RemoteJwksBuilder, TokenIssuer,
    VerifyError,
};
use keygate::{Principal, auth::AuthLayer};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

const SECRET_1: &[u8] = b"first secret, thirty-two bytes!!";
const SECRET_2: &[u8] = b"second secret, thirty-two bytes!";
const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/jwks_rsa_private.pem");
const RSA_JWK: &str = include_str!("fixtures/jwks_rsa_public.jwk.json");

/// What the JWKS endpoint does with the next requests.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// 200 with the current body.
    Serve,
    /// This status, with a short body.
    Status(u16),
    /// 200 with text that is not JSON.
    Garbage,
    /// 200 with JSON that is not a JWK set.
    NotJwks,
    /// 200 with the current body padded with whitespace to this many bytes.
    Padded(usize),
    /// 200 with the current body, after this long.
    Slow(Duration),
}

struct Endpoint {
    body: Mutex<String>,
    mode: Mutex<Mode>,
    cache_control: Mutex<Option<String>>,
    hits: AtomicUsize,
}

async fn serve_jwks(State(e): State<Arc<Endpoint>>) -> Response {
    e.hits.fetch_add(1, Ordering::SeqCst);
    let mode = *e.mode.lock().unwrap();
    let body = e.body.lock().unwrap().clone();
    let cache_control = e.cache_control.lock().unwrap().clone();
    let ok = |body: String| {
        let mut r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(cc) = cache_control.as_deref() {
            r.headers_mut()
                .insert(header::CACHE_CONTROL, cc.parse().unwrap());
        }
        r
    };
    match mode {
        Mode::Serve => ok(body),
        Mode::Status(s) => (StatusCode::from_u16(s).unwrap(), "no").into_response(),
        Mode::Garbage => ok("<html>this is not JSON".into()),
        Mode::NotJwks => ok(r#"{"issuer":"https://idp.example"}"#.into()),
        Mode::Padded(len) => {
            let pad = len.saturating_sub(body.len());
            ok(format!("{body}{}", " ".repeat(pad)))
        }
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            ok(body)
        }
    }
}

/// The test's JWKS server.
struct Server {
    url: String,
    endpoint: Arc<Endpoint>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(keys: &[Value]) -> Self {
        let endpoint = Arc::new(Endpoint {
            body: Mutex::new(String::new()),
            mode: Mutex::new(Mode::Serve),
            cache_control: Mutex::new(None),
            hits: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/.well-known/jwks.json", get(serve_jwks))
            .with_state(endpoint.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        let server = Self {
            url: format!("http://{addr}/.well-known/jwks.json"),
            endpoint,
            stop: Some(stop),
            task,
        };
        server.publish(keys);
        server
    }

    fn publish(&self, keys: &[Value]) {
        *self.endpoint.body.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    fn mode(&self, mode: Mode) {
        *self.endpoint.mode.lock().unwrap() = mode;
    }

    fn cache_control(&self, value: &str) {
        *self.endpoint.cache_control.lock().unwrap() = Some(value.into());
    }

    fn hits(&self) -> usize {
        self.endpoint.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting connections and closes the idle ones: the endpoint is down.
    async fn down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(3), &mut self.task)
            .await
            .expect("the server shuts down")
            .unwrap();
    }

    /// A `RemoteJwks` of this server with intervals that keep the test quiet unless it sets
    /// them.
    fn jwks(&self) -> RemoteJwksBuilder {
        RemoteJwks::builder(&self.url)
            .refresh_interval(Duration::from_secs(3600))
            .timeout(Duration::from_secs(2))
            .allow_hmac_keys(true)
    }
}

fn hs_jwk(kid: &str, secret: &[u8]) -> Value {
    json!({ "kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret), "kid": kid, "alg": "HS256" })
}

fn rsa_jwk() -> Value {
    serde_json::from_str(RSA_JWK).unwrap()
}

fn hs_token(kid: &str, secret: &[u8], sub: &str) -> String {
    TokenIssuer::hmac(secret)
        .kid(kid)
        .issue(sub, ["read"])
        .unwrap()
        .access_token
}

fn rsa_token(sub: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    TokenIssuer::new(key, Algorithm::RS256)
        .kid("rsa1")
        .issue(sub, ["read"])
        .unwrap()
        .access_token
}

fn app(verifier: JwtVerifier) -> Router {
    Router::new()
        .route("/me", get(|p: Principal| async move { p.id().to_owned() }))
        .layer(AuthLayer::jwt_only(verifier))
}

/// The status of `GET /me` with this bearer token, and the body when it is 200.
async fn call(app: &Router, token: &str) -> (StatusCode, String) {
    let request = Request::get("/me")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let body = if status == StatusCode::OK {
        String::from_utf8(body.to_vec()).unwrap()
    } else {
        String::new()
    };
    (status, body)
}

#[tokio::test]
async fn rotation_new_kid_fetched_at_once_removed_kid_fails_even_cached() {
    let server = Server::start(&[hs_jwk("k1", SECRET_1), rsa_jwk()]).await;
    let jwks = server.jwks().build().await.unwrap();
    assert!(jwks.is_ready());
    assert_eq!(server.hits(), 1, "fetched once at start");
    let verifier = JwtVerifier::new(jwks.clone());
    let app = app(verifier.clone());

    let old = hs_token("k1", SECRET_1, "alice");
    let rsa = rsa_token("rob");
    assert_eq!(call(&app, &old).await, (StatusCode::OK, "alice".into()));
    assert_eq!(call(&app, &rsa).await, (StatusCode::OK, "rob".into()));
    assert_eq!(verifier.verify(&rsa).unwrap().id(), "rob");
    assert_eq!(verifier.cached(), 2);
    assert_eq!(server.hits(), 1, "known keys need no fetch");

    // The provider publishes k2 next to k1; a token of k2 works at once, through the
    // unknown-kid fetch, long before the refresh interval (an hour).
    server.publish(&[hs_jwk("k1", SECRET_1), hs_jwk("k2", SECRET_2), rsa_jwk()]);
    let new = hs_token("k2", SECRET_2, "bob");
    assert!(verifier.verify(&new).is_err(), "verify alone never fetches");
    assert_eq!(server.hits(), 1);
    assert_eq!(call(&app, &new).await, (StatusCode::OK, "bob".into()));
    assert_eq!(server.hits(), 2, "one fetch for the unknown kid");
    assert_eq!(verifier.verify(&new).unwrap().id(), "bob");
    assert_eq!(
        call(&app, &old).await.0,
        StatusCode::OK,
        "k1 still published"
    );
    assert!(verifier.cached() >= 1);

    // The provider drops k1. Once the set is fetched again, k1's tokens fail, cached or not.
    server.publish(&[hs_jwk("k2", SECRET_2), rsa_jwk()]);
    assert_eq!(call(&app, &old).await.0, StatusCode::OK, "not fetched yet");
    jwks.refresh().await.unwrap();
    assert_eq!(server.hits(), 3);
    assert_eq!(call(&app, &old).await.0, StatusCode::UNAUTHORIZED);
    assert!(verifier.verify(&old).is_err());
    assert_eq!(call(&app, &new).await, (StatusCode::OK, "bob".into()));
    assert_eq!(call(&app, &rsa).await, (StatusCode::OK, "rob".into()));
    // k1 is unknown now, but the unknown-kid fetch was made less than 30 s ago: no new fetch.
    assert_eq!(server.hits(), 3);

    // An unchanged set keeps its generation: the verifier's cache stays warm.
    let before = jwks.current_generation();
    let set = jwks.current();
    jwks.refresh().await.unwrap();
    assert_eq!(server.hits(), 4);
    assert_eq!(jwks.current_generation(), before);
    assert!(Arc::ptr_eq(&set, &jwks.current()));
}

#[tokio::test]
async fn failing_endpoint_keeps_the_last_good_set() {
    let mut server = Server::start(&[hs_jwk("k1", SECRET_1), rsa_jwk()]).await;
    let jwks = server
        .jwks()
        .max_body(16 * 1024)
        .timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let verifier = JwtVerifier::new(jwks.clone());
    let app = app(verifier.clone());
    let token = hs_token("k1", SECRET_1, "alice");
    let rsa = rsa_token("rob");
    assert_eq!(call(&app, &token).await.0, StatusCode::OK);

    let failures: [(Mode, Expect); 7] = [
        (Mode::Status(500), |e| matches!(e, JwksError::Status(500))),
        (Mode::Status(404), |e| matches!(e, JwksError::Status(404))),
        (Mode::Garbage, |e| matches!(e, JwksError::Parse(_))),
        (Mode::NotJwks, |e| matches!(e, JwksError::Parse(_))),
        (Mode::Padded(64 * 1024), |e| {
            matches!(e, JwksError::TooLarge(16384))
        }),
        (Mode::Slow(Duration::from_secs(2)), |e| {
            matches!(e, JwksError::Timeout)
        }),
        // A set with no usable key (an unknown key type) is a failure too.
        (Mode::Serve, |e| matches!(e, JwksError::NoKeys)),
    ];
    for (i, (mode, expected)) in failures.into_iter().enumerate() {
        if matches!(mode, Mode::Serve) {
            server.publish(&[json!({ "kty": "XYZ", "kid": "k9" })]);
        }
        server.mode(mode);
        let err = jwks.refresh().await.unwrap_err();
        assert!(expected(&err), "{mode:?} gave {err:?}");
        assert_eq!(server.hits(), 2 + i);
        assert_eq!(
            call(&app, &token).await,
            (StatusCode::OK, "alice".into()),
            "{mode:?}"
        );
        assert_eq!(verifier.verify(&rsa).unwrap().id(), "rob", "{mode:?}");
    }
    assert!(format!("{jwks:?}").contains("NoKeys"));

    // Down altogether: connections refused.
    server.publish(&[hs_jwk("k1", SECRET_1), rsa_jwk()]);
    server.mode(Mode::Serve);
    server.down().await;
    let hits = server.hits();
    let err = jwks.refresh().await.unwrap_err();
    assert!(matches!(err, JwksError::Request(_)), "{err:?}");
    assert!(
        !err.to_string().contains("127.0.0.1"),
        "no URL in errors: {err}"
    );
    assert_eq!(server.hits(), hits);
    assert_eq!(call(&app, &token).await, (StatusCode::OK, "alice".into()));
    assert_eq!(call(&app, &rsa).await, (StatusCode::OK, "rob".into()));
    // A token of a key never seen: the fetch it causes fails, so whether the provider has that
    // key cannot be known now (503, retry later), though the known keys still work.
    let stranger = hs_token("k7", SECRET_2, "eve");
    assert_eq!(
        call(&app, &stranger).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The next one comes too soon for another fetch; the last one failed, so it is 503 too.
    let hits = server.hits();
    let another = hs_token("k8", SECRET_2, "eve");
    assert_eq!(
        call(&app, &another).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(server.hits(), hits, "no fetch within the interval");
    assert!(jwks.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetch_is_throttled_and_shared() {
    let server = Server::start(&[hs_jwk("k1", SECRET_1)]).await;
    let jwks = server
        .jwks()
        .unknown_kid_interval(Duration::from_millis(800))
        .build()
        .await
        .unwrap();
    let app = app(JwtVerifier::new(jwks));
    assert_eq!(server.hits(), 1);

    // A burst of tokens with random kids while the endpoint is slow: they share one fetch.
    server.mode(Mode::Slow(Duration::from_millis(200)));
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let kid = format!("random-{i}-{}", rand_suffix());
                call(&app, &hs_token(&kid, SECRET_2, "mallory")).await.0
            })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.hits(), 2, "one fetch for the whole burst");

    // More unknown kids within the interval: rejected at once, no fetch.
    server.mode(Mode::Serve);
    for i in 0..50 {
        let token = hs_token(&format!("again-{i}"), SECRET_2, "mallory");
        assert_eq!(call(&app, &token).await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.hits(), 2);
    // Known keys are unaffected.
    let good = hs_token("k1", SECRET_1, "alice");
    assert_eq!(call(&app, &good).await.0, StatusCode::OK);

    // After the interval, one more fetch is allowed — and only one.
    tokio::time::sleep(Duration::from_millis(900)).await;
    for i in 0..20 {
        let token = hs_token(&format!("later-{i}"), SECRET_2, "mallory");
        assert_eq!(call(&app, &token).await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.hits(), 3);
}

/// A provider that hangs cannot park requests: a token naming an unknown `kid` waits for the
/// fetch it causes at most `unknown_kid_wait` (default 1 s), then gets 503, though the fetch's
/// own timeout is far longer; once a fetch succeeds and the set still lacks the `kid`, 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_jwks_endpoint_bounds_the_wait_of_unknown_kids() {
    const SLACK: Duration = Duration::from_millis(1500);
    let server = Server::start(&[hs_jwk("k1", SECRET_1)]).await;
    let jwks = server
        .jwks()
        .timeout(Duration::from_secs(30))
        .unknown_kid_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let router = app(JwtVerifier::new(jwks.clone()));
    server.mode(Mode::Slow(Duration::from_secs(60)));

    // The default wait: one second, not the fetch's 30 s timeout.
    let token = hs_token("unknown-1", SECRET_2, "mallory");
    let start = std::time::Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), call(&router, &token))
        .await
        .expect("the request is answered long before the fetch times out");
    let waited = start.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(waited >= Duration::from_secs(1), "waited {waited:?}");
    assert!(waited < Duration::from_secs(1) + SLACK, "waited {waited:?}");
    // Known keys keep working while the fetch hangs.
    let good = hs_token("k1", SECRET_1, "alice");
    assert_eq!(call(&router, &good).await, (StatusCode::OK, "alice".into()));

    // A shorter configured wait, with requests joining the fetch still under way.
    let short = server
        .jwks()
        .timeout(Duration::from_secs(30))
        .unknown_kid_wait(Duration::from_millis(200))
        .build();
    server.mode(Mode::Serve);
    let short = short.await.unwrap();
    let router = app(JwtVerifier::new(short));
    server.mode(Mode::Slow(Duration::from_secs(60)));
    let requests: Vec<_> = (0..10)
        .map(|i| {
            let router = router.clone();
            tokio::spawn(async move {
                let token = hs_token(&format!("unknown-{i}"), SECRET_2, "mallory");
                let start = std::time::Instant::now();
                let status = call(&router, &token).await.0;
                (status, start.elapsed())
            })
        })
        .collect();
    for request in requests {
        let (status, waited) = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            waited < Duration::from_millis(200) + SLACK,
            "waited {waited:?}"
        );
    }

    // The endpoint answers again, without the kid: 401, not 503.
    server.mode(Mode::Serve);
    let fresh = server
        .jwks()
        .unknown_kid_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let router = app(JwtVerifier::new(fresh));
    let token = hs_token("unknown-2", SECRET_2, "mallory");
    assert_eq!(call(&router, &token).await.0, StatusCode::UNAUTHORIZED);
    drop(jwks);
}

/// Whether an error is the one expected.
type Expect = fn(&JwksError) -> bool;

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

#[tokio::test]
async fn cache_control_max_age_sets_the_refresh_interval() {
    let keys = [hs_jwk("k1", SECRET_1)];
    // max-age=1, honoured (the lower clamp is configured below it).
    let one_second = Server::start(&keys).await;
    one_second.cache_control("public, max-age=1");
    // max-age of an hour, held down by max_refresh.
    let clamped = Server::start(&keys).await;
    clamped.cache_control("max-age=3600");
    // No header: the refresh interval (an hour).
    let silent = Server::start(&keys).await;

    let _a = one_second
        .jwks()
        .min_refresh(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let _b = clamped
        .jwks()
        .max_refresh(Duration::from_millis(400))
        .build()
        .await
        .unwrap();
    let _c = silent
        .jwks()
        .min_refresh(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // At 0 s, 1 s, 2 s.
    assert!(
        (3..=4).contains(&one_second.hits()),
        "{}",
        one_second.hits()
    );
    // Every 0.4 s: 0, 0.4, ..., 2.0 — at least 5.
    assert!((5..=7).contains(&clamped.hits()), "{}", clamped.hits());
    assert_eq!(silent.hits(), 1);
}

#[tokio::test]
async fn refresh_task_stops_when_the_last_handle_is_dropped() {
    let server = Server::start(&[hs_jwk("k1", SECRET_1)]).await;
    server.cache_control("no-store");
    let jwks = server
        .jwks()
        .min_refresh(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let verifier = JwtVerifier::new(jwks.clone());
    let app = app(verifier.clone());
    assert_eq!(
        call(&app, &hs_token("k1", SECRET_1, "a")).await.0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server.hits() >= 4,
        "refreshing every 50 ms: {}",
        server.hits()
    );

    // The verifier and the app still hold the source: it keeps refreshing.
    drop(jwks);
    let hits = server.hits();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.hits() > hits);

    drop(app);
    drop(verifier);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = server.hits();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        server.hits(),
        hits,
        "no fetch after the last handle is gone"
    );
}

#[tokio::test]
async fn failed_first_fetch_starts_empty_with_503_then_recovers() {
    let server = Server::start(&[hs_jwk("k1", SECRET_1)]).await;
    server.mode(Mode::Status(503));
    let jwks = server
        .jwks()
        .retry_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    assert!(!jwks.is_ready());
    let verifier = JwtVerifier::new(jwks.clone());
    let app = app(verifier.clone());
    let token = hs_token("k1", SECRET_1, "alice");
    assert_eq!(call(&app, &token).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        verifier.verify(&token).unwrap_err(),
        VerifyError::KeysUnavailable
    );
    let err = jwks
        .wait_ready(Duration::from_millis(150))
        .await
        .unwrap_err();
    match err {
        JwksError::NotLoaded { last: Some(last) } => {
            assert!(matches!(*last, JwksError::Status(503)), "{last:?}");
        }
        other => panic!("{other:?}"),
    }

    // The endpoint comes back; the background retries pick the set up.
    server.mode(Mode::Serve);
    jwks.wait_ready(Duration::from_secs(3)).await.unwrap();
    assert_eq!(call(&app, &token).await, (StatusCode::OK, "alice".into()));
    assert_eq!(verifier.verify(&token).unwrap().id(), "alice");
}

#[tokio::test]
async fn bad_urls_and_debug_without_secrets() {
    for url in ["not a url", "ftp://example.com/jwks", "file:///etc/passwd"] {
        assert!(matches!(
            RemoteJwks::builder(url).build().await,
            Err(JwksError::Url)
        ));
    }
    let server = Server::start(&[hs_jwk("k1", SECRET_1)]).await;
    let url = format!("{}?client_secret=hunter2", server.url);
    let jwks = RemoteJwks::builder(url)
        .allow_hmac_keys(true)
        .build()
        .await
        .unwrap();
    assert!(jwks.is_ready());
    let shown = format!("{jwks:?}");
    assert!(shown.contains("k1"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        !shown.contains(&URL_SAFE_NO_PAD.encode(SECRET_1)),
        "{shown}"
    );
    assert!(!shown.contains("first secret"), "{shown}");
}

#[tokio::test]
async fn hmac_secrets_from_a_jwks_only_when_allowed() {
    let server = Server::start(&[hs_jwk("k1", SECRET_1), rsa_jwk()]).await;
    let jwks = RemoteJwks::builder(&server.url).build().await.unwrap();
    let verifier = JwtVerifier::new(jwks.clone());
    assert_eq!(verifier.verify(&rsa_token("rob")).unwrap().id(), "rob");
    assert!(verifier.verify(&hs_token("k1", SECRET_1, "alice")).is_err());
    assert_eq!(jwks.current().keys().len(), 1);

    // A set of nothing but secrets has no usable key: the source waits for a better one.
    let secrets_only = Server::start(&[hs_jwk("k1", SECRET_1)]).await;
    let jwks = RemoteJwks::builder(&secrets_only.url)
        .build()
        .await
        .unwrap();
    assert!(!jwks.is_ready());
    assert!(matches!(jwks.refresh().await, Err(JwksError::NoKeys)));
}
