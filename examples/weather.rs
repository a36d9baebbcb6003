//! A weather API behind keygate, `GET /v1/current.json?key=KEY&q=London`, with per-key rate
//! limits and short-lived JWTs minted for API keys.
//!
//! ```sh
//! cargo run --example weather                      # issues a demo key and prints curl commands
//! KEYGATE_ADDR=127.0.0.1:0 cargo run --example weather          # any free port
//! WEATHER_API_KEYS=key-one,key-two cargo run --example weather  # your own keys instead
//! RATE_LIMIT=100/min JWT_SECRET=... cargo run --example weather
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example weather --features redis
//! ```
//!
//! Configuration (all read by [`Config::from_vars`]; `RATE_LIMIT` and the JWT variables except
//! `JWT_KID` mean the same as for the gRPC example, `examples/grpc/main.rs`):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KEYGATE_ADDR` | `127.0.0.1:3000` | where to listen (`127.0.0.1:0` picks a free port) |
//! | `WEATHER_API_KEYS` | unset: issue one demo key | comma-separated keys to accept, in any format |
//! | `RATE_LIMIT` | `10/s` | each caller's quota, such as `5/s`, `100/min` or `100/min;burst=20` |
//! | `REDIS_URL` | unset: limits in memory | a Redis shared by every instance, for one limit across them (needs `--features redis`) |
//! | `REDIS_PREFIX` | `weather:rl:` | the prefix of the Redis keys the limiter uses |
//! | `JWT_SECRET` | 32 random bytes | the HS256 secret tokens are signed and verified with |
//! | `JWT_SUBJECT_CLAIM` | `sub` | the claim that names the caller (tokens minted elsewhere often use `userId`); minted tokens carry the id in `sub` and in this claim |
//! | `JWT_ISSUER`, `JWT_AUDIENCE` | unset: unchecked | the `iss` and `aud` minted tokens carry and accepted tokens must carry |
//! | `JWT_KID` | `weather-1` | the `kid` header of minted tokens; accepted tokens that name a key must name this one |
//! | `RUST_LOG` | `info,keygate=debug` | log filter (logs go to stderr) |
//!
//! A malformed value (an address, a quota, an empty `JWT_SECRET`, a `JWT_SUBJECT_CLAIM` such as
//! `exp` that tokens use for something else, a key that could never be accepted) stops the
//! service at start with `error: ...` and exit status 1. So does `REDIS_URL` in a build without
//! the `redis` feature: an operator who asks for one limit shared by several instances must not
//! silently get one limit per instance. With the feature, a Redis that does
//! not answer at start is an error too; once running, a Redis outage fails closed (503 after at
//! most the limiter's 50 ms timeout, keygate's default `FailurePolicy::Closed`: an outage never
//! lifts the limits), and the limiter recovers by itself when Redis is back.
//!
//! Routes, behind `AuthLayer` (API keys and JWTs) → `RateLimitLayer` (one limit per caller):
//!
//! - `GET /v1/current.json?q=CITY` (scope `weather:read`): deterministic fake weather for `CITY`;
//!   a missing or empty `q` is 400 with an `application/problem+json` body.
//! - `GET /v1/me`: the caller's [`Principal`] as JSON (id, kind, owner, scopes; never the key).
//! - `POST /v1/token`: exchanges an API key for a JWT, `{"access_token":"...",
//!   "token_type":"Bearer","expires_in":7200}`, signed with `JWT_SECRET` (HS256), valid 2 h, whose
//!   subject (in the `JWT_SUBJECT_CLAIM` claim) is the key's record id and whose `scope` is the
//!   key's scopes, with `kid` (`JWT_KID`) in its header. The token works on every route in place
//!   of the key. Only an API key can ask: a JWT caller gets 403 (a token that mints tokens would
//!   never have to expire).
//! - `GET /healthz`: 200, no credential, no rate limit.
//!
//! Every response of the routes behind the limiter carries `RateLimit-Policy` and `RateLimit`
//! (IETF draft 10); a caller over its quota gets 429 with `Retry-After` and a problem+json body
//! of type `https://iana.org/assignments/http-problem-types#quota-exceeded`. The limiter counts
//! by the principal's id, and a minted token's subject is its key's id: a key and the tokens
//! minted for it share one limit, so exchanging a key for tokens never raises its quota.
//!
//! The first line on stdout is `listening on http://ADDR`, so scripts and tests can find the port.
//! The pieces (`Config`, `keys`, `services`, `app`, `banner`, `serve`) are public so that
//! `tests/weather_example.rs` drives this very file over TCP.

use std::future::Future;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keygate::QuotaError;
use keygate::jwt::{IssueError, IssuedToken, JwtKey, JwtVerifier, TokenIssuer};
use keygate::key::{ApiKey, KeyFormat, KeyRecord};
use keygate::ratelimit::{MemoryLimiter, RateLimitLayer, RateLimiter};
use keygate::store::{MemoryStore, MemoryStoreError};
use keygate::{Principal, PrincipalKind, Quota, auth::AuthLayer, scope::RequireScopeLayer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// The address served when `KEYGATE_ADDR` is not set.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 3000);
/// The quota when `RATE_LIMIT` is not set.
pub const DEFAULT_RATE_LIMIT: &str = "10/s";
/// The Redis key prefix when `REDIS_PREFIX` is not set.
pub const DEFAULT_REDIS_PREFIX: &str = "weather:rl:";
/// The `kid` of minted tokens when `JWT_KID` is not set.
pub const DEFAULT_JWT_KID: &str = "weather-1";
/// How long a minted token lives: two hours, as existing clients expect (`expiresIn: "2h"`).
pub const TOKEN_TTL: Duration = Duration::from_secs(2 * 3600);
/// The prefix of the keys this service issues.
pub const KEY_PREFIX: &str = "wk_live_";
/// The scope `/v1/current.json` requires; every key of this example has it.
pub const SCOPE: &str = "weather:read";
/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "weather";
/// The longest key accepted.
const MAX_KEY_LEN: usize = 512;
/// The longest city name accepted in `q`.
const MAX_CITY_LEN: usize = 100;

/// The service's configuration. Every environment variable is read here, in
/// [`Config::from_vars`], and nowhere else.
#[derive(Clone)]
pub struct Config {
    /// Where to listen (`KEYGATE_ADDR`).
    pub addr: SocketAddr,
    /// Keys to accept (`WEATHER_API_KEYS`); when empty, one demo key is issued instead.
    pub api_keys: Vec<ApiKey>,
    /// Each caller's quota (`RATE_LIMIT`).
    pub rate_limit: Quota,
    /// The Redis shared by all instances (`REDIS_URL`); limits are kept in memory when `None`.
    pub redis_url: Option<String>,
    /// The prefix of the limiter's Redis keys (`REDIS_PREFIX`).
    pub redis_prefix: String,
    /// The HS256 secret tokens are signed and verified with (`JWT_SECRET`); random when `None`.
    pub jwt_secret: Option<Vec<u8>>,
    /// The claim naming the caller (`JWT_SUBJECT_CLAIM`), when not `sub`.
    pub jwt_subject_claim: Option<String>,
    /// The `iss` of minted tokens, required of accepted ones (`JWT_ISSUER`).
    pub jwt_issuer: Option<String>,
    /// The `aud` of minted tokens, required of accepted ones (`JWT_AUDIENCE`).
    pub jwt_audience: Option<String>,
    /// The `kid` of minted tokens and of the key that verifies them (`JWT_KID`).
    pub jwt_kid: String,
    /// The log filter (`RUST_LOG`).
    pub log_filter: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys, the secret and the Redis URL (which may hold a password) are never printed.
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("api_keys", &self.api_keys)
            .field("rate_limit", &self.rate_limit)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_prefix", &self.redis_prefix)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<set>"))
            .field("jwt_subject_claim", &self.jwt_subject_claim)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_kid", &self.jwt_kid)
            .field("log_filter", &self.log_filter)
            .finish()
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `KEYGATE_ADDR` is not `IP:PORT`.
    #[error("KEYGATE_ADDR={0:?} is not an address such as 127.0.0.1:3000")]
    Addr(String),
    /// A key in `WEATHER_API_KEYS` could never be accepted.
    #[error("WEATHER_API_KEYS: key #{position} {why}")]
    Key {
        /// Which key, counting from 1.
        position: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `RATE_LIMIT` is not a quota.
    #[error("RATE_LIMIT={0:?} is not a quota such as 10/s or 100/min: {1}")]
    RateLimit(String, #[source] QuotaError),
    /// `JWT_SECRET` is set but empty.
    #[error("JWT_SECRET is empty; unset it for a random secret")]
    EmptySecret,
    /// `JWT_SUBJECT_CLAIM` names a claim the token issuer sets itself.
    #[error("JWT_SUBJECT_CLAIM={0:?} names a claim tokens use for something else")]
    SubjectClaim(String),
    /// `REDIS_URL` is set, but this build cannot talk to Redis.
    #[cfg(not(feature = "redis"))]
    #[error(
        "REDIS_URL is set, but this build has no Redis support: run with `--features redis`, \
         or unset REDIS_URL to keep the limits in this process's memory"
    )]
    RedisFeature,
    /// The Redis at `REDIS_URL` cannot be used (a bad URL, or no answer at start).
    #[cfg(feature = "redis")]
    #[error("REDIS_URL: cannot use this Redis: {0}")]
    Redis(String),
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the configuration from `var`, which returns a variable's value by name (tests pass
    /// a closure over fixed values instead of changing the process environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        // A variable set to blanks counts as unset (but see JWT_SECRET).
        let set = |name| var(name).filter(|v: &String| !v.trim().is_empty());
        let addr = match set("KEYGATE_ADDR") {
            Some(a) => a.trim().parse().map_err(|_| ConfigError::Addr(a))?,
            None => DEFAULT_ADDR,
        };
        let api_keys = var("WEATHER_API_KEYS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(ApiKey::new)
            .collect();
        let rate_limit = set("RATE_LIMIT").unwrap_or_else(|| DEFAULT_RATE_LIMIT.to_owned());
        let rate_limit = rate_limit
            .trim()
            .parse()
            .map_err(|e| ConfigError::RateLimit(rate_limit.clone(), e))?;
        let redis_url = set("REDIS_URL").map(|u| u.trim().to_owned());
        #[cfg(not(feature = "redis"))]
        if redis_url.is_some() {
            return Err(ConfigError::RedisFeature);
        }
        let jwt_secret = match var("JWT_SECRET") {
            Some(s) if s.is_empty() => return Err(ConfigError::EmptySecret),
            Some(s) => Some(s.into_bytes()),
            None => None,
        };
        let jwt_subject_claim = set("JWT_SUBJECT_CLAIM")
            .map(|c| c.trim().to_owned())
            .filter(|c| c != "sub");
        if let Some(claim) = &jwt_subject_claim
            && TokenIssuer::is_reserved(claim)
        {
            return Err(ConfigError::SubjectClaim(claim.clone()));
        }
        Ok(Self {
            addr,
            api_keys,
            rate_limit,
            redis_url,
            redis_prefix: set("REDIS_PREFIX").unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned()),
            jwt_secret,
            jwt_subject_claim,
            jwt_issuer: set("JWT_ISSUER"),
            jwt_audience: set("JWT_AUDIENCE"),
            jwt_kid: set("JWT_KID")
                .map(|k| k.trim().to_owned())
                .unwrap_or_else(|| DEFAULT_JWT_KID.to_owned()),
            log_filter: var("RUST_LOG").unwrap_or_else(|| "info,keygate=debug".to_owned()),
        })
    }
}

/// The service's keys.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The store the layer looks keys up in. Clones share it: keys added to one are seen by all.
    pub store: MemoryStore,
    /// The key issued because `WEATHER_API_KEYS` was not set.
    pub demo_key: Option<ApiKey>,
}

/// The format of the keys this service issues: `wk_live_` + 32 base62 + 6 base62 of CRC32.
pub fn key_format() -> KeyFormat {
    KeyFormat::new(KEY_PREFIX).expect("a valid prefix")
}

/// Builds the key store: the keys of `config`, each with scope `weather:read`, or else one newly
/// issued demo key.
pub fn keys(config: &Config) -> Result<Keys, ConfigError> {
    let format = key_format();
    let store = MemoryStore::with_format(format.clone());
    if config.api_keys.is_empty() {
        let record = KeyRecord::new("demo", "demo").with_scopes([SCOPE]);
        let key = store
            .issue(record)
            .expect("an empty store has no duplicate");
        return Ok(Keys {
            store,
            demo_key: Some(key),
        });
    }
    for (i, key) in config.api_keys.iter().enumerate() {
        let position = i + 1;
        let bad = |why| ConfigError::Key { position, why };
        let text = key.expose_secret();
        // Refuse keys the layer would always turn away, rather than serve with a dead key.
        if text.len() > MAX_KEY_LEN {
            return Err(bad("is longer than 512 bytes"));
        }
        if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(bad("has control characters"));
        }
        if format.has_prefix(text) && format.check(text).is_err() {
            return Err(bad("starts with wk_live_ but fails that format's checksum"));
        }
        let record = KeyRecord::new(format!("key-{position}"), "weather-user").with_scopes([SCOPE]);
        store.insert(key, record).map_err(|e| match e {
            MemoryStoreError::DuplicateKey => bad("is listed twice"),
            _ => bad("could not be registered"),
        })?;
    }
    Ok(Keys {
        store,
        demo_key: None,
    })
}

/// Mints the tokens of `POST /v1/token`.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Signs with the service's secret; puts `JWT_ISSUER` and `JWT_AUDIENCE` in when set.
    pub issuer: TokenIssuer,
}

impl Tokens {
    /// A token for `principal`: its id as subject (in `sub` and in the configured subject
    /// claim), its scopes as `scope`, valid for [`TOKEN_TTL`].
    pub fn issue(&self, principal: &Principal) -> Result<IssuedToken, IssueError> {
        self.issuer.issue_for(principal)
    }
}

/// Where the rate limiter keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterBackend {
    /// In this process's memory: each instance limits on its own.
    Memory,
    /// In Redis: every instance that shares it shares one limit per caller.
    Redis,
}

/// Everything the routes are built from: keys, the JWT verifier and issuer, the rate limiter.
/// Cheap to clone; clones share the store and the limiter.
#[derive(Clone)]
pub struct Services {
    /// The API keys.
    pub keys: Keys,
    /// Verifies bearer JWTs (HS256, `JWT_SECRET`).
    pub verifier: JwtVerifier,
    /// Mints tokens the verifier accepts.
    pub tokens: Tokens,
    /// Decides, per caller, whether a request may go on.
    pub limiter: Arc<dyn RateLimiter>,
    /// Which limiter [`limiter`](Self::limiter) is.
    pub backend: LimiterBackend,
    /// Each caller's quota.
    pub rate_limit: Quota,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("keys", &self.keys)
            .field("verifier", &self.verifier)
            .field("tokens", &self.tokens)
            .field("backend", &self.backend)
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

/// Builds the services of `config`: the key store ([`keys`]), the JWT verifier and issuer (with
/// `JWT_SECRET`, or 32 random bytes), and the rate limiter (on Redis when `REDIS_URL` is set,
/// connecting to it now, else in memory).
pub async fn services(config: &Config) -> Result<Services, ConfigError> {
    let keys = keys(config)?;

    let secret = config.jwt_secret.clone().unwrap_or_else(|| {
        let mut secret = vec![0; 32];
        getrandom::fill(&mut secret).expect("the operating system's random generator");
        secret
    });
    let mut verifier = JwtVerifier::with_keys([JwtKey::hmac(&secret).kid(config.jwt_kid.as_str())]);
    let mut issuer = TokenIssuer::hmac(&secret)
        .kid(config.jwt_kid.clone())
        .ttl(TOKEN_TTL);
    if let Some(claim) = &config.jwt_subject_claim {
        verifier = verifier.subject_claim(claim);
        issuer = issuer.subject_claim(claim);
    }
    if let Some(iss) = &config.jwt_issuer {
        verifier = verifier.issuer([iss.clone()]);
        issuer = issuer.issuer(iss.clone());
    }
    if let Some(aud) = &config.jwt_audience {
        verifier = verifier.audience([aud.clone()]);
        issuer = issuer.audience(aud.clone());
    }

    let (limiter, backend): (Arc<dyn RateLimiter>, _) = match &config.redis_url {
        None => (Arc::new(MemoryLimiter::new()), LimiterBackend::Memory),
        #[cfg(feature = "redis")]
        Some(url) => {
            let limiter = keygate::ratelimit::RedisLimiter::connect(url)
                .await
                .map_err(|e| ConfigError::Redis(e.to_string()))?
                .prefix(config.redis_prefix.clone());
            (Arc::new(limiter), LimiterBackend::Redis)
        }
        // `Config::from_vars` refuses REDIS_URL in builds without the `redis` feature.
        #[cfg(not(feature = "redis"))]
        Some(_) => return Err(ConfigError::RedisFeature),
    };

    Ok(Services {
        keys,
        verifier,
        tokens: Tokens { issuer },
        limiter,
        backend,
        rate_limit: config.rate_limit,
    })
}

/// The routes: the API behind keygate's authentication and rate limit, `/healthz` open.
pub fn app(services: &Services) -> Router {
    let store = services.keys.store.clone();
    let format = store.format().clone();
    let auth = AuthLayer::new(store)
        .key_format(format)
        .max_key_len(MAX_KEY_LEN)
        .jwt(services.verifier.clone())
        .realm(REALM);
    let limit = RateLimitLayer::new(services.limiter.clone(), services.rate_limit);
    Router::new()
        .route(
            "/v1/current.json",
            get(current).route_layer(RequireScopeLayer::new(SCOPE)),
        )
        .route("/v1/me", get(me))
        .route("/v1/token", post(token))
        // `route_layer`: only the routes above need a credential, and unknown paths stay 404.
        // Outermost first: who is calling (a `Principal`), then may they call now (limited by
        // the principal's id).
        .route_layer(ServiceBuilder::new().layer(auth).layer(limit))
        .route("/healthz", get(healthz))
        .with_state(services.tokens.clone())
}

/// Writes the start-up banner: first `listening on http://ADDR`, then how to call the API.
pub fn banner(out: &mut impl Write, addr: SocketAddr, services: &Services) -> io::Result<()> {
    writeln!(out, "listening on http://{addr}")?;
    out.flush()?;
    // A server on 0.0.0.0 or [::] is reached through loopback.
    let host = match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        a => a,
    };
    // curl reads `[` in a URL as a glob unless told not to.
    let curl = if host.is_ipv6() { "curl -g" } else { "curl" };
    let base = format!("http://{host}");
    let keys = &services.keys;
    writeln!(out)?;
    // The key as a shell word: the demo key, quoted, or a variable the reader sets.
    let key_header = match &keys.demo_key {
        Some(key) => {
            let key = key.expose_secret();
            writeln!(out, "demo key (scope {SCOPE}): {key}")?;
            format!("'x-api-key: {key}'")
        }
        None => {
            let n = keys.store.len();
            writeln!(out, "{n} key(s) from WEATHER_API_KEYS, scope {SCOPE}")?;
            "\"x-api-key: $YOUR_KEY\"".to_owned()
        }
    };
    let backend = match services.backend {
        LimiterBackend::Memory => "in this process's memory",
        LimiterBackend::Redis => "in Redis, shared by every instance using it",
    };
    writeln!(
        out,
        "rate limit: {} per key, kept {backend}; tokens share their key's limit",
        services.rate_limit
    )?;
    writeln!(out)?;
    match &keys.demo_key {
        Some(key) => {
            let key = key.expose_secret();
            writeln!(out, "  # the key in the query string")?;
            writeln!(out, "  {curl} '{base}/v1/current.json?key={key}&q=London'")?;
            writeln!(out, "  # the key in the x-api-key header")?;
            writeln!(
                out,
                "  {curl} -H {key_header} '{base}/v1/current.json?q=Paris'"
            )?;
            writeln!(out, "  # the key as a bearer token")?;
            writeln!(
                out,
                "  {curl} -H 'Authorization: Bearer {key}' '{base}/v1/me'"
            )?;
        }
        None => {
            writeln!(out, "  # with YOUR_KEY set to one of the keys")?;
            writeln!(
                out,
                "  {curl} -H {key_header} '{base}/v1/current.json?q=London'"
            )?;
        }
    }
    let token_lifetime = TOKEN_TTL.as_secs() / 3600;
    writeln!(
        out,
        "  # exchange the key for a JWT (valid {token_lifetime} h)"
    )?;
    writeln!(out, "  {curl} -X POST -H {key_header} '{base}/v1/token'")?;
    writeln!(
        out,
        "  TOKEN=$({curl} -s -X POST -H {key_header} '{base}/v1/token' | {EXTRACT_TOKEN})"
    )?;
    writeln!(out, "  # the JWT in place of the key")?;
    writeln!(
        out,
        "  {curl} -H \"Authorization: Bearer $TOKEN\" '{base}/v1/me'"
    )?;
    writeln!(
        out,
        "  {curl} -H \"Authorization: Bearer $TOKEN\" '{base}/v1/current.json?q=Tokyo'"
    )?;
    writeln!(out)?;
    writeln!(out, "  # no key needed, no rate limit")?;
    writeln!(out, "  {curl} '{base}/healthz'")?;
    out.flush()
}

/// The banner's shell filter that takes the token out of `POST /v1/token`'s one-line JSON.
pub const EXTRACT_TOKEN: &str = r#"sed -E 's/.*"access_token":"([^"]+)".*/\1/'"#;

/// Serves `app` on `listener` until `shutdown` completes, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on Ctrl-C, or on SIGTERM on Unix.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_env()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log_filter)?)
        .with_writer(io::stderr)
        .init();
    if config.jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
        tracing::warn!("JWT_SECRET is shorter than 32 bytes; HS256 wants 32 random bytes or more");
    }
    let services = services(&config).await?;
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    banner(&mut io::stdout().lock(), listener.local_addr()?, &services)?;
    serve(listener, app(&services), shutdown_signal()).await?;
    eprintln!("shut down");
    Ok(())
}

// --- the API ---

/// `GET /v1/current.json` parameters. `key` is keygate's; serde ignores it here.
#[derive(Debug, Deserialize)]
struct CurrentParams {
    q: Option<String>,
}

async fn current(params: Result<Query<CurrentParams>, QueryRejection>) -> Response {
    let q = match params {
        Ok(Query(p)) => p.q.unwrap_or_default(),
        Err(_) => return problem(StatusCode::BAD_REQUEST, "The query string is malformed."),
    };
    let city = q.trim();
    if city.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "Parameter q is missing.");
    }
    if city.chars().count() > MAX_CITY_LEN || city.chars().any(char::is_control) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Parameter q must be a city name of at most 100 characters.",
        );
    }
    Json(Weather::for_city(city)).into_response()
}

async fn me(principal: Principal) -> Json<Principal> {
    Json(principal)
}

/// `POST /v1/token`: a JWT for the calling API key.
async fn token(State(tokens): State<Tokens>, principal: Principal) -> Response {
    if principal.kind() != PrincipalKind::ApiKey {
        // The caller is known, but its credential may not do this: 403, not 401.
        return problem(
            StatusCode::FORBIDDEN,
            "Tokens are issued for API keys only; call with your API key, not a token.",
        );
    }
    match tokens.issue(&principal) {
        Ok(issued) => {
            let mut res = Json(issued).into_response();
            // RFC 6749 §5.1: responses carrying tokens are not stored by caches.
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Err(e) => {
            tracing::error!(caller = principal.id(), error = %e, "token not issued");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The token could not be issued.",
            )
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// An RFC 9457 problem, shaped like keygate's own error bodies.
fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
}

/// The response of `/v1/current.json`, in the shape of WeatherAPI.com's.
#[derive(Debug, Serialize)]
struct Weather {
    location: Location,
    current: Current,
}

#[derive(Debug, Serialize)]
struct Location {
    name: String,
    lat: f64,
    lon: f64,
    tz_id: &'static str,
}

#[derive(Debug, Serialize)]
struct Current {
    temp_c: f64,
    temp_f: f64,
    is_day: u8,
    condition: Condition,
    wind_kph: f64,
    wind_dir: &'static str,
    pressure_mb: f64,
    humidity: u8,
    cloud: u8,
    feelslike_c: f64,
    uv: f64,
}

#[derive(Debug, Serialize)]
struct Condition {
    text: &'static str,
    code: u16,
}

const CONDITIONS: [(&str, u16); 6] = [
    ("Sunny", 1000),
    ("Partly cloudy", 1003),
    ("Cloudy", 1006),
    ("Mist", 1030),
    ("Light rain", 1183),
    ("Light snow", 1213),
];
const WIND_DIRS: [&str; 8] = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"];

impl Weather {
    /// Fake weather that depends only on the city's name (case-insensitively).
    fn for_city(city: &str) -> Self {
        let mut seed = fnv1a(city.to_lowercase().as_bytes());
        let mut next = |n: u64| {
            // xorshift64*: a fixed sequence per seed.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        };
        let tenths = |x: u64| x as f64 / 10.0;
        let temp_c = tenths(next(450)) - 10.0; // -10.0 ..= 34.9
        let (text, code) = CONDITIONS[next(CONDITIONS.len() as u64) as usize];
        let wind_kph = tenths(next(400));
        let lat = tenths(next(1400)) - 70.0;
        let lon = tenths(next(3600)) - 180.0;
        Self {
            location: Location {
                name: city.to_owned(),
                lat: round1(lat),
                lon: round1(lon),
                tz_id: "UTC",
            },
            current: Current {
                temp_c: round1(temp_c),
                temp_f: round1(temp_c * 9.0 / 5.0 + 32.0),
                is_day: 1,
                condition: Condition { text, code },
                wind_kph: round1(wind_kph),
                wind_dir: WIND_DIRS[next(WIND_DIRS.len() as u64) as usize],
                pressure_mb: 980.0 + next(50) as f64,
                humidity: 30 + next(70) as u8,
                cloud: next(101) as u8,
                feelslike_c: round1(temp_c - wind_kph / 20.0),
                uv: tenths(next(110)),
            },
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// FNV-1a: a hash that is the same on every platform and every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // xorshift needs a non-zero state.
    h | 1
}
