//! The policy stage: what the request asks to use, and whether this caller may, before
//! any upstream work. `deny` is refused with the rule's name; `hide` exactly as an
//! unknown target; a renamed tool is sent on under the upstream's own name.
//!
//! Tool annotations and existence come from the gateway's catalog. A call is never
//! refused for what the gateway does not know: an allowed call goes on whatever the
//! catalog says (the upstream answers for tools it lacks), and only a denied tool that
//! a complete catalog does not list is answered as unknown, so a hidden tool and a
//! missing one look alike. When the catalog knows nothing yet and the decision depends
//! on it, the call waits at most [`WALK_WAIT`] for the gateway's own walk.

use std::sync::Arc;
use std::time::Duration;

use portcullis_mcp::{Envelope, Kind, Refusal};
use portcullis_policy::discovery::list_kind;
use portcullis_policy::{Annotations, Effect as Decided};

use crate::catalog::{Catalogs, ToolInfo};
use crate::ctx::{Ctx, Effect};
use crate::judge;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// The longest a call waits for a catalog walk before it is judged with what is known.
pub const WALK_WAIT: Duration = Duration::from_secs(1);

/// Judges the request against its route's policy. Returns the upstream's name for a
/// renamed tool.
pub async fn judge(
    snap: &Snapshot,
    route_idx: usize,
    env: &Envelope<'_>,
    catalogs: &Arc<Catalogs>,
    metrics: &Metrics,
    cx: &mut Ctx,
) -> Result<Option<String>, Refusal> {
    let route = &snap.config.routes[route_idx];
    let Some(policy) = &route.policy else {
        return Ok(None);
    };
    if env.kind != Kind::Request {
        return Ok(None);
    }
    let method = env.method.as_deref().unwrap_or("");
    cx.list = list_kind(method);
    let Some(asked) = judge::asked(method, env).map_err(Refusal::InvalidParams)? else {
        return Ok(None);
    };
    // On a federated route: the route's names, catalog and walk (docs/federation.md).
    let upstream_name = snap.route_upstream_name(route_idx);
    let trusted = snap.route_trusts_annotations(route_idx);
    let (decision, renamed, info) = match judge::upstream_tool(policy, &asked) {
        Err(()) => (judge::renamed_away(), None, ToolInfo::Unknown),
        Ok(renamed) => {
            let name = renamed.as_deref().unwrap_or(&asked.name).to_owned();
            let is_tool = asked.kind == portcullis_policy::Kind::Tool;
            let own = snap.federations[route_idx]
                .as_ref()
                .and_then(|f| f.names().own(asked.kind, &name));
            let decide = |info: ToolInfo| {
                let annotations = match info {
                    // Trust is read now, so turning it off applies at once.
                    ToolInfo::Listed(a) if trusted => a,
                    _ => Annotations::SPEC_DEFAULTS,
                };
                judge::judge(
                    policy,
                    cx.principal.as_deref(),
                    method,
                    &asked,
                    &name,
                    upstream_name,
                    own.as_ref().map(|(m, n)| (m.as_str(), n.as_str())),
                    annotations,
                )
            };
            let mut info = if is_tool {
                catalogs.tool(upstream_name, &name)
            } else {
                ToolInfo::Unknown
            };
            let mut decision = decide(info);
            let needs_catalog = policy.uses_annotations() || decision.effect == Decided::Deny;
            if is_tool && info == ToolInfo::Unknown && needs_catalog {
                info = catalogs
                    .tool_after_walk(snap.route_upstream(route_idx), trusted, &name, WALK_WAIT)
                    .await;
                decision = decide(info);
            }
            (decision, renamed, info)
        }
    };
    let effect = match decision.effect {
        Decided::Allow => Effect::Allow,
        Decided::Hide => Effect::Hide,
        Decided::Deny if info == ToolInfo::Absent => Effect::Absent,
        Decided::Deny => Effect::Deny,
    };
    let rule: Arc<str> = Arc::from(if effect == Effect::Absent {
        "absent"
    } else {
        decision.rule_name()
    });
    metrics
        .policy_decisions
        .with_label_values(&[route.name.as_str(), decision.effect.as_str(), &rule])
        .inc();
    cx.decision = Some((effect, rule));
    let refusal = if effect == Effect::Absent {
        // Not in the upstream's list: answered as unknown, exactly as a hidden tool is.
        judge::refusal(&judge::absent(), &asked, cx.stateless())
    } else {
        judge::refusal(&decision, &asked, cx.stateless())
    };
    match refusal {
        Some(r) => Err(r),
        None => {
            cx.upstream_tool = renamed.clone();
            Ok(renamed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::for_test;

    const POLICY: &str = "default: allow\nrules:\n\
  - {name: no-delete, effect: deny, targets: [{tool: delete_file}]}\n\
  - {name: hide-admin, effect: hide, targets: [{tool: \"admin_*\"}]}\n";

    fn setup() -> (Snapshot, Arc<Metrics>, Arc<Catalogs>) {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-policy-stage-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("policy.yaml"), POLICY).expect("policy");
        let (snap, metrics) = for_test(
            &dir,
            "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
routes:\n  - path: /mcp\n    upstream: main\n    policy: policy.yaml\n\
upstreams:\n  main:\n    url: http://127.0.0.1:9/mcp\n",
        );
        let catalogs = Arc::new(Catalogs::default());
        // Known tools: nothing here waits for a walk (no socket is opened).
        catalogs.learn(
            "main",
            &["echo", "delete_file", "admin_reset"]
                .map(|t| (t.to_owned(), Annotations::SPEC_DEFAULTS)),
        );
        (snap, metrics, catalogs)
    }

    async fn judged(body: &str) -> (Result<Option<String>, Refusal>, Ctx) {
        let (snap, metrics, catalogs) = setup();
        let env = Envelope::parse(body.as_bytes()).expect("envelope");
        let mut cx = Ctx::new(None);
        let r = judge(&snap, 0, &env, &catalogs, &metrics, &mut cx).await;
        (r, cx)
    }

    fn call(tool: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
        )
    }

    #[tokio::test]
    async fn an_allowed_call_goes_on_and_its_decision_is_kept_for_the_logs() {
        let (r, cx) = judged(&call("echo")).await;
        assert_eq!(r, Ok(None));
        assert_eq!(cx.decision.map(|(e, _)| e), Some(Effect::Allow));
    }

    #[tokio::test]
    async fn a_denied_call_is_refused_naming_its_rule() {
        let (r, cx) = judged(&call("delete_file")).await;
        assert!(
            matches!(&r, Err(Refusal::PolicyDenied { rule, .. }) if rule == "no-delete"),
            "{r:?}"
        );
        assert_eq!(cx.decision.map(|(e, _)| e), Some(Effect::Deny));
    }

    #[tokio::test]
    async fn a_hidden_tool_is_answered_as_unknown() {
        let (r, _) = judged(&call("admin_reset")).await;
        assert!(
            matches!(&r, Err(Refusal::Hidden { name, .. }) if name == "admin_reset"),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn notifications_and_responses_are_not_judged_here() {
        let (r, cx) = judged(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;
        assert_eq!(r, Ok(None));
        assert!(cx.decision.is_none());
        let (r, _) = judged(r#"{"jsonrpc":"2.0","id":5,"result":{}}"#).await;
        assert_eq!(r, Ok(None));
    }
}
