//! keygate on a tonic server, driven by real tonic clients over TCP on 127.0.0.1: the gRPC
//! example (`examples/grpc/main.rs`, included below) with its generated client, and a server with the
//! layer on every service. Each case asserts the client-side `tonic::Code` and message.

#[path = "../main.rs"]
#[allow(dead_code)]
mod grpc_example;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use grpc_example::pb::weather_client::WeatherClient;
use grpc_example::pb::weather_server::WeatherServer;
use grpc_example::pb::{CurrentReply, CurrentRequest};
use grpc_example::{App, CALLER_ID, Config, WeatherService};
use keygate::auth::AuthLayer;
use keygate::clock::ManualClock;
use keygate::jwt::TokenIssuer;
use keygate::key::{ApiKey, KeyRecord};
use keygate::store::MemoryStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// No network wait in these tests lasts longer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The HS256 secret the server verifies tokens with.
const SECRET: &str = "a test secret of at least 32 bytes, for HS256";
/// `WEATHER_API_KEYS` registers it as `key-1` with scope `weather:read`.
const KEY: &str = "test-key-0123456789";
/// A key registered by the test, with another scope only.
const OTHER_SCOPE_KEY: &str = "test-key-other-scope";

const NO_CREDENTIAL: &str = "The request carries no credential.";
const NOT_VALID: &str = "The credential is not valid.";
const LACKS_SCOPE: &str = "The credential lacks the scope \"weather:read\".";

/// Runs `fut`, failing the test if it takes longer than [`TIMEOUT`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {TIMEOUT:?}"))
}

/// The example's server on a free port; it stops when this is dropped.
struct Running {
    addr: SocketAddr,
    app: App,
    _stop: oneshot::Sender<()>,
}

/// Starts the example with these environment variables (and `KEY`, `SECRET`), plus a key with
/// scope `other:read` only.
async fn start(vars: &[(&str, &str)]) -> Running {
    let mut all = vec![("WEATHER_API_KEYS", KEY), ("JWT_SECRET", SECRET)];
    all.extend_from_slice(vars);
    let config = Config::from_vars(|name| {
        all.iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .expect("a valid configuration");
    let app = App::new(&config).expect("the keys register");
    app.store
        .insert(
            &ApiKey::new(OTHER_SCOPE_KEY),
            KeyRecord::new("key-other", "someone").with_scopes(["other:read"]),
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = grpc_example::serve(listener, app.clone(), async {
        let _ = stopped.await;
    });
    tokio::spawn(async move { server.await.expect("the server runs") });
    Running {
        addr,
        app,
        _stop: stop,
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT);
    within("connect", endpoint.connect())
        .await
        .expect("the server accepts connections")
}

/// Calls `Current` with `q`, sending `credential` as metadata `(name, value)`.
async fn current(
    addr: SocketAddr,
    credential: Option<(&'static str, &str)>,
    q: &str,
) -> Result<Response<CurrentReply>, Status> {
    let mut client = WeatherClient::new(channel(addr).await);
    let mut request = Request::new(CurrentRequest { q: q.to_owned() });
    if let Some((name, value)) = credential {
        request
            .metadata_mut()
            .insert(name, value.parse().expect("valid metadata"));
    }
    within("Current", client.current(request)).await
}

fn api_key(key: &str) -> Option<(&'static str, &str)> {
    Some(("x-api-key", key))
}

fn bearer(credential: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {credential}")))
}

/// Calls `Current` with a bearer credential.
async fn current_bearer(
    addr: SocketAddr,
    credential: &str,
    q: &str,
) -> Result<Response<CurrentReply>, Status> {
    let (name, value) = bearer(credential).unwrap();
    current(addr, Some((name, &value)), q).await
}

#[track_caller]
fn assert_status(
    result: Result<Response<CurrentReply>, Status>,
    code: Code,
    message: &str,
) -> Status {
    match result {
        Ok(r) => panic!("expected {code:?} {message:?}, got OK {:?}", r.get_ref()),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(status.message(), message, "{status:?}");
            status
        }
    }
}

#[track_caller]
fn assert_weather(result: Result<Response<CurrentReply>, Status>, place: &str, caller: &str) {
    let response = result.unwrap_or_else(|s| panic!("expected OK, got {s:?}"));
    assert_eq!(
        response
            .metadata()
            .get(CALLER_ID)
            .and_then(|v| v.to_str().ok()),
        Some(caller),
        "the method reads the principal"
    );
    let reply = response.into_inner();
    assert_eq!(reply.location, place);
    assert_eq!(reply.temp_c, grpc_example::temp_c(place));
    assert!((-10.0..35.0).contains(&reply.temp_c), "{}", reply.temp_c);
}

#[tokio::test]
async fn no_credential_is_unauthenticated() {
    let server = start(&[]).await;
    let status = assert_status(
        current(server.addr, None, "London").await,
        Code::Unauthenticated,
        NO_CREDENTIAL,
    );
    // A trailers-only answer (the status came in the headers, with the gRPC content type): no
    // rate-limit metadata, nothing about the realm.
    assert_eq!(
        status.metadata().get("content-type").unwrap(),
        "application/grpc"
    );
    assert!(status.metadata().get("ratelimit").is_none());
    assert!(status.metadata().get("www-authenticate").is_none());
}

#[tokio::test]
async fn bad_keys_are_unauthenticated_alike() {
    let server = start(&[]).await;
    for key in [
        "not-a-key",
        // The example's key format, with a bad checksum: turned away before the store.
        "wk_live_0000000000000000000000000000000000000",
    ] {
        assert_status(
            current(server.addr, api_key(key), "London").await,
            Code::Unauthenticated,
            NOT_VALID,
        );
        assert_status(
            current_bearer(server.addr, key, "London").await,
            Code::Unauthenticated,
            NOT_VALID,
        );
    }
    // Two credentials at once: ambiguous, also UNAUTHENTICATED, with the reason.
    let mut client = WeatherClient::new(channel(server.addr).await);
    let mut request = Request::new(CurrentRequest { q: "London".into() });
    request
        .metadata_mut()
        .insert("x-api-key", KEY.parse().unwrap());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    assert_status(
        within("Current", client.current(request)).await,
        Code::Unauthenticated,
        "The request carries more than one credential; send exactly one.",
    );
}

#[tokio::test]
async fn good_key_in_x_api_key_metadata() {
    let server = start(&[]).await;
    let result = current(server.addr, api_key(KEY), "London").await;
    let response = result.as_ref().expect("OK");
    // Admitted responses carry the caller's rate-limit state.
    assert!(
        response.metadata().get("ratelimit").is_some(),
        "{response:?}"
    );
    assert!(response.metadata().get("ratelimit-policy").is_some());
    assert_weather(result, "London", "key-1");
}

#[tokio::test]
async fn good_key_as_bearer_metadata() {
    let server = start(&[]).await;
    assert_weather(
        current_bearer(server.addr, KEY, "Paris").await,
        "Paris",
        "key-1",
    );
}

#[tokio::test]
async fn issued_demo_key_works() {
    // Without WEATHER_API_KEYS the example issues a demo key.
    let config = Config::from_vars(|_| None).unwrap();
    let app = App::new(&config).unwrap();
    let key = app.demo_key.clone().expect("a demo key");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    let token = app.token("demo");
    tokio::spawn(grpc_example::serve(listener, app, async {
        let _ = stopped.await;
    }));
    assert_weather(
        current(addr, api_key(key.expose_secret()), "Oslo").await,
        "Oslo",
        "demo",
    );
    assert_weather(current_bearer(addr, &token, "Oslo").await, "Oslo", "demo");
}

#[tokio::test]
async fn good_jwt_is_admitted_as_its_subject() {
    let server = start(&[]).await;
    let token = TokenIssuer::hmac(SECRET.as_bytes())
        .issue("user-7", ["weather:read"])
        .unwrap()
        .access_token;
    assert_weather(
        current_bearer(server.addr, &token, "Lisbon").await,
        "Lisbon",
        "user-7",
    );
}

#[tokio::test]
async fn bad_jwts_are_unauthenticated() {
    let server = start(&[]).await;
    let other_secret = TokenIssuer::hmac(b"another secret, also at least 32 bytes")
        .issue("user-7", ["weather:read"])
        .unwrap()
        .access_token;
    assert_status(
        current_bearer(server.addr, &other_secret, "Lisbon").await,
        Code::Unauthenticated,
        NOT_VALID,
    );
    let expired = TokenIssuer::hmac(SECRET.as_bytes())
        .clock(ManualClock::at(
            std::time::SystemTime::now() - Duration::from_secs(3 * 3600),
        ))
        .issue("user-7", ["weather:read"])
        .unwrap()
        .access_token;
    assert_status(
        current_bearer(server.addr, &expired, "Lisbon").await,
        Code::Unauthenticated,
        "The token has expired.",
    );
}

#[tokio::test]
async fn jwt_issuer_audience_and_subject_claim_from_the_environment() {
    let server = start(&[
        ("JWT_ISSUER", "https://auth.example.com"),
        ("JWT_AUDIENCE", "weather"),
        ("JWT_SUBJECT_CLAIM", "userId"),
    ])
    .await;
    // The example's own issuer follows the configuration.
    let token = server.app.token("user-9");
    assert_weather(
        current_bearer(server.addr, &token, "Rome").await,
        "Rome",
        "user-9",
    );
    // A token without `iss` and `aud` is turned away.
    let plain = TokenIssuer::hmac(SECRET.as_bytes())
        .issue("user-9", ["weather:read"])
        .unwrap()
        .access_token;
    assert_status(
        current_bearer(server.addr, &plain, "Rome").await,
        Code::Unauthenticated,
        NOT_VALID,
    );
}

#[tokio::test]
async fn insufficient_scope_is_permission_denied() {
    let server = start(&[]).await;
    assert_status(
        current(server.addr, api_key(OTHER_SCOPE_KEY), "London").await,
        Code::PermissionDenied,
        LACKS_SCOPE,
    );
    let token = TokenIssuer::hmac(SECRET.as_bytes())
        .issue("user-7", ["weather:write", "other:read"])
        .unwrap()
        .access_token;
    assert_status(
        current_bearer(server.addr, &token, "London").await,
        Code::PermissionDenied,
        LACKS_SCOPE,
    );
}

#[tokio::test]
async fn rate_limited_is_resource_exhausted_with_the_headers() {
    let server = start(&[("RATE_LIMIT", "2/min")]).await;
    for _ in 0..2 {
        assert_weather(
            current(server.addr, api_key(KEY), "London").await,
            "London",
            "key-1",
        );
    }
    let result = current(server.addr, api_key(KEY), "London").await;
    let status = result.expect_err("the third request in a minute is limited");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let metadata = status.metadata();
    let retry_after: u64 = metadata
        .get("retry-after")
        .expect("retry-after metadata")
        .to_str()
        .unwrap()
        .parse()
        .expect("whole seconds");
    // 2/min: one more request every 30 s.
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(
        status.message(),
        format!("Too many requests: the \"default\" limit is spent; retry in {retry_after} s.")
    );
    let ratelimit = metadata.get("ratelimit").expect("ratelimit metadata");
    assert!(
        ratelimit.to_str().unwrap().contains(";r=0;"),
        "{ratelimit:?}"
    );
    let policy = metadata.get("ratelimit-policy").expect("ratelimit-policy");
    assert!(policy.to_str().unwrap().contains("q=2"), "{policy:?}");

    // The limit is per caller: a token for another subject is not limited yet.
    let token = server.app.token("user-7");
    assert_weather(
        current_bearer(server.addr, &token, "London").await,
        "London",
        "user-7",
    );
    // Refused requests are not errors of the method: an empty q would be INVALID_ARGUMENT,
    // but the limit answers first.
    assert_status(
        current(server.addr, api_key(KEY), "").await,
        Code::ResourceExhausted,
        status.message(),
    );
}

#[tokio::test]
async fn the_method_reads_the_principal_and_checks_its_input() {
    let server = start(&[]).await;
    assert_weather(
        current(server.addr, api_key(KEY), "  Berlin ").await,
        "Berlin",
        "key-1",
    );
    assert_status(
        current(server.addr, api_key(KEY), " ").await,
        Code::InvalidArgument,
        "q is missing: name a place.",
    );
}

#[tokio::test]
async fn health_and_reflection_need_no_credential() {
    let server = start(&[]).await;
    let mut health = HealthClient::new(channel(server.addr).await);
    for service in ["", "weather.v1.Weather"] {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let reply = within("Health/Check", health.check(request))
            .await
            .unwrap_or_else(|s| panic!("health check of {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "{service:?}");
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel(server.addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = within(
        "ServerReflectionInfo",
        reflection.server_reflection_info(tonic::codegen::tokio_stream::iter([request])),
    )
    .await
    .expect("reflection answers")
    .into_inner();
    let reply = within("reflection reply", stream.message())
        .await
        .expect("a reply")
        .expect("a message");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "weather.v1.Weather"
        ]
    );
}

#[tokio::test]
async fn plain_http_on_the_same_server_keeps_http_errors() {
    let server = start(&[]).await;
    let http = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    let base = format!("http://{}", server.addr);

    let res = within("GET /v1/me", http.get(format!("{base}/v1/me")).send())
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    let headers = res.headers().clone();
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"weather\"");
    assert!(headers.get("grpc-status").is_none(), "{headers:?}");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], 401);
    assert_eq!(body["detail"], NO_CREDENTIAL);

    // The gRPC method's path, asked without the gRPC content type, answers in HTTP too.
    let res = within(
        "POST /weather.v1.Weather/Current",
        http.post(format!("{base}/weather.v1.Weather/Current"))
            .body("{}")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(res.headers().get("grpc-status").is_none());

    let res = within(
        "GET /v1/me with a key",
        http.get(format!("{base}/v1/me"))
            .header("x-api-key", KEY)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let me: serde_json::Value = res.json().await.unwrap();
    assert_eq!(me["id"], "key-1");
    assert_eq!(me["kind"], "api_key");

    let res = within("GET /healthz", http.get(format!("{base}/healthz")).send())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok");
}

/// `Server::builder().layer(...)`: the layer on every service of the server, health included.
#[tokio::test]
async fn server_wide_layer_covers_every_service() {
    let store = MemoryStore::new();
    let key = store
        .issue(KeyRecord::new("key-a", "acme").with_scopes(["weather:read"]))
        .unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    let server = Server::builder()
        .layer(AuthLayer::new(store))
        .add_service(health)
        .add_service(WeatherServer::new(WeatherService))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        );
    tokio::spawn(server);

    assert_status(
        current(addr, None, "London").await,
        Code::Unauthenticated,
        NO_CREDENTIAL,
    );
    assert_weather(
        current(addr, api_key(key.expose_secret()), "London").await,
        "London",
        "key-a",
    );
    let mut health = HealthClient::new(channel(addr).await);
    let status = within(
        "Health/Check",
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect_err("health is behind the layer too");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), NO_CREDENTIAL);
}

/// Serves `routes` on a free port until the returned sender is dropped.
async fn serve_routes(routes: tonic::service::Routes) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        );
    tokio::spawn(server);
    (addr, stop)
}

/// `request.principal()` tells an anonymous caller (optional mode) from a method that no
/// `AuthLayer` covers.
#[tokio::test]
async fn principal_helper_without_a_principal() {
    // Optional mode: let through without a credential; the method asks for one.
    let optional = tower::ServiceBuilder::new()
        .layer(AuthLayer::new(MemoryStore::new()).optional())
        .service(WeatherServer::new(WeatherService));
    let (addr, _stop) = serve_routes(tonic::service::Routes::new(optional)).await;
    assert_status(
        current(addr, None, "London").await,
        Code::Unauthenticated,
        NO_CREDENTIAL,
    );

    // No layer at all: a server bug, not the caller's.
    let bare = WeatherServer::new(WeatherService);
    let (addr, _stop) = serve_routes(tonic::service::Routes::new(bare)).await;
    assert_status(
        current(addr, api_key(KEY), "London").await,
        Code::Internal,
        "The server's authentication is misconfigured: no Principal in the request; is \
         keygate's AuthLayer applied to this route?",
    );
}

#[test]
fn configuration_from_the_environment() {
    let config = |vars: &[(&str, &str)]| {
        let vars = vars.to_vec();
        Config::from_vars(move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    };
    let default = config(&[]).unwrap();
    assert_eq!(default.addr.to_string(), "127.0.0.1:50051");
    assert_eq!(default.rate_limit, "10/s".parse().unwrap());
    assert!(default.api_keys.is_empty() && default.jwt_secret.is_none());

    let set = config(&[
        ("KEYGATE_ADDR", "127.0.0.1:0"),
        ("WEATHER_API_KEYS", " k1, ,k2 "),
        ("RATE_LIMIT", "100/min"),
        ("JWT_SUBJECT_CLAIM", "sub"),
    ])
    .unwrap();
    assert_eq!(set.addr.port(), 0);
    let keys: Vec<_> = set.api_keys.iter().map(|k| k.expose_secret()).collect();
    assert_eq!(keys, ["k1", "k2"]);
    assert_eq!(set.rate_limit, keygate::Quota::per_minute(100));
    assert_eq!(set.jwt_subject_claim, None, "sub is the default");
    // Neither keys nor the secret are printed.
    let debug = format!("{set:?}");
    assert!(!debug.contains("k1") && !debug.contains("k2"), "{debug}");

    assert!(config(&[("RATE_LIMIT", "lots")]).is_err());
    assert!(config(&[("KEYGATE_ADDR", "localhost")]).is_err());
    assert!(config(&[("JWT_SECRET", "")]).is_err());
    let twice = config(&[("WEATHER_API_KEYS", "k1,k1")]).unwrap();
    let error = App::new(&twice).unwrap_err().to_string();
    assert_eq!(error, "WEATHER_API_KEYS: key #2 is listed twice");
}
