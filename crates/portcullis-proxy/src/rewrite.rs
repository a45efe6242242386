//! Responses on a route with a policy, on their way to the client: a `*/list` answer
//! sent as JSON is read whole and filtered; an SSE stream is split into events, a list
//! answer in it is rewritten, and a request the server sends the client (such as
//! `sampling/createMessage`) that the policy does not allow is held back and answered
//! to the server on the client's behalf. Every other event passes byte for byte. An
//! answer that cannot be read is replaced by a JSON-RPC error rather than passed on
//! unfiltered: a policy fails closed.

use std::sync::Arc;

use bytes::Bytes;
use portcullis_auth::Principal;
use portcullis_mcp::sse::{Event, Splitter};
use portcullis_policy::discovery::{filter_list, list_kind, ListKind};
use portcullis_policy::Policy;
use serde_json::Value;

use crate::catalog::Catalogs;

/// The largest list answer (JSON body, or one SSE event) the gateway will rewrite.
pub const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

/// Everything a list filter needs, owned so it can live across the relay loop.
pub(crate) struct ListFilter {
    pub policy: Arc<Policy>,
    /// The list this answer is for; `None` on a GET stream, where any list answer (a
    /// resumed POST's, say) is recognised by its members.
    pub kind: Option<ListKind>,
    pub who: Option<Arc<Principal>>,
    pub upstream: String,
    pub trust_annotations: bool,
    pub cache: Arc<Catalogs>,
    /// The request id's JSON text, for the fail-closed error.
    pub rpc_id: Option<String>,
}

/// What reading one message found.
enum Seen {
    /// Not JSON (a priming event, say): nothing a policy could judge.
    NotJson,
    /// JSON, but not one message object: a policy cannot judge it.
    Unreadable,
    /// A message to pass on, as this text.
    Message(String),
    /// A request from the server the policy does not allow: the answer the server
    /// gets instead of the client's.
    Refused(Reply),
}

/// An answer the gateway sends the upstream on the client's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The JSON-RPC error response.
    pub body: Vec<u8>,
}

impl ListFilter {
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
            return match crate::policy::server_request_refusal(
                &self.policy,
                self.who.as_deref(),
                method,
                &self.upstream,
            ) {
                None => Seen::Message(text.to_owned()),
                Some(refusal) => Seen::Refused(Reply {
                    body: refusal.body(Some(&id.to_string())),
                }),
            };
        }
        if let Some(result) = obj.get_mut("result") {
            if let Some(kind) = self.kind.or_else(|| detect(result)) {
                let out = filter_list(
                    &self.policy,
                    self.who.as_deref(),
                    &self.upstream,
                    kind,
                    self.trust_annotations,
                    result,
                );
                // Untrusted upstreams' tools carry the spec's defaults here already.
                self.cache.learn(&self.upstream, &out.tool_annotations);
                return match serde_json::to_string(&msg) {
                    Ok(t) => Seen::Message(t),
                    Err(_) => Seen::Unreadable,
                };
            }
        }
        Seen::Message(text.to_owned())
    }

    fn unreadable(&self) -> Vec<u8> {
        let id = self.rpc_id.as_deref().unwrap_or("null");
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32603,"message":"Internal error: the upstream's list answer could not be read"}}}}"#
        )
        .into_bytes()
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

/// What happens to a response body on its way through.
pub(crate) enum Rewriter {
    /// Relayed as is.
    Pass,
    /// A JSON list answer, gathered whole.
    Json { filter: ListFilter, buf: Vec<u8> },
    /// An SSE stream: list answers filtered, server requests judged.
    Sse {
        filter: ListFilter,
        splitter: Box<Splitter>,
        replies: Vec<Reply>,
    },
}

impl Rewriter {
    /// A rewriter for a response of this content type. A JSON body is rewritten only
    /// when it answers a list request; every SSE stream on a policy route is read.
    pub fn new(filter: Option<ListFilter>, is_sse: bool) -> Rewriter {
        match filter {
            None => Rewriter::Pass,
            Some(filter) if is_sse => Rewriter::Sse {
                filter,
                splitter: Box::new(Splitter::new(MAX_LIST_BYTES)),
                replies: Vec::new(),
            },
            Some(filter) if filter.kind.is_some() => Rewriter::Json {
                filter,
                buf: Vec::new(),
            },
            Some(_) => Rewriter::Pass,
        }
    }

    /// Answers to send the upstream for requests of its that were held back.
    pub fn take_replies(&mut self) -> Vec<Reply> {
        match self {
            Rewriter::Sse { replies, .. } => std::mem::take(replies),
            _ => Vec::new(),
        }
    }

    /// Whether the body changes (then its length does too).
    pub fn rewrites(&self) -> bool {
        !matches!(self, Rewriter::Pass)
    }

    /// Takes a chunk from the upstream; returns what to send now. `Err` when the answer
    /// grew past [`MAX_LIST_BYTES`].
    pub fn push(&mut self, chunk: Bytes) -> Result<Bytes, ()> {
        match self {
            Rewriter::Pass => Ok(chunk),
            Rewriter::Json { buf, .. } => {
                if buf.len() + chunk.len() > MAX_LIST_BYTES {
                    return Err(());
                }
                buf.extend_from_slice(&chunk);
                Ok(Bytes::new())
            }
            Rewriter::Sse {
                filter,
                splitter,
                replies,
            } => {
                let events = splitter.push(&chunk).map_err(|_| ())?;
                Ok(Bytes::from(events_out(filter, events, replies)))
            }
        }
    }

    /// The upstream's body ended; returns what is left to send.
    pub fn finish(&mut self) -> Bytes {
        match self {
            Rewriter::Pass => Bytes::new(),
            Rewriter::Json { filter, buf } => {
                let text = std::str::from_utf8(buf).ok();
                match text.map(|t| filter.message(t)) {
                    Some(Seen::Message(out)) => Bytes::from(out),
                    _ => Bytes::from(filter.unreadable()),
                }
            }
            Rewriter::Sse {
                filter,
                splitter,
                replies,
            } => {
                // An event cut off by the stream's end is dropped: it cannot be judged.
                let events = splitter.finish();
                Bytes::from(events_out(filter, events, replies))
            }
        }
    }
}

fn events_out(filter: &ListFilter, events: Vec<Event>, replies: &mut Vec<Reply>) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in events {
        let Some(data) = ev.data.as_deref() else {
            out.extend_from_slice(&ev.raw);
            continue;
        };
        // Every event is read (however its JSON is spelled): a list answer or a server
        // request must not slip through because it was written unusually.
        match filter.message(data) {
            Seen::NotJson => out.extend_from_slice(&ev.raw),
            Seen::Message(text) if text == data => out.extend_from_slice(&ev.raw),
            Seen::Message(text) => out.extend_from_slice(&ev.with_data(&text)),
            Seen::Refused(reply) => replies.push(reply),
            Seen::Unreadable => {
                out.extend_from_slice(&ev.with_data(&String::from_utf8_lossy(&filter.unreadable())))
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> ListFilter {
        let file = portcullis_policy::parse(
            "default: allow\nrules:\n  - {name: h, effect: hide, targets: [{tool: \"secret*\"}]}\n",
        )
        .expect("parse");
        ListFilter {
            policy: Arc::new(portcullis_policy::compile(&file).expect("compile")),
            kind: list_kind("tools/list"),
            who: None,
            upstream: "u".into(),
            trust_annotations: true,
            cache: Arc::new(Catalogs::default()),
            rpc_id: Some("4".into()),
        }
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":4,"result":{"tools":[{"name":"secret_x"},{"name":"echo","annotations":{"readOnlyHint":true}}]}}"#;

    #[test]
    fn a_json_list_is_filtered_whole_and_annotations_are_learned() {
        let f = filter();
        let cache = f.cache.clone();
        let mut r = Rewriter::new(Some(f), false);
        for chunk in LIST.as_bytes().chunks(7) {
            assert!(r
                .push(Bytes::copy_from_slice(chunk))
                .expect("fits")
                .is_empty());
        }
        let out = r.finish();
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
    }

    #[test]
    fn an_sse_list_is_filtered_and_other_events_pass_untouched() {
        let progress = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
        let stream = format!("{progress}event: message\nid: 9\ndata: {LIST}\n\n");
        let mut r = Rewriter::new(Some(filter()), true);
        let mut out = Vec::new();
        for chunk in stream.as_bytes().chunks(5) {
            out.extend_from_slice(&r.push(Bytes::copy_from_slice(chunk)).expect("fits"));
        }
        out.extend_from_slice(&r.finish());
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with(progress), "{text}");
        assert!(text.contains("id: 9\n"), "{text}");
        assert!(!text.contains("secret_x"), "{text}");
        assert!(text.contains("\"echo\""), "{text}");
    }

    #[test]
    fn a_stream_recognises_any_list_answer_however_it_is_spelled() {
        let mut f = filter();
        f.kind = None;
        let escaped = LIST.replace("\"result\"", "\"res\\u0075lt\"");
        let stream = format!("data: {escaped}\n\ndata: [1]\n\ndata:\n\n");
        let mut r = Rewriter::new(Some(f), true);
        let mut out = r.push(Bytes::from(stream)).expect("fits").to_vec();
        out.extend_from_slice(&r.finish());
        let text = String::from_utf8(out).expect("utf-8");
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
        let file = portcullis_policy::parse(
            "default: allow\nrules:\n  - {name: no-sampling, effect: deny, targets: [{method: sampling/createMessage}]}\n",
        )
        .expect("parse");
        let mut f = filter();
        f.policy = Arc::new(portcullis_policy::compile(&file).expect("compile"));
        f.kind = None;
        let ask = r#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{}}"#;
        let roots = r#"{"jsonrpc":"2.0","id":"s2","method":"roots/list"}"#;
        let stream = format!("data: {ask}\n\ndata: {roots}\n\n");
        let mut r = Rewriter::new(Some(f), true);
        let out = r.push(Bytes::from(stream)).expect("fits");
        let text = String::from_utf8(out.to_vec()).expect("utf-8");
        assert!(!text.contains("sampling"), "held back: {text}");
        assert!(text.contains("roots/list"), "allowed requests pass: {text}");
        let replies = r.take_replies();
        assert_eq!(replies.len(), 1);
        let v: Value = serde_json::from_slice(&replies[0].body).expect("json");
        assert_eq!(v["id"], "s1");
        assert_eq!(v["error"]["code"], -32016);
        assert!(r.take_replies().is_empty());
    }

    #[test]
    fn unreadable_or_oversized_answers_fail_closed() {
        let mut r = Rewriter::new(Some(filter()), false);
        r.push(Bytes::from_static(
            b"{\"result\": {\"tools\": [ {\"name\":\"secret",
        ))
        .expect("fits");
        let out = r.finish();
        assert!(!String::from_utf8_lossy(&out).contains("secret"));
        let v: Value = serde_json::from_slice(&out).expect("an error in JSON");
        assert_eq!(v["error"]["code"], -32603);
        assert_eq!(v["id"], 4);

        let mut r = Rewriter::new(Some(filter()), false);
        r.push(Bytes::from_static(
            b"[{\"result\":{\"tools\":[{\"name\":\"secret\"}]}}]",
        ))
        .expect("fits");
        assert!(
            !String::from_utf8_lossy(&r.finish()).contains("secret"),
            "an array answer"
        );

        let mut r = Rewriter::new(Some(filter()), false);
        let big = Bytes::from(vec![b' '; MAX_LIST_BYTES]);
        assert!(r.push(big).is_ok());
        assert!(r.push(Bytes::from_static(b"x")).is_err());
    }
}
