//! keygate signs and verifies tokens with aws-lc-rs whatever crypto provider the process
//! installed for `jsonwebtoken`.
//!
//! This test binary installs, before anything else, a provider of its own as the process default:
//! it signs (through aws-lc-rs, so that the test can make tokens with `jsonwebtoken::encode`) and
//! counts every verifier asked of it, which refuses every signature. An application that
//! installed a slow or a broken provider is the case: keygate's verifiers must neither slow down
//! nor break, and must never ask the installed provider.

#![cfg(all(feature = "jwt", feature = "axum"))]

mod common;
mod jwt_support;

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{get_with, send, with_bearer};
use http::StatusCode;
use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier as ProviderVerifier};
use jsonwebtoken::errors::{ErrorKind, Result as JwtResult};
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use jwt_support::*;
use keygate::auth::AuthLayer;
use keygate::jwt::{JwtVerifier, TokenIssuer};

/// Verifiers the installed provider was asked for.
static ASKED: AtomicUsize = AtomicUsize::new(0);

fn refusing_verifier(_: &Algorithm, _: &DecodingKey) -> JwtResult<Box<dyn ProviderVerifier>> {
    ASKED.fetch_add(1, Ordering::SeqCst);
    Err(ErrorKind::InvalidAlgorithm.into())
}

/// Installs the application's provider first, as an application's `main` would.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let aws_lc = &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
        let provider: &'static CryptoProvider = Box::leak(Box::new(CryptoProvider {
            signer_factory: aws_lc.signer_factory,
            verifier_factory: refusing_verifier,
            key_utils: aws_lc.key_utils.clone(),
        }));
        provider
            .install_default()
            .expect("this test binary installs the first provider");
    });
}

#[tokio::test]
async fn tokens_verify_through_aws_lc_whatever_the_process_installed() {
    install();
    let verifier = JwtVerifier::with_keys(fixture_keys()).clock(clock());
    let app = common::routes().layer(AuthLayer::jwt_only(verifier));
    let cases = [
        (Algorithm::HS256, hmac_signing_key(), KID_HS),
        (Algorithm::RS256, rsa_signing_key(), KID_RSA),
        (Algorithm::ES256, ec_signing_key(), KID_EC),
        (Algorithm::EdDSA, ed_signing_key(), KID_ED),
    ];
    for (alg, key, kid) in cases {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        let claims = serde_json::json!({ "sub": "alice", "exp": T0 + 600 });
        let token = jsonwebtoken::encode(&header, &claims, &key).expect("a signed token");
        let reply = send(app.clone(), with_bearer("/me", &token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{alg:?}: {}", reply.text());
        assert_eq!(reply.json()["id"], "alice");

        // A signature of another key is still refused.
        let forged = jsonwebtoken::encode(&header, &claims, &attacker_signing_key());
        if let Ok(forged) = forged {
            let reply = send(app.clone(), with_bearer("/me", &forged)).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{alg:?}");
        }
    }
    let reply = send(app.clone(), get_with("/me", &[])).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        ASKED.load(Ordering::SeqCst),
        0,
        "the installed provider was asked"
    );

    // Minted tokens are signed through aws-lc-rs too, and verify.
    let issuer = TokenIssuer::new(rsa_signing_key(), Algorithm::RS256)
        .kid(KID_RSA)
        .clock(clock());
    let minted = issuer
        .issue("bob", ["weather:read"])
        .expect("a minted token");
    let reply = send(app, with_bearer("/me", &minted.access_token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["id"], "bob");
    assert_eq!(
        ASKED.load(Ordering::SeqCst),
        0,
        "the installed provider was asked"
    );

    // The installed provider really refuses: jsonwebtoken's own decode fails with it.
    let key = DecodingKey::from_rsa_pem(&rsa_public_pem()).expect("the RSA fixture");
    let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    let decoded =
        jsonwebtoken::decode::<serde_json::Value>(&minted.access_token, &key, &validation);
    assert!(decoded.is_err());
    assert!(ASKED.load(Ordering::SeqCst) > 0);
}
