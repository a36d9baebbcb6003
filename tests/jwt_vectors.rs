//! Tokens made by other implementations: the signed examples of RFC 7515 appendix A.1 (HS256),
//! A.2 (RS256), A.3 (ES256) and RFC 8037 appendix A.4 (Ed25519), checked with their published
//! keys, and checked again after one byte of the signature, the payload and the header changes.
//!
//! The token strings and keys are copied from the RFCs. The A.1–A.3 payload is
//! `{"iss":"joe",\r\n "exp":1300819380,\r\n "http://example.com/is_root":true}`: no `sub`, and an
//! `exp` long past, so the verifier reads the subject from `iss` and runs on a clock set before
//! that `exp`. The RFC 8037 payload is the text "Example of Ed25519 signing", not JSON: its
//! signature is checked with `jsonwebtoken`, and keygate's verifier must refuse it.

#![cfg(feature = "jwt")]

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, EncodingKey};
use keygate::PrincipalKind;
use keygate::clock::ManualClock;
use keygate::jwt::{Algorithm, JwtKey, JwtVerifier, VerifyError};

// ---------------------------------------------------------------------------------------------
// The published examples

/// RFC 7515 A.1.1: `{"typ":"JWT",\r\n "alg":"HS256"}`.
const A1_HEADER: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9";
/// RFC 7515 A.2.1 and A.3.1: `{"alg":"RS256"}`, `{"alg":"ES256"}`.
const A2_HEADER: &str = "eyJhbGciOiJSUzI1NiJ9";
const A3_HEADER: &str = "eyJhbGciOiJFUzI1NiJ9";
/// RFC 7515 A.1.1 (the same payload in A.2 and A.3).
const PAYLOAD: &str = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
/// The payload, decoded: what `PAYLOAD` must be.
const PAYLOAD_JSON: &str =
    "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";

const A1_SIGNATURE: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const A2_SIGNATURE: &str = concat!(
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7",
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4",
    "BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K",
    "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv",
    "hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB",
    "p0igcN_IoypGlUPQGe77Rw",
);
const A3_SIGNATURE: &str = concat!(
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSA",
    "pmWQxfKTUJqPP3-Kg6NU1Q",
);

/// RFC 7515 A.1.1: the HMAC key.
const A1_JWK: &str = r#"{"kty":"oct",
 "k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
}"#;
/// RFC 7515 A.2.1: the RSA public key (n, e), with `alg` set, as a JWKS usually has it.
const A2_JWK: &str = concat!(
    r#"{"kty":"RSA","alg":"RS256","#,
    r#""n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddx"#,
    "HmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMs",
    "D1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSH",
    "SXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdV",
    "MTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8",
    r#"NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ","e":"AQAB"}"#,
);
/// RFC 7515 A.3.1: the P-256 public key (x, y).
const A3_JWK: &str = r#"{"kty":"EC","crv":"P-256",
 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
 "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
}"#;

/// RFC 8037 A.1/A.2: the Ed25519 public key, and A.1's private key `d` (used only to show that
/// a JSON payload signed by the same key does verify).
const ED_JWK: &str =
    r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
const ED_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
/// RFC 8037 A.4: the JWS of "Example of Ed25519 signing".
const ED_JWS: &str = concat!(
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.",
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg",
);

/// `exp` of the A.1–A.3 payload.
const EXP: u64 = 1_300_819_380;

// ---------------------------------------------------------------------------------------------
// Helpers

fn jwk(json: &str) -> Jwk {
    serde_json::from_str(json).expect("a JWK from the RFC")
}

fn key(json: &str) -> JwtKey {
    JwtKey::from_jwk(&jwk(json)).expect("keygate reads the RFC's JWK")
}

/// A.1's HMAC secret, as bytes.
fn a1_secret() -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_str(A1_JWK).unwrap();
    unb64(value["k"].as_str().unwrap())
}

/// Ed25519 signing key of RFC 8037 A.1 (`d`), as PKCS#8 v1 DER for jsonwebtoken.
fn rfc8037_signing_key() -> EncodingKey {
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&unb64(ED_D));
    EncodingKey::from_ed_der(&pkcs8)
}

fn token(header: &str, signature: &str) -> String {
    format!("{header}.{PAYLOAD}.{signature}")
}

/// A verifier for the A.1–A.3 examples: a clock before their `exp`, the subject in `iss`.
fn verifier(key: JwtKey, clock: &ManualClock) -> JwtVerifier {
    JwtVerifier::with_keys([key])
        .require_exp(false)
        .subject_claim("iss")
        .clock(clock.clone())
}

fn clock_before_exp() -> ManualClock {
    ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_300_819_000))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

/// `s` with its `i`-th character replaced by another base64url character that changes the
/// decoded bytes (not only the unused low bits of the last character).
fn change_char(s: &str, i: usize) -> String {
    let mut bytes = s.as_bytes().to_vec();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let changed = String::from_utf8(bytes).unwrap();
    assert_ne!(
        unb64(&changed),
        unb64(s),
        "the change must reach the decoded bytes"
    );
    changed
}

/// The decoded segment with `from` replaced by `to` (they differ in exactly one byte), encoded
/// again.
fn change_decoded(segment: &str, from: &[u8], to: &[u8]) -> String {
    let mut bytes = unb64(segment);
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the bytes to change are there");
    assert_eq!(from.len(), to.len());
    let differing = from.iter().zip(to).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 1, "exactly one byte changes");
    bytes[at..at + from.len()].copy_from_slice(to);
    b64(&bytes)
}

/// Whether `jsonwebtoken` itself accepts the signature of `token` with `key`.
fn raw_verify(token: &str, key: &DecodingKey, alg: Algorithm) -> bool {
    let (message, signature) = token.rsplit_once('.').unwrap();
    matches!(
        jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, alg),
        Ok(true)
    )
}

#[track_caller]
fn assert_invalid(verifier: &JwtVerifier, token: &str, what: &str) {
    // Every reason the HTTP layer answers as 401 `invalid_token`.
    match verifier.verify(token) {
        Err(e)
            if !matches!(
                e,
                VerifyError::Expired | VerifyError::TooLong | VerifyError::KeysUnavailable
            ) => {}
        other => panic!("{what}: expected an invalid token, got {other:?}"),
    }
}

/// The three tampered forms of an A.1–A.3 token, each also refused by `jsonwebtoken`'s own
/// signature check, so that the refusal is the signature's and not a parse error's (except for
/// A.3's header, which has no one-byte change that stays a valid ES256 header).
struct Tampered {
    signature: String,
    payload: String,
    header: String,
}

fn tampered(header: &str, new_header: String, signature: &str) -> Tampered {
    let sig_len = signature.len();
    Tampered {
        // A byte in the middle of the signature.
        signature: format!("{header}.{PAYLOAD}.{}", change_char(signature, sig_len / 2)),
        // "joe" becomes "jow": the payload stays valid JSON with a subject.
        payload: format!(
            "{header}.{}.{signature}",
            change_decoded(PAYLOAD, b"joe", b"jow")
        ),
        header: format!("{new_header}.{PAYLOAD}.{signature}"),
    }
}

#[track_caller]
fn assert_tampering_fails(
    verifier: &JwtVerifier,
    t: &Tampered,
    raw_key: &DecodingKey,
    alg: Algorithm,
) {
    for (what, token) in [
        ("signature", &t.signature),
        ("payload", &t.payload),
        ("header", &t.header),
    ] {
        assert_invalid(verifier, token, what);
        assert!(
            !raw_verify(token, raw_key, alg),
            "{what}: jsonwebtoken accepts the changed token"
        );
    }
    // Nothing was cached for any of them.
    assert_eq!(verifier.cached(), 0);
}

// ---------------------------------------------------------------------------------------------
// Sanity of the copied strings

#[test]
fn the_copied_segments_decode_to_the_rfc_texts() {
    assert_eq!(unb64(PAYLOAD), PAYLOAD_JSON.as_bytes());
    assert_eq!(
        unb64(A1_HEADER),
        b"{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}"
    );
    assert_eq!(unb64(A2_HEADER), br#"{"alg":"RS256"}"#);
    assert_eq!(unb64(A3_HEADER), br#"{"alg":"ES256"}"#);
    let mut ed = ED_JWS.split('.');
    assert_eq!(unb64(ed.next().unwrap()), br#"{"alg":"EdDSA"}"#);
    assert_eq!(unb64(ed.next().unwrap()), b"Example of Ed25519 signing");
    // Signature lengths: HMAC-SHA-256, RSA-2048, P-256 R||S, Ed25519.
    assert_eq!(unb64(A1_SIGNATURE).len(), 32);
    assert_eq!(unb64(A2_SIGNATURE).len(), 256);
    assert_eq!(unb64(A3_SIGNATURE).len(), 64);
    assert_eq!(unb64(ed.next().unwrap()).len(), 64);
}

// ---------------------------------------------------------------------------------------------
// RFC 7515 A.1: HS256

#[test]
fn rfc7515_a1_hs256_verifies_with_the_published_key() {
    let clock = clock_before_exp();
    let key = key(A1_JWK);
    assert_eq!(key.kid_str(), None);
    let v = verifier(key, &clock);
    let principal = v
        .verify(&token(A1_HEADER, A1_SIGNATURE))
        .expect("A.1 verifies");
    assert_eq!(principal.id(), "joe");
    assert_eq!(principal.kind(), PrincipalKind::Jwt);
    assert_eq!(principal.owner(), Some("joe"));
    assert!(principal.scopes().is_empty());
    assert_eq!(v.cached(), 1);

    // The same secret given as bytes to `JwtKey::hmac`.
    let secret = a1_secret();
    assert_eq!(secret.len(), 64);
    let v = verifier(JwtKey::hmac(&secret), &clock);
    assert_eq!(
        v.verify(&token(A1_HEADER, A1_SIGNATURE)).unwrap().id(),
        "joe"
    );
}

#[test]
fn rfc7515_a1_fails_after_one_byte_changes() {
    let clock = clock_before_exp();
    let v = verifier(key(A1_JWK), &clock);
    // "typ":"JWT" becomes "JWS": still a valid HS256 header.
    let header = change_decoded(A1_HEADER, b"JWT", b"JWS");
    let t = tampered(A1_HEADER, header, A1_SIGNATURE);
    let raw = DecodingKey::from_jwk(&jwk(A1_JWK)).unwrap();
    assert!(raw_verify(
        &token(A1_HEADER, A1_SIGNATURE),
        &raw,
        Algorithm::HS256
    ));
    assert_tampering_fails(&v, &t, &raw, Algorithm::HS256);
    // The untouched token still verifies with this verifier.
    assert!(v.verify(&token(A1_HEADER, A1_SIGNATURE)).is_ok());
}

#[test]
fn rfc7515_a1_is_refused_with_another_secret_or_algorithm() {
    let clock = clock_before_exp();
    let mut secret = a1_secret();
    secret[0] ^= 1;
    assert_invalid(
        &verifier(JwtKey::hmac(&secret), &clock),
        &token(A1_HEADER, A1_SIGNATURE),
        "another secret",
    );
    // The right secret, pinned to HS512 only: the token's HS256 is not allowed.
    let pinned = key(A1_JWK).algorithms([Algorithm::HS512]).unwrap();
    assert_invalid(
        &verifier(pinned, &clock),
        &token(A1_HEADER, A1_SIGNATURE),
        "HS256 on an HS512-only key",
    );
}

// ---------------------------------------------------------------------------------------------
// RFC 7515 A.2: RS256

#[test]
fn rfc7515_a2_rs256_verifies_with_the_published_key() {
    let clock = clock_before_exp();
    let v = verifier(key(A2_JWK), &clock);
    let principal = v
        .verify(&token(A2_HEADER, A2_SIGNATURE))
        .expect("A.2 verifies");
    assert_eq!(principal.id(), "joe");
    assert_eq!(principal.kind(), PrincipalKind::Jwt);
    // The same key without `alg` in the JWK: RS256 is the RSA default.
    let no_alg = A2_JWK.replace(r#""alg":"RS256","#, "");
    assert_ne!(no_alg, A2_JWK);
    let v = verifier(key(&no_alg), &clock);
    assert!(v.verify(&token(A2_HEADER, A2_SIGNATURE)).is_ok());
}

#[test]
fn rfc7515_a2_fails_after_one_byte_changes() {
    let clock = clock_before_exp();
    // The key also allows PS256, so that the header changed from RS256 to PS256 (one byte) is
    // refused by the signature check, not by algorithm pinning.
    let both = key(A2_JWK)
        .algorithms([Algorithm::RS256, Algorithm::PS256])
        .unwrap();
    let v = verifier(both, &clock);
    assert!(v.verify(&token(A2_HEADER, A2_SIGNATURE)).is_ok());
    let v = v.cache(0);
    let header = change_decoded(A2_HEADER, b"RS256", b"PS256");
    assert_eq!(unb64(&header), br#"{"alg":"PS256"}"#);
    let t = tampered(A2_HEADER, header.clone(), A2_SIGNATURE);
    let raw = DecodingKey::from_jwk(&jwk(A2_JWK)).unwrap();
    assert!(raw_verify(
        &token(A2_HEADER, A2_SIGNATURE),
        &raw,
        Algorithm::RS256
    ));
    assert_tampering_fails(&v, &t, &raw, Algorithm::RS256);
    assert!(!raw_verify(&t.header, &raw, Algorithm::PS256));
    // Pinned to RS256 alone (the JWK's `alg`), the PS256 header is refused as well.
    assert_invalid(&verifier(key(A2_JWK), &clock), &t.header, "PS256 header");
}

#[test]
fn rfc7515_a2_is_refused_under_another_rsa_key() {
    let clock = clock_before_exp();
    // One bit of the modulus changed: another (weak, but well-formed) public key.
    let mut jwk_value: serde_json::Value = serde_json::from_str(A2_JWK).unwrap();
    let mut n = unb64(jwk_value["n"].as_str().unwrap());
    let last = n.len() - 1;
    n[last] ^= 2;
    jwk_value["n"] = b64(&n).into();
    let other = key(&jwk_value.to_string());
    assert_invalid(
        &verifier(other, &clock),
        &token(A2_HEADER, A2_SIGNATURE),
        "another modulus",
    );
}

// ---------------------------------------------------------------------------------------------
// RFC 7515 A.3: ES256

#[test]
fn rfc7515_a3_es256_verifies_with_the_published_key() {
    let clock = clock_before_exp();
    let v = verifier(key(A3_JWK), &clock);
    let principal = v
        .verify(&token(A3_HEADER, A3_SIGNATURE))
        .expect("A.3 verifies");
    assert_eq!(principal.id(), "joe");
    assert_eq!(principal.kind(), PrincipalKind::Jwt);
}

#[test]
fn rfc7515_a3_fails_after_one_byte_changes() {
    let clock = clock_before_exp();
    let v = verifier(key(A3_JWK), &clock);
    // `{"alg":"ES256"}` has no one-byte change that stays a valid ES256 header; this one
    // ("ES256" to "ES250") is refused before the signature, and jsonwebtoken refuses it too.
    let header = change_decoded(A3_HEADER, b"ES256", b"ES250");
    let t = tampered(A3_HEADER, header, A3_SIGNATURE);
    let raw = DecodingKey::from_jwk(&jwk(A3_JWK)).unwrap();
    assert!(raw_verify(
        &token(A3_HEADER, A3_SIGNATURE),
        &raw,
        Algorithm::ES256
    ));
    assert_tampering_fails(&v, &t, &raw, Algorithm::ES256);
    assert!(v.verify(&token(A3_HEADER, A3_SIGNATURE)).is_ok());
}

#[test]
fn rfc7515_a3_is_refused_under_another_curve_point_or_algorithm() {
    let clock = clock_before_exp();
    // x and y swapped: not the signer's key (and not on the curve).
    let swapped = r#"{"kty":"EC","crv":"P-256",
 "x":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
 "y":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"}"#;
    assert_invalid(
        &verifier(key(swapped), &clock),
        &token(A3_HEADER, A3_SIGNATURE),
        "swapped point",
    );
    // The signature is R||S; its DER form, or R and S swapped, are not accepted.
    let sig = unb64(A3_SIGNATURE);
    let swapped_rs = [&sig[32..], &sig[..32]].concat();
    let v = verifier(key(A3_JWK), &clock);
    assert_invalid(&v, &token(A3_HEADER, &b64(&swapped_rs)), "S||R");
    // ES384 is not what the P-256 JWK is pinned to.
    let es384_header = b64(br#"{"alg":"ES384"}"#);
    assert_invalid(&v, &token(&es384_header, A3_SIGNATURE), "ES384 header");
}

// ---------------------------------------------------------------------------------------------
// RFC 8037 A.4: Ed25519 over a payload that is not JSON

#[test]
fn rfc8037_a4_signature_verifies_in_jsonwebtoken() {
    let raw = DecodingKey::from_jwk(&jwk(ED_JWK)).expect("the OKP JWK");
    assert!(raw_verify(ED_JWS, &raw, Algorithm::EdDSA));
    let (header, rest) = ED_JWS.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    for (what, changed) in [
        (
            "signature",
            format!(
                "{header}.{payload}.{}",
                change_char(signature, signature.len() / 2)
            ),
        ),
        (
            "payload",
            format!(
                "{header}.{}.{signature}",
                change_decoded(payload, b"Example", b"Exbmple")
            ),
        ),
        (
            "header",
            format!("{}.{payload}.{signature}", b64(br#"{"alg":"EdDSA" }"#)),
        ),
    ] {
        assert!(!raw_verify(&changed, &raw, Algorithm::EdDSA), "{what}");
    }
}

#[test]
fn rfc8037_a4_is_refused_by_keygate_because_its_payload_is_not_a_json_object() {
    let key = key(ED_JWK);
    let v = JwtVerifier::with_keys([key]).require_exp(false);
    assert_invalid(&v, ED_JWS, "a text payload");
    assert_eq!(v.cached(), 0);

    // The same published key does verify a JSON payload signed with the RFC's private key
    // (RFC 8037 A.1's `d`, wrapped in PKCS#8 for jsonwebtoken), so the refusal above is the
    // payload's, not the key's.
    let signing = rfc8037_signing_key();
    let header = b64(br#"{"alg":"EdDSA"}"#);
    let payload = b64(br#"{"sub":"rfc8037"}"#);
    let message = format!("{header}.{payload}");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &signing, Algorithm::EdDSA).unwrap();
    let json_token = format!("{message}.{signature}");
    assert_eq!(
        v.verify(&json_token).expect("a JSON payload").id(),
        "rfc8037"
    );
    // The RFC's own text payload, signed again with `d`: Ed25519 is deterministic, so the
    // RFC's token comes out byte for byte, which also shows that `d` and `x` belong together.
    let text_message = format!("{header}.{}", b64(b"Example of Ed25519 signing"));
    let text_signature =
        jsonwebtoken::crypto::sign(text_message.as_bytes(), &signing, Algorithm::EdDSA).unwrap();
    assert_eq!(format!("{text_message}.{text_signature}"), ED_JWS);
}

#[test]
fn rfc8037_public_key_is_usable_through_every_ed25519_constructor() {
    // `from_jwk`, `ed_der` (the 32 raw bytes) and `ed_pem` (SPKI) give the same key.
    let x = unb64(
        serde_json::from_str::<serde_json::Value>(ED_JWK).unwrap()["x"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(x.len(), 32);
    let spki: Vec<u8> = [
        &[
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ][..],
        &x,
    ]
    .concat();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let signing = rfc8037_signing_key();
    let header = b64(br#"{"alg":"EdDSA"}"#);
    let payload = b64(br#"{"sub":"ed"}"#);
    let message = format!("{header}.{payload}");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &signing, Algorithm::EdDSA).unwrap();
    let token = format!("{message}.{signature}");
    for (what, key) in [
        ("from_jwk", key(ED_JWK)),
        ("ed_der", JwtKey::ed_der(&x)),
        (
            "ed_pem",
            JwtKey::ed_pem(pem.as_bytes()).expect("an SPKI PEM"),
        ),
    ] {
        let v = JwtVerifier::with_keys([key]).require_exp(false);
        assert_eq!(
            v.verify(&token).map(|p| p.id().to_owned()).ok().as_deref(),
            Some("ed"),
            "{what}"
        );
        assert_invalid(&v, ED_JWS, what);
    }
}

// ---------------------------------------------------------------------------------------------
// `exp` of the examples, on the manual clock

#[test]
fn the_examples_expire_at_their_exp_plus_leeway() {
    for (jwk_json, header, signature) in [
        (A1_JWK, A1_HEADER, A1_SIGNATURE),
        (A2_JWK, A2_HEADER, A2_SIGNATURE),
        (A3_JWK, A3_HEADER, A3_SIGNATURE),
    ] {
        let token = token(header, signature);
        // At exp + leeway (60 s by default): still valid.
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(EXP + 60));
        let v = verifier(key(jwk_json), &clock);
        assert!(v.verify(&token).is_ok(), "{header}");
        // One second later: expired, said as such, even though it is cached.
        clock.advance(Duration::from_secs(1));
        assert_eq!(v.verify(&token).unwrap_err(), VerifyError::Expired);
        // On the real clock (2011 is long past), with `exp` required or not.
        let now = JwtVerifier::with_keys([key(jwk_json)]).subject_claim("iss");
        assert_eq!(now.verify(&token).unwrap_err(), VerifyError::Expired);
        let now = now.require_exp(false);
        assert!(now.verify(&token).is_err());
    }
}

#[test]
fn the_examples_have_no_sub_so_the_default_subject_claim_refuses_them() {
    let clock = clock_before_exp();
    for (jwk_json, header, signature) in [
        (A1_JWK, A1_HEADER, A1_SIGNATURE),
        (A2_JWK, A2_HEADER, A2_SIGNATURE),
        (A3_JWK, A3_HEADER, A3_SIGNATURE),
    ] {
        let v = JwtVerifier::with_keys([key(jwk_json)])
            .require_exp(false)
            .clock(clock.clone());
        assert_invalid(&v, &token(header, signature), "no sub");
        // With issuer and audience rules: "joe" is accepted as issuer; an audience the token
        // does not carry is refused.
        let v = verifier(key(jwk_json), &clock).issuer(["joe"]);
        assert!(v.verify(&token(header, signature)).is_ok());
        let v = verifier(key(jwk_json), &clock).issuer(["jane"]);
        assert_invalid(&v, &token(header, signature), "wrong iss");
        let v = verifier(key(jwk_json), &clock).audience(["anyone"]);
        assert_invalid(&v, &token(header, signature), "no aud");
    }
}
