//! The gateway's own view of an upstream's tools: names and annotations, learned from
//! the `tools/list` answers that pass through and, when a call names a tool nothing
//! fresh is known of, walked by the gateway itself in the background (one walk at a
//! time per upstream, at most one per [`MIN_WALK_INTERVAL`]). No request ever waits for
//! a walk: the policy stage judges with what is known now. A policy needs this for two
//! things: annotation rules judge a call without an extra round trip, and a denied tool
//! that no listing ever showed is answered as unknown, exactly like a hidden one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use portcullis_policy::Annotations;
use serde_json::{json, Value};

use crate::upstream::own::{self, Answered};
use crate::upstream::{OwnedPin, Upstream};

/// How long a learned catalog is used before it is fetched again.
pub const CATALOG_TTL: Duration = Duration::from_secs(600);

/// The longest one walk of an upstream's list may take.
pub const WALK_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many `tools/list` pages are walked (a runaway cursor loop ends here).
const MAX_PAGES: usize = 100;

/// At most this many tools are kept per upstream; names longer than this are skipped.
const MAX_TOOLS: usize = 10_000;
const MAX_NAME: usize = 256;

/// The least time between two walks of one upstream's list, whatever asks for them
/// (calls for unknown tools, `list_changed` clearing the catalog, failures).
pub const MIN_WALK_INTERVAL: Duration = Duration::from_secs(10);

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
    /// Not in a complete, fresh catalog.
    Absent,
    /// Nothing fresh is known.
    Unknown,
}

/// Catalogs per upstream.
#[derive(Default)]
pub struct Catalogs {
    by_upstream: RwLock<HashMap<String, Known>>,
    /// Each upstream's last walk: when it started, and what changes when it ends.
    walks: Mutex<HashMap<String, (Instant, tokio::sync::watch::Receiver<()>)>>,
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

    /// What is known of `tool`, after waiting at most `wait` for a walk of the
    /// upstream's list when nothing fresh is known. The walk runs as a task of its own
    /// (one at a time per upstream, at most one per [`MIN_WALK_INTERVAL`]): a caller
    /// that stops waiting never leaves a half-walked session behind.
    pub async fn tool_after_walk(
        self: &Arc<Self>,
        upstream: Arc<dyn Upstream>,
        trust: bool,
        tool: &str,
        wait: Duration,
    ) -> ToolInfo {
        let name = upstream.name().to_owned();
        let info = self.tool(&name, tool);
        if info != ToolInfo::Unknown {
            return info;
        }
        if let Some(mut done) = self.walk_soon(upstream, trust) {
            let _ = tokio::time::timeout(wait, done.changed()).await;
        }
        self.tool(&name, tool)
    }

    /// Starts a walk of `upstream`'s list in the background unless one is running (its
    /// end is returned) or one started within [`MIN_WALK_INTERVAL`] (`None`).
    pub fn walk_soon(
        self: &Arc<Self>,
        upstream: Arc<dyn Upstream>,
        trust: bool,
    ) -> Option<tokio::sync::watch::Receiver<()>> {
        let name = upstream.name().to_owned();
        let (tx, rx) = tokio::sync::watch::channel(());
        {
            let mut walks = self.walks.lock();
            if let Some((started, done)) = walks.get(&name) {
                if done.has_changed().is_ok() {
                    // Still running: the sender is alive.
                    return Some(done.clone());
                }
                if started.elapsed() < MIN_WALK_INTERVAL {
                    return None;
                }
            }
            walks.insert(name.clone(), (Instant::now(), rx.clone()));
        }
        let me = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(WALK_TIMEOUT, list_tools(&*upstream, trust)).await {
                Ok(Ok(tools)) => me.replace(&name, tools),
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %name, error = %e, "could not list the upstream's tools")
                }
                Err(_) => {
                    tracing::warn!(upstream = %name, "listing the upstream's tools took too long")
                }
            }
            // Dropping the sender tells every waiter the walk is over.
            drop(tx);
        });
        Some(rx)
    }
}

/// How the gateway names itself to upstreams.
fn client_info() -> Value {
    json!({"name": "portcullis-gateway", "version": env!("CARGO_PKG_VERSION")})
}

/// Walks the upstream's whole `tools/list` as the gateway: a 2025-11-25 session
/// (initialize, list, end), or a stateless 2026-07-28 list if the upstream refuses
/// `initialize`. Annotations are the spec's defaults unless trusted.
pub async fn list_tools(
    upstream: &dyn Upstream,
    trust: bool,
) -> Result<Vec<(String, Annotations)>, String> {
    let init = json!({"jsonrpc":"2.0","id":"portcullis-init","method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":client_info()}});
    let mut version = "2026-07-28";
    let mut session: Option<OwnedPin> = None;
    let mut opened = Ok(());
    if let Ok(Answered {
        session: sid,
        message: Some(msg),
    }) = own::call(upstream, None, "2025-11-25", "initialize", &init).await
    {
        if msg.get("result").is_some() {
            session = sid;
            // Speak the revision the upstream chose, if it is one we know.
            version = msg["result"]["protocolVersion"]
                .as_str()
                .and_then(portcullis_mcp::ProtocolVersion::parse)
                .map_or("2025-11-25", |v| v.as_str());
            let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
            opened = own::call(
                upstream,
                session.as_ref(),
                version,
                "notifications/initialized",
                &note,
            )
            .await
            .map(|_| ());
        }
    }
    // The session is ended below whatever happens in between.
    let walked = match opened {
        Ok(()) => walk(upstream, session.as_ref(), version, trust).await,
        Err(e) => Err(e),
    };
    if let Some(s) = &session {
        own::end_session(upstream, s, version).await;
    }
    walked
}

async fn walk(
    upstream: &dyn Upstream,
    session: Option<&OwnedPin>,
    version: &str,
    trust: bool,
) -> Result<Vec<(String, Annotations)>, String> {
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..MAX_PAGES {
        let mut params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        if version == "2026-07-28" {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": client_info(),
            });
        }
        let body = json!({"jsonrpc":"2.0","id":format!("portcullis-list-{page}"),
            "method":"tools/list","params":params});
        let answered = own::call(upstream, session, version, "tools/list", &body).await?;
        let result = answered
            .message
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
