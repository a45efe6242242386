//! The head of a request to an upstream: which of the client's headers go on (end to
//! end ones, never its credentials or hop-by-hop ones), what the gateway sets itself
//! (Host, framing, Accept, the session, `X-Forwarded-For`), the upstream's configured
//! headers and credential, and the caller's identity where the upstream asks for it.

use http::header::{self, HeaderName};
use http::Method;
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use portcullis_auth::Principal;
use portcullis_config::{IdentityHeaders, Upstream};
use portcullis_mcp::headers::{self, MCP_METHOD, MCP_PROTOCOL_VERSION, MCP_SESSION_ID};

use super::{ClientRequest, Outbound, Sender};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Request headers the gateway never forwards as the client sent them: it sets them
/// itself (host, framing, accept, session), or they are the client's credentials.
const NOT_FORWARDED: [&str; 11] = [
    "host",
    "content-length",
    "transfer-encoding",
    "accept",
    "authorization",
    "x-api-key",
    "cookie",
    "expect",
    "x-forwarded-for",
    "forwarded",
    "mcp-session-id",
];

/// The request head for `out` to `cfg`; `body_len` for a POST.
pub(super) fn head(
    cfg: &Upstream,
    method: &Method,
    out: &Outbound<'_>,
    body_len: Option<usize>,
) -> pingora_error::Result<RequestHeader> {
    let mut req = RequestHeader::build(method.as_str(), cfg.path.as_bytes(), Some(16))?;
    match out.sender {
        Sender::Client(c) => client_headers(&mut req, cfg, &c)?,
        Sender::Gateway { version, method } => {
            req.insert_header(MCP_PROTOCOL_VERSION, version)?;
            if let (Some(m), true) = (method, version == "2026-07-28") {
                req.insert_header(MCP_METHOD, m)?;
            }
            if body_len.is_some() {
                req.insert_header(header::CONTENT_TYPE, "application/json")?;
            }
        }
    }
    req.insert_header(header::HOST, cfg.authority.as_str())?;
    match *method {
        Method::POST => {
            req.insert_header(header::ACCEPT, "application/json, text/event-stream")?;
            req.insert_header(header::CONTENT_LENGTH, body_len.unwrap_or(0).to_string())?;
        }
        Method::GET => req.insert_header(header::ACCEPT, "text/event-stream")?,
        _ => {}
    }
    if let Some(pin) = out.session {
        let sid = http::HeaderValue::from_bytes(pin.id)
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid session id"))?;
        req.insert_header(MCP_SESSION_ID, sid)?;
    }
    for (k, v) in &cfg.headers {
        req.insert_header(k.clone(), v.clone())?;
    }
    if let Sender::Client(ClientRequest {
        principal: Some(p), ..
    }) = out.sender
    {
        if !cfg.identity_headers.is_empty() {
            add_identity(&mut req, &cfg.identity_headers, p)?;
        }
    }
    Ok(req)
}

/// The client's end-to-end headers, `X-Forwarded-For`, and a renamed tool's `Mcp-Name`.
fn client_headers(
    req: &mut RequestHeader,
    cfg: &Upstream,
    c: &ClientRequest<'_>,
) -> pingora_error::Result<()> {
    let client = &c.head.headers;
    let listed = connection_listed(client);
    let identity = &cfg.identity_headers;
    let spoofable = !identity.is_empty();
    for (name, value) in client.iter() {
        let n = name.as_str();
        if headers::is_hop_by_hop(n) || NOT_FORWARDED.contains(&n) || listed.iter().any(|l| l == n)
        {
            continue;
        }
        // Identity headers come from the gateway only, never from the client.
        if spoofable && identity.names().any(|h| h == name) {
            continue;
        }
        if c.uncompressed && name == header::ACCEPT_ENCODING {
            continue;
        }
        req.append_header(name.clone(), value.clone())?;
    }
    if let Some(ip) = c.peer {
        let chain = client
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .filter(|_| c.peer_trusted);
        let forwarded = match chain {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        req.insert_header(X_FORWARDED_FOR.clone(), forwarded)?;
    }
    // A renamed tool: the upstream knows it by its own name, in the header as in the body.
    if let Some(name) = c.renamed {
        if req.headers.contains_key(headers::MCP_NAME) {
            req.insert_header(headers::MCP_NAME, headers::encode_mcp_name(name))?;
        }
    }
    Ok(())
}

/// Connection-listed header names (`Connection: foo` makes `foo` hop-by-hop).
pub(crate) fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Writes the caller's identity into the configured headers. Values are
/// percent-encoded outside printable ASCII (and `%` and `,`, which separates list items).
fn add_identity(
    req: &mut RequestHeader,
    identity: &IdentityHeaders,
    p: &Principal,
) -> pingora_error::Result<()> {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|i| header_safe(i))
            .collect::<Vec<_>>()
            .join(",")
    };
    let values = [
        (&identity.subject, header_safe(&p.subject)),
        (&identity.issuer, header_safe(&p.issuer)),
        (&identity.groups, list(&p.groups)),
        (&identity.scopes, list(&p.scopes)),
    ];
    for (name, value) in values {
        if let Some(name) = name {
            req.insert_header(name.clone(), value)?;
        }
    }
    for (path, name) in &identity.claims {
        let Some(json) = p.claims.get(path) else {
            continue;
        };
        // A string claim is sent as its text; anything else as compact JSON.
        let text = serde_json::from_str::<String>(json).unwrap_or_else(|_| json.clone());
        req.insert_header(name.clone(), header_safe(&text))?;
    }
    Ok(())
}

/// `s` with every byte outside visible ASCII (space included, which header parsers
/// trim), and `%` and `,`, percent-encoded.
fn header_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' && b != b',' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_values_are_safe_header_values() {
        assert_eq!(header_safe("alice@example.com"), "alice@example.com");
        assert_eq!(header_safe("a,b%c"), "a%2Cb%25c");
        assert_eq!(header_safe("x\r\nInjected: 1"), "x%0D%0AInjected:%201");
        assert_eq!(header_safe(" admin "), "%20admin%20");
        assert_eq!(header_safe("Zoë"), "Zo%C3%AB");
        for s in ["x\r\ny", "\u{0}", "é,%"] {
            assert!(
                http::HeaderValue::from_str(&header_safe(s)).is_ok(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn connection_listed_headers_are_found() {
        let mut h = http::HeaderMap::new();
        h.append("connection", "keep-alive, X-Secret".parse().expect("value"));
        assert_eq!(connection_listed(&h), vec!["keep-alive", "x-secret"]);
    }

    fn upstream() -> Upstream {
        portcullis_config::load_str(
            std::path::Path::new("gw.yaml"),
            "routes:\n  - path: /mcp\n    upstream: u\nupstreams:\n  u:\n    url: http://127.0.0.1:9/up\n    headers:\n      x-tenant: t1\n    identity_headers:\n      subject: x-user\n",
        )
        .expect("valid")
        .upstreams
        .remove(0)
    }

    #[test]
    fn a_client_request_keeps_end_to_end_headers_only() {
        let cfg = upstream();
        let mut client = RequestHeader::build("POST", b"/mcp", None).expect("head");
        for (k, v) in [
            ("authorization", "Bearer client-token"),
            ("cookie", "a=b"),
            ("x-user", "mallory"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("x-forwarded-for", "6.6.6.6"),
            ("content-type", "application/json"),
            ("mcp-name", "gh_search"),
            ("x-trace", "t"),
        ] {
            client.append_header(k, v).expect("header");
        }
        let who = Principal {
            subject: "alice".into(),
            ..Principal::default()
        };
        let mut out = Outbound {
            sender: Sender::Client(ClientRequest {
                head: &client,
                principal: Some(&who),
                peer: Some("10.0.0.9".parse().expect("ip")),
                peer_trusted: false,
                renamed: Some("search"),
                uncompressed: false,
            }),
            session: None,
            wait: super::super::Wait::Answer,
            answer_by: None,
        };
        let req = head(&cfg, &Method::POST, &out, Some(12)).expect("built");
        let h = &req.headers;
        assert_eq!(h["host"], "127.0.0.1:9");
        assert_eq!(h["content-length"], "12");
        assert_eq!(h["x-tenant"], "t1");
        assert_eq!(h["x-user"], "alice", "identity from the gateway only");
        assert_eq!(
            h["x-forwarded-for"], "10.0.0.9",
            "an untrusted peer's chain is dropped"
        );
        assert_eq!(h["mcp-name"], "search");
        assert_eq!(h["x-trace"], "t");
        for gone in ["authorization", "cookie", "x-hop", "connection"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        if let Sender::Client(c) = &mut out.sender {
            c.peer_trusted = true;
        }
        let req = head(&cfg, &Method::POST, &out, Some(12)).expect("built");
        assert_eq!(req.headers["x-forwarded-for"], "6.6.6.6, 10.0.0.9");
        let own = Outbound {
            sender: Sender::Gateway {
                version: "2026-07-28",
                method: Some("tools/list"),
            },
            ..out
        };
        let req = head(&cfg, &Method::POST, &own, Some(2)).expect("built");
        assert_eq!(req.headers["mcp-method"], "tools/list");
        assert_eq!(req.headers["content-type"], "application/json");
        assert!(!req.headers.contains_key("x-user"));
    }
}
