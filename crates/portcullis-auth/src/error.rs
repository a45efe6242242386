//! Why a credential was refused, in the two classes the MCP authorization spec answers
//! differently: 401 (no valid credential) and 403 (valid, but not enough scope).

/// A refused credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No bearer token was presented: 401.
    Missing,
    /// The token is malformed, oversized, unsigned, signed with an unknown key or a
    /// disallowed algorithm, or its claims are wrong: 401 `invalid_token`.
    Invalid(String),
    /// The token has expired: 401 `invalid_token`.
    Expired,
    /// Valid, but lacks scopes the route requires: 403 `insufficient_scope`.
    InsufficientScope {
        /// The scopes the route requires.
        required: Vec<String>,
    },
}

impl AuthError {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::InsufficientScope { .. } => 403,
            _ => 401,
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => f.write_str("no bearer token"),
            AuthError::Invalid(why) => write!(f, "invalid token: {why}"),
            AuthError::Expired => f.write_str("the token has expired"),
            AuthError::InsufficientScope { required } => {
                write!(f, "insufficient scope: requires {}", required.join(" "))
            }
        }
    }
}

impl std::error::Error for AuthError {}
