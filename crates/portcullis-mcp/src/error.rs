//! The gateway's one error contract: every refusal as HTTP status, JSON-RPC code,
//! message and `data`. docs/errors.md documents this table; keep the two in step.
//!
//! Gateway-defined codes live in -32003..=-32019: inside JSON-RPC's implementation-defined
//! server range, outside MCP's reserved -32020..-32099, and clear of -32000..-32002
//! that SDKs already use (connection closed, request timeout, resource not found).

use std::fmt::Write as _;

use crate::era::ProtocolVersion;

/// JSON-RPC 2.0: the body is not JSON.
pub const PARSE_ERROR: i32 = -32700;
/// JSON-RPC 2.0: JSON, but not a valid request object.
pub const INVALID_REQUEST: i32 = -32600;
/// JSON-RPC 2.0: no such method.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// JSON-RPC 2.0: the params are wrong for the method.
pub const INVALID_PARAMS: i32 = -32602;
/// MCP 2026-07-28: an `Mcp-*` header disagrees with the body.
pub const HEADER_MISMATCH: i32 = -32020;
/// MCP 2026-07-28: the requested protocol revision is not supported.
pub const UNSUPPORTED_PROTOCOL_VERSION: i32 = -32022;
/// Gateway: no route serves this path.
pub const NO_ROUTE: i32 = -32003;
/// Gateway: the HTTP method is not allowed here.
pub const HTTP_METHOD_NOT_ALLOWED: i32 = -32004;
/// Gateway: Origin or Host failed DNS-rebinding validation.
pub const ORIGIN_NOT_ALLOWED: i32 = -32005;
/// Gateway: Accept lacks a media type the transport needs.
pub const NOT_ACCEPTABLE: i32 = -32006;
/// Gateway: Content-Type is not application/json.
pub const UNSUPPORTED_MEDIA_TYPE: i32 = -32007;
/// Gateway: the body exceeds the configured limit.
pub const PAYLOAD_TOO_LARGE: i32 = -32008;
/// Gateway: the upstream could not be reached or broke the exchange.
pub const UPSTREAM_UNAVAILABLE: i32 = -32009;
/// Gateway: the upstream did not answer in time.
pub const UPSTREAM_TIMEOUT: i32 = -32010;
/// Gateway: the gateway is draining or over a capacity limit.
pub const UNAVAILABLE: i32 = -32011;
/// Gateway: the client did not send its request body in time.
pub const REQUEST_TIMEOUT: i32 = -32012;
/// Gateway: the `Mcp-Session-Id` names no session this gateway can route.
pub const SESSION_NOT_FOUND: i32 = -32013;
/// Gateway: no valid credential (401).
pub const UNAUTHORIZED: i32 = -32014;
/// Gateway: a valid credential without the scopes the route requires (403).
pub const INSUFFICIENT_SCOPE: i32 = -32015;
/// A policy rule denies this call (the target is listed, but not for this caller).
pub const POLICY_DENIED: i32 = -32016;
/// A rate limit refused the request (HTTP 429).
pub const RATE_LIMITED: i32 = -32017;
/// The client cancelled the request before its answer came.
pub const REQUEST_CANCELLED: i32 = -32018;
/// MCP's "resource not found" (older revisions), used for hidden resources.
pub const RESOURCE_NOT_FOUND: i32 = -32002;

/// What a hidden target is refused as: exactly what an unknown one of its kind gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// `Unknown tool: <name>` (-32602).
    Tool,
    /// `Unknown prompt: <name>` (-32602).
    Prompt,
    /// `Resource not found` (-32002, with `data.uri`).
    Resource,
    /// `Method not found` (-32601).
    Method,
    /// `Method not found` (-32601) with HTTP 404, as the 2026-07-28 revision answers.
    StatelessMethod,
}

/// Why a request was turned away for capacity (HTTP 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// A concurrency gate is full and so is its queue.
    QueueFull,
    /// The request waited in a gate's queue for its whole `queue_timeout`.
    QueueTimeout,
    /// The replica is serving `admission.max_requests` requests.
    TooManyRequests,
    /// The replica holds `admission.max_streams` open GET streams.
    TooManyStreams,
}

impl Overload {
    /// The stable word in `data.reason`, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Overload::QueueFull => "queue_full",
            Overload::QueueTimeout => "queue_timeout",
            Overload::TooManyRequests => "too_many_requests",
            Overload::TooManyStreams => "too_many_streams",
        }
    }
}

/// A request the gateway refuses or cannot complete, with everything the answer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400, -32700.
    ParseError(String),
    /// 400, -32600.
    InvalidRequest(String),
    /// 400, -32602.
    InvalidParams(String),
    /// 400, -32020: an `Mcp-Method`/`Mcp-Name` header and the body disagree.
    HeaderMismatch(String),
    /// 400, -32022, `data.supported` and `data.requested`.
    UnsupportedProtocolVersion {
        /// The value the client sent.
        requested: String,
    },
    /// 403, -32005: the `Origin` is not allowed.
    OriginNotAllowed(String),
    /// 403, -32005: the `Host` is not allowed.
    HostNotAllowed(String),
    /// 404, -32003.
    NoRoute,
    /// 405, -32004; the answer carries `Allow`.
    MethodNotAllowed {
        /// The methods this path accepts, for the `Allow` header.
        allow: &'static str,
    },
    /// 406, -32006.
    NotAcceptable(&'static str),
    /// 413, -32008, `data.limit`.
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// 415, -32007.
    UnsupportedMediaType,
    /// 502, -32009, `data.upstream`.
    UpstreamUnavailable {
        /// The upstream's configured name.
        upstream: String,
        /// What failed, in words safe to show a client.
        detail: String,
    },
    /// 504, -32010, `data.upstream`.
    UpstreamTimeout {
        /// The upstream's configured name.
        upstream: String,
    },
    /// 503, -32011, with `Retry-After`.
    ShuttingDown,
    /// 408, -32012.
    RequestTimeout,
    /// 404, -32013: the client must start a new session.
    SessionNotFound,
    /// 401, -32014, with `WWW-Authenticate`.
    Unauthorized {
        /// The `WWW-Authenticate` value.
        challenge: String,
        /// Why, in words safe to show the client.
        detail: String,
    },
    /// 403, -32015, with `WWW-Authenticate` (`error="insufficient_scope"`).
    InsufficientScope {
        /// The `WWW-Authenticate` value.
        challenge: String,
    },
    /// A policy rule denies the call: HTTP 200 with a JSON-RPC error (the exchange
    /// worked; one call was refused), naming the rule.
    PolicyDenied {
        /// The deciding rule (`default` when the policy's default denied).
        rule: String,
        /// What was refused, e.g. `tool delete_file`.
        target: String,
    },
    /// 429, -32017: a rate limit is exhausted; `Retry-After` and `data.retryAfterMs`
    /// say when it will admit the request.
    RateLimited {
        /// The limit's configured name.
        limit: String,
        /// Milliseconds until the limit admits one request.
        retry_after_ms: u64,
    },
    /// 503, -32011, with `Retry-After`: a concurrency gate or a replica-wide cap
    /// turned the request away.
    Overloaded(Overload),
    /// 504, -32010: the call ran past its deadline; the gateway cancelled it upstream.
    DeadlineExceeded {
        /// The upstream's configured name.
        upstream: String,
        /// How long the call had run, in milliseconds.
        after_ms: u64,
    },
    /// 503, -32009, with `Retry-After`: the endpoint's circuit breaker is open (it
    /// failed repeatedly), so the call fails fast instead of waiting on it.
    CircuitOpen {
        /// The upstream's configured name.
        upstream: String,
        /// Seconds until the breaker lets a probe call through.
        retry_after_secs: u64,
    },
    /// 200, -32018: the client cancelled the request before any answer came (it
    /// ignores this one; the exchange still needs an end).
    Cancelled,
    /// A policy hides the target: answered exactly as an unknown target of its kind
    /// (HTTP 200, the JSON-RPC error an MCP server gives, no `data.reason`), so a caller
    /// cannot tell it exists. Logs and metrics still say `policy_hidden`.
    Hidden {
        /// What kind of unknown thing to answer as.
        kind: Unknown,
        /// The name or URI the caller used.
        name: String,
    },
}

impl Refusal {
    /// The HTTP status code of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::ParseError(_)
            | Refusal::InvalidRequest(_)
            | Refusal::InvalidParams(_)
            | Refusal::HeaderMismatch(_)
            | Refusal::UnsupportedProtocolVersion { .. } => 400,
            Refusal::OriginNotAllowed(_)
            | Refusal::HostNotAllowed(_)
            | Refusal::InsufficientScope { .. } => 403,
            Refusal::Unauthorized { .. } => 401,
            Refusal::NoRoute | Refusal::SessionNotFound => 404,
            Refusal::RequestTimeout => 408,
            Refusal::MethodNotAllowed { .. } => 405,
            Refusal::NotAcceptable(_) => 406,
            Refusal::PayloadTooLarge { .. } => 413,
            Refusal::UnsupportedMediaType => 415,
            Refusal::UpstreamUnavailable { .. } => 502,
            Refusal::ShuttingDown | Refusal::Overloaded(_) | Refusal::CircuitOpen { .. } => 503,
            Refusal::RateLimited { .. } => 429,
            Refusal::UpstreamTimeout { .. } | Refusal::DeadlineExceeded { .. } => 504,
            Refusal::Cancelled => 200,
            Refusal::Hidden {
                kind: Unknown::StatelessMethod,
                ..
            } => 404,
            Refusal::PolicyDenied { .. } | Refusal::Hidden { .. } => 200,
        }
    }

    /// The JSON-RPC error code.
    pub fn code(&self) -> i32 {
        match self {
            Refusal::ParseError(_) => PARSE_ERROR,
            Refusal::InvalidRequest(_) => INVALID_REQUEST,
            Refusal::InvalidParams(_) => INVALID_PARAMS,
            Refusal::HeaderMismatch(_) => HEADER_MISMATCH,
            Refusal::UnsupportedProtocolVersion { .. } => UNSUPPORTED_PROTOCOL_VERSION,
            Refusal::OriginNotAllowed(_) | Refusal::HostNotAllowed(_) => ORIGIN_NOT_ALLOWED,
            Refusal::NoRoute => NO_ROUTE,
            Refusal::MethodNotAllowed { .. } => HTTP_METHOD_NOT_ALLOWED,
            Refusal::NotAcceptable(_) => NOT_ACCEPTABLE,
            Refusal::PayloadTooLarge { .. } => PAYLOAD_TOO_LARGE,
            Refusal::UnsupportedMediaType => UNSUPPORTED_MEDIA_TYPE,
            Refusal::UpstreamUnavailable { .. } | Refusal::CircuitOpen { .. } => {
                UPSTREAM_UNAVAILABLE
            }
            Refusal::UpstreamTimeout { .. } | Refusal::DeadlineExceeded { .. } => UPSTREAM_TIMEOUT,
            Refusal::Cancelled => REQUEST_CANCELLED,
            Refusal::ShuttingDown | Refusal::Overloaded(_) => UNAVAILABLE,
            Refusal::RateLimited { .. } => RATE_LIMITED,
            Refusal::RequestTimeout => REQUEST_TIMEOUT,
            Refusal::SessionNotFound => SESSION_NOT_FOUND,
            Refusal::Unauthorized { .. } => UNAUTHORIZED,
            Refusal::InsufficientScope { .. } => INSUFFICIENT_SCOPE,
            Refusal::PolicyDenied { .. } => POLICY_DENIED,
            Refusal::Hidden { kind, .. } => match kind {
                Unknown::Tool | Unknown::Prompt => INVALID_PARAMS,
                Unknown::Resource => RESOURCE_NOT_FOUND,
                Unknown::Method | Unknown::StatelessMethod => METHOD_NOT_FOUND,
            },
        }
    }

    /// A short stable word for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ParseError(_) => "parse_error",
            Refusal::InvalidRequest(_) => "invalid_request",
            Refusal::InvalidParams(_) => "invalid_params",
            Refusal::HeaderMismatch(_) => "header_mismatch",
            Refusal::UnsupportedProtocolVersion { .. } => "unsupported_protocol_version",
            Refusal::OriginNotAllowed(_) => "origin_not_allowed",
            Refusal::HostNotAllowed(_) => "host_not_allowed",
            Refusal::NoRoute => "no_route",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            Refusal::NotAcceptable(_) => "not_acceptable",
            Refusal::PayloadTooLarge { .. } => "payload_too_large",
            Refusal::UnsupportedMediaType => "unsupported_media_type",
            Refusal::UpstreamUnavailable { .. } => "upstream_unavailable",
            Refusal::UpstreamTimeout { .. } => "upstream_timeout",
            Refusal::DeadlineExceeded { .. } => "deadline_exceeded",
            Refusal::CircuitOpen { .. } => "circuit_open",
            Refusal::Cancelled => "cancelled",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Overloaded(o) => o.as_str(),
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::SessionNotFound => "session_not_found",
            Refusal::Unauthorized { .. } => "unauthorized",
            Refusal::InsufficientScope { .. } => "insufficient_scope",
            Refusal::PolicyDenied { .. } => "policy_denied",
            Refusal::Hidden { .. } => "policy_hidden",
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        match self {
            Refusal::ParseError(d) => format!("Parse error: {d}"),
            Refusal::InvalidRequest(d) => format!("Invalid request: {d}"),
            Refusal::InvalidParams(d) => format!("Invalid params: {d}"),
            Refusal::HeaderMismatch(d) => format!("Header mismatch: {d}"),
            Refusal::UnsupportedProtocolVersion { requested } => {
                format!("Unsupported protocol version: {requested}")
            }
            Refusal::OriginNotAllowed(d) | Refusal::HostNotAllowed(d) => format!("Forbidden: {d}"),
            Refusal::NoRoute => "Not found: no MCP route serves this path".to_owned(),
            Refusal::MethodNotAllowed { allow } => {
                format!("Method not allowed: this endpoint accepts {allow}")
            }
            Refusal::NotAcceptable(d) => format!("Not acceptable: {d}"),
            Refusal::PayloadTooLarge { limit } => {
                format!("Payload too large: the body exceeds {limit} bytes")
            }
            Refusal::UnsupportedMediaType => {
                "Unsupported media type: Content-Type must be application/json".to_owned()
            }
            Refusal::UpstreamUnavailable { upstream, detail } => {
                format!("Upstream {upstream} unavailable: {detail}")
            }
            Refusal::UpstreamTimeout { upstream } => {
                format!("Upstream {upstream} did not answer in time")
            }
            Refusal::DeadlineExceeded { upstream, after_ms } => {
                format!(
                    "Deadline exceeded: the call to {upstream} ran {after_ms} ms and was cancelled"
                )
            }
            Refusal::Cancelled => "Request cancelled by the client".to_owned(),
            Refusal::CircuitOpen { upstream, .. } => {
                format!("Upstream {upstream} unavailable: its circuit breaker is open after repeated failures")
            }
            Refusal::ShuttingDown => "Service unavailable: the gateway is draining".to_owned(),
            Refusal::Overloaded(o) => match o {
                Overload::QueueFull => "Service unavailable: too many calls are waiting".to_owned(),
                Overload::QueueTimeout => {
                    "Service unavailable: the call waited too long for a free slot".to_owned()
                }
                Overload::TooManyRequests | Overload::TooManyStreams => {
                    "Service unavailable: the gateway is at capacity".to_owned()
                }
            },
            Refusal::RateLimited {
                limit,
                retry_after_ms,
            } => {
                format!("Rate limited: limit {limit}; retry in {retry_after_ms} ms")
            }
            Refusal::RequestTimeout => {
                "Request timeout: the request body did not arrive in time".to_owned()
            }
            Refusal::SessionNotFound => {
                "Session not found: start a new session with initialize".to_owned()
            }
            Refusal::Unauthorized { detail, .. } => format!("Unauthorized: {detail}"),
            Refusal::InsufficientScope { .. } => {
                "Forbidden: the token lacks a scope this route requires".to_owned()
            }
            Refusal::PolicyDenied { rule, target } => {
                format!(
                    "Forbidden by policy: {target} is not allowed for this caller (rule {rule})"
                )
            }
            Refusal::Hidden { kind, name } => match kind {
                Unknown::Tool => format!("Unknown tool: {name}"),
                Unknown::Prompt => format!("Unknown prompt: {name}"),
                Unknown::Resource => "Resource not found".to_owned(),
                Unknown::Method | Unknown::StatelessMethod => "Method not found".to_owned(),
            },
        }
    }

    /// The `WWW-Authenticate` value, for authentication refusals.
    pub fn challenge(&self) -> Option<&str> {
        match self {
            Refusal::Unauthorized { challenge, .. } | Refusal::InsufficientScope { challenge } => {
                Some(challenge)
            }
            _ => None,
        }
    }

    /// Seconds for `Retry-After`, where the refusal is worth retrying.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Refusal::ShuttingDown | Refusal::Overloaded(_) => Some(1),
            Refusal::CircuitOpen {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            // Whole seconds, rounded up, so a client that waits exactly this long passes.
            Refusal::RateLimited { retry_after_ms, .. } => {
                Some(retry_after_ms.div_ceil(1000).max(1))
            }
            _ => None,
        }
    }

    /// The JSON-RPC error response body. `id` is the request id's JSON text, when known.
    pub fn body(&self, id: Option<&str>) -> Vec<u8> {
        let mut out = String::with_capacity(160);
        out.push_str(r#"{"jsonrpc":"2.0","id":"#);
        out.push_str(id.unwrap_or("null"));
        let _ = write!(out, r#","error":{{"code":{},"message":"#, self.code());
        push_json_string(&mut out, &self.message());
        if let Refusal::Hidden { kind, name } = self {
            // Nothing of the gateway's: what an MCP server says about an unknown target.
            if *kind == Unknown::Resource {
                out.push_str(r#","data":{"uri":"#);
                push_json_string(&mut out, name);
                out.push('}');
            }
            out.push_str("}}");
            return out.into_bytes();
        }
        let mut data = format!(r#"{{"reason":"{}""#, self.reason());
        match self {
            Refusal::UnsupportedProtocolVersion { requested } => {
                data.push_str(r#","supported":["#);
                for (i, v) in ProtocolVersion::supported_list().iter().enumerate() {
                    if i > 0 {
                        data.push(',');
                    }
                    let _ = write!(data, "\"{v}\"");
                }
                data.push_str(r#"],"requested":"#);
                push_json_string(&mut data, requested);
            }
            Refusal::PayloadTooLarge { limit } => {
                let _ = write!(data, r#","limit":{limit}"#);
            }
            Refusal::UpstreamUnavailable { upstream, .. }
            | Refusal::UpstreamTimeout { upstream }
            | Refusal::CircuitOpen { upstream, .. } => {
                data.push_str(r#","upstream":"#);
                push_json_string(&mut data, upstream);
            }
            Refusal::DeadlineExceeded { upstream, after_ms } => {
                data.push_str(r#","upstream":"#);
                push_json_string(&mut data, upstream);
                let _ = write!(data, r#","afterMs":{after_ms}"#);
            }
            Refusal::PolicyDenied { rule, .. } => {
                data.push_str(r#","rule":"#);
                push_json_string(&mut data, rule);
            }
            Refusal::RateLimited {
                limit,
                retry_after_ms,
            } => {
                data.push_str(r#","limit":"#);
                push_json_string(&mut data, limit);
                let _ = write!(data, r#","retryAfterMs":{retry_after_ms}"#);
            }
            _ => {}
        }
        data.push('}');
        out.push_str(r#","data":"#);
        out.push_str(&data);
        out.push_str("}}");
        out.into_bytes()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut String, s: &str) {
    // serde_json's escaping is the reference; a String never fails to serialize.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn all() -> Vec<Refusal> {
        vec![
            Refusal::ParseError("x".into()),
            Refusal::InvalidRequest("x".into()),
            Refusal::InvalidParams("x".into()),
            Refusal::HeaderMismatch("x".into()),
            Refusal::UnsupportedProtocolVersion {
                requested: "1999\"".into(),
            },
            Refusal::OriginNotAllowed("x".into()),
            Refusal::HostNotAllowed("x".into()),
            Refusal::NoRoute,
            Refusal::MethodNotAllowed { allow: "POST" },
            Refusal::NotAcceptable("x"),
            Refusal::PayloadTooLarge { limit: 10 },
            Refusal::UnsupportedMediaType,
            Refusal::UpstreamUnavailable {
                upstream: "u".into(),
                detail: "refused".into(),
            },
            Refusal::UpstreamTimeout {
                upstream: "u".into(),
            },
            Refusal::ShuttingDown,
            Refusal::RequestTimeout,
            Refusal::SessionNotFound,
            Refusal::Unauthorized {
                challenge: "Bearer".into(),
                detail: "x".into(),
            },
            Refusal::InsufficientScope {
                challenge: "Bearer".into(),
            },
            Refusal::PolicyDenied {
                rule: "no-deletes".into(),
                target: "tool delete_file".into(),
            },
            Refusal::RateLimited {
                limit: "per-caller".into(),
                retry_after_ms: 1500,
            },
            Refusal::Overloaded(Overload::QueueFull),
            Refusal::Overloaded(Overload::QueueTimeout),
            Refusal::Overloaded(Overload::TooManyRequests),
            Refusal::Overloaded(Overload::TooManyStreams),
            Refusal::DeadlineExceeded {
                upstream: "u".into(),
                after_ms: 1000,
            },
            Refusal::Cancelled,
            Refusal::CircuitOpen {
                upstream: "u".into(),
                retry_after_secs: 0,
            },
        ]
    }

    #[test]
    fn hidden_targets_are_answered_as_unknown_ones_with_nothing_of_the_gateway() {
        for (kind, name, code, message) in [
            (
                Unknown::Tool,
                "admin_reset",
                INVALID_PARAMS,
                "Unknown tool: admin_reset",
            ),
            (
                Unknown::Prompt,
                "p\"x",
                INVALID_PARAMS,
                "Unknown prompt: p\"x",
            ),
            (
                Unknown::Resource,
                "file:///secret",
                RESOURCE_NOT_FOUND,
                "Resource not found",
            ),
            (
                Unknown::Method,
                "logging/setLevel",
                METHOD_NOT_FOUND,
                "Method not found",
            ),
        ] {
            let r = Refusal::Hidden {
                kind,
                name: name.into(),
            };
            assert_eq!(r.status(), 200);
            let v: Value = serde_json::from_slice(&r.body(Some("3"))).expect("json");
            assert_eq!(v["id"], 3);
            assert_eq!(v["error"]["code"], code);
            assert_eq!(v["error"]["message"], message);
            assert!(v["error"]["data"].get("reason").is_none(), "{v}");
        }
        let stateless = Refusal::Hidden {
            kind: Unknown::StatelessMethod,
            name: "logging/setLevel".into(),
        };
        assert_eq!(
            (stateless.status(), stateless.code()),
            (404, METHOD_NOT_FOUND)
        );
        let v: Value = serde_json::from_slice(
            &Refusal::Hidden {
                kind: Unknown::Resource,
                name: "file:///x".into(),
            }
            .body(None),
        )
        .expect("json");
        assert_eq!(v["error"]["data"]["uri"], "file:///x");
    }

    #[test]
    fn rate_limited_answers_carry_the_wait_in_both_forms() {
        let r = Refusal::RateLimited {
            limit: "per-caller".into(),
            retry_after_ms: 1001,
        };
        assert_eq!((r.status(), r.code()), (429, RATE_LIMITED));
        assert_eq!(r.retry_after_secs(), Some(2), "rounded up");
        let v: Value = serde_json::from_slice(&r.body(Some("1"))).expect("json");
        assert_eq!(v["error"]["data"]["retryAfterMs"], 1001);
        assert_eq!(v["error"]["data"]["limit"], "per-caller");
        let soon = Refusal::RateLimited {
            limit: "x".into(),
            retry_after_ms: 0,
        };
        assert_eq!(soon.retry_after_secs(), Some(1), "never Retry-After: 0");
        let full = Refusal::Overloaded(Overload::QueueFull);
        assert_eq!((full.status(), full.reason()), (503, "queue_full"));
        assert_eq!(full.retry_after_secs(), Some(1));
    }

    #[test]
    fn every_body_is_valid_json_rpc_with_the_id_echoed() {
        for r in all() {
            for id in [None, Some("7"), Some("\"a\\\"b\"")] {
                let v: Value = serde_json::from_slice(&r.body(id)).expect("json");
                assert_eq!(v["jsonrpc"], "2.0");
                let want: Value = serde_json::from_str(id.unwrap_or("null")).expect("id");
                assert_eq!(v["id"], want);
                assert_eq!(v["error"]["code"], r.code());
                assert_eq!(v["error"]["data"]["reason"], r.reason());
                assert!(v["error"]["message"].as_str().is_some());
            }
        }
    }

    #[test]
    fn gateway_codes_stay_out_of_the_reserved_range() {
        for r in all() {
            let c = r.code();
            let spec_defined = c == HEADER_MISMATCH || c == UNSUPPORTED_PROTOCOL_VERSION;
            assert!(spec_defined || !(-32099..=-32020).contains(&c), "{r:?}");
        }
    }

    #[test]
    fn unsupported_version_lists_supported_and_requested() {
        let r = Refusal::UnsupportedProtocolVersion {
            requested: "9".into(),
        };
        let v: Value = serde_json::from_slice(&r.body(Some("1"))).expect("json");
        assert_eq!(v["error"]["data"]["requested"], "9");
        assert!(v["error"]["data"]["supported"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "2026-07-28")));
    }
}
