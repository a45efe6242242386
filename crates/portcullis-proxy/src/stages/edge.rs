//! The edge stage: the request's framing (no request smuggling), who the client is
//! (the peer, or the address trusted proxies name), which route it is for (or the
//! resource metadata the gateway answers itself), and the DNS-rebinding checks on
//! `Host` and `Origin`.

use std::net::IpAddr;

use http::header;
use pingora_http::RequestHeader;
use portcullis_config::{canonical_ip, Config, Http};
use portcullis_mcp::Refusal;

use crate::ctx::Ctx;

/// Where RFC 9728 protected resource metadata is served (plus the route path).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// What a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A route, by index.
    Route(usize),
    /// The protected resource metadata, with the path after [`METADATA_PATH`].
    ResourceMetadata(String),
}

/// Refuses a request whose body framing is ambiguous: `Content-Length` together with
/// `Transfer-Encoding` (a proxy and an upstream could disagree on where it ends).
/// `raw_head` is the head as received, for requests with `Transfer-Encoding` (pingora
/// drops the `Content-Length` of such a request before anyone sees it).
pub fn framing(req: &RequestHeader, raw_head: Option<&[u8]>, cx: &mut Ctx) -> Result<(), Refusal> {
    if !req.headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(());
    }
    let both = req.headers.contains_key(header::CONTENT_LENGTH)
        || raw_head.is_some_and(has_content_length);
    if both {
        cx.close = true;
        return Err(Refusal::InvalidRequest(
            "Content-Length and Transfer-Encoding together are refused".into(),
        ));
    }
    Ok(())
}

/// Whether a raw request head has a `Content-Length` line.
fn has_content_length(raw: &[u8]) -> bool {
    raw.split(|b| *b == b'\n').skip(1).any(|line| {
        line.iter().position(|b| *b == b':').is_some_and(|colon| {
            line[..colon]
                .trim_ascii()
                .eq_ignore_ascii_case(b"content-length")
        })
    })
}

/// Sets the client's address: the peer, unless the peer is a trusted proxy, in which
/// case the forwarding headers are followed from the right past every trusted hop.
pub fn client(http: &Http, req: &RequestHeader, cx: &mut Ctx) {
    let Some(peer) = cx.peer.map(|p| canonical_ip(p.ip())) else {
        return;
    };
    cx.client = Some(peer);
    if http.trusted_proxies.is_empty() || !http.trusts(peer) {
        return;
    }
    cx.peer_trusted = true;
    let hops = forwarded_hops(req);
    let mut addr = peer;
    for hop in hops.iter().rev() {
        if !http.trusts(addr) {
            break;
        }
        match hop {
            Some(ip) => addr = canonical_ip(*ip),
            // An unknown or obfuscated hop: nothing further left can be believed.
            None => break,
        }
    }
    cx.client = Some(addr);
}

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The hops a request passed, leftmost first: `Forwarded: for=` when sent (RFC 7239),
/// else `X-Forwarded-For`. A hop that is not an address is `None`.
fn forwarded_hops(req: &RequestHeader) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = req
        .headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                let value = element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
                });
                value.and_then(node_addr)
            })
            .collect();
    }
    req.headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|hop| node_addr(hop.trim()))
        .collect()
}

/// An address as forwarding headers write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn node_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

/// Finds the request's route (or the metadata it asks for) and checks `Host` and
/// `Origin` for it.
pub fn route(config: &Config, req: &RequestHeader, cx: &mut Ctx) -> Result<Target, Refusal> {
    let path = req.uri.path();
    if let Some(suffix) = path.strip_prefix(METADATA_PATH) {
        return Ok(Target::ResourceMetadata(suffix.to_owned()));
    }
    let idx = config
        .routes
        .iter()
        .position(|r| r.path == path)
        .ok_or(Refusal::NoRoute)?;
    cx.route = Some(idx);
    check_host(&config.http, req)?;
    if let Some(origin) = req.headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !config
            .http
            .allowed_origins
            .iter()
            .any(|r| r.matches(origin))
        {
            return Err(Refusal::OriginNotAllowed(format!(
                "Origin {origin:?} is not allowed"
            )));
        }
        cx.cors_origin = Some(origin.to_owned());
    }
    Ok(Target::Route(idx))
}

fn check_host(http: &Http, req: &RequestHeader) -> Result<(), Refusal> {
    if http.allowed_hosts.is_empty() {
        return Ok(());
    }
    let host = request_host(req).unwrap_or("");
    let name = host_name(host).to_ascii_lowercase();
    if http.allowed_hosts.contains(&name) {
        Ok(())
    } else {
        Err(Refusal::HostNotAllowed(format!(
            "Host {host:?} is not allowed"
        )))
    }
}

/// The request's host: the `Host` header (HTTP/1.1) or the URI authority (HTTP/2).
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The name part of a Host value: `[::1]:80` -> `::1`, `a.example:8080` -> `a.example`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        portcullis_config::load_str(
            std::path::Path::new("gw.yaml"),
            &format!("{extra}routes:\n  - path: /mcp\n    upstream: u\nupstreams:\n  u:\n    url: http://127.0.0.1:9/mcp\n"),
        )
        .expect("valid")
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", path.as_bytes(), None).expect("head");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn cx() -> Ctx {
        Ctx::new(Some("10.0.0.1:5000".parse().expect("addr")))
    }

    #[test]
    fn host_names_drop_ports_and_brackets() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("[::1"), "::1");
        assert_eq!(host_name(""), "");
    }

    #[test]
    fn routes_hosts_and_origins_are_checked() {
        let c = config(
            "http:\n  allowed_hosts: [mcp.example.com]\n  allowed_origins: [\"http://localhost:*\"]\n",
        );
        let mut x = cx();
        assert_eq!(route(&c, &req("/nope", &[]), &mut x), Err(Refusal::NoRoute));
        let ok = req(
            "/mcp",
            &[
                ("host", "MCP.example.com:443"),
                ("origin", "http://localhost:6274"),
            ],
        );
        assert_eq!(route(&c, &ok, &mut x), Ok(Target::Route(0)));
        assert_eq!(x.cors_origin.as_deref(), Some("http://localhost:6274"));
        let evil = req("/mcp", &[("host", "evil.test")]);
        assert!(matches!(
            route(&c, &evil, &mut cx()),
            Err(Refusal::HostNotAllowed(_))
        ));
        let rebinding = req(
            "/mcp",
            &[("host", "mcp.example.com"), ("origin", "http://evil.test")],
        );
        assert!(matches!(
            route(&c, &rebinding, &mut cx()),
            Err(Refusal::OriginNotAllowed(_))
        ));
        assert_eq!(
            route(
                &c,
                &req("/.well-known/oauth-protected-resource/mcp", &[]),
                &mut cx()
            ),
            Ok(Target::ResourceMetadata("/mcp".into()))
        );
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused_and_closes() {
        let te = req("/mcp", &[("transfer-encoding", "chunked")]);
        let mut x = cx();
        assert!(framing(
            &te,
            Some(b"POST /mcp HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"),
            &mut x
        )
        .is_ok());
        assert!(!x.close);
        for raw in [
            &b"POST /mcp HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST /mcp HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length : 5\r\n\r\n",
        ] {
            let mut x = cx();
            assert!(matches!(
                framing(&te, Some(raw), &mut x),
                Err(Refusal::InvalidRequest(_))
            ));
            assert!(x.close, "the connection is not reused");
        }
        assert!(framing(&req("/mcp", &[("content-length", "5")]), None, &mut cx()).is_ok());
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_names_it() {
        let none = config("");
        let xff = req("/mcp", &[("x-forwarded-for", "6.6.6.6")]);
        let mut x = cx();
        client(&none.http, &xff, &mut x);
        assert_eq!(
            x.client,
            Some("10.0.0.1".parse().expect("ip")),
            "no trusted proxies"
        );
        assert!(!x.peer_trusted);

        let trusting = config("http:\n  trusted_proxies: [10.0.0.0/8]\n");
        let mut x = cx();
        client(&trusting.http, &xff, &mut x);
        assert_eq!(x.client, Some("6.6.6.6".parse().expect("ip")));
        assert!(x.peer_trusted);

        // Only hops a trusted proxy added are believed: the client made up 1.1.1.1.
        let chain = req("/mcp", &[("x-forwarded-for", "1.1.1.1, 7.7.7.7, 10.2.3.4")]);
        let mut x = cx();
        client(&trusting.http, &chain, &mut x);
        assert_eq!(x.client, Some("7.7.7.7".parse().expect("ip")));

        let fwd = req(
            "/mcp",
            &[
                (
                    "forwarded",
                    "for=9.9.9.9;proto=https, for=\"[2001:db8::17]:4711\"",
                ),
                ("x-forwarded-for", "5.5.5.5"),
            ],
        );
        let mut x = cx();
        client(&trusting.http, &fwd, &mut x);
        assert_eq!(
            x.client,
            Some("2001:db8::17".parse().expect("ip")),
            "Forwarded wins"
        );

        for hostile in ["unknown", "_hidden", "", "300.1.1.1", "a, b, ,,,"] {
            let r = req("/mcp", &[("x-forwarded-for", hostile)]);
            let mut x = cx();
            client(&trusting.http, &r, &mut x);
            assert_eq!(
                x.client,
                Some("10.0.0.1".parse().expect("ip")),
                "{hostile:?}"
            );
        }
        let untrusted_peer = Ctx::new(Some("192.0.2.1:1".parse().expect("addr")));
        let mut x = untrusted_peer;
        client(&trusting.http, &xff, &mut x);
        assert_eq!(x.client, Some("192.0.2.1".parse().expect("ip")));
    }
}
