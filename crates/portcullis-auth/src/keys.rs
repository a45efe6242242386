//! Verification keys of one issuer: from a JWKS document (with a fingerprint, so a
//! refetch that changed nothing is recognised), one PEM public key, or an HMAC secret.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Verification keys of one issuer.
#[derive(Clone)]
pub struct Keys {
    keys: Vec<(Option<String>, DecodingKey)>,
}

impl Keys {
    /// Keys from a JWKS document (`{"keys":[...]}`), each found by its `kid`. Keys that
    /// cannot verify signatures here are skipped, not fatal, so one odd key in a
    /// provider's set does not stop a rotation: encryption keys (`use: enc`), symmetric
    /// (`oct`) keys, non-Ed25519 OKP keys (X25519) and unknown key types. At least one
    /// usable key is required.
    pub fn from_jwks_json(text: &str) -> Result<Keys, String> {
        Self::from_jwks_json_fingerprinted(text).map(|(keys, _)| keys)
    }

    /// Like [`Keys::from_jwks_json`], also returning a fingerprint of the usable keys
    /// (independent of their order and of anything else in the document).
    pub fn from_jwks_json_fingerprinted(text: &str) -> Result<(Keys, [u8; 32]), String> {
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        let set: RawSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        let mut canonical = Vec::with_capacity(set.keys.len());
        for raw in set.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            if !usable_for_verification(&jwk) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            canonical.push(serde_json::to_string(&jwk).unwrap_or_default());
            keys.push((jwk.common.key_id.clone(), key));
        }
        if keys.is_empty() {
            return Err("the JWKS holds no usable signature verification key".into());
        }
        canonical.sort();
        let mut hasher = Sha256::new();
        for c in &canonical {
            hasher.update((c.len() as u64).to_be_bytes());
            hasher.update(c.as_bytes());
        }
        Ok((Keys { keys }, hasher.finalize().into()))
    }

    /// One public key in PEM (RSA, EC or Ed25519), optionally known by `kid`.
    pub fn from_pem(pem: &[u8], kid: Option<String>) -> Result<Keys, String> {
        let key = DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|e| format!("not an RSA, EC or Ed25519 public key in PEM: {e}"))?;
        Ok(Keys {
            keys: vec![(kid, key)],
        })
    }

    /// A shared HMAC secret (HS256/384/512 only, and only where configured).
    pub fn from_secret(secret: &[u8]) -> Keys {
        Keys {
            keys: vec![(None, DecodingKey::from_secret(secret))],
        }
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this id is in the set (a key without an id matches any).
    pub(crate) fn has(&self, kid: Option<&str>) -> bool {
        self.candidates(kid).next().is_some()
    }

    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a DecodingKey> {
        self.keys
            .iter()
            .filter(move |(k, _)| kid.is_none() || k.as_deref() == kid)
            .map(|(_, key)| key)
    }
}

/// Whether a JWK is a public key for verifying signatures.
fn usable_for_verification(jwk: &Jwk) -> bool {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return false;
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_) => true,
        AlgorithmParameters::OctetKeyPair(p) => p.curve == EllipticCurve::Ed25519,
        _ => false,
    }
}
