//! What `AuthLayer` logs: the key id and the outcome, never a key or its digest.
//!
//! Its own test binary, with one test: tracing caches per call site whether anyone listens, for
//! the whole process, so a subscriber set for one thread while other tests run may miss events.

mod common;

use common::*;
use http::StatusCode;
use keygate::auth::AuthLayer;
use keygate::key::{ApiKey, KeyRecord};
use keygate::store::KeyStore;

fn app(store: impl KeyStore) -> axum::Router {
    routes().layer(AuthLayer::new(store).realm(REALM))
}

#[tokio::test]
async fn tracing_names_the_key_id_never_the_key() {
    let (buf, _guard) = LogCapture::install(tracing::Level::TRACE);

    let (store, key) = store_with_key();
    let revoked = store.issue(KeyRecord::new("revoked_1", "acme")).unwrap();
    store.revoke("revoked_1").unwrap();
    let key = key.expose_secret();
    let unknown = "kg_unknown_key_0123456789";
    // The store answers at once, or makes the layer wait: both paths log.
    for app in [app(store.clone()), app(SlowStore(store))] {
        assert_eq!(
            send(app.clone(), with_key(key)).await.status,
            StatusCode::OK
        );
        let reply = send(app.clone(), with_key(unknown)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        let reply = send(app.clone(), with_key(revoked.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        let both = get_with(&format!("/me?key={key}"), &[("x-api-key", key)]);
        let reply = send(app.clone(), both).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    }
    let reply = send(app(DownStore), with_key(key)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);

    let logs = buf.text();
    let count = |needle: &str| logs.matches(needle).count();
    assert_eq!(
        count(r#"principal="key_1" kind="api_key" outcome="authenticated""#),
        2,
        "{logs}"
    );
    assert_eq!(count(r#"rejected outcome="unknown_key""#), 2, "{logs}");
    assert_eq!(count(r#"rejected outcome="revoked_key""#), 2, "{logs}");
    assert_eq!(count(r#"rejected outcome="invalid_request""#), 2, "{logs}");
    assert_eq!(count(r#"rejected outcome="unavailable""#), 1, "{logs}");
    assert_eq!(count("key store unavailable"), 1, "{logs}");
    for secret in [key, unknown, revoked.expose_secret()] {
        assert!(!logs.contains(secret), "logs leak a key: {logs}");
        let digest = ApiKey::new(secret).digest().to_hex();
        assert!(!logs.contains(&digest), "logs leak a digest: {logs}");
    }
}
