//! What is recorded of each finished request, from its context: the request metrics,
//! the access log line and, for tool calls, the audit record.

use pingora_http::RequestHeader;

use crate::access_log::{AccessLog, Record};
use crate::audit::{AuditLog, AuditRecord};
use crate::ctx::{Ctx, Effect};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::stages::dispatch::MCP_SESSION_ID_H;

/// Where a request is recorded.
pub struct Recorder<'a> {
    /// Every metric.
    pub metrics: &'a Metrics,
    /// The access log.
    pub access: &'a AccessLog,
    /// The audit log.
    pub audit: &'a AuditLog,
}

impl Recorder<'_> {
    /// Records one finished request.
    pub fn finish(&self, snap: &Snapshot, req: &RequestHeader, cx: &Ctx) {
        let route = cx.route.map(|i| snap.config.routes[i].name.as_str());
        let upstream = cx
            .upstream
            .map(|i| snap.upstreams[i].config().name.as_str())
            .or_else(|| {
                cx.route
                    .filter(|_| cx.fanned_out)
                    .map(|r| snap.route_upstream_name(r))
            });
        let duration = cx.started.elapsed();
        let http_method = req.method.as_str();
        let label = cx.op.label();
        self.metrics
            .requests
            .with_label_values(&[
                route.unwrap_or(""),
                http_method_label(http_method),
                label,
                status_label(cx.status),
            ])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[route.unwrap_or(""), label])
            .observe(duration.as_secs_f64());
        if let Some(reason) = cx.reason {
            self.metrics
                .refusals
                .with_label_values(&[route.unwrap_or(""), reason])
                .inc();
        }
        let rule = cx.decision.as_ref().map(|(_, r)| &**r);
        if self.access.enabled() {
            self.access.write(&Record {
                route,
                http_method,
                rpc_method: cx.op.log_name(),
                rpc_id: cx.rpc_id.as_deref(),
                target: cx.target.as_deref(),
                status: cx.status,
                duration,
                upstream,
                endpoint: cx.endpoint,
                session_id: req.headers.get(&MCP_SESSION_ID_H).map(|v| v.as_bytes()),
                bytes_in: cx.bytes_in,
                bytes_out: cx.bytes_out,
                reason: cx.reason,
                client: cx.client,
                subject: cx.principal.as_ref().map(|p| p.subject.as_str()),
                rule,
            });
        }
        if cx.op.is_tool_call() && self.audit.enabled() {
            self.audit.write(&AuditRecord {
                route,
                upstream,
                tool: cx.target.as_deref(),
                principal: cx.principal.as_deref(),
                decision: cx
                    .decision
                    .as_ref()
                    .map_or(Effect::Allow, |(e, _)| *e)
                    .as_str(),
                rule,
                status: cx.status,
                reason: cx.reason,
                rpc_id: cx.rpc_id.as_deref(),
                args: cx.audit_args.as_ref(),
            });
        }
    }
}

fn http_method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Statuses labelled as themselves; others fold into their class, so the label set
/// stays bounded and the lookup allocation-free.
const STATUS_LABELS: [(u16, &str); 18] = [
    (200, "200"),
    (202, "202"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (406, "406"),
    (408, "408"),
    (413, "413"),
    (415, "415"),
    (429, "429"),
    (499, "499"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

fn status_label(s: u16) -> &'static str {
    if let Some((_, label)) = STATUS_LABELS.iter().find(|(code, _)| *code == s) {
        return label;
    }
    match s {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_bounded() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(499), "499");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
        assert_eq!(status_label(0), "5xx");
    }
}
