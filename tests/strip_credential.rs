//! `AuthLayer::strip_credential` through a real axum `Router`: the handler echoes the headers and
//! the raw query it saw, so every test compares them byte for byte with what was sent. The
//! `Authorization` and API-key headers, a cookie pair among others (first, middle, last, over
//! several `Cookie` headers), a query pair among tricky encodings, JWT bearer tokens, the
//! asynchronous store path, custom sources; without the setting nothing changes, and rejected
//! requests are answered as before.

#![cfg(feature = "axum")]

mod common;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::*;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use keygate::credential::{CredentialError, CredentialSource, ExtractCredential, RequestHead};
use keygate::store::{KeyStore, MemoryStore};
use keygate::{Principal, auth::AuthLayer};
use serde_json::{Value, json};

/// What the handler saw: every header in order (values with non-ASCII bytes escaped, so that
/// they compare exactly), the raw query, the path, and who called.
async fn echo(req: Request<Body>) -> axum::Json<Value> {
    let headers: Vec<Value> = req
        .headers()
        .iter()
        .map(|(name, value)| json!([name.as_str(), escaped(value.as_bytes())]))
        .collect();
    axum::Json(json!({
        "headers": headers,
        "query": req.uri().query(),
        "path": req.uri().path(),
        "principal": req.extensions().get::<Principal>().map(|p| p.id().to_owned()),
    }))
}

/// Visible ASCII as it is, other bytes as `\xNN`.
fn escaped(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b' '..=b'~' => (b as char).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect()
}

fn router() -> Router {
    Router::new()
        .route("/echo", get(echo))
        .route("/v1/echo", get(echo))
}

fn stripping(store: impl KeyStore) -> AuthLayer {
    AuthLayer::new(store).realm(REALM).strip_credential()
}

/// Sends `req` to `app`; the handler's echo, after checking the request was admitted.
async fn seen(app: &Router, req: Request<Body>) -> Value {
    let what = format!("{} {:?}", req.uri(), req.headers());
    let reply = send(app.clone(), req).await;
    assert_eq!(reply.status, StatusCode::OK, "{what}: {:?}", reply.body);
    reply.json()
}

/// The header list the handler reports for these pairs.
fn headers(pairs: &[(&str, &str)]) -> Value {
    Value::Array(pairs.iter().map(|(n, v)| json!([n, v])).collect())
}

/// `GET uri` with raw header values.
fn get_raw_headers(uri: &str, pairs: &[(&str, &[u8])]) -> Request<Body> {
    let mut req = Request::get(uri);
    for (name, value) in pairs {
        req = req.header(*name, HeaderValue::from_bytes(value).unwrap());
    }
    req.body(Body::empty()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Headers

#[tokio::test]
async fn a_bearer_key_is_stripped_and_the_other_headers_kept() {
    let (store, key) = store_with_key();
    let app = router().layer(stripping(store));
    let key = key.expose_secret();
    let seen = seen(
        &app,
        get_with(
            "/echo?q=London",
            &[
                ("accept", "application/json"),
                ("authorization", &format!("Bearer {key}")),
                ("x-request-id", "r-1"),
            ],
        ),
    )
    .await;
    assert_eq!(
        seen["headers"],
        headers(&[("accept", "application/json"), ("x-request-id", "r-1")])
    );
    assert_eq!(seen["query"], "q=London");
    assert_eq!(seen["principal"], "key_1");
    assert!(!seen.to_string().contains(key));
}

#[tokio::test]
async fn an_api_key_header_is_stripped_and_basic_authorization_kept() {
    let (store, key) = store_with_key();
    let app = router().layer(stripping(store));
    let seen = seen(
        &app,
        get_with(
            "/echo",
            &[
                ("authorization", "Basic dTpw"),
                ("x-api-key", key.expose_secret()),
                ("x-api-key-hint", "a"),
            ],
        ),
    )
    .await;
    assert_eq!(
        seen["headers"],
        headers(&[("authorization", "Basic dTpw"), ("x-api-key-hint", "a")])
    );
    assert_eq!(seen["query"], Value::Null);
    assert_eq!(seen["principal"], "key_1");
}

#[tokio::test]
async fn a_named_header_source_is_stripped() {
    let (store, key) = store_with_key();
    let app = router().layer(stripping(store).sources([CredentialSource::header("x-weather-key")]));
    let seen = seen(
        &app,
        get_with(
            "/echo",
            &[
                ("x-weather-key", key.expose_secret()),
                ("x-api-key", "not ours"),
            ],
        ),
    )
    .await;
    assert_eq!(seen["headers"], headers(&[("x-api-key", "not ours")]));
}

// ---------------------------------------------------------------------------------------------
// Cookies

#[tokio::test]
async fn only_the_credentials_cookie_pair_is_stripped() {
    let (store, key) = store_with_key();
    let app = router().layer(stripping(store).sources([CredentialSource::cookie("sk")]));
    let k = key.expose_secret();
    for (cookie, left) in [
        (format!("sk={k}"), None),
        (
            format!("sk={k}; theme=dark; lang=\"en GB\""),
            Some("theme=dark; lang=\"en GB\""),
        ),
        (
            format!("theme=dark; sk={k}; lang=en"),
            Some("theme=dark; lang=en"),
        ),
        (
            format!("theme=dark;sk=\"{k}\";lang=en"),
            Some("theme=dark;lang=en"),
        ),
        (format!("theme=dark; sk={k}"), Some("theme=dark")),
        (format!("theme=dark; sk= {k} ;"), Some("theme=dark;")),
        (
            format!("sk2=a; xsk=b; sk={k}; sk_=c"),
            Some("sk2=a; xsk=b; sk_=c"),
        ),
    ] {
        let seen = seen(
            &app,
            get_with("/echo", &[("cookie", &cookie), ("x-y", "z")]),
        )
        .await;
        let mut want = Vec::new();
        if let Some(left) = left {
            want.push(("cookie", left));
        }
        want.push(("x-y", "z"));
        assert_eq!(seen["headers"], headers(&want), "{cookie}");
        assert_eq!(seen["principal"], "key_1");
    }
}

#[tokio::test]
async fn cookies_over_several_headers_and_other_bytes_are_kept() {
    let (store, key) = store_with_key();
    let app = router().layer(stripping(store).sources([CredentialSource::cookie("sk")]));
    let k = key.expose_secret();

    // The header holding only the credential goes; the others stay, in order.
    let echo = seen(
        &app,
        get_with(
            "/echo",
            &[
                ("cookie", "a=1"),
                ("cookie", &format!("sk={k}")),
                ("cookie", "b=2"),
            ],
        ),
    )
    .await;
    assert_eq!(
        echo["headers"],
        headers(&[("cookie", "a=1"), ("cookie", "b=2")])
    );

    // The header with the credential among others keeps them.
    let echo = seen(
        &app,
        get_with(
            "/echo",
            &[
                ("cookie", "a=1"),
                ("cookie", &format!("b=2; sk={k}; c=%3B")),
            ],
        ),
    )
    .await;
    assert_eq!(
        echo["headers"],
        headers(&[("cookie", "a=1"), ("cookie", "b=2; c=%3B")])
    );

    // Another cookie that is not UTF-8 keeps its bytes.
    let cookie = [b"a=\xff\xfe; sk=".as_slice(), k.as_bytes(), b"; b=\xe9"].concat();
    let echo = seen(&app, get_raw_headers("/echo", &[("cookie", &cookie)])).await;
    assert_eq!(
        echo["headers"],
        headers(&[("cookie", r"a=\xff\xfe; b=\xe9")])
    );
}

// ---------------------------------------------------------------------------------------------
// Query parameters

/// `(query sent, query the handler sees)`, with `$K` for the key.
const QUERIES: &[(&str, Option<&str>)] = &[
    ("key=$K", None),
    ("a=1&key=$K&a=2", Some("a=1&a=2")),
    ("key=$K&b=%26x%3D", Some("b=%26x%3D")),
    ("b=c+d&key=$K", Some("b=c+d")),
    ("&&key=$K&", Some("&&")),
    ("&key=$K", None),
    ("q=London&key=$K", Some("q=London")),
    (
        "a=&b&key=$K&c==&d=%zz&e=%2B+",
        Some("a=&b&c==&d=%zz&e=%2B+"),
    ),
    // Names that are not the credential's, however close, stay; `k%65y` is `key`.
    (
        "Key=x&key2=y&k%65y=$K&key%3D=z&key+=w&%6Bey%20=v",
        Some("Key=x&key2=y&key%3D=z&key+=w&%6Bey%20=v"),
    ),
    ("keys=1&key=$K&api_key=2", Some("keys=1&api_key=2")),
];

#[tokio::test]
async fn only_the_credentials_query_pair_is_stripped() {
    let (store, key) = store_with_key();
    let app = router().layer(stripping(store));
    let k = key.expose_secret();
    for (sent, left) in QUERIES {
        let uri = format!("/echo?{}", sent.replace("$K", k));
        let seen = seen(&app, get_with(&uri, &[("x-y", "z")])).await;
        assert_eq!(seen["query"], json!(left), "{sent}");
        assert_eq!(seen["path"], "/echo");
        assert_eq!(seen["headers"], headers(&[("x-y", "z")]));
        assert_eq!(seen["principal"], "key_1");
    }
}

#[tokio::test]
async fn a_percent_encoded_credential_value_is_stripped_whole() {
    let (store, key) = store_with_key();
    let app = router().layer(stripping(store));
    // `kg_…` with its `_` and first letters written as escapes: it decodes to the key.
    let k = key.expose_secret();
    let encoded: String = k
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            if b == b'_' || i < 6 {
                format!("%{b:02X}")
            } else {
                (b as char).to_string()
            }
        })
        .collect();
    let seen = seen(
        &app,
        get_req(&format!("/v1/echo?q=a%2Bb&key={encoded}&units=metric")),
    )
    .await;
    assert_eq!(seen["query"], "q=a%2Bb&units=metric");
    assert_eq!(seen["path"], "/v1/echo");
    assert!(!seen.to_string().contains(&encoded));
}

// ---------------------------------------------------------------------------------------------
// Tokens, the asynchronous store path, custom sources

#[cfg(feature = "jwt")]
#[tokio::test]
async fn a_jwt_bearer_token_is_stripped() {
    use keygate::jwt::{JwtKey, JwtVerifier};

    let (store, key) = store_with_key();
    let verifier = JwtVerifier::with_keys([JwtKey::hmac(HS256_SECRET).kid("hs-1")]);
    let app = router().layer(stripping(store).jwt(verifier));
    let token = hs256_token("user-7");

    let seen_bearer = seen(
        &app,
        get_with(
            "/echo?q=1",
            &[("authorization", &format!("Bearer {token}")), ("x-y", "z")],
        ),
    )
    .await;
    assert_eq!(seen_bearer["headers"], headers(&[("x-y", "z")]));
    assert_eq!(seen_bearer["query"], "q=1");
    assert_eq!(seen_bearer["principal"], "user-7");

    // A token in the query is stripped as a key is.
    let seen_query = seen(&app, get_req(&format!("/echo?key={token}&q=1"))).await;
    assert_eq!(seen_query["query"], "q=1");
    assert_eq!(seen_query["principal"], "user-7");

    // And the same layer still strips API keys.
    let seen_key = seen(&app, with_key_at("/echo", key.expose_secret())).await;
    assert_eq!(seen_key["headers"], headers(&[]));
}

#[tokio::test]
async fn the_credential_is_stripped_after_waiting_for_the_store() {
    let (store, key) = store_with_key();
    let app = router().layer(stripping(SlowStore(store)));
    let k = key.expose_secret();

    let seen_query = seen(&app, get_req(&format!("/echo?a=1&key={k}&a=2"))).await;
    assert_eq!(seen_query["query"], "a=1&a=2");
    assert_eq!(seen_query["principal"], "key_1");

    let seen_header = seen(
        &app,
        get_with(
            "/echo",
            &[("authorization", &format!("Bearer {k}")), ("x-y", "z")],
        ),
    )
    .await;
    assert_eq!(seen_header["headers"], headers(&[("x-y", "z")]));
}

/// A custom source that knows how to take its credential out.
struct LegacyHeader;

impl ExtractCredential for LegacyHeader {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Option<String>, CredentialError> {
        head.headers
            .get("x-legacy")
            .map(|v| v.to_str().map(str::to_owned))
            .transpose()
            .map_err(|_| CredentialError::InvalidCharacters)
    }

    fn strip(&self, headers: &mut HeaderMap, _uri: &mut Uri) {
        headers.remove("x-legacy");
    }
}

#[tokio::test]
async fn custom_sources_strip_with_their_hook_or_are_left_as_they_are() {
    let (store, key) = store_with_key();
    let k = key.expose_secret();
    let req = || get_with("/echo", &[("x-legacy", k), ("x-y", "z")]);

    let app =
        router().layer(stripping(store.clone()).sources([CredentialSource::custom(LegacyHeader)]));
    assert_eq!(seen(&app, req()).await["headers"], headers(&[("x-y", "z")]));

    // A closure cannot say where its credential was: the request is passed on as it came.
    let closure = CredentialSource::custom(|head: &RequestHead<'_>| {
        Ok(head
            .headers
            .get("x-legacy")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    });
    let app = router().layer(stripping(store).sources([closure]));
    assert_eq!(
        seen(&app, req()).await["headers"],
        headers(&[("x-legacy", k), ("x-y", "z")])
    );
}

// ---------------------------------------------------------------------------------------------
// Without the setting, anonymous and rejected requests

#[tokio::test]
async fn without_strip_credential_the_request_is_passed_on_as_it_came() {
    let (store, key) = store_with_key();
    let k = key.expose_secret();
    let app = router().layer(AuthLayer::new(store.clone()).realm(REALM));
    let cookie_app = router().layer(
        AuthLayer::new(store)
            .realm(REALM)
            .sources([CredentialSource::cookie("sk")]),
    );

    let bearer = format!("Bearer {k}");
    let seen_header = seen(
        &app,
        get_with("/echo", &[("authorization", &bearer), ("x-y", "z")]),
    )
    .await;
    assert_eq!(
        seen_header["headers"],
        headers(&[("authorization", &bearer), ("x-y", "z")])
    );

    for (sent, _) in QUERIES {
        let query = sent.replace("$K", k);
        let seen = seen(&app, get_req(&format!("/echo?{query}"))).await;
        assert_eq!(seen["query"], query.as_str());
    }

    let cookie = format!("a=1; sk={k}; b=2");
    let seen_cookie = seen(&cookie_app, get_with("/echo", &[("cookie", &cookie)])).await;
    assert_eq!(seen_cookie["headers"], headers(&[("cookie", &cookie)]));
}

#[tokio::test]
async fn an_anonymous_request_is_passed_on_as_it_came() {
    let (store, _key) = store_with_key();
    let app = router().layer(stripping(store).optional());
    let seen = seen(
        &app,
        get_with(
            "/echo?keys=1&api_key=2&q",
            &[("authorization", "Basic dTpw")],
        ),
    )
    .await;
    assert_eq!(seen["query"], "keys=1&api_key=2&q");
    assert_eq!(seen["headers"], headers(&[("authorization", "Basic dTpw")]));
    assert_eq!(seen["principal"], Value::Null);
}

#[tokio::test]
async fn rejected_requests_are_answered_as_without_stripping() {
    let (store, key) = store_with_key();
    let hits = Hits::default();
    let routes = || Router::new().route("/echo", get(hits.counted("reached")));
    let plain = routes().layer(AuthLayer::new(store.clone()).realm(REALM));
    let strip = routes().layer(stripping(store.clone()));
    let slow = routes().layer(stripping(SlowStore(store)));
    let k = key.expose_secret();
    let unknown = MemoryStore::new()
        .issue(keygate::key::KeyRecord::new("x", "y"))
        .unwrap();
    let requests = || {
        vec![
            get_req("/echo?q=1"),
            with_key_at("/echo", unknown.expose_secret()),
            get_req(&format!("/echo?key={}&q=1", unknown.expose_secret())),
            get_req(&format!("/echo?key={k}&key={k}")),
            get_with(&format!("/echo?key={k}"), &[("x-api-key", k)]),
            get_with("/echo", &[("authorization", "Bearer")]),
            with_key_at("/echo", &"a".repeat(600)),
        ]
    };
    let request = |i: usize| requests().into_iter().nth(i).unwrap();
    for i in 0..requests().len() {
        let what = request(i).uri().to_string();
        let want = send(plain.clone(), request(i)).await;
        assert!(want.status.is_client_error(), "{what}");
        for app in [&strip, &slow] {
            let got = send(app.clone(), request(i)).await;
            assert_eq!(got.head(), want.head(), "{what}");
            assert_eq!(got.body, want.body, "{what}");
        }
    }
    assert_eq!(hits.get(), 0);
}

/// axum's router keeps the URI as it arrived for `OriginalUri`, before any layer runs: the
/// credential goes from that copy too, under `layer` and `route_layer` alike, in a nested
/// router too.
#[tokio::test]
async fn the_original_uri_loses_the_credential_too() {
    use axum::extract::OriginalUri;
    let (store, key) = store_with_key();
    let both =
        |OriginalUri(original): OriginalUri, uri: Uri| async move { format!("{original} {uri}") };
    let layered = Router::new()
        .route("/echo", get(both))
        .layer(stripping(store.clone()));
    let route_layered = Router::new()
        .route("/echo", get(both))
        .route_layer(stripping(store.clone()));
    let nested = Router::new().nest("/v1", route_layered.clone());
    for (app, path, inner) in [
        (&layered, "/echo", "/echo"),
        (&route_layered, "/echo", "/echo"),
        (&nested, "/v1/echo", "/echo"),
    ] {
        let uri = format!("{path}?a=1&key={}&b=%26", key.expose_secret());
        let reply = send(app.clone(), Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.body,
            format!("{path}?a=1&b=%26 {inner}?a=1&b=%26").as_bytes()
        );
    }
}
