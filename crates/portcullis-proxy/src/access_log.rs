//! The structured access log: one JSON line per request, written by a background
//! thread so a slow stdout or disk never stalls a request. The queue is bounded; when
//! it is full a line is dropped and counted (`portcullis_access_log_dropped_total`).

use std::fmt::Write as _;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// Lines queued before new ones are dropped.
pub const QUEUE_LINES: usize = 65_536;

/// Where lines go, as configured by `access_log.output`.
pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    dropped: prometheus::IntCounter,
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
    pub endpoint: Option<String>,
    /// The client's `Mcp-Session-Id`, hashed before logging.
    pub session_id: Option<&'a [u8]>,
    /// Request body bytes.
    pub bytes_in: usize,
    /// Response body bytes relayed.
    pub bytes_out: usize,
    /// The refusal or failure reason, if any.
    pub reason: Option<&'a str>,
    /// The client's address.
    pub client: Option<String>,
}

impl AccessLog {
    /// Starts the writer for `output` (`stdout`, `stderr` or a file path), or a no-op
    /// log when disabled.
    pub fn start(
        enabled: bool,
        output: &str,
        dropped: prometheus::IntCounter,
    ) -> std::io::Result<AccessLog> {
        if !enabled {
            return Ok(AccessLog { tx: None, dropped });
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
        let (tx, rx) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, sink))?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped,
        })
    }

    /// Queues one line; never blocks.
    pub fn write(&self, rec: &Record<'_>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(format_line(rec)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

fn write_loop(rx: Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        // Batch whatever is already queued, then flush so lines are never held back.
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(more.as_bytes());
        }
        let _ = out.flush();
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

fn push_str_field(out: &mut String, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        out.push_str(&serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into()));
    }
}

/// Formats one record as a JSON line (with the trailing newline).
pub fn format_line(r: &Record<'_>) -> String {
    let mut out = String::with_capacity(320);
    out.push_str("{\"ts\":\"");
    let _ = write!(
        out,
        "{}",
        humantime::format_rfc3339_millis(SystemTime::now())
    );
    out.push('"');
    push_str_field(&mut out, "route", r.route);
    push_str_field(&mut out, "http_method", Some(r.http_method));
    push_str_field(&mut out, "method", r.rpc_method);
    if let Some(id) = r.rpc_id {
        // Already JSON text (a string or an integer) checked by the envelope parser.
        let _ = write!(out, ",\"id\":{id}");
    }
    push_str_field(&mut out, "target", r.target);
    let _ = write!(
        out,
        ",\"status\":{},\"duration_ms\":{:.3}",
        r.status,
        r.duration.as_secs_f64() * 1000.0
    );
    push_str_field(&mut out, "upstream", r.upstream);
    push_str_field(&mut out, "endpoint", r.endpoint.as_deref());
    if let Some(sid) = r.session_id {
        push_str_field(&mut out, "session", Some(&session_hash(sid)));
    }
    let _ = write!(
        out,
        ",\"bytes_in\":{},\"bytes_out\":{}",
        r.bytes_in, r.bytes_out
    );
    push_str_field(&mut out, "reason", r.reason);
    push_str_field(&mut out, "client", r.client.as_deref());
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_hostile_strings_escaped() {
        let rec = Record {
            route: Some("/mcp"),
            http_method: "POST",
            rpc_method: Some("tools/call"),
            rpc_id: Some("\"a\\\"b\""),
            target: Some("evil\"\n}{"),
            status: 200,
            session_id: Some(b"secret-session"),
            ..Record::default()
        };
        let line = format_line(&rec);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["target"], "evil\"\n}{");
        assert_eq!(v["id"], "a\"b");
        assert_eq!(v["status"], 200);
        assert_eq!(v["session"].as_str().map(str::len), Some(16));
        assert!(!line.contains("secret-session"));
    }
}
