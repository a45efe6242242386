//! Ids that cross a federated route's boundary. The client sees one server, so what
//! each member numbers on its own must be made unique and mapped back:
//!
//! - **SSE event ids** on the merged GET stream: the client's id holds every member's
//!   last own event id, so the one `Last-Event-ID` a client sends back resumes each
//!   member where it stopped.
//! - **Server-to-client request ids** (sampling, elicitation, roots): two members may
//!   both send id 1; the client sees `"<member>~<the member's id as JSON>"`, and its
//!   answer goes back to that member only, with the member's own id.
//!
//! - **Task ids** (2025-11-25 tasks) the same way, so `tasks/get`, `tasks/result` and
//!   `tasks/cancel` reach the member that runs the task.
//!
//! None needs a table: the id itself says where it goes, so any replica maps it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

/// The `_meta` key naming the subscription a listen stream's message belongs to.
pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// What a merged stream's event ids start with (a layout version).
const EVENT_PREFIX: &str = "f1.";
/// The longest client event id read back (every member's position fits).
const MAX_EVENT_ID: usize = 8 * 1024;
/// Between a member's key and its own request id.
const REQUEST_SEP: char = '~';

/// The client's event id for these members' positions (member key, own event id).
pub fn event_id(positions: &[(&str, &str)]) -> String {
    let list: Vec<Value> = positions
        .iter()
        .map(|(m, id)| Value::Array(vec![Value::from(*m), Value::from(*id)]))
        .collect();
    let json = Value::Array(list).to_string();
    format!("{EVENT_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
}

/// Each member's own event id in a client's `Last-Event-ID`; `None` for an id the
/// gateway did not mint (the members then start their streams afresh).
pub fn positions(last_event_id: &str) -> Option<Vec<(String, String)>> {
    if last_event_id.len() > MAX_EVENT_ID {
        return None;
    }
    let b64 = last_event_id.strip_prefix(EVENT_PREFIX)?;
    let json = URL_SAFE_NO_PAD.decode(b64).ok()?;
    let list: Vec<(String, String)> = serde_json::from_slice(&json).ok()?;
    Some(list)
}

/// The id the client sees for member `member`'s request id `id`.
pub fn outward_request_id(member: &str, id: &Value) -> Value {
    Value::String(format!("{member}{REQUEST_SEP}{id}"))
}

/// The member and its own request id behind an id the client answers with; `None`
/// for an id the gateway did not map.
pub fn inward_request_id(id: &Value) -> Option<(&str, Value)> {
    let (member, own) = id.as_str()?.split_once(REQUEST_SEP)?;
    let own: Value = serde_json::from_str(own).ok()?;
    matches!(own, Value::String(_) | Value::Number(_)).then_some((member, own))
}

/// Where a message carries a task id (2025-11-25 tasks): a task-augmented request's
/// `CreateTaskResult`, a task (`tasks/get`, `tasks/cancel`), a result or message
/// related to a task, a status notification.
const TASK_IDS: [&str; 5] = [
    "/result/task/taskId",
    "/result/taskId",
    "/result/_meta/io.modelcontextprotocol~1related-task/taskId",
    "/params/taskId",
    "/params/_meta/io.modelcontextprotocol~1related-task/taskId",
];

/// Names member `member` in every task id of `msg` (a message from the member), so the
/// client's `tasks/*` requests find their way back; the items of a `tasks/list` page
/// too. Returns whether anything changed.
pub fn outward_task_ids(member: &str, msg: &mut Value) -> bool {
    let mut changed = false;
    let mut map = |slot: Option<&mut Value>| {
        if let Some(id @ Value::String(_)) = slot {
            *id = outward_request_id(member, id);
            changed = true;
        }
    };
    for at in TASK_IDS {
        map(msg.pointer_mut(at));
    }
    if let Some(Value::Array(tasks)) = msg.pointer_mut("/result/tasks") {
        for t in tasks {
            map(t.get_mut("taskId"));
        }
    }
    changed
}

/// The member and its own task id behind a task id the client sends.
pub fn inward_task_id(id: &str) -> Option<(&str, String)> {
    let (member, own) = id.split_once(REQUEST_SEP)?;
    match serde_json::from_str::<Value>(own).ok()? {
        Value::String(s) => Some((member, s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_carry_every_member_position_and_reject_strangers() {
        let id = event_id(&[("alpha", "7"), ("beta", "0_3")]);
        assert!(id.starts_with("f1."));
        assert_eq!(
            positions(&id),
            Some(vec![
                ("alpha".to_owned(), "7".to_owned()),
                ("beta".to_owned(), "0_3".to_owned())
            ])
        );
        for bad in ["7", "f1.", "f1.!!", "f1.e30", &"f1.".repeat(4000)] {
            assert_eq!(positions(bad), None, "{bad}");
        }
    }

    #[test]
    fn task_ids_are_named_where_the_protocol_carries_them_and_nowhere_else() {
        let mut created = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"task": {"taskId": "t1", "status": "working"}}});
        assert!(outward_task_ids("north", &mut created));
        let client = created["result"]["task"]["taskId"]
            .as_str()
            .expect("string")
            .to_owned();
        assert_eq!(inward_task_id(&client), Some(("north", "t1".to_owned())));
        let mut status = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": {"taskId": "t1"}});
        assert!(outward_task_ids("north", &mut status));
        let mut listed = serde_json::json!({"jsonrpc": "2.0", "id": 2, "result": {"tasks": [{"taskId": "a"}, {"taskId": "b"}]}});
        assert!(outward_task_ids("north", &mut listed));
        assert_eq!(listed["result"]["tasks"][1]["taskId"], "north~\"b\"");
        // A tool's own output that happens to hold a "taskId" is left alone.
        let mut tool = serde_json::json!({"jsonrpc": "2.0", "id": 3, "result": {"content": [], "structuredContent": {"taskId": "jira-7"}}});
        assert!(!outward_task_ids("north", &mut tool));
        assert_eq!(tool["result"]["structuredContent"]["taskId"], "jira-7");
        for bad in ["t1", "north~t1", "north~7", "north~\"unterminated"] {
            assert_eq!(inward_task_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn request_ids_round_trip_and_foreign_ones_do_not_map() {
        for own in [Value::from(1), Value::from("a~b"), Value::from(-3)] {
            let out = outward_request_id("alpha", &own);
            assert_eq!(inward_request_id(&out), Some(("alpha", own.clone())));
        }
        for bad in [
            Value::from(1),
            Value::from("no-separator"),
            Value::from("alpha~{\"x\":1}"),
            Value::from("alpha~not json"),
            Value::Null,
        ] {
            assert_eq!(inward_request_id(&bad), None, "{bad}");
        }
    }
}
