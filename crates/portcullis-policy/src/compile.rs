//! Turns a parsed policy file into matchers: glob sets per target kind, subject
//! conditions, annotation requirements and tool transforms. Mistakes are refused with
//! the key path they sit at (`rules[2].targets[0].tool`), which the config loader
//! turns into a line number.

use std::collections::{HashMap, HashSet};

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSetBuilder};
use serde_yaml::Value as Yaml;

use crate::file::{EffectName, PolicyFile, SubjectMatchFile, TargetFile};
use crate::model::{
    AnnotationReq, Cond, Effect, Entry, Kind, KindIndex, Policy, Rule, Subject, ToolTransform,
    KINDS,
};

/// One step of a key path inside a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    /// A mapping key.
    Key(String),
    /// A list index.
    Index(usize),
}

/// A policy that cannot be compiled: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The key path of the mistake.
    pub path: Vec<PathStep>,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    /// The path as `rules[2].targets[0].tool`.
    pub fn key(&self) -> String {
        let mut out = String::new();
        for step in &self.path {
            match step {
                PathStep::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                PathStep::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key `{}`: {}", self.key(), self.message)
    }
}

impl std::error::Error for PolicyError {}

fn err(path: &[PathStep], message: impl Into<String>) -> PolicyError {
    PolicyError {
        path: path.to_vec(),
        message: message.into(),
    }
}

fn key(k: &str) -> PathStep {
    PathStep::Key(k.to_owned())
}

fn effect(e: EffectName) -> Effect {
    match e {
        EffectName::Allow => Effect::Allow,
        EffectName::Deny => Effect::Deny,
        EffectName::Hide => Effect::Hide,
    }
}

/// `*` matches any run of characters (slashes included), `?` one, `[ab]` a class,
/// `{a,b}` alternatives. Case-sensitive, like MCP names.
fn glob(pattern: &str, at: &[PathStep]) -> Result<Glob, PolicyError> {
    if pattern.is_empty() {
        return Err(err(
            at,
            "an empty pattern matches nothing; use \"*\" for anything",
        ));
    }
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map_err(|e| err(at, format!("`{pattern}` is not a valid pattern: {e}")))
}

fn matcher(pattern: &str, at: &[PathStep]) -> Result<GlobMatcher, PolicyError> {
    Ok(glob(pattern, at)?.compile_matcher())
}

/// Compiles a parsed policy file.
pub fn compile(file: &PolicyFile) -> Result<Policy, PolicyError> {
    let mut rules = Vec::with_capacity(file.rules.len());
    let mut entries = Vec::new();
    // Name patterns per kind, with the entry each belongs to.
    let mut named: Vec<Vec<(Glob, usize)>> = (0..KINDS).map(|_| Vec::new()).collect();
    let mut unnamed: Vec<Vec<usize>> = (0..KINDS).map(|_| Vec::new()).collect();
    // Entries without a name pattern but with a method pattern, per kind.
    let mut by_method: Vec<Vec<(Glob, usize)>> = (0..KINDS).map(|_| Vec::new()).collect();
    let mut names = HashSet::new();

    for (r, rf) in file.rules.iter().enumerate() {
        let at = |k: &str| vec![key("rules"), PathStep::Index(r), key(k)];
        if rf.name.trim().is_empty() {
            return Err(err(&at("name"), "a rule needs a name"));
        }
        if !names.insert(rf.name.as_str()) {
            return Err(err(&at("name"), format!("`{}` names two rules", rf.name)));
        }
        if rf.targets.is_empty() {
            return Err(err(
                &at("targets"),
                "list at least one target (`- tool: \"*\"` for every tool)",
            ));
        }
        let subjects = subjects_list(&rf.subjects, &at("subjects"))?;
        let except = subjects_list(&rf.except, &at("except"))?;
        rules.push(Rule {
            name: rf.name.as_str().into(),
            effect: effect(rf.effect),
            subjects,
            except,
        });
        for (t, tf) in rf.targets.iter().enumerate() {
            let tat = |k: &str| {
                vec![
                    key("rules"),
                    PathStep::Index(r),
                    key("targets"),
                    PathStep::Index(t),
                    key(k),
                ]
            };
            let e = entries.len();
            entries.push(entry(r, tf, &tat)?);
            let kinds: [(Kind, &Option<String>, &str); 4] = [
                (Kind::Tool, &tf.tool, "tool"),
                (Kind::Prompt, &tf.prompt, "prompt"),
                (Kind::Resource, &tf.resource, "resource"),
                (
                    Kind::ResourceTemplate,
                    &tf.resource_template,
                    "resource_template",
                ),
            ];
            let given: Vec<_> = kinds.iter().filter(|(_, p, _)| p.is_some()).collect();
            match given.as_slice() {
                [] => {
                    // Every kind, found by its method pattern if it has one; for plain
                    // methods the method is the name.
                    let kinds = [Kind::Tool, Kind::Prompt, Kind::Resource, Kind::ResourceTemplate];
                    match &tf.method {
                        Some(m) => {
                            let g = glob(m, &tat("method"))?;
                            for kind in kinds {
                                by_method[kind as usize].push((g.clone(), e));
                            }
                            named[Kind::Method as usize].push((g, e));
                        }
                        None => {
                            for kind in kinds {
                                unnamed[kind as usize].push(e);
                            }
                            unnamed[Kind::Method as usize].push(e);
                        }
                    }
                }
                [(kind, Some(pattern), k)] => {
                    let g = if *kind == Kind::ResourceTemplate {
                        // Templates are full of `{var}`: braces are literal here.
                        glob(&pattern.replace('{', "\\{").replace('}', "\\}"), &tat(k))?
                    } else {
                        glob(pattern, &tat(k))?
                    };
                    named[*kind as usize].push((g, e));
                }
                _ => {
                    return Err(err(
                        &tat("tool"),
                        "give at most one of tool, prompt, resource, resource_template per entry (list more entries instead)",
                    ))
                }
            }
            if tf.annotations.is_some() && tf.tool.is_none() {
                return Err(err(
                    &tat("annotations"),
                    "annotations apply to tools: add `tool`",
                ));
            }
        }
    }

    let mut index = Vec::with_capacity(KINDS);
    for ((patterns, methods), loose) in named.into_iter().zip(by_method).zip(unnamed) {
        let (set, owners) = glob_set(patterns)?;
        let (method_set, method_owners) = glob_set(methods)?;
        index.push(KindIndex {
            set,
            named: owners,
            method_set,
            by_method: method_owners,
            unnamed: loose,
        });
    }

    let (tool_transforms, renamed_from) = transforms(file)?;
    if file.transforms.max_tools == Some(0) {
        return Err(err(
            &[key("transforms"), key("max_tools")],
            "0 would list no tools; hide them with a rule instead",
        ));
    }
    Ok(Policy {
        default: effect(file.default),
        rules,
        entries,
        index,
        tool_transforms,
        renamed_from,
        max_tools: file.transforms.max_tools,
    })
}

/// One automaton over `patterns`, and the entry each match index belongs to.
fn glob_set(patterns: Vec<(Glob, usize)>) -> Result<(globset::GlobSet, Vec<usize>), PolicyError> {
    let mut builder = GlobSetBuilder::new();
    let mut owners = Vec::with_capacity(patterns.len());
    for (g, e) in patterns {
        builder.add(g);
        owners.push(e);
    }
    let set = builder
        .build()
        .map_err(|e| err(&[key("rules")], format!("cannot compile the patterns: {e}")))?;
    Ok((set, owners))
}

type Transforms = (HashMap<String, ToolTransform>, HashMap<String, String>);

fn transforms(file: &PolicyFile) -> Result<Transforms, PolicyError> {
    let mut by_tool = HashMap::new();
    let mut renamed_from: HashMap<String, String> = HashMap::new();
    for (i, t) in file.transforms.tools.iter().enumerate() {
        let at = |k: &str| vec![key("transforms"), key("tools"), PathStep::Index(i), key(k)];
        if by_tool.contains_key(&t.tool) {
            return Err(err(
                &at("tool"),
                format!("`{}` is transformed twice", t.tool),
            ));
        }
        if let Some(new) = &t.rename {
            if !is_tool_name(new) {
                return Err(err(
                    &at("rename"),
                    format!("`{new}` is not a tool name (1-128 of A-Z a-z 0-9 _ - .)"),
                ));
            }
            if renamed_from.insert(new.clone(), t.tool.clone()).is_some() {
                return Err(err(
                    &at("rename"),
                    format!("two tools are renamed to `{new}`"),
                ));
            }
        }
        by_tool.insert(
            t.tool.clone(),
            ToolTransform {
                rename: t.rename.clone(),
                title: t.title.clone(),
                description: t.description.clone(),
            },
        );
    }
    // A new name must not shadow another upstream tool that keeps its own name.
    for (new, old) in &renamed_from {
        if new != old && by_tool.get(new).is_some_and(|t| t.rename.is_none()) {
            return Err(err(
                &[key("transforms"), key("tools")],
                format!("`{old}` is renamed to `{new}`, which another transform keeps as a name"),
            ));
        }
    }
    Ok((by_tool, renamed_from))
}

/// MCP tool names: 1-128 characters of `A-Z a-z 0-9 _ - .`.
fn is_tool_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn entry(
    rule: usize,
    tf: &TargetFile,
    at: &dyn Fn(&str) -> Vec<PathStep>,
) -> Result<Entry, PolicyError> {
    let method = match &tf.method {
        Some(m) => Some(matcher(m, &at("method"))?),
        None => None,
    };
    if let Some(u) = &tf.upstream {
        if u.is_empty() {
            return Err(err(&at("upstream"), "an upstream name cannot be empty"));
        }
    }
    let annotations = tf
        .annotations
        .as_ref()
        .map_or_else(AnnotationReq::default, |a| AnnotationReq {
            read_only: a.read_only_hint,
            destructive: a.destructive_hint,
            idempotent: a.idempotent_hint,
            open_world: a.open_world_hint,
        });
    Ok(Entry {
        rule,
        method,
        upstream: tf.upstream.clone(),
        annotations,
    })
}

/// A rule's `subjects` or `except` list (an empty `subjects` means anyone).
fn subjects_list(list: &[Yaml], at: &[PathStep]) -> Result<Vec<Subject>, PolicyError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let mut here = at.to_vec();
        here.push(PathStep::Index(i));
        out.push(subject(v, &here)?);
    }
    Ok(out)
}

fn subject(v: &Yaml, at: &[PathStep]) -> Result<Subject, PolicyError> {
    match v {
        Yaml::String(s) => match s.as_str() {
            "anyone" => Ok(Subject::Anyone),
            "authenticated" => Ok(Subject::Authenticated),
            other => Err(err(
                at,
                format!("`{other}` is not a subject: use anyone, authenticated, or a map such as {{group: admins}}"),
            )),
        },
        Yaml::Mapping(_) => {
            let m: SubjectMatchFile = serde_yaml::from_value(v.clone())
                .map_err(|e| err(at, format!("not a subject: {e}")))?;
            let mut conds = Vec::new();
            let mut push = |field: &Option<String>, name: &str, make: fn(String) -> Cond| {
                if let Some(x) = field {
                    if x.is_empty() {
                        return Err(err(at, format!("`{name}` cannot be empty")));
                    }
                    conds.push(make(x.clone()));
                }
                Ok(())
            };
            push(&m.subject, "subject", Cond::Subject)?;
            push(&m.group, "group", Cond::Group)?;
            push(&m.scope, "scope", Cond::Scope)?;
            push(&m.issuer, "issuer", Cond::Issuer)?;
            push(&m.api_key, "api_key", Cond::ApiKey)?;
            match (&m.claim, &m.value) {
                (Some(c), Some(v)) => conds.push(Cond::Claim(c.clone(), v.clone())),
                (None, None) => {}
                _ => return Err(err(at, "`claim` and `value` go together")),
            }
            if conds.is_empty() {
                return Err(err(at, "an empty subject would match everyone; say `anyone`"));
            }
            Ok(Subject::All(conds))
        }
        _ => Err(err(at, "a subject is `anyone`, `authenticated`, or a map such as {group: admins}")),
    }
}

/// Parses policy YAML. Syntax and schema errors carry serde's line, when it has one.
pub fn parse(text: &str) -> Result<PolicyFile, (Option<usize>, String)> {
    serde_yaml::from_str(text).map_err(|e| (e.location().map(|l| l.line()), e.to_string()))
}
