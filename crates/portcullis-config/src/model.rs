//! The validated configuration the gateway serves from: plain types, no parsing and no
//! validation (those live in `validate`). Everything here is ready to use on the hot
//! path: addresses parsed, endpoints resolved, headers checked, policies compiled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::file::{AccessLogFile, AuditLogFile};

/// A validated configuration. Cheap to share; built off the hot path.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// A short content hash of the file and its policy files, shown in logs and the
    /// config-info metric.
    pub version: String,
    /// The plain-HTTP public listener's address, if there is one.
    pub public_addr: Option<SocketAddr>,
    /// The TLS public listener, if configured.
    pub tls: Option<TlsListener>,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    /// Worker threads for the public listener.
    pub threads: usize,
    /// Drain time after SIGTERM.
    pub grace_period: Duration,
    /// Work-stealing runtime (true) or one runtime per thread.
    pub work_stealing: bool,
    /// The public listener's HTTP limits and checks (`http:`).
    pub http: Http,
    /// Access log settings.
    pub access_log: AccessLogFile,
    /// Audit log settings.
    pub audit_log: AuditLogFile,
    /// Routes, in file order.
    pub routes: Vec<Route>,
    /// Upstreams, referenced by index from routes.
    pub upstreams: Vec<Upstream>,
    /// The key that seals session ids, when configured (`sessions.key_file|key_env`).
    pub session_key: Option<SessionKey>,
    /// A key being rotated out: ids it sealed still open (`sessions.previous_key_*`).
    pub previous_session_key: Option<SessionKey>,
    /// How long an issued session id opens (`sessions.ttl`).
    pub session_ttl: Duration,
    /// Replica-wide caps on connections, requests and streams.
    pub admission: Admission,
    /// Where global rate limits are kept, if configured.
    pub redis: Option<Redis>,
}

impl Config {
    /// The route serving an exact path, if any.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.path == path)
    }

    /// The files this config names whose change is a new version: policies,
    /// certificates, keys and CA bundles.
    pub fn named_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .routes
            .iter()
            .filter_map(|r| r.policy_path.clone())
            .collect();
        files.extend(self.tls_files());
        files.sort();
        files.dedup();
        files
    }

    /// The certificate, key and CA files this config names.
    pub fn tls_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(tls) = &self.tls {
            files.extend(tls.files.iter().cloned());
        }
        for u in &self.upstreams {
            if let Some(tls) = &u.tls {
                files.extend(tls.files.iter().cloned());
            }
        }
        if let Some((ca, _)) = self.redis.as_ref().and_then(|r| r.ca.as_ref()) {
            files.push(ca.clone());
        }
        files.sort();
        files.dedup();
        files
    }
}

/// The public listener's HTTP settings (`http:`).
#[derive(Debug, Clone)]
pub struct Http {
    /// Largest accepted request body in bytes.
    pub max_body_size: usize,
    /// Longest time to receive a request body.
    pub body_timeout: Duration,
    /// Longest time from a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// Longest a client connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Longest a write to a client may wait without progress before the client is cut.
    pub write_timeout: Duration,
    /// How long an SSE stream may stay silent before a keep-alive comment is sent.
    pub stream_keepalive: Duration,
    /// Idle time before TCP keep-alive probes start on accepted connections.
    pub tcp_keepalive: Duration,
    /// Allowed `Origin` values; empty means only requests without Origin pass.
    pub allowed_origins: Vec<OriginRule>,
    /// Allowed `Host` names; empty means any.
    pub allowed_hosts: Vec<String>,
    /// The base URL clients use, without a trailing slash, if configured.
    pub public_url: Option<String>,
    /// Peers whose `Forwarded` / `X-Forwarded-For` headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// HTTP/2 with prior knowledge on the plain listener.
    pub h2c: bool,
    /// Concurrent HTTP/2 streams per client connection.
    pub h2_max_streams: u32,
}

/// The TLS public listener (`listeners.tls`).
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The served certificates, chosen by SNI.
    pub certs: Arc<portcullis_tls::ServerCerts>,
    /// Client certificates, when the listener asks for them.
    pub client_auth: Option<portcullis_tls::ClientAuth>,
    /// Every file it was read from (watched for rotation).
    pub files: Vec<PathBuf>,
}

impl Http {
    /// Whether `peer` is a proxy whose forwarding headers are believed.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        let peer = canonical_ip(peer);
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; others unchanged.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// Key material that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(pub(crate) Vec<u8>);

impl SessionKey {
    /// The key's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// Shortest accepted session key, in bytes (256 bits).
pub const MIN_SESSION_KEY_LEN: usize = 32;

/// A public path and where it goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name for logs and metrics.
    pub name: String,
    /// Exact public path.
    pub path: String,
    /// Index into [`Config::upstreams`]: the route's upstream, or a federated route's
    /// first member (where no member is named, as for gates, the members are looked up
    /// in [`Route::federation`]).
    pub upstream: usize,
    /// Several upstreams behind this route, if it is federated.
    pub federation: Option<Arc<Federation>>,
    /// How callers authenticate; `None` is anonymous.
    pub auth: Option<Arc<portcullis_auth::RouteAuth>>,
    /// The route's policy, if it has one.
    pub policy: Option<Arc<portcullis_policy::Policy>>,
    /// The policy file, for logs and reload watching.
    pub policy_path: Option<PathBuf>,
    /// Rate limits, in the order they are checked.
    pub rate_limits: Vec<portcullis_traffic::LimitSpec>,
}

/// A federated route's members and how it merges them (docs/federation.md).
#[derive(Debug, Clone)]
pub struct Federation {
    /// The members, in config order (merged lists keep this order).
    pub members: Vec<Member>,
    /// Between a prefix and a member's own name.
    pub separator: String,
    /// The longest wait for any one member while fanning out.
    pub fanout_timeout: Duration,
    /// How long a member's list page is served from the cache.
    pub list_cache_ttl: Duration,
    /// How long a silent member's last good list stays in merged answers.
    pub grace: Duration,
}

/// One member of a federated route.
#[derive(Debug, Clone)]
pub struct Member {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// The upstream's name (sealed sessions and resource URIs name the member by it).
    pub name: String,
    /// What its names are prefixed with; `None` when mounted without a prefix.
    pub prefix: Option<String>,
    /// For an unprefixed member, the only tool and prompt names it shows.
    pub expose: Option<Vec<String>>,
}

/// An upstream MCP server, ready to connect to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its name in the file.
    pub name: String,
    /// The `Host` header to send (the URL's authority).
    pub authority: String,
    /// The upstream's endpoint path (with query, if the URL had one).
    pub path: String,
    /// Addresses to connect to, as resolved at load (empty with [`Upstream::discovery`]:
    /// the gateway resolves those names itself, asynchronously).
    pub endpoints: Vec<SocketAddr>,
    /// DNS discovery of the endpoints, if configured.
    pub discovery: Option<Discovery>,
    /// How endpoints are probed.
    pub health_check: HealthCheck,
    /// Whether a session whose endpoint is gone is re-initialised on a live endpoint
    /// (`session_failover: reinitialize`) rather than ended with 404.
    pub reinitialize_lost_sessions: bool,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes from the upstream.
    pub read_timeout: Duration,
    /// Longest wait to write to the upstream.
    pub write_timeout: Duration,
    /// Keep-alive idle time in the pool.
    pub idle_timeout: Duration,
    /// Extra headers for every request (the upstream's credential among them).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers that carry the caller's identity (always stripped from the client's).
    pub identity_headers: IdentityHeaders,
    /// Whether policies may use this upstream's tool annotations.
    pub trust_annotations: bool,
    /// The gate every JSON-RPC request to this upstream passes, if configured.
    pub concurrency: Option<portcullis_traffic::GateSpec>,
    /// A circuit breaker per endpoint, if configured.
    pub breaker: Option<portcullis_traffic::BreakerSpec>,
    /// Gates and deadlines per tool glob; the first match applies.
    pub tools: Vec<ToolTraffic>,
    /// TLS to the upstream (`https://`), or `None` for plain HTTP.
    pub tls: Option<UpstreamTls>,
    /// Which HTTP versions are spoken to it.
    pub http2: Http2,
}

/// Endpoints found by DNS (`upstreams.<name>.discovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The `host:port` names resolved (the URL's, or each `endpoints` entry).
    pub names: Vec<String>,
    /// How often they are resolved again.
    pub refresh: Duration,
    /// How long an endpoint that left the answer keeps its pinned sessions.
    pub drain: Duration,
}

/// Active health checks (`upstreams.<name>.health_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between probes of one endpoint.
    pub interval: Duration,
    /// Failed probes in a row before an endpoint is unhealthy.
    pub unhealthy_after: u32,
    /// Good probes in a row before it is healthy again.
    pub healthy_after: u32,
}

/// HTTP/2 towards an upstream (`upstreams.<name>.http2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Http2 {
    /// HTTP/2 when the server offers it by ALPN (https); HTTP/1.1 in clear.
    Auto,
    /// HTTP/2 only: by ALPN over https, with prior knowledge (h2c) over http.
    Always,
    /// HTTP/1.1 only.
    Never,
}

/// How the gateway speaks TLS to an `https://` upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Sent as SNI and verified against the certificate.
    pub server_name: String,
    /// CA certificates (DER) trusted instead of the system roots, if configured.
    pub ca: Option<Vec<Vec<u8>>>,
    /// The client certificate presented to upstreams that require mTLS.
    pub client: Option<portcullis_tls::Identity>,
    /// Verify the certificate (false only by the explicit `insecure_skip_verify`).
    pub verify: bool,
    /// Every file it was read from (watched for rotation).
    pub files: Vec<PathBuf>,
}

/// Where the caller's identity goes on requests to one upstream.
#[derive(Debug, Clone, Default)]
pub struct IdentityHeaders {
    /// The principal's subject.
    pub subject: Option<HeaderName>,
    /// The principal's issuer.
    pub issuer: Option<HeaderName>,
    /// The principal's groups, comma-separated.
    pub groups: Option<HeaderName>,
    /// The principal's scopes, comma-separated.
    pub scopes: Option<HeaderName>,
    /// Kept claims by path, each to its header.
    pub claims: Vec<(String, HeaderName)>,
}

impl IdentityHeaders {
    /// Every header name configured (the gateway never forwards the client's own).
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        [&self.subject, &self.issuer, &self.groups, &self.scopes]
            .into_iter()
            .flatten()
            .chain(self.claims.iter().map(|(_, h)| h))
    }

    /// Whether none are configured.
    pub fn is_empty(&self) -> bool {
        self.names().next().is_none()
    }
}

/// One allowed Origin: exact, any port of a scheme and host, or anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    /// `*`
    Any,
    /// `http://localhost:*`: the part before `:*`, lowercased.
    AnyPort(String),
    /// An exact origin, lowercased.
    Exact(String),
}

impl OriginRule {
    /// Reads one `http.allowed_origins` entry.
    pub fn parse(s: &str) -> OriginRule {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            OriginRule::Any
        } else if let Some(base) = s.strip_suffix(":*") {
            OriginRule::AnyPort(base.to_owned())
        } else {
            OriginRule::Exact(s.trim_end_matches('/').to_owned())
        }
    }

    /// Whether an `Origin` header value is allowed by this rule.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginRule::AnyPort(base) => {
                let Some(rest) = origin
                    .get(..base.len())
                    .filter(|p| p.eq_ignore_ascii_case(base))
                    .map(|_| &origin[base.len()..])
                else {
                    return false;
                };
                rest.is_empty()
                    || rest
                        .strip_prefix(':')
                        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            }
        }
    }
}

/// Replica-wide caps (`admission:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Client connections open at once; past it, new connections are closed at once.
    pub max_connections: usize,
    /// Requests served at once; past it, 503 `too_many_requests`.
    pub max_requests: usize,
    /// Standalone streams (GET streams and `subscriptions/listen`) open at once; past
    /// it, 503 `too_many_streams`.
    pub max_streams: usize,
}

/// What applies to the calls of the tools one glob names (`upstreams.<n>.tools[]`).
#[derive(Debug, Clone)]
pub struct ToolTraffic {
    /// The glob as written: the gate's name in metrics.
    pub pattern: String,
    /// The compiled glob.
    pub tools: portcullis_traffic::ToolSet,
    /// The gate, if `max_in_flight` is set.
    pub gate: Option<portcullis_traffic::GateSpec>,
    /// The call deadline, if `deadline` is set.
    pub deadline: Option<Deadline>,
}

/// A call deadline: cancelled `initial` after it started, or later when progress
/// notifications keep coming, but never after `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The deadline without progress, and what each progress notification grants anew.
    pub initial: Duration,
    /// The latest deadline, from the call's start.
    pub max: Duration,
}

/// Where global rate limits are kept (`redis:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    /// The connection URL (may hold a password: never logged); `rediss://` is TLS.
    pub url: String,
    /// For `rediss://`: the CA file and its PEM bytes, trusted instead of the system's
    /// roots.
    pub ca: Option<(PathBuf, Vec<u8>)>,
    /// The longest a check waits for Redis.
    pub timeout: Duration,
    /// Prepended to every key.
    pub key_prefix: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_rules_match_exact_any_port_and_any() {
        let any_port = OriginRule::parse("http://localhost:*");
        assert!(any_port.matches("http://localhost:6274"));
        assert!(any_port.matches("http://localhost"));
        assert!(!any_port.matches("http://localhost.evil.com"));
        assert!(!any_port.matches("http://localhost:"));
        assert!(!any_port.matches("http://localhost:12x"));
        let exact = OriginRule::parse("https://App.example.com/");
        assert!(exact.matches("https://app.example.com"));
        assert!(!exact.matches("https://app.example.com:444"));
        assert!(OriginRule::parse("*").matches("null"));
    }

    #[test]
    fn mapped_ipv6_addresses_are_their_ipv4_selves() {
        let mapped: std::net::IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert_eq!(canonical_ip(mapped).to_string(), "10.1.2.3");
        let v6: std::net::IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(canonical_ip(v6), v6);
    }
}
