//! One exchange with an upstream MCP server: dial (pooled keep-alive), send the
//! request with the gateway's headers, relay the response. JSON bodies are copied;
//! SSE streams are relayed chunk by chunk as they arrive, flushed each time, while
//! watching for the client to go away so an abandoned stream frees its upstream.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::Method;
use pingora_core::connectors::http::v1::Connector;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use portcullis_mcp::headers::{self, MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use portcullis_mcp::{Era, ProtocolVersion, Refusal};

use crate::app::{add_cors, Exchange};
use crate::catalog::Catalogs;
use crate::metrics::{Metrics, Raised};
use crate::rewrite::{ListFilter, Reply, Rewriter};
use crate::sessions::{owner_of, SessionSeal};
use crate::snapshot::UpstreamRuntime;
use portcullis_auth::Principal;
use portcullis_config::{Deadline, IdentityHeaders};
use portcullis_traffic::{Breaker, BreakerState, Ticket};
use tokio::sync::Notify;

/// `Mcp-Session-Id`, parsed once: lookups by `HeaderName` skip re-parsing the name.
pub(crate) static MCP_SESSION_ID_H: HeaderName = HeaderName::from_static(MCP_SESSION_ID);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// How long a call waits for the upstream's answer before the gateway starts watching
/// whether its client is still there.
const WATCH_CLIENT_AFTER: Duration = Duration::from_secs(1);

/// How an exchange ended once a response had started.
pub(crate) enum Upstreamed {
    /// The whole response was relayed.
    Complete,
    /// The client went away; the upstream connection was dropped.
    ClientGone,
    /// The upstream failed mid-response (a metric `kind`).
    Broken(&'static str),
    /// The client cancelled the request; its stream was ended.
    Cancelled,
    /// The call's deadline passed: the upstream was told to cancel and the client got
    /// the error as the stream's last event.
    DeadlineExceeded,
}

/// What may end an exchange before its upstream does.
pub(crate) struct Ending<'a> {
    /// Notified when the client cancels this request (`notifications/cancelled`).
    pub cancelled: Option<&'a Notify>,
    /// The call's deadline.
    pub deadline: Option<Deadline>,
    /// Sends `notifications/cancelled` upstream when the deadline passes.
    pub notifier: &'a reqwest::Client,
    /// Whether the call holds something others wait for (a gate slot): then a client
    /// that leaves while the upstream works is noticed, and the slot freed.
    pub holds_slots: bool,
}

/// Returns when the client closes its connection; pends forever otherwise (bytes of a
/// pipelined request are left for later).
pub(crate) async fn client_left(ds: &mut ServerSession) {
    if ds.read_body_or_idle(true).await.is_err() {
        return;
    }
    std::future::pending().await
}

/// Waits for `n`, or forever without one.
pub(crate) async fn notified(n: Option<&Notify>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A failure before any response byte reached the client: the refusal to send, and
/// the `kind` label for `portcullis_upstream_errors_total` (None: not the upstream's fault).
pub(crate) type Failed = (Refusal, Option<&'static str>);

/// Request headers the gateway never forwards as the client sent them: it sets them
/// itself (host, framing, accept, session), or they are the client's credentials.
const NOT_FORWARDED: [&str; 9] = [
    "host",
    "content-length",
    "accept",
    "authorization",
    "x-api-key",
    "cookie",
    "expect",
    "x-forwarded-for",
    "mcp-session-id",
];

/// Runs one request against `upstream`, writing the response to `ds`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange(
    connector: &Connector,
    upstream: &UpstreamRuntime,
    ds: &mut ServerSession,
    method: Method,
    body: Option<Bytes>,
    ex: &mut Exchange,
    metrics: &Metrics,
    route_name: &str,
    sessions: &SessionSeal,
    list_filter: Option<ListFilter>,
    annotations: Option<&Catalogs>,
    reply_client: Option<&reqwest::Client>,
    ending: Ending<'_>,
) -> Result<Upstreamed, Failed> {
    // 2026-07-28 has no sessions: a stray Mcp-Session-Id is ignored (and not forwarded).
    let stateless = ds
        .get_header(MCP_PROTOCOL_VERSION)
        .and_then(|v| v.to_str().ok())
        .and_then(ProtocolVersion::parse)
        .is_some_and(|v| v.era() == Era::Stateless);
    let client_sid = ds
        .get_header(&MCP_SESSION_ID_H)
        .filter(|_| !stateless)
        .map(|v| v.as_bytes().to_vec());
    let owner = owner_of(ex.principal.as_deref());
    let up_name = upstream.config.name.as_str();
    let (idx, upstream_sid) = match &client_sid {
        Some(sid) => match sessions.open(owner, up_name, sid, &upstream.replica_tokens) {
            Some((i, s)) => (i, Some(s.to_vec())),
            // Forged, altered, another principal's, or for a replica that is gone.
            None => return Err((Refusal::SessionNotFound, None)),
        },
        None => (upstream.pick(), None),
    };
    let peer = &upstream.peers[idx];
    ex.endpoint = Some(upstream.config.endpoints[idx]);
    // An endpoint that keeps failing is not waited on: fail fast until its cool-down ends.
    // A GET stream (open for as long as its client wants) is never a probe and never
    // judged; it only fails fast while the breaker is open.
    let circuit_open = |left: Duration| {
        Err((
            Refusal::CircuitOpen {
                upstream: up_name.to_owned(),
                retry_after_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
            },
            None,
        ))
    };
    let breaker = match upstream.breaker(idx) {
        Some(b) if method == Method::GET => {
            let now = std::time::Instant::now();
            if b.state(now) == BreakerState::Open {
                return circuit_open(Duration::from_secs(1));
            }
            None
        }
        Some(b) => match b.admit(std::time::Instant::now()) {
            Ok(ticket) => Some((ticket, b)),
            Err(left) => return circuit_open(left),
        },
        None => None,
    };
    let judged = |ok: bool, breaker: Option<(Ticket, &std::sync::Arc<Breaker>)>| {
        let Some((ticket, b)) = breaker else { return };
        let now = std::time::Instant::now();
        let moved = if ok {
            ticket.succeeded(now)
        } else {
            ticket.failed(now)
        };
        let endpoint = upstream.config.endpoints[idx].to_string();
        let state = moved.unwrap_or_else(|| b.state(now));
        metrics
            .breaker_state
            .with_label_values(&[up_name, endpoint.as_str()])
            .set(state.gauge());
        if let Some(to) = moved {
            let word = match to {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half_open",
            };
            metrics
                .breaker_transitions
                .with_label_values(&[up_name, endpoint.as_str(), word])
                .inc();
            tracing::warn!(upstream = up_name, %endpoint, state = word, "circuit breaker changed state");
        }
    };
    let client = ds
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string());
    let req = upstream_request(
        ds.req_header(),
        upstream,
        &method,
        body.as_ref().map(Bytes::len),
        upstream_sid.as_deref(),
        client.as_deref(),
        ex,
    )
    .map_err(|e| {
        (
            Refusal::InvalidRequest(format!("cannot forward request: {e}")),
            None,
        )
    })?;
    // A standalone GET stream may stay quiet for long; only its client ends it.
    let read_timeout = (method != Method::GET).then_some(upstream.config.read_timeout);

    let sent_at = Instant::now();
    let started = tokio::time::Instant::now();
    let mut deadline_at = ending.deadline.map(|d| started + d.initial);
    let latest = ending.deadline.map(|d| started + d.max);
    // Told upstream when the deadline passes: in a session, by notification; without
    // one (2026-07-28), dropping the connection is the cancellation.
    let canceller = match (&ending.deadline, &upstream_sid, &ex.rpc_id) {
        (Some(_), Some(_), Some(id)) => Some((
            UpstreamSession::new(ending.notifier, upstream, idx, &upstream_sid, ds),
            cancelled_notification(id),
        )),
        _ => None,
    };
    let cancel_upstream = || {
        if let Some((target, body)) = &canceller {
            target.post(body.clone().into_bytes());
        }
    };
    // A request in a session is not cancelled by its client leaving (that era's rule:
    // the client may resume the stream, and cancels with notifications/cancelled). The
    // gateway then waits the answer out, holding the call's slots, so clients that hang
    // up cannot run more calls upstream than the gates allow.
    let keep_on = upstream_sid.is_some() && method == Method::POST && ex.rpc_id.is_some();
    let sending = send(connector, peer, upstream, req, body.as_ref(), read_timeout);
    let mut us = tokio::select! {
        r = sending => match r {
            Ok(us) => us,
            Err(e) => {
                judged(false, breaker);
                return Err(classify(&e, &upstream.config.name));
            }
        },
        _ = notified(ending.cancelled) => return Err((Refusal::Cancelled, None)),
        // Nobody is waiting for the answer any more: drop the upstream exchange. Only
        // watched once the wait is long: a probe of the client's socket costs a syscall,
        // which most calls, answered sooner, need not pay.
        _ = async {
            pingora_timeout::fast_timeout::fast_sleep(WATCH_CLIENT_AFTER).await;
            client_left(ds).await
        }, if ending.holds_slots && !keep_on => return Ok(Upstreamed::ClientGone),
        _ = until(deadline_at) => {
            cancel_upstream();
            // An endpoint that never answered in time is failing.
            judged(false, breaker);
            return Err((deadline_refusal(upstream, started.elapsed()), Some("deadline")));
        }
    };
    metrics
        .upstream_latency
        .with_label_values(&[upstream.config.name.as_str()])
        .observe(sent_at.elapsed().as_secs_f64());

    let Some(up_resp) = us.resp_header() else {
        judged(false, breaker);
        return Err(classify(
            &Error::explain(ErrorType::InvalidHTTPHeader, "no response header"),
            &upstream.config.name,
        ));
    };
    let status = up_resp.status.as_u16();
    // The endpoint answered: a server error counts against it, anything else for it.
    judged(status < 500, breaker);
    let up_is_sse = up_resp
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut rewriter = Rewriter::new(list_filter.filter(|_| status == 200), up_is_sse);
    // Where answers to held-back server requests go: the same upstream session.
    let reply_to =
        reply_client.map(|client| UpstreamSession::new(client, upstream, idx, &upstream_sid, ds));
    let sealing = Sealing {
        seal: sessions,
        owner,
        upstream: up_name,
        replica: &upstream.replica_tokens[idx],
    };
    let resp = downstream_response(up_resp, &sealing, ex).map_err(|e| {
        (
            Refusal::UpstreamUnavailable {
                upstream: upstream.config.name.clone(),
                detail: format!("invalid response header: {e}"),
            },
            Some("protocol"),
        )
    })?;
    let streaming = !up_resp.headers.contains_key(header::CONTENT_LENGTH);
    let is_sse = up_is_sse;
    let mut resp = resp;
    if rewriter.rewrites() {
        // The body changes length: send it chunked.
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")
            .map_err(|e| {
                (
                    Refusal::UpstreamUnavailable {
                        upstream: upstream.config.name.clone(),
                        detail: format!("invalid response header: {e}"),
                    },
                    Some("protocol"),
                )
            })?;
    }
    ex.status = status;
    if ds.write_response_header(Box::new(resp)).await.is_err() {
        return Ok(Upstreamed::ClientGone);
    }
    let _stream_gauge =
        is_sse.then(|| Raised::new(metrics.open_streams.with_label_values(&[route_name])));

    let mut watch_client = streaming;
    // Set when the client left a session request: the relay drains the upstream's answer
    // without writing it (see `keep_on`).
    let mut client_gone = false;
    // With a deadline, the client gets SSE events only whole, so the deadline's error
    // event never lands in the middle of one; the bytes of an unfinished event wait here.
    let hold_events = is_sse && ending.deadline.is_some();
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            r = us.read_body_bytes() => r,
            gone = ds.read_body_or_idle(true), if watch_client => {
                match gone {
                    Err(_) if keep_on => {
                        client_gone = true;
                        watch_client = false;
                        continue;
                    }
                    Err(_) => return Ok(Upstreamed::ClientGone),
                    // Anything else (a pipelined request) is left for later.
                    Ok(_) => { watch_client = false; continue; }
                }
            }
            _ = notified(ending.cancelled) => {
                // The client's own notifications/cancelled went on to the upstream;
                // dropping this connection stops whatever it still sends.
                let _ = ds.finish_body().await;
                return Ok(Upstreamed::Cancelled);
            }
            _ = until(deadline_at) => {
                cancel_upstream();
                if is_sse && !client_gone {
                    // Whatever unfinished event was held back is dropped.
                    let mut event = b"event: message\ndata: ".to_vec();
                    event.extend_from_slice(
                        &deadline_refusal(upstream, started.elapsed()).body(ex.rpc_id.as_deref()),
                    );
                    event.extend_from_slice(b"\n\n");
                    ex.bytes_out += event.len();
                    let _ = ds.write_response_body(Bytes::from(event), false).await;
                }
                let _ = ds.finish_body().await;
                return Ok(Upstreamed::DeadlineExceeded);
            }
        };
        match next {
            Ok(Some(chunk)) => {
                if let (true, Some(cache)) = (is_sse, annotations) {
                    if contains(&chunk, b"notifications/tools/list_changed") {
                        cache.forget(&upstream.config.name);
                    }
                }
                // Progress pushes the deadline out again, up to its maximum.
                if let (Some(d), Some(latest)) = (ending.deadline, latest) {
                    if is_sse && contains(&chunk, b"notifications/progress") {
                        deadline_at = Some((tokio::time::Instant::now() + d.initial).min(latest));
                    }
                }
                let Ok(out) = rewriter.push(chunk) else {
                    return Ok(Upstreamed::Broken("protocol"));
                };
                if let Some(to) = &reply_to {
                    for reply in rewriter.take_replies() {
                        to.send(reply);
                    }
                }
                let out = if hold_events {
                    partial.extend_from_slice(&out);
                    match events_end(&partial) {
                        Some(end) => Bytes::from(partial.drain(..end).collect::<Vec<u8>>()),
                        None => continue,
                    }
                } else {
                    out
                };
                if out.is_empty() || client_gone {
                    continue;
                }
                ex.bytes_out += out.len();
                if ds.write_response_body(out, false).await.is_err() {
                    if keep_on {
                        client_gone = true;
                        watch_client = false;
                        continue;
                    }
                    return Ok(Upstreamed::ClientGone);
                }
            }
            Ok(None) => {
                let mut tail = rewriter.finish();
                if !partial.is_empty() {
                    partial.extend_from_slice(&tail);
                    tail = Bytes::from(std::mem::take(&mut partial));
                }
                if !tail.is_empty() && !client_gone {
                    ex.bytes_out += tail.len();
                    if ds.write_response_body(tail, false).await.is_err() {
                        client_gone = true;
                    }
                }
                break;
            }
            Err(e) => return Ok(Upstreamed::Broken(classify(&e, "").1.unwrap_or("other"))),
        }
    }
    connector
        .release_http_session(us, peer, Some(upstream.config.idle_timeout))
        .await;
    if client_gone || ds.finish_body().await.is_err() {
        return Ok(Upstreamed::ClientGone);
    }
    Ok(Upstreamed::Complete)
}

/// Where the last whole SSE event in `buf` ends (just past its blank line), if any.
fn events_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf
        .windows(4)
        .rposition(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    lf.max(crlf)
}

/// An upstream session the gateway writes to on its client's behalf: answers to
/// refused server requests, cancellations at a deadline.
struct UpstreamSession {
    client: reqwest::Client,
    url: String,
    upstream: portcullis_config::Upstream,
    session: Option<Vec<u8>>,
    version: Option<Vec<u8>>,
}

impl UpstreamSession {
    /// The session `session` of endpoint `idx` of `upstream`, in the protocol revision
    /// the client's request named.
    fn new(
        client: &reqwest::Client,
        upstream: &UpstreamRuntime,
        idx: usize,
        session: &Option<Vec<u8>>,
        ds: &ServerSession,
    ) -> UpstreamSession {
        UpstreamSession {
            client: client.clone(),
            url: format!(
                "http://{}{}",
                upstream.config.endpoints[idx], upstream.config.path
            ),
            upstream: upstream.config.clone(),
            session: session.clone(),
            version: ds
                .get_header(MCP_PROTOCOL_VERSION)
                .map(|v| v.as_bytes().to_vec()),
        }
    }

    /// POSTs the gateway's answer (a JSON-RPC error) to the upstream, in the background.
    fn send(&self, reply: Reply) {
        self.post(reply.body);
    }

    /// POSTs `body` (a JSON-RPC message) to the upstream session, in the background.
    fn post(&self, body: Vec<u8>) {
        let mut req = self
            .client
            .post(&self.url)
            .header("host", &self.upstream.authority)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (k, v) in &self.upstream.headers {
            req = req.header(k, v);
        }
        if let Some(sid) = &self.session {
            req = req.header(MCP_SESSION_ID, sid.as_slice());
        }
        if let Some(v) = &self.version {
            req = req.header(MCP_PROTOCOL_VERSION, v.as_slice());
        }
        let upstream = self.upstream.name.clone();
        let req = req.body(body);
        tokio::spawn(async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(%upstream, status = r.status().as_u16(),
                    "the upstream did not take a message the gateway sent on the client's behalf"),
                Err(e) => tracing::warn!(%upstream, error = %e,
                    "could not send the upstream a message on the client's behalf"),
            }
        });
    }
}

/// Whether an SSE chunk mentions `needle` (a notification method: the tool list
/// changed, or progress). A mention split across two chunks is missed; what that costs
/// is bounded (the annotation TTL; the next progress notification).
fn contains(chunk: &[u8], needle: &[u8]) -> bool {
    chunk.windows(needle.len()).any(|w| w == needle)
}

/// `notifications/cancelled` for request `id` (its JSON text), sent upstream when the
/// gateway gives up on the call.
fn cancelled_notification(id: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{id},"reason":"deadline exceeded at the gateway"}}}}"#
    )
}

/// The answer to a call whose deadline passed `elapsed` after it was sent.
fn deadline_refusal(upstream: &UpstreamRuntime, elapsed: Duration) -> Refusal {
    Refusal::DeadlineExceeded {
        upstream: upstream.config.name.clone(),
        after_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Dials (or reuses) a connection and sends the request; retries once on a fresh
/// connection when a pooled one turns out to have been closed by the upstream.
async fn send(
    connector: &Connector,
    peer: &HttpPeer,
    upstream: &UpstreamRuntime,
    req: RequestHeader,
    body: Option<&Bytes>,
    read_timeout: Option<Duration>,
) -> Result<HttpSession, Box<Error>> {
    let mut req = Some(Box::new(req));
    loop {
        let (mut us, reused) = connector.get_http_session(peer).await?;
        us.read_timeout = read_timeout;
        us.write_timeout = Some(upstream.config.write_timeout);
        // Only a pooled connection can be retried, so only then is a copy kept.
        let Some(header) = req.take() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request already sent",
            ));
        };
        let retry_copy = reused.then(|| header.clone());
        match send_on(&mut us, header, body).await {
            Ok(()) => return Ok(us),
            Err(mut e) => {
                e.retry.decide_reuse(reused);
                if retry_copy.is_some() && e.retry() {
                    req = retry_copy;
                    continue;
                }
                return Err(e);
            }
        }
    }
}

async fn send_on(
    us: &mut HttpSession,
    req: Box<RequestHeader>,
    body: Option<&Bytes>,
) -> Result<(), Box<Error>> {
    us.write_request_header(req).await?;
    if let Some(b) = body {
        us.write_body(b).await?;
    }
    us.finish_body().await?;
    loop {
        us.read_response().await?;
        match us.get_status() {
            Some(s) if s.is_informational() && s.as_u16() != 101 => continue,
            _ => return Ok(()),
        }
    }
}

/// Maps a pingora error to the client's refusal and a metric kind.
fn classify(e: &Error, upstream: &str) -> Failed {
    use ErrorType::*;
    let unavailable = |detail: &str, kind| {
        (
            Refusal::UpstreamUnavailable {
                upstream: upstream.to_owned(),
                detail: detail.to_owned(),
            },
            Some(kind),
        )
    };
    let timeout = |kind| {
        (
            Refusal::UpstreamTimeout {
                upstream: upstream.to_owned(),
            },
            Some(kind),
        )
    };
    match e.etype() {
        ConnectTimedout => timeout("connect_timeout"),
        ReadTimedout | WriteTimedout => timeout("timeout"),
        ConnectRefused => unavailable("connection refused", "connect_refused"),
        ConnectNoRoute | ConnectError | BindError | SocketError => {
            unavailable("cannot connect", "connect_error")
        }
        ConnectionClosed => unavailable("connection closed before the response ended", "reset"),
        InvalidHTTPHeader | H1Error | InvalidH2 | H2Error => {
            unavailable("invalid HTTP response", "protocol")
        }
        ReadError | WriteError => unavailable("connection failed", "reset"),
        _ => unavailable("exchange failed", "other"),
    }
}

/// Connection-listed header names (`Connection: foo` makes `foo` hop-by-hop).
fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn upstream_request(
    client_req: &RequestHeader,
    upstream: &UpstreamRuntime,
    method: &Method,
    body_len: Option<usize>,
    session: Option<&[u8]>,
    client_ip: Option<&str>,
    ex: &Exchange,
) -> pingora_error::Result<RequestHeader> {
    let principal = ex.principal.as_deref();
    let upstream_tool = ex.upstream_tool.as_deref();
    let cfg = &upstream.config;
    let mut req = RequestHeader::build(
        method.as_str(),
        cfg.path.as_bytes(),
        Some(client_req.headers.len() + cfg.headers.len() + 4),
    )?;
    let listed = connection_listed(&client_req.headers);
    let identity = &cfg.identity_headers;
    let spoofable = !identity.is_empty();
    for (name, value) in client_req.headers.iter() {
        let n = name.as_str();
        if headers::is_hop_by_hop(n) || NOT_FORWARDED.contains(&n) || listed.iter().any(|l| l == n)
        {
            continue;
        }
        // Identity headers come from the gateway only, never from the client.
        if spoofable && identity.names().any(|h| h == name) {
            continue;
        }
        // A response the gateway must read and rewrite has to arrive uncompressed.
        if ex.filtering && name == header::ACCEPT_ENCODING {
            continue;
        }
        req.append_header(name.clone(), value.clone())?;
    }
    req.insert_header(header::HOST, cfg.authority.as_str())?;
    match *method {
        Method::POST => {
            req.insert_header(header::ACCEPT, "application/json, text/event-stream")?;
            req.insert_header(header::CONTENT_LENGTH, body_len.unwrap_or(0).to_string())?;
        }
        Method::GET => {
            req.insert_header(header::ACCEPT, "text/event-stream")?;
        }
        _ => {
            if let Some(a) = client_req.headers.get(header::ACCEPT) {
                req.insert_header(header::ACCEPT, a.clone())?;
            }
        }
    }
    if let Some(sid) = session {
        req.insert_header(
            MCP_SESSION_ID,
            http::HeaderValue::from_bytes(sid)
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid session id"))?,
        )?;
    }
    if let Some(ip) = client_ip {
        let forwarded = match client_req
            .headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_owned(),
        };
        req.insert_header(X_FORWARDED_FOR.clone(), forwarded)?;
    }
    for (k, v) in &cfg.headers {
        req.insert_header(k.clone(), v.clone())?;
    }
    if let (true, Some(p)) = (spoofable, principal) {
        add_identity(&mut req, identity, p)?;
    }
    // A renamed tool: the upstream knows it by its own name, in the header as in the body.
    if let Some(name) = upstream_tool {
        if req.headers.contains_key(headers::MCP_NAME) {
            req.insert_header(headers::MCP_NAME, headers::encode_mcp_name(name))?;
        }
    }
    Ok(req)
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

/// What a session id from the upstream is sealed with on its way to the client.
struct Sealing<'a> {
    seal: &'a SessionSeal,
    owner: (&'a str, &'a str),
    upstream: &'a str,
    replica: &'a str,
}

fn downstream_response(
    up: &ResponseHeader,
    sealing: &Sealing<'_>,
    ex: &Exchange,
) -> pingora_error::Result<ResponseHeader> {
    let status = up.status.as_u16();
    let mut resp = ResponseHeader::build(status, Some(up.headers.len() + 4))?;
    let listed = connection_listed(&up.headers);
    for (name, value) in up.headers.iter() {
        let n = name.as_str();
        if headers::is_hop_by_hop(n) || listed.iter().any(|l| l == n) {
            continue;
        }
        if n == MCP_SESSION_ID {
            let sealed = sealing
                .seal
                .seal(
                    sealing.owner,
                    sealing.upstream,
                    sealing.replica,
                    value.as_bytes(),
                )
                .ok_or_else(|| {
                    Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "Mcp-Session-Id is not visible ASCII",
                    )
                })?;
            resp.append_header(name.clone(), sealed)?;
            continue;
        }
        resp.append_header(name.clone(), value.clone())?;
    }
    let body_allowed = !(status == 204 || status == 304 || (100..200).contains(&status));
    if body_allowed && !up.headers.contains_key(header::CONTENT_LENGTH) {
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    let is_sse = up
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if is_sse {
        // Tell any buffering proxy in front of us (nginx ingress) to pass events through.
        resp.insert_header(X_ACCEL_BUFFERING.clone(), "no")?;
        if !up.headers.contains_key(header::CACHE_CONTROL) {
            resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
        }
    }
    add_cors(&mut resp, ex);
    Ok(resp)
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
    fn whole_events_end_at_the_last_blank_line() {
        assert_eq!(events_end(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(events_end(b"data: a\r\n\r\ndata: b\n\n"), Some(20));
        assert_eq!(events_end(b"data: half"), None);
        assert_eq!(events_end(b""), None);
    }

    #[test]
    fn connection_listed_headers_are_found() {
        let mut h = http::HeaderMap::new();
        h.append("connection", "keep-alive, X-Secret".parse().expect("value"));
        assert_eq!(connection_listed(&h), vec!["keep-alive", "x-secret"]);
    }
}
