//! A route's authentication: the bearer check (401/403 per the MCP authorization spec),
//! the `WWW-Authenticate` challenge, and the RFC 9728 protected resource metadata.

use std::sync::Arc;
use std::time::Duration;

use crate::api_keys::ApiKeys;
use crate::error::AuthError;
use crate::jwt::JwtVerifier;
use crate::principal::Principal;

/// The longest a request waits for a JWKS refetch its token's unknown key id asked for.
/// Longer than the gateway's fetch timeout, so a slow but working identity provider
/// still answers in time.
pub const REFETCH_WAIT: Duration = Duration::from_secs(6);

/// Which name of a verified client certificate becomes the principal's subject
/// (`auth.client_certificate.subject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateName {
    /// The subject's common name.
    CommonName,
    /// The first DNS subject alternative name.
    Dns,
    /// The first URI subject alternative name (a SPIFFE id, for instance).
    Uri,
    /// The first email subject alternative name.
    Email,
}

/// The issuer of principals made from client certificates, for policies (`issuer: mtls`).
pub const CERTIFICATE_ISSUER: &str = "mtls";

/// How one route authenticates its callers.
pub struct RouteAuth {
    /// Verifies bearer JWTs, when the route accepts them.
    pub verifier: Option<JwtVerifier>,
    /// API keys, when the route accepts them (in `X-Api-Key` or as a bearer token).
    pub api_keys: Option<ApiKeys>,
    /// Client certificates verified by the TLS listener, when the route accepts them:
    /// the name that becomes the subject.
    pub client_certificate: Option<CertificateName>,
    /// Scopes every call needs (403 `insufficient_scope` without them).
    pub required_scopes: Vec<String>,
    /// Scopes advertised in the resource metadata.
    pub scopes_supported: Vec<String>,
    /// Authorization servers advertised in the resource metadata.
    pub authorization_servers: Vec<String>,
}

impl std::fmt::Debug for RouteAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteAuth")
            .field("required_scopes", &self.required_scopes)
            .field("authorization_servers", &self.authorization_servers)
            .finish_non_exhaustive()
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl RouteAuth {
    /// Checks the request's `Authorization` (or `X-Api-Key`) header at Unix time `now`.
    /// A JWT whose key id a fetched JWKS lacks waits up to [`REFETCH_WAIT`] for one
    /// shared, rate-limited refetch of that set.
    ///
    /// A request without either header on a connection whose client certificate the
    /// listener verified is the certificate's principal, when the route accepts
    /// certificates (`required_scopes` do not apply: certificates carry no scopes, and
    /// policies name certificate principals by subject and the issuer `mtls`).
    pub async fn check(
        &self,
        authorization: Option<&[u8]>,
        api_key: Option<&[u8]>,
        client_certificate: Option<&portcullis_tls::PeerIdentity>,
        now: u64,
    ) -> Result<Arc<Principal>, AuthError> {
        if let (None, None, Some(which)) = (authorization, api_key, self.client_certificate) {
            let Some(cert) = client_certificate else {
                return Err(AuthError::Missing);
            };
            return certificate_principal(cert, which).ok_or_else(|| {
                AuthError::Invalid(format!(
                    "the client certificate has no {} name",
                    match which {
                        CertificateName::CommonName => "common",
                        CertificateName::Dns => "DNS",
                        CertificateName::Uri => "URI",
                        CertificateName::Email => "email",
                    }
                ))
            });
        }
        let principal = match (api_key, &self.api_keys) {
            (Some(key), Some(keys)) => std::str::from_utf8(key)
                .ok()
                .and_then(|k| keys.check(k.trim()))
                .ok_or_else(|| AuthError::Invalid("unknown API key".into()))?,
            _ => {
                let Some(value) = authorization else {
                    return Err(AuthError::Missing);
                };
                let token = bearer_token(value).ok_or_else(|| {
                    AuthError::Invalid("Authorization is not a Bearer token".into())
                })?;
                // A bearer value may be an API key; a cheap hash lookup comes first.
                match self.api_keys.as_ref().and_then(|k| k.check(token)) {
                    Some(p) => p,
                    None => match &self.verifier {
                        Some(v) => v.verify_refetching(token, now, REFETCH_WAIT).await?,
                        None => return Err(AuthError::Invalid("unknown API key".into())),
                    },
                }
            }
        };
        if !principal.has_scopes(self.required_scopes.iter().map(String::as_str)) {
            return Err(AuthError::InsufficientScope {
                required: self.required_scopes.clone(),
            });
        }
        Ok(principal)
    }

    /// The `WWW-Authenticate` value for a refusal (RFC 6750, MCP authorization spec).
    pub fn challenge(&self, err: &AuthError, metadata_url: &str) -> String {
        let mut out = String::from("Bearer");
        match err {
            AuthError::Missing => {}
            AuthError::Invalid(_) | AuthError::Expired => out.push_str(" error=\"invalid_token\","),
            AuthError::InsufficientScope { .. } => out.push_str(" error=\"insufficient_scope\","),
        }
        out.push_str(&format!(
            " resource_metadata=\"{}\"",
            quote_safe(metadata_url)
        ));
        let scopes = match err {
            AuthError::InsufficientScope { required } => required.join(" "),
            _ => self.required_scopes.join(" "),
        };
        if !scopes.is_empty() {
            out.push_str(&format!(", scope=\"{}\"", quote_safe(&scopes)));
        }
        out
    }

    /// RFC 9728 protected resource metadata for `resource` (the route's public URL).
    pub fn metadata(&self, resource: &str) -> serde_json::Value {
        serde_json::json!({
            "resource": resource,
            "authorization_servers": self.authorization_servers,
            "scopes_supported": self.scopes_supported,
            "bearer_methods_supported": ["header"],
        })
    }
}

/// The principal a verified client certificate names.
fn certificate_principal(
    cert: &portcullis_tls::PeerIdentity,
    which: CertificateName,
) -> Option<Arc<Principal>> {
    let subject = match which {
        CertificateName::CommonName => cert.common_name.clone(),
        CertificateName::Dns => cert.dns_names.first().cloned(),
        CertificateName::Uri => cert.uris.first().cloned(),
        CertificateName::Email => cert.emails.first().cloned(),
    }?;
    Some(Arc::new(Principal {
        subject,
        issuer: CERTIFICATE_ISSUER.to_owned(),
        groups: Vec::new(),
        scopes: Vec::new(),
        claims: Default::default(),
        // The listener checked the certificate's dates at the handshake.
        expires_at: u64::MAX,
    }))
}

/// Drops characters that would break out of a quoted header parameter.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_other_schemes_are_not() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"\xff\xfe"), None);
    }
}
