//! The realm and responder set once on `AuthLayer` render every error behind it: the 401 it
//! gives itself, the 403 of `RequireScopeLayer`, the 429 of `RateLimitLayer` and the 500 of a
//! misconfigured `Claims<T>` extractor, through one axum `Router`.

mod common;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use common::*;
use http::{HeaderValue, Response};
use keygate::error::{AuthError, ErrorContext, ErrorResponder};
use keygate::jwt::{Claims, JwtKey, JwtVerifier, TokenIssuer};
use keygate::key::KeyRecord;
use keygate::ratelimit::{MemoryLimiter, RateLimitLayer};
use keygate::scope::RequireScopeLayer;
use keygate::store::MemoryStore;
use keygate::{Quota, auth::AuthLayer};
use tower::ServiceBuilder;

const SECRET: &[u8] = b"a secret of at least 32 bytes, for tests";

/// Answers in plain text and says which realm it was given, so a response shows both the
/// responder and the realm that rendered it.
struct Plain;

impl ErrorResponder for Plain {
    fn respond(&self, error: &AuthError, ctx: &ErrorContext<'_>) -> Response<Bytes> {
        let mut res = error.to_http_response(ctx.realm);
        *res.body_mut() = Bytes::from(format!("plain {} in {}", error.kind(), ctx.realm));
        res.headers_mut()
            .insert("content-type", HeaderValue::from_static("text/plain"));
        res
    }
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Profile {
    sub: String,
}

struct Setup {
    app: Router,
    reader: String,
    limited: String,
    token: String,
}

/// One router: `/scoped` needs `weather:write`, `/profile` reads `Claims<Profile>` (which the
/// verifier is not configured to decode: a server mistake, 500), `/open` needs only a caller.
/// Every caller gets 1 request an hour, except those whose key says otherwise.
fn setup(auth: impl FnOnce(AuthLayer) -> AuthLayer) -> Setup {
    let store = MemoryStore::new();
    let s = |k: keygate::key::ApiKey| k.expose_secret().to_owned();
    let reader = s(store
        .issue(KeyRecord::new("reader", "acme").with_quota(Quota::per_hour(100)))
        .unwrap());
    let limited = s(store.issue(KeyRecord::new("limited", "acme")).unwrap());
    let token = TokenIssuer::hmac(SECRET)
        .issue("user-1", ["weather:read"])
        .unwrap()
        .access_token;
    let verifier = JwtVerifier::with_keys([JwtKey::hmac(SECRET)]);
    let app = Router::new()
        .route(
            "/scoped",
            get(|| async { "written" }).route_layer(RequireScopeLayer::new("weather:write")),
        )
        .route(
            "/profile",
            get(|c: Claims<Profile>| async move { c.sub.clone() }),
        )
        .route("/open", get(|| async { "open" }))
        .layer(
            ServiceBuilder::new()
                .layer(auth(AuthLayer::new(store).jwt(verifier)))
                .layer(RateLimitLayer::new(
                    MemoryLimiter::new(),
                    Quota::per_hour(1),
                )),
        );
    Setup {
        app,
        reader,
        limited,
        token,
    }
}

async fn all_four(setup: &Setup) -> [Reply; 4] {
    let app = &setup.app;
    let unauthenticated = send(app.clone(), get_req("/open")).await;
    let forbidden = send(
        app.clone(),
        get_with("/scoped", &[("x-api-key", &setup.reader)]),
    )
    .await;
    let limited = get_with("/open", &[("x-api-key", &setup.limited)]);
    assert_eq!(send(app.clone(), limited).await.status, 200);
    let limited = send(
        app.clone(),
        get_with("/open", &[("x-api-key", &setup.limited)]),
    )
    .await;
    let bearer = format!("Bearer {}", setup.token);
    let misconfigured = send(
        app.clone(),
        get_with("/profile", &[("authorization", &bearer)]),
    )
    .await;
    [unauthenticated, forbidden, limited, misconfigured]
}

#[tokio::test]
async fn the_auth_layers_realm_and_responder_render_every_error_behind_it() {
    let setup = setup(|auth| auth.realm("weather").responder(Plain));
    let [unauthenticated, forbidden, limited, misconfigured] = all_four(&setup).await;

    assert_eq!(unauthenticated.status, 401);
    assert_eq!(
        unauthenticated.header("www-authenticate"),
        Some(r#"Bearer realm="weather""#)
    );
    assert_eq!(
        unauthenticated.text(),
        "plain missing_credential in weather"
    );

    assert_eq!(forbidden.status, 403);
    assert_eq!(
        forbidden.header("www-authenticate"),
        Some(r#"Bearer realm="weather", error="insufficient_scope", scope="weather:write""#)
    );
    assert_eq!(forbidden.text(), "plain insufficient_scope in weather");

    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(limited.text(), "plain rate_limited in weather");

    assert_eq!(misconfigured.status, 500);
    assert_eq!(misconfigured.text(), "plain claims_type in weather");

    for reply in [&unauthenticated, &forbidden, &limited, &misconfigured] {
        assert_eq!(reply.header("content-type"), Some("text/plain"));
    }
}

#[tokio::test]
async fn without_settings_every_layer_renders_the_default() {
    let setup = setup(|auth| auth);
    let replies = all_four(&setup).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [401, 403, 429, 500]);
    assert_eq!(
        replies[0].header("www-authenticate"),
        Some(r#"Bearer realm="api""#)
    );
    assert_eq!(
        replies[1].header("www-authenticate"),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="weather:write""#)
    );
    for reply in &replies {
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }
}

#[tokio::test]
async fn a_layer_given_its_own_realm_and_responder_keeps_them() {
    struct Other;
    impl ErrorResponder for Other {
        fn respond(&self, error: &AuthError, ctx: &ErrorContext<'_>) -> Response<Bytes> {
            let mut res = error.to_http_response(ctx.realm);
            *res.body_mut() = Bytes::from(format!("other {} in {}", error.kind(), ctx.realm));
            res
        }
    }
    let store = MemoryStore::new();
    let key = store.issue(KeyRecord::new("k", "acme")).unwrap();
    let app: Router = Router::new()
        .route("/open", get(|| async { "open" }))
        .layer(
            ServiceBuilder::new()
                .layer(AuthLayer::new(store).realm("weather").responder(Plain))
                .layer(
                    RateLimitLayer::new(MemoryLimiter::new(), Quota::per_hour(1))
                        .realm("limits")
                        .responder(Other),
                ),
        );
    let req = || get_with("/open", &[("x-api-key", key.expose_secret())]);
    assert_eq!(send(app.clone(), req()).await.status, 200);
    let limited = send(app.clone(), req()).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.text(), "other rate_limited in limits");
    // The AuthLayer's own errors still use its settings.
    let unauthenticated = send(app, get_req("/open")).await;
    assert_eq!(
        unauthenticated.text(),
        "plain missing_credential in weather"
    );
}
