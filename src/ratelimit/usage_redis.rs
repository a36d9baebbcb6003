//! Usage totals in Redis (feature `redis`): the counts of every instance, summed.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ErrorKind, RedisError, RedisResult, Script, ServerErrorKind};
use sha2::{Digest, Sha256};

use super::RedisLimiter;
use super::usage::{PartialAdd, UsageEntry, UsageFuture, UsageStore, UsageTotals};
use crate::BoxError;

/// The key prefix a [`RedisUsage`] uses unless told otherwise ([`RedisUsage::prefix`]).
const DEFAULT_PREFIX: &str = "keygate:usage:";

/// How long one [`RedisUsage`] call may take unless told otherwise ([`RedisUsage::timeout`]).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Callers per script call. A batch is one round trip however large (its script calls are
/// pipelined), but each call holds Redis for its own duration only: a large flush never stalls
/// the rate limiter's decisions on the same Redis for more than a fraction of a millisecond.
const CHUNK: usize = 500;

/// The longest caller name kept readable in a key; longer ones are hashed.
const MAX_PLAIN: usize = 128;

/// A count per entry is held below this, so that the script's sums never overflow Redis's
/// 64-bit integers (stored values at or above it are refused as not ours).
const MAX_COUNT: u64 = 999_999_999_999_999_999;

/// Adds a batch: one atomic script call per chunk of callers.
const LUA: &str = r"-- keygate usage: adds one batch of per-caller counts.
-- KEYS[i]: the hash of caller i. ARGV[1]: milliseconds to keep each updated hash (0: forever).
-- ARGV[3i-1], ARGV[3i], ARGV[3i+1]: caller i's allowed and limited counts, and when it was last
-- let through (milliseconds since the Unix epoch; 0 for not in this batch), in decimal.
-- A key that is not such a hash (another type, or fields that are not whole numbers below
-- 10^18) is left alone, so that the script never fails halfway: the indexes of those keys are
-- returned, and their counts kept by the caller for later.
local ttl = tonumber(ARGV[1])
local rejected = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local allowed, limited, at = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local kind = redis.call('TYPE', key)['ok']
  local ok = kind == 'hash' or kind == 'none'
  local old = false
  if ok then
    local cur = redis.call('HMGET', key, 'allowed', 'limited', 'last_used_at')
    for j = 1, 3 do
      if cur[j] and (#cur[j] > 18 or not string.find(cur[j], '^%d+$')) then ok = false end
    end
    old = cur[3]
  end
  if ok then
    if allowed ~= '0' then redis.call('HINCRBY', key, 'allowed', allowed) end
    if limited ~= '0' then redis.call('HINCRBY', key, 'limited', limited) end
    if at ~= '0' and (not old or tonumber(old) < tonumber(at)) then
      redis.call('HSET', key, 'last_used_at', at)
    end
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  else
    rejected[#rejected + 1] = i
  end
end
return rejected
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LUA));

/// Usage totals in Redis: every instance's [`UsageTracker`](super::UsageTracker) flushes to the
/// same Redis, and [`totals`](UsageStore::totals) is the sum over all of them.
///
/// Each caller is one hash, `{prefix}{caller}` (see [`redis_key`](Self::redis_key)), with the
/// fields `allowed`, `limited` (counts, `HINCRBY`) and `last_used_at` (milliseconds since the
/// Unix epoch, moved forward only, never back, so a late flush from a lagging instance cannot
/// move it back). [`add`](UsageStore::add) writes a whole batch in **one round trip**: a Lua
/// script per 500 callers, pipelined, each atomic (a chunk is added entirely or not at all).
/// [`totals`](UsageStore::totals) is one `HMGET`. A key that holds something else than such a
/// hash is left alone and its caller's counts are kept by the tracker ([`PartialAdd`]), so it
/// never blocks the other callers. The hashes are kept forever unless
/// [`expire_after`](Self::expire_after) says otherwise.
///
/// `last_used_at` is the flushing instance's wall clock (to the flush interval); instances
/// whose clocks disagree make it as late as the latest one.
///
/// **Failure.** Each call waits at most [`timeout`](Self::timeout) (default 5 s). A batch that
/// failed is kept by the tracker for the next flush. A batch whose answer was lost (a timeout,
/// or a connection dropped after Redis ran it) may be counted twice: delivery is at least once.
///
/// **Redis Cluster.** A script call touches many callers' keys, which must be in one hash slot:
/// put a hash tag in the prefix (`"{usage}:"`); caller names cannot change the slot (their braces
/// are escaped).
///
/// Cloning is cheap and clones share the connection. `Debug` shows the server's address but
/// never its password.
///
/// ```no_run
/// use std::time::Duration;
/// use keygate::ratelimit::{RateLimitLayer, RedisLimiter, RedisUsage, UsageStore, UsageTracker};
/// use keygate::Quota;
///
/// # async fn run() -> Result<(), keygate::BoxError> {
/// let usage = UsageTracker::new(100_000);
/// let totals = RedisUsage::connect("redis://127.0.0.1:6379/").await?.prefix("weather:usage:");
/// let (flush, flushing) = usage.flush_every(totals.clone(), Duration::from_secs(1));
/// tokio::spawn(flushing);
///
/// let limiter = RedisLimiter::connect("redis://127.0.0.1:6379/").await?;
/// let layer = RateLimitLayer::new(limiter, Quota::per_minute(100)).track_usage(usage.clone());
/// # let _ = layer;
/// // … later, on any instance:
/// let key_1 = totals.totals("key_1").await?;
/// println!("key_1: {} allowed, {} limited", key_1.allowed, key_1.limited);
/// flush.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct RedisUsage<C = ConnectionManager> {
    inner: Arc<Inner<C>>,
}

#[derive(Clone)]
struct Inner<C> {
    conn: C,
    prefix: Box<str>,
    timeout: Duration,
    /// Milliseconds, 0 for never.
    expire_ms: u64,
    /// `host:port/db` (no credentials), when known.
    addr: Option<Box<str>>,
}

impl RedisUsage {
    /// A store on a connection manager you built (start from
    /// [`manager_config`](Self::manager_config)).
    ///
    /// ```no_run
    /// use keygate::ratelimit::RedisUsage;
    /// use redis::aio::ConnectionManager;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// let manager = ConnectionManager::new_with_config(client, RedisUsage::manager_config()).await?;
    /// let totals = RedisUsage::new(manager);
    /// # let _ = totals;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(manager: ConnectionManager) -> Self {
        Self::build(manager, None)
    }

    /// Connects to the Redis at `url` (`redis://[:password@]host[:port][/db]`) and loads the
    /// script. Fails if the URL is invalid or Redis does not answer within a few seconds; to
    /// start while Redis may be down, use [`connect_lazy`](Self::connect_lazy).
    ///
    /// ```no_run
    /// use keygate::ratelimit::RedisUsage;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let totals = RedisUsage::connect("redis://127.0.0.1:6379/").await?;
    /// # let _ = totals;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, RedisError> {
        let usage = Self::connect_lazy(url)?;
        crate::redis_conn::load_scripts(&usage.inner.conn, &[&SCRIPT]).await?;
        Ok(usage)
    }

    /// A store for the Redis at `url` that connects on first use, so it can be built while
    /// Redis is down (flushes fail, and keep their counts, until it is up). Fails only on an
    /// invalid URL.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the connection manager starts a task).
    ///
    /// ```no_run
    /// use keygate::ratelimit::RedisUsage;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let totals = RedisUsage::connect_lazy("redis://redis.internal:6379/")?;
    /// # let _ = totals;
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_lazy(url: &str) -> Result<Self, RedisError> {
        let client = Client::open(url)?;
        let addr = crate::redis_conn::addr(&client);
        let manager = ConnectionManager::new_lazy_with_config(client, Self::manager_config())?;
        Ok(Self::build(manager, Some(addr)))
    }

    /// The connection-manager settings [`connect`](Self::connect) uses: those of
    /// [`RedisLimiter::manager_config`], with 5 s instead of 1 s for each response, as a large
    /// batch takes Redis longer than one rate-limit decision.
    ///
    /// ```
    /// use keygate::ratelimit::RedisUsage;
    ///
    /// let config = RedisUsage::manager_config().set_number_of_retries(5);
    /// # let _ = config;
    /// ```
    pub fn manager_config() -> ConnectionManagerConfig {
        RedisLimiter::manager_config().set_response_timeout(Some(DEFAULT_TIMEOUT))
    }
}

impl<C> RedisUsage<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store on any async Redis connection: a `MultiplexedConnection`, or a Redis Cluster
    /// connection (with a hash tag in the [`prefix`](Self::prefix)). Reconnecting is then the
    /// connection's own business.
    ///
    /// ```no_run
    /// use keygate::ratelimit::RedisUsage;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// let conn = client.get_multiplexed_async_connection().await?;
    /// let totals = RedisUsage::with_connection(conn);
    /// # let _ = totals;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_connection(conn: C) -> Self {
        Self::build(conn, None)
    }

    fn build(conn: C, addr: Option<Box<str>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                prefix: DEFAULT_PREFIX.into(),
                timeout: DEFAULT_TIMEOUT,
                expire_ms: 0,
                addr,
            }),
        }
    }

    fn inner(&mut self) -> &mut Inner<C> {
        Arc::make_mut(&mut self.inner)
    }

    /// Prefixes every Redis key with `prefix` (default `"keygate:usage:"`).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let totals = keygate::ratelimit::RedisUsage::connect("redis://127.0.0.1/")
    ///     .await?
    ///     .prefix("billing-api:usage:");
    /// assert_eq!(totals.redis_key("key_1"), "billing-api:usage:key_1");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inner().prefix = prefix.into().into_boxed_str();
        self
    }

    /// Waits at most `timeout` for each call (default 5 s).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let totals = keygate::ratelimit::RedisUsage::connect("redis://127.0.0.1/")
    ///     .await?
    ///     .timeout(Duration::from_secs(2));
    /// # let _ = totals;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner().timeout = timeout;
        self
    }

    /// Lets a caller's hash expire once nothing was flushed to it for `ttl` (each flush that
    /// touches it starts the wait again): totals then cover callers active within `ttl`, and
    /// callers that come and go (such as client addresses with
    /// [`key_by`](super::RateLimitLayer::key_by)) do not pile up in Redis. By default they are
    /// kept forever. A `ttl` below 1 ms counts as 1 ms.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let totals = keygate::ratelimit::RedisUsage::connect("redis://127.0.0.1/")
    ///     .await?
    ///     .expire_after(Duration::from_secs(90 * 86_400));
    /// # let _ = totals;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn expire_after(mut self, ttl: Duration) -> Self {
        self.inner().expire_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self
    }

    /// The Redis key of `caller`'s hash: the prefix, then the caller's name made safe for a key
    /// name. Names are kept as they are when they are at most 128 bytes of printable ASCII other
    /// than `%`, `:`, `{`, `}`, `~`, `*`, `?`, `[`, `]` and `\`; those bytes (and any other:
    /// spaces, control bytes, non-ASCII) are written `%XX`, so that a caller's name can never
    /// reach into another key's namespace, change a Cluster hash slot, or act as a `SCAN`
    /// pattern. A name longer than 128 bytes once so written becomes `~` and the hex SHA-256 of
    /// the name; the empty name is `%`. Distinct callers always get distinct keys.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), redis::RedisError> {
    /// let totals = keygate::ratelimit::RedisUsage::connect("redis://127.0.0.1/").await?;
    /// assert_eq!(totals.redis_key("key_1"), "keygate:usage:key_1");
    /// assert_eq!(totals.redis_key("tenant:7"), "keygate:usage:tenant%3A7");
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis_key(&self, caller: &str) -> String {
        let mut key = String::with_capacity(self.inner.prefix.len() + caller.len().min(MAX_PLAIN));
        key.push_str(&self.inner.prefix);
        push_key_part(&mut key, caller);
        key
    }
}

/// Whether `b` stands for itself in a key name.
fn plain(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'%' | b':' | b'{' | b'}' | b'~' | b'*' | b'?' | b'[' | b']' | b'\\'
        )
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";
const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `caller`, escaped (see [`RedisUsage::redis_key`]).
pub(super) fn push_key_part(out: &mut String, caller: &str) {
    if caller.is_empty() {
        out.push('%');
        return;
    }
    let escaped: usize = caller.bytes().map(|b| if plain(b) { 1 } else { 3 }).sum();
    if escaped > MAX_PLAIN {
        out.push('~');
        for b in Sha256::digest(caller.as_bytes()) {
            out.push(char::from(LOWER_HEX[usize::from(b >> 4)]));
            out.push(char::from(LOWER_HEX[usize::from(b & 15)]));
        }
        return;
    }
    for b in caller.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

fn millis(at: Option<SystemTime>) -> u64 {
    at.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A key of the batch that holds something else than a usage hash.
#[derive(Debug, thiserror::Error)]
#[error("a Redis key of the batch holds something else than usage counts")]
struct NotUsage;

/// Why [`RedisUsage`] gave up on a call.
#[derive(Debug, thiserror::Error)]
#[error("Redis did not answer the usage call in time")]
struct TimedOut;

/// What the script calls of one batch did.
#[derive(Default)]
struct Outcome {
    added: usize,
    rejected: Vec<UsageEntry>,
    error: Option<BoxError>,
}

impl Outcome {
    /// The answer of the script call for `chunk`: the 1-based indexes of the entries it left
    /// alone, or an error (it added nothing: each call is atomic, and the script never fails
    /// halfway).
    fn record(&mut self, chunk: &[UsageEntry], answer: RedisResult<Vec<i64>>) {
        match answer {
            Ok(indexes) => {
                let mut left = 0;
                for i in indexes {
                    let entry = usize::try_from(i)
                        .ok()
                        .and_then(|i| i.checked_sub(1))
                        .and_then(|i| chunk.get(i));
                    if let Some(entry) = entry {
                        self.rejected.push(entry.clone());
                        left += 1;
                    }
                }
                if left > 0 {
                    self.error.get_or_insert_with(|| Box::new(NotUsage));
                }
                self.added += chunk.len().saturating_sub(left);
            }
            Err(e) => {
                self.rejected.extend_from_slice(chunk);
                self.error.get_or_insert_with(|| Box::new(e));
            }
        }
    }

    fn finish(self, batch: usize) -> Result<(), BoxError> {
        match self.error {
            None => Ok(()),
            // Nothing was added: the error as it is (the tracker puts the whole batch back).
            Some(e) if self.added == 0 && self.rejected.len() == batch => Err(e),
            Some(e) => Err(Box::new(PartialAdd::new(self.rejected, e))),
        }
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> Inner<C> {
    fn script_call(&self, keys: &[String], chunk: &[UsageEntry]) -> ::redis::Cmd {
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(SCRIPT.get_hash()).arg(chunk.len()).arg(keys);
        cmd.arg(self.expire_ms);
        for e in chunk {
            cmd.arg(e.usage.allowed.min(MAX_COUNT))
                .arg(e.usage.limited.min(MAX_COUNT))
                .arg(millis(e.last_used_at));
        }
        cmd
    }

    /// Sends the script calls of these chunks in one pipeline; the answer of each.
    async fn send(
        &self,
        chunks: &[(Vec<String>, &[UsageEntry])],
    ) -> RedisResult<Vec<RedisResult<Vec<i64>>>> {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for (keys, chunk) in chunks {
            pipe.add_command(self.script_call(keys, chunk));
        }
        let mut conn = self.conn.clone();
        let answers: Vec<RedisResult<Vec<i64>>> = pipe.query_async(&mut conn).await?;
        if answers.len() != chunks.len() {
            // Never from a Redis: a reply that does not say what happened to every chunk.
            return Err(RedisError::from((
                ErrorKind::Parse,
                "a pipeline reply of the wrong length",
            )));
        }
        Ok(answers)
    }

    async fn add(
        &self,
        batch: Vec<UsageEntry>,
        key_of: impl Fn(&str) -> String,
    ) -> Result<(), BoxError> {
        let chunks: Vec<(Vec<String>, &[UsageEntry])> = batch
            .chunks(CHUNK)
            .map(|chunk| (chunk.iter().map(|e| key_of(&e.caller)).collect(), chunk))
            .collect();
        // A failure of the whole round trip: nothing is known to have been added.
        let answers = self.send(&chunks).await?;
        let mut outcome = Outcome::default();
        let mut unknown_script = Vec::new();
        for ((keys, chunk), answer) in chunks.into_iter().zip(answers) {
            match answer {
                // A `NOSCRIPT` call ran nothing: sent again once the script is loaded (Redis
                // restarted, or its scripts were flushed).
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    unknown_script.push((keys, chunk));
                }
                answer => outcome.record(chunk, answer),
            }
        }
        if !unknown_script.is_empty() {
            let mut conn = self.conn.clone();
            let again = match SCRIPT.load_async(&mut conn).await {
                Ok(_) => self.send(&unknown_script).await,
                Err(e) => Err(e),
            };
            match again {
                Ok(answers) => {
                    for ((_, chunk), answer) in unknown_script.into_iter().zip(answers) {
                        outcome.record(chunk, answer);
                    }
                }
                Err(e) => {
                    for (_, chunk) in unknown_script {
                        outcome.record(chunk, Err(e.clone()));
                    }
                }
            }
        }
        outcome.finish(batch.len())
    }

    async fn totals(&self, key: String) -> Result<UsageTotals, BoxError> {
        let mut conn = self.conn.clone();
        let (allowed, limited, last): (Option<u64>, Option<u64>, Option<u64>) =
            ::redis::cmd("HMGET")
                .arg(key)
                .arg("allowed")
                .arg("limited")
                .arg("last_used_at")
                .query_async(&mut conn)
                .await?;
        Ok(UsageTotals::new(
            allowed.unwrap_or(0),
            limited.unwrap_or(0),
            last.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        ))
    }
}

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(answer) => answer,
        Err(_) => Err(Box::new(TimedOut)),
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> UsageStore for RedisUsage<C> {
    fn add(&self, batch: Vec<UsageEntry>) -> UsageFuture<'_, ()> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            bounded(
                self.inner.timeout,
                self.inner.add(batch, |caller| self.redis_key(caller)),
            )
            .await
        })
    }

    fn totals(&self, caller: &str) -> UsageFuture<'_, UsageTotals> {
        let key = self.redis_key(caller);
        Box::pin(bounded(self.inner.timeout, self.inner.totals(key)))
    }
}

impl<C> Clone for RedisUsage<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> fmt::Debug for RedisUsage<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("RedisUsage")
            .field("addr", &inner.addr)
            .field("prefix", &inner.prefix)
            .field("timeout", &inner.timeout)
            .field("expire_ms", &inner.expire_ms)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(caller: &str) -> String {
        let mut s = String::new();
        push_key_part(&mut s, caller);
        s
    }

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(part("key_1"), "key_1");
        assert_eq!(part("user@example.com"), "user@example.com");
        assert_eq!(part("(overflow)"), "(overflow)");
    }

    #[test]
    fn separators_patterns_and_tags_are_escaped() {
        assert_eq!(part("tenant:7"), "tenant%3A7");
        assert_eq!(part("{slot}"), "%7Bslot%7D");
        assert_eq!(part("a*?[]\\"), "a%2A%3F%5B%5D%5C");
        assert_eq!(part("50%"), "50%25");
        assert_eq!(part("~x"), "%7Ex");
        assert_eq!(part("a b\n"), "a%20b%0A");
        assert_eq!(part("é"), "%C3%A9");
        assert_eq!(part(""), "%");
    }

    #[test]
    fn distinct_names_get_distinct_keys() {
        let long = "x".repeat(129);
        let names = [
            "a:b", "a%3Ab", "a%b", "", "%", "~", "%25", "a", "A", &long, "x", "~x", "%7Ex",
        ];
        let parts: std::collections::HashSet<_> = names.iter().map(|n| part(n)).collect();
        assert_eq!(parts.len(), names.len());
    }

    #[test]
    fn long_names_are_hashed_and_bounded() {
        let exactly = "y".repeat(MAX_PLAIN);
        assert_eq!(part(&exactly), exactly);
        let long = "y".repeat(MAX_PLAIN + 1);
        let hashed = part(&long);
        assert_eq!(hashed.len(), 65);
        assert!(hashed.starts_with('~'));
        assert!(hashed[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(part(&"y".repeat(1 << 20)).len(), 65);
        // 43 colons escape to 129 bytes: hashed too.
        assert_eq!(part(&":".repeat(43)).len(), 65);
        assert_eq!(part(&":".repeat(42)).len(), 126);
    }
}
