//! Portcullis identity: who is calling. Verifies bearer JWTs (jsonwebtoken) against
//! configured issuers and keys and turns them into a [`Principal`] that policies,
//! rate-limit keys and logs use. No networking here: key sets arrive already loaded
//! from files, or are fetched from JWKS URLs by the gateway into a [`RemoteJwks`], so
//! every rule is testable on its own.
//!
//! API keys for machine clients live here too ([`ApiKeys`]).

mod api_keys;
mod cache;
mod error;
mod jwks;
mod jwt;
mod keys;
mod principal;
mod route;

pub use api_keys::{ApiKeyEntry, ApiKeys, API_KEY_ISSUER};
pub use cache::TokenCache;
pub use error::AuthError;
pub use jsonwebtoken::Algorithm;
pub use jwks::{JwksRegistry, JwksSchedule, RefetchOutcome, RemoteJwks};
pub use jwt::{IssuerConfig, JwtVerifier, KeySource, MAX_TOKEN_LEN};
pub use keys::Keys;
pub use principal::Principal;
pub use route::{bearer_token, CertificateName, RouteAuth, CERTIFICATE_ISSUER, REFETCH_WAIT};
