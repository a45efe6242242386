//! The policy filter, on routes with a policy. A `*/list` answer (a JSON body, or an
//! event of a stream) is read whole and filtered for the caller; a request the server
//! sends the client (such as `sampling/createMessage`) that the policy does not allow
//! is held back and answered to the server on the client's behalf; a
//! `notifications/tools/list_changed` makes the catalog forget the upstream's tools.
//! Tool results and notifications pass byte for byte, unread. What must be judged but
//! cannot be read (not one message, ambiguous, too large) is replaced by a JSON-RPC
//! error rather than passed on: a policy fails closed.

use std::sync::Arc;

use portcullis_auth::Principal;
use portcullis_mcp::scan::{Head, Mode};
use portcullis_policy::discovery::{filter_list, list_kind, ListKind, OwnNames};
use portcullis_policy::Policy;
use serde_json::Value;

use super::{Effects, Filter, Verdict};
use crate::catalog::Catalogs;
use crate::upstream::federated::names::Names;

/// The largest list answer (JSON body, or one SSE event) the gateway will rewrite.
pub const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

/// Everything the policy filter of one answer needs.
pub struct PolicyFilter {
    /// The route's policy.
    pub policy: Arc<Policy>,
    /// The list this answer is for, if the request was a list; `None` on a GET
    /// stream, where any list answer (a resumed POST's, say) is recognised by its
    /// members.
    pub kind: Option<ListKind>,
    /// Whether responses here may be list answers (a list request, or a stream that
    /// may carry any answer).
    pub lists: bool,
    /// The caller.
    pub who: Option<Arc<Principal>>,
    /// The upstream's name.
    pub upstream: String,
    /// Whether the upstream's annotations are trusted.
    pub trust_annotations: bool,
    /// Where listed tools are learned.
    pub cache: Arc<Catalogs>,
    /// The request id's JSON text, for the fail-closed error.
    pub rpc_id: Option<String>,
    /// On a federated route, its members' names: rules naming a member match the
    /// member's own names.
    pub members: Option<Names>,
}

/// What reading one message found.
enum Seen {
    /// Not JSON (a priming event, say): nothing a policy could judge.
    NotJson,
    /// JSON, but not one message object: a policy cannot judge it.
    Unreadable,
    /// A message to pass on as it is.
    Unchanged,
    /// A list answer, rewritten.
    Rewritten(String),
    /// A request from the server the policy does not allow: the answer the server gets
    /// instead of the client's.
    Refused(Vec<u8>),
}

impl PolicyFilter {
    /// Reads one JSON-RPC message given as text.
    fn message(&self, text: &str) -> Seen {
        let Ok(mut msg) = serde_json::from_str::<Value>(text) else {
            return Seen::NotJson;
        };
        let Some(obj) = msg.as_object_mut() else {
            return Seen::Unreadable;
        };
        let is_response = obj.contains_key("result") || obj.contains_key("error");
        if let (Some(method), Some(id), false) = (
            obj.get("method").and_then(Value::as_str),
            obj.get("id"),
            is_response,
        ) {
            return match crate::judge::server_request_refusal(
                &self.policy,
                self.who.as_deref(),
                method,
                &self.upstream,
            ) {
                None => Seen::Unchanged,
                Some(refusal) => Seen::Refused(refusal.body(Some(&id.to_string()))),
            };
        }
        if let Some(result) = obj.get_mut("result") {
            if let Some(kind) = self.kind.or_else(|| detect(result)) {
                let own = |name: &str| self.members.as_ref()?.own(kind.kind, name);
                let own: Option<OwnNames<'_>> = self.members.as_ref().map(|_| &own as OwnNames<'_>);
                let out = filter_list(
                    &self.policy,
                    self.who.as_deref(),
                    &self.upstream,
                    kind,
                    self.trust_annotations,
                    own,
                    result,
                );
                // Untrusted upstreams' tools carry the spec's defaults here already.
                self.cache.learn(&self.upstream, &out.tool_annotations);
                return match serde_json::to_string(&msg) {
                    Ok(t) => Seen::Rewritten(t),
                    Err(_) => Seen::Unreadable,
                };
            }
        }
        Seen::Unchanged
    }

    /// The error a client gets instead of an answer that could not be judged.
    fn unreadable(&self) -> String {
        let id = self.rpc_id.as_deref().unwrap_or("null");
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32603,"message":"Internal error: the upstream's answer could not be read"}}}}"#
        )
    }

    /// A whole JSON body (a list answer), filtered.
    pub fn whole_json(&self, body: &[u8]) -> Vec<u8> {
        let seen = std::str::from_utf8(body).ok().map(|t| (t, self.message(t)));
        match seen {
            Some((text, Seen::Unchanged)) => text.as_bytes().to_vec(),
            Some((_, Seen::Rewritten(out))) => out.into_bytes(),
            _ => self.unreadable().into_bytes(),
        }
    }
}

/// Which list a result answers, by its members (for streams that may carry any).
fn detect(result: &Value) -> Option<ListKind> {
    [
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
    ]
    .into_iter()
    .filter_map(list_kind)
    .find(|k| result.get(k.member).is_some_and(Value::is_array))
}

impl Filter for PolicyFilter {
    fn wants(&self, head: &Head) -> Mode {
        match head {
            Head::Response if !self.lists => Mode::Stream,
            Head::Method(m) if m.starts_with("notifications/") => Mode::Stream,
            Head::Opaque => Mode::Stream,
            _ => Mode::Whole,
        }
    }

    fn on_head(&mut self, head: &Head, _fx: &mut Effects) {
        if matches!(head, Head::Method(m) if m == "notifications/tools/list_changed") {
            self.cache.forget(&self.upstream);
        }
    }

    fn on_event(
        &mut self,
        data: Option<&str>,
        _head: &Head,
        ambiguous: bool,
        fx: &mut Effects,
    ) -> Verdict {
        if ambiguous {
            return Verdict::Replace(self.unreadable());
        }
        let Some(data) = data else {
            return Verdict::Pass;
        };
        // Every event is read (however its JSON is spelled): a list answer or a server
        // request must not slip through because it was written unusually.
        match self.message(data) {
            Seen::NotJson | Seen::Unchanged => Verdict::Pass,
            Seen::Rewritten(text) => Verdict::Replace(text),
            Seen::Refused(reply) => {
                fx.replies.push(reply);
                Verdict::Drop
            }
            Seen::Unreadable => Verdict::Replace(self.unreadable()),
        }
    }

    fn on_oversized(&mut self, head: &Head) -> Option<String> {
        // A server request too large to judge is simply not delivered.
        (!matches!(head, Head::Method(_))).then(|| self.unreadable())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Chain;
    use super::*;

    fn filter(lists: bool) -> PolicyFilter {
        let file = portcullis_policy::parse(
            "default: allow\nrules:\n  - {name: h, effect: hide, targets: [{tool: \"secret*\"}]}\n  - {name: no-sampling, effect: deny, targets: [{method: sampling/createMessage}]}\n",
        )
        .expect("parse");
        PolicyFilter {
            policy: Arc::new(portcullis_policy::compile(&file).expect("compile")),
            kind: lists.then(|| list_kind("tools/list")).flatten(),
            lists,
            who: None,
            upstream: "u".into(),
            trust_annotations: true,
            cache: Arc::new(Catalogs::default()),
            rpc_id: Some("4".into()),
            members: None,
        }
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":4,"result":{"tools":[{"name":"secret_x"},{"name":"echo","annotations":{"readOnlyHint":true}}]}}"#;

    fn run(chain: &mut Chain, input: &str, chunk: usize) -> String {
        let mut out = Vec::new();
        for c in input.as_bytes().chunks(chunk) {
            out.extend_from_slice(&chain.push(c));
        }
        out.extend_from_slice(&chain.finish());
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_json_list_is_filtered_whole_and_annotations_are_learned() {
        let f = filter(true);
        let cache = f.cache.clone();
        let out = f.whole_json(LIST.as_bytes());
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["result"]["tools"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["result"]["tools"][0]["name"], "echo");
        assert!(
            matches!(cache.tool("u", "echo"), crate::catalog::ToolInfo::Listed(a) if a.read_only)
        );
        assert!(
            matches!(
                cache.tool("u", "secret_x"),
                crate::catalog::ToolInfo::Listed(_)
            ),
            "hidden tools are learned too"
        );
        for bad in [
            &b"{\"result\": {\"tools\": [ {\"name\":\"secret"[..],
            b"[{\"result\":{\"tools\":[{\"name\":\"secret\"}]}}]",
        ] {
            let out = f.whole_json(bad);
            assert!(!String::from_utf8_lossy(&out).contains("secret"));
            let v: Value = serde_json::from_slice(&out).expect("an error in JSON");
            assert_eq!(v["error"]["code"], -32603);
            assert_eq!(v["id"], 4);
        }
    }

    #[test]
    fn an_sse_list_is_filtered_and_other_events_pass_untouched() {
        let progress = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
        let stream = format!("{progress}event: message\nid: 9\ndata: {LIST}\n\n");
        for chunk in [1, 5, 1000] {
            let mut chain = Chain::new(vec![Box::new(filter(true))], MAX_LIST_BYTES, true);
            let text = run(&mut chain, &stream, chunk);
            assert!(text.starts_with(progress), "{text}");
            assert!(text.contains("id: 9\n"), "{text}");
            assert!(!text.contains("secret_x"), "{text}");
            assert!(text.contains("\"echo\""), "{text}");
        }
    }

    #[test]
    fn a_stream_recognises_any_list_answer_however_it_is_spelled() {
        let escaped = LIST.replace("\"result\"", "\"res\\u0075lt\"");
        let stream = format!("data: {escaped}\n\ndata: [1]\n\ndata:\n\n");
        let mut f = filter(true);
        f.kind = None;
        let mut chain = Chain::new(vec![Box::new(f)], MAX_LIST_BYTES, true);
        let text = run(&mut chain, &stream, 7);
        assert!(!text.contains("secret_x"), "{text}");
        assert!(text.contains("echo"), "{text}");
        assert!(
            text.contains("-32603"),
            "a non-object message fails closed: {text}"
        );
        assert!(
            text.ends_with("data:\n\n"),
            "a priming event passes: {text}"
        );
    }

    #[test]
    fn a_server_request_the_policy_refuses_is_held_back_and_answered() {
        let ask = r#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{}}"#;
        let roots = r#"{"jsonrpc":"2.0","id":"s2","method":"roots/list"}"#;
        let stream = format!("data: {ask}\n\ndata: {roots}\n\n");
        let mut chain = Chain::new(vec![Box::new(filter(false))], MAX_LIST_BYTES, true);
        let text = run(&mut chain, &stream, 3);
        assert!(!text.contains("sampling"), "held back: {text}");
        assert!(text.contains("roots/list"), "allowed requests pass: {text}");
        let replies = chain.effects().replies;
        assert_eq!(replies.len(), 1);
        let v: Value = serde_json::from_slice(&replies[0]).expect("json");
        assert_eq!(v["id"], "s1");
        assert_eq!(v["error"]["code"], -32016);
    }

    #[test]
    fn tool_results_stream_unread_and_ambiguous_ones_are_cut_before_their_end() {
        let big = "x".repeat(100_000);
        let result = format!("data: {{\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{big}\"}}]}}}}\n\n");
        let mut chain = Chain::new(vec![Box::new(filter(false))], 1024, true);
        let first = chain.push(&result.as_bytes()[..60_000]);
        assert!(
            first.len() > 50_000,
            "streamed past the hold limit as it came"
        );
        let mut out = first.to_vec();
        out.extend_from_slice(&chain.push(&result.as_bytes()[60_000..]));
        assert_eq!(out, result.as_bytes());
        assert!(!chain.effects().broken);

        let smuggled = "data: {\"id\":4,\"result\":{},\"method\":\"sampling/createMessage\"}\n\n";
        let mut chain = Chain::new(vec![Box::new(filter(false))], 1024, true);
        let out = chain.push(smuggled.as_bytes());
        assert!(!out.ends_with(b"\n\n"), "the event never completes");
        assert!(chain.effects().broken);
    }

    #[test]
    fn list_changed_forgets_the_catalog() {
        let f = filter(false);
        let cache = f.cache.clone();
        cache.learn(
            "u",
            &[("echo".into(), portcullis_policy::Annotations::SPEC_DEFAULTS)],
        );
        let mut chain = Chain::new(vec![Box::new(f)], MAX_LIST_BYTES, true);
        let echoing = "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"notifications/tools/list_changed\"}]}}\n\n";
        chain.push(echoing.as_bytes());
        assert!(
            matches!(cache.tool("u", "echo"), crate::catalog::ToolInfo::Listed(_)),
            "a tool result that mentions it changes nothing"
        );
        chain.push(
            b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n",
        );
        assert_eq!(cache.tool("u", "echo"), crate::catalog::ToolInfo::Unknown);
    }
}
