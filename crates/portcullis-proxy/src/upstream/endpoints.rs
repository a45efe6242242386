//! An upstream's endpoint pool (the replicas of one server): which endpoints there are
//! (from the config, or from DNS re-resolved by [`crate::discovery`]), each one's health
//! (active probes by [`crate::health`]), circuit breaker (passive outlier detection) and
//! calls in flight; the choice of endpoint for a new session or a stateless call; and
//! the replica token that names each endpoint inside sealed session ids.
//!
//! An endpoint keeps its state (breaker, health, load) across reloads and
//! re-resolutions while its address stays. One that leaves the DNS answer drains: it
//! takes no new sessions, keeps serving the sessions pinned to it for
//! `discovery.drain`, and is forgotten sooner once it refuses connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora_core::upstreams::peer::HttpPeer;
use portcullis_config::HealthCheck;
use portcullis_traffic::{Breaker, BreakerState, Ticket};
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

/// The token that names an upstream endpoint inside a session id: 8 hex digits of the
/// SHA-256 of its address. Stable across processes and reloads, whatever the order of
/// the endpoints, and it does not spell out the address.
pub fn replica_token(addr: &SocketAddr) -> String {
    let digest = Sha256::digest(addr.to_string().as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// What the health checks found out about one endpoint. Shared by every build of the
/// endpoint, so a reload does not forget it.
#[derive(Default)]
struct Probed {
    /// Whether the last probe reached it (readiness reads this, not the streaks).
    reached: AtomicBool,
    unhealthy: AtomicBool,
    /// Good probes in a row (while unhealthy) or failed ones (while healthy).
    streak: AtomicU32,
}

/// One endpoint of an upstream.
pub struct Endpoint {
    /// Where it is.
    pub addr: SocketAddr,
    token: Arc<str>,
    peer: Arc<HttpPeer>,
    breaker: Option<Arc<Breaker>>,
    load: Arc<AtomicUsize>,
    probed: Arc<Probed>,
}

impl Endpoint {
    /// Its replica token.
    pub fn token(&self) -> &Arc<str> {
        &self.token
    }

    /// How it is dialled (TLS settings included).
    pub fn peer(&self) -> &Arc<HttpPeer> {
        &self.peer
    }

    /// Whether the last health checks found it healthy (new endpoints are, until a
    /// probe says otherwise: DNS lists a pod only once it is ready).
    pub fn healthy(&self) -> bool {
        !self.probed.unhealthy.load(Ordering::Relaxed)
    }

    /// Whether the last health probe reached it (false before the first).
    pub fn reached(&self) -> bool {
        self.probed.reached.load(Ordering::Relaxed)
    }

    /// Calls and streams in flight to it from this process.
    pub fn in_flight(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Counts one call in flight until the returned guard drops.
    pub fn hold(&self) -> InFlight {
        self.load.fetch_add(1, Ordering::Relaxed);
        InFlight(self.load.clone())
    }
}

/// One call in flight to an endpoint (see [`Endpoint::hold`]).
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints at one moment.
#[derive(Default)]
struct Set {
    /// Taking new sessions, in the order they were configured or resolved.
    active: Vec<Arc<Endpoint>>,
    /// Left the DNS answer at the instant given: pinned sessions only.
    draining: Vec<(Arc<Endpoint>, Instant)>,
}

/// A session's endpoint, as [`Endpoints::find`] found it.
pub struct Found {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// It left the DNS answer: a connection it refuses means the session is gone.
    pub draining: bool,
}

/// The endpoints of one upstream.
pub struct Endpoints {
    upstream: String,
    breaker: Option<portcullis_traffic::BreakerSpec>,
    health: HealthCheck,
    drain: Duration,
    /// The DNS names the endpoints come from, with discovery.
    names: Option<Vec<String>>,
    set: ArcSwap<Set>,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Endpoints {
    /// The endpoints of `cfg`, each dialled as `dial` says. With DNS discovery whose
    /// names did not change they are `previous`'s current ones (until the next
    /// resolution); otherwise the config's. An endpoint of `previous` keeps its health,
    /// its load and (when the breaker settings did not change) its breaker.
    pub fn new(
        cfg: &portcullis_config::Upstream,
        previous: Option<&Endpoints>,
        metrics: Arc<Metrics>,
        dial: &dyn Fn(SocketAddr) -> HttpPeer,
    ) -> Endpoints {
        let pool = Endpoints {
            upstream: cfg.name.clone(),
            breaker: cfg.breaker,
            health: cfg.health_check,
            drain: cfg.discovery.as_ref().map_or(Duration::ZERO, |d| d.drain),
            names: cfg.discovery.as_ref().map(|d| d.names.clone()),
            set: ArcSwap::from_pointee(Set::default()),
            next: AtomicUsize::new(0),
            metrics,
        };
        let before = previous.map(|p| p.set.load_full());
        let same_names = previous.is_some_and(|p| p.names == pool.names);
        let (addrs, draining): (Vec<SocketAddr>, Vec<(SocketAddr, Instant)>) =
            match (&cfg.discovery, &before) {
                (Some(_), Some(b)) if same_names => (
                    b.active.iter().map(|e| e.addr).collect(),
                    b.draining.iter().map(|(e, at)| (e.addr, *at)).collect(),
                ),
                _ => (cfg.endpoints.clone(), Vec::new()),
            };
        let carried = |addr: SocketAddr| {
            before
                .as_ref()
                .and_then(|b| b.find_addr(addr))
                .map(|e| pool.rebuilt(&e, dial))
                .unwrap_or_else(|| pool.endpoint(addr, dial))
        };
        let set = Set {
            active: addrs.into_iter().map(|a| Arc::new(carried(a))).collect(),
            draining: draining
                .into_iter()
                .map(|(a, at)| (Arc::new(carried(a)), at))
                .collect(),
        };
        pool.set.store(Arc::new(set));
        pool.report();
        pool
    }

    /// A new endpoint at `addr`.
    fn endpoint(&self, addr: SocketAddr, dial: &dyn Fn(SocketAddr) -> HttpPeer) -> Endpoint {
        let breaker = self
            .breaker
            .map(|spec| Arc::new(Breaker::new(spec, Instant::now())));
        self.with_state(addr, dial, breaker, Arc::default(), Arc::default())
    }

    /// `old` under this config: dialled anew, its state kept.
    fn rebuilt(&self, old: &Endpoint, dial: &dyn Fn(SocketAddr) -> HttpPeer) -> Endpoint {
        let breaker = match old
            .breaker
            .as_ref()
            .filter(|b| Some(b.spec()) == self.breaker)
        {
            Some(b) => Some(b.clone()),
            None => self
                .breaker
                .map(|spec| Arc::new(Breaker::new(spec, Instant::now()))),
        };
        self.with_state(
            old.addr,
            dial,
            breaker,
            old.load.clone(),
            old.probed.clone(),
        )
    }

    /// An endpoint at `addr` with the state given. Registers its breaker's state
    /// series, so dashboards see closed breakers before the first call.
    fn with_state(
        &self,
        addr: SocketAddr,
        dial: &dyn Fn(SocketAddr) -> HttpPeer,
        breaker: Option<Arc<Breaker>>,
        load: Arc<AtomicUsize>,
        probed: Arc<Probed>,
    ) -> Endpoint {
        if let Some(b) = &breaker {
            self.metrics
                .breaker_state
                .with_label_values(&[self.upstream.as_str(), addr.to_string().as_str()])
                .set(b.state(Instant::now()).gauge());
        }
        Endpoint {
            addr,
            token: Arc::from(replica_token(&addr)),
            peer: Arc::new(dial(addr)),
            breaker,
            load,
            probed,
        }
    }

    /// The upstream's name.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Every endpoint taking new sessions.
    pub fn active(&self) -> Vec<Arc<Endpoint>> {
        self.set.load().active.clone()
    }

    /// The endpoint a session's replica token names, if it is still there (taking new
    /// sessions or draining).
    pub fn find(&self, replica: &str) -> Option<Found> {
        let set = self.set.load();
        if let Some(e) = set.active.iter().find(|e| &*e.token == replica) {
            return Some(Found {
                endpoint: e.clone(),
                draining: false,
            });
        }
        set.draining
            .iter()
            .find(|(e, _)| &*e.token == replica)
            .map(|(e, _)| Found {
                endpoint: e.clone(),
                draining: true,
            })
    }

    /// The endpoint for a new session or a stateless call, passing over `tried`: of the
    /// healthy endpoints whose breaker would let a call through, the one with the fewest
    /// calls in flight (ties go round-robin). When there is none, the least loaded of
    /// the others: a probe may be stale, and a breaker that refuses fails the call fast.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let set = self.set.load();
        let n = set.active.len();
        if n == 0 {
            return None;
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let active = &set.active;
        let untried = || {
            (0..n)
                .map(move |k| &active[(first + k) % n])
                .filter(move |e| !tried.contains(&e.addr))
        };
        let ready = |e: &&Arc<Endpoint>| {
            e.healthy() && e.breaker.as_ref().is_none_or(|b| b.would_admit(now))
        };
        untried()
            .filter(ready)
            .min_by_key(|e| e.in_flight())
            .or_else(|| untried().min_by_key(|e| e.in_flight()))
            .cloned()
    }

    /// Lets a call to `e` through its breaker: a ticket to judge it by, or `Err` with
    /// the time until the breaker lets a probe through. A stream (open as long as its
    /// client wants) is never a probe and never judged: it only fails fast while the
    /// breaker is open.
    pub fn admit(&self, e: &Endpoint, stream: bool) -> Result<Option<Ticket>, Duration> {
        let Some(b) = &e.breaker else {
            return Ok(None);
        };
        let now = Instant::now();
        if stream {
            return match b.state(now) {
                BreakerState::Open => Err(Duration::from_secs(1)),
                _ => Ok(None),
            };
        }
        b.admit(now).map(Some)
    }

    /// Reports how a call `e` let through went.
    pub fn judge(&self, e: &Endpoint, ticket: Option<Ticket>, ok: bool) {
        let (Some(ticket), Some(breaker)) = (ticket, &e.breaker) else {
            return;
        };
        let now = Instant::now();
        let moved = if ok {
            ticket.succeeded(now)
        } else {
            ticket.failed(now)
        };
        let endpoint = e.addr.to_string();
        let labels = [self.upstream.as_str(), endpoint.as_str()];
        let state = moved.unwrap_or_else(|| breaker.state(now));
        self.metrics
            .breaker_state
            .with_label_values(&labels)
            .set(state.gauge());
        if let Some(to) = moved {
            let word = match to {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half_open",
            };
            self.metrics
                .breaker_transitions
                .with_label_values(&[labels[0], labels[1], word])
                .inc();
            tracing::warn!(upstream = %self.upstream, %endpoint, state = word, "circuit breaker changed state");
        }
    }

    /// Records one health probe of `e`: `unhealthy_after` failures in a row take it out
    /// of selection, `healthy_after` successes in a row put it back.
    pub fn probed(&self, e: &Endpoint, ok: bool) {
        let p = &e.probed;
        p.reached.store(ok, Ordering::Relaxed);
        let unhealthy = p.unhealthy.load(Ordering::Relaxed);
        // The streak counts probes that argue for a change of state.
        if ok != unhealthy {
            p.streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = p.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if ok {
            self.health.healthy_after
        } else {
            self.health.unhealthy_after
        };
        if streak >= needed {
            p.unhealthy.store(!ok, Ordering::Relaxed);
            p.streak.store(0, Ordering::Relaxed);
            let state = if ok { "healthy" } else { "unhealthy" };
            tracing::warn!(upstream = %self.upstream, endpoint = %e.addr, state, "health checks changed an endpoint's state");
        }
    }

    /// How often endpoints are probed.
    pub fn probe_interval(&self) -> Duration {
        self.health.interval
    }

    /// Takes a fresh DNS answer: addresses new to it join, ones that left it drain,
    /// draining ones that came back rejoin, and drains older than `discovery.drain` end.
    /// Returns whether the endpoints taking new sessions changed.
    pub fn resolved(&self, addrs: &[SocketAddr], dial: &dyn Fn(SocketAddr) -> HttpPeer) -> bool {
        let mut unique: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
        for a in addrs {
            if !unique.contains(a) {
                unique.push(*a);
            }
        }
        let mut changed = false;
        let mut gone: Vec<SocketAddr> = Vec::new();
        // rcu: a concurrent forget() is not undone, nor does it undo this.
        let before = self.set.rcu(|old| {
            let now = Instant::now();
            // Same addresses in another order (round-robin DNS) is no change.
            changed = unique.len() != old.active.len()
                || unique
                    .iter()
                    .any(|a| !old.active.iter().any(|e| e.addr == *a));
            if !changed {
                return Arc::clone(old);
            }
            let active: Vec<Arc<Endpoint>> = unique
                .iter()
                .map(|a| {
                    old.find_addr(*a)
                        .unwrap_or_else(|| Arc::new(self.endpoint(*a, dial)))
                })
                .collect();
            let mut draining: Vec<(Arc<Endpoint>, Instant)> = Vec::new();
            gone.clear();
            for (e, since) in &old.draining {
                if unique.contains(&e.addr) {
                    continue;
                }
                if now.duration_since(*since) < self.drain {
                    draining.push((e.clone(), *since));
                } else {
                    gone.push(e.addr);
                }
            }
            for e in &old.active {
                if !unique.contains(&e.addr) {
                    draining.push((e.clone(), now));
                }
            }
            Arc::new(Set { active, draining })
        });
        if changed {
            let now = self.set.load();
            let joined: Vec<String> = now.active.iter().map(|e| e.addr.to_string()).collect();
            tracing::info!(upstream = %self.upstream, endpoints = %joined.join(","),
                draining = now.draining.len(), "endpoints re-resolved");
        } else {
            // Drains still end on time when the answer stays the same.
            self.end_drains(&before);
        }
        self.forget_series(&gone);
        self.report();
        changed
    }

    /// Ends drains older than `discovery.drain`.
    fn end_drains(&self, seen: &Set) {
        let expired = |since: &Instant| since.elapsed() >= self.drain;
        if !seen.draining.iter().any(|(_, since)| expired(since)) {
            return;
        }
        let mut gone = Vec::new();
        self.set.rcu(|old| {
            gone = old
                .draining
                .iter()
                .filter(|(_, since)| expired(since))
                .map(|(e, _)| e.addr)
                .collect();
            Arc::new(Set {
                active: old.active.clone(),
                draining: old
                    .draining
                    .iter()
                    .filter(|(_, since)| !expired(since))
                    .cloned()
                    .collect(),
            })
        });
        self.forget_series(&gone);
    }

    /// Forgets a draining endpoint that refused a connection: its sessions are gone.
    pub fn forget(&self, e: &Endpoint) {
        self.set.rcu(|old| {
            Arc::new(Set {
                active: old.active.clone(),
                draining: old
                    .draining
                    .iter()
                    .filter(|(d, _)| d.addr != e.addr)
                    .cloned()
                    .collect(),
            })
        });
        if !self.set.load().active.iter().any(|a| a.addr == e.addr) {
            self.forget_series(&[e.addr]);
        }
        self.report();
    }

    /// Removes the breaker series of endpoints that are gone for good, so pods coming
    /// and going do not grow the metrics without end.
    fn forget_series(&self, gone: &[SocketAddr]) {
        if self.breaker.is_none() {
            return;
        }
        for addr in gone {
            let endpoint = addr.to_string();
            let _ = self
                .metrics
                .breaker_state
                .remove_label_values(&[self.upstream.as_str(), endpoint.as_str()]);
            for state in ["closed", "open", "half_open"] {
                let _ = self.metrics.breaker_transitions.remove_label_values(&[
                    self.upstream.as_str(),
                    endpoint.as_str(),
                    state,
                ]);
            }
        }
    }

    /// Sets `portcullis_upstream_endpoints{upstream, state}`.
    pub fn report(&self) {
        let set = self.set.load();
        let healthy = set.active.iter().filter(|e| e.healthy()).count();
        for (state, n) in [
            ("healthy", healthy),
            ("unhealthy", set.active.len() - healthy),
            ("draining", set.draining.len()),
        ] {
            self.metrics
                .upstream_endpoints
                .with_label_values(&[self.upstream.as_str(), state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

impl Set {
    fn find_addr(&self, addr: SocketAddr) -> Option<Arc<Endpoint>> {
        self.active
            .iter()
            .chain(self.draining.iter().map(|(e, _)| e))
            .find(|e| e.addr == addr)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_tokens_are_stable_and_short() {
        let a: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:80".parse().expect("addr");
        assert_eq!(replica_token(&a), replica_token(&a));
        assert_ne!(replica_token(&a), replica_token(&b));
        assert_eq!(replica_token(&a).len(), 8);
        assert!(!replica_token(&a).contains("10.0"));
    }
}
