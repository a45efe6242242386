//! The Portcullis gateway on pingora: the public MCP listener and its upstream
//! client, the admin listener, metrics, the access log, hot reload and readiness.
//!
//! Rooms, in the order a request walks through them: [`conn`] (the connection cap),
//! [`driver`] (reads the head, calls the [`stages`] in order with one [`ctx::Ctx`],
//! one refusal exit), [`body`], the [`stages`] themselves (edge, identity, admit,
//! policy, limits, dispatch), the [`upstream`] interface they dispatch through,
//! [`relay`] (the answer to the client through [`respond::filters`]) and [`record`]
//! (metrics, access and audit logs). [`server`] assembles them; [`reload`], [`health`]
//! (endpoint health checks), [`discovery`] (endpoints from DNS) and [`jwks`] (fetching
//! identity providers' key sets) run beside them.

pub mod access_log;
pub mod admin;
pub mod audit;
pub mod body;
pub mod calls;
pub mod catalog;
pub mod conn;
pub mod ctx;
pub mod discovery;
pub mod driver;
pub mod global;
pub mod health;
pub mod judge;
pub mod jwks;
pub mod listen;
pub mod metrics;
pub mod record;
pub mod relay;
pub mod reload;
pub mod respond;
pub mod server;
pub mod sessions;
pub mod snapshot;
pub mod stages;
pub mod tls;
pub mod traffic;
pub mod upstream;

pub use discovery::Resolve;
pub use server::{
    prepare, prepare_with, spawn, spawn_with, Options, Prepared, Running, ShutdownKind,
};
