//! Upstream reachability for `/readyz`: a background probe of every endpoint, a TCP
//! connect, or for an https upstream a full TLS handshake with its own TLS settings
//! (so an untrusted or expired certificate shows as down, not as up).
//!
//! Ready means: a config is loaded, the first probe round has finished, and at least
//! one upstream has an endpoint that accepts connections (or none are configured).
//! One dead upstream does not make the gateway unready: that would pull every replica
//! out of its Service and turn a partial outage into a total one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::connectors::TransportConnector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::metrics::Metrics;
use crate::snapshot::Live;

/// How often upstreams are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

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
    async fn probe_once(&self) {
        let snap = self.live.load_full();
        let mut results = Vec::with_capacity(snap.upstreams.len());
        for up in &snap.upstreams {
            let mut any = false;
            let limit = up.config().connect_timeout;
            for (i, addr) in up.endpoints().addrs().iter().enumerate() {
                let reached = if up.config().tls.is_some() {
                    let dial = self.transport.new_stream(up.peer(i));
                    matches!(tokio::time::timeout(limit, dial).await, Ok(Ok(_)))
                } else {
                    let connect = tokio::net::TcpStream::connect(*addr);
                    matches!(tokio::time::timeout(limit, connect).await, Ok(Ok(_)))
                };
                if reached {
                    any = true;
                    break;
                }
            }
            self.metrics
                .upstream_up
                .with_label_values(&[up.config().name.as_str()])
                .set(i64::from(any));
            results.push((up.config().name.clone(), any));
        }
        self.health.upstreams.store(Arc::new(results));
        self.health.probed.store(true, Ordering::Release);
    }
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.probe_once().await;
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
