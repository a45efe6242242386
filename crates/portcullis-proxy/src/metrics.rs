//! Prometheus metrics of the gateway. Every label's values are bounded: routes and
//! upstreams come from config, JSON-RPC methods from the MCP method list (others are
//! `other`), statuses from what HTTP allows. docs/metrics.md lists each metric.

use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics, registered in one registry served at `/metrics`.
pub struct Metrics {
    registry: Registry,
    /// `portcullis_requests_total{route,http_method,rpc_method,status}`
    pub requests: IntCounterVec,
    /// `portcullis_request_duration_seconds{route,rpc_method}`: request start to response end.
    pub duration: HistogramVec,
    /// `portcullis_requests_in_flight`
    pub in_flight: IntGauge,
    /// `portcullis_refusals_total{route,reason}`
    pub refusals: IntCounterVec,
    /// `portcullis_upstream_errors_total{upstream,kind}`
    pub upstream_errors: IntCounterVec,
    /// `portcullis_upstream_response_seconds{upstream}`: request sent to response headers.
    pub upstream_latency: HistogramVec,
    /// `portcullis_open_streams{route}`: SSE responses being relayed.
    pub open_streams: IntGaugeVec,
    /// `portcullis_upstream_up{upstream}`: 1 when an endpoint accepted the last probe.
    pub upstream_up: IntGaugeVec,
    /// `portcullis_upstream_endpoints{upstream,state}`: endpoints by state (healthy,
    /// unhealthy, draining).
    pub upstream_endpoints: IntGaugeVec,
    /// `portcullis_discovery_failures_total{upstream}`: DNS re-resolutions that failed
    /// (the endpoints found before stay).
    pub discovery_failures: IntCounterVec,
    /// `portcullis_session_failovers_total{upstream}`: sessions moved to a new session
    /// because their endpoint was gone (`session_failover: reinitialize`).
    pub session_failovers: IntCounterVec,
    /// `portcullis_tls_certificate_expiry_timestamp_seconds{use, name}`: when each
    /// certificate the gateway presents lapses (served by the TLS listener, or shown to
    /// an upstream as its client certificate).
    pub cert_expiry: IntGaugeVec,
    /// `portcullis_config_info{version}`: 1 for the live version.
    pub config_info: IntGaugeVec,
    /// `portcullis_config_reloads_total{result}`
    pub reloads: IntCounterVec,
    /// `portcullis_config_last_reload_timestamp_seconds`
    pub last_reload: Gauge,
    /// `portcullis_config_watching`: 1 once file changes and SIGHUP trigger reloads.
    pub watching: IntGauge,
    /// `portcullis_access_log_dropped_total`: lines dropped because the log writer fell behind.
    pub access_log_dropped: IntCounter,
    /// `portcullis_audit_log_dropped_total`.
    pub audit_log_dropped: IntCounter,
    /// `portcullis_policy_decisions_total{route, effect, rule}`.
    pub policy_decisions: IntCounterVec,
    /// `portcullis_jwks_fetches_total{url, result}`.
    pub jwks_fetches: IntCounterVec,
    /// `portcullis_jwks_keys{url}`.
    pub jwks_keys: IntGaugeVec,
    /// `portcullis_jwks_last_success_timestamp_seconds{url}`.
    pub jwks_last_success: GaugeVec,
    /// `portcullis_rate_limited_total{route, limit}`.
    pub rate_limited: IntCounterVec,
    /// `portcullis_rate_limit_fallbacks_total{route, limit}`: global limit checks the
    /// local limiter decided because Redis did not answer in time.
    pub rate_limit_fallbacks: IntCounterVec,
    /// `portcullis_gate_in_flight{upstream, gate}`.
    pub gate_in_flight: IntGaugeVec,
    /// `portcullis_gate_queue_depth{upstream, gate}`.
    pub gate_queue_depth: IntGaugeVec,
    /// `portcullis_gate_queue_wait_seconds{upstream, gate}`.
    pub gate_queue_wait: HistogramVec,
    /// `portcullis_gate_refusals_total{upstream, gate, reason}`.
    pub gate_refusals: IntCounterVec,
    /// `portcullis_tool_calls_in_flight{upstream, tool}`: tool is a configured gate's
    /// pattern or `other`.
    pub tool_calls_in_flight: IntGaugeVec,
    /// `portcullis_standalone_streams_open`: GET streams and `subscriptions/listen`
    /// streams, what `admission.max_streams` caps.
    pub standalone_streams_open: IntGauge,
    /// `portcullis_connections_open`: client connections, what
    /// `admission.max_connections` caps.
    pub connections_open: IntGauge,
    /// `portcullis_connections_rejected_total`: connections closed as soon as accepted
    /// because `admission.max_connections` were open.
    pub connections_rejected: IntCounter,
    /// `portcullis_client_timeouts_total{timeout}`: clients cut by `header`, `idle` or
    /// `write` timeouts.
    pub client_timeouts: IntCounterVec,
    /// `portcullis_stream_keepalives_total`: keep-alive comments sent on quiet streams.
    pub stream_keepalives: IntCounter,
    /// `portcullis_breaker_state{upstream, endpoint}`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// `portcullis_breaker_transitions_total{upstream, endpoint, state}`.
    pub breaker_transitions: IntCounterVec,
    /// `portcullis_federation_member_failures_total{route, member, kind}`: a member left
    /// out of a fanned-out answer (kind: timeout, error, refused).
    pub member_failures: IntCounterVec,
    /// `portcullis_federation_list_pages_total{route, source}`: member list pages merged,
    /// by where they came from (cache, upstream, stale: a last good copy in the grace
    /// period).
    pub list_pages: IntCounterVec,
}

/// A gauge raised while this guard lives, lowered on every path that drops it.
pub struct Raised(IntGauge);

impl Raised {
    /// Raises `gauge` until the guard is dropped.
    pub(crate) fn new(gauge: IntGauge) -> Raised {
        gauge.inc();
        Raised(gauge)
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Registers an unlabelled metric; names and help texts are static, so failure is a bug.
fn registered<M>(r: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let m = metric.expect("static metric definition");
    r.register(Box::new(m.clone())).expect("unique metric name");
    m
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    // 100 us .. ~100 s: gateway refusals sit at the bottom, long tool calls at the top.
    let buckets = exponential_buckets(0.0001, 2.5, 16).expect("static buckets");
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("static metric definition");
    r.register(Box::new(h.clone())).expect("unique metric name");
    h
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let in_flight = registered(
            &r,
            IntGauge::new(
                "portcullis_requests_in_flight",
                "Requests being handled, streams included",
            ),
        );
        let last_reload = registered(
            &r,
            Gauge::new(
                "portcullis_config_last_reload_timestamp_seconds",
                "Unix time of the last successful config load",
            ),
        );
        let watching = registered(
            &r,
            IntGauge::new(
                "portcullis_config_watching",
                "1 once config file changes and SIGHUP trigger reloads, 0 if watching failed",
            ),
        );
        let standalone_streams_open = registered(
            &r,
            IntGauge::new(
                "portcullis_standalone_streams_open",
                "GET streams and subscriptions/listen streams open (capped by admission.max_streams)",
            ),
        );
        let connections_open = registered(
            &r,
            IntGauge::new(
                "portcullis_connections_open",
                "Client connections open (capped by admission.max_connections)",
            ),
        );
        let connections_rejected = registered(
            &r,
            IntCounter::new(
                "portcullis_connections_rejected_total",
                "Client connections closed as soon as accepted because admission.max_connections were open",
            ),
        );
        let stream_keepalives = registered(
            &r,
            IntCounter::new(
                "portcullis_stream_keepalives_total",
                "Keep-alive comments sent on quiet SSE streams (http.stream_keepalive)",
            ),
        );
        let client_timeouts = counter(
            &r,
            "portcullis_client_timeouts_total",
            "Clients cut by a timeout: header (http.header_timeout), idle (http.idle_timeout), write (http.write_timeout)",
            &["timeout"],
        );
        for t in ["header", "idle", "write"] {
            client_timeouts.with_label_values(&[t]);
        }
        Metrics {
            rate_limited: counter(
                &r,
                "portcullis_rate_limited_total",
                "Requests a rate limit refused, by route and limit name",
                &["route", "limit"],
            ),
            rate_limit_fallbacks: counter(
                &r,
                "portcullis_rate_limit_fallbacks_total",
                "Global rate limit checks decided by the local limiter because Redis did not answer in time",
                &["route", "limit"],
            ),
            gate_in_flight: gauge_vec(
                &r,
                "portcullis_gate_in_flight",
                "Calls holding a concurrency gate slot (gate: upstream, or a tools[].match pattern)",
                &["upstream", "gate"],
            ),
            gate_queue_depth: gauge_vec(
                &r,
                "portcullis_gate_queue_depth",
                "Calls waiting in a concurrency gate's queue",
                &["upstream", "gate"],
            ),
            gate_queue_wait: histogram(
                &r,
                "portcullis_gate_queue_wait_seconds",
                "Time queued calls waited for a gate slot",
                &["upstream", "gate"],
            ),
            gate_refusals: counter(
                &r,
                "portcullis_gate_refusals_total",
                "Calls a concurrency gate turned away, by reason (queue_full, queue_timeout)",
                &["upstream", "gate", "reason"],
            ),
            tool_calls_in_flight: gauge_vec(
                &r,
                "portcullis_tool_calls_in_flight",
                "tools/call requests being answered upstream (tool: a tools[].match pattern, or other)",
                &["upstream", "tool"],
            ),
            standalone_streams_open,
            connections_open,
            connections_rejected,
            client_timeouts,
            stream_keepalives,
            breaker_state: gauge_vec(
                &r,
                "portcullis_breaker_state",
                "Circuit breaker of an upstream endpoint: 0 closed, 1 open, 2 half-open",
                &["upstream", "endpoint"],
            ),
            breaker_transitions: counter(
                &r,
                "portcullis_breaker_transitions_total",
                "Circuit breaker state changes, by the state entered",
                &["upstream", "endpoint", "state"],
            ),
            member_failures: counter(
                &r,
                "portcullis_federation_member_failures_total",
                "Members of a federated route left out of a fanned-out answer, by why",
                &["route", "member", "kind"],
            ),
            list_pages: counter(
                &r,
                "portcullis_federation_list_pages_total",
                "Member list pages merged into a federated route's lists, by where they came from",
                &["route", "source"],
            ),
            requests: counter(
                &r,
                "portcullis_requests_total",
                "Requests answered, by route, HTTP method, JSON-RPC method and status",
                &["route", "http_method", "rpc_method", "status"],
            ),
            duration: histogram(
                &r,
                "portcullis_request_duration_seconds",
                "Time from request start to the end of the response, streams included",
                &["route", "rpc_method"],
            ),
            in_flight,
            refusals: counter(
                &r,
                "portcullis_refusals_total",
                "Requests the gateway refused or could not complete, by reason",
                &["route", "reason"],
            ),
            upstream_errors: counter(
                &r,
                "portcullis_upstream_errors_total",
                "Failed exchanges with an upstream, by kind",
                &["upstream", "kind"],
            ),
            upstream_latency: histogram(
                &r,
                "portcullis_upstream_response_seconds",
                "Time from sending a request upstream to its response headers",
                &["upstream"],
            ),
            open_streams: gauge_vec(
                &r,
                "portcullis_open_streams",
                "Server-sent event streams being relayed",
                &["route"],
            ),
            upstream_up: gauge_vec(
                &r,
                "portcullis_upstream_up",
                "1 when at least one endpoint of the upstream accepted the last probe (TCP, or a TLS handshake for https)",
                &["upstream"],
            ),
            upstream_endpoints: gauge_vec(
                &r,
                "portcullis_upstream_endpoints",
                "An upstream's endpoints by state: healthy and unhealthy ones take new sessions \
                 (unhealthy ones only when no healthy one can), draining ones left the DNS answer \
                 and serve only the sessions pinned to them",
                &["upstream", "state"],
            ),
            discovery_failures: counter(
                &r,
                "portcullis_discovery_failures_total",
                "DNS re-resolutions of an upstream's endpoints that failed or found no address \
                 (the endpoints found before stay in use)",
                &["upstream"],
            ),
            session_failovers: counter(
                &r,
                "portcullis_session_failovers_total",
                "Sessions whose endpoint was gone, moved to a new session on a live endpoint \
                 (upstreams.<n>.session_failover: reinitialize)",
                &["upstream"],
            ),
            cert_expiry: gauge_vec(
                &r,
                "portcullis_tls_certificate_expiry_timestamp_seconds",
                "When each certificate the gateway presents expires (Unix time), by use \
                 (listener, upstream_client) and name (the first name it serves, or the upstream)",
                &["use", "name"],
            ),
            config_info: gauge_vec(
                &r,
                "portcullis_config_info",
                "1 for the config version being served",
                &["version"],
            ),
            reloads: counter(
                &r,
                "portcullis_config_reloads_total",
                "Config reload attempts by result (success, failure, unchanged)",
                &["result"],
            ),
            last_reload,
            watching,
            access_log_dropped: registered(
                &r,
                IntCounter::new(
                    "portcullis_access_log_dropped_total",
                    "Access log lines dropped because the writer fell behind",
                ),
            ),
            audit_log_dropped: registered(
                &r,
                IntCounter::new(
                    "portcullis_audit_log_dropped_total",
                    "Audit log lines dropped because the writer fell behind",
                ),
            ),
            policy_decisions: counter(
                &r,
                "portcullis_policy_decisions_total",
                "Policy decisions on requests, by route, effect and deciding rule",
                &["route", "effect", "rule"],
            ),
            jwks_fetches: counter(
                &r,
                "portcullis_jwks_fetches_total",
                "Fetches of a configured JWKS URL, by result (success, failure)",
                &["url", "result"],
            ),
            jwks_keys: gauge_vec(
                &r,
                "portcullis_jwks_keys",
                "Keys in the last good set fetched from a JWKS URL",
                &["url"],
            ),
            jwks_last_success: registered(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "portcullis_jwks_last_success_timestamp_seconds",
                        "Unix time of the last successful fetch of a JWKS URL",
                    ),
                    &["url"],
                ),
            ),
            registry: r,
        }
    }

    /// The expiry series of the certificates `config` presents, replacing the last
    /// config's (a rotated certificate's old date disappears).
    pub fn set_certificates(&self, config: &portcullis_config::Config) {
        self.cert_expiry.reset();
        if let Some(tls) = &config.tls {
            for (name, info) in tls.certs.served() {
                self.cert_expiry
                    .with_label_values(&["listener", name])
                    .set(info.not_after);
            }
        }
        for u in &config.upstreams {
            if let Some(id) = u.tls.as_ref().and_then(|t| t.client.as_ref()) {
                self.cert_expiry
                    .with_label_values(&["upstream_client", u.name.as_str()])
                    .set(id.info.not_after);
            }
        }
    }

    /// Marks `version` as the live config (and no other).
    pub fn set_config_version(&self, version: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[version]).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_reload.set(now);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
