use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use crate::BoxError;
use crate::key::{KeyDigest, KeyFormat, KeyRecord, KeyStatus};
use crate::store::{
    IssuedKey, KeyManager, KeyPage, KeyStore, KeyUpdate, Lookup, ManageError, ManageFuture, Page,
};

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

impl<'a> TokenInfo<'a> {
    /// What a check knows of a token of `subject`, with this `jti` and `iat` (to test a
    /// [`Revocations`] implementation).
    ///
    /// ```
    /// use keygate::jwt::{MemoryRevocations, Revocations, TokenInfo};
    ///
    /// let revoked = MemoryRevocations::new();
    /// revoked.revoke_subject_before("user-7", 1_800_000_000);
    /// assert!(revoked.is_revoked(&TokenInfo::new("user-7", None, Some(1_799_999_999))));
    /// assert!(!revoked.is_revoked(&TokenInfo::new("user-7", Some("4f1c"), Some(1_800_000_000))));
    /// ```
    pub fn new(subject: &'a str, jti: Option<&'a str>, issued_at: Option<u64>) -> Self {
        Self {
            subject,
            jti,
            issued_at,
        }
    }
}

/// Revoked tokens, checked on every request after verification — also for tokens in the
/// verified-token cache, so a revocation takes effect on the token's next use.
///
/// Revocation is by `jti`, or by subject ("every token issued before T"), never by a hash of
/// the raw token. The check is synchronous: it is on every request's path, so keep a local
/// replica of a shared list rather than ask a database each time, as `RedisRevocations`
/// (feature `redis`) does.
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
    /// after it the token is dead anyway and [`purge`](Self::purge) forgets the entry. Revoking
    /// a `jti` again keeps the later of the two times.
    pub fn revoke_jti(&self, jti: &str, expires_at: u64) {
        self.inner
            .jtis
            .entry(jti.into())
            .and_modify(|t| *t = (*t).max(expires_at))
            .or_insert(expires_at);
    }

    /// Revokes every token of `subject` issued before `before` (seconds since the epoch),
    /// and every token of it that has no `iat`. A cut-off never moves back: revoking the subject
    /// again with an earlier time keeps the later one.
    pub fn revoke_subject_before(&self, subject: &str, before: u64) {
        self.inner
            .subjects
            .entry(subject.into())
            .and_modify(|t| *t = (*t).max(before))
            .or_insert(before);
    }

    /// Forgets `jti` entries whose tokens expired before `now` (seconds since the epoch).
    ///
    /// A verifier accepts a token until `exp` plus its leeway, so purge with `now` minus at
    /// least that leeway, or a revoked token works again for the rest of it.
    pub fn purge(&self, now: u64) {
        self.inner.jtis.retain(|_, exp| *exp >= now);
    }

    /// How many `jti` entries the list holds.
    pub fn revoked_jtis(&self) -> usize {
        self.inner.jtis.len()
    }

    /// How many subjects have a cut-off.
    pub fn revoked_subjects(&self) -> usize {
        self.inner.subjects.len()
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

/// The future of a [`SubjectRevoker`] call.
pub type RevokeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// Revokes every token of a subject issued before a time: what [`RevokeMintedTokens`] calls
/// when a key stops working.
///
/// [`MemoryRevocations`] implements it (one process's list, changed at once), and so does
/// `RedisRevocations` (feature `redis`: every instance's list). It is object safe, and
/// `Arc<dyn SubjectRevoker>` implements it too.
///
/// ```
/// # async fn demo() -> Result<(), keygate::BoxError> {
/// use keygate::jwt::{MemoryRevocations, Revocations, SubjectRevoker};
///
/// let revocations = MemoryRevocations::new();
/// let revoker: &dyn SubjectRevoker = &revocations;
/// revoker.revoke_subject_before("key_1", 1_800_000_000).await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
pub trait SubjectRevoker: Send + Sync + 'static {
    /// Revokes every token of `subject` issued before `before` (seconds since the Unix epoch),
    /// and every token of it without `iat`. A cut-off never moves back: a call with an earlier
    /// time than the subject's current cut-off changes nothing, and succeeds.
    fn revoke_subject_before<'a>(&'a self, subject: &'a str, before: u64) -> RevokeFuture<'a>;
}

impl<T: SubjectRevoker + ?Sized> SubjectRevoker for Arc<T> {
    fn revoke_subject_before<'a>(&'a self, subject: &'a str, before: u64) -> RevokeFuture<'a> {
        (**self).revoke_subject_before(subject, before)
    }
}

impl<T: SubjectRevoker + ?Sized> SubjectRevoker for Box<T> {
    fn revoke_subject_before<'a>(&'a self, subject: &'a str, before: u64) -> RevokeFuture<'a> {
        (**self).revoke_subject_before(subject, before)
    }
}

/// Changes the list at once; never fails.
impl SubjectRevoker for MemoryRevocations {
    fn revoke_subject_before<'a>(&'a self, subject: &'a str, before: u64) -> RevokeFuture<'a> {
        MemoryRevocations::revoke_subject_before(self, subject, before);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A [`KeyManager`] that revokes the JWTs minted for a key when the key stops working.
///
/// A service that exchanges API keys for tokens (a `POST /token` route that mints a token with
/// [`TokenIssuer`](super::TokenIssuer), the key's record id as subject) hands out credentials
/// that never go back to the key store: without more, revoking the key leaves its tokens working
/// until they expire. Wrap the store in `RevokeMintedTokens`, give the same revocation list to
/// the [`JwtVerifier`](super::JwtVerifier), and manage keys through the wrapper only (the admin
/// API takes any `KeyManager`, also as `Arc<dyn KeyManager>`): every call is the store's, and
/// the calls that stop a key also revoke its subject's tokens through `R`.
///
/// **What revokes the tokens**:
/// [`revoke`](KeyManager::revoke), an [`update`](KeyManager::update) whose status is
/// [`Revoked`](KeyStatus::Revoked) or [`Disabled`](KeyStatus::Disabled), an update of the
/// scopes, the quota or the tier, or gives credits to a key that had none (or takes them away)
/// (a token carries its key's scopes, and with
/// [`TokenIssuer::quota_claim`](super::TokenIssuer::quota_claim) its quota, as they were when it
/// was minted: narrowed scopes and a lower quota must hold for the key's tokens too, so the old
/// ones are revoked and clients mint new ones, which carry the new scopes and quota), and
/// [`delete`](KeyManager::delete), and a [`rotate`](KeyManager::rotate) with no grace (the
/// emergency rotation of a key that leaked: its tokens may have been minted by whoever has it).
/// **What does not**: a rotation with a grace (the record and its id stay, and so do the
/// tokens minted for it, as its old key does during the grace),
/// a new expiry (tokens end at their own `exp`: keep them short-lived), and
/// [`purge`](KeyManager::purge) (it removes records that no longer work, whose tokens were cut
/// off when they stopped).
///
/// **The cut-off.** Once the store made the change, the wrapper revokes the record id's tokens
/// issued before `now + 1`, `now` being the wall clock in whole seconds: since `iat` counts whole
/// seconds, a token minted in the very second of the revocation (just before it) is refused too.
/// An update that makes a disabled record active again first waits for the wall clock's next
/// whole second (and an update of scopes or quota waits for it after revoking) (at most one second; it needs a Tokio runtime with its timer), so every token
/// minted once the key works again has an `iat` at or past the cut-off and is accepted, while
/// those minted before the key was disabled stay refused: clients mint new ones. The cut-off is
/// read from this process's clock and `iat` from the minting process's, so keep the clocks of a
/// fleet synchronised (NTP): a minter whose clock runs ahead gives its last tokens before a
/// revocation an `iat` past the cut-off. A record issued anew under the id of a deleted one gets
/// its tokens refused for the rest of the second of the delete.
///
/// **Failure.** When the store's change succeeded but revoking the tokens failed, the call
/// returns [`ManageError::Unavailable`] with the cause: the key is changed, its tokens may still
/// work, and the call should be retried. Retrying is safe: revoking or disabling again changes
/// nothing in the store, and deleting a record that is gone already still revokes its tokens
/// before it answers [`ManageError::NotFound`]. A change the store refused revokes nothing.
///
/// With the `redis` feature, `RedisRevocations` makes the revocation reach every instance's
/// verifier. One process on its own can use a [`MemoryRevocations`]:
///
/// ```
/// # async fn demo() -> Result<(), keygate::store::ManageError> {
/// use std::sync::Arc;
/// use keygate::jwt::{JwtKey, JwtVerifier, MemoryRevocations, RevokeMintedTokens, TokenIssuer};
/// use keygate::key::KeyRecord;
/// use keygate::store::{KeyManager, MemoryStore};
///
/// let secret = b"a secret of at least 32 bytes, please!";
/// let store = MemoryStore::new();
/// let revocations = MemoryRevocations::new();
/// let verifier = JwtVerifier::with_keys([JwtKey::hmac(secret)]).revocations(revocations.clone());
/// let keys: Arc<dyn KeyManager> = Arc::new(RevokeMintedTokens::new(store.clone(), revocations));
///
/// let issued = keys.issue(KeyRecord::new("key_1", "acme")).await?;
/// let token = TokenIssuer::hmac(secret).issue(&issued.record.id, ["weather:read"]).unwrap();
/// assert!(verifier.verify(&token.access_token).is_ok());
///
/// keys.revoke("key_1").await?;
/// assert!(verifier.verify(&token.access_token).is_err());
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct RevokeMintedTokens<M, R> {
    keys: M,
    revoker: R,
}

impl<M, R> RevokeMintedTokens<M, R> {
    /// Manages keys through `keys`, and revokes the tokens of stopped keys through `revoker`.
    pub fn new(keys: M, revoker: R) -> Self {
        Self { keys, revoker }
    }

    /// The wrapped key manager.
    pub fn keys(&self) -> &M {
        &self.keys
    }

    /// The revocation list stopped keys' tokens go to.
    pub fn revoker(&self) -> &R {
        &self.revoker
    }

    /// The key manager and the revocation list.
    pub fn into_parts(self) -> (M, R) {
        (self.keys, self.revoker)
    }
}

impl<M: KeyManager, R: SubjectRevoker> RevokeMintedTokens<M, R> {
    /// Revokes the tokens of `id` issued up to the current second.
    async fn revoke_tokens(&self, id: &str) -> Result<(), ManageError> {
        let before = unix_secs(SystemTime::now()).saturating_add(1);
        self.revoker
            .revoke_subject_before(id, before)
            .await
            .map_err(|cause| ManageError::unavailable(TokensNotRevoked(cause)))
    }
}

/// The key changed, but its tokens were not revoked.
#[derive(Debug, thiserror::Error)]
#[error("the key record changed, but revoking the tokens minted for it failed; retry the call")]
struct TokensNotRevoked(#[source] BoxError);

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Waits until the wall clock is past the current whole second.
async fn next_second() {
    let start = unix_secs(SystemTime::now());
    // A few rounds at most: the clock may be stepped while we sleep.
    for _ in 0..3 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if now.as_secs() > start {
            return;
        }
        let rest =
            Duration::from_secs(1).saturating_sub(Duration::from_nanos(now.subsec_nanos().into()));
        tokio::time::sleep(rest + Duration::from_millis(1)).await;
    }
}

impl<M: KeyManager, R: SubjectRevoker> KeyManager for RevokeMintedTokens<M, R> {
    fn format(&self) -> &KeyFormat {
        self.keys.format()
    }

    fn issue(&self, record: KeyRecord) -> ManageFuture<'_, IssuedKey> {
        self.keys.issue(record)
    }

    fn insert(&self, digest: KeyDigest, record: KeyRecord) -> ManageFuture<'_, KeyRecord> {
        self.keys.insert(digest, record)
    }

    fn get(&self, id: &str) -> ManageFuture<'_, Option<KeyRecord>> {
        self.keys.get(id)
    }

    fn list(&self, owner: &str, page: Page) -> ManageFuture<'_, KeyPage> {
        self.keys.list(owner, page)
    }

    /// The store's update; one that revokes or disables the record then revokes its tokens, and
    /// one that makes a disabled record active first waits for the next whole second.
    fn update(&self, id: &str, update: KeyUpdate) -> ManageFuture<'_, KeyRecord> {
        let id = id.to_owned();
        Box::pin(async move {
            let stops = matches!(
                update.status,
                Some(KeyStatus::Revoked | KeyStatus::Disabled)
            );
            // A token carries its key's scopes, quota and tier, and whether it spends credits,
            // as they were when it was minted: new ones apply to tokens minted from now on, and
            // the older tokens are revoked. A new count of credits for a key that had credits
            // already changes nothing its tokens carry.
            // Tokens carry no address list: a key's tokens minted before its allowlist was set
            // or changed would work from anywhere, so they go too.
            let mut reshapes = update.scopes.is_some()
                || update.quota.is_some()
                || update.tier.is_some()
                || update.allowed_ips.is_some();
            let current = if update.status == Some(KeyStatus::Active) || update.credits.is_some() {
                self.keys.get(&id).await?
            } else {
                None
            };
            if let (Some(credits), Some(current)) = (&update.credits, &current) {
                reshapes |= credits.is_some() != current.credits.is_some();
            }
            if update.status == Some(KeyStatus::Active)
                && current.is_some_and(|r| r.status == KeyStatus::Disabled)
            {
                next_second().await;
            }
            let record = self.keys.update(&id, update).await?;
            if stops || reshapes {
                self.revoke_tokens(&id).await?;
                if !stops {
                    // Tokens minted after this call returns are issued after the cut-off.
                    next_second().await;
                }
            }
            Ok(record)
        })
    }

    /// The store's revocation, then the revocation of the record's tokens.
    fn revoke(&self, id: &str) -> ManageFuture<'_, KeyRecord> {
        let revoked = self.keys.revoke(id);
        let id = id.to_owned();
        Box::pin(async move {
            let record = revoked.await?;
            self.revoke_tokens(&id).await?;
            Ok(record)
        })
    }

    /// The store's rotation; with no grace (a key that leaked), the record's tokens are revoked
    /// too, since they may have been minted with the leaked key.
    fn rotate(&self, id: &str, grace: Duration) -> ManageFuture<'_, IssuedKey> {
        if !grace.is_zero() {
            return self.keys.rotate(id, grace);
        }
        let rotated = self.keys.rotate(id, grace);
        let id = id.to_owned();
        Box::pin(async move {
            let issued = rotated.await?;
            self.revoke_tokens(&id).await?;
            // Tokens minted with the new key from now on are issued after the cut-off.
            next_second().await;
            Ok(issued)
        })
    }

    /// The store's delete, then the revocation of the record's tokens, also when the record was
    /// gone already (so that a retry after a failed revocation does revoke them).
    fn delete(&self, id: &str) -> ManageFuture<'_, ()> {
        let deleted = self.keys.delete(id);
        let id = id.to_owned();
        Box::pin(async move {
            let result = deleted.await;
            if matches!(result, Ok(()) | Err(ManageError::NotFound)) {
                self.revoke_tokens(&id).await?;
            }
            result
        })
    }

    fn purge(&self, before: SystemTime) -> ManageFuture<'_, u64> {
        self.keys.purge(before)
    }
}

/// Looks keys up in the wrapped store, so one value can serve the auth layer and management.
impl<M: KeyStore, R: Send + Sync + 'static> KeyStore for RevokeMintedTokens<M, R> {
    fn lookup(&self, digest: &KeyDigest) -> Lookup {
        self.keys.lookup(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn token(subject: &str, iat: u64) -> TokenInfo<'_> {
        TokenInfo {
            subject,
            jti: None,
            issued_at: Some(iat),
        }
    }

    #[test]
    fn cut_offs_and_jti_expiries_never_move_back() {
        let list = MemoryRevocations::new();
        list.revoke_subject_before("s", 200);
        list.revoke_subject_before("s", 100);
        assert!(list.is_revoked(&token("s", 150)));
        list.revoke_jti("j", 500);
        list.revoke_jti("j", 10);
        list.purge(100);
        assert_eq!(list.revoked_jtis(), 1);
        list.purge(501);
        assert_eq!(list.revoked_jtis(), 0);
        assert_eq!(list.revoked_subjects(), 1);
    }

    /// A revocation list that is down.
    struct Down;

    impl SubjectRevoker for Down {
        fn revoke_subject_before<'a>(&'a self, _: &'a str, _: u64) -> RevokeFuture<'a> {
            Box::pin(std::future::ready(Err("connection refused".into())))
        }
    }

    #[tokio::test]
    async fn a_failed_revocation_after_a_change_is_unavailable_and_retry_works() {
        let store = MemoryStore::new();
        let down = RevokeMintedTokens::new(store.clone(), Down);
        KeyManager::issue(&down, KeyRecord::new("k", "o"))
            .await
            .unwrap();
        let e = KeyManager::revoke(&down, "k").await.unwrap_err();
        assert!(matches!(e, ManageError::Unavailable(_)), "{e:?}");
        assert!(format!("{e:?}").contains("connection refused"), "{e:?}");
        // The store's change happened.
        assert_eq!(store.get("k").unwrap().status, KeyStatus::Revoked);

        let list = MemoryRevocations::new();
        let up = RevokeMintedTokens::new(store.clone(), list.clone());
        KeyManager::revoke(&up, "k").await.unwrap();
        assert!(list.is_revoked(&token("k", unix_secs(SystemTime::now()))));

        // A delete whose revocation failed, retried once the record is gone.
        KeyManager::issue(&down, KeyRecord::new("d", "o"))
            .await
            .unwrap();
        assert!(matches!(
            KeyManager::delete(&down, "d").await,
            Err(ManageError::Unavailable(_))
        ));
        assert_eq!(
            KeyManager::delete(&up, "d").await,
            Err(ManageError::NotFound)
        );
        assert!(list.is_revoked(&token("d", unix_secs(SystemTime::now()))));
        // Nothing that the store refused revokes anything.
        assert_eq!(
            KeyManager::revoke(&up, "nobody").await.unwrap_err(),
            ManageError::NotFound
        );
        assert!(!list.is_revoked(&token("nobody", 0)));
    }
}
