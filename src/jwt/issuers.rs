use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::claims::{ClaimNames, Registered, issuer_of};
use super::verifier::{Cache, DEFAULT_CACHE_ENTRIES, Payload};
use super::{JwtVerifier, Outcome, UnknownKid, VerifyError};
use crate::principal::Principal;

/// Verifies tokens of several issuers, each with its own [`JwtVerifier`]: its keys,
/// algorithms, audiences, leeway, claim names, revocations.
///
/// A token goes to the verifier whose [`issuer`](JwtVerifier::issuer) rule names the token's
/// `iss`, chosen before its signature is checked, and is verified with that verifier's keys
/// only: a token that says it is from issuer A but is signed with B's key fails. A token whose
/// `iss` no verifier names is refused ([`VerifyError::WrongIssuer`]: 401 `invalid_token`). A
/// verifier without an issuer rule, if there is one (at most one), verifies the tokens that
/// carry no `iss` at all, and only those.
///
/// [`AuthLayer::jwt`](crate::auth::AuthLayer::jwt) takes a `JwtIssuers` or a lone
/// `JwtVerifier`, and calling it again adds issuers; build a `JwtIssuers` yourself to get
/// configuration mistakes as errors rather than panics, or to verify tokens outside a layer.
///
/// Verdicts are cached here, by token (the verifiers' own caches are not used), so a cached
/// token of the tenth issuer costs what a cached token of a lone verifier costs; on first sight
/// the payload is decoded once, and parsed once when all the verifiers read the same claims.
///
/// ```
/// use keygate::jwt::{JwtIssuers, JwtKey, JwtVerifier, TokenIssuer, VerifyError};
///
/// let (a, b) = (b"issuer A's secret, 32 bytes long!", b"issuer B's secret, 32 bytes long!");
/// let issuers = JwtIssuers::new([
///     JwtVerifier::with_keys([JwtKey::hmac(a)]).issuer(["https://a.example"]),
///     JwtVerifier::with_keys([JwtKey::hmac(b)]).issuer(["https://b.example"]),
/// ])
/// .unwrap();
///
/// let token = TokenIssuer::hmac(b).issuer("https://b.example").issue("u1", ["x"]).unwrap();
/// assert_eq!(issuers.verify(&token.access_token).unwrap().id(), "u1");
///
/// // Signed with B's key, but claiming to be from A: checked with A's keys only.
/// let forged = TokenIssuer::hmac(b).issuer("https://a.example").issue("u1", ["x"]).unwrap();
/// assert_eq!(issuers.verify(&forged.access_token).unwrap_err(), VerifyError::BadSignature);
///
/// let stranger = TokenIssuer::hmac(b).issuer("https://c.example").issue("u1", ["x"]).unwrap();
/// assert_eq!(issuers.verify(&stranger.access_token).unwrap_err(), VerifyError::WrongIssuer);
/// ```
#[derive(Clone)]
#[must_use]
pub struct JwtIssuers {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// One verifier: it is used as it is, cache and all.
    One(JwtVerifier),
    Many(Arc<Routes>),
}

struct Routes {
    verifiers: Vec<JwtVerifier>,
    by_iss: hashbrown::HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    without_iss: Option<usize>,
    /// The claim names all the verifiers read, when they read the same: the payload is then
    /// parsed once, before the verifier is chosen.
    shared_names: Option<ClaimNames>,
    max_len: usize,
    max_leeway: u64,
    cache: Option<Cache>,
}

/// Why verifiers cannot be put together into [`JwtIssuers`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IssuersError {
    /// No verifier was given.
    #[error("no verifier given")]
    Empty,
    /// Two verifiers accept the same issuer: its tokens would have two sets of rules.
    #[error("two verifiers accept the issuer {0:?}")]
    Duplicate(String),
    /// Two verifiers have no issuer rule: tokens without `iss` would have two sets of rules.
    #[error("more than one verifier has no issuer rule")]
    SeveralWithoutIssuer,
}

impl JwtIssuers {
    /// Tokens of these verifiers' issuers, each checked by its own verifier.
    ///
    /// # Errors
    ///
    /// No verifier, two verifiers naming one issuer, or two without an issuer rule.
    pub fn new(verifiers: impl IntoIterator<Item = JwtVerifier>) -> Result<Self, IssuersError> {
        let verifiers: Vec<JwtVerifier> = verifiers.into_iter().collect();
        if verifiers.len() <= 1 {
            return verifiers
                .into_iter()
                .next()
                .map(Self::from)
                .ok_or(IssuersError::Empty);
        }
        let mut by_iss = hashbrown::HashMap::default();
        let mut without_iss = None;
        for (route, v) in verifiers.iter().enumerate() {
            match v.issuer_rule() {
                Some(issuers) => {
                    for iss in issuers {
                        if by_iss.insert(iss.as_str().into(), route).is_some() {
                            return Err(IssuersError::Duplicate(iss.clone()));
                        }
                    }
                }
                None if without_iss.is_some() => return Err(IssuersError::SeveralWithoutIssuer),
                None => without_iss = Some(route),
            }
        }
        let first = verifiers[0].names();
        let shared_names = verifiers
            .iter()
            .all(|v| v.names() == first)
            .then(|| first.clone());
        Ok(Self {
            kind: Kind::Many(Arc::new(Routes {
                max_len: verifiers
                    .iter()
                    .map(JwtVerifier::max_len)
                    .max()
                    .unwrap_or(0),
                max_leeway: verifiers
                    .iter()
                    .map(JwtVerifier::leeway_secs)
                    .max()
                    .unwrap_or(0),
                by_iss,
                without_iss,
                shared_names,
                cache: Some(Cache::new(DEFAULT_CACHE_ENTRIES)),
                verifiers,
            })),
        })
    }

    /// These issuers and those of `verifier`.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with(self, verifier: impl Into<JwtIssuers>) -> Result<Self, IssuersError> {
        Self::new(
            self.into_verifiers()
                .into_iter()
                .chain(verifier.into().into_verifiers()),
        )
    }

    fn into_verifiers(self) -> Vec<JwtVerifier> {
        match self.kind {
            Kind::One(v) => vec![v],
            Kind::Many(routes) => routes.verifiers.clone(),
        }
    }

    /// Keeps up to `entries` verified tokens of all the issuers (default 50,000); 0 turns the
    /// cache off. With one verifier, that verifier's cache is set.
    pub fn cache(self, entries: usize) -> Self {
        match self.kind {
            Kind::One(v) => Self::from(v.cache(entries)),
            Kind::Many(routes) => {
                let routes = Routes {
                    verifiers: routes.verifiers.clone(),
                    by_iss: routes.by_iss.clone(),
                    without_iss: routes.without_iss,
                    shared_names: routes.shared_names.clone(),
                    max_len: routes.max_len,
                    max_leeway: routes.max_leeway,
                    cache: (entries > 0).then(|| Cache::new(entries)),
                };
                Self {
                    kind: Kind::Many(Arc::new(routes)),
                }
            }
        }
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
        match &self.kind {
            Kind::One(v) => v.cached(),
            Kind::Many(routes) => routes.cache.as_ref().map_or(0, Cache::len),
        }
    }

    /// The longest token any of the verifiers accepts.
    pub(crate) fn max_len(&self) -> usize {
        match &self.kind {
            Kind::One(v) => v.max_len(),
            Kind::Many(routes) => routes.max_len,
        }
    }

    pub(crate) fn check(&self, token: &str, unknown_kid: UnknownKid) -> Outcome {
        match &self.kind {
            Kind::One(v) => v.check(token, unknown_kid),
            Kind::Many(routes) => routes.check(token, unknown_kid),
        }
    }
}

impl Routes {
    fn check(&self, token: &str, unknown_kid: UnknownKid) -> Outcome {
        let refuse = |why| Outcome::Done(Err(why));
        if token.len() > self.max_len {
            return refuse(VerifyError::TooLong);
        }
        let hash = self.cache.as_ref().map(|cache| cache.hash(token));
        if let (Some(cache), Some(hash)) = (&self.cache, hash)
            && let Some(hit) = cache.get(hash, token)
        {
            let v = &self.verifiers[hit.route];
            if hit.generation == v.generation() {
                return Outcome::Done(v.recheck(hit, v.now_secs()));
            }
        }
        let Some(payload_b64) = token.split('.').nth(1) else {
            return refuse(VerifyError::Malformed);
        };
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload_b64) else {
            return refuse(VerifyError::Malformed);
        };
        let (route, registered) = match &self.shared_names {
            Some(names) => {
                let Ok(r) = Registered::parse(&bytes, names) else {
                    return refuse(VerifyError::Malformed);
                };
                (self.route(r.iss.as_deref()), Some(r))
            }
            None => match issuer_of(&bytes) {
                Ok(iss) => (self.route(iss.as_deref()), None),
                Err(_) => return refuse(VerifyError::Malformed),
            },
        };
        let Some(route) = route else {
            return refuse(VerifyError::WrongIssuer);
        };
        let v = &self.verifiers[route];
        let now = v.now_secs();
        let payload = Payload { bytes, registered };
        match v.check_routed(token, unknown_kid, payload, route, now) {
            Ok(verified) => {
                if let (Some(cache), Some(hash)) = (&self.cache, hash) {
                    cache.insert(hash, token, verified.clone(), now, self.max_leeway);
                }
                Outcome::Done(Ok(verified))
            }
            Err(outcome) => outcome,
        }
    }

    /// The verifier for tokens of `iss`.
    fn route(&self, iss: Option<&str>) -> Option<usize> {
        match iss {
            Some(iss) => self.by_iss.get(iss).copied(),
            None => self.without_iss,
        }
    }
}

impl From<JwtVerifier> for JwtIssuers {
    fn from(verifier: JwtVerifier) -> Self {
        Self {
            kind: Kind::One(verifier),
        }
    }
}

impl fmt::Debug for JwtIssuers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::One(v) => f.debug_tuple("JwtIssuers").field(v).finish(),
            Kind::Many(routes) => f
                .debug_struct("JwtIssuers")
                .field("verifiers", &routes.verifiers)
                .field("cached", &self.cached())
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::jwt::{JwtKey, KeySet, StaticKeys, TokenIssuer};

    const A: &[u8] = b"issuer A: a test secret of 32 bytes";
    const B: &[u8] = b"issuer B: a test secret of 32 bytes";

    fn two() -> JwtIssuers {
        JwtIssuers::new([
            JwtVerifier::with_keys([JwtKey::hmac(A)]).issuer(["https://a"]),
            JwtVerifier::with_keys([JwtKey::hmac(B)])
                .issuer(["https://b", "https://b2"])
                .subject_claim("uid"),
        ])
        .unwrap()
    }

    fn token(secret: &[u8], iss: Option<&str>, sub_claim: Option<&str>) -> String {
        let mut issuer = TokenIssuer::hmac(secret);
        if let Some(iss) = iss {
            issuer = issuer.issuer(iss);
        }
        if let Some(claim) = sub_claim {
            issuer = issuer.subject_claim(claim);
        }
        issuer.issue("u1", ["s"]).unwrap().access_token
    }

    #[test]
    fn routes_by_iss_with_each_issuers_rules() {
        let issuers = two();
        assert!(issuers.verify(&token(A, Some("https://a"), None)).is_ok());
        // B reads the subject from `uid`.
        let p = issuers
            .verify(&token(B, Some("https://b2"), Some("uid")))
            .unwrap();
        assert_eq!(p.id(), "u1");
        assert_eq!(issuers.cached(), 2);
        assert_eq!(
            issuers
                .verify(&token(A, Some("https://b"), None))
                .unwrap_err(),
            VerifyError::BadSignature
        );
        assert_eq!(
            issuers.verify(&token(A, None, None)).unwrap_err(),
            VerifyError::WrongIssuer
        );
        assert_eq!(issuers.verify("a.b.c").unwrap_err(), VerifyError::Malformed);
    }

    #[test]
    fn a_verifier_without_issuer_takes_only_tokens_without_iss() {
        let issuers = JwtIssuers::new([
            JwtVerifier::with_keys([JwtKey::hmac(A)]).issuer(["https://a"]),
            JwtVerifier::with_keys([JwtKey::hmac(B)]),
        ])
        .unwrap();
        assert!(issuers.verify(&token(B, None, None)).is_ok());
        assert_eq!(
            issuers
                .verify(&token(B, Some("https://x"), None))
                .unwrap_err(),
            VerifyError::WrongIssuer
        );
    }

    #[test]
    fn configuration_mistakes() {
        let v = || JwtVerifier::with_keys([JwtKey::hmac(A)]);
        assert_eq!(JwtIssuers::new([]).unwrap_err(), IssuersError::Empty);
        assert_eq!(
            JwtIssuers::new([v().issuer(["x"]), v().issuer(["y", "x"])]).unwrap_err(),
            IssuersError::Duplicate("x".into())
        );
        assert_eq!(
            JwtIssuers::new([v(), v()]).unwrap_err(),
            IssuersError::SeveralWithoutIssuer
        );
        // One verifier is used as it is: without an issuer rule it takes any `iss`.
        let one = JwtIssuers::new([v()]).unwrap();
        assert!(one.verify(&token(A, Some("anyone"), None)).is_ok());
        let more = one.with(v().issuer(["https://b"])).unwrap();
        assert_eq!(
            more.verify(&token(A, Some("anyone"), None)).unwrap_err(),
            VerifyError::WrongIssuer
        );
    }

    #[test]
    fn cached_verdicts_follow_their_issuers_keys_and_clock() {
        let clock = ManualClock::new();
        let keys = StaticKeys::new(KeySet::new([JwtKey::hmac(B)]));
        let issuers = JwtIssuers::new([
            JwtVerifier::with_keys([JwtKey::hmac(A)]).issuer(["https://a"]),
            JwtVerifier::new(keys.clone())
                .issuer(["https://b"])
                .clock(clock.clone())
                .leeway(Duration::ZERO),
        ])
        .unwrap();
        let t = TokenIssuer::hmac(B)
            .issuer("https://b")
            .clock(clock.clone())
            .ttl(Duration::from_secs(60))
            .issue("u", ["s"])
            .unwrap()
            .access_token;
        assert!(issuers.verify(&t).is_ok());
        assert!(issuers.verify(&t).is_ok());
        clock.advance(Duration::from_secs(61));
        assert_eq!(issuers.verify(&t).unwrap_err(), VerifyError::Expired);
        let fresh = TokenIssuer::hmac(B)
            .issuer("https://b")
            .clock(clock.clone())
            .issue("u", ["s"])
            .unwrap()
            .access_token;
        assert!(issuers.verify(&fresh).is_ok());
        keys.replace(KeySet::new([JwtKey::hmac(A)]));
        assert_eq!(
            issuers.verify(&fresh).unwrap_err(),
            VerifyError::BadSignature
        );
        let uncached = issuers.clone().cache(0);
        assert_eq!(uncached.cached(), 0);
    }
}
