//! The admin listener: `/healthz` (liveness), `/readyz` (readiness, see
//! [`crate::health`]) and `/metrics` (Prometheus text format).

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::snapshot::Live;

/// The admin app.
pub struct Admin {
    /// The live config, for its version.
    pub live: Live,
    /// Probe results.
    pub health: Arc<Health>,
    /// The registry served at `/metrics`.
    pub metrics: Arc<Metrics>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        // pingora's ServeHttp adds no length; without one the connection would close.
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, s: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = s.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return reply(405, "text/plain", b"method not allowed\n".to_vec());
        }
        match req.uri.path() {
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let ready = self.health.ready();
                let snap = self.live.load();
                let upstreams: serde_json::Map<String, serde_json::Value> = self
                    .health
                    .upstreams()
                    .iter()
                    .map(|(n, up)| (n.clone(), serde_json::Value::Bool(*up)))
                    .collect();
                let body = serde_json::json!({
                    "ready": ready,
                    "config_version": snap.config.version,
                    "upstreams": upstreams,
                });
                reply(
                    if ready { 200 } else { 503 },
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
            "/metrics" => reply(200, "text/plain; version=0.0.4", self.metrics.render()),
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
