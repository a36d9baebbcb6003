//! What keygate records through the `metrics` facade, seen through real axum `Router`s: exact
//! counts of `keygate_auth_requests_total` by outcome and kind, of
//! `keygate_ratelimit_decisions_total` by decision and policy (default, a tier, a key's own
//! quota, shadow, credits, requests in flight), Redis rate limiting through a proxy the test
//! cuts (`keygate_redis_seconds`, `unavailable`, the 503), a `RedisStore` behind a
//! `CachedStore` (`keygate_store_cache_total`, `keygate_store_lookup_seconds`), a
//! `PostgresStore`, the JWKS refresh counter, and that no label ever holds a key, a key id or a
//! subject.
//!
//! Each test records into a `DebuggingRecorder` of its own, installed as the thread's local
//! recorder around a current-thread runtime, so every task of the test records on that thread
//! and tests running in parallel never see each other's metrics. Each check compares
//! everything recorded since the previous check, so a metric recorded twice, or one nobody
//! expected, fails it.
//!
//! The tests that need Redis or PostgreSQL are ignored unless asked for: run them with
//! `KEYGATE_TEST_REDIS_URL` / `KEYGATE_TEST_DATABASE_URL` set and `-- --include-ignored`. Asked
//! for without the variable, they fail, so that a run without the server never passes for one
//! that tested it. They use a key prefix or a schema of their own, removed when they end.
#![cfg(all(feature = "metrics", feature = "axum"))]

mod common;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod services;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use keygate::Quota;
use keygate::auth::AuthLayer;
use keygate::key::{ApiKey, Credits, KeyRecord};
use keygate::ratelimit::RateLimitLayer;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{ServiceBuilder, ServiceExt};

/// No test runs longer than this.
const TEST_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Recording

/// Every metric a test recorded, read through the recorder's snapshots (each of which takes
/// what was recorded since the previous one).
#[derive(Clone)]
struct Recorded {
    snapshotter: Snapshotter,
    /// Every metric recorded so far, for the scan of its labels.
    seen: Rc<RefCell<BTreeMap<String, Labels>>>,
}

/// A metric's labels, as names and values.
type Labels = Vec<(String, String)>;

impl Recorded {
    /// What was recorded since the last call, as `name{label=value,...}` (labels in the order
    /// keygate gives them) and its value: a counter's count, a histogram's number of samples.
    /// Metrics with nothing new are left out.
    fn take(&self) -> BTreeMap<String, u64> {
        self.take_samples()
            .into_iter()
            .map(|(name, value)| (name, value.count()))
            .collect()
    }

    /// [`take`](Self::take), with every sample of the histograms.
    fn take_samples(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels: Labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let name = if shown.is_empty() {
                key.name().to_owned()
            } else {
                format!("{}{{{}}}", key.name(), shown.join(","))
            };
            self.seen.borrow_mut().insert(name.clone(), labels);
            let value = match value {
                DebugValue::Counter(0) => continue,
                DebugValue::Counter(n) => Value::Counter(n),
                DebugValue::Histogram(samples) if samples.is_empty() => continue,
                DebugValue::Histogram(samples) => {
                    let samples: Vec<f64> = samples.into_iter().map(|s| s.into_inner()).collect();
                    assert!(
                        samples.iter().all(|s| s.is_finite() && *s >= 0.0),
                        "{name}: {samples:?} are not durations"
                    );
                    Value::Histogram(samples)
                }
                DebugValue::Gauge(g) => panic!("{name}: keygate records no gauge, got {g}"),
            };
            out.insert(name, value);
        }
        out
    }

    /// Ends a test: nothing was recorded since its last check, and no metric's name or label
    /// holds any of `secrets` (keys, key ids, digests, subjects, tokens), whole or in part.
    fn finish<S: AsRef<str>>(&self, secrets: impl IntoIterator<Item = S>) {
        assert_eq!(
            self.take(),
            BTreeMap::new(),
            "recorded after the last check"
        );
        let seen = self.seen.borrow();
        assert!(!seen.is_empty(), "nothing was recorded at all");
        for secret in secrets {
            let secret = secret.as_ref();
            assert!(secret.len() >= 4, "{secret:?} is too short to look for");
            for (name, labels) in seen.iter() {
                assert!(!name.contains(secret), "{name} holds {secret:?}");
                for (label, value) in labels {
                    assert!(
                        !value.contains(secret) && !label.contains(secret),
                        "{name}: the label {label}={value} holds {secret:?}"
                    );
                }
            }
        }
    }
}

/// A metric's value in a snapshot.
#[derive(Debug)]
enum Value {
    Counter(u64),
    Histogram(Vec<f64>),
}

impl Value {
    fn count(&self) -> u64 {
        match self {
            Self::Counter(n) => *n,
            Self::Histogram(samples) => samples.len() as u64,
        }
    }
}

/// The map [`Recorded::take`] should return, from lines of `name{label=value,...} value`.
fn expected(lines: &str) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, value) = line.rsplit_once(' ').expect("a name and a value");
        let value = value.parse().expect("a whole number");
        assert!(
            map.insert(name.to_owned(), value).is_none(),
            "{name} listed twice"
        );
    }
    map
}

/// Runs `test` on a current-thread runtime, with a `DebuggingRecorder` of its own as the
/// thread's recorder: every task the test starts runs, and records, on this thread.
fn run<F: Future<Output = ()>>(test: impl FnOnce(Recorded) -> F) {
    let recorder = DebuggingRecorder::new();
    let recorded = Recorded {
        snapshotter: recorder.snapshotter(),
        seen: Rc::default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            tokio::time::timeout(TEST_LIMIT, test(recorded))
                .await
                .expect("the test took too long");
        });
    });
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A key's id, its secret and its digest: what no label may hold.
fn key_secrets(id: &str, key: &ApiKey) -> [String; 3] {
    [
        id.to_owned(),
        key.expose_secret().to_owned(),
        key.digest().to_hex(),
    ]
}

/// The status of each reply, in order.
async fn statuses<S>(app: &S, requests: Vec<http::Request<axum::body::Body>>) -> Vec<u16>
where
    S: Clone
        + tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<axum::body::Body>,
            Error = std::convert::Infallible,
        >,
{
    let mut out = Vec::new();
    for req in requests {
        out.push(send(app.clone(), req).await.status.as_u16());
    }
    out
}

/// `GET uri` with the key, from the client address `peer` (as axum's `ConnectInfo` gives it).
fn from_peer(uri: &str, key: &str, peer: &str) -> http::Request<axum::body::Body> {
    let mut req = with_key_at(uri, key);
    let addr = std::net::SocketAddr::new(peer.parse().expect("an address"), 40_000);
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    req
}

/// An HS256 token of kid `hs-1`, signed with `secret`, for `sub`, that expires `exp_from_now`
/// seconds from now (in the past when negative).
#[cfg(feature = "jwt")]
fn hs256_with(sub: &str, exp_from_now: i64, secret: &[u8]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("hs-1".to_owned());
    let claims = serde_json::json!({"sub": sub, "iat": now - 7200, "exp": now + exp_from_now});
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// One request of every outcome an `AuthLayer` has (JWT keys that could not be fetched are in
/// the JWKS test), some several times: each is counted once, under its outcome and kind, and
/// nothing else is recorded (a memory store is not timed, nothing was rate limited).
#[cfg(feature = "jwt")]
#[test]
fn every_auth_outcome_is_counted_once_under_its_outcome_and_kind() {
    use keygate::client_addr::Networks;
    use keygate::jwt::{JwtKey, JwtVerifier};
    use keygate::key::{KeyFormat, KeyStatus};
    use keygate::store::MemoryStore;

    run(|recorded| async move {
        let format = KeyFormat::new("mt_").unwrap();
        let store = MemoryStore::with_format(format.clone());
        let issue = |record: KeyRecord| store.issue(record).expect("a fresh id");
        let good = issue(KeyRecord::new("metrics_good", "metrics_owner"));
        let revoked = issue(KeyRecord::new("metrics_revoked", "metrics_owner"));
        store.revoke("metrics_revoked").unwrap();
        let disabled = issue(
            KeyRecord::new("metrics_disabled", "metrics_owner").with_status(KeyStatus::Disabled),
        );
        let expired = issue(
            KeyRecord::new("metrics_expired", "metrics_owner")
                .with_expiry(std::time::SystemTime::now() - Duration::from_secs(60)),
        );
        let fenced = issue(
            KeyRecord::new("metrics_fenced", "metrics_owner")
                .with_allowed_ips("192.0.2.0/24".parse::<Networks>().unwrap()),
        );
        let unknown = format.generate();
        // One character of the secret changed: the checksum fails.
        let malformed = {
            let key = good.expose_secret();
            let at = key.len() / 2;
            let swap = if key.as_bytes()[at] == b'A' { "B" } else { "A" };
            format!("{}{swap}{}", &key[..at], &key[at + 1..])
        };
        let verifier = JwtVerifier::with_keys([JwtKey::hmac(HS256_SECRET).kid("hs-1")]);
        let layer = AuthLayer::new(store.clone())
            .realm(REALM)
            .key_format(format.clone())
            .jwt(verifier);
        let app = routes().layer(layer.clone());
        let optional = routes().layer(layer.optional());
        let down = routes().layer(AuthLayer::new(DownStore).realm(REALM));

        let token = hs256_token("metrics-subject-ada");
        let expired_token = hs256_with("metrics-subject-bob", -3600, HS256_SECRET);
        let forged_token = hs256_with("metrics-subject-eve", 300, b"not the secret of kid hs-1!!!");
        let g = good.expose_secret();
        let requests = vec![
            with_key(g),
            with_key(g),
            with_key(g),
            from_peer("/me", fenced.expose_secret(), "192.0.2.9"),
            with_key(unknown.expose_secret()),
            with_key(unknown.expose_secret()),
            with_key("legacy-key-without-a-prefix"),
            get_req("/me"),
            get_with(&format!("/me?key={g}"), &[("x-api-key", g)]),
            get_req("/me?key=a&key=b"),
            with_key(&"k".repeat(600)),
            with_key(&malformed),
            with_key(revoked.expose_secret()),
            with_key(disabled.expose_secret()),
            with_key(expired.expose_secret()),
            from_peer("/me", fenced.expose_secret(), "198.51.100.7"),
            with_bearer("/me", &token),
            with_bearer("/me", &token),
            with_bearer("/me", &expired_token),
            with_bearer("/me", &forged_token),
        ];
        assert_eq!(
            statuses(&app, requests).await,
            [
                200, 200, 200, 200, 401, 401, 401, 401, 400, 400, 400, 401, 401, 401, 401, 403,
                200, 200, 401, 401
            ]
        );
        let requests = vec![
            get_req("/maybe"),
            get_req("/maybe"),
            with_key_at("/maybe", g),
        ];
        assert_eq!(statuses(&optional, requests).await, [200, 200, 200]);
        assert_eq!(statuses(&down, vec![with_key(g)]).await, [503]);

        assert_eq!(
            recorded.take(),
            expected(
                "
                keygate_auth_requests_total{outcome=authenticated,kind=api_key} 5
                keygate_auth_requests_total{outcome=authenticated,kind=jwt} 2
                keygate_auth_requests_total{outcome=anonymous,kind=none} 2
                keygate_auth_requests_total{outcome=missing,kind=none} 1
                keygate_auth_requests_total{outcome=invalid_request,kind=none} 3
                keygate_auth_requests_total{outcome=unknown_key,kind=api_key} 3
                keygate_auth_requests_total{outcome=malformed_key,kind=api_key} 1
                keygate_auth_requests_total{outcome=revoked_key,kind=api_key} 1
                keygate_auth_requests_total{outcome=disabled_key,kind=api_key} 1
                keygate_auth_requests_total{outcome=expired_key,kind=api_key} 1
                keygate_auth_requests_total{outcome=address_not_allowed,kind=api_key} 1
                keygate_auth_requests_total{outcome=token_expired,kind=jwt} 1
                keygate_auth_requests_total{outcome=invalid_token,kind=jwt} 1
                keygate_auth_requests_total{outcome=unavailable,kind=api_key} 1
                ",
            )
        );

        let mut secrets: Vec<String> = [
            "metrics_owner",
            "metrics-subject-ada",
            "metrics-subject-bob",
            "metrics-subject-eve",
            token.as_str(),
            expired_token.as_str(),
            forged_token.as_str(),
            malformed.as_str(),
        ]
        .map(str::to_owned)
        .into();
        for (id, key) in [
            ("metrics_good", &good),
            ("metrics_revoked", &revoked),
            ("metrics_disabled", &disabled),
            ("metrics_expired", &expired),
            ("metrics_fenced", &fenced),
            ("metrics_unknown", &unknown),
        ] {
            secrets.extend(key_secrets(id, key));
        }
        recorded.finish(secrets);
    });
}

// ---------------------------------------------------------------------------------------------
// Rate limiting

/// Events a full channel drops are counted, and the requests go on.
#[test]
fn events_a_full_channel_drops_are_counted() {
    run(|recorded| async move {
        let (store, key) = store_with_key();
        let (sender, mut receiver) = keygate::events::channel(1);
        let app = routes().layer(AuthLayer::new(store).realm(REALM).events(sender));
        let requests = vec![
            with_key(key.expose_secret()),
            with_key("kg_not_a_known_key_01234"),
            get_with("/me", &[]),
        ];
        assert_eq!(statuses(&app, requests).await, [200, 401, 401]);
        let first = receiver.try_recv().expect("the first event was queued");
        assert_eq!(first.outcome().as_str(), "authenticated");
        assert_eq!(receiver.dropped(), 2);
        assert_eq!(
            recorded.take(),
            expected(
                "
                keygate_auth_requests_total{outcome=authenticated,kind=api_key} 1
                keygate_auth_requests_total{outcome=missing,kind=none} 1
                keygate_auth_requests_total{outcome=unknown_key,kind=api_key} 1
                keygate_events_dropped_total 2
                ",
            )
        );
        recorded.finish(key_secrets("key_1", &key));
    });
}

/// `routes` behind `AuthLayer(store)` then `limit`.
fn limited_app(store: keygate::store::MemoryStore, limit: RateLimitLayer) -> axum::Router {
    routes().layer(
        ServiceBuilder::new()
            .layer(AuthLayer::new(store).realm(REALM))
            .layer(limit),
    )
}

/// `n` requests of `/me` with `key`.
fn times(n: usize, key: &ApiKey) -> Vec<http::Request<axum::body::Body>> {
    (0..n).map(|_| with_key(key.expose_secret())).collect()
}

/// Each request a `RateLimitLayer` judges is one decision, under the policy that decided it:
/// the default, a tier by its name, a key's own quota; a shadow layer's denials are
/// `shadow_limited`; credits and requests in flight are policies of their own.
#[test]
fn each_rate_limit_decision_is_counted_once_under_its_policy() {
    run(|recorded| async move {
        let (store, keys) = store_with([
            KeyRecord::new("metrics_plain", "metrics_owner"),
            KeyRecord::new("metrics_gold", "metrics_owner").with_tier("gold"),
            KeyRecord::new("metrics_own", "metrics_owner").with_quota(Quota::per_minute(1)),
        ]);
        let (memory, _clock) = limiter();
        let layer =
            RateLimitLayer::new(memory, Quota::per_minute(3)).tier("gold", Quota::per_minute(5));
        let app = limited_app(store, layer);
        assert_eq!(
            statuses(&app, times(5, &keys[0])).await,
            [200, 200, 200, 429, 429]
        );
        assert_eq!(
            statuses(&app, times(6, &keys[1])).await,
            [200, 200, 200, 200, 200, 429]
        );
        assert_eq!(statuses(&app, times(2, &keys[2])).await, [200, 429]);
        assert_eq!(
            recorded.take(),
            expected(
                "
                keygate_auth_requests_total{outcome=authenticated,kind=api_key} 13
                keygate_ratelimit_decisions_total{decision=allowed,policy=default} 3
                keygate_ratelimit_decisions_total{decision=limited,policy=default} 2
                keygate_ratelimit_decisions_total{decision=allowed,policy=gold} 5
                keygate_ratelimit_decisions_total{decision=limited,policy=gold} 1
                keygate_ratelimit_decisions_total{decision=allowed,policy=key} 1
                keygate_ratelimit_decisions_total{decision=limited,policy=key} 1
                ",
            )
        );

        // In shadow, the requests over the limit go through, counted as such.
        let (store, shadow_keys) = store_with([KeyRecord::new("metrics_shadow", "metrics_owner")]);
        let (memory, _clock) = limiter();
        let shadow = RateLimitLayer::new(memory, Quota::per_minute(2)).shadow(true);
        let app = limited_app(store, shadow);
        assert_eq!(
            statuses(&app, times(5, &shadow_keys[0])).await,
            [200, 200, 200, 200, 200]
        );
        assert_eq!(
            recorded.take(),
            expected(
                "
                keygate_auth_requests_total{outcome=authenticated,kind=api_key} 5
                keygate_ratelimit_decisions_total{decision=allowed,policy=default} 2
                keygate_ratelimit_decisions_total{decision=shadow_limited,policy=default} 3
                ",
            )
        );

        // Credits: admitted while some are left (one decision, the limits'), then refused by
        // the credits alone.
        let (store, credit_keys) = store_with([
            KeyRecord::new("metrics_metered", "metrics_owner").with_credits(Credits::new(2))
        ]);
        let (memory, _clock) = limiter();
        let metered = RateLimitLayer::new(memory, Quota::per_minute(100)).credits(store.clone());
        let app = limited_app(store, metered);
        assert_eq!(
            statuses(&app, times(4, &credit_keys[0])).await,
            [200, 200, 429, 429]
        );
        assert_eq!(
            recorded.take(),
            expected(
                "
                keygate_auth_requests_total{outcome=authenticated,kind=api_key} 4
                keygate_ratelimit_decisions_total{decision=allowed,policy=default} 2
                keygate_ratelimit_decisions_total{decision=limited,policy=credits} 2
                ",
            )
        );

        // Requests in flight: a second request while the first one's body is still open is
        // refused before the limits are asked.
        let (store, busy_keys) = store_with([KeyRecord::new("metrics_busy", "metrics_owner")]);
        let (memory, _clock) = limiter();
        let one_at_a_time = RateLimitLayer::new(memory, Quota::per_minute(100)).concurrency(1);
        let app = limited_app(store, one_at_a_time);
        let busy = busy_keys[0].expose_secret();
        let held = app.clone().oneshot(with_key(busy)).await.unwrap();
        assert_eq!(held.status(), StatusCode::OK);
        assert_eq!(statuses(&app, times(1, &busy_keys[0])).await, [429]);
        drop(held);
        assert_eq!(statuses(&app, times(1, &busy_keys[0])).await, [200]);
        assert_eq!(
            recorded.take(),
            expected(
                "
                keygate_auth_requests_total{outcome=authenticated,kind=api_key} 3
                keygate_ratelimit_decisions_total{decision=allowed,policy=default} 2
                keygate_ratelimit_decisions_total{decision=limited,policy=concurrency} 1
                ",
            )
        );

        // In shadow, the second request in flight goes through, counted as one the
        // concurrency limit would have refused.
        let (store, loose_keys) = store_with([KeyRecord::new("metrics_loose", "metrics_owner")]);
        let (memory, _clock) = limiter();
        let shadow_one = RateLimitLayer::new(memory, Quota::per_minute(100))
            .concurrency(1)
            .shadow(true);
        let app = limited_app(store, shadow_one);
        let loose = loose_keys[0].expose_secret();
        let held = app.clone().oneshot(with_key(loose)).await.unwrap();
        assert_eq!(held.status(), StatusCode::OK);
        assert_eq!(statuses(&app, times(1, &loose_keys[0])).await, [200]);
        drop(held);
        assert_eq!(
            recorded.take(),
            expected(
                "
                keygate_auth_requests_total{outcome=authenticated,kind=api_key} 2
                keygate_ratelimit_decisions_total{decision=allowed,policy=default} 1
                keygate_ratelimit_decisions_total{decision=shadow_limited,policy=concurrency} 1
                ",
            )
        );

        let mut secrets = vec!["metrics_owner".to_owned()];
        for (id, key) in [
            ("metrics_plain", &keys[0]),
            ("metrics_gold", &keys[1]),
            ("metrics_own", &keys[2]),
            ("metrics_shadow", &shadow_keys[0]),
            ("metrics_metered", &credit_keys[0]),
            ("metrics_busy", &busy_keys[0]),
            ("metrics_loose", &loose_keys[0]),
        ] {
            secrets.extend(key_secrets(id, key));
        }
        recorded.finish(secrets);
    });
}

// ---------------------------------------------------------------------------------------------
// Redis

#[cfg(feature = "redis")]
mod redis_backed {
    use super::*;
    use crate::common::proxy::Proxy;
    use keygate::ratelimit::RedisLimiter;
    use keygate::store::{CachedStore, KeyManager, RedisStore};
    use redis::aio::ConnectionManager;
    use services::{Cleanup, redis_url, unique_prefix};

    /// The timeout of the limiter whose outage is counted: short, so that a request waits
    /// little for a Redis that is away, yet long enough for a loaded machine's round trips.
    const SHORT: Duration = Duration::from_secs(1);

    /// A proxy to the test's Redis, and a connection manager through it.
    async fn proxied() -> (Proxy, ConnectionManager) {
        let client = redis::Client::open(redis_url().as_str()).expect("a valid Redis URL");
        let info = client.get_connection_info().clone();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            panic!("this test needs a Redis on TCP, without TLS");
        };
        let upstream = tokio::net::lookup_host((host.as_str(), port))
            .await
            .expect("resolve the Redis host")
            .next()
            .expect("an address for the Redis host");
        let proxy = Proxy::start(upstream).await;
        let via = info.set_addr(redis::ConnectionAddr::Tcp(
            proxy.addr().ip().to_string(),
            proxy.addr().port(),
        ));
        let client = redis::Client::open(via).expect("a client through the proxy");
        let conn = ConnectionManager::new_with_config(client, RedisLimiter::manager_config())
            .await
            .expect("connect through the proxy");
        (proxy, conn)
    }

    /// A Redis limiter answers: each decision is one `rate_limit` command, timed as `ok`. Cut
    /// from Redis: each request is `unavailable` (503 to the client), and its command is timed
    /// as an error or a timeout.
    #[test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    fn a_redis_limiter_times_its_commands_and_counts_its_outage() {
        run(|recorded| async move {
            let prefix = unique_prefix("metrics-limiter");
            let _cleanup = Cleanup::new(&prefix);
            let (proxy, conn) = proxied().await;
            let limiter = RedisLimiter::new(conn).prefix(&prefix).timeout(SHORT);
            let (store, key) = store_with_key();
            let app = limited_app(store, RateLimitLayer::new(limiter, Quota::per_minute(100)));
            assert_eq!(statuses(&app, times(3, &key)).await, [200, 200, 200]);
            assert_eq!(
                recorded.take(),
                expected(
                    "
                    keygate_auth_requests_total{outcome=authenticated,kind=api_key} 3
                    keygate_ratelimit_decisions_total{decision=allowed,policy=default} 3
                    keygate_redis_seconds{op=rate_limit,outcome=ok} 3
                    ",
                )
            );

            proxy.cut();
            for _ in 0..2 {
                let reply = send(app.clone(), with_key(key.expose_secret())).await;
                assert_eq!(
                    reply.status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{:?}",
                    reply.body
                );
                assert_eq!(
                    reply.header("content-type"),
                    Some("application/problem+json")
                );
            }
            let mut got = recorded.take_samples();
            let error = got.remove("keygate_redis_seconds{op=rate_limit,outcome=error}");
            let timeout = got.remove("keygate_redis_seconds{op=rate_limit,outcome=timeout}");
            let failed =
                error.as_ref().map_or(0, Value::count) + timeout.as_ref().map_or(0, Value::count);
            assert_eq!(failed, 2, "error: {error:?}, timeout: {timeout:?}");
            if let Some(Value::Histogram(samples)) = &timeout {
                let least = SHORT.as_secs_f64() - 0.001;
                assert!(samples.iter().all(|s| *s >= least), "{samples:?}");
            }
            let rest: BTreeMap<String, u64> =
                got.into_iter().map(|(k, v)| (k, v.count())).collect();
            assert_eq!(
                rest,
                expected(
                    "
                    keygate_auth_requests_total{outcome=authenticated,kind=api_key} 2
                    keygate_ratelimit_decisions_total{decision=unavailable,policy=default} 2
                    ",
                )
            );
            let mut secrets = vec!["acme".to_owned(), prefix.clone()];
            secrets.extend(key_secrets("key_1", &key));
            recorded.finish(secrets);
        });
    }

    /// A `RedisStore` behind a `CachedStore`: the first lookup of a digest is a miss that asks
    /// Redis (timed by the store and as a `key_lookup` command), the next one a hit (or a
    /// negative hit for an unknown key) that asks nothing. The same store as a rate limiter's
    /// credit store: each spend is a `credits` command.
    #[test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    fn a_cached_redis_store_counts_misses_and_hits_and_times_its_lookups() {
        run(|recorded| async move {
            let prefix = unique_prefix("metrics-store");
            let _cleanup = Cleanup::new(&prefix);
            let store = RedisStore::connect(&redis_url())
                .await
                .expect("connect to KEYGATE_TEST_REDIS_URL")
                .prefix(&prefix)
                .timeout(Duration::from_secs(5));
            let key = store
                .issue(KeyRecord::new("metrics_redis_key", "metrics_owner"))
                .await
                .expect("issue a key")
                .key;
            let metered = store
                .issue(
                    KeyRecord::new("metrics_redis_metered", "metrics_owner")
                        .with_credits(Credits::new(1)),
                )
                .await
                .expect("issue a key")
                .key;
            let unknown = KeyManager::format(&store).generate();
            let cached = CachedStore::builder(store.clone())
                .clock(keygate::clock::ManualClock::new())
                .build();
            let app = routes().layer(AuthLayer::new(cached.clone()).realm(REALM));
            let requests = vec![
                with_key(key.expose_secret()),
                with_key(key.expose_secret()),
                with_key(unknown.expose_secret()),
                with_key(unknown.expose_secret()),
            ];
            assert_eq!(statuses(&app, requests).await, [200, 200, 401, 401]);
            assert_eq!(
                recorded.take(),
                expected(
                    "
                    keygate_auth_requests_total{outcome=authenticated,kind=api_key} 2
                    keygate_auth_requests_total{outcome=unknown_key,kind=api_key} 2
                    keygate_store_cache_total{result=miss} 2
                    keygate_store_cache_total{result=hit} 1
                    keygate_store_cache_total{result=negative_hit} 1
                    keygate_store_lookup_seconds{store=redis,outcome=found} 1
                    keygate_store_lookup_seconds{store=redis,outcome=not_found} 1
                    keygate_redis_seconds{op=key_lookup,outcome=ok} 2
                    ",
                )
            );

            let (memory, _clock) = limiter();
            let spend = RateLimitLayer::new(memory, Quota::per_minute(100)).credits(store);
            let app = routes().layer(
                ServiceBuilder::new()
                    .layer(AuthLayer::new(cached).realm(REALM))
                    .layer(spend),
            );
            assert_eq!(statuses(&app, times(2, &metered)).await, [200, 429]);
            assert_eq!(
                recorded.take(),
                expected(
                    "
                    keygate_auth_requests_total{outcome=authenticated,kind=api_key} 2
                    keygate_store_cache_total{result=miss} 1
                    keygate_store_cache_total{result=hit} 1
                    keygate_store_lookup_seconds{store=redis,outcome=found} 1
                    keygate_redis_seconds{op=key_lookup,outcome=ok} 1
                    keygate_redis_seconds{op=credits,outcome=ok} 2
                    keygate_ratelimit_decisions_total{decision=allowed,policy=default} 1
                    keygate_ratelimit_decisions_total{decision=limited,policy=credits} 1
                    ",
                )
            );
            let mut secrets = vec!["metrics_owner".to_owned(), prefix.clone()];
            secrets.extend(key_secrets("metrics_redis_metered", &metered));
            secrets.extend(key_secrets("metrics_redis_key", &key));
            secrets.extend(key_secrets("metrics_redis_key", &unknown));
            recorded.finish(secrets);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

#[cfg(feature = "postgres")]
mod postgres_backed {
    use super::*;
    use keygate::store::{KeyManager, PostgresStore};
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr;

    /// A schema no other test or run uses, dropped (with the sessions of the test) when this
    /// is dropped, also when the test fails.
    struct Schema {
        name: String,
        url: String,
    }

    impl Schema {
        fn new() -> Self {
            let mut r = [0u8; 6];
            getrandom::fill(&mut r).unwrap();
            let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
            Self {
                name: format!("kg_test_metrics_{hex}"),
                url: services::database_url(),
            }
        }

        /// A migrated store in this schema, on a pool of its own.
        async fn store(&self) -> PostgresStore {
            let options = PgConnectOptions::from_str(&self.url)
                .expect("a valid KEYGATE_TEST_DATABASE_URL")
                .application_name(&self.name);
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .expect("connect to KEYGATE_TEST_DATABASE_URL");
            let store = PostgresStore::new(pool)
                .schema(&self.name)
                .channel(&self.name)
                .timeout(Duration::from_secs(5));
            store.migrate().await.expect("migrate");
            store
        }
    }

    impl Drop for Schema {
        fn drop(&mut self) {
            services::drop_schema(&self.url, &self.name);
        }
    }

    /// Each lookup of a `PostgresStore` is timed once, under what it found: a known key (also a
    /// revoked one, which the layer then refuses) or none.
    #[test]
    #[ignore = "needs KEYGATE_TEST_DATABASE_URL"]
    fn postgres_lookups_are_timed_by_what_they_found() {
        run(|recorded| async move {
            let schema = Schema::new();
            let store = schema.store().await;
            let good = store
                .issue(KeyRecord::new("metrics_pg_good", "metrics_owner"))
                .await
                .expect("issue a key")
                .key;
            let revoked = store
                .issue(KeyRecord::new("metrics_pg_revoked", "metrics_owner"))
                .await
                .expect("issue a key")
                .key;
            store.revoke("metrics_pg_revoked").await.expect("revoke");
            let unknown = KeyManager::format(&store).generate();
            let app = routes().layer(AuthLayer::new(store).realm(REALM));
            let requests = vec![
                with_key(good.expose_secret()),
                with_key(good.expose_secret()),
                with_key(revoked.expose_secret()),
                with_key(unknown.expose_secret()),
            ];
            assert_eq!(statuses(&app, requests).await, [200, 200, 401, 401]);
            assert_eq!(
                recorded.take(),
                expected(
                    "
                    keygate_auth_requests_total{outcome=authenticated,kind=api_key} 2
                    keygate_auth_requests_total{outcome=revoked_key,kind=api_key} 1
                    keygate_auth_requests_total{outcome=unknown_key,kind=api_key} 1
                    keygate_store_lookup_seconds{store=postgres,outcome=found} 3
                    keygate_store_lookup_seconds{store=postgres,outcome=not_found} 1
                    ",
                )
            );
            let mut secrets = vec!["metrics_owner".to_owned(), schema.name.clone()];
            secrets.extend(key_secrets("metrics_pg_good", &good));
            secrets.extend(key_secrets("metrics_pg_revoked", &revoked));
            secrets.extend(key_secrets("metrics_pg_unknown", &unknown));
            recorded.finish(secrets);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS

#[cfg(feature = "jwks")]
mod jwks_backed {
    use super::*;
    use axum::routing::get;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use keygate::jwt::{JwtVerifier, RemoteJwks};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A JWKS endpoint on 127.0.0.1 publishing the key of kid `hs-1`, or failing with a 500
    /// while `failing` is set.
    async fn endpoint(failing: Arc<AtomicBool>) -> String {
        let jwk = serde_json::json!({
            "keys": [{
                "kty": "oct",
                "k": URL_SAFE_NO_PAD.encode(HS256_SECRET),
                "kid": "hs-1",
                "alg": "HS256",
            }]
        })
        .to_string();
        let app = axum::Router::new().route(
            "/jwks.json",
            get(move || {
                let (failing, jwk) = (failing.clone(), jwk.clone());
                async move {
                    if failing.load(Ordering::SeqCst) {
                        (StatusCode::INTERNAL_SERVER_ERROR, String::new())
                    } else {
                        (StatusCode::OK, jwk)
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/jwks.json")
    }

    /// Every fetch of a remote JWKS is counted once, `ok` or `error`: the first one at start,
    /// the one a token of an unknown kid asks for, and each refresh. A token whose keys could
    /// not be fetched is `unavailable` (503).
    #[test]
    fn jwks_fetches_are_counted_by_result() {
        run(|recorded| async move {
            let failing = Arc::new(AtomicBool::new(true));
            let url = endpoint(failing.clone()).await;
            // Never on its own: every fetch here is one the test or a token asks for.
            let hour = Duration::from_secs(3600);
            let jwks = RemoteJwks::builder(&url)
                .refresh_interval(hour)
                .retry_interval(hour)
                .unknown_kid_interval(hour)
                .unknown_kid_wait(Duration::from_secs(5))
                .timeout(Duration::from_secs(5))
                .allow_hmac_keys(true)
                .build()
                .await
                .expect("a JWKS client");
            assert!(!jwks.is_ready());
            let app = routes().layer(AuthLayer::jwt_only(JwtVerifier::new(jwks.clone())));
            let token = hs256_token("metrics-subject-jwks");
            let call = || statuses(&app, vec![with_bearer("/me", &token)]);
            // The first token fetches the set again (and fails); the second finds that fetch
            // too recent to repeat.
            assert_eq!(call().await, [503]);
            assert_eq!(call().await, [503]);
            assert_eq!(
                recorded.take(),
                expected(
                    "
                    keygate_auth_requests_total{outcome=unavailable,kind=jwt} 2
                    keygate_jwks_refresh_total{result=error} 2
                    ",
                )
            );

            failing.store(false, Ordering::SeqCst);
            jwks.refresh().await.expect("the endpoint answers");
            assert_eq!(call().await, [200]);
            failing.store(true, Ordering::SeqCst);
            assert!(jwks.refresh().await.is_err());
            // The last good set stays in use.
            assert_eq!(call().await, [200]);
            failing.store(false, Ordering::SeqCst);
            jwks.refresh().await.expect("the endpoint answers again");
            jwks.refresh().await.expect("the endpoint answers again");
            assert_eq!(
                recorded.take(),
                expected(
                    "
                    keygate_auth_requests_total{outcome=authenticated,kind=jwt} 2
                    keygate_jwks_refresh_total{result=error} 1
                    keygate_jwks_refresh_total{result=ok} 3
                    ",
                )
            );
            recorded.finish(["metrics-subject-jwks", token.as_str(), url.as_str()]);
        });
    }
}
