//! Drives wrk and h2load (Debian's packages) and reads their req/s and latency
//! percentiles.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One measurement.
#[derive(Clone, Copy, Default, Debug)]
pub struct Result {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

/// An HS256 token for the JWT target (issuer and audience `bench`, scope `mcp:tools`).
pub fn token(secret: &[u8]) -> std::result::Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = serde_json::json!({"iss": "bench", "aud": "bench", "sub": "bench",
        "scope": "mcp:tools", "iat": now, "exp": now + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// Writes the wrk Lua script that sends a valid 2026-07-28 tools/call, with a bearer
/// token when given.
pub fn script(dir: &Path, name: &str, token: Option<&str>) -> std::result::Result<PathBuf, String> {
    script_of(dir, name, BODY, "tools/call", Some("echo"), token)
}

/// A 2026-07-28 `tools/call` of `tool` (a federated route's prefixed name, say).
pub fn script_call(dir: &Path, name: &str, tool: &str) -> std::result::Result<PathBuf, String> {
    let body = BODY.replace(r#""name":"echo""#, &format!(r#""name":"{tool}""#));
    script_of(dir, name, &body, "tools/call", Some(tool), None)
}

/// A 2026-07-28 `tools/list`.
pub fn script_list(dir: &Path, name: &str) -> std::result::Result<PathBuf, String> {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    script_of(dir, name, body, "tools/list", None, None)
}

fn script_of(
    dir: &Path,
    name: &str,
    body: &str,
    method: &str,
    target: Option<&str>,
    token: Option<&str>,
) -> std::result::Result<PathBuf, String> {
    let path = dir.join(format!("{name}.lua"));
    let mut lua = format!(
        "wrk.method = \"POST\"\nwrk.path = \"/mcp\"\nwrk.body = [[{body}]]\n\
wrk.headers[\"Content-Type\"] = \"application/json\"\n\
wrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\n\
wrk.headers[\"MCP-Protocol-Version\"] = \"2026-07-28\"\n\
wrk.headers[\"Mcp-Method\"] = \"{method}\"\n"
    );
    if let Some(t) = target {
        lua.push_str(&format!("wrk.headers[\"Mcp-Name\"] = \"{t}\"\n"));
    }
    if let Some(t) = token {
        lua.push_str(&format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {t}\"\n"
        ));
    }
    std::fs::write(&path, lua).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Like [`script`], with `Connection: close`: every request opens a new connection
/// (over https, a new TLS handshake).
pub fn script_closing(dir: &Path, name: &str) -> std::result::Result<PathBuf, String> {
    let path = script(dir, name, None)?;
    let mut lua = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    lua.push_str("wrk.headers[\"Connection\"] = \"close\"\n");
    std::fs::write(&path, lua).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Writes the request body alone (for h2load's `-d`).
pub fn body_file(dir: &Path) -> std::result::Result<PathBuf, String> {
    let path = dir.join("call.json");
    std::fs::write(&path, BODY).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Runs wrk for `seconds` with `conns` connections on one thread against `base`
/// (`http://host:port` or `https://host:port`; wrk does not verify certificates).
pub fn wrk(
    script: &Path,
    base: &str,
    conns: usize,
    seconds: u64,
) -> std::result::Result<Result, String> {
    let addr = base;
    let out = Command::new("wrk")
        .args(["-t1", "--latency"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(script)
        .arg(format!("{base}/mcp"))
        .output()
        .map_err(|e| format!("wrk: {e} (install it: apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        return Err(format!("{addr} answered errors under load:\n{text}"));
    }
    let mut r = Result::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_us = micros(v.trim());
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_us = micros(v.trim());
        }
    }
    if r.rps == 0.0 {
        return Err(format!("could not read wrk's output for {addr}:\n{text}"));
    }
    Ok(r)
}

/// Runs h2load (nghttp2's HTTP/2 load generator) for `seconds`: `clients` connections,
/// each with up to `streams` requests in flight, POSTing `body` to `url`. Only req/s is
/// read (h2load reports no percentiles).
pub fn h2load(
    body: &Path,
    url: &str,
    clients: usize,
    streams: usize,
    seconds: u64,
) -> std::result::Result<Result, String> {
    let out = Command::new("h2load")
        .arg(format!("-c{clients}"))
        .arg(format!("-m{streams}"))
        .arg(format!("-D{seconds}"))
        .arg("-d")
        .arg(body)
        .args([
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-H",
            "mcp-protocol-version: 2026-07-28",
            "-H",
            "mcp-method: tools/call",
            "-H",
            "mcp-name: echo",
        ])
        .arg(url)
        .output()
        .map_err(|e| format!("h2load: {e} (install it: apt-get install nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = Result::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("finished in") {
            r.rps = rest
                .split(',')
                .nth(1)
                .and_then(|v| v.trim().strip_suffix("req/s"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
        } else if let Some(rest) = t.strip_prefix("status codes:") {
            let non_2xx = rest
                .split(',')
                .filter(|p| !p.contains("2xx"))
                .any(|p| p.split_whitespace().next().is_some_and(|n| n != "0"));
            if non_2xx {
                return Err(format!("{url} answered errors under h2 load:\n{text}"));
            }
        }
    }
    if r.rps == 0.0 {
        return Err(format!("could not read h2load's output for {url}:\n{text}"));
    }
    Ok(r)
}

/// The per-field median of several measurements.
pub fn median(runs: &[Result]) -> Result {
    let mid = |f: fn(&Result) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    Result {
        rps: mid(|r| r.rps),
        p50_us: mid(|r| r.p50_us),
        p99_us: mid(|r| r.p99_us),
    }
}

fn micros(v: &str) -> f64 {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().unwrap_or(0.0);
    match unit {
        "us" => n,
        "ms" => n * 1_000.0,
        "s" => n * 1_000_000.0,
        _ => n,
    }
}

/// The CPU model from /proc/cpuinfo, for the record.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
