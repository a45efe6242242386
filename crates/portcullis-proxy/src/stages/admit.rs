//! The admission stage: a request's media types, its `MCP-Protocol-Version` and
//! `Mcp-*` headers, its envelope (one JSON-RPC message, or a 2025-03-26 batch), and the
//! rules of its era and route. What passes is what the gateway will forward, and
//! [`Admitted`] says what it counts as for the stages after.

use http::header::{self, HeaderName};
use pingora_http::RequestHeader;
use portcullis_mcp::envelope::{Body, EnvelopeError};
use portcullis_mcp::headers::{self, MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION};
use portcullis_mcp::{Era, Kind, ProtocolVersion, Refusal};

use crate::ctx::{Ctx, Op};

// Prebuilt names: a lookup by `&str` parses and hashes the name on every request.
static MCP_METHOD_H: HeaderName = HeaderName::from_static(MCP_METHOD);
static MCP_NAME_H: HeaderName = HeaderName::from_static(MCP_NAME);
static MCP_PROTOCOL_VERSION_H: HeaderName = HeaderName::from_static(MCP_PROTOCOL_VERSION);

/// What an admitted POST counts as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admitted {
    /// It spends from rate limits (responses and cancellations do not).
    pub counted: bool,
    /// A request (with an id): it takes gate slots and waits for its answer.
    pub request: bool,
    /// A `subscriptions/listen` stream (2026-07-28): capped like GET streams, holding
    /// no gate slot, never cut for a quiet upstream.
    pub listen: bool,
    /// The request id (JSON text) a `notifications/cancelled` names.
    pub cancels: Option<String>,
}

/// What the route asks of messages beyond the spec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// The route has a policy: batches and id-less calls would escape it.
    pub policy: bool,
    /// The route has rate limits, or its upstream gates or deadlines: every call must
    /// be counted and gated on its own.
    pub governed: bool,
}

/// A POST's `Content-Type` and `Accept`, checked before its body is read (a refused
/// body is never read, so the connection closes).
pub fn post_head(req: &RequestHeader, cx: &mut Ctx) -> Result<(), Refusal> {
    let ct_ok = req
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| headers::is_json_content_type(v.as_bytes()));
    if !ct_ok {
        cx.close = true;
        return Err(Refusal::UnsupportedMediaType);
    }
    let acc = headers::accepts(
        req.headers
            .get_all(header::ACCEPT)
            .iter()
            .map(|v| v.as_bytes()),
    );
    if !(acc.json && acc.sse) {
        cx.close = true;
        return Err(Refusal::NotAcceptable(
            "Accept must include both application/json and text/event-stream",
        ));
    }
    Ok(())
}

/// `MCP-Protocol-Version` (at most one, and a revision the gateway speaks) and the
/// 2026-07-28 `Mcp-Method` / `Mcp-Name` headers (at most one each).
pub fn protocol_headers(req: &RequestHeader, cx: &mut Ctx) -> Result<(), Refusal> {
    for name in [&MCP_METHOD_H, &MCP_NAME_H] {
        if req.headers.get_all(name).iter().nth(1).is_some() {
            return Err(Refusal::InvalidRequest(format!(
                "{name} header sent more than once"
            )));
        }
    }
    let values = req.headers.get_all(&MCP_PROTOCOL_VERSION_H);
    let mut iter = values.iter();
    let Some(first) = iter.next() else {
        return Ok(());
    };
    if iter.next().is_some() {
        return Err(Refusal::InvalidRequest(
            "MCP-Protocol-Version header sent more than once".into(),
        ));
    }
    let text = first.to_str().unwrap_or("");
    cx.version =
        Some(
            ProtocolVersion::parse(text).ok_or_else(|| Refusal::UnsupportedProtocolVersion {
                requested: String::from_utf8_lossy(first.as_bytes()).into_owned(),
            })?,
        );
    Ok(())
}

/// Parses the body once; the id is kept for every refusal from here on.
pub fn parse<'b>(body: &'b [u8], cx: &mut Ctx) -> Result<Body<'b>, Refusal> {
    cx.bytes_in = body.len();
    let parsed = Body::parse(body).map_err(|e| {
        cx.rpc_id = e.id().map(str::to_owned);
        match e {
            EnvelopeError::Parse(r) => Refusal::ParseError(r),
            EnvelopeError::Invalid { reason, .. } => Refusal::InvalidRequest(reason),
            EnvelopeError::InvalidParams { reason, .. } => Refusal::InvalidParams(reason),
        }
    })?;
    if let Body::Single(env) = &parsed {
        cx.rpc_id = env.id.map(|r| r.get().to_owned());
        cx.op = Op::Message(env.method.as_deref().map(str::to_owned));
        cx.target = env.target.as_deref().map(str::to_owned);
    } else {
        cx.op = Op::Batch;
    }
    Ok(parsed)
}

/// The era's and the route's rules for a parsed POST body.
pub fn message(
    parsed: &Body<'_>,
    req: &RequestHeader,
    rules: Rules,
    cx: &mut Ctx,
) -> Result<Admitted, Refusal> {
    let env = match parsed {
        Body::Batch(items) => return batch(items, rules, cx),
        Body::Single(env) => env,
    };
    let header_version = req.headers.get(&MCP_PROTOCOL_VERSION_H);
    let stateless = cx.version == Some(ProtocolVersion::V2026_07_28);
    if let Some(meta) = env.meta_protocol_version.as_deref() {
        if header_version.map(|h| h.as_bytes()) != Some(meta.as_bytes()) {
            return Err(Refusal::HeaderMismatch(
                "MCP-Protocol-Version header does not match params._meta protocolVersion".into(),
            ));
        }
    } else if stateless && env.kind == Kind::Request {
        return Err(Refusal::InvalidParams(
            "2026-07-28 requests carry params._meta io.modelcontextprotocol/protocolVersion".into(),
        ));
    }
    if stateless {
        headers::check_stateless_headers(
            env,
            req.headers.get(&MCP_METHOD_H).map(|v| v.as_bytes()),
            req.headers.get(&MCP_NAME_H).map(|v| v.as_bytes()),
        )?;
    }
    let method = env.method.as_deref().unwrap_or("");
    if env.kind == Kind::Notification && !method.starts_with("notifications/") {
        // MCP's notifications all live under notifications/; anything else sent without
        // an id would be a call that escapes judgement, counting and gates.
        if rules.policy {
            return Err(Refusal::InvalidRequest(format!(
                "{method} must be a request (with an id) on a route with a policy"
            )));
        }
        if rules.governed {
            return Err(Refusal::InvalidRequest(format!(
                "{method} must be a request (with an id) on a route with rate limits, gates or deadlines"
            )));
        }
    }
    if rules.governed && env.kind == Kind::Request && method == "tools/call" && env.target.is_none()
    {
        return Err(Refusal::InvalidParams(
            "tools/call needs params as an object with a string name here".into(),
        ));
    }
    Ok(match env.kind {
        Kind::Response => Admitted::default(),
        Kind::Notification => Admitted {
            counted: !matches!(
                method,
                "notifications/cancelled" | "notifications/initialized"
            ),
            cancels: (method == "notifications/cancelled")
                .then(|| cancelled_request(env.params))
                .flatten()
                .map(str::to_owned),
            ..Admitted::default()
        },
        Kind::Request => Admitted {
            counted: true,
            request: true,
            listen: method == "subscriptions/listen",
            cancels: None,
        },
    })
}

fn batch(
    items: &[portcullis_mcp::Envelope<'_>],
    rules: Rules,
    cx: &Ctx,
) -> Result<Admitted, Refusal> {
    if rules.policy {
        // A batch could carry a list (unfilterable here) or mix decisions.
        return Err(Refusal::InvalidRequest(
            "JSON-RPC batches are not accepted on routes with a policy".into(),
        ));
    }
    if !cx
        .version
        .unwrap_or(ProtocolVersion::ASSUMED_WITHOUT_HEADER)
        .allows_batch()
    {
        return Err(Refusal::InvalidRequest(
            "JSON-RPC batches are only allowed in protocol revision 2025-03-26".into(),
        ));
    }
    if items.iter().any(|e| e.method_str() == "initialize") {
        return Err(Refusal::InvalidRequest(
            "initialize must not be part of a batch".into(),
        ));
    }
    if rules.governed {
        // Each call must meet its own limits and gates.
        return Err(Refusal::InvalidRequest(
            "JSON-RPC batches are not accepted on routes with rate limits, or whose upstream has gates or deadlines".into(),
        ));
    }
    Ok(Admitted {
        counted: true,
        request: items.iter().any(|e| e.kind == Kind::Request),
        listen: false,
        cancels: None,
    })
}

/// A GET (a session's stream) or DELETE (the end of a session): neither exists in the
/// stateless revision, and a stream must be asked for as one.
pub fn stream_or_end(req: &RequestHeader, get: bool, cx: &mut Ctx) -> Result<(), Refusal> {
    cx.op = if get { Op::Stream } else { Op::EndSession };
    if cx.version.is_some_and(|v| v.era() == Era::Stateless) {
        // 2026-07-28 has no GET stream and no sessions to delete.
        return Err(Refusal::MethodNotAllowed { allow: "POST" });
    }
    if get {
        let acc = headers::accepts(
            req.headers
                .get_all(header::ACCEPT)
                .iter()
                .map(|v| v.as_bytes()),
        );
        if !acc.sse {
            return Err(Refusal::NotAcceptable(
                "Accept must include text/event-stream",
            ));
        }
    }
    Ok(())
}

/// The `requestId` a `notifications/cancelled` names, as JSON text.
fn cancelled_request(params: Option<&serde_json::value::RawValue>) -> Option<&str> {
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow, rename = "requestId")]
        request_id: &'a serde_json::value::RawValue,
    }
    let p: Params<'_> = serde_json::from_str(params?.get()).ok()?;
    Some(p.request_id.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/mcp", None).expect("head");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    const JSON: [(&str, &str); 2] = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];

    fn admit(
        body: &str,
        headers: &[(&str, &str)],
        rules: Rules,
    ) -> (Result<Admitted, Refusal>, Ctx) {
        let mut cx = Ctx::new(None);
        let req = head(headers);
        let r = (|| {
            protocol_headers(&req, &mut cx)?;
            let parsed = parse(body.as_bytes(), &mut cx)?;
            message(&parsed, &req, rules, &mut cx)
        })();
        (r, cx)
    }

    #[test]
    fn media_types_are_checked_before_the_body_and_close_the_connection() {
        let mut cx = Ctx::new(None);
        assert!(post_head(&head(&JSON), &mut cx).is_ok());
        assert_eq!(
            post_head(
                &head(&[("accept", "application/json, text/event-stream")]),
                &mut cx
            ),
            Err(Refusal::UnsupportedMediaType)
        );
        assert!(cx.close);
        let mut cx = Ctx::new(None);
        assert!(matches!(
            post_head(
                &head(&[
                    ("content-type", "application/json"),
                    ("accept", "application/json")
                ]),
                &mut cx
            ),
            Err(Refusal::NotAcceptable(_))
        ));
    }

    #[test]
    fn protocol_headers_are_single_and_known() {
        for h in [
            vec![("mcp-method", "tools/call"), ("mcp-method", "tools/list")],
            vec![("mcp-name", "a"), ("mcp-name", "b")],
            vec![
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-protocol-version", "2025-11-25"),
            ],
        ] {
            let mut cx = Ctx::new(None);
            assert!(
                matches!(
                    protocol_headers(&head(&h), &mut cx),
                    Err(Refusal::InvalidRequest(_))
                ),
                "{h:?}"
            );
        }
        let mut cx = Ctx::new(None);
        assert!(matches!(
            protocol_headers(&head(&[("mcp-protocol-version", "1999-01-01")]), &mut cx),
            Err(Refusal::UnsupportedProtocolVersion { .. })
        ));
        assert!(
            protocol_headers(&head(&[("mcp-protocol-version", "2026-07-28")]), &mut cx).is_ok()
        );
        assert!(cx.stateless());
    }

    #[test]
    fn refusals_keep_the_id_once_it_is_read() {
        let (r, cx) = admit(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","_meta":{"io.modelcontextprotocol/protocolVersion":"2025-11-25"}}}"#,
            &[("mcp-protocol-version", "2026-07-28")],
            Rules::default(),
        );
        assert!(matches!(r, Err(Refusal::HeaderMismatch(_))));
        assert_eq!(cx.rpc_id.as_deref(), Some("7"));
        let (r, cx) = admit(
            r#"{"jsonrpc":"1.0","id":"a","method":"x"}"#,
            &[],
            Rules::default(),
        );
        assert!(matches!(r, Err(Refusal::InvalidRequest(_))));
        assert_eq!(cx.rpc_id.as_deref(), Some("\"a\""));
        let (r, cx) = admit("{not json", &[], Rules::default());
        assert!(matches!(r, Err(Refusal::ParseError(_))));
        assert_eq!(cx.rpc_id, None);
    }

    #[test]
    fn what_a_message_counts_as() {
        let (r, cx) = admit(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
            &[],
            Rules::default(),
        );
        assert_eq!(
            r,
            Ok(Admitted {
                counted: true,
                request: true,
                listen: false,
                cancels: None
            })
        );
        assert_eq!(cx.target.as_deref(), Some("echo"));
        assert!(cx.op.is_tool_call());
        let (r, _) = admit(
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r-1"}}"#,
            &[],
            Rules::default(),
        );
        assert_eq!(r.expect("admitted").cancels.as_deref(), Some("\"r-1\""));
        let (r, _) = admit(
            r#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
            &[],
            Rules::default(),
        );
        assert_eq!(
            r,
            Ok(Admitted::default()),
            "a response to the server spends nothing"
        );
        let listen = r#"{"jsonrpc":"2.0","id":2,"method":"subscriptions/listen","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        let (r, _) = admit(
            listen,
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "subscriptions/listen"),
            ],
            Rules::default(),
        );
        assert!(r.expect("admitted").listen);
    }

    #[test]
    fn calls_cannot_escape_policies_or_limits_as_notifications_or_batches() {
        let governed = Rules {
            policy: false,
            governed: true,
        };
        let policed = Rules {
            policy: true,
            governed: false,
        };
        for rules in [governed, policed] {
            let (r, _) = admit(
                r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}"#,
                &[],
                rules,
            );
            assert!(matches!(r, Err(Refusal::InvalidRequest(_))));
            let (r, _) = admit(
                r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
                &[("mcp-protocol-version", "2025-03-26")],
                rules,
            );
            assert!(matches!(r, Err(Refusal::InvalidRequest(_))));
        }
        let (r, _) = admit(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}"#,
            &[],
            governed,
        );
        assert!(matches!(r, Err(Refusal::InvalidParams(_))));
        let (r, _) = admit(
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            &[("mcp-protocol-version", "2025-03-26")],
            Rules::default(),
        );
        assert!(
            r.is_ok(),
            "a batch where nothing needs each call on its own"
        );
        let (r, _) = admit(
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            &[("mcp-protocol-version", "2025-06-18")],
            Rules::default(),
        );
        assert!(r.is_err(), "batches only in 2025-03-26");
    }

    #[test]
    fn streams_and_session_ends_do_not_exist_statelessly() {
        let mut cx = Ctx::new(None);
        cx.version = Some(ProtocolVersion::V2026_07_28);
        assert_eq!(
            stream_or_end(&head(&[]), false, &mut cx),
            Err(Refusal::MethodNotAllowed { allow: "POST" })
        );
        let mut cx = Ctx::new(None);
        assert!(matches!(
            stream_or_end(&head(&[("accept", "application/json")]), true, &mut cx),
            Err(Refusal::NotAcceptable(_))
        ));
        assert!(stream_or_end(&head(&[("accept", "text/event-stream")]), true, &mut cx).is_ok());
        assert_eq!(cx.op, Op::Stream);
    }
}
