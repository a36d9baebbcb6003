//! Per-key IP allowlists through a real axum `Router`: the client address from the connection
//! (`ConnectInfo`, keygate's `ClientAddr`), from `X-Forwarded-For` and `Forwarded` behind
//! trusted proxies only, IPv6 and IPv4-mapped peers, what a forged or malformed header does, a
//! request with no known address, the async store path, gRPC, and a real listener served with
//! `into_make_service_with_connect_info`.
// The peer address of axum's `ConnectInfo` is read with keygate's `axum` feature.
#![cfg(feature = "axum")]

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use common::*;
use http::{Request, StatusCode};
use keygate::auth::AuthLayer;
use keygate::client_addr::{ClientAddr, Networks};
use keygate::key::{ApiKey, KeyRecord, KeyStatus};
use keygate::store::{KeyManager, KeyStore, KeyUpdate, MemoryStore};

const NOT_ALLOWED: &str = "The client's address is not allowed for this key.";
/// The proxies of the tests' deployment: a private network and one IPv6 load balancer.
const PROXIES: &str = "10.0.0.0/8, 2001:db8:ffff::1";

fn nets(s: &str) -> Networks {
    s.parse().expect("valid networks")
}

/// `key_1`, usable from `allowed` only (from anywhere when `None`).
fn store_for(allowed: Option<&str>) -> (MemoryStore, ApiKey) {
    let mut record = KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]);
    if let Some(allowed) = allowed {
        record = record.with_allowed_ips(nets(allowed));
    }
    let (store, mut keys) = store_with([record]);
    (store, keys.remove(0))
}

fn app(store: impl KeyStore) -> Router {
    routes().layer(
        AuthLayer::new(store)
            .realm(REALM)
            .trusted_proxies(nets(PROXIES)),
    )
}

/// `GET /me` with the key, from `peer` (as axum's `ConnectInfo` gives it; none: no connection
/// info), with these further headers.
fn from(peer: Option<&str>, key: &ApiKey, headers: &[(&str, &str)]) -> Request<Body> {
    let mut all = vec![("x-api-key", key.expose_secret())];
    all.extend_from_slice(headers);
    let mut req = get_with("/me", &all);
    if let Some(peer) = peer {
        let addr = SocketAddr::new(peer.parse().expect("an address"), 40_000);
        req.extensions_mut().insert(ConnectInfo(addr));
    }
    req
}

/// Asserts the 403 of a key used from an address it may not be used from: the problem, no
/// challenge (another credential would not help), nothing of the key nor of its list.
#[track_caller]
fn assert_not_allowed(reply: &Reply, key: &ApiKey, listed: &[&str]) {
    assert_problem(reply, 403, None, NOT_ALLOWED);
    reply.assert_no_leak(key.expose_secret());
    for listed in listed {
        assert!(!reply.text().contains(listed), "{}", reply.text());
    }
}

#[tokio::test]
async fn a_key_without_an_allowlist_works_from_anywhere() {
    let (store, key) = store_for(None);
    let app = app(store);
    for peer in [
        Some("192.0.2.1"),
        Some("2001:db8::7"),
        Some("10.0.0.2"),
        None,
    ] {
        assert_key_1(&send(app.clone(), from(peer, &key, &[])).await);
        let forged = [("x-forwarded-for", "garbage"), ("forwarded", "for=\"")];
        assert_key_1(&send(app.clone(), from(peer, &key, &forged)).await);
    }
}

#[tokio::test]
async fn a_direct_client_is_allowed_from_its_networks_only() {
    let (store, key) = store_for(Some("203.0.113.0/24, 198.51.100.7"));
    let app = app(store);
    for peer in ["203.0.113.1", "203.0.113.254", "198.51.100.7"] {
        assert_key_1(&send(app.clone(), from(Some(peer), &key, &[])).await);
    }
    for peer in [
        "203.0.114.1",
        "198.51.100.8",
        "192.0.2.1",
        "2001:db8::1",
        "10.0.0.2",
    ] {
        let reply = send(app.clone(), from(Some(peer), &key, &[])).await;
        assert_not_allowed(&reply, &key, &["203.0.113", "198.51.100.7"]);
    }
}

#[tokio::test]
async fn ipv6_networks() {
    let (store, key) = store_for(Some("2001:db8:1234::/48"));
    let app = app(store);
    for peer in ["2001:db8:1234::1", "2001:db8:1234:ffff:ffff:ffff:ffff:ffff"] {
        assert_key_1(&send(app.clone(), from(Some(peer), &key, &[])).await);
    }
    for peer in ["2001:db8:1235::1", "2001:db8::1", "::1", "203.0.113.1"] {
        let reply = send(app.clone(), from(Some(peer), &key, &[])).await;
        assert_not_allowed(&reply, &key, &["2001:db8:1234"]);
    }
}

/// A dual-stack listener reports IPv4 peers as `::ffff:a.b.c.d`: they match IPv4 networks.
#[tokio::test]
async fn an_ipv4_mapped_peer_is_matched_as_ipv4() {
    let (store, key) = store_for(Some("203.0.113.0/24"));
    let app = app(store);
    assert_key_1(&send(app.clone(), from(Some("::ffff:203.0.113.5"), &key, &[])).await);
    let reply = send(app.clone(), from(Some("::ffff:203.0.114.5"), &key, &[])).await;
    assert_not_allowed(&reply, &key, &[]);
    // And a mapped network in the list is the IPv4 network.
    let (store, key) = store_for(Some("::ffff:198.51.100.0/120"));
    let mapped = self::app(store);
    assert_key_1(&send(mapped.clone(), from(Some("198.51.100.9"), &key, &[])).await);
    assert_key_1(&send(mapped, from(Some("::ffff:198.51.100.9"), &key, &[])).await);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_counts() {
    let (store, key) = store_for(Some("203.0.113.0/24"));
    let app = app(store);
    let via_proxy = |xff: &'static str| from(Some("10.0.0.2"), &key, &[("x-forwarded-for", xff)]);
    assert_key_1(&send(app.clone(), via_proxy("203.0.113.9")).await);
    assert_key_1(&send(app.clone(), via_proxy("192.0.2.1, 203.0.113.9")).await);
    let reply = send(app.clone(), via_proxy("192.0.2.1")).await;
    assert_not_allowed(&reply, &key, &["203.0.113"]);
    // The client lied about where it came from: the proxy appended the truth.
    let reply = send(app.clone(), via_proxy("203.0.113.9, 192.0.2.1")).await;
    assert_not_allowed(&reply, &key, &[]);
    // The proxy's own address is not the client's.
    let reply = send(app.clone(), from(Some("10.0.0.2"), &key, &[])).await;
    assert_not_allowed(&reply, &key, &[]);
}

#[tokio::test]
async fn several_hops_through_several_trusted_proxies() {
    let (store, key) = store_for(Some("203.0.113.0/24"));
    let app = app(store);
    // Client → CDN edge (untrusted, the client's side) … → 10.1.1.1 → 10.2.2.2 → the service.
    let hops = [
        // every hop right of the client is one of ours
        ("198.51.100.1, 203.0.113.9, 10.1.1.1, 10.2.2.2", true),
        ("203.0.113.9, 10.1.1.1", true),
        // the right-most address that is no proxy of ours is the client
        ("203.0.113.9, 198.51.100.1, 10.1.1.1, 10.2.2.2", false),
        ("203.0.113.9, 2001:db8::9, 10.1.1.1", false),
        // IPv6 load balancer in the chain
        ("203.0.113.9, 2001:db8:ffff::1, 10.1.1.1", true),
        ("203.0.113.9, [2001:db8:ffff::1]:443, 10.1.1.1", true),
    ];
    for (xff, allowed) in hops {
        let reply = send(
            app.clone(),
            from(Some("10.0.0.2"), &key, &[("x-forwarded-for", xff)]),
        )
        .await;
        if allowed {
            assert_key_1(&reply);
        } else {
            assert_not_allowed(&reply, &key, &[]);
        }
    }
    // The hops may come in several header lines, each appended by a proxy.
    let reply = send(
        app.clone(),
        from(
            Some("2001:db8:ffff::1"),
            &key,
            &[
                ("x-forwarded-for", "192.0.2.50, 203.0.113.9"),
                ("x-forwarded-for", "10.1.1.1"),
            ],
        ),
    )
    .await;
    assert_key_1(&reply);
}

#[tokio::test]
async fn a_forged_header_from_an_untrusted_peer_changes_nothing() {
    let (store, key) = store_for(Some("203.0.113.0/24"));
    let app = app(store);
    // A denied peer claiming an allowed address stays denied...
    for headers in [
        [("x-forwarded-for", "203.0.113.9")],
        [("x-forwarded-for", "192.0.2.1, 203.0.113.9")],
        [("forwarded", "for=203.0.113.9")],
        [("x-real-ip", "203.0.113.9")],
    ] {
        let reply = send(app.clone(), from(Some("192.0.2.1"), &key, &headers)).await;
        assert_not_allowed(&reply, &key, &[]);
    }
    // ...also when it claims to come through one of our proxies.
    let reply = send(
        app.clone(),
        from(
            Some("192.0.2.1"),
            &key,
            &[("x-forwarded-for", "203.0.113.9, 10.0.0.2")],
        ),
    )
    .await;
    assert_not_allowed(&reply, &key, &[]);
    // An allowed peer sending a bogus header is still allowed.
    for headers in [
        [("x-forwarded-for", "192.0.2.1")],
        [("x-forwarded-for", "garbage, unknown")],
        [("forwarded", "for=\"[::1")],
    ] {
        let reply = send(app.clone(), from(Some("203.0.113.9"), &key, &headers)).await;
        assert_key_1(&reply);
    }
}

#[tokio::test]
async fn forwarded_with_a_quoted_ipv6_address_and_port() {
    let (store, key) = store_for(Some("2001:db8:cafe::/48, 192.0.2.0/24"));
    let app = app(store);
    let forwarded = |value: &'static str| from(Some("10.0.0.2"), &key, &[("forwarded", value)]);
    for value in [
        r#"for="[2001:db8:cafe::17]:4711""#,
        r#"for="[2001:db8:cafe::17]""#,
        r#"for=198.51.100.1, for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.2"#,
        r#"for="192.0.2.43:47011""#,
        "for=192.0.2.43, for=10.9.9.9",
    ] {
        assert_key_1(&send(app.clone(), forwarded(value)).await);
    }
    for value in [
        r#"for="[2001:db8:beef::17]:4711""#,
        r#"for="[2001:db8:cafe::17]:4711", for=198.51.100.1"#,
    ] {
        let reply = send(app.clone(), forwarded(value)).await;
        assert_not_allowed(&reply, &key, &[]);
    }
}

/// A header from a trusted proxy that cannot be read never admits: the client's address is
/// then unknown, and a key with an allowlist is refused.
#[tokio::test]
async fn a_malformed_header_from_a_trusted_proxy_does_not_admit() {
    let (store, key) = store_for(Some("203.0.113.0/24, 10.0.0.0/8"));
    let app = app(store);
    for headers in [
        vec![("x-forwarded-for", "203.0.113.9, garbage")],
        vec![("x-forwarded-for", "203.0.113.9, unknown")],
        vec![("x-forwarded-for", "203.0.113.9,")],
        vec![("x-forwarded-for", "")],
        vec![("forwarded", "for=203.0.113.9, for=_hidden")],
        vec![("forwarded", "for=unknown")],
        vec![("forwarded", r#"for="203.0.113.9, proto=https"#)],
        vec![("forwarded", "for=203.0.113.9;for=203.0.113.9")],
        vec![("forwarded", "proto=https")],
        // Both headers, naming different clients: one was passed on as the client sent it.
        vec![
            ("forwarded", "for=203.0.113.9"),
            ("x-forwarded-for", "192.0.2.1"),
        ],
    ] {
        let reply = send(app.clone(), from(Some("10.0.0.2"), &key, &headers)).await;
        assert_not_allowed(&reply, &key, &[]);
    }
    // More hops of our own proxies than are walked through.
    let chain: Vec<String> = (1..=40).map(|i| format!("10.0.0.{i}")).collect();
    let chain = chain.join(", ");
    let reply = send(
        app.clone(),
        from(Some("10.0.0.2"), &key, &[("x-forwarded-for", &chain)]),
    )
    .await;
    assert_not_allowed(&reply, &key, &[]);
    // Both headers naming the same client are fine.
    let reply = send(
        app.clone(),
        from(
            Some("10.0.0.2"),
            &key,
            &[
                ("forwarded", "for=203.0.113.9"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        ),
    )
    .await;
    assert_key_1(&reply);
}

#[tokio::test]
async fn no_client_address_at_all_is_refused() {
    let (store, key) = store_for(Some("0.0.0.0/0, ::/0"));
    let app = app(store);
    for headers in [vec![], vec![("x-forwarded-for", "203.0.113.9")]] {
        let reply = send(app.clone(), from(None, &key, &headers)).await;
        assert_not_allowed(&reply, &key, &[]);
    }
    assert_key_1(&send(app.clone(), from(Some("192.0.2.1"), &key, &[])).await);
}

/// An empty allowlist allows no address.
#[tokio::test]
async fn an_empty_allowlist_allows_nothing() {
    let (store, key) = store_for(Some(""));
    let app = app(store);
    let reply = send(app.clone(), from(Some("192.0.2.1"), &key, &[])).await;
    assert_not_allowed(&reply, &key, &[]);
}

#[tokio::test]
async fn client_addr_from_the_application_wins_over_connect_info() {
    let (store, key) = store_for(Some("203.0.113.0/24"));
    let app = app(store);
    let mut req = from(Some("192.0.2.1"), &key, &[]);
    req.extensions_mut()
        .insert(ClientAddr("203.0.113.9".parse().unwrap()));
    assert_key_1(&send(app.clone(), req).await);
    let mut req = from(Some("203.0.113.9"), &key, &[]);
    req.extensions_mut()
        .insert(ClientAddr("192.0.2.1".parse().unwrap()));
    assert_not_allowed(&send(app.clone(), req).await, &key, &[]);
    // Without connection info at all.
    let mut req = from(None, &key, &[]);
    req.extensions_mut()
        .insert(ClientAddr("203.0.113.9".parse().unwrap()));
    assert_key_1(&send(app.clone(), req).await);
    // It is the peer: when it is a trusted proxy, the forwarding headers count.
    let mut req = from(None, &key, &[("x-forwarded-for", "203.0.113.9")]);
    req.extensions_mut()
        .insert(ClientAddr("10.0.0.2".parse().unwrap()));
    assert_key_1(&send(app.clone(), req).await);
}

/// The key's status and expiry are checked first: a revoked key from a wrong address is a 401
/// like any unknown key, so a 403 tells nothing of keys that no longer work.
#[tokio::test]
async fn status_comes_before_the_address() {
    let (store, key) = store_for(Some("203.0.113.0/24"));
    store
        .update("key_1", |r| r.status = KeyStatus::Revoked)
        .unwrap();
    let app = app(store);
    let reply = send(app.clone(), from(Some("192.0.2.1"), &key, &[])).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
}

/// A store that makes the layer wait goes through the same check.
#[tokio::test]
async fn the_async_store_path_checks_the_address_too() {
    let (store, key) = store_for(Some("203.0.113.0/24"));
    let app = app(SlowStore(store));
    assert_key_1(&send(app.clone(), from(Some("203.0.113.9"), &key, &[])).await);
    let reply = send(
        app.clone(),
        from(
            Some("10.0.0.2"),
            &key,
            &[("x-forwarded-for", "203.0.113.9")],
        ),
    )
    .await;
    assert_key_1(&reply);
    let reply = send(app.clone(), from(Some("192.0.2.1"), &key, &[])).await;
    assert_not_allowed(&reply, &key, &[]);
    let reply = send(app.clone(), from(None, &key, &[])).await;
    assert_not_allowed(&reply, &key, &[]);
}

#[tokio::test]
async fn changing_the_allowlist_takes_effect_at_once() {
    let (store, key) = store_for(None);
    let app = app(store.clone());
    let req = || from(Some("192.0.2.1"), &key, &[]);
    assert_key_1(&send(app.clone(), req()).await);
    let update = |update: KeyUpdate| KeyManager::update(&store, "key_1", update);
    update(KeyUpdate::new().allowed_ips(Some(nets("203.0.113.0/24"))))
        .await
        .unwrap();
    assert_not_allowed(&send(app.clone(), req()).await, &key, &[]);
    let changed = update(KeyUpdate::new().allowed_ips(Some(nets("192.0.2.0/24"))))
        .await
        .unwrap();
    assert_eq!(changed.allowed_ips, Some(nets("192.0.2.0/24")));
    assert_key_1(&send(app.clone(), req()).await);
    // Other changes keep the list.
    update(KeyUpdate::new().scopes(["weather:read", "x"]))
        .await
        .unwrap();
    assert_not_allowed(
        &send(app.clone(), from(Some("198.51.100.1"), &key, &[])).await,
        &key,
        &[],
    );
    update(KeyUpdate::new().allowed_ips(None::<Networks>))
        .await
        .unwrap();
    assert_key_1(&send(app.clone(), from(Some("198.51.100.1"), &key, &[])).await);
}

#[tokio::test]
async fn grpc_gets_permission_denied() {
    let (store, key) = store_for(Some("203.0.113.0/24"));
    let app = app(store);
    let mut req = grpc_at("/me", &[("x-api-key", key.expose_secret())]);
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 1))));
    let reply = send(app, req).await;
    assert_grpc(&reply, "7", NOT_ALLOWED);
    reply.assert_no_leak(key.expose_secret());
}

/// A real server, as the docs say to serve one: `into_make_service_with_connect_info`.
#[tokio::test]
async fn a_real_listener_gives_the_peer_address() {
    let (store, keys) = store_with([
        KeyRecord::new("local", "acme").with_allowed_ips(nets("127.0.0.1")),
        KeyRecord::new("office", "acme").with_allowed_ips(nets("203.0.113.0/24")),
    ]);
    let app = app(store);
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
    let get = |key: &ApiKey, xff: Option<&str>| {
        let mut req = client
            .get(format!("http://{addr}/me"))
            .header("x-api-key", key.expose_secret());
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        req.send()
    };
    let res = get(&keys[0], None).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = get(&keys[1], None).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // 127.0.0.1 is no trusted proxy: its header is not believed.
    let res = get(&keys[1], Some("203.0.113.9")).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body = res.text().await.unwrap();
    assert!(body.contains(NOT_ALLOWED), "{body}");
    assert!(!body.contains(keys[1].expose_secret()));
    server.abort();
}

/// Asserts a 200 from `/me` for the principal `key_1`.
#[track_caller]
fn assert_key_1(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK, "body: {:?}", reply.body);
    assert_eq!(reply.json()["id"], "key_1");
}
