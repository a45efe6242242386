//! The identity stage: who is calling. A route with `auth` takes a bearer JWT or an API
//! key (never in the URL) and turns it into the request's principal, or refuses with
//! the 401/403 and `WWW-Authenticate` challenge the MCP authorization spec asks for.
//! Also the RFC 9728 protected resource metadata that challenge points at.

use http::header::{self, HeaderName};
use http::Method;
use pingora_http::RequestHeader;
use portcullis_auth::AuthError;
use portcullis_config::Config;
use portcullis_mcp::Refusal;

use super::edge::{request_host, METADATA_PATH};
use crate::ctx::{Ctx, Op};

/// The header machine clients may send their API key in.
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Checks the caller's credential on an authenticated route.
pub async fn authenticate(
    config: &Config,
    route: usize,
    req: &RequestHeader,
    cx: &mut Ctx,
) -> Result<(), Refusal> {
    let route = &config.routes[route];
    let Some(auth) = &route.auth else {
        return Ok(());
    };
    // Tokens never travel in the URL (the spec forbids it; URLs end up in logs).
    let in_query = req
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("access_token=")));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let result = if in_query {
        Err(AuthError::Invalid(
            "tokens in the query string are refused; send Authorization: Bearer".into(),
        ))
    } else {
        auth.check(
            req.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
            req.headers.get(&X_API_KEY).map(|v| v.as_bytes()),
            cx.client_cert.as_ref(),
            now,
        )
        .await
    };
    match result {
        Ok(principal) => {
            cx.principal = Some(principal);
            Ok(())
        }
        Err(e) => {
            let challenge = auth.challenge(&e, &metadata_url(config, req, &route.path, cx.tls));
            Err(match e {
                AuthError::InsufficientScope { .. } => Refusal::InsufficientScope { challenge },
                other => Refusal::Unauthorized {
                    challenge,
                    detail: other.to_string(),
                },
            })
        }
    }
}

/// `GET /.well-known/oauth-protected-resource[/<route path>]`: the RFC 9728 metadata of
/// an authenticated route, as JSON. The bare form answers when exactly one route
/// authenticates.
pub fn metadata(
    config: &Config,
    suffix: &str,
    req: &RequestHeader,
    cx: &mut Ctx,
) -> Result<Vec<u8>, Refusal> {
    cx.op = Op::ResourceMetadata;
    let mut authenticated = config.routes.iter().filter(|r| r.auth.is_some());
    let route = if suffix.is_empty() || suffix == "/" {
        match (authenticated.next(), authenticated.next()) {
            (Some(only), None) => only,
            _ => return Err(Refusal::NoRoute),
        }
    } else {
        authenticated
            .find(|r| r.path == suffix)
            .ok_or(Refusal::NoRoute)?
    };
    if req.method != Method::GET {
        return Err(Refusal::MethodNotAllowed { allow: "GET" });
    }
    let auth = route.auth.as_ref().ok_or(Refusal::NoRoute)?;
    Ok(auth
        .metadata(&resource_url(config, req, &route.path, cx.tls))
        .to_string()
        .into_bytes())
}

/// The route's public URL: `http.public_url` + path, or the scheme the request came
/// by (`https://` on the TLS listener) + Host + path.
fn resource_url(config: &Config, req: &RequestHeader, route_path: &str, tls: bool) -> String {
    match &config.http.public_url {
        Some(base) => format!("{base}{route_path}"),
        None => {
            let host = request_host(req).unwrap_or("localhost");
            let scheme = if tls { "https" } else { "http" };
            format!("{scheme}://{host}{route_path}")
        }
    }
}

/// The metadata URL of a route, for `WWW-Authenticate`'s `resource_metadata`.
fn metadata_url(config: &Config, req: &RequestHeader, route_path: &str, tls: bool) -> String {
    let resource = resource_url(config, req, route_path, tls);
    let origin_end = resource
        .find("://")
        .and_then(|i| resource[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(resource.len());
    format!("{}{METADATA_PATH}{}", &resource[..origin_end], route_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_follow_public_url_or_the_host() {
        let c = portcullis_config::load_str(
            std::path::Path::new("gw.yaml"),
            "routes:\n  - path: /a/mcp\n    upstream: u\nupstreams:\n  u:\n    url: http://127.0.0.1:9/mcp\n",
        )
        .expect("valid");
        let mut req = RequestHeader::build("POST", b"/a/mcp", None).expect("head");
        req.insert_header("host", "gw.test:8080").expect("header");
        assert_eq!(
            resource_url(&c, &req, "/a/mcp", false),
            "http://gw.test:8080/a/mcp"
        );
        assert_eq!(
            metadata_url(&c, &req, "/a/mcp", false),
            "http://gw.test:8080/.well-known/oauth-protected-resource/a/mcp"
        );
        assert_eq!(
            metadata_url(&c, &req, "/a/mcp", true),
            "https://gw.test:8080/.well-known/oauth-protected-resource/a/mcp",
            "on the TLS listener"
        );
        let mut x = Ctx::new(None);
        assert_eq!(
            metadata(&c, "/a/mcp", &req, &mut x),
            Err(Refusal::NoRoute),
            "not authenticated"
        );
    }
}
