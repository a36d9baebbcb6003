//! What an [`AuthLayer`](super::AuthLayer) is configured with, and how it judges a request.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};

use crate::caller::Passed;
use crate::clock::SharedClock;
use crate::credential::{self, CredentialError, CredentialSource, RequestHead};
use crate::error::{AuthError, Forbidden, InvalidCredential, Rendering, Unavailable};
use crate::events::{AuthEvent, AuthEvents};
use crate::key::{KeyDigest, KeyFormats, KeyRecord, KeyStatus};
use crate::metrics::{AuthOutcome, CredentialKind};
use crate::outage::{OutageLog, info_recovered, warn_outage};
use crate::principal::Principal;
use crate::store::{KeyStore, Lookup, LookupResult};

/// The default limit on a presented API key, in bytes.
pub(crate) const DEFAULT_MAX_KEY_LEN: usize = 512;

/// The API-key side of a layer: where keys are looked up, and what is checked before.
#[derive(Clone)]
pub(crate) struct KeyAuth {
    pub(crate) store: Arc<dyn KeyStore>,
    /// The formats keys are checked against before the store, with their environments.
    pub(crate) formats: KeyFormats,
    pub(crate) max_len: usize,
    pub(crate) outage: Arc<OutageLog>,
    /// The proxies whose forwarding headers are believed, for keys with an IP allowlist.
    pub(crate) trusted_proxies: crate::client_addr::Networks,
}

impl KeyAuth {
    pub(crate) fn new(store: impl KeyStore) -> Self {
        Self {
            store: Arc::new(store),
            formats: KeyFormats::default(),
            max_len: DEFAULT_MAX_KEY_LEN,
            outage: Default::default(),
            trusted_proxies: Default::default(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct AuthConfig {
    pub(crate) sources: Vec<CredentialSource>,
    pub(crate) keys: Option<KeyAuth>,
    #[cfg(feature = "jwt")]
    pub(crate) jwt: Option<crate::jwt::JwtIssuers>,
    pub(crate) optional: bool,
    /// Whether an admitted request's credential is taken out before the inner service sees it.
    pub(crate) strip: bool,
    pub(crate) rendering: Rendering,
    pub(crate) clock: SharedClock,
    /// Told of every decision, when set.
    pub(crate) events: Option<Arc<dyn AuthEvents>>,
    /// Counts the decisions (with the `metrics` feature).
    pub(crate) counters: crate::metrics::AuthCounters,
}

/// Who a request was admitted as.
pub(crate) enum Admission {
    /// No credential, optional mode.
    Anonymous,
    /// An API key.
    Key(Principal),
    /// A verified token, with its claims.
    #[cfg(feature = "jwt")]
    Token(Arc<crate::jwt::Verified>),
}

/// What a request waits for.
pub(crate) enum Pending {
    /// The key store; the environment of the key's format.
    Key(Lookup, Option<Arc<str>>),
    /// New JWT keys; then the token is checked again.
    #[cfg(feature = "jwt")]
    Token(crate::MaybeReady<crate::jwt::Refetch>, Box<str>),
}

/// What to do with a request, decided without waiting when possible.
pub(crate) enum Decision {
    /// Let it through.
    Admit(Admission),
    /// Turn it away.
    Reject(Refusal),
    /// Wait first.
    Wait(Pending),
}

/// Why a request is turned away: the error, and the record of the key it presented when a key
/// the store knows was refused (for the events hook to name it).
pub(crate) struct Refusal {
    pub(crate) error: AuthError,
    pub(crate) key: Option<Arc<KeyRecord>>,
}

impl From<AuthError> for Refusal {
    fn from(error: AuthError) -> Self {
        Self { error, key: None }
    }
}

/// Records the caller and the outcome on the current span, in the fields it declares (a span
/// ignores fields it does not): `enduser.id` and `user.id` (OpenTelemetry's names for the
/// caller; the principal's id, never a key), `keygate.auth.kind` (`api_key` or `jwt`) and
/// `keygate.auth.outcome` (`authenticated`, `anonymous`, or why the request was refused, as
/// [`AuthError::kind`] names it).
fn record_on_span(caller: Option<(&str, &'static str)>, outcome: &'static str) {
    // Without any subscriber there is no span to record on, and asking costs a request.
    if !tracing::dispatcher::has_been_set() {
        return;
    }
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    if let Some((id, kind)) = caller {
        span.record("enduser.id", id);
        span.record("user.id", id);
        span.record("keygate.auth.kind", kind);
    }
    span.record("keygate.auth.outcome", outcome);
}

/// The answer to a token's rejection: the verifier says why, the client is told only what the
/// error contract lets it know.
#[cfg(feature = "jwt")]
pub(crate) fn token_error(error: crate::jwt::VerifyError) -> AuthError {
    use crate::jwt::VerifyError;
    tracing::debug!(target: "keygate", reason = error.as_str(), "token refused");
    match error {
        VerifyError::TooLong => AuthError::InvalidRequest(CredentialError::TooLong),
        VerifyError::Expired => AuthError::InvalidCredential(InvalidCredential::TokenExpired),
        VerifyError::KeysUnavailable => AuthError::Unavailable(Unavailable::JwtKeys),
        _ => AuthError::InvalidCredential(InvalidCredential::InvalidToken),
    }
}

impl AuthConfig {
    /// Accepts the tokens of `issuers` too.
    #[cfg(feature = "jwt")]
    pub(crate) fn add_jwt(&mut self, issuers: crate::jwt::JwtIssuers) {
        self.jwt = Some(match self.jwt.take() {
            None => issuers,
            Some(current) => current
                .with(issuers)
                .unwrap_or_else(|e| panic!("AuthLayer::jwt: {e}")),
        });
    }

    fn max_credential_len(&self) -> usize {
        let keys = self.keys.as_ref().map_or(0, |k| k.max_len);
        #[cfg(feature = "jwt")]
        let keys = keys.max(self.jwt.as_ref().map_or(0, |j| j.max_len()));
        keys
    }

    /// Judges the request of `head`. When the layer strips credentials, `found_in` is set to
    /// where its credential was (see [`strip`](Self::strip)).
    pub(crate) fn decide(
        &self,
        head: &RequestHead<'_>,
        found_in: &mut Option<credential::FoundIn>,
    ) -> Decision {
        let found = match credential::extract(&self.sources, head, self.max_credential_len()) {
            Ok(Some(found)) => found,
            Ok(None) if self.optional => return Decision::Admit(Admission::Anonymous),
            Ok(None) => return Decision::Reject(AuthError::MissingCredential.into()),
            Err(e) => return Decision::Reject(AuthError::InvalidRequest(e).into()),
        };
        if self.strip {
            *found_in = Some(found.at);
        }
        let key = &*found.value;
        #[cfg(feature = "jwt")]
        if let Some(jwt) = &self.jwt
            && crate::jwt::looks_like_jws(key)
        {
            return match jwt.check(key, crate::jwt::UnknownKid::Refetch) {
                crate::jwt::Outcome::Done(Ok(v)) => Decision::Admit(Admission::Token(v)),
                crate::jwt::Outcome::Done(Err(e)) => Decision::Reject(token_error(e).into()),
                crate::jwt::Outcome::Refetch(wait) => {
                    Decision::Wait(Pending::Token(wait, key.into()))
                }
            };
        }
        let Some(keys) = &self.keys else {
            let unknown = AuthError::InvalidCredential(InvalidCredential::UnknownKey);
            return Decision::Reject(unknown.into());
        };
        if key.len() > keys.max_len {
            return Decision::Reject(AuthError::InvalidRequest(CredentialError::TooLong).into());
        }
        // Keys with a format's prefix must carry a valid checksum; keys without any (brought
        // from an older system) go to the store as they are, of no environment.
        let Ok(environment) = keys.formats.check(key) else {
            let malformed = AuthError::InvalidCredential(InvalidCredential::MalformedKey);
            return Decision::Reject(malformed.into());
        };
        let mut lookup = keys.store.lookup(&KeyDigest::of(key));
        match lookup.take_ready() {
            Some(result) => match self.finish_key(result, head) {
                Ok(p) => Decision::Admit(Admission::Key(p.in_environment(environment.cloned()))),
                Err(e) => Decision::Reject(e),
            },
            None => Decision::Wait(Pending::Key(lookup, environment.cloned())),
        }
    }

    /// Checks a token again after its key source fetched keys; no second fetch.
    #[cfg(feature = "jwt")]
    pub(crate) fn recheck_token(&self, token: &str) -> Result<Admission, AuthError> {
        let Some(jwt) = &self.jwt else {
            return Err(AuthError::InvalidCredential(
                InvalidCredential::InvalidToken,
            ));
        };
        match jwt.check(token, crate::jwt::UnknownKid::Refuse) {
            crate::jwt::Outcome::Done(Ok(v)) => Ok(Admission::Token(v)),
            crate::jwt::Outcome::Done(Err(e)) => Err(token_error(e)),
            crate::jwt::Outcome::Refetch(_) => {
                Err(token_error(crate::jwt::VerifyError::UnknownKid))
            }
        }
    }

    pub(crate) fn finish_key(
        &self,
        result: LookupResult,
        head: &RequestHead<'_>,
    ) -> Result<Principal, Refusal> {
        let outage = self.keys.as_ref().map(|k| &*k.outage);
        let record = match result {
            Ok(found) => {
                if let Some(outage) = outage {
                    info_recovered!(outage, "key store");
                }
                match found {
                    Some(record) => record,
                    None => {
                        let unknown = AuthError::InvalidCredential(InvalidCredential::UnknownKey);
                        return Err(unknown.into());
                    }
                }
            }
            Err(e) => {
                if let Some(outage) = outage {
                    warn_outage!(outage, e, "key store");
                }
                let down = AuthError::Unavailable(Unavailable::KeyStore(Arc::new(e)));
                return Err(down.into());
            }
        };
        match self.check_record(&record, head) {
            Ok(()) => Ok(Principal::from_key_record(record)),
            Err(error) => Err(Refusal {
                error,
                key: Some(record),
            }),
        }
    }

    /// Whether the key of `record` may be used now, by the client of `head`.
    fn check_record(&self, record: &KeyRecord, head: &RequestHead<'_>) -> Result<(), AuthError> {
        let invalid = |why| Err(AuthError::InvalidCredential(why));
        match record.status {
            KeyStatus::Active => {}
            KeyStatus::Revoked => return invalid(InvalidCredential::RevokedKey),
            _ => return invalid(InvalidCredential::DisabledKey),
        }
        if record.expires_at.is_some_and(|at| at <= self.clock.now()) {
            return invalid(InvalidCredential::ExpiredKey);
        }
        // Only a key with an allowlist costs the client address's resolution.
        if let Some(allowed) = &record.allowed_ips {
            let client = crate::client_addr::resolve_in(head, self.trusted_proxies());
            if !client.is_some_and(|addr| allowed.contains(addr)) {
                let reason = match client {
                    Some(_) => "address_not_listed",
                    None => "no_client_address",
                };
                tracing::debug!(target: "keygate", reason, "key refused from this address");
                return Err(AuthError::Forbidden(Forbidden::AddressNotAllowed));
            }
        }
        Ok(())
    }

    /// The proxies whose forwarding headers are believed (none for a layer without keys).
    fn trusted_proxies(&self) -> &[crate::client_addr::IpNet] {
        self.keys
            .as_ref()
            .map_or(&[][..], |k| k.trusted_proxies.as_slice())
    }

    /// Lets `req` through as `admission`: its `Principal` (and a token's claims) and this
    /// layer's rendering go into the extensions.
    pub(crate) fn admit<B>(&self, req: &mut Request<B>, admission: Admission) {
        if let Some(events) = &self.events {
            self.emit_admitted(&**events, &RequestHead::of(req), &admission);
        }
        let extensions = req.extensions_mut();
        // A `Principal` tells the layers behind that a layer ran; the rendering settings go
        // along when there is none, when they are not the defaults, or to replace an outer
        // layer's: a request admitted with the defaults costs no second extension.
        let principal = !matches!(admission, Admission::Anonymous);
        if !(principal && self.rendering.is_default() && extensions.get::<Passed>().is_none()) {
            extensions.insert(Passed {
                rendering: self.rendering.clone(),
            });
        }
        match admission {
            Admission::Anonymous => {
                tracing::debug!(target: "keygate", outcome = "anonymous");
                record_on_span(None, "anonymous");
                self.counters.count(AuthOutcome::Anonymous);
            }
            Admission::Key(p) => {
                tracing::debug!(target: "keygate", principal = p.id(), kind = "api_key", outcome = "authenticated");
                record_on_span(Some((p.id(), "api_key")), "authenticated");
                self.counters
                    .count(AuthOutcome::Authenticated(CredentialKind::ApiKey));
                extensions.insert(p);
            }
            #[cfg(feature = "jwt")]
            Admission::Token(v) => {
                tracing::debug!(target: "keygate", principal = v.principal.id(), kind = "jwt", outcome = "authenticated");
                record_on_span(Some((v.principal.id(), "jwt")), "authenticated");
                self.counters
                    .count(AuthOutcome::Authenticated(CredentialKind::Jwt));
                extensions.insert(v.principal.clone());
                if let Some(claims) = &v.claims {
                    claims.insert_into(extensions);
                }
            }
        }
    }

    /// Takes the credential found in `found_in` out of the admitted `req`; nothing when the
    /// layer does not strip credentials (`decide` then leaves `found_in` empty).
    #[inline]
    pub(crate) fn strip<B>(&self, req: &mut Request<B>, found_in: Option<credential::FoundIn>) {
        if let Some(at) = found_in {
            credential::strip(&self.sources, at, req);
        }
    }

    /// The response turning `req` away with `error`; `key` is the record of a known key that
    /// was refused.
    pub(crate) fn reject<B>(
        &self,
        error: &AuthError,
        key: Option<Arc<KeyRecord>>,
        req: &Request<B>,
    ) -> Response<Bytes> {
        if let Some(events) = &self.events {
            self.emit_refused(&**events, &RequestHead::of(req), error, key);
        }
        tracing::debug!(target: "keygate", outcome = error.kind(), "rejected");
        record_on_span(None, error.kind());
        self.counters.count(AuthOutcome::of_error(error));
        self.rendering.render(error, req)
    }

    /// Lets `req` through or answers it, once its wait is over. (The response is moved straight
    /// into the future that returns it, so its size costs nothing.)
    #[allow(clippy::result_large_err)]
    pub(crate) fn conclude<B>(
        &self,
        req: &mut Request<B>,
        result: Result<Admission, Refusal>,
    ) -> Result<(), Response<Bytes>> {
        match result {
            Ok(admission) => {
                self.admit(req, admission);
                Ok(())
            }
            Err(refusal) => Err(self.reject(&refusal.error, refusal.key, req)),
        }
    }

    // The events hook is told of a decision out of line: a layer without one pays a branch on
    // an `Option`, and a client address is resolved only for a hook.

    #[inline(never)]
    fn emit_admitted(&self, hook: &dyn AuthEvents, head: &RequestHead<'_>, admission: &Admission) {
        let principal = match admission {
            Admission::Anonymous => None,
            Admission::Key(p) => Some(p.clone()),
            #[cfg(feature = "jwt")]
            Admission::Token(v) => Some(v.principal.clone()),
        };
        let client = crate::client_addr::resolve_in(head, self.trusted_proxies());
        hook.on_event(&AuthEvent::admitted(self.clock.now(), principal, client));
    }

    #[inline(never)]
    fn emit_refused(
        &self,
        hook: &dyn AuthEvents,
        head: &RequestHead<'_>,
        error: &AuthError,
        key: Option<Arc<KeyRecord>>,
    ) {
        let client = crate::client_addr::resolve_in(head, self.trusted_proxies());
        hook.on_event(&AuthEvent::refused(self.clock.now(), error, key, client));
    }
}
