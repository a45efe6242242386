//! The dispatch stage: the request goes to its route's upstream through the one
//! [`Upstream`] interface, and comes back as an answer that has started (its head) or
//! as the refusal for a failure before any answer. The client's sealed session id is
//! opened into the upstream session it names (forged, altered or another caller's: an
//! unknown session). An upstream's own 401 challenge never reaches the client as if it
//! were the gateway's (it would send the client's OAuth discovery to the wrong place).

use http::header::{self, HeaderName};
use pingora_http::RequestHeader;
use portcullis_mcp::headers::MCP_SESSION_ID;
use portcullis_mcp::Refusal;

use crate::ctx::Ctx;
use crate::metrics::Metrics;
use crate::sessions::{owner_of, Bound};
use crate::snapshot::Snapshot;
use crate::stages::federate::Destination;
use crate::upstream::{ClientRequest, Inbound, Outbound, OwnedPin, Sender, Wait};

/// `Mcp-Session-Id`, parsed once.
pub static MCP_SESSION_ID_H: HeaderName = HeaderName::from_static(MCP_SESSION_ID);

/// What to send.
pub enum Verb {
    /// The destination's JSON-RPC message.
    Post,
    /// Open the session's stream.
    Stream,
    /// End the session.
    EndSession,
}

/// How the request is sent.
pub struct Sending {
    /// What to send.
    pub verb: Verb,
    /// Read timeouts.
    pub wait: Wait,
    /// The answer must start by then.
    pub answer_by: Option<tokio::time::Instant>,
    /// The answer will be read and rewritten (it must arrive uncompressed).
    pub rewritten: bool,
}

/// The upstream session the client's sealed `Mcp-Session-Id` names on `route`, if it
/// sent one (none in the stateless revision, where a stray one is ignored and not
/// forwarded). On a federated route it holds every member's session.
pub fn session(
    snap: &Snapshot,
    route: usize,
    req: &RequestHeader,
    cx: &Ctx,
) -> Result<Option<OwnedPin>, Refusal> {
    let Some(sid) = req
        .headers
        .get(&MCP_SESSION_ID_H)
        .filter(|_| !cx.stateless())
    else {
        return Ok(None);
    };
    let pin = snap
        .sessions
        .open(
            owner_of(cx.principal.as_deref()),
            Bound {
                upstream: snap.route_upstream_name(route),
                route: snap.config.routes[route].path.as_str(),
            },
            sid.as_bytes(),
        )
        .ok_or(Refusal::SessionNotFound)?;
    Ok(Some(pin))
}

/// Sends the request to its destination, in the destination's session.
pub async fn send(
    dest: &Destination,
    req: &RequestHeader,
    sending: Sending,
    metrics: &Metrics,
    cx: &mut Ctx,
) -> Result<Inbound, Refusal> {
    cx.upstream = dest.gated_by;
    cx.fanned_out = dest.gated_by.is_none();
    let upstream = &*dest.upstream;
    let name = upstream.name();
    let sender = Sender::Client(ClientRequest {
        head: req,
        principal: cx.principal.as_deref(),
        peer: cx.peer.map(|p| p.ip()),
        peer_trusted: cx.peer_trusted,
        renamed: cx.upstream_tool.as_deref(),
        uncompressed: sending.rewritten,
    });
    // A member not in the client's session yet joins it first.
    let joined = match &dest.join {
        Some(j) if dest.session.is_none() => {
            let asking = Outbound {
                sender,
                session: Some(j.session.pin()),
                wait: Wait::Answer,
                answer_by: sending.answer_by,
            };
            j.fed.join(&asking, j.member).await
        }
        _ => None,
    };
    let session = dest.session.as_ref().or(joined.as_ref());
    let out = Outbound {
        sender,
        session: session.map(OwnedPin::pin),
        wait: sending.wait,
        answer_by: sending.answer_by,
    };
    let sent = match sending.verb {
        Verb::Post => upstream.send(out, dest.body.clone()).await,
        Verb::Stream => upstream.open_stream(out).await,
        Verb::EndSession => upstream.end_session(out).await,
    };
    let count = |kind: &str| {
        metrics
            .upstream_errors
            .with_label_values(&[name, kind])
            .inc();
    };
    let inbound = match sent {
        Ok(inbound) => inbound,
        Err(failure) => {
            if let Some(kind) = failure.kind() {
                count(kind);
            }
            return Err(failure.refusal(name));
        }
    };
    cx.endpoint = inbound.served.endpoint;
    let head = inbound.answer.head();
    let status = head.status.as_u16();
    if status == 401 || (status == 403 && head.headers.contains_key(header::WWW_AUTHENTICATE)) {
        count("auth");
        return Err(Refusal::UpstreamUnavailable {
            upstream: name.to_owned(),
            detail: format!(
                "the upstream refused the gateway's credentials (HTTP {status}); see upstreams.{name}.credential"
            ),
        });
    }
    Ok(inbound)
}
