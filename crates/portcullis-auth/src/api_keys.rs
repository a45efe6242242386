//! API keys for machine clients: stored only as SHA-256 hashes (in the config file or
//! a mounted Secret), each mapped to a principal with groups and scopes.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::principal::Principal;

/// The issuer recorded on principals that authenticated with an API key.
pub const API_KEY_ISSUER: &str = "api-key";

/// One configured key.
#[derive(Debug, Clone)]
pub struct ApiKeyEntry {
    /// The key's name: the principal's subject.
    pub name: String,
    /// Lower-case hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// Groups of the principal.
    pub groups: Vec<String>,
    /// Scopes of the principal.
    pub scopes: Vec<String>,
}

/// Keys by hash.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Arc<Principal>>,
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ApiKeys {
    /// Builds the table; an entry whose hash is not 64 hex digits, or a hash or name used
    /// twice, is an error naming the entry.
    pub fn new(entries: &[ApiKeyEntry]) -> Result<ApiKeys, String> {
        let mut by_hash = HashMap::with_capacity(entries.len());
        let mut names = std::collections::HashSet::new();
        for e in entries {
            let hash = parse_hex(&e.sha256)
                .ok_or_else(|| format!("key {:?}: sha256 must be 64 hex digits", e.name))?;
            if e.name.is_empty() || !names.insert(e.name.clone()) {
                return Err(format!(
                    "key {:?}: names must be non-empty and unique",
                    e.name
                ));
            }
            let principal = Arc::new(Principal {
                subject: e.name.clone(),
                issuer: API_KEY_ISSUER.to_owned(),
                groups: e.groups.clone(),
                scopes: e.scopes.clone(),
                claims: Default::default(),
                expires_at: u64::MAX,
            });
            if by_hash.insert(hash, principal).is_some() {
                return Err(format!("key {:?}: the same key is listed twice", e.name));
            }
        }
        Ok(ApiKeys { by_hash })
    }

    /// The principal of `key`, if it is a configured key.
    pub fn check(&self, key: &str) -> Option<Arc<Principal>> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&hash).cloned()
    }

    /// Whether no keys are configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn keys_are_found_by_hash_and_map_to_their_principal() {
        let keys = ApiKeys::new(&[ApiKeyEntry {
            name: "ci-bot".into(),
            sha256: hex("k-123"),
            groups: vec!["ci".into()],
            scopes: vec!["mcp:tools".into()],
        }])
        .expect("valid");
        let p = keys.check("k-123").expect("known key");
        assert_eq!(
            (p.subject.as_str(), p.issuer.as_str()),
            ("ci-bot", API_KEY_ISSUER)
        );
        assert_eq!(p.groups, ["ci"]);
        assert!(keys.check("k-124").is_none());
        assert!(keys.check("").is_none());
    }

    #[test]
    fn bad_entries_are_refused() {
        let e = |name: &str, sha: &str| ApiKeyEntry {
            name: name.into(),
            sha256: sha.into(),
            groups: vec![],
            scopes: vec![],
        };
        assert!(ApiKeys::new(&[e("a", "zz")]).is_err());
        assert!(ApiKeys::new(&[e("a", &"g".repeat(64))]).is_err());
        assert!(ApiKeys::new(&[e("a", &hex("x")), e("a", &hex("y"))]).is_err());
        assert!(ApiKeys::new(&[e("a", &hex("x")), e("b", &hex("x"))]).is_err());
        assert!(ApiKeys::new(&[e("", &hex("x"))]).is_err());
    }
}
