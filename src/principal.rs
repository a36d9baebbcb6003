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
/// Cloning is cheap (a reference count, two for a key of an
/// [environment](Self::environment)). `Debug` and serialisation show the id, kind, owner, scopes
/// and, when there is one, environment, never a secret. With the `axum` feature
/// it is an extractor; in tonic, read it from `request.extensions()`.
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
pub struct Principal {
    repr: Repr,
    /// The environment of the key's format (see [`Principal::environment`]).
    environment: Option<Arc<str>>,
}

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
    address_bound: bool,
}

impl Principal {
    /// A principal made by hand (a custom layer, a test).
    pub fn new(id: impl Into<String>, kind: PrincipalKind) -> Self {
        Self::of(Repr::Identity(Arc::new(Identity {
            id: id.into(),
            kind,
            owner: None,
            scopes: Scopes::new(),
            quota: None,
            tier: None,
            credits: false,
            address_bound: false,
        })))
    }

    /// The principal of an API key's record.
    pub fn from_key_record(record: Arc<KeyRecord>) -> Self {
        Self::of(Repr::Key(record))
    }

    fn of(repr: Repr) -> Self {
        Self {
            repr,
            environment: None,
        }
    }

    fn identity_mut(&mut self) -> &mut Identity {
        if let Repr::Key(record) = &self.repr {
            self.repr = Repr::Identity(Arc::new(Identity {
                id: record.id.clone(),
                kind: PrincipalKind::ApiKey,
                owner: Some(record.owner.clone()),
                scopes: record.scopes.clone(),
                quota: record.quota.clone(),
                tier: record.tier.clone(),
                credits: record.credits.is_some(),
                address_bound: record.allowed_ips.is_some(),
            }));
        }
        match &mut self.repr {
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
        match &self.repr {
            Repr::Key(r) => r.credits.is_some(),
            Repr::Identity(i) => i.credits,
        }
    }

    /// Sets the environment, as [`AuthLayer::key_environment`](crate::auth::AuthLayer::key_environment)
    /// does for a key of an environment's format.
    ///
    /// ```
    /// use keygate::{Principal, PrincipalKind};
    ///
    /// let p = Principal::new("key_1", PrincipalKind::Other).with_environment("test");
    /// assert_eq!(p.environment(), Some("test"));
    /// ```
    #[must_use]
    pub fn with_environment(mut self, environment: impl Into<Arc<str>>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// Sets the environment without making a new string: the layer hands every key of an
    /// environment the same one.
    pub(crate) fn in_environment(mut self, environment: Option<Arc<str>>) -> Self {
        self.environment = environment;
        self
    }

    /// The environment the caller's key belongs to, such as `"live"` or `"test"`: the one
    /// [`AuthLayer::key_environment`](crate::auth::AuthLayer::key_environment) configured for
    /// the format whose prefix the key has. `None` for a key of no configured environment, and
    /// for a JWT.
    ///
    /// It comes from the key's prefix, which a caller cannot change: the store finds a key by the
    /// digest of all of it, prefix included, so a test key with its prefix swapped for the live
    /// one is an unknown key.
    pub fn environment(&self) -> Option<&str> {
        self.environment.as_deref()
    }

    /// Sets the rate-limit tier (mapped to a quota by the rate-limit layer).
    #[must_use]
    pub fn with_tier(mut self, tier: impl Into<String>) -> Self {
        self.identity_mut().tier = Some(tier.into());
        self
    }

    /// The caller's stable id: the key record's id, or the token's subject. Never a secret.
    pub fn id(&self) -> &str {
        match &self.repr {
            Repr::Key(r) => &r.id,
            Repr::Identity(i) => &i.id,
        }
    }

    /// How the caller authenticated.
    pub fn kind(&self) -> PrincipalKind {
        match &self.repr {
            Repr::Key(_) => PrincipalKind::ApiKey,
            Repr::Identity(i) => i.kind,
        }
    }

    /// Who owns the credential, when known.
    pub fn owner(&self) -> Option<&str> {
        match &self.repr {
            Repr::Key(r) => Some(&r.owner),
            Repr::Identity(i) => i.owner.as_deref(),
        }
    }

    /// The caller's scopes.
    pub fn scopes(&self) -> &Scopes {
        match &self.repr {
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
        match &self.repr {
            Repr::Key(r) => r.quota.as_ref(),
            Repr::Identity(i) => i.quota.as_ref(),
        }
    }

    /// The caller's rate-limit tier, when its key record or token names one.
    pub fn tier(&self) -> Option<&str> {
        match &self.repr {
            Repr::Key(r) => r.tier.as_deref(),
            Repr::Identity(i) => i.tier.as_deref(),
        }
    }

    /// Whether the caller's key may be used from some addresses only (its record lists
    /// `allowed_ips`). A token cannot carry that list, so
    /// [`TokenIssuer::issue_for`](crate::jwt::TokenIssuer::issue_for) mints none for such a
    /// caller.
    pub fn is_address_bound(&self) -> bool {
        match &self.repr {
            Repr::Key(r) => r.allowed_ips.is_some(),
            Repr::Identity(i) => i.address_bound,
        }
    }

    /// The key record, for an API-key caller: its metadata, expiry and the rest.
    pub fn key_record(&self) -> Option<&KeyRecord> {
        match &self.repr {
            Repr::Key(r) => Some(r),
            Repr::Identity(_) => None,
        }
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Principal");
        d.field("id", &self.id())
            .field("kind", &self.kind())
            .field("owner", &self.owner())
            .field("scopes", self.scopes());
        // As in serialisation, only a principal of an environment shows one.
        if let Some(environment) = self.environment() {
            d.field("environment", &environment);
        }
        d.finish()
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let environment = self.environment();
        let len = 4 + usize::from(environment.is_some());
        let mut s = serializer.serialize_struct("Principal", len)?;
        s.serialize_field("id", self.id())?;
        s.serialize_field("kind", &self.kind())?;
        s.serialize_field("owner", &self.owner())?;
        s.serialize_field("scopes", self.scopes())?;
        match environment {
            Some(environment) => s.serialize_field("environment", environment)?,
            None => s.skip_field("environment")?,
        }
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_shown_and_kept() {
        let record = Arc::new(KeyRecord::new("key_1", "acme"));
        let p = Principal::from_key_record(record.clone());
        assert_eq!(p.environment(), None);
        assert_eq!(
            format!("{p:?}"),
            r#"Principal { id: "key_1", kind: ApiKey, owner: Some("acme"), scopes: {} }"#
        );
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"id": "key_1", "kind": "api_key", "owner": "acme", "scopes": []})
        );

        let live: Arc<str> = "live".into();
        let p = Principal::from_key_record(record).in_environment(Some(live.clone()));
        assert_eq!(p.environment(), Some("live"));
        assert_eq!(
            format!("{p:?}"),
            r#"Principal { id: "key_1", kind: ApiKey, owner: Some("acme"), scopes: {}, environment: "live" }"#
        );
        assert_eq!(serde_json::to_value(&p).unwrap()["environment"], "live");
        // The layer's one string is shared, not copied.
        assert!(std::ptr::eq(p.environment().unwrap(), &*live));
        // Changing the principal keeps its environment.
        let p = p.with_scopes(["weather:read"]).with_owner("other");
        assert_eq!(p.environment(), Some("live"));
        assert_eq!(p.kind(), PrincipalKind::ApiKey);
    }
}
