//! `http:`: the public listener's limits and checks.

use http::Uri;

use crate::error::ConfigError;
use crate::file::HttpFile;
use crate::model::{Http, OriginRule};
use crate::scope::Scope;

pub(super) fn http(at: &Scope<'_>, f: &HttpFile) -> Result<Http, ConfigError> {
    if let Some(u) = &f.public_url {
        let ok = u
            .parse::<Uri>()
            .ok()
            .filter(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            })
            .is_some_and(|uri| uri.path() == "/" || uri.path().is_empty());
        if !ok {
            return Err(at.key("public_url").err(format!(
                "`{u}` must be an absolute http(s) URL without a path, e.g. https://mcp.example.com"
            )));
        }
    }
    let max_body_size = f.max_body_size.0;
    if max_body_size == 0 || max_body_size > 1 << 30 {
        return Err(at
            .key("max_body_size")
            .err("max_body_size must be between 1 byte and 1GiB"));
    }
    for (k, d) in [
        ("body_timeout", f.body_timeout),
        ("header_timeout", f.header_timeout),
        ("idle_timeout", f.idle_timeout),
        ("write_timeout", f.write_timeout),
        ("stream_keepalive", f.stream_keepalive),
        ("tcp_keepalive", f.tcp_keepalive),
    ] {
        if d.is_zero() {
            return Err(at.key(k).err(format!("{k} must be more than zero")));
        }
    }
    if f.tcp_keepalive.as_secs() == 0 {
        return Err(at
            .key("tcp_keepalive")
            .err("tcp_keepalive is counted in whole seconds: use at least 1s"));
    }
    let mut trusted_proxies = Vec::with_capacity(f.trusted_proxies.len());
    for (i, p) in f.trusted_proxies.iter().enumerate() {
        trusted_proxies.push(cidr(p).ok_or_else(|| {
            at.key("trusted_proxies").index(i).err(format!(
                "`{p}` is not an address or CIDR block such as 10.0.0.0/8 or fd00::/8"
            ))
        })?);
    }
    if f.h2_max_streams == 0 || f.h2_max_streams as usize > super::MAX_COUNT {
        return Err(at
            .key("h2_max_streams")
            .err("h2_max_streams must be between 1 and 1000000"));
    }
    Ok(Http {
        max_body_size,
        body_timeout: f.body_timeout,
        header_timeout: f.header_timeout,
        idle_timeout: f.idle_timeout,
        write_timeout: f.write_timeout,
        stream_keepalive: f.stream_keepalive,
        tcp_keepalive: f.tcp_keepalive,
        allowed_origins: f
            .allowed_origins
            .iter()
            .map(|o| OriginRule::parse(o))
            .collect(),
        allowed_hosts: f
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        public_url: f
            .public_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned()),
        trusted_proxies,
        h2c: f.h2c,
        h2_max_streams: f.h2_max_streams,
    })
}

/// A CIDR block, or a single address as its /32 or /128.
fn cidr(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn with_http(block: &str) -> Result<crate::Config, crate::ConfigError> {
        crate::load_str(
            Path::new("gw.yaml"),
            &format!(
                "http:\n{block}routes:\n  - path: /mcp\n    upstream: u\nupstreams:\n  u:\n    url: http://127.0.0.1:9/mcp\n"
            ),
        )
    }

    #[test]
    fn trusted_proxies_are_addresses_or_cidr_blocks() {
        let c = with_http("  trusted_proxies: [10.0.0.0/8, \"fd00::/8\", 192.168.1.7]\n")
            .expect("valid");
        let h = &c.http;
        assert!(h.trusts("10.9.8.7".parse().expect("ip")));
        assert!(
            h.trusts("::ffff:10.9.8.7".parse().expect("ip")),
            "mapped v4"
        );
        assert!(h.trusts("fd12::1".parse().expect("ip")));
        assert!(h.trusts("192.168.1.7".parse().expect("ip")));
        assert!(!h.trusts("192.168.1.8".parse().expect("ip")));
        assert!(!h.trusts("11.0.0.1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/", ""] {
            let e = with_http(&format!("  trusted_proxies: [\"{bad}\"]\n")).expect_err(bad);
            assert_eq!(
                e.key.as_deref(),
                Some("http.trusted_proxies[0]"),
                "{bad}: {e}"
            );
            assert_eq!(e.line, Some(2), "{bad}: {e}");
        }
    }

    #[test]
    fn connection_timeouts_must_be_positive() {
        for k in [
            "header_timeout",
            "idle_timeout",
            "write_timeout",
            "stream_keepalive",
            "tcp_keepalive",
        ] {
            let e = with_http(&format!("  {k}: 0s\n")).expect_err(k);
            assert_eq!(e.key.as_deref(), Some(format!("http.{k}").as_str()), "{e}");
        }
        let e = with_http("  tcp_keepalive: 500ms\n").expect_err("sub-second");
        assert_eq!(e.key.as_deref(), Some("http.tcp_keepalive"), "{e}");
    }
}
