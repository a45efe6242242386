//! The federate stage: where a message goes on its route. On a single-upstream route,
//! to that upstream in the client's session. On a federated route, a message that
//! names one target (`tools/call`, `prompts/get`, `resources/read|subscribe|
//! unsubscribe`, `completion/complete`) goes to the member the name (or URI) belongs
//! to, rewritten to the member's own name and in the member's own session, so that
//! member's gates, deadlines and breakers apply as on a route of its own; a name no
//! member owns is answered exactly as an unknown one. Everything else goes to the
//! route's [`FederatedUpstream`], which fans out and merges.
//!
//! [`FederatedUpstream`]: crate::upstream::federated::FederatedUpstream

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use portcullis_mcp::{Refusal, Unknown};
use serde_json::value::RawValue;

use crate::ctx::{Ctx, Op};
use crate::snapshot::Snapshot;
use crate::upstream::federated::{ids, FederatedUpstream};
use crate::upstream::{OwnedPin, Upstream};

/// What the answer's `Mcp-Session-Id` becomes on its way to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIds {
    /// Sealed into the gateway's own session id (the upstream, or the federated
    /// route's merged handshake, created the session).
    Seal,
    /// Dropped: one member's session lives inside the federated session, and the
    /// client never sees it alone.
    Drop,
}

/// Where one request goes.
pub struct Destination {
    /// What it is sent to.
    pub upstream: Arc<dyn Upstream>,
    /// The upstream (index into the snapshot's) whose gates and deadlines the request
    /// passes; `None` for a federated route's fan-out, bounded by its own timeout.
    pub gated_by: Option<usize>,
    /// The session to send it in: the client's, or its member's inside it.
    pub session: Option<OwnedPin>,
    /// What happens to a session id in the answer.
    pub session_ids: SessionIds,
    /// The message as sent (rewritten to the member's own name).
    pub body: Bytes,
    /// On a federated route, the key of the member it was routed to (its request ids
    /// are mapped on the way back).
    pub member: Option<String>,
    /// A member not in the client's session yet: joined to it before the message is
    /// sent (docs/federation.md).
    pub join: Option<Join>,
    /// The answer may carry task ids (a task-augmented call, `tasks/*`): they are
    /// mapped on the way back.
    pub tasks: bool,
}

/// A member to join to the client's session before sending.
pub struct Join {
    /// The route's federated upstream.
    pub fed: Arc<FederatedUpstream>,
    /// The member.
    pub member: usize,
    /// The client's (federated) session.
    pub session: OwnedPin,
}

/// Where a message `body` on `route` goes, in the client's `session`.
pub fn message(
    snap: &Snapshot,
    route: usize,
    session: Option<OwnedPin>,
    body: Bytes,
    cx: &mut Ctx,
) -> Result<Destination, Refusal> {
    let Some(fed) = &snap.federations[route] else {
        return Ok(single(snap, route, session, body));
    };
    let method = match &cx.op {
        Op::Message(Some(m)) => m.as_str(),
        _ => return Ok(fanned(fed, session, body)),
    };
    let Some(kind) = Targeted::of(method) else {
        return Ok(fanned(fed, session, body));
    };
    // Read only as deep as the target: the arguments stay the bytes they came as.
    let mut msg: Raw = serde_json::from_slice(&body)
        .map_err(|e| Refusal::InvalidRequest(format!("the message is not JSON: {e}")))?;
    let unnamed = || Refusal::InvalidParams(format!("params must name the {}", kind.what()));
    let mut params = msg.get("params").and_then(|p| raw(p)).ok_or_else(unnamed)?;
    let (field, asked) = kind.target(&params).ok_or_else(unnamed)?;
    let mapped = match field {
        Field::TaskId => {
            ids::inward_task_id(&asked).and_then(|(key, own)| Some((fed.names().member(key)?, own)))
        }
        _ if kind.by_uri(field) => fed
            .names()
            .inward_uri(&asked)
            .map(|(m, own)| (m, own.to_owned())),
        _ => fed
            .names()
            .inward(&asked)
            .map(|(m, own)| (m, own.to_owned())),
    };
    let Some((m, own)) = mapped else {
        if field == Field::TaskId {
            return Err(Refusal::InvalidParams(format!("no such task: {asked}")));
        }
        return Err(Refusal::Hidden {
            kind: kind.unknown(field),
            name: asked,
        });
    };
    // A task-augmented call, or a request about a task: task ids in the answer are
    // named after the member.
    let tasks = field == Field::TaskId || params.contains_key("task");
    kind.set_target(&mut msg, &mut params, field, &own)
        .ok_or_else(|| Refusal::InvalidRequest("cannot rewrite the message".into()))?;
    let up = fed.upstream_index(m);
    if method == "tools/call" {
        // Mcp-Name and the member's tool gates use the member's own name.
        cx.upstream_tool = Some(own);
    }
    let pin = session.as_ref().map(OwnedPin::pin);
    let body = serde_json::to_vec(&msg)
        .map_err(|e| Refusal::InvalidRequest(format!("cannot rewrite the message: {e}")))?;
    let member_session = fed.member_session(pin, m);
    let join = match (&member_session, session) {
        (None, Some(client)) => Some(Join {
            fed: fed.clone(),
            member: m,
            session: client,
        }),
        _ => None,
    };
    Ok(Destination {
        upstream: snap.upstream(up),
        gated_by: Some(up),
        session: member_session,
        session_ids: SessionIds::Drop,
        body: Bytes::from(body),
        member: Some(fed.names().key(m).to_owned()),
        join,
        tasks,
    })
}

/// Where a session's stream (`GET`) or end (`DELETE`) goes: the route's upstream as a
/// whole.
pub fn session(snap: &Snapshot, route: usize, session: Option<OwnedPin>) -> Destination {
    match &snap.federations[route] {
        Some(fed) => fanned(fed, session, Bytes::new()),
        None => single(snap, route, session, Bytes::new()),
    }
}

fn single(snap: &Snapshot, route: usize, session: Option<OwnedPin>, body: Bytes) -> Destination {
    let up = snap.config.routes[route].upstream;
    Destination {
        upstream: snap.upstream(up),
        gated_by: Some(up),
        session,
        session_ids: SessionIds::Seal,
        body,
        member: None,
        join: None,
        tasks: false,
    }
}

fn fanned(fed: &Arc<FederatedUpstream>, session: Option<OwnedPin>, body: Bytes) -> Destination {
    Destination {
        upstream: fed.clone(),
        gated_by: None,
        session,
        session_ids: SessionIds::Seal,
        body,
        member: None,
        join: None,
        tasks: false,
    }
}

/// The methods that name one target, and where the name is.
#[derive(Debug, Clone, Copy)]
enum Targeted {
    /// `params.name`, a tool's.
    Tool,
    /// `params.name`, a prompt's.
    Prompt,
    /// `params.uri`.
    Resource,
    /// `params.ref.name` (a prompt) or `params.ref.uri` (a resource template).
    Completion,
    /// `params.taskId`, a task's (named after its member by the gateway).
    Task,
}

/// Which field held the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Uri,
    RefName,
    RefUri,
    TaskId,
}

impl Targeted {
    fn of(method: &str) -> Option<Targeted> {
        Some(match method {
            "tools/call" => Targeted::Tool,
            "prompts/get" => Targeted::Prompt,
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                Targeted::Resource
            }
            "completion/complete" => Targeted::Completion,
            "tasks/get" | "tasks/result" | "tasks/cancel" => Targeted::Task,
            _ => return None,
        })
    }

    fn what(self) -> &'static str {
        match self {
            Targeted::Tool => "tool (a string name)",
            Targeted::Prompt => "prompt (a string name)",
            Targeted::Resource => "resource (a string uri)",
            Targeted::Completion => "prompt or resource template (ref.name or ref.uri)",
            Targeted::Task => "task (a string taskId)",
        }
    }

    fn target(self, params: &Raw) -> Option<(Field, String)> {
        let text = |v: &Raw, key: &str| serde_json::from_str::<String>(v.get(key)?.get()).ok();
        match self {
            Targeted::Tool | Targeted::Prompt => Some((Field::Name, text(params, "name")?)),
            Targeted::Resource => Some((Field::Uri, text(params, "uri")?)),
            Targeted::Task => Some((Field::TaskId, text(params, "taskId")?)),
            Targeted::Completion => {
                let r = raw(params.get("ref")?)?;
                match text(&r, "type")?.as_str() {
                    "ref/prompt" => Some((Field::RefName, text(&r, "name")?)),
                    "ref/resource" => Some((Field::RefUri, text(&r, "uri")?)),
                    _ => None,
                }
            }
        }
    }

    fn by_uri(self, field: Field) -> bool {
        matches!(field, Field::Uri | Field::RefUri)
    }

    fn unknown(self, field: Field) -> Unknown {
        match (self, field) {
            (Targeted::Tool, _) => Unknown::Tool,
            (_, Field::Name | Field::RefName) => Unknown::Prompt,
            (_, Field::Uri | Field::RefUri | Field::TaskId) => Unknown::Resource,
        }
    }

    fn set_target(self, msg: &mut Raw, params: &mut Raw, field: Field, own: &str) -> Option<()> {
        let own = serde_json::value::to_raw_value(own).ok()?;
        match field {
            Field::Name => params.insert("name".into(), own),
            Field::Uri => params.insert("uri".into(), own),
            Field::TaskId => params.insert("taskId".into(), own),
            Field::RefName | Field::RefUri => {
                let mut r = raw(params.get("ref")?)?;
                let key = if field == Field::RefName {
                    "name"
                } else {
                    "uri"
                };
                r.insert(key.into(), own);
                params.insert("ref".into(), serde_json::value::to_raw_value(&r).ok()?)
            }
        };
        msg.insert(
            "params".into(),
            serde_json::value::to_raw_value(&params).ok()?,
        );
        Some(())
    }
}

/// A JSON object read one level deep: each member's value kept as the JSON text it
/// arrived as.
type Raw = BTreeMap<String, Box<RawValue>>;

/// `v` as a [`Raw`] object, if it is one.
fn raw(v: &RawValue) -> Option<Raw> {
    serde_json::from_str(v.get()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::for_test;

    fn snap() -> Snapshot {
        let (snap, _) = for_test(
            &std::env::temp_dir(),
            "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
routes:\n  - path: /mcp\n    members: [alpha, beta]\n\
upstreams:\n  alpha:\n    url: http://127.0.0.1:9/mcp\n  beta:\n    url: http://127.0.0.1:9/b\n",
        );
        snap
    }

    fn cx(method: &str) -> Ctx {
        let mut cx = Ctx::new(None);
        cx.op = Op::Message(Some(method.into()));
        cx
    }

    fn sent(d: &Destination) -> serde_json::Value {
        serde_json::from_slice(&d.body).expect("json")
    }

    #[test]
    fn a_prefixed_tool_goes_to_its_member_under_its_own_name() {
        let snap = snap();
        let mut cx = cx("tools/call");
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"beta__echo","arguments":{"x":1}}}"#;
        let d = message(&snap, 0, None, Bytes::from(body), &mut cx).expect("routed");
        assert_eq!(d.upstream.name(), "beta");
        assert_eq!(d.gated_by, Some(1));
        assert_eq!(d.session_ids, SessionIds::Drop);
        assert_eq!(sent(&d)["params"]["name"], "echo");
        assert_eq!(sent(&d)["params"]["arguments"]["x"], 1);
        assert_eq!(cx.upstream_tool.as_deref(), Some("echo"));
    }

    #[test]
    fn a_task_request_goes_to_the_member_running_the_task() {
        let snap = snap();
        let body =
            r#"{"jsonrpc":"2.0","id":4,"method":"tasks/get","params":{"taskId":"beta~\"t-9\""}}"#;
        let d = message(&snap, 0, None, Bytes::from(body), &mut cx("tasks/get")).expect("routed");
        assert_eq!(d.upstream.name(), "beta");
        assert_eq!(sent(&d)["params"]["taskId"], "t-9");
        assert!(d.tasks, "its answer's task ids are mapped back");
        for bad in [r#""t-9""#, r#""gamma~\"t\"""#, r#""beta~7""#, "7"] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":4,"method":"tasks/result","params":{{"taskId":{bad}}}}}"#
            );
            let r = message(&snap, 0, None, Bytes::from(body), &mut cx("tasks/result"));
            assert!(
                matches!(r, Err(Refusal::InvalidParams(_))),
                "{bad}: {:?}",
                r.err()
            );
        }
        let body = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"alpha__slow","task":{"ttl":1000}}}"#;
        let d = message(&snap, 0, None, Bytes::from(body), &mut cx("tools/call")).expect("routed");
        assert!(d.tasks, "a task-augmented call");
    }

    #[test]
    fn the_arguments_reach_the_member_byte_for_byte() {
        let snap = snap();
        let args = r#"{"z":1.50,"a":[2e3,"\u00e9"],"m":{"y":null,"b":true}}"#;
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"alpha__echo","arguments":{args}}}}}"#
        );
        let d = message(&snap, 0, None, Bytes::from(body), &mut cx("tools/call")).expect("routed");
        let text = String::from_utf8(d.body.to_vec()).expect("utf-8");
        assert!(
            text.contains(args),
            "numbers, escapes and key order kept: {text}"
        );
        assert_eq!(sent(&d)["params"]["name"], "echo");
    }

    #[test]
    fn a_wrapped_uri_and_a_completion_ref_go_to_their_member() {
        let snap = snap();
        let body = r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"portcullis://alpha/file:///a.txt"}}"#;
        let d =
            message(&snap, 0, None, Bytes::from(body), &mut cx("resources/read")).expect("routed");
        assert_eq!(d.upstream.name(), "alpha");
        assert_eq!(sent(&d)["params"]["uri"], "file:///a.txt");
        let body = r#"{"jsonrpc":"2.0","id":3,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"alpha__greet"},"argument":{"name":"a","value":"b"}}}"#;
        let d = message(
            &snap,
            0,
            None,
            Bytes::from(body),
            &mut cx("completion/complete"),
        )
        .expect("routed");
        assert_eq!(sent(&d)["params"]["ref"]["name"], "greet");
    }

    #[test]
    fn a_name_no_member_owns_is_unknown_and_a_list_fans_out() {
        let snap = snap();
        let body =
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"gamma__echo"}}"#;
        let r = message(&snap, 0, None, Bytes::from(body), &mut cx("tools/call"));
        assert!(
            matches!(&r, Err(Refusal::Hidden { kind: Unknown::Tool, name }) if name == "gamma__echo"),
            "{:?}",
            r.err()
        );
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#;
        assert!(matches!(
            message(&snap, 0, None, Bytes::from(body), &mut cx("tools/call")),
            Err(Refusal::InvalidParams(_))
        ));
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        let d = message(&snap, 0, None, Bytes::from(body), &mut cx("tools/list")).expect("fan");
        assert_eq!(d.upstream.name(), "/mcp");
        assert_eq!(d.gated_by, None);
        assert_eq!(d.session_ids, SessionIds::Seal);
    }
}
