//! Table tests for policies, kept beside each policy file (`<name>.tests.yaml`): a
//! principal and a target in, the expected effect (and optionally the deciding rule)
//! out. `portcullis policy test` runs them, so operators test policies in their own CI.

use std::collections::BTreeMap;

use portcullis_auth::{Principal, API_KEY_ISSUER};
use serde::Deserialize;

use crate::file::{AnnotationsFile, EffectName};
use crate::model::{Annotations, Decision, Effect, Kind, Policy, Target};

/// One table row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the row checks, printed when it fails.
    pub name: String,
    /// The caller. Default: anonymous.
    #[serde(default)]
    pub who: Option<Who>,
    /// Tool name (one of tool, prompt, resource, resource_template, method).
    #[serde(default)]
    pub tool: Option<String>,
    /// Prompt name.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Resource URI.
    #[serde(default)]
    pub resource: Option<String>,
    /// Resource template.
    #[serde(default)]
    pub resource_template: Option<String>,
    /// A method that is not about a tool, prompt or resource (`logging/setLevel`), or,
    /// with one of those, the method used (default: tools/call, prompts/get, resources/read).
    #[serde(default)]
    pub method: Option<String>,
    /// The upstream serving the target. Default: empty.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The tool's annotations (spec defaults for absent hints).
    #[serde(default)]
    pub annotations: Option<AnnotationsFile>,
    /// The expected effect.
    pub expect: EffectName,
    /// The expected deciding rule (`default` for none).
    #[serde(default)]
    pub rule: Option<String>,
}

/// A table row's caller.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Who {
    /// `sub`.
    #[serde(default)]
    pub subject: Option<String>,
    /// `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// An API key's name (the principal then has the API-key issuer).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Groups or roles.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Kept claims by path.
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
}

impl Who {
    /// The principal this row describes.
    pub fn principal(&self) -> Principal {
        let (subject, issuer) = match &self.api_key {
            Some(k) => (k.clone(), API_KEY_ISSUER.to_owned()),
            None => (
                self.subject.clone().unwrap_or_else(|| "someone".into()),
                self.issuer.clone().unwrap_or_default(),
            ),
        };
        Principal {
            subject,
            issuer,
            groups: self.groups.clone(),
            scopes: self.scopes.clone(),
            claims: self
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            expires_at: u64::MAX,
        }
    }
}

/// A row's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The row's name.
    pub name: String,
    /// What the policy decided.
    pub got: Decision,
    /// Empty when the row passed; otherwise what differed.
    pub failure: Option<String>,
}

/// Parses a tests file: a YAML list of [`Case`]s.
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    serde_yaml::from_str(text).map_err(|e| e.to_string())
}

impl Case {
    /// The target this row asks about, or why it names none.
    pub fn target(&self) -> Result<(Kind, &str, &str), String> {
        let named: Vec<(Kind, &str, &str)> = [
            (Kind::Tool, &self.tool, "tools/call"),
            (Kind::Prompt, &self.prompt, "prompts/get"),
            (Kind::Resource, &self.resource, "resources/read"),
            (
                Kind::ResourceTemplate,
                &self.resource_template,
                "resources/read",
            ),
        ]
        .into_iter()
        .filter_map(|(k, n, m)| n.as_deref().map(|n| (k, n, m)))
        .collect();
        match (named.as_slice(), self.method.as_deref()) {
            ([(k, n, m)], method) => Ok((*k, n, method.unwrap_or(m))),
            ([], Some(method)) => Ok((Kind::Method, method, method)),
            ([], None) => Err("name a tool, prompt, resource, resource_template or method".into()),
            _ => Err("name only one of tool, prompt, resource, resource_template".into()),
        }
    }

    /// The row's tool annotations as the gateway would read them (spec defaults for
    /// absent hints, then normalised).
    pub fn annotations(&self) -> Annotations {
        self.annotations
            .as_ref()
            .map_or(Annotations::SPEC_DEFAULTS, AnnotationsFile::resolve)
    }

    /// Runs this row against `policy`.
    pub fn run(&self, policy: &Policy) -> Outcome {
        let principal = self.who.as_ref().map(Who::principal);
        let (kind, name, method) = match self.target() {
            Ok(t) => t,
            Err(e) => {
                return Outcome {
                    name: self.name.clone(),
                    got: Decision {
                        effect: policy.default_effect(),
                        rule: None,
                    },
                    failure: Some(e),
                }
            }
        };
        let annotations = self.annotations();
        let target = Target {
            method,
            kind,
            name,
            upstream: self.upstream.as_deref().unwrap_or(""),
            annotations,
        };
        let got = policy.decide(principal.as_ref(), &target);
        let want = match self.expect {
            EffectName::Allow => Effect::Allow,
            EffectName::Deny => Effect::Deny,
            EffectName::Hide => Effect::Hide,
        };
        let mut failure = None;
        if got.effect != want {
            failure = Some(format!(
                "expected {}, got {} (rule {})",
                want.as_str(),
                got.effect.as_str(),
                got.rule_name()
            ));
        } else if let Some(rule) = &self.rule {
            if got.rule_name() != rule {
                failure = Some(format!(
                    "expected rule {rule}, got rule {}",
                    got.rule_name()
                ));
            }
        }
        Outcome {
            name: self.name.clone(),
            got,
            failure,
        }
    }
}
