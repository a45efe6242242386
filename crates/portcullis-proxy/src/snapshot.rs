//! The immutable per-request view of the gateway: a validated config plus what it
//! compiles to (each upstream's client, the session seal, rate limiters and gates).
//! Requests load it once from an `ArcSwap`; a reload builds a new one off the hot path
//! and swaps it in, and requests in flight keep theirs.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::connectors::http::Connector;
use portcullis_config::Config;

use crate::metrics::Metrics;
use crate::sessions::SessionSeal;
use crate::traffic::Traffic;
use crate::upstream::federated::FederatedUpstream;
use crate::upstream::http::HttpUpstream;
use crate::upstream::Upstream;

/// The live snapshot, shared by every service of the process.
pub type Live = Arc<ArcSwap<Snapshot>>;

/// What every config version shares: the upstream connection pool and the metrics.
#[derive(Clone)]
pub struct Shared {
    /// Keep-alive connections to upstreams, kept across reloads.
    pub connector: Arc<Connector>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
}

/// Config and compiled state for one config version.
pub struct Snapshot {
    /// The validated config.
    pub config: Config,
    /// One per `config.upstreams`, same order.
    pub upstreams: Vec<Arc<HttpUpstream>>,
    /// One per `config.routes`, same order: the route's federated upstream, if it has
    /// members.
    pub federations: Vec<Option<Arc<FederatedUpstream>>>,
    /// Seals the session ids handed to clients (`sessions.key_file|key_env`, else this
    /// process's random key).
    pub sessions: SessionSeal,
    /// Rate limiters and concurrency gates.
    pub traffic: Traffic,
}

impl Snapshot {
    /// Compiles a validated config. Cheap: no I/O (endpoints were resolved in
    /// validation). Fails only if the system has no randomness for a session key.
    /// Rate limits, gates and breakers unchanged since `previous` keep their state.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        shared: &Shared,
    ) -> Result<Snapshot, String> {
        let sessions = match &config.session_key {
            Some(key) => match &config.previous_session_key {
                Some(previous) => SessionSeal::new(key.bytes()).with_previous(previous.bytes()),
                None => SessionSeal::new(key.bytes()),
            },
            None => SessionSeal::per_process()?,
        }
        .with_ttl(config.session_ttl);
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let before = previous.and_then(|p| {
                    p.upstreams
                        .iter()
                        .find(|o| o.config().name == u.name)
                        .map(|o| &**o)
                });
                Arc::new(HttpUpstream::new(
                    u.clone(),
                    before,
                    shared.connector.clone(),
                    shared.metrics.clone(),
                ))
            })
            .collect::<Vec<_>>();
        let federations = config
            .routes
            .iter()
            .map(|r| {
                let spec = r.federation.clone()?;
                let before = previous.and_then(|p| {
                    p.federations
                        .iter()
                        .flatten()
                        .find(|f| f.route() == r.path)
                        .map(|f| &**f)
                });
                let members = spec
                    .members
                    .iter()
                    .map(|m| upstreams[m.upstream].clone())
                    .collect();
                Some(Arc::new(FederatedUpstream::new(
                    r,
                    spec,
                    members,
                    sessions.clone(),
                    before,
                    shared.metrics.clone(),
                )))
            })
            .collect();
        let traffic = Traffic::build(
            &config,
            previous.map(|p| (&p.config, &p.traffic)),
            &shared.metrics,
        );
        Ok(Snapshot {
            config,
            upstreams,
            federations,
            sessions,
            traffic,
        })
    }

    /// Upstream `i` as the stages see it.
    pub fn upstream(&self, i: usize) -> Arc<dyn Upstream> {
        self.upstreams[i].clone()
    }

    /// What route `r` sends to as a whole: its federated upstream, or its one upstream.
    pub fn route_upstream(&self, r: usize) -> Arc<dyn Upstream> {
        match &self.federations[r] {
            Some(f) => f.clone(),
            None => self.upstream(self.config.routes[r].upstream),
        }
    }

    /// The name route `r`'s sessions, catalog and policy see its upstream by: its
    /// federated upstream's (the route's name), or its one upstream's.
    pub fn route_upstream_name(&self, r: usize) -> &str {
        match &self.federations[r] {
            Some(f) => f.name(),
            None => &self.config.upstreams[self.config.routes[r].upstream].name,
        }
    }

    /// Whether the annotations of route `r`'s tools are trusted: its upstream's
    /// setting, or every member's on a federated route.
    pub fn route_trusts_annotations(&self, r: usize) -> bool {
        let route = &self.config.routes[r];
        match &route.federation {
            Some(f) => f
                .members
                .iter()
                .all(|m| self.config.upstreams[m.upstream].trust_annotations),
            None => self.config.upstreams[route.upstream].trust_annotations,
        }
    }
}

/// Snapshots for the stages' unit tests: a config text (files it names are read
/// relative to `dir`), compiled with fresh metrics and no socket opened.
#[cfg(test)]
pub fn for_test(dir: &std::path::Path, yaml: &str) -> (Snapshot, Arc<Metrics>) {
    let config = portcullis_config::load_str(&dir.join("portcullis.yaml"), yaml)
        .unwrap_or_else(|e| panic!("test config: {e}"));
    let metrics = Arc::new(Metrics::new());
    let shared = Shared {
        connector: Arc::new(Connector::new(None)),
        metrics: metrics.clone(),
    };
    let snap = Snapshot::build(config, None, &shared).expect("snapshot");
    (snap, metrics)
}
