//! Drives `examples/weather.rs` end to end over real TCP on `127.0.0.1:0`: the example's own
//! source is compiled into this test, its server started on a free port, and called with
//! `reqwest` the way its printed curl commands call it.
//!
//! The test of two instances sharing one Redis needs a server, so it is ignored unless asked
//! for: run it with the `redis` feature, `KEYGATE_TEST_REDIS_URL` set (e.g.
//! `redis://127.0.0.1:6379/`) and `-- --include-ignored`. Asked for without the variable, it
//! fails, so that a run without Redis never passes for one that tested it.

#![cfg(all(feature = "axum", feature = "jwt"))]

// The OpenID providers of the `OIDC_ISSUERS` tests.
#[cfg(feature = "jwks")]
mod common;
#[cfg(feature = "redis")]
mod services;
#[allow(dead_code)] // `main` and `shutdown_signal` are the binary's, not the test's.
#[path = "../examples/weather.rs"]
mod weather;

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate::jwt::{JwtKey, JwtVerifier, TokenIssuer};
use keygate::key::{ApiKey, KeyRecord};
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[cfg(feature = "jwks")]
use common::oidc_provider::{Provider, a1, attacker, b1, now};

/// A `JWT_SECRET` for the tests that mint or check tokens themselves.
const SECRET: &str = "a test secret of at least 32 bytes, for HS256";
/// The problem type of a 429.
const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// A running copy of the example.
struct Server {
    addr: SocketAddr,
    /// What the example printed at start.
    banner: String,
    services: weather::Services,
    keys: weather::Keys,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// The example's configuration from these variables (and nothing from the process environment).
fn config(vars: &[(&str, &str)]) -> Result<weather::Config, weather::ConfigError> {
    weather::Config::from_vars(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
}

impl Server {
    /// Starts the example as `main` does, with these environment variables.
    async fn start(vars: &[(&str, &str)]) -> Self {
        let mut vars = vars.to_vec();
        if !vars.iter().any(|(k, _)| *k == "KEYGATE_ADDR") {
            vars.push(("KEYGATE_ADDR", "127.0.0.1:0"));
        }
        let config = config(&vars).expect("a valid configuration");
        let services = weather::services(&config).await.expect("services");
        let listener = TcpListener::bind(config.addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let mut banner = Vec::new();
        weather::banner(&mut banner, addr, &services).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = weather::app(&services, addr);
        let task = tokio::spawn(weather::serve(listener, app, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            banner: String::from_utf8(banner).expect("a UTF-8 banner"),
            keys: services.keys.clone(),
            services,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    fn demo_key(&self) -> &str {
        self.keys
            .demo_key
            .as_ref()
            .expect("a demo key")
            .expose_secret()
    }

    async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.client.request(method, self.url(path_and_query));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        Reply::from(req.send().await.expect("the server answers")).await
    }

    /// A request with a JSON body.
    #[cfg(feature = "admin")]
    async fn send_json(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, self.url(path_and_query))
            .json(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        Reply::from(req.send().await.expect("the server answers")).await
    }

    async fn get(&self, path_and_query: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::GET, path_and_query, headers).await
    }

    async fn post(&self, path_and_query: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::POST, path_and_query, headers).await
    }

    /// `GET` with `Authorization: Bearer {token}`.
    async fn get_bearer(&self, path_and_query: &str, token: &str) -> Reply {
        let bearer = format!("Bearer {token}");
        self.get(path_and_query, &[("authorization", &bearer)])
            .await
    }

    /// A token for `key` from `POST /v1/token`.
    async fn token_for(&self, key: &str) -> String {
        let reply = self.post("/v1/token", &[("x-api-key", key)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.json()["access_token"]
            .as_str()
            .expect("an access_token")
            .to_owned()
    }

    /// Runs the banner's shell commands as a shell would, in order, with `vars` set: each
    /// `curl [-g] [-s] [-X METHOD] [-H HEADER]... URL`, and `TOKEN=$(curl ... | sed ...)`.
    async fn run_banner(&self, vars: &[(&str, &str)]) -> Vec<Ran> {
        let mut vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut ran = Vec::new();
        for line in self.banner.lines().map(str::trim) {
            if let Some(sub) = line.strip_prefix("TOKEN=$(") {
                let sub = sub.strip_suffix(')').expect("TOKEN=$(...)");
                let (command, filter) = sub.split_once(" | ").expect("curl ... | sed ...");
                assert_eq!(filter, weather::EXTRACT_TOKEN, "{line}");
                let call = self.curl(command, &vars).await;
                // What the sed filter does: it reads one line and keeps the access_token.
                let body = &call.reply.body;
                assert!(!body.contains('\n'), "{body}");
                let start = body.rfind(r#""access_token":""#).expect("an access_token") + 16;
                let token = &body[start..start + body[start..].find('"').unwrap()];
                assert_eq!(call.reply.json()["access_token"], token);
                vars.insert("TOKEN".to_owned(), token.to_owned());
                ran.push(call);
            } else if line.starts_with("curl ") {
                ran.push(self.curl(line, &vars).await);
            }
        }
        ran
    }

    async fn curl(&self, command: &str, vars: &HashMap<String, String>) -> Ran {
        let words = shell_words(command, vars);
        assert_eq!(words[0], "curl", "{command}");
        let (mut method, mut headers, mut url) = (Method::GET, Vec::new(), None);
        let mut words = words.into_iter().skip(1);
        while let Some(word) = words.next() {
            match word.as_str() {
                "-g" | "-s" => {}
                "-X" => method = words.next().expect("a method").parse().unwrap(),
                "-H" => {
                    let h = words.next().expect("a header");
                    let (name, value) = h.split_once(": ").expect("a 'Name: value' header");
                    headers.push((name.to_owned(), value.to_owned()));
                }
                flag if flag.starts_with('-') => panic!("{command}: unknown flag {flag}"),
                _ => {
                    assert!(url.is_none(), "{command}: two URLs");
                    url = Some(word);
                }
            }
        }
        let url = url.expect("a URL");
        assert!(
            url.starts_with(&format!("http://{}/", self.addr)),
            "{command}"
        );
        let mut req = self.client.request(method.clone(), &url);
        for (name, value) in &headers {
            req = req.header(name, value);
        }
        let reply = Reply::from(req.send().await.expect("the server answers")).await;
        Ran {
            command: command.to_owned(),
            method,
            url,
            headers,
            reply,
        }
    }

    /// Stops the server gracefully and checks that it ended without error.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the server stops within 10 s")
            .expect("the server task did not panic");
        result.expect("the server ended without an I/O error");
    }
}

/// A banner command that was run.
struct Ran {
    command: String,
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    reply: Reply,
}

impl Ran {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a command line into words as `sh` does for the banner's commands: `'...'` literally,
/// `"..."` and bare words with `$NAME` expanded (an unset variable fails the test).
fn shell_words(line: &str, vars: &HashMap<String, String>) -> Vec<String> {
    fn expand(
        chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
        vars: &HashMap<String, String>,
        out: &mut String,
    ) {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if !(c.is_ascii_alphanumeric() || c == '_') {
                break;
            }
            name.push(c);
            chars.next();
        }
        let value = vars
            .get(&name)
            .unwrap_or_else(|| panic!("${name} is not set"));
        out.push_str(value);
    }
    let mut words = Vec::new();
    let (mut word, mut in_word) = (String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                word.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '$' => expand(&mut chars, vars, &mut word),
                        '\\' | '`' => panic!("{line}: unexpected {c} in double quotes"),
                        c => word.push(c),
                    }
                }
            }
            '$' => {
                in_word = true;
                expand(&mut chars, vars, &mut word);
            }
            '\\' | '`' | '|' | ';' | '&' | '(' | ')' | '<' | '>' => {
                panic!("{line}: unexpected {c}")
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A token's claims, decoded without checking anything.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a compact JWS");
    let bytes = URL_SAFE_NO_PAD.decode(payload).expect("base64url");
    serde_json::from_slice(&bytes).expect("a JSON payload")
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    async fn from(res: reqwest::Response) -> Self {
        Self {
            status: res.status(),
            headers: res.headers().clone(),
            body: res.text().await.expect("a text body"),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// A problem+json error with this status.
    fn assert_problem(&self, status: StatusCode) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.header(CONTENT_TYPE), Some("application/problem+json"));
        let body = self.json();
        assert_eq!(body["status"], status.as_u16(), "{body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
        assert!(body["title"].is_string(), "{body}");
    }

    /// A 429 of the error contract.
    fn assert_rate_limited(&self) {
        self.assert_problem(StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(self.json()["type"], QUOTA_EXCEEDED, "{}", self.body);
        let retry: u64 = self
            .header(RETRY_AFTER)
            .expect("Retry-After")
            .parse()
            .expect("Retry-After in seconds");
        assert!(retry >= 1, "Retry-After: {retry}");
        assert_eq!(self.header(CACHE_CONTROL), Some("no-store"));
        assert!(self.header("ratelimit-policy").is_some());
        assert!(
            self.header("ratelimit")
                .is_some_and(|v| v.contains(";r=0;")),
            "{:?}",
            self.headers
        );
        assert!(self.header(WWW_AUTHENTICATE).is_none());
    }

    /// A 401 `invalid_token`.
    fn assert_invalid_token(&self) {
        self.assert_problem(StatusCode::UNAUTHORIZED);
        assert_eq!(
            self.header(WWW_AUTHENTICATE),
            Some(r#"Bearer realm="weather", error="invalid_token""#)
        );
    }

    /// A 200 weather report for `city`.
    fn assert_weather(&self, city: &str) {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        assert_eq!(self.header(CONTENT_TYPE), Some("application/json"));
        let body = self.json();
        assert_eq!(body["location"]["name"], city, "{body}");
        let temp = body["current"]["temp_c"]
            .as_f64()
            .expect("a numeric temp_c");
        assert!((-10.0..35.0).contains(&temp), "{body}");
        assert!(body["current"]["condition"]["text"].is_string(), "{body}");
        assert!(body["current"]["humidity"].is_u64(), "{body}");
    }
}

#[tokio::test]
async fn banner_starts_with_the_address_and_its_curl_commands_work() {
    let server = Server::start(&[]).await;
    let mut lines = server.banner.lines();
    assert_eq!(
        lines.next(),
        Some(format!("listening on http://{}", server.addr).as_str())
    );
    let key = server.demo_key().to_owned();
    assert!(key.starts_with(weather::KEY_PREFIX), "{key}");
    assert!(weather::key_format().check(&key).is_ok());
    assert!(
        server.banner.contains("rate limit: 10/s per key"),
        "{}",
        server.banner
    );
    assert_eq!(server.services.backend, weather::LimiterBackend::Memory);

    let ran = server.run_banner(&[]).await;
    // query, x-api-key, Bearer key, token minted, token used
    let mut places = [false; 5];
    for call in &ran {
        assert_eq!(
            call.reply.status,
            StatusCode::OK,
            "{}: {}",
            call.command,
            call.reply.body
        );
        places[0] |= call.url.contains(&format!("key={key}&"));
        places[1] |= call.header("x-api-key") == Some(&key);
        places[2] |= call.header("authorization") == Some(&format!("Bearer {key}"));
        if call.url.ends_with("/v1/token") {
            assert_eq!(call.method, Method::POST);
            assert_eq!(call.header("x-api-key"), Some(key.as_str()));
            places[3] = true;
        }
        if let Some(token) = call
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| t.matches('.').count() == 2)
        {
            if call.url.ends_with("/v1/me") {
                assert_eq!(call.reply.json()["kind"], "jwt", "{}", call.reply.body);
                assert_eq!(call.reply.json()["id"], "demo", "{}", call.reply.body);
            }
            assert_eq!(claims(token)["sub"], "demo");
            places[4] = true;
        }
    }
    assert_eq!(places, [true; 5], "{}", server.banner);
    assert!(ran.len() >= 8, "{}", server.banner);
    server.stop().await;
}
#[tokio::test]
async fn current_weather_with_the_key_in_each_place() {
    let server = Server::start(&[]).await;
    let key = server.demo_key().to_owned();

    let by_query = server
        .get(&format!("/v1/current.json?key={key}&q=London"), &[])
        .await;
    by_query.assert_weather("London");
    let by_header = server
        .get("/v1/current.json?q=London", &[("x-api-key", &key)])
        .await;
    by_header.assert_weather("London");
    let bearer = format!("Bearer {key}");
    let by_bearer = server
        .get("/v1/current.json?q=London", &[("authorization", &bearer)])
        .await;
    by_bearer.assert_weather("London");

    // Deterministic: the same city gives the same report, another city another one.
    assert_eq!(by_query.body, by_header.body);
    assert_eq!(by_query.body, by_bearer.body);
    let paris = server
        .get("/v1/current.json?q=Paris", &[("x-api-key", &key)])
        .await;
    paris.assert_weather("Paris");
    assert_ne!(paris.json()["current"], by_query.json()["current"]);

    // Query values are percent-decoded.
    server
        .get("/v1/current.json?q=New%20York", &[("x-api-key", &key)])
        .await
        .assert_weather("New York");
    server.stop().await;
}

#[tokio::test]
async fn no_key_is_401_with_a_challenge() {
    let server = Server::start(&[]).await;
    for path in ["/v1/current.json?q=London", "/v1/me"] {
        let reply = server.get(path, &[]).await;
        reply.assert_problem(StatusCode::UNAUTHORIZED);
        assert_eq!(
            reply.header(WWW_AUTHENTICATE),
            Some(r#"Bearer realm="weather""#),
            "{path}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_keys_are_401_invalid_token() {
    let server = Server::start(&[]).await;
    let key = server.demo_key().to_owned();
    // One character changed: fails the checksum.
    let last = if key.ends_with('A') { "B" } else { "A" };
    let typo = format!("{}{last}", &key[..key.len() - 1]);
    // Well formed, but never issued by this server.
    let unknown = weather::key_format().generate();
    let bad = [
        typo.as_str(),
        unknown.expose_secret(),
        "legacy-key-nobody-registered",
    ];
    for bad_key in bad {
        let reply = server
            .get("/v1/current.json?q=London", &[("x-api-key", bad_key)])
            .await;
        reply.assert_problem(StatusCode::UNAUTHORIZED);
        assert_eq!(
            reply.header(WWW_AUTHENTICATE),
            Some(r#"Bearer realm="weather", error="invalid_token""#),
            "{bad_key}"
        );
        assert!(!reply.body.contains(bad_key), "{}", reply.body);
    }
    server.stop().await;
}

#[tokio::test]
async fn two_keys_in_one_request_are_400() {
    let server = Server::start(&[]).await;
    let key = server.demo_key().to_owned();
    let reply = server
        .get(
            &format!("/v1/current.json?key={key}&q=London"),
            &[("x-api-key", &key)],
        )
        .await;
    reply.assert_problem(StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.header(WWW_AUTHENTICATE),
        Some(r#"Bearer realm="weather", error="invalid_request""#)
    );
    server.stop().await;
}

#[tokio::test]
async fn missing_or_empty_q_is_400() {
    let server = Server::start(&[]).await;
    let key = server.demo_key().to_owned();
    for path in [
        "/v1/current.json".to_owned(),
        "/v1/current.json?q=".to_owned(),
        "/v1/current.json?q=%20%20".to_owned(),
        format!("/v1/current.json?key={key}"),
    ] {
        let headers: &[(&str, &str)] = if path.contains("key=") {
            &[]
        } else {
            &[("x-api-key", &key)]
        };
        let reply = server.get(&path, headers).await;
        reply.assert_problem(StatusCode::BAD_REQUEST);
        assert!(reply.body.contains("Parameter q"), "{path}: {}", reply.body);
        assert!(!reply.body.contains(&key), "{}", reply.body);
    }
    server.stop().await;
}

#[tokio::test]
async fn me_shows_the_principal_and_never_the_key() {
    let server = Server::start(&[]).await;
    let key = server.demo_key().to_owned();
    let reply = server.get("/v1/me", &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header(CONTENT_TYPE), Some("application/json"));
    let me = reply.json();
    assert_eq!(me["id"], "demo", "{me}");
    assert_eq!(me["kind"], "api_key", "{me}");
    assert_eq!(me["scopes"], serde_json::json!(["weather:read"]), "{me}");
    assert!(!reply.body.contains(&key), "{}", reply.body);
    // Not even the part after the public prefix.
    assert!(
        !reply.body.contains(&key[weather::KEY_PREFIX.len()..]),
        "{}",
        reply.body
    );
    server.stop().await;
}

#[tokio::test]
async fn current_weather_needs_the_scope_but_me_does_not() {
    let server = Server::start(&[]).await;
    let no_scope = ApiKey::new("a-key-without-weather-read");
    server
        .keys
        .manager
        .insert(no_scope.digest(), KeyRecord::new("no-scope", "test"))
        .await
        .unwrap();
    let key = no_scope.expose_secret();
    let reply = server
        .get("/v1/current.json?q=London", &[("x-api-key", key)])
        .await;
    reply.assert_problem(StatusCode::FORBIDDEN);
    assert_eq!(
        reply.header(WWW_AUTHENTICATE),
        Some(r#"Bearer realm="weather", error="insufficient_scope", scope="weather:read""#)
    );
    let me = server.get("/v1/me", &[("x-api-key", key)]).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.json()["id"], "no-scope");
    server.stop().await;
}

#[tokio::test]
async fn healthz_needs_no_key() {
    let server = Server::start(&[]).await;
    let reply = server.get("/healthz", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "ok");
    assert!(reply.header(WWW_AUTHENTICATE).is_none());
    server.stop().await;
}

#[tokio::test]
async fn weather_api_keys_registers_legacy_keys_instead_of_a_demo_key() {
    let server = Server::start(&[(
        "WEATHER_API_KEYS",
        "legacy-key-one, 3c1f9a0d2b7e4f61,,wk_test_from_elsewhere",
    )])
    .await;
    assert!(server.keys.demo_key.is_none());
    assert_eq!(server.keys.listed, 3);
    let listed = server
        .keys
        .manager
        .list("weather-user", keygate::store::Page::first(10))
        .await
        .unwrap();
    let ids: Vec<&str> = listed.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["key-1", "key-2", "key-3"]);
    assert_eq!(
        server.banner.lines().next(),
        Some(format!("listening on http://{}", server.addr).as_str())
    );
    for (i, key) in [
        "legacy-key-one",
        "3c1f9a0d2b7e4f61",
        "wk_test_from_elsewhere",
    ]
    .into_iter()
    .enumerate()
    {
        assert!(!server.banner.contains(key), "{}", server.banner);
        let bearer = format!("Bearer {key}");
        server
            .get("/v1/current.json?q=Oslo", &[("authorization", &bearer)])
            .await
            .assert_weather("Oslo");
        let me = server.get(&format!("/v1/me?key={key}"), &[]).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.body);
        assert_eq!(me.json()["id"], format!("key-{}", i + 1));
        assert_eq!(me.json()["scopes"], serde_json::json!(["weather:read"]));
        assert!(!me.body.contains(key), "{}", me.body);
    }
    // With a key list, no key is issued: a well-formed key of the demo format is unknown.
    let stranger = weather::key_format().generate();
    server
        .get(
            "/v1/current.json?q=Oslo",
            &[("x-api-key", stranger.expose_secret())],
        )
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);

    // The banner's commands work with YOUR_KEY set, the token flow included.
    let ran = server.run_banner(&[("YOUR_KEY", "legacy-key-one")]).await;
    assert!(ran.len() >= 4, "{}", server.banner);
    for call in &ran {
        assert_eq!(call.reply.status, StatusCode::OK, "{}", call.command);
    }
    let me = ran
        .iter()
        .find(|c| c.url.ends_with("/v1/me"))
        .expect("a call of /v1/me");
    assert_eq!(me.reply.json()["kind"], "jwt", "{}", me.reply.body);
    assert_eq!(me.reply.json()["id"], "key-1", "{}", me.reply.body);
    server.stop().await;
}

#[test]
fn configuration() {
    let none = weather::Config::from_vars(|_| None).unwrap();
    assert_eq!(none.addr, "127.0.0.1:3000".parse().unwrap());
    assert!(none.api_keys.is_empty());
    assert_eq!(
        none.rate_limit,
        keygate::Limits::from(keygate::Quota::per_second(10))
    );
    assert!(none.redis_url.is_none());
    assert_eq!(none.redis_prefix, "weather:rl:");
    assert!(none.jwt_secret.is_none());
    assert!(none.jwt_subject_claim.is_none());
    assert!(none.jwt_issuer.is_none() && none.jwt_audience.is_none());

    let vars = |addr: &'static str, keys: &'static str| {
        move |name: &str| match name {
            "KEYGATE_ADDR" => Some(addr.to_owned()),
            "WEATHER_API_KEYS" => Some(keys.to_owned()),
            _ => None,
        }
    };
    let set =
        weather::Config::from_vars(vars("[::1]:8080", " alpha-secret , beta-secret,")).unwrap();
    assert_eq!(set.addr, "[::1]:8080".parse().unwrap());
    let keys: Vec<&str> = set.api_keys.iter().map(ApiKey::expose_secret).collect();
    assert_eq!(keys, ["alpha-secret", "beta-secret"]);
    // Config's Debug output never shows the keys.
    let shown = format!("{set:?}");
    assert!(!shown.contains("alpha-secret"), "{shown}");
    assert!(!shown.contains("beta-secret"), "{shown}");

    assert!(matches!(
        weather::Config::from_vars(vars("localhost", "")),
        Err(weather::ConfigError::Addr(_))
    ));

    // Keys the layer would always turn away are refused at start.
    let refused = |keys: &'static str| {
        let config = weather::Config::from_vars(vars("127.0.0.1:0", keys)).unwrap();
        match weather::check_keys(&config) {
            Err(weather::ConfigError::Key { position, .. }) => position,
            Err(other) => panic!("{keys:?}: {other:?}"),
            Ok(()) => panic!("{keys:?} accepted"),
        }
    };
    assert_eq!(refused("ok-key,wk_live_not-a-real-key"), 2);
    assert_eq!(refused("same,other,same"), 3);
    let long: &'static str = Box::leak("x".repeat(513).into_boxed_str());
    assert_eq!(refused(long), 1);
}

#[test]
fn rate_limit_configuration() {
    let quota = |v: &str| config(&[("RATE_LIMIT", v)]).map(|c| c.rate_limit);
    assert_eq!(quota("5/s").unwrap(), keygate::Quota::per_second(5).into());
    assert_eq!(
        quota(" 100/min;burst=20 ").unwrap(),
        keygate::Quota::per_minute(100).with_burst(20).into()
    );
    // Blank is unset: the default.
    assert_eq!(quota("  ").unwrap(), keygate::Quota::per_second(10).into());
    for bad in ["ten/s", "10", "0/s", "10/fortnight", "10/s;burst=0"] {
        match quota(bad) {
            Err(e @ weather::ConfigError::RateLimit(..)) => {
                let message = e.to_string();
                assert!(message.starts_with("RATE_LIMIT="), "{message}");
                assert!(message.contains(bad), "{message}");
            }
            other => panic!("RATE_LIMIT={bad:?} accepted: {other:?}"),
        }
    }

    // REDIS_URL: used with the `redis` feature, a configuration error without it.
    let redis = config(&[("REDIS_URL", "redis://:hunter2@127.0.0.1:6379/")]);
    #[cfg(feature = "redis")]
    {
        let redis = redis.unwrap();
        assert_eq!(
            redis.redis_url.as_deref(),
            Some("redis://:hunter2@127.0.0.1:6379/")
        );
        // Debug never shows the URL, which may hold a password.
        let shown = format!("{redis:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(
            config(&[("REDIS_PREFIX", "mine:")]).unwrap().redis_prefix,
            "mine:"
        );
    }
    #[cfg(not(feature = "redis"))]
    {
        let e = redis.unwrap_err();
        assert!(matches!(e, weather::ConfigError::RedisFeature), "{e:?}");
        assert!(e.to_string().contains("--features redis"), "{e}");
    }
    // Unset and blank are the same: in memory.
    assert!(config(&[("REDIS_URL", " ")]).unwrap().redis_url.is_none());
}

#[test]
fn jwt_configuration() {
    let c = config(&[
        ("JWT_SECRET", SECRET),
        ("JWT_SUBJECT_CLAIM", "userId"),
        ("JWT_ISSUER", "https://auth.example.com"),
        ("JWT_AUDIENCE", "weather"),
    ])
    .unwrap();
    assert_eq!(c.jwt_secret.as_deref(), Some(SECRET.as_bytes()));
    assert_eq!(c.jwt_subject_claim.as_deref(), Some("userId"));
    assert_eq!(c.jwt_issuer.as_deref(), Some("https://auth.example.com"));
    assert_eq!(c.jwt_audience.as_deref(), Some("weather"));
    // Debug never shows the secret.
    let shown = format!("{c:?}");
    assert!(!shown.contains("test secret"), "{shown}");

    // `sub` is the default; an empty secret is a mistake, not "no secret".
    let c = config(&[("JWT_SUBJECT_CLAIM", "sub")]).unwrap();
    assert!(c.jwt_subject_claim.is_none());
    assert!(matches!(
        config(&[("JWT_SECRET", "")]),
        Err(weather::ConfigError::EmptySecret)
    ));
    // A claim the issuer writes itself cannot name the caller.
    for claim in ["exp", "scope", "aud"] {
        assert!(
            matches!(
                config(&[("JWT_SUBJECT_CLAIM", claim)]),
                Err(weather::ConfigError::SubjectClaim(_))
            ),
            "{claim}"
        );
    }
}

#[tokio::test]
async fn responses_carry_rate_limit_headers_and_healthz_is_not_limited() {
    let server = Server::start(&[]).await;
    let key = server.demo_key().to_owned();
    let first = server
        .get("/v1/current.json?q=London", &[("x-api-key", &key)])
        .await;
    first.assert_weather("London");
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""default";q=10;w=1"#)
    );
    assert_eq!(first.header("ratelimit"), Some(r#""default";r=9;t=1"#));
    let me = server.get("/v1/me", &[("x-api-key", &key)]).await;
    assert_eq!(me.status, StatusCode::OK);
    assert!(
        me.header("ratelimit")
            .is_some_and(|v| v.starts_with(r#""default";r=8;"#)),
        "{:?}",
        me.headers
    );
    // Errors the handler gives pass through the limiter too, and carry the headers.
    let no_q = server.get("/v1/current.json", &[("x-api-key", &key)]).await;
    no_q.assert_problem(StatusCode::BAD_REQUEST);
    assert!(no_q.header("ratelimit").is_some());

    // /healthz: open, not limited, no headers.
    for _ in 0..20 {
        let health = server.get("/healthz", &[]).await;
        assert_eq!(health.status, StatusCode::OK);
        assert!(health.header("ratelimit").is_none());
        assert!(health.header("ratelimit-policy").is_none());
    }
    server.stop().await;
}

#[tokio::test]
async fn the_fourth_request_of_a_key_is_429_while_another_key_is_served() {
    let server = Server::start(&[
        ("RATE_LIMIT", "3/min"),
        ("WEATHER_API_KEYS", "first-key-0001,second-key-0002"),
    ])
    .await;
    assert!(server.banner.contains("rate limit: 3/min per key"));
    for remaining in [2, 1, 0] {
        let ok = server
            .get(
                "/v1/current.json?q=Rome",
                &[("x-api-key", "first-key-0001")],
            )
            .await;
        ok.assert_weather("Rome");
        assert_eq!(ok.header("ratelimit-policy"), Some(r#""default";q=3;w=60"#));
        let value = ok.header("ratelimit").unwrap();
        assert!(
            value.starts_with(&format!(r#""default";r={remaining};"#)),
            "{value}"
        );
    }
    let limited = server
        .get(
            "/v1/current.json?q=Rome",
            &[("x-api-key", "first-key-0001")],
        )
        .await;
    limited.assert_rate_limited();
    // One request every 20 s: the next is admitted within 20 s.
    let retry: u64 = limited.header(RETRY_AFTER).unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After: {retry}");
    // Every route behind the limiter, by the same key.
    server
        .get("/v1/me", &[("x-api-key", "first-key-0001")])
        .await
        .assert_rate_limited();

    // Another key has its own limit.
    server
        .get(
            "/v1/current.json?q=Rome",
            &[("x-api-key", "second-key-0002")],
        )
        .await
        .assert_weather("Rome");
    // A failed authentication spends nothing and is still 401.
    server
        .get("/v1/me", &[("x-api-key", "nobody-0003")])
        .await
        .assert_invalid_token();
    assert_eq!(server.get("/healthz", &[]).await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn post_token_returns_an_oauth_token_response() {
    let server = Server::start(&[]).await;
    let key = server.demo_key().to_owned();
    let reply = server.post("/v1/token", &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.header(CONTENT_TYPE), Some("application/json"));
    assert_eq!(reply.header(CACHE_CONTROL), Some("no-store"));
    assert!(reply.header("ratelimit").is_some());
    let body = reply.json();
    let fields: Vec<&str> = body
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, ["access_token", "expires_in", "token_type"]);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 7200);
    let token = body["access_token"].as_str().unwrap();
    assert!(!reply.body.contains(&key));

    // The key's id as subject, its scopes, 2 h, HS256.
    let claims = claims(token);
    assert_eq!(claims["sub"], "demo", "{claims}");
    assert_eq!(claims["scope"], "weather:read", "{claims}");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        7200
    );
    assert!(claims["jti"].is_string(), "{claims}");
    assert!(claims.get("iss").is_none() && claims.get("aud").is_none());
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["kid"], "weather-1", "{header}");

    // Each call mints a new token.
    assert_ne!(server.token_for(&key).await, token);

    // GET is not the way, and a credential is needed.
    let get = server.get("/v1/token", &[("x-api-key", &key)]).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    let anonymous = server.post("/v1/token", &[]).await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.header(WWW_AUTHENTICATE),
        Some(r#"Bearer realm="weather""#)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_minted_token_works_on_every_endpoint_as_a_jwt_caller() {
    let server = Server::start(&[]).await;
    let key = server.demo_key().to_owned();
    let token = server.token_for(&key).await;

    let by_key = server
        .get("/v1/current.json?q=Lima", &[("x-api-key", &key)])
        .await;
    let by_token = server.get_bearer("/v1/current.json?q=Lima", &token).await;
    by_token.assert_weather("Lima");
    assert_eq!(by_token.body, by_key.body);
    assert!(by_token.header("ratelimit").is_some());

    let me = server.get_bearer("/v1/me", &token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    let me = me.json();
    assert_eq!(me["id"], "demo", "{me}");
    assert_eq!(me["kind"], "jwt", "{me}");
    assert_eq!(me["scopes"], json!(["weather:read"]), "{me}");

    // A token cannot mint tokens: the caller is known (403), its credential may not do this.
    let again = server
        .post(
            "/v1/token",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    again.assert_problem(StatusCode::FORBIDDEN);
    assert!(again.json()["detail"].as_str().unwrap().contains("API key"));

    // One changed byte in the signature: 401.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    server
        .get_bearer("/v1/me", &forged)
        .await
        .assert_invalid_token();
    server.stop().await;
}

/// Minted tokens name their key (`JWT_KID`), and the service verifies with it: a token signed
/// with the right secret but naming another key is refused.
#[tokio::test]
async fn minted_tokens_carry_the_configured_kid_and_are_verified_by_it() {
    let server = Server::start(&[("JWT_SECRET", SECRET), ("JWT_KID", "2026-12")]).await;
    let key = server.demo_key().to_owned();
    let token = server.token_for(&key).await;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["kid"], "2026-12", "{header}");
    let me = server.get_bearer("/v1/me", &token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);

    let other_kid = TokenIssuer::hmac(SECRET.as_bytes())
        .kid("2025-01")
        .issue("demo", ["weather:read"])
        .unwrap();
    server
        .get_bearer("/v1/me", &other_kid.access_token)
        .await
        .assert_invalid_token();
    server.stop().await;
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_401() {
    let server = Server::start(&[("JWT_SECRET", SECRET)]).await;
    let key = server.demo_key().to_owned();
    let other = TokenIssuer::hmac(b"another secret, also at least 32 bytes long")
        .issue("demo", ["weather:read"])
        .unwrap();
    for path in ["/v1/me", "/v1/current.json?q=Oslo"] {
        let reply = server.get_bearer(path, &other.access_token).await;
        reply.assert_invalid_token();
        assert!(!reply.body.contains(&other.access_token));
    }
    // The server's own secret does verify (JWT_SECRET is the signing and verifying secret),
    // under the key id the tokens name.
    let minted = server.token_for(&key).await;
    let verifier = JwtVerifier::with_keys([JwtKey::hmac(SECRET.as_bytes()).kid("weather-1")]);
    assert_eq!(verifier.verify(&minted).unwrap().id(), "demo");
    let ours = TokenIssuer::hmac(SECRET.as_bytes())
        .issue("someone-else", ["weather:read"])
        .unwrap();
    let me = server.get_bearer("/v1/me", &ours.access_token).await;
    assert_eq!(me.json()["id"], "someone-else", "{}", me.body);

    // Without JWT_SECRET, the secret is random: two servers never accept each other's tokens.
    let a = Server::start(&[]).await;
    let b = Server::start(&[]).await;
    let from_a = a.token_for(a.demo_key()).await;
    a.get_bearer("/v1/me", &from_a).await.json();
    b.get_bearer("/v1/me", &from_a).await.assert_invalid_token();
    for s in [server, a, b] {
        s.stop().await;
    }
}

#[tokio::test]
async fn issuer_and_audience_are_in_minted_tokens_and_required_of_others() {
    let iss = "https://auth.example.com";
    let server = Server::start(&[
        ("JWT_SECRET", SECRET),
        ("JWT_ISSUER", iss),
        ("JWT_AUDIENCE", "weather"),
    ])
    .await;
    let key = server.demo_key().to_owned();
    let token = server.token_for(&key).await;
    let claims = claims(&token);
    assert_eq!(claims["iss"], iss, "{claims}");
    assert_eq!(claims["aud"], "weather", "{claims}");
    let me = server.get_bearer("/v1/me", &token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.json()["kind"], "jwt");
    server
        .get_bearer("/v1/current.json?q=Quito", &token)
        .await
        .assert_weather("Quito");

    // Right secret, wrong or missing iss / aud: 401.
    let issuer = TokenIssuer::hmac(SECRET.as_bytes());
    let tokens = [
        issuer.clone().issue("demo", [weather::SCOPE]).unwrap(),
        issuer
            .clone()
            .issuer("https://elsewhere.example.com")
            .audience("weather")
            .issue("demo", [weather::SCOPE])
            .unwrap(),
        issuer
            .clone()
            .issuer(iss)
            .audience("billing")
            .issue("demo", [weather::SCOPE])
            .unwrap(),
    ];
    for t in &tokens {
        server
            .get_bearer("/v1/me", &t.access_token)
            .await
            .assert_invalid_token();
    }
    let good = issuer
        .issuer(iss)
        .audience("weather")
        .issue("demo", [weather::SCOPE])
        .unwrap();
    let me = server.get_bearer("/v1/me", &good.access_token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    server.stop().await;
}

#[tokio::test]
async fn jwt_subject_claim_user_id_works_end_to_end() {
    let server = Server::start(&[
        ("JWT_SECRET", SECRET),
        ("JWT_SUBJECT_CLAIM", "userId"),
        ("WEATHER_API_KEYS", "user-key-0001"),
    ])
    .await;
    let token = server.token_for("user-key-0001").await;
    let claims = claims(&token);
    assert_eq!(claims["userId"], "key-1", "{claims}");
    let me = server.get_bearer("/v1/me", &token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.json()["id"], "key-1");
    assert_eq!(me.json()["kind"], "jwt");
    server
        .get_bearer("/v1/current.json?q=Nairobi", &token)
        .await
        .assert_weather("Nairobi");

    // Tokens minted elsewhere: `{"userId": 12345}`, a number; `sub` is not read.
    let foreign = TokenIssuer::hmac(SECRET.as_bytes())
        .issue_with(
            "not-the-caller",
            [weather::SCOPE],
            json!({ "userId": 12345 }),
        )
        .unwrap();
    let me = server.get_bearer("/v1/me", &foreign.access_token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.json()["id"], "12345");
    // A token without the claim names nobody: 401.
    let no_user = TokenIssuer::hmac(SECRET.as_bytes())
        .issue("key-1", [weather::SCOPE])
        .unwrap();
    server
        .get_bearer("/v1/me", &no_user.access_token)
        .await
        .assert_invalid_token();
    server.stop().await;
}

#[tokio::test]
async fn a_key_and_its_tokens_share_one_rate_limit() {
    let server = Server::start(&[("RATE_LIMIT", "3/min")]).await;
    let key = server.demo_key().to_owned();
    // 1: minting a token costs a request of the key.
    let token = server.token_for(&key).await;
    // 2: the token.
    let me = server.get_bearer("/v1/me", &token).await;
    assert!(
        me.header("ratelimit")
            .is_some_and(|v| v.starts_with(r#""default";r=1;"#)),
        "{:?}",
        me.headers
    );
    // 3: the key.
    server
        .get("/v1/current.json?q=Cairo", &[("x-api-key", &key)])
        .await
        .assert_weather("Cairo");
    // 4th and later: limited, by token, by key, and for minting more tokens.
    server
        .get_bearer("/v1/current.json?q=Cairo", &token)
        .await
        .assert_rate_limited();
    server
        .get("/v1/me", &[("x-api-key", &key)])
        .await
        .assert_rate_limited();
    server
        .post("/v1/token", &[("x-api-key", &key)])
        .await
        .assert_rate_limited();
    server.stop().await;
}

#[cfg(feature = "redis")]
#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn two_instances_on_one_redis_share_one_limit() {
    let url = services::redis_url();
    // A prefix of its own, so that runs never share state.
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    let prefix = format!("keygate-test:weather:{:016x}:", u64::from_le_bytes(r));
    let vars = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("RATE_LIMIT", "3/min"),
        ("WEATHER_API_KEYS", "shared-key-0001,other-key-0002"),
        ("JWT_SECRET", SECRET),
    ];
    let a = Server::start(&vars).await;
    let b = Server::start(&vars).await;
    for s in [&a, &b] {
        assert_eq!(s.services.backend, weather::LimiterBackend::Redis);
        assert!(s.banner.contains("in Redis"), "{}", s.banner);
        assert!(!s.banner.contains(&url), "{}", s.banner);
    }
    let key = ("x-api-key", "shared-key-0001");
    // 1 on A: a token (JWT_SECRET is shared, so B accepts it).
    let token = a.token_for(key.1).await;
    // 2 on B, with the token; 3 on A, with the key.
    let on_b = b.get_bearer("/v1/current.json?q=Lagos", &token).await;
    on_b.assert_weather("Lagos");
    assert!(
        on_b.header("ratelimit")
            .is_some_and(|v| v.starts_with(r#""default";r=1;"#)),
        "{:?}",
        on_b.headers
    );
    a.get("/v1/current.json?q=Lagos", &[key])
        .await
        .assert_weather("Lagos");
    // The quota is spent on both instances.
    b.get("/v1/current.json?q=Lagos", &[key])
        .await
        .assert_rate_limited();
    a.get_bearer("/v1/me", &token).await.assert_rate_limited();
    // Another key, another limit.
    b.get(
        "/v1/current.json?q=Lagos",
        &[("x-api-key", "other-key-0002")],
    )
    .await
    .assert_weather("Lagos");
    a.stop().await;
    b.stop().await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_that_cannot_be_used_stops_the_start() {
    // A closed port (with a password that must not show) and a URL that is not one.
    for url in ["redis://:hunter2@127.0.0.1:1/", "not a redis url"] {
        let config = config(&[("REDIS_URL", url)]).unwrap();
        let started = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            weather::services(&config),
        )
        .await
        .expect("an answer within 15 s");
        match started {
            Err(e @ weather::ConfigError::Redis(_)) => {
                let message = e.to_string();
                assert!(message.starts_with("REDIS_URL:"), "{message}");
                assert!(!message.contains("hunter2"), "{message}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[test]
fn key_store_and_admin_configuration() {
    let none = weather::Config::from_vars(|_| None).unwrap();
    assert_eq!(none.key_store, weather::KeyStoreConfig::Memory);
    assert_eq!(none.key_store_prefix, "weather:keys:");
    assert_eq!(none.key_cache_ttl, std::time::Duration::from_secs(30));
    assert_eq!(none.key_cache_stale, std::time::Duration::from_secs(300));
    assert!(none.admin_api_key.is_none());

    let memory = config(&[("KEY_STORE", " memory ")]).unwrap();
    assert_eq!(memory.key_store, weather::KeyStoreConfig::Memory);
    let cache = config(&[
        ("KEY_CACHE_TTL", "5"),
        ("KEY_CACHE_STALE", "0"),
        ("KEY_STORE_PREFIX", "w:"),
    ])
    .unwrap();
    assert_eq!(cache.key_cache_ttl, std::time::Duration::from_secs(5));
    assert_eq!(cache.key_cache_stale, std::time::Duration::ZERO);
    assert_eq!(cache.key_store_prefix, "w:");

    for bad in ["mysql://x", "file:keys.db", "postgres"] {
        assert!(
            matches!(
                config(&[("KEY_STORE", bad)]),
                Err(weather::ConfigError::KeyStore)
            ),
            "{bad}"
        );
    }
    for (var, value) in [("KEY_CACHE_TTL", "30s"), ("KEY_CACHE_STALE", "-1")] {
        match config(&[(var, value)]) {
            Err(e @ weather::ConfigError::Seconds(..)) => {
                assert!(e.to_string().starts_with(var), "{e}");
            }
            other => panic!("{var}={value}: {other:?}"),
        }
    }
    // A store this build cannot reach is refused, never replaced by memory.
    let postgres = config(&[("KEY_STORE", "postgres://u:hunter2@127.0.0.1:5432/db")]);
    let redis = config(&[("KEY_STORE", "redis://:hunter2@127.0.0.1:6379/2")]);
    if cfg!(feature = "postgres") {
        let c = postgres.unwrap();
        assert!(matches!(c.key_store, weather::KeyStoreConfig::Postgres(_)));
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
    } else {
        let e = postgres.unwrap_err();
        assert!(e.to_string().contains("--features postgres"), "{e}");
    }
    if cfg!(feature = "redis") {
        let c = redis.unwrap();
        assert!(matches!(c.key_store, weather::KeyStoreConfig::Redis(_)));
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
    } else {
        let e = redis.unwrap_err();
        assert!(e.to_string().contains("--features redis"), "{e}");
    }

    assert!(matches!(
        config(&[("ADMIN_API_KEY", "short")]),
        Err(weather::ConfigError::AdminKey)
    ));
    let admin = config(&[("ADMIN_API_KEY", "an-admin-key-of-some-length")]);
    if cfg!(feature = "admin") {
        let admin = admin.unwrap();
        assert!(admin.admin_api_key.is_some());
        assert!(!format!("{admin:?}").contains("an-admin-key"), "{admin:?}");
    } else {
        let e = admin.unwrap_err();
        assert!(e.to_string().contains("--features admin"), "{e}");
    }
}

#[tokio::test]
async fn without_admin_api_key_there_is_no_admin_api() {
    let server = Server::start(&[]).await;
    let key = server.demo_key().to_owned();
    for headers in [vec![], vec![("x-api-key", key.as_str())]] {
        let reply = server.get("/admin/keys?owner=demo", &headers).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    }
    assert!(!server.banner.contains("/admin"), "{}", server.banner);
    server.stop().await;
}

/// The admin key of the admin tests.
#[cfg(feature = "admin")]
const ADMIN_KEY: &str = "admin-key-for-the-tests-0001";

#[cfg(feature = "admin")]
#[tokio::test]
async fn the_admin_api_manages_the_keys_the_api_accepts() {
    let server = Server::start(&[
        ("ADMIN_API_KEY", ADMIN_KEY),
        ("JWT_SECRET", SECRET),
        ("RATE_LIMIT", "2/min"),
    ])
    .await;
    assert!(server.banner.contains("/admin/keys"), "{}", server.banner);
    assert!(!server.banner.contains(ADMIN_KEY), "{}", server.banner);
    let admin = [("x-api-key", ADMIN_KEY)];
    let bearer = format!("Bearer {ADMIN_KEY}");

    // Create: 201 with the plaintext once.
    let created = server
        .send_json(
            Method::POST,
            "/admin/keys",
            &admin,
            &json!({"owner": "acme", "scopes": ["weather:read"], "id": "acme-1", "quota": "100/min"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(weather::KEY_PREFIX), "{key}");
    let record = &created.json()["record"];
    let mut fields: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
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
        ]
    );
    assert_eq!(record["status"], "active");
    assert_eq!(record["quota"], "100/min");
    assert_eq!(record["tier"], Value::Null);
    assert_eq!(record["credits"], Value::Null);
    let duplicate = server
        .send_json(
            Method::POST,
            "/admin/keys",
            &admin,
            &json!({"owner": "acme", "scopes": [], "id": "acme-1"}),
        )
        .await;
    duplicate.assert_problem(StatusCode::CONFLICT);

    // The key works, with its own quota (not RATE_LIMIT's 2/min), and can mint a token.
    let used = server
        .get("/v1/current.json?q=Rome", &[("x-api-key", &key)])
        .await;
    used.assert_weather("Rome");
    assert!(
        used.header("ratelimit-policy")
            .is_some_and(|p| p.contains("q=100")),
        "{:?}",
        used.headers
    );
    let token = server.token_for(&key).await;
    server
        .get_bearer("/v1/me", &token)
        .await
        .status
        .is_success()
        .then_some(())
        .expect("the token works");

    // Read and list, with either way of sending the admin key; never the plaintext.
    let read = server
        .get("/admin/keys/acme-1", &[("authorization", &bearer)])
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert!(!read.body.contains(&key), "{}", read.body);
    let listed = server.get("/admin/keys?owner=acme", &admin).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.json()["keys"][0]["id"], "acme-1");
    server
        .get("/admin/keys/nobody", &admin)
        .await
        .assert_problem(StatusCode::NOT_FOUND);

    // Only the admin key opens the admin API: a weather key, its token, none, a wrong one.
    let demo = server.demo_key().to_owned();
    let token_bearer = format!("Bearer {token}");
    for headers in [
        vec![("x-api-key", demo.as_str())],
        vec![("x-api-key", key.as_str())],
        vec![("authorization", token_bearer.as_str())],
        vec![],
        vec![("x-api-key", "admin-key-for-the-tests-0002")],
    ] {
        let reply = server.get("/admin/keys?owner=acme", &headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(reply.header("ratelimit").is_none(), "{:?}", reply.headers);
    }
    // Not rate limited: RATE_LIMIT is 2/min.
    for _ in 0..5 {
        let reply = server.get("/admin/keys?owner=acme", &admin).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }

    // Bad input is a 400 problem.
    let bad = server
        .send_json(
            Method::POST,
            "/admin/keys",
            &admin,
            &json!({"owner": "acme", "scopes": [], "quota": "lots"}),
        )
        .await;
    bad.assert_problem(StatusCode::BAD_REQUEST);

    // Disable: the key and its token stop; enable: the key works again.
    let patched = server
        .send_json(
            Method::PATCH,
            "/admin/keys/acme-1",
            &admin,
            &json!({"status": "disabled"}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    server
        .get("/v1/me", &[("x-api-key", &key)])
        .await
        .assert_invalid_token();
    server
        .get_bearer("/v1/me", &token)
        .await
        .assert_invalid_token();
    let patched = server
        .send_json(
            Method::PATCH,
            "/admin/keys/acme-1",
            &admin,
            &json!({"status": "active"}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    server
        .get("/v1/current.json?q=Rome", &[("x-api-key", &key)])
        .await
        .assert_weather("Rome");

    // Rotate with no grace: the old key stops, the new one works.
    let rotated = server
        .send_json(
            Method::POST,
            "/admin/keys/acme-1/rotate",
            &admin,
            &json!({"grace_seconds": 0}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new_key = rotated.json()["key"].as_str().unwrap().to_owned();
    server
        .get("/v1/me", &[("x-api-key", &key)])
        .await
        .assert_invalid_token();
    server
        .get("/v1/current.json?q=Rome", &[("x-api-key", &new_key)])
        .await
        .assert_weather("Rome");

    // Usage, flushed every second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let usage = server.get("/admin/keys/acme-1/usage", &admin).await;
        assert_eq!(usage.status, StatusCode::OK, "{}", usage.body);
        let usage = usage.json();
        if usage["allowed"].as_u64() >= Some(4) {
            assert!(usage["last_used_at"].is_string(), "{usage}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{usage}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Revoke: the key and every token minted for it stop.
    let token = server.token_for(&new_key).await;
    let revoked = server.post("/admin/keys/acme-1/revoke", &admin).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(revoked.json()["status"], "revoked");
    server
        .get("/v1/me", &[("x-api-key", &new_key)])
        .await
        .assert_invalid_token();
    server
        .get_bearer("/v1/me", &token)
        .await
        .assert_invalid_token();

    // Delete.
    let deleted = server
        .request(Method::DELETE, "/admin/keys/acme-1", &admin)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    server
        .get("/admin/keys/acme-1", &admin)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    server.stop().await;
}

// --- issue 11: lists of limits, shadow mode, concurrency, owner-wide limits, /v1/quota, credits

/// One entry of a `RateLimit` header: the policy's name, `r` and `t`.
fn rate_limit_entries(reply: &Reply) -> Vec<(String, u64, u64)> {
    let value = reply
        .header("ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit header: {:?}", reply.headers));
    value
        .split(", ")
        .map(|entry| {
            let mut parts = entry.split(';');
            let name = parts.next().unwrap().trim_matches('"').to_owned();
            let mut field = |key: &str| {
                parts
                    .next()
                    .and_then(|p| p.strip_prefix(key))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{value}: no {key}"))
            };
            let r = field("r=");
            let t = field("t=");
            (name, r, t)
        })
        .collect()
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits, if need be, until the UTC-aligned window of `window` seconds has more than `margin`
/// seconds left, so that a fixed cap is not reset in the middle of a test.
async fn clear_of_boundary(window: u64, margin: u64) {
    let left = window - unix_now() % window;
    if left <= margin {
        tokio::time::sleep(std::time::Duration::from_secs(left + 1)).await;
    }
}

/// A 429 whose problem `detail` is `detail`.
fn assert_429_detail(reply: &Reply, detail: &str) {
    reply.assert_problem(StatusCode::TOO_MANY_REQUESTS);
    let body = reply.json();
    assert_eq!(body["type"], QUOTA_EXCEEDED, "{body}");
    assert_eq!(body["detail"], detail, "{body}");
    assert_eq!(reply.header(CACHE_CONTROL), Some("no-store"));
}

#[test]
fn limits_shadow_concurrency_and_limit_by_configuration() {
    let none = weather::Config::from_vars(|_| None).unwrap();
    assert!(!none.rate_limit_shadow);
    assert_eq!(none.concurrency_limit, None);
    assert_eq!(none.limit_by, keygate::LimitBy::Caller);

    // The list form: every item must admit.
    let list = config(&[("RATE_LIMIT", " 2/s;burst=2, 5/h;fixed ")]).unwrap();
    assert_eq!(list.rate_limit.len(), 2);
    assert_eq!(
        list.rate_limit,
        "2/s;burst=2, 5/h;fixed".parse::<keygate::Limits>().unwrap()
    );
    // A burst equal to the rate's limit is the default, and not written out.
    assert_eq!(list.rate_limit.to_string(), "2/s, 5/h;fixed");
    assert!(list.rate_limit[1].quota().is_fixed());
    // A malformed item is named, with its place in the list.
    for (bad, named) in [
        ("2/s;burst=2, 5/fortnight", r#"limit 2 ("5/fortnight")"#),
        ("2/s;burst=0, 5/h;fixed", r#"limit 1 ("2/s;burst=0")"#),
        (
            "2/s, 5/h;fixed, 1/250ms;fixed",
            r#"limit 3 ("1/250ms;fixed")"#,
        ),
        ("2/s,", r#"limit 2 ("")"#),
    ] {
        match config(&[("RATE_LIMIT", bad)]) {
            Err(e @ weather::ConfigError::RateLimit(..)) => {
                let message = e.to_string();
                assert!(message.starts_with("RATE_LIMIT="), "{message}");
                assert!(message.contains(named), "{bad}: {message}");
            }
            other => panic!("RATE_LIMIT={bad:?} accepted: {other:?}"),
        }
    }
    let nine = ["1/s"; 9].join(", ");
    assert!(matches!(
        config(&[("RATE_LIMIT", &nine)]),
        Err(weather::ConfigError::RateLimit(..))
    ));

    assert!(
        config(&[("RATE_LIMIT_SHADOW", "1")])
            .unwrap()
            .rate_limit_shadow
    );
    assert!(
        !config(&[("RATE_LIMIT_SHADOW", "0")])
            .unwrap()
            .rate_limit_shadow
    );
    assert!(
        !config(&[("RATE_LIMIT_SHADOW", " ")])
            .unwrap()
            .rate_limit_shadow
    );
    for bad in ["yes", "2", "on"] {
        match config(&[("RATE_LIMIT_SHADOW", bad)]) {
            Err(e @ weather::ConfigError::Shadow(_)) => {
                assert!(e.to_string().starts_with("RATE_LIMIT_SHADOW="), "{e}");
            }
            other => panic!("RATE_LIMIT_SHADOW={bad:?}: {other:?}"),
        }
    }

    assert_eq!(
        config(&[("CONCURRENCY_LIMIT", " 4 ")])
            .unwrap()
            .concurrency_limit,
        Some(4)
    );
    for bad in ["0", "-1", "many", "4294967296"] {
        match config(&[("CONCURRENCY_LIMIT", bad)]) {
            Err(e @ weather::ConfigError::Concurrency(_)) => {
                assert!(e.to_string().starts_with("CONCURRENCY_LIMIT="), "{e}");
            }
            other => panic!("CONCURRENCY_LIMIT={bad:?}: {other:?}"),
        }
    }

    assert_eq!(
        config(&[("LIMIT_BY", "owner")]).unwrap().limit_by,
        keygate::LimitBy::Owner
    );
    for bad in ["caller", "Owner", "tenant"] {
        match config(&[("LIMIT_BY", bad)]) {
            Err(e @ weather::ConfigError::LimitBy(_)) => {
                assert!(e.to_string().starts_with("LIMIT_BY="), "{e}");
            }
            other => panic!("LIMIT_BY={bad:?}: {other:?}"),
        }
    }
}

/// Set in the environment of a copy of this test binary that runs the example's `main`.
const CHILD: &str = "KEYGATE_WEATHER_EXAMPLE_CHILD";

/// Does nothing in a test run. In a copy of this binary started by
/// [`a_malformed_setting_stops_the_process_with_exit_1`] (with [`CHILD`] set), it is the
/// example: its `main`, and the process's exit status.
#[test]
fn the_example_in_a_child_process() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let code = weather::main();
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

/// Runs the example in a copy of this binary with these variables, `KEYGATE_ADDR=127.0.0.1:0`
/// and nothing of this process's configuration: its exit code, stdout and stderr.
async fn run_example(vars: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "the_example_in_a_child_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (var, _) in std::env::vars_os() {
        let config = var.to_str().is_some_and(|v| {
            v == "RUST_LOG"
                || [
                    "KEYGATE_",
                    "WEATHER_",
                    "REDIS_",
                    "KEY_",
                    "ADMIN_",
                    "JWT_",
                    "RATE_",
                    "CONCURRENCY_",
                    "LIMIT_",
                    "OIDC_",
                    "TRUSTED_",
                    "RESOURCE_",
                ]
                .iter()
                .any(|p| v.starts_with(p))
        });
        if config {
            cmd.env_remove(var);
        }
    }
    cmd.env(CHILD, "1")
        .env("KEYGATE_ADDR", "127.0.0.1:0")
        .envs(vars.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{vars:?}: still running after 20 s"))
        .expect("the child runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_malformed_setting_stops_the_process_with_exit_1() {
    let cases = [
        (
            "RATE_LIMIT",
            "2/s;burst=2, 5/fortnight",
            r#"limit 2 ("5/fortnight")"#,
        ),
        ("RATE_LIMIT_SHADOW", "yes", "RATE_LIMIT_SHADOW="),
        ("CONCURRENCY_LIMIT", "0", "CONCURRENCY_LIMIT="),
        ("LIMIT_BY", "tenant", "LIMIT_BY="),
    ];
    for (name, value, named) in cases {
        // Only the variable under test.
        let (code, stdout, stderr) = run_example(&[(name, value)]).await;
        assert_eq!(code, Some(1), "{name}={value}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {name}=")),
            "{name}={value}: {stderr}"
        );
        assert!(stderr.contains(named), "{name}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}={value}: {stderr}");
        assert!(!stdout.contains("listening on"), "{name}={value}: {stdout}");
    }
}

#[tokio::test]
async fn a_list_of_limits_reports_every_policy_and_a_denial_spends_nothing() {
    // The hourly cap must not reset during the test.
    clear_of_boundary(3600, 15).await;
    let server = Server::start(&[
        ("RATE_LIMIT", "2/s;burst=2, 5/h;fixed"),
        ("WEATHER_API_KEYS", "list-key-0001"),
    ])
    .await;
    assert!(
        server.banner.contains("rate limit: 2/s, 5/h;fixed per key"),
        "{}",
        server.banner
    );
    let key = [("x-api-key", "list-key-0001")];
    let hour_left = 3600 - unix_now() % 3600;
    for (second, hour) in [(1, 4), (0, 3)] {
        let ok = server.get("/v1/current.json?q=Accra", &key).await;
        ok.assert_weather("Accra");
        assert_eq!(
            ok.header("ratelimit-policy"),
            Some(r#""second";q=2;w=1, "hour";q=5;w=3600"#)
        );
        let entries = rate_limit_entries(&ok);
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!((entries[0].0.as_str(), entries[0].1), ("second", second));
        assert_eq!((entries[1].0.as_str(), entries[1].1), ("hour", hour));
        // A fixed cap resets at the UTC hour's end.
        assert!(
            entries[1].2.abs_diff(hour_left) <= 2,
            "{entries:?}, {hour_left} s to the hour"
        );
    }
    // The burst is spent: the "second" limit denies, and the hourly cap keeps its 3.
    let limited = server.get("/v1/current.json?q=Accra", &key).await;
    limited.assert_rate_limited();
    let detail = limited.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.starts_with(r#"Too many requests: the "second" limit is spent; retry in "#),
        "{detail}"
    );
    let retry: u64 = limited.header(RETRY_AFTER).unwrap().parse().unwrap();
    assert_eq!(retry, 1, "{detail}");
    let entries = rate_limit_entries(&limited);
    assert_eq!((entries[0].1, entries[1].1), (0, 3), "{entries:?}");

    // Spend the rest of the hour's five: the rate admits two more after a second, one more
    // after another.
    let hourly_left = |reply: &Reply| {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        rate_limit_entries(reply)[1].1
    };
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(hourly_left(&server.get("/v1/me", &key).await), 2);
    assert_eq!(hourly_left(&server.get("/v1/me", &key).await), 1);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(hourly_left(&server.get("/v1/me", &key).await), 0);
    // The cap is spent: denied until the hour ends, whatever the rate allows.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let capped = server.get("/v1/current.json?q=Accra", &key).await;
    capped.assert_rate_limited();
    let detail = capped.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.starts_with(r#"Too many requests: the "hour" limit is spent; retry in "#),
        "{detail}"
    );
    let retry: u64 = capped.header(RETRY_AFTER).unwrap().parse().unwrap();
    let hour_left = 3600 - unix_now() % 3600;
    assert!(
        retry.abs_diff(hour_left) <= 2,
        "Retry-After {retry}, {hour_left} s left"
    );
    let entries = rate_limit_entries(&capped);
    assert_eq!(entries[1].1, 0, "{entries:?}");
    assert!(entries[0].1 >= 1, "the rate was not spent: {entries:?}");
    server.stop().await;
}

#[tokio::test]
async fn shadow_mode_never_denies_and_reports_as_usual() {
    let server = Server::start(&[
        ("RATE_LIMIT", "2/min"),
        ("RATE_LIMIT_SHADOW", "1"),
        ("CONCURRENCY_LIMIT", "1"),
        ("WEATHER_API_KEYS", "shadow-key-0001"),
    ])
    .await;
    assert!(server.banner.contains("shadow"), "{}", server.banner);
    let key = [("x-api-key", "shadow-key-0001")];
    for remaining in [1, 0, 0, 0, 0] {
        let reply = server.get("/v1/current.json?q=Lima", &key).await;
        reply.assert_weather("Lima");
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some(r#""default";q=2;w=60"#)
        );
        let entries = rate_limit_entries(&reply);
        assert_eq!(entries[0].1, remaining, "{entries:?}");
        assert!(reply.header(RETRY_AFTER).is_none());
    }
    // Over the concurrency limit too: both served.
    let (a, b) = tokio::join!(
        server.get("/v1/slow?ms=400", &key),
        server.get("/v1/slow?ms=400", &key)
    );
    for reply in [a, b] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(reply.header("ratelimit").is_some());
    }
    server.stop().await;
}

#[tokio::test]
async fn slow_waits_behind_auth_scope_and_limits() {
    let server = Server::start(&[("RATE_LIMIT", "20/min")]).await;
    let key = server.demo_key().to_owned();
    let started = std::time::Instant::now();
    let reply = server.get("/v1/slow?ms=300", &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(reply.json(), json!({"slept_ms": 300}));
    assert!(reply.header("ratelimit").is_some(), "{:?}", reply.headers);
    for bad in ["ms=5001", "ms=abc", "ms=-1", "", "ms=99999999999999999999"] {
        let reply = server
            .get(&format!("/v1/slow?{bad}"), &[("x-api-key", &key)])
            .await;
        reply.assert_problem(StatusCode::BAD_REQUEST);
        assert!(reply.body.contains("Parameter ms"), "{bad}: {}", reply.body);
    }
    let reply = server
        .get("/v1/slow?ms=5000&q=x", &[("x-api-key", "nobody-0001")])
        .await;
    reply.assert_invalid_token();
    let no_scope = ApiKey::new("a-slow-key-without-the-scope");
    server
        .keys
        .manager
        .insert(no_scope.digest(), KeyRecord::new("no-scope", "test"))
        .await
        .unwrap();
    server
        .get("/v1/slow?ms=0", &[("x-api-key", no_scope.expose_secret())])
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn a_concurrency_limit_of_one_turns_the_second_request_in_flight_away() {
    let server = Server::start(&[
        ("CONCURRENCY_LIMIT", "1"),
        ("WEATHER_API_KEYS", "busy-key-0001,other-key-0002"),
    ])
    .await;
    assert!(
        server
            .banner
            .contains("concurrency limit: at most 1 request(s) in flight per key"),
        "{}",
        server.banner
    );
    let key = [("x-api-key", "busy-key-0001")];
    let (a, b) = tokio::join!(
        server.get("/v1/slow?ms=800", &key),
        server.get("/v1/slow?ms=800", &key)
    );
    let (ok, limited): (Vec<_>, Vec<_>) =
        [a, b].into_iter().partition(|r| r.status == StatusCode::OK);
    assert_eq!((ok.len(), limited.len()), (1, 1), "one 200 and one 429");
    let limited = &limited[0];
    assert_429_detail(limited, "Too many requests in flight: at most 1 at once.");
    assert_eq!(limited.header(RETRY_AFTER), Some("1"));
    assert_eq!(ok[0].json(), json!({"slept_ms": 800}));

    // Another caller is counted apart, even while this one has a request in flight.
    let busy = server.get("/v1/slow?ms=600", &key);
    let other = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        server
            .get(
                "/v1/current.json?q=Baku",
                &[("x-api-key", "other-key-0002")],
            )
            .await
    };
    let (busy, other) = tokio::join!(busy, other);
    assert_eq!(busy.status, StatusCode::OK, "{}", busy.body);
    other.assert_weather("Baku");

    // A finished request frees its place.
    for _ in 0..3 {
        let reply = server.get("/v1/slow?ms=0", &key).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    server.stop().await;
}

#[tokio::test]
async fn limit_by_owner_makes_the_keys_of_one_owner_share_each_limit() {
    let server = Server::start(&[
        ("RATE_LIMIT", "3/min"),
        ("LIMIT_BY", "owner"),
        ("WEATHER_API_KEYS", "owned-key-0001,owned-key-0002"),
    ])
    .await;
    assert!(
        server.banner.contains("rate limit: 3/min per owner"),
        "{}",
        server.banner
    );
    // Both listed keys belong to one owner; a key of another owner has its own limit.
    let stranger = ApiKey::new("another-owners-key-0003");
    server
        .keys
        .manager
        .insert(
            stranger.digest(),
            KeyRecord::new("stranger", "someone-else").with_scopes([weather::SCOPE]),
        )
        .await
        .unwrap();
    let one = [("x-api-key", "owned-key-0001")];
    let two = [("x-api-key", "owned-key-0002")];
    for (headers, remaining) in [(&one, 2), (&two, 1), (&one, 0)] {
        let reply = server.get("/v1/current.json?q=Riga", headers).await;
        reply.assert_weather("Riga");
        assert_eq!(rate_limit_entries(&reply)[0].1, remaining);
    }
    server
        .get("/v1/current.json?q=Riga", &two)
        .await
        .assert_rate_limited();
    server.get("/v1/me", &one).await.assert_rate_limited();
    // What /v1/quota shows is the owner's too.
    let quota = server.get("/v1/quota", &two).await;
    assert_eq!(quota.status, StatusCode::OK, "{}", quota.body);
    assert_eq!(
        quota.json()["policies"][0]["remaining"],
        0,
        "{}",
        quota.body
    );
    let other = server
        .get(
            "/v1/current.json?q=Riga",
            &[("x-api-key", stranger.expose_secret())],
        )
        .await;
    other.assert_weather("Riga");
    assert_eq!(rate_limit_entries(&other)[0].1, 2);
    server.stop().await;
}

#[tokio::test]
async fn quota_shows_every_policy_and_the_credits_and_costs_nothing() {
    clear_of_boundary(86_400, 15).await;
    let server = Server::start(&[
        ("RATE_LIMIT", "3/min, 100/d;fixed;name=daily"),
        ("JWT_SECRET", SECRET),
    ])
    .await;
    let key = server.demo_key().to_owned();
    let headers = [("x-api-key", key.as_str())];
    // Read as often as one likes: nothing is spent, nothing is limited.
    for _ in 0..6 {
        let reply = server.get("/v1/quota", &headers).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.header(CONTENT_TYPE), Some("application/json"));
        assert_eq!(reply.header(CACHE_CONTROL), Some("no-store"));
        assert!(reply.header("ratelimit").is_none(), "{:?}", reply.headers);
        let body = reply.json();
        let mut fields: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["credits", "policies"], "{body}");
        assert_eq!(body["credits"], Value::Null, "{body}");
        let minute = &body["policies"][0];
        assert_eq!(
            *minute,
            json!({"name": "minute", "limit": 3, "window": 60, "remaining": 3, "reset": 0}),
            "{body}"
        );
        let daily = &body["policies"][1];
        let mut fields: Vec<&str> = daily
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["limit", "name", "remaining", "reset", "window"]);
        assert_eq!(daily["name"], "daily");
        assert_eq!(daily["limit"], 100);
        assert_eq!(daily["window"], 86_400);
        assert_eq!(daily["remaining"], 100);
        let reset = daily["reset"].as_u64().expect("whole seconds");
        let day_left = 86_400 - unix_now() % 86_400;
        assert!(reset.abs_diff(day_left) <= 2, "{reset} vs {day_left}");
        assert_eq!(body["policies"].as_array().unwrap().len(), 2);
    }
    // A request spends one of each, and the quota says so.
    server
        .get("/v1/current.json?q=Kyiv", &headers)
        .await
        .assert_weather("Kyiv");
    let body = server.get("/v1/quota", &headers).await.json();
    assert_eq!(body["policies"][0]["remaining"], 2, "{body}");
    let reset = body["policies"][0]["reset"].as_u64().unwrap();
    assert!((1..=20).contains(&reset), "{body}");
    assert_eq!(body["policies"][1]["remaining"], 99, "{body}");
    // A token reads its key's quota; the spent limit is the same.
    let token = server.token_for(&key).await;
    let body = server.get_bearer("/v1/quota", &token).await.json();
    assert_eq!(body["policies"][0]["remaining"], 1, "{body}");
    assert_eq!(body["policies"][1]["remaining"], 98, "{body}");
    // A spent limit does not stop the quota from being read.
    server.get("/v1/me", &headers).await;
    server.get("/v1/me", &headers).await.assert_rate_limited();
    let reply = server.get("/v1/quota", &headers).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["policies"][0]["remaining"], 0);
    // It needs a credential like every other route.
    let anonymous = server.get("/v1/quota", &[]).await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED);
    server
        .get("/v1/quota", &[("x-api-key", "nobody-0001")])
        .await
        .assert_invalid_token();
    server.stop().await;
}

#[tokio::test]
async fn a_key_whose_credits_reach_zero_is_429() {
    use keygate::key::{Credits, Refill};

    let server = Server::start(&[("RATE_LIMIT", "100/s")]).await;
    let metered = ApiKey::new("a-key-with-two-credits");
    let refilled = ApiKey::new("a-key-with-a-refill");
    for (key, id, credits) in [
        (&metered, "metered", Credits::new(2)),
        (
            &refilled,
            "refilled",
            Credits::new(1).with_refill(Refill::new(1, std::time::Duration::from_secs(60))),
        ),
    ] {
        server
            .keys
            .manager
            .insert(
                key.digest(),
                KeyRecord::new(id, "acme")
                    .with_scopes([weather::SCOPE])
                    .with_credits(credits),
            )
            .await
            .unwrap();
    }
    let headers = [("x-api-key", metered.expose_secret())];
    let credits = |body: Value| body["credits"].clone();
    // Reading the quota spends no credit.
    for _ in 0..3 {
        let reply = server.get("/v1/quota", &headers).await;
        assert_eq!(credits(reply.json()), 2, "{}", reply.body);
    }
    for left in [1, 0] {
        server
            .get("/v1/current.json?q=Doha", &headers)
            .await
            .assert_weather("Doha");
        let reply = server.get("/v1/quota", &headers).await;
        assert_eq!(credits(reply.json()), left, "{}", reply.body);
    }
    // Used up: 429, no Retry-After (nothing refills them), and never below zero.
    for _ in 0..2 {
        let reply = server.get("/v1/current.json?q=Doha", &headers).await;
        assert_429_detail(&reply, "The key's credits are used up.");
        assert!(reply.header(RETRY_AFTER).is_none(), "{:?}", reply.headers);
    }
    assert_eq!(credits(server.get("/v1/quota", &headers).await.json()), 0);
    // A key whose credits are refilled says when.
    let headers = [("x-api-key", refilled.expose_secret())];
    server
        .get("/v1/current.json?q=Doha", &headers)
        .await
        .assert_weather("Doha");
    let reply = server.get("/v1/current.json?q=Doha", &headers).await;
    reply.assert_problem(StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = reply.header(RETRY_AFTER).unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    assert_eq!(
        reply.json()["detail"],
        format!("The key's credits are used up; they are refilled in {retry} s.")
    );
    // A key without a budget is not limited by credits.
    let demo = server.demo_key().to_owned();
    for _ in 0..3 {
        server
            .get("/v1/current.json?q=Doha", &[("x-api-key", &demo)])
            .await
            .assert_weather("Doha");
    }
    server.stop().await;
}

/// Registers `key` as the record `id` of `owner`, with the weather scope, shaped by `record`.
async fn insert_key(
    server: &Server,
    key: &ApiKey,
    id: &str,
    owner: &str,
    record: impl FnOnce(KeyRecord) -> KeyRecord,
) {
    server
        .keys
        .manager
        .insert(
            key.digest(),
            record(KeyRecord::new(id, owner).with_scopes([weather::SCOPE])),
        )
        .await
        .unwrap();
}

/// The `credits` of a `/v1/quota` reply.
fn quota_credits(reply: &Reply) -> Value {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.json()["credits"].clone()
}

#[tokio::test]
async fn a_token_minted_for_a_key_with_credits_spends_the_keys_credits() {
    use keygate::key::Credits;

    let server = Server::start(&[("RATE_LIMIT", "100/s")]).await;
    let metered = ApiKey::new("a-key-with-four-credits");
    insert_key(&server, &metered, "metered", "acme", |r| {
        r.with_credits(Credits::new(4))
    })
    .await;
    let key = [("x-api-key", metered.expose_secret())];
    // Minting is a request of the key, so it spends one; the token says it spends credits.
    let token = server.token_for(metered.expose_secret()).await;
    let minted = claims(&token);
    assert_eq!(minted[weather::CREDITS_CLAIM], true, "{minted}");
    assert_eq!(minted[weather::OWNER_CLAIM], "acme", "{minted}");
    assert_eq!(quota_credits(&server.get("/v1/quota", &key).await), 3);
    // The token reads its key's credits, and reading spends none.
    for _ in 0..3 {
        assert_eq!(
            quota_credits(&server.get_bearer("/v1/quota", &token).await),
            3
        );
    }
    // Each request with the token spends one of the key's: the key's count goes down.
    for left in [2, 1] {
        server
            .get_bearer("/v1/current.json?q=Accra", &token)
            .await
            .assert_weather("Accra");
        assert_eq!(quota_credits(&server.get("/v1/quota", &key).await), left);
    }
    // The key spends from the same count.
    server
        .get("/v1/current.json?q=Accra", &key)
        .await
        .assert_weather("Accra");
    assert_eq!(
        quota_credits(&server.get_bearer("/v1/quota", &token).await),
        0
    );
    // Used up: 429 for the token, for the key, and for minting another token; never below zero.
    let replies = [
        server.get_bearer("/v1/current.json?q=Accra", &token).await,
        server.get_bearer("/v1/me", &token).await,
        server.get("/v1/current.json?q=Accra", &key).await,
        server.post("/v1/token", &key).await,
    ];
    for reply in &replies {
        assert_429_detail(reply, "The key's credits are used up.");
        assert!(reply.header(RETRY_AFTER).is_none(), "{:?}", reply.headers);
    }
    assert_eq!(quota_credits(&server.get("/v1/quota", &key).await), 0);
    // A token of a key without a budget carries no marker and is not limited by credits.
    let demo = server.demo_key().to_owned();
    let free = server.token_for(&demo).await;
    let free_claims = claims(&free);
    assert!(
        free_claims.get(weather::CREDITS_CLAIM).is_none(),
        "{free_claims}"
    );
    for _ in 0..3 {
        server
            .get_bearer("/v1/current.json?q=Accra", &free)
            .await
            .assert_weather("Accra");
    }
    assert_eq!(
        quota_credits(&server.get_bearer("/v1/quota", &free).await),
        Value::Null
    );
    server.stop().await;
}

#[tokio::test]
async fn limit_by_owner_counts_a_minted_token_with_its_keys_owner() {
    let server = Server::start(&[("RATE_LIMIT", "4/min"), ("LIMIT_BY", "owner")]).await;
    let (one, two) = (
        ApiKey::new("acme-key-one-0001"),
        ApiKey::new("acme-key-two-0002"),
    );
    let stranger = ApiKey::new("globex-key-0003");
    insert_key(&server, &one, "acme-1", "acme", |r| r).await;
    insert_key(&server, &two, "acme-2", "acme", |r| r).await;
    insert_key(&server, &stranger, "globex-1", "globex", |r| r).await;
    let (one, two) = (
        [("x-api-key", one.expose_secret())],
        [("x-api-key", two.expose_secret())],
    );
    // 1: minting, for the first key.
    let token = server.token_for(one[0].1).await;
    let minted = claims(&token);
    assert_eq!(minted["sub"], "acme-1", "{minted}");
    assert_eq!(minted[weather::OWNER_CLAIM], "acme", "{minted}");
    // 2-4: the token and the other key of the owner spend the owner's one budget.
    let bearer = format!("Bearer {token}");
    let by_token = [("authorization", bearer.as_str())];
    for (headers, remaining) in [(&by_token, 2), (&two, 1), (&by_token, 0)] {
        let reply = server.get("/v1/current.json?q=Riga", headers).await;
        reply.assert_weather("Riga");
        let (name, left, _) = &rate_limit_entries(&reply)[0];
        assert_eq!((name.as_str(), *left), ("default", remaining));
    }
    // Spent for all three, and for minting another token.
    for headers in [&by_token, &one, &two] {
        server
            .get("/v1/current.json?q=Riga", headers)
            .await
            .assert_rate_limited();
    }
    server.post("/v1/token", &two).await.assert_rate_limited();
    let quota = server.get_bearer("/v1/quota", &token).await;
    assert_eq!(quota.status, StatusCode::OK, "{}", quota.body);
    assert_eq!(
        quota.json()["policies"][0]["remaining"],
        0,
        "{}",
        quota.body
    );
    // Another owner's key and its token have a budget of their own.
    let theirs = [("x-api-key", stranger.expose_secret())];
    let token = server.token_for(theirs[0].1).await;
    assert_eq!(claims(&token)[weather::OWNER_CLAIM], "globex");
    let reply = server.get_bearer("/v1/current.json?q=Riga", &token).await;
    reply.assert_weather("Riga");
    assert_eq!(rate_limit_entries(&reply)[0].1, 2, "{:?}", reply.headers);
    let reply = server.get("/v1/current.json?q=Riga", &theirs).await;
    reply.assert_weather("Riga");
    assert_eq!(rate_limit_entries(&reply)[0].1, 1, "{:?}", reply.headers);
    server.stop().await;
}

#[tokio::test]
async fn a_token_minted_for_a_key_with_a_tier_carries_it() {
    let server = Server::start(&[("RATE_LIMIT", "5/min")]).await;
    let pro = ApiKey::new("a-key-of-the-pro-tier");
    insert_key(&server, &pro, "pro-1", "acme", |r| r.with_tier("pro")).await;
    let token = server.token_for(pro.expose_secret()).await;
    let minted = claims(&token);
    assert_eq!(minted[weather::TIER_CLAIM], "pro", "{minted}");
    // The example maps no tier to limits: the token, like its key, is limited by RATE_LIMIT,
    // and shares the key's count.
    let quota = server.get_bearer("/v1/quota", &token).await;
    assert_eq!(quota.status, StatusCode::OK, "{}", quota.body);
    let policies = quota.json()["policies"].clone();
    assert_eq!(policies.as_array().map(Vec::len), Some(1), "{policies}");
    assert_eq!(policies[0]["name"], "default", "{policies}");
    assert_eq!(policies[0]["limit"], 5, "{policies}");
    assert_eq!(policies[0]["remaining"], 4, "{policies}");
    let reply = server.get_bearer("/v1/me", &token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(r#""default";q=5;w=60"#)
    );
    assert_eq!(rate_limit_entries(&reply)[0].1, 3);
    // A key without a tier mints tokens without the claim.
    let demo = server.demo_key().to_owned();
    let plain = claims(&server.token_for(&demo).await);
    assert!(plain.get(weather::TIER_CLAIM).is_none(), "{plain}");
    server.stop().await;
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn the_admin_api_sets_lists_of_limits_tiers_and_credits() {
    clear_of_boundary(3600, 15).await;
    let server = Server::start(&[("ADMIN_API_KEY", ADMIN_KEY), ("RATE_LIMIT", "2/min")]).await;
    let admin = [("x-api-key", ADMIN_KEY)];
    let created = server
        .send_json(
            Method::POST,
            "/admin/keys",
            &admin,
            &json!({
                "owner": "acme", "scopes": ["weather:read"], "id": "acme-2",
                "quota": "2/s;burst=2, 5/h;fixed", "tier": "pro",
                "credits": {"remaining": 3, "refill": {"amount": 3, "every": "1d"}},
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let record = created.json()["record"].clone();
    assert_eq!(record["quota"], "2/s, 5/h;fixed", "{record}");
    assert_eq!(record["tier"], "pro", "{record}");
    assert_eq!(
        record["credits"],
        json!({"remaining": 3, "refill": {"amount": 3, "every": "1d"}}),
        "{record}"
    );
    let headers = [("x-api-key", key.as_str())];

    // The key's own list replaces RATE_LIMIT; a request spends a credit.
    let used = server.get("/v1/current.json?q=Oslo", &headers).await;
    used.assert_weather("Oslo");
    assert_eq!(
        used.header("ratelimit-policy"),
        Some(r#""second";q=2;w=1, "hour";q=5;w=3600"#)
    );
    let quota = server.get("/v1/quota", &headers).await.json();
    assert_eq!(quota["credits"], 2, "{quota}");
    assert_eq!(quota["policies"][1]["remaining"], 4, "{quota}");
    let read = server.get("/admin/keys/acme-2", &admin).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.json()["credits"]["remaining"], 2, "{}", read.body);

    // PATCH: another list, no tier, one credit without a refill.
    let patched = server
        .send_json(
            Method::PATCH,
            "/admin/keys/acme-2",
            &admin,
            &json!({"quota": "10/min;name=minutely, 50/d;fixed", "tier": null,
                    "credits": {"remaining": 1}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let record = patched.json();
    assert_eq!(
        record["quota"], "10/min;name=minutely, 50/d;fixed",
        "{record}"
    );
    assert_eq!(record["tier"], Value::Null, "{record}");
    assert_eq!(
        record["credits"],
        json!({"remaining": 1, "refill": null}),
        "{record}"
    );
    let used = server.get("/v1/me", &headers).await;
    assert_eq!(used.status, StatusCode::OK, "{}", used.body);
    assert_eq!(
        used.header("ratelimit-policy"),
        Some(r#""minutely";q=10;w=60, "day";q=50;w=86400"#)
    );
    let spent = server.get("/v1/me", &headers).await;
    assert_429_detail(&spent, "The key's credits are used up.");
    assert!(spent.header(RETRY_AFTER).is_none());
    let read = server.get("/admin/keys/acme-2", &admin).await.json();
    assert_eq!(read["credits"]["remaining"], 0, "{read}");

    // New credits through PATCH work at once; `null` removes the budget.
    let patched = server
        .send_json(
            Method::PATCH,
            "/admin/keys/acme-2",
            &admin,
            &json!({"credits": {"remaining": 5}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    server
        .get("/v1/current.json?q=Oslo", &headers)
        .await
        .assert_weather("Oslo");
    assert_eq!(server.get("/v1/quota", &headers).await.json()["credits"], 4);
    let patched = server
        .send_json(
            Method::PATCH,
            "/admin/keys/acme-2",
            &admin,
            &json!({"credits": null}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.json()["credits"], Value::Null);
    assert_eq!(
        server.get("/v1/quota", &headers).await.json()["credits"],
        Value::Null
    );

    // A malformed item of a list is named in the 400.
    let bad = server
        .send_json(
            Method::POST,
            "/admin/keys",
            &admin,
            &json!({"owner": "acme", "scopes": [], "quota": "2/s, 5/fortnight"}),
        )
        .await;
    bad.assert_problem(StatusCode::BAD_REQUEST);
    assert!(
        bad.json()["detail"]
            .as_str()
            .unwrap()
            .contains(r#"limit 2 ("5/fortnight")"#),
        "{}",
        bad.body
    );
    server.stop().await;
}

/// Deletes the Redis keys under `prefix` (at most 100 000), so that a test leaves nothing behind.
#[cfg(feature = "redis")]
async fn delete_redis_keys(url: &str, prefix: &str) {
    async fn delete(url: &str, prefix: &str) -> redis::RedisResult<()> {
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        let mut cursor = 0u64;
        for _ in 0..100 {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !batch.is_empty() {
                let _: u64 = redis::cmd("DEL").arg(&batch).query_async(&mut conn).await?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(())
    }
    if let Err(e) = delete(url, prefix).await {
        eprintln!("warning: deleting the Redis keys under {prefix}: {e}");
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
#[ignore = "needs KEYGATE_TEST_REDIS_URL"]
async fn two_instances_on_one_redis_key_store_spend_one_count_of_credits() {
    use keygate::key::Credits;

    let url = services::redis_url();
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    let base = format!("keygate-test:weather:{:016x}:", u64::from_le_bytes(r));
    let (keys_prefix, limits_prefix) = (format!("{base}keys:"), format!("{base}rl:"));
    let vars = [
        ("KEY_STORE", url.as_str()),
        ("KEY_STORE_PREFIX", keys_prefix.as_str()),
        ("REDIS_URL", url.as_str()),
        ("REDIS_PREFIX", limits_prefix.as_str()),
        ("RATE_LIMIT", "100/s"),
    ];
    let a = Server::start(&vars).await;
    let b = Server::start(&vars).await;
    let metered = ApiKey::new("a-shared-key-with-three-credits");
    a.keys
        .manager
        .insert(
            metered.digest(),
            KeyRecord::new("metered", "acme")
                .with_scopes([weather::SCOPE])
                .with_credits(Credits::new(3)),
        )
        .await
        .unwrap();
    let headers = [("x-api-key", metered.expose_secret())];
    let quota = b.get("/v1/quota", &headers).await;
    assert_eq!(quota.json()["credits"], 3, "{}", quota.body);
    // Three admitted in all, whichever instance serves them; then 429 on both.
    for server in [&a, &b, &a] {
        server
            .get("/v1/current.json?q=Lima", &headers)
            .await
            .assert_weather("Lima");
    }
    for server in [&b, &a] {
        let reply = server.get("/v1/current.json?q=Lima", &headers).await;
        assert_429_detail(&reply, "The key's credits are used up.");
    }
    for server in [&a, &b] {
        let quota = server.get("/v1/quota", &headers).await;
        assert_eq!(quota.json()["credits"], 0, "{}", quota.body);
    }
    a.stop().await;
    b.stop().await;
    delete_redis_keys(&url, &base).await;
}

// --- issue 12: OpenID providers, typed tokens, scope expressions, IP allowlists, metadata

/// A token's JOSE header, decoded without checking anything.
fn jose_header(token: &str) -> Value {
    let header = token.split('.').next().expect("a compact JWS");
    let bytes = URL_SAFE_NO_PAD.decode(header).expect("base64url");
    serde_json::from_slice(&bytes).expect("a JSON header")
}

/// The challenge of a 403 for a caller that lacks the scopes a route asks for.
fn insufficient_scope(scope: &str) -> String {
    format!(r#"Bearer realm="weather", error="insufficient_scope", scope="{scope}""#)
}

/// The detail of a 403 of `/v1/alerts.json`, which needs any of its scopes.
#[cfg(any(feature = "admin", feature = "jwks"))]
const ALERTS_DETAIL: &str =
    r#"The credential needs any of the scopes "alerts:read" or "weather:admin"."#;

/// The detail of a 403 for an address a key's allowlist does not name.
#[cfg(feature = "admin")]
const ADDRESS_DETAIL: &str = "The client's address is not allowed for this key.";

impl Reply {
    /// A 403 `insufficient_scope` whose challenge names `scope` and whose detail is `detail`.
    #[cfg(any(feature = "admin", feature = "jwks"))]
    #[track_caller]
    fn assert_insufficient_scope(&self, scope: &str, detail: &str) {
        self.assert_problem(StatusCode::FORBIDDEN);
        assert_eq!(
            self.header(WWW_AUTHENTICATE),
            Some(insufficient_scope(scope).as_str()),
            "{}",
            self.body
        );
        assert_eq!(self.json()["detail"], detail, "{}", self.body);
    }

    /// A 403 for a key used from an address its allowlist does not name: no challenge (another
    /// credential would not help), and never the key.
    #[cfg(feature = "admin")]
    #[track_caller]
    fn assert_address_not_allowed(&self, key: &str) {
        self.assert_problem(StatusCode::FORBIDDEN);
        assert_eq!(self.json()["detail"], ADDRESS_DETAIL, "{}", self.body);
        assert!(
            self.header(WWW_AUTHENTICATE).is_none(),
            "{:?}",
            self.headers
        );
        assert!(!self.body.contains(key), "{}", self.body);
        assert!(!self.body.contains(&key[weather::KEY_PREFIX.len()..]));
    }

    /// A 200 of `/v1/alerts.json` for `city`.
    #[cfg(any(feature = "admin", feature = "jwks"))]
    #[track_caller]
    fn assert_alerts(&self, city: &str) {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        assert_eq!(self.header(CONTENT_TYPE), Some("application/json"));
        let body = self.json();
        assert_eq!(body["location"]["name"], city, "{body}");
        assert!(body["alerts"]["alert"].is_array(), "{body}");
    }

    /// A 200 of `/v1/forecast.json` for `city`: the current weather and three days.
    #[cfg(any(feature = "admin", feature = "jwks"))]
    #[track_caller]
    fn assert_forecast(&self, city: &str) {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        assert_eq!(self.header(CONTENT_TYPE), Some("application/json"));
        let body = self.json();
        assert_eq!(body["location"]["name"], city, "{body}");
        assert!(body["current"]["temp_c"].is_f64(), "{body}");
        let days = body["forecast"]["forecastday"]
            .as_array()
            .unwrap_or_else(|| panic!("no forecast.forecastday: {body}"));
        assert_eq!(days.len(), 3, "{body}");
        for (i, day) in days.iter().enumerate() {
            assert_eq!(day["day_offset"], i + 1, "{body}");
            let (max, min) = (
                day["day"]["maxtemp_c"].as_f64().expect("a maxtemp_c"),
                day["day"]["mintemp_c"].as_f64().expect("a mintemp_c"),
            );
            assert!(min < max, "{body}");
            assert!(day["day"]["condition"]["text"].is_string(), "{body}");
        }
    }
}

// --- OIDC_ISSUERS

/// Claims of a token of an OpenID provider, valid for ten minutes: `iss`, `sub`, `aud` and the
/// scopes, a string in `scope` or an array in `scp`.
#[cfg(feature = "jwks")]
fn oidc_claims(iss: &str, sub: &str, aud: &str, scopes: Value) -> Value {
    let mut c = json!({ "iss": iss, "sub": sub, "aud": aud, "iat": now(), "exp": now() + 600 });
    let claim = if scopes.is_array() { "scp" } else { "scope" };
    c[claim] = scopes;
    c
}

/// The variables that accept the tokens of `issuers` for the audience `weather`, over http.
#[cfg(feature = "jwks")]
fn oidc_vars(issuers: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("OIDC_ISSUERS", issuers),
        ("OIDC_AUDIENCE", "weather"),
        ("OIDC_ALLOW_HTTP", "1"),
    ]
}

/// `vars` and `more`.
#[cfg(feature = "jwks")]
fn with<'a>(vars: &[(&'a str, &'a str)], more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    [vars, more].concat()
}

/// Provider A (the RSA key, an issuer with a path) and provider B (the EC key, an issuer with a
/// trailing slash), each serving its document and its keys at `/jwks`.
#[cfg(feature = "jwks")]
struct Providers {
    a: Provider,
    a_iss: String,
    b: Provider,
    b_iss: String,
}

#[cfg(feature = "jwks")]
impl Providers {
    async fn start() -> Self {
        let (a, a_iss) = Provider::serving("/realms/a", &[&a1()]).await;
        let (b, b_iss) = Provider::serving("/", &[&b1()]).await;
        Self { a, a_iss, b, b_iss }
    }

    /// Both, as `OIDC_ISSUERS` lists them.
    fn issuers(&self) -> String {
        format!("{} {}", self.a_iss, self.b_iss)
    }
}

#[cfg(feature = "jwks")]
#[tokio::test]
async fn tokens_of_two_oidc_issuers_work_beside_keys_and_minted_tokens() {
    use keygate::jwt::Algorithm;

    let p = Providers::start().await;
    let issuers = p.issuers();
    let server = Server::start(&with(
        &oidc_vars(&issuers),
        &[("JWT_SECRET", SECRET), ("RATE_LIMIT", "100/s")],
    ))
    .await;
    // Both were discovered at start: each document (under the issuer's path), then its keys.
    assert_eq!(
        p.a.document_paths(),
        ["/realms/a/.well-known/openid-configuration"]
    );
    assert_eq!(p.b.document_paths(), ["/.well-known/openid-configuration"]);
    assert_eq!((p.a.jwks_hits("/jwks"), p.b.jwks_hits("/jwks")), (1, 1));

    // A token of each: A's made byte for byte (RS256), B's by TokenIssuer (ES256).
    let alice = a1().craft(
        None,
        &oidc_claims(&p.a_iss, "alice", "weather", json!("weather:read")),
    );
    let bob = b1()
        .issuer(&p.b_iss, "weather")
        .issue("bob", [weather::SCOPE])
        .unwrap()
        .access_token;
    for (token, id) in [(&alice, "alice"), (&bob, "bob")] {
        server
            .get_bearer("/v1/current.json?q=London", token)
            .await
            .assert_weather("London");
        let me = server.get_bearer("/v1/me", token).await;
        assert_eq!(me.status, StatusCode::OK, "{id}: {}", me.body);
        let me = me.json();
        assert_eq!(me["id"], id, "{me}");
        assert_eq!(me["kind"], "jwt", "{me}");
        assert_eq!(me["scopes"], json!(["weather:read"]), "{me}");
        // Only an API key mints tokens.
        let bearer = format!("Bearer {token}");
        server
            .post("/v1/token", &[("authorization", &bearer)])
            .await
            .assert_problem(StatusCode::FORBIDDEN);
    }

    // Scopes in an `scp` array, and the routes' scope expressions over them.
    let carol = a1().craft(
        None,
        &oidc_claims(
            &p.a_iss,
            "carol",
            "weather",
            json!(["weather:read", "alerts:read"]),
        ),
    );
    server
        .get_bearer("/v1/current.json?q=London", &carol)
        .await
        .assert_weather("London");
    let me = server.get_bearer("/v1/me", &carol).await.json();
    let mut scopes: Vec<&str> = me["scopes"]
        .as_array()
        .unwrap_or_else(|| panic!("{me}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    scopes.sort_unstable();
    assert_eq!(scopes, ["alerts:read", "weather:read"], "{me}");
    server
        .get_bearer("/v1/alerts.json?q=London", &carol)
        .await
        .assert_alerts("London");
    server
        .get_bearer("/v1/forecast.json?q=London", &carol)
        .await
        .assert_insufficient_scope(
            "weather:read forecast:read",
            r#"The credential lacks the scope "forecast:read"."#,
        );
    let dave = b1().craft(
        None,
        &oidc_claims(
            &p.b_iss,
            "dave",
            "weather",
            json!("weather:read forecast:read"),
        ),
    );
    server
        .get_bearer("/v1/forecast.json?q=London", &dave)
        .await
        .assert_forecast("London");
    server
        .get_bearer("/v1/alerts.json?q=London", &dave)
        .await
        .assert_insufficient_scope("alerts:read weather:admin", ALERTS_DETAIL);

    // Refused with 401 invalid_token, the token never echoed.
    let read = || json!("weather:read");
    let mut no_aud = oidc_claims(&p.a_iss, "alice", "weather", read());
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut no_iss = oidc_claims(&p.a_iss, "alice", "weather", read());
    no_iss.as_object_mut().unwrap().remove("iss");
    let refused = [
        (
            "another audience, at A",
            a1().craft(None, &oidc_claims(&p.a_iss, "alice", "billing", read())),
        ),
        (
            "another audience, at B",
            b1().issuer(&p.b_iss, "billing")
                .issue("bob", [weather::SCOPE])
                .unwrap()
                .access_token,
        ),
        ("no audience", a1().craft(None, &no_aud)),
        (
            "A's iss, B's key and kid",
            b1().craft(None, &oidc_claims(&p.a_iss, "alice", "weather", read())),
        ),
        (
            "A's iss and kid, B's key",
            b1().posing_as("a-1", Algorithm::ES256)
                .craft(None, &oidc_claims(&p.a_iss, "alice", "weather", read())),
        ),
        (
            "A's iss and kid, the attacker's key",
            attacker().craft(None, &oidc_claims(&p.a_iss, "alice", "weather", read())),
        ),
        (
            "B's iss and kid, A's key",
            a1().posing_as("b-1", Algorithm::RS256)
                .craft(None, &oidc_claims(&p.b_iss, "bob", "weather", read())),
        ),
        (
            "A's iss, the service's own secret",
            TokenIssuer::hmac(SECRET.as_bytes())
                .issuer(p.a_iss.clone())
                .audience("weather")
                .issue("alice", [weather::SCOPE])
                .unwrap()
                .access_token,
        ),
        (
            "an unknown iss",
            a1().craft(
                None,
                &oidc_claims("http://127.0.0.1:1/realms/a", "alice", "weather", read()),
            ),
        ),
        (
            "B's issuer without its slash",
            b1().craft(
                None,
                &oidc_claims(p.b_iss.trim_end_matches('/'), "bob", "weather", read()),
            ),
        ),
        ("no iss, A's key", a1().craft(None, &no_iss)),
    ];
    for (why, token) in &refused {
        for path in ["/v1/me", "/v1/current.json?q=London"] {
            let reply = server.get_bearer(path, token).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{why}: {}",
                reply.body
            );
            reply.assert_invalid_token();
            assert!(
                !reply.body.contains(token.as_str()),
                "{why}: {}",
                reply.body
            );
        }
    }

    // API keys, minted tokens and tokens signed with JWT_SECRET work as before.
    let key = server.demo_key().to_owned();
    server
        .get("/v1/current.json?q=London", &[("x-api-key", &key)])
        .await
        .assert_weather("London");
    let me = server.get("/v1/me", &[("x-api-key", &key)]).await.json();
    assert_eq!(
        (&me["id"], &me["kind"]),
        (&json!("demo"), &json!("api_key"))
    );
    let minted = server.token_for(&key).await;
    let me = server.get_bearer("/v1/me", &minted).await.json();
    assert_eq!((&me["id"], &me["kind"]), (&json!("demo"), &json!("jwt")));
    let ours = TokenIssuer::hmac(SECRET.as_bytes())
        .issue("someone", [weather::SCOPE])
        .unwrap()
        .access_token;
    let me = server.get_bearer("/v1/me", &ours).await.json();
    assert_eq!((&me["id"], &me["kind"]), (&json!("someone"), &json!("jwt")));
    // And the providers' tokens still do; B was never asked for its keys again.
    let me = server.get_bearer("/v1/me", &alice).await;
    assert_eq!(me.json()["id"], "alice", "{}", me.body);
    assert_eq!(p.b.jwks_hits("/jwks"), 1);
    server.stop().await;
}

/// What `services` says of these variables, which must not start.
#[cfg(feature = "jwks")]
async fn start_error(vars: &[(&str, &str)]) -> weather::ConfigError {
    let config = config(vars).expect("a valid configuration");
    let started = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        weather::services(&config),
    )
    .await
    .expect("services() ends within 20 s");
    match started {
        Ok(_) => panic!("{vars:?}: the service started"),
        Err(e) => e,
    }
}

/// Asserts that `e` is an `OIDC_ISSUERS` error naming `issuer`, and returns its text.
#[cfg(feature = "jwks")]
#[track_caller]
fn oidc_error(e: &weather::ConfigError, issuer: &str) -> String {
    assert!(matches!(e, weather::ConfigError::Oidc(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("OIDC_ISSUERS: {issuer}: ")),
        "{text}"
    );
    text
}

#[cfg(feature = "jwks")]
#[tokio::test]
async fn an_oidc_issuer_that_cannot_be_used_stops_the_start() {
    let p = Providers::start().await;

    // An http:// issuer without OIDC_ALLOW_HTTP=1: refused before any request.
    for allow in [None, Some("0")] {
        let mut vars = vec![
            ("OIDC_ISSUERS", p.a_iss.as_str()),
            ("OIDC_AUDIENCE", "weather"),
        ];
        vars.extend(allow.map(|a| ("OIDC_ALLOW_HTTP", a)));
        let text = oidc_error(&start_error(&vars).await, &p.a_iss);
        assert!(text.contains("https"), "{text}");
    }
    assert_eq!(p.a.hits(), 0, "no request to an http:// issuer not allowed");

    // A document for another issuer than the one asked: its keys are never fetched, even after
    // a good issuer.
    let other = Provider::start().await;
    let asked = other.url("/realms/a");
    other.publish("/jwks", &[&a1()]);
    other.document(&other.url("/realms/b"), "/jwks");
    for issuers in [asked.clone(), format!("{} {asked}", p.b_iss)] {
        let text = oidc_error(&start_error(&oidc_vars(&issuers)).await, &asked);
        assert!(
            text.contains(&format!("{:?}", other.url("/realms/b"))),
            "{text}"
        );
    }
    assert_eq!(other.jwks_hits("/jwks"), 0);
    // The same issuer with a trailing slash the document does not have.
    other.document(&asked, "/jwks");
    let slashed = format!("{asked}/");
    oidc_error(&start_error(&oidc_vars(&slashed)).await, &slashed);
    assert_eq!(other.jwks_hits("/jwks"), 0);

    // No document (404), a closed port, a document whose key set is not there.
    let empty = Provider::start().await;
    let nothing = empty.url("/realms/x");
    let text = oidc_error(&start_error(&oidc_vars(&nothing)).await, &nothing);
    assert!(text.contains("404"), "{text}");
    let mut closed = Provider::start().await;
    let gone = closed.url("/realms/a");
    closed.down().await;
    oidc_error(&start_error(&oidc_vars(&gone)).await, &gone);
    let keyless = Provider::start().await;
    let no_keys = keyless.url("/realms/k");
    keyless.document(&no_keys, "/missing-jwks");
    // (A key set that cannot be fetched is waited for, 10 s, in case it comes.)
    let text = oidc_error(&start_error(&oidc_vars(&no_keys)).await, &no_keys);
    assert!(text.contains("JWK set"), "{text}");

    // And the good ones start.
    let issuers = p.issuers();
    let config = config(&oidc_vars(&issuers)).expect("a valid configuration");
    assert!(weather::services(&config).await.is_ok());
}

#[test]
fn oidc_configuration() {
    let none = config(&[]).unwrap();
    assert!(none.oidc_issuers.is_empty(), "{none:?}");
    assert!(
        none.oidc_audience.is_none() && !none.oidc_allow_http,
        "{none:?}"
    );

    // One issuer twice (whatever the whitespace between), or JWT_ISSUER's: each must have one
    // set of rules.
    for (issuers, jwt_issuer) in [
        ("https://a.example https://a.example", None),
        (
            "https://a.example\thttps://b.example  https://a.example",
            None,
        ),
        (
            "https://b.example https://a.example",
            Some("https://a.example"),
        ),
    ] {
        let mut vars = vec![("OIDC_ISSUERS", issuers), ("OIDC_AUDIENCE", "weather")];
        vars.extend(jwt_issuer.map(|iss| ("JWT_ISSUER", iss)));
        match config(&vars) {
            Err(e @ weather::ConfigError::OidcDuplicate(_)) => {
                let text = e.to_string();
                assert!(text.starts_with("OIDC_ISSUERS "), "{text}");
                assert!(text.contains(r#""https://a.example""#), "{text}");
            }
            other => panic!("{vars:?}: {other:?}"),
        }
    }
    for bad in ["yes", "true", "2"] {
        match config(&[("OIDC_ALLOW_HTTP", bad)]) {
            Err(e @ weather::ConfigError::OidcAllowHttp(_)) => {
                assert!(e.to_string().starts_with("OIDC_ALLOW_HTTP="), "{e}");
            }
            other => panic!("OIDC_ALLOW_HTTP={bad}: {other:?}"),
        }
    }

    #[cfg(feature = "jwks")]
    {
        let c = config(&[
            ("OIDC_ISSUERS", " https://a.example \n https://b.example/ "),
            ("OIDC_AUDIENCE", " weather "),
            ("OIDC_ALLOW_HTTP", "1"),
        ])
        .unwrap();
        assert_eq!(c.oidc_issuers, ["https://a.example", "https://b.example/"]);
        assert_eq!(c.oidc_audience.as_deref(), Some("weather"));
        assert!(c.oidc_allow_http);
        // Without an audience, a token its provider minted for any other service would pass.
        for audience in [None, Some(""), Some("  ")] {
            let mut vars = vec![("OIDC_ISSUERS", "https://a.example")];
            vars.extend(audience.map(|a| ("OIDC_AUDIENCE", a)));
            match config(&vars) {
                Err(e @ weather::ConfigError::OidcAudience) => {
                    assert!(e.to_string().contains("OIDC_AUDIENCE"), "{e}");
                }
                other => panic!("{vars:?}: {other:?}"),
            }
        }
    }
    // A build that cannot discover issuers refuses them rather than ignore them.
    #[cfg(not(feature = "jwks"))]
    {
        let e = config(&[
            ("OIDC_ISSUERS", "https://a.example"),
            ("OIDC_AUDIENCE", "weather"),
        ])
        .unwrap_err();
        assert!(matches!(e, weather::ConfigError::OidcFeature), "{e:?}");
        assert!(e.to_string().contains("--features jwks"), "{e}");
    }
}

// --- JWT_REQUIRE_TYP

#[test]
fn jwt_require_typ_configuration() {
    assert!(config(&[]).unwrap().jwt_require_typ.is_none());
    let c = config(&[("JWT_REQUIRE_TYP", " at+jwt ")]).unwrap();
    assert_eq!(c.jwt_require_typ.as_deref(), Some("at+jwt"));
    for bad in ["at jwt", "at+\"jwt", "at+jwt\\"] {
        match config(&[("JWT_REQUIRE_TYP", bad)]) {
            Err(e @ weather::ConfigError::RequireTyp(_)) => {
                assert!(e.to_string().starts_with("JWT_REQUIRE_TYP="), "{e}");
            }
            other => panic!("JWT_REQUIRE_TYP={bad:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn jwt_require_typ_is_carried_by_minted_tokens_and_required_of_the_others() {
    // Without it, minted tokens say JWT.
    let plain = Server::start(&[("JWT_SECRET", SECRET)]).await;
    let minted = plain.token_for(plain.demo_key()).await;
    assert_eq!(jose_header(&minted)["typ"], "JWT");
    plain.stop().await;

    let server = Server::start(&[("JWT_SECRET", SECRET), ("JWT_REQUIRE_TYP", "at+jwt")]).await;
    let key = server.demo_key().to_owned();
    let token = server.token_for(&key).await;
    let header = jose_header(&token);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], "HS256", "{header}");
    assert_eq!(header["kid"], weather::DEFAULT_JWT_KID, "{header}");
    let me = server.get_bearer("/v1/me", &token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(
        (&me.json()["id"], &me.json()["kind"]),
        (&json!("demo"), &json!("jwt"))
    );
    server
        .get_bearer("/v1/current.json?q=Oslo", &token)
        .await
        .assert_weather("Oslo");

    // Signed with JWT_SECRET, under the right kid, but of another type: 401.
    let ours = TokenIssuer::hmac(SECRET.as_bytes()).kid(weather::DEFAULT_JWT_KID);
    for typ in [None, Some("JWT"), Some("logout+jwt")] {
        let issuer = match typ {
            Some(typ) => ours.clone().typ(typ),
            None => ours.clone(),
        };
        let other = issuer.issue("demo", [weather::SCOPE]).unwrap().access_token;
        assert_eq!(jose_header(&other)["typ"], typ.unwrap_or("JWT"));
        for path in ["/v1/me", "/v1/current.json?q=Oslo"] {
            let reply = server.get_bearer(path, &other).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{typ:?}: {}",
                reply.body
            );
            reply.assert_invalid_token();
        }
    }
    // The same token typed at+jwt passes: the type was all that was wrong.
    let typed = ours
        .typ("at+jwt")
        .issue("someone", [weather::SCOPE])
        .unwrap()
        .access_token;
    let me = server.get_bearer("/v1/me", &typed).await;
    assert_eq!(me.json()["id"], "someone", "{}", me.body);
    // An API key has no type to check.
    let me = server.get("/v1/me", &[("x-api-key", &key)]).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    server.stop().await;
}

#[cfg(feature = "jwks")]
#[tokio::test]
async fn jwt_require_typ_applies_to_the_oidc_issuers_tokens() {
    let (_provider, iss) = Provider::serving("/realms/a", &[&a1()]).await;
    let server = Server::start(&with(
        &oidc_vars(&iss),
        &[("JWT_REQUIRE_TYP", "at+jwt"), ("RATE_LIMIT", "100/s")],
    ))
    .await;
    let claims = oidc_claims(&iss, "alice", "weather", json!("weather:read"));
    // `at+jwt`, whatever its case, with or without `application/`.
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        let me = server
            .get_bearer("/v1/me", &a1().craft(Some(typ), &claims))
            .await;
        assert_eq!(me.status, StatusCode::OK, "{typ}: {}", me.body);
        assert_eq!(me.json()["id"], "alice");
    }
    let issued = a1()
        .issuer(&iss, "weather")
        .typ("at+jwt")
        .issue("alice", [weather::SCOPE])
        .unwrap()
        .access_token;
    server
        .get_bearer("/v1/current.json?q=Oslo", &issued)
        .await
        .assert_weather("Oslo");
    // No typ, JWT (TokenIssuer's default too), another kind of token: 401.
    let default_typ = a1()
        .issuer(&iss, "weather")
        .issue("alice", [weather::SCOPE])
        .unwrap()
        .access_token;
    let mut refused = vec![default_typ];
    for typ in [None, Some("JWT"), Some("logout+jwt")] {
        refused.push(a1().craft(typ, &claims));
    }
    for token in &refused {
        let reply = server.get_bearer("/v1/me", token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
        reply.assert_invalid_token();
    }
    server.stop().await;
}

// --- scope expressions: /v1/alerts.json (any of), /v1/forecast.json (all of)

/// Creates a key through the admin API with this body and returns its plaintext.
#[cfg(feature = "admin")]
async fn create_key(server: &Server, body: Value) -> String {
    let created = server
        .send_json(
            Method::POST,
            "/admin/keys",
            &[("x-api-key", ADMIN_KEY)],
            &body,
        )
        .await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "{body}: {}",
        created.body
    );
    created.json()["key"]
        .as_str()
        .expect("the key, once")
        .to_owned()
}

/// Changes the record `id` through the admin API and returns it.
#[cfg(feature = "admin")]
async fn patch_key(server: &Server, id: &str, body: Value) -> Value {
    let patched = server
        .send_json(
            Method::PATCH,
            &format!("/admin/keys/{id}"),
            &[("x-api-key", ADMIN_KEY)],
            &body,
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{body}: {}", patched.body);
    patched.json()
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn alerts_need_any_of_their_scopes_and_the_forecast_all_of_its() {
    let server = Server::start(&[
        ("ADMIN_API_KEY", ADMIN_KEY),
        ("JWT_SECRET", SECRET),
        ("RATE_LIMIT", "100/s"),
    ])
    .await;
    const BOTH: &str = r#"The credential lacks the scopes "weather:read" and "forecast:read"."#;
    const NO_FORECAST: &str = r#"The credential lacks the scope "forecast:read"."#;
    const NO_READ: &str = r#"The credential lacks the scope "weather:read"."#;
    // Each key's scopes, and what it gets from the alerts and from the forecast: 200, or the
    // detail of its 403.
    let cases = [
        ("alerts", json!(["alerts:read"]), None, Some(BOTH)),
        ("admin", json!(["weather:admin"]), None, Some(BOTH)),
        (
            "reader",
            json!(["weather:read"]),
            Some(ALERTS_DETAIL),
            Some(NO_FORECAST),
        ),
        (
            "forecaster",
            json!(["weather:read", "forecast:read"]),
            Some(ALERTS_DETAIL),
            None,
        ),
        (
            "forecast-only",
            json!(["forecast:read"]),
            Some(ALERTS_DETAIL),
            Some(NO_READ),
        ),
        ("nothing", json!([]), Some(ALERTS_DETAIL), Some(BOTH)),
    ];
    for (id, scopes, alerts, forecast) in cases {
        let key = create_key(
            &server,
            json!({"owner": "acme", "id": id, "scopes": scopes}),
        )
        .await;
        // The key, and a token minted for it, which carries the key's scopes.
        let token = server.token_for(&key).await;
        let bearer = format!("Bearer {token}");
        for headers in [
            [("x-api-key", key.as_str())],
            [("authorization", bearer.as_str())],
        ] {
            let reply = server.get("/v1/alerts.json?q=Oslo", &headers).await;
            match alerts {
                None => reply.assert_alerts("Oslo"),
                Some(detail) => {
                    reply.assert_insufficient_scope("alerts:read weather:admin", detail)
                }
            }
            let reply = server.get("/v1/forecast.json?q=Oslo", &headers).await;
            match forecast {
                None => reply.assert_forecast("Oslo"),
                Some(detail) => {
                    reply.assert_insufficient_scope("weather:read forecast:read", detail);
                }
            }
            assert!(!reply.body.contains(&key) && !reply.body.contains(&token));
        }
    }

    // The forecast's current weather is the current weather's.
    let forecaster = create_key(
        &server,
        json!({"owner": "acme", "id": "all-scopes", "scopes": weather::SCOPES_SUPPORTED}),
    )
    .await;
    let headers = [("x-api-key", forecaster.as_str())];
    let forecast = server.get("/v1/forecast.json?q=Oslo", &headers).await;
    forecast.assert_forecast("Oslo");
    let current = server.get("/v1/current.json?q=Oslo", &headers).await.json();
    assert_eq!(forecast.json()["current"], current["current"]);
    assert_eq!(forecast.json()["location"], current["location"]);
    // Deterministic, and another city has another forecast.
    assert_eq!(
        server.get("/v1/forecast.json?q=Oslo", &headers).await.body,
        forecast.body
    );
    let lima = server.get("/v1/forecast.json?q=Lima", &headers).await;
    lima.assert_forecast("Lima");
    assert_ne!(lima.json()["forecast"], forecast.json()["forecast"]);
    // `q` is required here too.
    server
        .get("/v1/forecast.json", &headers)
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    server
        .get("/v1/alerts.json?q=", &headers)
        .await
        .assert_problem(StatusCode::BAD_REQUEST);

    // A scope added through the admin API opens the alerts to the key at once; the token
    // minted before the change is revoked, a new one carries the new scope.
    let reader = create_key(
        &server,
        json!({"owner": "acme", "id": "reader-2", "scopes": ["weather:read"]}),
    )
    .await;
    let old_token = server.token_for(&reader).await;
    let record = patch_key(
        &server,
        "reader-2",
        json!({"scopes": ["weather:read", "alerts:read"]}),
    )
    .await;
    assert_eq!(
        record["scopes"],
        json!(["alerts:read", "weather:read"]),
        "{record}"
    );
    server
        .get("/v1/alerts.json?q=Oslo", &[("x-api-key", &reader)])
        .await
        .assert_alerts("Oslo");
    server
        .get_bearer("/v1/alerts.json?q=Oslo", &old_token)
        .await
        .assert_invalid_token();
    let new_token = server.token_for(&reader).await;
    server
        .get_bearer("/v1/alerts.json?q=Oslo", &new_token)
        .await
        .assert_alerts("Oslo");
    server.stop().await;
}

// --- allowed_ips and TRUSTED_PROXIES

#[test]
fn trusted_proxies_configuration() {
    assert!(config(&[]).unwrap().trusted_proxies.is_empty());
    assert!(
        config(&[("TRUSTED_PROXIES", "  ")])
            .unwrap()
            .trusted_proxies
            .is_empty()
    );
    let c = config(&[("TRUSTED_PROXIES", "10.0.0.0/8, ::1,192.0.2.7")]).unwrap();
    let proxies = &c.trusted_proxies;
    assert_eq!(proxies.len(), 3, "{proxies:?}");
    for (addr, trusted) in [
        ("10.1.2.3", true),
        ("::1", true),
        ("192.0.2.7", true),
        ("192.0.2.8", false),
        ("11.0.0.1", false),
        ("127.0.0.1", false),
    ] {
        assert_eq!(proxies.contains(addr.parse().unwrap()), trusted, "{addr}");
    }
    for (bad, named) in [
        ("nonsense", "nonsense"),
        ("10.0.0.0/8, bogus", "bogus"),
        ("10.0.0.0/33", "10.0.0.0/33"),
    ] {
        match config(&[("TRUSTED_PROXIES", bad)]) {
            Err(e @ weather::ConfigError::TrustedProxies(_)) => {
                let text = e.to_string();
                assert!(text.starts_with("TRUSTED_PROXIES: "), "{text}");
                assert!(text.contains(named), "{text}");
            }
            other => panic!("TRUSTED_PROXIES={bad:?}: {other:?}"),
        }
    }
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn a_keys_allowed_ips_are_checked_against_the_tcp_peer() {
    let server = Server::start(&[("ADMIN_API_KEY", ADMIN_KEY), ("RATE_LIMIT", "100/s")]).await;
    let key_of = |id: &str, allowed_ips: Value| json!({"owner": "acme", "id": id, "scopes": [weather::SCOPE], "allowed_ips": allowed_ips});
    // The server sees the connection's peer, 127.0.0.1.
    let loopback = create_key(&server, key_of("loopback", json!(["127.0.0.0/8"]))).await;
    server
        .get("/v1/current.json?q=Oslo", &[("x-api-key", &loopback)])
        .await
        .assert_weather("Oslo");

    let remote = create_key(&server, key_of("remote", json!(["203.0.113.0/24"]))).await;
    let headers = [("x-api-key", remote.as_str())];
    for path in ["/v1/current.json?q=Oslo", "/v1/me", "/v1/quota"] {
        server
            .get(path, &headers)
            .await
            .assert_address_not_allowed(&remote);
    }
    // Nor a token for it.
    server
        .post("/v1/token", &headers)
        .await
        .assert_address_not_allowed(&remote);
    // From a peer that is no trusted proxy, forwarding headers change nothing: neither for the
    // key they would let in, nor for the key they would keep out.
    for forged in [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-for", "127.0.0.1, 203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
    ] {
        server
            .get("/v1/me", &[headers[0], forged])
            .await
            .assert_address_not_allowed(&remote);
        server
            .get(
                "/v1/current.json?q=Oslo",
                &[("x-api-key", &loopback), forged],
            )
            .await
            .assert_weather("Oslo");
    }

    // PATCH adds the loopback address: the key works at once.
    let record = patch_key(
        &server,
        "remote",
        json!({"allowed_ips": ["203.0.113.0/24", "127.0.0.1/32"]}),
    )
    .await;
    assert_eq!(
        record["allowed_ips"],
        json!(["127.0.0.1/32", "203.0.113.0/24"]),
        "{record}"
    );
    server
        .get("/v1/current.json?q=Oslo", &headers)
        .await
        .assert_weather("Oslo");
    // No token for a key bound to addresses: the token would work from anywhere.
    let refused = server.post("/v1/token", &headers).await;
    refused.assert_problem(StatusCode::FORBIDDEN);
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .contains("not issued for keys limited to some client addresses"),
        "{}",
        refused.body
    );
    // A token minted before the key got its allowlist is revoked when it does.
    let later = create_key(&server, key_of("later", Value::Null)).await;
    let token = server.token_for(&later).await;
    let me = server.get_bearer("/v1/me", &token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    patch_key(&server, "later", json!({"allowed_ips": ["203.0.113.0/24"]})).await;
    let me = server.get_bearer("/v1/me", &token).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{}", me.body);
    server
        .get("/v1/me", &[("x-api-key", &later)])
        .await
        .assert_address_not_allowed(&later);

    // IPv6 loopback only: not the IPv4 one.
    let v6 = create_key(&server, key_of("v6-only", json!(["::1/128"]))).await;
    server
        .get("/v1/me", &[("x-api-key", &v6)])
        .await
        .assert_address_not_allowed(&v6);
    // `null`: from anywhere.
    let record = patch_key(&server, "v6-only", json!({"allowed_ips": null})).await;
    assert_eq!(record["allowed_ips"], Value::Null, "{record}");
    let me = server.get("/v1/me", &[("x-api-key", &v6)]).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);

    // Entries that are not networks: 400 naming the entry, and nothing created or changed
    // (the record shows its networks normalised and sorted).
    for (bad, entry) in [
        (json!(["203.0.113.0/33"]), "allowed_ips[0]"),
        (json!(["127.0.0.1", "not-an-address"]), "allowed_ips[1]"),
        (json!(["10.0.0.0/8/8"]), "allowed_ips[0]"),
        (json!([]), "allowed_ips"),
    ] {
        let created = server
            .send_json(
                Method::POST,
                "/admin/keys",
                &[("x-api-key", ADMIN_KEY)],
                &key_of("bad", bad.clone()),
            )
            .await;
        created.assert_problem(StatusCode::BAD_REQUEST);
        assert!(
            created.json()["detail"].as_str().unwrap().contains(entry),
            "{bad}: {}",
            created.body
        );
        let patched = server
            .send_json(
                Method::PATCH,
                "/admin/keys/remote",
                &[("x-api-key", ADMIN_KEY)],
                &json!({"allowed_ips": bad}),
            )
            .await;
        patched.assert_problem(StatusCode::BAD_REQUEST);
    }
    server
        .get("/admin/keys/bad", &[("x-api-key", ADMIN_KEY)])
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let read = server
        .get("/admin/keys/remote", &[("x-api-key", ADMIN_KEY)])
        .await;
    assert_eq!(
        read.json()["allowed_ips"],
        json!(["127.0.0.1/32", "203.0.113.0/24"]),
        "{}",
        read.body
    );
    server.stop().await;
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn through_a_trusted_proxy_the_forwarded_client_is_checked() {
    let server = Server::start(&[
        ("ADMIN_API_KEY", ADMIN_KEY),
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("RATE_LIMIT", "100/s"),
    ])
    .await;
    let remote = create_key(
        &server,
        json!({"owner": "acme", "id": "remote", "scopes": [weather::SCOPE],
               "allowed_ips": ["203.0.113.0/24"]}),
    )
    .await;
    let loopback = create_key(
        &server,
        json!({"owner": "acme", "id": "loopback", "scopes": [weather::SCOPE],
               "allowed_ips": ["127.0.0.0/8"]}),
    )
    .await;
    let key = ("x-api-key", remote.as_str());
    // The client is the right-most forwarded address that is not a trusted proxy.
    for forwarded in [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-for", "198.51.100.1, 203.0.113.9"),
        ("x-forwarded-for", "203.0.113.9, 127.0.0.1"),
        ("forwarded", "for=203.0.113.9"),
    ] {
        server
            .get("/v1/current.json?q=Oslo", &[key, forwarded])
            .await
            .assert_weather("Oslo");
    }
    for forwarded in [
        ("x-forwarded-for", "198.51.100.1"),
        // What the client wrote on the left; the proxy appended the address it saw.
        ("x-forwarded-for", "203.0.113.9, 198.51.100.1"),
        ("forwarded", "for=198.51.100.1"),
    ] {
        server
            .get("/v1/current.json?q=Oslo", &[key, forwarded])
            .await
            .assert_address_not_allowed(&remote);
    }
    // Without a forwarding header the client is the proxy itself.
    server
        .get("/v1/current.json?q=Oslo", &[key])
        .await
        .assert_address_not_allowed(&remote);
    let loopback = ("x-api-key", loopback.as_str());
    server
        .get("/v1/current.json?q=Oslo", &[loopback])
        .await
        .assert_weather("Oslo");
    // The loopback key used by a client behind the proxy is used from that client.
    server
        .get(
            "/v1/current.json?q=Oslo",
            &[loopback, ("x-forwarded-for", "203.0.113.9")],
        )
        .await
        .assert_address_not_allowed(loopback.1);
    server.stop().await;
}

// --- RESOURCE_METADATA

#[test]
fn resource_metadata_configuration() {
    assert!(!config(&[]).unwrap().resource_metadata);
    assert!(
        !config(&[("RESOURCE_METADATA", "0")])
            .unwrap()
            .resource_metadata
    );
    assert!(
        config(&[("RESOURCE_METADATA", " 1 ")])
            .unwrap()
            .resource_metadata
    );
    match config(&[("RESOURCE_METADATA", "yes")]) {
        Err(e @ weather::ConfigError::ResourceMetadata(_)) => {
            assert!(
                e.to_string().starts_with("RESOURCE_METADATA=\"yes\""),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// The `resource_metadata` parameter of `server`'s challenges.
fn metadata_param(server: &Server) -> String {
    format!(
        r#"resource_metadata="http://{}/.well-known/oauth-protected-resource""#,
        server.addr
    )
}

/// The challenges of `server` for: no credential, an unknown key, two credentials, the demo
/// key on the alerts and on the forecast (which it lacks the scopes of), and a token minted
/// for it on the alerts.
async fn challenges(server: &Server) -> Vec<(String, StatusCode, Option<String>)> {
    let key = server.demo_key();
    let token = server.token_for(key).await;
    let two = format!("/v1/current.json?key={key}&q=Oslo");
    let cases = [
        ("no credential", "/v1/current.json?q=Oslo", vec![]),
        ("no credential, /v1/quota", "/v1/quota", vec![]),
        (
            "an unknown key",
            "/v1/me",
            vec![("x-api-key", "nobody-knows-this-key")],
        ),
        ("two credentials", two.as_str(), vec![("x-api-key", key)]),
        (
            "the alerts",
            "/v1/alerts.json?q=Oslo",
            vec![("x-api-key", key)],
        ),
        (
            "the forecast",
            "/v1/forecast.json?q=Oslo",
            vec![("x-api-key", key)],
        ),
        ("a token on the alerts", "/v1/alerts.json?q=Oslo", vec![]),
    ];
    let mut out = Vec::new();
    for (what, path, headers) in cases {
        let reply = if what.starts_with("a token") {
            server.get_bearer(path, &token).await
        } else {
            server.get(path, &headers).await
        };
        out.push((
            what.to_owned(),
            reply.status,
            reply.header(WWW_AUTHENTICATE).map(str::to_owned),
        ));
    }
    out
}

/// What [`challenges`] finds, without `resource_metadata`.
fn plain_challenges() -> Vec<(StatusCode, String)> {
    let alerts = insufficient_scope("alerts:read weather:admin");
    vec![
        (
            StatusCode::UNAUTHORIZED,
            r#"Bearer realm="weather""#.to_owned(),
        ),
        (
            StatusCode::UNAUTHORIZED,
            r#"Bearer realm="weather""#.to_owned(),
        ),
        (
            StatusCode::UNAUTHORIZED,
            r#"Bearer realm="weather", error="invalid_token""#.to_owned(),
        ),
        (
            StatusCode::BAD_REQUEST,
            r#"Bearer realm="weather", error="invalid_request""#.to_owned(),
        ),
        (StatusCode::FORBIDDEN, alerts.clone()),
        (
            StatusCode::FORBIDDEN,
            insufficient_scope("weather:read forecast:read"),
        ),
        (StatusCode::FORBIDDEN, alerts),
    ]
}

#[tokio::test]
async fn resource_metadata_is_served_and_named_in_every_challenge() {
    let server = Server::start(&[("RESOURCE_METADATA", "1")]).await;
    // No credential needed, not rate limited.
    let doc = server
        .get("/.well-known/oauth-protected-resource", &[])
        .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.body);
    assert_eq!(doc.header(CONTENT_TYPE), Some("application/json"));
    assert!(doc.header("ratelimit").is_none(), "{:?}", doc.headers);
    let body = doc.json();
    assert_eq!(
        body["resource"],
        format!("http://{}", server.addr),
        "{body}"
    );
    assert!(body.get("authorization_servers").is_none(), "{body}");
    let mut scopes: Vec<&str> = body["scopes_supported"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    scopes.sort_unstable();
    assert_eq!(
        scopes,
        [
            "alerts:read",
            "forecast:read",
            "weather:admin",
            "weather:read"
        ],
        "{body}"
    );
    assert_eq!(
        body["bearer_methods_supported"],
        json!(["header"]),
        "{body}"
    );
    assert_eq!(body["resource_name"], "Weather API", "{body}");
    // With a key, the same document.
    let key = server.demo_key().to_owned();
    let with_key = server
        .get(
            "/.well-known/oauth-protected-resource",
            &[("x-api-key", &key)],
        )
        .await;
    assert_eq!(with_key.json(), body);

    let param = metadata_param(&server);
    let found = challenges(&server).await;
    for ((what, status, challenge), (want_status, want)) in found.iter().zip(plain_challenges()) {
        assert_eq!(*status, want_status, "{what}");
        assert_eq!(
            challenge.as_deref(),
            Some(format!("{want}, {param}").as_str()),
            "{what}"
        );
    }
    // A request that succeeds has no challenge.
    let ok = server.get("/v1/me", &[("x-api-key", &key)]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.header(WWW_AUTHENTICATE).is_none());
    server.stop().await;

    // Without RESOURCE_METADATA: no document, no parameter.
    let plain = Server::start(&[]).await;
    let doc = plain
        .get("/.well-known/oauth-protected-resource", &[])
        .await;
    assert_eq!(doc.status, StatusCode::NOT_FOUND, "{}", doc.body);
    let found = challenges(&plain).await;
    for ((what, status, challenge), (want_status, want)) in found.iter().zip(plain_challenges()) {
        assert_eq!(*status, want_status, "{what}");
        assert_eq!(challenge.as_deref(), Some(want.as_str()), "{what}");
    }
    plain.stop().await;
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn the_admin_apis_challenges_name_the_resource_metadata_too() {
    let server = Server::start(&[("RESOURCE_METADATA", "1"), ("ADMIN_API_KEY", ADMIN_KEY)]).await;
    let param = metadata_param(&server);
    let reply = server.get("/admin/keys?owner=acme", &[]).await;
    reply.assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header(WWW_AUTHENTICATE),
        Some(format!(r#"Bearer realm="weather-admin", {param}"#).as_str())
    );
    let reply = server
        .get(
            "/admin/keys?owner=acme",
            &[("x-api-key", server.demo_key())],
        )
        .await;
    assert_eq!(
        reply.header(WWW_AUTHENTICATE),
        Some(format!(r#"Bearer realm="weather-admin", error="invalid_token", {param}"#).as_str())
    );
    server.stop().await;
}

#[cfg(feature = "jwks")]
#[tokio::test]
async fn the_resource_metadata_names_the_oidc_issuers() {
    let p = Providers::start().await;
    let issuers = p.issuers();
    let server = Server::start(&with(&oidc_vars(&issuers), &[("RESOURCE_METADATA", "1")])).await;
    let doc = server
        .get("/.well-known/oauth-protected-resource", &[])
        .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.body);
    let body = doc.json();
    assert_eq!(
        body["resource"],
        format!("http://{}", server.addr),
        "{body}"
    );
    assert_eq!(
        body["authorization_servers"],
        json!([p.a_iss, p.b_iss]),
        "{body}"
    );
    assert_eq!(
        body["scopes_supported"].as_array().map(Vec::len),
        Some(4),
        "{body}"
    );

    // The challenges for the providers' tokens point to it as well.
    let param = metadata_param(&server);
    let reader = a1().craft(
        None,
        &oidc_claims(&p.a_iss, "alice", "weather", json!("weather:read")),
    );
    let reply = server.get_bearer("/v1/alerts.json?q=Oslo", &reader).await;
    reply.assert_problem(StatusCode::FORBIDDEN);
    assert_eq!(
        reply.header(WWW_AUTHENTICATE),
        Some(
            format!(
                "{}, {param}",
                insufficient_scope("alerts:read weather:admin")
            )
            .as_str()
        )
    );
    let elsewhere = b1().craft(
        None,
        &oidc_claims(&p.b_iss, "bob", "billing", json!("weather:read")),
    );
    let reply = server.get_bearer("/v1/me", &elsewhere).await;
    reply.assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header(WWW_AUTHENTICATE),
        Some(format!(r#"Bearer realm="weather", error="invalid_token", {param}"#).as_str())
    );
    server.stop().await;
}

#[tokio::test]
async fn an_unusable_proxy_list_or_issuer_stops_the_process_with_exit_1() {
    let (code, stdout, stderr) = run_example(&[("TRUSTED_PROXIES", "10.0.0.0/8, nonsense")]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "error: TRUSTED_PROXIES: \"nonsense\" is not an address or a CIDR such as 10.0.0.0/8\n"
    );
    assert!(!stdout.contains("listening on"), "{stdout}");

    // An issuer is discovered before the service listens: one whose document names another
    // issuer stops it.
    #[cfg(feature = "jwks")]
    {
        let provider = Provider::start().await;
        let asked = provider.url("/realms/a");
        provider.publish("/jwks", &[&a1()]);
        provider.document(&provider.url("/realms/b"), "/jwks");
        let mut vars = oidc_vars(&asked);
        vars.push(("RUST_LOG", "off"));
        let (code, stdout, stderr) = run_example(&vars).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: OIDC_ISSUERS: {asked}: ")),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!stdout.contains("listening on"), "{stdout}");
        assert_eq!(
            provider.document_hits(),
            1,
            "the child asked for the document"
        );
        assert_eq!(provider.jwks_hits("/jwks"), 0);
    }
}

/// `GET /v1/echo` shows the header names and the raw query the handler saw; with
/// `STRIP_CREDENTIAL=1` the credential is gone from both, whatever carried it, and the rest of
/// the query is unchanged byte for byte.
#[tokio::test]
async fn echo_shows_what_the_handler_saw_and_strip_credential_hides_the_credential() {
    let names = |reply: &Reply| -> Vec<String> {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.json()["headers"]
            .as_array()
            .expect("a list of header names")
            .iter()
            .map(|n| n.as_str().expect("a name").to_owned())
            .collect()
    };
    let query = |reply: &Reply| reply.json()["query"].as_str().unwrap().to_owned();
    let rest = "a=1&b=%26x%3D&c=d+e&a=2&&empty=";

    let plain = Server::start(&[]).await;
    let key = plain.demo_key().to_owned();
    let seen = plain
        .get("/v1/echo?a=1", &[("x-api-key", &key), ("x-extra", "1")])
        .await;
    let seen_names = names(&seen);
    assert!(
        seen_names.iter().any(|n| n == "x-api-key"),
        "{seen_names:?}"
    );
    assert!(seen_names.iter().any(|n| n == "x-extra"), "{seen_names:?}");
    assert!(seen_names.iter().all(|n| *n == n.to_lowercase()));
    assert_eq!(query(&seen), "a=1");
    let seen = plain.get(&format!("/v1/echo?key={key}&{rest}"), &[]).await;
    assert_eq!(query(&seen), format!("key={key}&{rest}"));
    plain.stop().await;

    let server = Server::start(&[("STRIP_CREDENTIAL", "1")]).await;
    let key = server.demo_key().to_owned();
    // In the middle, first and last of the query, and alone.
    for (sent, kept) in [
        (
            format!("a=1&key={key}&b=%26x%3D&c=d+e&a=2&&empty="),
            rest.to_owned(),
        ),
        (format!("key={key}&{rest}"), rest.to_owned()),
        (format!("{rest}&key={key}"), rest.to_owned()),
        (format!("key={key}"), String::new()),
    ] {
        let seen = server
            .get(&format!("/v1/echo?{sent}"), &[("x-extra", "1")])
            .await;
        assert_eq!(query(&seen), kept, "{sent}");
        assert!(!seen.body.contains(&key), "{}", seen.body);
        assert!(names(&seen).iter().any(|n| n == "x-extra"));
    }
    // In a header, as a key or as a bearer token, and a minted token.
    let token = server.token_for(&key).await;
    for (name, value) in [
        ("x-api-key", key.clone()),
        ("authorization", format!("Bearer {key}")),
        ("authorization", format!("Bearer {token}")),
    ] {
        let seen = server
            .get(
                &format!("/v1/echo?{rest}"),
                &[(name, &value), ("x-extra", "1")],
            )
            .await;
        let seen_names = names(&seen);
        assert!(!seen_names.iter().any(|n| n == name), "{seen_names:?}");
        assert!(seen_names.iter().any(|n| n == "x-extra"), "{seen_names:?}");
        assert_eq!(query(&seen), rest);
        assert!(!seen.body.contains(&key) && !seen.body.contains(&token));
    }
    // Not authenticated: 401, and the handler never sees the request.
    server
        .get(&format!("/v1/echo?{rest}"), &[])
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    server.stop().await;
}

// --- METRICS

#[test]
fn metrics_configuration() {
    assert!(!config(&[]).unwrap().metrics);
    assert!(!config(&[("METRICS", "0")]).unwrap().metrics);
    match config(&[("METRICS", "yes")]) {
        Err(e @ weather::ConfigError::Metrics(_)) => {
            assert!(e.to_string().starts_with("METRICS=\"yes\""), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A build that records no metrics refuses to pretend it serves them.
    #[cfg(not(feature = "metrics"))]
    match config(&[("METRICS", "1")]) {
        Err(e @ weather::ConfigError::MetricsFeature) => {
            assert!(e.to_string().contains("--features metrics"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    #[cfg(feature = "metrics")]
    assert!(config(&[("METRICS", " 1 ")]).unwrap().metrics);
}

/// `GET /metrics` serves the Prometheus text format of what keygate recorded, without a
/// credential and without the rate limit.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_are_served_in_the_prometheus_format_without_a_credential() {
    let server = Server::start(&[("METRICS", "1"), ("RATE_LIMIT", "1/min")]).await;
    let key = server.demo_key().to_owned();
    // A process has one global recorder: the counts are read as differences.
    let count = |text: &str, series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = server.get("/metrics", &[]).await;
    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(
        before.header(CONTENT_TYPE),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let unknown = r#"keygate_auth_requests_total{outcome="unknown_key",kind="api_key"}"#;
    let limited = r#"keygate_ratelimit_decisions_total{decision="limited",policy="default"}"#;
    let allowed = r#"keygate_ratelimit_decisions_total{decision="allowed",policy="default"}"#;

    let ok = server
        .get("/v1/current.json?q=Oslo", &[("x-api-key", &key)])
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let over = server
        .get("/v1/current.json?q=Oslo", &[("x-api-key", &key)])
        .await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    let bad = server
        .get("/v1/me", &[("x-api-key", "nobody-knows-this-key")])
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);

    // Many scrapes within the 1/min limit, none refused, none carrying rate-limit headers.
    let mut after = None;
    for _ in 0..5 {
        let reply = server.get("/metrics", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.header("ratelimit").is_none(), "{:?}", reply.headers);
        after = Some(reply);
    }
    let after = after.unwrap();
    assert!(
        after
            .body
            .contains("# TYPE keygate_auth_requests_total counter"),
        "{}",
        after.body
    );
    // Other tests of this binary serving at the same time count into the same series (a process
    // has one recorder): each count grew by this test's request at least. The exact counts are
    // `tests/metrics.rs`'s.
    for series in [unknown, allowed, limited] {
        let grew = count(&after.body, series) - count(&before.body, series);
        assert!(grew >= 1, "{series} grew by {grew}:\n{}", after.body);
    }
    // No label holds the key or the principal's id.
    assert!(!after.body.contains(&key) && !after.body.contains("demo"));
    server.stop().await;
}

/// Without `METRICS=1` there is no `/metrics`.
#[tokio::test]
async fn no_metrics_route_unless_asked_for() {
    let server = Server::start(&[]).await;
    assert_eq!(
        server.get("/metrics", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    server.stop().await;
}
