//! The Principal: the verified identity of a caller.

use std::collections::BTreeMap;

/// Who is calling, as established by a verified credential.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// The `sub` claim.
    pub subject: String,
    /// The `iss` claim.
    pub issuer: String,
    /// Groups or roles, from the configured claim paths.
    pub groups: Vec<String>,
    /// Scopes, from `scope` (space-separated) or `scp` (array or string).
    pub scopes: Vec<String>,
    /// Extra claims the issuer config asked to keep, as JSON text.
    pub claims: BTreeMap<String, String>,
    /// Unix time the credential expires.
    pub expires_at: u64,
}

impl Principal {
    /// Whether the principal holds every scope in `required`.
    pub fn has_scopes<'a>(&self, required: impl IntoIterator<Item = &'a str>) -> bool {
        required
            .into_iter()
            .all(|r| self.scopes.iter().any(|s| s == r))
    }
}
