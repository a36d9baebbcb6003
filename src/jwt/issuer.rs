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
#[error("the token could not be signed: {0}")]
pub struct IssueError(#[source] jsonwebtoken::errors::Error);

/// Mints short-lived tokens with `iat`, `exp`, `jti`, and optionally `kid`, `iss`, `aud`.
///
/// ```
/// use std::time::Duration;
/// use keygate::jwt::TokenIssuer;
///
/// let issuer = TokenIssuer::hmac(b"a secret of at least 32 bytes, please!")
///     .kid("2026-11")
///     .ttl(Duration::from_secs(2 * 3600)); // the seed's `expiresIn: "2h"`
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
    iss: Option<String>,
    aud: Option<String>,
    ttl: Duration,
    clock: SharedClock,
}

#[derive(Serialize)]
struct Registered<'a, S: Serialize, E: Serialize> {
    sub: &'a str,
    scope: S,
    iat: u64,
    exp: u64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(flatten)]
    extra: E,
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
            iss: None,
            aud: None,
            ttl: Duration::from_secs(3600),
            clock: clock::system(),
        }
    }

    /// Puts `kid` in the header.
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
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

    /// How long tokens live (default one hour; whole seconds).
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
        self.issue_with(subject, scopes, serde_json::Map::new())
    }

    /// A token with extra claims (a struct or map that serialises to a JSON object).
    pub fn issue_with<S: AsRef<str>, E: Serialize>(
        &self,
        subject: &str,
        scopes: impl IntoIterator<Item = S>,
        extra: E,
    ) -> Result<IssuedToken, IssueError> {
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
        let claims = Registered {
            sub: subject,
            scope,
            iat: now,
            exp: now + self.ttl.as_secs(),
            jti: new_jti(),
            iss: self.iss.as_deref(),
            aud: self.aud.as_deref(),
            extra,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key).map_err(IssueError)?;
        Ok(IssuedToken {
            access_token: token,
            token_type: "Bearer",
            expires_in: self.ttl.as_secs(),
        })
    }
}

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
