//! MCP wire facts for Portcullis: the JSON-RPC envelope, protocol eras, header rules
//! and the gateway's one error contract. No networking lives here, so every rule is
//! testable on its own and readable without pingora in the way.

pub mod envelope;
pub mod era;
pub mod error;
pub mod headers;
pub mod methods;
pub mod scan;
pub mod sse;

pub use envelope::{Body, Envelope, EnvelopeError, Kind, MAX_DEPTH, MAX_ID_LEN};
pub use era::{Era, ProtocolVersion};
pub use error::{Overload, Refusal, Unknown};
