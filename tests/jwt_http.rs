//! JWTs through the layer, on a real axum `Router` driven with `tower::ServiceExt::oneshot`:
//! one `AuthLayer` taking API keys and tokens side by side, `Claims<T>` and `Option<Claims<T>>`,
//! the verified-token cache (hit path, expiry at `exp`, revocation and key rotation while
//! cached, verifiers derived from one another), `TokenIssuer` tokens, and a `RateLimitLayer`
//! behind the auth layer limiting a token's caller by its subject.
//!
//! Every verifier here runs on a `ManualClock` at `T0` (2030), so expiry is exact.

#![cfg(all(feature = "jwt", feature = "axum"))]

mod common;
mod jwt_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::{Json, Router};
use common::{
    INVALID_TOKEN, NOT_VALID, REALM, assert_problem, get_with, send, store_with_key, with_bearer,
    with_key_at,
};
use http::{Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use jwt_support::*;
use keygate::clock::ManualClock;
use keygate::jwt::{
    Claims, JwtKey, JwtVerifier, KeySet, KeySource, MemoryRevocations, StaticKeys, TokenIssuer,
};
use keygate::ratelimit::MemoryLimiter;
use keygate::store::MemoryStore;
use keygate::{
    Principal, Quota, auth::AuthLayer, ratelimit::RateLimitLayer, scope::RequireScopeLayer,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceBuilder;

const EXPIRED: &str =
    r#"Bearer realm="R", error="invalid_token", error_description="token expired""#;
const EXPIRED_DETAIL: &str = "The token has expired.";

// ---------------------------------------------------------------------------------------------
// Helpers

/// The caller as JSON: id, kind, owner, scopes, and tier.
async fn who(p: Principal) -> Json<Value> {
    let mut v = serde_json::to_value(&p).unwrap();
    v["tier"] = json!(p.tier());
    Json(v)
}

fn routes() -> Router {
    Router::new().route("/who", get(who))
}

fn bearer(token: &str) -> Request<Body> {
    with_bearer("/who", token)
}

fn hs_verifier(clock: &ManualClock) -> JwtVerifier {
    JwtVerifier::with_keys([JwtKey::hmac(HMAC_SECRET).kid(KID_HS)]).clock(clock.clone())
}

fn claims(sub: &str, ttl: u64) -> Value {
    json!({"sub": sub, "iat": T0, "exp": T0 + ttl})
}

/// The `jti` in a token's payload.
fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&unb64(payload)).unwrap();
    claims["jti"].as_str().expect("a jti").to_owned()
}

/// A key source over `StaticKeys` that counts full verifications: the verifier asks for the
/// current key set only when a token is not served from the cache (a hit only compares the
/// generation).
#[derive(Clone)]
struct Counting {
    keys: StaticKeys,
    sets: Arc<AtomicUsize>,
}

impl Counting {
    fn new(keys: impl IntoIterator<Item = JwtKey>) -> Self {
        Self {
            keys: StaticKeys::new(KeySet::new(keys)),
            sets: Arc::default(),
        }
    }

    /// How many tokens were verified in full.
    fn verifications(&self) -> usize {
        self.sets.load(Ordering::SeqCst)
    }
}

impl KeySource for Counting {
    fn current(&self) -> Arc<KeySet> {
        self.sets.fetch_add(1, Ordering::SeqCst);
        self.keys.current()
    }

    fn current_generation(&self) -> u64 {
        self.keys.current_generation()
    }
}

async fn status(app: &Router, token: &str) -> StatusCode {
    send(app.clone(), bearer(token)).await.status
}

// ---------------------------------------------------------------------------------------------
// API keys and tokens side by side

#[tokio::test]
async fn one_layer_takes_api_keys_and_tokens_side_by_side() {
    let (store, key) = store_with_key();
    let clock = clock();
    let verifier = hs_verifier(&clock);
    let app = routes().layer(AuthLayer::new(store).jwt(verifier.clone()).realm(REALM));

    let api_key_caller = json!({
        "id": "key_1", "kind": "api_key", "owner": "acme", "scopes": ["weather:read"], "tier": null,
    });
    for req in [
        with_key_at("/who", key.expose_secret()),
        with_bearer("/who", key.expose_secret()),
        get_with(&format!("/who?key={}", key.expose_secret()), &[]),
    ] {
        let reply = send(app.clone(), req).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.json(), api_key_caller);
    }

    let token = hs_token(&json!({
        "sub": "user-7",
        "iss": "https://issuer.test",
        "exp": T0 + 600,
        "scope": "weather:read weather:write",
    }));
    let reply = send(app.clone(), bearer(&token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        reply.json(),
        json!({
            "id": "user-7", "kind": "jwt", "owner": "https://issuer.test",
            "scopes": ["weather:read", "weather:write"], "tier": null,
        })
    );
    assert_eq!(
        verifier.cached(),
        1,
        "the API keys did not reach the verifier"
    );

    // Scopes from `scp` and `permissions` arrays, a numeric subject.
    for (claim, value) in [
        ("scp", json!(["a", "b"])),
        ("permissions", json!(["a", "b"])),
        ("scope", json!("a  b")),
    ] {
        let mut c = claims("u", 600);
        c[claim] = value;
        let reply = send(app.clone(), bearer(&hs_token(&c))).await;
        assert_eq!(reply.json()["scopes"], json!(["a", "b"]), "{claim}");
    }
    let reply = send(
        app.clone(),
        bearer(&hs_token(&json!({"sub": 42, "exp": T0 + 9}))),
    )
    .await;
    assert_eq!(reply.json()["id"], "42");

    // A bad key and a bad token read alike; a key and a token at once are ambiguous.
    let unknown = send(
        app.clone(),
        get_with("/who", &[("x-api-key", "sk_unknown_key")]),
    )
    .await;
    assert_problem(&unknown, 401, Some(INVALID_TOKEN), NOT_VALID);
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 2.., "AA");
    let forged = send(app.clone(), bearer(&forged)).await;
    assert_problem(&forged, 401, Some(INVALID_TOKEN), NOT_VALID);
    assert_eq!(unknown.head(), forged.head());
    let both = send(
        app.clone(),
        get_with(
            "/who",
            &[
                ("x-api-key", key.expose_secret()),
                ("authorization", &format!("Bearer {token}")),
            ],
        ),
    )
    .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn either_kind_alone() {
    let (store, key) = store_with_key();
    let clock = clock();
    let token = hs_token(&claims("user-7", 600));

    // Keys only: a token is just an unknown key.
    let keys_only = routes().layer(AuthLayer::new(store.clone()).realm(REALM));
    assert_eq!(status(&keys_only, &token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&keys_only, key.expose_secret()).await,
        StatusCode::OK
    );

    // Tokens only: the API key is refused.
    let jwt_only = routes().layer(AuthLayer::jwt_only(hs_verifier(&clock)).realm(REALM));
    assert_eq!(status(&jwt_only, &token).await, StatusCode::OK);
    let reply = send(jwt_only.clone(), bearer(key.expose_secret())).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
}

#[tokio::test]
async fn a_tokens_scopes_meet_require_scope_layer() {
    let clock = clock();
    let app = Router::new()
        .route("/write", get(|| async { "written" }))
        .route_layer(RequireScopeLayer::new("weather:write").realm(REALM))
        .layer(AuthLayer::jwt_only(hs_verifier(&clock)).realm(REALM));
    let mut c = claims("u", 600);
    c["scope"] = json!("weather:read weather:write");
    let req = |c: &Value| with_bearer("/write", &hs_token(c));
    assert_eq!(send(app.clone(), req(&c)).await.status, StatusCode::OK);
    c["scope"] = json!("weather:read");
    let reply = send(app.clone(), req(&c)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="R", error="insufficient_scope", scope="weather:write""#)
    );
}

// ---------------------------------------------------------------------------------------------
// Claims<T>

/// Claims as many existing services mint them: `{"userId": 12345}`, a number.
#[derive(Debug, Clone, Deserialize)]
struct SeedClaims {
    #[serde(rename = "userId")]
    user_id: u64,
    #[serde(default)]
    name: Option<String>,
}

fn claims_app(store: MemoryStore, clock: &ManualClock) -> Router {
    let verifier = hs_verifier(clock)
        .subject_claim("userId")
        .claims::<SeedClaims>();
    Router::new()
        .route(
            "/claims",
            get(|c: Claims<SeedClaims>, p: Principal| async move {
                format!("{} {} {:?}", c.user_id, p.id(), c.name)
            }),
        )
        .route(
            "/maybe",
            get(|c: Option<Claims<SeedClaims>>, p: Principal| async move {
                match c {
                    Some(c) => format!("claims of {}", c.user_id),
                    None => format!("no claims for {}", p.id()),
                }
            }),
        )
        .layer(AuthLayer::new(store).jwt(verifier).realm(REALM))
}

#[tokio::test]
async fn claims_extractor_reads_a_numeric_user_id() {
    let (store, key) = store_with_key();
    let clock = clock();
    let app = claims_app(store, &clock);

    // A token such a service mints: `{"userId": 12345}`, expiresIn "2h", made by jsonwebtoken.
    let token = jsonwebtoken::encode(
        &Header::default(),
        &json!({"userId": 12345, "name": "Ada", "iat": T0, "exp": T0 + 7200}),
        &hmac_signing_key(),
    )
    .unwrap();
    let reply = send(app.clone(), with_bearer("/claims", &token)).await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, r#"12345 12345 Some("Ada")"#)
    );
    let reply = send(app.clone(), with_bearer("/maybe", &token)).await;
    assert_eq!(reply.text(), "claims of 12345");

    // The same through TokenIssuer (that payload and `expiresIn: "2h"`).
    let issued = TokenIssuer::hmac(HMAC_SECRET)
        .kid(KID_HS)
        .ttl(Duration::from_secs(2 * 3600))
        .clock(clock.clone())
        .issue_with("ignored", ["weather:read"], json!({"userId": 12345}))
        .unwrap();
    assert_eq!(issued.expires_in, 7200);
    let reply = send(app.clone(), with_bearer("/claims", &issued.access_token)).await;
    assert_eq!(reply.text(), "12345 12345 None");

    // An API-key caller: `Option<Claims<T>>` is None, `Claims<T>` is refused with 401.
    let reply = send(
        app.clone(),
        get_with("/maybe", &[("x-api-key", key.expose_secret())]),
    )
    .await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "no claims for key_1")
    );
    let reply = send(
        app.clone(),
        get_with("/claims", &[("x-api-key", key.expose_secret())]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_whose_payload_does_not_fit_t_is_refused() {
    let (store, _) = store_with_key();
    let clock = clock();
    let app = claims_app(store, &clock);
    for payload in [
        // A subject the principal could take, but not a u64 for T.
        json!({"userId": "12345", "exp": T0 + 60}),
        json!({"userId": -1, "exp": T0 + 60}),
        // `name` of the wrong type.
        json!({"userId": 12345, "name": 7, "exp": T0 + 60}),
        // No subject at all.
        json!({"sub": "12345", "exp": T0 + 60}),
    ] {
        let reply = send(app.clone(), with_bearer("/claims", &hs_token(&payload))).await;
        assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    }
    let ok = json!({"userId": 12345, "exp": T0 + 60});
    let reply = send(app.clone(), with_bearer("/claims", &hs_token(&ok))).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// A handler asking for `Claims<T>` of a type the verifier does not decode is a server
/// misconfiguration: 500, and the answer says that the claims type does not match — not that
/// the `AuthLayer` is missing, which it is not.
#[tokio::test]
async fn claims_of_another_type_than_the_verifiers_say_so() {
    #[derive(Clone, Deserialize)]
    struct OtherClaims {
        #[allow(dead_code)]
        plan: String,
    }
    let clock = clock();
    let app = Router::new()
        .route(
            "/other",
            get(|_: Claims<OtherClaims>| async { "unreachable" }),
        )
        .layer(
            AuthLayer::jwt_only(
                hs_verifier(&clock)
                    .claims::<SeedClaims>()
                    .subject_claim("userId"),
            )
            .realm(REALM),
        );
    let token = hs_token(&json!({"userId": 7, "plan": "pro", "exp": T0 + 60}));
    let reply = send(app.clone(), with_bearer("/other", &token)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let detail = reply.detail();
    assert!(
        detail.contains("claims of a type the JwtVerifier does not decode"),
        "{detail}"
    );
    assert!(!detail.contains("AuthLayer"), "{detail}");
    assert!(
        !detail.contains("OtherClaims"),
        "type names stay in the logs: {detail}"
    );

    // The same with a verifier that decodes no claims at all.
    let app = Router::new()
        .route(
            "/other",
            get(|_: Claims<OtherClaims>| async { "unreachable" }),
        )
        .layer(AuthLayer::jwt_only(hs_verifier(&clock).subject_claim("userId")).realm(REALM));
    let reply = send(app, with_bearer("/other", &token)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.detail().contains(".claims::<T>()"));
}

// ---------------------------------------------------------------------------------------------
// The verified-token cache

#[tokio::test]
async fn a_repeated_token_is_served_from_the_cache() {
    let clock = clock();
    let source = Counting::new([JwtKey::hmac(HMAC_SECRET).kid(KID_HS)]);
    let verifier = JwtVerifier::new(source.clone()).clock(clock.clone());
    let app = routes().layer(AuthLayer::jwt_only(verifier.clone()).realm(REALM));
    let token = hs_token(&claims("alice", 600));

    assert_eq!((verifier.cached(), source.verifications()), (0, 0));
    let first = send(app.clone(), bearer(&token)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!((verifier.cached(), source.verifications()), (1, 1));
    for _ in 0..3 {
        let again = send(app.clone(), bearer(&token)).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.json(), first.json());
    }
    assert_eq!(
        (verifier.cached(), source.verifications()),
        (1, 1),
        "the repeats were verified again"
    );

    // Another token is verified, and then cached too.
    let other = hs_token(&claims("bob", 600));
    assert_eq!(status(&app, &other).await, StatusCode::OK);
    assert_eq!((verifier.cached(), source.verifications()), (2, 2));

    // The counter does see every verification when the cache is off.
    let source = Counting::new([JwtKey::hmac(HMAC_SECRET).kid(KID_HS)]);
    let uncached = JwtVerifier::new(source.clone())
        .clock(clock.clone())
        .cache(0);
    let app = routes().layer(AuthLayer::jwt_only(uncached.clone()).realm(REALM));
    for _ in 0..3 {
        assert_eq!(status(&app, &token).await, StatusCode::OK);
    }
    assert_eq!((uncached.cached(), source.verifications()), (0, 3));
}

#[tokio::test]
async fn a_cached_token_expires_at_exp_plus_leeway() {
    for leeway in [0, 10, 60] {
        let clock = clock();
        let source = Counting::new([JwtKey::hmac(HMAC_SECRET).kid(KID_HS)]);
        let verifier = JwtVerifier::new(source.clone())
            .clock(clock.clone())
            .leeway(Duration::from_secs(leeway));
        let app = routes().layer(AuthLayer::jwt_only(verifier.clone()).realm(REALM));
        let token = hs_token(&claims("alice", 120));

        assert_eq!(status(&app, &token).await, StatusCode::OK);
        clock.advance(Duration::from_secs(120 + leeway)); // exp + leeway
        assert_eq!(
            status(&app, &token).await,
            StatusCode::OK,
            "leeway {leeway}"
        );
        clock.advance(Duration::from_secs(1));
        let reply = send(app.clone(), bearer(&token)).await;
        assert_problem(&reply, 401, Some(EXPIRED), EXPIRED_DETAIL);
        // All three answers came from the cache: it never outlives `exp`.
        assert_eq!((verifier.cached(), source.verifications()), (1, 1));
        // And a fresh verification agrees.
        let fresh = JwtVerifier::with_keys([JwtKey::hmac(HMAC_SECRET).kid(KID_HS)])
            .clock(clock.clone())
            .leeway(Duration::from_secs(leeway));
        assert_eq!(
            fresh.verify(&token).unwrap_err(),
            keygate::jwt::VerifyError::Expired
        );
    }
}

#[tokio::test]
async fn a_cached_token_not_yet_valid_becomes_valid_at_nbf_minus_leeway() {
    let clock = clock();
    let verifier = hs_verifier(&clock).leeway(Duration::from_secs(10));
    let app = routes().layer(AuthLayer::jwt_only(verifier.clone()).realm(REALM));
    let mut c = claims("alice", 600);
    c["nbf"] = json!(T0 + 100);
    let token = hs_token(&c);
    let reply = send(app.clone(), bearer(&token)).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    assert_eq!(verifier.cached(), 0, "a token not yet valid is not cached");
    clock.advance(Duration::from_secs(89));
    assert_eq!(status(&app, &token).await, StatusCode::UNAUTHORIZED);
    clock.advance(Duration::from_secs(1)); // nbf - leeway
    assert_eq!(status(&app, &token).await, StatusCode::OK);
}

#[tokio::test]
async fn revoking_a_jti_fails_the_cached_token_on_its_next_use() {
    let clock = clock();
    let revocations = MemoryRevocations::new();
    let source = Counting::new([JwtKey::hmac(HMAC_SECRET).kid(KID_HS)]);
    let verifier = JwtVerifier::new(source.clone())
        .clock(clock.clone())
        .revocations(revocations.clone());
    let app = routes().layer(AuthLayer::jwt_only(verifier.clone()).realm(REALM));
    let issuer = TokenIssuer::hmac(HMAC_SECRET)
        .kid(KID_HS)
        .clock(clock.clone())
        .ttl(Duration::from_secs(600));
    let first = issuer.issue("u1", ["a"]).unwrap().access_token;
    let second = issuer.issue("u1", ["a"]).unwrap().access_token;
    assert_ne!(jti_of(&first), jti_of(&second));

    for token in [&first, &second, &first, &second] {
        assert_eq!(status(&app, token).await, StatusCode::OK);
    }
    assert_eq!((verifier.cached(), source.verifications()), (2, 2));

    revocations.revoke_jti(&jti_of(&first), T0 + 600);
    let reply = send(app.clone(), bearer(&first)).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    assert_eq!(status(&app, &second).await, StatusCode::OK);
    assert_eq!(status(&app, &first).await, StatusCode::UNAUTHORIZED);
    // Decided on the cached entries: no new verification.
    assert_eq!((verifier.cached(), source.verifications()), (2, 2));

    // Purging entries of tokens that expired does not bring back a live one.
    revocations.purge(T0);
    assert_eq!(status(&app, &first).await, StatusCode::UNAUTHORIZED);
    revocations.purge(T0 + 601);
    assert_eq!(status(&app, &first).await, StatusCode::OK);
}

#[tokio::test]
async fn revoking_a_subject_fails_its_cached_tokens_issued_before() {
    let clock = clock();
    let revocations = MemoryRevocations::new();
    let verifier = hs_verifier(&clock).revocations(revocations.clone());
    let app = routes().layer(AuthLayer::jwt_only(verifier.clone()).realm(REALM));
    let issuer = TokenIssuer::hmac(HMAC_SECRET)
        .kid(KID_HS)
        .clock(clock.clone())
        .ttl(Duration::from_secs(600));
    let u1 = issuer.issue("u1", ["a"]).unwrap().access_token;
    let u2 = issuer.issue("u2", ["a"]).unwrap().access_token;
    let u1_no_iat = hs_token(&json!({"sub": "u1", "exp": T0 + 600}));
    for token in [&u1, &u2, &u1_no_iat] {
        assert_eq!(status(&app, token).await, StatusCode::OK);
    }
    assert_eq!(verifier.cached(), 3);

    // Issued at T0: revoked by "before T0 + 1", not by "before T0".
    revocations.revoke_subject_before("u1", T0);
    assert_eq!(status(&app, &u1).await, StatusCode::OK);
    // A token without `iat` cannot show it came after: revoked.
    assert_eq!(status(&app, &u1_no_iat).await, StatusCode::UNAUTHORIZED);
    revocations.revoke_subject_before("u1", T0 + 1);
    let reply = send(app.clone(), bearer(&u1)).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    assert_eq!(status(&app, &u2).await, StatusCode::OK);

    // A token issued after the cut-off works; an earlier "before" does not undo the cut-off.
    clock.advance(Duration::from_secs(2));
    let fresh = issuer.issue("u1", ["a"]).unwrap().access_token;
    assert_eq!(status(&app, &fresh).await, StatusCode::OK);
    revocations.revoke_subject_before("u1", T0 - 100);
    assert_eq!(status(&app, &u1).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rotating_keys_with_static_keys_replace() {
    let clock = clock();
    let old_secret = b"old secret, test-only, 32 bytes!!";
    let new_secret = b"new secret, test-only, 32 bytes!!";
    let keys = StaticKeys::new(KeySet::new([JwtKey::hmac(old_secret).kid("old")]));
    let verifier = JwtVerifier::new(keys.clone()).clock(clock.clone());
    let app = routes().layer(AuthLayer::jwt_only(verifier.clone()).realm(REALM));
    let old_token = TokenIssuer::hmac(old_secret)
        .kid("old")
        .clock(clock.clone())
        .issue("u1", ["a"])
        .unwrap()
        .access_token;
    let new_token = TokenIssuer::hmac(new_secret)
        .kid("new")
        .clock(clock.clone())
        .issue("u2", ["a"])
        .unwrap()
        .access_token;
    assert_eq!(status(&app, &old_token).await, StatusCode::OK);
    assert_eq!(status(&app, &new_token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(verifier.cached(), 1);

    // The new key comes in next to the old one: both work.
    keys.replace(KeySet::new([
        JwtKey::hmac(old_secret).kid("old"),
        JwtKey::hmac(new_secret).kid("new"),
    ]));
    assert_eq!(status(&app, &old_token).await, StatusCode::OK);
    assert_eq!(status(&app, &new_token).await, StatusCode::OK);

    // The old key is removed: its token fails at once, although it is in the cache.
    assert!(verifier.cached() >= 1);
    keys.replace(KeySet::new([JwtKey::hmac(new_secret).kid("new")]));
    let reply = send(app.clone(), bearer(&old_token)).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    assert_eq!(status(&app, &new_token).await, StatusCode::OK);

    // The old secret under the new kid (a mix-up in rotation) does not revive the old token.
    keys.replace(KeySet::new([JwtKey::hmac(old_secret).kid("new")]));
    assert_eq!(status(&app, &old_token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&app, &new_token).await, StatusCode::UNAUTHORIZED);
}

/// Verifiers configured from one base with `clone()` must not reuse each other's verdicts:
/// a token the lenient base verified (and cached) is still checked against the stricter
/// rules of the derived verifier.
#[test]
fn derived_verifiers_do_not_share_verdicts() {
    let clock = clock();
    let base = hs_verifier(&clock);
    let strict = base.clone().issuer(["https://issuer.test"]);
    let audience = base.clone().audience(["weather"]);
    let by_user_id = base.clone().subject_claim("userId");
    let exp_required = base.clone().require_exp(false);
    let typed = base.clone().claims::<SeedClaims>();

    let token = hs_token(&json!({
        "sub": "alice", "userId": 7, "iss": "https://evil.test", "exp": T0 + 600,
    }));
    assert_eq!(base.verify(&token).unwrap().id(), "alice");
    assert_eq!(base.cached(), 1);

    assert!(
        strict.verify(&token).is_err(),
        "issuer rule skipped via the cache"
    );
    assert!(
        audience.verify(&token).is_err(),
        "audience rule skipped via the cache"
    );
    assert_eq!(
        by_user_id.verify(&token).unwrap().id(),
        "7",
        "subject claim of the base used via the cache"
    );
    assert!(exp_required.verify(&token).is_ok());
    // A payload that does not fit T: the base accepts it, the typed verifier must not.
    let no_user_id = hs_token(&json!({"sub": "bob", "exp": T0 + 600}));
    assert_eq!(base.verify(&no_user_id).unwrap().id(), "bob");
    assert!(
        typed.verify(&no_user_id).is_err(),
        "a verdict without T reused by a verifier with claims::<T>"
    );
    // The base is unchanged by what its derivatives saw.
    assert_eq!(base.verify(&token).unwrap().id(), "alice");
}

// ---------------------------------------------------------------------------------------------
// TokenIssuer

#[tokio::test]
async fn issued_tokens_with_iss_aud_kid_verify_against_a_verifier_configured_alike() {
    let clock = clock();
    let secret = b"issuer secret, test-only, 32 bytes";
    let issuer = TokenIssuer::hmac(secret)
        .kid("2026-11")
        .issuer("https://auth.test")
        .audience("weather")
        .ttl(Duration::from_secs(2 * 3600))
        .clock(clock.clone());
    let issued = issuer.issue("key_1", ["weather:read"]).unwrap();
    assert_eq!((issued.token_type, issued.expires_in), ("Bearer", 7200));
    let body = serde_json::to_value(&issued).unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 7200);
    assert!(!format!("{issued:?}").contains(&issued.access_token));

    let token = &issued.access_token;
    let (header, payload) = {
        let mut parts = token.split('.');
        let h: Value = serde_json::from_slice(&unb64(parts.next().unwrap())).unwrap();
        let p: Value = serde_json::from_slice(&unb64(parts.next().unwrap())).unwrap();
        (h, p)
    };
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["kid"], "2026-11");
    assert_eq!(payload["sub"], "key_1");
    assert_eq!(payload["iss"], "https://auth.test");
    assert_eq!(payload["aud"], "weather");
    assert_eq!(payload["scope"], "weather:read");
    assert_eq!(payload["iat"], T0);
    assert_eq!(payload["exp"], T0 + 7200);
    let jti = payload["jti"].as_str().unwrap();
    assert_eq!(jti.len(), 32);
    assert!(jti.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(
        jti_of(
            &issuer
                .issue("key_1", ["weather:read"])
                .unwrap()
                .access_token
        ),
        jti
    );

    let configured = |kid: &str, iss: &str, aud: &str| {
        JwtVerifier::with_keys([JwtKey::hmac(secret).kid(kid)])
            .issuer([iss])
            .audience([aud])
            .clock(clock.clone())
    };
    let app = routes().layer(
        AuthLayer::jwt_only(configured("2026-11", "https://auth.test", "weather")).realm(REALM),
    );
    let reply = send(app.clone(), bearer(token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        reply.json(),
        json!({
            "id": "key_1", "kind": "jwt", "owner": "https://auth.test",
            "scopes": ["weather:read"], "tier": null,
        })
    );
    for (what, verifier) in [
        ("kid", configured("2026-12", "https://auth.test", "weather")),
        (
            "iss",
            configured("2026-11", "https://other.test", "weather"),
        ),
        (
            "aud",
            configured("2026-11", "https://auth.test", "forecast"),
        ),
    ] {
        let app = routes().layer(AuthLayer::jwt_only(verifier).realm(REALM));
        let reply = send(app, bearer(token)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "another {what}");
        assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    }
    // Several accepted issuers and audiences.
    let several = JwtVerifier::with_keys([JwtKey::hmac(secret).kid("2026-11")])
        .issuer(["https://a.test", "https://auth.test"])
        .audience(["forecast", "weather"])
        .clock(clock.clone());
    assert_eq!(several.verify(token).unwrap().id(), "key_1");

    // It lives two hours (and the leeway).
    let app = routes().layer(
        AuthLayer::jwt_only(configured("2026-11", "https://auth.test", "weather")).realm(REALM),
    );
    clock.advance(Duration::from_secs(7200 + 60));
    assert_eq!(status(&app, token).await, StatusCode::OK);
    clock.advance(Duration::from_secs(1));
    let reply = send(app, bearer(token)).await;
    assert_problem(&reply, 401, Some(EXPIRED), EXPIRED_DETAIL);
}

#[tokio::test]
async fn issued_tokens_of_every_key_family_verify() {
    let clock = clock();
    let cases: [(Algorithm, EncodingKey, JwtKey); 3] = [
        (
            Algorithm::RS256,
            rsa_signing_key(),
            JwtKey::rsa_pem(&rsa_public_pem()).unwrap(),
        ),
        (
            Algorithm::ES256,
            ec_signing_key(),
            JwtKey::ec_pem(&fixture("test_only_ec_p256_public.pem")).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            ed_signing_key(),
            JwtKey::ed_pem(&fixture("test_only_ed25519_public.pem")).unwrap(),
        ),
    ];
    for (alg, signing, key) in cases {
        let issuer = TokenIssuer::new(signing, alg).kid("k").clock(clock.clone());
        let token = issuer.issue("u", ["s"]).unwrap().access_token;
        let app = routes().layer(
            AuthLayer::jwt_only(JwtVerifier::with_keys([key.kid("k")]).clock(clock.clone()))
                .realm(REALM),
        );
        let reply = send(app.clone(), bearer(&token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{alg:?}");
        assert_eq!(reply.json()["id"], "u");
        // Under the HMAC key with the same kid, it is refused.
        let app = routes().layer(
            AuthLayer::jwt_only(
                JwtVerifier::with_keys([JwtKey::hmac(HMAC_SECRET).kid("k")]).clock(clock.clone()),
            )
            .realm(REALM),
        );
        assert_eq!(
            status(&app, &token).await,
            StatusCode::UNAUTHORIZED,
            "{alg:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limits by subject

fn limited_app(store: MemoryStore, clock: &ManualClock) -> Router {
    let verifier = hs_verifier(clock).tier_claim("tier");
    let limiter = MemoryLimiter::builder().clock(clock.clone()).build();
    routes().layer(
        ServiceBuilder::new()
            .layer(AuthLayer::new(store).jwt(verifier).realm(REALM))
            .layer(
                RateLimitLayer::new(limiter, Quota::per_minute(2))
                    .tier("gold", Quota::per_minute(4)),
            ),
    )
}

#[tokio::test]
async fn a_rate_limit_behind_the_layer_limits_a_token_caller_by_its_subject() {
    let (store, key) = store_with_key();
    let clock = clock();
    let app = limited_app(store, &clock);
    let issuer = TokenIssuer::hmac(HMAC_SECRET)
        .kid(KID_HS)
        .clock(clock.clone());
    // Two different tokens of one subject share its limit.
    let alice_a = issuer.issue("alice", ["a"]).unwrap().access_token;
    let alice_b = issuer.issue("alice", ["a"]).unwrap().access_token;
    let bob = issuer.issue("bob", ["a"]).unwrap().access_token;
    assert_ne!(alice_a, alice_b);

    assert_eq!(status(&app, &alice_a).await, StatusCode::OK);
    assert_eq!(status(&app, &alice_b).await, StatusCode::OK);
    let limited = send(app.clone(), bearer(&alice_a)).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), Some("30"));
    assert_eq!(status(&app, &alice_b).await, StatusCode::TOO_MANY_REQUESTS);

    // Others have their own limits: another subject, an API key.
    assert_eq!(status(&app, &bob).await, StatusCode::OK);
    let reply = send(
        app.clone(),
        get_with("/who", &[("x-api-key", key.expose_secret())]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["id"], "key_1");

    // Half a minute refills one request of alice's.
    clock.advance(Duration::from_secs(30));
    assert_eq!(status(&app, &alice_b).await, StatusCode::OK);
    assert_eq!(status(&app, &alice_a).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_tokens_tier_claim_picks_its_quota() {
    let (store, _) = store_with_key();
    let clock = clock();
    let app = limited_app(store, &clock);
    let gold = hs_token(&json!({"sub": "carol", "tier": "gold", "exp": T0 + 600}));
    let unknown_tier = hs_token(&json!({"sub": "dave", "tier": "platinum", "exp": T0 + 600}));
    let reply = send(app.clone(), bearer(&gold)).await;
    assert_eq!(reply.json()["tier"], "gold");
    for _ in 1..4 {
        assert_eq!(status(&app, &gold).await, StatusCode::OK);
    }
    assert_eq!(status(&app, &gold).await, StatusCode::TOO_MANY_REQUESTS);
    // A tier the layer does not know gets the default quota.
    assert_eq!(status(&app, &unknown_tier).await, StatusCode::OK);
    assert_eq!(status(&app, &unknown_tier).await, StatusCode::OK);
    assert_eq!(
        status(&app, &unknown_tier).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
