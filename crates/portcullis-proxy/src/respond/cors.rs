//! CORS for browser-based MCP clients: response headers for an allowed `Origin`, and
//! the answer to a preflight.

use pingora_http::ResponseHeader;

use crate::ctx::Ctx;

/// Methods the MCP endpoint answers, for `Allow`.
pub const ALLOW: &str = "GET, POST, DELETE, OPTIONS";
/// Request headers a browser client may send cross-origin.
const ALLOW_HEADERS: &str = "content-type, accept, authorization, mcp-session-id, \
mcp-protocol-version, mcp-method, mcp-name, last-event-id";
/// Response headers a browser client may read cross-origin.
const EXPOSE_HEADERS: &str = "mcp-session-id, mcp-protocol-version, www-authenticate";

/// Adds CORS response headers when the request came with an allowed Origin.
pub fn add(resp: &mut ResponseHeader, cx: &Ctx) {
    if let Some(origin) = &cx.cors_origin {
        let _ = resp.insert_header("access-control-allow-origin", origin.as_str());
        let _ = resp.insert_header("access-control-expose-headers", EXPOSE_HEADERS);
        let _ = resp.insert_header("vary", "Origin");
    }
}

/// The answer to an `OPTIONS` preflight.
pub fn preflight(cx: &Ctx) -> Option<ResponseHeader> {
    let mut resp = ResponseHeader::build(204, Some(8)).ok()?;
    let _ = resp.insert_header("allow", ALLOW);
    if cx.cors_origin.is_some() {
        add(&mut resp, cx);
        let _ = resp.insert_header("access-control-allow-methods", ALLOW);
        let _ = resp.insert_header("access-control-allow-headers", ALLOW_HEADERS);
        let _ = resp.insert_header("access-control-max-age", "600");
    }
    let _ = resp.insert_header(http::header::CONTENT_LENGTH, "0");
    Some(resp)
}
