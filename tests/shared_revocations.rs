//! JWT revocations shared through Redis (`RedisRevocations`), and `RevokeMintedTokens`: revoking,
//! disabling or deleting an API key revokes the tokens minted for it.
//!
//! The `RevokeMintedTokens` tests over a `MemoryRevocations` need no server and always run. The
//! Redis tests are ignored unless asked for: run them with `KEYGATE_TEST_REDIS_URL` set (e.g.
//! `redis://127.0.0.1:6379/`) and `-- --include-ignored`; asked for without the variable, they
//! fail. Each uses a key prefix of its own, deleted at its end. The outage tests cut a TCP proxy
//! of their own between an instance and Redis, never Redis itself.

#![cfg(all(feature = "jwt", feature = "axum"))]

mod common;
#[cfg(feature = "redis")]
mod services;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use common::{routes, send, with_bearer, with_key};
use http::StatusCode;
use keygate::auth::AuthLayer;
use keygate::jwt::{JwtKey, JwtVerifier, MemoryRevocations, RevokeMintedTokens, TokenIssuer};
use keygate::key::{KeyRecord, KeyStatus};
use keygate::store::{KeyManager, KeyUpdate, ManageError, MemoryStore};

/// The HMAC secret of every test issuer and verifier (test-only).
const SECRET: &[u8] = b"keygate shared revocation tests: test-only secret";

/// No test runs longer than this.
const TEST_LIMIT: Duration = Duration::from_secs(20);

fn issuer() -> TokenIssuer {
    TokenIssuer::hmac(SECRET)
}

fn verifier() -> JwtVerifier {
    JwtVerifier::with_keys([JwtKey::hmac(SECRET)])
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until the wall clock has just entered a new second, so that what follows (a few
/// milliseconds of work) happens within one second.
async fn start_of_a_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let rest = Duration::from_secs(1) - Duration::from_nanos(now.subsec_nanos().into());
    tokio::time::sleep(rest + Duration::from_millis(5)).await;
}

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("the test took too long")
}

/// The status of `GET /me` with this bearer token.
async fn status_with_token(app: &Router, token: &str) -> StatusCode {
    send(app.clone(), with_bearer("/me", token)).await.status
}

/// The status of `GET /me` with this API key.
async fn status_with_key(app: &Router, key: &str) -> StatusCode {
    send(app.clone(), with_key(key)).await.status
}

// ---------------------------------------------------------------------------------------------
// RevokeMintedTokens over a MemoryRevocations
// ---------------------------------------------------------------------------------------------

/// A store, a key manager wrapped in `RevokeMintedTokens`, and an app that takes the store's
/// keys and tokens checked against the same revocations.
fn memory_app() -> (Arc<dyn KeyManager>, Router) {
    let store = MemoryStore::new();
    let revocations = MemoryRevocations::new();
    let keys: Arc<dyn KeyManager> =
        Arc::new(RevokeMintedTokens::new(store.clone(), revocations.clone()));
    let app = routes().layer(AuthLayer::new(store).jwt(verifier().revocations(revocations)));
    (keys, app)
}

/// Issues a key and mints a token for it, as a `POST /token` route does: the record id as
/// subject.
async fn key_and_token(keys: &dyn KeyManager, id: &str) -> (String, String) {
    let issued = keys
        .issue(KeyRecord::new(id, "acme").with_scopes(["weather:read"]))
        .await
        .unwrap();
    let token = issuer()
        .issue(&issued.record.id, ["weather:read"])
        .unwrap()
        .access_token;
    (issued.key.expose_secret().to_owned(), token)
}

#[tokio::test]
async fn revoking_a_key_revokes_the_tokens_minted_for_it() {
    bounded(async {
        let (keys, app) = memory_app();
        let (_, other_token) = key_and_token(&*keys, "key_other").await;
        // Minted and revoked within one second: `iat` is that second, and the token must fall.
        start_of_a_second().await;
        let (key, token) = key_and_token(&*keys, "key_1").await;
        assert_eq!(status_with_token(&app, &token).await, StatusCode::OK);
        assert_eq!(status_with_key(&app, &key).await, StatusCode::OK);

        let record = keys.revoke("key_1").await.unwrap();
        assert_eq!(record.status, KeyStatus::Revoked);
        assert_eq!(
            unix_now(),
            token_iat(&token),
            "the test stayed in one second"
        );
        assert_eq!(
            status_with_token(&app, &token).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status_with_key(&app, &key).await, StatusCode::UNAUTHORIZED);
        // Another key's token is not touched.
        assert_eq!(status_with_token(&app, &other_token).await, StatusCode::OK);
        // Revoking again succeeds and changes nothing.
        keys.revoke("key_1").await.unwrap();
        assert_eq!(
            status_with_token(&app, &token).await,
            StatusCode::UNAUTHORIZED
        );
    })
    .await;
}

#[tokio::test]
async fn a_revoking_update_revokes_the_tokens_too() {
    bounded(async {
        let (keys, app) = memory_app();
        let (_, token) = key_and_token(&*keys, "key_1").await;
        keys.update("key_1", KeyUpdate::new().status(KeyStatus::Revoked))
            .await
            .unwrap();
        assert_eq!(
            status_with_token(&app, &token).await,
            StatusCode::UNAUTHORIZED
        );
        // New scopes (or a new quota) revoke the tokens minted before, which carry the old
        // ones; a token minted after the call returned works.
        let (_, token_2) = key_and_token(&*keys, "key_2").await;
        keys.update("key_2", KeyUpdate::new().scopes(["weather:read", "x"]))
            .await
            .unwrap();
        assert_eq!(
            status_with_token(&app, &token_2).await,
            StatusCode::UNAUTHORIZED
        );
        let token_2 = issuer()
            .issue("key_2", ["weather:read"])
            .unwrap()
            .access_token;
        assert_eq!(status_with_token(&app, &token_2).await, StatusCode::OK);
        let (_, token_3) = key_and_token(&*keys, "key_3").await;
        keys.update(
            "key_3",
            KeyUpdate::new().quota(Some(keygate::Quota::per_minute(5))),
        )
        .await
        .unwrap();
        assert_eq!(
            status_with_token(&app, &token_3).await,
            StatusCode::UNAUTHORIZED
        );
        // An update of something else revokes nothing.
        let (_, token_4) = key_and_token(&*keys, "key_4").await;
        let metadata = [("plan".to_owned(), "pro".to_owned())]
            .into_iter()
            .collect();
        keys.update("key_4", KeyUpdate::new().metadata(metadata))
            .await
            .unwrap();
        assert_eq!(status_with_token(&app, &token_4).await, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn disabling_refuses_the_tokens_and_reenabling_lets_new_ones_work() {
    bounded(async {
        let (keys, app) = memory_app();
        // Disabled, enabled again and minted anew within about one second: the new token's
        // `iat` must still be past the cut-off.
        start_of_a_second().await;
        let (key, old_token) = key_and_token(&*keys, "key_1").await;
        assert_eq!(status_with_token(&app, &old_token).await, StatusCode::OK);

        keys.update("key_1", KeyUpdate::new().status(KeyStatus::Disabled))
            .await
            .unwrap();
        assert_eq!(
            status_with_token(&app, &old_token).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status_with_key(&app, &key).await, StatusCode::UNAUTHORIZED);

        let started = Instant::now();
        let record = keys
            .update("key_1", KeyUpdate::new().status(KeyStatus::Active))
            .await
            .unwrap();
        assert_eq!(record.status, KeyStatus::Active);
        assert!(started.elapsed() <= Duration::from_millis(1500));
        let new_token = issuer()
            .issue("key_1", ["weather:read"])
            .unwrap()
            .access_token;
        assert_eq!(status_with_token(&app, &new_token).await, StatusCode::OK);
        assert_eq!(status_with_key(&app, &key).await, StatusCode::OK);
        // The token minted before the key was disabled stays refused.
        assert_eq!(
            status_with_token(&app, &old_token).await,
            StatusCode::UNAUTHORIZED
        );
    })
    .await;
}

#[tokio::test]
async fn deleting_a_key_revokes_its_tokens_and_only_an_emergency_rotation_does() {
    bounded(async {
        let (keys, app) = memory_app();
        let (_, deleted) = key_and_token(&*keys, "key_1").await;
        keys.delete("key_1").await.unwrap();
        assert_eq!(
            status_with_token(&app, &deleted).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(keys.delete("key_1").await, Err(ManageError::NotFound));

        // A rotation with a grace keeps the tokens, as it keeps the old key for a while.
        let (_, planned) = key_and_token(&*keys, "key_2").await;
        keys.rotate("key_2", Duration::from_secs(60)).await.unwrap();
        assert_eq!(status_with_token(&app, &planned).await, StatusCode::OK);
        // One without (the key leaked) revokes them: whoever has the key may have minted them.
        keys.rotate("key_2", Duration::ZERO).await.unwrap();
        assert_eq!(
            status_with_token(&app, &planned).await,
            StatusCode::UNAUTHORIZED
        );
        let fresh = issuer()
            .issue("key_2", ["weather:read"])
            .unwrap()
            .access_token;
        assert_eq!(status_with_token(&app, &fresh).await, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn a_refused_change_revokes_nothing() {
    bounded(async {
        let store = MemoryStore::new();
        let revocations = MemoryRevocations::new();
        let keys = RevokeMintedTokens::new(store.clone(), revocations.clone());
        let app = routes().layer(AuthLayer::jwt_only(verifier().revocations(revocations)));
        let token = issuer()
            .issue("key_1", ["weather:read"])
            .unwrap()
            .access_token;
        assert_eq!(
            keys.revoke("key_1").await.unwrap_err(),
            ManageError::NotFound
        );
        assert_eq!(
            keys.update("key_1", KeyUpdate::new().status(KeyStatus::Disabled))
                .await
                .unwrap_err(),
            ManageError::NotFound
        );
        assert_eq!(status_with_token(&app, &token).await, StatusCode::OK);
    })
    .await;
}

/// The `iat` of a token.
fn token_iat(token: &str) -> u64 {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
    claims["iat"].as_u64().unwrap()
}

// ---------------------------------------------------------------------------------------------
// RedisRevocations
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "redis")]
mod redis_backed {
    use super::*;

    use std::net::SocketAddr;

    use common::proxy::Proxy;
    use keygate::jwt::{RedisRevocations, RedisRevocationsError, Revocations, TokenInfo};
    use services::redis_url;

    /// Polls `check` until it holds or `within` has passed; returns whether it held.
    async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if check().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `jti` of a token.
    fn token_jti(token: &str) -> String {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
        claims["jti"].as_str().unwrap().to_owned()
    }

    /// A prefix no other test or run uses.
    fn unique_prefix(test: &str) -> String {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        format!(
            "keygate-test:revocations:{test}:{:016x}:",
            u64::from_le_bytes(r)
        )
    }

    /// Deletes a prefix's keys when the test ends, passed or not.
    struct Cleanup {
        url: String,
        prefix: String,
    }

    impl Cleanup {
        fn new(test: &str) -> Self {
            Self {
                url: redis_url(),
                prefix: unique_prefix(test),
            }
        }

        fn jtis(&self) -> String {
            format!("{}jti", self.prefix)
        }

        fn subjects(&self) -> String {
            format!("{}subjects", self.prefix)
        }

        fn channel(&self) -> String {
            format!("{}events", self.prefix)
        }

        async fn connect(&self) -> RedisRevocations {
            self.connect_to(&self.url, None).await
        }

        async fn connect_to(&self, url: &str, max_staleness: Option<Duration>) -> RedisRevocations {
            RedisRevocations::builder(url)
                .prefix(&self.prefix)
                .resync_every(Duration::from_millis(300))
                .max_staleness(max_staleness)
                .connect()
                .await
                .expect("connect to KEYGATE_TEST_REDIS_URL")
        }

        async fn raw(&self) -> redis::aio::MultiplexedConnection {
            redis::Client::open(self.url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        }
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let Ok(client) = redis::Client::open(self.url.as_str()) else {
                return;
            };
            if let Ok(mut conn) = client.get_connection() {
                let _: Result<(), _> = redis::cmd("DEL")
                    .arg(self.jtis())
                    .arg(self.subjects())
                    .query(&mut conn);
            }
        }
    }

    fn jti(jti: &str) -> TokenInfo<'_> {
        TokenInfo::new("someone", Some(jti), Some(unix_now()))
    }

    fn subject(subject: &str, iat: u64) -> TokenInfo<'_> {
        TokenInfo::new(subject, None, Some(iat))
    }

    /// Polls until `list` says `token` is revoked, for at most 2 s.
    async fn revoked_soon(list: &RedisRevocations, token: TokenInfo<'_>) -> bool {
        eventually(Duration::from_secs(2), || {
            std::future::ready(list.is_revoked(&token))
        })
        .await
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn a_revocation_on_one_instance_reaches_the_others() {
        bounded(async {
            let t = Cleanup::new("reach");
            let a = t.connect().await;
            let b = t.connect().await;
            let now = unix_now();
            assert!(!b.is_revoked(&jti("j-1")));
            assert!(!b.is_revoked(&subject("s-1", now)));

            a.revoke_jti("j-1", now + 3600).await.unwrap();
            assert!(a.is_revoked(&jti("j-1")), "applied locally at once");
            assert!(revoked_soon(&b, jti("j-1")).await, "B sees A's jti");
            assert!(!b.is_revoked(&jti("j-2")));

            a.revoke_subject_before("s-1", now + 1).await.unwrap();
            assert!(a.is_revoked(&subject("s-1", now)));
            assert!(
                revoked_soon(&b, subject("s-1", now)).await,
                "B sees A's cut-off"
            );
            assert!(
                !b.is_revoked(&subject("s-1", now + 1)),
                "tokens after the cut-off pass"
            );
            assert!(!b.is_revoked(&subject("s-2", now)));

            // An earlier cut-off from B never moves A's back, in Redis or in either mirror.
            b.revoke_subject_before("s-1", now - 100).await.unwrap();
            let mut raw = t.raw().await;
            let stored: u64 = redis::cmd("HGET")
                .arg(t.subjects())
                .arg("s-1")
                .query_async(&mut raw)
                .await
                .unwrap();
            assert_eq!(stored, now + 1);
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(a.is_revoked(&subject("s-1", now)));
            assert!(b.is_revoked(&subject("s-1", now)));

            // An instance connected later has everything as soon as it is connected.
            let c = t.connect().await;
            assert!(c.is_revoked(&jti("j-1")));
            assert!(c.is_revoked(&subject("s-1", now)));
            assert!(!c.is_revoked(&subject("s-1", now + 1)));
            assert!(!c.is_revoked(&jti("j-2")));
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn a_token_revoked_on_another_instance_gets_401() {
        bounded(async {
            let t = Cleanup::new("http");
            let a = t.connect().await;
            let b = t.connect().await;
            let app = routes().layer(AuthLayer::jwt_only(verifier().revocations(b.clone())));
            let token = issuer()
                .issue("user-1", ["weather:read"])
                .unwrap()
                .access_token;
            let other = issuer()
                .issue("user-2", ["weather:read"])
                .unwrap()
                .access_token;
            assert_eq!(status_with_token(&app, &token).await, StatusCode::OK);
            assert_eq!(status_with_token(&app, &other).await, StatusCode::OK);

            a.revoke_jti(&token_jti(&token), unix_now() + 3600)
                .await
                .unwrap();
            let refused = eventually(Duration::from_secs(2), || async {
                status_with_token(&app, &token).await == StatusCode::UNAUTHORIZED
            })
            .await;
            assert!(refused, "the revoked token still works on B");
            assert_eq!(status_with_token(&app, &other).await, StatusCode::OK);

            a.revoke_subject_before("user-2", unix_now() + 1)
                .await
                .unwrap();
            let refused = eventually(Duration::from_secs(2), || async {
                status_with_token(&app, &other).await == StatusCode::UNAUTHORIZED
            })
            .await;
            assert!(refused, "the revoked subject's token still works on B");
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn revoking_a_key_on_one_instance_refuses_its_tokens_on_another() {
        bounded(async {
            let t = Cleanup::new("minted");
            let a = t.connect().await;
            let b = t.connect().await;
            let store = MemoryStore::new();
            let keys: Arc<dyn KeyManager> = Arc::new(RevokeMintedTokens::new(store.clone(), a));
            let app = routes().layer(AuthLayer::new(store).jwt(verifier().revocations(b)));
            let (key, token) = key_and_token(&*keys, "key_1").await;
            assert_eq!(status_with_token(&app, &token).await, StatusCode::OK);

            keys.revoke("key_1").await.unwrap();
            assert_eq!(status_with_key(&app, &key).await, StatusCode::UNAUTHORIZED);
            let refused = eventually(Duration::from_secs(2), || async {
                status_with_token(&app, &token).await == StatusCode::UNAUTHORIZED
            })
            .await;
            assert!(refused, "the revoked key's token still works on B");
        })
        .await;
    }

    /// Where the test Redis listens.
    async fn redis_addr(url: &str) -> (SocketAddr, i64) {
        let client = redis::Client::open(url).unwrap();
        let info = client.get_connection_info();
        let db = info.redis_settings().db();
        let hostport = info.addr().to_string();
        let addr = tokio::net::lookup_host(hostport.as_str())
            .await
            .unwrap()
            .next()
            .expect("the Redis address resolves");
        (addr, db)
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn during_an_outage_the_mirror_answers_then_fails_closed_then_recovers() {
        bounded(async {
            let t = Cleanup::new("outage");
            let (upstream, db) = redis_addr(&t.url).await;
            let proxy = Proxy::start(upstream).await;
            let max_staleness = Duration::from_secs(2);
            let behind = t
                .connect_to(
                    &format!("redis://{}/{db}", proxy.addr()),
                    Some(max_staleness),
                )
                .await;
            let direct = t.connect().await;
            let app = routes().layer(AuthLayer::jwt_only(verifier().revocations(behind.clone())));
            let token = issuer()
                .issue("user-1", ["weather:read"])
                .unwrap()
                .access_token;
            let now = unix_now();

            direct.revoke_jti("known", now + 3600).await.unwrap();
            assert!(revoked_soon(&behind, jti("known")).await);
            assert_eq!(status_with_token(&app, &token).await, StatusCode::OK);

            proxy.cut();
            let cut_at = Instant::now();
            // The mirror answers with what it knows.
            assert!(behind.is_revoked(&jti("known")));
            assert!(!behind.is_revoked(&jti("unknown")));
            assert_eq!(status_with_token(&app, &token).await, StatusCode::OK);
            // A revocation made elsewhere meanwhile is missed.
            direct.revoke_jti("during", now + 3600).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!behind.is_revoked(&jti("during")));
            assert!(!behind.is_stale());
            assert!(
                cut_at.elapsed() < max_staleness / 2,
                "the checks of the outage's start took too long to mean anything"
            );

            // Past max_staleness, every token is refused.
            let closed = eventually(Duration::from_secs(5), || async {
                status_with_token(&app, &token).await == StatusCode::UNAUTHORIZED
            })
            .await;
            assert!(closed, "tokens still pass with a stale mirror");
            assert!(cut_at.elapsed() >= max_staleness - Duration::from_millis(500));
            assert!(behind.is_stale());
            assert!(behind.is_revoked(&jti("unknown")));

            // Back: it syncs by itself, takes tokens again, and has what it missed.
            proxy.restore();
            let open = eventually(Duration::from_secs(5), || async {
                status_with_token(&app, &token).await == StatusCode::OK
            })
            .await;
            assert!(open, "tokens are still refused after Redis came back");
            assert!(!behind.is_stale());
            assert!(behind.is_revoked(&jti("during")), "the missed revocation");
            assert!(behind.is_revoked(&jti("known")));
            assert!(!behind.is_revoked(&jti("unknown")));
            // And follows the channel again.
            direct.revoke_jti("after", now + 3600).await.unwrap();
            assert!(revoked_soon(&behind, jti("after")).await);
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn without_max_staleness_the_mirror_answers_however_old() {
        bounded(async {
            let t = Cleanup::new("no-staleness");
            let (upstream, db) = redis_addr(&t.url).await;
            let proxy = Proxy::start(upstream).await;
            let behind = t
                .connect_to(&format!("redis://{}/{db}", proxy.addr()), None)
                .await;
            behind.revoke_jti("known", unix_now() + 3600).await.unwrap();
            proxy.cut();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert!(!behind.is_stale());
            assert!(behind.synced_ago() >= Duration::from_secs(1));
            assert!(behind.is_revoked(&jti("known")));
            assert!(!behind.is_revoked(&jti("unknown")));
            // Writes fail, typed, while Redis is away.
            let e = behind
                .revoke_jti("x", unix_now() + 3600)
                .await
                .expect_err("Redis is cut off");
            assert!(
                matches!(
                    e,
                    RedisRevocationsError::Redis(_) | RedisRevocationsError::Timeout
                ),
                "{e:?}"
            );
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn a_failed_token_revocation_is_unavailable_and_a_retry_completes_it() {
        bounded(async {
            let t = Cleanup::new("retry");
            let (upstream, db) = redis_addr(&t.url).await;
            let proxy = Proxy::start(upstream).await;
            let behind = t
                .connect_to(&format!("redis://{}/{db}", proxy.addr()), None)
                .await;
            let observer = t.connect().await;
            let store = MemoryStore::new();
            let keys = RevokeMintedTokens::new(store.clone(), behind);
            keys.issue(KeyRecord::new("key_1", "acme")).await.unwrap();

            proxy.cut();
            let e = keys.revoke("key_1").await.unwrap_err();
            assert!(matches!(e, ManageError::Unavailable(_)), "{e:?}");
            // The key is revoked, its tokens not yet.
            assert_eq!(store.get("key_1").unwrap().status, KeyStatus::Revoked);
            assert!(!observer.is_revoked(&subject("key_1", unix_now())));

            proxy.restore();
            let retried = eventually(Duration::from_secs(5), || async {
                keys.revoke("key_1").await.is_ok()
            })
            .await;
            assert!(retried, "the retry never went through");
            assert!(revoked_soon(&observer, subject("key_1", unix_now())).await);
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn long_expired_jtis_are_dropped() {
        bounded(async {
            let t = Cleanup::new("purge");
            let list = t.connect().await;
            let now = unix_now();
            list.revoke_jti("old", now - 2 * 3600).await.unwrap();
            list.revoke_jti("recent", now - 60).await.unwrap();
            list.revoke_jti("live", now + 3600).await.unwrap();
            let mut raw = t.raw().await;
            let dropped = eventually(Duration::from_secs(3), || {
                let mut raw = raw.clone();
                let key = t.jtis();
                async move {
                    let score: Option<f64> = redis::cmd("ZSCORE")
                        .arg(key)
                        .arg("old")
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                    score.is_none()
                }
            })
            .await;
            assert!(dropped, "the long-expired jti is still in Redis");
            assert!(!list.is_revoked(&jti("old")), "and in the mirror");
            // Within the grace after `exp` (verifiers' leeway), and live ones, stay.
            let left: Vec<String> = redis::cmd("ZRANGE")
                .arg(t.jtis())
                .arg(0)
                .arg(-1)
                .query_async(&mut raw)
                .await
                .unwrap();
            assert_eq!(left, ["recent", "live"]);
            assert!(list.is_revoked(&jti("recent")));
        })
        .await;
    }

    #[tokio::test]
    #[ignore = "needs KEYGATE_TEST_REDIS_URL"]
    async fn the_subscription_ends_with_the_last_handle() {
        bounded(async {
            let t = Cleanup::new("drop");
            let raw = t.raw().await;
            let channel = t.channel();
            let subscribers = |mut raw: redis::aio::MultiplexedConnection, channel: String| async move {
                let (_, n): (String, u64) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(channel)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                n
            };
            let list = t.connect().await;
            assert_eq!(subscribers(raw.clone(), channel.clone()).await, 1);
            let verifier = verifier().revocations(list.clone());
            drop(list);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                subscribers(raw.clone(), channel.clone()).await,
                1,
                "a verifier still holds the list"
            );
            drop(verifier);
            let gone = eventually(Duration::from_secs(2), || {
                let count = subscribers(raw.clone(), channel.clone());
                async move { count.await == 0 }
            })
            .await;
            assert!(gone, "the background task outlived its handles");
        })
        .await;
    }

    #[tokio::test]
    async fn connecting_without_redis_fails() {
        bounded(async {
            let started = Instant::now();
            let e = RedisRevocations::connect("redis://127.0.0.1:1/")
                .await
                .expect_err("nothing listens on port 1");
            assert!(
                matches!(
                    e,
                    RedisRevocationsError::Redis(_) | RedisRevocationsError::Timeout
                ),
                "{e:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(10));
            assert!(RedisRevocations::connect("not a url").await.is_err());
        })
        .await;
    }
}
