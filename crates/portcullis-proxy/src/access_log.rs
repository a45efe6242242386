//! The structured access log: one JSON line per request. Lines are formatted on the
//! request's thread into a reused buffer and appended to a shared batch; a writer
//! thread writes the batch every 50 ms (sooner when it grows past 64 KiB). A request
//! never waits on the disk and never wakes another thread. The batch is bounded: past
//! 8 MiB unwritten, lines are dropped and counted (`portcullis_access_log_dropped_total`).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};
use sha2::{Digest, Sha256};

/// Unwritten bytes beyond which new lines are dropped.
pub const MAX_PENDING: usize = 8 << 20;
/// Pending bytes that wake the writer before its next tick.
const WAKE_AT: usize = 64 << 10;
/// How often the writer writes what is pending.
const TICK: Duration = Duration::from_millis(50);

struct Shared {
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
    sink: Mutex<Box<dyn Write + Send>>,
    dropped: prometheus::IntCounter,
}

impl Shared {
    /// Writes everything pending now.
    fn flush(&self) {
        let batch = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return;
        }
        let mut sink = self.sink.lock();
        let _ = sink.write_all(&batch);
        let _ = sink.flush();
    }
}

/// Where lines go, as configured by `access_log.output`.
#[derive(Clone)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
}

/// The facts of one finished request.
#[derive(Default)]
pub struct Record<'a> {
    /// The route's name, if a route matched.
    pub route: Option<&'a str>,
    /// GET, POST, DELETE...
    pub http_method: &'a str,
    /// The JSON-RPC method (or `batch`).
    pub rpc_method: Option<&'a str>,
    /// The JSON-RPC id's JSON text.
    pub rpc_id: Option<&'a str>,
    /// Tool name, prompt name or resource URI.
    pub target: Option<&'a str>,
    /// The HTTP status sent.
    pub status: u16,
    /// Request start to response end.
    pub duration: Duration,
    /// The upstream's name, if one was chosen.
    pub upstream: Option<&'a str>,
    /// The endpoint dialled.
    pub endpoint: Option<SocketAddr>,
    /// The client's `Mcp-Session-Id`, hashed before logging.
    pub session_id: Option<&'a [u8]>,
    /// Request body bytes.
    pub bytes_in: usize,
    /// Response body bytes relayed.
    pub bytes_out: usize,
    /// The refusal or failure reason, if any.
    pub reason: Option<&'a str>,
    /// The client's address.
    pub client: Option<std::net::IpAddr>,
    /// The authenticated caller's subject.
    pub subject: Option<&'a str>,
    /// The policy rule that decided the request (`default` for the policy default).
    pub rule: Option<&'a str>,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl AccessLog {
    /// Starts the writer for `output` (`stdout`, `stderr` or a file path), or a no-op
    /// log when disabled.
    pub fn start(
        enabled: bool,
        output: &str,
        dropped: prometheus::IntCounter,
    ) -> std::io::Result<AccessLog> {
        AccessLog::start_named("access-log", enabled, output, dropped)
    }

    /// Like [`AccessLog::start`], for another stream of JSON lines (the audit log);
    /// `name` names its writer thread.
    pub fn start_named(
        name: &str,
        enabled: bool,
        output: &str,
        dropped: prometheus::IntCounter,
    ) -> std::io::Result<AccessLog> {
        if !enabled {
            return Ok(AccessLog { shared: None });
        }
        let sink: Box<dyn Write + Send> = match output {
            "stdout" | "-" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
            wake: Condvar::new(),
            sink: Mutex::new(sink),
            dropped,
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                {
                    let mut pending = writer.pending.lock();
                    if pending.len() < WAKE_AT {
                        writer.wake.wait_for(&mut pending, TICK);
                    }
                }
                writer.flush();
            })?;
        Ok(AccessLog {
            shared: Some(shared),
        })
    }

    /// Appends one line to the pending batch; never blocks on I/O.
    pub fn write(&self, rec: &Record<'_>) {
        self.write_line(|line| format_into(line, rec));
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Appends the line `fill` writes (it must end with a newline) to the pending batch.
    pub fn write_line(&self, fill: impl FnOnce(&mut String)) {
        let Some(shared) = &self.shared else { return };
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            fill(&mut line);
            let mut pending = shared.pending.lock();
            if pending.len() + line.len() > MAX_PENDING {
                shared.dropped.inc();
                return;
            }
            pending.extend_from_slice(line.as_bytes());
            if pending.len() >= WAKE_AT {
                shared.wake.notify_one();
            }
        });
    }

    /// Writes every pending line now (before the process exits).
    pub fn flush(&self) {
        if let Some(shared) = &self.shared {
            shared.flush();
        }
    }
}

/// A short stable hash of a session id: correlates a session's lines without logging it.
pub fn session_hash(id: &[u8]) -> String {
    let d = Sha256::digest(id);
    d.iter()
        .take(8)
        .fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(crate) fn push_str_field(out: &mut String, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        push_json_str(out, v);
    }
}

thread_local! {
    /// The last second formatted (`2026-12-01T14:22:33`), and which second it was:
    /// log lines of the same second share the calendar arithmetic.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends now as RFC 3339 UTC with milliseconds (`2026-12-01T14:22:33.123Z`).
pub(crate) fn push_timestamp(out: &mut String) {
    let now = SystemTime::now();
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let mut full = humantime::format_rfc3339_seconds(now).to_string();
            // `...:33Z`: keep the part before the zone.
            full.truncate(full.len().saturating_sub(1));
            *cached = (secs, full);
        }
        out.push_str(&cached.1);
    });
    let ms = since.subsec_millis();
    out.push('.');
    for d in [ms / 100, ms / 10 % 10, ms % 10] {
        out.push(char::from(b'0' + d as u8));
    }
    out.push('Z');
}

/// Formats one record as a JSON line (with the trailing newline) onto `out`.
pub fn format_into(out: &mut String, r: &Record<'_>) {
    out.push_str("{\"ts\":\"");
    push_timestamp(out);
    out.push('"');
    push_str_field(out, "route", r.route);
    push_str_field(out, "http_method", Some(r.http_method));
    push_str_field(out, "method", r.rpc_method);
    if let Some(id) = r.rpc_id {
        // Already JSON text (a string or an integer) checked by the envelope parser.
        let _ = write!(out, ",\"id\":{id}");
    }
    push_str_field(out, "target", r.target);
    let _ = write!(
        out,
        ",\"status\":{},\"duration_ms\":{:.3}",
        r.status,
        r.duration.as_secs_f64() * 1000.0
    );
    push_str_field(out, "upstream", r.upstream);
    if let Some(e) = r.endpoint {
        let _ = write!(out, ",\"endpoint\":\"{e}\"");
    }
    if let Some(sid) = r.session_id {
        push_str_field(out, "session", Some(&session_hash(sid)));
    }
    let _ = write!(
        out,
        ",\"bytes_in\":{},\"bytes_out\":{}",
        r.bytes_in, r.bytes_out
    );
    push_str_field(out, "reason", r.reason);
    push_str_field(out, "subject", r.subject);
    push_str_field(out, "rule", r.rule);
    if let Some(c) = r.client {
        let _ = write!(out, ",\"client\":\"{c}\"");
    }
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        for _ in 0..3 {
            let mut out = String::new();
            push_timestamp(&mut out);
            assert_eq!(out.len(), "2026-12-01T14:22:33.123Z".len(), "{out}");
            let parsed = humantime::parse_rfc3339(&out).expect("RFC 3339");
            let off = SystemTime::now()
                .duration_since(parsed)
                .unwrap_or(Duration::ZERO);
            assert!(off < Duration::from_secs(2), "{out} is now");
        }
    }

    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_hostile_strings_escaped() {
        let rec = Record {
            route: Some("/mcp"),
            http_method: "POST",
            rpc_method: Some("tools/call"),
            rpc_id: Some("\"a\\\"b\""),
            target: Some("evil\"\n}{\u{1}\\"),
            status: 200,
            session_id: Some(b"secret-session"),
            ..Record::default()
        };
        let mut line = String::new();
        format_into(&mut line, &rec);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["target"], "evil\"\n}{\u{1}\\");
        assert_eq!(v["id"], "a\"b");
        assert_eq!(v["status"], 200);
        assert_eq!(v["session"].as_str().map(str::len), Some(16));
        assert!(!line.contains("secret-session"));
    }
}
