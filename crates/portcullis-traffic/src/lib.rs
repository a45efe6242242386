//! Portcullis traffic control, free of HTTP: GCRA rate limits (governor) whose tracked
//! keys are pruned and capped, and FIFO concurrency gates with a bounded queue and a
//! queue timeout. The proxy decides what to key and gate; this crate does the counting.

pub mod gate;
pub mod rate;

pub use gate::{Entered, Gate, GateRefusal, GateSpec, Permit};
pub use rate::{LimitSpec, Limiter, Rate, Scope, ToolSet};
