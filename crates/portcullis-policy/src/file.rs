//! The policy file's schema as operators write it (docs/policies.md), with
//! `deny_unknown_fields` everywhere so a typo is an error, never a silently wider rule.

use serde::Deserialize;

/// A whole policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// The effect when no rule matches: `allow`, `deny` or `hide`. Required, so every
    /// policy states its stance.
    pub default: EffectName,
    /// The rules. Their order does not change decisions (see docs/policies.md).
    #[serde(default)]
    pub rules: Vec<RuleFile>,
    /// How listed tools are presented.
    #[serde(default)]
    pub transforms: TransformsFile,
}

/// `allow`, `deny` or `hide`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EffectName {
    /// Listed and callable.
    Allow,
    /// Listed, refused when used.
    Deny,
    /// Not listed, refused exactly as an unknown target.
    Hide,
}

/// One rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique name, reported in logs, metrics and `policy explain`.
    pub name: String,
    /// What the rule does to the targets it matches.
    pub effect: EffectName,
    /// Who the rule applies to: any entry matching is enough. Default: anyone.
    #[serde(default)]
    pub subjects: Vec<serde_yaml::Value>,
    /// Who the rule never applies to, even when `subjects` match.
    #[serde(default)]
    pub except: Vec<serde_yaml::Value>,
    /// What the rule applies to: any entry matching is enough. Required.
    pub targets: Vec<TargetFile>,
}

/// One subject entry in map form: every key given must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectMatchFile {
    /// The principal's subject (`sub`), exactly.
    #[serde(default)]
    pub subject: Option<String>,
    /// A group or role the principal has.
    #[serde(default)]
    pub group: Option<String>,
    /// A scope the principal's token carries.
    #[serde(default)]
    pub scope: Option<String>,
    /// The token's issuer, exactly.
    #[serde(default)]
    pub issuer: Option<String>,
    /// An API key's name.
    #[serde(default)]
    pub api_key: Option<String>,
    /// A kept claim's path (with `value`).
    #[serde(default)]
    pub claim: Option<String>,
    /// The value the claim must have (a string claim's text, or one element of an array).
    #[serde(default)]
    pub value: Option<String>,
}

/// One target entry: every key given must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    /// Tool name glob.
    #[serde(default)]
    pub tool: Option<String>,
    /// Prompt name glob.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Resource URI glob.
    #[serde(default)]
    pub resource: Option<String>,
    /// Resource template (`uriTemplate`) glob.
    #[serde(default)]
    pub resource_template: Option<String>,
    /// JSON-RPC method glob (`tools/call`, `logging/setLevel`, `resources/subscribe`).
    #[serde(default)]
    pub method: Option<String>,
    /// The upstream's name in the config.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Tool annotations the tool must have (only with `tool`).
    #[serde(default)]
    pub annotations: Option<AnnotationsFile>,
}

/// Tool annotation requirements, spelled as in MCP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnnotationsFile {
    /// `readOnlyHint`
    #[serde(default)]
    pub read_only_hint: Option<bool>,
    /// `destructiveHint`
    #[serde(default)]
    pub destructive_hint: Option<bool>,
    /// `idempotentHint`
    #[serde(default)]
    pub idempotent_hint: Option<bool>,
    /// `openWorldHint`
    #[serde(default)]
    pub open_world_hint: Option<bool>,
}

impl AnnotationsFile {
    /// These hints with the spec's defaults for absent ones, normalised.
    pub fn resolve(&self) -> crate::Annotations {
        let d = crate::Annotations::SPEC_DEFAULTS;
        crate::Annotations {
            read_only: self.read_only_hint.unwrap_or(d.read_only),
            destructive: self.destructive_hint.unwrap_or(d.destructive),
            idempotent: self.idempotent_hint.unwrap_or(d.idempotent),
            open_world: self.open_world_hint.unwrap_or(d.open_world),
        }
        .normalized()
    }
}

/// `transforms:`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformsFile {
    /// Per-tool presentation changes.
    #[serde(default)]
    pub tools: Vec<ToolTransformFile>,
    /// At most this many tools in one list answer.
    #[serde(default)]
    pub max_tools: Option<usize>,
}

/// One tool's presentation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolTransformFile {
    /// The upstream's name for the tool (exact).
    pub tool: String,
    /// The name clients see and call instead.
    #[serde(default)]
    pub rename: Option<String>,
    /// Replaces the tool's `title`.
    #[serde(default)]
    pub title: Option<String>,
    /// Replaces the tool's `description`.
    #[serde(default)]
    pub description: Option<String>,
}
