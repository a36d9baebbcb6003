use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jsonwebtoken::{Algorithm, DecodingKey};

/// A key a [`JwtVerifier`](super::JwtVerifier) accepts signatures from, with the algorithms it
/// may be used with — fixed here, never taken from a token.
///
/// ```
/// use keygate::jwt::{Algorithm, JwtKey};
///
/// let key = JwtKey::hmac(b"a secret of at least 32 bytes, please!")
///     .kid("2026-11")
///     .algorithms([Algorithm::HS256, Algorithm::HS512])
///     .unwrap();
/// assert_eq!(key.kid_str(), Some("2026-11"));
/// assert!(JwtKey::hmac(b"x").algorithms([Algorithm::RS256]).is_err());
/// ```
#[derive(Clone)]
pub struct JwtKey {
    pub(crate) kid: Option<Arc<str>>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

/// A key could not be read or configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtKeyError {
    /// The PEM, DER or JWK could not be parsed.
    #[error("the key could not be read: {0}")]
    Parse(#[source] jsonwebtoken::errors::Error),
    /// An algorithm does not belong to the key's family (RS256 on an HMAC key, ...).
    #[error("algorithm {0:?} does not fit this key")]
    Algorithm(Algorithm),
    /// The JWK's key type is not one keygate verifies with.
    #[error("unsupported key type")]
    Unsupported,
    /// The JWK set is not valid JSON of the expected shape.
    #[error("the JWK set could not be read: {0}")]
    JwkSet(#[source] serde_json::Error),
}

impl JwtKey {
    fn new(key: DecodingKey, alg: Algorithm) -> Self {
        Self {
            kid: None,
            algorithms: vec![alg],
            key,
        }
    }

    /// An HMAC secret, for HS256 (change with [`algorithms`](Self::algorithms)).
    pub fn hmac(secret: &[u8]) -> Self {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// An RSA public key in PEM, for RS256.
    pub fn rsa_pem(pem: &[u8]) -> Result<Self, JwtKeyError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(JwtKeyError::Parse)?;
        Ok(Self::new(key, Algorithm::RS256))
    }

    /// An RSA public key in DER (PKCS#1), for RS256.
    pub fn rsa_der(der: &[u8]) -> Self {
        Self::new(DecodingKey::from_rsa_der(der), Algorithm::RS256)
    }

    /// An EC public key in PEM, for ES256 (use [`algorithms`](Self::algorithms) for ES384).
    pub fn ec_pem(pem: &[u8]) -> Result<Self, JwtKeyError> {
        let key = DecodingKey::from_ec_pem(pem).map_err(JwtKeyError::Parse)?;
        Ok(Self::new(key, Algorithm::ES256))
    }

    /// An EC public key in DER, for ES256.
    pub fn ec_der(der: &[u8]) -> Self {
        Self::new(DecodingKey::from_ec_der(der), Algorithm::ES256)
    }

    /// An Ed25519 public key in PEM, for EdDSA.
    pub fn ed_pem(pem: &[u8]) -> Result<Self, JwtKeyError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(JwtKeyError::Parse)?;
        Ok(Self::new(key, Algorithm::EdDSA))
    }

    /// An Ed25519 public key as its 32 raw bytes, for EdDSA.
    pub fn ed_der(der: &[u8]) -> Self {
        Self::new(DecodingKey::from_ed_der(der), Algorithm::EdDSA)
    }

    /// A key from a JWK. Its `kid` and `alg` are kept; without an `alg`, the family's usual
    /// one (RS256, ES256 on P-256, ES384 on P-384, EdDSA, HS256) is pinned.
    pub fn from_jwk(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Self, JwtKeyError> {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
        let key = DecodingKey::from_jwk(jwk).map_err(JwtKeyError::Parse)?;
        let alg = match jwk.common.key_algorithm {
            Some(a) => a
                .to_string()
                .parse::<Algorithm>()
                .map_err(JwtKeyError::Parse)?,
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                    Algorithm::ES384
                }
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                _ => return Err(JwtKeyError::Unsupported),
            },
        };
        let mut key = Self::new(key, alg).algorithms([alg])?;
        key.kid = jwk.common.key_id.as_deref().map(Arc::from);
        Ok(key)
    }

    /// Every usable key of a JWK set (JSON). Keys marked for encryption (`"use": "enc"`) and
    /// keys that cannot be read are skipped.
    pub fn from_jwk_set(json: &str) -> Result<Vec<Self>, JwtKeyError> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(json).map_err(JwtKeyError::JwkSet)?;
        Ok(set
            .keys
            .iter()
            .filter(|k| {
                !matches!(
                    k.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                )
            })
            .filter_map(|k| Self::from_jwk(k).ok())
            .collect())
    }

    /// Names the key: tokens whose header carries this `kid` are checked against it alone.
    #[must_use]
    pub fn kid(mut self, kid: impl Into<Arc<str>>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key's id, if it has one.
    pub fn kid_str(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithms the key may verify, all of its family.
    pub fn algorithms(
        mut self,
        algorithms: impl IntoIterator<Item = Algorithm>,
    ) -> Result<Self, JwtKeyError> {
        let family = self.key.family();
        let algorithms: Vec<_> = algorithms.into_iter().collect();
        if let Some(bad) = algorithms.iter().find(|a| a.family() != family) {
            return Err(JwtKeyError::Algorithm(*bad));
        }
        self.algorithms = algorithms;
        Ok(self)
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The keys a verifier trusts at one moment. Each set has its own generation number, so cached
/// verdicts made with an older set are never reused after the keys change.
#[derive(Debug, Clone)]
pub struct KeySet {
    pub(crate) keys: Vec<JwtKey>,
    pub(crate) generation: u64,
}

impl KeySet {
    /// A set of these keys.
    pub fn new(keys: impl IntoIterator<Item = JwtKey>) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// This set's generation: unique per `KeySet::new`, for
    /// [`KeySource::current_generation`](super::KeySource::current_generation).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The keys.
    pub fn keys(&self) -> &[JwtKey] {
        &self.keys
    }

    /// Whether a key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys that may check a token with this `kid` and `alg`: with a `kid`, the key of that
    /// id; without one, every key allowing `alg`.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a JwtKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.algorithms.contains(&alg)
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }
}
