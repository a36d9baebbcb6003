//! Opening the store a URL names, and the failures of the tool.

use std::error::Error;
use std::fmt;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use keygate::jwt::{RedisRevocations, RevokeMintedTokens};
use keygate::key::KeyFormat;
use keygate::ratelimit::RedisUsage;
use keygate::store::{KeyManager, ManageError, PostgresStore, RedisStore};
use sqlx::Connection as _;
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// How long connecting to PostgreSQL may take, and the pool's wait for a connection: an
/// unreachable database fails the command after this long, not after the pool's default 30 s.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The schemes `--store` accepts, for the error that names them.
const SCHEMES: &str = "postgres://, postgresql:// (PostgreSQL) and redis://, rediss:// (Redis)";

/// Why a command failed: one sentence, with its causes, never a secret (see [`redact`]).
pub(crate) struct Failure(String);

impl Failure {
    /// A failure with no cause to add.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// `context`, then the messages of `error` and its sources, each after `: ` (a message
    /// that its parent's already holds is left out).
    pub(crate) fn caused(context: impl fmt::Display, error: &(dyn Error + 'static)) -> Self {
        let mut message = context.to_string();
        let mut next = Some(error);
        while let Some(e) = next {
            let text = e.to_string();
            if !text.is_empty() && !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            next = e.source();
        }
        Self(message)
    }

    /// A failed management call on the record `id`.
    pub(crate) fn manage(id: &str, error: &ManageError) -> Self {
        let mut failure = Self::caused(format_args!("key {id:?}"), error);
        if let ManageError::Unavailable(cause) = error
            && let Some(sqlx::Error::Database(db)) = cause.downcast_ref::<sqlx::Error>()
            && db.code().as_deref() == Some("42P01")
        {
            // undefined_table: the schema was never created.
            failure
                .0
                .push_str(" (run `keygate migrate` to create the store's tables)");
        }
        failure
    }

    /// The message, with every secret of `urls` taken out.
    pub(crate) fn message(&self, urls: &[&str]) -> String {
        redact(&self.0, urls)
    }
}

/// What `--store` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Postgres,
    Redis,
}

impl Backend {
    /// The store a URL names, from its scheme. The error never repeats the URL (it may hold a
    /// password), only a scheme that looks like one.
    pub(crate) fn of(url: &str) -> Result<Self, Failure> {
        let Some((scheme, _)) = url.split_once("://") else {
            return Err(Failure::new(format!(
                "the store is not a URL: this tool manages the keys of {SCHEMES} stores (a \
                 memory store lives inside its service and is managed there)"
            )));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "redis" | "rediss" => Ok(Self::Redis),
            other => {
                let shown = other.len() <= 32
                    && other
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
                let named = if shown {
                    format!("{other}://")
                } else {
                    "this scheme".to_owned()
                };
                Err(Failure::new(format!(
                    "the store URL's scheme is not supported ({named}): use {SCHEMES}"
                )))
            }
        }
    }
}

/// How to open the store.
pub(crate) struct Options<'a> {
    pub(crate) url: &'a str,
    pub(crate) backend: Backend,
    pub(crate) prefix: Option<&'a str>,
    pub(crate) schema: Option<&'a str>,
    pub(crate) channel: Option<&'a str>,
    pub(crate) key_format: Option<KeyFormat>,
    /// The Redis URL and prefix of the shared list of revoked tokens, when the tokens minted
    /// for a key are revoked with it.
    pub(crate) revocations: Option<(&'a str, &'a str)>,
}

/// An open store, managed through its own [`KeyManager`] implementation (the one whose every
/// change notifies the services that watch it), wrapped in [`RevokeMintedTokens`] when the
/// tokens minted for a key are revoked with it.
pub(crate) struct Store {
    opened: Opened,
    manager: Arc<dyn KeyManager>,
}

/// The store itself, for what only it does (migrating, closing).
pub(crate) enum Opened {
    Postgres(PostgresStore),
    Redis(RedisStore),
}

impl Store {
    /// Connects to the store now, so that a bad or unreachable URL fails here.
    pub(crate) async fn open(options: Options<'_>) -> Result<Self, Failure> {
        let opened = match options.backend {
            Backend::Postgres => {
                let connect = PgConnectOptions::from_str(options.url)
                    .map_err(|e| Failure::caused("the PostgreSQL URL is not valid", &e))?;
                // One connection first, for the real reason when it fails: a pool that cannot
                // connect only says that it timed out.
                let probe =
                    tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&connect))
                        .await
                        .map_err(|_| {
                            Failure::new(format!(
                                "cannot connect to PostgreSQL: no answer within {}s",
                                ACQUIRE_TIMEOUT.as_secs()
                            ))
                        })?
                        .map_err(|e| Failure::caused("cannot connect to PostgreSQL", &e))?;
                let _ = probe.close().await;
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(connect);
                let mut store = PostgresStore::new(pool);
                // Both were checked to be plain identifiers, which is all these ask.
                if let Some(schema) = options.schema {
                    store = store.schema(schema);
                }
                if let Some(channel) = options.channel {
                    store = store.channel(channel);
                }
                if let Some(format) = options.key_format {
                    store = store.key_format(format);
                }
                Opened::Postgres(store)
            }
            Backend::Redis => {
                let mut store = RedisStore::connect(options.url)
                    .await
                    .map_err(|e| Failure::caused("cannot connect to Redis", &e))?;
                if let Some(prefix) = options.prefix {
                    store = store.prefix(prefix);
                }
                if let Some(format) = options.key_format {
                    store = store.key_format(format);
                }
                Opened::Redis(store)
            }
        };
        let store: Arc<dyn KeyManager> = match &opened {
            Opened::Postgres(store) => Arc::new(store.clone()),
            Opened::Redis(store) => Arc::new(store.clone()),
        };
        let manager: Arc<dyn KeyManager> = match options.revocations {
            Some((url, prefix)) => {
                if Backend::of(url)? != Backend::Redis {
                    return Err(Failure::new(
                        "the revocation list is in Redis: --revocations-redis is a redis:// URL",
                    ));
                }
                let revocations = RedisRevocations::builder(url)
                    .prefix(prefix)
                    .connect()
                    .await
                    .map_err(|e| Failure::caused("cannot connect to the revocation list", &e))?;
                Arc::new(RevokeMintedTokens::new(store, revocations))
            }
            None => store,
        };
        Ok(Self { opened, manager })
    }

    /// The store itself.
    pub(crate) fn opened(&self) -> &Opened {
        &self.opened
    }

    /// The key manager the commands use: the store's own, or the store's wrapped in
    /// [`RevokeMintedTokens`].
    pub(crate) fn manager(&self) -> &dyn KeyManager {
        &*self.manager
    }

    /// Closes the PostgreSQL pool, so that the server sees the connections end cleanly.
    pub(crate) async fn close(self) {
        if let Opened::Postgres(store) = self.opened {
            store.pool().close().await;
        }
    }
}

/// The usage totals the services flush to the Redis at `url`, under `prefix`.
pub(crate) async fn usage(url: &str, prefix: &str) -> Result<RedisUsage, Failure> {
    match Backend::of(url)? {
        Backend::Redis => Ok(RedisUsage::connect(url)
            .await
            .map_err(|e| Failure::caused("cannot connect to the usage Redis", &e))?
            .prefix(prefix)),
        Backend::Postgres => Err(Failure::new(
            "the usage totals are in Redis: --usage-redis is a redis:// URL",
        )),
    }
}

/// `text` with the passwords of `urls` (as written, and percent-decoded) replaced by `***`.
/// The stores' errors do not carry the URL; this makes sure of it.
pub(crate) fn redact(text: &str, urls: &[&str]) -> String {
    let mut text = text.to_owned();
    for url in urls {
        for secret in secrets(url) {
            // Short passwords would hide ordinary words of the message; every real one is
            // longer than this.
            if secret.len() >= 3 {
                text = text.replace(&secret, "***");
            }
        }
    }
    text
}

/// The password of a URL's user info, and of its `password=` query parameter, each as written
/// and percent-decoded.
fn secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
    {
        found.push(password.to_owned());
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split(['&', '#']) {
            if let Some((name, value)) = pair.split_once('=')
                && name.eq_ignore_ascii_case("password")
            {
                found.push(value.to_owned());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    found
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hexadecimal digits are at most 255.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(
            Backend::of("postgres://a@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::of("PostgreSQL://a@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of("redis://h/0").ok(), Some(Backend::Redis));
        assert_eq!(Backend::of("rediss://h/0").ok(), Some(Backend::Redis));
        let memory = Backend::of("memory").err().unwrap().message(&[]);
        assert!(memory.contains("not a URL"), "{memory}");
        let mysql = Backend::of("mysql://root:hunter22@h/db")
            .err()
            .unwrap()
            .message(&[]);
        assert!(mysql.contains("(mysql://)"), "{mysql}");
        assert!(!mysql.contains("hunter22"), "{mysql}");
        let odd = Backend::of("x y z://h").err().unwrap().message(&[]);
        assert!(odd.contains("this scheme"), "{odd}");
    }

    #[test]
    fn passwords_are_redacted() {
        let url = "postgres://app:s%3Acret@db:5432/app?sslmode=require&password=other1";
        let text = "failed for postgres://app:s%3Acret@db and s:cret and other1";
        let shown = redact(text, &[url]);
        assert!(!shown.contains("s%3Acret"), "{shown}");
        assert!(!shown.contains("s:cret"), "{shown}");
        assert!(!shown.contains("other1"), "{shown}");
        assert_eq!(redact("nothing", &["redis://h:6379/0"]), "nothing");
        assert_eq!(redact("a :pw@ b", &["redis://:pw@h"]), "a :pw@ b");
    }

    #[test]
    fn causes_are_chained_once() {
        #[derive(Debug)]
        struct Outer(Inner);
        #[derive(Debug)]
        struct Inner;
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the key store is unavailable")
            }
        }
        impl fmt::Display for Inner {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connection refused")
            }
        }
        impl Error for Outer {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        impl Error for Inner {}
        let failure = Failure::caused("key \"k\"", &Outer(Inner));
        assert_eq!(
            failure.message(&[]),
            "key \"k\": the key store is unavailable: connection refused"
        );
    }
}
