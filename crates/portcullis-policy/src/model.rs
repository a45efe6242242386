//! A compiled policy and how it decides: the most restrictive effect among the rules
//! that match wins (`hide` over `deny` over `allow`), ties go to the rule written
//! first, and with no match the policy's default applies. Rule order therefore never
//! widens access, and every decision names the rule that made it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use globset::{GlobMatcher, GlobSet};
use portcullis_auth::{Principal, API_KEY_ISSUER};
use serde_json::Value;

/// What a policy does to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    /// Listed and callable.
    Allow,
    /// Listed, refused when used.
    Deny,
    /// Not listed, refused exactly as an unknown target would be.
    Hide,
}

impl Effect {
    /// `allow`, `deny` or `hide`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Hide => "hide",
        }
    }
}

/// The kind of thing a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A tool (by name).
    Tool = 0,
    /// A prompt (by name).
    Prompt = 1,
    /// A resource (by URI).
    Resource = 2,
    /// A resource template (by `uriTemplate`).
    ResourceTemplate = 3,
    /// Any other method (by method name).
    Method = 4,
}

/// Number of [`Kind`]s.
pub(crate) const KINDS: usize = 5;

/// A tool's behaviour hints, with the MCP spec's defaults for absent ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Annotations {
    /// `readOnlyHint` (default false).
    pub read_only: bool,
    /// `destructiveHint` (default true).
    pub destructive: bool,
    /// `idempotentHint` (default false).
    pub idempotent: bool,
    /// `openWorldHint` (default true).
    pub open_world: bool,
}

impl Default for Annotations {
    fn default() -> Self {
        Annotations::SPEC_DEFAULTS
    }
}

impl Annotations {
    /// What the spec says to assume when a tool says nothing (or is not trusted).
    pub const SPEC_DEFAULTS: Annotations = Annotations {
        read_only: false,
        destructive: true,
        idempotent: false,
        open_world: true,
    };

    /// As the spec reads the hints: `destructiveHint` and `idempotentHint` are
    /// meaningful only when `readOnlyHint` is false, so a read-only tool is neither
    /// destructive nor anything but idempotent, whatever else it says.
    pub fn normalized(self) -> Annotations {
        if self.read_only {
            Annotations {
                destructive: false,
                idempotent: true,
                ..self
            }
        } else {
            self
        }
    }

    /// A tool's `annotations` object (from `tools/list`); absent or non-boolean hints
    /// take the spec's defaults (then [`Annotations::normalized`]).
    pub fn from_json(annotations: Option<&Value>) -> Annotations {
        let hint = |name: &str, default: bool| {
            annotations
                .and_then(|a| a.get(name))
                .and_then(Value::as_bool)
                .unwrap_or(default)
        };
        let d = Annotations::SPEC_DEFAULTS;
        Annotations {
            read_only: hint("readOnlyHint", d.read_only),
            destructive: hint("destructiveHint", d.destructive),
            idempotent: hint("idempotentHint", d.idempotent),
            open_world: hint("openWorldHint", d.open_world),
        }
        .normalized()
    }
}

/// What a decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The JSON-RPC method (`tools/call`; for a listed item, the method that would use it).
    pub method: &'a str,
    /// What kind of thing `name` names.
    pub kind: Kind,
    /// The tool or prompt name, resource URI or template, or (for [`Kind::Method`]) the method.
    pub name: &'a str,
    /// The upstream that serves it.
    pub upstream: &'a str,
    /// The tool's annotations (spec defaults for anything else, or when untrusted).
    pub annotations: Annotations,
}

/// A policy's verdict and the rule behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do.
    pub effect: Effect,
    /// The deciding rule's name; `None` when no rule matched (the default applied).
    pub rule: Option<Arc<str>>,
}

impl Decision {
    /// The deciding rule's name, or `default`.
    pub fn rule_name(&self) -> &str {
        self.rule.as_deref().unwrap_or("default")
    }
}

/// Decides the items of one list answer (see [`Policy::list_judge`]).
pub struct ListJudge<'p> {
    policy: &'p Policy,
    who: Option<&'p Principal>,
    kind: Kind,
    method: &'p str,
    upstream: &'p str,
    /// Entries whose method pattern matched `method`.
    method_entries: Vec<usize>,
    /// Reused buffer of name matches.
    names: Vec<usize>,
}

impl ListJudge<'_> {
    /// The effect on the item `name` with `annotations`: what [`Policy::decide`] would
    /// answer, without the deciding rule's name.
    pub fn effect(&mut self, name: &str, annotations: Annotations) -> Effect {
        let upstream = self.upstream;
        self.best(name, upstream, false, annotations)
            .unwrap_or(self.policy.default)
    }

    /// On a federated route, the effect on an item clients see as `name` that is member
    /// `member`'s own `own`: what [`Policy::decide_as_member`] would answer.
    pub fn effect_as_member(
        &mut self,
        name: &str,
        own: &str,
        member: &str,
        annotations: Annotations,
    ) -> Effect {
        let upstream = self.upstream;
        let seen = self.best(name, upstream, false, annotations);
        let owned = self.best(own, member, true, annotations);
        seen.max(owned).unwrap_or(self.policy.default)
    }

    /// The most restrictive effect of the entries matching `name` on `upstream`; with
    /// `scoped`, only entries that name `upstream` count.
    fn best(
        &mut self,
        name: &str,
        upstream: &str,
        scoped: bool,
        annotations: Annotations,
    ) -> Option<Effect> {
        let p = self.policy;
        let index = &p.index[self.kind as usize];
        let target = Target {
            method: self.method,
            kind: self.kind,
            name,
            upstream,
            annotations,
        };
        let mut best: Option<Effect> = None;
        let mut consider = |e: usize| {
            if let Some((_, effect)) = p.entry_fits(e, self.who, &target, scoped) {
                best = best.max(Some(effect));
            }
        };
        self.names.clear();
        index.set.matches_into(name, &mut self.names);
        for &i in &self.names {
            consider(index.named[i]);
        }
        for &e in &self.method_entries {
            consider(e);
        }
        for &e in &index.unnamed {
            consider(e);
        }
        best
    }
}

/// One condition on the principal.
#[derive(Debug, Clone)]
pub(crate) enum Cond {
    Subject(String),
    Group(String),
    Scope(String),
    Issuer(String),
    ApiKey(String),
    Claim(String, String),
}

/// One subject entry.
#[derive(Debug, Clone)]
pub(crate) enum Subject {
    Anyone,
    Authenticated,
    /// Every condition must hold.
    All(Vec<Cond>),
}

/// Annotation requirements of a target entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct AnnotationReq {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}

impl AnnotationReq {
    fn holds(&self, a: &Annotations) -> bool {
        let ok = |want: Option<bool>, have: bool| want.is_none_or(|w| w == have);
        ok(self.read_only, a.read_only)
            && ok(self.destructive, a.destructive)
            && ok(self.idempotent, a.idempotent)
            && ok(self.open_world, a.open_world)
    }
}

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub name: Arc<str>,
    pub effect: Effect,
    /// Empty: anyone.
    pub subjects: Vec<Subject>,
    pub except: Vec<Subject>,
}

/// A compiled target entry of a rule; its name pattern lives in the kind index.
#[derive(Debug)]
pub(crate) struct Entry {
    pub rule: usize,
    pub method: Option<GlobMatcher>,
    pub upstream: Option<String>,
    pub annotations: AnnotationReq,
}

/// The entries that can match one kind of target.
#[derive(Debug)]
pub(crate) struct KindIndex {
    /// Name patterns; match `i` is entry `named[i]`.
    pub set: GlobSet,
    pub named: Vec<usize>,
    /// Method patterns of entries with no name pattern; match `i` is `by_method[i]`.
    pub method_set: GlobSet,
    pub by_method: Vec<usize>,
    /// Entries with neither (checked for every target of this kind).
    pub unnamed: Vec<usize>,
}

/// How one tool is presented to clients.
#[derive(Debug, Clone, Default)]
pub struct ToolTransform {
    /// The name clients see and call.
    pub rename: Option<String>,
    /// Replaces `title`.
    pub title: Option<String>,
    /// Replaces `description`.
    pub description: Option<String>,
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub(crate) default: Effect,
    pub(crate) rules: Vec<Rule>,
    pub(crate) entries: Vec<Entry>,
    pub(crate) index: Vec<KindIndex>,
    /// Per upstream tool name.
    pub(crate) tool_transforms: HashMap<String, ToolTransform>,
    /// Client-visible name -> upstream name, for renamed tools.
    pub(crate) renamed_from: HashMap<String, String>,
    pub(crate) max_tools: Option<usize>,
}

thread_local! {
    /// Reused match buffer: deciding allocates nothing.
    static HITS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

fn holds(cond: &Cond, p: &Principal) -> bool {
    match cond {
        Cond::Subject(s) => p.subject == *s,
        Cond::Group(g) => p.groups.iter().any(|x| x == g),
        Cond::Scope(s) => p.scopes.iter().any(|x| x == s),
        Cond::Issuer(i) => p.issuer == *i,
        Cond::ApiKey(k) => p.issuer == API_KEY_ISSUER && p.subject == *k,
        Cond::Claim(path, want) => p.claims.get(path).is_some_and(|json| claim_is(json, want)),
    }
}

/// Whether a kept claim (as JSON text) is `want`: a string equal to it, or an array
/// holding it; numbers and booleans compare by their JSON text.
fn claim_is(json: &str, want: &str) -> bool {
    fn scalar_is(v: &Value, want: &str) -> bool {
        match v {
            Value::String(s) => s == want,
            other => {
                let text = other.to_string();
                text == want
            }
        }
    }
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Array(items)) => items.iter().any(|i| scalar_is(i, want)),
        Ok(v) => scalar_is(&v, want),
        Err(_) => false,
    }
}

impl Subject {
    fn matches(&self, who: Option<&Principal>) -> bool {
        match (self, who) {
            (Subject::Anyone, _) => true,
            (Subject::Authenticated, p) => p.is_some(),
            (Subject::All(conds), Some(p)) => conds.iter().all(|c| holds(c, p)),
            (Subject::All(_), None) => false,
        }
    }
}

impl Rule {
    fn applies_to(&self, who: Option<&Principal>) -> bool {
        (self.subjects.is_empty() || self.subjects.iter().any(|s| s.matches(who)))
            && !self.except.iter().any(|s| s.matches(who))
    }
}

impl Policy {
    /// The effect when no rule matches.
    pub fn default_effect(&self) -> Effect {
        self.default
    }

    /// The decision for `who` (None: anonymous) on `target`.
    pub fn decide(&self, who: Option<&Principal>, target: &Target<'_>) -> Decision {
        self.decide_in(who, &[(target, false)])
    }

    /// On a federated route: the decision on `seen` (the name clients see, on the
    /// route's upstream) and on `own` (the member's own name, with `own.upstream` the
    /// member), where only entries that name the member by `upstream` match its own
    /// names. The most restrictive matching rule of either decides; the default when
    /// none matches.
    pub fn decide_as_member(
        &self,
        who: Option<&Principal>,
        seen: &Target<'_>,
        own: &Target<'_>,
    ) -> Decision {
        self.decide_in(who, &[(seen, false), (own, true)])
    }

    fn decide_in(&self, who: Option<&Principal>, targets: &[(&Target<'_>, bool)]) -> Decision {
        let mut best: Option<(Effect, usize)> = None;
        for (target, scoped) in targets {
            self.each_match(who, target, *scoped, |rule, effect| {
                let better = match best {
                    None => true,
                    Some((e, r)) => effect > e || (effect == e && rule < r),
                };
                if better {
                    best = Some((effect, rule));
                }
            });
        }
        match best {
            Some((effect, rule)) => Decision {
                effect,
                rule: Some(self.rules[rule].name.clone()),
            },
            None => Decision {
                effect: self.default,
                rule: None,
            },
        }
    }

    /// Every rule that matches, in file order, with its effect: what `policy explain`
    /// prints under the decision.
    pub fn matching_rules(
        &self,
        who: Option<&Principal>,
        target: &Target<'_>,
    ) -> Vec<(Arc<str>, Effect)> {
        let mut rules: Vec<usize> = Vec::new();
        self.each_match(who, target, false, |rule, _| rules.push(rule));
        rules.sort_unstable();
        rules.dedup();
        rules
            .into_iter()
            .map(|r| (self.rules[r].name.clone(), self.rules[r].effect))
            .collect()
    }

    /// The rule of entry `e` and its effect, if the entry matches `target` for `who`
    /// (its name or method pattern already matched). With `scoped`, only an entry that
    /// names `target.upstream` matches (a federated member's own names).
    fn entry_fits(
        &self,
        e: usize,
        who: Option<&Principal>,
        target: &Target<'_>,
        scoped: bool,
    ) -> Option<(usize, Effect)> {
        let entry = &self.entries[e];
        let rule = &self.rules[entry.rule];
        let upstream_fits = match entry.upstream.as_deref() {
            Some(u) => u == target.upstream,
            None => !scoped,
        };
        let fits = entry
            .method
            .as_ref()
            .is_none_or(|m| m.is_match(target.method))
            && upstream_fits
            && entry.annotations.holds(&target.annotations)
            && rule.applies_to(who);
        fits.then_some((entry.rule, rule.effect))
    }

    /// A judge for many targets of one `kind` used by `method` on `upstream`, for
    /// `who`: a list answer's items. The method's own matches are found once.
    pub fn list_judge<'p>(
        &'p self,
        who: Option<&'p Principal>,
        kind: Kind,
        method: &'p str,
        upstream: &'p str,
    ) -> ListJudge<'p> {
        let index = &self.index[kind as usize];
        let mut method_entries = Vec::new();
        if !index.by_method.is_empty() {
            method_entries = index
                .method_set
                .matches(method)
                .into_iter()
                .map(|i| index.by_method[i])
                .collect();
        }
        ListJudge {
            policy: self,
            who,
            kind,
            method,
            upstream,
            method_entries,
            names: Vec::new(),
        }
    }

    fn each_match(
        &self,
        who: Option<&Principal>,
        target: &Target<'_>,
        scoped: bool,
        mut found: impl FnMut(usize, Effect),
    ) {
        let index = &self.index[target.kind as usize];
        let mut check = |e: usize| {
            if let Some((rule, effect)) = self.entry_fits(e, who, target, scoped) {
                found(rule, effect);
            }
        };
        HITS.with(|hits| {
            // A re-entrant call (none today) would find the buffer borrowed: use a fresh one.
            let mut local = Vec::new();
            let mut guard = hits.try_borrow_mut();
            let buf = match guard.as_deref_mut() {
                Ok(b) => b,
                Err(_) => &mut local,
            };
            buf.clear();
            index.set.matches_into(target.name, buf);
            for &i in buf.iter() {
                check(index.named[i]);
            }
            if !index.by_method.is_empty() {
                buf.clear();
                index.method_set.matches_into(target.method, buf);
                for &i in buf.iter() {
                    check(index.by_method[i]);
                }
            }
        });
        for &e in &index.unnamed {
            check(e);
        }
    }

    /// How the upstream's tool `name` is presented (rename, title, description).
    pub fn tool_transform(&self, name: &str) -> Option<&ToolTransform> {
        self.tool_transforms.get(name)
    }

    /// The upstream's name for a tool clients know as `visible` (after a rename), or
    /// `Err(())` when `visible` is an upstream name that was renamed away (clients must
    /// use the new name, so the old one is unknown to them).
    #[allow(clippy::result_unit_err)]
    pub fn upstream_tool_name<'a>(&'a self, visible: &'a str) -> Result<&'a str, ()> {
        if let Some(original) = self.renamed_from.get(visible) {
            return Ok(original);
        }
        match self.tool_transforms.get(visible) {
            Some(t) if t.rename.is_some() => Err(()),
            _ => Ok(visible),
        }
    }

    /// At most this many tools per list answer.
    pub fn max_tools(&self) -> Option<usize> {
        self.max_tools
    }

    /// Whether any rule looks at tool annotations (if none, no annotations are needed).
    pub fn uses_annotations(&self) -> bool {
        self.entries.iter().any(|e| {
            let a = &e.annotations;
            a.read_only.is_some()
                || a.destructive.is_some()
                || a.idempotent.is_some()
                || a.open_world.is_some()
        })
    }
}
