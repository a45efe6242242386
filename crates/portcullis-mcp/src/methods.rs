//! The MCP method names, so metrics can label by method with a bounded set of values.

/// Every method and notification defined by the MCP revisions the gateway speaks.
pub const KNOWN: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "subscriptions/listen",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/roots/list_changed",
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/resources/updated",
    "notifications/prompts/list_changed",
    "notifications/elicitation/complete",
    "notifications/tasks/status",
];

/// The method as a metric label: itself when known, `other` otherwise.
pub fn label(method: &str) -> &'static str {
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_methods_collapse_to_other() {
        assert_eq!(super::label("tools/call"), "tools/call");
        assert_eq!(super::label("tools/call\u{0}"), "other");
        assert_eq!(super::label(&"x".repeat(10_000)), "other");
    }
}
