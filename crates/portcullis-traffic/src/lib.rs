//! Portcullis traffic control, free of HTTP: GCRA rate limits (governor) whose tracked
//! keys are pruned and capped, FIFO concurrency gates with a bounded queue and a queue
//! timeout, and circuit breakers. The proxy decides what to key, gate and break; this
//! crate does the counting.

pub mod breaker;
pub mod gate;
pub mod rate;

pub use breaker::{Breaker, BreakerSpec, BreakerState, Ticket};
pub use gate::{Entered, Gate, GateRefusal, GateSpec, Permit};
pub use rate::{LimitSpec, Limiter, Rate, Scope, ToolSet};
