//! Turns a parsed [`ConfigFile`] into a [`Config`] ready to serve, one section at a
//! time: each section's module checks its own keys under the [`Scope`] it is given, so
//! every error names the file, the line and the key. A config either validates whole
//! or is refused with the first error found.

mod auth;
mod federation;
mod http;
mod listeners;
mod routes;
mod secret;
mod sessions;
mod tls;
mod traffic;
mod upstreams;

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::file::ConfigFile;
use crate::model::Config;
use crate::scope::{Scope, Source};

/// Upper bound for counts an operator writes (slots, queue places, burst, caps).
const MAX_COUNT: usize = 1_000_000;

pub(crate) fn validate(path: &Path, text: &str, file: ConfigFile) -> Result<Config, ConfigError> {
    let src = Source { path, text };
    let root = Scope::root(&src);
    let listen = listeners::listeners(&root.key("listeners"), &file.listeners)?;
    let server = listeners::server(&root.key("server"), &file.server)?;
    let http = http::http(&root.key("http"), &file.http)?;
    let at_upstreams = root.key("upstreams");
    let mut upstreams = Vec::with_capacity(file.upstreams.len());
    for (name, up) in &file.upstreams {
        upstreams.push(upstreams::upstream(&at_upstreams.key(name), name, up)?);
    }
    let routed = routes::routes(
        &root.key("routes"),
        &file.routes,
        &upstreams,
        http.public_url.as_deref(),
        file.redis.is_some(),
    )?;
    let client_certs = listen.tls.as_ref().is_some_and(|t| t.client_auth.is_some());
    for (i, r) in file.routes.iter().enumerate() {
        let asks = r
            .auth
            .as_ref()
            .is_some_and(|a| a.client_certificate.is_some());
        if asks && !client_certs {
            return Err(root
                .key("routes")
                .index(i)
                .key("auth")
                .key("client_certificate")
                .err("client certificates need listeners.tls.client_certificates (the CAs that sign them)"));
        }
    }
    let (session_key, previous_session_key) =
        sessions::keys(&root.key("sessions"), &file.sessions)?;
    if file.sessions.ttl < std::time::Duration::from_secs(60) {
        return Err(root
            .key("sessions")
            .key("ttl")
            .err("ttl must be at least 1m (sessions would expire under their clients)"));
    }
    let admission = traffic::admission(&root.key("admission"), &file.admission)?;
    let redis = match &file.redis {
        Some(r) => Some(traffic::redis(&root.key("redis"), r)?),
        None => None,
    };
    let mut config = Config {
        source: path.to_owned(),
        version: String::new(),
        public_addr: listen.public,
        tls: listen.tls,
        admin_addr: listen.admin,
        threads: server.threads,
        grace_period: server.grace_period,
        work_stealing: server.work_stealing,
        http,
        access_log: file.access_log.clone(),
        audit_log: file.audit_log.clone(),
        routes: routed.routes,
        upstreams,
        session_key,
        previous_session_key,
        session_ttl: file.sessions.ttl,
        admission,
        redis,
    };
    config.version = version(text, &routed.policy_texts, &config.tls_files());
    Ok(config)
}

/// A short hash of the file, the policy files it names and its TLS files: a policy
/// edit or a rotated certificate is a new config version.
fn version(text: &str, policy_texts: &[String], tls_files: &[std::path::PathBuf]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    for t in policy_texts {
        hasher.update((t.len() as u64).to_be_bytes());
        hasher.update(t.as_bytes());
    }
    for f in tls_files {
        // Read again after loading: a rotation racing this read makes another file
        // event, and the next load sees the settled content.
        let bytes = std::fs::read(f).unwrap_or_default();
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(&bytes);
    }
    hasher
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::{Config, ConfigError};

    fn load(text: &str) -> Result<Config, ConfigError> {
        crate::load_str(Path::new("gw.yaml"), text)
    }

    pub(super) const GOOD: &str = "\
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
        assert_eq!(c.http.max_body_size, 4 << 20);
        assert_eq!(c.http.write_timeout, Duration::from_secs(30));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(75));
        assert_eq!(c.http.header_timeout, Duration::from_secs(10));
        assert_eq!(c.http.stream_keepalive, Duration::from_secs(15));
        assert_eq!(c.admission.max_connections, 10_000);
        assert_eq!(c.session_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.http.h2_max_streams, 100);
        assert!(!c.http.h2c);
        assert_eq!(c.public_addr.map(|a| a.port()), Some(0));
        assert!(c.tls.is_none());
        let e = load(&format!("{GOOD}sessions:\n  ttl: 30s\n")).expect_err("too short");
        assert_eq!(e.key.as_deref(), Some("sessions.ttl"), "{e}");
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
    fn duplicate_keys_name_the_duplicate_and_its_line() {
        let e = err(&GOOD.replace(
            "    connect_timeout: 1s\n",
            "    connect_timeout: 1s\n    connect_timeout: 2s\n",
        ));
        assert_eq!(e.line, Some(11), "{e}");
        assert_eq!(
            e.key.as_deref(),
            Some("upstreams.demo.connect_timeout"),
            "{e}"
        );
        assert!(e.message.contains("duplicate"), "{e}");
        let e = err(&GOOD.replace("routes:\n", "routes:\n  - path: /x\n    path: /y\n"));
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.key.as_deref(), Some("routes[0].path"), "{e}");
        let e = err(&format!("{GOOD}listeners:\n  public: 127.0.0.1:2\n"));
        assert_eq!(e.line, Some(13), "{e}");
        assert_eq!(e.key.as_deref(), Some("listeners"), "{e}");
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
            &"a:\n ".repeat(5_000),
            "routes:\n- path: /x\n  path: /y\n  path: /z\n",
        ] {
            assert!(load(text).is_err(), "{text:?}");
        }
    }
}
