//! Several issuers, OpenID Connect Discovery and typed tokens, against real HTTP servers on
//! 127.0.0.1 started by each test: small OpenID providers (`common::oidc_provider`: an axum app
//! serving `/.well-known/openid-configuration` under any issuer path, and JWK sets at paths the
//! test chooses), whose document, keys and failures the test changes at run time, counting the
//! requests they get. Tokens go through a real axum `Router` behind an `AuthLayer` with one
//! verifier per provider.
//!
//! Provider A signs with the RSA fixture key (and rotates to a second RSA key), provider B with
//! the EC P-256 fixture key; the attacker's RSA key signs forgeries.

#![cfg(all(feature = "jwks", feature = "axum"))]

mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use common::oidc_provider::{
    DOCUMENT_PATH, Mode, Provider, STEP, Signer, a1, a2, attacker, b1, now,
};
use common::{INVALID_TOKEN, REALM, Reply, me, send, with_bearer};
use keygate::auth::AuthLayer;
use keygate::jwt::{
    Algorithm, DiscoveryError, IssuersError, JwksError, JwtIssuers, JwtVerifier, OidcProvider,
    VerifyError,
};
use keygate::store::MemoryStore;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Tokens

/// Claims valid now for ten minutes: `iss` if given, the subject in `sub_claim`, `aud`.
fn claims(iss: Option<&str>, sub_claim: &str, sub: &str, aud: &str) -> Value {
    let mut c = json!({ "aud": aud, "scope": "read write", "iat": now(), "exp": now() + 600 });
    c[sub_claim] = json!(sub);
    if let Some(iss) = iss {
        c["iss"] = json!(iss);
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Discovery and the app

/// Discovers `issuer` over `http`, with intervals that keep the test quiet unless it sets them.
async fn discover(issuer: &str) -> Result<OidcProvider, DiscoveryError> {
    discover_with(issuer, Duration::from_secs(3600)).await
}

async fn discover_with(
    issuer: &str,
    document_refresh: Duration,
) -> Result<OidcProvider, DiscoveryError> {
    bounded(
        OidcProvider::builder(issuer)
            .allow_http(true)
            .timeout(Duration::from_secs(2))
            .document_refresh(document_refresh)
            .jwks(|jwks| {
                jwks.refresh_interval(Duration::from_secs(3600))
                    .timeout(Duration::from_secs(2))
            })
            .discover(),
    )
    .await
}

/// `f`, which must finish within [`STEP`].
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .expect("finished in time")
}

/// Waits until `ready` holds, polling, at most [`STEP`].
async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn app<M>(layer: AuthLayer<M>) -> Router
where
    AuthLayer<M>: Clone + Send + Sync + 'static,
{
    Router::new().route("/me", get(me)).layer(layer)
}

/// `GET /me` with this bearer token.
async fn call(app: &Router, token: &str) -> Reply {
    bounded(send(app.clone(), with_bearer("/me", token))).await
}

/// Asserts the token is accepted as `id`, with the scopes `read` and `write`.
async fn accepted(app: &Router, token: &str, id: &str) {
    let reply = call(app, token).await;
    assert_eq!(reply.status, StatusCode::OK, "{id}: {}", reply.text());
    assert_eq!(reply.json()["id"], id);
    assert_eq!(reply.json()["scopes"], json!(["read", "write"]));
}

/// Asserts the token is refused with 401 `invalid_token`.
async fn refused(app: &Router, token: &str, why: &str) {
    let reply = call(app, token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{why}");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(INVALID_TOKEN),
        "{why}"
    );
}

/// Providers A (a path issuer, RSA) and B (a trailing-slash issuer, EC), serving their
/// documents and their keys.
struct Two {
    a_srv: Provider,
    b_srv: Provider,
    a_iss: String,
    b_iss: String,
}

const A_JWKS: &str = "/realms/a/protocol/openid-connect/certs";
const B_JWKS: &str = "/keys";

async fn two_servers() -> Two {
    let a_srv = Provider::start().await;
    let b_srv = Provider::start().await;
    let a_iss = a_srv.url("/realms/a");
    let b_iss = b_srv.url("/");
    a_srv.publish(A_JWKS, &[&a1()]);
    a_srv.document(&a_iss, A_JWKS);
    b_srv.publish(B_JWKS, &[&b1()]);
    b_srv.document(&b_iss, B_JWKS);
    Two {
        a_srv,
        b_srv,
        a_iss,
        b_iss,
    }
}

/// A's verifier: audience `api-a`, subject in `sub`.
fn verifier_a(a: &OidcProvider) -> JwtVerifier {
    a.verifier().audience(["api-a"])
}

/// B's verifier: audience `api-b`, subject in `uid`.
fn verifier_b(b: &OidcProvider) -> JwtVerifier {
    b.verifier().audience(["api-b"]).subject_claim("uid")
}

fn token_a(signer: &Signer, iss: &str, sub: &str) -> String {
    signer.craft(None, &claims(Some(iss), "sub", sub, "api-a"))
}

/// A token of B: the subject in `uid`, and another in `sub` that B's verifier does not read.
fn token_b(signer: &Signer, iss: &str, uid: &str) -> String {
    let mut c = claims(Some(iss), "uid", uid, "api-b");
    c["sub"] = json!("not-the-subject");
    signer.craft(None, &c)
}

// ---------------------------------------------------------------------------------------------
// Two providers

#[tokio::test]
async fn two_discovered_providers_each_verify_with_their_own_keys_and_rules() {
    let Two {
        a_srv,
        b_srv,
        a_iss,
        b_iss,
    } = two_servers().await;
    let a = discover(&a_iss).await.unwrap();
    let b = discover(&b_iss).await.unwrap();

    // §4: the well-known path goes after the issuer's path; a terminating `/` is dropped first.
    assert_eq!(
        a_srv.document_paths(),
        ["/realms/a/.well-known/openid-configuration"]
    );
    assert_eq!(b_srv.document_paths(), [DOCUMENT_PATH]);
    assert_eq!(a.issuer(), a_iss);
    assert_eq!(b.issuer(), b_iss);
    assert_eq!(a.jwks_uri(), a_srv.url(A_JWKS));
    assert_eq!(b.jwks_uri(), b_srv.url(B_JWKS));
    assert!(a.jwks().is_ready() && b.jwks().is_ready());
    assert_eq!((a_srv.jwks_hits(A_JWKS), b_srv.jwks_hits(B_JWKS)), (1, 1));

    let jwt_only = app(AuthLayer::jwt_only(verifier_a(&a))
        .jwt(verifier_b(&b))
        .realm(REALM));
    let with_keys = app(AuthLayer::new(MemoryStore::new())
        .jwt(verifier_a(&a))
        .jwt(verifier_b(&b))
        .realm(REALM));

    let alice = token_a(&a1(), &a_iss, "alice");
    let bob = token_b(&b1(), &b_iss, "bob");
    // A token of B made by TokenIssuer, which writes the subject in `uid` and `sub`.
    let issued_bob = b1()
        .issuer(&b_iss, "api-b")
        .subject_claim("uid")
        .issue("bob", ["read", "write"])
        .unwrap()
        .access_token;
    for app in [&jwt_only, &with_keys] {
        accepted(app, &alice, "alice").await;
        accepted(app, &bob, "bob").await;
        accepted(app, &issued_bob, "bob").await;
    }

    // Claiming to be from A, signed with B's key: under B's kid (A has no such key: its set is
    // fetched once more, and still lacks it), under A's kid with B's algorithm, or under A's
    // kid and algorithm with the attacker's RSA key.
    let b_as_a = b1().craft(None, &claims(Some(&a_iss), "sub", "alice", "api-a"));
    refused(&jwt_only, &b_as_a, "A's iss, B's key and kid").await;
    assert_eq!(a_srv.jwks_hits(A_JWKS), 2, "one fetch for the unknown kid");
    let b_as_a1 = b1()
        .posing_as("a-1", Algorithm::ES256)
        .craft(None, &claims(Some(&a_iss), "sub", "alice", "api-a"));
    refused(&jwt_only, &b_as_a1, "A's iss and kid, B's key").await;
    let forged = token_a(&attacker(), &a_iss, "alice");
    refused(&jwt_only, &forged, "A's iss and kid, the attacker's key").await;
    refused(&with_keys, &forged, "A's iss and kid, the attacker's key").await;
    // And the other way round: B's iss, A's key.
    let a_as_b = a1()
        .posing_as("b-1", Algorithm::RS256)
        .craft(None, &claims(Some(&b_iss), "uid", "bob", "api-b"));
    refused(&jwt_only, &a_as_b, "B's iss and kid, A's key").await;

    // Unknown issuers, no issuer, the issuer spelt without B's trailing slash.
    let stranger = a1().craft(
        None,
        &claims(Some("http://127.0.0.1:1"), "sub", "x", "api-a"),
    );
    refused(&jwt_only, &stranger, "unknown iss").await;
    refused(&with_keys, &stranger, "unknown iss").await;
    let no_iss = a1().craft(None, &claims(None, "sub", "alice", "api-a"));
    refused(&jwt_only, &no_iss, "no iss").await;
    let unslashed = token_b(&b1(), b_iss.trim_end_matches('/'), "bob");
    refused(&jwt_only, &unslashed, "B's issuer without its slash").await;

    // Each issuer's audience and subject claim: A's audience on B's token, B's token for A's
    // audience, A's token without `sub`, B's token without `uid`.
    let wrong_aud = b1().craft(None, &claims(Some(&b_iss), "uid", "bob", "api-a"));
    refused(&jwt_only, &wrong_aud, "A's audience on B's token").await;
    let wrong_aud = a1().craft(None, &claims(Some(&a_iss), "sub", "alice", "api-b"));
    refused(&jwt_only, &wrong_aud, "B's audience on A's token").await;
    let no_uid = b1().craft(None, &claims(Some(&b_iss), "sub", "bob", "api-b"));
    refused(&jwt_only, &no_uid, "B's token with the subject in sub").await;
    let no_sub = a1().craft(None, &claims(Some(&a_iss), "uid", "alice", "api-a"));
    refused(&jwt_only, &no_sub, "A's token with the subject in uid").await;

    // The same, as reasons, through `JwtIssuers` (which never fetches).
    let issuers = JwtIssuers::new([verifier_a(&a), verifier_b(&b)]).unwrap();
    assert_eq!(issuers.verify(&alice).unwrap().id(), "alice");
    assert_eq!(issuers.verify(&bob).unwrap().id(), "bob");
    assert_eq!(issuers.verify(&b_as_a).err(), Some(VerifyError::UnknownKid));
    assert_eq!(
        issuers.verify(&forged).err(),
        Some(VerifyError::BadSignature)
    );
    assert!(issuers.verify(&b_as_a1).is_err());
    assert_eq!(
        issuers.verify(&stranger).err(),
        Some(VerifyError::WrongIssuer)
    );
    assert_eq!(
        issuers.verify(&no_iss).err(),
        Some(VerifyError::WrongIssuer)
    );
    assert_eq!(
        issuers.verify(&unslashed).err(),
        Some(VerifyError::WrongIssuer)
    );
    assert_eq!(
        issuers.verify(&wrong_aud).err(),
        Some(VerifyError::WrongAudience)
    );
    assert_eq!(
        issuers.verify(&no_uid).err(),
        Some(VerifyError::MissingSubject)
    );

    // Verifiers that read the same claims (B's subject in `sub` too): the payload is parsed
    // once, before the issuer is chosen, with the same outcomes.
    let same_names = app(AuthLayer::jwt_only(verifier_a(&a))
        .jwt(b.verifier().audience(["api-b"]))
        .realm(REALM));
    accepted(&same_names, &alice, "alice").await;
    accepted(&same_names, &issued_bob, "bob").await;
    accepted(&same_names, &bob, "not-the-subject").await;
    for (token, why) in [
        (&forged, "the attacker's key"),
        (&b_as_a1, "A's iss and kid, B's key"),
        (&a_as_b, "B's iss and kid, A's key"),
        (&stranger, "unknown iss"),
        (&no_iss, "no iss"),
        (&unslashed, "B's issuer without its slash"),
    ] {
        refused(&same_names, token, why).await;
    }

    // B's set was never fetched again: A's forgeries are A's business.
    assert_eq!(b_srv.jwks_hits(B_JWKS), 1);
    assert_eq!((a_srv.document_hits(), b_srv.document_hits()), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// Discovery refused

#[tokio::test]
async fn discovery_refuses_documents_of_other_issuers_and_bad_documents() {
    let srv = Provider::start().await;
    srv.publish("/jwks", &[&a1()]);
    let issuer = srv.url("/realms/a");

    // Documents that name another issuer than the one asked for: with a trailing slash, on
    // another host, with another path, in another case, none at all.
    for other in [
        format!("{issuer}/"),
        issuer.replace("127.0.0.1", "localhost"),
        srv.url("/realms/b"),
        srv.url("/Realms/a"),
        String::new(),
    ] {
        srv.document(&other, "/jwks");
        match discover(&issuer).await.unwrap_err() {
            DiscoveryError::IssuerMismatch { expected, found } => {
                assert_eq!((&expected, &found), (&issuer, &other));
            }
            e => panic!("{other:?}: {e:?}"),
        }
    }
    // Asked with a trailing slash, the document must have it too.
    srv.document(&issuer, "/jwks");
    let e = discover(&format!("{issuer}/")).await.unwrap_err();
    assert!(
        matches!(&e, DiscoveryError::IssuerMismatch { found, .. } if *found == issuer),
        "{e:?}"
    );
    // No key set was fetched for any of them.
    assert_eq!(srv.jwks_hits("/jwks"), 0);

    // No jwks_uri, or one that is not an http(s) URL.
    for document in [
        json!({ "issuer": issuer }),
        json!({ "issuer": issuer, "jwks_uri": null }),
        json!({ "issuer": issuer, "jwks_uri": "/jwks" }),
        json!({ "issuer": issuer, "jwks_uri": "ftp://127.0.0.1/jwks" }),
        json!({ "issuer": issuer, "jwks_uri": "not a url" }),
    ] {
        srv.document_json(&document);
        let e = discover(&issuer).await.unwrap_err();
        assert!(matches!(e, DiscoveryError::JwksUri), "{document}: {e:?}");
    }
    // Not a document at all.
    for body in [
        "<html>sign in</html>",
        "[]",
        r#"{"jwks_uri":"http://x/jwks"}"#,
    ] {
        srv.document_raw(body.into());
        let e = discover(&issuer).await.unwrap_err();
        assert!(matches!(e, DiscoveryError::Document(_)), "{body}: {e:?}");
    }
    assert_eq!(srv.jwks_hits("/jwks"), 0);

    // Errors of the document's URL.
    srv.document(&issuer, "/jwks");
    for status in [404, 500, 503] {
        srv.document_mode(Mode::Status(status));
        let e = discover(&issuer).await.unwrap_err();
        assert!(
            matches!(e, DiscoveryError::Status(s) if s == status),
            "{e:?}"
        );
    }
    srv.document_mode(Mode::Slow(Duration::from_secs(3)));
    let e = bounded(
        OidcProvider::builder(&issuer)
            .allow_http(true)
            .timeout(Duration::from_millis(300))
            .discover(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DiscoveryError::Timeout), "{e:?}");

    // Larger than the limit: the one set, and the default (256 KiB).
    srv.document_mode(Mode::Serve);
    let padded = |len: usize| {
        let doc = json!({ "issuer": issuer, "jwks_uri": srv.url("/jwks") }).to_string();
        format!("{doc}{}", " ".repeat(len - doc.len()))
    };
    srv.document_raw(padded(4096));
    let e = bounded(
        OidcProvider::builder(&issuer)
            .allow_http(true)
            .max_document(1024)
            .discover(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DiscoveryError::TooLarge(1024)), "{e:?}");
    srv.document_raw(padded(300 * 1024));
    let e = discover(&issuer).await.unwrap_err();
    assert!(matches!(e, DiscoveryError::TooLarge(262_144)), "{e:?}");
    // Just under the limit is fine.
    srv.document_raw(padded(1024));
    let ok = bounded(
        OidcProvider::builder(&issuer)
            .allow_http(true)
            .max_document(1024)
            .discover(),
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(srv.jwks_hits("/jwks"), 1);
}

#[tokio::test]
async fn http_issuers_are_refused_unless_allowed_before_any_request() {
    let srv = Provider::start().await;
    srv.publish("/jwks", &[&a1()]);
    let issuer = srv.url("/realms/a");
    srv.document(&issuer, "/jwks");

    for allow in [None, Some(false)] {
        let mut builder = OidcProvider::builder(&issuer);
        if let Some(allow) = allow {
            builder = builder.allow_http(allow);
        }
        let e = bounded(builder.discover()).await.unwrap_err();
        assert!(
            matches!(&e, DiscoveryError::Issuer(shown) if *shown == issuer),
            "{e:?}"
        );
    }
    assert_eq!(srv.hits(), 0, "no request for an http issuer");

    // Allowed: the same issuer works.
    let p = discover(&issuer).await.unwrap();
    assert_eq!(p.issuer(), issuer);
    assert_eq!(srv.document_hits(), 1);
    assert_eq!(srv.jwks_hits("/jwks"), 1);

    // A server without a document.
    let other = Provider::start().await;
    let e = discover(&other.url("/realms/a")).await.unwrap_err();
    assert!(matches!(e, DiscoveryError::Status(404)), "{e:?}");
    assert_eq!(
        other.document_paths(),
        ["/realms/a/.well-known/openid-configuration"]
    );
    // A closed port.
    let mut closed = Provider::start().await;
    let url = closed.url("");
    closed.down().await;
    let e = discover(&url).await.unwrap_err();
    assert!(matches!(e, DiscoveryError::Request(_)), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Rotation, failures

#[tokio::test]
async fn key_rotation_at_one_provider_leaves_the_other_alone() {
    let Two {
        a_srv,
        b_srv,
        a_iss,
        b_iss,
    } = two_servers().await;
    let a = discover(&a_iss).await.unwrap();
    let b = discover(&b_iss).await.unwrap();
    let app = app(AuthLayer::jwt_only(verifier_a(&a))
        .jwt(verifier_b(&b))
        .realm(REALM));
    let old = token_a(&a1(), &a_iss, "alice");
    let bob = token_b(&b1(), &b_iss, "bob");
    accepted(&app, &old, "alice").await;
    accepted(&app, &bob, "bob").await;

    // A publishes a second key: its tokens work at once, by the unknown-kid fetch, an hour
    // before the next refresh.
    a_srv.publish(A_JWKS, &[&a1(), &a2()]);
    let new = token_a(&a2(), &a_iss, "anna");
    accepted(&app, &new, "anna").await;
    assert_eq!(a_srv.jwks_hits(A_JWKS), 2, "one fetch for the new kid");
    accepted(&app, &old, "alice").await;
    accepted(&app, &bob, "bob").await;

    // A drops its first key: its tokens work until the set is fetched again, then fail,
    // though cached.
    a_srv.publish(A_JWKS, &[&a2()]);
    accepted(&app, &old, "alice").await;
    bounded(a.jwks().refresh()).await.unwrap();
    assert_eq!(a_srv.jwks_hits(A_JWKS), 3);
    refused(&app, &old, "A's removed key").await;
    let fresh_old = token_a(&a1(), &a_iss, "alice2");
    refused(&app, &fresh_old, "A's removed key, never seen").await;
    accepted(&app, &new, "anna").await;

    // B was never asked for anything more, and its tokens kept working.
    accepted(&app, &bob, "bob").await;
    accepted(&app, &token_b(&b1(), &b_iss, "bert"), "bert").await;
    assert_eq!(b_srv.jwks_hits(B_JWKS), 1);
    assert_eq!((a_srv.document_hits(), b_srv.document_hits()), (1, 1));
}

#[tokio::test]
async fn a_provider_down_keeps_its_last_good_keys() {
    let Two {
        mut a_srv,
        b_srv,
        a_iss,
        b_iss,
    } = two_servers().await;
    // A's document is fetched again often, to show that its failures change nothing either.
    let a = discover_with(&a_iss, Duration::from_millis(100))
        .await
        .unwrap();
    let b = discover(&b_iss).await.unwrap();
    let app = app(AuthLayer::jwt_only(verifier_a(&a))
        .jwt(verifier_b(&b))
        .realm(REALM));
    let cached = token_a(&a1(), &a_iss, "alice");
    let bob = token_b(&b1(), &b_iss, "bob");
    accepted(&app, &cached, "alice").await;
    accepted(&app, &bob, "bob").await;
    let before = a_srv.document_hits();
    eventually("A's document is fetched again", || {
        a_srv.document_hits() > before
    })
    .await;

    // A answers 503 for everything.
    a_srv.jwks_mode(Mode::Status(503));
    a_srv.document_mode(Mode::Status(503));
    let e = bounded(a.jwks().refresh()).await.unwrap_err();
    assert!(matches!(e, JwksError::Status(503)), "{e:?}");
    let failing = a_srv.document_hits();
    eventually("A's document fails again", || {
        a_srv.document_hits() > failing
    })
    .await;
    accepted(&app, &cached, "alice").await;
    accepted(&app, &token_a(&a1(), &a_iss, "amy"), "amy").await;
    accepted(&app, &bob, "bob").await;
    assert_eq!(a.jwks_uri(), a_srv.url(A_JWKS));

    // A's port closed.
    a_srv.down().await;
    let e = bounded(a.jwks().refresh()).await.unwrap_err();
    assert!(matches!(e, JwksError::Request(_)), "{e:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    accepted(&app, &cached, "alice").await;
    accepted(&app, &token_a(&a1(), &a_iss, "ada"), "ada").await;
    assert_eq!(a.jwks_uri(), a_srv.url(A_JWKS));
    // A key A may have published since cannot be known now: 503, try again later.
    let reply = call(&app, &token_a(&a2(), &a_iss, "anna")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    // Forgeries are still refused.
    refused(&app, &token_a(&attacker(), &a_iss, "alice"), "attacker").await;

    // B is unaffected throughout.
    accepted(&app, &bob, "bob").await;
    accepted(&app, &token_b(&b1(), &b_iss, "bert"), "bert").await;
    assert_eq!(b_srv.jwks_hits(B_JWKS), 1);
}

#[tokio::test]
async fn the_document_refresh_follows_a_new_jwks_uri_but_not_another_issuer() {
    let srv = Provider::start().await;
    let issuer = srv.url("/");
    srv.publish("/jwks/1", &[&a1()]);
    srv.document(&issuer, "/jwks/1");
    let p = discover_with(&issuer, Duration::from_millis(200))
        .await
        .unwrap();
    let app = app(AuthLayer::jwt_only(verifier_a(&p)).realm(REALM));
    let old = token_a(&a1(), &issuer, "alice");
    let new = token_a(&a2(), &issuer, "anna");
    accepted(&app, &old, "alice").await;
    assert_eq!(p.jwks_uri(), srv.url("/jwks/1"));

    // The provider moves its keys: a new document names a new set, with a new key only.
    srv.publish("/jwks/2", &[&a2()]);
    srv.document(&issuer, "/jwks/2");
    eventually("the new jwks_uri is followed", || {
        p.jwks_uri() == srv.url("/jwks/2")
    })
    .await;
    let verifier = verifier_a(&p);
    eventually("the new set is in", || verifier.verify(&new).is_ok()).await;
    assert_eq!(srv.jwks_hits("/jwks/2"), 1, "fetched once, at once");
    accepted(&app, &new, "anna").await;
    // The old key is gone with the old set, though its token was cached.
    refused(&app, &old, "the old set's key").await;
    let old_hits = srv.jwks_hits("/jwks/1");

    // A document that now names another issuer, with the attacker's keys, is ignored.
    srv.publish("/jwks/3", &[&attacker()]);
    srv.document_json(&json!({ "issuer": srv.url("/evil"), "jwks_uri": srv.url("/jwks/3") }));
    let seen = srv.document_hits();
    eventually("the document is fetched twice more", || {
        srv.document_hits() >= seen + 2
    })
    .await;
    // A document that fails, likewise.
    srv.document_mode(Mode::Status(500));
    let seen = srv.document_hits();
    eventually("the failing document is fetched", || {
        srv.document_hits() > seen
    })
    .await;
    assert_eq!(p.jwks_uri(), srv.url("/jwks/2"));
    assert_eq!(
        srv.jwks_hits("/jwks/3"),
        0,
        "the other issuer's set is never fetched"
    );
    accepted(&app, &new, "anna").await;
    refused(
        &app,
        &token_a(&attacker(), &issuer, "eve"),
        "the other issuer's key",
    )
    .await;
    assert_eq!(
        srv.jwks_hits("/jwks/1"),
        old_hits,
        "the old set is not fetched again"
    );
}

// ---------------------------------------------------------------------------------------------
// typ

#[tokio::test]
async fn typ_is_required_at_one_issuer_and_lenient_at_the_other() {
    let Two {
        a_srv: _a_srv,
        b_srv: _b_srv,
        a_iss,
        b_iss,
    } = two_servers().await;
    let a = discover(&a_iss).await.unwrap();
    let b = discover(&b_iss).await.unwrap();
    let strict = verifier_a(&a).require_typ("at+jwt");
    let app = app(AuthLayer::jwt_only(strict.clone())
        .jwt(verifier_b(&b))
        .realm(REALM));
    let issuers = JwtIssuers::new([strict, verifier_b(&b)]).unwrap();

    let a_claims = claims(Some(&a_iss), "sub", "alice", "api-a");
    // A requires `at+jwt`, whatever its case, with or without `application/`.
    for typ in [
        "at+jwt",
        "application/at+jwt",
        "AT+JWT",
        "Application/At+Jwt",
    ] {
        accepted(&app, &a1().craft(Some(typ), &a_claims), "alice").await;
    }
    let issued = a1()
        .issuer(&a_iss, "api-a")
        .typ("at+jwt")
        .issue("alice", ["read", "write"])
        .unwrap()
        .access_token;
    accepted(&app, &issued, "alice").await;
    for typ in [None, Some("JWT"), Some("jwt"), Some("logout+jwt"), Some("")] {
        let token = a1().craft(typ, &a_claims);
        refused(&app, &token, &format!("A with typ {typ:?}")).await;
        assert_eq!(
            issuers.verify(&token).err(),
            Some(VerifyError::WrongType),
            "{typ:?}"
        );
    }
    // TokenIssuer's default `typ` is JWT.
    let plain = a1()
        .issuer(&a_iss, "api-a")
        .issue("alice", ["read"])
        .unwrap()
        .access_token;
    refused(&app, &plain, "A with TokenIssuer's default typ").await;

    // B is lenient: no `typ`, `JWT`, `at+jwt`; but a token of another purpose is refused.
    let mut b_claims = claims(Some(&b_iss), "uid", "bob", "api-b");
    b_claims["sub"] = json!("ignored");
    for typ in [
        None,
        Some("JWT"),
        Some("jwt"),
        Some("at+jwt"),
        Some("application/at+jwt"),
    ] {
        let token = b1().craft(typ, &b_claims);
        accepted(&app, &token, "bob").await;
        assert_eq!(issuers.verify(&token).unwrap().id(), "bob", "{typ:?}");
    }
    for typ in [
        "logout+jwt",
        "secevent+jwt",
        "dpop+jwt",
        "application/logout+jwt",
    ] {
        let token = b1().craft(Some(typ), &b_claims);
        refused(&app, &token, &format!("B with typ {typ}")).await;
        assert_eq!(
            issuers.verify(&token).err(),
            Some(VerifyError::WrongType),
            "{typ}"
        );
    }
    let logout = b1()
        .issuer(&b_iss, "api-b")
        .subject_claim("uid")
        .typ("logout+jwt")
        .issue("bob", ["read"])
        .unwrap()
        .access_token;
    refused(&app, &logout, "B with a logout token").await;
}

#[tokio::test]
async fn the_document_refresh_stops_with_the_last_handle() {
    let srv = Provider::start().await;
    let issuer = srv.url("/realms/a");
    srv.publish("/jwks", &[&a1()]);
    srv.document(&issuer, "/jwks");
    let p = discover_with(&issuer, Duration::from_millis(50))
        .await
        .unwrap();
    let app = app(AuthLayer::jwt_only(verifier_a(&p)).realm(REALM));
    accepted(&app, &token_a(&a1(), &issuer, "alice"), "alice").await;
    eventually("the document is fetched again", || srv.document_hits() >= 3).await;

    drop((p, app));
    // A fetch under way when the handles went may still finish.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = srv.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(srv.hits(), hits, "no fetch once the provider is dropped");
}

// ---------------------------------------------------------------------------------------------
// Configuration mistakes

#[tokio::test]
#[should_panic(expected = "AuthLayer::jwt: two verifiers accept the issuer \"http://127.0.0.1:")]
async fn two_verifiers_of_one_issuer_in_a_layer_panic() {
    let srv = Provider::start().await;
    let issuer = srv.url("/realms/a");
    srv.publish("/jwks", &[&a1()]);
    srv.document(&issuer, "/jwks");
    let first = discover(&issuer).await.unwrap();
    let again = discover(&issuer).await.unwrap();
    let _ = AuthLayer::jwt_only(first.verifier()).jwt(again.verifier().audience(["other"]));
}

#[tokio::test]
async fn two_verifiers_of_one_issuer_are_an_error_naming_it() {
    let Two {
        a_srv: _a_srv,
        b_srv: _b_srv,
        a_iss,
        b_iss,
    } = two_servers().await;
    let a = discover(&a_iss).await.unwrap();
    let again = discover(&a_iss).await.unwrap();
    let b = discover(&b_iss).await.unwrap();

    let e = JwtIssuers::new([verifier_a(&a), verifier_b(&b), again.verifier()]).unwrap_err();
    assert_eq!(e, IssuersError::Duplicate(a_iss.clone()));
    assert!(e.to_string().contains(&format!("{a_iss:?}")), "{e}");
    let e = JwtIssuers::new([verifier_a(&a), verifier_b(&b)])
        .unwrap()
        .with(again.verifier())
        .unwrap_err();
    assert_eq!(e, IssuersError::Duplicate(a_iss.clone()));
    // A verifier of B that also names A's issuer.
    let e = JwtIssuers::new([verifier_a(&a), b.verifier().issuer([&b_iss, &a_iss])]).unwrap_err();
    assert_eq!(e, IssuersError::Duplicate(a_iss.clone()));

    // The layer panics with the same words, naming the issuer.
    for layer in [
        Box::new(|| {
            let _ = AuthLayer::jwt_only(verifier_a(&a))
                .jwt(verifier_b(&b))
                .jwt(again.verifier());
        }) as Box<dyn Fn()>,
        Box::new(|| {
            let _ = AuthLayer::new(MemoryStore::new())
                .jwt(verifier_a(&a))
                .jwt(again.verifier());
        }),
    ] {
        let panic = std::panic::catch_unwind(AssertUnwindSafe(layer)).unwrap_err();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(
            message,
            format!("AuthLayer::jwt: two verifiers accept the issuer {a_iss:?}")
        );
    }
}
