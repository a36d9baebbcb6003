//! `RequireScopeLayer` (one scope, all of several, any of several), `RequirePrincipalLayer` and
//! `RequireClaimsLayer` behind `AuthLayer`, through a real axum `Router`.

mod common;
#[cfg(feature = "jwt")]
mod jwt_support;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use common::*;
use http::{Request, StatusCode};
use keygate::key::KeyRecord;
use keygate::scope::RequirePrincipalLayer;
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

// ---------------------------------------------------------------------------------------------
// All of several scopes, any of several

/// `GET /v1/forecast.json` needs both `weather:read` and `forecast:read`; `GET /v1/alerts.json`
/// needs `alerts:read` or `weather:admin`.
fn expressions(hits: &Hits) -> Router {
    Router::new()
        .route("/v1/forecast.json", get(hits.counted("rain later")))
        .route_layer(RequireScopeLayer::all(["weather:read", "forecast:read"]).realm(REALM))
        .merge(
            Router::new()
                .route("/v1/alerts.json", get(hits.counted("[]")))
                .route_layer(RequireScopeLayer::any(["alerts:read", "weather:admin"]).realm(REALM)),
        )
}

/// Keys of `forecaster` (`weather:read forecast:read`), `reader` (`weather:read`), `alerts`
/// (`alerts:read`), `admin` (`weather:admin`) and `nobody`, in that order.
fn expression_store() -> (MemoryStore, Vec<String>) {
    let (store, keys) = store_with([
        KeyRecord::new("forecaster", "acme").with_scopes(["weather:read", "forecast:read"]),
        KeyRecord::new("reader", "acme").with_scopes(["weather:read"]),
        KeyRecord::new("alerts", "acme").with_scopes(["alerts:read"]),
        KeyRecord::new("admin", "acme").with_scopes(["weather:admin"]),
        KeyRecord::new("nobody", "acme"),
    ]);
    let keys = keys.iter().map(|k| k.expose_secret().to_owned()).collect();
    (store, keys)
}

const FORECAST_DENIED: &str =
    r#"Bearer realm="R", error="insufficient_scope", scope="weather:read forecast:read""#;
const ALERTS_DENIED: &str =
    r#"Bearer realm="R", error="insufficient_scope", scope="alerts:read weather:admin""#;
const ALERTS_DETAIL: &str =
    r#"The credential needs any of the scopes "alerts:read" or "weather:admin"."#;

#[tokio::test]
async fn all_of_lets_through_a_caller_with_every_scope() {
    let (store, keys) = expression_store();
    let hits = Hits::default();
    let app = expressions(&hits).layer(AuthLayer::new(store).realm(REALM));
    let reply = send(app, with_key_at("/v1/forecast.json", &keys[0])).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "rain later"));
    assert_eq!(hits.get(), 1);
}

#[tokio::test]
async fn all_of_refuses_a_caller_with_some_and_names_the_missing_ones() {
    let (store, keys) = expression_store();
    let hits = Hits::default();
    let app = expressions(&hits).layer(AuthLayer::new(store).realm(REALM));

    let reply = send(app.clone(), with_key_at("/v1/forecast.json", &keys[1])).await;
    assert_problem(
        &reply,
        403,
        Some(FORECAST_DENIED),
        r#"The credential lacks the scope "forecast:read"."#,
    );
    reply.assert_no_leak(&keys[1]);

    let reply = send(app.clone(), with_key_at("/v1/forecast.json", &keys[4])).await;
    assert_problem(
        &reply,
        403,
        Some(FORECAST_DENIED),
        r#"The credential lacks the scopes "weather:read" and "forecast:read"."#,
    );

    // Neither of the other keys has both.
    for key in &keys[2..4] {
        let reply = send(app.clone(), with_key_at("/v1/forecast.json", key)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(hits.get(), 0);

    let reply = send(
        app,
        grpc_at("/v1/forecast.json", &[("x-api-key", &keys[1])]),
    )
    .await;
    assert_grpc(
        &reply,
        "7",
        r#"The credential lacks the scope "forecast:read"."#,
    );
}

#[tokio::test]
async fn any_of_lets_through_a_caller_with_either_scope() {
    let (store, keys) = expression_store();
    let hits = Hits::default();
    let app = expressions(&hits).layer(AuthLayer::new(store).realm(REALM));
    for key in [&keys[2], &keys[3]] {
        let reply = send(app.clone(), with_key_at("/v1/alerts.json", key)).await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "[]"));
    }
    assert_eq!(hits.get(), 2);
}

#[tokio::test]
async fn any_of_refuses_a_caller_with_none_and_says_any_would_do() {
    let (store, keys) = expression_store();
    let hits = Hits::default();
    let app = expressions(&hits).layer(AuthLayer::new(store).realm(REALM));
    for key in [&keys[0], &keys[1], &keys[4]] {
        let reply = send(app.clone(), with_key_at("/v1/alerts.json", key)).await;
        assert_problem(&reply, 403, Some(ALERTS_DENIED), ALERTS_DETAIL);
        reply.assert_no_leak(key);
    }
    assert_eq!(hits.get(), 0);
    let reply = send(app, grpc_at("/v1/alerts.json", &[("x-api-key", &keys[4])])).await;
    assert_grpc(&reply, "7", ALERTS_DETAIL);
}

#[tokio::test]
async fn expressions_without_a_principal_are_401_or_500() {
    let (store, keys) = expression_store();
    let hits = Hits::default();
    let optional = expressions(&hits).layer(AuthLayer::new(store).realm(REALM).optional());
    for uri in ["/v1/forecast.json", "/v1/alerts.json"] {
        let reply = send(optional.clone(), get_req(uri)).await;
        assert_problem(
            &reply,
            401,
            Some(CHALLENGE),
            "The request carries no credential.",
        );
        let reply = send(expressions(&hits), with_key_at(uri, &keys[0])).await;
        assert_problem(&reply, 500, None, NO_PRINCIPAL);
    }
    assert_eq!(hits.get(), 0);
}

#[test]
#[should_panic(expected = "RequireScopeLayer::all needs at least one scope")]
fn all_of_nothing_is_a_configuration_error() {
    let _ = RequireScopeLayer::all(Vec::<String>::new());
}

#[test]
#[should_panic(expected = "RequireScopeLayer::any needs at least one scope")]
fn any_of_nothing_is_a_configuration_error() {
    let _ = RequireScopeLayer::any::<&str>([]);
}

#[test]
#[should_panic(expected = "invalid scope \"forecast read\"")]
fn an_invalid_scope_in_a_list_is_a_configuration_error() {
    let _ = RequireScopeLayer::all(["weather:read", "forecast read"]);
}

// ---------------------------------------------------------------------------------------------
// Checks of the Principal

const CLAIMS_DENIED: &str = r#"Bearer realm="R", error="insufficient_scope""#;
const ONLY_ACME: &str = "Only acme's keys may post alerts.";

/// `POST /v1/alerts` for keys owned by `acme` only; `GET /v1/current.json` for API keys only,
/// with the default detail.
fn checked(hits: &Hits) -> Router {
    Router::new()
        .route("/v1/alerts", post(hits.counted("saved")))
        .route_layer(RequirePrincipalLayer::new(|p| p.owner() == Some("acme")).detail(ONLY_ACME))
        .merge(
            Router::new()
                .route("/v1/current.json", get(hits.counted("sunny")))
                .route_layer(RequirePrincipalLayer::new(|p| {
                    p.kind() == keygate::PrincipalKind::ApiKey && p.id() != "globex-key"
                })),
        )
}

/// Keys of `acme-key` (owner acme) and `globex-key` (owner globex).
fn owners() -> (MemoryStore, String, String) {
    let (store, keys) = store_with([
        KeyRecord::new("acme-key", "acme"),
        KeyRecord::new("globex-key", "globex"),
    ]);
    let s = |i: usize| keys[i].expose_secret().to_owned();
    (store, s(0), s(1))
}

#[tokio::test]
async fn a_principal_check_lets_through_callers_that_pass_it() {
    let (store, acme, _) = owners();
    let hits = Hits::default();
    let app = checked(&hits).layer(AuthLayer::new(store).realm(REALM));
    let reply = send(app.clone(), write(&acme)).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "saved"));
    let reply = send(app, read(&acme)).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "sunny"));
    assert_eq!(hits.get(), 2);
}

#[tokio::test]
async fn a_principal_check_refuses_others_with_its_detail() {
    let (store, _, globex) = owners();
    let hits = Hits::default();
    let app = checked(&hits).layer(AuthLayer::new(store).realm(REALM));
    let reply = send(app.clone(), write(&globex)).await;
    assert_problem(&reply, 403, Some(CLAIMS_DENIED), ONLY_ACME);
    reply.assert_no_leak(&globex);
    let reply = send(app.clone(), read(&globex)).await;
    assert_problem(
        &reply,
        403,
        Some(CLAIMS_DENIED),
        "The credential does not allow this request.",
    );
    let reply = send(
        app.clone(),
        grpc_at("/v1/alerts", &[("x-api-key", &globex)]),
    )
    .await;
    assert_grpc(&reply, "7", ONLY_ACME);
    assert_eq!(hits.get(), 0);

    // Authentication comes first: a bad key is 401, not 403.
    let reply = send(app, write("kg_unknown")).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
}

#[tokio::test]
async fn a_principal_check_renders_like_the_auth_layer_unless_given_its_own() {
    let (store, _, globex) = owners();
    let deny = || RequirePrincipalLayer::new(|_| false);
    let app = Router::new()
        .route("/v1/alerts", post(|| async { "saved" }))
        .route_layer(deny())
        .layer(AuthLayer::new(store.clone()).realm("weather"));
    let reply = send(app, write(&globex)).await;
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="weather", error="insufficient_scope""#)
    );
    let app = Router::new()
        .route("/v1/alerts", post(|| async { "saved" }))
        .route_layer(deny().realm("alerts"))
        .layer(AuthLayer::new(store).realm("weather"));
    let reply = send(app, write(&globex)).await;
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="alerts", error="insufficient_scope""#)
    );
}

#[tokio::test]
async fn a_principal_check_without_a_principal_is_401_or_500() {
    let (store, acme, _) = owners();
    let hits = Hits::default();
    let app = checked(&hits).layer(AuthLayer::new(store).realm(REALM).optional());
    let reply = send(app, post_with("/v1/alerts", &[])).await;
    assert_problem(
        &reply,
        401,
        Some(CHALLENGE),
        "The request carries no credential.",
    );
    for req in [write(&acme), post_with("/v1/alerts", &[])] {
        let reply = send(checked(&hits), req).await;
        assert_problem(&reply, 500, None, NO_PRINCIPAL);
        reply.assert_no_leak(&acme);
    }
    assert_eq!(hits.get(), 0);
}

// ---------------------------------------------------------------------------------------------
// Checks of a token's typed claims

#[cfg(feature = "jwt")]
mod claims {
    use jwt_support::{HMAC_SECRET, KID_HS, T0, clock, hs_token};
    use keygate::jwt::{JwtKey, JwtVerifier};
    use keygate::scope::RequireClaimsLayer;
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Staff {
        department: String,
    }

    const ONLY_FORECASTERS: &str = "Only the forecasting department may post alerts.";

    fn verifier() -> JwtVerifier {
        JwtVerifier::with_keys([JwtKey::hmac(HMAC_SECRET).kid(KID_HS)]).clock(clock())
    }

    fn token(department: &str) -> String {
        hs_token(&json!({"sub": "ada", "department": department, "iat": T0, "exp": T0 + 600}))
    }

    fn bearer(token: &str) -> Request<Body> {
        post_with(
            "/v1/alerts",
            &[("authorization", &format!("Bearer {token}"))],
        )
    }

    /// `POST /v1/alerts` for tokens of the forecasting department, behind an `AuthLayer` that
    /// takes the keys of `store` and tokens of `verifier`.
    fn app(store: MemoryStore, verifier: JwtVerifier, hits: &Hits) -> Router {
        Router::new()
            .route("/v1/alerts", post(hits.counted("saved")))
            .route_layer(
                RequireClaimsLayer::new(|c: &Staff| c.department == "forecasting")
                    .detail(ONLY_FORECASTERS),
            )
            .layer(AuthLayer::new(store).jwt(verifier).realm(REALM))
    }

    #[tokio::test]
    async fn a_token_whose_claims_pass_is_let_through() {
        let (store, _, _) = owners();
        let hits = Hits::default();
        let app = app(store, verifier().claims::<Staff>(), &hits);
        let reply = send(app, bearer(&token("forecasting"))).await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "saved"));
        assert_eq!(hits.get(), 1);
    }

    #[tokio::test]
    async fn a_token_whose_claims_fail_is_403_with_the_detail() {
        let (store, _, _) = owners();
        let hits = Hits::default();
        let app = app(store, verifier().claims::<Staff>(), &hits);
        let token = token("sales");
        let reply = send(app.clone(), bearer(&token)).await;
        assert_problem(&reply, 403, Some(CLAIMS_DENIED), ONLY_FORECASTERS);
        reply.assert_no_leak(&token);
        let reply = send(
            app,
            grpc_at(
                "/v1/alerts",
                &[("authorization", &format!("Bearer {token}"))],
            ),
        )
        .await;
        assert_grpc(&reply, "7", ONLY_FORECASTERS);
        assert_eq!(hits.get(), 0);
    }

    #[tokio::test]
    async fn a_caller_without_claims_is_403_not_a_panic() {
        // An API key has no claims.
        let (store, acme, _) = owners();
        let hits = Hits::default();
        let typed = app(store.clone(), verifier().claims::<Staff>(), &hits);
        let reply = send(typed, write(&acme)).await;
        assert_problem(&reply, 403, Some(CLAIMS_DENIED), ONLY_FORECASTERS);
        reply.assert_no_leak(&acme);

        // Nor does a token whose verifier decodes none.
        let untyped = app(store, verifier(), &hits);
        let reply = send(untyped.clone(), bearer(&token("forecasting"))).await;
        assert_problem(&reply, 403, Some(CLAIMS_DENIED), ONLY_FORECASTERS);
        assert_eq!(hits.get(), 0);

        // A bad token is still 401.
        let reply = send(untyped, bearer("e30.e30.e30")).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_claims_check_without_a_principal_is_401_or_500() {
        let (store, _, _) = owners();
        let hits = Hits::default();
        let check = || RequireClaimsLayer::new(|_: &Staff| true);
        let optional = Router::new()
            .route("/v1/alerts", post(hits.counted("saved")))
            .route_layer(check())
            .layer(
                AuthLayer::new(store)
                    .jwt(verifier().claims::<Staff>())
                    .realm(REALM)
                    .optional(),
            );
        let reply = send(optional, post_with("/v1/alerts", &[])).await;
        assert_problem(
            &reply,
            401,
            Some(CHALLENGE),
            "The request carries no credential.",
        );
        let unchecked = Router::new()
            .route("/v1/alerts", post(hits.counted("saved")))
            .route_layer(check());
        let reply = send(unchecked, bearer(&token("forecasting"))).await;
        assert_problem(&reply, 500, None, NO_PRINCIPAL);
        assert_eq!(hits.get(), 0);
    }
}
