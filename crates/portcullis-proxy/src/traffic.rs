//! Traffic control on the request path: a route's rate limits and the concurrency
//! gates of an upstream and its tools, built per config version (keeping the state of
//! unchanged limits and gates across reloads), plus the metrics they report.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_auth::Principal;
use portcullis_config::Config;
use portcullis_mcp::{Overload, Refusal};
use portcullis_traffic::{Gate, GateRefusal, Limiter, Permit, Scope};
use prometheus::IntGauge;

use crate::metrics::Metrics;

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
}

struct UpstreamGates {
    /// `upstreams.<n>.concurrency`.
    all: Option<Arc<Gate>>,
    /// `upstreams.<n>.tools[]`, same order.
    tools: Vec<Arc<Gate>>,
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
    pub fn build(config: &Config, previous: Option<(&Config, &Traffic)>) -> Traffic {
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let old = previous.and_then(|(pc, pt)| {
                    pc.routes
                        .iter()
                        .position(|o| o.name == r.name)
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
                        .filter(|g| g.spec() == spec)
                        .unwrap_or_else(|| Arc::new(Gate::new(spec)))
                });
                let tools = u
                    .tool_gates
                    .iter()
                    .map(|t| {
                        old.and_then(|(oc, og)| {
                            oc.tool_gates
                                .iter()
                                .position(|o| o.pattern == t.pattern)
                                .map(|i| og.tools[i].clone())
                        })
                        .filter(|g| g.spec() == t.gate)
                        .unwrap_or_else(|| Arc::new(Gate::new(t.gate)))
                    })
                    .collect();
                UpstreamGates { all, tools }
            })
            .collect();
        Traffic { routes, upstreams }
    }

    /// Counts the request against each of the route's limits, in order; the first that
    /// refuses answers with the wait it computed.
    pub(crate) fn check_limits(
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
                ip = client.map(|a| a.to_string()).unwrap_or_default();
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
            let checked = match (spec.scope, tool) {
                (Scope::Route, _) => l.check(&[]),
                (Scope::Principal, _) => l.check(&caller),
                (Scope::Tool, Some(t)) => l.check(&[t]),
                (Scope::PrincipalTool, Some(t)) => l.check(&[caller[0], caller[1], t]),
                (Scope::Tool | Scope::PrincipalTool, None) => continue,
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
    /// answer has ended; dropping the result gives them back.
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
        let mut call_label = None;
        if let Some(tool) = upstream_tool {
            let matched = up.tool_gates.iter().position(|t| t.tools.matches(tool));
            let label = matched.map_or(OTHER_TOOL, |i| up.tool_gates[i].pattern.as_str());
            if let Some(i) = matched {
                slots._tool = Some(pass(metrics, &up.name, label, &gates.tools[i]).await?);
            }
            call_label = Some(label);
        }
        if let Some(all) = &gates.all {
            slots._upstream = Some(pass(metrics, &up.name, UPSTREAM_GATE, all).await?);
        }
        // Counted once every gate let the call through: it is running upstream now.
        if let Some(label) = call_label {
            slots._calls = Some(Counting::enter(
                metrics
                    .tool_calls_in_flight
                    .with_label_values(&[up.name.as_str(), label]),
            ));
        }
        Ok(slots)
    }

    /// Whether the route counts `tools/call` by tool, or the upstream gates tools: then
    /// a batch carrying calls would slip past, and is refused.
    pub(crate) fn watches_tools(&self, config: &Config, route: usize) -> bool {
        let up = config.routes[route].upstream;
        self.routes[route]
            .iter()
            .any(|l| l.spec().scope.tools_only() || l.spec().tools.is_some())
            || !config.upstreams[up].tool_gates.is_empty()
    }
}

/// Milliseconds, rounded up, so waiting exactly this long is enough.
fn ceil_ms(d: Duration) -> u64 {
    let ms = d.as_micros().div_ceil(1000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Enters one gate, keeping its gauges and counters.
async fn pass(
    metrics: &Metrics,
    upstream: &str,
    gate_label: &str,
    gate: &Gate,
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
                _in_flight: Counting::enter(metrics.gate_in_flight.with_label_values(&labels)),
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
pub(crate) struct Slots {
    _tool: Option<Held>,
    _upstream: Option<Held>,
    _calls: Option<Counting>,
}

/// One gate slot and its in-flight gauge.
struct Held {
    _permit: Permit,
    _in_flight: Counting,
}

/// A gauge raised while this lives.
pub(crate) struct Counting(IntGauge);

impl Counting {
    pub(crate) fn enter(g: IntGauge) -> Counting {
        g.inc();
        Counting(g)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.0.dec();
    }
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
