//! JWT revocations shared through Redis (feature `redis`): one list for every instance, read
//! from a local mirror on each request.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, PubSub, PubSubStream};
use ::redis::{Client, IntoConnectionInfo, Msg, RedisError, Script, Value};
use tokio::task::AbortHandle;

use super::revocation::RevokeFuture;
use super::{MemoryRevocations, Revocations, SubjectRevoker, TokenInfo};
use crate::clock::{Clock, SystemClock};
use crate::outage::{OutageLog, Report, info_recovered, warn_outage};
use crate::ratelimit::RedisLimiter;

/// The key prefix unless told otherwise ([`RedisRevocationsBuilder::prefix`]).
const DEFAULT_PREFIX: &str = "keygate:revocations:";
/// How often the whole list is read again unless told otherwise.
const DEFAULT_RESYNC: Duration = Duration::from_secs(30);
/// How long the mirror may go without a sync before every token is refused, unless told
/// otherwise.
const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(5 * 60);
/// The shortest period between two full reads.
const MIN_RESYNC: Duration = Duration::from_millis(100);
/// The longest period between two checks that the subscription still answers.
const MAX_HEARTBEAT: Duration = Duration::from_secs(5);
/// The shortest period between two such checks.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
/// How long one Redis command may take (a write, a page of a read, a ping).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the background task waits for a new subscription connection.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
// How long `RedisRevocationsBuilder::connect` waits for Redis before the first read.
use crate::redis_conn::CONNECT_WAIT;
/// The first pause after a failed attempt to reach Redis; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long after its token's `exp` a `jti` entry is kept: a verifier accepts a token until
/// `exp` plus its leeway (60 s by default), and clocks disagree a little.
const PURGE_GRACE: u64 = 3600;
/// Entries asked for per page of a full read.
const SCAN_COUNT: usize = 1000;
/// The largest time the list stores, in seconds: integers up to 2^53 are exact in a Lua
/// number and in a sorted-set score. Larger times are that one (still never reached).
const MAX_TIME: u64 = (1 << 53) - 1;

/// Revokes one `jti`, keeping the later `exp` when it is revoked already, and tells the other
/// instances, in one atomic step.
const JTI_LUA: &str = r"-- keygate: revoke a JWT by jti.
-- KEYS[1]: sorted set, jti -> exp. ARGV: jti, exp (seconds), channel.
-- Returns the exp kept.
local exp = ARGV[2]
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if current and (tonumber(current) or 0) >= tonumber(exp) then
  exp = current
else
  redis.call('ZADD', KEYS[1], exp, ARGV[1])
end
redis.call('PUBLISH', ARGV[3], 'j ' .. exp .. ' ' .. ARGV[1])
return exp
";

/// Moves a subject's cut-off forward (never back), and tells the other instances, in one atomic
/// step.
const SUBJECT_LUA: &str = r"-- keygate: revoke a subject's JWTs issued before a time.
-- KEYS[1]: hash, subject -> cut-off. ARGV: subject, cut-off (seconds), channel.
-- Returns the cut-off kept: the later of the stored one and ARGV[2].
local before = ARGV[2]
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and (tonumber(current) or 0) >= tonumber(before) then
  before = current
else
  redis.call('HSET', KEYS[1], ARGV[1], before)
end
redis.call('PUBLISH', ARGV[3], 's ' .. before .. ' ' .. ARGV[1])
return before
";

static JTI_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(JTI_LUA));
static SUBJECT_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(SUBJECT_LUA));

/// Why a [`RedisRevocations`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisRevocationsError {
    /// Redis failed: refused the connection, closed it, answered with an error.
    #[error("the Redis revocation list is unavailable")]
    Redis(#[source] RedisError),
    /// Redis did not answer in time.
    #[error("the Redis revocation list did not answer in time")]
    Timeout,
}

impl From<RedisError> for RedisRevocationsError {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

/// Waits at most `limit` for `f`.
async fn within<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisRevocationsError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(RedisRevocationsError::Redis),
        Err(_) => Err(RedisRevocationsError::Timeout),
    }
}

/// JWT revocations shared by every instance of a service through one Redis, checked against a
/// local mirror: [`is_revoked`](Revocations::is_revoked), on every request, never waits for the
/// network.
///
/// **How it stays in sync.** [`connect`](RedisRevocationsBuilder::connect) subscribes to the
/// list's channel, reads the whole list, and returns once both are done; a background task on the
/// Tokio runtime then applies each change another instance publishes as it comes, reads the
/// whole list again every [`resync_every`](RedisRevocationsBuilder::resync_every) (default 30 s)
/// and right after a lost subscription is back, and pings the subscription at least every 5 s so
/// that a connection that died silently is noticed. While Redis cannot be reached it tries again
/// with a backoff of up to one second. The task ends when the last clone of the handle is dropped.
///
/// **Writes.** [`revoke_jti`](Self::revoke_jti) and
/// [`revoke_subject_before`](Self::revoke_subject_before) write to Redis and publish the change
/// in one Lua script, then apply it to this instance's mirror at once; the other instances see it
/// within a network round trip. A subject's cut-off only ever moves forward, whichever instance
/// writes last, and is kept for good (one hash entry per revoked subject); a `jti` entry is
/// dropped an hour after its token's `exp` (by whichever instance reads the list next). A
/// revocation is never taken back: deleting it from Redis does not remove it from the mirrors of
/// running instances. The list is a [`SubjectRevoker`] too: give it to
/// [`RevokeMintedTokens`](super::RevokeMintedTokens), and revoking an API key on one instance
/// refuses the tokens minted for it on all of them.
///
/// **Failure policy.** While Redis is unreachable the mirror keeps answering with what it knows:
/// the revocations it had are still refused, the others are accepted, and revocations made
/// elsewhere during the outage are missed until it syncs again. Once the mirror has gone longer
/// than [`max_staleness`](RedisRevocationsBuilder::max_staleness) (default 5 minutes) without
/// a sync, `is_revoked` answers `true` for every token: any of them might have been revoked
/// meanwhile, and the list cannot tell, so it fails closed (with a warning when it starts and at
/// most one every 10 s while it lasts). `max_staleness(None)` keeps the mirror answering however
/// old it is. When Redis is back the task syncs again and tokens are accepted again, without a
/// restart. The mirror counts as synced at each full read and each answered ping of the
/// subscription, so pick a `max_staleness` well above a few seconds. Writes fail with
/// [`RedisRevocationsError`] while Redis is away; they are never queued.
///
/// **In Redis**, for a prefix `p` (default `keygate:revocations:`): `pjti`, a sorted set of
/// `jti`s scored by `exp`; `psubjects`, a hash of subject → cut-off; and the pub/sub channel
/// `pevents`. Times are seconds since the Unix epoch.
///
/// Cloning is cheap; clones share the mirror and the task. `Debug` shows the server's address,
/// never its password.
///
/// ```no_run
/// use std::time::Duration;
/// use keygate::auth::AuthLayer;
/// use keygate::jwt::{JwtKey, JwtVerifier, RedisRevocations};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let revocations = RedisRevocations::builder("redis://127.0.0.1:6379/")
///     .prefix("weather:revocations:")
///     .resync_every(Duration::from_secs(60))
///     .max_staleness(Duration::from_secs(120))
///     .connect()
///     .await?;
/// let verifier = JwtVerifier::with_keys([JwtKey::hmac(b"a secret of at least 32 bytes, please!")])
///     .revocations(revocations.clone());
/// let layer = AuthLayer::jwt_only(verifier);
///
/// // Later, on any instance: every instance refuses the token from now on.
/// revocations.revoke_jti("4f1c9a", 1_900_000_000).await?;
/// revocations.revoke_subject_before("user-7", 1_800_000_000).await?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisRevocations {
    inner: Arc<Handle>,
}

/// What the handles share; dropping the last one stops the background task.
struct Handle {
    shared: Arc<Shared>,
    conn: ConnectionManager,
    task: AbortHandle,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the request path reads and the background task writes. The task holds it weakly.
struct Shared {
    mirror: MemoryRevocations,
    keys: Keys,
    /// When the mirror was last known to be current, on [`SystemClock::monotonic_nanos`].
    synced_at: AtomicU64,
    /// `None`: never fail closed.
    max_staleness: Option<u64>,
    /// Tokens refused because the mirror was stale.
    stale: OutageLog,
    /// `host:port/db`, without credentials.
    addr: Box<str>,
    resync_every: Duration,
}

/// The Redis keys and the channel of one list.
#[derive(Debug, Clone)]
struct Keys {
    jtis: String,
    subjects: String,
    channel: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            jtis: format!("{prefix}jti"),
            subjects: format!("{prefix}subjects"),
            channel: format!("{prefix}events"),
        }
    }
}

fn monotonic() -> u64 {
    SystemClock.monotonic_nanos()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A time as Redis holds it: a decimal integer, or a score in `%.17g` form.
fn parse_time(s: &str) -> Option<u64> {
    if let Ok(t) = s.parse::<u64>() {
        return Some(t.min(MAX_TIME));
    }
    let t = s.parse::<f64>().ok()?;
    if t.is_nan() {
        return None;
    }
    // Saturating: negative times are 0, huge ones MAX_TIME.
    Some((t as u64).min(MAX_TIME))
}

impl Shared {
    fn mark_synced(&self, at: u64) {
        self.synced_at.fetch_max(at, Ordering::AcqRel);
        if let Some(refused) = self.stale.success() {
            tracing::info!(
                target: "keygate",
                refused,
                "JWT revocation list synced with Redis again; tokens are accepted again"
            );
        }
    }

    /// How long since the mirror was last known to be current.
    fn age(&self) -> Duration {
        Duration::from_nanos(monotonic().saturating_sub(self.synced_at.load(Ordering::Acquire)))
    }

    #[cold]
    fn refuse_stale(&self) {
        let max = Duration::from_nanos(self.max_staleness.unwrap_or_default());
        match self.stale.failure() {
            Some(Report::Started) => tracing::warn!(
                target: "keygate",
                max_staleness = ?max,
                "JWT revocation list not synced with Redis within max_staleness; refusing every token until it is"
            ),
            Some(Report::Continuing { failures }) => tracing::warn!(
                target: "keygate",
                max_staleness = ?max,
                refused = failures,
                "JWT revocation list still not synced with Redis; tokens refused since the last report"
            ),
            None => {}
        }
    }

    /// Applies a published change: `j <exp> <jti>` or `s <before> <subject>`.
    fn apply(&self, payload: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(payload) else {
            return false;
        };
        let mut parts = text.splitn(3, ' ');
        let (Some(kind), Some(time), Some(name)) = (
            parts.next(),
            parts.next().and_then(parse_time),
            parts.next(),
        ) else {
            return false;
        };
        match kind {
            "j" => self.mirror.revoke_jti(name, time),
            "s" => self.mirror.revoke_subject_before(name, time),
            _ => return false,
        }
        true
    }
}

/// Reads the whole list into `mirror`, and drops the `jti`s whose tokens are long expired, in
/// Redis and in the mirror.
async fn load(
    conn: &ConnectionManager,
    keys: &Keys,
    mirror: &MemoryRevocations,
) -> Result<(), RedisRevocationsError> {
    let mut conn = conn.clone();
    let horizon = unix_now().saturating_sub(PURGE_GRACE);
    let mut purge = ::redis::cmd("ZREMRANGEBYSCORE");
    purge.arg(&keys.jtis).arg("-inf").arg(format!("({horizon}"));
    within(COMMAND_TIMEOUT, purge.query_async::<Value>(&mut conn)).await?;
    mirror.purge(horizon);

    for (command, key) in [("ZSCAN", &keys.jtis), ("HSCAN", &keys.subjects)] {
        let mut cursor = String::from("0");
        loop {
            let mut scan = ::redis::cmd(command);
            scan.arg(key).arg(&cursor).arg("COUNT").arg(SCAN_COUNT);
            let page = scan.query_async::<(String, Vec<Vec<u8>>)>(&mut conn);
            let (next, items) = within(COMMAND_TIMEOUT, page).await?;
            for pair in items.chunks_exact(2) {
                let (Ok(name), Some(time)) = (
                    std::str::from_utf8(&pair[0]),
                    std::str::from_utf8(&pair[1]).ok().and_then(parse_time),
                ) else {
                    continue;
                };
                if command == "ZSCAN" {
                    if time >= horizon {
                        mirror.revoke_jti(name, time);
                    }
                } else {
                    mirror.revoke_subject_before(name, time);
                }
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// Options for a [`RedisRevocations`], from [`RedisRevocations::builder`].
#[must_use]
pub struct RedisRevocationsBuilder {
    client: Result<Client, RedisError>,
    prefix: String,
    resync_every: Duration,
    max_staleness: Option<Duration>,
}

impl RedisRevocations {
    /// Connects to the Redis at `url` (`redis://[:password@]host[:port][/db]`) with the default
    /// options, as [`builder`](Self::builder)`(url).connect()`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keygate::jwt::RedisRevocationsError> {
    /// let revocations = keygate::jwt::RedisRevocations::connect("redis://127.0.0.1/").await?;
    /// # let _ = revocations;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: impl IntoConnectionInfo) -> Result<Self, RedisRevocationsError> {
        Self::builder(url).connect().await
    }

    /// Options for the list in the Redis at `url` (a `redis://` or `rediss://` URL, or a
    /// `redis::ConnectionInfo`): prefix `keygate:revocations:`, a full read every 30 s, fail
    /// closed after 5 minutes without a sync. Nothing connects before
    /// [`connect`](RedisRevocationsBuilder::connect).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use keygate::jwt::RedisRevocations;
    ///
    /// # async fn run() -> Result<(), keygate::jwt::RedisRevocationsError> {
    /// let revocations = RedisRevocations::builder("redis://redis.internal:6379/2")
    ///     .max_staleness(None) // never refuse every token, however old the mirror
    ///     .connect()
    ///     .await?;
    /// # let _ = revocations;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: impl IntoConnectionInfo) -> RedisRevocationsBuilder {
        RedisRevocationsBuilder {
            client: Client::open(url),
            prefix: DEFAULT_PREFIX.to_owned(),
            resync_every: DEFAULT_RESYNC,
            max_staleness: Some(DEFAULT_MAX_STALENESS),
        }
    }

    /// Revokes the token with this `jti` on every instance. `expires_at` is its `exp` (seconds
    /// since the epoch): the entry is dropped an hour after it. Revoking a `jti` again keeps the
    /// later `exp`. This instance refuses the token as soon as the call returns `Ok`.
    ///
    /// ```no_run
    /// # async fn run(revocations: keygate::jwt::RedisRevocations) -> Result<(), keygate::jwt::RedisRevocationsError> {
    /// revocations.revoke_jti("4f1c9a", 1_900_000_000).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn revoke_jti(
        &self,
        jti: &str,
        expires_at: u64,
    ) -> Result<(), RedisRevocationsError> {
        let shared = &self.inner.shared;
        let mut conn = self.inner.conn.clone();
        let mut invocation = JTI_SCRIPT.key(&shared.keys.jtis);
        invocation
            .arg(jti)
            .arg(expires_at.min(MAX_TIME))
            .arg(&shared.keys.channel);
        let kept = within(
            COMMAND_TIMEOUT,
            invocation.invoke_async::<String>(&mut conn),
        )
        .await?;
        shared
            .mirror
            .revoke_jti(jti, parse_time(&kept).unwrap_or(expires_at.min(MAX_TIME)));
        Ok(())
    }

    /// Revokes, on every instance, every token of `subject` issued before `before` (seconds
    /// since the epoch), and every token of it without `iat`. The cut-off only moves forward: an
    /// earlier `before` than the stored one, from any instance, changes nothing. This instance
    /// refuses the tokens as soon as the call returns `Ok`.
    ///
    /// ```no_run
    /// # async fn run(revocations: keygate::jwt::RedisRevocations) -> Result<(), keygate::jwt::RedisRevocationsError> {
    /// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    /// // Every token of user-7 issued up to this second.
    /// revocations.revoke_subject_before("user-7", now + 1).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn revoke_subject_before(
        &self,
        subject: &str,
        before: u64,
    ) -> Result<(), RedisRevocationsError> {
        let shared = &self.inner.shared;
        let mut conn = self.inner.conn.clone();
        let mut invocation = SUBJECT_SCRIPT.key(&shared.keys.subjects);
        invocation
            .arg(subject)
            .arg(before.min(MAX_TIME))
            .arg(&shared.keys.channel);
        let kept = within(
            COMMAND_TIMEOUT,
            invocation.invoke_async::<String>(&mut conn),
        )
        .await?;
        shared
            .mirror
            .revoke_subject_before(subject, parse_time(&kept).unwrap_or(before.min(MAX_TIME)));
        Ok(())
    }

    /// How long since the mirror was last known to be current (a full read of the list, or an
    /// answered ping of the subscription). Past `max_staleness`, every token is refused.
    ///
    /// ```no_run
    /// # async fn run(revocations: keygate::jwt::RedisRevocations) {
    /// if revocations.synced_ago() > std::time::Duration::from_secs(60) {
    ///     eprintln!("the revocation list has not synced with Redis for a minute");
    /// }
    /// # }
    /// ```
    pub fn synced_ago(&self) -> Duration {
        self.inner.shared.age()
    }

    /// Whether the mirror is past `max_staleness`, so that every token is refused (always
    /// `false` with `max_staleness(None)`). A health check can report it.
    ///
    /// ```no_run
    /// # async fn run(revocations: keygate::jwt::RedisRevocations) {
    /// assert!(!revocations.is_stale());
    /// # }
    /// ```
    pub fn is_stale(&self) -> bool {
        let shared = &self.inner.shared;
        shared
            .max_staleness
            .is_some_and(|max| nanos(shared.age()) > max)
    }
}

impl RedisRevocationsBuilder {
    /// Prefixes the list's Redis keys and channel with `prefix` (default
    /// `keygate:revocations:`). Instances share a list when they use the same Redis and prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Reads the whole list again every `period` (default 30 s; at least 100 ms), besides the
    /// changes the subscription brings, and drops long-expired `jti` entries then.
    pub fn resync_every(mut self, period: Duration) -> Self {
        self.resync_every = period.max(MIN_RESYNC);
        self
    }

    /// Refuses every token once the mirror has gone longer than this without a sync (default
    /// 5 minutes); `None` never does, however old the mirror.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn run() -> Result<(), keygate::jwt::RedisRevocationsError> {
    /// let strict = keygate::jwt::RedisRevocations::builder("redis://127.0.0.1/")
    ///     .max_staleness(Duration::from_secs(30))
    ///     .connect()
    ///     .await?;
    /// # let _ = strict;
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_staleness(mut self, max: impl Into<Option<Duration>>) -> Self {
        self.max_staleness = max.into();
        self
    }

    /// Connects, subscribes, reads the whole list, and starts the background task on the current
    /// Tokio runtime. Fails when the URL is invalid or Redis cannot be reached: within about
    /// 5 s, plus the time the read takes.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub async fn connect(self) -> Result<RedisRevocations, RedisRevocationsError> {
        let client = self.client?;
        let addr = crate::redis_conn::addr(&client);
        let keys = Keys::new(&self.prefix);
        let (conn, pubsub) = within(CONNECT_WAIT, async {
            let conn =
                ConnectionManager::new_with_config(client.clone(), RedisLimiter::manager_config())
                    .await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&keys.channel).await?;
            Ok((conn, pubsub))
        })
        .await?;
        let shared = Arc::new(Shared {
            mirror: MemoryRevocations::new(),
            keys,
            synced_at: AtomicU64::new(0),
            max_staleness: self.max_staleness.map(nanos),
            stale: OutageLog::new(),
            addr,
            resync_every: self.resync_every,
        });
        let started = monotonic();
        load(&conn, &shared.keys, &shared.mirror).await?;
        shared.mark_synced(started);
        let heartbeat = [
            self.resync_every,
            MAX_HEARTBEAT,
            self.max_staleness.map_or(MAX_HEARTBEAT, |m| m / 4),
        ]
        .into_iter()
        .min()
        .unwrap_or(MAX_HEARTBEAT)
        .max(MIN_HEARTBEAT);
        let worker = Worker {
            shared: Arc::downgrade(&shared),
            client,
            conn: conn.clone(),
            keys: shared.keys.clone(),
            resync_every: self.resync_every,
            heartbeat,
            log: OutageLog::new(),
        };
        let task = tokio::spawn(worker.run(pubsub)).abort_handle();
        Ok(RedisRevocations {
            inner: Arc::new(Handle { shared, conn, task }),
        })
    }
}

impl fmt::Debug for RedisRevocationsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.client.as_ref().ok().map(crate::redis_conn::addr);
        f.debug_struct("RedisRevocationsBuilder")
            .field("addr", &addr)
            .field("prefix", &self.prefix)
            .field("resync_every", &self.resync_every)
            .field("max_staleness", &self.max_staleness)
            .finish()
    }
}

impl Revocations for RedisRevocations {
    /// The mirror's answer, or `true` when the mirror is past `max_staleness`. Never waits.
    fn is_revoked(&self, token: &TokenInfo<'_>) -> bool {
        let shared = &*self.inner.shared;
        if let Some(max) = shared.max_staleness
            && monotonic().saturating_sub(shared.synced_at.load(Ordering::Acquire)) > max
        {
            shared.refuse_stale();
            return true;
        }
        shared.mirror.is_revoked(token)
    }
}

/// Writes the cut-off to Redis (every instance), as
/// [`RedisRevocations::revoke_subject_before`].
impl SubjectRevoker for RedisRevocations {
    fn revoke_subject_before<'a>(&'a self, subject: &'a str, before: u64) -> RevokeFuture<'a> {
        Box::pin(async move {
            RedisRevocations::revoke_subject_before(self, subject, before)
                .await
                .map_err(Into::into)
        })
    }
}

impl fmt::Debug for RedisRevocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.inner.shared;
        f.debug_struct("RedisRevocations")
            .field("addr", &shared.addr)
            .field("channel", &shared.keys.channel)
            .field("resync_every", &shared.resync_every)
            .field(
                "max_staleness",
                &shared.max_staleness.map(Duration::from_nanos),
            )
            .field("synced_ago", &shared.age())
            .field("mirror", &shared.mirror)
            .finish()
    }
}

/// How a subscription ended.
enum End {
    /// Every handle is gone: stop.
    Dropped,
    /// Redis failed: subscribe again.
    Lost(RedisRevocationsError),
}

/// The background task: follows the channel, reads the list again, reconnects.
struct Worker {
    shared: Weak<Shared>,
    client: Client,
    conn: ConnectionManager,
    keys: Keys,
    resync_every: Duration,
    heartbeat: Duration,
    log: OutageLog,
}

impl Worker {
    async fn run(self, first: PubSub) {
        let mut subscribed = Some(first);
        let mut backoff = MIN_BACKOFF;
        loop {
            let pubsub = match subscribed.take() {
                Some(pubsub) => pubsub,
                None => match self.subscribe().await {
                    Ok(pubsub) => pubsub,
                    Err(End::Dropped) => return,
                    Err(End::Lost(e)) => {
                        warn_outage!(self.log, e, "Redis revocation list");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            let started = tokio::time::Instant::now();
            match self.follow(pubsub).await {
                End::Dropped => return,
                End::Lost(e) => warn_outage!(self.log, e, "Redis revocation list"),
            }
            // A subscription that held resubscribes at once; one that keeps failing as soon
            // as it is made backs off.
            if started.elapsed() >= MAX_BACKOFF {
                backoff = MIN_BACKOFF;
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Subscribes again, then reads the whole list (it may have missed changes meanwhile).
    async fn subscribe(&self) -> Result<PubSub, End> {
        if self.shared.strong_count() == 0 {
            return Err(End::Dropped);
        }
        let mut pubsub = within(SUBSCRIBE_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(End::Lost)?;
        within(COMMAND_TIMEOUT, pubsub.subscribe(&self.keys.channel))
            .await
            .map_err(End::Lost)?;
        self.resync().await?;
        Ok(pubsub)
    }

    async fn resync(&self) -> Result<(), End> {
        let shared = self.shared.upgrade().ok_or(End::Dropped)?;
        let started = monotonic();
        load(&self.conn, &self.keys, &shared.mirror)
            .await
            .map_err(End::Lost)?;
        shared.mark_synced(started);
        info_recovered!(self.log, "Redis revocation list");
        Ok(())
    }

    /// Applies the channel's changes until the subscription fails or the handles are gone.
    async fn follow(&self, pubsub: PubSub) -> End {
        let (mut sink, mut stream) = pubsub.split();
        let now = tokio::time::Instant::now();
        let mut resync = tokio::time::interval_at(now + self.resync_every, self.resync_every);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval_at(now + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = next_message(&mut stream) => {
                    let Some(msg) = msg else {
                        return End::Lost(closed());
                    };
                    let Some(shared) = self.shared.upgrade() else {
                        return End::Dropped;
                    };
                    if !shared.apply(msg.get_payload_bytes()) {
                        tracing::debug!(target: "keygate", "ignored a malformed revocation message");
                    }
                }
                _ = resync.tick() => {
                    if let Err(end) = self.resync().await {
                        return end;
                    }
                }
                _ = heartbeat.tick() => {
                    let sent = monotonic();
                    if let Err(e) = within(COMMAND_TIMEOUT, sink.ping::<Value>()).await {
                        return End::Lost(e);
                    }
                    let Some(shared) = self.shared.upgrade() else {
                        return End::Dropped;
                    };
                    // The subscription answers: every change published before the ping has
                    // arrived.
                    shared.mark_synced(sent);
                }
            }
        }
    }
}

fn closed() -> RedisRevocationsError {
    RedisRevocationsError::Redis(RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the subscription connection closed",
    )))
}

async fn next_message(stream: &mut PubSubStream) -> Option<Msg> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *stream), cx)).await
}
