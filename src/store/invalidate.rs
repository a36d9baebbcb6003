use crate::key::KeyDigest;

/// Where a store's change notifications go: a cache that must forget what changed.
///
/// A persistent store tells every instance about a change made through any instance's
/// [`KeyManager`](super::KeyManager): `PostgresStore` through `LISTEN/NOTIFY`, `RedisStore`
/// through pub/sub. Its `watch` method takes an `Invalidate` (usually
/// `CachedStore::invalidator`) and calls it for each notification, and calls
/// [`invalidate_all`](Self::invalidate_all) after it lost and regained its subscription, since it
/// may have missed notifications meanwhile.
pub trait Invalidate: Send + Sync + 'static {
    /// The record with this id changed or was deleted: forget every key of it.
    fn invalidate_id(&self, id: &str);

    /// A key with this digest was created (it may be cached as unknown): forget it.
    fn invalidate_digest(&self, digest: &KeyDigest);

    /// Forget everything.
    fn invalidate_all(&self);

    /// Whether nobody listens any more (the cache was dropped): the watcher then stops.
    fn is_closed(&self) -> bool {
        false
    }
}

impl<T: Invalidate + ?Sized> Invalidate for std::sync::Arc<T> {
    fn invalidate_id(&self, id: &str) {
        (**self).invalidate_id(id);
    }

    fn invalidate_digest(&self, digest: &KeyDigest) {
        (**self).invalidate_digest(digest);
    }

    fn invalidate_all(&self) {
        (**self).invalidate_all();
    }

    fn is_closed(&self) -> bool {
        (**self).is_closed()
    }
}
