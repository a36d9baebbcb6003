//! What keygate counts and times, through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`).
//!
//! keygate records; the application picks the exporter (Prometheus, OpenTelemetry, StatsD) and
//! installs its recorder, as with any crate on the facade. **Install it before building the
//! layers and stores**: they register their counters once, when they are built, with the
//! recorder installed then, so that a request counts without looking anything up. Without a
//! recorder, recording costs a request about 10 ns (`benches/overhead.rs`, group `metrics`);
//! without the feature, nothing.
//!
//! | metric | type | labels | what it counts |
//! |---|---|---|---|
//! | `keygate_auth_requests_total` | counter | `outcome`, `kind` | requests an `AuthLayer` judged |
//! | `keygate_ratelimit_decisions_total` | counter | `decision`, `policy` | requests a `RateLimitLayer` judged |
//! | `keygate_store_lookup_seconds` | histogram | `store`, `outcome` | lookups of a PostgreSQL or Redis key store |
//! | `keygate_store_cache_total` | counter | `result` | lookups a `CachedStore` answered |
//! | `keygate_jwks_refresh_total` | counter | `result` | fetches of a remote JWKS |
//! | `keygate_redis_seconds` | histogram | `op`, `outcome` | Redis commands on a request's path |
//! | `keygate_events_dropped_total` | counter | — | verification events a full channel dropped |
//!
//! The labels and their values:
//!
//! - `outcome` of `keygate_auth_requests_total`: `authenticated`, `anonymous` (no credential,
//!   optional layer), `missing` (no credential), `invalid_request` (a malformed or oversized
//!   credential, two credentials), `unavailable` (the store or the JWT keys could not answer),
//!   `address_not_allowed` (a key used from outside its IP allowlist), or why the credential was
//!   refused as [`InvalidCredential::as_str`](crate::error::InvalidCredential::as_str) names it:
//!   `unknown_key`, `malformed_key`, `revoked_key`, `disabled_key`, `expired_key`,
//!   `token_expired`, `invalid_token`.
//! - `kind`: `api_key`, `jwt`, or `none` when the request had no credential, or one the layer
//!   could not tell the kind of (an oversized one, two).
//! - `decision`: `allowed`, `limited`, `shadow_limited` (a shadow limit would have refused; the
//!   request went through), `unavailable` (the limiter or the credit store could not answer).
//! - `policy`: the list of limits that decided: `default`, a tier's name, `key` (the key's own
//!   quota), `override`, `concurrency` (requests in flight), `credits` (the key's credits).
//! - `store`: `postgres`, `redis`; `outcome` of a lookup: `found`, `not_found`, `error`,
//!   `timeout`. (An in-memory store answers within the request's first poll and is not timed.)
//! - `result` of the cache: `hit`, `negative_hit` (a remembered unknown key), `stale` (served
//!   while a refresh runs), `miss` (the lookup waited for the store).
//! - `result` of a JWKS fetch: `ok`, `error` (unreachable, an HTTP error status, a body too
//!   large or not a key set).
//! - `op` of Redis: `rate_limit`, `key_lookup`, `credits`; `outcome`: `ok`, `error`, `timeout`.
//!
//! No label ever holds a secret, a key id, a subject or anything else a client chooses: every
//! value above is one of a closed set, or a tier name from the service's configuration, so the
//! number of series stays bounded.
//!
//! ```
//! # #[cfg(feature = "metrics")] {
//! // With a recorder of the application's choice installed, name and describe the metrics:
//! keygate::metrics::describe();
//! assert_eq!(keygate::metrics::AUTH_REQUESTS_TOTAL, "keygate_auth_requests_total");
//! # }
//! ```

#[cfg(feature = "metrics")]
use ::metrics::{Key, Label, Level, Metadata};

/// Requests an `AuthLayer` judged, by `outcome` and `kind`.
pub const AUTH_REQUESTS_TOTAL: &str = "keygate_auth_requests_total";
/// Requests a `RateLimitLayer` judged, by `decision` and `policy`.
pub const RATELIMIT_DECISIONS_TOTAL: &str = "keygate_ratelimit_decisions_total";
/// How long lookups of a PostgreSQL or Redis key store took, in seconds, by `store` and
/// `outcome`.
pub const STORE_LOOKUP_SECONDS: &str = "keygate_store_lookup_seconds";
/// Lookups a `CachedStore` answered, by `result`.
pub const STORE_CACHE_TOTAL: &str = "keygate_store_cache_total";
/// Fetches of a remote JWKS, by `result`.
pub const JWKS_REFRESH_TOTAL: &str = "keygate_jwks_refresh_total";
/// How long Redis commands on a request's path took, in seconds, by `op` and `outcome`.
pub const REDIS_SECONDS: &str = "keygate_redis_seconds";
/// Verification events dropped because the channel of a background consumer was full.
pub const EVENTS_DROPPED_TOTAL: &str = "keygate_events_dropped_total";

/// Describes keygate's metrics (their units and meaning) to the installed recorder; call it
/// once after installing one. Recording works without it; exporters use the descriptions for
/// `# HELP` lines and units.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        AUTH_REQUESTS_TOTAL,
        Unit::Count,
        "Requests an AuthLayer judged, by outcome and credential kind."
    );
    describe_counter!(
        RATELIMIT_DECISIONS_TOTAL,
        Unit::Count,
        "Requests a RateLimitLayer judged, by decision and policy."
    );
    describe_histogram!(
        STORE_LOOKUP_SECONDS,
        Unit::Seconds,
        "Lookups of a PostgreSQL or Redis key store, by store and outcome."
    );
    describe_counter!(
        STORE_CACHE_TOTAL,
        Unit::Count,
        "Lookups a CachedStore answered, by result."
    );
    describe_counter!(
        JWKS_REFRESH_TOTAL,
        Unit::Count,
        "Fetches of a remote JWKS, by result."
    );
    describe_histogram!(
        REDIS_SECONDS,
        Unit::Seconds,
        "Redis commands on a request's path, by operation and outcome."
    );
    describe_counter!(
        EVENTS_DROPPED_TOTAL,
        Unit::Count,
        "Verification events dropped because a consumer's channel was full."
    );
}

#[cfg(feature = "metrics")]
static METADATA: Metadata<'static> = Metadata::new("keygate", Level::INFO, Some(module_path!()));

/// Adds one to the counter of a key built once.
#[cfg(feature = "metrics")]
#[inline]
fn increment(key: &Key) {
    ::metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
}

/// Records `seconds` in the histogram of a key built once.
#[cfg(all(feature = "metrics", any(feature = "postgres", feature = "redis")))]
#[inline]
fn record(key: &Key, seconds: f64) {
    ::metrics::with_recorder(|r| r.register_histogram(key, &METADATA).record(seconds));
}

/// Counters registered once, when the layer or store that records them is built: counting on a
/// request's path is then one branch (no recorder) or one call of the recorder's handle, with no
/// lookup of the recorder or of the key.
#[derive(Clone)]
pub(crate) struct Counters<const N: usize> {
    #[cfg(feature = "metrics")]
    handles: std::sync::Arc<[::metrics::Counter; N]>,
}

impl<const N: usize> Counters<N> {
    /// Registers the counters of `keys` with the recorder installed now.
    #[cfg(feature = "metrics")]
    fn register(keys: [&Key; N]) -> Self {
        let handles = ::metrics::with_recorder(|r| keys.map(|k| r.register_counter(k, &METADATA)));
        Self {
            handles: std::sync::Arc::new(handles),
        }
    }

    /// Adds one to counter `i`.
    #[inline]
    fn increment(&self, i: usize) {
        #[cfg(feature = "metrics")]
        if let Some(counter) = self.handles.get(i) {
            counter.increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = i;
    }
}

impl<const N: usize> std::fmt::Debug for Counters<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

/// A key of `name` with literal labels, built at compile time: recording it allocates nothing.
#[cfg(feature = "metrics")]
macro_rules! static_key {
    ($name:expr; $($label:literal => $value:literal),+) => {{
        static LABELS: &[Label] = &[$(Label::from_static_parts($label, $value)),+];
        static KEY: Key = Key::from_static_parts($name, LABELS);
        &KEY
    }};
}

/// Which credential a request was judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CredentialKind {
    ApiKey,
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))]
    Jwt,
    /// None, or one whose kind was not told (oversized, two).
    None,
}

/// What an `AuthLayer` decided, as `keygate_auth_requests_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthOutcome {
    Authenticated(CredentialKind),
    Anonymous,
    Missing,
    InvalidRequest,
    Unavailable(CredentialKind),
    AddressNotAllowed,
    Refused(crate::error::InvalidCredential),
}

impl AuthOutcome {
    /// The outcome of a refusal with `error`.
    pub(crate) fn of_error(error: &crate::error::AuthError) -> Self {
        use crate::error::{AuthError, Unavailable};
        match error {
            AuthError::MissingCredential => Self::Missing,
            AuthError::InvalidCredential(why) => Self::Refused(*why),
            AuthError::Forbidden(_) => Self::AddressNotAllowed,
            AuthError::Unavailable(Unavailable::KeyStore(_)) => {
                Self::Unavailable(CredentialKind::ApiKey)
            }
            #[cfg(feature = "jwt")]
            AuthError::Unavailable(Unavailable::JwtKeys) => Self::Unavailable(CredentialKind::Jwt),
            AuthError::Unavailable(_) => Self::Unavailable(CredentialKind::None),
            _ => Self::InvalidRequest,
        }
    }

    /// The outcome's place in [`AuthCounters`].
    fn index(self) -> usize {
        use crate::error::InvalidCredential as Why;
        use CredentialKind::{ApiKey, Jwt, None};
        match self {
            Self::Authenticated(ApiKey) => 0,
            Self::Authenticated(Jwt) => 1,
            Self::Authenticated(None) => 2,
            Self::Anonymous => 3,
            Self::Missing => 4,
            Self::InvalidRequest => 5,
            Self::Unavailable(ApiKey) => 6,
            Self::Unavailable(Jwt) => 7,
            Self::Unavailable(None) => 8,
            Self::AddressNotAllowed => 9,
            Self::Refused(Why::UnknownKey) => 10,
            Self::Refused(Why::MalformedKey) => 11,
            Self::Refused(Why::RevokedKey) => 12,
            Self::Refused(Why::DisabledKey) => 13,
            Self::Refused(Why::ExpiredKey) => 14,
            Self::Refused(Why::TokenExpired) => 15,
            Self::Refused(Why::InvalidToken) => 16,
        }
    }
}

/// The `keygate_auth_requests_total` counters of an `AuthLayer`, one per outcome (in the order
/// of [`AuthOutcome::index`]).
#[derive(Clone, Debug)]
pub(crate) struct AuthCounters(Counters<17>);

impl AuthCounters {
    /// Registers the counters with the recorder installed now.
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            macro_rules! auth {
                ($outcome:literal, $kind:literal) => {
                    static_key!(AUTH_REQUESTS_TOTAL; "outcome" => $outcome, "kind" => $kind)
                };
            }
            Self(Counters::register([
                auth!("authenticated", "api_key"),
                auth!("authenticated", "jwt"),
                auth!("authenticated", "none"),
                auth!("anonymous", "none"),
                auth!("missing", "none"),
                auth!("invalid_request", "none"),
                auth!("unavailable", "api_key"),
                auth!("unavailable", "jwt"),
                auth!("unavailable", "none"),
                auth!("address_not_allowed", "api_key"),
                auth!("unknown_key", "api_key"),
                auth!("malformed_key", "api_key"),
                auth!("revoked_key", "api_key"),
                auth!("disabled_key", "api_key"),
                auth!("expired_key", "api_key"),
                auth!("token_expired", "jwt"),
                auth!("invalid_token", "jwt"),
            ]))
        }
        #[cfg(not(feature = "metrics"))]
        Self(Counters {})
    }

    /// Counts a decision of the layer.
    #[inline]
    pub(crate) fn count(&self, outcome: AuthOutcome) {
        self.0.increment(outcome.index());
    }
}

/// What a `RateLimitLayer` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitDecision {
    Allowed,
    Limited,
    ShadowLimited,
    Unavailable,
}

impl LimitDecision {
    /// The decision's name, as the `decision` label and the span field carry it.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::ShadowLimited => "shadow_limited",
            Self::Unavailable => "unavailable",
        }
    }

    /// Records the decision in the current span's `keygate.ratelimit.decision` field, when the
    /// span declares it (as it does `keygate.auth.outcome`).
    #[inline]
    fn record_on_span(self) {
        // Without any subscriber there is no span to record on, and asking costs a request.
        if !tracing::dispatcher::has_been_set() {
            return;
        }
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("keygate.ratelimit.decision", self.as_str());
        }
    }
}

/// The `keygate_ratelimit_decisions_total` counters of one list of limits (one per decision),
/// registered with the list: a request's decision is counted without building a key.
#[derive(Clone, Debug)]
pub(crate) struct PolicyCounters(Counters<4>);

impl PolicyCounters {
    /// The counters of the limits named `policy` (`default`, a tier's name, `key`, ...),
    /// registered with the recorder installed now.
    pub(crate) fn new(policy: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let policy: std::sync::Arc<str> = policy.into();
            let key = |decision: LimitDecision| {
                Key::from_parts(
                    RATELIMIT_DECISIONS_TOTAL,
                    vec![
                        Label::from_static_parts("decision", decision.as_str()),
                        Label::new("policy", ::metrics::SharedString::from(policy.clone())),
                    ],
                )
            };
            let keys = [
                key(LimitDecision::Allowed),
                key(LimitDecision::Limited),
                key(LimitDecision::ShadowLimited),
                key(LimitDecision::Unavailable),
            ];
            let [a, b, c, d] = &keys;
            Self(Counters::register([a, b, c, d]))
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = policy;
            Self(Counters {})
        }
    }

    /// Counts a request's `decision`, and records it on the current span.
    #[inline]
    pub(crate) fn count(&self, decision: LimitDecision) {
        decision.record_on_span();
        self.0.increment(decision as usize);
    }
}

/// Counts a decision of the limits that are not a list of quotas: requests in flight and
/// credits.
#[inline]
pub(crate) fn limit_other(policy: OtherPolicy, decision: LimitDecision) {
    decision.record_on_span();
    #[cfg(feature = "metrics")]
    {
        macro_rules! other {
            ($decision:literal, $policy:literal) => {
                static_key!(RATELIMIT_DECISIONS_TOTAL; "decision" => $decision, "policy" => $policy)
            };
        }
        use LimitDecision::*;
        let key = match (policy, decision) {
            (OtherPolicy::Concurrency, Allowed) => other!("allowed", "concurrency"),
            (OtherPolicy::Concurrency, Limited) => other!("limited", "concurrency"),
            (OtherPolicy::Concurrency, ShadowLimited) => other!("shadow_limited", "concurrency"),
            (OtherPolicy::Concurrency, Unavailable) => other!("unavailable", "concurrency"),
            (OtherPolicy::Credits, Allowed) => other!("allowed", "credits"),
            (OtherPolicy::Credits, Limited) => other!("limited", "credits"),
            (OtherPolicy::Credits, ShadowLimited) => other!("shadow_limited", "credits"),
            (OtherPolicy::Credits, Unavailable) => other!("unavailable", "credits"),
        };
        increment(key);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (policy, decision);
}

/// The limits [`limit_other`] counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OtherPolicy {
    Concurrency,
    Credits,
}

/// What a `CachedStore` lookup was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheResult {
    Hit,
    NegativeHit,
    Stale,
    Miss,
}

/// The `keygate_store_cache_total` counters of a `CachedStore`, one per result.
#[derive(Clone, Debug)]
pub(crate) struct CacheCounters(Counters<4>);

impl CacheCounters {
    /// Registers the counters with the recorder installed now.
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        return Self(Counters::register([
            static_key!(STORE_CACHE_TOTAL; "result" => "hit"),
            static_key!(STORE_CACHE_TOTAL; "result" => "negative_hit"),
            static_key!(STORE_CACHE_TOTAL; "result" => "stale"),
            static_key!(STORE_CACHE_TOTAL; "result" => "miss"),
        ]));
        #[cfg(not(feature = "metrics"))]
        Self(Counters {})
    }

    /// Counts a lookup.
    #[inline]
    pub(crate) fn count(&self, result: CacheResult) {
        self.0.increment(result as usize);
    }
}

/// Counts a fetch of a remote JWKS.
#[cfg(feature = "jwks")]
#[inline]
pub(crate) fn jwks_refresh(ok: bool) {
    #[cfg(feature = "metrics")]
    increment(if ok {
        static_key!(JWKS_REFRESH_TOTAL; "result" => "ok")
    } else {
        static_key!(JWKS_REFRESH_TOTAL; "result" => "error")
    });
    #[cfg(not(feature = "metrics"))]
    let _ = ok;
}

/// A key store that answers over the network.
#[cfg(any(feature = "postgres", feature = "redis"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    #[cfg(feature = "postgres")]
    Postgres,
    #[cfg(feature = "redis")]
    Redis,
}

/// Times a lookup of `store`, and records it with its result when it ends.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) async fn timed_lookup(
    store: Store,
    lookup: impl Future<Output = crate::store::LookupResult>,
) -> crate::store::LookupResult {
    #[cfg(feature = "metrics")]
    {
        use crate::store::StoreError;
        let start = std::time::Instant::now();
        let result = lookup.await;
        let seconds = start.elapsed().as_secs_f64();
        macro_rules! lookup {
            ($store:literal, $outcome:literal) => {
                static_key!(STORE_LOOKUP_SECONDS; "store" => $store, "outcome" => $outcome)
            };
        }
        macro_rules! by_result {
            ($store:literal) => {
                match &result {
                    Ok(Some(_)) => lookup!($store, "found"),
                    Ok(None) => lookup!($store, "not_found"),
                    Err(StoreError::Timeout) => lookup!($store, "timeout"),
                    Err(_) => lookup!($store, "error"),
                }
            };
        }
        let key = match store {
            #[cfg(feature = "postgres")]
            Store::Postgres => by_result!("postgres"),
            #[cfg(feature = "redis")]
            Store::Redis => by_result!("redis"),
        };
        record(key, seconds);
        result
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = store;
        lookup.await
    }
}

/// A Redis command on a request's path.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisOp {
    RateLimit,
    KeyLookup,
    Credits,
}

/// How a Redis command ended.
#[cfg(all(feature = "redis", feature = "metrics"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisOutcome {
    Ok,
    Error,
    Timeout,
}

/// Runs `call` within `timeout`, and records how long it took under `op` with how it ended.
#[cfg(feature = "redis")]
pub(crate) async fn timed_redis<T, E>(
    op: RedisOp,
    timeout: std::time::Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<Result<T, E>, tokio::time::error::Elapsed> {
    #[cfg(feature = "metrics")]
    {
        let start = std::time::Instant::now();
        let answer = tokio::time::timeout(timeout, call).await;
        let outcome = match &answer {
            Ok(Ok(_)) => RedisOutcome::Ok,
            Ok(Err(_)) => RedisOutcome::Error,
            Err(_) => RedisOutcome::Timeout,
        };
        redis_seconds(op, outcome, start.elapsed().as_secs_f64());
        answer
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = op;
        tokio::time::timeout(timeout, call).await
    }
}

/// Records a Redis command of `seconds`.
#[cfg(all(feature = "redis", feature = "metrics"))]
fn redis_seconds(op: RedisOp, outcome: RedisOutcome, seconds: f64) {
    macro_rules! redis {
        ($op:literal, $outcome:literal) => {
            static_key!(REDIS_SECONDS; "op" => $op, "outcome" => $outcome)
        };
    }
    macro_rules! by_outcome {
        ($op:literal) => {
            match outcome {
                RedisOutcome::Ok => redis!($op, "ok"),
                RedisOutcome::Error => redis!($op, "error"),
                RedisOutcome::Timeout => redis!($op, "timeout"),
            }
        };
    }
    let key = match op {
        RedisOp::RateLimit => by_outcome!("rate_limit"),
        RedisOp::KeyLookup => by_outcome!("key_lookup"),
        RedisOp::Credits => by_outcome!("credits"),
    };
    record(key, seconds);
}

/// Counts a verification event dropped by a full channel.
#[inline]
pub(crate) fn event_dropped() {
    #[cfg(feature = "metrics")]
    {
        static KEY: Key = Key::from_static_name(EVENTS_DROPPED_TOTAL);
        increment(&KEY);
    }
}

/// Records what one request admitted through an `AuthLayer` over a `CachedStore` hit and a
/// `RateLimitLayer` records: the measure of recording's cost in the benches. Not part of the
/// API.
#[doc(hidden)]
pub fn record_admitted_request() {
    static COUNTERS: std::sync::OnceLock<(AuthCounters, CacheCounters, PolicyCounters)> =
        std::sync::OnceLock::new();
    let (auth, cache, policy) = COUNTERS.get_or_init(|| {
        (
            AuthCounters::new(),
            CacheCounters::new(),
            PolicyCounters::new("default"),
        )
    });
    cache.count(CacheResult::Hit);
    auth.count(AuthOutcome::Authenticated(CredentialKind::ApiKey));
    policy.count(LimitDecision::Allowed);
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// The counters `f` recorded, as `name{label=value,...}` and count.
    fn counted(f: impl FnOnce()) -> Vec<(String, u64)> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, f);
        let mut out: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                // Registered counters show at zero until counted.
                let DebugValue::Counter(n @ 1..) = value else {
                    return None;
                };
                let key = key.key();
                let labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                Some((format!("{}{{{}}}", key.name(), labels.join(",")), n))
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn auth_outcomes_are_counted_under_their_labels() {
        let got = counted(|| {
            let auth = AuthCounters::new();
            auth.count(AuthOutcome::Authenticated(CredentialKind::ApiKey));
            auth.count(AuthOutcome::Authenticated(CredentialKind::ApiKey));
            auth.count(AuthOutcome::Refused(
                crate::error::InvalidCredential::TokenExpired,
            ));
            auth.count(AuthOutcome::Missing);
        });
        assert_eq!(
            got,
            [
                (
                    "keygate_auth_requests_total{outcome=authenticated,kind=api_key}".into(),
                    2
                ),
                (
                    "keygate_auth_requests_total{outcome=missing,kind=none}".into(),
                    1
                ),
                (
                    "keygate_auth_requests_total{outcome=token_expired,kind=jwt}".into(),
                    1
                ),
            ]
        );
    }

    #[test]
    fn policy_counters_carry_the_policy_name() {
        let got = counted(|| {
            let gold = PolicyCounters::new("gold");
            let key = PolicyCounters::new("key");
            gold.count(LimitDecision::Allowed);
            gold.count(LimitDecision::ShadowLimited);
            key.count(LimitDecision::Limited);
            limit_other(OtherPolicy::Credits, LimitDecision::Unavailable);
        });
        assert_eq!(
            got,
            [
                (
                    "keygate_ratelimit_decisions_total{decision=allowed,policy=gold}".into(),
                    1
                ),
                (
                    "keygate_ratelimit_decisions_total{decision=limited,policy=key}".into(),
                    1
                ),
                (
                    "keygate_ratelimit_decisions_total{decision=shadow_limited,policy=gold}".into(),
                    1
                ),
                (
                    "keygate_ratelimit_decisions_total{decision=unavailable,policy=credits}".into(),
                    1
                ),
            ]
        );
    }

    #[test]
    fn cache_results_are_counted() {
        let got = counted(|| {
            let cache = CacheCounters::new();
            cache.count(CacheResult::Hit);
            cache.count(CacheResult::NegativeHit);
            cache.count(CacheResult::Stale);
            cache.count(CacheResult::Miss);
            cache.count(CacheResult::Miss);
        });
        assert_eq!(
            got,
            [
                ("keygate_store_cache_total{result=hit}".into(), 1),
                ("keygate_store_cache_total{result=miss}".into(), 2),
                ("keygate_store_cache_total{result=negative_hit}".into(), 1),
                ("keygate_store_cache_total{result=stale}".into(), 1),
            ]
        );
    }

    #[test]
    fn counters_record_to_the_recorder_of_their_registration() {
        // Registered before the recorder: they stay with the no-op one.
        let early = AuthCounters::new();
        let got = counted(|| {
            early.count(AuthOutcome::Anonymous);
            AuthCounters::new().count(AuthOutcome::Missing);
        });
        assert_eq!(
            got,
            [(
                "keygate_auth_requests_total{outcome=missing,kind=none}".into(),
                1
            )]
        );
    }

    #[test]
    fn every_auth_outcome_has_a_counter_of_its_own() {
        use crate::error::InvalidCredential as Why;
        use CredentialKind::{ApiKey, Jwt, None};
        let all = [
            AuthOutcome::Authenticated(ApiKey),
            AuthOutcome::Authenticated(Jwt),
            AuthOutcome::Authenticated(None),
            AuthOutcome::Anonymous,
            AuthOutcome::Missing,
            AuthOutcome::InvalidRequest,
            AuthOutcome::Unavailable(ApiKey),
            AuthOutcome::Unavailable(Jwt),
            AuthOutcome::Unavailable(None),
            AuthOutcome::AddressNotAllowed,
            AuthOutcome::Refused(Why::UnknownKey),
            AuthOutcome::Refused(Why::MalformedKey),
            AuthOutcome::Refused(Why::RevokedKey),
            AuthOutcome::Refused(Why::DisabledKey),
            AuthOutcome::Refused(Why::ExpiredKey),
            AuthOutcome::Refused(Why::TokenExpired),
            AuthOutcome::Refused(Why::InvalidToken),
        ];
        let got = counted(|| {
            let auth = AuthCounters::new();
            for outcome in all {
                auth.count(outcome);
            }
        });
        assert_eq!(got.len(), all.len(), "{got:?}");
        assert!(got.iter().all(|(_, n)| *n == 1), "{got:?}");
    }
}
