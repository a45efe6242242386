//! `portcullis token`: mints a JWT the demo gateway accepts. Demo and tests only: the
//! key is built into the binary, so anyone can mint these tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

/// The demo's token issuer.
pub const DEMO_ISSUER: &str = "portcullis-demo";
/// The demo's token audience.
pub const DEMO_AUDIENCE: &str = "portcullis-demo";
/// The scope the demo route requires.
pub const DEMO_SCOPE: &str = "mcp:tools";
/// The demo's HMAC key. Public by design: it protects nothing but the demo.
pub const DEMO_SECRET: &[u8] = b"portcullis-demo-only-hmac-key-never-use-it-for-anything-real";

/// A signed demo token for `subject` with `scopes` and `groups`, valid for `ttl`.
pub fn mint(
    subject: &str,
    scopes: &[String],
    groups: &[String],
    ttl: Duration,
) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = serde_json::json!({
        "iss": DEMO_ISSUER,
        "aud": DEMO_AUDIENCE,
        "sub": subject,
        "scope": scopes.join(" "),
        "groups": groups,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(DEMO_SECRET),
    )
    .map_err(|e| format!("cannot sign: {e}"))
}
