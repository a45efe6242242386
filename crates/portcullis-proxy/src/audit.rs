//! The audit log: one JSON line per `tools/call`, on its own stream (`audit_log`), with
//! who called which tool through which route and upstream, the policy's decision and
//! rule, the outcome, and the arguments' size and SHA-256 (the arguments themselves only
//! when `audit_log.include_arguments` is on). Written through the same batched,
//! never-blocking writer as the access log.

use std::fmt::Write as _;

use portcullis_auth::Principal;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::access_log::{push_str_field, push_timestamp, AccessLog};

/// What a call's arguments were, without (by default) what they said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgsDigest {
    /// Bytes of the `arguments` JSON as sent.
    pub bytes: usize,
    /// Hex SHA-256 of those bytes.
    pub sha256: String,
    /// The arguments' JSON text, when configured.
    pub raw: Option<String>,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
}

/// The digest of a `tools/call`'s `params.arguments` (absent arguments: zero bytes).
pub fn digest(params: Option<&RawValue>, keep_raw: bool) -> ArgsDigest {
    let args = params
        .and_then(|p| serde_json::from_str::<CallParams<'_>>(p.get()).ok())
        .and_then(|p| p.arguments)
        .map_or("", |a| a.get());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut sha256 = String::with_capacity(64);
    for b in Sha256::digest(args.as_bytes()) {
        sha256.push(char::from(HEX[usize::from(b >> 4)]));
        sha256.push(char::from(HEX[usize::from(b & 15)]));
    }
    ArgsDigest {
        bytes: args.len(),
        sha256,
        raw: (keep_raw && !args.is_empty()).then(|| compact(args)),
    }
}

/// Valid JSON without the whitespace between tokens: one line, whatever the client
/// sent (raw line breaks can only be whitespace; inside strings they are escaped), so
/// no argument can start a forged record on a line of its own.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

/// One audited call.
pub struct AuditRecord<'a> {
    /// The route's name.
    pub route: Option<&'a str>,
    /// The upstream's name.
    pub upstream: Option<&'a str>,
    /// The tool, as the client named it.
    pub tool: Option<&'a str>,
    /// The caller, if authenticated.
    pub principal: Option<&'a Principal>,
    /// `allow`, `deny`, `hide`, or `absent` (no such tool: forwarded unjudged).
    pub decision: &'a str,
    /// The deciding rule.
    pub rule: Option<&'a str>,
    /// The HTTP status answered.
    pub status: u16,
    /// Why it was refused or failed, if it was.
    pub reason: Option<&'a str>,
    /// The JSON-RPC id (JSON text).
    pub rpc_id: Option<&'a str>,
    /// The arguments' digest.
    pub args: Option<&'a ArgsDigest>,
}

/// The audit stream.
#[derive(Clone)]
pub struct AuditLog {
    log: AccessLog,
    include_arguments: bool,
}

impl AuditLog {
    /// An audit log writing through `log`.
    pub fn new(log: AccessLog, include_arguments: bool) -> AuditLog {
        AuditLog {
            log,
            include_arguments,
        }
    }

    /// Whether records are written (and so worth computing).
    pub fn enabled(&self) -> bool {
        self.log.enabled()
    }

    /// Whether records carry the arguments themselves.
    pub fn include_arguments(&self) -> bool {
        self.include_arguments
    }

    /// Appends one record.
    pub fn write(&self, r: &AuditRecord<'_>) {
        self.log.write_line(|out| format_into(out, r));
    }

    /// Writes every pending record now.
    pub fn flush(&self) {
        self.log.flush();
    }
}

fn format_into(out: &mut String, r: &AuditRecord<'_>) {
    out.push_str("{\"ts\":\"");
    push_timestamp(out);
    out.push_str("\",\"log\":\"audit\",\"method\":\"tools/call\"");
    push_str_field(out, "route", r.route);
    push_str_field(out, "upstream", r.upstream);
    push_str_field(out, "tool", r.tool);
    if let Some(id) = r.rpc_id {
        let _ = write!(out, ",\"id\":{id}");
    }
    if let Some(p) = r.principal {
        push_str_field(out, "subject", Some(&p.subject));
        push_str_field(out, "issuer", Some(&p.issuer));
    }
    push_str_field(out, "decision", Some(r.decision));
    push_str_field(out, "rule", r.rule);
    let _ = write!(out, ",\"status\":{}", r.status);
    push_str_field(out, "reason", r.reason);
    if let Some(a) = r.args {
        let _ = write!(out, ",\"args_bytes\":{}", a.bytes);
        push_str_field(out, "args_sha256", Some(&a.sha256));
        if let Some(raw) = &a.raw {
            // Already JSON, checked by the envelope parser.
            out.push_str(",\"arguments\":");
            out.push_str(raw);
        }
    }
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_digested_and_kept_only_when_asked() {
        let params: Box<RawValue> =
            serde_json::from_str(r#"{"name":"t","arguments":{"path":"/etc/passwd"}}"#)
                .expect("json");
        let d = digest(Some(&params), false);
        assert_eq!(d.bytes, r#"{"path":"/etc/passwd"}"#.len());
        assert_eq!(d.sha256.len(), 64);
        assert!(d.raw.is_none());
        assert_eq!(
            digest(Some(&params), true).raw.as_deref(),
            Some(r#"{"path":"/etc/passwd"}"#)
        );
        let spread: Box<RawValue> = serde_json::from_str(
            "{\"name\":\"t\",\"arguments\":{\n\"a\": \"x y\\\"}\",\n\"b\" : [1, 2]\n}}",
        )
        .expect("json");
        let kept = digest(Some(&spread), true).raw.expect("kept");
        assert_eq!(
            kept, r#"{"a":"x y\"}","b":[1,2]}"#,
            "one line, strings untouched"
        );
        let none: Box<RawValue> = serde_json::from_str(r#"{"name":"t"}"#).expect("json");
        assert_eq!(digest(Some(&none), true).bytes, 0);
        let odd: Box<RawValue> = serde_json::from_str(r#"[1,2]"#).expect("json");
        assert_eq!(
            digest(Some(&odd), false).bytes,
            0,
            "not an object: no arguments"
        );
    }

    #[test]
    fn a_record_is_one_json_line() {
        let p = Principal {
            subject: "al\"ice".into(),
            issuer: "https://idp".into(),
            ..Principal::default()
        };
        let d = ArgsDigest {
            bytes: 2,
            sha256: "ab".into(),
            raw: Some("{\"a\":1}".into()),
        };
        let mut out = String::new();
        format_into(
            &mut out,
            &AuditRecord {
                route: Some("/mcp"),
                upstream: Some("u"),
                tool: Some("delete_file"),
                principal: Some(&p),
                decision: "deny",
                rule: Some("no-destructive"),
                status: 200,
                reason: Some("policy_denied"),
                rpc_id: Some("7"),
                args: Some(&d),
            },
        );
        assert!(out.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
        assert_eq!(v["log"], "audit");
        assert_eq!(v["subject"], "al\"ice");
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["arguments"]["a"], 1);
        assert_eq!(v["id"], 7);
    }
}
