//! DNS discovery of upstream endpoints (`upstreams.<name>.discovery`): every `refresh`
//! the upstream's `host:port` names are resolved again, off the request path, and the
//! answer becomes its endpoints (new addresses join, vanished ones drain; see
//! [`Endpoints::resolved`]). This is how a Kubernetes headless Service's pods are
//! followed as they come and go.
//!
//! A resolution that fails, or finds no address at all, changes nothing: the endpoints
//! found before stay (the health checks tell whether they still answer), because a DNS
//! hiccup must not empty a pool that works.
//!
//! [`Endpoints::resolved`]: crate::upstream::endpoints::Endpoints::resolved

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::metrics::Metrics;
use crate::snapshot::Live;
use crate::upstream::http::HttpUpstream;

/// The longest the discoverer sleeps, so a reload's new upstreams are resolved soon.
const MAX_NAP: Duration = Duration::from_secs(1);

/// The longest one resolution may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Turns a `host:port` name into addresses.
#[async_trait]
pub trait Resolve: Send + Sync {
    /// Every address `name` resolves to now.
    async fn resolve(&self, name: &str) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system's resolver (getaddrinfo on tokio's blocking pool: `/etc/resolv.conf`,
/// the cluster's DNS, `/etc/hosts`).
pub struct SystemResolver;

#[async_trait]
impl Resolve for SystemResolver {
    async fn resolve(&self, name: &str) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host(name).await?.collect())
    }
}

/// The background service that keeps DNS-discovered endpoints current.
pub struct Discoverer {
    /// The live config.
    pub live: Live,
    /// How names are resolved.
    pub resolver: Arc<dyn Resolve>,
    /// `portcullis_discovery_failures_total`.
    pub metrics: Arc<Metrics>,
}

/// When an upstream's names were last resolved, and which names they were.
type Resolved = (Instant, Vec<String>);

impl Discoverer {
    /// Resolves every upstream whose `refresh` has passed (or whose names changed);
    /// returns when the next one is due.
    async fn resolve_due(&self, last: &mut HashMap<String, Resolved>) -> Instant {
        let snap = self.live.load_full();
        let now = Instant::now();
        let due: Vec<&Arc<HttpUpstream>> = snap
            .upstreams
            .iter()
            .filter(|up| {
                let Some(d) = &up.config().discovery else {
                    return false;
                };
                last.get(&up.config().name).is_none_or(|(t, names)| {
                    now.duration_since(*t) >= d.refresh || *names != d.names
                })
            })
            .collect();
        futures::future::join_all(due.iter().map(|up| self.refresh(up))).await;
        for up in &due {
            if let Some(d) = &up.config().discovery {
                last.insert(up.config().name.clone(), (now, d.names.clone()));
            }
        }
        last.retain(|name, _| snap.upstreams.iter().any(|u| &u.config().name == name));
        snap.upstreams
            .iter()
            .filter_map(|up| {
                let d = up.config().discovery.as_ref()?;
                Some(last.get(&up.config().name).map_or(now, |(t, _)| *t) + d.refresh)
            })
            .min()
            .unwrap_or(now + MAX_NAP)
            .min(Instant::now() + MAX_NAP)
    }

    /// Resolves `up`'s names and hands the answer to its endpoints.
    async fn refresh(&self, up: &HttpUpstream) {
        let Some(d) = &up.config().discovery else {
            return;
        };
        let answers = futures::future::join_all(d.names.iter().map(|n| async move {
            match tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.resolve(n)).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "lookup timed out",
                )),
            }
        }))
        .await;
        let mut addrs = Vec::new();
        for (name, answer) in d.names.iter().zip(answers) {
            match answer {
                Ok(found) => addrs.extend(found),
                Err(e) => {
                    self.failed(up, &format!("cannot resolve `{name}`: {e}"));
                    return;
                }
            }
        }
        if addrs.is_empty() {
            self.failed(up, "the names resolve to no address");
            return;
        }
        up.resolved(&addrs);
    }

    fn failed(&self, up: &HttpUpstream, why: &str) {
        self.metrics
            .discovery_failures
            .with_label_values(&[up.config().name.as_str()])
            .inc();
        tracing::warn!(upstream = %up.config().name, error = %why,
            "DNS discovery failed; keeping the endpoints found before");
    }
}

#[async_trait]
impl BackgroundService for Discoverer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = HashMap::new();
        loop {
            let next = self.resolve_due(&mut last).await;
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
