//! A whole request head through `AuthLayer`, with every credential source and a JWT verifier.
//!
//! Input, one item a line (split by hand, so that seeds are readable and any byte string is a
//! valid input):
//!
//! ```text
//! /path?query                      the URI; an unparsable one makes the input uninteresting
//! name: value                      a header; repeated names are kept; invalid ones skipped
//! ```
//!
//! Checked on every input: the response is 200, 400 or 401 (503 would mean a backend is down,
//! and none is: the store is in memory and the JWT keys are static); a 200 comes from the inner
//! service with a Principal that one of the registered keys or a correctly signed token
//! explains, or is a gRPC error reply with `grpc-status: 16`; and no piece of the request's
//! header values or query longer than 8 bytes appears in the response unless it is fixed text
//! keygate writes anyway (credentials are never echoed).

#![no_main]

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use keygate::error::Unavailable;
use keygate::jwt::JwtVerifier;
use keygate::key::{ApiKey, KeyRecord};
use keygate::store::MemoryStore;
use keygate::{
    Principal, PrincipalKind, auth::Auth, auth::AuthLayer, credential::CredentialError,
    credential::CredentialSource, credential::RequestHead, error::AuthError,
    error::InvalidCredential,
};
use keygate_fuzz::*;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;
use tower::util::ServiceFn;

const REALM: &str = "fuzz";
const COOKIE: &str = "kg_session";
const INNER_BODY: &[u8] = b"inner service reached";

/// Only pieces longer than this are looked for in responses: shorter ones (`401`, `Bearer`)
/// occur in any response by chance.
const ECHO_MIN_LEN: usize = 8;

type Inner = fn(Request<()>) -> Ready<Result<Response<Full<Bytes>>, Infallible>>;

thread_local! {
    /// The kind of the Principal the inner service saw in this run, if it was called.
    static ADMITTED: Cell<Option<PrincipalKind>> = const { Cell::new(None) };
}

/// The trivial inner service: records who was admitted, answers a fixed body.
fn inner(req: Request<()>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    // The layer is not optional: a request it lets through must carry a Principal.
    let Some(principal) = req.extensions().get::<Principal>() else {
        panic!("the inner service was called without a Principal");
    };
    match principal.kind() {
        PrincipalKind::ApiKey => assert!(
            principal.id() == ACTIVE_ID || principal.id() == LEGACY_ID,
            "admitted as API key record {:?}, which is revoked, expired or unknown",
            principal.id()
        ),
        PrincipalKind::Jwt => assert!(!principal.id().is_empty(), "a JWT with an empty subject"),
        other => panic!("unexpected principal kind {other:?}"),
    }
    ADMITTED.with(|a| a.set(Some(principal.kind())));
    ready(Ok(Response::new(Full::new(Bytes::from_static(INNER_BODY)))))
}

/// Built once: the layer's configuration is the same for every input, and building it (the
/// store, the verifier) per run would cost more than the request.
static SERVICE: LazyLock<Auth<ServiceFn<Inner>>> = LazyLock::new(|| {
    let store = MemoryStore::new();
    // Registered by hand (not `issue`d at random) so that the seeds can carry the keys.
    let register = |key: &str, record: KeyRecord| {
        store
            .insert(&ApiKey::new(key), record)
            .expect("fixed keys and ids are distinct");
    };
    for key in [ACTIVE_KEY, REVOKED_KEY, EXPIRED_KEY] {
        assert!(
            store.format().check(key).is_ok(),
            "{key} has a bad checksum"
        );
    }
    register(
        ACTIVE_KEY,
        KeyRecord::new(ACTIVE_ID, "owner").with_scopes(["read", "write"]),
    );
    register(REVOKED_KEY, KeyRecord::new("key_revoked", "owner"));
    store.revoke("key_revoked").expect("just registered");
    register(
        EXPIRED_KEY,
        KeyRecord::new("key_expired", "owner").with_expiry(at(NOW_SECS - 1)),
    );
    register(LEGACY_KEY, KeyRecord::new(LEGACY_ID, "owner"));

    // No cache: a verdict must depend on this input alone, or a crash would not replay.
    let verifier = JwtVerifier::with_keys(jwt_keys()).clock(clock()).cache(0);
    let layer = AuthLayer::new(store.clone())
        .sources([
            CredentialSource::bearer(),
            CredentialSource::header("x-api-key"),
            CredentialSource::query("key"),
            CredentialSource::cookie(COOKIE),
        ])
        .key_format(store.format().clone())
        .jwt(verifier)
        .clock(clock())
        .realm(REALM);
    tower::Layer::layer(&layer, tower::service_fn(inner as Inner))
});

/// Every header and body keygate writes in this configuration, one after another: text found
/// here is not an echo, whatever the input holds.
static VOCABULARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut errors = vec![
        AuthError::MissingCredential,
        AuthError::Unavailable(Unavailable::JwtKeys),
    ];
    errors.extend(
        [
            CredentialError::Ambiguous,
            CredentialError::Repeated,
            CredentialError::Empty,
            CredentialError::TooLong,
            CredentialError::InvalidCharacters,
            CredentialError::MalformedAuthorization,
        ]
        .map(AuthError::InvalidRequest),
    );
    errors.extend(
        [
            InvalidCredential::UnknownKey,
            InvalidCredential::MalformedKey,
            InvalidCredential::RevokedKey,
            InvalidCredential::DisabledKey,
            InvalidCredential::ExpiredKey,
            InvalidCredential::TokenExpired,
            InvalidCredential::InvalidToken,
        ]
        .map(AuthError::InvalidCredential),
    );
    let mut text = Vec::new();
    for error in &errors {
        for res in [error.to_http_response(REALM), error.to_grpc_response()] {
            let (parts, body) = res.into_parts();
            text.extend(serialize(&parts, &body));
        }
    }
    text.extend_from_slice(INNER_BODY);
    text
});

/// A response's headers and body as one byte string, for substring searches.
fn serialize(parts: &http::response::Parts, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out.push(b'\n');
    out
}

/// The request the input describes, or `None` when its URI does not parse.
fn request(data: &[u8]) -> Option<Request<()>> {
    let mut lines = data.split(|&b| b == b'\n');
    let uri = Uri::try_from(lines.next()?).ok()?;
    let mut req = Request::new(());
    *req.uri_mut() = uri;
    keygate_fuzz::append_header_lines(&mut req, lines);
    Some(req)
}

/// What a credential might be, anywhere in the request: every header value and query
/// parameter, whole, trimmed and cut at the separators of each source's syntax, and the query
/// pieces percent-decoded as well.
fn candidates(req: &Request<()>) -> Vec<Vec<u8>> {
    let separators = |b: &u8| b" ;,=&\"\t".contains(b);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut push = |piece: &[u8]| {
        if piece.len() > ECHO_MIN_LEN {
            out.push(piece.to_vec());
        }
    };
    for value in req.headers().values() {
        let value = value.as_bytes();
        push(value);
        push(value.trim_ascii());
        value.split(separators).for_each(&mut push);
    }
    if let Some(query) = req.uri().query() {
        let query = query.as_bytes();
        push(query);
        for piece in query.split(separators) {
            push(piece);
            let plus_free: Vec<u8> = piece
                .iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect();
            let decoded: Vec<u8> = percent_encoding::percent_decode(&plus_free).collect();
            push(&decoded);
        }
    }
    out
}

/// Whether some `Authorization` header carries a token signed by a trusted key.
fn carries_signed_token(req: &Request<()>) -> bool {
    req.headers()
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_once(' ').map(|(_, token)| token.trim()))
        .any(signed_by_trusted_key)
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = request(data) else {
        return;
    };
    let grpc = RequestHead::of(&req).is_grpc();
    let pieces = candidates(&req);
    let jwt_proof = carries_signed_token(&req);
    ADMITTED.with(|a| a.set(None));

    // Every future here is ready at once (an in-memory store, static JWT keys, an inner
    // service that answers at once), so a minimal executor is enough.
    let (parts, body) = futures::executor::block_on(async {
        let res = match SERVICE.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        let (parts, body) = res.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        (parts, body)
    });

    let status = parts.status;
    assert_ne!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "503 although no backend can be down"
    );
    assert!(
        [
            StatusCode::OK,
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED
        ]
        .contains(&status),
        "unexpected status {status}"
    );

    match ADMITTED.with(Cell::get) {
        Some(kind) => {
            assert_eq!(status, StatusCode::OK);
            assert_eq!(&body[..], INNER_BODY);
            if kind == PrincipalKind::Jwt {
                assert!(jwt_proof, "admitted a JWT that no trusted key signed");
            }
        }
        None if grpc => {
            // gRPC errors are trailers-only 200s; 16 is UNAUTHENTICATED, and the only code
            // this configuration can give (14, UNAVAILABLE, would be the 503 above).
            assert_eq!(
                status,
                StatusCode::OK,
                "a gRPC error reply must be HTTP 200"
            );
            let code = parts.headers.get("grpc-status").map(HeaderValue::as_bytes);
            assert_eq!(code, Some(&b"16"[..]), "gRPC error reply with {code:?}");
        }
        None => assert_ne!(status, StatusCode::OK, "200 without the inner service"),
    }

    let response = serialize(&parts, &body);
    for piece in &pieces {
        if contains(&response, piece) && !contains(&VOCABULARY, piece) {
            panic!(
                "the response echoes a piece of the request: {:?}\nresponse: {:?}",
                String::from_utf8_lossy(piece),
                String::from_utf8_lossy(&response)
            );
        }
    }
});
