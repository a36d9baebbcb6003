use std::borrow::Cow;
use std::fmt;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::claims::{ClaimNames, Registered};
use super::{Claims, JwtKey, KeySet, KeySource, Revocations, StaticKeys, TokenInfo};
use crate::MaybeReady;
use crate::clock::{self, Clock, SharedClock};
use crate::key::DigestHasher;
use crate::principal::{Principal, PrincipalKind};

/// The default limit on a token's length, in bytes.
const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;
/// The default number of verified tokens kept in the cache.
pub(crate) const DEFAULT_CACHE_ENTRIES: usize = 50_000;

/// Why a token was not accepted.
///
/// The reasons are for logs and tests. The auth layer answers all of them alike but
/// `TooLong`, `Expired` and `KeysUnavailable`, so that a client learns nothing about the
/// verifier's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token is longer than the verifier accepts (checked before any decoding).
    #[error("the token is longer than the verifier accepts")]
    TooLong,
    /// Not a compact JWS with a valid JOSE header and a JSON object of claims: bad base64 or
    /// JSON, an unknown `alg`, a `crit` header, a duplicate claim, a claim of the wrong type.
    #[error("the token is malformed")]
    Malformed,
    /// The header names a `kid` the verifier has no key for.
    #[error("the token names a key the verifier does not have")]
    UnknownKid,
    /// No key of the token's algorithm verifies its signature.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` is required and missing.
    #[error("the token has no expiry")]
    MissingExpiry,
    /// Past its `exp`, plus the leeway.
    #[error("the token has expired")]
    Expired,
    /// Before its `nbf`, less the leeway.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is missing or not one of the accepted issuers.
    #[error("the token is from another issuer")]
    WrongIssuer,
    /// `aud` names none of the accepted audiences.
    #[error("the token is for another audience")]
    WrongAudience,
    /// The subject claim is missing or empty.
    #[error("the token names no subject")]
    MissingSubject,
    /// The payload does not fit the claims type set with [`JwtVerifier::claims`].
    #[error("the token's claims do not fit the claims type")]
    ClaimsType,
    /// The token, its subject or its `jti` is revoked.
    #[error("the token is revoked")]
    Revoked,
    /// The key source has no keys at all (a JWKS that could not be fetched yet).
    #[error("no keys to verify the token with")]
    KeysUnavailable,
    /// The header's `typ` is not one the verifier accepts (see [`JwtVerifier::require_typ`]).
    #[error("the token is of another type")]
    WrongType,
}

impl VerifyError {
    /// A short, fixed name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::Malformed => "malformed",
            Self::UnknownKid => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::MissingExpiry => "missing_expiry",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingSubject => "missing_subject",
            Self::ClaimsType => "claims_type",
            Self::Revoked => "revoked",
            Self::KeysUnavailable => "keys_unavailable",
            Self::WrongType => "wrong_type",
        }
    }
}

/// What [`JwtVerifier::check`] does with a token whose `kid` it has no key for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnknownKid {
    /// Ask the key source to fetch keys, and check again once it has.
    Refetch,
    /// Refuse the token (the source fetched already).
    Refuse,
}

/// Inserts a verified token's typed claims into request extensions.
pub(crate) trait InsertClaims: Send + Sync {
    fn insert_into(&self, extensions: &mut http::Extensions);
}

impl<T: Send + Sync + 'static> InsertClaims for Claims<T> {
    fn insert_into(&self, extensions: &mut http::Extensions) {
        extensions.insert(self.clone());
    }
}

type DecodeClaims = fn(&[u8]) -> Result<Arc<dyn InsertClaims>, serde_json::Error>;

fn decode_claims<T: DeserializeOwned + Send + Sync + 'static>(
    payload: &[u8],
) -> Result<Arc<dyn InsertClaims>, serde_json::Error> {
    let claims: T = serde_json::from_slice(payload)?;
    Ok(Arc::new(Claims::new(claims)))
}

/// A token that passed verification: what the cache keeps and the layer hands on.
pub(crate) struct Verified {
    pub(crate) principal: Principal,
    pub(crate) claims: Option<Arc<dyn InsertClaims>>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    jti: Option<Box<str>>,
    pub(crate) generation: u64,
    /// Which verifier of a [`JwtIssuers`](super::JwtIssuers) verified it (0 for a lone
    /// verifier).
    pub(crate) route: usize,
}

/// The outcome of checking a token without waiting.
pub(crate) enum Outcome {
    Done(Result<Arc<Verified>, VerifyError>),
    /// The token names a key the source may fetch; check again when this completes.
    Refetch(MaybeReady<super::Refetch>),
}

/// Verifies JWT bearer tokens: signature with a pinned algorithm, then `exp`, `nbf`, `iss`,
/// `aud`, revocation; caches what it verified.
///
/// The rules cannot be talked out of by a token: the algorithms come from the key
/// configuration (`alg: none` and RS/HS confusion fail), `jku`, `x5u` and `jwk` headers are
/// never used, a `crit` header is refused, `exp` is required unless turned off, and the length
/// limit (default 8 KiB) is checked before any decoding.
///
/// ```
/// use std::time::Duration;
/// use keygate::jwt::{JwtKey, JwtVerifier, TokenIssuer};
///
/// let secret = b"a secret of at least 32 bytes, please!";
/// let verifier = JwtVerifier::with_keys([JwtKey::hmac(secret)])
///     .issuer(["https://auth.example.com"])
///     .audience(["weather"])
///     .leeway(Duration::from_secs(30));
///
/// let issuer = TokenIssuer::hmac(secret)
///     .issuer("https://auth.example.com")
///     .audience("weather");
/// let token = issuer.issue("user-1", ["weather:read"]).unwrap();
///
/// let principal = verifier.verify(&token.access_token).unwrap();
/// assert_eq!(principal.id(), "user-1");
/// assert!(principal.has_scope("weather:read"));
/// assert!(verifier.verify("not.a.token").is_err());
/// ```
#[derive(Clone)]
#[must_use]
pub struct JwtVerifier {
    inner: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    source: Arc<dyn KeySource>,
    issuers: Option<Vec<String>>,
    /// The one `typ` accepted (lower case, without `application/`); `None`: lenient.
    typ: Option<Box<str>>,
    /// Put before the subject in the principal's id.
    subject_prefix: Option<Box<str>>,
    audiences: Option<Vec<String>>,
    leeway: u64,
    require_exp: bool,
    max_len: usize,
    names: ClaimNames,
    claims: Option<DecodeClaims>,
    revocations: Option<Arc<dyn Revocations>>,
    cache: Option<Arc<Cache>>,
    clock: SharedClock,
}

/// Verified tokens by a keyed 64-bit hash of the token, each entry holding the token itself.
///
/// A hit needs the full token to match, so a hash collision is a miss, never a wrong verdict.
/// The hash key is random per process, so a client cannot steer a guessed token into a
/// comparison with a cached one; that is why the comparison may be a plain (fast) one, and why
/// no SHA-256 of the token is needed on the cached path.
pub(crate) struct Cache {
    map: DashMap<u64, (Box<str>, Arc<Verified>), std::hash::BuildHasherDefault<DigestHasher>>,
    hasher: foldhash::quality::RandomState,
    max: usize,
    last_sweep: AtomicU64,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    typ: Option<Cow<'a, str>>,
    /// `Some` whenever the member is there, even as `null`.
    #[serde(default, deserialize_with = "present")]
    crit: Option<IgnoredAny>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IgnoredAny>, D::Error> {
    IgnoredAny::deserialize(d).map(Some)
}

const MAX_KID_LEN: usize = 256;

/// Whether `s` has the shape of a compact JWS: three base64url segments, none empty.
pub(crate) fn looks_like_jws(s: &str) -> bool {
    // One branch-free pass over the bytes (it vectorises), then the dots.
    let foreign = s.bytes().fold(false, |foreign, b| {
        foreign | !(b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_') | (b == b'.'))
    });
    if foreign {
        return false;
    }
    // Exactly two dots, neither at an end nor next to the other; found by a vector search
    // (a token is a few hundred bytes, and `str::split` walks them a word at a time).
    let bytes = s.as_bytes();
    let mut dots = memchr::memchr_iter(b'.', bytes);
    match (dots.next(), dots.next(), dots.next()) {
        (Some(first), Some(second), None) => {
            first > 0 && second > first + 1 && second + 1 < bytes.len()
        }
        _ => false,
    }
}

/// Whether `signature` signs `message` under `key` with `alg`, checked by aws-lc-rs.
///
/// jsonwebtoken's own `verify` uses the crypto provider installed for the whole process, which
/// is whichever one some crate installed first: RustCrypto's verifies RS256 about ten times
/// slower, and a provider of the application's could verify nothing at all. keygate asks
/// aws-lc-rs's provider directly, so the backend its figures and its checks were made with is
/// the one that runs, whatever else the process installed.
pub(crate) fn signed_by(
    signature: &[u8],
    message: &[u8],
    key: &jsonwebtoken::DecodingKey,
    alg: Algorithm,
) -> bool {
    match (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.verifier_factory)(&alg, key) {
        // The verifier's signature type is a `Vec`; the copy is the signature's few bytes.
        Ok(verifier) => verifier.verify(message, &signature.to_vec()).is_ok(),
        Err(_) => false,
    }
}

impl JwtVerifier {
    /// A verifier of tokens signed by keys from `source`.
    pub fn new(source: impl KeySource) -> Self {
        // Signatures are checked with aws-lc-rs directly (`signed_by`). The process default
        // is still pinned to aws-lc-rs when nobody chose one, so that another crate in the
        // build enabling jsonwebtoken's RustCrypto backend too cannot make the key parsing it
        // does with the default panic at first use.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
        Self {
            inner: Arc::new(Config {
                source: Arc::new(source),
                issuers: None,
                typ: None,
                subject_prefix: None,
                audiences: None,
                leeway: 60,
                require_exp: true,
                max_len: DEFAULT_MAX_TOKEN_LEN,
                names: ClaimNames {
                    subject: "sub".into(),
                    tier: None,
                    quota: None,
                    owner: None,
                    credits: None,
                    scope: None,
                },
                claims: None,
                revocations: None,
                cache: Some(Arc::new(Cache::new(DEFAULT_CACHE_ENTRIES))),
                clock: clock::system(),
            }),
        }
    }

    /// A verifier of tokens signed by these fixed keys.
    pub fn with_keys(keys: impl IntoIterator<Item = JwtKey>) -> Self {
        Self::new(StaticKeys::new(KeySet::new(keys)))
    }

    /// The configuration, to change a setting no cached verdict depends on: the clock, the
    /// leeway, the length limit, the revocations (all checked on every use, cached or not).
    /// The cache stays as it is.
    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.inner)
    }

    /// The configuration, to change a rule a cached verdict depends on (issuer, audience,
    /// subject claim, claims type, ...). A verifier must never reuse a verdict reached under
    /// other rules: its cache is emptied, or, when clones share it, replaced by one of its own.
    fn rules(&mut self) -> &mut Config {
        let config = Arc::make_mut(&mut self.inner);
        if let Some(cache) = &mut config.cache {
            match Arc::get_mut(cache) {
                Some(own) => own.map.clear(),
                None => *cache = Arc::new(Cache::new(cache.max)),
            }
        }
        config
    }

    /// Accepts only tokens whose `iss` is one of these.
    pub fn issuer<S: Into<String>>(mut self, issuers: impl IntoIterator<Item = S>) -> Self {
        self.rules().issuers = Some(issuers.into_iter().map(Into::into).collect());
        self
    }

    /// Accepts only tokens whose header's `typ` is `typ` (RFC 8725 §3.11 explicit typing), such
    /// as `"at+jwt"` for OAuth access tokens (RFC 9068): a token without `typ`, or of another
    /// type (an ID token, a logout token), is refused. The comparison ignores case and an
    /// `application/` prefix (RFC 7515 §4.1.9).
    ///
    /// Without it the verifier is lenient: a token without `typ`, or with `JWT`, `at+jwt` or
    /// the generic `JOSE` (RFC 7515 §4.1.9), is accepted; a token that says it is something else (`logout+jwt`, `secevent+jwt`,
    /// `dpop+jwt`, ...) is meant for another purpose and is refused.
    ///
    /// ```
    /// use keygate::jwt::{JwtKey, JwtVerifier, TokenIssuer, VerifyError};
    ///
    /// let secret = b"a secret of at least 32 bytes, please!";
    /// let verifier = JwtVerifier::with_keys([JwtKey::hmac(secret)]).require_typ("at+jwt");
    /// let access = TokenIssuer::hmac(secret).typ("at+jwt").issue("u1", ["a"]).unwrap();
    /// let plain = TokenIssuer::hmac(secret).issue("u1", ["a"]).unwrap(); // typ JWT
    /// assert!(verifier.verify(&access.access_token).is_ok());
    /// assert_eq!(verifier.verify(&plain.access_token).unwrap_err(), VerifyError::WrongType);
    /// ```
    ///
    /// # Panics
    ///
    /// If `typ` is empty.
    pub fn require_typ(mut self, typ: &str) -> Self {
        let typ = normalise_typ(typ);
        assert!(!typ.is_empty(), "require_typ with an empty type");
        self.rules().typ = Some(typ.into());
        self
    }

    /// Accepts only tokens whose `aud` names one of these.
    pub fn audience<S: Into<String>>(mut self, audiences: impl IntoIterator<Item = S>) -> Self {
        self.rules().audiences = Some(audiences.into_iter().map(Into::into).collect());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf` (default 60 s; whole seconds).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.config().leeway = leeway.as_secs();
        self
    }

    /// Whether tokens must carry `exp` (default true).
    pub fn require_exp(mut self, required: bool) -> Self {
        self.rules().require_exp = required;
        self
    }

    /// The longest token accepted, in bytes (default 8 KiB). Longer ones get 400.
    pub fn max_token_len(mut self, max: usize) -> Self {
        self.config().max_len = max;
        self
    }

    /// The claim holding the caller's id (default `sub`). Strings and integers are accepted;
    /// integers are turned into their decimal text.
    pub fn subject_claim(mut self, claim: &str) -> Self {
        self.rules().names.subject = claim.into();
        self
    }

    /// The one claim holding the caller's scopes (a space-separated string, or an array of
    /// them), for an issuer that puts them elsewhere (`roles`, `groups`, ...). By default they
    /// are read from `scope`, `scp` and `permissions`; with this set, those are not read.
    pub fn scope_claim(mut self, claim: &str) -> Self {
        self.rules().names.scope = Some(claim.into());
        self
    }

    /// Puts `prefix` before the subject in the principal's id, such as `"partner:"`: the id is
    /// what rate limits, usage counts and subject revocations go by, so with several issuers
    /// (see [`JwtIssuers`](super::JwtIssuers)) a prefix per issuer keeps one issuer's `user-1`
    /// from sharing the limits of another's, or of an API key whose record id is `user-1`.
    ///
    /// ```
    /// use keygate::jwt::{JwtKey, JwtVerifier, TokenIssuer};
    ///
    /// let secret = b"a secret of at least 32 bytes, please!";
    /// let verifier = JwtVerifier::with_keys([JwtKey::hmac(secret)]).subject_prefix("partner:");
    /// let token = TokenIssuer::hmac(secret).issue("user-1", ["a"]).unwrap();
    /// assert_eq!(verifier.verify(&token.access_token).unwrap().id(), "partner:user-1");
    /// ```
    pub fn subject_prefix(mut self, prefix: &str) -> Self {
        self.rules().subject_prefix = (!prefix.is_empty()).then(|| prefix.into());
        self
    }

    /// The claim naming the caller's rate-limit tier.
    pub fn tier_claim(mut self, claim: &str) -> Self {
        self.rules().names.tier = Some(claim.into());
        self
    }

    /// The claim carrying the caller's own quota as text, such as `100/min` (what
    /// [`TokenIssuer::quota_claim`](super::TokenIssuer::quota_claim) writes): the rate-limit
    /// layer limits the caller by it, as it limits a key by the key's own quota. Set it only for
    /// tokens of issuers you trust with quotas (your own): a token whose claim is not a quota is
    /// rejected.
    pub fn quota_claim(mut self, claim: &str) -> Self {
        self.rules().names.quota = Some(claim.into());
        self
    }

    /// The claim naming the caller's owner (what
    /// [`TokenIssuer::owner_claim`](super::TokenIssuer::owner_claim) writes: a key's owner), so
    /// that owner-wide limits count a token minted for a key with the key's owner. Without it,
    /// a token's owner is its issuer (`iss`). Set it only for tokens of issuers you trust.
    pub fn owner_claim(mut self, claim: &str) -> Self {
        self.rules().names.owner = Some(claim.into());
        self
    }

    /// The claim (a boolean) saying that the caller spends its key's credits (what
    /// [`TokenIssuer::credits_claim`](super::TokenIssuer::credits_claim) writes for a key
    /// with a budget): the rate-limit layer then spends them for the token's subject, so a
    /// token never gets around its key's credits. Not a boolean: the token is refused.
    pub fn credits_claim(mut self, claim: &str) -> Self {
        self.rules().names.credits = Some(claim.into());
        self
    }

    /// Decodes the payload into `T` too, inserted into requests as [`Claims<T>`]. A token
    /// whose payload does not fit `T` is rejected.
    pub fn claims<T: DeserializeOwned + Send + Sync + 'static>(mut self) -> Self {
        self.rules().claims = Some(decode_claims::<T>);
        self
    }

    /// Checks every token against `revocations` after verification, cached or not.
    pub fn revocations(mut self, revocations: impl Revocations) -> Self {
        self.config().revocations = Some(Arc::new(revocations));
        self
    }

    /// Keeps up to `entries` verified tokens (default 50,000; each entry holds its token, a few
    /// hundred bytes); 0 turns the cache off.
    pub fn cache(mut self, entries: usize) -> Self {
        let config = self.config();
        config.cache = match (entries, config.cache.take()) {
            (0, _) => None,
            (entries, Some(mut cache)) => match Arc::get_mut(&mut cache) {
                Some(own) => {
                    own.max = entries;
                    Some(cache)
                }
                // Shared with clones: a cache of its own.
                None => Some(Arc::new(Cache::new(entries))),
            },
            (entries, None) => Some(Arc::new(Cache::new(entries))),
        };
        self
    }

    /// Reads time from `clock`.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.config().clock = Arc::new(clock);
        self
    }

    /// The longest token accepted.
    pub(crate) fn max_len(&self) -> usize {
        self.inner.max_len
    }

    /// Verifies `token` now, without fetching keys.
    pub fn verify(&self, token: &str) -> Result<Principal, VerifyError> {
        match self.check(token, UnknownKid::Refuse) {
            Outcome::Done(r) => r.map(|v| v.principal.clone()),
            Outcome::Refetch(_) => Err(VerifyError::UnknownKid),
        }
    }

    /// How many verified tokens the cache holds.
    pub fn cached(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, |c| c.map.len())
    }

    pub(crate) fn check(&self, token: &str, unknown_kid: UnknownKid) -> Outcome {
        let c = &*self.inner;
        if token.len() > c.max_len {
            return Outcome::Done(Err(VerifyError::TooLong));
        }
        let now = c.clock.unix_secs();
        let hash = c.cache.as_ref().map(|cache| cache.hash(token));
        if let (Some(cache), Some(hash)) = (&c.cache, hash)
            && let Some(hit) = cache.get(hash, token)
            && hit.generation == c.source.current_generation()
        {
            return Outcome::Done(self.still_valid(hit, now));
        }
        let verified = match self.verify_fully(token, unknown_kid, None) {
            Ok(v) => Arc::new(v),
            Err(outcome) => return outcome,
        };
        let result = self.still_valid(verified, now);
        if let (Ok(v), Some(cache), Some(hash)) = (&result, &c.cache, hash) {
            cache.insert(hash, token, v.clone(), now, c.leeway);
        }
        Outcome::Done(result)
    }

    /// The checks that depend on time and revocation, made on every use.
    fn still_valid(&self, v: Arc<Verified>, now: u64) -> Result<Arc<Verified>, VerifyError> {
        let c = &*self.inner;
        if v.exp.is_some_and(|exp| now > exp.saturating_add(c.leeway)) {
            return Err(VerifyError::Expired);
        }
        if v.nbf.is_some_and(|nbf| now.saturating_add(c.leeway) < nbf) {
            return Err(VerifyError::NotYetValid);
        }
        if let Some(revocations) = &c.revocations {
            let info = TokenInfo {
                subject: v.principal.id(),
                jti: v.jti.as_deref(),
                issued_at: v.iat,
            };
            if revocations.is_revoked(&info) {
                return Err(VerifyError::Revoked);
            }
        }
        Ok(v)
    }

    fn verify_fully(
        &self,
        token: &str,
        unknown_kid: UnknownKid,
        pre: Option<Payload>,
    ) -> Result<Verified, Outcome> {
        let c = &*self.inner;
        let refuse = |why| Outcome::Done(Err(why));
        let fail = || refuse(VerifyError::Malformed);
        let mut parts = token.splitn(3, '.');
        let (Some(header_b64), Some(payload_b64), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(fail());
        };
        if signature.contains('.') {
            return Err(fail());
        }
        let header_json = URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| fail())?;
        // A JOSE header is a JSON object (RFC 7515 §4); serde would also read `Header` from a
        // JSON array such as `["HS256"]`.
        if header_json.trim_ascii_start().first() != Some(&b'{') {
            return Err(fail());
        }
        let header: Header<'_> = serde_json::from_slice(&header_json).map_err(|_| fail())?;
        if header.crit.is_some() {
            return Err(fail());
        }
        let alg: Algorithm = header.alg.parse().map_err(|_| fail())?;
        let kid = header.kid.as_deref();
        if kid.is_some_and(|k| k.len() > MAX_KID_LEN) {
            return Err(fail());
        }
        if !typ_accepted(c.typ.as_deref(), header.typ.as_deref()) {
            return Err(refuse(VerifyError::WrongType));
        }
        let keys = c.source.current();
        if let Some(kid) = kid
            && !keys.has_kid(kid)
        {
            if unknown_kid == UnknownKid::Refetch
                && let Some(wait) = c.source.unknown_kid(kid)
            {
                return Err(Outcome::Refetch(wait));
            }
            return Err(refuse(if keys.keys.is_empty() {
                VerifyError::KeysUnavailable
            } else {
                VerifyError::UnknownKid
            }));
        }
        let message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        // A signature that is not base64url is no key's: decoded once for every candidate.
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap_or_default();
        let verified = !signature.is_empty()
            && keys
                .candidates(kid, alg)
                .any(|key| signed_by(&signature, message, &key.key, alg));
        if !verified {
            return Err(refuse(if keys.keys.is_empty() {
                VerifyError::KeysUnavailable
            } else {
                VerifyError::BadSignature
            }));
        }
        let (payload, parsed) = match pre {
            Some(pre) => (pre.bytes, pre.registered),
            None => (
                URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| fail())?,
                None,
            ),
        };
        let r = match parsed {
            Some(r) => r,
            None => Registered::parse(&payload, &c.names).map_err(|_| fail())?,
        };
        if c.require_exp && r.exp.is_none() {
            return Err(refuse(VerifyError::MissingExpiry));
        }
        if let Some(issuers) = &c.issuers
            && !r.iss.as_ref().is_some_and(|iss| issuers.contains(iss))
        {
            return Err(refuse(VerifyError::WrongIssuer));
        }
        if let Some(audiences) = &c.audiences
            && !r.aud.iter().any(|a| audiences.contains(a))
        {
            return Err(refuse(VerifyError::WrongAudience));
        }
        let Some(sub) = r.sub.filter(|s| !s.is_empty()) else {
            return Err(refuse(VerifyError::MissingSubject));
        };
        let claims = match c.claims {
            Some(decode) => Some(decode(&payload).map_err(|_| refuse(VerifyError::ClaimsType))?),
            None => None,
        };
        let id = match &c.subject_prefix {
            Some(prefix) => format!("{prefix}{sub}"),
            None => sub,
        };
        let mut principal = Principal::new(id, PrincipalKind::Jwt).with_scopes(r.scopes);
        if let Some(owner) = r.owner {
            principal = principal.with_owner(owner);
        } else if let Some(iss) = r.iss {
            principal = principal.with_owner(iss);
        }
        if r.credits {
            principal = principal.with_credits(true);
        }
        if let Some(tier) = r.tier {
            principal = principal.with_tier(tier);
        }
        if let Some(quota) = r.quota {
            let quota = quota
                .parse::<crate::Limits>()
                .map_err(|_| refuse(VerifyError::ClaimsType))?;
            principal = principal.with_quota(quota);
        }
        Ok(Verified {
            principal,
            claims,
            exp: r.exp,
            nbf: r.nbf,
            iat: r.iat,
            jti: r.jti.map(Into::into),
            generation: keys.generation,
            route: 0,
        })
    }
}

/// A token's payload, decoded (and parsed, when the claim names are known) before its issuer's
/// verifier was chosen, so that it is not decoded twice.
pub(crate) struct Payload {
    pub(crate) bytes: Vec<u8>,
    pub(crate) registered: Option<Registered>,
}

/// `typ` without an `application/` prefix (RFC 7515 §4.1.9).
fn media_subtype(typ: &str) -> &str {
    match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    }
}

/// `typ` as a rule keeps it: lower case, without an `application/` prefix.
fn normalise_typ(typ: &str) -> String {
    media_subtype(typ.trim()).to_ascii_lowercase()
}

/// Whether a header's `typ` passes the verifier's rule: `required` (normalised), or, when
/// `None`, the lenient default.
fn typ_accepted(required: Option<&str>, typ: Option<&str>) -> bool {
    let same = |typ: &str, want: &str| media_subtype(typ).eq_ignore_ascii_case(want);
    match (required, typ) {
        (Some(want), Some(typ)) => same(typ, want),
        (Some(_), None) => false,
        (None, None) => true,
        (None, Some(typ)) => ["jwt", "at+jwt", "jose"].iter().any(|want| same(typ, want)),
    }
}

/// What a [`JwtIssuers`](super::JwtIssuers) needs of its verifiers.
impl JwtVerifier {
    /// The issuers this verifier accepts, if it checks them.
    pub(crate) fn issuer_rule(&self) -> Option<&[String]> {
        self.inner.issuers.as_deref()
    }

    /// The claim names it reads.
    pub(crate) fn names(&self) -> &ClaimNames {
        &self.inner.names
    }

    /// The current generation of its keys.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.source.current_generation()
    }

    /// Its leeway, in seconds.
    pub(crate) fn leeway_secs(&self) -> u64 {
        self.inner.leeway
    }

    /// Now, by its clock, in whole seconds since the epoch.
    pub(crate) fn now_secs(&self) -> u64 {
        self.inner.clock.unix_secs()
    }

    /// Checks a token routed to it, whose payload was decoded already; no cache.
    pub(crate) fn check_routed(
        &self,
        token: &str,
        unknown_kid: UnknownKid,
        payload: Payload,
        route: usize,
        now: u64,
    ) -> Result<Arc<Verified>, Outcome> {
        if token.len() > self.inner.max_len {
            return Err(Outcome::Done(Err(VerifyError::TooLong)));
        }
        let mut verified = self.verify_fully(token, unknown_kid, Some(payload))?;
        verified.route = route;
        self.still_valid(Arc::new(verified), now)
            .map_err(|e| Outcome::Done(Err(e)))
    }

    /// The checks made on every use of a cached verdict.
    pub(crate) fn recheck(&self, v: Arc<Verified>, now: u64) -> Result<Arc<Verified>, VerifyError> {
        self.still_valid(v, now)
    }
}

impl Cache {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            map: DashMap::default(),
            hasher: foldhash::quality::RandomState::default(),
            max,
            last_sweep: AtomicU64::new(0),
        }
    }

    /// The verdict cached for `token` (whose hash is `hash`), if any.
    pub(crate) fn get(&self, hash: u64, token: &str) -> Option<Arc<Verified>> {
        self.map
            .get(&hash)
            .filter(|e| &*e.0 == token)
            .map(|e| e.1.clone())
    }

    /// The hash a token is cached by.
    pub(crate) fn hash(&self, token: &str) -> u64 {
        self.hasher.hash_one(token)
    }

    /// How many verdicts it holds.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn insert(&self, hash: u64, token: &str, v: Arc<Verified>, now: u64, leeway: u64) {
        if self.map.len() >= self.max {
            // At most one sweep a second: a cache full of live tokens is not swept in a loop.
            let last = self.last_sweep.load(Ordering::Relaxed);
            if now > last
                && self
                    .last_sweep
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.map
                    .retain(|_, (_, v)| v.exp.is_none_or(|exp| exp.saturating_add(leeway) >= now));
            }
            if self.map.len() >= self.max {
                return;
            }
        }
        self.map.insert(hash, (token.into(), v));
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &*self.inner;
        f.debug_struct("JwtVerifier")
            .field("issuers", &c.issuers)
            .field("typ", &c.typ)
            .field("audiences", &c.audiences)
            .field("leeway", &c.leeway)
            .field("require_exp", &c.require_exp)
            .field("max_len", &c.max_len)
            .field("cached", &self.cached())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::jwt::{MemoryRevocations, TokenIssuer};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn setup() -> (ManualClock, TokenIssuer, JwtVerifier, MemoryRevocations) {
        let clock = ManualClock::new();
        let revocations = MemoryRevocations::new();
        let issuer = TokenIssuer::hmac(SECRET)
            .clock(clock.clone())
            .ttl(Duration::from_secs(120));
        let verifier = JwtVerifier::with_keys([JwtKey::hmac(SECRET)])
            .clock(clock.clone())
            .leeway(Duration::from_secs(10))
            .revocations(revocations.clone());
        (clock, issuer, verifier, revocations)
    }

    #[test]
    fn cache_hit_then_expiry_at_exp() {
        let (clock, issuer, verifier, _) = setup();
        let token = issuer.issue("u1", ["a"]).unwrap().access_token;
        assert_eq!(verifier.verify(&token).unwrap().id(), "u1");
        assert_eq!(verifier.cached(), 1);
        assert_eq!(verifier.verify(&token).unwrap().id(), "u1");
        clock.advance(Duration::from_secs(130)); // exp + leeway
        assert!(verifier.verify(&token).is_ok());
        clock.advance(Duration::from_secs(1));
        assert_eq!(verifier.verify(&token).unwrap_err(), VerifyError::Expired);
    }

    #[test]
    fn settings_keep_the_cache_and_rules_empty_it() {
        let (_, issuer, verifier, _) = setup();
        let token = issuer.issue("u1", ["a"]).unwrap().access_token;
        assert!(verifier.verify(&token).is_ok());
        assert_eq!(verifier.cached(), 1);
        // Settings checked on every use keep the verdicts.
        let verifier = verifier
            .leeway(Duration::from_secs(5))
            .max_token_len(4096)
            .clock(ManualClock::new())
            .cache(10);
        assert_eq!(verifier.cached(), 1);
        // A clone shares the cache; a rule changed on it gives it a cache of its own.
        let strict = verifier.clone().audience(["other"]);
        assert_eq!((verifier.cached(), strict.cached()), (1, 0));
        assert_eq!(
            strict.verify(&token).unwrap_err(),
            VerifyError::WrongAudience
        );
        // A rule changed on the only handle empties its cache.
        let renamed = verifier.subject_claim("uid");
        assert_eq!(renamed.cached(), 0);
        assert_eq!(
            renamed.verify(&token).unwrap_err(),
            VerifyError::MissingSubject
        );
    }

    #[test]
    fn revocation_while_cached() {
        let (_, issuer, verifier, revocations) = setup();
        let token = issuer.issue("u2", ["a"]).unwrap().access_token;
        assert!(verifier.verify(&token).is_ok());
        revocations.revoke_subject_before("u2", u64::MAX);
        assert!(verifier.verify(&token).is_err());
    }

    #[test]
    fn key_removed_invalidates_cache() {
        let clock = ManualClock::new();
        let keys = StaticKeys::new(KeySet::new([JwtKey::hmac(SECRET).kid("k1")]));
        let verifier = JwtVerifier::new(keys.clone()).clock(clock.clone());
        let token = TokenIssuer::hmac(SECRET)
            .kid("k1")
            .clock(clock)
            .issue("u3", ["a"])
            .unwrap()
            .access_token;
        assert!(verifier.verify(&token).is_ok());
        keys.replace(KeySet::new([JwtKey::hmac(
            b"another secret, 32 bytes long!!",
        )
        .kid("k2")]));
        assert!(verifier.verify(&token).is_err());
    }

    #[test]
    fn wrong_secret_and_tampering_fail() {
        let (_, _, verifier, _) = setup();
        let other = TokenIssuer::hmac(b"not the secret, but 32 bytes long")
            .issue("u", ["a"])
            .unwrap()
            .access_token;
        assert!(verifier.verify(&other).is_err());
        let (_, issuer, verifier, _) = setup();
        let mut token = issuer.issue("u", ["a"]).unwrap().access_token;
        let last = token.pop().unwrap();
        token.push(if last == 'A' { 'B' } else { 'A' });
        assert!(verifier.verify(&token).is_err());
        assert_eq!(
            verifier.verify(&"a".repeat(9000)).unwrap_err(),
            VerifyError::TooLong
        );
    }

    #[test]
    fn typ_rules() {
        // Lenient: absent, JWT, at+jwt, with or without `application/`, in any case.
        for typ in [
            None,
            Some("JWT"),
            Some("jwt"),
            Some("at+jwt"),
            Some("application/AT+JWT"),
            Some("JOSE"),
        ] {
            assert!(typ_accepted(None, typ), "{typ:?}");
        }
        for typ in [
            "logout+jwt",
            "secevent+jwt",
            "dpop+jwt",
            "JOSE+JSON",
            "",
            "application/",
        ] {
            assert!(!typ_accepted(None, Some(typ)), "{typ:?}");
        }
        let want = normalise_typ(" Application/At+JWT ");
        assert_eq!(want, "at+jwt");
        assert!(typ_accepted(Some(&want), Some("at+jwt")));
        assert!(typ_accepted(Some(&want), Some("application/at+jwt")));
        assert!(!typ_accepted(Some(&want), Some("JWT")));
        assert!(!typ_accepted(Some(&want), None));
        // A multi-byte character where the prefix would end is no prefix, not a panic.
        assert!(!typ_accepted(Some(&want), Some("applicatio\u{e9}at+jwt")));

        let issuer = TokenIssuer::hmac(SECRET);
        let verifier = JwtVerifier::with_keys([JwtKey::hmac(SECRET)]).require_typ("at+jwt");
        let typed = issuer.clone().typ("at+jwt").issue("u", ["a"]).unwrap();
        assert!(verifier.verify(&typed.access_token).is_ok());
        let plain = issuer.issue("u", ["a"]).unwrap();
        assert_eq!(
            verifier.verify(&plain.access_token).unwrap_err(),
            VerifyError::WrongType
        );
    }

    #[test]
    fn scope_claim_reads_only_that_claim() {
        let issuer = TokenIssuer::hmac(SECRET);
        let token = issuer
            .issue_with(
                "u",
                ["from-scope"],
                serde_json::json!({ "roles": ["a", "b c"] }),
            )
            .unwrap()
            .access_token;
        let default = JwtVerifier::with_keys([JwtKey::hmac(SECRET)]);
        let p = default.verify(&token).unwrap();
        assert!(p.has_scope("from-scope") && !p.has_scope("a"));
        let roles = default.scope_claim("roles");
        let p = roles.verify(&token).unwrap();
        assert!(p.has_scope("a") && p.has_scope("b") && p.has_scope("c"));
        assert!(!p.has_scope("from-scope"));
    }

    #[test]
    fn jws_shape_agrees_with_splitting_on_dots() {
        // The shape by `str::split`, as it was checked before: three non-empty segments.
        let by_split = |s: &str| {
            let segments: Vec<&str> = s.split('.').collect();
            segments.len() == 3 && segments.iter().all(|seg| !seg.is_empty())
        };
        let long = "a".repeat(100);
        let mut cases: Vec<String> = [
            "", ".", "..", "...", "a", "a.", ".a", "a.b", "a..", ".a.", "..a",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for a in ["", "x", long.as_str()] {
            for b in ["", "y", long.as_str()] {
                for c in ["", "z", long.as_str()] {
                    cases.push(format!("{a}.{b}.{c}"));
                    cases.push(format!("{a}.{b}.{c}."));
                    cases.push(format!(".{a}.{b}.{c}"));
                    cases.push(format!("{a}.{b}.{c}.{a}"));
                }
            }
        }
        for case in &cases {
            assert_eq!(looks_like_jws(case), by_split(case), "{case:?}");
        }
    }

    #[test]
    fn jws_shape() {
        assert!(looks_like_jws("a.b.c"));
        assert!(looks_like_jws("eyJhbGciOiJIUzI1NiJ9.e30.sig-_"));
        assert!(!looks_like_jws("a.b."));
        assert!(!looks_like_jws("a..c"));
        assert!(!looks_like_jws("a.b.c.d"));
        assert!(!looks_like_jws("wk_live_abc"));
        assert!(!looks_like_jws("a.b.c="));
    }
}
