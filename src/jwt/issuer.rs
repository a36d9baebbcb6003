use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::clock::{self, Clock, SharedClock};

/// A token just issued, in the shape of an OAuth 2 token response.
#[derive(Clone, Serialize)]
pub struct IssuedToken {
    /// The token.
    pub access_token: String,
    /// Always `"Bearer"`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// A token could not be issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// Signing failed (a key that does not fit the algorithm).
    #[error("the token could not be signed: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
    /// The extra claims name a claim the issuer writes itself (`sub`, `exp`, `iat`, `nbf`,
    /// `jti`, `iss`, `aud`, the scope claims, or the configured subject and tier claims), or
    /// the configured subject claim is one of the registered ones. Merging them would let
    /// extra data change who the token names, how long it lives, or what it may do.
    #[error("the claim {0:?} is written by the token issuer and cannot be set as an extra claim")]
    ReservedClaim(String),
    /// The extra claims do not serialise to a JSON object.
    #[error("extra claims must serialise to a JSON object")]
    ExtraNotAnObject,
    /// [`TokenIssuer::issue_for`] a caller whose key may be used from some addresses only
    /// (`allowed_ips`): the token would not carry the list, and would work from anywhere.
    #[error("no token is issued for a key limited to some client addresses")]
    AddressBound,
}

/// The claims the issuer writes, and those a verifier reads as scopes: none may come from the
/// extra claims.
const RESERVED: [&str; 10] = [
    "sub",
    "exp",
    "iat",
    "nbf",
    "jti",
    "iss",
    "aud",
    "scope",
    "scp",
    "permissions",
];

/// Mints short-lived tokens with `iat`, `exp`, `jti`, and optionally `kid`, `iss`, `aud`.
///
/// Extra claims ([`issue_with`](Self::issue_with)) never override what the issuer writes:
/// one that names a registered claim, a scope claim, or the configured subject or tier claim
/// makes issuing fail with [`IssueError::ReservedClaim`].
///
/// ```
/// use std::time::Duration;
/// use keygate::jwt::TokenIssuer;
///
/// let issuer = TokenIssuer::hmac(b"a secret of at least 32 bytes, please!")
///     .kid("2026-11")
///     .ttl(Duration::from_secs(2 * 3600)); // `expiresIn: "2h"` in Node's jsonwebtoken
/// let token = issuer.issue("key_1", ["weather:read"]).unwrap();
/// assert_eq!(token.token_type, "Bearer");
/// assert_eq!(token.expires_in, 7200);
/// ```
#[derive(Clone)]
#[must_use]
pub struct TokenIssuer {
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
    typ: Option<String>,
    iss: Option<String>,
    aud: Option<String>,
    subject_claim: Option<String>,
    tier_claim: Option<String>,
    quota_claim: Option<String>,
    owner_claim: Option<String>,
    credits_claim: Option<String>,
    ttl: Duration,
    clock: SharedClock,
}

#[derive(Serialize)]
struct Registered<'a> {
    sub: &'a str,
    scope: String,
    iat: u64,
    exp: u64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

impl TokenIssuer {
    /// Signs with an HMAC secret (HS256), valid for one hour by default.
    pub fn hmac(secret: &[u8]) -> Self {
        Self::new(EncodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Signs with `key` and `alg` (an RSA, EC or Ed25519 private key from PEM or DER).
    pub fn new(key: EncodingKey, alg: Algorithm) -> Self {
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
        Self {
            key,
            alg,
            kid: None,
            typ: None,
            iss: None,
            aud: None,
            subject_claim: None,
            tier_claim: None,
            quota_claim: None,
            owner_claim: None,
            credits_claim: None,
            ttl: Duration::from_secs(3600),
            clock: clock::system(),
        }
    }

    /// Puts `kid` in the header.
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The header's `typ` (default `JWT`), such as `at+jwt` for OAuth access tokens (RFC 9068),
    /// which a verifier can require with
    /// [`JwtVerifier::require_typ`](super::JwtVerifier::require_typ).
    pub fn typ(mut self, typ: impl Into<String>) -> Self {
        self.typ = Some(typ.into());
        self
    }

    /// Sets `iss`.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.iss = Some(iss.into());
        self
    }

    /// Sets `aud`.
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.aud = Some(aud.into());
        self
    }

    /// Whether the issuer writes `claim` itself (a registered claim or a scope claim), so that it
    /// can name neither an extra claim nor the subject claim. Configuration can check a claim
    /// name with it before any token is issued.
    ///
    /// ```
    /// use keygate::jwt::TokenIssuer;
    ///
    /// assert!(TokenIssuer::is_reserved("exp"));
    /// assert!(TokenIssuer::is_reserved("scp"));
    /// assert!(!TokenIssuer::is_reserved("userId"));
    /// ```
    pub fn is_reserved(claim: &str) -> bool {
        RESERVED.contains(&claim)
    }

    /// Writes the subject in `claim` too (besides `sub`), for verifiers that read the caller's
    /// id from it ([`JwtVerifier::subject_claim`](super::JwtVerifier::subject_claim)). Extra
    /// claims may not name it.
    pub fn subject_claim(mut self, claim: impl Into<String>) -> Self {
        self.subject_claim = Some(claim.into()).filter(|c| c != "sub");
        self
    }

    /// The claim that names the caller's rate-limit tier
    /// ([`JwtVerifier::tier_claim`](super::JwtVerifier::tier_claim)), written by
    /// [`issue_for`](Self::issue_for) from the principal's tier. Extra claims may not name it.
    pub fn tier_claim(mut self, claim: impl Into<String>) -> Self {
        self.tier_claim = Some(claim.into());
        self
    }

    /// The claim that carries the caller's own quota, as text such as `100/min`
    /// ([`JwtVerifier::quota_claim`](super::JwtVerifier::quota_claim)), written by
    /// [`issue_for`](Self::issue_for) from the principal's quota (a key's own quota): a token
    /// minted for a key is then limited as the key is. Extra claims may not name it.
    ///
    /// ```
    /// use keygate::jwt::{JwtKey, JwtVerifier, TokenIssuer};
    /// use keygate::{Principal, PrincipalKind, Quota};
    ///
    /// let secret = b"a secret of at least 32 bytes, please!";
    /// let issuer = TokenIssuer::hmac(secret).quota_claim("quota");
    /// let key = Principal::new("key_1", PrincipalKind::ApiKey).with_quota(Quota::per_minute(2));
    /// let token = issuer.issue_for(&key)?;
    /// let verifier = JwtVerifier::with_keys([JwtKey::hmac(secret)]).quota_claim("quota");
    /// let p = verifier.verify(&token.access_token)?;
    /// assert_eq!(p.quota(), Some(&Quota::per_minute(2).into()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn quota_claim(mut self, claim: impl Into<String>) -> Self {
        self.quota_claim = Some(claim.into());
        self
    }

    /// The claim that names the caller's owner
    /// ([`JwtVerifier::owner_claim`](super::JwtVerifier::owner_claim)), written by
    /// [`issue_for`](Self::issue_for) from the principal's owner (a key's owner), so that
    /// owner-wide limits count the token with its key's owner. Extra claims may not name it.
    pub fn owner_claim(mut self, claim: impl Into<String>) -> Self {
        self.owner_claim = Some(claim.into());
        self
    }

    /// The claim (`true`) that marks a token minted for a key with credits
    /// ([`JwtVerifier::credits_claim`](super::JwtVerifier::credits_claim)), written by
    /// [`issue_for`](Self::issue_for) when the principal spends credits: the token then spends
    /// the key's credits too. Extra claims may not name it.
    ///
    /// ```
    /// use keygate::jwt::{JwtKey, JwtVerifier, TokenIssuer};
    /// use keygate::{Principal, PrincipalKind};
    ///
    /// let secret = b"a secret of at least 32 bytes, please!";
    /// let issuer = TokenIssuer::hmac(secret).credits_claim("cr").owner_claim("own");
    /// let key = Principal::new("key_1", PrincipalKind::ApiKey)
    ///     .with_owner("acme")
    ///     .with_credits(true);
    /// let token = issuer.issue_for(&key)?;
    /// let verifier = JwtVerifier::with_keys([JwtKey::hmac(secret)])
    ///     .credits_claim("cr")
    ///     .owner_claim("own");
    /// let p = verifier.verify(&token.access_token)?;
    /// assert!(p.spends_credits());
    /// assert_eq!(p.owner(), Some("acme"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn credits_claim(mut self, claim: impl Into<String>) -> Self {
        self.credits_claim = Some(claim.into());
        self
    }

    /// How long tokens live (default one hour; whole seconds). A `exp` that would pass the
    /// largest time a token can state is capped there, never wrapped.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Reads time from `clock`.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    /// A token for `subject` with these scopes (as a space-separated `scope` claim).
    pub fn issue<S: AsRef<str>>(
        &self,
        subject: &str,
        scopes: impl IntoIterator<Item = S>,
    ) -> Result<IssuedToken, IssueError> {
        self.sign(subject, scopes, serde_json::Map::new())
    }

    /// A token for `principal`: its id as the subject, its scopes, and its tier in the tier
    /// claim when one is configured.
    ///
    /// ```
    /// use keygate::{Principal, PrincipalKind};
    /// use keygate::jwt::{JwtKey, JwtVerifier, TokenIssuer};
    ///
    /// let secret = b"a secret of at least 32 bytes, please!";
    /// let issuer = TokenIssuer::hmac(secret).tier_claim("tier");
    /// let caller = Principal::new("key_1", PrincipalKind::ApiKey)
    ///     .with_scopes(["weather:read"])
    ///     .with_tier("gold");
    /// let token = issuer.issue_for(&caller).unwrap();
    ///
    /// let verifier = JwtVerifier::with_keys([JwtKey::hmac(secret)]).tier_claim("tier");
    /// let p = verifier.verify(&token.access_token).unwrap();
    /// assert_eq!((p.id(), p.tier()), ("key_1", Some("gold")));
    /// ```
    ///
    /// # Errors
    ///
    /// [`IssueError::AddressBound`] for a caller whose key may be used from some addresses
    /// only: a token carries no address list, so it would work from anywhere.
    pub fn issue_for(&self, principal: &crate::Principal) -> Result<IssuedToken, IssueError> {
        if principal.is_address_bound() {
            return Err(IssueError::AddressBound);
        }
        let mut claims = serde_json::Map::new();
        if let (Some(claim), Some(tier)) = (&self.tier_claim, principal.tier()) {
            claims.insert(claim.clone(), tier.into());
        }
        if let (Some(claim), Some(quota)) = (&self.quota_claim, principal.quota()) {
            claims.insert(claim.clone(), quota.to_string().into());
        }
        if let (Some(claim), Some(owner)) = (&self.owner_claim, principal.owner()) {
            claims.insert(claim.clone(), owner.into());
        }
        if let Some(claim) = &self.credits_claim
            && principal.spends_credits()
        {
            claims.insert(claim.clone(), true.into());
        }
        self.sign(principal.id(), principal.scopes().iter(), claims)
    }

    /// A token with extra claims (a struct or map that serialises to a JSON object). None of
    /// them may name a claim the issuer writes itself (see [`IssueError::ReservedClaim`]).
    ///
    /// ```
    /// use keygate::jwt::{IssueError, TokenIssuer};
    /// use serde_json::json;
    ///
    /// let issuer = TokenIssuer::hmac(b"a secret of at least 32 bytes, please!");
    /// assert!(issuer.issue_with("u1", ["read"], json!({"plan": "pro"})).is_ok());
    /// assert!(matches!(
    ///     issuer.issue_with("u1", ["read"], json!({"scope": "admin"})),
    ///     Err(IssueError::ReservedClaim(claim)) if claim == "scope"
    /// ));
    /// ```
    pub fn issue_with<S: AsRef<str>, E: Serialize>(
        &self,
        subject: &str,
        scopes: impl IntoIterator<Item = S>,
        extra: E,
    ) -> Result<IssuedToken, IssueError> {
        let extra = match serde_json::to_value(extra) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err(IssueError::ExtraNotAnObject),
        };
        let reserved = RESERVED
            .iter()
            .copied()
            .chain(self.subject_claim.as_deref())
            .chain(self.tier_claim.as_deref())
            .chain(self.quota_claim.as_deref())
            .chain(self.owner_claim.as_deref())
            .chain(self.credits_claim.as_deref());
        for claim in reserved {
            if extra.contains_key(claim) {
                return Err(IssueError::ReservedClaim(claim.to_owned()));
            }
        }
        self.sign(subject, scopes, extra)
    }

    fn sign<S: AsRef<str>>(
        &self,
        subject: &str,
        scopes: impl IntoIterator<Item = S>,
        mut claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<IssuedToken, IssueError> {
        // The subject, tier and quota claims are the issuer's own: none may be a registered
        // claim, nor two of them the same one (the token would name a member twice, and be
        // refused).
        let own = [
            self.subject_claim.as_deref(),
            self.tier_claim.as_deref(),
            self.quota_claim.as_deref(),
            self.owner_claim.as_deref(),
            self.credits_claim.as_deref(),
        ];
        for (i, claim) in own.iter().enumerate() {
            let Some(claim) = claim else { continue };
            if Self::is_reserved(claim) || own[i + 1..].contains(&Some(claim)) {
                return Err(IssueError::ReservedClaim((*claim).to_owned()));
            }
        }
        if let Some(claim) = &self.subject_claim {
            claims.insert(claim.clone(), subject.into());
        }
        let now = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let scope = scopes
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        if let Some(typ) = &self.typ {
            header.typ = Some(typ.clone());
        }
        let exp = now.saturating_add(self.ttl.as_secs()).min(MAX_NUMERIC_DATE);
        let claims = Registered {
            sub: subject,
            scope,
            iat: now,
            exp,
            jti: new_jti(),
            iss: self.iss.as_deref(),
            aud: self.aud.as_deref(),
            extra: claims,
        };
        let token = encode(&header, &claims, &self.key).map_err(IssueError::Signing)?;
        Ok(IssuedToken {
            access_token: token,
            token_type: "Bearer",
            expires_in: exp.saturating_sub(now),
        })
    }
}

/// `jsonwebtoken::encode`, signed by aws-lc-rs whatever crypto provider the process installed
/// (see [`signed_by`](super::verifier::signed_by)): the header and the claims as base64url JSON,
/// then the signature of both.
fn encode(
    header: &Header,
    claims: &impl Serialize,
    key: &EncodingKey,
) -> Result<String, jsonwebtoken::errors::Error> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signer = (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.signer_factory)(&header.alg, key)?;
    if signer.algorithm() != header.alg {
        return Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into());
    }
    let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header)?);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(claims)?, &mut token);
    let signature = signer.try_sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

/// The latest `exp` written: 2^53 − 1 seconds, the largest integer every JSON reader (a double)
/// holds exactly.
const MAX_NUMERIC_DATE: u64 = (1 << 53) - 1;

fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("iss", &self.iss)
            .field("aud", &self.aud)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{JwtKey, JwtVerifier};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn extra_claims_cannot_override_what_the_issuer_writes() {
        let issuer = TokenIssuer::hmac(SECRET)
            .subject_claim("userId")
            .tier_claim("tier");
        for claim in RESERVED.iter().copied().chain(["userId", "tier"]) {
            let extra = json!({ claim: "admin" });
            assert!(
                matches!(
                    issuer.issue_with("u1", ["read"], &extra),
                    Err(IssueError::ReservedClaim(c)) if c == claim
                ),
                "{claim}"
            );
        }
        assert!(matches!(
            issuer.issue_with("u1", ["read"], [1, 2]),
            Err(IssueError::ExtraNotAnObject)
        ));
        // What the issuer writes is what a verifier reads.
        let token = issuer
            .issue_with("u1", ["read"], json!({"plan": "pro"}))
            .unwrap();
        let verifier = JwtVerifier::with_keys([JwtKey::hmac(SECRET)]).subject_claim("userId");
        let p = verifier.verify(&token.access_token).unwrap();
        assert_eq!(p.id(), "u1");
        assert_eq!(p.scopes().iter().collect::<Vec<_>>(), ["read"]);
        // A registered claim cannot be the subject or tier claim of issued tokens, nor can the
        // two be one.
        assert!(matches!(
            TokenIssuer::hmac(SECRET).subject_claim("scope").issue("u1", ["read"]),
            Err(IssueError::ReservedClaim(c)) if c == "scope"
        ));
        let caller = crate::Principal::new("u1", crate::PrincipalKind::ApiKey).with_tier("gold");
        assert!(matches!(
            TokenIssuer::hmac(SECRET).tier_claim("exp").issue_for(&caller),
            Err(IssueError::ReservedClaim(c)) if c == "exp"
        ));
        assert!(matches!(
            TokenIssuer::hmac(SECRET)
                .subject_claim("who")
                .tier_claim("who")
                .issue_for(&caller),
            Err(IssueError::ReservedClaim(c)) if c == "who"
        ));
    }

    #[test]
    fn a_huge_ttl_saturates_instead_of_wrapping() {
        let issuer = TokenIssuer::hmac(SECRET).ttl(Duration::MAX);
        let token = issuer.issue("u1", ["read"]).unwrap();
        let verifier = JwtVerifier::with_keys([JwtKey::hmac(SECRET)]);
        assert!(verifier.verify(&token.access_token).is_ok(), "not expired");
        let payload = token.access_token.split('.').nth(1).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        let (iat, exp) = (
            payload["iat"].as_u64().unwrap(),
            payload["exp"].as_u64().unwrap(),
        );
        assert!(exp > iat);
        assert_eq!(exp, MAX_NUMERIC_DATE);
        assert_eq!(token.expires_in, exp - iat);
    }
}
