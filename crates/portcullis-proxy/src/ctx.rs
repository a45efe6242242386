//! The per-request context the driver owns: what each stage learnt about one request,
//! for the stages after it, the response, the access and audit logs and the metrics.
//! Stages write their own fields and read earlier ones; nothing else holds it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use portcullis_auth::Principal;
use portcullis_mcp::ProtocolVersion;
use portcullis_policy::discovery::ListKind;

use crate::audit::ArgsDigest;

/// What kind of request this is, as logs and metrics name it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Op {
    /// Not known yet (refused before it could be told).
    #[default]
    Unknown,
    /// A CORS preflight (`OPTIONS`).
    Preflight,
    /// `GET /.well-known/oauth-protected-resource...`.
    ResourceMetadata,
    /// A session's server-to-client stream (`GET`).
    Stream,
    /// The end of a session (`DELETE`).
    EndSession,
    /// A JSON-RPC batch (2025-03-26).
    Batch,
    /// One JSON-RPC message with this method (`None` for a response).
    Message(Option<String>),
}

impl Op {
    /// The bounded `rpc_method` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Op::Unknown => "none",
            Op::Preflight => "preflight",
            Op::ResourceMetadata => "resource_metadata",
            Op::Stream => "stream",
            Op::EndSession => "end_session",
            Op::Batch => "batch",
            Op::Message(None) => "response",
            Op::Message(Some(m)) => portcullis_mcp::methods::label(m),
        }
    }

    /// The name written in the access log.
    pub fn log_name(&self) -> Option<&str> {
        match self {
            Op::Unknown => None,
            Op::Message(Some(m)) => Some(m),
            other => Some(other.label()),
        }
    }

    /// Whether this is a `tools/call`.
    pub fn is_tool_call(&self) -> bool {
        matches!(self, Op::Message(Some(m)) if m == "tools/call")
    }
}

/// What the route's policy made of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Allowed.
    Allow,
    /// Denied by a rule (or the default).
    Deny,
    /// Hidden: answered as unknown.
    Hide,
    /// Denied, and no listing ever showed the tool: answered as unknown, like a hidden one.
    Absent,
}

impl Effect {
    /// The word in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Hide => "hide",
            Effect::Absent => "absent",
        }
    }
}

/// Everything known about one request.
pub struct Ctx {
    /// When its headers were read.
    pub started: Instant,
    /// The connection's peer.
    pub peer: Option<SocketAddr>,
    /// The client: the peer, or the address a trusted proxy names (`http.trusted_proxies`).
    pub client: Option<IpAddr>,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// Whether the connection is TLS (the route's public URL is then `https://`).
    pub tls: bool,
    /// The verified client certificate's names, on a connection that presented one.
    pub client_cert: Option<portcullis_tls::PeerIdentity>,
    /// The matched route, by index into the snapshot's routes.
    pub route: Option<usize>,
    /// What kind of request it is.
    pub op: Op,
    /// The JSON-RPC id's JSON text, once read: every refusal carries it.
    pub rpc_id: Option<String>,
    /// The tool name, prompt name or resource URI the message targets.
    pub target: Option<String>,
    /// `MCP-Protocol-Version`, when sent.
    pub version: Option<ProtocolVersion>,
    /// The authenticated caller.
    pub principal: Option<Arc<Principal>>,
    /// The allowed Origin to echo in CORS headers.
    pub cors_origin: Option<String>,
    /// The policy's decision and the rule that made it.
    pub decision: Option<(Effect, Arc<str>)>,
    /// A renamed tool's upstream name, sent instead of the client's.
    pub upstream_tool: Option<String>,
    /// The list a `*/list` request asks for (its answer is filtered on policy routes).
    pub list: Option<ListKind>,
    /// A `tools/call`'s arguments, digested for the audit log.
    pub audit_args: Option<ArgsDigest>,
    /// The upstream the request went to, by index.
    pub upstream: Option<usize>,
    /// It went to every member of its federated route (logged under the route's name).
    pub fanned_out: bool,
    /// The endpoint that answered.
    pub endpoint: Option<SocketAddr>,
    /// The HTTP status sent.
    pub status: u16,
    /// Request body bytes.
    pub bytes_in: usize,
    /// Response body bytes relayed.
    pub bytes_out: usize,
    /// Why it was refused or how it ended early, for logs and metrics.
    pub reason: Option<&'static str>,
    /// The connection must not serve another request.
    pub close: bool,
    /// The answer was cut short after its head went out (the client stopped reading or
    /// left, the upstream broke): an HTTP/2 stream is then reset, never ended as if
    /// whole; an HTTP/1 connection is closed.
    pub cut: bool,
}

impl Ctx {
    /// A fresh context for a request whose headers were just read.
    pub fn new(peer: Option<SocketAddr>) -> Ctx {
        Ctx {
            started: Instant::now(),
            peer,
            client: peer.map(|p| p.ip()),
            peer_trusted: false,
            tls: false,
            client_cert: None,
            route: None,
            op: Op::Unknown,
            rpc_id: None,
            target: None,
            version: None,
            principal: None,
            cors_origin: None,
            decision: None,
            upstream_tool: None,
            list: None,
            audit_args: None,
            upstream: None,
            fanned_out: false,
            endpoint: None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            reason: None,
            close: false,
            cut: false,
        }
    }

    /// Whether the request was made in the stateless revision (2026-07-28).
    pub fn stateless(&self) -> bool {
        self.version
            .is_some_and(|v| v.era() == portcullis_mcp::Era::Stateless)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_have_bounded_labels() {
        assert_eq!(Op::Message(Some("tools/call".into())).label(), "tools/call");
        assert_eq!(Op::Message(Some("x/made-up".into())).label(), "other");
        assert_eq!(Op::Message(None).label(), "response");
        assert_eq!(Op::Stream.log_name(), Some("stream"));
        assert_eq!(Op::Unknown.log_name(), None);
        assert!(Op::Message(Some("tools/call".into())).is_tool_call());
        assert!(!Op::Batch.is_tool_call());
    }
}
