//! `upstreams.<name>`: the URL split into authority and path, endpoints resolved,
//! timeouts, extra headers, the upstream's own credential, identity headers, and the
//! traffic-control keys (through [`super::traffic`]).

use std::net::{SocketAddr, ToSocketAddrs};

use http::{HeaderName, HeaderValue, Uri};

use crate::error::ConfigError;
use crate::file::{
    CredentialFile, Http2File, IdentityHeadersFile, SessionFailoverFile, UpstreamFile,
};
use crate::model::{Discovery, HealthCheck, Http2, IdentityHeaders, Upstream};
use crate::scope::Scope;

pub(super) fn upstream(
    at: &Scope<'_>,
    name: &str,
    up: &UpstreamFile,
) -> Result<Upstream, ConfigError> {
    let at_url = at.key("url");
    let uri: Uri = up
        .url
        .parse()
        .map_err(|e| at_url.err(format!("`{}` is not a URL: {e}", up.url)))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(at_url.err(format!(
                "`{}` must be an absolute http:// or https:// URL",
                up.url
            )))
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(at_url.err(format!("`{}` has no host", up.url)));
    };
    let host_port = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(if https { 443 } else { 80 })
    );
    let tls = match (https, &up.tls) {
        (true, f) => Some(super::tls::upstream(
            &at.key("tls"),
            &f.clone().unwrap_or_default(),
            authority.host(),
            &at_url,
        )?),
        (false, Some(_)) => return Err(at.key("tls").err("tls settings need an https:// url")),
        (false, None) => None,
    };
    let http2 = match up.http2 {
        Http2File::Auto => Http2::Auto,
        Http2File::Always => Http2::Always,
        Http2File::Never => Http2::Never,
    };
    let names: Vec<(Scope<'_>, String)> = if up.endpoints.is_empty() {
        vec![(at_url.clone(), host_port)]
    } else {
        up.endpoints
            .iter()
            .enumerate()
            .map(|(i, t)| (at.key("endpoints").index(i), t.clone()))
            .collect()
    };
    let discovery = match &up.discovery {
        Some(d) => {
            let at_d = at.key("discovery");
            for (k, v) in [("refresh", d.refresh), ("drain", d.drain)] {
                if v.is_zero() {
                    return Err(at_d.key(k).err(format!("{k} must be more than zero")));
                }
            }
            for (at_n, n) in &names {
                if !n.contains(':')
                    || n.rsplit_once(':')
                        .is_some_and(|(_, p)| p.parse::<u16>().is_err())
                {
                    return Err(at_n.err(format!("`{n}` must be host:port")));
                }
            }
            Some(Discovery {
                names: names.iter().map(|(_, n)| n.clone()).collect(),
                refresh: d.refresh,
                drain: d.drain,
            })
        }
        None => None,
    };
    // With discovery the gateway resolves the names itself, off the request path; a
    // name with no address yet (a Service with no ready pod) is not a config error.
    let endpoints = if discovery.is_some() {
        Vec::new()
    } else {
        let mut all = Vec::new();
        for (at_n, n) in &names {
            all.extend(resolve(at_n, n)?);
        }
        all
    };
    let hc = &up.health_check;
    let at_hc = at.key("health_check");
    if hc.interval.is_zero() {
        return Err(at_hc.key("interval").err("interval must be more than zero"));
    }
    for (k, v) in [
        ("unhealthy_after", hc.unhealthy_after),
        ("healthy_after", hc.healthy_after),
    ] {
        if v == 0 {
            return Err(at_hc.key(k).err(format!("{k} must be at least 1")));
        }
    }
    let health_check = HealthCheck {
        interval: hc.interval,
        unhealthy_after: hc.unhealthy_after,
        healthy_after: hc.healthy_after,
    };
    for (k, d) in [
        ("connect_timeout", up.connect_timeout),
        ("read_timeout", up.read_timeout),
        ("write_timeout", up.write_timeout),
        ("idle_timeout", up.idle_timeout),
    ] {
        if d.is_zero() {
            return Err(at.key(k).err(format!("{k} must be more than zero")));
        }
    }
    let mut headers = Vec::with_capacity(up.headers.len() + 1);
    for (k, v) in &up.headers {
        let hat = at.key("headers").key(k);
        let hn = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| hat.err(format!("`{k}` is not a valid header name")))?;
        if is_reserved_header(hn.as_str()) {
            return Err(hat.err(format!(
                "`{k}` is set by the gateway and cannot be configured"
            )));
        }
        let hv = HeaderValue::from_str(v)
            .map_err(|_| hat.err(format!("the value of `{k}` is not a valid header value")))?;
        headers.push((hn, hv));
    }
    if let Some(cred) = &up.credential {
        headers.push(credential_header(&at.key("credential"), cred)?);
    }
    let identity_headers =
        identity_headers(&at.key("identity_headers"), &up.identity_headers, &headers)?;
    let concurrency = match &up.concurrency {
        Some(g) => Some(super::traffic::gate(&at.key("concurrency"), g)?),
        None => None,
    };
    let tools = super::traffic::tools(&at.key("tools"), &up.tools)?;
    let breaker = match &up.breaker {
        Some(b) => Some(super::traffic::breaker(&at.key("breaker"), b)?),
        None => None,
    };
    Ok(Upstream {
        name: name.to_owned(),
        authority: authority.as_str().to_owned(),
        path: uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        endpoints,
        discovery,
        health_check,
        reinitialize_lost_sessions: up.session_failover == SessionFailoverFile::Reinitialize,
        connect_timeout: up.connect_timeout,
        read_timeout: up.read_timeout,
        write_timeout: up.write_timeout,
        idle_timeout: up.idle_timeout,
        headers,
        identity_headers,
        trust_annotations: up.trust_annotations,
        concurrency,
        tools,
        breaker,
        tls,
        http2,
    })
}

/// Resolves `host:port` to its addresses (at least one).
fn resolve(at: &Scope<'_>, target: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let resolved: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| at.err(format!("cannot resolve `{target}`: {e}")))?
        .collect();
    if resolved.is_empty() {
        return Err(at.err(format!("`{target}` resolves to no address")));
    }
    Ok(resolved)
}

/// Checks `identity_headers`: valid names, none the gateway sets or the upstream's own
/// headers already use, no name twice.
fn identity_headers(
    at: &Scope<'_>,
    f: &IdentityHeadersFile,
    fixed: &[(HeaderName, HeaderValue)],
) -> Result<IdentityHeaders, ConfigError> {
    let mut seen: Vec<HeaderName> = Vec::new();
    let mut check = |at: Scope<'_>, value: &str| -> Result<HeaderName, ConfigError> {
        let hn = HeaderName::from_bytes(value.as_bytes())
            .map_err(|_| at.err(format!("`{value}` is not a valid header name")))?;
        let n = hn.as_str();
        if is_reserved_header(n)
            || matches!(
                n,
                "authorization" | "cookie" | "x-api-key" | "x-forwarded-for"
            )
            || fixed.iter().any(|(h, _)| *h == hn)
        {
            return Err(at.err(format!(
                "`{n}` is already set by the gateway or this upstream's headers"
            )));
        }
        if seen.contains(&hn) {
            return Err(at.err(format!("`{n}` is used twice")));
        }
        seen.push(hn.clone());
        Ok(hn)
    };
    let mut one = |key: &'static str, v: &Option<String>| {
        v.as_deref().map(|v| check(at.key(key), v)).transpose()
    };
    let subject = one("subject", &f.subject)?;
    let issuer = one("issuer", &f.issuer)?;
    let groups = one("groups", &f.groups)?;
    let scopes = one("scopes", &f.scopes)?;
    let mut claims = Vec::with_capacity(f.claims.len());
    for (path, header) in &f.claims {
        claims.push((path.clone(), check(at.key("claims").key(path), header)?));
    }
    Ok(IdentityHeaders {
        subject,
        issuer,
        groups,
        scopes,
        claims,
    })
}

/// Reads the upstream's credential into the header it is sent as.
fn credential_header(
    at: &Scope<'_>,
    cred: &CredentialFile,
) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let at_header = at.key("header");
    let hn = HeaderName::from_bytes(cred.header.as_bytes())
        .map_err(|_| at_header.err(format!("`{}` is not a header name", cred.header)))?;
    if is_reserved_header(hn.as_str()) {
        return Err(at_header.err(format!("`{hn}` is set by the gateway")));
    }
    let secret = super::secret::read(
        cred.value_file.as_deref(),
        cred.value_env.as_deref(),
        (&at.key("value_file"), &at.key("value_env"), &at_header),
    )?;
    if secret.is_empty() {
        return Err(at_header.err("the credential is empty"));
    }
    let scheme = match &cred.scheme {
        Some(s) => Some(s.as_str()),
        None if hn == http::header::AUTHORIZATION => Some("Bearer"),
        None => None,
    };
    let text = match scheme {
        Some(s) if !s.is_empty() => format!("{s} {secret}"),
        _ => secret,
    };
    let mut value = HeaderValue::from_str(&text)
        .map_err(|_| at_header.err("the credential is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((hn, value))
}

/// Headers the gateway owns on the way upstream.
fn is_reserved_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "content-type"
            | "accept"
            | "mcp-session-id"
            | "mcp-protocol-version"
            | "mcp-method"
            | "mcp-name"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::GOOD;

    #[test]
    fn upstream_credentials_are_read_from_a_file_or_the_environment() {
        let dir = std::env::temp_dir().join(format!("portcullis-cred-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("token"), "s3cret\n").expect("write");
        let with = |cred: &str| {
            GOOD.replace(
                "      x-api-key: abc\n",
                &format!("      x-api-key: abc\n    credential:\n{cred}"),
            )
        };
        let path = dir.join("gw.yaml");
        let c = crate::load_str(&path, &with("      value_file: token\n")).expect("valid");
        let (name, value) = c.upstreams[0].headers.last().expect("credential header");
        assert_eq!(name.as_str(), "authorization");
        assert_eq!(value.to_str().ok(), Some("Bearer s3cret"));
        assert!(value.is_sensitive(), "never printed in Debug output");
        let c = crate::load_str(
            &path,
            &with("      header: x-api-token\n      value_file: token\n"),
        )
        .expect("valid");
        let (name, value) = c.upstreams[0].headers.last().expect("credential header");
        assert_eq!(
            (name.as_str(), value.to_str().ok()),
            ("x-api-token", Some("s3cret"))
        );
        for (cred, key) in [
            (
                "      value_file: missing\n",
                "upstreams.demo.credential.value_file",
            ),
            (
                "      value_env: PORTCULLIS_SURELY_UNSET\n",
                "upstreams.demo.credential.value_env",
            ),
            (
                "      header: host\n      value_file: token\n",
                "upstreams.demo.credential.header",
            ),
            (
                "      header: authorization\n",
                "upstreams.demo.credential.header",
            ),
        ] {
            let e = crate::load_str(&path, &with(cred)).expect_err("refused");
            assert_eq!(e.key.as_deref(), Some(key), "{cred}: {e}");
        }
    }

    #[test]
    fn identity_headers_must_be_new_valid_names() {
        let with = |ih: &str| {
            GOOD.replace(
                "      x-api-key: abc\n",
                &format!("      x-api-key: abc\n    identity_headers:\n{ih}"),
            )
        };
        let c = crate::load_str(
            Path::new("gw.yaml"),
            &with("      subject: x-user\n      claims:\n        tenant: x-tenant\n"),
        )
        .expect("valid");
        let names: Vec<&str> = c.upstreams[0]
            .identity_headers
            .names()
            .map(|h| h.as_str())
            .collect();
        assert_eq!(names, ["x-user", "x-tenant"]);
        for (ih, key) in [
            (
                "      subject: authorization\n",
                "upstreams.demo.identity_headers.subject",
            ),
            (
                "      groups: mcp-session-id\n",
                "upstreams.demo.identity_headers.groups",
            ),
            (
                "      scopes: x-api-key\n",
                "upstreams.demo.identity_headers.scopes",
            ),
            (
                "      issuer: \"bad name\"\n",
                "upstreams.demo.identity_headers.issuer",
            ),
            (
                "      subject: x-u\n      issuer: x-u\n",
                "upstreams.demo.identity_headers.issuer",
            ),
            (
                "      claims:\n        tenant: connection\n",
                "upstreams.demo.identity_headers.claims.tenant",
            ),
            (
                "      role: x-role\n",
                "upstreams.demo.identity_headers.role",
            ),
        ] {
            let e = crate::load_str(Path::new("gw.yaml"), &with(ih)).expect_err("refused");
            assert_eq!(e.key.as_deref(), Some(key), "{ih}: {e}");
            assert!(e.line.is_some(), "{e}");
        }
    }
}

#[cfg(test)]
mod pool_tests {
    use crate::error::ConfigError;
    use crate::Config;

    fn load(upstream: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:1\nroutes:\n  - path: /mcp\n    upstream: pool\nupstreams:\n  pool:\n{upstream}"
        );
        crate::load_str(
            std::path::Path::new("/etc/portcullis/portcullis.yaml"),
            &text,
        )
    }

    fn refused(upstream: &str, key: &str, says: &str) {
        let e = load(upstream).expect_err("should be refused");
        assert_eq!(e.key.as_deref(), Some(key), "{upstream}: {e}");
        assert!(e.line.is_some(), "{e}");
        assert!(e.message.contains(says), "{upstream}: {e}");
    }

    #[test]
    fn discovery_names_are_left_to_the_gateway_and_health_checks_have_defaults() {
        // No such name: with discovery it is resolved later, so loading succeeds.
        let c = load(
            "    url: http://search.tools.svc.invalid:8080/mcp\n    discovery:\n      refresh: 3s\n",
        )
        .expect("valid");
        let up = &c.upstreams[0];
        assert!(up.endpoints.is_empty());
        let d = up.discovery.as_ref().expect("discovery");
        assert_eq!(d.names, ["search.tools.svc.invalid:8080"]);
        assert_eq!(d.refresh, std::time::Duration::from_secs(3));
        assert_eq!(d.drain, std::time::Duration::from_secs(300));
        assert_eq!(up.health_check.interval, std::time::Duration::from_secs(5));
        assert_eq!(
            (
                up.health_check.unhealthy_after,
                up.health_check.healthy_after
            ),
            (2, 1)
        );
        let listed = load(
            "    url: http://search:8080/mcp\n    endpoints: [\"a.invalid:1\", \"b.invalid:2\"]\n    discovery: {}\n",
        )
        .expect("valid");
        let names = &listed.upstreams[0].discovery.as_ref().expect("on").names;
        assert_eq!(names, &["a.invalid:1", "b.invalid:2"]);
    }

    #[test]
    fn bad_pool_settings_are_refused_with_their_key() {
        refused(
            "    url: http://127.0.0.1:1/mcp\n    discovery:\n      refresh: 0s\n",
            "upstreams.pool.discovery.refresh",
            "more than zero",
        );
        refused(
            "    url: http://127.0.0.1:1/mcp\n    endpoints: [\"no-port\"]\n    discovery: {}\n",
            "upstreams.pool.endpoints[0]",
            "host:port",
        );
        refused(
            "    url: http://127.0.0.1:1/mcp\n    health_check:\n      unhealthy_after: 0\n",
            "upstreams.pool.health_check.unhealthy_after",
            "at least 1",
        );
        refused(
            "    url: http://127.0.0.1:1/mcp\n    health_check:\n      interval: 0s\n",
            "upstreams.pool.health_check.interval",
            "more than zero",
        );
        refused(
            "    url: http://127.0.0.1:1/mcp\n    health_check:\n      every: 1s\n",
            "upstreams.pool.health_check.every",
            "every",
        );
        refused(
            "    url: http://127.0.0.1:1/mcp\n    session_failover: sometimes\n",
            "upstreams.pool.session_failover",
            "sometimes",
        );
        let c = load("    url: http://127.0.0.1:1/mcp\n    session_failover: reinitialize\n")
            .expect("valid");
        assert!(c.upstreams[0].reinitialize_lost_sessions);
        let c = load("    url: http://127.0.0.1:1/mcp\n").expect("valid");
        assert!(!c.upstreams[0].reinitialize_lost_sessions, "404 by default");
        // Without discovery a name that does not resolve is still a load error.
        refused(
            "    url: http://search.tools.svc.invalid:8080/mcp\n",
            "upstreams.pool.url",
            "cannot resolve",
        );
    }
}
