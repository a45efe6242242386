//! Turns a parsed [`ConfigFile`] into a [`Config`] ready to serve: addresses parsed,
//! upstream URLs split, endpoints resolved, headers checked, references followed.
//! A config either validates whole or is refused with the first error found.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::file::{AccessLogFile, ConfigFile};
use crate::locate::{line_of, Step};

/// A validated configuration. Cheap to share; built off the hot path.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// A short content hash of the file, shown in logs and the config-info metric.
    pub version: String,
    /// Public listener address.
    pub public_addr: SocketAddr,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    /// Worker threads for the public listener.
    pub threads: usize,
    /// Drain time after SIGTERM.
    pub grace_period: Duration,
    /// Work-stealing runtime (true) or one runtime per thread.
    pub work_stealing: bool,
    /// Largest accepted request body in bytes.
    pub max_body_size: usize,
    /// Longest time to receive a request body.
    pub body_timeout: Duration,
    /// Allowed `Origin` values; empty means only requests without Origin pass.
    pub allowed_origins: Vec<OriginRule>,
    /// Allowed `Host` names; empty means any.
    pub allowed_hosts: Vec<String>,
    /// The base URL clients use, without a trailing slash, if configured.
    pub public_url: Option<String>,
    /// Access log settings.
    pub access_log: AccessLogFile,
    /// Audit log settings.
    pub audit_log: crate::file::AuditLogFile,
    /// Routes, in file order.
    pub routes: Vec<Route>,
    /// Upstreams, referenced by index from routes.
    pub upstreams: Vec<Upstream>,
    /// The key that seals session ids, when configured (`sessions.key_file|key_env`).
    pub session_key: Option<SessionKey>,
    /// A key being rotated out: ids it sealed still open (`sessions.previous_key_*`).
    pub previous_session_key: Option<SessionKey>,
    /// Replica-wide caps on requests and streams.
    pub admission: crate::traffic::Admission,
    /// Where global rate limits are kept, if configured.
    pub redis: Option<crate::traffic::Redis>,
}

/// Key material that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(Vec<u8>);

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
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// How callers authenticate; `None` is anonymous.
    pub auth: Option<std::sync::Arc<portcullis_auth::RouteAuth>>,
    /// The route's policy, if it has one.
    pub policy: Option<std::sync::Arc<portcullis_policy::Policy>>,
    /// The policy file, for logs and reload watching.
    pub policy_path: Option<PathBuf>,
    /// Rate limits, in the order they are checked.
    pub rate_limits: Vec<portcullis_traffic::LimitSpec>,
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
    /// Addresses to connect to, tried round-robin.
    pub endpoints: Vec<SocketAddr>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes from the upstream.
    pub read_timeout: Duration,
    /// Longest wait to write to the upstream.
    pub write_timeout: Duration,
    /// Keep-alive idle time in the pool.
    pub idle_timeout: Duration,
    /// Extra headers for every request.
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
    pub tools: Vec<crate::traffic::ToolTraffic>,
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
    fn parse(s: &str) -> OriginRule {
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

impl Config {
    /// The route serving an exact path, if any.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.path == path)
    }
}

pub(crate) struct Ctx<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
}

impl Ctx<'_> {
    pub(crate) fn err(&self, steps: &[Step<'_>], message: String) -> ConfigError {
        let key = steps
            .iter()
            .map(|s| match s {
                Step::Key(k) => format!(".{k}"),
                Step::Index(i) => format!("[{i}]"),
            })
            .collect::<String>();
        ConfigError::at(
            self.path,
            line_of(self.text, steps),
            key.trim_start_matches('.'),
            message,
        )
    }
}

pub(crate) fn validate(path: &Path, text: &str, file: ConfigFile) -> Result<Config, ConfigError> {
    let cx = Ctx { path, text };
    let public_addr = parse_addr(&cx, &file.listeners.public, "public")?;
    let admin_addr = parse_addr(&cx, &file.listeners.admin, "admin")?;
    if public_addr == admin_addr && public_addr.port() != 0 {
        return Err(cx.err(
            &[Step::Key("listeners"), Step::Key("admin")],
            "the admin listener must differ from the public one".into(),
        ));
    }
    let threads = match file.server.threads {
        Some(0) => {
            return Err(cx.err(
                &[Step::Key("server"), Step::Key("threads")],
                "threads must be at least 1".into(),
            ))
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if let Some(u) = &file.http.public_url {
        let ok = u
            .parse::<Uri>()
            .ok()
            .filter(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            })
            .is_some_and(|uri| uri.path() == "/" || uri.path().is_empty());
        if !ok {
            return Err(cx.err(
                &[Step::Key("http"), Step::Key("public_url")],
                format!("`{u}` must be an absolute http(s) URL without a path, e.g. https://mcp.example.com"),
            ));
        }
    }
    let max_body_size = file.http.max_body_size.0;
    if max_body_size == 0 || max_body_size > 1 << 30 {
        return Err(cx.err(
            &[Step::Key("http"), Step::Key("max_body_size")],
            "max_body_size must be between 1 byte and 1GiB".into(),
        ));
    }

    let mut upstreams = Vec::with_capacity(file.upstreams.len());
    for (name, up) in &file.upstreams {
        let at = |k: &'static str| [Step::Key("upstreams"), Step::Key(name), Step::Key(k)];
        let uri: Uri = up
            .url
            .parse()
            .map_err(|e| cx.err(&at("url"), format!("`{}` is not a URL: {e}", up.url)))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(cx.err(
                    &at("url"),
                    "https upstreams are not supported yet; use http inside the cluster".into(),
                ))
            }
            _ => {
                return Err(cx.err(
                    &at("url"),
                    format!("`{}` must be an absolute http:// URL", up.url),
                ))
            }
        }
        let Some(authority) = uri.authority() else {
            return Err(cx.err(&at("url"), format!("`{}` has no host", up.url)));
        };
        let host_port = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let targets: Vec<&str> = if up.endpoints.is_empty() {
            vec![host_port.as_str()]
        } else {
            up.endpoints.iter().map(String::as_str).collect()
        };
        let mut endpoints = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let steps = if up.endpoints.is_empty() {
                at("url").to_vec()
            } else {
                vec![
                    Step::Key("upstreams"),
                    Step::Key(name),
                    Step::Key("endpoints"),
                    Step::Index(i),
                ]
            };
            let resolved = t
                .to_socket_addrs()
                .map_err(|e| cx.err(&steps, format!("cannot resolve `{t}`: {e}")))?;
            let before = endpoints.len();
            endpoints.extend(resolved);
            if endpoints.len() == before {
                return Err(cx.err(&steps, format!("`{t}` resolves to no address")));
            }
        }
        for (k, d) in [
            ("connect_timeout", up.connect_timeout),
            ("read_timeout", up.read_timeout),
            ("write_timeout", up.write_timeout),
            ("idle_timeout", up.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(cx.err(&at(k), format!("{k} must be more than zero")));
            }
        }
        let mut headers = Vec::with_capacity(up.headers.len());
        for (k, v) in &up.headers {
            let hat = [
                Step::Key("upstreams"),
                Step::Key(name),
                Step::Key("headers"),
                Step::Key(k),
            ];
            let hn = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| cx.err(&hat, format!("`{k}` is not a valid header name")))?;
            if is_reserved_header(hn.as_str()) {
                return Err(cx.err(
                    &hat,
                    format!("`{k}` is set by the gateway and cannot be configured"),
                ));
            }
            let hv = HeaderValue::from_str(v).map_err(|_| {
                cx.err(
                    &hat,
                    format!("the value of `{k}` is not a valid header value"),
                )
            })?;
            headers.push((hn, hv));
        }
        if let Some(cred) = &up.credential {
            headers.push(credential_header(&cx, name, cred)?);
        }
        let identity_headers = identity_headers(&cx, name, &up.identity_headers, &headers)?;
        let concurrency = match &up.concurrency {
            Some(g) => Some(crate::traffic::gate(&cx, &at("concurrency"), g)?),
            None => None,
        };
        let tools = crate::traffic::tools(&cx, name, &up.tools)?;
        let breaker = match &up.breaker {
            Some(b) => Some(crate::traffic::breaker(&cx, name, b)?),
            None => None,
        };
        upstreams.push(Upstream {
            name: name.clone(),
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
            endpoints,
            connect_timeout: up.connect_timeout,
            read_timeout: up.read_timeout,
            write_timeout: up.write_timeout,
            idle_timeout: up.idle_timeout,
            headers,
            identity_headers,
            trust_annotations: up.trust_annotations,
            concurrency,
            tools,
            breaker,
        });
    }

    if file.routes.is_empty() {
        return Err(cx.err(
            &[],
            "no routes: add at least one entry under `routes:`".into(),
        ));
    }
    let mut seen = HashSet::new();
    let mut routes = Vec::with_capacity(file.routes.len());
    // Part of the version: a policy edit is a new config version.
    let mut policy_texts: Vec<String> = Vec::new();
    for (i, r) in file.routes.iter().enumerate() {
        let at = |k: &'static str| [Step::Key("routes"), Step::Index(i), Step::Key(k)];
        if !r.path.starts_with('/') || r.path.contains(['?', '#', ' ']) {
            return Err(cx.err(
                &at("path"),
                format!(
                    "`{}` must be an absolute path without query or fragment",
                    r.path
                ),
            ));
        }
        if r.path.starts_with("/.well-known/") {
            return Err(cx.err(&at("path"), "/.well-known/ is reserved".into()));
        }
        if !seen.insert(r.path.as_str()) {
            return Err(cx.err(&at("path"), format!("`{}` is routed twice", r.path)));
        }
        let Some(upstream) = upstreams.iter().position(|u| u.name == r.upstream) else {
            return Err(cx.err(
                &at("upstream"),
                format!("no upstream named `{}` under `upstreams:`", r.upstream),
            ));
        };
        let auth = match &r.auth {
            Some(a) => Some(std::sync::Arc::new(crate::auth::compile(
                path,
                text,
                i,
                a,
                file.http.public_url.as_deref(),
                &r.path,
            )?)),
            None => None,
        };
        let policy_path = r.policy.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                path.parent().map_or_else(|| p.clone(), |d| d.join(p))
            }
        });
        let policy = match &policy_path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::io(p, e))?;
                policy_texts.push(text.clone());
                Some(std::sync::Arc::new(crate::policy::policy_from_str(
                    p, &text,
                )?))
            }
            None => None,
        };
        let rate_limits =
            crate::traffic::rate_limits(&cx, i, &r.rate_limits, file.redis.is_some())?;
        routes.push(crate::Route {
            name: r.name.clone().unwrap_or_else(|| r.path.clone()),
            path: r.path.clone(),
            upstream,
            auth,
            policy,
            policy_path,
            rate_limits,
        });
    }

    let (session_key, previous_session_key) = session_keys(&cx, &file.sessions)?;

    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    for t in &policy_texts {
        hasher.update((t.len() as u64).to_be_bytes());
        hasher.update(t.as_bytes());
    }
    let digest = hasher.finalize();
    let version = digest
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect::<String>();

    Ok(Config {
        source: path.to_owned(),
        version,
        public_addr,
        admin_addr,
        threads,
        grace_period: file.server.grace_period,
        work_stealing: file.server.work_stealing,
        max_body_size,
        body_timeout: file.http.body_timeout,
        allowed_origins: file
            .http
            .allowed_origins
            .iter()
            .map(|o| OriginRule::parse(o))
            .collect(),
        allowed_hosts: file
            .http
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        public_url: file
            .http
            .public_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_owned()),
        access_log: file.access_log,
        audit_log: file.audit_log,
        routes,
        upstreams,
        session_key,
        previous_session_key,
        admission: crate::traffic::admission(&cx, &file.admission)?,
        redis: match &file.redis {
            Some(r) => Some(crate::traffic::redis(&cx, r)?),
            None => None,
        },
    })
}

/// Reads `sessions.key_file|key_env` and `sessions.previous_key_file|previous_key_env`.
fn session_keys(
    cx: &Ctx<'_>,
    f: &crate::file::SessionsFile,
) -> Result<(Option<SessionKey>, Option<SessionKey>), ConfigError> {
    let current = one_session_key(
        cx,
        f.key_file.as_deref(),
        f.key_env.as_deref(),
        ("key_file", "key_env"),
    )?;
    let previous = one_session_key(
        cx,
        f.previous_key_file.as_deref(),
        f.previous_key_env.as_deref(),
        ("previous_key_file", "previous_key_env"),
    )?;
    if previous.is_some() && current.is_none() {
        let at = [Step::Key("sessions")];
        return Err(cx.err(
            &at,
            "a previous key needs a current one (key_file or key_env)".into(),
        ));
    }
    Ok((current, previous))
}

fn one_session_key(
    cx: &Ctx<'_>,
    file: Option<&std::path::Path>,
    env: Option<&str>,
    keys: (&'static str, &'static str),
) -> Result<Option<SessionKey>, ConfigError> {
    let at = |k: &'static str| [Step::Key("sessions"), Step::Key(k)];
    if file.is_none() && env.is_none() {
        return Ok(None);
    }
    let key = read_secret(
        cx,
        file,
        env,
        (&at(keys.0), &at(keys.1), &[Step::Key("sessions")]),
    )?;
    if key.len() < MIN_SESSION_KEY_LEN {
        let which = if file.is_some() { keys.0 } else { keys.1 };
        return Err(cx.err(
            &at(which),
            format!(
                "the key has {} bytes; use at least {MIN_SESSION_KEY_LEN} (e.g. `openssl rand -hex 32`)",
                key.len()
            ),
        ));
    }
    Ok(Some(SessionKey(key.into_bytes())))
}

/// A secret from a file (relative to the config file; trailing newlines dropped) or an
/// environment variable: exactly one of the two. `at` is where errors point: the file
/// key, the env key, and the block (for "give exactly one").
fn read_secret(
    cx: &Ctx<'_>,
    file: Option<&std::path::Path>,
    env: Option<&str>,
    at: (&[Step<'_>], &[Step<'_>], &[Step<'_>]),
) -> Result<String, ConfigError> {
    let (at_file, at_env, at_block) = at;
    match (file, env) {
        (Some(file), None) => {
            let full = if file.is_absolute() {
                file.to_owned()
            } else {
                cx.path
                    .parent()
                    .map_or_else(|| file.to_owned(), |d| d.join(file))
            };
            Ok(std::fs::read_to_string(&full)
                .map_err(|e| cx.err(at_file, format!("cannot read {}: {e}", file.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_owned())
        }
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| cx.err(at_env, format!("environment variable {var} is not set"))),
        _ => Err(cx.err(
            at_block,
            "give exactly one of the file and the environment variable".into(),
        )),
    }
}

/// Checks `upstreams.<name>.identity_headers`: valid names, none the gateway sets or
/// the upstream's own headers already use, no name twice.
fn identity_headers(
    cx: &Ctx<'_>,
    name: &str,
    f: &crate::file::IdentityHeadersFile,
    fixed: &[(HeaderName, HeaderValue)],
) -> Result<IdentityHeaders, ConfigError> {
    let mut seen: Vec<HeaderName> = Vec::new();
    let mut check = |key: &str, value: &str| -> Result<HeaderName, ConfigError> {
        let mut at = vec![
            Step::Key("upstreams"),
            Step::Key(name),
            Step::Key("identity_headers"),
        ];
        let leaf = key.strip_prefix("claims.");
        match leaf {
            Some(claim) => at.extend([Step::Key("claims"), Step::Key(claim)]),
            None => at.push(Step::Key(key)),
        }
        let hn = HeaderName::from_bytes(value.as_bytes())
            .map_err(|_| cx.err(&at, format!("`{value}` is not a valid header name")))?;
        let n = hn.as_str();
        if is_reserved_header(n)
            || matches!(
                n,
                "authorization" | "cookie" | "x-api-key" | "x-forwarded-for"
            )
            || fixed.iter().any(|(h, _)| *h == hn)
        {
            return Err(cx.err(
                &at,
                format!("`{n}` is already set by the gateway or this upstream's headers"),
            ));
        }
        if seen.contains(&hn) {
            return Err(cx.err(&at, format!("`{n}` is used twice")));
        }
        seen.push(hn.clone());
        Ok(hn)
    };
    let mut one = |key: &str, v: &Option<String>| v.as_deref().map(|v| check(key, v)).transpose();
    let subject = one("subject", &f.subject)?;
    let issuer = one("issuer", &f.issuer)?;
    let groups = one("groups", &f.groups)?;
    let scopes = one("scopes", &f.scopes)?;
    let mut claims = Vec::with_capacity(f.claims.len());
    for (path, header) in &f.claims {
        claims.push((path.clone(), check(&format!("claims.{path}"), header)?));
    }
    Ok(IdentityHeaders {
        subject,
        issuer,
        groups,
        scopes,
        claims,
    })
}

/// Reads an upstream credential into the header it is sent as.
fn credential_header(
    cx: &Ctx<'_>,
    name: &str,
    cred: &crate::file::CredentialFile,
) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let at = |k: &'static str| {
        [
            Step::Key("upstreams"),
            Step::Key(name),
            Step::Key("credential"),
            Step::Key(k),
        ]
    };
    let hn = HeaderName::from_bytes(cred.header.as_bytes()).map_err(|_| {
        cx.err(
            &at("header"),
            format!("`{}` is not a header name", cred.header),
        )
    })?;
    if is_reserved_header(hn.as_str()) {
        return Err(cx.err(&at("header"), format!("`{hn}` is set by the gateway")));
    }
    let secret = read_secret(
        cx,
        cred.value_file.as_deref(),
        cred.value_env.as_deref(),
        (&at("value_file"), &at("value_env"), &at("header")),
    )?;
    if secret.is_empty() {
        return Err(cx.err(&at("header"), "the credential is empty".into()));
    }
    let scheme = match &cred.scheme {
        Some(s) => Some(s.as_str()),
        None if hn == http::header::AUTHORIZATION => Some("Bearer"),
        None => None,
    };
    let text = match scheme {
        Some(s) if !s.is_empty() => format!("{s} {secret}"),
        _ => secret,
    };
    let mut value = HeaderValue::from_str(&text).map_err(|_| {
        cx.err(
            &at("header"),
            "the credential is not a valid header value".into(),
        )
    })?;
    value.set_sensitive(true);
    Ok((hn, value))
}

fn parse_addr(cx: &Ctx<'_>, value: &str, key: &'static str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        cx.err(
            &[Step::Key("listeners"), Step::Key(key)],
            format!("`{value}` is not an address such as 0.0.0.0:8080"),
        )
    })
}

/// Headers the gateway owns on the way upstream.
fn is_reserved_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "content-type"
            | "accept"
            | "mcp-session-id"
            | "mcp-protocol-version"
            | "mcp-method"
            | "mcp-name"
    ) || portcullis_hop_by_hop(name)
}

fn portcullis_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        crate::load_str(Path::new("gw.yaml"), text)
    }

    const GOOD: &str = "\
listeners:
  public: 127.0.0.1:0
  admin: 127.0.0.1:1
routes:
  - path: /mcp
    upstream: demo
upstreams:
  demo:
    url: http://127.0.0.1:3001/mcp
    connect_timeout: 1s
    headers:
      x-api-key: abc
";

    #[test]
    fn a_good_file_validates_with_defaults_filled_in() {
        let c = load(GOOD).expect("valid");
        assert_eq!(c.routes[0].path, "/mcp");
        assert_eq!(c.upstreams[0].path, "/mcp");
        assert_eq!(c.upstreams[0].authority, "127.0.0.1:3001");
        assert_eq!(c.upstreams[0].connect_timeout, Duration::from_secs(1));
        assert_eq!(c.upstreams[0].read_timeout, Duration::from_secs(300));
        assert_eq!(c.max_body_size, 4 << 20);
        assert_eq!(c.version.len(), 12);
        assert!(c.route("/mcp").is_some() && c.route("/other").is_none());
    }

    fn err(text: &str) -> ConfigError {
        load(text).expect_err("should be refused")
    }

    #[test]
    fn unknown_keys_name_line_and_key() {
        let e = err(&GOOD.replace("connect_timeout: 1s", "conect_timeout: 1s"));
        assert_eq!(e.line, Some(10), "{e}");
        assert_eq!(
            e.key.as_deref(),
            Some("upstreams.demo.conect_timeout"),
            "{e}"
        );
        assert!(
            e.message.starts_with("unknown field `conect_timeout`"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("gw.yaml:10:5: key `upstreams.demo.conect_timeout`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let e = err(&GOOD.replace("1s", "soon"));
        assert_eq!(e.line, Some(10), "{e}");
        assert_eq!(
            e.key.as_deref(),
            Some("upstreams.demo.connect_timeout"),
            "{e}"
        );
    }

    #[test]
    fn dangling_upstream_reference_names_the_route_line() {
        let e = err(&GOOD.replace("upstream: demo", "upstream: nope"));
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.key.as_deref(), Some("routes[0].upstream"), "{e}");
    }

    #[test]
    fn semantic_errors_are_refused() {
        for (from, to, key) in [
            (
                "http://127.0.0.1:3001/mcp",
                "https://x/mcp",
                "upstreams.demo.url",
            ),
            (
                "http://127.0.0.1:3001/mcp",
                "/relative",
                "upstreams.demo.url",
            ),
            ("path: /mcp", "path: mcp", "routes[0].path"),
            ("path: /mcp", "path: /.well-known/x", "routes[0].path"),
            ("x-api-key: abc", "host: abc", "upstreams.demo.headers.host"),
            (
                "x-api-key: abc",
                "\"bad name\": abc",
                "upstreams.demo.headers.bad name",
            ),
            ("public: 127.0.0.1:0", "public: nowhere", "listeners.public"),
            (
                "public: 127.0.0.1:0\n  admin: 127.0.0.1:1",
                "public: 127.0.0.1:5\n  admin: 127.0.0.1:5",
                "listeners.admin",
            ),
            (
                "connect_timeout: 1s",
                "connect_timeout: 0s",
                "upstreams.demo.connect_timeout",
            ),
        ] {
            let e = err(&GOOD.replace(from, to));
            assert_eq!(e.key.as_deref(), Some(key), "{from} -> {to}: {e}");
            assert!(e.line.is_some(), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn upstream_credentials_are_read_from_a_file_or_the_environment() {
        let dir = std::env::temp_dir().join(format!("portcullis-cred-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("token"), "s3cret\n").expect("write");
        let with = |cred: &str| {
            GOOD.replace(
                "      x-api-key: abc\n",
                &format!("      x-api-key: abc\n    credential:\n{cred}"),
            )
        };
        let path = dir.join("gw.yaml");
        let c = crate::load_str(&path, &with("      value_file: token\n")).expect("valid");
        let (name, value) = c.upstreams[0].headers.last().expect("credential header");
        assert_eq!(name.as_str(), "authorization");
        assert_eq!(value.to_str().ok(), Some("Bearer s3cret"));
        assert!(value.is_sensitive(), "never printed in Debug output");
        let c = crate::load_str(
            &path,
            &with("      header: x-api-token\n      value_file: token\n"),
        )
        .expect("valid");
        let (name, value) = c.upstreams[0].headers.last().expect("credential header");
        assert_eq!(
            (name.as_str(), value.to_str().ok()),
            ("x-api-token", Some("s3cret"))
        );
        for (cred, key) in [
            (
                "      value_file: missing\n",
                "upstreams.demo.credential.value_file",
            ),
            (
                "      value_env: PORTCULLIS_SURELY_UNSET\n",
                "upstreams.demo.credential.value_env",
            ),
            (
                "      header: host\n      value_file: token\n",
                "upstreams.demo.credential.header",
            ),
            (
                "      header: authorization\n",
                "upstreams.demo.credential.header",
            ),
        ] {
            let e = crate::load_str(&path, &with(cred)).expect_err("refused");
            assert_eq!(e.key.as_deref(), Some(key), "{cred}: {e}");
        }
    }

    #[test]
    fn identity_headers_must_be_new_valid_names() {
        let with = |ih: &str| {
            GOOD.replace(
                "      x-api-key: abc\n",
                &format!("      x-api-key: abc\n    identity_headers:\n{ih}"),
            )
        };
        let c = crate::load_str(
            Path::new("gw.yaml"),
            &with("      subject: x-user\n      claims:\n        tenant: x-tenant\n"),
        )
        .expect("valid");
        let names: Vec<&str> = c.upstreams[0]
            .identity_headers
            .names()
            .map(|h| h.as_str())
            .collect();
        assert_eq!(names, ["x-user", "x-tenant"]);
        for (ih, key) in [
            (
                "      subject: authorization\n",
                "upstreams.demo.identity_headers.subject",
            ),
            (
                "      groups: mcp-session-id\n",
                "upstreams.demo.identity_headers.groups",
            ),
            (
                "      scopes: x-api-key\n",
                "upstreams.demo.identity_headers.scopes",
            ),
            (
                "      issuer: \"bad name\"\n",
                "upstreams.demo.identity_headers.issuer",
            ),
            (
                "      subject: x-u\n      issuer: x-u\n",
                "upstreams.demo.identity_headers.issuer",
            ),
            (
                "      claims:\n        tenant: connection\n",
                "upstreams.demo.identity_headers.claims.tenant",
            ),
            (
                "      role: x-role\n",
                "upstreams.demo.identity_headers.role",
            ),
        ] {
            let e = crate::load_str(Path::new("gw.yaml"), &with(ih)).expect_err("refused");
            assert_eq!(e.key.as_deref(), Some(key), "{ih}: {e}");
            assert!(e.line.is_some(), "{e}");
        }
    }

    #[test]
    fn the_session_key_comes_from_a_file_or_the_environment_and_must_be_long() {
        let dir = std::env::temp_dir().join(format!("portcullis-skey-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let long = "k".repeat(MIN_SESSION_KEY_LEN);
        std::fs::write(dir.join("key"), format!("{long}\n")).expect("write");
        std::fs::write(dir.join("short"), "tiny").expect("write");
        let path = dir.join("gw.yaml");
        let with = |s: &str| format!("{GOOD}sessions:\n{s}");
        assert!(crate::load_str(&path, GOOD)
            .expect("valid")
            .session_key
            .is_none());
        let c = crate::load_str(&path, &with("  key_file: key\n")).expect("valid");
        assert_eq!(
            c.session_key.as_ref().map(SessionKey::bytes),
            Some(long.as_bytes())
        );
        assert!(!format!("{c:?}").contains(&long), "never printed");
        let c = crate::load_str(&path, &with("  key_file: key\n  previous_key_env: PATH\n"));
        // PATH is set but may be short; the point is the key is read from the environment.
        if let Ok(c) = c {
            assert!(c.previous_session_key.is_some());
        }
        for (sessions, key) in [
            ("  key_file: short\n", "sessions.key_file"),
            ("  key_file: missing\n", "sessions.key_file"),
            ("  key_env: PORTCULLIS_SURELY_UNSET\n", "sessions.key_env"),
            ("  key_file: key\n  key_env: X\n", "sessions"),
            ("  key: x\n", "sessions.key"),
            ("  previous_key_file: key\n", "sessions"),
            (
                "  key_file: key\n  previous_key_file: short\n",
                "sessions.previous_key_file",
            ),
        ] {
            let e = crate::load_str(&path, &with(sessions)).expect_err("refused");
            assert_eq!(e.key.as_deref(), Some(key), "{sessions}: {e}");
        }
    }

    #[test]
    fn duplicate_routes_and_empty_route_lists_are_refused() {
        let dup = GOOD.replace("routes:\n", "routes:\n  - path: /mcp\n    upstream: demo\n");
        assert_eq!(err(&dup).key.as_deref(), Some("routes[1].path"));
        let none = "routes: []\n";
        assert!(err(none).message.contains("no routes"));
    }

    #[test]
    fn hostile_yaml_is_an_error_not_a_panic() {
        for text in [
            "",
            "::::",
            "routes: [",
            "\u{0}\u{1}",
            "routes: !!binary aGk=",
            "a: &a [*a]",
            "routes:\n  - path: /x\n    upstream: [1, 2]\n",
            &"[".repeat(10_000),
        ] {
            assert!(load(text).is_err(), "{text:?}");
        }
    }

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
}
