//! Discovery filtering: a `*/list` result as the upstream sent it becomes what this
//! principal may see. Hidden items are removed; the rest keep their place; tool
//! transforms (rename, title, description) and the list cap apply last. `nextCursor` is
//! kept even when filtering empties a page, so clients walk on to the next one.

use portcullis_auth::Principal;
use serde_json::Value;

use crate::model::{Annotations, Effect, Kind, Policy};

/// The `*/list` methods whose results are filtered, and how their items are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListKind {
    /// The result member holding the items.
    pub member: &'static str,
    /// The item member naming it.
    pub key: &'static str,
    /// What an item is.
    pub kind: Kind,
    /// The method that would use an item (what the decision is asked about).
    pub use_method: &'static str,
}

/// The list kind of `method`, if it is a filtered `*/list`.
pub fn list_kind(method: &str) -> Option<ListKind> {
    let (member, key, kind, use_method) = match method {
        "tools/list" => ("tools", "name", Kind::Tool, "tools/call"),
        "prompts/list" => ("prompts", "name", Kind::Prompt, "prompts/get"),
        "resources/list" => ("resources", "uri", Kind::Resource, "resources/read"),
        "resources/templates/list" => (
            "resourceTemplates",
            "uriTemplate",
            Kind::ResourceTemplate,
            "resources/read",
        ),
        _ => return None,
    };
    Some(ListKind {
        member,
        key,
        kind,
        use_method,
    })
}

/// What filtering did to one list result.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// Items removed because they are hidden from this principal.
    pub hidden: usize,
    /// Items cut by `transforms.max_tools`.
    pub capped: usize,
    /// Tools seen (upstream names) with the annotations they declared, for the gateway's
    /// annotation cache (empty for other lists).
    pub tool_annotations: Vec<(String, Annotations)>,
}

/// On a federated route: the member (its upstream name) and the member's own name
/// behind a name clients see, so rules naming the member match its own names.
pub type OwnNames<'a> = &'a dyn Fn(&str) -> Option<(String, String)>;

/// Filters `result` (the JSON-RPC `result` object of a `list` answer) for `who`;
/// `own` maps a federated route's names to their members'.
/// `trust_annotations` false makes every tool carry the spec's defaults. Items without
/// a string name are removed: they cannot be judged.
pub fn filter_list(
    policy: &Policy,
    who: Option<&Principal>,
    upstream: &str,
    list: ListKind,
    trust_annotations: bool,
    own: Option<OwnNames<'_>>,
    result: &mut Value,
) -> Filtered {
    let mut out = Filtered::default();
    let Some(items) = result.get_mut(list.member).and_then(Value::as_array_mut) else {
        return out;
    };
    let before = items.len();
    if list.kind == Kind::Tool {
        out.tool_annotations.reserve(before);
    }
    let mut judge = policy.list_judge(who, list.kind, list.use_method, upstream);
    items.retain(|item| {
        let Some(name) = item.get(list.key).and_then(Value::as_str) else {
            return false;
        };
        let annotations = if list.kind == Kind::Tool && trust_annotations {
            Annotations::from_json(item.get("annotations"))
        } else {
            Annotations::SPEC_DEFAULTS
        };
        if list.kind == Kind::Tool {
            out.tool_annotations.push((name.to_owned(), annotations));
        }
        let effect = match own.and_then(|f| f(name)) {
            Some((member, own_name)) => {
                judge.effect_as_member(name, &own_name, &member, annotations)
            }
            None => judge.effect(name, annotations),
        };
        effect != Effect::Hide
    });
    out.hidden = before - items.len();
    if list.kind == Kind::Tool {
        for item in items.iter_mut() {
            transform_tool(policy, item);
        }
        if let Some(max) = policy.max_tools() {
            if items.len() > max {
                out.capped = items.len() - max;
                items.truncate(max);
            }
        }
    }
    if out.capped > 0 {
        // The cap ends the list: walking on would list more than the cap.
        if let Some(obj) = result.as_object_mut() {
            obj.remove("nextCursor");
        }
    }
    out
}

fn transform_tool(policy: &Policy, item: &mut Value) {
    let Some(name) = item.get("name").and_then(Value::as_str) else {
        return;
    };
    let Some(t) = policy.tool_transform(name) else {
        return;
    };
    let Some(obj) = item.as_object_mut() else {
        return;
    };
    if let Some(new) = &t.rename {
        obj.insert("name".into(), Value::String(new.clone()));
    }
    if let Some(title) = &t.title {
        obj.insert("title".into(), Value::String(title.clone()));
    }
    if let Some(d) = &t.description {
        obj.insert("description".into(), Value::String(d.clone()));
    }
}
