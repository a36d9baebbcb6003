//! Hostile tokens, table-driven, through `AuthLayer` on a real axum `Router` (driven with
//! `tower::ServiceExt::oneshot`): each is turned away with exactly the response the error
//! contract gives it, nothing panics, and nothing hostile lands in the verified-token cache.
//!
//! Each hostile token differs from a token the same app accepts (see the `controls`) in one
//! respect, so that a row fails if keygate stops rejecting what makes it hostile. Signed rows
//! are signed with a key the verifier trusts unless the row is about the key.
//!
//! The verifier trusts four test-only keys (tests/fixtures/test_only_*.pem and an HMAC
//! secret), each with a kid, requires `iss` in {https://issuer.test, https://other.test} and
//! `aud` "keygate-tests", with the default leeway (60 s), on a manual clock at `T0`.

#![cfg(all(feature = "jwt", feature = "axum"))]

mod common;
mod jwt_support;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::{
    INVALID_REQUEST, INVALID_TOKEN, NOT_VALID, REALM, assert_problem, send, store_with, with_bearer,
};
use http::{Request, StatusCode};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::Jwk;
use jwt_support::*;
use keygate::jwt::{JwtVerifier, VerifyError};
use keygate::key::KeyRecord;
use keygate::{Principal, auth::AuthLayer};
use serde_json::{Value, json};

const EXPIRED: &str =
    r#"Bearer realm="R", error="invalid_token", error_description="token expired""#;
const EXPIRED_DETAIL: &str = "The token has expired.";
const TOO_LONG: &str = "The credential is too long.";

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "keygate-tests";

/// How a hostile token must be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 401 `invalid_token`, "The credential is not valid."
    Invalid,
    /// 401 `invalid_token` with `error_description="token expired"`.
    Expired,
    /// 400 `invalid_request`, "The credential is too long."
    TooLong,
}

struct Case {
    name: String,
    token: String,
    expect: Expect,
}

fn case(name: impl Into<String>, token: impl Into<String>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        token: token.into(),
        expect,
    }
}

fn verifier() -> JwtVerifier {
    JwtVerifier::with_keys(fixture_keys())
        .issuer([ISSUER, "https://other.test"])
        .audience([AUDIENCE])
        .clock(clock())
}

async fn who(p: Principal) -> String {
    format!("{}:{:?}", p.id(), p.kind())
}

fn routes() -> Router {
    Router::new().route("/who", get(who))
}

/// Which credentials an app accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepts {
    /// `AuthLayer::new(store).jwt(verifier)`.
    KeysAndJwt,
    /// `AuthLayer::jwt_only(verifier.claims::<Value>())`.
    JwtOnly,
}

/// What `app` answers to `c`: as the row says, except that a credential without the shape of a
/// compact JWS is an API key to an app that takes keys, and API keys longer than 512 bytes are
/// oversized (400) there.
fn expected(app: Accepts, c: &Case) -> Expect {
    if app == Accepts::KeysAndJwt
        && c.expect == Expect::Invalid
        && !jws_shaped(&c.token)
        && c.token.len() > 512
    {
        Expect::TooLong
    } else {
        c.expect
    }
}

/// Three non-empty base64url segments: what `AuthLayer` sends to the verifier.
fn jws_shaped(token: &str) -> bool {
    let segments: Vec<&str> = token.split('.').collect();
    segments.len() == 3
        && segments.iter().all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// API keys and tokens side by side (a store with one key), and tokens only with typed claims.
fn apps() -> Vec<(Accepts, Router, JwtVerifier)> {
    let (store, _) = store_with([KeyRecord::new("key_1", "acme")]);
    let both = verifier();
    let only = verifier().claims::<Value>();
    vec![
        (
            Accepts::KeysAndJwt,
            routes().layer(AuthLayer::new(store).jwt(both.clone()).realm(REALM)),
            both,
        ),
        (
            Accepts::JwtOnly,
            routes().layer(AuthLayer::jwt_only(only.clone()).realm(REALM)),
            only,
        ),
    ]
}

fn bearer(token: &str) -> Request<Body> {
    with_bearer("/who", token)
}

/// Claims the verifier accepts.
fn good() -> Value {
    json!({
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": T0,
        "exp": T0 + 3600,
        "scope": "read write",
    })
}

/// `good()` with `key` set to `value` (or removed when `value` is null and `remove`).
fn with(key: &str, value: Value) -> Value {
    let mut claims = good();
    claims[key] = value;
    claims
}

fn without(key: &str) -> Value {
    let mut claims = good();
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn hs_header() -> Value {
    json!({"alg": "HS256", "typ": "JWT", "kid": KID_HS})
}

/// A header/payload pair signed with the trusted HMAC secret.
fn hs_bytes(header: &[u8], payload: &[u8]) -> String {
    sign_raw(header, payload, &hmac_signing_key(), Algorithm::HS256)
}

/// `segment` with the unused low bits of its last character set: the same bytes to a lenient
/// decoder, not canonical base64url. The segment's length must not be a multiple of 4.
fn noncanonical(segment: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert_ne!(segment.len() % 4, 0, "no unused bits");
    let mut bytes = segment.as_bytes().to_vec();
    let last = bytes.last_mut().unwrap();
    let index = ALPHABET.iter().position(|c| c == last).unwrap();
    assert_eq!(index & 1, 0, "canonical: the lowest bit is unused and zero");
    *last = ALPHABET[index + 1];
    String::from_utf8(bytes).unwrap()
}

/// JSON bytes for `value`, padded with spaces until their base64url has unused bits.
fn json_with_unused_bits(value: &Value) -> Vec<u8> {
    let mut text = value.to_string();
    while b64(text.as_bytes()).len().is_multiple_of(4) {
        text.push(' ');
    }
    text.into_bytes()
}

/// `header.payload` in the standard alphabet (`+`, `/`), signed as sent. The header gets a filler
/// member so that its encoding holds `_` (`?` encodes to `_` in the right place).
fn standard_alphabet(in_header: bool) -> String {
    let header = json!({"alg": "HS256", "kid": KID_HS, "f": "???"}).to_string();
    let payload = with("f", json!("???")).to_string();
    let (mut h, mut p) = (b64(header.as_bytes()), b64(payload.as_bytes()));
    let convert = |s: &str| s.replace('-', "+").replace('_', "/");
    if in_header {
        assert!(h.contains(['-', '_']));
        h = convert(&h);
    } else {
        assert!(p.contains(['-', '_']));
        p = convert(&p);
    }
    sign_segments(&h, &p, &hmac_signing_key(), Algorithm::HS256)
}

/// An HS256 token whose signature holds `-` or `_` (varied by `jti` until it does).
fn token_with_url_safe_signature_char() -> String {
    (0..)
        .map(|i| hs_token(&with("jti", json!(format!("j{i}")))))
        .find(|t| t.rsplit('.').next().unwrap().contains(['-', '_']))
        .unwrap()
}

/// A signed HS256 token exactly `len` bytes long (the header varies in a filler member to reach
/// lengths that base64 of the payload alone cannot).
fn token_of_len(len: usize) -> String {
    let b64_len = |n: usize| (4 * n).div_ceil(3);
    const SIGNATURE_LEN: usize = 43; // HMAC-SHA-256, base64url
    for filler in 0..6 {
        let header = json!({"alg": "HS256", "kid": KID_HS, "f": "f".repeat(filler)}).to_string();
        let unpadded = with("pad", json!("")).to_string().len();
        for pad in 0..len {
            let total = b64_len(header.len()) + 1 + b64_len(unpadded + pad) + 1 + SIGNATURE_LEN;
            if total == len {
                let payload = with("pad", json!("x".repeat(pad))).to_string();
                let token = hs_bytes(header.as_bytes(), payload.as_bytes());
                assert_eq!(token.len(), len);
                return token;
            }
            if total > len {
                break;
            }
        }
    }
    panic!("no token of length {len}");
}

/// The attacker's public key as a JWK (what an attacker puts in the `jwk` header).
fn attacker_jwk(kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(&attacker_signing_key(), Algorithm::RS256).expect("a JWK");
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn nested_array(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_object(depth: usize) -> String {
    format!("{}1{}", r#"{"":"#.repeat(depth), "}".repeat(depth))
}

/// `good()` as JSON text with `"member": raw` added.
fn good_with_raw(member: &str, raw: &str) -> Vec<u8> {
    let mut text = good().to_string();
    text.pop(); // the closing brace
    text.push_str(&format!(r#","{member}":{raw}}}"#));
    text.into_bytes()
}

fn hostile() -> Vec<Case> {
    use Expect::*;
    let mut cases = Vec::new();
    let good_token = hs_token(&good());
    let good_payload = good().to_string();
    let (h, rest) = good_token.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let (h, p, s) = (h.to_owned(), p.to_owned(), s.to_owned());

    // --- alg: none ---------------------------------------------------------------------------
    let none_header = br#"{"alg":"none","typ":"JWT"}"#;
    cases.push(case(
        "alg none, empty signature",
        format!("{}.{}.", b64(none_header), b64(good_payload.as_bytes())),
        Invalid,
    ));
    cases.push(case(
        "alg none, no signature segment",
        format!("{}.{}", b64(none_header), b64(good_payload.as_bytes())),
        Invalid,
    ));
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "kid": KID_HS}).to_string();
        cases.push(case(
            format!("alg {alg:?} with a valid HMAC signature"),
            hs_bytes(header.as_bytes(), good_payload.as_bytes()),
            Invalid,
        ));
    }
    for (what, header) in [
        ("no alg", json!({"typ": "JWT", "kid": KID_HS})),
        ("alg null", json!({"alg": null, "kid": KID_HS})),
        ("alg empty", json!({"alg": "", "kid": KID_HS})),
        ("alg lower case", json!({"alg": "hs256", "kid": KID_HS})),
        ("alg a number", json!({"alg": 256, "kid": KID_HS})),
        ("alg an array", json!({"alg": ["HS256"], "kid": KID_HS})),
    ] {
        cases.push(case(
            what,
            hs_bytes(header.to_string().as_bytes(), good_payload.as_bytes()),
            Invalid,
        ));
    }
    for (what, header) in [
        (
            "duplicate alg, none last",
            r#"{"alg":"HS256","alg":"none"}"#,
        ),
        (
            "duplicate alg, none first",
            r#"{"alg":"none","alg":"HS256"}"#,
        ),
    ] {
        cases.push(case(
            what,
            hs_bytes(header.as_bytes(), good_payload.as_bytes()),
            Invalid,
        ));
    }

    // --- RS/HS confusion ---------------------------------------------------------------------
    let pem = rsa_public_pem();
    let pem_text = String::from_utf8(pem.clone()).unwrap();
    let spki_der = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        pem_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    )
    .unwrap();
    let secrets: [(&str, Vec<u8>); 3] = [
        ("the RSA public PEM", pem.clone()),
        (
            "the RSA public PEM without its final newline",
            pem_text.trim_end().as_bytes().to_vec(),
        ),
        ("the RSA public key's SPKI DER", spki_der),
    ];
    for (what, secret) in &secrets {
        for kid in [None, Some(KID_RSA)] {
            let mut header = json!({"alg": "HS256", "typ": "JWT"});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            cases.push(case(
                format!("HS256 signed with {what} as secret, kid {kid:?}"),
                sign_raw(
                    header.to_string().as_bytes(),
                    good_payload.as_bytes(),
                    &jsonwebtoken::EncodingKey::from_secret(secret),
                    Algorithm::HS256,
                ),
                Invalid,
            ));
        }
    }
    cases.push(case(
        "HS256 signed with the EC public PEM as secret, kid of the EC key",
        sign_raw(
            json!({"alg": "HS256", "kid": KID_EC})
                .to_string()
                .as_bytes(),
            good_payload.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(&fixture("test_only_ec_p256_public.pem")),
            Algorithm::HS256,
        ),
        Invalid,
    ));
    cases.push(case(
        "RS256 by the trusted RSA key, kid of the HMAC key",
        encode(Algorithm::RS256, Some(KID_HS), &good(), &rsa_signing_key()),
        Invalid,
    ));
    cases.push(case(
        "HS256 with the right secret, kid of the RSA key",
        hs_bytes(
            json!({"alg": "HS256", "kid": KID_RSA})
                .to_string()
                .as_bytes(),
            good_payload.as_bytes(),
        ),
        Invalid,
    ));
    cases.push(case(
        "RS256 signature, header says RS384",
        sign_segments(
            &b64(json!({"alg": "RS384", "kid": KID_RSA})
                .to_string()
                .as_bytes()),
            &p,
            &rsa_signing_key(),
            Algorithm::RS256,
        ),
        Invalid,
    ));
    cases.push(case(
        "ES256 signature, header says ES384",
        {
            let t = sign_segments(
                &b64(json!({"alg": "ES256", "kid": KID_EC})
                    .to_string()
                    .as_bytes()),
                &p,
                &ec_signing_key(),
                Algorithm::ES256,
            );
            let sig = t.rsplit('.').next().unwrap().to_owned();
            format!(
                "{}.{p}.{sig}",
                b64(json!({"alg": "ES384", "kid": KID_EC})
                    .to_string()
                    .as_bytes())
            )
        },
        Invalid,
    ));

    // --- kid -----------------------------------------------------------------------------------
    for kid in [
        json!("nope"),
        json!("../../etc/passwd"),
        json!("/dev/null"),
        json!("hs-1/../hs-1"),
        json!("..\\..\\windows\\win.ini"),
        json!("hs-1\u{0}"),
        json!("hs-1 "),
        json!("HS-1"),
        json!(""),
        json!("hs-1' OR '1'='1"),
        json!("k".repeat(300)),
        json!(1),
        json!({"kid": KID_HS}),
        json!([KID_HS]),
    ] {
        let header = json!({"alg": "HS256", "kid": kid});
        cases.push(case(
            format!("kid {}", truncate(&kid.to_string())),
            hs_bytes(header.to_string().as_bytes(), good_payload.as_bytes()),
            Invalid,
        ));
    }

    // --- jku / x5u / embedded jwk: the attacker's own key ---------------------------------------
    for kid in [None, Some(KID_RSA), Some("attacker")] {
        let mut header = json!({
            "alg": "RS256",
            "jku": "https://attacker.example/jwks.json",
            "x5u": "https://attacker.example/cert.pem",
            "jwk": attacker_jwk(kid.unwrap_or("attacker")),
        });
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        cases.push(case(
            format!("jku, x5u and jwk of the attacker's key, kid {kid:?}"),
            sign_raw(
                header.to_string().as_bytes(),
                good_payload.as_bytes(),
                &attacker_signing_key(),
                Algorithm::RS256,
            ),
            Invalid,
        ));
    }
    cases.push(case(
        "jku alone, signed by the attacker",
        sign_raw(
            json!({"alg": "RS256", "jku": "https://attacker.example/jwks.json"})
                .to_string()
                .as_bytes(),
            good_payload.as_bytes(),
            &attacker_signing_key(),
            Algorithm::RS256,
        ),
        Invalid,
    ));

    // --- segments ------------------------------------------------------------------------------
    cases.push(case(
        "truncated: header.payload",
        format!("{h}.{p}"),
        Invalid,
    ));
    cases.push(case("truncated: header only", h.clone(), Invalid));
    cases.push(case("empty signature", format!("{h}.{p}."), Invalid));
    cases.push(case("empty payload", format!("{h}..{s}"), Invalid));
    cases.push(case("empty header", format!(".{p}.{s}"), Invalid));
    cases.push(case("four segments", format!("{good_token}.{s}"), Invalid));
    cases.push(case(
        "five segments",
        format!("{good_token}.{p}.{s}"),
        Invalid,
    ));
    cases.push(case("a trailing dot", format!("{good_token}."), Invalid));
    cases.push(case("only dots", "..", Invalid));

    // --- bad base64 ----------------------------------------------------------------------------
    cases.push(case(
        "header in the standard alphabet",
        standard_alphabet(true),
        Invalid,
    ));
    cases.push(case(
        "payload in the standard alphabet",
        standard_alphabet(false),
        Invalid,
    ));
    cases.push(case(
        "signature in the standard alphabet",
        {
            let t = token_with_url_safe_signature_char();
            let (m, sig) = t.rsplit_once('.').unwrap();
            format!("{m}.{}", sig.replace('-', "+").replace('_', "/"))
        },
        Invalid,
    ));
    for (what, header, payload) in [
        (
            "header with padding",
            format!("{}=", b64(json_with_unused_bits(&hs_header()).as_slice())),
            p.clone(),
        ),
        (
            "payload with padding",
            h.clone(),
            format!("{}=", b64(&json_with_unused_bits(&good()))),
        ),
        ("header of impossible length", format!("{h}A"), p.clone()),
        ("payload of impossible length", h.clone(), {
            let mut payload = p.clone();
            while payload.len() % 4 != 1 {
                payload.push('A');
            }
            payload
        }),
        (
            "header with unused bits set",
            noncanonical(&b64(&json_with_unused_bits(&hs_header()))),
            p.clone(),
        ),
        (
            "payload with unused bits set",
            h.clone(),
            noncanonical(&b64(&json_with_unused_bits(&good()))),
        ),
        (
            "header with a non-base64 character",
            format!("{h}!"),
            p.clone(),
        ),
        (
            "payload with a non-base64 character",
            h.clone(),
            format!("{p}*"),
        ),
    ] {
        // Signed over the bytes as sent: only the encoding is wrong.
        cases.push(case(
            what,
            sign_segments(&header, &payload, &hmac_signing_key(), Algorithm::HS256),
            Invalid,
        ));
    }
    cases.push(case(
        "signature with padding",
        format!("{good_token}="),
        Invalid,
    ));
    cases.push(case(
        "signature of impossible length",
        format!("{good_token}AA"),
        Invalid,
    ));
    cases.push(case(
        "signature with unused bits set",
        format!("{h}.{p}.{}", noncanonical(&s)),
        Invalid,
    ));
    cases.push(case(
        "signature with a non-base64 character",
        format!("{h}.{p}.{}~", &s[..s.len() - 1]),
        Invalid,
    ));

    // --- header JSON that is not a JSON object --------------------------------------------------
    for header in [
        "[]",
        r#"["HS256"]"#,
        r#"["HS256","hs-1"]"#,
        r#"["HS256","hs-1",null]"#,
        r#""HS256""#,
        "256",
        "null",
        "true",
        r#"{"alg":"HS256","kid":"hs-1""#,
        r#"{"alg":"HS256","kid":"hs-1"} {}"#,
        "\u{feff}{\"alg\":\"HS256\",\"kid\":\"hs-1\"}",
        "",
    ] {
        cases.push(case(
            format!("header {header:?}"),
            hs_bytes(header.as_bytes(), good_payload.as_bytes()),
            Invalid,
        ));
    }
    cases.push(case(
        "header not UTF-8",
        hs_bytes(
            b"{\"alg\":\"HS256\",\"kid\":\"hs-1\xff\"}",
            good_payload.as_bytes(),
        ),
        Invalid,
    ));

    // --- payload JSON that is not a JSON object -------------------------------------------------
    let header = hs_header().to_string();
    for payload in [
        "[]".to_owned(),
        format!("[{good_payload}]"),
        r#""alice""#.to_owned(),
        "12345".to_owned(),
        "1e400".to_owned(),
        "null".to_owned(),
        "true".to_owned(),
        good_payload[..good_payload.len() - 1].to_owned(),
        format!("{good_payload} {{}}"),
        format!("{good_payload}x"),
        "Example of Ed25519 signing".to_owned(),
    ] {
        cases.push(case(
            format!("payload {}", truncate(&payload)),
            hs_bytes(header.as_bytes(), payload.as_bytes()),
            Invalid,
        ));
    }
    let not_utf8: Vec<u8> = good_with_raw("x", "\"#\"")
        .into_iter()
        .map(|b| if b == b'#' { 0xff } else { b })
        .collect();
    cases.push(case(
        "payload not UTF-8",
        hs_bytes(header.as_bytes(), &not_utf8),
        Invalid,
    ));

    // --- nesting a thousand levels deep, properly signed ----------------------------------------
    for (what, raw) in [
        ("arrays", nested_array(1000)),
        ("objects", nested_object(1000)),
    ] {
        cases.push(case(
            format!("payload with {what} nested 1000 deep"),
            hs_bytes(header.as_bytes(), &good_with_raw("x", &raw)),
            Invalid,
        ));
    }
    for member in ["sub", "aud", "scope", "exp"] {
        let mut claims = good();
        claims.as_object_mut().unwrap().remove(member);
        let mut text = claims.to_string();
        text.pop();
        text.push_str(&format!(r#","{member}":{}}}"#, nested_array(1000)));
        cases.push(case(
            format!("{member} nested 1000 deep"),
            hs_bytes(header.as_bytes(), text.as_bytes()),
            Invalid,
        ));
    }
    cases.push(case(
        "payload nested 1000 deep at the top",
        hs_bytes(header.as_bytes(), nested_array(1000).as_bytes()),
        Invalid,
    ));

    // --- oversized -----------------------------------------------------------------------------
    cases.push(case(
        "a signed token of 8 KiB + 1",
        token_of_len(8 * 1024 + 1),
        TooLong,
    ));
    cases.push(case(
        "64 KiB of a JWS shape",
        format!("{h}.{}.{s}", "A".repeat(64 * 1024)),
        TooLong,
    ));
    cases.push(case(
        "1 MiB of a JWS shape",
        format!("{h}.{}.{s}", "A".repeat(1024 * 1024)),
        TooLong,
    ));

    // --- claims --------------------------------------------------------------------------------
    for (what, value) in [
        ("exp as a string", json!((T0 + 3600).to_string())),
        ("exp as a date string", json!("2030-03-17T18:00:00Z")),
        ("exp null", Value::Null),
        ("exp true", json!(true)),
        ("exp an array", json!([T0 + 3600])),
        ("exp negative", json!(-1)),
        ("exp 1e300", json!(1e300)),
    ] {
        cases.push(case(what, hs_token(&with("exp", value)), Invalid));
    }
    cases.push(case("exp missing", hs_token(&without("exp")), Invalid));
    cases.push(case(
        "nbf one second beyond the leeway",
        hs_token(&with("nbf", json!(T0 + 61))),
        Invalid,
    ));
    cases.push(case(
        "nbf as a string",
        hs_token(&with("nbf", json!(T0.to_string()))),
        Invalid,
    ));
    cases.push(case(
        "iat as a string",
        hs_token(&with("iat", json!(T0.to_string()))),
        Invalid,
    ));
    for (what, value) in [
        ("wrong iss", json!("https://evil.test")),
        ("iss with another case", json!("https://ISSUER.test")),
        ("iss with a trailing slash", json!("https://issuer.test/")),
        ("iss as an array", json!([ISSUER])),
        ("iss null", Value::Null),
    ] {
        cases.push(case(what, hs_token(&with("iss", value)), Invalid));
    }
    cases.push(case("iss missing", hs_token(&without("iss")), Invalid));
    for (what, value) in [
        ("wrong aud", json!("other")),
        ("aud array without ours", json!(["a", "b"])),
        ("aud empty array", json!([])),
        ("aud a number", json!(1)),
        ("aud an object", json!({"aud": AUDIENCE})),
    ] {
        cases.push(case(what, hs_token(&with("aud", value)), Invalid));
    }
    cases.push(case("aud missing", hs_token(&without("aud")), Invalid));
    cases.push(case(
        "expired one second beyond the leeway",
        hs_token(&with("exp", json!(T0 - 61))),
        Expired,
    ));
    cases.push(case(
        "expired long ago",
        hs_token(&with("exp", json!(1))),
        Expired,
    ));
    for crit in [
        json!(["exp"]),
        json!([]),
        json!(["b64"]),
        json!("exp"),
        Value::Null,
    ] {
        let header = json!({"alg": "HS256", "kid": KID_HS, "crit": crit});
        cases.push(case(
            format!("crit {crit}"),
            hs_bytes(header.to_string().as_bytes(), good_payload.as_bytes()),
            Invalid,
        ));
    }
    cases.push(case("sub missing", hs_token(&without("sub")), Invalid));
    for (what, value) in [
        ("sub empty", json!("")),
        ("sub null", Value::Null),
        ("sub an object", json!({"id": "alice"})),
        ("sub an array", json!(["alice"])),
        ("sub a fraction", json!(1.5)),
        ("sub true", json!(true)),
    ] {
        cases.push(case(what, hs_token(&with("sub", value)), Invalid));
    }
    cases.push(case(
        "scope a number",
        hs_token(&with("scope", json!(7))),
        Invalid,
    ));
    cases.push(case(
        "jti a number",
        hs_token(&with("jti", json!(7))),
        Invalid,
    ));
    cases.push(case(
        "signed with another HMAC secret",
        encode(
            Algorithm::HS256,
            Some(KID_HS),
            &good(),
            &jsonwebtoken::EncodingKey::from_secret(b"another secret, also 32 bytes long!"),
        ),
        Invalid,
    ));
    cases.push(case(
        "RS256 by the attacker's key, kid of ours",
        encode(
            Algorithm::RS256,
            Some(KID_RSA),
            &good(),
            &attacker_signing_key(),
        ),
        Invalid,
    ));

    // --- members named twice (RFC 7519 §4): readers could disagree on the claims -------------
    for (member, raw) in [
        ("scope", r#""admin""#),
        ("sub", r#""root""#),
        ("exp", &*(T0 + 999_999).to_string()),
        ("iss", r#""https://evil.example""#),
        ("aud", r#""other""#),
    ] {
        cases.push(case(
            format!("{member} twice"),
            hs_bytes(
                hs_header().to_string().as_bytes(),
                &good_with_raw(member, raw),
            ),
            Invalid,
        ));
    }
    cases.push(case(
        "scope twice, the second spelled with an escape",
        hs_bytes(
            hs_header().to_string().as_bytes(),
            &good_with_raw("sc\\u006fpe", r#""admin""#),
        ),
        Invalid,
    ));
    cases.push(case(
        "an unknown member twice",
        hs_bytes(
            hs_header().to_string().as_bytes(),
            &good_with_raw("plan", r#""free","plan":"pro""#),
        ),
        Invalid,
    ));
    cases
}

fn truncate(s: &str) -> String {
    if s.len() <= 40 {
        s.to_owned()
    } else {
        let mut end = 40;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}

/// `JwtVerifier::verify` gives the error the row expects (the verifier takes every credential
/// as a token, so its length limit is 8 KiB whatever the shape).
fn verify_error(verifier: &JwtVerifier, c: &Case) -> Result<(), String> {
    let result = verifier.verify(&c.token);
    let ok = matches!(
        (c.expect, &result),
        (Expect::Invalid, Err(e)) if !matches!(
            e,
            VerifyError::Expired | VerifyError::TooLong | VerifyError::KeysUnavailable
        )
    ) || matches!(
        (c.expect, &result),
        (Expect::Expired, Err(VerifyError::Expired)) | (Expect::TooLong, Err(VerifyError::TooLong))
    );
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}: expected {:?}, JwtVerifier::verify gave {:?}",
            c.name,
            c.expect,
            result.map(|p| p.id().to_owned())
        ))
    }
}

#[tokio::test]
async fn hostile_tokens_are_turned_away_exactly_as_the_contract_says() {
    let cases = hostile();
    assert!(cases.len() > 100, "{} cases", cases.len());
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(
            names.insert(c.name.clone()),
            "duplicate case name {}",
            c.name
        );
    }
    for (app_name, app, verifier) in apps() {
        let mut failures = Vec::new();
        for c in &cases {
            let reply = send(app.clone(), bearer(&c.token)).await;
            let expect = expected(app_name, c);
            let (status, www, detail) = match expect {
                Expect::Invalid => (401, INVALID_TOKEN, NOT_VALID),
                Expect::Expired => (401, EXPIRED, EXPIRED_DETAIL),
                Expect::TooLong => (400, INVALID_REQUEST, TOO_LONG),
            };
            let outcome = std::panic::catch_unwind(|| {
                assert_problem(&reply, status, Some(www), detail);
                assert_eq!(reply.header("cache-control"), Some("no-store"));
                // The response never echoes the token.
                let body = String::from_utf8_lossy(&reply.body);
                let sig = c.token.rsplit('.').next().unwrap_or_default();
                if sig.len() >= 16 {
                    assert!(!body.contains(sig), "body echoes the token");
                }
            });
            if outcome.is_err() {
                failures.push(format!(
                    "{app_name:?}: {} -> {} {:?} {}",
                    c.name,
                    reply.status,
                    reply.header("www-authenticate"),
                    String::from_utf8_lossy(&reply.body)
                ));
            }
            // Only an expired token says so.
            let says_expired = reply
                .header("www-authenticate")
                .is_some_and(|h| h.contains("token expired"));
            if says_expired != (c.expect == Expect::Expired) {
                failures.push(format!(
                    "{app_name:?}: {}: says expired: {says_expired}",
                    c.name
                ));
            }
            if let Err(e) = verify_error(&verifier, c) {
                failures.push(format!("{app_name:?}: {e}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} hostile tokens were answered wrongly:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
        assert_eq!(
            verifier.cached(),
            0,
            "{app_name:?}: a hostile token was cached"
        );
    }
}

/// The tokens the hostile rows are variations of, and the edges of the rules, are accepted by
/// the same apps: each row above differs from an accepted token in the one way it names.
#[tokio::test]
async fn controls_are_accepted() {
    let payload = good().to_string();
    let controls: Vec<(&str, String)> = vec![
        ("HS256 with kid", hs_token(&good())),
        (
            "HS256 without kid",
            encode(Algorithm::HS256, None, &good(), &hmac_signing_key()),
        ),
        (
            "RS256",
            encode(Algorithm::RS256, Some(KID_RSA), &good(), &rsa_signing_key()),
        ),
        (
            "RS256 without kid",
            encode(Algorithm::RS256, None, &good(), &rsa_signing_key()),
        ),
        (
            "ES256",
            encode(Algorithm::ES256, Some(KID_EC), &good(), &ec_signing_key()),
        ),
        (
            "EdDSA",
            encode(Algorithm::EdDSA, Some(KID_ED), &good(), &ed_signing_key()),
        ),
        (
            "HS256 by hand, header with padding bytes of JSON",
            hs_bytes(&json_with_unused_bits(&hs_header()), payload.as_bytes()),
        ),
        (
            "payload with spaces (the unused-bits rows' bytes)",
            hs_bytes(hs_header().to_string().as_bytes(), &json_with_unused_bits(&good())),
        ),
        ("a token of exactly 8 KiB", token_of_len(8 * 1024)),
        (
            "nbf at the edge of the leeway",
            hs_token(&with("nbf", json!(T0 + 60))),
        ),
        (
            "expired exactly by the leeway",
            hs_token(&with("exp", json!(T0 - 60))),
        ),
        ("the other issuer", hs_token(&with("iss", json!("https://other.test")))),
        (
            "aud array with ours",
            hs_token(&with("aud", json!(["x", AUDIENCE]))),
        ),
        ("numeric sub", hs_token(&with("sub", json!(12345)))),
        (
            "payload nested 100 deep",
            hs_bytes(hs_header().to_string().as_bytes(), &good_with_raw("x", &nested_array(100))),
        ),
        (
            "header with unknown members and jku",
            hs_bytes(
                json!({"alg": "HS256", "kid": KID_HS, "jku": "https://attacker.example/", "x": [1, {"y": 2}]})
                    .to_string()
                    .as_bytes(),
                payload.as_bytes(),
            ),
        ),
        ("the filler member of the alphabet rows", hs_token(&with("f", json!("???")))),
    ];
    for (app_name, app, verifier) in apps() {
        for (what, token) in &controls {
            let reply = send(app.clone(), bearer(token)).await;
            let expected_id = if *what == "numeric sub" {
                "12345"
            } else {
                "alice"
            };
            assert_eq!(
                (reply.status, reply.text()),
                (StatusCode::OK, format!("{expected_id}:Jwt").as_str()),
                "{app_name:?}: {what}"
            );
        }
        assert_eq!(verifier.cached(), controls.len(), "{app_name:?}");
    }
}

/// Hostile tokens sent again are answered the same: a rejection is not cached as anything,
/// and a good token seen between them does not change that.
#[tokio::test]
async fn hostile_tokens_stay_rejected_after_a_good_token_was_cached() {
    let (accepts, app, verifier) = apps().remove(0);
    let good_token = hs_token(&good());
    let hostile = hostile();
    for round in 0..2 {
        let reply = send(app.clone(), bearer(&good_token)).await;
        assert_eq!(reply.status, StatusCode::OK, "round {round}");
        for c in &hostile {
            let reply = send(app.clone(), bearer(&c.token)).await;
            let status = match expected(accepts, c) {
                Expect::TooLong => 400,
                _ => 401,
            };
            assert_eq!(reply.status.as_u16(), status, "round {round}: {}", c.name);
        }
    }
    assert_eq!(verifier.cached(), 1);
}
