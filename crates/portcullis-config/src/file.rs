//! The config file's schema as written by operators: every key, its default, and
//! `deny_unknown_fields` everywhere so a typo is an error rather than a silent default.
//! docs/configuration.md documents each key; keep the two in step.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::size::ByteSize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the gateway listens.
    #[serde(default)]
    pub listeners: ListenersFile,
    /// Process-level settings.
    #[serde(default)]
    pub server: ServerFile,
    /// HTTP-level limits and checks on the public listener.
    #[serde(default)]
    pub http: HttpFile,
    /// The structured access log.
    #[serde(default)]
    pub access_log: AccessLogFile,
    /// The audit log: one line per tools/call.
    #[serde(default)]
    pub audit_log: AuditLogFile,
    /// Public paths and the upstream each forwards to.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// Upstream MCP servers by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    /// How session ids handed to clients are sealed.
    #[serde(default)]
    pub sessions: SessionsFile,
    /// Replica-wide caps on requests and streams (docs/traffic.md).
    #[serde(default)]
    pub admission: AdmissionFile,
    /// The Redis that rate limits marked `global` share across replicas.
    #[serde(default)]
    pub redis: Option<RedisFile>,
}

/// `redis:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://...` for TLS.
    #[serde(default)]
    pub url: Option<String>,
    /// For `rediss://`: a PEM bundle of the CAs trusted for the Redis server, instead
    /// of the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The same, from an environment variable (the URL may hold a password).
    #[serde(default)]
    pub url_env: Option<String>,
    /// The longest a limit check waits for Redis before the local limit decides.
    /// Default 50ms.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Prepended to every key the gateway writes. Default `portcullis:`.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_redis_prefix() -> String {
    "portcullis:".to_owned()
}

/// `admission:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionFile {
    /// Client connections open at once on this replica; past it, new connections are
    /// closed as soon as they are accepted. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests served at once by this replica. Default 4096.
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
    /// Standalone streams held open by this replica: GET streams and 2026-07-28
    /// `subscriptions/listen` streams. Default 1024.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
}

impl Default for AdmissionFile {
    fn default() -> Self {
        AdmissionFile {
            max_connections: default_max_connections(),
            max_requests: default_max_requests(),
            max_streams: default_max_streams(),
        }
    }
}

fn default_max_connections() -> usize {
    10_000
}
fn default_max_requests() -> usize {
    4096
}
fn default_max_streams() -> usize {
    1024
}

/// `sessions:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsFile {
    /// A file holding the key (at least 32 bytes) that seals session ids: a Secret
    /// shared by every replica. Default: a random key per process.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// The same, from an environment variable.
    #[serde(default)]
    pub key_env: Option<String>,
    /// During a key rotation, the key being replaced: ids it sealed still open, new
    /// ones are sealed with the current key.
    #[serde(default)]
    pub previous_key_file: Option<std::path::PathBuf>,
    /// The same, from an environment variable.
    #[serde(default)]
    pub previous_key_env: Option<String>,
    /// How long a session id the gateway issues opens; past it the session is unknown
    /// (404) and the client starts a new one. Default 24h.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for SessionsFile {
    fn default() -> Self {
        SessionsFile {
            key_file: None,
            key_env: None,
            previous_key_file: None,
            previous_key_env: None,
            ttl: default_session_ttl(),
        }
    }
}

/// `listeners:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersFile {
    /// MCP traffic over plain HTTP. Default `127.0.0.1:8080`, unless `tls` is set: then
    /// there is no plain listener unless this is written too.
    #[serde(default)]
    pub public: Option<String>,
    /// MCP traffic over TLS (HTTP/1.1 and HTTP/2 by ALPN). Default: none.
    #[serde(default)]
    pub tls: Option<TlsListenerFile>,
    /// Health, readiness and metrics. Default `127.0.0.1:9090`.
    #[serde(default = "default_admin")]
    pub admin: String,
}

impl Default for ListenersFile {
    fn default() -> Self {
        ListenersFile {
            public: None,
            tls: None,
            admin: default_admin(),
        }
    }
}

/// `listeners.tls:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerFile {
    /// Where it listens, e.g. `0.0.0.0:8443`.
    pub address: String,
    /// The served certificates; the first is the default for clients whose SNI matches
    /// none (or who send none). At least one.
    pub certificates: Vec<CertificateFile>,
    /// Client certificates (mTLS). Default: none asked for.
    #[serde(default)]
    pub client_certificates: Option<ClientCertificatesFile>,
}

/// `listeners.tls.certificates[]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// PEM certificate chain, leaf first (cert-manager's `tls.crt`).
    pub cert_file: std::path::PathBuf,
    /// PEM private key (`tls.key`).
    pub key_file: std::path::PathBuf,
    /// SNI names it is served for (`*.example.com` matches one label). Default: the
    /// certificate's DNS names.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// `listeners.tls.client_certificates:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificatesFile {
    /// PEM bundle of the CAs that sign client certificates.
    pub ca_file: std::path::PathBuf,
    /// Refuse the handshake of a client without a valid certificate. Default false: a
    /// certificate is verified when sent, and routes with `auth.client_certificate`
    /// require one.
    #[serde(default)]
    pub required: bool,
}

/// `server:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Worker threads for the public listener. Default: the number of CPUs.
    #[serde(default)]
    pub threads: Option<usize>,
    /// After SIGTERM, how long in-flight requests and streams may run before exit. Default 10s.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace_period: Duration,
    /// One work-stealing runtime for all worker threads (true), or one single-threaded
    /// runtime per thread (false, the default: fewer cross-thread wake-ups, measured
    /// faster for a proxy's short I/O-bound tasks; see docs/benchmarks.md).
    #[serde(default)]
    pub work_stealing: bool,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            threads: None,
            grace_period: default_grace(),
            work_stealing: false,
        }
    }
}

/// `http:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Largest request body accepted; larger ones get 413. Default 4MiB.
    #[serde(default = "default_max_body")]
    pub max_body_size: ByteSize,
    /// Origins allowed to call (DNS-rebinding protection). A request with an Origin
    /// not listed gets 403. Entries: `https://app.example.com`, `http://localhost:*`
    /// (any port), or `*`. Default: none, so only clients that send no Origin pass.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Host names accepted in the `Host` header (the port is not compared), e.g.
    /// `localhost`, `mcp.example.com`. Default: any host.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// How long a client may take to send its request body. Default 30s.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// The base URL clients reach the gateway at (`https://mcp.example.com`), for token
    /// audiences and resource metadata. Default: `http://` + the request's Host.
    #[serde(default)]
    pub public_url: Option<String>,
    /// How long a client may take from the first byte of a request to the end of its
    /// headers (slowloris). Default 10s.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a client connection may sit idle between requests. Default 75s: longer
    /// than the load balancers usually in front (AWS ALB 60s, nginx ingress 60s), so
    /// the gateway never closes a connection a balancer is about to reuse.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a write to a client may wait without progress (a client that stops
    /// reading) before the client is cut and everything it holds is freed. Default 30s.
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long an SSE stream to a client may stay silent before the gateway sends a
    /// keep-alive comment. Default 15s.
    #[serde(default = "default_stream_keepalive", with = "humantime_serde")]
    pub stream_keepalive: Duration,
    /// Idle time before TCP keep-alive probes start on accepted connections. Default 60s.
    #[serde(default = "default_tcp_keepalive", with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Peers (addresses or CIDR blocks) whose `Forwarded` / `X-Forwarded-For` headers
    /// name the client, for the anonymous rate-limit key and the access log. Default:
    /// none (the peer address is the client).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// HTTP/2 with prior knowledge (h2c) on the plain listener, for meshes whose
    /// sidecars speak HTTP/2 in clear; HTTP/1.1 clients are still served. Default false.
    /// (On the TLS listener HTTP/2 is chosen by ALPN.)
    #[serde(default)]
    pub h2c: bool,
    /// Concurrent HTTP/2 streams one client connection may open. Default 100.
    #[serde(default = "default_h2_max_streams")]
    pub h2_max_streams: u32,
}

impl Default for HttpFile {
    fn default() -> Self {
        HttpFile {
            max_body_size: default_max_body(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            body_timeout: default_body_timeout(),
            public_url: None,
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            write_timeout: default_write_timeout(),
            stream_keepalive: default_stream_keepalive(),
            tcp_keepalive: default_tcp_keepalive(),
            trusted_proxies: Vec::new(),
            h2c: false,
            h2_max_streams: default_h2_max_streams(),
        }
    }
}

/// `access_log:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// Write one JSON line per request. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `stdout` (default), `stderr`, or a file path (appended to).
    #[serde(default = "default_stdout")]
    pub output: String,
}

/// `audit_log:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLogFile {
    /// Write one JSON line per tools/call. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `stdout` (default), `stderr`, or a file path (appended to).
    #[serde(default = "default_stdout")]
    pub output: String,
    /// Put the call's arguments in the record (they may hold secrets or personal
    /// data). Default false: only their size and SHA-256.
    #[serde(default)]
    pub include_arguments: bool,
}

impl Default for AuditLogFile {
    fn default() -> Self {
        AuditLogFile {
            enabled: true,
            output: default_stdout(),
            include_arguments: false,
        }
    }
}

impl Default for AccessLogFile {
    fn default() -> Self {
        AccessLogFile {
            enabled: true,
            output: default_stdout(),
        }
    }
}

/// One entry of `routes:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// The public path, e.g. `/mcp` or `/github/mcp`. Matched exactly.
    pub path: String,
    /// The name of an entry in `upstreams:`. Give either this or `members`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Several upstreams behind this one route, their names prefixed (a federated
    /// route, docs/federation.md). Give either this or `upstream`.
    #[serde(default)]
    pub members: Vec<MemberFile>,
    /// How a federated route names, merges and caches (docs/federation.md). Only with
    /// `members`.
    #[serde(default)]
    pub federation: Option<FederationFile>,
    /// A name for logs and metrics. Default: the path.
    #[serde(default)]
    pub name: Option<String>,
    /// How callers authenticate. Default: not at all (anonymous).
    #[serde(default)]
    pub auth: Option<AuthFile>,
    /// A policy file (docs/policies.md), relative to this file. Default: none (every
    /// target allowed and listed).
    #[serde(default)]
    pub policy: Option<std::path::PathBuf>,
    /// Rate limits, checked in order (docs/traffic.md). Default: none.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitFile>,
}

/// One entry of `routes[].members`: an upstream's name, or the upstream with how it is
/// mounted.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MemberFile {
    /// `- github`: mounted with its name as the prefix.
    Name(String),
    /// `- {upstream: github, prefix: gh}`.
    Mounted(MountedFile),
}

/// A member with its mount settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountedFile {
    /// The name of an entry in `upstreams:`.
    pub upstream: String,
    /// What its tool and prompt names are prefixed with (then the separator). Default:
    /// the upstream's name. `""` mounts it without a prefix, which needs `expose`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The only tool and prompt names an unprefixed member shows, so the config proves
    /// they collide with no other member's. Default: every name (prefixed members only).
    #[serde(default)]
    pub expose: Option<Vec<String>>,
}

/// `routes[].federation`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationFile {
    /// Between a member's prefix and its own name: one to four of `_`, `-`, `.` (the
    /// characters tool names allow besides letters and digits). Default `__`.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// The longest the gateway waits for any one member while fanning out; a member
    /// slower than this is left out of that answer. Default 5s.
    #[serde(default = "default_fanout_timeout", with = "humantime_serde")]
    pub fanout_timeout: Duration,
    /// How long a member's list page is served from the gateway's cache before it is
    /// asked again (a `list_changed` from the member clears it sooner). Default 30s;
    /// `0s` turns the cache off.
    #[serde(default = "default_list_cache_ttl", with = "humantime_serde")]
    pub list_cache_ttl: Duration,
    /// How long a member that stopped answering keeps its last good list in merged
    /// answers, before its names drop out. Default 5m.
    #[serde(default = "default_member_grace", with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for FederationFile {
    fn default() -> Self {
        FederationFile {
            separator: default_separator(),
            fanout_timeout: default_fanout_timeout(),
            list_cache_ttl: default_list_cache_ttl(),
            grace: default_member_grace(),
        }
    }
}

fn default_separator() -> String {
    "__".to_owned()
}

fn default_fanout_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_list_cache_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_member_grace() -> Duration {
    Duration::from_secs(300)
}

/// One entry of `routes[].rate_limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Its name in refusals, logs and metrics. Default: the `per` value.
    #[serde(default)]
    pub name: Option<String>,
    /// What is counted separately: `route`, `principal`, `tool`, `principal_tool`.
    pub per: String,
    /// The steady rate: `N/s`, `N/m`, `N/h` or `N/<duration>`.
    pub rate: String,
    /// Requests admitted at once. Default: the rate's N.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Only `tools/call` of these tool globs count. Default: every request.
    #[serde(default)]
    pub tools: Vec<String>,
    /// The most keys tracked; past it new keys share one bucket. Default 100000.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Enforced across replicas through `redis:`. Default false (per replica).
    #[serde(default)]
    pub global: bool,
}

fn default_max_keys() -> usize {
    100_000
}

/// `upstreams.<name>.concurrency:` a gate for every request to the upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateFile {
    /// Requests running at once.
    pub max_in_flight: usize,
    /// Requests waiting for a slot. Default 0 (refused at once when full).
    #[serde(default)]
    pub max_queue: usize,
    /// The longest wait in the queue. Default 10s.
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
}

/// One entry of `upstreams.<name>.tools:` a gate and a deadline for the tools one
/// glob names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolTrafficFile {
    /// A glob of the upstream's tool names; the first matching entry applies.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Calls of the matching tools running at once. Default: no gate.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Calls waiting for a slot. Default 0.
    #[serde(default)]
    pub max_queue: Option<usize>,
    /// The longest wait in the queue. Default 10s.
    #[serde(default, with = "humantime_serde")]
    pub queue_timeout: Option<Duration>,
    /// How long a call may run before the gateway cancels it. Default: no deadline.
    #[serde(default, with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// How far progress notifications may push the deadline, from the call's start.
    /// Default: the deadline itself (progress does not extend it).
    #[serde(default, with = "humantime_serde")]
    pub max_deadline: Option<Duration>,
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `routes[].auth:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Bearer JWTs from these issuers.
    #[serde(default)]
    pub jwt: Option<JwtFile>,
    /// API keys (hashed), in `X-Api-Key` or as a bearer token.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyFile>,
    /// A YAML file (a mounted Secret) holding more `api_keys` entries; re-read on reload.
    #[serde(default)]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Client certificates verified by the TLS listener (`listeners.tls.client_certificates`)
    /// as credentials: a request with no token or key on such a connection is the
    /// certificate's principal (issuer `mtls`). Default: not accepted.
    #[serde(default)]
    pub client_certificate: Option<ClientCertificateAuthFile>,
    /// Scopes every call needs; a valid token without them gets 403. Default: none.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Scopes listed in the protected resource metadata. Default: `required_scopes`.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// Authorization servers listed in the protected resource metadata. Default: the
    /// issuers.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
}

/// `routes[].auth.client_certificate:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateAuthFile {
    /// The certificate name that becomes the principal's subject: `common_name`, `dns`,
    /// `uri` (SPIFFE ids) or `email` (the first such subject alternative name).
    /// Default `common_name`.
    #[serde(default)]
    pub subject: CertificateNameFile,
}

/// `routes[].auth.client_certificate.subject`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateNameFile {
    /// The subject's common name.
    #[default]
    CommonName,
    /// The first DNS name.
    Dns,
    /// The first URI.
    Uri,
    /// The first email address.
    Email,
}

/// One API key: `routes[].auth.api_keys[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    /// The key's name: the principal's subject.
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`); the key itself is never stored.
    pub sha256: String,
    /// Groups of the principal.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Scopes of the principal.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `routes[].auth.jwt:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    /// Trusted issuers (at least one).
    pub issuers: Vec<IssuerFile>,
    /// Verified tokens remembered until they expire. Default 10000.
    #[serde(default = "default_token_cache")]
    pub cache_entries: usize,
}

/// One trusted token issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values. Default: the route's public URL (`http.public_url` + path).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted algorithms. Default: RS256..512, PS256..512, ES256, ES384, EdDSA; HS256..512
    /// only when listed (and the default with `secret_file`).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// The identity provider's JWKS URL (`http://` or `https://`), fetched at start,
    /// refreshed in the background and once on an unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often a `jwks_url` is fetched again. Default 5m.
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// The least time between fetches of a `jwks_url` caused by unknown key ids or
    /// retries after a failure. Default 10s.
    #[serde(default = "default_jwks_refetch", with = "humantime_serde")]
    pub jwks_refetch_min_interval: Duration,
    /// A JWKS document (`{"keys":[...]}`) on disk.
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// One public key in PEM.
    #[serde(default)]
    pub pem_file: Option<std::path::PathBuf>,
    /// An HMAC secret (the whole file, trailing newline trimmed).
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// Tolerated clock skew. Default 30s.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim paths holding groups or roles, e.g. `groups`, `realm_access.roles`. Default: `groups`.
    #[serde(default = "default_groups_claims")]
    pub groups_claims: Vec<String>,
    /// Claim paths kept on the principal. Default: none.
    #[serde(default)]
    pub keep_claims: Vec<String>,
}

fn default_token_cache() -> usize {
    10_000
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_refetch() -> Duration {
    Duration::from_secs(10)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_groups_claims() -> Vec<String> {
    vec!["groups".to_owned()]
}

/// One entry of `upstreams:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// The upstream's MCP endpoint, `http://host:port/path`.
    pub url: String,
    /// `host:port` addresses to connect to instead of the URL's host (replicas of one
    /// server). Default: the URL's host and port.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// TCP connect timeout. Default 2s.
    #[serde(default = "default_connect", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's next bytes (response headers or the next stream
    /// chunk). Default 300s, so long tool calls that stream progress are not cut.
    #[serde(default = "default_read", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest wait to write the request to the upstream. Default 30s.
    #[serde(default = "default_write", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long an idle keep-alive connection stays in the pool. Default 60s.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Extra headers sent on every request to this upstream.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The upstream's own credential, read from a file or an environment variable
    /// (a Kubernetes Secret), sent instead of anything the client presented.
    #[serde(default)]
    pub credential: Option<CredentialFile>,
    /// Headers that carry the caller's identity to this upstream. Trusted only inside
    /// the cluster: the gateway removes any client-sent header of the same name.
    #[serde(default)]
    pub identity_headers: IdentityHeadersFile,
    /// Whether policies may rely on this upstream's tool annotations. Default true;
    /// false makes every tool carry the spec's defaults (destructive, open-world).
    #[serde(default = "default_true")]
    pub trust_annotations: bool,
    /// A concurrency gate for every JSON-RPC request to this upstream. Default: none.
    #[serde(default)]
    pub concurrency: Option<GateFile>,
    /// Concurrency gates and call deadlines per tool glob. Default: none.
    #[serde(default)]
    pub tools: Vec<ToolTrafficFile>,
    /// A circuit breaker per endpoint. Default: none.
    #[serde(default)]
    pub breaker: Option<BreakerFile>,
    /// TLS settings of an `https://` upstream. Default: the system's CA roots, the
    /// URL's host as SNI and verified name, no client certificate.
    #[serde(default)]
    pub tls: Option<UpstreamTlsFile>,
    /// HTTP/2 to this upstream: `auto` (over https when the server offers it by ALPN;
    /// HTTP/1.1 in clear), `always` (https: h2 only; http: h2c with prior knowledge) or
    /// `never`. Default `auto`.
    #[serde(default)]
    pub http2: Http2File,
    /// Endpoints found by DNS, re-resolved on an interval (a Kubernetes headless
    /// Service). Default: none (resolved once when the config loads).
    #[serde(default)]
    pub discovery: Option<DiscoveryFile>,
    /// Active health checks of every endpoint. Default: every 5s, 2 failures in a row
    /// mark an endpoint unhealthy, 1 success marks it healthy again.
    #[serde(default)]
    pub health_check: HealthCheckFile,
    /// What a session whose endpoint is gone gets: `end` (404, the client starts over)
    /// or `reinitialize` (a new session on a live endpoint). Default `end`.
    #[serde(default)]
    pub session_failover: SessionFailoverFile,
}

/// `upstreams.<name>.session_failover`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionFailoverFile {
    /// 404: the client initializes again.
    #[default]
    End,
    /// The gateway opens a new session on a live endpoint and hands the client its id.
    Reinitialize,
}

/// `upstreams.<name>.discovery:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryFile {
    /// How often the names are resolved again. Default 10s.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// How long an endpoint that left the DNS answer keeps serving the sessions pinned
    /// to it (it takes no new ones). Default 5m.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_drain() -> Duration {
    Duration::from_secs(300)
}

/// `upstreams.<name>.health_check:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// How often each endpoint is probed. Default 5s.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Failed probes in a row that mark an endpoint unhealthy. Default 2.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// Good probes in a row that mark it healthy again. Default 1.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
}

impl Default for HealthCheckFile {
    fn default() -> HealthCheckFile {
        HealthCheckFile {
            interval: default_probe_interval(),
            unhealthy_after: default_unhealthy_after(),
            healthy_after: default_healthy_after(),
        }
    }
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_unhealthy_after() -> u32 {
    2
}
fn default_healthy_after() -> u32 {
    1
}

/// `upstreams.<name>.http2`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Http2File {
    /// By ALPN over https; HTTP/1.1 in clear.
    #[default]
    Auto,
    /// HTTP/2 only (h2c with prior knowledge over http).
    Always,
    /// HTTP/1.1 only.
    Never,
}

/// `upstreams.<name>.tls:`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// PEM bundle of the CAs trusted for this upstream, instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The name sent as SNI and verified in the certificate. Default: the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// A client certificate chain (PEM) for upstreams that require mTLS.
    #[serde(default)]
    pub client_cert_file: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub client_key_file: Option<std::path::PathBuf>,
    /// Accept any certificate. For tests against servers with throwaway certificates
    /// only: logged as a warning at every load. Default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `upstreams.<name>.breaker:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    /// Failures in a row that open an endpoint's breaker. Default 5.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// A share of failed calls (0 to 1) that opens it. Default: none.
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Calls a window needs before its error rate counts. Default 20.
    #[serde(default = "default_min_calls")]
    pub min_calls: u32,
    /// The error rate's counting window. Default 30s.
    #[serde(default = "default_breaker_window", with = "humantime_serde")]
    pub window: Duration,
    /// How long an open breaker fails calls fast before probing. Default 30s.
    #[serde(default = "default_cool_down", with = "humantime_serde")]
    pub cool_down: Duration,
    /// Probe calls let through while half-open; that many successes close it. Default 1.
    #[serde(default = "default_half_open_calls")]
    pub half_open_calls: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_min_calls() -> u32 {
    20
}
fn default_breaker_window() -> Duration {
    Duration::from_secs(30)
}
fn default_cool_down() -> Duration {
    Duration::from_secs(30)
}
fn default_half_open_calls() -> u32 {
    1
}

/// `upstreams.<name>.identity_headers:` header names, each optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeadersFile {
    /// Carries the principal's subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Carries the issuer (`api-key` for API keys).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Carries the groups, comma-separated.
    #[serde(default)]
    pub groups: Option<String>,
    /// Carries the scopes, comma-separated.
    #[serde(default)]
    pub scopes: Option<String>,
    /// Kept claims (`keep_claims` paths) to headers.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// `upstreams.<name>.credential:`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialFile {
    /// The header to send. Default `authorization`.
    #[serde(default = "default_credential_header")]
    pub header: String,
    /// Written before the value with a space. Default `Bearer` for `authorization`,
    /// nothing for other headers.
    #[serde(default)]
    pub scheme: Option<String>,
    /// A file holding the value (trailing newline trimmed); re-read on every reload.
    #[serde(default)]
    pub value_file: Option<std::path::PathBuf>,
    /// An environment variable holding the value.
    #[serde(default)]
    pub value_env: Option<String>,
}

fn default_credential_header() -> String {
    "authorization".to_owned()
}

fn default_h2_max_streams() -> u32 {
    100
}
fn default_admin() -> String {
    "127.0.0.1:9090".to_owned()
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_max_body() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(75)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_stream_keepalive() -> Duration {
    Duration::from_secs(15)
}
fn default_tcp_keepalive() -> Duration {
    Duration::from_secs(60)
}
fn default_true() -> bool {
    true
}
fn default_stdout() -> String {
    "stdout".to_owned()
}
fn default_connect() -> Duration {
    Duration::from_secs(2)
}
fn default_read() -> Duration {
    Duration::from_secs(300)
}
fn default_write() -> Duration {
    Duration::from_secs(30)
}
fn default_idle() -> Duration {
    Duration::from_secs(60)
}

/// Parses YAML into the schema, turning serde errors into file:line:column + key.
pub(crate) fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, ConfigFile>(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let location = inner.location();
        // serde_yaml appends " at line L column C"; the location is reported separately.
        let mut message = inner.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // It also starts with its own idea of the path; the key is reported separately.
        if let Some((head, rest)) = message.split_once(": ") {
            if !head.contains(char::is_whitespace) {
                message = rest.to_owned();
            }
        }
        // serde reports a duplicate at the mapping that holds it (often 1:1); the text
        // says where the second one is written.
        if message.starts_with("duplicate") {
            if let Some(dup) = crate::locate::first_duplicate_key(text) {
                return ConfigError {
                    file: path.to_owned(),
                    line: Some(dup.line),
                    column: None,
                    key: Some(dup.key.clone()),
                    message: format!("duplicate key `{}`: each key may appear once", dup.leaf),
                };
            }
        }
        ConfigError {
            file: path.to_owned(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            key: (key != "." && !key.is_empty()).then_some(key),
            message,
        }
    })
}
