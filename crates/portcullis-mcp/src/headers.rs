//! HTTP header rules of MCP's Streamable HTTP transport: names, Accept and
//! Content-Type checks, the 2026-07-28 `Mcp-Method`/`Mcp-Name` agreement with the body,
//! and which headers a proxy must not forward.

use std::borrow::Cow;

use base64::Engine as _;

use crate::envelope::Envelope;
use crate::error::Refusal;

/// Session id header (session era).
pub const MCP_SESSION_ID: &str = "mcp-session-id";
/// Protocol revision header.
pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// 2026-07-28: the JSON-RPC method, repeated as a header.
pub const MCP_METHOD: &str = "mcp-method";
/// 2026-07-28: the target name or URI, repeated as a header.
pub const MCP_NAME: &str = "mcp-name";
/// SSE resumption header.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The two media types of Streamable HTTP.
pub const APPLICATION_JSON: &str = "application/json";
/// Server-sent events.
pub const TEXT_EVENT_STREAM: &str = "text/event-stream";

/// Headers that describe one hop and never cross the proxy (RFC 9110 section 7.6.1),
/// plus `proxy-connection`, which old clients still send.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a header is hop-by-hop and so stripped when forwarding.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// What an `Accept` header admits of the two transport media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accepts {
    /// `application/json` (or a wildcard covering it).
    pub json: bool,
    /// `text/event-stream` (or a wildcard covering it).
    pub sse: bool,
}

/// Reads one or more `Accept` header values. Wildcards match as HTTP defines them;
/// a media range with `q=0` is an explicit refusal and does not count.
pub fn accepts<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Accepts {
    let mut out = Accepts::default();
    for value in values {
        let Ok(text) = std::str::from_utf8(value) else {
            continue;
        };
        for range in text.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.len() >= 2
                    && p[..2].eq_ignore_ascii_case("q=")
                    && p[2..].trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            let any = media == "*/*";
            if any
                || media.eq_ignore_ascii_case(APPLICATION_JSON)
                || media.eq_ignore_ascii_case("application/*")
            {
                out.json = true;
            }
            if any
                || media.eq_ignore_ascii_case(TEXT_EVENT_STREAM)
                || media.eq_ignore_ascii_case("text/*")
            {
                out.sse = true;
            }
        }
    }
    out
}

/// Whether a `Content-Type` value is `application/json`, parameters allowed.
pub fn is_json_content_type(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    let media = text.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case(APPLICATION_JSON)
}

/// Decodes an `Mcp-Name` value: plain visible ASCII, or `=?base64?…?=` for values that
/// are not header-safe. `None` when the encoding is broken.
pub fn decode_mcp_name(value: &[u8]) -> Option<Cow<'_, str>> {
    let text = std::str::from_utf8(value).ok()?;
    match text
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok().map(Cow::Owned)
        }
        None => Some(Cow::Borrowed(text)),
    }
}

/// Encodes a name for `Mcp-Name`: as is when it is visible ASCII (and does not look
/// encoded), else `=?base64?…?=`. [`decode_mcp_name`] reverses it.
pub fn encode_mcp_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.bytes().all(|b| (0x21..=0x7e).contains(&b))
        && !name.starts_with("=?");
    if plain {
        name.to_owned()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name.as_bytes())
        )
    }
}

/// 2026-07-28: `Mcp-Method` (and `Mcp-Name` for targeted methods) must be present and
/// equal to what the body says. `method`/`name` are the raw header values, if sent.
pub fn check_stateless_headers(
    env: &Envelope<'_>,
    method: Option<&[u8]>,
    name: Option<&[u8]>,
) -> Result<(), Refusal> {
    if env.kind != crate::Kind::Request && env.kind != crate::Kind::Notification {
        return Ok(());
    }
    let body_method = env.method_str();
    match method {
        None => {
            return Err(Refusal::HeaderMismatch(
                "Mcp-Method header is required".into(),
            ))
        }
        Some(m) if m != body_method.as_bytes() => {
            return Err(Refusal::HeaderMismatch(format!(
                "Mcp-Method header does not match body method {body_method:?}"
            )))
        }
        Some(_) => {}
    }
    if let Some(target) = env.target.as_deref() {
        match name.map(decode_mcp_name) {
            None => {
                return Err(Refusal::HeaderMismatch(format!(
                    "Mcp-Name header is required for {body_method}"
                )))
            }
            Some(Some(n)) if n == target => {}
            Some(_) => {
                return Err(Refusal::HeaderMismatch(
                    "Mcp-Name header does not match the body".into(),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_names_encode_and_decode_back() {
        for name in ["echo", "with space", "é", "=?base64?x?=", ""] {
            let enc = encode_mcp_name(name);
            assert!(
                enc.bytes().all(|b| (0x21..=0x7e).contains(&b))
                    || enc.is_empty()
                    || enc.starts_with("=?"),
                "{enc}"
            );
            assert_eq!(
                decode_mcp_name(enc.as_bytes()).as_deref(),
                Some(name),
                "{name:?}"
            );
        }
        assert_eq!(encode_mcp_name("echo"), "echo");
    }

    #[test]
    fn accept_needs_both_types_and_honours_wildcards_and_q0() {
        let a = accepts([b"application/json, text/event-stream".as_slice()]);
        assert!(a.json && a.sse);
        let a = accepts([
            b"application/json".as_slice(),
            b"text/event-stream".as_slice(),
        ]);
        assert!(a.json && a.sse);
        let a = accepts([b"application/json".as_slice()]);
        assert!(a.json && !a.sse);
        let a = accepts([b"*/*".as_slice()]);
        assert!(a.json && a.sse);
        let a = accepts([b"application/json;q=0.9, text/event-stream;q=0".as_slice()]);
        assert!(a.json && !a.sse);
        let a = accepts([b"\xff\xfe".as_slice()]);
        assert!(!a.json && !a.sse);
        assert_eq!(accepts(std::iter::empty()), Accepts::default());
    }

    #[test]
    fn content_type_allows_parameters_only() {
        assert!(is_json_content_type(b"application/json"));
        assert!(is_json_content_type(b"Application/JSON; charset=utf-8"));
        assert!(!is_json_content_type(b"application/jsonx"));
        assert!(!is_json_content_type(b"text/plain"));
        assert!(!is_json_content_type(b""));
    }

    #[test]
    fn mcp_name_decodes_plain_and_base64_forms() {
        assert_eq!(decode_mcp_name(b"echo").as_deref(), Some("echo"));
        assert_eq!(
            decode_mcp_name(b"=?base64?w6ljaG8=?=").as_deref(),
            Some("\u{e9}cho")
        );
        assert_eq!(decode_mcp_name(b"=?base64?!!!?="), None);
        assert_eq!(decode_mcp_name(b"=?base64?/w==?="), None);
    }

    #[test]
    fn stateless_headers_must_match_the_body() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
        let env = Envelope::parse(body).expect("env");
        assert!(check_stateless_headers(&env, Some(b"tools/call"), Some(b"echo")).is_ok());
        assert!(
            check_stateless_headers(&env, Some(b"tools/call"), Some(b"=?base64?ZWNobw==?="))
                .is_ok()
        );
        for (m, n) in [
            (None, Some(b"echo".as_slice())),
            (Some(b"tools/list".as_slice()), Some(b"echo".as_slice())),
            (Some(b"tools/call".as_slice()), None),
            (Some(b"tools/call".as_slice()), Some(b"add".as_slice())),
        ] {
            let err = check_stateless_headers(&env, m, n).expect_err("mismatch");
            assert_eq!(err.code(), crate::error::HEADER_MISMATCH);
        }
        let list =
            Envelope::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).expect("env");
        assert!(check_stateless_headers(&list, Some(b"tools/list"), None).is_ok());
    }

    #[test]
    fn hop_by_hop_headers_are_recognised_in_any_case() {
        assert!(is_hop_by_hop("Connection"));
        assert!(is_hop_by_hop("TRANSFER-ENCODING"));
        assert!(!is_hop_by_hop("mcp-session-id"));
    }
}
