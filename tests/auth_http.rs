//! `AuthLayer` through a real axum `Router`: the error contract, every credential source, the
//! ambiguity rules, the key format, the optional mode, the extractors, how the layer composes,
//! the async store path, gRPC rendering, and what never shows a secret.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::*;
use http::{Request, StatusCode};
use keygate::key::{ApiKey, KeyFormat, KeyRecord, KeyStatus};
use keygate::store::{KeyStore, MemoryStore};
use keygate::{
    Principal, PrincipalKind, auth::AuthLayer, credential::CredentialError,
    credential::CredentialSource, credential::RequestHead,
};
use tower::ServiceBuilder;

const NO_CREDENTIAL: &str = "The request carries no credential.";
const AMBIGUOUS: &str = "The request carries more than one credential; send exactly one.";
const REPEATED: &str = "The credential's header, query parameter or cookie appears more than once.";
const EMPTY: &str = "The credential is empty.";
const TOO_LONG: &str = "The credential is too long.";
const BAD_CHARS: &str = "The credential contains characters that are not allowed.";
const MALFORMED_AUTHORIZATION: &str =
    "The Authorization header is malformed; use \"Bearer <credential>\".";
const UNAVAILABLE: &str = "Authentication is unavailable; retry later.";

fn layer(store: impl KeyStore) -> AuthLayer {
    AuthLayer::new(store).realm(REALM)
}

fn app(store: impl KeyStore) -> Router {
    routes().layer(layer(store))
}

fn optional_app(store: impl KeyStore) -> Router {
    routes().layer(layer(store).optional())
}

/// Asserts a 200 from `/me` for the principal `key_1`.
#[track_caller]
fn assert_key_1(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK, "body: {:?}", reply.body);
    let json = reply.json();
    assert_eq!(json["id"], "key_1");
    assert_eq!(json["owner"], "acme");
    assert_eq!(json["scopes"], serde_json::json!(["weather:read"]));
}

/// Asserts a 400 `invalid_request` with this detail, with no trace of `secret`.
async fn assert_bad_request(app: &Router, req: Request<Body>, detail: &str, secret: &str) {
    let what = format!("{} {:?}", req.uri(), req.headers());
    let reply = send(app.clone(), req).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{what}");
    assert_problem(&reply, 400, Some(INVALID_REQUEST), detail);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    if !secret.is_empty() {
        reply.assert_no_leak(secret);
    }
}

// ---------------------------------------------------------------------------------------------
// The error contract
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn no_credential_is_401_with_a_challenge_without_error() {
    let (store, _key) = store_with_key();
    let app = app(store);
    for uri in ["/me", "/open", "/me?q=London", "/me?keys=abc&api_key=abc"] {
        let reply = send(app.clone(), get_req(uri)).await;
        assert_problem(&reply, 401, Some(CHALLENGE), NO_CREDENTIAL);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
    }
}

#[tokio::test]
async fn the_realm_is_the_configured_one() {
    let (store, _key) = store_with_key();
    let app = routes().layer(AuthLayer::new(store.clone()).realm("weather api"));
    let reply = send(app, get_req("/me")).await;
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="weather api""#)
    );
    // The default realm.
    let reply = send(routes().layer(AuthLayer::new(store)), with_key("nope")).await;
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="api", error="invalid_token""#)
    );
}

#[tokio::test]
async fn unknown_revoked_disabled_and_expired_keys_read_alike() {
    let (store, good) = store_with_key();
    let revoked = store.issue(KeyRecord::new("revoked", "acme")).unwrap();
    store.revoke("revoked").unwrap();
    let disabled = store
        .issue(KeyRecord::new("disabled", "acme").with_status(KeyStatus::Disabled))
        .unwrap();
    let expired = store
        .issue(
            KeyRecord::new("expired", "acme")
                .with_expiry(std::time::SystemTime::now() - std::time::Duration::from_secs(1)),
        )
        .unwrap();
    // An unknown key in the store's own format (valid checksum) and a made-up legacy one.
    let unknown = store.format().generate();
    let app = app(store);

    assert_key_1(&send(app.clone(), with_key(good.expose_secret())).await);

    let baseline = send(app.clone(), with_key(unknown.expose_secret())).await;
    assert_problem(&baseline, 401, Some(INVALID_TOKEN), NOT_VALID);
    assert_eq!(baseline.header("cache-control"), Some("no-store"));
    baseline.assert_no_leak(unknown.expose_secret());

    for (what, key) in [
        ("revoked", revoked.expose_secret()),
        ("disabled", disabled.expose_secret()),
        ("expired", expired.expose_secret()),
        ("legacy-looking unknown", "legacy-0123456789abcdef"),
    ] {
        let reply = send(app.clone(), with_key(key)).await;
        assert_eq!(reply.head(), baseline.head(), "{what}: headers differ");
        assert_eq!(reply.body, baseline.body, "{what}: body differs");
        reply.assert_no_leak(key);
    }
}

#[tokio::test]
async fn every_source_renders_the_same_invalid_token() {
    let (store, _key) = store_with_key();
    let app = app(store);
    let secret = "kg_doesnotexist0000000000000000000000";
    let reqs = [
        with_key(secret),
        get_req(&format!("/me?key={secret}")),
        get_with("/me", &[("authorization", &format!("Bearer {secret}"))]),
    ];
    let mut replies = Vec::new();
    for req in reqs {
        let reply = send(app.clone(), req).await;
        assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
        reply.assert_no_leak(secret);
        replies.push(reply);
    }
    assert_eq!(replies[0].body, replies[1].body);
    assert_eq!(replies[0].head(), replies[2].head());
}

#[tokio::test]
async fn a_failing_store_is_503_never_401() {
    for (name, app, anonymous) in [
        ("ready error", app(DownStore), StatusCode::UNAUTHORIZED),
        (
            "pending error",
            app(SlowDownStore),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "ready error, optional",
            optional_app(DownStore),
            StatusCode::OK,
        ),
        (
            "pending error, optional",
            optional_app(SlowDownStore),
            StatusCode::OK,
        ),
    ] {
        let key = "kg_some_key_the_store_cannot_check";
        for req in [
            with_key(key),
            get_req(&format!("/maybe?key={key}")),
            get_with("/open", &[("authorization", &format!("Bearer {key}"))]),
        ] {
            let reply = send(app.clone(), req).await;
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
            assert_problem(&reply, 503, None, UNAVAILABLE);
            assert_eq!(reply.header("cache-control"), None);
            reply.assert_no_leak(key);
        }
        // A request that never reaches the store is unaffected.
        let reply = send(app, get_req("/maybe")).await;
        assert_eq!(reply.status, anonymous, "{name}");
    }
}

#[tokio::test]
async fn a_failing_store_does_not_reach_the_handler() {
    let hits = Hits::default();
    for store in [
        Arc::new(DownStore) as Arc<dyn KeyStore>,
        Arc::new(SlowDownStore),
    ] {
        let app = hits.router().layer(layer(store));
        let reply = send(app, with_key("kg_whatever")).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(hits.get(), 0);
}

// ---------------------------------------------------------------------------------------------
// Credential sources
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bearer_scheme_is_matched_without_regard_to_case() {
    let (store, key) = store_with_key();
    let app = app(store);
    let key = key.expose_secret();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {key}");
        assert_key_1(&send(app.clone(), get_with("/me", &[("authorization", &value)])).await);
    }
    // Extra spaces between scheme and token are tolerated.
    let value = format!("Bearer    {key}");
    assert_key_1(&send(app.clone(), get_with("/me", &[("authorization", &value)])).await);
}

#[tokio::test]
async fn x_api_key_header() {
    let (store, key) = store_with_key();
    assert_key_1(&send(app(store), with_key(key.expose_secret())).await);
}

#[tokio::test]
async fn key_query_parameter_among_others() {
    let (store, key) = store_with_key();
    let app = app(store);
    let key = key.expose_secret();
    for uri in [
        format!("/me?key={key}"),
        format!("/me?key={key}&q=London"),
        format!("/me?q=London&key={key}"),
        format!("/me?q=a&q=b&key={key}&lang=fr"),
        // The parameter's name may be percent-encoded too.
        format!("/me?k%65y={key}"),
    ] {
        assert_key_1(&send(app.clone(), get_req(&uri)).await);
    }
}

#[tokio::test]
async fn query_values_are_percent_decoded() {
    let store = MemoryStore::new();
    let legacy = ApiKey::new("legacy/key+2019=ok");
    store
        .insert(
            &legacy,
            KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]),
        )
        .unwrap();
    let app = app(store);
    for uri in [
        "/me?key=legacy%2Fkey%2B2019%3Dok",
        "/me?key=legacy%2fkey%2b2019%3dok",
        "/me?q=London&key=legacy/key%2B2019=ok",
    ] {
        assert_key_1(&send(app.clone(), get_req(uri)).await);
    }
    // `+` is a space in a query (as HTML forms encode it): this is another key.
    let reply = send(app.clone(), get_req("/me?key=legacy/key+2019=ok")).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    // A percent-encoded key in a header is taken literally.
    let reply = send(app, with_key("legacy%2Fkey%2B2019%3Dok")).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
}

#[tokio::test]
async fn cookie_source_when_configured() {
    let (store, key) = store_with_key();
    let key = key.expose_secret();
    let cookie = format!("theme=dark; session_key={key}; lang=en");

    // Not a default source: the cookie is not looked at.
    let reply = send(app(store.clone()), get_with("/me", &[("cookie", &cookie)])).await;
    assert_problem(&reply, 401, Some(CHALLENGE), NO_CREDENTIAL);

    let app = routes().layer(layer(store).source(CredentialSource::cookie("session_key")));
    assert_key_1(&send(app.clone(), get_with("/me", &[("cookie", &cookie)])).await);
    let quoted = format!("session_key=\"{key}\"");
    assert_key_1(&send(app.clone(), get_with("/me", &[("cookie", &quoted)])).await);
    // HTTP/2 may split cookies over several headers.
    let split = [
        ("cookie", "theme=dark"),
        ("cookie", &*format!("session_key={key}")),
    ];
    assert_key_1(&send(app.clone(), get_with("/me", &split)).await);
    // Other cookies alone are not a credential.
    let reply = send(app.clone(), get_with("/me", &[("cookie", "theme=dark")])).await;
    assert_problem(&reply, 401, Some(CHALLENGE), NO_CREDENTIAL);
    // Cookie plus header: two credentials.
    let req = get_with("/me", &[("cookie", &cookie), ("x-api-key", key)]);
    assert_bad_request(&app, req, AMBIGUOUS, key).await;
    // The cookie twice, in one header or two.
    let twice = format!("session_key={key}; session_key={key}");
    assert_bad_request(&app, get_with("/me", &[("cookie", &twice)]), REPEATED, key).await;
    let single = format!("session_key={key}");
    let req = get_with("/me", &[("cookie", &single), ("cookie", &single)]);
    assert_bad_request(&app, req, REPEATED, key).await;
    // An empty cookie value.
    let req = get_with("/me", &[("cookie", "session_key=")]);
    assert_bad_request(&app, req, EMPTY, "").await;
}

#[tokio::test]
async fn custom_extractor_closure() {
    let (store, key) = store_with_key();
    let app = routes().layer(layer(store).source(CredentialSource::custom(
        |head: &RequestHead<'_>| match head.headers.get("x-legacy-token") {
            None => Ok(None),
            Some(v) => match v.to_str() {
                Ok(s) => Ok(Some(s.trim_start_matches("token:").to_owned())),
                Err(_) => Err(CredentialError::InvalidCharacters),
            },
        },
    )));
    let key = key.expose_secret();
    let token = format!("token:{key}");
    assert_key_1(&send(app.clone(), get_with("/me", &[("x-legacy-token", &token)])).await);
    // The custom source is checked like the others.
    let reply = send(
        app.clone(),
        get_with("/me", &[("x-legacy-token", "token:x")]),
    )
    .await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    let req = get_with("/me", &[("x-legacy-token", "token:")]);
    assert_bad_request(&app, req, EMPTY, "").await;
    let req = get_raw("/me", "x-legacy-token", b"token:\xff");
    assert_bad_request(&app, req, BAD_CHARS, "").await;
    let req = get_with("/me", &[("x-legacy-token", &token), ("x-api-key", key)]);
    assert_bad_request(&app, req, AMBIGUOUS, key).await;
    // The default sources still work next to it.
    assert_key_1(&send(app, with_key(key)).await);
}

#[tokio::test]
async fn sources_replace_the_defaults() {
    let (store, key) = store_with_key();
    let app = routes().layer(layer(store).sources([CredentialSource::header("x-weather-key")]));
    let key = key.expose_secret();
    assert_key_1(&send(app.clone(), get_with("/me", &[("x-weather-key", key)])).await);
    let bearer = format!("Bearer {key}");
    for req in [
        with_key(key),
        get_req(&format!("/me?key={key}")),
        get_with("/me", &[("authorization", &bearer)]),
    ] {
        let reply = send(app.clone(), req).await;
        assert_problem(&reply, 401, Some(CHALLENGE), NO_CREDENTIAL);
    }
}

#[tokio::test]
async fn basic_authorization_is_not_a_credential() {
    let (store, key) = store_with_key();
    let app = app(store);
    let basic = ("authorization", "Basic dXNlcjpwYXNz");
    let reply = send(app.clone(), get_with("/me", &[basic])).await;
    assert_problem(&reply, 401, Some(CHALLENGE), NO_CREDENTIAL);
    // Basic next to an API key is not a second credential.
    let req = get_with("/me", &[basic, ("x-api-key", key.expose_secret())]);
    assert_key_1(&send(app, req).await);
}

// ---------------------------------------------------------------------------------------------
// Ambiguity and bad values: 400, never a guess, never a panic
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_same_key_in_two_places_is_ambiguous() {
    let (store, key) = store_with_key();
    let app = app(store);
    let key = key.expose_secret();
    let bearer = format!("Bearer {key}");
    let query = format!("/me?key={key}");
    for req in [
        get_with(&query, &[("x-api-key", key)]),
        get_with(&query, &[("authorization", &bearer)]),
        get_with("/me", &[("authorization", &bearer), ("x-api-key", key)]),
        // Two different keys, one of them valid.
        get_with("/me?key=other", &[("x-api-key", key)]),
    ] {
        assert_bad_request(&app, req, AMBIGUOUS, key).await;
    }
}

#[tokio::test]
async fn a_repeated_query_parameter_is_rejected() {
    let (store, key) = store_with_key();
    let app = app(store);
    let key = key.expose_secret();
    for uri in [
        "/me?key=a&key=a".to_owned(),
        format!("/me?key={key}&key={key}"),
        format!("/me?key={key}&q=London&key=other"),
        format!("/me?key={key}&k%65y={key}"),
    ] {
        assert_bad_request(&app, get_req(&uri), REPEATED, key).await;
    }
}

#[tokio::test]
async fn a_repeated_header_is_rejected() {
    let (store, key) = store_with_key();
    let app = app(store);
    let key = key.expose_secret();
    let req = get_with("/me", &[("x-api-key", key), ("x-api-key", key)]);
    assert_bad_request(&app, req, REPEATED, key).await;
    let bearer = format!("Bearer {key}");
    let req = get_with(
        "/me",
        &[("authorization", &bearer), ("authorization", &bearer)],
    );
    assert_bad_request(&app, req, REPEATED, key).await;
}

#[tokio::test]
async fn a_malformed_authorization_header_is_rejected() {
    let (store, key) = store_with_key();
    let app = app(store);
    let key = key.expose_secret();
    for value in [
        "Bearer",
        "Bearer ",
        "bearer    ",
        &*format!("Bearer {key} {key}"),
    ] {
        let req = get_with("/me", &[("authorization", value)]);
        assert_bad_request(&app, req, MALFORMED_AUTHORIZATION, key).await;
    }
}

/// RFC 9110 §11.4: one or more spaces separate the scheme from the credential. A Bearer
/// header with any other separator holds a credential that is present but malformed: 400, not
/// the 401 of a request without one.
#[tokio::test]
async fn a_bearer_header_with_other_whitespace_is_malformed_not_missing() {
    let (store, key) = store_with_key();
    let counting = CountingStore::new(store);
    let app = app(counting.clone());
    let key = key.expose_secret();
    for value in [
        format!("Bearer\t{key}"),
        format!("bearer\t\t{key}"),
        format!("Bearer,{key}"),
    ] {
        let req = get_with("/me", &[("authorization", &value)]);
        assert_bad_request(&app, req, MALFORMED_AUTHORIZATION, key).await;
    }
    assert_eq!(counting.calls(), 0);
}

#[tokio::test]
async fn oversized_keys_are_rejected_before_the_store() {
    let (store, _key) = store_with_key();
    let counting = CountingStore::new(store);
    let app = app(counting.clone());
    let big = "a".repeat(513);
    let bearer = format!("Bearer {big}");
    for req in [
        with_key(&big),
        get_req(&format!("/me?key={big}")),
        get_with("/me", &[("authorization", &bearer)]),
        get_with("/me", &[("x-api-key", &"k".repeat(64 * 1024))]),
    ] {
        assert_bad_request(&app, req, TOO_LONG, &big).await;
    }
    assert_eq!(counting.calls(), 0);
    // 512 bytes is within the limit: it is looked up (and unknown).
    let reply = send(app, with_key(&"a".repeat(512))).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    assert_eq!(counting.calls(), 1);
    // The limit applies to the decoded value: 171 × "%41" is 513 bytes of text, 171 of key.
    let (store, _key) = store_with_key();
    let app = routes().layer(layer(store).max_key_len(170));
    let reply = send(
        app.clone(),
        get_req(&format!("/me?key={}", "%41".repeat(170))),
    )
    .await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    let req = get_req(&format!("/me?key={}", "%41".repeat(171)));
    assert_bad_request(&app, req, TOO_LONG, "").await;
}

#[tokio::test]
async fn a_smaller_key_limit_is_honoured() {
    let (store, key) = store_with_key();
    let key = key.expose_secret();
    let app = routes().layer(layer(store).max_key_len(key.len()));
    assert_key_1(&send(app.clone(), with_key(key)).await);
    assert_bad_request(&app, with_key(&format!("{key}x")), TOO_LONG, key).await;
}

#[tokio::test]
async fn control_characters_are_rejected() {
    let (store, key) = store_with_key();
    let counting = CountingStore::new(store);
    let app = app(counting.clone());
    let key = key.expose_secret();
    for uri in [
        format!("/me?key=%00{key}"),
        format!("/me?key={key}%00"),
        format!("/me?key={key}%0A"),
        format!("/me?key={key}%0d%0aSet-Cookie:%20x=y"),
        format!("/me?key={key}%1F"),
        format!("/me?key={key}%7F"),
        format!("/me?key={key}%09"),
    ] {
        assert_bad_request(&app, get_req(&uri), BAD_CHARS, key).await;
    }
    // A header can hold a tab; it is a control character too.
    let req = get_raw("/me", "x-api-key", format!("{key}\tx").as_bytes());
    assert_bad_request(&app, req, BAD_CHARS, key).await;
    let req = get_raw(
        "/me",
        "authorization",
        format!("Bearer {key}\tx").as_bytes(),
    );
    assert_bad_request(&app, req, BAD_CHARS, key).await;
    assert_eq!(counting.calls(), 0);
}

#[tokio::test]
async fn non_utf8_credentials_are_rejected() {
    let (store, _key) = store_with_key();
    let app = routes().layer(layer(store).source(CredentialSource::cookie("session_key")));
    for uri in [
        "/me?key=%FF%FE",
        "/me?key=abc%C3",
        "/me?key=%C3%28",
        "/me?key=%ED%A0%80",
    ] {
        assert_bad_request(&app, get_req(uri), BAD_CHARS, "").await;
    }
    for (name, value) in [
        ("x-api-key", &b"abc\xffdef"[..]),
        ("authorization", b"Bearer abc\xffdef"),
        ("cookie", b"session_key=abc\xffdef"),
        ("cookie", b"theme=dark; session_key=\xe9t\xe9"),
    ] {
        let req = get_raw("/me", name, value);
        assert_bad_request(&app, req, BAD_CHARS, "").await;
    }
}

#[tokio::test]
async fn empty_credentials_are_rejected() {
    let (store, _key) = store_with_key();
    let app = app(store);
    for req in [
        get_req("/me?key="),
        get_req("/me?key"),
        get_req("/me?q=London&key=&lang=en"),
        get_with("/me", &[("x-api-key", "")]),
        get_with("/me", &[("x-api-key", "   ")]),
    ] {
        assert_bad_request(&app, req, EMPTY, "").await;
    }
}

#[tokio::test]
async fn unrelated_query_parameters_are_left_alone() {
    let (store, key) = store_with_key();
    let app = app(store);
    let key = key.expose_secret();
    for uri in [
        // Values of other parameters are never decoded.
        format!("/me?q=%FF&key={key}"),
        format!("/me?q=%00&key={key}"),
        format!("/me?q=&key={key}&&&"),
        // Nor are their names, beyond comparing them with `key`: a Latin-1 form field
        // ("straße") must not turn an authenticated request into a 400.
        format!("/me?stra%DFe=1&key={key}"),
        format!("/me?a+b=1&key={key}"),
        format!("/me?keys={key}&key={key}&api_key={key}"),
    ] {
        assert_key_1(&send(app.clone(), get_req(&uri)).await);
    }
}

#[tokio::test]
async fn hostile_inputs_are_answered_without_panic() {
    let (store, key) = store_with_key();
    let key = key.expose_secret();
    let app = routes().layer(layer(store).source(CredentialSource::cookie("c")));
    let mut reqs = vec![];
    for uri in [
        "/me?key=%",
        "/me?key=%%",
        "/me?key=%zz",
        "/me?key=%F",
        "/me?%=%",
        "/me?=&=&=",
        "/me?&&&key",
        "/me?key==",
        "/me?key=%E2%82",
        "/me?%FF",
        "/me?%FF=%FF",
        "/me?key=%F0%9F%94%91",
    ] {
        reqs.push(get_req(uri));
    }
    let garbage: &[&[u8]] = &[
        b"",
        b" ",
        b"\t",
        b"Bearer\t",
        b"Bearer \t \t",
        b"Bearer\xff",
        b"\xff\xfe\xfd",
        b"B",
        b"Bearerx",
        b"Bearer \xc3\xa9",
        b"Bearer \"\"",
        b"Bearer ==",
        b"Bearer a.b.c",
        b"Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        b"Token abc",
        b"Negotiate",
    ];
    for value in garbage {
        reqs.push(get_raw("/me", "authorization", value));
        reqs.push(get_raw("/me", "x-api-key", value));
        reqs.push(get_raw("/me", "cookie", value));
        let mut cookie = b"c=".to_vec();
        cookie.extend_from_slice(value);
        reqs.push(get_raw("/me", "cookie", &cookie));
    }
    for value in [";;;", "=", "c", "c=;c", "=c", "c==", "c=\"", "c=\"\""] {
        reqs.push(get_with("/me", &[("cookie", value)]));
    }
    reqs.push(get_with("/me", &[("x-api-key", &"x".repeat(1 << 20))]));
    reqs.push(get_req(&format!("/me?{}", "key=a&".repeat(10_000))));
    reqs.push(get_req(&format!("/me?{}", "%25".repeat(10_000))));
    for req in reqs {
        let what = format!("{} {:?}", req.uri(), req.headers());
        let what = &what[..what.len().min(200)];
        let reply = send(app.clone(), req).await;
        assert!(
            [400, 401].contains(&reply.status.as_u16()),
            "{what}: {}",
            reply.status
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        reply.assert_no_leak(key);
        let www = reply.header("www-authenticate").unwrap();
        assert!(
            www == CHALLENGE || www == INVALID_REQUEST || www == INVALID_TOKEN,
            "{what}: {www}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Key format
// ---------------------------------------------------------------------------------------------

fn wk_live() -> KeyFormat {
    KeyFormat::new("wk_live_").unwrap()
}

/// Changes one character after the prefix, keeping the key base62.
fn typo(key: &str, at: usize) -> String {
    let mut bytes = key.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn a_bad_checksum_is_rejected_without_asking_the_store() {
    let format = wk_live();
    let store = MemoryStore::with_format(format.clone());
    let key = store
        .issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]))
        .unwrap();
    let counting = CountingStore::new(store);
    let app = routes().layer(layer(counting.clone()).key_format(format.clone()));
    let key = key.expose_secret();
    assert!(key.starts_with("wk_live_"));

    assert_key_1(&send(app.clone(), with_key(key)).await);
    assert_eq!(counting.calls(), 1);

    let unknown = send(app.clone(), with_key(format.generate().expose_secret())).await;
    assert_eq!(counting.calls(), 2);

    let mut bad = vec![
        typo(key, "wk_live_".len()),
        typo(key, key.len() - 1),
        typo(key, key.len() / 2),
        key[..key.len() - 1].to_owned(),
        format!("{key}A"),
        "wk_live_".to_owned(),
        "wk_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
    ];
    bad.push(bad[0].to_lowercase());
    for bad in &bad {
        let reply = send(app.clone(), with_key(bad)).await;
        assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
        // Indistinguishable from a well-formed unknown key.
        assert_eq!(reply.head(), unknown.head(), "{bad}");
        assert_eq!(reply.body, unknown.body, "{bad}");
        reply.assert_no_leak(bad);
    }
    assert_eq!(counting.calls(), 2, "the store was asked about a bad key");
}

#[tokio::test]
async fn without_a_key_format_the_store_is_asked() {
    let format = wk_live();
    let store = MemoryStore::with_format(format.clone());
    let key = store.issue(KeyRecord::new("key_1", "acme")).unwrap();
    let counting = CountingStore::new(store);
    let app = app(counting.clone());
    let reply = send(app, with_key(&typo(key.expose_secret(), 10))).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    assert_eq!(counting.calls(), 1);
}

#[tokio::test]
async fn legacy_keys_without_the_prefix_still_work() {
    let format = wk_live();
    let store = MemoryStore::with_format(format.clone());
    let legacy = ApiKey::new("3c1f9a0d-2b7e-4e0f-9d1c-legacy2019");
    store
        .insert(
            &legacy,
            KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]),
        )
        .unwrap();
    let counting = CountingStore::new(store);
    let app = routes().layer(layer(counting.clone()).key_format(format));
    assert_key_1(&send(app.clone(), with_key(legacy.expose_secret())).await);
    assert_key_1(
        &send(
            app.clone(),
            get_req(&format!("/me?key={}", legacy.expose_secret())),
        )
        .await,
    );
    assert_eq!(counting.calls(), 2);
    // An unknown legacy-looking key goes to the store and is unknown there.
    let reply = send(app, with_key("3c1f9a0d-2b7e-4e0f-9d1c-legacy2020")).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    assert_eq!(counting.calls(), 3);
}

// ---------------------------------------------------------------------------------------------
// Optional mode and the extractors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn optional_mode_lets_anonymous_requests_through() {
    let (store, key) = store_with_key();
    let app = optional_app(store);
    let reply = send(app.clone(), get_req("/maybe")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "anonymous");
    let reply = send(app.clone(), get_req("/open?q=London")).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "open"));
    let reply = send(
        app,
        get_with("/maybe", &[("x-api-key", key.expose_secret())]),
    )
    .await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "id=key_1"));
}

#[tokio::test]
async fn optional_mode_still_rejects_bad_credentials() {
    let (store, key) = store_with_key();
    let hits = Hits::default();
    let counter = hits.clone();
    let app = Router::new()
        .route(
            "/maybe",
            get(move |p: Option<Principal>| async move {
                counter.0.fetch_add(1, Ordering::SeqCst);
                maybe(p).await
            }),
        )
        .layer(layer(store).optional());
    let reply = send(app.clone(), get_with("/maybe", &[("x-api-key", "kg_nope")])).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    let key = key.expose_secret();
    let req = get_with(&format!("/maybe?key={key}"), &[("x-api-key", key)]);
    assert_bad_request(&app, req, AMBIGUOUS, key).await;
    assert_bad_request(&app, get_req("/maybe?key="), EMPTY, "").await;
    assert_bad_request(&app, get_req("/maybe?key=%FF"), BAD_CHARS, "").await;
    assert_eq!(hits.get(), 0);
    let reply = send(app, get_req("/maybe")).await;
    assert_eq!(reply.text(), "anonymous");
    assert_eq!(hits.get(), 1);
}

#[tokio::test]
async fn principal_in_optional_mode_without_credential_is_401() {
    let (store, key) = store_with_key();
    let app = optional_app(store);
    let reply = send(app.clone(), get_req("/me")).await;
    assert_problem(&reply, 401, Some(CHALLENGE), NO_CREDENTIAL);
    assert_key_1(&send(app, with_key(key.expose_secret())).await);
}

#[tokio::test]
async fn principal_without_an_auth_layer_is_500() {
    let reply = send(routes(), get_req("/me")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_problem(&reply, 500, None, NO_PRINCIPAL);
    // A credential does not help: nothing checks it.
    let reply = send(routes(), with_key("kg_anything")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    reply.assert_no_leak("kg_anything");
}

#[tokio::test]
async fn optional_principal_without_an_auth_layer_is_500_too() {
    let reply = send(routes(), get_req("/maybe")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.detail().contains("AuthLayer"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    // Routes that do not ask for a Principal are untouched.
    let reply = send(routes(), get_req("/open")).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "open"));
}

#[tokio::test]
async fn a_principal_smuggled_into_the_extensions_is_dropped() {
    let (store, _key) = store_with_key();
    let forged = || {
        let mut req = get_req("/maybe");
        req.extensions_mut()
            .insert(Principal::new("admin", PrincipalKind::Other).with_scopes(["weather:read"]));
        req
    };
    let reply = send(optional_app(store.clone()), forged()).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "anonymous"));
    let reply = send(app(store), forged()).await;
    assert_problem(&reply, 401, Some(CHALLENGE), NO_CREDENTIAL);
}

// ---------------------------------------------------------------------------------------------
// How the layer composes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn router_layer_covers_every_path() {
    let (store, key) = store_with_key();
    let app = app(store);
    let reply = send(app.clone(), get_req("/nope")).await;
    assert_problem(&reply, 401, Some(CHALLENGE), NO_CREDENTIAL);
    let reply = send(app.clone(), with_key_at("/nope", key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_key_1(&send(app, with_key(key.expose_secret())).await);
}

#[tokio::test]
async fn route_layer_keeps_unknown_paths_404() {
    let (store, key) = store_with_key();
    let app = routes().route_layer(layer(store));
    let reply = send(app.clone(), get_req("/nope")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.header("www-authenticate").is_none());
    let reply = send(app.clone(), get_req("/me")).await;
    assert_problem(&reply, 401, Some(CHALLENGE), NO_CREDENTIAL);
    assert_key_1(&send(app.clone(), with_key(key.expose_secret())).await);
}

#[tokio::test]
async fn route_layer_protects_only_the_routes_before_it() {
    let (store, key) = store_with_key();
    let app = Router::new()
        .route("/me", get(me))
        .route_layer(layer(store))
        .route("/healthz", get(|| async { "ok" }));
    let reply = send(app.clone(), get_req("/healthz")).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "ok"));
    let reply = send(app.clone(), get_req("/me")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_key_1(&send(app, with_key(key.expose_secret())).await);
}

#[tokio::test]
async fn service_builder() {
    let (store, key) = store_with_key();
    let svc = ServiceBuilder::new().layer(layer(store)).service(routes());
    assert_key_1(&send(svc.clone(), with_key(key.expose_secret())).await);
    let reply = send(svc.clone(), get_req("/me")).await;
    assert_problem(&reply, 401, Some(CHALLENGE), NO_CREDENTIAL);
    let reply = send(svc.clone(), with_key("kg_nope")).await;
    assert_problem(&reply, 401, Some(INVALID_TOKEN), NOT_VALID);
    let reply = send(svc, get_req("/me?key=a&key=b")).await;
    assert_problem(&reply, 400, Some(INVALID_REQUEST), REPEATED);
}

#[tokio::test]
async fn stores_as_trait_objects() {
    let (store, key) = store_with_key();
    let shared: Arc<dyn KeyStore> = Arc::new(store.clone());
    assert_key_1(&send(app(shared), with_key(key.expose_secret())).await);
    let boxed: Box<dyn KeyStore> = Box::new(SlowStore(store));
    assert_key_1(&send(app(boxed), with_key(key.expose_secret())).await);
}

#[tokio::test]
async fn keys_issued_after_the_layer_is_built_work() {
    let store = MemoryStore::new();
    let app = app(store.clone());
    let key = store
        .issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]))
        .unwrap();
    assert_key_1(&send(app, with_key(key.expose_secret())).await);
}

// ---------------------------------------------------------------------------------------------
// The async path: a store that makes the layer wait
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_pending_lookup_admits_the_request() {
    let (store, key) = store_with_key();
    let app = app(SlowStore(store));
    assert_key_1(&send(app.clone(), with_key(key.expose_secret())).await);
    let bearer = format!("Bearer {}", key.expose_secret());
    assert_key_1(&send(app, get_with("/me", &[("authorization", &bearer)])).await);
}

#[tokio::test]
async fn a_pending_lookup_rejects_exactly_like_a_ready_one() {
    let (store, _key) = store_with_key();
    let revoked = store.issue(KeyRecord::new("revoked", "acme")).unwrap();
    store.revoke("revoked").unwrap();
    let ready = send(app(store.clone()), with_key("kg_unknown")).await;
    assert_problem(&ready, 401, Some(INVALID_TOKEN), NOT_VALID);
    let hits = Hits::default();
    let slow = hits.router().layer(layer(SlowStore(store)));
    for key in ["kg_unknown", revoked.expose_secret()] {
        let reply = send(slow.clone(), with_key(key)).await;
        assert_eq!(reply.head(), ready.head());
        assert_eq!(reply.body, ready.body);
        reply.assert_no_leak(key);
    }
    assert_eq!(hits.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pending_lookups_at_once() {
    let (store, key) = store_with_key();
    let hits = Hits::default();
    let counting = CountingStore::new(SlowStore(store));
    let app = hits.router().layer(layer(counting.clone()));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..64 {
        let app = app.clone();
        let key = if i % 2 == 0 {
            key.expose_secret().to_owned()
        } else {
            format!("kg_unknown_{i}")
        };
        set.spawn(async move { (i, send(app, with_key(&key)).await) });
    }
    while let Some(done) = set.join_next().await {
        let (i, reply) = done.unwrap();
        if i % 2 == 0 {
            assert_eq!((reply.status, reply.text()), (StatusCode::OK, "key_1"));
        } else {
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        }
    }
    // Every request waited for a lookup of its own: none was answered without asking the store.
    assert_eq!(counting.calls(), 64);
    assert_eq!(hits.get(), 32);
}

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

fn grpc(headers: &[(&str, &str)]) -> Request<Body> {
    grpc_at("/write", headers)
}

#[tokio::test]
async fn grpc_without_credential_is_unauthenticated() {
    let (store, _key) = store_with_key();
    let reply = send(app(store.clone()), grpc(&[])).await;
    assert_grpc(&reply, "16", NO_CREDENTIAL);
    // Any application/grpc* content type counts.
    let mut req = grpc(&[]);
    req.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc+proto"),
    );
    assert_grpc(&send(app(store), req).await, "16", NO_CREDENTIAL);
}

#[tokio::test]
async fn grpc_failures_map_to_grpc_codes() {
    let (store, key) = store_with_key();
    let app = app(store);
    let reply = send(app.clone(), grpc(&[("x-api-key", "kg_unknown")])).await;
    assert_grpc(&reply, "16", NOT_VALID);
    reply.assert_no_leak("kg_unknown");
    let key = key.expose_secret();
    let reply = send(app.clone(), grpc(&[("x-api-key", key), ("x-api-key", key)])).await;
    assert_grpc(&reply, "16", REPEATED);
    let bearer = format!("Bearer {key}");
    let reply = send(app.clone(), grpc(&[("authorization", &bearer)])).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("grpc-status"), None, "the handler answered");
    let reply = send(
        routes().layer(layer(DownStore)),
        grpc(&[("x-api-key", key)]),
    )
    .await;
    assert_grpc(&reply, "14", UNAVAILABLE);
    let reply = send(
        routes().layer(layer(SlowDownStore)),
        grpc(&[("x-api-key", key)]),
    )
    .await;
    assert_grpc(&reply, "14", UNAVAILABLE);
}

// ---------------------------------------------------------------------------------------------
// Secrets stay secret
// ---------------------------------------------------------------------------------------------

/// The part of a generated key that is secret: everything after the prefix.
fn secret_part(key: &ApiKey, format: &KeyFormat) -> String {
    key.expose_secret()[format.prefix().len()..].to_owned()
}

#[tokio::test]
async fn debug_and_display_never_show_the_secret() {
    let format = wk_live();
    let store = MemoryStore::with_format(format.clone());
    let key = store
        .issue(KeyRecord::new("key_1", "acme").with_scopes(["weather:read"]))
        .unwrap();
    let legacy = ApiKey::new("legacy-3c1f9a0d2b7e4e0f9d1c");
    store
        .insert(&legacy, KeyRecord::new("key_2", "acme"))
        .unwrap();
    let secret = secret_part(&key, &format);
    let digest = key.digest().to_hex();

    let shown = format!("{key:?} {key} {legacy:?} {legacy}");
    assert_eq!(shown, "ApiKey(\"wk_live_…\") wk_live_… ApiKey(\"…\") …");

    let layer = layer(store.clone()).key_format(format.clone()).optional();
    let store_debug = format!("{store:?}");
    let layer_debug = format!("{layer:?}");
    let digest_debug = format!("{:?}", key.digest());
    for shown in [&store_debug, &layer_debug, &digest_debug] {
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains(&digest), "{shown}");
        assert!(!shown.contains(legacy.expose_secret()), "{shown}");
        assert!(!shown.contains(&legacy.digest().to_hex()), "{shown}");
    }
    assert!(store_debug.starts_with("MemoryStore"), "{store_debug}");
    assert!(layer_debug.starts_with("AuthLayer"), "{layer_debug}");

    // The Principal a handler sees, in Debug and in JSON.
    let app = routes().layer(layer);
    let reply = send(app.clone(), with_key(key.expose_secret())).await;
    assert_eq!(reply.status, StatusCode::OK);
    let principal_debug = reply.json()["debug"].as_str().unwrap().to_owned();
    assert_eq!(
        principal_debug,
        r#"Principal { id: "key_1", kind: ApiKey, owner: Some("acme"), scopes: {"weather:read"} }"#
    );
    reply.assert_no_leak(&secret);
    reply.assert_no_leak(&digest);
    let reply = send(app, with_key(legacy.expose_secret())).await;
    assert_eq!(reply.json()["id"], "key_2");
    reply.assert_no_leak(legacy.expose_secret());
}

#[test]
fn debug_of_a_legacy_key_with_underscores_shows_nothing_of_it() {
    // A random base64url key (its alphabet has '_'), as many older systems issue.
    let key = ApiKey::new("Zx81kQ_4rT9wLmN2pV7sY3bH6jD0fG5cA1eK8uXoWiE");
    let shown = format!("{key:?} {key}");
    assert!(!shown.contains("Zx81kQ"), "{shown}");
}
