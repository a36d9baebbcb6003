//! `keygate::openapi` through utoipa's own derive: the exact `components.securitySchemes` and
//! `security` a document gets for the layers a service configures — one header, a query
//! parameter and a header, bearer with JWTs, the default sources, an optional layer — through
//! `add_security_schemes`, `#[openapi(modifiers(...))]` and per-operation requirements.
#![cfg(feature = "utoipa")]

use keygate::auth::AuthLayer;
use keygate::credential::CredentialSource;
use keygate::openapi::{self, SecuritySchemes};
use keygate::store::{KeyStore, MemoryStore};
use serde_json::{Value, json};
use utoipa::{Modify, OpenApi};

/// The weather API's one route, for documents with an operation.
#[utoipa::path(get, path = "/v1/current.json", responses((status = 200, description = "The weather")))]
#[allow(dead_code)]
async fn current() {}

#[derive(OpenApi)]
#[openapi(info(title = "weather", version = "1"), paths(current))]
struct ApiDoc;

/// The document of `ApiDoc` with the schemes of `layer`, as JSON.
fn document<M>(layer: &AuthLayer<M>) -> Value {
    let mut doc = ApiDoc::openapi();
    openapi::add_security_schemes(&mut doc, layer);
    serde_json::to_value(&doc).expect("the document serializes")
}

fn keys() -> AuthLayer {
    AuthLayer::new(MemoryStore::new())
}

#[test]
fn one_header() {
    let doc = document(&keys().sources([CredentialSource::header("x-api-key")]));
    assert_eq!(
        doc["components"]["securitySchemes"],
        json!({
            "api_key_header": {
                "type": "apiKey",
                "in": "header",
                "name": "x-api-key",
                "description": "An API key."
            }
        })
    );
    assert_eq!(doc["security"], json!([{ "api_key_header": [] }]));
}

#[test]
fn a_query_parameter_and_a_header() {
    let layer = keys().sources([
        CredentialSource::query("key"),
        CredentialSource::header("x-weather-key"),
    ]);
    let doc = document(&layer);
    assert_eq!(
        doc["components"]["securitySchemes"],
        json!({
            "api_key_query": {
                "type": "apiKey",
                "in": "query",
                "name": "key",
                "description": "An API key."
            },
            "api_key_header": {
                "type": "apiKey",
                "in": "header",
                "name": "x-weather-key",
                "description": "An API key."
            }
        })
    );
    // In the order of the layer's sources.
    assert_eq!(
        doc["security"],
        json!([{ "api_key_query": [] }, { "api_key_header": [] }])
    );
}

#[test]
fn the_default_sources() {
    let doc = document(&keys());
    assert_eq!(
        doc["components"]["securitySchemes"],
        json!({
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key as the bearer token."
            },
            "api_key_header": {
                "type": "apiKey",
                "in": "header",
                "name": "x-api-key",
                "description": "An API key."
            },
            "api_key_query": {
                "type": "apiKey",
                "in": "query",
                "name": "key",
                "description": "An API key."
            }
        })
    );
    assert_eq!(
        doc["security"],
        json!([{ "bearer": [] }, { "api_key_header": [] }, { "api_key_query": [] }])
    );
    // The operation keeps its own description and adds no security of its own.
    let operation = &doc["paths"]["/v1/current.json"]["get"];
    assert_eq!(operation["responses"]["200"]["description"], "The weather");
    assert!(operation.get("security").is_none());
}

#[cfg(feature = "jwt")]
mod jwt {
    use keygate::jwt::{JwtKey, JwtVerifier};

    use super::*;

    fn verifier() -> JwtVerifier {
        JwtVerifier::with_keys([JwtKey::hmac(b"a secret of at least 32 bytes!!!")])
    }

    #[test]
    fn bearer_with_jwts_and_keys() {
        let layer = keys()
            .sources([
                CredentialSource::bearer(),
                CredentialSource::cookie("session"),
            ])
            .jwt(verifier());
        let doc = document(&layer);
        assert_eq!(
            doc["components"]["securitySchemes"],
            json!({
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT or an API key as the bearer token."
                },
                "api_key_cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "session",
                    "description": "An API key or a JWT."
                }
            })
        );
        assert_eq!(
            doc["security"],
            json!([{ "bearer": [] }, { "api_key_cookie": [] }])
        );
    }

    #[test]
    fn bearer_with_jwts_only() {
        let layer = AuthLayer::jwt_only(verifier()).sources([CredentialSource::bearer()]);
        let doc = document(&layer);
        assert_eq!(
            doc["components"]["securitySchemes"],
            json!({
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT as the bearer token."
                }
            })
        );
        assert_eq!(doc["security"], json!([{ "bearer": [] }]));
    }
}

#[test]
fn an_optional_layer_also_admits_requests_without_a_credential() {
    let layer = keys()
        .sources([CredentialSource::header("x-api-key")])
        .optional();
    let doc = document(&layer);
    assert_eq!(doc["security"], json!([{ "api_key_header": [] }, {}]));
}

/// The layer of the service, over whatever store it runs with.
fn auth(store: impl KeyStore) -> AuthLayer {
    AuthLayer::new(store).sources([
        CredentialSource::bearer(),
        CredentialSource::header("x-api-key"),
    ])
}

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        auth(MemoryStore::new())
            .security_schemes()
            .rename(openapi::API_KEY_HEADER, "ApiKeyAuth")
            .modify(doc);
    }
}

#[derive(OpenApi)]
#[openapi(info(title = "weather", version = "1"), paths(current), modifiers(&Security))]
struct ModifiedDoc;

#[test]
fn as_a_modifier_of_the_derive() {
    let doc = serde_json::to_value(ModifiedDoc::openapi()).expect("the document serializes");
    assert_eq!(
        doc["components"]["securitySchemes"],
        json!({
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key as the bearer token."
            },
            "ApiKeyAuth": {
                "type": "apiKey",
                "in": "header",
                "name": "x-api-key",
                "description": "An API key."
            }
        })
    );
    assert_eq!(
        doc["security"],
        json!([{ "bearer": [] }, { "ApiKeyAuth": [] }])
    );
}

#[test]
fn one_operation_with_scopes() {
    let schemes: SecuritySchemes = auth(MemoryStore::new()).security_schemes();
    let mut doc = ApiDoc::openapi();
    schemes.add_schemes_to(&mut doc);
    let operation = doc
        .paths
        .paths
        .get_mut("/v1/current.json")
        .and_then(|item| item.get.as_mut())
        .expect("the operation is in the document");
    operation.security = Some(schemes.requirements_with_scopes(["weather:read"]));

    let doc = serde_json::to_value(&doc).expect("the document serializes");
    assert!(doc.get("security").is_none(), "no global requirement");
    assert_eq!(
        doc["paths"]["/v1/current.json"]["get"]["security"],
        json!([{ "bearer": ["weather:read"] }, { "api_key_header": ["weather:read"] }])
    );
    let mut names: Vec<&str> = doc["components"]["securitySchemes"]
        .as_object()
        .expect("the schemes are in the document")
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["api_key_header", "bearer"]);
}
