//! Verification events (`AuthLayer::events`) through a real axum `Router`: one event per
//! request, admitted or refused, on the immediate and the waiting paths (a slow key store, JWT
//! keys fetched late), with the caller of a good key, of a token, and of a known key that was
//! refused; the layer's clock; the client's address from axum's `ConnectInfo`, a real
//! listener and trusted proxies; and a bounded channel that drops, and counts, what a slow
//! consumer has no room for, without slowing a request.
// The peer address of axum's `ConnectInfo` is read with keygate's `axum` feature.
#![cfg(feature = "axum")]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::ConnectInfo;
use common::*;
use http::{Request, StatusCode};
use keygate::auth::AuthLayer;
use keygate::clock::ManualClock;
use keygate::error::{AuthError, InvalidCredential};
use keygate::events::{self, AuthEvent, Outcome};
use keygate::key::{KeyRecord, KeyStatus};
use keygate::scope::RequireScopeLayer;
use keygate::store::KeyStore;
use keygate::{PrincipalKind, client_addr::Networks};

/// Every event a layer hands its hook, in order.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<AuthEvent>>>);

impl Recorded {
    fn hook(&self) -> impl Fn(&AuthEvent) + Send + Sync + 'static {
        let events = self.0.clone();
        move |event: &AuthEvent| events.lock().unwrap().push(event.clone())
    }

    /// The events so far, emptying the record.
    fn take(&self) -> Vec<AuthEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// The one event since the last look.
    #[track_caller]
    fn only(&self) -> AuthEvent {
        let mut events = self.take();
        assert_eq!(events.len(), 1, "one event per request: {events:?}");
        events.remove(0)
    }
}

fn layer(store: impl KeyStore, recorded: &Recorded) -> AuthLayer {
    AuthLayer::new(store).realm(REALM).events(recorded.hook())
}

/// `key` from `peer`, as axum's `ConnectInfo` gives it.
fn from(peer: &str, key: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut all = vec![("x-api-key", key)];
    all.extend_from_slice(headers);
    let mut req = get_with("/me", &all);
    let addr = SocketAddr::new(peer.parse().expect("an address"), 40_000);
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().expect("an address"))
}

/// Asserts an event of a refused request that names no caller.
#[track_caller]
fn assert_nobody(event: &AuthEvent, outcome: &str, kind: Option<PrincipalKind>) {
    assert_eq!(event.outcome().as_str(), outcome, "{event:?}");
    assert!(!event.outcome().is_admitted());
    assert_eq!(event.kind(), kind, "{event:?}");
    assert!(event.principal().is_none());
    assert_eq!(event.principal_id(), None);
    assert_eq!(event.owner(), None);
    assert_eq!(event.key_id(), None);
}

#[tokio::test]
async fn a_good_key_is_one_authenticated_event_through_a_channel() {
    let (store, key) = store_with_key();
    let (sender, mut receiver) = events::channel(16);
    let app = routes().layer(AuthLayer::new(store).realm(REALM).events(sender.clone()));

    let before = SystemTime::now();
    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    let after = SystemTime::now();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);

    let event = receiver.try_recv().expect("an event for the request");
    assert!(receiver.try_recv().is_none(), "one event per request");
    assert!(matches!(event.outcome(), Outcome::Authenticated));
    assert!(event.outcome().is_admitted());
    assert_eq!(event.kind(), Some(PrincipalKind::ApiKey));
    assert_eq!(event.principal_id(), Some("key_1"));
    assert_eq!(event.owner(), Some("acme"));
    assert_eq!(event.key_id(), Some("key_1"));
    assert_eq!(event.key_record().map(|r| &*r.owner), Some("acme"));
    assert!(event.principal().unwrap().has_scope("weather:read"));
    assert_eq!(event.environment(), None);
    assert!(before <= event.at() && event.at() <= after, "{event:?}");
    // No connection info on a request sent with `oneshot`: the address is not known.
    assert_eq!(event.client_addr(), None);
    assert!(!format!("{event:?}").contains(key.expose_secret()));
    assert_eq!(sender.dropped(), 0);
}

#[tokio::test]
async fn the_layers_clock_times_the_events() {
    let (store, key) = store_with_key();
    let at = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let clock = ManualClock::at(at);
    let recorded = Recorded::default();
    let app = routes().layer(layer(store, &recorded).clock(clock.clone()));

    send(app.clone(), with_key(key.expose_secret())).await;
    assert_eq!(recorded.only().at(), at);
    clock.advance(Duration::from_secs(90));
    send(app, with_key("no such key")).await;
    assert_eq!(recorded.only().at(), at + Duration::from_secs(90));
}

#[tokio::test]
async fn an_unknown_key_names_nobody() {
    let (store, _key) = store_with_key();
    let recorded = Recorded::default();
    let app = routes().layer(layer(store, &recorded));

    let reply = send(app, with_key("wk_not_a_key_of_ours")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let event = recorded.only();
    assert_nobody(&event, "unknown_key", Some(PrincipalKind::ApiKey));
    assert!(matches!(
        event.outcome().error(),
        Some(AuthError::InvalidCredential(InvalidCredential::UnknownKey))
    ));
    assert!(!format!("{event:?}").contains("wk_not_a_key_of_ours"));
}

#[tokio::test]
async fn a_refused_known_key_names_its_key_and_owner() {
    let now = SystemTime::now();
    let (store, keys) = store_with([
        KeyRecord::new("key_revoked", "globex").with_status(KeyStatus::Revoked),
        KeyRecord::new("key_disabled", "initech").with_status(KeyStatus::Disabled),
        KeyRecord::new("key_expired", "umbrella").with_expiry(now - Duration::from_secs(1)),
        KeyRecord::new("key_office", "hooli").with_allowed_ips("203.0.113.0/24".parse().unwrap()),
    ]);
    let recorded = Recorded::default();
    let app = routes().layer(layer(store, &recorded));

    let cases = [
        (
            "revoked_key",
            "key_revoked",
            "globex",
            StatusCode::UNAUTHORIZED,
        ),
        (
            "disabled_key",
            "key_disabled",
            "initech",
            StatusCode::UNAUTHORIZED,
        ),
        (
            "expired_key",
            "key_expired",
            "umbrella",
            StatusCode::UNAUTHORIZED,
        ),
        (
            "address_not_allowed",
            "key_office",
            "hooli",
            StatusCode::FORBIDDEN,
        ),
    ];
    for ((outcome, id, owner, status), key) in cases.into_iter().zip(&keys) {
        let reply = send(app.clone(), from("192.0.2.1", key.expose_secret(), &[])).await;
        assert_eq!(reply.status, status, "{id}");
        let event = recorded.only();
        assert_eq!(event.outcome().as_str(), outcome, "{event:?}");
        assert!(!event.outcome().is_admitted());
        assert_eq!(event.kind(), Some(PrincipalKind::ApiKey));
        assert_eq!(event.key_id(), Some(id), "{event:?}");
        assert_eq!(event.owner(), Some(owner), "{event:?}");
        assert!(event.principal().is_none(), "a refused key admits nobody");
        assert_eq!(event.principal_id(), None);
        assert_eq!(event.client_addr(), ip("192.0.2.1"));
        assert!(!format!("{event:?}").contains(key.expose_secret()));
    }
}

#[tokio::test]
async fn a_missing_or_unreadable_credential_is_an_event_of_no_kind() {
    let (store, key) = store_with_key();
    let recorded = Recorded::default();
    let app = routes().layer(layer(store, &recorded));

    let reply = send(app.clone(), get_req("/me")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_nobody(&recorded.only(), "missing_credential", None);

    // Two credentials: which one was meant?
    let secret = key.expose_secret();
    let two = get_with(&format!("/me?key={secret}"), &[("x-api-key", secret)]);
    let reply = send(app.clone(), two).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let event = recorded.only();
    assert_nobody(&event, "invalid_request", None);
    assert!(!format!("{event:?}").contains(secret));

    // Routes without an extractor are judged alike: the event does not depend on the route.
    let reply = send(app, get_req("/open")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_nobody(&recorded.only(), "missing_credential", None);
}

#[tokio::test]
async fn an_optional_layer_reports_anonymous_requests() {
    let (store, key) = store_with_key();
    let recorded = Recorded::default();
    let app = routes().layer(layer(store, &recorded).optional());

    let reply = send(app.clone(), get_req("/maybe")).await;
    assert_eq!(reply.text(), "anonymous");
    let event = recorded.only();
    assert!(matches!(event.outcome(), Outcome::Anonymous));
    assert!(event.outcome().is_admitted());
    assert_eq!(event.kind(), None);
    assert!(event.principal().is_none());

    let reply = send(app, with_key_at("/maybe", key.expose_secret())).await;
    assert_eq!(reply.text(), "id=key_1");
    assert_eq!(recorded.only().outcome().as_str(), "authenticated");
}

#[tokio::test]
async fn the_async_store_path_gives_one_event_per_request() {
    let (store, keys) = store_with([
        KeyRecord::new("key_1", "acme"),
        KeyRecord::new("key_revoked", "globex").with_status(KeyStatus::Revoked),
    ]);
    let recorded = Recorded::default();
    let slow = CountingStore::new(SlowStore(store));
    let app = routes().layer(layer(slow.clone(), &recorded));

    let mut requests = tokio::task::JoinSet::new();
    for i in 0..10 {
        let key = keys[i % 2].expose_secret().to_owned();
        let app = app.clone();
        requests.spawn(async move { send(app, with_key(&key)).await.status });
    }
    let mut statuses = Vec::new();
    while let Some(status) = requests.join_next().await {
        statuses.push(status.unwrap());
    }
    assert_eq!(slow.calls(), 10, "every lookup waited for the store");
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, 5);

    let events = recorded.take();
    assert_eq!(events.len(), 10, "one event per request: {events:?}");
    let authenticated: Vec<_> = events
        .iter()
        .filter(|e| e.outcome().is_admitted())
        .collect();
    assert_eq!(authenticated.len(), 5);
    for event in authenticated {
        assert_eq!(event.principal_id(), Some("key_1"));
        assert_eq!(event.key_id(), Some("key_1"));
    }
    for event in events.iter().filter(|e| !e.outcome().is_admitted()) {
        assert_eq!(event.outcome().as_str(), "revoked_key");
        assert_eq!(event.key_id(), Some("key_revoked"));
        assert_eq!(event.owner(), Some("globex"));
    }

    // A store that fails after making the request wait.
    let app = routes().layer(layer(SlowDownStore, &recorded));
    let reply = send(app, with_key("wk_any")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_nobody(&recorded.only(), "unavailable", Some(PrincipalKind::ApiKey));
}

#[tokio::test]
async fn a_refusal_behind_the_auth_layer_is_no_second_event() {
    let (store, key) = store_with_key();
    let recorded = Recorded::default();
    let app = routes()
        .layer(RequireScopeLayer::new("weather:admin"))
        .layer(layer(store, &recorded));

    let reply = send(app, with_key(key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // The auth layer admitted the caller; the scope layer's refusal is its own.
    assert_eq!(recorded.only().outcome().as_str(), "authenticated");
}

#[tokio::test]
async fn the_client_address_is_the_peer_or_behind_trusted_proxies_the_forwarded_client() {
    let (store, key) = store_with_key();
    let recorded = Recorded::default();
    let proxies: Networks = "10.0.0.0/8".parse().unwrap();
    let app = routes().layer(layer(store, &recorded).trusted_proxies(proxies));
    let secret = key.expose_secret();
    let xff = [("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.0.0.3")];

    send(app.clone(), from("192.0.2.1", secret, &[])).await;
    assert_eq!(recorded.only().client_addr(), ip("192.0.2.1"));

    // A trusted proxy: the right-most address of the header that is no proxy of ours.
    send(app.clone(), from("10.0.0.2", secret, &xff)).await;
    let event = recorded.only();
    assert_eq!(event.outcome().as_str(), "authenticated");
    assert_eq!(event.client_addr(), ip("203.0.113.7"));

    // A peer that is no trusted proxy is the client, whatever it forwards.
    send(app.clone(), from("192.0.2.1", secret, &xff)).await;
    assert_eq!(recorded.only().client_addr(), ip("192.0.2.1"));

    // Refused requests carry the address too.
    send(app.clone(), from("10.0.0.2", "no such key", &xff)).await;
    let event = recorded.only();
    assert_eq!(event.outcome().as_str(), "unknown_key");
    assert_eq!(event.client_addr(), ip("203.0.113.7"));

    // Headers that cannot be believed: the address is not known.
    let conflicting = [
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "for=198.51.100.1"),
    ];
    send(app, from("10.0.0.2", secret, &conflicting)).await;
    assert_eq!(recorded.only().client_addr(), None);
}

/// A real server, served as the docs say: `into_make_service_with_connect_info`.
#[tokio::test]
async fn a_real_listener_gives_the_peer_address() {
    let (store, key) = store_with_key();
    let (sender, mut receiver) = events::channel(16);
    let app = routes().layer(AuthLayer::new(store).events(sender));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let client = reqwest::Client::new();
    let res = client
        .get(format!("http://{addr}/me"))
        .header("x-api-key", key.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = client
        .get(format!("http://{addr}/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let wait = Duration::from_secs(5);
    let event = tokio::time::timeout(wait, receiver.recv()).await.unwrap();
    let event = event.expect("the event of the first request");
    assert_eq!(event.principal_id(), Some("key_1"));
    assert_eq!(event.client_addr(), ip("127.0.0.1"));
    let event = tokio::time::timeout(wait, receiver.recv()).await.unwrap();
    let event = event.expect("the event of the second request");
    assert_eq!(event.outcome().as_str(), "missing_credential");
    assert_eq!(event.client_addr(), ip("127.0.0.1"));
    server.abort();
}

/// A consumer far slower than the requests: the channel drops what it has no room for, counts
/// it, and no request waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_counts_drops_and_never_slows_a_request() {
    const REQUESTS: u64 = 50;
    const PER_EVENT: Duration = Duration::from_millis(100);
    let (store, key) = store_with_key();
    let (sender, mut receiver) = events::channel(2);
    let consumer = tokio::spawn(async move {
        let mut received = 0u64;
        while receiver.recv().await.is_some() {
            received += 1;
            tokio::time::sleep(PER_EVENT).await;
        }
        (received, receiver.dropped())
    });
    let app = routes().layer(AuthLayer::new(store).events(sender.clone()));

    let started = Instant::now();
    for _ in 0..REQUESTS {
        let reply = send(app.clone(), with_key(key.expose_secret())).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let elapsed = started.elapsed();
    // Requests that waited for room would take at least (REQUESTS - 3) * PER_EVENT: 4.7 s.
    assert!(elapsed < PER_EVENT * 25, "{elapsed:?}");
    let dropped = sender.dropped();
    assert!(dropped >= REQUESTS - 10, "only {dropped} dropped");

    // The last senders go with the app: the consumer gets what was queued, then the end.
    drop((app, sender));
    let (received, dropped_then) = tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("the consumer ends once the senders are gone")
        .unwrap();
    assert_eq!(dropped_then, dropped);
    assert_eq!(
        received + dropped,
        REQUESTS,
        "every event delivered or counted"
    );
}

#[cfg(feature = "jwt")]
mod jwt {
    use keygate::MaybeReady;
    use keygate::jwt::{JwtKey, JwtVerifier, KeySet, KeySource, Refetch, StaticKeys};

    use super::*;

    fn verifier() -> JwtVerifier {
        JwtVerifier::with_keys([JwtKey::hmac(HS256_SECRET).kid("hs-1")])
    }

    #[tokio::test]
    async fn a_token_is_a_jwt_event_without_a_key_id() {
        let (store, _key) = store_with_key();
        let recorded = Recorded::default();
        let app = routes().layer(layer(store, &recorded).jwt(verifier()));

        let token = hs256_token("user-7");
        let reply = send(app.clone(), with_bearer("/me", &token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let event = recorded.only();
        assert_eq!(event.outcome().as_str(), "authenticated");
        assert_eq!(event.kind(), Some(PrincipalKind::Jwt));
        assert_eq!(event.principal_id(), Some("user-7"));
        assert_eq!(event.key_id(), None, "a token is no API key");
        assert!(!format!("{event:?}").contains(&token));

        // The same token with its signature's last character changed.
        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        let reply = send(app, with_bearer("/me", &forged)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_nobody(&recorded.only(), "invalid_token", Some(PrincipalKind::Jwt));
    }

    #[tokio::test]
    async fn a_jwt_only_layer_reports_its_decisions_too() {
        let recorded = Recorded::default();
        let app = routes().layer(AuthLayer::jwt_only(verifier()).events(recorded.hook()));

        let reply = send(app.clone(), with_bearer("/me", &hs256_token("user-7"))).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(recorded.only().principal_id(), Some("user-7"));
        let reply = send(app, with_key("not a token")).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_nobody(&recorded.only(), "unknown_key", Some(PrincipalKind::ApiKey));
    }

    /// A key source that has no key until a token asks for one, then fetches after a wait.
    #[derive(Clone)]
    struct LateKeys(StaticKeys);

    impl KeySource for LateKeys {
        fn current(&self) -> Arc<KeySet> {
            self.0.current()
        }

        fn unknown_kid(&self, _: &str) -> Option<MaybeReady<Refetch>> {
            let keys = self.0.clone();
            Some(MaybeReady::pending(async move {
                tokio::task::yield_now().await;
                keys.replace(KeySet::new([JwtKey::hmac(HS256_SECRET).kid("hs-1")]));
                Refetch::Fetched
            }))
        }
    }

    #[tokio::test]
    async fn a_token_waiting_for_new_keys_is_one_event() {
        let recorded = Recorded::default();
        let source = LateKeys(StaticKeys::new(KeySet::new([])));
        let app =
            routes().layer(AuthLayer::jwt_only(JwtVerifier::new(source)).events(recorded.hook()));

        let reply = send(app, with_bearer("/me", &hs256_token("user-7"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let event = recorded.only();
        assert_eq!(event.outcome().as_str(), "authenticated");
        assert_eq!(event.kind(), Some(PrincipalKind::Jwt));
        assert_eq!(event.principal_id(), Some("user-7"));
    }
}
