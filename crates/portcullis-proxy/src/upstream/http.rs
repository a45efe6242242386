//! Streamable HTTP to an upstream over pingora's HTTP connector and its keep-alive
//! pools: the first implementation of [`Upstream`]. Plain HTTP/1.1, https (rustls:
//! the system roots or a CA file, SNI and hostname verification, an optional client
//! certificate) and HTTP/2 (by ALPN over https, or h2c with prior knowledge) are peer
//! settings of the same connector, so the stages never know which one carried a call.
//!
//! A call is delivered at most once. A request is written again on a fresh connection
//! only when it provably did not reach the upstream: writing its head on a pooled
//! connection failed (pingora's pool has already dropped connections it found closed),
//! or, for a new session or a stateless call, no connection to the chosen endpoint could
//! be made (it then goes to the next endpoint). Once the head is written, any failure is
//! the client's error to see, never a retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use portcullis_config::Http2;
use portcullis_mcp::ProtocolVersion;

use super::endpoints::{Endpoints, InFlight};
use super::failover::{self, Moves};
use super::{Answer, Failure, Inbound, Outbound, OwnedPin, Sender, Served, Upstream, Wait};
use crate::metrics::Metrics;

/// HTTP/2 streams one upstream connection carries at once before another is opened.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// One upstream reached over HTTP (1.1 or 2, plain or TLS).
pub struct HttpUpstream {
    config: portcullis_config::Upstream,
    endpoints: Endpoints,
    /// Sessions moved off endpoints that are gone (`session_failover`).
    moves: Arc<Moves>,
    /// Held while a session is moved, so concurrent requests move it once.
    failing_over: tokio::sync::Mutex<()>,
    connector: Arc<Connector>,
    metrics: Arc<Metrics>,
}

impl HttpUpstream {
    /// An upstream for `config`, keeping the endpoints' state of `previous` (the same
    /// upstream in the config version before).
    pub fn new(
        config: portcullis_config::Upstream,
        previous: Option<&HttpUpstream>,
        connector: Arc<Connector>,
        metrics: Arc<Metrics>,
    ) -> HttpUpstream {
        let endpoints = Endpoints::new(
            &config,
            previous.map(|p| &p.endpoints),
            metrics.clone(),
            &|addr| peer(&config, addr),
        );
        HttpUpstream {
            endpoints,
            moves: previous.map_or_else(Default::default, |p| p.moves.clone()),
            failing_over: tokio::sync::Mutex::new(()),
            config,
            connector,
            metrics,
        }
    }

    /// The config it was built from.
    pub fn config(&self) -> &portcullis_config::Upstream {
        &self.config
    }

    /// Its endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Takes a fresh DNS answer for its names (see [`Endpoints::resolved`]).
    pub fn resolved(&self, addrs: &[std::net::SocketAddr]) -> bool {
        self.endpoints
            .resolved(addrs, &|addr| peer(&self.config, addr))
    }

    fn count(&self, failure: &Failure) {
        if let Some(kind) = failure.kind() {
            self.metrics
                .upstream_errors
                .with_label_values(&[self.config.name.as_str(), kind])
                .inc();
        }
    }

    /// One exchange. A session that moved (`session_failover`) goes where it went; one
    /// whose endpoint is gone moves now, where the upstream allows it.
    async fn exchange(
        &self,
        method: Method,
        out: Outbound<'_>,
        body: Option<Bytes>,
    ) -> Result<Inbound, Failure> {
        // The gateway's own background messages (a cancellation, say) do not open
        // sessions.
        let failover =
            self.config.reinitialize_lost_sessions && matches!(out.sender, Sender::Client(_));
        let Some(named) = out.session.filter(|_| failover) else {
            return self.exchange_at(method, out, body).await;
        };
        let named = OwnedPin {
            replica: named.replica.into(),
            id: named.id.to_vec(),
        };
        let went = self.moves.get(&named);
        let now = went.as_ref().map_or(out, |to| Outbound {
            session: Some(to.pin()),
            ..out
        });
        if method == Method::DELETE {
            // Ending a moved session ends the session it moved to.
            if went.is_some() {
                self.moves.forget(&named);
            }
            return self.exchange_at(method, now, body).await;
        }
        match self.exchange_at(method.clone(), now, body.clone()).await {
            Err(Failure::UnknownSession) => {
                // One failover at a time: requests in flight on the same lost session
                // find the move the first one made.
                let _one = self.failing_over.lock().await;
                if let Some(to) = self.moves.get(&named).filter(|to| {
                    went.as_ref()
                        .is_none_or(|w| w.id != to.id || w.replica != to.replica)
                }) {
                    let moved = Outbound {
                        session: Some(to.pin()),
                        ..out
                    };
                    let mut inbound = self.exchange_at(method, moved, body).await?;
                    inbound.served.moved = Some(to);
                    return Ok(inbound);
                }
                // Nothing was sent: the request goes to a new session, once.
                let version = match out.sender {
                    Sender::Client(c) => c
                        .head
                        .headers
                        .get("mcp-protocol-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or(ProtocolVersion::ASSUMED_WITHOUT_HEADER.as_str())
                        .to_owned(),
                    Sender::Gateway { version, .. } => version.to_owned(),
                };
                let to = failover::reinitialize(self, &version).await?;
                self.moves.put(&named, &to);
                self.metrics
                    .session_failovers
                    .with_label_values(&[self.config.name.as_str()])
                    .inc();
                tracing::info!(upstream = %self.config.name, "a session whose endpoint is gone moved to a new session");
                let moved = Outbound {
                    session: Some(to.pin()),
                    ..out
                };
                let mut inbound = self.exchange_at(method, moved, body).await?;
                inbound.served.moved = Some(to);
                Ok(inbound)
            }
            Ok(mut inbound) => {
                inbound.served.moved = went;
                Ok(inbound)
            }
            Err(e) => Err(e),
        }
    }

    async fn exchange_at(
        &self,
        method: Method,
        out: Outbound<'_>,
        body: Option<Bytes>,
    ) -> Result<Inbound, Failure> {
        let pinned = match out.session {
            Some(pin) => Some(
                self.endpoints
                    .find(pin.replica)
                    .ok_or(Failure::UnknownSession)?,
            ),
            None => None,
        };
        let build =
            || super::request::head(&self.config, &method, &out, body.as_ref().map(Bytes::len));
        let read_timeout = match out.wait {
            Wait::Answer => Some(self.config.read_timeout),
            Wait::Stream => None,
        };
        let stream = method == Method::GET;
        // A pinned session stays with its endpoint. A new session or a stateless call
        // moves on from an endpoint it could not connect to (nothing was sent, so it
        // cannot arrive twice) or whose breaker is open, trying each endpoint once.
        let sent = Instant::now();
        let mut tried = Vec::new();
        let mut failure: Option<Failure> = None;
        let (ep, ticket, us, load) = loop {
            let next = match &pinned {
                Some(found) if tried.is_empty() => Some(found.endpoint.clone()),
                Some(_) => None,
                None => self.endpoints.pick(&tried),
            };
            let Some(ep) = next else {
                return Err(failure.unwrap_or(Failure::Broken {
                    kind: "no_endpoint",
                    detail: "no endpoint to connect to",
                    timeout: false,
                }));
            };
            // The failure moved on from is counted; the last one is the caller's.
            if let Some(f) = failure.take() {
                self.count(&f);
            }
            tried.push(ep.addr);
            let ticket = match self.endpoints.admit(&ep, stream) {
                Ok(t) => t,
                Err(retry_after) => {
                    failure = Some(Failure::CircuitOpen { retry_after });
                    continue;
                }
            };
            let load = ep.hold();
            let req = build().map_err(|e| Failure::BadRequest(e.to_string()))?;
            let sending = send(
                &self.connector,
                ep.peer(),
                (req, &build),
                body.as_ref(),
                read_timeout,
                self.config.write_timeout,
            );
            let result = match out.answer_by {
                None => sending.await,
                Some(at) => tokio::select! {
                    r = sending => r,
                    _ = tokio::time::sleep_until(at) => {
                        // An endpoint that never answered in time is failing.
                        self.endpoints.judge(&ep, ticket, false);
                        return Err(Failure::Deadline { after: sent.elapsed() });
                    }
                },
            };
            match result {
                Ok(us) => break (ep, ticket, us, load),
                Err(Unsent::NotConnected(e)) => {
                    self.endpoints.judge(&ep, ticket, false);
                    if pinned.as_ref().is_some_and(|f| f.draining) {
                        // It left the DNS answer and now refuses: its sessions are gone.
                        self.endpoints.forget(&ep);
                        return Err(Failure::UnknownSession);
                    }
                    tracing::debug!(upstream = %self.config.name, endpoint = %ep.addr,
                        error = %e, "endpoint unreachable; trying the next one");
                    failure = Some(classify(&e));
                }
                Err(Unsent::Failed(e)) => {
                    self.endpoints.judge(&ep, ticket, false);
                    return Err(classify(&e));
                }
            }
        };
        self.metrics
            .upstream_latency
            .with_label_values(&[self.config.name.as_str()])
            .observe(sent.elapsed().as_secs_f64());
        let Some(status) = us.response_header().map(|h| h.status.as_u16()) else {
            self.endpoints.judge(&ep, ticket, false);
            return Err(classify(&Error::explain(
                ErrorType::InvalidHTTPHeader,
                "no response header",
            )));
        };
        // The endpoint answered: a server error counts against it, anything else for it.
        self.endpoints.judge(&ep, ticket, status < 500);
        Ok(Inbound {
            answer: Box::new(HttpAnswer {
                session: us,
                connector: self.connector.clone(),
                peer: ep.peer().clone(),
                idle_timeout: self.config.idle_timeout,
                _load: load,
            }),
            served: Served {
                endpoint: Some(ep.addr),
                replica: ep.token().clone(),
                moved: None,
            },
        })
    }
}

#[async_trait]
impl Upstream for HttpUpstream {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn send(&self, out: Outbound<'_>, body: Bytes) -> Result<Inbound, Failure> {
        self.exchange(Method::POST, out, Some(body)).await
    }

    async fn open_stream(&self, out: Outbound<'_>) -> Result<Inbound, Failure> {
        self.exchange(Method::GET, out, None).await
    }

    async fn end_session(&self, out: Outbound<'_>) -> Result<Inbound, Failure> {
        self.exchange(Method::DELETE, out, None).await
    }
}

/// How one endpoint of `config` is dialled: TLS settings, ALPN, timeouts.
fn peer(config: &portcullis_config::Upstream, addr: std::net::SocketAddr) -> HttpPeer {
    let sni = config
        .tls
        .as_ref()
        .map_or_else(String::new, |t| t.server_name.clone());
    let mut peer = HttpPeer::new(addr, config.tls.is_some(), sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(config.connect_timeout);
    o.idle_timeout = Some(config.idle_timeout);
    o.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    o.alpn = match (config.tls.is_some(), config.http2) {
        (_, Http2::Never) | (false, Http2::Auto) => ALPN::H1,
        (true, Http2::Auto) => ALPN::H2H1,
        (_, Http2::Always) => ALPN::H2,
    };
    // pingora's pool key covers the address, SNI, verify flags and client certificate
    // serial, not the CAs or ALPN: connections checked under other trust settings (a
    // CA removed on reload, another upstream on the same address) must not be reused.
    peer.group_key = trust_key(config);
    let o = &mut peer.options;
    if let Some(tls) = &config.tls {
        o.verify_cert = tls.verify;
        o.verify_hostname = tls.verify;
        if let Some(ca) = &tls.ca {
            // The config checked every certificate parses, so parse_x509 does not fail.
            let cas: Vec<WrappedX509> = ca
                .iter()
                .map(|der| WrappedX509::new(der.clone(), parse_x509))
                .collect();
            o.ca = Some(Arc::from(cas));
        }
        if let Some(id) = &tls.client {
            peer.client_cert_key = Some(Arc::new(CertKey::new(
                id.chain_der.clone(),
                id.key_der.clone(),
            )));
        }
    }
    peer
}

/// A digest of everything that decides whether a pooled connection may serve `config`.
fn trust_key(config: &portcullis_config::Upstream) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.http2.hash(&mut h);
    if let Some(tls) = &config.tls {
        tls.server_name.hash(&mut h);
        tls.verify.hash(&mut h);
        tls.ca.hash(&mut h);
        if let Some(id) = &tls.client {
            id.chain_der.hash(&mut h);
            id.key_der.hash(&mut h);
        }
    }
    h.finish()
}

/// An answer arriving on a pooled HTTP/1 connection or an HTTP/2 stream.
struct HttpAnswer {
    session: HttpSession,
    connector: Arc<Connector>,
    peer: Arc<HttpPeer>,
    idle_timeout: Duration,
    /// Counts the answer as in flight to its endpoint until it is released or dropped.
    _load: InFlight,
}

#[async_trait]
impl Answer for HttpAnswer {
    fn head(&self) -> &ResponseHeader {
        // `exchange` only builds an answer whose response head was read.
        static NONE: std::sync::OnceLock<ResponseHeader> = std::sync::OnceLock::new();
        self.session
            .response_header()
            .unwrap_or_else(|| NONE.get_or_init(|| http::Response::new(()).into_parts().0.into()))
    }

    async fn chunk(&mut self) -> Result<Option<Bytes>, Failure> {
        self.session
            .read_response_body()
            .await
            .map_err(|e| classify(&e))
    }

    async fn release(self: Box<Self>) {
        let HttpAnswer {
            session,
            connector,
            peer,
            idle_timeout,
            _load,
        } = *self;
        connector
            .release_http_session(session, &*peer, Some(idle_timeout))
            .await;
    }
}

/// Dials (or reuses) a connection and sends the request. The head is written again on
/// a fresh connection (built again by `rebuild`) only when writing it on a pooled one
/// failed (see the module docs).
/// Why [`send`] failed: before a connection was made (connect or TLS handshake: the
/// request went nowhere), or after.
enum Unsent {
    NotConnected(Box<Error>),
    Failed(Box<Error>),
}

async fn send(
    connector: &Connector,
    peer: &HttpPeer,
    request: (
        RequestHeader,
        &(dyn Fn() -> pingora_error::Result<RequestHeader> + Sync),
    ),
    body: Option<&Bytes>,
    read_timeout: Option<Duration>,
    write_timeout: Duration,
) -> Result<HttpSession, Unsent> {
    let mut reached = false;
    exchange_on(
        connector,
        peer,
        request,
        body,
        (read_timeout, write_timeout),
        &mut reached,
    )
    .await
    .map_err(|e| {
        if reached {
            Unsent::Failed(e)
        } else {
            Unsent::NotConnected(e)
        }
    })
}

/// `send`'s work; `reached` is set once a connection to the upstream exists.
async fn exchange_on(
    connector: &Connector,
    peer: &HttpPeer,
    (req, rebuild): (
        RequestHeader,
        &(dyn Fn() -> pingora_error::Result<RequestHeader> + Sync),
    ),
    body: Option<&Bytes>,
    (read_timeout, write_timeout): (Option<Duration>, Duration),
    reached: &mut bool,
) -> Result<HttpSession, Box<Error>> {
    let mut req = Some(Box::new(req));
    loop {
        *reached = false;
        let (mut us, reused) = connector.get_http_session(peer).await?;
        *reached = true;
        us.set_read_timeout(read_timeout);
        us.set_write_timeout(Some(write_timeout));
        let Some(head) = req.take() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request already sent",
            ));
        };
        if let Err(e) = us.write_request_header(head).await {
            // Only a pooled connection is retried; the head is built again for it
            // (rare), rather than copied for every request just in case.
            if reused {
                req = Some(Box::new(rebuild()?));
                continue;
            }
            return Err(e);
        }
        match body {
            Some(b) => us.write_request_body(b.clone(), true).await?,
            None => us.finish_request_body().await?,
        }
        if matches!(us, HttpSession::H1(_)) && body.is_some() {
            us.finish_request_body().await?;
        }
        loop {
            us.read_response_header().await?;
            match us.response_header().map(|h| h.status) {
                Some(s) if s.is_informational() && s.as_u16() != 101 => continue,
                _ => return Ok(us),
            }
        }
    }
}

/// What a pingora error means for the client and the metrics.
pub(crate) fn classify(e: &Error) -> Failure {
    use ErrorType::*;
    let broken = |kind, detail, timeout| Failure::Broken {
        kind,
        detail,
        timeout,
    };
    match e.etype() {
        ConnectTimedout | TLSHandshakeTimedout => {
            broken("connect_timeout", "connect timed out", true)
        }
        TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup => broken(
            "tls",
            "TLS handshake failed: its certificate is not trusted or not for this host, or it refused ours",
            false,
        ),
        ReadTimedout | WriteTimedout => broken("timeout", "timed out", true),
        ConnectRefused => broken("connect_refused", "connection refused", false),
        ConnectNoRoute | ConnectError | BindError | SocketError => {
            broken("connect_error", "cannot connect", false)
        }
        ConnectionClosed => broken(
            "reset",
            "connection closed before the response ended",
            false,
        ),
        InvalidHTTPHeader | H1Error | InvalidH2 | H2Error => {
            broken("protocol", "invalid HTTP response", false)
        }
        ReadError | WriteError => broken("reset", "connection failed", false),
        _ => broken("other", "exchange failed", false),
    }
}
