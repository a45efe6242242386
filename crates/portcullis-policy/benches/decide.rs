//! Policy speed: one decision against 1,000 rules (target: under 1 µs median), and
//! filtering a 500-tool `tools/list` answer (target: under 200 µs). `make bench` runs
//! these; figures go to docs/benchmarks.md.

use std::collections::BTreeMap;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use portcullis_auth::Principal;
use portcullis_policy::discovery::{filter_list, list_kind};
use portcullis_policy::{compile, parse, Annotations, Kind, Policy, Target};
use serde_json::{json, Value};

// The gateway binary's allocator: list filtering drops and allocates JSON values, and
// glibc malloc alone would measure something the gateway does not run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 1,000 rules of the kinds operators write: per-team tool globs, exact tool names,
/// annotation rules, hides with exceptions, method rules.
fn big_policy() -> Policy {
    let mut y = String::from("default: deny\nrules:\n");
    for i in 0..1000 {
        let rule = match i % 5 {
            0 => format!("{{name: r{i}, effect: allow, subjects: [{{group: team{i}}}], targets: [{{tool: \"team{i}_*\"}}]}}"),
            1 => format!("{{name: r{i}, effect: allow, subjects: [{{subject: user{i}}}], targets: [{{tool: tool{i}}}]}}"),
            2 => format!("{{name: r{i}, effect: deny, subjects: [authenticated], targets: [{{tool: \"x{i}*\", annotations: {{destructiveHint: true}}}}]}}"),
            3 => format!("{{name: r{i}, effect: hide, except: [{{group: admins{i}}}], targets: [{{tool: \"admin{i}_*\"}}, {{prompt: \"admin{i}-*\"}}]}}"),
            _ => format!("{{name: r{i}, effect: deny, targets: [{{method: \"custom/m{i}\"}}]}}"),
        };
        y.push_str("  - ");
        y.push_str(&rule);
        y.push('\n');
    }
    compile(&parse(&y).expect("parse")).expect("compile")
}

fn caller() -> Principal {
    Principal {
        subject: "user501".into(),
        issuer: "https://idp".into(),
        groups: vec![
            "team500".into(),
            "eng".into(),
            "admins3".into(),
            "ops".into(),
            "data".into(),
        ],
        scopes: vec!["mcp:tools".into()],
        claims: BTreeMap::new(),
        expires_at: u64::MAX,
    }
}

fn decide(c: &mut Criterion) {
    let p = big_policy();
    let who = caller();
    let target = Target {
        method: "tools/call",
        kind: Kind::Tool,
        name: "team500_deploy",
        upstream: "github",
        annotations: Annotations::SPEC_DEFAULTS,
    };
    assert_eq!(p.decide(Some(&who), &target).rule_name(), "r500");
    c.bench_function("decide: 1000 rules, one tools/call", |b| {
        b.iter(|| black_box(p.decide(Some(black_box(&who)), black_box(&target))))
    });
    let miss = Target {
        name: "nothing_matches_this",
        ..target
    };
    c.bench_function("decide: 1000 rules, no rule matches", |b| {
        b.iter(|| black_box(p.decide(Some(black_box(&who)), black_box(&miss))))
    });
}

fn filter(c: &mut Criterion) {
    let p = big_policy();
    let who = caller();
    let tools: Vec<Value> = (0..500)
        .map(|i| {
            let name = match i % 4 {
                0 => format!("team{i}_tool"),
                1 => format!("admin{i}_reset"),
                2 => format!("tool{i}"),
                _ => format!("misc_{i}"),
            };
            json!({"name": name, "description": "does a thing with some words in it",
                "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}},
                "annotations": {"readOnlyHint": i % 2 == 0, "destructiveHint": i % 3 == 0}})
        })
        .collect();
    let result = json!({"tools": tools, "nextCursor": "c"});
    let kind = list_kind("tools/list").expect("list");
    c.bench_function("filter: 500-tool tools/list, 1000 rules", |b| {
        // The copy each round filters is made and dropped outside the timing.
        b.iter_batched_ref(
            || result.clone(),
            |r| black_box(filter_list(&p, Some(&who), "github", kind, true, None, r)),
            BatchSize::SmallInput,
        )
    });
}

/// What the gateway does per list answer: parse the JSON text, filter, serialize.
fn answer(c: &mut Criterion) {
    let p = big_policy();
    let who = caller();
    let tools: Vec<Value> = (0..500)
        .map(|i| {
            json!({"name": format!("team{i}_tool"), "description": "does a thing",
            "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": true}})
        })
        .collect();
    let text = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).to_string();
    let kind = list_kind("tools/list").expect("list");
    c.bench_function("answer: parse + filter + serialize a 500-tool list", |b| {
        b.iter(|| {
            let mut msg: Value = serde_json::from_str(black_box(&text)).expect("json");
            if let Some(r) = msg.get_mut("result") {
                filter_list(&p, Some(&who), "github", kind, true, None, r);
            }
            black_box(serde_json::to_string(&msg).expect("json"))
        })
    });
}

criterion_group!(benches, decide, filter, answer);
criterion_main!(benches);
