//! The weather API over gRPC, behind keygate: `weather.v1.Weather/Current` needs an API key or
//! a JWT with the scope `weather:read` and is rate limited per caller, while the standard health
//! service and server reflection stay open.
//!
//! ```sh
//! cargo run -p keygate-grpc-example                     # issues a demo key, prints grpcurl commands
//! KEYGATE_ADDR=127.0.0.1:0 cargo run -p keygate-grpc-example   # any free port
//! WEATHER_API_KEYS=key-one,key-two JWT_SECRET=... cargo run -p keygate-grpc-example
//! ```
//!
//! Configuration (all read by [`Config::from_vars`]; the same variables as the HTTP `weather`
//! example):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KEYGATE_ADDR` | `127.0.0.1:50051` | where to listen (`127.0.0.1:0` picks a free port) |
//! | `WEATHER_API_KEYS` | unset: issue one demo key | comma-separated keys to accept, in any format, each with scope `weather:read` |
//! | `JWT_SECRET` | random | the HS256 secret of accepted bearer JWTs |
//! | `JWT_SUBJECT_CLAIM` | `sub` | the claim that names the caller |
//! | `JWT_ISSUER`, `JWT_AUDIENCE` | unchecked | the `iss` and `aud` a token must carry |
//! | `RATE_LIMIT` | `10/s` | each caller's quota, such as `100/min` |
//! | `RUST_LOG` | `info,keygate=debug` | log filter (logs go to stderr) |
//!
//! Services, on one port (HTTP/2 for gRPC; plain HTTP/1.1 and h2c for the HTTP routes):
//!
//! - `weather.v1.Weather` (`examples/grpc/weather.proto`) behind `AuthLayer` → `RateLimitLayer`
//!   → `RequireScopeLayer("weather:read")`. Failures are gRPC statuses: 16 `UNAUTHENTICATED`,
//!   7 `PERMISSION_DENIED`, 8 `RESOURCE_EXHAUSTED` (with `retry-after` and the `ratelimit`
//!   headers as metadata). The method reads the caller with `request.principal()?` and returns
//!   its id in the response metadata `x-caller-id`.
//! - `grpc.health.v1.Health` and `grpc.reflection.v1.ServerReflection`: no credential needed.
//! - Plain HTTP: `GET /healthz` (open) and `GET /v1/me` (the caller as JSON, behind the same
//!   `AuthLayer`), which keep keygate's HTTP errors (401 + `application/problem+json`).
//!
//! The Rust code for the proto is generated without `protoc` and committed
//! (`examples/grpc/weather.v1.rs`, `examples/grpc/weather_descriptor.bin`);
//! `examples/grpc/tests/proto_current.rs` checks that it is current and regenerates it with
//! `KEYGATE_REGENERATE=1 cargo test -p keygate-grpc-example --test proto_current`.
//!
//! The first line on stdout is `listening on ADDR`. The pieces (`Config`, `App`, `serve`) are
//! public so that `tests/grpc.rs` drives this very file over TCP.

use std::future::Future;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use axum::Extension;
use axum::routing::get;
use keygate::QuotaError;
use keygate::jwt::{JwtKey, JwtVerifier, TokenIssuer};
use keygate::key::{ApiKey, KeyFormat, KeyRecord};
use keygate::ratelimit::{MemoryLimiter, RateLimitLayer};
use keygate::store::{ManageError, MemoryStore};
use keygate::tonic::RequestExt;
use keygate::{Principal, Quota, auth::AuthLayer, scope::RequireScopeLayer};
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};

/// The code generated from `examples/grpc/weather.proto` (package `weather.v1`).
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    include!("weather.v1.rs");
}

use pb::weather_server::{Weather, WeatherServer};
use pb::{CurrentReply, CurrentRequest};

/// The encoded `FileDescriptorSet` of `weather.proto`, served by reflection.
pub const DESCRIPTOR: &[u8] = include_bytes!("weather_descriptor.bin");

/// The address served when `KEYGATE_ADDR` is not set.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);
/// The quota when `RATE_LIMIT` is not set.
pub const DEFAULT_RATE_LIMIT: &str = "10/s";
/// The prefix of the keys this service issues (the same as the HTTP example's).
pub const KEY_PREFIX: &str = "wk_live_";
/// The scope `Current` requires; every key of this example has it.
pub const SCOPE: &str = "weather:read";
/// The realm named in the HTTP routes' `WWW-Authenticate`.
pub const REALM: &str = "weather";
/// The longest key accepted.
const MAX_KEY_LEN: usize = 512;
/// The response metadata that carries the caller's id.
pub const CALLER_ID: &str = "x-caller-id";
/// The longest place name accepted in `q`.
const MAX_PLACE_LEN: usize = 100;

/// The service's configuration. Every environment variable is read here, in
/// [`Config::from_vars`], and nowhere else.
#[derive(Clone)]
pub struct Config {
    /// Where to listen (`KEYGATE_ADDR`).
    pub addr: SocketAddr,
    /// Keys to accept (`WEATHER_API_KEYS`); when empty, one demo key is issued instead.
    pub api_keys: Vec<ApiKey>,
    /// The HS256 secret of bearer JWTs (`JWT_SECRET`); random when `None`.
    pub jwt_secret: Option<Vec<u8>>,
    /// The claim naming the caller (`JWT_SUBJECT_CLAIM`), when not `sub`.
    pub jwt_subject_claim: Option<String>,
    /// The `iss` tokens must carry (`JWT_ISSUER`).
    pub jwt_issuer: Option<String>,
    /// The `aud` tokens must carry (`JWT_AUDIENCE`).
    pub jwt_audience: Option<String>,
    /// Each caller's quota (`RATE_LIMIT`).
    pub rate_limit: Quota,
    /// The log filter (`RUST_LOG`).
    pub log_filter: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and the secret are never printed.
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("api_keys", &self.api_keys.len())
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<set>"))
            .field("jwt_subject_claim", &self.jwt_subject_claim)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `KEYGATE_ADDR` is not `IP:PORT`.
    #[error("KEYGATE_ADDR={0:?} is not an address such as 127.0.0.1:50051")]
    Addr(String),
    /// A key in `WEATHER_API_KEYS` could never be accepted.
    #[error("WEATHER_API_KEYS: key #{position} {why}")]
    Key {
        /// Which key, counting from 1.
        position: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `RATE_LIMIT` is not a quota.
    #[error("RATE_LIMIT={0:?} is not a quota such as 10/s or 100/min: {1}")]
    RateLimit(String, #[source] QuotaError),
    /// `JWT_SUBJECT_CLAIM` names a claim the token issuer sets itself.
    #[error("JWT_SUBJECT_CLAIM={0:?} names a claim tokens use for something else")]
    SubjectClaim(String),
    /// `JWT_SECRET` is set but empty.
    #[error("JWT_SECRET is empty; unset it for a random secret")]
    EmptySecret,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the configuration from `var`, which returns a variable's value by name (tests pass
    /// a closure over fixed values instead of changing the process environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name| var(name).filter(|v| !v.trim().is_empty());
        let addr = match set("KEYGATE_ADDR") {
            Some(a) => a.trim().parse().map_err(|_| ConfigError::Addr(a))?,
            None => DEFAULT_ADDR,
        };
        let api_keys = var("WEATHER_API_KEYS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(ApiKey::new)
            .collect();
        let jwt_secret = match var("JWT_SECRET") {
            Some(s) if s.is_empty() => return Err(ConfigError::EmptySecret),
            Some(s) => Some(s.into_bytes()),
            None => None,
        };
        let rate_limit = set("RATE_LIMIT").unwrap_or_else(|| DEFAULT_RATE_LIMIT.to_owned());
        let rate_limit = rate_limit
            .trim()
            .parse()
            .map_err(|e| ConfigError::RateLimit(rate_limit.clone(), e))?;
        let jwt_subject_claim = set("JWT_SUBJECT_CLAIM").filter(|c| c != "sub");
        if let Some(claim) = jwt_subject_claim.as_ref()
            && TokenIssuer::is_reserved(claim)
        {
            return Err(ConfigError::SubjectClaim(claim.clone()));
        }
        Ok(Self {
            addr,
            api_keys,
            jwt_secret,
            jwt_subject_claim,
            jwt_issuer: set("JWT_ISSUER"),
            jwt_audience: set("JWT_AUDIENCE"),
            rate_limit,
            log_filter: var("RUST_LOG").unwrap_or_else(|| "info,keygate=debug".to_owned()),
        })
    }
}

/// Everything the server is built from: the key store, the JWT verifier and the quota.
#[derive(Clone)]
pub struct App {
    /// The store the layer looks keys up in. Clones share it: keys added to one are seen by all.
    pub store: MemoryStore,
    /// The key issued because `WEATHER_API_KEYS` was not set.
    pub demo_key: Option<ApiKey>,
    /// Verifies bearer JWTs.
    pub verifier: JwtVerifier,
    /// Mints tokens the verifier accepts (for the demo token).
    pub issuer: TokenIssuer,
    /// Each caller's quota.
    pub rate_limit: Quota,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("keys", &self.store.len())
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the key store (the keys of `config`, each with scope `weather:read`, or else one
    /// newly issued demo key) and the JWT verifier.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        let format = KeyFormat::new(KEY_PREFIX).expect("a valid prefix");
        let store = MemoryStore::with_format(format.clone());
        let mut demo_key = None;
        if config.api_keys.is_empty() {
            let record = KeyRecord::new("demo", "demo").with_scopes([SCOPE]);
            demo_key = Some(
                store
                    .issue(record)
                    .expect("an empty store has no duplicate"),
            );
        }
        for (i, key) in config.api_keys.iter().enumerate() {
            let position = i + 1;
            let bad = |why| ConfigError::Key { position, why };
            let text = key.expose_secret();
            // Refuse keys the layer would always turn away, rather than serve with a dead key.
            if text.len() > MAX_KEY_LEN {
                return Err(bad("is longer than 512 bytes"));
            }
            if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
                return Err(bad("has control characters"));
            }
            if format.has_prefix(text) && format.check(text).is_err() {
                return Err(bad("starts with wk_live_ but fails that format's checksum"));
            }
            let record =
                KeyRecord::new(format!("key-{position}"), "weather-user").with_scopes([SCOPE]);
            store.insert(key, record).map_err(|e| match e {
                ManageError::DuplicateKey => bad("is listed twice"),
                _ => bad("could not be registered"),
            })?;
        }

        let secret = config.jwt_secret.clone().unwrap_or_else(|| {
            let mut secret = vec![0; 32];
            getrandom::fill(&mut secret).expect("the system's random source");
            secret
        });
        let mut verifier = JwtVerifier::with_keys([JwtKey::hmac(&secret)]);
        let mut issuer = TokenIssuer::hmac(&secret);
        if let Some(claim) = &config.jwt_subject_claim {
            verifier = verifier.subject_claim(claim);
            issuer = issuer.subject_claim(claim);
        }
        if let Some(iss) = &config.jwt_issuer {
            verifier = verifier.issuer([iss.clone()]);
            issuer = issuer.issuer(iss.clone());
        }
        if let Some(aud) = &config.jwt_audience {
            verifier = verifier.audience([aud.clone()]);
            issuer = issuer.audience(aud.clone());
        }
        Ok(Self {
            store,
            demo_key,
            verifier,
            issuer,
            rate_limit: config.rate_limit,
        })
    }

    /// A token for `subject` with scope `weather:read`, which this server accepts.
    pub fn token(&self, subject: &str) -> String {
        // The subject claim was checked against the reserved ones at configuration.
        self.issuer
            .issue(subject, [SCOPE])
            .expect("an HS256 token with a checked subject claim is always issued")
            .access_token
    }

    /// Every service and route of the server.
    pub fn routes(&self, health: HealthServer<impl Health>) -> Routes {
        let format = self.store.format().clone();
        let auth = AuthLayer::new(self.store.clone())
            .key_format(format)
            .max_key_len(MAX_KEY_LEN)
            .jwt(self.verifier.clone())
            .realm(REALM);

        // Only the weather service needs a credential. Outermost first: who is calling, may
        // they call now, may they call this.
        let weather = tower::ServiceBuilder::new()
            .layer(auth.clone())
            .layer(RateLimitLayer::new(MemoryLimiter::new(), self.rate_limit))
            .layer(RequireScopeLayer::new(SCOPE))
            .service(WeatherServer::new(WeatherService));

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the committed descriptors decode");

        let grpc = Routes::new(health)
            .add_service(reflection)
            .add_service(weather)
            .into_axum_router();
        // Plain HTTP on the same port keeps the HTTP error contract (401 + problem+json).
        let http = axum::Router::new()
            .route("/v1/me", get(me).layer(auth))
            .route("/healthz", get(|| async { "ok" }));
        Routes::from(grpc.merge(http))
    }
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<WeatherServer<WeatherService>>()
        .await;
    Server::builder()
        // The HTTP routes answer HTTP/1.1 too; gRPC clients speak HTTP/2 as always.
        .accept_http1(true)
        .add_routes(app.routes(health))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

/// Writes the start-up banner: first `listening on ADDR`, then how to call the service.
pub fn banner(out: &mut impl Write, addr: SocketAddr, app: &App) -> io::Result<()> {
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    // `header` is the shell word of grpcurl's `-H`, quoted.
    let call = |header: &str, q: &str| {
        format!(
            "grpcurl -plaintext -H {header} -d '{{\"q\":\"{q}\"}}' {addr} \
             weather.v1.Weather/Current"
        )
    };
    writeln!(out)?;
    match &app.demo_key {
        Some(key) => {
            let key = key.expose_secret();
            let token = app.token("demo");
            writeln!(out, "demo key (scope {SCOPE}): {key}")?;
            writeln!(out, "demo token for it (1 h): {token}")?;
            writeln!(out)?;
            writeln!(out, "  # the key in x-api-key metadata")?;
            writeln!(out, "  {}", call(&format!("'x-api-key: {key}'"), "London"))?;
            writeln!(out, "  # the token as a bearer credential")?;
            writeln!(
                out,
                "  {}",
                call(&format!("'authorization: Bearer {token}'"), "Paris")
            )?;
            writeln!(out, "  # plain HTTP on the same port")?;
            writeln!(out, "  curl -H 'x-api-key: {key}' http://{addr}/v1/me")?;
        }
        None => {
            let n = app.store.len();
            writeln!(out, "{n} key(s) from WEATHER_API_KEYS, scope {SCOPE}")?;
            writeln!(out)?;
            writeln!(out, "  {}", call("\"x-api-key: $YOUR_KEY\"", "London"))?;
        }
    }
    writeln!(out)?;
    writeln!(out, "  # no credential needed")?;
    writeln!(out, "  grpcurl -plaintext {addr} list")?;
    writeln!(
        out,
        "  grpcurl -plaintext {addr} grpc.health.v1.Health/Check"
    )?;
    writeln!(out, "  curl http://{addr}/healthz")?;
    out.flush()
}

/// Completes on Ctrl-C.
pub async fn shutdown_signal() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_env()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log_filter)?)
        .with_writer(io::stderr)
        .init();
    let app = App::new(&config)?;
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    banner(&mut io::stdout().lock(), listener.local_addr()?, &app)?;
    serve(listener, app, shutdown_signal()).await?;
    eprintln!("shut down");
    Ok(())
}

// --- the service ---

/// `weather.v1.Weather`: deterministic fake weather.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeatherService;

#[tonic::async_trait]
impl Weather for WeatherService {
    async fn current(
        &self,
        request: Request<CurrentRequest>,
    ) -> Result<Response<CurrentReply>, Status> {
        // The caller keygate admitted, or `UNAUTHENTICATED` if the layer is missing.
        let caller = request.principal()?.id().to_owned();
        let q = request.into_inner().q;
        let place = q.trim();
        if place.is_empty() {
            return Err(Status::invalid_argument("q is missing: name a place."));
        }
        if place.chars().count() > MAX_PLACE_LEN || place.chars().any(char::is_control) {
            return Err(Status::invalid_argument(
                "q must be a place name of at most 100 characters.",
            ));
        }
        tracing::info!(caller, place, "current weather");
        let mut response = Response::new(CurrentReply {
            location: place.to_owned(),
            temp_c: temp_c(place),
        });
        // A JWT subject may hold characters metadata cannot; then it is left out.
        if let Ok(id) = MetadataValue::try_from(caller.as_str()) {
            response.metadata_mut().insert(CALLER_ID, id);
        }
        Ok(response)
    }
}

/// `GET /v1/me`: the caller as JSON (id, kind, owner, scopes; never the key).
async fn me(Extension(principal): Extension<Principal>) -> axum::Json<Principal> {
    axum::Json(principal)
}

/// The temperature at `place`, in °C, depending only on its name (case-insensitively): the
/// same as the HTTP example's `temp_c` for that city.
pub fn temp_c(place: &str) -> f64 {
    let mut seed = fnv1a(place.to_lowercase().as_bytes());
    // One step of xorshift64*, as the HTTP example takes its first draw.
    seed ^= seed >> 12;
    seed ^= seed << 25;
    seed ^= seed >> 27;
    let tenths = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % 450;
    let t = tenths as f64 / 10.0 - 10.0; // -10.0 ..= 34.9
    (t * 10.0).round() / 10.0
}

/// FNV-1a: a hash that is the same on every platform and every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // xorshift needs a non-zero state.
    h | 1
}
