//! Streamable HTTP to an upstream over pingora's HTTP/1 connector and its keep-alive
//! pool: the first implementation of [`Upstream`].
//!
//! A call is delivered at most once. A request is written again on a fresh connection
//! only when it provably did not reach the upstream: writing its head on a pooled
//! connection failed (pingora's pool has already dropped connections it found closed).
//! Once the head is written, any failure is the client's error to see, never a retry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora_core::connectors::http::v1::Connector;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};

use super::endpoints::Endpoints;
use super::{Answer, Failure, Inbound, Outbound, Served, Upstream, Wait};
use crate::metrics::Metrics;

/// One upstream reached over HTTP/1.1.
pub struct HttpUpstream {
    config: portcullis_config::Upstream,
    endpoints: Endpoints,
    /// One per endpoint, same order.
    peers: Vec<Arc<HttpPeer>>,
    connector: Arc<Connector>,
    metrics: Arc<Metrics>,
}

impl HttpUpstream {
    /// An upstream for `config`, keeping the breaker state of `previous` (the same
    /// upstream in the config version before).
    pub fn new(
        config: portcullis_config::Upstream,
        previous: Option<&HttpUpstream>,
        connector: Arc<Connector>,
        metrics: Arc<Metrics>,
    ) -> HttpUpstream {
        let peers = config
            .endpoints
            .iter()
            .map(|addr| {
                let mut peer = HttpPeer::new(*addr, false, String::new());
                peer.options.connection_timeout = Some(config.connect_timeout);
                peer.options.idle_timeout = Some(config.idle_timeout);
                Arc::new(peer)
            })
            .collect();
        HttpUpstream {
            endpoints: Endpoints::new(&config, previous.map(|p| &p.endpoints), metrics.clone()),
            config,
            peers,
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

    async fn exchange(
        &self,
        method: Method,
        out: Outbound<'_>,
        body: Option<Bytes>,
    ) -> Result<Inbound, Failure> {
        let idx = match out.session {
            Some(pin) => self
                .endpoints
                .find(pin.replica)
                .ok_or(Failure::UnknownSession)?,
            None => self.endpoints.pick(),
        };
        let ticket = self
            .endpoints
            .admit(idx, method == Method::GET)
            .map_err(|retry_after| Failure::CircuitOpen { retry_after })?;
        let req = super::request::head(&self.config, &method, &out, body.as_ref().map(Bytes::len))
            .map_err(|e| Failure::BadRequest(e.to_string()))?;
        let read_timeout = match out.wait {
            Wait::Answer => Some(self.config.read_timeout),
            Wait::Stream => None,
        };
        let peer = &self.peers[idx];
        let sent = Instant::now();
        let sending = send(
            &self.connector,
            peer,
            req,
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
                    self.endpoints.judge(idx, ticket, false);
                    return Err(Failure::Deadline { after: sent.elapsed() });
                }
            },
        };
        let us = match result {
            Ok(us) => us,
            Err(e) => {
                self.endpoints.judge(idx, ticket, false);
                return Err(classify(&e));
            }
        };
        self.metrics
            .upstream_latency
            .with_label_values(&[self.config.name.as_str()])
            .observe(sent.elapsed().as_secs_f64());
        let Some(status) = us.resp_header().map(|h| h.status.as_u16()) else {
            self.endpoints.judge(idx, ticket, false);
            return Err(classify(&Error::explain(
                ErrorType::InvalidHTTPHeader,
                "no response header",
            )));
        };
        // The endpoint answered: a server error counts against it, anything else for it.
        self.endpoints.judge(idx, ticket, status < 500);
        Ok(Inbound {
            answer: Box::new(HttpAnswer {
                session: us,
                connector: self.connector.clone(),
                peer: peer.clone(),
                idle_timeout: self.config.idle_timeout,
            }),
            served: Served {
                endpoint: self.endpoints.addrs()[idx],
                replica: self.endpoints.token(idx).clone(),
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

/// An answer arriving on a pooled HTTP/1 connection.
struct HttpAnswer {
    session: HttpSession,
    connector: Arc<Connector>,
    peer: Arc<HttpPeer>,
    idle_timeout: Duration,
}

#[async_trait]
impl Answer for HttpAnswer {
    fn head(&self) -> &ResponseHeader {
        // `exchange` only builds an answer whose response head was read.
        static NONE: std::sync::OnceLock<ResponseHeader> = std::sync::OnceLock::new();
        self.session
            .resp_header()
            .unwrap_or_else(|| NONE.get_or_init(|| http::Response::new(()).into_parts().0.into()))
    }

    async fn chunk(&mut self) -> Result<Option<Bytes>, Failure> {
        self.session
            .read_body_bytes()
            .await
            .map_err(|e| classify(&e))
    }

    async fn release(self: Box<Self>) {
        let HttpAnswer {
            session,
            connector,
            peer,
            idle_timeout,
        } = *self;
        connector
            .release_http_session(session, &*peer, Some(idle_timeout))
            .await;
    }
}

/// Dials (or reuses) a connection and sends the request. The head is written again on
/// a fresh connection only when writing it on a pooled one failed (see the module docs).
async fn send(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    body: Option<&Bytes>,
    read_timeout: Option<Duration>,
    write_timeout: Duration,
) -> Result<HttpSession, Box<Error>> {
    let mut req = Some(Box::new(req));
    loop {
        let (mut us, reused) = connector.get_http_session(peer).await?;
        us.read_timeout = read_timeout;
        us.write_timeout = Some(write_timeout);
        let Some(head) = req.take() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request already sent",
            ));
        };
        // Only a pooled connection can be retried, so only then is a copy kept.
        let retry_copy = reused.then(|| head.clone());
        if let Err(e) = us.write_request_header(head).await {
            if retry_copy.is_some() {
                req = retry_copy;
                continue;
            }
            return Err(e);
        }
        if let Some(b) = body {
            us.write_body(b).await?;
        }
        us.finish_body().await?;
        loop {
            us.read_response().await?;
            match us.get_status() {
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
        ConnectTimedout => broken("connect_timeout", "connect timed out", true),
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
