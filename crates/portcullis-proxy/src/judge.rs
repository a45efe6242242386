//! The words policies are applied in at the gateway, shared by the request's policy
//! stage and the response filters that judge what servers send: what a message asks to
//! use (tool, prompt, resource, method), the methods never judged, the refusal a
//! `deny` or `hide` becomes, and renamed tools mapped back to the upstream's name.

use portcullis_auth::Principal;
use portcullis_mcp::{Envelope, Refusal, Unknown};
use portcullis_policy::{Annotations, Decision, Effect, Kind, Policy, Target};
use serde::Deserialize;
use serde_json::value::RawValue;

/// What a request asks to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The kind of target.
    pub kind: Kind,
    /// Its name, URI or template as the client sent it (the method, for [`Kind::Method`]).
    pub name: String,
}

#[derive(Deserialize)]
struct CompletionParams {
    #[serde(rename = "ref")]
    reference: CompletionRef,
}

#[derive(Deserialize)]
struct CompletionRef {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uri: Option<String>,
}

/// Methods never judged: the handshake, liveness, discovery, the stream of
/// notifications, follow-ups on tasks already judged when created, and lists (lists
/// are filtered instead).
fn exempt(method: &str) -> bool {
    matches!(
        method,
        "initialize"
            | "ping"
            | "server/discover"
            | "subscriptions/listen"
            | "tasks/get"
            | "tasks/result"
            | "tasks/cancel"
            | "tasks/list"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
    ) || method.starts_with("notifications/")
}

/// What a client request asks to use: `Ok(None)` for exempt methods, `Err` with the
/// reason when its target cannot be read (it is then refused, never judged as
/// something else).
pub fn asked(method: &str, env: &Envelope<'_>) -> Result<Option<Asked>, String> {
    if exempt(method) {
        return Ok(None);
    }
    let target = env.target.as_deref();
    let (kind, name) = match (method, target) {
        ("tools/call", Some(n)) => (Kind::Tool, n.to_owned()),
        ("prompts/get", Some(n)) => (Kind::Prompt, n.to_owned()),
        ("resources/read" | "resources/subscribe" | "resources/unsubscribe", Some(u)) => {
            (Kind::Resource, u.to_owned())
        }
        ("tools/call" | "prompts/get", None) => {
            return Err("params must be an object with a string name".into())
        }
        ("resources/read" | "resources/subscribe" | "resources/unsubscribe", None) => {
            return Err("params must be an object with a string uri".into())
        }
        ("completion/complete", _) => match completion_ref(env.params) {
            Some(found) => found,
            None => {
                return Err(
                    "params.ref must name a prompt (ref/prompt, name) or a resource template (ref/resource, uri)"
                        .into(),
                )
            }
        },
        _ => (Kind::Method, method.to_owned()),
    };
    Ok(Some(Asked { kind, name }))
}

fn completion_ref(params: Option<&RawValue>) -> Option<(Kind, String)> {
    let p: CompletionParams = serde_json::from_str(params?.get()).ok()?;
    match p.reference.kind.as_str() {
        "ref/prompt" => Some((Kind::Prompt, p.reference.name?)),
        "ref/resource" => Some((Kind::ResourceTemplate, p.reference.uri?)),
        _ => None,
    }
}

/// The upstream's name for the tool a client called: `Ok(None)` when it is not
/// renamed, `Ok(Some(original))` when it is, `Err(())` when the client used a name
/// that was renamed away (unknown to clients).
#[allow(clippy::result_unit_err)]
pub fn upstream_tool(policy: &Policy, asked: &Asked) -> Result<Option<String>, ()> {
    if asked.kind != Kind::Tool {
        return Ok(None);
    }
    match policy.upstream_tool_name(&asked.name) {
        Ok(original) if original != asked.name => Ok(Some(original.to_owned())),
        Ok(_) => Ok(None),
        Err(()) => Err(()),
    }
}

/// Judges `asked` (by its upstream name `name`) for `who`, with the tool's annotations
/// (the spec's defaults when unknown or untrusted).
/// On a federated route, `own` is the member (its upstream name) and the member's own
/// name behind `name`: rules naming the member match that name too.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    policy: &Policy,
    who: Option<&Principal>,
    method: &str,
    asked: &Asked,
    name: &str,
    upstream: &str,
    own: Option<(&str, &str)>,
    annotations: Annotations,
) -> Decision {
    let target = Target {
        method,
        kind: asked.kind,
        name,
        upstream,
        annotations,
    };
    match own {
        Some((member, own_name)) => {
            let own = Target {
                name: own_name,
                upstream: member,
                ..target
            };
            policy.decide_as_member(who, &target, &own)
        }
        None => policy.decide(who, &target),
    }
}

/// The decision for a tool called by a name that was renamed away: unknown.
pub fn renamed_away() -> Decision {
    Decision {
        effect: Effect::Hide,
        rule: Some(std::sync::Arc::from("renamed")),
    }
}

/// The refusal for a request the server sends the client (`sampling/createMessage`,
/// `elicitation/create`, `roots/list`...), judged as its method; `None` if allowed.
pub fn server_request_refusal(
    policy: &Policy,
    who: Option<&Principal>,
    method: &str,
    upstream: &str,
) -> Option<Refusal> {
    if exempt(method) {
        return None;
    }
    let asked = Asked {
        kind: Kind::Method,
        name: method.to_owned(),
    };
    let d = judge(
        policy,
        who,
        method,
        &asked,
        method,
        upstream,
        None,
        Annotations::SPEC_DEFAULTS,
    );
    refusal(&d, &asked, false)
}

/// The decision for a tool the upstream's list does not have: unknown, like a hidden one.
pub fn absent() -> Decision {
    Decision {
        effect: Effect::Hide,
        rule: Some(std::sync::Arc::from("absent")),
    }
}

/// The refusal for a `deny` or `hide` decision on `asked`. In the stateless revision
/// an unknown method is HTTP 404, as there.
pub fn refusal(decision: &Decision, asked: &Asked, stateless: bool) -> Option<Refusal> {
    match decision.effect {
        Effect::Allow => None,
        Effect::Deny => Some(Refusal::PolicyDenied {
            rule: decision.rule_name().to_owned(),
            target: format!("{} {}", kind_word(asked.kind), asked.name),
        }),
        Effect::Hide => Some(Refusal::Hidden {
            kind: match asked.kind {
                Kind::Tool => Unknown::Tool,
                Kind::Prompt => Unknown::Prompt,
                Kind::Resource | Kind::ResourceTemplate => Unknown::Resource,
                Kind::Method if stateless => Unknown::StatelessMethod,
                Kind::Method => Unknown::Method,
            },
            name: asked.name.clone(),
        }),
    }
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Tool => "tool",
        Kind::Prompt => "prompt",
        Kind::Resource => "resource",
        Kind::ResourceTemplate => "resource template",
        Kind::Method => "method",
    }
}

/// `body` with `params.name` set to `name` (a renamed tool's upstream name). Every
/// other value keeps its exact JSON text (large numbers included). `None` if the body
/// cannot be rewritten; the caller then refuses the request rather than forward the
/// client's name.
pub fn with_tool_name(body: &[u8], name: &str) -> Option<Vec<u8>> {
    use std::collections::BTreeMap;
    type Raw = Box<RawValue>;
    let mut top: BTreeMap<String, Raw> = serde_json::from_slice(body).ok()?;
    let mut params: BTreeMap<String, Raw> = serde_json::from_str(top.get("params")?.get()).ok()?;
    params.insert("name".into(), serde_json::value::to_raw_value(name).ok()?);
    top.insert(
        "params".into(),
        serde_json::value::to_raw_value(&params).ok()?,
    );
    serde_json::to_vec(&top).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_mcp::Body;

    fn env_asked(json: &str) -> Result<Option<Asked>, String> {
        let body = Body::parse(json.as_bytes()).expect("parses");
        let Body::Single(env) = body else {
            panic!("single")
        };
        let method = env.method.as_deref().unwrap_or("").to_owned();
        asked(&method, &env)
    }

    #[test]
    fn requests_name_what_they_use() {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
                Some((Kind::Tool, "echo")),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#,
                Some((Kind::Prompt, "p")),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"file:///a"}}"#,
                Some((Kind::Resource, "file:///a")),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"a","value":"b"}}}"#,
                Some((Kind::Prompt, "p")),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"file:///{x}"}}}"#,
                Some((Kind::ResourceTemplate, "file:///{x}")),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{"level":"debug"}}"#,
                Some((Kind::Method, "logging/setLevel")),
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, None),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
                None,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                None,
            ),
        ];
        for (json, want) in cases {
            let got = env_asked(json).expect("readable");
            let want = want.map(|(kind, name)| Asked {
                kind,
                name: name.to_owned(),
            });
            assert_eq!(got, want, "{json}");
        }
    }

    #[test]
    fn unreadable_targets_are_refused_not_judged_as_something_else() {
        for json in [
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"a","name":"b"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/other"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["admin_x"]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":["p"]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{}}"#,
        ] {
            assert!(env_asked(json).is_err(), "{json}");
        }
    }

    #[test]
    fn a_rename_keeps_every_other_value_exactly() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"gh_search","arguments":{"n":12345678901234567890123,"f":1.0000000000000001}}}"#;
        let out =
            String::from_utf8(with_tool_name(body, "search").expect("rewritten")).expect("utf-8");
        assert!(out.contains(r#""name":"search""#), "{out}");
        assert!(
            out.contains("12345678901234567890123") && out.contains("1.0000000000000001"),
            "{out}"
        );
        assert!(with_tool_name(br#"{"params":[1]}"#, "x").is_none());
        assert!(with_tool_name(b"not json", "x").is_none());
    }

    #[test]
    fn renamed_tools_map_back_and_the_old_name_is_unknown() {
        let file = portcullis_policy::parse(
            "default: allow\ntransforms:\n  tools:\n    - {tool: search, rename: gh_search}\n",
        )
        .expect("parse");
        let p = portcullis_policy::compile(&file).expect("compile");
        let ask = |name: &str| Asked {
            kind: Kind::Tool,
            name: name.into(),
        };
        assert_eq!(
            upstream_tool(&p, &ask("gh_search")),
            Ok(Some("search".into()))
        );
        assert_eq!(upstream_tool(&p, &ask("search")), Err(()));
        assert_eq!(upstream_tool(&p, &ask("echo")), Ok(None));
        assert_eq!(
            with_tool_name(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"gh_search","arguments":{}}}"#, "search")
                .map(|b| String::from_utf8_lossy(&b).contains(r#""name":"search""#)),
            Some(true)
        );
    }
}
