//! The JWT front end: `JwtVerifier::verify` on raw strings, and on tokens the harness signs
//! with a trusted key so that what comes after the signature check (header rules, claims
//! parsing, issuer, audience, typed claims) is reached with hostile JSON.
//!
//! The first byte picks the mode:
//!
//! - `s`, `t`, `u`: the rest is a JOSE header, a newline, then a payload (any bytes: not
//!   necessarily JSON, duplicate members, deep nesting, huge numbers). The harness
//!   base64url-encodes both and signs them with the key without `kid`, using HS256, HS384 or
//!   HS512; the header's `alg` need not agree, so mismatches are explored too.
//! - `k`: the same, signed with the key named `k1` (HS256).
//! - anything else: the rest, as text, is handed to `verify` as it is.
//!
//! Checked on every input: no panic; an accepted token was signed by a trusted key (checked
//! without jsonwebtoken), has a non-empty subject, and is accepted the same way by a verifier
//! with a cache (twice: miss, then hit) and without; a stricter verifier (issuer, audience,
//! tier claim, typed claims) accepts only what the default one accepts, as the same principal.

#![no_main]

use std::sync::LazyLock;

use keygate::Principal;
use keygate::jwt::{JwtVerifier, VerifyError};
use keygate_fuzz::*;
use libfuzzer_sys::fuzz_target;

/// The default rules (signature, `exp` required, 60 s leeway), no cache: a verdict that
/// depends on this input only.
static PLAIN: LazyLock<JwtVerifier> =
    LazyLock::new(|| JwtVerifier::with_keys(jwt_keys()).clock(clock()).cache(0));

/// The same rules with a small cache, so that it fills up and its sweep runs as well.
static CACHED: LazyLock<JwtVerifier> =
    LazyLock::new(|| JwtVerifier::with_keys(jwt_keys()).clock(clock()).cache(64));

/// More rules on top of the default ones; never more lenient.
static STRICT: LazyLock<JwtVerifier> = LazyLock::new(|| {
    JwtVerifier::with_keys(jwt_keys())
        .clock(clock())
        .issuer(["https://issuer.test"])
        .audience(["api"])
        .tier_claim("tier")
        .claims::<serde_json::Value>()
        .cache(0)
});

/// `iss` as the subject: the claim then counts for the issuer rule and as the subject at once.
static ISS_AS_SUBJECT: LazyLock<JwtVerifier> = LazyLock::new(|| {
    JwtVerifier::with_keys(jwt_keys())
        .clock(clock())
        .subject_claim("iss")
        .issuer(["https://issuer.test"])
        .require_exp(false)
        .cache(0)
});

/// The part of a verdict two verifiers with the same rules must agree on.
fn verdict(result: &Result<Principal, VerifyError>) -> Result<(String, Vec<String>), &'static str> {
    match result {
        Ok(p) => Ok((
            p.id().to_owned(),
            p.scopes().iter().map(String::from).collect(),
        )),
        Err(e) => Err(e.as_str()),
    }
}

fn token(data: &[u8]) -> String {
    let Some((&mode, rest)) = data.split_first() else {
        return String::new();
    };
    let (alg, secret) = match mode {
        b's' => (Hs::Hs256, SECRET_A),
        b't' => (Hs::Hs384, SECRET_A),
        b'u' => (Hs::Hs512, SECRET_A),
        b'k' => (Hs::Hs256, SECRET_B),
        // Raw mode: invalid UTF-8 becomes U+FFFD, which no token contains; still worth
        // feeding through the length and shape checks.
        _ => return String::from_utf8_lossy(rest).into_owned(),
    };
    let (header, payload) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    sign(alg, secret, header, payload)
}

fuzz_target!(|data: &[u8]| {
    let token = token(data);

    let plain = PLAIN.verify(&token);
    let first = CACHED.verify(&token);
    let second = CACHED.verify(&token);
    let strict = STRICT.verify(&token);
    let by_iss = ISS_AS_SUBJECT.verify(&token);

    for accepted in [&plain, &first, &second, &strict, &by_iss]
        .into_iter()
        .flat_map(|r| r.as_ref().ok())
    {
        assert!(
            signed_by_trusted_key(&token),
            "accepted a token no trusted key signed: {token:?}"
        );
        assert!(!accepted.id().is_empty(), "accepted with an empty subject");
    }

    let expected = verdict(&plain);
    assert_eq!(verdict(&first), expected, "cache miss disagrees: {token:?}");
    assert_eq!(verdict(&second), expected, "cache hit disagrees: {token:?}");
    if let Ok(p) = &strict {
        assert_eq!(
            expected,
            verdict(&Ok(p.clone())),
            "the strict verifier accepted what the default one does not: {token:?}"
        );
        assert_eq!(p.owner(), Some("https://issuer.test"));
    }
    if let Ok(p) = &by_iss {
        assert_eq!(
            p.id(),
            "https://issuer.test",
            "the subject is not the issuer"
        );
    }
});
