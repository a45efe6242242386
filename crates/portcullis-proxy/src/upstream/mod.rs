//! The one interface the gateway talks to upstream MCP servers through. Dispatch sends
//! a JSON-RPC message, opens a session's GET stream or ends a session, and gets back
//! an [`Inbound`]: the answer's head and a stream of body chunks (a JSON body, or SSE
//! events as they come). The gateway's own messages (catalog walks, answers to refused
//! server requests, cancellations at a deadline) go through the same interface
//! ([`own`]).
//!
//! [`http::HttpUpstream`] (Streamable HTTP over pingora's HTTP/1 connector and pool) is
//! the first implementation. TLS upstreams, a federated upstream that fans out to
//! several servers and merges, and a legacy HTTP+SSE upstream are further ones: the
//! stages only ever see `dyn Upstream` (docs/architecture.md says how each fits).

pub mod endpoints;
pub mod failover;
pub mod federated;
pub mod http;
pub mod made;
pub mod own;
pub(crate) mod request;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use portcullis_auth::Principal;
use portcullis_mcp::Refusal;

pub use crate::sessions::{OwnedPin, Pin};

/// Who a message comes from, which decides the headers that go with it.
#[derive(Clone, Copy)]
pub enum Sender<'a> {
    /// A client's request: its end-to-end headers go on (never its credentials), with
    /// the caller's identity where the upstream asks for it.
    Client(ClientRequest<'a>),
    /// The gateway itself, speaking protocol revision `version`; `method` is the
    /// message's method (sent as `Mcp-Method` in the stateless revision).
    Gateway {
        /// The `MCP-Protocol-Version` to send.
        version: &'a str,
        /// The JSON-RPC method, where it has one.
        method: Option<&'a str>,
    },
}

/// What the gateway knows of a client's request when forwarding it.
#[derive(Clone, Copy)]
pub struct ClientRequest<'a> {
    /// The request as the client sent it.
    pub head: &'a RequestHeader,
    /// The authenticated caller, for identity headers.
    pub principal: Option<&'a Principal>,
    /// The connection's peer address, added to `X-Forwarded-For`.
    pub peer: Option<IpAddr>,
    /// Whether the peer is a trusted proxy (then the client's `X-Forwarded-For` chain is
    /// extended, otherwise replaced).
    pub peer_trusted: bool,
    /// A renamed tool's upstream name (the body already carries it; so does `Mcp-Name`).
    pub renamed: Option<&'a str>,
    /// The answer will be read and rewritten: it must arrive uncompressed.
    pub uncompressed: bool,
}

/// How long the gateway waits for the upstream's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A call: the upstream's `read_timeout` bounds every wait.
    Answer,
    /// A stream that may stay quiet for long (GET, `subscriptions/listen`): only its
    /// client ends it.
    Stream,
}

/// One message or stream request to an upstream.
#[derive(Clone, Copy)]
pub struct Outbound<'a> {
    /// Whose it is.
    pub sender: Sender<'a>,
    /// The upstream session it belongs to, if any; otherwise the upstream picks an
    /// endpoint for it.
    pub session: Option<Pin<'a>>,
    /// Read timeouts.
    pub wait: Wait,
    /// The answer must start by then (a call's deadline), or the call fails.
    pub answer_by: Option<tokio::time::Instant>,
}

/// Where an answer came from.
#[derive(Debug, Clone)]
pub struct Served {
    /// The endpoint's address (`None` for an answer the gateway made itself, such as a
    /// federated route's merged list).
    pub endpoint: Option<SocketAddr>,
    /// The endpoint's replica token (sealed into session ids it creates).
    pub replica: Arc<str>,
    /// The session this answer belongs to, when it is not the one the client named:
    /// its endpoint was gone and the upstream opened a new one (`session_failover`).
    pub moved: Option<OwnedPin>,
}

/// An upstream's answer, as it arrives.
pub struct Inbound {
    /// The answer's head and body.
    pub answer: Box<dyn Answer>,
    /// Where it came from.
    pub served: Served,
}

/// The head of an upstream's answer and its body, chunk by chunk.
#[async_trait]
pub trait Answer: Send {
    /// The response head (status and headers) as the upstream sent it.
    fn head(&self) -> &ResponseHeader;
    /// The next piece of the body; `None` once it has ended.
    async fn chunk(&mut self) -> Result<Option<Bytes>, Failure>;
    /// The body ended: what carried it may carry another request (a keep-alive
    /// connection goes back to its pool). Dropping an answer instead closes it.
    async fn release(self: Box<Self>);
}

/// Why an exchange with an upstream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The session names an endpoint that is no longer configured.
    UnknownSession,
    /// The endpoint's circuit breaker is open: calls fail fast for `retry_after`.
    CircuitOpen {
        /// Until the breaker lets a probe through.
        retry_after: Duration,
    },
    /// The answer did not start before the call's deadline.
    Deadline {
        /// How long the call had waited.
        after: Duration,
    },
    /// The request could not be written from what the client sent.
    BadRequest(String),
    /// The exchange itself failed.
    Broken {
        /// The `portcullis_upstream_errors_total` kind.
        kind: &'static str,
        /// What failed, in words safe to show a client.
        detail: &'static str,
        /// A timeout rather than an error.
        timeout: bool,
    },
}

impl Failure {
    /// The `portcullis_upstream_errors_total{kind}` label, where the failure is the
    /// upstream's.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            Failure::Broken { kind, .. } => Some(kind),
            Failure::Deadline { .. } => Some("deadline"),
            Failure::UnknownSession | Failure::CircuitOpen { .. } | Failure::BadRequest(_) => None,
        }
    }

    /// The refusal the client gets, before any answer reached it.
    pub fn refusal(&self, upstream: &str) -> Refusal {
        match self {
            Failure::UnknownSession => Refusal::SessionNotFound,
            Failure::CircuitOpen { retry_after } => Refusal::CircuitOpen {
                upstream: upstream.to_owned(),
                retry_after_secs: retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
            },
            Failure::Deadline { after } => Refusal::DeadlineExceeded {
                upstream: upstream.to_owned(),
                after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            },
            Failure::BadRequest(why) => {
                Refusal::InvalidRequest(format!("cannot forward request: {why}"))
            }
            Failure::Broken { timeout: true, .. } => Refusal::UpstreamTimeout {
                upstream: upstream.to_owned(),
            },
            Failure::Broken { detail, .. } => Refusal::UpstreamUnavailable {
                upstream: upstream.to_owned(),
                detail: (*detail).to_owned(),
            },
        }
    }
}

/// An upstream MCP server as the gateway reaches it.
#[async_trait]
pub trait Upstream: Send + Sync {
    /// Its configured name (logs, metrics, sealed sessions).
    fn name(&self) -> &str;

    /// Sends one JSON-RPC message (`body`) and returns the answer as it starts: a JSON
    /// body, an SSE stream, or `202 Accepted` for a notification or response.
    async fn send(&self, out: Outbound<'_>, body: Bytes) -> Result<Inbound, Failure>;

    /// Opens the server-to-client stream of a session.
    async fn open_stream(&self, out: Outbound<'_>) -> Result<Inbound, Failure>;

    /// Ends a session.
    async fn end_session(&self, out: Outbound<'_>) -> Result<Inbound, Failure>;
}
