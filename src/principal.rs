//! [`Principal`]: who is calling, as the handler sees it.

use std::fmt;
use std::sync::Arc;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::key::{KeyRecord, Scopes};
use crate::limits::Limits;

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PrincipalKind {
    /// An API key.
    ApiKey,
    /// A JWT bearer token.
    Jwt,
    /// Something a custom layer decided.
    Other,
}

/// The authenticated caller, inserted into request extensions by
/// [`AuthLayer`](crate::auth::AuthLayer).
///
/// Cloning is cheap (one reference count). `Debug` and serialisation show the id, kind, owner
/// and scopes, never a secret. With the `axum` feature it is an extractor; in tonic, read it from
/// `request.extensions()`.
///
/// ```
/// use keygate::{Principal, PrincipalKind};
///
/// let p = Principal::new("user-1", PrincipalKind::Other).with_scopes(["orders:read"]);
/// assert_eq!(p.id(), "user-1");
/// assert!(p.has_scope("orders:read"));
/// assert_eq!(
///     serde_json::to_string(&p).unwrap(),
///     r#"{"id":"user-1","kind":"other","owner":null,"scopes":["orders:read"]}"#
/// );
/// ```
#[derive(Clone)]
pub struct Principal(Repr);

#[derive(Clone)]
enum Repr {
    Key(Arc<KeyRecord>),
    Identity(Arc<Identity>),
}

#[derive(Clone)]
struct Identity {
    id: String,
    kind: PrincipalKind,
    owner: Option<String>,
    scopes: Scopes,
    quota: Option<Limits>,
    tier: Option<String>,
    credits: bool,
}

impl Principal {
    /// A principal made by hand (a custom layer, a test).
    pub fn new(id: impl Into<String>, kind: PrincipalKind) -> Self {
        Self(Repr::Identity(Arc::new(Identity {
            id: id.into(),
            kind,
            owner: None,
            scopes: Scopes::new(),
            quota: None,
            tier: None,
            credits: false,
        })))
    }

    /// The principal of an API key's record.
    pub fn from_key_record(record: Arc<KeyRecord>) -> Self {
        Self(Repr::Key(record))
    }

    fn identity_mut(&mut self) -> &mut Identity {
        if let Repr::Key(record) = &self.0 {
            self.0 = Repr::Identity(Arc::new(Identity {
                id: record.id.clone(),
                kind: PrincipalKind::ApiKey,
                owner: Some(record.owner.clone()),
                scopes: record.scopes.clone(),
                quota: record.quota.clone(),
                tier: record.tier.clone(),
                credits: record.credits.is_some(),
            }));
        }
        match &mut self.0 {
            Repr::Identity(identity) => Arc::make_mut(identity),
            Repr::Key(_) => unreachable!("replaced above"),
        }
    }

    /// Sets the scopes.
    #[must_use]
    pub fn with_scopes<S: Into<Box<str>>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.identity_mut().scopes = scopes.into_iter().collect();
        self
    }

    /// Sets the owner.
    #[must_use]
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.identity_mut().owner = Some(owner.into());
        self
    }

    /// Sets the caller's own quota.
    #[must_use]
    pub fn with_quota(mut self, quota: impl Into<Limits>) -> Self {
        self.identity_mut().quota = Some(quota.into());
        self
    }

    /// Marks the caller as spending credits (a token minted for a key with credits): the
    /// rate-limit layer's [`credits`](crate::ratelimit::RateLimitLayer::credits) store then
    /// spends them for the caller's id.
    #[must_use]
    pub fn with_credits(mut self, spends: bool) -> Self {
        self.identity_mut().credits = spends;
        self
    }

    /// Whether the caller spends credits: an API key with a budget of them, or a principal
    /// marked so ([`with_credits`](Self::with_credits)).
    pub fn spends_credits(&self) -> bool {
        match &self.0 {
            Repr::Key(r) => r.credits.is_some(),
            Repr::Identity(i) => i.credits,
        }
    }

    /// Sets the rate-limit tier (mapped to a quota by the rate-limit layer).
    #[must_use]
    pub fn with_tier(mut self, tier: impl Into<String>) -> Self {
        self.identity_mut().tier = Some(tier.into());
        self
    }

    /// The caller's stable id: the key record's id, or the token's subject. Never a secret.
    pub fn id(&self) -> &str {
        match &self.0 {
            Repr::Key(r) => &r.id,
            Repr::Identity(i) => &i.id,
        }
    }

    /// How the caller authenticated.
    pub fn kind(&self) -> PrincipalKind {
        match &self.0 {
            Repr::Key(_) => PrincipalKind::ApiKey,
            Repr::Identity(i) => i.kind,
        }
    }

    /// Who owns the credential, when known.
    pub fn owner(&self) -> Option<&str> {
        match &self.0 {
            Repr::Key(r) => Some(&r.owner),
            Repr::Identity(i) => i.owner.as_deref(),
        }
    }

    /// The caller's scopes.
    pub fn scopes(&self) -> &Scopes {
        match &self.0 {
            Repr::Key(r) => &r.scopes,
            Repr::Identity(i) => &i.scopes,
        }
    }

    /// Whether the caller has `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().contains(scope)
    }

    /// The caller's own limits, when its key or token sets them.
    pub fn quota(&self) -> Option<&Limits> {
        match &self.0 {
            Repr::Key(r) => r.quota.as_ref(),
            Repr::Identity(i) => i.quota.as_ref(),
        }
    }

    /// The caller's rate-limit tier, when its key record or token names one.
    pub fn tier(&self) -> Option<&str> {
        match &self.0 {
            Repr::Key(r) => r.tier.as_deref(),
            Repr::Identity(i) => i.tier.as_deref(),
        }
    }

    /// The key record, for an API-key caller: its metadata, expiry and the rest.
    pub fn key_record(&self) -> Option<&KeyRecord> {
        match &self.0 {
            Repr::Key(r) => Some(r),
            Repr::Identity(_) => None,
        }
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("id", &self.id())
            .field("kind", &self.kind())
            .field("owner", &self.owner())
            .field("scopes", self.scopes())
            .finish()
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Principal", 4)?;
        s.serialize_field("id", self.id())?;
        s.serialize_field("kind", &self.kind())?;
        s.serialize_field("owner", &self.owner())?;
        s.serialize_field("scopes", self.scopes())?;
        s.end()
    }
}
