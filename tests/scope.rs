//! `RequireScopeLayer` behind `AuthLayer`, through a real axum `Router`.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use common::*;
use http::{Request, StatusCode};
use keygate::key::KeyRecord;
use keygate::store::MemoryStore;
use keygate::{auth::AuthLayer, scope::RequireScopeLayer};
use tower::ServiceBuilder;

const READ_DENIED: &str = r#"Bearer realm="R", error="insufficient_scope", scope="weather:read""#;
const WRITE_DENIED: &str = r#"Bearer realm="R", error="insufficient_scope", scope="weather:write""#;

fn require(scope: &str) -> RequireScopeLayer {
    RequireScopeLayer::new(scope.to_owned()).realm(REALM)
}

/// `GET /v1/current.json` needs `weather:read`, `POST /v1/alerts` needs `weather:write`; the
/// handlers count their calls.
fn weather(hits: &Hits) -> Router {
    Router::new()
        .route("/v1/current.json", get(hits.counted("sunny")))
        .route_layer(require("weather:read"))
        .merge(
            Router::new()
                .route("/v1/alerts", post(hits.counted("saved")))
                .route_layer(require("weather:write")),
        )
}

/// A store with the keys of `reader` (`weather:read`), `writer` (`weather:read` and
/// `weather:write`) and `nobody` (no scope), and those keys.
fn store() -> (MemoryStore, String, String, String) {
    let (store, keys) = store_with([
        KeyRecord::new("reader", "acme").with_scopes(["weather:read"]),
        KeyRecord::new("writer", "acme").with_scopes(["weather:read", "weather:write"]),
        KeyRecord::new("nobody", "acme"),
    ]);
    let s = |i: usize| keys[i].expose_secret().to_owned();
    (store, s(0), s(1), s(2))
}

fn read(key: &str) -> Request<Body> {
    with_key_at("/v1/current.json", key)
}

fn write(key: &str) -> Request<Body> {
    post_with("/v1/alerts", &[("x-api-key", key)])
}

#[tokio::test]
async fn a_caller_with_the_scope_is_let_through() {
    let (store, reader, writer, _) = store();
    let hits = Hits::default();
    let app = weather(&hits).layer(AuthLayer::new(store).realm(REALM));
    for key in [&reader, &writer] {
        let reply = send(app.clone(), read(key)).await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "sunny"));
    }
    let reply = send(app, write(&writer)).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "saved"));
    assert_eq!(hits.get(), 3);
}

#[tokio::test]
async fn a_caller_without_the_scope_gets_403_naming_it() {
    let (store, reader, _, nobody) = store();
    let hits = Hits::default();
    let app = weather(&hits).layer(AuthLayer::new(store).realm(REALM));

    let reply = send(app.clone(), write(&reader)).await;
    assert_problem(
        &reply,
        403,
        Some(WRITE_DENIED),
        "The credential lacks the scope \"weather:write\".",
    );
    reply.assert_no_leak(&reader);

    let reply = send(app.clone(), read(&nobody)).await;
    assert_problem(
        &reply,
        403,
        Some(READ_DENIED),
        "The credential lacks the scope \"weather:read\".",
    );
    reply.assert_no_leak(&nobody);
    assert_eq!(hits.get(), 0);

    // Authentication comes first: a bad key is 401, not 403.
    let reply = send(app, write("kg_unknown")).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
}

#[tokio::test]
async fn the_scope_layer_uses_the_auth_layers_realm_unless_given_its_own() {
    let (store, reader, _, _) = store();
    let app = Router::new()
        .route("/v1/alerts", post(|| async { "saved" }))
        .route_layer(RequireScopeLayer::new("weather:write"))
        .layer(AuthLayer::new(store.clone()).realm(REALM));
    let reply = send(app, write(&reader)).await;
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="R", error="insufficient_scope", scope="weather:write""#)
    );

    let app = Router::new()
        .route("/v1/alerts", post(|| async { "saved" }))
        .route_layer(RequireScopeLayer::new("weather:write").realm("alerts"))
        .layer(AuthLayer::new(store).realm(REALM));
    let reply = send(app, write(&reader)).await;
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="alerts", error="insufficient_scope", scope="weather:write""#)
    );
}

#[tokio::test]
async fn an_anonymous_caller_in_optional_mode_gets_401() {
    let (store, reader, _, _) = store();
    let hits = Hits::default();
    let app = weather(&hits).layer(AuthLayer::new(store).realm(REALM).optional());
    let reply = send(app.clone(), get_req("/v1/current.json?q=London")).await;
    assert_problem(
        &reply,
        401,
        Some(CHALLENGE),
        "The request carries no credential.",
    );
    assert_eq!(hits.get(), 0);
    let reply = send(app, read(&reader)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(hits.get(), 1);
}

#[tokio::test]
async fn without_an_auth_layer_it_is_500() {
    let (_, reader, _, _) = store();
    let hits = Hits::default();
    let app = weather(&hits);
    for req in [get_req("/v1/current.json"), read(&reader)] {
        let reply = send(app.clone(), req).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_problem(&reply, 500, None, NO_PRINCIPAL);
        reply.assert_no_leak(&reader);
    }
    assert_eq!(hits.get(), 0);
}

#[tokio::test]
async fn outside_the_auth_layer_it_is_500() {
    // The order is wrong: the scope is checked before anyone authenticated.
    let (store, reader, _, _) = store();
    let svc = ServiceBuilder::new()
        .layer(require("weather:read"))
        .layer(AuthLayer::new(store).realm(REALM))
        .service(routes());
    let reply = send(svc, get_with("/open", &[("x-api-key", &reader)])).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn with_service_builder() {
    let (store, reader, writer, nobody) = store();
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(store).realm(REALM))
        .layer(require("weather:write"))
        .service(routes());
    let reply = send(svc.clone(), get_with("/open", &[("x-api-key", &writer)])).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "open"));
    for key in [&reader, &nobody] {
        let reply = send(svc.clone(), get_with("/open", &[("x-api-key", key)])).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.header("www-authenticate"), Some(WRITE_DENIED));
    }
    let reply = send(svc, get_req("/open")).await;
    assert_problem(
        &reply,
        401,
        Some(CHALLENGE),
        "The request carries no credential.",
    );
}

#[tokio::test]
async fn after_a_pending_lookup() {
    let (store, reader, writer, _) = store();
    let hits = Hits::default();
    let app = weather(&hits).layer(AuthLayer::new(SlowStore(store)).realm(REALM));
    assert_eq!(
        send(app.clone(), write(&writer)).await.status,
        StatusCode::OK
    );
    let reply = send(app, write(&reader)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.header("www-authenticate"), Some(WRITE_DENIED));
    assert_eq!(hits.get(), 1);
}

#[tokio::test]
async fn scope_changes_apply_at_once() {
    let (store, reader, _, _) = store();
    let hits = Hits::default();
    let app = weather(&hits).layer(AuthLayer::new(store.clone()).realm(REALM));
    assert_eq!(
        send(app.clone(), write(&reader)).await.status,
        StatusCode::FORBIDDEN
    );
    store
        .update("reader", |r| {
            r.scopes = ["weather:read", "weather:write"].into_iter().collect();
        })
        .unwrap();
    assert_eq!(
        send(app.clone(), write(&reader)).await.status,
        StatusCode::OK
    );
    store
        .update("reader", |r| r.scopes = keygate::key::Scopes::new())
        .unwrap();
    assert_eq!(send(app, read(&reader)).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn grpc_missing_scope_is_permission_denied() {
    let (store, reader, _, _) = store();
    let app = Router::new()
        .route("/weather.Alerts/Save", post(|| async { "" }))
        .route_layer(require("weather:write"))
        .layer(AuthLayer::new(store).realm(REALM));
    let req = grpc_at("/weather.Alerts/Save", &[("x-api-key", &reader)]);
    let reply = send(app, req).await;
    assert_grpc(
        &reply,
        "7",
        "The credential lacks the scope \"weather:write\".",
    );
}

#[test]
#[should_panic(expected = "invalid scope")]
fn a_scope_with_a_space_is_a_configuration_error() {
    let _ = RequireScopeLayer::new("weather read");
}

#[test]
#[should_panic(expected = "invalid scope")]
fn an_empty_scope_is_a_configuration_error() {
    let _ = RequireScopeLayer::new(Arc::<str>::from(""));
}
