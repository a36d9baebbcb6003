//! Key environments through a real axum `Router`: one layer with `wk_live_` and `wk_test_` keys
//! (and a format without an environment), the `Principal`'s environment for each, keys with a
//! bad checksum in either prefix turned away before the store, keys of no configured prefix
//! looked up as before, the asynchronous store path, and JWTs, which have no environment.

#![cfg(feature = "axum")]

mod common;

use axum::routing::get;
use axum::{Json, Router};
use common::*;
use http::StatusCode;
use keygate::key::{ApiKey, KeyFormat, KeyRecord};
use keygate::store::{KeyStore, MemoryStore};
use keygate::{Principal, auth::AuthLayer};
use serde_json::{Value, json};

/// The caller: its serialised form, its environment and its `Debug`.
async fn who(p: Principal) -> Json<Value> {
    Json(json!({
        "principal": p,
        "environment": p.environment(),
        "debug": format!("{p:?}"),
    }))
}

fn router() -> Router {
    Router::new().route("/who", get(who))
}

fn live() -> KeyFormat {
    KeyFormat::new("wk_live_").unwrap()
}

fn test() -> KeyFormat {
    KeyFormat::new("wk_test_").unwrap()
}

/// One store holding a live key (`key_live`, issued by the store), a test key (`key_test`), a
/// key of the store-wide `wk_` format (`key_plain`) and a legacy key (`key_legacy`).
struct Keys {
    store: MemoryStore,
    live: ApiKey,
    test: ApiKey,
    plain: ApiKey,
    legacy: ApiKey,
}

fn keys() -> Keys {
    let store = MemoryStore::with_format(live());
    let live = store.issue(KeyRecord::new("key_live", "acme")).unwrap();
    let test = test().generate();
    store
        .insert(&test, KeyRecord::new("key_test", "acme"))
        .unwrap();
    let plain = KeyFormat::new("wk_").unwrap().generate();
    store
        .insert(&plain, KeyRecord::new("key_plain", "acme"))
        .unwrap();
    let legacy = ApiKey::new("3c1f9a0d2b7e4f61");
    store
        .insert(&legacy, KeyRecord::new("key_legacy", "acme"))
        .unwrap();
    Keys {
        store,
        live,
        test,
        plain,
        legacy,
    }
}

fn layer(store: impl KeyStore) -> AuthLayer {
    AuthLayer::new(store)
        .realm(REALM)
        .key_environment("live", live())
        .key_environment("test", test())
}

/// The reply to `key` at `/who`, after checking it is a 200 for `id`.
async fn who_is(app: &Router, key: &ApiKey, id: &str) -> Value {
    let reply = send(app.clone(), with_key_at("/who", key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK, "{id}: {:?}", reply.body);
    let json = reply.json();
    assert_eq!(json["principal"]["id"], id);
    json
}

/// `key` with its last character changed: the checksum no longer matches.
fn typo(key: &ApiKey) -> String {
    let mut k = key.expose_secret().to_owned();
    let c = if k.ends_with('A') { "B" } else { "A" };
    k.replace_range(k.len() - 1.., c);
    k
}

#[tokio::test]
async fn each_key_gets_the_environment_of_its_prefix() {
    let keys = keys();
    let app = router().layer(layer(keys.store.clone()));

    let live = who_is(&app, &keys.live, "key_live").await;
    assert_eq!(live["environment"], "live");
    assert_eq!(live["principal"]["environment"], "live");
    assert!(
        live["debug"]
            .as_str()
            .unwrap()
            .ends_with(r#"environment: "live" }"#),
        "{live}"
    );

    let test = who_is(&app, &keys.test, "key_test").await;
    assert_eq!(test["environment"], "test");
    assert_eq!(test["principal"]["environment"], "test");

    // Keys of no configured prefix are looked up as before, of no environment.
    for (key, id) in [(&keys.plain, "key_plain"), (&keys.legacy, "key_legacy")] {
        let json = who_is(&app, key, id).await;
        assert_eq!(json["environment"], Value::Null);
        assert!(json["principal"].get("environment").is_none(), "{json}");
        assert!(
            !json["debug"].as_str().unwrap().contains("environment"),
            "{json}"
        );
    }
}

#[tokio::test]
async fn a_bad_checksum_in_either_prefix_is_turned_away_before_the_store() {
    let keys = keys();
    let counting = CountingStore::new(keys.store.clone());
    let app = router().layer(layer(counting.clone()));

    for key in [&keys.live, &keys.test] {
        let reply = send(app.clone(), with_key_at("/who", &typo(key))).await;
        assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
        // The prefix is part of what the checksum covers: a test key relabelled as live (or the
        // other way round) fails it too.
        let swapped = key
            .expose_secret()
            .replace("wk_test_", "wk_xxxx_")
            .replace("wk_live_", "wk_test_")
            .replace("wk_xxxx_", "wk_live_");
        let reply = send(app.clone(), with_key_at("/who", &swapped)).await;
        assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    }
    assert_eq!(counting.calls(), 0, "the store was asked");

    // A key of no configured prefix is asked for, and unknown.
    let stranger = KeyFormat::new("zz_").unwrap().generate();
    let reply = send(app.clone(), with_key_at("/who", stranger.expose_secret())).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    assert_eq!(counting.calls(), 1);
}

#[tokio::test]
async fn key_format_works_beside_environments_and_the_longest_prefix_wins() {
    let keys = keys();
    let counting = CountingStore::new(keys.store.clone());
    // `wk_` overlaps both environments' prefixes.
    let app = router().layer(layer(counting.clone()).key_format(KeyFormat::new("wk_").unwrap()));

    assert_eq!(
        who_is(&app, &keys.live, "key_live").await["environment"],
        "live"
    );
    assert_eq!(
        who_is(&app, &keys.test, "key_test").await["environment"],
        "test"
    );
    assert_eq!(
        who_is(&app, &keys.plain, "key_plain").await["environment"],
        Value::Null
    );
    assert_eq!(counting.calls(), 3);

    // Now `wk_` keys are checked too.
    for key in [&keys.plain, &keys.live] {
        let reply = send(app.clone(), with_key_at("/who", &typo(key))).await;
        assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    }
    assert_eq!(counting.calls(), 3);

    // `key_format` alone still does what it did: one format, keys of no environment.
    let app = router().layer(AuthLayer::new(keys.store.clone()).key_format(live()));
    assert_eq!(
        who_is(&app, &keys.live, "key_live").await["environment"],
        Value::Null
    );
    let reply = send(app.clone(), with_key_at("/who", &typo(&keys.live))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_environment_survives_waiting_for_the_store() {
    let keys = keys();
    let app = router().layer(layer(SlowStore(keys.store.clone())));
    assert_eq!(
        who_is(&app, &keys.live, "key_live").await["environment"],
        "live"
    );
    assert_eq!(
        who_is(&app, &keys.test, "key_test").await["environment"],
        "test"
    );
    assert_eq!(
        who_is(&app, &keys.legacy, "key_legacy").await["environment"],
        Value::Null
    );
    let reply = send(app.clone(), with_key_at("/who", &typo(&keys.test))).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
}

#[tokio::test]
async fn a_revoked_key_of_an_environment_is_still_refused() {
    let keys = keys();
    keys.store.revoke("key_test").unwrap();
    let app = router().layer(layer(keys.store.clone()));
    let reply = send(app.clone(), with_key_at("/who", keys.test.expose_secret())).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
}

#[cfg(feature = "jwt")]
#[tokio::test]
async fn a_jwt_has_no_environment() {
    use keygate::jwt::{JwtKey, JwtVerifier};

    let keys = keys();
    let verifier = JwtVerifier::with_keys([JwtKey::hmac(HS256_SECRET).kid("hs-1")]);
    let app = router().layer(layer(keys.store.clone()).jwt(verifier));
    let token = hs256_token("user-7");
    let reply = send(app.clone(), with_bearer("/who", &token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let json = reply.json();
    assert_eq!(json["principal"]["id"], "user-7");
    assert_eq!(json["environment"], Value::Null);
    // The same layer still tells keys' environments.
    assert_eq!(
        who_is(&app, &keys.live, "key_live").await["environment"],
        "live"
    );
}

#[test]
#[should_panic(
    expected = "AuthLayer::key_environment: the prefix \"wk_live_\" is already the \
                           format of the environment \"live\""
)]
fn one_prefix_in_two_environments_is_a_configuration_error() {
    let _ = AuthLayer::new(MemoryStore::new())
        .key_environment("live", live())
        .key_environment("test", live());
}
