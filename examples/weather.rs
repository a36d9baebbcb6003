//! A weather API behind keygate, `GET /v1/current.json?key=KEY&q=London`, with per-key rate
//! limits and short-lived JWTs minted for API keys.
//!
//! ```sh
//! cargo run --example weather                      # issues a demo key and prints curl commands
//! KEYGATE_ADDR=127.0.0.1:0 cargo run --example weather          # any free port
//! WEATHER_API_KEYS=key-one,key-two cargo run --example weather  # your own keys instead
//! RATE_LIMIT=100/min JWT_SECRET=... cargo run --example weather
//! RATE_LIMIT='2/s;burst=2, 5/h;fixed' CONCURRENCY_LIMIT=2 cargo run --example weather
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example weather --features redis
//! # keys in PostgreSQL, shared by every instance, managed through /admin/keys
//! KEY_STORE=postgres://postgres@127.0.0.1:5432/test ADMIN_API_KEY=... \
//!   cargo run --example weather --features postgres,admin
//! ```
//!
//! Configuration (all read by [`Config::from_vars`]; the JWT variables except `JWT_KID` mean
//! the same as for the gRPC example, `examples/grpc/main.rs`):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KEYGATE_ADDR` | `127.0.0.1:3000` | where to listen (`127.0.0.1:0` picks a free port) |
//! | `WEATHER_API_KEYS` | unset: issue one demo key | comma-separated keys to accept, in any format |
//! | `RATE_LIMIT` | `10/s` | each caller's quota, such as `5/s`, `100/min` or `100/min;burst=20`, or a list of them that must all admit a request, such as `2/s;burst=2, 5/h;fixed` (`;fixed`: at most N per UTC-aligned window, reset at its boundary); see [`Limits`] |
//! | `RATE_LIMIT_SHADOW` | `0` | `1`: shadow mode, the limits (and credits and `CONCURRENCY_LIMIT`) are decided and reported in the headers as usual but never deny a request; a denial let through is logged at `INFO` |
//! | `CONCURRENCY_LIMIT` | unset: no limit | at most this many requests of one caller in flight at once (counted per process); one more is 429 |
//! | `LIMIT_BY` | unset: each caller | `owner`: the limits (and `CONCURRENCY_LIMIT`) count all the keys of one owner together, and the tokens minted for them (which carry their key's owner) |
//! | `REDIS_URL` | unset: limits in memory | a Redis shared by every instance, for one limit across them (needs `--features redis`) |
//! | `REDIS_PREFIX` | `weather:rl:` | the prefix of the Redis keys the limiter, and, next to it, the shared JWT revocations (`weather:rl-revoked:`) and the usage counts (`weather:rl-usage:`) use |
//! | `KEY_STORE` | unset or `memory`: keys in this process | `postgres://...` (needs `--features postgres`) or `redis://.../N` (needs `--features redis`): keys shared by every instance using it |
//! | `KEY_STORE_PREFIX` | `weather:keys:` | the prefix of the key store's Redis keys |
//! | `KEY_CACHE_TTL` | `30` | seconds a key looked up in a persistent store is served from this process's cache |
//! | `KEY_CACHE_STALE` | `300` | seconds past that a cached key keeps working while the store is down |
//! | `ADMIN_API_KEY` | unset: no admin API | the key that may call `/admin/keys` (as Bearer or `x-api-key`; needs `--features admin`) |
//! | `JWT_SECRET` | 32 random bytes | the HS256 secret tokens are signed and verified with |
//! | `JWT_SUBJECT_CLAIM` | `sub` | the claim that names the caller (tokens minted elsewhere often use `userId`); minted tokens carry the id in `sub` and in this claim |
//! | `JWT_ISSUER`, `JWT_AUDIENCE` | unset: unchecked | the `iss` and `aud` minted tokens carry and accepted tokens must carry |
//! | `JWT_KID` | `weather-1` | the `kid` header of minted tokens; accepted tokens that name a key must name this one |
//! | `JWT_REQUIRE_TYP` | unset: absent, `JWT`, `at+jwt` or `JOSE` | the `typ` header every accepted token must carry, such as `at+jwt` (minted tokens carry it) |
//! | `OIDC_ISSUERS` | unset: none | space-separated issuer URLs of OpenID providers whose tokens are accepted too, each discovered at start (`{issuer}/.well-known/openid-configuration`, whose `issuer` must be the same, then its keys); needs `--features jwks` |
//! | `OIDC_AUDIENCE` | required with `OIDC_ISSUERS` | the `aud` tokens of those issuers must carry |
//! | `OIDC_ALLOW_HTTP` | `0` | `1`: `http://` issuers and key sets are allowed (for tests on 127.0.0.1; never in production) |
//! | `TRUSTED_PROXIES` | unset: none | comma-separated addresses or CIDRs (`10.0.0.0/8, ::1`) of the proxies in front whose `X-Forwarded-For`/`Forwarded` is believed: the client of a request through them is the right-most address that is not one of them; from any other peer those headers change nothing |
//! | `STRIP_CREDENTIAL` | `0` | `1`: the credential a request authenticated with (the `Authorization` or `x-api-key` header, or the `key` query parameter) is removed before the handlers see it, the rest of the query kept byte for byte |
//! | `RESOURCE_METADATA` | `0` | `1`: serve the RFC 9728 protected-resource metadata at `/.well-known/oauth-protected-resource` (`resource`: `http://ADDR`, the address served; `authorization_servers`: the `OIDC_ISSUERS`; `scopes_supported`: the scopes the routes ask for) and point every `WWW-Authenticate` challenge to it with `resource_metadata="http://ADDR/.well-known/oauth-protected-resource"` |
//! | `METRICS` | `0` | `1`: keygate's metrics (see `keygate::metrics`) in the Prometheus text format at `GET /metrics`, without a credential or a rate limit (needs `--features metrics`) |
//! | `RUST_LOG` | `info,keygate=debug` | log filter (logs go to stderr) |
//!
//! A malformed value (an address, a quota or an item of a list of them, which the error names,
//! a `RATE_LIMIT_SHADOW` other than `0` or `1`, a `CONCURRENCY_LIMIT` that is not a positive
//! number, a `LIMIT_BY` other than `owner`, an empty `JWT_SECRET`, a `JWT_SUBJECT_CLAIM` such as
//! `exp` that tokens use for something else, a key that could never be accepted, an
//! `OIDC_ISSUERS` issuer that cannot be discovered, or names the issuer another already does)
//! stops the
//! service at start with `error: ...` and exit status 1. So does `REDIS_URL` in a build without
//! the `redis` feature: an operator who asks for one limit shared by several instances must not
//! silently get one limit per instance. With the feature, a Redis that does
//! not answer at start is an error too; once running, a Redis outage fails closed (503 after at
//! most the limiter's 50 ms timeout, keygate's default `FailurePolicy::Closed`: an outage never
//! lifts the limits), and the limiter recovers by itself when Redis is back.
//!
//! With `KEY_STORE` set, a store that cannot be reached at start is `error: ...` and exit 1;
//! once running, a store outage serves the keys this instance has cached (for `KEY_CACHE_TTL` +
//! `KEY_CACHE_STALE` seconds), answers 503 for others after at most the store's 1 s timeout,
//! and recovers by itself when the store is back. Keys of `WEATHER_API_KEYS` are added to the
//! store at start unless a record with their digest is there already (ids `key-1`, `key-2`, … by
//! position); a listed key revoked or rotated out through the admin API stays so across
//! restarts, while a deleted one is added again (revoke listed keys rather than delete them).
//! The demo key is issued only when `WEATHER_API_KEYS` is unset: as `demo` in memory, or in a
//! shared store as `demo-XXXXXXXX`, one per start, expiring after a day. A change through `/admin` on
//! one instance holds on every instance sharing the store within 2 s: each instance listens
//! for the store's change notifications (PostgreSQL `LISTEN/NOTIFY`, Redis pub/sub) and drops
//! what they name from its cache. With `REDIS_URL` set, a revoked or disabled key's minted tokens
//! stop working on every instance too, and usage counts are summed over the instances.
//!
//! Routes, behind `AuthLayer` (API keys and JWTs) → `RateLimitLayer` (`RATE_LIMIT` per caller,
//! or per owner with `LIMIT_BY=owner`, unless the key has a quota of its own; the key's
//! credits; `CONCURRENCY_LIMIT`):
//!
//! - `GET /v1/current.json?q=CITY` (scope `weather:read`): deterministic fake weather for `CITY`;
//!   a missing or empty `q` is 400 with an `application/problem+json` body.
//! - `GET /v1/slow?ms=M` (scope `weather:read`): answers `{"slept_ms": M}` after `M`
//!   milliseconds, `M` from 0 to 5000 (else 400 problem): a request that stays in flight, for
//!   trying `CONCURRENCY_LIMIT`.
//! - `GET /v1/forecast.json?q=CITY` (all of the scopes `weather:read` and `forecast:read`): the
//!   current weather and three days of forecast, `{"location": ..., "current": ...,
//!   "forecast": {"forecastday": [...]}}`; a caller lacking either is 403 `insufficient_scope`
//!   with `scope="weather:read forecast:read"` in its challenge.
//! - `GET /v1/alerts.json?q=CITY` (any of the scopes `alerts:read` or `weather:admin`): the
//!   city's weather alerts, `{"location": ..., "alerts": {"alert": [...]}}`.
//! - `GET /v1/echo`: `{"headers": [the names of the request headers this handler saw, lower
//!   case, each once], "query": "the raw query string it saw"}`; with `STRIP_CREDENTIAL=1` the
//!   credential is gone from both, and the rest of the query is unchanged byte for byte.
//! - `GET /v1/me`: the caller's [`Principal`] as JSON (id, kind, owner, scopes; never the key).
//! - `POST /v1/token`: exchanges an API key for a JWT, `{"access_token":"...",
//!   "token_type":"Bearer","expires_in":7200}`, signed with `JWT_SECRET` (HS256), valid 2 h, whose
//!   subject (in the `JWT_SUBJECT_CLAIM` claim) is the key's record id and whose `scope` is the
//!   key's scopes, with `kid` (`JWT_KID`) in its header, and the key's own quota (set through
//!   the admin API) in its `quota` claim. Revoking, disabling or deleting the key, or changing
//!   its scopes or quota, revokes the tokens minted for it before (mint a new one). The token works on every route in place
//!   of the key. Only an API key can ask: a JWT caller gets 403 (a token that mints tokens would
//!   never have to expire).
//! - `GET /v1/quota`, behind `AuthLayer` alone (reading it costs nothing and is never limited):
//!   what the caller has left, read with [`RateLimitLayer::peek`] and the key store's live count
//!   of credits, `{"policies": [{"name": "default", "limit": 10, "window": 1, "remaining": 10,
//!   "reset": 0}], "credits": 500}`. One entry per limit that applies to the caller, in order,
//!   named as in the `RateLimit` headers; `limit` is the requests admitted at once (`q` in the
//!   headers: a rate's burst, a fixed cap's limit), `remaining` the requests it admits now
//!   (`limit` for a limit not used yet); `window` (the limit's window) and `reset` (the time until the limit is full again,
//!   for a fixed cap until its window ends) are whole seconds, rounded up. `credits` is the
//!   key's remaining credits, or `null` when it has no budget of them.
//! - `GET /healthz`: 200, no credential, no rate limit.
//! - `GET /metrics` (only with `METRICS=1`): the Prometheus text format of keygate's metrics
//!   (`keygate_auth_requests_total`, ...), no credential, no rate limit.
//! - `GET /.well-known/oauth-protected-resource` (only with `RESOURCE_METADATA=1`): the RFC 9728
//!   metadata, `{"resource": "http://ADDR", "authorization_servers": [...], "scopes_supported":
//!   [...], "bearer_methods_supported": ["header"], "resource_name": "Weather API"}`, no
//!   credential, no rate limit.
//! - `/admin/keys…` (only with `ADMIN_API_KEY`): keygate's key-management API
//!   ([`keygate::admin`]), accepting that key and no other credential, not rate limited:
//!   `POST /admin/keys`, `GET /admin/keys?owner=S`, `GET /admin/keys/{id}`,
//!   `POST /admin/keys/{id}/revoke`, `POST /admin/keys/{id}/rotate`, `PATCH /admin/keys/{id}`,
//!   `DELETE /admin/keys/{id}`, `GET /admin/keys/{id}/usage`. A key's `quota` there takes the
//!   list form of `RATE_LIMIT` and replaces `RATE_LIMIT` for that key; its `credits`
//!   (`{"remaining": N, "refill": {"amount": N, "every": "1d"}}`) are spent one per request
//!   the limits admit for the key or for a token minted for it, from one count on every
//!   instance sharing the store, and a key whose credits are used up
//!   gets 429 (with `Retry-After` only when a refill is scheduled); its `tier` is shown and
//!   kept, and since this example maps no tier to limits, `RATE_LIMIT` applies to it. Its
//!   `allowed_ips` (`["203.0.113.0/24", "2001:db8::/32"]`, `null` for anywhere) are the networks
//!   it may be used from: from any other client address (the connection's peer, or through
//!   `TRUSTED_PROXIES` the forwarded client) the key gets 403 whose `detail` says the address
//!   is not allowed for this key.
//!
//! Every response of the routes behind the limiter carries `RateLimit-Policy` and `RateLimit`
//! (IETF draft 10); a caller over its quota gets 429 with `Retry-After` and a problem+json body
//! of type `https://iana.org/assignments/http-problem-types#quota-exceeded` whose `detail` names
//! the limit that denied (or says that the credits are used up, or that too many requests are
//! in flight). A list of limits is decided at once: a request one limit denies spends nothing of
//! the others. With a list, each limit's policy name is derived from its window (`"second"`,
//! `"hour"`, ...) unless it has one (`;name=burst`). The limiter counts by the principal's id,
//! and a minted token's subject is its key's id: a key and the tokens minted for it share one
//! limit, so exchanging a key for tokens never raises its quota (with `LIMIT_BY=owner`, see
//! above, they do not).
//!
//! The first line on stdout is `listening on http://ADDR`, so scripts and tests can find the port.
//! The pieces (`Config`, `keys`, `services`, `rate_limit_layer`, `app`, `banner`, `serve`) are
//! public so that `tests/weather_example.rs` drives this very file over TCP.

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
use keygate::client_addr::Networks;
use keygate::jwt::{
    IssueError, IssuedToken, JwtIssuers, JwtKey, JwtVerifier, MemoryRevocations,
    RevokeMintedTokens, TokenIssuer,
};
use keygate::key::{ApiKey, KeyFormat, KeyRecord};
use keygate::ratelimit::{
    MemoryLimiter, MemoryUsage, PolicyStatus, RateLimitLayer, RateLimiter, UsageStore, UsageTracker,
};
use keygate::resource::{BearerMethod, ProtectedResource};
use keygate::store::{CreditStore, KeyManager, KeyStore, ManageError, MemoryStore};
use keygate::{
    LimitBy, Limits, Principal, PrincipalKind, auth::AuthLayer, scope::RequireScopeLayer,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// The address served when `KEYGATE_ADDR` is not set.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 3000);
/// The quota when `RATE_LIMIT` is not set.
pub const DEFAULT_RATE_LIMIT: &str = "10/s";
/// The Redis key prefix when `REDIS_PREFIX` is not set.
pub const DEFAULT_REDIS_PREFIX: &str = "weather:rl:";
/// The Redis key prefix of the key store when `KEY_STORE_PREFIX` is not set.
pub const DEFAULT_KEY_STORE_PREFIX: &str = "weather:keys:";
/// How long a key from a persistent store is served from the cache, when `KEY_CACHE_TTL` is not
/// set.
pub const DEFAULT_KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// How long past that a cached key keeps working while the store is down, when
/// `KEY_CACHE_STALE` is not set.
pub const DEFAULT_KEY_CACHE_STALE: Duration = Duration::from_secs(300);
/// How often this instance adds its usage counts to the shared ones.
pub const USAGE_FLUSH: Duration = Duration::from_secs(1);
/// How long a demo key issued in a shared store works.
pub const DEMO_KEY_TTL: Duration = Duration::from_secs(86_400);
/// The shortest `ADMIN_API_KEY` accepted.
pub const MIN_ADMIN_KEY_LEN: usize = 16;
/// The `kid` of minted tokens when `JWT_KID` is not set.
pub const DEFAULT_JWT_KID: &str = "weather-1";
/// How long a minted token lives: two hours, as existing clients expect (`expiresIn: "2h"`).
pub const TOKEN_TTL: Duration = Duration::from_secs(2 * 3600);
/// The prefix of the keys this service issues.
pub const KEY_PREFIX: &str = "wk_live_";
/// The scope `/v1/current.json` requires; every key of this example has it.
pub const SCOPE: &str = "weather:read";
/// `/v1/forecast.json` requires all of these.
pub const FORECAST_SCOPES: [&str; 2] = [SCOPE, "forecast:read"];
/// `/v1/alerts.json` requires any of these.
pub const ALERTS_SCOPES: [&str; 2] = ["alerts:read", "weather:admin"];
/// Every scope the routes ask for, as the protected-resource metadata lists them.
pub const SCOPES_SUPPORTED: [&str; 4] = [SCOPE, "forecast:read", "alerts:read", "weather:admin"];
/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "weather";
/// The claim of minted tokens that carries their key's own quota.
pub const QUOTA_CLAIM: &str = "quota";
/// The claim of minted tokens that names their key's tier.
pub const TIER_CLAIM: &str = "tier";
/// The claim of minted tokens that names their key's owner (for `LIMIT_BY=owner`).
pub const OWNER_CLAIM: &str = "owner";
/// The claim of minted tokens that says they spend their key's credits.
pub const CREDITS_CLAIM: &str = "credits";
/// The claims minted tokens carry for the rate limits.
const LIMIT_CLAIMS: [&str; 4] = [QUOTA_CLAIM, TIER_CLAIM, OWNER_CLAIM, CREDITS_CLAIM];
/// The realm of the admin API.
pub const ADMIN_REALM: &str = "weather-admin";
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
    /// Each caller's limits (`RATE_LIMIT`): one quota or a list of them, all of which must
    /// admit a request.
    pub rate_limit: Limits,
    /// Whether the limits run in shadow (`RATE_LIMIT_SHADOW`): decided and reported in the
    /// headers, never enforced.
    pub rate_limit_shadow: bool,
    /// At most this many requests of one caller in flight (`CONCURRENCY_LIMIT`).
    pub concurrency_limit: Option<u32>,
    /// Whom the limits count (`LIMIT_BY`): each caller, or each owner across its keys.
    pub limit_by: LimitBy,
    /// The Redis shared by all instances (`REDIS_URL`); limits are kept in memory when `None`.
    pub redis_url: Option<String>,
    /// The prefix of the limiter's Redis keys (`REDIS_PREFIX`).
    pub redis_prefix: String,
    /// Where the keys live (`KEY_STORE`).
    pub key_store: KeyStoreConfig,
    /// The prefix of the key store's Redis keys (`KEY_STORE_PREFIX`).
    pub key_store_prefix: String,
    /// How long a key from a persistent store is served from the cache (`KEY_CACHE_TTL`).
    pub key_cache_ttl: Duration,
    /// How long past that a cached key keeps working while the store is down
    /// (`KEY_CACHE_STALE`).
    pub key_cache_stale: Duration,
    /// The key of the admin API (`ADMIN_API_KEY`); no admin API when `None`.
    pub admin_api_key: Option<ApiKey>,
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
    /// The `typ` every accepted token must carry, and minted tokens carry (`JWT_REQUIRE_TYP`).
    pub jwt_require_typ: Option<String>,
    /// OpenID providers whose tokens are accepted too (`OIDC_ISSUERS`).
    pub oidc_issuers: Vec<String>,
    /// The audience their tokens must carry (`OIDC_AUDIENCE`).
    pub oidc_audience: Option<String>,
    /// Whether `http://` issuers are allowed (`OIDC_ALLOW_HTTP`).
    pub oidc_allow_http: bool,
    /// The proxies whose `X-Forwarded-For` / `Forwarded` is believed (`TRUSTED_PROXIES`).
    pub trusted_proxies: Networks,
    /// Whether the protected-resource metadata is served and named in challenges
    /// (`RESOURCE_METADATA`).
    pub resource_metadata: bool,
    /// Whether the credential is removed before the handlers see it (`STRIP_CREDENTIAL`).
    pub strip_credential: bool,
    /// Whether `GET /metrics` serves keygate's metrics (`METRICS`).
    pub metrics: bool,
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
            .field("rate_limit_shadow", &self.rate_limit_shadow)
            .field("concurrency_limit", &self.concurrency_limit)
            .field("limit_by", &self.limit_by)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_prefix", &self.redis_prefix)
            .field("key_store", &self.key_store)
            .field("key_store_prefix", &self.key_store_prefix)
            .field("key_cache_ttl", &self.key_cache_ttl)
            .field("key_cache_stale", &self.key_cache_stale)
            .field(
                "admin_api_key",
                &self.admin_api_key.as_ref().map(|_| "<set>"),
            )
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<set>"))
            .field("jwt_subject_claim", &self.jwt_subject_claim)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_kid", &self.jwt_kid)
            .field("jwt_require_typ", &self.jwt_require_typ)
            .field("oidc_issuers", &self.oidc_issuers)
            .field("oidc_audience", &self.oidc_audience)
            .field("oidc_allow_http", &self.oidc_allow_http)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("resource_metadata", &self.resource_metadata)
            .field("strip_credential", &self.strip_credential)
            .field("metrics", &self.metrics)
            .field("log_filter", &self.log_filter)
            .finish()
    }
}

/// Where the keys live.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyStoreConfig {
    /// In this process's memory (`KEY_STORE` unset or `memory`).
    Memory,
    /// In PostgreSQL, at this URL.
    Postgres(String),
    /// In Redis, at this URL.
    Redis(String),
}

impl std::fmt::Debug for KeyStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.write_str(match self {
            Self::Memory => "Memory",
            Self::Postgres(_) => "Postgres(<url>)",
            Self::Redis(_) => "Redis(<url>)",
        })
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
    /// `RATE_LIMIT` is not a quota or a list of them; the error names the malformed item.
    #[error(
        "RATE_LIMIT={0:?} is not a quota such as 10/s, 100/min or \"2/s;burst=2, 5/h;fixed\": {1}"
    )]
    RateLimit(String, #[source] QuotaError),
    /// `RATE_LIMIT_SHADOW` is neither on nor off.
    #[error("RATE_LIMIT_SHADOW={0:?} is not 1 (shadow mode) or 0")]
    Shadow(String),
    /// `CONCURRENCY_LIMIT` is not a positive number of requests.
    #[error("CONCURRENCY_LIMIT={0:?} is not a number of requests from 1 to 4294967295")]
    Concurrency(String),
    /// `LIMIT_BY` names something the limits cannot be counted by.
    #[error("LIMIT_BY={0:?} is not owner; unset it to limit each caller on its own")]
    LimitBy(String),
    /// `JWT_SECRET` is set but empty.
    #[error("JWT_SECRET is empty; unset it for a random secret")]
    EmptySecret,
    /// `JWT_SUBJECT_CLAIM` names a claim the token issuer sets itself.
    #[error("JWT_SUBJECT_CLAIM={0:?} names a claim tokens use for something else")]
    SubjectClaim(String),
    /// `OIDC_ISSUERS` is set without `OIDC_AUDIENCE`: tokens minted for any service of those
    /// providers would be accepted.
    #[error(
        "OIDC_ISSUERS is set, but OIDC_AUDIENCE is not: set the audience their tokens must carry"
    )]
    OidcAudience,
    /// `OIDC_ISSUERS` names one issuer twice, or `JWT_ISSUER`.
    #[error("OIDC_ISSUERS names the issuer {0:?} twice (or JWT_ISSUER does too)")]
    OidcDuplicate(String),
    /// An issuer of `OIDC_ISSUERS` cannot be discovered.
    #[error("OIDC_ISSUERS: {0}")]
    Oidc(String),
    /// `OIDC_ISSUERS` is set, but this build cannot fetch discovery documents.
    #[error(
        "OIDC_ISSUERS is set, but this build cannot discover issuers: run with `--features jwks`"
    )]
    OidcFeature,
    /// `OIDC_ALLOW_HTTP` is neither on nor off.
    #[error("OIDC_ALLOW_HTTP={0:?} is not 1 (allow http:// issuers) or 0")]
    OidcAllowHttp(String),
    /// `TRUSTED_PROXIES` is not a list of addresses or CIDRs.
    #[error("TRUSTED_PROXIES: {0} is not an address or a CIDR such as 10.0.0.0/8")]
    TrustedProxies(String),
    /// `STRIP_CREDENTIAL` is neither on nor off.
    #[error("STRIP_CREDENTIAL={0:?} is not 1 (hide the credential from the handlers) or 0")]
    StripCredential(String),
    /// `RESOURCE_METADATA` is neither on nor off.
    #[error("RESOURCE_METADATA={0:?} is not 1 (serve the protected-resource metadata) or 0")]
    ResourceMetadata(String),
    /// `METRICS` is neither on nor off.
    #[error("METRICS={0:?} is not 1 (serve the metrics at /metrics) or 0")]
    Metrics(String),
    /// `METRICS=1`, but this build records no metrics.
    #[cfg(not(feature = "metrics"))]
    #[error(
        "METRICS=1, but this build records no metrics: run with `--features metrics`, or unset \
         METRICS"
    )]
    MetricsFeature,
    /// `JWT_REQUIRE_TYP` is not a media type such as `at+jwt`.
    #[error("JWT_REQUIRE_TYP={0:?} is not a token type such as at+jwt")]
    RequireTyp(String),
    /// `KEY_STORE` is neither `memory` nor a PostgreSQL or Redis URL.
    #[error("KEY_STORE is not `memory`, a postgres://... URL or a redis://... URL")]
    KeyStore,
    /// `KEY_STORE` names a store this build cannot talk to.
    #[error(
        "KEY_STORE names {0}, but this build has no {0} support: run with `--features {1}`, or \
         unset KEY_STORE to keep the keys in this process's memory"
    )]
    KeyStoreFeature(&'static str, &'static str),
    /// The store of `KEY_STORE` cannot be used (no answer at start, a failed migration).
    #[error("KEY_STORE: cannot use this store: {0}")]
    KeyStoreUnavailable(String),
    /// `KEY_CACHE_TTL` or `KEY_CACHE_STALE` is not a number of seconds.
    #[error("{0}={1:?} is not a number of seconds")]
    Seconds(&'static str, String),
    /// `ADMIN_API_KEY` is too short to be a secret, too long to be sent, or not text.
    #[error(
        "ADMIN_API_KEY must be {MIN_ADMIN_KEY_LEN} to {MAX_KEY_LEN} bytes without control \
         characters"
    )]
    AdminKey,
    /// `ADMIN_API_KEY` is set, but this build has no admin API.
    #[cfg(not(feature = "admin"))]
    #[error(
        "ADMIN_API_KEY is set, but this build has no admin API: run with `--features admin`, or \
         unset ADMIN_API_KEY"
    )]
    AdminFeature,
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
        let concurrency_limit = match set("CONCURRENCY_LIMIT") {
            None => None,
            Some(n) => match n.trim().parse::<u32>() {
                Ok(n @ 1..) => Some(n),
                _ => return Err(ConfigError::Concurrency(n)),
            },
        };
        let limit_by = match set("LIMIT_BY") {
            None => LimitBy::Caller,
            Some(by) if by.trim() == "owner" => LimitBy::Owner,
            Some(by) => return Err(ConfigError::LimitBy(by)),
        };
        let redis_url = set("REDIS_URL").map(|u| u.trim().to_owned());
        #[cfg(not(feature = "redis"))]
        if redis_url.is_some() {
            return Err(ConfigError::RedisFeature);
        }
        let key_store = match set("KEY_STORE").map(|s| s.trim().to_owned()) {
            None => KeyStoreConfig::Memory,
            Some(s) if s == "memory" => KeyStoreConfig::Memory,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                if cfg!(not(feature = "postgres")) {
                    return Err(ConfigError::KeyStoreFeature("PostgreSQL", "postgres"));
                }
                KeyStoreConfig::Postgres(url)
            }
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                if cfg!(not(feature = "redis")) {
                    return Err(ConfigError::KeyStoreFeature("Redis", "redis"));
                }
                KeyStoreConfig::Redis(url)
            }
            Some(_) => return Err(ConfigError::KeyStore),
        };
        let seconds = |name: &'static str, default: Duration| match set(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| ConfigError::Seconds(name, v)),
        };
        let key_cache_ttl = seconds("KEY_CACHE_TTL", DEFAULT_KEY_CACHE_TTL)?;
        let key_cache_stale = seconds("KEY_CACHE_STALE", DEFAULT_KEY_CACHE_STALE)?;
        let admin_api_key = match set("ADMIN_API_KEY") {
            None => None,
            Some(key)
                if key.trim().len() < MIN_ADMIN_KEY_LEN
                    || key.trim().len() > MAX_KEY_LEN
                    || key.trim().chars().any(char::is_control) =>
            {
                return Err(ConfigError::AdminKey);
            }
            Some(key) => Some(ApiKey::new(key.trim())),
        };
        #[cfg(not(feature = "admin"))]
        if admin_api_key.is_some() {
            return Err(ConfigError::AdminFeature);
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
            && (TokenIssuer::is_reserved(claim) || LIMIT_CLAIMS.contains(&claim.as_str()))
        {
            return Err(ConfigError::SubjectClaim(claim.clone()));
        }
        let oidc_issuers: Vec<String> = set("OIDC_ISSUERS")
            .unwrap_or_default()
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect();
        for (i, iss) in oidc_issuers.iter().enumerate() {
            if oidc_issuers[..i].contains(iss) || set("JWT_ISSUER").as_deref() == Some(iss.as_str())
            {
                return Err(ConfigError::OidcDuplicate(iss.clone()));
            }
        }
        let oidc_audience = set("OIDC_AUDIENCE").map(|a| a.trim().to_owned());
        if !oidc_issuers.is_empty() {
            if cfg!(not(feature = "jwks")) {
                return Err(ConfigError::OidcFeature);
            }
            if oidc_audience.is_none() {
                return Err(ConfigError::OidcAudience);
            }
        }
        let switch =
            |name, error: fn(String) -> ConfigError| match set(name).as_deref().map(str::trim) {
                None | Some("0") => Ok(false),
                Some("1") => Ok(true),
                Some(other) => Err(error(other.to_owned())),
            };
        let rate_limit_shadow = switch("RATE_LIMIT_SHADOW", ConfigError::Shadow)?;
        let oidc_allow_http = switch("OIDC_ALLOW_HTTP", ConfigError::OidcAllowHttp)?;
        let resource_metadata = switch("RESOURCE_METADATA", ConfigError::ResourceMetadata)?;
        let strip_credential = switch("STRIP_CREDENTIAL", ConfigError::StripCredential)?;
        let metrics = switch("METRICS", ConfigError::Metrics)?;
        #[cfg(not(feature = "metrics"))]
        if metrics {
            return Err(ConfigError::MetricsFeature);
        }
        let jwt_require_typ = match set("JWT_REQUIRE_TYP").map(|t| t.trim().to_owned()) {
            // A media type without its `application/` prefix is what a token's `typ` holds.
            Some(typ)
                if !typ
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                    || typ.eq_ignore_ascii_case("application/") =>
            {
                return Err(ConfigError::RequireTyp(typ));
            }
            typ => typ,
        };
        let trusted_proxies = match set("TRUSTED_PROXIES") {
            None => Networks::new(),
            Some(list) => list
                .parse()
                .map_err(|e: keygate::client_addr::InvalidNetwork| {
                    ConfigError::TrustedProxies(format!("{:?}", e.text()))
                })?,
        };
        Ok(Self {
            addr,
            api_keys,
            rate_limit,
            rate_limit_shadow,
            concurrency_limit,
            limit_by,
            redis_url,
            redis_prefix: set("REDIS_PREFIX").unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned()),
            key_store,
            key_store_prefix: set("KEY_STORE_PREFIX")
                .unwrap_or_else(|| DEFAULT_KEY_STORE_PREFIX.to_owned()),
            key_cache_ttl,
            key_cache_stale,
            admin_api_key,
            jwt_secret,
            jwt_subject_claim,
            jwt_issuer: set("JWT_ISSUER"),
            jwt_audience: set("JWT_AUDIENCE"),
            jwt_kid: set("JWT_KID")
                .map(|k| k.trim().to_owned())
                .unwrap_or_else(|| DEFAULT_JWT_KID.to_owned()),
            jwt_require_typ,
            oidc_issuers,
            oidc_audience,
            oidc_allow_http,
            trusted_proxies,
            resource_metadata,
            strip_credential,
            metrics,
            log_filter: var("RUST_LOG").unwrap_or_else(|| "info,keygate=debug".to_owned()),
        })
    }
}

/// Where the keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    /// In this process's memory.
    Memory,
    /// In PostgreSQL, shared by every instance using it.
    Postgres,
    /// In Redis, shared by every instance using it.
    Redis,
}

/// The service's keys.
#[derive(Clone)]
pub struct Keys {
    /// What the layer looks keys up in: the memory store, or the cache in front of a persistent
    /// store.
    pub store: Arc<dyn KeyStore>,
    /// The management side of the same keys. With a persistent store it goes through the cache,
    /// so that this instance sees its own changes at once (other instances hear of them through
    /// the store's notifications).
    pub manager: Arc<dyn KeyManager>,
    /// Where the keys' credits are counted and spent: the store itself, never a cache, so that
    /// every instance sharing it spends from one count.
    pub credits: Arc<dyn CreditStore>,
    /// Where the keys live.
    pub backend: StoreBackend,
    /// The key issued because `WEATHER_API_KEYS` was not set.
    pub demo_key: Option<ApiKey>,
    /// How many keys `WEATHER_API_KEYS` listed.
    pub listed: usize,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("backend", &self.backend)
            .field("demo_key", &self.demo_key)
            .field("listed", &self.listed)
            .finish_non_exhaustive()
    }
}

/// The format of the keys this service issues: `wk_live_` + 32 base62 + 6 base62 of CRC32.
pub fn key_format() -> KeyFormat {
    KeyFormat::new(KEY_PREFIX).expect("a valid prefix")
}

/// Refuses keys of `WEATHER_API_KEYS` that the layer would always turn away, and keys listed
/// twice, rather than serve with a dead key.
pub fn check_keys(config: &Config) -> Result<(), ConfigError> {
    let format = key_format();
    let mut seen = std::collections::HashSet::new();
    for (i, key) in config.api_keys.iter().enumerate() {
        let bad = |why| ConfigError::Key {
            position: i + 1,
            why,
        };
        let text = key.expose_secret();
        if text.len() > MAX_KEY_LEN {
            return Err(bad("is longer than 512 bytes"));
        }
        if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(bad("has control characters"));
        }
        if format.has_prefix(text) && format.check(text).is_err() {
            return Err(bad("starts with wk_live_ but fails that format's checksum"));
        }
        if !seen.insert(key.digest().to_hex()) {
            return Err(bad("is listed twice"));
        }
    }
    Ok(())
}

/// Opens the key store of `KEY_STORE` (in memory, or PostgreSQL or Redis behind a cache that
/// listens for changes made by other instances), then adds the keys of `WEATHER_API_KEYS` that
/// it does not hold yet, each with scope `weather:read` and the id `key-N` by position, or else
/// issues one demo key.
pub async fn keys(config: &Config) -> Result<Keys, ConfigError> {
    check_keys(config)?;
    let format = key_format();
    // `direct` is the store without the cache, for the start-up checks below: the cache may
    // remember a digest as unknown that another instance starting now has just added.
    let (store, direct, manager, credits, backend): OpenedStore = match &config.key_store {
        KeyStoreConfig::Memory => {
            let store = MemoryStore::with_format(format);
            (
                Arc::new(store.clone()),
                Arc::new(store.clone()),
                Arc::new(store.clone()),
                Arc::new(store),
                StoreBackend::Memory,
            )
        }
        #[cfg(feature = "postgres")]
        KeyStoreConfig::Postgres(url) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(1))
                .connect(url)
                .await
                .map_err(unavailable)?;
            let postgres = keygate::store::PostgresStore::new(pool).key_format(format);
            postgres.migrate().await.map_err(unavailable)?;
            let cached = cache(config, postgres.clone());
            postgres
                .watch(cached.invalidator())
                .await
                .map_err(unavailable)?;
            (
                Arc::new(cached.clone()),
                Arc::new(postgres.clone()),
                Arc::new(cached),
                Arc::new(postgres),
                StoreBackend::Postgres,
            )
        }
        #[cfg(feature = "redis")]
        KeyStoreConfig::Redis(url) => {
            let redis = keygate::store::RedisStore::connect(url)
                .await
                .map_err(unavailable)?
                .prefix(config.key_store_prefix.clone())
                .key_format(format);
            let cached = cache(config, redis.clone());
            redis
                .watch(cached.invalidator())
                .await
                .map_err(unavailable)?;
            (
                Arc::new(cached.clone()),
                Arc::new(redis.clone()),
                Arc::new(cached),
                Arc::new(redis),
                StoreBackend::Redis,
            )
        }
        // `Config::from_vars` refuses a store this build cannot talk to.
        #[cfg(not(feature = "postgres"))]
        KeyStoreConfig::Postgres(_) => {
            return Err(ConfigError::KeyStoreFeature("PostgreSQL", "postgres"));
        }
        #[cfg(not(feature = "redis"))]
        KeyStoreConfig::Redis(_) => return Err(ConfigError::KeyStoreFeature("Redis", "redis")),
    };

    if config.api_keys.is_empty() {
        let record = match backend {
            StoreBackend::Memory => KeyRecord::new("demo", "demo"),
            // One demo key per start: instances sharing a store each print their own, and the
            // store does not collect them for ever.
            _ => KeyRecord::new(format!("demo-{}", random_suffix()), "demo")
                .with_expiry(std::time::SystemTime::now() + DEMO_KEY_TTL),
        };
        let issued = manager
            .issue(record.with_scopes([SCOPE]))
            .await
            .map_err(unavailable)?;
        return Ok(Keys {
            store,
            manager,
            credits,
            backend,
            demo_key: Some(issued.key),
            listed: 0,
        });
    }
    for (i, key) in config.api_keys.iter().enumerate() {
        let position = i + 1;
        let digest = key.digest();
        // A record with this digest is kept as it is, whatever its status: a key revoked
        // through the admin API stays revoked across restarts.
        let known = |store: Arc<dyn KeyStore>| async move {
            store
                .lookup(&digest)
                .await
                .map(|found| found.is_some())
                .map_err(unavailable)
        };
        if known(direct.clone()).await? {
            continue;
        }
        let record = KeyRecord::new(format!("key-{position}"), "weather-user").with_scopes([SCOPE]);
        match manager.insert(digest, record).await {
            Ok(_) => {}
            // The digest is registered: added by another instance starting at the same time,
            // or a key rotated out (its grace over), which must stay out.
            Err(ManageError::DuplicateKey) => {}
            // Another instance added it first, or `key-N` has another key now (the listed key
            // was rotated, and its old digest purged since): the record in the store wins.
            Err(ManageError::DuplicateId) => {
                if !known(direct.clone()).await? {
                    tracing::warn!(
                        position,
                        "WEATHER_API_KEYS: key #{position} is not added: the store's record \
                         key-{position} has another key (rotated through the admin API?)"
                    );
                }
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(Keys {
        store,
        manager,
        credits,
        backend,
        demo_key: None,
        listed: config.api_keys.len(),
    })
}

/// An opened store: what the layer asks (through the cache), the store itself, the management
/// side (through the cache), the credits (in the store itself), and which store it is.
type OpenedStore = (
    Arc<dyn KeyStore>,
    Arc<dyn KeyStore>,
    Arc<dyn KeyManager>,
    Arc<dyn CreditStore>,
    StoreBackend,
);

/// The cache in front of a persistent store, as `KEY_CACHE_TTL` and `KEY_CACHE_STALE` say.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn cache<S: KeyStore>(config: &Config, store: S) -> keygate::store::CachedStore<S> {
    keygate::store::CachedStore::builder(store)
        .ttl(config.key_cache_ttl)
        .stale(config.key_cache_stale)
        .build()
}

/// A store error at start, as the operator sees it: the error and its causes.
fn unavailable(e: impl std::error::Error) -> ConfigError {
    ConfigError::KeyStoreUnavailable(with_causes(&e))
}

/// Eight random base62 characters.
fn random_suffix() -> String {
    let key = key_format().generate();
    key.expose_secret()[KEY_PREFIX.len()..KEY_PREFIX.len() + 8].to_owned()
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

/// What the API's handlers share: the token minter, the rate-limit layer (for `/v1/quota`'s
/// peek) and the keys' credits.
#[derive(Clone)]
struct Api {
    tokens: Tokens,
    limit: RateLimitLayer,
    credits: Arc<dyn CreditStore>,
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
    /// Verifies this service's own bearer JWTs (HS256, `JWT_SECRET`).
    pub verifier: JwtVerifier,
    /// Verifies every accepted token: this service's own, and those of the `OIDC_ISSUERS`,
    /// each by its issuer's verifier.
    pub issuers: JwtIssuers,
    /// Mints tokens the verifier accepts.
    pub tokens: Tokens,
    /// Decides, per caller, whether a request may go on.
    pub limiter: Arc<dyn RateLimiter>,
    /// Which limiter [`limiter`](Self::limiter) is.
    pub backend: LimiterBackend,
    /// Each caller's limits, unless its key has limits of its own.
    pub rate_limit: Limits,
    /// Whether the limits run in shadow: reported, never enforced.
    pub rate_limit_shadow: bool,
    /// At most this many requests of one caller in flight.
    pub concurrency_limit: Option<u32>,
    /// Whom the limits count: each caller, or each owner across its keys.
    pub limit_by: LimitBy,
    /// The keys' management side, which also revokes the tokens minted for a key when the key
    /// is revoked, disabled or deleted (on every instance with `REDIS_URL`).
    pub manager: Arc<dyn KeyManager>,
    /// This instance's usage counts, flushed every [`USAGE_FLUSH`] to
    /// [`usage_store`](Self::usage_store).
    pub usage: UsageTracker,
    /// The usage counts of every instance: in Redis with `REDIS_URL`, else in memory.
    pub usage_store: Arc<dyn UsageStore>,
    /// The key of the admin API.
    pub admin_key: Option<ApiKey>,
    /// The proxies whose forwarding headers name the client.
    pub trusted_proxies: Networks,
    /// The issuers of `OIDC_ISSUERS`, for the protected-resource metadata.
    pub oidc_issuers: Vec<String>,
    /// Whether the protected-resource metadata is served and named in challenges.
    pub resource_metadata: bool,
    /// Whether the credential is removed before the handlers see it.
    pub strip_credential: bool,
    /// What `GET /metrics` renders, with `METRICS=1`.
    #[cfg(feature = "metrics")]
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Stops the usage flush and flushes one last time, on shutdown.
    pub usage_flush: Arc<std::sync::Mutex<Option<keygate::ratelimit::FlushTask>>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("keys", &self.keys)
            .field("verifier", &self.verifier)
            .field("tokens", &self.tokens)
            .field("backend", &self.backend)
            .field("rate_limit", &self.rate_limit)
            .field("rate_limit_shadow", &self.rate_limit_shadow)
            .field("concurrency_limit", &self.concurrency_limit)
            .field("limit_by", &self.limit_by)
            .finish_non_exhaustive()
    }
}

/// Builds the services of `config`: the key store ([`keys`]), the JWT verifier and issuer (with
/// `JWT_SECRET`, or 32 random bytes), the rate limiter, the token revocations and the usage
/// counts (on Redis when `REDIS_URL` is set, connecting to it now, else in memory).
pub async fn services(config: &Config) -> Result<Services, ConfigError> {
    // First: the stores and layers register their metrics with the recorder installed when
    // they are built.
    #[cfg(feature = "metrics")]
    let metrics = config.metrics.then(prometheus);
    let keys = keys(config).await?;

    let secret = config.jwt_secret.clone().unwrap_or_else(|| {
        let mut secret = vec![0; 32];
        getrandom::fill(&mut secret).expect("the operating system's random generator");
        secret
    });
    // Minted tokens carry their key's own quota, tier, owner and whether it has credits, so
    // that a key and its tokens are limited alike and spend one budget; a change of a key's
    // scopes or quota revokes its older tokens (see `shared_state`).
    let mut verifier = JwtVerifier::with_keys([JwtKey::hmac(&secret).kid(config.jwt_kid.as_str())])
        .quota_claim(QUOTA_CLAIM)
        .tier_claim(TIER_CLAIM)
        .owner_claim(OWNER_CLAIM)
        .credits_claim(CREDITS_CLAIM);
    let mut issuer = TokenIssuer::hmac(&secret)
        .kid(config.jwt_kid.clone())
        .ttl(TOKEN_TTL)
        .quota_claim(QUOTA_CLAIM)
        .tier_claim(TIER_CLAIM)
        .owner_claim(OWNER_CLAIM)
        .credits_claim(CREDITS_CLAIM);
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
    if let Some(typ) = &config.jwt_require_typ {
        verifier = verifier.require_typ(typ);
        issuer = issuer.typ(typ.clone());
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

    let (verifier, manager, usage_store) = shared_state(config, &keys, verifier).await?;
    let mut issuers = JwtIssuers::from(verifier.clone());
    for oidc in oidc_verifiers(config).await? {
        issuers = issuers
            .with(oidc)
            .map_err(|e| ConfigError::Oidc(e.to_string()))?;
    }
    let usage = UsageTracker::new(100_000);
    let (flush, flushing) = usage.flush_every(usage_store.clone(), USAGE_FLUSH);
    tokio::spawn(flushing);

    Ok(Services {
        keys,
        verifier,
        issuers,
        tokens: Tokens { issuer },
        limiter,
        backend,
        rate_limit: config.rate_limit.clone(),
        rate_limit_shadow: config.rate_limit_shadow,
        concurrency_limit: config.concurrency_limit,
        limit_by: config.limit_by,
        manager,
        usage,
        usage_store,
        admin_key: config.admin_api_key.clone(),
        trusted_proxies: config.trusted_proxies.clone(),
        oidc_issuers: config.oidc_issuers.clone(),
        resource_metadata: config.resource_metadata,
        strip_credential: config.strip_credential,
        #[cfg(feature = "metrics")]
        metrics,
        usage_flush: Arc::new(std::sync::Mutex::new(Some(flush))),
    })
}

/// The Prometheus recorder of this process, installed on first use (every `Services` of a
/// process shares it: a process has one global recorder), with keygate's metrics described.
#[cfg(feature = "metrics")]
fn prometheus() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    HANDLE
        .get_or_init(|| {
            // Latencies as histograms with buckets (which add up across instances) rather than
            // summaries: from 100 µs to 2.5 s, around the stores' and Redis's timeouts.
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)
                .expect("buckets are given")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder installed by the embedding program wins; /metrics then shows
            // only what this one was given, which is nothing.
            if metrics::set_global_recorder(recorder).is_ok() {
                keygate::metrics::describe();
            }
            // The exporter's upkeep, which keeps what it holds between scrapes bounded.
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

/// The histogram buckets of `/metrics`' latencies, in seconds.
#[cfg(feature = "metrics")]
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// A verifier per issuer of `OIDC_ISSUERS`, each discovered now (its document fetched and
/// checked, its keys loaded): tokens with its `iss`, `OIDC_AUDIENCE` and, with
/// `JWT_REQUIRE_TYP`, that `typ`; scopes from `scope` or `scp`.
#[cfg(feature = "jwks")]
async fn oidc_verifiers(config: &Config) -> Result<Vec<JwtVerifier>, ConfigError> {
    let mut verifiers = Vec::new();
    for iss in &config.oidc_issuers {
        let fail = |e: &dyn std::fmt::Display| ConfigError::Oidc(format!("{iss}: {e}"));
        let provider = keygate::jwt::OidcProvider::builder(iss.as_str())
            .allow_http(config.oidc_allow_http)
            .discover()
            .await
            .map_err(|e| fail(&e))?;
        // Serve only once the provider's keys are here: a token of it must not get 503. The
        // first fetch was made by `discover`, so there is nothing to wait for.
        provider
            .jwks()
            .wait_ready(Duration::ZERO)
            .await
            .map_err(|e| fail(&with_causes(&e)))?;
        let mut verifier = provider.verifier();
        if let Some(aud) = &config.oidc_audience {
            verifier = verifier.audience([aud.clone()]);
        }
        if let Some(typ) = &config.jwt_require_typ {
            verifier = verifier.require_typ(typ);
        }
        verifiers.push(verifier);
    }
    Ok(verifiers)
}

/// `e` and the errors it was caused by, `: `-separated.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    message
}

/// Without the `jwks` feature there are none (`Config::from_vars` refuses `OIDC_ISSUERS`).
#[cfg(not(feature = "jwks"))]
async fn oidc_verifiers(config: &Config) -> Result<Vec<JwtVerifier>, ConfigError> {
    match config.oidc_issuers.is_empty() {
        true => Ok(Vec::new()),
        false => Err(ConfigError::OidcFeature),
    }
}

/// The JWT verifier checking revocations, the key manager that revokes a key's minted tokens
/// with the key, and the usage counts: shared through Redis with `REDIS_URL`, else this
/// process's.
async fn shared_state(
    config: &Config,
    keys: &Keys,
    verifier: JwtVerifier,
) -> Result<(JwtVerifier, Arc<dyn KeyManager>, Arc<dyn UsageStore>), ConfigError> {
    match &config.redis_url {
        #[cfg(feature = "redis")]
        Some(url) => {
            let redis = |e: &dyn std::fmt::Display| ConfigError::Redis(e.to_string());
            let revocations = keygate::jwt::RedisRevocations::builder(url.as_str())
                .prefix(beside(&config.redis_prefix, "revoked"))
                .connect()
                .await
                .map_err(|e| redis(&e))?;
            let usage = keygate::ratelimit::RedisUsage::connect(url)
                .await
                .map_err(|e| redis(&e))?
                .prefix(beside(&config.redis_prefix, "usage"));
            Ok((
                verifier.revocations(revocations.clone()),
                Arc::new(RevokeMintedTokens::new(keys.manager.clone(), revocations)),
                Arc::new(usage),
            ))
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => Err(ConfigError::RedisFeature),
        None => {
            let revocations = MemoryRevocations::new();
            Ok((
                verifier.revocations(revocations.clone()),
                Arc::new(RevokeMintedTokens::new(keys.manager.clone(), revocations)),
                Arc::new(MemoryUsage::new()),
            ))
        }
    }
}

/// A Redis namespace next to the limiter's, never inside it: the limiter's keys are its prefix
/// and a caller id (any text), so `weather:rl:` + `revoked:…` could be a caller's key, and
/// `weather:rl-revoked:…` cannot.
#[cfg(feature = "redis")]
fn beside(prefix: &str, name: &str) -> String {
    format!("{}-{name}:", prefix.trim_end_matches(':'))
}

/// The rate-limit layer of `services`: the default limits (a key's own quota wins), counted
/// per caller or per owner, in shadow or enforced, with the keys' credits and, when set, a
/// limit on requests in flight.
pub fn rate_limit_layer(services: &Services) -> RateLimitLayer {
    let mut limit = RateLimitLayer::new(services.limiter.clone(), services.rate_limit.clone())
        .limit_by(services.limit_by)
        .shadow(services.rate_limit_shadow)
        .credits(services.keys.credits.clone())
        .track_usage(services.usage.clone());
    if let Some(max) = services.concurrency_limit {
        limit = limit.concurrency(max);
    }
    limit
}

/// The protected-resource metadata of the service at `addr` (RFC 9728).
pub fn resource_metadata(services: &Services, addr: SocketAddr) -> ProtectedResource {
    let mut metadata = ProtectedResource::new(format!("http://{}", reachable(addr)))
        .resource_name("Weather API")
        .scopes_supported(SCOPES_SUPPORTED)
        .bearer_methods_supported([BearerMethod::Header]);
    if !services.oidc_issuers.is_empty() {
        metadata = metadata.authorization_servers(services.oidc_issuers.iter().cloned());
    }
    metadata
}

/// The routes of the service at `addr`: the API behind keygate's authentication and rate
/// limit, `/v1/quota` behind authentication alone, `/healthz` open, with `RESOURCE_METADATA`
/// the protected-resource metadata, and with `ADMIN_API_KEY` the admin API behind that key
/// alone.
pub fn app(services: &Services, addr: SocketAddr) -> Router {
    let metadata = services
        .resource_metadata
        .then(|| resource_metadata(services, addr));
    let mut auth = AuthLayer::new(services.keys.store.clone())
        .key_format(key_format())
        .max_key_len(MAX_KEY_LEN)
        .jwt(services.issuers.clone())
        .trusted_proxies(services.trusted_proxies.clone())
        .realm(REALM);
    if let Some(metadata) = &metadata {
        auth = auth.resource_metadata(metadata.metadata_url());
    }
    if services.strip_credential {
        auth = auth.strip_credential();
    }
    let limit = rate_limit_layer(services);
    let state = Api {
        tokens: services.tokens.clone(),
        limit: limit.clone(),
        credits: services.keys.credits.clone(),
    };
    let limited = Router::new()
        .route(
            "/v1/current.json",
            get(current).route_layer(RequireScopeLayer::new(SCOPE)),
        )
        .route(
            "/v1/slow",
            get(slow).route_layer(RequireScopeLayer::new(SCOPE)),
        )
        .route(
            "/v1/forecast.json",
            get(forecast).route_layer(RequireScopeLayer::all(FORECAST_SCOPES)),
        )
        .route(
            "/v1/alerts.json",
            get(alerts).route_layer(RequireScopeLayer::any(ALERTS_SCOPES)),
        )
        .route("/v1/me", get(me))
        .route("/v1/echo", get(echo))
        .route("/v1/token", post(token))
        // `route_layer`: only the routes above need a credential, and unknown paths stay 404.
        // Outermost first: who is calling (a `Principal`), then may they call now (limited by
        // the principal's id).
        .route_layer(ServiceBuilder::new().layer(auth.clone()).layer(limit));
    // Reading what is left costs nothing: authenticated, but not behind the limiter.
    let unlimited = Router::new()
        .route("/v1/quota", get(quota))
        .route_layer(auth);
    let mut api = limited
        .merge(unlimited)
        .route("/healthz", get(healthz))
        .with_state(state);
    #[cfg(feature = "metrics")]
    if let Some(handle) = services.metrics.clone() {
        api = api.route("/metrics", get(move || metrics_text(handle.clone())));
    }
    if let Some(metadata) = &metadata {
        api = api.route_service(metadata.metadata_path(), metadata.service());
    }
    #[cfg(feature = "admin")]
    if let Some(admin_key) = &services.admin_key {
        return api.nest(
            "/admin",
            admin(
                services,
                admin_key,
                metadata.as_ref().map(|m| m.metadata_url()),
            ),
        );
    }
    api
}

/// `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
#[cfg(feature = "metrics")]
async fn metrics_text(handle: metrics_exporter_prometheus::PrometheusHandle) -> Response {
    let body = handle.render();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// The admin API, behind an `AuthLayer` whose store holds the admin key and nothing else: a
/// weather key or a token is unknown there (401). No rate limit, no JWT.
#[cfg(feature = "admin")]
fn admin(services: &Services, admin_key: &ApiKey, metadata_url: Option<&str>) -> Router {
    let admins = MemoryStore::new();
    admins
        .insert(admin_key, KeyRecord::new("admin", "admin"))
        .expect("an empty store has no duplicate");
    let mut auth = AuthLayer::new(admins)
        .sources([
            keygate::credential::CredentialSource::bearer(),
            keygate::credential::CredentialSource::header("x-api-key"),
        ])
        .max_key_len(MAX_KEY_LEN)
        .realm(ADMIN_REALM);
    if let Some(url) = metadata_url {
        auth = auth.resource_metadata(url);
    }
    keygate::admin::Admin::new(services.manager.clone())
        .usage(services.usage_store.clone())
        .into_router()
        .layer(auth)
}

/// Writes the start-up banner: first `listening on http://ADDR`, then how to call the API.
pub fn banner(out: &mut impl Write, addr: SocketAddr, services: &Services) -> io::Result<()> {
    writeln!(out, "listening on http://{addr}")?;
    out.flush()?;
    let host = reachable(addr);
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
            let n = keys.listed;
            writeln!(out, "{n} key(s) from WEATHER_API_KEYS, scope {SCOPE}")?;
            "\"x-api-key: $YOUR_KEY\"".to_owned()
        }
    };
    let backend = match services.backend {
        LimiterBackend::Memory => "in this process's memory",
        LimiterBackend::Redis => "in Redis, shared by every instance using it",
    };
    let (per, share) = match services.limit_by {
        LimitBy::Owner => ("owner, across the owner's keys", "their key's owner's"),
        _ => ("key", "their key's"),
    };
    let shadow = if services.rate_limit_shadow {
        " (shadow: reported, never enforced)"
    } else {
        ""
    };
    writeln!(
        out,
        "rate limit: {} per {per}{shadow}, kept {backend}; tokens share {share} limit",
        services.rate_limit
    )?;
    if let Some(max) = services.concurrency_limit {
        writeln!(
            out,
            "concurrency limit: at most {max} request(s) in flight per {per}{shadow}"
        )?;
    }
    let store = match keys.backend {
        StoreBackend::Memory => "in this process's memory",
        StoreBackend::Postgres => "in PostgreSQL, shared by every instance using it",
        StoreBackend::Redis => "in Redis, shared by every instance using it",
    };
    writeln!(out, "keys: {store}")?;
    if services.admin_key.is_some() {
        writeln!(
            out,
            "admin API: {base}/admin/keys (with ADMIN_API_KEY as Bearer or x-api-key)"
        )?;
    }
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
    writeln!(
        out,
        "  # what the key has left of its limits (not counted against them)"
    )?;
    writeln!(out, "  {curl} -H {key_header} '{base}/v1/quota'")?;
    writeln!(out)?;
    writeln!(out, "  # no key needed, no rate limit")?;
    writeln!(out, "  {curl} '{base}/healthz'")?;
    out.flush()
}

/// Where a client reaches a server listening on `addr`: a server on 0.0.0.0 or [::] through
/// loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        a => a,
    }
}

/// The banner's shell filter that takes the token out of `POST /v1/token`'s one-line JSON.
pub const EXTRACT_TOKEN: &str = r#"sed -E 's/.*"access_token":"([^"]+)".*/\1/'"#;

/// Serves `app` on `listener` until `shutdown` completes, then lets open requests finish. Each
/// request carries its connection's peer address (`ConnectInfo`), which a key's IP allowlist
/// is checked against.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
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
pub async fn main() -> ExitCode {
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
    let addr = listener.local_addr()?;
    serve(listener, app(&services, addr), shutdown_signal()).await?;
    // The counts of the last second go to the usage store too.
    let flush = services.usage_flush.lock().ok().and_then(|mut f| f.take());
    if let Some(flush) = flush
        && let Err(e) = flush.shutdown().await
    {
        tracing::warn!(error = %e, "the last usage counts were not flushed");
    }
    eprintln!("shut down");
    Ok(())
}

// --- the API ---

/// `GET /v1/current.json` parameters. `key` is keygate's; serde ignores it here.
#[derive(Debug, Deserialize)]
struct CurrentParams {
    q: Option<String>,
}

/// The city of `q`, or the 400 that says what is wrong with it.
fn city(params: Result<Query<CurrentParams>, QueryRejection>) -> Result<String, Box<Response>> {
    let bad = |detail| Box::new(problem(StatusCode::BAD_REQUEST, detail));
    let q = match params {
        Ok(Query(p)) => p.q.unwrap_or_default(),
        Err(_) => return Err(bad("The query string is malformed.")),
    };
    let city = q.trim();
    if city.is_empty() {
        return Err(bad("Parameter q is missing."));
    }
    if city.chars().count() > MAX_CITY_LEN || city.chars().any(char::is_control) {
        return Err(bad(
            "Parameter q must be a city name of at most 100 characters.",
        ));
    }
    Ok(city.to_owned())
}

async fn current(params: Result<Query<CurrentParams>, QueryRejection>) -> Response {
    match city(params) {
        Ok(city) => Json(Weather::for_city(&city)).into_response(),
        Err(problem) => *problem,
    }
}

/// `GET /v1/forecast.json?q=CITY`: the current weather and three days of forecast.
async fn forecast(params: Result<Query<CurrentParams>, QueryRejection>) -> Response {
    let city = match city(params) {
        Ok(city) => city,
        Err(problem) => return *problem,
    };
    let weather = Weather::for_city(&city);
    let days: Vec<Value> = (1..=3u32)
        .map(|day| {
            let seed = fnv1a(format!("{}#{day}", city.to_lowercase()).as_bytes());
            let max = round1(weather.current.temp_c + (seed % 60) as f64 / 10.0);
            let min = round1(max - 4.0 - (seed % 30) as f64 / 10.0);
            let (text, code) = CONDITIONS[(seed % CONDITIONS.len() as u64) as usize];
            serde_json::json!({
                "day_offset": day,
                "day": {
                    "maxtemp_c": max,
                    "mintemp_c": min,
                    "condition": { "text": text, "code": code },
                },
            })
        })
        .collect();
    Json(serde_json::json!({
        "location": weather.location,
        "current": weather.current,
        "forecast": { "forecastday": days },
    }))
    .into_response()
}

/// `GET /v1/alerts.json?q=CITY`: the weather alerts for `CITY` (a fake city has none, unless
/// its weather is snow).
async fn alerts(params: Result<Query<CurrentParams>, QueryRejection>) -> Response {
    let city = match city(params) {
        Ok(city) => city,
        Err(problem) => return *problem,
    };
    let weather = Weather::for_city(&city);
    let alert: Vec<Value> = match weather.current.condition.code {
        1213 => vec![serde_json::json!({
            "headline": format!("Snow in {city}"),
            "severity": "Moderate",
            "event": "Snow",
        })],
        _ => Vec::new(),
    };
    Json(serde_json::json!({
        "location": weather.location,
        "alerts": { "alert": alert },
    }))
    .into_response()
}

async fn me(principal: Principal) -> Json<Principal> {
    Json(principal)
}

/// `GET /v1/echo`: the header names and the raw query string this handler saw.
async fn echo(headers: axum::http::HeaderMap, uri: axum::http::Uri) -> Json<Value> {
    let names: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
    Json(serde_json::json!({
        "headers": names,
        "query": uri.query().unwrap_or(""),
    }))
}

/// `POST /v1/token`: a JWT for the calling API key.
async fn token(State(api): State<Api>, principal: Principal) -> Response {
    let tokens = api.tokens;
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
        Err(IssueError::AddressBound) => problem(
            StatusCode::FORBIDDEN,
            "Tokens are not issued for keys limited to some client addresses: a token would \
             work from anywhere. Call with your API key.",
        ),
        Err(e) => {
            tracing::error!(caller = principal.id(), error = %e, "token not issued");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The token could not be issued.",
            )
        }
    }
}

/// The longest wait `GET /v1/slow` accepts, in milliseconds.
pub const MAX_SLOW_MS: u64 = 5000;

/// `GET /v1/slow` parameters.
#[derive(Debug, Deserialize)]
struct SlowParams {
    ms: Option<String>,
}

/// `GET /v1/slow?ms=M`: answers after `M` ms, so that a caller can have requests in flight.
async fn slow(params: Result<Query<SlowParams>, QueryRejection>) -> Response {
    let ms = match params {
        Ok(Query(p)) => p.ms.unwrap_or_default(),
        Err(_) => return problem(StatusCode::BAD_REQUEST, "The query string is malformed."),
    };
    let ms = match ms.trim().parse::<u64>() {
        Ok(ms) if ms <= MAX_SLOW_MS => ms,
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Parameter ms must be a whole number of milliseconds from 0 to 5000.",
            );
        }
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(serde_json::json!({ "slept_ms": ms })).into_response()
}

/// What `GET /v1/quota` answers: each limit that applies to the caller, and its key's
/// credits.
#[derive(Debug, Serialize)]
struct QuotaStatus {
    policies: Vec<PolicyJson>,
    /// The credits the caller's key has left; `None` when it has no budget of them.
    credits: Option<u64>,
}

/// One limit, with its times in whole seconds (rounded up, as in the `RateLimit` headers).
#[derive(Debug, Serialize)]
struct PolicyJson {
    name: String,
    limit: u32,
    window: u64,
    remaining: u32,
    reset: u64,
}

impl From<PolicyStatus> for PolicyJson {
    fn from(p: PolicyStatus) -> Self {
        Self {
            window: whole_seconds(p.window).max(1),
            reset: whole_seconds(p.reset),
            name: p.name,
            limit: p.limit,
            remaining: p.remaining,
        }
    }
}

/// Seconds, rounded up: a limit that resets in 0.2 s resets within 1 s.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `GET /v1/quota`: what the caller has left, read without spending any of it.
async fn quota(State(api): State<Api>, principal: Principal) -> Response {
    let policies = match api.limit.peek(&principal).await {
        Ok(policies) => policies,
        Err(e) => {
            tracing::warn!(caller = principal.id(), error = %e, "quota not read");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "The rate limits cannot be read now; retry later.",
            );
        }
    };
    let credits = match api.credits.credits(principal.id()).await {
        Ok(credits) => credits.map(|c| c.remaining),
        Err(e) => {
            tracing::warn!(caller = principal.id(), error = %e, "credits not read");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "The credits cannot be read now; retry later.",
            );
        }
    };
    let mut res = Json(QuotaStatus {
        policies: policies.into_iter().map(PolicyJson::from).collect(),
        credits,
    })
    .into_response();
    // The counts change with every request.
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
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
