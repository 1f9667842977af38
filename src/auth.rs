//! `auth:` — bearer tokens for the HTTP API (DESIGN.md §5).
//!
//! Three scopes: `ingest` (remote_write, import, JSON logs, `_bulk`, alerts posted by a
//! Prometheus), `read` (queries, searches, `/metrics`, listings) and `admin` (reload, creating
//! and expiring silences). An admin token may do everything, and the health endpoints need
//! none. A token travels as `Authorization: Bearer <token>`, or as the password of HTTP basic
//! auth (for shippers that only speak basic auth, such as Fluent Bit's es output).
//!
//! With no token configured, auth is off: that is the default on loopback. Binding the HTTP
//! API or an OTLP listener to any other address without tokens is refused at start unless
//! `auth.disabled: true` says so explicitly.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Deserializer};
use vigil_collector::tokens::{presented_token, same_secret, IngestTokens};

/// `auth:`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens that may write: remote_write, import, logs, `_bulk`, `POST /api/v2/alerts`.
    #[serde(deserialize_with = "one_or_many")]
    pub ingest_tokens: Vec<String>,
    /// Tokens that may read: queries, searches, traces, alerts, `/metrics`.
    #[serde(deserialize_with = "one_or_many")]
    pub read_tokens: Vec<String>,
    /// Tokens that may do everything, including reload and silences.
    #[serde(deserialize_with = "one_or_many")]
    pub admin_tokens: Vec<String>,
    /// Serve a non-loopback address without tokens anyway (behind a proxy that
    /// authenticates, or on a trusted network).
    pub disabled: bool,
}

/// A token list, or one token (so `VIGIL_AUTH_READ_TOKENS=secret` works).
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(token) => vec![token],
        OneOrMany::Many(tokens) => tokens,
    })
}

impl AuthConfig {
    /// The tokens that may write through the OTLP listeners: ingest and admin tokens (none
    /// when auth is off).
    pub fn ingest_tokens(&self) -> IngestTokens {
        IngestTokens::new(
            self.ingest_tokens
                .iter()
                .chain(&self.admin_tokens)
                .cloned()
                .collect(),
        )
    }

    /// True when at least one token is configured.
    pub fn enabled(&self) -> bool {
        !(self.ingest_tokens.is_empty()
            && self.read_tokens.is_empty()
            && self.admin_tokens.is_empty())
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Health endpoints: no token.
    Public,
    /// Writes of telemetry.
    Ingest,
    /// Reads.
    Read,
    /// Changes to Vigil's own state.
    Admin,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Public => "public",
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// The scope an HTTP API request needs.
pub fn scope_of(method: &Method, path: &str) -> Scope {
    match path {
        "/healthz" | "/readyz" => return Scope::Public,
        "/-/reload" => return Scope::Admin,
        "/api/v1/write" | "/api/v1/import" => return Scope::Ingest,
        "/api/v1/logs" if method == Method::POST => return Scope::Ingest,
        "/api/v2/alerts" if method == Method::POST => return Scope::Ingest,
        "/api/v2/silences" if method == Method::POST => return Scope::Admin,
        _ => {}
    }
    if path.ends_with("/_bulk") {
        return Scope::Ingest;
    }
    if path.starts_with("/api/v2/silence/") && method == Method::DELETE {
        return Scope::Admin;
    }
    Scope::Read
}

/// Checks the tokens of the HTTP API.
#[derive(Clone)]
pub struct Authenticator {
    config: Arc<AuthConfig>,
}

impl Authenticator {
    /// Returns an authenticator for `config`.
    pub fn new(config: AuthConfig) -> Self {
        Authenticator {
            config: Arc::new(config),
        }
    }

    /// Decides whether the request's credentials grant `scope`.
    pub fn check(&self, scope: Scope, headers: &HeaderMap) -> Result<(), AuthError> {
        if scope == Scope::Public || !self.config.enabled() {
            return Ok(());
        }
        let token = presented_token(headers).ok_or(AuthError::Missing)?;
        let holds = |tokens: &[String]| tokens.iter().any(|known| same_secret(known, &token));
        if holds(&self.config.admin_tokens) {
            return Ok(());
        }
        let granted = match scope {
            Scope::Ingest => holds(&self.config.ingest_tokens),
            Scope::Read => holds(&self.config.read_tokens),
            Scope::Admin | Scope::Public => false,
        };
        if granted {
            return Ok(());
        }
        if holds(&self.config.ingest_tokens) || holds(&self.config.read_tokens) {
            Err(AuthError::Forbidden(scope))
        } else {
            Err(AuthError::Unknown)
        }
    }
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header Vigil understands.
    Missing,
    /// A token that is not configured.
    Unknown,
    /// A valid token without the needed scope.
    Forbidden(Scope),
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            AuthError::Missing => (
                StatusCode::UNAUTHORIZED,
                "authentication required: send `Authorization: Bearer <token>`".to_string(),
            ),
            AuthError::Unknown => (StatusCode::UNAUTHORIZED, "unknown token".to_string()),
            AuthError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                format!(
                    "this token may not do that: it needs a {} token",
                    scope.name()
                ),
            ),
        };
        let body = Json(serde_json::json!({
            "status": "error",
            "errorType": if status == StatusCode::FORBIDDEN { "forbidden" } else { "unauthorized" },
            "error": error,
        }));
        let mut response = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"vigil\""),
            );
        }
        response
    }
}

/// Axum middleware: refuses requests whose credentials do not grant their scope.
pub async fn require(
    State(authenticator): State<Authenticator>,
    request: Request,
    next: Next,
) -> Response {
    let scope = scope_of(request.method(), request.uri().path());
    match authenticator.check(scope, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator::new(AuthConfig {
            ingest_tokens: vec!["in-token".to_string()],
            read_tokens: vec!["read-token".to_string()],
            admin_tokens: vec!["admin-token".to_string()],
            disabled: false,
        })
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn scopes_follow_method_and_path() {
        assert_eq!(scope_of(&Method::GET, "/healthz"), Scope::Public);
        assert_eq!(scope_of(&Method::POST, "/api/v1/write"), Scope::Ingest);
        assert_eq!(
            scope_of(&Method::POST, "/logstash-2026/_bulk"),
            Scope::Ingest
        );
        assert_eq!(scope_of(&Method::POST, "/api/v1/logs"), Scope::Ingest);
        assert_eq!(scope_of(&Method::GET, "/api/v1/logs/search"), Scope::Read);
        assert_eq!(scope_of(&Method::POST, "/api/v1/query"), Scope::Read);
        assert_eq!(scope_of(&Method::POST, "/api/v2/alerts"), Scope::Ingest);
        assert_eq!(scope_of(&Method::GET, "/api/v2/alerts"), Scope::Read);
        assert_eq!(scope_of(&Method::POST, "/api/v2/silences"), Scope::Admin);
        assert_eq!(
            scope_of(&Method::DELETE, "/api/v2/silence/abc"),
            Scope::Admin
        );
        assert_eq!(scope_of(&Method::POST, "/-/reload"), Scope::Admin);
    }

    #[test]
    fn tokens_grant_their_scope_and_admin_grants_all() {
        let auth = authenticator();
        assert_eq!(
            auth.check(Scope::Read, &HeaderMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(auth.check(Scope::Public, &HeaderMap::new()), Ok(()));
        assert_eq!(auth.check(Scope::Read, &bearer("read-token")), Ok(()));
        assert_eq!(
            auth.check(Scope::Ingest, &bearer("read-token")),
            Err(AuthError::Forbidden(Scope::Ingest))
        );
        assert_eq!(auth.check(Scope::Ingest, &bearer("in-token")), Ok(()));
        assert_eq!(auth.check(Scope::Admin, &bearer("admin-token")), Ok(()));
        assert_eq!(auth.check(Scope::Read, &bearer("admin-token")), Ok(()));
        assert_eq!(
            auth.check(Scope::Read, &bearer("read-token2")),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            auth.check(Scope::Read, &bearer("read-toke")),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn basic_auth_carries_the_token_as_password() {
        let mut headers = HeaderMap::new();
        // "fluent-bit:in-token"
        headers.insert(
            header::AUTHORIZATION,
            "Basic Zmx1ZW50LWJpdDppbi10b2tlbg==".parse().unwrap(),
        );
        assert_eq!(authenticator().check(Scope::Ingest, &headers), Ok(()));
    }

    #[test]
    fn no_tokens_means_auth_is_off() {
        let auth = Authenticator::new(AuthConfig::default());
        assert_eq!(auth.check(Scope::Admin, &HeaderMap::new()), Ok(()));
    }
}
