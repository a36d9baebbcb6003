//! Key life cycle through a real axum `Router`: rotation with a grace period, revocation,
//! disabling, expiry, removal. Every rejected key must read exactly like an unknown one.

mod common;

use std::time::{Duration, SystemTime};

use axum::Router;
use common::*;
use http::StatusCode;
use keygate::auth::AuthLayer;
use keygate::clock::{Clock, ManualClock};
use keygate::key::{ApiKey, KeyRecord, KeyStatus};
use keygate::store::{KeyStore, MemoryStore};

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

fn app(store: impl KeyStore) -> Router {
    routes().layer(AuthLayer::new(store).realm(REALM))
}

fn record() -> KeyRecord {
    KeyRecord::new("key_1", "acme").with_scopes(["weather:read"])
}

/// The request is admitted as `key_1`.
async fn works(app: &Router, key: &ApiKey) {
    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["id"], "key_1");
}

/// The request is turned away exactly as one with a key nobody ever issued.
async fn fails(app: &Router, key: &ApiKey) {
    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    reply.assert_no_leak(key.expose_secret());
    let unknown = send(app.clone(), with_key("kg_never_issued_0123456789")).await;
    assert_eq!(reply.head(), unknown.head());
    assert_eq!(reply.body, unknown.body);
}

#[tokio::test]
async fn rotation_keeps_the_old_key_working_until_the_grace_deadline() {
    let clock = ManualClock::new();
    let store = MemoryStore::new().with_clock(clock.clone());
    let old = store.issue(record()).unwrap();
    let app = app(store.clone());
    works(&app, &old).await;

    let new = store.rotate("key_1", MINUTE).unwrap();
    assert_ne!(old, new);
    works(&app, &old).await;
    works(&app, &new).await;

    clock.advance(MINUTE - Duration::from_millis(1));
    works(&app, &old).await;

    clock.advance(Duration::from_millis(1));
    fails(&app, &old).await;
    works(&app, &new).await;

    // Long after: still gone, and the new key still works.
    clock.advance(DAY * 365);
    fails(&app, &old).await;
    works(&app, &new).await;
}

#[tokio::test]
async fn the_new_key_carries_the_same_record() {
    let store = MemoryStore::new();
    let old = store.issue(record().with_metadata("plan", "pro")).unwrap();
    let new = store.rotate("key_1", MINUTE).unwrap();
    let app = app(store.clone());
    let a = send(app.clone(), with_key(old.expose_secret()))
        .await
        .json();
    let b = send(app, with_key(new.expose_secret())).await.json();
    assert_eq!(a, b);
    assert_eq!(b["scopes"], serde_json::json!(["weather:read"]));
    assert_eq!(store.get("key_1").unwrap().metadata["plan"], "pro");
}

#[tokio::test]
async fn rotation_with_zero_grace_retires_the_old_key_at_once() {
    let clock = ManualClock::new();
    let store = MemoryStore::new().with_clock(clock.clone());
    let old = store.issue(record()).unwrap();
    let new = store.rotate("key_1", Duration::ZERO).unwrap();
    let app = app(store);
    fails(&app, &old).await;
    works(&app, &new).await;
}

#[tokio::test]
async fn a_second_rotation_never_extends_a_running_grace() {
    let clock = ManualClock::new();
    let store = MemoryStore::new().with_clock(clock.clone());
    let k0 = store.issue(record()).unwrap();
    let k1 = store.rotate("key_1", MINUTE).unwrap();
    let k2 = store.rotate("key_1", DAY).unwrap();
    let app = app(store);
    works(&app, &k0).await;
    clock.advance(MINUTE);
    fails(&app, &k0).await;
    works(&app, &k1).await;
    works(&app, &k2).await;
    clock.advance(DAY - MINUTE);
    fails(&app, &k1).await;
    works(&app, &k2).await;
}

#[tokio::test]
async fn rotating_again_with_zero_grace_cuts_off_every_old_key() {
    // A key leaked during a long grace: rotate again with no grace, and every old key stops.
    let clock = ManualClock::new();
    let store = MemoryStore::new().with_clock(clock.clone());
    let k0 = store.issue(record()).unwrap();
    let k1 = store.rotate("key_1", DAY).unwrap();
    let k2 = store.rotate("key_1", Duration::ZERO).unwrap();
    let app = app(store);
    fails(&app, &k0).await;
    fails(&app, &k1).await;
    works(&app, &k2).await;
}

#[tokio::test]
async fn rotation_through_a_store_that_makes_the_layer_wait() {
    let clock = ManualClock::new();
    let store = MemoryStore::new().with_clock(clock.clone());
    let old = store.issue(record()).unwrap();
    let new = store.rotate("key_1", MINUTE).unwrap();
    let app = app(SlowStore(store));
    works(&app, &old).await;
    clock.advance(MINUTE);
    fails(&app, &old).await;
    works(&app, &new).await;
}

#[tokio::test]
async fn revocation_stops_a_key_at_once() {
    let store = MemoryStore::new();
    let key = store.issue(record()).unwrap();
    let other = store.issue(KeyRecord::new("key_2", "acme")).unwrap();
    let app = app(store.clone());
    works(&app, &key).await;
    store.revoke("key_1").unwrap();
    fails(&app, &key).await;
    // Other records are untouched.
    let reply = send(app, with_key(other.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn revocation_stops_the_keys_of_a_rotation_too() {
    let store = MemoryStore::new();
    let old = store.issue(record()).unwrap();
    let new = store.rotate("key_1", DAY).unwrap();
    let app = app(store.clone());
    works(&app, &old).await;
    works(&app, &new).await;
    store.revoke("key_1").unwrap();
    fails(&app, &old).await;
    fails(&app, &new).await;
    // A revoked record cannot be rotated back to life, nor made active again.
    assert!(matches!(
        store.rotate("key_1", DAY),
        Err(keygate::store::ManageError::Invalid(_))
    ));
    assert!(
        store
            .update("key_1", |r| r.status = KeyStatus::Active)
            .is_err()
    );
    fails(&app, &old).await;
    fails(&app, &new).await;
}

#[tokio::test]
async fn revocation_through_a_store_that_makes_the_layer_wait() {
    let store = MemoryStore::new();
    let key = store.issue(record()).unwrap();
    let app = app(SlowStore(store.clone()));
    works(&app, &key).await;
    store.revoke("key_1").unwrap();
    fails(&app, &key).await;
}

#[tokio::test]
async fn a_disabled_key_can_be_enabled_again() {
    let store = MemoryStore::new();
    let key = store.issue(record()).unwrap();
    let app = app(store.clone());
    store
        .update("key_1", |r| r.status = KeyStatus::Disabled)
        .unwrap();
    fails(&app, &key).await;
    store
        .update("key_1", |r| r.status = KeyStatus::Active)
        .unwrap();
    works(&app, &key).await;
}

#[tokio::test]
async fn a_removed_key_reads_as_unknown() {
    let store = MemoryStore::new();
    let key = store.issue(record()).unwrap();
    let app = app(store.clone());
    store.remove("key_1").unwrap();
    fails(&app, &key).await;
    assert!(store.is_empty());
}

#[tokio::test]
async fn a_key_that_expired_in_the_past_is_rejected() {
    let store = MemoryStore::new();
    let key = store
        .issue(record().with_expiry(SystemTime::now() - Duration::from_secs(1)))
        .unwrap();
    let app = app(store.clone());
    fails(&app, &key).await;
    // Through the waiting path as well.
    fails(&self::app(SlowStore(store)), &key).await;
}

#[tokio::test]
async fn a_key_expires_as_the_layer_clock_advances() {
    let clock = ManualClock::new();
    let store = MemoryStore::new();
    let key = store
        .issue(record().with_expiry(clock.now() + MINUTE))
        .unwrap();
    let layer = AuthLayer::new(store.clone())
        .realm(REALM)
        .clock(clock.clone());
    let app = routes().layer(layer);
    let slow = routes().layer(
        AuthLayer::new(SlowStore(store))
            .realm(REALM)
            .clock(clock.clone()),
    );
    works(&app, &key).await;
    works(&slow, &key).await;
    clock.advance(MINUTE - Duration::from_millis(1));
    works(&app, &key).await;
    clock.advance(Duration::from_millis(1));
    fails(&app, &key).await;
    fails(&slow, &key).await;
}

#[tokio::test]
async fn extending_an_expiry_brings_the_key_back() {
    let clock = ManualClock::new();
    let store = MemoryStore::new();
    let key = store.issue(record().with_expiry(clock.now())).unwrap();
    let app = routes().layer(
        AuthLayer::new(store.clone())
            .realm(REALM)
            .clock(clock.clone()),
    );
    fails(&app, &key).await;
    store
        .update("key_1", |r| r.expires_at = Some(clock.now() + DAY))
        .unwrap();
    works(&app, &key).await;
}

#[tokio::test]
async fn with_clock_keeps_clones_sharing_their_keys() {
    // A clone made before `with_clock` (an admin handle) and the layer's handle see one set of
    // keys: issuing, rotating and revoking through either one shows in the other.
    let store = MemoryStore::new();
    let admin = store.clone();
    let clock = ManualClock::new();
    let layer_store = store.with_clock(clock.clone());
    let app = app(layer_store.clone());
    let old = admin.issue(record()).unwrap();
    works(&app, &old).await;
    let new = layer_store.rotate("key_1", MINUTE).unwrap();
    works(&app, &new).await;
    works(&app, &old).await;
    clock.advance(MINUTE);
    fails(&app, &old).await;
    admin.revoke("key_1").unwrap();
    fails(&app, &new).await;
    assert_eq!(admin.len(), 1);
}
