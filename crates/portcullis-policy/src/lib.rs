//! Portcullis policies: who may see and call which tools, resources, resource templates,
//! prompts and methods. A policy file (YAML, docs/policies.md) compiles into matchers
//! once, when the config loads; a decision then costs a glob automaton run over the
//! target's name plus a few comparisons, and names the rule that made it.
//!
//! No networking and no gateway types here: the proxy asks [`Policy::decide`] before any
//! upstream work and uses [`discovery`] to filter `*/list` results.

mod compile;
pub mod discovery;
pub mod file;
mod model;
pub mod table;

pub use compile::{compile, parse, PathStep, PolicyError};
pub use file::PolicyFile;
pub use model::{Annotations, Decision, Effect, Kind, ListJudge, Policy, Target, ToolTransform};
