//! The driver: the public listener's pingora `HttpServerApp`. It reads each request
//! head within its deadline, calls the stages in order (edge, identity, admission,
//! policy, limits, dispatch), relays the answer, and records the request. A stage that
//! refuses stops the walk, and the refusal leaves through one exit ([`Halt`]) that
//! writes it the one way docs/errors.md describes.
//!
//! The driver owns the client's socket: waits that a client can end (its body, leaving
//! while queued at a gate or while the upstream works) are raced here, not in stages.
//! It implements `HttpServerApp` rather than pingora's `ProxyHttp`: the body must be
//! read and judged before any upstream work (see docs/architecture.md).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Version};
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream,
};
use pingora_core::protocols::http::v2::server::H2Options;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_error::ErrorType;
use pingora_http::RequestHeader;
use pingora_timeout::fast_timeout::fast_sleep;
use portcullis_mcp::envelope::Body;
use portcullis_mcp::{Overload, ProtocolVersion, Refusal};

use crate::access_log::AccessLog;
use crate::audit::AuditLog;
use crate::calls::Calls;
use crate::catalog::Catalogs;
use crate::ctx::{Ctx, Op};
use crate::metrics::{Metrics, Raised};
use crate::record::Recorder;
use crate::relay::{notified, Ended, OnBehalf, Relay, Watches};
use crate::respond::client::{Unwritten, Writer};
use crate::respond::filters::deadline::DeadlineFilter;
use crate::respond::filters::member::MemberIds;
use crate::respond::filters::policy::{PolicyFilter, MAX_LIST_BYTES};
use crate::respond::filters::{Chain, Filter, Transform};
use crate::respond::head::Sealing;
use crate::respond::{cors, head, refusal};
use crate::sessions::{owner_of, Bound};
use crate::snapshot::{Live, Snapshot};
use crate::stages::admit::{self, Rules};
use crate::stages::dispatch::{self, Sending, Verb, MCP_SESSION_ID_H};
use crate::stages::edge::{self, Target};
use crate::stages::federate::{self, Destination, SessionIds};
use crate::stages::{identity, limits, policy};
use crate::tls::ClientCert;
use crate::traffic::Slots;
use crate::upstream::{Inbound, OwnedPin, Wait};

/// How long a call waits for the upstream's answer before the gateway starts watching
/// whether its client is still there (a probe of the socket costs a syscall that most
/// calls, answered sooner, need not pay).
const WATCH_CLIENT_AFTER: Duration = Duration::from_secs(1);

/// Why the stages stopped before an answer was relayed: the one exit.
pub enum Halt {
    /// Refused: the client gets this refusal (unless a response already started).
    Refused(Refusal),
    /// The client left while its request waited; nothing is written.
    ClientLeft,
}

impl From<Refusal> for Halt {
    fn from(r: Refusal) -> Halt {
        Halt::Refused(r)
    }
}

/// Marks a connection that served a request before (its next head may wait for the
/// idle timeout first).
struct Reused;

/// The public listener's application.
pub struct Gateway {
    live: Live,
    metrics: Arc<Metrics>,
    access: AccessLog,
    audit: AuditLog,
    options: HttpServerOptions,
    /// What is known of each upstream's tools (for policies).
    catalogs: Arc<Catalogs>,
    /// Requests in flight that their client may cancel.
    calls: Calls,
}

impl Gateway {
    /// Builds the app.
    pub fn new(live: Live, metrics: Arc<Metrics>, access: AccessLog, audit: AuditLog) -> Gateway {
        let mut options = HttpServerOptions::default();
        options.keepalive_request_limit = None;
        {
            // Read once: the listeners' protocols take effect at start, like their
            // addresses.
            let http = &live.load().config.http;
            options.h2c = http.h2c;
            options.h2_idle_timeout = Some(http.idle_timeout);
        }
        Gateway {
            live,
            metrics,
            access,
            audit,
            options,
            catalogs: Arc::new(Catalogs::default()),
            calls: Calls::default(),
        }
    }

    fn writer(&self, snap: &Snapshot) -> Writer<'_> {
        Writer {
            timeout: snap.config.http.write_timeout,
            metrics: &self.metrics,
        }
    }

    /// The stages, in order, for one request.
    async fn serve(
        &self,
        snap: &Snapshot,
        ds: &mut ServerSession,
        req: &RequestHeader,
        cx: &mut Ctx,
    ) -> Result<(), Halt> {
        let raw = req
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
            .then(|| ds.as_http1().map(|s| s.get_headers_raw_bytes()))
            .flatten();
        edge::framing(req, raw.as_deref(), cx)?;
        edge::client(&snap.config.http, req, cx);
        let route = match edge::route(&snap.config, req, cx)? {
            Target::ResourceMetadata(suffix) => {
                let body = identity::metadata(&snap.config, &suffix, req, cx)?;
                if let Some((head, body)) = refusal::json(200, body, cx) {
                    self.write_whole(snap, ds, head, body, cx).await;
                }
                return Ok(());
            }
            Target::Route(i) => i,
        };
        if req.method == Method::OPTIONS {
            cx.op = Op::Preflight;
            cx.status = 204;
            if let Some(head) = cors::preflight(cx) {
                self.write_whole(snap, ds, head, Bytes::new(), cx).await;
            }
            return Ok(());
        }
        identity::authenticate(&snap.config, route, req, cx).await?;
        match req.method {
            Method::POST => self.post(snap, ds, req, route, cx).await,
            Method::GET => self.session_verb(snap, ds, req, route, true, cx).await,
            Method::DELETE => self.session_verb(snap, ds, req, route, false, cx).await,
            _ => Err(Refusal::MethodNotAllowed { allow: cors::ALLOW }.into()),
        }
    }

    /// A JSON-RPC message (or batch).
    async fn post(
        &self,
        snap: &Snapshot,
        ds: &mut ServerSession,
        req: &RequestHeader,
        route: usize,
        cx: &mut Ctx,
    ) -> Result<(), Halt> {
        let config = &snap.config;
        admit::post_head(req, cx)?;
        let body = crate::body::read(ds, &config.http, cx).await?;
        let parsed = admit::parse(&body, cx)?;
        admit::protocol_headers(req, cx)?;
        let rules = Rules {
            policy: config.routes[route].policy.is_some(),
            governed: snap.traffic.governs(config, route),
        };
        let admitted = admit::message(&parsed, req, rules, cx)?;
        let renamed = match &parsed {
            Body::Single(env) => {
                if self.audit.enabled() && cx.op.is_tool_call() {
                    cx.audit_args = Some(crate::audit::digest(
                        env.params,
                        self.audit.include_arguments(),
                    ));
                }
                policy::judge(snap, route, env, &self.catalogs, &self.metrics, cx).await?
            }
            Body::Batch(_) => None,
        };
        limits::rate(snap, &self.metrics, route, admitted.counted, cx).await?;
        drop(parsed);
        let session = dispatch::session(snap, route, req, cx)?;
        let client_sid = req
            .headers
            .get(&MCP_SESSION_ID_H)
            .filter(|_| session.is_some())
            .map(|v| v.as_bytes());
        let principal = cx.principal.clone();
        let owner = owner_of(principal.as_deref());
        // A client's notifications/cancelled ends that request's relay here, and goes on
        // to the upstream.
        if let (Some(sid), Some(id)) = (client_sid, &admitted.cancels) {
            self.calls.cancel(sid, owner, id);
        }
        let body = match renamed {
            Some(name) => Bytes::from(crate::judge::with_tool_name(&body, &name).ok_or(
                // Never forward the client's name for a renamed tool.
                Refusal::InvalidParams(
                    "the request could not be rewritten for a renamed tool".into(),
                ),
            )?),
            None => body,
        };
        let dest = federate::message(snap, route, session, body, cx)?;
        // Registered before the gates, so a cancellation reaches a queued call too.
        let registered = match (client_sid, &cx.rpc_id) {
            (Some(sid), Some(id)) if admitted.request => Some(self.calls.register(sid, owner, id)),
            _ => None,
        };
        let cancelled = registered.as_ref().map(|r| &*r.cancelled);
        // A subscriptions/listen stream is capped like GET streams and holds no gate slot.
        let _place = if admitted.listen {
            Some(limits::stream_place(snap, &self.metrics)?)
        } else {
            None
        };
        let slots = if admitted.listen {
            Slots::default()
        } else {
            self.enter_gates(snap, ds, dest.gated_by, admitted.request, cancelled, cx)
                .await?
        };
        let keep_on = client_sid.is_some() && admitted.request && cx.rpc_id.is_some();
        let sent = tokio::time::Instant::now();
        let sending = Sending {
            verb: Verb::Post,
            wait: if admitted.listen {
                Wait::Stream
            } else {
                Wait::Answer
            },
            answer_by: slots.deadline.map(|d| sent + d.initial),
            rewritten: rules.policy,
        };
        let watch_client = slots.holds_gate() && !keep_on;
        let inbound = match self
            .dispatch(ds, req, &dest, sending, cancelled, watch_client, cx)
            .await
        {
            Ok(inbound) => inbound,
            Err(halt) => {
                if matches!(halt, Halt::Refused(Refusal::DeadlineExceeded { .. })) {
                    self.cancel_in_session(&dest, cx);
                }
                return Err(halt);
            }
        };
        let watches = Watches {
            cancelled,
            deadline: slots.deadline,
            sent,
            keep_on,
        };
        let result = self
            .relay(snap, ds, req, route, dest, inbound, watches, cx)
            .await;
        drop(slots);
        result
    }

    /// A session's stream (`GET`) or its end (`DELETE`).
    async fn session_verb(
        &self,
        snap: &Snapshot,
        ds: &mut ServerSession,
        req: &RequestHeader,
        route: usize,
        get: bool,
        cx: &mut Ctx,
    ) -> Result<(), Halt> {
        admit::protocol_headers(req, cx)?;
        admit::stream_or_end(req, get, cx)?;
        let _place = if get {
            Some(limits::stream_place(snap, &self.metrics)?)
        } else {
            None
        };
        limits::rate(snap, &self.metrics, route, true, cx).await?;
        let session = dispatch::session(snap, route, req, cx)?;
        let dest = federate::session(snap, route, session);
        let sending = Sending {
            verb: if get { Verb::Stream } else { Verb::EndSession },
            wait: if get { Wait::Stream } else { Wait::Answer },
            answer_by: None,
            rewritten: snap.config.routes[route].policy.is_some(),
        };
        let inbound = self
            .dispatch(ds, req, &dest, sending, None, false, cx)
            .await?;
        let watches = Watches {
            cancelled: None,
            deadline: None,
            sent: tokio::time::Instant::now(),
            keep_on: false,
        };
        self.relay(snap, ds, req, route, dest, inbound, watches, cx)
            .await
    }

    /// Waits at the gates of upstream `gated_by` (none for a federated fan-out); a
    /// client that leaves or cancels while queued gives its place up.
    async fn enter_gates(
        &self,
        snap: &Snapshot,
        ds: &mut ServerSession,
        gated_by: Option<usize>,
        request: bool,
        cancelled: Option<&tokio::sync::Notify>,
        cx: &mut Ctx,
    ) -> Result<Slots, Halt> {
        let Some(up) = gated_by else {
            return Ok(Slots::default());
        };
        enum Gated {
            Entered(Result<Slots, Refusal>),
            ClientLeft,
            Cancelled,
        }
        // Biased: a call no gate holds back is through at the first poll, without
        // touching the client's socket.
        let gated = tokio::select! {
            biased;
            r = limits::gates(snap, &self.metrics, up, request, cx) => Gated::Entered(r),
            _ = client_left(ds) => Gated::ClientLeft,
            _ = notified(cancelled) => Gated::Cancelled,
        };
        match gated {
            Gated::Entered(r) => Ok(r?),
            Gated::ClientLeft => Err(Halt::ClientLeft),
            Gated::Cancelled => {
                cx.close = true;
                Err(Refusal::Cancelled.into())
            }
        }
    }

    /// Sends the request, racing the wait for its answer with the client cancelling
    /// and, when `watch_client`, with the client leaving.
    #[allow(clippy::too_many_arguments)]
    async fn dispatch(
        &self,
        ds: &mut ServerSession,
        req: &RequestHeader,
        dest: &Destination,
        sending: Sending,
        cancelled: Option<&tokio::sync::Notify>,
        watch_client: bool,
        cx: &mut Ctx,
    ) -> Result<Inbound, Halt> {
        enum Sent {
            Answer(Result<Inbound, Refusal>),
            Cancelled,
            ClientLeft,
        }
        let sent = tokio::select! {
            r = dispatch::send(dest, req, sending, &self.metrics, cx) => Sent::Answer(r),
            _ = notified(cancelled) => Sent::Cancelled,
            // Nobody waits for the answer any more: the upstream exchange is dropped,
            // and the gate slot it held comes back.
            _ = async {
                fast_sleep(WATCH_CLIENT_AFTER).await;
                client_left(ds).await
            }, if watch_client => Sent::ClientLeft,
        };
        match sent {
            Sent::Answer(r) => Ok(r?),
            Sent::Cancelled => Err(Refusal::Cancelled.into()),
            Sent::ClientLeft => Err(Halt::ClientLeft),
        }
    }

    /// Writes the answer's head and relays its body.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        snap: &Snapshot,
        ds: &mut ServerSession,
        req: &RequestHeader,
        route: usize,
        dest: Destination,
        inbound: Inbound,
        watches: Watches<'_>,
        cx: &mut Ctx,
    ) -> Result<(), Halt> {
        let Inbound { answer, served } = inbound;
        let name = dest.upstream.name();
        let up_head = answer.head();
        let status = up_head.status.as_u16();
        let sse = up_head
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let transform = self.transform(
            snap,
            route,
            (status, sse),
            watches.deadline.is_some(),
            dest.member.as_deref().map(|m| (m, dest.tasks)),
            cx,
        );
        let principal = cx.principal.clone();
        let sealing = Sealing {
            seal: &snap.sessions,
            owner: owner_of(principal.as_deref()),
            bound: Bound {
                upstream: snap.route_upstream_name(route),
                route: snap.config.routes[route].path.as_str(),
            },
            replica: &served.replica,
            presented: match (&dest.session, req.headers.get(&MCP_SESSION_ID_H)) {
                (Some(pin), Some(token)) => Some((&pin.id, &pin.replica, token.as_bytes())),
                _ => None,
            },
            moved: served.moved.as_ref().map(|p| p.id.as_slice()),
        };
        let sealing = (dest.session_ids == SessionIds::Seal).then_some(&sealing);
        let http10 = req.version == Version::HTTP_10;
        let (head, framing) = head::build(up_head, sealing, transform.rewrites(), http10, cx)
            .map_err(|e| {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[name, "protocol"])
                    .inc();
                Refusal::UpstreamUnavailable {
                    upstream: name.to_owned(),
                    detail: format!("invalid response header: {e}"),
                }
            })?;
        let writer = self.writer(snap);
        if let Err(why) = writer.head(ds, head).await {
            self.lost(why, cx);
            return Ok(());
        }
        if framing.no_body {
            // The upstream's body is not wanted: dropping the answer closes its connection.
            drop(answer);
            if let Err(why) = writer.finish(ds).await {
                self.lost(why, cx);
            }
            return Ok(());
        }
        // The gateway writes into the upstream session itself: answers to server
        // requests the policy refused, and a cancellation when the deadline passes.
        let on_behalf = (snap.config.routes[route].policy.is_some() || watches.deadline.is_some())
            .then(|| OnBehalf {
                upstream: dest.upstream.clone(),
                session: dest.session.map(|s| OwnedPin {
                    replica: served.replica.clone(),
                    id: s.id,
                }),
                version: self.version(cx),
            });
        let relay = Relay {
            writer,
            transform,
            sse: framing.sse,
            open_ended: framing.open_ended,
            keepalive: snap.config.http.stream_keepalive,
            watches,
            on_behalf,
            rpc_id: cx.rpc_id.as_deref(),
            upstream: name,
            route: snap.config.routes[route].name.as_str(),
            metrics: &self.metrics,
        };
        let mut bytes_out = 0;
        let ended = relay.run(ds, answer, &mut bytes_out).await;
        cx.bytes_out += bytes_out;
        match ended {
            Ended::Complete => {}
            Ended::DeadlineExceeded { .. } => self.count_upstream(name, "deadline"),
            Ended::Broken(kind) => self.count_upstream(name, kind),
            Ended::ClientGone | Ended::WriteTimedOut | Ended::Cancelled { .. } => {}
        }
        if ended != Ended::Complete {
            // Headers went out already: closing is the only honest signal left.
            cx.close = true;
            cx.reason = ended.reason();
            cx.cut = ended.cut();
        }
        Ok(())
    }

    /// The filters an answer passes, by route and answer.
    fn transform(
        &self,
        snap: &Snapshot,
        route: usize,
        (status, sse): (u16, bool),
        deadline: bool,
        member: Option<(&str, bool)>,
        cx: &Ctx,
    ) -> Transform {
        let r = &snap.config.routes[route];
        let mut filters: Vec<Box<dyn Filter>> = Vec::new();
        if deadline && sse {
            filters.push(Box::new(DeadlineFilter::new()));
        }
        if let (Some(policy), 200) = (&r.policy, status) {
            let filter = PolicyFilter {
                policy: policy.clone(),
                kind: cx.list,
                // On a GET stream any list answer (a resumed one, say) is recognised.
                lists: cx.list.is_some() || cx.op == Op::Stream,
                who: cx.principal.clone(),
                upstream: snap.route_upstream_name(route).to_owned(),
                trust_annotations: snap.route_trusts_annotations(route),
                cache: self.catalogs.clone(),
                rpc_id: cx.rpc_id.clone(),
                members: snap.federations[route].as_ref().map(|f| f.names().clone()),
            };
            if sse {
                filters.push(Box::new(filter));
            } else if cx.list.is_some() {
                return Transform::Json {
                    filter: Box::new(filter),
                    buf: Vec::new(),
                };
            }
        }
        match member {
            Some((member, tasks)) if sse => filters.push(Box::new(MemberIds {
                member: member.to_owned(),
                tasks,
            })),
            // A JSON answer about a task: its task ids are mapped whole.
            Some((member, true)) if filters.is_empty() && status == 200 => {
                return Transform::MemberJson {
                    ids: Box::new(MemberIds {
                        member: member.to_owned(),
                        tasks: true,
                    }),
                    buf: Vec::new(),
                };
            }
            _ => {}
        }
        if filters.is_empty() {
            return Transform::Pass;
        }
        Transform::Events(Box::new(Chain::new(
            filters,
            MAX_LIST_BYTES,
            r.policy.is_some(),
        )))
    }

    /// The revision the gateway speaks when it writes on the client's behalf.
    fn version(&self, cx: &Ctx) -> &'static str {
        cx.version
            .unwrap_or(ProtocolVersion::ASSUMED_WITHOUT_HEADER)
            .as_str()
    }

    /// A deadline passed before any answer: the upstream is told, in a session.
    fn cancel_in_session(&self, dest: &Destination, cx: &Ctx) {
        if let (Some(session), Some(id)) = (&dest.session, &cx.rpc_id) {
            crate::upstream::own::post_in_background(
                dest.upstream.clone(),
                Some(session.clone()),
                self.version(cx).to_owned(),
                crate::relay::cancelled_notification(id),
            );
        }
    }

    fn count_upstream(&self, name: &str, kind: &str) {
        self.metrics
            .upstream_errors
            .with_label_values(&[name, kind])
            .inc();
    }

    /// A write to the client failed: the connection closes.
    fn lost(&self, why: Unwritten, cx: &mut Ctx) {
        cx.close = true;
        cx.cut = true;
        cx.reason = Some(match why {
            Unwritten::Gone => "client_closed",
            Unwritten::TimedOut => "client_write_timeout",
        });
    }

    /// A response the gateway makes itself.
    async fn write_whole(
        &self,
        snap: &Snapshot,
        ds: &mut ServerSession,
        head: pingora_http::ResponseHeader,
        body: Bytes,
        cx: &mut Ctx,
    ) {
        if let Err(why) = self.writer(snap).whole(ds, head, body).await {
            self.lost(why, cx);
        }
    }

    /// The one exit: what a halted request gets.
    async fn halted(&self, snap: &Snapshot, ds: &mut ServerSession, halt: Halt, cx: &mut Ctx) {
        match halt {
            Halt::ClientLeft => {
                cx.close = true;
                cx.reason = Some("client_closed");
                cx.status = 499;
            }
            Halt::Refused(r) => {
                if ds.response_written().is_some() {
                    cx.close = true;
                    return;
                }
                if let Some((head, body)) = refusal::response(&r, cx) {
                    self.write_whole(snap, ds, head, body, cx).await;
                }
            }
        }
    }
}

/// The idle timeout as pingora applies it: whole seconds, at least one.
fn idle_secs(idle: Duration) -> Duration {
    Duration::from_secs(idle.as_secs_f64().ceil().max(1.0) as u64)
}

/// Returns when the client closes its connection; pends forever otherwise (bytes of a
/// pipelined request are left for their turn).
async fn client_left(ds: &mut ServerSession) {
    if ds.read_body_or_idle(true).await.is_err() {
        return;
    }
    std::future::pending().await
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut ds: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let snap = self.live.load_full();
        let http = &snap.config.http;
        // A head must arrive whole within the header timeout (after the idle wait on a
        // reused connection): a client trickling bytes cannot hold the connection.
        let reused = ds.take_connection_user_context().is_some();
        let wait = if reused {
            http.idle_timeout + http.header_timeout
        } else {
            http.header_timeout
        };
        let waited = std::time::Instant::now();
        match pingora_timeout::timeout(wait, ds.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                // pingora ends a reused connection quietly at its keep-alive timeout
                // (the idle timeout, in whole seconds); a client closing is quicker.
                if reused && waited.elapsed() >= idle_secs(http.idle_timeout) {
                    self.metrics
                        .client_timeouts
                        .with_label_values(&["idle"])
                        .inc();
                }
                return None;
            }
            Ok(Err(e)) => {
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    let _ = ds.respond_error(400).await;
                }
                return None;
            }
            Err(_) => {
                self.metrics
                    .client_timeouts
                    .with_label_values(&[if reused { "idle" } else { "header" }])
                    .inc();
                return None;
            }
        }
        // read_request() resets keep-alive to "forever"; bound idle connections again.
        ds.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(idle_secs(http.idle_timeout).as_secs())
        });
        // Pipelined requests are served in order (RFC 9112 9.3.2), not dropped.
        ds.set_pipelining_enabled(true);
        let _in_flight = Raised::new(self.metrics.in_flight.clone());
        let req = ds.req_header().clone();
        let mut cx = Ctx::new(ds.client_addr().and_then(|a| a.as_inet()).copied());
        cx.tls = ds.digest().is_some_and(|d| d.ssl_digest.is_some());
        match crate::tls::client_identity(ds.digest(), &snap) {
            ClientCert::Verified(id) => cx.client_cert = Some(id.clone()),
            ClientCert::NotAsked => {}
            ClientCert::Absent | ClientCert::Rejected => {
                // A listener that requires certificates refuses the handshake without
                // one; a resumed session (or a CA removed since) can still get here.
                let required = snap
                    .config
                    .tls
                    .as_ref()
                    .and_then(|t| t.client_auth.as_ref())
                    .is_some_and(|a| a.required);
                if required {
                    self.metrics.connections_rejected.inc();
                    return None;
                }
            }
        }
        let outcome = if self.metrics.in_flight.get() > snap.config.admission.max_requests as i64 {
            cx.close = true;
            Err(Refusal::Overloaded(Overload::TooManyRequests).into())
        } else {
            self.serve(&snap, &mut ds, &req, &mut cx).await
        };
        if let Err(halt) = outcome {
            self.halted(&snap, &mut ds, halt, &mut cx).await;
        }
        // A body left unread (refused before it was read) is not drained: the
        // connection closes instead, so a client cannot make the gateway read for it.
        if !ds.is_body_done() {
            cx.close = true;
        }
        Recorder {
            metrics: &self.metrics,
            access: &self.access,
            audit: &self.audit,
        }
        .finish(&snap, &req, &cx);
        if cx.close {
            ds.set_keepalive(None);
        }
        if cx.cut {
            // Finishing would end a truncated answer as if whole (an HTTP/2 stream's
            // END_STREAM, a chunked body's last chunk): reset the stream, or drop the
            // HTTP/1 connection (a TLS close_notify would also say "complete").
            if ds.as_http2().is_some() {
                ds.shutdown().await;
            }
            return None;
        }
        let mut settings = HttpPersistentSettings::for_session(&ds);
        settings.set_user_context(Box::new(Reused));
        match ds.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    /// Each new HTTP/2 connection: the stream cap from the live config, so a reload
    /// changes it for new connections.
    fn h2_options(&self) -> Option<H2Options> {
        let mut h2 = H2Options::new();
        h2.max_concurrent_streams(self.live.load().config.http.h2_max_streams);
        Some(h2)
    }
}
