//! Helpers shared by the JWT integration tests (`jwt_hostile`, `jwt_http`): the test-only key
//! fixtures, and ways to make tokens — with `jsonwebtoken::encode`, or segment by segment with
//! any header and payload bytes, signed with `jsonwebtoken::crypto::sign`.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keygate::clock::ManualClock;
use keygate::jwt::JwtKey;
use serde::Serialize;

/// The time every test clock starts at (2030-03-17): far from the real clock, so a test that
/// forgot its manual clock fails.
pub const T0: u64 = 1_900_000_000;

/// The HMAC secret the test verifiers trust (test-only).
pub const HMAC_SECRET: &[u8] = b"keygate tests: a test-only HMAC secret of 48 b";

/// Kids of the fixture keys in the test verifiers.
pub const KID_HS: &str = "hs-1";
pub const KID_RSA: &str = "rsa-1";
pub const KID_EC: &str = "ec-1";
pub const KID_ED: &str = "ed-1";

/// A manual clock at `T0`.
pub fn clock() -> ManualClock {
    ManualClock::at(UNIX_EPOCH + Duration::from_secs(T0))
}

/// A fixture file from `tests/fixtures/` (test-only keys made with `openssl genpkey`).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn rsa_public_pem() -> Vec<u8> {
    fixture("test_only_rsa_public.pem")
}

pub fn rsa_signing_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("test_only_rsa_private.pem")).expect("the RSA fixture")
}

pub fn ec_signing_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&fixture("test_only_ec_p256_private.pem")).expect("the EC fixture")
}

pub fn ed_signing_key() -> EncodingKey {
    EncodingKey::from_ed_pem(&fixture("test_only_ed25519_private.pem")).expect("the Ed fixture")
}

pub fn attacker_signing_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("test_only_attacker_rsa_private.pem"))
        .expect("the attacker RSA fixture")
}

pub fn hmac_signing_key() -> EncodingKey {
    EncodingKey::from_secret(HMAC_SECRET)
}

/// The four fixture public keys (and the HMAC secret), each with its kid.
pub fn fixture_keys() -> Vec<JwtKey> {
    vec![
        JwtKey::hmac(HMAC_SECRET).kid(KID_HS),
        JwtKey::rsa_pem(&rsa_public_pem()).unwrap().kid(KID_RSA),
        JwtKey::ec_pem(&fixture("test_only_ec_p256_public.pem"))
            .unwrap()
            .kid(KID_EC),
        JwtKey::ed_pem(&fixture("test_only_ed25519_public.pem"))
            .unwrap()
            .kid(KID_ED),
    ]
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("base64url")
}

/// `header.payload` as given (already encoded), signed with `key` and `alg`.
pub fn sign_segments(
    header_b64: &str,
    payload_b64: &str,
    key: &EncodingKey,
    alg: Algorithm,
) -> String {
    let message = format!("{header_b64}.{payload_b64}");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("signs");
    format!("{message}.{signature}")
}

/// A token with these exact header and payload bytes, signed with `key` and `alg`.
pub fn sign_raw(header: &[u8], payload: &[u8], key: &EncodingKey, alg: Algorithm) -> String {
    sign_segments(&b64(header), &b64(payload), key, alg)
}

/// A token with this header JSON and these claims, signed with the test HMAC secret (HS256).
pub fn hs256(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    sign_raw(
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
        &hmac_signing_key(),
        Algorithm::HS256,
    )
}

/// A token made by `jsonwebtoken::encode`.
pub fn encode(
    alg: Algorithm,
    kid: Option<&str>,
    claims: &impl Serialize,
    key: &EncodingKey,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("encodes")
}

/// An HS256 token with kid `KID_HS`, made by `jsonwebtoken::encode`.
pub fn hs_token(claims: &serde_json::Value) -> String {
    encode(Algorithm::HS256, Some(KID_HS), claims, &hmac_signing_key())
}
