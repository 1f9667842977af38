//! Bearer tokens as HTTP and gRPC requests carry them (`auth:` in DESIGN.md §5): the token of
//! an `Authorization: Bearer` header, or the password of `Basic` auth, compared with the
//! configured tokens in time that does not depend on where they differ.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use base64::Engine as _;

/// The token a request presents, if its `Authorization` header is one Vigil understands.
pub fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (kind, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if kind.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_string());
    }
    if kind.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// Compares two secrets in time independent of where they first differ.
pub fn same_secret(known: &str, presented: &str) -> bool {
    let (known, presented) = (known.as_bytes(), presented.as_bytes());
    let mut difference = u8::from(known.len() != presented.len());
    for (index, byte) in known.iter().enumerate() {
        difference |= byte ^ presented.get(index).copied().unwrap_or(0);
    }
    difference == 0
}

/// The tokens that may write through a listener; none configured means the listener is open.
#[derive(Clone, Debug, Default)]
pub struct IngestTokens {
    tokens: Arc<Vec<String>>,
}

impl IngestTokens {
    /// Tokens that may write (`auth.ingest_tokens` and `auth.admin_tokens`).
    pub fn new(tokens: Vec<String>) -> Self {
        IngestTokens {
            tokens: Arc::new(tokens),
        }
    }

    /// True when no token is configured, or the request presents one of them.
    pub fn allow(&self, headers: &HeaderMap) -> bool {
        if self.tokens.is_empty() {
            return true;
        }
        presented_token(headers)
            .is_some_and(|token| self.tokens.iter().any(|known| same_secret(known, &token)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn bearer_and_basic_carry_the_token() {
        assert_eq!(presented_token(&with("Bearer abc")).as_deref(), Some("abc"));
        assert_eq!(
            presented_token(&with("bearer  abc ")).as_deref(),
            Some("abc")
        );
        // "shipper:abc"
        assert_eq!(
            presented_token(&with("Basic c2hpcHBlcjphYmM=")).as_deref(),
            Some("abc")
        );
        assert_eq!(presented_token(&with("Digest abc")), None);
        assert_eq!(presented_token(&with("Basic !!!")), None);
    }

    #[test]
    fn only_configured_tokens_are_allowed_and_none_means_open() {
        let tokens = IngestTokens::new(vec!["abc".to_string()]);
        assert!(tokens.allow(&with("Bearer abc")));
        assert!(!tokens.allow(&with("Bearer abcd")));
        assert!(!tokens.allow(&with("Bearer ab")));
        assert!(!tokens.allow(&HeaderMap::new()));
        assert!(IngestTokens::default().allow(&HeaderMap::new()));
    }
}
