//! Active health checks of every upstream endpoint, for endpoint selection and for
//! `/readyz`: a TCP connect, or for an https upstream a full TLS handshake with its own
//! TLS settings (so an untrusted or expired certificate shows as down, not as up). Each
//! upstream's endpoints are probed every `health_check.interval`, all at once; the
//! results move endpoints in and out of selection ([`Endpoints::probed`]).
//!
//! Ready means: a config is loaded, the first probe round has finished, and at least
//! one upstream has an endpoint that accepts connections (or none are configured).
//! One dead upstream does not make the gateway unready: that would pull every replica
//! out of its Service and turn a partial outage into a total one.
//!
//! [`Endpoints::probed`]: crate::upstream::endpoints::Endpoints::probed

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::connectors::TransportConnector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::metrics::Metrics;
use crate::snapshot::Live;
use crate::upstream::http::HttpUpstream;

/// The longest the prober sleeps, so a reload's new upstreams are probed soon.
const MAX_NAP: Duration = Duration::from_secs(1);

/// The latest probe results.
#[derive(Default)]
pub struct Health {
    probed: AtomicBool,
    upstreams: ArcSwap<Vec<(String, bool)>>,
}

impl Health {
    /// Each upstream's name and whether an endpoint accepted the last probe.
    pub fn upstreams(&self) -> Arc<Vec<(String, bool)>> {
        self.upstreams.load_full()
    }

    /// Whether the gateway should receive traffic (see the module docs).
    pub fn ready(&self) -> bool {
        if !self.probed.load(Ordering::Acquire) {
            return false;
        }
        let ups = self.upstreams.load();
        ups.is_empty() || ups.iter().any(|(_, up)| *up)
    }
}

/// The background service that keeps [`Health`] current.
pub struct Prober {
    /// The live config.
    pub live: Live,
    /// Where results go.
    pub health: Arc<Health>,
    /// `portcullis_upstream_up`.
    pub metrics: Arc<Metrics>,
    /// Dials probes without pooling (a probe must not reuse a pooled connection, or it
    /// would prove nothing).
    pub transport: TransportConnector,
}

impl Prober {
    /// Probes every upstream whose interval has passed since `last` says it was probed
    /// (and records when); returns when the next one is due.
    async fn probe_due(&self, last: &mut HashMap<String, Probed>) -> Instant {
        let snap = self.live.load_full();
        let now = Instant::now();
        let due: Vec<_> = snap
            .upstreams
            .iter()
            .filter(|up| {
                // Endpoints that changed (a DNS answer, a reload) are probed at once.
                last.get(&up.config().name).is_none_or(|(t, addrs)| {
                    now.duration_since(*t) >= up.endpoints().probe_interval()
                        || *addrs != active_addrs(up)
                })
            })
            .collect();
        futures::future::join_all(due.iter().map(|up| self.probe(up))).await;
        for up in &due {
            last.insert(up.config().name.clone(), (now, active_addrs(up)));
        }
        last.retain(|name, _| snap.upstreams.iter().any(|u| &u.config().name == name));
        let results: Vec<(String, bool)> = snap
            .upstreams
            .iter()
            .map(|up| {
                // What the probes found, not the streaks: an endpoint is healthy
                // until proven otherwise, but an upstream is up only once reached.
                let any = up.endpoints().active().iter().any(|e| e.reached());
                self.metrics
                    .upstream_up
                    .with_label_values(&[up.config().name.as_str()])
                    .set(i64::from(any));
                (up.config().name.clone(), any)
            })
            .collect();
        self.health.upstreams.store(Arc::new(results));
        self.health.probed.store(true, Ordering::Release);
        snap.upstreams
            .iter()
            .map(|up| {
                last.get(&up.config().name).map_or(now, |(t, _)| *t)
                    + up.endpoints().probe_interval()
            })
            .min()
            .unwrap_or(now + MAX_NAP)
            .min(Instant::now() + MAX_NAP)
    }

    /// Probes every endpoint of `up` at once and records the results.
    async fn probe(&self, up: &HttpUpstream) {
        let limit = up.config().connect_timeout;
        let tls = up.config().tls.is_some();
        let endpoints = up.endpoints().active();
        let reached = futures::future::join_all(endpoints.iter().map(|e| async move {
            if tls {
                let dial = self.transport.new_stream(&**e.peer());
                matches!(tokio::time::timeout(limit, dial).await, Ok(Ok(_)))
            } else {
                let connect = tokio::net::TcpStream::connect(e.addr);
                matches!(tokio::time::timeout(limit, connect).await, Ok(Ok(_)))
            }
        }))
        .await;
        for (e, ok) in endpoints.iter().zip(reached) {
            up.endpoints().probed(e, ok);
        }
        up.endpoints().report();
    }
}

/// When an upstream was last probed, and which endpoints it had then.
type Probed = (Instant, Vec<SocketAddr>);

/// The upstream's endpoints, sorted (an answer in another order is the same set).
fn active_addrs(up: &HttpUpstream) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = up.endpoints().active().iter().map(|e| e.addr).collect();
    addrs.sort_unstable();
    addrs
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = HashMap::new();
        loop {
            let next = self.probe_due(&mut last).await;
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
