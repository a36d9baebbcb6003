//! A backend that is down fails every request; the logs say so when the outage starts, once per
//! interval while it lasts, and when it ends — never once per request, which would let any client
//! fill the logs at request rate.
//!
//! Its own test binary, with one test: tracing caches per call site whether anyone listens, for
//! the whole process, so a subscriber set for one thread while other tests run may miss events.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use http::StatusCode;
use keygate::key::KeyDigest;
use keygate::ratelimit::{Check, RateLimitError, RateLimiter};
use keygate::store::{KeyStore, Lookup, MemoryStore, StoreError};
use keygate::{Quota, auth::AuthLayer, ratelimit::RateLimitLayer};
use tower::ServiceBuilder;

/// A backend switched down and up by the test.
#[derive(Clone)]
struct Switch {
    store: MemoryStore,
    down: Arc<AtomicBool>,
}

impl KeyStore for Switch {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        if self.down.load(Ordering::SeqCst) {
            return Lookup::ready(Err(StoreError::unavailable("connection refused")));
        }
        self.store.lookup(digest)
    }
}

impl RateLimiter for Switch {
    fn check(&self, _: &str, _: &Quota, _: u32) -> Check {
        if self.down.load(Ordering::SeqCst) {
            return Check::ready(Err(RateLimitError::Backend("connection refused".into())));
        }
        Check::ready(Ok(keygate::ratelimit::Decision {
            allowed: true,
            remaining: 9,
            reset_after: std::time::Duration::ZERO,
            retry_after: std::time::Duration::ZERO,
        }))
    }
}

#[tokio::test]
async fn outages_are_logged_at_their_transitions_not_per_request() {
    let (buf, _guard) = LogCapture::install(tracing::Level::INFO);

    let (store, key) = store_with_key();
    let key = key.expose_secret();

    // The key store.
    let switch = Switch {
        store: store.clone(),
        down: Arc::new(AtomicBool::new(true)),
    };
    let app = routes().layer(AuthLayer::new(switch.clone()).realm(REALM));
    for _ in 0..200 {
        let reply = send(app.clone(), with_key(key)).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(buf.count("WARN", "key store unavailable"), 1);
    switch.down.store(false, Ordering::SeqCst);
    assert_eq!(
        send(app.clone(), with_key(key)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(app.clone(), with_key(key)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        buf.count("INFO", "key store available again failures=200"),
        1
    );
    // Another outage within the report interval is counted, not warned of again: a store that
    // fails every other request must not log at request rate either.
    switch.down.store(true, Ordering::SeqCst);
    for _ in 0..50 {
        send(app.clone(), with_key(key)).await;
    }
    for i in 0..200 {
        switch.down.store(i % 2 == 0, Ordering::SeqCst);
        send(app.clone(), with_key(key)).await;
    }
    assert_eq!(buf.count("WARN", "key store unavailable"), 1);
    assert_eq!(buf.count("INFO", "key store available again"), 1);

    // The rate limiter.
    let limiter = Switch {
        store,
        down: Arc::new(AtomicBool::new(true)),
    };
    switch.down.store(false, Ordering::SeqCst);
    let app = routes().layer(
        ServiceBuilder::new()
            .layer(AuthLayer::new(switch).realm(REALM))
            .layer(RateLimitLayer::new(limiter.clone(), Quota::per_second(10))),
    );
    for _ in 0..200 {
        let reply = send(app.clone(), with_key(key)).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(buf.count("WARN", "rate limiter unavailable"), 1);
    limiter.down.store(false, Ordering::SeqCst);
    assert_eq!(
        send(app.clone(), with_key(key)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        buf.count("INFO", "rate limiter available again failures=200"),
        1
    );

    // A misconfigured route (a scope check without AuthLayer) answers 500 every time, and says
    // why once.
    let app = routes().layer(keygate::scope::RequireScopeLayer::new("weather:read"));
    for _ in 0..100 {
        let reply = send(app.clone(), with_key(key)).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(buf.count("ERROR", "RequireScopeLayer without AuthLayer"), 1);

    // A JWK set endpoint that is down is fetched again and again (with backoff); it is reported
    // once, not at every retry.
    #[cfg(feature = "jwks")]
    {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
        drop(closed);
        let jwks = keygate::jwt::RemoteJwks::builder(url)
            .retry_interval(std::time::Duration::from_millis(10))
            .timeout(std::time::Duration::from_millis(200))
            .build()
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert!(!jwks.is_ready());
        assert_eq!(buf.count("WARN", "JWK set fetch failed"), 1);
    }
}
