//! The gateway's own view of an upstream's tools: names and annotations, learned from
//! the `tools/list` answers that pass through and, when a call needs them and none are
//! fresh, fetched by the gateway itself (one walk of `tools/list`, shared by every
//! request waiting for it). A policy needs this for two things: annotation rules judge
//! a call without an extra round trip, and a tool that does not exist is answered by
//! the upstream as unknown, exactly like a hidden one, whatever the policy's default.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use portcullis_config::Upstream;
use portcullis_mcp::sse::Splitter;
use portcullis_policy::Annotations;
use serde_json::{json, Value};

/// How long a learned catalog is used before it is fetched again.
pub const CATALOG_TTL: Duration = Duration::from_secs(600);

/// The longest a call waits for the gateway's own fetch of a catalog.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many `tools/list` pages are walked (a runaway cursor loop ends here).
const MAX_PAGES: usize = 100;

/// At most this many tools are kept per upstream; names longer than this are skipped.
const MAX_TOOLS: usize = 10_000;
const MAX_NAME: usize = 256;

/// The least time between two walks of one upstream's list, whatever asks for them
/// (calls for unknown tools, `list_changed` clearing the catalog, failures).
pub const MIN_WALK_INTERVAL: Duration = Duration::from_secs(10);

/// The largest answer read while fetching.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct Known {
    tools: HashMap<String, Annotations>,
    /// When the gateway last walked the whole list itself.
    complete_at: Option<Instant>,
    /// When a page was last learned from traffic.
    seen_at: Option<Instant>,
}

/// What is known of one tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolInfo {
    /// Listed, with these annotations.
    Listed(Annotations),
    /// Not in a complete, fresh catalog: the upstream has no such tool.
    Absent,
    /// Nothing fresh is known.
    Unknown,
}

/// Catalogs per upstream.
#[derive(Default)]
pub struct Catalogs {
    by_upstream: RwLock<HashMap<String, Known>>,
    /// One fetch at a time per upstream.
    fetching: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each upstream's list was last walked (or a walk was tried).
    walked_at: parking_lot::Mutex<HashMap<String, Instant>>,
}

impl Catalogs {
    /// Remembers what one `tools/list` page passing through declared.
    pub fn learn(&self, upstream: &str, tools: &[(String, Annotations)]) {
        if tools.is_empty() {
            return;
        }
        let mut all = self.by_upstream.write();
        let known = all.entry(upstream.to_owned()).or_default();
        known.tools.extend(tools.iter().cloned());
        known.seen_at = Some(Instant::now());
    }

    /// What is known of `tool` on `upstream`.
    pub fn tool(&self, upstream: &str, tool: &str) -> ToolInfo {
        let all = self.by_upstream.read();
        let Some(known) = all.get(upstream) else {
            return ToolInfo::Unknown;
        };
        let fresh = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < CATALOG_TTL);
        match known.tools.get(tool) {
            Some(a) if fresh(known.seen_at) || fresh(known.complete_at) => ToolInfo::Listed(*a),
            None if fresh(known.complete_at) => ToolInfo::Absent,
            _ => ToolInfo::Unknown,
        }
    }

    /// Forgets an upstream's catalog (its tool list changed).
    pub fn forget(&self, upstream: &str) {
        self.by_upstream.write().remove(upstream);
    }

    fn replace(&self, upstream: &str, tools: Vec<(String, Annotations)>) {
        let mut all = self.by_upstream.write();
        all.insert(
            upstream.to_owned(),
            Known {
                tools: tools.into_iter().collect(),
                complete_at: Some(Instant::now()),
                seen_at: None,
            },
        );
    }

    /// What is known of `tool`, walking the upstream's list first if nothing fresh is
    /// known (at most once per [`MIN_WALK_INTERVAL`] per upstream, one walk at a time).
    /// The walk runs as a task of its own: a caller that stops waiting never leaves a
    /// half-walked session behind. A failed or slow walk leaves it
    /// [`ToolInfo::Unknown`] (callers then assume the spec's cautious defaults).
    pub async fn tool_fetching(
        self: &Arc<Self>,
        client: &reqwest::Client,
        upstream: &Upstream,
        endpoint: std::net::SocketAddr,
        tool: &str,
    ) -> ToolInfo {
        let info = self.tool(&upstream.name, tool);
        if info != ToolInfo::Unknown {
            return info;
        }
        let lock = self
            .fetching
            .lock()
            .entry(upstream.name.clone())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        // Someone else may have walked while this call waited.
        let info = self.tool(&upstream.name, tool);
        if info != ToolInfo::Unknown {
            return info;
        }
        {
            let mut walked = self.walked_at.lock();
            if walked
                .get(&upstream.name)
                .is_some_and(|t| t.elapsed() < MIN_WALK_INTERVAL)
            {
                return ToolInfo::Unknown;
            }
            walked.insert(upstream.name.clone(), Instant::now());
        }
        let me = self.clone();
        let (client, up) = (client.clone(), upstream.clone());
        let walk = tokio::spawn(async move {
            match list_tools(&client, &up, endpoint, up.trust_annotations).await {
                Ok(tools) => me.replace(&up.name, tools),
                Err(e) => {
                    tracing::warn!(upstream = %up.name, error = %e, "could not list the upstream's tools")
                }
            }
        });
        if tokio::time::timeout(FETCH_TIMEOUT, walk).await.is_err() {
            tracing::warn!(upstream = %upstream.name, "listing the upstream's tools is taking long; judging with the spec's defaults");
        }
        self.tool(&upstream.name, tool)
    }
}

/// One MCP exchange with the upstream, as the gateway itself.
struct Walker<'a> {
    client: &'a reqwest::Client,
    upstream: &'a Upstream,
    url: String,
    session: Option<String>,
    version: &'static str,
}

impl Walker<'_> {
    async fn post(
        &self,
        body: Value,
        method: &str,
    ) -> Result<(Option<String>, Option<Value>), String> {
        let mut req = self
            .client
            .post(&self.url)
            .header("host", &self.upstream.authority)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", self.version);
        if self.version == "2026-07-28" {
            req = req.header("mcp-method", method);
        }
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        for (k, v) in &self.upstream.headers {
            req = req.header(k, v);
        }
        let mut resp = req
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{method}: HTTP {}", resp.status().as_u16()));
        }
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let sse = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let mut buf = Vec::new();
        let mut splitter = Splitter::new(MAX_ANSWER);
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{method}: {e}"))? {
            if !sse {
                if buf.len() + chunk.len() > MAX_ANSWER {
                    return Err(format!("{method}: answer too large"));
                }
                buf.extend_from_slice(&chunk);
                continue;
            }
            let events = splitter
                .push(&chunk)
                .map_err(|_| format!("{method}: event too large"))?;
            for ev in events {
                if let Some(msg) = ev.data.and_then(|d| serde_json::from_str::<Value>(&d).ok()) {
                    if msg.get("id").is_some()
                        && (msg.get("result").is_some() || msg.get("error").is_some())
                    {
                        return Ok((sid, Some(msg)));
                    }
                }
            }
        }
        if sse || buf.is_empty() {
            return Ok((sid, None));
        }
        let msg = serde_json::from_slice(&buf).map_err(|e| format!("{method}: {e}"))?;
        Ok((sid, Some(msg)))
    }

    fn meta(&self, mut params: Value) -> Value {
        if self.version == "2026-07-28" {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": client_info(),
            });
        }
        params
    }
}

/// How the gateway names itself to upstreams.
fn client_info() -> Value {
    json!({"name": "portcullis-gateway", "version": env!("CARGO_PKG_VERSION")})
}

/// Walks the upstream's whole `tools/list` as the gateway: a 2025-11-25 session
/// (initialize, list, DELETE), or a stateless 2026-07-28 list if the upstream refuses
/// `initialize`. Annotations are the spec's defaults unless trusted.
pub async fn list_tools(
    client: &reqwest::Client,
    upstream: &Upstream,
    endpoint: std::net::SocketAddr,
    trust: bool,
) -> Result<Vec<(String, Annotations)>, String> {
    let mut w = Walker {
        client,
        upstream,
        url: format!("http://{endpoint}{}", upstream.path),
        session: None,
        version: "2025-11-25",
    };
    let init = json!({"jsonrpc":"2.0","id":"portcullis-init","method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":client_info()}});
    let mut opened = Ok(());
    match w.post(init, "initialize").await {
        Ok((sid, Some(msg))) if msg.get("result").is_some() => {
            w.session = sid;
            // Speak the revision the upstream chose, if it is one we know.
            if let Some(v) = msg["result"]["protocolVersion"]
                .as_str()
                .and_then(portcullis_mcp::ProtocolVersion::parse)
            {
                w.version = v.as_str();
            }
            let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
            opened = w.post(note, "notifications/initialized").await.map(|_| ());
        }
        _ => w.version = "2026-07-28",
    }
    // The session is ended below whatever happens in between.
    let walked = match opened {
        Ok(()) => walk(&w, trust).await,
        Err(e) => Err(e),
    };
    if let Some(sid) = &w.session {
        let mut del = client
            .delete(&w.url)
            .header("host", &upstream.authority)
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", w.version);
        for (k, v) in &upstream.headers {
            del = del.header(k, v);
        }
        let _ = del.send().await;
    }
    walked
}

async fn walk(w: &Walker<'_>, trust: bool) -> Result<Vec<(String, Annotations)>, String> {
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let body = json!({"jsonrpc":"2.0","id":format!("portcullis-list-{page}"),
            "method":"tools/list","params":w.meta(params)});
        let (_, msg) = w.post(body, "tools/list").await?;
        let result = msg
            .and_then(|m| m.get("result").cloned())
            .ok_or("tools/list: no result")?;
        for t in result
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if tools.len() >= MAX_TOOLS {
                return Err(format!("tools/list: more than {MAX_TOOLS} tools"));
            }
            let name = t.get("name").and_then(Value::as_str);
            if let Some(name) = name.filter(|n| n.len() <= MAX_NAME) {
                let a = if trust {
                    Annotations::from_json(t.get("annotations"))
                } else {
                    Annotations::SPEC_DEFAULTS
                };
                tools.push((name.to_owned(), a));
            }
        }
        match result.get("nextCursor").and_then(Value::as_str) {
            Some(next) if Some(next) != cursor.as_deref() => cursor = Some(next.to_owned()),
            _ => return Ok(tools),
        }
    }
    Err(format!("tools/list: more than {MAX_PAGES} pages"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_tools_are_listed_and_only_a_complete_catalog_knows_absence() {
        let c = Catalogs::default();
        let ro = Annotations {
            read_only: true,
            ..Annotations::SPEC_DEFAULTS
        };
        assert_eq!(c.tool("u", "a"), ToolInfo::Unknown);
        c.learn("u", &[("a".into(), ro)]);
        assert_eq!(c.tool("u", "a"), ToolInfo::Listed(ro));
        assert_eq!(
            c.tool("u", "b"),
            ToolInfo::Unknown,
            "a page seen is not the whole list"
        );
        c.replace("u", vec![("a".into(), ro)]);
        assert_eq!(c.tool("u", "b"), ToolInfo::Absent);
        c.forget("u");
        assert_eq!(c.tool("u", "a"), ToolInfo::Unknown);
    }
}
