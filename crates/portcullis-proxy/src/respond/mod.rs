//! The response side: writes to the client (each bounded by `http.write_timeout`), the
//! one way a refusal is written (the contract of docs/errors.md, with the request's id
//! filled in here and nowhere else), what the gateway answers itself (resource
//! metadata, CORS preflights), the head of a relayed answer, and the [`filters`] its
//! events pass on their way to the client.

pub mod client;
pub mod cors;
pub mod filters;
pub mod head;
pub mod refusal;
