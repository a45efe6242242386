//! The immutable per-request view of the gateway: a validated config plus what it
//! compiles to (upstream peers). Requests load it once from an `ArcSwap`; a reload
//! builds a new one off the hot path and swaps it in, and requests in flight keep theirs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::upstreams::peer::HttpPeer;
use portcullis_config::{Config, Upstream};

use crate::sessions::{replica_token, SessionSeal};
use crate::traffic::Traffic;
use portcullis_traffic::Breaker;

/// The live snapshot, shared by every service of the process.
pub type Live = Arc<ArcSwap<Snapshot>>;

/// Config and compiled state for one config version.
pub struct Snapshot {
    /// The validated config.
    pub config: Config,
    /// One per `config.upstreams`, same order.
    pub upstreams: Vec<UpstreamRuntime>,
    /// Seals the session ids handed to clients (`sessions.key_file|key_env`, else this
    /// process's random key).
    pub sessions: SessionSeal,
    /// Rate limiters and concurrency gates.
    pub traffic: Traffic,
}

/// An upstream ready to dial.
pub struct UpstreamRuntime {
    /// The config it was built from.
    pub config: Upstream,
    /// One peer per endpoint, same order as `config.endpoints`.
    pub peers: Vec<HttpPeer>,
    /// Each endpoint's token in sealed session ids, same order.
    pub replica_tokens: Vec<String>,
    /// Each endpoint's circuit breaker, same order, when `breaker` is configured.
    pub breakers: Vec<Arc<Breaker>>,
    next: AtomicUsize,
}

impl Snapshot {
    /// Compiles a validated config. Cheap: no I/O (endpoints were resolved in
    /// validation). Fails only if the system has no randomness for a session key.
    /// Rate limits and gates unchanged since `previous` keep their state.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, String> {
        let sessions = match &config.session_key {
            Some(key) => match &config.previous_session_key {
                Some(previous) => SessionSeal::new(key.bytes()).with_previous(previous.bytes()),
                None => SessionSeal::new(key.bytes()),
            },
            None => SessionSeal::per_process()?,
        };
        let now = std::time::Instant::now();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| UpstreamRuntime {
                breakers: u.breaker.map_or_else(Vec::new, |spec| {
                    u.endpoints
                        .iter()
                        .map(|addr| {
                            // An unchanged breaker keeps its state across a reload.
                            previous
                                .and_then(|p| p.upstreams.iter().find(|o| o.config.name == u.name))
                                .and_then(|o| {
                                    let i = o.config.endpoints.iter().position(|e| e == addr)?;
                                    o.breakers.get(i).cloned()
                                })
                                .filter(|b| b.spec() == spec)
                                .unwrap_or_else(|| Arc::new(Breaker::new(spec, now)))
                        })
                        .collect()
                }),
                peers: u
                    .endpoints
                    .iter()
                    .map(|addr| {
                        let mut peer = HttpPeer::new(*addr, false, String::new());
                        peer.options.connection_timeout = Some(u.connect_timeout);
                        peer.options.idle_timeout = Some(u.idle_timeout);
                        peer
                    })
                    .collect(),
                replica_tokens: u.endpoints.iter().map(replica_token).collect(),
                config: u.clone(),
                next: AtomicUsize::new(0),
            })
            .collect();
        let traffic = Traffic::build(&config, previous.map(|p| (&p.config, &p.traffic)));
        Ok(Snapshot {
            config,
            upstreams,
            sessions,
            traffic,
        })
    }
}

impl UpstreamRuntime {
    /// The next endpoint, round-robin, passing over endpoints whose breaker would not
    /// let a call through (open, or half-open with every probe place taken); when no
    /// endpoint would, the next one anyway: its breaker then fails the call fast.
    pub fn pick(&self) -> usize {
        let n = self.peers.len();
        if n <= 1 {
            return 0;
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        if self.breakers.is_empty() {
            return first;
        }
        let now = std::time::Instant::now();
        (0..n)
            .map(|k| (first + k) % n)
            .find(|&i| self.breakers[i].would_admit(now))
            .unwrap_or(first)
    }

    /// The breaker of endpoint `i`, if breakers are configured.
    pub fn breaker(&self, i: usize) -> Option<&Arc<Breaker>> {
        self.breakers.get(i)
    }
}
