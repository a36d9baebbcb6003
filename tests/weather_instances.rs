//! Several processes of `examples/weather.rs` sharing one key store, PostgreSQL or Redis: a change
//! made through the admin API of one instance holds on the others within the example's 2 s bound,
//! a store outage serves the cached keys and recovers without a restart, and a store that cannot
//! be reached stops the start.
//!
//! This test has a `main` of its own (`harness = false`). Started with `KEYGATE_WEATHER_CHILD`
//! set, the binary *is* the example (`weather::main`): each instance is a real process, configured
//! through its environment as `cargo run --example weather` would be, found through the first
//! line it prints (`listening on http://ADDR`) and killed when the scenario ends. Without that
//! variable, `main` runs the scenarios with libtest's command line: name filters, `--exact`,
//! `--skip`, `--list`, `--ignored`, `--include-ignored` and `--nocapture` (panics printed as they
//! happen, not only in the summary); other flags (`--test-threads N`, `-q`, ...) are accepted and
//! change nothing. The scenarios run one after the other.
//!
//! Two scenarios need no server (the admin API's credential, on keys in memory; a store that
//! cannot be reached). The others are ignored unless asked for:
//!
//! ```sh
//! KEYGATE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//! KEYGATE_TEST_REDIS_URL=redis://127.0.0.1:6379/ \
//!   cargo test --features postgres,redis,admin --test weather_instances -- --include-ignored
//! ```
//!
//! Asked for without their variable, they fail, so that a run without the servers never passes
//! for one that tested them. Each works in a database of its own (`kgtest_<random>`, dropped at
//! the end) or under Redis key prefixes of its own (deleted at the end), so that runs never share
//! state.

// Built only with the features of its `[[test]]` entry (`required-features`), so it needs no
// `cfg` of its own: a binary without `main` would not build.

#[path = "common/proxy.rs"]
mod proxy;
mod services;
#[allow(dead_code)] // The test drives the example through its `main` only.
#[path = "../examples/weather.rs"]
mod weather;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxy::Proxy;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Set in the environment of the processes that run the example.
const CHILD: &str = "KEYGATE_WEATHER_CHILD";
/// The `ADMIN_API_KEY` of every instance.
const ADMIN: &str = "admin-key-of-the-instances-0001";
/// The key of `WEATHER_API_KEYS`: its record is `key-1`.
const LISTED: &str = "listed-weather-key-0001";
/// The `JWT_SECRET` of every instance.
const SECRET: &str = "a test secret of at least 32 bytes, for HS256";
/// The example's bound: a change holds on every instance this long after it returned.
const PROPAGATION: Duration = Duration::from_secs(2);
/// How often a condition is checked while waiting for it.
const POLL: Duration = Duration::from_millis(50);
/// How long an instance may take to print its address.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long a scenario may take, start-up and all.
const SCENARIO_LIMIT: Duration = Duration::from_secs(90);
/// The rotation's grace.
const GRACE: Duration = Duration::from_secs(4);
/// `KEY_CACHE_TTL` in the outage scenarios: longer than [`PROPAGATION`] by a margin, so that a
/// change seen within the bound was heard from the store, not read again after the entry expired.
const OUTAGE_TTL: Duration = Duration::from_secs(3);
/// How long a request may take while the store is down: the store's 1 s timeout, and slack.
const OUTAGE_ANSWER: Duration = Duration::from_secs(2);
/// Variables of the example's configuration that a child never inherits from this process.
const CONFIG_VARS: &[&str] = &["RATE_LIMIT", "RUST_LOG"];
/// Prefixes of the names a child never inherits either (what the example reads, or may one day).
const CONFIG_PREFIXES: &[&str] = &[
    "KEYGATE_", "WEATHER_", "REDIS_", "KEY_", "ADMIN_", "JWT_", "RATE_",
];

fn main() -> ExitCode {
    if std::env::var_os(CHILD).is_some() {
        return weather::main();
    }
    run_scenarios()
}

// ---------------------------------------------------------------------------------------------
// The runner: enough of libtest's interface for cargo and CI.

type Body = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Scenario {
    name: &'static str,
    /// Why it is ignored unless asked for (a server it needs).
    ignore: Option<&'static str>,
    body: fn() -> Body,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "postgres_two_instances_share_every_change",
            ignore: Some("needs KEYGATE_TEST_DATABASE_URL and KEYGATE_TEST_REDIS_URL"),
            body: || Box::pin(postgres_two_instances_share_every_change()),
        },
        Scenario {
            name: "redis_two_instances_share_every_change",
            ignore: Some("needs KEYGATE_TEST_REDIS_URL"),
            body: || Box::pin(redis_two_instances_share_every_change()),
        },
        Scenario {
            name: "admin_api_needs_the_admin_key",
            ignore: None,
            body: || Box::pin(admin_api_needs_the_admin_key()),
        },
        Scenario {
            name: "postgres_outage_serves_cached_keys_and_recovers",
            ignore: Some("needs KEYGATE_TEST_DATABASE_URL"),
            body: || Box::pin(postgres_outage_serves_cached_keys_and_recovers()),
        },
        Scenario {
            name: "redis_outage_serves_cached_keys_and_recovers",
            ignore: Some("needs KEYGATE_TEST_REDIS_URL"),
            body: || Box::pin(redis_outage_serves_cached_keys_and_recovers()),
        },
        Scenario {
            name: "an_unreachable_store_stops_the_start",
            ignore: None,
            body: || Box::pin(an_unreachable_store_stops_the_start()),
        },
    ]
}

#[derive(Default)]
struct Args {
    list: bool,
    ignored: bool,
    include_ignored: bool,
    exact: bool,
    terse: bool,
    nocapture: bool,
    filters: Vec<String>,
    skip: Vec<String>,
}

impl Args {
    fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut parsed = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if arg.starts_with("--") => (flag.to_owned(), Some(value)),
                _ => (arg.clone(), None),
            };
            let mut value = || inline.map(str::to_owned).or_else(|| args.next());
            match flag.as_str() {
                "--list" => parsed.list = true,
                "--ignored" => parsed.ignored = true,
                "--include-ignored" => parsed.include_ignored = true,
                "--exact" => parsed.exact = true,
                "--nocapture" | "--no-capture" => parsed.nocapture = true,
                "--skip" => parsed.skip.extend(value()),
                "--format" => parsed.terse = value().as_deref() == Some("terse"),
                // Flags with a value that change nothing here.
                "--test-threads" | "--color" | "--logfile" | "-Z" | "--shuffle-seed" => {
                    value();
                }
                // Every other flag (`-q`, `--show-output`, `--quiet`, ...) changes nothing.
                f if f.starts_with('-') => {}
                _ => parsed.filters.push(arg),
            }
        }
        parsed
    }

    fn selects(&self, scenario: &Scenario) -> bool {
        let name = scenario.name;
        let matches = |f: &String| {
            if self.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skip.iter().any(matches)
            && (!self.ignored || scenario.ignore.is_some())
    }
}

fn run_scenarios() -> ExitCode {
    let args = Args::parse(std::env::args().skip(1));
    let all = scenarios();
    let total = all.len();
    let selected: Vec<Scenario> = all.into_iter().filter(|s| args.selects(s)).collect();
    if args.list {
        for s in &selected {
            println!("{}: test", s.name);
        }
        if !args.terse {
            println!();
            println!("{} tests, 0 benchmarks", selected.len());
        }
        return ExitCode::SUCCESS;
    }
    install_panic_hook(args.nocapture);
    let started = Instant::now();
    println!();
    println!("running {} tests", selected.len());
    let (mut passed, mut ignored) = (0, 0);
    let mut failed: Vec<(&str, String)> = Vec::new();
    for s in &selected {
        if let Some(reason) = s.ignore
            && !args.ignored
            && !args.include_ignored
        {
            println!("test {} ... ignored, {reason}", s.name);
            ignored += 1;
            continue;
        }
        print!("test {} ... ", s.name);
        let _ = std::io::stdout().flush();
        let took = Instant::now();
        match run_one(s) {
            Ok(()) => {
                println!("ok ({:.1} s)", took.elapsed().as_secs_f64());
                passed += 1;
            }
            Err(message) => {
                println!("FAILED");
                failed.push((s.name, message));
            }
        }
    }
    if !failed.is_empty() {
        println!();
        println!("failures:");
        for (name, message) in &failed {
            println!();
            println!("---- {name} ----");
            println!("{message}");
        }
        println!();
        println!("failures:");
        for (name, _) in &failed {
            println!("    {name}");
        }
    }
    println!();
    println!(
        "test result: {}. {passed} passed; {} failed; {ignored} ignored; 0 measured; {} filtered \
         out; finished in {:.2}s",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        total - selected.len(),
        started.elapsed().as_secs_f64(),
    );
    println!();
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The first panic of the running scenario, with where it happened.
static PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Keeps each scenario's first panic for its failure report; the default hook prints it too
/// with `--nocapture`.
fn install_panic_hook(nocapture: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        let place = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        let mut first = PANIC.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(format!("panicked{place}:\n{message}"));
        }
        drop(first);
        if nocapture {
            default(info);
        }
    }));
}

/// Runs one scenario on a runtime of its own; a panic is its failure.
fn run_one(scenario: &Scenario) -> Result<(), String> {
    PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Err(format!("cannot build a tokio runtime: {e}")),
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| runtime.block_on((scenario.body)())));
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome.map_err(|_| {
        PANIC
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "the scenario panicked".to_owned())
    })
}

/// Runs `body`, bounded by [`SCENARIO_LIMIT`], then `cleanup` whatever happened, then fails as
/// `body` did.
async fn guarded(
    body: impl Future<Output = ()> + Send + 'static,
    cleanup: impl Future<Output = ()>,
) {
    let run = tokio::spawn(async move {
        let body = std::pin::pin!(body);
        // Panicking while `body` is alive: its instances see the panic and print their logs.
        tokio::select! {
            () = body => {}
            () = tokio::time::sleep(SCENARIO_LIMIT) => {
                panic!("the scenario did not finish within {SCENARIO_LIMIT:?}")
            }
        }
    });
    let result = run.await;
    cleanup.await;
    if let Err(e) = result {
        if e.is_panic() {
            resume_unwind(e.into_panic());
        }
        panic!("the scenario was cancelled: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Instances of the example, as processes.

/// What a child wrote on stderr (its logs, then `error: ...` if it failed), up to 4 MiB.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<String>>);

impl Log {
    const MAX: usize = 4 << 20;

    fn push(&self, line: &str) {
        let mut text = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if text.len() + line.len() < Self::MAX {
            text.push_str(line);
            text.push('\n');
        }
    }

    fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn tail(&self, lines: usize) -> String {
        let text = self.text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

async fn collect(stream: impl AsyncRead + Unpin, log: Log) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while let Ok(n @ 1..) = reader.read_until(b'\n', &mut line).await {
        let text = String::from_utf8_lossy(&line[..n]);
        log.push(text.trim_end_matches(['\n', '\r']));
        line.clear();
    }
}

/// The command that runs the example: this binary, with [`CHILD`] set, nothing of this process's
/// configuration, `KEYGATE_ADDR=127.0.0.1:0`, and `vars`.
fn child_command(vars: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    for (name, _) in std::env::vars_os() {
        let inherited = name.to_str().is_some_and(|n| {
            CONFIG_VARS.contains(&n) || CONFIG_PREFIXES.iter().any(|p| n.starts_with(p))
        });
        if inherited {
            cmd.env_remove(&name);
        }
    }
    cmd.env(CHILD, "1").env("KEYGATE_ADDR", "127.0.0.1:0");
    for (name, value) in vars {
        cmd.env(name, value);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running instance of the example. Dropping it kills the process; when that happens because
/// the scenario failed, the end of its log is printed.
struct Instance {
    name: &'static str,
    addr: SocketAddr,
    client: reqwest::Client,
    log: Log,
    _process: Child,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- instance {} ({}): the end of its stderr ----\n{}\n----",
                self.name,
                self.addr,
                self.log.tail(60)
            );
        }
    }
}

impl Instance {
    /// Starts the example with `vars`, and waits for its address.
    async fn start(name: &'static str, vars: &[(&'static str, String)]) -> Self {
        let mut process = child_command(vars)
            .spawn()
            .expect("start the test binary as the example");
        let log = Log::default();
        let stderr = process.stderr.take().expect("a piped stderr");
        let collecting = tokio::spawn(collect(stderr, log.clone()));
        let stdout = process.stdout.take().expect("a piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_LIMIT, lines.next_line()).await;
        let addr = match &first {
            Ok(Ok(Some(line))) => line
                .strip_prefix("listening on http://")
                .and_then(|a| a.parse::<SocketAddr>().ok()),
            _ => None,
        };
        let Some(addr) = addr else {
            let status = tokio::time::timeout(Duration::from_secs(5), process.wait()).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), collecting).await;
            panic!(
                "instance {name} did not start: first line {first:?}, exit {status:?}, \
                 stderr:\n{}",
                log.tail(60)
            );
        };
        // The rest of the banner, read so that the process never blocks on a full pipe.
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut lines.into_inner(), &mut tokio::io::sink()).await;
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        Self {
            name,
            addr,
            client,
            log,
            _process: process,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method.clone(), format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        match req.send().await {
            Ok(res) => Reply::from(res).await,
            Err(e) => panic!("instance {}: {method} {path}: no answer: {e}", self.name),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, None).await
    }

    /// `GET /v1/current.json` with `key` in `x-api-key`.
    async fn weather(&self, key: &str) -> Reply {
        self.get("/v1/current.json?q=Oslo", &[("x-api-key", key)])
            .await
    }

    /// `GET /v1/current.json` with a bearer credential.
    async fn weather_bearer(&self, credential: &str) -> Reply {
        let bearer = format!("Bearer {credential}");
        self.get("/v1/current.json?q=Oslo", &[("authorization", &bearer)])
            .await
    }

    /// `GET /v1/me` with a bearer credential.
    async fn me_bearer(&self, credential: &str) -> Reply {
        let bearer = format!("Bearer {credential}");
        self.get("/v1/me", &[("authorization", &bearer)]).await
    }

    /// A token for `key`, from `POST /v1/token`.
    async fn token_for(&self, key: &str) -> String {
        let reply = self
            .send(Method::POST, "/v1/token", &[("x-api-key", key)], None)
            .await
            .expect(StatusCode::OK, &format!("{}: POST /v1/token", self.name));
        reply.json()["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {reply}"))
            .to_owned()
    }

    /// A call to the admin API with the admin key.
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let bearer = format!("Bearer {ADMIN}");
        self.send(method, path, &[("authorization", &bearer)], body.as_ref())
            .await
    }

    /// `POST /admin/keys` for a key `id` of `owner` with scope `weather:read`: its plaintext
    /// key and its record.
    async fn create(&self, id: &str, owner: &str) -> (String, Value) {
        let body = json!({"owner": owner, "scopes": [weather::SCOPE], "id": id});
        let reply = self
            .admin(Method::POST, "/admin/keys", Some(body))
            .await
            .expect(
                StatusCode::CREATED,
                &format!("{}: POST /admin/keys", self.name),
            );
        let json = reply.json();
        let key = json["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no key in {reply}"))
            .to_owned();
        let record = json["record"].clone();
        check_record(&record);
        assert_eq!(record["id"], id, "{record}");
        (key, record)
    }

    /// `PATCH /admin/keys/{id}` with `body`: the record.
    async fn patch(&self, id: &str, body: Value) -> Value {
        let what = format!("{}: PATCH /admin/keys/{id} {body}", self.name);
        let reply = self
            .admin(Method::PATCH, &format!("/admin/keys/{id}"), Some(body))
            .await
            .expect(StatusCode::OK, &what);
        let record = reply.json();
        check_record(&record);
        record
    }

    /// `POST /admin/keys/{id}/revoke`: the record.
    async fn revoke(&self, id: &str) -> Value {
        let what = format!("{}: POST /admin/keys/{id}/revoke", self.name);
        let reply = self
            .admin(Method::POST, &format!("/admin/keys/{id}/revoke"), None)
            .await
            .expect(StatusCode::OK, &what);
        let record = reply.json();
        check_record(&record);
        assert_eq!(record["status"], "revoked", "{record}");
        record
    }

    async fn usage(&self, id: &str) -> Reply {
        self.admin(Method::GET, &format!("/admin/keys/{id}/usage"), None)
            .await
    }
}

/// A finished response.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    async fn from(res: reqwest::Response) -> Self {
        let status = res.status();
        let headers = res.headers().clone();
        let body = res
            .text()
            .await
            .unwrap_or_else(|e| panic!("a {status} answer without a readable body: {e}"));
        Self {
            status,
            headers,
            body,
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self}"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `RateLimit-Policy`, or `""`.
    fn policy(&self) -> &str {
        self.header("ratelimit-policy").unwrap_or("")
    }

    /// This reply if its status is `status`; else fails with `what`.
    #[track_caller]
    fn expect(self, status: StatusCode, what: &str) -> Self {
        assert_eq!(self.status, status, "{what}: {self}");
        self
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = self.body.chars().take(400).collect();
        write!(f, "{} (policy {:?}) {body}", self.status, self.policy())
    }
}

/// Calls `probe` until `done` holds of its answer, and fails when a call that started `within`
/// after `since` or later still did not see it.
async fn eventually<F>(
    what: &str,
    since: Instant,
    within: Duration,
    mut probe: impl FnMut() -> F,
    done: impl Fn(&Reply) -> bool,
) -> Reply
where
    F: Future<Output = Reply>,
{
    let deadline = since + within;
    loop {
        let started = Instant::now();
        let reply = probe().await;
        if done(&reply) {
            return reply;
        }
        if started >= deadline {
            panic!(
                "{what}: still not so {:.2} s after the change (bound {within:?}); last answer: \
                 {reply}",
                started.duration_since(since).as_secs_f64()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `probe`'s answer and how long it took.
async fn timed(probe: impl Future<Output = Reply>) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = probe.await;
    (reply, started.elapsed())
}

/// Checks that `record` is exactly a RECORD of the admin API.
#[track_caller]
fn check_record(record: &Value) {
    let Some(fields) = record.as_object() else {
        panic!("a record is an object: {record}");
    };
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
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
            "tier"
        ],
        "{record}"
    );
    assert!(
        record["created_at"].as_str().is_some_and(is_rfc3339),
        "{record}"
    );
    assert!(
        record["expires_at"].is_null() || record["expires_at"].as_str().is_some_and(is_rfc3339),
        "{record}"
    );
    assert!(record["metadata"].is_object(), "{record}");
    assert!(record["scopes"].is_array(), "{record}");
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if !(b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    let z = rest.as_bytes();
    rest == "Z"
        || rest == "z"
        || (z.len() == 6
            && matches!(z[0], b'+' | b'-')
            && z[1..3].iter().all(u8::is_ascii_digit)
            && z[3] == b':'
            && z[4..6].iter().all(u8::is_ascii_digit))
}

/// Counts the answers of the rate limiter, as the usage counts should.
#[derive(Default)]
struct Tally {
    allowed: AtomicU64,
    limited: AtomicU64,
}

impl Tally {
    #[track_caller]
    fn count(&self, reply: &Reply) {
        match reply.status {
            StatusCode::OK => self.allowed.fetch_add(1, Ordering::Relaxed),
            StatusCode::TOO_MANY_REQUESTS => self.limited.fetch_add(1, Ordering::Relaxed),
            _ => panic!("neither allowed nor limited: {reply}"),
        };
    }

    fn get(&self) -> (u64, u64) {
        (
            self.allowed.load(Ordering::Relaxed),
            self.limited.load(Ordering::Relaxed),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The servers: a database per scenario, Redis prefixes per scenario.

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random generator");
    format!("{:016x}", u64::from_le_bytes(bytes))
}

/// A URL cut in three: up to the host (`postgres://user@`), the host and port, and the rest
/// (`/db?options`).
fn url_parts(url: &str) -> (&str, &str, &str) {
    let start = url
        .find("://")
        .map(|i| i + 3)
        .unwrap_or_else(|| panic!("not a URL: {url}"));
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (&url[..host], &url[host..end], &url[end..])
}

/// `url` with its database (its path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (head, host, rest) = url_parts(url);
    let query = rest.find('?').map_or("", |i| &rest[i..]);
    format!("{head}{host}/{name}{query}")
}

/// `url` with its host and port replaced by `addr`.
fn with_host(url: &str, addr: SocketAddr) -> String {
    let (head, _, rest) = url_parts(url);
    format!("{head}{addr}{rest}")
}

/// The address `url` names.
async fn upstream(url: &str, default_port: u16) -> SocketAddr {
    let (_, host, _) = url_parts(url);
    let host = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    tokio::net::lookup_host(&host)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host}"))
}

/// A database of one scenario on the server of `KEYGATE_TEST_DATABASE_URL`.
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
        if let Err(e) = drop_database(&self.server, &self.name).await {
            eprintln!("warning: DROP DATABASE {}: {e}", self.name);
        }
    }
}

async fn drop_database(server: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(server).await?;
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    sqlx::Executor::execute(&mut conn, sql.as_str()).await?;
    conn.close().await
}

/// Fails unless the key store made its tables in `url`'s database.
async fn assert_has_tables(url: &str) {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the scenario's database: {e}"));
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("counting tables: {e}"));
    let _ = conn.close().await;
    assert!(
        tables > 0,
        "the key store has no table in its KEY_STORE database"
    );
}

/// The Redis prefixes of one scenario, all under `base`.
#[derive(Clone)]
struct Prefixes {
    base: String,
    /// `KEY_STORE_PREFIX`.
    keys: String,
    /// `REDIS_PREFIX`.
    limits: String,
}

impl Prefixes {
    fn new() -> Self {
        let base = format!("kgtest:weather:{}:", random_hex());
        Self {
            keys: format!("{base}keys:"),
            limits: format!("{base}rl:"),
            base,
        }
    }
}

async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

/// The Redis keys under `prefix` (at most 10 000 of them).
async fn redis_keys(url: &str, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let mut conn = redis_connection(url).await?;
    let (mut keys, mut cursor) = (Vec::new(), 0u64);
    for _ in 0..1000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 || keys.len() >= 10_000 {
            break;
        }
    }
    Ok(keys)
}

/// Deletes the Redis keys under `prefix`.
async fn delete_redis_keys(url: &str, prefix: &str) {
    if let Err(e) = try_delete_redis_keys(url, prefix).await {
        eprintln!("warning: deleting the Redis keys under {prefix}: {e}");
    }
}

async fn try_delete_redis_keys(url: &str, prefix: &str) -> redis::RedisResult<()> {
    let keys = redis_keys(url, prefix).await?;
    let mut conn = redis_connection(url).await?;
    for batch in keys.chunks(500) {
        let _: u64 = redis::cmd("DEL").arg(batch).query_async(&mut conn).await?;
    }
    Ok(())
}

/// Fails unless some Redis key is under `prefix` (`what` uses it).
async fn assert_redis_keys_under(url: &str, prefix: &str, what: &str) {
    let keys = redis_keys(url, prefix)
        .await
        .unwrap_or_else(|e| panic!("scanning Redis: {e}"));
    assert!(
        !keys.is_empty(),
        "no Redis key under {prefix}: {what} did not use its prefix"
    );
}

// ---------------------------------------------------------------------------------------------
// Scenarios 1 and 2: two instances on one store.

async fn postgres_two_instances_share_every_change() {
    let server = services::database_url();
    let redis = services::redis_url();
    let database = TestDatabase::create(&server).await;
    let prefixes = Prefixes::new();
    let (url, redis_url, limits) = (database.url.clone(), redis.clone(), prefixes.limits.clone());
    let body = async move {
        share_every_change(vec![("KEY_STORE", url.clone())], &redis_url, &limits).await;
        assert_has_tables(&url).await;
        assert_redis_keys_under(&redis_url, &limits, "REDIS_PREFIX").await;
    };
    let cleanup = async {
        database.remove().await;
        delete_redis_keys(&redis, &prefixes.base).await;
    };
    guarded(body, cleanup).await;
}

async fn redis_two_instances_share_every_change() {
    let redis = services::redis_url();
    let prefixes = Prefixes::new();
    let (redis_url, p) = (redis.clone(), prefixes.clone());
    let body = async move {
        let store = vec![
            ("KEY_STORE", redis_url.clone()),
            ("KEY_STORE_PREFIX", p.keys.clone()),
        ];
        share_every_change(store, &redis_url, &p.limits).await;
        assert_redis_keys_under(&redis_url, &p.keys, "KEY_STORE_PREFIX").await;
        assert_redis_keys_under(&redis_url, &p.limits, "REDIS_PREFIX").await;
    };
    guarded(body, delete_redis_keys(&redis, &prefixes.base)).await;
}

/// Two instances, A and B, on the store of `store` (`KEY_STORE` and what goes with it), sharing
/// `REDIS_URL`, `JWT_SECRET` and `ADMIN_API_KEY`: every change made on A holds on B within
/// [`PROPAGATION`], although B has the key in its cache.
async fn share_every_change(
    store: Vec<(&'static str, String)>,
    redis_url: &str,
    redis_prefix: &str,
) {
    let mut vars = store;
    vars.extend([
        ("REDIS_URL", redis_url.to_owned()),
        ("REDIS_PREFIX", redis_prefix.to_owned()),
        ("JWT_SECRET", SECRET.to_owned()),
        ("ADMIN_API_KEY", ADMIN.to_owned()),
        ("WEATHER_API_KEYS", LISTED.to_owned()),
        ("RATE_LIMIT", "1000/s".to_owned()),
        // Far longer than the scenario: what B learns of a change, it learns from the store's
        // notifications, not from its cache entries expiring.
        ("KEY_CACHE_TTL", "300".to_owned()),
    ]);
    let (a, b) = tokio::join!(Instance::start("A", &vars), Instance::start("B", &vars));
    let scope = weather::SCOPE;

    // WEATHER_API_KEYS: one record, inserted by whichever instance came first.
    for s in [&a, &b] {
        let what = format!("{}: GET /admin/keys/key-1", s.name);
        let record = s
            .admin(Method::GET, "/admin/keys/key-1", None)
            .await
            .expect(StatusCode::OK, &what)
            .json();
        check_record(&record);
        assert_eq!(record["owner"], "weather-user", "{record}");
        assert_eq!(record["scopes"], json!([scope]), "{record}");
        assert_eq!(record["status"], "active", "{record}");
        s.weather(LISTED)
            .await
            .expect(StatusCode::OK, &format!("{}: the listed key", s.name));
    }
    let listed = a
        .admin(Method::GET, "/admin/keys?owner=weather-user", None)
        .await
        .expect(StatusCode::OK, "A: GET /admin/keys?owner=weather-user")
        .json();
    let ids: Vec<&Value> = listed["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys in {listed}"))
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, [&json!("key-1")], "inserted once: {listed}");

    // A key made on A...
    let body = json!({
        "owner": "acme", "scopes": [scope], "id": "shared", "metadata": {"plan": "pro"},
    });
    let created = a
        .admin(Method::POST, "/admin/keys", Some(body.clone()))
        .await
        .expect(StatusCode::CREATED, "A: POST /admin/keys")
        .json();
    let record = &created["record"];
    check_record(record);
    assert_eq!(
        (&record["id"], &record["owner"], &record["scopes"]),
        (&json!("shared"), &json!("acme"), &json!([scope])),
        "{record}"
    );
    assert_eq!(
        (&record["status"], &record["quota"], &record["expires_at"]),
        (&json!("active"), &Value::Null, &Value::Null),
        "{record}"
    );
    assert_eq!(record["metadata"], json!({"plan": "pro"}), "{record}");
    let key = created["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no key in {created}"))
        .to_owned();
    b.admin(Method::POST, "/admin/keys", Some(body))
        .await
        .expect(StatusCode::CONFLICT, "B: POST /admin/keys with a taken id");

    // ... used on B first, sent every way a key can be: B has it in its cache now.
    b.weather(&key)
        .await
        .expect(StatusCode::OK, "B: the new key in x-api-key");
    b.get(&format!("/v1/current.json?q=Oslo&key={key}"), &[])
        .await
        .expect(StatusCode::OK, "B: the new key in ?key=");
    b.weather_bearer(&key)
        .await
        .expect(StatusCode::OK, "B: the new key as Bearer");
    let me = b
        .get("/v1/me", &[("x-api-key", &key)])
        .await
        .expect(StatusCode::OK, "B: /v1/me")
        .json();
    assert_eq!(
        (&me["id"], &me["kind"], &me["owner"], &me["scopes"]),
        (
            &json!("shared"),
            &json!("api_key"),
            &json!("acme"),
            &json!([scope])
        ),
        "{me}"
    );
    let token = b.token_for(&key).await;
    for s in [&a, &b] {
        let what = format!("{}: /v1/me with B's token", s.name);
        let me = s
            .me_bearer(&token)
            .await
            .expect(StatusCode::OK, &what)
            .json();
        assert_eq!(
            (&me["id"], &me["kind"]),
            (&json!("shared"), &json!("jwt")),
            "{me}"
        );
    }

    // Scopes without weather:read: 403.
    let record = a
        .patch("shared", json!({"scopes": ["weather:write"]}))
        .await;
    let changed = Instant::now();
    assert_eq!(record["scopes"], json!(["weather:write"]), "{record}");
    a.weather(&key)
        .await
        .expect(StatusCode::FORBIDDEN, "A: at once, without weather:read");
    eventually(
        "B: 403 without weather:read",
        changed,
        PROPAGATION,
        || b.weather(&key),
        |r| r.status == StatusCode::FORBIDDEN,
    )
    .await;

    // The scope back, and a quota of the key's own.
    let record = a
        .patch("shared", json!({"scopes": [scope], "quota": "600/min"}))
        .await;
    let changed = Instant::now();
    assert_eq!(
        (&record["scopes"], &record["quota"]),
        (&json!([scope]), &json!("600/min")),
        "{record}"
    );
    eventually(
        "B: 200 with the key's own quota in RateLimit-Policy",
        changed,
        PROPAGATION,
        || b.weather(&key),
        |r| r.status == StatusCode::OK && r.policy().contains("q=600;w=60"),
    )
    .await;
    // And without it again: the default quota (the key's tokens have it all along, and share
    // the key's limit, so the steps below must not spend the key's at another pace).
    let record = a.patch("shared", json!({"quota": null})).await;
    let changed = Instant::now();
    assert_eq!(record["quota"], Value::Null, "{record}");
    eventually(
        "B: 200 with the default quota in RateLimit-Policy again",
        changed,
        PROPAGATION,
        || b.weather(&key),
        |r| r.status == StatusCode::OK && r.policy().contains("q=1000;w=1"),
    )
    .await;

    // A token carries its key's scopes and quota as they were when it was minted: the changes
    // above revoked B's token on both instances, and a token minted now works.
    for s in [&a, &b] {
        eventually(
            &format!(
                "{}: 401 for a token minted before the scopes changed",
                s.name
            ),
            changed,
            PROPAGATION,
            || s.weather_bearer(&token),
            |r| r.status == StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    let token = b.token_for(&key).await;
    for s in [&a, &b] {
        s.weather_bearer(&token).await.expect(
            StatusCode::OK,
            &format!("{}: a token minted after the change", s.name),
        );
    }

    // Disabled: the key and its token fail; active again: the key works.
    let record = a.patch("shared", json!({"status": "disabled"})).await;
    let changed = Instant::now();
    assert_eq!(record["status"], "disabled", "{record}");
    a.weather(&key)
        .await
        .expect(StatusCode::UNAUTHORIZED, "A: at once, a disabled key");
    eventually(
        "B: 401 for a disabled key",
        changed,
        PROPAGATION,
        || b.weather(&key),
        |r| r.status == StatusCode::UNAUTHORIZED,
    )
    .await;
    for s in [&b, &a] {
        eventually(
            &format!("{}: 401 for a disabled key's token", s.name),
            changed,
            PROPAGATION,
            || s.weather_bearer(&token),
            |r| r.status == StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    let record = a.patch("shared", json!({"status": "active"})).await;
    let changed = Instant::now();
    assert_eq!(record["status"], "active", "{record}");
    eventually(
        "B: 200 for a key made active again",
        changed,
        PROPAGATION,
        || b.weather(&key),
        |r| r.status == StatusCode::OK,
    )
    .await;

    // Rotation with a grace: the old key works until the grace ends, then fails.
    let asked = Instant::now();
    let rotated = a
        .admin(
            Method::POST,
            "/admin/keys/shared/rotate",
            Some(json!({"grace_seconds": GRACE.as_secs()})),
        )
        .await
        .expect(StatusCode::OK, "A: POST /admin/keys/shared/rotate")
        .json();
    let changed = Instant::now();
    check_record(&rotated["record"]);
    assert_eq!(rotated["record"]["id"], "shared", "{rotated}");
    let new_key = rotated["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no key in {rotated}"))
        .to_owned();
    assert_ne!(new_key, key);
    for s in [&b, &a] {
        let started = Instant::now();
        let reply = s.weather(&key).await;
        assert!(
            started + Duration::from_millis(200) < asked + GRACE,
            "too slow to check the grace: {:?} after the rotation was asked",
            started - asked
        );
        reply.expect(
            StatusCode::OK,
            &format!("{}: the old key within the grace", s.name),
        );
    }
    eventually(
        "B: 200 for the rotated key",
        changed,
        PROPAGATION,
        || b.weather(&new_key),
        |r| r.status == StatusCode::OK,
    )
    .await;
    a.weather(&new_key)
        .await
        .expect(StatusCode::OK, "A: the rotated key");
    for s in [&b, &a] {
        eventually(
            &format!("{}: 401 for the old key after the grace", s.name),
            changed + GRACE,
            PROPAGATION,
            || s.weather(&key),
            |r| r.status == StatusCode::UNAUTHORIZED,
        )
        .await;
    }

    // Revoked: the key and the tokens minted for it fail on both.
    let token = b.token_for(&new_key).await;
    a.me_bearer(&token)
        .await
        .expect(StatusCode::OK, "A: the rotated key's token");
    a.revoke("shared").await;
    let changed = Instant::now();
    for s in [&a, &b] {
        eventually(
            &format!("{}: 401 for a revoked key", s.name),
            changed,
            PROPAGATION,
            || s.weather(&new_key),
            |r| r.status == StatusCode::UNAUTHORIZED,
        )
        .await;
        eventually(
            &format!("{}: 401 for a revoked key's token", s.name),
            changed,
            PROPAGATION,
            || s.weather_bearer(&token),
            |r| r.status == StatusCode::UNAUTHORIZED,
        )
        .await;
    }

    // A key with a quota of 2/min, one limit across both instances.
    let (limited, _) = a.create("limited", "acme").await;
    let tally = Tally::default();
    let reply = b.weather(&limited).await;
    tally.count(&reply);
    reply.expect(StatusCode::OK, "B: the second key");
    let record = a.patch("limited", json!({"quota": "2/min"})).await;
    let changed = Instant::now();
    assert_eq!(record["quota"], "2/min", "{record}");
    let (on, key_of, counts) = (&b, limited.as_str(), &tally);
    let first = eventually(
        "B: the key's own quota 2/min in RateLimit-Policy",
        changed,
        PROPAGATION,
        move || async move {
            let reply = on.weather(key_of).await;
            counts.count(&reply);
            reply
        },
        |r| r.policy().contains("q=2;w=60"),
    )
    .await;
    first.expect(StatusCode::OK, "B: the first request under 2/min");
    let on_a = a.weather(&limited).await;
    tally.count(&on_a);
    let on_a = on_a.expect(StatusCode::OK, "A: the second request under 2/min");
    assert!(on_a.policy().contains("q=2;w=60"), "A: {on_a}");
    let on_b = b.weather(&limited).await;
    tally.count(&on_b);
    let on_b = on_b.expect(
        StatusCode::TOO_MANY_REQUESTS,
        "B: the third request under 2/min, shared with A",
    );
    assert!(on_b.policy().contains("q=2;w=60"), "B: {on_b}");
    assert!(on_b.header("ratelimit").is_some(), "B: {on_b}");

    // Its usage, summed over both instances, seen from both.
    let (allowed, limited_count) = tally.get();
    let counted = Instant::now();
    for s in [&a, &b] {
        let usage = eventually(
            &format!(
                "{}: usage {allowed} allowed, {limited_count} limited",
                s.name
            ),
            counted,
            Duration::from_secs(3),
            || s.usage("limited"),
            |r| {
                r.status == StatusCode::OK
                    && r.json()["allowed"] == allowed
                    && r.json()["limited"] == limited_count
            },
        )
        .await
        .json();
        assert!(
            usage["last_used_at"].as_str().is_some_and(is_rfc3339),
            "{usage}"
        );
    }

    // Deleted: the key fails (it was limited, so it passed authentication until now), and its
    // record is gone on B.
    a.admin(Method::DELETE, "/admin/keys/limited", None)
        .await
        .expect(StatusCode::NO_CONTENT, "A: DELETE /admin/keys/limited");
    let changed = Instant::now();
    a.weather(&limited)
        .await
        .expect(StatusCode::UNAUTHORIZED, "A: at once, a deleted key");
    eventually(
        "B: 401 for a deleted key",
        changed,
        PROPAGATION,
        || b.weather(&limited),
        |r| r.status == StatusCode::UNAUTHORIZED,
    )
    .await;
    eventually(
        "B: GET /admin/keys/limited 404 once deleted",
        changed,
        PROPAGATION,
        || b.admin(Method::GET, "/admin/keys/limited", None),
        |r| r.status == StatusCode::NOT_FOUND,
    )
    .await;
    a.admin(Method::DELETE, "/admin/keys/shared", None)
        .await
        .expect(StatusCode::NO_CONTENT, "A: DELETE /admin/keys/shared");
    let changed = Instant::now();
    eventually(
        "B: GET /admin/keys/shared 404 once deleted",
        changed,
        PROPAGATION,
        || b.admin(Method::GET, "/admin/keys/shared", None),
        |r| r.status == StatusCode::NOT_FOUND,
    )
    .await;

    // The listed key went through all that untouched.
    for s in [&a, &b] {
        s.weather(LISTED).await.expect(
            StatusCode::OK,
            &format!("{}: the listed key at the end", s.name),
        );
    }
    // No secret in any log.
    for s in [&a, &b] {
        let log = s.log.text();
        for (what, secret) in [
            ("ADMIN_API_KEY", ADMIN),
            ("the listed key", LISTED),
            ("JWT_SECRET", SECRET),
            ("an issued key", &key),
            ("a rotated key", &new_key),
            ("an issued key", &limited),
            ("a token", &token),
        ] {
            assert!(!log.contains(secret), "{what} in the log of {}", s.name);
        }
    }

    // A listed key rotated out through the admin API stays out: an instance starting with the
    // same WEATHER_API_KEYS starts, and does not bring the old key back.
    let rotated = a
        .admin(
            Method::POST,
            "/admin/keys/key-1/rotate",
            Some(json!({"grace_seconds": 0})),
        )
        .await
        .expect(StatusCode::OK, "A: rotate the listed key")
        .json();
    let changed = Instant::now();
    assert_eq!(rotated["record"]["id"], "key-1", "{rotated}");
    let c = Instance::start("C", &vars).await;
    for s in [&a, &b, &c] {
        eventually(
            &format!("{}: 401 for the listed key after its rotation", s.name),
            changed,
            PROPAGATION,
            || s.weather(LISTED),
            |r| r.status == StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    drop(c);

    // A key's tokens share its limit and never raise its quota: a token minted before the quota
    // changed is revoked, and one minted after carries the key's own quota. Once the bound has
    // passed, the quota holds everywhere: of three token requests, the third is over.
    let (capped, _) = a.create("capped", "acme").await;
    let before = b.token_for(&capped).await;
    let record = a.patch("capped", json!({"quota": "2/min"})).await;
    let changed = Instant::now();
    assert_eq!(record["quota"], "2/min", "{record}");
    tokio::time::sleep_until((changed + PROPAGATION).into()).await;
    for s in [&a, &b] {
        s.weather_bearer(&before).await.expect(
            StatusCode::UNAUTHORIZED,
            &format!("{}: a token minted before the quota changed", s.name),
        );
    }
    let token = b.token_for(&capped).await;
    let mut replies = Vec::new();
    for s in [&b, &a, &b] {
        let reply = s.weather_bearer(&token).await;
        replies.push(format!("{}: {} {}", s.name, reply.status, reply.policy()));
    }
    let limited_at_2 = |line: &String| line.contains("q=2;w=60");
    assert!(
        replies.iter().all(limited_at_2) && replies[2].contains(" 429 "),
        "the token of a key with a quota of 2/min, three requests: {replies:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Scenario 3: the admin API's credential.

async fn admin_api_needs_the_admin_key() {
    guarded(admin_api_body(), async {}).await;
}

async fn admin_api_body() {
    let vars = [
        ("ADMIN_API_KEY", ADMIN.to_owned()),
        ("WEATHER_API_KEYS", LISTED.to_owned()),
        ("RATE_LIMIT", "1/min".to_owned()),
        ("JWT_SECRET", SECRET.to_owned()),
    ];
    let s = Instance::start("A", &vars).await;
    // The weather key's one request a minute: a token.
    let token = s.token_for(LISTED).await;
    s.weather(LISTED)
        .await
        .expect(StatusCode::TOO_MANY_REQUESTS, "the weather key over 1/min");

    let list = "/admin/keys?owner=weather-user";
    let wrong = "wrong-admin-key-of-the-instances";
    let bearer = |c: &str| format!("Bearer {c}");
    let with_key = |key: &str| format!("{list}&key={key}");
    // What is sent, how, and where.
    let refused = [
        ("no credential", None, list.to_owned()),
        (
            "the weather key in x-api-key",
            Some(("x-api-key", LISTED.to_owned())),
            list.to_owned(),
        ),
        (
            "the weather key as Bearer",
            Some(("authorization", bearer(LISTED))),
            list.to_owned(),
        ),
        (
            "a minted token",
            Some(("authorization", bearer(&token))),
            list.to_owned(),
        ),
        (
            "a wrong key as Bearer",
            Some(("authorization", bearer(wrong))),
            list.to_owned(),
        ),
        (
            "a wrong key in x-api-key",
            Some(("x-api-key", wrong.to_owned())),
            list.to_owned(),
        ),
        ("the weather key in ?key=", None, with_key(LISTED)),
        ("the admin key in ?key=", None, with_key(ADMIN)),
    ];
    for (what, header, path) in &refused {
        let headers: Vec<(&str, &str)> = header.iter().map(|(n, v)| (*n, v.as_str())).collect();
        s.get(path, &headers)
            .await
            .expect(StatusCode::UNAUTHORIZED, &format!("GET {list} with {what}"));
    }
    // Nor can those change anything.
    let body = json!({"owner": "weather-user", "scopes": [weather::SCOPE], "id": "intruder"});
    for (what, credential) in [("the weather key", LISTED), ("a minted token", &token)] {
        s.send(
            Method::POST,
            "/admin/keys",
            &[("authorization", &bearer(credential))],
            Some(&body),
        )
        .await
        .expect(
            StatusCode::UNAUTHORIZED,
            &format!("POST /admin/keys with {what}"),
        );
    }
    // The admin key, both ways, as often as one likes.
    for i in 0..30 {
        let reply = if i % 2 == 0 {
            s.get(list, &[("authorization", &bearer(ADMIN))]).await
        } else {
            s.get(list, &[("x-api-key", ADMIN)]).await
        };
        let reply = reply.expect(
            StatusCode::OK,
            &format!("GET {list} #{i} with the admin key"),
        );
        assert!(
            reply.header("ratelimit-policy").is_none(),
            "rate limited: {reply}"
        );
        let ids: Vec<Value> = reply.json()["keys"]
            .as_array()
            .unwrap_or_else(|| panic!("no keys in {reply}"))
            .iter()
            .map(|r| r["id"].clone())
            .collect();
        assert_eq!(ids, [json!("key-1")], "{reply}");
    }
    // The admin key is no weather key.
    s.weather(ADMIN).await.expect(
        StatusCode::UNAUTHORIZED,
        "the admin key on /v1/current.json",
    );
    s.weather_bearer(ADMIN).await.expect(
        StatusCode::UNAUTHORIZED,
        "the admin key as Bearer on /v1/current.json",
    );
}

// ---------------------------------------------------------------------------------------------
// Scenarios 4 and 5: a store outage.

async fn postgres_outage_serves_cached_keys_and_recovers() {
    let server = services::database_url();
    let database = TestDatabase::create(&server).await;
    let body = outage_serves_cached_keys_and_recovers(database.url.clone(), 5432, vec![]);
    guarded(body, database.remove()).await;
}

async fn redis_outage_serves_cached_keys_and_recovers() {
    let redis = services::redis_url();
    let prefixes = Prefixes::new();
    let body = outage_serves_cached_keys_and_recovers(
        redis.clone(),
        6379,
        vec![("KEY_STORE_PREFIX", prefixes.keys.clone())],
    );
    guarded(body, delete_redis_keys(&redis, &prefixes.base)).await;
}

/// Instance A reaches the store at `store_url` through a proxy, B directly. Keys are made on B,
/// so that A has in its cache only what it looked up itself. The proxy first hangs, then
/// refuses, then forwards again.
async fn outage_serves_cached_keys_and_recovers(
    store_url: String,
    default_port: u16,
    extra: Vec<(&'static str, String)>,
) {
    let proxy = Proxy::start(upstream(&store_url, default_port).await).await;
    let mut vars = extra;
    vars.extend([
        ("ADMIN_API_KEY", ADMIN.to_owned()),
        ("WEATHER_API_KEYS", LISTED.to_owned()),
        ("JWT_SECRET", SECRET.to_owned()),
        ("RATE_LIMIT", "1000/s".to_owned()),
        ("KEY_CACHE_TTL", OUTAGE_TTL.as_secs().to_string()),
        ("KEY_CACHE_STALE", "30".to_owned()),
    ]);
    let mut via_proxy = vars.clone();
    via_proxy.push(("KEY_STORE", with_host(&store_url, proxy.addr())));
    vars.push(("KEY_STORE", store_url));
    // The keys are made before A starts: no notification of their creation can reach A after
    // it cached one of them (and make it forget the entry, as it should).
    let b = Instance::start("B", &vars).await;
    let (used, _) = b.create("used", "acme").await;
    let (unused, _) = b.create("unused", "acme").await;
    let a = Instance::start("A", &via_proxy).await;
    a.weather(&used)
        .await
        .expect(StatusCode::OK, "A: a key, before the outage");
    let cached = Instant::now();

    // A store that hangs: past the TTL, the cached key still works, the other one gets 503 once
    // the store's timeout is over.
    proxy.blackhole();
    tokio::time::sleep_until((cached + OUTAGE_TTL + Duration::from_millis(300)).into()).await;
    outage_check(&a, &used, &unused, "hanging").await;
    // A store that refuses connections.
    proxy.cut();
    outage_check(&a, &used, &unused, "refusing").await;

    // Back, without a restart.
    proxy.restore();
    let back = Instant::now();
    eventually(
        "A: the key it never looked up, once the store is back",
        back,
        Duration::from_secs(6),
        || a.weather(&unused),
        |r| r.status == StatusCode::OK,
    )
    .await;
    a.weather(&used)
        .await
        .expect(StatusCode::OK, "A: the cached key, once the store is back");

    // A listens to the store again: changes made on B reach A's cache within the bound, which
    // is shorter than A's TTL. The second change comes after the listener's longest wait
    // between reconnection attempts (1 s), so that it is heard as such, not swept away with the
    // whole cache when the listener is back.
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let id = format!("fresh-{round}");
        let (key, _) = b.create(&id, "acme").await;
        a.weather(&key)
            .await
            .expect(StatusCode::OK, &format!("A: {id}, new"));
        let (want, what) = if round == 0 {
            b.revoke(&id).await;
            (StatusCode::UNAUTHORIZED, "revoked")
        } else {
            b.patch(&id, json!({"scopes": ["weather:write"]})).await;
            (StatusCode::FORBIDDEN, "without weather:read")
        };
        let changed = Instant::now();
        eventually(
            &format!("A: {want} for {id}, {what} on B after the outage"),
            changed,
            PROPAGATION,
            || a.weather(&key),
            |r| r.status == want,
        )
        .await;
    }
    drop(a);
    drop(proxy);
}

/// During an outage: `used`, cached, still works; `unused`, never looked up, gets 503; both
/// answers come within [`OUTAGE_ANSWER`].
async fn outage_check(a: &Instance, used: &str, unused: &str, phase: &str) {
    let (reply, took) = timed(a.weather(used)).await;
    reply.expect(StatusCode::OK, &format!("A: a cached key, store {phase}"));
    assert!(
        took <= OUTAGE_ANSWER,
        "A: a cached key, store {phase}: {took:?}"
    );
    let (reply, took) = timed(a.weather(unused)).await;
    reply.expect(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("A: a key it never looked up, store {phase}"),
    );
    assert!(took <= OUTAGE_ANSWER, "A: the 503, store {phase}: {took:?}");
}

// ---------------------------------------------------------------------------------------------
// Scenario 6: no store at start.

async fn an_unreachable_store_stops_the_start() {
    guarded(unreachable_store_body(), async {}).await;
}

async fn unreachable_store_body() {
    // Closed ports, with a password that must not show.
    for url in [
        "postgres://postgres:hunter2@127.0.0.1:1/x",
        "redis://:hunter2@127.0.0.1:1/",
    ] {
        let shown = url.replace("hunter2", "***");
        let vars = [
            ("KEY_STORE", url.to_owned()),
            ("WEATHER_API_KEYS", LISTED.to_owned()),
        ];
        let mut process = child_command(&vars)
            .spawn()
            .expect("start the test binary as the example");
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut out = process.stdout.take().expect("a piped stdout");
        let mut err = process.stderr.take().expect("a piped stderr");
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            let (o, e) = tokio::join!(out.read_to_end(&mut stdout), err.read_to_end(&mut stderr));
            o.and(e)?;
            process.wait().await
        })
        .await;
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let status = match ended {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("KEY_STORE={shown}: {e}"),
            Err(_) => panic!("KEY_STORE={shown}: still running after 20 s; stderr:\n{stderr}"),
        };
        assert_eq!(
            status.code(),
            Some(1),
            "KEY_STORE={shown}: stderr:\n{stderr}"
        );
        assert!(
            !stdout.contains("listening on"),
            "KEY_STORE={shown}: {stdout}"
        );
        assert!(
            stderr.starts_with("error: "),
            "KEY_STORE={shown}: stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains("hunter2") && !stdout.contains("hunter2"),
            "KEY_STORE={shown}: the password is shown:\n{stderr}\n{stdout}"
        );
    }
}
