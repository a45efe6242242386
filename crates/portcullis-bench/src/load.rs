//! Drives wrk (Debian's package) and reads its req/s and latency percentiles.

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
    let path = dir.join(format!("{name}.lua"));
    let mut lua = format!(
        "wrk.method = \"POST\"\nwrk.path = \"/mcp\"\nwrk.body = [[{BODY}]]\n\
wrk.headers[\"Content-Type\"] = \"application/json\"\n\
wrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\n\
wrk.headers[\"MCP-Protocol-Version\"] = \"2026-07-28\"\n\
wrk.headers[\"Mcp-Method\"] = \"tools/call\"\n\
wrk.headers[\"Mcp-Name\"] = \"echo\"\n"
    );
    if let Some(t) = token {
        lua.push_str(&format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {t}\"\n"
        ));
    }
    std::fs::write(&path, lua).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Runs wrk for `seconds` with `conns` connections on one thread.
pub fn wrk(
    script: &Path,
    addr: &str,
    conns: usize,
    seconds: u64,
) -> std::result::Result<Result, String> {
    let out = Command::new("wrk")
        .args(["-t1", "--latency"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}/mcp"))
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
