//! Helpers shared by the HTTP integration tests: a real axum `Router`, driven with
//! `tower::ServiceExt::oneshot`, and key stores that count, fail or make the layer wait.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

pub mod conformance;
#[cfg(feature = "jwks")]
pub mod oidc_provider;
pub mod proxy;

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use keygate::Principal;
use keygate::clock::ManualClock;
use keygate::key::{ApiKey, KeyDigest, KeyRecord};
use keygate::ratelimit::MemoryLimiter;
use keygate::store::{KeyStore, Lookup, MemoryStore, StoreError};
use tower::{Service, ServiceExt};

/// The realm every test layer uses, so that headers can be compared exactly.
pub const REALM: &str = "R";

/// `WWW-Authenticate` for a request without a credential.
pub const CHALLENGE: &str = r#"Bearer realm="R""#;
/// `WWW-Authenticate` for a malformed, oversized or ambiguous credential.
pub const INVALID_REQUEST: &str = r#"Bearer realm="R", error="invalid_request""#;
/// `WWW-Authenticate` for an unknown, revoked, disabled or expired key.
pub const INVALID_TOKEN: &str = r#"Bearer realm="R", error="invalid_token""#;

/// A finished response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `detail` of a problem+json body.
    pub fn detail(&self) -> String {
        let json = self.json();
        json["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail in {json}"))
            .to_owned()
    }

    /// A header as text, if present exactly once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.headers.get_all(name).iter();
        let first = all.next()?;
        assert!(all.next().is_none(), "header {name} appears more than once");
        Some(first.to_str().expect("a visible ASCII header"))
    }

    /// The status and every header, for comparing two responses.
    pub fn head(&self) -> (StatusCode, Vec<(String, Vec<u8>)>) {
        let mut headers: Vec<_> = self
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        headers.sort();
        (self.status, headers)
    }

    /// Panics if the body or any header contains `secret`.
    pub fn assert_no_leak(&self, secret: &str) {
        assert!(!secret.is_empty());
        let body = String::from_utf8_lossy(&self.body);
        assert!(!body.contains(secret), "body leaks the key: {body}");
        for (name, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains(secret),
                "header {name} leaks the key: {value}"
            );
        }
    }
}

/// Sends `req` to `svc` once and collects the whole response.
pub async fn send<S, B>(svc: S, req: Request<Body>) -> Reply
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Debug,
    B: http_body::Body,
    B::Error: Debug,
{
    let res = svc.oneshot(req).await.expect("the service does not fail");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("a readable body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `method uri` with these headers and an empty body.
pub fn request_with(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Body::empty()).expect("a valid request")
}

/// `GET uri` with these headers.
pub fn get_with(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    request_with(Method::GET, uri, headers)
}

/// `POST uri` with these headers.
pub fn post_with(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    request_with(Method::POST, uri, headers)
}

/// A gRPC call: `POST uri` with `content-type: application/grpc`, then these headers.
pub fn grpc_at(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut all = vec![("content-type", "application/grpc")];
    all.extend_from_slice(headers);
    post_with(uri, &all)
}

/// `GET uri`.
pub fn get_req(uri: &str) -> Request<Body> {
    get_with(uri, &[])
}

/// `GET uri` with a header whose value is raw bytes (possibly not UTF-8).
pub fn get_raw(uri: &str, name: &str, value: &[u8]) -> Request<Body> {
    Request::get(uri)
        .header(
            name,
            http::HeaderValue::from_bytes(value).expect("a valid header value"),
        )
        .body(Body::empty())
        .expect("a valid request")
}

/// `GET uri` with `x-api-key: key`.
pub fn with_key_at(uri: &str, key: &str) -> Request<Body> {
    get_with(uri, &[("x-api-key", key)])
}

/// `GET /me` with `x-api-key: key`.
pub fn with_key(key: &str) -> Request<Body> {
    with_key_at("/me", key)
}

/// `GET uri` with `authorization: Bearer token`.
pub fn with_bearer(uri: &str, token: &str) -> Request<Body> {
    get_with(uri, &[("authorization", &format!("Bearer {token}"))])
}

/// The caller, as the handler sees it.
pub async fn me(p: Principal) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "id": p.id(),
        "owner": p.owner(),
        "scopes": p.scopes().iter().collect::<Vec<_>>(),
        "debug": format!("{p:?}"),
    }))
}

/// The caller's id, or `anonymous`.
pub async fn maybe(p: Option<Principal>) -> String {
    match p {
        Some(p) => format!("id={}", p.id()),
        None => "anonymous".to_owned(),
    }
}

/// `GET /me` (needs a `Principal`), `GET /maybe` (takes `Option<Principal>`), `GET /open` (no
/// extractor), `POST /write`.
pub fn routes() -> Router {
    Router::new()
        .route("/me", get(me))
        .route("/maybe", get(maybe))
        .route("/open", get(|| async { "open" }))
        .route("/write", post(|| async { "written" }))
}

/// A store that has issued a key for each record, in order.
pub fn store_with(records: impl IntoIterator<Item = KeyRecord>) -> (MemoryStore, Vec<ApiKey>) {
    let store = MemoryStore::new();
    let keys = records
        .into_iter()
        .map(|r| store.issue(r).expect("a fresh id"))
        .collect();
    (store, keys)
}

/// A store with one active key (record `key_1`, owner `acme`, scope `weather:read`).
pub fn store_with_key() -> (MemoryStore, ApiKey) {
    let (store, mut keys) =
        store_with([KeyRecord::new("key_1", "acme").with_scopes(["weather:read"])]);
    (store, keys.remove(0))
}

/// A `MemoryLimiter` on a `ManualClock` that only the test moves.
pub fn limiter() -> (MemoryLimiter, ManualClock) {
    let clock = ManualClock::new();
    (MemoryLimiter::builder().clock(clock.clone()).build(), clock)
}

/// A `MemoryLimiter` on a `ManualClock` set to `at`: for fixed-window caps, whose figures
/// depend on where in its (UTC-aligned) window the clock stands.
pub fn limiter_at(at: std::time::SystemTime) -> (MemoryLimiter, ManualClock) {
    let clock = ManualClock::at(at);
    (MemoryLimiter::builder().clock(clock.clone()).build(), clock)
}

/// The problem `type` of a 429 (RFC 9457's quota-exceeded).
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";
/// The problem `title` of a 429.
pub const QUOTA_TITLE: &str = "Request cannot be satisfied as assigned quota has been exceeded";

/// The 500 detail of a route that needs a `Principal` but has no `AuthLayer` in front of it.
pub const NO_PRINCIPAL: &str = "The server's authentication is misconfigured: no Principal in the \
                                request; is keygate's AuthLayer applied to this route?";

/// Checks an `application/problem+json` error response (RFC 9457) exactly: status, content type,
/// `WWW-Authenticate` (or its absence), and the four members of the body, with `type`
/// `about:blank` and the status's reason phrase as `title`.
#[track_caller]
pub fn assert_problem(reply: &Reply, status: u16, www_authenticate: Option<&str>, detail: &str) {
    let title = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .expect("a standard status");
    assert_typed_problem(
        reply,
        status,
        www_authenticate,
        "about:blank",
        title,
        detail,
    );
}

/// [`assert_problem`] for a problem of its own `type` and `title`.
#[track_caller]
pub fn assert_typed_problem(
    reply: &Reply,
    status: u16,
    www_authenticate: Option<&str>,
    problem_type: &str,
    title: &str,
    detail: &str,
) {
    assert_eq!(
        reply.status.as_u16(),
        status,
        "status; body: {:?}",
        reply.body
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "content-type"
    );
    assert_eq!(
        reply.header("www-authenticate"),
        www_authenticate,
        "www-authenticate"
    );
    assert_eq!(
        reply.json(),
        serde_json::json!({
            "type": problem_type,
            "title": title,
            "status": status,
            "detail": detail,
        })
    );
}

/// The body of every 401 for a key that is not accepted.
pub const NOT_VALID: &str = "The credential is not valid.";

/// Checks a trailers-only gRPC error: HTTP 200, `application/grpc`, this `grpc-status` and
/// `grpc-message`, no HTTP challenge, an empty body.
#[track_caller]
pub fn assert_grpc(reply: &Reply, code: &str, message: &str) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "gRPC errors are trailers-only"
    );
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(reply.header("grpc-status"), Some(code));
    assert_eq!(reply.header("grpc-message"), Some(message));
    assert!(reply.header("www-authenticate").is_none());
    assert!(reply.body.is_empty(), "{:?}", reply.body);
}

/// Wraps a store and counts how often it is asked.
#[derive(Clone)]
pub struct CountingStore<S> {
    pub inner: S,
    pub calls: Arc<AtomicUsize>,
}

impl<S> CountingStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl<S: KeyStore> KeyStore for CountingStore<S> {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.lookup(digest)
    }
}

/// A store that asks a `MemoryStore` and answers only after yielding to the runtime, as a
/// database-backed store would: the layer has to wait for it.
#[derive(Clone)]
pub struct SlowStore(pub MemoryStore);

impl KeyStore for SlowStore {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        let mut now = self.0.lookup(digest);
        let answer = now.take_ready().expect("memory lookups are ready");
        Lookup::pending(async move {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            answer
        })
    }
}

/// A store that fails at once.
#[derive(Clone, Copy)]
pub struct DownStore;

impl KeyStore for DownStore {
    fn lookup(&self, _: &KeyDigest) -> Lookup {
        Lookup::ready(Err(StoreError::unavailable("connection refused")))
    }
}

/// A store that fails after making the layer wait.
#[derive(Clone, Copy)]
pub struct SlowDownStore;

impl KeyStore for SlowDownStore {
    fn lookup(&self, _: &KeyDigest) -> Lookup {
        Lookup::pending(async {
            tokio::task::yield_now().await;
            Err(StoreError::Timeout)
        })
    }
}

/// Counts the requests that reach a handler.
#[derive(Clone, Default)]
pub struct Hits(pub Arc<AtomicUsize>);

impl Hits {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// A handler without extractors that counts its calls and answers `answer`.
    pub fn counted<T>(
        &self,
        answer: T,
    ) -> impl Fn() -> std::future::Ready<T> + Clone + Send + Sync + use<T>
    where
        T: Clone + Send + Sync + 'static,
    {
        let hits = self.clone();
        move || {
            hits.0.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer.clone())
        }
    }

    /// A router whose `GET /me` counts its calls and answers with the caller's id.
    pub fn router(&self) -> Router {
        let hits = self.clone();
        Router::new().route(
            "/me",
            get(move |p: Principal| {
                let hits = hits.clone();
                async move {
                    hits.0.fetch_add(1, Ordering::SeqCst);
                    p.id().to_owned()
                }
            }),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Captured logs

/// What `tracing` logs while [`LogCapture::install`]'s guard lives, as text. For test binaries of
/// one test: tracing caches per call site whether anyone listens, for the whole process.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Captures every event up to `level` on this thread until the guard is dropped.
    pub fn install(level: tracing::Level) -> (Self, tracing::subscriber::DefaultGuard) {
        let capture = Self::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (capture, tracing::subscriber::set_default(subscriber))
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The lines logged at `level` that contain `needle`.
    pub fn count(&self, level: &str, needle: &str) -> usize {
        self.text()
            .lines()
            .filter(|l| l.contains(level) && l.contains(needle))
            .count()
    }
}

/// The HMAC secret of the test verifiers made with `JwtKey::hmac(HS256_SECRET).kid("hs-1")`
/// (test-only).
#[cfg(feature = "jwt")]
pub const HS256_SECRET: &[u8] = b"keygate tests: a test-only HMAC secret of 48 b";

/// An HS256 token for `sub` with kid `hs-1`, signed with [`HS256_SECRET`], valid for five
/// minutes from now.
#[cfg(feature = "jwt")]
pub fn hs256_token(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("hs-1".to_owned());
    let claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + 300});
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS256_SECRET),
    )
    .unwrap()
}
