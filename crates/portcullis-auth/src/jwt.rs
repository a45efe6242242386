//! JWT verification: pick the issuer by the token's (unverified) `iss`, check the
//! algorithm against that issuer's allow-list, find the key by `kid`, verify signature,
//! expiry, not-before, issuer and audience, then read the Principal from the claims.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::cache::TokenCache;
use crate::error::AuthError;
use crate::jwks::{RefetchOutcome, RemoteJwks};
use crate::keys::Keys;
use crate::principal::Principal;

/// Longest bearer token accepted, in bytes. Real tokens are a few KiB at most; anything
/// larger is refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Where an issuer's verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// Loaded from a file (JWKS, PEM or secret) when the config was loaded.
    Static(Arc<Keys>),
    /// Fetched from a JWKS URL and kept fresh by the gateway.
    Remote(Arc<RemoteJwks>),
}

impl KeySource {
    fn current(&self) -> Option<Arc<Keys>> {
        match self {
            KeySource::Static(k) => Some(k.clone()),
            KeySource::Remote(r) => r.keys(),
        }
    }
}

impl From<Keys> for KeySource {
    fn from(keys: Keys) -> KeySource {
        KeySource::Static(Arc::new(keys))
    }
}

/// One trusted issuer and how to read its tokens.
#[derive(Clone)]
pub struct IssuerConfig {
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (the route's public URL by default, RFC 8707).
    pub audiences: Vec<String>,
    /// Accepted signing algorithms; HS* only where explicitly configured.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// The verification keys.
    pub keys: KeySource,
    /// Claim paths holding groups or roles, e.g. `groups`, `realm_access.roles`.
    pub groups_claims: Vec<String>,
    /// Claim paths to keep on the Principal (for policies and logs).
    pub keep_claims: Vec<String>,
}

/// Verifies bearer tokens for one route.
pub struct JwtVerifier {
    issuers: Vec<IssuerConfig>,
    cache: TokenCache,
}

#[derive(Deserialize)]
struct IssPeek {
    #[serde(default)]
    iss: Option<String>,
}

impl JwtVerifier {
    /// A verifier for `issuers`, caching up to `cache_entries` verified tokens.
    pub fn new(issuers: Vec<IssuerConfig>, cache_entries: usize) -> JwtVerifier {
        JwtVerifier {
            issuers,
            cache: TokenCache::new(cache_entries),
        }
    }

    /// The trusted issuers.
    pub fn issuers(&self) -> &[IssuerConfig] {
        &self.issuers
    }

    /// Verifies `token` at Unix time `now` and returns its Principal. A key id missing
    /// from a remote set is refused without a refetch; see [`JwtVerifier::verify_refetching`].
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Principal>, AuthError> {
        match self.attempt(token, now) {
            Attempt::Done(result) => result,
            Attempt::UnknownKey(_, why) => Err(AuthError::Invalid(why)),
        }
    }

    /// Like [`JwtVerifier::verify`], but a key id that a JWKS URL's set does not hold
    /// asks for one refetch of that set (shared with other callers, rate-limited) and
    /// waits up to `wait` for it before looking again: how a rotated-in key is learned.
    pub async fn verify_refetching(
        &self,
        token: &str,
        now: u64,
        wait: Duration,
    ) -> Result<Arc<Principal>, AuthError> {
        let (remote, why) = match self.attempt(token, now) {
            Attempt::Done(result) => return result,
            Attempt::UnknownKey(remote, why) => (remote, why),
        };
        let outcome = remote.refetch(wait).await;
        // Look again whatever the outcome: a fetch may have finished between the first
        // look and the request for a refetch.
        match (self.verify(token, now), outcome) {
            (Ok(p), _) => Ok(p),
            (Err(e), RefetchOutcome::Fetched) => Err(e),
            (Err(_), RefetchOutcome::RateLimited) => Err(AuthError::Invalid(format!(
                "{why} (the key set was fetched moments ago)"
            ))),
            (Err(_), RefetchOutcome::TimedOut) => Err(AuthError::Invalid(format!(
                "{why} (the key set could not be fetched in time)"
            ))),
        }
    }

    /// Changes whenever a remote key set changes, so cached verdicts are re-checked.
    fn epoch(&self) -> u64 {
        self.issuers.iter().fold(0, |acc, i| match &i.keys {
            KeySource::Remote(r) => acc.wrapping_add(r.generation()),
            KeySource::Static(_) => acc,
        })
    }

    fn attempt(&self, token: &str, now: u64) -> Attempt {
        if token.is_empty() {
            return Attempt::Done(Err(AuthError::Missing));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Attempt::Done(Err(AuthError::Invalid(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            ))));
        }
        let epoch = self.epoch();
        if let Some(p) = self.cache.get(token, now, epoch) {
            return Attempt::Done(Ok(p));
        }
        let (issuer, alg, kid) = match self.pick_issuer(token) {
            Ok(found) => found,
            Err(e) => return Attempt::Done(Err(e)),
        };
        let unknown = match &kid {
            Some(kid) => format!("unknown key id {kid:?}"),
            None => "no key matches".into(),
        };
        let keys = match issuer.keys.current() {
            Some(keys) if keys.has(kid.as_deref()) => keys,
            _ => {
                return match &issuer.keys {
                    KeySource::Remote(r) => Attempt::UnknownKey(r.clone(), unknown),
                    KeySource::Static(_) => Attempt::Done(Err(AuthError::Invalid(unknown))),
                }
            }
        };
        let validation = validation_for(issuer, alg);
        let mut last = AuthError::Invalid(unknown);
        for key in keys.candidates(kid.as_deref()) {
            match jsonwebtoken::decode::<Value>(token, key, &validation) {
                Ok(data) => {
                    let principal = check_times(&data.claims, now, issuer.leeway.as_secs())
                        .and_then(|()| principal_from(issuer, &data.claims))
                        .map(Arc::new);
                    if let Ok(p) = &principal {
                        self.cache.insert(token, p.clone(), now, epoch);
                    }
                    return Attempt::Done(principal);
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => {
                            return Attempt::Done(Err(AuthError::Expired))
                        }
                        ErrorKind::ImmatureSignature => {
                            return Attempt::Done(Err(AuthError::Invalid(
                                "not valid yet (nbf)".into(),
                            )))
                        }
                        ErrorKind::InvalidAudience => {
                            return Attempt::Done(Err(AuthError::Invalid("wrong audience".into())))
                        }
                        ErrorKind::InvalidIssuer => {
                            return Attempt::Done(Err(AuthError::Invalid("wrong issuer".into())))
                        }
                        other => AuthError::Invalid(format!("{other:?}")),
                    };
                }
            }
        }
        Attempt::Done(Err(last))
    }

    /// The trusted issuer named by the token's (not yet verified) `iss`, with the
    /// header's algorithm checked against that issuer's allow-list.
    fn pick_issuer(
        &self,
        token: &str,
    ) -> Result<(&IssuerConfig, Algorithm, Option<String>), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed: {e}")))?;
        let peek: IssPeek = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| AuthError::Invalid(format!("malformed claims: {e}")))?;
        let iss = peek
            .iss
            .ok_or_else(|| AuthError::Invalid("no iss claim".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| AuthError::Invalid(format!("issuer {iss:?} is not trusted")))?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted for this issuer",
                header.alg
            )));
        }
        Ok((issuer, header.alg, header.kid))
    }
}

/// One verification try: a verdict, or a key id the issuer's remote set lacks.
enum Attempt {
    Done(Result<Arc<Principal>, AuthError>),
    UnknownKey(Arc<RemoteJwks>, String),
}

fn validation_for(issuer: &IssuerConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    // Times are checked by `check_times` against the caller's clock, so verification is
    // deterministic (and testable) rather than tied to the library reading the clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.set_issuer(&[issuer.issuer.as_str()]);
    let mut required = vec!["exp", "iss", "sub"];
    if issuer.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&issuer.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// `exp` (required) and `nbf` (optional) against `now`, with `leeway` seconds of skew.
fn check_times(claims: &Value, now: u64, leeway: u64) -> Result<(), AuthError> {
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| AuthError::Invalid("exp is missing or not a number".into()))?;
    if exp.saturating_add(leeway) <= now {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf
            .as_u64()
            .ok_or_else(|| AuthError::Invalid("nbf is not a number".into()))?;
        if nbf > now.saturating_add(leeway) {
            return Err(AuthError::Invalid("not valid yet (nbf)".into()));
        }
    }
    Ok(())
}

/// Follows a dotted path (`realm_access.roles`) into the claims.
fn claim_at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |v, key| v.get(key))
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn principal_from(issuer: &IssuerConfig, claims: &Value) -> Result<Principal, AuthError> {
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::Invalid("no sub claim".into()))?
        .to_owned();
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| AuthError::Invalid("exp is not a number".into()))?;
    let mut groups = Vec::new();
    for path in &issuer.groups_claims {
        if let Some(v) = claim_at(claims, path) {
            groups.extend(strings(v));
        }
    }
    let mut scopes = Vec::new();
    for name in ["scope", "scp"] {
        if let Some(v) = claims.get(name) {
            scopes.extend(strings(v));
        }
    }
    let claims_kept = issuer
        .keep_claims
        .iter()
        .filter_map(|path| claim_at(claims, path).map(|v| (path.clone(), v.to_string())))
        .collect();
    Ok(Principal {
        subject,
        issuer: issuer.issuer.clone(),
        groups,
        scopes,
        claims: claims_kept,
        expires_at,
    })
}
