//! Merging what several members answered into one answer: capabilities as the union of
//! what members offer, protocol versions as what every member supports, instructions
//! joined under each member's name, and list pages concatenated in member order.

use serde_json::{Map, Value};

/// What one `*/list` method lists, and by which field its items are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listing {
    /// The method.
    pub method: &'static str,
    /// The result's array of items.
    pub items: &'static str,
    /// The field of an item that names it.
    pub key: &'static str,
    /// How that field is mapped.
    pub naming: Naming,
}

/// How a listed item's naming field is shown to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// A tool or prompt name: prefixed.
    Name,
    /// A resource URI or template: wrapped.
    Uri,
    /// A task id: named after the member; the list is never cached (tasks change).
    Task,
}

/// The lists a federated route merges.
pub const LISTINGS: [Listing; 5] = [
    Listing {
        method: "tools/list",
        items: "tools",
        key: "name",
        naming: Naming::Name,
    },
    Listing {
        method: "prompts/list",
        items: "prompts",
        key: "name",
        naming: Naming::Name,
    },
    Listing {
        method: "resources/list",
        items: "resources",
        key: "uri",
        naming: Naming::Uri,
    },
    Listing {
        method: "resources/templates/list",
        items: "resourceTemplates",
        key: "uriTemplate",
        naming: Naming::Uri,
    },
    Listing {
        method: "tasks/list",
        items: "tasks",
        key: "taskId",
        naming: Naming::Task,
    },
];

/// The listing of `method`, if it is a merged list.
pub fn listing(method: &str) -> Option<Listing> {
    LISTINGS.into_iter().find(|l| l.method == method)
}

/// The union of two capability objects: a flag set in either is set, an object in
/// either is kept with both sides merged.
pub fn union(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (None, _) => {
                into.insert(k.clone(), v.clone());
            }
            (Some(Value::Object(a)), Value::Object(b)) => union(a, b),
            (Some(Value::Bool(a)), Value::Bool(b)) => *a |= *b,
            (Some(_), _) => {}
        }
    }
}

/// Instructions of several members as one text, each under its member's name.
fn instructions(answers: &[(&str, &Value)]) -> Option<String> {
    let parts: Vec<String> = answers
        .iter()
        .filter_map(|(member, r)| {
            let text = r.get("instructions")?.as_str()?.trim();
            (!text.is_empty()).then(|| format!("[{member}]\n{text}"))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

fn capabilities(answers: &[(&str, &Value)]) -> Map<String, Value> {
    let mut caps = Map::new();
    for (_, r) in answers {
        if let Some(c) = r.get("capabilities").and_then(Value::as_object) {
            union(&mut caps, c);
        }
    }
    caps
}

/// The gateway's `initialize` result from its members' (`(member, result)`, at least
/// one): the oldest protocol version any member chose (each member then speaks one
/// the client asked for or older), the union of capabilities (tools with
/// `listChanged`), joined instructions.
pub fn initialize(route: &str, answers: &[(&str, &Value)]) -> Value {
    let version = answers
        .iter()
        .filter_map(|(_, r)| r.get("protocolVersion")?.as_str())
        .min()
        .unwrap_or_default();
    let mut out = Map::new();
    out.insert("protocolVersion".into(), Value::from(version));
    let mut caps = capabilities(answers);
    // The merged tool list changes when a member leaves or comes back, and the gateway
    // says so on the session's GET stream.
    if let Some(Value::Object(tools)) = caps.get_mut("tools") {
        tools.insert("listChanged".into(), Value::Bool(true));
    }
    out.insert("capabilities".into(), Value::Object(caps));
    out.insert("serverInfo".into(), server_info(route));
    if let Some(text) = instructions(answers) {
        out.insert("instructions".into(), Value::from(text));
    }
    Value::Object(out)
}

fn server_info(route: &str) -> Value {
    serde_json::json!({
        "name": format!("portcullis {route}"),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// The gateway's `server/discover` result (2026-07-28) from its members': the versions
/// every member supports, the union of capabilities, joined instructions, the shortest
/// freshness and `private` if any member's is.
pub fn discover(route: &str, answers: &[(&str, &Value)]) -> Value {
    let mut out = answers
        .first()
        .and_then(|(_, r)| r.as_object().cloned())
        .unwrap_or_default();
    let versions = |r: &Value| -> Vec<String> {
        r.get("supportedVersions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut common = answers
        .first()
        .map(|(_, r)| versions(r))
        .unwrap_or_default();
    for (_, r) in answers.iter().skip(1) {
        let theirs = versions(r);
        common.retain(|v| theirs.contains(v));
    }
    out.insert("supportedVersions".into(), Value::from(common));
    out.insert("capabilities".into(), Value::Object(capabilities(answers)));
    match instructions(answers) {
        Some(text) => out.insert("instructions".into(), Value::from(text)),
        None => out.remove("instructions"),
    };
    if let Some(ttl) = answers
        .iter()
        .filter_map(|(_, r)| r.get("ttlMs")?.as_u64())
        .min()
    {
        out.insert("ttlMs".into(), Value::from(ttl));
    }
    if answers
        .iter()
        .any(|(_, r)| r.get("cacheScope").and_then(Value::as_str) == Some("private"))
    {
        out.insert("cacheScope".into(), Value::from("private"));
    }
    let meta = out
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(
            "io.modelcontextprotocol/serverInfo".into(),
            server_info(route),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn capabilities_are_the_union_of_the_members() {
        let a = json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {"listChanged": false}, "logging": {}},
            "instructions": "use a"});
        let b = json!({"protocolVersion": "2025-03-26", "capabilities": {"tools": {"listChanged": true}, "prompts": {}}});
        let r = initialize("/mcp", &[("a", &a), ("b", &b)]);
        assert_eq!(r["protocolVersion"], "2025-03-26");
        assert_eq!(
            r["capabilities"],
            json!({"tools": {"listChanged": true}, "logging": {}, "prompts": {}})
        );
        assert_eq!(r["instructions"], "[a]\nuse a");
        assert!(r["serverInfo"]["name"].as_str().is_some());
    }

    #[test]
    fn discovery_keeps_only_versions_every_member_supports() {
        let a = json!({"supportedVersions": ["2026-07-28", "2025-11-25"], "capabilities": {}, "ttlMs": 60000, "cacheScope": "public"});
        let b = json!({"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}, "ttlMs": 1000, "cacheScope": "private"});
        let r = discover("/mcp", &[("a", &a), ("b", &b)]);
        assert_eq!(r["supportedVersions"], json!(["2026-07-28"]));
        assert_eq!(r["capabilities"], json!({"tools": {}}));
        assert_eq!(r["ttlMs"], 1000);
        assert_eq!(r["cacheScope"], "private");
        assert!(r["_meta"]["io.modelcontextprotocol/serverInfo"].is_object());
    }

    #[test]
    fn lists_are_known_by_method() {
        assert_eq!(listing("tools/list").map(|l| l.items), Some("tools"));
        assert_eq!(
            listing("resources/templates/list").map(|l| l.key),
            Some("uriTemplate")
        );
        assert_eq!(listing("tools/call"), None);
    }
}
