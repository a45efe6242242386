//! The Portcullis gateway on pingora: the public MCP listener and its upstream
//! client, the admin listener, metrics, the access log, hot reload and readiness.
//!
//! Rooms, in the order a request walks through them: [`app`] (edge checks),
//! [`forward`] (the upstream exchange), [`access_log`] and [`metrics`] (what is
//! recorded). [`server`] assembles them; [`reload`], [`health`] and [`jwks`] (fetching
//! identity providers' key sets) run beside them.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod audit;
pub mod calls;
pub mod catalog;
mod forward;
pub mod global;
pub mod health;
pub mod jwks;
pub mod listen;
pub mod metrics;
pub mod policy;
pub mod reload;
mod rewrite;
pub mod server;
pub mod sessions;
pub mod snapshot;
pub mod traffic;

pub use server::{prepare, spawn, Prepared, Running, ShutdownKind};
