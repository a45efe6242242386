//! Policies from YAML to decisions: precedence, subjects, targets, annotations, errors
//! with their key paths, discovery filtering and table tests.

use std::collections::BTreeMap;

use portcullis_auth::Principal;
use portcullis_policy::discovery::{filter_list, list_kind};
use portcullis_policy::{compile, parse, Annotations, Effect, Kind, Policy, Target};
use serde_json::json;

fn policy(yaml: &str) -> Policy {
    let file = parse(yaml).unwrap_or_else(|e| panic!("parse: {e:?}"));
    compile(&file).unwrap_or_else(|e| panic!("compile: {e}"))
}

fn refused(yaml: &str) -> String {
    match parse(yaml) {
        Err((_, msg)) => format!("parse: {msg}"),
        Ok(file) => match compile(&file) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("compiled:\n{yaml}"),
        },
    }
}

fn who(subject: &str, groups: &[&str], scopes: &[&str]) -> Principal {
    Principal {
        subject: subject.into(),
        issuer: "https://idp".into(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        claims: BTreeMap::new(),
        expires_at: u64::MAX,
    }
}

fn tool(name: &str) -> Target<'_> {
    Target {
        method: "tools/call",
        kind: Kind::Tool,
        name,
        upstream: "files",
        annotations: Annotations::SPEC_DEFAULTS,
    }
}

const TEAMS: &str = r#"
default: deny
rules:
  - name: everyone-reads
    effect: allow
    subjects: [anyone]
    targets:
      - tool: "get_*"
      - tool: "list_*"
  - name: eng-writes
    effect: allow
    subjects:
      - group: eng
    targets:
      - tool: "*"
  - name: no-deletes
    effect: deny
    except:
      - group: admins
    targets:
      - tool: "delete_*"
  - name: hide-admin
    effect: hide
    except:
      - {group: admins, scope: "mcp:admin"}
    targets:
      - tool: "admin_*"
"#;

#[test]
fn the_most_restrictive_matching_rule_wins_and_the_default_fills_in() {
    let p = policy(TEAMS);
    let alice = who("alice", &["eng"], &[]);
    let d = p.decide(Some(&alice), &tool("get_file"));
    assert_eq!(
        (d.effect, d.rule_name()),
        (Effect::Allow, "everyone-reads"),
        "first of two allows"
    );
    let d = p.decide(Some(&alice), &tool("delete_file"));
    assert_eq!(
        (d.effect, d.rule_name()),
        (Effect::Deny, "no-deletes"),
        "deny beats allow"
    );
    let d = p.decide(Some(&alice), &tool("admin_reset"));
    assert_eq!(
        (d.effect, d.rule_name()),
        (Effect::Hide, "hide-admin"),
        "hide beats allow"
    );
    let d = p.decide(None, &tool("write_file"));
    assert_eq!((d.effect, d.rule_name()), (Effect::Deny, "default"));
    let d = p.decide(None, &tool("get_file"));
    assert_eq!(d.effect, Effect::Allow, "anyone includes anonymous callers");

    let root = who("root", &["admins", "eng"], &["mcp:admin"]);
    assert_eq!(
        p.decide(Some(&root), &tool("delete_file")).effect,
        Effect::Allow,
        "except"
    );
    assert_eq!(
        p.decide(Some(&root), &tool("admin_reset")).effect,
        Effect::Allow
    );
    let half = who("half", &["admins", "eng"], &[]);
    assert_eq!(
        p.decide(Some(&half), &tool("admin_reset")).effect,
        Effect::Hide,
        "an except entry needs all its conditions"
    );
    let rules: Vec<String> = p
        .matching_rules(Some(&alice), &tool("delete_file"))
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(rules, ["eng-writes", "no-deletes"]);
}

#[test]
fn rule_order_does_not_change_decisions() {
    let p = policy(TEAMS);
    let mut rules: Vec<serde_yaml::Value> = serde_yaml::from_value(
        serde_yaml::from_str::<serde_yaml::Value>(TEAMS).expect("yaml")["rules"].clone(),
    )
    .expect("rules");
    rules.reverse();
    let reversed =
        serde_yaml::to_string(&json!({"default": "deny", "rules": rules})).expect("yaml");
    let q = policy(&reversed);
    let people = [
        None,
        Some(who("a", &["eng"], &[])),
        Some(who("r", &["admins"], &["mcp:admin"])),
    ];
    for name in ["get_x", "delete_x", "admin_x", "other"] {
        for p2 in &people {
            assert_eq!(
                p.decide(p2.as_ref(), &tool(name)).effect,
                q.decide(p2.as_ref(), &tool(name)).effect,
                "{name}"
            );
        }
    }
}

#[test]
fn subjects_match_on_every_principal_field() {
    let p = policy(
        r#"
default: hide
rules:
  - {name: by-subject, effect: allow, subjects: [{subject: alice}], targets: [{tool: a}]}
  - {name: by-scope, effect: allow, subjects: [{scope: "mcp:b"}], targets: [{tool: b}]}
  - {name: by-issuer, effect: allow, subjects: [{issuer: "https://other"}], targets: [{tool: c}]}
  - {name: by-key, effect: allow, subjects: [{api_key: ci-bot}], targets: [{tool: d}]}
  - {name: by-claim, effect: allow, subjects: [{claim: tenant, value: acme}], targets: [{tool: e}]}
  - {name: by-list-claim, effect: allow, subjects: [{claim: teams, value: red}], targets: [{tool: f}]}
  - {name: signed-in, effect: allow, subjects: [authenticated], targets: [{tool: g}]}
"#,
    );
    let mut alice = who("alice", &[], &["mcp:b"]);
    alice.claims.insert("tenant".into(), "\"acme\"".into());
    alice
        .claims
        .insert("teams".into(), "[\"blue\",\"red\"]".into());
    for t in ["a", "b", "e", "f", "g"] {
        assert_eq!(
            p.decide(Some(&alice), &tool(t)).effect,
            Effect::Allow,
            "{t}"
        );
    }
    for t in ["c", "d"] {
        assert_eq!(p.decide(Some(&alice), &tool(t)).effect, Effect::Hide, "{t}");
    }
    let bot = Principal {
        subject: "ci-bot".into(),
        issuer: portcullis_auth::API_KEY_ISSUER.into(),
        ..Principal::default()
    };
    assert_eq!(p.decide(Some(&bot), &tool("d")).effect, Effect::Allow);
    let impostor = Principal {
        subject: "ci-bot".into(),
        issuer: "https://idp".into(),
        ..Principal::default()
    };
    assert_eq!(
        p.decide(Some(&impostor), &tool("d")).effect,
        Effect::Hide,
        "a JWT named like a key"
    );
    assert_eq!(p.decide(None, &tool("g")).effect, Effect::Hide);
}

#[test]
fn targets_cover_prompts_resources_templates_methods_upstreams_and_annotations() {
    let p = policy(
        r#"
default: deny
rules:
  - name: public-files
    effect: allow
    targets:
      - resource: "file:///public/*"
      - resource_template: "file:///public/{path}"
      - prompt: "summarize*"
  - name: no-log-levels
    effect: hide
    targets: [{method: "logging/setLevel"}]
  - name: no-subscriptions
    effect: deny
    targets: [{method: "resources/subscribe", resource: "*"}]
  - name: read-only-tools
    effect: allow
    targets: [{tool: "*", annotations: {readOnlyHint: true}}]
  - name: nothing-destructive
    effect: deny
    targets: [{tool: "*", annotations: {destructiveHint: true}}]
  - name: github-only
    effect: hide
    targets: [{upstream: github}]
"#,
    );
    let t = |kind, name, method| Target {
        method,
        kind,
        name,
        upstream: "files",
        annotations: Annotations::SPEC_DEFAULTS,
    };
    let e = |target: Target<'_>| p.decide(None, &target).effect;
    assert_eq!(
        e(t(
            Kind::Resource,
            "file:///public/a/b.txt",
            "resources/read"
        )),
        Effect::Allow,
        "* crosses /"
    );
    assert_eq!(
        e(t(Kind::Resource, "file:///etc/passwd", "resources/read")),
        Effect::Deny
    );
    assert_eq!(
        e(t(
            Kind::ResourceTemplate,
            "file:///public/{path}",
            "resources/read"
        )),
        Effect::Allow
    );
    assert_eq!(
        e(t(Kind::Prompt, "summarize_pr", "prompts/get")),
        Effect::Allow
    );
    assert_eq!(
        e(t(Kind::Method, "logging/setLevel", "logging/setLevel")),
        Effect::Hide
    );
    assert_eq!(
        e(t(
            Kind::Method,
            "completion/complete",
            "completion/complete"
        )),
        Effect::Deny
    );
    assert_eq!(
        e(t(Kind::Resource, "file:///public/a", "resources/subscribe")),
        Effect::Deny,
        "method and resource together"
    );
    let hinted = |read_only, destructive| Target {
        annotations: Annotations {
            read_only,
            destructive,
            ..Annotations::SPEC_DEFAULTS
        },
        ..tool("x")
    };
    assert_eq!(e(hinted(true, false)), Effect::Allow);
    assert_eq!(
        e(hinted(true, true)),
        Effect::Deny,
        "a read-only tool that says destructive"
    );
    assert_eq!(
        e(tool("x")),
        Effect::Deny,
        "the spec's defaults: destructive"
    );
    let on_github = Target {
        upstream: "github",
        ..hinted(true, false)
    };
    assert_eq!(e(on_github), Effect::Hide, "by upstream");
    assert_eq!(
        Annotations::from_json(Some(
            &json!({"readOnlyHint": false, "destructiveHint": "yes"})
        )),
        Annotations::SPEC_DEFAULTS,
        "a non-boolean hint takes the default"
    );
    assert_eq!(
        Annotations::from_json(Some(
            &json!({"readOnlyHint": true, "destructiveHint": true})
        )),
        Annotations {
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: true,
        },
        "destructive and idempotent hints mean nothing on a read-only tool"
    );
}

#[test]
fn mistakes_are_refused_with_their_key_path() {
    let cases = [
        ("rules: []\n", "default"),
        ("default: maybe\n", "unknown variant"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, targets: []}\n", "rules[0].targets"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, targets: [{tool: x}]}\n  - {name: a, effect: deny, targets: [{tool: y}]}\n", "rules[1].name"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, targets: [{tool: \"[x\"}]}\n", "rules[0].targets[0].tool"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, targets: [{tool: \"\"}]}\n", "rules[0].targets[0].tool"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, targets: [{prompt: p, annotations: {readOnlyHint: true}}]}\n", "rules[0].targets[0].annotations"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, targets: [{tool: x, prompt: y}]}\n", "rules[0].targets[0].tool"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, subjects: [everyone], targets: [{tool: x}]}\n", "rules[0].subjects[0]"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, subjects: [{claim: tenant}], targets: [{tool: x}]}\n", "rules[0].subjects[0]"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, subjects: [{}], targets: [{tool: x}]}\n", "rules[0].subjects[0]"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, subjects: [{team: x}], targets: [{tool: x}]}\n", "rules[0].subjects[0]"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, subjects: [[1]], targets: [{tool: x}]}\n", "rules[0].subjects[0]"),
        ("default: deny\nrules:\n  - {name: a, effect: allow, targets: [{tool: x, annotations: {readonly: true}}]}\n", "unknown field"),
        ("default: deny\ntransforms:\n  tools:\n    - {tool: a, rename: \"bad name\"}\n", "transforms.tools[0].rename"),
        ("default: deny\ntransforms:\n  tools:\n    - {tool: a, rename: c}\n    - {tool: b, rename: c}\n", "transforms.tools[1].rename"),
        ("default: deny\ntransforms:\n  tools:\n    - {tool: a}\n    - {tool: a}\n", "transforms.tools[1].tool"),
        ("default: deny\ntransforms:\n  max_tools: 0\n", "transforms.max_tools"),
    ];
    for (yaml, want) in cases {
        let got = refused(yaml);
        assert!(got.contains(want), "{yaml}\n=> {got}");
    }
}

#[test]
fn hostile_policy_text_is_an_error_not_a_panic() {
    for text in [
        "",
        "\0",
        "default: [",
        "- a\n- b\n",
        "default: deny\nrules: 7\n",
        &"[".repeat(10_000),
    ] {
        let _ = refused(text);
    }
}

#[test]
fn a_thousand_rules_compile_and_decide() {
    let mut yaml = String::from("default: deny\nrules:\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - {{name: r{i}, effect: allow, subjects: [{{group: g{i}}}], targets: [{{tool: \"t{i}_*\"}}]}}\n"
        ));
    }
    let p = policy(&yaml);
    let member = who("m", &["g500"], &[]);
    let d = p.decide(Some(&member), &tool("t500_x"));
    assert_eq!((d.effect, d.rule_name()), (Effect::Allow, "r500"));
    assert_eq!(
        p.decide(Some(&member), &tool("t501_x")).effect,
        Effect::Deny
    );
}

#[test]
fn lists_are_filtered_transformed_and_capped() {
    let p = policy(
        r#"
default: allow
rules:
  - {name: hide-admin, effect: hide, targets: [{tool: "admin_*"}, {prompt: "secret*"}]}
  - {name: deny-destructive, effect: deny, targets: [{tool: "*", annotations: {destructiveHint: true}}]}
  - {name: hide-unsafe, effect: hide, targets: [{tool: "*", annotations: {openWorldHint: true, readOnlyHint: false}}]}
transforms:
  tools:
    - {tool: search, rename: gh_search, title: Search, description: Search the code}
  max_tools: 2
"#,
    );
    let tools = list_kind("tools/list").expect("filtered");
    let safe = json!({"readOnlyHint": true, "openWorldHint": false, "destructiveHint": false});
    let mut result = json!({"tools": [
        {"name": "admin_reset", "annotations": safe},
        {"name": "search", "annotations": safe, "description": "old"},
        {"name": "no_hints"},
        {"name": "delete", "annotations": {"destructiveHint": true, "openWorldHint": false}},
        {"title": "nameless"},
        {"name": "echo", "annotations": safe}
    ], "nextCursor": "c2"});
    let out = filter_list(&p, None, "files", tools, true, None, &mut result);
    assert_eq!(
        out.hidden, 3,
        "admin, hints-by-default (open world, not read-only), nameless"
    );
    assert_eq!(out.capped, 1);
    let names: Vec<&str> = result["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["gh_search", "delete"], "denied tools stay listed");
    assert_eq!(result["tools"][0]["title"], "Search");
    assert_eq!(result["tools"][0]["description"], "Search the code");
    assert!(result.get("nextCursor").is_none(), "the cap ends the list");
    assert_eq!(p.upstream_tool_name("gh_search"), Ok("search"));
    assert_eq!(
        p.upstream_tool_name("search"),
        Err(()),
        "the old name is unknown"
    );
    assert_eq!(p.upstream_tool_name("echo"), Ok("echo"));

    // Untrusted annotations: every tool has the spec's defaults.
    let mut result = json!({"tools": [{"name": "echo", "annotations": safe}]});
    filter_list(&p, None, "files", tools, false, None, &mut result);
    assert_eq!(result["tools"].as_array().map(Vec::len), Some(0));

    // A page emptied by filtering keeps its cursor so the walk goes on.
    let prompts = list_kind("prompts/list").expect("filtered");
    let mut page =
        json!({"prompts": [{"name": "secret1"}, {"name": "secret2"}], "nextCursor": "p2"});
    let out = filter_list(&p, None, "files", prompts, true, None, &mut page);
    assert_eq!(out.hidden, 2);
    assert_eq!(page, json!({"prompts": [], "nextCursor": "p2"}));

    // Malformed results are left alone rather than panicking.
    for mut odd in [
        json!(null),
        json!({"tools": 5}),
        json!({"tools": [1, null, "x"]}),
        json!([]),
    ] {
        filter_list(&p, None, "files", tools, true, None, &mut odd);
    }
    assert!(list_kind("tools/call").is_none());
}

#[test]
fn table_tests_pass_and_fail_with_reasons() {
    let p = policy(TEAMS);
    let cases = portcullis_policy::table::parse(
        r#"
- name: anonymous may read
  tool: get_file
  expect: allow
  rule: everyone-reads
- name: engineers may not delete
  who: {subject: alice, groups: [eng]}
  tool: delete_file
  expect: deny
- name: wrong on purpose
  tool: admin_x
  expect: allow
- name: log level by method
  method: logging/setLevel
  expect: deny
  rule: default
"#,
    )
    .expect("cases");
    let outcomes: Vec<_> = cases.iter().map(|c| c.run(&p)).collect();
    assert!(outcomes[0].failure.is_none(), "{:?}", outcomes[0]);
    assert!(outcomes[1].failure.is_none(), "{:?}", outcomes[1]);
    let f = outcomes[2].failure.as_deref().expect("fails");
    assert!(f.contains("expected allow, got hide"), "{f}");
    assert!(outcomes[3].failure.is_none(), "{:?}", outcomes[3]);
    assert!(portcullis_policy::table::parse("- name: x\n  expect: sometimes\n").is_err());
}

#[test]
fn a_list_judge_agrees_with_decide_on_every_item() {
    let p = policy(
        r#"
default: allow
rules:
  - name: hide-admin
    effect: hide
    except: [{group: admins}]
    targets: [{tool: "admin_*"}, {prompt: "admin-*"}]
  - name: by-method
    effect: deny
    targets: [{method: "tools/call"}]
    subjects: [{group: frozen}]
  - name: no-destructive
    effect: deny
    targets: [{tool: "*", annotations: {destructiveHint: true}}]
  - name: other-upstream
    effect: hide
    targets: [{tool: "*", upstream: elsewhere}]
  - name: readers
    effect: allow
    subjects: [{scope: "mcp:read"}]
    targets: [{tool: "get_*"}]
"#,
    );
    let callers = [
        None,
        Some(who("a", &[], &[])),
        Some(who("b", &["admins"], &["mcp:read"])),
        Some(who("c", &["frozen"], &[])),
    ];
    let destructive = Annotations::from_json(Some(&json!({"destructiveHint": true})));
    let safe = Annotations::from_json(Some(&json!({"readOnlyHint": true})));
    for caller in &callers {
        for (kind, method) in [(Kind::Tool, "tools/call"), (Kind::Prompt, "prompts/get")] {
            for upstream in ["files", "elsewhere"] {
                let mut judge = p.list_judge(caller.as_ref(), kind, method, upstream);
                for name in ["admin_reset", "admin-x", "get_file", "delete_file", "x"] {
                    for a in [destructive, safe, Annotations::SPEC_DEFAULTS] {
                        let target = Target {
                            method,
                            kind,
                            name,
                            upstream,
                            annotations: a,
                        };
                        assert_eq!(
                            judge.effect(name, a),
                            p.decide(caller.as_ref(), &target).effect,
                            "{caller:?} {kind:?} {name} {upstream} {a:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn on_a_federated_route_rules_naming_a_member_match_its_own_names() {
    let p = policy(
        r#"
default: allow
rules:
  - name: no-github-deletes
    effect: deny
    targets: [{tool: "delete_*", upstream: github}]
  - name: hide-admin
    effect: hide
    targets: [{tool: "*admin*"}]
  - name: fleet-only
    effect: deny
    targets: [{tool: "jira__*", upstream: fleet}]
"#,
    );
    let seen = |name| Target {
        upstream: "fleet",
        ..tool(name)
    };
    let own = |name, member| Target {
        upstream: member,
        ..tool(name)
    };
    let d = p.decide_as_member(
        None,
        &seen("github__delete_repo"),
        &own("delete_repo", "github"),
    );
    assert_eq!(
        (d.effect, d.rule_name()),
        (Effect::Deny, "no-github-deletes"),
        "the member's own name, by a rule naming the member"
    );
    let d = p.decide_as_member(
        None,
        &seen("jira__delete_issue"),
        &own("delete_issue", "jira"),
    );
    assert_eq!(
        (d.effect, d.rule_name()),
        (Effect::Deny, "fleet-only"),
        "another member: only rules on the client's names apply"
    );
    let d = p.decide_as_member(None, &seen("github__search"), &own("search", "github"));
    assert_eq!((d.effect, d.rule_name()), (Effect::Allow, "default"));
    // A rule without `upstream` matches the names clients see, not members' own.
    let d = p.decide_as_member(None, &seen("github__admin_x"), &own("admin_x", "github"));
    assert_eq!(d.effect, Effect::Hide);
    let p2 =
        policy("default: allow\nrules:\n  - {name: h, effect: hide, targets: [{tool: search}]}\n");
    let d = p2.decide_as_member(None, &seen("github__search"), &own("search", "github"));
    assert_eq!(
        d.effect,
        Effect::Allow,
        "an unscoped `search` is the client name `search`, which no member shows"
    );
    // The same in lists.
    let mut judge = p.list_judge(None, Kind::Tool, "tools/call", "fleet");
    assert_eq!(
        judge.effect_as_member(
            "github__delete_repo",
            "delete_repo",
            "github",
            Annotations::SPEC_DEFAULTS
        ),
        Effect::Deny
    );
    assert_eq!(
        judge.effect_as_member(
            "github__search",
            "search",
            "github",
            Annotations::SPEC_DEFAULTS
        ),
        Effect::Allow
    );
}
