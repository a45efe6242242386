//! Secrets given as a file (a mounted Secret) or an environment variable: exactly one.

use std::path::Path;

use crate::error::ConfigError;
use crate::scope::Scope;

/// The secret from `file` (relative to the config file; trailing newlines dropped) or
/// the environment variable `env`. `at` is where errors point: the file key, the env
/// key, and the block (for "give exactly one").
pub(super) fn read(
    file: Option<&Path>,
    env: Option<&str>,
    at: (&Scope<'_>, &Scope<'_>, &Scope<'_>),
) -> Result<String, ConfigError> {
    let (at_file, at_env, at_block) = at;
    match (file, env) {
        (Some(file), None) => Ok(std::fs::read_to_string(at_file.resolve(file))
            .map_err(|e| at_file.err(format!("cannot read {}: {e}", file.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_owned()),
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| at_env.err(format!("environment variable {var} is not set"))),
        _ => Err(at_block.err("give exactly one of the file and the environment variable")),
    }
}
