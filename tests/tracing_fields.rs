//! `AuthLayer` records who called, and how the request was judged, on the request's span when
//! the span declares the fields (here tower-http's `TraceLayer`, as a service would set it up):
//! `enduser.id`, `keygate.auth.kind` and `keygate.auth.outcome`, never the key.
//!
//! Its own test binary, with one test: tracing caches per call site whether anyone listens, for
//! the whole process, so a subscriber set for one thread while other tests run may miss events.

mod common;

use axum::routing::get;
use common::*;
use http::StatusCode;
use keygate::Quota;
use keygate::auth::AuthLayer;
use keygate::ratelimit::RateLimitLayer;
use tower_http::trace::TraceLayer;

#[tokio::test]
async fn the_request_span_carries_the_caller_and_the_outcome() {
    let (logs, _guard) = LogCapture::install(tracing::Level::INFO);
    let (store, key) = store_with_key();
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &http::Request<_>| {
            tracing::info_span!(
                "request",
                path = req.uri().path(),
                enduser.id = tracing::field::Empty,
                keygate.auth.kind = tracing::field::Empty,
                keygate.auth.outcome = tracing::field::Empty,
            )
        })
        .on_response(
            |res: &http::Response<_>, _: std::time::Duration, _: &tracing::Span| {
                tracing::info!(status = res.status().as_u16(), "answered");
            },
        );
    let app = axum::Router::new()
        .route(
            "/me",
            get(|| async {
                tracing::info!("in the handler");
                "ok"
            }),
        )
        .layer(AuthLayer::new(store).realm(REALM))
        .layer(trace);

    let reply = send(app.clone(), with_key_at("/me", key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = logs.text();
    let handler = text
        .lines()
        .find(|l| l.contains("in the handler"))
        .unwrap_or_else(|| panic!("no handler line in {text}"));
    for field in [
        r#"enduser.id="key_1""#,
        r#"keygate.auth.kind="api_key""#,
        r#"keygate.auth.outcome="authenticated""#,
    ] {
        assert!(handler.contains(field), "{field} not in {handler}");
    }

    let reply = send(app.clone(), with_key_at("/me", "kg_not_a_known_key_01234")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = send(app, get_with("/me", &[])).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let text = logs.text();
    let answered: Vec<&str> = text.lines().filter(|l| l.contains("answered")).collect();
    assert_eq!(answered.len(), 3, "{text}");
    assert!(
        answered[1].contains(r#"keygate.auth.outcome="unknown_key""#),
        "{}",
        answered[1]
    );
    assert!(!answered[1].contains("enduser.id"), "{}", answered[1]);
    assert!(
        answered[2].contains(r#"keygate.auth.outcome="missing_credential""#),
        "{}",
        answered[2]
    );
    assert!(!text.contains(key.expose_secret()) && !text.contains("kg_not_a_known_key"));

    // A rate limit behind the authentication records its decision too.
    let (store, key) = store_with_key();
    let (limiter, _clock) = limiter();
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &http::Request<_>| {
            tracing::info_span!(
                "limited",
                path = req.uri().path(),
                enduser.id = tracing::field::Empty,
                keygate.ratelimit.decision = tracing::field::Empty,
            )
        })
        .on_response(
            |res: &http::Response<_>, _: std::time::Duration, _: &tracing::Span| {
                tracing::info!(status = res.status().as_u16(), "limited answer");
            },
        );
    let app = axum::Router::new()
        .route("/me", get(|| async { "ok" }))
        .layer(RateLimitLayer::new(limiter, Quota::per_minute(1)))
        .layer(AuthLayer::new(store).realm(REALM))
        .layer(trace);
    let first = send(app.clone(), with_key_at("/me", key.expose_secret())).await;
    let second = send(app, with_key_at("/me", key.expose_secret())).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS)
    );
    let text = logs.text();
    let answered: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("limited answer"))
        .collect();
    assert_eq!(answered.len(), 2, "{text}");
    for (line, decision) in answered.iter().zip(["allowed", "limited"]) {
        let field = format!(r#"keygate.ratelimit.decision="{decision}""#);
        assert!(line.contains(&field), "{field} not in {line}");
        assert!(line.contains(r#"enduser.id="key_1""#), "{line}");
    }
}
