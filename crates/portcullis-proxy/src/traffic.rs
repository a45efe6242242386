//! Traffic control on the request path: a route's rate limits and the concurrency
//! gates of an upstream and its tools, built per config version (keeping the state of
//! unchanged limits and gates across reloads), plus the metrics they report (their
//! series registered when the config loads, so dashboards see zeros before any call).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_auth::Principal;
use portcullis_config::{Config, Deadline};
use portcullis_mcp::{Overload, Refusal};
use portcullis_traffic::{Gate, GateRefusal, Limiter, Permit, Scope};

use crate::global::GlobalLimits;
use prometheus::IntGauge;

use crate::metrics::{Metrics, Raised};

/// The `gate` label of an upstream-wide gate.
const UPSTREAM_GATE: &str = "upstream";
/// The `tool` label of calls no `tools[]` entry matches.
const OTHER_TOOL: &str = "other";

/// Rate limiters and gates of one config version.
pub struct Traffic {
    /// Per route, same order as `config.routes`.
    routes: Vec<Vec<Arc<Limiter>>>,
    /// Per upstream, same order as `config.upstreams`.
    upstreams: Vec<UpstreamGates>,
    /// Where `global` limits are counted (`redis:`).
    global: Option<Arc<GlobalLimits>>,
}

struct UpstreamGates {
    /// `portcullis_tool_calls_in_flight` series: one per `tools[]` entry, then `other`;
    /// resolved once, so a call does not look its series up by label each time.
    calls: Vec<IntGauge>,
    /// `upstreams.<n>.concurrency`.
    all: Option<Arc<Gate>>,
    /// `upstreams.<n>.tools[]`, same order (`None`: the entry sets no gate).
    tools: Vec<Option<Arc<Gate>>>,
}

/// What a request counts as against rate limits.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counted<'a> {
    /// Passes without spending anything (responses, cancellations).
    Exempt,
    /// Counts; `tool` is the tool a `tools/call` names (as the client named it).
    Request { tool: Option<&'a str> },
}

impl Traffic {
    /// Builds the limiters and gates of `config`, reusing those of `previous` whose
    /// settings did not change, so a reload neither refills buckets nor frees slots.
    pub fn build(
        config: &Config,
        previous: Option<(&Config, &Traffic)>,
        metrics: &Metrics,
    ) -> Traffic {
        register_series(config, metrics);
        let routes = config
            .routes
            .iter()
            .map(|r| {
                // By path: unique, where names need not be.
                let old = previous.and_then(|(pc, pt)| {
                    pc.routes
                        .iter()
                        .position(|o| o.path == r.path)
                        .map(|i| &pt.routes[i])
                });
                r.rate_limits
                    .iter()
                    .map(|spec| {
                        old.and_then(|o| o.iter().find(|l| l.spec().same_counting(spec)))
                            .cloned()
                            .unwrap_or_else(|| Arc::new(Limiter::new(spec.clone())))
                    })
                    .collect()
            })
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let old = previous.and_then(|(pc, pt)| {
                    pc.upstreams
                        .iter()
                        .position(|o| o.name == u.name)
                        .map(|i| (&pc.upstreams[i], &pt.upstreams[i]))
                });
                let all = u.concurrency.map(|spec| {
                    old.and_then(|(_, g)| g.all.clone())
                        .map(|g| resized(g, spec))
                        .unwrap_or_else(|| Arc::new(Gate::new(spec)))
                });
                let tools = u
                    .tools
                    .iter()
                    .map(|t| {
                        let spec = t.gate?;
                        let kept = old.and_then(|(oc, og)| {
                            oc.tools
                                .iter()
                                .position(|o| o.pattern == t.pattern)
                                .and_then(|i| og.tools[i].clone())
                        });
                        Some(
                            kept.map(|g| resized(g, spec))
                                .unwrap_or_else(|| Arc::new(Gate::new(spec))),
                        )
                    })
                    .collect();
                UpstreamGates {
                    calls: u
                        .tools
                        .iter()
                        .map(|t| t.pattern.as_str())
                        .chain([OTHER_TOOL])
                        .map(|label| {
                            metrics
                                .tool_calls_in_flight
                                .with_label_values(&[u.name.as_str(), label])
                        })
                        .collect(),
                    all,
                    tools,
                }
            })
            .collect();
        let global = config.redis.as_ref().and_then(|r| {
            let kept = previous
                .and_then(|(_, pt)| pt.global.clone())
                .filter(|g| g.config() == r);
            kept.or_else(|| match GlobalLimits::new(r) {
                Ok(g) => Some(Arc::new(g)),
                Err(e) => {
                    tracing::error!(error = %e, "global rate limits fall back to per-replica limits");
                    None
                }
            })
        });
        Traffic {
            routes,
            upstreams,
            global,
        }
    }

    /// Counts the request against each of the route's limits, in order; the first that
    /// refuses answers with the wait it computed. A global limit asks Redis, and its
    /// local limiter decides when Redis does not answer in time.
    pub(crate) async fn check_limits(
        &self,
        config: &Config,
        metrics: &Metrics,
        route: usize,
        who: Option<&Principal>,
        client: Option<IpAddr>,
        counted: Counted<'_>,
    ) -> Result<(), Refusal> {
        let Counted::Request { tool } = counted else {
            return Ok(());
        };
        let limiters = &self.routes[route];
        if limiters.is_empty() {
            return Ok(());
        }
        // The principal's key parts: issuer and subject, or the client's address.
        let ip;
        let caller: [&str; 2] = match who {
            Some(p) => [p.issuer.as_str(), p.subject.as_str()],
            None => {
                ip = client.map(caller_address).unwrap_or_default();
                ["ip", ip.as_str()]
            }
        };
        for l in limiters {
            let spec = l.spec();
            if spec.scope.tools_only() || spec.tools.is_some() {
                let Some(t) = tool else { continue };
                if spec.tools.as_ref().is_some_and(|set| !set.matches(t)) {
                    continue;
                }
            }
            let (buf, n): ([&str; 3], usize) = match (spec.scope, tool) {
                (Scope::Route, _) => (["", "", ""], 0),
                (Scope::Principal, _) => ([caller[0], caller[1], ""], 2),
                (Scope::Tool, Some(t)) => ([t, "", ""], 1),
                (Scope::PrincipalTool, Some(t)) => ([caller[0], caller[1], t], 3),
                (Scope::Tool | Scope::PrincipalTool, None) => continue,
            };
            let parts = &buf[..n];
            let checked = match (&self.global, spec.global) {
                (Some(g), true) => {
                    let route = &config.routes[route];
                    match g.check(&route.path, spec, parts).await {
                        Ok(None) => Ok(()),
                        Ok(Some(wait)) => Err(wait),
                        Err(_) => {
                            metrics
                                .rate_limit_fallbacks
                                .with_label_values(&[route.name.as_str(), spec.name.as_str()])
                                .inc();
                            l.check(parts)
                        }
                    }
                }
                _ => l.check(parts),
            };
            if let Err(wait) = checked {
                metrics
                    .rate_limited
                    .with_label_values(&[config.routes[route].name.as_str(), spec.name.as_str()])
                    .inc();
                return Err(Refusal::RateLimited {
                    limit: spec.name.clone(),
                    retry_after_ms: ceil_ms(wait),
                });
            }
        }
        Ok(())
    }

    /// Takes the slots a request needs: the tool's gate for a `tools/call` (by the
    /// upstream's tool name), then the upstream's gate for any request. Held until the
    /// answer has ended; dropping the result gives them back. The result also carries
    /// the tool's deadline.
    pub(crate) async fn enter(
        &self,
        config: &Config,
        metrics: &Metrics,
        upstream: usize,
        is_request: bool,
        upstream_tool: Option<&str>,
    ) -> Result<Slots, Refusal> {
        let mut slots = Slots::default();
        if !is_request {
            return Ok(slots);
        }
        let up = &config.upstreams[upstream];
        let gates = &self.upstreams[upstream];
        let mut call_series = None;
        if let Some(tool) = upstream_tool {
            let matched = up.tools.iter().position(|t| t.tools.matches(tool));
            let label = matched.map_or(OTHER_TOOL, |i| up.tools[i].pattern.as_str());
            if let Some(i) = matched {
                slots.deadline = up.tools[i].deadline;
                if let Some(gate) = &gates.tools[i] {
                    slots._tool = Some(pass(metrics, &up.name, label, gate).await?);
                }
            }
            call_series = Some(matched.unwrap_or(up.tools.len()));
        }
        if let Some(all) = &gates.all {
            slots._upstream = Some(pass(metrics, &up.name, UPSTREAM_GATE, all).await?);
        }
        // Counted once every gate let the call through: it is running upstream now.
        if let Some(i) = call_series {
            slots._calls = Some(Raised::new(gates.calls[i].clone()));
        }
        Ok(slots)
    }

    /// Drops every limiter's idle keys (see [`Pruner`]).
    pub fn prune(&self) {
        for l in self.routes.iter().flatten() {
            l.prune();
        }
    }

    /// Whether the route has rate limits or its upstream has gates or deadlines: then
    /// every call must be counted and gated on its own, so batches (which would pass as
    /// one) and calls sent without an id (which would pass as notifications) are refused.
    pub(crate) fn governs(&self, config: &Config, route: usize) -> bool {
        let r = &config.routes[route];
        let gated = |i: usize| {
            let up = &config.upstreams[i];
            up.concurrency.is_some() || !up.tools.is_empty()
        };
        !self.routes[route].is_empty()
            || match &r.federation {
                Some(f) => f.members.iter().any(|m| gated(m.upstream)),
                None => gated(r.upstream),
            }
    }
}

/// A gate kept across a reload, with the new config's limits: the calls it holds count
/// against them, so the upstream never sees more than the old or the new size allows.
fn resized(gate: Arc<Gate>, spec: portcullis_traffic::GateSpec) -> Arc<Gate> {
    if gate.spec() != spec {
        gate.resize(spec);
    }
    gate
}

/// Registers every series the configured limits and gates report, at zero.
fn register_series(config: &Config, metrics: &Metrics) {
    for r in &config.routes {
        for l in &r.rate_limits {
            let labels = [r.name.as_str(), l.name.as_str()];
            metrics.rate_limited.with_label_values(&labels);
            if l.global && config.redis.is_some() {
                metrics.rate_limit_fallbacks.with_label_values(&labels);
            }
        }
    }
    for u in &config.upstreams {
        let gates = u.concurrency.map(|_| UPSTREAM_GATE).into_iter().chain(
            u.tools
                .iter()
                .filter(|t| t.gate.is_some())
                .map(|t| t.pattern.as_str()),
        );
        for gate in gates {
            let labels = [u.name.as_str(), gate];
            metrics.gate_in_flight.with_label_values(&labels);
            metrics.gate_queue_depth.with_label_values(&labels);
            metrics.gate_queue_wait.with_label_values(&labels);
            for reason in ["queue_full", "queue_timeout"] {
                metrics
                    .gate_refusals
                    .with_label_values(&[labels[0], labels[1], reason]);
            }
        }
    }
}

/// Milliseconds, rounded up (from nanoseconds), so waiting this long is enough.
fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// The address an anonymous caller is counted by: an IPv4 address, or the /64 of an
/// IPv6 one (a single client usually holds a whole /64, and would otherwise get as
/// many buckets as addresses it cares to use).
fn caller_address(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Enters one gate, keeping its gauges and counters.
async fn pass(
    metrics: &Metrics,
    upstream: &str,
    gate_label: &str,
    gate: &Arc<Gate>,
) -> Result<Held, Refusal> {
    let labels = [upstream, gate_label];
    let queued = QueueMark {
        gauge: metrics.gate_queue_depth.with_label_values(&labels),
        on: AtomicBool::new(false),
    };
    let entered = gate
        .enter(|| {
            queued.gauge.inc();
            queued.on.store(true, Ordering::Relaxed);
        })
        .await;
    drop(queued);
    match entered {
        Ok(e) => {
            if let Some(w) = e.waited {
                metrics
                    .gate_queue_wait
                    .with_label_values(&labels)
                    .observe(w.as_secs_f64());
            }
            Ok(Held {
                _permit: e.permit,
                _in_flight: Raised::new(metrics.gate_in_flight.with_label_values(&labels)),
            })
        }
        Err(why) => {
            let (reason, overload) = match why {
                GateRefusal::QueueFull => ("queue_full", Overload::QueueFull),
                GateRefusal::QueueTimeout => ("queue_timeout", Overload::QueueTimeout),
            };
            metrics
                .gate_refusals
                .with_label_values(&[upstream, gate_label, reason])
                .inc();
            Err(Refusal::Overloaded(overload))
        }
    }
}

/// The slots a request holds; dropped when its answer has ended.
#[derive(Default)]
pub struct Slots {
    _tool: Option<Held>,
    _upstream: Option<Held>,
    _calls: Option<Raised>,
    /// The call's deadline, from the `tools[]` entry its tool matched.
    pub deadline: Option<Deadline>,
}

impl Slots {
    /// Whether a gate slot is held (others may be waiting for it).
    pub fn holds_gate(&self) -> bool {
        self._tool.is_some() || self._upstream.is_some()
    }
}

/// One gate slot and its in-flight gauge.
struct Held {
    _permit: Permit,
    _in_flight: Raised,
}

/// Lowers the queue gauge when the wait ends, if the call had to wait.
struct QueueMark {
    gauge: IntGauge,
    on: AtomicBool,
}

impl Drop for QueueMark {
    fn drop(&mut self) {
        if self.on.load(Ordering::Relaxed) {
            self.gauge.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_to_the_next_millisecond() {
        assert_eq!(ceil_ms(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_ms(Duration::from_nanos(1_000_000)), 1);
        assert_eq!(ceil_ms(Duration::from_nanos(1_000_000_001)), 1001);
        assert_eq!(ceil_ms(Duration::ZERO), 0);
    }

    #[test]
    fn anonymous_callers_are_counted_by_ipv4_address_or_ipv6_64() {
        let v4: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(caller_address(v4), "10.1.2.3");
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(caller_address(a), caller_address(b), "one /64");
        assert_ne!(caller_address(a), caller_address(other));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert_eq!(caller_address(mapped), "10.1.2.3");
    }
}
