use std::fmt;
use std::sync::Arc;

use dashmap::DashMap;

/// What a revocation check knows of a verified token.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TokenInfo<'a> {
    /// The subject (the principal's id).
    pub subject: &'a str,
    /// The token's `jti`, if any.
    pub jti: Option<&'a str>,
    /// The token's `iat` (seconds since the Unix epoch), if any.
    pub issued_at: Option<u64>,
}

/// Revoked tokens, checked on every request after verification — also for tokens in the
/// verified-token cache, so a revocation takes effect on the token's next use.
///
/// Revocation is by `jti`, or by subject ("every token issued before T"), never by a hash of
/// the raw token. The check is synchronous: it is on every request's path, so keep a local
/// replica of a shared list rather than ask a database each time.
pub trait Revocations: Send + Sync + 'static {
    /// Whether the token is revoked.
    fn is_revoked(&self, token: &TokenInfo<'_>) -> bool;
}

/// An in-memory revocation list.
///
/// ```
/// use keygate::jwt::{MemoryRevocations, Revocations, TokenInfo};
///
/// let revoked = MemoryRevocations::new();
/// revoked.revoke_jti("4f1c", 1_900_000_000);
/// revoked.revoke_subject_before("user-7", 1_800_000_000);
/// # let _ = revoked;
/// ```
#[derive(Clone, Default)]
pub struct MemoryRevocations {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `jti` → the token's `exp`, after which the entry is useless.
    jtis: DashMap<Box<str>, u64>,
    /// subject → tokens issued before this time (seconds) are revoked.
    subjects: DashMap<Box<str>, u64>,
}

impl MemoryRevocations {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes the token with this `jti`. `expires_at` is its `exp` (seconds since the epoch):
    /// after it the token is dead anyway and [`purge`](Self::purge) forgets the entry.
    pub fn revoke_jti(&self, jti: &str, expires_at: u64) {
        self.inner.jtis.insert(jti.into(), expires_at);
    }

    /// Revokes every token of `subject` issued before `before` (seconds since the epoch),
    /// and every token of it that has no `iat`.
    pub fn revoke_subject_before(&self, subject: &str, before: u64) {
        self.inner
            .subjects
            .entry(subject.into())
            .and_modify(|t| *t = (*t).max(before))
            .or_insert(before);
    }

    /// Forgets `jti` entries whose tokens expired before `now` (seconds since the epoch).
    pub fn purge(&self, now: u64) {
        self.inner.jtis.retain(|_, exp| *exp >= now);
    }
}

impl Revocations for MemoryRevocations {
    fn is_revoked(&self, token: &TokenInfo<'_>) -> bool {
        if let Some(jti) = token.jti
            && self.inner.jtis.contains_key(jti)
        {
            return true;
        }
        if self.inner.subjects.is_empty() {
            return false;
        }
        match self.inner.subjects.get(token.subject) {
            Some(before) => token.issued_at.is_none_or(|iat| iat < *before),
            None => false,
        }
    }
}

impl fmt::Debug for MemoryRevocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRevocations")
            .field("jtis", &self.inner.jtis.len())
            .field("subjects", &self.inner.subjects.len())
            .finish()
    }
}
