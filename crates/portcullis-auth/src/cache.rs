//! A bounded cache of verified tokens, keyed by the SHA-256 of the token and valid
//! until the token expires, so a client's repeated calls skip signature checks.
//! The cache belongs to one verifier (one config version): a reload starts afresh.
//! Each entry remembers the key-set epoch it was verified under, so a token whose key
//! has left a fetched JWKS is checked again rather than served from the cache.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::principal::Principal;

/// A verified token's Principal and the key-set epoch it was verified under.
type Entry = (u64, Arc<Principal>);

/// Verified tokens by hash.
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    capacity: usize,
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The cached Principal of `token`, if it was verified under key-set `epoch` and has
    /// not expired.
    pub fn get(&self, token: &str, now: u64, epoch: u64) -> Option<Arc<Principal>> {
        if self.capacity == 0 {
            return None;
        }
        let key = Self::key(token);
        let entries = self.entries.lock();
        entries
            .get(&key)
            .filter(|(e, p)| *e == epoch && p.expires_at > now)
            .map(|(_, p)| p.clone())
    }

    /// Remembers a verified token. When full, expired entries are dropped first; if it
    /// is still full the token is simply not cached (verification stays correct).
    pub fn insert(&self, token: &str, principal: Arc<Principal>, now: u64, epoch: u64) {
        if self.capacity == 0 {
            return;
        }
        let key = Self::key(token);
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            entries.retain(|_, (e, p)| *e == epoch && p.expires_at > now);
        }
        if entries.len() < self.capacity {
            entries.insert(key, (epoch, principal));
        }
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(exp: u64) -> Arc<Principal> {
        Arc::new(Principal {
            subject: "s".into(),
            expires_at: exp,
            ..Principal::default()
        })
    }

    #[test]
    fn entries_expire_with_their_token_and_the_size_is_bounded() {
        let c = TokenCache::new(2);
        c.insert("a", p(100), 10, 0);
        assert!(c.get("a", 99, 0).is_some());
        assert!(c.get("a", 100, 0).is_none(), "expired at exp");
        assert!(
            c.get("a", 99, 1).is_none(),
            "verified under another key set"
        );
        c.insert("b", p(200), 10, 0);
        c.insert("c", p(300), 10, 0);
        assert_eq!(c.len(), 2, "full: the third is not cached");
        c.insert("c", p(300), 150, 0);
        assert!(c.get("c", 150, 0).is_some(), "expired entries make room");
        assert!(c.len() <= 2);
    }
}
