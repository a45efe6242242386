//! Portcullis identity: who is calling. Verifies bearer JWTs (jsonwebtoken) against
//! configured issuers and keys and turns them into a [`Principal`] that policies,
//! rate-limit keys and logs use. No networking here: key sets arrive already loaded
//! (from files now; fetched JWKS later), so every rule is testable on its own.
//!
//! Work in progress for the identity issue: not yet wired into the gateway.

mod cache;
mod error;
mod jwt;
mod principal;
mod route;

pub use cache::TokenCache;
pub use error::AuthError;
pub use jsonwebtoken::Algorithm;
pub use jwt::{IssuerConfig, JwtVerifier, Keys, MAX_TOKEN_LEN};
pub use principal::Principal;
pub use route::{bearer_token, RouteAuth};
