//! The public MCP listener: one pingora `HttpServerApp` that checks each request at
//! the edge (route, Host, Origin, method, media types, body, envelope, headers) and
//! forwards what passes to its route's upstream through [`crate::forward`].
//!
//! It implements `HttpServerApp` rather than pingora's `ProxyHttp` pipeline: the body
//! must be read and judged before any upstream work, and pingora 0.9.1's proxy only
//! replays 64 KiB of a body read in `request_filter` (see docs/architecture.md).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use http::Method;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream,
};
use pingora_core::connectors::http::v1::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_error::ErrorType;
use pingora_http::ResponseHeader;
use portcullis_auth::Principal;
use portcullis_mcp::envelope::{Body, EnvelopeError};
use portcullis_mcp::headers::{self, MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION};
use portcullis_mcp::{Era, Kind, Overload, ProtocolVersion, Refusal};

use crate::access_log::{AccessLog, Record};
use crate::audit::{ArgsDigest, AuditLog, AuditRecord};
use crate::calls::Calls;
use crate::catalog::{Catalogs, ToolInfo};
use crate::forward::{self, Ending, Upstreamed, MCP_SESSION_ID_H};
use crate::metrics::Metrics;
use crate::metrics::Raised;
use crate::rewrite::ListFilter;
use crate::sessions::owner_of;
use crate::snapshot::{Live, Snapshot};
use crate::traffic::Counted;
use portcullis_policy::discovery::ListKind;

/// Idle seconds a client connection is kept open between requests.
const KEEPALIVE_SECS: u64 = 60;
/// Methods the MCP endpoint answers, for `Allow`.
const ALLOW: &str = "GET, POST, DELETE, OPTIONS";
/// Request headers a browser client may send cross-origin.
const CORS_ALLOW_HEADERS: &str = "content-type, accept, authorization, mcp-session-id, \
mcp-protocol-version, mcp-method, mcp-name, last-event-id";
/// Response headers a browser client may read cross-origin.
const CORS_EXPOSE_HEADERS: &str = "mcp-session-id, mcp-protocol-version, www-authenticate";

/// The public listener's application.
pub struct Gateway {
    live: Live,
    connector: Connector,
    metrics: Arc<Metrics>,
    access: AccessLog,
    audit: AuditLog,
    options: HttpServerOptions,
    /// What is known of each upstream's tools (for policies).
    catalogs: Arc<Catalogs>,
    /// The gateway's own MCP client, for fetching catalogs and telling upstreams of
    /// cancellations and refused server requests.
    catalog_client: reqwest::Client,
    /// Requests in flight that their client may cancel.
    calls: Calls,
}

/// What the handling of one request learnt, for the access log and metrics.
#[derive(Default)]
pub(crate) struct Exchange {
    pub route: Option<usize>,
    pub rpc_method: Option<String>,
    pub rpc_id: Option<String>,
    pub target: Option<String>,
    pub upstream: Option<usize>,
    pub endpoint: Option<std::net::SocketAddr>,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub reason: Option<&'static str>,
    /// The allowed Origin to echo in CORS headers.
    pub cors_origin: Option<String>,
    /// Set when the connection must not be reused.
    pub close: bool,
    /// The authenticated caller.
    pub principal: Option<Arc<Principal>>,
    /// The policy rule that decided the request.
    pub rule: Option<Arc<str>>,
    /// A `*/list` answer to filter through the route's policy.
    pub list_filter: Option<ListKind>,
    /// A renamed tool's upstream name, sent instead of the client's.
    pub upstream_tool: Option<String>,
    /// The response will be rewritten (so it must not arrive compressed).
    pub filtering: bool,
    /// The policy's effect on the request (`allow`, `deny`, `hide`, `absent`).
    pub effect: Option<&'static str>,
    /// A `tools/call`'s arguments, digested for the audit log.
    pub audit_args: Option<ArgsDigest>,
}

/// How the wait at a request's gates ended.
enum Gated {
    Entered(Result<crate::traffic::Slots, Refusal>),
    ClientLeft,
    Cancelled,
}

/// A refusal and the request id to answer it with.
pub(crate) struct Refused {
    pub refusal: Refusal,
    pub id: Option<String>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused { refusal, id: None }
    }
}

/// Counts a request in `portcullis_requests_in_flight` (which draining also reads)
/// until it is dropped, on every path.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> InFlight<'a> {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Gateway {
    /// Builds the app.
    pub fn new(
        live: Live,
        metrics: Arc<Metrics>,
        access: AccessLog,
        audit: AuditLog,
        pool_size: usize,
    ) -> Gateway {
        let catalogs = Arc::new(Catalogs::default());
        // Building a client fails only without a TLS backend; this one speaks plain http.
        // Never redirected and never through a proxy from the environment: the
        // upstream's own credential headers go to the upstream and nowhere else.
        let catalog_client = reqwest::Client::builder()
            .timeout(crate::catalog::FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default();
        let mut options = HttpServerOptions::default();
        options.keepalive_request_limit = None;
        Gateway {
            live,
            connector: Connector::new(Some(ConnectorOptions::new(pool_size))),
            metrics,
            access,
            audit,
            options,
            catalogs,
            catalog_client,
            calls: Calls::default(),
        }
    }

    async fn handle(
        &self,
        snap: &Snapshot,
        ds: &mut ServerSession,
        ex: &mut Exchange,
    ) -> Result<(), Refused> {
        let req = ds.req_header();
        if let Some(suffix) = req.uri.path().strip_prefix(METADATA_PATH) {
            let suffix = suffix.to_owned();
            return serve_resource_metadata(snap, ds, ex, &suffix).await;
        }
        let Some(route_idx) = snap
            .config
            .routes
            .iter()
            .position(|r| r.path == req.uri.path())
        else {
            return Err(Refusal::NoRoute.into());
        };
        ex.route = Some(route_idx);
        check_host(snap, ds)?;
        if let Some(origin) = ds.get_header(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !snap
                .config
                .allowed_origins
                .iter()
                .any(|r| r.matches(origin))
            {
                return Err(
                    Refusal::OriginNotAllowed(format!("Origin {origin:?} is not allowed")).into(),
                );
            }
            ex.cors_origin = Some(origin.to_owned());
        }
        let method = ds.req_header().method.clone();
        if method != Method::OPTIONS {
            authenticate(snap, ds, ex, route_idx).await?;
        }
        match method {
            Method::POST => self.post(snap, ds, ex, route_idx).await,
            Method::GET | Method::DELETE => {
                if let Some(v) = protocol_version(ds)? {
                    if v.era() == Era::Stateless {
                        // 2026-07-28 has no GET stream and no sessions to delete.
                        return Err(Refusal::MethodNotAllowed { allow: "POST" }.into());
                    }
                }
                if method == Method::GET {
                    let acc = headers::accepts(
                        ds.req_header()
                            .headers
                            .get_all(header::ACCEPT)
                            .iter()
                            .map(|v| v.as_bytes()),
                    );
                    if !acc.sse {
                        return Err(Refusal::NotAcceptable(
                            "Accept must include text/event-stream",
                        )
                        .into());
                    }
                }
                ex.rpc_method = Some(
                    if method == Method::GET {
                        "stream"
                    } else {
                        "end_session"
                    }
                    .to_owned(),
                );
                // Held while the stream is open.
                let _stream = if method == Method::GET {
                    let open = Raised::new(self.metrics.get_streams_open.clone());
                    if self.metrics.get_streams_open.get()
                        > snap.config.admission.max_streams as i64
                    {
                        return Err(Refusal::Overloaded(Overload::TooManyStreams).into());
                    }
                    Some(open)
                } else {
                    None
                };
                self.check_limits(snap, ds, ex, route_idx, Counted::Request { tool: None })
                    .await?;
                let ending = Ending {
                    cancelled: None,
                    deadline: None,
                    notifier: &self.catalog_client,
                    holds_slots: false,
                };
                self.forward(snap, ds, ex, route_idx, method, None, ending)
                    .await
            }
            Method::OPTIONS => {
                ex.status = 204;
                write_preflight(ds, ex).await;
                Ok(())
            }
            _ => Err(Refusal::MethodNotAllowed { allow: ALLOW }.into()),
        }
    }

    async fn post(
        &self,
        snap: &Snapshot,
        ds: &mut ServerSession,
        ex: &mut Exchange,
        route_idx: usize,
    ) -> Result<(), Refused> {
        let req = ds.req_header();
        let ct_ok = req
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| headers::is_json_content_type(v.as_bytes()));
        if !ct_ok {
            ex.close = true;
            return Err(Refusal::UnsupportedMediaType.into());
        }
        let acc = headers::accepts(
            req.headers
                .get_all(header::ACCEPT)
                .iter()
                .map(|v| v.as_bytes()),
        );
        if !(acc.json && acc.sse) {
            ex.close = true;
            return Err(Refusal::NotAcceptable(
                "Accept must include both application/json and text/event-stream",
            )
            .into());
        }
        let body = read_body(ds, snap.config.max_body_size, snap.config.body_timeout, ex).await?;
        ex.bytes_in = body.len();
        let parsed = Body::parse(&body).map_err(envelope_refusal)?;
        if let Body::Single(env) = &parsed {
            ex.rpc_id = env.id.map(|r| r.get().to_owned());
        }
        // Checked after parsing so the refusal carries the request's id.
        let version = protocol_version(ds).map_err(|mut r| {
            r.id = ex.rpc_id.clone();
            r
        })?;
        match &parsed {
            Body::Batch(items) => {
                ex.rpc_method = Some("batch".to_owned());
                if snap.config.routes[route_idx].policy.is_some() {
                    // A batch could carry a list (unfilterable here) or mix decisions.
                    return Err(Refusal::InvalidRequest(
                        "JSON-RPC batches are not accepted on routes with a policy".into(),
                    )
                    .into());
                }
                if !version
                    .unwrap_or(ProtocolVersion::ASSUMED_WITHOUT_HEADER)
                    .allows_batch()
                {
                    return Err(Refusal::InvalidRequest(
                        "JSON-RPC batches are only allowed in protocol revision 2025-03-26".into(),
                    )
                    .into());
                }
                if items.iter().any(|e| e.method_str() == "initialize") {
                    return Err(Refusal::InvalidRequest(
                        "initialize must not be part of a batch".into(),
                    )
                    .into());
                }
                if snap.traffic.governs(&snap.config, route_idx) {
                    // Each call must meet its own limits and gates.
                    return Err(Refusal::InvalidRequest(
                        "JSON-RPC batches are not accepted on routes with rate limits, or whose upstream has gates or deadlines".into(),
                    )
                    .into());
                }
            }
            Body::Single(env) => {
                ex.rpc_method = env.method.as_deref().map(str::to_owned);
                ex.target = env.target.as_deref().map(str::to_owned);
                let fail = |r: Refusal| Refused {
                    refusal: r,
                    id: ex.rpc_id.clone(),
                };
                let header_version = ds.req_header().headers.get(MCP_PROTOCOL_VERSION);
                let stateless = version == Some(ProtocolVersion::V2026_07_28);
                if let Some(meta) = env.meta_protocol_version.as_deref() {
                    if header_version.map(|h| h.as_bytes()) != Some(meta.as_bytes()) {
                        return Err(fail(Refusal::HeaderMismatch(
                            "MCP-Protocol-Version header does not match params._meta protocolVersion".into(),
                        )));
                    }
                } else if stateless && env.kind == Kind::Request {
                    return Err(fail(Refusal::InvalidParams(
                        "2026-07-28 requests carry params._meta io.modelcontextprotocol/protocolVersion".into(),
                    )));
                }
                if stateless {
                    let h = &ds.req_header().headers;
                    headers::check_stateless_headers(
                        env,
                        h.get(MCP_METHOD).map(|v| v.as_bytes()),
                        h.get(MCP_NAME).map(|v| v.as_bytes()),
                    )
                    .map_err(fail)?;
                }
            }
        }
        if let Body::Single(env) = &parsed {
            if self.audit.enabled() && env.method.as_deref() == Some("tools/call") {
                ex.audit_args = Some(crate::audit::digest(
                    env.params,
                    self.audit.include_arguments(),
                ));
            }
        }
        let renamed = match &parsed {
            Body::Single(env) => self.apply_policy(snap, route_idx, env, ex).await?,
            Body::Batch(_) => None,
        };
        if let Body::Single(env) = &parsed {
            if snap.traffic.governs(&snap.config, route_idx) {
                let method = env.method.as_deref().unwrap_or("");
                let refuse = |r: Refusal| Refused {
                    refusal: r,
                    id: ex.rpc_id.clone(),
                };
                // A call without an id would pass as a notification: uncounted, ungated.
                if env.kind == Kind::Notification && !method.starts_with("notifications/") {
                    return Err(refuse(Refusal::InvalidRequest(format!(
                        "{method} must be a request (with an id) on a route with rate limits, gates or deadlines"
                    ))));
                }
                if env.kind == Kind::Request && method == "tools/call" && env.target.is_none() {
                    return Err(refuse(Refusal::InvalidParams(
                        "tools/call needs params as an object with a string name here".into(),
                    )));
                }
            }
        }
        // What the request counts as for rate limits and gates (see docs/traffic.md).
        let (counted, is_request) = match &parsed {
            Body::Single(env) => match env.kind {
                Kind::Response => (Counted::Exempt, false),
                Kind::Notification => match env.method.as_deref() {
                    Some("notifications/cancelled" | "notifications/initialized") => {
                        (Counted::Exempt, false)
                    }
                    _ => (Counted::Request { tool: None }, false),
                },
                Kind::Request => {
                    let tool = (env.method.as_deref() == Some("tools/call"))
                        .then_some(ex.target.as_deref())
                        .flatten();
                    (Counted::Request { tool }, true)
                }
            },
            Body::Batch(items) => (
                Counted::Request { tool: None },
                items.iter().any(|e| e.kind == Kind::Request),
            ),
        };
        self.check_limits(snap, ds, ex, route_idx, counted)
            .await
            .map_err(|mut r| {
                r.id = ex.rpc_id.clone();
                r
            })?;
        // Sessions (not 2026-07-28, where closing the stream cancels) carry cancellations
        // by request id: a client's notifications/cancelled ends that request's relay here
        // and goes on to the upstream.
        let session = ds
            .get_header(&MCP_SESSION_ID_H)
            .filter(|_| version.is_none_or(|v| v.era() != Era::Stateless))
            .map(|v| v.as_bytes().to_vec());
        if let (Some(sid), Body::Single(env)) = (&session, &parsed) {
            if env.kind == Kind::Notification
                && env.method.as_deref() == Some("notifications/cancelled")
            {
                if let Some(id) = cancelled_request(env.params) {
                    self.calls
                        .cancel(sid, owner_of(ex.principal.as_deref()), id);
                }
            }
        }
        drop(parsed);
        let body = match renamed {
            Some(name) => match crate::policy::with_tool_name(&body, &name) {
                Some(b) => {
                    ex.upstream_tool = Some(name);
                    Bytes::from(b)
                }
                // Never forward the client's name for a renamed tool.
                None => {
                    return Err(Refused {
                        refusal: Refusal::InvalidParams(
                            "the request could not be rewritten for a renamed tool".into(),
                        ),
                        id: ex.rpc_id.clone(),
                    })
                }
            },
            None => body,
        };
        let is_call = ex.rpc_method.as_deref() == Some("tools/call");
        let upstream_tool = ex.upstream_tool.as_deref().or(ex.target.as_deref());
        // Registered before the gates, so a cancellation reaches a queued call too.
        let registered = match (&session, &ex.rpc_id) {
            (Some(sid), Some(id)) if is_request => Some(self.calls.register(
                sid,
                owner_of(ex.principal.as_deref()),
                id,
            )),
            _ => None,
        };
        let cancelled = registered.as_ref().map(|r| &*r.cancelled);
        let entering = snap.traffic.enter(
            &snap.config,
            &self.metrics,
            snap.config.routes[route_idx].upstream,
            is_request,
            upstream_tool.filter(|_| is_call),
        );
        // A call that waits in a queue is dropped if its client leaves or cancels it.
        // Biased: a call no gate holds back is through at the first poll, without
        // touching the client's socket.
        let gated = tokio::select! {
            biased;
            r = entering => Gated::Entered(r),
            _ = forward::client_left(ds) => Gated::ClientLeft,
            _ = forward::notified(cancelled) => Gated::Cancelled,
        };
        // Held until the answer has ended, streams included; dropped on every path.
        let slots = match gated {
            Gated::Entered(Ok(slots)) => slots,
            Gated::Entered(Err(refusal)) => {
                return Err(Refused {
                    refusal,
                    id: ex.rpc_id.clone(),
                })
            }
            Gated::ClientLeft => {
                ex.close = true;
                ex.reason = Some("client_closed");
                ex.status = 499;
                return Ok(());
            }
            Gated::Cancelled => {
                ex.close = true;
                return Err(Refused {
                    refusal: Refusal::Cancelled,
                    id: ex.rpc_id.clone(),
                });
            }
        };
        let ending = Ending {
            cancelled,
            deadline: slots.deadline,
            notifier: &self.catalog_client,
            holds_slots: slots.holds_gate(),
        };
        self.forward(snap, ds, ex, route_idx, Method::POST, Some(body), ending)
            .await
    }

    /// Counts the request against the route's rate limits.
    async fn check_limits(
        &self,
        snap: &Snapshot,
        ds: &ServerSession,
        ex: &Exchange,
        route_idx: usize,
        counted: Counted<'_>,
    ) -> Result<(), Refused> {
        let client = ds.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        snap.traffic
            .check_limits(
                &snap.config,
                &self.metrics,
                route_idx,
                ex.principal.as_deref(),
                client,
                counted,
            )
            .await
            .map_err(Refused::from)
    }

    /// Judges a request against the route's policy, before any upstream work. Returns
    /// the upstream's name for a renamed tool.
    async fn apply_policy(
        &self,
        snap: &Snapshot,
        route_idx: usize,
        env: &portcullis_mcp::Envelope<'_>,
        ex: &mut Exchange,
    ) -> Result<Option<String>, Refused> {
        let route = &snap.config.routes[route_idx];
        let Some(policy) = &route.policy else {
            return Ok(None);
        };
        let method = env.method.as_deref().unwrap_or("");
        let refuse = |refusal: Refusal, ex: &Exchange| Refused {
            refusal,
            id: ex.rpc_id.clone(),
        };
        if env.kind != Kind::Request {
            // MCP's notifications all live under notifications/; anything else sent
            // without an id would be a call that escapes judgement.
            if env.method.is_some() && !method.starts_with("notifications/") {
                return Err(refuse(
                    Refusal::InvalidRequest(format!(
                        "{method} must be a request (with an id) on a route with a policy"
                    )),
                    ex,
                ));
            }
            return Ok(None);
        }
        ex.list_filter = portcullis_policy::discovery::list_kind(method);
        let asked = match crate::policy::asked(method, env) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(None),
            Err(why) => return Err(refuse(Refusal::InvalidParams(why), ex)),
        };
        let up = &snap.upstreams[route.upstream];
        let upstream = &up.config;
        let (decision, renamed) = match crate::policy::upstream_tool(policy, &asked) {
            Err(()) => (crate::policy::renamed_away(), None),
            Ok(renamed) => {
                let name = renamed.as_deref().unwrap_or(&asked.name);
                let info = if asked.kind == portcullis_policy::Kind::Tool {
                    let endpoint = upstream.endpoints[up.pick()];
                    self.catalogs
                        .tool_fetching(&self.catalog_client, upstream, endpoint, name)
                        .await
                } else {
                    ToolInfo::Unknown
                };
                if info == ToolInfo::Absent {
                    // Not in the upstream's list: answered as unknown by the gateway,
                    // exactly as a hidden tool is, whatever the policy's default says.
                    (crate::policy::absent(), renamed)
                } else {
                    let annotations = match info {
                        // Trust is read now, so turning it off applies at once.
                        ToolInfo::Listed(a) if upstream.trust_annotations => a,
                        _ => portcullis_policy::Annotations::SPEC_DEFAULTS,
                    };
                    let d = crate::policy::judge(
                        policy,
                        ex.principal.as_deref(),
                        method,
                        &asked,
                        name,
                        &upstream.name,
                        annotations,
                    );
                    (d, renamed)
                }
            }
        };
        self.metrics
            .policy_decisions
            .with_label_values(&[
                route.name.as_str(),
                decision.effect.as_str(),
                decision.rule_name(),
            ])
            .inc();
        ex.rule = Some(Arc::from(decision.rule_name()));
        ex.effect = Some(if decision.rule_name() == "absent" {
            "absent"
        } else {
            decision.effect.as_str()
        });
        // 2026-07-28 requests carry their revision in _meta (checked above).
        let stateless = env
            .meta_protocol_version
            .as_deref()
            .and_then(ProtocolVersion::parse)
            .is_some_and(|v| v.era() == Era::Stateless);
        match crate::policy::refusal(&decision, &asked, stateless) {
            Some(refusal) => Err(Refused {
                refusal,
                id: ex.rpc_id.clone(),
            }),
            None => Ok(renamed),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        snap: &Snapshot,
        ds: &mut ServerSession,
        ex: &mut Exchange,
        route_idx: usize,
        method: Method,
        body: Option<Bytes>,
        ending: Ending<'_>,
    ) -> Result<(), Refused> {
        let up_idx = snap.config.routes[route_idx].upstream;
        ex.upstream = Some(up_idx);
        let upstream = &snap.upstreams[up_idx];
        let route = &snap.config.routes[route_idx];
        let route_name = route.name.as_str();
        // On a policy route every answer is watched: POST lists are filtered as what
        // they ask for; in any stream a list answer (a resumed one, say) is recognised
        // and filtered, and server requests are judged.
        let wanted = route.policy.as_ref().map(|p| (p, ex.list_filter));
        ex.filtering = wanted.is_some();
        let list_filter = match wanted {
            Some((policy, kind)) => Some(ListFilter {
                policy: policy.clone(),
                kind,
                who: ex.principal.clone(),
                upstream: upstream.config.name.clone(),
                trust_annotations: upstream.config.trust_annotations,
                cache: self.catalogs.clone(),
                rpc_id: ex.rpc_id.clone(),
            }),
            _ => None,
        };
        let annotations = route.policy.as_ref().map(|_| &*self.catalogs);
        let outcome = forward::exchange(
            &self.connector,
            upstream,
            ds,
            method,
            body,
            ex,
            &self.metrics,
            route_name,
            &snap.sessions,
            list_filter,
            annotations,
            route.policy.as_ref().map(|_| &self.catalog_client),
            ending,
        )
        .await;
        let count = |kind: &str| {
            self.metrics
                .upstream_errors
                .with_label_values(&[upstream.config.name.as_str(), kind])
                .inc();
        };
        match outcome {
            Ok(Upstreamed::Complete) => Ok(()),
            Ok(Upstreamed::ClientGone) => {
                ex.close = true;
                ex.reason = Some("client_closed");
                Ok(())
            }
            Ok(Upstreamed::Cancelled) => {
                ex.close = true;
                ex.reason = Some("client_cancelled");
                Ok(())
            }
            Ok(Upstreamed::DeadlineExceeded) => {
                ex.close = true;
                ex.reason = Some("deadline_exceeded");
                count("deadline");
                Ok(())
            }
            Ok(Upstreamed::Broken(kind)) => {
                // Headers were already sent: the only honest signal left is closing.
                ex.close = true;
                ex.reason = Some("upstream_broken");
                count(kind);
                Ok(())
            }
            Err((refusal, kind)) => {
                if let Some(kind) = kind {
                    count(kind);
                }
                Err(Refused {
                    refusal,
                    id: ex.rpc_id.clone(),
                })
            }
        }
    }

    fn finish_record(&self, snap: &Snapshot, ds: &ServerSession, ex: &Exchange, start: Instant) {
        let route = ex.route.map(|i| snap.config.routes[i].name.as_str());
        let upstream = ex.upstream.map(|i| snap.upstreams[i].config.name.as_str());
        let duration = start.elapsed();
        let http_method = ds.req_header().method.as_str();
        let label = ex.rpc_method.as_deref().map_or("none", |m| match m {
            "batch" | "stream" | "end_session" | "resource_metadata" => m_static(m),
            other => portcullis_mcp::methods::label(other),
        });
        let status = status_label(ex.status);
        self.metrics
            .requests
            .with_label_values(&[
                route.unwrap_or(""),
                http_method_label(http_method),
                label,
                status,
            ])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[route.unwrap_or(""), label])
            .observe(duration.as_secs_f64());
        if let Some(reason) = ex.reason {
            self.metrics
                .refusals
                .with_label_values(&[route.unwrap_or(""), reason])
                .inc();
        }
        self.access.write(&Record {
            route,
            http_method,
            rpc_method: ex.rpc_method.as_deref(),
            rpc_id: ex.rpc_id.as_deref(),
            target: ex.target.as_deref(),
            status: ex.status,
            duration,
            upstream,
            endpoint: ex.endpoint,
            session_id: ds.get_header(&MCP_SESSION_ID_H).map(|v| v.as_bytes()),
            bytes_in: ex.bytes_in,
            bytes_out: ex.bytes_out,
            reason: ex.reason,
            client: ds.client_addr().and_then(|a| a.as_inet()).copied(),
            subject: ex.principal.as_ref().map(|p| p.subject.as_str()),
            rule: ex.rule.as_deref(),
        });
        if ex.rpc_method.as_deref() == Some("tools/call") && self.audit.enabled() {
            self.audit.write(&AuditRecord {
                route,
                upstream,
                tool: ex.target.as_deref(),
                principal: ex.principal.as_deref(),
                decision: ex.effect.unwrap_or("allow"),
                rule: ex.rule.as_deref(),
                status: ex.status,
                reason: ex.reason,
                rpc_id: ex.rpc_id.as_deref(),
                args: ex.audit_args.as_ref(),
            });
        }
    }
}

fn m_static(m: &str) -> &'static str {
    match m {
        "batch" => "batch",
        "stream" => "stream",
        "resource_metadata" => "resource_metadata",
        _ => "end_session",
    }
}

fn http_method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Statuses labelled as themselves; others fold into their class, so the label set
/// stays bounded and the lookup allocation-free.
const STATUS_LABELS: [(u16, &str); 17] = [
    (200, "200"),
    (202, "202"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (406, "406"),
    (408, "408"),
    (413, "413"),
    (415, "415"),
    (429, "429"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

fn status_label(s: u16) -> &'static str {
    if let Some((_, label)) = STATUS_LABELS.iter().find(|(code, _)| *code == s) {
        return label;
    }
    match s {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
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

/// The header machine clients may send their API key in.
static X_API_KEY: header::HeaderName = header::HeaderName::from_static("x-api-key");

/// Where RFC 9728 protected resource metadata is served (plus the route path).
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The route's public URL: `http.public_url` + path, or `http://` + Host + path.
fn resource_url(snap: &Snapshot, ds: &ServerSession, route_path: &str) -> String {
    match &snap.config.public_url {
        Some(base) => format!("{base}{route_path}"),
        None => {
            let host = request_host(ds).unwrap_or("localhost");
            format!("http://{host}{route_path}")
        }
    }
}

/// The metadata URL of a route, for `WWW-Authenticate`'s `resource_metadata`.
fn metadata_url(snap: &Snapshot, ds: &ServerSession, route_path: &str) -> String {
    let resource = resource_url(snap, ds, route_path);
    let origin_end = resource
        .find("://")
        .and_then(|i| resource[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(resource.len());
    format!("{}{METADATA_PATH}{}", &resource[..origin_end], route_path)
}

/// Checks the caller's credential for an authenticated route (401/403 per the spec).
async fn authenticate(
    snap: &Snapshot,
    ds: &ServerSession,
    ex: &mut Exchange,
    route_idx: usize,
) -> Result<(), Refused> {
    let route = &snap.config.routes[route_idx];
    let Some(auth) = &route.auth else {
        return Ok(());
    };
    // Tokens never travel in the URL (the spec forbids it; URLs end up in logs).
    let in_query = ds
        .req_header()
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("access_token=")));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let result = if in_query {
        Err(portcullis_auth::AuthError::Invalid(
            "tokens in the query string are refused; send Authorization: Bearer".into(),
        ))
    } else {
        let h = &ds.req_header().headers;
        auth.check(
            h.get(header::AUTHORIZATION).map(|v| v.as_bytes()),
            h.get(&X_API_KEY).map(|v| v.as_bytes()),
            now,
        )
        .await
    };
    match result {
        Ok(principal) => {
            ex.principal = Some(principal);
            Ok(())
        }
        Err(e) => {
            let challenge = auth.challenge(&e, &metadata_url(snap, ds, &route.path));
            let refusal = match e {
                portcullis_auth::AuthError::InsufficientScope { .. } => {
                    Refusal::InsufficientScope { challenge }
                }
                other => Refusal::Unauthorized {
                    challenge,
                    detail: other.to_string(),
                },
            };
            Err(refusal.into())
        }
    }
}

/// `GET /.well-known/oauth-protected-resource[/<route path>]`: RFC 9728 metadata of an
/// authenticated route. The bare form answers when exactly one route authenticates.
async fn serve_resource_metadata(
    snap: &Snapshot,
    ds: &mut ServerSession,
    ex: &mut Exchange,
    suffix: &str,
) -> Result<(), Refused> {
    let mut authenticated = snap.config.routes.iter().filter(|r| r.auth.is_some());
    let route = if suffix.is_empty() || suffix == "/" {
        match (authenticated.next(), authenticated.next()) {
            (Some(only), None) => only,
            _ => return Err(Refusal::NoRoute.into()),
        }
    } else {
        match authenticated.find(|r| r.path == suffix) {
            Some(r) => r,
            None => return Err(Refusal::NoRoute.into()),
        }
    };
    if ds.req_header().method != Method::GET {
        return Err(Refusal::MethodNotAllowed { allow: "GET" }.into());
    }
    let Some(auth) = &route.auth else {
        return Err(Refusal::NoRoute.into());
    };
    let body = auth
        .metadata(&resource_url(snap, ds, &route.path))
        .to_string()
        .into_bytes();
    ex.status = 200;
    ex.rpc_method = Some("resource_metadata".to_owned());
    let Ok(mut resp) = ResponseHeader::build(200, Some(4)) else {
        return Ok(());
    };
    let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = resp.insert_header(header::CONTENT_LENGTH, body.len().to_string());
    // Browser-based clients fetch this cross-origin before they have any credential.
    let _ = resp.insert_header("access-control-allow-origin", "*");
    if ds.write_response_header(Box::new(resp)).await.is_ok() {
        let _ = ds.write_response_body(Bytes::from(body), true).await;
    }
    Ok(())
}

/// The `MCP-Protocol-Version` header, if sent; an unknown value is refused.
fn protocol_version(ds: &ServerSession) -> Result<Option<ProtocolVersion>, Refused> {
    let values = ds.req_header().headers.get_all(MCP_PROTOCOL_VERSION);
    let mut iter = values.iter();
    let Some(first) = iter.next() else {
        return Ok(None);
    };
    if iter.next().is_some() {
        return Err(Refusal::InvalidRequest(
            "MCP-Protocol-Version header sent more than once".into(),
        )
        .into());
    }
    let text = first.to_str().unwrap_or("");
    ProtocolVersion::parse(text).map(Some).ok_or_else(|| {
        Refusal::UnsupportedProtocolVersion {
            requested: String::from_utf8_lossy(first.as_bytes()).into_owned(),
        }
        .into()
    })
}

fn check_host(snap: &Snapshot, ds: &ServerSession) -> Result<(), Refused> {
    let allowed = &snap.config.allowed_hosts;
    if allowed.is_empty() {
        return Ok(());
    }
    let host = request_host(ds).unwrap_or("");
    let name = host_name(host).to_ascii_lowercase();
    if allowed.contains(&name) {
        Ok(())
    } else {
        Err(Refusal::HostNotAllowed(format!("Host {host:?} is not allowed")).into())
    }
}

/// The request's host: the `Host` header (HTTP/1.1) or the URI authority (HTTP/2).
fn request_host(ds: &ServerSession) -> Option<&str> {
    let req = ds.req_header();
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The name part of a Host value: `[::1]:80` -> `::1`, `a.example:8080` -> `a.example`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn envelope_refusal(e: EnvelopeError) -> Refused {
    let id = e.id().map(str::to_owned);
    let refusal = match e {
        EnvelopeError::Parse(r) => Refusal::ParseError(r),
        EnvelopeError::Invalid { reason, .. } => Refusal::InvalidRequest(reason),
        EnvelopeError::InvalidParams { reason, .. } => Refusal::InvalidParams(reason),
    };
    Refused { refusal, id }
}

/// Reads the whole request body, refusing past `limit` bytes or `timeout`.
async fn read_body(
    ds: &mut ServerSession,
    limit: usize,
    timeout: std::time::Duration,
    ex: &mut Exchange,
) -> Result<Bytes, Refused> {
    let declared = ds
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        ex.close = true;
        return Err(Refusal::PayloadTooLarge { limit }.into());
    }
    let expects_continue = ds
        .get_header(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && ds.write_continue_response().await.is_err() {
        ex.close = true;
        return Err(Refusal::RequestTimeout.into());
    }
    let mut buf = BodyBuf::Empty;
    let mut received = 0usize;
    let mut deadline = None;
    loop {
        let chunk = read_chunk(ds, timeout, &mut deadline).await;
        match chunk {
            Err(_) => {
                ex.close = true;
                return Err(Refusal::RequestTimeout.into());
            }
            Ok(Err(e)) => {
                ex.close = true;
                let refusal = if matches!(e.etype(), ErrorType::ReadTimedout) {
                    Refusal::RequestTimeout
                } else {
                    Refusal::InvalidRequest(format!(
                        "request body could not be read: {}",
                        e.etype().as_str()
                    ))
                };
                return Err(refusal.into());
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(bytes))) => {
                received += bytes.len();
                if received > limit {
                    ex.close = true;
                    return Err(Refusal::PayloadTooLarge { limit }.into());
                }
                buf.push(bytes, declared.unwrap_or(0));
            }
        }
    }
    Ok(buf.freeze())
}

/// Reads the next body chunk, bounded by a deadline `timeout` after the first time the
/// body had to be waited for. A body already buffered with the headers (the usual
/// small request) is read without arming any timer.
async fn read_chunk(
    ds: &mut ServerSession,
    timeout: std::time::Duration,
    deadline: &mut Option<std::time::Instant>,
) -> Result<pingora_error::Result<Option<Bytes>>, ()> {
    let mut read = std::pin::pin!(ds.read_request_body());
    if let std::task::Poll::Ready(r) = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx))
    })
    .await
    {
        return Ok(r);
    }
    let at = *deadline.get_or_insert_with(|| std::time::Instant::now() + timeout);
    let left = at.saturating_duration_since(std::time::Instant::now());
    // pingora's coarse (10 ms) timer: far cheaper per request than tokio's wheel.
    pingora_timeout::timeout(left, read).await.map_err(|_| ())
}

/// A request body as it arrives: most bodies come in one chunk, kept without a copy.
enum BodyBuf {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BodyBuf {
    fn push(&mut self, chunk: Bytes, declared: usize) {
        *self = match std::mem::replace(self, BodyBuf::Empty) {
            BodyBuf::Empty => BodyBuf::One(chunk),
            BodyBuf::One(first) => {
                let mut all = BytesMut::with_capacity(declared.max(first.len() + chunk.len()));
                all.extend_from_slice(&first);
                all.extend_from_slice(&chunk);
                BodyBuf::Many(all)
            }
            BodyBuf::Many(mut all) => {
                all.extend_from_slice(&chunk);
                BodyBuf::Many(all)
            }
        };
    }

    fn freeze(self) -> Bytes {
        match self {
            BodyBuf::Empty => Bytes::new(),
            BodyBuf::One(b) => b,
            BodyBuf::Many(m) => m.freeze(),
        }
    }
}

/// Adds CORS response headers when the request came with an allowed Origin.
pub(crate) fn add_cors(resp: &mut ResponseHeader, ex: &Exchange) {
    if let Some(origin) = &ex.cors_origin {
        let _ = resp.insert_header("access-control-allow-origin", origin.as_str());
        let _ = resp.insert_header("access-control-expose-headers", CORS_EXPOSE_HEADERS);
        let _ = resp.insert_header("vary", "Origin");
    }
}

async fn write_preflight(ds: &mut ServerSession, ex: &Exchange) {
    let Ok(mut resp) = ResponseHeader::build(204, Some(6)) else {
        return;
    };
    let _ = resp.insert_header("allow", ALLOW);
    if ex.cors_origin.is_some() {
        add_cors(&mut resp, ex);
        let _ = resp.insert_header("access-control-allow-methods", ALLOW);
        let _ = resp.insert_header("access-control-allow-headers", CORS_ALLOW_HEADERS);
        let _ = resp.insert_header("access-control-max-age", "600");
    }
    let _ = resp.insert_header(header::CONTENT_LENGTH, "0");
    let _ = ds.write_response_header(Box::new(resp)).await;
}

async fn write_refusal(ds: &mut ServerSession, refused: &Refused, ex: &mut Exchange) {
    let r = &refused.refusal;
    let body = r.body(refused.id.as_deref());
    ex.status = r.status();
    ex.reason = Some(r.reason());
    let Ok(mut resp) = ResponseHeader::build(r.status(), Some(6)) else {
        return;
    };
    let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = resp.insert_header(header::CONTENT_LENGTH, body.len().to_string());
    if let Refusal::MethodNotAllowed { allow } = r {
        let _ = resp.insert_header("allow", *allow);
    }
    if let Some(secs) = r.retry_after_secs() {
        let _ = resp.insert_header("retry-after", secs.to_string());
    }
    if let Some(challenge) = r.challenge() {
        let _ = resp.insert_header(header::WWW_AUTHENTICATE, challenge);
    }
    add_cors(&mut resp, ex);
    if ds.write_response_header(Box::new(resp)).await.is_ok() {
        let _ = ds.write_response_body(Bytes::from(body), true).await;
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut ds: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match ds.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    let _ = ds.respond_error(400).await;
                }
                return None;
            }
        }
        let start = Instant::now();
        // read_request() resets keep-alive to "forever"; bound idle connections again.
        ds.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(KEEPALIVE_SECS)
        });
        let _in_flight = InFlight::enter(&self.metrics.in_flight);
        let snap = self.live.load_full();
        let mut ex = Exchange::default();
        let outcome = if self.metrics.in_flight.get() > snap.config.admission.max_requests as i64 {
            // The body stays unread, so the connection cannot be reused.
            ex.close = true;
            Err(Refusal::Overloaded(Overload::TooManyRequests).into())
        } else {
            self.handle(&snap, &mut ds, &mut ex).await
        };
        if let Err(refused) = outcome {
            if ds.response_written().is_none() {
                write_refusal(&mut ds, &refused, &mut ex).await;
            } else {
                ex.close = true;
            }
        }
        self.finish_record(&snap, &ds, &ex, start);
        if ex.close {
            ds.set_keepalive(None);
        }
        let settings = HttpPersistentSettings::for_session(&ds);
        match ds.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            _ => None,
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_drop_ports_and_brackets() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("[::1"), "::1");
        assert_eq!(host_name(""), "");
    }

    #[test]
    fn status_labels_are_bounded() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
        assert_eq!(status_label(0), "5xx");
    }
}
