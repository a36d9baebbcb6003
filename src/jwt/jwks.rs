//! [`RemoteJwks`]: a [`KeySource`] over a remote JWK set URL (feature `jwks`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use http::HeaderMap;
use http::header::{ACCEPT, AGE, CACHE_CONTROL};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{JwtKey, JwtKeyError, KeySet, KeySource, Refetch};
use crate::MaybeReady;

/// How often the set is fetched when the response says nothing (`Cache-Control: max-age`).
const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The shortest refresh interval a `max-age` can ask for.
const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(60);
/// The longest refresh interval a `max-age` can ask for.
const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(60 * 60);
/// The least time between two fetches caused by tokens naming an unknown `kid`.
const DEFAULT_UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(30);
/// The first wait before fetching again after a failed fetch (it doubles on each failure, up to
/// the refresh interval).
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long a request whose token names an unknown `kid` waits for the fetch it causes or joins.
const DEFAULT_UNKNOWN_KID_WAIT: Duration = Duration::from_secs(1);
/// How long one fetch may take, connection and body included.
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response body accepted, in bytes.
const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// A JWK set could not be had from its URL.
///
/// Messages never carry the URL (which may hold credentials) nor the response body.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The URL given to [`RemoteJwks::builder`] is not an `http` or `https` URL.
    #[error("the JWKS URL is not a valid http(s) URL")]
    Url,
    /// The HTTP client could not be built.
    #[error("the HTTP client could not be built: {0}")]
    Client(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The request failed: connection, TLS, protocol.
    #[error("the JWKS request failed: {0}")]
    Request(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The endpoint answered with a status other than 200.
    #[error("the JWKS endpoint answered HTTP {0}")]
    Status(u16),
    /// The response body was larger than the limit.
    #[error("the JWKS response is larger than {0} bytes")]
    TooLarge(usize),
    /// The fetch took longer than the timeout.
    #[error("the JWKS request timed out")]
    Timeout,
    /// The body is not a JWK set.
    #[error("the JWKS response is not a JWK set: {0}")]
    Parse(#[source] Arc<JwtKeyError>),
    /// The set holds no key keygate can verify with.
    #[error("the JWK set holds no usable key")]
    NoKeys,
    /// [`RemoteJwks::wait_ready`] gave up before a set was loaded.
    #[error("no JWK set was loaded in time")]
    NotLoaded {
        /// Why the last fetch failed, if one did.
        #[source]
        last: Option<Box<JwksError>>,
    },
}

/// Keys from a remote JWK set URL (an identity provider's `jwks_uri`), kept fresh in the
/// background. Hand it to [`JwtVerifier::new`](super::JwtVerifier::new).
///
/// - The set is fetched when the source is built. If that fails, the source starts anyway with
///   no keys (tokens then get 503, [`Unavailable::JwtKeys`](crate::error::Unavailable::JwtKeys))
///   and keeps retrying; [`wait_ready`](Self::wait_ready) waits for the first good set.
/// - A task on the caller's tokio runtime fetches it again every
///   [`refresh_interval`](RemoteJwksBuilder::refresh_interval) (default 5 min), or as the
///   response's `Cache-Control: max-age` says, held between
///   [`min_refresh`](RemoteJwksBuilder::min_refresh) and
///   [`max_refresh`](RemoteJwksBuilder::max_refresh). The task ends when the last clone of the
///   `RemoteJwks` (the verifier's included) is dropped.
/// - A token naming a `kid` the set lacks makes it fetch at once — no more than once per
///   [`unknown_kid_interval`](RemoteJwksBuilder::unknown_kid_interval) (default 30 s); the
///   requests that arrive meanwhile share that fetch, and tokens naming unknown keys after it
///   are rejected without one. So a rotated-in key works as soon as the provider publishes it,
///   and random `kid`s cannot make keygate hammer the provider. A request waits for that fetch
///   at most [`unknown_kid_wait`](RemoteJwksBuilder::unknown_kid_wait) (default 1 s), then fails
///   with 503 if the fetch has not succeeded, so a provider that hangs cannot park requests.
/// - When a fetch fails (connection, timeout, status other than 200, a body over
///   [`max_body`](RemoteJwksBuilder::max_body), not a JWK set, no usable key), the last good
///   set stays in use. A key removed from the set stops verifying at the next fetch, even for
///   tokens in the verifier's cache.
/// - The URL is fixed here; nothing in a token (`jku`, `x5u`, `iss`, ...) can change it. (An
///   [`OidcProvider`](super::OidcProvider) changes it when its issuer's discovery document
///   names a new `jwks_uri`.)
///
/// Every key's algorithm comes from its JWK (`alg`, or its family's usual one); keys marked
/// `"use": "enc"` and keys that cannot be read are skipped, and so are HMAC secrets unless
/// [`allow_hmac_keys`](RemoteJwksBuilder::allow_hmac_keys) says otherwise.
///
/// ```no_run
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use keygate::{auth::AuthLayer, Principal, jwt::{JwtVerifier, RemoteJwks}};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let jwks = RemoteJwks::builder("https://auth.example.com/.well-known/jwks.json")
///     .refresh_interval(Duration::from_secs(10 * 60))
///     .build()
///     .await?;
/// // Optional: do not serve before the keys are there.
/// jwks.wait_ready(Duration::from_secs(5)).await?;
///
/// let verifier = JwtVerifier::new(jwks)
///     .issuer(["https://auth.example.com/"])
///     .audience(["weather"]);
/// let app: Router = Router::new()
///     .route("/me", get(|p: Principal| async move { p.id().to_owned() }))
///     .layer(AuthLayer::jwt_only(verifier));
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RemoteJwks {
    handle: Arc<Handle>,
}

/// What the handles share; dropping the last one stops the refresh task.
struct Handle {
    state: Arc<State>,
    task: AbortHandle,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options for a [`RemoteJwks`], from [`RemoteJwks::builder`].
#[must_use]
pub struct RemoteJwksBuilder {
    url: String,
    options: Options,
    client: Option<reqwest::Client>,
}

#[derive(Debug, Clone)]
struct Options {
    refresh_interval: Duration,
    min_refresh: Duration,
    max_refresh: Duration,
    unknown_kid_interval: Duration,
    unknown_kid_wait: Duration,
    retry_interval: Duration,
    timeout: Duration,
    max_body: usize,
    allow_hmac: bool,
}

/// Shared by the handles and the refresh task.
struct State {
    url: RwLock<reqwest::Url>,
    client: reqwest::Client,
    options: Options,
    keys: RwLock<Arc<KeySet>>,
    generation: AtomicU64,
    loaded: AtomicBool,
    /// Digest of the body the current set was read from: an unchanged body keeps the set (and
    /// its generation, so the verifier's cache stays warm).
    body_digest: Mutex<Option<[u8; 32]>>,
    schedule: Mutex<Schedule>,
    /// Wakes the task for a fetch asked for by [`Schedule::requested`].
    wake: Notify,
    /// The number of fetches finished.
    finished: watch::Sender<u64>,
}

/// Bookkeeping of fetches, all made one at a time by the refresh task (the first by `build`).
struct Schedule {
    /// Fetches started.
    started: u64,
    /// A fetch is asked for and has not started yet.
    requested: bool,
    /// The fetch (by number) that waiting requests wait for.
    target: u64,
    /// When an unknown `kid` last caused a fetch.
    last_unknown_kid: Option<Instant>,
    /// The result of the last finished fetch.
    last: Result<(), JwksError>,
}

pub(crate) struct Fetched {
    pub(crate) body: Vec<u8>,
    pub(crate) max_age: Option<Duration>,
}

impl RemoteJwks {
    /// Starts configuring a source of the JWK set at `url` (an `http` or `https` URL).
    pub fn builder(url: impl Into<String>) -> RemoteJwksBuilder {
        RemoteJwksBuilder {
            url: url.into(),
            options: Options {
                refresh_interval: DEFAULT_REFRESH_INTERVAL,
                min_refresh: DEFAULT_MIN_REFRESH,
                max_refresh: DEFAULT_MAX_REFRESH,
                unknown_kid_interval: DEFAULT_UNKNOWN_KID_INTERVAL,
                unknown_kid_wait: DEFAULT_UNKNOWN_KID_WAIT,
                retry_interval: DEFAULT_RETRY_INTERVAL,
                timeout: DEFAULT_FETCH_TIMEOUT,
                max_body: DEFAULT_MAX_BODY,
                allow_hmac: false,
            },
            client: None,
        }
    }

    /// Whether a JWK set has been loaded (after that, there always is one).
    pub fn is_ready(&self) -> bool {
        self.handle.state.loaded.load(Ordering::Acquire)
    }

    /// Waits until a JWK set is loaded, at most `timeout`. Fails with
    /// [`JwksError::NotLoaded`] (carrying the last fetch's error) if none was.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), JwksError> {
        let state = &self.handle.state;
        let mut finished = state.finished.subscribe();
        let loaded = tokio::time::timeout(timeout, async {
            // The sender lives in `state`, which outlives this borrow: `wait_for` cannot fail.
            let _ = finished
                .wait_for(|_| state.loaded.load(Ordering::Acquire))
                .await;
        })
        .await;
        if loaded.is_ok() || self.is_ready() {
            return Ok(());
        }
        Err(JwksError::NotLoaded {
            last: state.schedule().last.clone().err().map(Box::new),
        })
    }

    /// Fetches from `url` from now on (a discovery document named a new `jwks_uri`), starting
    /// with a fetch at once; the current set stays in use until it succeeds.
    pub(crate) fn set_url(&self, url: reqwest::Url) {
        let state = &self.handle.state;
        {
            let mut current = state.url.write().unwrap_or_else(PoisonError::into_inner);
            if *current == url {
                return;
            }
            *current = url;
        }
        let mut s = state.schedule();
        let target = s.started + 1;
        s.request(target);
        drop(s);
        state.wake.notify_one();
    }

    /// The URL the set is fetched from, without credentials or query.
    pub(crate) fn shown_url(&self) -> String {
        redacted(&self.handle.state.url())
    }

    /// Fetches the set now (not throttled; a fetch under way is finished first), and returns
    /// how that went. On failure the last good set stays in use.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        let state = &self.handle.state;
        let mut finished = state.finished.subscribe();
        let target = {
            let mut s = state.schedule();
            let target = s.started + 1;
            s.request(target);
            target
        };
        state.wake.notify_one();
        let _ = finished.wait_for(|&n| n >= target).await;
        state.schedule().last.clone()
    }
}

impl RemoteJwksBuilder {
    /// How often to fetch the set when the response carries no `Cache-Control: max-age`
    /// (default 5 min).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.options.refresh_interval = interval;
        self
    }

    /// The shortest interval a `max-age` (or `no-cache`, `no-store`) can ask for (default 1 min);
    /// raises the longest to it if needed.
    pub fn min_refresh(mut self, min: Duration) -> Self {
        self.options.min_refresh = min;
        self.options.max_refresh = self.options.max_refresh.max(min);
        self
    }

    /// The longest interval a `max-age` can ask for (default 1 h), so that a removed key does
    /// not stay trusted for long; lowers the shortest to it if needed.
    pub fn max_refresh(mut self, max: Duration) -> Self {
        self.options.max_refresh = max;
        self.options.min_refresh = self.options.min_refresh.min(max);
        self
    }

    /// The least time between two fetches caused by tokens naming a `kid` the set lacks
    /// (default 30 s).
    pub fn unknown_kid_interval(mut self, interval: Duration) -> Self {
        self.options.unknown_kid_interval = interval;
        self
    }

    /// How long a request whose token names a `kid` the set lacks waits for the fetch this
    /// causes (or joins), at most (default 1 s). When the fetch has not succeeded by then — the
    /// identity provider is slow, down or hangs — the request fails with 503 instead of waiting
    /// for the fetch's whole timeout; when it has, and the new set still lacks the `kid`, with
    /// 401. The fetch itself goes on in the background either way.
    pub fn unknown_kid_wait(mut self, wait: Duration) -> Self {
        self.options.unknown_kid_wait = wait;
        self
    }

    /// The wait before fetching again after a failure (default 5 s); it doubles with each
    /// failure in a row, up to the refresh interval.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.options.retry_interval = interval;
        self
    }

    /// How long one fetch may take, body included (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = timeout;
        self
    }

    /// The largest response body accepted (default 1 MiB).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.options.max_body = bytes;
        self
    }

    /// Also trusts HMAC secrets (`"kty": "oct"`) from the set; off by default. A JWK set
    /// is usually public, and anyone who can read a shared secret can sign tokens with it:
    /// turn this on only for an endpoint that is itself private (and served over `https`).
    pub fn allow_hmac_keys(mut self, allow: bool) -> Self {
        self.options.allow_hmac = allow;
        self
    }

    /// Fetches with this client (proxies, private CA roots, ...) instead of keygate's own
    /// (rustls with the web-PKI roots, redirects followed up to 5 times but never from `https`
    /// to `http`). The timeout and body limit above apply either way.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Fetches the set once and starts the refresh task on the current tokio runtime.
    ///
    /// A failed first fetch does not fail this: the source starts with no keys and keeps
    /// trying. It fails only for a URL that is not `http(s)` or a client that cannot be built.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn build(self) -> Result<RemoteJwks, JwksError> {
        let url = reqwest::Url::parse(&self.url).map_err(|_| JwksError::Url)?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(JwksError::Url);
        }
        let client = match self.client {
            Some(client) => client,
            None => default_client()?,
        };
        let state = Arc::new(State {
            url: RwLock::new(url),
            client,
            options: self.options,
            keys: RwLock::new(Arc::new(KeySet::new([]))),
            generation: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            body_digest: Mutex::new(None),
            schedule: Mutex::new(Schedule {
                started: 1,
                requested: false,
                target: 0,
                last_unknown_kid: None,
                last: Err(JwksError::NotLoaded { last: None }),
            }),
            wake: Notify::new(),
            finished: watch::Sender::new(0),
        });
        {
            let keys = state.keys.read().unwrap_or_else(PoisonError::into_inner);
            state.generation.store(keys.generation, Ordering::Release);
        }
        let result = state.fetch().await;
        let mut failures = 0;
        let delay = state.finish(1, result, &mut failures);
        let task = tokio::spawn(refresh(state.clone(), delay, failures)).abort_handle();
        Ok(RemoteJwks {
            handle: Arc::new(Handle { state, task }),
        })
    }
}

pub(crate) fn default_client() -> Result<reqwest::Client, JwksError> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() != "https"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade || attempt.previous().len() > 5 {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .redirect(policy)
        .user_agent(concat!("keygate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| JwksError::Client(Arc::new(e.without_url())))
}

/// The refresh task: one fetch at a time, on the interval or when asked.
async fn refresh(state: Arc<State>, mut delay: Duration, mut failures: u32) {
    loop {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = state.wake.notified() => {
                    if state.schedule().requested {
                        break;
                    }
                }
            }
        }
        let number = {
            let mut s = state.schedule();
            s.requested = false;
            s.started += 1;
            s.started
        };
        let result = state.fetch().await;
        delay = state.finish(number, result, &mut failures);
    }
}

impl Schedule {
    /// Asks for fetch number `target` (or a later one).
    fn request(&mut self, target: u64) {
        self.requested = true;
        self.target = self.target.max(target);
    }
}

impl State {
    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One GET of the URL, within the timeout and the body limit.
    async fn fetch(&self) -> Result<Fetched, JwksError> {
        let url = self.url().clone();
        let accept = "application/jwk-set+json, application/json";
        let o = &self.options;
        get_limited(&self.client, url, accept, o.timeout, o.max_body)
            .await
            .map_err(|e| match e {
                GetError::Request(e) => JwksError::Request(e),
                GetError::Status(status) => JwksError::Status(status),
                GetError::TooLarge(max) => JwksError::TooLarge(max),
                GetError::Timeout => JwksError::Timeout,
            })
    }

    fn url(&self) -> std::sync::RwLockReadGuard<'_, reqwest::Url> {
        self.url.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a fetched body the current set if it is a usable JWK set; returns the delay
    /// until the next fetch.
    fn apply(&self, fetched: Fetched) -> Result<Duration, JwksError> {
        let o = &self.options;
        let delay = fetched.max_age.map_or(o.refresh_interval, |age| {
            age.clamp(o.min_refresh, o.max_refresh.max(o.min_refresh))
        });
        let digest: [u8; 32] = Sha256::digest(&fetched.body).into();
        let mut last = self
            .body_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *last == Some(digest) {
            return Ok(delay);
        }
        let json = std::str::from_utf8(&fetched.body).map_err(|e| {
            JwksError::Parse(Arc::new(JwtKeyError::JwkSet(serde::de::Error::custom(e))))
        })?;
        let mut keys = JwtKey::from_jwk_set(json).map_err(|e| JwksError::Parse(Arc::new(e)))?;
        if !o.allow_hmac {
            let before = keys.len();
            keys.retain(|k| k.key.family() != jsonwebtoken::AlgorithmFamily::Hmac);
            if keys.len() < before {
                tracing::warn!(
                    target: "keygate",
                    skipped = before - keys.len(),
                    "JWK set holds HMAC secrets; skipped (see RemoteJwksBuilder::allow_hmac_keys)"
                );
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoKeys);
        }
        let set = KeySet::new(keys);
        let generation = set.generation;
        tracing::info!(
            target: "keygate",
            keys = set.keys.len(),
            kids = ?set.keys.iter().filter_map(JwtKey::kid_str).collect::<Vec<_>>(),
            "JWK set loaded"
        );
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        self.generation.store(generation, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
        *last = Some(digest);
        Ok(delay)
    }

    /// Records the end of fetch number `number`, wakes who waits for it, and returns the
    /// delay until the next one.
    fn finish(
        &self,
        number: u64,
        result: Result<Fetched, JwksError>,
        failures: &mut u32,
    ) -> Duration {
        let result = result.and_then(|fetched| self.apply(fetched));
        crate::metrics::jwks_refresh(result.is_ok());
        let o = &self.options;
        let delay = match &result {
            Ok(delay) => {
                if *failures > 0 {
                    tracing::info!(target: "keygate", failures = *failures, "JWK set fetched again after failures");
                }
                *failures = 0;
                *delay
            }
            Err(e) => {
                // One warning when fetching starts to fail, then quieter: a provider that stays
                // down must not fill the logs at the retry rate.
                if *failures == 0 {
                    tracing::warn!(target: "keygate", error = %e, "JWK set fetch failed; keeping the last good set");
                } else {
                    tracing::debug!(target: "keygate", error = %e, failures = *failures + 1, "JWK set fetch failed again");
                }
                let backoff = o
                    .retry_interval
                    .saturating_mul(1 << (*failures).min(16))
                    .min(o.refresh_interval.max(o.retry_interval));
                *failures = failures.saturating_add(1);
                backoff
            }
        };
        self.schedule().last = result.map(drop);
        self.finished.send_replace(number);
        delay
    }
}

/// Why a GET failed.
pub(crate) enum GetError {
    Request(Arc<dyn std::error::Error + Send + Sync>),
    Status(u16),
    TooLarge(usize),
    Timeout,
}

/// One GET of `url` answered 200, its body no larger than `max` bytes, all within `timeout`.
pub(crate) async fn get_limited(
    client: &reqwest::Client,
    url: reqwest::Url,
    accept: &'static str,
    timeout: Duration,
    max: usize,
) -> Result<Fetched, GetError> {
    let fetch = async {
        let request_error = |e: reqwest::Error| GetError::Request(Arc::new(e.without_url()));
        let mut response = client
            .get(url)
            .header(ACCEPT, accept)
            .send()
            .await
            .map_err(request_error)?;
        if response.status() != http::StatusCode::OK {
            return Err(GetError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > max as u64)
        {
            return Err(GetError::TooLarge(max));
        }
        let max_age = max_age(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > max {
                return Err(GetError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { body, max_age })
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or(Err(GetError::Timeout))
}

/// The freshness a response declares: `max-age` less `Age`; zero for `no-cache`/`no-store`.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for value in &headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let (name, arg) = match directive.split_once('=') {
                Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
                return Some(Duration::ZERO);
            }
            if name.eq_ignore_ascii_case("max-age")
                && let Some(secs) = arg.and_then(seconds)
            {
                max_age = Some(secs);
            }
        }
    }
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(seconds)
        .unwrap_or(0);
    max_age.map(|secs: u64| Duration::from_secs(secs.saturating_sub(age)))
}

/// Delta-seconds (RFC 9111 §1.2.2): digits only; too large a number is the largest.
fn seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

impl KeySource for RemoteJwks {
    fn current(&self) -> Arc<KeySet> {
        self.handle
            .state
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn current_generation(&self) -> u64 {
        self.handle.state.generation.load(Ordering::Acquire)
    }

    fn unknown_kid(&self, _kid: &str) -> Option<MaybeReady<Refetch>> {
        let state = &self.handle.state;
        let mut finished = state.finished.subscribe();
        let target = {
            let mut s = state.schedule();
            let done = *finished.borrow_and_update();
            if s.target <= done {
                // No fetch is due: start one, unless one was made for this reason lately.
                let now = Instant::now();
                if s.last_unknown_kid.is_some_and(|at| {
                    now.saturating_duration_since(at) < state.options.unknown_kid_interval
                }) {
                    // Too soon for another fetch. After a failed one, whether the provider has
                    // the key cannot be known: 503, as for the request that caused it; after a
                    // good one, the set is current and lacks the key: 401.
                    return s
                        .last
                        .is_err()
                        .then(|| MaybeReady::ready(Refetch::Unavailable));
                }
                s.last_unknown_kid = Some(now);
                let target = s.started + 1;
                s.request(target);
                state.wake.notify_one();
            }
            s.target
        };
        let wait = state.options.unknown_kid_wait;
        let state = state.clone();
        Some(MaybeReady::pending(async move {
            match tokio::time::timeout(wait, finished.wait_for(|&n| n >= target)).await {
                Ok(Ok(_)) if state.schedule().last.is_ok() => Refetch::Fetched,
                _ => Refetch::Unavailable,
            }
        }))
    }
}

/// The URL without user info or query, which may hold credentials.
pub(crate) fn redacted(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?…");
    }
    shown
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = &self.handle.state;
        let keys = self.current();
        let last = state.schedule().last.clone();
        f.debug_struct("RemoteJwks")
            .field("url", &redacted(&state.url()))
            .field("keys", &keys.keys())
            .field("generation", &keys.generation)
            .field("last_fetch", &last)
            .field("options", &state.options)
            .finish()
    }
}

impl fmt::Debug for RemoteJwksBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url =
            reqwest::Url::parse(&self.url).map_or_else(|_| "<invalid>".into(), |u| redacted(&u));
        f.debug_struct("RemoteJwksBuilder")
            .field("url", &url)
            .field("options", &self.options)
            .field("custom_client", &self.client.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cache_control() {
        let s = Duration::from_secs;
        assert_eq!(max_age(&headers(&[])), None);
        assert_eq!(
            max_age(&headers(&[("cache-control", "public, max-age=600")])),
            Some(s(600))
        );
        assert_eq!(
            max_age(&headers(&[("cache-control", "Max-Age=\"60\"")])),
            Some(s(60))
        );
        assert_eq!(
            max_age(&headers(&[
                ("cache-control", "max-age=600"),
                ("age", "100")
            ])),
            Some(s(500))
        );
        assert_eq!(
            max_age(&headers(&[("cache-control", "max-age=6"), ("age", "100")])),
            Some(s(0))
        );
        assert_eq!(max_age(&headers(&[("cache-control", "max-age=-1")])), None);
        assert_eq!(max_age(&headers(&[("cache-control", "max-age=1e9")])), None);
        assert_eq!(
            max_age(&headers(&[(
                "cache-control",
                "max-age=99999999999999999999999"
            )])),
            Some(s(u64::MAX))
        );
        assert_eq!(
            max_age(&headers(&[("cache-control", "max-age=600, no-cache")])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            max_age(&headers(&[
                ("cache-control", "public"),
                ("cache-control", "max-age=5")
            ])),
            Some(s(5))
        );
    }

    #[test]
    fn url_is_redacted() {
        let url =
            reqwest::Url::parse("https://user:pw@idp.example:8443/jwks?token=s3cret").unwrap();
        assert_eq!(redacted(&url), "https://idp.example:8443/jwks?…");
    }
}
