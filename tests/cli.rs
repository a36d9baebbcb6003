//! The `keygate` binary (feature `cli`), run as a process: its exit codes and errors, every
//! command against a real PostgreSQL and a real Redis, the change notifications its changes
//! send, and the weather example's contract: a key the tool issues works on a running example
//! within 2 s, and one it revokes or rotates out stops working within 2 s.
//!
//! The tests of the command line itself need no server. The others are ignored unless asked
//! for:
//!
//! ```sh
//! KEYGATE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//! KEYGATE_TEST_REDIS_URL=redis://127.0.0.1:6379/ \
//!   cargo test --features cli --test cli -- --include-ignored
//! ```
//!
//! Asked for without their variable, they fail, so that a run without the servers never passes
//! for one that tested them. Each works in a database of its own (`kgtest_<random>`, dropped at
//! the end) or under Redis key prefixes of its own (deleted at the end), and with owners of its
//! own, so that runs never share state.

mod services;
#[cfg(all(feature = "axum", feature = "jwt"))]
#[allow(dead_code)] // The tests use the example's server, not its `main`.
#[path = "../examples/weather.rs"]
mod weather;

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use keygate::key::{ApiKey, Credits, KeyDigest, KeyFormat, KeyRecord, KeyStatus};
use keygate::ratelimit::{RedisUsage, Usage, UsageEntry, UsageStore as _};
use keygate::store::{Invalidate, KeyManager, KeyStore, PostgresStore, RedisStore};
use serde_json::{Value, json};
use sqlx::Connection as _;

/// How long one run of the binary may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// How long a test may take, servers and all.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// The bound within which a change holds on every service watching the store.
const PROPAGATION: Duration = Duration::from_secs(2);
/// How often a condition is checked while waiting for it.
const POLL: Duration = Duration::from_millis(50);
/// The variables the binary reads; a run never inherits them from the test's environment.
const CONFIG_VARS: &[&str] = &[
    "KEYGATE_STORE",
    "KEYGATE_STORE_PREFIX",
    "KEYGATE_SCHEMA",
    "KEYGATE_CHANNEL",
    "KEYGATE_KEY_PREFIX",
    "KEYGATE_USAGE_PREFIX",
    "KEYGATE_USAGE_REDIS",
    "KEYGATE_REVOCATIONS_PREFIX",
    "KEYGATE_REVOCATIONS_REDIS",
];
/// The fields of a record in JSON, exactly (the admin API's RECORD).
const RECORD_FIELDS: [&str; 11] = [
    "allowed_ips",
    "created_at",
    "credits",
    "expires_at",
    "id",
    "metadata",
    "owner",
    "quota",
    "scopes",
    "status",
    "tier",
];

// ---------------------------------------------------------------------------------------------
// Running the binary

/// What a run of the binary did.
struct Ran {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn context(&self) -> String {
        format!(
            "keygate {:?}: exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }

    /// Exit 0, and nothing on stderr that looks like an error.
    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{}", self.context());
        assert!(!self.stderr.contains("error"), "{}", self.context());
        self
    }

    /// Exit 1 with `error: ...` (containing `what`) on stderr, and nothing on stdout.
    #[track_caller]
    fn failed(self, what: &str) -> Self {
        assert_eq!(self.code, Some(1), "{}", self.context());
        assert!(self.stderr.starts_with("error: "), "{}", self.context());
        assert!(
            self.stderr.contains(what),
            "want {what:?}: {}",
            self.context()
        );
        assert_eq!(self.stdout, "", "{}", self.context());
        self
    }

    /// Exit 2 (a usage error) with clap's `error:` on stderr, and nothing on stdout.
    #[track_caller]
    fn usage_error(self, what: &str) -> Self {
        assert_eq!(self.code, Some(2), "{}", self.context());
        assert!(self.stderr.contains("error:"), "{}", self.context());
        assert!(
            self.stderr.contains(what),
            "want {what:?}: {}",
            self.context()
        );
        assert_eq!(self.stdout, "", "{}", self.context());
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.context()))
    }

    /// The key of `issue` or `rotate`'s text output: its first line, `key: ...`.
    #[track_caller]
    fn key(&self) -> String {
        let first = self.stdout.lines().next().unwrap_or("");
        first
            .strip_prefix("key: ")
            .unwrap_or_else(|| panic!("no `key: ` first line: {}", self.context()))
            .to_owned()
    }

    /// The `name: value` lines of a text output (the `key:` line left out).
    fn fields(&self) -> BTreeMap<String, String> {
        self.stdout
            .lines()
            .filter(|line| !line.starts_with("key: "))
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .collect()
    }
}

/// Runs the binary with `args` and `env`, and none of the tool's variables of this process.
async fn keygate(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
    for var in CONFIG_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("COLUMNS", "100")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("keygate {args:?} did not finish within {RUN_LIMIT:?}"))
        .expect("the keygate binary runs");
    Ran {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// The tool on one store: `--store URL` and the store's options before every command.
#[derive(Clone)]
struct Tool {
    url: String,
    options: Vec<String>,
}

impl Tool {
    fn new(url: &str, options: &[&str]) -> Self {
        Self {
            url: url.to_owned(),
            options: options.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    async fn run(&self, args: &[&str]) -> Ran {
        let mut all: Vec<&str> = vec!["--store", &self.url];
        all.extend(self.options.iter().map(String::as_str));
        all.extend(args);
        keygate(&all, &[]).await
    }

    /// The same, with the store from `KEYGATE_STORE` instead of `--store`.
    async fn run_with_env(&self, args: &[&str]) -> Ran {
        let mut all: Vec<&str> = self.options.iter().map(String::as_str).collect();
        all.extend(args);
        keygate(&all, &[("KEYGATE_STORE", &self.url)]).await
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn random_hex() -> String {
    let mut r = [0u8; 6];
    getrandom::fill(&mut r).unwrap();
    r.iter().map(|b| format!("{b:02x}")).collect()
}

/// A port on 127.0.0.1 that nothing listens on (one just released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `body` (bounded by [`TEST_LIMIT`]), then `cleanup` even when `body` panicked, then
/// passes the panic on.
async fn guarded(
    body: impl Future<Output = ()> + Send + 'static,
    cleanup: impl Future<Output = ()>,
) {
    let result = tokio::spawn(async move {
        tokio::time::timeout(TEST_LIMIT, body)
            .await
            .expect("the test took too long");
    })
    .await;
    cleanup.await;
    if let Err(e) = result {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the test task failed: {e}"),
        }
    }
}

/// Waits until `check` holds, for at most `within`; `what` names it when it never does.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// What a store's watcher heard: the ids and digests of its notifications.
#[derive(Default)]
struct Heard {
    ids: Mutex<Vec<String>>,
    digests: Mutex<Vec<KeyDigest>>,
}

impl Heard {
    fn has_id(&self, id: &str) -> bool {
        self.ids.lock().unwrap().iter().any(|i| i == id)
    }

    fn has_digest(&self, digest: &KeyDigest) -> bool {
        self.digests.lock().unwrap().contains(digest)
    }

    fn forget(&self) {
        self.ids.lock().unwrap().clear();
        self.digests.lock().unwrap().clear();
    }
}

impl Invalidate for Heard {
    fn invalidate_id(&self, id: &str) {
        self.ids.lock().unwrap().push(id.to_owned());
    }

    fn invalidate_digest(&self, digest: &KeyDigest) {
        self.digests.lock().unwrap().push(*digest);
    }

    fn invalidate_all(&self) {}
}

/// What the store answers for `key` now.
async fn lookup(store: &dyn KeyStore, key: &str) -> Option<Arc<KeyRecord>> {
    store
        .lookup(&ApiKey::new(key).digest())
        .await
        .expect("the store answers")
}

/// Checks a record in JSON field by field: the fields exactly, and their values.
#[track_caller]
fn assert_record(v: &Value, id: &str, owner: &str, scopes: &[&str], status: &str) {
    let mut fields: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("a record is an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, RECORD_FIELDS, "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["owner"], owner, "{v}");
    assert_eq!(v["scopes"], json!(scopes), "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["tier"], Value::Null, "{v}");
    assert_eq!(v["credits"], Value::Null, "{v}");
    assert_eq!(v["allowed_ips"], Value::Null, "{v}");
    assert_eq!(v["metadata"], json!({}), "{v}");
    let created = v["created_at"].as_str().expect("created_at is set");
    let created = humantime::parse_rfc3339(created).expect("created_at is RFC 3339");
    let age = SystemTime::now()
        .duration_since(created)
        .unwrap_or(Duration::ZERO);
    assert!(age < Duration::from_secs(600), "created long ago: {v}");
}

/// `at` (RFC 3339) is `after` from now, give or take a minute.
#[track_caller]
fn assert_in(at: &str, after: Duration) {
    let at = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at:?}: {e}"));
    let want = SystemTime::now() + after;
    let off = at
        .duration_since(want)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap();
    assert!(
        off < Duration::from_secs(60),
        "{at:?} is not {after:?} from now"
    );
}

// ---------------------------------------------------------------------------------------------
// The command line (no server)

#[tokio::test]
async fn usage_errors_exit_2() {
    let pg = "postgres://postgres@127.0.0.1:5432/test";
    // No command: the help, on stderr, as a usage error.
    let ran = keygate(&[], &[]).await;
    assert_eq!(ran.code, Some(2), "{}", ran.context());
    assert!(ran.stderr.contains("Usage:"), "{}", ran.context());
    assert_eq!(ran.stdout, "", "{}", ran.context());
    keygate(&["--store", pg, "keys", "explode"], &[])
        .await
        .usage_error("unrecognized subcommand");
    keygate(&["--store", pg, "keys", "list"], &[])
        .await
        .usage_error("--owner");
    keygate(&["keys", "list", "--owner", "o"], &[])
        .await
        .usage_error("KEYGATE_STORE");
    keygate(&["--store", pg, "keys", "issue", "--owner", "o"], &[])
        .await
        .usage_error("--scope");
    let issue = [
        "--store", pg, "keys", "issue", "--owner", "o", "--scope", "s",
    ];
    let long_name = "o".repeat(257);
    for (option, value, what) in [
        ("--quota", "10/fortnight", "unit"),
        ("--quota", "", "quota"),
        ("--expires-in", "30", "--expires-in"),
        ("--expires-in", "0s", "at least 1 second"),
        ("--expires-in", "101y", "100 years"),
        ("--key-prefix", "has space", "prefix"),
        ("--scope", "a b", "scope"),
        ("--id", " ", "blank"),
        ("--id", "a\u{7}b", "control characters"),
        ("--id", long_name.as_str(), "256 bytes"),
    ] {
        let mut args = issue.to_vec();
        args.extend([option, value]);
        keygate(&args, &[]).await.usage_error(what);
    }
    keygate(&["--store", pg, "keys", "rotate", "k"], &[])
        .await
        .usage_error("--grace");
    keygate(
        &["--store", pg, "keys", "rotate", "k", "--grace", "5x"],
        &[],
    )
    .await
    .usage_error("--grace");
    keygate(&["--store", pg, "--prefix", "p:", "keys", "show", "k"], &[])
        .await
        .usage_error("--prefix");
    let redis = "redis://127.0.0.1:6379/";
    keygate(
        &["--store", redis, "--schema", "s", "keys", "show", "k"],
        &[],
    )
    .await
    .usage_error("--schema");
    keygate(
        &["--store", pg, "--schema", "Bad;", "keys", "show", "k"],
        &[],
    )
    .await
    .usage_error("--schema");
    keygate(&["--store", pg, "usage", "k", "--usage-prefix", "u:"], &[])
        .await
        .usage_error("--usage-redis");
    keygate(&["--store", pg, "usage", "k", "--usage-redis", redis], &[])
        .await
        .usage_error("--usage-prefix");
    keygate(
        &[
            "--store",
            pg,
            "--revocations-prefix",
            "r:",
            "keys",
            "revoke",
            "k",
        ],
        &[],
    )
    .await
    .usage_error("--revocations-redis");
    keygate(
        &[
            "--store",
            pg,
            "--revocations-redis",
            redis,
            "keys",
            "revoke",
            "k",
        ],
        &[],
    )
    .await
    .usage_error("--revocations-prefix");
}

#[tokio::test]
async fn stores_that_cannot_be_used_exit_1_without_their_password() {
    for store in [
        "memory",
        "",
        "mysql://root:hunter22@127.0.0.1/db",
        "127.0.0.1:5432",
    ] {
        let ran = keygate(&["--store", store, "keys", "show", "k"], &[]).await;
        if store.is_empty() {
            // An empty URL is no URL at all.
            ran.usage_error("KEYGATE_STORE");
            continue;
        }
        let ran = ran.failed("postgres://, postgresql://");
        assert!(
            ran.stderr.contains("redis://, rediss://"),
            "{}",
            ran.context()
        );
        assert!(!ran.stderr.contains("hunter22"), "{}", ran.context());
    }
    let port = closed_port();
    let pg = format!("postgres://postgres:hunter22@127.0.0.1:{port}/test");
    let ran = keygate(&["--store", &pg, "keys", "list", "--owner", "o"], &[])
        .await
        .failed("cannot connect to PostgreSQL");
    assert!(
        ran.stderr.contains("refused"),
        "the cause: {}",
        ran.context()
    );
    assert!(!ran.stderr.contains("hunter22"), "{}", ran.context());
    let redis = format!("redis://:hunter22@127.0.0.1:{port}/");
    let ran = keygate(&["--store", &redis, "keys", "show", "k"], &[])
        .await
        .failed("cannot connect to Redis");
    assert!(
        ran.stderr.contains("refused"),
        "the cause: {}",
        ran.context()
    );
    assert!(!ran.stderr.contains("hunter22"), "{}", ran.context());
    keygate(
        &["--store", "postgres://u@127.0.0.1:notaport/db", "migrate"],
        &[],
    )
    .await
    .failed("not valid");
    // The same from KEYGATE_STORE.
    keygate(&["keys", "show", "k"], &[("KEYGATE_STORE", &pg)])
        .await
        .failed("cannot connect to PostgreSQL");
}

#[tokio::test]
async fn help_never_shows_the_store_url() {
    let url = "postgres://postgres:hunter22@127.0.0.1:5432/test";
    for args in [
        &["--help"][..],
        &["keys", "issue", "--help"],
        &["usage", "--help"],
    ] {
        let ran = keygate(
            args,
            &[("KEYGATE_STORE", url), ("KEYGATE_USAGE_REDIS", url)],
        )
        .await
        .ok();
        assert!(ran.stdout.contains("KEYGATE_STORE"), "{}", ran.context());
        assert!(!ran.stdout.contains("hunter22"), "{}", ran.context());
    }
    let ran = keygate(&["usage", "--help"], &[]).await.ok();
    assert!(ran.stdout.contains("--usage-prefix"), "{}", ran.context());
    keygate(&["--version"], &[]).await.ok();
}

// ---------------------------------------------------------------------------------------------
// Every command, on each store

/// The commands on one store, checked against the store itself (`direct`, watched by `heard`).
async fn every_command<S: KeyStore + KeyManager + Clone>(tool: &Tool, direct: S, heard: &Heard) {
    let owner = format!("owner-{}", random_hex());
    let id = format!("cli-{}", random_hex());

    // Issue, with every option: the key once, first, then the record.
    let ran = tool
        .run(&[
            "keys",
            "issue",
            "--owner",
            &owner,
            "--scope",
            "weather:read",
            "--scope",
            "forecast:read",
            "--quota",
            "100/min, 10000/d",
            "--expires-in",
            "30d",
            "--id",
            &id,
            "--key-prefix",
            "wk_live_",
        ])
        .await
        .ok();
    let key = ran.key();
    KeyFormat::new("wk_live_")
        .unwrap()
        .check(&key)
        .expect("a key of the asked prefix");
    assert_eq!(ran.stdout.matches(&key).count(), 1, "the key once");
    let fields = ran.fields();
    assert_eq!(fields["id"], id);
    assert_eq!(fields["owner"], owner);
    assert_eq!(fields["status"], "active");
    assert_eq!(fields["scopes"], "forecast:read weather:read");
    assert_eq!(fields["quota"], "100/min, 10000/d");
    let found = lookup(&direct, &key).await.expect("the store has the key");
    assert_eq!(found.id, id);
    assert_eq!(
        found.quota.as_ref().unwrap().to_string(),
        "100/min, 10000/d"
    );
    let digest = ApiKey::new(key.clone()).digest();
    eventually(PROPAGATION, "the new key's notification", || async {
        heard.has_digest(&digest)
    })
    .await;

    // Issue without an id, in JSON: a generated id, the store's default format.
    let ran = tool
        .run(&[
            "--json",
            "keys",
            "issue",
            "--owner",
            &owner,
            "--scope",
            "weather:read",
        ])
        .await
        .ok();
    let issued = ran.json();
    let generated = issued["record"]["id"].as_str().unwrap().to_owned();
    assert!(
        generated.starts_with("key_") && generated.len() == 28,
        "{issued}"
    );
    let key2 = issued["key"].as_str().unwrap().to_owned();
    KeyFormat::new("kg_")
        .unwrap()
        .check(&key2)
        .expect("a kg_ key");
    let mut fields: Vec<&str> = issued
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["key", "record"]);
    assert_record(
        &issued["record"],
        &generated,
        &owner,
        &["weather:read"],
        "active",
    );
    assert_eq!(issued["record"]["expires_at"], Value::Null);
    assert_eq!(issued["record"]["quota"], Value::Null);

    // List, in JSON: every record, field by field, ordered by id; never a key or a digest.
    let ran = tool
        .run(&["keys", "list", "--owner", &owner, "--json"])
        .await
        .ok();
    let list = ran.json();
    let records = list.as_array().expect("an array of records");
    assert_eq!(records.len(), 2, "{list}");
    let mut ids = [id.as_str(), generated.as_str()];
    ids.sort_unstable();
    assert_eq!(records[0]["id"], ids[0]);
    assert_eq!(records[1]["id"], ids[1]);
    let mine = records.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_record(
        mine,
        &id,
        &owner,
        &["forecast:read", "weather:read"],
        "active",
    );
    assert_eq!(mine["quota"], "100/min, 10000/d");
    assert_in(
        mine["expires_at"].as_str().unwrap(),
        Duration::from_secs(30 * 86_400),
    );
    for secret in [&key, &key2, &digest.to_hex()] {
        assert!(!ran.stdout.contains(secret.as_str()), "{}", ran.context());
    }
    // In text: a header and a line per record.
    let ran = tool.run(&["keys", "list", "--owner", &owner]).await.ok();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", ran.context());
    assert!(lines[0].starts_with("ID "), "{}", ran.context());
    assert!(
        lines[1].starts_with(ids[0]) && lines[2].starts_with(ids[1]),
        "{}",
        ran.context()
    );
    assert!(!ran.stdout.contains(&key), "{}", ran.context());
    let ran = tool
        .run(&["keys", "list", "--owner", "nobody-at-all"])
        .await
        .ok();
    assert!(ran.stdout.contains("no keys"), "{}", ran.context());
    let ran = tool
        .run(&["--json", "keys", "list", "--owner", "nobody-at-all"])
        .await
        .ok();
    assert_eq!(ran.json(), json!([]));

    // Show, in text, in JSON, and with the store from KEYGATE_STORE.
    let ran = tool.run(&["keys", "show", &id]).await.ok();
    assert_eq!(ran.fields()["owner"], owner);
    assert!(!ran.stdout.contains(&key), "{}", ran.context());
    let ran = tool.run(&["keys", "show", &id, "--json"]).await.ok();
    assert_record(
        &ran.json(),
        &id,
        &owner,
        &["forecast:read", "weather:read"],
        "active",
    );
    let ran = tool.run_with_env(&["keys", "show", &id]).await.ok();
    assert_eq!(ran.fields()["id"], id);

    // Rotate: a new key at once, the old one kept for the grace, then none after a zero grace.
    heard.forget();
    let ran = tool
        .run(&[
            "keys",
            "rotate",
            &id,
            "--grace",
            "1h",
            "--key-prefix",
            "wk_live_",
        ])
        .await
        .ok();
    let rotated = ran.key();
    assert_ne!(rotated, key);
    KeyFormat::new("wk_live_").unwrap().check(&rotated).unwrap();
    assert_eq!(ran.fields()["id"], id);
    assert!(ran.stderr.contains("1h"), "{}", ran.context());
    assert_eq!(lookup(&direct, &rotated).await.unwrap().id, id);
    let old = lookup(&direct, &key)
        .await
        .expect("the old key, in its grace");
    assert!(old.expires_at.unwrap() <= SystemTime::now() + Duration::from_secs(3600 + 60));
    eventually(PROPAGATION, "the rotation's notification", || async {
        heard.has_id(&id)
    })
    .await;
    let ran = tool
        .run(&["--json", "keys", "rotate", &id, "--grace", "0s"])
        .await
        .ok();
    let last = ran.json()["key"].as_str().unwrap().to_owned();
    assert_record(
        &ran.json()["record"],
        &id,
        &owner,
        &["forecast:read", "weather:read"],
        "active",
    );
    assert!(lookup(&direct, &key).await.is_none(), "retired at once");
    assert!(lookup(&direct, &rotated).await.is_none(), "retired at once");
    assert_eq!(lookup(&direct, &last).await.unwrap().id, id);

    // Disable, enable, revoke: each a notification, and what the store answers.
    for (command, status, stored) in [
        ("disable", "disabled", KeyStatus::Disabled),
        ("enable", "active", KeyStatus::Active),
        ("revoke", "revoked", KeyStatus::Revoked),
    ] {
        heard.forget();
        let ran = tool.run(&["keys", command, &id]).await.ok();
        assert_eq!(ran.fields()["status"], status, "{}", ran.context());
        assert_eq!(lookup(&direct, &last).await.unwrap().status, stored);
        eventually(
            PROPAGATION,
            &format!("{command}'s notification"),
            || async { heard.has_id(&id) },
        )
        .await;
    }
    tool.run(&["keys", "enable", &id])
        .await
        .failed("a revoked key stays revoked");
    tool.run(&["keys", "rotate", &id, "--grace", "1h"])
        .await
        .failed(&format!("key {id:?}"));
    let ran = tool.run(&["keys", "show", &id, "--json"]).await.ok();
    assert_eq!(ran.json()["status"], "revoked");

    // Usage: the credits from the store; no request counts unless asked where.
    let budget = format!("credits-{}", random_hex());
    direct
        .issue(KeyRecord::new(budget.clone(), owner.clone()).with_credits(Credits::new(7)))
        .await
        .unwrap();
    let ran = tool.run(&["usage", &budget]).await.ok();
    let fields = ran.fields();
    assert_eq!(fields["id"], budget);
    assert!(fields["credits"].starts_with("7 "), "{}", ran.context());
    assert!(
        fields["requests"].contains("--usage-prefix"),
        "{}",
        ran.context()
    );
    let ran = tool.run(&["usage", &budget, "--json"]).await.ok();
    assert_eq!(
        ran.json(),
        json!({"id": budget, "credits": {"remaining": 7, "refill": null}, "requests": null})
    );
    let ran = tool.run(&["usage", &generated]).await.ok();
    assert!(
        ran.fields()["credits"].starts_with("none"),
        "{}",
        ran.context()
    );

    // Delete: gone, with a notification; a second time is an unknown id.
    heard.forget();
    let ran = tool.run(&["keys", "delete", &id]).await.ok();
    assert!(ran.stdout.contains(&id), "{}", ran.context());
    eventually(PROPAGATION, "the deletion's notification", || async {
        heard.has_id(&id)
    })
    .await;
    assert!(lookup(&direct, &last).await.is_none());
    let ran = tool
        .run(&["--json", "keys", "delete", &generated])
        .await
        .ok();
    assert_eq!(ran.json(), json!({"id": generated, "deleted": true}));

    // Unknown ids: exit 1, naming the id.
    for command in [
        &["keys", "show", id.as_str()][..],
        &["keys", "delete", &id],
        &["keys", "revoke", &id],
        &["keys", "disable", &id],
        &["keys", "enable", &id],
        &["keys", "rotate", &id, "--grace", "1h"],
        &["usage", &id],
    ] {
        tool.run(command)
            .await
            .failed(&format!("key {id:?}: no key record has this id"));
    }
    // A duplicate id.
    tool.run(&[
        "keys", "issue", "--owner", &owner, "--scope", "s", "--id", &budget,
    ])
    .await
    .failed("exists already");

    // More than a page (the stores' pages hold up to 1000): every record is listed.
    let bulk = format!("bulk-{}", random_hex());
    for i in 0..1003 {
        direct
            .issue(KeyRecord::new(format!("{bulk}-{i:04}"), bulk.clone()))
            .await
            .unwrap();
    }
    let ran = tool
        .run(&["--json", "keys", "list", "--owner", &bulk])
        .await
        .ok();
    let ids: Vec<String> = ran
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..1003).map(|i| format!("{bulk}-{i:04}")).collect();
    assert_eq!(ids.len(), want.len(), "every page of the owner's records");
    assert!(ids == want, "the records in id order, each once");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set KEYGATE_TEST_DATABASE_URL"]
async fn postgres_every_command() {
    let database = TestDatabase::create(&services::database_url()).await;
    let url = database.url.clone();
    let body = async move {
        let tool = Tool::new(&url, &[]);
        // Before the schema exists: a failure that says what to do.
        tool.run(&["keys", "show", "k"])
            .await
            .failed("keygate migrate");
        let ran = tool.run(&["migrate"]).await.ok();
        assert!(ran.stdout.contains("\"public\""), "{}", ran.context());
        let ran = tool.run(&["migrate", "--json"]).await.ok();
        assert_eq!(
            ran.json(),
            json!({"store": "postgres", "migrated": true, "schema": "public"})
        );
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        let direct = PostgresStore::new(pool);
        let heard = Arc::new(Heard::default());
        direct.watch(heard.clone()).await.unwrap();
        every_command(&tool, direct.clone(), &heard).await;

        // A schema and a channel of their own.
        let tool = Tool::new(&url, &["--schema", "billing", "--channel", "billing_keys"]);
        tool.run(&["migrate"]).await.ok();
        let pool = direct.pool().clone();
        let billing = PostgresStore::new(pool)
            .schema("billing")
            .channel("billing_keys");
        let heard = Arc::new(Heard::default());
        billing.watch(heard.clone()).await.unwrap();
        let ran = tool
            .run(&[
                "keys", "issue", "--owner", "o", "--scope", "s", "--id", "b1",
            ])
            .await
            .ok();
        assert_eq!(lookup(&billing, &ran.key()).await.unwrap().id, "b1");
        assert!(lookup(&direct, &ran.key()).await.is_none(), "not in public");
        tool.run(&["keys", "revoke", "b1"]).await.ok();
        eventually(
            PROPAGATION,
            "the billing channel's notification",
            || async { heard.has_id("b1") },
        )
        .await;
    };
    guarded(body, database.remove()).await;
}

#[tokio::test]
#[ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"]
async fn redis_every_command() {
    let redis = services::redis_url();
    let base = format!("kgtest:cli:{}:", random_hex());
    let (url, prefix) = (redis.clone(), base.clone());
    let body = async move {
        let keys_prefix = format!("{prefix}keys:");
        let tool = Tool::new(&url, &["--prefix", &keys_prefix]);
        let ran = tool.run(&["migrate"]).await.ok();
        assert!(ran.stdout.contains("needs no schema"), "{}", ran.context());
        let ran = tool.run(&["--json", "migrate"]).await.ok();
        assert_eq!(ran.json(), json!({"store": "redis", "migrated": false}));
        let direct = RedisStore::connect(&url)
            .await
            .unwrap()
            .prefix(keys_prefix.clone());
        let heard = Arc::new(Heard::default());
        direct.watch(heard.clone()).await.unwrap();
        every_command(&tool, direct.clone(), &heard).await;
        assert!(
            !redis_keys(&url, &keys_prefix).await.is_empty(),
            "the tool used the store's prefix"
        );

        // The prefix from KEYGATE_STORE_PREFIX; without one, the store's default prefix, which
        // holds none of this test's keys.
        let ran = keygate(
            &[
                "--store", &url, "keys", "issue", "--owner", "o", "--scope", "s", "--id", "env-1",
            ],
            &[("KEYGATE_STORE_PREFIX", &keys_prefix)],
        )
        .await
        .ok();
        assert_eq!(lookup(&direct, &ran.key()).await.unwrap().id, "env-1");
        Tool::new(&url, &[])
            .run(&["keys", "show", "env-1"])
            .await
            .failed("no key record");

        // Request counts from the usage totals of RedisUsage, on the store's Redis by default
        // or on the one named.
        let usage_prefix = format!("{prefix}usage:");
        let counts = RedisUsage::connect(&url)
            .await
            .unwrap()
            .prefix(usage_prefix.clone());
        let used = SystemTime::now();
        counts
            .add(vec![UsageEntry::new(
                "env-1",
                Usage {
                    allowed: 3,
                    limited: 1,
                },
                Some(used),
            )])
            .await
            .unwrap();
        let ran = tool
            .run(&["usage", "env-1", "--usage-prefix", &usage_prefix])
            .await
            .ok();
        let fields = ran.fields();
        assert_eq!(fields["allowed"], "3", "{}", ran.context());
        assert_eq!(fields["limited"], "1", "{}", ran.context());
        assert_ne!(fields["last used at"], "never", "{}", ran.context());
        let ran = tool
            .run(&[
                "--json",
                "usage",
                "env-1",
                "--usage-prefix",
                &usage_prefix,
                "--usage-redis",
                &url,
            ])
            .await
            .ok();
        let v = ran.json();
        assert_eq!(v["credits"], Value::Null);
        assert_eq!(v["requests"]["allowed"], 3);
        assert_eq!(v["requests"]["limited"], 1);
        assert_in(
            v["requests"]["last_used_at"].as_str().unwrap(),
            Duration::ZERO,
        );
    };
    guarded(body, delete_redis_keys(&redis, &base)).await;
}

// ---------------------------------------------------------------------------------------------
// The weather example's contract

/// A running copy of the example, in this process, on a free port.
#[cfg(all(feature = "axum", feature = "jwt"))]
struct Weather {
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    _services: weather::Services,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[cfg(all(feature = "axum", feature = "jwt"))]
impl Weather {
    async fn start(vars: &[(&str, String)]) -> Self {
        let mut vars = vars.to_vec();
        vars.push(("KEYGATE_ADDR", "127.0.0.1:0".to_owned()));
        let config = weather::Config::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
        .expect("a valid configuration");
        let services = weather::services(&config)
            .await
            .expect("the example starts");
        let listener = tokio::net::TcpListener::bind(config.addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = weather::app(&services, addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(weather::serve(listener, app, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            client: reqwest::Client::new(),
            _services: services,
            stop: Some(stop),
        }
    }

    /// The status of `GET /v1/current.json?q=London` with this header.
    async fn status(&self, header: &str, value: &str) -> u16 {
        self.client
            .get(format!("http://{}/v1/current.json?q=London", self.addr))
            .header(header, value)
            .send()
            .await
            .expect("the example answers")
            .status()
            .as_u16()
    }

    /// Waits until `key` is answered with `status` (within [`PROPAGATION`]).
    async fn expect(&self, key: &str, status: u16, what: &str) {
        eventually(PROPAGATION, what, || async {
            self.status("x-api-key", key).await == status
        })
        .await;
    }

    /// Waits until the bearer `token` is answered with `status` (within [`PROPAGATION`]).
    async fn expect_bearer(&self, token: &str, status: u16, what: &str) {
        let bearer = format!("Bearer {token}");
        eventually(PROPAGATION, what, || async {
            self.status("authorization", &bearer).await == status
        })
        .await;
    }

    /// A JWT minted for `key` by `POST /v1/token`.
    async fn token(&self, key: &str) -> String {
        let reply: Value = self
            .client
            .post(format!("http://{}/v1/token", self.addr))
            .header("x-api-key", key)
            .send()
            .await
            .expect("the example answers")
            .json()
            .await
            .expect("a JSON token response");
        reply["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {reply}"))
            .to_owned()
    }
}

#[cfg(all(feature = "axum", feature = "jwt"))]
impl Drop for Weather {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The contract on a running example: keys the tool issues work within 2 s, keys it revokes or
/// rotates out stop within 2 s, disabled keys stop and enabled ones work again, the request
/// counts the example flushes are what `usage` reads, and with the example's revocation list
/// (`revocations`: the tool's options naming it) a revocation stops the key's minted tokens too.
#[cfg(all(feature = "axum", feature = "jwt"))]
async fn weather_contract(
    example: Weather,
    tool: Tool,
    usage: Vec<String>,
    revocations: Vec<String>,
) {
    let owner = format!("weather-{}", random_hex());
    let id = format!("wk-{}", random_hex());
    let ran = tool
        .run(&[
            "keys",
            "issue",
            "--owner",
            &owner,
            "--scope",
            "weather:read",
            "--id",
            &id,
            "--key-prefix",
            "wk_live_",
        ])
        .await
        .ok();
    let key = ran.key();
    example.expect(&key, 200, "an issued key works").await;
    // A key of the example's format with a scope it does not ask for: 403, so the scopes the
    // tool gave are the ones the example sees.
    let ran = tool
        .run(&[
            "keys",
            "issue",
            "--owner",
            &owner,
            "--scope",
            "other:read",
            "--key-prefix",
            "wk_live_",
        ])
        .await
        .ok();
    example
        .expect(&ran.key(), 403, "a key without weather:read")
        .await;

    // The request counts, flushed by the example every second.
    let mut args: Vec<&str> = vec!["--json", "usage", &id];
    args.extend(usage.iter().map(String::as_str));
    eventually(
        Duration::from_secs(5),
        "the example's request counts",
        || async {
            let ran = tool.run(&args).await.ok();
            ran.json()["requests"]["allowed"].as_u64().unwrap_or(0) >= 1
        },
    )
    .await;

    tool.run(&["keys", "disable", &id]).await.ok();
    example.expect(&key, 401, "a disabled key fails").await;
    tool.run(&["keys", "enable", &id]).await.ok();
    example
        .expect(&key, 200, "an enabled key works again")
        .await;

    let ran = tool
        .run(&[
            "keys",
            "rotate",
            &id,
            "--grace",
            "0s",
            "--key-prefix",
            "wk_live_",
        ])
        .await
        .ok();
    let rotated = ran.key();
    example
        .expect(&key, 401, "a key rotated out with no grace fails")
        .await;
    example.expect(&rotated, 200, "the rotated key works").await;

    // A token minted for the key: the tool's revocation, given the example's revocation list,
    // stops the key and its tokens.
    let token = example.token(&rotated).await;
    example
        .expect_bearer(&token, 200, "a minted token works")
        .await;
    let mut args: Vec<&str> = vec!["keys", "revoke", &id];
    args.extend(revocations.iter().map(String::as_str));
    tool.run(&args).await.ok();
    example.expect(&rotated, 401, "a revoked key fails").await;
    example
        .expect_bearer(&token, 401, "a revoked key's minted token fails")
        .await;
}

#[cfg(all(feature = "axum", feature = "jwt"))]
#[tokio::test]
#[ignore = "needs PostgreSQL and Redis: set KEYGATE_TEST_DATABASE_URL and KEYGATE_TEST_REDIS_URL"]
async fn weather_on_postgres_honours_the_tools_changes() {
    let database = TestDatabase::create(&services::database_url()).await;
    let redis = services::redis_url();
    let base = format!("kgtest:cli:{}:", random_hex());
    let (url, redis_url, prefix) = (database.url.clone(), redis.clone(), base.clone());
    let body = async move {
        let example = Weather::start(&[
            // Polling a key must never meet its rate limit.
            ("RATE_LIMIT", "1000/s".to_owned()),
            ("KEY_STORE", url.clone()),
            ("REDIS_URL", redis_url.clone()),
            ("REDIS_PREFIX", format!("{prefix}rl:")),
        ])
        .await;
        let usage = vec![
            "--usage-prefix".to_owned(),
            format!("{prefix}rl-usage:"),
            "--usage-redis".to_owned(),
            redis_url.clone(),
        ];
        let revocations = vec![
            "--revocations-prefix".to_owned(),
            format!("{prefix}rl-revoked:"),
            "--revocations-redis".to_owned(),
            redis_url.clone(),
        ];
        weather_contract(example, Tool::new(&url, &[]), usage, revocations).await;
    };
    let cleanup = async {
        database.remove().await;
        delete_redis_keys(&redis, &base).await;
    };
    guarded(body, cleanup).await;
}

#[cfg(all(feature = "axum", feature = "jwt"))]
#[tokio::test]
#[ignore = "needs Redis: set KEYGATE_TEST_REDIS_URL"]
async fn weather_on_redis_honours_the_tools_changes() {
    let redis = services::redis_url();
    let base = format!("kgtest:cli:{}:", random_hex());
    let (url, prefix) = (redis.clone(), base.clone());
    let body = async move {
        let keys_prefix = format!("{prefix}keys:");
        let example = Weather::start(&[
            // Polling a key must never meet its rate limit.
            ("RATE_LIMIT", "1000/s".to_owned()),
            ("KEY_STORE", url.clone()),
            ("KEY_STORE_PREFIX", keys_prefix.clone()),
            ("REDIS_URL", url.clone()),
            ("REDIS_PREFIX", format!("{prefix}rl:")),
        ])
        .await;
        // The usage totals on the store's Redis: no --usage-redis.
        let usage = vec!["--usage-prefix".to_owned(), format!("{prefix}rl-usage:")];
        // The revocation list on the store's Redis: no --revocations-redis.
        let revocations = vec![
            "--revocations-prefix".to_owned(),
            format!("{prefix}rl-revoked:"),
        ];
        let tool = Tool::new(&url, &["--prefix", &keys_prefix]);
        weather_contract(example, tool, usage, revocations).await;
    };
    guarded(body, delete_redis_keys(&redis, &base)).await;
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A database of one test on the server of `KEYGATE_TEST_DATABASE_URL`.
struct TestDatabase {
    server: String,
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create(server: &str) -> Self {
        let name = format!("kgtest_{}", random_hex());
        let mut conn = sqlx::PgConnection::connect(server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to KEYGATE_TEST_DATABASE_URL: {e}"));
        let sql = format!("CREATE DATABASE {name}");
        sqlx::Executor::execute(&mut conn, sql.as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        Self {
            server: server.to_owned(),
            url: with_database(server, &name),
            name,
        }
    }

    /// Drops the database, with whatever is still connected to it.
    async fn remove(self) {
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect(&self.server).await?;
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            sqlx::Executor::execute(&mut conn, sql.as_str()).await?;
            conn.close().await
        };
        if let Err(e) = dropped.await {
            eprintln!("warning: DROP DATABASE {}: {e}", self.name);
        }
    }
}

/// `server` (a PostgreSQL URL) with its database replaced by `name`.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let rest = base.split_once("://").map_or(base, |(_, rest)| rest);
    let base = match rest.find('/') {
        Some(slash) => &base[..base.len() - rest.len() + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid KEYGATE_TEST_REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers")
}

/// The Redis keys under `prefix`.
async fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = redis_connection(url).await;
    let (mut keys, mut cursor) = (Vec::new(), 0u64);
    for _ in 0..10_000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys
}

/// Deletes the Redis keys under `prefix`.
async fn delete_redis_keys(url: &str, prefix: &str) {
    let keys = redis_keys(url, prefix).await;
    let mut conn = redis_connection(url).await;
    for batch in keys.chunks(500) {
        let deleted: redis::RedisResult<u64> =
            redis::cmd("DEL").arg(batch).query_async(&mut conn).await;
        if let Err(e) = deleted {
            eprintln!("warning: deleting the Redis keys under {prefix}: {e}");
        }
    }
}

#[test]
fn database_urls() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "kgtest_1"),
        "postgres://postgres@127.0.0.1:5432/kgtest_1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}
