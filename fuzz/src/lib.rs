//! What the fuzz targets share: fixed keys and secrets (so that the seed corpus can hold valid
//! credentials and every crash reproduces), a fixed clock, an independent HMAC signer used both
//! to mint tokens and as an oracle for signatures keygate accepted, and a byte-substring search.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use keygate::clock::ManualClock;
use keygate::jwt::{Algorithm, JwtKey};
use sha2::{Sha256, Sha384, Sha512};

/// The time every target runs at (2023-11-14T22:13:20Z). Tokens in the seeds expire at
/// 1_900_000_000, so they stay valid whatever the date of the run; a wall clock would make a
/// crash depend on the day it is replayed.
pub const NOW_SECS: u64 = 1_700_000_000;

/// A clock stopped at [`NOW_SECS`].
pub fn clock() -> ManualClock {
    ManualClock::at(UNIX_EPOCH + Duration::from_secs(NOW_SECS))
}

/// The secret of the verifier's key without a `kid`, trusted for HS256, HS384 and HS512.
pub const SECRET_A: &[u8] = b"keygate-fuzz-secret-A-at-least-32-bytes";
/// The secret of the key named [`KID_B`], trusted for HS256 only.
pub const SECRET_B: &[u8] = b"keygate-fuzz-secret-B-at-least-32-bytes";
/// The `kid` of the second key.
pub const KID_B: &str = "k1";

/// Valid `kg_` keys (checksums included) registered in the targets' stores. Fixed rather than
/// issued at random, so that the fuzzer can find them in the seeds and a crash on an admitted
/// request replays in another process.
pub const ACTIVE_KEY: &str = "kg_FuzzActiveKey0000000000000000000176Yst";
/// Registered, then revoked.
pub const REVOKED_KEY: &str = "kg_FuzzRevokedKey0000000000000000000KtpS5";
/// Registered with an expiry before [`NOW_SECS`].
pub const EXPIRED_KEY: &str = "kg_FuzzExpiredKey0000000000000000004DRbuk";
/// A key in no format (brought from an older system): it skips the checksum and goes to the
/// store as it is.
pub const LEGACY_KEY: &str = "legacy-fuzz-key-0001";

/// The record ids of the keys that may be admitted.
pub const ACTIVE_ID: &str = "key_active";
/// The record id of [`LEGACY_KEY`].
pub const LEGACY_ID: &str = "key_legacy";

/// The HMAC algorithms the harness signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hs {
    /// HMAC-SHA256.
    Hs256,
    /// HMAC-SHA384.
    Hs384,
    /// HMAC-SHA512.
    Hs512,
}

impl Hs {
    /// The JOSE algorithm of the same name.
    pub fn algorithm(self) -> Algorithm {
        match self {
            Hs::Hs256 => Algorithm::HS256,
            Hs::Hs384 => Algorithm::HS384,
            Hs::Hs512 => Algorithm::HS512,
        }
    }
}

/// The keys every verifier in the targets trusts.
pub fn jwt_keys() -> Vec<JwtKey> {
    let a = JwtKey::hmac(SECRET_A)
        .algorithms([Algorithm::HS256, Algorithm::HS384, Algorithm::HS512])
        .expect("HS* algorithms fit an HMAC key");
    let b = JwtKey::hmac(SECRET_B).kid(KID_B);
    vec![a, b]
}

/// The (secret, algorithm) pairs that [`jwt_keys`] trusts.
const TRUSTED: [(&[u8], Hs); 4] = [
    (SECRET_A, Hs::Hs256),
    (SECRET_A, Hs::Hs384),
    (SECRET_A, Hs::Hs512),
    (SECRET_B, Hs::Hs256),
];

/// The raw HMAC of `message`.
pub fn hmac(alg: Hs, secret: &[u8], message: &[u8]) -> Vec<u8> {
    // `new_from_slice` fails only for MACs with a fixed key length; HMAC takes any length.
    macro_rules! mac {
        ($hash:ty) => {{
            let mut mac =
                Hmac::<$hash>::new_from_slice(secret).expect("HMAC accepts keys of any length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }};
    }
    match alg {
        Hs::Hs256 => mac!(Sha256),
        Hs::Hs384 => mac!(Sha384),
        Hs::Hs512 => mac!(Sha512),
    }
}

/// A compact JWS of these exact header and payload bytes (not necessarily JSON, not
/// necessarily UTF-8), signed with `secret`. Signed here rather than by keygate's
/// `TokenIssuer`, which would only ever produce well-formed claims.
pub fn sign(alg: Hs, secret: &[u8], header: &[u8], payload: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let signature = hmac(alg, secret, token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

/// The oracle for tokens keygate accepted: `token` is `header.payload.signature` and the
/// signature is a trusted key's HMAC of `header.payload`, with one of the algorithms that key
/// is trusted for. Computed without jsonwebtoken, so a signature bypass in keygate or in its
/// JWT library shows. (Which algorithm the header names is not checked: the three HMAC outputs
/// differ in length, so none can pass for another.)
pub fn signed_by_trusted_key(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature_b64) else {
        return false;
    };
    let message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    TRUSTED
        .iter()
        .any(|&(secret, alg)| hmac(alg, secret, message) == signature)
}

/// Whether `needle` occurs in `haystack`. An empty needle occurs everywhere.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// `SystemTime` of a number of seconds since the epoch.
pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Appends one header per `name: value` line to `req`. Lines without a colon, and names or
/// values a server's HTTP parser would refuse before any middleware sees the request, are
/// skipped: they are no crash of keygate's.
pub fn append_header_lines<'a>(req: &mut http::Request<()>, lines: impl Iterator<Item = &'a [u8]>) {
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(value),
        ) {
            req.headers_mut().append(name, value);
        }
    }
}
