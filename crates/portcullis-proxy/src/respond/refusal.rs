//! Refusals as the client sees them: one response per [`Refusal`], shaped by the error
//! contract (docs/errors.md), with the request's JSON-RPC id (when it was read) and
//! the headers the refusal calls for (`Allow`, `Retry-After`, `WWW-Authenticate`, CORS).

use bytes::Bytes;
use http::header;
use pingora_http::ResponseHeader;
use portcullis_mcp::Refusal;

use super::cors;
use crate::ctx::Ctx;

/// The response to `refusal` and its body; records the status and reason in `cx`.
pub fn response(refusal: &Refusal, cx: &mut Ctx) -> Option<(ResponseHeader, Bytes)> {
    let body = refusal.body(cx.rpc_id.as_deref());
    cx.status = refusal.status();
    cx.reason = Some(refusal.reason());
    let mut resp = ResponseHeader::build(refusal.status(), Some(8)).ok()?;
    let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = resp.insert_header(header::CONTENT_LENGTH, body.len().to_string());
    if let Refusal::MethodNotAllowed { allow } = refusal {
        let _ = resp.insert_header("allow", *allow);
    }
    if let Some(secs) = refusal.retry_after_secs() {
        let _ = resp.insert_header("retry-after", secs.to_string());
    }
    if let Some(challenge) = refusal.challenge() {
        let _ = resp.insert_header(header::WWW_AUTHENTICATE, challenge);
    }
    cors::add(&mut resp, cx);
    Some((resp, Bytes::from(body)))
}

/// A JSON document the gateway answers itself (resource metadata), readable from any
/// origin: browser-based clients fetch it before they hold any credential.
pub fn json(status: u16, body: Vec<u8>, cx: &mut Ctx) -> Option<(ResponseHeader, Bytes)> {
    cx.status = status;
    let mut resp = ResponseHeader::build(status, Some(4)).ok()?;
    let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = resp.insert_header(header::CONTENT_LENGTH, body.len().to_string());
    let _ = resp.insert_header("access-control-allow-origin", "*");
    Some((resp, Bytes::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_id_and_the_headers_it_calls_for() {
        let mut cx = Ctx::new(None);
        cx.rpc_id = Some("\"r-7\"".into());
        cx.cors_origin = Some("http://localhost:3000".into());
        let (head, body) = response(
            &Refusal::RateLimited {
                limit: "per-caller".into(),
                retry_after_ms: 1500,
            },
            &mut cx,
        )
        .expect("built");
        assert_eq!(head.status.as_u16(), 429);
        assert_eq!(head.headers["retry-after"], "2");
        assert_eq!(
            head.headers["access-control-allow-origin"],
            "http://localhost:3000"
        );
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["id"], "r-7");
        assert_eq!(v["error"]["code"], -32017);
        assert_eq!((cx.status, cx.reason), (429, Some("rate_limited")));
        let (head, _) =
            response(&Refusal::MethodNotAllowed { allow: "POST" }, &mut cx).expect("built");
        assert_eq!(head.headers["allow"], "POST");
    }
}
