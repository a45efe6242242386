//! An upstream's endpoints (replicas of one server): round-robin choice for new
//! sessions, the replica token that names each inside sealed session ids, and each
//! endpoint's circuit breaker with the metrics it reports. Built per config version;
//! an unchanged breaker keeps its state across a reload.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The endpoints of one upstream.
pub struct Endpoints {
    upstream: String,
    addrs: Vec<SocketAddr>,
    tokens: Vec<Arc<str>>,
    /// Same order as `addrs`; empty when no breaker is configured.
    breakers: Vec<Arc<Breaker>>,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Endpoints {
    /// The endpoints of `cfg`, keeping the breakers of `previous` whose endpoint and
    /// settings did not change. Registers each breaker's state series, so dashboards see
    /// closed breakers before the first call.
    pub fn new(
        cfg: &portcullis_config::Upstream,
        previous: Option<&Endpoints>,
        metrics: Arc<Metrics>,
    ) -> Endpoints {
        let now = Instant::now();
        let breakers: Vec<Arc<Breaker>> = cfg.breaker.map_or_else(Vec::new, |spec| {
            cfg.endpoints
                .iter()
                .map(|addr| {
                    previous
                        .and_then(|p| {
                            let i = p.addrs.iter().position(|a| a == addr)?;
                            p.breakers.get(i).cloned()
                        })
                        .filter(|b| b.spec() == spec)
                        .unwrap_or_else(|| Arc::new(Breaker::new(spec, now)))
                })
                .collect()
        });
        for (addr, b) in cfg.endpoints.iter().zip(&breakers) {
            metrics
                .breaker_state
                .with_label_values(&[cfg.name.as_str(), addr.to_string().as_str()])
                .set(b.state(now).gauge());
        }
        Endpoints {
            upstream: cfg.name.clone(),
            tokens: cfg
                .endpoints
                .iter()
                .map(|a| Arc::from(replica_token(a)))
                .collect(),
            addrs: cfg.endpoints.clone(),
            breakers,
            next: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Every endpoint's address, in config order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Endpoint `i`'s replica token.
    pub fn token(&self, i: usize) -> &Arc<str> {
        &self.tokens[i]
    }

    /// The endpoint a session's replica token names, if it is still configured.
    pub fn find(&self, replica: &str) -> Option<usize> {
        self.tokens.iter().position(|t| &**t == replica)
    }

    /// The endpoint for a new session: the next one round-robin, passing over endpoints
    /// whose breaker would not let a call through (open, or half-open with every probe
    /// place taken); when none would, the next one anyway (its breaker then fails the
    /// call fast).
    pub fn pick(&self) -> usize {
        let n = self.addrs.len();
        if n <= 1 {
            return 0;
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        if self.breakers.is_empty() {
            return first;
        }
        let now = Instant::now();
        (0..n)
            .map(|k| (first + k) % n)
            .find(|&i| self.breakers[i].would_admit(now))
            .unwrap_or(first)
    }

    /// Lets a call to endpoint `i` through its breaker: a ticket to judge it by, or
    /// `Err` with the time until the breaker lets a probe through. A stream (open as
    /// long as its client wants) is never a probe and never judged: it only fails fast
    /// while the breaker is open.
    pub fn admit(&self, i: usize, stream: bool) -> Result<Option<Ticket>, Duration> {
        let Some(b) = self.breakers.get(i) else {
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

    /// Reports how a call endpoint `i` let through went.
    pub fn judge(&self, i: usize, ticket: Option<Ticket>, ok: bool) {
        let Some(ticket) = ticket else { return };
        let now = Instant::now();
        let moved = if ok {
            ticket.succeeded(now)
        } else {
            ticket.failed(now)
        };
        let endpoint = self.addrs[i].to_string();
        let labels = [self.upstream.as_str(), endpoint.as_str()];
        let state = moved.unwrap_or_else(|| self.breakers[i].state(now));
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
