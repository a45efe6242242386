//! The stages a request passes, in the order the driver calls them: [`edge`] (framing,
//! client address, route, Host, Origin), [`identity`] (who is calling), [`admit`]
//! (media types, envelope, era rules), [`policy`] (what the caller may use), [`limits`]
//! (rate limits, stream caps, concurrency gates), [`federate`] (which upstream: on a
//! federated route, the member a name belongs to, or all of them) and [`dispatch`]
//! (the upstream).
//!
//! Each is a module with one job and a function from the request context (plus the
//! snapshot and the request head) to a typed result or a [`Refusal`]; the driver stops
//! at the first refusal. No stage touches the client's socket: waiting on it (the body,
//! a client leaving) is the driver's, so every stage but dispatch is tested on its own.
//!
//! [`Refusal`]: portcullis_mcp::Refusal

pub mod admit;
pub mod dispatch;
pub mod edge;
pub mod federate;
pub mod identity;
pub mod limits;
pub mod policy;
