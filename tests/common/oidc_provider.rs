//! A small OpenID provider on 127.0.0.1 for the tests, and the keys it signs tokens with.
//!
//! [`Provider`] is an axum app on a free port serving `/.well-known/openid-configuration` under
//! any issuer path, and JWK sets at paths the test chooses; the test changes its document, keys
//! and failures at run time ([`Mode`]) and counts the requests it gets. [`Signer`] is a private
//! key with its `kid`: its public JWK for [`Provider::publish`], and tokens made with
//! `TokenIssuer` or byte for byte ([`Signer::craft`]).
//!
//! The keys are the test-only fixtures: [`a1`] and [`a2`] (RSA), [`b1`] (EC P-256), and the
//! attacker's RSA key ([`attacker`]), which signs forgeries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::jwk::Jwk;
use keygate::jwt::{Algorithm, TokenIssuer};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// The fixture keys and `sign_raw`. Crates that include `jwt_support` themselves too get a
// second copy of it here, which is harmless.
#[allow(clippy::duplicate_mod)]
#[path = "../jwt_support/mod.rs"]
mod jwt_support;

use jwt_support::{attacker_signing_key, ec_signing_key, fixture, rsa_signing_key, sign_raw};

/// The longest any one step of a test may take: a request, a discovery, a shutdown.
pub const STEP: Duration = Duration::from_secs(5);

/// Where a discovery document is served, after the issuer's path.
pub const DOCUMENT_PATH: &str = "/.well-known/openid-configuration";

/// What an endpoint does with the next requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the current body.
    Serve,
    /// This status, with a short body.
    Status(u16),
    /// 200 with the current body, after this long.
    Slow(Duration),
}

#[derive(Default)]
struct Endpoints {
    /// The discovery document's body, served under any path ending in [`DOCUMENT_PATH`].
    document: Mutex<String>,
    document_mode: Mutex<Option<Mode>>,
    /// The paths the document was asked for, in order.
    document_paths: Mutex<Vec<String>>,
    /// JWK sets by path.
    jwks: Mutex<HashMap<String, String>>,
    jwks_mode: Mutex<Option<Mode>>,
    jwks_hits: Mutex<HashMap<String, usize>>,
    /// Every request, whatever its path.
    hits: AtomicUsize,
}

async fn answer(mode: Mode, body: String) -> Response {
    match mode {
        Mode::Serve => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Mode::Status(s) => (StatusCode::from_u16(s).unwrap(), "no").into_response(),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

async fn serve(State(e): State<Arc<Endpoints>>, uri: Uri) -> Response {
    e.hits.fetch_add(1, Ordering::SeqCst);
    let path = uri.path().to_owned();
    if path.ends_with(DOCUMENT_PATH) {
        e.document_paths.lock().unwrap().push(path);
        let mode = e.document_mode.lock().unwrap().unwrap_or(Mode::Serve);
        let body = e.document.lock().unwrap().clone();
        if body.is_empty() {
            return (StatusCode::NOT_FOUND, "not found").into_response();
        }
        return answer(mode, body).await;
    }
    let body = e.jwks.lock().unwrap().get(&path).cloned();
    match body {
        Some(body) => {
            *e.jwks_hits.lock().unwrap().entry(path).or_default() += 1;
            let mode = e.jwks_mode.lock().unwrap().unwrap_or(Mode::Serve);
            answer(mode, body).await
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// One OpenID provider on 127.0.0.1.
pub struct Provider {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base: String,
    endpoints: Arc<Endpoints>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Provider {
    /// A provider on a free port, serving nothing yet (404 for every path).
    pub async fn start() -> Self {
        let endpoints = Arc::new(Endpoints::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .fallback(get(serve))
            .with_state(endpoints.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            endpoints,
            stop: Some(stop),
            task,
        }
    }

    /// A provider whose issuer is [`url`](Self::url)`(path)`, serving its document and these
    /// keys at `/jwks`. Returns the provider and its issuer.
    pub async fn serving(path: &str, keys: &[&Signer]) -> (Self, String) {
        let provider = Self::start().await;
        let issuer = provider.url(path);
        provider.publish("/jwks", keys);
        provider.document(&issuer, "/jwks");
        (provider, issuer)
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Serves a document for `issuer` whose key set is at `jwks_path` on this server.
    pub fn document(&self, issuer: &str, jwks_path: &str) {
        self.document_json(&json!({
            "issuer": issuer,
            "jwks_uri": self.url(jwks_path),
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "response_types_supported": ["code"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }));
    }

    pub fn document_json(&self, document: &Value) {
        self.document_raw(document.to_string());
    }

    pub fn document_raw(&self, body: String) {
        *self.endpoints.document.lock().unwrap() = body;
    }

    pub fn document_mode(&self, mode: Mode) {
        *self.endpoints.document_mode.lock().unwrap() = Some(mode);
    }

    /// Serves these keys at `path`.
    pub fn publish(&self, path: &str, keys: &[&Signer]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
        let body = json!({ "keys": keys }).to_string();
        self.endpoints
            .jwks
            .lock()
            .unwrap()
            .insert(path.into(), body);
    }

    pub fn jwks_mode(&self, mode: Mode) {
        *self.endpoints.jwks_mode.lock().unwrap() = Some(mode);
    }

    pub fn document_hits(&self) -> usize {
        self.endpoints.document_paths.lock().unwrap().len()
    }

    pub fn document_paths(&self) -> Vec<String> {
        self.endpoints.document_paths.lock().unwrap().clone()
    }

    pub fn jwks_hits(&self, path: &str) -> usize {
        self.endpoints
            .jwks_hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests of any kind.
    pub fn hits(&self) -> usize {
        self.endpoints.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting connections and closes the idle ones: the provider is down, its port
    /// closed.
    pub async fn down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(STEP, &mut self.task)
            .await
            .expect("the server shuts down")
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and tokens

/// A signing key of a provider, with its `kid`.
pub struct Signer {
    pub key: EncodingKey,
    pub alg: Algorithm,
    pub kid: &'static str,
}

impl Signer {
    /// The public JWK of the key, with its `kid` and `alg`.
    pub fn jwk(&self) -> Value {
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).expect("a public JWK");
        jwk.common.key_id = Some(self.kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    /// A `TokenIssuer` of this key for `iss` and `aud`.
    pub fn issuer(&self, iss: &str, aud: &str) -> TokenIssuer {
        TokenIssuer::new(self.key.clone(), self.alg)
            .kid(self.kid)
            .issuer(iss)
            .audience(aud)
    }

    /// A token of this key with these exact claims, and a header of `alg`, `kid` and, if
    /// given, `typ`.
    pub fn craft(&self, typ: Option<&str>, claims: &Value) -> String {
        let mut header = json!({ "alg": self.alg, "kid": self.kid });
        if let Some(typ) = typ {
            header["typ"] = json!(typ);
        }
        sign_raw(
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
            &self.key,
            self.alg,
        )
    }

    /// The same key under another `kid`, or another algorithm's name in the header.
    pub fn posing_as(&self, kid: &'static str, alg: Algorithm) -> Self {
        Self {
            key: self.key.clone(),
            alg,
            kid,
        }
    }
}

/// Provider A's first key: the RSA fixture.
pub fn a1() -> Signer {
    Signer {
        key: rsa_signing_key(),
        alg: Algorithm::RS256,
        kid: "a-1",
    }
}

/// Provider A's next key: another RSA key.
pub fn a2() -> Signer {
    Signer {
        key: EncodingKey::from_rsa_pem(&fixture("jwks_rsa_private.pem")).unwrap(),
        alg: Algorithm::RS256,
        kid: "a-2",
    }
}

/// Provider B's key: the EC P-256 fixture.
pub fn b1() -> Signer {
    Signer {
        key: ec_signing_key(),
        alg: Algorithm::ES256,
        kid: "b-1",
    }
}

/// The attacker's RSA key, under A's `kid`.
pub fn attacker() -> Signer {
    Signer {
        key: attacker_signing_key(),
        alg: Algorithm::RS256,
        kid: "a-1",
    }
}

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
