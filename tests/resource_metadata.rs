//! Protected-resource metadata (RFC 9728) through real axum routers: the document served at its
//! well-known path, and the `resource_metadata` parameter in every challenge keygate sends when
//! the `AuthLayer` is given the document's URL — and in none when it is not.

mod common;

use axum::Router;
use axum::routing::get;
use common::*;
use http::Method;
use keygate::auth::AuthLayer;
use keygate::resource::{BearerMethod, ProtectedResource};
use keygate::scope::RequireScopeLayer;
use keygate::store::MemoryStore;

const METADATA_URL: &str = "https://weather.test/.well-known/oauth-protected-resource/v1";

fn metadata() -> ProtectedResource {
    ProtectedResource::new("https://weather.test/v1")
        .authorization_servers(["https://auth.weather.test", "https://login.partner.test/t1"])
        .scopes_supported(["weather:read", "weather:write"])
        .bearer_methods_supported([BearerMethod::Header, BearerMethod::Query])
        .resource_name("Weather API")
        .resource_documentation("https://weather.test/docs")
}

/// `/v1/me` needs a caller, `/v1/alerts` needs `weather:write` (checked by a
/// `RequireScopeLayer` behind the `AuthLayer`), and the metadata is served outside the
/// `AuthLayer`, at the path its resource gives.
fn app(
    metadata: &ProtectedResource,
    auth: impl FnOnce(AuthLayer) -> AuthLayer,
) -> (Router, String) {
    let (store, key) = store_with_key();
    let app = Router::new()
        .route("/v1/me", get(me))
        .route(
            "/v1/alerts",
            get(|| async { "alerts" }).route_layer(RequireScopeLayer::new("weather:write")),
        )
        .route_layer(auth(AuthLayer::new(store).realm(REALM)))
        .route_service(metadata.metadata_path(), metadata.service());
    (app, key.expose_secret().to_owned())
}

fn with_metadata(auth: AuthLayer) -> AuthLayer {
    auth.resource_metadata(METADATA_URL)
}

const PATH: &str = "/.well-known/oauth-protected-resource/v1";

#[tokio::test]
async fn the_document_is_served_at_its_well_known_path_without_a_credential() {
    let meta = metadata();
    assert_eq!(meta.metadata_url(), METADATA_URL);
    assert_eq!(meta.metadata_path(), PATH);
    let (app, _) = app(&meta, with_metadata);

    let reply = send(app, get_req(PATH)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("public, max-age=3600"));
    assert_eq!(reply.header("www-authenticate"), None);
    assert_eq!(
        reply.json(),
        serde_json::json!({
            "resource": "https://weather.test/v1",
            "authorization_servers": ["https://auth.weather.test", "https://login.partner.test/t1"],
            "scopes_supported": ["weather:read", "weather:write"],
            "bearer_methods_supported": ["header", "query"],
            "resource_name": "Weather API",
            "resource_documentation": "https://weather.test/docs",
        })
    );
    assert_eq!(reply.body, meta.to_json());
}

#[tokio::test]
async fn head_gets_the_headers_and_no_body() {
    let meta = metadata();
    let (app, _) = app(&meta, with_metadata);
    let reply = send(app, request_with(Method::HEAD, PATH, &[])).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.header("content-length"),
        Some(meta.to_json().len().to_string().as_str())
    );
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let meta = metadata();
    let (app, _) = app(&meta, with_metadata);
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let reply = send(app.clone(), request_with(method.clone(), PATH, &[])).await;
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"), "{method}");
        assert!(reply.body.is_empty());
    }
}

#[tokio::test]
async fn the_suffix_goes_between_the_host_and_the_resources_path() {
    let wk = "/.well-known/oauth-protected-resource";
    for (resource, path) in [
        ("https://weather.test", wk.to_owned()),
        ("https://weather.test/", wk.to_owned()),
        ("https://weather.test/v1", format!("{wk}/v1")),
        ("https://weather.test/api/v2/", format!("{wk}/api/v2/")),
    ] {
        let meta = ProtectedResource::new(resource);
        assert_eq!(meta.metadata_url(), format!("https://weather.test{path}"));
        let app = Router::new().route_service(meta.metadata_path(), meta.service());
        let reply = send(app.clone(), get_req(&path)).await;
        assert_eq!(reply.status, 200, "{resource}");
        assert_eq!(reply.json()["resource"], resource);
        // Not at the path's end, as OpenID discovery would put it.
        if resource.ends_with("/v1") {
            let appended = send(app, get_req("/v1/.well-known/oauth-protected-resource")).await;
            assert_eq!(appended.status, 404);
        }
    }
}

/// The challenge of each kind of rejection: no credential (401), a bad key (401
/// `invalid_token`), two credentials (400 `invalid_request`), a missing scope (403 from the
/// `RequireScopeLayer` behind the `AuthLayer`).
async fn challenges(app: &Router, key: &str) -> [(u16, String); 4] {
    let unknown = "wk_test_no_such_key";
    let requests = [
        get_req("/v1/me"),
        with_key_at("/v1/me", unknown),
        get_with(
            "/v1/me",
            &[
                ("x-api-key", key),
                ("authorization", &format!("Bearer {key}")),
            ],
        ),
        with_key_at("/v1/alerts", key),
    ];
    let mut out = Vec::new();
    for req in requests {
        let reply = send(app.clone(), req).await;
        let challenge = reply
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("no challenge in {reply:?}"))
            .to_owned();
        out.push((reply.status.as_u16(), challenge));
    }
    out.try_into().unwrap()
}

#[tokio::test]
async fn every_challenge_points_to_the_metadata() {
    let (app, key) = app(&metadata(), with_metadata);
    let param = format!(r#"resource_metadata="{METADATA_URL}""#);
    assert_eq!(
        challenges(&app, &key).await,
        [
            (401, format!(r#"Bearer realm="R", {param}"#)),
            (
                401,
                format!(r#"Bearer realm="R", error="invalid_token", {param}"#)
            ),
            (
                400,
                format!(r#"Bearer realm="R", error="invalid_request", {param}"#)
            ),
            (
                403,
                format!(
                    r#"Bearer realm="R", error="insufficient_scope", scope="weather:write", {param}"#
                )
            ),
        ]
    );
    // The handler still runs for a caller who may.
    assert_eq!(send(app, with_key_at("/v1/me", &key)).await.status, 200);
}

#[tokio::test]
async fn without_a_metadata_url_no_challenge_names_one() {
    let (app, key) = app(&metadata(), |auth| auth);
    assert_eq!(
        challenges(&app, &key).await,
        [
            (401, CHALLENGE.to_owned()),
            (401, INVALID_TOKEN.to_owned()),
            (400, INVALID_REQUEST.to_owned()),
            (
                403,
                r#"Bearer realm="R", error="insufficient_scope", scope="weather:write""#.to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn the_layers_and_extractors_behind_an_optional_auth_layer_point_to_it_too() {
    let (store, _) = store_with_key();
    let app = Router::new()
        .route("/v1/me", get(me))
        .route(
            "/v1/alerts",
            get(|| async { "alerts" }).route_layer(RequireScopeLayer::new("weather:write")),
        )
        .layer(
            AuthLayer::new(store)
                .realm(REALM)
                .optional()
                .resource_metadata(METADATA_URL),
        );
    let expected = format!(r#"Bearer realm="R", resource_metadata="{METADATA_URL}""#);
    // The `Principal` extractor's 401, and the `RequireScopeLayer`'s 401, for an anonymous
    // caller.
    for path in ["/v1/me", "/v1/alerts"] {
        let reply = send(app.clone(), get_req(path)).await;
        assert_eq!(reply.status, 401, "{path}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some(expected.as_str()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_layer_given_its_own_url_uses_it() {
    let (store, key) = store_with_key();
    let own = "https://alerts.weather.test/.well-known/oauth-protected-resource";
    let app = Router::new()
        .route(
            "/v1/alerts",
            get(|| async { "alerts" })
                .route_layer(RequireScopeLayer::new("weather:write").resource_metadata(own)),
        )
        .layer(
            AuthLayer::new(store)
                .realm(REALM)
                .resource_metadata(METADATA_URL),
        );
    let reply = send(app, with_key_at("/v1/alerts", key.expose_secret())).await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            format!(
                r#"Bearer realm="R", error="insufficient_scope", scope="weather:write", resource_metadata="{own}""#
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn grpc_requests_get_no_challenge() {
    let (app, _) = app(&metadata(), with_metadata);
    let reply = send(app, grpc_at("/v1/me", &[])).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("grpc-status"), Some("16"));
    assert_eq!(reply.header("www-authenticate"), None);
}

#[test]
#[should_panic(expected = "invalid resource_metadata URL")]
fn a_relative_metadata_url_is_a_configuration_error() {
    let _ = AuthLayer::new(MemoryStore::new()).resource_metadata(PATH);
}

#[test]
#[should_panic(expected = "invalid resource_metadata URL")]
fn a_metadata_url_with_a_quote_is_a_configuration_error() {
    let _ = RequireScopeLayer::new("weather:read")
        .resource_metadata("https://weather.test/\", error=\"none");
}
